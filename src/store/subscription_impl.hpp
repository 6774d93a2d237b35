#pragma once

#include <functional>
#include <memory>

#include "keel/event_store.hpp"
#include "keel/subscription.hpp"

namespace keel::detail {

// Validates the options, resolves the start position and starts the subscription's thread.
Result<std::unique_ptr<Subscription>> StartSubscription(EventStore& store, SubscriptionOptions options,
                                                        std::function<Status(const RecordedEvent&)> handler);

}  // namespace keel::detail
