#pragma once
// A workload of sagas and msgs for keeld's crash and multi-instance tests, with the outcome each transaction must
// reach and the business effects it must leave, derived from its plan alone:
// - a saga of 2–3 steps either succeeds (every action applied, no compensation) or has a planned failing step k
//   (its payload carries {"busi":{"fail_action":true}}): actions 0..k-1 applied, compensations 0..k applied
//   (DTM compensates the failed step too), in reverse order, nothing of steps after k ever called;
// - a msg of 2 steps always succeeds with every action applied once.
// Some steps answer ONGOING or ERROR on their first call and some sleep a little, so that retries go through the
// cron and calls are in flight when a keeld dies.
//
// Thread-safety: Submit() may run on several threads at once (each transaction once); the rest on one thread.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "keeld/busi_server.hpp"
#include "keeld/keeld_client.hpp"

namespace keel::keeld_test {

struct PlannedTrans {
    std::string gid;
    std::string trans_type;  // "saga" or "msg"
    int steps = 0;
    int fail_step = -1;  // saga: the step whose action answers FAILURE; -1: none
    nlohmann::json body;
    std::string Expected() const { return fail_step >= 0 ? "failed" : "succeed"; }
};

struct WorkloadOptions {
    int transactions = 1000;
    std::string gid_prefix = "w";
    uint64_t seed = 1;
    int max_sleep_ms = 20;       // upper bound of a step's planned delay
    double first_hiccup = 0.15;  // share of steps that answer ONGOING/ERROR once
    double saga_fail = 0.35;     // share of sagas with a failing step
    int retry_interval = 1;
    int msg_timeout_to_fail = 3;
};

/// Builds the plan: transactions alternate saga, msg, saga, …
std::vector<PlannedTrans> PlanWorkload(const BusiServer& busi, const WorkloadOptions& options);

/// Submits one planned transaction (msg: prepare, then submit) through `http`, retrying while keeld is down (no
/// answer, 5xx) until `deadline`. A 409 counts as accepted when the transaction exists (an earlier attempt got in
/// before a crash). Returns "" when accepted, otherwise what went wrong.
std::string SubmitPlanned(DtmHttp& http, const PlannedTrans& t, std::chrono::steady_clock::time_point deadline);

/// Polls every transaction until it is succeed or failed (resetNextCronTime on the stragglers every second) or
/// `timeout` passes. Returns the gids that did not finish, with their last status.
std::vector<std::string> AwaitAllFinal(DtmHttp& http, const std::vector<PlannedTrans>& plan,
                                       std::chrono::milliseconds timeout);

/// Checks the final statuses, branch statuses and the busi's effects against the plan; returns one line per
/// discrepancy (empty: all good).
std::vector<std::string> VerifyOutcome(DtmHttp& http, const BusiServer& busi, const std::vector<PlannedTrans>& plan);

}  // namespace keel::keeld_test
