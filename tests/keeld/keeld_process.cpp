#include "keeld/keeld_process.hpp"

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef KEEL_KEELD_BINARY
#error "KEEL_KEELD_BINARY must name the keeld executable"
#endif

namespace keel::keeld_test {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::string_view kReadyPrefix = "keeld listening on ";

std::string ReadFrom(const std::filesystem::path& path, std::streamoff offset) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return {};
    in.seekg(offset);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

std::streamoff FileSize(const std::filesystem::path& path) {
    std::error_code ec;
    auto n = std::filesystem::file_size(path, ec);
    return ec ? 0 : static_cast<std::streamoff>(n);
}

// fork + exec of `argv` with stdout and stderr appended to `log`; the child dies with the test process.
pid_t Spawn(const std::vector<std::string>& args, const std::filesystem::path& log, std::string* error) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        *error = "open " + log.string() + ": " + std::strerror(errno);
        return -1;
    }
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
        *error = std::string("fork: ") + std::strerror(errno);
        close(fd);
        return -1;
    }
    if (pid == 0) {
        // Child: async-signal-safe calls only until exec.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(125);
        if (dup2(fd, STDOUT_FILENO) < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(126);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, STDIN_FILENO);
        close_range(3, ~0U, 0);  // no inherited sockets of the test process (the busi server's listener)
        execv(argv[0], argv.data());
        _exit(127);
    }
    close(fd);
    return pid;
}

std::string DescribeWait(int status) {
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
    return "status " + std::to_string(status);
}

// Waits for `pid` until `deadline`; true (and *status) once reaped.
bool WaitUntil(pid_t pid, Clock::time_point deadline, int* status) {
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid) return true;
        if (r < 0 && errno != EINTR) return true;  // not our child any more
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(5ms);
    }
}

}  // namespace

std::string KeeldBinary() {
    if (const char* env = std::getenv("KEELD_BINARY"); env != nullptr && *env != '\0') return env;
    return KEEL_KEELD_BINARY;
}

ScratchDir::ScratchDir(const std::string& tag) {
    std::string prefix;
    for (char c : tag) prefix += std::isalnum(static_cast<unsigned char>(c)) != 0 ? c : '_';
    if (prefix.size() > 60) prefix.resize(60);
    std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
    path_ = pattern;
}

ScratchDir::~ScratchDir() {
    std::error_code ec;
    if (std::getenv("KEELD_TEST_KEEP") == nullptr) std::filesystem::remove_all(path_, ec);
}

KeeldProcess::KeeldProcess(KeeldOptions options) : options_(std::move(options)) {
    std::string pattern = (std::filesystem::temp_directory_path() / "keeld-test-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
    dir_ = pattern;
    storage_ = options_.storage.empty() ? "sqlite://" + (dir_ / "keeld.db").string() : options_.storage;
    log_path_ = dir_ / "keeld.log";
}

KeeldProcess::~KeeldProcess() {
    if (running()) Stop();
    std::error_code ec;
    if (std::getenv("KEELD_TEST_KEEP") == nullptr) std::filesystem::remove_all(dir_, ec);
}

Status KeeldProcess::Start() {
    KEEL_RETURN_IF_ERROR(Launch());
    return AwaitReady();
}

Status KeeldProcess::Launch() {
    if (running()) return Status::FailedPrecondition("keeld is already running (pid " + std::to_string(pid_) + ")");
    ++run_;
    std::vector<std::string> args = {KeeldBinary(), "--listen", options_.listen, "--storage", storage_};
    if (options_.cron_interval_ms > 0) {
        args.push_back("--cron-interval-ms");
        args.push_back(std::to_string(options_.cron_interval_ms));
    }
    args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
    {
        std::ofstream out(log_path_, std::ios::app);
        out << "=== test harness: run " << run_ << ":";
        for (const auto& a : args) out << ' ' << a;
        out << '\n';
    }
    start_offset_ = FileSize(log_path_);
    std::string error;
    pid_ = Spawn(args, log_path_, &error);
    if (pid_ < 0) return Status::Unavailable("cannot start keeld: " + error);
    return Status::Ok();
}

Status KeeldProcess::AwaitReady() {
    if (!running()) return Status::FailedPrecondition("keeld was not launched");
    const std::streamoff start_offset = start_offset_;
    const auto deadline = Clock::now() + options_.ready_timeout;
    for (;;) {
        std::string out = ReadFrom(log_path_, start_offset);
        size_t at = out.find(kReadyPrefix);
        if (at != std::string::npos) {
            size_t nl = out.find('\n', at);
            if (nl != std::string::npos) {
                std::string url = out.substr(at + kReadyPrefix.size(), nl - at - kReadyPrefix.size());
                while (!url.empty() && (url.back() == '\r' || url.back() == ' ')) url.pop_back();
                std::lock_guard lock(mu_);
                base_url_ = url;
                return Status::Ok();
            }
        }
        int status = 0;
        pid_t r = waitpid(pid_, &status, WNOHANG);
        if (r == pid_) {
            pid_ = -1;
            return Status::Unavailable("keeld exited before listening (" + DescribeWait(status) + "); output:\n" +
                                       LogTail());
        }
        if (Clock::now() >= deadline) {
            Kill();
            return Status::Unavailable("keeld printed no \"keeld listening on\" line within " +
                                       std::to_string(options_.ready_timeout.count()) + " s; output:\n" + LogTail());
        }
        std::this_thread::sleep_for(10ms);
    }
}

std::string KeeldProcess::Stop(std::chrono::milliseconds grace) {
    if (!running()) return "not running";
    kill(pid_, SIGTERM);
    int status = 0;
    std::string how;
    if (WaitUntil(pid_, Clock::now() + grace, &status)) {
        how = DescribeWait(status);
    } else {
        kill(pid_, SIGKILL);
        WaitUntil(pid_, Clock::now() + 10s, &status);
        how = "did not stop within " + std::to_string(grace.count()) + " ms of SIGTERM; killed";
    }
    pid_ = -1;
    return how;
}

void KeeldProcess::Kill() {
    if (!running()) return;
    kill(pid_, SIGKILL);
    int status = 0;
    WaitUntil(pid_, Clock::now() + 10s, &status);
    pid_ = -1;
}

Status KeeldProcess::Restart() {
    if (running()) Kill();
    return Start();
}

std::string KeeldProcess::base_url() const {
    std::lock_guard lock(mu_);
    return base_url_;
}

std::string KeeldProcess::LogTail(size_t bytes) const {
    std::string all = ReadFrom(log_path_, 0);
    if (all.size() > bytes) all = "…" + all.substr(all.size() - bytes);
    return all;
}

int KeeldProcess::RunToExit(const std::vector<std::string>& args, std::chrono::milliseconds timeout,
                            std::string* output) {
    ScratchDir dir("keeld-run");
    auto log = dir.path() / "out.log";
    std::string error;
    pid_t pid = Spawn(args, log, &error);
    if (pid < 0) {
        *output = error;
        return -1000;
    }
    int status = 0;
    int code;
    if (WaitUntil(pid, Clock::now() + timeout, &status)) {
        code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? -WTERMSIG(status) : -1001;
    } else {
        kill(pid, SIGKILL);
        WaitUntil(pid, Clock::now() + 10s, &status);
        code = -SIGKILL;
    }
    *output = ReadFrom(log, 0);
    return code;
}

}  // namespace keel::keeld_test
