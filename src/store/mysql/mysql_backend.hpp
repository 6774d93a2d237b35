#pragma once
// `mysql://` and `mariadb://` — the event store in a MariaDB database (libmariadb), InnoDB only.
//
// Appends run on one writer connection per store object; every append transaction first locks the single row of
// `keel_sequencer` (SELECT … FOR UPDATE), so appends from all processes are serialized and AUTO_INCREMENT order is
// commit order: a `$all` reader can never see a later position before an earlier one commits. Group commit batches
// the concurrent appends of one store object into one transaction with a savepoint per append. Reads use a pool of
// reader connections. Connections lost are reopened; an append whose commit outcome is unknown is retried, and the
// event ids (a unique key) make the retry write nothing twice. docs/mysql.md has the schema and the details.

#include <functional>
#include <memory>

#include "store/backend.hpp"
#include "store/registry.hpp"

namespace keel::detail {

// The schema version this build writes and understands.
inline constexpr int64_t kMysqlSchemaVersion = 1;

Result<std::unique_ptr<StoreBackend>> OpenMysqlBackend(const ParsedUri& uri, const StoreOptions& options);

// Fault injection for tests: hooks into the writer connection of a store opened by OpenMysqlBackend.
struct MysqlTestHooks {
    // Called with the writer's socket after COMMIT of an append transaction was sent and before its reply is read.
    // A test that breaks the socket here makes the commit's outcome unknown to keel (while the server commits).
    std::function<void(int socket)> after_commit_sent;
};

// Installs `hooks` on `backend` (kInvalidArgument if it is not a mysql backend).
Status SetMysqlTestHooks(StoreBackend& backend, MysqlTestHooks hooks);

}  // namespace keel::detail
