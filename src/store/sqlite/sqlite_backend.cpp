#include "store/sqlite/sqlite_backend.hpp"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "store/pool.hpp"
#include "store/writer_lock.hpp"
#include "store/sqlite/schema.hpp"
#include "store/sqlite/sqlite_db.hpp"

namespace keel::detail {
namespace {

using sqlite::Db;
using sqlite::Stmt;
using sqlite::StmtReset;
using sqlite::ToStatus;

constexpr std::string_view kEventColumns =
    "global_position, event_id, stream_id, stream_version, type, data, metadata, recorded_at";

Result<RecordedEvent> DecodeEvent(const Stmt& st) {
    RecordedEvent e;
    e.global_position = st.Int(0);
    auto id = Uuid::FromBytes(st.Blob(1));
    if (!id.ok()) {
        return Status::Corruption(
            fmt::format("event at global position {} has a malformed event_id: {}", e.global_position,
                        id.status().message()));
    }
    e.event_id = *id;
    e.stream_id = std::string(st.Text(2));
    e.stream_version = st.Int(3);
    e.type = std::string(st.Text(4));
    e.data = std::string(st.Blob(5));
    e.metadata = std::string(st.Text(6));
    e.recorded_at = st.Int(7);
    return e;
}

StreamInfo DecodeStream(const Stmt& st) {
    // stream_id, version, state, max_count, max_age_us, truncate_before, custom_metadata, updated_at
    StreamInfo info;
    info.stream_id = std::string(st.Text(0));
    info.version = st.Int(1);
    info.state = static_cast<StreamState>(st.Int(2));
    info.metadata.max_count = st.OptInt(3);
    if (auto age = st.OptInt(4)) info.metadata.max_age = std::chrono::microseconds(*age);
    info.metadata.truncate_before = st.OptInt(5);
    info.metadata.custom = std::string(st.Text(6));
    info.updated_at = st.Int(7);
    return info;
}

constexpr std::string_view kStreamColumns =
    "stream_id, version, state, max_count, max_age_us, truncate_before, custom_metadata, updated_at";

// A read-only connection with its cached statements, borrowed from the pool for one call.
struct Reader {
    std::unique_ptr<Db> db;
    Stmt stream_fwd, stream_bwd, all_plain, head, get_stream, lookup_snapshot, begin, commit;
};

Result<std::unique_ptr<Reader>> OpenReader(const std::string& path, const std::string& vfs,
                                           std::chrono::milliseconds busy) {
    auto db = Db::Open(path, SQLITE_OPEN_READONLY, vfs);
    if (!db.ok()) return db.status();
    auto r = std::make_unique<Reader>();
    r->db = std::move(*db);
    sqlite3_busy_timeout(r->db->get(), static_cast<int>(busy.count()));
    KEEL_RETURN_IF_ERROR(r->db->Exec("PRAGMA cache_size=-16384"));
    const std::string range_filters =
        " AND (?3 IS NULL OR recorded_at >= ?3) AND (?4 IS NULL OR global_position <= ?4)"
        " AND (?5 IS NULL OR recorded_at <= ?5)";
    struct {
        Stmt* stmt;
        std::string sql;
    } stmts[] = {
        {&r->stream_fwd, fmt::format("SELECT {} FROM keel_events WHERE stream_id = ?1 AND stream_version >= ?2"
                                     "{} ORDER BY stream_version ASC LIMIT ?6",
                                     kEventColumns, range_filters)},
        {&r->stream_bwd, fmt::format("SELECT {} FROM keel_events WHERE stream_id = ?1 AND stream_version <= ?2"
                                     " AND stream_version >= ?7{} ORDER BY stream_version DESC LIMIT ?6",
                                     kEventColumns, range_filters)},
        {&r->all_plain, fmt::format("SELECT {} FROM keel_events WHERE global_position >= ?1 AND "
                                    "global_position <= ?2 ORDER BY global_position ASC LIMIT ?3",
                                    kEventColumns)},
        {&r->head, "SELECT COALESCE(MAX(global_position), 0) FROM keel_events"},
        {&r->get_stream, fmt::format("SELECT {} FROM keel_streams WHERE stream_id = ?1", kStreamColumns)},
        {&r->lookup_snapshot,
         "SELECT stream_id, version, type, data, recorded_at FROM keel_snapshots WHERE stream_id = ?1"},
        {&r->begin, "BEGIN"},
        {&r->commit, "COMMIT"},
    };
    for (auto& s : stmts) {
        auto st = r->db->PreparePersistent(s.sql);
        if (!st.ok()) return st.status();
        *s.stmt = std::move(*st);
    }
    return r;
}

using ReaderPool = Pool<Reader>;

// Runs `fn` inside a read transaction so that its statements see one snapshot.
template <class F>
auto InReadTxn(Reader& r, F&& fn) -> decltype(fn()) {
    if (Status s = r.begin.Exec("BEGIN (read)"); !s.ok()) return s;
    auto result = fn();
    (void)r.commit.Exec("COMMIT (read)");
    return result;
}

class SqliteTransaction;

// Units of work that share one write transaction and its commit (StoreOptions::max_units_per_commit). The
// transaction stays open while units of work wait to begin; the unit that ends it commits for all of them.
struct CommitGroup {
    // Guarded by the write lock: the units released into the transaction, waiting for its commit, and when the
    // first of them was.
    size_t members = 0;
    std::chrono::steady_clock::time_point first_release;

    void Release() {
        if (members++ == 0) first_release = std::chrono::steady_clock::now();
    }

    void Finish(Status s) {
        {
            std::lock_guard lock(mu);
            result = std::move(s);
            done = true;
        }
        cv.notify_all();
    }
    // Waits up to `d` for Finish; returns whether it happened (then `out` is its status).
    bool WaitFor(std::chrono::milliseconds d, Status& out) {
        std::unique_lock lock(mu);
        if (!cv.wait_for(lock, d, [this] { return done; })) return false;
        out = result;
        return true;
    }

private:
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Status result;
};

class SqliteBackend final : public StoreBackend {
public:
    SqliteBackend(std::string path, std::string vfs, std::unique_ptr<Db> writer, const StoreOptions& options)
        : path_(std::move(path)),
          writer_(std::move(writer)),
          readers_([path = path_, vfs = std::move(vfs), busy = options.busy_timeout] { return OpenReader(path, vfs, busy); },
                   /*max_idle=*/8),
          busy_timeout_(options.busy_timeout),
          max_units_per_commit_(std::max<size_t>(options.max_units_per_commit, 1)) {}

    ~SqliteBackend() override {
        std::lock_guard lock(write_mu_);
        (void)EndGroup();
    }

    Status Prepare() {
        struct {
            Stmt* stmt;
            std::string sql;
        } stmts[] = {
            {&begin_, "BEGIN IMMEDIATE"},
            {&commit_, "COMMIT"},
            {&rollback_, "ROLLBACK"},
            {&savepoint_, "SAVEPOINT keel_append"},
            {&release_, "RELEASE keel_append"},
            {&rollback_to_, "ROLLBACK TO keel_append"},
            {&uow_savepoint_, "SAVEPOINT keel_uow"},
            {&uow_release_, "RELEASE keel_uow"},
            {&uow_rollback_to_, "ROLLBACK TO keel_uow"},
            {&get_stream_, fmt::format("SELECT {} FROM keel_streams WHERE stream_id = ?1", kStreamColumns)},
            {&insert_event_,
             "INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at) "
             "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"},
            {&upsert_version_,
             "INSERT INTO keel_streams (stream_id, version, state, updated_at) VALUES (?1, ?2, 0, ?3) "
             "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = 0, "
             "updated_at = excluded.updated_at"},
            {&lookup_id_,
             "SELECT global_position, stream_id, stream_version, type, data, metadata FROM keel_events "
             "WHERE event_id = ?1"},
            {&last_recorded_, "SELECT recorded_at FROM keel_events ORDER BY global_position DESC LIMIT 1"},
        };
        for (auto& s : stmts) {
            auto st = writer_->PreparePersistent(s.sql);
            if (!st.ok()) return st.status();
            *s.stmt = std::move(*st);
        }
        return Status::Ok();
    }

    void AppendBatch(std::span<AppendRequest* const> batch) override {
        auto fail_all = [&](const Status& s) {
            for (AppendRequest* r : batch) r->result = s;
        };
        std::unique_lock lock(write_mu_, std::defer_lock);
        if (!lock.try_lock_for(busy_timeout_)) return fail_all(Busy());
        if (Status s = EndGroup(); !s.ok()) return fail_all(s);
        if (!sticky_.ok()) return fail_all(sticky_);
        if (Status s = begin_.Exec("BEGIN IMMEDIATE"); !s.ok()) return fail_all(s);

        auto clock = CommitClock();
        if (!clock.ok()) {
            (void)rollback_.Exec("ROLLBACK");
            return fail_all(clock.status());
        }
        const int64_t now = *clock;
        const bool savepoints = batch.size() > 1;
        bool any_written = false;
        for (AppendRequest* r : batch) {
            if (savepoints) {
                if (Status s = savepoint_.Exec("SAVEPOINT"); !s.ok()) {
                    r->result = s;
                    continue;
                }
            }
            bool wrote = false;
            r->result = AppendOne(*r, now, wrote);
            if (savepoints) {
                if (!r->result.ok() && wrote) (void)rollback_to_.Exec("ROLLBACK TO");
                (void)release_.Exec("RELEASE");
            }
            if (r->result.ok() && !r->result->already_present) any_written = true;
        }
        if (!savepoints && !batch.front()->result.ok()) {
            (void)rollback_.Exec("ROLLBACK");
            return;
        }
        if (!any_written) {
            (void)rollback_.Exec("ROLLBACK");  // nothing to make durable
            return;
        }
        if (Status s = CommitWriter("COMMIT of appended events"); !s.ok()) {
            for (AppendRequest* r : batch) {
                if (r->result.ok() && !r->result->already_present) r->result = s;
            }
        }
    }

    Result<std::vector<RecordedEvent>> ReadStreamRange(std::string_view stream, const StreamRange& range) override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        Reader& r = **lease;
        Stmt& st = range.direction == ReadDirection::kForward ? r.stream_fwd : r.stream_bwd;
        StmtReset reset(st);
        st.Bind(1, stream);
        st.Bind(2, range.direction == ReadDirection::kForward ? std::max(range.from_version, range.min_version)
                                                              : range.from_version);
        st.Bind(3, range.min_recorded_at);
        st.Bind(4, range.max_position);
        st.Bind(5, range.max_recorded_at);
        st.Bind(6, range.limit == 0 ? int64_t{-1} : static_cast<int64_t>(range.limit));
        if (range.direction == ReadDirection::kBackward) st.Bind(7, range.min_version);
        return Collect(st, range.limit);
    }

    Result<ReadAllSlice> ReadAll(const ReadAllOptions& o) override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        Reader& r = **lease;
        return InReadTxn(r, [&]() -> Result<ReadAllSlice> {
            int64_t head = 0;
            {
                StmtReset reset(r.head);
                const int rc = r.head.Step();
                if (rc != SQLITE_ROW) return ToStatus(rc, r.db->get(), "reading the head position");
                head = r.head.Int(0);
            }
            int64_t upper = head;
            if (o.as_of_position) upper = std::min(upper, *o.as_of_position);
            ReadAllSlice slice;
            const int64_t limit = o.limit == 0 ? int64_t{-1} : static_cast<int64_t>(o.limit);
            if (o.categories.empty() && o.types.empty() && !o.as_of_time) {
                StmtReset reset(r.all_plain);
                r.all_plain.Bind(1, o.from_position).Bind(2, upper).Bind(3, limit);
                auto events = Collect(r.all_plain, o.limit);
                if (!events.ok()) return events.status();
                slice.events = std::move(*events);
            } else {
                std::string sql = fmt::format(
                    "SELECT {} FROM keel_events WHERE global_position >= ?1 AND global_position <= ?2 "
                    "AND (?3 IS NULL OR recorded_at <= ?3)",
                    kEventColumns);
                int param = 4;
                auto in_list = [&](std::string_view expr, size_t n) {
                    if (n == 0) return;
                    sql += fmt::format(" AND {} IN (", expr);
                    for (size_t i = 0; i < n; ++i) sql += fmt::format("{}?{}", i ? ", " : "", param++);
                    sql += ")";
                };
                in_list("substr(stream_id, 1, instr(stream_id || '-', '-') - 1)", o.categories.size());
                in_list("type", o.types.size());
                sql += fmt::format(" ORDER BY global_position ASC LIMIT ?{}", param);
                auto st = r.db->Prepare(sql);
                if (!st.ok()) return st.status();
                st->Bind(1, o.from_position).Bind(2, upper).Bind(3, o.as_of_time);
                int p = 4;
                for (const auto& c : o.categories) st->Bind(p++, std::string_view(c));
                for (const auto& t : o.types) st->Bind(p++, std::string_view(t));
                st->Bind(p, limit);
                auto events = Collect(*st, o.limit);
                if (!events.ok()) return events.status();
                slice.events = std::move(*events);
            }
            const bool full = o.limit != 0 && slice.events.size() >= o.limit;
            slice.end_of_all = !full;
            slice.next_position = full ? slice.events.back().global_position + 1 : std::max(upper + 1, o.from_position);
            return slice;
        });
    }

    Result<int64_t> HeadPosition() override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        Reader& r = **lease;
        StmtReset reset(r.head);
        const int rc = r.head.Step();
        if (rc != SQLITE_ROW) return ToStatus(rc, r.db->get(), "reading the head position");
        return r.head.Int(0);
    }

    Result<std::optional<StreamInfo>> GetStream(std::string_view stream) override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        Reader& r = **lease;
        StmtReset reset(r.get_stream);
        r.get_stream.Bind(1, stream);
        const int rc = r.get_stream.Step();
        if (rc == SQLITE_DONE) return std::optional<StreamInfo>();
        if (rc != SQLITE_ROW) return ToStatus(rc, r.db->get(), "reading stream info");
        return std::optional<StreamInfo>(DecodeStream(r.get_stream));
    }

    Result<std::vector<StreamInfo>> ListStreams(std::string_view after, size_t limit) override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        Reader& r = **lease;
        auto st = r.db->Prepare(fmt::format(
            "SELECT {} FROM keel_streams WHERE stream_id > ?1 ORDER BY stream_id LIMIT ?2", kStreamColumns));
        if (!st.ok()) return st.status();
        st->Bind(1, after).Bind(2, limit == 0 ? int64_t{-1} : static_cast<int64_t>(limit));
        std::vector<StreamInfo> out;
        int rc;
        while ((rc = st->Step()) == SQLITE_ROW) out.push_back(DecodeStream(*st));
        if (rc != SQLITE_DONE) return ToStatus(rc, r.db->get(), "listing streams");
        return out;
    }

    Status SetStreamMetadata(std::string_view stream, const StreamMetadata& m) override {
        return WriteTxn("setting stream metadata", [&]() -> Status {
            auto info = ReadStreamRow(stream);
            if (!info.ok()) return info.status();
            if (info->has_value() && (*info)->state == StreamState::kTombstoned) return Tombstoned(stream);
            auto st = writer_->Prepare(
                "INSERT INTO keel_streams (stream_id, version, state, max_count, max_age_us, truncate_before, "
                "custom_metadata, updated_at) VALUES (?1, -1, 0, ?2, ?3, ?4, ?5, ?6) "
                "ON CONFLICT (stream_id) DO UPDATE SET max_count = excluded.max_count, max_age_us = "
                "excluded.max_age_us, truncate_before = excluded.truncate_before, custom_metadata = "
                "excluded.custom_metadata, updated_at = excluded.updated_at");
            if (!st.ok()) return st.status();
            st->Bind(1, stream).Bind(2, m.max_count);
            st->Bind(3, m.max_age ? std::optional<int64_t>(m.max_age->count()) : std::nullopt);
            st->Bind(4, m.truncate_before).Bind(5, std::string_view(m.custom)).Bind(6, NowMicros());
            return st->Exec("writing stream metadata");
        });
    }

    Status DeleteStream(std::string_view stream, ExpectedVersion expected, DeleteMode mode) override {
        return WriteTxn("deleting a stream", [&]() -> Status {
            auto info = ReadStreamRow(stream);
            if (!info.ok()) return info.status();
            const StreamInfo* current = info->has_value() ? &**info : nullptr;
            KEEL_RETURN_IF_ERROR(CheckExpected(stream, expected, current));
            if (mode == DeleteMode::kSoft && EffectiveVersion(current) < 0) {
                return Status::NotFound(fmt::format("stream '{}' does not exist; nothing to delete", stream));
            }
            // A snapshot folds the deleted events: a re-opened stream must not start from it.
            auto drop = writer_->Prepare("DELETE FROM keel_snapshots WHERE stream_id = ?1");
            if (!drop.ok()) return drop.status();
            drop->Bind(1, stream);
            KEEL_RETURN_IF_ERROR(drop->Exec("dropping the stream's snapshot"));
            if (mode == DeleteMode::kSoft) {
                auto st = writer_->Prepare(
                    "UPDATE keel_streams SET state = 1, truncate_before = version + 1, updated_at = ?2 "
                    "WHERE stream_id = ?1");
                if (!st.ok()) return st.status();
                st->Bind(1, stream).Bind(2, NowMicros());
                return st->Exec("soft-deleting a stream");
            }
            auto st = writer_->Prepare(
                "INSERT INTO keel_streams (stream_id, version, state, updated_at) VALUES (?1, -1, 2, ?2) "
                "ON CONFLICT (stream_id) DO UPDATE SET state = 2, updated_at = excluded.updated_at");
            if (!st.ok()) return st.status();
            st->Bind(1, stream).Bind(2, NowMicros());
            return st->Exec("tombstoning a stream");
        });
    }

    Status SaveSnapshot(const Snapshot& s) override {
        return WriteTxn("saving a snapshot", [&]() -> Status {
            auto st = writer_->Prepare(
                "INSERT INTO keel_snapshots (stream_id, version, type, data, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5) "
                "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, type = excluded.type, "
                "data = excluded.data, recorded_at = excluded.recorded_at");
            if (!st.ok()) return st.status();
            st->Bind(1, std::string_view(s.stream_id)).Bind(2, s.version).Bind(3, std::string_view(s.type));
            st->BindBlob(4, s.data).Bind(5, NowMicros());
            return st->Exec("writing a snapshot");
        });
    }

    Result<std::optional<Snapshot>> LoadSnapshot(std::string_view stream) override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        Reader& r = **lease;
        StmtReset reset(r.lookup_snapshot);
        r.lookup_snapshot.Bind(1, stream);
        const int rc = r.lookup_snapshot.Step();
        if (rc == SQLITE_DONE) return std::optional<Snapshot>();
        if (rc != SQLITE_ROW) return ToStatus(rc, r.db->get(), "reading a snapshot");
        Snapshot s;
        s.stream_id = std::string(r.lookup_snapshot.Text(0));
        s.version = r.lookup_snapshot.Int(1);
        s.type = std::string(r.lookup_snapshot.Text(2));
        s.data = std::string(r.lookup_snapshot.Blob(3));
        s.recorded_at = r.lookup_snapshot.Int(4);
        return std::optional<Snapshot>(std::move(s));
    }

    Result<std::optional<int64_t>> LoadCheckpoint(std::string_view name) override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        auto st = (**lease).db->Prepare("SELECT position FROM keel_checkpoints WHERE name = ?1");
        if (!st.ok()) return st.status();
        st->Bind(1, name);
        const int rc = st->Step();
        if (rc == SQLITE_DONE) return std::optional<int64_t>();
        if (rc != SQLITE_ROW) return ToStatus(rc, st->db(), "reading a checkpoint");
        return std::optional<int64_t>(st->Int(0));
    }

    Status SaveCheckpoint(std::string_view name, int64_t position) override {
        return WriteTxn("saving a checkpoint", [&]() -> Status {
            auto st = writer_->Prepare(
                "INSERT INTO keel_checkpoints (name, position, updated_at) VALUES (?1, ?2, ?3) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at");
            if (!st.ok()) return st.status();
            st->Bind(1, name).Bind(2, position).Bind(3, NowMicros());
            return st->Exec("writing a checkpoint");
        });
    }

    Result<StoreStats> Stats() override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        Reader& r = **lease;
        return InReadTxn(r, [&]() -> Result<StoreStats> {
            StoreStats st;
            st.backend = "sqlite";
            st.location = path_;
            auto events = r.db->QueryInt("SELECT count(*) FROM keel_events");
            if (!events.ok()) return events.status();
            st.events = *events;
            auto streams = r.db->QueryInt("SELECT count(*) FROM keel_streams");
            if (!streams.ok()) return streams.status();
            st.streams = *streams;
            auto head = r.db->QueryInt("SELECT COALESCE(MAX(global_position), 0) FROM keel_events");
            if (!head.ok()) return head.status();
            st.head_position = *head;
            auto cps = r.db->Prepare("SELECT name, position, updated_at FROM keel_checkpoints ORDER BY name");
            if (!cps.ok()) return cps.status();
            int rc;
            while ((rc = cps->Step()) == SQLITE_ROW) {
                st.checkpoints.push_back(CheckpointInfo{std::string(cps->Text(0)), cps->Int(1), cps->Int(2)});
            }
            if (rc != SQLITE_DONE) return ToStatus(rc, r.db->get(), "listing checkpoints");
            std::error_code ec;
            for (const char* suffix : {"", "-wal"}) {
                const auto size = std::filesystem::file_size(path_ + suffix, ec);
                if (!ec) st.size_bytes += static_cast<int64_t>(size);
            }
            return st;
        });
    }

    static Status Tombstoned(std::string_view stream) {
        return Status::StreamDeleted(fmt::format("stream '{}' was hard-deleted (tombstoned)", stream));
    }

    static Result<std::vector<RecordedEvent>> Collect(Stmt& st, size_t limit) {
        std::vector<RecordedEvent> out;
        if (limit != 0) out.reserve(std::min<size_t>(limit, 4096));
        int rc;
        while ((rc = st.Step()) == SQLITE_ROW) {
            auto e = DecodeEvent(st);
            if (!e.ok()) return e.status();
            out.push_back(std::move(*e));
        }
        if (rc != SQLITE_DONE) return ToStatus(rc, st.db(), "reading events");
        return out;
    }

    Result<std::unique_ptr<TransactionBackend>> BeginTransaction() override;

    Result<bool> AcquireLease(std::string_view name, std::string_view owner, int64_t now, int64_t until) override {
        bool held = false;
        Status s = WriteTxn("taking a lease", [&]() -> Status {
            auto st = writer_->Prepare(
                "INSERT INTO keel_leases (name, owner, until) VALUES (?1, ?2, ?4) ON CONFLICT (name) DO UPDATE SET "
                "owner = excluded.owner, until = excluded.until WHERE keel_leases.owner = ?2 OR keel_leases.until < ?3");
            if (!st.ok()) return st.status();
            st->Bind(1, name).Bind(2, owner).Bind(3, now).Bind(4, until);
            KEEL_RETURN_IF_ERROR(st->Exec("writing a lease"));
            held = sqlite3_changes(writer_->get()) == 1;
            return Status::Ok();
        });
        if (!s.ok()) return s;
        return held;
    }

    Status ReleaseLease(std::string_view name, std::string_view owner) override {
        return WriteTxn("releasing a lease", [&]() -> Status {
            auto st = writer_->Prepare("DELETE FROM keel_leases WHERE name = ?1 AND owner = ?2");
            if (!st.ok()) return st.status();
            st->Bind(1, name).Bind(2, owner);
            return st->Exec("deleting a lease");
        });
    }

    Result<std::vector<OutboxRow>> PendingOutbox(size_t limit) override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        auto st = (**lease).db->Prepare(
            "SELECT id, message_id, destination, key, payload, headers, created_at FROM keel_outbox "
            "WHERE published_at IS NULL ORDER BY id LIMIT ?1");
        if (!st.ok()) return st.status();
        st->Bind(1, static_cast<int64_t>(limit));
        std::vector<OutboxRow> rows;
        int rc;
        while ((rc = st->Step()) == SQLITE_ROW) {
            OutboxRow row;
            row.position = st->Int(0);
            auto id = Uuid::FromBytes(st->Blob(1));
            if (!id.ok()) return Status::Corruption(fmt::format("outbox row {} has a malformed message id", row.position));
            row.message.message_id = *id;
            row.message.destination = std::string(st->Text(2));
            row.message.key = std::string(st->Text(3));
            row.message.payload = std::string(st->Blob(4));
            auto headers = nlohmann::json::parse(st->Text(5), nullptr, /*allow_exceptions=*/false);
            if (headers.is_object()) {
                for (auto it = headers.begin(); it != headers.end(); ++it) {
                    row.message.headers.emplace_back(it.key(), it.value().is_string() ? it.value().get<std::string>()
                                                                                      : it.value().dump());
                }
            }
            row.created_at = st->Int(6);
            rows.push_back(std::move(row));
        }
        if (rc != SQLITE_DONE) return ToStatus(rc, st->db(), "reading the outbox");
        return rows;
    }

    Status MarkPublished(std::string_view lease, std::string_view owner, std::span<const int64_t> positions,
                         int64_t now) override {
        return WriteTxn("marking outbox rows published", [&]() -> Status {
            auto check = writer_->Prepare("SELECT owner FROM keel_leases WHERE name = ?1");
            if (!check.ok()) return check.status();
            check->Bind(1, lease);
            const int rc = check->Step();
            if (rc != SQLITE_ROW || check->Text(0) != owner) {
                return Status::FailedPrecondition(
                    fmt::format("relay '{}' lost the lease '{}'; another relay publishes now", owner, lease));
            }
            auto st = writer_->Prepare("UPDATE keel_outbox SET published_at = ?2 WHERE id = ?1");
            if (!st.ok()) return st.status();
            for (int64_t p : positions) {
                st->Bind(1, p).Bind(2, now);
                KEEL_RETURN_IF_ERROR(st->Exec("marking an outbox row"));
            }
            return Status::Ok();
        });
    }

    Result<int64_t> RepublishOutbox(int64_t from) override {
        int64_t changed = 0;
        Status s = WriteTxn("re-publishing the outbox", [&]() -> Status {
            auto st = writer_->Prepare("UPDATE keel_outbox SET published_at = NULL WHERE id >= ?1 AND published_at IS NOT NULL");
            if (!st.ok()) return st.status();
            st->Bind(1, from);
            KEEL_RETURN_IF_ERROR(st->Exec("re-publishing the outbox"));
            changed = sqlite3_changes(writer_->get());
            return Status::Ok();
        });
        if (!s.ok()) return s;
        return changed;
    }

    Result<int64_t> PurgeOutbox(int64_t published_before) override {
        int64_t changed = 0;
        Status s = WriteTxn("purging the outbox", [&]() -> Status {
            auto st = writer_->Prepare("DELETE FROM keel_outbox WHERE published_at IS NOT NULL AND published_at < ?1");
            if (!st.ok()) return st.status();
            st->Bind(1, published_before);
            KEEL_RETURN_IF_ERROR(st->Exec("purging the outbox"));
            changed = sqlite3_changes(writer_->get());
            return Status::Ok();
        });
        if (!s.ok()) return s;
        return changed;
    }

    Result<OutboxStats> GetOutboxStats() override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        auto st = (**lease).db->Prepare(
            "SELECT (SELECT count(*) FROM keel_outbox WHERE published_at IS NULL), "
            "(SELECT count(*) FROM keel_outbox WHERE published_at IS NOT NULL), "
            "(SELECT COALESCE(min(created_at), 0) FROM keel_outbox WHERE published_at IS NULL), "
            "(SELECT COALESCE(max(id), 0) FROM keel_outbox)");
        if (!st.ok()) return st.status();
        const int rc = st->Step();
        if (rc != SQLITE_ROW) return ToStatus(rc, st->db(), "reading outbox statistics");
        return OutboxStats{st->Int(0), st->Int(1), st->Int(2), st->Int(3)};
    }

private:
    friend class SqliteTransaction;

    // recorded_at for what this transaction appends: now, but never before the last stored event (inside a write
    // transaction, so no other writer can slip in between).
    Result<int64_t> CommitClock() {
        int64_t now = NowMicros();
        StmtReset reset(last_recorded_);
        const int rc = last_recorded_.Step();
        if (rc == SQLITE_ROW) return std::max(now, last_recorded_.Int(0));
        if (rc != SQLITE_DONE) return ToStatus(rc, writer_->get(), "reading the last recorded_at");
        return now;
    }

    // Commits the writer's transaction; a failure other than a busy database makes the store refuse writes.
    Status CommitWriter(std::string_view what) {
        const int rc = commit_.Step();
        commit_.Reset();
        if (rc == SQLITE_DONE) return Status::Ok();
        Status s = ToStatus(rc, writer_->get(), what);
        if (!sqlite3_get_autocommit(writer_->get())) (void)rollback_.Exec("ROLLBACK");
        const int primary = rc & 0xFF;
        if (primary != SQLITE_BUSY && primary != SQLITE_LOCKED) {
            sticky_ = Status::FailedPrecondition(
                fmt::format("an earlier commit failed ({}); the store refuses writes until it is reopened", s.message()));
        }
        return s;
    }

    // Writer connection only, inside a transaction.
    Result<std::optional<StreamInfo>> ReadStreamRow(std::string_view stream) {
        StmtReset reset(get_stream_);
        get_stream_.Bind(1, stream);
        const int rc = get_stream_.Step();
        if (rc == SQLITE_DONE) return std::optional<StreamInfo>();
        if (rc != SQLITE_ROW) return ToStatus(rc, writer_->get(), "reading stream info");
        return std::optional<StreamInfo>(DecodeStream(get_stream_));
    }

    // The writer connection is held by a unit of work (maybe of this very thread) for longer than the busy timeout.
    Status Busy() const {
        return Status::Unavailable(fmt::format(
            "the database is busy: a unit of work has held its write lock for over {} ms (a unit of work must not "
            "wait for writes of its own thread outside it: write through the unit of work)",
            busy_timeout_.count()));
    }

    template <class F>
    Status WriteTxn(std::string_view what, F&& body) {
        std::unique_lock lock(write_mu_, std::defer_lock);
        if (!lock.try_lock_for(busy_timeout_)) return Busy();
        KEEL_RETURN_IF_ERROR(EndGroup().WithContext(what));
        if (!sticky_.ok()) return sticky_;
        KEEL_RETURN_IF_ERROR(begin_.Exec("BEGIN IMMEDIATE").WithContext(what));
        Status s = body();
        if (!s.ok()) {
            (void)rollback_.Exec("ROLLBACK");
            return s;
        }
        s = commit_.Exec("COMMIT");
        if (!s.ok()) {
            if (!sqlite3_get_autocommit(writer_->get())) (void)rollback_.Exec("ROLLBACK");
            return s.WithContext(what);
        }
        return s;
    }

    Result<std::optional<StoredEventRef>> LookupEventId(const Uuid& id) {
        StmtReset reset(lookup_id_);
        lookup_id_.BindBlob(1, id.bytes_view());
        const int rc = lookup_id_.Step();
        if (rc == SQLITE_DONE) return std::optional<StoredEventRef>();
        if (rc != SQLITE_ROW) return ToStatus(rc, writer_->get(), "looking up an event id");
        return std::optional<StoredEventRef>(StoredEventRef{
            lookup_id_.Int(0), std::string(lookup_id_.Text(1)), lookup_id_.Int(2), std::string(lookup_id_.Text(3)),
            std::string(lookup_id_.Blob(4)), std::string(lookup_id_.Text(5))});
    }

    // One append inside the open transaction. Sets `wrote` once a row was written (so the caller rolls back).
    Result<AppendResult> AppendOne(const AppendRequest& r, int64_t now, bool& wrote) {
        auto info = ReadStreamRow(r.stream);
        if (!info.ok()) return info.status();
        const StreamInfo* current = info->has_value() ? &**info : nullptr;
        auto lookup = [this](const Uuid& id) { return LookupEventId(id); };
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
            StmtReset reset(insert_event_);
            insert_event_.BindBlob(1, e.event_id.bytes_view())
                .Bind(2, r.stream)
                .Bind(3, version)
                .Bind(4, std::string_view(e.type))
                .BindBlob(5, e.data)
                .Bind(6, std::string_view(e.metadata))
                .Bind(7, now);
            const int rc = insert_event_.Step();
            if (rc != SQLITE_DONE) {
                Status s = ToStatus(rc, writer_->get(), "inserting an event");
                if ((rc & 0xFF) == SQLITE_CONSTRAINT) {
                    // An event id is stored already: an idempotent re-send, or a misuse of the id.
                    if (wrote) (void)rollback_to_.Exec("ROLLBACK TO");  // a savepoint exists when wrote && batch
                    wrote = true;  // make the caller roll back whatever this request did
                    auto replay = MatchStoredAppend(r.stream, r.expected, r.events, lookup);
                    if (!replay.ok()) return replay.status();
                    if (replay->has_value()) return **replay;
                }
                wrote = true;
                return s;
            }
            wrote = true;
            const int64_t pos = sqlite3_last_insert_rowid(writer_->get());
            if (result.first_position == 0) result.first_position = pos;
            result.last_position = pos;
        }
        StmtReset reset(upsert_version_);
        upsert_version_.Bind(1, r.stream).Bind(2, version).Bind(3, now);
        if (Status s = upsert_version_.Exec("updating the stream version"); !s.ok()) return s;
        result.next_expected_version = version;
        return result;
    }

    // With the write lock held: ends the transaction that units of work share, if one is open — commits it when a
    // unit was released into it, else rolls it back — and gives its units the outcome. Returns the commit's status.
    Status EndGroup() {
        if (group_ == nullptr) return Status::Ok();
        std::shared_ptr<CommitGroup> group = std::move(group_);
        Status s;
        if (group->members > 0) {
            s = CommitWriter("COMMIT of units of work");
        } else {
            (void)rollback_.Exec("ROLLBACK");
        }
        group->Finish(s);
        return s;
    }

    // With the write lock held: the shared transaction is gone (SQLite rolled it back after an error): its released
    // units fail with `cause`.
    void AbortGroup(const Status& cause) {
        if (group_ == nullptr) return;
        std::shared_ptr<CommitGroup> group = std::move(group_);
        if (!sqlite3_get_autocommit(writer_->get())) (void)rollback_.Exec("ROLLBACK");
        group->Finish(Status::Unavailable(fmt::format(
            "the transaction this unit of work shared was rolled back after another unit's error ({}); nothing of "
            "it was committed, run it again",
            cause.message())));
    }

    // With the write lock held, when a unit of work ends: true if it should leave the transaction open for a unit
    // of work waiting to begin instead of ending it. Only a transaction that carries released units is handed on:
    // they wait for it, and take it over should the waiting unit give up.
    bool ShareCommit() const {
        return group_ != nullptr && group_->members > 0 && uow_waiting_.load() > 0 &&
               group_->members < max_units_per_commit_ &&
               std::chrono::steady_clock::now() - group_->first_release < kMaxGroupAge;
    }

    static constexpr auto kMaxGroupAge = std::chrono::milliseconds(10);

    std::string path_;
    std::unique_ptr<Db> writer_;
    ReaderPool readers_;
    WriterLock write_mu_;  // held around every use of writer_, for a whole unit of work too
    std::chrono::milliseconds busy_timeout_;
    size_t max_units_per_commit_;
    Status sticky_;
    // The write transaction open for units of work (null: none), and its units; guarded by write_mu_.
    std::shared_ptr<CommitGroup> group_;
    std::atomic<int> uow_waiting_{0};  // threads waiting in BeginTransaction for write_mu_
    Stmt begin_, commit_, rollback_, savepoint_, release_, rollback_to_, uow_savepoint_, uow_release_,
        uow_rollback_to_, get_stream_, insert_event_, upsert_version_, lookup_id_, last_recorded_;
    // Units of work's own statements (and keel's outbox/inbox ones), prepared once per SQL text.
    std::unordered_map<std::string, Stmt> user_stmts_;
};

Status BindValue(Stmt& st, int index, const SqlValue& v) {
    switch (v.index()) {
        case 0: st.BindNull(index); break;
        case 1: st.Bind(index, std::get<int64_t>(v)); break;
        case 2: sqlite3_bind_double(st.get(), index, std::get<double>(v)); break;
        case 3: st.Bind(index, std::string_view(std::get<std::string>(v))); break;
        case 4: st.BindBlob(index, std::get<Blob>(v).bytes); break;
    }
    return Status::Ok();
}

SqlValue ColumnValue(const Stmt& st, int col) {
    switch (sqlite3_column_type(st.get(), col)) {
        case SQLITE_INTEGER: return st.Int(col);
        case SQLITE_FLOAT: return sqlite3_column_double(st.get(), col);
        case SQLITE_TEXT: return std::string(st.Text(col));
        case SQLITE_BLOB: return Blob{std::string(st.Blob(col))};
        default: return std::monostate{};
    }
}

std::string HeadersJson(const Headers& headers) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : headers) j[k] = v;
    return j.dump();
}

// A unit of work's transaction: holds the writer connection (and so the database's write lock) until it ends. It
// runs under the savepoint keel_uow inside a write transaction that several units of work may share (CommitGroup):
// committing releases the savepoint, then either ends the transaction (a commit for every unit released into it) or,
// when another unit of work waits to begin, leaves it open for that one and waits for the shared commit.
class SqliteTransaction final : public TransactionBackend {
public:
    SqliteTransaction(SqliteBackend& b, std::unique_lock<WriterLock> lock, std::shared_ptr<CommitGroup> group,
                      int64_t now)
        : b_(b), lock_(std::move(lock)), group_(std::move(group)), now_(now) {}

    ~SqliteTransaction() override {
        if (open_ && broken_.ok()) RollBack();
    }

    Result<int64_t> Exec(std::string_view sql, std::span<const SqlValue> params) override {
        KEEL_RETURN_IF_ERROR(broken_);
        auto st = Run(sql, params);
        if (!st.ok()) return Checked(st.status());
        int rc;
        while ((rc = (*st)->Step()) == SQLITE_ROW) {
        }
        Status s = rc == SQLITE_DONE ? Status::Ok() : StatementError(rc, sql);
        (*st)->Reset();
        if (!s.ok()) return Checked(s);
        return static_cast<int64_t>(sqlite3_changes(b_.writer_->get()));
    }

    Result<Rows> Query(std::string_view sql, std::span<const SqlValue> params) override {
        KEEL_RETURN_IF_ERROR(broken_);
        auto st = Run(sql, params);
        if (!st.ok()) return Checked(st.status());
        Stmt& q = **st;
        StmtReset reset(q);
        Rows rows;
        const int n = sqlite3_column_count(q.get());
        for (int c = 0; c < n; ++c) rows.columns.emplace_back(sqlite3_column_name(q.get(), c));
        int rc;
        while ((rc = q.Step()) == SQLITE_ROW) {
            std::vector<SqlValue> row;
            row.reserve(static_cast<size_t>(n));
            for (int c = 0; c < n; ++c) row.push_back(ColumnValue(q, c));
            rows.rows.push_back(std::move(row));
        }
        if (rc != SQLITE_DONE) return Checked(StatementError(rc, sql));
        return rows;
    }

    Result<AppendResult> Append(const AppendRequest& request) override {
        KEEL_RETURN_IF_ERROR(broken_);
        KEEL_RETURN_IF_ERROR(Checked(b_.savepoint_.Exec("SAVEPOINT")));
        bool wrote = false;
        Result<AppendResult> r = b_.AppendOne(request, now_, wrote);
        if (!r.ok()) {
            (void)Checked(r.status());
            if (!broken_.ok()) return r;  // SQLite ended the transaction
        }
        Status undo;
        if (!r.ok() && wrote) undo = b_.rollback_to_.Exec("ROLLBACK TO");
        if (undo.ok()) undo = b_.release_.Exec("RELEASE");
        if (!undo.ok()) return Fail(undo);
        if (r.ok() && !r->already_present) last_position_ = std::max(last_position_, r->last_position);
        return r;
    }

    Status InsertOutbox(const OutboxMessage& m) override {
        KEEL_RETURN_IF_ERROR(broken_);
        auto st = Run("INSERT INTO keel_outbox (message_id, destination, key, payload, headers, created_at) "
                      "VALUES (?, ?, ?, ?, ?, ?)",
                      {});
        if (!st.ok()) return Checked(st.status());
        Stmt& q = **st;
        const std::string headers = HeadersJson(m.headers);
        q.BindBlob(1, m.message_id.bytes_view()).Bind(2, std::string_view(m.destination));
        q.Bind(3, std::string_view(m.key)).BindBlob(4, m.payload).Bind(5, std::string_view(headers)).Bind(6, now_);
        const int rc = q.Step();
        q.Reset();
        if (rc == SQLITE_DONE) return Status::Ok();
        if ((rc & 0xFF) == SQLITE_CONSTRAINT) {
            return Status::AlreadyExists(
                fmt::format("message id {} is in the outbox already", m.message_id.ToString()));
        }
        return Checked(ToStatus(rc, b_.writer_->get(), "writing to the outbox"));
    }

    Result<bool> InsertInbox(std::string_view consumer, const Uuid& message_id) override {
        KEEL_RETURN_IF_ERROR(broken_);
        auto st = Run("INSERT INTO keel_inbox (consumer, message_id, processed_at) VALUES (?, ?, ?) "
                      "ON CONFLICT (consumer, message_id) DO NOTHING",
                      {});
        if (!st.ok()) return Checked(st.status());
        Stmt& q = **st;
        q.Bind(1, consumer).BindBlob(2, message_id.bytes_view()).Bind(3, NowMicros());
        KEEL_RETURN_IF_ERROR(Checked(q.Exec("writing to the inbox")));
        return sqlite3_changes(b_.writer_->get()) == 1;
    }

    Result<std::optional<int64_t>> LoadCheckpoint(std::string_view name) override {
        KEEL_RETURN_IF_ERROR(broken_);
        auto st = Run("SELECT position FROM keel_checkpoints WHERE name = ?", {});
        if (!st.ok()) return Checked(st.status());
        Stmt& q = **st;
        StmtReset reset(q);
        q.Bind(1, name);
        const int rc = q.Step();
        if (rc == SQLITE_DONE) return std::optional<int64_t>();
        if (rc != SQLITE_ROW) return Checked(ToStatus(rc, b_.writer_->get(), "reading a checkpoint"));
        return std::optional<int64_t>(q.Int(0));
    }

    Status SaveCheckpoint(std::string_view name, int64_t position) override {
        KEEL_RETURN_IF_ERROR(broken_);
        auto st = Run("INSERT INTO keel_checkpoints (name, position, updated_at) VALUES (?, ?, ?) "
                      "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                      {});
        if (!st.ok()) return Checked(st.status());
        (*st)->Bind(1, name).Bind(2, position).Bind(3, NowMicros());
        return Checked((*st)->Exec("writing a checkpoint"));
    }

    Result<int64_t> Commit() override {
        open_ = false;
        KEEL_RETURN_IF_ERROR(broken_);
        if (Status s = Checked(b_.uow_release_.Exec("RELEASE")); !s.ok()) {
            // The transaction is still there: leave nothing of this unit in it.
            if (broken_.ok()) RollBack();
            return s;
        }
        group_->Release();
        if (!b_.ShareCommit()) {
            KEEL_RETURN_IF_ERROR(b_.EndGroup());
            return last_position_;
        }
        // A unit of work waits to begin: it takes the open transaction on; the commit that ends it is ours too.
        lock_.unlock();
        Status outcome;
        while (!group_->WaitFor(std::chrono::milliseconds(20), outcome)) {
            // Normally the unit that ends the transaction commits it. Should the write lock be free with the
            // transaction still open (the waiting unit gave up), end it ourselves.
            std::unique_lock lock(b_.write_mu_, std::try_to_lock);
            if (lock.owns_lock() && b_.group_ == group_) (void)b_.EndGroup();
        }
        KEEL_RETURN_IF_ERROR(outcome);
        return last_position_;
    }

private:
    // Rolls this unit back to its savepoint, then hands the transaction on to a waiting unit or ends it (a commit
    // for the units released into it). If the rollback fails, the whole shared transaction is rolled back and its
    // released units fail: nothing of this unit may be committed with them.
    void RollBack() {
        Status s = b_.uow_rollback_to_.Exec("ROLLBACK TO");
        if (s.ok()) s = b_.uow_release_.Exec("RELEASE");
        if (!s.ok()) {
            (void)Fail(s);
            return;
        }
        if (!b_.ShareCommit()) (void)b_.EndGroup();  // else the next unit carries the transaction on
    }

    // Gives up the transaction: rolled back whole, its released units failed, this unit finished.
    Status Fail(const Status& cause) {
        broken_ = Status::Unavailable(
            fmt::format("the unit of work's transaction was rolled back after an error ({}); nothing of it was "
                        "committed",
                        cause.message()));
        b_.AbortGroup(cause);
        return cause;
    }

    // After a failed statement: if SQLite rolled the whole transaction back (it does so after some I/O and memory
    // errors), the units released into it are lost with it — they fail — and this unit can do nothing more.
    Status Checked(Status s) {
        if (!s.ok() && broken_.ok() && sqlite3_get_autocommit(b_.writer_->get())) (void)Fail(s);
        return s;
    }

    // A cached statement for `sql` with `params` bound (statements are kept per connection, at most 64).
    Result<Stmt*> Run(std::string_view sql, std::span<const SqlValue> params) {
        auto& cache = b_.user_stmts_;
        auto it = cache.find(std::string(sql));
        if (it == cache.end()) {
            if (cache.size() >= 64) cache.clear();
            // The unit of work owns the transaction (it may share it with others): SQL of the service's that would
            // end it or nest one (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE) is refused when it is prepared.
            bool refused = false;
            sqlite3_set_authorizer(
                b_.writer_->get(),
                [](void* flag, int action, const char*, const char*, const char*, const char*) {
                    if (action != SQLITE_TRANSACTION && action != SQLITE_SAVEPOINT) return SQLITE_OK;
                    *static_cast<bool*>(flag) = true;
                    return SQLITE_DENY;
                },
                &refused);
            auto st = b_.writer_->PreparePersistent(sql);
            sqlite3_set_authorizer(b_.writer_->get(), nullptr, nullptr);
            if (refused) {
                return Status::InvalidArgument(fmt::format(
                    "SQL '{}' controls the transaction; a unit of work begins, commits and rolls back its "
                    "transaction itself (Commit(), or destroying it uncommitted)",
                    sql.substr(0, 80)));
            }
            if (!st.ok()) return Status::InvalidArgument(st.status().message());
            it = cache.emplace(std::string(sql), std::move(*st)).first;
        }
        Stmt& st = it->second;
        st.Reset();
        const int expected = sqlite3_bind_parameter_count(st.get());
        if (!params.empty() && static_cast<int>(params.size()) != expected) {
            return Status::InvalidArgument(fmt::format("the statement has {} placeholders but {} values were given",
                                                       expected, params.size()));
        }
        for (size_t i = 0; i < params.size(); ++i) KEEL_RETURN_IF_ERROR(BindValue(st, static_cast<int>(i + 1), params[i]));
        return &st;
    }

    Status StatementError(int rc, std::string_view sql) {
        const std::string what = fmt::format("SQL '{}'", sql.substr(0, 80));
        switch (rc & 0xFF) {
            case SQLITE_CONSTRAINT:
                if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
                    return Status::AlreadyExists(fmt::format("{}: {}", what, sqlite3_errmsg(b_.writer_->get())));
                }
                return Status::InvalidArgument(fmt::format("{}: {}", what, sqlite3_errmsg(b_.writer_->get())));
            case SQLITE_ERROR:
            case SQLITE_MISMATCH:
            case SQLITE_RANGE:
            case SQLITE_TOOBIG: return Status::InvalidArgument(fmt::format("{}: {}", what, sqlite3_errmsg(b_.writer_->get())));
            default: return ToStatus(rc, b_.writer_->get(), what);
        }
    }

    SqliteBackend& b_;
    std::unique_lock<WriterLock> lock_;
    std::shared_ptr<CommitGroup> group_;
    int64_t now_;
    int64_t last_position_ = 0;
    bool open_ = true;
    Status broken_;  // set when SQLite ended the transaction under this unit
};

Result<std::unique_ptr<TransactionBackend>> SqliteBackend::BeginTransaction() {
    std::unique_lock lock(write_mu_, std::defer_lock);
    ++uow_waiting_;
    const bool locked = lock.try_lock_for(busy_timeout_);
    --uow_waiting_;
    if (!locked) return Busy();
    if (!sticky_.ok()) return sticky_;
    if (group_ != nullptr && sqlite3_get_autocommit(writer_->get())) {
        AbortGroup(Status::Internal("the shared transaction ended unnoticed"));  // never leave them waiting
    }
    if (group_ == nullptr) {
        KEEL_RETURN_IF_ERROR(begin_.Exec("BEGIN IMMEDIATE"));
        group_ = std::make_shared<CommitGroup>();
    }
    // Should this fail, the units already released into the transaction still get their commit, if it is there.
    auto end_on_error = [this](Status s) {
        if (sqlite3_get_autocommit(writer_->get())) {
            AbortGroup(s);
        } else {
            (void)EndGroup();
        }
        return s;
    };
    auto clock = CommitClock();
    if (!clock.ok()) return end_on_error(clock.status());
    if (Status s = uow_savepoint_.Exec("SAVEPOINT keel_uow"); !s.ok()) return end_on_error(s);
    return std::unique_ptr<TransactionBackend>(
        std::make_unique<SqliteTransaction>(*this, std::move(lock), group_, *clock));
}

Result<std::string> SqlitePath(const ParsedUri& uri) {
    std::string_view rest = uri.rest;
    if (rest.starts_with("//")) rest.remove_prefix(2);  // sqlite:///abs → /abs ; sqlite://rel → rel
    if (rest.empty()) {
        return Status::InvalidArgument(
            "sqlite URI has no path; use sqlite:///absolute/path.db or sqlite://relative/path.db");
    }
    return std::string(rest);
}

bool LooksLikeSqlite(const std::string& path, bool& empty) {
    std::ifstream in(path, std::ios::binary);
    char header[16] = {};
    in.read(header, sizeof header);
    empty = in.gcount() == 0;
    return in.gcount() == 16 && std::string_view(header, 16) == std::string_view("SQLite format 3\0", 16);
}

Status Migrate(Db& db, const std::string& path) {
    auto app_id = db.QueryInt("PRAGMA application_id");
    if (!app_id.ok()) {
        return app_id.status().code() == StatusCode::kCorruption
                   ? Status::Corruption(fmt::format("'{}' is not a keel store: {}", path, app_id.status().message()))
                   : app_id.status();
    }
    if (*app_id != 0 && *app_id != sqlite_schema::kApplicationId) {
        return Status::Corruption(fmt::format(
            "'{}' is not a keel store: it is an SQLite database of another application (application_id 0x{:08x})",
            path, *app_id));
    }
    KEEL_RETURN_IF_ERROR(db.Exec("BEGIN IMMEDIATE"));
    auto body = [&]() -> Status {
        auto has_schema = db.QueryInt("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'keel_schema'");
        if (!has_schema.ok()) return has_schema.status();
        int64_t version = 0;
        if (*has_schema == 0) {
            auto has_events =
                db.QueryInt("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'keel_events'");
            if (!has_events.ok()) return has_events.status();
            if (*has_events != 0) {
                return Status::Corruption(fmt::format(
                    "'{}' is not a keel store: it has a keel_events table but no keel_schema table", path));
            }
            KEEL_RETURN_IF_ERROR(db.Exec(
                "CREATE TABLE keel_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL, "
                "updated_at INTEGER NOT NULL) WITHOUT ROWID"));
        } else {
            auto v = db.QueryInt("SELECT version FROM keel_schema WHERE component = 'event_store'");
            if (v.ok()) {
                version = *v;
            } else if (v.status().code() != StatusCode::kNotFound) {
                return v.status();
            }
        }
        if (version > kSqliteSchemaVersion) {
            return Status::NotSupported(fmt::format(
                "'{}' has event-store schema version {}, newer than this keel build supports ({}); upgrade keel",
                path, version, kSqliteSchemaVersion));
        }
        for (int64_t v = version; v < kSqliteSchemaVersion; ++v) {
            KEEL_RETURN_IF_ERROR(db.Exec(sqlite_schema::kMigrations[static_cast<size_t>(v)])
                                     .WithContext(fmt::format("migrating schema {} -> {}", v, v + 1)));
        }
        if (version != kSqliteSchemaVersion) {
            KEEL_RETURN_IF_ERROR(db.Exec(fmt::format(
                "INSERT INTO keel_schema (component, version, updated_at) VALUES ('event_store', {}, {}) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                kSqliteSchemaVersion, NowMicros())));
        }
        if (*app_id == 0) {
            KEEL_RETURN_IF_ERROR(db.Exec(fmt::format("PRAGMA application_id = {}", sqlite_schema::kApplicationId)));
        }
        return Status::Ok();
    };
    Status s = body();
    if (!s.ok()) {
        (void)db.Exec("ROLLBACK");
        return s;
    }
    return db.Exec("COMMIT");
}

}  // namespace

Result<std::unique_ptr<StoreBackend>> OpenSqliteBackend(const ParsedUri& uri, const StoreOptions& options) {
    auto path = SqlitePath(uri);
    if (!path.ok()) return path.status();
    Durability durability = options.durability;
    std::string vfs;
    for (const auto& [key, value] : uri.query) {
        if (key == "durability" && (value == "full" || value == "normal")) {
            durability = value == "full" ? Durability::kFull : Durability::kNormal;
        } else if (key == "vfs" && !value.empty()) {
            vfs = value;
        } else {
            return Status::InvalidArgument(
                fmt::format("sqlite URI parameter '{}={}' is not understood; known: durability=full|normal, vfs=NAME",
                            key, value));
        }
    }
    std::error_code ec;
    const bool exists = std::filesystem::exists(*path, ec);
    if (!exists && !options.create_if_missing) {
        return Status::NotFound(fmt::format("store '{}' does not exist (create_if_missing is off)", *path));
    }
    if (exists) {
        bool empty = false;
        if (!LooksLikeSqlite(*path, empty) && !empty) {
            return Status::Corruption(
                fmt::format("'{}' is not a keel store: the file is not an SQLite database", *path));
        }
    }
    const int flags = SQLITE_OPEN_READWRITE | (options.create_if_missing ? SQLITE_OPEN_CREATE : 0);
    auto db = sqlite::Db::Open(*path, flags, vfs);
    if (!db.ok()) return db.status();
    sqlite3_busy_timeout((*db)->get(), static_cast<int>(options.busy_timeout.count()));
    auto mode = (*db)->QueryText("PRAGMA journal_mode = WAL");
    if (!mode.ok()) {
        return mode.status().code() == StatusCode::kCorruption
                   ? Status::Corruption(fmt::format("'{}' is not a keel store: {}", *path, mode.status().message()))
                   : mode.status();
    }
    if (*mode != "wal") {
        return Status::NotSupported(fmt::format("'{}': cannot switch to WAL journal mode (got '{}')", *path, *mode));
    }
    KEEL_RETURN_IF_ERROR((*db)->Exec(durability == Durability::kFull ? "PRAGMA synchronous = FULL"
                                                                      : "PRAGMA synchronous = NORMAL"));
    KEEL_RETURN_IF_ERROR((*db)->Exec("PRAGMA cache_size = -16384"));
    KEEL_RETURN_IF_ERROR(Migrate(**db, *path));
    auto backend = std::make_unique<SqliteBackend>(*path, vfs, std::move(*db), options);
    KEEL_RETURN_IF_ERROR(backend->Prepare());
    return std::unique_ptr<StoreBackend>(std::move(backend));
}

}  // namespace keel::detail
