//! The Redis ranking (used with the Redis state): the ranking lives in Redis, so every replica
//! pages the same versions and a page token from one replica continues on any other.
//!
//! # Layout: multi-version rows in one sorted set per generation
//!
//! A *generation* is one full build (random id `G`, its `as_of` and model version). Its keys:
//!
//! - `{rank}:z:G` — a sorted set with one member per *row*: `<user>\0<seq>` scored by the
//!   ordering's value (`-probability`, so Redis's ascending order is probability descending,
//!   and equal scores order by member bytes: by user id ascending, as the memory ranking does;
//!   user ids never contain NUL, the request layer refuses control characters);
//! - `{rank}:zv:G` — the same rows scored by `-value_at_risk`: the value-at-risk ordering
//!   ([`Order::ValueAtRiskDescending`]); a generation written by a server without it has no
//!   such set, and its value-ordered pages are empty until the next build;
//! - `{rank}:u:G` — a hash, user → the user's rows, `seq=hex(postcard(Score)),...` in
//!   ascending `seq` (the figures a page shows, read in the same script);
//! - `{rank}:g:G` — a hash: `seq` (the newest sequence number), `floor` (the oldest version
//!   still whole), `as_of`, `model`;
//! - `{rank}:gc:G` — superseded rows scored by the time (ms) they were superseded.
//!
//! `{rank}:meta` names the current generation (`gen`, `as_of`, `model`) and the one being built
//! (`building`). A version is `(G, V)` ([`VersionId`] `{ epoch: G, seq: V }`): a row of `user`
//! created at `c` is visible in `V` iff it is the user's newest row with `c ≤ V`. A full build
//! writes every row at `seq` 0; a re-rank (a Lua script, O(log n) per user) takes the next `seq`
//! and appends a row (unchanged figures add nothing). So versions are immutable while re-ranking
//! is incremental, and a first page simply reads the newest `seq`: nothing is copied per
//! publication (a `COPY` of a 1M-member set blocks Redis ~1.9 s).
//!
//! A page is one `EVAL` (see [`PAGE_SCRIPT`]): from the cursor (the token's last user, found by
//! its row visible in `V` and `ZRANK`, O(log n)) it walks the set by index, skips rows not
//! visible in `V`, stops at the probability floor, at the page size or at a scan budget, and
//! returns the visible rows with the last row scanned as a continuation; the filters are then
//! applied in Rust ([`super::matches`], the same test as the memory ranking), calling again
//! until the page is full.
//!
//! # Maintenance and the lease
//!
//! One replica at a time holds `{rank}:lease` (`SET NX PX`, renewed every third of its life;
//! a replica that dies or loses Redis lets it expire and another takes it). The holder:
//! rebuilds (a new generation written in pipelined chunks under a TTL, then switched current in
//! one script, the old generation's keys then expire after `page_token_max_age_secs`) when no
//! generation exists, when its model differs from the generation's, and every
//! `ranking_rebuild_secs`; drains [`RANKING_DIRTY_KEY`] (users the Kafka aggregator applied
//! events to) and re-ranks them; and garbage-collects superseded rows older than the token max
//! age, raising the generation's `floor` (a token pinning a version below it is ABORTED). Every
//! replica's RecordEvents re-ranks the users it applied directly. Users re-ranked while a build
//! runs are also recorded in `{rank}:p:G` and re-ranked into the new generation after the
//! switch.
//!
//! # Models during a rolling deploy
//!
//! A generation's rows are scored with one model at its `as_of`; a page carries that model's
//! version. A replica whose live model differs from the current generation's does not re-rank
//! into it (it marks the users dirty for the holder) and answers pages with UNAVAILABLE
//! ([`RankingError::OtherModel`]: retry, another replica or after the rebuild answers); the
//! lease holder rebuilds as soon as its own model differs, so once the holder runs the new
//! model the ranking follows within one build.
//!
//! # Cost
//!
//! Memory: one sorted-set entry and one hash field (the figures, 96 hex digits) per user and
//! generation: 283 bytes per user measured (`INFO memory`, 100k users with 11-byte ids, Redis
//! 7.0), plus one row (~100 bytes) per re-rank kept for the token max age; during a rebuild two
//! generations coexist. Every key shares the hash tag `{rank}`, so on a Cluster the whole
//! ranking lives on one node (one slot): size that node for two generations (about 0.6 GB per
//! million users, 6 GB per 10M) on top of its share of user keys, and expect the page and
//! re-rank scripts to load that node only (a page of 1,000 is one script run of ~1,000 `HGET`s).

use super::{matches, RankedPage, Ranking, RankingBackend, RankingError, RankingSettings};
use crate::features::Timestamp;
use crate::model::Score;
use crate::serve::at_risk::AtRiskQuery;
use crate::serve::config::Clock;
use crate::serve::page_token::{Order, VersionId};
use crate::serve::slot::{LiveModel, ModelSlot};
use crate::serve::state::redis::{RedisState, RANKING_DIRTY_KEY};
use crate::serve::state::{StateBackend, StateError, UserState};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Names the current generation and the one being built.
pub const META_KEY: &str = "{rank}:meta";
/// The maintenance lease.
pub const LEASE_KEY: &str = "{rank}:lease";
/// How long a lease lives unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// Rows a page script scans at most per call.
const SCAN_BUDGET: usize = 20_000;
/// Users per re-rank script call and per build pipeline.
const CHUNK: usize = 500;
/// How long a generation being built may live if its builder dies.
const BUILD_TTL: Duration = Duration::from_secs(3600);

fn key(kind: &str, gen: u64) -> String {
    format!("{{rank}}:{kind}:{gen:016x}")
}

/// A page: KEYS z, u, g; ARGV V ('' = newest), cursor kind ('', 'user', 'member'), cursor,
/// limit (visible rows), budget (rows scanned), max score. Answers `{'gone'}` or
/// `{'ok', V, as_of, model, last member scanned, done, user, data, user, data...}`.
pub const PAGE_SCRIPT: &str = r"
local info = redis.call('HMGET', KEYS[3], 'seq', 'floor', 'as_of', 'model')
if not info[1] then return {'gone'} end
local newest = tonumber(info[1])
local V = tonumber(ARGV[1]) or newest
if V > newest or V < tonumber(info[2] or '0') then return {'gone'} end
local function visible(user)
  local recs = redis.call('HGET', KEYS[2], user)
  if not recs then return nil, nil end
  local seq, data = nil, nil
  for s, d in string.gmatch(recs, '(%d+)=(%x*)') do
    if tonumber(s) <= V then seq, data = s, d else break end
  end
  return seq, data
end
local idx = 0
if ARGV[2] == 'user' then
  local seq = visible(ARGV[3])
  if not seq then return {'gone'} end
  local r = redis.call('ZRANK', KEYS[1], ARGV[3] .. '\0' .. seq)
  if not r then return {'gone'} end
  idx = r + 1
elseif ARGV[2] == 'member' then
  local r = redis.call('ZRANK', KEYS[1], ARGV[3])
  if not r then return {'gone'} end
  idx = r + 1
end
local limit, budget, maxs = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {'ok', tostring(V), info[3], info[4], '', '0'}
local found, scanned, done = 0, 0, false
while found < limit and scanned < budget and not done do
  local batch = redis.call('ZRANGE', KEYS[1], idx, idx + 255, 'WITHSCORES')
  if #batch == 0 then done = true break end
  for j = 1, #batch, 2 do
    local m = batch[j]
    if tonumber(batch[j + 1]) > maxs then done = true break end
    scanned = scanned + 1
    idx = idx + 1
    out[5] = m
    local a = string.find(m, '\0', 1, true)
    local user, c = string.sub(m, 1, a - 1), string.sub(m, a + 1)
    local seq, data = visible(user)
    if seq == c then
      out[#out + 1] = user
      out[#out + 1] = data
      found = found + 1
    end
    if found >= limit or scanned >= budget then break end
  end
end
if done then out[6] = '1' end
return out
";

/// Re-ranks users in the current generation: KEYS meta, z, u, g, gc, pending, zv; ARGV gen,
/// building ('' none), now (ms), then (user, score, value score, data) quadruples. Answers -1 when the
/// generation or the build changed since the caller read them, else the rows added.
pub const RERANK_SCRIPT: &str = r"
local m = redis.call('HMGET', KEYS[1], 'gen', 'building')
if m[1] ~= ARGV[1] or (m[2] or '') ~= ARGV[2] then return -1 end
local n = 0
for i = 4, #ARGV, 4 do
  local user, score, vscore, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local recs = redis.call('HGET', KEYS[3], user)
  local last, lastdata = nil, nil
  if recs then
    for s, d in string.gmatch(recs, '(%d+)=(%x*)') do last, lastdata = s, d end
  end
  if lastdata ~= data then
    local seq = redis.call('HINCRBY', KEYS[4], 'seq', 1)
    redis.call('ZADD', KEYS[2], score, user .. '\0' .. seq)
    redis.call('ZADD', KEYS[7], vscore, user .. '\0' .. seq)
    local rec = seq .. '=' .. data
    if recs then rec = recs .. ',' .. rec end
    redis.call('HSET', KEYS[3], user, rec)
    if last then redis.call('ZADD', KEYS[5], ARGV[3], user .. '\0' .. last) end
    n = n + 1
  end
  if ARGV[2] ~= '' then redis.call('SADD', KEYS[6], user) end
end
return n
";

/// Removes rows superseded before a cutoff: KEYS z, u, g, gc, zv; ARGV cutoff (ms), most rows.
/// Raises `floor` to the newest version that no longer sees a removed row.
pub const GC_SCRIPT: &str = r"
local olds = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local floor = tonumber(redis.call('HGET', KEYS[3], 'floor') or '0')
for _, m in ipairs(olds) do
  local a = string.find(m, '\0', 1, true)
  local user, c = string.sub(m, 1, a - 1), string.sub(m, a + 1)
  local recs = redis.call('HGET', KEYS[2], user)
  if recs then
    local keep, hit, nextseq = {}, false, nil
    for s, d in string.gmatch(recs, '(%d+)=(%x*)') do
      if hit and not nextseq then nextseq = tonumber(s) end
      if s == c then hit = true else keep[#keep + 1] = s .. '=' .. d end
    end
    if nextseq and nextseq > floor then floor = nextseq end
    if #keep > 0 then redis.call('HSET', KEYS[2], user, table.concat(keep, ',')) end
  end
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZREM', KEYS[5], m)
  redis.call('ZREM', KEYS[4], m)
end
redis.call('HSET', KEYS[3], 'floor', floor)
return #olds
";

/// Makes a built generation current: KEYS meta, new z, u, g, zv, pending, then the old
/// generation's z, u, g, gc, zv (absent when none); ARGV gen, as_of, model, old keys' TTL (ms).
const SWITCH_SCRIPT: &str = r"
for i = 2, 5 do redis.call('PERSIST', KEYS[i]) end
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'as_of', ARGV[2], 'model', ARGV[3])
redis.call('HDEL', KEYS[1], 'building')
for i = 7, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return 1
";

/// Renews the lease if this replica holds it: KEYS lease; ARGV id, ttl (ms).
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// `EVAL` of `script` with `keys` and `args`.
fn eval(script: &str, keys: &[String], args: &[String]) -> ::redis::Cmd {
    let mut cmd = ::redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len());
    for k in keys {
        cmd.arg(k);
    }
    for a in args {
        cmd.arg(a);
    }
    cmd
}

/// The current generation, from [`META_KEY`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// (id, as_of, model) of the current generation.
    pub current: Option<(u64, Timestamp, String)>,
    /// The generation being built.
    pub building: Option<u64>,
}

impl Meta {
    fn from_fields(fields: &[(String, String)]) -> Meta {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let current = match (get("gen"), get("as_of"), get("model")) {
            (Some(g), Some(a), Some(m)) => match (g.parse(), a.parse()) {
                (Ok(g), Ok(a)) => Some((g, a, m.to_string())),
                _ => None,
            },
            _ => None,
        };
        Meta {
            current,
            building: get("building").and_then(|b| b.parse().ok()),
        }
    }
}

/// The ordering's value as a sorted-set score (ascending = the value descending).
fn zscore(s: &Score, order: Order) -> String {
    format!("{}", -order.value(s))
}

/// The sorted set of `order` in generation `gen`.
fn zkey(order: Order, gen: u64) -> String {
    match order {
        Order::ChurnDescending => key("z", gen),
        Order::ValueAtRiskDescending => key("zv", gen),
    }
}

/// A row's figures are finite (what a sorted-set score must be).
fn rankable(s: &Score) -> bool {
    Order::ALL.iter().all(|o| o.value(s).is_finite())
}

fn encode(s: &Score) -> String {
    hex::encode(postcard::to_stdvec(s).unwrap_or_default())
}

/// A row's figures; rows written before the value figures existed (a generation of an older
/// server during a rolling deploy) decode with those figures at 0.
fn decode(data: &str) -> Option<Score> {
    let bytes = hex::decode(data).ok()?;
    if let Ok(s) = postcard::from_bytes::<Score>(&bytes) {
        return Some(s);
    }
    if let Ok(s) = postcard::from_bytes::<ScoreV1>(&bytes) {
        return Some(s.into_score());
    }
    postcard::from_bytes::<ScoreV0>(&bytes)
        .ok()
        .map(ScoreV0::into_score)
}

/// [`Score`] as rows were encoded before rooms (four category slots, no rooms): read with its
/// three highest categories and no rooms.
#[derive(serde::Deserialize)]
struct ScoreV1 {
    v0: ScoreV0,
    clv: f64,
    expected_orders: f64,
    p_alive: f64,
    value_at_risk: f64,
    interests: crate::features::TopK<{ crate::features::interests::INTEREST_SLOTS_V3 }>,
    channels: crate::features::ChannelShares,
}

impl ScoreV1 {
    fn into_score(self) -> Score {
        Score {
            clv: self.clv,
            expected_orders: self.expected_orders,
            p_alive: self.p_alive,
            value_at_risk: self.value_at_risk,
            interests: self.interests.resized(),
            channels: self.channels,
            ..self.v0.into_score()
        }
    }
}

/// [`Score`] as rows were encoded before `clv`, `expected_orders`, `p_alive` and
/// `value_at_risk` (postcard is positional: the same fields in the same order).
#[derive(serde::Deserialize)]
struct ScoreV0 {
    tier: u16,
    churn_probability: f64,
    risk_level: crate::model::RiskLevel,
    risk_percentile: f64,
    rfm_segment: crate::features::RfmSegment,
    lifecycle_stage: crate::features::LifecycleStage,
    factors: [crate::model::scorer::Factor; crate::model::scorer::TOP_FACTORS],
    n_factors: u8,
}

impl ScoreV0 {
    fn into_score(self) -> Score {
        Score {
            tier: self.tier,
            churn_probability: self.churn_probability,
            risk_level: self.risk_level,
            risk_percentile: self.risk_percentile,
            rfm_segment: self.rfm_segment,
            lifecycle_stage: self.lifecycle_stage,
            factors: self.factors,
            n_factors: self.n_factors,
            ..Score::default()
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// See the module docs.
pub struct RedisRanking {
    state: Arc<StateBackend>,
    slot: Arc<ModelSlot>,
    clock: Clock,
    settings: RankingSettings,
    /// This replica's lease value.
    id: String,
    /// One build at a time in this process.
    building: tokio::sync::Mutex<()>,
    /// When this process last finished a build (for the schedule).
    last_build: std::sync::Mutex<Option<Instant>>,
}

/// One script answer of a page.
struct Chunk {
    version: u64,
    as_of: Timestamp,
    model: String,
    last: String,
    done: bool,
    rows: Vec<(String, String)>,
}

impl RedisRanking {
    /// `None` unless `state` is the Redis state.
    pub fn new(
        state: Arc<StateBackend>,
        slot: Arc<ModelSlot>,
        clock: Clock,
        settings: RankingSettings,
    ) -> Option<Self> {
        if !matches!(&*state, StateBackend::Redis(_)) {
            return None;
        }
        Some(RedisRanking {
            state,
            slot,
            clock,
            settings,
            id: format!("{:016x}", rand::random::<u64>()),
            building: tokio::sync::Mutex::new(()),
            last_build: std::sync::Mutex::new(None),
        })
    }

    fn redis(&self) -> Result<&RedisState, RankingError> {
        match &*self.state {
            StateBackend::Redis(r) => Ok(r),
            // `new` refuses any other state.
            _ => Err(RankingError::NotBuilt),
        }
    }

    fn gone(&self) -> RankingError {
        RankingError::VersionGone {
            max_age_secs: self.settings.max_age.as_secs(),
            max_versions: self.settings.max_versions,
        }
    }

    /// The current and building generations.
    pub async fn meta(&self) -> Result<Meta, RankingError> {
        let mut cmd = ::redis::cmd("HGETALL");
        cmd.arg(META_KEY);
        let fields: Vec<(String, String)> = self.redis()?.run("rank_meta", &cmd).await?;
        Ok(Meta::from_fields(&fields))
    }

    /// Takes or renews the lease; true while this replica holds it.
    pub async fn hold_lease(&self) -> Result<bool, RankingError> {
        let ttl = LEASE_TTL.as_millis().to_string();
        let r = self.redis()?;
        let renewed: i64 = r
            .run(
                "rank_lease",
                &eval(
                    RENEW_SCRIPT,
                    &[LEASE_KEY.to_string()],
                    &[self.id.clone(), ttl.clone()],
                ),
            )
            .await?;
        if renewed == 1 {
            return Ok(true);
        }
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(LEASE_KEY)
            .arg(&self.id)
            .arg("NX")
            .arg("PX")
            .arg(&ttl);
        let set: Option<String> = r.run("rank_lease", &cmd).await?;
        Ok(set.is_some())
    }

    /// One page-script call.
    async fn call_page(
        &self,
        gen: u64,
        v: Option<u64>,
        cursor: (&str, &str),
        limit: usize,
        order_floor: (Order, f64),
    ) -> Result<Chunk, RankingError> {
        let (order, max_score) = order_floor;
        let keys = [zkey(order, gen), key("u", gen), key("g", gen)];
        let args = [
            v.map(|v| v.to_string()).unwrap_or_default(),
            cursor.0.to_string(),
            cursor.1.to_string(),
            limit.to_string(),
            SCAN_BUDGET.to_string(),
            format!("{max_score}"),
        ];
        let reply: Vec<String> = self
            .redis()?
            .run("rank_page", &eval(PAGE_SCRIPT, &keys, &args))
            .await?;
        let bad = || {
            RankingError::State(StateError::RedisMarker {
                what: "ranking page".into(),
                message: "unexpected script answer".into(),
            })
        };
        match reply.first().map(String::as_str) {
            Some("ok") if reply.len() >= 6 && reply.len().is_multiple_of(2) => {}
            Some("gone") => return Err(self.gone()),
            _ => return Err(bad()),
        }
        let rows = reply[6..]
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        Ok(Chunk {
            version: reply[1].parse().map_err(|_| bad())?,
            as_of: reply[2].parse().map_err(|_| bad())?,
            model: reply[3].clone(),
            last: reply[4].clone(),
            done: reply[5] == "1",
            rows,
        })
    }

    /// The current generation, waiting (until `deadline`, else 10 s) for a first build.
    async fn current(&self, deadline: Option<Instant>) -> Result<u64, RankingError> {
        let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
        loop {
            if let Some((gen, _, _)) = self.meta().await?.current {
                return Ok(gen);
            }
            if Instant::now() + Duration::from_millis(50) >= until {
                return Err(RankingError::NotBuilt);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn read_page(
        &self,
        q: &AtRiskQuery,
        deadline: Option<Instant>,
    ) -> Result<RankedPage, RankingError> {
        let live = self.slot.get().map_err(|_| RankingError::NoModel)?;
        let (gen, mut v) = match q.pinned {
            Some(id) => (id.epoch, Some(id.seq)),
            None => (self.current(deadline).await?, None),
        };
        let mut cursor: (String, String) = match &q.after {
            Some((_, user)) => ("user".into(), user.clone()),
            None => (String::new(), String::new()),
        };
        let mut users = Vec::with_capacity(q.limit.min(4096));
        let mut more = false;
        let mut meta = None;
        loop {
            let want = q.limit + 1 - users.len();
            // The probability floor stops the walk in the churn ordering; in the others it is a
            // filter ([`matches`]).
            let floor = match q.order {
                Order::ChurnDescending => -q.min_probability,
                Order::ValueAtRiskDescending => f64::MAX,
            };
            let c = self
                .call_page(gen, v, (&cursor.0, &cursor.1), want, (q.order, floor))
                .await?;
            v = Some(c.version);
            meta.get_or_insert((c.as_of, c.model.clone()));
            for (user, data) in c.rows {
                let s = decode(&data).ok_or_else(|| {
                    RankingError::State(StateError::RedisMarker {
                        what: "ranking row".into(),
                        message: "undecodable figures".into(),
                    })
                })?;
                if !matches(q, &s) {
                    continue;
                }
                if users.len() == q.limit {
                    more = true;
                    break;
                }
                users.push((user, s));
            }
            if more || c.done || c.last.is_empty() {
                break;
            }
            cursor = ("member".into(), c.last);
        }
        let (as_of, model) = meta.unwrap_or_default();
        if model != live.version {
            return Err(RankingError::OtherModel {
                ranking: model,
                serving: live.version.clone(),
            });
        }
        Ok(RankedPage {
            version: VersionId {
                epoch: gen,
                seq: v.unwrap_or(0),
            },
            as_of,
            model: live,
            users,
            more,
        })
    }

    /// Re-ranks `users` into the current generation with `model`; users this replica cannot
    /// score (its model is not the generation's) are marked for the lease holder.
    pub async fn rerank(&self, users: &[String]) -> Result<(), RankingError> {
        let Ok(model) = self.slot.get() else {
            return Ok(());
        };
        for chunk in users.chunks(CHUNK) {
            for _attempt in 0..3 {
                let meta = self.meta().await?;
                let Some((gen, as_of, version)) = meta.current.clone() else {
                    return Ok(());
                };
                if version != model.version {
                    self.redis()?.mark_ranking_dirty(chunk).await;
                    break;
                }
                if self.rerank_chunk(&model, chunk, &meta, gen, as_of).await? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// One re-rank script call; false if the generation or build changed meanwhile.
    async fn rerank_chunk(
        &self,
        model: &LiveModel,
        users: &[String],
        meta: &Meta,
        gen: u64,
        as_of: Timestamp,
    ) -> Result<bool, RankingError> {
        let aggs = self.state.get_many(users).await?;
        let building = meta.building.map(|b| b.to_string()).unwrap_or_default();
        let keys = [
            META_KEY.to_string(),
            key("z", gen),
            key("u", gen),
            key("g", gen),
            key("gc", gen),
            key("p", meta.building.unwrap_or(gen)),
            key("zv", gen),
        ];
        let mut args = vec![gen.to_string(), building, now_ms().to_string()];
        for (user, agg) in users.iter().zip(aggs) {
            let Some(agg) = agg else { continue };
            let s = model.scorer.score(&agg, as_of);
            if !rankable(&s) || user.contains('\0') {
                continue;
            }
            args.extend([
                user.clone(),
                zscore(&s, Order::ChurnDescending),
                zscore(&s, Order::ValueAtRiskDescending),
                encode(&s),
            ]);
        }
        let n: i64 = self
            .redis()?
            .run("rank_rerank", &eval(RERANK_SCRIPT, &keys, &args))
            .await?;
        Ok(n >= 0)
    }

    /// Drains the users the aggregator marked and re-ranks them (lease holder).
    pub async fn drain_dirty(&self) -> Result<usize, RankingError> {
        let mut total = 0;
        for _ in 0..100 {
            let mut cmd = ::redis::cmd("SPOP");
            cmd.arg(RANKING_DIRTY_KEY).arg(CHUNK);
            let users: Vec<String> = self.redis()?.run("rank_dirty", &cmd).await?;
            if users.is_empty() {
                break;
            }
            total += users.len();
            self.rerank(&users).await?;
        }
        Ok(total)
    }

    /// Removes rows superseded longer ago than the token max age (lease holder).
    pub async fn collect_garbage(&self) -> Result<(), RankingError> {
        let Some((gen, _, _)) = self.meta().await?.current else {
            return Ok(());
        };
        let keys = [
            key("z", gen),
            key("u", gen),
            key("g", gen),
            key("gc", gen),
            key("zv", gen),
        ];
        let cutoff = now_ms().saturating_sub(self.settings.max_age.as_millis() as u64);
        let args = [cutoff.to_string(), "10000".to_string()];
        let _: i64 = self
            .redis()?
            .run("rank_gc", &eval(GC_SCRIPT, &keys, &args))
            .await?;
        Ok(())
    }

    /// True when the lease holder should build: no generation, another model, or the schedule.
    async fn due(&self, model: &LiveModel) -> Result<bool, RankingError> {
        let meta = self.meta().await?;
        let Some((_, _, version)) = meta.current else {
            return Ok(true);
        };
        if version != model.version {
            return Ok(true);
        }
        let last = *self
            .last_build
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(last.is_none_or(|t| t.elapsed() >= self.settings.rebuild_every))
    }

    /// Builds a new generation from the state and makes it current.
    async fn build(&self, model: Arc<LiveModel>) -> Result<(), RankingError> {
        let _one = self.building.lock().await;
        let r = self.redis()?;
        let gen = rand::random::<u64>() >> 1;
        let as_of = self.clock.now();
        let old = self.meta().await?.current.map(|c| c.0);
        let mut cmd = ::redis::cmd("HSET");
        cmd.arg(META_KEY).arg("building").arg(gen.to_string());
        r.run::<i64>("rank_build", &cmd).await?;
        let state = self.state.clone();
        let m = model.clone();
        let scored = tokio::task::spawn_blocking(move || {
            state.scan(|users| {
                users
                    .map(|(id, agg)| (id.to_string(), m.scorer.score(agg, as_of)))
                    .collect::<Vec<_>>()
            })
        })
        .await
        .map_err(RankingError::Task)??;
        self.write_generation(gen, as_of, &model, scored.into_iter().flatten())
            .await?;
        self.switch(gen, as_of, &model, old).await?;
        *self
            .last_build
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        self.drain_pending(gen).await
    }

    /// Writes a generation's rows (all at `seq` 0) in pipelined chunks, under a TTL.
    async fn write_generation(
        &self,
        gen: u64,
        as_of: Timestamp,
        model: &LiveModel,
        rows: impl Iterator<Item = (String, Score)>,
    ) -> Result<(), RankingError> {
        let r = self.redis()?;
        let (z, u, g, p) = (key("z", gen), key("u", gen), key("g", gen), key("p", gen));
        let zv = key("zv", gen);
        let ttl = BUILD_TTL.as_millis() as u64;
        let mut head = ::redis::pipe();
        head.cmd("HSET")
            .arg(&g)
            .arg("seq")
            .arg(0)
            .arg("floor")
            .arg(0)
            .arg("as_of")
            .arg(as_of)
            .arg("model")
            .arg(&model.version)
            .ignore();
        head.cmd("PEXPIRE").arg(&g).arg(ttl).ignore();
        head.cmd("SADD").arg(&p).arg("").ignore();
        head.cmd("PEXPIRE").arg(&p).arg(ttl).ignore();
        r.run_pipeline::<()>("rank_build", &head).await?;
        let rows: Vec<(String, Score)> = rows
            .filter(|(id, s)| rankable(s) && !id.contains('\0'))
            .collect();
        for chunk in rows.chunks(CHUNK * 2) {
            let mut zadd = ::redis::cmd("ZADD");
            zadd.arg(&z);
            let mut zaddv = ::redis::cmd("ZADD");
            zaddv.arg(&zv);
            let mut hset = ::redis::cmd("HSET");
            hset.arg(&u);
            for (id, s) in chunk {
                let member = format!("{id}\u{0}0");
                zadd.arg(zscore(s, Order::ChurnDescending)).arg(&member);
                zaddv
                    .arg(zscore(s, Order::ValueAtRiskDescending))
                    .arg(member);
                hset.arg(id).arg(format!("0={}", encode(s)));
            }
            let mut pipe = ::redis::pipe();
            pipe.add_command(zadd).ignore();
            pipe.add_command(zaddv).ignore();
            pipe.add_command(hset).ignore();
            pipe.cmd("PEXPIRE").arg(&z).arg(ttl).ignore();
            pipe.cmd("PEXPIRE").arg(&zv).arg(ttl).ignore();
            pipe.cmd("PEXPIRE").arg(&u).arg(ttl).ignore();
            r.run_pipeline::<()>("rank_build", &pipe).await?;
        }
        Ok(())
    }

    /// Makes `gen` current; the old generation's keys expire after the token max age.
    async fn switch(
        &self,
        gen: u64,
        as_of: Timestamp,
        model: &LiveModel,
        old: Option<u64>,
    ) -> Result<(), RankingError> {
        let mut keys = vec![
            META_KEY.to_string(),
            key("z", gen),
            key("u", gen),
            key("g", gen),
            key("zv", gen),
            key("p", gen),
        ];
        if let Some(o) = old {
            keys.extend([
                key("z", o),
                key("u", o),
                key("g", o),
                key("gc", o),
                key("zv", o),
            ]);
        }
        let args = [
            gen.to_string(),
            as_of.to_string(),
            model.version.clone(),
            self.settings.max_age.as_millis().max(1).to_string(),
        ];
        let _: i64 = self
            .redis()?
            .run("rank_build", &eval(SWITCH_SCRIPT, &keys, &args))
            .await?;
        Ok(())
    }

    /// Re-ranks the users changed while `gen` was built.
    async fn drain_pending(&self, gen: u64) -> Result<(), RankingError> {
        let p = key("p", gen);
        loop {
            let mut cmd = ::redis::cmd("SPOP");
            cmd.arg(&p).arg(CHUNK);
            let users: Vec<String> = self.redis()?.run("rank_build", &cmd).await?;
            let users: Vec<String> = users.into_iter().filter(|u| !u.is_empty()).collect();
            if users.is_empty() {
                // The placeholder member may remain; the set expires with the build TTL.
                return Ok(());
            }
            self.rerank(&users).await?;
        }
    }

    /// One maintenance round: the lease, then (holding it) a build when due, the dirty users,
    /// and garbage collection.
    pub async fn maintain_once(&self) -> Result<bool, RankingError> {
        if !self.hold_lease().await? {
            return Ok(false);
        }
        let Ok(model) = self.slot.get() else {
            return Ok(true);
        };
        if self.due(&model).await? {
            let started = Instant::now();
            self.build(model).await?;
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "at-risk ranking rebuilt in Redis"
            );
        }
        self.drain_dirty().await?;
        self.collect_garbage().await?;
        Ok(true)
    }
}

impl Ranking for RedisRanking {
    async fn page(
        &self,
        q: &AtRiskQuery,
        deadline: Option<Instant>,
    ) -> Result<RankedPage, RankingError> {
        self.read_page(q, deadline).await
    }

    async fn users_changed(&self, users: Vec<String>) {
        if users.is_empty() {
            return;
        }
        if let Err(e) = self.rerank(&users).await {
            tracing::warn!(error = %e, users = users.len(), "re-ranking changed users in Redis failed; the next rebuild repairs the ranking");
            if let Ok(r) = self.redis() {
                r.mark_ranking_dirty(&users).await;
            }
        }
    }

    /// Builds now if this replica holds (or takes) the lease; otherwise the holder builds.
    async fn rebuild(&self) -> Result<(), RankingError> {
        if !self.hold_lease().await? {
            return Ok(());
        }
        let Ok(model) = self.slot.get() else {
            return Ok(());
        };
        self.build(model).await
    }
}

/// The Redis ranking's maintenance loop: a round every third of the lease's life and at once
/// after a model swap, until `stop` fires.
pub async fn maintain(
    ranking: Arc<RankingBackend>,
    slot: Arc<ModelSlot>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let RankingBackend::Redis(r) = &*ranking else {
        return;
    };
    let every = LEASE_TTL / 3;
    loop {
        match r.maintain_once().await {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "at-risk ranking maintenance in Redis failed"),
        }
        tokio::select! {
            _ = slot.swapped() => {}
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_fields_name_the_current_and_building_generations() {
        let f = |v: &[(&str, &str)]| {
            Meta::from_fields(
                &v.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(f(&[]), Meta::default());
        let m = f(&[
            ("gen", "7"),
            ("as_of", "100"),
            ("model", "v1"),
            ("building", "9"),
        ]);
        assert_eq!(m.current, Some((7, 100, "v1".to_string())));
        assert_eq!(m.building, Some(9));
        assert_eq!(
            f(&[("gen", "x"), ("as_of", "1"), ("model", "v")]).current,
            None
        );
    }

    #[test]
    fn scores_order_probability_descending_and_figures_round_trip() {
        let s = |p| Score {
            churn_probability: p,
            ..Score::default()
        };
        let a: f64 = zscore(&s(0.9), Order::ChurnDescending).parse().unwrap();
        let b: f64 = zscore(&s(0.1), Order::ChurnDescending).parse().unwrap();
        assert!(a < b, "higher probability sorts first");
        let x = s(0.123_456_789_012_345_67);
        assert_eq!(decode(&encode(&x)), Some(x));
        assert_eq!(decode("zz"), None);
        let v = |var| Score {
            value_at_risk: var,
            ..s(0.5)
        };
        let a: f64 = zscore(&v(90.0), Order::ValueAtRiskDescending)
            .parse()
            .unwrap();
        let b: f64 = zscore(&v(10.0), Order::ValueAtRiskDescending)
            .parse()
            .unwrap();
        assert!(a < b, "higher value at risk sorts first");
    }

    #[test]
    fn rows_written_before_the_value_figures_decode_with_those_figures_at_zero() {
        let full = Score {
            churn_probability: 0.7,
            tier: 3,
            clv: 12.5,
            expected_orders: 1.25,
            p_alive: 0.5,
            value_at_risk: 8.75,
            ..Score::default()
        };
        let bytes = postcard::to_stdvec(&full).unwrap();
        // postcard writes the four trailing f64 figures as 32 fixed bytes.
        let old = hex::encode(&bytes[..bytes.len() - 32]);
        let want = Score {
            clv: 0.0,
            expected_orders: 0.0,
            p_alive: 0.0,
            value_at_risk: 0.0,
            ..full
        };
        assert_eq!(decode(&old), Some(want));
    }

    /// A row of the previous layout (value figures, four category slots, no rooms) decodes
    /// with its figures, its three highest categories and no rooms.
    #[test]
    fn rows_written_before_rooms_decode_with_three_categories_and_no_rooms() {
        use crate::features::interests::INTEREST_SLOTS_V3;
        use crate::features::{Event, EventKind, TopK};
        #[derive(serde::Serialize)]
        struct Old {
            tier: u16,
            churn_probability: f64,
            risk_level: crate::model::RiskLevel,
            risk_percentile: f64,
            rfm_segment: crate::features::RfmSegment,
            lifecycle_stage: crate::features::LifecycleStage,
            factors: [crate::model::scorer::Factor; crate::model::scorer::TOP_FACTORS],
            n_factors: u8,
            clv: f64,
            expected_orders: f64,
            p_alive: f64,
            value_at_risk: f64,
            interests: TopK<INTEREST_SLOTS_V3>,
            channels: crate::features::ChannelShares,
        }
        let mut four = TopK::<INTEREST_SLOTS_V3>::default();
        for c in 1..=4u32 {
            let e = Event {
                ts: 1_700_000_000,
                kind: EventKind::ALL[c as usize],
                amount: 0.0,
                watch_seconds: 0,
                room: 0,
                category: c,
                order: 0,
                channel: 0,
            };
            four.record(c, &e);
        }
        let s = Score {
            churn_probability: 0.7,
            tier: 3,
            clv: 12.5,
            value_at_risk: 8.75,
            ..Score::default()
        };
        let old = Old {
            tier: s.tier,
            churn_probability: s.churn_probability,
            risk_level: s.risk_level,
            risk_percentile: s.risk_percentile,
            rfm_segment: s.rfm_segment,
            lifecycle_stage: s.lifecycle_stage,
            factors: s.factors,
            n_factors: s.n_factors,
            clv: s.clv,
            expected_orders: s.expected_orders,
            p_alive: s.p_alive,
            value_at_risk: s.value_at_risk,
            interests: four,
            channels: s.channels,
        };
        let got = decode(&hex::encode(postcard::to_stdvec(&old).unwrap())).unwrap();
        assert_eq!(got.interests.ranked(), four.ranked()[..3].to_vec());
        assert_eq!(
            Score {
                interests: Default::default(),
                ..got
            },
            s
        );
    }
}
