-- Step 2: roll the partials up to each snapshot (events strictly before it): the whole days
-- before the snapshot's day plus the snapshot's own cut. week_anchor is the week of the latest
-- event; weekly_i counts the events of week anchor - i (0..7), capped at 65535 as in Rust.

CREATE OR REPLACE TEMPORARY VIEW picked AS
SELECT s.snapshot, d.*
FROM snapshots s JOIN daily d ON d.cut = 0 AND d.day < s.day
UNION ALL
SELECT s.snapshot, d.*
FROM snapshots s JOIN daily d ON d.cut = s.snapshot;

-- The week of each user's latest event before each snapshot. (A grouped aggregate joined back
-- rather than a window over the partials: a window holds every partial row of a partition
-- with all its columns, which at 52M events ran DuckDB out of memory; a hash aggregate and a
-- join spill.)
CREATE OR REPLACE TEMPORARY VIEW anchors AS
SELECT snapshot, user_id, CAST(FLOOR(MAX(day) / 7) AS BIGINT) AS anchor
FROM picked
GROUP BY snapshot, user_id;

CREATE OR REPLACE TEMPORARY VIEW rolled AS
SELECT
    snapshot, user_id,
    MIN(first_seen) AS first_seen,
    MAX(last_order) AS last_order,
    MAX(last_activity) AS last_activity,
    SUM(orders) AS orders,
    SUM(CASE WHEN orders > 0 THEN 1 ELSE 0 END) AS order_days,
    SUM(spend) AS spend,
    SUM(views) AS views,
    SUM(watch_seconds) AS watch_seconds,
    SUM(comments) AS comments,
    SUM(likes) AS likes,
    SUM(shares) AS shares,
    SUM(follows) AS follows,
    SUM(gifts) AS gifts,
    BIT_OR(room_sketch) AS room_sketch,
    BIT_OR(category_sketch) AS category_sketch,
    anchor AS week_anchor,
    CAST(LEAST(SUM(CASE WHEN CAST(FLOOR(day / 7) AS BIGINT) = anchor - 0 THEN events ELSE 0 END), 65535) AS BIGINT) AS weekly_0,
    CAST(LEAST(SUM(CASE WHEN CAST(FLOOR(day / 7) AS BIGINT) = anchor - 1 THEN events ELSE 0 END), 65535) AS BIGINT) AS weekly_1,
    CAST(LEAST(SUM(CASE WHEN CAST(FLOOR(day / 7) AS BIGINT) = anchor - 2 THEN events ELSE 0 END), 65535) AS BIGINT) AS weekly_2,
    CAST(LEAST(SUM(CASE WHEN CAST(FLOOR(day / 7) AS BIGINT) = anchor - 3 THEN events ELSE 0 END), 65535) AS BIGINT) AS weekly_3,
    CAST(LEAST(SUM(CASE WHEN CAST(FLOOR(day / 7) AS BIGINT) = anchor - 4 THEN events ELSE 0 END), 65535) AS BIGINT) AS weekly_4,
    CAST(LEAST(SUM(CASE WHEN CAST(FLOOR(day / 7) AS BIGINT) = anchor - 5 THEN events ELSE 0 END), 65535) AS BIGINT) AS weekly_5,
    CAST(LEAST(SUM(CASE WHEN CAST(FLOOR(day / 7) AS BIGINT) = anchor - 6 THEN events ELSE 0 END), 65535) AS BIGINT) AS weekly_6,
    CAST(LEAST(SUM(CASE WHEN CAST(FLOOR(day / 7) AS BIGINT) = anchor - 7 THEN events ELSE 0 END), 65535) AS BIGINT) AS weekly_7,
    SUM(refunds) AS refunds,
    SUM(refunded) AS refunded,
    SUM(orders_refunded) AS orders_refunded,
    SUM(linked_refunds) AS linked_refunds,
    SUM(orphan_refunds) AS orphan_refunds
FROM picked
JOIN anchors USING (snapshot, user_id)
GROUP BY snapshot, user_id, anchor;

-- The label windows: orders and events in [snapshot, snapshot + horizon_days).
CREATE OR REPLACE TEMPORARY VIEW labels AS
SELECT s.snapshot, e.user_id,
       SUM(CASE WHEN e.kind = 'order' THEN 1 ELSE 0 END) AS label_orders,
       COUNT(*) AS label_events
FROM ev e
JOIN snapshots s ON e.ts >= s.snapshot AND e.ts < s.snapshot + s.horizon_days * 86400
GROUP BY s.snapshot, e.user_id;

-- Every user of the inputs at every snapshot (as `tiering features` writes them).
CREATE OR REPLACE TEMPORARY VIEW all_users AS
SELECT user_id FROM ev
UNION
SELECT user_id FROM users;

-- The aggregates table, schema version 3 (sql/README.md).
CREATE OR REPLACE TEMPORARY VIEW aggregates AS
SELECT
    u.user_id AS user_id,
    CAST(3 AS BIGINT) AS schema_version,
    CAST(s.snapshot AS BIGINT) AS snapshot,
    CAST(s.horizon_days AS BIGINT) AS horizon_days,
    CAST(r.registered_at AS BIGINT) AS registered_at,
    CAST(g.first_seen AS BIGINT) AS first_seen,
    CAST(g.last_order AS BIGINT) AS last_order,
    CAST(g.last_activity AS BIGINT) AS last_activity,
    CAST(COALESCE(g.orders, 0) AS BIGINT) AS orders,
    CAST(COALESCE(g.order_days, 0) AS BIGINT) AS order_days,
    CAST(COALESCE(g.views, 0) AS BIGINT) AS views,
    CAST(COALESCE(g.watch_seconds, 0) AS BIGINT) AS watch_seconds,
    CAST(COALESCE(g.comments, 0) AS BIGINT) AS comments,
    CAST(COALESCE(g.likes, 0) AS BIGINT) AS likes,
    CAST(COALESCE(g.shares, 0) AS BIGINT) AS shares,
    CAST(COALESCE(g.follows, 0) AS BIGINT) AS follows,
    CAST(COALESCE(g.gifts, 0) AS BIGINT) AS gifts,
    CAST(COALESCE(g.room_sketch, 0) AS BIGINT) AS room_sketch,
    CAST(COALESCE(g.category_sketch, 0) AS BIGINT) AS category_sketch,
    CAST(g.week_anchor AS BIGINT) AS week_anchor,
    CAST(COALESCE(g.weekly_0, 0) AS BIGINT) AS weekly_0,
    CAST(COALESCE(g.weekly_1, 0) AS BIGINT) AS weekly_1,
    CAST(COALESCE(g.weekly_2, 0) AS BIGINT) AS weekly_2,
    CAST(COALESCE(g.weekly_3, 0) AS BIGINT) AS weekly_3,
    CAST(COALESCE(g.weekly_4, 0) AS BIGINT) AS weekly_4,
    CAST(COALESCE(g.weekly_5, 0) AS BIGINT) AS weekly_5,
    CAST(COALESCE(g.weekly_6, 0) AS BIGINT) AS weekly_6,
    CAST(COALESCE(g.weekly_7, 0) AS BIGINT) AS weekly_7,
    CAST(COALESCE(g.refunds, 0) AS BIGINT) AS refunds,
    CAST(COALESCE(g.orders_refunded, 0) AS BIGINT) AS orders_refunded,
    CAST(COALESCE(g.linked_refunds, 0) AS BIGINT) AS linked_refunds,
    CAST(COALESCE(g.orphan_refunds, 0) AS BIGINT) AS orphan_refunds,
    CAST(COALESCE(l.label_orders, 0) AS BIGINT) AS label_orders,
    CAST(COALESCE(l.label_events, 0) AS BIGINT) AS label_events,
    CAST(COALESCE(g.spend, 0.0) AS DOUBLE) AS spend,
    CAST(COALESCE(g.refunded, 0.0) AS DOUBLE) AS refunded,
    CAST(t.interest_category_0 AS BIGINT) AS interest_category_0,
    CAST(t.interest_category_1 AS BIGINT) AS interest_category_1,
    CAST(t.interest_category_2 AS BIGINT) AS interest_category_2,
    CAST(t.interest_category_3 AS BIGINT) AS interest_category_3,
    CAST(COALESCE(m.channels_used, 0) AS BIGINT) AS channels_used,
    CAST(COALESCE(m.channel_slot_0, 0) AS BIGINT) AS channel_slot_0,
    CAST(COALESCE(m.channel_slot_1, 0) AS BIGINT) AS channel_slot_1,
    CAST(COALESCE(m.channel_events_0, 0) AS BIGINT) AS channel_events_0,
    CAST(COALESCE(m.channel_events_1, 0) AS BIGINT) AS channel_events_1,
    CAST(COALESCE(m.channel_events_rest, 0) AS BIGINT) AS channel_events_rest,
    CAST(COALESCE(m.channel_cents_0, 0) AS BIGINT) AS channel_cents_0,
    CAST(COALESCE(m.channel_cents_1, 0) AS BIGINT) AS channel_cents_1,
    CAST(COALESCE(m.channel_cents_rest, 0) AS BIGINT) AS channel_cents_rest,
    CAST(t.interest_level_0 AS DOUBLE) AS interest_level_0,
    CAST(t.interest_level_1 AS DOUBLE) AS interest_level_1,
    CAST(t.interest_level_2 AS DOUBLE) AS interest_level_2,
    CAST(t.interest_level_3 AS DOUBLE) AS interest_level_3,
    CAST(f.first_order_day AS BIGINT) AS first_order_day,
    CAST(COALESCE(f.first_day_cents, 0) AS BIGINT) AS first_day_cents,
    CAST(o.room_0 AS BIGINT) AS room_0,
    CAST(o.room_1 AS BIGINT) AS room_1,
    CAST(o.room_level_0 AS DOUBLE) AS room_level_0,
    CAST(o.room_level_1 AS DOUBLE) AS room_level_1
FROM all_users u
CROSS JOIN snapshots s
LEFT JOIN users r ON r.user_id = u.user_id
LEFT JOIN rolled g ON g.user_id = u.user_id AND g.snapshot = s.snapshot
LEFT JOIN labels l ON l.user_id = u.user_id AND l.snapshot = s.snapshot
LEFT JOIN interest_top t ON t.user_id = u.user_id AND t.snapshot = s.snapshot
LEFT JOIN channel_mix m ON m.user_id = u.user_id AND m.snapshot = s.snapshot
LEFT JOIN first_orders f ON f.user_id = u.user_id AND f.snapshot = s.snapshot
LEFT JOIN room_top o ON o.user_id = u.user_id AND o.snapshot = s.snapshot;
