#pragma once
// The keel CLI's commands. Each takes a way to open the store (and, for the outbox relay and the dead-letter queues,
// the broker), its parsed arguments and the output options; it checks its arguments first, then opens the store (so a
// typo never creates or touches a file), works through the public keel API (event_store.hpp, outbox.hpp, broker.hpp,
// projection.hpp), prints through output.hpp and returns an Outcome. main.cpp does the wiring: flags, environment,
// which store and broker, signals and exit codes.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "keel/broker.hpp"
#include "keel/event_store.hpp"
#include "keel/status.hpp"

#include "output.hpp"

namespace keel::cli {

// What a command ends with: OK, or a failure whose status code picks the exit code (exit_codes.hpp), whose message
// says what went wrong, and whose hint says what to do (empty: the default hint of the code).
struct Outcome {
    Status status;
    std::string hint;

    bool ok() const noexcept { return status.ok(); }
    static Outcome Ok() { return {}; }
};

Outcome Fail(Status status, std::string hint = {});

// Opens the store into `store`, or returns the failure (with advice) when it cannot.
using StoreOpener = std::function<Outcome(std::unique_ptr<EventStore>& store)>;

// Opens the broker into `broker`, or returns the failure (with advice) when it cannot.
using BrokerOpener = std::function<Outcome(std::unique_ptr<Broker>& broker)>;

struct AppendArgs {
    std::string stream;
    std::string type;
    std::string data;      // JSON text, "@FILE" or "-" (stdin)
    std::string metadata;  // JSON object text, "@FILE" or "-"; empty: none
    std::string id;        // UUID; empty: generated
    std::string expected = "any";
};

struct StreamsArgs {
    std::string after;
    size_t limit = 0;  // 0: all
};

struct ReadArgs {
    std::string stream;
    bool backward = false;
    std::optional<int64_t> from;  // default: the first version (forward) or the last (backward)
    size_t limit = 0;             // 0: all
};

struct AllArgs {
    int64_t from = 1;
    size_t limit = 0;  // 0: to the end
    std::vector<std::string> categories;
    std::vector<std::string> types;
};

struct TailArgs {
    std::optional<int64_t> from;  // default: only events appended after the start
    std::vector<std::string> categories;
    std::vector<std::string> types;
    size_t count = 0;  // 0: until stopped
};

struct MetadataArgs {
    std::string stream;
    std::optional<int64_t> max_count;
    std::optional<int64_t> max_age_seconds;
    std::optional<int64_t> truncate_before;
    std::optional<std::string> custom;  // JSON object text, "@FILE" or "-"
    bool clear = false;                 // start from empty metadata instead of the current one

    // True when the command changes the metadata rather than showing it.
    bool changes() const noexcept {
        return max_count.has_value() || max_age_seconds.has_value() || truncate_before.has_value() ||
               custom.has_value() || clear;
    }
};

struct DeleteArgs {
    std::string stream;
    bool hard = false;
    std::string expected = "any";
};

struct RelayArgs {
    bool once = false;    // one round, then exit
    size_t batch = 500;   // rows claimed and published per round (RelayOptions::batch)
    size_t window = 100;  // unconfirmed publishes in flight (RelayOptions::window)
};

struct RepublishArgs {
    int64_t from = 0;  // first outbox position marked for re-publishing (>= 1)
};

struct DlqListArgs {
    std::string destination;
    std::string group;
    size_t limit = 0;  // 0: all
};

struct DlqReplayArgs {
    std::string destination;
    std::string group;
    std::vector<std::string> ids;  // empty: every dead letter of the group
};

struct ProjectionRebuildArgs {
    std::string name;
    bool force = false;  // request the rebuild even when the projection never stored a checkpoint
};

// "any", "no_stream", "exists" (or "stream_exists"), or a version number (-1 means no_stream).
// kInvalidArgument naming `flag` otherwise.
Result<ExpectedVersion> ParseExpectedVersion(std::string_view flag, std::string_view text);

// The text of a JSON argument: the value itself, the contents of FILE for "@FILE", or all of stdin for "-".
// kInvalidArgument naming `flag` when the file cannot be read or the text is not JSON (or, with `require_object`,
// not a JSON object).
Result<std::string> LoadJsonArgument(std::string_view flag, std::string_view value, bool require_object);

Outcome RunAppend(const StoreOpener& open, const AppendArgs& args, const OutputOptions& out);
Outcome RunStreams(const StoreOpener& open, const StreamsArgs& args, const OutputOptions& out);
Outcome RunRead(const StoreOpener& open, const ReadArgs& args, const OutputOptions& out);
Outcome RunAll(const StoreOpener& open, const AllArgs& args, const OutputOptions& out);
// Prints events as they arrive until `stop` becomes true (main sets it on SIGINT/SIGTERM), `args.count` events were
// printed, or the subscription fails.
Outcome RunTail(const StoreOpener& open, const TailArgs& args, const OutputOptions& out, const std::atomic<bool>& stop);
Outcome RunStats(const StoreOpener& open, const OutputOptions& out);
Outcome RunMetadata(const StoreOpener& open, const MetadataArgs& args, const OutputOptions& out);
Outcome RunDelete(const StoreOpener& open, const DeleteArgs& args, const OutputOptions& out);

// `keel relay`: with `args.once`, one relay round (RelayOnce); else a Relay until `stop` becomes true (main sets it on
// SIGINT/SIGTERM), printing a line whenever messages were published and a summary at the end.
Outcome RunRelay(const StoreOpener& open_store, const BrokerOpener& open_broker, const RelayArgs& args,
                 const OutputOptions& out, const std::atomic<bool>& stop);
// `keel outbox`: pending, published kept, oldest pending, last position.
Outcome RunOutboxStats(const StoreOpener& open, const OutputOptions& out);
// `keel outbox republish --from N`.
Outcome RunOutboxRepublish(const StoreOpener& open, const RepublishArgs& args, const OutputOptions& out);
// `keel dlq list` and `keel dlq replay`: need a broker only, no store.
Outcome RunDlqList(const BrokerOpener& open, const DlqListArgs& args, const OutputOptions& out);
Outcome RunDlqReplay(const BrokerOpener& open, const DlqReplayArgs& args, const OutputOptions& out);
// `keel projection rebuild NAME` and `keel projection list`.
Outcome RunProjectionRebuild(const StoreOpener& open, const ProjectionRebuildArgs& args, const OutputOptions& out);
Outcome RunProjectionList(const StoreOpener& open, const OutputOptions& out);

}  // namespace keel::cli
