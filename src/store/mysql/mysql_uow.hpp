#pragma once
// Units of work on MariaDB (unit_of_work.hpp): each one a transaction on a connection of its own, taken from a small
// pool. The service's SQL runs over the text protocol with its `?` parameters bound client-side (escaped for the
// connection's character set), so any statement works and result columns keep their types. Appends take the
// sequencer lock (see mysql_backend.hpp) at their first Append and hold it until the unit ends, so AUTO_INCREMENT
// order stays commit order. The outbox, inbox and lease tables are this file's, in keel_schema component
// 'unit_of_work' (migrated at the first Begin, under the same named lock as the event-store schema).
//
// InnoDB only (seed 002: a MyISAM table keeps its rows when the transaction rolls back): at the first Begin, and after
// any CREATE/ALTER run in a unit of work, every base table of the database must be transactional, else Begin (or
// that statement) fails with kFailedPrecondition naming the table.
//
// Thread-safety: MysqlUnitsOfWork::Begin may be called from any thread; each TransactionBackend by one thread.

#include <memory>
#include <mutex>
#include <vector>

#include "store/backend.hpp"
#include "store/mysql/mysql_uri.hpp"

namespace keel::detail {

namespace mysql {
class Conn;
}

class MysqlUnitsOfWork {
public:
    explicit MysqlUnitsOfWork(mysql::MysqlConfig config);
    ~MysqlUnitsOfWork();

    Result<std::unique_ptr<TransactionBackend>> Begin();

    // The outbox relay's side (StoreBackend's outbox methods; same contracts). Outbox rows are inserted under the
    // append sequencer lock, so their ids are in commit order and PendingOutbox never skips a row that commits later.
    Result<bool> AcquireLease(std::string_view name, std::string_view owner, int64_t now, int64_t until);
    Status ReleaseLease(std::string_view name, std::string_view owner);
    Result<std::vector<OutboxRow>> PendingOutbox(size_t limit);
    Status MarkPublished(std::string_view lease, std::string_view owner, std::span<const int64_t> positions,
                         int64_t now);
    Result<int64_t> RepublishOutbox(int64_t from);
    Result<int64_t> PurgeOutbox(int64_t published_before);
    Result<OutboxStats> GetOutboxStats();

    // Connections back from a finished unit of work (internal).
    void Give(std::unique_ptr<mysql::Conn> conn);
    // A unit of work created a non-transactional table: check the database again at the next Begin.
    void Invalidate();

private:
    Status Prepare(mysql::Conn& conn);
    // A connection whose schema is ready (from the pool or new).
    Result<std::unique_ptr<mysql::Conn>> Take();
    // Runs `fn` on a ready connection, returning it to the pool unless it broke.
    template <class F>
    auto With(F&& fn) -> decltype(fn(std::declval<mysql::Conn&>()));

    const mysql::MysqlConfig config_;
    std::mutex mu_;
    bool ready_ = false;  // schema migrated and engines checked
    std::vector<std::unique_ptr<mysql::Conn>> idle_;
};

}  // namespace keel::detail
