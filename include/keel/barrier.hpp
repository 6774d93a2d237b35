#pragma once
/// keel::dtm::Barrier: DTM's sub-transaction barrier. A branch handler of a distributed transaction (a saga action or
/// compensation, a TCC try/confirm/cancel, a two-phase message's local transaction) runs its business SQL through
/// Barrier::Call, in the service's own local transaction (a keel::UnitOfWork). One insert into the barrier table in
/// that same transaction makes the branch safe against what a coordinator does to it:
/// - idempotency: the same (gid, branch_id, op) called twice runs the business once;
/// - null compensation: a cancel/compensate whose try/action never ran does nothing (and succeeds);
/// - hanging prevention: a try/action arriving after its cancel/compensate does nothing;
/// - the two-phase message: DoAndSubmitDB's local transaction and the coordinator's back-check (QueryPrepared) race
///   on one row, so exactly one of "committed" and "rolled back" wins.
///
/// The table is DTM's (`dtm_barrier.barrier` in DTM, named `barrier` here by default): columns id, trans_type, gid,
/// branch_id, op, barrier_id, reason, create_time, update_time and a unique key (gid, branch_id, op, barrier_id), so a
/// service written with keel and one written with DTM's Go/Java/Python barrier can share it. It lives in the
/// service's database: SQLite (`sqlite:`), PostgreSQL (`postgresql:`) or MariaDB/MySQL (`mysql:`, InnoDB). See
/// docs/dtm-client.md.
///
/// Result convention (shared with keel::dtm in dtm.hpp): a business function returns
///   - OK: the branch succeeded (HTTP 200 `{"dtm_result":"SUCCESS"}`);
///   - a status with code kFailedPrecondition — make one with dtm::Failure("why") — for DTM's FAILURE (HTTP 409):
///     a saga action rolls the saga back, a TCC try aborts the global transaction, a msg back-check marks it failed;
///   - any other error: a transient failure the coordinator retries later (HTTP 500).
/// BarrierReply() maps a Status to that HTTP status and body.
///
/// Thread-safety: a Barrier belongs to one request (one thread); it counts its Calls. The free functions are
/// thread-safe. Under concurrency the unique key serializes a try and its cancel: the second waits for the first's
/// transaction (on PostgreSQL and MariaDB by the row lock, on SQLite by the database write lock).

#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "keel/event_store.hpp"
#include "keel/status.hpp"
#include "keel/unit_of_work.hpp"

namespace keel::dtm {

/// The code of DTM's FAILURE result: the branch (or global transaction) failed for good and must not be retried.
inline constexpr StatusCode kFailureCode = StatusCode::kFailedPrecondition;
/// The code of Barrier::Call's "duplicated" result for op=msg: the back-check already decided the message rolled back.
inline constexpr StatusCode kDuplicatedCode = StatusCode::kAlreadyExists;

/// A FAILURE status (code kFailureCode) with `reason`; what a business function returns to say "roll back".
inline Status Failure(std::string reason) {
    return Status(kFailureCode, std::move(reason));
}
/// True for DTM's FAILURE (code kFailureCode).
inline bool IsFailure(const Status& s) {
    return s.code() == kFailureCode;
}

/// The SQL dialect of the service's database, which the insert-ignore and the DDL depend on.
enum class BarrierDialect {
    kAuto,      ///< found out on first use with one extra statement (`SELECT version()`)
    kSqlite,    ///< INSERT OR IGNORE
    kPostgres,  ///< INSERT … ON CONFLICT DO NOTHING
    kMysql,     ///< INSERT IGNORE (MariaDB and MySQL)
};

/// Where barrier rows are kept.
struct BarrierTable {
    /// The table name: letters, digits and '_', optionally `schema.table` (PostgreSQL schema or MariaDB database;
    /// SQLite has none and refuses a dot). Default: "barrier" in the service's own database/schema. DTM's default
    /// is "dtm_barrier.barrier".
    std::string name = "barrier";
    /// Default: kAuto. EnsureBarrierTable returns a BarrierTable with the dialect filled in: pass that one to the
    /// barriers to save the probe statement on each request.
    BarrierDialect dialect = BarrierDialect::kAuto;
};

/// Creates the barrier table (and its indexes, and on PostgreSQL/MariaDB the schema/database of a dotted name) in
/// `db`'s database if missing, and returns `table` with its dialect found. Safe to call at every start-up and from
/// several processes. Errors: kInvalidArgument for a bad table name (the message names it) or a dotted name on
/// SQLite; kNotSupported for a store without transactions (`memory:`); kUnavailable when the database is busy or
/// unreachable; on MariaDB kFailedPrecondition when an existing table of that name is not InnoDB.
Result<BarrierTable> EnsureBarrierTable(EventStore& db, BarrierTable table = {});

/// A branch call's identity, as the coordinator sent it in the query string, and the barrier it guards.
class Barrier {
public:
    using BusinessFn = std::function<Status(UnitOfWork&)>;

    /// From a branch call's query parameters `trans_type`, `gid`, `branch_id`, `op` (other keys are ignored).
    /// kInvalidArgument naming the first missing or empty one (e.g. "barrier: missing query parameter 'gid'").
    static Result<Barrier> FromQuery(const std::map<std::string, std::string>& query, BarrierTable table = {});
    /// From explicit fields; the same validation as FromQuery.
    static Result<Barrier> Make(std::string trans_type, std::string gid, std::string branch_id, std::string op,
                                BarrierTable table = {});

    const std::string& trans_type() const noexcept { return trans_type_; }
    const std::string& gid() const noexcept { return gid_; }
    const std::string& branch_id() const noexcept { return branch_id_; }
    const std::string& op() const noexcept { return op_; }
    const BarrierTable& table() const noexcept { return table_; }

    /// Runs `fn` behind the barrier, in `uow` (a unit of work just begun on the service's database), and ends `uow`:
    /// committed on success (also when `fn` was skipped), rolled back on any error; afterwards uow.active() is false.
    /// Each Call uses the next barrier id: "01" for the first on this object, "02" for the second …
    ///
    /// Returns OK when `fn` ran and its work committed, and also (without running `fn`) for a repeated call
    /// (idempotency), for a cancel/compensate/rollback whose try/action never ran (null compensation; its row then
    /// stops the late try/action: hanging prevention), and for a try/action after its cancel. Errors: `fn`'s own
    /// status unchanged (its work rolled back); for op "msg" whose row exists already (the back-check decided
    /// "rolled back" first) kDuplicatedCode with nothing done; kFailedPrecondition when `uow` is not active; the
    /// database's errors (kUnavailable when busy, kInvalidArgument when the barrier table is missing …).
    Status Call(UnitOfWork& uow, const BusinessFn& fn);
    /// Begins a unit of work on `db` (with `mediator` for domain events, may be null) and runs Call on it.
    /// Errors: UnitOfWork::Begin's, then Call's.
    Status Call(EventStore& db, const BusinessFn& fn, const Mediator* mediator = nullptr);

    /// The two-phase message's back-check (the handler of DoAndSubmitDB's query_prepared URL): in a transaction of its
    /// own, inserts the "rolled back" marker (gid, branch '00', op 'msg', barrier '01', reason 'rollback') unless the
    /// local transaction's row is there, waiting for that transaction while it is still open, then reads the row.
    /// Returns OK when the local transaction committed (SUCCESS: the coordinator submits the message), a
    /// kFailureCode status when it never committed and now never will (FAILURE: the coordinator fails the message),
    /// or the database's error (the coordinator asks again later).
    Status QueryPrepared(EventStore& db) const;

private:
    Barrier() = default;
    Result<BarrierDialect> Dialect(UnitOfWork& uow);

    std::string trans_type_, gid_, branch_id_, op_;
    BarrierTable table_;
    int calls_ = 0;
};

/// An HTTP reply in DTM's protocol for a branch handler's result.
struct BarrierHttpReply {
    int status = 200;
    std::string body;  ///< JSON
};

/// OK → 200 `{"dtm_result":"SUCCESS"}`; kFailureCode → 409 `{"dtm_result":"FAILURE","message":…}`; anything else →
/// 500 `{"message":…}` (a message that contains "FAILURE" or "ONGOING" has them lower-cased, as DTM clients read
/// those words anywhere in a body).
BarrierHttpReply BarrierReply(const Status& status);

}  // namespace keel::dtm
