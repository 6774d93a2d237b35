#pragma once
// The barrier's behaviour, one suite for every database: barrier_test.cpp (SQLite), barrier_pgtest.cpp (PostgreSQL)
// and barrier_mytest.cpp (MariaDB) each define OpenServiceDatabase/DropServiceDatabase and include this file.
// Scenarios from DTM's barrier tests (../shared/dtm-protocol.md §3, §8.2): idempotency, null compensation, hanging
// prevention, the msg DoAndSubmit/back-check race, rollback of the business SQL, two Calls in one handler, and a
// try and its cancel racing from two threads.

#include <atomic>
#include <chrono>
#include <iostream>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "keel/barrier.hpp"
#include "keel/event_store.hpp"
#include "keel/unit_of_work.hpp"

namespace keel::dtm::testing {

// A fresh, empty service database for one test (the test fails when none can be had), and its removal.
std::unique_ptr<EventStore> OpenServiceDatabase(const std::string& test_name);
void DropServiceDatabase();

class BarrierTest : public ::testing::Test {
protected:
    void SetUp() override {
        db_ = OpenServiceDatabase(::testing::UnitTest::GetInstance()->current_test_info()->name());
        ASSERT_NE(db_, nullptr);
        auto table = EnsureBarrierTable(*db_);
        ASSERT_TRUE(table.ok()) << table.status().ToString();
        table_ = *table;
        ASSERT_NE(table_.dialect, BarrierDialect::kAuto);
        auto again = EnsureBarrierTable(*db_);  // idempotent
        ASSERT_TRUE(again.ok()) << again.status().ToString();
        auto uow = UnitOfWork::Begin(*db_).value();
        ASSERT_TRUE(uow.Exec("CREATE TABLE user_account (user_id INTEGER PRIMARY KEY, balance BIGINT NOT NULL)").ok());
        ASSERT_TRUE(uow.Exec("INSERT INTO user_account (user_id, balance) VALUES (1, 10000), (2, 10000)").ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    void TearDown() override {
        db_.reset();
        DropServiceDatabase();
    }

    int64_t Balance(int user) {
        auto uow = UnitOfWork::Begin(*db_).value();
        return uow.Query("SELECT balance FROM user_account WHERE user_id = ?", {int64_t{user}})
            .value()
            .Int(0, 0)
            .value();
    }
    int64_t BarrierRows(const std::string& gid) {
        auto uow = UnitOfWork::Begin(*db_).value();
        return uow.Query("SELECT count(*) FROM barrier WHERE gid = ?", {gid}).value().Int(0, 0).value();
    }
    std::string Reason(const std::string& gid, const std::string& branch, const std::string& op,
                       const std::string& barrier_id = "01") {
        auto uow = UnitOfWork::Begin(*db_).value();
        auto rows =
            uow.Query("SELECT reason FROM barrier WHERE gid = ? AND branch_id = ? AND op = ? AND barrier_id = ?",
                      {gid, branch, op, barrier_id})
                .value();
        return rows.empty() ? "<none>" : rows.Text(0, 0).value();
    }
    Barrier Make(const std::string& trans_type, const std::string& gid, const std::string& branch,
                 const std::string& op) {
        return Barrier::Make(trans_type, gid, branch, op, table_).value();
    }
    // A business function adjusting user `user` by `amount` and counting its runs.
    Barrier::BusinessFn Adjust(int user, int64_t amount, std::atomic<int>& runs) {
        return [user, amount, &runs](UnitOfWork& uow) -> Status {
            ++runs;
            return uow.Exec("UPDATE user_account SET balance = balance + ? WHERE user_id = ?", {amount, int64_t{user}})
                .status();
        };
    }

    std::unique_ptr<EventStore> db_;
    BarrierTable table_;
};

TEST_F(BarrierTest, SameOpTwiceRunsTheBusinessOnce) {
    std::atomic<int> runs{0};
    auto first = Make("saga", "g-idem", "01", "action");
    ASSERT_TRUE(first.Call(*db_, Adjust(2, 30, runs)).ok());
    auto again = Make("saga", "g-idem", "01", "action");  // the coordinator retries: a new request
    ASSERT_TRUE(again.Call(*db_, Adjust(2, 30, runs)).ok());
    EXPECT_EQ(runs, 1);
    EXPECT_EQ(Balance(2), 10030);
    EXPECT_EQ(Reason("g-idem", "01", "action"), "action");
    // The compensation after a real action runs (its origin row is there).
    auto compensate = Make("saga", "g-idem", "01", "compensate");
    ASSERT_TRUE(compensate.Call(*db_, Adjust(2, -30, runs)).ok());
    EXPECT_EQ(runs, 2);
    EXPECT_EQ(Balance(2), 10000);
}

TEST_F(BarrierTest, CancelBeforeTryIsANullCompensationAndTheLateTryIsANoOp) {
    std::atomic<int> cancels{0}, tries{0};
    auto cancel = Make("tcc", "g-disorder", "01", "cancel");
    ASSERT_TRUE(cancel.Call(*db_, Adjust(1, 30, cancels)).ok());
    EXPECT_EQ(cancels, 0);  // null compensation: the try never ran
    auto cancel_again = Make("tcc", "g-disorder", "01", "cancel");
    ASSERT_TRUE(cancel_again.Call(*db_, Adjust(1, 30, cancels)).ok());
    EXPECT_EQ(cancels, 0);
    auto late_try = Make("tcc", "g-disorder", "01", "try");
    ASSERT_TRUE(late_try.Call(*db_, Adjust(1, -30, tries)).ok());  // 200 without effect: no hanging
    EXPECT_EQ(tries, 0);
    EXPECT_EQ(Balance(1), 10000);
    EXPECT_EQ(Reason("g-disorder", "01", "try"), "cancel");
    EXPECT_EQ(Reason("g-disorder", "01", "cancel"), "cancel");
    EXPECT_EQ(BarrierRows("g-disorder"), 2);
}

TEST_F(BarrierTest, FailingBusinessRollsBackItsSqlAndTheBarrierRow) {
    std::atomic<int> runs{0};
    auto fail = [&runs](UnitOfWork& uow) -> Status {
        ++runs;
        KEEL_RETURN_IF_ERROR(uow.Exec("UPDATE user_account SET balance = balance - 30 WHERE user_id = 1").status());
        return Failure("insufficient balance");
    };
    auto b = Make("saga", "g-fail", "01", "action");
    const Status s = b.Call(*db_, fail);
    EXPECT_TRUE(IsFailure(s)) << s.ToString();
    EXPECT_EQ(s.message(), "insufficient balance");
    EXPECT_EQ(Balance(1), 10000);
    EXPECT_EQ(BarrierRows("g-fail"), 0);
    // A retry of the same branch runs again (nothing was recorded) and may now succeed.
    auto retry = Make("saga", "g-fail", "01", "action");
    ASSERT_TRUE(retry.Call(*db_, Adjust(1, -30, runs)).ok());
    EXPECT_EQ(runs, 2);
    EXPECT_EQ(Balance(1), 9970);

    // A unit of work handed in is finished either way.
    auto uow = UnitOfWork::Begin(*db_).value();
    auto b2 = Make("saga", "g-fail-2", "01", "action");
    EXPECT_EQ(b2.Call(uow, fail).code(), kFailureCode);
    EXPECT_FALSE(uow.active());
    EXPECT_EQ(b2.Call(uow, fail).code(), StatusCode::kFailedPrecondition);
}

TEST_F(BarrierTest, MsgBackCheckFirstMakesDoAndSubmitDuplicatedAndNothingMoves) {
    auto check = Make("msg", "g-msg-late", "00", "msg");
    const Status verdict = check.QueryPrepared(*db_);
    EXPECT_TRUE(IsFailure(verdict)) << verdict.ToString();
    EXPECT_EQ(Reason("g-msg-late", "00", "msg"), "rollback");
    std::atomic<int> runs{0};
    auto local = Make("msg", "g-msg-late", "00", "msg");
    const Status s = local.Call(*db_, Adjust(1, -30, runs));
    EXPECT_EQ(s.code(), kDuplicatedCode) << s.ToString();
    EXPECT_EQ(runs, 0);
    EXPECT_EQ(Balance(1), 10000);
    EXPECT_TRUE(IsFailure(check.QueryPrepared(*db_)));  // the verdict stays
    EXPECT_EQ(BarrierReply(check.QueryPrepared(*db_)).status, 409);
}

TEST_F(BarrierTest, MsgLocalCommitFirstMakesTheBackCheckSucceed) {
    std::atomic<int> runs{0};
    auto local = Make("msg", "g-msg", "00", "msg");
    ASSERT_TRUE(local.Call(*db_, Adjust(1, -30, runs)).ok());
    EXPECT_EQ(runs, 1);
    auto check = Make("msg", "g-msg", "00", "msg");
    EXPECT_TRUE(check.QueryPrepared(*db_).ok());
    EXPECT_TRUE(check.QueryPrepared(*db_).ok());
    EXPECT_EQ(Reason("g-msg", "00", "msg"), "msg");
    EXPECT_EQ(BarrierReply(check.QueryPrepared(*db_)).status, 200);
    EXPECT_EQ(Balance(1), 9970);
}

TEST_F(BarrierTest, MsgLocalTransactionThatFailedLeavesTheBackCheckFailure) {
    auto local = Make("msg", "g-msg-fail", "00", "msg");
    const Status s = local.Call(*db_, [](UnitOfWork& uow) -> Status {
        KEEL_RETURN_IF_ERROR(uow.Exec("UPDATE user_account SET balance = balance - 30 WHERE user_id = 1").status());
        return Status::Unavailable("the commit failed");
    });
    EXPECT_EQ(s.code(), StatusCode::kUnavailable);
    auto check = Make("msg", "g-msg-fail", "00", "msg");
    EXPECT_TRUE(IsFailure(check.QueryPrepared(*db_)));
    EXPECT_EQ(Balance(1), 10000);
}

// The back-check arrives while DoAndSubmit's local transaction is still open: it waits for that transaction and
// reports what it did — SUCCESS after a commit, FAILURE after a rollback — never "rolled back" for one still running.
TEST_F(BarrierTest, MsgBackCheckWaitsForAnOpenLocalTransaction) {
    for (const bool commit : {true, false}) {
        const std::string gid = commit ? "g-open-commit" : "g-open-rollback";
        std::latch inside(1);
        std::atomic<bool> checked{false};
        Status local_result;
        std::thread local([&] {
            auto b = Make("msg", gid, "00", "msg");
            local_result = b.Call(*db_, [&](UnitOfWork& uow) -> Status {
                KEEL_RETURN_IF_ERROR(
                    uow.Exec("UPDATE user_account SET balance = balance - 30 WHERE user_id = 1").status());
                inside.count_down();
                std::this_thread::sleep_for(std::chrono::milliseconds(300));
                EXPECT_FALSE(checked.load()) << "the back-check did not wait for the open local transaction";
                return commit ? Status::Ok() : Status::Unavailable("the local transaction failed");
            });
        });
        inside.wait();
        auto check = Make("msg", gid, "00", "msg");
        const Status verdict = check.QueryPrepared(*db_);
        checked = true;
        local.join();
        if (commit) {
            EXPECT_TRUE(local_result.ok()) << local_result.ToString();
            EXPECT_TRUE(verdict.ok()) << verdict.ToString();
        } else {
            EXPECT_EQ(local_result.code(), StatusCode::kUnavailable);
            EXPECT_TRUE(IsFailure(verdict)) << verdict.ToString();
        }
    }
    EXPECT_EQ(Balance(1), 9970);  // only the committed one moved money
}

TEST_F(BarrierTest, TwoCallsInOneHandlerUseBarrierIds01And02) {
    std::atomic<int> runs{0};
    auto handler = [&] {
        auto b = Make("saga", "g-two", "01", "action");
        KEEL_RETURN_IF_ERROR(b.Call(*db_, Adjust(1, -30, runs)));
        return b.Call(*db_, Adjust(2, 30, runs));
    };
    ASSERT_TRUE(handler().ok());
    EXPECT_EQ(runs, 2);
    EXPECT_EQ(Reason("g-two", "01", "action", "01"), "action");
    EXPECT_EQ(Reason("g-two", "01", "action", "02"), "action");
    ASSERT_TRUE(handler().ok());  // the retried handler does nothing
    EXPECT_EQ(runs, 2);
    EXPECT_EQ(Balance(1), 9970);
    EXPECT_EQ(Balance(2), 10030);
}

TEST_F(BarrierTest, DomainEventsOfTheBusinessCommitWithIt) {
    struct Moved {
        int64_t amount;
    };
    Mediator mediator;
    mediator.On<Moved>([](UnitOfWork& uow, const Moved& e) {
        return uow.Exec("UPDATE user_account SET balance = balance + ? WHERE user_id = 2", {e.amount}).status();
    });
    auto b = Make("saga", "g-events", "01", "action");
    ASSERT_TRUE(b.Call(
                     *db_,
                     [](UnitOfWork& uow) {
                         uow.Raise(Moved{30});
                         return uow.Exec("UPDATE user_account SET balance = balance - 30 WHERE user_id = 1").status();
                     },
                     &mediator)
                    .ok());
    EXPECT_EQ(Balance(1), 9970);
    EXPECT_EQ(Balance(2), 10030);
}

// A try and its cancel arrive at once (the coordinator timed the try out). The unique key serializes them: either
// the try ran and then its cancel compensated it, or the cancel came first (null compensation) and the try was
// stopped (hanging prevention). Never one without the other.
TEST_F(BarrierTest, ConcurrentTryAndCancelHaveExactlyOneOutcome) {
    int both = 0, neither = 0;
    for (int i = 0; i < 20; ++i) {
        const std::string gid = "g-race-" + std::to_string(i);
        std::atomic<int> tries{0}, cancels{0};
        std::latch start(2);
        auto run = [&](const std::string& op, int64_t amount, std::atomic<int>& runs) {
            start.arrive_and_wait();
            for (int attempt = 0;; ++attempt) {  // a deadlock victim is retried, as the coordinator would
                auto b = Make("tcc", gid, "01", op);
                bool ran = false;
                Status s = b.Call(*db_, [&](UnitOfWork& uow) -> Status {
                    ran = true;
                    return uow.Exec("UPDATE user_account SET balance = balance + ? WHERE user_id = 1", {amount})
                        .status();
                });
                if (s.ok()) {
                    if (ran) ++runs;
                    return;
                }
                ASSERT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
                ASSERT_LT(attempt, 20) << s.ToString();
            }
        };
        std::thread t1([&] { run("try", -30, tries); });
        std::thread t2([&] { run("cancel", 30, cancels); });
        t1.join();
        t2.join();
        ASSERT_EQ(tries.load(), cancels.load()) << gid;
        ASSERT_EQ(Balance(1), 10000) << gid;
        (tries == 1 ? both : neither)++;
    }
    EXPECT_EQ(both + neither, 20);
    std::cout << "try-then-cancel: " << both << ", cancel-first: " << neither << "\n";
}

}  // namespace keel::dtm::testing
