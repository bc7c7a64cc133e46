-- Schema version 3's columns: the top rooms and the first order day, with the same two steps
-- (daily partials, then the roll-up to each snapshot).
--
-- Rooms (features::interests, the `rooms` slots): the interests' forward-decayed score over
-- the events' rooms instead of their categories (`weighted_pieces`: the same weights and
-- time), the 2 highest levels kept (ties: smaller hash), 2 = the Rust side's slots
-- (features::interests::ROOM_SLOTS).
-- As for the categories, this is the exact profile: for a user with at most 2 rooms the Rust
-- side holds the same map (levels within 1e-3), with more its weighted Space-Saving sketch
-- keeps scores within 2^m of the true ones (m: its lowest level), checked by
-- warehouse/compare.py.
--
-- First order day (features::aggregate, "First order day"): the earliest day with an order
-- before the snapshot and the gross cents of every order on it (the day's `order_cents` from
-- the daily partials, capped at 2^32 - 1 as the Rust side saturates). A day is one partial of
-- a snapshot's roll-up, so this is exact.

CREATE OR REPLACE TEMPORARY VIEW room_daily AS
SELECT user_id, day, cut, room_hash, SUM(score) AS score
FROM weighted_pieces
WHERE room_hash <> 0
GROUP BY user_id, day, cut, room_hash;

CREATE OR REPLACE TEMPORARY VIEW room_rolled AS
SELECT snapshot, user_id, room_hash, LOG2(SUM(score)) AS level
FROM (
    SELECT s.snapshot, d.user_id, d.room_hash, d.score
    FROM snapshots s JOIN room_daily d ON d.cut = 0 AND d.day < s.day
    UNION ALL
    SELECT s.snapshot, d.user_id, d.room_hash, d.score
    FROM snapshots s JOIN room_daily d ON d.cut = s.snapshot
) p
GROUP BY snapshot, user_id, room_hash;

CREATE OR REPLACE TEMPORARY VIEW room_top AS
SELECT snapshot, user_id,
    MAX(CASE WHEN pos = 1 THEN room_hash END) AS room_0,
    MAX(CASE WHEN pos = 2 THEN room_hash END) AS room_1,
    MAX(CASE WHEN pos = 1 THEN level END) AS room_level_0,
    MAX(CASE WHEN pos = 2 THEN level END) AS room_level_1
FROM (
    SELECT r.*, ROW_NUMBER() OVER (PARTITION BY snapshot, user_id
                                   ORDER BY level DESC, room_hash) AS pos
    FROM room_rolled r
) x
WHERE pos <= 2
GROUP BY snapshot, user_id;

CREATE OR REPLACE TEMPORARY VIEW first_order_days AS
SELECT snapshot, user_id, MIN(day) AS first_order_day
FROM (
    SELECT s.snapshot, d.user_id, d.day
    FROM snapshots s JOIN daily d ON d.cut = 0 AND d.day < s.day AND d.orders > 0
    UNION ALL
    SELECT s.snapshot, d.user_id, d.day
    FROM snapshots s JOIN daily d ON d.cut = s.snapshot AND d.orders > 0
) p
GROUP BY snapshot, user_id;

CREATE OR REPLACE TEMPORARY VIEW first_orders AS
SELECT f.snapshot, f.user_id, f.first_order_day,
       LEAST(d.order_cents, CAST(4294967295 AS BIGINT)) AS first_day_cents
FROM first_order_days f
JOIN snapshots s ON s.snapshot = f.snapshot
JOIN daily d ON d.user_id = f.user_id AND d.day = f.first_order_day AND d.orders > 0
    AND ((d.cut = 0 AND d.day < s.day) OR d.cut = s.snapshot);
