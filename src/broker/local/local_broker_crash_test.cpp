// Crash test for local: (label `crash`): consumer processes are SIGKILLed at random moments, mostly between a
// Receive and its Ack, several times in a row; a last consumer runs to the end. Afterwards every message must have
// been delivered and acknowledged (the broker holds nothing more), some must have been redelivered with attempt > 1,
// attempts of one message only grow, and each key's messages must have been received in publish order across all the
// crashes (a redelivery repeats the key's current message; it never goes back to an earlier one or skips one).

#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keel/broker.hpp"
#include "keel/status.hpp"
#include "keel/uuid.hpp"

#include "conformance/test_support.hpp"

namespace keel {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr int kKeys = 8;
constexpr int kPerKey = 60;
constexpr int kKills = 12;

void Log(int fd, const std::string& line) {
    const std::string text = line + "\n";
    if (::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) _exit(20);
}

// A consumer process: logs "recv <id> <payload> <attempt>" on each delivery, works a little, acks, logs "ack <id>".
// Exits 0 after `idle` without deliveries.
int Child(const std::string& uri, const std::string& log_path, milliseconds idle) {
    auto broker = OpenBroker(uri);
    if (!broker.ok()) {
        fprintf(stderr, "child: open: %s\n", broker.status().ToString().c_str());
        return 2;
    }
    auto consumer = (*broker)->Consume("orders", "projector", ConsumeOptions{.visibility_timeout = 300ms});
    if (!consumer.ok()) {
        fprintf(stderr, "child: consume: %s\n", consumer.status().ToString().c_str());
        return 3;
    }
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return 4;
    auto last = steady_clock::now();
    const auto hard_deadline = last + 120s;
    while (steady_clock::now() < hard_deadline) {
        auto r = (*consumer)->Receive(100ms);
        if (!r.ok()) {
            fprintf(stderr, "child: receive: %s\n", r.status().ToString().c_str());
            return 5;
        }
        if (!r->has_value()) {
            if (steady_clock::now() - last > idle) return 0;
            continue;
        }
        const Delivery& d = **r;
        Log(fd, "recv " + d.message.message_id.ToString() + " " + d.message.payload + " " + std::to_string(d.attempt));
        std::this_thread::sleep_for(3ms);  // the work a SIGKILL interrupts
        Status s = (*consumer)->Ack(d);
        if (!s.ok()) {
            fprintf(stderr, "child: ack: %s\n", s.ToString().c_str());
            return 6;
        }
        Log(fd, "ack " + d.message.message_id.ToString());
        last = steady_clock::now();
    }
    return 7;
}

int CountRows(const std::string& path, const std::string& table) {
    sqlite3* db = nullptr;
    int n = -1;
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
        sqlite3_stmt* st = nullptr;
        const std::string sql = "SELECT count(*) FROM " + table;
        if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
            n = sqlite3_column_int(st, 0);
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return n;
}

TEST(LocalBrokerCrash, ConsumersKilledBeforeTheirAcksLoseNothing) {
    testing::TempDir dir("keel-local-crash");
    const std::string path = (dir / "broker.db").string();
    const std::string uri = "local://" + path;
    const std::string log_path = (dir / "log").string();

    std::map<std::string, std::pair<std::string, int>> published;  // id → (key, index)
    {
        auto broker = OpenBroker(uri).value();
        ThrowIfError(broker->Declare("orders", "projector"));
        std::vector<Message> messages;
        for (int i = 0; i < kPerKey; ++i) {
            for (int k = 0; k < kKeys; ++k) {
                Message m;
                m.destination = "orders";
                m.key = "key" + std::to_string(k);
                m.message_id = Uuid::Generate();
                m.payload = m.key + ":" + std::to_string(i);
                published[m.message_id.ToString()] = {m.key, i};
                messages.push_back(std::move(m));
            }
        }
        for (const Status& s : broker->PublishBatch(messages, 100, 30s)) ASSERT_TRUE(s.ok()) << s.ToString();
    }  // closed: no connection of this process crosses a fork

    const unsigned seed = static_cast<unsigned>(steady_clock::now().time_since_epoch().count());
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937 rng(seed);
    int kills = 0;
    for (int round = 0; round <= kKills; ++round) {
        const bool last = round == kKills;
        const pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) _exit(Child(uri, log_path, last ? 1500ms : 60s));
        int status = 0;
        if (!last) {
            std::this_thread::sleep_for(milliseconds(60 + rng() % 160));
            ASSERT_EQ(kill(pid, SIGKILL), 0);
            ASSERT_EQ(waitpid(pid, &status, 0), pid);
            if (WIFSIGNALED(status)) ++kills;
        } else {
            ASSERT_EQ(waitpid(pid, &status, 0), pid);
            ASSERT_TRUE(WIFEXITED(status));
            ASSERT_EQ(WEXITSTATUS(status), 0) << "the last consumer failed (see its stderr)";
        }
    }
    EXPECT_GE(kills, kKills / 2) << "most children should have been killed, not have exited";

    // Read the log of every process.
    std::istringstream log(testing::ReadFileBytes(log_path));
    std::map<std::string, int> last_attempt;  // id → highest attempt seen
    std::map<std::string, int> key_position;  // key → index of the key's message being processed
    std::set<std::string> received, acked;
    int redelivered = 0;
    for (std::string line; std::getline(log, line);) {
        std::istringstream in(line);
        std::string what, id;
        in >> what >> id;
        if (what == "ack") {
            acked.insert(id);
            continue;
        }
        ASSERT_EQ(what, "recv") << line;
        std::string payload;
        int attempt = 0;
        in >> payload >> attempt;
        auto it = published.find(id);
        ASSERT_NE(it, published.end()) << "unknown message: " << line;
        const auto& [key, index] = it->second;
        EXPECT_EQ(payload, key + ":" + std::to_string(index)) << "payload does not match the message id: " << line;
        auto [prev, first] = last_attempt.emplace(id, attempt);
        if (!first) {
            EXPECT_GT(attempt, prev->second) << "attempts of one message must grow: " << line;
            prev->second = attempt;
        }
        if (attempt > 1) ++redelivered;
        auto [pos, new_key] = key_position.emplace(key, index);
        if (new_key) {
            EXPECT_EQ(index, 0) << "key " << key << " started with a later message: " << line;
        } else {
            EXPECT_TRUE(index == pos->second || index == pos->second + 1)
                << "key " << key << " went from message " << pos->second << " to " << index << ": " << line;
            pos->second = index;
        }
        received.insert(id);
    }
    EXPECT_EQ(received.size(), published.size()) << "some messages were never delivered";
    EXPECT_GT(redelivered, 0) << "no kill landed between a receive and its ack";
    EXPECT_GE(acked.size() + static_cast<size_t>(kills), published.size());

    // Nothing is left: every message was acknowledged, and retention removed them.
    auto broker = OpenBroker(uri).value();
    auto consumer = broker->Consume("orders", "projector").value();
    auto r = consumer->Receive(1s);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(r->has_value()) << "message " << (*r)->message.payload << " was never acknowledged";
    EXPECT_EQ(CountRows(path, "keel_broker_deliveries"), 0);
    EXPECT_EQ(CountRows(path, "keel_broker_messages"), 0);
    EXPECT_EQ(CountRows(path, "keel_broker_dead_letters"), 0);
}

}  // namespace
}  // namespace keel
