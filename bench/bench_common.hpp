#pragma once
// Shared by keel's benchmark binaries (bench/*_bench.cpp): the scale knob, a scratch directory on the build's disk,
// the events every benchmark writes, the raw-SQLite baseline, and SummaryReporter, which prints the settings, the
// median of every case and the keel/baseline ratios with their targets.
//
// Benchmarks are not tests: they are never registered with ctest. Run them with scripts/run-bench.sh.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <benchmark/benchmark.h>
#include <sqlite3.h>

#include "keel/event_store.hpp"

namespace keel::bench {

// KEEL_BENCH_SCALE (default 1.0): multiplies every event count, for a quick run (e.g. 0.05).
double Scale();
// n * Scale(), rounded, and at least `minimum`.
int64_t Scaled(int64_t n, int64_t minimum = 1);

// The process's scratch directory, $KEEL_BENCH_TMPDIR/<binary>-<pid>; the default base is bench-tmp beside the
// binary, so on the build's disk. Created on first use, removed when RunBenchmarks returns.
const std::filesystem::path& ScratchDir();
// A fresh database path in the scratch directory: <stem>-<n>.db.
std::string NewDbPath(std::string_view stem);
// Removes the scratch directory and everything in it (RunBenchmarks does this; call it on early exits).
void RemoveScratchDir();
// Removes a database file and its -wal / -shm / -journal companions.
void RemoveDb(const std::string& path);

// "User-000042": the stream ids the benchmarks write.
std::string StreamName(int64_t index);
// The `seq`-th benchmark event, written into `event` (reusing its buffers): type "UserUpdated", a fresh v7 id,
// kDataBytes bytes of JSON data and a small metadata object. Keel and the baselines pay the same for it.
void FillEvent(EventData& event, int64_t seq);
inline constexpr size_t kDataBytes = 200;

// Microseconds since the Unix epoch, as a store stamps recorded_at.
int64_t NowMicros();

// Opens a keel sqlite: store on `path`; throws std::runtime_error with the status when it fails.
std::unique_ptr<EventStore> OpenKeel(const std::string& path, Durability durability);
std::unique_ptr<EventStore> OpenKeel(const std::string& path, const StoreOptions& options);
std::string_view DurabilityName(Durability durability);  // "FULL" / "NORMAL"

// ---- raw SQLite, the baseline ----------------------------------------------------------------------------------

// One prepared statement; every failure throws std::runtime_error with sqlite3_errmsg.
class RawStmt {
public:
    RawStmt(sqlite3* db, const char* sql);
    ~RawStmt();
    RawStmt(const RawStmt&) = delete;
    RawStmt& operator=(const RawStmt&) = delete;

    void Bind(int index, int64_t value);
    void BindText(int index, std::string_view text);   // SQLITE_STATIC: the text must outlive the step
    void BindBlob(int index, std::string_view bytes);  // SQLITE_STATIC
    // Steps once; true when a row is available, false when done.
    bool Step();
    // Steps to completion, then resets.
    void Run();
    void Reset();
    sqlite3_stmt* get() const noexcept { return stmt_; }

private:
    sqlite3* db_;
    sqlite3_stmt* stmt_ = nullptr;
};

// A raw connection configured like keel's: WAL, synchronous FULL or NORMAL, cache_size 16 MiB.
class RawDb {
public:
    RawDb(const std::string& path, Durability durability, bool read_only = false);
    ~RawDb();
    RawDb(const RawDb&) = delete;
    RawDb& operator=(const RawDb&) = delete;

    void Exec(const char* sql);
    sqlite3* get() const noexcept { return db_; }

private:
    sqlite3* db_ = nullptr;
};

// The baseline table: the columns and indexes of keel's events table (integer primary key autoincrement, a unique
// 16-byte blob event id, a unique (stream id, version), type, data, metadata, recorded_at) without keel's other
// bookkeeping, and the plain inserts a hand-written event log would do.
class RawEventLog {
public:
    explicit RawEventLog(RawDb& db);  // creates the table and its indexes
    void Begin();                     // BEGIN IMMEDIATE
    void Insert(std::string_view stream, int64_t version, const EventData& event, int64_t recorded_at);
    void Commit();

private:
    RawStmt begin_;
    RawStmt insert_;
    RawStmt commit_;
};

// ---- reporting --------------------------------------------------------------------------------------------------

struct MachineInfo {
    unsigned cpus = 0;
    std::string model;  // "model name" from /proc/cpuinfo
    std::string sqlite_version;
};
MachineInfo Machine();

// 12,345 / 12.3 / 0.123: thousands separators, at most 3 significant decimals below 100.
std::string FormatNumber(double value);
// Peak and current resident set size of this process in MB (10^6 bytes; VmHWM / VmRSS of /proc/self/status).
double PeakRssMB();
double CurrentRssMB();

// Prints what the console reporter prints, keeps every case's per-repetition counters, and at the end prints the
// settings, the median of each case, and the ratios with their targets and PASS/BELOW. When KEEL_BENCH_SUMMARY
// names a file, the result rows are appended to it (tab-separated) for scripts/run-bench.sh's final table.
class SummaryReporter : public benchmark::ConsoleReporter {
public:
    SummaryReporter(std::string bench, std::string measures);

    // A line of the settings block, e.g. ("durability", "FULL").
    void Setting(std::string key, std::string value);
    // A case to print in the medians block: its registered name, what it is, and the counter shown with its unit.
    void Case(std::string name, std::string description, std::string unit = "events/s",
              std::string counter = "items_per_second");
    // median(numerator) / median(denominator) of their first counter; PASS when >= min_ratio (no target: info).
    void Ratio(std::string label, std::string numerator, std::string denominator, std::optional<double> min_ratio);
    // The largest value of `counter` over the case's runs; PASS when < max.
    void Ceiling(std::string label, std::string name, std::string counter, double max, std::string unit);

    void ReportRuns(const std::vector<Run>& runs) override;
    void Finalize() override;

    bool had_error() const noexcept { return had_error_; }

private:
    struct CaseSpec {
        std::string name, description, unit, counter;
    };
    struct RatioSpec {
        std::string label, numerator, denominator;
        std::optional<double> min_ratio;
    };
    struct CeilingSpec {
        std::string label, name, counter, unit;
        double max;
    };
    struct Observed {
        std::map<std::string, std::vector<double>> values;  // counter -> one value per repetition
        std::map<std::string, double> medians;              // counter -> the library's median aggregate
        std::string error;
    };
    std::optional<double> Median(const std::string& name, const std::string& counter) const;
    const CaseSpec* FindCase(const std::string& name) const;

    std::string bench_;
    std::string measures_;
    std::vector<std::pair<std::string, std::string>> settings_;
    std::vector<CaseSpec> cases_;
    std::vector<RatioSpec> ratios_;
    std::vector<CeilingSpec> ceilings_;
    std::map<std::string, Observed> observed_;
    bool had_error_ = false;
};

struct RunOptions {
    /// The default of --benchmark_repetitions (the user's flag wins). Default: 5.
    int repetitions = 5;
    /// Called after the benchmarks ran, before the scratch directory is removed (e.g. to close a store the cases
    /// share). Default: none.
    std::function<void()> teardown;
};

// The benchmark binaries' main: adds --benchmark_repetitions=<options.repetitions> and
// --benchmark_enable_random_interleaving=true unless the user passed those flags, runs the registered benchmarks
// through `reporter`, calls options.teardown, removes the scratch directory. Returns the process exit code: 0, or 1
// when a case failed (a missed target is not a failure; the summary says BELOW), 2 for unrecognized arguments.
int RunBenchmarks(int argc, char** argv, SummaryReporter& reporter, const RunOptions& options = {});

}  // namespace keel::bench
