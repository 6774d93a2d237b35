#pragma once
// Storage: where keeld keeps global transactions and branch rows. A narrow interface with one implementation per
// backend (src/coordinator/sqlite_storage.cpp, src/coordinator/postgres_storage.cpp), chosen by URI (OpenStorage).
// Every status change is a conditional update on the expected status; due transactions are claimed with a lease
// (owner + next_cron_time), so several keeld processes can share one PostgreSQL database.
//
// Thread-safety: every method may be called from any number of threads at once. Methods block (they run on the
// engine's storage threads, never on its network threads).

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/model.hpp"
#include "keel/status.hpp"

namespace keel::coordinator {

class Storage {
public:
    virtual ~Storage() = default;

    /// Inserts a new global (its id is assigned) and its branch rows in one transaction. kAlreadyExists when the gid
    /// exists (nothing written); kUnavailable on database errors.
    virtual Status SaveNew(const Global& global, const std::vector<Branch>& branches) = 0;

    /// The global with `gid`, or nullopt.
    virtual Result<std::optional<Global>> FindGlobal(std::string_view gid) = 0;
    /// Its branch rows in insertion order (empty when none).
    virtual Result<std::vector<Branch>> FindBranches(std::string_view gid) = 0;

    /// Applies `change` if the stored status is change.from: true when applied, false when the status differed or the
    /// gid is unknown.
    virtual Result<bool> ChangeStatus(std::string_view gid, const GlobalChange& change) = 0;

    /// In one transaction: sets the status (and finish/rollback time) of the given branch rows (matched by
    /// gid, branch_id, op) and, when `change` is given, applies it as ChangeStatus does. If `change` does not apply
    /// (status moved), nothing is written and false is returned.
    virtual Result<bool> UpdateBranches(std::string_view gid, const std::vector<Branch>& branches,
                                        const std::optional<GlobalChange>& change) = 0;

    /// registerBranch: inserts `branches` if the global exists with status `expected_status`; kFailedPrecondition
    /// when it does not (or is in another status), kAlreadyExists when one of the (gid, branch_id, op) exists.
    virtual Status AddBranches(std::string_view gid, std::string_view expected_status,
                               const std::vector<Branch>& branches) = 0;

    /// Claims one due transaction (status prepared/submitted/aborting, next_cron_time <= now_ms): sets its owner to
    /// `owner` and next_cron_time to now_ms + lease_ms, conditionally, and returns it; nullopt when none is due.
    virtual Result<std::optional<Global>> ClaimDue(std::string_view owner, int64_t now_ms, int64_t lease_ms) = 0;

    /// Sets next_cron_time / next_cron_interval of a non-final global (no status check) and clears its owner (the
    /// lease ends); false when unknown.
    virtual Result<bool> Schedule(std::string_view gid, int64_t next_cron_time, int64_t next_cron_interval) = 0;

    /// /all: globals matching `filter`, newest first, at most filter.limit.
    virtual Result<std::vector<Global>> List(const ListFilter& filter) = 0;

    /// resetCronTime: sets next_cron_time = now_ms for up to `limit` non-final globals whose next_cron_time is later
    /// than now_ms + timeout_ms... as DTM does; returns how many were reset and whether more remain.
    virtual Result<std::pair<int64_t, bool>> ResetCronTime(int64_t now_ms, int64_t timeout_ms, int64_t limit) = 0;

    /// Makes every leased (owner not empty) non-final global due now and clears its owner (used at start-up with a
    /// single-instance store: no other process can hold a lease on it). Returns how many.
    virtual Result<int64_t> ReleaseAllLeases(int64_t now_ms) = 0;
};

/// Opens `sqlite:///path.db` or `postgresql://…`, creating the schema if missing (docs/http-api.md "Storage").
/// kInvalidArgument for an unknown scheme or a malformed URI; kUnavailable when the database cannot be reached.
/// `exclusive` is set true for stores only one keeld may use at a time (SQLite: a lock file beside the database,
/// kFailedPrecondition naming it when another keeld holds it).
Result<std::unique_ptr<Storage>> OpenStorage(std::string_view uri, bool* exclusive);

/// Storage-independent encoding of TransOptions as the persisted JSON (DTM's option names).
std::string EncodeOptions(const TransOptions& options);
TransOptions DecodeOptions(std::string_view json);

}  // namespace keel::coordinator
