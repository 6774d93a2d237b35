// The barrier on MariaDB (the suite in barrier_suite.hpp); needs KEEL_TEST_MYSQL and fails without it. Each test runs
// in a database of its own (created with the KEEL_TEST_MYSQL credentials), dropped afterwards.

#include "dtm/barrier_suite.hpp"
#include "store/mysql/mysql_test_db.hpp"

namespace keel::dtm::testing {

namespace {
std::unique_ptr<keel::detail::MysqlTestDatabase> g_db;
}

std::unique_ptr<EventStore> OpenServiceDatabase(const std::string&) {
    auto db = keel::detail::MysqlTestDatabase::Create("keel_barrier");
    EXPECT_TRUE(db.ok()) << db.status().ToString();
    if (!db.ok()) return nullptr;
    g_db = std::move(*db);
    auto store = OpenStore(g_db->uri());
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    return store.ok() ? std::move(*store) : nullptr;
}

void DropServiceDatabase() {
    g_db.reset();
}

}  // namespace keel::dtm::testing
