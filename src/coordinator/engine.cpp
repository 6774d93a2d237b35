#include "coordinator/engine.hpp"

#include <fmt/format.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <ctime>

#include "keel/uuid.hpp"

namespace keel::coordinator {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using nlohmann::json;

namespace {

int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string Rfc3339(int64_t ms) {
    time_t secs = static_cast<time_t>(ms / 1000);
    struct tm tm_utc {};
    gmtime_r(&secs, &tm_utc);
    return fmt::format("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z", tm_utc.tm_year + 1900, tm_utc.tm_mon + 1,
                       tm_utc.tm_mday, tm_utc.tm_hour, tm_utc.tm_min, tm_utc.tm_sec, static_cast<int>(ms % 1000));
}

// Standard base64 (RFC 4648) for bin_data in JSON, as Go encodes []byte. Twenty lines; no Debian library offers it
// without pulling in a crypto or Boost detail namespace.
std::string Base64(std::string_view in) {
    static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        uint32_t v = (uint32_t{static_cast<uint8_t>(in[i])} << 16) | (uint32_t{static_cast<uint8_t>(in[i + 1])} << 8) |
                     uint32_t{static_cast<uint8_t>(in[i + 2])};
        for (int s = 18; s >= 0; s -= 6) out.push_back(kAlphabet[(v >> s) & 63]);
    }
    if (i < in.size()) {
        uint32_t v = uint32_t{static_cast<uint8_t>(in[i])} << 16;
        if (i + 1 < in.size()) v |= uint32_t{static_cast<uint8_t>(in[i + 1])} << 8;
        out.push_back(kAlphabet[(v >> 18) & 63]);
        out.push_back(kAlphabet[(v >> 12) & 63]);
        out.push_back(i + 1 < in.size() ? kAlphabet[(v >> 6) & 63] : '=');
        out.push_back('=');
    }
    return out;
}

bool IsFinal(const std::string& status) { return status == kSucceed || status == kFailed; }

enum class Outcome { kSuccess, kFailure, kOngoing, kError };

struct CallResult {
    Outcome outcome = Outcome::kSuccess;
    std::string detail;  // for failures and errors: what the branch said
};

// DTM's classification order: ONGOING, FAILURE, other non-200, success.
CallResult Classify(const std::string& url, const Result<net::HttpResponse>& r) {
    if (!r.ok()) return {Outcome::kError, fmt::format("url:{} error: {}", url, r.status().message())};
    const auto& res = *r;
    if (res.status == 425 || res.body.find("ONGOING") != std::string::npos) {
        return {Outcome::kOngoing, fmt::format("url:{} return ongoing: {}", url, res.body)};
    }
    if (res.status == 409 || res.body.find("FAILURE") != std::string::npos) {
        return {Outcome::kFailure, fmt::format("url:{} return failed: {}", url, res.body)};
    }
    if (res.status != 200) return {Outcome::kError, fmt::format("url:{} return status {}: {}", url, res.status, res.body)};
    return {};
}

// A 22-character base62 id from a random (v7) UUID, like DTM's shortuuid gids: each 64-bit half gives 11 digits.
std::string ShortId() {
    static constexpr char kDigits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const Uuid id = Uuid::Generate();
    const auto& bytes = id.bytes();
    std::string out;
    for (size_t half = 0; half < 2; ++half) {
        uint64_t v = 0;
        for (size_t i = 0; i < 8; ++i) v = (v << 8) | bytes[half * 8 + i];
        std::string part(11, '0');
        for (size_t i = 11; i-- > 0;) {
            part[i] = kDigits[v % 62];
            v /= 62;
        }
        out += part;
    }
    return out;
}

}  // namespace

ApiResult ApiResult::FromStatus(const Status& s) {
    switch (s.code()) {
        case StatusCode::kInvalidArgument:
        case StatusCode::kNotSupported: return Error(400, s.message());
        case StatusCode::kNotFound: return Error(404, s.message());
        case StatusCode::kAlreadyExists:
        case StatusCode::kFailedPrecondition: return Failure(s.message());
        case StatusCode::kUnavailable:
        case StatusCode::kDeadlineExceeded: return Error(503, s.message());
        default: return Error(500, s.message());
    }
}

std::optional<std::string> LoopbackOnly(const std::string& url) {
    net::Url u;
    if (!net::Url::Parse(url, &u)) return "branch url '" + url + "' is not an http://host[:port]/path URL";
    if (u.host == "localhost" || u.host == "::1" || u.host.starts_with("127.")) return std::nullopt;
    return "branch url '" + url + "' is not allowed: keeld calls only loopback URLs unless an allow-list is configured";
}

json Engine::GlobalJson(const Global& g) {
    json j = {{"id", g.id},
              {"create_time", Rfc3339(g.create_time)},
              {"update_time", Rfc3339(g.update_time)},
              {"gid", g.gid},
              {"trans_type", g.trans_type},
              {"status", g.status},
              {"protocol", g.protocol},
              {"options", EncodeOptions(g.options)},
              {"next_cron_interval", g.next_cron_interval},
              {"next_cron_time", Rfc3339(g.next_cron_time)},
              {"concurrent", g.options.concurrent}};
    if (!g.query_prepared.empty()) j["query_prepared"] = g.query_prepared;
    if (!g.custom_data.empty()) j["custom_data"] = g.custom_data;
    if (!g.rollback_reason.empty()) j["rollback_reason"] = g.rollback_reason;
    if (!g.result.empty()) j["result"] = g.result;
    if (!g.owner.empty()) j["owner"] = g.owner;
    if (g.finish_time != 0) j["finish_time"] = Rfc3339(g.finish_time);
    if (g.rollback_time != 0) j["rollback_time"] = Rfc3339(g.rollback_time);
    return j;
}

json Engine::BranchJson(const Branch& b) {
    json j = {{"id", b.id},
              {"create_time", Rfc3339(b.create_time)},
              {"update_time", Rfc3339(b.update_time)},
              {"gid", b.gid},
              {"url", b.url},
              {"bin_data", Base64(b.bin_data)},
              {"branch_id", b.branch_id},
              {"op", b.op},
              {"status", b.status}};
    if (b.finish_time != 0) j["finish_time"] = Rfc3339(b.finish_time);
    if (b.rollback_time != 0) j["rollback_time"] = Rfc3339(b.rollback_time);
    return j;
}

struct Engine::Impl : std::enable_shared_from_this<Impl> {
    Impl(asio::io_context& io_context, std::unique_ptr<Storage> st, EngineOptions opts, bool excl)
        : io(io_context), storage(std::move(st)), opt(std::move(opts)), exclusive(excl),
          pool(static_cast<size_t>(std::max(1, opt.storage_threads))), http(io_context),
          owner(Uuid::Generate().ToString()), cron_strand(asio::make_strand(io_context)), wake(cron_strand) {
        if (!opt.url_policy) opt.url_policy = LoopbackOnly;
    }
    ~Impl() { pool.join(); }

    asio::io_context& io;
    std::unique_ptr<Storage> storage;
    EngineOptions opt;
    bool exclusive;
    asio::thread_pool pool;
    net::HttpClient http;
    std::string owner;
    asio::strand<asio::io_context::executor_type> cron_strand;
    asio::steady_timer wake;
    std::atomic<bool> stopped{false};
    std::atomic<int> in_flight{0};
    std::mutex busy_mu;
    std::unordered_set<std::string> busy;

    // --- timing rules (dtm-protocol.md §2.3) ---
    int64_t TimeoutToFail(const Global& g) const {
        if (g.options.timeout_to_fail > 0) return g.options.timeout_to_fail;
        return g.trans_type == "saga" ? 0 : opt.timeout_to_fail;
    }
    int64_t BaseInterval(const Global& g) const {
        if (g.options.retry_interval > 0) return g.options.retry_interval;
        int64_t t = TimeoutToFail(g);
        return t > 0 && t < opt.retry_interval ? t : opt.retry_interval;
    }
    int64_t RequestTimeout(const Global& g) const {
        return g.options.request_timeout > 0 ? g.options.request_timeout : opt.request_timeout;
    }
    // How long a pass may hold a transaction: every branch call starts before lease end − request timeout − 1 s.
    int64_t LeaseMs(const Global& g) const { return (2 * RequestTimeout(g) + 5) * 1000; }

    // Runs a blocking storage call on the storage threads and resumes the caller on its own executor.
    template <class F>
    awaitable<std::invoke_result_t<F&>> Db(F f) {
        using R = std::invoke_result_t<F&>;
        std::optional<R> out;
        co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
            [this, &f, &out](auto handler) {
                asio::post(pool, [&f, &out, handler = std::move(handler)]() mutable {
                    try {
                        out.emplace(f());
                    } catch (const std::exception& e) {
                        out.emplace(Status::Internal(std::string("storage: ") + e.what()));
                    }
                    auto ex = asio::get_associated_executor(handler);
                    asio::post(ex, std::move(handler));
                });
            },
            use_awaitable);
        co_return std::move(*out);
    }

    awaitable<void> Sleep(std::chrono::milliseconds d) {
        asio::steady_timer t(co_await asio::this_coro::executor, d);
        boost::system::error_code ec;
        co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
    }

    void Wake() {
        asio::post(cron_strand, [self = shared_from_this()] { self->wake.cancel(); });
    }

    // --- branch calls ---
    awaitable<CallResult> Call(const Global& g, const std::string& url, const std::string& branch_id,
                               const std::string& op, const std::string& payload) {
        if (url.empty()) co_return CallResult{};
        net::HttpRequest req;
        std::string target = net::AppendQuery(url, "gid", g.gid);
        target = net::AppendQuery(std::move(target), "trans_type", g.trans_type);
        target = net::AppendQuery(std::move(target), "branch_id", branch_id);
        req.path = net::AppendQuery(std::move(target), "op", op);
        req.method = payload.empty() ? "GET" : "POST";
        req.body = payload;
        for (const auto& [k, v] : g.options.branch_headers) req.headers.emplace_back(k, v);
        req.timeout = std::chrono::milliseconds(RequestTimeout(g) * 1000);
        auto r = co_await http.Call(std::move(req));
        co_return Classify(url, r);
    }

    // Calls every branch in `todo` at once; results in the same order.
    awaitable<std::vector<CallResult>> CallAll(const Global& g, const std::vector<const Branch*>& todo) {
        std::vector<CallResult> results(todo.size());
        if (todo.size() == 1) {
            results[0] = co_await Call(g, todo[0]->url, todo[0]->branch_id, todo[0]->op, todo[0]->bin_data);
            co_return results;
        }
        auto ex = co_await asio::this_coro::executor;  // a strand: children and parent never run at once
        asio::steady_timer done(ex, std::chrono::steady_clock::time_point::max());
        size_t remaining = todo.size();
        auto self = shared_from_this();
        for (size_t i = 0; i < todo.size(); ++i) {
            asio::co_spawn(
                ex,
                [self, &g, &todo, &results, &remaining, &done, i]() -> awaitable<void> {
                    const Branch* b = todo[i];
                    results[i] = co_await self->Call(g, b->url, b->branch_id, b->op, b->bin_data);
                    if (--remaining == 0) done.cancel();
                },
                asio::detached);
        }
        while (remaining > 0) {
            boost::system::error_code ec;
            co_await done.async_wait(asio::redirect_error(use_awaitable, ec));
        }
        co_return results;
    }

    // --- scheduling ---
    enum class Next { kKeep, kBackoff, kReset };

    awaitable<void> Reschedule(const Global& g, Next how, std::optional<int64_t> at_ms = std::nullopt) {
        int64_t base = BaseInterval(g);
        int64_t cur = g.next_cron_interval > 0 ? g.next_cron_interval : base;
        int64_t after = how == Next::kReset ? base : cur;
        int64_t interval = how == Next::kBackoff ? std::min(std::max(cur * 2, base), opt.max_retry_interval)
                           : how == Next::kKeep  ? cur
                                                 : base;
        int64_t when = at_ms ? *at_ms : NowMs() + after * 1000;
        (void)co_await Db([&] { return storage->Schedule(g.gid, when, interval); });
    }

    static Next NextFor(Outcome o) { return o == Outcome::kOngoing ? Next::kKeep : Next::kBackoff; }

    // Writes the branch statuses decided in this pass (and a status change); false when the change did not apply.
    awaitable<bool> Persist(Global& g, const std::vector<Branch>& marks, std::optional<GlobalChange> change) {
        if (marks.empty() && !change) co_return true;
        auto r = co_await Db([&] { return storage->UpdateBranches(g.gid, marks, change); });
        if (!r.ok() || !*r) co_return false;
        if (change) {
            g.status = change->to;
            if (change->rollback_reason) g.rollback_reason = *change->rollback_reason;
        }
        co_return true;
    }

    static GlobalChange Change(const std::string& from, const std::string& to) {
        GlobalChange c;
        c.from = from;
        c.to = to;
        c.set_finish_time = to == kSucceed || to == kFailed;
        c.set_rollback_time = to == kAborting || (to == kFailed && from != kPrepared);
        return c;
    }

    // --- one pass over a transaction (it is ours: busy in this process, leased in storage) ---
    awaitable<void> Pass(Global& g, std::optional<std::vector<Branch>> loaded) {
        std::vector<Branch> branches;
        if (loaded) {
            branches = std::move(*loaded);
        } else {
            auto branches_r = co_await Db([&] { return storage->FindBranches(g.gid); });
            if (!branches_r.ok()) co_return;
            branches = std::move(branches_r).value();
        }
        const int64_t started = NowMs();
        const int64_t call_deadline = started + LeaseMs(g) - RequestTimeout(g) * 1000 - 1000;
        if (g.trans_type == "msg") {
            co_await PassMsg(g, branches, call_deadline);
        } else if (g.trans_type == "saga") {
            co_await PassSaga(g, branches, call_deadline);
        } else if (g.trans_type == "tcc") {
            co_await PassTcc(g, branches, call_deadline);
        }
    }

    awaitable<void> PassMsg(Global& g, std::vector<Branch>& branches, int64_t call_deadline) {
        const int64_t now = NowMs();
        if (g.status == kPrepared) {
            int64_t due = g.create_time + TimeoutToFail(g) * 1000;
            if (now < due) {
                co_await Reschedule(g, Next::kKeep, due);
                co_return;
            }
            CallResult r = co_await Call(g, g.query_prepared, "00", "msg", "");
            if (r.outcome == Outcome::kSuccess) {
                GlobalChange c = Change(kPrepared, kSubmitted);
                c.next_cron_time = NowMs() + LeaseMs(g);
                c.owner = owner;
                if (!co_await Persist(g, {}, c)) co_return;
            } else if (r.outcome == Outcome::kFailure) {
                GlobalChange c = Change(kPrepared, kFailed);
                c.rollback_reason = r.detail;
                (void)co_await Persist(g, {}, c);
                co_return;
            } else {
                co_await Reschedule(g, r.outcome == Outcome::kOngoing ? Next::kReset : Next::kBackoff);
                co_return;
            }
        }
        if (g.status != kSubmitted) co_return;
        if (int64_t delay = ParseMsgDelay(g.custom_data); delay > 0 && g.create_time + delay * 1000 > NowMs()) {
            co_await Reschedule(g, Next::kKeep, g.create_time + delay * 1000);
            co_return;
        }
        std::vector<const Branch*> todo;
        for (const auto& b : branches) {
            if (b.op == "action" && b.status != kSucceed) todo.push_back(&b);
        }
        std::vector<Branch> marks;
        std::optional<Outcome> stop;
        if (g.options.concurrent) {
            auto results = co_await CallAll(g, todo);
            for (size_t i = 0; i < todo.size(); ++i) {
                if (results[i].outcome == Outcome::kSuccess) {
                    marks.push_back(*todo[i]);
                    marks.back().status = kSucceed;
                } else if (!stop || results[i].outcome != Outcome::kOngoing) {
                    stop = results[i].outcome;
                }
            }
        } else {
            for (const Branch* b : todo) {
                if (NowMs() > call_deadline) {
                    stop = Outcome::kOngoing;
                    break;
                }
                CallResult r = co_await Call(g, b->url, b->branch_id, b->op, b->bin_data);
                if (r.outcome != Outcome::kSuccess) {
                    stop = r.outcome;
                    break;
                }
                marks.push_back(*b);
                marks.back().status = kSucceed;
            }
        }
        if (!stop) {
            (void)co_await Persist(g, marks, Change(kSubmitted, kSucceed));
            co_return;
        }
        if (!co_await Persist(g, marks, std::nullopt)) co_return;
        // A msg never rolls back after submit: FAILURE from an action is retried like an error.
        co_await Reschedule(g, NextFor(*stop));
    }

    awaitable<void> PassSaga(Global& g, std::vector<Branch>& branches, int64_t call_deadline) {
        const size_t n = branches.size() / 2;
        auto comp = [&](size_t k) -> Branch& { return branches[2 * k]; };
        auto act = [&](size_t k) -> Branch& { return branches[2 * k + 1]; };
        const SagaLayout layout = ParseSagaLayout(g.custom_data);
        auto deps_of = [&](size_t k) -> const std::vector<size_t>& {
            static const std::vector<size_t> kNone;
            auto it = layout.orders.find(k);
            return it == layout.orders.end() ? kNone : it->second;
        };
        std::vector<Branch> marks;
        auto mark = [&](Branch& b, const char* status) {
            b.status = status;
            marks.push_back(b);
        };

        if (g.status == kSubmitted) {
            std::optional<std::string> abort_reason;
            if (int64_t t = TimeoutToFail(g); t > 0 && NowMs() - g.create_time >= t * 1000) {
                abort_reason = fmt::format("Timeout after {} seconds", t);
            }
            std::optional<Outcome> stop;
            std::map<size_t, int64_t> attempts;
            const int64_t limit = g.options.retry_limit;
            // Handles a non-final outcome of step k; true when the step should be tried again right away.
            auto retry_or_stop = [&](size_t k, const CallResult& r) {
                if (limit > 0) {
                    if (++attempts[k] <= limit) return true;
                    abort_reason = fmt::format("RetryCount is greater than RetryLimit, RetryLimit: {}", limit);
                    return false;
                }
                if (!stop || r.outcome != Outcome::kOngoing) stop = r.outcome;
                return false;
            };
            if (!abort_reason && !layout.concurrent) {
                for (size_t k = 0; k < n && !abort_reason && !stop; ++k) {
                    while (act(k).status == kPrepared && !abort_reason && !stop) {
                        if (NowMs() > call_deadline) {
                            stop = Outcome::kOngoing;
                            break;
                        }
                        CallResult r = co_await Call(g, act(k).url, act(k).branch_id, "action", act(k).bin_data);
                        if (r.outcome == Outcome::kSuccess) {
                            mark(act(k), kSucceed);
                        } else if (r.outcome == Outcome::kFailure) {
                            mark(act(k), kFailed);
                            abort_reason = r.detail;
                        } else if (!retry_or_stop(k, r)) {
                            break;
                        }
                    }
                    if (act(k).status == kFailed && !abort_reason) abort_reason = "step " + act(k).branch_id + " failed";
                }
            } else if (!abort_reason) {
                for (;;) {
                    std::vector<size_t> runnable;
                    for (size_t k = 0; k < n; ++k) {
                        if (act(k).status != kPrepared) continue;
                        bool ready = true;
                        for (size_t d : deps_of(k)) ready = ready && d < n && act(d).status == kSucceed;
                        if (ready) runnable.push_back(k);
                    }
                    if (runnable.empty() || NowMs() > call_deadline) {
                        if (!runnable.empty()) stop = Outcome::kOngoing;
                        break;
                    }
                    std::vector<const Branch*> todo;
                    for (size_t k : runnable) todo.push_back(&act(k));
                    auto results = co_await CallAll(g, todo);
                    bool progress = false;
                    for (size_t i = 0; i < runnable.size(); ++i) {
                        size_t k = runnable[i];
                        if (results[i].outcome == Outcome::kSuccess) {
                            mark(act(k), kSucceed);
                            progress = true;
                        } else if (results[i].outcome == Outcome::kFailure) {
                            mark(act(k), kFailed);
                            if (!abort_reason) abort_reason = results[i].detail;
                        } else if (retry_or_stop(k, results[i])) {
                            progress = true;  // try it again in the next wave
                        }
                    }
                    if (abort_reason || !progress) break;
                }
            }
            if (!abort_reason) {
                bool all = true;
                for (size_t k = 0; k < n; ++k) all = all && act(k).status == kSucceed;
                if (all) {
                    (void)co_await Persist(g, marks, Change(kSubmitted, kSucceed));
                    co_return;
                }
                if (!co_await Persist(g, marks, std::nullopt)) co_return;
                co_await Reschedule(g, NextFor(stop.value_or(Outcome::kOngoing)));
                co_return;
            }
            GlobalChange c = Change(kSubmitted, kAborting);
            c.rollback_reason = *abort_reason;
            if (!co_await Persist(g, marks, c)) co_return;
            marks.clear();
        }
        if (g.status != kAborting) co_return;

        // Compensate every step that may have run: sequential — every step up to the first action that did not
        // succeed; concurrent — every step whose action ran or whose prerequisites had all succeeded.
        std::vector<bool> needs(n, false);
        if (!layout.concurrent) {
            size_t last = n == 0 ? 0 : n - 1;
            for (size_t k = 0; k < n; ++k) {
                if (act(k).status != kSucceed) {
                    last = k;
                    break;
                }
            }
            for (size_t k = 0; k < n && k <= last; ++k) needs[k] = true;
        } else {
            for (size_t k = 0; k < n; ++k) {
                bool ready = true;
                for (size_t d : deps_of(k)) ready = ready && d < n && act(d).status == kSucceed;
                needs[k] = act(k).status != kPrepared || ready;
            }
        }
        auto done = [&](size_t k) { return !needs[k] || comp(k).status == kSucceed; };
        std::optional<Outcome> stop;
        if (!layout.concurrent) {
            for (size_t i = n; i-- > 0;) {
                if (done(i)) continue;
                if (NowMs() > call_deadline) {
                    stop = Outcome::kOngoing;
                    break;
                }
                CallResult r = co_await Call(g, comp(i).url, comp(i).branch_id, "compensate", comp(i).bin_data);
                if (r.outcome != Outcome::kSuccess) {
                    stop = r.outcome;
                    break;
                }
                mark(comp(i), kSucceed);
            }
        } else {
            for (;;) {
                // k's compensation waits for the compensation of every step that depends on k.
                std::vector<size_t> ready;
                for (size_t k = 0; k < n; ++k) {
                    if (done(k)) continue;
                    bool ok = true;
                    for (size_t j = 0; j < n; ++j) {
                        const auto& deps = deps_of(j);
                        if (std::find(deps.begin(), deps.end(), k) != deps.end() && !done(j)) ok = false;
                    }
                    if (ok) ready.push_back(k);
                }
                if (ready.empty()) break;
                if (NowMs() > call_deadline) {
                    stop = Outcome::kOngoing;
                    break;
                }
                std::vector<const Branch*> todo;
                for (size_t k : ready) todo.push_back(&comp(k));
                auto results = co_await CallAll(g, todo);
                bool progress = false;
                for (size_t i = 0; i < ready.size(); ++i) {
                    if (results[i].outcome == Outcome::kSuccess) {
                        mark(comp(ready[i]), kSucceed);
                        progress = true;
                    } else if (!stop || results[i].outcome != Outcome::kOngoing) {
                        stop = results[i].outcome;
                    }
                }
                if (!progress) break;
            }
        }
        bool all = true;
        for (size_t k = 0; k < n; ++k) all = all && done(k);
        if (all) {
            (void)co_await Persist(g, marks, Change(kAborting, kFailed));
            co_return;
        }
        if (!co_await Persist(g, marks, std::nullopt)) co_return;
        co_await Reschedule(g, NextFor(stop.value_or(Outcome::kError)));
    }

    awaitable<void> PassTcc(Global& g, std::vector<Branch>& branches, int64_t call_deadline) {
        if (g.status == kPrepared) {
            int64_t t = TimeoutToFail(g);
            if (NowMs() - g.create_time < t * 1000) {
                co_await Reschedule(g, Next::kKeep, g.create_time + t * 1000);
                co_return;
            }
            GlobalChange c = Change(kPrepared, kAborting);
            c.rollback_reason = fmt::format("Timeout after {} seconds", t);
            if (!co_await Persist(g, {}, c)) co_return;
        }
        if (g.status != kSubmitted && g.status != kAborting) co_return;
        const bool forward = g.status == kSubmitted;
        const char* op = forward ? "confirm" : "cancel";
        std::vector<Branch> marks;
        std::optional<Outcome> stop;
        for (size_t i = branches.size(); i-- > 0;) {  // reverse registration order
            Branch& b = branches[i];
            if (b.op != op || b.status == kSucceed) continue;
            if (NowMs() > call_deadline) {
                stop = Outcome::kOngoing;
                break;
            }
            CallResult r = co_await Call(g, b.url, b.branch_id, op, b.bin_data);
            if (r.outcome != Outcome::kSuccess) {
                stop = r.outcome;
                break;
            }
            b.status = kSucceed;
            marks.push_back(b);
        }
        if (!stop) {
            (void)co_await Persist(g, marks, Change(g.status, forward ? kSucceed : kFailed));
            co_return;
        }
        if (!co_await Persist(g, marks, std::nullopt)) co_return;
        co_await Reschedule(g, NextFor(*stop));
    }

    // --- running a transaction: one coroutine per transaction in this process ---
    bool TryAcquire(const std::string& gid) {
        std::lock_guard lock(busy_mu);
        return busy.insert(gid).second;
    }
    void Release(const std::string& gid) {
        std::lock_guard lock(busy_mu);
        busy.erase(gid);
    }

    // Processes `gid` now (waiting for another coroutine of this process to finish with it first, when `wait`).
    // `loaded` is the transaction as just stored by the caller (saves reading it back). Returns the transaction as
    // the pass left it, or nullopt when it was not processed (busy elsewhere, unknown, already final).
    awaitable<std::optional<Global>> Run(std::string gid, bool wait,
                                         std::optional<std::pair<Global, std::vector<Branch>>> loaded = std::nullopt) {
        auto self = shared_from_this();
        while (!TryAcquire(gid)) {
            if (!wait || stopped.load()) co_return std::nullopt;
            co_await Sleep(std::chrono::milliseconds(5));
            loaded.reset();  // someone else worked on it meanwhile: read it afresh
        }
        struct Guard {
            Impl* impl;
            std::string gid;
            ~Guard() { impl->Release(gid); }
        } guard{this, gid};
        Global g;
        std::optional<std::vector<Branch>> branches;
        if (loaded) {
            g = std::move(loaded->first);
            branches = std::move(loaded->second);
        } else {
            auto found = co_await Db([&] { return storage->FindGlobal(gid); });
            if (!found.ok() || !found->has_value()) co_return std::nullopt;
            g = std::move(**found);
        }
        if (IsFinal(g.status)) co_return g;
        co_await Pass(g, std::move(branches));
        co_return g;
    }

    void RunInBackground(const std::string& gid) {
        ++in_flight;
        asio::co_spawn(asio::make_strand(io), Run(gid, false),
                       [self = shared_from_this()](std::exception_ptr, std::optional<Global>) { --self->in_flight; });
    }

    awaitable<void> CronLoop() {
        auto self = shared_from_this();
        if (exclusive) (void)co_await Db([&] { return storage->ReleaseAllLeases(NowMs()); });
        const int64_t lease = (2 * opt.request_timeout + 5) * 1000;
        while (!stopped.load()) {
            if (in_flight.load() >= 2000) {  // enough work in flight; let it finish before claiming more
                co_await Sleep(std::chrono::milliseconds(20));
                continue;
            }
            auto claimed = co_await Db([&] { return storage->ClaimDue(owner, NowMs(), lease); });
            if (claimed.ok() && claimed->has_value()) {
                Global g = std::move(**claimed);
                if (LeaseMs(g) > lease) {  // a slow-branch transaction: extend its lease before working on it
                    GlobalChange c;
                    c.from = c.to = g.status;
                    c.next_cron_time = NowMs() + LeaseMs(g);
                    c.owner = owner;
                    (void)co_await Db([&] { return storage->ChangeStatus(g.gid, c); });
                }
                RunInBackground(g.gid);
                continue;
            }
            wake.expires_after(opt.cron_interval);
            boost::system::error_code ec;
            co_await wake.async_wait(asio::redirect_error(use_awaitable, ec));
        }
    }

    // After a submit/abort: process inside the request (wait_result) or in the background.
    awaitable<ApiResult> Process(const std::string& gid, bool wait_result, const char* goal,
                                 std::optional<std::pair<Global, std::vector<Branch>>> loaded = std::nullopt) {
        if (!wait_result) {
            RunInBackground(gid);
            co_return ApiResult::Success();
        }
        std::optional<Global> after = co_await Run(gid, true, std::move(loaded));
        if (!after) {
            auto g = co_await Db([&] { return storage->FindGlobal(gid); });
            if (!g.ok()) co_return ApiResult::FromStatus(g.status());
            if (!g->has_value()) co_return ApiResult::Error(500, "global transaction '" + gid + "' vanished");
            after = std::move(**g);
        }
        const Global& cur = *after;
        if (cur.status == goal) co_return ApiResult::Success();
        if (cur.status == kFailed || cur.status == kAborting) {
            co_return ApiResult::Failure(cur.rollback_reason.empty() ? "wait result not return success"
                                                                      : cur.rollback_reason);
        }
        co_return ApiResult::Ongoing("wait result not return success: status is " + cur.status);
    }

    std::optional<ApiResult> CheckUrls(const TransRequest& r) const {
        for (const auto& url : UrlsOf(r)) {
            if (auto why = opt.url_policy(url)) return ApiResult::Error(400, *why);
        }
        return std::nullopt;
    }

    Global NewGlobal(TransRequest& r, const char* status) const {
        Global g = std::move(r.global);
        const int64_t now = NowMs();
        g.status = status;
        g.create_time = g.update_time = now;
        g.next_cron_interval = BaseInterval(g);
        if (std::string_view(status) == kPrepared) {
            int64_t t = TimeoutToFail(g);
            g.next_cron_time = now + (t > 0 ? t : g.next_cron_interval) * 1000;
        } else {
            g.next_cron_time = now + LeaseMs(g);
            g.owner = owner;
        }
        return g;
    }
};

Engine::Engine(asio::io_context& io, std::unique_ptr<Storage> storage, EngineOptions options, bool exclusive)
    : impl_(std::make_shared<Impl>(io, std::move(storage), std::move(options), exclusive)) {}

Engine::~Engine() {
    Stop();
    // A storage thread still working would post its completion into `io` after `io` is gone; coroutine frames whose
    // completions are queued then die with `io`'s queue.
    impl_->pool.join();
}

void Engine::Start() { asio::co_spawn(impl_->cron_strand, impl_->CronLoop(), asio::detached); }

void Engine::Stop() {
    impl_->stopped = true;
    impl_->Wake();
}

ApiResult Engine::NewGid() { return ApiResult::Json({{"gid", ShortId()}, {"dtm_result", "SUCCESS"}}); }

awaitable<ApiResult> Engine::Prepare(std::string body) {
    auto impl = impl_;
    auto req = ParseTransRequest(body, impl->opt.limits);
    if (!req.ok()) co_return ApiResult::FromStatus(req.status());
    if (auto bad = impl->CheckUrls(*req)) co_return *bad;
    if (req->global.trans_type == "saga") co_return ApiResult::Error(400, "saga has no prepare; submit it");
    Global g = impl->NewGlobal(*req, kPrepared);
    for (auto& b : req->branches) b.gid = g.gid;
    Status s = co_await impl->Db([&] { return impl->storage->SaveNew(g, req->branches); });
    if (s.ok()) co_return ApiResult::Success();
    if (s.code() != StatusCode::kAlreadyExists) co_return ApiResult::FromStatus(s);
    auto cur = co_await impl->Db([&] { return impl->storage->FindGlobal(g.gid); });
    if (!cur.ok()) co_return ApiResult::FromStatus(cur.status());
    if (cur->has_value() && (*cur)->status == kPrepared) co_return ApiResult::Success();
    co_return ApiResult::Failure(fmt::format("current status '{}', cannot prepare",
                                             cur->has_value() ? (*cur)->status : std::string("unknown")));
}

awaitable<ApiResult> Engine::Submit(std::string body) {
    auto impl = impl_;
    auto req = ParseTransRequest(body, impl->opt.limits);
    if (!req.ok()) co_return ApiResult::FromStatus(req.status());
    if (auto bad = impl->CheckUrls(*req)) co_return *bad;
    const bool wait_result = req->global.options.wait_result;
    Global g = impl->NewGlobal(*req, kSubmitted);
    Status s = co_await impl->Db([&] { return impl->storage->SaveNew(g, req->branches); });
    if (s.ok()) {
        std::string gid = g.gid;
        co_return co_await impl->Process(gid, wait_result, kSucceed,
                                         std::make_pair(std::move(g), std::move(req->branches)));
    }
    if (s.code() != StatusCode::kAlreadyExists) co_return ApiResult::FromStatus(s);
    auto cur = co_await impl->Db([&] { return impl->storage->FindGlobal(g.gid); });
    if (!cur.ok()) co_return ApiResult::FromStatus(cur.status());
    if (!cur->has_value()) co_return ApiResult::Error(500, "global transaction '" + g.gid + "' vanished");
    Global stored = std::move(**cur);
    if (stored.trans_type != g.trans_type) {
        co_return ApiResult::Failure(fmt::format("gid '{}' is a {} transaction, not {}", g.gid, stored.trans_type,
                                                 g.trans_type));
    }
    if (stored.status == kPrepared) {
        GlobalChange c = Impl::Change(kPrepared, kSubmitted);
        c.next_cron_time = NowMs() + impl->LeaseMs(stored);
        c.owner = impl->owner;
        auto applied = co_await impl->Db([&] { return impl->storage->ChangeStatus(g.gid, c); });
        if (!applied.ok()) co_return ApiResult::FromStatus(applied.status());
        if (*applied) co_return co_await impl->Process(g.gid, wait_result, kSucceed);
        auto again = co_await impl->Db([&] { return impl->storage->FindGlobal(g.gid); });
        if (again.ok() && again->has_value()) stored = std::move(**again);
    }
    if (stored.status == kSubmitted) co_return co_await impl->Process(g.gid, wait_result, kSucceed);
    co_return ApiResult::Failure(fmt::format("current status '{}', cannot submit", stored.status));
}

awaitable<ApiResult> Engine::Abort(std::string body) {
    auto impl = impl_;
    auto fields = ParseFlatBody(body, impl->opt.limits);
    if (!fields.ok()) co_return ApiResult::FromStatus(fields.status());
    auto get = [&](const char* k) {
        auto it = fields->find(k);
        return it == fields->end() ? std::string() : it->second;
    };
    const std::string gid = get("gid");
    if (gid.empty()) co_return ApiResult::Error(400, "field 'gid' is missing or empty");
    const bool wait_result = get("wait_result") == "true";
    auto cur = co_await impl->Db([&] { return impl->storage->FindGlobal(gid); });
    if (!cur.ok()) co_return ApiResult::FromStatus(cur.status());
    if (!cur->has_value()) co_return ApiResult::Error(404, "no global transaction with gid '" + gid + "'");
    const Global& g = **cur;
    const std::string type = get("trans_type").empty() ? g.trans_type : get("trans_type");
    if (g.trans_type == "msg" && g.status == kPrepared) {
        GlobalChange c = Impl::Change(kPrepared, kFailed);
        if (!get("rollback_reason").empty()) c.rollback_reason = get("rollback_reason");
        auto applied = co_await impl->Db([&] { return impl->storage->ChangeStatus(gid, c); });
        if (!applied.ok()) co_return ApiResult::FromStatus(applied.status());
        if (*applied) co_return ApiResult::Success();
    } else if (type == "tcc" && g.trans_type == "tcc" && (g.status == kPrepared || g.status == kAborting)) {
        if (g.status == kPrepared) {
            GlobalChange c = Impl::Change(kPrepared, kAborting);
            c.rollback_reason = get("rollback_reason");
            c.next_cron_time = NowMs() + impl->LeaseMs(g);
            c.owner = impl->owner;
            auto applied = co_await impl->Db([&] { return impl->storage->ChangeStatus(gid, c); });
            if (!applied.ok()) co_return ApiResult::FromStatus(applied.status());
            if (!*applied) co_return ApiResult::Failure("global transaction '" + gid + "' changed status; retry");
        }
        co_return co_await impl->Process(gid, wait_result, kFailed);
    }
    co_return ApiResult::Failure(
        fmt::format("trans type: '{}' current status '{}', cannot abort", g.trans_type, g.status));
}

awaitable<ApiResult> Engine::ForceStop(std::string body) {
    auto impl = impl_;
    auto fields = ParseFlatBody(body, impl->opt.limits);
    if (!fields.ok()) co_return ApiResult::FromStatus(fields.status());
    const std::string gid = (*fields)["gid"];
    if (gid.empty()) co_return ApiResult::Error(400, "field 'gid' is missing or empty");
    for (int attempt = 0; attempt < 5; ++attempt) {
        auto cur = co_await impl->Db([&] { return impl->storage->FindGlobal(gid); });
        if (!cur.ok()) co_return ApiResult::FromStatus(cur.status());
        if (!cur->has_value()) co_return ApiResult::Error(404, "no global transaction with gid '" + gid + "'");
        const std::string status = (*cur)->status;
        if (IsFinal(status)) {
            co_return ApiResult::Failure(fmt::format("global transaction force stop error. status: {}", status));
        }
        GlobalChange c = Impl::Change(status, kFailed);
        c.rollback_reason = "force stopped";
        auto applied = co_await impl->Db([&] { return impl->storage->ChangeStatus(gid, c); });
        if (!applied.ok()) co_return ApiResult::FromStatus(applied.status());
        if (*applied) co_return ApiResult::Success();
    }
    co_return ApiResult::Error(503, "global transaction '" + gid + "' keeps changing; retry");
}

awaitable<ApiResult> Engine::RegisterBranch(std::string body) {
    auto impl = impl_;
    auto fields = ParseFlatBody(body, impl->opt.limits);
    if (!fields.ok()) co_return ApiResult::FromStatus(fields.status());
    auto get = [&](const char* k) {
        auto it = fields->find(k);
        return it == fields->end() ? std::string() : it->second;
    };
    const std::string gid = get("gid"), type = get("trans_type"), branch_id = get("branch_id");
    if (gid.empty()) co_return ApiResult::Error(400, "field 'gid' is missing or empty");
    if (type == "xa" || type == "workflow") {
        co_return ApiResult::Error(400, "trans_type '" + type + "' is not supported by keeld (supported: msg, saga, tcc)");
    }
    if (type != "tcc") co_return ApiResult::Error(400, "registerBranch needs trans_type 'tcc', got '" + type + "'");
    if (branch_id.empty()) co_return ApiResult::Error(400, "field 'branch_id' is missing or empty");
    if (branch_id.size() > 128) co_return ApiResult::Error(400, "field 'branch_id' is longer than the limit of 128 bytes");
    std::vector<Branch> rows(2);
    rows[0].op = "cancel";
    rows[0].url = get("cancel");
    rows[1].op = "confirm";
    rows[1].url = get("confirm");
    for (auto& b : rows) {
        b.gid = gid;
        b.branch_id = branch_id;
        b.bin_data = get("data");
        if (b.url.size() > impl->opt.limits.max_url_bytes) {
            co_return ApiResult::Error(400, "field '" + b.op + "' is longer than the limit of 1024 bytes");
        }
        if (!b.url.empty()) {
            if (auto why = impl->opt.url_policy(b.url)) co_return ApiResult::Error(400, *why);
        }
    }
    Status s = co_await impl->Db([&] { return impl->storage->AddBranches(gid, kPrepared, rows); });
    if (s.ok()) co_return ApiResult::Success();
    co_return ApiResult::FromStatus(s);
}

awaitable<ApiResult> Engine::Query(std::string gid) {
    auto impl = impl_;
    if (gid.empty()) co_return ApiResult::Error(400, "query parameter 'gid' is missing or empty");
    auto g = co_await impl->Db([&] { return impl->storage->FindGlobal(gid); });
    if (!g.ok()) co_return ApiResult::FromStatus(g.status());
    json out = {{"transaction", nullptr}, {"branches", json::array()}};
    if (g->has_value()) {
        out["transaction"] = GlobalJson(**g);
        auto b = co_await impl->Db([&] { return impl->storage->FindBranches(gid); });
        if (!b.ok()) co_return ApiResult::FromStatus(b.status());
        for (const auto& br : *b) out["branches"].push_back(BranchJson(br));
    }
    co_return ApiResult::Json(std::move(out));
}

awaitable<ApiResult> Engine::All(ListFilter filter) {
    auto impl = impl_;
    if (filter.limit <= 0 || filter.limit > 1000) filter.limit = filter.limit <= 0 ? 100 : 1000;
    auto list = co_await impl->Db([&] { return impl->storage->List(filter); });
    if (!list.ok()) co_return ApiResult::FromStatus(list.status());
    json out = {{"transactions", json::array()}, {"next_position", ""}};
    for (const auto& g : *list) out["transactions"].push_back(GlobalJson(g));
    if (static_cast<int64_t>(list->size()) == filter.limit) out["next_position"] = std::to_string(list->back().id);
    co_return ApiResult::Json(std::move(out));
}

awaitable<ApiResult> Engine::ResetNextCronTime(std::string body) {
    auto impl = impl_;
    auto fields = ParseFlatBody(body, impl->opt.limits);
    if (!fields.ok()) co_return ApiResult::FromStatus(fields.status());
    const std::string gid = (*fields)["gid"];
    if (gid.empty()) co_return ApiResult::Error(400, "field 'gid' is missing or empty");
    auto g = co_await impl->Db([&] { return impl->storage->FindGlobal(gid); });
    if (!g.ok()) co_return ApiResult::FromStatus(g.status());
    if (!g->has_value()) co_return ApiResult::Error(404, "no global transaction with gid '" + gid + "'");
    auto r = co_await impl->Db([&] { return impl->storage->Schedule(gid, NowMs(), (*g)->next_cron_interval); });
    if (!r.ok()) co_return ApiResult::FromStatus(r.status());
    impl->Wake();
    co_return ApiResult::Success();
}

awaitable<ApiResult> Engine::ResetCronTime(int64_t timeout_s, int64_t limit) {
    auto impl = impl_;
    if (timeout_s < 0) timeout_s = 3 * impl->opt.timeout_to_fail;
    if (limit <= 0) limit = 100;
    auto r = co_await impl->Db([&] { return impl->storage->ResetCronTime(NowMs(), timeout_s * 1000, limit); });
    if (!r.ok()) co_return ApiResult::FromStatus(r.status());
    impl->Wake();
    co_return ApiResult::Json({{"has_remaining", r->second}, {"succeed_count", r->first}});
}

}  // namespace keel::coordinator
