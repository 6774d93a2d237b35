// The DTM client end to end: keeld (started by the test, SQLite storage) and a bank service with barrier handlers
// on keel's HTTP server and a SQLite database. Scenarios from DTM's msg/saga/tcc tests (../shared/dtm-protocol.md
// §8.2), observed through /query.

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "keel/barrier.hpp"
#include "keel/dtm.hpp"
#include "keel/uuid.hpp"

#include "keeld/keeld_process.hpp"
#include "net/http_server.hpp"


namespace keel::dtm {
namespace {

using namespace std::chrono_literals;

int64_t Amount(const std::string& body) {
    auto j = nlohmann::json::parse(body, nullptr, false);
    return j.is_object() && j.contains("amount") && j["amount"].is_number_integer() ? j["amount"].get<int64_t>() : 0;
}

// The bank: user_account in SQLite; branch handlers behind the barrier.
class Bank {
public:
    explicit Bank(const std::filesystem::path& dir) {
        db_ = OpenStore("sqlite://" + (dir / "bank.db").string()).value();
        table_ = EnsureBarrierTable(*db_).value();
        auto uow = UnitOfWork::Begin(*db_).value();
        ThrowIfError(
            uow.Exec("CREATE TABLE user_account (user_id INTEGER PRIMARY KEY, balance BIGINT NOT NULL)").status());
        ThrowIfError(uow.Exec("INSERT INTO user_account VALUES (1, 10000), (2, 10000)").status());
        ThrowIfError(uow.Commit());
        net::HttpServerOptions o;
        server_ = net::StandaloneHttpServer::Start(o, [this](net::HttpRequest req, net::Responder respond) {
                      respond(Handle(req));
                  }).value();
        base_ = server_->base_url() + "/api/busi";
    }

    net::HttpResponse Handle(const net::HttpRequest& req) {
        const std::string name = req.path.substr(req.path.rfind('/') + 1);
        if (name == "QueryPrepared") {
            auto b = Barrier::FromQuery(req.query, table_);
            return Reply(b.ok() ? b->QueryPrepared(*db_) : b.status());
        }
        auto b = Barrier::FromQuery(req.query, table_);
        if (!b.ok()) return Reply(b.status());
        const int64_t amount = Amount(req.body);
        int user = 0;
        int64_t delta = 0;
        if (name == "TransOut" || name == "TransOutTry") user = 1, delta = -amount;
        if (name == "TransOutRevert" || name == "TransOutCancel") user = 1, delta = amount;
        if (name == "TransIn" || name == "TransInTry") user = 2, delta = amount;
        if (name == "TransInRevert" || name == "TransInCancel") user = 2, delta = -amount;
        if (name.ends_with("Confirm")) return Reply(b->Call(*db_, [](UnitOfWork&) { return Status::Ok(); }));
        if (user == 0) {
            net::HttpResponse nf;
            nf.status = 404;
            nf.body = R"({"message":"no such route"})";
            return nf;
        }
        const bool fail = (name == "TransIn" || name == "TransInTry") && fail_trans_in_.exchange(false);
        return Reply(b->Call(*db_, [&](UnitOfWork& uow) -> Status {
            if (fail) return Failure("insufficient balance");
            return uow.Exec("UPDATE user_account SET balance = balance + ? WHERE user_id = ?", {delta, int64_t{user}})
                .status();
        }));
    }

    static net::HttpResponse Reply(const Status& s) {
        auto r = BarrierReply(s);
        net::HttpResponse out;
        out.status = r.status;
        out.body = std::move(r.body);
        return out;
    }

    int64_t Balance(int user) {
        auto uow = UnitOfWork::Begin(*db_).value();
        return uow.Query("SELECT balance FROM user_account WHERE user_id = ?", {int64_t{user}})
            .value()
            .Int(0, 0)
            .value();
    }

    std::unique_ptr<EventStore> db_;
    BarrierTable table_;
    std::unique_ptr<net::StandaloneHttpServer> server_;
    std::string base_;
    std::atomic<bool> fail_trans_in_{false};
};

class DtmClientTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ =
            std::filesystem::temp_directory_path() / ("keel_dtm_client_" + std::to_string(::getpid()) + "_" +
                                                      ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
        keeld_ = std::make_unique<keeld_test::KeeldProcess>();
        Status started = keeld_->Start();
        ASSERT_TRUE(started.ok()) << started.ToString();
        server_ = keeld_->api();
        bank_ = std::make_unique<Bank>(dir_);
    }
    void TearDown() override {
        bank_.reset();
        keeld_.reset();
        std::filesystem::remove_all(dir_);
    }

    // Polls /query until the transaction has `status` (or 20 s pass); returns the last state seen.
    TransInfo WaitFor(const std::string& gid, const std::string& status) {
        TransInfo last;
        const auto deadline = std::chrono::steady_clock::now() + 20s;
        while (std::chrono::steady_clock::now() < deadline) {
            auto q = QueryTrans(server_, gid);
            if (q.ok() && q->has_value()) {
                last = **q;
                if (last.status == status) return last;
            }
            std::this_thread::sleep_for(50ms);
        }
        ADD_FAILURE() << gid << " did not reach " << status << "; last status '" << last.status << "': " << last.json;
        return last;
    }
    // Client-made gids (DTM allows any unique string), so that each scenario does not depend on newGid, which
    // NewGidAndQueryOfAnUnknownGid tests.
    static std::string Gid() { return "keel-client-" + Uuid::Generate().ToString(); }
    static std::vector<std::string> Statuses(const TransInfo& t) {
        std::vector<std::string> out;
        for (const auto& b : t.branches) out.push_back(b.status);
        return out;
    }

    std::filesystem::path dir_;
    std::unique_ptr<keeld_test::KeeldProcess> keeld_;
    std::string server_;
    std::unique_ptr<Bank> bank_;
};

const std::string kPayload = R"({"amount":30})";

TEST_F(DtmClientTest, NewGidAndQueryOfAnUnknownGid) {
    auto gid = NewGid(server_);
    ASSERT_TRUE(gid.ok()) << gid.status().ToString();
    EXPECT_FALSE(gid->empty());
    EXPECT_NE(*gid, NewGid(server_).value());
    auto q = QueryTrans(server_, "no-such-gid");
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    EXPECT_FALSE(q->has_value());
    // Transport errors are told apart from FAILURE.
    auto down = NewGid("http://127.0.0.1:1/api/dtmsvr");
    EXPECT_TRUE(down.status().code() == StatusCode::kUnavailable ||
                down.status().code() == StatusCode::kDeadlineExceeded)
        << down.status().ToString();
    EXPECT_FALSE(IsFailure(down.status()));
}

TEST_F(DtmClientTest, MsgDoAndSubmitDBMovesTheMoneyOnce) {
    const std::string gid = Gid();
    Msg msg(server_, gid);
    msg.Add(bank_->base_ + "/TransIn", kPayload);
    const Status s = msg.DoAndSubmitDB(
        bank_->base_ + "/QueryPrepared", *bank_->db_,
        [](UnitOfWork& uow) {
            return uow.Exec("UPDATE user_account SET balance = balance - 30 WHERE user_id = 1").status();
        },
        bank_->table_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    auto t = WaitFor(gid, "succeed");
    EXPECT_EQ(t.trans_type, "msg");
    EXPECT_EQ(Statuses(t), std::vector<std::string>({"succeed"}));
    EXPECT_EQ(bank_->Balance(1), 9970);
    EXPECT_EQ(bank_->Balance(2), 10030);
    // Submitting a finished message again is a FAILURE (409), not a transport error.
    EXPECT_TRUE(IsFailure(msg.Prepare(bank_->base_ + "/QueryPrepared")));
}

TEST_F(DtmClientTest, MsgBusinessFailureAbortsAndNothingMoves) {
    const std::string gid = Gid();
    Msg msg(server_, gid);
    msg.Add(bank_->base_ + "/TransIn", kPayload);
    const Status s = msg.DoAndSubmitDB(
        bank_->base_ + "/QueryPrepared", *bank_->db_,
        [](UnitOfWork& uow) -> Status {
            KEEL_RETURN_IF_ERROR(uow.Exec("UPDATE user_account SET balance = balance - 30 WHERE user_id = 1").status());
            return Failure("insufficient balance");
        },
        bank_->table_);
    EXPECT_TRUE(IsFailure(s)) << s.ToString();
    auto t = WaitFor(gid, "failed");
    EXPECT_EQ(Statuses(t), std::vector<std::string>({"prepared"}));
    EXPECT_EQ(bank_->Balance(1), 10000);
    EXPECT_EQ(bank_->Balance(2), 10000);
}

// The sender commits its local transaction and dies before submit: keeld's back-check finds the commit and
// delivers the message.
TEST_F(DtmClientTest, MsgCommittedButNeverSubmittedIsFinishedByTheBackCheck) {
    const std::string gid = Gid();
    Msg msg(server_, gid);
    msg.Add(bank_->base_ + "/TransIn", kPayload);
    msg.options().timeout_to_fail = 1;
    msg.options().retry_interval = 1;
    ASSERT_TRUE(msg.Prepare(bank_->base_ + "/QueryPrepared").ok());
    auto local = Barrier::Make("msg", gid, "00", "msg", bank_->table_).value();
    ASSERT_TRUE(
        local
            .Call(*bank_->db_,
                  [](UnitOfWork& uow) {
                      return uow.Exec("UPDATE user_account SET balance = balance - 30 WHERE user_id = 1").status();
                  })
            .ok());
    // (no Submit: the sender "crashed")
    auto t = WaitFor(gid, "succeed");
    EXPECT_EQ(Statuses(t), std::vector<std::string>({"succeed"}));
    EXPECT_EQ(bank_->Balance(1), 9970);
    EXPECT_EQ(bank_->Balance(2), 10030);
}

// The sender prepared and died before its local transaction: the back-check decides "rolled back", the message
// fails, and a late local transaction is refused (ErrDuplicated) so nothing moves.
TEST_F(DtmClientTest, MsgBackCheckBeforeTheLocalTransactionFailsItForGood) {
    const std::string gid = Gid();
    Msg msg(server_, gid);
    msg.Add(bank_->base_ + "/TransIn", kPayload);
    msg.options().timeout_to_fail = 1;
    msg.options().retry_interval = 1;
    ASSERT_TRUE(msg.Prepare(bank_->base_ + "/QueryPrepared").ok());
    auto t = WaitFor(gid, "failed");
    EXPECT_EQ(Statuses(t), std::vector<std::string>({"prepared"}));
    auto late = Barrier::Make("msg", gid, "00", "msg", bank_->table_).value();
    const Status s = late.Call(*bank_->db_, [](UnitOfWork& uow) {
        return uow.Exec("UPDATE user_account SET balance = balance - 30 WHERE user_id = 1").status();
    });
    EXPECT_EQ(s.code(), kDuplicatedCode) << s.ToString();
    EXPECT_EQ(bank_->Balance(1), 10000);
    EXPECT_EQ(bank_->Balance(2), 10000);
}

TEST_F(DtmClientTest, SagaNormalWithWaitResult) {
    const std::string gid = Gid();
    Saga saga(server_, gid);
    saga.Add(bank_->base_ + "/TransOut", bank_->base_ + "/TransOutRevert", kPayload);
    saga.Add(bank_->base_ + "/TransIn", bank_->base_ + "/TransInRevert", kPayload);
    saga.options().wait_result = true;
    const Status s = saga.Submit();
    ASSERT_TRUE(s.ok()) << s.ToString();
    auto t = WaitFor(gid, "succeed");
    EXPECT_EQ(Statuses(t), std::vector<std::string>({"prepared", "succeed", "prepared", "succeed"}));
    EXPECT_EQ(bank_->Balance(1), 9970);
    EXPECT_EQ(bank_->Balance(2), 10030);
}

TEST_F(DtmClientTest, SagaRollbackCompensatesIncludingTheFailedStep) {
    bank_->fail_trans_in_ = true;
    const std::string gid = Gid();
    Saga saga(server_, gid);
    saga.Add(bank_->base_ + "/TransOut", bank_->base_ + "/TransOutRevert", kPayload);
    saga.Add(bank_->base_ + "/TransIn", bank_->base_ + "/TransInRevert", kPayload);
    saga.options().wait_result = true;
    const Status s = saga.Submit();
    EXPECT_TRUE(IsFailure(s)) << s.ToString();
    auto t = WaitFor(gid, "failed");
    EXPECT_EQ(Statuses(t), std::vector<std::string>({"succeed", "succeed", "succeed", "failed"}));
    EXPECT_NE(t.rollback_reason.find("insufficient balance"), std::string::npos) << t.rollback_reason;
    // The failed TransIn's compensation was a null compensation (the barrier saw no action row).
    EXPECT_EQ(bank_->Balance(1), 10000);
    EXPECT_EQ(bank_->Balance(2), 10000);
}

TEST_F(DtmClientTest, ConcurrentSagaWithOrders) {
    const std::string gid = Gid();
    Saga saga(server_, gid);
    saga.Add(bank_->base_ + "/TransOut", bank_->base_ + "/TransOutRevert", kPayload);
    saga.Add(bank_->base_ + "/TransIn", bank_->base_ + "/TransInRevert", kPayload);
    saga.EnableConcurrent().AddBranchOrder(1, {0});
    saga.options().wait_result = true;
    ASSERT_TRUE(saga.Submit().ok());
    auto t = WaitFor(gid, "succeed");
    EXPECT_EQ(bank_->Balance(1), 9970);
    EXPECT_EQ(bank_->Balance(2), 10030);
}

TEST_F(DtmClientTest, TccConfirmsOnSuccessAndCancelsOnFailure) {
    const std::string gid = Gid();
    const Status ok = TccGlobalTransaction(server_, gid, [&](Tcc& tcc) -> Status {
        auto out = tcc.CallBranch(kPayload, bank_->base_ + "/TransOutTry", bank_->base_ + "/TransOutConfirm",
                                  bank_->base_ + "/TransOutCancel");
        if (!out.ok()) return out.status();
        return tcc
            .CallBranch(kPayload, bank_->base_ + "/TransInTry", bank_->base_ + "/TransInConfirm",
                        bank_->base_ + "/TransInCancel")
            .status();
    });
    ASSERT_TRUE(ok.ok()) << ok.ToString();
    auto t = WaitFor(gid, "succeed");
    EXPECT_EQ(Statuses(t), std::vector<std::string>({"prepared", "succeed", "prepared", "succeed"}));
    EXPECT_EQ(bank_->Balance(1), 9970);
    EXPECT_EQ(bank_->Balance(2), 10030);

    bank_->fail_trans_in_ = true;
    const std::string gid2 = Gid();
    const Status failed = TccGlobalTransaction(server_, gid2, [&](Tcc& tcc) -> Status {
        auto out = tcc.CallBranch(kPayload, bank_->base_ + "/TransOutTry", bank_->base_ + "/TransOutConfirm",
                                  bank_->base_ + "/TransOutCancel");
        if (!out.ok()) return out.status();
        return tcc
            .CallBranch(kPayload, bank_->base_ + "/TransInTry", bank_->base_ + "/TransInConfirm",
                        bank_->base_ + "/TransInCancel")
            .status();
    });
    EXPECT_TRUE(IsFailure(failed)) << failed.ToString();
    auto t2 = WaitFor(gid2, "failed");
    EXPECT_EQ(Statuses(t2), std::vector<std::string>({"succeed", "prepared", "succeed", "prepared"}));
    EXPECT_EQ(bank_->Balance(1), 9970);  // TransOut's try was cancelled; TransIn's cancel was a null compensation
    EXPECT_EQ(bank_->Balance(2), 10030);
}

}  // namespace
}  // namespace keel::dtm
