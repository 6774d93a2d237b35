#include "keeld/busi_server.hpp"

#include <algorithm>
#include <cctype>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>

namespace keel::keeld_test {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kPrefix = "/api/busi/";

bool EqualsNoCase(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

std::optional<Outcome> ParseOutcome(const std::string& s) {
    if (s == "SUCCESS") return Outcome::kSuccess;
    if (s == "FAILURE") return Outcome::kFailure;
    if (s == "ONGOING") return Outcome::kOngoing;
    if (s == "ERROR") return Outcome::kError;
    return std::nullopt;
}

std::string Clip(const std::string& s, size_t n = 200) {
    return s.size() <= n ? s : s.substr(0, n) + "…";
}

}  // namespace

const char* OutcomeName(Outcome outcome) {
    switch (outcome) {
        case Outcome::kSuccess: return "SUCCESS";
        case Outcome::kFailure: return "FAILURE";
        case Outcome::kOngoing: return "ONGOING";
        case Outcome::kError: return "ERROR";
    }
    return "?";
}

std::string BusiCall::Header(std::string_view name) const {
    for (const auto& [k, v] : headers) {
        if (EqualsNoCase(k, name)) return v;
    }
    return {};
}

std::string BusiCall::Describe() const {
    std::ostringstream out;
    out << "#" << seq << " " << method << " " << path << "?";
    bool first = true;
    for (const auto& [k, v] : query) {
        out << (first ? "" : "&") << k << "=" << v;
        first = false;
    }
    out << " content-type=" << Header("content-type") << " body=" << Clip(body) << " -> " << status;
    return out.str();
}

BusiServer::BusiServer(int threads) {
    net::HttpServerOptions options;
    auto started = net::StandaloneHttpServer::Start(
        options, [this](net::HttpRequest request, net::Responder respond) { Handle(std::move(request), respond); },
        threads);
    if (!started.ok()) throw std::runtime_error("busi server: " + started.status().ToString());
    server_ = std::move(started).value();
}

BusiServer::~BusiServer() {
    server_.reset();
}

void BusiServer::SetOnce(const std::string& route, Behavior behavior) {
    std::lock_guard lock(mu_);
    once_[route].push_back(std::move(behavior));
}

void BusiServer::SetSticky(const std::string& route, Behavior behavior) {
    std::lock_guard lock(mu_);
    sticky_[route] = std::move(behavior);
}

void BusiServer::ClearSticky(const std::string& route) {
    std::lock_guard lock(mu_);
    sticky_.erase(route);
}

// Called with mu_ held.
Behavior BusiServer::Decide(const BusiCall& call) {
    if (auto it = once_.find(call.route); it != once_.end() && !it->second.empty()) {
        Behavior b = it->second.front();
        it->second.pop_front();
        return b;
    }
    if (auto it = sticky_.find(call.route); it != sticky_.end()) return it->second;
    Behavior b;
    auto body = nlohmann::json::parse(call.body, nullptr, false);
    if (body.is_object() && body.contains("busi") && body["busi"].is_object()) {
        const auto& d = body["busi"];
        if (d.contains("sleep_ms") && d["sleep_ms"].is_number_integer()) b.delay_ms = d["sleep_ms"].get<int>();
        const EffectKey key{call.gid, call.branch_id, call.op};
        if (d.contains("first") && d["first"].is_string() && first_seen_.insert(key).second) {
            if (auto o = ParseOutcome(d["first"].get<std::string>())) b.outcome = *o;
        }
        if (d.value("fail_action", false) && (call.op == "action" || call.op == "try")) {
            b.outcome = Outcome::kFailure;
            b.message = "busi: planned failure of " + call.route;
        }
    }
    return b;
}

void BusiServer::Handle(net::HttpRequest request, net::Responder respond) {
    BusiCall call;
    call.started = Clock::now();
    call.method = request.method;
    call.path = request.path;
    if (request.path.rfind(kPrefix, 0) == 0) call.route = request.path.substr(kPrefix.size());
    call.query = request.query;
    call.gid = request.Query("gid");
    call.trans_type = request.Query("trans_type");
    call.branch_id = request.Query("branch_id");
    call.op = request.Query("op");
    call.headers = request.headers;
    call.body = request.body;

    Behavior behavior;
    size_t index;
    const std::pair<std::string, std::string> branch{call.gid, call.branch_id};
    {
        std::lock_guard lock(mu_);
        call.seq = next_seq_++;
        behavior = Decide(call);
        auto& ops = in_flight_[branch];
        for (const auto& other : ops) {
            overlaps_.push_back("gid " + call.gid + " branch " + call.branch_id + ": op " + call.op + " (" +
                                call.route + ") called while op " + other + " was still in flight");
        }
        ops.push_back(call.op);
        index = calls_.size();
        calls_.push_back(call);
    }
    if (behavior.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(behavior.delay_ms));

    net::HttpResponse response;
    switch (behavior.outcome) {
        case Outcome::kSuccess:
            response.status = 200;
            response.body = R"({"dtm_result":"SUCCESS"})";
            break;
        case Outcome::kFailure:
            response.status = 409;
            response.body = nlohmann::json{{"dtm_result", "FAILURE"},
                                           {"message", behavior.message.empty() ? "busi " + call.route + " FAILURE"
                                                                                : behavior.message}}
                                .dump();
            break;
        case Outcome::kOngoing:
            response.status = 425;
            response.body = R"({"dtm_result":"ONGOING"})";
            break;
        case Outcome::kError:
            response.status = 500;
            response.body = R"({"message":"busi error"})";
            break;
    }
    {
        std::lock_guard lock(mu_);
        auto& ops = in_flight_[branch];
        if (auto it = std::find(ops.begin(), ops.end(), call.op); it != ops.end()) ops.erase(it);
        if (ops.empty()) in_flight_.erase(branch);
        if (behavior.outcome == Outcome::kSuccess && call.op != "msg" && !call.gid.empty()) {
            const EffectKey key{call.gid, call.branch_id, call.op};
            if (applied_.insert(key).second) {
                auto applied = [&](const char* op) { return applied_.count({call.gid, call.branch_id, op}) > 0; };
                const std::string where = "gid " + call.gid + " branch " + call.branch_id + ": ";
                if (call.op == "action" && applied("compensate")) {
                    violations_.push_back(where + "action applied after its compensation");
                }
                if (call.op == "try" && applied("cancel")) violations_.push_back(where + "try applied after cancel");
                if ((call.op == "confirm" && applied("cancel")) || (call.op == "cancel" && applied("confirm"))) {
                    violations_.push_back(where + "both confirm and cancel applied");
                }
            } else {
                ++redeliveries_[key];
            }
        }
        calls_[index].status = response.status;
        calls_[index].finished = Clock::now();
    }
    cv_.notify_all();
    respond(std::move(response));
}

std::vector<BusiCall> BusiServer::Calls() const {
    std::lock_guard lock(mu_);
    return calls_;
}

std::vector<BusiCall> BusiServer::CallsTo(const std::string& route, const std::string& gid,
                                          const std::string& op) const {
    std::lock_guard lock(mu_);
    std::vector<BusiCall> out;
    for (const auto& c : calls_) {
        if ((route.empty() || c.route == route) && (gid.empty() || c.gid == gid) && (op.empty() || c.op == op)) {
            out.push_back(c);
        }
    }
    return out;
}

size_t BusiServer::Count(const std::string& route, const std::string& gid, const std::string& op) const {
    return CallsTo(route, gid, op).size();
}

bool BusiServer::WaitForCalls(const std::string& route, const std::string& gid, size_t n,
                              std::chrono::milliseconds timeout) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
        size_t k = 0;
        for (const auto& c : calls_) {
            if (c.status != 0 && (route.empty() || c.route == route) && (gid.empty() || c.gid == gid)) ++k;
        }
        return k >= n;
    });
}

int BusiServer::Applied(const std::string& gid, const std::string& branch_id, const std::string& op) const {
    std::lock_guard lock(mu_);
    return applied_.count({gid, branch_id, op}) > 0 ? 1 : 0;
}

std::set<EffectKey> BusiServer::Effects() const {
    std::lock_guard lock(mu_);
    return applied_;
}

std::map<EffectKey, int> BusiServer::Redeliveries() const {
    std::lock_guard lock(mu_);
    return redeliveries_;
}

std::vector<std::string> BusiServer::Overlaps() const {
    std::lock_guard lock(mu_);
    return overlaps_;
}

std::vector<std::string> BusiServer::Violations() const {
    std::lock_guard lock(mu_);
    return violations_;
}

}  // namespace keel::keeld_test
