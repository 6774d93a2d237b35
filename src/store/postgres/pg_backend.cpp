#include "store/postgres/pg_backend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "store/pool.hpp"
#include "store/postgres/pg_conn.hpp"
#include "store/postgres/pg_outbox_watch.hpp"
#include "store/postgres/pg_schema.hpp"

namespace keel::detail {
namespace {

using pg::Conn;
using pg::Params;
using pg::ResultPtr;

constexpr std::string_view kEventColumns =
    "global_position, event_id, stream_id, stream_version, type, data, metadata, recorded_at";
constexpr std::string_view kStreamColumns =
    "stream_id, version, state, max_count, max_age_us, truncate_before, custom_metadata, updated_at";

struct PgConfig {
    std::string conninfo;  // for libpq
    std::string schema;    // empty: the connection's default search_path
};

Result<PgConfig> ParseConfig(const ParsedUri& uri) {
    PgConfig cfg;
    std::string query;
    bool has_timeout = false;
    for (const auto& [k, v] : uri.query) {
        if (k == "schema") {
            if (v.empty()) return Status::InvalidArgument("postgresql URI: schema= needs a name");
            cfg.schema = v;
            continue;
        }
        if (k == "connect_timeout") has_timeout = true;
        query += (query.empty() ? "" : "&") + k + "=" + v;
    }
    if (!has_timeout) query += std::string(query.empty() ? "" : "&") + "connect_timeout=10";
    query += "&application_name=keel";
    if (!uri.rest.starts_with("//")) {
        return Status::InvalidArgument(
            "postgresql URI must look like postgresql://user:password@host:port/database");
    }
    cfg.conninfo = "postgresql:" + uri.rest + "?" + query;
    return cfg;
}

RecordedEvent DecodeEvent(const PGresult* r, int row) {
    RecordedEvent e;
    e.global_position = pg::GetInt8(r, row, 0);
    auto id = Uuid::FromBytes(pg::GetBytes(r, row, 1));
    if (id.ok()) e.event_id = *id;
    e.stream_id = std::string(pg::GetBytes(r, row, 2));
    e.stream_version = pg::GetInt8(r, row, 3);
    e.type = std::string(pg::GetBytes(r, row, 4));
    e.data = std::string(pg::GetBytes(r, row, 5));
    e.metadata = std::string(pg::GetBytes(r, row, 6));
    e.recorded_at = pg::GetInt8(r, row, 7);
    return e;
}

StreamInfo DecodeStream(const PGresult* r, int row) {
    StreamInfo info;
    info.stream_id = std::string(pg::GetBytes(r, row, 0));
    info.version = pg::GetInt8(r, row, 1);
    info.state = static_cast<StreamState>(pg::GetInt4(r, row, 2));
    info.metadata.max_count = pg::GetOptInt8(r, row, 3);
    if (auto age = pg::GetOptInt8(r, row, 4)) info.metadata.max_age = std::chrono::microseconds(*age);
    info.metadata.truncate_before = pg::GetOptInt8(r, row, 5);
    info.metadata.custom = std::string(pg::GetBytes(r, row, 6));
    info.updated_at = pg::GetInt8(r, row, 7);
    return info;
}

std::vector<RecordedEvent> DecodeEvents(const PGresult* r) {
    std::vector<RecordedEvent> out;
    const int n = PQntuples(r);
    out.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) out.push_back(DecodeEvent(r, i));
    return out;
}

// The statements every connection prepares (name, SQL, parameter types).
struct StmtDef {
    const char* name;
    std::string sql;
    std::vector<Oid> types;
};

std::vector<StmtDef> Statements() {
    using namespace pg;
    const std::string range = " AND ($3::int8 IS NULL OR recorded_at >= $3) AND ($4::int8 IS NULL OR "
                              "global_position <= $4) AND ($5::int8 IS NULL OR recorded_at <= $5)";
    return {
        {"append",
         "SELECT code, actual, first_pos, last_pos, next_version FROM keel_append($1, $2, $3, $4, $5, $6, $7, $8)",
         {kTextOid, kInt4Oid, kInt8Oid, kUuidArrayOid, kTextArrayOid, kByteaArrayOid, kTextArrayOid, kInt8Oid}},
        // A lone append to an existing, live stream whose expectation holds, as one plain statement (no function
        // call: keel_append's PL/pgSQL costs as much as the insert). No row: the stream is missing, deleted or at
        // another version; a unique violation: an event id is stored already. Either way nothing was written and
        // keel_append decides.
        {"append_fast",
         "WITH s AS (UPDATE keel_streams SET version = version + cardinality($4::uuid[]), updated_at = $8 "
         "WHERE stream_id = $1 AND state = 0 AND ($2 = 0 OR ($2 = 1 AND version < 0) OR ($2 = 2 AND version >= 0) "
         "OR ($2 = 3 AND version = $3)) RETURNING version) "
         "INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at) "
         "SELECT e.id, $1, s.version - cardinality($4::uuid[]) + e.ord, e.t, e.d, e.m, $8 "
         "FROM s, unnest($4::uuid[], $5::text[], $6::bytea[], $7::text[]) WITH ORDINALITY AS e(id, t, d, m, ord) "
         "ORDER BY e.ord RETURNING global_position, stream_version",
         {kTextOid, kInt4Oid, kInt8Oid, kUuidArrayOid, kTextArrayOid, kByteaArrayOid, kTextArrayOid, kInt8Oid}},
        // append_fast for one event, without arrays (the usual append).
        {"append_fast_one",
         "WITH s AS (UPDATE keel_streams SET version = version + 1, updated_at = $8 "
         "WHERE stream_id = $1 AND state = 0 AND ($2 = 0 OR ($2 = 1 AND version < 0) OR ($2 = 2 AND version >= 0) "
         "OR ($2 = 3 AND version = $3)) RETURNING version) "
         "INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at) "
         "SELECT $4, $1, s.version, $5, $6, $7, $8 FROM s RETURNING global_position, stream_version",
         {kTextOid, kInt4Oid, kInt8Oid, kUuidOid, kTextOid, kByteaOid, kTextOid, kInt8Oid}},
        // The same for a lone append that expects no stream: creates the stream's row (nothing when it exists).
        {"append_fast_new",
         "WITH s AS (INSERT INTO keel_streams (stream_id, version, state, updated_at) "
         "VALUES ($1, cardinality($4::uuid[]) - 1, 0, $8) ON CONFLICT (stream_id) DO NOTHING RETURNING version) "
         "INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at) "
         "SELECT e.id, $1, s.version - cardinality($4::uuid[]) + e.ord, e.t, e.d, e.m, $8 "
         "FROM s, unnest($4::uuid[], $5::text[], $6::bytea[], $7::text[]) WITH ORDINALITY AS e(id, t, d, m, ord) "
         "ORDER BY e.ord RETURNING global_position, stream_version",
         {kTextOid, kInt4Oid, kInt8Oid, kUuidArrayOid, kTextArrayOid, kByteaArrayOid, kTextArrayOid, kInt8Oid}},
        // The same for a batch of appends to distinct streams (keel_append_batch's parameters, the requests sorted by
        // stream id): the matching stream rows, found by one index scan (`= ANY`, so in index order, which is also
        // the order the rows are locked in; each row finds its request by array_position, which no index serves, so
        // the scan is not repeated per request), take their new versions, the rows of streams expected not to exist
        // are created, and both feed one INSERT of all their events.
        {"append_fast_batch",
         "WITH r AS (SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::int4[]) WITH ORDINALITY "
         "AS r(stream, kind, expected, n, k)), "
         "u AS (UPDATE keel_streams ks SET version = ks.version + r.n, updated_at = $10 FROM r "
         "WHERE ks.stream_id = ANY($1::text[]) AND r.k = array_position($1::text[], ks.stream_id) AND ks.state = 0 "
         "AND (r.kind = 0 OR "
         "(r.kind = 1 AND ks.version < 0) OR (r.kind = 2 AND ks.version >= 0) OR (r.kind = 3 AND ks.version = "
         "r.expected)) RETURNING ks.stream_id, ks.version, r.k, r.n), "
         "c AS (INSERT INTO keel_streams (stream_id, version, state, updated_at) SELECT r.stream, r.n - 1, 0, $10 "
         "FROM r WHERE r.kind = 1 OR (r.kind = 3 AND r.expected = -1) ORDER BY r.k "
         "ON CONFLICT (stream_id) DO NOTHING RETURNING stream_id, version), "
         "s AS (SELECT * FROM u UNION ALL SELECT c.stream_id, c.version, r.k, r.n FROM c JOIN r ON r.stream = "
         "c.stream_id), "
         "e AS (SELECT e.*, row_number() OVER (PARTITION BY e.req ORDER BY e.ord) AS j FROM unnest($5::int4[], "
         "$6::uuid[], $7::text[], $8::bytea[], $9::text[]) WITH ORDINALITY AS e(req, id, t, d, m, ord)) "
         "INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at) "
         "SELECT e.id, s.stream_id, s.version - s.n + e.j, e.t, e.d, e.m, $10 FROM s JOIN e ON e.req = s.k "
         "ORDER BY e.ord RETURNING global_position, stream_id, stream_version",
         {kTextArrayOid, kInt4ArrayOid, kInt8ArrayOid, kInt4ArrayOid, kInt4ArrayOid, kUuidArrayOid, kTextArrayOid,
          kByteaArrayOid, kTextArrayOid, kInt8Oid}},
        {"append_batch",
         "SELECT o_code, o_actual, o_first, o_last, o_next FROM keel_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, "
         "$10) ORDER BY o_ord",
         {kTextArrayOid, kInt4ArrayOid, kInt8ArrayOid, kInt4ArrayOid, kInt4ArrayOid, kUuidArrayOid, kTextArrayOid,
          kByteaArrayOid, kTextArrayOid, kInt8Oid}},
        {"lookup_id",
         "SELECT global_position, stream_id, stream_version, type, data, metadata FROM keel_events WHERE event_id = $1",
         {kUuidOid}},
        {"get_stream", fmt::format("SELECT {} FROM keel_streams WHERE stream_id = $1", kStreamColumns), {kTextOid}},
        {"stream_fwd",
         fmt::format("SELECT {} FROM keel_events WHERE stream_id = $1 AND stream_version >= $2{} "
                     "ORDER BY stream_version ASC LIMIT $6",
                     kEventColumns, range),
         {kTextOid, kInt8Oid, kInt8Oid, kInt8Oid, kInt8Oid, kInt8Oid}},
        {"stream_bwd",
         fmt::format("SELECT {} FROM keel_events WHERE stream_id = $1 AND stream_version <= $2 AND "
                     "stream_version >= $7{} ORDER BY stream_version DESC LIMIT $6",
                     kEventColumns, range),
         {kTextOid, kInt8Oid, kInt8Oid, kInt8Oid, kInt8Oid, kInt8Oid, kInt8Oid}},
        // $all after the event with the largest position below $1, in commit-horizon order.
        {"read_all",
         fmt::format(
             "WITH c AS (SELECT transaction_id AS x, global_position AS p FROM keel_events WHERE global_position < $1 "
             "ORDER BY global_position DESC LIMIT 1) "
             "SELECT {} FROM keel_events e WHERE (e.transaction_id, e.global_position) > "
             "(COALESCE((SELECT x FROM c), '0'::xid8), COALESCE((SELECT p FROM c), 0)) "
             "AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot()) "
             "AND ($2::int8 IS NULL OR e.global_position <= $2) AND ($3::int8 IS NULL OR e.recorded_at <= $3) "
             "AND ($4::text[] IS NULL OR split_part(e.stream_id, '-', 1) = ANY($4)) "
             "AND ($5::text[] IS NULL OR e.type = ANY($5)) "
             "ORDER BY e.transaction_id, e.global_position LIMIT $6",
             kEventColumns),
         {kInt8Oid, kInt8Oid, kInt8Oid, kTextArrayOid, kTextArrayOid, kInt8Oid}},
        // The last event in $all order that every reader can see.
        {"head",
         "SELECT global_position FROM keel_events WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot()) "
         "ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
         {}},
        {"load_snapshot", "SELECT stream_id, version, type, data, recorded_at FROM keel_snapshots WHERE stream_id = $1",
         {kTextOid}},
    };
}

// A connection with keel's search_path and prepared statements.
Result<std::unique_ptr<Conn>> OpenConn(const PgConfig& cfg) {
    auto conn = Conn::Connect(cfg.conninfo);
    if (!conn.ok()) return conn.status();
    if (!cfg.schema.empty()) {
        char* ident = PQescapeIdentifier((*conn)->get(), cfg.schema.data(), cfg.schema.size());
        if (ident == nullptr) return Status::InvalidArgument("postgresql URI: bad schema name '" + cfg.schema + "'");
        const std::string quoted(ident);
        PQfreemem(ident);
        KEEL_RETURN_IF_ERROR((*conn)->Exec("SET search_path TO " + quoted));
    }
    return conn;
}

Status PrepareAll(Conn& conn) {
    for (const auto& s : Statements()) {
        KEEL_RETURN_IF_ERROR(conn.Prepare(s.name, s.sql, static_cast<int>(s.types.size()), s.types.data()));
    }
    return Status::Ok();
}

Result<std::unique_ptr<Conn>> OpenPreparedConn(const PgConfig& cfg) {
    auto conn = OpenConn(cfg);
    if (!conn.ok()) return conn.status();
    KEEL_RETURN_IF_ERROR(PrepareAll(**conn));
    return conn;
}

// The writer's session: its prepared statements always run their generic plan (planning append_fast_batch anew for
// every batch's arrays cost more than running it, and a custom plan's estimate can keep the plan cache choosing
// custom plans for good), and with index paths only (a generic plan made while keel_streams was small must not scan
// it all once it is large: docs/postgres.md, schema 4). Every statement the writer runs has an index path.
Status SetUpWriter(Conn& conn) {
    return conn.Exec("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off");
}

Result<std::unique_ptr<Conn>> OpenWriterConn(const PgConfig& cfg) {
    auto conn = OpenPreparedConn(cfg);
    if (!conn.ok()) return conn.status();
    KEEL_RETURN_IF_ERROR(SetUpWriter(**conn));
    return conn;
}

Status Migrate(Conn& conn, const PgConfig& cfg) {
    if (!cfg.schema.empty()) {
        char* ident = PQescapeIdentifier(conn.get(), cfg.schema.data(), cfg.schema.size());
        const std::string quoted(ident != nullptr ? ident : "");
        PQfreemem(ident);
        KEEL_RETURN_IF_ERROR(conn.Exec("CREATE SCHEMA IF NOT EXISTS " + quoted));
    }
    KEEL_RETURN_IF_ERROR(conn.Exec("BEGIN"));
    auto body = [&]() -> Status {
        // Serializes concurrent first opens by several processes.
        KEEL_RETURN_IF_ERROR(conn.Exec("SELECT pg_advisory_xact_lock(7305186411)"));
        KEEL_RETURN_IF_ERROR(conn.Exec(
            "CREATE TABLE IF NOT EXISTS keel_schema (component text PRIMARY KEY, version bigint NOT NULL, "
            "updated_at bigint NOT NULL)"));
        auto v = conn.ExecParams("SELECT version FROM keel_schema WHERE component = 'event_store'", Params());
        if (!v.ok()) return v.status();
        int64_t version = PQntuples(v->get()) == 0 ? 0 : pg::GetInt8(v->get(), 0, 0);
        if (version > kPostgresSchemaVersion) {
            return Status::NotSupported(fmt::format(
                "PostgreSQL store {} has event-store schema version {}, newer than this keel build supports ({}); "
                "upgrade keel",
                conn.Describe(), version, kPostgresSchemaVersion));
        }
        for (int64_t i = version; i < kPostgresSchemaVersion; ++i) {
            KEEL_RETURN_IF_ERROR(conn.Exec(pg_schema::kMigrations[static_cast<size_t>(i)])
                                     .WithContext(fmt::format("migrating schema {} -> {}", i, i + 1)));
        }
        if (version != kPostgresSchemaVersion) {
            auto r = conn.ExecParams(
                "INSERT INTO keel_schema (component, version, updated_at) VALUES ('event_store', $1, $2) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                Params().Int8(kPostgresSchemaVersion).Int8(NowMicros()));
            if (!r.ok()) return r.status();
        }
        return Status::Ok();
    };
    Status s = body();
    if (!s.ok()) {
        (void)conn.Exec("ROLLBACK");
        return s;
    }
    return conn.Exec("COMMIT");
}

int32_t KindCode(ExpectedVersion e) {
    switch (e.kind()) {
        case ExpectedVersion::Kind::kAny: return 0;
        case ExpectedVersion::Kind::kNoStream: return 1;
        case ExpectedVersion::Kind::kStreamExists: return 2;
        case ExpectedVersion::Kind::kExact: return 3;
    }
    return 0;
}

// append_fast_one's parameters: AppendParams for a one-event append, without arrays.
Params AppendOneParams(const AppendRequest& r, int64_t now) {
    const EventData& e = r.events.front();
    Params p;
    p.Text(r.stream).Int4(KindCode(r.expected)).Int8(r.expected.version());
    p.Uuid(e.event_id).Text(e.type).Bytea(e.data).Text(e.metadata).Int8(now);
    return p;
}

Params AppendParams(const AppendRequest& r, int64_t now) {
    std::vector<std::string_view> ids, types, data, meta;
    for (const EventData& e : r.events) {
        ids.push_back(e.event_id.bytes_view());
        types.push_back(e.type);
        data.push_back(e.data);
        meta.push_back(e.metadata);
    }
    Params p;
    p.Text(r.stream).Int4(KindCode(r.expected)).Int8(r.expected.version());
    p.Array(pg::kUuidArrayOid, pg::kUuidOid, ids);
    p.Array(pg::kTextArrayOid, pg::kTextOid, types);
    p.Array(pg::kByteaArrayOid, pg::kByteaOid, data);
    p.Array(pg::kTextArrayOid, pg::kTextOid, meta);
    p.Int8(now);
    return p;
}

// The parameters of keel_append_batch for a whole batch: per request its stream, expectation and event count, per
// event (flattened in request order) its request (1-based) and columns.
Params BatchParams(std::span<AppendRequest* const> batch, int64_t now) {
    std::vector<std::string_view> streams, ids, types, data, meta;
    std::vector<int32_t> kinds, counts, req;
    std::vector<int64_t> expected;
    for (size_t k = 0; k < batch.size(); ++k) {
        const AppendRequest& r = *batch[k];
        streams.push_back(r.stream);
        kinds.push_back(KindCode(r.expected));
        expected.push_back(r.expected.version());
        counts.push_back(static_cast<int32_t>(r.events.size()));
        for (const EventData& e : r.events) {
            req.push_back(static_cast<int32_t>(k + 1));
            ids.push_back(e.event_id.bytes_view());
            types.push_back(e.type);
            data.push_back(e.data);
            meta.push_back(e.metadata);
        }
    }
    Params p;
    p.Array(pg::kTextArrayOid, pg::kTextOid, streams).Int4Array(kinds).Int8Array(expected).Int4Array(counts);
    p.Int4Array(req);
    p.Array(pg::kUuidArrayOid, pg::kUuidOid, ids);
    p.Array(pg::kTextArrayOid, pg::kTextOid, types);
    p.Array(pg::kByteaArrayOid, pg::kByteaOid, data);
    p.Array(pg::kTextArrayOid, pg::kTextOid, meta);
    p.Int8(now);
    return p;
}

Result<std::optional<StoredEventRef>> LookupEventId(Conn& conn, const Uuid& id) {
    auto r = conn.ExecPrepared("lookup_id", Params().Uuid(id));
    if (!r.ok()) return r.status();
    if (PQntuples(r->get()) == 0) return std::optional<StoredEventRef>();
    const PGresult* x = r->get();
    return std::optional<StoredEventRef>(StoredEventRef{
        pg::GetInt8(x, 0, 0), std::string(pg::GetBytes(x, 0, 1)), pg::GetInt8(x, 0, 2),
        std::string(pg::GetBytes(x, 0, 3)), std::string(pg::GetBytes(x, 0, 4)), std::string(pg::GetBytes(x, 0, 5))});
}

Status Tombstoned(std::string_view stream) {
    return Status::StreamDeleted(fmt::format("stream '{}' was hard-deleted (tombstoned)", stream));
}

// Turns row `row` of keel_append's (or keel_append_batch's) result into the append's result; ids reported stored are
// looked up on `conn` to tell an idempotent re-send from a misuse.
Result<AppendResult> DecideAppend(const AppendRequest& req, const PGresult* r, int row, Conn& conn) {
    const int32_t code = pg::GetInt4(r, row, 0);
    if (code == 0) {
        AppendResult ok;
        ok.first_position = pg::GetInt8(r, row, 2);
        ok.last_position = pg::GetInt8(r, row, 3);
        ok.next_expected_version = pg::GetInt8(r, row, 4);
        return ok;
    }
    if (code == 3) return Tombstoned(req.stream);
    const int64_t actual = pg::IsNull(r, row, 1) ? -1 : pg::GetInt8(r, row, 1);
    auto replay =
        MatchStoredAppend(req.stream, req.expected, req.events, [&](const Uuid& id) { return LookupEventId(conn, id); });
    if (!replay.ok()) return replay.status();
    if (replay->has_value()) return **replay;
    if (code == 2) return Status::Unavailable("an event id was reported stored but cannot be found; retry");
    return Status::WrongExpectedVersion(fmt::format("stream '{}': expected version {} but the stream is at {}",
                                                    req.stream, req.expected.ToString(), actual),
                                        actual);
}

// `?` placeholders (keel's portable form) → `$1, $2, …`, leaving quoted text alone.
std::string NumberPlaceholders(std::string_view sql) {
    std::string out;
    out.reserve(sql.size() + 8);
    int n = 0;
    char quote = 0;
    for (char c : sql) {
        if (quote != 0) {
            if (c == quote) quote = 0;
            out.push_back(c);
        } else if (c == '\'' || c == '"') {
            quote = c;
            out.push_back(c);
        } else if (c == '?') {
            out += fmt::format("${}", ++n);
        } else {
            out.push_back(c);
        }
    }
    return out;
}

std::string HeadersJson(const Headers& headers) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : headers) j[k] = v;
    return j.dump();
}

Headers ParseHeaders(std::string_view text) {
    Headers out;
    auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return out;
    for (auto it = j.begin(); it != j.end(); ++it) {
        out.emplace_back(it.key(), it.value().is_string() ? it.value().get<std::string>() : it.value().dump());
    }
    return out;
}

// A unit of work's transaction on a connection of its own (borrowed from the pool for its lifetime). Each statement
// runs under a savepoint, so a failed one leaves the transaction usable, as on SQLite.
class PgTransaction final : public TransactionBackend {
public:
    explicit PgTransaction(Pool<Conn>::Lease conn) : conn_(std::move(conn)) {}
    ~PgTransaction() override {
        if (open_) (void)conn_->Exec("ROLLBACK");
    }

    Status Begin() { return conn_->Exec("BEGIN"); }
    // The NOTIFY that Commit sends first when outbox rows were written (pg::OutboxNotifySql).
    void SetOutboxNotify(std::string sql) { outbox_notify_ = std::move(sql); }

    Result<int64_t> Exec(std::string_view sql, std::span<const SqlValue> params) override {
        auto r = Guarded([&] { return Run(sql, params); });
        if (!r.ok()) return r.status();
        const char* n = PQcmdTuples(r->get());
        return n != nullptr && *n != '\0' ? std::stoll(n) : int64_t{0};
    }

    Result<Rows> Query(std::string_view sql, std::span<const SqlValue> params) override {
        auto r = Guarded([&] { return Run(sql, params); });
        if (!r.ok()) return r.status();
        const PGresult* res = r->get();
        Rows rows;
        const int cols = PQnfields(res);
        for (int c = 0; c < cols; ++c) rows.columns.emplace_back(PQfname(res, c));
        for (int i = 0; i < PQntuples(res); ++i) {
            std::vector<SqlValue> row;
            for (int c = 0; c < cols; ++c) row.push_back(Cell(res, i, c));
            rows.rows.push_back(std::move(row));
        }
        return rows;
    }

    Result<AppendResult> Append(const AppendRequest& request) override {
        const int64_t now = NowMicros();
        auto r = conn_->ExecPrepared("append", AppendParams(request, now));
        if (!r.ok()) return r.status();  // the transaction is aborted: Commit will fail and roll back
        auto decided = DecideAppend(request, r->get(), 0, *conn_);
        if (decided.ok() && !decided->already_present) last_position_ = std::max(last_position_, decided->last_position);
        return decided;
    }

    Status InsertOutbox(const OutboxMessage& m) override {
        auto r = Guarded([&] {
            return conn_->ExecParams(
                "INSERT INTO keel_outbox (message_id, destination, key, payload, headers, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                Params().Uuid(m.message_id).Text(m.destination).Text(m.key).Bytea(m.payload).Text(HeadersJson(m.headers))
                    .Int8(NowMicros()));
        });
        if (!r.ok() && r.status().code() == StatusCode::kAlreadyExists) {
            return Status::AlreadyExists(fmt::format("message id {} is in the outbox already", m.message_id.ToString()));
        }
        if (r.ok()) outbox_written_ = true;
        return r.status();
    }

    Result<bool> InsertInbox(std::string_view consumer, const Uuid& message_id) override {
        auto r = conn_->ExecParams(
            "INSERT INTO keel_inbox (consumer, message_id, processed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            Params().Text(consumer).Uuid(message_id).Int8(NowMicros()));
        if (!r.ok()) return r.status();
        return std::string_view(PQcmdTuples(r->get())) == "1";
    }

    Result<std::optional<int64_t>> LoadCheckpoint(std::string_view name) override {
        // Locked until commit: two processes running one projection never apply the same batch twice.
        auto r = conn_->ExecParams("SELECT position FROM keel_checkpoints WHERE name = $1 FOR UPDATE",
                                   Params().Text(name));
        if (!r.ok()) return r.status();
        if (PQntuples(r->get()) == 0) return std::optional<int64_t>();
        return std::optional<int64_t>(pg::GetInt8(r->get(), 0, 0));
    }

    Status SaveCheckpoint(std::string_view name, int64_t position) override {
        return conn_
            ->ExecParams("INSERT INTO keel_checkpoints (name, position, updated_at) VALUES ($1, $2, $3) "
                         "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                         Params().Text(name).Int8(position).Int8(NowMicros()))
            .status();
    }

    Result<int64_t> Commit() override {
        KEEL_RETURN_IF_ERROR(NotifyOutbox());
        open_ = false;
        KEEL_RETURN_IF_ERROR(conn_->Exec("COMMIT").WithContext("COMMIT of a unit of work"));
        return last_position_;
    }

private:
    Result<ResultPtr> Run(std::string_view sql, std::span<const SqlValue> params) {
        // Text parameters of unknown type, so PostgreSQL infers each from its use; bytes as bytea.
        std::vector<std::string> text(params.size());
        std::vector<const char*> values(params.size());
        std::vector<int> lengths(params.size()), formats(params.size());
        std::vector<Oid> types(params.size(), 0);
        for (size_t i = 0; i < params.size(); ++i) {
            const SqlValue& v = params[i];
            switch (v.index()) {
                case 0: values[i] = nullptr; break;
                case 1: text[i] = std::to_string(std::get<int64_t>(v)); break;
                case 2: text[i] = fmt::format("{:.17g}", std::get<double>(v)); break;
                case 3: text[i] = std::get<std::string>(v); break;
                case 4:
                    text[i] = std::get<Blob>(v).bytes;
                    formats[i] = 1;
                    types[i] = pg::kByteaOid;
                    break;
            }
            if (v.index() != 0) {
                values[i] = text[i].data();
                lengths[i] = static_cast<int>(text[i].size());
            }
        }
        const std::string numbered = NumberPlaceholders(sql);
        ResultPtr r(PQexecParams(conn_->get(), numbered.c_str(), static_cast<int>(params.size()), types.data(),
                                 values.data(), lengths.data(), formats.data(), 0));
        const auto st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return r;
        Status s = pg::ToStatus(conn_->get(), r.get(), fmt::format("SQL '{}'", sql.substr(0, 80)));
        if (s.code() == StatusCode::kInternal) s = Status::InvalidArgument(s.message());  // syntax, unknown table …
        return s;
    }

    // Runs `fn` under a savepoint: on failure the transaction is rolled back to before it and stays usable.
    template <class F>
    Result<ResultPtr> Guarded(F&& fn) {
        KEEL_RETURN_IF_ERROR(conn_->Exec("SAVEPOINT keel_statement"));
        auto r = fn();
        if (r.ok()) {
            KEEL_RETURN_IF_ERROR(conn_->Exec("RELEASE SAVEPOINT keel_statement"));
        } else {
            (void)conn_->Exec("ROLLBACK TO SAVEPOINT keel_statement");
        }
        return r;
    }

    static SqlValue Cell(const PGresult* r, int row, int col) {
        if (PQgetisnull(r, row, col)) return std::monostate{};
        const char* v = PQgetvalue(r, row, col);
        switch (PQftype(r, col)) {
            case 20:
            case 21:
            case 23: return static_cast<int64_t>(std::stoll(v));
            case 16: return static_cast<int64_t>(v[0] == 't' ? 1 : 0);
            case 700:
            case 701:
            case 1700: return std::stod(v);
            case pg::kByteaOid: {
                size_t n = 0;
                unsigned char* bytes = PQunescapeBytea(reinterpret_cast<const unsigned char*>(v), &n);
                Blob b{std::string(reinterpret_cast<const char*>(bytes), n)};
                PQfreemem(bytes);
                return b;
            }
            default: return std::string(v, static_cast<size_t>(PQgetlength(r, row, col)));
        }
    }

    // Outbox relay wake-ups (pg_outbox_watch.hpp): a transaction that wrote outbox rows notifies the relays'
    // watches (PostgreSQL delivers it at commit, and only then).
    Status NotifyOutbox() {
        if (!outbox_written_ || outbox_notify_.empty()) return Status::Ok();
        return conn_->Exec(outbox_notify_).WithContext("NOTIFY of a unit of work's outbox rows");
    }

    Pool<Conn>::Lease conn_;
    int64_t last_position_ = 0;
    bool open_ = true;
    std::string outbox_notify_;
    bool outbox_written_ = false;
};

// How long an append batch keeps retrying through lost connections before giving up.
constexpr auto kReconnectBudget = std::chrono::seconds(15);

class PostgresBackend final : public StoreBackend {
public:
    PostgresBackend(PgConfig cfg, std::unique_ptr<Conn> writer)
        : cfg_(std::move(cfg)),
          writer_(std::move(writer)),
          readers_([cfg = cfg_] { return OpenPreparedConn(cfg); }, /*max_idle=*/8) {}

    void AppendBatch(std::span<AppendRequest* const> batch) override {
        std::lock_guard lock(write_mu_);
        const auto deadline = std::chrono::steady_clock::now() + kReconnectBudget;
        auto backoff = std::chrono::milliseconds(50);
        std::vector<AppendRequest*> todo(batch.begin(), batch.end());  // the requests not decided yet
        for (;;) {
            Status s = TryAppendBatch(todo);
            if (s.ok()) return;
            const bool lost = writer_ == nullptr || pg::IsConnectionLost(writer_->get());
            if (!lost || std::chrono::steady_clock::now() >= deadline) {
                for (AppendRequest* r : todo) {
                    r->result = lost ? s.WithContext("the connection to PostgreSQL was lost and did not come back; "
                                                     "the append's outcome is unknown, and retrying it with the "
                                                     "same event ids is safe")
                                     : s;
                }
                return;
            }
            // The connection broke; whether the commit happened is unknown. Reconnect and run the same batch
            // again: appends that did commit come back as idempotent re-sends (their event ids are stored).
            writer_.reset();
            readers_.Clear();
            std::this_thread::sleep_for(backoff);
            backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
            auto conn = OpenWriterConn(cfg_);
            if (conn.ok()) writer_ = std::move(*conn);
        }
    }

    Result<std::vector<RecordedEvent>> ReadStreamRange(std::string_view stream, const StreamRange& range) override {
        Params p;
        p.Text(stream);
        p.Int8(range.direction == ReadDirection::kForward ? std::max(range.from_version, range.min_version)
                                                          : range.from_version);
        p.OptInt8(range.min_recorded_at).OptInt8(range.max_position).OptInt8(range.max_recorded_at);
        p.Int8(range.limit == 0 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(range.limit));
        if (range.direction == ReadDirection::kBackward) p.Int8(range.min_version);
        auto r = ReadPrepared(range.direction == ReadDirection::kForward ? "stream_fwd" : "stream_bwd", p);
        if (!r.ok()) return r.status();
        return DecodeEvents(r->get());
    }

    Result<ReadAllSlice> ReadAll(const ReadAllOptions& o) override {
        Params p;
        p.Int8(o.from_position).OptInt8(o.as_of_position).OptInt8(o.as_of_time);
        p.TextArray(o.categories).TextArray(o.types);
        p.Int8(o.limit == 0 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(o.limit));
        auto r = ReadPrepared("read_all", p);
        if (!r.ok()) return r.status();
        ReadAllSlice slice;
        slice.events = DecodeEvents(r->get());
        const bool full = o.limit != 0 && slice.events.size() >= o.limit;
        slice.end_of_all = !full;
        slice.next_position = slice.events.empty() ? o.from_position : slice.events.back().global_position + 1;
        return slice;
    }

    Result<int64_t> HeadPosition() override {
        auto r = ReadPrepared("head", Params());
        if (!r.ok()) return r.status();
        return PQntuples(r->get()) == 0 ? int64_t{0} : pg::GetInt8(r->get(), 0, 0);
    }

    Result<std::optional<StreamInfo>> GetStream(std::string_view stream) override {
        auto r = ReadPrepared("get_stream", Params().Text(stream));
        if (!r.ok()) return r.status();
        if (PQntuples(r->get()) == 0) return std::optional<StreamInfo>();
        return std::optional<StreamInfo>(DecodeStream(r->get(), 0));
    }

    Result<std::vector<StreamInfo>> ListStreams(std::string_view after, size_t limit) override {
        auto r = Read(fmt::format("SELECT {} FROM keel_streams WHERE stream_id > $1 COLLATE \"C\" "
                                  "ORDER BY stream_id COLLATE \"C\" LIMIT $2",
                                  kStreamColumns),
                      Params().Text(after).Int8(limit == 0 ? std::numeric_limits<int64_t>::max()
                                                           : static_cast<int64_t>(limit)));
        if (!r.ok()) return r.status();
        std::vector<StreamInfo> out;
        for (int i = 0; i < PQntuples(r->get()); ++i) out.push_back(DecodeStream(r->get(), i));
        return out;
    }

    Status SetStreamMetadata(std::string_view stream, const StreamMetadata& m) override {
        return WriteTxn("setting stream metadata", [&](Conn& c) -> Status {
            auto info = LockStream(c, stream);
            if (!info.ok()) return info.status();
            if (info->has_value() && (*info)->state == StreamState::kTombstoned) return Tombstoned(stream);
            Params p;
            p.Text(stream).OptInt8(m.max_count);
            p.OptInt8(m.max_age ? std::optional<int64_t>(m.max_age->count()) : std::nullopt);
            p.OptInt8(m.truncate_before).Text(m.custom).Int8(NowMicros());
            return c.ExecParams(
                        "INSERT INTO keel_streams (stream_id, version, state, max_count, max_age_us, truncate_before, "
                        "custom_metadata, updated_at) VALUES ($1, -1, 0, $2, $3, $4, $5, $6) "
                        "ON CONFLICT (stream_id) DO UPDATE SET max_count = excluded.max_count, max_age_us = "
                        "excluded.max_age_us, truncate_before = excluded.truncate_before, custom_metadata = "
                        "excluded.custom_metadata, updated_at = excluded.updated_at",
                        p)
                .status();
        });
    }

    Status DeleteStream(std::string_view stream, ExpectedVersion expected, DeleteMode mode) override {
        return WriteTxn("deleting a stream", [&](Conn& c) -> Status {
            auto info = LockStream(c, stream);
            if (!info.ok()) return info.status();
            const StreamInfo* current = info->has_value() ? &**info : nullptr;
            KEEL_RETURN_IF_ERROR(CheckExpected(stream, expected, current));
            if (mode == DeleteMode::kSoft && EffectiveVersion(current) < 0) {
                return Status::NotFound(fmt::format("stream '{}' does not exist; nothing to delete", stream));
            }
            // A snapshot folds the deleted events: a re-opened stream must not start from it.
            KEEL_RETURN_IF_ERROR(
                c.ExecParams("DELETE FROM keel_snapshots WHERE stream_id = $1", Params().Text(stream)).status());
            if (mode == DeleteMode::kSoft) {
                return c.ExecParams("UPDATE keel_streams SET state = 1, truncate_before = version + 1, "
                                    "updated_at = $2 WHERE stream_id = $1",
                                    Params().Text(stream).Int8(NowMicros()))
                    .status();
            }
            return c.ExecParams("INSERT INTO keel_streams (stream_id, version, state, updated_at) VALUES ($1, -1, 2, $2) "
                                "ON CONFLICT (stream_id) DO UPDATE SET state = 2, updated_at = excluded.updated_at",
                                Params().Text(stream).Int8(NowMicros()))
                .status();
        });
    }

    Status SaveSnapshot(const Snapshot& s) override {
        return WriteTxn("saving a snapshot", [&](Conn& c) -> Status {
            Params p;
            p.Text(s.stream_id).Int8(s.version).Text(s.type).Bytea(s.data).Int8(NowMicros());
            return c.ExecParams("INSERT INTO keel_snapshots (stream_id, version, type, data, recorded_at) "
                                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (stream_id) DO UPDATE SET version = "
                                "excluded.version, type = excluded.type, data = excluded.data, recorded_at = "
                                "excluded.recorded_at",
                                p)
                .status();
        });
    }

    Result<std::optional<Snapshot>> LoadSnapshot(std::string_view stream) override {
        auto r = ReadPrepared("load_snapshot", Params().Text(stream));
        if (!r.ok()) return r.status();
        if (PQntuples(r->get()) == 0) return std::optional<Snapshot>();
        Snapshot s;
        s.stream_id = std::string(pg::GetBytes(r->get(), 0, 0));
        s.version = pg::GetInt8(r->get(), 0, 1);
        s.type = std::string(pg::GetBytes(r->get(), 0, 2));
        s.data = std::string(pg::GetBytes(r->get(), 0, 3));
        s.recorded_at = pg::GetInt8(r->get(), 0, 4);
        return std::optional<Snapshot>(std::move(s));
    }

    Result<std::optional<int64_t>> LoadCheckpoint(std::string_view name) override {
        auto r = Read("SELECT position FROM keel_checkpoints WHERE name = $1", Params().Text(name));
        if (!r.ok()) return r.status();
        if (PQntuples(r->get()) == 0) return std::optional<int64_t>();
        return std::optional<int64_t>(pg::GetInt8(r->get(), 0, 0));
    }

    Status SaveCheckpoint(std::string_view name, int64_t position) override {
        // The checkpoint keeps the compound cursor: the position and the transaction id of that event.
        return WriteTxn("saving a checkpoint", [&](Conn& c) -> Status {
            return c.ExecParams(
                        "INSERT INTO keel_checkpoints (name, position, transaction_id, updated_at) VALUES ($1, $2, "
                        "(SELECT transaction_id FROM keel_events WHERE global_position = $2), $3) "
                        "ON CONFLICT (name) DO UPDATE SET position = excluded.position, transaction_id = "
                        "excluded.transaction_id, updated_at = excluded.updated_at",
                        Params().Text(name).Int8(position).Int8(NowMicros()))
                .status();
        });
    }

    Result<StoreStats> Stats() override {
        auto r = Read(
            "SELECT (SELECT count(*) FROM keel_events), (SELECT count(*) FROM keel_streams), "
            "(SELECT pg_total_relation_size('keel_events') + pg_total_relation_size('keel_streams') + "
            "pg_total_relation_size('keel_snapshots'))::int8",
            Params());
        if (!r.ok()) return r.status();
        StoreStats st;
        st.backend = "postgresql";
        st.events = pg::GetInt8(r->get(), 0, 0);
        st.streams = pg::GetInt8(r->get(), 0, 1);
        st.size_bytes = pg::GetInt8(r->get(), 0, 2);
        auto head = HeadPosition();
        if (!head.ok()) return head.status();
        st.head_position = *head;
        auto cps = Read("SELECT name, position, updated_at FROM keel_checkpoints ORDER BY name", Params());
        if (!cps.ok()) return cps.status();
        for (int i = 0; i < PQntuples(cps->get()); ++i) {
            st.checkpoints.push_back(CheckpointInfo{std::string(pg::GetBytes(cps->get(), i, 0)),
                                                    pg::GetInt8(cps->get(), i, 1), pg::GetInt8(cps->get(), i, 2)});
        }
        auto lease = readers_.Acquire();
        if (lease.ok()) st.location = (**lease).Describe() + (cfg_.schema.empty() ? "" : " schema " + cfg_.schema);
        return st;
    }

    Result<std::unique_ptr<TransactionBackend>> BeginTransaction() override {
        auto lease = readers_.Acquire();
        if (!lease.ok()) return lease.status();
        if (pg::IsConnectionLost((*lease)->get())) {  // an idle connection the server dropped: take a fresh one
            lease->Discard();
            readers_.Clear();
            return BeginTransaction();
        }
        auto tx = std::make_unique<PgTransaction>(std::move(*lease));
        tx->SetOutboxNotify(pg::OutboxNotifySql(cfg_.schema));
        KEEL_RETURN_IF_ERROR(tx->Begin());
        return std::unique_ptr<TransactionBackend>(std::move(tx));
    }

    std::unique_ptr<OutboxWatch> WatchOutbox(std::function<void()> on_commit) override {
        return pg::StartOutboxWatch(cfg_.conninfo, cfg_.schema, std::move(on_commit));
    }

    Result<bool> AcquireLease(std::string_view name, std::string_view owner, int64_t now, int64_t until) override {
        auto r = Read("INSERT INTO keel_leases (name, owner, until) VALUES ($1, $2, $4) ON CONFLICT (name) DO UPDATE "
                      "SET owner = excluded.owner, until = excluded.until "
                      "WHERE keel_leases.owner = $2 OR keel_leases.until < $3 RETURNING owner",
                      Params().Text(name).Text(owner).Int8(now).Int8(until));
        if (!r.ok()) return r.status();
        return PQntuples(r->get()) == 1;
    }

    Status ReleaseLease(std::string_view name, std::string_view owner) override {
        return Read("DELETE FROM keel_leases WHERE name = $1 AND owner = $2", Params().Text(name).Text(owner)).status();
    }

    // Outbox rows in commit-horizon order, as $all: a row of a still-running transaction can never later appear
    // before rows already handed out.
    Result<std::vector<OutboxRow>> PendingOutbox(size_t limit) override {
        auto r = Read("SELECT id, message_id, destination, key, payload, headers, created_at FROM keel_outbox "
                      "WHERE published_at IS NULL AND transaction_id < pg_snapshot_xmin(pg_current_snapshot()) "
                      "ORDER BY transaction_id, id LIMIT $1",
                      Params().Int8(static_cast<int64_t>(limit)));
        if (!r.ok()) return r.status();
        std::vector<OutboxRow> rows;
        for (int i = 0; i < PQntuples(r->get()); ++i) {
            OutboxRow row;
            row.position = pg::GetInt8(r->get(), i, 0);
            auto id = Uuid::FromBytes(pg::GetBytes(r->get(), i, 1));
            if (id.ok()) row.message.message_id = *id;
            row.message.destination = std::string(pg::GetBytes(r->get(), i, 2));
            row.message.key = std::string(pg::GetBytes(r->get(), i, 3));
            row.message.payload = std::string(pg::GetBytes(r->get(), i, 4));
            row.message.headers = ParseHeaders(pg::GetBytes(r->get(), i, 5));
            row.created_at = pg::GetInt8(r->get(), i, 6);
            rows.push_back(std::move(row));
        }
        return rows;
    }

    Status MarkPublished(std::string_view lease, std::string_view owner, std::span<const int64_t> positions,
                         int64_t now) override {
        return WriteTxn("marking outbox rows published", [&](Conn& c) -> Status {
            auto held = c.ExecParams("SELECT owner FROM keel_leases WHERE name = $1 FOR UPDATE", Params().Text(lease));
            if (!held.ok()) return held.status();
            if (PQntuples(held->get()) != 1 || pg::GetBytes(held->get(), 0, 0) != owner) {
                return Status::FailedPrecondition(
                    fmt::format("relay '{}' lost the lease '{}'; another relay publishes now", owner, lease));
            }
            std::vector<std::string> ids;
            for (int64_t p : positions) ids.push_back(std::to_string(p));
            return c.ExecParams("UPDATE keel_outbox SET published_at = $2 WHERE id = ANY($1::text[]::bigint[])",
                                Params().TextArray(ids).Int8(now))
                .status();
        });
    }

    Result<int64_t> RepublishOutbox(int64_t from) override {
        auto r = Read("UPDATE keel_outbox SET published_at = NULL WHERE id >= $1 AND published_at IS NOT NULL",
                      Params().Int8(from));
        if (!r.ok()) return r.status();
        return static_cast<int64_t>(std::stoll(PQcmdTuples(r->get())));
    }

    Result<int64_t> PurgeOutbox(int64_t published_before) override {
        auto r = Read("DELETE FROM keel_outbox WHERE published_at IS NOT NULL AND published_at < $1",
                      Params().Int8(published_before));
        if (!r.ok()) return r.status();
        return static_cast<int64_t>(std::stoll(PQcmdTuples(r->get())));
    }

    Result<OutboxStats> GetOutboxStats() override {
        auto r = Read("SELECT (SELECT count(*) FROM keel_outbox WHERE published_at IS NULL), "
                      "(SELECT count(*) FROM keel_outbox WHERE published_at IS NOT NULL), "
                      "(SELECT COALESCE(min(created_at), 0) FROM keel_outbox WHERE published_at IS NULL), "
                      "(SELECT COALESCE(max(id), 0) FROM keel_outbox)",
                      Params());
        if (!r.ok()) return r.status();
        return OutboxStats{pg::GetInt8(r->get(), 0, 0), pg::GetInt8(r->get(), 0, 1), pg::GetInt8(r->get(), 0, 2),
                           pg::GetInt8(r->get(), 0, 3)};
    }

private:
    // One attempt at the requests of `todo`, each transaction in autocommit: first the plain statement (one round
    // trip and one commit for the usual batch), then one keel_append_batch call (keel_append for a batch of one) for
    // the requests it did not take. Requests decided are removed from `todo`. Returns non-OK only when the requests
    // left failed as a whole (their results are then left to the caller).
    Status TryAppendBatch(std::vector<AppendRequest*>& todo) {
        if (writer_ == nullptr) return Status::Unavailable("no connection to PostgreSQL");
        const int64_t now = std::max(NowMicros(), last_now_);
        if (Status s = TryFastAppend(todo, now); !s.ok()) return s;
        if (todo.empty()) return Status::Ok();
        const std::span<AppendRequest* const> batch(todo);
        // A lone append calls keel_append, which has less to set up than keel_append_batch.
        auto r = batch.size() == 1 ? writer_->ExecPrepared("append", AppendParams(*batch[0], now))
                                   : writer_->ExecPrepared("append_batch", BatchParams(batch, now));
        if (!r.ok()) return r.status();
        if (PQntuples(r->get()) != static_cast<int>(batch.size())) {
            return Status::Internal(fmt::format("keel_append(_batch) returned {} rows for {} appends",
                                                PQntuples(r->get()), batch.size()));
        }
        last_now_ = now;
        // Decide each request; ids already stored need lookups (after the commit: stored events are permanent).
        for (size_t i = 0; i < batch.size(); ++i) {
            batch[i]->result = DecideAppend(*batch[i], r->get(), static_cast<int>(i), *writer_);
        }
        todo.clear();
        return Status::Ok();
    }

    // The plain statements (append_fast*): the requests they appended are decided and removed
    // from `todo`. One that failed wrote nothing (a statement is atomic): an event id stored already, a deadlock with
    // another process — keel_append(_batch) then decides them all. Non-OK only when the connection was lost.
    Status TryFastAppend(std::vector<AppendRequest*>& todo, int64_t now) {
        std::vector<AppendRequest*> sorted(todo);
        std::sort(sorted.begin(), sorted.end(),
                  [](const AppendRequest* a, const AppendRequest* b) { return a->stream < b->stream; });
        for (size_t i = 1; i < sorted.size(); ++i) {
            if (sorted[i]->stream == sorted[i - 1]->stream) return Status::Ok();  // one stream twice: in order, below
        }
        const auto lone = [&] {
            const ExpectedVersion& e = sorted[0]->expected;
            const bool create = e.kind() == ExpectedVersion::Kind::kNoStream ||
                                (e.kind() == ExpectedVersion::Kind::kExact && e.version() == -1);
            if (!create && sorted[0]->events.size() == 1) {
                return writer_->ExecPrepared("append_fast_one", AppendOneParams(*sorted[0], now));
            }
            return writer_->ExecPrepared(create ? "append_fast_new" : "append_fast", AppendParams(*sorted[0], now));
        };
        auto r = sorted.size() == 1 ? lone() : writer_->ExecPrepared("append_fast_batch", BatchParams(sorted, now));
        if (!r.ok()) return pg::IsConnectionLost(writer_->get()) ? r.status() : Status::Ok();
        const PGresult* x = r->get();
        const int rows = PQntuples(x);
        if (rows == 0) return Status::Ok();
        last_now_ = now;
        // Rows of one stream belong to the one request for it.
        std::map<std::string_view, std::pair<AppendResult, size_t>, std::less<>> written;
        for (int i = 0; i < rows; ++i) {
            const std::string_view stream = sorted.size() == 1 ? sorted[0]->stream : pg::GetBytes(x, i, 1);
            const int64_t position = pg::GetInt8(x, i, 0);
            const int64_t version = pg::GetInt8(x, i, sorted.size() == 1 ? 1 : 2);
            auto [it, fresh] = written.try_emplace(stream);
            AppendResult& a = it->second.first;
            if (fresh) {
                a.first_position = a.last_position = position;
                a.next_expected_version = version;
            }
            a.first_position = std::min(a.first_position, position);
            a.last_position = std::max(a.last_position, position);
            a.next_expected_version = std::max(a.next_expected_version, version);
            ++it->second.second;
        }
        std::erase_if(todo, [&](AppendRequest* req) {
            auto it = written.find(req->stream);
            if (it == written.end()) return false;
            if (it->second.second == req->events.size()) {
                req->result = it->second.first;
            } else {
                req->result = Status::Internal(fmt::format("stream '{}': the append statement wrote {} rows for {} "
                                                           "events",
                                                           req->stream, it->second.second, req->events.size()));
            }
            return true;
        });
        return Status::Ok();
    }

    // The stream's row, locked for this transaction (writer connection).
    Result<std::optional<StreamInfo>> LockStream(Conn& c, std::string_view stream) {
        auto r = c.ExecParams(fmt::format("SELECT {} FROM keel_streams WHERE stream_id = $1 FOR UPDATE", kStreamColumns),
                              Params().Text(stream));
        if (!r.ok()) return r.status();
        if (PQntuples(r->get()) == 0) return std::optional<StreamInfo>();
        return std::optional<StreamInfo>(DecodeStream(r->get(), 0));
    }

    template <class F>
    Status WriteTxn(std::string_view what, F&& body) {
        std::lock_guard lock(write_mu_);
        for (int attempt = 0;; ++attempt) {
            if (writer_ == nullptr || pg::IsConnectionLost(writer_->get())) {
                auto conn = OpenWriterConn(cfg_);
                if (!conn.ok()) return conn.status().WithContext(what);
                writer_ = std::move(*conn);
            }
            Status s = writer_->Exec("BEGIN");
            if (s.ok()) {
                s = body(*writer_);
                if (s.ok()) {
                    s = writer_->Exec("COMMIT");
                } else {
                    (void)writer_->Exec("ROLLBACK");
                    if (!pg::IsConnectionLost(writer_->get())) return s;
                }
            }
            if (s.ok()) return s;
            // These writes are idempotent (upserts of a final state), so one retry after a reconnect is safe.
            if (!pg::IsConnectionLost(writer_->get()) || attempt >= 1) return s.WithContext(what);
            writer_.reset();
        }
    }

    // A read on a pooled connection; a connection found broken is dropped and the read retried once.
    template <class F>
    Result<ResultPtr> WithReader(F&& fn) {
        for (int attempt = 0;; ++attempt) {
            auto lease = readers_.Acquire();
            if (!lease.ok()) return lease.status();
            auto r = fn(**lease);
            if (r.ok() || !pg::IsConnectionLost((*lease)->get()) || attempt >= 1) {
                if (!r.ok() && pg::IsConnectionLost((*lease)->get())) lease->Discard();
                return r;
            }
            lease->Discard();
            readers_.Clear();
        }
    }

    Result<ResultPtr> ReadPrepared(const char* name, const Params& p) {
        return WithReader([&](Conn& c) { return c.ExecPrepared(name, p); });
    }

    Result<ResultPtr> Read(const std::string& sql, const Params& p) {
        return WithReader([&](Conn& c) { return c.ExecParams(sql, p); });
    }

    PgConfig cfg_;
    std::unique_ptr<Conn> writer_;
    Pool<Conn> readers_;
    std::mutex write_mu_;
    int64_t last_now_ = 0;
};

}  // namespace

Result<std::unique_ptr<StoreBackend>> OpenPostgresBackend(const ParsedUri& uri, const StoreOptions&) {
    auto cfg = ParseConfig(uri);
    if (!cfg.ok()) return cfg.status();
    auto conn = OpenConn(*cfg);
    if (!conn.ok()) return conn.status();
    KEEL_RETURN_IF_ERROR(Migrate(**conn, *cfg));
    KEEL_RETURN_IF_ERROR(PrepareAll(**conn));
    KEEL_RETURN_IF_ERROR(SetUpWriter(**conn));
    return std::unique_ptr<StoreBackend>(std::make_unique<PostgresBackend>(std::move(*cfg), std::move(*conn)));
}

}  // namespace keel::detail
