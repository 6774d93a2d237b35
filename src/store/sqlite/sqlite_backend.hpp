#pragma once
// `sqlite:` — the embedded event store: one SQLite file in WAL mode. Appends run in `BEGIN IMMEDIATE`
// transactions on one writer connection (group commit batches many appends into one); reads use a pool of reader
// connections, so readers never block the writer. SQLite has one writer at a time, so rowid order is commit order
// and `$all` readers can never skip an event. The schema is docs/sqlite-schema.md.

#include <memory>

#include "store/backend.hpp"
#include "store/registry.hpp"

namespace keel::detail {

// The schema version this build writes and understands.
inline constexpr int64_t kSqliteSchemaVersion = 2;

Result<std::unique_ptr<StoreBackend>> OpenSqliteBackend(const ParsedUri& uri, const StoreOptions& options);

}  // namespace keel::detail
