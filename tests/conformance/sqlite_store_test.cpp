// sqlite:-specific behaviour that the backend-neutral conformance suite cannot express: what happens when the file
// is not a keel store, schema versioning, open options, the URI forms and the on-disk journal mode.

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <sqlite3.h>

#include "keel/event_store.hpp"
#include "keel/status.hpp"
#include "keel/subscription.hpp"

#include "conformance/test_support.hpp"

namespace keel {
namespace {

using testing::ContainsNoCase;
using testing::ReadFileBytes;
using testing::TempDir;
using testing::WriteFileBytes;

std::string Uri(const std::filesystem::path& path) {
    return "sqlite://" + path.string();
}

// Runs one statement on `db` with sqlite3 directly; returns the first column of the first row ("" if none).
std::string Sql(const std::filesystem::path& db, const std::string& sql) {
    sqlite3* handle = nullptr;
    if (sqlite3_open_v2(db.c_str(), &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) != SQLITE_OK) {
        std::string message = handle != nullptr ? sqlite3_errmsg(handle) : "out of memory";
        sqlite3_close(handle);
        throw std::runtime_error("sqlite3_open " + db.string() + ": " + message);
    }
    sqlite3_busy_timeout(handle, 5000);
    sqlite3_stmt* stmt = nullptr;
    std::string result;
    int rc = sqlite3_prepare_v2(handle, sql.c_str(), -1, &stmt, nullptr);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(stmt);
        if (rc == SQLITE_ROW) {
            const unsigned char* text = sqlite3_column_text(stmt, 0);
            if (text != nullptr) result = reinterpret_cast<const char*>(text);
            rc = SQLITE_OK;
        } else if (rc == SQLITE_DONE) {
            rc = SQLITE_OK;
        }
    }
    std::string message = sqlite3_errmsg(handle);
    sqlite3_finalize(stmt);
    sqlite3_close(handle);
    if (rc != SQLITE_OK) throw std::runtime_error("sqlite3 \"" + sql + "\": " + message);
    return result;
}

EventData Ev(std::string type) {
    EventData e;
    e.event_id = Uuid::Generate();
    e.type = std::move(type);
    e.data = R"({"x":1})";
    return e;
}

TEST(SqliteStoreTest, JunkFileIsCorruptionAndStaysUnchanged) {
    TempDir dir("sqlite-junk");
    const auto path = dir / "junk.db";
    std::string junk;
    for (int i = 0; i < 200; ++i) junk += "this is a plain text file, not a database at all\n";
    WriteFileBytes(path, junk);

    auto store = OpenStore(Uri(path));
    ASSERT_EQ(store.status().code(), StatusCode::kCorruption) << store.status().ToString();
    EXPECT_TRUE(ContainsNoCase(store.status().message(), "not a keel store")) << store.status().ToString();
    EXPECT_EQ(ReadFileBytes(path), junk);
}

// SQLite itself treats a non-empty file shorter than one page as an empty database; keel must not overwrite it.
TEST(SqliteStoreTest, ShortJunkFileIsCorruptionAndStaysUnchanged) {
    TempDir dir("sqlite-short-junk");
    const auto path = dir / "notes.txt";
    const std::string junk = "hello, world\n";
    WriteFileBytes(path, junk);

    auto store = OpenStore(Uri(path));
    ASSERT_EQ(store.status().code(), StatusCode::kCorruption) << store.status().ToString();
    EXPECT_TRUE(ContainsNoCase(store.status().message(), "not a keel store")) << store.status().ToString();
    EXPECT_EQ(ReadFileBytes(path), junk);
}

TEST(SqliteStoreTest, DatabaseOfAnotherApplicationIsCorruptionAndStaysUnchanged) {
    TempDir dir("sqlite-foreign");
    const auto path = dir / "other.db";
    Sql(path, "PRAGMA application_id = 12345");
    Sql(path, "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)");
    Sql(path, "INSERT INTO customers(name) VALUES ('Ada')");

    auto store = OpenStore(Uri(path));
    ASSERT_EQ(store.status().code(), StatusCode::kCorruption) << store.status().ToString();
    EXPECT_TRUE(ContainsNoCase(store.status().message(), "not a keel store")) << store.status().ToString();
    EXPECT_EQ(Sql(path, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'keel%'"), "0");
    EXPECT_EQ(Sql(path, "SELECT name FROM customers"), "Ada");
    EXPECT_EQ(Sql(path, "PRAGMA application_id"), "12345");
}

// The event store lives in the service's own database (DESIGN.md §4, unit of work): an SQLite file that holds only
// the service's tables becomes a keel store and keeps those tables.
TEST(SqliteStoreTest, ServiceDatabaseWithItsOwnTablesIsAdopted) {
    TempDir dir("sqlite-service");
    const auto path = dir / "service.db";
    Sql(path, "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)");
    Sql(path, "INSERT INTO customers(name) VALUES ('Ada')");
    {
        auto store = OpenStore(Uri(path));
        ASSERT_TRUE(store.ok()) << store.status().ToString();
        ASSERT_TRUE((*store)->Append("User-1", ExpectedVersion::Any(), {Ev("Created")}).ok());
    }
    EXPECT_EQ(Sql(path, "SELECT name FROM customers"), "Ada");
    auto reopened = OpenStore(Uri(path)).value();
    EXPECT_EQ(reopened->ReadStream("User-1").value().size(), 1u);
}

TEST(SqliteStoreTest, NewerSchemaVersionIsNotSupported) {
    TempDir dir("sqlite-newer");
    const auto path = dir / "store.db";
    {
        auto store = OpenStore(Uri(path)).value();
        ASSERT_TRUE(store->Append("User-1", ExpectedVersion::Any(), {Ev("Created")}).ok());
    }
    Sql(path, "UPDATE keel_schema SET version = 99");

    auto store = OpenStore(Uri(path));
    ASSERT_EQ(store.status().code(), StatusCode::kNotSupported) << store.status().ToString();
    EXPECT_TRUE(ContainsNoCase(store.status().message(), "newer")) << store.status().ToString();
    EXPECT_EQ(Sql(path, "SELECT max(version) FROM keel_schema"), "99");
}

TEST(SqliteStoreTest, CreateIfMissingFalseOnMissingFileIsNotFound) {
    TempDir dir("sqlite-missing");
    const auto path = dir / "absent.db";
    StoreOptions options;
    options.create_if_missing = false;
    auto store = OpenStore(Uri(path), options);
    ASSERT_EQ(store.status().code(), StatusCode::kNotFound) << store.status().ToString();
    EXPECT_FALSE(std::filesystem::exists(path));

    // An existing store opens fine without create_if_missing.
    { auto created = OpenStore(Uri(path)).value(); }
    auto reopened = OpenStore(Uri(path), options);
    EXPECT_TRUE(reopened.ok()) << reopened.status().ToString();
}

TEST(SqliteStoreTest, DurabilityNormalInUriIsAccepted) {
    TempDir dir("sqlite-normal");
    const auto path = dir / "store.db";
    {
        auto store = OpenStore(Uri(path) + "?durability=normal");
        ASSERT_TRUE(store.ok()) << store.status().ToString();
        ASSERT_TRUE((*store)->Append("User-1", ExpectedVersion::Any(), {Ev("Created"), Ev("Renamed")}).ok());
    }
    EXPECT_TRUE(std::filesystem::exists(path)) << "the query string must not become part of the file name";
    auto reopened = OpenStore(Uri(path)).value();
    auto events = reopened->ReadStream("User-1").value();
    EXPECT_EQ(events.size(), 2u);
}

TEST(SqliteStoreTest, UnknownDurabilityInUriIsInvalidArgument) {
    TempDir dir("sqlite-bad-durability");
    auto store = OpenStore(Uri(dir / "store.db") + "?durability=sometimes");
    EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument) << store.status().ToString();
}

TEST(SqliteStoreTest, FileUsesWriteAheadLog) {
    TempDir dir("sqlite-wal");
    const auto path = dir / "store.db";
    {
        auto store = OpenStore(Uri(path)).value();
        ASSERT_TRUE(store->Append("User-1", ExpectedVersion::Any(), {Ev("Created")}).ok());
    }
    EXPECT_EQ(testing::ToLower(Sql(path, "PRAGMA journal_mode")), "wal");
}

TEST(SqliteStoreTest, RelativeUriFormsOpenInTheWorkingDirectory) {
    TempDir dir("sqlite-relative");
    const auto old_cwd = std::filesystem::current_path();
    std::filesystem::current_path(dir.path());
    auto plain = OpenStore("sqlite:plain.db");
    auto slashes = OpenStore("sqlite://slashes.db");
    const bool plain_ok = plain.ok();
    const bool slashes_ok = slashes.ok();
    std::filesystem::current_path(old_cwd);
    EXPECT_TRUE(plain_ok) << plain.status().ToString();
    EXPECT_TRUE(slashes_ok) << slashes.status().ToString();
    EXPECT_TRUE(std::filesystem::exists(dir / "plain.db"));
    EXPECT_TRUE(std::filesystem::exists(dir / "slashes.db"));
}

TEST(SqliteStoreTest, TwoStoreObjectsOnOneFileSeeEachOthersAppends) {
    TempDir dir("sqlite-shared");
    const auto path = dir / "store.db";
    auto a = OpenStore(Uri(path)).value();
    auto b = OpenStore(Uri(path)).value();

    auto first = a->Append("User-1", ExpectedVersion::NoStream(), {Ev("Created")}).value();
    auto seen = b->ReadStream("User-1").value();
    ASSERT_EQ(seen.size(), 1u);
    auto conflict = b->Append("User-1", ExpectedVersion::NoStream(), {Ev("Created")});
    EXPECT_EQ(conflict.status().code(), StatusCode::kWrongExpectedVersion);
    auto second = b->Append("User-1", ExpectedVersion::Exact(0), {Ev("Renamed")}).value();
    EXPECT_GT(second.first_position, first.last_position);

    // `a` learns about `b`'s append (as if made by another process) by polling, long before the timeout.
    const auto started = std::chrono::steady_clock::now();
    const int64_t head = a->WaitForHead(first.last_position, std::chrono::seconds(10));
    const auto waited = std::chrono::steady_clock::now() - started;
    EXPECT_EQ(head, second.last_position);
    EXPECT_LT(waited, std::chrono::seconds(5)) << "WaitForHead slept through the whole timeout although another "
                                                  "store object had already appended";
    EXPECT_EQ(a->ReadStream("User-1").value().size(), 2u);
    EXPECT_EQ(a->GetStream("User-1").value().version, 1);
}

TEST(SqliteStoreTest, SubscriptionSeesAppendsMadeThroughAnotherStoreObject) {
    TempDir dir("sqlite-cross-sub");
    const auto path = dir / "store.db";
    auto reader = OpenStore(Uri(path)).value();
    auto writer = OpenStore(Uri(path)).value();

    std::mutex mu;
    std::condition_variable cv;
    std::vector<int64_t> positions;
    SubscriptionOptions options;
    options.poll_interval = std::chrono::milliseconds(20);
    auto sub = reader
                   ->Subscribe(options,
                               [&](const RecordedEvent& e) {
                                   {
                                       std::lock_guard lock(mu);
                                       positions.push_back(e.global_position);
                                   }
                                   cv.notify_all();
                                   return Status::Ok();
                               })
                   .value();
    std::vector<int64_t> appended;
    for (int i = 0; i < 20; ++i) {
        auto r = writer->Append("User-" + std::to_string(i % 3), ExpectedVersion::Any(), {Ev("Created")}).value();
        appended.push_back(r.first_position);
    }
    {
        std::unique_lock lock(mu);
        ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(20), [&] { return positions.size() >= appended.size(); }))
            << "received " << positions.size() << " of " << appended.size();
    }
    EXPECT_TRUE(sub->Stop().ok());
    EXPECT_EQ(positions, appended);
}

}  // namespace
}  // namespace keel
