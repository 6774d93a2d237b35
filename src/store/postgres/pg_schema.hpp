#pragma once
// The PostgreSQL schema, as migrations: kMigrations[i] takes a store from version i to i+1. Never edit a released
// migration; add a new one. docs/postgres.md describes the result.

#include <array>
#include <string_view>

namespace keel::detail::pg_schema {

inline constexpr std::array<std::string_view, 4> kMigrations = {
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
    // 2 -> 3: appends without a subtransaction per append, and one call per group-commit batch.
    R"sql(
-- One append, checked and written without raising (so one conflict never aborts the other appends of a batch) and
-- without an exception block (a subtransaction per append was most of an append's cost). The stream's row is locked
-- first (SELECT … FOR UPDATE, or created with INSERT … ON CONFLICT DO NOTHING, which waits for a concurrent creator);
-- the events go in with ON CONFLICT (event_id) DO NOTHING; if an id was stored already, the rows this call wrote
-- are deleted again and code 2 says so. Codes as in migration 0 -> 1.
CREATE OR REPLACE FUNCTION keel_append(p_stream text, p_kind integer, p_expected bigint, p_ids uuid[], p_types text[],
                            p_data bytea[], p_meta text[], p_now bigint,
                            OUT code integer, OUT actual bigint, OUT first_pos bigint, OUT last_pos bigint,
                            OUT next_version bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_version bigint;
    v_state integer;
    v_created boolean := false;
    v_n integer := cardinality(p_ids);
    v_positions bigint[];
BEGIN
    code := 0;
    LOOP
        SELECT s.version, s.state INTO v_version, v_state FROM keel_streams s WHERE s.stream_id = p_stream FOR UPDATE;
        EXIT WHEN FOUND;
        actual := -1;
        IF p_kind = 2 OR (p_kind = 3 AND p_expected <> -1) THEN
            code := 1;
            RETURN;
        END IF;
        INSERT INTO keel_streams (stream_id, version, state, updated_at) VALUES (p_stream, -1, 0, p_now)
        ON CONFLICT (stream_id) DO NOTHING;
        IF FOUND THEN
            v_version := -1;
            v_state := 0;
            v_created := true;
            EXIT;
        END IF;
        -- Another transaction created the row meanwhile (and committed): lock that one.
    END LOOP;
    IF v_state = 2 THEN
        code := 3;
        RETURN;
    END IF;
    actual := CASE WHEN v_state <> 0 THEN -1 ELSE v_version END;
    IF (p_kind = 1 AND actual >= 0) OR (p_kind = 2 AND actual < 0) OR (p_kind = 3 AND actual <> p_expected) THEN
        code := 1;
        RETURN;
    END IF;
    WITH ins AS (
        INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at)
        SELECT e.id, p_stream, v_version + e.ord, e.t, e.d, e.m, p_now
        FROM unnest(p_ids, p_types, p_data, p_meta) WITH ORDINALITY AS e(id, t, d, m, ord)
        ORDER BY e.ord
        ON CONFLICT (event_id) DO NOTHING
        RETURNING global_position)
    SELECT array_agg(global_position ORDER BY global_position) INTO v_positions FROM ins;
    IF coalesce(cardinality(v_positions), 0) < v_n THEN
        DELETE FROM keel_events WHERE global_position = ANY(v_positions);
        IF v_created THEN
            DELETE FROM keel_streams WHERE stream_id = p_stream;
        END IF;
        code := 2;
        RETURN;
    END IF;
    first_pos := v_positions[1];
    last_pos := v_positions[v_n];
    next_version := v_version + v_n;
    UPDATE keel_streams SET version = next_version, state = 0, updated_at = p_now WHERE stream_id = p_stream;
END $$;

-- A whole group-commit batch in one call: request k appends p_counts[k] events (the flattened p_ids … p_meta;
-- p_req[i] is the request of event i, 1-based) to p_streams[k] expecting p_kinds[k] / p_expected[k]. Returns one
-- row per request, o_ord = k, with keel_append's result columns. Each request is checked against the versions the
-- requests before it left, as if keel_append ran once per request in order.
--
-- Both functions plan their statements once per session (force_generic_plan): re-planning them for every call's
-- arrays cost more than running them.
--
-- The usual batch is handled set-wise: lock the existing stream rows (sorted, so that concurrent batches cannot
-- deadlock), decide every request in memory, create the missing stream rows, insert all accepted events in one
-- INSERT, update the stream versions in one UPDATE. If that meets another transaction (a stream row created
-- meanwhile, an event id stored already), what it wrote is deleted again and the batch runs request by request
-- through keel_append.
CREATE FUNCTION keel_append_batch(p_streams text[], p_kinds integer[], p_expected bigint[], p_counts integer[],
                                  p_req integer[], p_ids uuid[], p_types text[], p_data bytea[], p_meta text[],
                                  p_now bigint)
RETURNS TABLE (o_ord integer, o_code integer, o_actual bigint, o_first bigint, o_last bigint, o_next bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_r integer := cardinality(p_streams);
    v_names text[];  -- the distinct streams of the batch
    v_d integer;
    v_locked_names text[];
    v_locked_versions bigint[];
    v_locked_states integer[];
    v_exists boolean[];
    v_version bigint[];
    v_state integer[];
    v_new boolean[];
    v_dirty boolean[];
    r_code integer[];
    r_actual bigint[];
    r_first bigint[];
    r_last bigint[];
    r_next bigint[];
    r_shift bigint[];  -- version of accepted event i = r_shift[p_req[i]] + i
    v_new_names text[] := '{}';
    v_new_versions bigint[] := '{}';
    v_upd_names text[] := '{}';
    v_upd_versions bigint[] := '{}';
    v_created text[];
    v_positions bigint[];
    v_accepted integer := 0;
    v_off integer := 0;
    v_idx integer := 0;
    v_n integer;
    v_j integer;
    v_actual bigint;
    v_base bigint;
    v_one record;
BEGIN
    SELECT array_agg(DISTINCT s) INTO v_names FROM unnest(p_streams) AS s;
    v_d := cardinality(v_names);
    SELECT array_agg(x.stream_id), array_agg(x.version), array_agg(x.state)
    INTO v_locked_names, v_locked_versions, v_locked_states
    FROM (SELECT s.stream_id, s.version, s.state FROM keel_streams s WHERE s.stream_id = ANY(v_names)
          ORDER BY s.stream_id FOR UPDATE) x;
    v_exists := array_fill(false, ARRAY[v_d]);
    v_version := array_fill(-1::bigint, ARRAY[v_d]);
    v_state := array_fill(0, ARRAY[v_d]);
    v_new := array_fill(false, ARRAY[v_d]);
    v_dirty := array_fill(false, ARRAY[v_d]);
    FOR i IN 1..coalesce(cardinality(v_locked_names), 0) LOOP
        v_j := array_position(v_names, v_locked_names[i]);
        v_exists[v_j] := true;
        v_version[v_j] := v_locked_versions[i];
        v_state[v_j] := v_locked_states[i];
    END LOOP;

    r_code := array_fill(NULL::integer, ARRAY[v_r]);
    r_actual := array_fill(NULL::bigint, ARRAY[v_r]);
    r_first := array_fill(NULL::bigint, ARRAY[v_r]);
    r_last := array_fill(NULL::bigint, ARRAY[v_r]);
    r_next := array_fill(NULL::bigint, ARRAY[v_r]);
    r_shift := array_fill(NULL::bigint, ARRAY[v_r]);
    FOR k IN 1..v_r LOOP
        v_n := p_counts[k];
        v_j := array_position(v_names, p_streams[k]);
        IF v_exists[v_j] AND v_state[v_j] = 2 THEN
            r_code[k] := 3;
        ELSE
            v_actual := CASE WHEN NOT v_exists[v_j] OR v_state[v_j] <> 0 THEN -1 ELSE v_version[v_j] END;
            IF (p_kinds[k] = 1 AND v_actual >= 0) OR (p_kinds[k] = 2 AND v_actual < 0) OR
               (p_kinds[k] = 3 AND v_actual <> p_expected[k]) THEN
                r_code[k] := 1;
                r_actual[k] := v_actual;
            ELSE
                v_base := v_version[v_j];  -- -1 without a row; a soft-deleted stream continues its versions
                r_code[k] := 0;
                r_shift[k] := v_base - v_off;
                r_next[k] := v_base + v_n;
                IF NOT v_exists[v_j] THEN
                    v_exists[v_j] := true;
                    v_new[v_j] := true;
                END IF;
                v_version[v_j] := v_base + v_n;
                v_state[v_j] := 0;
                v_dirty[v_j] := true;
                v_accepted := v_accepted + v_n;
            END IF;
        END IF;
        v_off := v_off + v_n;
    END LOOP;
    FOR j IN 1..v_d LOOP
        IF v_new[j] THEN
            v_new_names := v_new_names || v_names[j];
            v_new_versions := v_new_versions || v_version[j];
        ELSIF v_dirty[j] THEN
            v_upd_names := v_upd_names || v_names[j];
            v_upd_versions := v_upd_versions || v_version[j];
        END IF;
    END LOOP;

    <<fast>>
    BEGIN
        IF cardinality(v_new_names) > 0 THEN
            WITH c AS (
                INSERT INTO keel_streams (stream_id, version, state, updated_at)
                SELECT t.n, t.v, 0, p_now FROM unnest(v_new_names, v_new_versions) AS t(n, v) ORDER BY t.n
                ON CONFLICT (stream_id) DO NOTHING
                RETURNING stream_id)
            SELECT array_agg(c.stream_id) INTO v_created FROM c;
            IF coalesce(cardinality(v_created), 0) < cardinality(v_new_names) THEN
                DELETE FROM keel_streams WHERE stream_id = ANY(v_created);
                EXIT fast;
            END IF;
        END IF;
        IF v_accepted > 0 THEN
            WITH ins AS (
                INSERT INTO keel_events (event_id, stream_id, stream_version, type, data, metadata, recorded_at)
                SELECT e.id, p_streams[e.k], r_shift[e.k] + e.i, e.t, e.d, e.m, p_now
                FROM unnest(p_ids, p_types, p_data, p_meta, p_req) WITH ORDINALITY AS e(id, t, d, m, k, i)
                WHERE r_code[e.k] = 0
                ORDER BY e.i
                ON CONFLICT (event_id) DO NOTHING
                RETURNING global_position)
            SELECT array_agg(ins.global_position ORDER BY ins.global_position) INTO v_positions FROM ins;
            IF coalesce(cardinality(v_positions), 0) < v_accepted THEN
                DELETE FROM keel_events WHERE global_position = ANY(v_positions);
                DELETE FROM keel_streams WHERE stream_id = ANY(v_new_names);
                EXIT fast;
            END IF;
        END IF;
        IF cardinality(v_upd_names) > 0 THEN
            UPDATE keel_streams s SET version = u.v, state = 0, updated_at = p_now
            FROM unnest(v_upd_names, v_upd_versions) AS u(n, v) WHERE s.stream_id = u.n;
        END IF;
        FOR k IN 1..v_r LOOP
            IF r_code[k] = 0 THEN
                v_n := p_counts[k];
                r_first[k] := v_positions[v_idx + 1];
                r_last[k] := v_positions[v_idx + v_n];
                v_idx := v_idx + v_n;
            END IF;
        END LOOP;
        RETURN QUERY SELECT t.k::integer, t.c, t.a, t.f, t.l, t.x
                     FROM unnest(r_code, r_actual, r_first, r_last, r_next) WITH ORDINALITY AS t(c, a, f, l, x, k);
        RETURN;
    END fast;

    -- Request by request (the stream rows stay locked; nothing of the set-wise attempt is left).
    v_off := 0;
    FOR k IN 1..v_r LOOP
        v_n := p_counts[k];
        SELECT * INTO v_one FROM keel_append(p_streams[k], p_kinds[k], p_expected[k], p_ids[v_off + 1:v_off + v_n],
                                             p_types[v_off + 1:v_off + v_n], p_data[v_off + 1:v_off + v_n],
                                             p_meta[v_off + 1:v_off + v_n], p_now);
        o_ord := k;
        o_code := v_one.code;
        o_actual := v_one.actual;
        o_first := v_one.first_pos;
        o_last := v_one.last_pos;
        o_next := v_one.next_version;
        RETURN NEXT;
        v_off := v_off + v_n;
    END LOOP;
END $$;
)sql",
    // 3 -> 4: keel_append_batch's statements on keel_streams by index only. Its plans are generic (planned once per
    // session): planned while keel_streams was small, the UPDATE of the batch's stream versions became a hash join
    // over a sequential scan of the whole table — every batch read every stream row, dead versions included.
    R"sql(
ALTER FUNCTION keel_append_batch(text[], integer[], bigint[], integer[], integer[], uuid[], text[], bytea[], text[],
                                 bigint)
    SET enable_seqscan = off;
)sql",
};

}  // namespace keel::detail::pg_schema
