#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "net/http_client.hpp"
#include "net/http_server.hpp"

namespace keel::net {
namespace {

TEST(Url, ParsesHostPortTargetAndRefusesOthers) {
    Url u;
    ASSERT_TRUE(Url::Parse("http://127.0.0.1:8081/api/busi/TransOut?x=1", &u));
    EXPECT_EQ(u.host, "127.0.0.1");
    EXPECT_EQ(u.port, 8081);
    EXPECT_EQ(u.target, "/api/busi/TransOut?x=1");
    ASSERT_TRUE(Url::Parse("http://[::1]:9/", &u));
    EXPECT_EQ(u.host, "::1");
    EXPECT_EQ(u.port, 9);
    ASSERT_TRUE(Url::Parse("HTTP://example.com", &u));
    EXPECT_EQ(u.port, 80);
    EXPECT_EQ(u.target, "/");
    EXPECT_FALSE(Url::Parse("https://example.com/", &u));
    EXPECT_FALSE(Url::Parse("http://user:pw@example.com/", &u));
    EXPECT_FALSE(Url::Parse("http://:80/", &u));
    EXPECT_FALSE(Url::Parse("http://h:99999/", &u));
    EXPECT_FALSE(Url::Parse("topic://x", &u));
}

TEST(Url, AppendQueryEncodes) {
    EXPECT_EQ(AppendQuery("http://h/p", "gid", "a b&c"), "http://h/p?gid=a%20b%26c");
    EXPECT_EQ(AppendQuery("http://h/p?x=1", "op", "try"), "http://h/p?x=1&op=try");
    EXPECT_EQ(PercentDecode("a%20b+c%2"), "a b c%2");
}

struct Fixture : ::testing::Test {
    void SetUp() override {
        HttpServerOptions o;
        o.max_body_bytes = 1000;
        server = StandaloneHttpServer::Start(o, [this](HttpRequest req, Responder respond) {
                     ++calls;
                     HttpResponse r;
                     if (req.path == "/later") {
                         std::thread([respond] {
                             std::this_thread::sleep_for(std::chrono::milliseconds(20));
                             HttpResponse late;
                             late.body = "late";
                             respond(late);
                         }).detach();
                         return;
                     }
                     if (req.path == "/slow") std::this_thread::sleep_for(std::chrono::milliseconds(300));
                     if (req.path == "/drop") return;  // never responds: the server answers 500
                     r.status = req.path == "/ongoing" ? 425 : 200;
                     r.body = req.method + " " + req.path + " gid=" + req.Query("gid") + " h=" + req.Header("X-Test") +
                              " body=" + req.body;
                     respond(r);
                 }).value();
    }
    std::string Url(const std::string& p) { return server->base_url() + p; }
    std::atomic<int> calls{0};
    std::unique_ptr<StandaloneHttpServer> server;
};

TEST_F(Fixture, RoundTripWithQueryHeadersBodyAndKeepAlive) {
    SyncHttpClient client;
    for (int i = 0; i < 20; ++i) {
        HttpRequest req;
        req.method = "POST";
        req.path = Url("/a%20b?gid=g%201");
        req.headers = {{"X-Test", "v"}};
        req.body = "{}";
        auto r = client.Send(req);
        ASSERT_TRUE(r.ok()) << r.status().ToString();
        EXPECT_EQ(r->status, 200);
        EXPECT_EQ(r->body, "POST /a b gid=g 1 h=v body={}");
    }
    HttpRequest get;
    get.path = Url("/ongoing");
    auto r = client.Send(get);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 425);
    get.path = Url("/later");
    r = client.Send(get);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->body, "late");
    get.path = Url("/drop");
    r = client.Send(get);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 500);
}

TEST_F(Fixture, BodyOverTheLimitIs400NamingIt) {
    SyncHttpClient client;
    HttpRequest req;
    req.method = "POST";
    req.path = Url("/x");
    req.body = std::string(5000, 'x');
    auto r = client.Send(req);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->status, 400);
    EXPECT_NE(r->body.find("1000 bytes"), std::string::npos) << r->body;
    EXPECT_EQ(calls.load(), 0);
}

TEST_F(Fixture, DeadlineAndRefusedConnection) {
    SyncHttpClient client;
    HttpRequest req;
    req.path = Url("/slow");
    req.timeout = std::chrono::milliseconds(50);
    auto r = client.Send(req);
    EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status().ToString();
    uint16_t port = server->port();
    server.reset();
    req.path = "http://127.0.0.1:" + std::to_string(port) + "/x";
    req.timeout = std::chrono::milliseconds(2000);
    r = client.Send(req);
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
    req.path = "ftp://x";
    EXPECT_EQ(client.Send(req).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(Fixture, ManyConcurrentCallsOnOneClient) {
    SyncHttpClient client;
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 50; ++i) {
                HttpRequest req;
                req.path = Url("/c");
                auto r = client.Send(req);
                if (r.ok() && r->status == 200) ++ok;
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(ok.load(), 400);
}

}  // namespace
}  // namespace keel::net
