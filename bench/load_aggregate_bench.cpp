// load_aggregate: load an aggregate whose stream holds 10k events with keel::Repository<T, E>::Load, once by full
// replay (ReadStream pages, each event's JSON decoded into a tiny struct and folded through T::On) and once from a
// snapshot taken at the last version (SaveSnapshot at version 9,999; Load reads it with LoadSnapshot and replays
// the events after it: none). Prints both figures and their ratio (no target).

#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "keel/aggregate.hpp"

#include "bench_common.hpp"

namespace bench_model {

// The tiny struct each event decodes into: two fields of FillEvent's ~200-byte "UserUpdated" JSON.
struct UserUpdated {
    int64_t seq = 0;
    int64_t score = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UserUpdated, seq, score)

struct UserStats {
    int64_t updates = 0;
    int64_t score_sum = 0;
    int64_t last_seq = -1;
    void On(const UserUpdated& e) {
        ++updates;
        score_sum += e.score;
        last_seq = e.seq;
    }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UserStats, updates, score_sum, last_seq)

}  // namespace bench_model

namespace {

using namespace keel;
using namespace keel::bench;
using bench_model::UserStats;
using bench_model::UserUpdated;
using Users = Repository<UserStats, UserUpdated>;

constexpr int64_t kSetupBatch = 1000;
constexpr std::string_view kReplayStream = "User-replay";
constexpr std::string_view kSnapshotStream = "User-snapshot";

struct Config {
    int64_t events = 0;
    std::string path;
    std::unique_ptr<EventStore> store;
};
Config g_config;

void WriteStream(EventStore& store, std::string_view stream) {
    std::vector<EventData> events;
    int64_t expected = -1;
    for (int64_t done = 0; done < g_config.events;) {
        const int64_t n = std::min(kSetupBatch, g_config.events - done);
        events.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) FillEvent(events[static_cast<size_t>(i)], done + i);
        auto r = store.Append(stream, ExpectedVersion::Exact(expected), events);
        if (!r.ok()) throw std::runtime_error("setup Append: " + r.status().ToString());
        expected = r->next_expected_version;
        done += n;
    }
}

void Setup() {
    g_config.store = OpenKeel(g_config.path, Durability::kNormal);
    EventStore& store = *g_config.store;
    WriteStream(store, kReplayStream);
    WriteStream(store, kSnapshotStream);
    Users users(store);
    auto loaded = users.Load(kSnapshotStream);
    if (!loaded.ok()) throw std::runtime_error("setup Load: " + loaded.status().ToString());
    Snapshot snapshot;
    snapshot.stream_id = std::string(kSnapshotStream);
    snapshot.version = loaded->version();
    snapshot.type = SnapshotTypeName<UserStats>();
    snapshot.data = nlohmann::json(loaded->state()).dump();
    const Status saved = store.SaveSnapshot(snapshot);
    if (!saved.ok()) throw std::runtime_error("setup SaveSnapshot: " + saved.ToString());
    auto back = store.LoadSnapshot(kSnapshotStream);
    if (!back.ok() || back->version != g_config.events - 1) {
        throw std::runtime_error("setup LoadSnapshot did not return the snapshot: " + back.status().ToString());
    }
}

void Load(benchmark::State& state, std::string_view stream, bool count_events) {
    Users users(*g_config.store);
    int64_t loads = 0;
    for (auto _ : state) {
        auto aggregate = users.Load(stream);
        if (!aggregate.ok()) {
            state.SkipWithError(("Load: " + aggregate.status().ToString()).c_str());
            break;
        }
        if (aggregate->version() != g_config.events - 1 || aggregate->state().updates != g_config.events) {
            state.SkipWithError(("Load returned version " + std::to_string(aggregate->version()) + " with " +
                                 std::to_string(aggregate->state().updates) + " updates, expected " +
                                 std::to_string(g_config.events))
                                    .c_str());
            break;
        }
        benchmark::DoNotOptimize(aggregate->state().score_sum);
        ++loads;
    }
    state.SetItemsProcessed(loads);
    if (count_events) {
        state.counters["events_per_second"] =
            benchmark::Counter(static_cast<double>(loads * g_config.events), benchmark::Counter::kIsRate);
    }
}

void KeelLoadReplay(benchmark::State& state) {
    Load(state, kReplayStream, true);
}
void KeelLoadSnapshot(benchmark::State& state) {
    Load(state, kSnapshotStream, false);
}

}  // namespace

int main(int argc, char** argv) {
    g_config.events = Scaled(10'000, 100);
    try {
        g_config.path = NewDbPath("keel-aggregate");
        Setup();
    } catch (const std::exception& e) {
        std::cerr << "load_aggregate setup failed: " << e.what() << "\n";
        g_config.store.reset();
        RemoveScratchDir();
        return 1;
    }

    SummaryReporter reporter("load_aggregate",
                             "aggregate loads per second with keel::Repository<T, E>::Load: full replay vs snapshot");
    reporter.Setting("sizes", "one stream of " + std::to_string(g_config.events) + " events (" +
                                  std::to_string(kDataBytes) +
                                  "-byte JSON data, each decoded into a 2-field struct and folded); snapshot at "
                                  "version " +
                                  std::to_string(g_config.events - 1) + "; Repository read_page_size " +
                                  std::to_string(RepositoryOptions{}.read_page_size));
    reporter.Setting("setup", "Durability::kNormal, appends of " + std::to_string(kSetupBatch) + " (not timed)");
    reporter.Case("keel/load_snapshot", "LoadSnapshot + decode state + ReadStream after it (0 events)", "loads/s");
    reporter.Case("keel/load_replay", "ReadStream pages + JSON decode + On() for every event", "loads/s");
    reporter.Case("keel/load_replay", "the same, in events folded per second", "events/s", "events_per_second");
    reporter.Ratio("load_aggregate_snapshot_speedup", "keel/load_snapshot", "keel/load_replay", std::nullopt);

    benchmark::RegisterBenchmark("keel/load_replay", KeelLoadReplay)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("keel/load_snapshot", KeelLoadSnapshot)->UseRealTime()->Unit(benchmark::kMicrosecond);
    RunOptions options;
    options.teardown = [] { g_config.store.reset(); };
    return RunBenchmarks(argc, argv, reporter, options);
}
