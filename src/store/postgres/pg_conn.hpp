#pragma once
// A thin RAII layer over libpq: connections, results, binary parameters and binary result decoding, and the mapping
// of SQLSTATEs to keel::Status. Not thread-safe: one connection is used by one thread at a time.

#include <libpq-fe.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "keel/status.hpp"
#include "keel/uuid.hpp"

namespace keel::pg {

// Type OIDs keel binds (pg_type.h).
inline constexpr Oid kInt8Oid = 20;
inline constexpr Oid kInt4Oid = 23;
inline constexpr Oid kTextOid = 25;
inline constexpr Oid kByteaOid = 17;
inline constexpr Oid kUuidOid = 2950;
inline constexpr Oid kTextArrayOid = 1009;
inline constexpr Oid kByteaArrayOid = 1001;
inline constexpr Oid kUuidArrayOid = 2951;
inline constexpr Oid kInt4ArrayOid = 1007;
inline constexpr Oid kInt8ArrayOid = 1016;

struct ResultDeleter {
    void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

// Binary-format parameters for PQexecPrepared / PQsendQueryPrepared. Values are copied into owned storage.
class Params {
public:
    Params& Int8(int64_t v);
    Params& Int4(int32_t v);
    Params& OptInt8(std::optional<int64_t> v);
    Params& Text(std::string_view v);
    Params& Bytea(std::string_view v);
    Params& Uuid(const keel::Uuid& v);
    Params& Null(Oid type);
    // A one-dimensional array without NULLs of `elem_oid` elements, each given as its binary value.
    Params& Array(Oid array_oid, Oid elem_oid, const std::vector<std::string_view>& elems);
    Params& TextArray(const std::vector<std::string>& elems);  // NULL when empty
    Params& Int4Array(const std::vector<int32_t>& elems);
    Params& Int8Array(const std::vector<int64_t>& elems);

    int size() const { return static_cast<int>(values_.size()); }
    const Oid* types() const { return types_.data(); }
    const char* const* values() const;  // valid until the next Add
    const int* lengths() const { return lengths_.data(); }
    const int* formats() const { return formats_.data(); }

private:
    Params& Add(Oid type, std::string bytes, bool null = false);
    std::vector<Oid> types_;
    std::vector<std::string> values_;
    mutable std::vector<const char*> ptrs_;
    std::vector<int> lengths_;
    std::vector<int> formats_;
};

// Binary result accessors.
int64_t GetInt8(const PGresult* r, int row, int col);
int32_t GetInt4(const PGresult* r, int row, int col);
std::optional<int64_t> GetOptInt8(const PGresult* r, int row, int col);
std::string_view GetBytes(const PGresult* r, int row, int col);
bool IsNull(const PGresult* r, int row, int col);

// Maps a failed result (or a connection failure when `r` is null) to a Status: connection errors and
// serialization/deadlock/lock/shutdown classes → kUnavailable, unique violations → kAlreadyExists, the rest →
// kInternal. `what` says what keel was doing.
Status ToStatus(PGconn* conn, const PGresult* r, std::string_view what);
// True when the error means the connection is gone (the outcome of an in-flight commit is unknown).
bool IsConnectionLost(PGconn* conn);

class Conn {
public:
    // Connects with a libpq connection string or URI. Errors name host, port and database and say why.
    static Result<std::unique_ptr<Conn>> Connect(const std::string& conninfo);
    ~Conn();
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;

    PGconn* get() const { return conn_; }

    // Runs plain SQL (one or more statements, no parameters).
    Status Exec(std::string_view sql);
    // Prepares a named statement.
    Status Prepare(const std::string& name, const std::string& sql, int nparams = 0, const Oid* types = nullptr);
    // Runs a prepared statement with binary parameters and binary results. Returns the result of a successful
    // command, else the mapped error.
    Result<ResultPtr> ExecPrepared(const std::string& name, const Params& params);
    // Runs SQL with binary parameters and binary results (unprepared).
    Result<ResultPtr> ExecParams(const std::string& sql, const Params& params);

    // "host:port/database" for messages.
    std::string Describe() const;

private:
    explicit Conn(PGconn* c) : conn_(c) {}
    PGconn* conn_;
};

}  // namespace keel::pg
