#pragma once
// The broker conformance suite: the behaviour every keel::Broker must show, written once as value-parameterized
// GoogleTest suites over a BrokerFactory.
//
// A broker joins with one line per suite in its own test file, e.g.
//
//     KEEL_INSTANTIATE_BROKER_CONFORMANCE(Rabbit, RabbitBrokerFactory());
//
// and links the `keel_broker_conformance` object library (include tests/broker/broker_conformance.cmake, which
// defines it once). Two suites:
// - BrokerConformance: what every broker does (publish/consume, groups, per-key order, acks, redelivery when a
//   consumer goes away, nack, dead letters, batches, durability across reconnects, two consumer processes, bad input).
//   How several consumers of one group split the work is a capability the factory declares
//   (BrokerFactory::consumers_share_a_group); the tests check the declared behaviour either way.
// - BrokerQueueConformance: for brokers with per-delivery timers and publish deduplication — redelivery after the
//   visibility timeout while the consumer lives on, Nack with a delay, one stored copy per message id
//   (local:; NATS JetStream has them too). RabbitMQ does not instantiate it.
//
// Every test uses destination and group names unique to the test run (Name()), so brokers on a shared server
// (RabbitMQ) need no cleanup between tests.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

#include <gtest/gtest.h>

#include "keel/broker.hpp"
#include "keel/status.hpp"

namespace keel::testing {

// How the suite reaches one broker.
struct BrokerFactory {
    // Used in test names: letters, digits and '_' only ("local", "rabbitmq").
    std::string name;
    // Opens a broker (a new connection) on the current test's broker: every call reaches the SAME queues, so that
    // close-and-reopen and several connections can be tested. May be called in a forked child process.
    std::function<Result<std::unique_ptr<Broker>>()> open;
    // Optional: prepares a fresh broker for one test (e.g. a temporary directory); called before `open`.
    std::function<void(std::string_view test_name)> setup;
    // Optional: removes what `setup` made.
    std::function<void()> teardown;
    // How long a test waits before concluding that no (further) message will arrive. Default: 300 ms.
    std::chrono::milliseconds quiet{300};
    // Capability: the consumers of one group share its messages (competing consumers, local:). False for a broker
    // that delivers a group to one active consumer at a time and keeps the others as standbys that take over when it
    // goes away (RabbitMQ's single active consumer, which keel uses to keep per-key order): the suite then checks
    // that one consumer got every message and the other none. Default: true.
    bool consumers_share_a_group = true;
};

inline void PrintTo(const BrokerFactory& factory, std::ostream* os) {
    *os << factory.name;
}

struct BrokerFactoryName {
    std::string operator()(const ::testing::TestParamInfo<BrokerFactory>& info) const { return info.param.name; }
};

// A broker opened by URI: `make_uri(dir)` is called on every open with a fresh temporary directory per test.
BrokerFactory MakeUriBrokerFactory(std::string name, std::function<std::string(const std::string& dir)> make_uri);

class BrokerFixture : public ::testing::TestWithParam<BrokerFactory> {
protected:
    void SetUp() override;
    void TearDown() override;

    Broker& broker() { return *broker_; }
    // Opens the test's broker again as a second object (throws keel::StatusError on failure).
    std::unique_ptr<Broker> OpenAnother();
    // Closes broker() and opens it again.
    void Reopen();
    void CloseBroker() { broker_.reset(); }

    // `base` made unique to this test run: "base-<8 hex digits>".
    std::string Name(std::string_view base) const;
    // A message with a fresh id.
    static Message MakeMessage(std::string destination, std::string key, std::string payload, Headers headers = {});
    // Declares and opens a consumer; fails the test (throws StatusError) when either fails.
    std::unique_ptr<BrokerConsumer> MustConsume(Broker& broker, const std::string& destination,
                                                const std::string& group, const ConsumeOptions& options = {});
    // The next delivery within `timeout` (default 10 s); nullopt and a test failure on an error.
    static std::optional<Delivery> ReceiveOne(BrokerConsumer& consumer,
                                              std::chrono::milliseconds timeout = std::chrono::seconds(10));
    // Expects that nothing arrives within the factory's quiet period.
    void ExpectNothing(BrokerConsumer& consumer, std::string_view why);

    std::chrono::milliseconds quiet() const { return GetParam().quiet; }

    std::unique_ptr<Broker> broker_;
    std::string run_tag_;
};

class BrokerConformance : public BrokerFixture {};
class BrokerQueueConformance : public BrokerFixture {};

}  // namespace keel::testing

// Use at namespace scope (outside any namespace), once per broker.
#define KEEL_INSTANTIATE_BROKER_CONFORMANCE(prefix, factory)                                              \
    namespace keel::testing {                                                                             \
    INSTANTIATE_TEST_SUITE_P(prefix, BrokerConformance, ::testing::Values(factory), BrokerFactoryName()); \
    }                                                                                                     \
    static_assert(true, "")

// Use at namespace scope, once per broker with visibility timeouts, delayed nacks and publish deduplication.
#define KEEL_INSTANTIATE_BROKER_QUEUE_CONFORMANCE(prefix, factory)                                             \
    namespace keel::testing {                                                                                  \
    INSTANTIATE_TEST_SUITE_P(prefix, BrokerQueueConformance, ::testing::Values(factory), BrokerFactoryName()); \
    }                                                                                                          \
    static_assert(true, "")
