#include "net/http_server.hpp"

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>

namespace keel::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;

struct HttpServer::Impl : std::enable_shared_from_this<Impl> {
    Impl(asio::io_context& io_context, HttpServerOptions opts, Handler h)
        : io(io_context), acceptor_strand(asio::make_strand(io_context)), acceptor(acceptor_strand),
          options(std::move(opts)), handler(std::move(h)) {}

    asio::io_context& io;
    asio::strand<asio::io_context::executor_type> acceptor_strand;
    tcp::acceptor acceptor;
    HttpServerOptions options;
    Handler handler;
    std::atomic<bool> closed{false};
    std::mutex mu;
    uint64_t next_session = 0;
    std::unordered_map<uint64_t, beast::tcp_stream*> sessions;  // guarded by mu; each used on its own strand

    awaitable<void> AcceptLoop();
    awaitable<void> Session(tcp::socket socket);
};

namespace {

// Completes the awaiting session with the handler's response. If the handler drops its Responder without calling
// it, the client still gets an answer (500) instead of a connection that hangs.
template <class Completion>
struct ResponderState {
    explicit ResponderState(Completion c) : completion(std::move(c)) {}
    ~ResponderState() {
        if (!called.exchange(true)) {
            HttpResponse r;
            r.status = 500;
            r.body = R"({"message":"internal error: the request handler gave no response"})";
            Deliver(std::move(r));
        }
    }
    void Respond(HttpResponse r) {
        if (called.exchange(true)) return;
        Deliver(std::move(r));
    }
    void Deliver(HttpResponse r) {
        auto ex = asio::get_associated_executor(completion);
        asio::post(ex, [c = std::move(completion), r = std::move(r)]() mutable { c(std::move(r)); });
    }
    Completion completion;
    std::atomic<bool> called{false};
};

template <class Token>
auto AsyncHandle(const Handler& handler, HttpRequest request, Token&& token) {
    return asio::async_initiate<Token, void(HttpResponse)>(
        [&handler](auto completion, HttpRequest req) {
            using C = decltype(completion);
            auto state = std::make_shared<ResponderState<C>>(std::move(completion));
            Responder respond = [state](HttpResponse r) { state->Respond(std::move(r)); };
            try {
                handler(std::move(req), std::move(respond));
            } catch (const std::exception& e) {
                HttpResponse r;
                r.status = 500;
                r.body = nlohmann::json{{"message", std::string("internal error: ") + e.what()}}.dump();
                state->Respond(std::move(r));
            }
        },
        token, std::move(request));
}

HttpRequest Convert(const http::request<http::string_body>& msg) {
    HttpRequest req;
    req.method = std::string(msg.method_string());
    std::string_view target(msg.target().data(), msg.target().size());
    size_t q = target.find('?');
    req.path = PercentDecode(target.substr(0, q));
    if (q != std::string_view::npos) {
        std::string_view rest = target.substr(q + 1);
        while (!rest.empty()) {
            size_t amp = rest.find('&');
            std::string_view pair = rest.substr(0, amp);
            size_t eq = pair.find('=');
            if (!pair.empty()) {
                req.query[PercentDecode(pair.substr(0, eq))] =
                    eq == std::string_view::npos ? std::string() : PercentDecode(pair.substr(eq + 1));
            }
            if (amp == std::string_view::npos) break;
            rest = rest.substr(amp + 1);
        }
    }
    for (const auto& field : msg) {
        std::string name(field.name_string());
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        req.headers.emplace_back(std::move(name), std::string(field.value()));
    }
    req.body = msg.body();
    return req;
}

const char* ReasonFor(int status) {
    switch (status) {
        case 425: return "Too Early";
        default: return nullptr;
    }
}

http::response<http::string_body> ToBeast(HttpResponse&& r, unsigned version, bool keep_alive) {
    http::response<http::string_body> res;
    res.version(version);
    res.result(static_cast<unsigned>(r.status));
    if (const char* reason = ReasonFor(r.status)) res.reason(reason);
    res.set(http::field::server, "keel");
    if (!r.content_type.empty()) res.set(http::field::content_type, r.content_type);
    for (auto& [k, v] : r.headers) res.insert(k, v);
    res.body() = std::move(r.body);
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
}

}  // namespace

awaitable<void> HttpServer::Impl::AcceptLoop() {
    auto self = shared_from_this();
    for (;;) {
        boost::system::error_code ec;
        tcp::socket socket = co_await acceptor.async_accept(asio::make_strand(io), asio::redirect_error(use_awaitable, ec));
        if (closed.load()) co_return;
        if (ec) {
            if (ec == asio::error::operation_aborted) co_return;
            continue;  // e.g. too many open files: keep serving the connections we have
        }
        auto ex = socket.get_executor();
        asio::co_spawn(ex, self->Session(std::move(socket)), asio::detached);
    }
}

awaitable<void> HttpServer::Impl::Session(tcp::socket socket) {
    auto self = shared_from_this();
    beast::tcp_stream stream(std::move(socket));
    uint64_t id;
    {
        std::lock_guard lock(mu);
        id = next_session++;
        sessions[id] = &stream;
    }
    beast::flat_buffer buffer;
    boost::system::error_code ec;
    for (;;) {
        http::request_parser<http::string_body> parser;
        parser.body_limit(options.max_body_bytes);
        parser.header_limit(64 * 1024);
        stream.expires_after(options.idle_timeout);
        co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
        if (ec == http::error::body_limit) {
            HttpResponse r;
            r.status = 400;
            r.body = nlohmann::json{{"message", "request body exceeds the limit of " +
                                                    std::to_string(options.max_body_bytes) + " bytes"}}
                         .dump();
            auto res = ToBeast(std::move(r), 11, false);
            stream.expires_after(std::chrono::seconds(10));
            co_await http::async_write(stream, res, asio::redirect_error(use_awaitable, ec));
            break;
        }
        if (ec) break;  // end of stream, idle timeout, reset, bad request
        auto& msg = parser.get();
        unsigned version = msg.version();
        bool keep_alive = msg.keep_alive() && !closed.load();
        HttpRequest request = Convert(msg);
        stream.expires_never();  // the handler may take long (wait_result)
        HttpResponse response = co_await AsyncHandle(handler, std::move(request), use_awaitable);
        auto res = ToBeast(std::move(response), version, keep_alive);
        stream.expires_after(std::chrono::seconds(30));
        co_await http::async_write(stream, res, asio::redirect_error(use_awaitable, ec));
        if (ec || !keep_alive) break;
    }
    {
        std::lock_guard lock(mu);
        sessions.erase(id);
    }
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream.close();
}

HttpServer::HttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { Close(); }

Result<std::unique_ptr<HttpServer>> HttpServer::Listen(asio::io_context& io, const HttpServerOptions& options,
                                                        Handler handler) {
    boost::system::error_code ec;
    auto address = asio::ip::make_address(options.host, ec);
    if (ec) {
        // Accept host names for the loopback only; anything else must be given as an address.
        if (options.host == "localhost") {
            address = asio::ip::make_address("127.0.0.1");
        } else {
            return Status::InvalidArgument("listen address '" + options.host + "' is not an IP address");
        }
    }
    auto impl = std::make_shared<Impl>(io, options, std::move(handler));
    tcp::endpoint endpoint(address, options.port);
    std::string where = options.host + ":" + std::to_string(options.port);
    impl->acceptor.open(endpoint.protocol(), ec);
    if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) impl->acceptor.bind(endpoint, ec);
    if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Status::Unavailable("cannot listen on " + where + ": " + ec.message());
    asio::co_spawn(impl->acceptor_strand, impl->AcceptLoop(), asio::detached);
    return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

uint16_t HttpServer::port() const {
    boost::system::error_code ec;
    auto ep = impl_->acceptor.local_endpoint(ec);
    return ec ? 0 : ep.port();
}

void HttpServer::Close() {
    if (impl_->closed.exchange(true)) return;
    auto impl = impl_;
    asio::post(impl->acceptor_strand, [impl] {
        boost::system::error_code ec;
        impl->acceptor.close(ec);
    });
    std::lock_guard lock(impl->mu);
    for (auto& [id, stream] : impl->sessions) {
        auto ex = stream->get_executor();
        asio::post(ex, [impl, id = id] {
            std::lock_guard inner(impl->mu);
            auto it = impl->sessions.find(id);
            if (it != impl->sessions.end()) it->second->socket().cancel();
        });
    }
}

Result<std::unique_ptr<StandaloneHttpServer>> StandaloneHttpServer::Start(const HttpServerOptions& options,
                                                                         Handler handler, int threads) {
    std::unique_ptr<StandaloneHttpServer> s(new StandaloneHttpServer());
    KEEL_ASSIGN_OR_RETURN(s->server_, HttpServer::Listen(s->io_, options, std::move(handler)));
    s->host_ = options.host.find(':') != std::string::npos ? "[" + options.host + "]" : options.host;
    for (int i = 0; i < std::max(1, threads); ++i) {
        s->threads_.emplace_back([io = &s->io_] {
            auto guard = asio::make_work_guard(*io);
            io->run();
        });
    }
    return s;
}

StandaloneHttpServer::~StandaloneHttpServer() {
    if (server_) server_->Close();
    io_.stop();
    for (auto& t : threads_) t.join();
}

std::string StandaloneHttpServer::base_url() const { return "http://" + host_ + ":" + std::to_string(port()); }

}  // namespace keel::net
