//! A person's rights over their data: erasure, access (export) and objection to profiling, and
//! the lists that keep them in force.
//!
//! - **Erasure** ([`Privacy::erase`]): the id's keyed hash goes on the suppression list first
//!   (durable: a file in the state directory, or a Redis set), then the state erases the user
//!   durably ([`UserState::erase`]: a log record, or a Redis tombstone that keeps the topic's
//!   replay from resurrecting the user), then the ranking drops the user. An erased id stays
//!   erased: later RecordEvents for it are dropped (not counted in `accepted`), and the Redis
//!   compare-and-set drops the aggregator's writes for it. Refusing rather than starting a
//!   fresh history is deliberate: events produced to the topic before the erasure but applied
//!   after it cannot be told from new ones by their offset, and training drops every event of a
//!   suppressed id anyway; a person who returns is given a new id by the platform.
//! - **Ingest vs. erasure**: RecordEvents holds [`Privacy::ingest_gate`] (shared) from the
//!   suppression check until its events are applied, and an erasure holds it exclusively, so an
//!   erasure racing with RecordEvents for the same user always ends with the user erased: the
//!   events that won the race were logged before the erasure record (and are erased with the
//!   user); the others find the id suppressed and are dropped. (With an event topic the
//!   aggregator's writes meet the tombstone instead.)
//! - **Objection** ([`Privacy::set_objection`]): the objection list; while an id is on it the
//!   data is kept, GetUserTier and ScoreUser answer FAILED_PRECONDITION (`profiling_objected`),
//!   BatchGetUserTiers lists it in `objected`, ListAtRiskUsers skips it. Withdrawing restores all.
//! - **Access** ([`Privacy::export`]): everything held about the id, as JSON.
//!
//! Every call is audited ([`super::audit`]) with the keyed hash of the id. With a Redis state
//! the lists are Redis sets shared by the replicas; each replica re-reads them every second
//! ([`Privacy::refresh`]), so an objection made on one replica is in force on all within that.
//!
//! - [`lists`] ([`crate::io::privacy`]) — the key, the keyed hash, the list files, and
//!   [`lists::Suppression`] (what training and offline scoring read).

pub use crate::io::privacy as lists;

use super::audit::{Audit, Entry};
use super::error::RequestError;
use super::ranking::{Ranking, RankingBackend};
use super::slot::ModelSlot;
use super::state::{StateBackend, UserEvent, UserState};
use crate::features::Timestamp;
use lists::{HashList, IdHash, PrivacyError, PrivacyKey, ERASED_FILE, OBJECTED_FILE};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

/// The Redis set of erased ids' hashes (Redis state).
pub const REDIS_ERASED: &str = "{privacy}:erased";
/// The Redis set of objecting ids' hashes (Redis state).
pub const REDIS_OBJECTED: &str = "{privacy}:objected";

/// Which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Erased,
    Objected,
}

#[derive(Debug, Default)]
struct Lists {
    erased: HashList,
    objected: HashList,
}

impl Lists {
    fn get(&mut self, which: List) -> &mut HashList {
        match which {
            List::Erased => &mut self.erased,
            List::Objected => &mut self.objected,
        }
    }
}

/// Where the lists are kept.
enum Store {
    /// `STATE/privacy/{erased,objected}`.
    Files(PathBuf),
    /// [`REDIS_ERASED`], [`REDIS_OBJECTED`].
    Redis,
}

/// The live lists and the rights calls (see the module docs).
pub struct Privacy {
    key: Option<PrivacyKey>,
    lists: RwLock<Lists>,
    store: Store,
    gate: tokio::sync::RwLock<()>,
    state: Arc<StateBackend>,
    audit: Arc<Audit>,
}

impl Privacy {
    /// Loads the lists: from `state_dir/privacy` for the embedded state, from Redis otherwise.
    /// Without a key the lists are empty and the rights calls answer FAILED_PRECONDITION.
    pub async fn open(
        key: Option<PrivacyKey>,
        state_dir: Option<PathBuf>,
        state: Arc<StateBackend>,
        audit: Arc<Audit>,
    ) -> Result<Privacy, PrivacyError> {
        let store = match state_dir {
            Some(d) => Store::Files(d.join(lists::DIR)),
            None => Store::Redis,
        };
        let p = Privacy {
            key,
            lists: RwLock::new(Lists::default()),
            store,
            gate: tokio::sync::RwLock::new(()),
            state,
            audit,
        };
        if let Store::Files(dir) = &p.store {
            let mut l = p.write_lists();
            l.erased = HashList::read(&dir.join(ERASED_FILE))?;
            l.objected = HashList::read(&dir.join(OBJECTED_FILE))?;
            if let (StateBackend::Embedded(e), Some(key)) = (&*p.state, &p.key) {
                // A seed (an empty state directory that kept its `privacy/` list) reads the
                // list as it is then; the Redis seed skips tombstoned users by itself.
                // Read once, at the first seeded user: erasures need a seeded state, so none
                // can come between.
                let (key, path) = (key.clone(), dir.join(ERASED_FILE));
                let list = std::sync::OnceLock::new();
                e.set_seed_filter(Box::new(move |id| {
                    let l = list.get_or_init(|| HashList::read(&path).unwrap_or_default());
                    !l.0.is_empty() && l.contains(&key.hash(id))
                }));
            }
        }
        if let Err(e) = p.refresh().await {
            tracing::warn!(error = %e, "reading the privacy lists from Redis failed; retried every second");
        }
        Ok(p)
    }

    fn read_lists(&self) -> std::sync::RwLockReadGuard<'_, Lists> {
        self.lists.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_lists(&self) -> std::sync::RwLockWriteGuard<'_, Lists> {
        self.lists.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The audit log the rights calls write to (shared with model administration).
    pub fn audit(&self) -> Arc<Audit> {
        self.audit.clone()
    }

    /// True when the lists live in Redis, shared with other replicas.
    pub fn shared(&self) -> bool {
        matches!(self.store, Store::Redis)
    }

    /// Re-reads the Redis sets (Redis state; nothing to do for files, which only this server
    /// writes).
    pub async fn refresh(&self) -> Result<(), RequestError> {
        let (Store::Redis, StateBackend::Redis(r)) = (&self.store, &*self.state) else {
            return Ok(());
        };
        if self.key.is_none() {
            return Ok(());
        }
        let mut sets = Vec::new();
        for key in [REDIS_ERASED, REDIS_OBJECTED] {
            let mut cmd = ::redis::cmd("SMEMBERS");
            cmd.arg(key);
            let members: Vec<String> = r.run("privacy_lists", &cmd).await?;
            sets.push(HashList(
                members.iter().filter_map(|m| IdHash::from_hex(m)).collect(),
            ));
        }
        let mut l = self.write_lists();
        l.objected = sets.pop().unwrap_or_default();
        l.erased = sets.pop().unwrap_or_default();
        Ok(())
    }

    /// The keyed hash of `id`; FAILED_PRECONDITION without a key.
    fn hash(&self, id: &str) -> Result<IdHash, RequestError> {
        self.key
            .as_ref()
            .map(|k| k.hash(id))
            .ok_or(RequestError::Privacy(PrivacyError::NoKey))
    }

    /// True when `id` is on the list (an empty list costs no hash).
    fn on(&self, which: List, id: &str) -> bool {
        let Some(k) = &self.key else { return false };
        let l = self.read_lists();
        let list = match which {
            List::Erased => &l.erased,
            List::Objected => &l.objected,
        };
        !list.0.is_empty() && list.contains(&k.hash(id))
    }

    /// True when the person objected to profiling.
    pub fn objected(&self, id: &str) -> bool {
        self.on(List::Objected, id)
    }

    /// True when the id was erased.
    pub fn erased(&self, id: &str) -> bool {
        self.on(List::Erased, id)
    }

    /// True when the id must not appear in a tier list (erased or objected).
    /// One lock and at most one keyed hash per id (it runs for every user of an at-risk page).
    pub fn hidden(&self, id: &str) -> bool {
        let Some(k) = &self.key else { return false };
        let l = self.read_lists();
        if l.erased.0.is_empty() && l.objected.0.is_empty() {
            return false;
        }
        let h = k.hash(id);
        l.erased.contains(&h) || l.objected.contains(&h)
    }

    /// `Err(ProfilingObjected)` when the person objected.
    pub fn check_profiling(&self, id: &str) -> Result<(), RequestError> {
        if !id.is_empty() && self.objected(id) {
            return Err(RequestError::ProfilingObjected);
        }
        Ok(())
    }

    /// Held (shared) by RecordEvents from [`Privacy::drop_suppressed`] until its events are
    /// applied; an erasure holds it exclusively.
    pub async fn ingest_gate(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Removes the events of erased ids; how many were removed.
    pub fn drop_suppressed(&self, events: &mut Vec<UserEvent>) -> usize {
        let Some(k) = &self.key else { return 0 };
        let l = self.read_lists();
        if l.erased.0.is_empty() {
            return 0;
        }
        let before = events.len();
        events.retain(|e| !l.erased.contains(&k.hash(&e.user_id)));
        before - events.len()
    }

    /// Adds `h` to (or removes it from) a list, durably, then in memory.
    async fn persist(&self, which: List, h: IdHash, add: bool) -> Result<(), RequestError> {
        match (&self.store, &*self.state) {
            (Store::Files(dir), _) => {
                let mut l = self.write_lists();
                let mut next = l.get(which).clone();
                if add {
                    next.0.insert(h);
                } else {
                    next.0.remove(&h);
                }
                let file = match which {
                    List::Erased => ERASED_FILE,
                    List::Objected => OBJECTED_FILE,
                };
                next.write(&dir.join(file)).map_err(RequestError::Privacy)?;
                *l.get(which) = next;
                return Ok(());
            }
            (Store::Redis, StateBackend::Redis(r)) => {
                let mut cmd = ::redis::cmd(if add { "SADD" } else { "SREM" });
                let set = match which {
                    List::Erased => REDIS_ERASED,
                    List::Objected => REDIS_OBJECTED,
                };
                cmd.arg(set).arg(h.to_hex());
                r.run::<i64>("privacy_lists", &cmd).await?;
            }
            (Store::Redis, StateBackend::Embedded(_)) => {}
        }
        let mut l = self.write_lists();
        if add {
            l.get(which).0.insert(h);
        } else {
            l.get(which).0.remove(&h);
        }
        Ok(())
    }

    /// EraseUser (see the module docs).
    pub async fn erase(
        &self,
        ranking: &RankingBackend,
        who: String,
        id: &str,
    ) -> Result<crate::pb::EraseUserResponse, RequestError> {
        let h = self.hash(id)?;
        let entry = Entry::new(who, "EraseUser").subject(h);
        let done = async {
            let _exclusive = self.gate.write().await;
            self.persist(List::Erased, h, true).await?;
            self.state.erase(id).await.map_err(RequestError::State)
        }
        .await;
        match done {
            Ok(existed) => {
                ranking.users_changed(vec![id.to_string()]).await;
                self.audit.record(entry.detail("existed", existed));
                Ok(crate::pb::EraseUserResponse {
                    existed,
                    id_hash: h.to_hex(),
                })
            }
            Err(e) => {
                self.audit
                    .record(entry.outcome("failed").detail("error", e.to_string()));
                Err(e)
            }
        }
    }

    /// SetProfilingObjection; returns whether the objection stood before.
    pub async fn set_objection(
        &self,
        ranking: &RankingBackend,
        who: String,
        id: &str,
        objected: bool,
    ) -> Result<bool, RequestError> {
        let h = self.hash(id)?;
        let before = self.objected(id);
        let entry = Entry::new(who, "SetProfilingObjection")
            .subject(h)
            .detail("objected", objected);
        match self.persist(List::Objected, h, objected).await {
            Ok(()) => {
                ranking.users_changed(vec![id.to_string()]).await;
                self.audit.record(entry.detail("previously", before));
                Ok(before)
            }
            Err(e) => {
                self.audit
                    .record(entry.outcome("failed").detail("error", e.to_string()));
                Err(e)
            }
        }
    }

    /// ExportUser: everything held about `id`, as JSON (see the proto for the fields).
    pub async fn export(
        &self,
        model: &ModelSlot,
        now: Timestamp,
        who: String,
        id: &str,
    ) -> Result<String, RequestError> {
        let h = self.hash(id)?;
        let entry = Entry::new(who, "ExportUser").subject(h);
        let erased = self.erased(id);
        let objected = self.objected(id);
        let agg = match self.state.get(id).await {
            Ok(a) => a,
            Err(e) => {
                self.audit
                    .record(entry.outcome("failed").detail("error", e.to_string()));
                return Err(RequestError::State(e));
            }
        };
        let Some(agg) = agg else {
            self.audit
                .record(entry.outcome("refused").detail("held", false));
            return Err(RequestError::NothingHeld { erased });
        };
        let score = if objected {
            Value::Null
        } else {
            model
                .with(|m| {
                    let t = super::convert::user_tier(id, &m.scorer.score(&agg, now), m, now);
                    Ok(json!({
                        "model_version": t.model_version,
                        "tier_id": t.tier_id,
                        "tier_name": t.tier_name,
                        "churn_probability": t.churn_probability,
                        "risk_level": t.risk_level,
                        "risk_percentile": t.risk_percentile,
                        "rfm_segment": t.rfm_segment,
                        "lifecycle_stage": t.lifecycle_stage,
                        "top_factors": t.top_factors.iter().map(|f| json!({
                            "feature": f.feature, "contribution": f.contribution, "value": f.value,
                        })).collect::<Vec<_>>(),
                        "recommended_actions": t.recommended_actions,
                        "clv": t.clv,
                        "expected_orders": t.expected_orders,
                        "p_alive": t.p_alive,
                        "value_at_risk": t.value_at_risk,
                        // Named as GetUserTier names them (the aggregates hold hashes).
                        "interests": t.interests.iter().map(|i| json!({
                            "category": i.category, "score": i.score,
                        })).collect::<Vec<_>>(),
                        "rooms": t.rooms.iter().map(|r| json!({
                            "room_id": r.room_id, "score": r.score,
                        })).collect::<Vec<_>>(),
                        "channels": t.channels.iter().map(|c| json!({
                            "channel": c.channel, "spend_share": c.spend_share,
                            "activity_share": c.activity_share,
                        })).collect::<Vec<_>>(),
                    }))
                })
                .unwrap_or(Value::Null)
        };
        let doc = json!({
            "user_id": id,
            "held": true,
            "erased": erased,
            "profiling_objected": objected,
            "aggregates": agg,
            "score": score,
            "tier_history": Value::Null,
            "note": "tier history is not kept by the server; scores are computed on demand",
        });
        self.audit.record(entry.detail("held", true));
        Ok(doc.to_string())
    }
}
