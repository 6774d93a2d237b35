#pragma once
// The local: broker's SQLite schema, as migrations: kMigrations[i] takes a broker database from version i to i+1.
// Never edit a released migration; add a new one. docs/brokers.md describes the result.
//
// The version is kept in the `keel_schema` table shared with the sqlite: event store (component 'broker'), so a
// broker may live in its own file (the default) or in the same file as the event store.

#include <array>
#include <cstdint>
#include <string_view>

namespace keel::detail::local_broker_schema {

// 'KEEL' in ASCII, as the event store writes it to PRAGMA application_id.
inline constexpr int64_t kApplicationId = 0x4B45454C;

inline constexpr std::string_view kComponent = "broker";

// Identical to the event store's definition, so that whichever opens the file first creates it.
inline constexpr std::string_view kCreateSchemaTable =
    "CREATE TABLE IF NOT EXISTS keel_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL, "
    "updated_at INTEGER NOT NULL) WITHOUT ROWID";

inline constexpr std::array<std::string_view, 1> kMigrations = {
    // 0 -> 1
    R"sql(
CREATE TABLE keel_broker_destinations (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE keel_broker_groups (
    id             INTEGER PRIMARY KEY,
    destination_id INTEGER NOT NULL,
    name           TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    UNIQUE (destination_id, name)
);
CREATE TABLE keel_broker_messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    destination_id INTEGER NOT NULL,
    message_id     BLOB    NOT NULL,
    replay         INTEGER NOT NULL DEFAULT 0,
    key            TEXT    NOT NULL,
    payload        BLOB    NOT NULL,
    headers        BLOB    NOT NULL,
    published_at   INTEGER NOT NULL,
    pending        INTEGER NOT NULL
);
CREATE UNIQUE INDEX keel_broker_messages_id ON keel_broker_messages (destination_id, message_id) WHERE replay = 0;
CREATE TABLE keel_broker_deliveries (
    group_id   INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    key        TEXT    NOT NULL,
    head       INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    PRIMARY KEY (group_id, seq)
) WITHOUT ROWID;
CREATE INDEX keel_broker_deliveries_key ON keel_broker_deliveries (group_id, key, seq);
CREATE INDEX keel_broker_deliveries_fresh ON keel_broker_deliveries (group_id, seq) WHERE head = 1 AND visible_at = 0;
CREATE INDEX keel_broker_deliveries_returning ON keel_broker_deliveries (group_id, visible_at, seq)
    WHERE head = 1 AND visible_at > 0;
CREATE TABLE keel_broker_dead_letters (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id         INTEGER NOT NULL,
    message_id       BLOB    NOT NULL,
    key              TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    headers          BLOB    NOT NULL,
    error            TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    dead_lettered_at INTEGER NOT NULL
);
CREATE INDEX keel_broker_dead_letters_group ON keel_broker_dead_letters (group_id, id);
)sql",
};

}  // namespace keel::detail::local_broker_schema
