#pragma once
// The Open functions of the broker backends (one folder each); registry.cpp maps URI schemes to them.

#include <memory>

#include "keel/broker.hpp"
#include "store/registry.hpp"

namespace keel::detail {

// local:///path/to/queue.db — src/broker/local/.
Result<std::unique_ptr<Broker>> OpenLocalBroker(const ParsedUri& uri, const BrokerOptions& options);
// rabbitmq://user:password@host:port/vhost — src/broker/rabbitmq/.
Result<std::unique_ptr<Broker>> OpenRabbitBroker(const ParsedUri& uri, const BrokerOptions& options);

}  // namespace keel::detail
