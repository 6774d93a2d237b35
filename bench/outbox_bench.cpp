// outbox: the transactional outbox end to end — units of work on an sqlite: store commit an event and an outbox row
// each (4 producer threads in the throughput case, keys split among them; on sqlite: units of work that wait for the
// write lock share one commit, StoreOptions::max_units_per_commit), a Relay publishes the rows (PublishBatch, window 100), a Consumer with its
// inbox (its own sqlite: database) handles the deliveries in batches of up to 100 per unit of work (max_batch) — on
// `local:` and on RabbitMQ (KEEL_TEST_RABBITMQ; scripts/run-bench.sh starts the test server). Baseline in the same
// run: a raw windowed confirmed-publish loop to the same broker. KEEL_BENCH_OUTBOX_PRODUCERS=1 KEEL_BENCH_OUTBOX_BATCH=1
// gives the earlier set-up (one producer thread, a unit of work per delivery).
//
//   outbox/throughput/<broker>   N messages over 100 keys: first commit to last handled     target >= 0.7x raw
//   raw/publish/local            local:'s own PublishBatch, window 100, N messages (one commit per window)
//   raw/publish/rabbitmq         librabbitmq: basic.publish with 100 unconfirmed, persistent, counting basic.acks
//   raw/publish+consume/rabbitmq the same with a raw consumer (prefetch 100, an ack per 100): the broker's own
//                                end-to-end ceiling on this machine, for reference
//   outbox/latency/<broker>      commits at a steady 500/s; commit-to-handler p50 / p99      target p99 < 20 ms (local:)
//
// The consumer checks the order of every key (a message out of order or handled twice fails the run). Both stores
// run with Durability::kNormal (a unit of work per message: with kFull each commit waits for an fsync; the
// uow/commit/full cases measure that); local: runs with its default durability=full. Each repetition uses fresh
// databases and a fresh destination.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "bench_common.hpp"
#include "keel/broker.hpp"
#include "keel/consumer.hpp"
#include "keel/outbox.hpp"
#include "keel/unit_of_work.hpp"

#ifdef KEEL_BENCH_WITH_RABBITMQ
#include "broker/rabbitmq/amqp_conn.hpp"
#include "broker/rabbitmq/rabbit_uri.hpp"
#include "store/registry.hpp"
#endif

namespace {

using namespace keel;
using namespace keel::bench;
using Clock = std::chrono::steady_clock;

constexpr int kKeys = 100;
constexpr size_t kWindow = 100;
constexpr size_t kPayloadBytes = 200;
constexpr double kLatencyRate = 500.0;  // events/s

struct Config {
    int64_t throughput_messages = 0;
    int64_t latency_messages = 0;
    int producers = 4;    // KEEL_BENCH_OUTBOX_PRODUCERS: producer threads of the throughput case (keys split among them)
    int consumer_batch = 100;  // KEEL_BENCH_OUTBOX_BATCH: ConsumerOptions::max_batch
};
Config g_config;

enum class Kind { kLocal, kRabbit };

std::string RabbitUri() {
    const char* env = std::getenv("KEEL_TEST_RABBITMQ");
    if (env == nullptr || *env == '\0') return {};
    std::string uri = env;
    // Queues of finished runs go away by themselves.
    return uri + (uri.find('?') == std::string::npos ? "?" : "&") + "queue_expires=120000";
}

// The broker URI of one repetition (a fresh local: file), or throws.
std::string BrokerUri(Kind kind) {
    if (kind == Kind::kLocal) return "local://" + NewDbPath("broker");
    std::string uri = RabbitUri();
    if (uri.empty()) throw std::runtime_error("KEEL_TEST_RABBITMQ is not set (scripts/services.sh start rabbitmq)");
    return uri;
}

std::unique_ptr<Broker> MustOpenBroker(const std::string& uri) {
    auto b = OpenBroker(uri);
    if (!b.ok()) throw std::runtime_error("OpenBroker: " + b.status().ToString());
    return std::move(*b);
}

void Check(const Status& s, const char* what) {
    if (!s.ok()) throw std::runtime_error(std::string(what) + ": " + s.ToString());
}

std::string FreshDestination() {
    return "bench-" + Uuid::Generate().ToString().substr(24);
}

// "<key index> <sequence within the key> <steady-clock ns before commit> <padding>"
std::string Payload(int key, int64_t seq, int64_t stamp_ns) {
    std::string p = fmt::format("{} {} {} ", key, seq, stamp_ns);
    p.resize(kPayloadBytes, 'p');
    return p;
}

int64_t NowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// One outbox pipeline: producer store + relay + consumer (own store and broker object, as another service would have).
class Pipeline {
public:
    explicit Pipeline(Kind kind) : dest_(FreshDestination()) {
        const std::string uri = BrokerUri(kind);
        relay_broker_ = MustOpenBroker(uri);
        consumer_broker_ = MustOpenBroker(uri);
        store_ = OpenKeel(NewDbPath("service"), Durability::kNormal);
        inbox_store_ = OpenKeel(NewDbPath("inbox"), Durability::kNormal);
        {
            auto uow = UnitOfWork::Begin(*inbox_store_).value();
            Check(uow.Exec("CREATE TABLE seen (key INTEGER NOT NULL, seq INTEGER NOT NULL)").status(), "CREATE");
            Check(uow.Commit(), "commit");
        }
        Check(consumer_broker_->Declare(dest_, "bench"), "Declare");
        next_.assign(kKeys, 0);
        ConsumerOptions co;
        co.name = "bench";
        co.consume.prefetch = 256;
        co.receive_timeout = std::chrono::milliseconds(50);
        co.max_batch = g_config.consumer_batch;
        auto consumer = Consumer::Start(
            *inbox_store_, *consumer_broker_, dest_, "bench",
            [this](UnitOfWork& uow, const Delivery& d) { return Handle(uow, d); }, co);
        if (!consumer.ok()) throw std::runtime_error("Consumer::Start: " + consumer.status().ToString());
        consumer_ = std::move(*consumer);
        RelayOptions ro;
        ro.window = kWindow;
        ro.batch = 500;
        auto relay = Relay::Start(*store_, *relay_broker_, ro);
        if (!relay.ok()) throw std::runtime_error("Relay::Start: " + relay.status().ToString());
        relay_ = std::move(*relay);
    }

    ~Pipeline() {
        if (relay_) relay_->Stop();
        if (consumer_) consumer_->Stop();
    }

    // Commits message `i` (key i % kKeys) in its own unit of work with an event of its stream. `event` is the
    // calling thread's scratch.
    void Commit(int64_t i, EventData& event) {
        const int key = static_cast<int>(i % kKeys);
        FillEvent(event, i);
        auto uow = UnitOfWork::Begin(*store_).value();
        Check(uow.Append(StreamName(key), ExpectedVersion::Any(), std::span<const EventData>(&event, 1)).status(),
              "Append");
        Check(uow.Enqueue(Message{dest_, StreamName(key), Uuid::Generate(), Payload(key, i / kKeys, NowNs()), {}})
                  .status(),
              "Enqueue");
        Check(uow.Commit(), "Commit");
    }

    // Waits until `n` messages were handled (or throws after `timeout`).
    void Commit(int64_t i) { Commit(i, event_); }

    // Commits messages 0..n-1 from `threads` threads; thread t commits the keys k with k % threads == t, in order,
    // so each key's messages still commit in sequence.
    void CommitParallel(int64_t n, int threads) {
        if (threads <= 1 || kKeys % threads != 0) {
            for (int64_t i = 0; i < n; ++i) Commit(i);
            return;
        }
        std::vector<std::thread> workers;
        std::mutex error_mu;
        std::string error;
        for (int t = 0; t < threads; ++t) {
            workers.emplace_back([this, n, t, threads, &error_mu, &error] {
                EventData event;
                try {
                    for (int64_t i = t; i < n; i += threads) Commit(i, event);
                } catch (const std::exception& e) {
                    std::lock_guard lock(error_mu);
                    error = e.what();
                }
            });
        }
        for (std::thread& w : workers) w.join();
        if (!error.empty()) throw std::runtime_error(error);
    }

    void WaitHandled(int64_t n, std::chrono::seconds timeout) {
        const auto deadline = Clock::now() + timeout;
        while (handled_.load() < n) {
            if (Clock::now() > deadline) {
                throw std::runtime_error(fmt::format("only {} of {} messages handled in {} s (relay: {})",
                                                     handled_.load(), n, timeout.count(),
                                                     relay_->stats().last_error));
            }
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        std::lock_guard lock(mu_);
        if (!violation_.empty()) throw std::runtime_error(violation_);
    }

    std::vector<double> LatenciesMs() {
        std::lock_guard lock(mu_);
        return latencies_ms_;
    }

private:
    Status Handle(UnitOfWork& uow, const Delivery& d) {
        const int64_t now = NowNs();
        int key = 0;
        long long seq = 0, stamp = 0;
        if (std::sscanf(d.message.payload.c_str(), "%d %lld %lld", &key, &seq, &stamp) != 3 || key < 0 ||
            key >= kKeys) {
            return Status::InvalidArgument("bad payload");
        }
        KEEL_RETURN_IF_ERROR(uow.Exec("INSERT INTO seen (key, seq) VALUES (?, ?)", {int64_t{key}, int64_t{seq}})
                                 .status());
        std::lock_guard lock(mu_);
        int64_t& expected = next_[static_cast<size_t>(key)];
        if (seq != expected && violation_.empty()) {
            violation_ = fmt::format("key {}: got message {} where {} was next (order per key broken)", key, seq,
                                     expected);
        }
        expected = seq + 1;
        latencies_ms_.push_back(static_cast<double>(now - stamp) / 1e6);
        ++handled_;
        return Status::Ok();
    }

    std::string dest_;
    std::unique_ptr<Broker> relay_broker_, consumer_broker_;
    std::unique_ptr<EventStore> store_, inbox_store_;
    std::unique_ptr<Consumer> consumer_;
    std::unique_ptr<Relay> relay_;
    EventData event_;
    std::mutex mu_;
    std::vector<int64_t> next_;
    std::vector<double> latencies_ms_;
    std::string violation_;
    std::atomic<int64_t> handled_{0};
};

void Throughput(benchmark::State& state, Kind kind) {
    const int64_t n = g_config.throughput_messages;
    try {
        for (auto _ : state) {
            Pipeline p(kind);
            const auto t0 = Clock::now();
            p.CommitParallel(n, g_config.producers);
            const auto committed = Clock::now();
            p.WaitHandled(n, std::chrono::seconds(600));
            const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
            state.SetIterationTime(secs);
            state.counters["commits_per_s"] = static_cast<double>(n) /
                                              std::chrono::duration<double>(committed - t0).count();
        }
        state.SetItemsProcessed(n * static_cast<int64_t>(state.iterations()));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

// The producers alone: the same units of work (event + outbox row) from the same threads, with no relay and no
// consumer: the cap of outbox/throughput whatever the broker. On sqlite: a unit of work holds the write lock from
// Begin to Commit; units that wait behind it share its commit (StoreOptions::max_units_per_commit; 1 = each unit
// commits alone, the baseline of the "alone" cases).
void CommitOnly(benchmark::State& state, Durability durability, size_t max_units_per_commit) {
    const int64_t n = durability == Durability::kFull ? g_config.throughput_messages / 4 : g_config.throughput_messages;
    try {
        for (auto _ : state) {
            StoreOptions options;
            options.durability = durability;
            options.max_units_per_commit = max_units_per_commit;
            auto store = OpenKeel(NewDbPath("service"), options);
            const std::string dest = FreshDestination();
            std::vector<std::thread> workers;
            std::mutex error_mu;
            std::string error;
            const int threads = kKeys % g_config.producers == 0 ? g_config.producers : 1;
            const auto t0 = Clock::now();
            for (int t = 0; t < threads; ++t) {
                workers.emplace_back([&, t] {
                    EventData event;
                    try {
                        for (int64_t i = t; i < n; i += threads) {
                            const int key = static_cast<int>(i % kKeys);
                            FillEvent(event, i);
                            auto uow = UnitOfWork::Begin(*store).value();
                            Check(uow.Append(StreamName(key), ExpectedVersion::Any(),
                                             std::span<const EventData>(&event, 1))
                                      .status(),
                                  "Append");
                            Check(uow.Enqueue(Message{dest, StreamName(key), Uuid::Generate(),
                                                      Payload(key, i / kKeys, 0), {}})
                                      .status(),
                                  "Enqueue");
                            Check(uow.Commit(), "Commit");
                        }
                    } catch (const std::exception& e) {
                        std::lock_guard lock(error_mu);
                        error = e.what();
                    }
                });
            }
            for (std::thread& w : workers) w.join();
            state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
            if (!error.empty()) throw std::runtime_error(error);
        }
        state.SetItemsProcessed(n * static_cast<int64_t>(state.iterations()));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

double Percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const auto i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

void Latency(benchmark::State& state, Kind kind) {
    const int64_t n = g_config.latency_messages;
    try {
        for (auto _ : state) {
            Pipeline p(kind);
            const auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / kLatencyRate));
            const auto t0 = Clock::now();
            for (int64_t i = 0; i < n; ++i) {
                std::this_thread::sleep_until(t0 + period * i);
                p.Commit(i);
            }
            p.WaitHandled(n, std::chrono::seconds(120));
            state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
            const std::vector<double> ms = p.LatenciesMs();
            state.counters["p50_ms"] = Percentile(ms, 0.50);
            state.counters["p99_ms"] = Percentile(ms, 0.99);
            state.counters["max_ms"] = Percentile(ms, 1.0);
        }
        state.SetItemsProcessed(n * static_cast<int64_t>(state.iterations()));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

std::vector<Message> RawMessages(const std::string& dest, int64_t n) {
    std::vector<Message> messages(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        Message& m = messages[static_cast<size_t>(i)];
        const int key = static_cast<int>(i % kKeys);
        m.destination = dest;
        m.key = StreamName(key);
        m.message_id = Uuid::Generate();
        m.payload = Payload(key, i / kKeys, 0);
    }
    return messages;
}

// local:'s own publish API: one PublishBatch of N with window 100 (one commit per window), to a destination with
// one group, as the relay's.
void RawLocal(benchmark::State& state) {
    const int64_t n = g_config.throughput_messages;
    try {
        for (auto _ : state) {
            auto broker = MustOpenBroker(BrokerUri(Kind::kLocal));
            const std::string dest = FreshDestination();
            Check(broker->Declare(dest, "bench"), "Declare");
            const std::vector<Message> messages = RawMessages(dest, n);
            const auto t0 = Clock::now();
            const std::vector<Status> st = broker->PublishBatch(messages, kWindow, std::chrono::minutes(10));
            state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
            for (const Status& s : st) Check(s, "PublishBatch");
        }
        state.SetItemsProcessed(n * static_cast<int64_t>(state.iterations()));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

#ifdef KEEL_BENCH_WITH_RABBITMQ
// librabbitmq directly: persistent basic.publish to the destination's exchange (routing key = the key) with up to 100
// unconfirmed, reading basic.acks (multiple ones included) as they come. The group's queue is keel's (Declare).
// A raw consumer of `queue` on its own connection: prefetch kWindow, one basic.ack (multiple) per kWindow
// deliveries — the least work RabbitMQ can be given for delivering. Counts deliveries into `received`.
void RawConsume(const keel::detail::rabbit::RabbitConfig& config, const std::string& queue, uint64_t total,
                std::atomic<uint64_t>& received, std::string& error) {
    namespace rb = keel::detail::rabbit;
    try {
        auto conn = rb::AmqpConn::Open(config, rb::Clock::now() + std::chrono::seconds(10), /*confirms=*/false);
        if (!conn.ok()) throw std::runtime_error(conn.status().ToString());
        amqp_connection_state_t c = (*conn)->get();
        amqp_basic_qos(c, 1, 0, static_cast<uint16_t>(kWindow), 0);
        amqp_basic_consume(c, 1, rb::Bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
        if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL) throw std::runtime_error("raw basic.consume");
        uint64_t got = 0;
        while (got < total) {
            amqp_maybe_release_buffers(c);
            amqp_envelope_t env;
            timeval tv = rb::Remaining(rb::Clock::now() + std::chrono::seconds(30));
            if (amqp_consume_message(c, &env, &tv, 0).reply_type != AMQP_RESPONSE_NORMAL) {
                throw std::runtime_error("raw: no delivery within 30 s");
            }
            ++got;
            if (got % kWindow == 0 || got == total) amqp_basic_ack(c, 1, env.delivery_tag, /*multiple=*/1);
            amqp_destroy_envelope(&env);
            received.store(got);
        }
    } catch (const std::exception& e) {
        error = e.what();
    }
}

void RawRabbit(benchmark::State& state, bool consume) {
    namespace rb = keel::detail::rabbit;
    const int64_t n = g_config.throughput_messages;
    try {
        const std::string uri = BrokerUri(Kind::kRabbit);
        auto parsed = keel::detail::ParseUri(uri);
        if (!parsed.ok()) throw std::runtime_error(parsed.status().ToString());
        auto config = rb::ParseRabbitUri(*parsed);
        if (!config.ok()) throw std::runtime_error(config.status().ToString());
        auto broker = MustOpenBroker(uri);
        for (auto _ : state) {
            const std::string dest = FreshDestination();
            Check(broker->Declare(dest, "bench"), "Declare");
            const std::vector<Message> messages = RawMessages(dest, n);
            std::vector<std::string> ids;
            ids.reserve(messages.size());
            for (const Message& m : messages) ids.push_back(m.message_id.ToString());
            auto conn = rb::AmqpConn::Open(*config, rb::Clock::now() + std::chrono::seconds(10), /*confirms=*/true);
            if (!conn.ok()) throw std::runtime_error(conn.status().ToString());
            amqp_connection_state_t c = (*conn)->get();
            std::atomic<uint64_t> received{0};
            std::string consume_error;
            std::jthread consumer;  // joins on the way out, also when publishing fails
            if (consume) {
                consumer = std::jthread(RawConsume, std::cref(*config), rb::NamesFor(dest, "bench").queue,
                                       static_cast<uint64_t>(n), std::ref(received), std::ref(consume_error));
            }
            const auto t0 = Clock::now();
            uint64_t sent = 0, confirmed = 0;
            const auto total = static_cast<uint64_t>(n);
            while (confirmed < total) {
                while (sent < total && sent - confirmed < kWindow) {
                    const Message& m = messages[sent];
                    amqp_basic_properties_t props{};
                    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
                    props.delivery_mode = 2;
                    props.message_id = rb::Bytes(ids[sent]);
                    if (amqp_basic_publish(c, 1, rb::Bytes(dest), rb::Bytes(m.key), 0, 0, &props,
                                           rb::Bytes(m.payload)) != AMQP_STATUS_OK) {
                        throw std::runtime_error("raw basic.publish failed");
                    }
                    ++sent;
                }
                amqp_maybe_release_buffers(c);
                amqp_frame_t frame{};
                timeval tv = rb::Remaining(rb::Clock::now() + std::chrono::seconds(30));
                if (amqp_simple_wait_frame_noblock(c, &frame, &tv) != AMQP_STATUS_OK) {
                    throw std::runtime_error("raw: no confirm within 30 s");
                }
                if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
                    const auto* ack = static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
                    confirmed = ack->multiple ? ack->delivery_tag : confirmed + 1;
                } else if (frame.frame_type == AMQP_FRAME_METHOD &&
                           frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
                    throw std::runtime_error("raw: basic.nack");
                }
            }
            if (consume) consumer.join();
            if (!consume_error.empty()) throw std::runtime_error(consume_error);
            state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
        }
        state.SetItemsProcessed(n * static_cast<int64_t>(state.iterations()));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}
#endif

void Register(const std::string& name, void (*fn)(benchmark::State&)) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
    g_config.throughput_messages = Scaled(20'000, 200);
    g_config.latency_messages = Scaled(2'500, 100);
    if (const char* v = std::getenv("KEEL_BENCH_OUTBOX_PRODUCERS"); v != nullptr && *v != '\0') {
        g_config.producers = std::clamp(std::atoi(v), 1, 100);
    }
    if (const char* v = std::getenv("KEEL_BENCH_OUTBOX_BATCH"); v != nullptr && *v != '\0') {
        g_config.consumer_batch = std::clamp(std::atoi(v), 1, 10'000);
    }
    const bool rabbit = !RabbitUri().empty();
#ifndef KEEL_BENCH_WITH_RABBITMQ
    const bool built_with_rabbit = false;
#else
    const bool built_with_rabbit = true;
#endif

    SummaryReporter reporter("outbox", "outbox -> relay -> broker -> consumer with inbox, against raw publishing");
    reporter.Setting("throughput", fmt::format("{} messages of {} bytes over {} keys per repetition; relay batch 500, "
                                               "window {}; one unit of work per message (event + outbox row) from {} "
                                               "producer thread(s) (KEEL_BENCH_OUTBOX_PRODUCERS, keys split among "
                                               "them)",
                                               g_config.throughput_messages, kPayloadBytes, kKeys, kWindow,
                                               g_config.producers));
    reporter.Setting("consumer", fmt::format("Consumer max_batch {} (KEEL_BENCH_OUTBOX_BATCH): up to that many ready "
                                             "deliveries in one unit of work (inbox row + handler each), acked "
                                             "together",
                                             g_config.consumer_batch));
    reporter.Setting("latency", fmt::format("{} messages committed at a steady {:.0f}/s; latency from just before the "
                                            "producer's Commit to the consumer's handler",
                                            g_config.latency_messages, kLatencyRate));
    reporter.Setting("stores", "sqlite: Durability::kNormal (service and inbox databases); local: durability=full");
    reporter.Setting("rabbitmq", rabbit && built_with_rabbit ? "KEEL_TEST_RABBITMQ (quorum queues)"
                                                             : "not measured (KEEL_TEST_RABBITMQ unset or not built)");

    reporter.Case("outbox/throughput/local", "commit -> relay -> local: -> consumer + inbox, end to end");
    reporter.Case("raw/publish/local", "local: PublishBatch, window 100");
    reporter.Ratio("outbox_throughput local", "outbox/throughput/local", "raw/publish/local", 0.7);
    reporter.Case("outbox/throughput/local", "producer's unit-of-work commit rate alone", "commits/s", "commits_per_s");
    reporter.Case("uow/commit/sqlite", "the producers' units of work alone (no relay, no consumer): the cap");
    reporter.Case("uow/commit/sqlite/alone", "the same with max_units_per_commit = 1 (each unit commits alone)");
    reporter.Case("uow/commit/full", "the same units of work, Durability::kFull (a commit waits for fsync)");
    reporter.Case("uow/commit/full/alone", "kFull, max_units_per_commit = 1");
    reporter.Ratio("uow_shared_commits normal", "uow/commit/sqlite", "uow/commit/sqlite/alone", std::nullopt);
    reporter.Ratio("uow_shared_commits full", "uow/commit/full", "uow/commit/full/alone",
                   std::nullopt);
    reporter.Case("outbox/latency/local", "commit-to-handler p50 at 500/s", "ms", "p50_ms");
    reporter.Case("outbox/latency/local", "commit-to-handler p99 at 500/s", "ms", "p99_ms");
    reporter.Ceiling("outbox_latency local p99 (worst run)", "outbox/latency/local", "p99_ms", 20.0, "ms");
    Register("outbox/throughput/local", [](benchmark::State& s) { Throughput(s, Kind::kLocal); });
    Register("raw/publish/local", RawLocal);
    Register("uow/commit/sqlite", [](benchmark::State& s) { CommitOnly(s, Durability::kNormal, 64); });
    Register("uow/commit/sqlite/alone", [](benchmark::State& s) { CommitOnly(s, Durability::kNormal, 1); });
    Register("uow/commit/full", [](benchmark::State& s) { CommitOnly(s, Durability::kFull, 64); });
    Register("uow/commit/full/alone", [](benchmark::State& s) { CommitOnly(s, Durability::kFull, 1); });
    Register("outbox/latency/local", [](benchmark::State& s) { Latency(s, Kind::kLocal); });
#ifdef KEEL_BENCH_WITH_RABBITMQ
    if (rabbit) {
        reporter.Case("outbox/throughput/rabbitmq", "commit -> relay -> RabbitMQ -> consumer + inbox, end to end");
        reporter.Case("raw/publish/rabbitmq", "librabbitmq, 100 unconfirmed, persistent");
        reporter.Ratio("outbox_throughput rabbitmq", "outbox/throughput/rabbitmq", "raw/publish/rabbitmq", 0.7);
        reporter.Case("raw/publish+consume/rabbitmq",
                      "the same publishes with a raw consumer on a second connection (prefetch 100, one ack per 100): "
                      "what the broker alone can carry end to end here");
        reporter.Ratio("outbox_throughput rabbitmq vs raw end to end", "outbox/throughput/rabbitmq",
                       "raw/publish+consume/rabbitmq", std::nullopt);
        reporter.Case("outbox/latency/rabbitmq", "commit-to-handler p50 at 500/s", "ms", "p50_ms");
        reporter.Case("outbox/latency/rabbitmq", "commit-to-handler p99 at 500/s", "ms", "p99_ms");
        Register("outbox/throughput/rabbitmq", [](benchmark::State& s) { Throughput(s, Kind::kRabbit); });
        Register("raw/publish/rabbitmq", [](benchmark::State& s) { RawRabbit(s, /*consume=*/false); });
        Register("raw/publish+consume/rabbitmq", [](benchmark::State& s) { RawRabbit(s, /*consume=*/true); });
        Register("outbox/latency/rabbitmq", [](benchmark::State& s) { Latency(s, Kind::kRabbit); });
    }
#endif
    return RunBenchmarks(argc, argv, reporter);
}
