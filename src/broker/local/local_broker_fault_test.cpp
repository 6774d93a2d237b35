// Fault injection for local: through SQLite's VFS interface (no mocks): a wrapper VFS forwards to the real one and
// fails fsync or writes on demand (`?vfs=keel_broker_faulty`). A commit that fails at the storage level is reported,
// then the Broker object and its consumers refuse further work (kFailedPrecondition) until reopened; after reopening,
// what was confirmed is intact and nothing is half-written.

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>

#include <gtest/gtest.h>
#include <sqlite3.h>

#include "keel/broker.hpp"
#include "keel/status.hpp"

#include "conformance/test_support.hpp"

namespace keel {
namespace {

using namespace std::chrono_literals;

std::atomic<bool> g_fail_sync{false};
std::atomic<bool> g_fail_write{false};

struct FaultyFile {
    sqlite3_file base;
    sqlite3_file* real;  // lives right after this struct
};

sqlite3_file* Real(sqlite3_file* f) {
    return reinterpret_cast<FaultyFile*>(f)->real;
}

int FClose(sqlite3_file* f) {
    return Real(f)->pMethods->xClose(Real(f));
}
int FRead(sqlite3_file* f, void* b, int n, sqlite3_int64 o) {
    return Real(f)->pMethods->xRead(Real(f), b, n, o);
}
int FWrite(sqlite3_file* f, const void* b, int n, sqlite3_int64 o) {
    if (g_fail_write) return SQLITE_FULL;
    return Real(f)->pMethods->xWrite(Real(f), b, n, o);
}
int FTruncate(sqlite3_file* f, sqlite3_int64 s) {
    return Real(f)->pMethods->xTruncate(Real(f), s);
}
int FSync(sqlite3_file* f, int flags) {
    if (g_fail_sync) return SQLITE_IOERR_FSYNC;
    return Real(f)->pMethods->xSync(Real(f), flags);
}
int FFileSize(sqlite3_file* f, sqlite3_int64* s) {
    return Real(f)->pMethods->xFileSize(Real(f), s);
}
int FLock(sqlite3_file* f, int l) {
    return Real(f)->pMethods->xLock(Real(f), l);
}
int FUnlock(sqlite3_file* f, int l) {
    return Real(f)->pMethods->xUnlock(Real(f), l);
}
int FCheckReservedLock(sqlite3_file* f, int* r) {
    return Real(f)->pMethods->xCheckReservedLock(Real(f), r);
}
int FFileControl(sqlite3_file* f, int op, void* a) {
    return Real(f)->pMethods->xFileControl(Real(f), op, a);
}
int FSectorSize(sqlite3_file* f) {
    return Real(f)->pMethods->xSectorSize(Real(f));
}
int FDeviceCharacteristics(sqlite3_file* f) {
    return Real(f)->pMethods->xDeviceCharacteristics(Real(f));
}
int FShmMap(sqlite3_file* f, int i, int sz, int e, void volatile** p) {
    return Real(f)->pMethods->xShmMap(Real(f), i, sz, e, p);
}
int FShmLock(sqlite3_file* f, int o, int n, int fl) {
    return Real(f)->pMethods->xShmLock(Real(f), o, n, fl);
}
void FShmBarrier(sqlite3_file* f) {
    Real(f)->pMethods->xShmBarrier(Real(f));
}
int FShmUnmap(sqlite3_file* f, int d) {
    return Real(f)->pMethods->xShmUnmap(Real(f), d);
}

const sqlite3_io_methods kFaultyMethods = {2,
                                           FClose,
                                           FRead,
                                           FWrite,
                                           FTruncate,
                                           FSync,
                                           FFileSize,
                                           FLock,
                                           FUnlock,
                                           FCheckReservedLock,
                                           FFileControl,
                                           FSectorSize,
                                           FDeviceCharacteristics,
                                           FShmMap,
                                           FShmLock,
                                           FShmBarrier,
                                           FShmUnmap,
                                           nullptr,
                                           nullptr};

sqlite3_vfs* g_real_vfs = nullptr;
sqlite3_vfs g_faulty_vfs;

int FOpen(sqlite3_vfs*, const char* name, sqlite3_file* f, int flags, int* out_flags) {
    auto* ff = reinterpret_cast<FaultyFile*>(f);
    ff->real = reinterpret_cast<sqlite3_file*>(ff + 1);
    const int rc = g_real_vfs->xOpen(g_real_vfs, name, ff->real, flags, out_flags);
    ff->base.pMethods = ff->real->pMethods != nullptr ? &kFaultyMethods : nullptr;
    return rc;
}

void RegisterFaultyVfs() {
    if (sqlite3_vfs_find("keel_broker_faulty") != nullptr) return;
    g_real_vfs = sqlite3_vfs_find(nullptr);
    std::memcpy(&g_faulty_vfs, g_real_vfs, sizeof(sqlite3_vfs));
    g_faulty_vfs.iVersion = 1;
    g_faulty_vfs.zName = "keel_broker_faulty";
    g_faulty_vfs.szOsFile = static_cast<int>(sizeof(FaultyFile)) + g_real_vfs->szOsFile;
    g_faulty_vfs.pNext = nullptr;
    g_faulty_vfs.xOpen = FOpen;
    ASSERT_EQ(sqlite3_vfs_register(&g_faulty_vfs, 0), SQLITE_OK);
}

Message MakeMessage(const std::string& key, const std::string& payload) {
    Message m;
    m.destination = "orders";
    m.key = key;
    m.message_id = Uuid::Generate();
    m.payload = payload;
    return m;
}

class LocalBrokerFault : public ::testing::Test {
protected:
    void SetUp() override { RegisterFaultyVfs(); }
    void TearDown() override {
        g_fail_sync = false;
        g_fail_write = false;
    }
    std::unique_ptr<Broker> Open(bool faulty) {
        auto b = OpenBroker("local://" + (dir_ / "broker.db").string() + (faulty ? "?vfs=keel_broker_faulty" : ""));
        EXPECT_TRUE(b.ok()) << b.status().ToString();
        return b.ok() ? std::move(*b) : nullptr;
    }
    testing::TempDir dir_{"keel-local-fault"};
};

TEST_F(LocalBrokerFault, UnknownVfsIsInvalidArgument) {
    auto b = OpenBroker("local://" + (dir_ / "broker.db").string() + "?vfs=no_such_vfs");
    EXPECT_EQ(b.status().code(), StatusCode::kInvalidArgument) << b.status().ToString();
}

TEST_F(LocalBrokerFault, FailedPublishFsyncIsReportedThenStickyUntilReopened) {
    auto broker = Open(/*faulty=*/true);
    ASSERT_TRUE(broker);
    ASSERT_TRUE(broker->Declare("orders", "g").ok());
    auto consumer = broker->Consume("orders", "g").value();
    const Message confirmed = MakeMessage("k", "confirmed");
    ASSERT_TRUE(broker->PublishReliable(confirmed, 5s).ok());

    const Message doubtful = MakeMessage("k", "doubtful");
    g_fail_sync = true;
    const Status failed = broker->PublishReliable(doubtful, 5s);
    g_fail_sync = false;
    EXPECT_EQ(failed.code(), StatusCode::kUnavailable) << failed.ToString();

    // The outcome of that commit is unknown: the object refuses everything that writes until it is reopened.
    const Status refused = broker->PublishReliable(MakeMessage("k", "refused"), 5s);
    EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition) << refused.ToString();
    EXPECT_TRUE(testing::ContainsNoCase(refused.message(), "reopened")) << refused.ToString();
    EXPECT_EQ(broker->Declare("orders", "h").code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(consumer->Receive(100ms).status().code(), StatusCode::kFailedPrecondition);
    consumer.reset();
    broker.reset();

    // Reopened: the confirmed message is there, the doubtful one at most once, the refused one not at all; the
    // doubtful one can be re-sent (same id) and is then there exactly once.
    broker = Open(/*faulty=*/false);
    ASSERT_TRUE(broker);
    ASSERT_TRUE(broker->PublishReliable(doubtful, 5s).ok());
    consumer = broker->Consume("orders", "g").value();
    std::vector<std::string> got;
    for (;;) {
        auto d = consumer->Receive(300ms).value();
        if (!d) break;
        got.push_back(d->message.payload);
        ASSERT_TRUE(consumer->Ack(*d).ok());
    }
    EXPECT_EQ(got, (std::vector<std::string>{"confirmed", "doubtful"}));
}

TEST_F(LocalBrokerFault, FailedAckCommitIsReportedThenStickyAndTheMessageComesBack) {
    auto broker = Open(/*faulty=*/true);
    ASSERT_TRUE(broker);
    ASSERT_TRUE(broker->Declare("orders", "g").ok());
    ASSERT_TRUE(broker->PublishReliable(MakeMessage("k", "m"), 5s).ok());
    auto consumer = broker->Consume("orders", "g", ConsumeOptions{.visibility_timeout = 200ms}).value();
    auto d = consumer->Receive(5s).value();
    ASSERT_TRUE(d.has_value());

    g_fail_write = true;
    const Status failed = consumer->Ack(*d);
    g_fail_write = false;
    EXPECT_EQ(failed.code(), StatusCode::kUnavailable) << failed.ToString();
    EXPECT_EQ(consumer->Ack(*d).code(), StatusCode::kFailedPrecondition);
    consumer.reset();
    broker.reset();

    // The ack was not stored, so the message is delivered again (at least once).
    broker = Open(/*faulty=*/false);
    ASSERT_TRUE(broker);
    consumer = broker->Consume("orders", "g").value();
    auto again = consumer->Receive(5s).value();
    ASSERT_TRUE(again.has_value());
    EXPECT_EQ(again->message.message_id, d->message.message_id);
    EXPECT_GE(again->attempt, 2);
    EXPECT_TRUE(consumer->Ack(*again).ok());
}

// Which commits are fsynced: publishes (durability=full) are; receives, acks, nacks and dead letters are not (they
// survive a process crash; a power loss only causes redelivery); with durability=normal nothing is.
TEST_F(LocalBrokerFault, OnlyPublishesAreFsyncedWithFullDurability) {
    auto broker = Open(/*faulty=*/true);
    ASSERT_TRUE(broker);
    ASSERT_TRUE(broker->Declare("orders", "g").ok());
    for (int i = 0; i < 3; ++i)
        ASSERT_TRUE(broker->PublishReliable(MakeMessage("k" + std::to_string(i), "m"), 5s).ok());
    auto consumer = broker->Consume("orders", "g").value();
    g_fail_sync = true;
    auto d = consumer->Receive(5s);
    ASSERT_TRUE(d.ok() && d->has_value()) << d.status().ToString();
    EXPECT_TRUE(consumer->Ack(**d).ok());
    d = consumer->Receive(5s);
    ASSERT_TRUE(d.ok() && d->has_value()) << d.status().ToString();
    EXPECT_TRUE(consumer->Nack(**d).ok());
    d = consumer->Receive(5s);
    ASSERT_TRUE(d.ok() && d->has_value()) << d.status().ToString();
    EXPECT_TRUE(consumer->DeadLetter(**d, "x").ok());
    // A publish after consumer work is fsynced again.
    EXPECT_EQ(broker->PublishReliable(MakeMessage("k", "m"), 5s).code(), StatusCode::kUnavailable);
    g_fail_sync = false;
    consumer.reset();
    broker.reset();

    auto normal = OpenBroker("local://" + (dir_ / "normal.db").string() + "?durability=normal&vfs=keel_broker_faulty");
    ASSERT_TRUE(normal.ok()) << normal.status().ToString();
    ASSERT_TRUE((*normal)->Declare("orders", "g").ok());
    g_fail_sync = true;
    EXPECT_TRUE((*normal)->PublishReliable(MakeMessage("k", "m"), 5s).ok());
    g_fail_sync = false;
}

}  // namespace
}  // namespace keel
