#pragma once
// Helpers for the tests against a RabbitMQ server (rabbitmq_broker_mqtest, rabbit_restart_mqtest).

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include "keel/broker.hpp"

#include "broker/rabbitmq/amqp_conn.hpp"
#include "broker/rabbitmq/rabbit_uri.hpp"
#include "store/registry.hpp"

namespace keel::testing::rabbit {

// The server under test: KEEL_TEST_RABBITMQ, e.g. rabbitmq://keel:keel@127.0.0.1:15673/keel. Empty when unset.
inline std::string ServerUri() {
    const char* uri = std::getenv("KEEL_TEST_RABBITMQ");
    return uri == nullptr ? std::string() : std::string(uri);
}

inline constexpr const char* kHowToStart =
    "KEEL_TEST_RABBITMQ is not set. Start the test server and export its URI:\n"
    "    scripts/services.sh start rabbitmq && eval \"$(scripts/services.sh env)\"";

// The URI the tests open brokers with: the server's, with queues that expire when a test run is long gone, so the
// server does not pile up the queues of old runs.
inline std::string TestUri(std::string_view extra_query = {}) {
    std::string uri = ServerUri();
    uri += uri.find('?') == std::string::npos ? '?' : '&';
    uri += "queue_expires=900000";
    if (!extra_query.empty()) {
        uri += '&';
        uri += extra_query;
    }
    return uri;
}

inline Result<std::unique_ptr<Broker>> OpenTestBroker(std::string_view extra_query = {},
                                                      const BrokerOptions& options = {}) {
    if (ServerUri().empty()) return Status::FailedPrecondition(kHowToStart);
    return OpenBroker(TestUri(extra_query), options);
}

inline detail::rabbit::RabbitConfig ServerConfig() {
    auto parsed = detail::ParseUri(ServerUri());
    EXPECT_TRUE(parsed.ok()) << parsed.status().ToString();
    auto config = detail::rabbit::ParseRabbitUri(*parsed);
    EXPECT_TRUE(config.ok()) << config.status().ToString();
    return config.ok() ? *config : detail::rabbit::RabbitConfig{};
}

// A plain librabbitmq connection (channel 1, no confirms) for looking at the server behind keel's back.
inline std::unique_ptr<detail::rabbit::AmqpConn> RawConnection(bool confirms = false) {
    static const detail::rabbit::RabbitConfig config = ServerConfig();
    auto conn =
        detail::rabbit::AmqpConn::Open(config, detail::rabbit::Clock::now() + std::chrono::seconds(10), confirms);
    EXPECT_TRUE(conn.ok()) << conn.status().ToString();
    return conn.ok() ? std::move(*conn) : nullptr;
}

// Message count of a queue (passive declare), or nullopt when it does not exist.
inline std::optional<uint32_t> QueueMessages(const std::string& queue) {
    auto conn = RawConnection();
    if (conn == nullptr) return std::nullopt;
    conn->SetRpcDeadline(detail::rabbit::Clock::now() + std::chrono::seconds(10));
    auto* ok = amqp_queue_declare(conn->get(), 1, detail::rabbit::Bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    if (ok == nullptr) return std::nullopt;
    return ok->message_count;
}

// A name unique to this test run.
inline std::string UniqueName(std::string_view base) {
    std::random_device rd;
    return std::string(base) + "-" + std::to_string(rd() % 100000000);
}

// --- a private server for the tests that stop, kill and freeze it ------------------------------------------------

// A RabbitMQ node of this build tree alone, run by scripts/services.sh with its own directory, node name and ports
// (16000-23999, chosen from a hash of the build directory so that two build trees do not collide), so that stopping
// it disturbs no other test.
class PrivateServer {
public:
    PrivateServer() {
        uint32_t h = 2166136261u;
        for (char c : std::string_view(KEEL_BINARY_DIR)) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
        base_ = 16000 + static_cast<int>(h % 200) * 40;
        dir_ = std::filesystem::path(KEEL_BINARY_DIR) / "rabbitmq-private";
    }

    // Runs `scripts/services.sh <verb> rabbitmq` for this server; true on success.
    bool Services(std::string_view verb) const {
        const std::string cmd = fmt::format(
            "KEEL_SERVICES_DIR='{}' KEEL_RABBITMQ_PORT={} KEEL_RABBITMQ_DIST_PORT={} KEEL_RABBITMQ_EPMD_PORT={} "
            "KEEL_RABBITMQ_NODE=keel-private-{}@localhost '{}/scripts/services.sh' {} rabbitmq",
            dir_.string(), base_, base_ + 1, base_ + 2, base_, KEEL_SOURCE_DIR, verb);
        return std::system(cmd.c_str()) == 0;
    }

    std::string Uri(std::string_view query = {}) const {
        return fmt::format("rabbitmq://keel:keel@127.0.0.1:{}/keel?queue_expires=900000{}{}", base_,
                           query.empty() ? "" : "&", query);
    }
    int port() const { return base_; }

    // The server's process id (from the pid file services.sh has it write), or 0.
    pid_t Pid() const {
        std::ifstream in(dir_ / "rabbitmq" / "rabbit.pid");
        long pid = 0;
        in >> pid;
        return static_cast<pid_t>(pid);
    }

private:
    int base_;
    std::filesystem::path dir_;
};

}  // namespace keel::testing::rabbit
