#pragma once
// HttpServer: an HTTP/1.1 server (Boost.Beast) with keep-alive, bounded bodies and asynchronous handlers, for keeld,
// tests and examples. Not installed.
//
// Thread-safety: the handler runs on one of the io_context's threads, concurrently for distinct connections; the
// Responder may be called from any thread, exactly once. Close() may be called from any thread.

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "keel/status.hpp"
#include "net/http.hpp"

namespace keel::net {

using Responder = std::function<void(HttpResponse)>;
/// Called once per request; must call `respond` exactly once (inline or later, from any thread).
using Handler = std::function<void(HttpRequest request, Responder respond)>;

struct HttpServerOptions {
    std::string host = "127.0.0.1";  // Default: loopback only.
    uint16_t port = 0;               // Default: 0, any free port (see HttpServer::port()).
    size_t max_body_bytes = 1 << 20;  // Default: 1 MiB; a bigger body gets 413 with a JSON message.
    std::chrono::seconds idle_timeout{60};  // Default: 60 s; an idle keep-alive connection is closed after it.
};

class HttpServer {
public:
    /// Binds and starts accepting on `io` (the caller runs `io`). kUnavailable naming host and port when the address
    /// cannot be bound; kInvalidArgument for an unparsable host.
    static Result<std::unique_ptr<HttpServer>> Listen(boost::asio::io_context& io, const HttpServerOptions& options,
                                                      Handler handler);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    /// The bound port (useful with port 0).
    uint16_t port() const;
    /// Stops accepting and closes idle connections; requests in progress finish.
    void Close();

    struct Impl;

private:
    explicit HttpServer(std::shared_ptr<Impl> impl);
    std::shared_ptr<Impl> impl_;
};

/// An HttpServer with its own io_context and threads: for tests, examples and small services. Stops and joins in
/// the destructor.
class StandaloneHttpServer {
public:
    static Result<std::unique_ptr<StandaloneHttpServer>> Start(const HttpServerOptions& options, Handler handler,
                                                               int threads = 2);
    ~StandaloneHttpServer();
    uint16_t port() const { return server_->port(); }
    /// "http://127.0.0.1:<port>"
    std::string base_url() const;

private:
    StandaloneHttpServer() = default;
    boost::asio::io_context io_;
    std::unique_ptr<HttpServer> server_;
    std::vector<std::thread> threads_;
    std::string host_;
};

}  // namespace keel::net
