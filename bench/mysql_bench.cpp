// mysql: the mysql: store against raw MariaDB client inserts on the same server, in the same run (KEEL_TEST_MYSQL;
// scripts/services.sh start mysql). Durable: keel's Durability::kFull requires innodb_flush_log_at_trx_commit=1.
//
//   keel/append_single       1 writer, 1 event per Append, exact expected versions  target >= 0.8x raw/insert_1_client
//   keel/append_16_writers   16 threads on one store, same appends (group commit)    target >= 1.0x
//   raw/insert_16_clients raw/insert_1_client      libmariadb, 1 connection: autocommit INSERT of one row into an
//   InnoDB table like
//                            keel_events (prepared statement)
//   raw/insert_16_clients    the same with 16 threads, each on its own connection
//
// Everything lives in a fresh database, keel_bench_<pid>, created with the KEEL_TEST_MYSQL credentials and dropped at
// the end. Each append case keeps its streams from one repetition to the next and writes a fixed slice per
// repetition; the repetitions run in random order across the cases.

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <mysql.h>
#include <unistd.h>

#include "bench_common.hpp"

namespace {

using namespace keel;
using namespace keel::bench;

constexpr int kWriters = 16;
constexpr int kSlices = 5;
constexpr int64_t kStreams = 1'000;

// mysql://user[:password]@host[:port]/database[?…] (no percent-decoding: the test server's URI needs none).
struct Server {
    std::string user, password, host, database;
    bool has_password = false;
    unsigned port = 3306;
};

Server ParseServer(const std::string& uri) {
    const auto scheme = uri.find("://");
    if (scheme == std::string::npos) throw std::runtime_error("not a mysql:// URI: " + uri);
    std::string rest = uri.substr(scheme + 3);
    if (const auto q = rest.find('?'); q != std::string::npos) rest.resize(q);
    Server s;
    if (const auto at = rest.rfind('@'); at != std::string::npos) {
        const std::string auth = rest.substr(0, at);
        rest = rest.substr(at + 1);
        const auto colon = auth.find(':');
        s.user = auth.substr(0, colon);
        if (colon != std::string::npos) {
            s.password = auth.substr(colon + 1);
            s.has_password = true;
        }
    }
    const auto slash = rest.find('/');
    const std::string host_port = rest.substr(0, slash);
    s.database = slash == std::string::npos ? "" : rest.substr(slash + 1);
    const auto colon = host_port.rfind(':');
    s.host = host_port.substr(0, colon);
    if (colon != std::string::npos) s.port = static_cast<unsigned>(std::stoul(host_port.substr(colon + 1)));
    return s;
}

struct Config {
    Server server;
    std::string database;   // keel_bench_<pid>
    std::string store_uri;  // KEEL_TEST_MYSQL with the database replaced
    int64_t single_slice = 0;
    int64_t concurrent_slice = 0;
};
Config g_config;

// ---- raw libmariadb ---------------------------------------------------------------------------------------------

class MyConn {
public:
    explicit MyConn(const std::string& database) : mysql_(mysql_init(nullptr)) {
        const Server& s = g_config.server;
        const unsigned int timeout = 5;
        const unsigned int protocol = MYSQL_PROTOCOL_TCP;
        mysql_options(mysql_, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
        mysql_options(mysql_, MYSQL_OPT_PROTOCOL, &protocol);
        mysql_options(mysql_, MYSQL_SET_CHARSET_NAME, "utf8mb4");
        if (mysql_real_connect(mysql_, s.host.c_str(), s.user.c_str(), s.has_password ? s.password.c_str() : nullptr,
                               database.empty() ? nullptr : database.c_str(), s.port, nullptr, 0) == nullptr) {
            const std::string message = mysql_error(mysql_);
            mysql_close(mysql_);
            throw std::runtime_error("connect to MariaDB at " + s.host + ":" + std::to_string(s.port) + ": " + message);
        }
    }
    ~MyConn() { mysql_close(mysql_); }
    MyConn(const MyConn&) = delete;
    MyConn& operator=(const MyConn&) = delete;

    void Exec(const std::string& sql) {
        if (mysql_real_query(mysql_, sql.data(), sql.size()) != 0) {
            throw std::runtime_error(sql + ": " + mysql_error(mysql_));
        }
        if (MYSQL_RES* res = mysql_store_result(mysql_)) mysql_free_result(res);
    }
    std::string Value(const std::string& sql) {
        if (mysql_real_query(mysql_, sql.data(), sql.size()) != 0) {
            throw std::runtime_error(sql + ": " + mysql_error(mysql_));
        }
        std::string out;
        if (MYSQL_RES* res = mysql_store_result(mysql_)) {
            if (MYSQL_ROW row = mysql_fetch_row(res); row != nullptr && row[0] != nullptr) out = row[0];
            mysql_free_result(res);
        }
        return out;
    }
    MYSQL* get() const noexcept { return mysql_; }

private:
    MYSQL* mysql_;
};

// The baseline table: keel_events' columns and indexes (src/store/mysql/schema.hpp), InnoDB, no stream rows.
void CreateRawTable(MyConn& c) {
    c.Exec(R"sql(
CREATE TABLE raw_events (
    global_position BIGINT       NOT NULL AUTO_INCREMENT,
    event_id        BINARY(16)   NOT NULL,
    stream_id       VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    stream_version  BIGINT       NOT NULL,
    type            VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    data            LONGBLOB     NOT NULL,
    metadata        LONGTEXT     CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    recorded_at     BIGINT       NOT NULL,
    PRIMARY KEY (global_position),
    UNIQUE KEY raw_events_event_id (event_id),
    UNIQUE KEY raw_events_stream (stream_id, stream_version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin ROW_FORMAT=DYNAMIC)sql");
}

// One client: its own connection and prepared INSERT, autocommit (one transaction per row).
class RawClient {
public:
    RawClient() : conn_(g_config.database), stmt_(mysql_stmt_init(conn_.get())) {
        static constexpr const char* kSql =
            "INSERT INTO raw_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)";
        if (stmt_ == nullptr || mysql_stmt_prepare(stmt_, kSql, std::strlen(kSql)) != 0) {
            const std::string message = stmt_ != nullptr ? mysql_stmt_error(stmt_) : mysql_error(conn_.get());
            if (stmt_ != nullptr) mysql_stmt_close(stmt_);
            throw std::runtime_error(std::string("prepare INSERT: ") + message);
        }
    }
    ~RawClient() { mysql_stmt_close(stmt_); }
    RawClient(const RawClient&) = delete;
    RawClient& operator=(const RawClient&) = delete;

    void Insert(const std::string& stream, int64_t version, const EventData& event) {
        long long version_value = version;
        long long now = NowMicros();
        std::array<MYSQL_BIND, 7> b{};
        std::array<unsigned long, 7> lengths{};
        auto bytes = [&](size_t i, enum_field_types type, const void* data, size_t size) {
            lengths[i] = static_cast<unsigned long>(size);
            b[i].buffer_type = type;
            b[i].buffer = const_cast<void*>(data);
            b[i].buffer_length = lengths[i];
            b[i].length = &lengths[i];
        };
        bytes(0, MYSQL_TYPE_BLOB, event.event_id.bytes().data(), 16);
        bytes(1, MYSQL_TYPE_STRING, stream.data(), stream.size());
        b[2].buffer_type = MYSQL_TYPE_LONGLONG;
        b[2].buffer = &version_value;
        bytes(3, MYSQL_TYPE_STRING, event.type.data(), event.type.size());
        bytes(4, MYSQL_TYPE_BLOB, event.data.data(), event.data.size());
        bytes(5, MYSQL_TYPE_STRING, event.metadata.data(), event.metadata.size());
        b[6].buffer_type = MYSQL_TYPE_LONGLONG;
        b[6].buffer = &now;
        if (mysql_stmt_bind_param(stmt_, b.data()) != 0 || mysql_stmt_execute(stmt_) != 0) {
            throw std::runtime_error(std::string("INSERT: ") + mysql_stmt_error(stmt_));
        }
    }

private:
    MyConn conn_;
    MYSQL_STMT* stmt_;
};

// ---- the append cases -------------------------------------------------------------------------------------------

// Thread t of a case owns streams t, t + threads, … of its kStreams; keel and raw write the same shape.
struct Streams {
    std::array<std::vector<std::string>, kWriters> names;
    std::array<std::vector<int64_t>, kWriters> next;  // keel: expected version; raw: next version to insert
    std::array<int64_t, kWriters> seq{};

    void Init(const std::string& prefix, int threads, int64_t first_next) {
        for (int t = 0; t < threads; ++t) {
            for (int64_t s = t; s < kStreams; s += threads) names[t].push_back(prefix + StreamName(s));
            next[t].assign(names[t].size(), first_next);
        }
    }
};

struct Case {
    std::once_flag init;
    std::string init_error;
    std::unique_ptr<EventStore> store;                         // keel cases
    std::array<std::unique_ptr<RawClient>, kWriters> clients;  // raw cases
    Streams streams;
    std::mutex mu;
    std::string error;

    void Fail(const std::string& message) {
        std::lock_guard lock(mu);
        if (error.empty()) error = message;
    }
    std::string Error() {
        std::lock_guard lock(mu);
        return !error.empty() ? error : !init_error.empty() ? init_error : "set-up failed";
    }
};
std::map<std::string, Case> g_cases;  // by case name; created before the benchmarks run

// Thread 0 opens the case's store / connections outside the timed loop of the first repetition (the library starts
// no thread's loop before all arrive), so the other threads only touch them inside the loop.
void KeelAppend(benchmark::State& state, const std::string& name) {
    const int thread = state.thread_index();
    const int threads = state.threads();
    Case& c = g_cases.at(name);
    if (thread == 0) {
        std::call_once(c.init, [&] {
            try {
                auto store = OpenStore(g_config.store_uri);
                if (!store.ok()) throw std::runtime_error("OpenStore: " + store.status().ToString());
                c.store = std::move(*store);
                c.streams.Init("k" + std::to_string(threads) + "-", threads, -1);
            } catch (const std::exception& e) {
                c.init_error = e.what();
            }
        });
    }
    EventData event;
    int64_t appended = 0;
    bool failed = false;
    for (auto _ : state) {
        if (failed) continue;  // keep iterating without work: every thread must reach the end together
        if (!c.store) {
            failed = true;
            continue;
        }
        std::vector<int64_t>& expected = c.streams.next[thread];
        int64_t& seq = c.streams.seq[thread];
        const auto s = static_cast<size_t>(seq % static_cast<int64_t>(expected.size()));
        FillEvent(event, seq * threads + thread);
        auto r = c.store->Append(c.streams.names[thread][s], ExpectedVersion::Exact(expected[s]),
                                 std::span<const EventData>(&event, 1));
        if (!r.ok()) {
            c.Fail("Append: " + r.status().ToString());
            failed = true;
            continue;
        }
        expected[s] = r->next_expected_version;
        ++seq;
        ++appended;
    }
    state.SetItemsProcessed(appended);
    if (failed) state.SkipWithError(c.Error().c_str());
}

void RawInsert(benchmark::State& state, const std::string& name) {
    const int thread = state.thread_index();
    const int threads = state.threads();
    Case& c = g_cases.at(name);
    if (thread == 0) {
        std::call_once(c.init, [&] {
            try {
                for (int t = 0; t < threads; ++t) c.clients[t] = std::make_unique<RawClient>();
                c.streams.Init("r" + std::to_string(threads) + "-", threads, 0);
            } catch (const std::exception& e) {
                c.init_error = e.what();
            }
        });
    }
    EventData event;
    int64_t inserted = 0;
    bool failed = false;
    for (auto _ : state) {
        if (failed) continue;
        if (!c.clients[thread]) {
            failed = true;
            continue;
        }
        std::vector<int64_t>& next = c.streams.next[thread];
        int64_t& seq = c.streams.seq[thread];
        const auto s = static_cast<size_t>(seq % static_cast<int64_t>(next.size()));
        FillEvent(event, seq * threads + thread);
        try {
            c.clients[thread]->Insert(c.streams.names[thread][s], next[s], event);
        } catch (const std::exception& e) {
            c.Fail(e.what());
            failed = true;
            continue;
        }
        ++next[s];
        ++seq;
        ++inserted;
    }
    state.SetItemsProcessed(inserted);
    if (failed) state.SkipWithError(c.Error().c_str());
}

void DropDatabase() {
    try {
        MyConn c("");
        c.Exec("DROP DATABASE IF EXISTS " + g_config.database);
    } catch (const std::exception& e) {
        std::cerr << "bench_mysql: dropping " << g_config.database << " failed: " << e.what() << "\n";
    }
}

}  // namespace

int main(int argc, char** argv) {
    const char* server = std::getenv("KEEL_TEST_MYSQL");
    if (server == nullptr || *server == '\0') {
        std::cerr << "bench_mysql: KEEL_TEST_MYSQL is not set: scripts/services.sh start mysql; eval "
                     "\"$(scripts/services.sh env)\" (scripts/run-bench.sh does both)\n";
        return 1;
    }
    std::string server_info;
    try {
        g_config.server = ParseServer(server);
        g_config.database = "keel_bench_" + std::to_string(::getpid());
        const Server& s = g_config.server;
        g_config.store_uri = "mysql://" + s.user + (s.has_password ? ":" + s.password : "") + "@" + s.host + ":" +
                             std::to_string(s.port) + "/" + g_config.database;
        g_config.single_slice = Scaled(5'000 / kSlices, 10);
        g_config.concurrent_slice = std::max<int64_t>(Scaled(5'000 / kSlices) / kWriters, 2) * kWriters;
        MyConn admin("");
        admin.Exec("DROP DATABASE IF EXISTS " + g_config.database);
        admin.Exec("CREATE DATABASE " + g_config.database + " CHARACTER SET utf8mb4");
        server_info = "MariaDB " + admin.Value("SELECT VERSION()") +
                      ", innodb_flush_log_at_trx_commit=" + admin.Value("SELECT @@innodb_flush_log_at_trx_commit") +
                      ", sync_binlog=" + admin.Value("SELECT @@sync_binlog") +
                      ", log_bin=" + admin.Value("SELECT @@log_bin");
        // keel creates its tables on open; the raw table lives beside them.
        auto opened = OpenStore(g_config.store_uri);
        if (!opened.ok()) throw std::runtime_error("OpenStore: " + opened.status().ToString());
        opened->reset();
        MyConn in_db(g_config.database);
        CreateRawTable(in_db);
    } catch (const std::exception& e) {
        std::cerr << "bench_mysql setup failed: " << e.what() << "\n";
        if (!g_config.database.empty()) DropDatabase();
        return 1;
    }
    for (const char* name :
         {"keel/append_single", "keel/append_16_writers", "raw/insert_1_client", "raw/insert_16_clients"}) {
        g_cases[name];
    }

    SummaryReporter reporter("mysql",
                             "events appended per second against MariaDB (InnoDB) on loopback: 1 event per "
                             "append, exact expected versions, vs raw one-row INSERT transactions");
    reporter.Setting("server", server_info + " (keel Durability::kFull)");
    reporter.Setting("sizes", std::to_string(g_config.single_slice * kSlices) + " events per 1-writer case, " +
                                  std::to_string(g_config.concurrent_slice * kSlices) + " per 16-writer case (" +
                                  std::to_string(kSlices) + " repetitions, default), over " + std::to_string(kStreams) +
                                  " streams; " + std::to_string(kDataBytes) + "-byte JSON data");
    reporter.Setting("database", g_config.database + " (keel's tables and raw_events); dropped at the end");
    reporter.Case("keel/append_single", "1 writer, EventStore::Append, 1 event, ExpectedVersion::Exact");
    reporter.Case("raw/insert_1_client", "libmariadb, 1 connection, autocommit INSERT of 1 row (prepared)");
    reporter.Case("keel/append_16_writers", "16 threads on one store, same appends (group commit)");
    reporter.Case("raw/insert_16_clients", "libmariadb, 16 threads each on its own connection, autocommit INSERT");
    reporter.Ratio("mysql_append_single", "keel/append_single", "raw/insert_1_client", 0.8);
    reporter.Ratio("mysql_append_concurrent", "keel/append_16_writers", "raw/insert_16_clients", 1.0);

    auto keel_case = [](const std::string& name) {
        return [name](benchmark::State& state) { KeelAppend(state, name); };
    };
    auto raw_case = [](const std::string& name) { return [name](benchmark::State& state) { RawInsert(state, name); }; };
    benchmark::RegisterBenchmark("keel/append_single", keel_case("keel/append_single"))
        ->Threads(1)
        ->Iterations(g_config.single_slice)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("raw/insert_1_client", raw_case("raw/insert_1_client"))
        ->Threads(1)
        ->Iterations(g_config.single_slice)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("keel/append_16_writers", keel_case("keel/append_16_writers"))
        ->Threads(kWriters)
        ->Iterations(g_config.concurrent_slice / kWriters)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("raw/insert_16_clients", raw_case("raw/insert_16_clients"))
        ->Threads(kWriters)
        ->Iterations(g_config.concurrent_slice / kWriters)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);

    RunOptions options;
    options.repetitions = kSlices;
    options.teardown = [] {
        for (auto& [name, c] : g_cases) {
            c.store.reset();
            for (auto& client : c.clients) client.reset();
        }
        DropDatabase();
    };
    return RunBenchmarks(argc, argv, reporter, options);
}
