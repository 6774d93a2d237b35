// keeld's PostgreSQL storage: the Storage conformance suite plus what only PostgreSQL has (several processes at once,
// reconnects, URI errors). Needs KEEL_TEST_PG (scripts/services.sh env); fails, not skips, without it. Every test
// works in its own PostgreSQL schema (keel_coord_<pid>_<n>), dropped afterwards.

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include "coordinator/postgres_storage.hpp"
#include "coordinator/storage_conformance.hpp"

namespace keel::coordinator::testing {
namespace {

std::string Server() {
    const char* uri = std::getenv("KEEL_TEST_PG");
    return uri != nullptr ? uri : "";
}

std::string NewSchema() {
    static std::atomic<int> counter{0};
    return "keel_coord_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
}

// Runs SQL on the test server through a connection of its own; returns the first value of the result, if any.
std::string AdminQuery(const std::string& sql) {
    PGconn* c = PQconnectdb(Server().c_str());
    PQsetNoticeProcessor(
        c, [](void*, const char*) {}, nullptr);
    PGresult* r = PQexec(c, sql.c_str());
    std::string out;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0) out = PQgetvalue(r, 0, 0);
    EXPECT_TRUE(PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK)
        << sql << ": " << PQerrorMessage(c);
    PQclear(r);
    PQfinish(c);
    return out;
}

std::string SchemaOf(const std::string& uri) {
    const size_t start = uri.find("schema=") + 7;
    return uri.substr(start, uri.find('&', start) - start);
}

std::string UriFor(const std::string& schema) {
    // The test server's DSN has no query; application_name lets a test find its own connections.
    return Server() + "?schema=" + schema + "&application_name=" + schema;
}

StorageBackend PostgresBackend() {
    StorageBackend b;
    b.name = "postgres";
    b.make_location = [] {
        EXPECT_FALSE(Server().empty()) << "KEEL_TEST_PG is not set (eval \"$(scripts/services.sh env)\")";
        return UriFor(NewSchema());
    };
    b.open = [](const std::string& uri) { return OpenPostgresStorage(uri); };
    b.remove_location = [](const std::string& uri) {
        if (!Server().empty()) AdminQuery("DROP SCHEMA IF EXISTS " + SchemaOf(uri) + " CASCADE");
    };
    b.shared = true;
    return b;
}

INSTANTIATE_TEST_SUITE_P(Postgres, StorageConformance, ::testing::Values(PostgresBackend()), StorageBackendName);

class PostgresStorageTest : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_FALSE(Server().empty()) << "KEEL_TEST_PG is not set (eval \"$(scripts/services.sh env)\")";
        schema_ = NewSchema();
    }
    void TearDown() override { AdminQuery("DROP SCHEMA IF EXISTS " + schema_ + " CASCADE"); }

    int Connections() {
        return std::stoi(
            AdminQuery("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + schema_ + "'"));
    }

    std::string schema_;
};

GlobalChange SubmittedToSucceed() {
    GlobalChange c;
    c.from = kSubmitted;
    c.to = kSucceed;
    return c;
}

Global NewGlobal(const std::string& gid) {
    Global g;
    g.gid = gid;
    g.trans_type = "saga";
    g.status = kSubmitted;
    g.create_time = 1;
    g.update_time = 1;
    g.next_cron_time = 1;
    return g;
}

TEST_F(PostgresStorageTest, ProcessesStartingTogetherCreateTheTablesOnce) {
    constexpr int kOpeners = 6;
    std::vector<std::thread> threads;
    std::vector<Status> results(kOpeners);
    std::vector<std::unique_ptr<Storage>> stores(kOpeners);
    for (int i = 0; i < kOpeners; ++i) {
        threads.emplace_back([&, i] {
            auto s = OpenPostgresStorage(UriFor(schema_));
            results[static_cast<size_t>(i)] = s.status();
            if (s.ok()) stores[static_cast<size_t>(i)] = std::move(*s);
        });
    }
    for (auto& t : threads) t.join();
    for (const auto& s : results) EXPECT_TRUE(s.ok()) << s.ToString();
    ASSERT_NE(stores[0], nullptr);
    ASSERT_TRUE(stores[0]->SaveNew(NewGlobal("g"), {}).ok());
    ASSERT_NE(stores[kOpeners - 1], nullptr);
    auto g = stores[kOpeners - 1]->FindGlobal("g");
    ASSERT_TRUE(g.ok() && g->has_value());
    EXPECT_EQ(AdminQuery("SELECT version FROM " + schema_ + ".keel_schema WHERE component = 'coordinator'"), "1");
    EXPECT_EQ(AdminQuery("SELECT count(*) FROM pg_indexes WHERE schemaname = '" + schema_ +
                         "' AND indexname = 'keel_trans_global_due'"),
              "1");
}

TEST_F(PostgresStorageTest, NewerSchemaIsNotSupported) {
    { ASSERT_TRUE(OpenPostgresStorage(UriFor(schema_)).ok()); }
    AdminQuery("UPDATE " + schema_ + ".keel_schema SET version = 99 WHERE component = 'coordinator'");
    auto s = OpenPostgresStorage(UriFor(schema_));
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), StatusCode::kNotSupported) << s.status().ToString();
}

TEST_F(PostgresStorageTest, ReplacesConnectionsTheServerClosed) {
    auto opened = OpenPostgresStorage(UriFor(schema_));
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    auto store = std::move(*opened);
    ASSERT_TRUE(store->SaveNew(NewGlobal("before"), {}).ok());
    // Several idle connections in the pool.
    {
        std::vector<std::thread> threads;
        for (int i = 0; i < 4; ++i) threads.emplace_back([&] { EXPECT_TRUE(store->FindGlobal("before").ok()); });
        for (auto& t : threads) t.join();
    }
    ASSERT_GE(Connections(), 1);
    AdminQuery("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '" + schema_ + "'");
    for (int i = 0; i < 100 && Connections() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_EQ(Connections(), 0);

    // Writes and reads work at once on fresh connections.
    Status saved = store->SaveNew(NewGlobal("after"), {});
    EXPECT_TRUE(saved.ok()) << saved.ToString();
    for (int i = 0; i < 5; ++i) {
        auto g = store->FindGlobal("before");
        ASSERT_TRUE(g.ok()) << g.status().ToString();
        EXPECT_TRUE(g->has_value());
    }
    auto changed = store->ChangeStatus("after", SubmittedToSucceed());
    ASSERT_TRUE(changed.ok()) << changed.status().ToString();
    EXPECT_TRUE(*changed);
}

TEST_F(PostgresStorageTest, UsesOneConnectionPerCallingThread) {
    auto opened = OpenPostgresStorage(UriFor(schema_));
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    auto store = std::move(*opened);
    constexpr int kThreads = 16;
    std::atomic<int> errors{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 20; ++i) {
                const std::string gid = "t" + std::to_string(t) + "-" + std::to_string(i);
                if (!store->SaveNew(NewGlobal(gid), {}).ok()) ++errors;
                auto c = store->ChangeStatus(gid, SubmittedToSucceed());
                if (!c.ok() || !*c) ++errors;
                ListFilter newest;
                newest.limit = 5;
                auto l = store->List(newest);
                if (!l.ok()) ++errors;
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(errors.load(), 0);
    EXPECT_LE(Connections(), kThreads);
    ListFilter succeeded;
    succeeded.status = kSucceed;
    succeeded.limit = 1000;
    auto all = store->List(succeeded);
    ASSERT_TRUE(all.ok());
    EXPECT_EQ(all->size(), static_cast<size_t>(kThreads * 20));
}

TEST_F(PostgresStorageTest, TextWithNulByteIsRejectedNotTruncated) {
    auto opened = OpenPostgresStorage(UriFor(schema_));
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    Global g = NewGlobal("nul");
    g.custom_data = std::string("a\0b", 3);
    Status s = (*opened)->SaveNew(g, {});
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    auto found = (*opened)->FindGlobal("nul");
    ASSERT_TRUE(found.ok());
    EXPECT_FALSE(found->has_value());
}

TEST(PostgresStorageUri, UnreachableServerErrorNamesHostPortAndDatabase) {
    auto s = OpenPostgresStorage("postgresql://keel@127.0.0.1:1/keel_nowhere?connect_timeout=2");
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(s.status().message().find("127.0.0.1"), std::string::npos) << s.status().message();
    EXPECT_NE(s.status().message().find(":1"), std::string::npos) << s.status().message();
    EXPECT_NE(s.status().message().find("keel_nowhere"), std::string::npos) << s.status().message();
}

TEST(PostgresStorageUri, MalformedUrisAreInvalidArguments) {
    for (const char* uri : {"mysql://keel@127.0.0.1/x", "postgresql:keel",
                            "postgresql://h/db?schema=", "postgresql://h/db?novalue", "nothing"}) {
        auto s = OpenPostgresStorage(uri);
        ASSERT_FALSE(s.ok()) << uri;
        EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << uri << ": " << s.status().ToString();
    }
}

}  // namespace
}  // namespace keel::coordinator::testing
