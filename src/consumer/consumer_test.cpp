// Consumers on the local: broker: exactly-once effect through the inbox (duplicates acknowledged and skipped),
// retries with backoff, dead letters with their error, and a consumer SIGKILLed mid-handler losing nothing and
// applying nothing twice — one message per unit of work, and batches (a failing message, a poison message and a
// duplicate in a batch; a crash mid-batch).

#include "keel/consumer.hpp"

#include <atomic>
#include <filesystem>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keel/outbox.hpp"

namespace keel {
namespace {

// Forwards to a real consumer; can lose the next Ack (as when the process dies right after its commit).
class LossyAckConsumer final : public BrokerConsumer {
public:
    explicit LossyAckConsumer(std::unique_ptr<BrokerConsumer> inner) : inner_(std::move(inner)) {}
    std::atomic<bool> lose_next_ack{false};
    Result<std::optional<Delivery>> Receive(std::chrono::milliseconds t) override { return inner_->Receive(t); }
    Status Ack(const Delivery& d) override {
        if (lose_next_ack.exchange(false)) return Status::Ok();  // the broker never hears of it
        return inner_->Ack(d);
    }
    Status Nack(const Delivery& d, std::chrono::milliseconds delay) override { return inner_->Nack(d, delay); }
    Status DeadLetter(const Delivery& d, std::string_view e) override { return inner_->DeadLetter(d, e); }

private:
    std::unique_ptr<BrokerConsumer> inner_;
};

class ConsumerTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ =
            std::filesystem::temp_directory_path() / ("keel_consumer_" + std::to_string(::getpid()) + "_" +
                                                      ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
        store_uri_ = "sqlite://" + (dir_ / "bar.db").string();
        broker_uri_ = "local://" + (dir_ / "broker.db").string();
        store_ = OpenStore(store_uri_).value();
        broker_ = OpenBroker(broker_uri_).value();
        ASSERT_TRUE(broker_->Declare("foo-events", "bar").ok());
        auto uow = UnitOfWork::Begin(*store_).value();
        ASSERT_TRUE(uow.Exec("CREATE TABLE bars (foo_id TEXT NOT NULL, message_id BLOB NOT NULL)").ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    void TearDown() override {
        broker_.reset();
        store_.reset();
        std::filesystem::remove_all(dir_);
    }
    void Publish(int n, int start = 0) {
        for (int i = start; i < start + n; ++i) {
            Message m{"foo-events", "Foo-" + std::to_string(i), Uuid::Generate(), "foo-" + std::to_string(i), {}};
            ASSERT_TRUE(broker_->PublishReliable(m, std::chrono::seconds(5)).ok());
        }
    }
    int64_t Bars(const std::string& where = "1=1") {
        auto uow = UnitOfWork::Begin(*store_).value();
        return uow.Query("SELECT count(*) FROM bars WHERE " + where).value().Int(0, 0).value();
    }
    static Status InsertBar(UnitOfWork& uow, const Delivery& d) {
        return uow
            .Exec("INSERT INTO bars (foo_id, message_id) VALUES (?, ?)",
                  {d.message.payload, Blob{std::string(d.message.message_id.bytes_view())}})
            .status();
    }
    static ConsumerOptions Options() {
        ConsumerOptions o;
        o.name = "bar-service";
        o.initial_backoff = std::chrono::milliseconds(5);
        o.consume.visibility_timeout = std::chrono::milliseconds(300);
        return o;
    }
    template <class Pred>
    static bool WaitUntil(Pred pred, std::chrono::seconds limit = std::chrono::seconds(15)) {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < deadline) {
            if (pred()) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return pred();
    }

    std::filesystem::path dir_;
    std::string store_uri_, broker_uri_;
    std::unique_ptr<EventStore> store_;
    std::unique_ptr<Broker> broker_;
};

TEST_F(ConsumerTest, EachMessageTakesEffectOnce) {
    Publish(50);
    auto consumer = Consumer::Start(*store_, *broker_, "foo-events", "bar", InsertBar, Options()).value();
    ASSERT_TRUE(WaitUntil([&] { return consumer->stats().handled == 50; }));
    consumer->Stop();
    EXPECT_EQ(Bars(), 50);
    EXPECT_EQ(consumer->stats().duplicates, 0);
}

TEST_F(ConsumerTest, RedeliveryAfterALostAckIsSkippedByTheInbox) {
    Publish(1);
    LossyAckConsumer consumer(broker_->Consume("foo-events", "bar", Options().consume).value());
    consumer.lose_next_ack = true;
    auto first = consumer.Receive(std::chrono::seconds(2)).value();
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(HandleDelivery(*store_, consumer, *first, InsertBar, Options()).value(), DeliveryOutcome::kHandled);
    // The broker never got the ack: after the visibility timeout the message comes again.
    auto again = consumer.Receive(std::chrono::seconds(3)).value();
    ASSERT_TRUE(again.has_value());
    EXPECT_EQ(again->message.message_id, first->message.message_id);
    EXPECT_GE(again->attempt, 2);
    EXPECT_EQ(HandleDelivery(*store_, consumer, *again, InsertBar, Options()).value(), DeliveryOutcome::kDuplicate);
    EXPECT_EQ(Bars(), 1);
    EXPECT_FALSE(consumer.Receive(std::chrono::milliseconds(500)).value().has_value());  // acked this time
}

TEST_F(ConsumerTest, FailingHandlerIsRetriedAndItsWritesRolledBack) {
    Publish(1);
    std::atomic<int> calls{0};
    auto flaky = [&](UnitOfWork& uow, const Delivery& d) -> Status {
        KEEL_RETURN_IF_ERROR(InsertBar(uow, d));  // written, then rolled back on failure
        if (++calls < 3) return Status::Unavailable("downstream not ready");
        return Status::Ok();
    };
    auto consumer = Consumer::Start(*store_, *broker_, "foo-events", "bar", flaky, Options()).value();
    ASSERT_TRUE(WaitUntil([&] { return consumer->stats().handled == 1; }));
    consumer->Stop();
    EXPECT_EQ(calls.load(), 3);
    EXPECT_EQ(consumer->stats().retries, 2);
    EXPECT_EQ(Bars(), 1);
}

TEST_F(ConsumerTest, PoisonMessageIsDeadLetteredWithItsErrorAndCanBeReplayed) {
    Publish(3);
    std::atomic<bool> poison_fixed{false};
    auto handler = [&](UnitOfWork& uow, const Delivery& d) -> Status {
        if (d.message.payload == "foo-1" && !poison_fixed) return Status::InvalidArgument("cannot parse foo-1");
        return InsertBar(uow, d);
    };
    auto options = Options();
    options.max_attempts = 3;
    auto consumer = Consumer::Start(*store_, *broker_, "foo-events", "bar", handler, options).value();
    ASSERT_TRUE(WaitUntil([&] { return consumer->stats().handled == 2 && consumer->stats().dead_lettered == 1; }));
    auto dead = broker_->ListDeadLetters("foo-events", "bar").value();
    ASSERT_EQ(dead.size(), 1u);
    EXPECT_EQ(dead[0].message.payload, "foo-1");
    EXPECT_NE(dead[0].error.find("cannot parse foo-1"), std::string::npos) << dead[0].error;
    EXPECT_EQ(Bars(), 2);

    poison_fixed = true;
    EXPECT_EQ(broker_->ReplayDeadLetters("foo-events", "bar").value(), 1u);
    ASSERT_TRUE(WaitUntil([&] { return consumer->stats().handled == 3; }));
    consumer->Stop();
    EXPECT_EQ(Bars(), 3);
    EXPECT_TRUE(broker_->ListDeadLetters("foo-events", "bar").value().empty());
}

// A consumer process is SIGKILLed at random moments, often in the middle of its handler (between its write and the
// commit, or between the commit and the ack). After every restart the work continues; in the end every message has
// taken effect exactly once.
TEST_F(ConsumerTest, SigkilledConsumerLosesNothingAndAppliesNothingTwice) {
    constexpr int kMessages = 60;
    Publish(kMessages);
    broker_.reset();
    store_.reset();
    std::mt19937 rng(std::random_device{}());
    for (int round = 0; round < 12; ++round) {
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            auto store = OpenStore(store_uri_);
            auto broker = OpenBroker(broker_uri_);
            if (!store.ok() || !broker.ok()) ::_exit(3);
            auto slow = [](UnitOfWork& uow, const Delivery& d) -> Status {
                KEEL_RETURN_IF_ERROR(InsertBar(uow, d));
                std::this_thread::sleep_for(std::chrono::milliseconds(3));  // die here, mid-handler, often
                return Status::Ok();
            };
            auto consumer = Consumer::Start(**store, **broker, "foo-events", "bar", slow, Options());
            if (!consumer.ok()) ::_exit(4);
            std::this_thread::sleep_for(std::chrono::seconds(30));
            ::_exit(0);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 150));
        ::kill(pid, SIGKILL);
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFSIGNALED(status)) << "child exited early with " << status;
    }
    store_ = OpenStore(store_uri_).value();
    broker_ = OpenBroker(broker_uri_).value();
    auto consumer = Consumer::Start(*store_, *broker_, "foo-events", "bar", InsertBar, Options()).value();
    ASSERT_TRUE(WaitUntil([&] { return Bars() == kMessages; }, std::chrono::seconds(30))) << Bars();
    std::this_thread::sleep_for(std::chrono::milliseconds(800));  // any redelivery still due would show now
    consumer->Stop();
    EXPECT_EQ(Bars(), kMessages);
    auto uow = UnitOfWork::Begin(*store_).value();
    EXPECT_EQ(uow.Query("SELECT count(DISTINCT foo_id) FROM bars").value().Int(0, 0).value(), kMessages);
}

// ---------------------------------------------------------------------------------------------------------------
// Batches: several deliveries in one unit of work, acknowledged together.

TEST_F(ConsumerTest, BatchedConsumerGivesEachMessageOneEffect) {
    Publish(120);
    auto options = Options();
    options.max_batch = 32;
    auto consumer = Consumer::Start(*store_, *broker_, "foo-events", "bar", InsertBar, options).value();
    ASSERT_TRUE(WaitUntil([&] { return consumer->stats().handled == 120; }));
    consumer->Stop();
    EXPECT_EQ(Bars(), 120);
    EXPECT_EQ(Bars("foo_id = 'foo-77'"), 1);
    EXPECT_EQ(consumer->stats().duplicates, 0);
    EXPECT_EQ(consumer->stats().retries, 0);
}

TEST_F(ConsumerTest, AFailingMessageInABatchDoesNotSinkTheOthers) {
    Publish(10);
    auto broker_consumer = broker_->Consume("foo-events", "bar", Options().consume).value();
    auto batch = broker_consumer->ReceiveBatch(10, std::chrono::seconds(2)).value();
    ASSERT_EQ(batch.size(), 10u);  // one per key: all ten are heads
    std::map<std::string, int> calls;
    auto handler = [&](UnitOfWork& uow, const Delivery& d) -> Status {
        KEEL_RETURN_IF_ERROR(InsertBar(uow, d));  // foo-3's row is written, then rolled back with its batch
        if (d.message.payload == "foo-3" && ++calls[d.message.payload] == 1) return Status::Unavailable("flaky");
        if (d.message.payload != "foo-3") ++calls[d.message.payload];
        return Status::Ok();
    };
    auto outcomes = HandleDeliveries(*store_, *broker_consumer, batch, handler, Options());
    ASSERT_TRUE(outcomes.ok()) << outcomes.status().ToString();
    EXPECT_EQ(*outcomes, std::vector<DeliveryOutcome>(10, DeliveryOutcome::kHandled));
    EXPECT_EQ(Bars(), 10);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(Bars("foo_id = 'foo-" + std::to_string(i) + "'"), 1) << i;
    EXPECT_EQ(calls["foo-3"], 2);  // its batch try, then once on its own
    EXPECT_EQ(calls["foo-0"], 2);  // in the rolled-back batch, then on its own
    EXPECT_EQ(calls["foo-9"], 1);  // never reached in the batch
    EXPECT_FALSE(broker_consumer->Receive(std::chrono::milliseconds(400)).value().has_value());  // all acked
}

TEST_F(ConsumerTest, APoisonMessageInABatchIsDeadLetteredAndTheRestHandled) {
    Publish(6);
    auto handler = [](UnitOfWork& uow, const Delivery& d) -> Status {
        if (d.message.payload == "foo-2") return Status::InvalidArgument("cannot parse foo-2");
        return InsertBar(uow, d);
    };
    auto options = Options();
    options.max_batch = 6;
    options.max_attempts = 2;  // the batch try counts as the first
    auto consumer = Consumer::Start(*store_, *broker_, "foo-events", "bar", handler, options).value();
    ASSERT_TRUE(WaitUntil([&] { return consumer->stats().handled == 5 && consumer->stats().dead_lettered == 1; }));
    consumer->Stop();
    EXPECT_EQ(Bars(), 5);
    EXPECT_EQ(Bars("foo_id = 'foo-2'"), 0);
    EXPECT_EQ(consumer->stats().retries, 1);
    auto dead = broker_->ListDeadLetters("foo-events", "bar").value();
    ASSERT_EQ(dead.size(), 1u);
    EXPECT_EQ(dead[0].message.payload, "foo-2");
    EXPECT_NE(dead[0].error.find("after 2 attempts"), std::string::npos) << dead[0].error;
}

TEST_F(ConsumerTest, ADuplicateInABatchIsSkippedAndAcknowledged) {
    Publish(5);
    auto options = Options();  // visibility timeout 300 ms
    LossyAckConsumer consumer(broker_->Consume("foo-events", "bar", options.consume).value());
    auto first = consumer.Receive(std::chrono::seconds(2)).value();
    ASSERT_TRUE(first.has_value());
    consumer.lose_next_ack = true;
    EXPECT_EQ(HandleDelivery(*store_, consumer, *first, InsertBar, options).value(), DeliveryOutcome::kHandled);
    std::this_thread::sleep_for(std::chrono::milliseconds(400));  // the lost ack's delivery is due again
    auto batch = consumer.ReceiveBatch(10, std::chrono::seconds(2)).value();
    ASSERT_EQ(batch.size(), 5u);
    ASSERT_EQ(batch[0].message.message_id, first->message.message_id);  // the oldest comes first
    EXPECT_GE(batch[0].attempt, 2);
    int calls = 0;
    auto counting = [&](UnitOfWork& uow, const Delivery& d) {
        ++calls;
        return InsertBar(uow, d);
    };
    auto outcomes = HandleDeliveries(*store_, consumer, batch, counting, options);
    ASSERT_TRUE(outcomes.ok()) << outcomes.status().ToString();
    std::vector<DeliveryOutcome> expected(5, DeliveryOutcome::kHandled);
    expected[0] = DeliveryOutcome::kDuplicate;
    EXPECT_EQ(*outcomes, expected);
    EXPECT_EQ(calls, 4);
    EXPECT_EQ(Bars(), 5);
    EXPECT_FALSE(consumer.Receive(std::chrono::milliseconds(500)).value().has_value());  // the duplicate was acked
}

// A consumer process is SIGKILLed in the middle of a batch, after several of its handlers wrote: nothing of the batch
// is applied, and all of it is delivered again and handled once.
TEST_F(ConsumerTest, CrashMidBatchAppliesNothingAndEverythingIsRedelivered) {
    Publish(10);
    broker_.reset();
    store_.reset();
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::close(ready[0]);
        auto store = OpenStore(store_uri_);
        auto broker = OpenBroker(broker_uri_);
        if (!store.ok() || !broker.ok()) ::_exit(3);
        int calls = 0;
        auto stalling = [&](UnitOfWork& uow, const Delivery& d) -> Status {
            KEEL_RETURN_IF_ERROR(InsertBar(uow, d));
            if (++calls == 5) {
                const char byte = 'x';
                if (::write(ready[1], &byte, 1) != 1) ::_exit(5);
                std::this_thread::sleep_for(std::chrono::seconds(30));  // killed here, mid-batch
            }
            return Status::Ok();
        };
        auto options = Options();
        options.max_batch = 10;
        auto consumer = Consumer::Start(**store, **broker, "foo-events", "bar", stalling, options);
        if (!consumer.ok()) ::_exit(4);
        std::this_thread::sleep_for(std::chrono::seconds(30));
        ::_exit(0);
    }
    ::close(ready[1]);
    char byte = 0;
    ASSERT_EQ(::read(ready[0], &byte, 1), 1) << "the child never reached its fifth handler";
    ::close(ready[0]);
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << status;

    store_ = OpenStore(store_uri_).value();
    broker_ = OpenBroker(broker_uri_).value();
    EXPECT_EQ(Bars(), 0);  // four handlers wrote, none of it committed
    auto options = Options();
    options.max_batch = 10;
    auto consumer = Consumer::Start(*store_, *broker_, "foo-events", "bar", InsertBar, options).value();
    ASSERT_TRUE(WaitUntil([&] { return consumer->stats().handled == 10; }));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // a redelivery still due would show now
    consumer->Stop();
    EXPECT_EQ(Bars(), 10);
    auto uow = UnitOfWork::Begin(*store_).value();
    EXPECT_EQ(uow.Query("SELECT count(DISTINCT foo_id) FROM bars").value().Int(0, 0).value(), 10);
    EXPECT_EQ(consumer->stats().duplicates, 0);
}

TEST(ConsumerOptionsTest, BadOptionsAndStoresWithoutTransactionsAreRefused) {
    auto dir = std::filesystem::temp_directory_path() / ("keel_consumer_opts_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto broker = OpenBroker("local://" + (dir / "b.db").string()).value();
    auto memory = OpenStore("memory:").value();
    ConsumerOptions o;
    o.name = "c";
    auto handler = [](UnitOfWork&, const Delivery&) { return Status::Ok(); };
    EXPECT_EQ(Consumer::Start(*memory, *broker, "d", "g", handler, o).status().code(), StatusCode::kNotSupported);
    auto sqlite = OpenStore("sqlite://" + (dir / "s.db").string()).value();
    o.name = "";
    EXPECT_EQ(Consumer::Start(*sqlite, *broker, "d", "g", handler, o).status().code(), StatusCode::kInvalidArgument);
    o.name = "c";
    o.max_attempts = 0;
    EXPECT_EQ(Consumer::Start(*sqlite, *broker, "d", "g", handler, o).status().code(), StatusCode::kInvalidArgument);
    o.max_attempts = 5;
    o.max_batch = 0;
    EXPECT_EQ(Consumer::Start(*sqlite, *broker, "d", "g", handler, o).status().code(), StatusCode::kInvalidArgument);
    o.max_batch = 10'001;
    EXPECT_EQ(Consumer::Start(*sqlite, *broker, "d", "g", handler, o).status().code(), StatusCode::kInvalidArgument);
    broker.reset();
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace keel
