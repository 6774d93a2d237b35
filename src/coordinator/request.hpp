#pragma once
// Parsing of DTM request bodies, leniently as DTM's server does (unknown keys ignored, null accepted, keys matched
// case-insensitively), with keeld's limits. ../shared/dtm-protocol.md §1.2–1.4; docs/http-api.md.

#include <functional>
#include <nlohmann/json.hpp>
#include <map>
#include <string>
#include <vector>

#include "coordinator/model.hpp"
#include "keel/status.hpp"

namespace keel::coordinator {

struct Limits {
    size_t max_gid_bytes = 128;   // Default: 128 (DTM's varchar(128)).
    size_t max_steps = 100;       // Default: 100.
    int max_json_depth = 32;      // Default: 32.
    size_t max_url_bytes = 1024;  // Default: 1024 (DTM's varchar(1024)).
};

/// A parsed prepare/submit/abort body.
struct TransRequest {
    Global global;                  // gid, trans_type, query_prepared, protocol, custom_data, rollback_reason, options
    std::vector<Branch> branches;   // msg: [action]×n; saga: [compensate, action]×n (ids 01, 02 …)
    bool has_steps = false;
};

/// Parses a transaction JSON body. kInvalidArgument naming the field and the reason (limits included);
/// kNotSupported for trans_type xa/workflow and for topic:// actions.
Result<TransRequest> ParseTransRequest(std::string_view body, const Limits& limits);

/// Parses a registerBranch body (a flat object of strings; non-string values are converted to their JSON text).
Result<std::map<std::string, std::string>> ParseFlatBody(std::string_view body, const Limits& limits);

/// Every URL of the request that keeld will call (query_prepared, actions, compensations).
std::vector<std::string> UrlsOf(const TransRequest& request);

/// Parses `body` as JSON with the depth limit; kInvalidArgument naming the limit or the parse error.
Result<nlohmann::json> ParseJsonBody(std::string_view body, int max_depth);

/// Saga custom_data: {"concurrent":bool,"orders":{"1":[0]}} (step indexes are 0-based; orders[k] lists the steps that
/// must succeed before step k).
struct SagaLayout {
    bool concurrent = false;
    std::map<size_t, std::vector<size_t>> orders;
};
SagaLayout ParseSagaLayout(std::string_view custom_data);
/// msg custom_data {"delay":N} (seconds; key matched case-insensitively); 0 when absent.
int64_t ParseMsgDelay(std::string_view custom_data);

}  // namespace keel::coordinator
