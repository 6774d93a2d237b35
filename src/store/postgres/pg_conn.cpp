#include "store/postgres/pg_conn.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <cstring>

namespace keel::pg {
namespace {

std::string BigEndian(uint64_t v, int bytes) {
    std::string out(static_cast<size_t>(bytes), '\0');
    for (int i = bytes - 1; i >= 0; --i) {
        out[static_cast<size_t>(i)] = static_cast<char>(v & 0xFF);
        v >>= 8;
    }
    return out;
}

uint64_t ReadBigEndian(const char* p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
    return v;
}

std::string FirstLine(const char* msg) {
    std::string s = msg != nullptr ? msg : "";
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    const size_t nl = s.find('\n');
    if (nl != std::string::npos) s = s.substr(0, nl);
    return s;
}

void IgnoreNotice(void*, const char*) {}

}  // namespace

Params& Params::Add(Oid type, std::string bytes, bool null) {
    types_.push_back(type);
    lengths_.push_back(null ? -1 : static_cast<int>(bytes.size()));
    values_.push_back(std::move(bytes));
    formats_.push_back(1);
    return *this;
}

const char* const* Params::values() const {
    ptrs_.clear();
    for (size_t i = 0; i < values_.size(); ++i) ptrs_.push_back(lengths_[i] < 0 ? nullptr : values_[i].data());
    return ptrs_.data();
}

Params& Params::Int8(int64_t v) { return Add(kInt8Oid, BigEndian(static_cast<uint64_t>(v), 8)); }
Params& Params::Int4(int32_t v) { return Add(kInt4Oid, BigEndian(static_cast<uint32_t>(v), 4)); }
Params& Params::OptInt8(std::optional<int64_t> v) { return v ? Int8(*v) : Null(kInt8Oid); }
Params& Params::Text(std::string_view v) { return Add(kTextOid, std::string(v)); }
Params& Params::Bytea(std::string_view v) { return Add(kByteaOid, std::string(v)); }
Params& Params::Uuid(const keel::Uuid& v) { return Add(kUuidOid, std::string(v.bytes_view())); }
Params& Params::Null(Oid type) { return Add(type, std::string(), /*null=*/true); }

Params& Params::Array(Oid array_oid, Oid elem_oid, const std::vector<std::string_view>& elems) {
    // Binary array: ndim, has_null, element type, then per dimension (size, lower bound), then (length, bytes)*.
    std::string out;
    size_t total = 20;
    for (auto e : elems) total += 4 + e.size();
    out.reserve(total);
    out += BigEndian(1, 4);
    out += BigEndian(0, 4);
    out += BigEndian(elem_oid, 4);
    out += BigEndian(elems.size(), 4);
    out += BigEndian(1, 4);
    for (auto e : elems) {
        out += BigEndian(e.size(), 4);
        out.append(e.data(), e.size());
    }
    return Add(array_oid, std::move(out));
}

Params& Params::TextArray(const std::vector<std::string>& elems) {
    if (elems.empty()) return Null(kTextArrayOid);
    std::vector<std::string_view> views(elems.begin(), elems.end());
    return Array(kTextArrayOid, kTextOid, views);
}

Params& Params::Int4Array(const std::vector<int32_t>& elems) {
    std::vector<std::string> bytes;
    bytes.reserve(elems.size());
    for (int32_t v : elems) bytes.push_back(BigEndian(static_cast<uint32_t>(v), 4));
    return Array(kInt4ArrayOid, kInt4Oid, std::vector<std::string_view>(bytes.begin(), bytes.end()));
}

Params& Params::Int8Array(const std::vector<int64_t>& elems) {
    std::vector<std::string> bytes;
    bytes.reserve(elems.size());
    for (int64_t v : elems) bytes.push_back(BigEndian(static_cast<uint64_t>(v), 8));
    return Array(kInt8ArrayOid, kInt8Oid, std::vector<std::string_view>(bytes.begin(), bytes.end()));
}

bool IsNull(const PGresult* r, int row, int col) { return PQgetisnull(r, row, col) != 0; }

int64_t GetInt8(const PGresult* r, int row, int col) {
    return static_cast<int64_t>(ReadBigEndian(PQgetvalue(r, row, col), 8));
}

int32_t GetInt4(const PGresult* r, int row, int col) {
    return static_cast<int32_t>(static_cast<uint32_t>(ReadBigEndian(PQgetvalue(r, row, col), 4)));
}

std::optional<int64_t> GetOptInt8(const PGresult* r, int row, int col) {
    if (IsNull(r, row, col)) return std::nullopt;
    return GetInt8(r, row, col);
}

std::string_view GetBytes(const PGresult* r, int row, int col) {
    return {PQgetvalue(r, row, col), static_cast<size_t>(PQgetlength(r, row, col))};
}

bool IsConnectionLost(PGconn* conn) { return conn == nullptr || PQstatus(conn) != CONNECTION_OK; }

Status ToStatus(PGconn* conn, const PGresult* r, std::string_view what) {
    const char* state = r != nullptr ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
    std::string msg = FirstLine(r != nullptr ? PQresultErrorMessage(r) : nullptr);
    if (msg.empty()) msg = FirstLine(conn != nullptr ? PQerrorMessage(conn) : "no connection");
    std::string text = fmt::format("{}: {}", what, msg);
    if (state != nullptr) text += fmt::format(" (SQLSTATE {})", state);
    if (IsConnectionLost(conn) || state == nullptr) return Status::Unavailable(text);
    const std::string_view s(state);
    if (s == "23505") return Status::AlreadyExists(text);
    // 08: connection exception, 40: transaction rollback (serialization, deadlock), 53: insufficient resources,
    // 55P03: lock not available, 57: operator intervention (shutdown, cancel).
    if (s.starts_with("08") || s.starts_with("40") || s.starts_with("53") || s == "55P03" || s.starts_with("57")) {
        return Status::Unavailable(text);
    }
    if (s.starts_with("22") || s.starts_with("23")) return Status::InvalidArgument(text);
    return Status::Internal(text);
}

Result<std::unique_ptr<Conn>> Conn::Connect(const std::string& conninfo) {
    PGconn* c = PQconnectdb(conninfo.c_str());
    if (c == nullptr) return Status::Unavailable("cannot connect to PostgreSQL: out of memory");
    if (PQstatus(c) != CONNECTION_OK) {
        const char* host = PQhost(c);
        const char* port = PQport(c);
        const char* db = PQdb(c);
        Status s = Status::Unavailable(fmt::format("cannot connect to PostgreSQL at {}:{} database '{}': {}",
                                                   host ? host : "?", port ? port : "?", db ? db : "?",
                                                   FirstLine(PQerrorMessage(c))));
        PQfinish(c);
        return s;
    }
    PQsetNoticeProcessor(c, IgnoreNotice, nullptr);
    return std::unique_ptr<Conn>(new Conn(c));
}

Conn::~Conn() { PQfinish(conn_); }

std::string Conn::Describe() const {
    const char* host = PQhost(conn_);
    const char* port = PQport(conn_);
    const char* db = PQdb(conn_);
    return fmt::format("{}:{}/{}", host ? host : "?", port ? port : "?", db ? db : "?");
}

Status Conn::Exec(std::string_view sql) {
    const std::string copy(sql);
    ResultPtr r(PQexec(conn_, copy.c_str()));
    const auto st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return Status::Ok();
    return ToStatus(conn_, r.get(), fmt::format("'{}'", copy.substr(0, 60)));
}

Status Conn::Prepare(const std::string& name, const std::string& sql, int nparams, const Oid* types) {
    ResultPtr r(PQprepare(conn_, name.c_str(), sql.c_str(), nparams, types));
    if (r && PQresultStatus(r.get()) == PGRES_COMMAND_OK) return Status::Ok();
    return ToStatus(conn_, r.get(), fmt::format("preparing {}", name));
}

namespace {
Result<ResultPtr> Check(PGconn* conn, ResultPtr r, std::string_view what) {
    const auto st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return r;
    return ToStatus(conn, r.get(), what);
}
}  // namespace

Result<ResultPtr> Conn::ExecPrepared(const std::string& name, const Params& p) {
    ResultPtr r(PQexecPrepared(conn_, name.c_str(), p.size(), p.values(), p.lengths(), p.formats(), 1));
    return Check(conn_, std::move(r), name);
}

Result<ResultPtr> Conn::ExecParams(const std::string& sql, const Params& p) {
    ResultPtr r(PQexecParams(conn_, sql.c_str(), p.size(), p.types(), p.values(), p.lengths(), p.formats(), 1));
    return Check(conn_, std::move(r), sql.substr(0, 60));
}

}  // namespace keel::pg
