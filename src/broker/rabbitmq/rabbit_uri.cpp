#include "broker/rabbitmq/rabbit_uri.hpp"

#include <charconv>

#include <fmt/format.h>

namespace keel::detail::rabbit {
namespace {

constexpr std::string_view kKnownParameters =
    "heartbeat=SECONDS, connect_timeout=MS, timeout=MS, queue_type=quorum|classic, queue_expires=MS";
constexpr size_t kMaxNameBytes = 200;
constexpr size_t kMaxAmqpName = 255;

int HexValue(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
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
                fmt::format("rabbitmq URI: the {} has a malformed %-escape (use %XX with two hex digits)", what));
        }
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
    }
    return out;
}

Result<int64_t> ParseInteger(std::string_view text, int64_t min, int64_t max, std::string_view what) {
    int64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < min || value > max) {
        return Status::InvalidArgument(
            fmt::format("rabbitmq URI: {} '{}' is not a whole number from {} to {}", what, text, min, max));
    }
    return value;
}

// Splits "user:password@host:port" into its parts.
Status ParseAuthority(std::string_view authority, RabbitConfig& out) {
    const size_t at = authority.rfind('@');
    if (at != std::string_view::npos) {
        const std::string_view userinfo = authority.substr(0, at);
        authority = authority.substr(at + 1);
        const size_t colon = userinfo.find(':');
        auto user = PercentDecode(userinfo.substr(0, colon), "user name");
        if (!user.ok()) return user.status();
        if (user->empty()) return Status::InvalidArgument("rabbitmq URI: the user name before '@' is empty");
        out.user = std::move(*user);
        if (colon != std::string_view::npos) {
            auto password = PercentDecode(userinfo.substr(colon + 1), "password");
            if (!password.ok()) return password.status();
            out.password = std::move(*password);
        } else {
            out.password.clear();
        }
    }
    std::string_view port;
    if (authority.starts_with('[')) {
        const size_t close = authority.find(']');
        if (close == std::string_view::npos) {
            return Status::InvalidArgument("rabbitmq URI: an IPv6 host opened with '[' has no closing ']'");
        }
        out.host = std::string(authority.substr(1, close - 1));
        const std::string_view after = authority.substr(close + 1);
        if (!after.empty() && !after.starts_with(':')) {
            return Status::InvalidArgument(fmt::format("rabbitmq URI: unexpected '{}' after the IPv6 host", after));
        }
        if (!after.empty()) port = after.substr(1);
    } else {
        const size_t colon = authority.find(':');
        out.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) {
            port = authority.substr(colon + 1);
            if (port.empty()) return Status::InvalidArgument("rabbitmq URI: the port after ':' is empty");
        }
    }
    if (out.host.empty()) {
        return Status::InvalidArgument("rabbitmq URI names no host; use rabbitmq://user:password@host:port/vhost");
    }
    if (!port.empty()) {
        auto p = ParseInteger(port, 1, 65535, "port");
        if (!p.ok()) return p.status();
        out.port = static_cast<uint16_t>(*p);
    }
    return Status::Ok();
}

Status ApplyParameter(std::string_view key, std::string_view value, RabbitConfig& out) {
    if (key == "heartbeat") {
        auto n = ParseInteger(value, 0, 3600, "heartbeat");
        if (!n.ok()) return n.status();
        out.heartbeat_s = static_cast<int>(*n);
        return Status::Ok();
    }
    if (key == "connect_timeout" || key == "timeout") {
        auto n = ParseInteger(value, 1, 3'600'000, key);
        if (!n.ok()) return n.status();
        (key == "timeout" ? out.io_timeout : out.connect_timeout) = std::chrono::milliseconds(*n);
        return Status::Ok();
    }
    if (key == "queue_expires") {
        auto n = ParseInteger(value, 1, int64_t{1} << 31, key);
        if (!n.ok()) return n.status();
        out.queue_expires_ms = *n;
        return Status::Ok();
    }
    if (key == "queue_type") {
        if (value == "quorum") {
            out.queue_type = QueueType::kQuorum;
        } else if (value == "classic") {
            out.queue_type = QueueType::kClassic;
        } else {
            return Status::InvalidArgument(
                fmt::format("rabbitmq URI: queue_type '{}' is not understood; use quorum or classic", value));
        }
        return Status::Ok();
    }
    return Status::InvalidArgument(
        fmt::format("rabbitmq URI parameter '{}={}' is not understood; known: {}", key, value, kKnownParameters));
}

bool IsNameChar(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

std::string Shorten(std::string_view s) {
    return s.size() <= 64 ? std::string(s) : fmt::format("{}…", s.substr(0, 64));
}

uint64_t Fnv1a64(std::string_view s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (char c : s) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ULL;
    }
    return h;
}

// `base` + `suffix`, within RabbitMQ's 255-byte limit (see NamesFor).
std::string Fit(const std::string& base, std::string_view suffix) {
    std::string full = base + std::string(suffix);
    if (full.size() <= kMaxAmqpName) return full;
    const std::string tag = fmt::format("~{:016x}", Fnv1a64(full));
    return full.substr(0, kMaxAmqpName - tag.size()) + tag;
}

}  // namespace

std::string RabbitConfig::Where() const {
    const bool v6 = host.find(':') != std::string::npos;
    return fmt::format("RabbitMQ at {}{}{}:{} vhost '{}'", v6 ? "[" : "", host, v6 ? "]" : "", port, vhost);
}

Result<RabbitConfig> ParseRabbitUri(const ParsedUri& uri) {
    RabbitConfig out;
    std::string_view rest = uri.rest;
    if (!rest.starts_with("//")) {
        return Status::InvalidArgument(
            fmt::format("{} URI must look like {}://user:password@host:port/vhost", uri.scheme, uri.scheme));
    }
    rest.remove_prefix(2);
    const size_t slash = rest.find('/');
    KEEL_RETURN_IF_ERROR(ParseAuthority(rest.substr(0, slash), out));
    if (slash != std::string_view::npos && slash + 1 < rest.size()) {
        auto vhost = PercentDecode(rest.substr(slash + 1), "vhost");
        if (!vhost.ok()) return vhost.status();
        out.vhost = std::move(*vhost);
    }
    for (const auto& [key, value] : uri.query) KEEL_RETURN_IF_ERROR(ApplyParameter(key, value, out));
    return out;
}

Status CheckName(std::string_view what, std::string_view name) {
    if (name.empty()) {
        return Status::InvalidArgument(fmt::format("the {} name is empty; use 1-200 bytes of [A-Za-z0-9._-]", what));
    }
    if (name.size() > kMaxNameBytes) {
        return Status::InvalidArgument(fmt::format("the {} name '{}' is {} bytes long; the limit is {}", what,
                                                   Shorten(name), name.size(), kMaxNameBytes));
    }
    for (char c : name) {
        if (!IsNameChar(c)) {
            return Status::InvalidArgument(
                fmt::format("the {} name '{}' contains the byte 0x{:02x}; only [A-Za-z0-9._-] is allowed", what,
                            Shorten(name), static_cast<unsigned char>(c)));
        }
    }
    return Status::Ok();
}

GroupNames NamesFor(std::string_view destination, std::string_view group) {
    const std::string base = fmt::format("{}.{}", destination, group);
    return GroupNames{std::string(destination), Fit(base, ""), Fit(base, ".dlx"), Fit(base, ".dlq")};
}

}  // namespace keel::detail::rabbit
