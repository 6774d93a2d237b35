// The mysql:// URI parser and the open-time settings checks, without a server.

#include "store/mysql/mysql_uri.hpp"

#include <gtest/gtest.h>

#include "keel/event_store.hpp"

#include "store/registry.hpp"

namespace keel::detail::mysql {
namespace {

Result<MysqlConfig> Parse(std::string_view uri, const StoreOptions& options = {}) {
    auto parsed = ParseUri(uri);
    if (!parsed.ok()) return parsed.status();
    return ParseMysqlUri(*parsed, options);
}

bool Contains(std::string_view haystack, std::string_view needle) {
    return haystack.find(needle) != std::string_view::npos;
}

TEST(MysqlUriTest, FullUriIsParsed) {
    auto c = Parse("mysql://keel:secret@db.example:13306/keel_test").value();
    EXPECT_EQ(c.user, "keel");
    EXPECT_EQ(c.password, std::optional<std::string>("secret"));
    EXPECT_EQ(c.host, "db.example");
    EXPECT_EQ(c.port, 13306);
    EXPECT_EQ(c.database, "keel_test");
    EXPECT_TRUE(c.socket.empty());
    EXPECT_EQ(c.durability, Durability::kFull);
    EXPECT_EQ(c.Where(), "db.example:13306/keel_test");
}

TEST(MysqlUriTest, MariadbSchemeUserOnlyAndDefaultPort) {
    auto c = Parse("mariadb://app@10.0.0.7/events").value();
    EXPECT_EQ(c.user, "app");
    EXPECT_FALSE(c.password.has_value());
    EXPECT_EQ(c.host, "10.0.0.7");
    EXPECT_EQ(c.port, 3306);
    EXPECT_EQ(c.database, "events");
}

TEST(MysqlUriTest, NoUserInfoLeavesUserAndPasswordToTheLibrary) {
    auto c = Parse("mysql://127.0.0.1:3307/db").value();
    EXPECT_TRUE(c.user.empty());
    EXPECT_FALSE(c.password.has_value());
    EXPECT_EQ(c.port, 3307);
}

TEST(MysqlUriTest, EmptyPasswordIsKeptDistinctFromNoPassword) {
    auto c = Parse("mysql://keel:@h/db").value();
    EXPECT_EQ(c.password, std::optional<std::string>(""));
}

TEST(MysqlUriTest, UserAndPasswordArePercentDecoded) {
    auto c = Parse("mysql://us%40er:p%3Aa%2Fss%40word%25@h:1/d%2Db").value();
    EXPECT_EQ(c.user, "us@er");
    EXPECT_EQ(c.password, std::optional<std::string>("p:a/ss@word%"));
    EXPECT_EQ(c.database, "d-b");
}

TEST(MysqlUriTest, PasswordWithRawAtSignUsesTheLastAt) {
    auto c = Parse("mysql://keel:p@ss@h/db").value();
    EXPECT_EQ(c.password, std::optional<std::string>("p@ss"));
    EXPECT_EQ(c.host, "h");
}

TEST(MysqlUriTest, Ipv6HostInBrackets) {
    auto c = Parse("mysql://u:p@[::1]:13306/db").value();
    EXPECT_EQ(c.host, "::1");
    EXPECT_EQ(c.port, 13306);
    EXPECT_EQ(c.Where(), "[::1]:13306/db");
}

TEST(MysqlUriTest, QueryParameters) {
    auto c = Parse("mysql://u@h/db?durability=normal&connect_timeout=2&read_timeout=7&write_timeout=9").value();
    EXPECT_EQ(c.durability, Durability::kNormal);
    EXPECT_EQ(c.connect_timeout, std::chrono::seconds(2));
    EXPECT_EQ(c.read_timeout, std::chrono::seconds(7));
    EXPECT_EQ(c.write_timeout, std::chrono::seconds(9));
    auto full = Parse("mysql://u@h/db?durability=full", StoreOptions{.durability = Durability::kNormal}).value();
    EXPECT_EQ(full.durability, Durability::kFull);
}

TEST(MysqlUriTest, OptionsGiveDurabilityAndLockWait) {
    StoreOptions options;
    options.durability = Durability::kNormal;
    options.busy_timeout = std::chrono::milliseconds(2500);
    auto c = Parse("mysql://u@h/db", options).value();
    EXPECT_EQ(c.durability, Durability::kNormal);
    EXPECT_EQ(c.lock_wait_timeout_s, 3);  // rounded up to whole seconds
    options.busy_timeout = std::chrono::milliseconds(0);
    EXPECT_EQ(Parse("mysql://u@h/db", options).value().lock_wait_timeout_s, 1);
}

TEST(MysqlUriTest, SocketParameterNeedsNoHost) {
    auto c = Parse("mysql://u:p@/db?socket=%2Frun%2Fmysqld%2Fmysqld.sock").value();
    EXPECT_EQ(c.socket, "/run/mysqld/mysqld.sock");
    EXPECT_EQ(c.host, "localhost");
    EXPECT_TRUE(Contains(c.Where(), "/run/mysqld/mysqld.sock"));
}

TEST(MysqlUriTest, MalformedUrisAreInvalidArgumentNamingTheProblem) {
    struct Case {
        const char* uri;
        const char* says;
    };
    const Case cases[] = {
        {"mysql:keel_test", "must look like"},
        {"mysql://u:p@h:13306", "no database"},
        {"mysql://u:p@h:13306/", "no database"},
        {"mysql://u:p@:13306/db", "no host"},
        {"mysql://u:p@h:0/db", "port"},
        {"mysql://u:p@h:70000/db", "port"},
        {"mysql://u:p@h:12ab/db", "port"},
        {"mysql://u:p@[::1/db", "']'"},
        {"mysql://u:p%4@h/db", "password"},
        {"mysql://u%zz:p@h/db", "user name"},
        {"mysql://u@h/db/extra", "database name"},
        {"mysql://u@h/db?durability=sometimes", "durability"},
        {"mysql://u@h/db?read_timeout=0", "read_timeout"},
        {"mysql://u@h/db?colour=blue", "not understood"},
    };
    for (const Case& c : cases) {
        auto r = Parse(c.uri);
        ASSERT_EQ(r.status().code(), StatusCode::kInvalidArgument) << c.uri << ": " << r.status().ToString();
        EXPECT_TRUE(Contains(r.status().message(), c.says)) << c.uri << ": " << r.status().ToString();
    }
}

TEST(MysqlUriTest, MessagesNeverContainThePassword) {
    for (const char* uri : {"mysql://keel:hunter2@h:99999/db", "mysql://keel:hunter2@h/db?colour=blue",
                            "mysql://keel:hunter2@h:1/", "mysql://keel:hunter2@h/db?durability=x"}) {
        auto r = Parse(uri);
        ASSERT_FALSE(r.ok()) << uri;
        EXPECT_FALSE(Contains(r.status().message(), "hunter2")) << r.status().ToString();
    }
}

TEST(MysqlUriTest, FlushSettingIsCheckedOnlyForFullDurability) {
    const std::string where = "h:1/db";
    EXPECT_TRUE(CheckFlushSetting(Durability::kFull, "1", where).ok());
    for (const char* relaxed : {"0", "2", "3"}) {
        Status s = CheckFlushSetting(Durability::kFull, relaxed, where);
        ASSERT_EQ(s.code(), StatusCode::kFailedPrecondition) << relaxed;
        EXPECT_TRUE(Contains(s.message(), "innodb_flush_log_at_trx_commit=" + std::string(relaxed))) << s.message();
        EXPECT_TRUE(Contains(s.message(), "durability=normal")) << s.message();
        EXPECT_TRUE(Contains(s.message(), where)) << s.message();
        EXPECT_TRUE(CheckFlushSetting(Durability::kNormal, relaxed, where).ok());
    }
}

TEST(MysqlUriTest, OnlyInnodbTablesAreAccepted) {
    EXPECT_TRUE(CheckEngine("keel_events", "InnoDB", "h:1/db").ok());
    for (const char* engine : {"MyISAM", "Aria", "MEMORY", "CSV", "ARCHIVE"}) {
        Status s = CheckEngine("keel_events", engine, "h:1/db");
        ASSERT_EQ(s.code(), StatusCode::kFailedPrecondition) << engine;
        EXPECT_TRUE(Contains(s.message(), "keel_events")) << s.message();
        EXPECT_TRUE(Contains(s.message(), engine)) << s.message();
        EXPECT_TRUE(Contains(s.message(), "ALTER TABLE keel_events ENGINE=InnoDB")) << s.message();
    }
    Status view = CheckEngine("keel_streams", "", "h:1/db");
    EXPECT_EQ(view.code(), StatusCode::kFailedPrecondition);
    EXPECT_TRUE(Contains(view.message(), "keel_streams")) << view.message();
}

TEST(MysqlUriTest, BothSchemesAreRegistered) {
    auto schemes = BackendSchemes();
    EXPECT_NE(std::find(schemes.begin(), schemes.end(), "mysql"), schemes.end());
    EXPECT_NE(std::find(schemes.begin(), schemes.end(), "mariadb"), schemes.end());
}

}  // namespace
}  // namespace keel::detail::mysql
