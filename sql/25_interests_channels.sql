-- Schema version 2's columns: the interests and the channel mix, with the same two steps
-- (daily partials, then the roll-up to each snapshot). Both merge exactly across days:
--
-- Interests (features::interests): per category, the forward-decayed score
-- S = sum(weight * 2^((ts - 2000-01-01) / 30 days)) over the events before the snapshot (a
-- SUM of doubles), level = log2(S); the N highest levels are kept (ties: smaller hash), N =
-- the Rust side's slots (`pos <= N` in interest_top, the one place; the table has 4 columns,
-- those beyond N are null). This is the exact profile. For a user with at most N categories
-- the Rust side holds the same exact map (levels rounded to f32 at each event: within 1e-3,
-- i.e. 0.07% of a score); with more, a weighted Space-Saving sketch whose held scores are
-- within 2^m of the true ones (m: its lowest level), checked by warehouse/compare.py.
--
-- Channels (features::channel): events and order cents per channel code, then the two
-- smallest non-live codes in slots 0 and 1 and the other non-live codes summed in `rest`,
-- `channels_used` = the bits of the codes seen. Integer sums: exact.

-- Each event's weight times its forward decay: the one definition both profiles sum (the
-- categories here, the rooms in 27_rooms_first_day.sql), as features::interests has one
-- `event_level` for both.
CREATE OR REPLACE TEMPORARY VIEW weighted_pieces AS
SELECT user_id, day, cut, category_hash, room_hash,
       CASE kind
           WHEN 'order' THEN CAST(10 AS DOUBLE)
           WHEN 'view' THEN CAST(1 AS DOUBLE)
               + CAST(LEAST(watch_seconds, 7200) AS DOUBLE) / CAST(600 AS DOUBLE)
           WHEN 'gift' THEN CAST(3 AS DOUBLE)
           WHEN 'comment' THEN CAST(2 AS DOUBLE)
           WHEN 'share' THEN CAST(2 AS DOUBLE)
           WHEN 'follow' THEN CAST(2 AS DOUBLE)
           WHEN 'like' THEN CAST(1 AS DOUBLE)
           ELSE CAST(0 AS DOUBLE) END
       * POWER(CAST(2 AS DOUBLE), CAST(ts - 946684800 AS DOUBLE) / CAST(2592000 AS DOUBLE)) AS score
FROM pieces
WHERE kind <> 'refund';

CREATE OR REPLACE TEMPORARY VIEW interest_daily AS
SELECT user_id, day, cut, category_hash, SUM(score) AS score
FROM weighted_pieces
WHERE category_hash <> 0
GROUP BY user_id, day, cut, category_hash;

CREATE OR REPLACE TEMPORARY VIEW interest_rolled AS
SELECT snapshot, user_id, category_hash, LOG2(SUM(score)) AS level
FROM (
    SELECT s.snapshot, d.user_id, d.category_hash, d.score
    FROM snapshots s JOIN interest_daily d ON d.cut = 0 AND d.day < s.day
    UNION ALL
    SELECT s.snapshot, d.user_id, d.category_hash, d.score
    FROM snapshots s JOIN interest_daily d ON d.cut = s.snapshot
) p
GROUP BY snapshot, user_id, category_hash;

CREATE OR REPLACE TEMPORARY VIEW interest_top AS
SELECT snapshot, user_id,
    MAX(CASE WHEN pos = 1 THEN category_hash END) AS interest_category_0,
    MAX(CASE WHEN pos = 2 THEN category_hash END) AS interest_category_1,
    MAX(CASE WHEN pos = 3 THEN category_hash END) AS interest_category_2,
    MAX(CASE WHEN pos = 4 THEN category_hash END) AS interest_category_3,
    MAX(CASE WHEN pos = 1 THEN level END) AS interest_level_0,
    MAX(CASE WHEN pos = 2 THEN level END) AS interest_level_1,
    MAX(CASE WHEN pos = 3 THEN level END) AS interest_level_2,
    MAX(CASE WHEN pos = 4 THEN level END) AS interest_level_3
FROM (
    SELECT r.*, ROW_NUMBER() OVER (PARTITION BY snapshot, user_id
                                   ORDER BY level DESC, category_hash) AS pos
    FROM interest_rolled r
) x
WHERE pos <= 3 -- the slots the Rust side holds (features::interests::INTEREST_SLOTS); at most 4 columns
GROUP BY snapshot, user_id;

CREATE OR REPLACE TEMPORARY VIEW channel_daily AS
SELECT user_id, day, cut, channel_code,
       COUNT(*) AS events,
       SUM(CASE WHEN kind = 'order'
                THEN CAST(GREATEST(ROUND(amount * CAST(100 AS DOUBLE)), CAST(0 AS DOUBLE)) AS BIGINT)
                ELSE CAST(0 AS BIGINT) END) AS cents
FROM pieces
GROUP BY user_id, day, cut, channel_code;

CREATE OR REPLACE TEMPORARY VIEW channel_rolled AS
SELECT snapshot, user_id, channel_code, SUM(events) AS events, SUM(cents) AS cents
FROM (
    SELECT s.snapshot, d.user_id, d.channel_code, d.events, d.cents
    FROM snapshots s JOIN channel_daily d ON d.cut = 0 AND d.day < s.day
    UNION ALL
    SELECT s.snapshot, d.user_id, d.channel_code, d.events, d.cents
    FROM snapshots s JOIN channel_daily d ON d.cut = s.snapshot
) p
GROUP BY snapshot, user_id, channel_code;

CREATE OR REPLACE TEMPORARY VIEW channel_mix AS
SELECT snapshot, user_id,
    SUM(CAST(POWER(CAST(2 AS DOUBLE), CAST(channel_code AS DOUBLE)) AS BIGINT)) AS channels_used,
    COALESCE(MAX(CASE WHEN pos = 1 THEN channel_code END), 0) AS channel_slot_0,
    COALESCE(MAX(CASE WHEN pos = 2 THEN channel_code END), 0) AS channel_slot_1,
    SUM(CASE WHEN pos = 1 THEN events ELSE 0 END) AS channel_events_0,
    SUM(CASE WHEN pos = 2 THEN events ELSE 0 END) AS channel_events_1,
    SUM(CASE WHEN pos > 2 THEN events ELSE 0 END) AS channel_events_rest,
    SUM(CASE WHEN pos = 1 THEN cents ELSE 0 END) AS channel_cents_0,
    SUM(CASE WHEN pos = 2 THEN cents ELSE 0 END) AS channel_cents_1,
    SUM(CASE WHEN pos > 2 THEN cents ELSE 0 END) AS channel_cents_rest
FROM (
    SELECT r.*,
           CASE WHEN channel_code = 1 THEN 0
                ELSE ROW_NUMBER() OVER (PARTITION BY snapshot, user_id,
                                                     CASE WHEN channel_code = 1 THEN 1 ELSE 0 END
                                        ORDER BY channel_code) END AS pos
    FROM channel_rolled r
) x
GROUP BY snapshot, user_id;
