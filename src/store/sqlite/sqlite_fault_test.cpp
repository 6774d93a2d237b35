// Fault injection through SQLite's VFS interface (no mocks): a wrapper VFS forwards to the real one and fails fsync
// or writes on demand. Checks that a failed commit is reported, that the store then refuses writes until reopened
// (the sticky error), and that after reopening every acknowledged event is intact and an unknown-outcome append can
// be re-sent safely thanks to idempotent event ids.

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "keel/event_store.hpp"
#include "keel/unit_of_work.hpp"

namespace keel {
namespace {

std::atomic<bool> g_fail_sync{false};
std::atomic<bool> g_fail_write{false};

struct FaultyFile {
    sqlite3_file base;
    sqlite3_file* real;  // lives right after this struct
};

sqlite3_file* Real(sqlite3_file* f) { return reinterpret_cast<FaultyFile*>(f)->real; }

int FClose(sqlite3_file* f) { return Real(f)->pMethods->xClose(Real(f)); }
int FRead(sqlite3_file* f, void* b, int n, sqlite3_int64 o) { return Real(f)->pMethods->xRead(Real(f), b, n, o); }
int FWrite(sqlite3_file* f, const void* b, int n, sqlite3_int64 o) {
    if (g_fail_write) return SQLITE_FULL;
    return Real(f)->pMethods->xWrite(Real(f), b, n, o);
}
int FTruncate(sqlite3_file* f, sqlite3_int64 s) { return Real(f)->pMethods->xTruncate(Real(f), s); }
std::atomic<int64_t> g_syncs{0};

int FSync(sqlite3_file* f, int flags) {
    g_syncs.fetch_add(1);
    if (g_fail_sync) return SQLITE_IOERR_FSYNC;
    return Real(f)->pMethods->xSync(Real(f), flags);
}
int FFileSize(sqlite3_file* f, sqlite3_int64* s) { return Real(f)->pMethods->xFileSize(Real(f), s); }
int FLock(sqlite3_file* f, int l) { return Real(f)->pMethods->xLock(Real(f), l); }
int FUnlock(sqlite3_file* f, int l) { return Real(f)->pMethods->xUnlock(Real(f), l); }
int FCheckReservedLock(sqlite3_file* f, int* r) { return Real(f)->pMethods->xCheckReservedLock(Real(f), r); }
int FFileControl(sqlite3_file* f, int op, void* a) { return Real(f)->pMethods->xFileControl(Real(f), op, a); }
int FSectorSize(sqlite3_file* f) { return Real(f)->pMethods->xSectorSize(Real(f)); }
int FDeviceCharacteristics(sqlite3_file* f) { return Real(f)->pMethods->xDeviceCharacteristics(Real(f)); }
int FShmMap(sqlite3_file* f, int i, int sz, int e, void volatile** p) {
    return Real(f)->pMethods->xShmMap(Real(f), i, sz, e, p);
}
int FShmLock(sqlite3_file* f, int o, int n, int fl) { return Real(f)->pMethods->xShmLock(Real(f), o, n, fl); }
void FShmBarrier(sqlite3_file* f) { Real(f)->pMethods->xShmBarrier(Real(f)); }
int FShmUnmap(sqlite3_file* f, int d) { return Real(f)->pMethods->xShmUnmap(Real(f), d); }

const sqlite3_io_methods kFaultyMethods = {
    2,         FClose,           FRead,         FWrite,    FTruncate,          FSync,
    FFileSize, FLock,            FUnlock,       FCheckReservedLock, FFileControl, FSectorSize,
    FDeviceCharacteristics, FShmMap, FShmLock, FShmBarrier, FShmUnmap, nullptr, nullptr};

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
    if (sqlite3_vfs_find("keel_faulty") != nullptr) return;
    g_real_vfs = sqlite3_vfs_find(nullptr);
    std::memcpy(&g_faulty_vfs, g_real_vfs, sizeof(sqlite3_vfs));
    g_faulty_vfs.iVersion = 1;  // no xCurrentTimeInt64/xSetSystemCall: the v1 methods are enough
    g_faulty_vfs.zName = "keel_faulty";
    g_faulty_vfs.szOsFile = static_cast<int>(sizeof(FaultyFile)) + g_real_vfs->szOsFile;
    g_faulty_vfs.pNext = nullptr;
    g_faulty_vfs.xOpen = FOpen;
    ASSERT_EQ(sqlite3_vfs_register(&g_faulty_vfs, 0), SQLITE_OK);
}

class SqliteFaultTest : public ::testing::Test {
protected:
    void SetUp() override {
        RegisterFaultyVfs();
        dir_ = std::filesystem::temp_directory_path() /
               ("keel_fault_" + std::to_string(::getpid()) + "_" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_);
        uri_ = "sqlite://" + (dir_ / "store.db").string();
    }
    void TearDown() override {
        g_fail_sync = false;
        g_fail_write = false;
        std::filesystem::remove_all(dir_);
    }
    std::unique_ptr<EventStore> Open(bool faulty, const StoreOptions& options = {}) {
        auto s = OpenStore(uri_ + (faulty ? "?vfs=keel_faulty" : ""), options);
        EXPECT_TRUE(s.ok()) << s.status().ToString();
        return s.ok() ? std::move(*s) : nullptr;
    }
    static EventData Event(std::string data) { return EventData{Uuid::Generate(), "Happened", std::move(data), ""}; }

    std::filesystem::path dir_;
    std::string uri_;
};

TEST_F(SqliteFaultTest, FailedFsyncIsReportedThenStickyThenRecoverableByResend) {
    auto store = Open(/*faulty=*/true);
    ASSERT_TRUE(store);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(store->Append("Acct-1", ExpectedVersion::Exact(i - 1), {Event("ok")}).ok());

    const EventData doubtful = Event("doubtful");
    g_fail_sync = true;
    auto failed = store->Append("Acct-1", ExpectedVersion::Exact(4), {doubtful});
    g_fail_sync = false;
    ASSERT_FALSE(failed.ok());
    EXPECT_EQ(failed.status().code(), StatusCode::kUnavailable) << failed.status().ToString();

    // The handle now refuses writes: the outcome of the failed commit is unknown.
    auto refused = store->Append("Acct-1", ExpectedVersion::Any(), {Event("after")});
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(refused.status().message().find("reopened"), std::string::npos) << refused.status().message();
    EXPECT_EQ(store->SaveCheckpoint("x", 1).code(), StatusCode::kFailedPrecondition);
    store.reset();

    // Reopened: the five acknowledged events are intact; the doubtful one is there at most once, and re-sending the
    // same append (same event id) leaves exactly one copy.
    store = Open(/*faulty=*/false);
    ASSERT_TRUE(store);
    auto resent = store->Append("Acct-1", ExpectedVersion::Exact(4), {doubtful});
    ASSERT_TRUE(resent.ok()) << resent.status().ToString();
    auto events = store->ReadStream("Acct-1", {}).value();
    ASSERT_EQ(events.size(), 6u);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(events[static_cast<size_t>(i)].data, "ok");
    EXPECT_EQ(events[5].event_id, doubtful.event_id);
    EXPECT_EQ(events[5].stream_version, 5);
    EXPECT_TRUE(store->Append("Acct-1", ExpectedVersion::Exact(5), {Event("next")}).ok());
}

TEST_F(SqliteFaultTest, FailedWriteLosesNothingAcknowledged) {
    auto store = Open(/*faulty=*/true);
    ASSERT_TRUE(store);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(store->Append("Acct-2", ExpectedVersion::Any(), {Event("ok")}).ok());
    g_fail_write = true;
    // Enough data that SQLite must write pages (the WAL) during the transaction or at commit.
    std::vector<EventData> big;
    for (int i = 0; i < 50; ++i) big.push_back(Event(std::string(8000, 'x')));
    auto failed = store->Append("Acct-2", ExpectedVersion::Any(), big);
    g_fail_write = false;
    ASSERT_FALSE(failed.ok());
    store.reset();

    store = Open(/*faulty=*/false);
    ASSERT_TRUE(store);
    auto events = store->ReadStream("Acct-2", {}).value();
    ASSERT_GE(events.size(), 3u);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(events[static_cast<size_t>(i)].data, "ok");
    // All or nothing: either the 50-event append is entirely there or not at all.
    EXPECT_TRUE(events.size() == 3u || events.size() == 53u) << events.size();
    auto again = store->Append("Acct-2", ExpectedVersion::Any(), big);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    EXPECT_EQ(store->ReadStream("Acct-2", {}).value().size(), 53u);
}

// The table the unit-of-work tests write to.
void CreateTable(EventStore& store) {
    auto uow = UnitOfWork::Begin(store).value();
    ASSERT_TRUE(uow.Exec("CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, data BLOB)").ok());
    ASSERT_TRUE(uow.Commit().ok());
}

// fsyncs of `units` units of work (a row each) committed from 4 threads at once, Durability::kFull.
int64_t SyncsForConcurrentUnits(EventStore& store, int units) {
    CreateTable(store);
    const int64_t before = g_syncs.load();
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = t; i < units; i += 4) {
                auto uow = UnitOfWork::Begin(store);
                if (!uow.ok() || !uow->Exec("INSERT INTO t (id) VALUES (?)", {std::to_string(i)}).ok() ||
                    !uow->Commit().ok()) {
                    failures.fetch_add(1);
                }
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    auto uow = UnitOfWork::Begin(store).value();
    EXPECT_EQ(uow.Query("SELECT count(*) FROM t").value().Int(0, 0).value(), units);
    return g_syncs.load() - before;
}

TEST_F(SqliteFaultTest, ConcurrentUnitsOfWorkShareFsyncs) {
    constexpr int kUnits = 400;
    StoreOptions alone;
    alone.max_units_per_commit = 1;
    auto store = Open(/*faulty=*/true, alone);
    ASSERT_TRUE(store);
    const int64_t unshared = SyncsForConcurrentUnits(*store, kUnits);
    store.reset();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    store = Open(/*faulty=*/true);
    ASSERT_TRUE(store);
    const int64_t shared = SyncsForConcurrentUnits(*store, kUnits);
    // One fsync per commit (the WAL's), plus checkpoints.
    EXPECT_GE(unshared, kUnits);
    EXPECT_LT(shared, unshared * 3 / 4) << "shared " << shared << " fsyncs, unshared " << unshared;
}

// One try at two units of work sharing a commit: A inserts row `a` and commits while B, begun behind it on another
// thread, runs `b_body` (which ends B). Returns whether A's Commit waited for B (otherwise A committed alone, before
// B began); `a_status` is A's commit.
template <class F>
bool ShareRound(EventStore& store, const std::string& a, F b_body, Status& a_status) {
    auto unit_a = UnitOfWork::Begin(store).value();
    EXPECT_TRUE(unit_a.Exec("INSERT INTO t (id) VALUES (?)", {a}).ok());
    std::atomic<bool> b_done{false};
    std::thread other([&] {
        auto unit_b = UnitOfWork::Begin(store);
        ASSERT_TRUE(unit_b.ok()) << unit_b.status().ToString();
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        b_body(*unit_b);
        b_done = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // B waits in Begin by now, usually
    a_status = unit_a.Commit();
    const bool shared = b_done.load();
    other.join();
    return shared;
}

// A unit of work released into a shared transaction whose commit then fails gets the failure too, and the units of
// the transaction are all there or none is.
TEST_F(SqliteFaultTest, FailedSharedCommitFailsEveryUnitInIt) {
    auto store = Open(/*faulty=*/true);
    ASSERT_TRUE(store);
    CreateTable(*store);
    bool shared = false;
    for (int round = 0; round < 5 && !shared; ++round) {
        const std::string a = "a" + std::to_string(round), b = "b" + std::to_string(round);
        Status a_status, b_status;
        shared = ShareRound(
            *store, a,
            [&](UnitOfWork& unit_b) {
                ASSERT_TRUE(unit_b.Exec("INSERT INTO t (id) VALUES (?)", {b}).ok());
                g_fail_sync = true;
                b_status = unit_b.Commit();
                g_fail_sync = false;
            },
            a_status);
        if (!shared) {  // A committed alone before B began (and B's commit failed alone): try again
            store.reset();
            store = Open(/*faulty=*/true);
            ASSERT_TRUE(store);
            continue;
        }
        EXPECT_EQ(b_status.code(), StatusCode::kUnavailable) << b_status.ToString();
        EXPECT_EQ(a_status.code(), StatusCode::kUnavailable) << a_status.ToString();
        // The store refuses writes until reopened; then A's and B's rows are both there or both missing.
        EXPECT_EQ(UnitOfWork::Begin(*store).status().code(), StatusCode::kFailedPrecondition);
        store.reset();
        store = Open(/*faulty=*/false);
        ASSERT_TRUE(store);
        auto uow = UnitOfWork::Begin(*store).value();
        const int64_t n = uow.Query("SELECT count(*) FROM t WHERE id IN (?, ?)", {a, b}).value().Int(0, 0).value();
        EXPECT_TRUE(n == 0 || n == 2) << n;
    }
    EXPECT_TRUE(shared) << "the first unit's Commit never waited for the unit that began behind it";
}

// SQLite rolls a whole transaction back after some write errors: the units already released into the shared
// transaction must then fail as well, and nothing of any of them may be committed.
TEST_F(SqliteFaultTest, TransactionRolledBackBySqliteFailsTheUnitsSharingIt) {
    auto store = Open(/*faulty=*/true);
    ASSERT_TRUE(store);
    CreateTable(*store);
    bool shared = false;
    bool rolled_back = false;
    for (int round = 0; round < 5 && !shared; ++round) {
        const std::string a = "a" + std::to_string(round), b = "b" + std::to_string(round);
        Status a_status, b_commit;
        shared = ShareRound(
            *store, a,
            [&](UnitOfWork& unit_b) {
                // A page cache of a few pages makes SQLite write (spill) dirty pages during the statement: failing
                // those writes with SQLITE_FULL makes it roll the transaction back.
                ASSERT_TRUE(unit_b.Exec("PRAGMA cache_size = 4").ok());
                g_fail_write = true;
                auto big = unit_b.Exec("INSERT INTO t (id, data) VALUES (?, zeroblob(4000000))", {b});
                g_fail_write = false;
                (void)unit_b.Exec("PRAGMA cache_size = -16384");
                if (!big.ok()) {
                    b_commit = unit_b.Commit();
                    rolled_back = b_commit.code() == StatusCode::kUnavailable;
                }
            },
            a_status);
        if (!shared) continue;
        ASSERT_TRUE(rolled_back) << "SQLite did not roll the transaction back; b's commit: " << b_commit.ToString();
        EXPECT_EQ(a_status.code(), StatusCode::kUnavailable) << a_status.ToString();
        auto uow = UnitOfWork::Begin(*store);
        ASSERT_TRUE(uow.ok()) << uow.status().ToString();
        EXPECT_EQ(uow->Query("SELECT count(*) FROM t WHERE id IN (?, ?)", {a, b}).value().Int(0, 0).value(), 0);
    }
    EXPECT_TRUE(shared) << "the first unit's Commit never waited for the unit that began behind it";
}

}  // namespace
}  // namespace keel
