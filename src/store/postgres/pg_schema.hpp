#pragma once
// The PostgreSQL schema, as migrations: kMigrations[i] takes a store from version i to i+1. Never edit a released
// migration; add a new one. docs/postgres.md describes the result.

#include <array>
#include <string_view>

namespace keel::detail::pg_schema {

inline constexpr std::array<std::string_view, 2> kMigrations = {
    // 0 -> 1
    R"sql(
CREATE TABLE keel_events (
    global_position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  xid8    NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid    NOT NULL,
    stream_id       text    NOT NULL,
    stream_version  bigint  NOT NULL,
    type            text    NOT NULL,
    data            bytea   NOT NULL,
    metadata        text    NOT NULL,
    recorded_at     bigint  NOT NULL,
    CONSTRAINT keel_events_event_id UNIQUE (event_id),
    CONSTRAINT keel_events_stream UNIQUE (stream_id, stream_version)
);
CREATE INDEX keel_events_commit_order ON keel_events (transaction_id, global_position);
CREATE TABLE keel_streams (
    stream_id       text    PRIMARY KEY,
    version         bigint  NOT NULL,
    state           integer NOT NULL DEFAULT 0,
    max_count       bigint,
    max_age_us      bigint,
    truncate_before bigint,
    custom_metadata text    NOT NULL DEFAULT '',
    updated_at      bigint  NOT NULL
);
CREATE TABLE keel_snapshots (
    stream_id   text   PRIMARY KEY,
    version     bigint NOT NULL,
    type        text   NOT NULL,
    data        bytea  NOT NULL,
    recorded_at bigint NOT NULL
);
CREATE TABLE keel_checkpoints (
    name           text   PRIMARY KEY,
    position       bigint NOT NULL,
    transaction_id xid8,
    updated_at     bigint NOT NULL
);
-- One append, checked and written in one statement so that a whole group-commit batch can be pipelined.
-- p_kind: 0 any, 1 no_stream, 2 stream_exists, 3 exact. code: 0 written, 1 wrong expected version (actual set),
-- 2 an event id is already stored (the client decides between an idempotent re-send and a misuse), 3 tombstoned.
CREATE FUNCTION keel_append(p_stream text, p_kind integer, p_expected bigint, p_ids uuid[], p_types text[],
                            p_data bytea[], p_meta text[], p_now bigint,
                            OUT code integer, OUT actual bigint, OUT first_pos bigint, OUT last_pos bigint,
                            OUT next_version bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
    v_state integer;
    v_found boolean;
    v_n integer := cardinality(p_ids);
    v_constraint text;
BEGIN
    LOOP
        code := 0;
        SELECT s.version, s.state INTO v_version, v_state FROM keel_streams s WHERE s.stream_id = p_stream FOR UPDATE;
        v_found := FOUND;
        IF v_found AND v_state = 2 THEN
            code := 3;
            RETURN;
        END IF;
        actual := CASE WHEN NOT v_found OR v_state <> 0 THEN -1 ELSE v_version END;
        IF (p_kind = 1 AND actual >= 0) OR (p_kind = 2 AND actual < 0) OR (p_kind = 3 AND actual <> p_expected) THEN
            code := 1;
            RETURN;
        END IF;
        IF NOT v_found THEN
            v_version := -1;
        END IF;
        BEGIN
            WITH ins AS (
                INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at)
                SELECT e.id, p_stream, v_version + e.ord, e.t, e.d, e.m, p_now
                FROM unnest(p_ids, p_types, p_data, p_meta) WITH ORDINALITY AS e(id, t, d, m, ord)
                ORDER BY e.ord
                RETURNING global_position)
            SELECT min(global_position), max(global_position) INTO first_pos, last_pos FROM ins;
            INSERT INTO keel_streams (stream_id, version, state, updated_at)
            VALUES (p_stream, v_version + v_n, 0, p_now)
            ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = 0,
                                                  updated_at = excluded.updated_at;
            next_version := v_version + v_n;
            RETURN;
        EXCEPTION WHEN unique_violation THEN
            GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
            first_pos := NULL;
            last_pos := NULL;
            IF v_constraint = 'keel_events_event_id' THEN
                code := 2;
                RETURN;
            END IF;
            -- Another transaction created the stream first (there was no keel_streams row to lock). For an
            -- unconditional append, go round again (the row exists now); otherwise it is a conflict.
            IF p_kind <> 0 THEN
                code := 1;
                SELECT CASE WHEN s.state <> 0 THEN -1 ELSE s.version END INTO actual
                FROM keel_streams s WHERE s.stream_id = p_stream;
                actual := COALESCE(actual, -1);
                RETURN;
            END IF;
        END;
    END LOOP;
END $$;
)sql",
    // 1 -> 2: the transactional outbox, the consumers' inbox and leases (units of work, relays).
    R"sql(
CREATE TABLE keel_outbox (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id xid8   NOT NULL DEFAULT pg_current_xact_id(),
    message_id     uuid   NOT NULL,
    destination    text   NOT NULL,
    key            text   NOT NULL,
    payload        bytea  NOT NULL,
    headers        text   NOT NULL,
    created_at     bigint NOT NULL,
    published_at   bigint,
    CONSTRAINT keel_outbox_message_id UNIQUE (message_id)
);
CREATE INDEX keel_outbox_pending ON keel_outbox (transaction_id, id) WHERE published_at IS NULL;
CREATE TABLE keel_inbox (
    consumer     text   NOT NULL,
    message_id   uuid   NOT NULL,
    processed_at bigint NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE TABLE keel_leases (
    name  text   PRIMARY KEY,
    owner text   NOT NULL,
    until bigint NOT NULL
);
)sql",
};

}  // namespace keel::detail::pg_schema
