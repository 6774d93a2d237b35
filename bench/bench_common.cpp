#include "bench_common.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <unistd.h>

namespace keel::bench {
namespace fs = std::filesystem;

double Scale() {
    static const double scale = [] {
        const char* text = std::getenv("KEEL_BENCH_SCALE");
        if (text == nullptr || *text == '\0') return 1.0;
        char* end = nullptr;
        const double v = std::strtod(text, &end);
        if (end == text || *end != '\0' || !(v > 0.0) || v > 100.0) {
            std::cerr << "KEEL_BENCH_SCALE must be a number in (0, 100], got '" << text << "'; using 1.0\n";
            return 1.0;
        }
        return v;
    }();
    return scale;
}

int64_t Scaled(int64_t n, int64_t minimum) {
    const auto v = static_cast<int64_t>(std::llround(static_cast<double>(n) * Scale()));
    return std::max(v, minimum);
}

namespace {

fs::path ExecutableDir() {
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    return ec ? fs::current_path() : exe.parent_path();
}

std::string ExecutableName() {
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    return ec ? std::string("bench") : exe.filename().string();
}

struct Scratch {
    fs::path dir;
    bool created = false;
};

Scratch& ScratchState() {
    static Scratch s;
    return s;
}

}  // namespace

const fs::path& ScratchDir() {
    Scratch& s = ScratchState();
    if (!s.created) {
        const char* base = std::getenv("KEEL_BENCH_TMPDIR");
        const fs::path root = (base != nullptr && *base != '\0') ? fs::path(base) : ExecutableDir() / "bench-tmp";
        s.dir = fs::absolute(root / (ExecutableName() + "-" + std::to_string(::getpid())));
        fs::create_directories(s.dir);
        s.created = true;
    }
    return s.dir;
}

std::string NewDbPath(std::string_view stem) {
    static std::atomic<int> counter{0};
    const int n = ++counter;
    return (ScratchDir() / (std::string(stem) + "-" + std::to_string(n) + ".db")).string();
}

void RemoveScratchDir() {
    Scratch& s = ScratchState();
    if (!s.created) return;
    std::error_code ec;
    fs::remove_all(s.dir, ec);
    s.created = false;
}

void RemoveDb(const std::string& path) {
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) fs::remove(path + suffix, ec);
}

std::string StreamName(int64_t index) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "User-%06lld", static_cast<long long>(index));
    return buf;
}

void FillEvent(EventData& event, int64_t seq) {
    event.event_id = Uuid::Generate();
    event.type.assign("UserUpdated");
    char buf[kDataBytes + 64];
    const auto n = static_cast<long long>(seq);
    int len = std::snprintf(buf, sizeof buf,
                            R"({"user_id":"User-%06lld","seq":%lld,"email":"user%06lld@example.com",)"
                            R"("name":"Bench User %lld","plan":"premium","score":%lld,"active":true,)"
                            R"("tags":["alpha","beta"],"note":")",
                            n % 1000000, n, n % 1000000, n, (n * 7919) % 100000);
    len = std::min(len, static_cast<int>(kDataBytes) - 2);
    event.data.assign(buf, static_cast<size_t>(len));
    event.data.append(kDataBytes - 2 - static_cast<size_t>(len), 'x');
    event.data.append("\"}");
    event.metadata.assign(R"({"tenant":"bench","source":"keel-bench"})");
}

int64_t NowMicros() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::unique_ptr<EventStore> OpenKeel(const std::string& path, Durability durability) {
    StoreOptions options;
    options.durability = durability;
    return OpenKeel(path, options);
}

std::unique_ptr<EventStore> OpenKeel(const std::string& path, const StoreOptions& options) {
    auto store = OpenStore("sqlite://" + path, options);
    if (!store.ok()) throw std::runtime_error("OpenStore(" + path + "): " + store.status().ToString());
    return std::move(*store);
}

std::string_view DurabilityName(Durability durability) {
    return durability == Durability::kFull ? "FULL" : "NORMAL";
}

// ---- raw SQLite --------------------------------------------------------------------------------------------------

namespace {
[[noreturn]] void Fail(sqlite3* db, std::string_view what) {
    throw std::runtime_error(std::string(what) + ": " + (db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
}
}  // namespace

RawStmt::RawStmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr) != SQLITE_OK) {
        Fail(db_, std::string("prepare ") + sql);
    }
}

RawStmt::~RawStmt() {
    sqlite3_finalize(stmt_);
}

void RawStmt::Bind(int index, int64_t value) {
    if (sqlite3_bind_int64(stmt_, index, value) != SQLITE_OK) Fail(db_, "bind");
}

void RawStmt::BindText(int index, std::string_view text) {
    if (sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_STATIC) != SQLITE_OK) {
        Fail(db_, "bind");
    }
}

void RawStmt::BindBlob(int index, std::string_view bytes) {
    if (sqlite3_bind_blob(stmt_, index, bytes.data(), static_cast<int>(bytes.size()), SQLITE_STATIC) != SQLITE_OK) {
        Fail(db_, "bind");
    }
}

bool RawStmt::Step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    Fail(db_, std::string("step ") + sqlite3_sql(stmt_));
}

void RawStmt::Run() {
    while (Step()) {
    }
    Reset();
}

void RawStmt::Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
}

RawDb::RawDb(const std::string& path, Durability durability, bool read_only) {
    const int flags = read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    if (sqlite3_open_v2(path.c_str(), &db_, flags | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
        const std::string msg = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
        sqlite3_close(db_);
        db_ = nullptr;
        throw std::runtime_error("open " + path + ": " + msg);
    }
    sqlite3_busy_timeout(db_, 5000);
    Exec("PRAGMA cache_size=-16384");  // as keel's connections
    if (!read_only) {
        Exec("PRAGMA journal_mode=WAL");
        Exec(durability == Durability::kFull ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    }
}

RawDb::~RawDb() {
    sqlite3_close(db_);
}

void RawDb::Exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
        const std::string msg = err != nullptr ? err : "unknown error";
        sqlite3_free(err);
        throw std::runtime_error(std::string(sql) + ": " + msg);
    }
}

namespace {
RawDb& CreateLog(RawDb& db) {
    db.Exec(
        "CREATE TABLE IF NOT EXISTS events ("
        " global_position INTEGER PRIMARY KEY AUTOINCREMENT,"
        " event_id BLOB NOT NULL,"
        " stream_id TEXT NOT NULL,"
        " stream_version INTEGER NOT NULL,"
        " type TEXT NOT NULL,"
        " data BLOB NOT NULL,"
        " metadata TEXT NOT NULL,"
        " recorded_at INTEGER NOT NULL);"
        "CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events(event_id);"
        "CREATE UNIQUE INDEX IF NOT EXISTS events_stream ON events(stream_id, stream_version);");
    return db;
}
}  // namespace

RawEventLog::RawEventLog(RawDb& db)
    : begin_(CreateLog(db).get(), "BEGIN IMMEDIATE"),
      insert_(db.get(),
              "INSERT INTO events(event_id, stream_id, stream_version, type, data, metadata, recorded_at) "
              "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
      commit_(db.get(), "COMMIT") {}

void RawEventLog::Begin() {
    begin_.Run();
}

void RawEventLog::Insert(std::string_view stream, int64_t version, const EventData& event, int64_t recorded_at) {
    insert_.BindBlob(1, event.event_id.bytes_view());
    insert_.BindText(2, stream);
    insert_.Bind(3, version);
    insert_.BindText(4, event.type);
    insert_.BindBlob(5, event.data);
    insert_.BindText(6, event.metadata);
    insert_.Bind(7, recorded_at);
    insert_.Run();
}

void RawEventLog::Commit() {
    commit_.Run();
}

// ---- reporting ----------------------------------------------------------------------------------------------------

MachineInfo Machine() {
    MachineInfo m;
    m.cpus = std::thread::hardware_concurrency();
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; std::getline(cpuinfo, line);) {
        if (line.rfind("model name", 0) == 0) {
            const auto colon = line.find(':');
            if (colon != std::string::npos) m.model = line.substr(line.find_first_not_of(" \t", colon + 1));
            break;
        }
    }
    if (m.model.empty()) m.model = "unknown CPU";
    m.sqlite_version = sqlite3_libversion();
    return m;
}

std::string FormatNumber(double value) {
    if (!std::isfinite(value)) return "n/a";
    char buf[64];
    const double mag = std::fabs(value);
    if (mag >= 100.0) {
        std::snprintf(buf, sizeof buf, "%.0f", value);
        std::string digits = buf;
        const size_t start = digits[0] == '-' ? 1 : 0;
        for (auto i = static_cast<std::ptrdiff_t>(digits.size()) - 3; i > static_cast<std::ptrdiff_t>(start); i -= 3) {
            digits.insert(static_cast<size_t>(i), ",");
        }
        return digits;
    }
    std::snprintf(buf, sizeof buf, mag >= 10.0 ? "%.1f" : (mag >= 1.0 ? "%.2f" : "%.3g"), value);
    return buf;
}

namespace {
double StatusKb(const char* key) {
    std::ifstream status("/proc/self/status");
    const size_t len = std::strlen(key);
    for (std::string line; std::getline(status, line);) {
        if (line.compare(0, len, key) == 0 && line.size() > len && line[len] == ':') {
            return std::strtod(line.c_str() + len + 1, nullptr);
        }
    }
    return 0.0;
}
}  // namespace

double PeakRssMB() {
    return StatusKb("VmHWM") * 1024.0 / 1e6;
}
double CurrentRssMB() {
    return StatusKb("VmRSS") * 1024.0 / 1e6;
}

namespace {
benchmark::ConsoleReporter::OutputOptions ConsoleOptions() {
    return ::isatty(STDOUT_FILENO) != 0 ? benchmark::ConsoleReporter::OO_Color : benchmark::ConsoleReporter::OO_None;
}

std::string Pad(std::string s, size_t width) {
    if (s.size() < width) s.append(width - s.size(), ' ');
    return s;
}

std::string FormatRatio(double r) {
    char buf[32];
    std::snprintf(buf, sizeof buf, r >= 10.0 ? "%.1fx" : "%.2fx", r);
    return buf;
}
}  // namespace

SummaryReporter::SummaryReporter(std::string bench, std::string measures)
    : benchmark::ConsoleReporter(ConsoleOptions()), bench_(std::move(bench)), measures_(std::move(measures)) {}

void SummaryReporter::Setting(std::string key, std::string value) {
    settings_.emplace_back(std::move(key), std::move(value));
}

void SummaryReporter::Case(std::string name, std::string description, std::string unit, std::string counter) {
    cases_.push_back({std::move(name), std::move(description), std::move(unit), std::move(counter)});
}

void SummaryReporter::Ratio(std::string label, std::string numerator, std::string denominator,
                            std::optional<double> min_ratio) {
    ratios_.push_back({std::move(label), std::move(numerator), std::move(denominator), min_ratio});
}

void SummaryReporter::Ceiling(std::string label, std::string name, std::string counter, double max, std::string unit) {
    ceilings_.push_back({std::move(label), std::move(name), std::move(counter), std::move(unit), max});
}

void SummaryReporter::ReportRuns(const std::vector<Run>& runs) {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
        Observed& o = observed_[run.run_name.function_name];
        if (run.error_occurred) {
            had_error_ = true;
            if (o.error.empty()) o.error = run.error_message;
            continue;
        }
        if (run.run_type == Run::RT_Iteration) {
            for (const auto& [name, counter] : run.counters) o.values[name].push_back(counter.value);
        } else if (run.aggregate_name == "median") {
            for (const auto& [name, counter] : run.counters) o.medians[name] = counter.value;
        }
    }
}

std::optional<double> SummaryReporter::Median(const std::string& name, const std::string& counter) const {
    const auto it = observed_.find(name);
    if (it == observed_.end()) return std::nullopt;
    const auto values = it->second.values.find(counter);
    if (values != it->second.values.end() && !values->second.empty()) {
        std::vector<double> v = values->second;
        std::sort(v.begin(), v.end());
        const size_t n = v.size();
        return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
    }
    const auto median = it->second.medians.find(counter);
    if (median != it->second.medians.end()) return median->second;
    return std::nullopt;
}

const SummaryReporter::CaseSpec* SummaryReporter::FindCase(const std::string& name) const {
    for (const CaseSpec& c : cases_) {
        if (c.name == name) return &c;
    }
    return nullptr;
}

void SummaryReporter::Finalize() {
    ConsoleReporter::Finalize();
    const MachineInfo machine = Machine();
    std::ostringstream out;
    std::vector<std::string> rows;  // tab-separated, for run-bench.sh
    const std::string machine_line =
        std::to_string(machine.cpus) + " CPUs (nproc), " + machine.model + ", SQLite " + machine.sqlite_version;

    out << "\n==== keel benchmark: " << bench_ << " ====\n";
    out << "measures  : " << measures_ << "\n";
    out << "machine   : " << machine_line << "\n";
    char scale[32];
    std::snprintf(scale, sizeof scale, "%g", Scale());
    out << "scale     : " << scale << " (KEEL_BENCH_SCALE)\n";
    for (const auto& [key, value] : settings_) out << Pad(key, 10) << ": " << value << "\n";

    out << "medians   :\n";
    for (const CaseSpec& c : cases_) {
        const auto it = observed_.find(c.name);
        std::string line = "  " + Pad(c.name, 30);
        if (it != observed_.end() && !it->second.error.empty()) {
            line += "ERROR: " + it->second.error;
        } else if (const auto m = Median(c.name, c.counter)) {
            line += Pad(FormatNumber(*m) + " " + c.unit, 22);
            const auto values = it->second.values.find(c.counter);
            if (values != it->second.values.end() && values->second.size() > 1) {
                const auto [lo, hi] = std::minmax_element(values->second.begin(), values->second.end());
                line += "(median of " + std::to_string(values->second.size()) + ", min " + FormatNumber(*lo) +
                        ", max " + FormatNumber(*hi) + ")";
            }
            line += "  " + c.description;
        } else {
            line += "not run (filtered out?)";
        }
        out << line << "\n";
    }

    // A case whose repetitions differ by more than 1.5x ran on a shared, busy machine: say so next to the figures.
    std::vector<std::string> noisy;
    for (const CaseSpec& c : cases_) {
        const auto it = observed_.find(c.name);
        if (it == observed_.end()) continue;
        const auto values = it->second.values.find(c.counter);
        if (values == it->second.values.end() || values->second.size() < 2) continue;
        const auto [lo, hi] = std::minmax_element(values->second.begin(), values->second.end());
        if (*lo > 0.0 && *hi / *lo > 1.5) {
            noisy.push_back(c.name + " (max/min " + FormatRatio(*hi / *lo) + ")");
        }
    }
    if (!noisy.empty()) {
        std::string list;
        for (const std::string& n : noisy) list += (list.empty() ? "" : ", ") + n;
        out << "noise     : repetitions vary widely in " << list
            << "; the disk or CPU is shared with other work, so compare the ratio, not absolute figures, "
               "and rerun on an idle machine to confirm\n";
    }

    out << "results   :\n";
    for (const RatioSpec& r : ratios_) {
        const CaseSpec* num_case = FindCase(r.numerator);
        const CaseSpec* den_case = FindCase(r.denominator);
        const std::string num_counter = num_case != nullptr ? num_case->counter : "items_per_second";
        const std::string den_counter = den_case != nullptr ? den_case->counter : "items_per_second";
        const std::string num_unit = num_case != nullptr ? num_case->unit : "";
        const std::string den_unit = den_case != nullptr ? den_case->unit : "";
        const auto num = Median(r.numerator, num_counter);
        const auto den = Median(r.denominator, den_counter);
        std::string ratio_text = "n/a";
        std::string target_text = r.min_ratio ? ">= " + FormatRatio(*r.min_ratio) : "(info)";
        std::string verdict = "-";
        if (num && den && *den > 0.0) {
            const double ratio = *num / *den;
            ratio_text = FormatRatio(ratio);
            if (r.min_ratio) verdict = ratio >= *r.min_ratio ? "PASS" : "BELOW";
        } else if (r.min_ratio) {
            verdict = "NO DATA";
        }
        const std::string num_text = r.numerator + " " + (num ? FormatNumber(*num) + " " + num_unit : "n/a");
        const std::string den_text = r.denominator + " " + (den ? FormatNumber(*den) + " " + den_unit : "n/a");
        out << "  RESULT " << r.label << ": " << num_text << " / " << den_text << " = " << ratio_text << "  target "
            << target_text << "  " << verdict << "\n";
        rows.push_back("row\t" + bench_ + "\t" + r.label + "\t" + num_text + "\t" + den_text + "\t" + ratio_text +
                       "\t" + target_text + "\t" + verdict);
    }
    for (const CeilingSpec& c : ceilings_) {
        std::optional<double> max;
        const auto it = observed_.find(c.name);
        if (it != observed_.end()) {
            const auto values = it->second.values.find(c.counter);
            if (values != it->second.values.end() && !values->second.empty()) {
                max = *std::max_element(values->second.begin(), values->second.end());
            }
        }
        const std::string value_text = max ? FormatNumber(*max) + " " + c.unit : "n/a";
        const std::string target_text = "< " + FormatNumber(c.max) + " " + c.unit;
        const std::string verdict = !max ? "NO DATA" : (*max < c.max ? "PASS" : "BELOW");
        out << "  RESULT " << c.label << ": " << value_text << "  target " << target_text << "  " << verdict << "\n";
        rows.push_back("row\t" + bench_ + "\t" + c.label + "\t" + c.name + " " + value_text + "\t-\t-\t" + target_text +
                       "\t" + verdict);
    }
    out << "==== end " << bench_ << " ====\n";
    GetOutputStream() << out.str() << std::flush;

    if (const char* summary = std::getenv("KEEL_BENCH_SUMMARY"); summary != nullptr && *summary != '\0') {
        std::ofstream file(summary, std::ios::app);
        file << "machine\t" << machine_line << "\n";
        std::string settings;
        for (const auto& [key, value] : settings_) settings += (settings.empty() ? "" : "; ") + key + " " + value;
        file << "setting\t" << bench_ << "\t" << settings << "\n";
        for (const std::string& row : rows) file << row << "\n";
        for (const std::string& n : noisy) file << "noisy\t" << bench_ << "\t" << n << "\n";
    }
}

int RunBenchmarks(int argc, char** argv, SummaryReporter& reporter, const RunOptions& options) {
    std::vector<char*> args;
    args.push_back(argv[0]);
    // Defaults the user's own flags override: options.repetitions, run in random order across the cases so that a
    // slow spell of a shared disk or CPU hits keel and its baseline alike.
    std::string default_repetitions = "--benchmark_repetitions=" + std::to_string(options.repetitions);
    static char default_interleaving[] = "--benchmark_enable_random_interleaving=true";
    bool user_repetitions = false;
    bool user_interleaving = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg(argv[i]);
        if (arg.rfind("--benchmark_repetitions", 0) == 0) user_repetitions = true;
        if (arg.rfind("--benchmark_enable_random_interleaving", 0) == 0) user_interleaving = true;
    }
    if (!user_repetitions) args.push_back(default_repetitions.data());
    if (!user_interleaving) args.push_back(default_interleaving);
    for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
    int n = static_cast<int>(args.size());
    args.push_back(nullptr);

    int rc = 0;
    benchmark::Initialize(&n, args.data());
    if (benchmark::ReportUnrecognizedArguments(n, args.data())) {
        rc = 2;
    } else {
        benchmark::RunSpecifiedBenchmarks(&reporter);
        rc = reporter.had_error() ? 1 : 0;
    }
    benchmark::Shutdown();
    if (options.teardown) options.teardown();
    RemoveScratchDir();
    return rc;
}

}  // namespace keel::bench
