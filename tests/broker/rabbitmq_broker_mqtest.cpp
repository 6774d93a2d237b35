// The rabbitmq: broker against a real RabbitMQ server: the broker conformance suite, plus what is RabbitMQ's own
// (the objects Declare makes, the single active consumer of a group, keys held back behind an unsettled delivery,
// dead letters in the dead-letter queue, connection errors).
//
// Needs KEEL_TEST_RABBITMQ (scripts/services.sh start rabbitmq; eval "$(scripts/services.sh env)"); every test fails
// without it. The tests that stop, kill or freeze the server are in src/broker/rabbitmq/rabbit_restart_mqtest.cpp.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "keel/broker.hpp"

#include "broker/broker_conformance.hpp"
#include "broker/rabbitmq/rabbit_test_support.hpp"

namespace {

using namespace std::chrono_literals;
using keel::Broker;
using keel::BrokerConsumer;
using keel::ConsumeOptions;
using keel::Delivery;
using keel::Message;
using keel::Status;
using keel::StatusCode;
using keel::Uuid;
using keel::detail::rabbit::Bytes;
using keel::detail::rabbit::View;
namespace rt = keel::testing::rabbit;

keel::testing::BrokerFactory RabbitFactory() {
    keel::testing::BrokerFactory factory;
    factory.name = "rabbitmq";
    factory.open = [] { return rt::OpenTestBroker(); };
    factory.quiet = 500ms;
    // Group queues have x-single-active-consumer (per-key order across consumers): a group's second consumer is a
    // standby (OneConsumerOfAGroupIsActiveAtATime below shows the failover on its own).
    factory.consumers_share_a_group = false;
    return factory;
}

}  // namespace

KEEL_INSTANTIATE_BROKER_CONFORMANCE(RabbitMQ, RabbitFactory());
// RabbitMQ has no per-delivery timers, delayed nacks or publish deduplication (docs/brokers.md).
namespace keel::testing {
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(BrokerQueueConformance);
}

namespace {

#define ASSERT_OK(expr)                                         \
    do {                                                        \
        const ::keel::Status s_ = (expr);                       \
        ASSERT_TRUE(s_.ok()) << #expr << ": " << s_.ToString(); \
    } while (0)

class RabbitTest : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_FALSE(rt::ServerUri().empty()) << rt::kHowToStart;
        auto b = rt::OpenTestBroker();
        ASSERT_TRUE(b.ok()) << "RabbitMQ is unreachable at KEEL_TEST_RABBITMQ=" << rt::ServerUri() << ": "
                            << b.status().ToString() << "\n(start it: scripts/services.sh start rabbitmq)";
        broker_ = std::move(*b);
    }

    static Message Make(const std::string& dest, std::string key, std::string payload) {
        Message m;
        m.destination = dest;
        m.key = std::move(key);
        m.message_id = Uuid::Generate();
        m.payload = std::move(payload);
        return m;
    }

    std::unique_ptr<BrokerConsumer> Consume(const std::string& dest, const std::string& group,
                                            const ConsumeOptions& options = {}) {
        EXPECT_TRUE(broker_->Declare(dest, group).ok());
        auto c = broker_->Consume(dest, group, options);
        EXPECT_TRUE(c.ok()) << c.status().ToString();
        return c.ok() ? std::move(*c) : nullptr;
    }

    static std::optional<Delivery> Next(BrokerConsumer& c, std::chrono::milliseconds timeout = 10s) {
        auto r = c.Receive(timeout);
        EXPECT_TRUE(r.ok()) << r.status().ToString();
        return r.ok() ? *r : std::nullopt;
    }

    std::unique_ptr<Broker> broker_;
};

TEST_F(RabbitTest, OpenErrorsNameHostAndPortOnOneLine) {
    auto bad = keel::OpenBroker("rabbitmq://keel:keel@127.0.0.1:notaport/keel");
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument) << bad.status().ToString();

    // Port 1 on the loopback: nothing listens there.
    auto refused = keel::OpenBroker("rabbitmq://keel:keel@127.0.0.1:1/keel?connect_timeout=2000");
    ASSERT_EQ(refused.status().code(), StatusCode::kUnavailable) << refused.status().ToString();
    EXPECT_THAT(refused.status().message(), ::testing::HasSubstr("127.0.0.1:1"));
    EXPECT_EQ(refused.status().message().find('\n'), std::string::npos);

    const auto config = rt::ServerConfig();
    const std::string where = config.host + ":" + std::to_string(config.port);
    auto wrong = keel::OpenBroker(fmt::format("rabbitmq://{}:not-the-password@{}/{}", config.user, where,
                                              config.vhost == "/" ? "%2F" : config.vhost));
    ASSERT_EQ(wrong.status().code(), StatusCode::kUnavailable) << wrong.status().ToString();
    EXPECT_THAT(wrong.status().message(), ::testing::HasSubstr(where));
    EXPECT_THAT(wrong.status().message(), ::testing::HasSubstr("ACCESS_REFUSED"));
    EXPECT_EQ(wrong.status().message().find("not-the-password"), std::string::npos);
    EXPECT_EQ(wrong.status().message().find('\n'), std::string::npos);

    auto no_vhost = keel::OpenBroker(
        fmt::format("rabbitmq://{}:{}@{}/no-such-vhost-{}", config.user, config.password, where, rt::UniqueName("v")));
    ASSERT_EQ(no_vhost.status().code(), StatusCode::kUnavailable) << no_vhost.status().ToString();
    EXPECT_THAT(no_vhost.status().message(), ::testing::HasSubstr(where));
    EXPECT_THAT(no_vhost.status().message(), ::testing::HasSubstr("no-such-vhost"));
}

TEST_F(RabbitTest, DeclareMakesDurableExchangeQueueAndDeadLetterQueue) {
    const std::string dest = rt::UniqueName("orders"), group = "billing";
    ASSERT_OK(broker_->Declare(dest, group));
    EXPECT_EQ(rt::QueueMessages(dest + "." + group), 0u);
    EXPECT_EQ(rt::QueueMessages(dest + "." + group + ".dlq"), 0u);
    auto conn = rt::RawConnection();
    ASSERT_NE(conn, nullptr);
    // A passive declare of each exchange, and a redeclare that contradicts one: durable topic exchange.
    for (const std::string& exchange : {dest, dest + "." + group + ".dlx"}) {
        conn->SetRpcDeadline(keel::detail::rabbit::Clock::now() + 10s);
        amqp_exchange_declare(conn->get(), 1, Bytes(exchange), amqp_cstring_bytes("topic"), 1, 0, 0, 0,
                              amqp_empty_table);
        ASSERT_OK(conn->RpcStatus("passive declare of " + exchange));
    }
    conn->SetRpcDeadline(keel::detail::rabbit::Clock::now() + 10s);
    amqp_exchange_declare(conn->get(), 1, Bytes(dest), amqp_cstring_bytes("topic"), 0, 0, 0, 0, amqp_empty_table);
    EXPECT_EQ(conn->RpcStatus("non-durable redeclare").code(), StatusCode::kFailedPrecondition)
        << "the destination's exchange must be durable";

    // A message published through keel sits in the group's queue, persistent and with its id.
    const Message m = Make(dest, "order-1", "payload");
    ASSERT_OK(broker_->PublishReliable(m, 10s));
    EXPECT_EQ(rt::QueueMessages(dest + "." + group), 1u);
    // (basic.get does not work on a quorum queue with a single active consumer: consume it raw.)
    conn = rt::RawConnection();
    ASSERT_NE(conn, nullptr);
    conn->SetRpcDeadline(keel::detail::rabbit::Clock::now() + 10s);
    amqp_basic_consume(conn->get(), 1, Bytes(dest + "." + group), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    ASSERT_OK(conn->RpcStatus("basic.consume"));
    amqp_envelope_t env{};
    timeval tv{10, 0};
    ASSERT_OK(conn->RpcStatus(amqp_consume_message(conn->get(), &env, &tv, 0), "consume"));
    EXPECT_EQ(View(env.routing_key), "order-1");
    EXPECT_EQ(View(env.exchange), dest);
    EXPECT_EQ(env.message.properties.delivery_mode, 2) << "messages must be persistent";
    EXPECT_EQ(View(env.message.properties.message_id), m.message_id.ToString());
    EXPECT_EQ(View(env.message.body), "payload");
    amqp_destroy_envelope(&env);
    // conn closes without acking: the message goes back to the queue.
}

TEST_F(RabbitTest, DeclareRefusesAQueueMadeWithOtherArguments) {
    const std::string dest = rt::UniqueName("orders");
    auto conn = rt::RawConnection();
    ASSERT_NE(conn, nullptr);
    conn->SetRpcDeadline(keel::detail::rabbit::Clock::now() + 10s);
    // A classic queue of that name without keel's arguments (x-queue-type, x-dead-letter-exchange …).
    amqp_table_entry_t arg{};
    arg.key = amqp_cstring_bytes("x-max-length");
    arg.value.kind = AMQP_FIELD_KIND_I64;
    arg.value.value.i64 = 5;
    amqp_table_t args{1, &arg};
    amqp_queue_declare(conn->get(), 1, Bytes(dest + ".g"), 0, 1, 0, 0, args);
    ASSERT_OK(conn->RpcStatus("declare"));
    const Status s = broker_->Declare(dest, "g");
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
    EXPECT_THAT(s.message(), ::testing::HasSubstr(dest + ".g"));
    amqp_queue_delete(conn->get(), 1, Bytes(dest + ".g"), 0, 0);
}

TEST_F(RabbitTest, OneConsumerOfAGroupIsActiveAtATime) {
    const std::string dest = rt::UniqueName("orders"), group = "g";
    auto first = Consume(dest, group);
    auto second = Consume(dest, group);
    ASSERT_NE(first, nullptr);
    ASSERT_NE(second, nullptr);
    for (int i = 0; i < 4; ++i) ASSERT_OK(broker_->PublishReliable(Make(dest, "k" + std::to_string(i), "x"), 10s));
    for (int i = 0; i < 4; ++i) {
        auto d = Next(*first);
        ASSERT_TRUE(d.has_value()) << i;
        ASSERT_OK(first->Ack(*d));
    }
    auto none = second->Receive(500ms);
    ASSERT_TRUE(none.ok());
    EXPECT_FALSE(none->has_value()) << "the second consumer must wait while the first is active";
    ASSERT_OK(broker_->PublishReliable(Make(dest, "k", "for the second"), 10s));
    first.reset();
    auto d = Next(*second);
    ASSERT_TRUE(d.has_value()) << "the second consumer takes over when the first goes away";
    EXPECT_EQ(d->message.payload, "for the second");
    ASSERT_OK(second->Ack(*d));
}

TEST_F(RabbitTest, AKeysNextDeliveryWaitsUntilTheEarlierOneIsSettled) {
    const std::string dest = rt::UniqueName("orders");
    auto c = Consume(dest, "g");
    ASSERT_NE(c, nullptr);
    const std::vector<Message> ms = {Make(dest, "a", "a:0"), Make(dest, "a", "a:1"), Make(dest, "b", "b:0"),
                                     Make(dest, "", "none:0"), Make(dest, "", "none:1")};
    for (const Status& s : broker_->PublishBatch(ms, 10, 10s)) ASSERT_OK(s);
    std::vector<std::string> got;
    std::vector<Delivery> held;
    for (int i = 0; i < 4; ++i) {
        auto d = Next(*c);
        ASSERT_TRUE(d.has_value()) << i;
        got.push_back(d->message.payload);
        held.push_back(*d);
    }
    EXPECT_EQ(got, (std::vector<std::string>{"a:0", "b:0", "none:0", "none:1"}))
        << "a:1 must wait for a:0; messages without a key never wait";
    auto none = c->Receive(500ms);
    ASSERT_TRUE(none.ok());
    EXPECT_FALSE(none->has_value()) << "a:1 was handed out while a:0 was in flight";
    ASSERT_OK(c->Ack(held[0]));
    auto d = Next(*c);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->message.payload, "a:1");
    ASSERT_OK(c->Ack(*d));
    for (size_t i = 1; i < held.size(); ++i) ASSERT_OK(c->Ack(held[i]));
}

TEST_F(RabbitTest, NackSendsTheKeysHeldDeliveriesBackBehindIt) {
    const std::string dest = rt::UniqueName("orders");
    auto c = Consume(dest, "g");
    ASSERT_NE(c, nullptr);
    std::vector<Message> ms;
    for (int i = 0; i < 5; ++i) ms.push_back(Make(dest, "k", "k:" + std::to_string(i)));
    for (const Status& s : broker_->PublishBatch(ms, 10, 10s)) ASSERT_OK(s);
    // Nack each message twice before acking it: the key's order holds through every requeue.
    for (int i = 0; i < 5; ++i) {
        for (int attempt = 1; attempt <= 3; ++attempt) {
            auto d = Next(*c);
            ASSERT_TRUE(d.has_value());
            ASSERT_EQ(d->message.payload, "k:" + std::to_string(i)) << "attempt " << attempt;
            EXPECT_EQ(d->attempt, attempt);
            if (attempt < 3) {
                ASSERT_OK(c->Nack(*d));
            } else {
                ASSERT_OK(c->Ack(*d));
            }
        }
    }
}

TEST_F(RabbitTest, SettlingADeliveryTwiceIsRefusedWithoutClosingTheChannel) {
    const std::string dest = rt::UniqueName("orders");
    auto c = Consume(dest, "g");
    ASSERT_NE(c, nullptr);
    ASSERT_OK(broker_->PublishReliable(Make(dest, "k", "one"), 10s));
    ASSERT_OK(broker_->PublishReliable(Make(dest, "k", "two"), 10s));
    auto d = Next(*c);
    ASSERT_TRUE(d.has_value());
    ASSERT_OK(c->Ack(*d));
    EXPECT_EQ(c->Ack(*d).code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(c->Nack(*d).code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(c->DeadLetter(*d, "x").code(), StatusCode::kFailedPrecondition);
    auto d2 = Next(*c);
    ASSERT_TRUE(d2.has_value());
    EXPECT_EQ(d2->message.payload, "two");
    EXPECT_EQ(d2->attempt, 1) << "a double ack sent to RabbitMQ would have closed the channel";
    ASSERT_OK(c->Ack(*d2));
}

TEST_F(RabbitTest, DeadLetterGoesThroughTheDeadLetterExchangeWithItsError) {
    const std::string dest = rt::UniqueName("orders");
    auto c = Consume(dest, "g");
    ASSERT_NE(c, nullptr);
    Message m = Make(dest, "k", "poison");
    m.headers = {{"h", "1"}};
    ASSERT_OK(broker_->PublishReliable(m, 10s));
    auto d = Next(*c);
    ASSERT_TRUE(d.has_value());
    ASSERT_OK(c->Nack(*d));
    d = Next(*c);
    ASSERT_TRUE(d.has_value());
    ASSERT_EQ(d->attempt, 2);
    ASSERT_OK(c->DeadLetter(*d, "bad payload"));
    EXPECT_EQ(rt::QueueMessages(dest + ".g"), 0u);
    EXPECT_EQ(rt::QueueMessages(dest + ".g.dlq"), 1u);

    auto conn = rt::RawConnection();
    ASSERT_NE(conn, nullptr);
    conn->SetRpcDeadline(keel::detail::rabbit::Clock::now() + 10s);
    const amqp_rpc_reply_t r = amqp_basic_get(conn->get(), 1, Bytes(dest + ".g.dlq"), 0);
    ASSERT_OK(conn->RpcStatus(r, "basic.get"));
    ASSERT_EQ(r.reply.id, AMQP_BASIC_GET_OK_METHOD);
    EXPECT_EQ(View(static_cast<const amqp_basic_get_ok_t*>(r.reply.decoded)->exchange), dest + ".g.dlx");
    amqp_message_t msg{};
    ASSERT_OK(conn->RpcStatus(amqp_read_message(conn->get(), 1, &msg, 0), "read"));
    EXPECT_EQ(msg.properties.delivery_mode, 2);
    std::map<std::string, std::string> strings;
    std::map<std::string, int64_t> numbers;
    for (int i = 0; i < msg.properties.headers.num_entries; ++i) {
        const auto& e = msg.properties.headers.entries[i];
        if (e.value.kind == AMQP_FIELD_KIND_UTF8) strings[std::string(View(e.key))] = View(e.value.value.bytes);
        if (e.value.kind == AMQP_FIELD_KIND_I64) numbers[std::string(View(e.key))] = e.value.value.i64;
    }
    amqp_destroy_message(&msg);
    EXPECT_EQ(strings["keel-error"], "bad payload");
    EXPECT_EQ(strings["keel-key"], "k");
    EXPECT_FALSE(strings["keel-dead-letter-id"].empty());
    EXPECT_EQ(numbers["keel-attempts"], 2);
    EXPECT_GT(numbers["keel-dead-lettered-at"], 0);
    conn.reset();  // requeues

    auto listed = broker_->ListDeadLetters(dest, "g");
    ASSERT_TRUE(listed.ok()) << listed.status().ToString();
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ((*listed)[0].attempts, 2);
    EXPECT_EQ((*listed)[0].message.headers, m.headers);
    EXPECT_EQ(rt::QueueMessages(dest + ".g.dlq"), 1u) << "listing must not consume";
    auto replayed = broker_->ReplayDeadLetters(dest, "g");
    ASSERT_TRUE(replayed.ok()) << replayed.status().ToString();
    EXPECT_EQ(*replayed, 1u);
    EXPECT_EQ(rt::QueueMessages(dest + ".g.dlq"), 0u);
    d = Next(*c);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->message.message_id, m.message_id);
    EXPECT_EQ(d->attempt, 1);
    ASSERT_OK(c->Ack(*d));
}

TEST_F(RabbitTest, AMessageNotFromKeelIsDeadLetteredAndListedWithTheReason) {
    const std::string dest = rt::UniqueName("orders");
    auto c = Consume(dest, "g");
    ASSERT_NE(c, nullptr);
    auto conn = rt::RawConnection();
    ASSERT_NE(conn, nullptr);
    amqp_basic_properties_t props{};
    ASSERT_EQ(amqp_basic_publish(conn->get(), 1, Bytes(dest), amqp_cstring_bytes("k"), 0, 0, &props,
                                 amqp_cstring_bytes("foreign")),
              AMQP_STATUS_OK);
    const Message m = Make(dest, "k", "keel");
    ASSERT_OK(broker_->PublishReliable(m, 10s));
    auto d = Next(*c);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->message.message_id, m.message_id) << "the foreign message is skipped";
    ASSERT_OK(c->Ack(*d));
    // RabbitMQ dead-letters the rejected message on its own time.
    auto listed = broker_->ListDeadLetters(dest, "g");
    for (int i = 0; i < 100 && listed.ok() && listed->empty(); ++i) {
        std::this_thread::sleep_for(50ms);
        listed = broker_->ListDeadLetters(dest, "g");
    }
    ASSERT_TRUE(listed.ok()) << listed.status().ToString();
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_THAT((*listed)[0].error, ::testing::HasSubstr("message_id"));
    auto replayed = broker_->ReplayDeadLetters(dest, "g");
    ASSERT_TRUE(replayed.ok());
    EXPECT_EQ(*replayed, 0u) << "a foreign message cannot be replayed";
}

TEST_F(RabbitTest, ABatchStopsAKeyAtItsFirstFailureAndRefusesAZeroWindow) {
    const std::string dest = rt::UniqueName("orders");
    auto c = Consume(dest, "g");
    ASSERT_NE(c, nullptr);
    std::vector<Message> ms = {Make(dest, "k1", "k1:0"), Make(dest, "k1", "k1:1 nil id"), Make(dest, "k1", "k1:2"),
                               Make(dest, "k2", "k2:0")};
    ms[1].message_id = Uuid();
    const std::vector<Status> st = broker_->PublishBatch(ms, 10, 10s);
    ASSERT_EQ(st.size(), 4u);
    EXPECT_TRUE(st[0].ok()) << st[0].ToString();
    EXPECT_EQ(st[1].code(), StatusCode::kInvalidArgument) << st[1].ToString();
    EXPECT_EQ(st[2].code(), StatusCode::kFailedPrecondition) << st[2].ToString();
    EXPECT_TRUE(st[3].ok()) << st[3].ToString();
    std::set<std::string> got;
    for (int i = 0; i < 2; ++i) {
        auto d = Next(*c);
        ASSERT_TRUE(d.has_value());
        got.insert(d->message.payload);
        ASSERT_OK(c->Ack(*d));
    }
    EXPECT_EQ(got, (std::set<std::string>{"k1:0", "k2:0"}));
    for (const Status& s : broker_->PublishBatch(ms, 0, 10s)) EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    auto none = c->Receive(500ms);
    ASSERT_TRUE(none.ok());
    EXPECT_FALSE(none->has_value());
}

TEST_F(RabbitTest, ManyConcurrentPublishersShareThePool) {
    const std::string dest = rt::UniqueName("orders");
    auto c = Consume(dest, "g");
    ASSERT_NE(c, nullptr);
    constexpr int kThreads = 12, kEach = 50;
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            std::vector<Message> batch;
            for (int i = 0; i < kEach; ++i) batch.push_back(Make(dest, "t" + std::to_string(t), std::to_string(i)));
            for (const Status& s : broker_->PublishBatch(batch, 8, 30s)) {
                if (!s.ok()) ++failures;
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(failures.load(), 0);
    std::map<std::string, std::vector<int>> order;
    for (int i = 0; i < kThreads * kEach; ++i) {
        auto d = Next(*c);
        ASSERT_TRUE(d.has_value()) << i;
        order[d->message.key].push_back(std::stoi(d->message.payload));
        ASSERT_OK(c->Ack(*d));
    }
    for (const auto& [key, v] : order) EXPECT_TRUE(std::is_sorted(v.begin(), v.end())) << key;
}

TEST_F(RabbitTest, ReceiveAfterTheConsumerIsCancelledReportsUnavailableThenNotFound) {
    const std::string dest = rt::UniqueName("orders");
    auto c = Consume(dest, "g");
    ASSERT_NE(c, nullptr);
    auto conn = rt::RawConnection();
    ASSERT_NE(conn, nullptr);
    conn->SetRpcDeadline(keel::detail::rabbit::Clock::now() + 10s);
    amqp_queue_delete(conn->get(), 1, Bytes(dest + ".g"), 0, 0);
    ASSERT_OK(conn->RpcStatus("queue.delete"));
    auto r = c->Receive(2s);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
    // The consumer reconnects on the next call and finds the group gone.
    r = c->Receive(2s);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kNotFound) << r.status().ToString();
}

}  // namespace
