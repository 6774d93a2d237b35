#pragma once
/// keel::EventStore: append-only streams with optimistic concurrency, one global order, reads forward and backward,
/// temporal reads, stream metadata (max count, max age, truncate-before, soft and hard delete), snapshots, durable
/// subscription checkpoints and subscriptions that never skip.
///
/// A store is opened by URI (OpenStore): `memory:` (in-process, for tests), `sqlite:///path/to/file.db` (embedded,
/// durable), `postgresql://…` (docs/postgres.md) and `mysql://…` / `mariadb://…` (docs/mysql.md). Every backend
/// passes the same conformance suite (tests/conformance/).
///
/// Thread-safety: an EventStore is thread-safe; share one per process and call it from any number of threads.
/// Concurrent Append calls are batched into one database transaction per flush (group commit); each caller keeps
/// its own expected-version check and gets its own result. Reads never block appends.
///
/// Durability: on `sqlite:` an acknowledged append survives a process crash always, and a power loss unless the
/// store was opened with Durability::kNormal (which may lose the last commits on power loss, never on a crash). On
/// PostgreSQL and MariaDB it is the server's commit durability (MariaDB with kFull refuses a server whose
/// innodb_flush_log_at_trx_commit is not 1).

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "keel/event.hpp"
#include "keel/status.hpp"

namespace keel {

namespace detail {
class StoreBackend;
class StoreInternals;
}
class Subscription;
struct SubscriptionOptions;

/// How hard a commit is pushed to disk (sqlite:; on mysql: whether a non-durable server setting is accepted).
/// Ignored by memory: and postgresql:.
enum class Durability : uint8_t {
    kFull,    ///< synchronous=FULL: an acknowledged append survives power loss. The default.
    kNormal,  ///< synchronous=NORMAL: survives a process crash; power loss may lose the last commits.
};

struct StoreOptions {
    /// Largest event accepted (data + metadata + type bytes). Default: 1 MiB.
    size_t max_event_size = 1 << 20;
    /// Largest number of events in one Append call. Default: 10,000.
    size_t max_events_per_append = 10'000;
    /// Default: Durability::kFull.
    Durability durability = Durability::kFull;
    /// Create the file (sqlite:) and the schema when missing. When false, opening a missing sqlite: file is
    /// kNotFound.
    /// Default: true.
    bool create_if_missing = true;
    /// How long a write waits for another process holding the database's write lock before kUnavailable.
    /// Default: 5 s.
    std::chrono::milliseconds busy_timeout{5000};
    /// Most appends one group-commit flush takes from the queue. Default: 256.
    size_t max_batch = 256;
    /// When appends are concurrent (the last flush carried more than one), how long a flush waits for the other
    /// appenders inside Append to queue, so that one commit carries them all. A lone writer never waits.
    /// Default: 200 µs.
    std::chrono::microseconds group_commit_wait{200};
    /// `sqlite:` only: how many units of work (unit_of_work.hpp) one commit may carry. A unit of work that commits
    /// while others wait to begin leaves the transaction open for them: each runs in it under its own savepoint,
    /// and the last one (or the first that finds nobody waiting, or finds the transaction open for 10 ms) commits
    /// them all at once — one commit, one fsync. Each Commit() returns only when that shared commit is durable,
    /// with its outcome; a unit that rolls back undoes only its own work. 1 turns sharing off. Default: 64.
    size_t max_units_per_commit = 64;
};

struct AppendResult {
    /// The stream's version after the append: pass it as ExpectedVersion::Exact for the next append.
    int64_t next_expected_version = -1;
    /// Global positions of the first and last appended event (equal for a single event).
    int64_t first_position = 0;
    int64_t last_position = 0;
    /// True when every event was already stored by an earlier identical append (an idempotent re-send):
    /// nothing was written, and the positions and next_expected_version are those of the original append (even if
    /// the stream has moved on since).
    bool already_present = false;
};

enum class ReadDirection : uint8_t { kForward, kBackward };

/// A read of one stream. Events hidden by the stream's metadata (truncate-before, max count, max age) are skipped.
struct ReadStreamOptions {
    ReadDirection direction = ReadDirection::kForward;
    /// First version to return. Default: 0 forward; for kBackward, -1 means "from the last event".
    int64_t from_version = -1;
    /// Most events returned. Default: 4096; 0 means no limit.
    size_t limit = 4096;
    /// Temporal read: only events with global_position <= this. Default: none.
    std::optional<int64_t> as_of_position;
    /// Temporal read: only events recorded at or before this time (µs since epoch, UTC). Default: none.
    std::optional<int64_t> as_of_time;
};

/// A read of `$all`, the whole store in global order. Stream metadata does not hide events here.
struct ReadAllOptions {
    /// First global position to return (inclusive). Default: 1, the beginning.
    int64_t from_position = 1;
    /// Most events returned. Default: 4096; 0 means no limit.
    size_t limit = 4096;
    /// Only events of streams in these categories (empty: all). See StreamCategory().
    std::vector<std::string> categories;
    /// Only events of these types (empty: all).
    std::vector<std::string> types;
    /// Temporal read: only events with global_position <= this. Default: none.
    std::optional<int64_t> as_of_position;
    /// Temporal read: only events recorded at or before this time (µs since epoch, UTC). Default: none.
    std::optional<int64_t> as_of_time;
};

struct ReadAllSlice {
    std::vector<RecordedEvent> events;
    /// Where the next read continues (pass as from_position).
    int64_t next_position = 1;
    /// True when fewer than `limit` events matched: the reader reached the current head.
    bool end_of_all = false;
};

/// Per-stream settings; every field optional.
struct StreamMetadata {
    /// Keep only the last N events visible to stream reads.
    std::optional<int64_t> max_count;
    /// Hide events recorded longer ago than this from stream reads.
    std::optional<std::chrono::microseconds> max_age;
    /// Hide versions below this from stream reads.
    std::optional<int64_t> truncate_before;
    /// Application metadata: empty or a JSON object.
    std::string custom;

    friend bool operator==(const StreamMetadata&, const StreamMetadata&) = default;
};

enum class StreamState : uint8_t {
    kActive = 0,
    kSoftDeleted = 1,  ///< hidden; a later append re-opens it with versions continuing after the old ones
    kTombstoned = 2,   ///< hard-deleted; reads and appends return kStreamDeleted forever
};

struct StreamInfo {
    std::string stream_id;
    /// The last version written (-1 when nothing was ever written, e.g. a tombstone for an unused id).
    int64_t version = -1;
    StreamState state = StreamState::kActive;
    StreamMetadata metadata;
    /// When the stream was last appended to or changed (µs since epoch, UTC).
    int64_t updated_at = 0;
};

enum class DeleteMode : uint8_t { kSoft, kHard };

/// A stored snapshot of an aggregate's state at a stream version.
struct Snapshot {
    std::string stream_id;
    int64_t version = -1;  ///< the last event folded into `data`
    std::string type;      ///< what `data` holds, e.g. "snapshot:User"
    std::string data;
    int64_t recorded_at = 0;
};

struct CheckpointInfo {
    std::string name;
    int64_t position = 0;  ///< the last position (or stream version) fully processed
    int64_t updated_at = 0;
};

struct StoreStats {
    std::string backend;  ///< "memory", "sqlite", "postgresql", "mysql"
    std::string location;  ///< the file path, or empty
    int64_t events = 0;
    int64_t streams = 0;
    int64_t head_position = 0;  ///< the last global position (0 when empty)
    int64_t size_bytes = 0;     ///< on-disk size where known, else 0
    std::vector<CheckpointInfo> checkpoints;
};

class EventStore {
public:
    /// Use OpenStore(). Exposed for backends registered by other parts of keel.
    explicit EventStore(std::unique_ptr<detail::StoreBackend> backend, StoreOptions options);
    ~EventStore();
    EventStore(const EventStore&) = delete;
    EventStore& operator=(const EventStore&) = delete;

    /// Appends `events` to `stream` atomically if `expected` matches the stream's current version.
    /// Returns the new version and the global positions.
    /// Errors (nothing is written in each case):
    /// - kWrongExpectedVersion: the stream is elsewhere; Status::actual_version() says where (-1: no stream).
    /// - kStreamDeleted: the stream is tombstoned.
    /// - kInvalidArgument: a bad stream id (empty, > 256 bytes, control characters), a bad type, an event over
    ///   StoreOptions::max_event_size, metadata that is not a JSON object, no events, a duplicated event id, or an
    ///   event id already stored with other content or at another position (the message names the id).
    /// - kUnavailable: the database stayed locked or unreachable (nothing was written; retrying is safe because
    ///   event ids make the append idempotent).
    /// - kFailedPrecondition: an earlier commit failed at the storage level; the store refuses writes until reopened.
    /// Re-sending an append whose event ids are all stored at the same positions succeeds with
    /// AppendResult::already_present and writes nothing.
    Result<AppendResult> Append(std::string_view stream, ExpectedVersion expected, std::span<const EventData> events);
    Result<AppendResult> Append(std::string_view stream, ExpectedVersion expected,
                                std::initializer_list<EventData> events) {
        return Append(stream, expected, std::span<const EventData>(events.begin(), events.size()));
    }

    /// Reads one stream. kNotFound if the stream does not exist or is soft-deleted; kStreamDeleted if tombstoned;
    /// kInvalidArgument for a bad stream id. An existing stream whose visible range is empty returns no events.
    Result<std::vector<RecordedEvent>> ReadStream(std::string_view stream, const ReadStreamOptions& options = {});

    /// Reads `$all` forward. kInvalidArgument for a from_position below 1.
    Result<ReadAllSlice> ReadAll(const ReadAllOptions& options = {});

    /// The last global position (0 for an empty store).
    Result<int64_t> HeadPosition();

    /// The stream's version, state and metadata. kNotFound if it was never written nor configured.
    Result<StreamInfo> GetStream(std::string_view stream);

    /// Streams in id order, starting after `after` (empty: from the first), at most `limit` (0: no limit).
    Result<std::vector<StreamInfo>> ListStreams(std::string_view after = {}, size_t limit = 0);

    /// Replaces the stream's metadata (the stream need not exist yet). kInvalidArgument for negative counts or
    /// ages, or custom metadata that is not a JSON object; kStreamDeleted if tombstoned.
    Status SetStreamMetadata(std::string_view stream, const StreamMetadata& metadata);

    /// Soft delete: hides the stream; a later append re-opens it. Hard delete: tombstones it forever.
    /// kWrongExpectedVersion if `expected` does not match; kNotFound for a soft delete of a missing stream;
    /// kStreamDeleted if it is already tombstoned.
    Status DeleteStream(std::string_view stream, ExpectedVersion expected, DeleteMode mode);

    /// Stores a snapshot, replacing the stream's previous one. kInvalidArgument for a bad id or negative version.
    Status SaveSnapshot(const Snapshot& snapshot);
    /// The stream's latest snapshot; kNotFound when there is none.
    Result<Snapshot> LoadSnapshot(std::string_view stream);

    /// Durable checkpoints by name (used by subscriptions and projections). LoadCheckpoint: kNotFound if never set.
    Result<int64_t> LoadCheckpoint(std::string_view name);
    Status SaveCheckpoint(std::string_view name, int64_t position);

    /// Starts a subscription (see subscription.hpp). Errors: kInvalidArgument for bad options.
    Result<std::unique_ptr<Subscription>> Subscribe(SubscriptionOptions options,
                                                    std::function<Status(const RecordedEvent&)> handler);

    /// Counts, head position, size, checkpoints.
    Result<StoreStats> Stats();

    const StoreOptions& options() const noexcept;

    /// Blocks until the head position exceeds `position` or `timeout` passes; returns the head seen. Wakes at once
    /// for appends made through this object and polls the database every 50 ms for appends by other processes.
    int64_t WaitForHead(int64_t position, std::chrono::milliseconds timeout);

    /// For keel's own backends and tests only.
    detail::StoreBackend& backend() noexcept;

private:
    friend class detail::StoreInternals;
    class Impl;
    std::unique_ptr<Impl> impl_;
};

/// Opens a store by URI:
/// - `memory:` — in-process and empty at open; nothing survives the object.
/// - `sqlite:///abs/path.db`, `sqlite://relative.db`, `sqlite:relative.db` — WAL mode, BEGIN IMMEDIATE,
///   synchronous=FULL unless options.durability says otherwise. `?durability=normal` in the URI overrides.
/// - `postgresql://user:password@host:port/database[?schema=NAME]` — libpq (docs/postgres.md).
/// - `mysql://user:password@host:port/database` (or `mariadb://`) — MariaDB client, InnoDB only (docs/mysql.md).
/// Errors: kInvalidArgument for an unknown scheme or a malformed URI (the message lists the known schemes);
/// kNotFound for a missing file with create_if_missing=false; kCorruption when the file is not a keel store;
/// kNotSupported when the store was written by a newer keel (its schema version is above this build's);
/// kUnavailable when the file cannot be opened or locked or the server cannot be reached; kFailedPrecondition when a
/// MariaDB table uses a non-transactional engine (the message names the table, the engine and the fix).
Result<std::unique_ptr<EventStore>> OpenStore(std::string_view uri, const StoreOptions& options = {});

/// The URI schemes this build can open, e.g. {"memory", "sqlite"}.
std::vector<std::string> StoreSchemes();

}  // namespace keel
