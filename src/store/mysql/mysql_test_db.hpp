#pragma once
// Tests only: a MariaDB database of its own for one test, `<prefix>_<pid>_<n>`, created on the KEEL_TEST_MYSQL server
// with its credentials and dropped on destruction. uri() is KEEL_TEST_MYSQL with the database replaced.

#include <atomic>
#include <cstdlib>
#include <memory>
#include <string>

#include <mysql.h>
#include <unistd.h>

#include "keel/status.hpp"

namespace keel::detail {

class MysqlTestDatabase {
public:
    static Result<std::unique_ptr<MysqlTestDatabase>> Create(const std::string& prefix) {
        const char* dsn = std::getenv("KEEL_TEST_MYSQL");
        if (dsn == nullptr) {
            return Status::FailedPrecondition(
                "KEEL_TEST_MYSQL is not set (scripts/services.sh start; eval \"$(scripts/services.sh env)\")");
        }
        static std::atomic<int> counter{0};
        std::unique_ptr<MysqlTestDatabase> db(new MysqlTestDatabase());
        db->name_ = prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
        // mysql://user:password@host:port/database[?query]
        std::string uri = dsn;
        const size_t scheme = uri.find("://");
        const size_t slash = uri.find('/', scheme == std::string::npos ? 0 : scheme + 3);
        if (scheme == std::string::npos || slash == std::string::npos) {
            return Status::InvalidArgument("KEEL_TEST_MYSQL is not mysql://user:password@host:port/database: " + uri);
        }
        const std::string authority = uri.substr(scheme + 3, slash - scheme - 3);
        const size_t q = uri.find('?', slash);
        db->uri_ = uri.substr(0, slash + 1) + db->name_ + (q == std::string::npos ? "" : uri.substr(q));
        const size_t at = authority.rfind('@');
        const std::string userinfo = at == std::string::npos ? "" : authority.substr(0, at);
        const std::string hostport = at == std::string::npos ? authority : authority.substr(at + 1);
        const size_t colon = userinfo.find(':');
        db->user_ = userinfo.substr(0, colon);
        if (colon != std::string::npos) db->password_ = userinfo.substr(colon + 1);
        const size_t pc = hostport.rfind(':');
        db->host_ = hostport.substr(0, pc);
        db->port_ = pc == std::string::npos ? 3306 : static_cast<unsigned>(std::stoi(hostport.substr(pc + 1)));
        KEEL_RETURN_IF_ERROR(db->Exec("CREATE DATABASE " + db->name_));
        db->created_ = true;
        return db;
    }

    ~MysqlTestDatabase() {
        if (created_) (void)Exec("DROP DATABASE IF EXISTS " + name_);
    }

    const std::string& uri() const { return uri_; }
    const std::string& name() const { return name_; }

    // Runs one statement in the test database (or without one for CREATE/DROP DATABASE).
    Status Exec(const std::string& sql, bool in_database = false) const {
        MYSQL* m = mysql_init(nullptr);
        if (mysql_real_connect(m, host_.c_str(), user_.c_str(), password_.c_str(),
                               in_database ? name_.c_str() : nullptr, port_, nullptr, 0) == nullptr ||
            mysql_query(m, sql.c_str()) != 0) {
            Status s = Status::Unavailable("MariaDB test database: " + sql + ": " + mysql_error(m));
            mysql_close(m);
            return s;
        }
        if (MYSQL_RES* r = mysql_store_result(m)) mysql_free_result(r);
        mysql_close(m);
        return Status::Ok();
    }

private:
    MysqlTestDatabase() = default;
    std::string name_, uri_, user_, password_, host_;
    unsigned port_ = 3306;
    bool created_ = false;
};

}  // namespace keel::detail
