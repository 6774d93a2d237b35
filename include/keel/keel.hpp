#pragma once
/// keel: event sourcing and distributed transactions for C++ services. This umbrella header includes every public
/// header; include the single headers instead to keep compile times down.
///
/// Start with docs/aggregates.md (aggregates and the repository) and event_store.hpp (the event store).

#include "keel/aggregate.hpp"
#include "keel/event.hpp"
#include "keel/event_store.hpp"
#include "keel/publisher.hpp"
#include "keel/status.hpp"
#include "keel/subscription.hpp"
#include "keel/uuid.hpp"
