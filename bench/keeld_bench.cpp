// bench_keeld: keeld's throughput and latency for two-step sagas and msgs with wait_result, on SQLite and PostgreSQL
// storage, 1 and 16 concurrent clients, against a no-op branch service in this process; then the latency at half
// the 16-client saga rate. Baseline in the same run: raw HTTP round trips to the same no-op service (a saga costs at
// least three: submit + two branch calls) at the same concurrency.
//
// keeld runs as its own process (the binary beside this build; KEELD_BINARY overrides). PostgreSQL storage is
// measured when KEEL_TEST_PG is set (scripts/run-bench.sh sets it). KEEL_BENCH_SCALE scales the measuring time.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "keeld/keeld_process.hpp"
#include "net/http_client.hpp"
#include "net/http_server.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using keel::net::HttpRequest;
using keel::net::SyncHttpClient;

double Scale() {
    const char* s = std::getenv("KEEL_BENCH_SCALE");
    return s != nullptr ? std::max(0.05, std::atof(s)) : 1.0;
}

struct Sample {
    double per_second = 0;
    double p50_ms = 0, p99_ms = 0;
    int64_t errors = 0;
};

double Percentile(std::vector<double>& v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// Runs `clients` threads for `seconds`, each calling `one(client, i)` (true = success) back to back, or paced so that
// all together start `rate` calls per second when rate > 0.
template <class F>
Sample Drive(int clients, double seconds, double rate, F one) {
    std::atomic<bool> stop{false};
    std::atomic<int64_t> errors{0};
    std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
    std::vector<std::thread> threads;
    auto start = Clock::now();
    for (int c = 0; c < clients; ++c) {
        threads.emplace_back([&, c] {
            SyncHttpClient client;
            auto next = Clock::now();
            auto gap = rate > 0 ? std::chrono::duration<double>(clients / rate) : std::chrono::duration<double>(0);
            for (int64_t i = 0; !stop.load(); ++i) {
                if (rate > 0) {
                    std::this_thread::sleep_until(next);
                    next += std::chrono::duration_cast<Clock::duration>(gap);
                }
                auto t0 = Clock::now();
                bool ok = one(client, c, i);
                lat[static_cast<size_t>(c)].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
                if (!ok) ++errors;
            }
        });
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop = true;
    for (auto& t : threads) t.join();
    double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    std::vector<double> all;
    for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
    Sample s;
    s.per_second = static_cast<double>(all.size() - static_cast<size_t>(errors.load())) / elapsed;
    s.p50_ms = Percentile(all, 0.50);
    s.p99_ms = Percentile(all, 0.99);
    s.errors = errors.load();
    return s;
}

Sample Median(std::vector<Sample> runs) {
    std::sort(runs.begin(), runs.end(), [](const Sample& a, const Sample& b) { return a.per_second < b.per_second; });
    return runs[runs.size() / 2];
}

bool Post(SyncHttpClient& client, const std::string& url, const std::string& body) {
    HttpRequest req;
    req.method = "POST";
    req.path = url;
    req.body = body;
    req.timeout = std::chrono::milliseconds(10000);
    auto r = client.Send(req);
    return r.ok() && r->status == 200;
}

std::string SagaBody(const std::string& gid, const std::string& busi) {
    nlohmann::json j = {{"gid", gid},
                        {"trans_type", "saga"},
                        {"wait_result", true},
                        {"steps", {{{"action", busi + "/TransOut"}, {"compensate", busi + "/TransOutRevert"}},
                                   {{"action", busi + "/TransIn"}, {"compensate", busi + "/TransInRevert"}}}},
                        {"payloads", {R"({"amount":30})", R"({"amount":30})"}}};
    return j.dump();
}

std::string MsgBody(const std::string& gid, const std::string& busi) {
    nlohmann::json j = {{"gid", gid},
                        {"trans_type", "msg"},
                        {"wait_result", true},
                        {"query_prepared", busi + "/QueryPrepared"},
                        {"steps", {{{"action", busi + "/TransIn"}}, {{"action", busi + "/TransOut"}}}},
                        {"payloads", {R"({"amount":30})", R"({"amount":30})"}}};
    return j.dump();
}

struct Summary {
    std::FILE* rows = nullptr;
    Summary() {
        if (const char* p = std::getenv("KEEL_BENCH_SUMMARY")) rows = std::fopen(p, "a");
    }
    ~Summary() {
        if (rows) std::fclose(rows);
    }
    void Row(const std::string& result, const std::string& keel, const std::string& base, const std::string& ratio,
             const std::string& target, const std::string& verdict) {
        std::printf("%-44s %-22s %-22s %-8s %-12s %s\n", result.c_str(), keel.c_str(), base.c_str(), ratio.c_str(),
                    target.c_str(), verdict.c_str());
        if (rows) {
            std::fprintf(rows, "row\tkeeld\t%s\t%s\t%s\t%s\t%s\t%s\n", result.c_str(), keel.c_str(), base.c_str(),
                         ratio.c_str(), target.c_str(), verdict.c_str());
        }
    }
    void Setting(const std::string& k, const std::string& v) {
        std::printf("setting %s: %s\n", k.c_str(), v.c_str());
        if (rows) std::fprintf(rows, "setting\tkeeld: %s\t%s\n", k.c_str(), v.c_str());
    }
};

std::string Fmt(double v, const char* unit) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.0f %s", v, unit);
    return buf;
}

}  // namespace

int main() {
    using namespace keel;
    const double seconds = std::max(1.0, 4.0 * Scale());
    const int reps = 3;
    auto busi = net::StandaloneHttpServer::Start({}, [](net::HttpRequest, net::Responder respond) {
                    net::HttpResponse r;
                    r.body = R"({"dtm_result":"SUCCESS"})";
                    respond(r);
                }).value();
    const std::string busi_url = busi->base_url() + "/api/busi";
    Summary summary;
    summary.Setting("measure", std::to_string(seconds) + " s per run, median of " + std::to_string(reps) + " runs");
    summary.Setting("branches", "a no-op HTTP service in the bench process, 2 threads");
    summary.Setting("sqlite durability", "WAL, synchronous=FULL (keeld's default)");

    // Baseline: raw HTTP round trips to the no-op service.
    std::map<int, Sample> raw;
    for (int clients : {1, 16}) {
        std::vector<Sample> runs;
        for (int r = 0; r < reps; ++r) {
            runs.push_back(Drive(clients, seconds, 0, [&](SyncHttpClient& c, int, int64_t) {
                return Post(c, busi_url + "/TransIn?gid=x&trans_type=saga&branch_id=01&op=action",
                            R"({"amount":30})");
            }));
        }
        raw[clients] = Median(runs);
        std::printf("raw HTTP round trips, %d clients: %.0f/s\n", clients, raw[clients].per_second);
    }

    // gids unique to this run: the PostgreSQL storage (schema keeld_bench) outlives it.
    const std::string run_id = std::to_string(::getpid()) + "-" +
                               std::to_string(std::chrono::system_clock::now().time_since_epoch().count()) + "-";
    std::vector<std::pair<std::string, std::string>> storages = {{"sqlite", ""}};
    if (const char* pg = std::getenv("KEEL_TEST_PG"); pg != nullptr && *pg != '\0') {
        std::string uri = pg;
        storages.emplace_back("postgresql", uri + (uri.find('?') == std::string::npos ? "?" : "&") + "schema=keeld_bench");
    }
    double sqlite_saga16 = 0;
    int failures = 0;
    for (const auto& [name, uri] : storages) {
        keeld_test::KeeldOptions o;
        o.storage = uri;
        o.cron_interval_ms = 1000;
        keeld_test::KeeldProcess keeld(o);
        if (Status s = keeld.Start(); !s.ok()) {
            std::fprintf(stderr, "bench_keeld: cannot start keeld on %s: %s\n", name.c_str(), s.ToString().c_str());
            ++failures;
            continue;
        }
        const std::string submit = keeld.api() + "/submit";
        for (const char* mode : {"saga", "msg"}) {
            for (int clients : {1, 16}) {
                std::vector<Sample> runs;
                for (int r = 0; r < reps; ++r) {
                    std::string prefix = run_id + std::string(mode) + "-" + name + "-" + std::to_string(clients) +
                                         "-" + std::to_string(r) + "-";
                    runs.push_back(Drive(clients, seconds, 0, [&](SyncHttpClient& c, int client, int64_t i) {
                        std::string gid = prefix + std::to_string(client) + "-" + std::to_string(i);
                        return Post(c, submit,
                                    std::string(mode) == "saga" ? SagaBody(gid, busi_url) : MsgBody(gid, busi_url));
                    }));
                }
                Sample m = Median(runs);
                const double base = raw[clients].per_second / 3.0;
                char ratio[32];
                std::snprintf(ratio, sizeof ratio, "%.2fx", m.per_second / base);
                std::string target = "info", verdict = "";
                if (std::string(mode) == "saga" && name == "sqlite" && clients == 16) {
                    sqlite_saga16 = m.per_second;
                    target = ">= 2000/s";
                    verdict = m.per_second >= 2000 ? "PASS" : "BELOW";
                }
                summary.Row(std::string(mode) + " wait_result, " + name + ", " + std::to_string(clients) + " clients",
                            Fmt(m.per_second, "/s") + " p50 " + Fmt(m.p50_ms * 1000, "us"),
                            Fmt(base, "/s (raw HTTP/3)"), ratio, target, verdict);
                if (m.errors > 0) std::printf("  (%lld errors)\n", static_cast<long long>(m.errors));
            }
        }
        if (name == "sqlite" && sqlite_saga16 > 0) {
            const double rate = sqlite_saga16 / 2;
            std::vector<Sample> runs;
            for (int r = 0; r < reps; ++r) {
                std::string prefix = run_id + "half-" + std::to_string(r) + "-";
                runs.push_back(Drive(16, seconds, rate, [&](SyncHttpClient& c, int client, int64_t i) {
                    return Post(c, submit, SagaBody(prefix + std::to_string(client) + "-" + std::to_string(i), busi_url));
                }));
            }
            std::sort(runs.begin(), runs.end(), [](const Sample& a, const Sample& b) { return a.p99_ms < b.p99_ms; });
            const Sample& m = runs[runs.size() / 2];
            char keel_cell[96];
            std::snprintf(keel_cell, sizeof keel_cell, "p50 %.1f ms p99 %.1f ms", m.p50_ms, m.p99_ms);
            summary.Row("saga latency at half load (" + Fmt(rate, "/s") + "), sqlite", keel_cell, "-", "-",
                        "p99 < 20 ms", m.p99_ms < 20 ? "PASS" : "BELOW");
        }
        keeld.Stop();
    }
    return failures == 0 ? 0 : 1;
}
