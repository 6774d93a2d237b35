#pragma once
// DtmHttp: a small JSON-over-HTTP helper for keeld's black-box tests — requests to /api/dtmsvr/<op> with the reply
// kept whole (status, body, parsed JSON), query/status helpers and WaitStatus(), which polls GET /query until a
// transaction reaches a status.
//
// Thread-safety: one DtmHttp may be used from any number of threads at once.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "net/http.hpp"
#include "net/http_client.hpp"

namespace keel::keeld_test {

struct Reply {
    int status = 0;  // 0: the request did not get an answer (error says why)
    std::string body;
    nlohmann::json json;  // the parsed body; discarded (is_discarded()) when it is not JSON
    std::string content_type;
    std::string error;

    /// "409 {...}" or "no answer: <error>".
    std::string Describe() const;
    /// json[key] as a string ("" when absent or not a string).
    std::string Str(const std::string& key) const;
};

class DtmHttp {
public:
    /// `base` returns keeld's "http://127.0.0.1:PORT" at the time of each call (it may change across restarts).
    explicit DtmHttp(std::function<std::string()> base, std::string token = "");

    /// `path` starts with "/" (e.g. "/api/ping"). A non-empty token is sent as "Authorization: Bearer <token>".
    Reply Send(const std::string& method, const std::string& path, const std::string& body = "",
               net::Headers headers = {}, std::chrono::milliseconds timeout = std::chrono::milliseconds(30000));
    /// GET /api/dtmsvr/<op_and_query>
    Reply Get(const std::string& op_and_query);
    /// POST /api/dtmsvr/<op> with `body` serialized.
    Reply Post(const std::string& op, const nlohmann::json& body);
    /// POST /api/dtmsvr/<op> with `raw` as is.
    Reply PostRaw(const std::string& op, const std::string& raw);

    Reply Query(const std::string& gid);
    /// The transaction's status, "" when it does not exist or the query failed.
    std::string StatusOf(const std::string& gid);
    /// The branch statuses in query order.
    std::vector<std::string> BranchStatuses(const std::string& gid);
    /// json.transaction.<key> as a string ("" when absent).
    std::string TransField(const std::string& gid, const std::string& key);
    Reply ResetNextCronTime(const std::string& gid);
    std::string NewGid();

    /// Polls GET /query every 20 ms until the status is `want`. On timeout returns false and sets *last to the last
    /// reply's description. Gives up early when the transaction still does not exist after 3 s.
    bool WaitStatus(const std::string& gid, const std::string& want,
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(20000), std::string* last = nullptr);
    /// As WaitStatus, also POSTing resetNextCronTime every `kick` so that retries need not wait for their interval.
    bool WaitStatusKicking(const std::string& gid, const std::string& want,
                           std::chrono::milliseconds timeout = std::chrono::milliseconds(20000),
                           std::string* last = nullptr,
                           std::chrono::milliseconds kick = std::chrono::milliseconds(300));

    std::string base() const { return base_(); }

private:
    std::function<std::string()> base_;
    std::string token_;
    std::unique_ptr<net::SyncHttpClient> client_;
};

/// A JSON array of strings as a vector ("[a,b]" in messages via Join).
std::string Join(const std::vector<std::string>& v);

}  // namespace keel::keeld_test
