// The relay on PostgreSQL wakes on LISTEN/NOTIFY: a unit of work committed through another store handle (its own
// connections, as another process would have) reaches the broker without waiting for the relay's poll interval,
// which these tests set to ten minutes so that only the notification can wake the relay. Needs KEEL_TEST_PG (fails,
// not skips, without it).

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "keel/broker.hpp"
#include "keel/outbox.hpp"
#include "keel/unit_of_work.hpp"

namespace keel {
namespace {

using namespace std::chrono_literals;

class RelayNotifyPgTest : public ::testing::Test {
protected:
    void SetUp() override {
        const char* uri = std::getenv("KEEL_TEST_PG");
        ASSERT_NE(uri, nullptr) << "KEEL_TEST_PG is not set (scripts/services.sh start; eval \"$(scripts/services.sh "
                                   "env)\")";
        server_ = uri;
        static std::atomic<int> counter{0};
        schema_ = "keel_relay_notify_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
        relay_store_ = OpenStore(server_ + "?schema=" + schema_).value();
        writer_store_ = OpenStore(server_ + "?schema=" + schema_).value();
        dir_ = std::filesystem::temp_directory_path() / schema_;
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
        broker_ = OpenBroker("local://" + (dir_ / "broker.db").string()).value();
        ASSERT_TRUE(broker_->Declare("orders", "g").ok());
        consumer_ = broker_->Consume("orders", "g").value();
    }

    void TearDown() override {
        if (relay_) relay_->Stop();
        relay_.reset();
        consumer_.reset();
        broker_.reset();
        relay_store_.reset();
        writer_store_.reset();
        std::filesystem::remove_all(dir_);
        PGconn* c = PQconnectdb(server_.c_str());
        PQsetNoticeProcessor(c, [](void*, const char*) {}, nullptr);
        PQclear(PQexec(c, ("DROP SCHEMA IF EXISTS " + schema_ + " CASCADE").c_str()));
        PQfinish(c);
    }

    // A relay that polls every ten minutes: anything it publishes within a test's seconds came through a wake-up.
    void StartIdleRelay() {
        RelayOptions o;
        o.poll_interval = std::chrono::minutes(10);
        o.lease = std::chrono::minutes(20);
        relay_ = Relay::Start(*relay_store_, *broker_, o).value();
        WaitUntilIdle(0);
    }

    // Waits until the relay has run a round after publishing `published` messages in total, then a little more,
    // so that it sits in its wait (a round that starts after the commit would find the row without a wake-up).
    void WaitUntilIdle(int64_t published) {
        const auto deadline = std::chrono::steady_clock::now() + 30s;
        while (std::chrono::steady_clock::now() < deadline) {
            const RelayStats st = relay_->stats();
            if (st.published == published && st.rounds > rounds_seen_ && st.leader) break;
            std::this_thread::sleep_for(5ms);
        }
        const RelayStats st = relay_->stats();
        ASSERT_EQ(st.published, published) << st.last_error;
        ASSERT_TRUE(st.leader) << st.last_error;
        std::this_thread::sleep_for(300ms);
        rounds_seen_ = relay_->stats().rounds;
    }

    // Commits one outbox row through the other store handle.
    Uuid CommitElsewhere(const std::string& key) {
        auto uow = UnitOfWork::Begin(*writer_store_).value();
        auto id = uow.Enqueue(Message{"orders", key, Uuid::Generate(), "payload of " + key, {}});
        EXPECT_TRUE(id.ok()) << id.status().ToString();
        EXPECT_TRUE(uow.Commit().ok());
        return id.ok() ? *id : Uuid();
    }

    // The next delivery (acknowledged), waiting up to 30 s: far less than the poll interval.
    std::optional<Delivery> Next() {
        auto r = consumer_->Receive(30s);
        EXPECT_TRUE(r.ok()) << r.status().ToString();
        if (!r.ok() || !r->has_value()) return std::nullopt;
        EXPECT_TRUE(consumer_->Ack(**r).ok());
        return *r;
    }

    std::string server_, schema_;
    std::filesystem::path dir_;
    std::unique_ptr<EventStore> relay_store_, writer_store_;
    std::unique_ptr<Broker> broker_;
    std::unique_ptr<BrokerConsumer> consumer_;
    std::unique_ptr<Relay> relay_;
    int64_t rounds_seen_ = 0;
};

TEST_F(RelayNotifyPgTest, ACommitThroughAnotherStoreHandleWakesTheIdleRelay) {
    StartIdleRelay();
    for (int i = 0; i < 3; ++i) {
        const Uuid id = CommitElsewhere("Order-" + std::to_string(i));
        auto d = Next();
        ASSERT_TRUE(d.has_value()) << "commit " << i << " did not wake the relay (it polls every ten minutes)";
        EXPECT_EQ(d->message.message_id, id);
        WaitUntilIdle(i + 1);
    }
}

TEST_F(RelayNotifyPgTest, ARolledBackUnitOfWorkWakesNobodyAndPublishesNothing) {
    StartIdleRelay();
    {
        auto uow = UnitOfWork::Begin(*writer_store_).value();
        ASSERT_TRUE(uow.Enqueue(Message{"orders", "k", Uuid::Generate(), "never", {}}).ok());
    }  // rolled back: PostgreSQL drops the NOTIFY with it
    auto none = consumer_->Receive(1s);
    ASSERT_TRUE(none.ok());
    EXPECT_FALSE(none->has_value());
    EXPECT_EQ(relay_->stats().rounds, rounds_seen_) << "a rolled-back transaction's NOTIFY woke the relay";
    const Uuid id = CommitElsewhere("k");
    auto d = Next();
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->message.message_id, id);
}

TEST_F(RelayNotifyPgTest, TheWatchReconnectsAfterItsConnectionIsKilled) {
    StartIdleRelay();
    // Terminate every connection listening on the channel (the relay's watch; other tests' watches reconnect too).
    PGconn* c = PQconnectdb(server_.c_str());
    ASSERT_EQ(PQstatus(c), CONNECTION_OK) << PQerrorMessage(c);
    PGresult* r = PQexec(c,
                         "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE query = 'LISTEN keel_outbox' AND pid <> pg_backend_pid()");
    ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK) << PQerrorMessage(c);
    EXPECT_GE(std::atoi(PQgetvalue(r, 0, 0)), 1) << "no listening connection found";
    PQclear(r);
    PQfinish(c);
    // The watch notices, reconnects with backoff and listens again; a commit after that wakes the relay.
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    bool delivered = false;
    for (int i = 0; !delivered && std::chrono::steady_clock::now() < deadline; ++i) {
        CommitElsewhere("after-kill-" + std::to_string(i));
        auto got = consumer_->Receive(2s);
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        if (got->has_value()) {
            delivered = true;
            EXPECT_TRUE(consumer_->Ack(**got).ok());
        }
    }
    EXPECT_TRUE(delivered) << "the watch did not come back after its connection was terminated";
}

}  // namespace
}  // namespace keel
