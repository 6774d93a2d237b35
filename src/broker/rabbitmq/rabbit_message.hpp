#pragma once
// keel messages as AMQP messages: the properties and headers written on publish and read back on delivery.
// docs/brokers.md ("rabbitmq:") lists the headers.
//
//   message_id       the keel message id (canonical UUID text)
//   delivery_mode    2 (persistent)
//   timestamp        publish time, Unix seconds
//   routing key      the ordering key (empty when it is longer than 255 bytes; the header below always has it)
//   keel-key         the ordering key (long string)
//   keel-headers     the message's headers: an array of [name, value] arrays of long strings, in order (names
//                    may repeat)
// Dead letters also carry keel-error (long string), keel-attempts (long), keel-dead-lettered-at (long, µs since
// the Unix epoch) and keel-dead-letter-id (a UUID naming this dead letter for Replay).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <amqp.h>
#include <amqp_framing.h>

#include "keel/broker.hpp"

namespace keel::detail::rabbit {

inline constexpr std::string_view kKeyHeader = "keel-key";
inline constexpr std::string_view kHeadersHeader = "keel-headers";
inline constexpr std::string_view kErrorHeader = "keel-error";
inline constexpr std::string_view kAttemptsHeader = "keel-attempts";
inline constexpr std::string_view kDeadLetteredAtHeader = "keel-dead-lettered-at";
inline constexpr std::string_view kDeadLetterIdHeader = "keel-dead-letter-id";

amqp_bytes_t Bytes(std::string_view s);
std::string_view View(amqp_bytes_t b);

struct DeadLetterInfo {
    std::string error;
    int attempts = 0;
    int64_t dead_lettered_at = 0;  // µs since the Unix epoch
    std::string id;
};

// The AMQP properties of one outgoing message. They point into this object and into `message`, which must outlive
// it; pass props() to amqp_basic_publish.
class OutgoingProps {
public:
    explicit OutgoingProps(const Message& message, const DeadLetterInfo* dead_letter = nullptr);
    OutgoingProps(const OutgoingProps&) = delete;
    OutgoingProps& operator=(const OutgoingProps&) = delete;

    const amqp_basic_properties_t* props() const { return &props_; }

private:
    std::string message_id_;
    std::string error_;
    std::string dead_letter_id_;
    std::vector<amqp_field_value_t> pair_items_;  // 2 per header: name, value
    std::vector<amqp_field_value_t> pairs_;       // 1 array per header
    std::vector<amqp_table_entry_t> entries_;
    amqp_basic_properties_t props_{};
};

// The routing key a message is published with.
std::string_view RoutingKeyFor(const Message& message);

// A message read back from AMQP properties and body. `destination` is left empty (the caller knows it).
struct Decoded {
    Message message;
    // From x-delivery-count (quorum queues: how often it went back to the queue before) or the redelivered flag.
    int attempt = 1;
    // True when `attempt` came from x-delivery-count (exact), false when from the redelivered flag (1 or 2).
    bool counted = false;
    // Present when the message carries keel-error (a dead letter written by keel).
    std::optional<DeadLetterInfo> dead_letter;
};

// kCorruption when the message id is missing or not a UUID, or keel-headers is malformed: such a message was not
// published by keel.
Result<Decoded> DecodeMessage(const amqp_basic_properties_t& props, amqp_bytes_t body, amqp_bytes_t routing_key,
                              bool redelivered);

}  // namespace keel::detail::rabbit
