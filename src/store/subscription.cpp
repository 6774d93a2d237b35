// One read loop serves catch-up and live delivery: read a batch after the position, hand each event to the handler,
// advance; when a read finds the head, wait for a commit (or the poll interval) and read again.

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "store/subscription_impl.hpp"
#include "store/validate.hpp"

namespace keel::detail {
namespace {

class SubscriptionImpl final : public Subscription {
public:
    SubscriptionImpl(EventStore& store, SubscriptionOptions options,
                     std::function<Status(const RecordedEvent&)> handler, int64_t next)
        : store_(store), options_(std::move(options)), handler_(std::move(handler)), next_(next) {
        position_ = next - 1;
        saved_position_ = position_;
        thread_ = std::thread([this] { Run(); });
    }

    ~SubscriptionImpl() override { (void)Stop(); }

    Status Stop() override {
        {
            std::lock_guard lock(mu_);
            stop_requested_ = true;
            stop_ = true;
        }
        wake_.notify_all();
        StoreInternals::WakeAll(store_);
        Join();
        std::lock_guard lock(mu_);
        return final_status_;
    }

    Status Wait() override {
        std::unique_lock lock(mu_);
        finished_cv_.wait(lock, [this] { return finished_; });
        lock.unlock();
        Join();
        lock.lock();
        return final_status_;
    }

    bool stopped() const override {
        std::lock_guard lock(mu_);
        return finished_;
    }

    int64_t position() const override { return position_.load(); }
    bool caught_up() const override { return caught_up_.load(); }

private:
    // Stop() and Wait() may race from two threads; only one may join.
    void Join() {
        std::lock_guard lock(join_mu_);
        if (thread_.joinable()) thread_.join();
    }

    bool StopRequested() {
        std::lock_guard lock(mu_);
        return stop_requested_;
    }

    // Sleeps up to `d`; returns false if a stop was requested meanwhile.
    bool SleepFor(std::chrono::milliseconds d) {
        std::unique_lock lock(mu_);
        return !wake_.wait_for(lock, d, [this] { return stop_requested_; });
    }

    bool IsAll() const { return options_.stream.empty(); }

    // Reads the next batch into `batch`; sets `at_end` when the read reached the head. `head_seen` is the global
    // head observed before the read, used to wait for the next commit.
    Status ReadBatch(std::vector<RecordedEvent>& batch, bool& at_end, int64_t& head_seen) {
        if (IsAll()) {
            ReadAllOptions o;
            o.from_position = next_;
            o.limit = options_.batch_size;
            o.categories = options_.categories;
            o.types = options_.types;
            auto slice = store_.ReadAll(o);
            if (!slice.ok()) return slice.status();
            batch = std::move(slice->events);
            at_end = slice->end_of_all;
            scanned_to_ = slice->next_position;
            head_seen = slice->next_position - 1;
            return Status::Ok();
        }
        auto head = store_.HeadPosition();
        if (!head.ok()) return head.status();
        head_seen = *head;
        ReadStreamOptions o;
        o.from_version = next_;
        o.limit = options_.batch_size;
        auto events = store_.ReadStream(options_.stream, o);
        if (!events.ok()) {
            if (events.status().code() != StatusCode::kNotFound) return events.status();
            batch.clear();  // the stream does not exist (yet): wait for it
            at_end = true;
            return Status::Ok();
        }
        batch = std::move(*events);
        at_end = batch.size() < options_.batch_size;
        return Status::Ok();
    }

    // Delivers one event, retrying the handler with backoff. Returns the handler's last status.
    Status Deliver(const RecordedEvent& e) {
        auto backoff = options_.retry_backoff;
        for (int attempt = 0;; ++attempt) {
            Status s;
            try {
                s = handler_(e);
            } catch (const std::exception& ex) {
                s = Status::Internal(fmt::format("subscription handler threw: {}", ex.what()));
            }
            if (s.ok()) return s;
            if (attempt >= options_.max_retries) {
                return s.WithContext(fmt::format("handler failed {} times on event at position {} (stream '{}' "
                                                 "version {})",
                                                 attempt + 1, e.global_position, e.stream_id, e.stream_version));
            }
            if (!SleepFor(backoff)) return Status::Cancelled("subscription stopped while retrying a handler");
            backoff *= 2;
        }
    }

    void MaybeCheckpoint(bool force) {
        if (options_.name.empty()) return;
        const int64_t pos = position_.load();
        if (pos == saved_position_) return;
        const auto now = std::chrono::steady_clock::now();
        if (!force && now - last_checkpoint_ < options_.checkpoint_interval) return;
        Status s = store_.SaveCheckpoint(options_.name, pos);
        if (s.ok()) {
            saved_position_ = pos;
            last_checkpoint_ = now;
        }
    }

    void Run() {
        Status result = Loop();
        MaybeCheckpoint(/*force=*/true);
        std::lock_guard lock(mu_);
        final_status_ = result;
        finished_ = true;
        finished_cv_.notify_all();
    }

    Status Loop() {
        std::vector<RecordedEvent> batch;
        auto read_backoff = options_.retry_backoff;
        bool announced = false;
        bool woken = false;
        auto idle_backoff = std::chrono::milliseconds(1);
        while (!StopRequested()) {
            bool at_end = false;
            int64_t head_seen = 0;
            Status rs = ReadBatch(batch, at_end, head_seen);
            if (!rs.ok()) {
                if (rs.code() != StatusCode::kUnavailable) return rs;
                if (!SleepFor(read_backoff)) break;  // transient: back off and read again
                read_backoff = std::min(read_backoff * 2, std::chrono::milliseconds(5000));
                continue;
            }
            read_backoff = options_.retry_backoff;
            for (const RecordedEvent& e : batch) {
                if (StopRequested()) return Status::Ok();
                Status ds = Deliver(e);
                if (ds.code() == StatusCode::kCancelled) return Status::Ok();
                if (!ds.ok()) return ds;
                position_ = IsAll() ? e.global_position : e.stream_version;
                next_ = position_ + 1;
            }
            if (IsAll()) {
                // Filtered-out events advance the cursor too.
                next_ = std::max(next_, scanned_to_);
                position_ = std::max(position_.load(), next_ - 1);
            }
            MaybeCheckpoint(/*force=*/false);
            if (at_end) {
                // Also after a full batch that ended exactly at the head (caught_up_ was cleared, and this read,
                // the one that found the end, is empty).
                if (!batch.empty() || !announced || !caught_up_.load()) {
                    announced = true;
                    caught_up_ = true;
                    if (options_.on_caught_up) options_.on_caught_up(position_.load());
                }
                // A commit woke us but the read found nothing (a backend whose readers wait for older transactions
                // to finish, e.g. PostgreSQL's snapshot horizon): back off instead of spinning.
                if (woken && batch.empty()) {
                    if (!SleepFor(idle_backoff)) break;
                    idle_backoff = std::min(idle_backoff * 2, options_.poll_interval);
                } else {
                    idle_backoff = std::chrono::milliseconds(1);
                }
                woken = StoreInternals::WaitForLocalCommit(store_, head_seen, options_.poll_interval, stop_);
            } else {
                woken = false;
                caught_up_ = false;
            }
        }
        return Status::Ok();
    }

    EventStore& store_;
    const SubscriptionOptions options_;
    std::function<Status(const RecordedEvent&)> handler_;

    int64_t next_;             // next position (or version) to read; subscription thread only
    int64_t scanned_to_ = 0;   // $all: the next position after the last read
    int64_t saved_position_;   // last checkpoint written; subscription thread only
    std::chrono::steady_clock::time_point last_checkpoint_{};
    std::atomic<int64_t> position_;
    std::atomic<bool> caught_up_{false};

    mutable std::mutex mu_;
    std::mutex join_mu_;
    std::condition_variable wake_;
    std::condition_variable finished_cv_;
    bool stop_requested_ = false;
    std::atomic<bool> stop_{false};  // mirrors stop_requested_ for waits on the store's condition variable
    bool finished_ = false;
    Status final_status_;
    std::thread thread_;
};

}  // namespace

Result<std::unique_ptr<Subscription>> StartSubscription(EventStore& store, SubscriptionOptions options,
                                                        std::function<Status(const RecordedEvent&)> handler) {
    if (!handler) return Status::InvalidArgument("subscription handler is empty");
    if (options.batch_size == 0) return Status::InvalidArgument("subscription batch_size must be at least 1");
    if (options.max_retries < 0) return Status::InvalidArgument("subscription max_retries must not be negative");
    if (options.poll_interval.count() <= 0) {
        return Status::InvalidArgument("subscription poll_interval must be positive");
    }
    const bool all = options.stream.empty();
    if (!all) {
        KEEL_RETURN_IF_ERROR(ValidateStreamId(options.stream));
        if (!options.categories.empty() || !options.types.empty()) {
            return Status::InvalidArgument("subscription categories/types filters apply to $all only, not to a stream");
        }
    }
    if (options.start && options.start_at_head) {
        return Status::InvalidArgument("subscription: set either start or start_at_head, not both");
    }
    int64_t next = all ? 1 : 0;
    bool resolved = false;
    if (!options.name.empty()) {
        auto cp = store.LoadCheckpoint(options.name);
        if (cp.ok()) {
            next = *cp + 1;
            resolved = true;
        } else if (cp.status().code() != StatusCode::kNotFound) {
            return cp.status();
        }
    }
    if (!resolved && options.start) {
        if (*options.start < (all ? 0 : 0)) {
            return Status::InvalidArgument(fmt::format("subscription start must not be negative, got {}", *options.start));
        }
        next = all ? std::max<int64_t>(*options.start, 1) : *options.start;
    } else if (!resolved && options.start_at_head) {
        if (all) {
            auto head = store.HeadPosition();
            if (!head.ok()) return head.status();
            next = *head + 1;
        } else {
            auto info = store.GetStream(options.stream);
            if (info.ok()) {
                next = info->version + 1;
            } else if (info.status().code() != StatusCode::kNotFound) {
                return info.status();
            }
        }
    }
    return std::unique_ptr<Subscription>(
        std::make_unique<SubscriptionImpl>(store, std::move(options), std::move(handler), next));
}

}  // namespace keel::detail
