// crash_appender URI MARKER: the child process of crash_test. Opens the sqlite: store at URI and appends forever,
// three events at a time, round-robin over the streams crash-0 … crash-9 with ExpectedVersion::Exact (the versions
// are read from the store at start). After each acknowledged append it writes one line to stdout and flushes:
//
//     ack <stream> <first_version> <batch> <id1> <id2> <id3>
//
// The first line is "ready <MARKER>", once the store is open. Each event's data is {"batch":B,"seq":S,"idx":I} where
// B = MARKER * 1,000,000 + the append's number in this run, so the three events of one append share B. Any error
// ends the process with status 2 and a message on stderr. The parent kills it with SIGKILL at a random moment.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "keel/event_store.hpp"
#include "keel/status.hpp"

namespace {

constexpr int kStreams = 10;
constexpr int kEventsPerAppend = 3;

[[noreturn]] void Die(const std::string& what, const keel::Status& status) {
    std::fprintf(stderr, "crash_appender: %s: %s\n", what.c_str(), status.ToString().c_str());
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: crash_appender URI MARKER\n");
        return 2;
    }
    const std::string uri = argv[1];
    const int64_t marker = std::strtoll(argv[2], nullptr, 10);

    auto opened = keel::OpenStore(uri);
    if (!opened.ok()) Die("open " + uri, opened.status());
    auto& store = **opened;

    std::vector<int64_t> versions(kStreams, -1);
    for (int s = 0; s < kStreams; ++s) {
        auto info = store.GetStream("crash-" + std::to_string(s));
        if (info.ok()) {
            versions[static_cast<size_t>(s)] = info->version;
        } else if (info.status().code() != keel::StatusCode::kNotFound) {
            Die("GetStream", info.status());
        }
    }
    std::printf("ready %lld\n", static_cast<long long>(marker));
    std::fflush(stdout);

    for (int64_t n = 0;; ++n) {
        const int s = static_cast<int>(n % kStreams);
        const std::string stream = "crash-" + std::to_string(s);
        const int64_t batch = marker * 1'000'000 + n;
        std::vector<keel::EventData> events(kEventsPerAppend);
        for (int i = 0; i < kEventsPerAppend; ++i) {
            auto& e = events[static_cast<size_t>(i)];
            e.event_id = keel::Uuid::Generate();
            e.type = "CrashTested";
            e.data = "{\"batch\":" + std::to_string(batch) + ",\"seq\":" + std::to_string(n * kEventsPerAppend + i) +
                     ",\"idx\":" + std::to_string(i) + "}";
        }
        const int64_t expected = versions[static_cast<size_t>(s)];
        auto result = store.Append(stream, keel::ExpectedVersion::Exact(expected), events);
        if (!result.ok()) Die("append to " + stream, result.status());
        versions[static_cast<size_t>(s)] = result->next_expected_version;
        std::printf("ack %s %lld %lld %s %s %s\n", stream.c_str(), static_cast<long long>(expected + 1),
                    static_cast<long long>(batch), events[0].event_id.ToString().c_str(),
                    events[1].event_id.ToString().c_str(), events[2].event_id.ToString().c_str());
        std::fflush(stdout);
    }
}
