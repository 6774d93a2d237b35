// The mysql:// backend against a MariaDB server (ctest label `mysql`): the event-store conformance suite (normal and
// durable), then what only MariaDB can show — the InnoDB-only check, schema versioning, open errors, the
// append-ordering race, many processes, lost connections, a server killed during appends.
//
// Server: the tests read its URI from KEEL_TEST_MYSQL (`scripts/services.sh start mysql`, then
// `eval "$(scripts/services.sh env)"`) and fail, naming what to do, when it is unset or the server is unreachable.
//
// Isolation: every test gets its own database, `keel_t_<pid>_<n>`, created through an admin connection made with the
// KEEL_TEST_MYSQL credentials (CREATE DATABASE) and dropped in teardown. The store URI is KEEL_TEST_MYSQL with the
// database replaced. Nothing is left behind in `keel_test`.
//
// The server-restart and durability-setting tests need to kill and reconfigure a server, so they start their own
// private MariaDB (scripts/services.sh with KEEL_SERVICES_DIR under the build tree and a free port) instead of
// disturbing the shared one other tests and benchmarks may be using; they stop it again when done.

#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mysql.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keel/event_store.hpp"
#include "keel/status.hpp"
#include "keel/subscription.hpp"
#include "keel/uuid.hpp"

#include "conformance/event_store_conformance.hpp"
#include "conformance/test_support.hpp"
#include "store/backend.hpp"
#include "store/mysql/mysql_backend.hpp"
#include "store/mysql/mysql_uri.hpp"
#include "store/registry.hpp"

extern char** environ;

namespace keel {
namespace {

using namespace std::chrono_literals;
using detail::mysql::MysqlConfig;
using testing::ContainsNoCase;
using Clock = std::chrono::steady_clock;

constexpr char kHowToStart[] =
    "KEEL_TEST_MYSQL is not set. Start the test server and export its URI: scripts/services.sh start mysql && "
    "eval \"$(scripts/services.sh env)\"";

// ---------------------------------------------------------------------------------------------------------------
// Server access for the tests

MysqlConfig ConfigFromUri(const std::string& uri) {
    auto parsed = detail::ParseUri(uri);
    if (!parsed.ok()) throw StatusError(parsed.status());
    auto config = detail::mysql::ParseMysqlUri(*parsed, StoreOptions{});
    if (!config.ok()) throw StatusError(config.status());
    return *config;
}

// The KEEL_TEST_MYSQL server; throws with instructions when the variable is unset.
MysqlConfig TestServer() {
    const char* dsn = std::getenv("KEEL_TEST_MYSQL");
    if (dsn == nullptr || *dsn == '\0') throw std::runtime_error(kHowToStart);
    return ConfigFromUri(dsn);
}

std::string PercentEncode(std::string_view text) {
    std::string out;
    for (unsigned char c : text) {
        if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
            out.push_back(static_cast<char>(c));
        } else {
            out += fmt::format("%{:02X}", c);
        }
    }
    return out;
}

std::string UriFor(const MysqlConfig& c, std::string_view database, std::string_view query = "") {
    std::string auth = PercentEncode(c.user);
    if (c.password) auth += ":" + PercentEncode(*c.password);
    return fmt::format("mysql://{}@{}:{}/{}{}{}", auth, c.host, c.port, database, query.empty() ? "" : "?", query);
}

// A plain libmariadb connection, for what the tests do behind the store's back.
class Admin {
public:
    Admin(const MysqlConfig& c, const std::string& database) {
        mysql_ = mysql_init(nullptr);
        const unsigned int timeout = 5;
        const unsigned int protocol = MYSQL_PROTOCOL_TCP;
        mysql_options(mysql_, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
        mysql_options(mysql_, MYSQL_OPT_PROTOCOL, &protocol);
        mysql_options(mysql_, MYSQL_SET_CHARSET_NAME, "utf8mb4");
        if (mysql_real_connect(mysql_, c.host.c_str(), c.user.c_str(), c.password ? c.password->c_str() : nullptr,
                               database.empty() ? nullptr : database.c_str(), c.port, nullptr, 0) == nullptr) {
            const std::string message = mysql_error(mysql_);
            mysql_close(mysql_);
            throw std::runtime_error(
                fmt::format("cannot reach the MariaDB test server at {}:{}: {} (is it running? "
                            "scripts/services.sh start mysql)",
                            c.host, c.port, message));
        }
    }
    ~Admin() { mysql_close(mysql_); }
    Admin(const Admin&) = delete;
    Admin& operator=(const Admin&) = delete;

    std::vector<std::vector<std::string>> Query(const std::string& sql) {
        if (mysql_real_query(mysql_, sql.data(), sql.size()) != 0) {
            throw std::runtime_error(fmt::format("admin \"{}\": {}", sql, mysql_error(mysql_)));
        }
        std::vector<std::vector<std::string>> rows;
        MYSQL_RES* res = mysql_store_result(mysql_);
        if (res == nullptr) return rows;
        const unsigned int n = mysql_num_fields(res);
        while (MYSQL_ROW row = mysql_fetch_row(res)) {
            const unsigned long* lengths = mysql_fetch_lengths(res);
            std::vector<std::string> out;
            for (unsigned int i = 0; i < n; ++i) out.emplace_back(row[i] != nullptr ? row[i] : "", lengths[i]);
            rows.push_back(std::move(out));
        }
        mysql_free_result(res);
        return rows;
    }
    void Exec(const std::string& sql) { (void)Query(sql); }
    std::string Value(const std::string& sql) {
        auto rows = Query(sql);
        return rows.empty() || rows[0].empty() ? std::string() : rows[0][0];
    }

private:
    MYSQL* mysql_;
};

// A database of its own for one test; dropped on destruction.
class TestDatabase {
public:
    explicit TestDatabase(MysqlConfig server) : server_(std::move(server)) {
        static std::atomic<int> counter{0};
        name_ = fmt::format("keel_t_{}_{}", ::getpid(), counter.fetch_add(1));
        Admin admin(server_, "");
        admin.Exec("DROP DATABASE IF EXISTS " + name_);
        admin.Exec("CREATE DATABASE " + name_ + " CHARACTER SET utf8mb4");
    }
    ~TestDatabase() {
        try {
            Admin(server_, "").Exec("DROP DATABASE IF EXISTS " + name_);
        } catch (const std::exception&) {  // a test that broke the server already failed
        }
    }
    TestDatabase(const TestDatabase&) = delete;
    TestDatabase& operator=(const TestDatabase&) = delete;

    const std::string& name() const { return name_; }
    const MysqlConfig& server() const { return server_; }
    std::string Uri(std::string_view query = "") const { return UriFor(server_, name_, query); }
    std::unique_ptr<Admin> Connect() const { return std::make_unique<Admin>(server_, name_); }

private:
    MysqlConfig server_;
    std::string name_;
};

// ---------------------------------------------------------------------------------------------------------------
// The conformance suite

testing::BackendFactory MysqlBackendFactory() {
    struct State {
        std::unique_ptr<TestDatabase> db;
        std::string error;
    };
    auto state = std::make_shared<State>();
    testing::BackendFactory factory;
    factory.name = "mysql";
    factory.durable = true;
    factory.setup = [state](std::string_view) {
        state->db.reset();
        state->error.clear();
        try {
            state->db = std::make_unique<TestDatabase>(TestServer());
        } catch (const std::exception& e) {
            state->error = e.what();
        }
    };
    factory.teardown = [state] { state->db.reset(); };
    factory.open_with = [state](const StoreOptions& options) -> Result<std::unique_ptr<EventStore>> {
        if (!state->db) return Status::Unavailable(state->error.empty() ? "no test database" : state->error);
        return OpenStore(state->db->Uri(), options);
    };
    factory.open = [open_with = factory.open_with] { return open_with(StoreOptions{}); };
    return factory;
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

EventData Ev(std::string type, std::string data = R"({"x":1})") {
    EventData e;
    e.event_id = Uuid::Generate();
    e.type = std::move(type);
    e.data = std::move(data);
    return e;
}

std::string Hex(const Uuid& id) {
    std::string out;
    for (uint8_t b : id.bytes()) out += fmt::format("{:02x}", b);
    return out;
}

std::vector<RecordedEvent> AllEvents(EventStore& store) {
    ReadAllOptions o;
    o.limit = 0;
    return store.ReadAll(o).value().events;
}

std::vector<int64_t> Versions(const std::vector<RecordedEvent>& events) {
    std::vector<int64_t> out;
    for (const auto& e : events) out.push_back(e.stream_version);
    return out;
}

std::vector<int64_t> Range(int64_t first, int64_t last) {
    std::vector<int64_t> out;
    for (int64_t v = first; v <= last; ++v) out.push_back(v);
    return out;
}

bool StrictlyIncreasingPositions(const std::vector<RecordedEvent>& events) {
    for (size_t i = 1; i < events.size(); ++i) {
        if (events[i - 1].global_position >= events[i].global_position) return false;
    }
    return true;
}

template <class Pred>
bool WaitUntil(Pred pred, std::chrono::milliseconds timeout = 20s, std::chrono::milliseconds poll = 5ms) {
    const auto deadline = Clock::now() + timeout;
    while (!pred()) {
        if (Clock::now() > deadline) return false;
        std::this_thread::sleep_for(poll);
    }
    return true;
}

class Collector {
public:
    std::function<Status(const RecordedEvent&)> Handler() {
        return [this](const RecordedEvent& e) {
            std::lock_guard lock(mu_);
            events_.push_back(e);
            cv_.notify_all();
            return Status::Ok();
        };
    }
    bool WaitFor(size_t n, std::chrono::milliseconds timeout = 20s) {
        std::unique_lock lock(mu_);
        return cv_.wait_for(lock, timeout, [&] { return events_.size() >= n; });
    }
    std::vector<RecordedEvent> events() const {
        std::lock_guard lock(mu_);
        return events_;
    }

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<RecordedEvent> events_;
};

SubscriptionOptions FastSubscription() {
    SubscriptionOptions o;
    o.poll_interval = 20ms;
    o.checkpoint_interval = 0ms;
    o.retry_backoff = 1ms;
    return o;
}

// Kills every connection to `database` but the admin's own (the store's writer and readers); returns how many.
int KillStoreConnections(Admin& admin, const std::string& database) {
    int killed = 0;
    for (auto& row : admin.Query(fmt::format("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{}' AND "
                                             "ID <> CONNECTION_ID() AND COMMAND <> 'Killed'",
                                             database))) {
        try {
            admin.Exec("KILL CONNECTION " + row[0]);
            ++killed;
        } catch (const std::exception&) {  // it ended between the listing and the KILL
        }
    }
    return killed;
}

// How many transactions of the server wait for a row lock. InnoDB refreshes INNODB_TRX at most every 100 ms (and
// not at all while it is read more often), so callers poll it with kTrxPoll.
constexpr auto kTrxPoll = 200ms;
int LockWaits(Admin& admin) {
    return std::stoi(admin.Value("SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'"));
}

// Inserts one event the way the backend does, inside the admin's open transaction: the sequencer lock (unless
// `take_sequencer` is false), then the event row and the stream row. Returns the event's global position.
int64_t InsertEventLikeTheBackend(Admin& a, const std::string& stream, const EventData& e, bool take_sequencer) {
    a.Exec("START TRANSACTION");
    if (take_sequencer) a.Query("SELECT id FROM keel_sequencer WHERE id = 1 FOR UPDATE");
    a.Exec(
        fmt::format("INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, "
                    "recorded_at) VALUES (UNHEX('{}'), '{}', 0, '{}', '{}', '', {})",
                    Hex(e.event_id), stream, e.type, e.data, detail::NowMicros()));
    const int64_t position = std::stoll(a.Value("SELECT LAST_INSERT_ID()"));
    a.Exec(
        fmt::format("INSERT INTO keel_streams (stream_id, version, state, custom_metadata, updated_at) "
                    "VALUES ('{}', 0, 0, '', {})",
                    stream, detail::NowMicros()));
    return position;
}

// ---------------------------------------------------------------------------------------------------------------
// MariaDB-specific tests, each in a fresh database

class MysqlStoreTest : public ::testing::Test {
protected:
    void SetUp() override {
        try {
            db_ = std::make_unique<TestDatabase>(TestServer());
        } catch (const std::exception& e) {
            FAIL() << e.what();
        }
    }

    std::unique_ptr<EventStore> Open(std::string_view query = "", const StoreOptions& options = {}) {
        auto store = OpenStore(db_->Uri(query), options);
        if (!store.ok()) throw StatusError(store.status());
        return std::move(*store);
    }
    std::vector<std::string> Tables() {
        std::vector<std::string> out;
        for (auto& row : db_->Connect()->Query(fmt::format(
                 "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}' ORDER BY TABLE_NAME",
                 db_->name()))) {
            out.push_back(row[0]);
        }
        return out;
    }

    std::unique_ptr<TestDatabase> db_;
};

// Seed 002: a week was lost because MyISAM silently ignored transactions. keel refuses it before touching anything.
TEST_F(MysqlStoreTest, MyisamEventsTableIsRefusedNamingTableEngineAndFix) {
    db_->Connect()->Exec(
        "CREATE TABLE keel_events (global_position BIGINT AUTO_INCREMENT PRIMARY KEY, stream_id VARCHAR(256)) "
        "ENGINE=MyISAM");

    auto store = OpenStore(db_->Uri());
    ASSERT_EQ(store.status().code(), StatusCode::kFailedPrecondition) << store.status().ToString();
    const std::string message = store.status().message();
    EXPECT_TRUE(ContainsNoCase(message, "keel_events")) << message;
    EXPECT_TRUE(ContainsNoCase(message, "MyISAM")) << message;
    EXPECT_TRUE(ContainsNoCase(message, "ALTER TABLE keel_events ENGINE=InnoDB")) << message;
    EXPECT_TRUE(ContainsNoCase(message, db_->name())) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_EQ(Tables(), std::vector<std::string>{"keel_events"}) << "the refused open created tables";
}

TEST_F(MysqlStoreTest, NonTransactionalEngineOnAnyKeelTableIsRefusedAtEveryOpen) {
    {
        auto store = Open();
        ASSERT_TRUE(store->Append("User-1", ExpectedVersion::NoStream(), {Ev("Created")}).ok());
        ASSERT_TRUE(store->SaveCheckpoint("projection", 1).ok());
    }
    for (const char* engine : {"Aria", "MyISAM", "MEMORY"}) {
        db_->Connect()->Exec(fmt::format("ALTER TABLE keel_sequencer ENGINE={}", engine));
        auto store = OpenStore(db_->Uri());
        ASSERT_EQ(store.status().code(), StatusCode::kFailedPrecondition)
            << engine << ": " << store.status().ToString();
        EXPECT_TRUE(ContainsNoCase(store.status().message(), "keel_sequencer")) << store.status().message();
        EXPECT_TRUE(ContainsNoCase(store.status().message(), engine)) << store.status().message();
    }
    // The fix the message names makes the store open again, with everything in it.
    db_->Connect()->Exec("ALTER TABLE keel_sequencer ENGINE=InnoDB");
    auto store = Open();
    EXPECT_EQ(store->ReadStream("User-1").value().size(), 1u);
}

TEST_F(MysqlStoreTest, TablesAreInnodbWithByteWiseNoPadCollation) {
    auto store = Open();
    auto admin = db_->Connect();
    auto rows = admin->Query(fmt::format(
        "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}' ORDER BY TABLE_NAME",
        db_->name()));
    std::vector<std::string> names;
    for (auto& row : rows) {
        names.push_back(row[0]);
        EXPECT_EQ(row[1], "InnoDB") << row[0];
    }
    EXPECT_EQ(names, (std::vector<std::string>{"keel_checkpoints", "keel_events", "keel_schema", "keel_sequencer",
                                               "keel_snapshots", "keel_streams"}));
    EXPECT_EQ(admin->Value(fmt::format("SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                                       "'{}' AND TABLE_NAME = 'keel_events' AND COLUMN_NAME = 'stream_id'",
                                       db_->name())),
              "utf8mb4_nopad_bin");
    EXPECT_EQ(admin->Value("SELECT version FROM keel_schema WHERE component = 'event_store'"),
              std::to_string(detail::kMysqlSchemaVersion));
}

// utf8mb4_bin is PAD SPACE: it calls 'User-1' and 'User-1 ' equal. keel's ids compare byte-wise, as in SQLite.
TEST_F(MysqlStoreTest, StreamIdsDifferingOnlyByTrailingSpaceOrCaseAreDistinct) {
    auto store = Open();
    for (const char* stream : {"User-1", "User-1 ", "user-1", "User-1  "}) {
        auto r = store->Append(stream, ExpectedVersion::NoStream(), {Ev("Created")});
        ASSERT_TRUE(r.ok()) << "'" << stream << "': " << r.status().ToString();
    }
    for (const char* stream : {"User-1", "User-1 ", "user-1", "User-1  "}) {
        auto events = store->ReadStream(stream).value();
        ASSERT_EQ(events.size(), 1u) << "'" << stream << "'";
        EXPECT_EQ(events[0].stream_id, stream);
    }
    auto streams = store->ListStreams().value();
    ASSERT_EQ(streams.size(), 4u);
    // Byte order, as SQLite's BINARY collation: 'U' (0x55) < 'u' (0x75); shorter prefix first.
    EXPECT_EQ(streams[0].stream_id, "User-1");
    EXPECT_EQ(streams[1].stream_id, "User-1 ");
    EXPECT_EQ(streams[2].stream_id, "User-1  ");
    EXPECT_EQ(streams[3].stream_id, "user-1");
}

TEST_F(MysqlStoreTest, NonUtf8TypeIsInvalidArgumentAndWritesNothing) {
    auto store = Open();
    auto r = store->Append("Bytes-1", ExpectedVersion::Any(), {Ev("Bad\xff\xfeType")});
    ASSERT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
    EXPECT_EQ(store->GetStream("Bytes-1").status().code(), StatusCode::kNotFound);
    EXPECT_TRUE(AllEvents(*store).empty());
    // The store goes on working.
    EXPECT_TRUE(store->Append("Bytes-1", ExpectedVersion::NoStream(), {Ev("Good")}).ok());
}

TEST_F(MysqlStoreTest, EventsUpToTheSizeLimitRoundTrip) {
    auto store = Open();
    EventData big = Ev("Big");
    big.metadata = R"({"note":")" + std::string(200'000, 'm') + R"("})";  // over TEXT's 64 KiB
    big.data.assign((size_t{1} << 20) - big.type.size() - big.metadata.size(), '\0');
    for (size_t i = 0; i < big.data.size(); ++i) big.data[i] = static_cast<char>(i * 7919 % 251);
    ASSERT_EQ(big.type.size() + big.data.size() + big.metadata.size(), size_t{1} << 20);
    ASSERT_TRUE(store->Append("Big-1", ExpectedVersion::NoStream(), {big}).ok());
    auto events = store->ReadStream("Big-1").value();
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].data, big.data);
    EXPECT_EQ(events[0].metadata, big.metadata);
}

TEST_F(MysqlStoreTest, NewerSchemaVersionIsNotSupportedAndLeftAlone) {
    { auto store = Open(); }
    db_->Connect()->Exec("UPDATE keel_schema SET version = 99");
    auto store = OpenStore(db_->Uri());
    ASSERT_EQ(store.status().code(), StatusCode::kNotSupported) << store.status().ToString();
    EXPECT_TRUE(ContainsNoCase(store.status().message(), "newer")) << store.status().ToString();
    EXPECT_EQ(db_->Connect()->Value("SELECT version FROM keel_schema"), "99");
}

TEST_F(MysqlStoreTest, KeelEventsWithoutSchemaTableIsNotAKeelStore) {
    db_->Connect()->Exec("CREATE TABLE keel_events (id INT PRIMARY KEY) ENGINE=InnoDB");
    auto store = OpenStore(db_->Uri());
    ASSERT_EQ(store.status().code(), StatusCode::kCorruption) << store.status().ToString();
    EXPECT_TRUE(ContainsNoCase(store.status().message(), "not a keel store")) << store.status().ToString();
    EXPECT_EQ(Tables(), std::vector<std::string>{"keel_events"});
}

TEST_F(MysqlStoreTest, ServiceTablesInTheDatabaseAreKept) {
    auto admin = db_->Connect();
    admin->Exec("CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(20)) ENGINE=InnoDB");
    admin->Exec("INSERT INTO customers VALUES (1, 'Ada')");
    {
        auto store = Open();
        ASSERT_TRUE(store->Append("User-1", ExpectedVersion::Any(), {Ev("Created")}).ok());
    }
    EXPECT_EQ(admin->Value("SELECT name FROM customers"), "Ada");
    EXPECT_EQ(Open()->ReadStream("User-1").value().size(), 1u);
}

TEST_F(MysqlStoreTest, CreateIfMissingFalseOnEmptyDatabaseIsNotFoundAndCreatesNothing) {
    StoreOptions options;
    options.create_if_missing = false;
    auto store = OpenStore(db_->Uri(), options);
    ASSERT_EQ(store.status().code(), StatusCode::kNotFound) << store.status().ToString();
    EXPECT_TRUE(Tables().empty());
    { auto created = Open(); }
    EXPECT_TRUE(OpenStore(db_->Uri(), options).ok());
}

TEST_F(MysqlStoreTest, MariadbSchemeAndUriParametersOpenTheSameStore) {
    auto a = Open();
    ASSERT_TRUE(a->Append("User-1", ExpectedVersion::NoStream(), {Ev("Created")}).ok());
    std::string uri = db_->Uri("durability=full&connect_timeout=3&read_timeout=20&write_timeout=20");
    uri.replace(0, 5, "mariadb");
    auto b = OpenStore(uri);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    EXPECT_EQ((*b)->ReadStream("User-1").value().size(), 1u);
    auto stats = (*b)->Stats().value();
    EXPECT_EQ(stats.backend, "mysql");
    EXPECT_TRUE(ContainsNoCase(stats.location, db_->name())) << stats.location;
    EXPECT_FALSE(ContainsNoCase(stats.location, "keel:")) << "the location must not show credentials";
    EXPECT_GT(stats.size_bytes, 0);
}

// Group commit as the front drives it: one batch, one transaction, each append with its own check and result. An
// append that fails after writing some of its rows is rolled back to its savepoint and leaves no trace; the appends
// after it see the versions the successful ones left.
TEST_F(MysqlStoreTest, BatchKeepsEachResultAndRollsBackOnlyTheFailingAppends) {
    auto store = Open();
    const EventData elsewhere = Ev("Elsewhere");
    ASSERT_TRUE(store->Append("Other-1", ExpectedVersion::NoStream(), {elsewhere}).ok());
    const EventData resent = Ev("Resent");
    const AppendResult original = store->Append("Resend-1", ExpectedVersion::NoStream(), {resent}).value();

    const std::vector<EventData> a0 = {Ev("A0")};
    const std::vector<EventData> b_reuses_id = {Ev("B-new"), elsewhere};  // the 2nd id is stored on Other-1
    const std::vector<EventData> a12 = {Ev("A1"), Ev("A2")};
    const std::vector<EventData> b0 = {Ev("B0")};
    const std::vector<EventData> c_bad_text = {Ev("C-good"), Ev("Bad\xff\xfe")};  // the 2nd type is not UTF-8
    const std::vector<EventData> a_stale = {Ev("A-stale")};
    const std::vector<EventData> resend = {resent};
    struct Input {
        const char* stream;
        ExpectedVersion expected;
        const std::vector<EventData>* events;
    };
    const Input inputs[] = {
        {"Batch-A", ExpectedVersion::NoStream(), &a0},      {"Batch-B", ExpectedVersion::NoStream(), &b_reuses_id},
        {"Batch-A", ExpectedVersion::Exact(0), &a12},       {"Batch-B", ExpectedVersion::NoStream(), &b0},
        {"Batch-C", ExpectedVersion::Any(), &c_bad_text},   {"Batch-A", ExpectedVersion::Exact(0), &a_stale},
        {"Resend-1", ExpectedVersion::NoStream(), &resend},
    };
    std::vector<detail::AppendRequest> requests(std::size(inputs));
    std::vector<detail::AppendRequest*> batch;
    for (size_t i = 0; i < requests.size(); ++i) {
        requests[i].stream = inputs[i].stream;
        requests[i].expected = inputs[i].expected;
        requests[i].events = *inputs[i].events;
        batch.push_back(&requests[i]);
    }
    store->backend().AppendBatch(batch);

    ASSERT_TRUE(requests[0].result.ok()) << requests[0].result.status().ToString();
    EXPECT_EQ(requests[0].result->next_expected_version, 0);
    EXPECT_EQ(requests[1].result.status().code(), StatusCode::kInvalidArgument)
        << requests[1].result.status().ToString();
    ASSERT_TRUE(requests[2].result.ok()) << requests[2].result.status().ToString();
    EXPECT_EQ(requests[2].result->next_expected_version, 2);
    EXPECT_EQ(requests[2].result->last_position - requests[2].result->first_position, 1);
    EXPECT_GT(requests[2].result->first_position, requests[0].result->last_position);
    ASSERT_TRUE(requests[3].result.ok()) << requests[3].result.status().ToString();
    EXPECT_EQ(requests[3].result->next_expected_version, 0) << "B's failed append must leave no version behind";
    EXPECT_EQ(requests[4].result.status().code(), StatusCode::kInvalidArgument)
        << requests[4].result.status().ToString();
    EXPECT_EQ(requests[5].result.status().code(), StatusCode::kWrongExpectedVersion);
    EXPECT_EQ(requests[5].result.status().actual_version(), std::optional<int64_t>(2));
    ASSERT_TRUE(requests[6].result.ok()) << requests[6].result.status().ToString();
    EXPECT_TRUE(requests[6].result->already_present);
    EXPECT_EQ(requests[6].result->first_position, original.first_position);

    auto ids = [](const std::vector<RecordedEvent>& events) {
        std::vector<Uuid> out;
        for (const auto& e : events) out.push_back(e.event_id);
        return out;
    };
    EXPECT_EQ(ids(store->ReadStream("Batch-A").value()),
              (std::vector<Uuid>{a0[0].event_id, a12[0].event_id, a12[1].event_id}));
    EXPECT_EQ(ids(store->ReadStream("Batch-B").value()), std::vector<Uuid>{b0[0].event_id});
    EXPECT_EQ(store->ReadStream("Batch-C").status().code(), StatusCode::kNotFound);
    auto all = AllEvents(*store);
    EXPECT_EQ(all.size(), 6u);
    for (const auto& e : all) {
        EXPECT_NE(e.event_id, b_reuses_id[0].event_id) << "a rolled-back row is visible";
        EXPECT_NE(e.event_id, c_bad_text[0].event_id) << "a rolled-back row is visible";
    }
    EXPECT_TRUE(StrictlyIncreasingPositions(all));
}

// ---------------------------------------------------------------------------------------------------------------
// Open errors: one line naming host, port, database and the cause; nothing half-created

void ExpectOneLineNaming(const Status& s, std::initializer_list<std::string_view> words) {
    EXPECT_EQ(s.message().find('\n'), std::string::npos) << s.message();
    for (std::string_view w : words) EXPECT_TRUE(ContainsNoCase(s.message(), w)) << "'" << w << "' in " << s.message();
}

TEST(MysqlOpenErrorTest, UnreachableServerIsUnavailableNamingHostPortAndDatabase) {
    const auto started = Clock::now();
    auto store = OpenStore("mysql://keel:keel@127.0.0.1:1/keel_test?connect_timeout=2");
    ASSERT_EQ(store.status().code(), StatusCode::kUnavailable) << store.status().ToString();
    ExpectOneLineNaming(store.status(), {"127.0.0.1:1/keel_test", "connect"});
    EXPECT_LT(Clock::now() - started, 10s);
}

TEST(MysqlOpenErrorTest, WrongPasswordIsInvalidArgumentNamingUserAndServer) {
    MysqlConfig server;
    try {
        server = TestServer();
    } catch (const std::exception& e) {
        FAIL() << e.what();
    }
    server.password = "definitely-not-the-password";
    auto store = OpenStore(UriFor(server, server.database));
    ASSERT_EQ(store.status().code(), StatusCode::kInvalidArgument) << store.status().ToString();
    ExpectOneLineNaming(store.status(),
                        {fmt::format("{}:{}/{}", server.host, server.port, server.database), server.user, "denied"});
    EXPECT_FALSE(ContainsNoCase(store.status().message(), "definitely-not-the-password"));
}

TEST(MysqlOpenErrorTest, MissingDatabaseIsInvalidArgumentAndIsNotCreated) {
    MysqlConfig server;
    try {
        server = TestServer();
    } catch (const std::exception& e) {
        FAIL() << e.what();
    }
    const std::string missing = fmt::format("keel_missing_{}", ::getpid());
    auto store = OpenStore(UriFor(server, missing));
    ASSERT_EQ(store.status().code(), StatusCode::kInvalidArgument) << store.status().ToString();
    ExpectOneLineNaming(store.status(), {fmt::format("{}:{}", server.host, server.port), missing, "does not exist"});
    Admin admin(server, "");
    EXPECT_TRUE(admin.Query(fmt::format("SHOW DATABASES LIKE '{}'", missing)).empty());
}

TEST(MysqlOpenErrorTest, MalformedUriIsInvalidArgument) {
    for (const char* uri : {"mysql://keel:keel@127.0.0.1:port/db", "mysql://keel:keel@127.0.0.1:13306",
                            "mariadb:keel_test", "mysql://keel@127.0.0.1/db?durability=maybe"}) {
        auto store = OpenStore(uri);
        EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument) << uri << ": " << store.status().ToString();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Global order: the race of two open transactions

// Connection A inserts an event the way the backend does and keeps its transaction open; store B's append must wait
// for A's sequencer lock; a subscriber on a third store object reads all along. After A commits, the subscriber
// gets both events, A's first, and skips nothing.
TEST_F(MysqlStoreTest, SubscriberNeverSkipsAnEventWhoseTransactionCommitsLate) {
    auto store_b = Open();
    auto reader = Open();
    Collector collected;
    auto sub = reader->Subscribe(FastSubscription(), collected.Handler()).value();

    auto a = db_->Connect();
    auto admin = db_->Connect();
    const EventData event_a = Ev("HeldOpen");
    const int64_t position_a = InsertEventLikeTheBackend(*a, "Race-A", event_a, /*take_sequencer=*/true);

    const EventData event_b = Ev("Waiting");
    auto append_b =
        std::async(std::launch::async, [&] { return store_b->Append("Race-B", ExpectedVersion::Any(), {event_b}); });
    ASSERT_TRUE(WaitUntil([&] { return LockWaits(*admin) >= 1; }, 20s, kTrxPoll))
        << "B's append never waited for A's lock";
    std::this_thread::sleep_for(300ms);  // the subscriber polls (20 ms) meanwhile
    EXPECT_EQ(append_b.wait_for(0ms), std::future_status::timeout) << "B committed while A held the sequencer";
    EXPECT_TRUE(collected.events().empty()) << "the subscriber saw an event while A's transaction was open";

    a->Exec("COMMIT");
    auto result_b = append_b.get();
    ASSERT_TRUE(result_b.ok()) << result_b.status().ToString();
    EXPECT_GT(result_b->first_position, position_a);

    ASSERT_TRUE(collected.WaitFor(2)) << "received " << collected.events().size() << " of 2";
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(sub->Stop().ok());
    auto events = collected.events();
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[0].event_id, event_a.event_id);
    EXPECT_EQ(events[0].global_position, position_a);
    EXPECT_EQ(events[1].event_id, event_b.event_id);
    EXPECT_EQ(events[1].global_position, result_b->first_position);
}

// The same race without the sequencer lock shows what the lock prevents: B takes a later position, commits first,
// and a reader that read up to B's position has already passed A's. (So the test above would catch a backend that
// appended without the lock.)
TEST_F(MysqlStoreTest, WithoutTheSequencerLockALateCommitWouldBeSkipped) {
    auto store = Open();
    auto a = db_->Connect();
    const int64_t position_a = InsertEventLikeTheBackend(*a, "Race-A", Ev("HeldOpen"), /*take_sequencer=*/false);

    auto b = db_->Connect();
    b->Exec("START TRANSACTION");
    const EventData event_b = Ev("Overtaking");
    b->Exec(
        fmt::format("INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, "
                    "recorded_at) VALUES (UNHEX('{}'), 'Race-B', 0, 'Overtaking', '{{}}', '', {})",
                    Hex(event_b.event_id), detail::NowMicros()));
    b->Exec("COMMIT");

    auto seen = AllEvents(*store);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].event_id, event_b.event_id);
    EXPECT_GT(seen[0].global_position, position_a) << "B's event sits after A's still invisible one";
    a->Exec("COMMIT");
    ReadAllOptions after_b;
    after_b.from_position = seen[0].global_position + 1;
    EXPECT_TRUE(store->ReadAll(after_b).value().events.empty()) << "a reader continuing after B never sees A";
    EXPECT_EQ(AllEvents(*store).size(), 2u);
}

// ---------------------------------------------------------------------------------------------------------------
// Many processes

struct Spawned {
    pid_t pid = -1;
    std::string output_path;
};

Spawned SpawnAppender(const std::vector<std::string>& args, const std::string& output_path) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    Spawned s;
    s.output_path = output_path;
    const int rc = posix_spawn(&s.pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error(fmt::format("posix_spawn {}: error {}", argv[0], rc));
    return s;
}

int WaitExit(pid_t pid) {
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST_F(MysqlStoreTest, TwoProcessesAppendingWithExactVersionsDetectEveryConflict) {
    constexpr int kProcesses = 2;
    constexpr int kThreads = 4;
    constexpr int kAttempts = 40;
    constexpr int kStreams = 3;
    { auto created = Open(); }  // create the schema once, before the processes race
    testing::TempDir dir("keel-mysql-procs");
    const auto start_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              (std::chrono::system_clock::now() + 1500ms).time_since_epoch())
                              .count();
    std::vector<Spawned> children;
    for (int p = 0; p < kProcesses; ++p) {
        children.push_back(
            SpawnAppender({KEEL_MYSQL_APPENDER, db_->Uri(), "Contended", std::to_string(kStreams),
                           std::to_string(kThreads), std::to_string(kAttempts), std::to_string(start_ms)},
                          (dir / fmt::format("out-{}.txt", p)).string()));
    }
    struct Success {
        std::string stream;
        int64_t version;
        std::string id;
        int64_t position;
    };
    std::vector<Success> successes;
    int conflicts = 0;
    for (const Spawned& child : children) {
        const int code = WaitExit(child.pid);
        std::ifstream in(child.output_path);
        std::string line;
        int lines = 0;
        while (std::getline(in, line)) {
            ++lines;
            std::istringstream words(line);
            std::string kind;
            words >> kind;
            if (kind == "ok") {
                Success s;
                words >> s.stream >> s.version >> s.id >> s.position;
                successes.push_back(s);
            } else if (kind == "conflict") {
                ++conflicts;
            } else {
                ADD_FAILURE() << "appender: " << line;
            }
        }
        EXPECT_EQ(code, 0);
        EXPECT_EQ(lines, kThreads * kAttempts) << child.output_path;
    }
    const int attempts = kProcesses * kThreads * kAttempts;
    EXPECT_EQ(static_cast<int>(successes.size()) + conflicts, attempts);
    EXPECT_GT(conflicts, 0) << "two processes on " << kStreams << " streams never conflicted";

    std::map<std::pair<std::string, int64_t>, Success> by_key;
    for (const auto& s : successes) {
        EXPECT_TRUE(by_key.emplace(std::pair{s.stream, s.version}, s).second)
            << s.stream << " version " << s.version << " acknowledged twice";
    }
    auto store = Open();
    size_t stored = 0;
    for (int k = 0; k < kStreams; ++k) {
        const std::string stream = "Contended-" + std::to_string(k);
        ReadStreamOptions all;
        all.limit = 0;
        auto events = store->ReadStream(stream, all);
        if (!events.ok()) continue;  // a stream no attempt chose
        stored += events->size();
        EXPECT_EQ(Versions(*events), Range(0, static_cast<int64_t>(events->size()) - 1)) << stream;
        for (const auto& e : *events) {
            auto it = by_key.find({stream, e.stream_version});
            ASSERT_NE(it, by_key.end()) << stream << " version " << e.stream_version << " was never acknowledged";
            EXPECT_EQ(e.event_id.ToString(), it->second.id);
            EXPECT_EQ(e.global_position, it->second.position);
        }
    }
    EXPECT_EQ(stored, successes.size());
    auto all = AllEvents(*store);
    EXPECT_EQ(all.size(), successes.size());
    EXPECT_TRUE(StrictlyIncreasingPositions(all));
}

// ---------------------------------------------------------------------------------------------------------------
// Lost connections

TEST_F(MysqlStoreTest, AppendsAndReadsContinueAfterTheServerKillsTheStoreConnections) {
    auto store = Open();
    auto admin = db_->Connect();
    std::vector<Uuid> ids;
    for (int round = 0; round < 4; ++round) {
        const EventData e = Ev("Round");
        auto r = store->Append("Killed-1", ExpectedVersion::Exact(round - 1), {e});
        ASSERT_TRUE(r.ok()) << "round " << round << ": " << r.status().ToString();
        EXPECT_FALSE(r->already_present);
        EXPECT_EQ(r->next_expected_version, round);
        ids.push_back(e.event_id);
        ASSERT_EQ(store->ReadStream("Killed-1").value().size(), ids.size());  // opens a reader connection

        ASSERT_GE(KillStoreConnections(*admin, db_->name()), 2) << "expected the writer and a reader connection";
    }
    // Every call type works on the next try after the kill.
    EXPECT_EQ(store->GetStream("Killed-1").value().version, 3);
    EXPECT_GE(KillStoreConnections(*admin, db_->name()), 1);
    EXPECT_TRUE(store->SaveCheckpoint("after-kill", 4).ok());
    EXPECT_GE(KillStoreConnections(*admin, db_->name()), 1);
    StreamMetadata m;
    m.custom = R"({"owner":"test"})";
    EXPECT_TRUE(store->SetStreamMetadata("Killed-1", m).ok());
    EXPECT_GE(KillStoreConnections(*admin, db_->name()), 1);
    auto events = store->ReadStream("Killed-1").value();
    ASSERT_EQ(events.size(), ids.size());
    for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(events[i].event_id, ids[i]);
    EXPECT_EQ(AllEvents(*store).size(), ids.size());
    EXPECT_EQ(store->LoadCheckpoint("after-kill").value(), 4);
}

// The writer is killed while it waits for the sequencer lock inside its transaction: nothing was written, so the
// store reconnects and runs the append again; the caller sees one ordinary success.
TEST_F(MysqlStoreTest, WriterKilledWhileWaitingForTheSequencerRetriesOnce) {
    auto store = Open();
    auto holder = db_->Connect();
    auto admin = db_->Connect();
    holder->Exec("START TRANSACTION");
    holder->Query("SELECT id FROM keel_sequencer WHERE id = 1 FOR UPDATE");

    const EventData e = Ev("Patient");
    auto append =
        std::async(std::launch::async, [&] { return store->Append("Kill-1", ExpectedVersion::NoStream(), {e}); });
    ASSERT_TRUE(WaitUntil([&] { return LockWaits(*admin) >= 1; }, 20s, kTrxPoll));
    const std::string waiting =
        admin->Value("SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'");
    admin->Exec("KILL " + waiting);
    // The retry waits for the lock again on a new connection; release it.
    ASSERT_TRUE(WaitUntil(
        [&] {
            return LockWaits(*admin) >= 1 &&
                   admin->Value(
                       "SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX WHERE trx_state = "
                       "'LOCK WAIT'") != waiting;
        },
        20s, kTrxPoll))
        << "the store did not reconnect and retry";
    holder->Exec("ROLLBACK");

    auto r = append.get();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(r->already_present);
    EXPECT_EQ(r->next_expected_version, 0);
    auto events = store->ReadStream("Kill-1").value();
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].event_id, e.event_id);
    EXPECT_EQ(AllEvents(*store).size(), 1u);
}

// The worst moment: COMMIT reached the server (which commits) but its reply never reaches keel. The outcome is
// unknown to the store, which reconnects and retries; the event ids find the committed rows, and the caller gets
// one ordinary success with the original positions — never a duplicate, never "already present".
TEST_F(MysqlStoreTest, CommitWhoseReplyIsLostIsRetriedWithoutDuplicate) {
    auto store = Open();
    std::atomic<int> broken{0};
    std::atomic<bool> armed{true};
    detail::MysqlTestHooks hooks;
    hooks.after_commit_sent = [&](int socket) {
        if (!armed.exchange(false)) return;
        // Replace the connection's socket by an unconnected one: the server still receives COMMIT (the old socket
        // is closed after its pending bytes), keel reads from a socket that is not connected.
        const int dead = ::socket(AF_INET, SOCK_STREAM, 0);
        ::dup2(dead, socket);
        ::close(dead);
        broken.fetch_add(1);
    };
    ASSERT_TRUE(detail::SetMysqlTestHooks(store->backend(), hooks).ok());

    const std::vector<EventData> first = {Ev("One"), Ev("Two")};
    auto r = store->Append("Lost-1", ExpectedVersion::NoStream(), std::span<const EventData>(first));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(broken.load(), 1);
    EXPECT_FALSE(r->already_present) << "the caller's own append must not look like a re-send";
    EXPECT_EQ(r->next_expected_version, 1);
    // A fresh database: positions 1 and 2 prove the first attempt's commit is the one that counted (a rolled-back
    // attempt would have burnt them).
    EXPECT_EQ(r->first_position, 1);
    EXPECT_EQ(r->last_position, 2);

    armed = true;  // again, with ExpectedVersion::Any (the retry meets the duplicate-key path)
    const EventData third = Ev("Three");
    auto r2 = store->Append("Lost-1", ExpectedVersion::Any(), {third});
    ASSERT_TRUE(r2.ok()) << r2.status().ToString();
    EXPECT_EQ(broken.load(), 2);
    EXPECT_FALSE(r2->already_present);
    EXPECT_EQ(r2->next_expected_version, 2);
    EXPECT_EQ(r2->first_position, 3);

    auto events = store->ReadStream("Lost-1").value();
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[0].event_id, first[0].event_id);
    EXPECT_EQ(events[1].event_id, first[1].event_id);
    EXPECT_EQ(events[2].event_id, third.event_id);
    EXPECT_EQ(AllEvents(*store).size(), 3u);
    // A real re-send by the caller is still reported as one.
    auto resend = store->Append("Lost-1", ExpectedVersion::Any(), {third});
    ASSERT_TRUE(resend.ok()) << resend.status().ToString();
    EXPECT_TRUE(resend->already_present);
}

// ---------------------------------------------------------------------------------------------------------------
// A private server: killed during appends, and run with a relaxed flush setting

// A MariaDB of the test's own (scripts/services.sh with its own directory and port), so that killing it disturbs no
// one. A file lock serializes the tests that use it, also across the processes ctest starts in parallel.
class PrivateServer {
public:
    PrivateServer() : dir_(KEEL_MYSQL_PRIVATE_SERVER_DIR) {
        std::filesystem::create_directories(dir_);
        lock_fd_ = ::open((dir_ + "/.lock").c_str(), O_RDWR | O_CREAT, 0644);
        if (lock_fd_ < 0 || ::flock(lock_fd_, LOCK_EX) != 0) throw std::runtime_error("cannot lock " + dir_);
        port_ = FreePort();
    }
    ~PrivateServer() {
        (void)Services("stop");
        ::close(lock_fd_);
    }
    PrivateServer(const PrivateServer&) = delete;
    PrivateServer& operator=(const PrivateServer&) = delete;

    bool Start() { return Services("start") == 0; }
    // SIGKILL, as a crash: no shutdown, InnoDB recovers from its redo log at the next start.
    bool Kill() {
        std::ifstream in(dir_ + "/my/mysqld.pid");
        pid_t pid = 0;
        if (!(in >> pid) || pid <= 0) return false;
        if (::kill(pid, SIGKILL) != 0) return false;
        return WaitUntil([&] { return ::kill(pid, 0) != 0; }, 30s);
    }
    MysqlConfig Config() const { return ConfigFromUri(fmt::format("mysql://keel:keel@127.0.0.1:{}/keel_test", port_)); }
    std::string Uri(std::string_view query = "") const { return UriFor(Config(), "keel_test", query); }
    const std::string& log() const { return log_; }

private:
    int Services(const char* command) {
        const std::string log = dir_ + "/services.log";
        const int rc = std::system(fmt::format("KEEL_SERVICES_DIR='{}' KEEL_MYSQL_PORT={} '{}/scripts/services.sh' {} "
                                               "mysql >'{}' 2>&1",
                                               dir_, port_, KEEL_SOURCE_DIR, command, log)
                                       .c_str());
        log_ = testing::ReadFileBytes(log);
        return rc;
    }
    // A port below 32768 (outside the ephemeral range, so a restarted server can bind it again) that is free now.
    static int FreePort() {
        std::mt19937 rng(static_cast<unsigned>(::getpid()));
        for (int i = 0; i < 200; ++i) {
            const int port = 20000 + static_cast<int>(rng() % 12000);
            const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
            sockaddr_in addr{};
            addr.sin_family = AF_INET;
            addr.sin_port = htons(static_cast<uint16_t>(port));
            addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
            ::close(fd);
            if (free) return port;
        }
        throw std::runtime_error("no free port for the private MariaDB");
    }

    std::string dir_;
    int lock_fd_ = -1;
    int port_ = 0;
    std::string log_;
};

TEST(MysqlPrivateServerTest, ServerKilledDuringAppendsLosesNoAcknowledgedEventAndWritesNoneTwice) {
    PrivateServer server;
    ASSERT_TRUE(server.Start()) << server.log();
    Admin(server.Config(), "").Exec("DROP DATABASE IF EXISTS keel_test");
    Admin(server.Config(), "").Exec("CREATE DATABASE keel_test");
    StoreOptions options;
    options.busy_timeout = 1s;
    auto store = OpenStore(server.Uri("connect_timeout=2&read_timeout=10&write_timeout=10"), options).value();

    // Four writer threads append one event at a time; an append that fails with kUnavailable is retried with the
    // same event id until it succeeds, as a careful caller does.
    constexpr int kWriters = 4;
    std::atomic<bool> stop{false};
    std::atomic<int> acked{0};
    std::atomic<int> unavailable{0};
    std::mutex mu;
    std::vector<Uuid> acknowledged;
    std::vector<std::string> errors;
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
        writers.emplace_back([&, w] {
            const std::string stream = "Restart-" + std::to_string(w);
            while (!stop.load()) {
                const EventData e = Ev("Tick");
                const auto give_up = Clock::now() + 60s;
                for (;;) {
                    auto r = store->Append(stream, ExpectedVersion::Any(), {e});
                    if (r.ok()) {
                        std::lock_guard lock(mu);
                        acknowledged.push_back(e.event_id);
                        acked.fetch_add(1);
                        break;
                    }
                    if (r.status().code() != StatusCode::kUnavailable || Clock::now() > give_up) {
                        std::lock_guard lock(mu);
                        errors.push_back(r.status().ToString());
                        return;
                    }
                    unavailable.fetch_add(1);
                    std::this_thread::sleep_for(100ms);
                }
            }
        });
    }
    ASSERT_TRUE(WaitUntil([&] { return acked.load() >= 200; }, 60s));
    ASSERT_TRUE(server.Kill()) << "could not kill the private server";
    const int acked_at_kill = acked.load();
    std::this_thread::sleep_for(500ms);
    const bool restarted = server.Start();
    const bool resumed = restarted && WaitUntil([&] { return acked.load() >= acked_at_kill + 200; }, 60s);
    stop = true;
    for (auto& t : writers) t.join();
    ASSERT_TRUE(restarted) << server.log();
    ASSERT_TRUE(resumed) << "appends did not resume after the restart";
    ASSERT_TRUE(errors.empty()) << errors.front();
    EXPECT_GT(unavailable.load(), 0) << "no append noticed the outage";

    auto all = AllEvents(*store);
    std::set<Uuid> stored;
    for (const auto& e : all) EXPECT_TRUE(stored.insert(e.event_id).second) << e.event_id.ToString() << " twice";
    for (const auto& id : acknowledged) EXPECT_TRUE(stored.count(id) == 1) << id.ToString() << " lost";
    EXPECT_EQ(all.size(), acknowledged.size());
    EXPECT_TRUE(StrictlyIncreasingPositions(all));
    for (int w = 0; w < kWriters; ++w) {
        ReadStreamOptions o;
        o.limit = 0;
        auto events = store->ReadStream("Restart-" + std::to_string(w), o).value();
        EXPECT_EQ(Versions(events), Range(0, static_cast<int64_t>(events.size()) - 1));
    }
}

TEST(MysqlPrivateServerTest, FullDurabilityIsRefusedWhenTheServerDoesNotFlushEveryCommit) {
    PrivateServer server;
    ASSERT_TRUE(server.Start()) << server.log();
    Admin admin(server.Config(), "");
    admin.Exec("DROP DATABASE IF EXISTS keel_test");
    admin.Exec("CREATE DATABASE keel_test");
    admin.Exec("SET GLOBAL innodb_flush_log_at_trx_commit = 2");

    auto refused = OpenStore(server.Uri());
    ASSERT_EQ(refused.status().code(), StatusCode::kFailedPrecondition) << refused.status().ToString();
    EXPECT_TRUE(ContainsNoCase(refused.status().message(), "innodb_flush_log_at_trx_commit=2"))
        << refused.status().message();
    EXPECT_TRUE(ContainsNoCase(refused.status().message(), "durability=normal")) << refused.status().message();
    EXPECT_EQ(admin.Value("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'keel_test'"), "0");

    auto by_uri = OpenStore(server.Uri("durability=normal"));
    EXPECT_TRUE(by_uri.ok()) << by_uri.status().ToString();
    StoreOptions normal;
    normal.durability = Durability::kNormal;
    auto by_options = OpenStore(server.Uri(), normal);
    ASSERT_TRUE(by_options.ok()) << by_options.status().ToString();
    EXPECT_TRUE((*by_options)->Append("User-1", ExpectedVersion::Any(), {Ev("Created")}).ok());

    admin.Exec("SET GLOBAL innodb_flush_log_at_trx_commit = 1");
    EXPECT_TRUE(OpenStore(server.Uri()).ok());
}

}  // namespace
}  // namespace keel

KEEL_INSTANTIATE_EVENT_STORE_CONFORMANCE(Mysql, keel::MysqlBackendFactory());
KEEL_INSTANTIATE_DURABLE_EVENT_STORE_CONFORMANCE(Mysql, keel::MysqlBackendFactory());
