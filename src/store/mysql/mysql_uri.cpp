#include "store/mysql/mysql_uri.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>

#include <fmt/format.h>

namespace keel::detail::mysql {
namespace {

constexpr std::string_view kKnownParameters =
    "durability=full|normal, connect_timeout=SECONDS, read_timeout=SECONDS, write_timeout=SECONDS, socket=PATH";

int HexValue(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

Result<int64_t> ParseInteger(std::string_view text, int64_t min, int64_t max, std::string_view what) {
    int64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < min || value > max) {
        return Status::InvalidArgument(
            fmt::format("mysql URI: {} '{}' is not a whole number from {} to {}", what, text, min, max));
    }
    return value;
}

Result<std::chrono::seconds> ParseTimeout(std::string_view key, std::string_view value) {
    auto n = ParseInteger(value, 1, 3600, key);
    if (!n.ok()) return n.status();
    return std::chrono::seconds(*n);
}

// Splits "user:password@host:port" into its parts.
Status ParseAuthority(std::string_view authority, MysqlConfig& out) {
    const size_t at = authority.rfind('@');
    if (at != std::string_view::npos) {
        const std::string_view userinfo = authority.substr(0, at);
        authority = authority.substr(at + 1);
        const size_t colon = userinfo.find(':');
        auto user = PercentDecode(userinfo.substr(0, colon), "user name");
        if (!user.ok()) return user.status();
        out.user = std::move(*user);
        if (colon != std::string_view::npos) {
            auto password = PercentDecode(userinfo.substr(colon + 1), "password");
            if (!password.ok()) return password.status();
            out.password = std::move(*password);
        }
    }
    std::string_view port;
    if (authority.starts_with('[')) {
        const size_t close = authority.find(']');
        if (close == std::string_view::npos) {
            return Status::InvalidArgument("mysql URI: an IPv6 host opened with '[' has no closing ']'");
        }
        out.host = std::string(authority.substr(1, close - 1));
        const std::string_view after = authority.substr(close + 1);
        if (!after.empty() && !after.starts_with(':')) {
            return Status::InvalidArgument(fmt::format("mysql URI: unexpected '{}' after the IPv6 host", after));
        }
        if (!after.empty()) port = after.substr(1);
    } else {
        const size_t colon = authority.find(':');
        out.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) port = authority.substr(colon + 1);
    }
    if (!port.empty()) {
        auto p = ParseInteger(port, 1, 65535, "port");
        if (!p.ok()) return p.status();
        out.port = static_cast<uint16_t>(*p);
    }
    return Status::Ok();
}

Status ApplyParameter(std::string_view key, std::string_view value, MysqlConfig& out) {
    if (key == "durability") {
        if (value != "full" && value != "normal") {
            return Status::InvalidArgument(
                fmt::format("mysql URI: durability '{}' is not understood; use full or normal", value));
        }
        out.durability = value == "full" ? Durability::kFull : Durability::kNormal;
        return Status::Ok();
    }
    std::chrono::seconds* timeout = key == "connect_timeout" ? &out.connect_timeout
                                    : key == "read_timeout"  ? &out.read_timeout
                                    : key == "write_timeout" ? &out.write_timeout
                                                             : nullptr;
    if (timeout != nullptr) {
        auto t = ParseTimeout(key, value);
        if (!t.ok()) return t.status();
        *timeout = *t;
        return Status::Ok();
    }
    if (key == "socket") {
        auto path = PercentDecode(value, "socket path");
        if (!path.ok()) return path.status();
        if (path->empty()) return Status::InvalidArgument("mysql URI: socket= needs a path");
        out.socket = std::move(*path);
        return Status::Ok();
    }
    return Status::InvalidArgument(
        fmt::format("mysql URI parameter '{}={}' is not understood; known: {}", key, value, kKnownParameters));
}

}  // namespace

std::string MysqlConfig::Where() const {
    if (!socket.empty()) return fmt::format("socket {} database '{}'", socket, database);
    const bool v6 = host.find(':') != std::string::npos;
    return fmt::format("{}{}{}:{}/{}", v6 ? "[" : "", host, v6 ? "]" : "", port, database);
}

Result<std::string> PercentDecode(std::string_view text, std::string_view what) {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '%') {
            out.push_back(text[i]);
            continue;
        }
        const int hi = i + 1 < text.size() ? HexValue(text[i + 1]) : -1;
        const int lo = i + 2 < text.size() ? HexValue(text[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            return Status::InvalidArgument(
                fmt::format("mysql URI: the {} has a malformed %-escape (use %XX with two hex digits)", what));
        }
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
    }
    return out;
}

Result<MysqlConfig> ParseMysqlUri(const ParsedUri& uri, const StoreOptions& options) {
    MysqlConfig out;
    out.durability = options.durability;
    const int64_t lock_ms = std::max<int64_t>(options.busy_timeout.count(), 1);
    out.lock_wait_timeout_s = static_cast<int>(std::min<int64_t>((lock_ms + 999) / 1000, 1 << 30));

    std::string_view rest = uri.rest;
    if (!rest.starts_with("//")) {
        return Status::InvalidArgument(
            fmt::format("{} URI must look like {}://user:password@host:port/database", uri.scheme, uri.scheme));
    }
    rest.remove_prefix(2);
    const size_t slash = rest.find('/');
    if (slash == std::string_view::npos || slash + 1 == rest.size()) {
        return Status::InvalidArgument(
            fmt::format("{} URI names no database; use {}://user:password@host:port/database", uri.scheme, uri.scheme));
    }
    KEEL_RETURN_IF_ERROR(ParseAuthority(rest.substr(0, slash), out));
    auto database = PercentDecode(rest.substr(slash + 1), "database name");
    if (!database.ok()) return database.status();
    if (database->find('/') != std::string::npos || database->size() > 64) {
        return Status::InvalidArgument(
            fmt::format("mysql URI: '{}' is not a database name (at most 64 characters, no '/')", *database));
    }
    out.database = std::move(*database);
    for (const auto& [key, value] : uri.query) KEEL_RETURN_IF_ERROR(ApplyParameter(key, value, out));
    if (out.host.empty() && out.socket.empty()) {
        return Status::InvalidArgument(
            fmt::format("{} URI names no host; use {}://user:password@host:port/database (or ?socket=/path)",
                        uri.scheme, uri.scheme));
    }
    if (out.host.empty()) out.host = "localhost";
    return out;
}

Status CheckFlushSetting(Durability durability, std::string_view flush_log_at_trx_commit, const std::string& where) {
    if (durability != Durability::kFull || flush_log_at_trx_commit == "1") return Status::Ok();
    return Status::FailedPrecondition(fmt::format(
        "{}: the server has innodb_flush_log_at_trx_commit={}, so an acknowledged append could be lost on a crash; "
        "durable commits need 1: run SET GLOBAL innodb_flush_log_at_trx_commit=1 (and set it in the server's "
        "config), or open the store with ?durability=normal to accept the risk",
        where, flush_log_at_trx_commit));
}

Status CheckEngine(std::string_view table, std::string_view engine, const std::string& where) {
    std::string lower(engine);
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (lower == "innodb") return Status::Ok();
    if (engine.empty()) {
        return Status::FailedPrecondition(fmt::format(
            "{}: keel table {} is not a base table (a view?); keel needs an InnoDB table there: drop it and let keel "
            "create it",
            where, table));
    }
    return Status::FailedPrecondition(fmt::format(
        "{}: keel table {} uses the {} storage engine, which does not support transactions (keel would silently "
        "lose atomicity and ordering); keel needs InnoDB: run ALTER TABLE {} ENGINE=InnoDB",
        where, table, engine, table));
}

}  // namespace keel::detail::mysql
