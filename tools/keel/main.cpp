// keel: the command-line tool for keel event stores, their outbox, brokers' dead-letter queues and projections. This
// file is the wiring: it alone reads flags and the environment (KEEL_STORE, KEEL_BROKER, COLUMNS), opens the store and
// the broker, installs signal handlers and turns outcomes into one-line errors and exit codes. The commands live in
// commands.cpp, the formatting in output.cpp.

#include <atomic>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "keel/broker.hpp"
#include "keel/event_store.hpp"

#include "commands.hpp"
#include "exit_codes.hpp"
#include "output.hpp"

namespace keel::cli {
namespace {

constexpr std::string_view kStoreEnv = "KEEL_STORE";
constexpr std::string_view kBrokerEnv = "KEEL_BROKER";
constexpr size_t kDefaultWidth = 120;

std::atomic<bool> g_stop_requested{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the signal handler needs a lock-free flag");

extern "C" void OnStopSignal(int /*signal*/) {
    g_stop_requested.store(true);
}

// SIGINT and SIGTERM ask `tail` and `relay` to stop cleanly instead of killing the process.
void InstallStopHandlers() {
    struct sigaction action {};
    action.sa_handler = OnStopSignal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
}

// The terminal's width, else $COLUMNS, else 120.
size_t OutputWidth() {
    winsize size{};
    if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
    if (const char* columns = std::getenv("COLUMNS")) {
        std::string_view text(columns);
        size_t width = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), width);
        if (ec == std::errc() && end == text.data() + text.size() && width > 0) return width;
    }
    return kDefaultWidth;
}

// Errors are one line: newlines and tabs in a message become spaces.
std::string OneLine(std::string_view text) {
    std::string line(text);
    for (char& c : line) {
        if (c == '\n' || c == '\r' || c == '\t') c = ' ';
    }
    return line;
}

int Report(const Outcome& outcome) {
    if (outcome.ok()) return kExitOk;
    StatusCode code = outcome.status.code();
    std::string_view hint = outcome.hint.empty() ? DefaultHint(code) : std::string_view(outcome.hint);
    std::fflush(stdout);
    fmt::print(stderr, "keel: {}; {}\n", OneLine(outcome.status.message()), OneLine(hint));
    return ExitCodeFor(code);
}

int UsageError(std::string_view what, std::string_view hint) {
    return Report(Fail(Status::InvalidArgument(std::string(what)), std::string(hint)));
}

Outcome OpenFailure(const std::string& uri, const Status& status) {
    std::string what = fmt::format("cannot open store {}: {}", uri, status.message());
    switch (status.code()) {
        case StatusCode::kNotFound:
            return Fail(Status::NotFound(what), "check --store or KEEL_STORE; 'keel append' creates a missing store");
        case StatusCode::kInvalidArgument:
            return Fail(Status::InvalidArgument(what),
                        fmt::format("pass a URI such as sqlite:///var/lib/app.db (this build knows: {})",
                                    fmt::join(StoreSchemes(), ", ")));
        case StatusCode::kUnavailable:
            return Fail(Status::Unavailable(what),
                        "check that the directory exists and that keel may read and write the file, then retry");
        default: return Fail(Status(status.code(), what));
    }
}

StoreOpener MakeOpener(std::string uri, bool create_if_missing) {
    return [uri = std::move(uri), create_if_missing](std::unique_ptr<EventStore>& store) -> Outcome {
        StoreOptions options;
        options.create_if_missing = create_if_missing;
        auto opened = OpenStore(uri, options);
        if (!opened.ok()) return OpenFailure(uri, opened.status());
        store = std::move(*opened);
        return Outcome::Ok();
    };
}

Outcome BrokerOpenFailure(const std::string& uri, const Status& status) {
    std::string what = fmt::format("cannot open broker {}: {}", uri, status.message());
    switch (status.code()) {
        case StatusCode::kNotFound:
            return Fail(Status::NotFound(what),
                        "check --broker or KEEL_BROKER; the relay and the consumers create a missing local: broker");
        case StatusCode::kInvalidArgument:
            return Fail(
                Status::InvalidArgument(what),
                "pass a URI such as local:///var/lib/app-broker.db or rabbitmq://user:password@host:5672/vhost");
        case StatusCode::kUnavailable:
            return Fail(Status::Unavailable(what),
                        "check that the broker is reachable (rabbitmq:) or that keel may create and write the file "
                        "(local:), then retry");
        case StatusCode::kCorruption:
            return Fail(Status::Corruption(what), "the file is not a keel broker database; check --broker");
        default: return Fail(Status(status.code(), what));
    }
}

// The file of a `local:` broker URI (local:///abs/path.db, local://relative.db), else nullopt.
std::optional<std::string> LocalBrokerFile(std::string_view uri) {
    constexpr std::string_view kScheme = "local:";
    if (!uri.starts_with(kScheme)) return std::nullopt;
    std::string_view rest = uri.substr(kScheme.size());
    if (rest.starts_with("//")) rest.remove_prefix(2);
    rest = rest.substr(0, rest.find('?'));
    if (rest.empty()) return std::nullopt;  // OpenBroker explains what is wrong with it
    return std::string(rest);
}

// `must_exist`: a command that only reads or edits a broker's queues refuses a missing local: file instead of creating
// an empty broker at a mistyped path (BrokerOptions has no create_if_missing, so the CLI looks itself).
BrokerOpener MakeBrokerOpener(std::string uri, bool must_exist) {
    return [uri = std::move(uri), must_exist](std::unique_ptr<Broker>& broker) -> Outcome {
        if (must_exist) {
            if (std::optional<std::string> file = LocalBrokerFile(uri)) {
                std::error_code error;
                if (!std::filesystem::exists(*file, error) && !error) {
                    return BrokerOpenFailure(uri, Status::NotFound(fmt::format("{} does not exist", *file)));
                }
            }
        }
        auto opened = OpenBroker(uri);
        if (!opened.ok()) return BrokerOpenFailure(uri, opened.status());
        broker = std::move(*opened);
        return Outcome::Ok();
    };
}

// What a command may open: the store (from --store) and the broker (from --broker).
struct Openers {
    StoreOpener store;
    BrokerOpener broker;
};

// One subcommand: its CLI11 node, what it needs, whether it may create a missing store, and what it runs.
struct Command {
    CLI::App* app = nullptr;
    std::function<bool()> creates_store;  // empty: never creates a missing store
    std::function<Outcome(const Openers&, const OutputOptions&)> run;
    bool needs_store = true;
    bool needs_broker = false;
    bool broker_must_exist = false;  // refuse a missing local: broker file instead of creating it
};

// Every parsed argument, owned by main for the lifetime of the CLI11 app that writes into it.
struct Arguments {
    std::string store;
    std::string broker;
    bool json = false;
    AppendArgs append;
    StreamsArgs streams;
    ReadArgs read;
    AllArgs all;
    TailArgs tail;
    MetadataArgs metadata;
    DeleteArgs delete_stream;
    RelayArgs relay;
    RepublishArgs republish;
    DlqListArgs dlq_list;
    DlqReplayArgs dlq_replay;
    ProjectionRebuildArgs projection_rebuild;
};

// A whole number >= 0 in decimal (CLI11 would read "010" as octal and its range check prints a 300-digit bound).
const CLI::Validator kCount(
    [](std::string& text) -> std::string {
        bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
        if (!digits) return fmt::format("expected a whole number >= 0, got '{}'", text);
        text.erase(0, std::min(text.find_first_not_of('0'), text.size() - 1));
        return {};
    },
    "COUNT", "count");

// `--name N` stored in an optional (CLI11 2.1 has no std::optional support).
CLI::Option* AddOptionalInt(CLI::App* app, const std::string& name, std::optional<int64_t>& target,
                            const std::string& description) {
    return app->add_option_function<int64_t>(
        name, [&target](const int64_t& value) { target = value; }, description);
}

Command AddAppend(CLI::App& app, AppendArgs& args) {
    CLI::App* sub = app.add_subcommand("append", "Append one event to a stream");
    sub->add_option("stream", args.stream, "Stream id, e.g. User-123")->required();
    sub->add_option("--type", args.type, "Event type, e.g. UserCreated")->required();
    sub->add_option("--data", args.data, "Payload: JSON text, @FILE or - (stdin)")->required();
    sub->add_option("--metadata", args.metadata, "JSON object: JSON text, @FILE or - (stdin)");
    sub->add_option("--id", args.id, "Event id (UUID); generated when absent");
    sub->add_option("--expected", args.expected, "any | no_stream | exists | VERSION")->capture_default_str();
    return {sub, [] { return true; },
            [&args](const Openers& open, const OutputOptions& out) { return RunAppend(open.store, args, out); }};
}

Command AddStreams(CLI::App& app, StreamsArgs& args) {
    CLI::App* sub = app.add_subcommand("streams", "List streams: stream, version, state, updated");
    sub->add_option("--after", args.after, "Start after this stream id");
    sub->add_option("--limit", args.limit, "Most streams listed (0: all)")->transform(kCount);
    return {
        sub, {}, [&args](const Openers& open, const OutputOptions& out) { return RunStreams(open.store, args, out); }};
}

Command AddRead(CLI::App& app, ReadArgs& args) {
    CLI::App* sub = app.add_subcommand("read", "Read one stream's events");
    sub->add_option("stream", args.stream, "Stream id")->required();
    sub->add_flag("--backward", args.backward, "Newest first");
    AddOptionalInt(sub, "--from", args.from, "First version (default: the first, or the last with --backward)");
    sub->add_option("--limit", args.limit, "Most events (0: all)")->transform(kCount);
    return {sub, {}, [&args](const Openers& open, const OutputOptions& out) { return RunRead(open.store, args, out); }};
}

Command AddAll(CLI::App& app, AllArgs& args) {
    CLI::App* sub = app.add_subcommand("all", "Read $all, every stream in global order");
    sub->add_option("--from", args.from, "First global position")->capture_default_str();
    sub->add_option("--limit", args.limit, "Most events (0: to the end)")->transform(kCount);
    sub->add_option("--category", args.categories, "Only this category (repeatable)")->allow_extra_args(false);
    sub->add_option("--type", args.types, "Only this event type (repeatable)")->allow_extra_args(false);
    return {sub, {}, [&args](const Openers& open, const OutputOptions& out) { return RunAll(open.store, args, out); }};
}

Command AddTail(CLI::App& app, TailArgs& args) {
    CLI::App* sub = app.add_subcommand("tail", "Print events of $all as they are appended, until Ctrl-C");
    AddOptionalInt(sub, "--from", args.from, "First global position (default: only new events)");
    sub->add_option("--category", args.categories, "Only this category (repeatable)")->allow_extra_args(false);
    sub->add_option("--type", args.types, "Only this event type (repeatable)")->allow_extra_args(false);
    sub->add_option("--count", args.count, "Exit after this many events (0: never)")->transform(kCount);
    return {sub, {}, [&args](const Openers& open, const OutputOptions& out) {
                InstallStopHandlers();
                return RunTail(open.store, args, out, g_stop_requested);
            }};
}

Command AddStats(CLI::App& app) {
    CLI::App* sub = app.add_subcommand("stats", "Backend, location, counts, head, size and checkpoints");
    return {sub, {}, [](const Openers& open, const OutputOptions& out) { return RunStats(open.store, out); }};
}

Command AddMetadata(CLI::App& app, MetadataArgs& args) {
    CLI::App* sub = app.add_subcommand("metadata", "Show a stream's metadata, or change it with the options");
    sub->add_option("stream", args.stream, "Stream id")->required();
    AddOptionalInt(sub, "--max-count", args.max_count, "Keep only the last N events visible");
    AddOptionalInt(sub, "--max-age", args.max_age_seconds, "Hide events older than this many seconds");
    AddOptionalInt(sub, "--truncate-before", args.truncate_before, "Hide versions below N");
    sub->add_option_function<std::string>(
        "--custom", [&args](const std::string& value) { args.custom = value; },
        "Application metadata: a JSON object, @FILE or - (stdin)");
    sub->add_flag("--clear", args.clear, "Drop the current settings before applying the ones given");
    return {sub, [&args] { return args.changes(); },
            [&args](const Openers& open, const OutputOptions& out) { return RunMetadata(open.store, args, out); }};
}

Command AddDelete(CLI::App& app, DeleteArgs& args) {
    CLI::App* sub = app.add_subcommand("delete", "Soft-delete a stream (re-opened by the next append), or --hard");
    sub->add_option("stream", args.stream, "Stream id")->required();
    sub->add_flag("--hard", args.hard, "Tombstone the stream forever");
    sub->add_option("--expected", args.expected, "any | no_stream | exists | VERSION")->capture_default_str();
    return {
        sub, {}, [&args](const Openers& open, const OutputOptions& out) { return RunDelete(open.store, args, out); }};
}

Command AddRelay(CLI::App& app, RelayArgs& args) {
    CLI::App* sub =
        app.add_subcommand("relay", "Publish the store's outbox to --broker until Ctrl-C (--once: one round)");
    sub->add_flag("--once", args.once, "Run one round (claim, publish, mark), print how many were published, exit");
    sub->add_option("--batch", args.batch, "Outbox rows claimed and published per round")
        ->transform(kCount)
        ->capture_default_str();
    sub->add_option("--window", args.window, "Unconfirmed publishes in flight")
        ->transform(kCount)
        ->capture_default_str();
    Command command{sub, {}, [&args](const Openers& open, const OutputOptions& out) {
                        if (!args.once) InstallStopHandlers();  // --once is one short round: Ctrl-C ends it
                        return RunRelay(open.store, open.broker, args, out, g_stop_requested);
                    }};
    command.needs_broker = true;
    return command;
}

// `keel outbox` and `keel outbox republish`: the subcommand comes first, so it wins when both are parsed.
std::vector<Command> AddOutbox(CLI::App& app, RepublishArgs& args) {
    CLI::App* outbox =
        app.add_subcommand("outbox", "Outbox statistics: pending, published kept, oldest, last position");
    outbox->require_subcommand(0, 1);
    CLI::App* republish = outbox->add_subcommand(
        "republish", "Mark the outbox rows from a position unpublished: the relay sends them again");
    republish->add_option("--from", args.from, "First outbox position to publish again (>= 1)")->required();
    return {
        {republish,
         {},
         [&args](const Openers& open, const OutputOptions& out) { return RunOutboxRepublish(open.store, args, out); }},
        {outbox, {}, [](const Openers& open, const OutputOptions& out) { return RunOutboxStats(open.store, out); }},
    };
}

std::vector<Command> AddDlq(CLI::App& app, DlqListArgs& list_args, DlqReplayArgs& replay_args) {
    CLI::App* dlq = app.add_subcommand("dlq", "A consumer group's dead-letter queue on --broker (no store needed)");
    dlq->require_subcommand(1);
    CLI::App* list = dlq->add_subcommand("list", "List dead letters: id, attempts, when, key, error, payload");
    list->add_option("destination", list_args.destination, "Destination, e.g. orders")->required();
    list->add_option("group", list_args.group, "Consumer group, e.g. billing")->required();
    list->add_option("--limit", list_args.limit, "Most dead letters, oldest first (0: all)")->transform(kCount);
    CLI::App* replay = dlq->add_subcommand("replay", "Put dead letters back into the group's queue (all, or --id)");
    replay->add_option("destination", replay_args.destination, "Destination, e.g. orders")->required();
    replay->add_option("group", replay_args.group, "Consumer group, e.g. billing")->required();
    replay->add_option("--id", replay_args.ids, "Only this dead letter (repeatable; ids from 'keel dlq list')")
        ->allow_extra_args(false);
    std::vector<Command> commands = {
        {list,
         {},
         [&list_args](const Openers& open, const OutputOptions& out) {
             return RunDlqList(open.broker, list_args, out);
         }},
        {replay,
         {},
         [&replay_args](const Openers& open, const OutputOptions& out) {
             return RunDlqReplay(open.broker, replay_args, out);
         }},
    };
    for (Command& command : commands) {
        command.needs_store = false;
        command.needs_broker = true;
        command.broker_must_exist = true;
    }
    return commands;
}

std::vector<Command> AddProjection(CLI::App& app, ProjectionRebuildArgs& args) {
    CLI::App* projection = app.add_subcommand("projection", "Projections: list them with their lag, or rebuild one");
    projection->require_subcommand(1);
    CLI::App* rebuild =
        projection->add_subcommand("rebuild", "Make projection NAME reset its read model and replay from the start");
    rebuild->add_option("name", args.name, "Projection name (its checkpoint is projection:NAME)")->required();
    rebuild->add_flag("--force", args.force, "Request it even if the projection has never run on this store");
    CLI::App* list = projection->add_subcommand("list", "List projections: position, lag behind the head, state");
    return {
        {rebuild,
         {},
         [&args](const Openers& open, const OutputOptions& out) {
             return RunProjectionRebuild(open.store, args, out);
         }},
        {list, {}, [](const Openers& open, const OutputOptions& out) { return RunProjectionList(open.store, out); }},
    };
}

// "keel dlq list": the command line's chosen subcommands, as far as they were recognised.
std::string ChosenCommand(CLI::App& app) {
    std::string path = "keel";
    CLI::App* node = &app;
    while (true) {
        std::vector<CLI::App*> chosen = node->get_subcommands();
        if (chosen.empty()) return path;
        node = chosen.front();
        path += " " + node->get_name();
    }
}

constexpr std::string_view kFooter = R"(
The store is --store URI or $KEEL_STORE: sqlite:///abs/path.db, sqlite:relative.db or memory:.
The broker (relay, dlq) is --broker URI or $KEEL_BROKER: local:///abs/path.db or rabbitmq://user:pass@host/vhost.
Exit codes: 0 ok, 1 failure, 2 usage error, 3 expected-version conflict, 4 stream tombstoned, 5 not found.
See docs/cli.md for examples.)";

int Main(int argc, char** argv) {
    CLI::App app{"keel: inspect and edit keel event stores", "keel"};
    app.set_version_flag("--version", std::string(KEEL_VERSION));
    app.footer(std::string(kFooter));
    app.require_subcommand(1);
    app.fallthrough();

    Arguments args;
    app.add_option("--store", args.store, "Store URI, e.g. sqlite:///var/lib/app.db")->envname(std::string(kStoreEnv));
    app.add_option("--broker", args.broker, "Broker URI for relay and dlq, e.g. local:///var/lib/app-broker.db")
        ->envname(std::string(kBrokerEnv));
    app.add_flag("--json", args.json, "One JSON object per line instead of a table");
    std::vector<Command> commands = {
        AddAppend(app, args.append),     AddStreams(app, args.streams),
        AddRead(app, args.read),         AddAll(app, args.all),
        AddTail(app, args.tail),         AddStats(app),
        AddMetadata(app, args.metadata), AddDelete(app, args.delete_stream),
        AddRelay(app, args.relay),
    };
    for (Command& command : AddOutbox(app, args.republish)) commands.push_back(std::move(command));
    for (Command& command : AddDlq(app, args.dlq_list, args.dlq_replay)) commands.push_back(std::move(command));
    for (Command& command : AddProjection(app, args.projection_rebuild)) commands.push_back(std::move(command));

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::vector<CLI::App*> chosen = app.get_subcommands();
        std::vector<std::string> unknown = app.remaining();
        if (chosen.empty() && !unknown.empty() && !unknown.front().starts_with('-')) {
            return UsageError(fmt::format("unknown command '{}'", unknown.front()),
                              "the commands are append, streams, read, all, tail, stats, metadata, delete, relay, "
                              "outbox, dlq and projection (keel --help)");
        }
        return UsageError(e.what(), fmt::format("run '{} --help' for usage", ChosenCommand(app)));
    }

    OutputOptions out;
    out.json = args.json;
    out.width = OutputWidth();
    for (const Command& command : commands) {
        if (!command.app->parsed()) continue;
        if (command.needs_store && args.store.empty()) {
            return UsageError("no store given", fmt::format("pass --store URI (e.g. --store sqlite:///var/lib/app.db) "
                                                            "or set {}",
                                                            kStoreEnv));
        }
        if (command.needs_broker && args.broker.empty()) {
            return UsageError("no broker given", fmt::format("pass --broker URI (e.g. --broker "
                                                             "local:///var/lib/app-broker.db) or set {}",
                                                             kBrokerEnv));
        }
        bool create = command.creates_store && command.creates_store();
        Openers openers{MakeOpener(args.store, create), MakeBrokerOpener(args.broker, command.broker_must_exist)};
        return Report(command.run(openers, out));
    }
    return UsageError("no command given", "run 'keel --help' for the commands");
}

}  // namespace
}  // namespace keel::cli

int main(int argc, char** argv) {
    try {
        return keel::cli::Main(argc, argv);
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "keel: unexpected error: %s; this is a bug in keel, please report it\n", e.what());
        return keel::cli::kExitFailure;
    }
}
