// Seed 000: a distributed transaction between two processes with event sourcing and a message broker, and its
// compensation when the second step fails.
//
//   foo_bar demo [--dir DIR] [--broker URI]          runs both services as child processes and checks the outcome
//   foo_bar foo --dir DIR --broker URI [--create NAME]...     the Foo service (until SIGTERM/SIGINT)
//   foo_bar bar --dir DIR --broker URI                        the Bar service (until SIGTERM/SIGINT)
//
// Defaults for demo: DIR is a new directory under /tmp, URI is local://DIR/broker.db (the embedded broker: a SQLite
// file both processes open). A rabbitmq://user:password@host:port/vhost URI runs the same services on RabbitMQ.
//
// Each service has its own SQLite database (DIR/foo.db, DIR/bar.db) opened as a keel event store, its tables beside
// keel's, an outbox Relay and an inbox Consumer. They talk only through the broker:
//   1. Foo inserts a Foo row and records a FooCreated event in one unit of work that also queues the event in the
//      outbox; the relay publishes it to the success queue (destination "foo-success").
//   2. Bar consumes the success queue and inserts a Bar. Bar's rule (a CHECK constraint: a name of 1 to 8
//      characters) may refuse it: then the insert left no trace, and Bar queues the event for the failure queue
//      ("foo-failure") in the same unit of work that marks the delivery processed in its inbox.
//   3. Foo consumes the failure queue, finds the Foo id through the event id in its event store, deletes the Foo and
//      records a FooDeleted event (the compensation), again in one unit of work with its inbox row.
// The demo creates one Foo that Bar accepts ("alice") and one it refuses ("bartholomew"), then checks both paths in
// the two databases. Exit status: 0 when every check held (the last line is then "ok foo_bar"), 1 otherwise.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keel/broker.hpp"
#include "keel/consumer.hpp"
#include "keel/event_store.hpp"
#include "keel/outbox.hpp"
#include "keel/unit_of_work.hpp"

namespace {

namespace fs = std::filesystem;
using keel::Delivery;
using keel::EventStore;
using keel::Result;
using keel::Status;
using keel::UnitOfWork;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr const char* kSuccessQueue = "foo-success";
constexpr const char* kFailureQueue = "foo-failure";

// An event's JSON payload, read without exceptions (a malformed payload reads as empty fields).
json Parse(std::string_view text) {
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    return j.is_object() ? j : json::object();
}
std::string Str(const json& j, const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

Result<std::unique_ptr<EventStore>> OpenServiceStore(const fs::path& db, std::string_view schema) {
    KEEL_ASSIGN_OR_RETURN(std::unique_ptr<EventStore> store, keel::OpenStore("sqlite://" + db.string()));
    KEEL_ASSIGN_OR_RETURN(UnitOfWork uow, UnitOfWork::Begin(*store));
    KEEL_RETURN_IF_ERROR(uow.Exec(schema).status());
    KEEL_RETURN_IF_ERROR(uow.Commit());
    return store;
}

keel::ConsumerOptions ConsumerNamed(std::string name) {
    keel::ConsumerOptions options;
    options.name = std::move(name);
    return options;
}

// ---- The Foo service ------------------------------------------------------------------------------------------

class FooService {
public:
    static Result<std::unique_ptr<FooService>> Start(const fs::path& dir, keel::Broker& broker) {
        auto service = std::unique_ptr<FooService>(new FooService());
        KEEL_ASSIGN_OR_RETURN(service->store_, OpenServiceStore(dir / "foo.db", kSchema));
        auto handler = [self = service.get()](UnitOfWork& uow, const Delivery& d) { return self->OnBarFailed(uow, d); };
        KEEL_ASSIGN_OR_RETURN(service->consumer_,
                              keel::Consumer::Start(*service->store_, broker, kFailureQueue, "foo-service", handler,
                                                    ConsumerNamed("foo-service")));
        KEEL_ASSIGN_OR_RETURN(service->relay_, keel::Relay::Start(*service->store_, broker));
        return service;
    }

    // Seed step 1: the Foo row, the FooCreated event and the outbox message, in one local transaction.
    Status CreateFoo(const std::string& name) {
        const std::string foo_id = keel::Uuid::Generate().ToString();
        const keel::Uuid event_id = keel::Uuid::Generate();
        const std::string stream = "Foo-" + foo_id;
        KEEL_ASSIGN_OR_RETURN(UnitOfWork uow, UnitOfWork::Begin(*store_));
        KEEL_RETURN_IF_ERROR(uow.Exec("INSERT INTO foos (id, name) VALUES (?, ?)", {foo_id, name}).status());
        const json data = {{"foo_id", foo_id}, {"name", name}};
        KEEL_RETURN_IF_ERROR(uow.Append(stream, keel::ExpectedVersion::NoStream(),
                                        {keel::EventData{event_id, "FooCreated", data.dump(), ""}})
                                 .status());
        // The message is the event (the seed's Event object: id, type, model, model id, and the Foo's fields).
        const json message = {{"event_id", event_id.ToString()},
                              {"type", "FooCreated"},
                              {"model", "Foo"},
                              {"model_id", foo_id},
                              {"name", name}};
        KEEL_RETURN_IF_ERROR(
            uow.Enqueue(keel::OutboxMessage{kSuccessQueue, stream, event_id, message.dump(), {{"type", "FooCreated"}}})
                .status());
        KEEL_RETURN_IF_ERROR(uow.Commit());
        fmt::print("[foo] created Foo '{}' (id {}): row + FooCreated event {} + outbox message, one transaction\n",
                   name, foo_id, event_id.ToString());
        return Status::Ok();
    }

    std::string Summary() const {
        const auto r = relay_->stats();
        const auto c = consumer_->stats();
        return fmt::format("relay published {}, failure consumer handled {} (duplicates {})", r.published, c.handled,
                           c.duplicates);
    }

private:
    static constexpr const char* kSchema = "CREATE TABLE IF NOT EXISTS foos (id TEXT PRIMARY KEY, name TEXT NOT NULL)";

    FooService() = default;

    // Seed step 3: the failure queue brings the event back; find the Foo through the event id and delete it.
    Status OnBarFailed(UnitOfWork& uow, const Delivery& d) {
        const json e = Parse(d.message.payload);
        auto event_id = keel::Uuid::Parse(Str(e, "event_id"));
        if (!event_id.ok()) return event_id.status();  // malformed: retried, then dead-lettered with this error
        // The event store is the seed's event table: keel_events lives in this database (docs/sqlite-schema.md), so
        // the lookup is part of this unit of work.
        KEEL_ASSIGN_OR_RETURN(keel::Rows found,
                              uow.Query("SELECT stream_id, data FROM keel_events WHERE event_id = ? AND type = "
                                        "'FooCreated'",
                                        {keel::Blob{std::string(event_id->bytes_view())}}));
        if (found.empty()) {
            fmt::print("[foo] failure for unknown event {}: nothing to compensate\n", event_id->ToString());
            return Status::Ok();
        }
        KEEL_ASSIGN_OR_RETURN(std::string stream, found.Text(0, 0));
        KEEL_ASSIGN_OR_RETURN(std::string created, found.Text(0, 1));
        const std::string foo_id = Str(Parse(created), "foo_id");
        KEEL_ASSIGN_OR_RETURN(int64_t deleted, uow.Exec("DELETE FROM foos WHERE id = ?", {foo_id}));
        std::string error;
        for (const auto& [k, v] : d.message.headers) {
            if (k == "error") error = v;
        }
        const json data = {{"foo_id", foo_id}, {"cause_event_id", event_id->ToString()}, {"reason", error}};
        KEEL_RETURN_IF_ERROR(uow.Append(stream, keel::ExpectedVersion::StreamExists(),
                                        {keel::EventData{{}, "FooDeleted", data.dump(), ""}})
                                 .status());
        fmt::print(
            "[foo] failure queue: event {} -> Foo {} found through the event store; deleted {} row, "
            "FooDeleted recorded\n",
            event_id->ToString(), foo_id, deleted);
        return Status::Ok();
    }

    std::unique_ptr<EventStore> store_;  // declared first: stopped last
    std::unique_ptr<keel::Relay> relay_;
    std::unique_ptr<keel::Consumer> consumer_;
};

// ---- The Bar service ------------------------------------------------------------------------------------------

class BarService {
public:
    static Result<std::unique_ptr<BarService>> Start(const fs::path& dir, keel::Broker& broker) {
        auto service = std::unique_ptr<BarService>(new BarService());
        KEEL_ASSIGN_OR_RETURN(service->store_, OpenServiceStore(dir / "bar.db", kSchema));
        auto handler = [self = service.get()](UnitOfWork& uow, const Delivery& d) {
            return self->OnFooCreated(uow, d);
        };
        KEEL_ASSIGN_OR_RETURN(service->consumer_,
                              keel::Consumer::Start(*service->store_, broker, kSuccessQueue, "bar-service", handler,
                                                    ConsumerNamed("bar-service")));
        KEEL_ASSIGN_OR_RETURN(service->relay_, keel::Relay::Start(*service->store_, broker));
        return service;
    }

    std::string Summary() const {
        const auto r = relay_->stats();
        const auto c = consumer_->stats();
        return fmt::format("success consumer handled {} (duplicates {}), relay published {}", c.handled, c.duplicates,
                           r.published);
    }

private:
    // Bar's rule is a CHECK constraint: a Bar's name has 1 to 8 characters.
    static constexpr const char* kSchema =
        "CREATE TABLE IF NOT EXISTS bars (id TEXT PRIMARY KEY, foo_id TEXT NOT NULL, name TEXT NOT NULL, "
        "foo_event_id TEXT NOT NULL, CONSTRAINT bar_name_rule CHECK (length(name) BETWEEN 1 AND 8))";

    BarService() = default;

    // Seed step 2: insert a Bar; when Bar's rule refuses it, hand the event to the failure queue instead.
    Status OnFooCreated(UnitOfWork& uow, const Delivery& d) {
        const json e = Parse(d.message.payload);
        const std::string bar_id = keel::Uuid::Generate().ToString();
        auto inserted = uow.Exec("INSERT INTO bars (id, foo_id, name, foo_event_id) VALUES (?, ?, ?, ?)",
                                 {bar_id, Str(e, "model_id"), Str(e, "name"), Str(e, "event_id")});
        if (inserted.ok()) {
            const json data = {{"bar_id", bar_id}, {"foo_id", Str(e, "model_id")}, {"name", Str(e, "name")}};
            KEEL_RETURN_IF_ERROR(uow.Append("Bar-" + bar_id, keel::ExpectedVersion::NoStream(),
                                            {keel::EventData{{}, "BarCreated", data.dump(), ""}})
                                     .status());
            fmt::print("[bar] success queue: event {} -> inserted Bar {} for Foo '{}', BarCreated recorded\n",
                       Str(e, "event_id"), bar_id, Str(e, "name"));
            return Status::Ok();
        }
        if (inserted.status().message().find("bar_name_rule") == std::string::npos) {
            return inserted.status();  // anything but the rule (a busy database …): retried, then dead-lettered
        }
        // The failed insert left no trace. The event goes back to Foo through the outbox, committed together with
        // the inbox row that marks this delivery processed.
        KEEL_RETURN_IF_ERROR(
            uow.Enqueue(keel::OutboxMessage{kFailureQueue,
                                            d.message.key,
                                            {},
                                            d.message.payload,
                                            {{"type", "FooCreated"}, {"error", inserted.status().message()}}})
                .status());
        fmt::print(
            "[bar] success queue: event {} -> Bar for Foo '{}' refused by bar_name_rule (1 to 8 characters); "
            "event queued for the failure queue\n",
            Str(e, "event_id"), Str(e, "name"));
        return Status::Ok();
    }

    std::unique_ptr<EventStore> store_;
    std::unique_ptr<keel::Relay> relay_;
    std::unique_ptr<keel::Consumer> consumer_;
};

// ---- Running a service as a process ---------------------------------------------------------------------------

struct Options {
    std::string mode;  // demo, foo or bar
    fs::path dir;
    std::string broker;
    std::vector<std::string> create;
};

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free);
void OnStopSignal(int) {
    g_stop = true;
}

// Runs the Foo or Bar service until SIGTERM/SIGINT. Writes DIR/<mode>.ready once it consumes (and, for Foo, once
// it created the requested Foos), so that the demo knows when to go on.
int RunService(const Options& o) {
    ::signal(SIGTERM, OnStopSignal);
    ::signal(SIGINT, OnStopSignal);
    auto broker = keel::OpenBroker(o.broker);
    if (!broker.ok()) {
        fmt::print("[{}] cannot open the broker {}: {}\n", o.mode, o.broker, broker.status().ToString());
        return 1;
    }
    std::unique_ptr<FooService> foo;
    std::unique_ptr<BarService> bar;
    Status started;
    if (o.mode == "foo") {
        auto s = FooService::Start(o.dir, **broker);
        if (s.ok()) foo = std::move(*s);
        started = s.status();
    } else {
        auto s = BarService::Start(o.dir, **broker);
        if (s.ok()) bar = std::move(*s);
        started = s.status();
    }
    if (!started.ok()) {
        fmt::print("[{}] cannot start: {}\n", o.mode, started.ToString());
        return 1;
    }
    fmt::print("[{}] started (pid {}): database {}/{}.db, broker {}\n", o.mode, ::getpid(), o.dir.string(), o.mode,
               o.broker);
    for (const std::string& name : o.create) {
        Status s = foo->CreateFoo(name);
        if (!s.ok()) {
            fmt::print("[foo] creating Foo '{}' failed: {}\n", name, s.ToString());
            return 1;
        }
    }
    std::ofstream(o.dir / (o.mode + ".ready")) << ::getpid() << "\n";
    while (!g_stop) std::this_thread::sleep_for(20ms);
    fmt::print("[{}] stopping: {}\n", o.mode, foo ? foo->Summary() : bar->Summary());
    return 0;
}

// ---- The demo: both services as child processes, then checks in their databases -------------------------------

int g_failed_checks = 0;

bool Check(bool ok, std::string_view what) {
    fmt::print("    [{}] {}\n", ok ? "ok" : "FAILED", what);
    if (!ok) ++g_failed_checks;
    return ok;
}

void Step(int n, std::string_view title) {
    fmt::print("\n{}. {}\n", n, title);
}

// A service started with fork + exec of this same program; killed if still running when this goes away.
class Child {
public:
    Child(const std::string& name, std::vector<std::string> args) : name_(name) {
        args.insert(args.begin(), "foo_bar");
        pid_ = ::fork();
        if (pid_ == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the demo
            std::vector<char*> argv;
            for (std::string& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv("/proc/self/exe", argv.data());
            std::perror("execv");
            ::_exit(127);
        }
    }
    ~Child() {
        if (running()) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;

    bool running() {
        if (pid_ <= 0 || exit_status_) return false;
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) exit_status_ = status;
        return !exit_status_;
    }
    // Asks the service to stop (SIGTERM) and waits for it; true when it exited with status 0.
    bool Stop(std::chrono::seconds limit) {
        if (running()) ::kill(pid_, SIGTERM);
        const auto deadline = std::chrono::steady_clock::now() + limit;
        while (running() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
        if (running()) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
            exit_status_ = -1;
            return false;
        }
        return WIFEXITED(*exit_status_) && WEXITSTATUS(*exit_status_) == 0;
    }
    pid_t pid() const { return pid_; }
    const std::string& name() const { return name_; }

private:
    std::string name_;
    pid_t pid_ = -1;
    std::optional<int> exit_status_;
};

template <class Pred>
bool WaitUntil(Pred pred, std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(50ms);
    }
    return true;
}

bool WaitReady(Child& child, const fs::path& ready) {
    return WaitUntil([&] { return fs::exists(ready) || !child.running(); }, 60s) && fs::exists(ready);
}

int64_t Count(EventStore& store, std::string_view sql, std::initializer_list<keel::SqlValue> params) {
    auto uow = UnitOfWork::Begin(store).value();
    return uow.Query(sql, params).value().Int(0, 0).value();
}

// What the demo learns about one Foo from the two databases.
struct FooOutcome {
    std::string foo_id;
    std::string event_id;
    int64_t foo_rows = 0;              // in foo.db
    int64_t bar_rows = 0;              // in bar.db, for this Foo
    std::vector<std::string> history;  // event types of its stream in foo.db
    std::string deleted_because_of;    // FooDeleted's cause_event_id
};

std::optional<FooOutcome> Inspect(EventStore& foo_db, EventStore& bar_db, const std::string& name) {
    keel::ReadAllOptions read;
    read.types = {"FooCreated"};
    read.limit = 0;
    auto created = foo_db.ReadAll(read);
    if (!created.ok()) return std::nullopt;
    for (const keel::RecordedEvent& e : created->events) {
        if (Str(Parse(e.data), "name") != name) continue;
        FooOutcome o;
        o.foo_id = Str(Parse(e.data), "foo_id");
        o.event_id = e.event_id.ToString();
        o.foo_rows = Count(foo_db, "SELECT count(*) FROM foos WHERE id = ?", {o.foo_id});
        o.bar_rows = Count(bar_db, "SELECT count(*) FROM bars WHERE foo_id = ?", {o.foo_id});
        for (const keel::RecordedEvent& h : foo_db.ReadStream(e.stream_id).value()) {
            o.history.push_back(h.type);
            if (h.type == "FooDeleted") o.deleted_because_of = Str(Parse(h.data), "cause_event_id");
        }
        return o;
    }
    return std::nullopt;
}

int RunDemo(const Options& o) {
    const std::string accepted = "alice";       // Bar accepts names of 1 to 8 characters …
    const std::string refused = "bartholomew";  // … and refuses this one
    const std::vector<std::string> common = {"--dir", o.dir.string(), "--broker", o.broker};

    Step(1, "Start the Bar service (its own process and database; consumes the success queue)");
    std::vector<std::string> bar_args = {"bar"};
    bar_args.insert(bar_args.end(), common.begin(), common.end());
    Child bar("bar", bar_args);
    if (!Check(WaitReady(bar, o.dir / "bar.ready"), fmt::format("Bar (pid {}) is consuming", bar.pid()))) return 1;

    Step(2, fmt::format("Start the Foo service and create two Foos: '{}' and '{}'", accepted, refused));
    std::vector<std::string> foo_args = {"foo"};
    foo_args.insert(foo_args.end(), common.begin(), common.end());
    for (const std::string& name : {accepted, refused}) {
        foo_args.push_back("--create");
        foo_args.push_back(name);
    }
    Child foo("foo", foo_args);
    if (!Check(WaitReady(foo, o.dir / "foo.ready"),
               fmt::format("Foo (pid {}) created both and is consuming", foo.pid()))) {
        return 1;
    }

    Step(3, "Wait until Bar accepted one, refused the other, and Foo compensated");
    keel::StoreOptions existing;
    existing.create_if_missing = false;
    auto foo_db = keel::OpenStore("sqlite://" + (o.dir / "foo.db").string(), existing).value();
    auto bar_db = keel::OpenStore("sqlite://" + (o.dir / "bar.db").string(), existing).value();
    const bool done = WaitUntil(
        [&] {
            auto a = Inspect(*foo_db, *bar_db, accepted);
            auto r = Inspect(*foo_db, *bar_db, refused);
            return a && r && a->bar_rows == 1 && r->foo_rows == 0 && foo.running() && bar.running() &&
                   keel::GetOutboxStats(*foo_db).value().pending == 0 &&
                   keel::GetOutboxStats(*bar_db).value().pending == 0;
        },
        60s);
    Check(done, "both paths finished (or 60 s passed)");

    Step(4, "Stop both services (SIGTERM)");
    Check(foo.Stop(15s), "Foo exited with status 0");
    Check(bar.Stop(15s), "Bar exited with status 0");

    Step(5, "Check the outcome in foo.db and bar.db");
    const auto a = Inspect(*foo_db, *bar_db, accepted);
    const auto r = Inspect(*foo_db, *bar_db, refused);
    if (Check(a.has_value(), fmt::format("foo.db recorded FooCreated for '{}'", accepted))) {
        Check(a->foo_rows == 1, fmt::format("Foo '{}' ({}) exists in foo.db", accepted, a->foo_id));
        Check(a->bar_rows == 1, "its Bar exists in bar.db");
        Check(a->history == std::vector<std::string>{"FooCreated"}, "its stream holds FooCreated only");
    }
    if (Check(r.has_value(), fmt::format("foo.db recorded FooCreated for '{}'", refused))) {
        Check(r->foo_rows == 0, fmt::format("Foo '{}' ({}) was deleted from foo.db", refused, r->foo_id));
        Check(r->bar_rows == 0, "no Bar exists for it in bar.db");
        Check(r->history == std::vector<std::string>{"FooCreated", "FooDeleted"},
              "its stream holds FooCreated, FooDeleted");
        Check(!r->event_id.empty() && r->deleted_because_of == r->event_id,
              fmt::format("the deletion was found through its event id {}", r->event_id));
    }
    Check(keel::GetOutboxStats(*foo_db).value().pending == 0 && keel::GetOutboxStats(*bar_db).value().pending == 0,
          "both outboxes are fully published");

    if (g_failed_checks > 0) {
        fmt::print("\nFAILED foo_bar: {} check(s) did not hold (see the [FAILED] lines above)\n", g_failed_checks);
        return 1;
    }
    fmt::print("\nok foo_bar\n");
    return 0;
}

int Usage() {
    fmt::print(stderr,
               "usage: foo_bar demo [--dir DIR] [--broker URI]\n"
               "       foo_bar foo --dir DIR --broker URI [--create NAME]...\n"
               "       foo_bar bar --dir DIR --broker URI\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) try {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    if (argc < 2) return Usage();
    Options o;
    o.mode = argv[1];
    if (o.mode != "demo" && o.mode != "foo" && o.mode != "bar") return Usage();
    for (int i = 2; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (i + 1 >= argc) return Usage();
        if (arg == "--dir") {
            o.dir = argv[++i];
        } else if (arg == "--broker") {
            o.broker = argv[++i];
        } else if (arg == "--create" && o.mode == "foo") {
            o.create.emplace_back(argv[++i]);
        } else {
            return Usage();
        }
    }
    if (o.mode != "demo") {
        if (o.dir.empty() || o.broker.empty()) return Usage();
        return RunService(o);
    }
    if (o.dir.empty()) {
        std::string tmpl = (fs::temp_directory_path() / "keel-foo-bar-XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
        o.dir = tmpl;
    }
    fs::create_directories(o.dir);
    o.dir = fs::absolute(o.dir);
    for (const char* file : {"foo.db", "bar.db", "broker.db", "foo.ready", "bar.ready"}) {
        for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(o.dir / (std::string(file) + suffix));
    }
    if (o.broker.empty()) o.broker = "local://" + (o.dir / "broker.db").string();
    fmt::print("foo_bar: seed 000 in {} (broker {})\n", o.dir.string(), o.broker);
    return RunDemo(o);
} catch (const std::exception& e) {
    fmt::print("\nFAILED foo_bar: {}\n", e.what());
    return 1;
}
