#include "store/mysql/mysql_backend.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <limits>
#include <map>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <mysqld_error.h>

#include "store/mysql/mysql_conn.hpp"
#include "store/mysql/mysql_uri.hpp"
#include "store/mysql/mysql_uow.hpp"
#include "store/mysql/schema.hpp"

namespace keel::detail {
namespace {

using mysql::Conn;
using mysql::MysqlConfig;
using mysql::Stmt;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();

// ---------------------------------------------------------------------------------------------------------------
// SQL

#define KEEL_MYSQL_EVENT_COLUMNS \
    "global_position, event_id, stream_id, stream_version, type, data, metadata, recorded_at"
#define KEEL_MYSQL_STREAM_COLUMNS \
    "stream_id, version, state, max_count, max_age_us, truncate_before, custom_metadata, updated_at"

// Reads. The (? IS NULL OR …) filters take their parameter twice: MariaDB has positional parameters only.
constexpr std::string_view kStreamForwardSql =
    "SELECT " KEEL_MYSQL_EVENT_COLUMNS
    " FROM keel_events WHERE stream_id = ? AND stream_version >= ?"
    " AND (? IS NULL OR recorded_at >= ?) AND (? IS NULL OR global_position <= ?) AND (? IS NULL OR recorded_at <= ?)"
    " ORDER BY stream_version ASC LIMIT ?";
constexpr std::string_view kStreamBackwardSql =
    "SELECT " KEEL_MYSQL_EVENT_COLUMNS
    " FROM keel_events WHERE stream_id = ? AND stream_version <= ?"
    " AND (? IS NULL OR recorded_at >= ?) AND (? IS NULL OR global_position <= ?) AND (? IS NULL OR recorded_at <= ?)"
    " AND stream_version >= ? ORDER BY stream_version DESC LIMIT ?";
constexpr std::string_view kAllPlainSql = "SELECT " KEEL_MYSQL_EVENT_COLUMNS
                                          " FROM keel_events WHERE global_position >= ? AND global_position <= ?"
                                          " ORDER BY global_position ASC LIMIT ?";
constexpr std::string_view kHeadSql = "SELECT COALESCE(MAX(global_position), 0) FROM keel_events";
constexpr std::string_view kGetStreamSql = "SELECT " KEEL_MYSQL_STREAM_COLUMNS " FROM keel_streams WHERE stream_id = ?";
constexpr std::string_view kListStreamsSql =
    "SELECT " KEEL_MYSQL_STREAM_COLUMNS " FROM keel_streams WHERE stream_id > ? ORDER BY stream_id LIMIT ?";
constexpr std::string_view kLoadSnapshotSql =
    "SELECT stream_id, version, type, data, recorded_at FROM keel_snapshots WHERE stream_id = ?";
constexpr std::string_view kLoadCheckpointSql = "SELECT position FROM keel_checkpoints WHERE name = ?";

// Writes (writer connection).
constexpr std::string_view kLockSequencerSql = "SELECT id FROM keel_sequencer WHERE id = 1 FOR UPDATE";
constexpr std::string_view kLastRecordedSql =
    "SELECT recorded_at FROM keel_events ORDER BY global_position DESC LIMIT 1";
constexpr std::string_view kStreamForUpdateSql =
    "SELECT " KEEL_MYSQL_STREAM_COLUMNS " FROM keel_streams WHERE stream_id = ? FOR UPDATE";
constexpr std::string_view kStreamsForUpdatePrefix =
    "SELECT " KEEL_MYSQL_STREAM_COLUMNS " FROM keel_streams WHERE stream_id IN (";
constexpr std::string_view kInsertEventSql =
    "INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)";
constexpr std::string_view kLookupIdSql =
    "SELECT global_position, stream_id, stream_version, type, data, metadata FROM keel_events WHERE event_id = ?";
constexpr std::string_view kSetMetadataSql =
    "INSERT INTO keel_streams (stream_id, version, state, max_count, max_age_us, truncate_before, custom_metadata,"
    " updated_at) VALUES (?, -1, 0, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE max_count = VALUES(max_count),"
    " max_age_us = VALUES(max_age_us), truncate_before = VALUES(truncate_before),"
    " custom_metadata = VALUES(custom_metadata), updated_at = VALUES(updated_at)";
constexpr std::string_view kSoftDeleteSql =
    "UPDATE keel_streams SET state = 1, truncate_before = version + 1, updated_at = ? WHERE stream_id = ?";
constexpr std::string_view kTombstoneSql =
    "INSERT INTO keel_streams (stream_id, version, state, custom_metadata, updated_at) VALUES (?, -1, 2, '', ?)"
    " ON DUPLICATE KEY UPDATE state = 2, updated_at = VALUES(updated_at)";
constexpr std::string_view kSaveSnapshotSql =
    "INSERT INTO keel_snapshots (stream_id, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?)"
    " ON DUPLICATE KEY UPDATE version = VALUES(version), type = VALUES(type), data = VALUES(data),"
    " recorded_at = VALUES(recorded_at)";
constexpr std::string_view kSaveCheckpointSql =
    "INSERT INTO keel_checkpoints (name, position, updated_at) VALUES (?, ?, ?)"
    " ON DUPLICATE KEY UPDATE position = VALUES(position), updated_at = VALUES(updated_at)";

// The filtered $all read for `categories` and `types` IN lists of the given (padded) lengths.
std::string FilteredAllSql(size_t categories, size_t types) {
    std::string sql = "SELECT " KEEL_MYSQL_EVENT_COLUMNS
                      " FROM keel_events WHERE global_position >= ? AND global_position <= ?"
                      " AND (? IS NULL OR recorded_at <= ?)";
    auto in_list = [&](std::string_view expr, size_t n) {
        if (n == 0) return;
        sql += fmt::format(" AND {} IN (?", expr);
        for (size_t i = 1; i < n; ++i) sql += ", ?";
        sql += ")";
    };
    in_list("SUBSTRING_INDEX(stream_id, '-', 1)", categories);
    in_list("type", types);
    sql += " ORDER BY global_position ASC LIMIT ?";
    return sql;
}

// `SELECT … FROM keel_streams WHERE stream_id IN (…n…) FOR UPDATE`: the rows of every stream of a batch.
std::string StreamsForUpdateSql(size_t n) {
    std::string sql(kStreamsForUpdatePrefix);
    for (size_t i = 0; i < n; ++i) sql += i == 0 ? "?" : ", ?";
    return sql + ") FOR UPDATE";
}

// The new versions of the streams a batch appended to, `n` rows in one upsert.
std::string UpsertVersionsSql(size_t n) {
    std::string sql = "INSERT INTO keel_streams (stream_id, version, state, custom_metadata, updated_at) VALUES ";
    for (size_t i = 0; i < n; ++i) sql += i == 0 ? "(?, ?, 0, '', ?)" : ", (?, ?, 0, '', ?)";
    return sql + " ON DUPLICATE KEY UPDATE version = VALUES(version), state = 0, updated_at = VALUES(updated_at)";
}

#undef KEEL_MYSQL_EVENT_COLUMNS

// Lists of parameters (IN lists, VALUES rows) are padded by repeating the last item to a power of two, so that few
// statement shapes get prepared and cached.
size_t PaddedSize(size_t n) {
    size_t p = n == 0 ? 0 : 1;
    while (p < n) p *= 2;
    return p;
}

// ---------------------------------------------------------------------------------------------------------------
// Rows

Result<RecordedEvent> DecodeEvent(const Stmt& st) {
    RecordedEvent e;
    e.global_position = st.Int(0);
    auto id = Uuid::FromBytes(st.Str(1));
    if (!id.ok()) {
        return Status::Corruption(fmt::format("event at global position {} has a malformed event_id: {}",
                                              e.global_position, id.status().message()));
    }
    e.event_id = *id;
    e.stream_id = std::string(st.Str(2));
    e.stream_version = st.Int(3);
    e.type = std::string(st.Str(4));
    e.data = std::string(st.Str(5));
    e.metadata = std::string(st.Str(6));
    e.recorded_at = st.Int(7);
    return e;
}

StreamInfo DecodeStream(const Stmt& st) {
    StreamInfo info;
    info.stream_id = std::string(st.Str(0));
    info.version = st.Int(1);
    info.state = static_cast<StreamState>(st.Int(2));
    info.metadata.max_count = st.OptInt(3);
    if (auto age = st.OptInt(4)) info.metadata.max_age = std::chrono::microseconds(*age);
    info.metadata.truncate_before = st.OptInt(5);
    info.metadata.custom = std::string(st.Str(6));
    info.updated_at = st.Int(7);
    return info;
}

Result<std::vector<RecordedEvent>> Collect(Stmt& st, size_t limit) {
    std::vector<RecordedEvent> out;
    if (limit != 0) out.reserve(std::min<size_t>(limit, 4096));
    for (;;) {
        auto row = st.Next();
        if (!row.ok()) return row.status();
        if (!*row) return out;
        auto e = DecodeEvent(st);
        if (!e.ok()) return e.status();
        out.push_back(std::move(*e));
    }
}

int64_t ToInt(const std::optional<std::string>& text) {
    int64_t value = 0;
    if (text) std::from_chars(text->data(), text->data() + text->size(), value);
    return value;
}

std::optional<int64_t> ToOptInt(const std::optional<std::string>& text) {
    return text ? std::optional<int64_t>(ToInt(text)) : std::nullopt;
}

// A keel_streams row read over the text protocol (the columns of KEEL_MYSQL_STREAM_COLUMNS).
StreamInfo DecodeStreamRow(const mysql::Row& row) {
    StreamInfo info;
    info.stream_id = row.at(0).value_or("");
    info.version = ToInt(row.at(1));
    info.state = static_cast<StreamState>(ToInt(row.at(2)));
    info.metadata.max_count = ToOptInt(row.at(3));
    if (auto age = ToOptInt(row.at(4))) info.metadata.max_age = std::chrono::microseconds(*age);
    info.metadata.truncate_before = ToOptInt(row.at(5));
    info.metadata.custom = row.at(6).value_or("");
    info.updated_at = ToInt(row.at(7));
    return info;
}

// The largest batch (as SQL text) the fast append path sends; far below MariaDB's default max_allowed_packet
// (16 MiB), so that a batch never makes the server drop the connection.
constexpr size_t kFastPathMaxBytes = 4 << 20;

Status Tombstoned(std::string_view stream) {
    return Status::StreamDeleted(fmt::format("stream '{}' was hard-deleted (tombstoned)", stream));
}

// Prepares (or finds) `sql` on `conn`, then executes it after `bind` bound its parameters.
template <class Bind>
Result<Stmt*> RunStmt(Conn& conn, std::string_view sql, std::string_view what, Bind&& bind) {
    auto st = conn.Prepared(sql);
    if (!st.ok()) return st.status().WithContext(what);
    bind(**st);
    KEEL_RETURN_IF_ERROR((*st)->Execute(what));
    return *st;
}

// Reads at most one row of an executed query: the decoded value, or nullopt when there is no row.
template <class Decode>
auto OneRow(Stmt& st, Decode&& decode) -> Result<std::optional<decltype(decode(st))>> {
    auto row = st.Next();
    if (!row.ok()) return row.status();
    if (!*row) return std::optional<decltype(decode(st))>();
    return std::optional<decltype(decode(st))>(decode(st));
}

// ---------------------------------------------------------------------------------------------------------------
// Reader connections

// A pool of reader connections. Run() lends one to a function; a connection found broken is dropped (with every
// idle one: they are most likely dead too, e.g. after a server restart) and the function runs once more on a fresh
// connection. Reads are idempotent, so that retry is always safe.
class ReaderPool {
public:
    explicit ReaderPool(const MysqlConfig& config) : config_(config) {}

    template <class F>
    auto Run(F&& fn) -> decltype(fn(std::declval<Conn&>())) {
        for (int attempt = 0;; ++attempt) {
            auto conn = Take();
            if (!conn.ok()) return conn.status();
            auto result = fn(**conn);
            if (!(*conn)->broken()) {
                Give(std::move(*conn));
                return result;
            }
            DropIdle();
            if (attempt > 0) return result;
        }
    }

private:
    Result<std::unique_ptr<Conn>> Take() {
        {
            std::lock_guard lock(mu_);
            if (!idle_.empty()) {
                auto c = std::move(idle_.back());
                idle_.pop_back();
                return c;
            }
        }
        return Conn::Open(config_);
    }

    void Give(std::unique_ptr<Conn> conn) {
        std::lock_guard lock(mu_);
        if (idle_.size() < kMaxIdle) idle_.push_back(std::move(conn));
    }

    void DropIdle() {
        std::vector<std::unique_ptr<Conn>> dropped;
        std::lock_guard lock(mu_);
        dropped.swap(idle_);
    }

    static constexpr size_t kMaxIdle = 8;
    const MysqlConfig& config_;
    std::mutex mu_;
    std::vector<std::unique_ptr<Conn>> idle_;
};

// ---------------------------------------------------------------------------------------------------------------
// The backend

class MysqlBackend final : public StoreBackend {
public:
    MysqlBackend(MysqlConfig config, std::unique_ptr<Conn> writer, const StoreOptions& options)
        : config_(std::move(config)),
          writer_(std::move(writer)),
          readers_(config_),
          retry_budget_(std::max<std::chrono::milliseconds>(options.busy_timeout, 1s)) {}

    void AppendBatch(std::span<AppendRequest* const> batch) override {
        if (batch.empty()) return;
        std::lock_guard lock(write_mu_);
        if (!sticky_.ok()) return FailAll(batch, sticky_);
        std::vector<char> maybe_committed(batch.size(), 0);
        const auto deadline = Clock::now() + retry_budget_;
        for (int attempt = 0;; ++attempt) {
            Status lost;
            if (TryAppendBatch(batch, maybe_committed, lost) == Attempt::kDone) {
                ClaimOwnWrites(batch, maybe_committed);
                return;
            }
            if (attempt + 1 >= kMaxAttempts || Clock::now() >= deadline) {
                return FailLost(batch, maybe_committed, lost);
            }
            std::this_thread::sleep_for(Backoff(attempt));
        }
    }

    Result<std::vector<RecordedEvent>> ReadStreamRange(std::string_view stream, const StreamRange& range) override {
        const bool forward = range.direction == ReadDirection::kForward;
        return readers_.Run([&](Conn& c) -> Result<std::vector<RecordedEvent>> {
            auto st = RunStmt(c, forward ? kStreamForwardSql : kStreamBackwardSql, "reading a stream", [&](Stmt& s) {
                s.BindText(0, stream).Bind(
                    1, forward ? std::max(range.from_version, range.min_version) : range.from_version);
                s.Bind(2, range.min_recorded_at).Bind(3, range.min_recorded_at);
                s.Bind(4, range.max_position).Bind(5, range.max_position);
                s.Bind(6, range.max_recorded_at).Bind(7, range.max_recorded_at);
                size_t next = 8;
                if (!forward) s.Bind(next++, range.min_version);
                s.Bind(next, range.limit == 0 ? kNoLimit : static_cast<int64_t>(range.limit));
            });
            if (!st.ok()) return st.status();
            return Collect(**st, range.limit);
        });
    }

    Result<ReadAllSlice> ReadAll(const ReadAllOptions& o) override {
        return readers_.Run([&](Conn& c) -> Result<ReadAllSlice> {
            // Appends are serialized, so every position up to the head seen here is committed (or never will be).
            auto head = QueryHead(c);
            if (!head.ok()) return head.status();
            const int64_t upper = o.as_of_position ? std::min(*head, *o.as_of_position) : *head;
            auto events = o.categories.empty() && o.types.empty() && !o.as_of_time ? ReadAllPlain(c, o, upper)
                                                                                   : ReadAllFiltered(c, o, upper);
            if (!events.ok()) return events.status();
            ReadAllSlice slice;
            slice.events = std::move(*events);
            const bool full = o.limit != 0 && slice.events.size() >= o.limit;
            slice.end_of_all = !full;
            slice.next_position = full ? slice.events.back().global_position + 1 : std::max(upper + 1, o.from_position);
            return slice;
        });
    }

    Result<int64_t> HeadPosition() override {
        return readers_.Run([&](Conn& c) { return QueryHead(c); });
    }

    Result<std::optional<StreamInfo>> GetStream(std::string_view stream) override {
        return readers_.Run([&](Conn& c) -> Result<std::optional<StreamInfo>> {
            auto st = RunStmt(c, kGetStreamSql, "reading stream info", [&](Stmt& s) { s.BindText(0, stream); });
            if (!st.ok()) return st.status();
            return OneRow(**st, DecodeStream);
        });
    }

    Result<std::vector<StreamInfo>> ListStreams(std::string_view after, size_t limit) override {
        return readers_.Run([&](Conn& c) -> Result<std::vector<StreamInfo>> {
            auto st = RunStmt(c, kListStreamsSql, "listing streams", [&](Stmt& s) {
                s.BindText(0, after).Bind(1, limit == 0 ? kNoLimit : static_cast<int64_t>(limit));
            });
            if (!st.ok()) return st.status();
            std::vector<StreamInfo> out;
            for (;;) {
                auto row = (*st)->Next();
                if (!row.ok()) return row.status();
                if (!*row) return out;
                out.push_back(DecodeStream(**st));
            }
        });
    }

    Status SetStreamMetadata(std::string_view stream, const StreamMetadata& m) override {
        return SequencedTxn("setting stream metadata", [&](Conn& c) -> Status {
            auto info = ReadStreamForUpdate(c, stream);
            if (!info.ok()) return info.status();
            if (info->has_value() && (*info)->state == StreamState::kTombstoned) return Tombstoned(stream);
            const std::optional<int64_t> age = m.max_age ? std::optional<int64_t>(m.max_age->count()) : std::nullopt;
            return RunStmt(c, kSetMetadataSql, "writing stream metadata",
                           [&](Stmt& s) {
                               s.BindText(0, stream).Bind(1, m.max_count).Bind(2, age).Bind(3, m.truncate_before);
                               s.BindText(4, m.custom).Bind(5, NowMicros());
                           })
                .status();
        });
    }

    Status DeleteStream(std::string_view stream, ExpectedVersion expected, DeleteMode mode) override {
        return SequencedTxn("deleting a stream", [&](Conn& c) -> Status {
            auto info = ReadStreamForUpdate(c, stream);
            if (!info.ok()) return info.status();
            const StreamInfo* current = info->has_value() ? &**info : nullptr;
            KEEL_RETURN_IF_ERROR(CheckExpected(stream, expected, current));
            if (mode == DeleteMode::kHard) {
                return RunStmt(c, kTombstoneSql, "tombstoning a stream",
                               [&](Stmt& s) { s.BindText(0, stream).Bind(1, NowMicros()); })
                    .status();
            }
            if (EffectiveVersion(current) < 0) {
                return Status::NotFound(fmt::format("stream '{}' does not exist; nothing to delete", stream));
            }
            return RunStmt(c, kSoftDeleteSql, "soft-deleting a stream",
                           [&](Stmt& s) { s.Bind(0, NowMicros()).BindText(1, stream); })
                .status();
        });
    }

    Status SaveSnapshot(const Snapshot& snap) override {
        return IdempotentWrite("saving a snapshot", [&](Conn& c) {
            return RunStmt(c, kSaveSnapshotSql, "writing a snapshot",
                           [&](Stmt& s) {
                               s.BindText(0, snap.stream_id).Bind(1, snap.version).BindText(2, snap.type);
                               s.BindBlob(3, snap.data).Bind(4, NowMicros());
                           })
                .status();
        });
    }

    Result<std::optional<Snapshot>> LoadSnapshot(std::string_view stream) override {
        return readers_.Run([&](Conn& c) -> Result<std::optional<Snapshot>> {
            auto st = RunStmt(c, kLoadSnapshotSql, "reading a snapshot", [&](Stmt& s) { s.BindText(0, stream); });
            if (!st.ok()) return st.status();
            return OneRow(**st, [](const Stmt& s) {
                return Snapshot{std::string(s.Str(0)), s.Int(1), std::string(s.Str(2)), std::string(s.Str(3)),
                                s.Int(4)};
            });
        });
    }

    Result<std::optional<int64_t>> LoadCheckpoint(std::string_view name) override {
        return readers_.Run([&](Conn& c) -> Result<std::optional<int64_t>> {
            auto st = RunStmt(c, kLoadCheckpointSql, "reading a checkpoint", [&](Stmt& s) { s.BindText(0, name); });
            if (!st.ok()) return st.status();
            return OneRow(**st, [](const Stmt& s) { return s.Int(0); });
        });
    }

    Status SaveCheckpoint(std::string_view name, int64_t position) override {
        return IdempotentWrite("saving a checkpoint", [&](Conn& c) {
            return RunStmt(c, kSaveCheckpointSql, "writing a checkpoint",
                           [&](Stmt& s) { s.BindText(0, name).Bind(1, position).Bind(2, NowMicros()); })
                .status();
        });
    }

    Result<StoreStats> Stats() override {
        return readers_.Run([&](Conn& c) -> Result<StoreStats> {
            StoreStats st;
            st.backend = "mysql";
            st.location = config_.Where();
            auto counts = c.Query(
                "SELECT (SELECT COUNT(*) FROM keel_events), (SELECT COUNT(*) FROM keel_streams), "
                "(SELECT COALESCE(MAX(global_position), 0) FROM keel_events), "
                "(SELECT CAST(COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) AS SIGNED) FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'keel\\_%')",
                "counting events and streams");
            if (!counts.ok()) return counts.status();
            const mysql::Row& row = counts->at(0);
            st.events = ToInt(row[0]);
            st.streams = ToInt(row[1]);
            st.head_position = ToInt(row[2]);
            st.size_bytes = ToInt(row[3]);
            auto cps =
                c.Query("SELECT name, position, updated_at FROM keel_checkpoints ORDER BY name", "listing checkpoints");
            if (!cps.ok()) return cps.status();
            for (const mysql::Row& r : *cps) {
                st.checkpoints.push_back(CheckpointInfo{r[0].value_or(""), ToInt(r[1]), ToInt(r[2])});
            }
            return st;
        });
    }

    // Units of work and the outbox relay's side: mysql_uow.cpp.
    Result<std::unique_ptr<TransactionBackend>> BeginTransaction() override { return units_.Begin(); }
    Result<bool> AcquireLease(std::string_view n, std::string_view o, int64_t now, int64_t until) override {
        return units_.AcquireLease(n, o, now, until);
    }
    Status ReleaseLease(std::string_view n, std::string_view o) override { return units_.ReleaseLease(n, o); }
    Result<std::vector<OutboxRow>> PendingOutbox(size_t limit) override { return units_.PendingOutbox(limit); }
    Status MarkPublished(std::string_view l, std::string_view o, std::span<const int64_t> p, int64_t now) override {
        return units_.MarkPublished(l, o, p, now);
    }
    Result<int64_t> RepublishOutbox(int64_t from) override { return units_.RepublishOutbox(from); }
    Result<int64_t> PurgeOutbox(int64_t before) override { return units_.PurgeOutbox(before); }
    Result<OutboxStats> GetOutboxStats() override { return units_.GetOutboxStats(); }

    void SetHooks(MysqlTestHooks hooks) {
        std::lock_guard lock(write_mu_);
        hooks_ = std::move(hooks);
    }

private:
    enum class Attempt : uint8_t { kDone, kConnectionLost };
    static constexpr int kMaxAttempts = 50;

    static void FailAll(std::span<AppendRequest* const> batch, const Status& s) {
        for (AppendRequest* r : batch) r->result = s;
    }

    static std::chrono::milliseconds Backoff(int attempt) {
        if (attempt == 0) return 0ms;  // a killed connection usually leaves a healthy server: reconnect at once
        return std::min<std::chrono::milliseconds>(25ms * (1 << std::min(attempt, 5)), 500ms);
    }

    // After a retry, an append that an earlier attempt had sent COMMIT for and that now reads as an idempotent
    // re-send was in fact written by that attempt: the caller gets it as a new append, not as already_present.
    static void ClaimOwnWrites(std::span<AppendRequest* const> batch, const std::vector<char>& maybe_committed) {
        for (size_t i = 0; i < batch.size(); ++i) {
            if (maybe_committed[i] != 0 && batch[i]->result.ok()) batch[i]->result->already_present = false;
        }
    }

    void FailLost(std::span<AppendRequest* const> batch, const std::vector<char>& maybe_committed, const Status& lost) {
        for (size_t i = 0; i < batch.size(); ++i) {
            batch[i]->result = Status::Unavailable(
                maybe_committed[i] != 0
                    ? fmt::format("the connection was lost while committing, so the append may or may not be stored; "
                                  "retrying it with the same event ids is safe (they make it idempotent): {}",
                                  lost.message())
                    : fmt::format("nothing was written: {}", lost.message()));
        }
    }

    // The writer connection, reopened when it was lost.
    Result<Conn*> Writer() {
        if (writer_ && !writer_->broken()) return writer_.get();
        writer_.reset();
        auto c = Conn::Open(config_);
        if (!c.ok()) return c.status();
        writer_ = std::move(*c);
        return writer_.get();
    }

    static void Rollback(Conn& c) {
        if (!c.broken()) (void)c.Exec("ROLLBACK", "rolling back");
    }

    // Starts a write transaction and takes the sequencer lock: from here until COMMIT this connection is the only
    // keel writer of the database, in every process.
    static Status BeginSequenced(Conn& c) {
        KEEL_RETURN_IF_ERROR(c.Exec("START TRANSACTION", "starting a write transaction"));
        auto st = RunStmt(c, kLockSequencerSql, "waiting for the append sequencer lock", [](Stmt&) {});
        if (!st.ok()) return st.status();
        auto row = (*st)->Next();
        if (!row.ok()) return row.status();
        if (!*row) {
            return Status::Corruption(fmt::format(
                "{}: keel_sequencer has no row with id 1, so appends cannot be serialized; restore it with INSERT "
                "INTO keel_sequencer (id) VALUES (1)",
                c.where()));
        }
        return Status::Ok();
    }

    // BeginSequenced, then the commit time of this transaction: now, but never before the last recorded event.
    static Result<int64_t> BeginAppend(Conn& c) {
        KEEL_RETURN_IF_ERROR(BeginSequenced(c));
        auto st = RunStmt(c, kLastRecordedSql, "reading the last recorded_at", [](Stmt&) {});
        if (!st.ok()) return st.status();
        auto last = OneRow(**st, [](const Stmt& s) { return s.Int(0); });
        if (!last.ok()) return last.status();
        return std::max(NowMicros(), last->value_or(0));
    }

    // A failure that ends the attempt: a lost connection is retried by the caller; any other error (lock wait
    // timeout, deadlock) fails every request of the batch.
    static Attempt Abort(Conn& c, std::span<AppendRequest* const> batch, const Status& s, Status& lost) {
        if (c.broken()) {
            lost = s;
            return Attempt::kConnectionLost;
        }
        Rollback(c);
        FailAll(batch, s);
        return Attempt::kDone;
    }

    // Errors after which the transaction cannot go on (InnoDB rolled back the statement or the whole transaction).
    static bool EndsTransaction(const Conn& c) {
        return c.broken() || c.last_error() == ER_LOCK_WAIT_TIMEOUT || c.last_error() == ER_LOCK_DEADLOCK;
    }

    using StreamRows = std::map<std::string, std::optional<StreamInfo>, std::less<>>;

    // One attempt at the whole batch in one transaction. kConnectionLost: the results are meaningless and `lost`
    // says why; requests whose COMMIT was sent are flagged in `maybe_committed`.
    //
    // Round trips are what a batch costs. The usual batch takes two, whatever its size (FastAppend): one
    // multi-statement that starts the transaction, takes the sequencer, reads the last recorded_at and locks the
    // stream rows of the batch; then, each request checked in memory against those rows as the requests before it
    // left them, one multi-statement with a multi-row INSERT of every accepted event, one upsert of the stream
    // versions and COMMIT. A batch the fast path cannot take (text that is not UTF-8, a very large batch) or whose
    // INSERT fails (an event id stored already, a value the column refuses) goes request by request (AppendEach).
    Attempt TryAppendBatch(std::span<AppendRequest* const> batch, std::vector<char>& maybe_committed, Status& lost) {
        auto w = Writer();
        if (!w.ok()) {
            lost = w.status();
            if (w.status().code() == StatusCode::kUnavailable) return Attempt::kConnectionLost;
            FailAll(batch, w.status());
            return Attempt::kDone;
        }
        Conn& c = **w;
        if (FastPathFits(batch)) return FastAppend(c, batch, maybe_committed, lost);
        auto now = BeginAppend(c);
        if (!now.ok()) return Abort(c, batch, now.status(), lost);
        auto streams = LockStreams(c, batch);
        if (!streams.ok()) return Abort(c, batch, streams.status(), lost);
        return AppendEach(c, batch, std::move(*streams), *now, maybe_committed, lost);
    }

    // Request by request inside the open transaction (sequencer and stream rows locked, `streams` as read). A
    // request of one event needs no savepoint: its INSERT either happens or fails as a whole; a request of several
    // events gets one, and a failure after its first row rolls back to it. Then one upsert of the stream versions
    // and COMMIT.
    Attempt AppendEach(Conn& c, std::span<AppendRequest* const> batch, StreamRows streams, int64_t now,
                       std::vector<char>& maybe_committed, Status& lost) {
        std::vector<std::string_view> touched;
        for (AppendRequest* r : batch) {
            std::optional<StreamInfo>& info = streams.find(r->stream)->second;
            const bool savepoint = r->events.size() > 1;
            if (savepoint) {
                if (Status s = c.Exec("SAVEPOINT keel_append", "setting a savepoint"); !s.ok()) {
                    return Abort(c, batch, s, lost);
                }
            }
            bool wrote = false;
            r->result = AppendOne(c, *r, info ? &*info : nullptr, now, wrote);
            if (!r->result.ok() && EndsTransaction(c)) return Abort(c, batch, r->result.status(), lost);
            if (!r->result.ok() && wrote) {
                if (Status s = c.Exec("ROLLBACK TO SAVEPOINT keel_append", "rolling back"); !s.ok()) {
                    return Abort(c, batch, s, lost);
                }
            }
            if (r->result.ok() && !r->result->already_present) {
                Advance(info, r->stream, r->result->next_expected_version, now);
                if (std::find(touched.begin(), touched.end(), r->stream) == touched.end()) touched.push_back(r->stream);
            }
        }
        if (touched.empty()) {
            Rollback(c);  // nothing to make durable
            return Attempt::kDone;
        }
        if (Status s = UpsertVersions(c, touched, streams, now); !s.ok()) return Abort(c, batch, s, lost);
        return Commit(c, batch, maybe_committed, lost);
    }

    // The fast path writes the batch's values as SQL literals: only text that is valid UTF-8 (anything else must be
    // refused per request, as the prepared path does), and only up to a size far below max_allowed_packet.
    static bool FastPathFits(std::span<AppendRequest* const> batch) {
        size_t bytes = 0;
        for (const AppendRequest* r : batch) {
            if (!IsUtf8(r->stream)) return false;
            bytes += 2 * r->stream.size() + 64;
            for (const EventData& e : r->events) {
                if (!IsUtf8(e.type) || !IsUtf8(e.metadata)) return false;
                bytes += 2 * (r->stream.size() + e.type.size() + e.data.size() + e.metadata.size()) + 128;
            }
        }
        return bytes <= kFastPathMaxBytes;
    }

    static bool IsUtf8(std::string_view s) {
        size_t i = 0;
        const size_t n = s.size();
        while (i < n) {
            const auto c = static_cast<unsigned char>(s[i]);
            if (c < 0x80) {
                ++i;
                continue;
            }
            size_t len = 0;
            uint32_t cp = 0;
            if ((c & 0xE0) == 0xC0) {
                len = 2;
                cp = c & 0x1F;
            } else if ((c & 0xF0) == 0xE0) {
                len = 3;
                cp = c & 0x0F;
            } else if ((c & 0xF8) == 0xF0) {
                len = 4;
                cp = c & 0x07;
            } else {
                return false;
            }
            if (i + len > n) return false;
            for (size_t k = 1; k < len; ++k) {
                const auto d = static_cast<unsigned char>(s[i + k]);
                if ((d & 0xC0) != 0x80) return false;
                cp = (cp << 6) | (d & 0x3F);
            }
            if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
                (cp >= 0xD800 && cp <= 0xDFFF)) {
                return false;
            }
            i += len;
        }
        return true;
    }

    // Round trip 1: START TRANSACTION, the sequencer, the commit time (now, but never before the last recorded
    // event), the stream rows of the batch locked. Round trip 2: the events, the stream versions and COMMIT (the
    // server runs no statement after one that failed, so a failed INSERT leaves the transaction open).
    Attempt FastAppend(Conn& c, std::span<AppendRequest* const> batch, std::vector<char>& maybe_committed,
                       Status& lost) {
        if (Status s = c.EnableMultiStatements(); !s.ok()) return Abort(c, batch, s, lost);
        StreamRows streams;
        std::string sql =
            "START TRANSACTION; SELECT id, @@auto_increment_increment FROM keel_sequencer WHERE id = 1 FOR UPDATE; "
            "SELECT recorded_at FROM keel_events ORDER BY global_position DESC LIMIT 1; "
            "SELECT " KEEL_MYSQL_STREAM_COLUMNS " FROM keel_streams WHERE stream_id IN (";
        for (const AppendRequest* r : batch) {
            if (!streams.try_emplace(std::string(r->stream)).second) continue;
            if (streams.size() > 1) sql += ", ";
            mysql::AppendQuoted(c.get(), sql, r->stream);
        }
        sql += ") FOR UPDATE";
        auto begun = c.MultiQuery(sql, "starting an append transaction");
        if (!begun.ok()) return Abort(c, batch, begun.status(), lost);
        if (begun->size() != 4 || (*begun)[1].rows.empty()) {
            Rollback(c);
            FailAll(batch, Status::Corruption(fmt::format(
                               "{}: keel_sequencer has no row with id 1, so appends cannot be serialized; restore it "
                               "with INSERT INTO keel_sequencer (id) VALUES (1)",
                               c.where())));
            return Attempt::kDone;
        }
        const int64_t increment = std::max<int64_t>(ToInt((*begun)[1].rows[0].at(1)), 1);
        const int64_t now =
            std::max(NowMicros(), (*begun)[2].rows.empty() ? int64_t{0} : ToInt((*begun)[2].rows[0].at(0)));
        for (const mysql::Row& row : (*begun)[3].rows) {
            StreamInfo info = DecodeStreamRow(row);
            streams[info.stream_id] = std::move(info);
        }
        const StreamRows as_read = streams;

        // Check each request against the rows as the requests before it left them.
        std::vector<int64_t> first_version(batch.size(), -1);  // -1: not written by the fast path
        std::vector<std::string_view> touched;
        size_t rows = 0;
        for (size_t i = 0; i < batch.size(); ++i) {
            AppendRequest& r = *batch[i];
            std::optional<StreamInfo>& info = streams.find(r.stream)->second;
            const StreamInfo* current = info ? &*info : nullptr;
            if (Status s = CheckExpected(r.stream, r.expected, current); !s.ok()) {
                if (s.code() == StatusCode::kWrongExpectedVersion) {
                    auto replay = MatchStoredAppend(r.stream, r.expected, r.events,
                                                    [&c](const Uuid& id) { return LookupEventId(c, id); });
                    if (!replay.ok() && EndsTransaction(c)) return Abort(c, batch, replay.status(), lost);
                    if (!replay.ok()) {
                        r.result = replay.status();
                    } else if (replay->has_value()) {
                        r.result = **replay;
                    } else {
                        r.result = s;
                    }
                } else {
                    r.result = s;
                }
                continue;
            }
            const int64_t version = current != nullptr ? current->version : -1;
            first_version[i] = version + 1;
            rows += r.events.size();
            Advance(info, r.stream, version + static_cast<int64_t>(r.events.size()), now);
            if (std::find(touched.begin(), touched.end(), r.stream) == touched.end()) touched.push_back(r.stream);
        }
        if (touched.empty()) {
            Rollback(c);  // nothing to make durable
            return Attempt::kDone;
        }

        sql =
            "INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at) VALUES ";
        const std::string now_text = std::to_string(now);
        bool first_row = true;
        for (size_t i = 0; i < batch.size(); ++i) {
            if (first_version[i] < 0) continue;
            const AppendRequest& r = *batch[i];
            int64_t version = first_version[i];
            for (const EventData& e : r.events) {
                sql += first_row ? "(" : ", (";
                first_row = false;
                mysql::AppendHex(sql, e.event_id.bytes_view());
                sql += ", ";
                mysql::AppendQuoted(c.get(), sql, r.stream);
                sql += ", " + std::to_string(version++) + ", ";
                mysql::AppendQuoted(c.get(), sql, e.type);
                sql += ", ";
                mysql::AppendHex(sql, e.data);
                sql += ", ";
                mysql::AppendQuoted(c.get(), sql, e.metadata);
                sql += ", " + now_text + ")";
            }
        }
        sql += "; INSERT INTO keel_streams (stream_id, version, state, custom_metadata, updated_at) VALUES ";
        for (size_t i = 0; i < touched.size(); ++i) {
            sql += i == 0 ? "(" : ", (";
            mysql::AppendQuoted(c.get(), sql, touched[i]);
            sql += ", " + std::to_string(streams.find(touched[i])->second->version) + ", 0, '', " + now_text + ")";
        }
        sql += " ON DUPLICATE KEY UPDATE version = VALUES(version), state = 0, updated_at = VALUES(updated_at); COMMIT";
        size_t failed = 0;
        auto written = c.MultiQuery(sql, "inserting and committing events", &failed, hooks_.after_commit_sent);
        if (!written.ok()) {
            if (c.broken()) {
                // COMMIT may have run: the retry finds out through the event ids.
                for (size_t i = 0; i < batch.size(); ++i) {
                    if (first_version[i] >= 0) maybe_committed[i] = 1;
                }
                lost = written.status();
                return Attempt::kConnectionLost;
            }
            if (failed == 0 && !EndsTransaction(c)) {
                // The INSERT wrote nothing (a statement fails as a whole) and the transaction is still open: go
                // request by request, from the rows as read.
                for (AppendRequest* r : batch) r->result = Status::Internal("append not processed");
                return AppendEach(c, batch, as_read, now, maybe_committed, lost);
            }
            Rollback(c);
            if (failed == 2 && written.status().code() != StatusCode::kUnavailable) {
                sticky_ = Status::FailedPrecondition(
                    fmt::format("an earlier commit failed ({}); the store refuses writes until it is reopened",
                                written.status().message()));
            }
            for (size_t i = 0; i < batch.size(); ++i) {
                if (first_version[i] >= 0 || failed < 2) batch[i]->result = written.status();
            }
            return Attempt::kDone;
        }
        const mysql::Conn::StatementResult& inserted = (*written)[0];
        if (written->size() != 3 || inserted.affected_rows != rows || inserted.insert_id == 0) {
            // Committed, but not as expected: this is not the schema keel made.
            sticky_ = Status::Corruption(fmt::format(
                "{}: the multi-row INSERT of {} events reported {} rows from position {}; the store refuses writes "
                "until it is reopened",
                c.where(), rows, inserted.affected_rows, inserted.insert_id));
            FailAll(batch, sticky_);
            return Attempt::kDone;
        }
        int64_t position = static_cast<int64_t>(inserted.insert_id);
        for (size_t i = 0; i < batch.size(); ++i) {
            if (first_version[i] < 0) continue;
            const auto n = static_cast<int64_t>(batch[i]->events.size());
            AppendResult result;
            result.first_position = position;
            result.last_position = position + (n - 1) * increment;
            result.next_expected_version = first_version[i] + n - 1;
            position += n * increment;
            batch[i]->result = result;
        }
        return Attempt::kDone;
    }

    // Locks and reads the keel_streams rows of every stream in the batch (nullopt: no row yet).
    static Result<StreamRows> LockStreams(Conn& c, std::span<AppendRequest* const> batch) {
        StreamRows rows;
        std::vector<std::string_view> names;
        for (AppendRequest* r : batch) {
            if (rows.try_emplace(std::string(r->stream)).second) names.push_back(r->stream);
        }
        const size_t n = PaddedSize(names.size());
        auto st = RunStmt(c, StreamsForUpdateSql(n), "locking the streams of the batch", [&](Stmt& s) {
            for (size_t i = 0; i < n; ++i) s.BindText(i, names[std::min(i, names.size() - 1)]);
        });
        if (!st.ok()) return st.status();
        for (;;) {
            auto row = (*st)->Next();
            if (!row.ok()) return row.status();
            if (!*row) return rows;
            StreamInfo info = DecodeStream(**st);
            rows[info.stream_id] = std::move(info);
        }
    }

    // What a successful append does to its stream's row (the upsert written before COMMIT).
    static void Advance(std::optional<StreamInfo>& info, std::string_view stream, int64_t version, int64_t now) {
        if (!info) {
            info.emplace();
            info->stream_id = std::string(stream);
        }
        info->version = version;
        info->state = StreamState::kActive;
        info->updated_at = now;
    }

    static Status UpsertVersions(Conn& c, const std::vector<std::string_view>& touched, const StreamRows& rows,
                                 int64_t now) {
        const size_t n = PaddedSize(touched.size());
        return RunStmt(c, UpsertVersionsSql(n), "updating the stream versions",
                       [&](Stmt& s) {
                           for (size_t i = 0; i < n; ++i) {
                               const std::string_view stream = touched[std::min(i, touched.size() - 1)];
                               s.BindText(3 * i, stream).Bind(3 * i + 1, rows.find(stream)->second->version);
                               s.Bind(3 * i + 2, now);
                           }
                       })
            .status();
    }

    Attempt Commit(Conn& c, std::span<AppendRequest* const> batch, std::vector<char>& maybe_committed, Status& lost) {
        std::vector<size_t> written;
        for (size_t i = 0; i < batch.size(); ++i) {
            if (batch[i]->result.ok() && !batch[i]->result->already_present) written.push_back(i);
        }
        Status s = c.ExecWithHook("COMMIT", "committing appended events", hooks_.after_commit_sent);
        if (s.ok()) return Attempt::kDone;
        if (c.broken()) {
            for (size_t i : written) maybe_committed[i] = 1;
            lost = s;
            return Attempt::kConnectionLost;
        }
        Rollback(c);
        if (s.code() != StatusCode::kUnavailable) {
            sticky_ = Status::FailedPrecondition(fmt::format(
                "an earlier commit failed ({}); the store refuses writes until it is reopened", s.message()));
        }
        for (size_t i : written) batch[i]->result = s;
        return Attempt::kDone;
    }

    static Result<std::optional<StreamInfo>> ReadStreamForUpdate(Conn& c, std::string_view stream) {
        auto st = RunStmt(c, kStreamForUpdateSql, "reading stream info", [&](Stmt& s) { s.BindText(0, stream); });
        if (!st.ok()) return st.status();
        return OneRow(**st, DecodeStream);
    }

    static Result<std::optional<StoredEventRef>> LookupEventId(Conn& c, const Uuid& id) {
        auto st = RunStmt(c, kLookupIdSql, "looking up an event id", [&](Stmt& s) { s.BindBlob(0, id.bytes_view()); });
        if (!st.ok()) return st.status();
        return OneRow(**st, [](const Stmt& s) {
            return StoredEventRef{s.Int(0),
                                  std::string(s.Str(1)),
                                  s.Int(2),
                                  std::string(s.Str(3)),
                                  std::string(s.Str(4)),
                                  std::string(s.Str(5))};
        });
    }

    static bool IsDuplicateEventId(const Conn& c, const Status& s) {
        return c.last_error() == ER_DUP_ENTRY && s.message().find("keel_events_event_id") != std::string::npos;
    }

    // One append inside the open transaction, checked against `current` (the stream's row as the requests
    // before it left it; null: no row). Mirrors the sqlite backend's AppendOne, except that the stream's new
    // version is written by the caller for the whole batch. Sets `wrote` when rows of this request remain written
    // after a failure (then a savepoint exists and the caller rolls back to it).
    static Result<AppendResult> AppendOne(Conn& c, const AppendRequest& r, const StreamInfo* current, int64_t now,
                                          bool& wrote) {
        auto lookup = [&c](const Uuid& id) { return LookupEventId(c, id); };
        if (Status s = CheckExpected(r.stream, r.expected, current); !s.ok()) {
            if (s.code() == StatusCode::kWrongExpectedVersion) {
                auto replay = MatchStoredAppend(r.stream, r.expected, r.events, lookup);
                if (!replay.ok()) return replay.status();
                if (replay->has_value()) return **replay;
            }
            return s;
        }
        int64_t version = current != nullptr ? current->version : -1;
        AppendResult result;
        for (const EventData& e : r.events) {
            ++version;
            auto st = RunStmt(c, kInsertEventSql, "inserting an event", [&](Stmt& s) {
                s.BindBlob(0, e.event_id.bytes_view()).BindText(1, r.stream).Bind(2, version);
                s.BindText(3, e.type).BindBlob(4, e.data).BindText(5, e.metadata).Bind(6, now);
            });
            if (!st.ok()) return InsertFailed(c, r, st.status(), version, wrote);
            wrote = true;
            const auto pos = static_cast<int64_t>((*st)->InsertId());
            if (result.first_position == 0) result.first_position = pos;
            result.last_position = pos;
        }
        wrote = false;  // complete: nothing to undo
        result.next_expected_version = version;
        return result;
    }

    // An INSERT of AppendOne failed (the statement itself left nothing).
    static Result<AppendResult> InsertFailed(Conn& c, const AppendRequest& r, const Status& s, int64_t version,
                                             bool& wrote) {
        if (IsDuplicateEventId(c, s)) {
            // An event id is stored already: an idempotent re-send, or a misuse of the id. Undo this request's
            // rows first, so that the lookups see only what was stored before.
            if (wrote) {
                KEEL_RETURN_IF_ERROR(c.Exec("ROLLBACK TO SAVEPOINT keel_append", "rolling back"));
                wrote = false;
            }
            auto replay = MatchStoredAppend(r.stream, r.expected, r.events,
                                            [&c](const Uuid& id) { return LookupEventId(c, id); });
            if (!replay.ok()) return replay.status();
            if (replay->has_value()) return **replay;
            return s;
        }
        if (c.last_error() == ER_DUP_ENTRY) {
            return Status::Corruption(fmt::format(
                "keel_events already holds version {} of stream '{}' although keel_streams says its version is {} "
                "({})",
                version, r.stream, version - 1, s.message()));
        }
        return s;
    }

    // Runs `body` in a transaction holding the sequencer lock (stream metadata and deletes change keel_streams,
    // which appends read). A connection lost before COMMIT is retried once on a new connection; one lost during
    // COMMIT is reported (kUnavailable), as its outcome is unknown.
    template <class F>
    Status SequencedTxn(std::string_view what, F&& body) {
        std::lock_guard lock(write_mu_);
        if (!sticky_.ok()) return sticky_;
        for (int attempt = 0;; ++attempt) {
            auto w = Writer();
            if (!w.ok()) return w.status().WithContext(what);
            Conn& c = **w;
            Status s = BeginSequenced(c);
            if (s.ok()) s = body(c);
            if (!s.ok()) {
                if (c.broken() && attempt == 0) continue;
                Rollback(c);
                return s;
            }
            s = c.Exec("COMMIT", what);
            if (!s.ok() && !c.broken()) Rollback(c);
            return s;
        }
    }

    // Runs `body` (one autocommit upsert, safe to repeat) and repeats it once on a new connection if the first
    // connection was lost.
    template <class F>
    Status IdempotentWrite(std::string_view what, F&& body) {
        std::lock_guard lock(write_mu_);
        if (!sticky_.ok()) return sticky_;
        for (int attempt = 0;; ++attempt) {
            auto w = Writer();
            if (!w.ok()) return w.status().WithContext(what);
            Status s = body(**w);
            if (s.ok() || !(*w)->broken() || attempt > 0) return s;
        }
    }

    static Result<int64_t> QueryHead(Conn& c) {
        auto st = RunStmt(c, kHeadSql, "reading the head position", [](Stmt&) {});
        if (!st.ok()) return st.status();
        auto head = OneRow(**st, [](const Stmt& s) { return s.Int(0); });
        if (!head.ok()) return head.status();
        return head->value_or(0);
    }

    static Result<std::vector<RecordedEvent>> ReadAllPlain(Conn& c, const ReadAllOptions& o, int64_t upper) {
        auto st = RunStmt(c, kAllPlainSql, "reading $all", [&](Stmt& s) {
            s.Bind(0, o.from_position).Bind(1, upper);
            s.Bind(2, o.limit == 0 ? kNoLimit : static_cast<int64_t>(o.limit));
        });
        if (!st.ok()) return st.status();
        return Collect(**st, o.limit);
    }

    static Result<std::vector<RecordedEvent>> ReadAllFiltered(Conn& c, const ReadAllOptions& o, int64_t upper) {
        const size_t categories = PaddedSize(o.categories.size());
        const size_t types = PaddedSize(o.types.size());
        auto st = RunStmt(c, FilteredAllSql(categories, types), "reading $all (filtered)", [&](Stmt& s) {
            s.Bind(0, o.from_position).Bind(1, upper).Bind(2, o.as_of_time).Bind(3, o.as_of_time);
            size_t p = 4;
            for (size_t i = 0; i < categories; ++i) s.BindText(p++, o.categories[std::min(i, o.categories.size() - 1)]);
            for (size_t i = 0; i < types; ++i) s.BindText(p++, o.types[std::min(i, o.types.size() - 1)]);
            s.Bind(p, o.limit == 0 ? kNoLimit : static_cast<int64_t>(o.limit));
        });
        if (!st.ok()) return st.status();
        return Collect(**st, o.limit);
    }

    MysqlConfig config_;
    std::mutex write_mu_;  // the writer connection, sticky_ and hooks_
    std::unique_ptr<Conn> writer_;
    ReaderPool readers_;
    std::chrono::milliseconds retry_budget_;
    Status sticky_;
    MysqlTestHooks hooks_;
    MysqlUnitsOfWork units_{config_};
};

// ---------------------------------------------------------------------------------------------------------------
// Opening: settings checks and schema migration

Status CheckDurability(Conn& c, const MysqlConfig& config) {
    auto rows = c.Query("SELECT @@innodb_flush_log_at_trx_commit", "reading innodb_flush_log_at_trx_commit");
    if (!rows.ok()) return rows.status();
    const std::string value = rows->empty() ? "" : rows->front().at(0).value_or("");
    return mysql::CheckFlushSetting(config.durability, value, config.Where());
}

// Refuses any keel table that is not InnoDB; returns the keel tables that exist.
Result<std::vector<std::string>> CheckEngines(Conn& c) {
    std::string list;
    for (std::string_view t : mysql_schema::kTables) list += fmt::format("{}'{}'", list.empty() ? "" : ", ", t);
    auto rows = c.Query(fmt::format("SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES "
                                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({}) ORDER BY TABLE_NAME",
                                    list),
                        "reading the storage engines of the keel tables");
    if (!rows.ok()) return rows.status();
    std::vector<std::string> present;
    for (const mysql::Row& row : *rows) {
        const std::string name = row.at(0).value_or("");
        KEEL_RETURN_IF_ERROR(mysql::CheckEngine(name, row.at(1).value_or(""), c.where()));
        present.push_back(name);
    }
    return present;
}

bool Contains(const std::vector<std::string>& names, std::string_view name) {
    return std::find(names.begin(), names.end(), name) != names.end();
}

Status RunStatements(Conn& c, std::string_view script, std::string_view what) {
    while (!script.empty()) {
        const size_t end = script.find(";\n");
        std::string_view sql = script.substr(0, end);
        script = end == std::string_view::npos ? std::string_view() : script.substr(end + 2);
        if (sql.find_first_not_of(" \n") == std::string_view::npos) continue;
        KEEL_RETURN_IF_ERROR(c.Exec(sql, what));
    }
    return Status::Ok();
}

Result<int64_t> StoredSchemaVersion(Conn& c) {
    auto rows = c.Query("SELECT version FROM keel_schema WHERE component = 'event_store'", "reading keel_schema");
    if (!rows.ok()) return rows.status();
    return rows->empty() ? int64_t{0} : ToInt(rows->front().at(0));
}

// Brings the schema to kMysqlSchemaVersion. Called with the migration lock held.
Status MigrateLocked(Conn& c, bool create_if_missing) {
    auto present = CheckEngines(c);  // before anything is created: a refused database stays as it was
    if (!present.ok()) return present.status();
    int64_t version = 0;
    if (!Contains(*present, "keel_schema")) {
        if (Contains(*present, "keel_events")) {
            return Status::Corruption(fmt::format(
                "{}: not a keel store: the database has a keel_events table but no keel_schema table", c.where()));
        }
        if (!create_if_missing) {
            return Status::NotFound(fmt::format(
                "{}: no keel store in this database (no keel_schema table) and create_if_missing is off", c.where()));
        }
        KEEL_RETURN_IF_ERROR(c.Exec(mysql_schema::kCreateSchemaTable, "creating keel_schema"));
    } else {
        auto v = StoredSchemaVersion(c);
        if (!v.ok()) return v.status();
        version = *v;
    }
    if (version > kMysqlSchemaVersion) {
        return Status::NotSupported(
            fmt::format("{} has event-store schema version {}, newer than this keel build supports ({}); upgrade keel",
                        c.where(), version, kMysqlSchemaVersion));
    }
    for (int64_t v = version; v < kMysqlSchemaVersion; ++v) {
        KEEL_RETURN_IF_ERROR(RunStatements(c, mysql_schema::kMigrations[static_cast<size_t>(v)],
                                           fmt::format("migrating schema {} -> {}", v, v + 1)));
    }
    if (version != kMysqlSchemaVersion) {
        KEEL_RETURN_IF_ERROR(c.Exec(
            fmt::format("INSERT INTO keel_schema (component, version, updated_at) VALUES ('event_store', {}, {}) "
                        "ON DUPLICATE KEY UPDATE version = VALUES(version), updated_at = VALUES(updated_at)",
                        kMysqlSchemaVersion, NowMicros()),
            "recording the schema version"));
    }
    auto after = CheckEngines(c);  // the tables that existed before were kept as they were
    if (!after.ok()) return after.status();
    for (std::string_view t : mysql_schema::kTables) {
        if (!Contains(*after, t)) {
            return Status::Corruption(fmt::format("{}: keel table {} is missing after migration", c.where(), t));
        }
    }
    return Status::Ok();
}

// Migrations run under a named server lock, so that processes opening the same database at once do not interleave
// their DDL.
Status Migrate(Conn& c, const MysqlConfig& config, bool create_if_missing) {
    const std::string lock_name = mysql::Quote(c.get(), "keel:" + config.database.substr(0, 59));
    auto got = c.Query(fmt::format("SELECT GET_LOCK({}, {})", lock_name, std::max(config.lock_wait_timeout_s, 10)),
                       "taking the schema migration lock");
    if (!got.ok()) return got.status();
    if (got->empty() || got->front().at(0).value_or("0") != "1") {
        return Status::Unavailable(
            fmt::format("{}: another process holds the keel schema migration lock; try again", c.where()));
    }
    Status s = MigrateLocked(c, create_if_missing);
    auto released = c.Query(fmt::format("SELECT RELEASE_LOCK({})", lock_name), "releasing the migration lock");
    if (s.ok() && !released.ok()) return released.status();
    return s;
}

}  // namespace

Result<std::unique_ptr<StoreBackend>> OpenMysqlBackend(const ParsedUri& uri, const StoreOptions& options) {
    auto config = mysql::ParseMysqlUri(uri, options);
    if (!config.ok()) return config.status();
    auto conn = Conn::Open(*config);
    if (!conn.ok()) return conn.status();
    KEEL_RETURN_IF_ERROR(CheckDurability(**conn, *config));
    KEEL_RETURN_IF_ERROR(Migrate(**conn, *config, options.create_if_missing));
    return std::unique_ptr<StoreBackend>(std::make_unique<MysqlBackend>(std::move(*config), std::move(*conn), options));
}

Status SetMysqlTestHooks(StoreBackend& backend, MysqlTestHooks hooks) {
    auto* mysql = dynamic_cast<MysqlBackend*>(&backend);
    if (mysql == nullptr) return Status::InvalidArgument("SetMysqlTestHooks: the store is not a mysql store");
    mysql->SetHooks(std::move(hooks));
    return Status::Ok();
}

}  // namespace keel::detail

#undef KEEL_MYSQL_STREAM_COLUMNS
