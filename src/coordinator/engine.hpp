#pragma once
// Engine: keeld's coordinator. Accepts DTM operations (prepare, submit, abort, registerBranch, …), drives global
// transactions through their branches (msg, saga, tcc) with DTM's rules, retries with backoff, back-checks
// prepared messages, and recovers everything from storage after a crash (../shared/dtm-protocol.md §1–2, §4.3).
//
// Everything is asynchronous on the caller's io_context (C++20 coroutines): branch calls share one pooled HTTP
// client, storage calls run on a small pool of storage threads, so thousands of transactions can be in flight
// without a thread each. Each transaction is processed by at most one coroutine of this process at a time, and by at
// most one process while its lease (owner + next_cron_time) holds.
//
// Thread-safety: all methods may be called concurrently from any thread.

// clang-format off
#include <utility>  // first: Boost 1.74's awaitable.hpp uses std::exchange without including <utility>
#include <boost/asio/awaitable.hpp>
// clang-format on
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>

#include "coordinator/request.hpp"
#include "coordinator/storage.hpp"
#include "net/http_client.hpp"

namespace keel::coordinator {

struct EngineOptions {
    int64_t timeout_to_fail = 35;     // Default: 35 s (DTM's TimeoutToFail), for msg back-checks and tcc.
    int64_t retry_interval = 10;      // Default: 10 s (DTM's RetryInterval), the base retry interval.
    int64_t max_retry_interval = 600; // Default: 600 s: the doubling backoff stops here (DTM's is uncapped).
    int64_t request_timeout = 3;      // Default: 3 s per branch call (DTM's RequestTimeout).
    std::chrono::milliseconds cron_interval{1000};  // Default: 1 s between looks for due work when idle.
    int storage_threads = 16;         // Default: 16.
    Limits limits;
    /// Decides whether keeld may call a branch URL; returns an error message naming the URL when it may not.
    /// Default: only http:// URLs on loopback.
    std::function<std::optional<std::string>(const std::string& url)> url_policy;
};

/// The outcome of an API call, in DTM's envelope terms: 200 with a JSON body, 409 FAILURE, 425 ONGOING, 4xx/500 with
/// a message.
struct ApiResult {
    int status = 200;
    nlohmann::json body;

    static ApiResult Success() { return {200, {{"dtm_result", "SUCCESS"}}}; }
    static ApiResult Json(nlohmann::json j) { return {200, std::move(j)}; }
    static ApiResult Failure(const std::string& message) {
        return {409, {{"dtm_result", "FAILURE"}, {"message", message}}};
    }
    static ApiResult Ongoing(const std::string& message) {
        return {425, {{"dtm_result", "ONGOING"}, {"message", message}}};
    }
    static ApiResult Error(int status, const std::string& message) { return {status, {{"message", message}}}; }
    static ApiResult FromStatus(const Status& s);
};

class Engine {
public:
    Engine(boost::asio::io_context& io, std::unique_ptr<Storage> storage, EngineOptions options, bool exclusive);
    /// Stops the engine and waits for the storage calls in flight: their completions are queued on `io` before it
    /// can be destroyed. Destroy the engine after `io` has stopped running and before `io` itself.
    ~Engine();

    /// Starts the cron loop (recovery of due transactions). With an exclusive store, leases left by a previous
    /// process are released first, so its work resumes at once.
    void Start();
    /// Stops the cron loop; transactions in flight stop at their next step (their leases make them due again).
    void Stop();

    boost::asio::awaitable<ApiResult> Prepare(std::string body);
    boost::asio::awaitable<ApiResult> Submit(std::string body);
    boost::asio::awaitable<ApiResult> Abort(std::string body);
    boost::asio::awaitable<ApiResult> ForceStop(std::string body);
    boost::asio::awaitable<ApiResult> RegisterBranch(std::string body);
    boost::asio::awaitable<ApiResult> Query(std::string gid);
    boost::asio::awaitable<ApiResult> All(ListFilter filter);
    boost::asio::awaitable<ApiResult> ResetNextCronTime(std::string body);
    boost::asio::awaitable<ApiResult> ResetCronTime(int64_t timeout_s, int64_t limit);
    ApiResult NewGid();

    /// JSON of a global / branch as /query shows it (docs/http-api.md).
    static nlohmann::json GlobalJson(const Global& g);
    static nlohmann::json BranchJson(const Branch& b);

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

/// The default URL policy: http:// URLs whose host is 127.0.0.1 (any 127.x), ::1 or localhost.
std::optional<std::string> LoopbackOnly(const std::string& url);

}  // namespace keel::coordinator
