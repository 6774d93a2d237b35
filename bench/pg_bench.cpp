// pg: the postgresql: store against raw libpq on the same server, in the same run (KEEL_TEST_PG; scripts/services.sh
// start pg). Durable: the server runs synchronous_commit=on and the store uses Durability::kFull.
//
//   keel/append_single       1 writer, 1 event per Append, exact expected versions  target >= 0.8x raw/insert_1_client
//   keel/append_16_writers   16 threads on one store, same appends (group commit)    target >= 1.0x
//   raw/insert_16_clients raw/insert_1_client      libpq, 1 connection: autocommit INSERT of one row into a table like
//   keel_events raw/insert_16_clients    the same with 16 threads, each on its own connection keel/read_all ReadAll
//   pages of 4096 -> RecordedEvent                   target >= 500,000 events/s raw/select_all           libpq: SELECT
//   * FROM keel_events ORDER BY global_position (info)
//
// Everything lives in two fresh schemas, keel_bench_<pid> (the append cases and the raw table) and
// keel_bench_<pid>_r (the read_all store), dropped at the end. Each append case keeps its streams from one repetition
// to the next and writes a fixed slice per repetition; the repetitions run in random order across the cases.

#include <algorithm>
#include <array>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <libpq-fe.h>
#include <unistd.h>

#include "bench_common.hpp"

namespace {

using namespace keel;
using namespace keel::bench;

constexpr int kWriters = 16;
constexpr int kSlices = 5;
constexpr int64_t kStreams = 1'000;
constexpr size_t kPage = 4096;
constexpr int64_t kSetupBatch = 500;
constexpr int64_t kSetupStreams = 200;
constexpr double kReadAllFloor = 500'000.0;

struct Config {
    std::string server;       // KEEL_TEST_PG
    std::string schema;       // keel_bench_<pid>
    std::string read_schema;  // keel_bench_<pid>_r
    int64_t single_slice = 0;
    int64_t concurrent_slice = 0;
    int64_t read_events = 0;
};
Config g_config;

std::string SchemaUri(const std::string& schema) {
    const char sep = g_config.server.find('?') == std::string::npos ? '?' : '&';
    return g_config.server + sep + "schema=" + schema;
}

// ---- raw libpq --------------------------------------------------------------------------------------------------

class PgConn {
public:
    // A connection to the server; with `schema`, its search_path is that schema (libpq knows no ?schema=).
    explicit PgConn(const std::string& uri, const std::string& schema = "") : conn_(PQconnectdb(uri.c_str())) {
        if (PQstatus(conn_) != CONNECTION_OK) {
            const std::string message = PQerrorMessage(conn_);
            PQfinish(conn_);
            throw std::runtime_error("connect to " + uri + ": " + message);
        }
        PQsetNoticeProcessor(
            conn_, [](void*, const char*) {}, nullptr);
        if (!schema.empty()) {
            try {
                Exec("SET search_path TO " + schema);
            } catch (...) {
                PQfinish(conn_);
                throw;
            }
        }
    }
    ~PgConn() { PQfinish(conn_); }
    PgConn(const PgConn&) = delete;
    PgConn& operator=(const PgConn&) = delete;

    void Exec(const std::string& sql) { Check(PQexec(conn_, sql.c_str()), sql); }
    PGresult* Query(const std::string& sql) { return Check(PQexec(conn_, sql.c_str()), sql, /*keep=*/true); }
    PGconn* get() const noexcept { return conn_; }

    // Clears `r` (unless keep) after checking it; throws with the server's message on failure.
    PGresult* Check(PGresult* r, const std::string& what, bool keep = false) {
        const auto st = PQresultStatus(r);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            const std::string message = r != nullptr ? PQresultErrorMessage(r) : PQerrorMessage(conn_);
            PQclear(r);
            throw std::runtime_error(what + ": " + message);
        }
        if (keep) return r;
        PQclear(r);
        return nullptr;
    }

private:
    PGconn* conn_;
};

// The baseline table: keel_events' columns and indexes (pg_schema.hpp), no stream rows, no checks.
void CreateRawTable(PgConn& c) {
    c.Exec(R"sql(
CREATE TABLE raw_events (
    global_position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  xid8    NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid    NOT NULL,
    stream_id       text    NOT NULL,
    stream_version  bigint  NOT NULL,
    type            text    NOT NULL,
    data            bytea   NOT NULL,
    metadata        text    NOT NULL,
    recorded_at     bigint  NOT NULL,
    CONSTRAINT raw_events_event_id UNIQUE (event_id),
    CONSTRAINT raw_events_stream UNIQUE (stream_id, stream_version)
);
CREATE INDEX raw_events_commit_order ON raw_events (transaction_id, global_position))sql");
}

// One client: its own connection and prepared INSERT (uuid and data binary, the rest text), autocommit.
class RawClient {
public:
    RawClient() : conn_(g_config.server, g_config.schema) {
        conn_.Check(PQprepare(conn_.get(), "ins",
                              "INSERT INTO raw_events (event_id, stream_id, stream_version, type, data, metadata, "
                              "recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                              7, nullptr),
                    "prepare");
    }
    void Insert(const std::string& stream, int64_t version, const EventData& event) {
        const std::string version_text = std::to_string(version);
        const std::string now_text = std::to_string(NowMicros());
        const char* values[7] = {reinterpret_cast<const char*>(event.event_id.bytes().data()),
                                 stream.c_str(),
                                 version_text.c_str(),
                                 event.type.c_str(),
                                 event.data.data(),
                                 event.metadata.c_str(),
                                 now_text.c_str()};
        const int lengths[7] = {16, 0, 0, 0, static_cast<int>(event.data.size()), 0, 0};
        const int formats[7] = {1, 0, 0, 0, 1, 0, 0};
        conn_.Check(PQexecPrepared(conn_.get(), "ins", 7, values, lengths, formats, 0), "INSERT");
    }

private:
    PgConn conn_;
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
                auto store = OpenStore(SchemaUri(g_config.schema));
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

// ---- read_all ---------------------------------------------------------------------------------------------------

void BuildReadStore() {
    auto opened = OpenStore(SchemaUri(g_config.read_schema));
    if (!opened.ok()) throw std::runtime_error("OpenStore: " + opened.status().ToString());
    auto store = std::move(*opened);
    std::vector<int64_t> expected(kSetupStreams, -1);
    std::vector<EventData> events;
    for (int64_t done = 0, append = 0; done < g_config.read_events; ++append) {
        const int64_t n = std::min(kSetupBatch, g_config.read_events - done);
        events.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) FillEvent(events[static_cast<size_t>(i)], done + i);
        const auto s = static_cast<size_t>(append % kSetupStreams);
        auto r = store->Append(StreamName(static_cast<int64_t>(s)), ExpectedVersion::Exact(expected[s]), events);
        if (!r.ok()) throw std::runtime_error("setup Append: " + r.status().ToString());
        expected[s] = r->next_expected_version;
        done += n;
    }
}

std::unique_ptr<EventStore> g_read_store;

void KeelReadAll(benchmark::State& state) {
    if (!g_read_store) {
        auto opened = OpenStore(SchemaUri(g_config.read_schema));
        if (!opened.ok()) {
            state.SkipWithError(("OpenStore: " + opened.status().ToString()).c_str());
            return;
        }
        g_read_store = std::move(*opened);
    }
    int64_t total = 0;
    for (auto _ : state) {
        ReadAllOptions options;
        options.limit = kPage;
        int64_t count = 0;
        int64_t touched = 0;
        std::string error;
        while (true) {
            auto result = g_read_store->ReadAll(options);
            if (!result.ok()) {
                error = "ReadAll: " + result.status().ToString();
                break;
            }
            const ReadAllSlice& slice = result.value();
            for (const RecordedEvent& e : slice.events) {
                touched += e.global_position + static_cast<int64_t>(e.data.size() + e.stream_id.size()) +
                           e.event_id.bytes()[15];
            }
            count += static_cast<int64_t>(slice.events.size());
            benchmark::DoNotOptimize(touched);
            if (slice.end_of_all || slice.events.empty()) break;
            options.from_position = slice.next_position;
        }
        if (error.empty() && count != g_config.read_events) {
            error = "read " + std::to_string(count) + " events, expected " + std::to_string(g_config.read_events);
        }
        if (!error.empty()) {
            state.SkipWithError(error.c_str());
            break;
        }
        total += count;
    }
    state.SetItemsProcessed(total);
}

void RawSelectAll(benchmark::State& state) {
    int64_t total = 0;
    try {
        PgConn conn(g_config.server, g_config.read_schema);
        for (auto _ : state) {
            PGresult* r = conn.Query("SELECT * FROM keel_events ORDER BY global_position");
            const int rows = PQntuples(r);
            const int columns = PQnfields(r);
            int64_t touched = 0;
            for (int row = 0; row < rows; ++row) {
                for (int col = 0; col < columns; ++col) touched += PQgetlength(r, row, col) + *PQgetvalue(r, row, col);
            }
            PQclear(r);
            benchmark::DoNotOptimize(touched);
            if (rows != g_config.read_events) {
                state.SkipWithError(
                    ("selected " + std::to_string(rows) + " rows, expected " + std::to_string(g_config.read_events))
                        .c_str());
                break;
            }
            total += rows;
        }
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
    state.SetItemsProcessed(total);
}

// ---- reporting: SummaryReporter plus an absolute floor ----------------------------------------------------------

class PgReporter : public SummaryReporter {
public:
    using SummaryReporter::SummaryReporter;

    // RESULT <label>: median of <name>'s items_per_second, PASS when >= min.
    void Floor(std::string label, std::string name, double min, std::string unit) {
        floor_label_ = std::move(label);
        floor_name_ = std::move(name);
        floor_min_ = min;
        floor_unit_ = std::move(unit);
    }

    void ReportRuns(const std::vector<Run>& runs) override {
        SummaryReporter::ReportRuns(runs);
        for (const Run& run : runs) {
            if (run.run_name.function_name != floor_name_ || run.error_occurred) continue;
            if (run.run_type != Run::RT_Iteration) continue;
            const auto it = run.counters.find("items_per_second");
            if (it != run.counters.end()) values_.push_back(it->second.value);
        }
    }

    void Finalize() override {
        SummaryReporter::Finalize();
        if (floor_name_.empty()) return;
        std::optional<double> median;
        if (!values_.empty()) {
            std::vector<double> v = values_;
            std::sort(v.begin(), v.end());
            const size_t n = v.size();
            median = n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
        }
        const std::string value_text = floor_name_ + " " + (median ? FormatNumber(*median) + " " + floor_unit_ : "n/a");
        const std::string target_text = ">= " + FormatNumber(floor_min_) + " " + floor_unit_;
        const std::string verdict = !median ? "NO DATA" : (*median >= floor_min_ ? "PASS" : "BELOW");
        GetOutputStream() << "  RESULT " << floor_label_ << ": " << value_text << "  target " << target_text << "  "
                          << verdict << "\n"
                          << std::flush;
        if (const char* summary = std::getenv("KEEL_BENCH_SUMMARY"); summary != nullptr && *summary != '\0') {
            std::ofstream file(summary, std::ios::app);
            file << "row\tpg\t" << floor_label_ << "\t" << value_text << "\t-\t-\t" << target_text << "\t" << verdict
                 << "\n";
        }
    }

private:
    std::string floor_label_, floor_name_, floor_unit_;
    double floor_min_ = 0.0;
    std::vector<double> values_;
};

void DropSchemas() {
    try {
        PgConn c(g_config.server);
        c.Exec("DROP SCHEMA IF EXISTS " + g_config.schema + " CASCADE");
        c.Exec("DROP SCHEMA IF EXISTS " + g_config.read_schema + " CASCADE");
    } catch (const std::exception& e) {
        std::cerr << "pg bench: dropping the schemas failed: " << e.what() << "\n";
    }
}

}  // namespace

int main(int argc, char** argv) {
    const char* server = std::getenv("KEEL_TEST_PG");
    if (server == nullptr || *server == '\0') {
        std::cerr << "bench_pg: KEEL_TEST_PG is not set: scripts/services.sh start pg; eval \"$(scripts/services.sh "
                     "env)\" (scripts/run-bench.sh does both)\n";
        return 1;
    }
    g_config.server = server;
    g_config.schema = "keel_bench_" + std::to_string(::getpid());
    g_config.read_schema = g_config.schema + "_r";
    g_config.single_slice = Scaled(5'000 / kSlices, 10);
    g_config.concurrent_slice = std::max<int64_t>(Scaled(5'000 / kSlices) / kWriters, 2) * kWriters;
    g_config.read_events = Scaled(200'000, 1'000);
    std::string server_version;
    try {
        PgConn c(g_config.server);
        c.Exec("DROP SCHEMA IF EXISTS " + g_config.schema + " CASCADE");
        c.Exec("DROP SCHEMA IF EXISTS " + g_config.read_schema + " CASCADE");
        // The store creates its schema on open; the raw table lives beside keel's in the append schema.
        auto opened = OpenStore(SchemaUri(g_config.schema));
        if (!opened.ok()) throw std::runtime_error("OpenStore: " + opened.status().ToString());
        opened->reset();
        PgConn in_schema(g_config.server, g_config.schema);
        CreateRawTable(in_schema);
        PGresult* r = c.Query(
            "SELECT current_setting('server_version') || ', synchronous_commit=' || "
            "current_setting('synchronous_commit') || ', fsync=' || current_setting('fsync')");
        server_version = PQgetvalue(r, 0, 0);
        PQclear(r);
        BuildReadStore();
    } catch (const std::exception& e) {
        std::cerr << "bench_pg setup failed: " << e.what() << "\n";
        DropSchemas();
        return 1;
    }
    for (const char* name :
         {"keel/append_single", "keel/append_16_writers", "raw/insert_1_client", "raw/insert_16_clients"}) {
        g_cases[name];
    }

    PgReporter reporter("pg",
                        "events per second against PostgreSQL on loopback: appends (1 event each, exact expected "
                        "versions) vs raw libpq one-row INSERT transactions; ReadAll");
    reporter.Setting("server", "PostgreSQL " + server_version + " (keel Durability::kFull)");
    reporter.Setting("sizes", std::to_string(g_config.single_slice * kSlices) + " events per 1-writer case, " +
                                  std::to_string(g_config.concurrent_slice * kSlices) + " per 16-writer case (" +
                                  std::to_string(kSlices) + " repetitions, default), over " + std::to_string(kStreams) +
                                  " streams; read_all: " + std::to_string(g_config.read_events) + " events, pages of " +
                                  std::to_string(kPage) + "; " + std::to_string(kDataBytes) + "-byte JSON data");
    reporter.Setting("schemas", g_config.schema + " (appends, raw_events), " + g_config.read_schema +
                                    " (read_all); dropped at the end");
    reporter.Case("keel/append_single", "1 writer, EventStore::Append, 1 event, ExpectedVersion::Exact");
    reporter.Case("raw/insert_1_client", "libpq, 1 connection, autocommit INSERT of 1 row (prepared)");
    reporter.Case("keel/append_16_writers", "16 threads on one store, same appends (group commit)");
    reporter.Case("raw/insert_16_clients", "libpq, 16 threads each on its own connection, autocommit INSERT");
    reporter.Case("keel/read_all", "EventStore::ReadAll pages -> RecordedEvent");
    reporter.Case("raw/select_all", "libpq: SELECT * FROM keel_events ORDER BY global_position (text, one result)");
    reporter.Ratio("pg_append_single", "keel/append_single", "raw/insert_1_client", 0.8);
    reporter.Ratio("pg_append_concurrent", "keel/append_16_writers", "raw/insert_16_clients", 1.0);
    reporter.Ratio("pg_read_all_vs_raw", "keel/read_all", "raw/select_all", std::nullopt);
    reporter.Floor("pg_read_all", "keel/read_all", kReadAllFloor, "events/s");

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
    benchmark::RegisterBenchmark("keel/read_all", KeelReadAll)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("raw/select_all", RawSelectAll)->UseRealTime()->Unit(benchmark::kMillisecond);

    RunOptions options;
    options.repetitions = kSlices;
    options.teardown = [] {
        for (auto& [name, c] : g_cases) {
            c.store.reset();
            for (auto& client : c.clients) client.reset();
        }
        g_read_store.reset();
        DropSchemas();
    };
    return RunBenchmarks(argc, argv, reporter, options);
}
