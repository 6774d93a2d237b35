// The outbox relay against the embedded local: broker: everything committed is published, in order per key, after
// commit only, by one relay at a time, again after a failed publish, and again on request (republish).

#include "keel/outbox.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "keel/consumer.hpp"
#include "keel/unit_of_work.hpp"
#include "store/backend.hpp"

namespace keel {
namespace {

// Forwards to a real broker; fails the publish of chosen messages (fault injection through the interface).
class FaultyBroker final : public Broker {
public:
    explicit FaultyBroker(Broker& inner) : inner_(inner) {}
    std::atomic<int> fail_next_batches_at{-1};  // index in the next batch to fail, -1: none

    Status Declare(std::string_view d, std::string_view g) override { return inner_.Declare(d, g); }
    Status PublishReliable(const Message& m, std::chrono::milliseconds t) override {
        return inner_.PublishReliable(m, t);
    }
    std::vector<Status> PublishBatch(std::span<const Message> messages, size_t window,
                                     std::chrono::milliseconds timeout) override {
        const int fail_at = fail_next_batches_at.exchange(-1);
        if (fail_at < 0 || static_cast<size_t>(fail_at) >= messages.size()) {
            return inner_.PublishBatch(messages, window, timeout);
        }
        // Publish the ones before the failure (and, to be nasty, one after it too), fail the chosen one.
        std::vector<Status> out = inner_.PublishBatch(messages.subspan(0, static_cast<size_t>(fail_at)), window, timeout);
        out.push_back(Status::Unavailable("injected publish failure"));
        if (static_cast<size_t>(fail_at) + 1 < messages.size()) {
            auto after = inner_.PublishBatch(messages.subspan(static_cast<size_t>(fail_at) + 1, 1), window, timeout);
            out.insert(out.end(), after.begin(), after.end());
        }
        return out;
    }
    Result<std::unique_ptr<BrokerConsumer>> Consume(std::string_view d, std::string_view g,
                                                    const ConsumeOptions& o) override {
        return inner_.Consume(d, g, o);
    }
    Result<std::vector<DeadLetter>> ListDeadLetters(std::string_view d, std::string_view g, size_t l) override {
        return inner_.ListDeadLetters(d, g, l);
    }
    Result<size_t> ReplayDeadLetters(std::string_view d, std::string_view g, std::span<const std::string> ids) override {
        return inner_.ReplayDeadLetters(d, g, ids);
    }

private:
    Broker& inner_;
};

class RelayTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("keel_relay_" + std::to_string(::getpid()) + "_" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
        store_ = OpenStore("sqlite://" + (dir_ / "service.db").string()).value();
        broker_ = OpenBroker("local://" + (dir_ / "broker.db").string()).value();
        ASSERT_TRUE(broker_->Declare("orders", "billing").ok());
        consumer_ = broker_->Consume("orders", "billing").value();
    }
    void TearDown() override {
        consumer_.reset();
        broker_.reset();
        store_.reset();
        std::filesystem::remove_all(dir_);
    }

    // Commits `n` messages round-robin over `keys` keys; payload "<key>:<seq within key>".
    void Commit(int n, int keys, int start = 0) {
        auto uow = UnitOfWork::Begin(*store_).value();
        for (int i = start; i < start + n; ++i) {
            const std::string key = "Order-" + std::to_string(i % keys);
            ASSERT_TRUE(uow.Enqueue(OutboxMessage{"orders", key, {}, key + ":" + std::to_string(i / keys), {}}).ok());
        }
        ASSERT_TRUE(uow.Commit().ok());
    }

    // Receives (and acks) until `n` deliveries, then whatever else arrives within `quiet` (duplicates), or 10 s in
    // all; returns payloads per key in arrival order.
    std::map<std::string, std::vector<std::string>> Receive(size_t n, size_t* total = nullptr,
                                                            std::chrono::milliseconds quiet = {}) {
        std::map<std::string, std::vector<std::string>> by_key;
        size_t got = 0;
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        bool extended = false;
        while (got < n && std::chrono::steady_clock::now() < deadline) {
            auto d = consumer_->Receive(std::chrono::milliseconds(100));
            if (!d.ok() || !d->has_value()) continue;
            by_key[(*d)->message.key].push_back((*d)->message.payload);
            EXPECT_TRUE(consumer_->Ack(**d).ok());
            ++got;
            if (got == n && quiet.count() > 0 && !extended) {
                extended = true;
                n = SIZE_MAX;
                deadline = std::chrono::steady_clock::now() + quiet;
            }
        }
        if (total != nullptr) *total = got;
        return by_key;
    }

    static void ExpectInOrder(const std::map<std::string, std::vector<std::string>>& by_key, int per_key) {
        for (const auto& [key, payloads] : by_key) {
            ASSERT_EQ(payloads.size(), static_cast<size_t>(per_key)) << key;
            for (int i = 0; i < per_key; ++i) EXPECT_EQ(payloads[static_cast<size_t>(i)], key + ":" + std::to_string(i));
        }
    }

    std::filesystem::path dir_;
    std::unique_ptr<EventStore> store_;
    std::unique_ptr<Broker> broker_;
    std::unique_ptr<BrokerConsumer> consumer_;
};

TEST_F(RelayTest, PublishesEverythingCommittedInOrderPerKey) {
    Commit(600, 6);
    {
        auto rolled_back = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(rolled_back.Enqueue(OutboxMessage{"orders", "Never", {}, "never", {}}).ok());
    }  // not committed: never published
    RelayOptions options;
    options.batch = 64;
    options.window = 16;
    auto relay = Relay::Start(*store_, *broker_, options).value();
    ASSERT_TRUE(relay->Drain(std::chrono::seconds(20)).ok());
    size_t total = 0;
    auto by_key = Receive(600, &total);
    EXPECT_EQ(total, 600u);
    EXPECT_EQ(by_key.count("Never"), 0u);
    ExpectInOrder(by_key, 100);
    EXPECT_EQ(relay->stats().published, 600);
    auto stats = GetOutboxStats(*store_).value();
    EXPECT_EQ(stats.pending, 0);
    EXPECT_EQ(stats.published, 600);
}

TEST_F(RelayTest, IdleRelayWakesOnCommit) {
    RelayOptions options;
    options.poll_interval = std::chrono::seconds(8);  // only the commit notification can make it fast
    auto relay = Relay::Start(*store_, *broker_, options).value();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let it go idle
    const auto start = std::chrono::steady_clock::now();
    Commit(1, 1);
    auto d = consumer_->Receive(std::chrono::seconds(5));
    ASSERT_TRUE(d.ok() && d->has_value());
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(4));
}

TEST_F(RelayTest, FailedPublishIsRetriedAndOrderPerKeyKept) {
    Commit(40, 2);
    FaultyBroker faulty(*broker_);
    faulty.fail_next_batches_at = 7;
    RelayOptions options;
    options.retry_backoff = std::chrono::milliseconds(10);
    auto relay = Relay::Start(*store_, faulty, options).value();
    ASSERT_TRUE(relay->Drain(std::chrono::seconds(20)).ok());
    EXPECT_GE(relay->stats().failures, 1);
    // At least once: the message published after the failed one goes out again; per key, the first occurrence of
    // each payload is in order and nothing is missing.
    size_t total = 0;
    auto by_key = Receive(40, &total, std::chrono::milliseconds(300));
    EXPECT_GE(total, 40u);
    for (auto& [key, payloads] : by_key) {
        std::vector<std::string> firsts;
        for (const auto& p : payloads) {
            if (std::find(firsts.begin(), firsts.end(), p) == firsts.end()) firsts.push_back(p);
        }
        payloads = firsts;
    }
    ExpectInOrder(by_key, 20);
}

TEST_F(RelayTest, OnlyOneRelayPublishesAtATime) {
    Commit(300, 3);
    RelayOptions a;
    a.owner = "relay-a";
    a.batch = 10;
    RelayOptions b = a;
    b.owner = "relay-b";
    auto relay_a = Relay::Start(*store_, *broker_, a).value();
    auto relay_b = Relay::Start(*store_, *broker_, b).value();
    ASSERT_TRUE(relay_a->Drain(std::chrono::seconds(20)).ok());
    relay_a->Stop();
    relay_b->Stop();
    EXPECT_EQ(relay_a->stats().published + relay_b->stats().published, 300);
    size_t total = 0;
    auto by_key = Receive(300, &total, std::chrono::milliseconds(300));
    EXPECT_EQ(total, 300u);  // no row published twice
    ExpectInOrder(by_key, 100);
}

TEST_F(RelayTest, StandbyTakesOverWhenTheLeaseExpires) {
    // A relay that took the lease and died (never renews): the standby waits out the lease, then publishes.
    const int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count();
    ASSERT_TRUE(store_->backend().AcquireLease("outbox-relay", "dead-relay", now, now + 300'000).value());
    Commit(5, 1);
    auto once = RelayOnce(*store_, *broker_);
    EXPECT_EQ(once.status().code(), StatusCode::kFailedPrecondition);
    RelayOptions options;
    options.poll_interval = std::chrono::milliseconds(50);
    auto relay = Relay::Start(*store_, *broker_, options).value();
    ASSERT_TRUE(relay->Drain(std::chrono::seconds(10)).ok());
    EXPECT_EQ(Receive(5).at("Order-0").size(), 5u);
}

TEST_F(RelayTest, RepublishFromAPositionSendsAgain) {
    Commit(10, 1);
    ASSERT_EQ(RelayOnce(*store_, *broker_).value(), 10);
    EXPECT_EQ(Receive(10).at("Order-0").size(), 10u);
    EXPECT_EQ(RepublishOutbox(*store_, 6).value(), 5);
    ASSERT_EQ(RelayOnce(*store_, *broker_).value(), 5);
    auto again = Receive(5).at("Order-0");
    EXPECT_EQ(again, (std::vector<std::string>{"Order-0:5", "Order-0:6", "Order-0:7", "Order-0:8", "Order-0:9"}));
    EXPECT_EQ(RepublishOutbox(*store_, 0).status().code(), StatusCode::kInvalidArgument);
}

// Publishes, then SIGKILLs its own process before the relay can mark the rows published.
class DieAfterPublishBroker final : public Broker {
public:
    explicit DieAfterPublishBroker(Broker& inner) : inner_(inner) {}
    Status Declare(std::string_view d, std::string_view g) override { return inner_.Declare(d, g); }
    Status PublishReliable(const Message& m, std::chrono::milliseconds t) override {
        return inner_.PublishReliable(m, t);
    }
    std::vector<Status> PublishBatch(std::span<const Message> messages, size_t window,
                                     std::chrono::milliseconds timeout) override {
        auto out = inner_.PublishBatch(messages, window, timeout);
        ::kill(::getpid(), SIGKILL);
        return out;
    }
    Result<std::unique_ptr<BrokerConsumer>> Consume(std::string_view d, std::string_view g,
                                                    const ConsumeOptions& o) override {
        return inner_.Consume(d, g, o);
    }
    Result<std::vector<DeadLetter>> ListDeadLetters(std::string_view d, std::string_view g, size_t l) override {
        return inner_.ListDeadLetters(d, g, l);
    }
    Result<size_t> ReplayDeadLetters(std::string_view d, std::string_view g, std::span<const std::string> ids) override {
        return inner_.ReplayDeadLetters(d, g, ids);
    }

private:
    Broker& inner_;
};

// A relay SIGKILLed between publish and mark: after restart it publishes the same rows again; a consumer with an
// inbox sees the duplicate deliveries and applies each message once.
TEST_F(RelayTest, RelayKilledBetweenPublishAndMarkRepublishesAndTheInboxAbsorbsIt) {
    Commit(10, 2);
    consumer_.reset();
    broker_.reset();
    store_.reset();
    const std::string store_uri = "sqlite://" + (dir_ / "service.db").string();
    const std::string broker_uri = "local://" + (dir_ / "broker.db").string();
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        auto store = OpenStore(store_uri);
        auto broker = OpenBroker(broker_uri);
        if (!store.ok() || !broker.ok()) ::_exit(3);
        DieAfterPublishBroker dying(**broker);
        RelayOptions same;
        same.owner = "relay-1";  // a relay restarted under its own name reclaims its lease at once
        (void)RelayOnce(**store, dying, same);
        ::_exit(4);  // not reached: the broker killed us after publishing
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;

    store_ = OpenStore(store_uri).value();
    broker_ = OpenBroker(broker_uri).value();
    EXPECT_EQ(GetOutboxStats(*store_).value().pending, 10);  // published, never marked
    auto uow0 = UnitOfWork::Begin(*store_).value();
    ASSERT_TRUE(uow0.Exec("CREATE TABLE effects (payload TEXT NOT NULL)").ok());
    ASSERT_TRUE(uow0.Commit().ok());
    ConsumerOptions options;
    options.name = "effects";
    options.initial_backoff = std::chrono::milliseconds(5);
    auto handler = [](UnitOfWork& uow, const Delivery& d) {
        return uow.Exec("INSERT INTO effects (payload) VALUES (?)", {d.message.payload}).status();
    };
    auto consumer = Consumer::Start(*store_, *broker_, "orders", "billing", handler, options).value();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (consumer->stats().handled < 10 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(consumer->stats().handled, 10);
    // The restarted relay publishes the ten rows again (the broker already delivered and forgot them).
    RelayOptions same;
    same.owner = "relay-1";
    ASSERT_EQ(RelayOnce(*store_, *broker_, same).value(), 10);
    while (consumer->stats().duplicates < 10 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    consumer->Stop();
    EXPECT_EQ(consumer->stats().duplicates, 10);
    EXPECT_EQ(consumer->stats().handled, 10);
    auto check = UnitOfWork::Begin(*store_).value();
    EXPECT_EQ(check.Query("SELECT count(*) FROM effects").value().Int(0, 0).value(), 10);
    EXPECT_EQ(check.Query("SELECT count(DISTINCT payload) FROM effects").value().Int(0, 0).value(), 10);
}

TEST(RelayMemory, StoreWithoutOutboxIsRefused) {
    auto store = OpenStore("memory:").value();
    auto dir = std::filesystem::temp_directory_path() / ("keel_relay_mem_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto broker = OpenBroker("local://" + (dir / "b.db").string()).value();
    EXPECT_EQ(Relay::Start(*store, *broker).status().code(), StatusCode::kNotSupported);
    broker.reset();
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace keel
