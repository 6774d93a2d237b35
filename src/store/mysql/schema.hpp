#pragma once
// The MariaDB schema, as migrations: kMigrations[i] takes a store from version i to i+1. Never edit a released
// migration; add a new one. Each migration is a list of statements separated by ";\n" (MariaDB commits every DDL
// statement on its own, so a migration interrupted half-way is re-run from the start: every statement must be
// idempotent). docs/mysql.md describes the result.
//
// Identifiers and text compare with utf8mb4_nopad_bin: byte-wise (code point order) and NO PAD, so 'User-1' and
// 'User-1 ' are different streams, as in SQLite. (utf8mb4_bin is a PAD SPACE collation: it would call them equal.)

#include <array>
#include <string_view>

namespace keel::detail::mysql_schema {

// The tables keel owns in the database; every one must be InnoDB (checked at each open).
inline constexpr std::array<std::string_view, 6> kTables = {
    "keel_schema", "keel_events", "keel_streams", "keel_snapshots", "keel_checkpoints", "keel_sequencer",
};

inline constexpr std::string_view kCreateSchemaTable = R"sql(
CREATE TABLE IF NOT EXISTS keel_schema (
    component  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (component)
) ENGINE=InnoDB)sql";

inline constexpr std::array<std::string_view, 1> kMigrations = {
    // 0 -> 1
    R"sql(
CREATE TABLE IF NOT EXISTS keel_events (
    global_position BIGINT       NOT NULL AUTO_INCREMENT,
    event_id        BINARY(16)   NOT NULL,
    stream_id       VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    stream_version  BIGINT       NOT NULL,
    type            VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    data            LONGBLOB     NOT NULL,
    metadata        LONGTEXT     CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    recorded_at     BIGINT       NOT NULL,
    PRIMARY KEY (global_position),
    UNIQUE KEY keel_events_event_id (event_id),
    UNIQUE KEY keel_events_stream (stream_id, stream_version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin ROW_FORMAT=DYNAMIC;
CREATE TABLE IF NOT EXISTS keel_streams (
    stream_id       VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    version         BIGINT       NOT NULL,
    state           TINYINT      NOT NULL DEFAULT 0,
    max_count       BIGINT       NULL,
    max_age_us      BIGINT       NULL,
    truncate_before BIGINT       NULL,
    custom_metadata LONGTEXT     CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL DEFAULT '',
    updated_at      BIGINT       NOT NULL,
    PRIMARY KEY (stream_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin ROW_FORMAT=DYNAMIC;
CREATE TABLE IF NOT EXISTS keel_snapshots (
    stream_id   VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    version     BIGINT       NOT NULL,
    type        VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    data        LONGBLOB     NOT NULL,
    recorded_at BIGINT       NOT NULL,
    PRIMARY KEY (stream_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin ROW_FORMAT=DYNAMIC;
CREATE TABLE IF NOT EXISTS keel_checkpoints (
    name       VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
    position   BIGINT       NOT NULL,
    updated_at BIGINT       NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin ROW_FORMAT=DYNAMIC;
CREATE TABLE IF NOT EXISTS keel_sequencer (
    id TINYINT UNSIGNED NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB;
INSERT INTO keel_sequencer (id) VALUES (1) ON DUPLICATE KEY UPDATE id = id)sql",
};

}  // namespace keel::detail::mysql_schema
