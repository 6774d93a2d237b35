// Projections keep a read model current: batches commit with their checkpoint, a restart continues exactly where
// the last batch committed, duplicates of nothing, and a rebuild request (from any process) replays from scratch.

#include "keel/projection.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

namespace keel {
namespace {

class ProjectionTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("keel_projection_" + std::to_string(::getpid()) + "_" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
        uri_ = "sqlite://" + (dir_ / "service.db").string();
        store_ = OpenStore(uri_).value();
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Exec("CREATE TABLE customer_orders (customer TEXT PRIMARY KEY, orders INTEGER NOT NULL, "
                             "total INTEGER NOT NULL)").ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    void TearDown() override {
        store_.reset();
        std::filesystem::remove_all(dir_);
    }
    void PlaceOrder(const std::string& customer, int amount) {
        ASSERT_TRUE(store_->Append("Order-" + Uuid::Generate().ToString(), ExpectedVersion::NoStream(),
                                   {EventData{{}, "OrderPlaced", R"({"customer":")" + customer + R"(","amount":)" +
                                                                     std::to_string(amount) + "}", ""}})
                        .ok());
    }
    static ProjectionOptions Options() {
        ProjectionOptions o;
        o.name = "customer-orders";
        o.types = {"OrderPlaced"};
        o.batch_size = 7;
        o.reset = [](UnitOfWork& uow) { return uow.Exec("DELETE FROM customer_orders").status(); };
        return o;
    }
    static Status Apply(UnitOfWork& uow, const RecordedEvent& e) {
        auto j = nlohmann::json::parse(e.data);
        return uow.Exec("INSERT INTO customer_orders (customer, orders, total) VALUES (?, 1, ?) ON CONFLICT (customer) "
                        "DO UPDATE SET orders = orders + 1, total = total + excluded.total",
                        {j["customer"].get<std::string>(), j["amount"].get<int64_t>()})
            .status();
    }
    int64_t Total(const std::string& customer) {
        auto uow = UnitOfWork::Begin(*store_).value();
        auto rows = uow.Query("SELECT total FROM customer_orders WHERE customer = ?", {customer}).value();
        return rows.empty() ? 0 : rows.Int(0, 0).value();
    }

    std::filesystem::path dir_;
    std::string uri_;
    std::unique_ptr<EventStore> store_;
};

TEST_F(ProjectionTest, KeepsTheReadModelCurrentAndContinuesAfterRestart) {
    for (int i = 0; i < 20; ++i) PlaceOrder(i % 2 ? "ann" : "bob", 10);
    ASSERT_TRUE(store_->Append("Noise-1", ExpectedVersion::Any(), {EventData{{}, "Ignored", "{}", ""}}).ok());
    {
        auto projection = Projection::Start(*store_, Options(), Apply).value();
        ASSERT_TRUE(projection->WaitFor(store_->HeadPosition().value(), std::chrono::seconds(10)).ok());
        EXPECT_EQ(Total("ann"), 100);
        EXPECT_EQ(Total("bob"), 100);
        PlaceOrder("ann", 5);  // live
        ASSERT_TRUE(projection->WaitFor(store_->HeadPosition().value(), std::chrono::seconds(10)).ok());
        EXPECT_EQ(Total("ann"), 105);
    }
    // Restarted (a new process would do the same): nothing is applied twice, new events are.
    store_ = OpenStore(uri_).value();
    PlaceOrder("bob", 1);
    auto projection = Projection::Start(*store_, Options(), Apply).value();
    ASSERT_TRUE(projection->WaitFor(store_->HeadPosition().value(), std::chrono::seconds(10)).ok());
    EXPECT_EQ(Total("ann"), 105);
    EXPECT_EQ(Total("bob"), 101);
    auto stats = store_->Stats().value();
    ASSERT_EQ(stats.checkpoints.size(), 1u);
    EXPECT_EQ(stats.checkpoints[0].name, "projection:customer-orders");
    EXPECT_EQ(stats.checkpoints[0].position, stats.head_position);
}

TEST_F(ProjectionTest, AFailingBatchCommitsNothingAndStopsWithTheError) {
    for (int i = 0; i < 10; ++i) PlaceOrder("cat", 1);
    auto options = Options();
    options.max_attempts = 2;
    auto projection = Projection::Start(*store_, options, [&](UnitOfWork& uow, const RecordedEvent& e) -> Status {
                          KEEL_RETURN_IF_ERROR(Apply(uow, e));  // written, then rolled back with its batch
                          if (e.global_position == 9) return Status::Internal("read model broken");
                          return Status::Ok();
                      }).value();
    Status s = projection->WaitFor(store_->HeadPosition().value(), std::chrono::seconds(10));
    EXPECT_EQ(s.code(), StatusCode::kInternal) << s.ToString();
    EXPECT_NE(s.message().find("read model broken"), std::string::npos);
    EXPECT_EQ(Total("cat"), 7);              // the first batch of 7 committed; the failing batch left nothing
    EXPECT_EQ(projection->position(), 7);
}

TEST_F(ProjectionTest, RebuildRequestReplaysFromScratch) {
    for (int i = 0; i < 12; ++i) PlaceOrder("dan", 2);
    auto projection = Projection::Start(*store_, Options(), Apply).value();
    ASSERT_TRUE(projection->WaitFor(store_->HeadPosition().value(), std::chrono::seconds(10)).ok());
    {
        auto uow = UnitOfWork::Begin(*store_).value();  // the read model drifted (a bug, a manual edit)
        ASSERT_TRUE(uow.Exec("UPDATE customer_orders SET total = 999").ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    ASSERT_TRUE(RequestProjectionRebuild(*store_, "customer-orders").ok());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (Total("dan") != 24 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_EQ(Total("dan"), 24);
}

TEST(ProjectionMemory, StoreWithoutTransactionsIsRefused) {
    auto store = OpenStore("memory:").value();
    ProjectionOptions o;
    o.name = "p";
    auto r = Projection::Start(*store, o, [](UnitOfWork&, const RecordedEvent&) { return Status::Ok(); });
    EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
}

}  // namespace
}  // namespace keel
