// append_concurrent: 16 threads share one store, each appending 1 event per Append with exact expected versions to
// streams it alone owns (so there are no conflicts), Durability::kFull. Group commit should batch their appends into
// few transactions: target >= 8x the single-writer keel figure measured in this same run. The ratio to raw sqlite3
// single-row transactions is printed too.
//
// Each case writes into its own database, kept from one repetition to the next, in 20 slices (one per repetition);
// the repetitions of the cases run in random order, so a slow spell of a shared disk hits them alike.

#include <array>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace keel;
using namespace keel::bench;

constexpr int kWriters = 16;
constexpr int kSlices = 20;
constexpr int64_t kStreams = 1'000;

struct Config {
    int64_t concurrent_slice = 0;  // events per repetition over the kWriters threads
    int64_t single_slice = 0;      // events per repetition of the single-writer cases
};
Config g_config;

// One keel case's store and each thread's position in it. Thread 0 creates it outside the timed loop of the first
// repetition (the library starts no thread's loop before all arrive and lets none leave before all are done), so
// the other threads only touch it inside the loop.
struct KeelCase {
    std::string path;
    std::unique_ptr<EventStore> store;
    std::string open_error;
    std::array<std::vector<std::string>, kWriters> names;  // thread t owns streams t, t + threads, …
    std::array<std::vector<int64_t>, kWriters> expected;
    std::array<int64_t, kWriters> seq{};
    std::mutex mu;
    std::string error;

    void Fail(const std::string& message) {
        std::lock_guard lock(mu);
        if (error.empty()) error = message;
    }
};
std::map<int, KeelCase> g_keel;  // by thread count; created before the benchmarks run

void KeelAppend(benchmark::State& state) {
    const int thread = state.thread_index();
    const int threads = state.threads();
    KeelCase& c = g_keel.at(threads);
    if (thread == 0 && !c.store && c.open_error.empty()) {
        c.path = NewDbPath("keel-" + std::to_string(threads));
        try {
            c.store = OpenKeel(c.path, Durability::kFull);
            for (int t = 0; t < threads; ++t) {
                for (int64_t s = t; s < kStreams; s += threads) c.names[t].push_back(StreamName(s));
                c.expected[t].assign(c.names[t].size(), -1);
            }
        } catch (const std::exception& e) {
            c.open_error = e.what();
        }
    }
    EventData event;
    int64_t appended = 0;
    bool failed = false;
    for (auto _ : state) {
        // On failure keep iterating without work: every thread must reach the end of the loop together.
        if (failed) continue;
        if (!c.store) {
            failed = true;
            continue;
        }
        std::vector<int64_t>& expected = c.expected[thread];
        int64_t& seq = c.seq[thread];
        const auto s = static_cast<size_t>(seq % static_cast<int64_t>(expected.size()));
        FillEvent(event, seq * threads + thread);
        auto r = c.store->Append(c.names[thread][s], ExpectedVersion::Exact(expected[s]),
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
    if (failed) {
        std::string message;
        {
            std::lock_guard lock(c.mu);
            message = !c.error.empty() ? c.error : !c.open_error.empty() ? c.open_error : "the store did not open";
        }
        state.SkipWithError(message.c_str());
    }
}

struct SqliteCase {
    std::string path = NewDbPath("sqlite");
    RawDb db{path, Durability::kFull};
    RawEventLog log{db};
    std::vector<std::string> names;
    std::vector<int64_t> next = std::vector<int64_t>(kStreams, 0);
    int64_t seq = 0;

    SqliteCase() {
        for (int64_t s = 0; s < kStreams; ++s) names.push_back(StreamName(s));
    }
};
std::optional<SqliteCase> g_sqlite;

void SqliteInsertSingle(benchmark::State& state) {
    try {
        if (!g_sqlite) g_sqlite.emplace();
        SqliteCase& c = *g_sqlite;
        EventData event;
        int64_t inserted = 0;
        for (auto _ : state) {
            const auto s = static_cast<size_t>(c.seq % kStreams);
            FillEvent(event, c.seq);
            c.log.Begin();
            c.log.Insert(c.names[s], c.next[s]++, event, NowMicros());
            c.log.Commit();
            ++c.seq;
            ++inserted;
        }
        state.SetItemsProcessed(inserted);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

}  // namespace

int main(int argc, char** argv) {
    g_config.concurrent_slice = std::max<int64_t>(Scaled(100'000 / kSlices) / kWriters, 4) * kWriters;
    g_config.single_slice = Scaled(20'000 / kSlices, 20);
    g_keel[1];
    g_keel[kWriters];

    SummaryReporter reporter("append_concurrent",
                             "events appended per second: 16 writer threads on one store (group commit), 1 event "
                             "per append, exact expected versions, no conflicts");
    reporter.Setting("durability", "FULL (keel Durability::kFull; raw: WAL, synchronous=FULL)");
    reporter.Setting("sizes",
                     std::to_string(g_config.concurrent_slice * kSlices) + " events by " + std::to_string(kWriters) +
                         " threads over " + std::to_string(kStreams) + " streams (each thread owns its streams), " +
                         std::to_string(g_config.single_slice * kSlices) + " events for each single-writer case; " +
                         std::to_string(kSlices) + " repetitions (default) per case, one database per case; " +
                         std::to_string(kDataBytes) + "-byte JSON data");
    reporter.Case("keel/append_16_writers", "16 threads, EventStore::Append, 1 event, ExpectedVersion::Exact");
    reporter.Case("keel/append_1_writer", "1 thread, same appends (the group-commit reference)");
    reporter.Case("sqlite/insert_single", "raw sqlite3, 1 thread: BEGIN IMMEDIATE; INSERT 1 row; COMMIT");
    reporter.Ratio("append_concurrent", "keel/append_16_writers", "keel/append_1_writer", 8.0);
    reporter.Ratio("append_concurrent_vs_raw", "keel/append_16_writers", "sqlite/insert_single", std::nullopt);

    benchmark::RegisterBenchmark("keel/append_1_writer", KeelAppend)
        ->Threads(1)
        ->Iterations(g_config.single_slice)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("keel/append_16_writers", KeelAppend)
        ->Threads(kWriters)
        ->Iterations(g_config.concurrent_slice / kWriters)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("sqlite/insert_single", SqliteInsertSingle)
        ->Iterations(g_config.single_slice)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    RunOptions options;
    options.repetitions = kSlices;
    options.teardown = [] {
        for (auto& [threads, c] : g_keel) c.store.reset();
        g_sqlite.reset();
    };
    return RunBenchmarks(argc, argv, reporter, options);
}
