// Crash test of keeld (label crash): a workload of 1,000 sagas and msgs (workload.hpp: sagas that succeed and sagas
// whose planned failing step makes them roll back, msgs that always succeed; some steps answer ONGOING/ERROR once,
// some sleep) is submitted by 4 client threads while keeld is SIGKILLed 10 times at random moments and restarted
// on the same sqlite: storage. Clients retry while keeld is down. Afterwards:
// - every transaction is succeed or failed as its plan dictates, with the expected branch statuses;
// - the business service's effect log (idempotent per (gid, branch_id, op)) holds exactly the planned effects:
//   every action of a succeeded transaction, every compensation of a failed saga including the failed step, in
//   reverse order, nothing of the steps after a failed one, no action after its compensation;
// - no branch call overlapped another call of the same branch (keeld never ran one transaction twice at once);
// - nothing is called any more once everything is final.
// Re-deliveries of a call after a crash are allowed (at least once) and printed.
//
// The seed is printed; KEELD_CRASH_SEED replays a run's plan and kill timings.

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "keeld/busi_server.hpp"
#include "keeld/keeld_client.hpp"
#include "keeld/keeld_process.hpp"
#include "keeld/workload.hpp"

namespace keel::keeld_test {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kTransactions = 1000;
constexpr int kClients = 4;
constexpr int kKills = 10;
constexpr std::chrono::milliseconds kPace{8};

uint64_t Seed() {
    if (const char* s = std::getenv("KEELD_CRASH_SEED")) return std::strtoull(s, nullptr, 10);
    return static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
}

TEST(KeeldCrash, TenKillsDuringAThousandSagasAndMsgs) {
    const uint64_t seed = Seed();
    std::cout << "KEELD_CRASH_SEED=" << seed << std::endl;
    std::mt19937_64 rng(seed);

    BusiServer busi(16);
    KeeldProcess keeld;
    ASSERT_TRUE(keeld.Start().ok()) << keeld.LogTail();
    DtmHttp http([&] { return keeld.base_url(); });

    WorkloadOptions options;
    options.transactions = kTransactions;
    options.gid_prefix = "crash";
    options.seed = seed;
    const auto plan = PlanWorkload(busi, options);

    std::atomic<size_t> next{0};
    std::atomic<int> accepted{0};
    std::mutex errors_mu;
    std::vector<std::string> submit_errors;
    const auto submit_deadline = Clock::now() + 240s;
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; ++c) {
        clients.emplace_back([&] {
            DtmHttp client([&] { return keeld.base_url(); });
            for (size_t i; (i = next.fetch_add(1)) < plan.size();) {
                // Paced so that the submissions span the whole series of kills (about 5 s).
                std::this_thread::sleep_for(kPace);
                std::string e = SubmitPlanned(client, plan[i], submit_deadline);
                if (e.empty()) {
                    ++accepted;
                } else {
                    std::lock_guard lock(errors_mu);
                    submit_errors.push_back(e);
                }
            }
        });
    }

    // Kill at random moments while the clients submit (and while keeld works off what they submitted).
    std::uniform_int_distribution<int> pause_ms(100, 700);
    std::uniform_int_distribution<int> down_ms(0, 150);
    std::vector<int> accepted_at_kill;
    for (int k = 0; k < kKills; ++k) {
        std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));
        keeld.Kill();
        accepted_at_kill.push_back(accepted.load());
        std::this_thread::sleep_for(std::chrono::milliseconds(down_ms(rng)));
        Status s = keeld.Restart();
        ASSERT_TRUE(s.ok()) << "restart after kill " << k + 1 << ": " << s.ToString();
    }
    for (auto& t : clients) t.join();
    std::cout << "accepted transactions at each kill:";
    for (int a : accepted_at_kill) std::cout << ' ' << a;
    std::cout << "\n";
    EXPECT_TRUE(submit_errors.empty()) << submit_errors.size() << " submissions failed, first: " << submit_errors[0];
    EXPECT_EQ(accepted.load(), kTransactions);
    EXPECT_LT(accepted_at_kill.front(), kTransactions)
        << "the first kill should hit the workload while it is submitted";

    const auto unfinished = AwaitAllFinal(http, plan, 180s);
    EXPECT_TRUE(unfinished.empty()) << unfinished.size() << " transactions did not finish, e.g. " << unfinished[0]
                                    << "\nkeeld output (tail):\n"
                                    << keeld.LogTail();

    const size_t calls_when_final = busi.Calls().size();
    std::this_thread::sleep_for(2s);
    EXPECT_EQ(busi.Calls().size(), calls_when_final) << "branches are still called after every transaction finished";

    auto problems = VerifyOutcome(http, busi, plan);
    for (size_t i = 0; i < problems.size() && i < 40; ++i) ADD_FAILURE() << problems[i];
    EXPECT_TRUE(problems.empty()) << problems.size() << " discrepancies";

    auto overlaps = busi.Overlaps();
    for (size_t i = 0; i < overlaps.size() && i < 20; ++i) ADD_FAILURE() << "overlap: " << overlaps[i];

    int redelivered = 0;
    for (const auto& [key, n] : busi.Redeliveries()) redelivered += n;
    int failed_sagas = 0;
    for (const auto& t : plan) failed_sagas += t.fail_step >= 0 ? 1 : 0;
    std::cout << "transactions " << plan.size() << " (" << failed_sagas << " sagas planned to fail), branch calls "
              << busi.Calls().size() << ", effects " << busi.Effects().size() << ", re-deliveries absorbed by the "
              << "idempotency key " << redelivered << std::endl;
    if (HasFailure()) std::cout << "keeld output (tail):\n" << keeld.LogTail(6000) << std::endl;
}

}  // namespace
}  // namespace keel::keeld_test
