#include "net/http_client.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <future>
#include <mutex>
#include <unordered_map>

namespace keel::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;

struct HttpClient::Impl {
    Impl(asio::io_context& io_context, HttpClientOptions opts) : io(io_context), options(opts) {}

    std::unique_ptr<beast::tcp_stream> TakeIdle(const std::string& key) {
        std::lock_guard lock(mu);
        auto it = idle.find(key);
        if (it == idle.end() || it->second.empty()) return nullptr;
        auto s = std::move(it->second.back());
        it->second.pop_back();
        return s;
    }
    void PutIdle(const std::string& key, std::unique_ptr<beast::tcp_stream> s) {
        std::lock_guard lock(mu);
        auto& v = idle[key];
        if (v.size() < options.max_idle_per_host) v.push_back(std::move(s));
    }

    asio::io_context& io;
    HttpClientOptions options;
    std::mutex mu;
    std::unordered_map<std::string, std::vector<std::unique_ptr<beast::tcp_stream>>> idle;
};

HttpClient::HttpClient(asio::io_context& io, HttpClientOptions options)
    : impl_(std::make_shared<Impl>(io, options)) {}
HttpClient::~HttpClient() = default;

namespace {

Status TransportError(const boost::system::error_code& ec, const std::string& what, const std::string& where,
                      std::chrono::milliseconds timeout) {
    if (ec == beast::error::timeout) {
        return Status::DeadlineExceeded(what + " " + where + " timed out after " + std::to_string(timeout.count()) +
                                        " ms");
    }
    return Status::Unavailable(what + " " + where + " failed: " + ec.message());
}

}  // namespace

awaitable<Result<HttpResponse>> HttpClient::Call(HttpRequest request) {
    auto impl = impl_;
    Url url;
    if (!Url::Parse(request.path, &url)) {
        co_return Status::InvalidArgument("url '" + request.path + "' is not an http://host[:port]/path URL");
    }
    const std::string port = std::to_string(url.port);
    const std::string key = url.host + "\n" + port;
    const std::string where = url.host + ":" + port;
    http::request<http::string_body> req;
    req.method_string(request.method);
    req.target(url.target);
    req.version(11);
    bool ipv6 = url.host.find(':') != std::string::npos;
    req.set(http::field::host, (ipv6 ? "[" + url.host + "]" : url.host) + (url.port == 80 ? "" : ":" + port));
    req.set(http::field::user_agent, "keel");
    for (const auto& [k, v] : request.headers) req.set(k, v);
    if (!request.body.empty() || request.method == "POST") {
        if (req.find(http::field::content_type) == req.end()) req.set(http::field::content_type, "application/json");
    }
    req.body() = std::move(request.body);
    req.keep_alive(true);
    req.prepare_payload();

    const auto deadline = std::chrono::steady_clock::now() + request.timeout;
    boost::system::error_code ec;
    for (int attempt = 0; attempt < 2; ++attempt) {
        std::unique_ptr<beast::tcp_stream> stream = impl->TakeIdle(key);
        const bool reused = stream != nullptr;
        if (!stream) {
            stream = std::make_unique<beast::tcp_stream>(impl->io.get_executor());
            tcp::resolver resolver(impl->io.get_executor());
            auto endpoints = co_await resolver.async_resolve(url.host, port, tcp::resolver::numeric_service,
                                                             asio::redirect_error(use_awaitable, ec));
            if (ec) co_return Status::Unavailable("cannot resolve " + where + ": " + ec.message());
            stream->expires_at(deadline);
            co_await stream->async_connect(endpoints, asio::redirect_error(use_awaitable, ec));
            if (ec) co_return TransportError(ec, "connect to", where, request.timeout);
        }
        stream->expires_at(deadline);
        co_await http::async_write(*stream, req, asio::redirect_error(use_awaitable, ec));
        if (ec) {
            if (reused && ec != beast::error::timeout) continue;  // the server closed the idle connection
            co_return TransportError(ec, "request to", where, request.timeout);
        }
        beast::flat_buffer buffer;
        http::response_parser<http::string_body> parser;
        parser.body_limit(impl->options.max_response_bytes);
        if (request.method == "HEAD") parser.skip(true);
        co_await http::async_read(*stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
        if (ec) {
            if (reused && !parser.got_some() && ec != beast::error::timeout) continue;
            co_return TransportError(ec, "response from", where, request.timeout);
        }
        auto& res = parser.get();
        HttpResponse out;
        out.status = static_cast<int>(res.result_int());
        out.content_type = std::string(res[http::field::content_type]);
        for (const auto& field : res) out.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
        out.body = std::move(res.body());
        if (res.keep_alive() && buffer.size() == 0) {
            stream->expires_never();
            impl->PutIdle(key, std::move(stream));
        }
        co_return out;
    }
    co_return TransportError(ec, "request to", where, request.timeout);
}

SyncHttpClient::SyncHttpClient(HttpClientOptions options)
    : client_(std::make_unique<HttpClient>(io_, options)), thread_([this] {
          auto guard = asio::make_work_guard(io_);
          io_.run();
      }) {}

SyncHttpClient::~SyncHttpClient() {
    io_.stop();
    thread_.join();
    client_.reset();
}

Result<HttpResponse> SyncHttpClient::Send(HttpRequest request) {
    std::promise<Result<HttpResponse>> promise;
    auto future = promise.get_future();
    asio::co_spawn(
        io_,
        [this, &promise, request = std::move(request)]() mutable -> awaitable<void> {
            promise.set_value(co_await client_->Call(std::move(request)));
        },
        asio::detached);
    return future.get();
}

}  // namespace keel::net
