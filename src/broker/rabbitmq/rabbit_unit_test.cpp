// The rabbitmq: broker's parts that need no server: the URI, the names of the RabbitMQ objects, the message encoding.

#include <string>

#include <gtest/gtest.h>

#include "keel/broker.hpp"

#include "broker/rabbitmq/rabbit_message.hpp"
#include "broker/rabbitmq/rabbit_uri.hpp"

namespace keel::detail::rabbit {
namespace {

Result<RabbitConfig> Parse(std::string_view uri) {
    auto parsed = ParseUri(uri);
    if (!parsed.ok()) return parsed.status();
    return ParseRabbitUri(*parsed);
}

TEST(RabbitUriTest, FullUri) {
    auto c = Parse(
        "rabbitmq://keel:s3cret@127.0.0.1:15673/keel?heartbeat=5&connect_timeout=250&timeout=900&"
        "queue_type=classic");
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->user, "keel");
    EXPECT_EQ(c->password, "s3cret");
    EXPECT_EQ(c->host, "127.0.0.1");
    EXPECT_EQ(c->port, 15673);
    EXPECT_EQ(c->vhost, "keel");
    EXPECT_EQ(c->heartbeat_s, 5);
    EXPECT_EQ(c->connect_timeout.count(), 250);
    EXPECT_EQ(c->io_timeout.count(), 900);
    EXPECT_EQ(c->queue_type, QueueType::kClassic);
    EXPECT_EQ(c->Where(), "RabbitMQ at 127.0.0.1:15673 vhost 'keel'");
}

TEST(RabbitUriTest, Defaults) {
    auto c = Parse("amqp://rabbit.example");
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->user, "guest");
    EXPECT_EQ(c->password, "guest");
    EXPECT_EQ(c->port, 5672);
    EXPECT_EQ(c->vhost, "/");
    EXPECT_EQ(c->heartbeat_s, 60);
    EXPECT_EQ(c->queue_type, QueueType::kQuorum);
    auto slash = Parse("rabbitmq://h/");
    ASSERT_TRUE(slash.ok());
    EXPECT_EQ(slash->vhost, "/");
}

TEST(RabbitUriTest, PercentEscapesAndIpv6) {
    auto c = Parse("rabbitmq://us%40er:p%3Aw@[::1]:5673/%2F");
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->user, "us@er");
    EXPECT_EQ(c->password, "p:w");
    EXPECT_EQ(c->host, "::1");
    EXPECT_EQ(c->port, 5673);
    EXPECT_EQ(c->vhost, "/");
    EXPECT_EQ(c->Where(), "RabbitMQ at [::1]:5673 vhost '/'");
}

TEST(RabbitUriTest, BadUrisAreInvalidArgumentsWithoutThePassword) {
    for (std::string_view uri :
         {"rabbitmq:host", "rabbitmq://", "rabbitmq://u:pw@:5672/v", "rabbitmq://h:99999/v", "rabbitmq://h:x/v",
          "rabbitmq://h:/v", "rabbitmq://h/v?heartbeat=-1", "rabbitmq://h/v?queue_type=stream", "rabbitmq://h/v?x=1",
          "rabbitmq://u:pw@h/%zz", "rabbitmq://[::1/v", "rabbitmq://h/v?timeout=0"}) {
        auto c = Parse(uri);
        ASSERT_FALSE(c.ok()) << uri;
        EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument) << uri;
        EXPECT_EQ(c.status().message().find("pw"), std::string::npos) << c.status().message();
        EXPECT_EQ(c.status().message().find('\n'), std::string::npos) << c.status().message();
    }
}

TEST(RabbitNamesTest, GroupObjects) {
    const GroupNames n = NamesFor("orders", "billing");
    EXPECT_EQ(n.exchange, "orders");
    EXPECT_EQ(n.queue, "orders.billing");
    EXPECT_EQ(n.dlx, "orders.billing.dlx");
    EXPECT_EQ(n.dlq, "orders.billing.dlq");
}

TEST(RabbitNamesTest, LongNamesFitInto255BytesAndStayDistinct) {
    const std::string d(200, 'd');
    const GroupNames a = NamesFor(d, std::string(200, 'a'));
    const GroupNames b = NamesFor(d, std::string(199, 'a') + "b");
    for (const std::string* s : {&a.queue, &a.dlx, &a.dlq, &b.queue, &b.dlx, &b.dlq}) EXPECT_LE(s->size(), 255u);
    EXPECT_NE(a.queue, b.queue);
    EXPECT_NE(a.dlq, b.dlq);
    EXPECT_NE(a.queue, a.dlq);
    EXPECT_EQ(a.queue, NamesFor(d, std::string(200, 'a')).queue);  // stable
}

TEST(RabbitNamesTest, CheckName) {
    EXPECT_TRUE(CheckName("destination", "a.B-c_9").ok());
    EXPECT_EQ(CheckName("destination", "").code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(CheckName("group", "a b").code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(CheckName("group", std::string(201, 'x')).code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(CheckName("group", std::string(200, 'x')).ok());
}

// Encodes with OutgoingProps, then pushes the properties through librabbitmq's table codec, as the wire would.
Decoded RoundTrip(const Message& m, const DeadLetterInfo* dl, bool redelivered) {
    OutgoingProps out(m, dl);
    const amqp_basic_properties_t* p = out.props();
    EXPECT_EQ(p->delivery_mode, 2);
    EXPECT_EQ(View(p->message_id), m.message_id.ToString());
    std::string buffer(65536, '\0');
    amqp_bytes_t encoded = Bytes(buffer);
    size_t offset = 0;
    amqp_table_t headers = p->headers;
    EXPECT_EQ(amqp_encode_table(encoded, &headers, &offset), AMQP_STATUS_OK);
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_bytes_t wire{offset, buffer.data()};
    amqp_table_t decoded_headers{};
    size_t read = 0;
    EXPECT_EQ(amqp_decode_table(wire, &pool, &decoded_headers, &read), AMQP_STATUS_OK);
    amqp_basic_properties_t in = *p;
    in.headers = decoded_headers;
    auto d = DecodeMessage(in, Bytes(m.payload), Bytes(RoutingKeyFor(m)), redelivered);
    empty_amqp_pool(&pool);
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    return d.ok() ? *d : Decoded{};
}

TEST(RabbitMessageTest, RoundTripKeepsHeadersInOrderWithDuplicatesAndBinary) {
    Message m;
    m.destination = "orders";
    m.key = "order-17";
    m.message_id = Uuid::Generate();
    m.payload = std::string("bin\0ary\xff", 8);
    m.headers = {{"b", "2"}, {"a", "1"}, {"b", "3"}, {"empty", ""}, {"nul", std::string("x\0y", 3)}};
    const Decoded d = RoundTrip(m, nullptr, false);
    EXPECT_EQ(d.message.message_id, m.message_id);
    EXPECT_EQ(d.message.key, m.key);
    EXPECT_EQ(d.message.payload, m.payload);
    EXPECT_EQ(d.message.headers, m.headers);
    EXPECT_EQ(d.attempt, 1);
    EXPECT_FALSE(d.dead_letter.has_value());
    EXPECT_EQ(RoundTrip(m, nullptr, true).attempt, 2);
}

TEST(RabbitMessageTest, LongKeyTravelsInTheHeaderOnly) {
    Message m;
    m.destination = "d";
    m.key = std::string(300, 'k');
    m.message_id = Uuid::Generate();
    EXPECT_TRUE(RoutingKeyFor(m).empty());
    EXPECT_EQ(RoundTrip(m, nullptr, false).message.key, m.key);
}

TEST(RabbitMessageTest, DeadLetterHeaders) {
    Message m;
    m.destination = "d";
    m.message_id = Uuid::Generate();
    const DeadLetterInfo info{"handler failed: boom", 4, 1'700'000'000'123'456, Uuid::Generate().ToString()};
    const Decoded d = RoundTrip(m, &info, false);
    ASSERT_TRUE(d.dead_letter.has_value());
    EXPECT_EQ(d.dead_letter->error, info.error);
    EXPECT_EQ(d.dead_letter->attempts, 4);
    EXPECT_EQ(d.dead_letter->dead_lettered_at, info.dead_lettered_at);
    EXPECT_EQ(d.dead_letter->id, info.id);
}

TEST(RabbitMessageTest, DeliveryCountHeaderGivesTheAttempt) {
    Message m;
    m.destination = "d";
    m.message_id = Uuid::Generate();
    OutgoingProps out(m);
    amqp_basic_properties_t p = *out.props();
    amqp_table_entry_t entries[2];
    entries[0] = p.headers.entries[0];
    entries[1].key = amqp_cstring_bytes("x-delivery-count");
    entries[1].value.kind = AMQP_FIELD_KIND_I64;
    entries[1].value.value.i64 = 3;
    p.headers.entries = entries;
    p.headers.num_entries = 2;
    auto d = DecodeMessage(p, amqp_empty_bytes, amqp_empty_bytes, true);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->attempt, 4);
}

TEST(RabbitMessageTest, ForeignMessagesAreCorruption) {
    amqp_basic_properties_t p{};
    EXPECT_EQ(DecodeMessage(p, amqp_empty_bytes, amqp_empty_bytes, false).status().code(), StatusCode::kCorruption);
    p._flags = AMQP_BASIC_MESSAGE_ID_FLAG;
    p.message_id = amqp_cstring_bytes("not-a-uuid");
    EXPECT_EQ(DecodeMessage(p, amqp_empty_bytes, amqp_empty_bytes, false).status().code(), StatusCode::kCorruption);
}

}  // namespace
}  // namespace keel::detail::rabbit
