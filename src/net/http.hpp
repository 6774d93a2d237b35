#pragma once
// Plain HTTP message values shared by keel's HTTP server and client (keeld, the DTM client, tests, examples).
// Thread-safety: plain values.

#include <chrono>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keel::net {

using Headers = std::vector<std::pair<std::string, std::string>>;

/// A request as the server received it, or as the client sends it.
struct HttpRequest {
    std::string method = "GET";  // upper case
    /// Server side: the path without the query, percent-decoded. Client side: the full URL
    /// (http://host:port/path?query) to send to.
    std::string path;
    std::map<std::string, std::string> query;  // server side: decoded query parameters (last one wins)
    Headers headers;                           // server side: names in lower case
    std::string body;
    /// Client side: deadline for connect + write + read. Default: 3 s.
    std::chrono::milliseconds timeout{3000};

    /// The value of header `name` (case-insensitive), or "".
    std::string Header(std::string_view name) const;
    /// The value of query parameter `name`, or "".
    std::string Query(const std::string& name) const;
};

struct HttpResponse {
    int status = 200;
    std::string body;
    std::string content_type = "application/json";
    Headers headers;

    /// The value of header `name` (case-insensitive), or "".
    std::string Header(std::string_view name) const;
};

/// A parsed http:// URL. Only plain http is supported.
struct Url {
    std::string host;  // without brackets for IPv6
    uint16_t port = 80;
    std::string target;  // path + query, at least "/"

    /// Parses `url`; false when it is not an http:// URL with a host (https is refused: keel speaks plain HTTP on
    /// loopback or behind a proxy that terminates TLS).
    static bool Parse(std::string_view url, Url* out);
};

/// Appends `key=value` (both percent-encoded) to `url`, with '?' or '&' as needed.
std::string AppendQuery(std::string url, std::string_view key, std::string_view value);
std::string PercentEncode(std::string_view s);
std::string PercentDecode(std::string_view s);

}  // namespace keel::net
