#include "commands.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "keel/outbox.hpp"
#include "keel/projection.hpp"
#include "keel/subscription.hpp"
#include "keel/uuid.hpp"

namespace keel::cli {
namespace {

// Events asked from the store per call while paging through a stream or $all.
constexpr size_t kPageSize = 1000;
// How often `tail` looks at its stop conditions.
constexpr std::chrono::milliseconds kTailTick{50};
// How often `relay` looks at its stop flag and at the relay's counters.
constexpr std::chrono::milliseconds kRelayTick{50};

std::string DescribeExpected(const ExpectedVersion& expected) {
    switch (expected.kind()) {
        case ExpectedVersion::Kind::kAny: return "any version";
        case ExpectedVersion::Kind::kNoStream: return "no stream";
        case ExpectedVersion::Kind::kStreamExists: return "an existing stream";
        case ExpectedVersion::Kind::kExact: return fmt::format("version {}", expected.version());
    }
    return expected.ToString();
}

// "append to User-1 failed: expected version 4 but the stream is at 7" with "retry with --expected 7".
Outcome ConflictFailure(std::string_view action, const ExpectedVersion& expected, const Status& status) {
    std::optional<int64_t> actual = status.actual_version();
    std::string where = "the stream is at another version";
    std::string hint;
    if (actual && *actual >= 0) {
        where = fmt::format("the stream is at {}", *actual);
        hint = fmt::format("re-read the stream and retry with --expected {}", *actual);
    } else if (actual) {
        where = "the stream does not exist";
        hint = "retry with --expected no_stream (or any)";
    }
    std::string what = fmt::format("{} failed: expected {} but {}", action, DescribeExpected(expected), where);
    return Fail(Status::WrongExpectedVersion(std::move(what), actual.value_or(-1)), std::move(hint));
}

// A failed call on one stream, told in the terms of the CLI.
Outcome StreamFailure(std::string_view action, std::string_view stream, const Status& status,
                      const ExpectedVersion& expected = ExpectedVersion::Any()) {
    switch (status.code()) {
        case StatusCode::kWrongExpectedVersion: return ConflictFailure(action, expected, status);
        case StatusCode::kStreamDeleted:
            return Fail(
                Status::StreamDeleted(fmt::format("{} failed: {} is hard-deleted (tombstoned)", action, stream)),
                "a tombstoned stream can never be read or written again; use another stream id");
        case StatusCode::kNotFound:
            return Fail(Status::NotFound(fmt::format("{} failed: stream {} does not exist", action, stream)),
                        "check the stream id; 'keel streams' lists the streams");
        default: return Fail(status.WithContext(fmt::format("{} failed", action)));
    }
}

Result<std::string> ReadAll(std::istream& in) {
    std::ostringstream buffer;
    buffer << in.rdbuf();
    if (in.bad()) return Status::InvalidArgument("reading failed");
    return std::move(buffer).str();
}

Result<std::string> ReadArgumentText(std::string_view flag, std::string_view value) {
    if (value == "-") {
        auto text = ReadAll(std::cin);
        if (!text.ok()) return Status::InvalidArgument(fmt::format("{} -: cannot read stdin", flag));
        return text;
    }
    if (value.starts_with('@')) {
        std::string path(value.substr(1));
        std::ifstream file(path, std::ios::binary);
        if (!file) {
            return Status::InvalidArgument(
                fmt::format("{} @{}: cannot open {}: {}", flag, path, path, std::strerror(errno)));
        }
        auto text = ReadAll(file);
        if (!text.ok()) return Status::InvalidArgument(fmt::format("{} @{}: cannot read {}", flag, path, path));
        return text;
    }
    return std::string(value);
}

// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
std::string JsonErrorText(const nlohmann::json::exception& e) {
    std::string_view text = e.what();
    if (text.starts_with('[')) {
        size_t close = text.find("] ");
        if (close != std::string_view::npos) text.remove_prefix(close + 2);
    }
    return std::string(text);
}

constexpr std::string_view kJsonHint = "pass a JSON text, @FILE to read a file, or - to read stdin";
constexpr std::string_view kExpectedHint = "pass any, no_stream, exists or the stream's current version";

// The event an append writes, from its flags; a usage failure naming the flag when one is malformed.
Outcome BuildEvent(const AppendArgs& args, EventData& event) {
    event.type = args.type;
    if (!args.id.empty()) {
        auto id = Uuid::Parse(args.id);
        if (!id.ok() || id->is_nil()) {
            std::string why = id.ok() ? "it is the nil UUID" : id.status().message();
            return Fail(Status::InvalidArgument(fmt::format("--id is not a valid UUID: {}", why)),
                        "pass a UUID in the 8-4-4-4-12 hex form, or leave --id out to generate one");
        }
        event.event_id = *id;
    }
    auto data = LoadJsonArgument("--data", args.data, /*require_object=*/false);
    if (!data.ok()) return Fail(data.status(), std::string(kJsonHint));
    event.data = std::move(*data);
    if (!args.metadata.empty()) {
        auto metadata = LoadJsonArgument("--metadata", args.metadata, /*require_object=*/true);
        if (!metadata.ok()) return Fail(metadata.status(), std::string(kJsonHint));
        event.metadata = std::move(*metadata);
    }
    return Outcome::Ok();
}

int64_t NowMicros() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// A store whose backend keeps no outbox (memory:), told in the terms of the CLI.
Outcome OutboxFailure(std::string_view action, const Status& status) {
    if (status.code() == StatusCode::kNotSupported) {
        return Fail(
            Status::NotSupported(fmt::format("{} failed: this store has no outbox ({})", action, status.message())),
            "use the service's database (sqlite:, postgresql:, mysql:), where units of work write the outbox");
    }
    return Fail(status.WithContext(fmt::format("{} failed", action)));
}

// A failed broker call on one consumer group, told in the terms of the CLI.
Outcome GroupFailure(std::string_view action, std::string_view destination, std::string_view group,
                     const Status& status) {
    std::string what = fmt::format("{} of {}/{} failed", action, destination, group);
    switch (status.code()) {
        case StatusCode::kNotFound:
            return Fail(Status::NotFound(fmt::format("{}: {}", what, status.message())),
                        "check DESTINATION and GROUP (a consumer declares its group when it starts) and --broker");
        case StatusCode::kInvalidArgument:
            return Fail(Status::InvalidArgument(fmt::format("{}: {}", what, status.message())),
                        "names are 1-200 bytes of [A-Za-z0-9._-]; ids are those 'keel dlq list' shows");
        default: return Fail(status.WithContext(what));
    }
}

Outcome RelayOnceFailure(const Status& status) {
    if (status.code() == StatusCode::kFailedPrecondition) {
        return Fail(Status::FailedPrecondition(fmt::format("relay --once did not run: {}", status.message())),
                    "a relay is already running on this store and publishes the outbox; stop it first, or retry "
                    "once its lease has expired");
    }
    if (status.code() == StatusCode::kNotSupported) return OutboxFailure("relay --once", status);
    return Fail(status.WithContext("relay --once failed"),
                "the rows before the failed one were published and marked; the next round publishes the rest, in "
                "order (check the broker, then run it again)");
}

}  // namespace

Outcome Fail(Status status, std::string hint) {
    return {std::move(status), std::move(hint)};
}

Result<ExpectedVersion> ParseExpectedVersion(std::string_view flag, std::string_view text) {
    if (text == "any") return ExpectedVersion::Any();
    if (text == "no_stream") return ExpectedVersion::NoStream();
    if (text == "exists" || text == "stream_exists") return ExpectedVersion::StreamExists();
    int64_t version = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), version);
    if (ec != std::errc() || end != text.data() + text.size() || version < -1) {
        return Status::InvalidArgument(
            fmt::format("{} '{}' is not any, no_stream, exists or a version number (>= -1)", flag, text));
    }
    return ExpectedVersion::Exact(version);
}

Result<std::string> LoadJsonArgument(std::string_view flag, std::string_view value, bool require_object) {
    KEEL_ASSIGN_OR_RETURN(std::string text, ReadArgumentText(flag, value));
    try {
        nlohmann::json parsed = nlohmann::json::parse(text);
        if (require_object && !parsed.is_object()) {
            return Status::InvalidArgument(fmt::format("{} must be a JSON object, got {}", flag, parsed.type_name()));
        }
    } catch (const nlohmann::json::exception& e) {
        return Status::InvalidArgument(fmt::format("{} is not valid JSON: {}", flag, JsonErrorText(e)));
    }
    return text;
}

Outcome RunAppend(const StoreOpener& open, const AppendArgs& args, const OutputOptions& out) {
    auto expected = ParseExpectedVersion("--expected", args.expected);
    if (!expected.ok()) return Fail(expected.status(), std::string(kExpectedHint));
    EventData event;
    if (Outcome built = BuildEvent(args, event); !built.ok()) return built;

    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    auto result = store->Append(args.stream, *expected, {event});
    if (!result.ok()) {
        return StreamFailure(fmt::format("append to {}", args.stream), args.stream, result.status(), *expected);
    }
    PrintAppendResult(out, args.stream, *result);
    return Outcome::Ok();
}

Outcome RunStreams(const StoreOpener& open, const StreamsArgs& args, const OutputOptions& out) {
    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    auto streams = store->ListStreams(args.after, args.limit);
    if (!streams.ok()) return Fail(streams.status().WithContext("listing streams failed"));
    PrintStreams(out, *streams);
    return Outcome::Ok();
}

Outcome RunRead(const StoreOpener& open, const ReadArgs& args, const OutputOptions& out) {
    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    auto printer = EventPrinter::Make(out, EventPrinter::Mode::kBuffered);
    ReadStreamOptions options;
    options.direction = args.backward ? ReadDirection::kBackward : ReadDirection::kForward;
    options.from_version = args.from.value_or(args.backward ? -1 : 0);
    size_t remaining = args.limit;
    while (true) {
        size_t page = remaining == 0 ? kPageSize : std::min(kPageSize, remaining);
        options.limit = page;
        auto events = store->ReadStream(args.stream, options);
        if (!events.ok()) return StreamFailure(fmt::format("read of {}", args.stream), args.stream, events.status());
        for (const auto& event : *events) printer->Add(event);
        if (events->size() < page) break;
        if (args.limit != 0 && (remaining -= events->size()) == 0) break;
        int64_t last = events->back().stream_version;
        options.from_version = args.backward ? last - 1 : last + 1;
        if (options.from_version < 0) break;
    }
    printer->Finish();
    return Outcome::Ok();
}

Outcome RunAll(const StoreOpener& open, const AllArgs& args, const OutputOptions& out) {
    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    auto printer = EventPrinter::Make(out, EventPrinter::Mode::kBuffered);
    ReadAllOptions options;
    options.from_position = args.from;
    options.categories = args.categories;
    options.types = args.types;
    size_t remaining = args.limit;
    while (true) {
        size_t page = remaining == 0 ? kPageSize : std::min(kPageSize, remaining);
        options.limit = page;
        auto slice = store->ReadAll(options);
        if (!slice.ok()) return Fail(slice.status().WithContext("read of $all failed"));
        for (const auto& event : slice->events) printer->Add(event);
        if (slice->end_of_all) break;
        if (args.limit != 0 && (remaining -= slice->events.size()) == 0) break;
        if (slice->next_position <= options.from_position) break;  // no progress: never loop forever
        options.from_position = slice->next_position;
    }
    printer->Finish();
    return Outcome::Ok();
}

Outcome RunTail(const StoreOpener& open, const TailArgs& args, const OutputOptions& out,
                const std::atomic<bool>& stop) {
    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    auto printer = EventPrinter::Make(out, EventPrinter::Mode::kStreaming);

    std::mutex mutex;
    std::condition_variable wake;
    size_t received = 0;  // guarded by mutex

    SubscriptionOptions options;
    options.categories = args.categories;
    options.types = args.types;
    if (args.from) {
        options.start = *args.from;
    } else {
        options.start_at_head = true;
    }
    // The table header appears once the subscription is live, so a reader of stdout knows it will see new events.
    options.on_caught_up = [&printer](int64_t) { printer->Begin(); };
    auto handler = [&](const RecordedEvent& event) -> Status {
        {
            std::lock_guard lock(mutex);
            if (args.count != 0 && received >= args.count) return Status::Ok();
        }
        printer->Add(event);
        std::lock_guard lock(mutex);
        if (++received == args.count) wake.notify_all();
        return Status::Ok();
    };
    auto subscribed = store->Subscribe(std::move(options), handler);
    if (!subscribed.ok()) return Fail(subscribed.status().WithContext("tail failed to subscribe"));
    std::unique_ptr<Subscription> subscription = std::move(*subscribed);

    // Runs until Ctrl-C, --count events, or the subscription stopping by itself (a store failure).
    {
        std::unique_lock lock(mutex);
        while (!stop.load() && !subscription->stopped() && (args.count == 0 || received < args.count)) {
            wake.wait_for(lock, kTailTick);
        }
    }
    Status stopped = subscription->Stop();
    printer->Finish();

    std::lock_guard lock(mutex);
    if (args.count != 0 && received >= args.count) return Outcome::Ok();
    if (!stopped.ok() && stopped.code() != StatusCode::kCancelled) return Fail(stopped.WithContext("tail stopped"));
    return Outcome::Ok();
}

Outcome RunStats(const StoreOpener& open, const OutputOptions& out) {
    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    auto stats = store->Stats();
    if (!stats.ok()) return Fail(stats.status().WithContext("reading the store's statistics failed"));
    PrintStats(out, *stats);
    return Outcome::Ok();
}

Outcome RunMetadata(const StoreOpener& open, const MetadataArgs& args, const OutputOptions& out) {
    std::optional<std::string> custom;
    if (args.custom) {
        auto text = LoadJsonArgument("--custom", *args.custom, /*require_object=*/true);
        if (!text.ok()) return Fail(text.status(), std::string(kJsonHint));
        custom = std::move(*text);
    }
    constexpr int64_t kMaxAgeSeconds = std::numeric_limits<int64_t>::max() / 1'000'000;
    if (args.max_age_seconds && (*args.max_age_seconds < 0 || *args.max_age_seconds > kMaxAgeSeconds)) {
        return Fail(Status::InvalidArgument(fmt::format("--max-age {} is out of range", *args.max_age_seconds)),
                    fmt::format("pass a number of seconds from 0 to {}", kMaxAgeSeconds));
    }

    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    std::string action = fmt::format("metadata of {}", args.stream);
    auto info = store->GetStream(args.stream);
    if (!args.changes()) {
        if (!info.ok()) return StreamFailure(action, args.stream, info.status());
        PrintStreamInfo(out, *info);
        return Outcome::Ok();
    }
    if (!info.ok() && info.status().code() != StatusCode::kNotFound) {
        return StreamFailure(action, args.stream, info.status());
    }
    StreamMetadata metadata = info.ok() && !args.clear ? info->metadata : StreamMetadata{};
    if (args.max_count) metadata.max_count = *args.max_count;
    if (args.max_age_seconds) metadata.max_age = std::chrono::seconds(*args.max_age_seconds);
    if (args.truncate_before) metadata.truncate_before = *args.truncate_before;
    if (custom) metadata.custom = std::move(*custom);
    Status set = store->SetStreamMetadata(args.stream, metadata);
    if (!set.ok()) return StreamFailure(fmt::format("setting the {}", action), args.stream, set);

    auto updated = store->GetStream(args.stream);
    if (!updated.ok()) return StreamFailure(action, args.stream, updated.status());
    PrintStreamInfo(out, *updated);
    return Outcome::Ok();
}

Outcome RunDelete(const StoreOpener& open, const DeleteArgs& args, const OutputOptions& out) {
    auto expected = ParseExpectedVersion("--expected", args.expected);
    if (!expected.ok()) return Fail(expected.status(), std::string(kExpectedHint));

    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    DeleteMode mode = args.hard ? DeleteMode::kHard : DeleteMode::kSoft;
    Status deleted = store->DeleteStream(args.stream, *expected, mode);
    if (!deleted.ok()) return StreamFailure(fmt::format("delete of {}", args.stream), args.stream, deleted, *expected);
    PrintDeleted(out, args.stream, mode);
    return Outcome::Ok();
}

Outcome RunRelay(const StoreOpener& open_store, const BrokerOpener& open_broker, const RelayArgs& args,
                 const OutputOptions& out, const std::atomic<bool>& stop) {
    if (args.batch == 0 || args.window == 0) {
        return Fail(
            Status::InvalidArgument(fmt::format("--{} must be at least 1", args.batch == 0 ? "batch" : "window")),
            "pass a whole number >= 1 (defaults: --batch 500, --window 100)");
    }
    RelayOptions options;
    options.batch = args.batch;
    options.window = args.window;

    std::unique_ptr<EventStore> store;
    if (Outcome opened = open_store(store); !opened.ok()) return opened;
    std::unique_ptr<Broker> broker;
    if (Outcome opened = open_broker(broker); !opened.ok()) return opened;

    if (args.once) {
        auto published = RelayOnce(*store, *broker, options);
        if (!published.ok()) return RelayOnceFailure(published.status());
        auto stats = GetOutboxStats(*store);
        if (!stats.ok()) return OutboxFailure("reading the outbox", stats.status());
        PrintRelayOnce(out, *published, stats->pending);
        return Outcome::Ok();
    }

    auto started = Relay::Start(*store, *broker, options);
    if (!started.ok()) {
        if (started.status().code() == StatusCode::kNotSupported) return OutboxFailure("relay", started.status());
        return Fail(started.status().WithContext("starting the relay failed"));
    }
    std::unique_ptr<Relay> relay = std::move(*started);
    PrintRelayStarted(out, options);

    // The relay runs on its own thread; this loop reports what it did, as seen through its counters.
    RelayStats last;
    bool failing = false;       // the latest rounds failed (and no later round succeeded)
    bool announced = false;     // a lease state was printed
    bool leader_shown = false;  // the lease state printed last
    auto report = [&](const RelayStats& now) {
        if (now.published > last.published) PrintRelayPublished(out, now.published - last.published, now.published);
        // Standby shows as a round without leadership and without a failure count (RelayStats counts failures of the
        // leader only).
        if (now.rounds > last.rounds && now.failures == last.failures) {
            if (!announced ? !now.leader : now.leader != leader_shown) {
                PrintRelayLease(out, now.leader);
                announced = true;
                leader_shown = now.leader;
            }
        }
        if (now.failures > last.failures) {
            failing = true;
            std::fflush(out.out);
            fmt::print(stderr, "keel: relay round failed: {}; retrying with backoff (nothing is lost)\n",
                       now.last_error);
        } else if (now.rounds > last.rounds) {
            failing = false;
        }
        last = now;
    };
    while (!stop.load()) {
        std::this_thread::sleep_for(kRelayTick);
        report(relay->stats());
    }
    relay->Stop();
    RelayStats final_stats = relay->stats();
    report(final_stats);
    PrintRelayStopped(out, final_stats);
    if (failing) {
        return Fail(Status::Unavailable(fmt::format("the relay stopped while failing: {}", final_stats.last_error)),
                    "check the broker and the store; unpublished rows stay in the outbox for the next relay");
    }
    return Outcome::Ok();
}

Outcome RunOutboxStats(const StoreOpener& open, const OutputOptions& out) {
    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    auto stats = GetOutboxStats(*store);
    if (!stats.ok()) return OutboxFailure("reading the outbox", stats.status());
    PrintOutboxStats(out, *stats, NowMicros());
    return Outcome::Ok();
}

Outcome RunOutboxRepublish(const StoreOpener& open, const RepublishArgs& args, const OutputOptions& out) {
    if (args.from < 1) {
        return Fail(Status::InvalidArgument(fmt::format("--from {} is not an outbox position", args.from)),
                    "outbox positions start at 1; 'keel outbox' shows the last one");
    }
    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    auto marked = RepublishOutbox(*store, args.from);
    if (!marked.ok()) return OutboxFailure(fmt::format("republish from {}", args.from), marked.status());
    PrintRepublished(out, args.from, *marked);
    return Outcome::Ok();
}

Outcome RunDlqList(const BrokerOpener& open, const DlqListArgs& args, const OutputOptions& out) {
    std::unique_ptr<Broker> broker;
    if (Outcome opened = open(broker); !opened.ok()) return opened;
    auto letters = broker->ListDeadLetters(args.destination, args.group, args.limit);
    if (!letters.ok()) return GroupFailure("listing the dead letters", args.destination, args.group, letters.status());
    PrintDeadLetters(out, args.destination, args.group, *letters);
    return Outcome::Ok();
}

Outcome RunDlqReplay(const BrokerOpener& open, const DlqReplayArgs& args, const OutputOptions& out) {
    for (const auto& id : args.ids) {
        if (id.empty()) {
            return Fail(Status::InvalidArgument("--id is empty"), "pass ids that 'keel dlq list' shows, or no --id");
        }
    }
    std::unique_ptr<Broker> broker;
    if (Outcome opened = open(broker); !opened.ok()) return opened;
    auto replayed = broker->ReplayDeadLetters(args.destination, args.group, args.ids);
    if (!replayed.ok()) return GroupFailure("replaying dead letters", args.destination, args.group, replayed.status());
    PrintReplayed(out, args.destination, args.group, *replayed);
    if (!args.ids.empty() && *replayed < args.ids.size()) {
        size_t missing = args.ids.size() - *replayed;
        return Fail(
            Status::NotFound(fmt::format("{} of the {} ids given {} not a dead letter of {}/{}", missing,
                                         args.ids.size(), missing == 1 ? "is" : "are", args.destination, args.group)),
            "they may have been replayed already; 'keel dlq list' shows the dead letters left");
    }
    return Outcome::Ok();
}

Outcome RunProjectionRebuild(const StoreOpener& open, const ProjectionRebuildArgs& args, const OutputOptions& out) {
    if (args.name.empty()) {
        return Fail(Status::InvalidArgument("the projection name is empty"),
                    "pass the projection's name ('keel projection list' lists them)");
    }
    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    std::string checkpoint = ProjectionCheckpointName(args.name);
    std::optional<int64_t> previous;
    auto loaded = store->LoadCheckpoint(checkpoint);
    if (loaded.ok()) {
        previous = *loaded;
    } else if (loaded.status().code() == StatusCode::kInvalidArgument) {
        return Fail(
            Status::InvalidArgument(fmt::format("the projection name is not valid: {}", loaded.status().message())),
            "pass the name the projection was started with: 1-200 bytes, no control characters");
    } else if (loaded.status().code() != StatusCode::kNotFound) {
        return Fail(loaded.status().WithContext(fmt::format("reading checkpoint {} failed", checkpoint)));
    } else if (!args.force) {
        return Fail(
            Status::NotFound(fmt::format("projection {} has no checkpoint ({}) in this store", args.name, checkpoint)),
            "check the name ('keel projection list'), or pass --force to request the rebuild of a "
            "projection that has not run yet");
    }
    Status requested = RequestProjectionRebuild(*store, args.name);
    if (!requested.ok()) {
        return Fail(requested.WithContext(fmt::format("rebuild of projection {} failed", args.name)));
    }
    PrintRebuildRequested(out, args.name, previous);
    return Outcome::Ok();
}

Outcome RunProjectionList(const StoreOpener& open, const OutputOptions& out) {
    std::unique_ptr<EventStore> store;
    if (Outcome opened = open(store); !opened.ok()) return opened;
    auto stats = store->Stats();
    if (!stats.ok()) return Fail(stats.status().WithContext("reading the store's checkpoints failed"));
    PrintProjections(out, *stats);
    return Outcome::Ok();
}

}  // namespace keel::cli
