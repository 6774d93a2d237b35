#pragma once
// keeld's storage on PostgreSQL (libpq): tables keel_trans_global and keel_trans_branch_op, modelled on DTM's
// trans_global / trans_branch_op with times as BIGINT milliseconds since the Unix epoch and the options as TEXT JSON.
// Several keeld processes may share one database: status changes are conditional updates on the expected status and
// due transactions are claimed with `FOR UPDATE SKIP LOCKED` plus a lease (owner + next_cron_time).
//
// Thread-safety: as Storage — any number of threads at once. Each call borrows one connection from a small pool for
// its duration (one connection per calling thread at a time; up to 16 idle connections are kept).

#include <memory>
#include <string_view>

#include "coordinator/storage.hpp"

namespace keel::coordinator {

/// Opens `postgresql://[user[:password]@]host[:port]/database[?schema=NAME&<libpq parameters>]` (also
/// `postgres://…`) and creates the schema and tables if missing (under an advisory lock, so keeld processes starting
/// together do not race). `schema=` puts the tables into that PostgreSQL schema; the other parameters go to libpq
/// unchanged (connect_timeout defaults to 10 s, application_name to "keeld").
///
/// Errors: kInvalidArgument for a malformed URI; kUnavailable naming host, port and database when the server cannot
/// be reached; kNotSupported when the tables were created by a newer keeld. After opening, every method returns
/// kUnavailable on connection or server errors; a broken pooled connection is replaced on the next call (reads are
/// retried once on a fresh connection; a write whose connection broke mid-call is not retried, since its outcome
/// is unknown).
Result<std::unique_ptr<Storage>> OpenPostgresStorage(std::string_view uri);

}  // namespace keel::coordinator
