-- Spark SQL: the typed events view `ev` over the runner's `raw_events` and `raw_users`; the
-- twin of sql/duckdb/00_events.sql (Spark has no SQL macros, so the hash is inline). Run with
-- spark.sql.session.timeZone = UTC. room_bit / category_bit: the distinct-count sketch bit of
-- features::hash::hash_str (32-bit FNV-1a over ASCII text; 0 for blank); slot = top 6 bits of
-- hash * 0x9E3779B97F4A7C15 mod 2^64, computed in DECIMAL (exact below 10^38). Hashed once
-- per distinct room and category, then joined to the events.

CREATE OR REPLACE TEMPORARY VIEW room_fnv AS
SELECT id, CASE WHEN id = '' THEN CAST(0 AS BIGINT)
         ELSE aggregate(transform(sequence(1, length(id)), i -> CAST(ascii(substr(id, i, 1)) AS BIGINT)),
                        CAST(2166136261 AS BIGINT), (h, b) -> pmod((h ^ b) * 16777619, CAST(4294967296 AS BIGINT))) END AS h
FROM (SELECT DISTINCT CAST(room_id AS STRING) AS id FROM raw_events WHERE room_id IS NOT NULL) d;

CREATE OR REPLACE TEMPORARY VIEW room_bits AS
SELECT id,
       CASE WHEN id = '' THEN CAST(0 AS BIGINT)
            ELSE shiftleft(CAST(1 AS BIGINT),
                 CAST(FLOOR(pmod(CAST(CASE WHEN h = 0 THEN 1 ELSE h END AS DECIMAL(20, 0))
                                 * CAST(11400714819323198485 AS DECIMAL(20, 0)),
                                 CAST(18446744073709551616 AS DECIMAL(21, 0)))
                            / CAST(288230376151711744 AS DECIMAL(18, 0))) AS INT)) END AS bit,
       CASE WHEN id = '' THEN CAST(0 AS BIGINT) WHEN h = 0 THEN CAST(1 AS BIGINT) ELSE h END AS hash
FROM room_fnv;

CREATE OR REPLACE TEMPORARY VIEW category_fnv AS
SELECT id, CASE WHEN id = '' THEN CAST(0 AS BIGINT)
         ELSE aggregate(transform(sequence(1, length(id)), i -> CAST(ascii(substr(id, i, 1)) AS BIGINT)),
                        CAST(2166136261 AS BIGINT), (h, b) -> pmod((h ^ b) * 16777619, CAST(4294967296 AS BIGINT))) END AS h
FROM (SELECT DISTINCT CAST(category AS STRING) AS id FROM raw_events WHERE category IS NOT NULL) d;

CREATE OR REPLACE TEMPORARY VIEW category_bits AS
SELECT id,
       CASE WHEN id = '' THEN CAST(0 AS BIGINT)
            ELSE shiftleft(CAST(1 AS BIGINT),
                 CAST(FLOOR(pmod(CAST(CASE WHEN h = 0 THEN 1 ELSE h END AS DECIMAL(20, 0))
                                 * CAST(11400714819323198485 AS DECIMAL(20, 0)),
                                 CAST(18446744073709551616 AS DECIMAL(21, 0)))
                            / CAST(288230376151711744 AS DECIMAL(18, 0))) AS INT)) END AS bit,
       CASE WHEN id = '' THEN CAST(0 AS BIGINT) WHEN h = 0 THEN CAST(1 AS BIGINT) ELSE h END AS hash
FROM category_fnv;

CREATE OR REPLACE TEMPORARY VIEW ev AS
SELECT
    CAST(e.user_id AS STRING) AS user_id,
    CAST(to_timestamp(e.ts) AS BIGINT) AS ts,
    CAST(FLOOR(CAST(to_timestamp(e.ts) AS BIGINT) / 86400) AS BIGINT) AS day,
    CAST(e.kind AS STRING) AS kind,
    CAST(CAST(COALESCE(e.amount, 0) AS FLOAT) AS DOUBLE) AS amount,
    CAST(COALESCE(e.watch_seconds, 0) AS BIGINT) AS watch_seconds,
    COALESCE(r.bit, CAST(0 AS BIGINT)) AS room_bit,
    COALESCE(c.bit, CAST(0 AS BIGINT)) AS category_bit,
    COALESCE(c.hash, CAST(0 AS BIGINT)) AS category_hash,
    COALESCE(r.hash, CAST(0 AS BIGINT)) AS room_hash,
    -- features::channel::Channel::parse, counted (blank = live): 1 live, 2 short_video,
    -- 3 social, 4 offline_store, 5 app, 6 other.
    CASE lower(replace(replace(trim(COALESCE(CAST(e.channel AS STRING), '')), '-', '_'), ' ', '_'))
        WHEN '' THEN 1 WHEN 'live' THEN 1 WHEN 'short_video' THEN 2 WHEN 'social' THEN 3
        WHEN 'offline_store' THEN 4 WHEN 'app' THEN 5 ELSE 6 END AS channel_code,
    CAST(e.order_id AS STRING) AS order_id,
    -- hash_str(order_id) of orders: the Rust sweep applies orders of one second in this order.
    CASE WHEN e.kind <> 'order' OR e.order_id IS NULL OR e.order_id = '' THEN CAST(0 AS BIGINT)
         WHEN aggregate(transform(sequence(1, length(e.order_id)), i -> CAST(ascii(substr(e.order_id, i, 1)) AS BIGINT)),
                        CAST(2166136261 AS BIGINT), (h, b) -> pmod((h ^ b) * 16777619, CAST(4294967296 AS BIGINT))) = 0 THEN CAST(1 AS BIGINT)
         ELSE aggregate(transform(sequence(1, length(e.order_id)), i -> CAST(ascii(substr(e.order_id, i, 1)) AS BIGINT)),
                        CAST(2166136261 AS BIGINT), (h, b) -> pmod((h ^ b) * 16777619, CAST(4294967296 AS BIGINT))) END AS order_hash
FROM raw_events e
LEFT JOIN room_bits r ON r.id = CAST(e.room_id AS STRING)
LEFT JOIN category_bits c ON c.id = CAST(e.category AS STRING);

CREATE OR REPLACE TEMPORARY VIEW users AS
SELECT
    CAST(user_id AS STRING) AS user_id,
    CAST(to_timestamp(registered_at) AS BIGINT) AS registered_at
FROM raw_users;
