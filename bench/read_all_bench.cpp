// read_all: read a 1M-event store in global order with EventStore::ReadAll (pages of 4096, decoded into
// RecordedEvents) against a raw sqlite3 scan of the same table in the same file (SELECT every column, step through,
// read each column). The store is built once before the benchmarks (Durability::kNormal, big appends; not timed).
// Target >= 0.5x.

#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace keel;
using namespace keel::bench;

constexpr size_t kPage = 4096;
constexpr int64_t kSetupBatch = 500;
constexpr int64_t kSetupStreams = 200;

struct Config {
    int64_t events = 0;
    std::string path;
};
Config g_config;

void BuildStore() {
    auto store = OpenKeel(g_config.path, Durability::kNormal);
    std::vector<int64_t> expected(kSetupStreams, -1);
    std::vector<EventData> events;
    for (int64_t done = 0, append = 0; done < g_config.events; ++append) {
        const int64_t n = std::min(kSetupBatch, g_config.events - done);
        events.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) FillEvent(events[static_cast<size_t>(i)], done + i);
        const auto s = static_cast<size_t>(append % kSetupStreams);
        auto r = store->Append(StreamName(static_cast<int64_t>(s)), ExpectedVersion::Exact(expected[s]), events);
        if (!r.ok()) throw std::runtime_error("setup Append: " + r.status().ToString());
        expected[s] = r->next_expected_version;
        done += n;
    }
}

void KeelReadAll(benchmark::State& state) {
    std::unique_ptr<EventStore> store;
    try {
        store = OpenKeel(g_config.path, Durability::kNormal);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }
    int64_t total = 0;
    for (auto _ : state) {
        ReadAllOptions options;
        options.limit = kPage;
        int64_t count = 0;
        int64_t touched = 0;
        std::string error;
        while (true) {
            auto result = store->ReadAll(options);
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
        if (error.empty() && count != g_config.events) {
            error = "read " + std::to_string(count) + " events, expected " + std::to_string(g_config.events);
        }
        if (!error.empty()) {
            state.SkipWithError(error.c_str());
            break;
        }
        total += count;
    }
    state.SetItemsProcessed(total);
}

void SqliteScan(benchmark::State& state) {
    int64_t total = 0;
    try {
        RawDb db(g_config.path, Durability::kNormal, /*read_only=*/true);
        RawStmt scan(db.get(), "SELECT * FROM keel_events ORDER BY global_position");
        const int columns = sqlite3_column_count(scan.get());
        for (auto _ : state) {
            int64_t count = 0;
            int64_t touched = 0;
            while (scan.Step()) {
                sqlite3_stmt* row = scan.get();
                for (int c = 0; c < columns; ++c) {
                    switch (sqlite3_column_type(row, c)) {
                        case SQLITE_INTEGER: touched += sqlite3_column_int64(row, c); break;
                        case SQLITE_TEXT: touched += *sqlite3_column_text(row, c) + sqlite3_column_bytes(row, c); break;
                        case SQLITE_BLOB: {
                            const auto* blob = static_cast<const unsigned char*>(sqlite3_column_blob(row, c));
                            const int bytes = sqlite3_column_bytes(row, c);
                            touched += bytes > 0 ? blob[0] + bytes : 0;
                            break;
                        }
                        default: break;
                    }
                }
                ++count;
            }
            scan.Reset();
            benchmark::DoNotOptimize(touched);
            if (count != g_config.events) {
                state.SkipWithError(
                    ("scanned " + std::to_string(count) + " rows, expected " + std::to_string(g_config.events))
                        .c_str());
                break;
            }
            total += count;
        }
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
    state.SetItemsProcessed(total);
}

}  // namespace

int main(int argc, char** argv) {
    g_config.events = Scaled(1'000'000, 1'000);
    try {
        g_config.path = NewDbPath("keel-read");
        BuildStore();
    } catch (const std::exception& e) {
        std::cerr << "read_all setup failed: " << e.what() << "\n";
        RemoveScratchDir();
        return 1;
    }

    SummaryReporter reporter("read_all", "events read per second in global order ($all), from the page cache");
    reporter.Setting("sizes", std::to_string(g_config.events) + " events in " + std::to_string(kSetupStreams) +
                                  " streams, " + std::to_string(kDataBytes) + "-byte JSON data; ReadAll pages of " +
                                  std::to_string(kPage));
    reporter.Setting("setup", "store built once with Durability::kNormal in appends of " + std::to_string(kSetupBatch) +
                                  " events (not timed); both cases read that file");
    reporter.Case("keel/read_all", "EventStore::ReadAll pages -> RecordedEvent");
    reporter.Case("sqlite/scan", "raw sqlite3: SELECT * FROM keel_events ORDER BY global_position, every column read");
    reporter.Ratio("read_all", "keel/read_all", "sqlite/scan", 0.5);

    benchmark::RegisterBenchmark("keel/read_all", KeelReadAll)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("sqlite/scan", SqliteScan)->UseRealTime()->Unit(benchmark::kMillisecond);
    return RunBenchmarks(argc, argv, reporter);
}
