#pragma once
/// keel::dtm: a native C++ client of DTM's HTTP protocol, for keeld (keel's coordinator) and for DTM itself.
///
/// Three transaction modes, as in DTM's Go client (docs/dtm-client.md has the protocol and examples):
/// - Msg, the two-phase message: Add branches, then DoAndSubmitDB runs the sender's local transaction behind a
///   barrier and submits; when the sender dies between its commit and the submit, the coordinator asks the
///   `query_prepared` URL (a handler calling Barrier::QueryPrepared) whether the local transaction committed.
/// - Saga: forward actions, compensations in reverse order on a FAILURE; sequential, or concurrent with orders.
/// - TCC: TccGlobalTransaction prepares, your function calls try on each branch (CallBranch registers it first),
///   then the coordinator confirms all (your function returned OK) or cancels all (it returned an error).
///
/// Server URL: the coordinator's API prefix, e.g. "http://127.0.0.1:36789/api/dtmsvr". Only plain http.
///
/// Errors, the same for every call here (each returns keel::Status / Result):
/// - kFailedPrecondition (dtm::kFailureCode, test with dtm::IsFailure): DTM's FAILURE — a reply 409 or a body that
///   contains "FAILURE" (e.g. "cannot submit" of a finished transaction, a saga that rolled back under wait_result,
///   a try that refused). Not retryable: the transaction's outcome is decided.
/// - kUnavailable whose message starts with "ONGOING" (test with dtm::IsOngoing): a reply 425 or a body with
///   "ONGOING": not finished yet (wait_result while a branch is still ongoing).
/// - kUnavailable (otherwise) or kDeadlineExceeded: transport errors — refused, reset, timed out; the call's outcome
///   at the coordinator is unknown, and prepare/submit/abort may be repeated (they are idempotent there).
/// - kInternal: the coordinator answered another 5xx (its message is in the status).
/// - kInvalidArgument: a bad server URL, or a 4xx other than 409/425 (the coordinator refused the request, e.g. a
///   limit), or a business function's own kInvalidArgument.
/// - kNotFound: a 404 (wrong server URL prefix).
///
/// Thread-safety: a Msg, Saga or Tcc object is used by one thread; distinct objects may be used concurrently. HTTP
/// connections to the coordinator are kept alive and shared by all objects of the process (also after fork(): a
/// child gets its own).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "keel/barrier.hpp"
#include "keel/event_store.hpp"
#include "keel/status.hpp"
#include "keel/unit_of_work.hpp"

namespace keel::dtm {

/// True for the "ONGOING" result (code kUnavailable, message starting with "ONGOING").
bool IsOngoing(const Status& s);

/// Per global transaction options, sent to the coordinator with prepare/submit (persisted there, so retries by its
/// cron honour them too). Zero or empty means "the coordinator's default".
struct TransOptions {
    /// Process the transaction inside the submit request and report its outcome. Default: false.
    bool wait_result = false;
    /// Seconds after which an unfinished transaction fails (msg: the back-check starts then). Default: 0, the
    /// coordinator's (35 s; a saga never times out by default).
    int64_t timeout_to_fail = 0;
    /// Base seconds between retries of a branch (doubling on errors). Default: 0, the coordinator's (10 s).
    int64_t retry_interval = 0;
    /// Seconds the coordinator waits for one branch call. Default: 0, the coordinator's (3 s).
    int64_t request_timeout = 0;
    /// Saga only: immediate re-runs of a non-final action before the saga aborts. Default: 0 (no limit).
    int64_t retry_limit = 0;
    /// Headers the coordinator adds to every branch call. Default: none.
    std::map<std::string, std::string> branch_headers;
    /// Client side, not sent: the deadline of each HTTP call this client makes (to the coordinator and, for TCC
    /// try, to the branch). Default: 10 s.
    std::chrono::milliseconds http_timeout{10'000};
};

/// A new global transaction id from the coordinator (GET newGid). Errors as above.
Result<std::string> NewGid(const std::string& server, std::chrono::milliseconds timeout = std::chrono::seconds(10));

/// One branch row of a global transaction, as /query reports it.
struct BranchInfo {
    std::string branch_id;
    std::string op;      ///< action, compensate, try, confirm, cancel …
    std::string status;  ///< prepared, succeed, failed
    std::string url;
};

/// A global transaction as /query reports it.
struct TransInfo {
    std::string gid;
    std::string trans_type;       ///< msg, saga, tcc …
    std::string status;           ///< prepared, submitted, aborting, succeed, failed
    std::string rollback_reason;  ///< empty unless it rolled back
    std::vector<BranchInfo> branches;
    std::string json;  ///< the whole reply, for anything not above
};

/// Reads a global transaction (GET query?gid=). nullopt when the coordinator does not know `gid`. Errors as above;
/// kCorruption when the reply is not the JSON /query returns.
Result<std::optional<TransInfo>> QueryTrans(const std::string& server, const std::string& gid,
                                            std::chrono::milliseconds timeout = std::chrono::seconds(10));

/// The two-phase message (trans_type "msg").
class Msg {
public:
    Msg(std::string server, std::string gid);

    /// Adds a branch: the coordinator POSTs `payload` (JSON text; empty: a GET without body) to `action_url` once the
    /// message is submitted, until it answers 200.
    Msg& Add(std::string action_url, std::string payload);
    /// Branches run concurrently instead of in order. Default: in order.
    Msg& EnableConcurrent();
    /// Branches are called no earlier than `seconds` after the message was created (custom_data delay).
    Msg& SetDelay(int64_t seconds);
    TransOptions& options() noexcept { return options_; }
    const std::string& gid() const noexcept { return gid_; }

    /// Registers the message as prepared, with the back-check URL. Idempotent while prepared. Errors as above.
    Status Prepare(std::string query_prepared_url);
    /// Submits the message: the coordinator delivers the branches. Errors as above.
    Status Submit();
    /// Aborts a prepared message: it fails without calling any branch. Errors as above.
    Status Abort();

    /// Prepare, then `fn` with the msg barrier (gid, branch "00", op "msg"), then Submit — or Abort when `fn` (or the
    /// back-check asked when `fn` failed otherwise) says FAILURE. Returns `fn`'s error if it failed, else the first
    /// error of prepare/query/submit. DoAndSubmitDB is the usual form.
    Status DoAndSubmit(std::string query_prepared_url, const std::function<Status(Barrier&)>& fn,
                       BarrierTable table = {});
    /// DoAndSubmit whose `fn` runs in a unit of work on `db` behind the barrier (Barrier::Call): the local
    /// transaction commits exactly when the message will be delivered. kDuplicatedCode when the back-check had
    /// already decided "rolled back" (nothing committed, nothing delivered).
    Status DoAndSubmitDB(std::string query_prepared_url, EventStore& db, const Barrier::BusinessFn& fn,
                         BarrierTable table = {});

private:
    std::string Body(bool with_steps) const;

    std::string server_, gid_, query_prepared_;
    std::vector<std::string> actions_, payloads_;
    bool concurrent_ = false;
    int64_t delay_ = 0;
    TransOptions options_;
};

/// The saga (trans_type "saga"): submitted in one request; the coordinator runs it.
class Saga {
public:
    Saga(std::string server, std::string gid);

    /// Adds step i (0-based, in call order): POST `payload` to `action_url`; if the saga rolls back, POST it to
    /// `compensate_url` (empty: nothing to compensate).
    Saga& Add(std::string action_url, std::string compensate_url, std::string payload);
    /// Runs the steps concurrently, each after its prerequisites (AddBranchOrder). Default: in order.
    Saga& EnableConcurrent();
    /// Concurrent sagas: step `branch` starts only after the steps `pre_branches` succeeded (0-based).
    Saga& AddBranchOrder(int branch, std::vector<int> pre_branches);
    TransOptions& options() noexcept { return options_; }
    const std::string& gid() const noexcept { return gid_; }

    /// Submits the saga. With options().wait_result, OK means it succeeded; a saga that rolled back gives a
    /// kFailureCode status naming the reason. Errors as above.
    Status Submit();

private:
    std::string server_, gid_;
    std::vector<std::pair<std::string, std::string>> steps_;
    std::vector<std::string> payloads_;
    bool concurrent_ = false;
    std::map<int, std::vector<int>> orders_;
    TransOptions options_;
};

/// The TCC transaction handed to TccGlobalTransaction's function.
class Tcc {
public:
    /// Registers a branch (id "01", "02" … in call order) with its confirm and cancel URLs and `payload`, then
    /// POSTs `payload` to `try_url` with ?gid&trans_type=tcc&branch_id&op=try. Returns try's reply body on 200.
    /// Errors as above; a try answering 409 / FAILURE gives kFailureCode. Return the error from your function to
    /// cancel the whole transaction.
    Result<std::string> CallBranch(const std::string& payload, const std::string& try_url,
                                   const std::string& confirm_url, const std::string& cancel_url);
    const std::string& gid() const noexcept { return gid_; }
    const std::string& server() const noexcept { return server_; }

private:
    friend Status TccGlobalTransaction(const std::string&, const std::string&, const std::function<Status(Tcc&)>&,
                                       const TransOptions&);
    Tcc(std::string server, std::string gid, TransOptions options)
        : server_(std::move(server)), gid_(std::move(gid)), options_(std::move(options)) {}

    std::string server_, gid_;
    TransOptions options_;
    int branches_ = 0;
};

/// Prepares a TCC global transaction `gid` (with `options`), runs `fn`, then submits (the coordinator confirms every
/// registered branch) when `fn` returned OK, or aborts with fn's message as rollback_reason (the coordinator
/// cancels them) when it returned an error. Returns fn's error, else prepare's or submit's. Errors as above.
Status TccGlobalTransaction(const std::string& server, const std::string& gid, const std::function<Status(Tcc&)>& fn,
                            const TransOptions& options = {});

}  // namespace keel::dtm
