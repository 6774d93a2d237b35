#pragma once
// One AMQP connection with one channel, as the rabbitmq: broker uses them, and the pieces that bound every socket
// operation in time.
//
// librabbitmq bounds connect, login, RPCs and frame waits with timeouts of its own, but its sends (basic.publish,
// basic.ack, …) wait for the socket without a limit: a server that stops reading (a memory or disk alarm blocks
// publishers that way) would hang them forever. An IoGuard covers such calls: when its deadline passes, the
// watchdog thread shuts the socket down, the blocked call fails, and the connection is dropped.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>

#include <amqp.h>
#include <amqp_framing.h>

#include "keel/status.hpp"

#include "broker/rabbitmq/rabbit_message.hpp"
#include "broker/rabbitmq/rabbit_uri.hpp"

namespace keel::detail::rabbit {

using Clock = std::chrono::steady_clock;

// The time left until `deadline` (never negative).
timeval Remaining(Clock::time_point deadline);

// Shuts down sockets whose operations passed their deadline. One thread for the process, started on first use.
class IoWatchdog {
public:
    static IoWatchdog& Instance();
    ~IoWatchdog();

    uint64_t Arm(int fd, Clock::time_point deadline);
    // True when the deadline passed and the socket was shut down.
    bool Disarm(uint64_t id);

private:
    IoWatchdog() = default;
    void Run();

    struct Entry {
        int fd;
        Clock::time_point deadline;
        bool fired;
    };
    std::mutex mu_;
    std::condition_variable cv_;
    std::map<uint64_t, Entry> entries_;
    uint64_t next_id_ = 0;
    Clock::time_point wake_at_ = Clock::time_point::min();
    bool stop_ = false;
    // The thread is detached (a forked child has none and starts its own: see the pthread_atfork handlers);
    // `running_` tells the destructor when it has left.
    bool started_ = false;
    bool running_ = false;
};

// Delays between connection attempts: after a failure the next attempt waits `min`, doubling up to `max`; a success
// resets it. Thread-safe.
class Backoff {
public:
    Backoff(std::chrono::milliseconds min, std::chrono::milliseconds max);

    // Sleeps until an attempt is allowed or `deadline` comes; true when an attempt is allowed.
    bool WaitTurn(Clock::time_point deadline);
    void Failed();
    void Succeeded();

private:
    std::mutex mu_;
    std::chrono::milliseconds min_;
    std::chrono::milliseconds max_;
    std::chrono::milliseconds delay_{0};
    Clock::time_point next_ = Clock::time_point::min();
};

class AmqpConn {
public:
    // Connects, logs in and opens channel 1 (in confirm mode when `confirms`), all before `deadline` (and within
    // config.connect_timeout). kUnavailable naming host and port on failure.
    static Result<std::unique_ptr<AmqpConn>> Open(const RabbitConfig& config, Clock::time_point deadline,
                                                  bool confirms);
    ~AmqpConn();
    AmqpConn(const AmqpConn&) = delete;
    AmqpConn& operator=(const AmqpConn&) = delete;

    amqp_connection_state_t get() const { return conn_; }
    static constexpr amqp_channel_t kChannel = 1;
    const RabbitConfig& config() const { return config_; }
    int fd() const;

    // False once the socket failed or the server closed the connection or the channel: drop the connection.
    bool usable() const { return usable_; }
    // False once the socket failed (or timed out): dropping the connection then skips the polite connection.close.
    bool socket_ok() const { return socket_open_; }
    // The connection is dead or in an unknown state: drop it without a polite close.
    void MarkUnusable() {
        usable_ = false;
        socket_open_ = false;
    }

    // Bounds the next RPCs (declares, basic.get, …) by min(deadline, now + config.io_timeout).
    void SetRpcDeadline(Clock::time_point deadline);

    // The status of the last RPC (amqp_get_rpc_reply), or of `reply`. Server errors close the channel or the
    // connection: they are acknowledged here and the connection is marked unusable.
    Status RpcStatus(std::string_view what);
    Status RpcStatus(const amqp_rpc_reply_t& reply, std::string_view what);
    // The status of a library call that returned `rc` (an amqp_status_enum); marks the connection unusable.
    Status LibStatus(int rc, std::string_view what);
    // A channel.close or connection.close sent by the server (read as a frame): acknowledges it, marks the
    // connection unusable and returns the error it names.
    Status ServerClose(const amqp_method_t& method, std::string_view what);

    // Publisher confirms: the sequence number the next basic.publish gets.
    uint64_t next_publish_seq = 1;
    // Exchanges this connection declared (so a publish declares each destination once per connection).
    std::unordered_set<std::string> declared_exchanges;

private:
    AmqpConn(const RabbitConfig& config, amqp_connection_state_t conn) : config_(config), conn_(conn) {}

    RabbitConfig config_;
    amqp_connection_state_t conn_;
    bool usable_ = true;        // may be used for further operations
    bool socket_open_ = false;  // the AMQP connection is open: close it politely at the end
};

// Arms the watchdog for one connection's socket until destroyed. fired() tells whether it shut the socket down.
class IoGuard {
public:
    IoGuard(const AmqpConn& conn, Clock::time_point deadline);
    ~IoGuard();
    IoGuard(const IoGuard&) = delete;
    IoGuard& operator=(const IoGuard&) = delete;
    // Disarms now; true when the watchdog had fired.
    bool Fired();

private:
    uint64_t id_ = 0;
    bool armed_ = false;
    bool fired_ = false;
};

}  // namespace keel::detail::rabbit
