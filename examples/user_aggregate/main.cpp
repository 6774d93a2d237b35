// The `make run` demo: seed 004 (Midgard's user aggregate) on keel's embedded SQLite event store, step by step.
//
//   user_aggregate [DB_PATH]      (default: keel-demo.db in the current directory)
//
// Every run works on the same file and keeps what earlier runs stored: it never deletes anything. Each run uses a
// fresh stream, User-123-r<N> where N counts the earlier runs found in the file, so the scenario (create, rename,
// conflict …) starts from a new stream every time while the store itself keeps growing.
//
// Exit status: 0 when every step behaved as expected, 1 otherwise (each failed check is printed).

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/core.h>

#include "keel/keel.hpp"

namespace demo {

struct UserCreated {
    std::string id;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UserCreated, id)

struct UserNameUpdated {
    std::string name;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UserNameUpdated, name)

struct EmailChanged {
    std::string email;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(EmailChanged, email)

// The aggregate: plain state and one On per event. Being JSON-serializable, it can be snapshotted.
struct User {
    std::string id;
    std::string name;
    std::string email;
    void On(const UserCreated& e) { id = e.id; }
    void On(const UserNameUpdated& e) { name = e.name; }
    void On(const EmailChanged& e) { email = e.email; }
    friend bool operator==(const User&, const User&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name, email)

using Users = keel::Repository<User, UserCreated, UserNameUpdated, EmailChanged>;

int g_failed_checks = 0;

// Prints the outcome of one expectation; the demo's exit status is the conjunction of all of them.
bool Check(bool ok, std::string_view what) {
    fmt::print("    [{}] {}\n", ok ? "ok" : "FAILED", what);
    if (!ok) ++g_failed_checks;
    return ok;
}

void Step(int n, std::string_view title) {
    fmt::print("\n{}. {}\n", n, title);
}

std::string Describe(const User& u) {
    return fmt::format("id={} name={} email={}", u.id, u.name, u.email.empty() ? "-" : u.email);
}

// How many earlier runs left a User-123-r<N> stream in this store.
int CountEarlierRuns(keel::EventStore& store) {
    int runs = 0;
    const std::vector<keel::StreamInfo> streams = store.ListStreams("User-123-r").value();  // ids after the prefix
    for (const keel::StreamInfo& info : streams) {
        if (info.stream_id.starts_with("User-123-r")) ++runs;
    }
    return runs;
}

template <class Pred>
bool WaitFor(Pred pred, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

int Run(const std::filesystem::path& db_path) {
    // 1. Open the store.
    Step(1, "Open the event store");
    const std::string uri = "sqlite://" + db_path.string();
    auto opened = keel::OpenStore(uri);
    if (!Check(opened.ok(), fmt::format("opened {}", uri))) {
        fmt::print("      {}\n", opened.status().ToString());
        return 1;
    }
    std::unique_ptr<keel::EventStore> store = std::move(opened).value();
    const keel::StoreStats before = store->Stats().value();
    const int run = CountEarlierRuns(*store) + 1;
    const std::string stream = fmt::format("User-123-r{}", run);
    if (before.events == 0) {
        fmt::print("    a new, empty store\n");
    } else {
        fmt::print("    an existing store: {} events in {} streams, head at global position {}\n", before.events,
                   before.streams, before.head_position);
    }
    fmt::print("    this is run #{} on this file, so the user lives in the fresh stream {}\n", run, stream);

    keel::InProcessPublisher publisher;
    (void)publisher.Subscribe("", [](const keel::RecordedEvent& e) {
        fmt::print("      published {} of {} (version {}, global position {})\n", e.type, e.stream_id, e.stream_version,
                   e.global_position);
        return keel::Status::Ok();
    });
    Users users(*store, keel::RepositoryOptions{.snapshot_every = 4, .publisher = &publisher});
    fmt::print(
        "    repository: Repository<User, UserCreated, UserNameUpdated, EmailChanged>,\n"
        "                snapshot every 4 events, saved events published in-process\n");

    // 2. Seed 004: three saves.
    Step(2, "Seed 004: create user 123, rename to \"jun\", then to \"jun2\" - three separate Saves");
    int64_t jun_position = 0;
    {
        keel::Aggregate<User> user(stream);
        user.Raise(UserCreated{"123"});
        auto saved = users.Save(user).value();
        fmt::print("    Save UserCreated{{id: \"123\"}}        -> stream version {}, global position {}\n",
                   saved.next_expected_version, saved.last_position);
        Check(saved.next_expected_version == 0, "a new stream starts at version 0");

        for (const char* name : {"jun", "jun2"}) {
            auto loaded = users.Load(stream).value();
            loaded.Raise(UserNameUpdated{name});
            saved = users.Save(loaded).value();
            fmt::print("    Save UserNameUpdated{{name: \"{}\"}}{} -> stream version {}, global position {}\n", name,
                       std::string(5 - std::string_view(name).size(), ' '), saved.next_expected_version,
                       saved.last_position);
            if (std::string_view(name) == "jun") jun_position = saved.last_position;
        }
        Check(saved.next_expected_version == 2, "three events: versions 0, 1, 2");
    }

    // 3. Load: replay.
    Step(3, "Load the user: replay its events through User::On");
    {
        auto user = users.Load(stream).value();
        fmt::print("    {} at version {}: {}\n", user.id(), user.version(), Describe(*user));
        Check(user->id == "123" && user->name == "jun2" && user.version() == 2,
              "rebuilt state is id=123 name=jun2, version 2 (three events)");
    }

    // 4. Optimistic concurrency.
    Step(4, "Optimistic concurrency: two sessions edit the same user");
    {
        auto alice = users.Load(stream).value();
        auto bob = users.Load(stream).value();
        fmt::print("    alice and bob both load version {}\n", alice.version());
        bob.Raise(UserNameUpdated{"bob"});
        auto bob_saved = users.Save(bob).value();
        fmt::print("    bob saves name=bob                -> stream version {}\n", bob_saved.next_expected_version);

        alice.Raise(UserNameUpdated{"alice"});
        auto stale = users.Save(alice);
        fmt::print("    alice saves her stale copy        -> {}\n", stale.status().ToString());
        Check(!stale.ok() && stale.status().code() == keel::StatusCode::kWrongExpectedVersion &&
                  stale.status().actual_version() == bob_saved.next_expected_version,
              fmt::format("conflict detected: kWrongExpectedVersion, actual version {}",
                          bob_saved.next_expected_version));

        fmt::print(
            "    alice retries with Execute (load, run the command, save; on a conflict reload and rerun);\n"
            "    to show the retry, carol writes between Execute's load and save on the first attempt:\n");
        int attempts = 0;
        auto executed = users.Execute(stream, [&](keel::Aggregate<User>& user) -> keel::Status {
            ++attempts;
            fmt::print("      attempt {}: loaded version {}, name={}\n", attempts, user.version(), user->name);
            if (attempts == 1) {
                auto carol =
                    users.Append(stream, keel::ExpectedVersion::Exact(user.version()), UserNameUpdated{"carol"});
                if (!carol.ok()) return carol.status();
                fmt::print("      (carol appended name=carol -> version {})\n", carol->next_expected_version);
            }
            user.Raise(UserNameUpdated{"alice"});
            return keel::Status::Ok();
        });
        if (Check(executed.ok(), "Execute succeeded")) {
            fmt::print("    Execute saved at stream version {} after {} attempts\n", executed->next_expected_version,
                       attempts);
        } else {
            fmt::print("      {}\n", executed.status().ToString());
        }
        Check(attempts == 2, "the first attempt conflicted with carol and the second one saved");
        auto user = users.Load(stream).value();
        Check(user->name == "alice" && user.version() == 5, "the user is now name=alice at version 5");
    }

    // 5. A subscription: catch up, then live.
    Step(5, "Subscribe to $all: catch up on the stored history, then receive a live event");
    {
        const int64_t head = store->HeadPosition().value();
        std::atomic<int64_t> delivered{0};
        std::atomic<int64_t> last_position{0};
        keel::SubscriptionOptions options;  // not durable (no name): starts at the beginning every time
        auto subscription = store
                                ->Subscribe(std::move(options),
                                            [&](const keel::RecordedEvent& e) {
                                                delivered.fetch_add(1);
                                                last_position.store(e.global_position);
                                                return keel::Status::Ok();
                                            })
                                .value();
        const bool caught_up = WaitFor([&] { return subscription->caught_up() && last_position.load() >= head; },
                                       std::chrono::seconds(10));
        fmt::print("    caught up: {} events delivered, up to global position {} (head {})\n", delivered.load(),
                   last_position.load(), head);
        Check(caught_up && last_position.load() == head, "catch-up delivered the whole history up to the head");

        const int64_t before_live = delivered.load();
        const auto appended_at = std::chrono::steady_clock::now();
        auto live = users.Execute(
            stream, [](keel::Aggregate<User>& user) { user.Raise(EmailChanged{user->name + "@example.com"}); });
        const int64_t live_position = live.ok() ? live->last_position : -1;
        const bool received =
            live.ok() && WaitFor([&] { return last_position.load() >= live_position; }, std::chrono::seconds(10));
        const auto latency =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - appended_at);
        fmt::print("    live: EmailChanged appended at global position {}, delivered {} ms later\n", live_position,
                   latency.count());
        Check(received && delivered.load() == before_live + 1, "the live event arrived, exactly once");
        Check(subscription->Stop().ok(), "subscription stopped cleanly");
    }

    // 6. Temporal query.
    Step(6, "Temporal query: the user as of an earlier global position");
    {
        auto then = users.LoadAsOf(stream, keel::AsOf::Position(jun_position)).value();
        auto now = users.Load(stream).value();
        fmt::print("    as of global position {}: version {}, {}\n", jun_position, then.version(), Describe(*then));
        fmt::print("    now:                      version {}, {}\n", now.version(), Describe(*now));
        Check(then->name == "jun" && then.version() == 1, "as of the first rename the name was jun (version 1)");
    }

    // 7. Snapshot.
    Step(7, "Snapshot: written when a Save crossed 4 events; Load starts from it");
    {
        auto snapshot = store->LoadSnapshot(stream);
        if (Check(snapshot.ok(), "the stream has a snapshot")) {
            fmt::print("    snapshot {} at version {}: {}\n", snapshot->type, snapshot->version, snapshot->data);
            Check(snapshot->version == 3, "taken at version 3, by bob's Save (the 4th event)");
        }
        auto from_snapshot = users.Load(stream).value();
        // LoadAsOf never uses a snapshot: as of the head it is a full replay of the stream.
        auto replayed = users.LoadAsOf(stream, keel::AsOf::Position(store->HeadPosition().value())).value();
        fmt::print("    Load (snapshot + {} later events): version {}, {}\n",
                   from_snapshot.version() - (snapshot.ok() ? snapshot->version : -1), from_snapshot.version(),
                   Describe(*from_snapshot));
        fmt::print("    full replay of {} events:          version {}, {}\n", replayed.version() + 1,
                   replayed.version(), Describe(*replayed));
        Check(from_snapshot.state() == replayed.state() && from_snapshot.version() == replayed.version(),
              "snapshot + later events == full replay");
    }

    // 8. Stats.
    Step(8, "Store stats");
    {
        const keel::StoreStats stats = store->Stats().value();
        fmt::print("    backend {}, file {}\n", stats.backend, stats.location);
        fmt::print("    {} events in {} streams, head at global position {}, {} bytes on disk\n", stats.events,
                   stats.streams, stats.head_position, stats.size_bytes);
        Check(stats.events == before.events + 7, "this run added 7 events");
        Check(stats.head_position >= stats.events, "head position covers every event");
    }

    if (g_failed_checks > 0) {
        fmt::print("\n{} check(s) FAILED\n", g_failed_checks);
        return 1;
    }
    fmt::print("\nEvery step behaved as expected. Run it again: the store keeps growing, run #{} gets a new stream.\n",
               run + 1);
    return 0;
}

}  // namespace demo

int main(int argc, char** argv) {
    const std::filesystem::path db_path = std::filesystem::absolute(argc > 1 ? argv[1] : "keel-demo.db");
    fmt::print("keel demo: seed 004's user aggregate on the embedded SQLite event store ({})\n", db_path.string());
    try {
        return demo::Run(db_path);
    } catch (const keel::StatusError& e) {
        fmt::print("\nFAILED: an unexpected error: {}\n", e.what());
        return 1;
    }
}
