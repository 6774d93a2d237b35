// Tests of the keel CLI. Most run the built binary (KEEL_CLI_PATH) in a child process against a temporary sqlite
// store (and, for relay and dlq, a temporary local: broker) and check its stdout, stderr and exit code; the test
// itself writes outbox rows, consumes, dead-letters and runs projections through the library. A few test the
// formatting helpers of tools/keel/output.cpp in-process.

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keel/broker.hpp"
#include "keel/event_store.hpp"
#include "keel/outbox.hpp"
#include "keel/projection.hpp"
#include "keel/unit_of_work.hpp"

#include "output.hpp"

extern char** environ;

namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using namespace std::chrono_literals;
using Json = nlohmann::json;

constexpr auto kRunTimeout = 60s;

std::vector<std::string> Lines(std::string_view text) {
    std::vector<std::string> lines;
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string_view::npos) end = text.size();
        lines.emplace_back(text.substr(start, end - start));
        start = end + 1;
    }
    return lines;
}

std::vector<Json> JsonLines(std::string_view text) {
    std::vector<Json> values;
    for (const auto& line : Lines(text)) {
        EXPECT_TRUE(Json::accept(line)) << "not JSON: " << line;
        if (Json::accept(line)) values.push_back(Json::parse(line));
    }
    return values;
}

std::set<std::string> Keys(const Json& object) {
    std::set<std::string> keys;
    for (const auto& [key, value] : object.items()) keys.insert(key);
    return keys;
}

struct RunResult {
    int exit_code = -1;  // the exit status, or 128 + signal
    std::string out;
    std::string err;
};

// A child process with pipes on stdin, stdout and stderr.
class Child {
public:
    Child(const std::vector<std::string>& args, const std::vector<std::string>& env) {
        int in[2];
        int out[2];
        int err[2];
        if (pipe(in) != 0 || pipe(out) != 0 || pipe(err) != 0) throw std::runtime_error("pipe failed");
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
        posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
        for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) posix_spawn_file_actions_addclose(&actions, fd);
        std::vector<char*> argv;
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        std::vector<char*> envp;
        for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
        envp.push_back(nullptr);
        // The child starts with no blocked signals and default SIGINT/SIGTERM, whatever the test runner set.
        posix_spawnattr_t attributes;
        posix_spawnattr_init(&attributes);
        sigset_t none;
        sigset_t defaults;
        sigemptyset(&none);
        sigemptyset(&defaults);
        sigaddset(&defaults, SIGINT);
        sigaddset(&defaults, SIGTERM);
        sigaddset(&defaults, SIGPIPE);
        posix_spawnattr_setsigmask(&attributes, &none);
        posix_spawnattr_setsigdefault(&attributes, &defaults);
        posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        int rc = posix_spawn(&pid_, argv[0], &actions, &attributes, argv.data(), envp.data());
        posix_spawnattr_destroy(&attributes);
        posix_spawn_file_actions_destroy(&actions);
        close(in[0]);
        close(out[1]);
        close(err[1]);
        if (rc != 0) throw std::runtime_error(std::string("posix_spawn failed: ") + std::strerror(rc));
        stdin_ = in[1];
        stdout_ = out[0];
        stderr_ = err[0];
        fcntl(stdout_, F_SETFL, O_NONBLOCK);
        fcntl(stderr_, F_SETFL, O_NONBLOCK);
    }

    ~Child() {
        if (pid_ > 0 && !reaped_) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
        for (int fd : {stdin_, stdout_, stderr_}) {
            if (fd >= 0) close(fd);
        }
    }

    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;

    void WriteStdinAndClose(std::string_view text) {
        while (!text.empty()) {
            ssize_t n = write(stdin_, text.data(), text.size());
            if (n <= 0) break;
            text.remove_prefix(static_cast<size_t>(n));
        }
        CloseStdin();
    }

    void CloseStdin() {
        if (stdin_ >= 0) close(stdin_);
        stdin_ = -1;
    }

    // The next full line of stdout (without '\n'), or nothing when none came within `timeout`.
    std::optional<std::string> ReadLine(std::chrono::milliseconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (true) {
            size_t newline = out_.find('\n', consumed_);
            if (newline != std::string::npos) {
                std::string line = out_.substr(consumed_, newline - consumed_);
                consumed_ = newline + 1;
                return line;
            }
            auto now = std::chrono::steady_clock::now();
            if (now >= deadline || (stdout_ < 0 && stderr_ < 0)) return std::nullopt;
            Pump(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now));
        }
    }

    void Signal(int signal) { kill(pid_, signal); }

    // Waits until stderr contains `text`; false when it did not within `timeout`.
    bool WaitForStderr(std::string_view text, std::chrono::milliseconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (err_.find(text) == std::string::npos) {
            auto now = std::chrono::steady_clock::now();
            if (now >= deadline || (stdout_ < 0 && stderr_ < 0)) return false;
            Pump(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now));
        }
        return true;
    }

    // Waits for the exit, collecting all output; kills the child and fails the test after `timeout`.
    RunResult Finish(std::chrono::milliseconds timeout = kRunTimeout) {
        CloseStdin();
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (stdout_ >= 0 || stderr_ >= 0) {
            auto now = std::chrono::steady_clock::now();
            if (now >= deadline) {
                ADD_FAILURE() << "the keel process did not finish in time; output so far:\n" << out_ << "\n" << err_;
                kill(pid_, SIGKILL);
                break;
            }
            Pump(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now));
        }
        int status = 0;
        waitpid(pid_, &status, 0);
        reaped_ = true;
        RunResult result;
        result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        result.out = out_;
        result.err = err_;
        return result;
    }

private:
    // Reads what is available on stdout and stderr, waiting at most `timeout` for something.
    void Pump(std::chrono::milliseconds timeout) {
        pollfd fds[2] = {{stdout_, POLLIN, 0}, {stderr_, POLLIN, 0}};
        int ready = poll(fds, 2, static_cast<int>(std::min<int64_t>(timeout.count(), 1000)));
        if (ready <= 0) return;
        Drain(stdout_, out_);
        Drain(stderr_, err_);
    }

    static void Drain(int& fd, std::string& into) {
        if (fd < 0) return;
        char buffer[4096];
        while (true) {
            ssize_t n = read(fd, buffer, sizeof buffer);
            if (n > 0) {
                into.append(buffer, static_cast<size_t>(n));
                continue;
            }
            if (n == 0) {  // EOF
                close(fd);
                fd = -1;
            }
            return;  // EAGAIN or error
        }
    }

    pid_t pid_ = -1;
    bool reaped_ = false;
    int stdin_ = -1;
    int stdout_ = -1;
    int stderr_ = -1;
    std::string out_;
    std::string err_;
    size_t consumed_ = 0;
};

class CliTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string pattern = (std::filesystem::temp_directory_path() / "keel-cli-XXXXXX").string();
        ASSERT_NE(mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
        dir_ = pattern;
        db_path_ = dir_ / "store.db";
        uri_ = "sqlite://" + db_path_.string();
        broker_path_ = dir_ / "broker.db";
        broker_uri_ = "local://" + broker_path_.string();
    }

    void TearDown() override {
        broker_.reset();
        store_.reset();
        std::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
    }

    // The parent's environment without the variables the CLI reads, plus `extra` ("NAME=value").
    static std::vector<std::string> Environment(const std::vector<std::string>& extra = {}) {
        std::vector<std::string> env;
        for (char** e = environ; *e != nullptr; ++e) {
            std::string_view entry(*e);
            if (entry.starts_with("KEEL_STORE=") || entry.starts_with("KEEL_BROKER=") ||
                entry.starts_with("COLUMNS=")) {
                continue;
            }
            env.emplace_back(entry);
        }
        env.insert(env.end(), extra.begin(), extra.end());
        return env;
    }

    static std::vector<std::string> Argv(const std::vector<std::string>& args) {
        std::vector<std::string> argv = {KEEL_CLI_PATH};
        argv.insert(argv.end(), args.begin(), args.end());
        return argv;
    }

    // Runs keel with exactly `args` (no --store added).
    RunResult RunRaw(const std::vector<std::string>& args, const std::vector<std::string>& env_extra = {},
                     std::string_view stdin_text = {}) {
        Child child(Argv(args), Environment(env_extra));
        child.WriteStdinAndClose(stdin_text);
        return child.Finish();
    }

    // Runs `keel --store <uri> args…`.
    RunResult Keel(const std::vector<std::string>& args, std::string_view stdin_text = {}) {
        std::vector<std::string> full = {"--store", uri_};
        full.insert(full.end(), args.begin(), args.end());
        return RunRaw(full, {}, stdin_text);
    }

    // Appends one event and expects success.
    void Append(const std::string& stream, const std::string& type, const std::string& data,
                std::vector<std::string> extra = {}) {
        std::vector<std::string> args = {"append", stream, "--type", type, "--data", data};
        args.insert(args.end(), extra.begin(), extra.end());
        RunResult r = Keel(args);
        ASSERT_EQ(r.exit_code, 0) << r.err;
        ASSERT_EQ(r.err, "");
    }

    std::vector<Json> ReadJson(const std::vector<std::string>& args) {
        std::vector<std::string> full = args;
        full.push_back("--json");
        RunResult r = Keel(full);
        EXPECT_EQ(r.exit_code, 0) << r.err;
        EXPECT_EQ(r.err, "");
        return JsonLines(r.out);
    }

    Json Stats() {
        std::vector<Json> lines = ReadJson({"stats"});
        EXPECT_EQ(lines.size(), 1u);
        return lines.empty() ? Json() : lines.front();
    }

    static void ExpectOneErrorLine(const RunResult& r, std::string_view must_contain) {
        EXPECT_THAT(r.err, StartsWith("keel: "));
        EXPECT_THAT(r.err, HasSubstr(std::string(must_contain)));
        ASSERT_FALSE(r.err.empty());
        EXPECT_EQ(r.err.back(), '\n');
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
        EXPECT_THAT(r.err, HasSubstr("; ")) << "an error says what went wrong; then what to do";
    }

    // Runs `keel --store <uri> --broker <broker uri> args…`.
    RunResult KeelWithBroker(const std::vector<std::string>& args) {
        std::vector<std::string> full = {"--store", uri_, "--broker", broker_uri_};
        full.insert(full.end(), args.begin(), args.end());
        return RunRaw(full);
    }

    // Runs `keel --broker <broker uri> args…` (no store).
    RunResult KeelBrokerOnly(const std::vector<std::string>& args) {
        std::vector<std::string> full = {"--broker", broker_uri_};
        full.insert(full.end(), args.begin(), args.end());
        return RunRaw(full);
    }

    keel::EventStore& Store() {
        if (!store_) store_ = keel::OpenStore(uri_).value();
        return *store_;
    }

    keel::Broker& Broker() {
        if (!broker_) broker_ = keel::OpenBroker(broker_uri_).value();
        return *broker_;
    }

    // Commits one unit of work with a message per payload to destination "orders", key "Order-<i>".
    void CommitOutbox(const std::vector<std::string>& payloads) {
        auto uow = keel::UnitOfWork::Begin(Store()).value();
        for (size_t i = 0; i < payloads.size(); ++i) {
            keel::OutboxMessage message{"orders", "Order-" + std::to_string(i), {}, payloads[i], {}};
            ASSERT_TRUE(uow.Enqueue(std::move(message)).ok());
        }
        ASSERT_TRUE(uow.Commit().ok());
    }

    // Receives and acknowledges up to `n` messages (10 s at most); returns their payloads in arrival order.
    static std::vector<std::string> Receive(keel::BrokerConsumer& consumer, size_t n) {
        std::vector<std::string> payloads;
        auto deadline = std::chrono::steady_clock::now() + 10s;
        while (payloads.size() < n && std::chrono::steady_clock::now() < deadline) {
            auto delivery = consumer.Receive(100ms);
            EXPECT_TRUE(delivery.ok()) << delivery.status().ToString();
            if (!delivery.ok() || !delivery->has_value()) continue;
            payloads.push_back((*delivery)->message.payload);
            EXPECT_TRUE(consumer.Ack(**delivery).ok());
        }
        return payloads;
    }

    // True when nothing arrives within `wait`.
    static bool NothingArrives(keel::BrokerConsumer& consumer, std::chrono::milliseconds wait = 300ms) {
        auto delivery = consumer.Receive(wait);
        return delivery.ok() && !delivery->has_value();
    }

    Json Outbox() {
        std::vector<Json> lines = ReadJson({"outbox"});
        EXPECT_EQ(lines.size(), 1u);
        return lines.empty() ? Json() : lines.front();
    }

    std::filesystem::path dir_;
    std::filesystem::path db_path_;
    std::string uri_;
    std::filesystem::path broker_path_;
    std::string broker_uri_;
    std::unique_ptr<keel::EventStore> store_;
    std::unique_ptr<keel::Broker> broker_;
};

// True for "YYYY-MM-DDTHH:MM:SS.ffffffZ" (std::regex trips a GCC 12 false warning at -O1, so by hand).
bool IsIsoMicros(std::string_view s) {
    static constexpr std::string_view kShape = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    if (s.size() != kShape.size()) return false;
    for (size_t i = 0; i < s.size(); ++i) {
        if (kShape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != kShape[i]) return false;
    }
    return true;
}

// True when `line` contains an ISO timestamp with microseconds.
bool ContainsIsoMicros(const std::string& line) {
    for (size_t i = 0; i + 27 <= line.size(); ++i) {
        if (IsIsoMicros(std::string_view(line).substr(i, 27))) return true;
    }
    return false;
}

TEST_F(CliTest, AppendPrintsVersionAndPosition) {
    RunResult r = Keel({"append", "User-1", "--type", "UserCreated", "--data", R"({"name":"ann"})"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(r.out, "appended to User-1: stream version 0, global position 1\n");

    r = Keel({"append", "User-1", "--type", "UserRenamed", "--data", R"({"name":"bob"})"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "appended to User-1: stream version 1, global position 2\n");
}

TEST_F(CliTest, AppendJsonPrintsTheAppendResultAndIsIdempotentByEventId) {
    const std::string id = "0190a5c4-1f2e-7abc-8def-0123456789ab";
    RunResult r = Keel({"--json", "append", "User-1", "--type", "UserCreated", "--data", "{}", "--id", id});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<Json> lines = JsonLines(r.out);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(Keys(lines[0]), (std::set<std::string>{"stream_id", "next_expected_version", "first_position",
                                                     "last_position", "already_present"}));
    EXPECT_EQ(lines[0]["stream_id"], "User-1");
    EXPECT_EQ(lines[0]["next_expected_version"], 0);
    EXPECT_EQ(lines[0]["first_position"], 1);
    EXPECT_EQ(lines[0]["last_position"], 1);
    EXPECT_EQ(lines[0]["already_present"], false);

    // The same event again (same id, same content, same position): nothing is written.
    r = Keel({"append", "User-1", "--type", "UserCreated", "--data", "{}", "--id", id, "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    lines = JsonLines(r.out);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0]["already_present"], true);
    EXPECT_EQ(lines[0]["last_position"], 1);
    EXPECT_EQ(Stats()["events"], 1);
}

TEST_F(CliTest, ReadPrintsAnAlignedTable) {
    Append("User-1", "UserCreated", R"({"name":"ann"})");
    Append("User-1", "UserRenamed", R"({"name":"bob"})");
    RunResult r = Keel({"read", "User-1"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<std::string> lines = Lines(r.out);
    ASSERT_EQ(lines.size(), 3u) << r.out;
    EXPECT_THAT(lines[0], ::testing::MatchesRegex(R"(position +stream +version +type +recorded_at +data)"));
    EXPECT_THAT(lines[1], HasSubstr("User-1"));
    EXPECT_THAT(lines[1], HasSubstr("UserCreated"));
    EXPECT_THAT(lines[1], HasSubstr(R"({"name":"ann"})"));
    EXPECT_THAT(lines[2], HasSubstr("UserRenamed"));
    // Aligned: every column starts at the same offset on every line.
    for (std::string_view column : {"stream", "type", "recorded_at", "data"}) {
        size_t at = lines[0].find(column);
        ASSERT_NE(at, std::string::npos);
        EXPECT_NE(lines[1][at], ' ') << column << " misaligned:\n" << r.out;
        EXPECT_EQ(lines[1][at - 1], ' ') << column << " misaligned:\n" << r.out;
        EXPECT_NE(lines[2][at], ' ') << column << " misaligned:\n" << r.out;
    }
    EXPECT_TRUE(ContainsIsoMicros(lines[1])) << lines[1];
}

TEST_F(CliTest, ReadJsonCarriesTheEnvelopeUnderItsFieldNames) {
    const std::string id = "0190a5c4-1f2e-7abc-8def-0123456789ab";
    Append("User-1", "UserCreated", R"({"name":"ann","tags":[1,2]})",
           {"--id", id, "--metadata", R"({"correlation_id":"c-1"})"});
    Append("User-1", "UserRenamed", R"("just a JSON string")");
    std::vector<Json> events = ReadJson({"read", "User-1"});
    ASSERT_EQ(events.size(), 2u);
    const std::set<std::string> kEnvelope = {
        "global_position", "event_id", "stream_id", "stream_version", "type", "data", "metadata", "recorded_at"};
    for (const Json& e : events) {
        EXPECT_EQ(Keys(e), kEnvelope);
        EXPECT_TRUE(IsIsoMicros(e["recorded_at"].get<std::string>())) << e["recorded_at"];
        EXPECT_EQ(e["stream_id"], "User-1");
        EXPECT_TRUE(e["metadata"].is_object());
    }
    EXPECT_EQ(events[0]["global_position"], 1);
    EXPECT_EQ(events[0]["event_id"], id);
    EXPECT_EQ(events[0]["stream_version"], 0);
    EXPECT_EQ(events[0]["type"], "UserCreated");
    EXPECT_EQ(events[0]["data"], Json::parse(R"({"name":"ann","tags":[1,2]})"));
    EXPECT_EQ(events[0]["metadata"], Json::parse(R"({"correlation_id":"c-1"})"));
    EXPECT_EQ(events[1]["global_position"], 2);
    EXPECT_EQ(events[1]["stream_version"], 1);
    EXPECT_EQ(events[1]["data"], "just a JSON string");
    EXPECT_EQ(events[1]["metadata"], Json::object());
    {
        const std::string generated = events[1]["event_id"].get<std::string>();
        auto parsed = keel::Uuid::Parse(generated);
        EXPECT_TRUE(parsed.ok() && parsed->ToString() == generated) << generated;  // canonical lower-case form
    }
    EXPECT_NE(events[1]["event_id"], id);
}

TEST_F(CliTest, ExpectedVersionConflictExits3AndNamesTheActualVersion) {
    Append("User-1", "A", "1");
    Append("User-1", "B", "2");
    RunResult r = Keel({"append", "User-1", "--type", "C", "--data", "3", "--expected", "0"});
    EXPECT_EQ(r.exit_code, 3);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err,
              "keel: append to User-1 failed: expected version 0 but the stream is at 1; re-read the stream and retry "
              "with --expected 1\n");

    r = Keel({"append", "User-1", "--type", "C", "--data", "3", "--expected", "no_stream"});
    EXPECT_EQ(r.exit_code, 3);
    EXPECT_THAT(r.err, HasSubstr("expected no stream but the stream is at 1"));

    r = Keel({"append", "User-2", "--type", "C", "--data", "3", "--expected", "exists"});
    EXPECT_EQ(r.exit_code, 3);
    ExpectOneErrorLine(r, "the stream does not exist");

    EXPECT_EQ(ReadJson({"read", "User-1"}).size(), 2u) << "a conflict writes nothing";

    r = Keel({"append", "User-1", "--type", "C", "--data", "3", "--expected", "1"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    r = Keel({"append", "User-3", "--type", "C", "--data", "3", "--expected", "-1"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(CliTest, InvalidDataJsonExits2NamingDataAndWritesNothing) {
    RunResult r = Keel({"append", "User-1", "--type", "UserCreated", "--data", "{name: ann}"});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.out, "");
    ExpectOneErrorLine(r, "--data is not valid JSON");
    EXPECT_FALSE(std::filesystem::exists(db_path_)) << "a rejected append must not even create the store";

    Append("User-1", "UserCreated", "{}");
    r = Keel({"append", "User-1", "--type", "UserRenamed", "--data", ""});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--data");
    r = Keel({"append", "User-1", "--type", "UserRenamed", "--data", "{}", "--metadata", "[1]"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--metadata must be a JSON object");
    EXPECT_EQ(Stats()["events"], 1);
}

TEST_F(CliTest, DataFromFileAndStdin) {
    std::filesystem::path file = dir_ / "payload.json";
    std::ofstream(file) << R"({"from":"file"})";
    Append("User-1", "FromFile", "@" + file.string());
    RunResult r = Keel({"append", "User-1", "--type", "FromStdin", "--data", "-"}, R"({"from":"stdin"})");
    ASSERT_EQ(r.exit_code, 0) << r.err;

    std::vector<Json> events = ReadJson({"read", "User-1"});
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[0]["data"], Json::parse(R"({"from":"file"})"));
    EXPECT_EQ(events[1]["data"], Json::parse(R"({"from":"stdin"})"));

    r = Keel({"append", "User-1", "--type", "X", "--data", "@" + (dir_ / "missing.json").string()});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "missing.json");
}

TEST_F(CliTest, MalformedIdIsRejected) {
    Append("User-1", "UserCreated", "{}");
    RunResult r = Keel({"append", "User-1", "--type", "X", "--data", "{}", "--id", "not-a-uuid"});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.out, "");
    ExpectOneErrorLine(r, "--id is not a valid UUID");
    r = Keel({"append", "User-1", "--type", "X", "--data", "{}", "--id", "0190a5c4-1f2e-7abc-8def-0123456789"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--id");
    EXPECT_EQ(Stats()["events"], 1);
}

TEST_F(CliTest, MissingStoreIsAOneLineUsageError) {
    RunResult r = RunRaw({"streams"});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.out, "");
    ExpectOneErrorLine(r, "--store");
    EXPECT_THAT(r.err, HasSubstr("KEEL_STORE"));
}

TEST_F(CliTest, KeelStoreEnvironmentVariableSelectsTheStore) {
    RunResult r = RunRaw({"append", "User-1", "--type", "UserCreated", "--data", "{}"}, {"KEEL_STORE=" + uri_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(std::filesystem::exists(db_path_));
    r = RunRaw({"read", "User-1", "--json"}, {"KEEL_STORE=" + uri_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<Json> events = JsonLines(r.out);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0]["type"], "UserCreated");

    // --store wins over the environment.
    std::string other = "sqlite://" + (dir_ / "other.db").string();
    r = RunRaw({"--store", other, "append", "User-9", "--type", "T", "--data", "{}"}, {"KEEL_STORE=" + uri_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(std::filesystem::exists(dir_ / "other.db"));
    EXPECT_EQ(Stats()["events"], 1);
}

TEST_F(CliTest, ReadOnlyCommandsDoNotCreateAMissingStore) {
    RunResult r = Keel({"streams"});
    EXPECT_EQ(r.exit_code, 5);
    ExpectOneErrorLine(r, "cannot open store");
    EXPECT_FALSE(std::filesystem::exists(db_path_));
}

TEST_F(CliTest, AllFiltersByCategoryAndType) {
    Append("User-1", "UserCreated", "{}");
    Append("Order-1", "OrderPlaced", "{}");
    Append("User-2", "UserCreated", "{}");
    Append("User-1", "UserRenamed", "{}");
    Append("Order-1", "OrderShipped", "{}");

    std::vector<Json> all = ReadJson({"all"});
    ASSERT_EQ(all.size(), 5u);
    for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i]["global_position"], i + 1);

    std::vector<Json> users = ReadJson({"all", "--category", "User"});
    ASSERT_EQ(users.size(), 3u);
    for (const Json& e : users) EXPECT_THAT(e["stream_id"].get<std::string>(), StartsWith("User-"));

    std::vector<Json> created = ReadJson({"all", "--type", "UserCreated"});
    ASSERT_EQ(created.size(), 2u);
    EXPECT_EQ(created[0]["stream_id"], "User-1");
    EXPECT_EQ(created[1]["stream_id"], "User-2");

    std::vector<Json> orders = ReadJson({"all", "--type", "OrderPlaced", "--type", "OrderShipped"});
    ASSERT_EQ(orders.size(), 2u);
    EXPECT_EQ(orders[0]["global_position"], 2);
    EXPECT_EQ(orders[1]["global_position"], 5);

    std::vector<Json> both = ReadJson({"all", "--category", "Order", "--type", "OrderShipped"});
    ASSERT_EQ(both.size(), 1u);
    EXPECT_EQ(both[0]["global_position"], 5);

    std::vector<Json> page = ReadJson({"all", "--from", "2", "--limit", "2"});
    ASSERT_EQ(page.size(), 2u);
    EXPECT_EQ(page[0]["global_position"], 2);
    EXPECT_EQ(page[1]["global_position"], 3);

    EXPECT_TRUE(ReadJson({"all", "--category", "Nothing"}).empty());
    RunResult r = Keel({"all", "--category", "Nothing"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.out, "(no events)\n");
}

TEST_F(CliTest, AllAndReadPageThroughMoreThanOnePage) {
    // The CLI asks the store for 1000 events at a time; 1005 events need two pages. Written through the library,
    // since 1005 processes would be slow.
    {
        auto store = keel::OpenStore(uri_).value();
        std::vector<keel::EventData> events;
        for (int i = 0; i < 1005; ++i) {
            keel::EventData event;
            event.type = "Tick";
            event.data = std::to_string(i);
            events.push_back(std::move(event));
        }
        ASSERT_TRUE(store->Append("Bulk-1", keel::ExpectedVersion::NoStream(), events).ok());
    }
    std::vector<Json> all = ReadJson({"all"});
    ASSERT_EQ(all.size(), 1005u);
    EXPECT_EQ(all.back()["global_position"], 1005);
    EXPECT_EQ(all.back()["data"], 1004);
    EXPECT_EQ(ReadJson({"all", "--limit", "1001"}).size(), 1001u);
    EXPECT_EQ(ReadJson({"read", "Bulk-1"}).size(), 1005u);
    std::vector<Json> backward = ReadJson({"read", "Bulk-1", "--backward", "--limit", "1002"});
    ASSERT_EQ(backward.size(), 1002u);
    EXPECT_EQ(backward.front()["stream_version"], 1004);
    EXPECT_EQ(backward.back()["stream_version"], 3);

    RunResult r = Keel({"read", "Bulk-1"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(Lines(r.out).size(), 1006u) << "one header and one line per event";
}

TEST_F(CliTest, ReadBackwardWithLimitAndFrom) {
    for (int i = 0; i < 5; ++i) Append("User-1", "E" + std::to_string(i), std::to_string(i));

    std::vector<Json> newest = ReadJson({"read", "User-1", "--backward", "--limit", "2"});
    ASSERT_EQ(newest.size(), 2u);
    EXPECT_EQ(newest[0]["stream_version"], 4);
    EXPECT_EQ(newest[1]["stream_version"], 3);

    std::vector<Json> down = ReadJson({"read", "User-1", "--backward", "--from", "1"});
    ASSERT_EQ(down.size(), 2u);
    EXPECT_EQ(down[0]["stream_version"], 1);
    EXPECT_EQ(down[1]["stream_version"], 0);

    std::vector<Json> middle = ReadJson({"read", "User-1", "--from", "1", "--limit", "2"});
    ASSERT_EQ(middle.size(), 2u);
    EXPECT_EQ(middle[0]["stream_version"], 1);
    EXPECT_EQ(middle[1]["stream_version"], 2);
    EXPECT_EQ(middle[1]["data"], 2);
}

TEST_F(CliTest, ReadOfAMissingStreamExits5) {
    Append("User-1", "UserCreated", "{}");
    RunResult r = Keel({"read", "User-404"});
    EXPECT_EQ(r.exit_code, 5);
    EXPECT_EQ(r.out, "");
    ExpectOneErrorLine(r, "User-404");
}

TEST_F(CliTest, StreamsListsStreamsWithVersionStateAndUpdated) {
    Append("User-1", "A", "{}");
    Append("User-1", "B", "{}");
    Append("Order-1", "C", "{}");
    RunResult r = Keel({"streams"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<std::string> lines = Lines(r.out);
    ASSERT_EQ(lines.size(), 3u) << r.out;
    EXPECT_THAT(lines[0], ::testing::MatchesRegex(R"(stream +version +state +updated)"));
    EXPECT_THAT(lines[1], ::testing::MatchesRegex(R"(Order-1 +0 +active +[0-9]{4}-.*Z)"));
    EXPECT_THAT(lines[2], ::testing::MatchesRegex(R"(User-1 +1 +active +[0-9]{4}-.*Z)"));

    std::vector<Json> streams = ReadJson({"streams", "--after", "Order-1"});
    ASSERT_EQ(streams.size(), 1u);
    EXPECT_EQ(streams[0]["stream_id"], "User-1");
    EXPECT_EQ(streams[0]["version"], 1);
    EXPECT_EQ(streams[0]["state"], "active");
    EXPECT_TRUE(IsIsoMicros(streams[0]["updated_at"].get<std::string>()));

    EXPECT_EQ(ReadJson({"streams", "--limit", "1"}).size(), 1u);
}

TEST_F(CliTest, StatsJsonCounts) {
    Append("User-1", "A", "{}");
    Append("User-1", "B", "{}");
    Append("Order-1", "C", "{}");
    Json stats = Stats();
    EXPECT_EQ(stats["backend"], "sqlite");
    EXPECT_THAT(stats["location"].get<std::string>(), HasSubstr("store.db"));
    EXPECT_EQ(stats["events"], 3);
    EXPECT_EQ(stats["streams"], 2);
    EXPECT_EQ(stats["head_position"], 3);
    EXPECT_GT(stats["size_bytes"].get<int64_t>(), 0);
    EXPECT_EQ(stats["checkpoints"], Json::array());

    ASSERT_TRUE(keel::OpenStore(uri_).value()->SaveCheckpoint("projection-a", 1).ok());
    stats = Stats();
    ASSERT_EQ(stats["checkpoints"].size(), 1u);
    EXPECT_EQ(stats["checkpoints"][0]["name"], "projection-a");
    EXPECT_EQ(stats["checkpoints"][0]["position"], 1);
    EXPECT_EQ(stats["checkpoints"][0]["lag"], 2);

    RunResult r = Keel({"stats"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, ::testing::ContainsRegex("events +3\n"));
    EXPECT_THAT(r.out, ::testing::ContainsRegex("streams +2\n"));
    EXPECT_THAT(r.out, ::testing::ContainsRegex("head +3\n"));
    EXPECT_THAT(r.out, ::testing::ContainsRegex("projection-a +1 +2 +[0-9]{4}-"));
}

TEST_F(CliTest, TailCountReceivesEventsAppendedByAnotherProcess) {
    Append("User-1", "BeforeTail", "{}");
    Child tail(Argv({"--store", uri_, "tail", "--count", "2"}), Environment());
    // The header appears once the subscription is live at the head.
    std::optional<std::string> header = tail.ReadLine(30s);
    ASSERT_TRUE(header.has_value()) << "tail printed no header";
    EXPECT_THAT(*header, StartsWith("position"));

    Append("User-1", "First", R"({"n":1})");
    Append("Order-7", "Second", R"({"n":2})");
    RunResult r = tail.Finish();
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    std::vector<std::string> lines = Lines(r.out);
    ASSERT_EQ(lines.size(), 3u) << r.out;
    EXPECT_THAT(lines[1], HasSubstr("First"));
    EXPECT_THAT(lines[1], HasSubstr("User-1"));
    EXPECT_THAT(lines[2], HasSubstr("Second"));
    EXPECT_THAT(lines[2], HasSubstr("Order-7"));
    EXPECT_THAT(r.out, ::testing::Not(HasSubstr("BeforeTail")));
}

TEST_F(CliTest, TailJsonFromAPositionWithFilters) {
    Append("User-1", "UserCreated", "{}");
    Append("Order-1", "OrderPlaced", "{}");
    Append("User-2", "UserCreated", "{}");
    RunResult r = Keel({"tail", "--from", "1", "--category", "User", "--count", "2", "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<Json> events = JsonLines(r.out);
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[0]["global_position"], 1);
    EXPECT_EQ(events[1]["global_position"], 3);

    r = Keel({"tail", "--from", "2", "--type", "UserCreated", "--count", "1", "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    events = JsonLines(r.out);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0]["global_position"], 3);
}

TEST_F(CliTest, TailStopsCleanlyOnSigintAndSigterm) {
    Append("User-1", "A", "{}");
    for (int signal : {SIGINT, SIGTERM}) {
        Child tail(Argv({"--store", uri_, "tail"}), Environment());
        ASSERT_TRUE(tail.ReadLine(30s).has_value()) << "tail printed no header";
        tail.Signal(signal);
        RunResult r = tail.Finish(30s);
        EXPECT_EQ(r.exit_code, 0) << "signal " << signal << ": " << r.err;
        EXPECT_EQ(r.err, "");
    }
}

TEST_F(CliTest, DeleteHardThenAppendExits4) {
    Append("User-1", "A", "{}");
    RunResult r = Keel({"delete", "User-1", "--hard"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, HasSubstr("hard-deleted User-1"));

    r = Keel({"append", "User-1", "--type", "B", "--data", "{}"});
    EXPECT_EQ(r.exit_code, 4);
    EXPECT_EQ(r.out, "");
    ExpectOneErrorLine(r, "append to User-1 failed: User-1 is hard-deleted (tombstoned)");

    r = Keel({"read", "User-1"});
    EXPECT_EQ(r.exit_code, 4);
    r = Keel({"delete", "User-1", "--hard"});
    EXPECT_EQ(r.exit_code, 4);
}

TEST_F(CliTest, SoftDeleteHidesTheStreamUntilTheNextAppend) {
    Append("User-1", "A", "{}");
    Append("User-1", "B", "{}");
    RunResult r = Keel({"delete", "User-1", "--expected", "0"});
    EXPECT_EQ(r.exit_code, 3);
    ExpectOneErrorLine(r, "delete of User-1 failed: expected version 0 but the stream is at 1");

    r = Keel({"delete", "User-1", "--expected", "1"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, HasSubstr("soft-deleted User-1"));
    r = Keel({"read", "User-1"});
    EXPECT_EQ(r.exit_code, 5);

    Append("User-1", "C", "{}");
    std::vector<Json> events = ReadJson({"read", "User-1"});
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back()["type"], "C");
    EXPECT_EQ(events.back()["stream_version"], 2) << "versions continue after a soft delete";
}

TEST_F(CliTest, MetadataShowAndSet) {
    for (int i = 0; i < 5; ++i) Append("User-1", "E", std::to_string(i));

    RunResult r = Keel({"metadata", "User-1", "--max-count", "2", "--max-age", "3600", "--custom", R"({"owner":"x"})"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, ::testing::ContainsRegex("max_count +2\n"));
    EXPECT_THAT(r.out, ::testing::ContainsRegex("max_age +3600 s\n"));

    std::vector<Json> shown = ReadJson({"metadata", "User-1"});
    ASSERT_EQ(shown.size(), 1u);
    EXPECT_EQ(shown[0]["stream_id"], "User-1");
    EXPECT_EQ(shown[0]["version"], 4);
    EXPECT_EQ(shown[0]["metadata"]["max_count"], 2);
    EXPECT_EQ(shown[0]["metadata"]["max_age_seconds"], 3600);
    EXPECT_EQ(shown[0]["metadata"]["truncate_before"], nullptr);
    EXPECT_EQ(shown[0]["metadata"]["custom"], Json::parse(R"({"owner":"x"})"));

    std::vector<Json> visible = ReadJson({"read", "User-1"});
    ASSERT_EQ(visible.size(), 2u) << "max count 2 hides all but the last two";
    EXPECT_EQ(visible[0]["stream_version"], 3);

    // Setting one field keeps the others; --clear drops them.
    ASSERT_EQ(Keel({"metadata", "User-1", "--truncate-before", "1"}).exit_code, 0);
    shown = ReadJson({"metadata", "User-1"});
    EXPECT_EQ(shown[0]["metadata"]["max_count"], 2);
    EXPECT_EQ(shown[0]["metadata"]["truncate_before"], 1);
    ASSERT_EQ(Keel({"metadata", "User-1", "--clear", "--truncate-before", "3"}).exit_code, 0);
    EXPECT_EQ(ReadJson({"read", "User-1"}).size(), 2u);
    shown = ReadJson({"metadata", "User-1"});
    EXPECT_EQ(shown[0]["metadata"]["max_count"], nullptr);

    r = Keel({"metadata", "User-404"});
    EXPECT_EQ(r.exit_code, 5);
    r = Keel({"metadata", "User-1", "--custom", "[]"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--custom must be a JSON object");
}

TEST_F(CliTest, UsageErrorsExit2WithOneLine) {
    Append("User-1", "A", "{}");
    RunResult r = Keel({"frobnicate"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "keel --help");

    r = Keel({"append", "User-1", "--data", "{}"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--type");

    r = Keel({"append", "User-1", "--type", "T", "--data", "{}", "--expected", "sometimes"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--expected 'sometimes'");

    r = Keel({"read", "User-1", "--limit", "-3"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--limit");

    r = Keel({"read", "User-1", "--limit", "many"});
    EXPECT_EQ(r.exit_code, 2);

    r = RunRaw({"--store", "nosuchscheme://x", "streams"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "cannot open store nosuchscheme://x");

    r = Keel({"append", "", "--type", "T", "--data", "{}"});
    EXPECT_EQ(r.exit_code, 2) << "an empty stream id is invalid input";
    EXPECT_EQ(Stats()["events"], 1);
}

TEST_F(CliTest, HelpAndVersionExit0) {
    RunResult r = RunRaw({"--help"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_THAT(r.out, HasSubstr("append"));
    EXPECT_THAT(r.out, HasSubstr("KEEL_STORE"));
    r = RunRaw({"append", "--help"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_THAT(r.out, HasSubstr("--expected"));
    r = RunRaw({"--version"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_THAT(r.out, ::testing::ContainsRegex("[0-9]+\\.[0-9]+\\.[0-9]+"));
}

TEST_F(CliTest, TableCutsLongDataToTheWidth) {
    std::string long_value(300, 'x');
    Append("User-1", "Long", "\"" + long_value + "\"");
    Child child(Argv({"--store", uri_, "read", "User-1"}), Environment({"COLUMNS=100"}));
    RunResult r = child.Finish();
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<std::string> lines = Lines(r.out);
    ASSERT_EQ(lines.size(), 2u);
    for (const auto& line : lines) EXPECT_LE(line.size(), 100u) << line;
    EXPECT_THAT(lines[1], HasSubstr("xxx..."));
}

// ---- outbox, relay, dead letters, projections ----

TEST_F(CliTest, RelayOncePublishesTheCommittedOutboxRowsInOrder) {
    ASSERT_TRUE(Broker().Declare("orders", "billing").ok());
    auto consumer = Broker().Consume("orders", "billing").value();
    CommitOutbox({"first", "second", "third"});

    RunResult r = KeelWithBroker({"relay", "--once"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(r.out, "published 3 outbox messages; 0 still pending\n");
    EXPECT_EQ(Receive(*consumer, 3), (std::vector<std::string>{"first", "second", "third"}));
    EXPECT_TRUE(NothingArrives(*consumer));

    Json outbox = Outbox();
    EXPECT_EQ(outbox["pending"], 0);
    EXPECT_EQ(outbox["published"], 3);
    EXPECT_EQ(outbox["last_position"], 3);
    EXPECT_EQ(outbox["oldest_pending_at"], nullptr);

    // Nothing left: a second round publishes nothing (and nothing twice).
    r = KeelWithBroker({"relay", "--once", "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<Json> lines = JsonLines(r.out);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0], Json::parse(R"({"published":0,"pending":0})"));
    EXPECT_TRUE(NothingArrives(*consumer));
}

TEST_F(CliTest, RelayOnceBatchLimitsOneRoundAndTheBrokerComesFromKeelBroker) {
    ASSERT_TRUE(Broker().Declare("orders", "billing").ok());
    auto consumer = Broker().Consume("orders", "billing").value();
    CommitOutbox({"a", "b", "c"});
    RunResult r = RunRaw({"--store", uri_, "relay", "--once", "--batch", "2"}, {"KEEL_BROKER=" + broker_uri_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "published 2 outbox messages; 1 still pending\n");
    r = RunRaw({"relay", "--once", "--window", "1"}, {"KEEL_BROKER=" + broker_uri_, "KEEL_STORE=" + uri_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "published 1 outbox message; 0 still pending\n");
    EXPECT_EQ(Receive(*consumer, 3), (std::vector<std::string>{"a", "b", "c"}));
}

TEST_F(CliTest, OutboxShowsPendingRowsAndTheOldestOne) {
    RunResult r = Keel({"append", "User-1", "--type", "T", "--data", "{}"});  // creates the store
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = Keel({"outbox"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, ::testing::ContainsRegex("pending +0\n"));
    EXPECT_THAT(r.out, ::testing::ContainsRegex("oldest pending +-\n"));

    CommitOutbox({"x", "y"});
    r = Keel({"outbox"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    std::vector<std::string> lines = Lines(r.out);
    ASSERT_EQ(lines.size(), 4u) << r.out;
    EXPECT_THAT(lines[0], ::testing::MatchesRegex("pending +2"));
    EXPECT_THAT(lines[1], ::testing::MatchesRegex("published kept +0"));
    EXPECT_THAT(lines[2], ::testing::MatchesRegex(R"(oldest pending +[0-9]{4}-.*Z \([0-9]+\.[0-9] s ago\))"));
    EXPECT_THAT(lines[3], ::testing::MatchesRegex("last position +2"));

    Json outbox = Outbox();
    EXPECT_EQ(Keys(outbox), (std::set<std::string>{"pending", "published", "oldest_pending_at",
                                                   "oldest_pending_age_seconds", "last_position"}));
    EXPECT_EQ(outbox["pending"], 2);
    EXPECT_TRUE(IsIsoMicros(outbox["oldest_pending_at"].get<std::string>())) << outbox;
    EXPECT_GE(outbox["oldest_pending_age_seconds"].get<double>(), 0.0);
    EXPECT_LT(outbox["oldest_pending_age_seconds"].get<double>(), 600.0);
}

TEST_F(CliTest, OutboxRepublishFromAPositionPublishesThoseRowsAgain) {
    ASSERT_TRUE(Broker().Declare("orders", "billing").ok());
    auto consumer = Broker().Consume("orders", "billing").value();
    CommitOutbox({"one", "two", "three"});
    ASSERT_EQ(KeelWithBroker({"relay", "--once"}).exit_code, 0);
    ASSERT_EQ(Receive(*consumer, 3).size(), 3u);

    RunResult r = Keel({"outbox", "republish", "--from", "2"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_THAT(r.out, StartsWith("marked 2 outbox rows from position 2 for re-publishing"));
    EXPECT_EQ(Outbox()["pending"], 2);

    r = KeelWithBroker({"relay", "--once"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "published 2 outbox messages; 0 still pending\n");
    EXPECT_EQ(Receive(*consumer, 2), (std::vector<std::string>{"two", "three"}));
    EXPECT_TRUE(NothingArrives(*consumer));

    std::vector<Json> lines = ReadJson({"outbox", "republish", "--from", "4"});
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0], Json::parse(R"({"from":4,"republished":0})"));

    r = Keel({"outbox", "republish", "--from", "0"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--from 0 is not an outbox position");
    r = Keel({"outbox", "republish"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--from");
    EXPECT_THAT(r.err, HasSubstr("keel outbox republish --help"));
    EXPECT_EQ(Outbox()["pending"], 0) << "failed republish requests change nothing";
}

TEST_F(CliTest, RelayOnceWhileAnotherRelayHoldsTheLeaseExits1) {
    ASSERT_TRUE(Broker().Declare("orders", "billing").ok());
    {
        keel::RelayOptions options;
        options.lease = 10s;
        auto relay = keel::Relay::Start(Store(), Broker(), options).value();
        auto deadline = std::chrono::steady_clock::now() + 10s;
        while (!relay->stats().leader && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
        ASSERT_TRUE(relay->stats().leader);

        RunResult r = KeelWithBroker({"relay", "--once"});
        EXPECT_EQ(r.exit_code, 1);
        EXPECT_EQ(r.out, "");
        ExpectOneErrorLine(r, "another relay holds the outbox lease");
        EXPECT_THAT(r.err, HasSubstr("a relay is already running"));
        relay->Stop();  // releases the lease
    }
    CommitOutbox({"after"});
    RunResult r = KeelWithBroker({"relay", "--once"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "published 1 outbox message; 0 still pending\n");
}

TEST_F(CliTest, RelayPublishesAsRowsAreCommittedAndStopsCleanlyOnSigterm) {
    ASSERT_TRUE(Broker().Declare("orders", "billing").ok());
    auto consumer = Broker().Consume("orders", "billing").value();
    CommitOutbox({"before"});
    Child relay(Argv({"--store", uri_, "--broker", broker_uri_, "relay"}), Environment());
    std::optional<std::string> started = relay.ReadLine(30s);
    ASSERT_TRUE(started.has_value()) << "relay printed nothing";
    EXPECT_EQ(*started, "relay running (batch 500, window 100); SIGINT or SIGTERM stops it");
    std::optional<std::string> first = relay.ReadLine(30s);
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(*first, "published 1 message (total 1)");
    EXPECT_EQ(Receive(*consumer, 1), (std::vector<std::string>{"before"}));

    // Rows committed by another process while the relay runs are published by its polling.
    CommitOutbox({"p", "q"});
    int64_t total = 1;
    while (total < 3) {
        std::optional<std::string> line = relay.ReadLine(30s);
        ASSERT_TRUE(line.has_value()) << "the relay did not publish the new rows";
        ASSERT_THAT(*line, ::testing::MatchesRegex(R"(published [12] messages? \(total [23]\))"));
        total = std::stoll(line->substr(line->find("total ") + 6));
    }
    EXPECT_EQ(Receive(*consumer, 2), (std::vector<std::string>{"p", "q"}));

    relay.Signal(SIGTERM);
    RunResult r = relay.Finish(30s);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    std::vector<std::string> lines = Lines(r.out);
    ASSERT_FALSE(lines.empty());
    EXPECT_THAT(lines.back(),
                ::testing::MatchesRegex(R"(relay stopped: published 3 messages in [0-9]+ rounds?, 0 failed rounds)"));
    EXPECT_EQ(Outbox()["pending"], 0);

    // The stopped relay released its lease: a new one may publish at once.
    CommitOutbox({"later"});
    r = KeelWithBroker({"relay", "--once"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(Receive(*consumer, 1), (std::vector<std::string>{"later"}));
}

TEST_F(CliTest, RelayJsonLinesAndSigint) {
    CommitOutbox({"m"});
    Child relay(Argv({"--store", uri_, "--broker", broker_uri_, "relay", "--json", "--batch", "7"}), Environment());
    std::optional<std::string> started = relay.ReadLine(30s);
    ASSERT_TRUE(started.has_value());
    EXPECT_EQ(Json::parse(*started), Json::parse(R"({"event":"started","batch":7,"window":100})"));
    std::optional<std::string> published = relay.ReadLine(30s);
    ASSERT_TRUE(published.has_value());
    EXPECT_EQ(Json::parse(*published), Json::parse(R"({"event":"published","count":1,"total":1})"));
    relay.Signal(SIGINT);
    RunResult r = relay.Finish(30s);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    std::vector<Json> lines = JsonLines(r.out);
    ASSERT_EQ(lines.size(), 3u) << r.out;
    EXPECT_EQ(lines[2]["event"], "stopped");
    EXPECT_EQ(lines[2]["published"], 1);
    EXPECT_EQ(lines[2]["failures"], 0);
    EXPECT_GE(lines[2]["rounds"].get<int64_t>(), 1);
}

// Holds the write lock of a SQLite database (a local: broker's file) so that the broker's publishes time out: a broker
// that fails, injected from outside the keel process.
class WriteLockHolder {
public:
    explicit WriteLockHolder(const std::filesystem::path& path) {
        EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK);
        EXPECT_EQ(sqlite3_exec(db_, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db_);
    }
    ~WriteLockHolder() {
        sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
        sqlite3_close(db_);
    }
    WriteLockHolder(const WriteLockHolder&) = delete;
    WriteLockHolder& operator=(const WriteLockHolder&) = delete;

private:
    sqlite3* db_ = nullptr;
};

// A broker that fails: its database is locked by the test (the local: broker waits 5 s for a lock, the relay's publish
// times out after 5 s). Exit 1 for --once and for a relay that is failing when it is stopped; nothing is lost.
TEST_F(CliTest, RelayExitsNonZeroWhenTheBrokerFails) {
    ASSERT_TRUE(Broker().Declare("orders", "billing").ok());
    CommitOutbox({"stuck"});
    {
        WriteLockHolder lock(broker_path_);
        RunResult r = KeelWithBroker({"relay", "--once"});
        EXPECT_EQ(r.exit_code, 1);
        EXPECT_EQ(r.out, "");
        ExpectOneErrorLine(r, "cannot open broker " + broker_uri_);
        EXPECT_THAT(r.err, HasSubstr("locked"));
    }
    EXPECT_EQ(Outbox()["pending"], 1);

    Child relay(Argv({"--store", uri_, "--broker", broker_uri_, "relay"}), Environment());
    ASSERT_TRUE(relay.ReadLine(30s).has_value()) << "relay printed nothing";
    ASSERT_EQ(relay.ReadLine(30s), "published 1 message (total 1)");
    {
        WriteLockHolder lock(broker_path_);  // now every publish times out
        CommitOutbox({"stuck"});
        EXPECT_TRUE(relay.WaitForStderr("keel: relay round failed: ", 30s));
        relay.Signal(SIGTERM);
        RunResult r = relay.Finish(30s);
        EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
        EXPECT_THAT(r.out, ::testing::ContainsRegex(
                               "relay stopped: published 1 message in [0-9]+ rounds?, [1-9][0-9]* failed rounds?\n$"));
        EXPECT_THAT(r.err, HasSubstr("retrying with backoff"));
        std::vector<std::string> errors = Lines(r.err);
        ASSERT_FALSE(errors.empty());
        EXPECT_THAT(errors.back(), StartsWith("keel: the relay stopped while failing: "));
        EXPECT_THAT(errors.back(), HasSubstr("; check the broker"));
    }
    EXPECT_EQ(Outbox()["pending"], 1) << "an unconfirmed row stays pending";

    // The broker is back: nothing was lost.
    auto consumer = Broker().Consume("orders", "billing").value();
    RunResult r = KeelWithBroker({"relay", "--once"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "published 1 outbox message; 0 still pending\n");
}

TEST_F(CliTest, RelayUsageAndOpenErrors) {
    CommitOutbox({"m"});
    RunResult r = Keel({"relay", "--once"});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.out, "");
    ExpectOneErrorLine(r, "no broker given");
    EXPECT_THAT(r.err, HasSubstr("KEEL_BROKER"));

    r = RunRaw({"--broker", broker_uri_, "relay", "--once"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "no store given");

    r = Keel({"--broker", "nosuchbroker://x", "relay", "--once"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "cannot open broker nosuchbroker://x");

    r = Keel({"--broker", "local:", "relay", "--once"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "cannot open broker local:");

    // The broker cannot be opened (its directory does not exist): a broker failure, exit 1.
    r = Keel({"--broker", "local://" + (dir_ / "no" / "such" / "dir" / "b.db").string(), "relay", "--once"});
    EXPECT_EQ(r.exit_code, 1);
    ExpectOneErrorLine(r, "cannot open broker");

    r = KeelWithBroker({"relay", "--once", "--batch", "0"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--batch must be at least 1");
    r = KeelWithBroker({"relay", "--window", "-1"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "--window");

    // A missing store is not created, and a store without an outbox is told apart.
    r = RunRaw({"--store", "sqlite://" + (dir_ / "missing.db").string(), "--broker", broker_uri_, "relay", "--once"});
    EXPECT_EQ(r.exit_code, 5);
    ExpectOneErrorLine(r, "cannot open store");
    EXPECT_FALSE(std::filesystem::exists(dir_ / "missing.db"));
    r = RunRaw({"--store", "memory:", "--broker", broker_uri_, "relay", "--once"});
    EXPECT_EQ(r.exit_code, 1);
    ExpectOneErrorLine(r, "this store has no outbox");
    r = RunRaw({"--store", "memory:", "--broker", broker_uri_, "relay"});
    EXPECT_EQ(r.exit_code, 1);
    ExpectOneErrorLine(r, "this store has no outbox");
    r = RunRaw({"--store", "memory:", "outbox"});
    EXPECT_EQ(r.exit_code, 1);
    ExpectOneErrorLine(r, "this store has no outbox");

    EXPECT_EQ(Outbox()["pending"], 1) << "no failed command published or lost anything";
}

TEST_F(CliTest, DlqListShowsTheErrorAndReplayMakesTheMessageReceivableAgain) {
    ASSERT_TRUE(Broker().Declare("orders", "billing").ok());
    auto consumer = Broker().Consume("orders", "billing").value();
    ASSERT_TRUE(
        Broker().PublishReliable({"orders", "Order-7", keel::Uuid::Generate(), R"({"total":12})", {}}, 5s).ok());
    {
        auto delivery = consumer->Receive(10s).value();
        ASSERT_TRUE(delivery.has_value());
        ASSERT_TRUE(consumer->DeadLetter(*delivery, "cannot parse the order: total is not a string").ok());
    }
    EXPECT_TRUE(NothingArrives(*consumer));

    // A broker only: no --store, and no store file appears.
    RunResult r = KeelBrokerOnly({"dlq", "list", "orders", "billing"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    std::vector<std::string> lines = Lines(r.out);
    ASSERT_EQ(lines.size(), 2u) << r.out;
    EXPECT_THAT(lines[0], ::testing::MatchesRegex(R"( *id +attempts +dead_lettered_at +key +error +payload)"));
    EXPECT_THAT(lines[1], HasSubstr("Order-7"));
    EXPECT_THAT(lines[1], HasSubstr("cannot parse the order"));
    EXPECT_THAT(lines[1], HasSubstr(R"({"total":12})"));
    EXPECT_TRUE(ContainsIsoMicros(lines[1])) << lines[1];
    EXPECT_FALSE(std::filesystem::exists(db_path_));

    r = KeelBrokerOnly({"dlq", "list", "orders", "billing", "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<Json> letters = JsonLines(r.out);
    ASSERT_EQ(letters.size(), 1u);
    EXPECT_EQ(Keys(letters[0]), (std::set<std::string>{"id", "destination", "group", "message_id", "key", "attempts",
                                                       "dead_lettered_at", "error", "payload", "headers"}));
    EXPECT_EQ(letters[0]["error"], "cannot parse the order: total is not a string");
    EXPECT_EQ(letters[0]["payload"], Json::parse(R"({"total":12})"));
    EXPECT_EQ(letters[0]["key"], "Order-7");
    EXPECT_EQ(letters[0]["destination"], "orders");
    EXPECT_EQ(letters[0]["group"], "billing");
    EXPECT_GE(letters[0]["attempts"].get<int>(), 1);

    r = KeelBrokerOnly({"dlq", "replay", "orders", "billing"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "replayed 1 dead letter of orders/billing: the group receives it again\n");
    EXPECT_EQ(Receive(*consumer, 1), (std::vector<std::string>{R"({"total":12})"}));

    r = KeelBrokerOnly({"dlq", "list", "orders", "billing"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "(no dead letters in orders/billing)\n");
    EXPECT_FALSE(std::filesystem::exists(db_path_));
}

TEST_F(CliTest, DlqReplayByIdAndListLimit) {
    ASSERT_TRUE(Broker().Declare("orders", "billing").ok());
    auto consumer = Broker().Consume("orders", "billing").value();
    for (std::string payload : {"p1", "p2", "p3"}) {
        ASSERT_TRUE(Broker().PublishReliable({"orders", "K-" + payload, keel::Uuid::Generate(), payload, {}}, 5s).ok());
    }
    for (int i = 0; i < 3; ++i) {
        auto delivery = consumer->Receive(10s).value();
        ASSERT_TRUE(delivery.has_value());
        ASSERT_TRUE(consumer->DeadLetter(*delivery, "boom " + delivery->message.payload).ok());
    }
    RunResult r = KeelBrokerOnly({"--json", "dlq", "list", "orders", "billing"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<Json> letters = JsonLines(r.out);
    ASSERT_EQ(letters.size(), 3u);
    EXPECT_EQ(letters[0]["payload"], "p1") << "oldest first";

    r = KeelBrokerOnly({"--json", "dlq", "list", "orders", "billing", "--limit", "2"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(JsonLines(r.out).size(), 2u);

    const std::string second = letters[1]["id"].get<std::string>();
    r = KeelBrokerOnly({"dlq", "replay", "orders", "billing", "--id", second, "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(JsonLines(r.out).at(0), Json::parse(R"({"destination":"orders","group":"billing","replayed":1})"));
    EXPECT_EQ(Receive(*consumer, 1), (std::vector<std::string>{"p2"}));

    // Replaying it again: it is no dead letter any more (exit 5), and the others stay.
    r = KeelBrokerOnly({"dlq", "replay", "orders", "billing", "--id", second});
    EXPECT_EQ(r.exit_code, 5);
    EXPECT_EQ(r.out, "replayed 0 dead letters of orders/billing: the group receives them again\n");
    ExpectOneErrorLine(r, "1 of the 1 ids given is not a dead letter of orders/billing");
    r = KeelBrokerOnly({"--json", "dlq", "list", "orders", "billing"});
    letters = JsonLines(r.out);
    ASSERT_EQ(letters.size(), 2u);
    EXPECT_EQ(letters[0]["payload"], "p1");
    EXPECT_EQ(letters[1]["payload"], "p3");
    EXPECT_TRUE(NothingArrives(*consumer));
}

TEST_F(CliTest, DlqUsageAndBrokerErrors) {
    RunResult r = RunRaw({"dlq", "list", "orders", "billing"});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.out, "");
    ExpectOneErrorLine(r, "no broker given");
    EXPECT_THAT(r.err, HasSubstr("KEEL_BROKER"));

    // A missing local: file is not created by the commands that only look at (or edit) its queues.
    r = KeelBrokerOnly({"dlq", "list", "orders", "billing"});
    EXPECT_EQ(r.exit_code, 5);
    ExpectOneErrorLine(r, "cannot open broker " + broker_uri_);
    EXPECT_FALSE(std::filesystem::exists(broker_path_));
    r = KeelBrokerOnly({"dlq", "replay", "orders", "billing"});
    EXPECT_EQ(r.exit_code, 5);
    EXPECT_FALSE(std::filesystem::exists(broker_path_));

    ASSERT_TRUE(Broker().Declare("orders", "billing").ok());
    r = RunRaw({"dlq", "list", "orders", "billing"}, {"KEEL_BROKER=" + broker_uri_});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "(no dead letters in orders/billing)\n");

    r = KeelBrokerOnly({"dlq", "list", "orders", "shipping"});
    EXPECT_EQ(r.exit_code, 5);
    ExpectOneErrorLine(r, "listing the dead letters of orders/shipping failed");
    r = KeelBrokerOnly({"dlq", "replay", "orders", "billing", "--id", "not-an-id"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "not-an-id");
    r = KeelBrokerOnly({"dlq", "list", "bad name!", "billing"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "bad name!");

    r = KeelBrokerOnly({"dlq", "list", "orders"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "group");
    EXPECT_THAT(r.err, HasSubstr("keel dlq list --help"));
    r = KeelBrokerOnly({"dlq"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "keel dlq --help");
    r = RunRaw({"--broker", "nosuchbroker://x", "dlq", "list", "orders", "billing"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "unknown scheme");
    std::ofstream(dir_ / "not-a-broker.db") << "just text, not SQLite";
    r = RunRaw({"--broker", "local://" + (dir_ / "not-a-broker.db").string(), "dlq", "list", "orders", "billing"});
    EXPECT_EQ(r.exit_code, 1);
    ExpectOneErrorLine(r, "not a keel broker database");
}

TEST_F(CliTest, ProjectionRebuildSetsTheRebuildMarkerAndListShowsIt) {
    for (int i = 0; i < 3; ++i) Append("Order-1", "OrderNoted", std::to_string(i));
    ASSERT_TRUE(Store().SaveCheckpoint(keel::ProjectionCheckpointName("order-totals"), 3).ok());
    ASSERT_TRUE(Store().SaveCheckpoint("subscription-a", 1).ok());

    RunResult r = Keel({"projection", "list"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<std::string> lines = Lines(r.out);
    ASSERT_EQ(lines.size(), 2u) << "subscription checkpoints are not projections:\n" << r.out;
    EXPECT_THAT(lines[0], ::testing::MatchesRegex(R"(projection +position +lag +state +updated)"));
    EXPECT_THAT(lines[1], ::testing::MatchesRegex(R"(order-totals +3 +0 +caught up +[0-9]{4}-.*Z)"));

    r = Keel({"projection", "rebuild", "order-totals"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_THAT(r.out, HasSubstr("rebuild of projection order-totals requested"));
    EXPECT_THAT(r.out, HasSubstr("checkpoint projection:order-totals was at 3"));
    EXPECT_THAT(r.out, HasSubstr("resets its read model and replays"));
    EXPECT_EQ(Store().LoadCheckpoint(keel::ProjectionCheckpointName("order-totals")).value(), -1);

    r = Keel({"projection", "list"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, ::testing::ContainsRegex("order-totals +rebuild +3 +rebuild requested +[0-9]{4}-"));
    std::vector<Json> projections = ReadJson({"projection", "list"});
    ASSERT_EQ(projections.size(), 1u);
    EXPECT_EQ(projections[0]["name"], "order-totals");
    EXPECT_EQ(projections[0]["checkpoint"], "projection:order-totals");
    EXPECT_EQ(projections[0]["position"], -1);
    EXPECT_EQ(projections[0]["lag"], 3) << "a projection about to rebuild lags by the whole head";
    EXPECT_EQ(projections[0]["rebuild_requested"], true);

    std::vector<Json> again = ReadJson({"projection", "rebuild", "order-totals"});
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0], Json::parse(R"({"projection":"order-totals","checkpoint":"projection:order-totals",
                                         "previous_position":-1,"rebuild_requested":true})"));
}

TEST_F(CliTest, ProjectionRebuildOfAnUnknownNameNeedsForce) {
    Append("Order-1", "OrderNoted", "1");
    RunResult r = Keel({"projection", "rebuild", "order-totlas"});
    EXPECT_EQ(r.exit_code, 5);
    EXPECT_EQ(r.out, "");
    ExpectOneErrorLine(r, "projection order-totlas has no checkpoint");
    EXPECT_THAT(r.err, HasSubstr("--force"));
    EXPECT_EQ(Store().LoadCheckpoint("projection:order-totlas").status().code(), keel::StatusCode::kNotFound);

    r = Keel({"projection", "rebuild", "new-projection", "--force"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, HasSubstr("checkpoint projection:new-projection did not exist yet"));
    EXPECT_EQ(Store().LoadCheckpoint("projection:new-projection").value(), -1);

    r = Keel({"projection", "rebuild"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "name");
    EXPECT_THAT(r.err, HasSubstr("keel projection rebuild --help"));
    r = Keel({"projection", "rebuild", "", "--force"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "projection name is empty");
    r = Keel({"projection", "rebuild", "bad\nname", "--force"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "projection name");
    r = Keel({"projection"});
    EXPECT_EQ(r.exit_code, 2);
    ExpectOneErrorLine(r, "keel projection --help");
    r = RunRaw({"--store", "sqlite://" + (dir_ / "missing.db").string(), "projection", "rebuild", "x", "--force"});
    EXPECT_EQ(r.exit_code, 5);
    EXPECT_FALSE(std::filesystem::exists(dir_ / "missing.db"));

    r = Keel({"projection", "list"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, ::testing::ContainsRegex("new-projection +rebuild +1 +rebuild requested"));
}

// End to end: a projection running in this process notices a rebuild requested by the keel process, resets its read
// model and replays every event.
TEST_F(CliTest, ProjectionRebuildMakesTheRunningProjectionResetAndReplay) {
    for (int i = 1; i <= 3; ++i) Append("Order-1", "OrderNoted", std::to_string(i));
    {
        auto uow = keel::UnitOfWork::Begin(Store()).value();
        ASSERT_TRUE(uow.Exec("CREATE TABLE notes (n INTEGER NOT NULL)").ok());
        ASSERT_TRUE(uow.Commit().ok());
    }
    std::atomic<int> resets{0};
    std::atomic<int> applied{0};
    keel::ProjectionOptions options;
    options.name = "notes";
    options.poll_interval = 20ms;
    options.reset = [&](keel::UnitOfWork& uow) {
        ++resets;
        return uow.Exec("DELETE FROM notes").status();
    };
    auto projection =
        keel::Projection::Start(Store(), options, [&](keel::UnitOfWork& uow, const keel::RecordedEvent& e) {
            ++applied;
            return uow.Exec("INSERT INTO notes (n) VALUES (?)", {static_cast<int64_t>(std::stoll(e.data))}).status();
        }).value();
    ASSERT_TRUE(projection->WaitFor(3, 30s).ok());
    EXPECT_EQ(applied.load(), 3);

    RunResult r = Keel({"projection", "rebuild", "notes"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while ((resets.load() == 0 || applied.load() < 6) && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(10ms);
    }
    EXPECT_EQ(resets.load(), 1);
    EXPECT_EQ(applied.load(), 6) << "every event is applied again after the reset";
    ASSERT_TRUE(projection->WaitFor(3, 30s).ok());
    projection->Stop();
    auto uow = keel::UnitOfWork::Begin(Store()).value();
    EXPECT_EQ(uow.Query("SELECT count(*), sum(n) FROM notes").value().Int(0, 0).value(), 3);
    EXPECT_EQ(uow.Query("SELECT sum(n) FROM notes").value().Int(0, 0).value(), 6);
    EXPECT_EQ(Store().LoadCheckpoint("projection:notes").value(), 3);
}

TEST_F(CliTest, StatsShowsProjectionCheckpointsWithTheirLag) {
    for (int i = 0; i < 5; ++i) Append("Order-1", "OrderNoted", std::to_string(i));
    ASSERT_TRUE(Store().SaveCheckpoint(keel::ProjectionCheckpointName("order-totals"), 2).ok());
    ASSERT_TRUE(keel::RequestProjectionRebuild(Store(), "customer-view").ok());

    Json stats = Stats();
    ASSERT_EQ(stats["checkpoints"].size(), 2u) << stats;
    std::map<std::string, Json> by_name;
    for (const Json& cp : stats["checkpoints"]) by_name[cp["name"].get<std::string>()] = cp;
    ASSERT_TRUE(by_name.count("projection:order-totals")) << stats;
    ASSERT_TRUE(by_name.count("projection:customer-view")) << stats;
    EXPECT_EQ(by_name["projection:order-totals"]["position"], 2);
    EXPECT_EQ(by_name["projection:order-totals"]["lag"], 3);
    EXPECT_EQ(by_name["projection:customer-view"]["position"], -1);
    EXPECT_EQ(by_name["projection:customer-view"]["lag"], 5) << "the rebuild marker lags by the whole head, not head+1";

    RunResult r = Keel({"stats"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, ::testing::ContainsRegex("projection:order-totals +2 +3 +[0-9]{4}-"));
    EXPECT_THAT(r.out, ::testing::ContainsRegex("projection:customer-view +rebuild +5 +[0-9]{4}-"));
}

TEST_F(CliTest, HelpListsTheOutboxBrokerAndProjectionCommands) {
    RunResult r = RunRaw({"--help"});
    EXPECT_EQ(r.exit_code, 0);
    for (std::string_view word : {"relay", "outbox", "dlq", "projection", "KEEL_BROKER"}) {
        EXPECT_THAT(r.out, HasSubstr(std::string(word)));
    }
    r = RunRaw({"dlq", "--help"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_THAT(r.out, HasSubstr("replay"));
    r = RunRaw({"relay", "--help"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_THAT(r.out, HasSubstr("--once"));
    r = Keel({"frobnicate"});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_THAT(r.err, HasSubstr("relay, outbox, dlq and projection"));
}

// In-process tests of the formatting helpers.

TEST(CliOutput, FormatTimestampIsIso8601UtcWithMicroseconds) {
    EXPECT_EQ(keel::cli::FormatTimestamp(0), "1970-01-01T00:00:00.000000Z");
    EXPECT_EQ(keel::cli::FormatTimestamp(1'795'365'901'123'456), "2026-11-22T16:45:01.123456Z");
    EXPECT_EQ(keel::cli::FormatTimestamp(-1), "1969-12-31T23:59:59.999999Z");
}

TEST(CliOutput, EventToJsonEmbedsJsonDataAndKeepsOtherDataAsAString) {
    keel::RecordedEvent event;
    event.global_position = 7;
    event.stream_id = "User-1";
    event.type = "T";
    event.data = "not json {";
    event.recorded_at = 1'000'001;
    Json json = keel::cli::EventToJson(event);
    EXPECT_EQ(json["data"], "not json {");
    EXPECT_EQ(json["metadata"], Json::object());
    EXPECT_EQ(json["recorded_at"], "1970-01-01T00:00:01.000001Z");
    EXPECT_EQ(json["event_id"], "00000000-0000-0000-0000-000000000000");

    event.data = R"([1,{"a":null}])";
    event.metadata = R"({"tenant":"t"})";
    json = keel::cli::EventToJson(event);
    EXPECT_EQ(json["data"], Json::parse(R"([1,{"a":null}])"));
    EXPECT_EQ(json["metadata"]["tenant"], "t");

    event.data = std::string(1000, '[') + std::string(1000, ']');
    EXPECT_TRUE(keel::cli::EventToJson(event)["data"].is_string()) << "absurdly deep JSON stays a string";
}

TEST(CliOutput, CheckpointLagCountsTheRebuildMarkerAsZero) {
    EXPECT_EQ(keel::cli::CheckpointLag(10, 4), 6);
    EXPECT_EQ(keel::cli::CheckpointLag(10, 10), 0);
    EXPECT_EQ(keel::cli::CheckpointLag(10, keel::cli::kProjectionRebuildMarker), 10);
    EXPECT_EQ(keel::cli::CheckpointLag(0, 0), 0);
    EXPECT_TRUE(keel::cli::IsProjectionCheckpoint("projection:x"));
    EXPECT_FALSE(keel::cli::IsProjectionCheckpoint("subscription:x"));
}

TEST(CliOutput, FitCellCutsOnCodePointsAndHidesControlCharacters) {
    EXPECT_EQ(keel::cli::FitCell("short", 10), "short");
    EXPECT_EQ(keel::cli::FitCell("a\nb\tc", 10), "a b c");
    EXPECT_EQ(keel::cli::FitCell("abcdefghijkl", 8), "abcde...");
    std::string cut = keel::cli::FitCell("ééééééééé", 6);
    EXPECT_EQ(cut, "ééé...");
    EXPECT_EQ(keel::cli::DisplayWidth(cut), 6u);
}

}  // namespace
