#include "broker/rabbitmq/amqp_conn.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include <amqp_tcp_socket.h>
#include <fmt/format.h>
#include <pthread.h>
#include <sys/socket.h>

namespace keel::detail::rabbit {
namespace {

using std::chrono::milliseconds;

// How long after an operation's own deadline the watchdog waits before it shuts the socket down: librabbitmq's
// timeouts, which leave the connection usable, get the first chance.
constexpr milliseconds kWatchdogSlack{250};
// The longest a polite connection.close may take when a connection is dropped.
constexpr milliseconds kCloseTimeout{1000};
// The watchdog rescans at least this often, so most Arm calls need not wake it.
constexpr milliseconds kWatchdogPeriod{1000};
constexpr int kFrameMax = 131072;

Status FromReplyCode(int code, std::string message) {
    switch (code) {
        case 404: return Status::NotFound(std::move(message));            // NOT_FOUND
        case 403:                                                         // ACCESS_REFUSED
        case 405:                                                         // RESOURCE_LOCKED
        case 406: return Status::FailedPrecondition(std::move(message));  // PRECONDITION_FAILED
        default: return Status::Unavailable(std::move(message));          // CONNECTION_FORCED, INTERNAL_ERROR, …
    }
}

}  // namespace

timeval Remaining(Clock::time_point deadline) {
    const auto left = std::max(Clock::duration::zero(), deadline - Clock::now());
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(left).count();
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(us / 1'000'000);
    tv.tv_usec = static_cast<suseconds_t>(us % 1'000'000);
    return tv;
}

// --- IoWatchdog ----------------------------------------------------------------------------------------------------

IoWatchdog& IoWatchdog::Instance() {
    static IoWatchdog* watchdog = [] {
        auto* w = new IoWatchdog();
        // Across fork() the mutex must be unlocked in the child, which has no watchdog thread: it starts its own
        // on first use (and inherits no armed entries worth keeping: their sockets belong to the parent).
        static IoWatchdog* self = w;
        pthread_atfork([] { self->mu_.lock(); }, [] { self->mu_.unlock(); },
                       [] {
                           self->entries_.clear();
                           self->started_ = false;
                           self->running_ = false;
                           self->wake_at_ = Clock::time_point::min();
                           self->mu_.unlock();
                       });
        return w;
    }();
    return *watchdog;
}

IoWatchdog::~IoWatchdog() {
    std::unique_lock lock(mu_);
    stop_ = true;
    cv_.notify_all();
    cv_.wait_for(lock, std::chrono::seconds(2), [this] { return !running_; });
}

uint64_t IoWatchdog::Arm(int fd, Clock::time_point deadline) {
    std::lock_guard lock(mu_);
    const uint64_t id = ++next_id_;
    entries_.emplace(id, Entry{fd, deadline + kWatchdogSlack, false});
    if (!started_) {
        started_ = true;
        running_ = true;
        std::thread([this] { Run(); }).detach();
    }
    if (deadline + kWatchdogSlack < wake_at_) cv_.notify_all();
    return id;
}

bool IoWatchdog::Disarm(uint64_t id) {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return false;
    const bool fired = it->second.fired;
    entries_.erase(it);
    return fired;
}

void IoWatchdog::Run() {
    std::unique_lock lock(mu_);
    while (!stop_) {
        const auto now = Clock::now();
        auto next = now + kWatchdogPeriod;
        for (auto& [id, e] : entries_) {
            if (e.fired) continue;
            if (e.deadline <= now) {
                // Disarm holds the same mutex, so the descriptor is still the connection's: it is closed only
                // after its guard is gone.
                ::shutdown(e.fd, SHUT_RDWR);
                e.fired = true;
            } else {
                next = std::min(next, e.deadline);
            }
        }
        wake_at_ = next;
        cv_.wait_until(lock, next);
    }
    running_ = false;
    cv_.notify_all();
}

IoGuard::IoGuard(const AmqpConn& conn, Clock::time_point deadline) {
    const int fd = conn.fd();
    if (fd >= 0) {
        id_ = IoWatchdog::Instance().Arm(fd, deadline);
        armed_ = true;
    }
}

IoGuard::~IoGuard() {
    (void)Fired();
}

bool IoGuard::Fired() {
    if (armed_) {
        fired_ = IoWatchdog::Instance().Disarm(id_);
        armed_ = false;
    }
    return fired_;
}

// --- Backoff -------------------------------------------------------------------------------------------------------

Backoff::Backoff(milliseconds min, milliseconds max)
    : min_(std::max(min, milliseconds(1))), max_(std::max(max, std::max(min, milliseconds(1)))) {}

bool Backoff::WaitTurn(Clock::time_point deadline) {
    Clock::time_point next;
    {
        std::lock_guard lock(mu_);
        next = next_;
    }
    if (Clock::now() >= next) return true;
    std::this_thread::sleep_until(std::min(next, deadline));
    return Clock::now() >= next;
}

void Backoff::Failed() {
    std::lock_guard lock(mu_);
    delay_ = delay_.count() == 0 ? min_ : std::min(delay_ * 2, max_);
    next_ = Clock::now() + delay_;
}

void Backoff::Succeeded() {
    std::lock_guard lock(mu_);
    delay_ = milliseconds(0);
    next_ = Clock::time_point::min();
}

// --- AmqpConn ------------------------------------------------------------------------------------------------------

Result<std::unique_ptr<AmqpConn>> AmqpConn::Open(const RabbitConfig& config, Clock::time_point deadline,
                                                 bool confirms) {
    deadline = std::min(deadline, Clock::now() + config.connect_timeout);
    amqp_connection_state_t state = amqp_new_connection();
    if (state == nullptr) return Status::Unavailable(fmt::format("{}: cannot connect: out of memory", config.Where()));
    std::unique_ptr<AmqpConn> conn(new AmqpConn(config, state));
    amqp_socket_t* socket = amqp_tcp_socket_new(state);
    if (socket == nullptr) {
        return Status::Unavailable(fmt::format("{}: cannot connect: cannot create a socket", config.Where()));
    }
    timeval tv = Remaining(deadline);
    errno = 0;
    const int rc = amqp_socket_open_noblock(socket, config.host.c_str(), config.port, &tv);
    if (rc != AMQP_STATUS_OK) {
        const int err = errno;
        conn->usable_ = false;
        std::string why = amqp_error_string2(rc);
        if (rc == AMQP_STATUS_TIMEOUT) {
            why = fmt::format("no answer within {} ms", config.connect_timeout.count());
        } else if (err != 0 && err != EINPROGRESS && rc != AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED) {
            why = fmt::format("{} ({})", why, std::strerror(err));
        }
        return Status::Unavailable(fmt::format("{}: cannot connect: {}", config.Where(), why));
    }
    tv = Remaining(deadline);
    if (tv.tv_sec == 0 && tv.tv_usec == 0) tv.tv_usec = 1000;
    amqp_set_handshake_timeout(state, &tv);
    conn->SetRpcDeadline(deadline);
    IoGuard guard(*conn, deadline);
    // consumer_cancel_notify: a consumer whose queue is deleted is told (basic.cancel) instead of waiting forever;
    // authentication_failure_close: a wrong password is reported as ACCESS_REFUSED instead of a closed socket.
    amqp_table_entry_t caps[4];
    const char* cap_names[4] = {"consumer_cancel_notify", "authentication_failure_close", "publisher_confirms",
                                "basic.nack"};
    for (int i = 0; i < 4; ++i) {
        caps[i].key = amqp_cstring_bytes(cap_names[i]);
        caps[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        caps[i].value.value.boolean = 1;
    }
    amqp_table_entry_t props[2];
    props[0].key = amqp_cstring_bytes("capabilities");
    props[0].value.kind = AMQP_FIELD_KIND_TABLE;
    props[0].value.value.table = amqp_table_t{4, caps};
    props[1].key = amqp_cstring_bytes("connection_name");
    props[1].value.kind = AMQP_FIELD_KIND_UTF8;
    props[1].value.value.bytes = amqp_cstring_bytes("keel");
    const amqp_table_t properties{2, props};
    const amqp_rpc_reply_t login =
        amqp_login_with_properties(state, config.vhost.c_str(), 0, kFrameMax, config.heartbeat_s, &properties,
                                   AMQP_SASL_METHOD_PLAIN, config.user.c_str(), config.password.c_str());
    if (login.reply_type != AMQP_RESPONSE_NORMAL) {
        Status s = conn->RpcStatus(login, fmt::format("logging in as '{}'", config.user));
        if (login.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            (login.library_error == AMQP_STATUS_CONNECTION_CLOSED || login.library_error == AMQP_STATUS_SOCKET_ERROR)) {
            // A server that does not report authentication failures just closes the socket.
            s = Status::Unavailable(
                fmt::format("{} (wrong user name or password, or no access to the vhost?)", s.message()));
        }
        return Status::Unavailable(s.message());
    }
    conn->socket_open_ = true;
    amqp_channel_open(state, kChannel);
    if (Status s = conn->RpcStatus("opening a channel"); !s.ok()) return Status::Unavailable(s.message());
    if (confirms) {
        amqp_confirm_select(state, kChannel);
        if (Status s = conn->RpcStatus("switching on publisher confirms"); !s.ok()) {
            return Status::Unavailable(s.message());
        }
    }
    if (guard.Fired()) {
        conn->usable_ = false;
        return Status::Unavailable(fmt::format("{}: cannot connect: the login took longer than {} ms", config.Where(),
                                               config.connect_timeout.count()));
    }
    return conn;
}

AmqpConn::~AmqpConn() {
    if (socket_open_) {
        const auto deadline = Clock::now() + std::min(kCloseTimeout, config_.io_timeout);
        SetRpcDeadline(deadline);
        IoGuard guard(*this, deadline);
        (void)amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(conn_);
}

int AmqpConn::fd() const {
    return amqp_get_sockfd(conn_);
}

void AmqpConn::SetRpcDeadline(Clock::time_point deadline) {
    timeval tv = Remaining(std::min(deadline, Clock::now() + config_.io_timeout));
    if (tv.tv_sec == 0 && tv.tv_usec < 1000) tv.tv_usec = 1000;
    amqp_set_rpc_timeout(conn_, &tv);
}

Status AmqpConn::RpcStatus(std::string_view what) {
    return RpcStatus(amqp_get_rpc_reply(conn_), what);
}

Status AmqpConn::RpcStatus(const amqp_rpc_reply_t& reply, std::string_view what) {
    switch (reply.reply_type) {
        case AMQP_RESPONSE_NORMAL: return Status::Ok();
        case AMQP_RESPONSE_LIBRARY_EXCEPTION: return LibStatus(reply.library_error, what);
        case AMQP_RESPONSE_SERVER_EXCEPTION: return ServerClose(reply.reply, what);
        default:
            usable_ = false;
            socket_open_ = false;
            return Status::Unavailable(fmt::format("{}: {}: no reply", config_.Where(), what));
    }
}

Status AmqpConn::LibStatus(int rc, std::string_view what) {
    usable_ = false;
    socket_open_ = false;
    std::string message = fmt::format("{}: {}: {}", config_.Where(), what, amqp_error_string2(rc));
    if (rc == AMQP_STATUS_TIMEOUT) return Status::DeadlineExceeded(std::move(message));
    return Status::Unavailable(std::move(message));
}

Status AmqpConn::ServerClose(const amqp_method_t& method, std::string_view what) {
    usable_ = false;
    if (method.id == AMQP_CONNECTION_CLOSE_METHOD && method.decoded != nullptr) {
        const auto* m = static_cast<const amqp_connection_close_t*>(method.decoded);
        const int code = m->reply_code;
        std::string text(View(m->reply_text));
        amqp_connection_close_ok_t ok{};
        (void)amqp_send_method(conn_, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        socket_open_ = false;
        return FromReplyCode(code, fmt::format("{}: {}: the server closed the connection: {} (AMQP {})",
                                               config_.Where(), what, text, code));
    }
    if (method.id == AMQP_CHANNEL_CLOSE_METHOD && method.decoded != nullptr) {
        const auto* m = static_cast<const amqp_channel_close_t*>(method.decoded);
        const int code = m->reply_code;
        std::string text(View(m->reply_text));
        amqp_channel_close_ok_t ok{};
        if (amqp_send_method(conn_, kChannel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK) {
            socket_open_ = false;
        }
        return FromReplyCode(code, fmt::format("{}: {}: {} (AMQP {})", config_.Where(), what, text, code));
    }
    socket_open_ = false;
    return Status::Unavailable(
        fmt::format("{}: {}: unexpected AMQP method 0x{:08x}", config_.Where(), what, method.id));
}

}  // namespace keel::detail::rabbit
