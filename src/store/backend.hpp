#pragma once
// The narrow interface every event-store backend implements. The EventStore front (src/store/event_store.cpp)
// validates input, fills event ids, batches appends (group commit), applies stream-metadata visibility and runs
// subscriptions; a backend only stores and fetches rows.
//
// Thread-safety a backend must provide: AppendBatch and the other write methods are called by one thread at a
// time (the front serializes writers); read methods may be called concurrently with each other and with writes.

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "keel/event_store.hpp"
#include "keel/outbox.hpp"
#include "keel/unit_of_work.hpp"

namespace keel::detail {

// One Append call inside a group-commit batch. The front fills the inputs; the backend fills `result`.
struct AppendRequest {
    std::string_view stream;
    ExpectedVersion expected = ExpectedVersion::Any();
    std::span<const EventData> events;  // every event_id is non-nil and distinct
    Result<AppendResult> result = Status::Internal("append not processed");
};

// A range of one stream, with the visibility already computed by the front.
struct StreamRange {
    ReadDirection direction = ReadDirection::kForward;
    int64_t from_version = 0;          // inclusive; for kBackward the highest version wanted
    int64_t min_version = 0;           // lowest visible version
    std::optional<int64_t> min_recorded_at;
    std::optional<int64_t> max_position;
    std::optional<int64_t> max_recorded_at;
    size_t limit = 0;  // 0: no limit
};

// What a stored event looks like to the idempotency check.
struct StoredEventRef {
    int64_t global_position = 0;
    std::string stream_id;
    int64_t stream_version = 0;
    std::string type;
    std::string data;
    std::string metadata;
};

// A row of the outbox.
struct OutboxRow {
    int64_t position = 0;
    OutboxMessage message;
    int64_t created_at = 0;
};

// A running watch for outbox commits (StoreBackend::WatchOutbox); destroying it stops it.
class OutboxWatch {
public:
    virtual ~OutboxWatch() = default;
};

inline Status NoOutbox() {
    return Status::NotSupported("this event store has no transactional outbox (it has no transactions)");
}

// One open local transaction of a unit of work (unit_of_work.hpp) on the store's database. Destroying it without
// Commit rolls back. Used by one thread.
class TransactionBackend {
public:
    virtual ~TransactionBackend() = default;
    virtual Result<int64_t> Exec(std::string_view sql, std::span<const SqlValue> params) = 0;
    virtual Result<Rows> Query(std::string_view sql, std::span<const SqlValue> params) = 0;
    // As StoreBackend::AppendBatch for one request, inside this transaction; a failed append leaves no trace.
    virtual Result<AppendResult> Append(const AppendRequest& request) = 0;
    // `message.message_id` is set. kAlreadyExists when that id is in the outbox already.
    virtual Status InsertOutbox(const OutboxMessage& message) = 0;
    // True if inserted, false if (consumer, message_id) was there.
    virtual Result<bool> InsertInbox(std::string_view consumer, const Uuid& message_id) = 0;
    // The named checkpoint as this transaction sees it (nullopt if never set), locked against other transactions
    // until this one ends; and its update in this transaction.
    virtual Result<std::optional<int64_t>> LoadCheckpoint(std::string_view name) = 0;
    virtual Status SaveCheckpoint(std::string_view name, int64_t position) = 0;
    // Ends the transaction either way. On success returns the last global position appended (0 if none).
    virtual Result<int64_t> Commit() = 0;
};

class StoreBackend {
public:
    virtual ~StoreBackend() = default;

    // --- the transactional outbox (outbox.hpp); kNotSupported by default ---
    // Takes or renews the lease `name` for `owner` until `until` (µs) when it is free, expired or already `owner`'s.
    // Returns whether `owner` holds it now.
    virtual Result<bool> AcquireLease(std::string_view name, std::string_view owner, int64_t now, int64_t until) {
        (void)name, (void)owner, (void)now, (void)until;
        return NoOutbox();
    }
    virtual Status ReleaseLease(std::string_view name, std::string_view owner) {
        (void)name, (void)owner;
        return NoOutbox();
    }
    // Unpublished rows in outbox order, at most `limit`.
    virtual Result<std::vector<OutboxRow>> PendingOutbox(size_t limit) {
        (void)limit;
        return NoOutbox();
    }
    // Marks rows published, in one transaction, if `owner` still holds lease `lease` (else kFailedPrecondition).
    virtual Status MarkPublished(std::string_view lease, std::string_view owner, std::span<const int64_t> positions,
                                 int64_t now) {
        (void)lease, (void)owner, (void)positions, (void)now;
        return NoOutbox();
    }
    virtual Result<int64_t> RepublishOutbox(int64_t from) {
        (void)from;
        return NoOutbox();
    }
    virtual Result<int64_t> PurgeOutbox(int64_t published_before) {
        (void)published_before;
        return NoOutbox();
    }
    virtual Result<OutboxStats> GetOutboxStats() { return NoOutbox(); }
    // Watches for outbox rows committed through other connections and processes: calls `on_commit` (from a thread
    // of the watch's own, at least once after each such commit and once after every reconnect, when one may have
    // been missed) until the returned watch is destroyed. Null when the database cannot tell (the relay then only
    // polls). PostgreSQL: LISTEN/NOTIFY.
    virtual std::unique_ptr<OutboxWatch> WatchOutbox(std::function<void()> on_commit) {
        (void)on_commit;
        return nullptr;
    }

    // Begins a unit of work's transaction. kNotSupported for backends without transactions.
    virtual Result<std::unique_ptr<TransactionBackend>> BeginTransaction() {
        return Status::NotSupported("this event store cannot run units of work: it has no transactions");
    }

    // Applies every request in one transaction (on the backends that have transactions), in order, each checked
    // against the stream versions left by the requests before it. A request that fails leaves no trace and does
    // not affect the others. If the transaction as a whole fails, every request gets that error.
    virtual void AppendBatch(std::span<AppendRequest* const> batch) = 0;

    virtual Result<std::vector<RecordedEvent>> ReadStreamRange(std::string_view stream, const StreamRange& range) = 0;
    virtual Result<ReadAllSlice> ReadAll(const ReadAllOptions& options) = 0;
    virtual Result<int64_t> HeadPosition() = 0;

    virtual Result<std::optional<StreamInfo>> GetStream(std::string_view stream) = 0;
    virtual Result<std::vector<StreamInfo>> ListStreams(std::string_view after, size_t limit) = 0;
    virtual Status SetStreamMetadata(std::string_view stream, const StreamMetadata& metadata) = 0;
    virtual Status DeleteStream(std::string_view stream, ExpectedVersion expected, DeleteMode mode) = 0;

    virtual Status SaveSnapshot(const Snapshot& snapshot) = 0;
    virtual Result<std::optional<Snapshot>> LoadSnapshot(std::string_view stream) = 0;

    virtual Result<std::optional<int64_t>> LoadCheckpoint(std::string_view name) = 0;
    virtual Status SaveCheckpoint(std::string_view name, int64_t position) = 0;

    virtual Result<StoreStats> Stats() = 0;
};

// Shared by the backends: decides what an append whose event ids are (partly) stored already means.
// `lookup` returns the stored event with that id, if any. Returns:
// - nullopt: none of the ids is stored (the append is new);
// - an AppendResult with already_present: every id is stored, in order, contiguously in `stream`, with the same
//   type/data/metadata, at positions consistent with `expected` (an idempotent re-send);
// - kInvalidArgument naming the first id that is stored differently or elsewhere (or partially re-sent).
Result<std::optional<AppendResult>> MatchStoredAppend(
    std::string_view stream, ExpectedVersion expected, std::span<const EventData> events,
    const std::function<Result<std::optional<StoredEventRef>>(const Uuid&)>& lookup);

// The version an append's expectation is checked against: -1 for a missing, never-written or soft-deleted stream.
inline int64_t EffectiveVersion(const StreamInfo* info) {
    if (info == nullptr || info->state != StreamState::kActive) return -1;
    return info->version;
}

// kStreamDeleted for a tombstone, kWrongExpectedVersion (with the actual version) when `expected` does not match,
// else OK. `info` is null for a stream the store has never seen.
Status CheckExpected(std::string_view stream, ExpectedVersion expected, const StreamInfo* info);

// Microseconds since the Unix epoch, UTC, from the system clock.
int64_t NowMicros();

}  // namespace keel::detail
