// rabbitmq:// — keel's Broker on RabbitMQ through librabbitmq (rabbitmq-c). docs/brokers.md ("rabbitmq:") has the
// model for users; in short:
// - a destination is a durable topic exchange; a group is a durable queue `<destination>.<group>` bound with '#',
//   with x-single-active-consumer (one consumer of the group receives at a time, so a key's messages go out in
//   order) and a dead-letter exchange `<destination>.<group>.dlx` (fanout) feeding `<destination>.<group>.dlq`;
// - publishes are persistent and confirmed (confirm.select); PublishBatch keeps up to `window` publishes
//   unconfirmed on one channel, which is what makes it fast;
// - a consumer holds its own connection with manual acks and a prefetch; it hands out one delivery per key at a
//   time and holds back later deliveries of a key whose earlier one is still unsettled;
// - DeadLetter publishes (confirmed, mandatory) to the group's dead-letter exchange, then acks;
//   ListDeadLetters browses the dead-letter queue with basic.get and requeues what it read;
//   ReplayDeadLetters moves dead letters back into the group's queue through the default exchange.
//
// Connections: a pool of idle publisher connections (confirm mode) shared by the Broker's calls; each call takes one
// for its duration, so concurrent calls do not wait for each other. A connection that failed is dropped (with every
// idle one: a server restart kills them all); the next call connects again, spacing attempts with the backoff of
// BrokerOptions. A call that finds a pooled connection dead before anything was confirmed retries once on a new one.

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "broker/backends.hpp"
#include "broker/rabbitmq/amqp_conn.hpp"
#include "broker/rabbitmq/rabbit_message.hpp"
#include "broker/rabbitmq/rabbit_uri.hpp"

namespace keel::detail {
namespace {

using rabbit::AmqpConn;
using rabbit::Backoff;
using rabbit::Bytes;
using rabbit::Clock;
using rabbit::DeadLetterInfo;
using rabbit::GroupNames;
using rabbit::IoGuard;
using rabbit::OutgoingProps;
using rabbit::RabbitConfig;
using rabbit::Remaining;
using rabbit::View;
using std::chrono::milliseconds;

constexpr size_t kMaxIdleConnections = 8;
// The start of the message of a batch member that was never sent.
constexpr std::string_view kNotPublished = "not published: ";
// Delivery tags handed out are (connection generation << kTagBits) | AMQP delivery tag.
constexpr int kTagBits = 44;
constexpr uint64_t kTagMask = (uint64_t{1} << kTagBits) - 1;
// How long a key's later deliveries are sent back while its nacked message has not come back yet.
constexpr milliseconds kBarrierLifetime{10'000};
// Most messages whose bounces (requeues without a hand-out) a consumer remembers.
constexpr size_t kMaxBounces = 100'000;

int64_t NowMicros() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

Status CheckMessage(const Message& m) {
    KEEL_RETURN_IF_ERROR(rabbit::CheckName("destination", m.destination));
    if (m.message_id.is_nil()) {
        return Status::InvalidArgument(
            fmt::format("message to '{}' with key '{}' has a nil message_id", m.destination, m.key.substr(0, 64)));
    }
    return Status::Ok();
}

amqp_table_entry_t StringArg(const char* key, std::string_view value) {
    amqp_table_entry_t e{};
    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = Bytes(value);
    return e;
}

amqp_table_entry_t BoolArg(const char* key, bool value) {
    amqp_table_entry_t e{};
    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
    e.value.value.boolean = value ? 1 : 0;
    return e;
}

amqp_table_entry_t LongArg(const char* key, int64_t value) {
    amqp_table_entry_t e{};
    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = value;
    return e;
}

amqp_table_t Table(std::vector<amqp_table_entry_t>& entries) {
    amqp_table_t t{};
    t.num_entries = static_cast<int>(entries.size());
    t.entries = entries.empty() ? nullptr : entries.data();
    return t;
}

// One message to publish and where to.
struct Outgoing {
    const Message* message;
    std::string_view exchange;
    std::string_view routing_key;
    const DeadLetterInfo* dead_letter = nullptr;
};

struct PublishOutcome {
    bool any_confirmed = false;
    // Set when the connection failed (or the deadline passed) during the call.
    Status failure;
};

// Reads one frame from a publishing channel and settles what it confirms. DeadlineExceeded when none came in time.
class ConfirmTracker {
public:
    ConfirmTracker(AmqpConn& conn, std::span<const Outgoing> items, std::vector<Status>& statuses)
        : conn_(conn), items_(items), statuses_(statuses) {}

    void Sent(uint64_t seq, size_t index) { outstanding_.emplace(seq, index); }
    size_t outstanding() const { return outstanding_.size(); }
    bool any_confirmed() const { return any_confirmed_; }

    Status Pump(Clock::time_point deadline) {
        amqp_maybe_release_buffers(conn_.get());
        timeval tv = Remaining(deadline);
        amqp_frame_t frame{};
        const int rc = amqp_simple_wait_frame_noblock(conn_.get(), &frame, &tv);
        if (rc == AMQP_STATUS_TIMEOUT) {
            return Status::DeadlineExceeded(
                fmt::format("{}: no publisher confirm came before the deadline", conn_.config().Where()));
        }
        if (rc != AMQP_STATUS_OK) return conn_.LibStatus(rc, "waiting for publisher confirms");
        if (frame.frame_type != AMQP_FRAME_METHOD) return Status::Ok();
        const amqp_method_t& method = frame.payload.method;
        switch (method.id) {
            case AMQP_BASIC_ACK_METHOD: {
                const auto* ack = static_cast<const amqp_basic_ack_t*>(method.decoded);
                Settle(ack->delivery_tag, ack->multiple != 0, true);
                return Status::Ok();
            }
            case AMQP_BASIC_NACK_METHOD: {
                const auto* nack = static_cast<const amqp_basic_nack_t*>(method.decoded);
                Settle(nack->delivery_tag, nack->multiple != 0, false);
                return Status::Ok();
            }
            case AMQP_BASIC_RETURN_METHOD: {
                const auto* ret = static_cast<const amqp_basic_return_t*>(method.decoded);
                std::string text(View(ret->reply_text));
                amqp_message_t returned{};
                const amqp_rpc_reply_t r = amqp_read_message(conn_.get(), frame.channel, &returned, 0);
                if (r.reply_type != AMQP_RESPONSE_NORMAL) return conn_.RpcStatus(r, "reading a returned message");
                amqp_destroy_message(&returned);
                // RabbitMQ returns a message before it confirms it, in publish order: the earliest outstanding
                // publish not returned yet is this one.
                for (const auto& [seq, index] : outstanding_) {
                    if (!returned_.contains(seq)) {
                        returned_.emplace(seq, std::move(text));
                        break;
                    }
                }
                return Status::Ok();
            }
            case AMQP_CHANNEL_CLOSE_METHOD:
            case AMQP_CONNECTION_CLOSE_METHOD: return conn_.ServerClose(method, "publishing");
            default: return Status::Ok();
        }
    }

    // Everything still unconfirmed gets `status`.
    void FailOutstanding(const Status& status) {
        for (const auto& [seq, index] : outstanding_) statuses_[index] = status;
        outstanding_.clear();
    }

private:
    void Settle(uint64_t tag, bool multiple, bool acked) {
        auto settle_one = [&](uint64_t seq, size_t index) {
            const Outgoing& item = items_[index];
            if (!acked) {
                statuses_[index] = Status::Unavailable(
                    fmt::format("{}: the server refused message {} (basic.nack); nothing is known to be stored",
                                conn_.config().Where(), item.message->message_id.ToString()));
            } else if (auto r = returned_.find(seq); r != returned_.end()) {
                statuses_[index] = Status::NotFound(
                    fmt::format("{}: message {} could not be routed from exchange '{}' with routing key '{}': {}",
                                conn_.config().Where(), item.message->message_id.ToString(),
                                item.exchange.empty() ? "(default)" : item.exchange, item.routing_key, r->second));
                returned_.erase(r);
            } else {
                statuses_[index] = Status::Ok();
            }
            any_confirmed_ = true;
        };
        if (multiple) {
            auto end = outstanding_.upper_bound(tag);
            for (auto it = outstanding_.begin(); it != end; ++it) settle_one(it->first, it->second);
            outstanding_.erase(outstanding_.begin(), end);
        } else if (auto it = outstanding_.find(tag); it != outstanding_.end()) {
            settle_one(it->first, it->second);
            outstanding_.erase(it);
        }
    }

    AmqpConn& conn_;
    std::span<const Outgoing> items_;
    std::vector<Status>& statuses_;
    std::map<uint64_t, size_t> outstanding_;  // publish sequence number -> index into items_
    std::map<uint64_t, std::string> returned_;
    bool any_confirmed_ = false;
};

// Publishes items[i] for i in `todo` (in order) over `conn`, keeping up to `window` unconfirmed; sets statuses[i].
PublishOutcome PublishOn(AmqpConn& conn, std::span<const Outgoing> items, const std::vector<size_t>& todo,
                         size_t window, bool mandatory, bool declare_exchanges, Clock::time_point deadline,
                         std::vector<Status>& statuses) {
    PublishOutcome out;
    IoGuard guard(conn, deadline);
    if (declare_exchanges) {
        std::unordered_set<std::string_view> seen;
        for (size_t i : todo) {
            if (!seen.insert(items[i].exchange).second) continue;
            const std::string exchange(items[i].exchange);
            if (conn.declared_exchanges.contains(exchange)) continue;
            conn.SetRpcDeadline(deadline);
            amqp_exchange_declare(conn.get(), AmqpConn::kChannel, Bytes(exchange), amqp_cstring_bytes("topic"), 0, 1, 0,
                                  0, amqp_empty_table);
            Status s = conn.RpcStatus(fmt::format("declaring exchange '{}'", exchange));
            if (!s.ok()) {
                for (size_t j : todo) statuses[j] = s;
                out.failure = s;
                return out;
            }
            conn.declared_exchanges.insert(exchange);
        }
    }
    ConfirmTracker tracker(conn, items, statuses);
    size_t next = 0;
    Status failure;
    while (next < todo.size() && failure.ok()) {
        while (tracker.outstanding() >= window && failure.ok()) failure = tracker.Pump(deadline);
        if (!failure.ok()) break;
        const size_t index = todo[next];
        const Outgoing& item = items[index];
        OutgoingProps props(*item.message, item.dead_letter);
        const int rc = amqp_basic_publish(conn.get(), AmqpConn::kChannel, Bytes(item.exchange), Bytes(item.routing_key),
                                          mandatory ? 1 : 0, 0, props.props(), Bytes(item.message->payload));
        if (rc != AMQP_STATUS_OK) {
            failure = conn.LibStatus(rc, "publishing");
            break;
        }
        tracker.Sent(conn.next_publish_seq++, index);
        ++next;
    }
    while (tracker.outstanding() > 0 && failure.ok()) failure = tracker.Pump(deadline);
    if (guard.Fired()) {
        conn.MarkUnusable();
        failure = Status::DeadlineExceeded(
            fmt::format("{}: the socket was stuck past the deadline (is the server blocking publishers: a memory or "
                        "disk alarm?)",
                        conn.config().Where()));
    }
    if (!failure.ok()) {
        // Late confirms would arrive for publishes this call forgets: do not reuse the channel.
        conn.MarkUnusable();
        tracker.FailOutstanding(failure);
        const Status unsent = failure.code() == StatusCode::kDeadlineExceeded
                                  ? Status::DeadlineExceeded(
                                        fmt::format("{}{} before the deadline", kNotPublished, conn.config().Where()))
                                  : Status::Unavailable(fmt::format("{}{}", kNotPublished, failure.message()));
        for (size_t k = next; k < todo.size(); ++k) statuses[todo[k]] = unsent;
    }
    out.any_confirmed = tracker.any_confirmed();
    out.failure = failure;
    return out;
}

// State shared by a Broker and its consumers.
class Core {
public:
    Core(RabbitConfig config, const BrokerOptions& options)
        : config_(std::move(config)), options_(options), backoff_(options.reconnect_min, options.reconnect_max) {}

    const RabbitConfig& config() const { return config_; }
    const BrokerOptions& options() const { return options_; }

    struct Lease {
        std::unique_ptr<AmqpConn> conn;
        bool reused = false;
    };

    // An idle publisher connection, or a new one: connection attempts are retried, spaced by the backoff, until
    // `deadline`. kUnavailable with the last connection error when none succeeded.
    Result<Lease> Acquire(Clock::time_point deadline, bool allow_reuse) {
        if (allow_reuse) {
            std::lock_guard lock(mu_);
            if (!idle_.empty()) {
                Lease lease{std::move(idle_.back()), true};
                idle_.pop_back();
                return lease;
            }
        }
        Status last;
        for (;;) {
            if (!backoff_.WaitTurn(deadline)) {
                if (!last.ok()) return last;
                std::lock_guard lock(mu_);
                return Status::Unavailable(fmt::format("{} (reconnecting; no attempt was due before the deadline)",
                                                       last_error_.empty() ? config_.Where() : last_error_));
            }
            auto conn = AmqpConn::Open(config_, deadline, true);
            if (conn.ok()) {
                backoff_.Succeeded();
                return Lease{std::move(*conn), false};
            }
            backoff_.Failed();
            last = conn.status();
            {
                std::lock_guard lock(mu_);
                last_error_ = last.message();
            }
            if (Clock::now() >= deadline) return last;
        }
    }

    void Release(std::unique_ptr<AmqpConn> conn) {
        if (conn == nullptr) return;
        if (!conn->usable()) {
            // A failed socket (rather than a refused operation) most likely means the server went away: the idle
            // connections are dead too.
            if (!conn->socket_ok()) DropIdle();
            return;
        }
        {
            std::lock_guard lock(mu_);
            if (idle_.size() < kMaxIdleConnections) {
                idle_.push_back(std::move(conn));
                return;
            }
        }
        conn.reset();  // too many idle: close this one (outside the lock)
    }

    // Runs `fn` on a publisher connection. When `fn` fails with kUnavailable/kDeadlineExceeded on a connection taken
    // from the pool (it may have died while idle, e.g. in a server restart) and `fn` says retrying is safe, it runs
    // once more on a new connection.
    template <class Fn>
    Status WithConn(Clock::time_point deadline, Fn&& fn) {
        bool allow_reuse = true;
        for (;;) {
            auto lease = Acquire(deadline, allow_reuse);
            if (!lease.ok()) return lease.status();
            bool retry_safe = true;
            Status s = fn(*lease->conn, retry_safe);
            const bool dead = !lease->conn->usable();
            const bool reused = lease->reused;
            Release(std::move(lease->conn));
            if (s.ok() || !dead || !reused || !retry_safe || Clock::now() >= deadline) return s;
            if (s.code() != StatusCode::kUnavailable && s.code() != StatusCode::kDeadlineExceeded) return s;
            allow_reuse = false;
        }
    }

    // Publishes `items` (all of `todo`), retrying once on a new connection when a pooled one turns out dead before
    // anything was confirmed.
    void Publish(std::span<const Outgoing> items, std::vector<size_t> todo, size_t window, bool mandatory,
                 bool declare_exchanges, Clock::time_point deadline, std::vector<Status>& statuses) {
        bool allow_reuse = true;
        for (;;) {
            auto lease = Acquire(deadline, allow_reuse);
            if (!lease.ok()) {
                for (size_t i : todo) statuses[i] = lease.status();
                return;
            }
            PublishOutcome o =
                PublishOn(*lease->conn, items, todo, window, mandatory, declare_exchanges, deadline, statuses);
            const bool reused = lease->reused;
            Release(std::move(lease->conn));
            if (o.failure.ok() || !reused || o.any_confirmed || !allow_reuse || Clock::now() >= deadline) return;
            if (o.failure.code() != StatusCode::kUnavailable) return;
            allow_reuse = false;  // retry everything on a new connection
        }
    }

    void DropIdle() {
        std::vector<std::unique_ptr<AmqpConn>> dropped;
        {
            std::lock_guard lock(mu_);
            dropped.swap(idle_);
        }
        for (auto& c : dropped) c->MarkUnusable();  // a dead socket: skip the polite close
    }

    // Opens the first connection (one attempt) so that OpenBroker reports an unreachable server.
    Status Connect() {
        auto conn = AmqpConn::Open(config_, Clock::now() + config_.connect_timeout, true);
        if (!conn.ok()) return conn.status();
        Release(std::move(*conn));
        return Status::Ok();
    }

private:
    const RabbitConfig config_;
    const BrokerOptions options_;
    Backoff backoff_;
    std::mutex mu_;
    std::vector<std::unique_ptr<AmqpConn>> idle_;
    std::string last_error_;
};

// Reads dead letters from `dlq` with basic.get, without acknowledging them. The caller acks or nacks the tags.
struct BrowsedDeadLetter {
    uint64_t tag;
    DeadLetter letter;
};

Status BrowseOne(AmqpConn& conn, const std::string& dlq, std::string_view destination,
                 std::optional<BrowsedDeadLetter>& out, uint64_t& last_tag) {
    out.reset();
    amqp_maybe_release_buffers(conn.get());
    const amqp_rpc_reply_t r = amqp_basic_get(conn.get(), AmqpConn::kChannel, Bytes(dlq), 0);
    KEEL_RETURN_IF_ERROR(conn.RpcStatus(r, fmt::format("reading dead-letter queue '{}'", dlq)));
    if (r.reply.id != AMQP_BASIC_GET_OK_METHOD) return Status::Ok();  // basic.get-empty
    const auto* ok = static_cast<const amqp_basic_get_ok_t*>(r.reply.decoded);
    const uint64_t tag = ok->delivery_tag;
    const bool redelivered = ok->redelivered != 0;
    const std::string routing_key(View(ok->routing_key));
    last_tag = tag;
    amqp_message_t msg{};
    const amqp_rpc_reply_t rm = amqp_read_message(conn.get(), AmqpConn::kChannel, &msg, 0);
    KEEL_RETURN_IF_ERROR(conn.RpcStatus(rm, fmt::format("reading dead-letter queue '{}'", dlq)));
    auto decoded = rabbit::DecodeMessage(msg.properties, msg.body, Bytes(routing_key), redelivered);
    amqp_destroy_message(&msg);
    BrowsedDeadLetter b{tag, {}};
    if (decoded.ok()) {
        b.letter.message = std::move(decoded->message);
        b.letter.message.destination = std::string(destination);
        if (decoded->dead_letter.has_value()) {
            b.letter.error = std::move(decoded->dead_letter->error);
            b.letter.attempts = decoded->dead_letter->attempts;
            b.letter.dead_lettered_at = decoded->dead_letter->dead_lettered_at;
            b.letter.id = std::move(decoded->dead_letter->id);
        } else {
            // Dead-lettered by RabbitMQ itself (a reject without requeue, a delivery limit, a TTL).
            b.letter.error = "dead-lettered by RabbitMQ";
            b.letter.attempts = decoded->attempt;
        }
        if (b.letter.id.empty()) b.letter.id = b.letter.message.message_id.ToString();
    } else {
        // Not a keel message: listed with the reason, under an id that Replay does not accept.
        b.letter.message.destination = std::string(destination);
        b.letter.error = decoded.status().message();
        b.letter.id = fmt::format("not-keel-{}", tag);
    }
    out = std::move(b);
    return Status::Ok();
}

Status CheckGroupExists(AmqpConn& conn, const GroupNames& names, std::string_view destination, std::string_view group,
                        Clock::time_point deadline) {
    conn.SetRpcDeadline(deadline);
    amqp_queue_declare(conn.get(), AmqpConn::kChannel, Bytes(names.queue), 1, 0, 0, 0, amqp_empty_table);
    Status s = conn.RpcStatus(fmt::format("looking up queue '{}'", names.queue));
    if (s.code() == StatusCode::kNotFound) {
        return Status::NotFound(
            fmt::format("{}: consumer group '{}' of destination '{}' is not declared (queue '{}' "
                        "does not exist; call Declare first)",
                        conn.config().Where(), group, destination, names.queue));
    }
    return s;
}

class RabbitConsumer final : public BrokerConsumer {
public:
    RabbitConsumer(std::shared_ptr<Core> core, std::string destination, std::string group,
                   const ConsumeOptions& options)
        : core_(std::move(core)),
          destination_(std::move(destination)),
          group_(std::move(group)),
          names_(rabbit::NamesFor(destination_, group_)),
          options_(options),
          backoff_(core_->options().reconnect_min, core_->options().reconnect_max) {}

    Status Connect() {
        Reset();
        const auto deadline = Clock::now() + core_->config().connect_timeout + core_->config().io_timeout;
        auto conn = AmqpConn::Open(core_->config(), deadline, false);
        if (!conn.ok()) return conn.status();
        AmqpConn& c = **conn;
        KEEL_RETURN_IF_ERROR(CheckGroupExists(c, names_, destination_, group_, deadline));
        c.SetRpcDeadline(deadline);
        amqp_basic_qos(c.get(), AmqpConn::kChannel, 0, static_cast<uint16_t>(options_.prefetch), 0);
        KEEL_RETURN_IF_ERROR(c.RpcStatus("setting the prefetch (basic.qos)"));
        amqp_basic_consume(c.get(), AmqpConn::kChannel, Bytes(names_.queue), amqp_empty_bytes, 0, 0, 0,
                           amqp_empty_table);
        KEEL_RETURN_IF_ERROR(c.RpcStatus(fmt::format("consuming from queue '{}'", names_.queue)));
        conn_ = std::move(*conn);
        ++generation_;
        return Status::Ok();
    }

    Result<std::optional<Delivery>> Receive(milliseconds timeout) override {
        const auto deadline = Clock::now() + std::max(timeout, milliseconds(0));
        if (conn_ == nullptr || !conn_->usable()) {
            Reset();
            if (!backoff_.WaitTurn(deadline)) {
                return Status::Unavailable(fmt::format("{} (reconnecting)", last_error_.message()));
            }
            Status s = Connect();
            if (!s.ok()) {
                backoff_.Failed();
                last_error_ = s;
                return s;
            }
            backoff_.Succeeded();
        }
        if (auto d = TakeHeld(); d.has_value()) return d;
        AmqpConn& c = *conn_;
        IoGuard guard(c, deadline + c.config().io_timeout);
        for (;;) {
            amqp_maybe_release_buffers(c.get());
            timeval tv = Remaining(deadline);
            amqp_envelope_t env{};
            const amqp_rpc_reply_t r = amqp_consume_message(c.get(), &env, &tv, 0);
            if (r.reply_type == AMQP_RESPONSE_NORMAL) {
                std::optional<Delivery> d = Take(env);
                amqp_destroy_envelope(&env);
                if (d.has_value()) return d;
                if (!c.usable()) return Failed("receiving");
                if (Clock::now() >= deadline) return std::optional<Delivery>();
                continue;
            }
            if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) {
                return std::optional<Delivery>();
            }
            if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
                amqp_frame_t frame{};
                timeval now_tv{};
                const int rc = amqp_simple_wait_frame_noblock(c.get(), &frame, &now_tv);
                if (rc == AMQP_STATUS_TIMEOUT) continue;
                if (rc != AMQP_STATUS_OK) return Failed(c.LibStatus(rc, "receiving"));
                if (frame.frame_type == AMQP_FRAME_METHOD) {
                    const amqp_method_t& m = frame.payload.method;
                    if (m.id == AMQP_CHANNEL_CLOSE_METHOD || m.id == AMQP_CONNECTION_CLOSE_METHOD) {
                        return Failed(c.ServerClose(m, "receiving"));
                    }
                    if (m.id == AMQP_BASIC_CANCEL_METHOD) {
                        c.MarkUnusable();
                        return Failed(Status::Unavailable(
                            fmt::format("{}: the server cancelled the consumer of queue '{}' (was it deleted?)",
                                        c.config().Where(), names_.queue)));
                    }
                }
                continue;
            }
            Status s = c.RpcStatus(r, "receiving");
            if (guard.Fired()) {
                s = Status::Unavailable(
                    fmt::format("{}: receiving: the socket was stuck past the deadline", c.config().Where()));
            }
            return Failed(s);
        }
    }

    Status Ack(const Delivery& delivery) override {
        auto key = Settle(delivery, "acknowledge");
        if (!key.ok()) return key.status();
        IoGuard guard(*conn_, Clock::now() + conn_->config().io_timeout);
        const int rc = amqp_basic_ack(conn_->get(), AmqpConn::kChannel, delivery.tag & kTagMask, 0);
        if (rc != AMQP_STATUS_OK) {
            return Status::Unavailable(fmt::format("{} (the message will be delivered again)",
                                                   conn_->LibStatus(rc, "acknowledging").message()));
        }
        return Status::Ok();
    }

    Status Nack(const Delivery& delivery,
                milliseconds /*delay: not supported by RabbitMQ; see docs/brokers.md*/) override {
        auto key = Settle(delivery, "nack");
        if (!key.ok()) return key.status();
        IoGuard guard(*conn_, Clock::now() + conn_->config().io_timeout);
        int rc = amqp_basic_nack(conn_->get(), AmqpConn::kChannel, delivery.tag & kTagMask, 0, 1);
        // The key's later messages that RabbitMQ already sent us go back too, after it, so that the key's order
        // survives the requeue: those held back now, and those still on their way (until the nacked message
        // itself comes back, see Take).
        if (!key->empty()) {
            for (auto it = held_.begin(); it != held_.end() && rc == AMQP_STATUS_OK;) {
                if (it->message.key == *key) {
                    rc = amqp_basic_nack(conn_->get(), AmqpConn::kChannel, it->tag & kTagMask, 0, 1);
                    Bounced(it->message.message_id);
                    it = held_.erase(it);
                } else {
                    ++it;
                }
            }
            // A message that does not come back (dead-lettered by a delivery limit, say) lifts its barrier after a
            // while rather than keep the key's messages cycling.
            barriers_[*key] = Barrier{delivery.message.message_id, Clock::now() + kBarrierLifetime};
        }
        if (rc != AMQP_STATUS_OK) {
            return Status::Unavailable(
                fmt::format("{} (the message will be delivered again)", conn_->LibStatus(rc, "nacking").message()));
        }
        return Status::Ok();
    }

    Status DeadLetter(const Delivery& delivery, std::string_view error) override {
        if (!Holds(delivery)) return NotHeld(delivery, "dead-letter");
        Message m = delivery.message;
        m.destination = destination_;
        DeadLetterInfo info{std::string(error), delivery.attempt, NowMicros(), Uuid::Generate().ToString()};
        const Outgoing item{&m, names_.dlx, rabbit::RoutingKeyFor(m), &info};
        std::vector<Status> statuses(1);
        core_->Publish(std::span<const Outgoing>(&item, 1), {0}, 1, true, false,
                       Clock::now() + core_->config().io_timeout, statuses);
        if (!statuses[0].ok()) {
            return Status(statuses[0].code(),
                          fmt::format("dead-lettering message {}: {}", m.message_id.ToString(), statuses[0].message()));
        }
        return Ack(delivery);
    }

private:
    Status Failed(std::string_view what) {
        return Failed(Status::Unavailable(fmt::format("{}: {}: the connection failed", core_->config().Where(), what)));
    }
    Status Failed(Status s) {
        if (s.code() != StatusCode::kUnavailable) s = Status::Unavailable(s.message());
        last_error_ = s;
        if (conn_ != nullptr) conn_->MarkUnusable();
        return s;
    }

    void Reset() {
        conn_.reset();
        in_flight_.clear();
        busy_keys_.clear();
        held_.clear();
        barriers_.clear();
    }

    bool Holds(const Delivery& d) const {
        return conn_ != nullptr && conn_->usable() && (d.tag >> kTagBits) == generation_ && in_flight_.contains(d.tag);
    }

    Status NotHeld(const Delivery& d, std::string_view what) const {
        if (conn_ == nullptr || !conn_->usable() || (d.tag >> kTagBits) != generation_) {
            return Status::Unavailable(
                fmt::format("{}: cannot {} message {}: its connection is gone, so RabbitMQ will deliver it again",
                            core_->config().Where(), what, d.message.message_id.ToString()));
        }
        return Status::FailedPrecondition(fmt::format(
            "cannot {} message {} (attempt {}): the delivery is not held by this consumer of group '{}' (already "
            "acknowledged, nacked or dead-lettered)",
            what, d.message.message_id.ToString(), d.attempt, group_));
    }

    void Bounced(const Uuid& id) {
        if (bounces_.size() >= kMaxBounces) bounces_.clear();  // bounded; attempts may then overcount
        ++bounces_[id].count;
    }

    // Removes the delivery from the in-flight set; its key (empty for none) is free again.
    Result<std::string> Settle(const Delivery& d, std::string_view what) {
        if (!Holds(d)) return NotHeld(d, what);
        if (what != "nack") bounces_.erase(d.message.message_id);
        auto it = in_flight_.find(d.tag);
        std::string key = std::move(it->second);
        in_flight_.erase(it);
        if (!key.empty()) busy_keys_.erase(key);
        return key;
    }

    std::optional<Delivery> Hand(Delivery d) {
        if (auto b = bounces_.find(d.message.message_id); b != bounces_.end()) b->second.handed = true;
        if (!d.message.key.empty()) busy_keys_.insert(d.message.key);
        in_flight_.emplace(d.tag, d.message.key);
        return d;
    }

    std::optional<Delivery> TakeHeld() {
        for (auto it = held_.begin(); it != held_.end(); ++it) {
            if (!busy_keys_.contains(it->message.key)) {
                Delivery d = std::move(*it);
                held_.erase(it);
                return Hand(std::move(d));
            }
        }
        return std::nullopt;
    }

    // A delivery read from the socket: handed out, or held back while its key is busy.
    std::optional<Delivery> Take(const amqp_envelope_t& env) {
        const uint64_t tag = (generation_ << kTagBits) | (env.delivery_tag & kTagMask);
        auto decoded =
            rabbit::DecodeMessage(env.message.properties, env.message.body, env.routing_key, env.redelivered != 0);
        if (!decoded.ok()) {
            // Not a keel message: reject it without requeue, so RabbitMQ moves it to the dead-letter queue.
            IoGuard guard(*conn_, Clock::now() + conn_->config().io_timeout);
            const int rc = amqp_basic_reject(conn_->get(), AmqpConn::kChannel, env.delivery_tag, 0);
            if (rc != AMQP_STATUS_OK) (void)conn_->LibStatus(rc, "rejecting a message that keel cannot decode");
            return std::nullopt;
        }
        Delivery d;
        d.message = std::move(decoded->message);
        d.message.destination = destination_;
        d.attempt = decoded->attempt;
        d.tag = tag;
        // Requeues this consumer made without handing the message out are not attempts.
        if (auto b = bounces_.find(d.message.message_id); b != bounces_.end()) {
            if (decoded->counted) {
                d.attempt = std::max(1, d.attempt - b->second.count);
            } else if (!b->second.handed) {
                d.attempt = 1;
            }
        }
        if (!d.message.key.empty()) {
            if (auto b = barriers_.find(d.message.key); b != barriers_.end()) {
                if (b->second.message_id == d.message.message_id || Clock::now() >= b->second.expires) {
                    barriers_.erase(b);  // the nacked message is back: its key flows again
                } else {
                    // Sent before the nacked message came back: requeue it behind that one.
                    IoGuard guard(*conn_, Clock::now() + conn_->config().io_timeout);
                    const int rc = amqp_basic_nack(conn_->get(), AmqpConn::kChannel, env.delivery_tag, 0, 1);
                    if (rc != AMQP_STATUS_OK) (void)conn_->LibStatus(rc, "requeueing a delivery behind a nacked one");
                    Bounced(d.message.message_id);
                    return std::nullopt;
                }
            }
        }
        if (!d.message.key.empty() && busy_keys_.contains(d.message.key)) {
            held_.push_back(std::move(d));
            return std::nullopt;
        }
        return Hand(std::move(d));
    }

    std::shared_ptr<Core> core_;
    const std::string destination_;
    const std::string group_;
    const GroupNames names_;
    const ConsumeOptions options_;
    Backoff backoff_;
    std::unique_ptr<AmqpConn> conn_;
    uint64_t generation_ = 0;
    Status last_error_;
    std::unordered_map<uint64_t, std::string> in_flight_;  // handed out, not settled: tag -> key
    std::unordered_set<std::string> busy_keys_;            // keys with a delivery in flight
    std::deque<Delivery> held_;                            // read, waiting for their key
    struct Bounce {
        int count = 0;        // requeues of this message by this consumer, not handed out
        bool handed = false;  // handed out since
    };
    std::unordered_map<Uuid, Bounce> bounces_;  // kept across reconnects
    struct Barrier {
        Uuid message_id;  // the nacked message the key's later ones wait for
        Clock::time_point expires;
    };
    std::unordered_map<std::string, Barrier> barriers_;  // by key
};

class RabbitBroker final : public Broker {
public:
    explicit RabbitBroker(std::shared_ptr<Core> core) : core_(std::move(core)) {}

    Status Declare(std::string_view destination, std::string_view group) override {
        KEEL_RETURN_IF_ERROR(rabbit::CheckName("destination", destination));
        KEEL_RETURN_IF_ERROR(rabbit::CheckName("group", group));
        const GroupNames names = rabbit::NamesFor(destination, group);
        const auto deadline = Clock::now() + core_->config().io_timeout;
        return core_->WithConn(deadline, [&](AmqpConn& c, bool&) -> Status {
            amqp_connection_state_t s = c.get();
            const amqp_channel_t ch = AmqpConn::kChannel;
            const bool quorum = c.config().queue_type == rabbit::QueueType::kQuorum;
            c.SetRpcDeadline(deadline);
            amqp_exchange_declare(s, ch, Bytes(names.exchange), amqp_cstring_bytes("topic"), 0, 1, 0, 0,
                                  amqp_empty_table);
            KEEL_RETURN_IF_ERROR(c.RpcStatus(fmt::format("declaring exchange '{}'", names.exchange)));
            c.declared_exchanges.insert(names.exchange);
            c.SetRpcDeadline(deadline);
            amqp_exchange_declare(s, ch, Bytes(names.dlx), amqp_cstring_bytes("fanout"), 0, 1, 0, 0, amqp_empty_table);
            KEEL_RETURN_IF_ERROR(c.RpcStatus(fmt::format("declaring exchange '{}'", names.dlx)));
            // The dead-letter queue is a classic queue whatever queue_type says: browsing it requeues messages,
            // which would count against a quorum queue's delivery limit.
            std::vector<amqp_table_entry_t> dlq_args;
            if (c.config().queue_expires_ms > 0) dlq_args.push_back(LongArg("x-expires", c.config().queue_expires_ms));
            c.SetRpcDeadline(deadline);
            amqp_queue_declare(s, ch, Bytes(names.dlq), 0, 1, 0, 0, Table(dlq_args));
            KEEL_RETURN_IF_ERROR(c.RpcStatus(fmt::format("declaring queue '{}'", names.dlq)));
            c.SetRpcDeadline(deadline);
            amqp_queue_bind(s, ch, Bytes(names.dlq), Bytes(names.dlx), amqp_cstring_bytes("#"), amqp_empty_table);
            KEEL_RETURN_IF_ERROR(c.RpcStatus(fmt::format("binding queue '{}'", names.dlq)));
            std::vector<amqp_table_entry_t> args;
            if (quorum) args.push_back(StringArg("x-queue-type", "quorum"));
            args.push_back(BoolArg("x-single-active-consumer", true));
            args.push_back(StringArg("x-dead-letter-exchange", names.dlx));
            if (c.config().queue_expires_ms > 0) args.push_back(LongArg("x-expires", c.config().queue_expires_ms));
            c.SetRpcDeadline(deadline);
            amqp_queue_declare(s, ch, Bytes(names.queue), 0, 1, 0, 0, Table(args));
            Status declared = c.RpcStatus(fmt::format("declaring queue '{}'", names.queue));
            if (declared.code() == StatusCode::kFailedPrecondition) {
                return Status::FailedPrecondition(
                    fmt::format("{} (the queue exists with other arguments: was it made by something else than keel, "
                                "or with another ?queue_type=?)",
                                declared.message()));
            }
            KEEL_RETURN_IF_ERROR(declared);
            c.SetRpcDeadline(deadline);
            amqp_queue_bind(s, ch, Bytes(names.queue), Bytes(names.exchange), amqp_cstring_bytes("#"),
                            amqp_empty_table);
            return c.RpcStatus(fmt::format("binding queue '{}' to exchange '{}'", names.queue, names.exchange));
        });
    }

    Status PublishReliable(const Message& message, milliseconds timeout) override {
        return PublishBatch(std::span<const Message>(&message, 1), 1, timeout)[0];
    }

    std::vector<Status> PublishBatch(std::span<const Message> messages, size_t window, milliseconds timeout) override {
        const auto deadline = Clock::now() + std::max(timeout, milliseconds(0));
        std::vector<Status> statuses(messages.size());
        if (window == 0) {
            for (Status& s : statuses) s = Status::InvalidArgument("PublishBatch: the window must be at least 1");
            return statuses;
        }
        std::vector<Outgoing> items;
        items.reserve(messages.size());
        std::vector<size_t> todo;
        // Once a message of a key fails, the key's later messages in the batch are not published.
        std::unordered_set<std::string_view> failed_keys;
        for (size_t i = 0; i < messages.size(); ++i) {
            const Message& m = messages[i];
            items.push_back(Outgoing{&m, m.destination, rabbit::RoutingKeyFor(m), nullptr});
            if (!m.key.empty() && failed_keys.contains(m.key)) {
                statuses[i] = EarlierFailed(m);
                continue;
            }
            statuses[i] = CheckMessage(m);
            if (statuses[i].ok()) {
                todo.push_back(i);
            } else if (!m.key.empty()) {
                failed_keys.insert(m.key);
            }
        }
        if (!todo.empty()) {
            core_->Publish(items, todo, window, false, true, deadline, statuses);
            // Unsent messages whose key failed earlier in the batch say so (the others say why nothing was sent).
            failed_keys.clear();
            for (size_t i : todo) {
                const Message& m = messages[i];
                if (m.key.empty()) continue;
                if (failed_keys.contains(m.key)) {
                    if (statuses[i].message().starts_with(kNotPublished)) statuses[i] = EarlierFailed(m);
                } else if (!statuses[i].ok()) {
                    failed_keys.insert(m.key);
                }
            }
        }
        return statuses;
    }

    Result<std::unique_ptr<BrokerConsumer>> Consume(std::string_view destination, std::string_view group,
                                                    const ConsumeOptions& options) override {
        KEEL_RETURN_IF_ERROR(rabbit::CheckName("destination", destination));
        KEEL_RETURN_IF_ERROR(rabbit::CheckName("group", group));
        if (options.prefetch < 1 || options.prefetch > 65535) {
            return Status::InvalidArgument(
                fmt::format("the prefetch must be from 1 to 65535 (got {})", options.prefetch));
        }
        auto consumer = std::make_unique<RabbitConsumer>(core_, std::string(destination), std::string(group), options);
        KEEL_RETURN_IF_ERROR(consumer->Connect());
        return std::unique_ptr<BrokerConsumer>(std::move(consumer));
    }

    Result<std::vector<DeadLetter>> ListDeadLetters(std::string_view destination, std::string_view group,
                                                    size_t limit) override {
        KEEL_RETURN_IF_ERROR(rabbit::CheckName("destination", destination));
        KEEL_RETURN_IF_ERROR(rabbit::CheckName("group", group));
        const GroupNames names = rabbit::NamesFor(destination, group);
        const auto deadline = Clock::now() + core_->config().io_timeout;
        std::vector<DeadLetter> out;
        Status s = core_->WithConn(deadline, [&](AmqpConn& c, bool&) -> Status {
            out.clear();
            KEEL_RETURN_IF_ERROR(CheckGroupExists(c, names, destination, group, deadline));
            uint64_t last_tag = 0;
            Status browse;
            while (limit == 0 || out.size() < limit) {
                c.SetRpcDeadline(deadline);
                std::optional<BrowsedDeadLetter> b;
                browse = BrowseOne(c, names.dlq, destination, b, last_tag);
                if (!browse.ok() || !b.has_value()) break;
                out.push_back(std::move(b->letter));
            }
            if (!c.usable()) return browse;
            Status requeued = Requeue(c, last_tag);
            return browse.ok() ? requeued : browse;
        });
        if (!s.ok()) return s;
        return out;
    }

    Result<size_t> ReplayDeadLetters(std::string_view destination, std::string_view group,
                                     std::span<const std::string> ids) override {
        KEEL_RETURN_IF_ERROR(rabbit::CheckName("destination", destination));
        KEEL_RETURN_IF_ERROR(rabbit::CheckName("group", group));
        const GroupNames names = rabbit::NamesFor(destination, group);
        const auto deadline = Clock::now() + core_->config().io_timeout;
        std::set<std::string, std::less<>> wanted(ids.begin(), ids.end());
        size_t replayed = 0;
        Status s = core_->WithConn(deadline, [&](AmqpConn& c, bool& retry_safe) -> Status {
            KEEL_RETURN_IF_ERROR(CheckGroupExists(c, names, destination, group, deadline));
            wanted = std::set<std::string, std::less<>>(ids.begin(), ids.end());
            uint64_t kept_tag = 0;
            Status moved = MoveDeadLetters(c, names, destination, ids, wanted, deadline, kept_tag, replayed);
            if (replayed > 0) retry_safe = false;
            if (!c.usable()) return moved;
            Status requeued = Requeue(c, kept_tag);
            return moved.ok() ? requeued : moved;
        });
        if (!s.ok()) return s;
        return replayed;
    }

private:
    static Status EarlierFailed(const Message& m) {
        return Status::FailedPrecondition(
            fmt::format("message {} was not published: an earlier message of key '{}' in the same batch failed",
                        m.message_id.ToString(), m.key.substr(0, 64)));
    }

    // Reads the dead-letter queue and moves the wanted dead letters into the group's queue (each published with a
    // confirm, then acked). Those not wanted stay unacked, up to `kept_tag`: the caller requeues them.
    static Status MoveDeadLetters(AmqpConn& c, const GroupNames& names, std::string_view destination,
                                  std::span<const std::string> ids, std::set<std::string, std::less<>>& wanted,
                                  Clock::time_point deadline, uint64_t& kept_tag, size_t& replayed) {
        uint64_t last_tag = 0;
        for (;;) {
            if (!ids.empty() && wanted.empty()) return Status::Ok();
            c.SetRpcDeadline(deadline);
            std::optional<BrowsedDeadLetter> b;
            KEEL_RETURN_IF_ERROR(BrowseOne(c, names.dlq, destination, b, last_tag));
            if (!b.has_value()) return Status::Ok();
            if (b->letter.id.starts_with("not-keel-")) {
                kept_tag = b->tag;
                continue;
            }
            if (!ids.empty()) {
                auto it = wanted.find(b->letter.id);
                if (it == wanted.end()) {
                    kept_tag = b->tag;
                    continue;
                }
                wanted.erase(it);
            }
            // Into the group's queue only (the default exchange routes by queue name), as a fresh message. Until it
            // is acked, the dead letter counts as kept (requeued if this fails).
            const uint64_t kept_before = kept_tag;
            kept_tag = b->tag;
            const Outgoing item{&b->letter.message, "", names.queue, nullptr};
            std::vector<Status> statuses(1);
            (void)PublishOn(c, std::span<const Outgoing>(&item, 1), {0}, 1, true, false, deadline, statuses);
            KEEL_RETURN_IF_ERROR(statuses[0]);
            IoGuard guard(c, deadline);
            const int rc = amqp_basic_ack(c.get(), AmqpConn::kChannel, b->tag, 0);
            if (rc != AMQP_STATUS_OK) {
                return c.LibStatus(rc, fmt::format("removing a replayed message from '{}'", names.dlq));
            }
            kept_tag = kept_before;
            ++replayed;
        }
    }

    // Gives back every message this channel read with basic.get and did not ack, up to `last_tag` (the highest of
    // them: nack with `multiple` covers the unacknowledged tags up to it; it must not be an acked one).
    static Status Requeue(AmqpConn& c, uint64_t last_tag) {
        if (last_tag == 0) return Status::Ok();
        IoGuard guard(c, Clock::now() + c.config().io_timeout);
        const int rc = amqp_basic_nack(c.get(), AmqpConn::kChannel, last_tag, 1, 1);
        if (rc != AMQP_STATUS_OK) return c.LibStatus(rc, "requeueing browsed dead letters");
        return Status::Ok();
    }

    std::shared_ptr<Core> core_;
};

}  // namespace

Result<std::unique_ptr<Broker>> OpenRabbitBroker(const ParsedUri& uri, const BrokerOptions& options) {
    auto config = rabbit::ParseRabbitUri(uri);
    if (!config.ok()) return config.status();
    if (options.reconnect_min.count() <= 0 || options.reconnect_max < options.reconnect_min) {
        return Status::InvalidArgument(
            fmt::format("BrokerOptions: reconnect_min ({} ms) must be positive and at most reconnect_max ({} ms)",
                        options.reconnect_min.count(), options.reconnect_max.count()));
    }
    auto core = std::make_shared<Core>(std::move(*config), options);
    KEEL_RETURN_IF_ERROR(core->Connect());
    return std::unique_ptr<Broker>(std::make_unique<RabbitBroker>(std::move(core)));
}

}  // namespace keel::detail
