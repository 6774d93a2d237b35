#pragma once
// A thin RAII layer over the MariaDB client library (libmariadb): one connection set up the way keel needs it
// (utf8mb4, strict SQL mode, no engine substitution, no automatic reconnect, timeouts), server-side prepared
// statements with bound parameters and results, and the mapping of error numbers to keel::Status codes.
//
// A Conn is used by one thread at a time. Once an error says the connection is gone (`broken()`), the Conn and its
// statements are useless: the owner drops it and opens a new one.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <mysql.h>

#include "keel/status.hpp"

#include "store/mysql/mysql_uri.hpp"

namespace keel::detail::mysql {

// True for the errors after which the connection cannot be used again: the server went away, the connection was
// killed or the network failed.
bool IsConnectionError(unsigned int error);

// Maps a client or server error number to the code a caller acts on: connection loss, lock wait timeout, deadlock,
// a read-only server or too many connections → kUnavailable; access denied and an unknown database →
// kInvalidArgument; values the column refuses (bad UTF-8, too long) and duplicate keys → kInvalidArgument; a missing
// table → kFailedPrecondition; anything else → kInternal. The message is one line: "<what>: <server message> (MariaDB
// error N at <where>)".
Status ErrorStatus(unsigned int error, std::string_view message, std::string_view what, const std::string& where);

class Conn;

// A server-side prepared statement. Parameters are bound by 0-based index before Execute; text and blob parameters
// point at the caller's bytes, which must stay alive until Execute returns. A query's rows are stored on the client
// by Execute and read with Next.
class Stmt {
public:
    Stmt(Conn& conn, MYSQL_STMT* stmt);
    ~Stmt();
    Stmt(const Stmt&) = delete;
    Stmt& operator=(const Stmt&) = delete;

    Stmt& Bind(size_t index, int64_t value);
    Stmt& Bind(size_t index, std::optional<int64_t> value);
    Stmt& BindText(size_t index, std::string_view value);
    Stmt& BindBlob(size_t index, std::string_view value);
    Stmt& BindNull(size_t index);

    // Executes with the bound parameters. For a query, the whole result is fetched to the client.
    Status Execute(std::string_view what);
    // Advances to the next row: true when there is one, false at the end.
    Result<bool> Next();

    bool IsNull(size_t column) const { return result_nulls_[column] != 0; }
    int64_t Int(size_t column) const { return result_ints_[column]; }
    std::optional<int64_t> OptInt(size_t column) const {
        return IsNull(column) ? std::nullopt : std::optional<int64_t>(Int(column));
    }
    std::string_view Str(size_t column) const {
        return IsNull(column) ? std::string_view()
                              : std::string_view(result_bufs_[column].data(), result_lens_[column]);
    }

    uint64_t InsertId() const;
    uint64_t AffectedRows() const;

private:
    MYSQL_BIND& Param(size_t index);
    Status BindResults();

    Conn& conn_;
    MYSQL_STMT* stmt_;
    std::vector<MYSQL_BIND> params_;
    std::vector<int64_t> param_ints_;
    std::vector<unsigned long> param_lens_;
    std::vector<MYSQL_BIND> results_;
    std::vector<bool> result_is_int_;
    std::vector<int64_t> result_ints_;
    std::vector<std::string> result_bufs_;
    std::vector<unsigned long> result_lens_;
    std::vector<my_bool> result_nulls_;
    std::vector<my_bool> result_errors_;
};

using Row = std::vector<std::optional<std::string>>;

class Conn {
public:
    // Connects and sets the session up. Errors name where (host:port/database) and why, on one line.
    static Result<std::unique_ptr<Conn>> Open(const MysqlConfig& config);
    ~Conn();
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;

    MYSQL* get() noexcept { return mysql_; }
    const std::string& where() const noexcept { return where_; }
    // The connection is gone; drop this object.
    bool broken() const noexcept { return broken_; }
    // The error number of the last failure on this connection (0: none).
    unsigned int last_error() const noexcept { return last_error_; }
    // The server's id of this connection (what KILL takes).
    unsigned long ThreadId() { return mysql_thread_id(mysql_); }

    // Runs one statement over the text protocol and discards any rows.
    Status Exec(std::string_view sql, std::string_view what);
    // Runs one statement over the text protocol and returns its rows (NULL → nullopt).
    Result<std::vector<Row>> Query(std::string_view sql, std::string_view what);
    // As Exec, but calls `after_send(socket)` after the statement was sent and before the reply is read: the hook
    // through which tests break a connection at the worst moment (see SetMysqlTestHooks).
    Status ExecWithHook(std::string_view sql, std::string_view what, const std::function<void(int)>& after_send);
    // What one statement of MultiQuery returned: its rows (when it is a query) or its affected rows and first
    // AUTO_INCREMENT value.
    struct StatementResult {
        bool has_rows = false;
        std::vector<Row> rows;
        uint64_t affected_rows = 0;
        uint64_t insert_id = 0;
    };
    // Allows MultiQuery on this connection (one COM_SET_OPTION round trip; idempotent).
    Status EnableMultiStatements();
    // Runs several statements separated by ';' over the text protocol in one round trip (EnableMultiStatements
    // first) and returns each one's result, in order. When a statement fails, the server runs none after it: the
    // error is returned and `*failed` (if given) says which statement it was (0-based). `after_send`, if set, is
    // called as in ExecWithHook.
    Result<std::vector<StatementResult>> MultiQuery(std::string_view sql, std::string_view what,
                                                    size_t* failed = nullptr,
                                                    const std::function<void(int)>& after_send = {});
    // The statement for `sql`, prepared on first use and cached for the life of the connection.
    Result<Stmt*> Prepared(std::string_view sql);

    // Records a failure (marking the connection broken when it is a connection error) and returns its Status.
    Status Fail(unsigned int error, const char* message, std::string_view what);
    // Forgets the last error; every statement calls it first, so last_error() is about the latest statement.
    void ResetError() noexcept { last_error_ = 0; }

private:
    Conn(MYSQL* mysql, std::string where) : mysql_(mysql), where_(std::move(where)) {}
    Status FailHere(std::string_view what) { return Fail(mysql_errno(mysql_), mysql_error(mysql_), what); }
    Status DiscardResults(std::string_view what);

    MYSQL* mysql_;
    std::string where_;
    bool broken_ = false;
    bool multi_statements_ = false;
    unsigned int last_error_ = 0;
    struct Hash {
        using is_transparent = void;
        size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };
    std::unordered_map<std::string, std::unique_ptr<Stmt>, Hash, std::equal_to<>> stmts_;
};

// Quotes `value` as an SQL string literal for this connection's character set.
std::string Quote(MYSQL* mysql, std::string_view value);
// Appends `value` to `out` as an SQL string literal for this connection's character set ('…', escaped).
void AppendQuoted(MYSQL* mysql, std::string& out, std::string_view value);
// Appends `bytes` to `out` as a hexadecimal literal (X'…'), which any column takes byte for byte.
void AppendHex(std::string& out, std::string_view bytes);

}  // namespace keel::detail::mysql
