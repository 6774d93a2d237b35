// The event-store conformance suite and the PostgreSQL-specific guarantees, against a real server.
// Needs KEEL_TEST_PG (scripts/services.sh env prints it); without it every test here fails, it does not skip.
// Each test gets its own PostgreSQL schema (the URI's ?schema=), dropped afterwards.

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <set>
#include <thread>

#include "conformance/event_store_conformance.hpp"
#include "keel/event_store.hpp"
#include "keel/subscription.hpp"

namespace {

using keel::EventData;
using keel::ExpectedVersion;
using keel::StatusCode;
using keel::Uuid;

std::string ServerUri() {
    const char* uri = std::getenv("KEEL_TEST_PG");
    return uri != nullptr ? uri : "";
}

std::string SchemaUri(const std::string& schema) { return ServerUri() + "?schema=" + schema; }

std::string NewSchemaName() {
    static std::atomic<int> counter{0};
    return "keel_t_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
}

// A raw libpq connection for test set-up and for playing "the other writer".
class RawConn {
public:
    explicit RawConn(const std::string& uri) : c_(PQconnectdb(uri.c_str())) {
        PQsetNoticeProcessor(c_, [](void*, const char*) {}, nullptr);
    }
    ~RawConn() { PQfinish(c_); }
    bool ok() const { return PQstatus(c_) == CONNECTION_OK; }
    std::string error() const { return PQerrorMessage(c_); }
    // Runs SQL and returns the first column of the first row ("" if none); records failures.
    std::string Exec(const std::string& sql) {
        PGresult* r = PQexec(c_, sql.c_str());
        std::string out;
        const auto st = PQresultStatus(r);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            ADD_FAILURE() << sql << ": " << PQresultErrorMessage(r);
        } else if (st == PGRES_TUPLES_OK && PQntuples(r) > 0) {
            out = PQgetvalue(r, 0, 0);
        }
        PQclear(r);
        return out;
    }

private:
    PGconn* c_;
};

void DropSchema(const std::string& schema) {
    RawConn c(ServerUri());
    if (c.ok()) c.Exec("DROP SCHEMA IF EXISTS " + schema + " CASCADE");
}

keel::testing::BackendFactory PostgresBackendFactory() {
    auto schema = std::make_shared<std::string>();
    keel::testing::BackendFactory f;
    f.name = "postgres";
    f.durable = true;
    f.setup = [schema](std::string_view) {
        ASSERT_FALSE(ServerUri().empty())
            << "KEEL_TEST_PG is not set: start the servers with scripts/services.sh start and "
               "eval \"$(scripts/services.sh env)\" (make test does both)";
        *schema = NewSchemaName();
    };
    f.open_with = [schema](const keel::StoreOptions& o) { return keel::OpenStore(SchemaUri(*schema), o); };
    f.open = [schema] { return keel::OpenStore(SchemaUri(*schema)); };
    f.teardown = [schema] { DropSchema(*schema); };
    return f;
}

class PostgresTest : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_FALSE(ServerUri().empty()) << "KEEL_TEST_PG is not set (scripts/services.sh env)";
        schema_ = NewSchemaName();
        uri_ = SchemaUri(schema_);
        auto s = keel::OpenStore(uri_);
        ASSERT_TRUE(s.ok()) << s.status().ToString();
        store_ = std::move(*s);
    }
    void TearDown() override {
        store_.reset();
        DropSchema(schema_);
    }
    std::string schema_;
    std::string uri_;
    std::unique_ptr<keel::EventStore> store_;
};

EventData Event(std::string type, std::string data = "{}") { return EventData{Uuid::Generate(), std::move(type), std::move(data), ""}; }

// Writers commit out of order: A inserts first and holds its transaction open, B inserts later and commits first.
// A subscriber reading meanwhile must not get B yet (that would make it skip A forever); after A commits it gets
// both, A's first.
TEST_F(PostgresTest, SubscriberNeverSkipsAnEarlierTransactionThatCommitsLater) {
    ASSERT_TRUE(store_->Append("Setup-1", ExpectedVersion::Any(), {Event("Before")}).ok());

    RawConn a(ServerUri());
    ASSERT_TRUE(a.ok()) << a.error();
    a.Exec("SET search_path TO " + schema_);
    a.Exec("BEGIN");
    a.Exec("SELECT code FROM keel_append('A-1', 0, 0, ARRAY['" + Uuid::Generate().ToString() +
           "']::uuid[], ARRAY['FromA'], ARRAY['\\x7b7d'::bytea], ARRAY[''], 1)");

    std::mutex mu;
    std::vector<std::string> seen;
    keel::SubscriptionOptions options;
    options.poll_interval = std::chrono::milliseconds(20);
    auto sub = store_->Subscribe(options, [&](const keel::RecordedEvent& e) {
        std::lock_guard lock(mu);
        seen.push_back(e.type);
        return keel::Status::Ok();
    });
    ASSERT_TRUE(sub.ok()) << sub.status().ToString();

    ASSERT_TRUE(store_->Append("B-1", ExpectedVersion::Any(), {Event("FromB")}).ok());  // B commits first
    // Give the subscriber many chances to (wrongly) deliver B while A is still open.
    for (int i = 0; i < 25; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        std::lock_guard lock(mu);
        ASSERT_EQ(std::count(seen.begin(), seen.end(), "FromB"), 0) << "B was delivered while A was uncommitted";
    }
    {
        std::lock_guard lock(mu);
        ASSERT_EQ(seen, std::vector<std::string>{"Before"});
    }
    a.Exec("COMMIT");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
        {
            std::lock_guard lock(mu);
            if (seen.size() >= 3 || std::chrono::steady_clock::now() > deadline) break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE((*sub)->Stop().ok());
    EXPECT_EQ(seen, (std::vector<std::string>{"Before", "FromA", "FromB"}));

    // A plain $all read gives the same order.
    auto all = store_->ReadAll({}).value();
    ASSERT_EQ(all.events.size(), 3u);
    EXPECT_EQ(all.events[1].type, "FromA");
    EXPECT_EQ(all.events[2].type, "FromB");
}

// Regression: keel_append_batch plans its statements once per session (generic plans). Planned while keel_streams
// was small, the UPDATE of a batch's stream versions became a hash join over a sequential scan, so every batch read
// every stream row (dead versions too) and concurrent appends slowed down as the store grew. A batch must touch its
// streams' rows through the index only.
TEST_F(PostgresTest, AppendBatchReadsOnlyItsOwnStreamRows) {
    for (int i = 0; i < 300; ++i) {
        ASSERT_TRUE(store_->Append("Many-" + std::to_string(i), ExpectedVersion::NoStream(), {Event("Made")}).ok());
    }
    RawConn c(ServerUri());
    ASSERT_TRUE(c.ok()) << c.error();
    c.Exec("SET search_path TO " + schema_);
    c.Exec("ANALYZE keel_streams");
    c.Exec("BEGIN");
    // 16 appends to existing streams and 4 to new ones, in one call, as the group commit sends them.
    c.Exec("SELECT count(*) FROM keel_append_batch("
           "array(SELECT CASE WHEN g <= 16 THEN 'Many-' || (g * 7) ELSE 'Fresh-' || g END FROM generate_series(1, 20) g), "
           "array_fill(0, ARRAY[20]), array_fill(-1::bigint, ARRAY[20]), array_fill(1, ARRAY[20]), "
           "array(SELECT g FROM generate_series(1, 20) g), array(SELECT gen_random_uuid() FROM generate_series(1, 20)), "
           "array_fill('Batched'::text, ARRAY[20]), array_fill('\\x7b7d'::bytea, ARRAY[20]), "
           "array_fill(''::text, ARRAY[20]), 1)");
    const std::string scans = c.Exec(
        "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE schemaname = '" + schema_ + "' AND relname = 'keel_streams'");
    c.Exec("COMMIT");
    EXPECT_EQ(scans, "0") << "keel_append_batch scanned keel_streams sequentially";
    EXPECT_EQ(store_->ReadStream("Many-7").value().size(), 2u);
    EXPECT_EQ(store_->ReadStream("Fresh-20").value().size(), 1u);
}

// Replaces keel_append in the current schema of `c` by one that fails with "keel_append was called".
void BreakKeelAppend(RawConn& c) {
    c.Exec("CREATE OR REPLACE FUNCTION keel_append(p_stream text, p_kind integer, p_expected bigint, p_ids uuid[], "
           "p_types text[], p_data bytea[], p_meta text[], p_now bigint, OUT code integer, OUT actual bigint, "
           "OUT first_pos bigint, OUT last_pos bigint, OUT next_version bigint) LANGUAGE plpgsql AS $$ BEGIN "
           "RAISE EXCEPTION 'keel_append was called'; END $$");
}

// A lone append to a live stream whose expectation holds, or that creates a stream, is one plain statement;
// keel_append (PL/pgSQL, as costly as the insert itself) only decides the rest. Shown by making keel_append fail: the
// fast appends still go through, conflicts and an idempotent re-send reach it.
TEST_F(PostgresTest, LoneAppendToALiveStreamSkipsThePlpgsqlFunction) {
    RawConn c(ServerUri());
    ASSERT_TRUE(c.ok()) << c.error();
    c.Exec("SET search_path TO " + schema_);
    BreakKeelAppend(c);

    auto made = store_->Append("Fast-1", ExpectedVersion::NoStream(), {Event("Made")});
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    EXPECT_EQ(made->next_expected_version, 0);
    auto pair = store_->Append("Fast-2", ExpectedVersion::Exact(-1), {Event("One"), Event("Two")});
    ASSERT_TRUE(pair.ok()) << pair.status().ToString();
    EXPECT_EQ(pair->next_expected_version, 1);
    auto twice = store_->Append("Fast-2", ExpectedVersion::NoStream(), {Event("Again")});
    ASSERT_FALSE(twice.ok());
    EXPECT_NE(twice.status().message().find("keel_append was called"), std::string::npos) << twice.status().ToString();

    auto exact = store_->Append("Fast-1", ExpectedVersion::Exact(0), {Event("Exact")});
    ASSERT_TRUE(exact.ok()) << exact.status().ToString();
    EXPECT_EQ(exact->next_expected_version, 1);
    auto any = store_->Append("Fast-1", ExpectedVersion::Any(), {Event("Any")});
    ASSERT_TRUE(any.ok()) << any.status().ToString();
    EXPECT_EQ(any->first_position, exact->first_position + 1);
    const EventData resent = Event("Resent");
    auto three = store_->Append("Fast-1", ExpectedVersion::StreamExists(), {Event("A"), resent, Event("C")});
    ASSERT_TRUE(three.ok()) << three.status().ToString();
    EXPECT_EQ(three->next_expected_version, 5);
    EXPECT_EQ(three->last_position, three->first_position + 2);

    auto conflict = store_->Append("Fast-1", ExpectedVersion::Exact(1), {Event("Late")});
    ASSERT_FALSE(conflict.ok());
    EXPECT_NE(conflict.status().message().find("keel_append was called"), std::string::npos)
        << conflict.status().ToString();
    auto again = store_->Append("Fast-1", ExpectedVersion::Exact(5), {resent});
    ASSERT_FALSE(again.ok()) << "an event id stored already must not be written by the plain statement";
    EXPECT_NE(again.status().message().find("keel_append was called"), std::string::npos)
        << again.status().ToString();

    auto events = store_->ReadStream("Fast-1");
    ASSERT_TRUE(events.ok()) << events.status().ToString();
    std::vector<std::string> types;
    for (const auto& e : *events) types.push_back(e.type + "@" + std::to_string(e.stream_version));
    EXPECT_EQ(types, (std::vector<std::string>{"Made@0", "Exact@1", "Any@2", "A@3", "Resent@4", "C@5"}));
    EXPECT_EQ(store_->GetStream("Fast-1").value().version, 5);
    EXPECT_EQ(store_->GetStream("Fast-2").value().version, 1);
}

// Group-commit batches of appends to distinct streams (live, or created by the append) are one plain statement too:
// with both PL/pgSQL functions made to fail, 8 writers create their own streams and append to them (in batches: fewer
// transactions than appends), and every event lands at the next version of its stream.
TEST_F(PostgresTest, BatchesToDistinctLiveStreamsSkipThePlpgsqlFunctions) {
    constexpr int kWriters = 8;
    constexpr int kAppends = 25;
    RawConn c(ServerUri());
    ASSERT_TRUE(c.ok()) << c.error();
    c.Exec("SET search_path TO " + schema_);
    BreakKeelAppend(c);
    c.Exec("CREATE OR REPLACE FUNCTION keel_append_batch(p_streams text[], p_kinds integer[], p_expected bigint[], "
           "p_counts integer[], p_req integer[], p_ids uuid[], p_types text[], p_data bytea[], p_meta text[], "
           "p_now bigint) RETURNS TABLE (o_ord integer, o_code integer, o_actual bigint, o_first bigint, "
           "o_last bigint, o_next bigint) LANGUAGE plpgsql AS $$ BEGIN "
           "RAISE EXCEPTION 'keel_append_batch was called'; END $$");

    std::vector<std::string> errors(kWriters);
    std::vector<std::thread> threads;
    for (int t = 0; t < kWriters; ++t) {
        threads.emplace_back([&, t] {
            const std::string stream = "Own-" + std::to_string(t);
            auto made = store_->Append(stream, ExpectedVersion::NoStream(), {Event("Made")});
            if (!made.ok()) {
                errors[t] = made.status().ToString();
                return;
            }
            for (int64_t v = 0; v < kAppends; ++v) {
                const int n = 1 + static_cast<int>(v % 3);
                std::vector<EventData> events;
                for (int i = 0; i < n; ++i) events.push_back(Event("E"));
                auto r = store_->Append(stream, ExpectedVersion::Any(), events);
                if (!r.ok()) {
                    errors[t] = r.status().ToString();
                    return;
                }
                if (r->last_position - r->first_position != n - 1) errors[t] = "positions not contiguous";
            }
        });
    }
    for (auto& th : threads) th.join();
    for (const auto& e : errors) EXPECT_EQ(e, "");
    const std::string transactions =
        c.Exec("SELECT count(DISTINCT transaction_id) FROM keel_events WHERE stream_version > 0");
    EXPECT_LT(std::stoi(transactions), kWriters * kAppends)
        << "no two appends shared a transaction: the batch statement was not exercised";
    for (int t = 0; t < kWriters; ++t) {
        auto events = store_->ReadStream("Own-" + std::to_string(t));
        ASSERT_TRUE(events.ok()) << events.status().ToString();
        size_t expected = 1;  // "Made", then 1, 2, 3, 1, 2, 3 … events per append
        for (int v = 0; v < kAppends; ++v) expected += 1 + static_cast<size_t>(v % 3);
        ASSERT_EQ(events->size(), expected);
        for (size_t i = 0; i < events->size(); ++i) EXPECT_EQ((*events)[i].stream_version, static_cast<int64_t>(i));
    }
}

// Two OS processes append to the same streams with exact expected versions: every conflict is detected and no
// (stream, version) is written twice.
TEST_F(PostgresTest, TwoProcessesWithExactVersionsNeverWriteAVersionTwice) {
    constexpr int kAttempts = 150;
    int pipes[2][2];
    pid_t pids[2];
    for (int p = 0; p < 2; ++p) {
        ASSERT_EQ(::pipe(pipes[p]), 0);
        pids[p] = ::fork();
        ASSERT_GE(pids[p], 0);
        if (pids[p] == 0) {
            ::close(pipes[p][0]);
            int ok = 0, conflicts = 0, other = 0;
            {
                auto store = keel::OpenStore(uri_);
                if (!store.ok()) ::_exit(3);
                for (int i = 0; i < kAttempts; ++i) {
                    const std::string stream = "Shared-" + std::to_string(i % 3);
                    auto info = (*store)->GetStream(stream);
                    const int64_t v = info.ok() ? info->version : -1;
                    auto r = (*store)->Append(stream, ExpectedVersion::Exact(v), {Event("P" + std::to_string(p))});
                    if (r.ok()) {
                        ++ok;
                    } else if (r.status().code() == StatusCode::kWrongExpectedVersion) {
                        ++conflicts;
                    } else {
                        ++other;
                        std::cerr << "child " << p << ": " << r.status().ToString() << "\n";
                    }
                }
            }
            const std::string line = std::to_string(ok) + " " + std::to_string(conflicts) + " " + std::to_string(other);
            (void)!::write(pipes[p][1], line.data(), line.size());
            ::_exit(0);
        }
        ::close(pipes[p][1]);
    }
    int total_ok = 0, total_conflicts = 0;
    for (int p = 0; p < 2; ++p) {
        int status = 0;
        ASSERT_EQ(::waitpid(pids[p], &status, 0), pids[p]);
        ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child " << p << " status " << status;
        char buf[128] = {};
        ASSERT_GT(::read(pipes[p][0], buf, sizeof buf - 1), 0);
        ::close(pipes[p][0]);
        int ok = 0, conflicts = 0, other = 0;
        ASSERT_EQ(std::sscanf(buf, "%d %d %d", &ok, &conflicts, &other), 3);
        EXPECT_EQ(other, 0);
        EXPECT_EQ(ok + conflicts, kAttempts);
        total_ok += ok;
        total_conflicts += conflicts;
    }
    int64_t stored = 0;
    for (int s = 0; s < 3; ++s) {
        auto events = store_->ReadStream("Shared-" + std::to_string(s), {}).value();
        for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].stream_version, static_cast<int64_t>(i));
        stored += static_cast<int64_t>(events.size());
    }
    EXPECT_EQ(stored, total_ok);  // every success stored once, every failure detected
    std::cout << "two processes: " << total_ok << " appends, " << total_conflicts << " conflicts detected\n";
}

// The store's connections are killed by the server (as after a failover or an idle timeout): the next append and
// read reconnect, and an append whose outcome was unknown is never duplicated.
TEST_F(PostgresTest, ReconnectsAfterTheServerKillsItsConnections) {
    ASSERT_TRUE(store_->Append("Acct-1", ExpectedVersion::NoStream(), {Event("Opened")}).ok());
    RawConn admin(ServerUri());
    ASSERT_TRUE(admin.ok());
    const std::string killed = admin.Exec(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'keel' AND pid <> "
        "pg_backend_pid()");
    EXPECT_NE(killed, "0");
    EventData deposit = Event("Deposited", R"({"amount":5})");
    auto r = store_->Append("Acct-1", ExpectedVersion::Exact(0), {deposit});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    auto resent = store_->Append("Acct-1", ExpectedVersion::Exact(0), {deposit});  // the caller's own retry
    ASSERT_TRUE(resent.ok()) << resent.status().ToString();
    EXPECT_TRUE(resent->already_present);
    auto events = store_->ReadStream("Acct-1", {});
    ASSERT_TRUE(events.ok()) << events.status().ToString();
    ASSERT_EQ(events->size(), 2u);
    EXPECT_EQ((*events)[1].event_id, deposit.event_id);
}

// The server restarts in the middle of a run of appends: every acknowledged event is there afterwards, none twice.
TEST_F(PostgresTest, ServerRestartDuringAppendsLosesAndDuplicatesNothing) {
    std::atomic<bool> done{false};
    std::mutex mu;
    std::vector<Uuid> acknowledged;
    int failures = 0;
    std::thread writer([&] {
        int64_t version = -1;
        while (!done.load()) {
            EventData e = Event("Ticked");
            auto r = store_->Append("Clock-1", ExpectedVersion::Exact(version), {e});
            std::lock_guard lock(mu);
            if (r.ok()) {
                acknowledged.push_back(e.event_id);
                version = r->next_expected_version;
            } else {
                ++failures;  // unavailable past the reconnect budget: not acknowledged, fine
                auto info = store_->GetStream("Clock-1");
                if (info.ok()) version = info->version;
            }
        }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const std::string restart = std::string(KEEL_SERVICES_SCRIPT) + " stop pg && " + KEEL_SERVICES_SCRIPT + " start pg";
    ASSERT_EQ(std::system(restart.c_str()), 0) << restart;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    done = true;
    writer.join();

    keel::ReadStreamOptions all;
    all.limit = 0;
    auto stored = store_->ReadStream("Clock-1", all);
    ASSERT_TRUE(stored.ok()) << stored.status().ToString();
    std::set<Uuid> ids;
    for (size_t i = 0; i < stored->size(); ++i) {
        EXPECT_EQ((*stored)[i].stream_version, static_cast<int64_t>(i));
        EXPECT_TRUE(ids.insert((*stored)[i].event_id).second) << "duplicate event";
    }
    for (const Uuid& id : acknowledged) EXPECT_EQ(ids.count(id), 1u) << "acknowledged event lost: " << id.ToString();
    std::cout << acknowledged.size() << " acknowledged appends across a server restart, " << failures
              << " reported unavailable\n";
    EXPECT_GT(acknowledged.size(), 0u);
}

TEST(PostgresOpen, BadServerOrCredentialsGiveOneLineNamingHostPortDatabase) {
    auto unreachable = keel::OpenStore("postgresql://keel@127.0.0.1:1/keel_test?connect_timeout=2");
    ASSERT_EQ(unreachable.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(unreachable.status().message().find("127.0.0.1:1"), std::string::npos) << unreachable.status().message();
    EXPECT_NE(unreachable.status().message().find("keel_test"), std::string::npos);
    EXPECT_EQ(unreachable.status().message().find('\n'), std::string::npos);

    ASSERT_FALSE(ServerUri().empty()) << "KEEL_TEST_PG is not set";
    // The server's database with a name that does not exist.
    std::string uri = ServerUri();
    const std::string missing = uri.substr(0, uri.rfind('/')) + "/keel_no_such_db";
    auto no_db = keel::OpenStore(missing);
    ASSERT_FALSE(no_db.ok());
    EXPECT_NE(no_db.status().message().find("keel_no_such_db"), std::string::npos) << no_db.status().message();
    EXPECT_NE(no_db.status().message().find("does not exist"), std::string::npos) << no_db.status().message();

    // Wrong credentials (services.sh makes the role keel_pw authenticate with a password).
    const std::string host_part = uri.substr(uri.find('@') + 1);  // 127.0.0.1:port/keel_test
    auto wrong_password = keel::OpenStore("postgresql://keel_pw:wrong@" + host_part);
    ASSERT_EQ(wrong_password.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(wrong_password.status().message().find("password authentication failed"), std::string::npos)
        << wrong_password.status().message();
    EXPECT_NE(wrong_password.status().message().find("127.0.0.1"), std::string::npos);

    auto bad_uri = keel::OpenStore("postgresql:not-a-uri");
    EXPECT_EQ(bad_uri.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace

KEEL_INSTANTIATE_EVENT_STORE_CONFORMANCE(Postgres, PostgresBackendFactory());
KEEL_INSTANTIATE_DURABLE_EVENT_STORE_CONFORMANCE(Postgres, PostgresBackendFactory());
