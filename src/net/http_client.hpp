#pragma once
// HttpClient: an HTTP/1.1 client (Boost.Beast) with connection reuse per host:port and a deadline per call.
// Two faces over one implementation: Call() is a C++20 coroutine on the caller's io_context (keeld's branch calls:
// thousands in flight without a thread each); SyncHttpClient::Send() blocks (the DTM client, tests).
//
// Thread-safety: both are safe to use from any number of threads/coroutines at once.

// clang-format off
#include <utility>  // first: Boost 1.74's awaitable.hpp uses std::exchange without including <utility>
#include <boost/asio/awaitable.hpp>
// clang-format on
#include <boost/asio/io_context.hpp>
#include <memory>
#include <thread>

#include "keel/status.hpp"
#include "net/http.hpp"

namespace keel::net {

struct HttpClientOptions {
    size_t max_idle_per_host = 64;        // Default: 64 idle keep-alive connections kept per host:port.
    size_t max_response_bytes = 8 << 20;  // Default: 8 MiB.
};

class HttpClient {
public:
    HttpClient(boost::asio::io_context& io, HttpClientOptions options = {});
    ~HttpClient();

    /// Sends `request` (request.path is the full http:// URL) and returns the response, whatever its status.
    /// kInvalidArgument for a URL that is not http://host[:port]/…; kDeadlineExceeded when request.timeout passes;
    /// kUnavailable for connection refused/reset and other transport errors (a reused connection that turns out
    /// closed is retried once on a fresh one when nothing of the response arrived).
    boost::asio::awaitable<Result<HttpResponse>> Call(HttpRequest request);

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

/// A blocking client with its own io_context and one background thread.
class SyncHttpClient {
public:
    explicit SyncHttpClient(HttpClientOptions options = {});
    ~SyncHttpClient();
    /// As HttpClient::Call, blocking the calling thread.
    Result<HttpResponse> Send(HttpRequest request);

private:
    boost::asio::io_context io_;
    std::unique_ptr<HttpClient> client_;
    std::thread thread_;
};

}  // namespace keel::net
