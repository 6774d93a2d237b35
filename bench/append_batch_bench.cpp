// append_batch: one writer, 100 events per Append (exact expected versions, Durability::kFull) against raw sqlite3
// inserting the same 100 rows per BEGIN IMMEDIATE … COMMIT transaction at the same durability. Target >= 0.8x.
//
// Each case writes 200k events over 1k streams into its own database, in 20 slices of 10k: one slice per
// repetition, the database kept from one repetition to the next. With the repetitions of the two cases run in random
// order, a slow spell of a shared disk hits both alike.

#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace keel;
using namespace keel::bench;

constexpr int64_t kBatch = 100;
constexpr int kSlices = 20;
constexpr int64_t kStreams = 1'000;

struct Config {
    int64_t slice_appends = 0;  // appends of kBatch events per repetition
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
    int64_t appends = 0;
};
std::optional<KeelCase> g_keel;

struct SqliteCase {
    std::string path = NewDbPath("sqlite");
    RawDb db{path, Durability::kFull};
    RawEventLog log{db};
    std::vector<std::string> names = StreamNames();
    std::vector<int64_t> next = std::vector<int64_t>(kStreams, 0);
    int64_t appends = 0;
};
std::optional<SqliteCase> g_sqlite;

void KeelAppendBatch(benchmark::State& state) {
    try {
        if (!g_keel) g_keel.emplace();
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }
    KeelCase& c = *g_keel;
    std::vector<EventData> events(kBatch);
    int64_t appended = 0;
    for (auto _ : state) {
        const auto s = static_cast<size_t>(c.appends % kStreams);
        for (int64_t i = 0; i < kBatch; ++i) FillEvent(events[static_cast<size_t>(i)], c.appends * kBatch + i);
        auto r = c.store->Append(c.names[s], ExpectedVersion::Exact(c.expected[s]), events);
        if (!r.ok()) {
            state.SkipWithError(("Append: " + r.status().ToString()).c_str());
            break;
        }
        c.expected[s] = r->next_expected_version;
        ++c.appends;
        appended += kBatch;
    }
    state.SetItemsProcessed(appended);
}

void SqliteInsertBatch(benchmark::State& state) {
    try {
        if (!g_sqlite) g_sqlite.emplace();
        SqliteCase& c = *g_sqlite;
        std::vector<EventData> events(kBatch);
        int64_t inserted = 0;
        for (auto _ : state) {
            const auto s = static_cast<size_t>(c.appends % kStreams);
            for (int64_t i = 0; i < kBatch; ++i) FillEvent(events[static_cast<size_t>(i)], c.appends * kBatch + i);
            c.log.Begin();
            const int64_t recorded_at = NowMicros();
            for (const EventData& e : events) c.log.Insert(c.names[s], c.next[s]++, e, recorded_at);
            c.log.Commit();
            ++c.appends;
            inserted += kBatch;
        }
        state.SetItemsProcessed(inserted);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

}  // namespace

int main(int argc, char** argv) {
    g_config.slice_appends = Scaled(200'000 / kSlices / kBatch, 2);
    const int64_t total = g_config.slice_appends * kBatch * kSlices;

    SummaryReporter reporter("append_batch",
                             "events appended per second: 1 writer, 100 events per append (one transaction)");
    reporter.Setting("durability", "FULL (keel Durability::kFull; raw: WAL, synchronous=FULL)");
    reporter.Setting("sizes", std::to_string(total) + " events per case in appends of " + std::to_string(kBatch) +
                                  " over " + std::to_string(kStreams) + " streams, written in " +
                                  std::to_string(kSlices) + " repetitions (default) of " +
                                  std::to_string(g_config.slice_appends) + " appends into one database per case; " +
                                  std::to_string(kDataBytes) + "-byte JSON data");
    reporter.Case("keel/append_batch_100", "EventStore::Append, 100 events, ExpectedVersion::Exact");
    reporter.Case("sqlite/insert_batch_100", "raw sqlite3: BEGIN IMMEDIATE; INSERT x100; COMMIT");
    reporter.Ratio("append_batch", "keel/append_batch_100", "sqlite/insert_batch_100", 0.8);

    benchmark::RegisterBenchmark("keel/append_batch_100", KeelAppendBatch)
        ->Iterations(g_config.slice_appends)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("sqlite/insert_batch_100", SqliteInsertBatch)
        ->Iterations(g_config.slice_appends)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    RunOptions options;
    options.repetitions = kSlices;
    options.teardown = [] {
        g_keel.reset();
        g_sqlite.reset();
    };
    return RunBenchmarks(argc, argv, reporter, options);
}
