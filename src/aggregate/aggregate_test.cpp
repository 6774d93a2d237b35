// Aggregates, the repository and the in-process publisher, on memory: and on a temporary sqlite: file.

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <unistd.h>

#include "keel/keel.hpp"

namespace myapp {

// Seed 004 (Midgard): a user aggregate rebuilt from UserCreated and UserNameUpdated.
struct UserCreated {
    std::string id;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UserCreated, id)

struct UserNameUpdated {
    std::string name;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UserNameUpdated, name)

// An event whose stored name is fixed by kEventType instead of derived from the struct's name.
struct EmailChanged {
    static constexpr std::string_view kEventType = "user.email-changed";
    std::string email;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(EmailChanged, email)

struct User {
    std::string id;
    std::string name;
    std::string email;
    int changes = 0;
    void On(const UserCreated& e) {
        id = e.id;
        ++changes;
    }
    void On(const UserNameUpdated& e) {
        name = e.name;
        ++changes;
    }
    void On(const EmailChanged& e) {
        email = e.email;
        ++changes;
    }
    friend bool operator==(const User&, const User&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name, email, changes)

// Not JSON-serializable: never snapshotted.
struct Counter {
    int64_t total = 0;
    void On(const UserCreated&) { ++total; }
    void On(const UserNameUpdated&) { ++total; }
};

// Declares a snapshot version.
struct VersionedUser {
    static constexpr int kSnapshotVersion = 2;
    std::string name;
    void On(const UserNameUpdated& e) { name = e.name; }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(VersionedUser, name)

namespace {
struct Hidden {};
}  // namespace

}  // namespace myapp

namespace {

using keel::Aggregate;
using keel::AppendResult;
using keel::EventData;
using keel::EventStore;
using keel::ExpectedVersion;
using keel::RecordedEvent;
using keel::Repository;
using keel::RepositoryOptions;
using keel::Status;
using keel::StatusCode;
using myapp::EmailChanged;
using myapp::User;
using myapp::UserCreated;
using myapp::UserNameUpdated;

using UserRepository = Repository<User, UserCreated, UserNameUpdated, EmailChanged>;

// Event type names are computed at compile time.
static_assert(keel::EventTypeName<UserCreated>() == "UserCreated");
static_assert(keel::EventTypeName<myapp::UserNameUpdated>() == "UserNameUpdated");
static_assert(keel::EventTypeName<EmailChanged>() == "user.email-changed");
static_assert(keel::EventTypeName<myapp::Hidden>() == "Hidden");
static_assert(keel::JsonSerializable<User>);
static_assert(!keel::JsonSerializable<myapp::Counter>);

EventData RawEvent(std::string type, std::string data) {
    EventData e;
    e.type = std::move(type);
    e.data = std::move(data);
    return e;
}

std::string Json(const auto& value) {
    return nlohmann::json(value).dump();
}

class AggregateTest : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        std::string uri = GetParam();
        if (uri == "sqlite") {
            static std::atomic<int> counter{0};
            path_ = std::filesystem::temp_directory_path() /
                    ("keel-aggregate-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".db");
            RemoveFiles();
            uri = "sqlite://" + path_.string();
        }
        auto store = keel::OpenStore(uri);
        ASSERT_TRUE(store.ok()) << store.status().ToString();
        store_ = std::move(store).value();
    }

    void TearDown() override {
        store_.reset();
        if (!path_.empty()) RemoveFiles();
    }

    void RemoveFiles() {
        std::error_code ec;
        for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
            std::filesystem::remove(path_.string() + suffix, ec);
        }
    }

    int64_t CountEvents(const std::string& stream) {
        auto events = store_->ReadStream(stream);
        return events.ok() ? static_cast<int64_t>(events.value().size()) : -1;
    }

    // Saves the seed 004 scenario in three Saves.
    void SaveSeed004(UserRepository& users, const std::string& stream) {
        Aggregate<User> user(stream);
        user.Raise(UserCreated{"123"});
        ASSERT_TRUE(users.Save(user).ok());
        ASSERT_EQ(user.version(), 0);

        auto loaded = users.Load(stream);
        ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
        loaded.value().Raise(UserNameUpdated{"jun"});
        ASSERT_TRUE(users.Save(loaded.value()).ok());

        loaded = users.Load(stream);
        ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
        loaded.value().Raise(UserNameUpdated{"jun2"});
        ASSERT_TRUE(users.Save(loaded.value()).ok());
    }

    std::filesystem::path path_;
    std::unique_ptr<EventStore> store_;
};

INSTANTIATE_TEST_SUITE_P(Backends, AggregateTest, ::testing::Values("memory:", "sqlite"),
                         [](const auto& param) { return param.param == "memory:" ? "memory" : "sqlite"; });

TEST_P(AggregateTest, Seed004LoadReplaysThreeSaves) {
    UserRepository users(*store_);
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));

    auto user = users.Load("User-123");
    ASSERT_TRUE(user.ok()) << user.status().ToString();
    EXPECT_EQ(user.value().id(), "User-123");
    EXPECT_EQ(user.value().state().id, "123");
    EXPECT_EQ(user.value()->name, "jun2");
    EXPECT_EQ(user.value().version(), 2);
    EXPECT_TRUE(user.value().pending().empty());
    EXPECT_EQ(CountEvents("User-123"), 3);

    auto events = store_->ReadStream("User-123");
    ASSERT_TRUE(events.ok());
    ASSERT_EQ(events.value().size(), 3u);
    EXPECT_EQ(events.value()[0].type, "UserCreated");
    EXPECT_EQ(events.value()[1].type, "UserNameUpdated");
    EXPECT_EQ(nlohmann::json::parse(events.value()[2].data), nlohmann::json({{"name", "jun2"}}));
}

TEST_P(AggregateTest, SaveAdvancesVersionAndClearsPending) {
    UserRepository users(*store_);
    Aggregate<User> user("User-1");
    EXPECT_EQ(user.version(), -1);
    user.Raise(UserCreated{"1"});
    user.Raise(UserNameUpdated{"ann"});
    EXPECT_EQ(user->name, "ann");  // Raise applies On at once
    ASSERT_EQ(user.pending().size(), 2u);
    EXPECT_EQ(user.pending()[0].type, "UserCreated");
    EXPECT_FALSE(user.pending()[0].event_id.is_nil());
    EXPECT_NE(user.pending()[0].event_id, user.pending()[1].event_id);

    auto saved = users.Save(user);
    ASSERT_TRUE(saved.ok()) << saved.status().ToString();
    EXPECT_EQ(saved.value().next_expected_version, 1);
    EXPECT_EQ(saved.value().last_position - saved.value().first_position, 1);
    EXPECT_EQ(user.version(), 1);
    EXPECT_TRUE(user.pending().empty());

    // Nothing pending: nothing written.
    auto head = store_->HeadPosition();
    ASSERT_TRUE(head.ok());
    auto again = users.Save(user);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again.value().next_expected_version, 1);
    EXPECT_EQ(store_->HeadPosition().value(), *head);
}

TEST_P(AggregateTest, LoadOfMissingStreamIsNotFound) {
    UserRepository users(*store_);
    auto user = users.Load("User-nobody");
    ASSERT_FALSE(user.ok());
    EXPECT_EQ(user.status().code(), StatusCode::kNotFound);
}

TEST_P(AggregateTest, StaleSaveIsWrongExpectedVersionWithActualVersion) {
    UserRepository users(*store_);
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    auto first = users.Load("User-123").value();
    auto second = users.Load("User-123").value();
    second.Raise(UserNameUpdated{"bob"});
    ASSERT_TRUE(users.Save(second).ok());

    first.Raise(UserNameUpdated{"eve"});
    auto stale = users.Save(first);
    ASSERT_FALSE(stale.ok());
    EXPECT_EQ(stale.status().code(), StatusCode::kWrongExpectedVersion);
    EXPECT_EQ(stale.status().actual_version(), 3);
    EXPECT_EQ(first.version(), 2);
    EXPECT_EQ(first.pending().size(), 1u);
    EXPECT_EQ(users.Load("User-123").value()->name, "bob");
}

TEST_P(AggregateTest, NewAggregateOnExistingStreamConflicts) {
    UserRepository users(*store_);
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    Aggregate<User> duplicate("User-123");
    duplicate.Raise(UserCreated{"123"});
    auto saved = users.Save(duplicate);
    ASSERT_FALSE(saved.ok());
    EXPECT_EQ(saved.status().code(), StatusCode::kWrongExpectedVersion);
    EXPECT_EQ(saved.status().actual_version(), 2);
}

TEST_P(AggregateTest, UnknownEventTypeNamesTypeAndStream) {
    UserRepository users(*store_);
    ASSERT_TRUE(store_
                    ->Append("User-7", ExpectedVersion::NoStream(),
                             {RawEvent("UserCreated", R"({"id":"7"})"), RawEvent("UserDeleted", "{}")})
                    .ok());
    auto user = users.Load("User-7");
    ASSERT_FALSE(user.ok());
    EXPECT_EQ(user.status().code(), StatusCode::kNotSupported);
    EXPECT_NE(user.status().message().find("UserDeleted"), std::string::npos) << user.status().message();
    EXPECT_NE(user.status().message().find("User-7"), std::string::npos) << user.status().message();
}

TEST_P(AggregateTest, UndecodablePayloadIsCorruptionNamingStreamVersionAndType) {
    UserRepository users(*store_);
    ASSERT_TRUE(store_
                    ->Append("User-8", ExpectedVersion::NoStream(),
                             {RawEvent("UserCreated", R"({"id":"8"})"), RawEvent("UserNameUpdated", R"({"nom":1})")})
                    .ok());
    auto user = users.Load("User-8");
    ASSERT_FALSE(user.ok());
    EXPECT_EQ(user.status().code(), StatusCode::kCorruption);
    const std::string msg = user.status().message();
    EXPECT_NE(msg.find("User-8"), std::string::npos) << msg;
    EXPECT_NE(msg.find("version 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("UserNameUpdated"), std::string::npos) << msg;
}

TEST_P(AggregateTest, EventTypeOverrideIsStoredAndLoaded) {
    UserRepository users(*store_);
    Aggregate<User> user("User-9");
    user.Raise(UserCreated{"9"});
    user.Raise(EmailChanged{"nine@example.com"});
    ASSERT_TRUE(users.Save(user).ok());

    auto events = store_->ReadStream("User-9").value();
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[1].type, "user.email-changed");
    EXPECT_EQ(users.Load("User-9").value()->email, "nine@example.com");
}

TEST_P(AggregateTest, SavingAnEventTheRepositoryCannotLoadIsRefused) {
    Repository<User, UserCreated> narrow(*store_);
    Aggregate<User> user("User-10");
    user.Raise(UserCreated{"10"});
    user.Raise(UserNameUpdated{"x"});  // User handles it, but this repository would not load it back
    auto saved = narrow.Save(user);
    ASSERT_FALSE(saved.ok());
    EXPECT_EQ(saved.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(saved.status().message().find("UserNameUpdated"), std::string::npos);
    EXPECT_EQ(CountEvents("User-10"), -1);  // nothing written
}

TEST_P(AggregateTest, AppendWritesEventsInOneAppend) {
    UserRepository users(*store_);
    auto appended = users.Append("User-11", ExpectedVersion::NoStream(), UserCreated{"11"}, UserNameUpdated{"jun"});
    ASSERT_TRUE(appended.ok()) << appended.status().ToString();
    EXPECT_EQ(appended.value().next_expected_version, 1);
    auto user = users.Load("User-11").value();
    EXPECT_EQ(user->id, "11");
    EXPECT_EQ(user->name, "jun");

    auto conflict = users.Append("User-11", ExpectedVersion::NoStream(), UserNameUpdated{"no"});
    ASSERT_FALSE(conflict.ok());
    EXPECT_EQ(conflict.status().code(), StatusCode::kWrongExpectedVersion);
}

TEST_P(AggregateTest, LoadReadsPageByPage) {
    UserRepository users(*store_, RepositoryOptions{.read_page_size = 2});
    Aggregate<User> user("User-12");
    user.Raise(UserCreated{"12"});
    for (int i = 0; i < 6; ++i) user.Raise(UserNameUpdated{"n" + std::to_string(i)});
    ASSERT_TRUE(users.Save(user).ok());
    auto loaded = users.Load("User-12").value();
    EXPECT_EQ(loaded.version(), 6);
    EXPECT_EQ(loaded->name, "n5");
    EXPECT_EQ(loaded->changes, 7);
}

TEST_P(AggregateTest, SnapshotEveryTwoEventsMatchesFullReplay) {
    UserRepository snapshotting(*store_, RepositoryOptions{.snapshot_every = 2});
    UserRepository plain(*store_);

    Aggregate<User> user("User-13");
    user.Raise(UserCreated{"13"});
    ASSERT_TRUE(snapshotting.Save(user).ok());
    EXPECT_EQ(store_->LoadSnapshot("User-13").status().code(), StatusCode::kNotFound);  // 1 event: none yet

    user.Raise(UserNameUpdated{"jun"});
    ASSERT_TRUE(snapshotting.Save(user).ok());  // 2 events: crosses 2
    auto snapshot = store_->LoadSnapshot("User-13");
    ASSERT_TRUE(snapshot.ok()) << snapshot.status().ToString();
    EXPECT_EQ(snapshot.value().version, 1);
    EXPECT_EQ(snapshot.value().type, "snapshot:User");
    EXPECT_EQ(nlohmann::json::parse(snapshot.value().data).get<User>(), user.state());

    user.Raise(UserNameUpdated{"jun2"});
    ASSERT_TRUE(snapshotting.Save(user).ok());  // 3 events: no crossing
    EXPECT_EQ(store_->LoadSnapshot("User-13").value().version, 1);

    user.Raise(EmailChanged{"a@b.c"});
    user.Raise(UserNameUpdated{"jun3"});
    ASSERT_TRUE(snapshotting.Save(user).ok());  // 3 -> 5 events: crosses 4
    EXPECT_EQ(store_->LoadSnapshot("User-13").value().version, 4);

    user.Raise(UserNameUpdated{"jun4"});
    ASSERT_TRUE(snapshotting.Save(user).ok());  // 6 events: crosses 6, snapshot at 5
    EXPECT_EQ(store_->LoadSnapshot("User-13").value().version, 5);
    user.Raise(UserNameUpdated{"jun5"});
    ASSERT_TRUE(snapshotting.Save(user).ok());  // 7 events: snapshot stays at 5, one event replayed after it

    auto with_snapshot = snapshotting.Load("User-13");
    auto without_snapshot = plain.Load("User-13");
    ASSERT_TRUE(with_snapshot.ok()) << with_snapshot.status().ToString();
    ASSERT_TRUE(without_snapshot.ok()) << without_snapshot.status().ToString();
    EXPECT_EQ(with_snapshot.value().state(), without_snapshot.value().state());
    EXPECT_EQ(with_snapshot.value().version(), without_snapshot.value().version());
    EXPECT_EQ(with_snapshot.value().version(), 6);
    EXPECT_EQ(with_snapshot.value()->name, "jun5");
    EXPECT_EQ(with_snapshot.value()->changes, 7);
}

TEST_P(AggregateTest, LoadStartsFromTheSnapshot) {
    // Proves Load uses the snapshot rather than replaying: a snapshot whose content differs from the replay wins.
    UserRepository users(*store_);
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    User doctored{"123", "from-snapshot", "", 2};
    ASSERT_TRUE(store_->SaveSnapshot(keel::Snapshot{"User-123", 1, "snapshot:User", Json(doctored), 0}).ok());
    auto user = users.Load("User-123").value();
    EXPECT_EQ(user->name, "jun2");  // version 2 replayed on top of the snapshot at version 1
    EXPECT_EQ(user->changes, 3);
    EXPECT_EQ(user.version(), 2);

    ASSERT_TRUE(store_->SaveSnapshot(keel::Snapshot{"User-123", 2, "snapshot:User", Json(doctored), 0}).ok());
    user = users.Load("User-123").value();
    EXPECT_EQ(user->name, "from-snapshot");  // nothing after the snapshot
    EXPECT_EQ(user.version(), 2);
}

TEST_P(AggregateTest, UndecodableSnapshotIsIgnored) {
    UserRepository users(*store_);
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    const User expected = users.Load("User-123").value().state();

    for (const keel::Snapshot& bad : {
             keel::Snapshot{"User-123", 1, "snapshot:User", "not json {", 0},
             keel::Snapshot{"User-123", 1, "snapshot:User", R"({"id":5})", 0},                 // wrong field type
             keel::Snapshot{"User-123", 1, "snapshot:Order", Json(User{"x", "y", "", 9}), 0},  // other type
         }) {
        ASSERT_TRUE(store_->SaveSnapshot(bad).ok());
        auto user = users.Load("User-123");
        ASSERT_TRUE(user.ok()) << bad.data << ": " << user.status().ToString();
        EXPECT_EQ(user.value().state(), expected) << bad.data;
        EXPECT_EQ(user.value().version(), 2);
    }
}

TEST_P(AggregateTest, SnapshotVersionIsPartOfTheSnapshotType) {
    EXPECT_EQ(keel::SnapshotTypeName<User>(), "snapshot:User");
    EXPECT_EQ(keel::SnapshotTypeName<myapp::VersionedUser>(), "snapshot:VersionedUser/v2");
    Repository<myapp::VersionedUser, UserNameUpdated> repo(*store_, RepositoryOptions{.snapshot_every = 1});
    Aggregate<myapp::VersionedUser> user("VersionedUser-1");
    user.Raise(UserNameUpdated{"a"});
    ASSERT_TRUE(repo.Save(user).ok());
    EXPECT_EQ(store_->LoadSnapshot("VersionedUser-1").value().type, "snapshot:VersionedUser/v2");
    // A snapshot of the previous version is ignored.
    ASSERT_TRUE(
        store_->SaveSnapshot(keel::Snapshot{"VersionedUser-1", 0, "snapshot:VersionedUser", R"({"name":"stale"})", 0})
            .ok());
    EXPECT_EQ(repo.Load("VersionedUser-1").value()->name, "a");
}

TEST_P(AggregateTest, SnapshotPlusTruncateBeforeCompactsTheStream) {
    UserRepository users(*store_, RepositoryOptions{.snapshot_every = 3});
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));  // the third Save writes a snapshot at version 2
    ASSERT_EQ(store_->LoadSnapshot("User-123").value().version, 2);
    keel::StreamMetadata metadata;
    metadata.truncate_before = 3;  // hide every event the snapshot covers
    ASSERT_TRUE(store_->SetStreamMetadata("User-123", metadata).ok());

    auto user = users.Load("User-123");  // snapshot, no visible event after it
    ASSERT_TRUE(user.ok()) << user.status().ToString();
    EXPECT_EQ(user.value()->name, "jun2");
    EXPECT_EQ(user.value().version(), 2);
    user.value().Raise(UserNameUpdated{"jun3"});
    ASSERT_TRUE(users.Save(user.value()).ok());
    auto reloaded = users.Load("User-123").value();  // snapshot at 2 + the visible version 3
    EXPECT_EQ(reloaded->name, "jun3");
    EXPECT_EQ(reloaded->id, "123");
    EXPECT_EQ(reloaded.version(), 3);
}

TEST_P(AggregateTest, StreamWhoseEventsAreAllHiddenLoadsWithItsRealVersion) {
    UserRepository users(*store_);
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    keel::StreamMetadata metadata;
    metadata.truncate_before = 3;
    ASSERT_TRUE(store_->SetStreamMetadata("User-123", metadata).ok());
    auto user = users.Load("User-123");
    ASSERT_TRUE(user.ok()) << user.status().ToString();
    EXPECT_EQ(user.value().version(), 2);  // so that a Save checks against the real version
    user.value().Raise(UserNameUpdated{"x"});
    EXPECT_TRUE(users.Save(user.value()).ok());
}

TEST_P(AggregateTest, SoftDeletedStreamIsReopenedByExecute) {
    UserRepository users(*store_, RepositoryOptions{.snapshot_every = 2});
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    ASSERT_TRUE(store_->DeleteStream("User-123", ExpectedVersion::Any(), keel::DeleteMode::kSoft).ok());
    EXPECT_EQ(users.Load("User-123").status().code(), StatusCode::kNotFound);

    auto created = users.Execute("User-123", [](Aggregate<User>& user) -> Status {
        if (user.version() >= 0) return Status::AlreadyExists("exists");
        user.Raise(UserCreated{"new"});
        return Status::Ok();
    });
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    auto user = users.Load("User-123");
    ASSERT_TRUE(user.ok()) << user.status().ToString();
    EXPECT_EQ(user.value()->id, "new");
    EXPECT_EQ(user.value()->name, "");  // the deleted events (and the snapshot of them) are not replayed
    EXPECT_EQ(user.value().version(), created.value().next_expected_version);
    user.value().Raise(UserNameUpdated{"again"});
    ASSERT_TRUE(users.Save(user.value()).ok());
    EXPECT_EQ(users.Load("User-123").value()->name, "again");
}

TEST_P(AggregateTest, SoftDeleteDropsTheSnapshotSoAReopenedStreamStartsEmpty) {
    // The snapshot is taken at the last version before the delete, so it would join the re-opened stream's first
    // event exactly: only the store forgetting snapshots on delete keeps the deleted state out.
    UserRepository users(*store_, RepositoryOptions{.snapshot_every = 3});
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    ASSERT_EQ(store_->LoadSnapshot("User-123").value().version, 2);
    ASSERT_TRUE(store_->DeleteStream("User-123", ExpectedVersion::Any(), keel::DeleteMode::kSoft).ok());
    EXPECT_EQ(store_->LoadSnapshot("User-123").status().code(), StatusCode::kNotFound);

    ASSERT_TRUE(users.Append("User-123", ExpectedVersion::NoStream(), UserCreated{"new"}).ok());
    auto user = users.Load("User-123");
    ASSERT_TRUE(user.ok()) << user.status().ToString();
    EXPECT_EQ(user.value()->id, "new");
    EXPECT_EQ(user.value()->name, "");
    EXPECT_EQ(user.value()->changes, 1);
}

TEST_P(AggregateTest, AggregateWithoutJsonStateIsNeverSnapshotted) {
    Repository<myapp::Counter, UserCreated, UserNameUpdated> counters(*store_, RepositoryOptions{.snapshot_every = 1});
    Aggregate<myapp::Counter> counter("Counter-1");
    counter.Raise(UserCreated{"1"});
    counter.Raise(UserNameUpdated{"a"});
    ASSERT_TRUE(counters.Save(counter).ok());
    EXPECT_EQ(store_->LoadSnapshot("Counter-1").status().code(), StatusCode::kNotFound);
    EXPECT_EQ(counters.Load("Counter-1").value()->total, 2);
}

TEST_P(AggregateTest, ExecuteCreatesAMissingStream) {
    UserRepository users(*store_);
    auto result = users.Execute("User-20", [](Aggregate<User>& user) -> Status {
        if (user.version() != -1) return Status::AlreadyExists("user exists");
        user.Raise(UserCreated{"20"});
        return Status::Ok();
    });
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    EXPECT_EQ(result.value().next_expected_version, 0);
    EXPECT_EQ(users.Load("User-20").value()->id, "20");
}

TEST_P(AggregateTest, ExecuteRetriesAfterAConcurrentWriter) {
    UserRepository users(*store_);
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    int runs = 0;
    std::vector<int64_t> seen_versions;
    auto result = users.Execute("User-123", [&](Aggregate<User>& user) -> Status {
        ++runs;
        seen_versions.push_back(user.version());
        if (runs == 1) {
            // A concurrent writer slips in between this load and the save.
            auto concurrent = store_->Append("User-123", ExpectedVersion::Exact(user.version()),
                                             {RawEvent("UserNameUpdated", R"({"name":"concurrent"})")});
            if (!concurrent.ok()) return concurrent.status();
        }
        user.Raise(EmailChanged{user->name + "@example.com"});
        return Status::Ok();
    });
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    EXPECT_EQ(runs, 2);
    EXPECT_EQ(seen_versions, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(result.value().next_expected_version, 4);
    auto user = users.Load("User-123").value();
    EXPECT_EQ(user->name, "concurrent");
    EXPECT_EQ(user->email, "concurrent@example.com");  // decided on the fresh state
    EXPECT_EQ(CountEvents("User-123"), 5);
}

TEST_P(AggregateTest, ExecuteGivesUpAfterMaxRetries) {
    UserRepository users(*store_, RepositoryOptions{.max_retries = 2});
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    int runs = 0;
    auto result = users.Execute("User-123", [&](Aggregate<User>& user) -> Status {
        ++runs;
        auto concurrent =
            store_->Append("User-123", ExpectedVersion::Any(), {RawEvent("UserNameUpdated", R"({"name":"other"})")});
        if (!concurrent.ok()) return concurrent.status();
        user.Raise(UserNameUpdated{"mine"});
        return Status::Ok();
    });
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), StatusCode::kWrongExpectedVersion);
    EXPECT_EQ(runs, 3);  // the first attempt and two retries
    EXPECT_EQ(result.status().actual_version(), 5);
    EXPECT_EQ(users.Load("User-123").value()->name, "other");
}

TEST_P(AggregateTest, ExecuteReturnsTheCommandErrorAndSavesNothing) {
    UserRepository users(*store_);
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    int runs = 0;
    auto result = users.Execute("User-123", [&](Aggregate<User>& user) -> Status {
        ++runs;
        user.Raise(UserNameUpdated{"not saved"});
        return Status::FailedPrecondition("name is frozen");
    });
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(result.status().message(), "name is frozen");
    EXPECT_EQ(runs, 1);
    EXPECT_EQ(CountEvents("User-123"), 3);
}

TEST_P(AggregateTest, ExecuteWithoutEventsWritesNothing) {
    UserRepository users(*store_);
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    const int64_t head = store_->HeadPosition().value();
    auto result = users.Execute("User-123", [](Aggregate<User>&) {});  // a void command: OK
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    EXPECT_EQ(result.value().next_expected_version, 2);
    EXPECT_EQ(store_->HeadPosition().value(), head);
}

TEST_P(AggregateTest, PublisherReceivesSavedEventsWithEnvelopes) {
    keel::InProcessPublisher publisher;
    std::vector<RecordedEvent> all;
    std::vector<RecordedEvent> renames;
    publisher.Subscribe("", [&](const RecordedEvent& e) {
        all.push_back(e);
        return Status::Ok();
    });
    publisher.Subscribe("UserNameUpdated", [&](const RecordedEvent& e) {
        renames.push_back(e);
        return Status::Ok();
    });
    UserRepository users(*store_, RepositoryOptions{.publisher = &publisher});

    Aggregate<User> user("User-30");
    user.Raise(UserCreated{"30"});
    user.Raise(UserNameUpdated{"jun"});
    const std::vector<EventData> pending = user.pending();
    auto saved = users.Save(user);
    ASSERT_TRUE(saved.ok()) << saved.status().ToString();

    ASSERT_EQ(all.size(), 2u);
    for (size_t i = 0; i < all.size(); ++i) {
        EXPECT_EQ(all[i].event_id, pending[i].event_id);
        EXPECT_EQ(all[i].stream_id, "User-30");
        EXPECT_EQ(all[i].stream_version, static_cast<int64_t>(i));
        EXPECT_EQ(all[i].global_position, saved.value().first_position + static_cast<int64_t>(i));
        EXPECT_EQ(all[i].type, pending[i].type);
        EXPECT_EQ(all[i].data, pending[i].data);
        EXPECT_GT(all[i].recorded_at, 0);
    }
    ASSERT_EQ(renames.size(), 1u);
    EXPECT_EQ(renames[0].type, "UserNameUpdated");

    // Append and Execute publish too.
    ASSERT_TRUE(users.Append("User-30", ExpectedVersion::Exact(1), UserNameUpdated{"jun2"}).ok());
    ASSERT_TRUE(users.Execute("User-30", [](Aggregate<User>& u) { u.Raise(EmailChanged{"x@y.z"}); }).ok());
    ASSERT_EQ(all.size(), 4u);
    EXPECT_EQ(all[2].stream_version, 2);
    EXPECT_EQ(all[3].type, "user.email-changed");
    EXPECT_EQ(renames.size(), 2u);
}

TEST_P(AggregateTest, PublishFailureKeepsEventsPendingAndResaveRepublishesWithoutDuplicates) {
    keel::InProcessPublisher publisher;
    int failures_left = 0;
    std::vector<RecordedEvent> delivered;
    publisher.Subscribe("", [&](const RecordedEvent& e) -> Status {
        if (failures_left > 0) {
            --failures_left;
            return Status::Unavailable("broker down");
        }
        delivered.push_back(e);
        return Status::Ok();
    });
    UserRepository users(*store_, RepositoryOptions{.publisher = &publisher});
    ASSERT_NO_FATAL_FAILURE(SaveSeed004(users, "User-123"));
    EXPECT_EQ(delivered.size(), 3u);
    delivered.clear();
    failures_left = 1;  // the next publish fails

    auto user = users.Load("User-123").value();
    user.Raise(UserNameUpdated{"jun3"});
    user.Raise(EmailChanged{"jun@example.com"});
    const std::vector<EventData> pending = user.pending();

    auto failed = users.Save(user);
    ASSERT_FALSE(failed.ok());
    EXPECT_EQ(failed.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(failed.status().message().find("committed"), std::string::npos) << failed.status().message();
    EXPECT_NE(failed.status().message().find("broker down"), std::string::npos) << failed.status().message();
    EXPECT_NE(failed.status().message().find("saving it again"), std::string::npos) << failed.status().message();
    EXPECT_EQ(user.version(), 2);
    EXPECT_EQ(user.pending().size(), 2u);
    EXPECT_EQ(CountEvents("User-123"), 5);  // committed
    EXPECT_TRUE(delivered.empty());

    auto resaved = users.Save(user);
    ASSERT_TRUE(resaved.ok()) << resaved.status().ToString();
    EXPECT_TRUE(resaved.value().already_present);
    EXPECT_EQ(resaved.value().next_expected_version, 4);
    EXPECT_EQ(user.version(), 4);
    EXPECT_TRUE(user.pending().empty());
    EXPECT_EQ(CountEvents("User-123"), 5);  // nothing written twice
    ASSERT_EQ(delivered.size(), 2u);
    EXPECT_EQ(delivered[0].event_id, pending[0].event_id);
    EXPECT_EQ(delivered[1].event_id, pending[1].event_id);
    EXPECT_EQ(delivered[1].stream_version, 4);

    auto reloaded = users.Load("User-123").value();
    EXPECT_EQ(reloaded->name, "jun3");
    EXPECT_EQ(reloaded->email, "jun@example.com");
}

TEST_P(AggregateTest, PublishFailureOnAppendAndExecuteSaysTheEventsAreCommitted) {
    keel::InProcessPublisher publisher;
    publisher.Subscribe("", [](const RecordedEvent&) { return Status::Internal("handler bug"); });
    UserRepository users(*store_, RepositoryOptions{.publisher = &publisher});
    auto appended = users.Append("User-31", ExpectedVersion::NoStream(), UserCreated{"31"});
    ASSERT_FALSE(appended.ok());
    EXPECT_EQ(appended.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(appended.status().message().find("committed"), std::string::npos);
    EXPECT_EQ(CountEvents("User-31"), 1);

    auto executed = users.Execute("User-31", [](Aggregate<User>& user) { user.Raise(UserNameUpdated{"x"}); });
    ASSERT_FALSE(executed.ok());
    EXPECT_EQ(executed.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(executed.status().message().find("committed"), std::string::npos);
    EXPECT_NE(executed.status().message().find("Execute does not re-publish"), std::string::npos);
    EXPECT_EQ(CountEvents("User-31"), 2);  // committed once, not retried
}

TEST_P(AggregateTest, LoadAsOfPositionAndTime) {
    UserRepository users(*store_, RepositoryOptions{.snapshot_every = 1});  // LoadAsOf must ignore snapshots
    Aggregate<User> user("User-40");
    user.Raise(UserCreated{"40"});
    ASSERT_TRUE(users.Save(user).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    user.Raise(UserNameUpdated{"jun"});
    auto jun = users.Save(user).value();
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    user.Raise(UserNameUpdated{"jun2"});
    ASSERT_TRUE(users.Save(user).ok());

    auto as_of_position = users.LoadAsOf("User-40", keel::AsOf::Position(jun.last_position));
    ASSERT_TRUE(as_of_position.ok()) << as_of_position.status().ToString();
    EXPECT_EQ(as_of_position.value()->name, "jun");
    EXPECT_EQ(as_of_position.value().version(), 1);

    auto events = store_->ReadStream("User-40").value();
    ASSERT_EQ(events.size(), 3u);
    auto as_of_time = users.LoadAsOf("User-40", keel::AsOf::Time(events[1].recorded_at));
    ASSERT_TRUE(as_of_time.ok()) << as_of_time.status().ToString();
    EXPECT_EQ(as_of_time.value()->name, "jun");
    EXPECT_EQ(as_of_time.value().version(), 1);

    auto before = users.LoadAsOf("User-40", keel::AsOf::Position(events[0].global_position - 1));
    ASSERT_FALSE(before.ok());
    EXPECT_EQ(before.status().code(), StatusCode::kNotFound);

    EXPECT_EQ(users.Load("User-40").value()->name, "jun2");
}

TEST(InProcessPublisherTest, FiltersByTypeAndUnsubscribes) {
    keel::InProcessPublisher publisher;
    int any = 0;
    int created = 0;
    auto any_token = publisher.Subscribe("", [&](const RecordedEvent&) {
        ++any;
        return Status::Ok();
    });
    auto created_token = publisher.Subscribe("UserCreated", [&](const RecordedEvent&) {
        ++created;
        return Status::Ok();
    });
    EXPECT_NE(any_token, 0u);
    EXPECT_NE(any_token, created_token);
    EXPECT_EQ(publisher.subscription_count(), 2u);

    RecordedEvent e;
    e.type = "UserCreated";
    ASSERT_TRUE(publisher.Publish(e).ok());
    e.type = "UserNameUpdated";
    ASSERT_TRUE(publisher.Publish(e).ok());
    EXPECT_EQ(any, 2);
    EXPECT_EQ(created, 1);

    EXPECT_TRUE(publisher.Unsubscribe(any_token));
    EXPECT_FALSE(publisher.Unsubscribe(any_token));
    e.type = "UserCreated";
    ASSERT_TRUE(publisher.Publish(e).ok());
    EXPECT_EQ(any, 2);
    EXPECT_EQ(created, 2);
}

TEST(InProcessPublisherTest, RunsEveryHandlerAndReturnsTheFirstError) {
    keel::InProcessPublisher publisher;
    std::vector<int> calls;
    publisher.Subscribe("", [&](const RecordedEvent&) {
        calls.push_back(1);
        return Status::NotFound("first");
    });
    publisher.Subscribe("", [&](const RecordedEvent&) {
        calls.push_back(2);
        return Status::Internal("second");
    });
    publisher.Subscribe("", [&](const RecordedEvent&) {
        calls.push_back(3);
        return Status::Ok();
    });
    Status s = publisher.Publish(RecordedEvent{});
    EXPECT_EQ(s.code(), StatusCode::kNotFound);
    EXPECT_EQ(s.message(), "first");
    EXPECT_EQ(calls, (std::vector<int>{1, 2, 3}));
}

TEST(InProcessPublisherTest, HandlersMayUnsubscribeThemselvesAndPublishConcurrently) {
    keel::InProcessPublisher publisher;
    std::atomic<int> count{0};
    keel::InProcessPublisher::Token self = 0;
    self = publisher.Subscribe("once", [&](const RecordedEvent&) {
        publisher.Unsubscribe(self);  // no deadlock: handlers run without the lock
        return Status::Ok();
    });
    publisher.Subscribe("", [&](const RecordedEvent&) {
        count.fetch_add(1);
        return Status::Ok();
    });
    RecordedEvent once;
    once.type = "once";
    ASSERT_TRUE(publisher.Publish(once).ok());
    EXPECT_EQ(publisher.subscription_count(), 1u);

    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 250; ++i) EXPECT_TRUE(publisher.Publish(RecordedEvent{}).ok());
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(count.load(), 1001);
}

}  // namespace
