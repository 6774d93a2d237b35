#include "store/mysql/mysql_conn.hpp"

#include <algorithm>
#include <mutex>

#include <errmsg.h>
#include <fmt/format.h>
#include <mysqld_error.h>

namespace keel::detail::mysql {
namespace {

// Error messages of the client library and the server are one line nearly always; make sure.
std::string OneLine(std::string_view text) {
    std::string out(text);
    std::replace_if(
        out.begin(), out.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out;
}

bool IsIntegerType(enum_field_types type) {
    switch (type) {
        case MYSQL_TYPE_TINY:
        case MYSQL_TYPE_SHORT:
        case MYSQL_TYPE_LONG:
        case MYSQL_TYPE_INT24:
        case MYSQL_TYPE_LONGLONG:
        case MYSQL_TYPE_YEAR: return true;
        default: return false;
    }
}

// Points empty text parameters somewhere valid: the client library dislikes a null buffer.
const char* DataOrEmpty(std::string_view value) {
    static const char kEmpty[1] = {0};
    return value.data() != nullptr ? value.data() : kEmpty;
}

void InitLibraryOnce() {
    static std::once_flag once;
    std::call_once(once, [] { mysql_library_init(0, nullptr, nullptr); });
}

Status ConnectError(MYSQL* mysql, const MysqlConfig& config) {
    const unsigned int error = mysql_errno(mysql);
    const std::string message = OneLine(mysql_error(mysql));
    const std::string where = config.Where();
    switch (error) {
        case ER_ACCESS_DENIED_ERROR:
        case ER_ACCESS_DENIED_NO_PASSWORD_ERROR:
            return Status::InvalidArgument(
                fmt::format("MariaDB at {} refused the credentials of user '{}': {} (error {})", where, config.user,
                            message, error));
        case ER_BAD_DB_ERROR:
            return Status::InvalidArgument(fmt::format(
                "database '{}' does not exist on MariaDB at {} (keel creates its tables, never the database: run "
                "CREATE DATABASE `{}`): {} (error {})",
                config.database, where, config.database, message, error));
        case ER_DBACCESS_DENIED_ERROR:
            return Status::InvalidArgument(
                fmt::format("user '{}' may not use database '{}' on MariaDB at {}: {} "
                            "(error {})",
                            config.user, config.database, where, message, error));
        default: break;
    }
    if (IsConnectionError(error) || error == ER_CON_COUNT_ERROR || error == ER_SERVER_SHUTDOWN) {
        return Status::Unavailable(
            fmt::format("cannot connect to MariaDB at {}: {} (error {})", where, message, error));
    }
    return ErrorStatus(error, message, "connecting", where);
}

Status SetUpSession(Conn& conn, const MysqlConfig& config) {
    // STRICT_ALL_TABLES: a value a column cannot hold is an error, never a silent truncation.
    // NO_ENGINE_SUBSTITUTION: CREATE TABLE … ENGINE=InnoDB fails instead of quietly using another engine.
    KEEL_RETURN_IF_ERROR(conn.Exec(
        fmt::format("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO', "
                    "innodb_lock_wait_timeout = {0}, lock_wait_timeout = {0}, autocommit = 1",
                    config.lock_wait_timeout_s),
        "setting up the session"));
    return conn.Exec("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ", "setting the isolation level");
}

}  // namespace

bool IsConnectionError(unsigned int error) {
    switch (error) {
        case CR_CONNECTION_ERROR:
        case CR_CONN_HOST_ERROR:
        case CR_UNKNOWN_HOST:
        case CR_SERVER_GONE_ERROR:
        case CR_SERVER_LOST:
        case CR_SERVER_LOST_EXTENDED:
        case CR_COMMANDS_OUT_OF_SYNC:
        case ER_CONNECTION_KILLED:
        case ER_SERVER_SHUTDOWN:
        case ER_NEW_ABORTING_CONNECTION:
        case ER_NET_READ_ERROR:
        case ER_NET_READ_INTERRUPTED: return true;
        default: return false;
    }
}

Status ErrorStatus(unsigned int error, std::string_view message, std::string_view what, const std::string& where) {
    const std::string text = fmt::format("{}: {} (MariaDB error {} at {})", what, OneLine(message), error, where);
    if (IsConnectionError(error)) return Status::Unavailable(text);
    switch (error) {
        case ER_LOCK_WAIT_TIMEOUT:
        case ER_LOCK_DEADLOCK:
        case ER_CON_COUNT_ERROR:
        case ER_OPTION_PREVENTS_STATEMENT:
        case ER_STATEMENT_TIMEOUT:
        case ER_QUERY_INTERRUPTED: return Status::Unavailable(text);
        case ER_ACCESS_DENIED_ERROR:
        case ER_ACCESS_DENIED_NO_PASSWORD_ERROR:
        case ER_DBACCESS_DENIED_ERROR:
        case ER_BAD_DB_ERROR:
        case ER_DUP_ENTRY:
        case ER_TRUNCATED_WRONG_VALUE_FOR_FIELD:
        case ER_INVALID_CHARACTER_STRING:
        case ER_DATA_TOO_LONG:
        case ER_WARN_DATA_OUT_OF_RANGE:
        case ER_NET_PACKET_TOO_LARGE: return Status::InvalidArgument(text);
        case ER_NO_SUCH_TABLE: return Status::FailedPrecondition(text);
        default: return Status::Internal(text);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Stmt

Stmt::Stmt(Conn& conn, MYSQL_STMT* stmt) : conn_(conn), stmt_(stmt) {
    const size_t params = mysql_stmt_param_count(stmt_);
    params_.resize(params);
    param_ints_.resize(params);
    param_lens_.resize(params);
    for (size_t i = 0; i < params; ++i) BindNull(i);
    const size_t columns = mysql_stmt_field_count(stmt_);
    results_.resize(columns);
    result_is_int_.resize(columns);
    result_ints_.resize(columns);
    result_bufs_.resize(columns);
    result_lens_.resize(columns);
    result_nulls_.resize(columns);
    result_errors_.resize(columns);
    if (columns > 0) {
        const MYSQL_FIELD* fields = mariadb_stmt_fetch_fields(stmt_);
        for (size_t i = 0; i < columns; ++i) result_is_int_[i] = IsIntegerType(fields[i].type);
        const my_bool update_max_length = 1;
        mysql_stmt_attr_set(stmt_, STMT_ATTR_UPDATE_MAX_LENGTH, &update_max_length);
    }
}

Stmt::~Stmt() {
    mysql_stmt_close(stmt_);
}

MYSQL_BIND& Stmt::Param(size_t index) {
    MYSQL_BIND& b = params_.at(index);
    b = MYSQL_BIND{};
    return b;
}

Stmt& Stmt::Bind(size_t index, int64_t value) {
    MYSQL_BIND& b = Param(index);
    param_ints_[index] = value;
    b.buffer_type = MYSQL_TYPE_LONGLONG;
    b.buffer = &param_ints_[index];
    return *this;
}

Stmt& Stmt::Bind(size_t index, std::optional<int64_t> value) {
    return value ? Bind(index, *value) : BindNull(index);
}

Stmt& Stmt::BindText(size_t index, std::string_view value) {
    MYSQL_BIND& b = Param(index);
    param_lens_[index] = value.size();
    b.buffer_type = MYSQL_TYPE_STRING;
    b.buffer = const_cast<char*>(DataOrEmpty(value));
    b.buffer_length = value.size();
    b.length = &param_lens_[index];
    return *this;
}

Stmt& Stmt::BindBlob(size_t index, std::string_view value) {
    BindText(index, value);
    params_[index].buffer_type = MYSQL_TYPE_BLOB;
    return *this;
}

Stmt& Stmt::BindNull(size_t index) {
    Param(index).buffer_type = MYSQL_TYPE_NULL;
    return *this;
}

Status Stmt::Execute(std::string_view what) {
    conn_.ResetError();
    mysql_stmt_free_result(stmt_);
    if (!params_.empty() && mysql_stmt_bind_param(stmt_, params_.data()) != 0) {
        return conn_.Fail(mysql_stmt_errno(stmt_), mysql_stmt_error(stmt_), what);
    }
    if (mysql_stmt_execute(stmt_) != 0) return conn_.Fail(mysql_stmt_errno(stmt_), mysql_stmt_error(stmt_), what);
    if (results_.empty()) return Status::Ok();
    if (mysql_stmt_store_result(stmt_) != 0) {
        return conn_.Fail(mysql_stmt_errno(stmt_), mysql_stmt_error(stmt_), what);
    }
    return BindResults();
}

Status Stmt::BindResults() {
    const MYSQL_FIELD* fields = mariadb_stmt_fetch_fields(stmt_);
    for (size_t i = 0; i < results_.size(); ++i) {
        MYSQL_BIND& b = results_[i];
        b = MYSQL_BIND{};
        b.is_null = &result_nulls_[i];
        b.error = &result_errors_[i];
        b.length = &result_lens_[i];
        if (result_is_int_[i]) {
            b.buffer_type = MYSQL_TYPE_LONGLONG;
            b.buffer = &result_ints_[i];
            continue;
        }
        const size_t need = std::max<size_t>(fields[i].max_length, 1);
        if (result_bufs_[i].size() < need) result_bufs_[i].resize(need);
        b.buffer_type = MYSQL_TYPE_BLOB;
        b.buffer = result_bufs_[i].data();
        b.buffer_length = result_bufs_[i].size();
    }
    if (mysql_stmt_bind_result(stmt_, results_.data()) != 0) {
        return conn_.Fail(mysql_stmt_errno(stmt_), mysql_stmt_error(stmt_), "binding result columns");
    }
    return Status::Ok();
}

Result<bool> Stmt::Next() {
    const int rc = mysql_stmt_fetch(stmt_);
    if (rc == 0) return true;
    if (rc == MYSQL_NO_DATA) {
        mysql_stmt_free_result(stmt_);
        return false;
    }
    if (rc == MYSQL_DATA_TRUNCATED) {
        // max_length should have sized every buffer; fetch what did not fit column by column.
        bool rebind = false;
        for (size_t i = 0; i < results_.size(); ++i) {
            if (result_errors_[i] == 0 || result_is_int_[i]) continue;
            result_bufs_[i].resize(result_lens_[i]);
            results_[i].buffer = result_bufs_[i].data();
            results_[i].buffer_length = result_bufs_[i].size();
            if (mysql_stmt_fetch_column(stmt_, &results_[i], static_cast<unsigned int>(i), 0) != 0) {
                return conn_.Fail(mysql_stmt_errno(stmt_), mysql_stmt_error(stmt_), "fetching a long column");
            }
            rebind = true;
        }
        if (rebind && mysql_stmt_bind_result(stmt_, results_.data()) != 0) {
            return conn_.Fail(mysql_stmt_errno(stmt_), mysql_stmt_error(stmt_), "binding result columns");
        }
        return true;
    }
    return conn_.Fail(mysql_stmt_errno(stmt_), mysql_stmt_error(stmt_), "fetching a row");
}

uint64_t Stmt::InsertId() const {
    return mysql_stmt_insert_id(stmt_);
}

uint64_t Stmt::AffectedRows() const {
    return mysql_stmt_affected_rows(stmt_);
}

// ---------------------------------------------------------------------------------------------------------------
// Conn

Result<std::unique_ptr<Conn>> Conn::Open(const MysqlConfig& config) {
    InitLibraryOnce();
    MYSQL* mysql = mysql_init(nullptr);
    if (mysql == nullptr) return Status::Internal("mysql_init failed (out of memory)");
    const unsigned int connect_timeout = static_cast<unsigned int>(config.connect_timeout.count());
    const unsigned int read_timeout = static_cast<unsigned int>(config.read_timeout.count());
    const unsigned int write_timeout = static_cast<unsigned int>(config.write_timeout.count());
    const my_bool reconnect = 0;  // keel reconnects itself, knowing what was in flight
    const unsigned int protocol = config.socket.empty() ? MYSQL_PROTOCOL_TCP : MYSQL_PROTOCOL_SOCKET;
    const unsigned int local_infile = 0;
    mysql_options(mysql, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
    mysql_options(mysql, MYSQL_OPT_READ_TIMEOUT, &read_timeout);
    mysql_options(mysql, MYSQL_OPT_WRITE_TIMEOUT, &write_timeout);
    mysql_options(mysql, MYSQL_OPT_RECONNECT, &reconnect);
    mysql_options(mysql, MYSQL_OPT_PROTOCOL, &protocol);
    mysql_options(mysql, MYSQL_OPT_LOCAL_INFILE, &local_infile);
    mysql_options(mysql, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    if (mysql_real_connect(mysql, config.host.c_str(), config.user.empty() ? nullptr : config.user.c_str(),
                           config.password ? config.password->c_str() : nullptr, config.database.c_str(), config.port,
                           config.socket.empty() ? nullptr : config.socket.c_str(), 0) == nullptr) {
        Status s = ConnectError(mysql, config);
        mysql_close(mysql);
        return s;
    }
    std::unique_ptr<Conn> conn(new Conn(mysql, config.Where()));
    KEEL_RETURN_IF_ERROR(SetUpSession(*conn, config));
    return conn;
}

Conn::~Conn() {
    stmts_.clear();  // statements before the connection they belong to
    mysql_close(mysql_);
}

Status Conn::Fail(unsigned int error, const char* message, std::string_view what) {
    last_error_ = error;
    if (IsConnectionError(error)) broken_ = true;
    return ErrorStatus(error, message != nullptr ? message : "", what, where_);
}

Status Conn::DiscardResults(std::string_view what) {
    MYSQL_RES* res = mysql_store_result(mysql_);
    if (res != nullptr) {
        mysql_free_result(res);
    } else if (mysql_field_count(mysql_) != 0) {
        return FailHere(what);
    }
    return Status::Ok();
}

Status Conn::Exec(std::string_view sql, std::string_view what) {
    ResetError();
    if (mysql_real_query(mysql_, sql.data(), sql.size()) != 0) return FailHere(what);
    return DiscardResults(what);
}

Status Conn::ExecWithHook(std::string_view sql, std::string_view what, const std::function<void(int)>& after_send) {
    if (!after_send) return Exec(sql, what);
    ResetError();
    if (mysql_send_query(mysql_, sql.data(), sql.size()) != 0) return FailHere(what);
    after_send(static_cast<int>(mysql_get_socket(mysql_)));
    if (mysql_read_query_result(mysql_) != 0) return FailHere(what);
    return DiscardResults(what);
}

Result<std::vector<Row>> Conn::Query(std::string_view sql, std::string_view what) {
    ResetError();
    if (mysql_real_query(mysql_, sql.data(), sql.size()) != 0) return FailHere(what);
    MYSQL_RES* res = mysql_store_result(mysql_);
    if (res == nullptr) {
        if (mysql_field_count(mysql_) != 0) return FailHere(what);
        return std::vector<Row>();
    }
    std::vector<Row> rows;
    const unsigned int columns = mysql_num_fields(res);
    while (MYSQL_ROW row = mysql_fetch_row(res)) {
        const unsigned long* lengths = mysql_fetch_lengths(res);
        Row out(columns);
        for (unsigned int i = 0; i < columns; ++i) {
            if (row[i] != nullptr) out[i] = std::string(row[i], lengths[i]);
        }
        rows.push_back(std::move(out));
    }
    mysql_free_result(res);
    return rows;
}

Status Conn::EnableMultiStatements() {
    if (multi_statements_) return Status::Ok();
    ResetError();
    if (mysql_set_server_option(mysql_, MYSQL_OPTION_MULTI_STATEMENTS_ON) != 0) {
        return FailHere("enabling multi-statements");
    }
    multi_statements_ = true;
    return Status::Ok();
}

Result<std::vector<Conn::StatementResult>> Conn::MultiQuery(std::string_view sql, std::string_view what, size_t* failed,
                                                            const std::function<void(int)>& after_send) {
    ResetError();
    std::vector<StatementResult> out;
    auto fail = [&] {
        if (failed != nullptr) *failed = out.size();
        return FailHere(what);
    };
    if (after_send) {
        if (mysql_send_query(mysql_, sql.data(), sql.size()) != 0) return fail();
        after_send(static_cast<int>(mysql_get_socket(mysql_)));
        if (mysql_read_query_result(mysql_) != 0) return fail();
    } else if (mysql_real_query(mysql_, sql.data(), sql.size()) != 0) {
        return fail();
    }
    for (;;) {
        StatementResult r;
        if (MYSQL_RES* res = mysql_store_result(mysql_)) {
            r.has_rows = true;
            const unsigned int columns = mysql_num_fields(res);
            while (MYSQL_ROW row = mysql_fetch_row(res)) {
                const unsigned long* lengths = mysql_fetch_lengths(res);
                Row values(columns);
                for (unsigned int i = 0; i < columns; ++i) {
                    if (row[i] != nullptr) values[i] = std::string(row[i], lengths[i]);
                }
                r.rows.push_back(std::move(values));
            }
            mysql_free_result(res);
        } else if (mysql_field_count(mysql_) != 0) {
            return fail();
        } else {
            r.affected_rows = mysql_affected_rows(mysql_);
            r.insert_id = mysql_insert_id(mysql_);
        }
        out.push_back(std::move(r));
        const int next = mysql_next_result(mysql_);
        if (next < 0) return out;
        if (next > 0) return fail();
    }
}

Result<Stmt*> Conn::Prepared(std::string_view sql) {
    auto it = stmts_.find(sql);
    if (it != stmts_.end()) return it->second.get();
    ResetError();
    MYSQL_STMT* stmt = mysql_stmt_init(mysql_);
    if (stmt == nullptr) return FailHere("preparing a statement");
    if (mysql_stmt_prepare(stmt, sql.data(), sql.size()) != 0) {
        Status s = Fail(mysql_stmt_errno(stmt), mysql_stmt_error(stmt), "preparing a statement");
        mysql_stmt_close(stmt);
        return s;
    }
    auto owned = std::make_unique<Stmt>(*this, stmt);
    Stmt* raw = owned.get();
    stmts_.emplace(std::string(sql), std::move(owned));
    return raw;
}

std::string Quote(MYSQL* mysql, std::string_view value) {
    std::string out(value.size() * 2 + 3, '\0');
    out[0] = '\'';
    const unsigned long n = mysql_real_escape_string(mysql, out.data() + 1, value.data(), value.size());
    out.resize(n + 1);
    out.push_back('\'');
    return out;
}

void AppendQuoted(MYSQL* mysql, std::string& out, std::string_view value) {
    const size_t start = out.size();
    out.resize(start + value.size() * 2 + 2);
    out[start] = '\'';
    const unsigned long n = mysql_real_escape_string(mysql, out.data() + start + 1, value.data(), value.size());
    out.resize(start + 1 + n);
    out.push_back('\'');
}

void AppendHex(std::string& out, std::string_view bytes) {
    static constexpr char kDigits[] = "0123456789abcdef";
    if (bytes.empty()) {
        out += "''";
        return;
    }
    const size_t start = out.size();
    out.resize(start + 3 + bytes.size() * 2);
    char* p = out.data() + start;
    *p++ = 'X';
    *p++ = '\'';
    for (unsigned char c : bytes) {
        *p++ = kDigits[c >> 4];
        *p++ = kDigits[c & 0xF];
    }
    *p = '\'';
}

}  // namespace keel::detail::mysql
