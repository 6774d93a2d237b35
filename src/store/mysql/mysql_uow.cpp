// Units of work on MariaDB: see mysql_uow.hpp.

#include "store/mysql/mysql_uow.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include <fmt/format.h>
#include <mysqld_error.h>
#include <nlohmann/json.hpp>

#include "store/mysql/mysql_conn.hpp"

namespace keel::detail {
namespace {

using mysql::Conn;

constexpr int64_t kUowSchemaVersion = 1;

// The unit-of-work tables (keel_schema component 'unit_of_work'). Statements separated by ";\n", each idempotent.
constexpr std::string_view kUowSchema = R"sql(
CREATE TABLE IF NOT EXISTS keel_outbox (
    id           BIGINT       NOT NULL AUTO_INCREMENT,
    message_id   BINARY(16)   NOT NULL,
    destination  VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    `key`        VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    payload      LONGBLOB     NOT NULL,
    headers      LONGTEXT     CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    created_at   BIGINT       NOT NULL,
    published_at BIGINT       NULL,
    PRIMARY KEY (id),
    UNIQUE KEY keel_outbox_message_id (message_id),
    KEY keel_outbox_pending (published_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin ROW_FORMAT=DYNAMIC;
CREATE TABLE IF NOT EXISTS keel_inbox (
    consumer     VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    message_id   BINARY(16)   NOT NULL,
    processed_at BIGINT       NOT NULL,
    PRIMARY KEY (consumer, message_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin ROW_FORMAT=DYNAMIC;
CREATE TABLE IF NOT EXISTS keel_leases (
    name  VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    owner VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    `until` BIGINT     NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin ROW_FORMAT=DYNAMIC)sql";

std::string Hex(std::string_view bytes) {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out = "X'";
    out.reserve(bytes.size() * 2 + 3);
    for (unsigned char c : bytes) {
        out.push_back(kDigits[c >> 4]);
        out.push_back(kDigits[c & 15]);
    }
    out.push_back('\'');
    return out;
}

std::string Literal(MYSQL* m, const SqlValue& v) {
    switch (v.index()) {
        case 1: return std::to_string(std::get<int64_t>(v));
        case 2: return fmt::format("{:.17g}", std::get<double>(v));
        case 3: return mysql::Quote(m, std::get<std::string>(v));
        case 4: return Hex(std::get<Blob>(v).bytes);
        default: return "NULL";
    }
}

// `?` placeholders outside quotes and backticks → escaped literals of `params`.
Result<std::string> Bind(MYSQL* m, std::string_view sql, std::span<const SqlValue> params) {
    std::string out;
    out.reserve(sql.size() + 16 * params.size());
    size_t next = 0;
    char quote = 0;
    for (size_t i = 0; i < sql.size(); ++i) {
        const char c = sql[i];
        if (quote != 0) {
            out.push_back(c);
            if (c == '\\' && quote != '`' && i + 1 < sql.size()) {
                out.push_back(sql[++i]);
            } else if (c == quote) {
                quote = 0;
            }
        } else if (c == '\'' || c == '"' || c == '`') {
            quote = c;
            out.push_back(c);
        } else if (c == '?') {
            if (next >= params.size()) {
                return Status::InvalidArgument(
                    fmt::format("SQL has more '?' placeholders than the {} parameters given", params.size()));
            }
            out += Literal(m, params[next++]);
        } else {
            out.push_back(c);
        }
    }
    if (next != params.size()) {
        return Status::InvalidArgument(
            fmt::format("SQL has {} '?' placeholders but {} parameters were given", next, params.size()));
    }
    return out;
}

SqlValue Cell(const MYSQL_FIELD& f, const char* data, unsigned long length) {
    if (data == nullptr) return std::monostate{};
    const std::string text(data, length);
    switch (f.type) {
        case MYSQL_TYPE_TINY:
        case MYSQL_TYPE_SHORT:
        case MYSQL_TYPE_LONG:
        case MYSQL_TYPE_LONGLONG:
        case MYSQL_TYPE_INT24:
        case MYSQL_TYPE_YEAR:
            if ((f.flags & UNSIGNED_FLAG) != 0) return static_cast<int64_t>(std::strtoull(text.c_str(), nullptr, 10));
            return static_cast<int64_t>(std::strtoll(text.c_str(), nullptr, 10));
        case MYSQL_TYPE_FLOAT:
        case MYSQL_TYPE_DOUBLE:
        case MYSQL_TYPE_DECIMAL:
        case MYSQL_TYPE_NEWDECIMAL: return std::strtod(text.c_str(), nullptr);
        case MYSQL_TYPE_TINY_BLOB:
        case MYSQL_TYPE_MEDIUM_BLOB:
        case MYSQL_TYPE_LONG_BLOB:
        case MYSQL_TYPE_BLOB:
        case MYSQL_TYPE_STRING:
        case MYSQL_TYPE_VAR_STRING:
        case MYSQL_TYPE_VARCHAR:
            if (f.charsetnr == 63) return Blob{text};  // the binary character set: bytes
            return text;
        default: return text;
    }
}

struct Outcome {
    Rows rows;
    int64_t affected = 0;
    int64_t insert_id = 0;
};

// One statement over the text protocol.
Result<Outcome> Run(Conn& c, std::string_view sql, std::string_view what) {
    MYSQL* m = c.get();
    c.ResetError();
    if (mysql_real_query(m, sql.data(), sql.size()) != 0) return c.Fail(mysql_errno(m), mysql_error(m), what);
    Outcome out;
    MYSQL_RES* res = mysql_store_result(m);
    if (res == nullptr) {
        if (mysql_field_count(m) != 0) return c.Fail(mysql_errno(m), mysql_error(m), what);
        out.affected = static_cast<int64_t>(mysql_affected_rows(m));
        out.insert_id = static_cast<int64_t>(mysql_insert_id(m));
        return out;
    }
    const unsigned int n = mysql_num_fields(res);
    const MYSQL_FIELD* fields = mysql_fetch_fields(res);
    for (unsigned int i = 0; i < n; ++i) out.rows.columns.emplace_back(fields[i].name, fields[i].name_length);
    while (MYSQL_ROW row = mysql_fetch_row(res)) {
        const unsigned long* lengths = mysql_fetch_lengths(res);
        std::vector<SqlValue> values;
        values.reserve(n);
        for (unsigned int i = 0; i < n; ++i) values.push_back(Cell(fields[i], row[i], lengths[i]));
        out.rows.rows.push_back(std::move(values));
    }
    mysql_free_result(res);
    return out;
}

Status RunScript(Conn& c, std::string_view script, std::string_view what) {
    while (!script.empty()) {
        const size_t end = script.find(";\n");
        const std::string_view sql = script.substr(0, end);
        script = end == std::string_view::npos ? std::string_view() : script.substr(end + 2);
        if (sql.find_first_not_of(" \n") == std::string_view::npos) continue;
        KEEL_RETURN_IF_ERROR(c.Exec(sql, what));
    }
    return Status::Ok();
}

// Refuses a database holding a non-transactional base table (seed 002: MyISAM ignores ROLLBACK).
Status CheckAllInnoDb(Conn& c) {
    auto rows = Run(c,
                    "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_TYPE = 'BASE TABLE' AND (ENGINE IS NULL OR ENGINE <> 'InnoDB') ORDER BY TABLE_NAME",
                    "checking that every table is InnoDB");
    if (!rows.ok()) return rows.status();
    if (rows->rows.empty()) return Status::Ok();
    auto name = rows->rows.Text(0, 0);
    auto engine = rows->rows.Text(0, 1);
    const std::string table = name.ok() ? *name : "?";
    return Status::FailedPrecondition(fmt::format(
        "{}: units of work need transactional tables, but table {} uses the {} engine, whose rows a rollback does "
        "not undo (seed 002); convert it with ALTER TABLE {} ENGINE=InnoDB",
        c.where(), table, engine.ok() ? *engine : "?", table));
}

// The statement's first keyword, upper case.
std::string FirstWord(std::string_view sql) {
    size_t i = 0;
    while (i < sql.size() && (std::isspace(static_cast<unsigned char>(sql[i])) != 0 || sql[i] == '(')) ++i;
    std::string word;
    while (i < sql.size() && std::isalpha(static_cast<unsigned char>(sql[i])) != 0) {
        word.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(sql[i++]))));
    }
    return word;
}

std::string HeadersJson(const Headers& headers) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : headers) j[k] = v;
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

class MysqlTransaction final : public TransactionBackend {
public:
    MysqlTransaction(MysqlUnitsOfWork& owner, std::unique_ptr<Conn> conn) : owner_(owner), conn_(std::move(conn)) {}

    ~MysqlTransaction() override {
        if (open_ && !conn_->broken()) (void)conn_->Exec("ROLLBACK", "rolling back a unit of work");
        if (!conn_->broken()) owner_.Give(std::move(conn_));
    }

    Status Begin() { return conn_->Exec("START TRANSACTION", "starting a unit of work"); }

    Result<int64_t> Exec(std::string_view sql, std::span<const SqlValue> params) override {
        auto r = Statement(sql, params);
        if (!r.ok()) return r.status();
        return r->affected;
    }

    Result<Rows> Query(std::string_view sql, std::span<const SqlValue> params) override {
        auto r = Statement(sql, params);
        if (!r.ok()) return r.status();
        return std::move(r->rows);
    }

    Result<AppendResult> Append(const AppendRequest& request) override {
        KEEL_RETURN_IF_ERROR(Usable());
        KEEL_RETURN_IF_ERROR(Sequence());
        const int64_t now = std::max(NowMicros(), last_recorded_);
        KEEL_RETURN_IF_ERROR(Internal("SAVEPOINT keel_uow_append").status());
        auto r = AppendBody(request, now);
        if (!r.ok()) {
            if (dead_.ok() && !conn_->broken()) (void)Internal("ROLLBACK TO SAVEPOINT keel_uow_append");
            return r.status();
        }
        KEEL_RETURN_IF_ERROR(Internal("RELEASE SAVEPOINT keel_uow_append").status());
        if (!r->already_present) {
            last_position_ = std::max(last_position_, r->last_position);
            last_recorded_ = now;
        }
        return r;
    }

    Status InsertOutbox(const OutboxMessage& msg) override {
        KEEL_RETURN_IF_ERROR(Usable());
        KEEL_RETURN_IF_ERROR(Sequence());  // outbox ids in commit order (see mysql_uow.hpp)
        const std::vector<SqlValue> params = {Blob{std::string(msg.message_id.bytes_view())},
                                              msg.destination,
                                              msg.key,
                                              Blob{msg.payload},
                                              HeadersJson(msg.headers),
                                              NowMicros()};
        auto r = Statement(
            "INSERT INTO keel_outbox (message_id, destination, `key`, payload, headers, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            params);
        if (!r.ok() && r.status().code() == StatusCode::kAlreadyExists) {
            return Status::AlreadyExists(
                fmt::format("message id {} is in the outbox already", msg.message_id.ToString()));
        }
        return r.status();
    }

    Result<bool> InsertInbox(std::string_view consumer, const Uuid& message_id) override {
        const std::vector<SqlValue> params = {std::string(consumer), Blob{std::string(message_id.bytes_view())},
                                              NowMicros()};
        auto r =
            Statement("INSERT IGNORE INTO keel_inbox (consumer, message_id, processed_at) VALUES (?, ?, ?)", params);
        if (!r.ok()) return r.status();
        return r->affected == 1;
    }

    Result<std::optional<int64_t>> LoadCheckpoint(std::string_view name) override {
        const std::vector<SqlValue> params = {std::string(name)};
        auto r = Statement("SELECT position FROM keel_checkpoints WHERE name = ? FOR UPDATE", params);
        if (!r.ok()) return r.status();
        if (r->rows.empty()) return std::optional<int64_t>();
        auto v = r->rows.Int(0, 0);
        if (!v.ok()) return v.status();
        return std::optional<int64_t>(*v);
    }

    Status SaveCheckpoint(std::string_view name, int64_t position) override {
        const std::vector<SqlValue> params = {std::string(name), position, NowMicros()};
        return Statement(
                   "INSERT INTO keel_checkpoints (name, position, updated_at) VALUES (?, ?, ?) "
                   "ON DUPLICATE KEY UPDATE position = VALUES(position), updated_at = VALUES(updated_at)",
                   params)
            .status();
    }

    Result<int64_t> Commit() override {
        KEEL_RETURN_IF_ERROR(Usable());
        open_ = false;
        Status s = conn_->Exec("COMMIT", "committing a unit of work");
        if (!s.ok()) {
            if (!conn_->broken()) (void)conn_->Exec("ROLLBACK", "rolling back a unit of work");
            return s;
        }
        return last_position_;
    }

private:
    Status Usable() const {
        if (!dead_.ok()) return dead_;
        if (conn_->broken()) {
            return Status::Unavailable(
                fmt::format("{}: the connection of this unit of work was lost; it rolled back", conn_->where()));
        }
        return Status::Ok();
    }

    // The caller's statement: bound, run, errors mapped to the unit of work's codes.
    Result<Outcome> Statement(std::string_view sql, std::span<const SqlValue> params) {
        KEEL_RETURN_IF_ERROR(Usable());
        auto bound = Bind(conn_->get(), sql, params);
        if (!bound.ok()) return bound.status();
        auto r = Run(*conn_, *bound, fmt::format("SQL '{}'", sql.substr(0, 80)));
        if (!r.ok()) return Mapped(r.status());
        const std::string word = FirstWord(sql);
        if (word == "CREATE" || word == "ALTER" || word == "DROP" || word == "RENAME" || word == "TRUNCATE") {
            // MariaDB committed the transaction before and after the DDL: open a new one, and keep out
            // non-transactional tables.
            sequenced_ = false;
            if (word == "CREATE" || word == "ALTER") {
                if (Status s = CheckAllInnoDb(*conn_); !s.ok()) {
                    owner_.Invalidate();
                    return s;
                }
            }
            KEEL_RETURN_IF_ERROR(Begin());
        }
        return r;
    }

    // keel's own statements (no parameters, fixed SQL).
    Result<Outcome> Internal(std::string_view sql) {
        auto r = Run(*conn_, sql, sql);
        if (!r.ok()) return Mapped(r.status());
        return r;
    }

    Status Mapped(const Status& s) {
        if (conn_->broken()) return s;
        switch (conn_->last_error()) {
            case ER_DUP_ENTRY:
            case ER_DUP_ENTRY_WITH_KEY_NAME: return Status::AlreadyExists(s.message());
            case ER_LOCK_DEADLOCK:
                // InnoDB rolled the whole transaction back: nothing of this unit is left.
                dead_ =
                    Status::Unavailable(fmt::format("{} — the unit of work was rolled back; retry it", s.message()));
                return dead_;
            default: break;
        }
        if (s.code() == StatusCode::kInternal || s.code() == StatusCode::kFailedPrecondition) {
            return Status::InvalidArgument(s.message());  // syntax, unknown table or column …
        }
        return s;
    }

    // Takes the append sequencer lock (held until the unit ends) and the last recorded time.
    Status Sequence() {
        if (sequenced_) return Status::Ok();
        auto lock = Internal("SELECT id FROM keel_sequencer WHERE id = 1 FOR UPDATE");
        if (!lock.ok()) return lock.status();
        if (lock->rows.empty()) {
            return Status::Corruption(fmt::format("{}: keel_sequencer has no row with id 1", conn_->where()));
        }
        auto last = Internal("SELECT recorded_at FROM keel_events ORDER BY global_position DESC LIMIT 1");
        if (!last.ok()) return last.status();
        if (!last->rows.empty()) last_recorded_ = std::max(last_recorded_, last->rows.Int(0, 0).value_or(0));
        sequenced_ = true;
        return Status::Ok();
    }

    Result<std::optional<StoredEventRef>> Lookup(const Uuid& id) {
        auto r =
            Internal(fmt::format("SELECT global_position, stream_id, stream_version, type, data, metadata FROM "
                                 "keel_events WHERE event_id = {}",
                                 Hex(id.bytes_view())));
        if (!r.ok()) return r.status();
        if (r->rows.empty()) return std::optional<StoredEventRef>();
        const Rows& rows = r->rows;
        return std::optional<StoredEventRef>(
            StoredEventRef{rows.Int(0, 0).value_or(0), rows.Text(0, 1).value_or(""), rows.Int(0, 2).value_or(0),
                           rows.Text(0, 3).value_or(""), rows.Text(0, 4).value_or(""), rows.Text(0, 5).value_or("")});
    }

    Result<AppendResult> AppendBody(const AppendRequest& req, int64_t now) {
        MYSQL* m = conn_->get();
        auto lookup = [this](const Uuid& id) { return Lookup(id); };
        auto stream = Internal(fmt::format("SELECT version, state FROM keel_streams WHERE stream_id = {} FOR UPDATE",
                                           mysql::Quote(m, req.stream)));
        if (!stream.ok()) return stream.status();
        std::optional<StreamInfo> info;
        if (!stream->rows.empty()) {
            info.emplace();
            info->stream_id = std::string(req.stream);
            info->version = stream->rows.Int(0, 0).value_or(-1);
            info->state = static_cast<StreamState>(stream->rows.Int(0, 1).value_or(0));
        }
        const StreamInfo* current = info ? &*info : nullptr;
        if (Status s = CheckExpected(req.stream, req.expected, current); !s.ok()) {
            if (s.code() == StatusCode::kWrongExpectedVersion) {
                auto replay = MatchStoredAppend(req.stream, req.expected, req.events, lookup);
                if (!replay.ok()) return replay.status();
                if (replay->has_value()) return **replay;
            }
            return s;
        }
        int64_t version = current != nullptr ? current->version : -1;
        AppendResult result;
        for (const EventData& e : req.events) {
            ++version;
            auto r = Run(*conn_,
                         fmt::format("INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, "
                                     "metadata, recorded_at) VALUES ({}, {}, {}, {}, {}, {}, {})",
                                     Hex(e.event_id.bytes_view()), mysql::Quote(m, req.stream), version,
                                     mysql::Quote(m, e.type), Hex(e.data), mysql::Quote(m, e.metadata), now),
                         "inserting an event");
            if (!r.ok()) {
                const bool dup_id = conn_->last_error() == ER_DUP_ENTRY &&
                                    r.status().message().find("keel_events_event_id") != std::string::npos;
                if (!dup_id) return Mapped(r.status());
                // An event id is stored already: an idempotent re-send or a misuse of the id. Undo this request's
                // rows first so that the lookups see only what was stored before.
                KEEL_RETURN_IF_ERROR(Internal("ROLLBACK TO SAVEPOINT keel_uow_append").status());
                auto replay = MatchStoredAppend(req.stream, req.expected, req.events, lookup);
                if (!replay.ok()) return replay.status();
                if (replay->has_value()) return **replay;
                return Status::InvalidArgument(r.status().message());
            }
            if (result.first_position == 0) result.first_position = r->insert_id;
            result.last_position = r->insert_id;
        }
        result.next_expected_version = version;
        auto up = Internal(fmt::format(
            "INSERT INTO keel_streams (stream_id, version, state, custom_metadata, updated_at) VALUES ({}, {}, 0, '', "
            "{}) ON DUPLICATE KEY UPDATE version = VALUES(version), state = 0, updated_at = VALUES(updated_at)",
            mysql::Quote(m, req.stream), version, now));
        if (!up.ok()) return up.status();
        return result;
    }

    MysqlUnitsOfWork& owner_;
    std::unique_ptr<Conn> conn_;
    bool open_ = true;
    bool sequenced_ = false;
    int64_t last_recorded_ = 0;
    int64_t last_position_ = 0;
    Status dead_;
};

}  // namespace

MysqlUnitsOfWork::MysqlUnitsOfWork(mysql::MysqlConfig config) : config_(std::move(config)) {}
MysqlUnitsOfWork::~MysqlUnitsOfWork() = default;

void MysqlUnitsOfWork::Give(std::unique_ptr<mysql::Conn> conn) {
    std::lock_guard lock(mu_);
    if (idle_.size() < 8) idle_.push_back(std::move(conn));
}

void MysqlUnitsOfWork::Invalidate() {
    std::lock_guard lock(mu_);
    ready_ = false;
}

Status MysqlUnitsOfWork::Prepare(mysql::Conn& c) {
    const std::string lock_name = mysql::Quote(c.get(), "keel:" + config_.database.substr(0, 59));
    auto got = c.Query(fmt::format("SELECT GET_LOCK({}, {})", lock_name, std::max(config_.lock_wait_timeout_s, 10)),
                       "taking the schema migration lock");
    if (!got.ok()) return got.status();
    if (got->empty() || got->front().at(0).value_or("0") != "1") {
        return Status::Unavailable(
            fmt::format("{}: another process holds the keel schema migration lock; try again", c.where()));
    }
    auto body = [&]() -> Status {
        auto v = c.Query("SELECT version FROM keel_schema WHERE component = 'unit_of_work'", "reading keel_schema");
        if (!v.ok()) return v.status();
        const int64_t version = v->empty() ? 0 : std::strtoll(v->front().at(0).value_or("0").c_str(), nullptr, 10);
        if (version > kUowSchemaVersion) {
            return Status::NotSupported(fmt::format(
                "{} has unit-of-work schema version {}, newer than this keel build supports ({}); upgrade keel",
                c.where(), version, kUowSchemaVersion));
        }
        if (version < kUowSchemaVersion) {
            KEEL_RETURN_IF_ERROR(RunScript(c, kUowSchema, "creating the outbox, inbox and lease tables"));
            KEEL_RETURN_IF_ERROR(c.Exec(
                fmt::format("INSERT INTO keel_schema (component, version, updated_at) VALUES ('unit_of_work', {}, {}) "
                            "ON DUPLICATE KEY UPDATE version = VALUES(version), updated_at = VALUES(updated_at)",
                            kUowSchemaVersion, NowMicros()),
                "recording the unit-of-work schema version"));
        }
        return CheckAllInnoDb(c);
    };
    Status s = body();
    auto released = c.Query(fmt::format("SELECT RELEASE_LOCK({})", lock_name), "releasing the migration lock");
    if (s.ok() && !released.ok()) return released.status();
    return s;
}

Result<std::unique_ptr<mysql::Conn>> MysqlUnitsOfWork::Take() {
    std::unique_ptr<mysql::Conn> conn;
    bool ready = false;
    {
        std::lock_guard lock(mu_);
        ready = ready_;
        if (!idle_.empty()) {
            conn = std::move(idle_.back());
            idle_.pop_back();
        }
    }
    if (!conn) {
        auto opened = mysql::Conn::Open(config_);
        if (!opened.ok()) return opened.status();
        conn = std::move(*opened);
    }
    if (!ready) {
        KEEL_RETURN_IF_ERROR(Prepare(*conn));
        std::lock_guard lock(mu_);
        ready_ = true;
    }
    return conn;
}

template <class F>
auto MysqlUnitsOfWork::With(F&& fn) -> decltype(fn(std::declval<mysql::Conn&>())) {
    for (int attempt = 0;; ++attempt) {
        auto conn = Take();
        if (!conn.ok()) {
            if (attempt == 0 && conn.status().code() == StatusCode::kUnavailable) continue;
            return conn.status();
        }
        auto result = fn(**conn);
        if (!(*conn)->broken()) {
            Give(std::move(*conn));
            return result;
        }
        {
            std::lock_guard lock(mu_);
            idle_.clear();  // most likely all dead (a server restart)
        }
        if (attempt > 0) return result;
    }
}

Result<std::unique_ptr<TransactionBackend>> MysqlUnitsOfWork::Begin() {
    for (int attempt = 0;; ++attempt) {
        auto conn = Take();
        if (!conn.ok()) {
            if (attempt == 0 && conn.status().code() == StatusCode::kUnavailable) continue;
            return conn.status();
        }
        auto tx = std::make_unique<MysqlTransaction>(*this, std::move(*conn));
        Status s = tx->Begin();
        if (s.ok()) return std::unique_ptr<TransactionBackend>(std::move(tx));
        // An idle connection the server dropped (wait_timeout, restart): once more on a fresh one.
        if (attempt > 0 || s.code() != StatusCode::kUnavailable) return s;
        tx.reset();
        std::lock_guard lock(mu_);
        idle_.clear();
    }
}

Result<bool> MysqlUnitsOfWork::AcquireLease(std::string_view name, std::string_view owner, int64_t now, int64_t until) {
    return With([&](Conn& c) -> Result<bool> {
        KEEL_RETURN_IF_ERROR(c.Exec("START TRANSACTION", "taking a lease"));
        auto body = [&]() -> Result<bool> {
            auto cur = Run(c,
                           fmt::format("SELECT owner, `until` FROM keel_leases WHERE name = {} FOR UPDATE",
                                       mysql::Quote(c.get(), name)),
                           "reading a lease");
            if (!cur.ok()) return cur.status();
            if (cur->rows.empty()) {
                KEEL_RETURN_IF_ERROR(
                    Run(c,
                        fmt::format("INSERT INTO keel_leases (name, owner, `until`) VALUES ({}, {}, {})",
                                    mysql::Quote(c.get(), name), mysql::Quote(c.get(), owner), until),
                        "writing a lease")
                        .status());
                return true;
            }
            const bool free = cur->rows.Text(0, 0).value_or("") == owner || cur->rows.Int(0, 1).value_or(0) < now;
            if (!free) return false;
            KEEL_RETURN_IF_ERROR(Run(c,
                                     fmt::format("UPDATE keel_leases SET owner = {}, `until` = {} WHERE name = {}",
                                                 mysql::Quote(c.get(), owner), until, mysql::Quote(c.get(), name)),
                                     "writing a lease")
                                     .status());
            return true;
        };
        auto held = body();
        if (!held.ok()) {
            if (!c.broken()) (void)c.Exec("ROLLBACK", "rolling back");
            return held.status();
        }
        KEEL_RETURN_IF_ERROR(c.Exec("COMMIT", "taking a lease"));
        return *held;
    });
}

Status MysqlUnitsOfWork::ReleaseLease(std::string_view name, std::string_view owner) {
    return With([&](Conn& c) {
        return c.Exec(fmt::format("DELETE FROM keel_leases WHERE name = {} AND owner = {}", mysql::Quote(c.get(), name),
                                  mysql::Quote(c.get(), owner)),
                      "releasing a lease");
    });
}

Result<std::vector<OutboxRow>> MysqlUnitsOfWork::PendingOutbox(size_t limit) {
    return With([&](Conn& c) -> Result<std::vector<OutboxRow>> {
        auto r = Run(c,
                     fmt::format("SELECT id, message_id, destination, `key`, payload, headers, created_at FROM "
                                 "keel_outbox WHERE published_at IS NULL ORDER BY id LIMIT {}",
                                 limit),
                     "reading the outbox");
        if (!r.ok()) return r.status();
        std::vector<OutboxRow> out;
        const Rows& rows = r->rows;
        for (size_t i = 0; i < rows.size(); ++i) {
            OutboxRow row;
            row.position = rows.Int(i, 0).value_or(0);
            auto id = Uuid::FromBytes(rows.Text(i, 1).value_or(""));
            if (!id.ok())
                return Status::Corruption(fmt::format("outbox row {} has a malformed message id", row.position));
            row.message.message_id = *id;
            row.message.destination = rows.Text(i, 2).value_or("");
            row.message.key = rows.Text(i, 3).value_or("");
            row.message.payload = rows.Text(i, 4).value_or("");
            auto headers = nlohmann::json::parse(rows.Text(i, 5).value_or(""), nullptr, /*allow_exceptions=*/false);
            if (headers.is_object()) {
                for (auto it = headers.begin(); it != headers.end(); ++it) {
                    row.message.headers.emplace_back(
                        it.key(), it.value().is_string() ? it.value().get<std::string>() : it.value().dump());
                }
            }
            row.created_at = rows.Int(i, 6).value_or(0);
            out.push_back(std::move(row));
        }
        return out;
    });
}

Status MysqlUnitsOfWork::MarkPublished(std::string_view lease, std::string_view owner,
                                       std::span<const int64_t> positions, int64_t now) {
    return With([&](Conn& c) -> Status {
        KEEL_RETURN_IF_ERROR(c.Exec("START TRANSACTION", "marking outbox rows published"));
        auto body = [&]() -> Status {
            auto cur = Run(
                c,
                fmt::format("SELECT owner FROM keel_leases WHERE name = {} FOR UPDATE", mysql::Quote(c.get(), lease)),
                "checking the relay lease");
            if (!cur.ok()) return cur.status();
            if (cur->rows.empty() || cur->rows.Text(0, 0).value_or("") != owner) {
                return Status::FailedPrecondition(
                    fmt::format("relay '{}' lost the lease '{}'; another relay publishes now", owner, lease));
            }
            if (positions.empty()) return Status::Ok();
            std::string list;
            for (int64_t p : positions) list += fmt::format("{}{}", list.empty() ? "" : ", ", p);
            return Run(c, fmt::format("UPDATE keel_outbox SET published_at = {} WHERE id IN ({})", now, list),
                       "marking outbox rows published")
                .status();
        };
        Status s = body();
        if (!s.ok()) {
            if (!c.broken()) (void)c.Exec("ROLLBACK", "rolling back");
            return s;
        }
        return c.Exec("COMMIT", "marking outbox rows published");
    });
}

Result<int64_t> MysqlUnitsOfWork::RepublishOutbox(int64_t from) {
    return With([&](Conn& c) -> Result<int64_t> {
        auto r = Run(c,
                     fmt::format("UPDATE keel_outbox SET published_at = NULL WHERE id >= {} AND published_at IS NOT "
                                 "NULL",
                                 from),
                     "re-publishing the outbox");
        if (!r.ok()) return r.status();
        return r->affected;
    });
}

Result<int64_t> MysqlUnitsOfWork::PurgeOutbox(int64_t published_before) {
    return With([&](Conn& c) -> Result<int64_t> {
        auto r = Run(c,
                     fmt::format("DELETE FROM keel_outbox WHERE published_at IS NOT NULL AND published_at < {}",
                                 published_before),
                     "purging the outbox");
        if (!r.ok()) return r.status();
        return r->affected;
    });
}

Result<OutboxStats> MysqlUnitsOfWork::GetOutboxStats() {
    return With([&](Conn& c) -> Result<OutboxStats> {
        auto r = Run(c,
                     "SELECT (SELECT count(*) FROM keel_outbox WHERE published_at IS NULL), "
                     "(SELECT count(*) FROM keel_outbox WHERE published_at IS NOT NULL), "
                     "(SELECT COALESCE(min(created_at), 0) FROM keel_outbox WHERE published_at IS NULL), "
                     "(SELECT COALESCE(max(id), 0) FROM keel_outbox)",
                     "reading outbox statistics");
        if (!r.ok()) return r.status();
        const Rows& rows = r->rows;
        return OutboxStats{rows.Int(0, 0).value_or(0), rows.Int(0, 1).value_or(0), rows.Int(0, 2).value_or(0),
                           rows.Int(0, 3).value_or(0)};
    });
}

}  // namespace keel::detail
