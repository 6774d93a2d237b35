#pragma once
// KeeldProcess: runs the keeld binary as a child process for black-box tests — fork/exec with a temporary storage
// directory, the port read from its "keeld listening on http://127.0.0.1:PORT" line, stop (SIGTERM), SIGKILL and
// restart on the same storage. keeld's stdout and stderr go to a log file in the temporary directory (LogTail()).
//
// Thread-safety: base_url()/api() may be called from any thread (a restart changes them); Start/Stop/Kill/Restart
// from one thread at a time.

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <sys/types.h>

#include "keel/status.hpp"

namespace keel::keeld_test {

/// The keeld binary the tests run (from CMake's $<TARGET_FILE:keeld>; the environment variable KEELD_BINARY
/// overrides it).
std::string KeeldBinary();

struct KeeldOptions {
    /// --storage; empty: sqlite:///<temp dir>/keeld.db. Default: empty.
    std::string storage;
    /// --listen. Default: 127.0.0.1:0 (any free port).
    std::string listen = "127.0.0.1:0";
    /// --cron-interval-ms; 0 leaves the flag out. Default: 100.
    int cron_interval_ms = 100;
    /// Further arguments, e.g. {"--token", "T"} or {"--allow", "http://10.0.0.1/"}.
    std::vector<std::string> extra_args;
    /// How long Start() waits for the listening line. Default: 30 s (sanitizer builds start slowly).
    std::chrono::seconds ready_timeout{30};
};

class KeeldProcess {
public:
    explicit KeeldProcess(KeeldOptions options = {});
    /// Stops the process (SIGTERM, then SIGKILL after 10 s) and removes the temporary directory.
    ~KeeldProcess();
    KeeldProcess(const KeeldProcess&) = delete;
    KeeldProcess& operator=(const KeeldProcess&) = delete;

    /// Starts keeld and waits for its listening line. kUnavailable with the log tail when it exits or stays silent.
    Status Start();
    /// Start() in two halves, so that several processes can be started at once from one thread (the child is bound
    /// to the thread that forks it: PR_SET_PDEATHSIG fires when that thread ends, so never fork from a short-lived
    /// thread).
    Status Launch();
    Status AwaitReady();
    /// SIGTERM and wait (up to `grace`, then SIGKILL). Returns the exit description ("exit 0", "signal 9").
    std::string Stop(std::chrono::milliseconds grace = std::chrono::milliseconds(10000));
    /// SIGKILL and reap.
    void Kill();
    /// Start() again on the same storage (after Stop or Kill). The port may change.
    Status Restart();
    bool running() const { return pid_ > 0; }
    pid_t pid() const { return pid_; }

    /// "http://127.0.0.1:PORT" of the running process.
    std::string base_url() const;
    /// base_url() + "/api/dtmsvr"
    std::string api() const { return base_url() + "/api/dtmsvr"; }
    const std::string& storage() const { return storage_; }
    const std::filesystem::path& dir() const { return dir_; }
    /// The last `bytes` of everything keeld wrote to stdout/stderr across all its runs.
    std::string LogTail(size_t bytes = 4000) const;

    /// Runs keeld with exactly `args` (no defaults added) until it exits or `timeout` passes (then SIGKILL).
    /// Returns the exit code (or -signal) and sets *output to what it printed on stdout and stderr.
    static int RunToExit(const std::vector<std::string>& args, std::chrono::milliseconds timeout, std::string* output);

private:
    KeeldOptions options_;
    std::filesystem::path dir_;
    std::string storage_;
    std::filesystem::path log_path_;
    pid_t pid_ = -1;
    int run_ = 0;
    std::streamoff start_offset_ = 0;
    mutable std::mutex mu_;
    std::string base_url_;  // guarded by mu_
};

/// A fresh directory under $TMPDIR (or /tmp); removed on destruction.
class ScratchDir {
public:
    explicit ScratchDir(const std::string& tag);
    ~ScratchDir();
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

}  // namespace keel::keeld_test
