#pragma once
// The SQLite schema, as migrations: kMigrations[i] takes a store from version i to i+1. Never edit a released
// migration; add a new one. docs/sqlite-schema.md describes the result.

#include <array>
#include <string_view>

namespace keel::detail::sqlite_schema {

// 'KEEL' in ASCII, written to PRAGMA application_id when the database has none.
inline constexpr int64_t kApplicationId = 0x4B45454C;

inline constexpr std::array<std::string_view, 2> kMigrations = {
    // 0 -> 1
    R"sql(
CREATE TABLE keel_events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        BLOB    NOT NULL,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    type            TEXT    NOT NULL,
    data            BLOB    NOT NULL,
    metadata        TEXT    NOT NULL,
    recorded_at     INTEGER NOT NULL
);
CREATE UNIQUE INDEX keel_events_event_id ON keel_events (event_id);
CREATE UNIQUE INDEX keel_events_stream ON keel_events (stream_id, stream_version);
CREATE TABLE keel_streams (
    stream_id       TEXT    PRIMARY KEY,
    version         INTEGER NOT NULL,
    state           INTEGER NOT NULL DEFAULT 0,
    max_count       INTEGER,
    max_age_us      INTEGER,
    truncate_before INTEGER,
    custom_metadata TEXT    NOT NULL DEFAULT '',
    updated_at      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE keel_snapshots (
    stream_id   TEXT    PRIMARY KEY,
    version     INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    data        BLOB    NOT NULL,
    recorded_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE keel_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
)sql",
    // 1 -> 2: the transactional outbox and the consumers' inbox (units of work).
    R"sql(
CREATE TABLE keel_outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   BLOB    NOT NULL,
    destination  TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    headers      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    published_at INTEGER
);
CREATE UNIQUE INDEX keel_outbox_message_id ON keel_outbox (message_id);
CREATE INDEX keel_outbox_pending ON keel_outbox (published_at, id);
CREATE TABLE keel_inbox (
    consumer     TEXT    NOT NULL,
    message_id   BLOB    NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
) WITHOUT ROWID;
CREATE TABLE keel_leases (
    name  TEXT    PRIMARY KEY,
    owner TEXT    NOT NULL,
    until INTEGER NOT NULL
) WITHOUT ROWID;
)sql",
};

}  // namespace keel::detail::sqlite_schema
