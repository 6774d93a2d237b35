// Confirmed-publish throughput of the rabbitmq: broker: PublishBatch with windows 1, 10 and 100, next to a raw
// librabbitmq loop doing the same (persistent messages, publisher confirms, the same window) with nothing of keel's.
//
//   rabbit_publish_bench [URI] [MESSAGES] [PAYLOAD_BYTES]
//
// URI defaults to $KEEL_TEST_RABBITMQ (scripts/services.sh env). Messages go to a fresh destination with one group
// (a quorum queue, or a classic one with ?queue_type=classic), deleted at the end.

#include <chrono>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "keel/broker.hpp"

#include "broker/rabbitmq/amqp_conn.hpp"
#include "broker/rabbitmq/rabbit_message.hpp"
#include "broker/rabbitmq/rabbit_uri.hpp"
#include "store/registry.hpp"

namespace {

using keel::detail::rabbit::AmqpConn;
using keel::detail::rabbit::Bytes;
using keel::detail::rabbit::Clock;
using keel::detail::rabbit::Remaining;

double Seconds(Clock::duration d) {
    return std::chrono::duration<double>(d).count();
}

// The raw loop: basic.publish with up to `window` unconfirmed, counting basic.acks.
double RawRate(const keel::detail::rabbit::RabbitConfig& config, const std::string& exchange, int n, size_t window,
               const std::string& payload) {
    auto conn = AmqpConn::Open(config, Clock::now() + std::chrono::seconds(10), true);
    if (!conn.ok()) {
        fmt::print(stderr, "raw: {}\n", conn.status().ToString());
        std::exit(1);
    }
    amqp_connection_state_t c = (*conn)->get();
    const auto t0 = Clock::now();
    uint64_t sent = 0, confirmed = 0;
    std::vector<std::string> ids;
    while (confirmed < static_cast<uint64_t>(n)) {
        while (sent < static_cast<uint64_t>(n) && sent - confirmed < window) {
            const std::string id = keel::Uuid::Generate().ToString();
            amqp_basic_properties_t props{};
            props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
            props.delivery_mode = 2;
            props.message_id = Bytes(id);
            if (amqp_basic_publish(c, 1, Bytes(exchange), amqp_cstring_bytes("k"), 0, 0, &props, Bytes(payload)) !=
                AMQP_STATUS_OK) {
                fmt::print(stderr, "raw: publish failed\n");
                std::exit(1);
            }
            ++sent;
        }
        amqp_maybe_release_buffers(c);
        amqp_frame_t frame{};
        timeval tv = Remaining(Clock::now() + std::chrono::seconds(30));
        if (amqp_simple_wait_frame_noblock(c, &frame, &tv) != AMQP_STATUS_OK) {
            fmt::print(stderr, "raw: no confirm\n");
            std::exit(1);
        }
        if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            const auto* ack = static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
            confirmed = ack->multiple ? ack->delivery_tag : confirmed + 1;
        }
    }
    return n / Seconds(Clock::now() - t0);
}

double KeelRate(keel::Broker& broker, const std::string& dest, int n, size_t window, const std::string& payload) {
    std::vector<keel::Message> messages(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
        keel::Message& m = messages[static_cast<size_t>(i)];
        m.destination = dest;
        m.key = "key-" + std::to_string(i % 100);
        m.message_id = keel::Uuid::Generate();
        m.payload = payload;
    }
    const auto t0 = Clock::now();
    const std::vector<keel::Status> st = broker.PublishBatch(messages, window, std::chrono::minutes(5));
    const double rate = n / Seconds(Clock::now() - t0);
    for (const keel::Status& s : st) {
        if (!s.ok()) {
            fmt::print(stderr, "keel: {}\n", s.ToString());
            std::exit(1);
        }
    }
    return rate;
}

}  // namespace

int main(int argc, char** argv) {
    const char* env = std::getenv("KEEL_TEST_RABBITMQ");
    const std::string uri = argc > 1 ? argv[1] : (env != nullptr ? env : "");
    const int n = argc > 2 ? std::atoi(argv[2]) : 20000;
    const size_t payload_bytes = argc > 3 ? static_cast<size_t>(std::atoll(argv[3])) : 256;
    if (uri.empty() || n <= 0) {
        fmt::print(stderr, "usage: rabbit_publish_bench [URI] [MESSAGES] [PAYLOAD_BYTES] (URI: $KEEL_TEST_RABBITMQ)\n");
        return 2;
    }
    auto parsed = keel::detail::ParseUri(uri);
    auto config = parsed.ok() ? keel::detail::rabbit::ParseRabbitUri(*parsed)
                              : keel::Result<keel::detail::rabbit::RabbitConfig>(parsed.status());
    if (!config.ok()) {
        fmt::print(stderr, "{}\n", config.status().ToString());
        return 2;
    }
    auto broker = keel::OpenBroker(uri);
    if (!broker.ok()) {
        fmt::print(stderr, "{}\n", broker.status().ToString());
        return 1;
    }
    const std::string dest = fmt::format("bench-{}", keel::Uuid::Generate().ToString().substr(0, 8));
    if (auto s = (*broker)->Declare(dest, "g"); !s.ok()) {
        fmt::print(stderr, "{}\n", s.ToString());
        return 1;
    }
    const std::string payload(payload_bytes, 'p');
    fmt::print("confirmed persistent publishes to {} ({} queue), {} messages of {} bytes\n", config->Where(),
               config->queue_type == keel::detail::rabbit::QueueType::kQuorum ? "quorum" : "classic", n, payload_bytes);
    fmt::print("{:>8} {:>16} {:>16} {:>8}\n", "window", "keel msgs/s", "raw msgs/s", "ratio");
    for (size_t window : {size_t{1}, size_t{10}, size_t{100}}) {
        const int count = window == 1 ? std::max(1, n / 5) : n;
        const double raw = RawRate(*config, dest, count, window, payload);
        const double keel_rate = KeelRate(**broker, dest, count, window, payload);
        fmt::print("{:>8} {:>16.0f} {:>16.0f} {:>8.2f}\n", window, keel_rate, raw, keel_rate / raw);
    }
    // Remove what the run made.
    auto conn = AmqpConn::Open(*config, Clock::now() + std::chrono::seconds(10), false);
    if (conn.ok()) {
        for (const char* q : {".g", ".g.dlq"}) {
            (*conn)->SetRpcDeadline(Clock::now() + std::chrono::seconds(30));
            amqp_queue_delete((*conn)->get(), 1, Bytes(dest + q), 0, 0);
        }
        for (const char* e : {"", ".g.dlx"}) {
            (*conn)->SetRpcDeadline(Clock::now() + std::chrono::seconds(30));
            amqp_exchange_delete((*conn)->get(), 1, Bytes(dest + e), 0);
        }
    }
    return 0;
}
