//! The in-memory ranking (used with the embedded state): a persistent B-tree (`imbl::OrdMap`)
//! per ordering ([`Order::ALL`]), keyed by (the ordering's value descending, user id), holding
//! each user's [`Ranked`] score (one shared allocation for all the trees: each ordering holding
//! its own copy cost ~1 GB at 1M users); a hash index from user to current keys for O(log n)
//! re-ranking; and the published versions, each an O(1) clone of the trees with its `as_of` and
//! model. See the parent module for the design.
//!
//! A [`Ranked`] score is the [`Score`] without the user's top rooms and channel mix: neither is
//! an ordering or a filter, so a page reads them from the state when it is served (one batched
//! lookup for the page's users) instead of every user carrying 56 more bytes for as long as a
//! version lives. The interests stay: the category filter tests them during the walk.

use super::{matches, RankedPage, Ranking, RankingError, RankingSettings, VersionId};
use crate::features::{ChannelShares, Interests, LifecycleStage, RfmSegment, Timestamp};
use crate::model::scorer::{Factor, TOP_FACTORS};
use crate::model::{RiskLevel, Score, Scorer};
use crate::serve::at_risk::AtRiskQuery;
use crate::serve::config::Clock;
use crate::serve::page_token::Order;
use crate::serve::slot::{LiveModel, ModelSlot};
use crate::serve::state::{StateBackend, StateError, UserState};
use imbl::OrdMap;
use rayon::slice::ParallelSliceMut;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// What the ranking holds per user: [`Score`] less its rooms and channel mix (see the module
/// docs). 120 bytes against the score's 176; `a_ranked_score_is_the_score_without_rooms_and_channels`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ranked {
    tier: u16,
    churn_probability: f64,
    risk_level: RiskLevel,
    risk_percentile: f64,
    rfm_segment: RfmSegment,
    lifecycle_stage: LifecycleStage,
    factors: [Factor; TOP_FACTORS],
    n_factors: u8,
    clv: f64,
    expected_orders: f64,
    p_alive: f64,
    value_at_risk: f64,
    interests: Interests,
}

impl From<&Score> for Ranked {
    fn from(s: &Score) -> Self {
        Ranked {
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
            interests: s.interests,
        }
    }
}

impl Ranked {
    /// The score, with empty rooms and channel mix (a page fills them from the state).
    fn score(&self) -> Score {
        Score {
            tier: self.tier,
            churn_probability: self.churn_probability,
            risk_level: self.risk_level,
            risk_percentile: self.risk_percentile,
            rfm_segment: self.rfm_segment,
            lifecycle_stage: self.lifecycle_stage,
            factors: self.factors,
            n_factors: self.n_factors,
            clv: self.clv,
            expected_orders: self.expected_orders,
            p_alive: self.p_alive,
            value_at_risk: self.value_at_risk,
            interests: self.interests,
            channels: ChannelShares::default(),
            rooms: Default::default(),
        }
    }
}

/// A tree key: the ordering's value `p` (highest first), then user id (ascending).
#[derive(Debug, Clone)]
struct Key {
    p: f64,
    user: Arc<str>,
}

impl Ord for Key {
    fn cmp(&self, o: &Self) -> Ordering {
        o.p.total_cmp(&self.p).then_with(|| self.user.cmp(&o.user))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Key {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Key {}

type Tree = OrdMap<Key, Arc<Ranked>>;
/// One tree per ordering, at [`Order::index`].
type Trees = [Tree; Order::ALL.len()];
/// The values a user's keys hold, per ordering.
type Keys = [f64; Order::ALL.len()];

fn keys_of(s: &Score) -> Keys {
    Order::ALL.map(|o| o.value(s))
}

/// The ranking events update.
struct Live {
    trees: Trees,
    /// User → the values its keys hold.
    index: HashMap<Arc<str>, Keys>,
    as_of: Timestamp,
    model: Arc<LiveModel>,
    /// Changed since the last version was published.
    changed: bool,
}

impl Live {
    /// Puts `id` at `score` (`None`: removes it).
    fn set(&mut self, id: &str, score: Option<Score>) {
        let user: Arc<str> = match self.index.get_key_value(id) {
            Some((user, keys)) => {
                let user = user.clone();
                for (tree, &p) in self.trees.iter_mut().zip(keys) {
                    tree.remove(&Key {
                        p,
                        user: user.clone(),
                    });
                }
                user
            }
            None => Arc::from(id),
        };
        match score {
            Some(s) => {
                let keys = keys_of(&s);
                let s = Arc::new(Ranked::from(&s));
                self.index.insert(user.clone(), keys);
                for (tree, p) in self.trees.iter_mut().zip(keys) {
                    tree.insert(
                        Key {
                            p,
                            user: user.clone(),
                        },
                        s.clone(),
                    );
                }
            }
            None => {
                self.index.remove(&user);
            }
        }
        self.changed = true;
    }
}

/// The live ranking and, while a rebuild scans, the users changed meanwhile.
#[derive(Default)]
struct LiveSlot {
    live: Option<Live>,
    pending: Option<HashSet<String>>,
}

/// A published version: never changed.
struct Version {
    id: VersionId,
    published: Instant,
    as_of: Timestamp,
    model: Arc<LiveModel>,
    trees: Trees,
}

/// See the module docs.
pub struct MemoryRanking {
    state: Arc<StateBackend>,
    slot: Arc<ModelSlot>,
    clock: Clock,
    settings: RankingSettings,
    epoch: u64,
    next_seq: AtomicU64,
    live: tokio::sync::Mutex<LiveSlot>,
    /// Oldest first.
    versions: Mutex<VecDeque<Arc<Version>>>,
    /// True once the first build is live.
    built: tokio::sync::watch::Sender<bool>,
    /// One rebuild at a time.
    rebuilding: tokio::sync::Mutex<()>,
}

impl MemoryRanking {
    pub fn new(
        state: Arc<StateBackend>,
        slot: Arc<ModelSlot>,
        clock: Clock,
        settings: RankingSettings,
    ) -> Self {
        MemoryRanking {
            state,
            slot,
            clock,
            settings,
            epoch: rand::random(),
            next_seq: AtomicU64::new(1),
            live: tokio::sync::Mutex::new(LiveSlot::default()),
            versions: Mutex::new(VecDeque::new()),
            built: tokio::sync::watch::Sender::new(false),
            rebuilding: tokio::sync::Mutex::new(()),
        }
    }

    /// Versions held now (for tests and metrics).
    pub fn versions_held(&self) -> usize {
        self.versions().len()
    }

    fn versions(&self) -> MutexGuard<'_, VecDeque<Arc<Version>>> {
        // A panic while holding the lock leaves a consistent deque (every change is one call).
        let mut vs = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        while vs
            .front()
            .is_some_and(|v| v.published.elapsed() >= self.settings.max_age)
        {
            vs.pop_front();
        }
        vs
    }

    fn gone(&self) -> RankingError {
        RankingError::VersionGone {
            max_age_secs: self.settings.max_age.as_secs(),
            max_versions: self.settings.max_versions,
        }
    }

    fn pinned(&self, id: VersionId) -> Result<Arc<Version>, RankingError> {
        if id.epoch != self.epoch {
            return Err(self.gone());
        }
        let vs = self.versions();
        vs.iter()
            .find(|v| v.id == id)
            .cloned()
            .ok_or_else(|| self.gone())
    }

    /// The version a new walk starts from.
    async fn newest(&self, deadline: Option<Instant>) -> Result<Arc<Version>, RankingError> {
        let fresh = self.settings.publish_every.min(self.settings.max_age / 2);
        if let Some(v) = self.versions().back() {
            if v.published.elapsed() < fresh {
                return Ok(v.clone());
            }
        }
        self.wait_built(deadline).await?;
        let mut g = self.live.lock().await;
        let live = g.live.as_mut().ok_or(RankingError::NotBuilt)?;
        let mut vs = self.versions();
        if let Some(v) = vs.back() {
            if !live.changed && v.published.elapsed() < self.settings.max_age / 2 {
                return Ok(v.clone());
            }
        }
        Ok(self.publish(live, &mut vs))
    }

    async fn wait_built(&self, deadline: Option<Instant>) -> Result<(), RankingError> {
        let mut rx = self.built.subscribe();
        let wait = rx.wait_for(|b| *b);
        let r = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), wait)
                .await
                .map_err(|_| RankingError::NotBuilt)?,
            None => wait.await,
        };
        r.map(|_| ()).map_err(|_| RankingError::NotBuilt)
    }

    fn publish(&self, live: &mut Live, vs: &mut VecDeque<Arc<Version>>) -> Arc<Version> {
        let v = Arc::new(Version {
            id: VersionId {
                epoch: self.epoch,
                seq: self.next_seq.fetch_add(1, AtomicOrdering::Relaxed),
            },
            published: Instant::now(),
            as_of: live.as_of,
            model: live.model.clone(),
            trees: live.trees.clone(),
        });
        live.changed = false;
        vs.push_back(v.clone());
        while vs.len() > self.settings.max_versions.max(1) {
            vs.pop_front();
        }
        v
    }
}

/// Re-scores `users` from the state into `live`.
async fn rerank(state: &StateBackend, live: &mut Live, users: &[String]) -> Result<(), StateError> {
    for chunk in users.chunks(4096) {
        let aggs = state.get_many(chunk).await?;
        for (id, agg) in chunk.iter().zip(aggs) {
            let s = agg.map(|a| live.model.scorer.score(&a, live.as_of));
            live.set(id, s);
        }
    }
    Ok(())
}

/// Scores every user as of `as_of` and builds the tree and index. Blocking.
fn build(
    state: &StateBackend,
    scorer: &Scorer,
    as_of: Timestamp,
) -> Result<(Trees, HashMap<Arc<str>, Keys>), StateError> {
    let parts = state.scan(|users| {
        users
            .map(|(id, agg)| {
                let s = scorer.score(agg, as_of);
                (
                    Arc::<str>::from(id),
                    keys_of(&s),
                    Arc::new(Ranked::from(&s)),
                )
            })
            .collect::<Vec<_>>()
    })?;
    let mut all: Vec<(Arc<str>, Keys, Arc<Ranked>)> = parts.into_iter().flatten().collect();
    let mut index = HashMap::with_capacity(all.len());
    let mut trees = Trees::default();
    for order in Order::ALL {
        // Inserting in key order keeps the B-tree's splits cheap.
        let i = order.index();
        all.par_sort_unstable_by(|a, b| b.1[i].total_cmp(&a.1[i]).then_with(|| a.0.cmp(&b.0)));
        let tree = &mut trees[i];
        for (user, keys, s) in &all {
            tree.insert(
                Key {
                    p: keys[i],
                    user: user.clone(),
                },
                s.clone(),
            );
        }
    }
    for (user, keys, _) in all {
        index.insert(user, keys);
    }
    Ok((trees, index))
}

/// The page of `q` in `v`, its scores without rooms and channel mix ([`fill_profiles`] adds
/// them).
fn read_page(v: &Version, q: &AtRiskQuery) -> RankedPage {
    let start = match &q.after {
        Some((p, u)) => Bound::Excluded(Key {
            p: *p,
            user: Arc::from(u.as_str()),
        }),
        None => Bound::Unbounded,
    };
    let mut users = Vec::with_capacity(q.limit.min(4096));
    let mut more = false;
    let tree = &v.trees[q.order.index()];
    for (k, s) in tree.range((start, Bound::Unbounded)) {
        if q.order == Order::ChurnDescending && k.p < q.min_probability {
            break;
        }
        let s = s.score();
        if !matches(q, &s) {
            continue;
        }
        if users.len() == q.limit {
            more = true;
            break;
        }
        users.push((k.user.to_string(), s));
    }
    RankedPage {
        version: v.id,
        as_of: v.as_of,
        model: v.model.clone(),
        users,
        more,
    }
}

/// Sets each user's top rooms and channel mix from the state as it is now, as
/// [`Scorer::score`] does (a user erased since the version was published keeps them empty).
async fn fill_profiles(
    state: &StateBackend,
    users: &mut [(String, Score)],
) -> Result<(), StateError> {
    if users.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = users.iter().map(|(id, _)| id.clone()).collect();
    let aggs = state.get_many(&ids).await?;
    for ((_, s), agg) in users.iter_mut().zip(aggs) {
        if let Some(a) = agg {
            s.rooms = a.rooms;
            s.channels = ChannelShares::from_list(&a.channel_shares());
        }
    }
    Ok(())
}

impl Ranking for MemoryRanking {
    async fn page(
        &self,
        q: &AtRiskQuery,
        deadline: Option<Instant>,
    ) -> Result<RankedPage, RankingError> {
        let v = match q.pinned {
            Some(id) => self.pinned(id)?,
            None => self.newest(deadline).await?,
        };
        let mut page = read_page(&v, q);
        fill_profiles(&self.state, &mut page.users).await?;
        Ok(page)
    }

    async fn users_changed(&self, users: Vec<String>) {
        if users.is_empty() {
            return;
        }
        let mut g = self.live.lock().await;
        if let Some(p) = &mut g.pending {
            p.extend(users.iter().cloned());
        }
        let Some(live) = &mut g.live else { return };
        if let Err(e) = rerank(&self.state, live, &users).await {
            tracing::warn!(error = %e, users = users.len(), "re-ranking changed users failed; the next rebuild repairs the ranking");
        }
    }

    async fn rebuild(&self) -> Result<(), RankingError> {
        let _one = self.rebuilding.lock().await;
        let Ok(model) = self.slot.get() else {
            return Ok(());
        };
        let as_of = self.clock.now();
        self.live.lock().await.pending = Some(HashSet::new());
        let (state, m) = (self.state.clone(), model.clone());
        let built = tokio::task::spawn_blocking(move || build(&state, &m.scorer, as_of)).await;
        let mut g = self.live.lock().await;
        let pending: Vec<String> = g.pending.take().unwrap_or_default().into_iter().collect();
        let (trees, index) = built.map_err(RankingError::Task)??;
        let mut live = Live {
            trees,
            index,
            as_of,
            model,
            changed: true,
        };
        rerank(&self.state, &mut live, &pending).await?;
        let live = g.live.insert(live);
        self.publish(live, &mut self.versions());
        drop(g);
        self.built.send_replace(true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: f64, u: &str) -> Key {
        Key {
            p,
            user: Arc::from(u),
        }
    }

    /// The ranking holds everything of a score but its rooms and channel mix, and 56 bytes
    /// less a user: 136-byte shared allocations instead of 192 (each with the `Arc`'s two
    /// counters).
    #[test]
    fn a_ranked_score_is_the_score_without_rooms_and_channels() {
        use crate::features::{Channel, Rooms};
        let mut interests = Interests::default();
        interests.add(7, 2.0);
        let mut rooms = Rooms::default();
        rooms.add(9, 1.0);
        let full = Score {
            tier: 3,
            churn_probability: 0.7,
            risk_level: RiskLevel::High,
            risk_percentile: 91.5,
            rfm_segment: RfmSegment::ImportantKeep,
            lifecycle_stage: LifecycleStage::Silent,
            n_factors: 1,
            clv: 12.5,
            expected_orders: 1.5,
            p_alive: 0.4,
            value_at_risk: 8.75,
            interests,
            rooms,
            channels: ChannelShares::from_list(&[(Channel::Live, 1.0, 1.0)]),
            ..Score::default()
        };
        let back = Ranked::from(&full).score();
        assert_eq!(
            back,
            Score {
                rooms: Rooms::default(),
                channels: ChannelShares::default(),
                ..full
            }
        );
        assert_ne!(back, full);
        use std::mem::size_of;
        assert_eq!((size_of::<Score>(), size_of::<Ranked>()), (176, 120));
    }

    #[test]
    fn keys_order_by_probability_descending_then_user_ascending() {
        let mut v = [key(0.5, "b"), key(0.9, "z"), key(0.5, "a"), key(0.1, "c")];
        v.sort();
        let got: Vec<(f64, &str)> = v.iter().map(|k| (k.p, &*k.user)).collect();
        assert_eq!(got, vec![(0.9, "z"), (0.5, "a"), (0.5, "b"), (0.1, "c")]);
    }

    #[test]
    fn a_published_tree_is_unchanged_by_later_updates_to_the_live_one() {
        let mut live: Tree = OrdMap::new();
        for (i, p) in [0.2, 0.8, 0.5].iter().enumerate() {
            live.insert(
                key(*p, &format!("u{i}")),
                Arc::new(Ranked::from(&Score::default())),
            );
        }
        let published = live.clone();
        live.remove(&key(0.8, "u1"));
        live.insert(key(0.1, "u1"), Arc::new(Ranked::from(&Score::default())));
        let order = |t: &Tree| t.keys().map(|k| k.user.to_string()).collect::<Vec<_>>();
        assert_eq!(order(&published), ["u1", "u2", "u0"]);
        assert_eq!(order(&live), ["u2", "u0", "u1"]);
    }
}
