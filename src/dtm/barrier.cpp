// DTM's sub-transaction barrier on keel's units of work (docs/dtm-client.md; the algorithm is described in
// ../shared/dtm-protocol.md §3).

#include "keel/barrier.hpp"

#include <algorithm>
#include <cctype>
#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace keel::dtm {
namespace {

// The op whose row a compensating op inserts first ("" for ops that compensate nothing).
std::string_view OriginOp(std::string_view op) {
    if (op == "cancel") return "try";
    if (op == "compensate") return "action";
    if (op == "rollback") return "action";
    return "";
}

bool IsCompensation(std::string_view op) {
    return op == "cancel" || op == "compensate" || op == "rollback";
}

// "name" or "schema.name", each part [A-Za-z0-9_]+ not starting with a digit.
Status ValidateTableName(std::string_view name) {
    auto part_ok = [](std::string_view p) {
        if (p.empty() || p.size() > 64 || std::isdigit(static_cast<unsigned char>(p[0])) != 0) return false;
        return std::all_of(p.begin(), p.end(),
                           [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; });
    };
    const size_t dot = name.find('.');
    const bool ok =
        dot == std::string_view::npos ? part_ok(name) : part_ok(name.substr(0, dot)) && part_ok(name.substr(dot + 1));
    if (!ok) {
        return Status::InvalidArgument(fmt::format(
            "barrier table name '{}' is not a plain SQL name (letters, digits, '_', optionally 'schema.table')", name));
    }
    return Status::Ok();
}

std::string_view BaseName(std::string_view name) {
    const size_t dot = name.find('.');
    return dot == std::string_view::npos ? name : name.substr(dot + 1);
}

std::string InsertSql(BarrierDialect dialect, const std::string& table) {
    constexpr std::string_view kCols = "(trans_type, gid, branch_id, op, barrier_id, reason) VALUES (?, ?, ?, ?, ?, ?)";
    switch (dialect) {
        case BarrierDialect::kSqlite: return fmt::format("INSERT OR IGNORE INTO {} {}", table, kCols);
        case BarrierDialect::kPostgres: return fmt::format("INSERT INTO {} {} ON CONFLICT DO NOTHING", table, kCols);
        case BarrierDialect::kMysql:
        case BarrierDialect::kAuto: break;
    }
    return fmt::format("INSERT IGNORE INTO {} {}", table, kCols);
}

// One insert-ignore of a barrier row; the number of rows inserted (0 or 1).
Result<int64_t> InsertBarrier(UnitOfWork& uow, BarrierDialect dialect, const std::string& table,
                              std::string_view trans_type, std::string_view gid, std::string_view branch_id,
                              std::string_view op, std::string_view barrier_id, std::string_view reason) {
    const std::vector<SqlValue> params = {std::string(trans_type), std::string(gid),        std::string(branch_id),
                                          std::string(op),         std::string(barrier_id), std::string(reason)};
    return uow.Exec(InsertSql(dialect, table), params);
}

// Rolls `uow` back now (moving it out destroys its transaction).
void RollBack(UnitOfWork& uow) {
    UnitOfWork finished(std::move(uow));
}

Result<BarrierDialect> Probe(UnitOfWork& uow) {
    auto version = uow.Query("SELECT version()");
    if (!version.ok()) {
        // SQLite has no version() function; anything else is a real error.
        auto sqlite = uow.Query("SELECT sqlite_version()");
        if (sqlite.ok()) return BarrierDialect::kSqlite;
        return version.status().WithContext("barrier: finding out the database's SQL dialect");
    }
    auto text = version->Text(0, 0);
    if (!text.ok()) return text.status();
    if (text->find("PostgreSQL") != std::string::npos) return BarrierDialect::kPostgres;
    return BarrierDialect::kMysql;
}

std::vector<std::string> CreateStatements(BarrierDialect dialect, const std::string& table) {
    const std::string base(BaseName(table));
    const size_t dot = table.find('.');
    const std::string schema = dot == std::string::npos ? "" : table.substr(0, dot);
    std::vector<std::string> out;
    switch (dialect) {
        case BarrierDialect::kSqlite:
            out.push_back(
                fmt::format("CREATE TABLE IF NOT EXISTS {0} (\n"
                            "  id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
                            "  trans_type TEXT NOT NULL DEFAULT '',\n"
                            "  gid TEXT NOT NULL DEFAULT '',\n"
                            "  branch_id TEXT NOT NULL DEFAULT '',\n"
                            "  op TEXT NOT NULL DEFAULT '',\n"
                            "  barrier_id TEXT NOT NULL DEFAULT '',\n"
                            "  reason TEXT NOT NULL DEFAULT '',\n"
                            "  create_time TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%S', 'now')),\n"
                            "  update_time TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%S', 'now')),\n"
                            "  UNIQUE (gid, branch_id, op, barrier_id))",
                            table));
            out.push_back(fmt::format("CREATE INDEX IF NOT EXISTS {0}_create_time ON {0} (create_time)", table));
            out.push_back(fmt::format("CREATE INDEX IF NOT EXISTS {0}_update_time ON {0} (update_time)", table));
            break;
        case BarrierDialect::kPostgres:
            if (!schema.empty()) out.push_back(fmt::format("CREATE SCHEMA IF NOT EXISTS {}", schema));
            out.push_back(
                fmt::format("CREATE TABLE IF NOT EXISTS {0} (\n"
                            "  id bigserial PRIMARY KEY,\n"
                            "  trans_type varchar(45) NOT NULL DEFAULT '',\n"
                            "  gid varchar(128) NOT NULL DEFAULT '',\n"
                            "  branch_id varchar(128) NOT NULL DEFAULT '',\n"
                            "  op varchar(45) NOT NULL DEFAULT '',\n"
                            "  barrier_id varchar(45) NOT NULL DEFAULT '',\n"
                            "  reason varchar(45) NOT NULL DEFAULT '',\n"
                            "  create_time timestamp(0) with time zone DEFAULT now(),\n"
                            "  update_time timestamp(0) with time zone DEFAULT now(),\n"
                            "  CONSTRAINT uniq_{1} UNIQUE (gid, branch_id, op, barrier_id))",
                            table, base));
            out.push_back(fmt::format("CREATE INDEX IF NOT EXISTS {1}_create_time ON {0} (create_time)", table, base));
            out.push_back(fmt::format("CREATE INDEX IF NOT EXISTS {1}_update_time ON {0} (update_time)", table, base));
            break;
        case BarrierDialect::kMysql:
        case BarrierDialect::kAuto:
            if (!schema.empty()) out.push_back(fmt::format("CREATE DATABASE IF NOT EXISTS {}", schema));
            out.push_back(fmt::format(
                "CREATE TABLE IF NOT EXISTS {0} (\n"
                "  id bigint NOT NULL AUTO_INCREMENT,\n"
                "  trans_type varchar(45) NOT NULL DEFAULT '',\n"
                "  gid varchar(128) NOT NULL DEFAULT '',\n"
                "  branch_id varchar(128) NOT NULL DEFAULT '',\n"
                "  op varchar(45) NOT NULL DEFAULT '',\n"
                "  barrier_id varchar(45) NOT NULL DEFAULT '',\n"
                "  reason varchar(45) NOT NULL DEFAULT '' COMMENT 'the op of the call that inserted the row',\n"
                "  create_time datetime DEFAULT now(),\n"
                "  update_time datetime DEFAULT now(),\n"
                "  PRIMARY KEY (id),\n"
                "  UNIQUE KEY gid (gid, branch_id, op, barrier_id),\n"
                "  KEY create_time (create_time),\n"
                "  KEY update_time (update_time)\n"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
                table));
            break;
    }
    return out;
}

Status CheckInnoDb(UnitOfWork& uow, const std::string& table) {
    const size_t dot = table.find('.');
    const std::string schema_expr = dot == std::string::npos ? "DATABASE()" : "?";
    std::vector<SqlValue> params;
    if (dot != std::string::npos) params.emplace_back(table.substr(0, dot));
    params.emplace_back(std::string(BaseName(table)));
    auto rows = uow.Query(fmt::format("SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND "
                                      "TABLE_NAME = ?",
                                      schema_expr),
                          params);
    if (!rows.ok()) return rows.status();
    if (rows->empty()) return Status::Internal(fmt::format("barrier table {} was not created", table));
    auto engine = rows->Text(0, 0);
    if (!engine.ok()) return engine.status();
    if (*engine != "InnoDB") {
        return Status::FailedPrecondition(fmt::format(
            "barrier table {} uses the {} engine, which ignores rollbacks; convert it: ALTER TABLE {} ENGINE=InnoDB",
            table, *engine, table));
    }
    return Status::Ok();
}

std::string Sanitized(std::string text) {
    for (std::string_view word : {std::string_view("FAILURE"), std::string_view("ONGOING")}) {
        for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at)) {
            for (size_t i = 0; i < word.size(); ++i) {
                text[at + i] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[at + i])));
            }
        }
    }
    return text;
}

}  // namespace

Result<BarrierTable> EnsureBarrierTable(EventStore& db, BarrierTable table) {
    KEEL_RETURN_IF_ERROR(ValidateTableName(table.name));
    if (table.dialect == BarrierDialect::kAuto) {
        auto uow = UnitOfWork::Begin(db);
        if (!uow.ok()) return uow.status();
        auto dialect = Probe(*uow);
        if (!dialect.ok()) return dialect.status();
        table.dialect = *dialect;
    }
    if (table.dialect == BarrierDialect::kSqlite && table.name.find('.') != std::string::npos) {
        return Status::InvalidArgument(fmt::format(
            "barrier table name '{}': SQLite has no schemas; use a plain name such as 'barrier'", table.name));
    }
    // Each statement in a unit of work of its own: MariaDB commits DDL implicitly anyway. Two processes creating the
    // table at once may collide on PostgreSQL's catalog; the second attempt then finds the table.
    for (const std::string& sql : CreateStatements(table.dialect, table.name)) {
        Status s;
        for (int attempt = 0; attempt < 2; ++attempt) {
            auto uow = UnitOfWork::Begin(db);
            if (!uow.ok()) return uow.status();
            s = uow->Exec(sql).status();
            if (s.ok()) s = uow->Commit();
            if (s.ok() || s.code() != StatusCode::kAlreadyExists) break;
        }
        KEEL_RETURN_IF_ERROR(s.WithContext(fmt::format("creating barrier table {}", table.name)));
    }
    if (table.dialect == BarrierDialect::kMysql) {
        auto uow = UnitOfWork::Begin(db);
        if (!uow.ok()) return uow.status();
        KEEL_RETURN_IF_ERROR(CheckInnoDb(*uow, table.name));
    }
    return table;
}

Result<Barrier> Barrier::Make(std::string trans_type, std::string gid, std::string branch_id, std::string op,
                              BarrierTable table) {
    const std::pair<const char*, const std::string*> fields[] = {
        {"trans_type", &trans_type}, {"gid", &gid}, {"branch_id", &branch_id}, {"op", &op}};
    for (const auto& [name, value] : fields) {
        if (value->empty()) return Status::InvalidArgument(fmt::format("barrier: missing query parameter '{}'", name));
    }
    if (gid.size() > 128 || branch_id.size() > 128 || op.size() > 45 || trans_type.size() > 45) {
        return Status::InvalidArgument(
            "barrier: gid or branch_id over 128 bytes, or op or trans_type over 45 bytes (the barrier table's limits)");
    }
    KEEL_RETURN_IF_ERROR(ValidateTableName(table.name));
    Barrier b;
    b.trans_type_ = std::move(trans_type);
    b.gid_ = std::move(gid);
    b.branch_id_ = std::move(branch_id);
    b.op_ = std::move(op);
    b.table_ = std::move(table);
    return b;
}

Result<Barrier> Barrier::FromQuery(const std::map<std::string, std::string>& query, BarrierTable table) {
    auto get = [&](const char* key) {
        auto it = query.find(key);
        return it == query.end() ? std::string() : it->second;
    };
    return Make(get("trans_type"), get("gid"), get("branch_id"), get("op"), std::move(table));
}

Result<BarrierDialect> Barrier::Dialect(UnitOfWork& uow) {
    if (table_.dialect == BarrierDialect::kAuto) {
        auto found = Probe(uow);
        if (!found.ok()) return found.status();
        table_.dialect = *found;
    }
    return table_.dialect;
}

Status Barrier::Call(UnitOfWork& uow, const BusinessFn& fn) {
    if (!uow.active()) return Status::FailedPrecondition("barrier: the unit of work is not active");
    const std::string barrier_id = fmt::format("{:02d}", ++calls_);
    auto body = [&]() -> Result<bool> {  // true: run the business
        auto dialect = Dialect(uow);
        if (!dialect.ok()) return dialect.status();
        const std::string_view origin = OriginOp(op_);
        int64_t origin_inserted = 0;
        if (!origin.empty()) {
            auto n = InsertBarrier(uow, *dialect, table_.name, trans_type_, gid_, branch_id_, origin, barrier_id, op_);
            if (!n.ok()) return n.status().WithContext("barrier: inserting the origin row");
            origin_inserted = *n;
        }
        auto current = InsertBarrier(uow, *dialect, table_.name, trans_type_, gid_, branch_id_, op_, barrier_id, op_);
        if (!current.ok()) return current.status().WithContext("barrier: inserting the row");
        if (op_ == "msg" && *current == 0) {
            return Status(kDuplicatedCode,
                          fmt::format("barrier: gid {} was already decided by the back-check (rolled back); the local "
                                      "transaction did nothing",
                                      gid_));
        }
        if (IsCompensation(op_) && origin_inserted > 0) return false;  // null compensation
        if (*current == 0) return false;                               // repeated, or try after cancel (hanging)
        return true;
    };
    auto run = body();
    if (!run.ok()) {
        RollBack(uow);
        return run.status();
    }
    if (*run) {
        Status s = fn(uow);
        if (!s.ok()) {
            if (uow.active()) RollBack(uow);
            return s;
        }
    }
    return uow.Commit();
}

Status Barrier::Call(EventStore& db, const BusinessFn& fn, const Mediator* mediator) {
    auto uow = UnitOfWork::Begin(db, mediator);
    if (!uow.ok()) return uow.status();
    return Call(*uow, fn);
}

Status Barrier::QueryPrepared(EventStore& db) const {
    auto uow = UnitOfWork::Begin(db);
    if (!uow.ok()) return uow.status();
    BarrierDialect dialect = table_.dialect;
    if (dialect == BarrierDialect::kAuto) {
        auto found = Probe(*uow);
        if (!found.ok()) return found.status();
        dialect = *found;
    }
    auto inserted = InsertBarrier(*uow, dialect, table_.name, "msg", gid_, "00", "msg", "01", "rollback");
    if (!inserted.ok()) return inserted.status().WithContext("barrier back-check");
    auto rows = uow->Query(fmt::format("SELECT reason FROM {} WHERE gid = ? AND branch_id = ? AND op = ? AND "
                                       "barrier_id = ?",
                                       table_.name),
                           {gid_, std::string("00"), std::string("msg"), std::string("01")});
    if (!rows.ok()) return rows.status().WithContext("barrier back-check");
    KEEL_RETURN_IF_ERROR(uow->Commit().WithContext("barrier back-check"));
    if (rows->empty()) return Status::Internal(fmt::format("barrier back-check: no row for gid {}", gid_));
    auto reason = rows->Text(0, 0);
    if (!reason.ok()) return reason.status();
    if (*reason == "rollback") {
        return Failure(fmt::format("gid {}: the local transaction did not commit (rolled back)", gid_));
    }
    return Status::Ok();
}

BarrierHttpReply BarrierReply(const Status& status) {
    constexpr auto kReplace = nlohmann::json::error_handler_t::replace;  // messages may quote non-UTF-8 input
    if (status.ok()) return {200, R"({"dtm_result":"SUCCESS"})"};
    if (IsFailure(status)) {
        return {409, nlohmann::json{{"dtm_result", "FAILURE"}, {"message", status.message()}}.dump(-1, ' ', false,
                                                                                                   kReplace)};
    }
    return {500, nlohmann::json{{"message", Sanitized(status.ToString())}}.dump(-1, ' ', false, kReplace)};
}

}  // namespace keel::dtm
