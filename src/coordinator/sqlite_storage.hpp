#pragma once
#include <memory>
#include <string>

#include "coordinator/storage.hpp"

namespace keel::coordinator {

/// keeld's storage in one SQLite database (WAL, synchronous=FULL). Writes from many threads are group-committed: one
/// thread writes the queued changes in one transaction, each in its own savepoint. Only one keeld may use a database
/// file at a time (an flock on "<path>.keeld-lock"; kFailedPrecondition naming it when taken).
Result<std::unique_ptr<Storage>> OpenSqliteStorage(const std::string& path);

}  // namespace keel::coordinator
