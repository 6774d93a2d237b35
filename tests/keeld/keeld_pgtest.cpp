// Two keeld processes on one postgresql: storage (label pg; needs KEEL_TEST_PG — scripts/services.sh env prints it;
// without it the tests fail, they do not skip). Each test uses its own PostgreSQL schema (the URI's ?schema=), which
// the two keeld processes create as they start together, dropped afterwards.
// - TwoInstancesShareAWorkload: both start at once on a fresh schema; a workload of sagas and msgs (many steps
//   answer ONGOING/ERROR once, so their retries go through both instances' crons) is submitted alternately to
//   both; every transaction finishes as its plan dictates and no branch is ever called by both at once (the
//   business service records calls of one (gid, branch) that overlap).
// - SurvivorFinishesTheWorkOfAKilledInstance: transactions submitted to A, whose first calls all answer ONGOING;
//   A is SIGKILLed; B alone finishes all of them.

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include "keeld/busi_server.hpp"
#include "keeld/keeld_client.hpp"
#include "keeld/keeld_process.hpp"
#include "keeld/workload.hpp"

namespace keel::keeld_test {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string ServerUri() {
    const char* uri = std::getenv("KEEL_TEST_PG");
    return uri != nullptr ? uri : "";
}

// Runs `sql` on the server; "" or the error.
std::string Exec(const std::string& sql) {
    PGconn* c = PQconnectdb(ServerUri().c_str());
    std::string error;
    if (PQstatus(c) != CONNECTION_OK) {
        error = PQerrorMessage(c);
    } else {
        PQsetNoticeProcessor(
            c, [](void*, const char*) {}, nullptr);
        PGresult* r = PQexec(c, sql.c_str());
        if (PQresultStatus(r) != PGRES_COMMAND_OK) error = PQresultErrorMessage(r);
        PQclear(r);
    }
    PQfinish(c);
    return error;
}

class KeeldPg : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_FALSE(ServerUri().empty()) << "KEEL_TEST_PG is not set: start the servers with scripts/services.sh "
                                             "start and eval \"$(scripts/services.sh env)\"";
        schema_ = "keeld_pgtest_" + std::to_string(::getpid());
        // keeld creates the schema and its tables itself; both processes start at once and race to do it.
        ASSERT_EQ(Exec("DROP SCHEMA IF EXISTS " + schema_ + " CASCADE"), "");
        storage_ = ServerUri() + (ServerUri().find('?') == std::string::npos ? "?" : "&") + "schema=" + schema_;
    }
    void TearDown() override {
        if (a_ && HasFailure()) std::cout << "keeld A output (tail):\n" << a_->LogTail(4000) << "\n";
        if (b_ && HasFailure()) std::cout << "keeld B output (tail):\n" << b_->LogTail(4000) << "\n";
        a_.reset();
        b_.reset();
        if (!schema_.empty()) Exec("DROP SCHEMA IF EXISTS " + schema_ + " CASCADE");
    }

    // Starts A and B at the same time on the fresh schema (both may try to create it).
    void StartBoth() {
        KeeldOptions options;
        options.storage = storage_;
        a_ = std::make_unique<KeeldProcess>(options);
        b_ = std::make_unique<KeeldProcess>(options);
        Status la = a_->Launch();
        Status lb = b_->Launch();
        ASSERT_TRUE(la.ok()) << "A: " << la.ToString();
        ASSERT_TRUE(lb.ok()) << "B: " << lb.ToString();
        Status sa = a_->AwaitReady();
        Status sb = b_->AwaitReady();
        ASSERT_TRUE(sa.ok()) << "A: " << sa.ToString();
        ASSERT_TRUE(sb.ok()) << "B: " << sb.ToString();
    }

    std::string schema_, storage_;
    std::unique_ptr<KeeldProcess> a_, b_;
};

TEST_F(KeeldPg, TwoInstancesShareAWorkload) {
    ASSERT_NO_FATAL_FAILURE(StartBoth());
    BusiServer busi(16);
    DtmHttp via_a([&] { return a_->base_url(); });
    DtmHttp via_b([&] { return b_->base_url(); });

    WorkloadOptions options;
    options.transactions = 300;
    options.gid_prefix = "pg2";
    options.seed = 7;
    options.first_hiccup = 0.5;  // many retries, so both crons compete for due transactions
    options.max_sleep_ms = 40;
    const auto plan = PlanWorkload(busi, options);

    std::atomic<size_t> next{0};
    std::mutex mu;
    std::vector<std::string> errors;
    std::vector<std::thread> clients;
    const auto deadline = Clock::now() + 120s;
    for (int c = 0; c < 4; ++c) {
        clients.emplace_back([&] {
            DtmHttp ca([&] { return a_->base_url(); });
            DtmHttp cb([&] { return b_->base_url(); });
            for (size_t i; (i = next.fetch_add(1)) < plan.size();) {
                std::string e = SubmitPlanned(i % 2 == 0 ? ca : cb, plan[i], deadline);
                if (!e.empty()) {
                    std::lock_guard lock(mu);
                    errors.push_back(e);
                }
            }
        });
    }
    for (auto& t : clients) t.join();
    EXPECT_TRUE(errors.empty()) << errors.size() << " submissions failed, first: " << errors[0];

    // No kicks here: the retries must come from the instances' own crons.
    std::vector<std::string> unfinished;
    const auto wait_deadline = Clock::now() + 120s;
    for (const auto& t : plan) {
        std::string last;
        if (!via_b.WaitStatus(t.gid, t.Expected(),
                              std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::max(wait_deadline - Clock::now(), Clock::duration(1s))),
                              &last)) {
            unfinished.push_back(t.gid + ": " + last);
        }
    }
    EXPECT_TRUE(unfinished.empty()) << unfinished.size() << " did not reach their expected status, e.g. "
                                    << unfinished[0];

    auto problems = VerifyOutcome(via_a, busi, plan);
    for (size_t i = 0; i < problems.size() && i < 40; ++i) ADD_FAILURE() << problems[i];
    auto overlaps = busi.Overlaps();
    for (size_t i = 0; i < overlaps.size() && i < 20; ++i) ADD_FAILURE() << "overlap: " << overlaps[i];
    EXPECT_TRUE(overlaps.empty()) << overlaps.size() << " overlapping branch calls";
    int redelivered = 0;
    for (const auto& [key, n] : busi.Redeliveries()) redelivered += n;
    std::cout << "branch calls " << busi.Calls().size() << ", effects " << busi.Effects().size() << ", re-deliveries "
              << redelivered << std::endl;

    // Both see the same state.
    for (size_t i = 0; i < plan.size(); i += 37) {
        EXPECT_EQ(via_a.StatusOf(plan[i].gid), via_b.StatusOf(plan[i].gid)) << plan[i].gid;
    }
}

TEST_F(KeeldPg, SurvivorFinishesTheWorkOfAKilledInstance) {
    ASSERT_NO_FATAL_FAILURE(StartBoth());
    BusiServer busi(16);
    DtmHttp via_a([&] { return a_->base_url(); });
    DtmHttp via_b([&] { return b_->base_url(); });

    // Every step's first call answers ONGOING, so nothing finishes within the first pass on A.
    std::vector<std::string> gids;
    for (int i = 0; i < 40; ++i) {
        std::string gid = "survivor-" + std::to_string(i);
        nlohmann::json payload = {{"i", i}, {"busi", {{"first", "ONGOING"}}}};
        nlohmann::json body = {{"gid", gid},
                               {"trans_type", "saga"},
                               {"steps",
                                {{{"action", busi.Url("S0")}, {"compensate", busi.Url("S0Revert")}},
                                 {{"action", busi.Url("S1")}, {"compensate", busi.Url("S1Revert")}}}},
                               {"payloads", {payload.dump(), payload.dump()}},
                               {"retry_interval", 1}};
        Reply r = via_a.Post("submit", body);
        ASSERT_EQ(r.status, 200) << r.Describe();
        gids.push_back(gid);
    }
    ASSERT_TRUE(busi.WaitForCalls("S0", "", 40, 20s)) << "A should have made the first calls";
    a_->Kill();
    for (const auto& gid : gids) {
        std::string last;
        EXPECT_TRUE(via_b.WaitStatus(gid, "succeed", 60s, &last)) << gid << ": " << last;
        EXPECT_EQ(via_b.BranchStatuses(gid), (std::vector<std::string>{"prepared", "succeed", "prepared", "succeed"}))
            << gid;
        EXPECT_EQ(busi.Applied(gid, "01", "action") + busi.Applied(gid, "02", "action"), 2) << gid;
    }
    auto overlaps = busi.Overlaps();
    EXPECT_TRUE(overlaps.empty()) << overlaps.size() << " overlapping calls, e.g. " << overlaps[0];
}

}  // namespace
}  // namespace keel::keeld_test
