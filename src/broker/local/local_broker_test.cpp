// local: broker tests: the broker conformance suites instantiated for local:, and what only local: has — URI forms,
// the file (WAL, schema version, foreign files, sharing a file with the sqlite: event store), retention, stale acks,
// per-key failure in a batch, batched receive and acknowledgement, publish timeouts under another process's lock, and
// wake-ups within one Broker object and across the Broker objects of one process.

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include "keel/broker.hpp"
#include "keel/event.hpp"
#include "keel/event_store.hpp"
#include "keel/status.hpp"

#include "broker/broker_conformance.hpp"
#include "conformance/test_support.hpp"

namespace {

keel::testing::BrokerFactory LocalFactory(std::string name, std::string query) {
    return keel::testing::MakeUriBrokerFactory(
        std::move(name), [query](const std::string& dir) { return "local://" + dir + "/broker.db" + query; });
}

}  // namespace

KEEL_INSTANTIATE_BROKER_CONFORMANCE(Local, LocalFactory("local", ""));
KEEL_INSTANTIATE_BROKER_CONFORMANCE(LocalNormal, LocalFactory("local_durability_normal", "?durability=normal"));
KEEL_INSTANTIATE_BROKER_QUEUE_CONFORMANCE(Local, LocalFactory("local", ""));

namespace keel {
namespace {

using namespace std::chrono_literals;
using std::chrono::steady_clock;
using testing::ContainsNoCase;
using testing::TempDir;

#define KEEL_ASSERT_OK(expr)                                              \
    do {                                                                  \
        const ::keel::Status keel_s_ = (expr);                            \
        ASSERT_TRUE(keel_s_.ok()) << #expr << ": " << keel_s_.ToString(); \
    } while (0)

std::string Uri(const std::filesystem::path& path, std::string_view query = "") {
    return "local://" + path.string() + std::string(query);
}

std::unique_ptr<Broker> MustOpen(const std::string& uri) {
    return OpenBroker(uri).value();
}

// Runs one statement on `db` with sqlite3 directly; returns the first column of the first row ("" if none).
std::string Sql(const std::filesystem::path& db, const std::string& sql) {
    sqlite3* handle = nullptr;
    if (sqlite3_open_v2(db.c_str(), &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) != SQLITE_OK) {
        std::string message = handle != nullptr ? sqlite3_errmsg(handle) : "out of memory";
        sqlite3_close(handle);
        throw std::runtime_error("sqlite3_open " + db.string() + ": " + message);
    }
    sqlite3_busy_timeout(handle, 5000);
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(handle, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
        std::string message = sqlite3_errmsg(handle);
        sqlite3_close(handle);
        throw std::runtime_error("prepare '" + sql + "': " + message);
    }
    std::string out;
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW && sqlite3_column_type(stmt, 0) != SQLITE_NULL) {
        out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    while (rc == SQLITE_ROW) rc = sqlite3_step(stmt);
    std::string message = sqlite3_errmsg(handle);
    sqlite3_finalize(stmt);
    sqlite3_close(handle);
    if (rc != SQLITE_DONE) throw std::runtime_error("step '" + sql + "': " + message);
    return out;
}

int Count(const std::filesystem::path& db, const std::string& table) {
    return std::stoi(Sql(db, "SELECT count(*) FROM " + table));
}

Message MakeMessage(const std::string& dest, const std::string& key, const std::string& payload, Headers headers = {}) {
    Message m;
    m.destination = dest;
    m.key = key;
    m.message_id = Uuid::Generate();
    m.payload = payload;
    m.headers = std::move(headers);
    return m;
}

// ---------------------------------------------------------------------------------------------------------------
// URIs and files

TEST(LocalBrokerOpen, OpensAbsoluteAndRelativePaths) {
    TempDir dir("keel-local-uri");
    auto absolute = OpenBroker("local://" + (dir / "abs.db").string());
    ASSERT_TRUE(absolute.ok()) << absolute.status().ToString();
    EXPECT_TRUE(std::filesystem::exists(dir / "abs.db"));

    const auto cwd = std::filesystem::current_path();
    std::filesystem::current_path(dir.path());
    auto relative = OpenBroker("local://rel.db?durability=normal");
    std::filesystem::current_path(cwd);
    ASSERT_TRUE(relative.ok()) << relative.status().ToString();
    EXPECT_TRUE(std::filesystem::exists(dir / "rel.db"));
}

TEST(LocalBrokerOpen, RejectsMalformedUris) {
    TempDir dir("keel-local-uri");
    const std::string path = (dir / "b.db").string();
    for (const std::string& uri :
         {std::string("local:"), std::string("local://"), "local://" + path + "?durability=eventual",
          "local://" + path + "?poll_ms=0", "local://" + path + "?poll_ms=ten", "local://" + path + "?colour=blue",
          "lokal://" + path}) {
        auto b = OpenBroker(uri);
        EXPECT_EQ(b.status().code(), StatusCode::kInvalidArgument) << uri << ": " << b.status().ToString();
    }
    auto b = OpenBroker("local://" + path + "?colour=blue");
    EXPECT_TRUE(ContainsNoCase(b.status().message(), "colour")) << b.status().ToString();
}

TEST(LocalBrokerOpen, UsesWalAndRecordsItsSchemaVersion) {
    TempDir dir("keel-local-file");
    const auto path = dir / "b.db";
    auto broker = MustOpen(Uri(path));
    EXPECT_EQ(Sql(path, "PRAGMA journal_mode"), "wal");
    EXPECT_EQ(Sql(path, "SELECT version FROM keel_schema WHERE component = 'broker'"), "1");
    EXPECT_EQ(Sql(path, "PRAGMA application_id"), std::to_string(0x4B45454C));
    for (const char* table : {"keel_broker_destinations", "keel_broker_groups", "keel_broker_messages",
                              "keel_broker_deliveries", "keel_broker_dead_letters"}) {
        EXPECT_EQ(Count(path, table), 0) << table;
    }
    broker.reset();
    // Reopening an existing broker file migrates nothing and keeps what is there.
    broker = MustOpen(Uri(path));
    KEEL_ASSERT_OK(broker->Declare("d", "g"));
    broker = MustOpen(Uri(path));
    EXPECT_TRUE(broker->Consume("d", "g").ok());
}

TEST(LocalBrokerOpen, RefusesAFileThatIsNotSqlite) {
    TempDir dir("keel-local-file");
    const auto path = dir / "notes.txt";
    testing::WriteFileBytes(path, "these are my notes, not a queue\n");
    auto b = OpenBroker(Uri(path));
    EXPECT_EQ(b.status().code(), StatusCode::kCorruption) << b.status().ToString();
    EXPECT_EQ(testing::ReadFileBytes(path), "these are my notes, not a queue\n");
}

TEST(LocalBrokerOpen, RefusesAnotherApplicationsDatabase) {
    TempDir dir("keel-local-file");
    const auto path = dir / "other.db";
    Sql(path, "PRAGMA application_id = 42");
    Sql(path, "CREATE TABLE t (x)");
    auto b = OpenBroker(Uri(path));
    EXPECT_EQ(b.status().code(), StatusCode::kCorruption) << b.status().ToString();
    EXPECT_TRUE(ContainsNoCase(b.status().message(), "another application")) << b.status().ToString();
}

TEST(LocalBrokerOpen, RefusesANewerSchemaVersion) {
    TempDir dir("keel-local-file");
    const auto path = dir / "b.db";
    MustOpen(Uri(path)).reset();
    Sql(path, "UPDATE keel_schema SET version = 99 WHERE component = 'broker'");
    auto b = OpenBroker(Uri(path));
    EXPECT_EQ(b.status().code(), StatusCode::kNotSupported) << b.status().ToString();
    EXPECT_TRUE(ContainsNoCase(b.status().message(), "upgrade")) << b.status().ToString();
}

TEST(LocalBrokerOpen, MissingDirectoryIsUnavailable) {
    TempDir dir("keel-local-file");
    auto b = OpenBroker(Uri(dir / "no-such-dir" / "b.db"));
    EXPECT_EQ(b.status().code(), StatusCode::kUnavailable) << b.status().ToString();
}

// The broker may live in the service's own database, beside the sqlite: event store, whichever opens it first.
TEST(LocalBrokerOpen, SharesAFileWithTheSqliteEventStore) {
    TempDir dir("keel-local-shared");
    for (bool store_first : {true, false}) {
        SCOPED_TRACE(store_first ? "store first" : "broker first");
        const auto path = dir / (store_first ? "store-first.db" : "broker-first.db");
        std::unique_ptr<Broker> broker;
        if (!store_first) broker = MustOpen(Uri(path));
        auto store = OpenStore("sqlite://" + path.string()).value();
        EventData e;
        e.type = "Opened";
        e.data = "{}";
        auto appended = store->Append("account-1", ExpectedVersion::NoStream(), std::vector<EventData>{e});
        ASSERT_TRUE(appended.ok()) << appended.status().ToString();
        if (store_first) broker = MustOpen(Uri(path));
        KEEL_ASSERT_OK(broker->Declare("events", "g"));
        auto consumer = broker->Consume("events", "g").value();
        const Message m = MakeMessage("events", "account-1", "Opened");
        KEEL_ASSERT_OK(broker->PublishReliable(m, 5s));
        auto d = consumer->Receive(5s);
        ASSERT_TRUE(d.ok() && d->has_value());
        EXPECT_EQ((*d)->message.message_id, m.message_id);
        consumer.reset();
        broker.reset();
        store.reset();
        store = OpenStore("sqlite://" + path.string()).value();
        auto events = store->ReadStream("account-1");
        ASSERT_TRUE(events.ok()) << events.status().ToString();
        EXPECT_EQ(events->size(), 1u);
        broker = MustOpen(Uri(path));
        EXPECT_TRUE(broker->Consume("events", "g").ok());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Behaviour particular to local:

class LocalBroker : public ::testing::Test {
protected:
    void SetUp() override {
        path_ = dir_ / "broker.db";
        broker_ = MustOpen(Uri(path_));
    }
    TempDir dir_{"keel-local-broker"};
    std::filesystem::path path_;
    std::unique_ptr<Broker> broker_;
};

TEST_F(LocalBroker, AFinishedDeliveryCannotBeAckedAgain) {
    KEEL_ASSERT_OK(broker_->Declare("d", "g"));
    auto consumer = broker_->Consume("d", "g").value();
    KEEL_ASSERT_OK(broker_->PublishReliable(MakeMessage("d", "k", "x"), 5s));
    auto d = consumer->Receive(5s).value();
    ASSERT_TRUE(d.has_value());
    KEEL_ASSERT_OK(consumer->Ack(*d));
    const Status again = consumer->Ack(*d);
    EXPECT_EQ(again.code(), StatusCode::kFailedPrecondition) << again.ToString();
    EXPECT_TRUE(ContainsNoCase(again.message(), d->message.message_id.ToString())) << again.ToString();
    EXPECT_EQ(consumer->Nack(*d).code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(consumer->DeadLetter(*d, "late").code(), StatusCode::kFailedPrecondition);
    auto listed = broker_->ListDeadLetters("d", "g").value();
    EXPECT_TRUE(listed.empty()) << "a refused DeadLetter must not write a dead letter";
}

TEST_F(LocalBroker, AnExpiredDeliveryCannotBeAckedOnceRedelivered) {
    KEEL_ASSERT_OK(broker_->Declare("d", "g"));
    auto slow = broker_->Consume("d", "g", ConsumeOptions{.visibility_timeout = 200ms}).value();
    auto fast = broker_->Consume("d", "g").value();
    const Message m1 = MakeMessage("d", "k", "k:0");
    const Message m2 = MakeMessage("d", "k", "k:1");
    KEEL_ASSERT_OK(broker_->PublishReliable(m1, 5s));
    KEEL_ASSERT_OK(broker_->PublishReliable(m2, 5s));
    auto expired = slow->Receive(5s).value();
    ASSERT_TRUE(expired.has_value());
    auto redelivered = fast->Receive(5s).value();
    ASSERT_TRUE(redelivered.has_value());
    EXPECT_EQ(redelivered->message.message_id, m1.message_id);
    EXPECT_EQ(redelivered->attempt, 2);
    // The slow consumer's late ack must not let m2 overtake while `fast` still holds m1.
    EXPECT_EQ(slow->Ack(*expired).code(), StatusCode::kFailedPrecondition);
    auto r = slow->Receive(300ms);
    ASSERT_TRUE(r.ok());
    EXPECT_FALSE(r->has_value()) << "two messages of key k in flight";
    KEEL_ASSERT_OK(fast->Ack(*redelivered));
    auto next = slow->Receive(5s).value();
    ASSERT_TRUE(next.has_value());
    EXPECT_EQ(next->message.message_id, m2.message_id);
}

TEST_F(LocalBroker, RetentionDeletesAMessageOnceEveryGroupIsDone) {
    KEEL_ASSERT_OK(broker_->Declare("d", "a"));
    KEEL_ASSERT_OK(broker_->Declare("d", "b"));
    auto a = broker_->Consume("d", "a").value();
    auto b = broker_->Consume("d", "b").value();
    KEEL_ASSERT_OK(broker_->PublishReliable(MakeMessage("d", "k", "x"), 5s));
    EXPECT_EQ(Count(path_, "keel_broker_messages"), 1);
    EXPECT_EQ(Count(path_, "keel_broker_deliveries"), 2);

    auto da = a->Receive(5s).value();
    ASSERT_TRUE(da.has_value());
    KEEL_ASSERT_OK(a->Ack(*da));
    EXPECT_EQ(Count(path_, "keel_broker_messages"), 1) << "group b still needs it";
    EXPECT_EQ(Count(path_, "keel_broker_deliveries"), 1);

    auto db = b->Receive(5s).value();
    ASSERT_TRUE(db.has_value());
    KEEL_ASSERT_OK(b->DeadLetter(*db, "no"));
    EXPECT_EQ(Count(path_, "keel_broker_messages"), 0);
    EXPECT_EQ(Count(path_, "keel_broker_deliveries"), 0);
    EXPECT_EQ(Count(path_, "keel_broker_dead_letters"), 1);

    EXPECT_EQ(broker_->ReplayDeadLetters("d", "b").value(), 1u);
    EXPECT_EQ(Count(path_, "keel_broker_messages"), 1);
    EXPECT_EQ(Count(path_, "keel_broker_dead_letters"), 0);
    db = b->Receive(5s).value();
    ASSERT_TRUE(db.has_value());
    KEEL_ASSERT_OK(b->Ack(*db));
    EXPECT_EQ(Count(path_, "keel_broker_messages"), 0);
}

TEST_F(LocalBroker, PublishWithoutGroupsStoresNothing) {
    KEEL_ASSERT_OK(broker_->PublishReliable(MakeMessage("nobody", "k", "x"), 5s));
    EXPECT_EQ(Count(path_, "keel_broker_messages"), 0);
}

// Deduplication holds while some group still holds the message; after every group acknowledged it, the row is gone
// and a republish of the same id is a new message (consumers deduplicate by message_id).
TEST_F(LocalBroker, DeduplicationLastsWhileTheMessageIsHeld) {
    KEEL_ASSERT_OK(broker_->Declare("d", "g"));
    auto consumer = broker_->Consume("d", "g").value();
    const Message m = MakeMessage("d", "k", "x");
    KEEL_ASSERT_OK(broker_->PublishReliable(m, 5s));
    auto d = consumer->Receive(5s).value();
    ASSERT_TRUE(d.has_value());
    KEEL_ASSERT_OK(broker_->PublishReliable(m, 5s));  // held (in flight): deduplicated
    KEEL_ASSERT_OK(consumer->Ack(*d));
    auto r = consumer->Receive(200ms);
    ASSERT_TRUE(r.ok());
    EXPECT_FALSE(r->has_value());
    KEEL_ASSERT_OK(broker_->PublishReliable(m, 5s));  // gone: stored again
    d = consumer->Receive(5s).value();
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->message.message_id, m.message_id);
    EXPECT_EQ(d->attempt, 1);
}

TEST_F(LocalBroker, HeadersRoundTripExactly) {
    KEEL_ASSERT_OK(broker_->Declare("d", "g"));
    auto consumer = broker_->Consume("d", "g").value();
    const Headers headers = {{"a", "1"}, {"a", "2"}, {"", std::string("\0\xff", 2)}, {std::string(300, 'n'), ""}};
    const Message m = MakeMessage("d", std::string("k\0ey", 4), "x", headers);
    KEEL_ASSERT_OK(broker_->PublishReliable(m, 5s));
    auto d = consumer->Receive(5s).value();
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->message.headers, headers);
    EXPECT_EQ(d->message.key, m.key);
    KEEL_ASSERT_OK(consumer->DeadLetter(*d, "check the copy"));
    auto listed = broker_->ListDeadLetters("d", "g").value();
    ASSERT_EQ(listed.size(), 1u);
    EXPECT_EQ(listed[0].message.headers, headers);
    EXPECT_EQ(listed[0].message.key, m.key);
}

TEST_F(LocalBroker, ABatchStopsAKeyAtItsFirstFailure) {
    KEEL_ASSERT_OK(broker_->Declare("d", "g"));
    auto consumer = broker_->Consume("d", "g").value();
    std::vector<Message> batch = {MakeMessage("d", "k", "k:0"), MakeMessage("d", "k", "k:1"),
                                  MakeMessage("d", "k", "k:2"), MakeMessage("d", "j", "j:0")};
    batch[1].message_id = Uuid();
    auto statuses = broker_->PublishBatch(batch, 2, 5s);
    ASSERT_EQ(statuses.size(), 4u);
    EXPECT_TRUE(statuses[0].ok());
    EXPECT_EQ(statuses[1].code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(statuses[2].code(), StatusCode::kFailedPrecondition) << statuses[2].ToString();
    EXPECT_TRUE(statuses[3].ok());
    std::vector<std::string> got;
    for (;;) {
        auto d = consumer->Receive(300ms).value();
        if (!d) break;
        got.push_back(d->message.payload);
        KEEL_ASSERT_OK(consumer->Ack(*d));
    }
    EXPECT_THAT(got, ::testing::UnorderedElementsAre("k:0", "j:0"));
}

TEST_F(LocalBroker, RejectsAZeroWindowAndANonPositiveVisibilityTimeout) {
    KEEL_ASSERT_OK(broker_->Declare("d", "g"));
    const std::vector<Message> batch = {MakeMessage("d", "k", "x")};
    auto statuses = broker_->PublishBatch(batch, 0, 5s);
    ASSERT_EQ(statuses.size(), 1u);
    EXPECT_EQ(statuses[0].code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(broker_->Consume("d", "g", ConsumeOptions{.visibility_timeout = 0ms}).status().code(),
              StatusCode::kInvalidArgument);
}

TEST_F(LocalBroker, ReplayRejectsMalformedIdsAndSkipsUnknownOnes) {
    KEEL_ASSERT_OK(broker_->Declare("d", "g"));
    const std::string malformed[] = {"abc"};
    EXPECT_EQ(broker_->ReplayDeadLetters("d", "g", malformed).status().code(), StatusCode::kInvalidArgument);
    const std::string unknown[] = {"12345"};
    auto n = broker_->ReplayDeadLetters("d", "g", unknown);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    EXPECT_EQ(*n, 0u);
}

TEST_F(LocalBroker, PublishTimesOutWhileAnotherConnectionHoldsTheWriteLock) {
    KEEL_ASSERT_OK(broker_->Declare("d", "g"));
    sqlite3* other = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &other), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
    const auto t0 = steady_clock::now();
    const Status s = broker_->PublishReliable(MakeMessage("d", "k", "x"), 300ms);
    const auto waited = steady_clock::now() - t0;
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
    EXPECT_GE(waited, 250ms);
    EXPECT_LT(waited, 4s);
    ASSERT_EQ(sqlite3_exec(other, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(other);
    KEEL_ASSERT_OK(broker_->PublishReliable(MakeMessage("d", "k", "y"), 5s));
    auto consumer = broker_->Consume("d", "g").value();
    auto d = consumer->Receive(5s).value();
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->message.payload, "y");
}

TEST_F(LocalBroker, ReceiveBatchTakesOneHeadPerKeyInPublishOrderAndAckBatchSettlesThem) {
    KEEL_ASSERT_OK(broker_->Declare("d", "g"));
    auto consumer = broker_->Consume("d", "g").value();
    for (const char* key_seq : {"a:0", "a:1", "b:0", "c:0", "b:1"}) {
        KEEL_ASSERT_OK(broker_->PublishReliable(MakeMessage("d", std::string(key_seq, 1), key_seq), 5s));
    }
    auto first = consumer->ReceiveBatch(10, 5s);
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    std::vector<std::string> payloads;
    for (const Delivery& d : *first) payloads.push_back(d.message.payload);
    EXPECT_EQ(payloads, (std::vector<std::string>{"a:0", "b:0", "c:0"}));  // a:1 and b:1 wait for their heads
    EXPECT_FALSE(consumer->Receive(0ms).value().has_value());

    const std::vector<Status> acked = consumer->AckBatch(*first);
    ASSERT_EQ(acked.size(), 3u);
    for (const Status& s : acked) EXPECT_TRUE(s.ok()) << s.ToString();
    auto second = consumer->ReceiveBatch(1, 5s);  // capped at 1 although two are ready
    ASSERT_TRUE(second.ok()) << second.status().ToString();
    ASSERT_EQ(second->size(), 1u);
    EXPECT_EQ(second->front().message.payload, "a:1");

    // An already acknowledged delivery in a batch is refused alone; the rest of the batch is acknowledged.
    const Delivery both[] = {first->front(), second->front()};
    const std::vector<Status> mixed = consumer->AckBatch(both);
    ASSERT_EQ(mixed.size(), 2u);
    EXPECT_EQ(mixed[0].code(), StatusCode::kFailedPrecondition) << mixed[0].ToString();
    EXPECT_TRUE(mixed[1].ok()) << mixed[1].ToString();
    auto last = consumer->ReceiveBatch(10, 5s).value();
    ASSERT_EQ(last.size(), 1u);
    EXPECT_EQ(last[0].message.payload, "b:1");
    EXPECT_TRUE(consumer->ReceiveBatch(10, 0ms).value().empty());  // b:1 is held, nothing else is left
}

// Receive polls the file for other processes' publishes (at most every poll_ms), but a publish through the same
// Broker object wakes it at once.
TEST(LocalBrokerWakeUp, APublishThroughTheSameBrokerWakesReceiveAtOnce) {
    TempDir dir("keel-local-wake");
    auto broker = MustOpen(Uri(dir / "b.db", "?poll_ms=10000"));
    KEEL_ASSERT_OK(broker->Declare("d", "g"));
    auto consumer = broker->Consume("d", "g").value();
    steady_clock::time_point published;
    std::thread publisher([&] {
        // Late enough that Receive's polling has backed off to seconds.
        std::this_thread::sleep_for(2500ms);
        published = steady_clock::now();
        EXPECT_TRUE(broker->PublishReliable(MakeMessage("d", "k", "x"), 5s).ok());
    });
    auto d = consumer->Receive(20s);
    const auto received = steady_clock::now();
    publisher.join();
    ASSERT_TRUE(d.ok() && d->has_value());
    EXPECT_LT(received - published, 1s);
}

// Broker objects of one process on the same file share their wake-ups: a relay and a consumer that opened the
// broker separately do not wait for the poll.
TEST(LocalBrokerWakeUp, APublishThroughAnotherBrokerObjectOfTheProcessWakesReceiveAtOnce) {
    TempDir dir("keel-local-wake");
    auto broker = MustOpen(Uri(dir / "b.db", "?poll_ms=10000"));
    auto other = MustOpen(Uri(dir / "." / "b.db"));  // the same file under another spelling
    KEEL_ASSERT_OK(broker->Declare("d", "g"));
    auto consumer = broker->Consume("d", "g").value();
    steady_clock::time_point published;
    std::thread publisher([&] {
        std::this_thread::sleep_for(2500ms);  // Receive's polling has backed off to seconds by now
        published = steady_clock::now();
        EXPECT_TRUE(other->PublishReliable(MakeMessage("d", "k", "x"), 5s).ok());
    });
    auto d = consumer->Receive(20s);
    const auto received = steady_clock::now();
    publisher.join();
    ASSERT_TRUE(d.ok() && d->has_value());
    EXPECT_LT(received - published, 1s);
}

TEST(LocalBrokerWakeUp, APublishFromAnotherConnectionIsFoundByPolling) {
    TempDir dir("keel-local-wake");
    auto broker = MustOpen(Uri(dir / "b.db", "?poll_ms=50"));
    auto other = MustOpen(Uri(dir / "b.db"));
    KEEL_ASSERT_OK(broker->Declare("d", "g"));
    auto consumer = broker->Consume("d", "g").value();
    std::thread publisher([&] {
        std::this_thread::sleep_for(300ms);
        EXPECT_TRUE(other->PublishReliable(MakeMessage("d", "k", "x"), 5s).ok());
    });
    auto d = consumer->Receive(10s);
    publisher.join();
    ASSERT_TRUE(d.ok() && d->has_value());
}

}  // namespace
}  // namespace keel
