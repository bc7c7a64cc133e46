-- Step 1: per-user daily partials. `cut` = 0 is a whole day (what a warehouse materialises
-- once per day and never recomputes); `cut` = a snapshot time is the part of that snapshot's
-- own day before it (snapshots need not fall at midnight). Every column merges exactly
-- across days: MIN/MAX for times, SUM for counts and money, BIT_OR for the sketches, and
-- order_days as the count of days with an order (a day is one partial).

CREATE OR REPLACE TEMPORARY VIEW pieces AS
SELECT e.*, CAST(0 AS BIGINT) AS cut
FROM ev_flagged e
UNION ALL
SELECT e.*, s.snapshot AS cut
FROM ev_flagged e
JOIN snapshots s ON e.day = s.day AND e.ts < s.snapshot;

CREATE OR REPLACE TEMPORARY VIEW daily AS
SELECT
    user_id, day, cut,
    MIN(ts) AS first_seen,
    MAX(ts) AS last_activity,
    MAX(CASE WHEN kind = 'order' THEN ts END) AS last_order,
    SUM(CASE WHEN kind = 'order' THEN 1 ELSE 0 END) AS orders,
    SUM(CASE WHEN kind = 'order' THEN amount ELSE 0.0 END) AS spend,
    -- Order cents as the Rust side counts the first order day's spend (round(amount * 100)
    -- floored at 0 per order; schema version 3).
    SUM(CASE WHEN kind = 'order'
             THEN CAST(GREATEST(ROUND(amount * CAST(100 AS DOUBLE)), CAST(0 AS DOUBLE)) AS BIGINT)
             ELSE CAST(0 AS BIGINT) END) AS order_cents,
    SUM(CASE WHEN kind = 'view' THEN 1 ELSE 0 END) AS views,
    SUM(CASE WHEN kind = 'view' THEN watch_seconds ELSE 0 END) AS watch_seconds,
    SUM(CASE WHEN kind = 'comment' THEN 1 ELSE 0 END) AS comments,
    SUM(CASE WHEN kind = 'like' THEN 1 ELSE 0 END) AS likes,
    SUM(CASE WHEN kind = 'share' THEN 1 ELSE 0 END) AS shares,
    SUM(CASE WHEN kind = 'follow' THEN 1 ELSE 0 END) AS follows,
    SUM(CASE WHEN kind = 'gift' THEN 1 ELSE 0 END) AS gifts,
    BIT_OR(room_bit) AS room_sketch,
    BIT_OR(category_bit) AS category_sketch,
    COUNT(*) AS events,
    SUM(CASE WHEN kind = 'refund' THEN 1 ELSE 0 END) AS refunds,
    SUM(CASE WHEN kind = 'refund' THEN amount ELSE 0.0 END) AS refunded,
    SUM(fulls) AS orders_refunded,
    SUM(linked) AS linked_refunds,
    SUM(orphan) AS orphan_refunds
FROM pieces
GROUP BY user_id, day, cut;
