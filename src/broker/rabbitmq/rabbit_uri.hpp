#pragma once
// The `rabbitmq://` / `amqp://` broker URI and the RabbitMQ names keel derives from destinations and groups: parsed
// and computed here, without a server, so that they can be unit-tested. docs/brokers.md describes both.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "keel/status.hpp"

#include "store/registry.hpp"

namespace keel::detail::rabbit {

enum class QueueType { kQuorum, kClassic };

// Where and how to connect; what `rabbitmq://user:password@host:port/vhost?…` says.
struct RabbitConfig {
    std::string user = "guest";
    std::string password = "guest";
    std::string host = "localhost";  // a name, an IPv4 address or an IPv6 address without brackets
    uint16_t port = 5672;
    std::string vhost = "/";
    // ?heartbeat=SECONDS: the AMQP heartbeat asked for (0: none). Default: 60.
    int heartbeat_s = 60;
    // ?connect_timeout=MS: TCP connect plus the AMQP login. Default: 5000.
    std::chrono::milliseconds connect_timeout{5000};
    // ?timeout=MS: every other socket operation (declares, acks, basic.get …) that has no deadline of its own.
    // Default: 10000.
    std::chrono::milliseconds io_timeout{10000};
    // ?queue_type=quorum|classic: the type of the queues Declare creates. Default: quorum.
    QueueType queue_type = QueueType::kQuorum;
    // ?queue_expires=MS: RabbitMQ deletes a group's queues after they went unused (no consumer, no Declare, no
    // dead-letter browse) for this long, with their messages (x-expires). For temporary groups and tests only.
    // Default: 0 (never).
    int64_t queue_expires_ms = 0;

    // "host:port vhost '…'" for messages. Never the password.
    std::string Where() const;
};

// Parses `uri` (scheme rabbitmq or amqp). kInvalidArgument naming the problem; messages never contain the password.
Result<RabbitConfig> ParseRabbitUri(const ParsedUri& uri);

// Destination and group names: 1–200 bytes of [A-Za-z0-9._-]; kInvalidArgument naming `what` otherwise.
Status CheckName(std::string_view what, std::string_view name);

// The RabbitMQ objects of one consumer group.
struct GroupNames {
    std::string exchange;  // the destination's durable topic exchange: `<destination>`
    std::string queue;     // the group's durable queue: `<destination>.<group>`
    std::string dlx;       // its dead-letter exchange (fanout): `<destination>.<group>.dlx`
    std::string dlq;       // its dead-letter queue: `<destination>.<group>.dlq`
};

// Names longer than RabbitMQ's 255-byte limit keep their first bytes and end in '~' and 16 hex digits of a hash of
// the full name, so they stay unique and stable.
GroupNames NamesFor(std::string_view destination, std::string_view group);

}  // namespace keel::detail::rabbit
