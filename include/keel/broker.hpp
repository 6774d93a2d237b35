#pragma once
/// keel::Broker: a message broker behind a narrow interface, opened by URI.
///
/// - `local:///path/to/queue.db` — the embedded default: a durable queue in a SQLite database (consumer groups,
///   acks, redelivery after a visibility timeout, a dead-letter queue). No server.
/// - `rabbitmq://user:password@host:port/vhost` — RabbitMQ through librabbitmq: durable exchanges and queues,
///   publisher confirms, manual acks, a dead-letter exchange, reconnect with backoff.
///
/// Model: a *destination* is a named stream of messages (a RabbitMQ topic exchange, a local table partition). A
/// *consumer group* (named by the same rule as destinations) subscribes to a destination: every group receives every message published to the destination
/// after the group was declared; within a group, each message goes to one consumer. Each group has a dead-letter
/// queue. Messages carry an ordering *key* (usually the event stream id): a group delivers the messages of one key in
/// publish order and never has two of them in flight at once.
///
/// Guarantees: PublishReliable returns OK only after the broker has persisted the message (at least once: a publish
/// whose confirmation was lost may be stored twice, so consumers deduplicate by message_id — keel's Consumer does so
/// with its inbox). A delivery not acknowledged within the visibility timeout, or whose consumer disconnects, is
/// delivered again with attempt + 1.
///
/// Thread-safety: a Broker is thread-safe. A BrokerConsumer is used by one thread at a time.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "keel/status.hpp"
#include "keel/uuid.hpp"

namespace keel {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Message {
    /// 1–200 bytes of [A-Za-z0-9._-].
    std::string destination;
    /// Ordering key: messages of one key are delivered in publish order within a group. May be empty (no order).
    std::string key;
    /// Unique per message; consumers deduplicate by it. Must not be nil.
    Uuid message_id;
    std::string payload;
    Headers headers;
};

struct Delivery {
    Message message;
    /// 1 on the first delivery, then 2, 3, … on redeliveries. Brokers that prefetch may count a message that was
    /// prefetched but never handed out as an attempt.
    int attempt = 1;
    /// Identifies this delivery for Ack/Nack/DeadLetter; opaque.
    uint64_t tag = 0;
};

/// A dead-lettered message, with why it was dead-lettered.
struct DeadLetter {
    Message message;
    std::string error;
    int attempts = 0;
    int64_t dead_lettered_at = 0;  ///< µs since the Unix epoch
    /// Identifies the dead letter for Replay; opaque.
    std::string id;
};

struct ConsumeOptions {
    /// How long a delivery stays invisible to other consumers of the group before it is redelivered (local:).
    /// RabbitMQ redelivers when the consumer's channel closes instead. Default: 30 s.
    std::chrono::milliseconds visibility_timeout{30'000};
    /// Most unacknowledged deliveries one consumer holds at once (RabbitMQ prefetch; local: ignores it).
    /// Default: 16.
    int prefetch = 16;
};

class BrokerConsumer {
public:
    virtual ~BrokerConsumer() = default;

    /// The next delivery, waiting up to `timeout`; nullopt when none arrived in time.
    /// Errors: kUnavailable when the broker is unreachable (the consumer reconnects on the next call).
    virtual Result<std::optional<Delivery>> Receive(std::chrono::milliseconds timeout) = 0;

    /// Acknowledges: the message is done for this group. kUnavailable if the broker cannot be told (the message
    /// will then be redelivered: at least once). kFailedPrecondition when this consumer no longer holds the delivery
    /// (its visibility timeout passed and it was handed out again): nothing changes. The same holds for Nack and
    /// DeadLetter.
    virtual Status Ack(const Delivery& delivery) = 0;

    /// Gives the message back for redelivery (attempt + 1), after at least `delay` on brokers that support it.
    virtual Status Nack(const Delivery& delivery, std::chrono::milliseconds delay = {}) = 0;

    /// Moves the message to the group's dead-letter queue with `error`, and acknowledges it.
    virtual Status DeadLetter(const Delivery& delivery, std::string_view error) = 0;

    /// Up to `max` deliveries: waits up to `timeout` for the first, then adds only those ready at once (never two of
    /// one key, as Receive). Empty when none arrived in time; `max` of 0 is treated as 1. Errors as Receive; an error
    /// after the first delivery ends the batch early instead (the next call reports it). The default calls Receive;
    /// `local:` claims the whole batch in one transaction.
    virtual Result<std::vector<Delivery>> ReceiveBatch(size_t max, std::chrono::milliseconds timeout);

    /// Acknowledges several deliveries; returns one Status per delivery, in order, each as Ack's. The default calls
    /// Ack for each; `local:` settles them all in one transaction.
    virtual std::vector<Status> AckBatch(std::span<const Delivery> deliveries);
};

class Broker {
public:
    virtual ~Broker() = default;

    /// Creates the destination and the group's queue (and dead-letter queue) if missing. Idempotent.
    /// A group receives the messages published after it was first declared.
    virtual Status Declare(std::string_view destination, std::string_view group) = 0;

    /// Publishes one message and waits until the broker confirms it is persisted, or `timeout` passes.
    /// Errors: kInvalidArgument (bad destination, nil id), kUnavailable (broker down; nothing is known to be stored —
    /// retrying is safe because consumers deduplicate by message_id), kDeadlineExceeded.
    virtual Status PublishReliable(const Message& message, std::chrono::milliseconds timeout) = 0;

    /// Publishes many messages with up to `window` unconfirmed at once and waits for every confirmation.
    /// Returns one Status per message, in order. Messages of one key are published in order; once one of a key
    /// fails, the later ones of that key are not published (kFailedPrecondition). A `window` of 0 is
    /// kInvalidArgument for every message.
    virtual std::vector<Status> PublishBatch(std::span<const Message> messages, size_t window,
                                             std::chrono::milliseconds timeout) = 0;

    /// A consumer of the group (Declare it first). Errors: kNotFound for an undeclared group, kUnavailable.
    virtual Result<std::unique_ptr<BrokerConsumer>> Consume(std::string_view destination, std::string_view group,
                                                            const ConsumeOptions& options = {}) = 0;

    /// The group's dead letters, oldest first, at most `limit` (0: all).
    virtual Result<std::vector<DeadLetter>> ListDeadLetters(std::string_view destination, std::string_view group,
                                                            size_t limit = 0) = 0;

    /// Puts dead letters back into the group's queue (all of them when `ids` is empty); returns how many.
    virtual Result<size_t> ReplayDeadLetters(std::string_view destination, std::string_view group,
                                             std::span<const std::string> ids = {}) = 0;
};

struct BrokerOptions {
    /// Reconnect backoff bounds (rabbitmq:). Default: 100 ms doubling to 5 s.
    std::chrono::milliseconds reconnect_min{100};
    std::chrono::milliseconds reconnect_max{5000};
};

/// Opens a broker by URI (see the top of this header). Errors: kInvalidArgument for an unknown scheme or a malformed
/// URI; kUnavailable when the broker cannot be reached (rabbitmq:) or the file cannot be opened (local:).
Result<std::unique_ptr<Broker>> OpenBroker(std::string_view uri, const BrokerOptions& options = {});

}  // namespace keel
