#pragma once
// The coordinator's data model: global transactions and their branch rows, as stored and as shown by /query.
// Field names and values follow DTM's (../shared/dtm-protocol.md §1.2, §1.5, §4.2); docs/http-api.md is the spec.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace keel::coordinator {

// Global statuses (DTM's): prepared → submitted → succeed; prepared/submitted → aborting → failed; prepared → failed
// (msg whose back-check said FAILURE, or forceStop).
inline constexpr const char* kPrepared = "prepared";
inline constexpr const char* kSubmitted = "submitted";
inline constexpr const char* kAborting = "aborting";
inline constexpr const char* kSucceed = "succeed";
inline constexpr const char* kFailed = "failed";

/// Per-transaction options, persisted as JSON in Global::options so every retry uses them. 0 means "server default".
struct TransOptions {
    bool wait_result = false;
    int64_t timeout_to_fail = 0;  // seconds
    int64_t retry_interval = 0;   // seconds
    int64_t request_timeout = 0;  // seconds
    int64_t retry_limit = 0;      // saga only
    bool concurrent = false;      // msg: branches in parallel (saga reads custom_data)
    std::map<std::string, std::string> branch_headers;
};

struct Global {
    int64_t id = 0;
    std::string gid;
    std::string trans_type;  // msg | saga | tcc
    std::string status;
    std::string query_prepared;
    std::string protocol = "http";
    std::string custom_data;
    std::string rollback_reason;
    std::string result;
    TransOptions options;
    int64_t create_time = 0;  // ms since the Unix epoch (UTC)
    int64_t update_time = 0;
    int64_t finish_time = 0;    // 0 = not set
    int64_t rollback_time = 0;  // 0 = not set
    int64_t next_cron_time = 0;
    int64_t next_cron_interval = 0;  // seconds
    std::string owner;               // the keeld instance holding the lease ("" = none)
};

struct Branch {
    int64_t id = 0;
    std::string gid;
    std::string url;
    std::string bin_data;  // the payload (raw bytes; base64 in JSON)
    std::string branch_id;
    std::string op;  // action | compensate | confirm | cancel
    std::string status = kPrepared;
    int64_t create_time = 0;
    int64_t update_time = 0;
    int64_t finish_time = 0;
    int64_t rollback_time = 0;
};

/// A status change of one global, applied only if the stored status is still `from` (compare-and-set).
struct GlobalChange {
    std::string from;
    std::string to;
    std::optional<std::string> rollback_reason;  // set when present
    std::optional<int64_t> next_cron_time;       // set when present
    std::optional<int64_t> next_cron_interval;
    std::optional<std::string> owner;  // set when present (a lease: owner + next_cron_time)
    bool set_finish_time = false;    // finish_time = now
    bool set_rollback_time = false;  // rollback_time = now
};

/// Filters and paging of /all.
struct ListFilter {
    std::string gid;          // exact, "" = any
    std::string status;       // "" = any
    std::string trans_type;   // "" = any
    int64_t create_time_start = 0;  // ms, 0 = unbounded
    int64_t create_time_end = 0;    // ms, 0 = unbounded
    int64_t position = 0;     // list transactions with id < position (newest first); 0 = from the newest
    int64_t limit = 100;
};

}  // namespace keel::coordinator
