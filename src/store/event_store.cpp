// The EventStore front: validation, event-id generation, group commit, stream visibility, subscriptions, and the
// URI registry. Backends (src/store/<name>/) only store and fetch.

#include "keel/event_store.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "keel/subscription.hpp"
#include "store/backend.hpp"
#include "store/registry.hpp"
#include "store/subscription_impl.hpp"
#include "store/validate.hpp"

namespace keel {

using detail::AppendRequest;

class EventStore::Impl {
public:
    Impl(std::unique_ptr<detail::StoreBackend> backend, StoreOptions options)
        : backend_(std::move(backend)), options_(std::move(options)) {
        if (options_.max_batch == 0) options_.max_batch = 1;
        auto head = backend_->HeadPosition();
        head_ = head.ok() ? *head : 0;
    }

    Result<AppendResult> Append(std::string_view stream, ExpectedVersion expected,
                                std::span<const EventData> events) {
        KEEL_RETURN_IF_ERROR(detail::ValidateStreamId(stream));
        KEEL_RETURN_IF_ERROR(detail::ValidateEvents(events, options_));
        std::vector<EventData> owned;
        if (std::any_of(events.begin(), events.end(), [](const EventData& e) { return e.event_id.is_nil(); })) {
            owned.assign(events.begin(), events.end());
            for (EventData& e : owned) {
                if (e.event_id.is_nil()) e.event_id = Uuid::Generate();
            }
            events = owned;
        }
        Pending pending;
        pending.request.stream = stream;
        pending.request.expected = expected;
        pending.request.events = events;

        std::unique_lock lock(mu_);
        ++active_;
        queue_.push_back(&pending);
        if (flushing_ && queue_.size() >= active_) queued_cv_.notify_one();  // a leader waiting for a fuller batch
        while (!pending.done) {
            if (flushing_) {
                pending.cv.wait(lock);
                continue;
            }
            Lead(lock);
        }
        --active_;
        if (flushing_) queued_cv_.notify_one();
        lock.unlock();
        return std::move(pending.request.result);
    }

    // Group commit. Called with `lock` held and no flush running: becomes the leader, writes a batch of queued
    // appends in one backend transaction, wakes the batch's callers and the next leader.
    void Lead(std::unique_lock<std::mutex>& lock) {
        flushing_ = true;
        // When appends are concurrent, give every appender that is inside Append a moment to queue, so that one
        // commit carries them all (a lone writer never waits: it is the only one active).
        if (last_batch_ > 1 && queue_.size() < active_ && queue_.size() < options_.max_batch &&
            options_.group_commit_wait.count() > 0) {
            queued_cv_.wait_for(lock, options_.group_commit_wait,
                                [&] { return queue_.size() >= active_ || queue_.size() >= options_.max_batch; });
        }
        std::vector<Pending*> batch;
        const size_t n = std::min(queue_.size(), options_.max_batch);
        batch.assign(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
        queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
        lock.unlock();

        std::vector<AppendRequest*> requests;
        requests.reserve(batch.size());
        for (Pending* p : batch) requests.push_back(&p->request);
        {
            std::lock_guard writer(write_mu_);
            backend_->AppendBatch(requests);
        }
        int64_t last = 0;
        for (AppendRequest* r : requests) {
            if (r->result.ok()) last = std::max(last, r->result->last_position);
        }

        lock.lock();
        flushing_ = false;
        last_batch_ = batch.size();
        if (last > head_) head_ = last;
        ++commits_;
        for (Pending* p : batch) {
            p->done = true;
            p->cv.notify_one();
        }
        if (!queue_.empty()) queue_.front()->cv.notify_one();  // the next leader
        head_cv_.notify_all();
    }

    Result<std::vector<RecordedEvent>> ReadStream(std::string_view stream, const ReadStreamOptions& options) {
        KEEL_RETURN_IF_ERROR(detail::ValidateStreamId(stream));
        auto info = backend_->GetStream(stream);
        if (!info.ok()) return info.status();
        if (!info->has_value() || (*info)->version < 0) {
            if (info->has_value() && (*info)->state == StreamState::kTombstoned) return Tombstoned(stream);
            return Status::NotFound(fmt::format("stream '{}' does not exist", stream));
        }
        const StreamInfo& s = **info;
        if (s.state == StreamState::kTombstoned) return Tombstoned(stream);
        if (s.state == StreamState::kSoftDeleted) {
            return Status::NotFound(fmt::format("stream '{}' was deleted (soft); appending re-opens it", stream));
        }
        detail::StreamRange range;
        range.direction = options.direction;
        range.limit = options.limit;
        range.max_position = options.as_of_position;
        range.max_recorded_at = options.as_of_time;
        range.min_version = 0;
        if (s.metadata.truncate_before) range.min_version = std::max(range.min_version, *s.metadata.truncate_before);
        if (s.metadata.max_count) range.min_version = std::max(range.min_version, s.version - *s.metadata.max_count + 1);
        if (s.metadata.max_age) range.min_recorded_at = detail::NowMicros() - s.metadata.max_age->count();
        if (options.direction == ReadDirection::kForward) {
            range.from_version = std::max<int64_t>(options.from_version, 0);
        } else {
            range.from_version = options.from_version < 0 ? s.version : std::min(options.from_version, s.version);
        }
        return backend_->ReadStreamRange(stream, range);
    }

    Result<ReadAllSlice> ReadAll(const ReadAllOptions& options) {
        if (options.from_position < 1) {
            return Status::InvalidArgument(
                fmt::format("from_position must be 1 or more (positions start at 1), got {}", options.from_position));
        }
        for (const auto& c : options.categories) KEEL_RETURN_IF_ERROR(detail::ValidateName("category", c, 256));
        for (const auto& t : options.types) KEEL_RETURN_IF_ERROR(detail::ValidateName("event type", t, 256));
        return backend_->ReadAll(options);
    }

    Result<StreamInfo> GetStream(std::string_view stream) {
        KEEL_RETURN_IF_ERROR(detail::ValidateStreamId(stream));
        auto info = backend_->GetStream(stream);
        if (!info.ok()) return info.status();
        if (!info->has_value()) return Status::NotFound(fmt::format("stream '{}' does not exist", stream));
        return std::move(**info);
    }

    int64_t WaitForHead(int64_t position, std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        std::unique_lock lock(mu_);
        for (;;) {
            if (head_ > position) return head_;
            // Appends by other processes are only seen by asking the database.
            lock.unlock();
            auto head = backend_->HeadPosition();
            lock.lock();
            if (head.ok() && *head > head_) head_ = *head;
            const auto now = std::chrono::steady_clock::now();
            if (head_ > position || now >= deadline) return head_;
            head_cv_.wait_until(lock, std::min(deadline, now + std::chrono::milliseconds(50)),
                                [&] { return head_ > position; });
        }
    }

    bool WaitForLocalCommit(int64_t position, std::chrono::milliseconds timeout, const std::atomic<bool>& stop) {
        std::unique_lock lock(mu_);
        return head_cv_.wait_for(lock, timeout, [&] { return head_ > position || stop.load(); }) && head_ > position;
    }

    void WakeAll() {
        std::lock_guard lock(mu_);
        head_cv_.notify_all();
    }

    void NotifyOutboxCommit() {
        std::lock_guard lock(mu_);
        ++outbox_commits_;
        head_cv_.notify_all();
    }

    uint64_t OutboxCommits() {
        std::lock_guard lock(mu_);
        return outbox_commits_;
    }

    void WaitForOutboxCommit(uint64_t seen, std::chrono::milliseconds timeout, const std::atomic<bool>& stop) {
        std::unique_lock lock(mu_);
        head_cv_.wait_for(lock, timeout, [&] { return outbox_commits_ != seen || stop.load(); });
    }

    void NotifyAppended(int64_t position) {
        std::lock_guard lock(mu_);
        if (position > head_) head_ = position;
        head_cv_.notify_all();
    }

    // Runs a backend write other than an append; the backend sees one writer at a time.
    template <class F>
    Status Write(F&& f) {
        std::lock_guard writer(write_mu_);
        return f();
    }

    static Status Tombstoned(std::string_view stream) {
        return Status::StreamDeleted(fmt::format("stream '{}' was hard-deleted (tombstoned)", stream));
    }

    struct Pending {
        AppendRequest request;
        bool done = false;
        std::condition_variable cv;  // its caller waits here: for the result, or to lead the next flush
    };

    std::unique_ptr<detail::StoreBackend> backend_;
    StoreOptions options_;
    std::mutex mu_;        // queue_, flushing_, head_
    std::mutex write_mu_;  // held around every backend write
    std::condition_variable head_cv_;
    std::condition_variable queued_cv_;  // a leader waiting for more appends to queue
    std::deque<Pending*> queue_;
    bool flushing_ = false;
    size_t active_ = 0;      // callers inside Append
    size_t last_batch_ = 0;  // size of the last flush
    int64_t head_ = 0;
    uint64_t commits_ = 0;
    uint64_t outbox_commits_ = 0;
};

EventStore::EventStore(std::unique_ptr<detail::StoreBackend> backend, StoreOptions options)
    : impl_(std::make_unique<Impl>(std::move(backend), std::move(options))) {}

EventStore::~EventStore() = default;

Result<AppendResult> EventStore::Append(std::string_view stream, ExpectedVersion expected,
                                        std::span<const EventData> events) {
    return impl_->Append(stream, expected, events);
}

Result<std::vector<RecordedEvent>> EventStore::ReadStream(std::string_view stream, const ReadStreamOptions& options) {
    return impl_->ReadStream(stream, options);
}

Result<ReadAllSlice> EventStore::ReadAll(const ReadAllOptions& options) { return impl_->ReadAll(options); }

Result<int64_t> EventStore::HeadPosition() { return impl_->backend_->HeadPosition(); }

Result<StreamInfo> EventStore::GetStream(std::string_view stream) { return impl_->GetStream(stream); }

Result<std::vector<StreamInfo>> EventStore::ListStreams(std::string_view after, size_t limit) {
    return impl_->backend_->ListStreams(after, limit);
}

Status EventStore::SetStreamMetadata(std::string_view stream, const StreamMetadata& metadata) {
    KEEL_RETURN_IF_ERROR(detail::ValidateStreamId(stream));
    KEEL_RETURN_IF_ERROR(detail::ValidateStreamMetadata(metadata));
    return impl_->Write([&] { return impl_->backend_->SetStreamMetadata(stream, metadata); });
}

Status EventStore::DeleteStream(std::string_view stream, ExpectedVersion expected, DeleteMode mode) {
    KEEL_RETURN_IF_ERROR(detail::ValidateStreamId(stream));
    return impl_->Write([&] { return impl_->backend_->DeleteStream(stream, expected, mode); });
}

Status EventStore::SaveSnapshot(const Snapshot& snapshot) {
    KEEL_RETURN_IF_ERROR(detail::ValidateStreamId(snapshot.stream_id));
    if (snapshot.version < 0) {
        return Status::InvalidArgument(fmt::format("snapshot version must be 0 or more, got {}", snapshot.version));
    }
    KEEL_RETURN_IF_ERROR(detail::ValidateName("snapshot type", snapshot.type, detail::kMaxTypeBytes));
    return impl_->Write([&] { return impl_->backend_->SaveSnapshot(snapshot); });
}

Result<Snapshot> EventStore::LoadSnapshot(std::string_view stream) {
    KEEL_RETURN_IF_ERROR(detail::ValidateStreamId(stream));
    auto r = impl_->backend_->LoadSnapshot(stream);
    if (!r.ok()) return r.status();
    if (!r->has_value()) return Status::NotFound(fmt::format("stream '{}' has no snapshot", stream));
    return std::move(**r);
}

Result<int64_t> EventStore::LoadCheckpoint(std::string_view name) {
    KEEL_RETURN_IF_ERROR(detail::ValidateName("checkpoint name", name, detail::kMaxCheckpointNameBytes));
    auto r = impl_->backend_->LoadCheckpoint(name);
    if (!r.ok()) return r.status();
    if (!r->has_value()) return Status::NotFound(fmt::format("no checkpoint named '{}'", name));
    return **r;
}

Status EventStore::SaveCheckpoint(std::string_view name, int64_t position) {
    KEEL_RETURN_IF_ERROR(detail::ValidateName("checkpoint name", name, detail::kMaxCheckpointNameBytes));
    return impl_->Write([&] { return impl_->backend_->SaveCheckpoint(name, position); });
}

Result<std::unique_ptr<Subscription>> EventStore::Subscribe(SubscriptionOptions options,
                                                            std::function<Status(const RecordedEvent&)> handler) {
    return detail::StartSubscription(*this, std::move(options), std::move(handler));
}

Result<StoreStats> EventStore::Stats() { return impl_->backend_->Stats(); }

const StoreOptions& EventStore::options() const noexcept { return impl_->options_; }

int64_t EventStore::WaitForHead(int64_t position, std::chrono::milliseconds timeout) {
    return impl_->WaitForHead(position, timeout);
}

detail::StoreBackend& EventStore::backend() noexcept { return *impl_->backend_; }

namespace detail {

bool StoreInternals::WaitForLocalCommit(EventStore& store, int64_t position, std::chrono::milliseconds timeout,
                                        const std::atomic<bool>& stop) {
    return store.impl_->WaitForLocalCommit(position, timeout, stop);
}

void StoreInternals::WakeAll(EventStore& store) { store.impl_->WakeAll(); }

void StoreInternals::NotifyAppended(EventStore& store, int64_t position) { store.impl_->NotifyAppended(position); }

void StoreInternals::NotifyOutboxCommit(EventStore& store) { store.impl_->NotifyOutboxCommit(); }

uint64_t StoreInternals::OutboxCommits(EventStore& store) { return store.impl_->OutboxCommits(); }

void StoreInternals::WaitForOutboxCommit(EventStore& store, uint64_t seen, std::chrono::milliseconds timeout,
                                         const std::atomic<bool>& stop) {
    store.impl_->WaitForOutboxCommit(seen, timeout, stop);
}

}  // namespace detail

Result<std::unique_ptr<EventStore>> OpenStore(std::string_view uri, const StoreOptions& options) {
    auto backend = detail::OpenBackend(uri, options);
    if (!backend.ok()) return backend.status();
    return std::make_unique<EventStore>(std::move(*backend), options);
}

std::vector<std::string> StoreSchemes() { return detail::BackendSchemes(); }

}  // namespace keel
