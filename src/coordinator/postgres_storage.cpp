#include "coordinator/postgres_storage.hpp"

#include <chrono>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "store/postgres/pg_conn.hpp"

namespace keel::coordinator {
namespace {

using pg::Conn;
using pg::Params;
using pg::ResultPtr;

// Version of the tables below, kept in keel_schema (shared with the event store) under component 'coordinator'.
constexpr int64_t kSchemaVersion = 1;
// The advisory lock every keel schema change takes (the event store's migrations use the same key), so that keeld
// processes starting together, or beside an event store on the same database, create the tables once.
constexpr int64_t kSchemaLockKey = 7305186411;
// Idle connections kept (keeld's engine calls storage from 16 threads by default).
constexpr size_t kMaxIdle = 16;

// Migration i brings the tables from version i to i + 1. Times are milliseconds since the Unix epoch (0 = not set).
constexpr const char* kMigrations[] = {
    R"sql(
CREATE TABLE IF NOT EXISTS keel_trans_global (
    id bigserial PRIMARY KEY,
    gid text NOT NULL,
    trans_type text NOT NULL,
    status text NOT NULL,
    query_prepared text NOT NULL DEFAULT '',
    protocol text NOT NULL DEFAULT 'http',
    custom_data text NOT NULL DEFAULT '',
    rollback_reason text NOT NULL DEFAULT '',
    result text NOT NULL DEFAULT '',
    options text NOT NULL DEFAULT '{}',
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    finish_time bigint NOT NULL DEFAULT 0,
    rollback_time bigint NOT NULL DEFAULT 0,
    next_cron_time bigint NOT NULL,
    next_cron_interval bigint NOT NULL DEFAULT 0,
    owner text NOT NULL DEFAULT '',
    CONSTRAINT keel_trans_global_gid_key UNIQUE (gid)
);
CREATE INDEX IF NOT EXISTS keel_trans_global_due ON keel_trans_global (status, next_cron_time);
CREATE INDEX IF NOT EXISTS keel_trans_global_create_time ON keel_trans_global (create_time);
CREATE INDEX IF NOT EXISTS keel_trans_global_owner ON keel_trans_global (owner) WHERE owner <> '';
CREATE TABLE IF NOT EXISTS keel_trans_branch_op (
    id bigserial PRIMARY KEY,
    gid text NOT NULL,
    url text NOT NULL DEFAULT '',
    bin_data bytea NOT NULL,
    branch_id text NOT NULL,
    op text NOT NULL,
    status text NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    finish_time bigint NOT NULL DEFAULT 0,
    rollback_time bigint NOT NULL DEFAULT 0,
    CONSTRAINT keel_trans_branch_op_gid_branch_id_op_key UNIQUE (gid, branch_id, op)
);
)sql",
};
static_assert(std::size(kMigrations) == kSchemaVersion);

constexpr std::string_view kGlobalColumns =
    "id, gid, trans_type, status, query_prepared, protocol, custom_data, rollback_reason, result, options, "
    "create_time, update_time, finish_time, rollback_time, next_cron_time, next_cron_interval, owner";
constexpr std::string_view kBranchColumns =
    "id, gid, url, bin_data, branch_id, op, status, create_time, update_time, finish_time, rollback_time";

std::string NonFinal() {
    return fmt::format("('{}', '{}', '{}')", kPrepared, kSubmitted, kAborting);
}

int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

int64_t NowMicros() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// ---- URI ------------------------------------------------------------------------------------------------------------

struct Config {
    std::string conninfo;  // for libpq
    std::string schema;    // empty: the connection's default search_path
};

Result<Config> ParseConfig(std::string_view uri) {
    const size_t colon = uri.find(':');
    const std::string_view scheme = colon == std::string_view::npos ? std::string_view() : uri.substr(0, colon);
    if (scheme != "postgresql" && scheme != "postgres") {
        return Status::InvalidArgument(fmt::format("storage URI '{}' is not postgresql://…", uri));
    }
    std::string_view rest = uri.substr(colon + 1);
    std::string_view query;
    if (const size_t q = rest.find('?'); q != std::string_view::npos) {
        query = rest.substr(q + 1);
        rest = rest.substr(0, q);
    }
    if (!rest.starts_with("//") || rest.size() <= 2) {
        return Status::InvalidArgument(
            "postgresql storage URI must look like postgresql://user:password@host:port/database[?schema=NAME]");
    }
    Config cfg;
    std::string params;
    bool has_timeout = false;
    bool has_name = false;
    while (!query.empty()) {
        const size_t amp = query.find('&');
        const std::string_view kv = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
        if (kv.empty()) continue;
        const size_t eq = kv.find('=');
        if (eq == std::string_view::npos || eq == 0) {
            return Status::InvalidArgument(
                fmt::format("postgresql storage URI: query parameter '{}' is not key=value", kv));
        }
        const std::string_view key = kv.substr(0, eq);
        if (key == "schema") {
            cfg.schema = std::string(kv.substr(eq + 1));
            if (cfg.schema.empty()) return Status::InvalidArgument("postgresql storage URI: schema= needs a name");
            continue;
        }
        has_timeout = has_timeout || key == "connect_timeout";
        has_name = has_name || key == "application_name";
        params += fmt::format("{}{}", params.empty() ? "" : "&", kv);
    }
    if (!has_timeout) params += fmt::format("{}connect_timeout=10", params.empty() ? "" : "&");
    if (!has_name) params += "&application_name=keeld";
    cfg.conninfo = fmt::format("postgresql:{}?{}", rest, params);
    return cfg;
}

// ---- statements -----------------------------------------------------------------------------------------------------

struct StmtDef {
    const char* name;
    std::string sql;
    std::vector<Oid> types;
};

// The SET list of a GlobalChange: $1 gid, $2 from, $3 to, $4 now, $5 rollback_reason, $6 next_cron_time,
// $7 next_cron_interval, $8 set_finish_time (0/1), $9 set_rollback_time (0/1), $10 owner; NULL = leave as is.
constexpr std::string_view kChangeSet =
    "status = $3, update_time = $4, rollback_reason = COALESCE($5, rollback_reason), "
    "next_cron_time = COALESCE($6, next_cron_time), next_cron_interval = COALESCE($7, next_cron_interval), "
    "finish_time = CASE WHEN $8 <> 0 THEN $4 ELSE finish_time END, "
    "rollback_time = CASE WHEN $9 <> 0 THEN $4 ELSE rollback_time END, owner = COALESCE($10, owner)";

// Branch rows to insert (url, bin_data, branch_id, op, status, in insertion order) from five array parameters
// starting at $first.
std::string BranchRows(int first) {
    return fmt::format(
        "unnest(${}::text[], ${}::bytea[], ${}::text[], ${}::text[], ${}::text[]) WITH ORDINALITY "
        "AS u(url, bin_data, branch_id, op, status, ord)",
        first, first + 1, first + 2, first + 3, first + 4);
}

// Branch status updates of gid $1 from three array parameters (branch_id, op, status) starting at $first: sets
// finish_time when a branch succeeded and rollback_time when it failed, to `now` (a parameter).
std::string BranchUpdate(std::string_view now, int first) {
    return fmt::format(
        "UPDATE keel_trans_branch_op t SET status = u.status, update_time = {0}, "
        "finish_time = CASE WHEN u.status = '{1}' THEN {0} ELSE t.finish_time END, "
        "rollback_time = CASE WHEN u.status = '{2}' THEN {0} ELSE t.rollback_time END "
        "FROM unnest(${3}::text[], ${4}::text[], ${5}::text[]) AS u(branch_id, op, status) "
        "WHERE t.gid = $1 AND t.branch_id = u.branch_id AND t.op = u.op",
        now, kSucceed, kFailed, first, first + 1, first + 2);
}

std::vector<StmtDef> Statements() {
    using namespace pg;
    const std::vector<Oid> change_types = {kTextOid, kTextOid, kTextOid, kInt8Oid, kTextOid,
                                           kInt8Oid, kInt8Oid, kInt4Oid, kInt4Oid, kTextOid};
    std::vector<Oid> update_cas_types = change_types;
    update_cas_types.insert(update_cas_types.end(), {kTextArrayOid, kTextArrayOid, kTextArrayOid});
    return {
        // A new global and its branches in one statement (so in one transaction); no row when the gid exists.
        {"save_new",
         fmt::format(
             "WITH g AS (INSERT INTO keel_trans_global (gid, trans_type, status, query_prepared, protocol, "
             "custom_data, rollback_reason, result, options, create_time, update_time, finish_time, rollback_time, "
             "next_cron_time, next_cron_interval, owner) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, "
             "$13, $14, $15, $16) ON CONFLICT (gid) DO NOTHING RETURNING id), "
             "b AS (INSERT INTO keel_trans_branch_op (gid, url, bin_data, branch_id, op, status, create_time, "
             "update_time) SELECT $1, u.url, u.bin_data, u.branch_id, u.op, u.status, $17, $17 FROM g, {} "
             "ORDER BY u.ord RETURNING 1) "
             "SELECT id, (SELECT count(*) FROM b) FROM g",
             BranchRows(18)),
         {kTextOid, kTextOid,      kTextOid,       kTextOid,      kTextOid,      kTextOid,     kTextOid, kTextOid,
          kTextOid, kInt8Oid,      kInt8Oid,       kInt8Oid,      kInt8Oid,      kInt8Oid,     kInt8Oid, kTextOid,
          kInt8Oid, kTextArrayOid, kByteaArrayOid, kTextArrayOid, kTextArrayOid, kTextArrayOid}},
        {"find_global", fmt::format("SELECT {} FROM keel_trans_global WHERE gid = $1", kGlobalColumns), {kTextOid}},
        {"find_branches",
         fmt::format("SELECT {} FROM keel_trans_branch_op WHERE gid = $1 ORDER BY id", kBranchColumns),
         {kTextOid}},
        {"change_status", fmt::format("UPDATE keel_trans_global SET {} WHERE gid = $1 AND status = $2", kChangeSet),
         change_types},
        // The change and the branch updates in one statement: the branches are written only if the change applied.
        {"update_branches_cas",
         fmt::format("WITH c AS (UPDATE keel_trans_global SET {} WHERE gid = $1 AND status = $2 RETURNING 1), "
                     "b AS ({} AND EXISTS (SELECT 1 FROM c) RETURNING 1) "
                     "SELECT (SELECT count(*) FROM c), (SELECT count(*) FROM b)",
                     kChangeSet, BranchUpdate("$4", 11)),
         update_cas_types},
        {"update_branches", BranchUpdate("$2", 3), {kTextOid, kInt8Oid, kTextArrayOid, kTextArrayOid, kTextArrayOid}},
        // registerBranch: the global row is locked (FOR UPDATE) so that its status cannot move while the branches
        // are inserted; no branch is inserted when it is missing or in another status.
        {"add_branches",
         fmt::format("WITH g AS (SELECT id FROM keel_trans_global WHERE gid = $1 AND status = $2 FOR UPDATE), "
                     "b AS (INSERT INTO keel_trans_branch_op (gid, url, bin_data, branch_id, op, status, create_time, "
                     "update_time) SELECT $1, u.url, u.bin_data, u.branch_id, u.op, u.status, $3, $3 FROM g, {} "
                     "ORDER BY u.ord RETURNING 1) "
                     "SELECT (SELECT count(*) FROM g), (SELECT count(*) FROM b)",
                     BranchRows(4)),
         {kTextOid, kTextOid, kInt8Oid, kTextArrayOid, kByteaArrayOid, kTextArrayOid, kTextArrayOid, kTextArrayOid}},
        // One due row, skipping rows another claimer (in this or another process) holds locked right now; the
        // outer conditions re-check it, so a row claimed meanwhile is never claimed twice.
        {"claim_due",
         fmt::format("UPDATE keel_trans_global SET owner = $1, next_cron_time = $3, update_time = $2 "
                     "WHERE id = (SELECT id FROM keel_trans_global WHERE status IN {0} AND next_cron_time <= $2 "
                     "ORDER BY next_cron_time LIMIT 1 FOR UPDATE SKIP LOCKED) "
                     "AND status IN {0} AND next_cron_time <= $2 RETURNING {1}",
                     NonFinal(), kGlobalColumns),
         {kTextOid, kInt8Oid, kInt8Oid}},
        {"schedule",
         "UPDATE keel_trans_global SET next_cron_time = $2, next_cron_interval = $3, update_time = $4, owner = '' "
         "WHERE gid = $1",
         {kTextOid, kInt8Oid, kInt8Oid, kInt8Oid}},
        // $1 now, $2 now + timeout, $3 limit (NULL: no limit). Returns how many were reset and whether more remain.
        {"reset_cron",
         fmt::format("WITH u AS (UPDATE keel_trans_global SET next_cron_time = $1, update_time = $1 WHERE id IN "
                     "(SELECT id FROM keel_trans_global WHERE status IN {0} AND next_cron_time > $2 ORDER BY id "
                     "LIMIT $3 FOR UPDATE) AND status IN {0} AND next_cron_time > $2 RETURNING id) "
                     "SELECT (SELECT count(*) FROM u), EXISTS (SELECT 1 FROM keel_trans_global WHERE status IN {0} "
                     "AND next_cron_time > $2 AND id NOT IN (SELECT id FROM u))",
                     NonFinal()),
         {kInt8Oid, kInt8Oid, kInt8Oid}},
        {"release_leases",
         fmt::format("UPDATE keel_trans_global SET next_cron_time = $1, owner = '' WHERE status IN {} AND owner <> ''",
                     NonFinal()),
         {kInt8Oid}},
    };
}

// ---- rows and parameters --------------------------------------------------------------------------------------------

std::string Str(const PGresult* r, int row, int col) {
    return std::string(pg::GetBytes(r, row, col));
}

int64_t Affected(const PGresult* r) {
    return std::strtoll(PQcmdTuples(const_cast<PGresult*>(r)), nullptr, 10);
}

Global DecodeGlobal(const PGresult* r, int row) {
    Global g;
    g.id = pg::GetInt8(r, row, 0);
    g.gid = Str(r, row, 1);
    g.trans_type = Str(r, row, 2);
    g.status = Str(r, row, 3);
    g.query_prepared = Str(r, row, 4);
    g.protocol = Str(r, row, 5);
    g.custom_data = Str(r, row, 6);
    g.rollback_reason = Str(r, row, 7);
    g.result = Str(r, row, 8);
    g.options = DecodeOptions(pg::GetBytes(r, row, 9));
    g.create_time = pg::GetInt8(r, row, 10);
    g.update_time = pg::GetInt8(r, row, 11);
    g.finish_time = pg::GetInt8(r, row, 12);
    g.rollback_time = pg::GetInt8(r, row, 13);
    g.next_cron_time = pg::GetInt8(r, row, 14);
    g.next_cron_interval = pg::GetInt8(r, row, 15);
    g.owner = Str(r, row, 16);
    return g;
}

Branch DecodeBranch(const PGresult* r, int row) {
    Branch b;
    b.id = pg::GetInt8(r, row, 0);
    b.gid = Str(r, row, 1);
    b.url = Str(r, row, 2);
    b.bin_data = Str(r, row, 3);
    b.branch_id = Str(r, row, 4);
    b.op = Str(r, row, 5);
    b.status = Str(r, row, 6);
    b.create_time = pg::GetInt8(r, row, 7);
    b.update_time = pg::GetInt8(r, row, 8);
    b.finish_time = pg::GetInt8(r, row, 9);
    b.rollback_time = pg::GetInt8(r, row, 10);
    return b;
}

// A one-dimensional array parameter; NULL when empty (unnest(NULL) yields no rows).
void AddArray(Params& p, Oid array_oid, Oid elem_oid, const std::vector<std::string_view>& elems) {
    if (elems.empty()) {
        p.Null(array_oid);
    } else {
        p.Array(array_oid, elem_oid, elems);
    }
}

// url, bin_data, branch_id, op, status of each branch, as five array parameters.
void AddBranchRows(Params& p, const std::vector<Branch>& branches) {
    std::vector<std::string_view> urls, data, ids, ops, statuses;
    for (const Branch& b : branches) {
        urls.push_back(b.url);
        data.push_back(b.bin_data);
        ids.push_back(b.branch_id);
        ops.push_back(b.op);
        statuses.push_back(b.status);
    }
    AddArray(p, pg::kTextArrayOid, pg::kTextOid, urls);
    AddArray(p, pg::kByteaArrayOid, pg::kByteaOid, data);
    AddArray(p, pg::kTextArrayOid, pg::kTextOid, ids);
    AddArray(p, pg::kTextArrayOid, pg::kTextOid, ops);
    AddArray(p, pg::kTextArrayOid, pg::kTextOid, statuses);
}

// branch_id, op, status of each branch, as three array parameters.
void AddBranchUpdates(Params& p, const std::vector<Branch>& branches) {
    std::vector<std::string_view> ids, ops, statuses;
    for (const Branch& b : branches) {
        ids.push_back(b.branch_id);
        ops.push_back(b.op);
        statuses.push_back(b.status);
    }
    AddArray(p, pg::kTextArrayOid, pg::kTextOid, ids);
    AddArray(p, pg::kTextArrayOid, pg::kTextOid, ops);
    AddArray(p, pg::kTextArrayOid, pg::kTextOid, statuses);
}

// $1..$10 of change_status / update_branches_cas.
void AddChange(Params& p, std::string_view gid, const GlobalChange& c, int64_t now) {
    p.Text(gid).Text(c.from).Text(c.to).Int8(now);
    if (c.rollback_reason) {
        p.Text(*c.rollback_reason);
    } else {
        p.Null(pg::kTextOid);
    }
    p.OptInt8(c.next_cron_time).OptInt8(c.next_cron_interval);
    p.Int4(c.set_finish_time ? 1 : 0).Int4(c.set_rollback_time ? 1 : 0);
    if (c.owner) {
        p.Text(*c.owner);
    } else {
        p.Null(pg::kTextOid);
    }
}

// ---- connections ----------------------------------------------------------------------------------------------------

// A connection with the search_path set and every statement prepared.
Result<std::unique_ptr<Conn>> OpenConn(const Config& cfg, bool prepare) {
    KEEL_ASSIGN_OR_RETURN(auto conn, Conn::Connect(cfg.conninfo));
    if (!cfg.schema.empty()) {
        char* ident = PQescapeIdentifier(conn->get(), cfg.schema.data(), cfg.schema.size());
        if (ident == nullptr) {
            return Status::InvalidArgument("postgresql storage URI: bad schema name '" + cfg.schema + "'");
        }
        const std::string quoted(ident);
        PQfreemem(ident);
        KEEL_RETURN_IF_ERROR(conn->Exec("SET search_path TO " + quoted));
    }
    if (prepare) {
        for (const auto& s : Statements()) {
            KEEL_RETURN_IF_ERROR(conn->Prepare(s.name, s.sql, static_cast<int>(s.types.size()), s.types.data()));
        }
    }
    return conn;
}

// Creates the schema (when named) and the tables if missing, in one transaction under the advisory lock.
Status Migrate(Conn& conn, const Config& cfg) {
    KEEL_RETURN_IF_ERROR(conn.Exec("BEGIN"));
    auto body = [&]() -> Status {
        KEEL_RETURN_IF_ERROR(
            conn.ExecParams("SELECT pg_advisory_xact_lock($1)", Params().Int8(kSchemaLockKey)).status());
        if (!cfg.schema.empty()) {
            char* ident = PQescapeIdentifier(conn.get(), cfg.schema.data(), cfg.schema.size());
            const std::string quoted(ident != nullptr ? ident : "");
            PQfreemem(ident);
            KEEL_RETURN_IF_ERROR(conn.Exec("CREATE SCHEMA IF NOT EXISTS " + quoted));
        }
        KEEL_RETURN_IF_ERROR(
            conn.Exec("CREATE TABLE IF NOT EXISTS keel_schema (component text PRIMARY KEY, version bigint NOT NULL, "
                      "updated_at bigint NOT NULL)"));
        KEEL_ASSIGN_OR_RETURN(
            auto v, conn.ExecParams("SELECT version FROM keel_schema WHERE component = 'coordinator'", Params()));
        const int64_t version = PQntuples(v.get()) == 0 ? 0 : pg::GetInt8(v.get(), 0, 0);
        if (version > kSchemaVersion) {
            return Status::NotSupported(
                fmt::format("keeld storage {} has coordinator schema version {}, newer than this keeld supports ({}); "
                            "upgrade keeld",
                            conn.Describe(), version, kSchemaVersion));
        }
        for (int64_t i = version; i < kSchemaVersion; ++i) {
            KEEL_RETURN_IF_ERROR(conn.Exec(kMigrations[i])
                                     .WithContext(fmt::format("migrating the coordinator schema {} -> {}", i, i + 1)));
        }
        if (version != kSchemaVersion) {
            KEEL_RETURN_IF_ERROR(conn.ExecParams("INSERT INTO keel_schema (component, version, updated_at) VALUES "
                                                 "('coordinator', $1, $2) ON CONFLICT (component) DO UPDATE SET "
                                                 "version = excluded.version, updated_at = excluded.updated_at",
                                                 Params().Int8(kSchemaVersion).Int8(NowMicros()))
                                     .status());
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

// Idle connections. Take() hands out an idle one that is still healthy, else opens a new one; a caller holds its
// connection for one call, so there is one connection per calling thread at a time.
class ConnPool {
public:
    explicit ConnPool(Config cfg) : cfg_(std::move(cfg)) {}

    Result<std::unique_ptr<Conn>> Take() {
        for (;;) {
            std::unique_ptr<Conn> conn;
            {
                std::lock_guard lock(mu_);
                if (idle_.empty()) break;
                conn = std::move(idle_.back());
                idle_.pop_back();
            }
            if (Healthy(*conn)) return conn;
            // Broken while idle (server restart, pg_terminate_backend, idle timeout): drop it and try the next.
        }
        return OpenConn(cfg_, /*prepare=*/true);
    }

    void Give(std::unique_ptr<Conn> conn) {
        if (!conn || pg::IsConnectionLost(conn->get()) || PQtransactionStatus(conn->get()) != PQTRANS_IDLE) return;
        std::lock_guard lock(mu_);
        if (idle_.size() < kMaxIdle) idle_.push_back(std::move(conn));
    }

private:
    // Reads whatever the server sent while the connection was idle, without blocking (libpq keeps its socket
    // non-blocking). A backend that was terminated (server restart, pg_terminate_backend, idle timeout) sent a FATAL
    // message and closed the socket: the first read takes the message, the second sees the end of the stream and
    // marks the connection bad.
    static bool Healthy(Conn& conn) {
        PGconn* c = conn.get();
        for (int i = 0; i < 2; ++i) {
            if (PQstatus(c) != CONNECTION_OK || PQconsumeInput(c) == 0) return false;
        }
        return PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE;
    }

    Config cfg_;
    std::mutex mu_;
    std::vector<std::unique_ptr<Conn>> idle_;
};

// ---- the storage ----------------------------------------------------------------------------------------------------

class PostgresStorage final : public Storage {
public:
    PostgresStorage(Config cfg, std::string location) : pool_(std::move(cfg)), location_(std::move(location)) {}

    void Seed(std::unique_ptr<Conn> conn) { pool_.Give(std::move(conn)); }

    Status SaveNew(const Global& g, const std::vector<Branch>& branches) override {
        Params p;
        p.Text(g.gid).Text(g.trans_type).Text(g.status).Text(g.query_prepared).Text(g.protocol).Text(g.custom_data);
        p.Text(g.rollback_reason).Text(g.result).Text(EncodeOptions(g.options));
        p.Int8(g.create_time).Int8(g.update_time).Int8(g.finish_time).Int8(g.rollback_time);
        p.Int8(g.next_cron_time).Int8(g.next_cron_interval).Text(g.owner).Int8(NowMs());
        AddBranchRows(p, branches);
        auto r = Run(/*retry=*/false, "save_new", p);
        if (!r.ok()) {
            if (r.status().code() == StatusCode::kAlreadyExists) {
                return Status::AlreadyExists(
                    fmt::format("global transaction '{}': two of its branches have the same "
                                "(branch_id, op); nothing written ({})",
                                g.gid, r.status().message()));
            }
            return r.status();
        }
        if (PQntuples(r->get()) == 0) return Status::AlreadyExists("global transaction '" + g.gid + "' exists");
        return Status::Ok();
    }

    Result<std::optional<Global>> FindGlobal(std::string_view gid) override {
        Params p;
        p.Text(gid);
        KEEL_ASSIGN_OR_RETURN(auto r, Run(/*retry=*/true, "find_global", p));
        if (PQntuples(r.get()) == 0) return std::optional<Global>();
        return std::optional<Global>(DecodeGlobal(r.get(), 0));
    }

    Result<std::vector<Branch>> FindBranches(std::string_view gid) override {
        Params p;
        p.Text(gid);
        KEEL_ASSIGN_OR_RETURN(auto r, Run(/*retry=*/true, "find_branches", p));
        std::vector<Branch> out;
        const int n = PQntuples(r.get());
        out.reserve(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) out.push_back(DecodeBranch(r.get(), i));
        return out;
    }

    Result<bool> ChangeStatus(std::string_view gid, const GlobalChange& change) override {
        Params p;
        AddChange(p, gid, change, NowMs());
        KEEL_ASSIGN_OR_RETURN(auto r, Run(/*retry=*/false, "change_status", p));
        return Affected(r.get()) > 0;
    }

    Result<bool> UpdateBranches(std::string_view gid, const std::vector<Branch>& branches,
                                const std::optional<GlobalChange>& change) override {
        const int64_t now = NowMs();
        Params p;
        if (change) {
            AddChange(p, gid, *change, now);
            AddBranchUpdates(p, branches);
            KEEL_ASSIGN_OR_RETURN(auto r, Run(/*retry=*/false, "update_branches_cas", p));
            return pg::GetInt8(r.get(), 0, 0) > 0;
        }
        if (branches.empty()) return true;
        p.Text(gid).Int8(now);
        AddBranchUpdates(p, branches);
        KEEL_ASSIGN_OR_RETURN(auto r, Run(/*retry=*/false, "update_branches", p));
        return true;
    }

    Status AddBranches(std::string_view gid, std::string_view expected_status,
                       const std::vector<Branch>& branches) override {
        Params p;
        p.Text(gid).Text(expected_status).Int8(NowMs());
        AddBranchRows(p, branches);
        auto r = Run(/*retry=*/false, "add_branches", p);
        if (!r.ok()) {
            if (r.status().code() == StatusCode::kAlreadyExists) {
                return Status::AlreadyExists(fmt::format(
                    "global transaction '{}': a branch with this (branch_id, op) exists; nothing written ({})", gid,
                    r.status().message()));
            }
            return r.status();
        }
        if (pg::GetInt8(r->get(), 0, 0) == 0) {
            return Status::FailedPrecondition(
                fmt::format("no trans with gid: {} status: {} found", gid, expected_status));
        }
        return Status::Ok();
    }

    Result<std::optional<Global>> ClaimDue(std::string_view owner, int64_t now_ms, int64_t lease_ms) override {
        Params p;
        p.Text(owner).Int8(now_ms).Int8(now_ms + lease_ms);
        KEEL_ASSIGN_OR_RETURN(auto r, Run(/*retry=*/false, "claim_due", p));
        if (PQntuples(r.get()) == 0) return std::optional<Global>();
        return std::optional<Global>(DecodeGlobal(r.get(), 0));
    }

    Result<bool> Schedule(std::string_view gid, int64_t next_cron_time, int64_t next_cron_interval) override {
        Params p;
        p.Text(gid).Int8(next_cron_time).Int8(next_cron_interval).Int8(NowMs());
        KEEL_ASSIGN_OR_RETURN(auto r, Run(/*retry=*/false, "schedule", p));
        return Affected(r.get()) > 0;
    }

    Result<std::vector<Global>> List(const ListFilter& f) override {
        // Only the filters given become conditions, each on the parameter added with it.
        std::string sql = fmt::format("SELECT {} FROM keel_trans_global WHERE true", kGlobalColumns);
        Params p;
        auto add_text = [&](const char* cond, const std::string& v) {
            p.Text(v);
            sql += fmt::format(" AND {} ${}", cond, p.size());
        };
        auto add_int = [&](const char* cond, int64_t v) {
            p.Int8(v);
            sql += fmt::format(" AND {} ${}", cond, p.size());
        };
        if (!f.gid.empty()) add_text("gid =", f.gid);
        if (!f.status.empty()) add_text("status =", f.status);
        if (!f.trans_type.empty()) add_text("trans_type =", f.trans_type);
        if (f.create_time_start != 0) add_int("create_time >=", f.create_time_start);
        if (f.create_time_end != 0) add_int("create_time <=", f.create_time_end);
        if (f.position != 0) add_int("id <", f.position);
        p.OptInt8(f.limit < 0 ? std::nullopt : std::optional<int64_t>(f.limit));
        sql += fmt::format(" ORDER BY id DESC LIMIT ${}", p.size());
        KEEL_ASSIGN_OR_RETURN(auto r, RunSql(sql, p));
        std::vector<Global> out;
        const int n = PQntuples(r.get());
        out.reserve(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) out.push_back(DecodeGlobal(r.get(), i));
        return out;
    }

    Result<std::pair<int64_t, bool>> ResetCronTime(int64_t now_ms, int64_t timeout_ms, int64_t limit) override {
        Params p;
        p.Int8(now_ms).Int8(now_ms + timeout_ms).OptInt8(limit < 0 ? std::nullopt : std::optional<int64_t>(limit));
        KEEL_ASSIGN_OR_RETURN(auto r, Run(/*retry=*/false, "reset_cron", p));
        const bool more = PQgetlength(r.get(), 0, 1) == 1 && *PQgetvalue(r.get(), 0, 1) != 0;
        return std::pair<int64_t, bool>(pg::GetInt8(r.get(), 0, 0), more);
    }

    Result<int64_t> ReleaseAllLeases(int64_t now_ms) override {
        Params p;
        p.Int8(now_ms);
        KEEL_ASSIGN_OR_RETURN(auto r, Run(/*retry=*/false, "release_leases", p));
        return Affected(r.get());
    }

private:
    // Runs prepared statement `name` on a pooled connection. A connection that broke during the call is dropped;
    // with `retry` (reads only) the call is repeated once on a fresh connection.
    Result<ResultPtr> Run(bool retry, const std::string& name, const Params& p) {
        return WithConn(retry, [&](Conn& c) { return c.ExecPrepared(name, p); });
    }

    // Runs unprepared, parameterized SQL (a read) on a pooled connection.
    Result<ResultPtr> RunSql(const std::string& sql, const Params& p) {
        return WithConn(/*retry=*/true, [&](Conn& c) { return c.ExecParams(sql, p); });
    }

    template <class F>
    Result<ResultPtr> WithConn(bool retry, F&& fn) {
        for (int attempt = 0;; ++attempt) {
            KEEL_ASSIGN_OR_RETURN(auto conn, pool_.Take());
            auto r = fn(*conn);
            if (r.ok()) {
                pool_.Give(std::move(conn));
                return r;
            }
            const bool lost = pg::IsConnectionLost(conn->get());
            if (lost && retry && attempt == 0) continue;  // `conn` is dropped
            if (!lost) pool_.Give(std::move(conn));
            Status s = r.status().WithContext("keeld storage " + location_);
            if (lost) s = Status::Unavailable(s.message() + " (connection lost; the outcome is unknown)");
            return s;
        }
    }

    ConnPool pool_;
    std::string location_;  // host:port/database [schema], for messages
};

}  // namespace

Result<std::unique_ptr<Storage>> OpenPostgresStorage(std::string_view uri) {
    KEEL_ASSIGN_OR_RETURN(Config cfg, ParseConfig(uri));
    KEEL_ASSIGN_OR_RETURN(auto conn, OpenConn(cfg, /*prepare=*/false));
    std::string location = conn->Describe() + (cfg.schema.empty() ? "" : " schema " + cfg.schema);
    KEEL_RETURN_IF_ERROR(Migrate(*conn, cfg).WithContext("keeld storage " + location));
    for (const auto& s : Statements()) {
        KEEL_RETURN_IF_ERROR(conn->Prepare(s.name, s.sql, static_cast<int>(s.types.size()), s.types.data())
                                 .WithContext("keeld storage " + location));
    }
    auto storage = std::make_unique<PostgresStorage>(std::move(cfg), std::move(location));
    storage->Seed(std::move(conn));
    return std::unique_ptr<Storage>(std::move(storage));
}

}  // namespace keel::coordinator
