// append_single: one writer, one event per Append, exact expected versions, Durability::kFull, against raw sqlite3
// inserting the same rows one per BEGIN IMMEDIATE … COMMIT transaction at the same durability. Target >= 0.8x.
//
// Each case writes 100k events over 1k streams into its own database, in 20 slices of 5k: one slice per repetition,
// the database kept from one repetition to the next. With the repetitions of the two cases run in random order,
// a slow spell of a shared disk hits both alike.

#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace keel;
using namespace keel::bench;

constexpr int kSlices = 20;
constexpr int64_t kStreams = 1'000;

struct Config {
    int64_t events = 0;  // per case, over all slices
    int64_t slice = 0;   // events per repetition
};
Config g_config;

std::vector<std::string> StreamNames() {
    std::vector<std::string> names;
    for (int64_t s = 0; s < kStreams; ++s) names.push_back(StreamName(s));
    return names;
}

struct KeelCase {
    std::string path = NewDbPath("keel");
    std::unique_ptr<EventStore> store = OpenKeel(path, Durability::kFull);
    std::vector<std::string> names = StreamNames();
    std::vector<int64_t> expected = std::vector<int64_t>(kStreams, -1);
    int64_t seq = 0;
};
std::optional<KeelCase> g_keel;

struct SqliteCase {
    std::string path = NewDbPath("sqlite");
    RawDb db{path, Durability::kFull};
    RawEventLog log{db};
    std::vector<std::string> names = StreamNames();
    std::vector<int64_t> next = std::vector<int64_t>(kStreams, 0);
    int64_t seq = 0;
};
std::optional<SqliteCase> g_sqlite;

void KeelAppendSingle(benchmark::State& state) {
    try {
        if (!g_keel) g_keel.emplace();
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }
    KeelCase& c = *g_keel;
    EventData event;
    int64_t appended = 0;
    for (auto _ : state) {
        const auto s = static_cast<size_t>(c.seq % kStreams);
        FillEvent(event, c.seq);
        auto r =
            c.store->Append(c.names[s], ExpectedVersion::Exact(c.expected[s]), std::span<const EventData>(&event, 1));
        if (!r.ok()) {
            state.SkipWithError(("Append: " + r.status().ToString()).c_str());
            break;
        }
        c.expected[s] = r->next_expected_version;
        ++c.seq;
        ++appended;
    }
    state.SetItemsProcessed(appended);
}

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
    g_config.slice = Scaled(100'000 / kSlices, 50);
    g_config.events = g_config.slice * kSlices;

    SummaryReporter reporter("append_single",
                             "events appended per second: 1 writer, 1 event per append, exact expected versions");
    reporter.Setting("durability", "FULL (keel Durability::kFull; raw: WAL, synchronous=FULL)");
    reporter.Setting("sizes", std::to_string(g_config.events) + " events over " + std::to_string(kStreams) +
                                  " streams per case, written in " + std::to_string(kSlices) +
                                  " repetitions (default) of " + std::to_string(g_config.slice) +
                                  " into one database per case; " + std::to_string(kDataBytes) + "-byte JSON data");
    reporter.Case("keel/append_single", "EventStore::Append, 1 event, ExpectedVersion::Exact");
    reporter.Case("sqlite/insert_single", "raw sqlite3: BEGIN IMMEDIATE; INSERT 1 row; COMMIT");
    reporter.Ratio("append_single", "keel/append_single", "sqlite/insert_single", 0.8);

    benchmark::RegisterBenchmark("keel/append_single", KeelAppendSingle)
        ->Iterations(g_config.slice)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("sqlite/insert_single", SqliteInsertSingle)
        ->Iterations(g_config.slice)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    RunOptions options;
    options.repetitions = kSlices;
    options.teardown = [] {
        g_keel.reset();
        g_sqlite.reset();
    };
    return RunBenchmarks(argc, argv, reporter, options);
}
