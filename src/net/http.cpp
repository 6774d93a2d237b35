#include "net/http.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace keel::net {
namespace {

bool IEquals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

std::string FindHeader(const Headers& headers, std::string_view name) {
    for (const auto& [k, v] : headers) {
        if (IEquals(k, name)) return v;
    }
    return {};
}

int HexValue(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

std::string HttpRequest::Header(std::string_view name) const { return FindHeader(headers, name); }

std::string HttpRequest::Query(const std::string& name) const {
    auto it = query.find(name);
    return it == query.end() ? std::string() : it->second;
}

std::string HttpResponse::Header(std::string_view name) const { return FindHeader(headers, name); }

bool Url::Parse(std::string_view url, Url* out) {
    constexpr std::string_view kScheme = "http://";
    if (url.size() < kScheme.size() || !IEquals(url.substr(0, kScheme.size()), kScheme)) return false;
    std::string_view rest = url.substr(kScheme.size());
    size_t slash = rest.find_first_of("/?#");
    std::string_view authority = rest.substr(0, slash);
    std::string_view target = slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
    if (authority.find('@') != std::string_view::npos) return false;  // no credentials in branch URLs
    Url u;
    std::string_view port_text;
    if (!authority.empty() && authority.front() == '[') {
        size_t close = authority.find(']');
        if (close == std::string_view::npos) return false;
        u.host = std::string(authority.substr(1, close - 1));
        std::string_view after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return false;
            port_text = after.substr(1);
        }
    } else {
        size_t colon = authority.rfind(':');
        u.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
    }
    if (u.host.empty()) return false;
    if (!port_text.empty()) {
        unsigned port = 0;
        auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
        if (ec != std::errc() || p != port_text.data() + port_text.size() || port == 0 || port > 65535) return false;
        u.port = static_cast<uint16_t>(port);
    }
    if (target.front() == '#') target = "/";
    size_t hash = target.find('#');
    u.target = std::string(target.substr(0, hash));
    if (u.target.front() == '?') u.target = "/" + u.target;
    *out = std::move(u);
    return true;
}

std::string PercentEncode(std::string_view s) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size());
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out.push_back(static_cast<char>(c));
        } else {
            out.push_back('%');
            out.push_back(kHex[c >> 4]);
            out.push_back(kHex[c & 15]);
        }
    }
    return out;
}

std::string PercentDecode(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size()) {
            int hi = HexValue(s[i + 1]), lo = HexValue(s[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out.push_back(static_cast<char>(hi * 16 + lo));
                i += 2;
                continue;
            }
        }
        out.push_back(s[i] == '+' ? ' ' : s[i]);
    }
    return out;
}

std::string AppendQuery(std::string url, std::string_view key, std::string_view value) {
    size_t hash = url.find('#');
    std::string fragment;
    if (hash != std::string::npos) {
        fragment = url.substr(hash);
        url.resize(hash);
    }
    url.push_back(url.find('?') == std::string::npos ? '?' : (url.back() == '?' || url.back() == '&' ? '\0' : '&'));
    if (url.back() == '\0') url.pop_back();
    url += PercentEncode(key);
    url.push_back('=');
    url += PercentEncode(value);
    return url + fragment;
}

}  // namespace keel::net
