// The outbox relay: one leader per database (a lease), rounds of claim → windowed confirmed publish → mark.

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "keel/outbox.hpp"
#include "store/backend.hpp"
#include "store/subscription_impl.hpp"

namespace keel {
namespace {

constexpr std::string_view kLeaseName = "outbox-relay";

std::string DefaultOwner() {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    return fmt::format("{}-{}-{}", host, ::getpid(), Uuid::Generate().ToString().substr(24));
}

Status ValidateOptions(const RelayOptions& o) {
    if (o.batch == 0 || o.window == 0) return Status::InvalidArgument("relay batch and window must be at least 1");
    if (o.lease.count() <= 0 || o.publish_timeout.count() <= 0 || o.poll_interval.count() <= 0) {
        return Status::InvalidArgument("relay lease, publish_timeout and poll_interval must be positive");
    }
    if (o.publish_timeout >= o.lease) {
        return Status::InvalidArgument("relay publish_timeout must be shorter than the lease, or another relay could "
                                       "take over while a round is still publishing");
    }
    return Status::Ok();
}

// One round: renew the lease, publish the next rows, mark the confirmed prefix. Returns how many were published.
// `held_until` (may be null): when this relay last took the lease, until when (µs; 0: not held). A lease that still
// outlasts a whole round (publish_timeout, plus a second of margin) is not renewed: that saves a write transaction on
// the store per round, which a busy relay (a round per commit) otherwise takes from the producers. It is set to 0
// when the round fails.
Result<int64_t> Round(EventStore& store, Broker& broker, const RelayOptions& o, const std::string& owner,
                      int64_t* held_until = nullptr) {
    detail::StoreBackend& backend = store.backend();
    const int64_t now = detail::NowMicros();
    const auto lease_us = std::chrono::duration_cast<std::chrono::microseconds>(o.lease).count();
    const auto round_us =
        std::chrono::duration_cast<std::chrono::microseconds>(o.publish_timeout + std::chrono::seconds(1)).count();
    if (held_until == nullptr || *held_until - now <= round_us) {
        if (held_until != nullptr) *held_until = 0;
        auto held = backend.AcquireLease(kLeaseName, owner, now, now + lease_us);
        if (!held.ok()) return held.status();
        if (!*held) return Status::FailedPrecondition("another relay holds the outbox lease");
        if (held_until != nullptr) *held_until = now + lease_us;
    }

    auto rows = backend.PendingOutbox(o.batch);
    if (!rows.ok()) return rows.status();
    if (rows->empty()) return int64_t{0};
    std::vector<Message> messages;
    messages.reserve(rows->size());
    for (const detail::OutboxRow& r : *rows) messages.push_back(r.message);
    const std::vector<Status> results = broker.PublishBatch(messages, o.window, o.publish_timeout);
    // Mark the confirmed prefix only: after a failure, the failed row and all later ones go out again, in order.
    std::vector<int64_t> done;
    Status failure;
    for (size_t i = 0; i < rows->size(); ++i) {
        const Status& s = i < results.size() ? results[i] : Status::Internal("the broker returned too few results");
        if (!s.ok()) {
            failure = s.WithContext(fmt::format("publishing outbox row {}", (*rows)[i].position));
            break;
        }
        done.push_back((*rows)[i].position);
    }
    if (!done.empty()) KEEL_RETURN_IF_ERROR(backend.MarkPublished(kLeaseName, owner, done, detail::NowMicros()));
    if (!failure.ok()) return failure;
    return static_cast<int64_t>(done.size());
}

class RelayImpl final : public Relay {
public:
    RelayImpl(EventStore& store, Broker& broker, RelayOptions options)
        : store_(store), broker_(broker), options_(std::move(options)) {
        // Commits by other processes wake the relay where the database can tell (PostgreSQL: LISTEN/NOTIFY);
        // commits through this EventStore wake it in-process; poll_interval covers the rest.
        watch_ = store_.backend().WatchOutbox([&store] { detail::StoreInternals::NotifyOutboxCommit(store); });
        thread_ = std::thread([this] { Run(); });
    }
    ~RelayImpl() override { Stop(); }

    void Stop() override {
        {
            std::lock_guard lock(mu_);
            stopping_ = true;
            stop_ = true;
        }
        detail::StoreInternals::WakeAll(store_);
        cv_.notify_all();
        std::lock_guard join(join_mu_);
        if (thread_.joinable()) thread_.join();
        watch_.reset();
    }

    Status Drain(std::chrono::milliseconds timeout) override {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            auto stats = store_.backend().GetOutboxStats();
            if (!stats.ok()) return stats.status();
            if (stats->pending == 0) return Status::Ok();
            if (std::chrono::steady_clock::now() >= deadline) {
                return Status::DeadlineExceeded(fmt::format("{} outbox rows still unpublished", stats->pending));
            }
            detail::StoreInternals::WakeAll(store_);
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }

    RelayStats stats() const override {
        std::lock_guard lock(mu_);
        return stats_;
    }

private:
    void Run() {
        auto backoff = options_.retry_backoff;
        auto last_purge = std::chrono::steady_clock::now() - std::chrono::hours(1);
        while (!stop_.load()) {
            const uint64_t seen = detail::StoreInternals::OutboxCommits(store_);
            auto published = Round(store_, broker_, options_, options_.owner, &lease_until_);
            if (!published.ok()) lease_until_ = 0;  // take the lease again (and check it) next round
            {
                std::lock_guard lock(mu_);
                ++stats_.rounds;
                if (published.ok()) {
                    stats_.published += *published;
                    stats_.leader = true;
                } else {
                    stats_.leader = published.status().code() != StatusCode::kFailedPrecondition;
                    if (stats_.leader) ++stats_.failures;
                    stats_.last_error = published.status().ToString();
                }
            }
            if (published.ok() && *published > 0) {
                backoff = options_.retry_backoff;
                continue;  // more may be waiting
            }
            if (published.ok()) {
                MaybePurge(last_purge);
                // Idle: wait for a commit through this store, or poll for other processes' commits.
                detail::StoreInternals::WaitForOutboxCommit(store_, seen, options_.poll_interval, stop_);
                continue;
            }
            if (published.status().code() == StatusCode::kFailedPrecondition) {
                WaitFor(options_.poll_interval);  // a standby relay: try for the lease later
                continue;
            }
            WaitFor(backoff);  // the broker (or the database) failed: back off and try again
            backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
        }
        (void)store_.backend().ReleaseLease(kLeaseName, options_.owner);
    }

    void MaybePurge(std::chrono::steady_clock::time_point& last) {
        const auto now = std::chrono::steady_clock::now();
        if (now - last < std::chrono::minutes(1)) return;
        last = now;
        const auto keep = std::chrono::duration_cast<std::chrono::microseconds>(options_.retention).count();
        (void)store_.backend().PurgeOutbox(detail::NowMicros() - keep);
    }

    void WaitFor(std::chrono::milliseconds d) {
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, d, [this] { return stopping_; });
    }

    EventStore& store_;
    Broker& broker_;
    const RelayOptions options_;
    mutable std::mutex mu_;
    std::mutex join_mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
    std::atomic<bool> stop_{false};
    RelayStats stats_;
    int64_t lease_until_ = 0;  // the relay thread's: see Round
    std::unique_ptr<detail::OutboxWatch> watch_;
    std::thread thread_;
};

}  // namespace

Result<std::unique_ptr<Relay>> Relay::Start(EventStore& store, Broker& broker, RelayOptions options) {
    KEEL_RETURN_IF_ERROR(ValidateOptions(options));
    if (options.owner.empty()) options.owner = DefaultOwner();
    auto probe = store.backend().GetOutboxStats();  // kNotSupported for stores without an outbox
    if (!probe.ok()) return probe.status();
    return std::unique_ptr<Relay>(std::make_unique<RelayImpl>(store, broker, std::move(options)));
}

Result<int64_t> RelayOnce(EventStore& store, Broker& broker, const RelayOptions& options) {
    KEEL_RETURN_IF_ERROR(ValidateOptions(options));
    RelayOptions o = options;
    if (o.owner.empty()) o.owner = DefaultOwner();
    auto published = Round(store, broker, o, o.owner);
    (void)store.backend().ReleaseLease(kLeaseName, o.owner);
    return published;
}

Result<int64_t> RepublishOutbox(EventStore& store, int64_t from) {
    if (from < 1) return Status::InvalidArgument(fmt::format("outbox positions start at 1, got {}", from));
    return store.backend().RepublishOutbox(from);
}

Result<OutboxStats> GetOutboxStats(EventStore& store) { return store.backend().GetOutboxStats(); }

}  // namespace keel
