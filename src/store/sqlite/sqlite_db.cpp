#include "store/sqlite/sqlite_db.hpp"

#include <fmt/format.h>

namespace keel::sqlite {

Status ToStatus(int rc, sqlite3* db, std::string_view what) {
    const char* msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    std::string text = fmt::format("{}: {} (sqlite code {})", what, msg, rc);
    switch (rc & 0xFF) {
        case SQLITE_OK:
        case SQLITE_DONE:
        case SQLITE_ROW: return Status::Ok();
        case SQLITE_BUSY:
        case SQLITE_LOCKED: return Status::Unavailable(text + "; another connection holds the database lock");
        case SQLITE_NOTADB: return Status::Corruption(text);
        case SQLITE_CORRUPT: return Status::Corruption(text);
        case SQLITE_CONSTRAINT: return Status::AlreadyExists(text);
        case SQLITE_IOERR:
        case SQLITE_FULL:
        case SQLITE_CANTOPEN:
        case SQLITE_READONLY:
        case SQLITE_PERM: return Status::Unavailable(text);
        default: return Status::Internal(text);
    }
}

Status Stmt::Exec(std::string_view what) {
    int rc = Step();
    while (rc == SQLITE_ROW) rc = Step();
    Status s = rc == SQLITE_DONE ? Status::Ok() : ToStatus(rc, db_, what);
    Reset();
    return s;
}

Result<std::unique_ptr<Db>> Db::Open(const std::string& path, int flags, const std::string& vfs) {
    if (!vfs.empty() && sqlite3_vfs_find(vfs.c_str()) == nullptr) {
        return Status::InvalidArgument(fmt::format("no SQLite VFS named '{}' is registered", vfs));
    }
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX, vfs.empty() ? nullptr : vfs.c_str());
    if (rc != SQLITE_OK) {
        Status s = ToStatus(rc, raw, fmt::format("cannot open SQLite database '{}'", path));
        sqlite3_close_v2(raw);
        return s;
    }
    sqlite3_extended_result_codes(raw, 1);
    return std::unique_ptr<Db>(new Db(raw, path));
}

Db::~Db() { sqlite3_close_v2(db_); }

Status Db::Exec(std::string_view sql) {
    char* err = nullptr;
    const std::string copy(sql);
    const int rc = sqlite3_exec(db_, copy.c_str(), nullptr, nullptr, &err);
    if (rc == SQLITE_OK) return Status::Ok();
    std::string msg = err != nullptr ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    return ToStatus(rc, db_, fmt::format("'{}' failed ({})", copy.substr(0, 80), msg));
}

Result<Stmt> Db::Prepare(std::string_view sql) {
    sqlite3_stmt* stmt = nullptr;
    const int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
    if (rc != SQLITE_OK) return ToStatus(rc, db_, fmt::format("cannot prepare '{}'", sql.substr(0, 80)));
    return Stmt(db_, stmt);
}

Result<Stmt> Db::PreparePersistent(std::string_view sql) {
    sqlite3_stmt* stmt = nullptr;
    const int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT,
                                      &stmt, nullptr);
    if (rc != SQLITE_OK) return ToStatus(rc, db_, fmt::format("cannot prepare '{}'", sql.substr(0, 80)));
    return Stmt(db_, stmt);
}

Result<std::string> Db::QueryText(std::string_view sql) {
    auto st = Prepare(sql);
    if (!st.ok()) return st.status();
    const int rc = st->Step();
    if (rc == SQLITE_ROW) return std::string(st->Text(0));
    if (rc == SQLITE_DONE) return Status::NotFound(fmt::format("'{}' returned no row", sql.substr(0, 80)));
    return ToStatus(rc, db_, fmt::format("'{}' failed", sql.substr(0, 80)));
}

Result<int64_t> Db::QueryInt(std::string_view sql) {
    auto st = Prepare(sql);
    if (!st.ok()) return st.status();
    const int rc = st->Step();
    if (rc == SQLITE_ROW) return st->Int(0);
    if (rc == SQLITE_DONE) return Status::NotFound(fmt::format("'{}' returned no row", sql.substr(0, 80)));
    return ToStatus(rc, db_, fmt::format("'{}' failed", sql.substr(0, 80)));
}

}  // namespace keel::sqlite
