#include "keeld/workload.hpp"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <thread>

namespace keel::keeld_test {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

std::string BranchId(int step) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%02d", step + 1);
    return buf;
}

}  // namespace

std::vector<PlannedTrans> PlanWorkload(const BusiServer& busi, const WorkloadOptions& options) {
    std::mt19937_64 rng(options.seed);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    std::uniform_int_distribution<int> sleep_ms(0, options.max_sleep_ms);
    std::vector<PlannedTrans> plan;
    plan.reserve(static_cast<size_t>(options.transactions));
    for (int i = 0; i < options.transactions; ++i) {
        PlannedTrans t;
        t.gid = options.gid_prefix + "-" + std::to_string(i);
        t.trans_type = i % 2 == 0 ? "saga" : "msg";
        t.steps = t.trans_type == "saga" ? 2 + static_cast<int>(rng() % 2) : 2;
        if (t.trans_type == "saga" && unit(rng) < options.saga_fail) {
            t.fail_step = static_cast<int>(rng() % static_cast<uint64_t>(t.steps));
        }
        json steps = json::array();
        json payloads = json::array();
        for (int j = 0; j < t.steps; ++j) {
            json directives = json::object();
            if (j == t.fail_step) directives["fail_action"] = true;
            if (unit(rng) < options.first_hiccup) directives["first"] = unit(rng) < 0.5 ? "ONGOING" : "ERROR";
            int s = sleep_ms(rng);
            if (s > 0) directives["sleep_ms"] = s;
            json payload = {{"trans", i}, {"step", j}};
            if (!directives.empty()) payload["busi"] = directives;
            payloads.push_back(payload.dump());
            const std::string route = (t.trans_type == "saga" ? "Step" : "MsgStep") + std::to_string(j);
            if (t.trans_type == "saga") {
                steps.push_back({{"action", busi.Url(route)}, {"compensate", busi.Url(route + "Revert")}});
            } else {
                steps.push_back({{"action", busi.Url(route)}});
            }
        }
        t.body = {{"gid", t.gid},
                  {"trans_type", t.trans_type},
                  {"steps", steps},
                  {"payloads", payloads},
                  {"retry_interval", options.retry_interval}};
        if (t.trans_type == "msg") {
            t.body["query_prepared"] = busi.Url("QueryPrepared");
            t.body["timeout_to_fail"] = options.msg_timeout_to_fail;
        }
        plan.push_back(std::move(t));
    }
    return plan;
}

std::string SubmitPlanned(DtmHttp& http, const PlannedTrans& t, Clock::time_point deadline) {
    const std::string body = t.body.dump();
    auto post = [&](const std::string& op) -> std::string {
        Reply r;
        for (;;) {
            r = http.Send("POST", "/api/dtmsvr/" + op, body, {{"Content-Type", "application/json"}}, 5000ms);
            if (r.status == 200) return "";
            if (r.status == 409) {
                // Refused because an earlier attempt (whose answer a crash swallowed) already moved it on.
                if (!http.StatusOf(t.gid).empty()) return "";
            } else if (r.status != 0 && r.status < 500) {
                return op + " " + t.gid + " -> " + r.Describe();
            }
            if (Clock::now() >= deadline) return op + " " + t.gid + " gave up; last answer " + r.Describe();
            std::this_thread::sleep_for(50ms);
        }
    };
    if (t.trans_type == "msg") {
        if (std::string e = post("prepare"); !e.empty()) return e;
    }
    return post("submit");
}

std::vector<std::string> AwaitAllFinal(DtmHttp& http, const std::vector<PlannedTrans>& plan,
                                       std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    std::map<std::string, std::string> pending;  // gid -> last status
    for (const auto& t : plan) pending[t.gid] = "?";
    auto next_kick = Clock::now() + 2s;
    while (!pending.empty()) {
        for (auto it = pending.begin(); it != pending.end();) {
            std::string s = http.StatusOf(it->first);
            if (s == "succeed" || s == "failed") {
                it = pending.erase(it);
            } else {
                it->second = s.empty() ? "<none>" : s;
                ++it;
            }
        }
        if (pending.empty() || Clock::now() >= deadline) break;
        if (Clock::now() >= next_kick) {
            for (const auto& [gid, status] : pending) http.ResetNextCronTime(gid);
            next_kick = Clock::now() + 1s;
        }
        std::this_thread::sleep_for(100ms);
    }
    std::vector<std::string> out;
    for (const auto& [gid, status] : pending) out.push_back(gid + " still " + status);
    return out;
}

std::vector<std::string> VerifyOutcome(DtmHttp& http, const BusiServer& busi, const std::vector<PlannedTrans>& plan) {
    std::vector<std::string> problems;
    const auto effects = busi.Effects();
    std::map<std::string, std::set<EffectKey>> effects_by_gid;
    for (const auto& e : effects) effects_by_gid[std::get<0>(e)].insert(e);
    std::map<std::string, std::vector<BusiCall>> calls_by_gid;
    for (auto& c : busi.Calls()) calls_by_gid[c.gid].push_back(std::move(c));

    for (const auto& t : plan) {
        const std::string where = t.trans_type + " " + t.gid + " (" + std::to_string(t.steps) + " steps" +
                                  (t.fail_step >= 0 ? ", step " + std::to_string(t.fail_step) + " fails" : "") + "): ";
        std::string status = http.StatusOf(t.gid);
        if (status != t.Expected()) problems.push_back(where + "status '" + status + "', expected " + t.Expected());

        std::vector<std::string> want_branches;
        std::set<EffectKey> want_effects;
        for (int j = 0; j < t.steps; ++j) {
            const std::string bid = BranchId(j);
            if (t.trans_type == "msg") {
                want_branches.push_back("succeed");
                want_effects.insert({t.gid, bid, "action"});
            } else if (t.fail_step < 0) {
                want_branches.insert(want_branches.end(), {"prepared", "succeed"});
                want_effects.insert({t.gid, bid, "action"});
            } else if (j < t.fail_step) {
                want_branches.insert(want_branches.end(), {"succeed", "succeed"});
                want_effects.insert({t.gid, bid, "action"});
                want_effects.insert({t.gid, bid, "compensate"});
            } else if (j == t.fail_step) {
                want_branches.insert(want_branches.end(), {"succeed", "failed"});
                want_effects.insert({t.gid, bid, "compensate"});
            } else {
                want_branches.insert(want_branches.end(), {"prepared", "prepared"});
            }
        }
        auto branches = http.BranchStatuses(t.gid);
        if (branches != want_branches) {
            problems.push_back(where + "branches " + Join(branches) + ", expected " + Join(want_branches));
        }
        const auto& got = effects_by_gid[t.gid];
        for (const auto& e : want_effects) {
            if (!got.count(e)) {
                problems.push_back(where + "effect " + std::get<2>(e) + " of branch " + std::get<1>(e) +
                                   " was never applied");
            }
        }
        for (const auto& e : got) {
            if (!want_effects.count(e)) {
                problems.push_back(where + "effect " + std::get<2>(e) + " of branch " + std::get<1>(e) +
                                   " was applied but must not be");
            }
        }
        const auto& calls = calls_by_gid[t.gid];
        if (t.trans_type == "saga" && t.fail_step >= 0) {
            for (const auto& c : calls) {
                if (c.branch_id > BranchId(t.fail_step)) {
                    problems.push_back(where + "a step after the failed one was called: " + c.Describe());
                }
            }
            // Compensations in reverse order: the first successful compensation of step j starts after that of
            // step j+1 finished.
            std::map<std::string, const BusiCall*> first_ok;
            for (const auto& c : calls) {
                if (c.op == "compensate" && c.status == 200 && !first_ok.count(c.branch_id)) first_ok[c.branch_id] = &c;
            }
            for (int j = 0; j < t.fail_step; ++j) {
                auto a = first_ok.find(BranchId(j));
                auto b = first_ok.find(BranchId(j + 1));
                if (a != first_ok.end() && b != first_ok.end() && a->second->started < b->second->finished) {
                    problems.push_back(where + "compensation of step " + std::to_string(j) +
                                       " started before that of step " + std::to_string(j + 1) + " finished");
                }
            }
        }
        if (t.trans_type == "saga" && t.fail_step < 0) {
            for (const auto& c : calls) {
                if (c.op == "compensate")
                    problems.push_back(where + "a succeeded saga was compensated: " + c.Describe());
            }
        }
    }
    for (const auto& v : busi.Violations()) problems.push_back("violation: " + v);
    return problems;
}

}  // namespace keel::keeld_test
