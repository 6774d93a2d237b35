// Brokers are found by URI scheme, like event stores (src/store/registry.cpp).

#include "store/registry.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "broker/backends.hpp"

namespace keel {
namespace {

using OpenFn = Result<std::unique_ptr<Broker>> (*)(const detail::ParsedUri&, const BrokerOptions&);

struct Entry {
    const char* scheme;
    OpenFn open;
};

const std::vector<Entry>& Brokers() {
    static const std::vector<Entry> brokers = {
#ifdef KEEL_WITH_LOCAL_BROKER
        {"local", &detail::OpenLocalBroker},
#endif
#ifdef KEEL_WITH_RABBITMQ
        {"rabbitmq", &detail::OpenRabbitBroker},
        {"amqp", &detail::OpenRabbitBroker},
#endif
    };
    return brokers;
}

std::vector<std::string> Schemes() {
    std::vector<std::string> out;
    for (const Entry& e : Brokers()) out.emplace_back(e.scheme);
    return out;
}

}  // namespace

// The defaults of the batch calls: one delivery at a time, for brokers that have nothing better.
Result<std::vector<Delivery>> BrokerConsumer::ReceiveBatch(size_t max, std::chrono::milliseconds timeout) {
    std::vector<Delivery> out;
    auto first = Receive(timeout);
    if (!first.ok()) return first.status();
    if (!first->has_value()) return out;
    out.push_back(std::move(**first));
    while (out.size() < std::max<size_t>(max, 1)) {
        auto next = Receive(std::chrono::milliseconds(0));
        if (!next.ok() || !next->has_value()) break;  // an error shows again on the next call
        out.push_back(std::move(**next));
    }
    return out;
}

std::vector<Status> BrokerConsumer::AckBatch(std::span<const Delivery> deliveries) {
    std::vector<Status> out;
    out.reserve(deliveries.size());
    for (const Delivery& d : deliveries) out.push_back(Ack(d));
    return out;
}

Result<std::unique_ptr<Broker>> OpenBroker(std::string_view uri, const BrokerOptions& options) {
    auto parsed = detail::ParseUri(uri);
    if (!parsed.ok()) return parsed.status();
    for (const Entry& e : Brokers()) {
        if (parsed->scheme == e.scheme) return e.open(*parsed, options);
    }
    return Status::InvalidArgument(fmt::format("broker URI '{}': unknown scheme '{}'; known schemes: {}", uri,
                                               parsed->scheme, fmt::join(Schemes(), ", ")));
}

}  // namespace keel
