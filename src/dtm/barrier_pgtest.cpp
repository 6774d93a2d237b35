// The barrier on PostgreSQL (the suite in barrier_suite.hpp); needs KEEL_TEST_PG and fails without it. Each test runs
// in a schema of its own, dropped afterwards.

#include <cstdlib>

#include <libpq-fe.h>
#include <unistd.h>

#include "dtm/barrier_suite.hpp"

namespace keel::dtm::testing {

namespace {
std::string g_server, g_schema;
}

std::unique_ptr<EventStore> OpenServiceDatabase(const std::string&) {
    const char* uri = std::getenv("KEEL_TEST_PG");
    EXPECT_NE(uri, nullptr)
        << "KEEL_TEST_PG is not set (scripts/services.sh start; eval \"$(scripts/services.sh env)\")";
    if (uri == nullptr) return nullptr;
    static int counter = 0;
    g_server = uri;
    g_schema = "keel_barrier_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
    auto store = OpenStore(g_server + "?schema=" + g_schema);
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    return store.ok() ? std::move(*store) : nullptr;
}

void DropServiceDatabase() {
    if (g_schema.empty()) return;
    PGconn* c = PQconnectdb(g_server.c_str());
    PQsetNoticeProcessor(
        c, [](void*, const char*) {}, nullptr);
    PQclear(PQexec(c, ("DROP SCHEMA IF EXISTS " + g_schema + " CASCADE").c_str()));
    PQfinish(c);
}

}  // namespace keel::dtm::testing
