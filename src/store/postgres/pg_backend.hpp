#pragma once
// `postgresql://` — the event store on PostgreSQL through libpq. The appends of one group-commit batch are one call of
// the keel_append_batch function in one transaction (one round trip, one commit). Global
// order without skipping: each row stores the writing transaction's id (pg_current_xact_id()); readers take only rows
// of transactions below the snapshot horizon (pg_snapshot_xmin(pg_current_snapshot())), so no still-running
// transaction can later commit a row that sorts before what a reader has seen, and page by the compound cursor
// (transaction_id, global_position). docs/postgres.md has the schema and the details.

#include <memory>

#include "store/backend.hpp"
#include "store/registry.hpp"

namespace keel::detail {

inline constexpr int64_t kPostgresSchemaVersion = 4;

// URI: postgresql://[user[:password]@]host[:port]/database[?schema=NAME&<libpq parameters>]. `schema` puts keel's
// tables into that PostgreSQL schema (created if missing); other parameters go to libpq unchanged.
Result<std::unique_ptr<StoreBackend>> OpenPostgresBackend(const ParsedUri& uri, const StoreOptions& options);

}  // namespace keel::detail
