#pragma once
/// keel::Subscription: delivers the events of `$all` or of one stream to a handler, first catching up from a
/// checkpoint and then live, on one code path (the same read loop; "live" is just a read that found the head).
///
/// Guarantees:
/// - at least once: the checkpoint advances only after the handler returned OK for every earlier event, so after
///   a crash the subscriber sees some events again and never misses one. Handlers deduplicate by event_id or
///   global_position when the effect must happen once.
/// - never skips: events arrive in global order (stream order for a stream subscription), each exactly once per
///   run, with no gap, even while other threads or processes append.
/// - a slow handler never blocks writers: the subscription reads in its own thread with its own read snapshot.
///
/// A handler that returns an error is retried with exponential backoff up to `max_retries` times; then the
/// subscription stops, its checkpoint stays before the failing event, and Wait() returns the handler's status.
///
/// Thread-safety: the handler runs on the subscription's own thread, one event at a time. Stop(), Wait(),
/// position() and caught_up() may be called from any thread. Destroying a Subscription stops it.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "keel/event.hpp"
#include "keel/status.hpp"

namespace keel {

struct SubscriptionOptions {
    /// Durable name: when non-empty the checkpoint is stored under it (EventStore::SaveCheckpoint) and a restarted
    /// subscription with the same name continues after it. Default: empty (not durable).
    std::string name;
    /// Subscribe to one stream instead of `$all`. Default: empty, `$all`.
    std::string stream;
    /// Where to start when there is no stored checkpoint: the first global position (for `$all`) or stream version
    /// (for a stream) to deliver. Default: the beginning. Use StartAtHead() for only new events.
    std::optional<int64_t> start;
    /// Start after the current head instead of at the beginning (when there is no stored checkpoint).
    bool start_at_head = false;
    /// `$all` only: deliver only events of these categories / types (the checkpoint still advances past the rest).
    std::vector<std::string> categories;
    std::vector<std::string> types;
    /// Events read per batch. Default: 512.
    size_t batch_size = 512;
    /// How often to look for appends made by other processes while idle. Appends through the same EventStore
    /// object wake the subscription at once. Default: 100 ms.
    std::chrono::milliseconds poll_interval{100};
    /// Least time between two checkpoint writes (the checkpoint is always written at Stop). Default: 200 ms.
    std::chrono::milliseconds checkpoint_interval{200};
    /// Handler retries before the subscription stops. Default: 5.
    int max_retries = 5;
    /// First retry delay; doubles each retry. Default: 50 ms.
    std::chrono::milliseconds retry_backoff{50};
    /// Called (on the subscription thread) each time the subscription reaches the head after delivering events,
    /// and once when it first reaches it. Default: none.
    std::function<void(int64_t position)> on_caught_up;
};

class Subscription {
public:
    virtual ~Subscription() = default;

    /// Asks the subscription to stop after the event in hand, writes its checkpoint, and joins its thread.
    /// Idempotent. Returns the final status (as Wait()).
    virtual Status Stop() = 0;

    /// Blocks until the subscription stops by itself (a handler failed for good, the stream was tombstoned, the
    /// store failed) and returns why; returns OK if it was stopped by Stop().
    virtual Status Wait() = 0;

    /// The last delivered-and-handled position (`$all`) or stream version (stream), or -1/0 before any.
    virtual int64_t position() const = 0;

    /// True once the subscription has delivered everything up to the head it last saw.
    virtual bool caught_up() const = 0;

    /// True once the subscription has stopped, by Stop() or by itself; Wait() then returns at once. Never blocks.
    virtual bool stopped() const = 0;
};

}  // namespace keel
