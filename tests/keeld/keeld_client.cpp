#include "keeld/keeld_client.hpp"

#include <thread>

namespace keel::keeld_test {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string Reply::Describe() const {
    if (status == 0) return "no answer: " + error;
    std::string b = body.size() > 600 ? body.substr(0, 600) + "…" : body;
    return std::to_string(status) + " " + b;
}

std::string Reply::Str(const std::string& key) const {
    if (!json.is_object()) return {};
    auto it = json.find(key);
    if (it == json.end() || !it->is_string()) return {};
    return it->get<std::string>();
}

DtmHttp::DtmHttp(std::function<std::string()> base, std::string token)
    : base_(std::move(base)), token_(std::move(token)), client_(std::make_unique<net::SyncHttpClient>()) {}

Reply DtmHttp::Send(const std::string& method, const std::string& path, const std::string& body, net::Headers headers,
                    std::chrono::milliseconds timeout) {
    net::HttpRequest request;
    request.method = method;
    request.path = base_() + path;
    request.headers = std::move(headers);
    if (!token_.empty()) request.headers.emplace_back("Authorization", "Bearer " + token_);
    request.body = body;
    request.timeout = timeout;
    Reply reply;
    auto r = client_->Send(std::move(request));
    if (!r.ok()) {
        reply.error = r.status().ToString();
        return reply;
    }
    reply.status = r->status;
    reply.body = r->body;
    reply.content_type = r->content_type;
    reply.json = nlohmann::json::parse(reply.body, nullptr, false);
    return reply;
}

Reply DtmHttp::Get(const std::string& op_and_query) {
    return Send("GET", "/api/dtmsvr/" + op_and_query);
}

Reply DtmHttp::Post(const std::string& op, const nlohmann::json& body) {
    return PostRaw(op, body.dump());
}

Reply DtmHttp::PostRaw(const std::string& op, const std::string& raw) {
    return Send("POST", "/api/dtmsvr/" + op, raw, {{"Content-Type", "application/json"}});
}

Reply DtmHttp::Query(const std::string& gid) {
    return Get("query?gid=" + net::PercentEncode(gid));
}

std::string DtmHttp::StatusOf(const std::string& gid) {
    return TransField(gid, "status");
}

std::string DtmHttp::TransField(const std::string& gid, const std::string& key) {
    Reply r = Query(gid);
    if (r.status != 200 || !r.json.is_object()) return {};
    auto t = r.json.find("transaction");
    if (t == r.json.end() || !t->is_object()) return {};
    auto v = t->find(key);
    if (v == t->end()) return {};
    return v->is_string() ? v->get<std::string>() : v->dump();
}

std::vector<std::string> DtmHttp::BranchStatuses(const std::string& gid) {
    std::vector<std::string> out;
    Reply r = Query(gid);
    if (r.status != 200 || !r.json.is_object()) return {"<query failed: " + r.Describe() + ">"};
    auto b = r.json.find("branches");
    if (b == r.json.end() || !b->is_array()) return {"<no branches array: " + r.Describe() + ">"};
    for (const auto& branch : *b) {
        out.push_back(branch.is_object() && branch.contains("status") && branch["status"].is_string()
                          ? branch["status"].get<std::string>()
                          : "<" + branch.dump() + ">");
    }
    return out;
}

Reply DtmHttp::ResetNextCronTime(const std::string& gid) {
    return Post("resetNextCronTime", nlohmann::json{{"gid", gid}});
}

std::string DtmHttp::NewGid() {
    return Get("newGid").Str("gid");
}

bool DtmHttp::WaitStatus(const std::string& gid, const std::string& want, std::chrono::milliseconds timeout,
                         std::string* last) {
    return WaitStatusKicking(gid, want, timeout, last, 0ms);
}

bool DtmHttp::WaitStatusKicking(const std::string& gid, const std::string& want, std::chrono::milliseconds timeout,
                                std::string* last, std::chrono::milliseconds kick) {
    const auto deadline = Clock::now() + timeout;
    auto next_kick = Clock::now() + kick;
    const auto start = Clock::now();
    Reply r;
    for (;;) {
        r = Query(gid);
        const bool exists = r.status == 200 && r.json.is_object() && r.json.contains("transaction") &&
                            r.json["transaction"].is_object();
        if (exists && r.json["transaction"].value("status", "") == want) return true;
        if (Clock::now() >= deadline) break;
        // A transaction that still does not exist after 3 s will not appear (its submit failed): do not wait on.
        if (!exists && r.status == 200 && Clock::now() - start > 3s) break;
        if (kick > 0ms && Clock::now() >= next_kick) {
            ResetNextCronTime(gid);
            next_kick = Clock::now() + kick;
        }
        std::this_thread::sleep_for(20ms);
    }
    if (last != nullptr) *last = r.Describe();
    return false;
}

std::string Join(const std::vector<std::string>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + v[i];
    return out + "]";
}

}  // namespace keel::keeld_test
