#pragma once
// The `mysql://` / `mariadb://` store URI and the open-time settings checks that need no server: parsed and checked
// here so that they can be unit-tested. docs/mysql.md describes the format.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "keel/event_store.hpp"

#include "store/registry.hpp"

namespace keel::detail::mysql {

// Where and how to connect; what `mysql://user:password@host:port/database?…` says.
struct MysqlConfig {
    std::string user;                     // empty: the client library's default (the OS user)
    std::optional<std::string> password;  // nullopt: no password sent
    std::string host;                     // a name, an IPv4 address or an IPv6 address without brackets
    uint16_t port = 3306;
    std::string database;
    std::string socket;  // ?socket=/path: a Unix socket instead of TCP
    Durability durability = Durability::kFull;
    std::chrono::seconds connect_timeout{5};
    std::chrono::seconds read_timeout{30};
    std::chrono::seconds write_timeout{30};
    // Seconds a statement waits for a row lock (innodb_lock_wait_timeout), from StoreOptions::busy_timeout.
    int lock_wait_timeout_s = 5;

    // "host:port/database" (or "socket:/path/database"): for messages and Stats::location. Never the password.
    std::string Where() const;
};

// Decodes %XX escapes; kInvalidArgument for a malformed escape. `what` names the part in the message.
Result<std::string> PercentDecode(std::string_view text, std::string_view what);

// Parses `uri` (scheme mysql or mariadb). `options` supplies the defaults the URI may override (durability) and
// the lock-wait timeout. kInvalidArgument naming the problem; messages never contain the password.
Result<MysqlConfig> ParseMysqlUri(const ParsedUri& uri, const StoreOptions& options);

// The innodb_flush_log_at_trx_commit check made at open: Durability::kFull needs the value 1 (the redo log is
// written and flushed at every commit); any other value is refused with kFailedPrecondition naming the variable,
// its value and both fixes. Durability::kNormal accepts every value.
Status CheckFlushSetting(Durability durability, std::string_view flush_log_at_trx_commit, const std::string& where);

// InnoDB is the only engine accepted for a keel table: kFailedPrecondition naming the table, its engine and the fix
// (`ALTER TABLE <t> ENGINE=InnoDB`) for anything else (MyISAM, Aria, MEMORY, a view, …). `engine` is empty for a
// view.
Status CheckEngine(std::string_view table, std::string_view engine, const std::string& where);

}  // namespace keel::detail::mysql
