// Brokers are found by URI scheme, like event stores (src/store/registry.cpp).

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "broker/backends.hpp"
#include "store/registry.hpp"

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
