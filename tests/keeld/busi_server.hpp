#pragma once
// BusiServer: the business service keeld's black-box tests call into, after DTM's test busi (test/busi): routes
// /api/busi/<Route> (TransOut, TransOutRevert, TransIn, TransInRevert, TransOutConfirm, TransOutCancel,
// TransInConfirm, TransInCancel, TransOutTry, TransInTry, QueryPrepared — any name is accepted), each answering
// SUCCESS (200 {"dtm_result":"SUCCESS"}), FAILURE (409 {"dtm_result":"FAILURE","message":…}), ONGOING (425
// {"dtm_result":"ONGOING"}) or ERROR (500 {"message":"busi error"}), optionally after a delay.
//
// What a call answers, first match wins:
//  1. a one-shot switch queued for its route (SetOnce; FIFO),
//  2. a sticky switch for its route (SetSticky, until ClearSticky),
//  3. directives in a JSON body's "busi" object: {"fail_action":true} makes op=action/try answer FAILURE,
//     {"first":"ONGOING"|"ERROR"|"FAILURE"} makes the first call of each (gid, branch_id, op) answer that,
//     {"sleep_ms":N} delays every answer,
//  4. SUCCESS.
//
// Every call is logged (method, route, query, lower-case headers, body, answer, times). A SUCCESS for an op other
// than the back-check applies the call's effect idempotently, keyed by (gid, branch_id, op): the effect log shows
// what the business state would hold, and how many SUCCESS answers were re-deliveries. Calls for one
// (gid, branch_id) that are in flight at the same time are recorded as overlaps; an action applied after its
// compensation, or a confirm and a cancel both applied, as violations.
//
// Thread-safety: all methods may be called from any thread while the server runs.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "net/http.hpp"
#include "net/http_server.hpp"

namespace keel::keeld_test {

enum class Outcome { kSuccess, kFailure, kOngoing, kError };

/// "SUCCESS", "FAILURE", "ONGOING", "ERROR".
const char* OutcomeName(Outcome outcome);

struct Behavior {
    Outcome outcome = Outcome::kSuccess;
    int delay_ms = 0;     // sleep before answering
    std::string message;  // the FAILURE message; default "busi <route> FAILURE"

    static Behavior Success() { return {}; }
    static Behavior Failure(std::string message = {}) { return {Outcome::kFailure, 0, std::move(message)}; }
    static Behavior Ongoing() { return {Outcome::kOngoing, 0, {}}; }
    static Behavior Error() { return {Outcome::kError, 0, {}}; }
    static Behavior Sleep(int ms, Outcome then = Outcome::kSuccess) { return {then, ms, {}}; }
};

struct BusiCall {
    uint64_t seq = 0;
    std::string method;
    std::string route;  // the last path segment after /api/busi/
    std::string path;
    std::string gid, trans_type, branch_id, op;
    std::map<std::string, std::string> query;
    net::Headers headers;  // lower-case names
    std::string body;
    int status = 0;  // the answer's HTTP status (0 while in flight)
    std::chrono::steady_clock::time_point started, finished;

    /// The value of header `name` (case-insensitive), or "".
    std::string Header(std::string_view name) const;
    /// One line for failure messages.
    std::string Describe() const;
};

/// (gid, branch_id, op)
using EffectKey = std::tuple<std::string, std::string, std::string>;

class BusiServer {
public:
    /// Starts on 127.0.0.1, any free port. Throws std::runtime_error when it cannot listen.
    explicit BusiServer(int threads = 16);
    ~BusiServer();
    BusiServer(const BusiServer&) = delete;
    BusiServer& operator=(const BusiServer&) = delete;

    /// "http://127.0.0.1:PORT"
    std::string base_url() const { return server_->base_url(); }
    /// base_url() + "/api/busi/" + route
    std::string Url(const std::string& route) const { return base_url() + "/api/busi/" + route; }

    void SetOnce(const std::string& route, Behavior behavior);
    void SetSticky(const std::string& route, Behavior behavior);
    void ClearSticky(const std::string& route);

    /// All calls so far, in arrival order (finished or not).
    std::vector<BusiCall> Calls() const;
    /// Calls to `route` ("" = any) for `gid` ("" = any) with `op` ("" = any).
    std::vector<BusiCall> CallsTo(const std::string& route, const std::string& gid = "",
                                  const std::string& op = "") const;
    size_t Count(const std::string& route, const std::string& gid = "", const std::string& op = "") const;
    /// Waits until at least `n` finished calls match; false on timeout.
    bool WaitForCalls(const std::string& route, const std::string& gid, size_t n,
                      std::chrono::milliseconds timeout = std::chrono::milliseconds(15000)) const;

    /// How many times the effect of (gid, branch_id, op) was applied: 0 or 1 (the busi is idempotent).
    int Applied(const std::string& gid, const std::string& branch_id, const std::string& op) const;
    /// Every applied effect.
    std::set<EffectKey> Effects() const;
    /// SUCCESS answers for an effect that was already applied (re-deliveries, absorbed by the idempotency key).
    std::map<EffectKey, int> Redeliveries() const;
    std::vector<std::string> Overlaps() const;
    std::vector<std::string> Violations() const;

private:
    void Handle(net::HttpRequest request, net::Responder respond);
    Behavior Decide(const BusiCall& call);

    std::unique_ptr<net::StandaloneHttpServer> server_;
    mutable std::mutex mu_;
    mutable std::condition_variable cv_;
    uint64_t next_seq_ = 0;
    std::vector<BusiCall> calls_;
    std::map<std::string, std::deque<Behavior>> once_;
    std::map<std::string, Behavior> sticky_;
    std::set<EffectKey> first_seen_;  // for the "first" directive
    std::set<EffectKey> applied_;
    std::map<EffectKey, int> redeliveries_;
    std::map<std::pair<std::string, std::string>, std::vector<std::string>> in_flight_;  // (gid, branch) -> ops
    std::vector<std::string> overlaps_;
    std::vector<std::string> violations_;
};

}  // namespace keel::keeld_test
