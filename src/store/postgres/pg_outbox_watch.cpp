// LISTEN/NOTIFY wake-ups for the outbox relay (pg_outbox_watch.hpp).

#include "store/postgres/pg_outbox_watch.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "store/postgres/pg_conn.hpp"

namespace keel::pg {
namespace {

class PgOutboxWatch final : public detail::OutboxWatch {
public:
    PgOutboxWatch(std::string conninfo, std::string schema, std::function<void()> on_commit)
        : conninfo_(std::move(conninfo)), schema_(std::move(schema)), on_commit_(std::move(on_commit)) {
        if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) wake_[0] = wake_[1] = -1;
        thread_ = std::thread([this] { Run(); });
    }

    ~PgOutboxWatch() override {
        stop_ = true;
        if (wake_[1] >= 0) {
            const char c = 1;
            (void)!::write(wake_[1], &c, 1);
        }
        if (thread_.joinable()) thread_.join();
        for (int fd : wake_) {
            if (fd >= 0) ::close(fd);
        }
    }

private:
    void Run() {
        auto backoff = std::chrono::milliseconds(100);
        std::unique_ptr<Conn> conn;
        while (!stop_.load()) {
            if (conn == nullptr) {
                auto opened = Conn::Connect(conninfo_);
                if (opened.ok() && (*opened)->Exec("LISTEN " + std::string(kOutboxChannel)).ok()) {
                    conn = std::move(*opened);
                    backoff = std::chrono::milliseconds(100);
                    on_commit_();  // whatever was committed while nobody listened
                } else {
                    Sleep(backoff);
                    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
                    continue;
                }
            }
            pollfd fds[2] = {{PQsocket(conn->get()), POLLIN, 0}, {wake_[0], POLLIN, 0}};
            const int n = ::poll(fds, wake_[0] >= 0 ? 2 : 1, wake_[0] >= 0 ? -1 : 200);
            if (n < 0 || stop_.load()) continue;
            if (n == 0) continue;
            if (PQconsumeInput(conn->get()) == 0 || PQstatus(conn->get()) != CONNECTION_OK) {
                conn.reset();  // reconnect; the relay polls meanwhile
                continue;
            }
            bool ours = false;
            while (PGnotify* note = PQnotifies(conn->get())) {
                if (note->extra != nullptr && schema_ == note->extra) ours = true;
                PQfreemem(note);
            }
            if (ours) on_commit_();
        }
    }

    // Sleeps up to `d`, or until the watch is stopped.
    void Sleep(std::chrono::milliseconds d) {
        if (wake_[0] < 0) {
            std::this_thread::sleep_for(std::min(d, std::chrono::milliseconds(200)));
            return;
        }
        pollfd fd{wake_[0], POLLIN, 0};
        (void)::poll(&fd, 1, static_cast<int>(d.count()));
    }

    const std::string conninfo_;
    const std::string schema_;
    const std::function<void()> on_commit_;
    int wake_[2] = {-1, -1};
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

}  // namespace

std::string OutboxNotifySql(std::string_view schema) {
    std::string sql = "NOTIFY " + std::string(kOutboxChannel) + ", '";
    for (char c : schema) {
        if (c == '\'') sql += '\'';
        sql += c;
    }
    sql += '\'';
    return sql;
}

std::unique_ptr<detail::OutboxWatch> StartOutboxWatch(std::string conninfo, std::string schema,
                                                      std::function<void()> on_commit) {
    return std::make_unique<PgOutboxWatch>(std::move(conninfo), std::move(schema), std::move(on_commit));
}

}  // namespace keel::pg
