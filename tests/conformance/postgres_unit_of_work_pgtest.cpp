// Units of work, the outbox relay and projections on PostgreSQL (needs KEEL_TEST_PG; fails, not skips, without it).

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <map>

#include "keel/broker.hpp"
#include "keel/outbox.hpp"
#include "keel/projection.hpp"
#include "keel/unit_of_work.hpp"

namespace keel {
namespace {

class PgUnitOfWorkTest : public ::testing::Test {
protected:
    void SetUp() override {
        const char* uri = std::getenv("KEEL_TEST_PG");
        ASSERT_NE(uri, nullptr) << "KEEL_TEST_PG is not set (scripts/services.sh env)";
        server_ = uri;
        static std::atomic<int> counter{0};
        schema_ = "keel_u_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
        store_ = OpenStore(server_ + "?schema=" + schema_).value();
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Exec("CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL)").ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    void TearDown() override {
        store_.reset();
        PGconn* c = PQconnectdb(server_.c_str());
        PQsetNoticeProcessor(c, [](void*, const char*) {}, nullptr);
        PQclear(PQexec(c, ("DROP SCHEMA IF EXISTS " + schema_ + " CASCADE").c_str()));
        PQfinish(c);
    }
    int64_t Balance(const std::string& id) {
        auto uow = UnitOfWork::Begin(*store_).value();
        auto rows = uow.Query("SELECT balance FROM accounts WHERE id = ?", {id}).value();
        return rows.empty() ? -1 : rows.Int(0, 0).value();
    }
    static EventData Event(std::string type) { return EventData{{}, std::move(type), "{}", ""}; }

    std::string server_, schema_;
    std::unique_ptr<EventStore> store_;
};

struct Offset {
    std::string customer;
    int64_t amount;
};

TEST_F(PgUnitOfWorkTest, RowsEventsOutboxCommitTogetherAndAFailingHandlerUndoesAll) {
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_EQ(uow.Exec("INSERT INTO accounts VALUES (?, ?)", {std::string("c-1"), int64_t{100}}).value(), 1);
        ASSERT_TRUE(uow.Append("Account-c-1", ExpectedVersion::NoStream(), {Event("Opened")}).ok());
        ASSERT_TRUE(uow.Enqueue(Message{"accounts", "Account-c-1", {}, "opened", {{"h", "v"}}}).ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    EXPECT_EQ(Balance("c-1"), 100);
    EXPECT_EQ(store_->ReadStream("Account-c-1").value().size(), 1u);
    EXPECT_EQ(GetOutboxStats(*store_).value().pending, 1);

    Mediator mediator;
    mediator.On<Offset>([](UnitOfWork& uow, const Offset& e) -> Status {
        KEEL_RETURN_IF_ERROR(
            uow.Exec("UPDATE accounts SET balance = balance - ? WHERE id = ?", {e.amount, e.customer}).status());
        return Status::FailedPrecondition("offset refused");
    });
    auto uow = UnitOfWork::Begin(*store_, &mediator).value();
    ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('s-1', 40)").ok());
    EXPECT_EQ(uow.Exec("INSERT INTO accounts VALUES ('s-1', 41)").status().code(), StatusCode::kAlreadyExists);
    EXPECT_EQ(uow.Exec("SELECT * FROM nowhere").status().code(), StatusCode::kInvalidArgument);
    ASSERT_TRUE(uow.Append("Shipment-1", ExpectedVersion::Any(), {Event("PaymentOffset")}).ok());  // still usable
    uow.Raise(Offset{"c-1", 40});
    EXPECT_EQ(uow.Commit().code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(Balance("c-1"), 100);
    EXPECT_EQ(Balance("s-1"), -1);
    EXPECT_EQ(store_->ReadStream("Shipment-1").status().code(), StatusCode::kNotFound);

    auto inbox = UnitOfWork::Begin(*store_).value();
    const Uuid id = Uuid::Generate();
    EXPECT_TRUE(inbox.MarkProcessed("bar", id).value());
    EXPECT_FALSE(inbox.MarkProcessed("bar", id).value());
}

TEST_F(PgUnitOfWorkTest, RelayPublishesTheOutboxInOrderPerKey) {
    auto dir = std::filesystem::temp_directory_path() / ("keel_pg_relay_" + schema_);
    std::filesystem::create_directories(dir);
    auto broker = OpenBroker("local://" + (dir / "broker.db").string()).value();
    ASSERT_TRUE(broker->Declare("orders", "g").ok());
    for (int b = 0; b < 5; ++b) {
        auto uow = UnitOfWork::Begin(*store_).value();
        for (int i = 0; i < 20; ++i) {
            const int n = b * 20 + i;
            const std::string key = "K" + std::to_string(n % 4);
            ASSERT_TRUE(uow.Enqueue(Message{"orders", key, {}, key + ":" + std::to_string(n / 4), {}}).ok());
        }
        ASSERT_TRUE(uow.Commit().ok());
    }
    auto relay = Relay::Start(*store_, *broker).value();
    ASSERT_TRUE(relay->Drain(std::chrono::seconds(20)).ok());
    relay->Stop();
    auto consumer = broker->Consume("orders", "g").value();
    std::map<std::string, std::vector<std::string>> by_key;
    for (int i = 0; i < 100; ++i) {
        auto d = consumer->Receive(std::chrono::seconds(2)).value();
        ASSERT_TRUE(d.has_value());
        by_key[d->message.key].push_back(d->message.payload);
        ASSERT_TRUE(consumer->Ack(*d).ok());
    }
    for (const auto& [key, payloads] : by_key) {
        ASSERT_EQ(payloads.size(), 25u);
        for (int i = 0; i < 25; ++i) EXPECT_EQ(payloads[static_cast<size_t>(i)], key + ":" + std::to_string(i));
    }
    consumer.reset();
    broker.reset();
    std::filesystem::remove_all(dir);
}

TEST_F(PgUnitOfWorkTest, ProjectionKeepsAReadModelWithItsCheckpoint) {
    for (int i = 0; i < 30; ++i) {
        ASSERT_TRUE(store_->Append("Deposit-" + std::to_string(i), ExpectedVersion::NoStream(), {Event("Deposited")}).ok());
    }
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('total', 0)").ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    ProjectionOptions o;
    o.name = "totals";
    o.batch_size = 8;
    auto projection = Projection::Start(*store_, o, [](UnitOfWork& uow, const RecordedEvent&) {
                          return uow.Exec("UPDATE accounts SET balance = balance + 1 WHERE id = 'total'").status();
                      }).value();
    ASSERT_TRUE(projection->WaitFor(store_->HeadPosition().value(), std::chrono::seconds(10)).ok());
    projection->Stop();
    EXPECT_EQ(Balance("total"), 30);
    EXPECT_EQ(store_->LoadCheckpoint(ProjectionCheckpointName("totals")).value(), store_->HeadPosition().value());
}

}  // namespace
}  // namespace keel
