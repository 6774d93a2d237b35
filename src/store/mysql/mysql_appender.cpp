// keel_mysql_appender: one process of the many-processes test (tests/conformance/mysql_store_mytest.cpp).
//
//   keel_mysql_appender URI PREFIX STREAMS THREADS ATTEMPTS START_MS
//
// Waits until the wall clock reaches START_MS (ms since the epoch, so that several processes start together), then
// runs THREADS threads that each make ATTEMPTS appends of one event to PREFIX-0 … PREFIX-<STREAMS-1>, each with the
// exact version GetStream just reported. Prints one line per attempt:
//   ok <stream> <version> <event id> <global position>
//   conflict <stream> <expected version> <actual version>
// and exits 0; on any other error prints "error <status>" and exits 2.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "keel/event_store.hpp"

namespace {

std::mutex out_mu;

void Print(const std::string& line) {
    std::lock_guard lock(out_mu);
    std::fputs(line.c_str(), stdout);
    std::fputc('\n', stdout);
}

bool Attempt(keel::EventStore& store, const std::string& stream) {
    auto info = store.GetStream(stream);
    if (!info.ok() && info.status().code() != keel::StatusCode::kNotFound) {
        Print("error GetStream: " + info.status().ToString());
        return false;
    }
    const int64_t version = info.ok() ? info->version : -1;
    keel::EventData e;
    e.event_id = keel::Uuid::Generate();
    e.type = "Counted";
    e.data = R"({"pid":)" + std::to_string(::getpid()) + "}";
    auto r = store.Append(stream, keel::ExpectedVersion::Exact(version), {e});
    if (r.ok()) {
        Print("ok " + stream + " " + std::to_string(r->next_expected_version) + " " + e.event_id.ToString() + " " +
              std::to_string(r->first_position));
        return true;
    }
    if (r.status().code() == keel::StatusCode::kWrongExpectedVersion) {
        Print("conflict " + stream + " " + std::to_string(version) + " " +
              std::to_string(r.status().actual_version().value_or(-2)));
        return true;
    }
    Print("error Append: " + r.status().ToString());
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 7) {
        std::fprintf(stderr, "usage: %s URI PREFIX STREAMS THREADS ATTEMPTS START_MS\n", argv[0]);
        return 64;
    }
    const std::string uri = argv[1];
    const std::string prefix = argv[2];
    const int streams = std::atoi(argv[3]);
    const int threads = std::atoi(argv[4]);
    const int attempts = std::atoi(argv[5]);
    const auto start = std::chrono::system_clock::time_point(std::chrono::milliseconds(std::atoll(argv[6])));

    auto store = keel::OpenStore(uri);
    if (!store.ok()) {
        Print("error OpenStore: " + store.status().ToString());
        return 2;
    }
    std::this_thread::sleep_until(start);
    std::vector<std::thread> workers;
    std::vector<int> failed(static_cast<size_t>(threads), 0);
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            std::mt19937 rng(static_cast<unsigned>(::getpid() * 31 + t));
            for (int i = 0; i < attempts; ++i) {
                const std::string stream = prefix + "-" + std::to_string(rng() % static_cast<unsigned>(streams));
                if (!Attempt(**store, stream)) {
                    failed[static_cast<size_t>(t)] = 1;
                    return;
                }
            }
        });
    }
    for (auto& w : workers) w.join();
    std::fflush(stdout);
    for (int f : failed) {
        if (f != 0) return 2;
    }
    return 0;
}
