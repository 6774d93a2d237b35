#include "api.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>

namespace keel::keeld {

namespace asio = boost::asio;
using coordinator::ApiResult;
using nlohmann::json;

std::string SafeJson(const json& body) {
    std::string text = body.dump();
    static constexpr std::string_view kWord = "FAILURE";
    for (size_t pos = text.find(kWord); pos != std::string::npos; pos = text.find(kWord, pos)) {
        text.replace(pos + kWord.size() - 1, 1, "\\u0045");
        pos += kWord.size();
    }
    return text;
}

namespace {

int64_t IntParam(const net::HttpRequest& req, const std::string& name, int64_t fallback) {
    std::string v = req.Query(name);
    int64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    return v.empty() || ec != std::errc() || p != v.data() + v.size() ? fallback : n;
}

net::HttpResponse ToHttp(const ApiResult& r) {
    net::HttpResponse res;
    res.status = r.status;
    res.body = r.status == 200 ? SafeJson(r.body) : r.body.dump();
    return res;
}


}  // namespace

net::Handler MakeApiHandler(asio::io_context& io, coordinator::Engine& engine, ApiOptions options) {
    return [&io, &engine, options](net::HttpRequest req, net::Responder respond) {
        auto reply = [&respond](const ApiResult& r) { respond(ToHttp(r)); };
        const std::string& path = req.path;
        if (path == "/api/ping") return reply(ApiResult::Json({{"msg", "pong"}}));
        if (path == "/healthz") return reply(ApiResult::Json({{"status", "ok"}}));
        if (!options.token.empty() && req.Header("authorization") != "Bearer " + options.token) {
            return reply(ApiResult::Error(401, "missing or wrong bearer token (Authorization: Bearer <token>)"));
        }
        constexpr std::string_view kPrefix = "/api/dtmsvr/";
        if (!path.starts_with(kPrefix)) return reply(ApiResult::Error(404, "no route " + req.method + " " + path));
        const std::string op = path.substr(kPrefix.size());
        const bool get = req.method == "GET", post = req.method == "POST";

        if (op == "version" && get) return reply(ApiResult::Json({{"version", "v1.19.0-keeld"}}));
        if (op == "newGid" && get) return reply(engine.NewGid());

        std::function<asio::awaitable<ApiResult>()> work;
        if (post && op == "prepare") {
            work = [&engine, body = std::move(req.body)] { return engine.Prepare(body); };
        } else if (post && op == "submit") {
            work = [&engine, body = std::move(req.body)] { return engine.Submit(body); };
        } else if (post && op == "abort") {
            work = [&engine, body = std::move(req.body)] { return engine.Abort(body); };
        } else if (post && op == "forceStop") {
            work = [&engine, body = std::move(req.body)] { return engine.ForceStop(body); };
        } else if (post && (op == "registerBranch" || op == "registerTccBranch" || op == "registerXaBranch")) {
            work = [&engine, body = std::move(req.body)] { return engine.RegisterBranch(body); };
        } else if (post && op == "resetNextCronTime") {
            work = [&engine, body = std::move(req.body)] { return engine.ResetNextCronTime(body); };
        } else if (get && op == "query") {
            work = [&engine, gid = req.Query("gid")] { return engine.Query(gid); };
        } else if (get && op == "all") {
            coordinator::ListFilter f;
            f.gid = req.Query("gid");
            f.status = req.Query("status");
            f.trans_type = req.Query("transType");
            f.create_time_start = IntParam(req, "createTimeStart", 0);
            f.create_time_end = IntParam(req, "createTimeEnd", 0);
            f.position = IntParam(req, "position", 0);
            f.limit = IntParam(req, "limit", 100);
            work = [&engine, f] { return engine.All(f); };
        } else if (get && op == "resetCronTime") {
            int64_t timeout = IntParam(req, "timeout", -1), limit = IntParam(req, "limit", 100);
            work = [&engine, timeout, limit] { return engine.ResetCronTime(timeout, limit); };
        } else {
            return reply(ApiResult::Error(404, "no route " + req.method + " " + path));
        }
        asio::co_spawn(asio::make_strand(io), work(),
                       [respond](std::exception_ptr e, ApiResult r) {
                           if (e) {
                               try {
                                   std::rethrow_exception(e);
                               } catch (const std::exception& ex) {
                                   r = ApiResult::Error(500, std::string("internal error: ") + ex.what());
                               }
                           }
                           respond(ToHttp(r));
                       });
    };
}

}  // namespace keel::keeld
