// Black-box acceptance tests of keeld (label unit: needs only the keeld binary and SQLite).
//
// keeld runs as a child process on a temporary sqlite: storage with --cron-interval-ms 100; a BusiServer in this
// process plays the business service (one-shot and sticky switches per route, a log of every call). The scenarios
// port DTM's own test suite (dtm-protocol.md §8): DTM's white-box waitTransProcessed becomes polling GET /query,
// cronTransOnce becomes POST resetNextCronTime, busi.MainSwitch becomes the BusiServer switches, and time travel
// becomes per-transaction timeout_to_fail / retry_interval of 1 s. Also the API itself (query, all, forceStop,
// newGid, version, ping), lenient bodies as DTM's Python and Node clients send them, the reply envelope, the form of
// branch calls, and the limits and security rules of issue 5.

#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "keeld/busi_server.hpp"
#include "keeld/keeld_client.hpp"
#include "keeld/keeld_process.hpp"

namespace keel::keeld_test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using Strings = std::vector<std::string>;

constexpr const char* kPayload = R"({"amount":30})";

// ---------------------------------------------------------------------------------------------------------------
// Shared fixtures

// The keeld most tests share (one per test process). Tests that need their own flags start their own.
KeeldProcess& SharedKeeld(std::string* error) {
    static std::unique_ptr<KeeldProcess> keeld;
    static std::string start_error;
    if (!keeld) {
        keeld = std::make_unique<KeeldProcess>();
        Status s = keeld->Start();
        if (!s.ok()) start_error = s.ToString();
    }
    *error = start_error;
    return *keeld;
}

// Business services are kept until the process exits, so that a later test's server never gets the port of an
// earlier one that keeld may still be retrying.
std::vector<std::unique_ptr<BusiServer>>& BusiGraveyard() {
    static std::vector<std::unique_ptr<BusiServer>> all;
    return all;
}

// What is wrong with a keeld reply's envelope (dtm-protocol.md §1.1), or "".
std::string EnvelopeProblem(const Reply& r) {
    if (r.status == 0) return "no answer: " + r.error;
    if (r.status == 200) {
        if (r.body.find("FAILURE") != std::string::npos) return "a 200 body contains FAILURE: " + r.body;
        return "";
    }
    if (r.json.is_discarded() || !r.json.is_object()) return "a non-200 body is not a JSON object: " + r.Describe();
    if (r.status == 409 && r.Str("dtm_result") != "FAILURE") return "409 without dtm_result FAILURE: " + r.body;
    if (r.status == 425 && r.Str("dtm_result") != "ONGOING") return "425 without dtm_result ONGOING: " + r.body;
    if (r.status != 409 && r.status != 425 && r.Str("message").empty()) return "error without a message: " + r.body;
    return "";
}

// Seconds since the epoch of an RFC 3339 time ("2026-01-03T10:00:00.123Z" or "…+08:00"); -1 when unparsable.
int64_t ParseRfc3339(const std::string& s) {
    std::tm tm{};
    int consumed = 0;
    if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                    &tm.tm_min, &tm.tm_sec, &consumed) != 6) {
        return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    int64_t t = timegm(&tm);
    size_t i = static_cast<size_t>(consumed);
    if (i < s.size() && s[i] == '.') {
        ++i;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])) != 0) ++i;
    }
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
        int hh = 0, mm = 0;
        if (std::sscanf(s.c_str() + i + 1, "%2d:%2d", &hh, &mm) != 2) return -1;
        t -= (s[i] == '+' ? 1 : -1) * (hh * 3600 + mm * 60);
    } else if (i >= s.size() || s[i] != 'Z') {
        return -1;
    }
    return t;
}

class KeeldTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string error;
        keeld_ = &SharedKeeld(&error);
        ASSERT_TRUE(error.empty()) << error;
        BusiGraveyard().push_back(std::make_unique<BusiServer>(4));
        busi_ = BusiGraveyard().back().get();
        http_ = std::make_unique<DtmHttp>([k = keeld_] { return k->base_url(); });
    }

    void TearDown() override {
        if (HasFailure() && busi_ != nullptr) {
            std::string log;
            for (const auto& c : busi_->Calls()) log += "  " + c.Describe() + "\n";
            std::cout << "busi calls of this test:\n" << log;
            for (const auto& gid : gids_) std::cout << "query " << gid << ": " << http_->Query(gid).Describe() << "\n";
            if (keeld_ != nullptr) std::cout << "keeld output (tail):\n" << keeld_->LogTail(3000) << "\n";
        }
        // Leave nothing retrying into later tests.
        if (http_) {
            for (const auto& gid : gids_) {
                std::string s = http_->StatusOf(gid);
                if (s == "submitted" || s == "aborting" || s == "prepared") http_->Post("forceStop", {{"gid", gid}});
            }
        }
    }

    std::string Gid(const std::string& tag = "") {
        static std::atomic<int> counter{0};
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        std::string gid = std::string(info->name()) + (tag.empty() ? "" : "-" + tag) + "-" +
                          std::to_string(::getpid()) + "-" + std::to_string(counter++);
        gids_.push_back(gid);
        return gid;
    }

    // A saga over `routes` = {{action, compensate}, …} (routes, not URLs; "" stays an empty URL).
    json Saga(const std::string& gid, const std::vector<std::pair<std::string, std::string>>& routes,
              const std::string& payload = kPayload) {
        json steps = json::array();
        json payloads = json::array();
        for (const auto& [action, compensate] : routes) {
            steps.push_back({{"action", action.empty() ? "" : busi_->Url(action)},
                             {"compensate", compensate.empty() ? "" : busi_->Url(compensate)}});
            payloads.push_back(payload);
        }
        return {{"gid", gid}, {"trans_type", "saga"}, {"steps", steps}, {"payloads", payloads}, {"retry_interval", 1}};
    }
    json Saga2(const std::string& gid) {
        return Saga(gid, {{"TransOut", "TransOutRevert"}, {"TransIn", "TransInRevert"}});
    }
    json Msg(const std::string& gid, const Strings& routes, const std::string& payload = kPayload) {
        json steps = json::array();
        json payloads = json::array();
        for (const auto& r : routes) {
            steps.push_back({{"action", busi_->Url(r)}});
            payloads.push_back(payload);
        }
        return {{"gid", gid},
                {"trans_type", "msg"},
                {"steps", steps},
                {"payloads", payloads},
                {"query_prepared", busi_->Url("QueryPrepared")},
                {"retry_interval", 1}};
    }

    // POSTs /api/dtmsvr/<op> and checks the envelope.
    Reply Call(const std::string& op, const json& body) {
        Reply r = http_->Post(op, body);
        std::string problem = EnvelopeProblem(r);
        EXPECT_TRUE(problem.empty()) << "POST " << op << " " << body.dump() << ": " << problem;
        return r;
    }
    // POSTs and expects 200 {"dtm_result":"SUCCESS"}.
    void ExpectSuccess(const std::string& op, const json& body) {
        Reply r = Call(op, body);
        EXPECT_EQ(r.status, 200) << "POST " << op << " " << body.dump() << " -> " << r.Describe();
        EXPECT_EQ(r.Str("dtm_result"), "SUCCESS") << "POST " << op << " -> " << r.Describe();
    }
    // POSTs and expects 409 {"dtm_result":"FAILURE", "message":…}.
    Reply ExpectConflict(const std::string& op, const json& body) {
        Reply r = Call(op, body);
        EXPECT_EQ(r.status, 409) << "POST " << op << " " << body.dump() << " -> " << r.Describe();
        EXPECT_EQ(r.Str("dtm_result"), "FAILURE") << r.Describe();
        EXPECT_FALSE(r.Str("message").empty()) << r.Describe();
        return r;
    }
    // POSTs and expects a 4xx whose message contains every one of `words` (case-insensitive).
    Reply ExpectRejected(const std::string& op, const std::string& raw, const Strings& words) {
        Reply r = http_->PostRaw(op, raw);
        std::string shown = raw.size() > 300 ? raw.substr(0, 300) + "…(" + std::to_string(raw.size()) + " bytes)" : raw;
        EXPECT_GE(r.status, 400) << "POST " << op << " " << shown << " -> " << r.Describe();
        EXPECT_LT(r.status, 500) << "POST " << op << " " << shown << " -> " << r.Describe();
        std::string message = r.Str("message");
        std::string lower = message;
        for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        for (const auto& w : words) {
            std::string lw = w;
            for (auto& c : lw) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            EXPECT_NE(lower.find(lw), std::string::npos)
                << "POST " << op << " " << shown << ": the message should name '" << w << "'; got " << r.Describe();
        }
        return r;
    }

    void ExpectStatus(const std::string& gid, const std::string& want, std::chrono::milliseconds timeout = 20s) {
        std::string last;
        EXPECT_TRUE(http_->WaitStatus(gid, want, timeout, &last))
            << "gid " << gid << " never reached '" << want << "'; last query: " << last;
    }
    void ExpectStatusKicking(const std::string& gid, const std::string& want, std::chrono::milliseconds timeout = 20s) {
        std::string last;
        EXPECT_TRUE(http_->WaitStatusKicking(gid, want, timeout, &last))
            << "gid " << gid << " never reached '" << want << "' (with resetNextCronTime); last query: " << last;
    }
    void ExpectBranches(const std::string& gid, const Strings& want) {
        EXPECT_EQ(http_->BranchStatuses(gid), want) << "branch statuses of " << gid;
    }
    // Waits until `route` got `n` finished calls for `gid`.
    void AwaitCalls(const std::string& route, const std::string& gid, size_t n = 1) {
        EXPECT_TRUE(busi_->WaitForCalls(route, gid, n, 20s))
            << route << " got " << busi_->Count(route, gid) << " calls for " << gid << ", expected " << n;
    }
    // A branch call as DTM makes it: query gid/trans_type/branch_id/op; POST+JSON with the payload, or GET.
    void ExpectBranchCall(const BusiCall& c, const std::string& gid, const std::string& trans_type,
                          const std::string& branch_id, const std::string& op, const std::string& body) {
        SCOPED_TRACE(c.Describe());
        EXPECT_EQ(c.gid, gid);
        EXPECT_EQ(c.trans_type, trans_type);
        EXPECT_EQ(c.branch_id, branch_id);
        EXPECT_EQ(c.op, op);
        if (body.empty()) {
            EXPECT_EQ(c.method, "GET");
            EXPECT_EQ(c.body, "");
        } else {
            EXPECT_EQ(c.method, "POST");
            EXPECT_EQ(c.body, body);
            EXPECT_NE(c.Header("content-type").find("application/json"), std::string::npos);
        }
    }

    // Waits until keeld stored the next try of `gid` at least `ahead` from now (an answer the busi gave is stored a
    // moment later; a reset that comes before that is overtaken by it).
    void AwaitNextCronTimeAhead(const std::string& gid, std::chrono::seconds ahead) {
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        std::string shown;
        for (;;) {
            shown = http_->TransField(gid, "next_cron_time");
            int64_t t = ParseRfc3339(shown);
            if (t >= 0 && t >= std::time(nullptr) + ahead.count()) return;
            if (std::chrono::steady_clock::now() > deadline) break;
            std::this_thread::sleep_for(20ms);
        }
        ADD_FAILURE() << gid << ": next_cron_time never got " << ahead.count() << " s ahead; query shows '" << shown
                      << "' (now " << std::time(nullptr) << ")";
    }

    KeeldProcess* keeld_ = nullptr;
    BusiServer* busi_ = nullptr;
    std::unique_ptr<DtmHttp> http_;
    Strings gids_;
};

const Strings kSagaOk = {"prepared", "succeed", "prepared", "succeed"};
const Strings kSagaRolledBack = {"succeed", "succeed", "succeed", "failed"};

// ---------------------------------------------------------------------------------------------------------------
// API basics

TEST_F(KeeldTest, PingAnswersPongForAnyMethod) {
    for (const char* method : {"GET", "POST"}) {
        Reply r = http_->Send(method, "/api/ping");
        EXPECT_EQ(r.status, 200) << method << " /api/ping -> " << r.Describe();
        EXPECT_EQ(r.Str("msg"), "pong") << method << " /api/ping -> " << r.Describe();
    }
}

TEST_F(KeeldTest, VersionIsAString) {
    Reply r = http_->Get("version");
    EXPECT_EQ(r.status, 200) << r.Describe();
    EXPECT_FALSE(r.Str("version").empty()) << r.Describe();
}

TEST_F(KeeldTest, NewGidGivesDistinctUsableGids) {
    std::set<std::string> seen;
    for (int i = 0; i < 20; ++i) {
        Reply r = http_->Get("newGid");
        ASSERT_EQ(r.status, 200) << r.Describe();
        EXPECT_EQ(r.Str("dtm_result"), "SUCCESS") << r.Describe();
        std::string gid = r.Str("gid");
        EXPECT_FALSE(gid.empty()) << r.Describe();
        EXPECT_LE(gid.size(), 128u) << gid;
        EXPECT_EQ(gid.find_first_of("\n\r; /?&"), std::string::npos) << gid;
        seen.insert(gid);
    }
    EXPECT_EQ(seen.size(), 20u);
    // A new gid is usable as is.
    std::string gid = http_->NewGid();
    gids_.push_back(gid);
    ExpectSuccess("submit", Saga2(gid));
    ExpectStatus(gid, "succeed");
}

TEST_F(KeeldTest, QueryOfUnknownGidGivesNullTransactionAndNoBranches) {
    Reply r = http_->Query("no-such-gid-" + std::to_string(::getpid()));
    ASSERT_EQ(r.status, 200) << r.Describe();
    ASSERT_TRUE(r.json.is_object()) << r.Describe();
    EXPECT_TRUE(r.json.contains("transaction") && r.json["transaction"].is_null()) << r.Describe();
    EXPECT_TRUE(r.json.contains("branches") && r.json["branches"].is_array() && r.json["branches"].empty())
        << r.Describe();
    EXPECT_FALSE(r.json.contains("dtm_result")) << "query carries no dtm_result: " << r.Describe();
}

TEST_F(KeeldTest, QueryWithEmptyGidIsAnError) {
    for (const char* q : {"query?gid=", "query"}) {
        Reply r = http_->Get(q);
        EXPECT_GE(r.status, 400) << "GET " << q << " -> " << r.Describe();
        EXPECT_FALSE(r.Str("message").empty()) << "GET " << q << " -> " << r.Describe();
        EXPECT_TRUE(EnvelopeProblem(r).empty()) << EnvelopeProblem(r);
    }
}

TEST_F(KeeldTest, QueryShowsTheTransactionAndBranchRows) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["branch_headers"] = {{"x-k", "v"}};
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "succeed");
    Reply r = http_->Query(gid);
    ASSERT_EQ(r.status, 200) << r.Describe();
    const json& t = r.json["transaction"];
    ASSERT_TRUE(t.is_object()) << r.Describe();
    EXPECT_EQ(t.value("gid", ""), gid);
    EXPECT_EQ(t.value("trans_type", ""), "saga");
    EXPECT_EQ(t.value("status", ""), "succeed");
    EXPECT_TRUE(t.contains("create_time")) << t.dump();
    EXPECT_TRUE(t.contains("finish_time")) << "a finished transaction has a finish_time: " << t.dump();
    const json& b = r.json["branches"];
    ASSERT_TRUE(b.is_array() && b.size() == 4) << r.Describe();
    const Strings ops = {"compensate", "action", "compensate", "action"};
    const Strings ids = {"01", "01", "02", "02"};
    const Strings urls = {busi_->Url("TransOutRevert"), busi_->Url("TransOut"), busi_->Url("TransInRevert"),
                          busi_->Url("TransIn")};
    for (size_t i = 0; i < 4; ++i) {
        SCOPED_TRACE("branch row " + std::to_string(i) + ": " + b[i].dump());
        EXPECT_EQ(b[i].value("gid", ""), gid);
        EXPECT_EQ(b[i].value("op", ""), ops[i]);
        EXPECT_EQ(b[i].value("branch_id", ""), ids[i]);
        EXPECT_EQ(b[i].value("url", ""), urls[i]);
        // bin_data is the payload, base64 as DTM's Go []byte: {"amount":30} -> eyJhbW91bnQiOjMwfQ==
        EXPECT_EQ(b[i].value("bin_data", ""), "eyJhbW91bnQiOjMwfQ==");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// msg (msg_test.go)

TEST_F(KeeldTest, MsgNormal) {
    const std::string gid = Gid();
    json body = Msg(gid, {"TransOut", "TransIn"});
    ExpectSuccess("prepare", body);
    EXPECT_EQ(http_->StatusOf(gid), "prepared");
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "succeed");
    ExpectBranches(gid, {"succeed", "succeed"});
    auto out = busi_->CallsTo("TransOut", gid);
    auto in = busi_->CallsTo("TransIn", gid);
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(in.size(), 1u);
    ExpectBranchCall(out[0], gid, "msg", "01", "action", kPayload);
    ExpectBranchCall(in[0], gid, "msg", "02", "action", kPayload);
    EXPECT_GE(in[0].started, out[0].finished) << "msg branches run in order unless concurrent";
    EXPECT_EQ(busi_->Count("QueryPrepared", gid), 0u) << "no back-check for a submitted msg";
}

TEST_F(KeeldTest, MsgSubmitWithoutPrepare) {
    const std::string gid = Gid();
    ExpectSuccess("submit", Msg(gid, {"TransOut", "TransIn"}));
    ExpectStatus(gid, "succeed");
    ExpectBranches(gid, {"succeed", "succeed"});
}

TEST_F(KeeldTest, MsgConcurrent) {
    const std::string gid = Gid();
    json body = Msg(gid, {"TransOut", "TransIn"});
    body["concurrent"] = true;
    busi_->SetOnce("TransOut", Behavior::Sleep(300));
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "succeed");
    ExpectBranches(gid, {"succeed", "succeed"});
    auto out = busi_->CallsTo("TransOut", gid);
    auto in = busi_->CallsTo("TransIn", gid);
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_LT(in[0].started, out[0].finished) << "concurrent msg: TransIn should not wait for the slow TransOut";
}

// TestMsgTimeoutSuccess: back-check ONGOING keeps it prepared; then SUCCESS submits it; a branch ONGOING keeps it
// submitted; the next pass finishes it.
TEST_F(KeeldTest, MsgBackCheckOngoingThenSuccess) {
    const std::string gid = Gid();
    busi_->SetSticky("QueryPrepared", Behavior::Ongoing());
    busi_->SetSticky("TransOut", Behavior::Ongoing());
    json body = Msg(gid, {"TransOut", "TransIn"});
    body["timeout_to_fail"] = 1;
    ExpectSuccess("prepare", body);
    AwaitCalls("QueryPrepared", gid);
    EXPECT_EQ(http_->StatusOf(gid), "prepared") << "back-check ONGOING leaves the msg prepared";
    EXPECT_EQ(busi_->Count("TransOut", gid), 0u);
    auto checks = busi_->CallsTo("QueryPrepared", gid);
    ASSERT_FALSE(checks.empty());
    ExpectBranchCall(checks[0], gid, "msg", "00", "msg", "");

    busi_->ClearSticky("QueryPrepared");
    http_->ResetNextCronTime(gid);
    AwaitCalls("TransOut", gid);
    ExpectStatus(gid, "submitted");
    ExpectBranches(gid, {"prepared", "prepared"});

    busi_->ClearSticky("TransOut");
    ExpectStatusKicking(gid, "succeed");
    ExpectBranches(gid, {"succeed", "succeed"});
}

// TestMsgTimeoutFailed
TEST_F(KeeldTest, MsgBackCheckFailure) {
    const std::string gid = Gid();
    busi_->SetSticky("QueryPrepared", Behavior::Ongoing());
    json body = Msg(gid, {"TransOut", "TransIn"});
    body["timeout_to_fail"] = 1;
    ExpectSuccess("prepare", body);
    AwaitCalls("QueryPrepared", gid);
    EXPECT_EQ(http_->StatusOf(gid), "prepared");
    busi_->SetSticky("QueryPrepared", Behavior::Failure("rolled back locally"));
    ExpectStatusKicking(gid, "failed");
    ExpectBranches(gid, {"prepared", "prepared"});
    EXPECT_EQ(busi_->Count("TransOut", gid), 0u);
    EXPECT_EQ(busi_->Count("TransIn", gid), 0u);
}

// TestMsgAbnormal: prepare twice is fine; prepare and submit after success are refused.
TEST_F(KeeldTest, MsgPrepareTwiceAndSubmitAfterSuccess) {
    const std::string gid = Gid();
    json body = Msg(gid, {"TransOut", "TransIn"});
    ExpectSuccess("prepare", body);
    ExpectSuccess("prepare", body);
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "succeed");
    ExpectConflict("prepare", body);
    ExpectConflict("submit", body);
    EXPECT_EQ(busi_->Count("TransOut", gid), 1u) << "nothing runs again";
}

TEST_F(KeeldTest, MsgAbortOfPreparedFailsItWithoutCalls) {
    const std::string gid = Gid();
    json body = Msg(gid, {"TransOut"});
    ExpectSuccess("prepare", body);
    ExpectSuccess("abort", {{"gid", gid}, {"trans_type", "msg"}});
    ExpectStatus(gid, "failed");
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(busi_->Count("", gid), 0u) << "an aborted msg calls nothing, not even the back-check";
    ExpectConflict("submit", body);
}

// A msg never rolls back after submit: ERROR and even FAILURE from a msg branch are retried until it succeeds.
TEST_F(KeeldTest, MsgBranchErrorAndFailureAreRetried) {
    const std::string gid = Gid();
    busi_->SetOnce("TransOut", Behavior::Error());
    busi_->SetOnce("TransIn", Behavior::Failure());
    ExpectSuccess("submit", Msg(gid, {"TransOut", "TransIn"}));
    ExpectStatusKicking(gid, "succeed");
    ExpectBranches(gid, {"succeed", "succeed"});
    EXPECT_EQ(busi_->Count("TransOut", gid), 2u);
    EXPECT_EQ(busi_->Count("TransIn", gid), 2u);
}

// The back-check fires only once timeout_to_fail has passed since the msg was created (dtm-protocol.md §2.5), even
// when a pass is forced earlier.
TEST_F(KeeldTest, MsgBackCheckWaitsForTimeoutToFail) {
    const std::string gid = Gid();
    json body = Msg(gid, {"TransOut"});
    body["timeout_to_fail"] = 60;
    ExpectSuccess("prepare", body);
    for (int i = 0; i < 5; ++i) {
        http_->ResetNextCronTime(gid);
        std::this_thread::sleep_for(150ms);
    }
    EXPECT_EQ(busi_->Count("QueryPrepared", gid), 0u) << "no back-check before timeout_to_fail";
    EXPECT_EQ(http_->StatusOf(gid), "prepared");
}

// custom_data {"delay":N}: the branches are not called before create_time + N seconds.
TEST_F(KeeldTest, MsgDelay) {
    const std::string gid = Gid();
    json body = Msg(gid, {"TransOut"});
    body["custom_data"] = R"({"delay":2})";
    const auto submitted = std::chrono::steady_clock::now();
    ExpectSuccess("submit", body);
    for (int i = 0; i < 4; ++i) {
        http_->ResetNextCronTime(gid);
        std::this_thread::sleep_for(200ms);
    }
    EXPECT_EQ(busi_->Count("TransOut", gid), 0u) << "called before the 2 s delay";
    ExpectStatusKicking(gid, "succeed");
    auto calls = busi_->CallsTo("TransOut", gid);
    ASSERT_FALSE(calls.empty());
    EXPECT_GE(calls[0].started - submitted, 1500ms) << "the first call came before the delay";
}

// ---------------------------------------------------------------------------------------------------------------
// saga (saga_test.go, saga_options_test.go, saga_concurrent_test.go)

TEST_F(KeeldTest, SagaNormal) {
    const std::string gid = Gid();
    ExpectSuccess("submit", Saga2(gid));
    ExpectStatus(gid, "succeed");
    ExpectBranches(gid, kSagaOk);
    EXPECT_EQ(http_->TransField(gid, "rollback_reason"), "");
    auto out = busi_->CallsTo("TransOut", gid);
    auto in = busi_->CallsTo("TransIn", gid);
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(in.size(), 1u);
    ExpectBranchCall(out[0], gid, "saga", "01", "action", kPayload);
    ExpectBranchCall(in[0], gid, "saga", "02", "action", kPayload);
    EXPECT_GE(in[0].started, out[0].finished) << "step 1 starts after step 0 succeeded";
    EXPECT_EQ(busi_->Count("TransOutRevert", gid) + busi_->Count("TransInRevert", gid), 0u);
}

TEST_F(KeeldTest, SagaRollback) {
    const std::string gid = Gid();
    busi_->SetOnce("TransIn", Behavior::Failure("Insufficient balance"));
    ExpectSuccess("submit", Saga2(gid));
    ExpectStatus(gid, "failed");
    ExpectBranches(gid, kSagaRolledBack);
    EXPECT_NE(http_->TransField(gid, "rollback_reason").find("Insufficient balance"), std::string::npos)
        << "rollback_reason should carry the business message; got '" << http_->TransField(gid, "rollback_reason")
        << "'";
    auto in_revert = busi_->CallsTo("TransInRevert", gid);
    auto out_revert = busi_->CallsTo("TransOutRevert", gid);
    ASSERT_EQ(in_revert.size(), 1u) << "the failed step is compensated too";
    ASSERT_EQ(out_revert.size(), 1u);
    ExpectBranchCall(in_revert[0], gid, "saga", "02", "compensate", kPayload);
    ExpectBranchCall(out_revert[0], gid, "saga", "01", "compensate", kPayload);
    EXPECT_GE(out_revert[0].started, in_revert[0].finished) << "compensations run in reverse order";
    ExpectConflict("submit", Saga2(gid));
}

// sagaCommittedOngoing / TestSagaOptionsRetryOngoing
TEST_F(KeeldTest, SagaOngoingThenSucceed) {
    const std::string gid = Gid();
    busi_->SetSticky("TransOut", Behavior::Ongoing());
    ExpectSuccess("submit", Saga2(gid));
    AwaitCalls("TransOut", gid);
    EXPECT_EQ(http_->StatusOf(gid), "submitted");
    ExpectBranches(gid, {"prepared", "prepared", "prepared", "prepared"});
    EXPECT_EQ(busi_->Count("TransIn", gid), 0u);
    busi_->ClearSticky("TransOut");
    ExpectStatusKicking(gid, "succeed");
    ExpectBranches(gid, kSagaOk);
    EXPECT_EQ(busi_->Count("TransOutRevert", gid), 0u);
}

// TestSagaFailed / sagaRollback: the compensation errs once, the saga waits in aborting, the retry finishes it.
TEST_F(KeeldTest, SagaCompensationErrorThenRetry) {
    const std::string gid = Gid();
    busi_->SetOnce("TransIn", Behavior::Failure("Insufficient balance"));
    busi_->SetSticky("TransOutRevert", Behavior::Error());
    ExpectSuccess("submit", Saga2(gid));
    AwaitCalls("TransOutRevert", gid);
    EXPECT_EQ(http_->StatusOf(gid), "aborting");
    busi_->ClearSticky("TransOutRevert");
    ExpectStatusKicking(gid, "failed");
    ExpectBranches(gid, kSagaRolledBack);
    EXPECT_GE(busi_->Count("TransOutRevert", gid), 2u);
    EXPECT_EQ(busi_->Count("TransInRevert", gid), 1u) << "a compensation that succeeded is not repeated";
}

// FAILURE from a compensation is not final (dtm-protocol.md §2.2): it is retried like an error.
TEST_F(KeeldTest, SagaCompensationFailureIsRetried) {
    const std::string gid = Gid();
    busi_->SetOnce("TransIn", Behavior::Failure());
    busi_->SetOnce("TransInRevert", Behavior::Failure());
    ExpectSuccess("submit", Saga2(gid));
    ExpectStatusKicking(gid, "failed");
    ExpectBranches(gid, kSagaRolledBack);
    EXPECT_EQ(busi_->Count("TransInRevert", gid), 2u);
}

TEST_F(KeeldTest, SagaActionErrorIsRetriedNotRolledBack) {
    const std::string gid = Gid();
    busi_->SetOnce("TransIn", Behavior::Error());
    ExpectSuccess("submit", Saga2(gid));
    ExpectStatusKicking(gid, "succeed");
    ExpectBranches(gid, kSagaOk);
    EXPECT_EQ(busi_->Count("TransIn", gid), 2u);
}

// TestSagaAbnormal: a second submit while it runs is accepted; after success it is refused.
TEST_F(KeeldTest, SagaSubmitTwiceWhileRunningThenAfterSuccess) {
    const std::string gid = Gid();
    busi_->SetSticky("TransOut", Behavior::Ongoing());
    ExpectSuccess("submit", Saga2(gid));
    AwaitCalls("TransOut", gid);
    ExpectSuccess("submit", Saga2(gid));
    busi_->ClearSticky("TransOut");
    ExpectStatusKicking(gid, "succeed");
    ExpectBranches(gid, kSagaOk);
    ExpectConflict("submit", Saga2(gid));
    EXPECT_EQ(busi_->Count("TransIn", gid), 1u);
}

TEST_F(KeeldTest, SagaConcurrentNormal) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["custom_data"] = R"({"concurrent":true,"orders":{"1":[0]}})";
    busi_->SetOnce("TransOut", Behavior::Sleep(200));
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "succeed");
    ExpectBranches(gid, kSagaOk);
    auto out = busi_->CallsTo("TransOut", gid);
    auto in = busi_->CallsTo("TransIn", gid);
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_GE(in[0].started, out[0].finished) << "orders {1:[0]}: step 1 waits for step 0";
}

TEST_F(KeeldTest, SagaConcurrentWithoutOrdersRunsStepsTogether) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["custom_data"] = R"({"concurrent":true})";
    busi_->SetOnce("TransOut", Behavior::Sleep(400));
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "succeed");
    auto out = busi_->CallsTo("TransOut", gid);
    auto in = busi_->CallsTo("TransIn", gid);
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_LT(in[0].started, out[0].finished) << "without orders both steps start at once";
}

// TestSagaConRollbackOrder: step 0 fails, so step 1 (which depends on it) never runs.
TEST_F(KeeldTest, SagaConcurrentRollbackWithOrders) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["custom_data"] = R"({"concurrent":true,"orders":{"1":[0]}})";
    busi_->SetOnce("TransOut", Behavior::Failure("out of stock"));
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "failed");
    ExpectBranches(gid, {"succeed", "failed", "prepared", "prepared"});
    EXPECT_EQ(busi_->Count("TransIn", gid), 0u);
    EXPECT_EQ(busi_->Count("TransInRevert", gid), 0u);
    EXPECT_EQ(busi_->Count("TransOutRevert", gid), 1u);
}

// TestSagaEmptyUrl: an empty URL counts as success.
TEST_F(KeeldTest, SagaEmptyUrl) {
    const std::string gid = Gid();
    ExpectSuccess("submit", Saga(gid, {{"TransOut", ""}, {"", ""}}));
    ExpectStatus(gid, "succeed");
    ExpectBranches(gid, kSagaOk);
    EXPECT_EQ(busi_->Count("", gid), 1u) << "only TransOut is called";
}

// The legacy form: steps[i].data instead of payloads (saga_compatible_test.go).
TEST_F(KeeldTest, SagaLegacyStepData) {
    const std::string gid = Gid();
    json body = {
        {"gid", gid},
        {"trans_type", "saga"},
        {"steps",
         {{{"action", busi_->Url("TransOut")}, {"compensate", busi_->Url("TransOutRevert")}, {"data", kPayload}},
          {{"action", busi_->Url("TransIn")}, {"compensate", busi_->Url("TransInRevert")}, {"data", kPayload}}}}};
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "succeed");
    auto out = busi_->CallsTo("TransOut", gid);
    ASSERT_EQ(out.size(), 1u);
    ExpectBranchCall(out[0], gid, "saga", "01", "action", kPayload);
}

TEST_F(KeeldTest, SagaRetryLimitYes) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["retry_limit"] = 3;
    body["retry_interval"] = 60;  // so only in-pass retries can finish it in time
    for (int i = 0; i < 3; ++i) busi_->SetOnce("TransOut", Behavior::Error());
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "succeed", 15s);
    ExpectBranches(gid, kSagaOk);
    EXPECT_EQ(busi_->Count("TransOut", gid), 4u);
}

TEST_F(KeeldTest, SagaRetryLimitNo) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["retry_limit"] = 1;
    busi_->SetSticky("TransOut", Behavior::Error());
    ExpectSuccess("submit", body);
    ExpectStatusKicking(gid, "failed");
    EXPECT_EQ(http_->TransField(gid, "rollback_reason"), "RetryCount is greater than RetryLimit, RetryLimit: 1");
    EXPECT_EQ(busi_->Count("TransIn", gid), 0u);
    EXPECT_EQ(busi_->Count("TransOut", gid), 2u) << "one call plus retry_limit 1 retry";
}

// TestSagaOptionsTimeout: ONGOING until timeout_to_fail passes; the started step is compensated.
TEST_F(KeeldTest, SagaTimeout) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["timeout_to_fail"] = 1;
    busi_->SetSticky("TransOut", Behavior::Ongoing());
    ExpectSuccess("submit", body);
    AwaitCalls("TransOut", gid);
    ExpectStatusKicking(gid, "failed");
    ExpectBranches(gid, {"succeed", "prepared", "prepared", "prepared"});
    std::string reason = http_->TransField(gid, "rollback_reason");
    EXPECT_TRUE(std::regex_match(reason, std::regex("^Timeout after [0-9]+ seconds$")))
        << "rollback_reason: " << reason;
    EXPECT_EQ(busi_->Count("TransIn", gid), 0u);
}

// TestSagaHeadersYes1 / TestSagaCronPassthroughHeadersYes: branch_headers also on the retry after ONGOING.
TEST_F(KeeldTest, SagaBranchHeadersOnFirstCallAndRetry) {
    const std::string gid = Gid();
    json body = Saga(gid, {{"TransOut", "TransOutRevert"}});
    body["branch_headers"] = {{"test_header", "test"}};
    busi_->SetOnce("TransOut", Behavior::Ongoing());
    ExpectSuccess("submit", body);
    ExpectStatusKicking(gid, "succeed");
    auto calls = busi_->CallsTo("TransOut", gid);
    ASSERT_EQ(calls.size(), 2u);
    for (const auto& c : calls) EXPECT_EQ(c.Header("test_header"), "test") << c.Describe();
}

TEST_F(KeeldTest, SagaRequestTimeoutCountsAsErrorAndIsRetried) {
    const std::string gid = Gid();
    json body = Saga(gid, {{"TransOut", "TransOutRevert"}});
    body["request_timeout"] = 1;
    busi_->SetOnce("TransOut", Behavior::Sleep(2500));
    ExpectSuccess("submit", body);
    ExpectStatusKicking(gid, "succeed", 30s);
    EXPECT_GE(busi_->Count("TransOut", gid), 2u) << "the first call timed out after request_timeout=1";
    ExpectBranches(gid, {"prepared", "succeed"});
}

TEST_F(KeeldTest, EmptyPayloadIsSentAsGetWithoutBody) {
    const std::string gid = Gid();
    ExpectSuccess("submit", Saga(gid, {{"TransOut", "TransOutRevert"}}, ""));
    ExpectStatus(gid, "succeed");
    auto calls = busi_->CallsTo("TransOut", gid);
    ASSERT_EQ(calls.size(), 1u);
    ExpectBranchCall(calls[0], gid, "saga", "01", "action", "");
}

// Many submits of one new saga at the same moment: all accepted (or refused once it finished), one run.
TEST_F(KeeldTest, SagaSubmittedConcurrentlyRunsOnce) {
    const std::string gid = Gid();
    busi_->SetOnce("TransOut", Behavior::Sleep(200));
    std::vector<std::thread> threads;
    std::mutex mu;
    Strings replies;
    for (int i = 0; i < 8; ++i) {
        threads.emplace_back([&] {
            DtmHttp h([k = keeld_] { return k->base_url(); });
            Reply r = h.Post("submit", Saga2(gid));
            std::lock_guard lock(mu);
            replies.push_back(r.Describe());
        });
    }
    for (auto& t : threads) t.join();
    for (const auto& r : replies) {
        EXPECT_TRUE(r.rfind("200 ", 0) == 0 || r.rfind("409 ", 0) == 0) << "concurrent submit -> " << r;
    }
    ExpectStatus(gid, "succeed");
    ExpectBranches(gid, kSagaOk);
    EXPECT_EQ(busi_->Count("TransOut", gid), 1u);
    EXPECT_EQ(busi_->Count("TransIn", gid), 1u);
    EXPECT_TRUE(busi_->Overlaps().empty()) << busi_->Overlaps()[0];
}

TEST_F(KeeldTest, SubmitOfAGidOfAnotherTypeIsRefused) {
    const std::string gid = Gid();
    ExpectSuccess("prepare", Msg(gid, {"TransOut"}));
    ExpectConflict("submit", Saga2(gid));
    EXPECT_EQ(http_->StatusOf(gid), "prepared");
    EXPECT_EQ(http_->TransField(gid, "trans_type"), "msg");
}

// ---------------------------------------------------------------------------------------------------------------
// wait_result (TestSagaOptionsNormalWait / CommittedOngoingWait / RollbackWait)

TEST_F(KeeldTest, WaitResultNormal) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["wait_result"] = true;
    ExpectSuccess("submit", body);
    EXPECT_EQ(http_->StatusOf(gid), "succeed") << "processed inside the request";
    ExpectBranches(gid, kSagaOk);
}

TEST_F(KeeldTest, WaitResultOngoingIsAnError) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["wait_result"] = true;
    busi_->SetOnce("TransOut", Behavior::Ongoing());
    Reply r = Call("submit", body);
    EXPECT_NE(r.status, 200) << "a saga left ONGOING is not a success: " << r.Describe();
    EXPECT_EQ(http_->StatusOf(gid), "submitted");
    ExpectBranches(gid, {"prepared", "prepared", "prepared", "prepared"});
    ExpectStatusKicking(gid, "succeed");
    ExpectBranches(gid, kSagaOk);
}

TEST_F(KeeldTest, WaitResultRollbackIsAnErrorWithTheReason) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["wait_result"] = true;
    busi_->SetOnce("TransIn", Behavior::Failure("Insufficient balance"));
    Reply r = Call("submit", body);
    EXPECT_EQ(r.status, 409) << r.Describe();
    EXPECT_NE(r.body.find("Insufficient balance"), std::string::npos) << r.Describe();
    EXPECT_EQ(http_->StatusOf(gid), "failed");
    ExpectBranches(gid, kSagaRolledBack);
}

TEST_F(KeeldTest, WaitResultMsg) {
    const std::string gid = Gid();
    json body = Msg(gid, {"TransOut", "TransIn"});
    body["wait_result"] = true;
    ExpectSuccess("submit", body);
    EXPECT_EQ(http_->StatusOf(gid), "succeed");
}

// ---------------------------------------------------------------------------------------------------------------
// tcc (tcc_test.go)

class KeeldTccTest : public KeeldTest {
protected:
    // registerBranch for branch `id` with confirm/cancel routes `<name>Confirm` / `<name>Cancel`, then the try call
    // the client makes itself. Returns the try's HTTP status.
    int Branch(const std::string& gid, const std::string& id, const std::string& name,
               const std::string& op = "registerBranch") {
        ExpectSuccess(op, {{"gid", gid},
                           {"trans_type", "tcc"},
                           {"branch_id", id},
                           {"data", kPayload},
                           {"confirm", busi_->Url(name + "Confirm")},
                           {"cancel", busi_->Url(name + "Cancel")}});
        net::SyncHttpClient client;
        net::HttpRequest req;
        req.method = "POST";
        req.path = busi_->Url(name + "Try") + "?gid=" + net::PercentEncode(gid) + "&trans_type=tcc&branch_id=" + id +
                   "&op=try";
        req.body = kPayload;
        auto r = client.Send(req);
        return r.ok() ? r->status : 0;
    }
};

TEST_F(KeeldTccTest, TccNormal) {
    const std::string gid = Gid();
    ExpectSuccess("prepare", {{"gid", gid}, {"trans_type", "tcc"}, {"retry_interval", 1}});
    EXPECT_EQ(Branch(gid, "01", "TransOut"), 200);
    EXPECT_EQ(Branch(gid, "02", "TransIn"), 200);
    ExpectSuccess("submit", {{"gid", gid}, {"trans_type", "tcc"}});
    ExpectStatus(gid, "succeed");
    ExpectBranches(gid, kSagaOk);  // [cancel, confirm] per branch
    auto out = busi_->CallsTo("TransOutConfirm", gid);
    auto in = busi_->CallsTo("TransInConfirm", gid);
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(in.size(), 1u);
    ExpectBranchCall(out[0], gid, "tcc", "01", "confirm", kPayload);
    ExpectBranchCall(in[0], gid, "tcc", "02", "confirm", kPayload);
    EXPECT_GE(out[0].started, in[0].finished) << "confirms run in reverse registration order";
    EXPECT_EQ(busi_->Count("TransOutCancel", gid) + busi_->Count("TransInCancel", gid), 0u);
    // registerBranch after the global left `prepared` is refused.
    ExpectConflict("registerBranch", {{"gid", gid},
                                      {"trans_type", "tcc"},
                                      {"branch_id", "03"},
                                      {"data", kPayload},
                                      {"confirm", busi_->Url("TransInConfirm")},
                                      {"cancel", busi_->Url("TransInCancel")}});
}

// TestTccRollback: the second try fails, the client aborts; a cancel ONGOING keeps it aborting until the next pass.
TEST_F(KeeldTccTest, TccRollback) {
    const std::string gid = Gid();
    ExpectSuccess("prepare", {{"gid", gid}, {"trans_type", "tcc"}, {"retry_interval", 1}});
    EXPECT_EQ(Branch(gid, "01", "TransOut"), 200);
    busi_->SetOnce("TransInTry", Behavior::Failure("Insufficient balance"));
    EXPECT_EQ(Branch(gid, "02", "TransIn"), 409);
    busi_->SetSticky("TransOutCancel", Behavior::Ongoing());
    ExpectSuccess("abort", {{"gid", gid}, {"trans_type", "tcc"}, {"rollback_reason", "TransIn try: Insufficient"}});
    AwaitCalls("TransOutCancel", gid);
    EXPECT_EQ(http_->StatusOf(gid), "aborting");
    busi_->ClearSticky("TransOutCancel");
    ExpectStatusKicking(gid, "failed");
    ExpectBranches(gid, {"succeed", "prepared", "succeed", "prepared"});
    EXPECT_NE(http_->TransField(gid, "rollback_reason").find("TransIn try: Insufficient"), std::string::npos)
        << http_->TransField(gid, "rollback_reason");
    auto in = busi_->CallsTo("TransInCancel", gid);
    auto out = busi_->CallsTo("TransOutCancel", gid);
    ASSERT_EQ(in.size(), 1u);
    ASSERT_FALSE(out.empty());
    ExpectBranchCall(in[0], gid, "tcc", "02", "cancel", kPayload);
    EXPECT_GE(out[0].started, in[0].finished) << "cancels run in reverse registration order";
    EXPECT_EQ(busi_->Count("TransOutConfirm", gid) + busi_->Count("TransInConfirm", gid), 0u);
}

// The initiator vanished after registering a branch: the prepared tcc is aborted after timeout_to_fail.
TEST_F(KeeldTccTest, TccTimeout) {
    const std::string gid = Gid();
    ExpectSuccess("prepare", {{"gid", gid}, {"trans_type", "tcc"}, {"retry_interval", 1}, {"timeout_to_fail", 1}});
    EXPECT_EQ(Branch(gid, "01", "TransOut"), 200);
    ExpectStatusKicking(gid, "failed");
    ExpectBranches(gid, {"succeed", "prepared"});
    std::string reason = http_->TransField(gid, "rollback_reason");
    EXPECT_TRUE(std::regex_match(reason, std::regex("^Timeout after [0-9]+ seconds$")))
        << "rollback_reason: " << reason;
    EXPECT_EQ(busi_->Count("TransOutCancel", gid), 1u);
    // The client's late second branch is refused.
    ExpectConflict("registerBranch", {{"gid", gid},
                                      {"trans_type", "tcc"},
                                      {"branch_id", "02"},
                                      {"data", kPayload},
                                      {"confirm", busi_->Url("TransInConfirm")},
                                      {"cancel", busi_->Url("TransInCancel")}});
    ExpectConflict("submit", {{"gid", gid}, {"trans_type", "tcc"}});
}

TEST_F(KeeldTccTest, DuplicateBranchRegistrationIsRefused) {
    const std::string gid = Gid();
    ExpectSuccess("prepare", {{"gid", gid}, {"trans_type", "tcc"}});
    json branch = {{"gid", gid},
                   {"trans_type", "tcc"},
                   {"branch_id", "01"},
                   {"data", kPayload},
                   {"confirm", busi_->Url("TransOutConfirm")},
                   {"cancel", busi_->Url("TransOutCancel")}};
    ExpectSuccess("registerBranch", branch);
    Reply r = Call("registerBranch", branch);
    EXPECT_GE(r.status, 400) << "a second registration of (gid, 01) -> " << r.Describe();
    ExpectSuccess("submit", {{"gid", gid}, {"trans_type", "tcc"}});
    ExpectStatus(gid, "succeed");
    ExpectBranches(gid, {"prepared", "succeed"});
    EXPECT_EQ(busi_->Count("TransOutConfirm", gid), 1u);
}

TEST_F(KeeldTccTest, TccConfirmFailureIsRetried) {
    const std::string gid = Gid();
    ExpectSuccess("prepare", {{"gid", gid}, {"trans_type", "tcc"}, {"retry_interval", 1}});
    EXPECT_EQ(Branch(gid, "01", "TransOut"), 200);
    busi_->SetOnce("TransOutConfirm", Behavior::Failure());
    ExpectSuccess("submit", {{"gid", gid}, {"trans_type", "tcc"}});
    ExpectStatusKicking(gid, "succeed");
    EXPECT_EQ(busi_->Count("TransOutConfirm", gid), 2u);
}

// dtmcli-node: registerTccBranch with extra string keys; prepare/submit/abort bodies are only {gid, trans_type}.
TEST_F(KeeldTccTest, NodeClientTccBodies) {
    const std::string gid = Gid("ok");
    ExpectSuccess("prepare", {{"gid", gid}, {"trans_type", "tcc"}});
    ExpectSuccess("registerTccBranch", {{"gid", gid},
                                        {"trans_type", "tcc"},
                                        {"branch_id", "01"},
                                        {"status", "prepared"},
                                        {"data", kPayload},
                                        {"try", busi_->Url("TransOutTry")},
                                        {"confirm", busi_->Url("TransOutConfirm")},
                                        {"cancel", busi_->Url("TransOutCancel")}});
    ExpectSuccess("submit", {{"gid", gid}, {"trans_type", "tcc"}});
    ExpectStatus(gid, "succeed");
    EXPECT_EQ(busi_->Count("TransOutConfirm", gid), 1u);

    const std::string gid2 = Gid("abort");
    ExpectSuccess("prepare", {{"gid", gid2}, {"trans_type", "tcc"}});
    ExpectSuccess("registerTccBranch", {{"gid", gid2},
                                        {"trans_type", "tcc"},
                                        {"branch_id", "01"},
                                        {"status", "prepared"},
                                        {"data", kPayload},
                                        {"try", busi_->Url("TransOutTry")},
                                        {"confirm", busi_->Url("TransOutConfirm")},
                                        {"cancel", busi_->Url("TransOutCancel")}});
    ExpectSuccess("abort", {{"gid", gid2}, {"trans_type", "tcc"}});
    ExpectStatus(gid2, "failed");
    EXPECT_EQ(busi_->Count("TransOutCancel", gid2), 1u);
    EXPECT_EQ(busi_->Count("TransOutConfirm", gid2), 0u);
}

TEST_F(KeeldTccTest, AbortOfFinishedOrUnknownIsRefused) {
    const std::string gid = Gid();
    ExpectSuccess("prepare", {{"gid", gid}, {"trans_type", "tcc"}});
    ExpectSuccess("submit", {{"gid", gid}, {"trans_type", "tcc"}});
    ExpectStatus(gid, "succeed");
    ExpectConflict("abort", {{"gid", gid}, {"trans_type", "tcc"}});
    Reply r = Call("abort", {{"gid", "no-such-" + gid}, {"trans_type", "tcc"}});
    EXPECT_GE(r.status, 400) << "abort of an unknown gid: " << r.Describe();
}

// ---------------------------------------------------------------------------------------------------------------
// forceStop, resetNextCronTime, resetCronTime (api_test.go)

TEST_F(KeeldTest, ForceStopOfRunningSagaFailsItWithoutCompensation) {
    const std::string gid = Gid();
    busi_->SetSticky("TransOut", Behavior::Ongoing());
    ExpectSuccess("submit", Saga2(gid));
    AwaitCalls("TransOut", gid);
    EXPECT_EQ(http_->StatusOf(gid), "submitted");
    ExpectSuccess("forceStop", {{"gid", gid}});
    EXPECT_EQ(http_->StatusOf(gid), "failed");
    busi_->ClearSticky("TransOut");
    http_->ResetNextCronTime(gid);
    const size_t calls = busi_->Count("", gid);
    std::this_thread::sleep_for(500ms);
    EXPECT_EQ(busi_->Count("", gid), calls) << "nothing is called after forceStop";
    EXPECT_EQ(busi_->Count("TransOutRevert", gid), 0u);
    ExpectConflict("forceStop", {{"gid", gid}});
}

TEST_F(KeeldTest, ForceStopOfSucceededIsRefused) {
    const std::string gid = Gid();
    ExpectSuccess("submit", Saga2(gid));
    ExpectStatus(gid, "succeed");
    ExpectConflict("forceStop", {{"gid", gid}});
    EXPECT_EQ(http_->StatusOf(gid), "succeed");
}

TEST_F(KeeldTest, ResetNextCronTimeRunsTheRetryNow) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["retry_interval"] = 60;
    busi_->SetOnce("TransOut", Behavior::Ongoing());
    ExpectSuccess("submit", body);
    AwaitCalls("TransOut", gid);
    AwaitNextCronTimeAhead(gid, 30s);
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(http_->StatusOf(gid), "submitted") << "retry_interval 60: no retry yet";
    EXPECT_EQ(busi_->Count("TransOut", gid), 1u);
    ExpectSuccess("resetNextCronTime", {{"gid", gid}});
    ExpectStatus(gid, "succeed", 10s);
}

TEST_F(KeeldTest, ResetCronTimeRunsDelayedRetriesNow) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["retry_interval"] = 60;
    busi_->SetOnce("TransOut", Behavior::Ongoing());
    ExpectSuccess("submit", body);
    AwaitCalls("TransOut", gid);
    // The busi has answered ONGOING, but keeld may not have stored the next try (now + 60 s) yet; a reset that comes
    // before that is overtaken by it.
    AwaitNextCronTimeAhead(gid, 30s);
    Reply r = http_->Get("resetCronTime?timeout=10&limit=100");
    ASSERT_EQ(r.status, 200) << r.Describe();
    ASSERT_TRUE(r.json.is_object()) << r.Describe();
    ASSERT_TRUE(r.json.contains("has_remaining") && r.json["has_remaining"].is_boolean()) << r.Describe();
    ASSERT_TRUE(r.json.contains("succeed_count") && r.json["succeed_count"].is_number_integer()) << r.Describe();
    EXPECT_GE(r.json["succeed_count"].get<int>(), 1) << r.Describe();
    EXPECT_FALSE(r.json["has_remaining"].get<bool>()) << r.Describe();
    ExpectStatus(gid, "succeed", 10s);
}

// ---------------------------------------------------------------------------------------------------------------
// Lenient bodies (dtm-protocol.md §1.2, §1.6, §11)

TEST_F(KeeldTest, UnknownKeysNullsAndCaseInsensitiveKeysAreAccepted) {
    const std::string gid = Gid();
    json body = {{"GID", gid},
                 {"Trans_Type", "saga"},
                 {"Steps", {{{"Action", busi_->Url("TransOut")}, {"COMPENSATE", busi_->Url("TransOutRevert")}}}},
                 {"payloads", {kPayload}},
                 {"custom_data", nullptr},
                 {"query_prepared", nullptr},
                 {"protocol", nullptr},
                 {"branch_headers", nullptr},
                 {"no_such_option", {{"nested", true}}},
                 {"passthrough_headers", json::array()},
                 {"Retry_Interval", 1}};
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "succeed");
    auto calls = busi_->CallsTo("TransOut", gid);
    ASSERT_EQ(calls.size(), 1u);
    ExpectBranchCall(calls[0], gid, "saga", "01", "action", kPayload);
}

// What dtmcli-py sends (captured, dtm-protocol.md §1.6), prepare then submit with the same body.
TEST_F(KeeldTest, PythonClientMsgBody) {
    const std::string gid = Gid();
    const std::string raw =
        R"({"gid": ")" + gid + R"(", "trans_type": "msg", "custom_data": null, "steps": [{"action": ")" +
        busi_->Url("TransIn") + R"("}], "payloads": ["{\"amount\": 30}"], "query_prepared": ")" +
        busi_->Url("QueryPrepared") +
        R"(", "protocol": null, "wait_result": false, "timeout_to_fail": 0, "request_timeout": 8, )"
        R"("retry_interval": 0, "passthrough_headers": [], "branch_headers": {}, "concurrent": false})";
    Reply p = http_->PostRaw("prepare", raw);
    EXPECT_EQ(p.status, 200) << p.Describe();
    EXPECT_TRUE(EnvelopeProblem(p).empty()) << EnvelopeProblem(p);
    Reply s = http_->PostRaw("submit", raw);
    EXPECT_EQ(s.status, 200) << s.Describe();
    ExpectStatus(gid, "succeed");
    auto calls = busi_->CallsTo("TransIn", gid);
    ASSERT_EQ(calls.size(), 1u);
    ExpectBranchCall(calls[0], gid, "msg", "01", "action", R"({"amount": 30})");
}

// What dtmcli-py sends for a saga, including wait_result.
TEST_F(KeeldTest, PythonClientSagaBodyWithWaitResult) {
    const std::string gid = Gid();
    const std::string raw = R"({"gid": ")" + gid +
                            R"(", "trans_type": "saga", "custom_data": null, "steps": [{"action": ")" +
                            busi_->Url("TransOut") + R"(", "compensate": ")" + busi_->Url("TransOutRevert") +
                            R"("}], "payloads": ["{\"amount\": 30}"], "query_prepared": null, "protocol": null, )"
                            R"("wait_result": true, "timeout_to_fail": 0, "request_timeout": 8, "retry_interval": 0, )"
                            R"("passthrough_headers": [], "branch_headers": {}, "concurrent": false})";
    Reply s = http_->PostRaw("submit", raw);
    EXPECT_EQ(s.status, 200) << s.Describe();
    EXPECT_EQ(http_->StatusOf(gid), "succeed");
}

// dtmcli-node: a saga body with only gid, trans_type, steps, payloads; concurrency only inside custom_data.
TEST_F(KeeldTest, NodeClientSagaBodies) {
    const std::string gid = Gid("plain");
    const std::string raw = R"({"gid":")" + gid + R"(","trans_type":"saga","steps":[{"action":")" +
                            busi_->Url("TransOut") + R"(","compensate":")" + busi_->Url("TransOutRevert") +
                            R"("},{"action":")" + busi_->Url("TransIn") + R"(","compensate":")" +
                            busi_->Url("TransInRevert") + R"("}],"payloads":["{\"amount\":30}","{\"amount\":30}"]})";
    Reply s = http_->PostRaw("submit", raw);
    EXPECT_EQ(s.status, 200) << s.Describe();
    ExpectStatus(gid, "succeed");
    ExpectBranches(gid, kSagaOk);

    const std::string gid2 = Gid("concurrent");
    json body = json::parse(raw);
    body["gid"] = gid2;
    body["custom_data"] = R"({"concurrent":true,"orders":{"1":[0]}})";
    busi_->SetOnce("TransOut", Behavior::Failure("node rollback"));
    Reply s2 = http_->PostRaw("submit", body.dump());
    EXPECT_EQ(s2.status, 200) << s2.Describe();
    ExpectStatus(gid2, "failed");
    ExpectBranches(gid2, {"succeed", "failed", "prepared", "prepared"});
}

// The Go client's Add(url, "", nil) stores "null": still POSTed, body null.
TEST_F(KeeldTest, GoClientNullPayloadIsPosted) {
    const std::string gid = Gid();
    json body = Saga(gid, {{"TransOut", "TransOutRevert"}}, "null");
    body["concurrent"] = false;
    body["protocol"] = "";
    ExpectSuccess("submit", body);
    ExpectStatus(gid, "succeed");
    auto calls = busi_->CallsTo("TransOut", gid);
    ASSERT_EQ(calls.size(), 1u);
    ExpectBranchCall(calls[0], gid, "saga", "01", "action", "null");
}

// ---------------------------------------------------------------------------------------------------------------
// Reply envelope

TEST_F(KeeldTest, EnvelopeOfSuccessConflictAndError) {
    const std::string gid = Gid();
    ExpectSuccess("submit", Saga2(gid));
    ExpectStatus(gid, "succeed");
    Reply conflict = ExpectConflict("submit", Saga2(gid));
    EXPECT_NE(conflict.body.find("FAILURE"), std::string::npos);
    for (const std::string& q : {"query?gid=" + gid, std::string("version"), std::string("newGid")}) {
        Reply r = http_->Get(q);
        EXPECT_EQ(r.status, 200) << "GET " << q << " -> " << r.Describe();
        EXPECT_TRUE(EnvelopeProblem(r).empty()) << "GET " << q << ": " << EnvelopeProblem(r);
    }
    // Unknown trans_type and malformed JSON are errors with a message.
    for (const std::string& raw : {std::string(R"({"gid":"x-)") + gid + R"(","trans_type":"nope"})",
                                   std::string("{not json"), std::string("[]")}) {
        Reply r = http_->PostRaw("submit", raw);
        EXPECT_GE(r.status, 400) << raw << " -> " << r.Describe();
        EXPECT_FALSE(r.Str("message").empty()) << raw << " -> " << r.Describe();
        EXPECT_TRUE(EnvelopeProblem(r).empty()) << EnvelopeProblem(r);
    }
}

// Issue 5: "a 200 body never contains the word FAILURE" — also when a stored rollback reason quotes a business
// FAILURE body (DTM's own rollback_reason ends in "FAILURE"; a client that checks bodies for the word would take
// the query of a failed transaction for a failed call).
TEST_F(KeeldTest, QueryOfFailedTransactionHasNoFailureWordIn200Body) {
    const std::string failed = Gid();
    busi_->SetOnce("TransIn", Behavior::Failure("Insufficient balance"));
    ExpectSuccess("submit", Saga2(failed));
    ExpectStatus(failed, "failed");
    for (const std::string& q : {"query?gid=" + failed, std::string("all?limit=100")}) {
        Reply r = http_->Get(q);
        EXPECT_EQ(r.status, 200) << "GET " << q << " -> " << r.Describe();
        EXPECT_EQ(r.body.find("FAILURE"), std::string::npos)
            << "GET " << q << ": 200 body contains FAILURE: " << r.body;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// all: paging and filters (TestAPIAll) — on a keeld of its own so that only these transactions exist

TEST(KeeldAll, PagingAndFilters) {
    KeeldProcess keeld;
    ASSERT_TRUE(keeld.Start().ok()) << keeld.LogTail();
    BusiServer busi(4);
    DtmHttp http([&] { return keeld.base_url(); });
    const auto start_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    std::set<std::string> msgs, all;
    for (int i = 0; i < 3; ++i) {
        std::string gid = "all-msg-" + std::to_string(i);
        json body = {{"gid", gid},
                     {"trans_type", "msg"},
                     {"steps", {{{"action", busi.Url("TransOut")}}}},
                     {"payloads", {kPayload}}};
        Reply r = http.Post("submit", body);
        ASSERT_EQ(r.status, 200) << r.Describe();
        std::string last;
        ASSERT_TRUE(http.WaitStatus(gid, "succeed", 20s, &last)) << last;
        msgs.insert(gid);
        all.insert(gid);
    }
    {
        json body = {{"gid", "all-saga"},
                     {"trans_type", "saga"},
                     {"steps", {{{"action", busi.Url("TransOut")}, {"compensate", busi.Url("TransOutRevert")}}}},
                     {"payloads", {kPayload}}};
        Reply r = http.Post("submit", body);
        ASSERT_EQ(r.status, 200) << r.Describe();
        std::string last;
        ASSERT_TRUE(http.WaitStatus("all-saga", "succeed", 20s, &last)) << last;
        all.insert("all-saga");
    }
    const auto end_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();

    auto gids_of = [](const Reply& r) {
        Strings out;
        if (!r.json.is_object() || !r.json.contains("transactions") || !r.json["transactions"].is_array()) return out;
        for (const auto& t : r.json["transactions"]) out.push_back(t.value("gid", "<no gid>"));
        return out;
    };

    // Page through with limit=1.
    std::multiset<std::string> seen;
    std::string position;
    int pages = 0;
    for (; pages < 10; ++pages) {
        std::string q = "all?limit=1" + (position.empty() ? "" : "&position=" + net::PercentEncode(position));
        Reply r = http.Get(q);
        ASSERT_EQ(r.status, 200) << "GET " << q << " -> " << r.Describe();
        ASSERT_TRUE(r.json.contains("next_position") && r.json["next_position"].is_string())
            << "next_position is a string: " << r.Describe();
        Strings page = gids_of(r);
        EXPECT_LE(page.size(), 1u) << "limit=1: " << r.Describe();
        seen.insert(page.begin(), page.end());
        std::string next = r.json["next_position"].get<std::string>();
        if (next.empty()) break;
        EXPECT_NE(next, position) << "the cursor must move";
        position = next;
    }
    EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()), all) << "paging with limit=1 visits every trans";
    EXPECT_EQ(seen.size(), all.size()) << "and none twice";
    EXPECT_GE(pages, 3) << "4 transactions cannot fit fewer pages of 1";

    // A big page returns everything and ends the cursor.
    Reply big = http.Get("all?limit=1000");
    ASSERT_EQ(big.status, 200) << big.Describe();
    Strings everything = gids_of(big);
    EXPECT_EQ(std::set<std::string>(everything.begin(), everything.end()), all);
    EXPECT_EQ(big.json.value("next_position", "?"), "") << big.Describe();

    // Filters.
    Reply by_gid = http.Get("all?gid=all-msg-1");
    EXPECT_EQ(gids_of(by_gid), Strings{"all-msg-1"}) << by_gid.Describe();
    Reply filtered =
        http.Get("all?limit=10&status=succeed&transType=msg&createTimeStart=" + std::to_string(start_ms - 60000) +
                 "&createTimeEnd=" + std::to_string(end_ms + 60000));
    Strings f = gids_of(filtered);
    EXPECT_EQ(std::set<std::string>(f.begin(), f.end()), msgs) << filtered.Describe();
    for (const auto& t : filtered.json.value("transactions", json::array())) {
        EXPECT_EQ(t.value("trans_type", ""), "msg");
        EXPECT_EQ(t.value("status", ""), "succeed");
    }
    Reply sagas = http.Get("all?transType=saga");
    EXPECT_EQ(gids_of(sagas), Strings{"all-saga"}) << sagas.Describe();
    Reply failed = http.Get("all?status=failed");
    EXPECT_TRUE(gids_of(failed).empty()) << failed.Describe();
    Reply old = http.Get("all?createTimeStart=" + std::to_string(start_ms - 600000) +
                         "&createTimeEnd=" + std::to_string(start_ms - 300000));
    EXPECT_TRUE(gids_of(old).empty()) << "nothing was created 5–10 minutes ago: " << old.Describe();
}

// ---------------------------------------------------------------------------------------------------------------
// Security and bad input (issue 5)

TEST_F(KeeldTest, BodyOverOneMiBIsRefusedNamingTheLimit) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    body["payloads"][0] = std::string(1100 * 1024, 'x');
    Reply r = http_->PostRaw("submit", body.dump());
    EXPECT_EQ(r.status, 400) << r.Describe();
    std::string m = r.Str("message");
    EXPECT_TRUE(m.find("1048576") != std::string::npos || m.find("1 MiB") != std::string::npos ||
                m.find("1MiB") != std::string::npos)
        << "the message should name the 1 MiB limit: " << r.Describe();
    EXPECT_EQ(http_->StatusOf(gid), "");
}

TEST_F(KeeldTest, JsonNestedDeeperThan32IsRefused) {
    const std::string gid = Gid();
    json body = Saga2(gid);
    std::string raw = body.dump();
    std::string deep = std::string(40, '[') + std::string(40, ']');
    raw.insert(raw.size() - 1, R"(,"extra":)" + deep);
    ExpectRejected("submit", raw, {"32"});
    EXPECT_EQ(http_->StatusOf(gid), "");
    // Moderate nesting in an ignored key is fine.
    json ok = Saga2(Gid("ok"));
    std::string raw_ok = ok.dump();
    raw_ok.insert(raw_ok.size() - 1, R"(,"extra":)" + std::string(10, '[') + std::string(10, ']'));
    Reply r = http_->PostRaw("submit", raw_ok);
    EXPECT_EQ(r.status, 200) << r.Describe();
}

TEST_F(KeeldTest, GidLongerThan128BytesIsRefused) {
    const std::string gid = std::string(129, 'g');
    ExpectRejected("submit", Saga2(gid).dump(), {"128"});
    ExpectRejected("prepare", Msg(gid, {"TransOut"}).dump(), {"128"});
    const std::string ok = "g128-" + std::to_string(::getpid()) + "-" + std::string(128, 'g');
    const std::string gid128 = ok.substr(0, 128);
    gids_.push_back(gid128);
    ExpectSuccess("submit", Saga2(gid128));
    ExpectStatus(gid128, "succeed");
}

TEST_F(KeeldTest, MoreThan100StepsIsRefused) {
    const std::string gid = Gid();
    std::vector<std::pair<std::string, std::string>> steps(101, {"", ""});
    ExpectRejected("submit", Saga(gid, steps).dump(), {"100"});
    EXPECT_EQ(http_->StatusOf(gid), "");
    const std::string gid100 = Gid("100");
    steps.resize(100);
    ExpectSuccess("submit", Saga(gid100, steps));
    ExpectStatus(gid100, "succeed");
}

TEST_F(KeeldTest, BranchUrlOutsideTheAllowListIsRefused) {
    const std::string gid = Gid();
    json saga = Saga2(gid);
    saga["steps"][1]["action"] = "http://10.1.2.3:8080/api/busi/TransIn";
    ExpectRejected("submit", saga.dump(), {"10.1.2.3"});
    EXPECT_EQ(http_->StatusOf(gid), "");

    json comp = Saga2(Gid("comp"));
    comp["steps"][0]["compensate"] = "http://example.com/api/busi/TransOutRevert";
    ExpectRejected("submit", comp.dump(), {"example.com"});

    json msg = Msg(Gid("qp"), {"TransOut"});
    msg["query_prepared"] = "http://192.168.77.1/api/busi/QueryPrepared";
    ExpectRejected("prepare", msg.dump(), {"192.168.77.1"});

    const std::string tcc = Gid("tcc");
    ExpectSuccess("prepare", {{"gid", tcc}, {"trans_type", "tcc"}});
    ExpectRejected("registerBranch",
                   json{{"gid", tcc},
                        {"trans_type", "tcc"},
                        {"branch_id", "01"},
                        {"data", kPayload},
                        {"confirm", "http://10.9.9.9/confirm"},
                        {"cancel", busi_->Url("TransOutCancel")}}
                       .dump(),
                   {"10.9.9.9"});
    EXPECT_EQ(busi_->Count(""), 0u);
}

TEST(KeeldAllowList, AllowPrefixAdmitsThatUrl) {
    KeeldOptions options;
    options.extra_args = {"--allow", "http://10.1.2.3:8080/"};
    KeeldProcess keeld(options);
    ASSERT_TRUE(keeld.Start().ok()) << keeld.LogTail();
    DtmHttp http([&] { return keeld.base_url(); });
    json body = {{"gid", "allowed-1"},
                 {"trans_type", "saga"},
                 {"steps", {{{"action", "http://10.1.2.3:8080/api/busi/TransOut"}, {"compensate", ""}}}},
                 {"payloads", {kPayload}},
                 {"request_timeout", 1}};
    Reply r = http.Post("submit", body);
    EXPECT_EQ(r.status, 200) << "an --allow'ed prefix is accepted: " << r.Describe();
    json other = body;
    other["gid"] = "allowed-2";
    other["steps"][0]["action"] = "http://10.1.2.4:8080/api/busi/TransOut";
    Reply r2 = http.Post("submit", other);
    EXPECT_GE(r2.status, 400) << "another host is still refused: " << r2.Describe();
    EXPECT_LT(r2.status, 500) << r2.Describe();
    http.Post("forceStop", {{"gid", "allowed-1"}});
}

TEST_F(KeeldTest, XaAndWorkflowAreRefusedNamingTheMode) {
    ExpectRejected("prepare", json{{"gid", Gid("xa")}, {"trans_type", "xa"}}.dump(), {"xa"});
    ExpectRejected("submit", json{{"gid", Gid("xa2")}, {"trans_type", "xa"}}.dump(), {"xa"});
    ExpectRejected("submit", json{{"gid", Gid("wf")}, {"trans_type", "workflow"}}.dump(), {"workflow"});
    ExpectRejected("prepareWorkflow",
                   json{{"gid", Gid("wf2")},
                        {"trans_type", "workflow"},
                        {"custom_data", R"({"name":"wf","data":""})"},
                        {"query_prepared", busi_->Url("resume")}}
                       .dump(),
                   {"workflow"});
}

TEST(KeeldSecurity, NonLoopbackListenWithoutTokenRefusesToStart) {
    ScratchDir dir("keeld-noauth");
    std::string output;
    int code = KeeldProcess::RunToExit(
        {KeeldBinary(), "--listen", "0.0.0.0:0", "--storage", "sqlite://" + (dir.path() / "k.db").string()}, 20s,
        &output);
    EXPECT_NE(code, 0) << "keeld must refuse a non-loopback --listen without --token; output:\n" << output;
    EXPECT_NE(code, -SIGKILL) << "it must exit by itself, not run until killed; output:\n" << output;
    EXPECT_EQ(output.find("keeld listening on"), std::string::npos) << output;
    std::string trimmed = output;
    while (!trimmed.empty() && (trimmed.back() == '\n' || trimmed.back() == '\r')) trimmed.pop_back();
    EXPECT_FALSE(trimmed.empty()) << "it should say why";
    EXPECT_EQ(trimmed.find('\n'), std::string::npos) << "a one-line message; got:\n" << output;
    EXPECT_NE(trimmed.find("token"), std::string::npos) << "the message should mention the token: " << output;
}

TEST(KeeldSecurity, NonLoopbackListenWithTokenStarts) {
    KeeldOptions options;
    options.listen = "0.0.0.0:0";
    options.extra_args = {"--token", "s3cret"};
    KeeldProcess keeld(options);
    Status s = keeld.Start();
    ASSERT_TRUE(s.ok()) << s.ToString();
    // Reach it over loopback, whatever address it printed.
    std::string url = keeld.base_url();
    std::string port = url.substr(url.rfind(':') + 1);
    DtmHttp http([port] { return "http://127.0.0.1:" + port; }, "s3cret");
    Reply r = http.Get("newGid");
    EXPECT_EQ(r.status, 200) << r.Describe();
}

TEST(KeeldSecurity, TokenIsRequiredOnEveryDtmRoute) {
    KeeldOptions options;
    options.extra_args = {"--token", "s3cret"};
    KeeldProcess keeld(options);
    ASSERT_TRUE(keeld.Start().ok()) << keeld.LogTail();
    BusiServer busi(2);
    DtmHttp anonymous([&] { return keeld.base_url(); });
    DtmHttp wrong([&] { return keeld.base_url(); }, "not-it");
    DtmHttp right([&] { return keeld.base_url(); }, "s3cret");
    json saga = {{"gid", "tok-1"},
                 {"trans_type", "saga"},
                 {"steps", {{{"action", busi.Url("TransOut")}, {"compensate", busi.Url("TransOutRevert")}}}},
                 {"payloads", {kPayload}}};
    for (DtmHttp* h : {&anonymous, &wrong}) {
        EXPECT_EQ(h->Get("newGid").status, 401) << h->Get("newGid").Describe();
        EXPECT_EQ(h->Get("query?gid=tok-1").status, 401);
        EXPECT_EQ(h->Get("all").status, 401);
        Reply r = h->Post("submit", saga);
        EXPECT_EQ(r.status, 401) << r.Describe();
        EXPECT_EQ(r.body.find("SUCCESS"), std::string::npos) << r.Describe();
    }
    EXPECT_EQ(busi.Count(""), 0u) << "an unauthorized submit runs nothing";
    EXPECT_EQ(right.StatusOf("tok-1"), "");
    Reply ok = right.Post("submit", saga);
    EXPECT_EQ(ok.status, 200) << ok.Describe();
    std::string last;
    EXPECT_TRUE(right.WaitStatus("tok-1", "succeed", 20s, &last)) << last;
    // A basic scheme or a token with a suffix is not the token.
    Reply basic = anonymous.Send("GET", "/api/dtmsvr/newGid", "", {{"Authorization", "Basic czNjcmV0"}});
    EXPECT_EQ(basic.status, 401) << basic.Describe();
    Reply longer = anonymous.Send("GET", "/api/dtmsvr/newGid", "", {{"Authorization", "Bearer s3cretX"}});
    EXPECT_EQ(longer.status, 401) << longer.Describe();
}

// ---------------------------------------------------------------------------------------------------------------
// Restart: the state is on storage

TEST(KeeldRestart, UnfinishedTransactionsFinishAfterARestart) {
    KeeldProcess keeld;
    ASSERT_TRUE(keeld.Start().ok()) << keeld.LogTail();
    BusiServer busi(4);
    DtmHttp http([&] { return keeld.base_url(); });
    busi.SetSticky("TransOut", Behavior::Ongoing());
    json body = {{"gid", "restart-1"},
                 {"trans_type", "saga"},
                 {"steps", {{{"action", busi.Url("TransOut")}, {"compensate", busi.Url("TransOutRevert")}}}},
                 {"payloads", {kPayload}},
                 {"retry_interval", 1}};
    ASSERT_EQ(http.Post("submit", body).status, 200);
    ASSERT_TRUE(busi.WaitForCalls("TransOut", "restart-1", 1, 20s));
    std::string how = keeld.Stop();
    EXPECT_TRUE(how == "exit 0") << "SIGTERM should stop keeld cleanly; got " << how << "\n" << keeld.LogTail();
    busi.ClearSticky("TransOut");
    ASSERT_TRUE(keeld.Restart().ok()) << keeld.LogTail();
    std::string last;
    EXPECT_TRUE(http.WaitStatus("restart-1", "succeed", 30s, &last)) << last << "\n" << keeld.LogTail();
}

}  // namespace
}  // namespace keel::keeld_test
