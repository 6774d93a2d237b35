// Units of work on MariaDB (needs KEEL_TEST_MYSQL; fails, not skips, without it): the service's rows, events, outbox
// and inbox commit together or not at all, a failing domain-event handler undoes everything (seed 002 — on InnoDB),
// and non-transactional tables are refused. Each test runs in a database of its own.

#include <filesystem>
#include <map>
#include <thread>

#include <gtest/gtest.h>

#include "keel/broker.hpp"
#include "keel/outbox.hpp"
#include "keel/unit_of_work.hpp"

#include "store/mysql/mysql_test_db.hpp"

namespace keel {
namespace {

using detail::MysqlTestDatabase;

class MysqlUnitOfWorkTest : public ::testing::Test {
protected:
    void SetUp() override {
        auto db = MysqlTestDatabase::Create("keel_uow");
        ASSERT_TRUE(db.ok()) << db.status().ToString();
        db_ = std::move(*db);
        store_ = OpenStore(db_->uri()).value();
        auto uow = UnitOfWork::Begin(*store_);
        ASSERT_TRUE(uow.ok()) << uow.status().ToString();
        ASSERT_TRUE(uow->Exec("CREATE TABLE accounts (id VARCHAR(64) PRIMARY KEY, balance BIGINT NOT NULL)").ok());
        ASSERT_TRUE(uow->Commit().ok());
    }
    void TearDown() override {
        store_.reset();
        db_.reset();
    }
    int64_t Balance(const std::string& id) {
        auto uow = UnitOfWork::Begin(*store_).value();
        auto rows = uow.Query("SELECT balance FROM accounts WHERE id = ?", {id}).value();
        return rows.empty() ? -1 : rows.Int(0, 0).value();
    }
    int64_t Count(const std::string& table) {
        auto uow = UnitOfWork::Begin(*store_).value();
        return uow.Query("SELECT count(*) FROM " + table).value().Int(0, 0).value();
    }
    static EventData Event(std::string type) { return EventData{{}, std::move(type), "{}", ""}; }

    std::unique_ptr<MysqlTestDatabase> db_;
    std::unique_ptr<EventStore> store_;
};

struct Offset {
    std::string customer;
    int64_t amount;
};

TEST_F(MysqlUnitOfWorkTest, RowsEventsAndOutboxCommitTogether) {
    auto uow = UnitOfWork::Begin(*store_).value();
    ASSERT_EQ(uow.Exec("INSERT INTO accounts (id, balance) VALUES (?, ?)", {std::string("a-1"), int64_t{100}}).value(),
              1);
    auto appended = uow.Append("Account-a-1", ExpectedVersion::NoStream(), {Event("Opened"), Event("Credited")});
    ASSERT_TRUE(appended.ok()) << appended.status().ToString();
    EXPECT_EQ(appended->next_expected_version, 1);
    auto id =
        uow.Enqueue(OutboxMessage{"accounts", "Account-a-1", {}, std::string("op\0ened", 7), {{"type", "Opened"}}});
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    EXPECT_EQ(store_->ReadStream("Account-a-1").status().code(), StatusCode::kNotFound);  // not visible yet
    ASSERT_TRUE(uow.Commit().ok());
    EXPECT_FALSE(uow.active());

    EXPECT_EQ(Balance("a-1"), 100);
    auto events = store_->ReadStream("Account-a-1").value();
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[1].type, "Credited");
    EXPECT_EQ(store_->HeadPosition().value(), events[1].global_position);
    auto check = UnitOfWork::Begin(*store_).value();
    auto outbox = check.Query("SELECT destination, `key`, payload, headers, published_at FROM keel_outbox").value();
    ASSERT_EQ(outbox.size(), 1u);
    EXPECT_EQ(outbox.Text(0, 0).value(), "accounts");
    EXPECT_EQ(outbox.Text(0, 1).value(), "Account-a-1");
    EXPECT_EQ(outbox.rows[0][2], SqlValue(Blob{std::string("op\0ened", 7)}));
    EXPECT_EQ(outbox.Text(0, 3).value(), R"({"type":"Opened"})");
    EXPECT_TRUE(outbox.IsNull(0, 4));
}

TEST_F(MysqlUnitOfWorkTest, DestroyedWithoutCommitLeavesNoTrace) {
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('a-2', 5)").ok());
        ASSERT_TRUE(uow.Append("Account-a-2", ExpectedVersion::Any(), {Event("Opened")}).ok());
        ASSERT_TRUE(uow.Enqueue(OutboxMessage{"accounts", "k", {}, "p", {}}).ok());
        ASSERT_TRUE(uow.MarkProcessed("c", Uuid::Generate()).value());
    }
    EXPECT_EQ(Count("accounts"), 0);
    EXPECT_EQ(Count("keel_outbox"), 0);
    EXPECT_EQ(Count("keel_inbox"), 0);
    EXPECT_EQ(store_->HeadPosition().value(), 0);
    // The sequencer lock went with the rollback: the store appends at once.
    EXPECT_TRUE(store_->Append("Other-1", ExpectedVersion::Any(), {Event("X")}).ok());
}

// Seed 002: the first aggregate's rows, the handler's rows, the events and the outbox are undone together when a
// domain-event handler fails — which on MariaDB holds only because every table is InnoDB.
TEST_F(MysqlUnitOfWorkTest, FailingDomainEventHandlerRollsBackEverything) {
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('c-1', 100)").ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    Mediator mediator;
    int handled = 0;
    mediator.On<Offset>([&](UnitOfWork& uow, const Offset& e) -> Status {
        ++handled;
        KEEL_RETURN_IF_ERROR(
            uow.Exec("UPDATE accounts SET balance = balance - ? WHERE id = ?", {e.amount, e.customer}).status());
        return Status::FailedPrecondition("offset refused");
    });
    auto uow = UnitOfWork::Begin(*store_, &mediator).value();
    ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('s-1', 40)").ok());
    ASSERT_TRUE(uow.Append("Shipment-1", ExpectedVersion::Any(), {Event("PaymentOffset")}).ok());
    ASSERT_TRUE(uow.Enqueue(OutboxMessage{"shipments", "Shipment-1", {}, "offset", {}}).ok());
    uow.Raise(Offset{"c-1", 40});
    EXPECT_EQ(uow.Commit().code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(handled, 1);
    EXPECT_EQ(Balance("c-1"), 100);
    EXPECT_EQ(Balance("s-1"), -1);
    EXPECT_EQ(store_->ReadStream("Shipment-1").status().code(), StatusCode::kNotFound);
    EXPECT_EQ(Count("keel_outbox"), 0);

    // The same with a handler that succeeds: everything commits.
    Mediator ok_mediator;
    ok_mediator.On<Offset>([](UnitOfWork& u, const Offset& e) {
        return u.Exec("UPDATE accounts SET balance = balance - ? WHERE id = ?", {e.amount, e.customer}).status();
    });
    auto ok = UnitOfWork::Begin(*store_, &ok_mediator).value();
    ASSERT_TRUE(ok.Exec("INSERT INTO accounts VALUES ('s-1', 40)").ok());
    ok.Raise(Offset{"c-1", 40});
    ASSERT_TRUE(ok.Commit().ok());
    EXPECT_EQ(Balance("c-1"), 60);
    EXPECT_EQ(Balance("s-1"), 40);
}

TEST_F(MysqlUnitOfWorkTest, FailedStatementsLeaveTheUnitUsable) {
    auto uow = UnitOfWork::Begin(*store_).value();
    ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('d-1', 1)").ok());
    EXPECT_EQ(uow.Exec("INSERT INTO accounts VALUES ('d-1', 2)").status().code(), StatusCode::kAlreadyExists);
    EXPECT_EQ(uow.Exec("SELECT * FROM nowhere").status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(uow.Exec("NOT SQL AT ALL").status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(uow.Exec("INSERT INTO accounts VALUES (?, ?)", {std::string("x")}).status().code(),
              StatusCode::kInvalidArgument);  // a parameter short
    // Quotes, backslashes and '?' inside values and literals are data, not placeholders.
    ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES (?, ?)", {std::string("it's \\ ? \"q\""), int64_t{7}}).ok());
    auto rows =
        uow.Query("SELECT id, balance, 'literal ?', 1.5, NULL FROM accounts WHERE balance = ?", {int64_t{7}}).value();
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows.Text(0, 0).value(), "it's \\ ? \"q\"");
    EXPECT_EQ(rows.Int(0, 1).value(), 7);
    EXPECT_EQ(rows.Text(0, 2).value(), "literal ?");
    EXPECT_DOUBLE_EQ(rows.Real(0, 3).value(), 1.5);
    EXPECT_TRUE(rows.IsNull(0, 4));
    EXPECT_EQ(rows.columns[1], "balance");
    ASSERT_TRUE(uow.Commit().ok());
    EXPECT_EQ(Balance("d-1"), 1);
    EXPECT_EQ(Count("accounts"), 2);
}

TEST_F(MysqlUnitOfWorkTest, AppendsCheckVersionsAndAreIdempotent) {
    const Uuid id = Uuid::Generate();
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Append("S-1", ExpectedVersion::NoStream(), {EventData{id, "A", "{}", ""}}).ok());
        auto conflict = uow.Append("S-1", ExpectedVersion::NoStream(), {Event("B")});
        EXPECT_EQ(conflict.status().code(), StatusCode::kWrongExpectedVersion);
        auto resend = uow.Append("S-1", ExpectedVersion::NoStream(), {EventData{id, "A", "{}", ""}});
        ASSERT_TRUE(resend.ok()) << resend.status().ToString();
        EXPECT_TRUE(resend->already_present);
        ASSERT_TRUE(uow.Append("S-1", ExpectedVersion::Exact(0), {Event("B")}).ok());  // still usable
        ASSERT_TRUE(uow.Commit().ok());
    }
    auto events = store_->ReadStream("S-1").value();
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[0].event_id, id);
    EXPECT_EQ(events[1].stream_version, 1);
    // An append through the store after the unit continues the stream.
    ASSERT_TRUE(store_->Append("S-1", ExpectedVersion::Exact(1), {Event("C")}).ok());
    auto uow = UnitOfWork::Begin(*store_).value();
    auto r = uow.Append("S-1", ExpectedVersion::Exact(2), {Event("D")});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_TRUE(uow.Commit().ok());
    EXPECT_EQ(store_->ReadStream("S-1").value().size(), 4u);
}

// Appends in a unit of work hold the sequencer until it ends: a concurrent append waits, and $all positions stay in
// commit order.
TEST_F(MysqlUnitOfWorkTest, StoreAppendsWaitForAnOpenUnitThatAppended) {
    auto uow = UnitOfWork::Begin(*store_).value();
    ASSERT_TRUE(uow.Append("U-1", ExpectedVersion::Any(), {Event("InUnit")}).ok());
    std::atomic<bool> appended{false};
    std::thread other([&] {
        EXPECT_TRUE(store_->Append("Other-1", ExpectedVersion::Any(), {Event("Outside")}).ok());
        appended = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_FALSE(appended.load());
    ASSERT_TRUE(uow.Commit().ok());
    other.join();
    auto all = store_->ReadAll().value();
    ASSERT_EQ(all.events.size(), 2u);
    EXPECT_EQ(all.events[0].type, "InUnit");
    EXPECT_EQ(all.events[1].type, "Outside");
}

TEST_F(MysqlUnitOfWorkTest, InboxMarksOnceAndCheckpointsCommitWithTheUnit) {
    const Uuid id = Uuid::Generate();
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        EXPECT_TRUE(uow.MarkProcessed("bar", id).value());
        EXPECT_FALSE(uow.MarkProcessed("bar", id).value());
        EXPECT_TRUE(uow.MarkProcessed("other", id).value());
        EXPECT_FALSE(uow.LoadCheckpoint("proj").value().has_value());
        ASSERT_TRUE(uow.SaveCheckpoint("proj", 42).ok());
        EXPECT_EQ(uow.LoadCheckpoint("proj").value(), 42);
        ASSERT_TRUE(uow.Commit().ok());
    }
    EXPECT_EQ(store_->LoadCheckpoint("proj").value(), 42);
    auto uow = UnitOfWork::Begin(*store_).value();
    EXPECT_FALSE(uow.MarkProcessed("bar", id).value());
}

// Seed 002's two weeks: a MyISAM table keeps its rows when the transaction rolls back. Units of work refuse such a
// database, and a unit that creates such a table fails.
TEST_F(MysqlUnitOfWorkTest, NonTransactionalTablesAreRefused) {
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        auto s = uow.Exec("CREATE TABLE notes (id INT PRIMARY KEY) ENGINE=MyISAM");
        EXPECT_EQ(s.status().code(), StatusCode::kFailedPrecondition) << s.status().ToString();
        EXPECT_NE(s.status().message().find("notes"), std::string::npos) << s.status().message();
        EXPECT_NE(s.status().message().find("MyISAM"), std::string::npos) << s.status().message();
    }
    auto again = UnitOfWork::Begin(*store_);
    EXPECT_EQ(again.status().code(), StatusCode::kFailedPrecondition) << again.status().ToString();
    ASSERT_TRUE(db_->Exec("ALTER TABLE notes ENGINE=InnoDB", /*in_database=*/true).ok());
    // Checked again at the next Begin: now every table is InnoDB.
    auto uow = UnitOfWork::Begin(*store_);
    ASSERT_TRUE(uow.ok()) << uow.status().ToString();
    ASSERT_TRUE(uow->Exec("INSERT INTO notes VALUES (1)").ok());
}

TEST_F(MysqlUnitOfWorkTest, DdlInAUnitStartsAFreshTransactionForWhatFollows) {
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Exec("CREATE TABLE t2 (id INT PRIMARY KEY)").ok());
        ASSERT_TRUE(uow.Exec("INSERT INTO t2 VALUES (1)").ok());
        // destroyed: the INSERT after the DDL rolls back
    }
    EXPECT_EQ(Count("t2"), 0);
}

// The relay publishes what units of work enqueued, in order per key, and marks it published.
TEST_F(MysqlUnitOfWorkTest, RelayPublishesTheOutboxInOrderPerKey) {
    auto dir = std::filesystem::temp_directory_path() / ("keel_my_relay_" + db_->name());
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
    {
        auto dropped = UnitOfWork::Begin(*store_).value();  // rolled back: never published
        ASSERT_TRUE(dropped.Enqueue(Message{"orders", "K0", {}, "rolled back", {}}).ok());
    }
    EXPECT_EQ(GetOutboxStats(*store_).value().pending, 100);
    auto relay = Relay::Start(*store_, *broker).value();
    ASSERT_TRUE(relay->Drain(std::chrono::seconds(20)).ok());
    relay->Stop();
    auto stats = GetOutboxStats(*store_).value();
    EXPECT_EQ(stats.pending, 0);
    EXPECT_EQ(stats.published, 100);
    auto consumer = broker->Consume("orders", "g").value();
    std::map<std::string, std::vector<std::string>> by_key;
    for (int i = 0; i < 100; ++i) {
        auto d = consumer->Receive(std::chrono::seconds(2)).value();
        ASSERT_TRUE(d.has_value());
        by_key[d->message.key].push_back(d->message.payload);
        ASSERT_TRUE(consumer->Ack(*d).ok());
    }
    EXPECT_FALSE(consumer->Receive(std::chrono::milliseconds(200)).value().has_value());
    for (const auto& [key, payloads] : by_key) {
        ASSERT_EQ(payloads.size(), 25u);
        for (int i = 0; i < 25; ++i) EXPECT_EQ(payloads[static_cast<size_t>(i)], key + ":" + std::to_string(i));
    }
    consumer.reset();
    broker.reset();
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace keel
