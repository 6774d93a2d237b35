// keeld: keel's transaction coordinator, speaking DTM's HTTP protocol (docs/http-api.md, docs/keeld.md).
// Wiring only: flags and the config file, storage, engine, HTTP server, signals.

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <cstdio>
#include <iostream>
#include <thread>

#include "api.hpp"
#include "coordinator/engine.hpp"
#include "net/http.hpp"

namespace {

using keel::coordinator::EngineOptions;

struct Flags {
    std::string listen = "127.0.0.1:36789";
    std::string storage = "sqlite://keeld.db";
    std::string token;
    std::vector<std::string> allow;
    int64_t cron_interval_ms = 1000;
    int64_t retry_interval = 10;
    int64_t max_retry_interval = 600;
    int64_t timeout_to_fail = 35;
    int64_t request_timeout = 3;
    int threads = 2;
};

bool IsLoopback(const std::string& host) {
    return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// The allow-list: URL prefixes, and "loopback" for any http:// URL on 127.0.0.0/8, ::1 or localhost.
std::function<std::optional<std::string>(const std::string&)> UrlPolicy(std::vector<std::string> allow) {
    if (allow.empty()) allow.push_back("loopback");
    return [allow](const std::string& url) -> std::optional<std::string> {
        keel::net::Url u;
        if (!keel::net::Url::Parse(url, &u)) return "branch url '" + url + "' is not an http://host[:port]/path URL";
        for (const auto& a : allow) {
            if (a == "loopback") {
                if (!keel::coordinator::LoopbackOnly(url)) return std::nullopt;
                continue;
            }
            if (url.rfind(a, 0) == 0) {
                // The prefix must end at a boundary: http://10.0.0.5:80 must not admit http://10.0.0.5:8080.
                if (a.back() == '/' || url.size() == a.size() || url[a.size()] == '/' || url[a.size()] == '?') {
                    return std::nullopt;
                }
            }
        }
        return "branch url '" + url + "' is not in keeld's allow-list (--allow)";
    };
}

}  // namespace

int main(int argc, char** argv) {
    Flags f;
    CLI::App app{"keeld: transaction coordinator speaking DTM's HTTP protocol (msg, saga, tcc)"};
    app.set_config("--config", "", "Read settings from a TOML/INI file (keys are the long flag names)");
    app.add_option("--listen", f.listen, "Address to listen on, HOST:PORT (port 0 = any free port)")
        ->capture_default_str();
    app.add_option("--storage", f.storage, "sqlite:///path/keeld.db or postgresql://user@host:port/db")
        ->capture_default_str();
    app.add_option("--token", f.token, "Bearer token required on every API call (required off loopback)");
    app.add_option("--allow", f.allow,
                   "Branch URL prefix keeld may call (repeatable); 'loopback' admits any loopback URL. "
                   "Default: loopback");
    app.add_option("--cron-interval-ms", f.cron_interval_ms, "Idle time between looks for due transactions")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{60000}));
    app.add_option("--retry-interval", f.retry_interval, "Base retry interval in seconds")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{86400}));
    app.add_option("--max-retry-interval", f.max_retry_interval, "Cap of the doubling backoff in seconds")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{86400}));
    app.add_option("--timeout-to-fail", f.timeout_to_fail,
                   "Seconds after which a prepared msg is back-checked and a prepared tcc aborted")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{86400}));
    app.add_option("--request-timeout", f.request_timeout, "Seconds allowed for one branch call")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{3600}));
    app.add_option("--threads", f.threads, "Network threads")->capture_default_str()->check(CLI::Range(1, 64));
    CLI11_PARSE(app, argc, argv);

    auto colon = f.listen.rfind(':');
    std::string host = colon == std::string::npos ? f.listen : f.listen.substr(0, colon);
    if (!host.empty() && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    int port = 0;
    try {
        port = colon == std::string::npos ? -1 : std::stoi(f.listen.substr(colon + 1));
    } catch (const std::exception&) {
        port = -1;
    }
    if (host.empty() || port < 0 || port > 65535) {
        std::cerr << "keeld: --listen '" << f.listen << "' is not HOST:PORT\n";
        return 2;
    }
    if (!IsLoopback(host) && f.token.empty()) {
        std::cerr << "keeld: refusing to listen on non-loopback address '" << host
                  << "' without a bearer token (--token)\n";
        return 2;
    }

    bool exclusive = false;
    auto storage = keel::coordinator::OpenStorage(f.storage, &exclusive);
    if (!storage.ok()) {
        std::cerr << "keeld: storage: " << storage.status().message() << "\n";
        return 1;
    }

    boost::asio::io_context io;
    EngineOptions eo;
    eo.timeout_to_fail = f.timeout_to_fail;
    eo.retry_interval = f.retry_interval;
    eo.max_retry_interval = f.max_retry_interval;
    eo.request_timeout = f.request_timeout;
    eo.cron_interval = std::chrono::milliseconds(f.cron_interval_ms);
    eo.url_policy = UrlPolicy(f.allow);
    keel::coordinator::Engine engine(io, std::move(storage).value(), eo, exclusive);

    keel::net::HttpServerOptions so;
    so.host = host;
    so.port = static_cast<uint16_t>(port);
    auto server = keel::net::HttpServer::Listen(io, so, keel::keeld::MakeApiHandler(io, engine, {f.token}));
    if (!server.ok()) {
        std::cerr << "keeld: " << server.status().message() << "\n";
        return 1;
    }
    engine.Start();
    std::string shown = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    std::printf("keeld listening on http://%s:%u\n", shown.c_str(), static_cast<unsigned>((*server)->port()));
    std::fflush(stdout);

    boost::asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code&, int) {
        (*server)->Close();
        engine.Stop();
        io.stop();
    });
    std::vector<std::thread> threads;
    for (int i = 1; i < f.threads; ++i) threads.emplace_back([&io] { io.run(); });
    io.run();
    for (auto& t : threads) t.join();
    return 0;
}
