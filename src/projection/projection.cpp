// Projections: batches of $all applied in one unit of work with the checkpoint; rebuild on request.

#include "keel/projection.hpp"

#include <fmt/format.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "store/subscription_impl.hpp"
#include "store/validate.hpp"

namespace keel {
namespace {

constexpr int64_t kRebuildRequested = -1;

class ProjectionImpl final : public Projection {
public:
    ProjectionImpl(EventStore& store, ProjectionOptions options, ProjectionHandler handler)
        : store_(store),
          options_(std::move(options)),
          handler_(std::move(handler)),
          checkpoint_(ProjectionCheckpointName(options_.name)) {
        thread_ = std::thread([this] { Run(); });
    }
    ~ProjectionImpl() override { Stop(); }

    void Stop() override {
        {
            std::lock_guard lock(mu_);
            stop_ = true;
            stop_flag_ = true;
        }
        detail::StoreInternals::WakeAll(store_);
        cv_.notify_all();
        std::lock_guard join(join_mu_);
        if (thread_.joinable()) thread_.join();
    }

    int64_t position() const override { return position_.load(); }

    Status WaitFor(int64_t position, std::chrono::milliseconds timeout) override {
        std::unique_lock lock(mu_);
        const bool reached = cv_.wait_for(lock, timeout, [&] { return position_.load() >= position || done_; });
        if (position_.load() >= position) return Status::Ok();
        if (done_) return final_.ok() ? Status::Cancelled("projection stopped") : final_;
        (void)reached;
        return Status::DeadlineExceeded(
            fmt::format("projection '{}' is at {}, not yet at {}", options_.name, position_.load(), position));
    }

private:
    bool Stopping() {
        std::lock_guard lock(mu_);
        return stop_;
    }

    bool Sleep(std::chrono::milliseconds d) {
        std::unique_lock lock(mu_);
        return !cv_.wait_for(lock, d, [this] { return stop_; });
    }

    // Applies the next batch; returns how many positions it advanced (0: nothing new). Reads first, outside any
    // transaction, so an idle projection never takes the database's write lock.
    Result<int64_t> Batch() {
        auto stored = store_.LoadCheckpoint(checkpoint_);
        if (!stored.ok() && stored.status().code() != StatusCode::kNotFound) return stored.status();
        const int64_t at = stored.ok() ? *stored : 0;
        if (at == kRebuildRequested) return Rebuild();
        ReadAllOptions read;
        read.from_position = at + 1;
        read.limit = options_.batch_size;
        read.categories = options_.categories;
        read.types = options_.types;
        auto slice = store_.ReadAll(read);
        if (!slice.ok()) return slice.status();
        const int64_t next = slice->next_position - 1;
        if (next <= at) return int64_t{0};

        auto uow = UnitOfWork::Begin(store_);
        if (!uow.ok()) return uow.status();
        auto locked = uow->LoadCheckpoint(checkpoint_);
        if (!locked.ok()) return locked.status();
        if (locked->value_or(0) != at) return int64_t{1};  // moved meanwhile (a rebuild request): read again
        for (const RecordedEvent& e : slice->events) {
            Status s;
            try {
                s = handler_(*uow, e);
            } catch (const std::exception& ex) {
                s = Status::Internal(fmt::format("projection handler threw: {}", ex.what()));
            }
            KEEL_RETURN_IF_ERROR(s.WithContext(fmt::format("projection '{}' at position {} ({} in '{}')",
                                                           options_.name, e.global_position, e.type, e.stream_id)));
        }
        KEEL_RETURN_IF_ERROR(uow->SaveCheckpoint(checkpoint_, next));
        KEEL_RETURN_IF_ERROR(uow->Commit());
        {
            std::lock_guard lock(mu_);
            position_ = next;
        }
        cv_.notify_all();
        return next - at;
    }

    Result<int64_t> Rebuild() {
        if (!options_.reset) {
            return Status::FailedPrecondition(
                fmt::format("projection '{}' was asked to rebuild but has no reset function", options_.name));
        }
        auto uow = UnitOfWork::Begin(store_);
        if (!uow.ok()) return uow.status();
        KEEL_RETURN_IF_ERROR(options_.reset(*uow).WithContext("resetting the read model for a rebuild"));
        KEEL_RETURN_IF_ERROR(uow->SaveCheckpoint(checkpoint_, 0));
        KEEL_RETURN_IF_ERROR(uow->Commit());
        position_ = 0;
        return int64_t{1};  // go round again at once
    }

    void Run() {
        Status result;
        int failures = 0;
        auto backoff = std::chrono::milliseconds(50);
        {
            auto cp = store_.LoadCheckpoint(checkpoint_);
            if (cp.ok() && *cp > 0) position_ = *cp;
        }
        while (!Stopping()) {
            const int64_t head_seen = position_.load();
            auto advanced = Batch();
            if (!advanced.ok()) {
                if (++failures >= options_.max_attempts) {
                    result = advanced.status();
                    break;
                }
                if (!Sleep(backoff)) break;
                backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
                continue;
            }
            failures = 0;
            backoff = std::chrono::milliseconds(50);
            if (*advanced > 0) continue;
            detail::StoreInternals::WaitForLocalCommit(store_, std::max(head_seen, position_.load()),
                                                       options_.poll_interval, stop_flag_);
        }
        std::lock_guard lock(mu_);
        done_ = true;
        final_ = result;
        cv_.notify_all();
    }

    EventStore& store_;
    const ProjectionOptions options_;
    ProjectionHandler handler_;
    const std::string checkpoint_;
    std::atomic<int64_t> position_{0};
    mutable std::mutex mu_;
    std::mutex join_mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    std::atomic<bool> stop_flag_{false};
    bool done_ = false;
    Status final_;
    std::thread thread_;
};

}  // namespace

std::string ProjectionCheckpointName(std::string_view name) { return "projection:" + std::string(name); }

Result<std::unique_ptr<Projection>> Projection::Start(EventStore& store, ProjectionOptions options,
                                                      ProjectionHandler handler) {
    KEEL_RETURN_IF_ERROR(detail::ValidateName("projection name", options.name, 200));
    if (!handler) return Status::InvalidArgument("projection handler is empty");
    if (options.batch_size == 0) return Status::InvalidArgument("projection batch_size must be at least 1");
    if (options.max_attempts < 1) return Status::InvalidArgument("projection max_attempts must be at least 1");
    {
        auto probe = UnitOfWork::Begin(store);
        if (!probe.ok()) return probe.status();
    }
    // The checkpoint row exists from the start, so that batches always lock it (two instances never both apply).
    const std::string checkpoint = ProjectionCheckpointName(options.name);
    auto existing = store.LoadCheckpoint(checkpoint);
    if (!existing.ok()) {
        if (existing.status().code() != StatusCode::kNotFound) return existing.status();
        KEEL_RETURN_IF_ERROR(store.SaveCheckpoint(checkpoint, 0));
    }
    return std::unique_ptr<Projection>(std::make_unique<ProjectionImpl>(store, std::move(options), std::move(handler)));
}

Status RequestProjectionRebuild(EventStore& store, std::string_view name) {
    KEEL_RETURN_IF_ERROR(detail::ValidateName("projection name", name, 200));
    return store.SaveCheckpoint(ProjectionCheckpointName(name), kRebuildRequested);
}

}  // namespace keel
