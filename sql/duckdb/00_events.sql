-- DuckDB: the typed events view `ev` over the runner's `raw_events` (the data contract's
-- columns: user_id, ts as RFC 3339 text, kind, amount, watch_seconds, room_id, category,
-- order_id) and `raw_users` (user_id, registered_at). Everything engine-specific is in this
-- file (sql/spark/00_events.sql is its Spark twin); the steps after it are shared.
--
-- room_bit / category_bit: the bit each room or category sets in the 64-slot distinct-count
-- sketch, as the Rust side computes it (features::hash::hash_str = 32-bit FNV-1a over the
-- text, 0 for blank; slot = top 6 bits of hash * 0x9E3779B97F4A7C15 mod 2^64). The text is
-- hashed character by character: ids must be ASCII (README: "Distinct counts").

CREATE OR REPLACE MACRO tiering_fnv1a32(s) AS
    list_reduce(
        list_concat([2166136261::BIGINT], list_transform(string_split(s, ''), c -> ascii(c)::BIGINT)),
        (h, b) -> (xor(h, b) * 16777619) % 4294967296);

CREATE OR REPLACE MACRO tiering_hash_str(s) AS
    CASE WHEN s IS NULL OR s = '' THEN 0
         WHEN tiering_fnv1a32(s) = 0 THEN 1
         ELSE tiering_fnv1a32(s) END;

CREATE OR REPLACE MACRO tiering_slot(h) AS
    CAST(((h::HUGEINT * 11400714819323198485::HUGEINT) % 18446744073709551616::HUGEINT)
         // 288230376151711744::HUGEINT AS INTEGER);

CREATE OR REPLACE MACRO tiering_sketch_bit(s) AS
    CASE WHEN tiering_hash_str(s) = 0 THEN CAST(0 AS BIGINT)
         WHEN tiering_slot(tiering_hash_str(s)) = 63 THEN CAST(-9223372036854775808 AS BIGINT)
         ELSE CAST(1 AS BIGINT) << tiering_slot(tiering_hash_str(s)) END;

-- The bits of the distinct rooms and categories (thousands of values, not billions of events).
CREATE OR REPLACE TEMPORARY VIEW room_bits AS
SELECT id, tiering_sketch_bit(id) AS bit, CAST(tiering_hash_str(id) AS BIGINT) AS hash
FROM (SELECT DISTINCT CAST(room_id AS VARCHAR) AS id FROM raw_events WHERE room_id IS NOT NULL) r;

CREATE OR REPLACE TEMPORARY VIEW category_bits AS
SELECT id, tiering_sketch_bit(id) AS bit, CAST(tiering_hash_str(id) AS BIGINT) AS hash
FROM (SELECT DISTINCT CAST(category AS VARCHAR) AS id FROM raw_events WHERE category IS NOT NULL) c;

CREATE OR REPLACE TEMPORARY VIEW ev AS
SELECT
    CAST(e.user_id AS VARCHAR) AS user_id,
    CAST(FLOOR(epoch(CAST(e.ts AS TIMESTAMPTZ))) AS BIGINT) AS ts,
    CAST(FLOOR(FLOOR(epoch(CAST(e.ts AS TIMESTAMPTZ))) / 86400) AS BIGINT) AS day,
    CAST(e.kind AS VARCHAR) AS kind,
    CAST(CAST(COALESCE(e.amount, 0) AS FLOAT) AS DOUBLE) AS amount,
    CAST(COALESCE(e.watch_seconds, 0) AS BIGINT) AS watch_seconds,
    COALESCE(r.bit, CAST(0 AS BIGINT)) AS room_bit,
    COALESCE(c.bit, CAST(0 AS BIGINT)) AS category_bit,
    COALESCE(c.hash, CAST(0 AS BIGINT)) AS category_hash,
    COALESCE(r.hash, CAST(0 AS BIGINT)) AS room_hash,
    -- features::channel::Channel::parse, counted (blank = live): 1 live, 2 short_video,
    -- 3 social, 4 offline_store, 5 app, 6 other.
    CASE lower(replace(replace(trim(COALESCE(CAST(e.channel AS VARCHAR), '')), '-', '_'), ' ', '_'))
        WHEN '' THEN 1 WHEN 'live' THEN 1 WHEN 'short_video' THEN 2 WHEN 'social' THEN 3
        WHEN 'offline_store' THEN 4 WHEN 'app' THEN 5 ELSE 6 END AS channel_code,
    CAST(e.order_id AS VARCHAR) AS order_id,
    -- hash_str(order_id) of orders: the Rust sweep applies orders of one second in this order.
    CASE WHEN e.kind = 'order' THEN CAST(tiering_hash_str(CAST(e.order_id AS VARCHAR)) AS BIGINT)
         ELSE CAST(0 AS BIGINT) END AS order_hash
FROM raw_events e
LEFT JOIN room_bits r ON r.id = CAST(e.room_id AS VARCHAR)
LEFT JOIN category_bits c ON c.id = CAST(e.category AS VARCHAR);

CREATE OR REPLACE TEMPORARY VIEW users AS
SELECT
    CAST(user_id AS VARCHAR) AS user_id,
    CAST(FLOOR(epoch(CAST(registered_at AS TIMESTAMPTZ))) AS BIGINT) AS registered_at
FROM raw_users;
