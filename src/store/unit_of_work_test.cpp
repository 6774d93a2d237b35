// Units of work on SQLite: the service's rows, events, outbox and inbox commit together or not at all, and domain
// event handlers run inside the same transaction (seed 002).

#include "keel/unit_of_work.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "keel/subscription.hpp"

namespace keel {
namespace {

class UnitOfWorkTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("keel_uow_" + std::to_string(::getpid()) + "_" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
        store_ = OpenStore("sqlite://" + (dir_ / "service.db").string()).value();
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Exec("CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)").ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    void TearDown() override {
        store_.reset();
        std::filesystem::remove_all(dir_);
    }
    int64_t Count(const std::string& table) {
        auto uow = UnitOfWork::Begin(*store_).value();
        return uow.Query("SELECT count(*) FROM " + table).value().Int(0, 0).value();
    }
    static EventData Event(std::string type) { return EventData{{}, std::move(type), "{}", ""}; }

    std::filesystem::path dir_;
    std::unique_ptr<EventStore> store_;
};

TEST_F(UnitOfWorkTest, RowsEventsAndOutboxCommitTogether) {
    auto uow = UnitOfWork::Begin(*store_).value();
    ASSERT_EQ(uow.Exec("INSERT INTO accounts (id, balance) VALUES (?, ?)", {std::string("a-1"), int64_t{100}}).value(), 1);
    auto appended = uow.Append("Account-a-1", ExpectedVersion::NoStream(), {Event("AccountOpened")});
    ASSERT_TRUE(appended.ok()) << appended.status().ToString();
    auto id = uow.Enqueue(OutboxMessage{"accounts", "Account-a-1", {}, R"({"opened":"a-1"})", {{"type", "Opened"}}});
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    // Not visible outside before commit.
    EXPECT_EQ(store_->ReadStream("Account-a-1").status().code(), StatusCode::kNotFound);
    ASSERT_TRUE(uow.Commit().ok());
    EXPECT_FALSE(uow.active());

    EXPECT_EQ(Count("accounts"), 1);
    EXPECT_EQ(store_->ReadStream("Account-a-1").value().size(), 1u);
    auto check = UnitOfWork::Begin(*store_).value();
    auto outbox = check.Query("SELECT destination, key, payload, headers, published_at FROM keel_outbox").value();
    ASSERT_EQ(outbox.size(), 1u);
    EXPECT_EQ(outbox.Text(0, 0).value(), "accounts");
    EXPECT_EQ(outbox.Text(0, 1).value(), "Account-a-1");
    EXPECT_EQ(outbox.Text(0, 2).value(), R"({"opened":"a-1"})");
    EXPECT_EQ(outbox.Text(0, 3).value(), R"({"type":"Opened"})");
    EXPECT_TRUE(outbox.IsNull(0, 4));
}

TEST_F(UnitOfWorkTest, DestroyedWithoutCommitLeavesNoTrace) {
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('a-2', 5)").ok());
        ASSERT_TRUE(uow.Append("Account-a-2", ExpectedVersion::Any(), {Event("AccountOpened")}).ok());
        ASSERT_TRUE(uow.Enqueue(OutboxMessage{"accounts", "k", {}, "p", {}}).ok());
    }
    EXPECT_EQ(Count("accounts"), 0);
    EXPECT_EQ(Count("keel_outbox"), 0);
    EXPECT_EQ(store_->HeadPosition().value(), 0);
    // The store is writable again at once.
    EXPECT_TRUE(store_->Append("Other-1", ExpectedVersion::Any(), {Event("X")}).ok());
}

struct PaymentOffset {
    std::string customer;
    int64_t amount;
};

// Seed 002: a handler of another aggregate runs in the same transaction; when it fails, nothing is kept.
TEST_F(UnitOfWorkTest, FailingDomainEventHandlerRollsBackEverything) {
    Mediator mediator;
    std::atomic<bool> fail{true};
    mediator.On<PaymentOffset>([&](UnitOfWork& uow, const PaymentOffset& e) -> Status {
        auto r = uow.Exec("UPDATE accounts SET balance = balance - ? WHERE id = ?", {e.amount, e.customer});
        if (!r.ok()) return r.status();
        if (fail) return Status::FailedPrecondition("customer handler refused the offset");
        return Status::Ok();
    });
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('c-1', 100)").ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    auto uow = UnitOfWork::Begin(*store_, &mediator).value();
    ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('shipment-1', 40)").ok());
    ASSERT_TRUE(uow.Append("Shipment-1", ExpectedVersion::Any(), {Event("PaymentOffset")}).ok());
    ASSERT_TRUE(uow.Enqueue(OutboxMessage{"payments", "Shipment-1", {}, "{}", {}}).ok());
    uow.Raise(PaymentOffset{"c-1", 40});
    Status s = uow.Commit();
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.message(), "customer handler refused the offset");
    EXPECT_FALSE(uow.active());
    EXPECT_EQ(Count("accounts"), 1);  // only c-1, untouched
    auto check = UnitOfWork::Begin(*store_).value();
    EXPECT_EQ(check.Query("SELECT balance FROM accounts WHERE id = 'c-1'").value().Int(0, 0).value(), 100);
    EXPECT_EQ(check.Query("SELECT count(*) FROM keel_outbox").value().Int(0, 0).value(), 0);
    EXPECT_EQ(store_->ReadStream("Shipment-1").status().code(), StatusCode::kNotFound);
}

TEST_F(UnitOfWorkTest, HandlersRunOnTheSameTransactionAndMayRaiseMore) {
    struct Raised1 {};
    struct Raised2 {};
    Mediator mediator;
    std::vector<std::string> order;
    mediator.On<Raised1>([&](UnitOfWork& uow, const Raised1&) -> Status {
        order.push_back("h1");
        // Sees the caller's uncommitted row: same transaction, same connection.
        if (uow.Query("SELECT count(*) FROM accounts").value().Int(0, 0).value() != 1) {
            return Status::Internal("handler did not see the unit of work's row");
        }
        uow.Raise(Raised2{});
        return Status::Ok();
    });
    mediator.On<Raised2>([&](UnitOfWork& uow, const Raised2&) -> Status {
        order.push_back("h2");
        return uow.Exec("INSERT INTO accounts VALUES ('from-h2', 1)").status();
    });
    auto uow = UnitOfWork::Begin(*store_, &mediator).value();
    ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('x', 1)").ok());
    uow.Raise(Raised1{});
    ASSERT_TRUE(uow.Commit().ok());
    EXPECT_EQ(order, (std::vector<std::string>{"h1", "h2"}));
    EXPECT_EQ(Count("accounts"), 2);
}

TEST_F(UnitOfWorkTest, InboxMarksEachMessageOncePerConsumer) {
    const Uuid id = Uuid::Generate();
    {
        auto uow = UnitOfWork::Begin(*store_).value();
        EXPECT_TRUE(uow.MarkProcessed("bar-service", id).value());
        EXPECT_FALSE(uow.MarkProcessed("bar-service", id).value());
        EXPECT_TRUE(uow.MarkProcessed("other-service", id).value());
        ASSERT_TRUE(uow.Commit().ok());
    }
    auto uow = UnitOfWork::Begin(*store_).value();
    EXPECT_FALSE(uow.MarkProcessed("bar-service", id).value());
    EXPECT_EQ(uow.MarkProcessed("bar-service", Uuid()).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(UnitOfWorkTest, FailedStatementsLeaveTheUnitUsable) {
    auto uow = UnitOfWork::Begin(*store_).value();
    ASSERT_TRUE(uow.Exec("INSERT INTO accounts VALUES ('d', 1)").ok());
    EXPECT_EQ(uow.Exec("INSERT INTO accounts VALUES ('d', 2)").status().code(), StatusCode::kAlreadyExists);
    EXPECT_EQ(uow.Exec("INSERT INTO nowhere VALUES (1)").status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(uow.Exec("INSERT INTO accounts VALUES (?, ?)", {std::string("e")}).status().code(),
              StatusCode::kInvalidArgument);
    ASSERT_TRUE(uow.Append("S-1", ExpectedVersion::NoStream(), {Event("A")}).ok());
    auto conflict = uow.Append("S-1", ExpectedVersion::NoStream(), {Event("B"), Event("C")});
    EXPECT_EQ(conflict.status().code(), StatusCode::kWrongExpectedVersion);
    EXPECT_EQ(conflict.status().actual_version(), 0);
    EXPECT_EQ(uow.Enqueue(OutboxMessage{"bad destination!", "", {}, "", {}}).status().code(),
              StatusCode::kInvalidArgument);
    ASSERT_TRUE(uow.Commit().ok());
    EXPECT_EQ(Count("accounts"), 1);
    EXPECT_EQ(store_->ReadStream("S-1").value().size(), 1u);
    EXPECT_EQ(uow.Exec("SELECT 1").status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(UnitOfWorkTest, SubscribersSeeCommittedEventsAndWritersWaitForTheUnit) {
    std::atomic<int> seen{0};
    SubscriptionOptions options;
    options.poll_interval = std::chrono::seconds(5);  // only the commit notification can wake it in time
    auto sub = store_->Subscribe(options, [&](const RecordedEvent&) {
        ++seen;
        return Status::Ok();
    }).value();
    auto uow = UnitOfWork::Begin(*store_).value();
    ASSERT_TRUE(uow.Append("U-1", ExpectedVersion::Any(), {Event("A")}).ok());
    std::atomic<bool> other_done{false};
    std::thread other([&] {
        EXPECT_TRUE(store_->Append("U-2", ExpectedVersion::Any(), {Event("B")}).ok());
        other_done = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(other_done.load());  // SQLite has one writer: the unit of work holds it
    ASSERT_TRUE(uow.Commit().ok());
    other.join();
    for (int i = 0; i < 200 && seen.load() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(seen.load(), 2);
    EXPECT_TRUE(sub->Stop().ok());
}

// A second unit of work on the thread that holds one would wait for itself: it fails after the busy timeout
// instead of hanging.
TEST_F(UnitOfWorkTest, NestedUnitOnOneThreadFailsInsteadOfDeadlocking) {
    StoreOptions options;
    options.busy_timeout = std::chrono::milliseconds(100);
    auto store = OpenStore("sqlite://" + (dir_ / "nested.db").string(), options).value();
    auto outer = UnitOfWork::Begin(*store).value();
    auto inner = UnitOfWork::Begin(*store);
    EXPECT_EQ(inner.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(inner.status().message().find("busy"), std::string::npos);
    auto append = store->Append("N-1", ExpectedVersion::Any(), {Event("X")});
    EXPECT_EQ(append.status().code(), StatusCode::kUnavailable);
    ASSERT_TRUE(outer.Append("N-1", ExpectedVersion::Any(), {Event("X")}).ok());
    ASSERT_TRUE(outer.Commit().ok());
}

// Unit A commits while unit B waits to begin: A leaves the transaction open for B and its Commit() returns only when
// B ends it. Returns whether that happened (it depends on B being inside Begin when A commits); checks the outcome
// either way: B's `rollback` undoes B only.
bool ShareOneCommit(EventStore& store, bool rollback, int round) {
    const std::string a = "a-" + std::to_string(round), b = "b-" + std::to_string(round);
    auto unit_a = UnitOfWork::Begin(store).value();
    EXPECT_TRUE(unit_a.Exec("INSERT INTO accounts (id, balance) VALUES (?, 1)", {a}).ok());
    std::atomic<bool> b_ended{false};
    std::thread other([&] {
        auto unit_b = UnitOfWork::Begin(store);
        ASSERT_TRUE(unit_b.ok()) << unit_b.status().ToString();
        EXPECT_TRUE(unit_b->Exec("INSERT INTO accounts (id, balance) VALUES (?, 2)", {b}).ok());
        // A sees B's unit running in the transaction A left open; hold it a moment so that an A that did not
        // wait for the shared commit would be seen returning first.
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        if (rollback) {
            auto dropped = std::move(*unit_b);  // destroyed at the end of this block: rolled back
        } else {
            EXPECT_TRUE(unit_b->Commit().ok());
        }
        b_ended = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // B is waiting inside Begin by now, usually
    Status committed = unit_a.Commit();
    const bool shared = b_ended.load();
    other.join();
    EXPECT_TRUE(committed.ok()) << committed.ToString();
    auto check = UnitOfWork::Begin(store).value();
    auto count = [&](const std::string& id) {
        return check.Query("SELECT count(*) FROM accounts WHERE id = ?", {id}).value().Int(0, 0).value();
    };
    EXPECT_EQ(count(a), 1);
    EXPECT_EQ(count(b), rollback ? 0 : 1);
    return shared;
}

TEST_F(UnitOfWorkTest, UnitsWaitingToBeginShareOneCommit) {
    bool shared = false;
    for (int round = 0; round < 5 && !shared; ++round) shared = ShareOneCommit(*store_, /*rollback=*/false, round);
    EXPECT_TRUE(shared) << "the first unit's Commit never waited for the unit that began behind it";
}

TEST_F(UnitOfWorkTest, UnitRolledBackInASharedTransactionUndoesOnlyItself) {
    bool shared = false;
    for (int round = 0; round < 5 && !shared; ++round) shared = ShareOneCommit(*store_, /*rollback=*/true, round);
    EXPECT_TRUE(shared) << "the first unit's Commit never waited for the unit that began behind it";
}

TEST_F(UnitOfWorkTest, ConcurrentUnitsOfWorkAllCommitWithTheirEventsAndOutbox) {
    constexpr int kThreads = 4, kUnits = 100;
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            int64_t version = -1;  // the thread's stream, as its committed units left it
            for (int i = 0; i < kUnits; ++i) {
                const std::string id = std::to_string(t) + "-" + std::to_string(i);
                auto uow = UnitOfWork::Begin(*store_);
                if (!uow.ok()) {
                    failures.fetch_add(1);
                    continue;
                }
                bool ok = uow->Exec("INSERT INTO accounts (id, balance) VALUES (?, ?)", {id, int64_t{i}}).ok();
                ok = ok && uow->Append("Account-" + std::to_string(t), ExpectedVersion::Exact(version),
                                       {Event("Opened")})
                               .ok();
                ok = ok && uow->Enqueue(OutboxMessage{"accounts", "Account-" + std::to_string(t), {}, id, {}}).ok();
                if (i % 10 == 9) continue;  // every tenth unit rolls back (it is destroyed uncommitted)
                ok = ok && uow->Commit().ok();
                if (ok) ++version;
                if (!ok) failures.fetch_add(1);
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    // 90 of every thread's 100 units committed; the rolled-back ones left nothing.
    EXPECT_EQ(Count("accounts"), kThreads * 90);
    EXPECT_EQ(Count("keel_outbox"), kThreads * 90);
    for (int t = 0; t < kThreads; ++t) {
        auto events = store_->ReadStream("Account-" + std::to_string(t)).value();
        EXPECT_EQ(events.size(), 90u);
        for (size_t v = 0; v < events.size(); ++v) EXPECT_EQ(events[v].stream_version, static_cast<int64_t>(v));
    }
}

TEST_F(UnitOfWorkTest, SqlThatControlsTheTransactionIsRefused) {
    auto uow = UnitOfWork::Begin(*store_).value();
    ASSERT_TRUE(uow.Exec("INSERT INTO accounts (id, balance) VALUES ('kept', 1)").ok());
    for (const char* sql : {"COMMIT", "ROLLBACK", "BEGIN", "SAVEPOINT x", "RELEASE keel_uow", "END"}) {
        auto r = uow.Exec(sql);
        EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << sql;
        EXPECT_NE(r.status().message().find("controls the transaction"), std::string::npos) << r.status().message();
    }
    // Nothing was committed early, and the unit still works.
    EXPECT_EQ(store_->ReadStream("Nothing").status().code(), StatusCode::kNotFound);
    ASSERT_TRUE(uow.Exec("INSERT INTO accounts (id, balance) VALUES ('also', 2)").ok());
    ASSERT_TRUE(uow.Commit().ok());
    EXPECT_EQ(Count("accounts"), 2);
}

TEST(UnitOfWorkMemory, StorageWithoutTransactionsIsRefused) {
    auto store = OpenStore("memory:").value();
    auto uow = UnitOfWork::Begin(*store);
    EXPECT_EQ(uow.status().code(), StatusCode::kNotSupported);
    EXPECT_NE(uow.status().message().find("transactions"), std::string::npos);
}

}  // namespace
}  // namespace keel
