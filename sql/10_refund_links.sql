-- Refund linking, as features::aggregate ("Refunds") defines it: a refund with an order_id
-- links to the user's order with that id when the order was placed at or before the refund,
-- lies 0..=90 days before it (by day index), and is still among the user's 4 latest orders
-- with an id (fewer than 4 other order ids placed after it, up to the refund; "after" by
-- (time, order_hash)). An order is
-- fully refunded at the linked refund whose running total (in cents) reaches its amount
-- (the first linked refund for a zero-amount order). A refund with an id that links to
-- nothing is an orphan. The Rust memory gives up the order it remembered longest, so in its
-- sweep (by time, orders of one second by hash_str(order_id)) it holds exactly the last 4
-- order ids: the same rule, with `order_hash` breaking ties within a second as the sweep does.

CREATE OR REPLACE TEMPORARY VIEW order_ids AS
SELECT user_id, order_id, MIN(ts) AS placed, MIN(order_hash) AS order_hash, MAX(day) AS day,
       SUM(ROUND(amount * 100)) AS cents
FROM ev
WHERE kind = 'order' AND order_id IS NOT NULL AND order_id <> ''
GROUP BY user_id, order_id;

CREATE OR REPLACE TEMPORARY VIEW refund_keys AS
SELECT DISTINCT user_id, ts, day, order_id, amount
FROM ev
WHERE kind = 'refund' AND order_id IS NOT NULL AND order_id <> '';

CREATE OR REPLACE TEMPORARY VIEW linked_keys AS
SELECT r.user_id, r.ts, r.order_id, r.amount, o.cents AS order_cents
FROM refund_keys r
JOIN order_ids o
  ON o.user_id = r.user_id AND o.order_id = r.order_id
 AND o.placed <= r.ts AND r.day - o.day BETWEEN 0 AND 90
LEFT JOIN order_ids n
  ON n.user_id = r.user_id AND n.placed <= r.ts
 AND (n.placed > o.placed OR (n.placed = o.placed AND n.order_hash > o.order_hash))
GROUP BY r.user_id, r.ts, r.order_id, r.amount, o.cents
HAVING COUNT(n.order_id) < 4;

CREATE OR REPLACE TEMPORARY VIEW refund_rows AS
SELECT e.*, ROUND(e.amount * 100) AS cents, l.order_cents,
       CASE WHEN l.order_cents IS NULL THEN 0 ELSE 1 END AS linked
FROM ev e
LEFT JOIN linked_keys l
  ON l.user_id = e.user_id AND l.ts = e.ts AND l.order_id = e.order_id AND l.amount = e.amount
WHERE e.kind = 'refund';

-- Every event with its refund flags (0 for events that are not refunds).
CREATE OR REPLACE TEMPORARY VIEW ev_flagged AS
SELECT user_id, ts, day, kind, amount, watch_seconds, room_bit, category_bit, category_hash, room_hash,
       channel_code,
       CAST(0 AS BIGINT) AS linked, CAST(0 AS BIGINT) AS orphan, CAST(0 AS BIGINT) AS fulls
FROM ev
WHERE kind <> 'refund'
UNION ALL
SELECT user_id, ts, day, kind, amount, watch_seconds, room_bit, category_bit, category_hash, room_hash,
       channel_code,
       CAST(linked AS BIGINT) AS linked,
       CAST(CASE WHEN linked = 0 AND order_id IS NOT NULL AND order_id <> '' THEN 1 ELSE 0 END AS BIGINT) AS orphan,
       CAST(CASE WHEN linked = 1 AND cum >= order_cents AND (rn = 1 OR cum - cents < order_cents)
                 THEN 1 ELSE 0 END AS BIGINT) AS fulls
FROM (
    SELECT r.*,
           SUM(cents) OVER (PARTITION BY user_id, order_id, linked ORDER BY ts
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cum,
           ROW_NUMBER() OVER (PARTITION BY user_id, order_id, linked ORDER BY ts) AS rn
    FROM refund_rows r
) x;
