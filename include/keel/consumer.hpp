#pragma once
/// keel::Consumer: runs a handler for each message of a broker consumer group, exactly once in effect.
///
/// Each delivery is handled in a unit of work on the service's database that also records (consumer name,
/// message id) in the inbox: a duplicate delivery (the broker's or the relay's at-least-once) finds its inbox row,
/// is acknowledged and skipped. The handler's writes, the inbox row and any outbox messages the handler enqueues
/// commit together; the broker is acknowledged after the commit. A crash between commit and ack only causes a
/// redelivery that the inbox skips.
///
/// Batches (`max_batch` > 1): the deliveries the broker has ready (up to `max_batch`, at most one per key in flight,
/// so order per key is kept) are handled in ONE unit of work — each message's inbox mark, then its handler, in
/// delivery order; duplicates skipped — and acknowledged together after its commit. A crash before the commit
/// applies nothing of the batch (all of it is redelivered). When a handler fails (or the commit does), the whole
/// unit of work is rolled back and that batch is handled again one message at a time, as with `max_batch` = 1: the
/// failed message's batch try counts as its first failed attempt, and the others' handlers run again in their own
/// units of work (their first run left no trace). Per-message savepoints would spare that second run, but a
/// unit of work on PostgreSQL already wraps each statement in a savepoint of its own, so a savepoint cannot span
/// statements there.
///
/// A handler that fails is retried with exponential backoff; after `max_attempts` attempts (counting redeliveries)
/// the message goes to the group's dead-letter queue with its last error (`keel dlq list|replay`).
///
/// Thread-safety: a Consumer runs one thread; Stop() and stats() may be called from any thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "keel/broker.hpp"
#include "keel/event_store.hpp"
#include "keel/unit_of_work.hpp"

namespace keel {

struct ConsumerOptions {
    /// The inbox identity: deliveries are deduplicated per name. Required (1–256 bytes, no control characters).
    std::string name;
    /// Attempts (first delivery included) before a message is dead-lettered. Default: 5.
    int max_attempts = 5;
    /// First retry delay; doubles up to max_backoff. Default: 50 ms and 5 s.
    std::chrono::milliseconds initial_backoff{50};
    std::chrono::milliseconds max_backoff{5000};
    /// How long one Receive waits (and so how quickly Stop() is noticed). Default: 200 ms.
    std::chrono::milliseconds receive_timeout{200};
    /// Most deliveries handled in one unit of work (see the top of this header); 1–10,000. More gives throughput
    /// (one commit and one broker acknowledgement per batch instead of per message) but holds the database's write
    /// lock longer on `sqlite:` (the batch's handlers run inside one unit of work). On `rabbitmq:` a batch is also
    /// capped by `consume.prefetch`. Default: 1 (a unit of work per message).
    int max_batch = 1;
    /// Passed to Broker::Consume. Default: ConsumeOptions{}.
    ConsumeOptions consume;
    /// Receives the domain events handlers Raise(); may be null. Default: null.
    const Mediator* mediator = nullptr;
};

struct ConsumerStats {
    int64_t handled = 0;        ///< messages whose effect committed
    int64_t duplicates = 0;     ///< deliveries skipped because the inbox had them
    int64_t retries = 0;        ///< failed attempts that were retried
    int64_t dead_lettered = 0;  ///< messages sent to the dead-letter queue
    std::string last_error;
};

/// Handles one message inside the unit of work (whose inbox row is already written). Return OK to commit; any
/// error rolls the unit of work back and counts as a failed attempt.
using MessageHandler = std::function<Status(UnitOfWork&, const Delivery&)>;

class Consumer {
public:
    /// Starts consuming `group` of `destination` (declared here if missing). `store` and `broker` must outlive it.
    /// Errors: kInvalidArgument for bad options; kNotSupported for a store without transactions; the broker's
    /// errors from Declare/Consume.
    static Result<std::unique_ptr<Consumer>> Start(EventStore& store, Broker& broker, std::string destination,
                                                   std::string group, MessageHandler handler, ConsumerOptions options);

    virtual ~Consumer() = default;
    /// Stops after the deliveries in hand (unfinished ones are redelivered later). Idempotent.
    virtual void Stop() = 0;
    virtual ConsumerStats stats() const = 0;
};

/// Handles one delivery the way a Consumer does (inbox, unit of work, retries in place with backoff, dead letter,
/// ack) on the calling thread; returns what happened to it. For tests and custom loops. Errors: the broker's or the
/// database's when they fail (the delivery is then redelivered later: nothing is lost, the inbox prevents a second
/// effect).
enum class DeliveryOutcome { kHandled, kDuplicate, kDeadLettered };
Result<DeliveryOutcome> HandleDelivery(EventStore& store, BrokerConsumer& consumer, const Delivery& delivery,
                                       const MessageHandler& handler, const ConsumerOptions& options);

/// Handles deliveries as one batch the way a Consumer with `max_batch` > 1 does (one unit of work, acknowledged
/// together; one message at a time after a failure) on the calling thread, whatever `options.max_batch` says; returns
/// one outcome per delivery, in order. Pass at most one delivery per key (as ReceiveBatch returns them) or keep them
/// in key order. Errors: kInvalidArgument for bad options; otherwise as HandleDelivery — the first error is returned,
/// what was done before it stays done, and the rest is redelivered later.
Result<std::vector<DeliveryOutcome>> HandleDeliveries(EventStore& store, BrokerConsumer& consumer,
                                                      std::span<const Delivery> deliveries,
                                                      const MessageHandler& handler, const ConsumerOptions& options);

}  // namespace keel
