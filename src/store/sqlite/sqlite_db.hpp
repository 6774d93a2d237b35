#pragma once
// A thin RAII layer over the sqlite3 C API: a connection, prepared statements, and the mapping of SQLite result
// codes to keel::Status. Not thread-safe: one connection is used by one thread at a time.

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "keel/status.hpp"

namespace keel::sqlite {

// Maps an SQLite result code to a Status: BUSY/LOCKED → kUnavailable, NOTADB → kCorruption, CONSTRAINT →
// kAlreadyExists, others → kUnavailable (I/O, full disk) or kInternal. `what` says what keel was doing.
Status ToStatus(int rc, sqlite3* db, std::string_view what);

class Stmt {
public:
    Stmt() = default;
    Stmt(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
    Stmt(Stmt&& o) noexcept : db_(o.db_), stmt_(o.stmt_) { o.stmt_ = nullptr; }
    Stmt& operator=(Stmt&& o) noexcept {
        if (this != &o) {
            Finalize();
            db_ = o.db_;
            stmt_ = o.stmt_;
            o.stmt_ = nullptr;
        }
        return *this;
    }
    ~Stmt() { Finalize(); }

    // Binding is 1-based, as in SQLite. Text and blobs are not copied: they must outlive the statement's step.
    Stmt& Bind(int i, int64_t v) {
        sqlite3_bind_int64(stmt_, i, v);
        return *this;
    }
    Stmt& Bind(int i, std::string_view text) {
        // A default string_view has a null data(), which SQLite would bind as NULL; bind '' instead.
        sqlite3_bind_text(stmt_, i, text.data() ? text.data() : "", static_cast<int>(text.size()), SQLITE_STATIC);
        return *this;
    }
    Stmt& BindBlob(int i, std::string_view bytes) {
        sqlite3_bind_blob(stmt_, i, bytes.data() ? bytes.data() : "", static_cast<int>(bytes.size()), SQLITE_STATIC);
        return *this;
    }
    Stmt& Bind(int i, std::optional<int64_t> v) {
        if (v) {
            sqlite3_bind_int64(stmt_, i, *v);
        } else {
            sqlite3_bind_null(stmt_, i);
        }
        return *this;
    }
    Stmt& BindNull(int i) {
        sqlite3_bind_null(stmt_, i);
        return *this;
    }

    // SQLITE_ROW, SQLITE_DONE or an error code.
    int Step() { return sqlite3_step(stmt_); }
    // Steps to completion expecting no rows; maps errors.
    Status Exec(std::string_view what);
    void Reset() {
        sqlite3_reset(stmt_);
        sqlite3_clear_bindings(stmt_);
    }

    int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
    bool IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
    std::optional<int64_t> OptInt(int col) const {
        return IsNull(col) ? std::nullopt : std::optional<int64_t>(Int(col));
    }
    std::string_view Text(int col) const {
        const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
        return p ? std::string_view(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, col))) : std::string_view();
    }
    std::string_view Blob(int col) const {
        const auto* p = static_cast<const char*>(sqlite3_column_blob(stmt_, col));
        return p ? std::string_view(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, col))) : std::string_view();
    }

    sqlite3_stmt* get() const { return stmt_; }
    sqlite3* db() const { return db_; }

private:
    void Finalize() {
        if (stmt_ != nullptr) sqlite3_finalize(stmt_);
        stmt_ = nullptr;
    }
    sqlite3* db_ = nullptr;
    sqlite3_stmt* stmt_ = nullptr;
};

// Resets a statement when the scope ends, so that a cached statement never holds a read snapshot open.
class StmtReset {
public:
    explicit StmtReset(Stmt& s) : s_(s) {}
    ~StmtReset() { s_.Reset(); }
    StmtReset(const StmtReset&) = delete;
    StmtReset& operator=(const StmtReset&) = delete;

private:
    Stmt& s_;
};

class Db {
public:
    // Opens `path` with the given sqlite3_open_v2 flags (SQLITE_OPEN_NOMUTEX is added) through the named VFS
    // (empty: the default one; tests use a fault-injecting VFS).
    static Result<std::unique_ptr<Db>> Open(const std::string& path, int flags, const std::string& vfs = {});
    ~Db();
    Db(const Db&) = delete;
    Db& operator=(const Db&) = delete;

    Status Exec(std::string_view sql);  // one or more statements, no results
    Result<Stmt> Prepare(std::string_view sql);
    // For statements run often: kept with SQLITE_PREPARE_PERSISTENT.
    Result<Stmt> PreparePersistent(std::string_view sql);
    // The first column of the first row as text / integer (kNotFound if no row).
    Result<std::string> QueryText(std::string_view sql);
    Result<int64_t> QueryInt(std::string_view sql);

    sqlite3* get() const { return db_; }
    const std::string& path() const { return path_; }

private:
    Db(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
    sqlite3* db_;
    std::string path_;
};

}  // namespace keel::sqlite
