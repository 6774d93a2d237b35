// The barrier on SQLite (the suite in barrier_suite.hpp), plus what needs no database: parsing a branch call's query
// and the HTTP replies.

#include <filesystem>

#include <unistd.h>

#include "dtm/barrier_suite.hpp"

namespace keel::dtm::testing {

namespace {
std::filesystem::path g_dir;
}

std::unique_ptr<EventStore> OpenServiceDatabase(const std::string& test_name) {
    g_dir = std::filesystem::temp_directory_path() / ("keel_barrier_" + std::to_string(::getpid()) + "_" + test_name);
    std::filesystem::remove_all(g_dir);
    std::filesystem::create_directories(g_dir);
    auto store = OpenStore("sqlite://" + (g_dir / "bank.db").string());
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    return store.ok() ? std::move(*store) : nullptr;
}

void DropServiceDatabase() {
    std::filesystem::remove_all(g_dir);
}

namespace {

TEST(BarrierFromQuery, NamesTheMissingField) {
    std::map<std::string, std::string> q = {
        {"trans_type", "saga"}, {"gid", "g1"}, {"branch_id", "01"}, {"op", "action"}, {"dtm", "http://x"}};
    auto b = Barrier::FromQuery(q);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    EXPECT_EQ(b->trans_type(), "saga");
    EXPECT_EQ(b->gid(), "g1");
    EXPECT_EQ(b->branch_id(), "01");
    EXPECT_EQ(b->op(), "action");
    EXPECT_EQ(b->table().name, "barrier");
    for (const char* field : {"trans_type", "gid", "branch_id", "op"}) {
        auto missing = q;
        missing.erase(field);
        auto r = Barrier::FromQuery(missing);
        ASSERT_EQ(r.status().code(), StatusCode::kInvalidArgument);
        EXPECT_NE(r.status().message().find(std::string("'") + field + "'"), std::string::npos) << r.status().message();
    }
    EXPECT_EQ(Barrier::Make("saga", std::string(129, 'g'), "01", "action").status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(Barrier::Make("saga", "g", "01", "action", BarrierTable{"bad name; DROP TABLE x"}).status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_TRUE(Barrier::Make("saga", "g", "01", "action", BarrierTable{"dtm_barrier.barrier"}).ok());
}

TEST(BarrierReply, MapsResultsToDtmReplies) {
    auto ok = BarrierReply(Status::Ok());
    EXPECT_EQ(ok.status, 200);
    EXPECT_EQ(ok.body, R"({"dtm_result":"SUCCESS"})");
    auto failure = BarrierReply(Failure("insufficient balance"));
    EXPECT_EQ(failure.status, 409);
    EXPECT_EQ(failure.body, R"({"dtm_result":"FAILURE","message":"insufficient balance"})");
    auto other = BarrierReply(Status::Unavailable("database is locked: FAILURE to get lock, ONGOING"));
    EXPECT_EQ(other.status, 500);
    EXPECT_EQ(other.body.find("FAILURE"), std::string::npos) << other.body;
    EXPECT_EQ(other.body.find("ONGOING"), std::string::npos) << other.body;
    EXPECT_NE(other.body.find("database is locked"), std::string::npos);
    EXPECT_EQ(BarrierReply(Status(kDuplicatedCode, "dup")).status, 500);
}

TEST(BarrierTable, SqliteHasNoSchemasAndMemoryHasNoTransactions) {
    const auto dir = std::filesystem::temp_directory_path() / ("keel_barrier_table_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto db = OpenStore("sqlite://" + (dir / "x.db").string()).value();
    auto dotted = EnsureBarrierTable(*db, BarrierTable{"dtm_barrier.barrier"});
    EXPECT_EQ(dotted.status().code(), StatusCode::kInvalidArgument);
    auto named = EnsureBarrierTable(*db, BarrierTable{"my_barrier"});
    ASSERT_TRUE(named.ok()) << named.status().ToString();
    EXPECT_EQ(named->dialect, BarrierDialect::kSqlite);
    auto b = Barrier::Make("saga", "g", "01", "action", *named).value();
    ASSERT_TRUE(b.Call(*db, [](UnitOfWork&) { return Status::Ok(); }).ok());
    {
        auto uow = UnitOfWork::Begin(*db).value();
        EXPECT_EQ(uow.Query("SELECT count(*) FROM my_barrier").value().Int(0, 0).value(), 1);
    }
    db.reset();
    std::filesystem::remove_all(dir);

    auto memory = OpenStore("memory:").value();
    EXPECT_EQ(EnsureBarrierTable(*memory).status().code(), StatusCode::kNotSupported);
}

// A missing barrier table is a 500 (retried), never a FAILURE.
TEST(BarrierTable, MissingTableIsARetryableError) {
    const auto dir = std::filesystem::temp_directory_path() / ("keel_barrier_missing_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto db = OpenStore("sqlite://" + (dir / "x.db").string()).value();
    auto b = Barrier::Make("saga", "g", "01", "action").value();
    int runs = 0;
    const Status s = b.Call(*db, [&](UnitOfWork&) {
        ++runs;
        return Status::Ok();
    });
    EXPECT_FALSE(s.ok());
    EXPECT_FALSE(IsFailure(s)) << s.ToString();
    EXPECT_EQ(BarrierReply(s).status, 500);
    EXPECT_EQ(runs, 0);
    db.reset();
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace keel::dtm::testing
