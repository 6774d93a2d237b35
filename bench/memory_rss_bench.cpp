// memory_rss: append 1M events (appends of 100, Durability::kNormal) to a fresh store and report this process's
// peak resident set size (VmHWM of /proc/self/status). Its own binary, so the peak is its own. Target < 200 MB.
//
// The events are generated batch by batch (one reused vector of 100), so the benchmark itself holds ~30 KB of
// events at a time and the peak measures keel + SQLite.

#include <exception>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace keel;
using namespace keel::bench;

constexpr int64_t kBatch = 100;
constexpr double kTargetMB = 200.0;

struct Config {
    int64_t appends = 0;
    int64_t streams = 0;
};
Config g_config;

void KeelAppendMillion(benchmark::State& state) {
    const std::string path = NewDbPath("keel-rss");
    std::unique_ptr<EventStore> store;
    try {
        store = OpenKeel(path, Durability::kNormal);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }
    std::vector<int64_t> expected(static_cast<size_t>(g_config.streams), -1);
    std::vector<EventData> events(kBatch);
    std::string name;
    int64_t appends = 0;
    for (auto _ : state) {
        const auto s = static_cast<size_t>(appends % g_config.streams);
        for (int64_t i = 0; i < kBatch; ++i) FillEvent(events[static_cast<size_t>(i)], appends * kBatch + i);
        name = StreamName(static_cast<int64_t>(s));
        auto r = store->Append(name, ExpectedVersion::Exact(expected[s]), events);
        if (!r.ok()) {
            state.SkipWithError(("Append: " + r.status().ToString()).c_str());
            break;
        }
        expected[s] = r->next_expected_version;
        ++appends;
    }
    state.SetItemsProcessed(appends * kBatch);
    state.counters["peak_rss_MB"] = PeakRssMB();
    state.counters["rss_MB"] = CurrentRssMB();
    store.reset();
    RemoveDb(path);
}

}  // namespace

int main(int argc, char** argv) {
    g_config.appends = Scaled(1'000'000, 10 * kBatch) / kBatch;
    g_config.streams = std::min<int64_t>(1'000, g_config.appends);
    const double start_rss = CurrentRssMB();

    SummaryReporter reporter("memory_rss", "peak resident set size (VmHWM) of a process appending " +
                                               std::to_string(g_config.appends * kBatch) + " events");
    reporter.Setting("durability", "NORMAL (keel Durability::kNormal)");
    reporter.Setting("sizes", std::to_string(g_config.appends * kBatch) + " events per repetition in appends of " +
                                  std::to_string(kBatch) + " over " + std::to_string(g_config.streams) + " streams, " +
                                  std::to_string(kDataBytes) + "-byte JSON data, fresh database per repetition");
    reporter.Setting("rss", "at start " + FormatNumber(start_rss) +
                                " MB; peak_rss_MB is VmHWM after each repetition (the process's peak so far), "
                                "rss_MB is VmRSS then");
    reporter.Case("keel/append_1M_batch_100", "peak RSS (VmHWM)", "MB", "peak_rss_MB");
    reporter.Case("keel/append_1M_batch_100", "RSS after the appends, store still open", "MB", "rss_MB");
    reporter.Case("keel/append_1M_batch_100", "append throughput while measuring", "events/s");
    reporter.Ceiling("memory_rss", "keel/append_1M_batch_100", "peak_rss_MB", kTargetMB, "MB");

    benchmark::RegisterBenchmark("keel/append_1M_batch_100", KeelAppendMillion)
        ->Iterations(g_config.appends)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    return RunBenchmarks(argc, argv, reporter);
}
