#include "store/registry.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "store/memory/memory_backend.hpp"
#ifdef KEEL_WITH_SQLITE
#include "store/sqlite/sqlite_backend.hpp"
#endif
#ifdef KEEL_WITH_POSTGRES
#include "store/postgres/pg_backend.hpp"
#endif
#ifdef KEEL_WITH_MYSQL
#include "store/mysql/mysql_backend.hpp"
#endif

namespace keel::detail {
namespace {

using OpenFn = Result<std::unique_ptr<StoreBackend>> (*)(const ParsedUri&, const StoreOptions&);

struct Entry {
    const char* scheme;
    OpenFn open;
};

constexpr Entry kBackends[] = {
    {"memory", &OpenMemoryBackend},
#ifdef KEEL_WITH_SQLITE
    {"sqlite", &OpenSqliteBackend},
#endif
#ifdef KEEL_WITH_POSTGRES
    {"postgresql", &OpenPostgresBackend},
    {"postgres", &OpenPostgresBackend},
#endif
#ifdef KEEL_WITH_MYSQL
    {"mysql", &OpenMysqlBackend},
    {"mariadb", &OpenMysqlBackend},
#endif
};

}  // namespace

const std::string* ParsedUri::Find(std::string_view key) const {
    for (const auto& [k, v] : query) {
        if (k == key) return &v;
    }
    return nullptr;
}

Result<ParsedUri> ParseUri(std::string_view uri) {
    const size_t colon = uri.find(':');
    if (colon == std::string_view::npos || colon == 0) {
        return Status::InvalidArgument(fmt::format("store URI '{}' has no scheme; known schemes: {}", uri,
                                                   fmt::join(BackendSchemes(), ", ")));
    }
    ParsedUri out;
    out.scheme = std::string(uri.substr(0, colon));
    std::string_view rest = uri.substr(colon + 1);
    const size_t q = rest.find('?');
    if (q != std::string_view::npos) {
        std::string_view query = rest.substr(q + 1);
        rest = rest.substr(0, q);
        while (!query.empty()) {
            const size_t amp = query.find('&');
            std::string_view kv = query.substr(0, amp);
            const size_t eq = kv.find('=');
            if (eq == std::string_view::npos || eq == 0) {
                return Status::InvalidArgument(
                    fmt::format("store URI '{}': query parameter '{}' is not key=value", uri, kv));
            }
            out.query.emplace_back(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
            if (amp == std::string_view::npos) break;
            query = query.substr(amp + 1);
        }
    }
    out.rest = std::string(rest);
    return out;
}

Result<std::unique_ptr<StoreBackend>> OpenBackend(std::string_view uri, const StoreOptions& options) {
    auto parsed = ParseUri(uri);
    if (!parsed.ok()) return parsed.status();
    for (const Entry& e : kBackends) {
        if (parsed->scheme == e.scheme) return e.open(*parsed, options);
    }
    return Status::InvalidArgument(fmt::format("store URI '{}': unknown scheme '{}'; known schemes: {}", uri,
                                               parsed->scheme, fmt::join(BackendSchemes(), ", ")));
}

std::vector<std::string> BackendSchemes() {
    std::vector<std::string> out;
    for (const Entry& e : kBackends) out.emplace_back(e.scheme);
    return out;
}

}  // namespace keel::detail
