// The DTM client (dtm.hpp) over keel's blocking HTTP client. Bodies and result rules follow DTM's protocol
// (../shared/dtm-protocol.md §1, §2.2); docs/dtm-client.md.

#include <memory>
#include <mutex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "keel/dtm.hpp"

#include "net/http.hpp"
#include "net/http_client.hpp"

namespace keel::dtm {
namespace {

using nlohmann::json;
constexpr auto kReplace = json::error_handler_t::replace;

// One client per process, destroyed (its thread joined) at exit. After fork() the parent's client thread does not
// exist in the child: the child makes a client of its own and never destroys it (it must not join a thread that is
// not there, nor touch the parent's).
net::SyncHttpClient& Http() {
    static const pid_t main_pid = ::getpid();
    static net::SyncHttpClient main_client;
    if (::getpid() == main_pid) return main_client;
    static std::mutex mu;
    static net::SyncHttpClient* child_client = nullptr;
    static pid_t child_pid = 0;
    std::lock_guard lock(mu);
    if (child_client == nullptr || child_pid != ::getpid()) {
        child_client = new net::SyncHttpClient();  // NOLINT: see above
        child_pid = ::getpid();
    }
    return *child_client;
}

std::string Shorten(std::string_view body) {
    std::string s(body.substr(0, 300));
    for (char& c : s) {
        if (c == '\n' || c == '\r') c = ' ';
    }
    return s;
}

// DTM's order: ONGOING, then FAILURE, then any other non-200; 200 is success.
Status Classify(const std::string& what, const Result<net::HttpResponse>& reply) {
    if (!reply.ok()) return reply.status().WithContext(what);
    const net::HttpResponse& r = *reply;
    if (r.status == 425 || r.body.find("ONGOING") != std::string::npos) {
        return Status::Unavailable(fmt::format("ONGOING: {}: {}", what, Shorten(r.body)));
    }
    if (r.status == 409 || r.body.find("FAILURE") != std::string::npos) {
        return Failure(fmt::format("{}: {} {}", what, r.status, Shorten(r.body)));
    }
    if (r.status == 200) return Status::Ok();
    const std::string text = fmt::format("{}: HTTP {} {}", what, r.status, Shorten(r.body));
    if (r.status == 404) return Status::NotFound(text);
    if (r.status >= 400 && r.status < 500) return Status::InvalidArgument(text);
    return Status::Internal(text);
}

Result<net::HttpResponse> Send(std::string method, std::string url, std::string body,
                               std::chrono::milliseconds timeout) {
    net::HttpRequest req;
    req.method = std::move(method);
    req.path = std::move(url);
    req.body = std::move(body);
    req.timeout = timeout;
    if (!req.body.empty()) req.headers.emplace_back("Content-Type", "application/json");
    return Http().Send(std::move(req));
}

// POSTs `body` to server/op and classifies the reply.
Status CallDtm(const std::string& server, std::string_view op, const std::string& body,
               std::chrono::milliseconds timeout) {
    const std::string url = fmt::format("{}/{}", server, op);
    return Classify(fmt::format("{} {}", op, server), Send("POST", url, body, timeout));
}

void AddOptions(json& j, const TransOptions& o) {
    if (o.wait_result) j["wait_result"] = true;
    if (o.timeout_to_fail > 0) j["timeout_to_fail"] = o.timeout_to_fail;
    if (o.retry_interval > 0) j["retry_interval"] = o.retry_interval;
    if (o.request_timeout > 0) j["request_timeout"] = o.request_timeout;
    if (o.retry_limit > 0) j["retry_limit"] = o.retry_limit;
    if (!o.branch_headers.empty()) j["branch_headers"] = o.branch_headers;
}

std::string BranchUrl(const std::string& url, const std::string& gid, std::string_view trans_type,
                      std::string_view branch_id, std::string_view op) {
    std::string out = net::AppendQuery(url, "gid", gid);
    out = net::AppendQuery(std::move(out), "trans_type", trans_type);
    out = net::AppendQuery(std::move(out), "branch_id", branch_id);
    return net::AppendQuery(std::move(out), "op", op);
}

}  // namespace

bool IsOngoing(const Status& s) {
    return s.code() == StatusCode::kUnavailable && s.message().rfind("ONGOING", 0) == 0;
}

Result<std::string> NewGid(const std::string& server, std::chrono::milliseconds timeout) {
    auto reply = Send("GET", server + "/newGid", "", timeout);
    KEEL_RETURN_IF_ERROR(Classify("newGid " + server, reply));
    auto j = json::parse(reply->body, nullptr, false);
    if (!j.is_object() || !j.contains("gid") || !j["gid"].is_string()) {
        return Status::Corruption("newGid: the reply has no gid: " + Shorten(reply->body));
    }
    return j["gid"].get<std::string>();
}

Result<std::optional<TransInfo>> QueryTrans(const std::string& server, const std::string& gid,
                                            std::chrono::milliseconds timeout) {
    auto reply = Send("GET", net::AppendQuery(server + "/query", "gid", gid), "", timeout);
    KEEL_RETURN_IF_ERROR(Classify("query " + server, reply));
    auto j = json::parse(reply->body, nullptr, false);
    if (!j.is_object()) return Status::Corruption("query: the reply is not a JSON object: " + Shorten(reply->body));
    auto text = [](const json& o, const char* key) {
        auto it = o.find(key);
        return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    auto trans = j.find("transaction");
    if (trans == j.end() || trans->is_null()) return std::optional<TransInfo>();
    if (!trans->is_object()) return Status::Corruption("query: 'transaction' is not an object");
    TransInfo info;
    info.gid = text(*trans, "gid");
    info.trans_type = text(*trans, "trans_type");
    info.status = text(*trans, "status");
    info.rollback_reason = text(*trans, "rollback_reason");
    if (auto b = j.find("branches"); b != j.end() && b->is_array()) {
        for (const json& row : *b) {
            if (!row.is_object()) continue;
            info.branches.push_back(
                BranchInfo{text(row, "branch_id"), text(row, "op"), text(row, "status"), text(row, "url")});
        }
    }
    info.json = std::move(reply->body);
    return std::optional<TransInfo>(std::move(info));
}

// ---------------------------------------------------------------------------------------------------------------
// Msg

Msg::Msg(std::string server, std::string gid) : server_(std::move(server)), gid_(std::move(gid)) {}

Msg& Msg::Add(std::string action_url, std::string payload) {
    actions_.push_back(std::move(action_url));
    payloads_.push_back(std::move(payload));
    return *this;
}

Msg& Msg::EnableConcurrent() {
    concurrent_ = true;
    return *this;
}

Msg& Msg::SetDelay(int64_t seconds) {
    delay_ = seconds;
    return *this;
}

std::string Msg::Body(bool with_steps) const {
    json j = {{"gid", gid_}, {"trans_type", "msg"}, {"protocol", "http"}, {"concurrent", concurrent_}};
    if (with_steps) {
        json steps = json::array();
        for (const std::string& a : actions_) steps.push_back({{"action", a}});
        j["steps"] = std::move(steps);
        j["payloads"] = payloads_;
        if (!query_prepared_.empty()) j["query_prepared"] = query_prepared_;
        if (delay_ > 0) j["custom_data"] = json{{"delay", delay_}}.dump();
    }
    AddOptions(j, options_);
    return j.dump(-1, ' ', false, kReplace);
}

Status Msg::Prepare(std::string query_prepared_url) {
    query_prepared_ = std::move(query_prepared_url);
    return CallDtm(server_, "prepare", Body(true), options_.http_timeout);
}

Status Msg::Submit() {
    return CallDtm(server_, "submit", Body(true), options_.http_timeout);
}

Status Msg::Abort() {
    return CallDtm(server_, "abort", Body(false), options_.http_timeout);
}

Status Msg::DoAndSubmit(std::string query_prepared_url, const std::function<Status(Barrier&)>& fn, BarrierTable table) {
    auto barrier = Barrier::Make("msg", gid_, "00", "msg", std::move(table));
    if (!barrier.ok()) return barrier.status();
    KEEL_RETURN_IF_ERROR(Prepare(query_prepared_url));
    const Status busi = fn(*barrier);
    Status err;
    if (!busi.ok() && !IsFailure(busi)) {
        // The local transaction's outcome is unknown to us (e.g. its commit failed): ask the back-check, which also
        // settles it for good.
        err = Classify("back-check " + query_prepared_,
                       Send("GET", BranchUrl(query_prepared_, gid_, "msg", "00", "msg"), "", options_.http_timeout));
    }
    if (IsFailure(busi) || IsFailure(err)) {
        (void)Abort();  // the coordinator may have failed it already (its own back-check); either way it is over
    } else if (err.ok()) {
        err = Submit();
    }
    if (!busi.ok()) return busi;
    return err;
}

Status Msg::DoAndSubmitDB(std::string query_prepared_url, EventStore& db, const Barrier::BusinessFn& fn,
                          BarrierTable table) {
    return DoAndSubmit(
        std::move(query_prepared_url), [&](Barrier& barrier) { return barrier.Call(db, fn); }, std::move(table));
}

// ---------------------------------------------------------------------------------------------------------------
// Saga

Saga::Saga(std::string server, std::string gid) : server_(std::move(server)), gid_(std::move(gid)) {}

Saga& Saga::Add(std::string action_url, std::string compensate_url, std::string payload) {
    steps_.emplace_back(std::move(action_url), std::move(compensate_url));
    payloads_.push_back(std::move(payload));
    return *this;
}

Saga& Saga::EnableConcurrent() {
    concurrent_ = true;
    return *this;
}

Saga& Saga::AddBranchOrder(int branch, std::vector<int> pre_branches) {
    orders_[branch] = std::move(pre_branches);
    return *this;
}

Status Saga::Submit() {
    json steps = json::array();
    for (const auto& [action, compensate] : steps_) steps.push_back({{"action", action}, {"compensate", compensate}});
    json j = {{"gid", gid_},    {"trans_type", "saga"},  {"protocol", "http"},
              {"steps", steps}, {"payloads", payloads_}, {"concurrent", false}};
    if (concurrent_ || !orders_.empty()) {
        json orders = json::object();
        for (const auto& [branch, pre] : orders_) orders[std::to_string(branch)] = pre;
        j["custom_data"] = json{{"concurrent", concurrent_}, {"orders", orders}}.dump();
    }
    AddOptions(j, options_);
    return CallDtm(server_, "submit", j.dump(-1, ' ', false, kReplace), options_.http_timeout);
}

// ---------------------------------------------------------------------------------------------------------------
// TCC

Result<std::string> Tcc::CallBranch(const std::string& payload, const std::string& try_url,
                                    const std::string& confirm_url, const std::string& cancel_url) {
    const std::string branch_id = fmt::format("{:02d}", ++branches_);
    const json reg = {{"gid", gid_},     {"trans_type", "tcc"},    {"branch_id", branch_id},
                      {"data", payload}, {"confirm", confirm_url}, {"cancel", cancel_url}};
    KEEL_RETURN_IF_ERROR(CallDtm(server_, "registerBranch", reg.dump(-1, ' ', false, kReplace), options_.http_timeout));
    std::string url = net::AppendQuery(try_url, "dtm", server_);
    url = BranchUrl(url, gid_, "tcc", branch_id, "try");
    auto reply = Send(payload.empty() ? "GET" : "POST", url, payload, options_.http_timeout);
    KEEL_RETURN_IF_ERROR(Classify(fmt::format("try of branch {} ({})", branch_id, try_url), reply));
    return std::move(reply->body);
}

Status TccGlobalTransaction(const std::string& server, const std::string& gid, const std::function<Status(Tcc&)>& fn,
                            const TransOptions& options) {
    json base = {{"gid", gid}, {"trans_type", "tcc"}, {"protocol", "http"}, {"concurrent", false}};
    json prepare = base;
    AddOptions(prepare, options);
    KEEL_RETURN_IF_ERROR(CallDtm(server, "prepare", prepare.dump(-1, ' ', false, kReplace), options.http_timeout));
    Tcc tcc(server, gid, options);
    const Status busi = fn(tcc);
    if (busi.ok()) {
        json submit = base;
        AddOptions(submit, options);
        return CallDtm(server, "submit", submit.dump(-1, ' ', false, kReplace), options.http_timeout);
    }
    json abort = base;
    abort["rollback_reason"] = busi.message();
    AddOptions(abort, options);
    (void)CallDtm(server, "abort", abort.dump(-1, ' ', false, kReplace), options.http_timeout);
    return busi;
}

}  // namespace keel::dtm
