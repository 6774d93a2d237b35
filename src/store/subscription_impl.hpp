#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>

#include "keel/event_store.hpp"
#include "keel/subscription.hpp"

namespace keel::detail {

// What subscriptions need from the store beyond its public API.
class StoreInternals {
public:
    // Waits until an append through `store` moves the head past `position`, `timeout` passes, or `stop` is set and
    // WakeAll is called. Does not query the database. Returns true if the head moved past `position`.
    static bool WaitForLocalCommit(EventStore& store, int64_t position, std::chrono::milliseconds timeout,
                                   const std::atomic<bool>& stop);
    // Wakes every WaitForLocalCommit waiter of `store` (they re-check their stop flags).
    static void WakeAll(EventStore& store);
    // Tells the store's waiters that a unit of work committed events up to `position`.
    static void NotifyAppended(EventStore& store, int64_t position);
    // Outbox commits through `store` (units of work that enqueued messages): a counter, and a wait for it to pass
    // `seen` (or `timeout`, or `stop` with WakeAll).
    static void NotifyOutboxCommit(EventStore& store);
    static uint64_t OutboxCommits(EventStore& store);
    static void WaitForOutboxCommit(EventStore& store, uint64_t seen, std::chrono::milliseconds timeout,
                                    const std::atomic<bool>& stop);
};

// Validates the options, resolves the start position and starts the subscription's thread.
Result<std::unique_ptr<Subscription>> StartSubscription(EventStore& store, SubscriptionOptions options,
                                                        std::function<Status(const RecordedEvent&)> handler);

}  // namespace keel::detail
