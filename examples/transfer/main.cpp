// Seed 003: a cross-bank transfer with keeld, keel's DTM-compatible coordinator, and the sub-transaction barrier.
//
//   transfer [--dir DIR] [--keeld PATH]       runs keeld and the two banks, then every scenario below, checking
//   balances
//
// Bank A (user 1) and bank B (user 2) each have their own SQLite database with DTM's `user_account` table and the
// barrier table, and their own HTTP service (keel's HTTP server) with barrier-guarded handlers:
//   bank A: POST /api/busi/TransOut, /TransOutCompensate, GET /QueryPrepared (the msg back-check)
//   bank B: POST /api/busi/TransIn, /TransInCompensate
// Scenarios:
//   msg           the two-phase message: DoAndSubmitDB debits user 1 in bank A's local transaction and submits the
//                 message whose branch credits user 2 in bank B;
//   msg-crash     the sender (a child process) commits its local transaction and dies (_exit) before submit: keeld's
//                 back-check asks bank A's QueryPrepared, finds the commit, and delivers the credit;
//   msg-refused   a debit larger than the balance: the local transaction fails, the message is aborted, nothing moves;
//   saga          TransOut (bank A) then TransIn (bank B) as a saga;
//   saga-rollback TransIn to an account that does not exist fails: keeld compensates TransOut (and the failed TransIn,
//                 which the barrier turns into a null compensation).
// Each scenario prints "ok <scenario>" after checking both banks' balances; the last line is "ok transfer".
// Exit status: 0 when every check held, 1 otherwise.
//
//   transfer send-and-crash --server URL --bank-a URL --bank-b URL --db PATH --gid GID
// is the crashing sender of msg-crash (run by the demo as a child process).

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keel/barrier.hpp"
#include "keel/dtm.hpp"
#include "keel/unit_of_work.hpp"

#include "net/http_server.hpp"

#ifndef KEEL_KEELD_PATH
#define KEEL_KEELD_PATH "keeld"
#endif

namespace {

namespace fs = std::filesystem;
using keel::EventStore;
using keel::Status;
using keel::UnitOfWork;
using keel::dtm::Barrier;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr int64_t kOpening = 10000;

// DTM's user_account table (seed 003), in SQLite.
constexpr const char* kUserAccount =
    "CREATE TABLE IF NOT EXISTS user_account (\n"
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "  user_id INTEGER NOT NULL UNIQUE,\n"
    "  balance DECIMAL(10,2) NOT NULL DEFAULT 0,\n"
    "  trading_balance DECIMAL(10,2) NOT NULL DEFAULT 0,\n"
    "  create_time TEXT DEFAULT (datetime('now')),\n"
    "  update_time TEXT DEFAULT (datetime('now')))";

struct TransReq {
    int64_t user_id = 0;
    int64_t amount = 0;
};

TransReq ParseReq(const std::string& body) {
    auto j = json::parse(body, nullptr, false);
    TransReq r;
    if (j.is_object()) {
        r.user_id = j.value("user_id", int64_t{0});
        r.amount = j.value("amount", int64_t{0});
    }
    return r;
}

std::string Payload(int64_t user_id, int64_t amount) {
    return json{{"user_id", user_id}, {"amount", amount}}.dump();
}

// Adds `delta` to the balance of `user_id`; FAILURE when the account does not exist or would go negative.
Status AdjustBalance(UnitOfWork& uow, int64_t user_id, int64_t delta) {
    auto changed = uow.Exec(
        "UPDATE user_account SET balance = balance + ?, update_time = datetime('now') WHERE user_id = ? AND "
        "balance + ? >= 0",
        {delta, user_id, delta});
    if (!changed.ok()) return changed.status();
    if (*changed == 0) {
        return keel::dtm::Failure(
            fmt::format("user {}: no such account, or insufficient balance for {}", user_id, delta));
    }
    return Status::Ok();
}

// One bank: its database and its HTTP service.
class Bank {
public:
    static std::unique_ptr<Bank> Open(const std::string& name, const fs::path& db_path, int64_t user_id) {
        auto bank = std::unique_ptr<Bank>(new Bank());
        bank->name_ = name;
        bank->db_ = keel::OpenStore("sqlite://" + db_path.string()).value();
        bank->table_ = keel::dtm::EnsureBarrierTable(*bank->db_).value();
        auto uow = UnitOfWork::Begin(*bank->db_).value();
        keel::ThrowIfError(uow.Exec(kUserAccount).status());
        keel::ThrowIfError(
            uow.Exec("INSERT OR IGNORE INTO user_account (user_id, balance) VALUES (?, ?)", {user_id, kOpening})
                .status());
        keel::ThrowIfError(uow.Commit());
        bank->server_ = keel::net::StandaloneHttpServer::Start({}, [b = bank.get()](keel::net::HttpRequest req,
                                                                                    keel::net::Responder respond) {
                            respond(b->Handle(req));
                        }).value();
        bank->url_ = bank->server_->base_url() + "/api/busi";
        return bank;
    }

    keel::net::HttpResponse Handle(const keel::net::HttpRequest& req) {
        const std::string route = req.path.substr(req.path.rfind('/') + 1);
        auto barrier = Barrier::FromQuery(req.query, table_);
        Status result;
        if (!barrier.ok()) {
            result = barrier.status();
        } else if (route == "QueryPrepared") {
            result = barrier->QueryPrepared(*db_);
        } else {
            const TransReq r = ParseReq(req.body);
            int64_t delta = 0;
            if (route == "TransOut" || route == "TransInCompensate") delta = -r.amount;
            if (route == "TransIn" || route == "TransOutCompensate") delta = r.amount;
            result = delta == 0
                         ? Status::NotFound("no such route " + route)
                         : barrier->Call(*db_, [&](UnitOfWork& uow) { return AdjustBalance(uow, r.user_id, delta); });
        }
        auto reply = keel::dtm::BarrierReply(result);
        fmt::print("  {} {} gid={} op={} -> {}\n", name_, route, req.Query("gid"), req.Query("op"), reply.status);
        std::fflush(stdout);
        keel::net::HttpResponse out;
        out.status = reply.status;
        out.body = std::move(reply.body);
        return out;
    }

    double Balance(int64_t user_id) {
        auto uow = UnitOfWork::Begin(*db_).value();
        auto rows = uow.Query("SELECT balance FROM user_account WHERE user_id = ?", {user_id}).value();
        return rows.empty() ? -1 : rows.Real(0, 0).value();
    }

    EventStore& db() { return *db_; }
    const keel::dtm::BarrierTable& table() const { return table_; }
    const std::string& url() const { return url_; }

private:
    Bank() = default;
    std::string name_;
    std::unique_ptr<EventStore> db_;
    keel::dtm::BarrierTable table_;
    std::unique_ptr<keel::net::StandaloneHttpServer> server_;
    std::string url_;
};

// keeld as a child process on a free port with its own SQLite file; stopped on destruction.
class Keeld {
public:
    static std::unique_ptr<Keeld> Start(const std::string& binary, const fs::path& dir) {
        int out[2];
        if (::pipe(out) != 0) return nullptr;
        const std::string storage = "sqlite://" + (dir / "keeld.db").string();
        const pid_t pid = ::fork();
        if (pid == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            ::dup2(out[1], STDOUT_FILENO);
            ::close(out[0]);
            ::close(out[1]);
            ::execl(binary.c_str(), binary.c_str(), "--listen", "127.0.0.1:0", "--storage", storage.c_str(),
                    "--cron-interval-ms", "200", static_cast<char*>(nullptr));
            ::_exit(127);
        }
        ::close(out[1]);
        auto k = std::unique_ptr<Keeld>(new Keeld());
        k->pid_ = pid;
        k->out_ = ::fdopen(out[0], "r");
        char line[512];
        const std::string marker = "keeld listening on ";
        while (std::fgets(line, sizeof line, k->out_) != nullptr) {
            std::string text(line);
            const size_t at = text.find(marker);
            if (at == std::string::npos) continue;
            std::string url = text.substr(at + marker.size());
            while (!url.empty() && (url.back() == '\n' || url.back() == '\r' || url.back() == ' ')) url.pop_back();
            k->server_ = url + "/api/dtmsvr";
            k->drain_ = std::thread([f = k->out_] {
                char buf[512];
                while (std::fgets(buf, sizeof buf, f) != nullptr) {
                }
            });
            return k;
        }
        return nullptr;
    }
    ~Keeld() {
        ::kill(pid_, SIGTERM);
        int status = 0;
        ::waitpid(pid_, &status, 0);
        if (drain_.joinable()) drain_.join();
        if (out_ != nullptr) std::fclose(out_);
    }
    const std::string& server() const { return server_; }

private:
    Keeld() = default;
    pid_t pid_ = -1;
    FILE* out_ = nullptr;
    std::thread drain_;
    std::string server_;
};

int failures = 0;

void Check(bool ok, const std::string& what) {
    fmt::print("  {} {}\n", ok ? "check" : "FAILED", what);
    if (!ok) ++failures;
}

// Polls keeld until `gid` has `status`; returns the last state.
keel::dtm::TransInfo WaitFor(const std::string& server, const std::string& gid, const std::string& status) {
    keel::dtm::TransInfo last;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (std::chrono::steady_clock::now() < deadline) {
        auto q = keel::dtm::QueryTrans(server, gid);
        if (q.ok() && q->has_value()) {
            last = **q;
            if (last.status == status) break;
        }
        std::this_thread::sleep_for(100ms);
    }
    Check(last.status == status, fmt::format("transaction {} is {} (want {})", gid, last.status, status));
    return last;
}

std::string BranchStatuses(const keel::dtm::TransInfo& t) {
    std::string out;
    for (const auto& b : t.branches) out += (out.empty() ? "" : ",") + b.status;
    return "[" + out + "]";
}

struct Demo {
    std::string server;
    Bank* a;
    Bank* b;
    double expect_a = kOpening, expect_b = kOpening;

    void CheckBalances() {
        Check(a->Balance(1) == expect_a, fmt::format("bank A user 1 has {} (want {})", a->Balance(1), expect_a));
        Check(b->Balance(2) == expect_b, fmt::format("bank B user 2 has {} (want {})", b->Balance(2), expect_b));
    }
    void Done(const std::string& scenario, int before) {
        if (failures == before) fmt::print("ok {}\n", scenario);
        std::fflush(stdout);
    }

    void Msg() {
        const int before = failures;
        fmt::print("--- msg: two-phase message, local debit in bank A + credit branch in bank B\n");
        const std::string gid = keel::dtm::NewGid(server).value();
        keel::dtm::Msg msg(server, gid);
        msg.Add(b->url() + "/TransIn", Payload(2, 30));
        const Status s = msg.DoAndSubmitDB(
            a->url() + "/QueryPrepared", a->db(), [](UnitOfWork& uow) { return AdjustBalance(uow, 1, -30); },
            a->table());
        Check(s.ok(), "DoAndSubmitDB: " + s.ToString());
        WaitFor(server, gid, "succeed");
        expect_a -= 30;
        expect_b += 30;
        CheckBalances();
        Done("msg", before);
    }

    void MsgCrash(const std::string& self, const fs::path& a_db) {
        const int before = failures;
        fmt::print(
            "--- msg-crash: the sender commits locally and dies before submit; keeld's back-check resolves it\n");
        const std::string gid = keel::dtm::NewGid(server).value();
        std::fflush(stdout);
        const pid_t child = ::fork();
        if (child == 0) {
            ::execl(self.c_str(), self.c_str(), "send-and-crash", "--server", server.c_str(), "--bank-a",
                    a->url().c_str(), "--bank-b", b->url().c_str(), "--db", a_db.c_str(), "--gid", gid.c_str(),
                    static_cast<char*>(nullptr));
            ::_exit(127);
        }
        int status = 0;
        ::waitpid(child, &status, 0);
        Check(WIFEXITED(status) && WEXITSTATUS(status) == 3, "the sender exited (3) between commit and submit");
        auto t = WaitFor(server, gid, "succeed");
        Check(BranchStatuses(t) == "[succeed]", "branches " + BranchStatuses(t));
        expect_a -= 30;
        expect_b += 30;
        CheckBalances();
        Done("msg-crash", before);
    }

    void MsgRefused() {
        const int before = failures;
        fmt::print("--- msg-refused: a debit over the balance fails locally; the message is aborted\n");
        const std::string gid = keel::dtm::NewGid(server).value();
        keel::dtm::Msg msg(server, gid);
        msg.Add(b->url() + "/TransIn", Payload(2, 1'000'000));
        const Status s = msg.DoAndSubmitDB(
            a->url() + "/QueryPrepared", a->db(), [](UnitOfWork& uow) { return AdjustBalance(uow, 1, -1'000'000); },
            a->table());
        Check(keel::dtm::IsFailure(s), "DoAndSubmitDB returned FAILURE: " + s.ToString());
        auto t = WaitFor(server, gid, "failed");
        Check(BranchStatuses(t) == "[prepared]", "branches " + BranchStatuses(t));
        CheckBalances();
        Done("msg-refused", before);
    }

    void Saga() {
        const int before = failures;
        fmt::print("--- saga: TransOut (bank A) then TransIn (bank B)\n");
        const std::string gid = keel::dtm::NewGid(server).value();
        keel::dtm::Saga saga(server, gid);
        saga.Add(a->url() + "/TransOut", a->url() + "/TransOutCompensate", Payload(1, 30));
        saga.Add(b->url() + "/TransIn", b->url() + "/TransInCompensate", Payload(2, 30));
        saga.options().wait_result = true;
        const Status s = saga.Submit();
        Check(s.ok(), "Submit (wait_result): " + s.ToString());
        auto t = WaitFor(server, gid, "succeed");
        Check(BranchStatuses(t) == "[prepared,succeed,prepared,succeed]", "branches " + BranchStatuses(t));
        expect_a -= 30;
        expect_b += 30;
        CheckBalances();
        Done("saga", before);
    }

    void SagaRollback() {
        const int before = failures;
        fmt::print("--- saga-rollback: TransIn to account 3, which bank B does not have; TransOut is compensated\n");
        const std::string gid = keel::dtm::NewGid(server).value();
        keel::dtm::Saga saga(server, gid);
        saga.Add(a->url() + "/TransOut", a->url() + "/TransOutCompensate", Payload(1, 30));
        saga.Add(b->url() + "/TransIn", b->url() + "/TransInCompensate", Payload(3, 30));
        saga.options().wait_result = true;
        const Status s = saga.Submit();
        Check(keel::dtm::IsFailure(s), "Submit (wait_result) returned FAILURE: " + s.ToString());
        auto t = WaitFor(server, gid, "failed");
        Check(BranchStatuses(t) == "[succeed,succeed,succeed,failed]", "branches " + BranchStatuses(t));
        Check(t.rollback_reason.find("no such account") != std::string::npos, "reason: " + t.rollback_reason);
        CheckBalances();
        Done("saga-rollback", before);
    }
};

std::map<std::string, std::string> Flags(int argc, char** argv, int from) {
    std::map<std::string, std::string> flags;
    for (int i = from; i + 1 < argc; i += 2) flags[argv[i]] = argv[i + 1];
    return flags;
}

// msg-crash's sender: prepare, commit the local debit behind the barrier, then die without submitting.
int SendAndCrash(const std::map<std::string, std::string>& f) {
    auto db = keel::OpenStore("sqlite://" + f.at("--db")).value();
    auto table = keel::dtm::EnsureBarrierTable(*db).value();
    keel::dtm::Msg msg(f.at("--server"), f.at("--gid"));
    msg.Add(f.at("--bank-b") + "/TransIn", Payload(2, 30));
    msg.options().timeout_to_fail = 2;  // the back-check comes 2 s after prepare
    msg.options().retry_interval = 1;
    if (Status s = msg.Prepare(f.at("--bank-a") + "/QueryPrepared"); !s.ok()) {
        fmt::print("sender: prepare failed: {}\n", s.ToString());
        return 1;
    }
    auto barrier = Barrier::Make("msg", f.at("--gid"), "00", "msg", table).value();
    if (Status s = barrier.Call(*db, [](UnitOfWork& uow) { return AdjustBalance(uow, 1, -30); }); !s.ok()) {
        fmt::print("sender: local transaction failed: {}\n", s.ToString());
        return 1;
    }
    fmt::print("  sender: local debit committed; dying before submit\n");
    std::fflush(stdout);
    ::_exit(3);
}

int RunDemo(const std::map<std::string, std::string>& f, const std::string& self) {
    fs::path dir = f.count("--dir") != 0 ? fs::path(f.at("--dir"))
                                         : fs::temp_directory_path() / ("keel_transfer_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const std::string keeld_path = f.count("--keeld") != 0 ? f.at("--keeld") : KEEL_KEELD_PATH;
    auto keeld = Keeld::Start(keeld_path, dir);
    if (keeld == nullptr) {
        fmt::print("FAILED: keeld ({}) did not start\n", keeld_path);
        return 1;
    }
    fmt::print("keeld at {}\n", keeld->server());
    auto a = Bank::Open("bank-A", dir / "bank_a.db", 1);
    auto b = Bank::Open("bank-B", dir / "bank_b.db", 2);
    fmt::print("bank A at {}, bank B at {}\n", a->url(), b->url());
    Demo demo{keeld->server(), a.get(), b.get()};
    demo.Msg();
    demo.MsgCrash(self, dir / "bank_a.db");
    demo.MsgRefused();
    demo.Saga();
    demo.SagaRollback();
    if (failures != 0) {
        fmt::print("transfer: {} check(s) FAILED (databases in {})\n", failures, dir.string());
        return 1;
    }
    fmt::print("ok transfer\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const std::string self = fs::canonical("/proc/self/exe").string();
        if (argc > 1 && std::string(argv[1]) == "send-and-crash") return SendAndCrash(Flags(argc, argv, 2));
        const int from = argc > 1 && std::string(argv[1]) == "demo" ? 2 : 1;
        return RunDemo(Flags(argc, argv, from), self);
    } catch (const std::exception& e) {
        fmt::print("FAILED: {}\n", e.what());
        return 1;
    }
}
