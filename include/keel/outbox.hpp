#pragma once
/// keel::Relay: moves the transactional outbox to a broker. Units of work write outbox rows (UnitOfWork::Enqueue) in
/// the same transaction as the service's data; the relay claims unpublished rows in outbox order, publishes them with
/// confirmed publishes (a window of outstanding confirms), and marks them published only after the broker confirmed.
///
/// Guarantees: at least once — a relay killed between publish and mark publishes those rows again after restart, so
/// consumers see a duplicate delivery (and deduplicate by message_id: keel's Consumer does, with its inbox). Order per
/// key: rows of one key are published in outbox order; when a publish fails, nothing after it is marked, so the
/// failed row and everything after it are published again, in order. Several relays on one database do not publish
/// concurrently: the active relay holds a lease that the others wait for (they take over when it expires).
///
/// Published rows are kept for `retention` so that a broker that lost data can be refilled (Republish).
///
/// Thread-safety: a Relay runs its own thread; its methods may be called from any thread. The free functions are
/// thread-safe.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "keel/broker.hpp"
#include "keel/event_store.hpp"
#include "keel/status.hpp"

namespace keel {

struct RelayOptions {
    /// Identifies this relay in the lease. Default: empty, which uses "<hostname>-<pid>-<random>".
    std::string owner;
    /// How long the lease lasts without renewal; another relay takes over after it. Default: 10 s.
    std::chrono::milliseconds lease{10'000};
    /// Rows claimed and published per round. Default: 500.
    size_t batch = 500;
    /// Unconfirmed publishes in flight. Default: 100.
    size_t window = 100;
    /// Time a publish round may take before it counts as failed; must be shorter than `lease`. Default: 5 s.
    std::chrono::milliseconds publish_timeout{5'000};
    /// How often an idle relay looks for rows committed by other processes (commits through the same EventStore
    /// wake it at once). Default: 200 ms.
    std::chrono::milliseconds poll_interval{200};
    /// First delay after a failed publish; doubles up to 5 s. Default: 100 ms.
    std::chrono::milliseconds retry_backoff{100};
    /// Published rows older than this are deleted. Default: 7 days.
    std::chrono::hours retention{24 * 7};
};

struct RelayStats {
    int64_t published = 0;        ///< messages this relay published and marked
    int64_t rounds = 0;           ///< publish rounds
    int64_t failures = 0;         ///< failed publish rounds
    bool leader = false;          ///< holds the lease now
    std::string last_error;       ///< the last failure, if any
};

/// The outbox as a whole.
struct OutboxStats {
    int64_t pending = 0;           ///< rows not yet published
    int64_t published = 0;         ///< published rows still kept
    int64_t oldest_pending_at = 0;  ///< created_at of the oldest pending row (µs), 0 if none
    int64_t last_position = 0;     ///< the highest outbox position
};

class Relay {
public:
    /// Starts a relay thread on `store`'s outbox publishing to `broker`; both must outlive the relay.
    /// Errors: kNotSupported when the store has no outbox (memory:); kInvalidArgument for bad options.
    static Result<std::unique_ptr<Relay>> Start(EventStore& store, Broker& broker, RelayOptions options = {});

    virtual ~Relay() = default;

    /// Stops the thread after the round in hand and releases the lease. Idempotent.
    virtual void Stop() = 0;

    /// Blocks until every row committed before the call is published (or `timeout` passes); OK when drained.
    virtual Status Drain(std::chrono::milliseconds timeout) = 0;

    virtual RelayStats stats() const = 0;
};

/// Runs one relay round in the calling thread (claim, publish, mark): returns how many rows were published.
/// For `keel relay --once` and tests. Errors: kFailedPrecondition when another relay holds the lease; the broker's
/// error when a publish failed (rows up to it are marked).
Result<int64_t> RelayOnce(EventStore& store, Broker& broker, const RelayOptions& options = {});

/// Marks every row at or after outbox position `from` unpublished, so the relay publishes them again (refill a
/// broker that lost data). Returns how many rows. Rows already purged by retention cannot come back.
Result<int64_t> RepublishOutbox(EventStore& store, int64_t from);

Result<OutboxStats> GetOutboxStats(EventStore& store);

}  // namespace keel
