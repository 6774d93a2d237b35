#include <string>

#include "coordinator/sqlite_storage.hpp"
#include "coordinator/storage.hpp"
#if KEEL_WITH_POSTGRES
#include "coordinator/postgres_storage.hpp"
#endif

namespace keel::coordinator {

Result<std::unique_ptr<Storage>> OpenStorage(std::string_view uri, bool* exclusive) {
    *exclusive = false;
    if (uri.starts_with("sqlite:")) {
        std::string_view rest = uri.substr(7);
        if (rest.starts_with("//")) rest.remove_prefix(2);  // sqlite:///abs → /abs ; sqlite://rel → rel
        if (rest.empty()) {
            return Status::InvalidArgument("storage URI '" + std::string(uri) +
                                           "' has no path; use sqlite:///absolute/path.db");
        }
        *exclusive = true;
        return OpenSqliteStorage(std::string(rest));
    }
    if (uri.starts_with("postgresql:") || uri.starts_with("postgres:")) {
#if KEEL_WITH_POSTGRES
        return OpenPostgresStorage(uri);
#else
        return Status::NotSupported("this keeld was built without PostgreSQL (KEEL_WITH_POSTGRES=OFF)");
#endif
    }
    return Status::InvalidArgument("storage URI '" + std::string(uri) +
                                   "' has an unknown scheme (use sqlite:///path.db or postgresql://…)");
}

}  // namespace keel::coordinator
