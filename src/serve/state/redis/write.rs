//! Writes: events grouped by user, current values read in one pipelined round trip, events
//! folded in Rust with the same [`UserAggregate::apply`] the embedded table uses, and each
//! user's new value written by a Lua compare-and-set on the value's write token (pipelined, one
//! pipeline per slot). A user whose compare-and-set lost (another replica wrote it in between)
//! is folded again from the value the script returned and retried, up to [`MAX_ATTEMPTS`]
//! rounds, so concurrent writers never lose each other's events.
//!
//! A batch is not atomic across users (nor is it on a Redis Cluster): when a call fails half-way
//! (Redis went away, contention persisted), the users written so far keep their events. The
//! caller sees an error and may send the batch again, which counts those users' events twice;
//! events from the topic ([`super::super::UserState::apply_logged`]) do not have this problem:
//! their watermark skips what was applied.

use super::codec::{self, Stored};
use super::RedisState;
use crate::features::{Event, UserAggregate};
use crate::serve::state::{Applied, LogPosition, StateError, UserEvent};
use ::redis::{ErrorKind, ServerErrorKind, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Compare-and-set rounds before a batch gives up with [`StateError::RedisContention`]. A loser
/// already holds the value that beat it (the script returns it), so it retries at once with a
/// short jitter; 16 rounds with backoff up to 16 ms let a slow replica starve behind faster ones
/// writing the same users (seen under CI load: 4 writers on 8 users, every round lost).
pub const MAX_ATTEMPTS: u32 = 64;

/// One user's part of a batch.
struct Pending {
    key: String,
    /// The user's tombstone key (the compare-and-set drops writes to erased users).
    tombstone: String,
    events: Vec<(Event, Option<LogPosition>)>,
    /// The value last seen: `None` not read yet, `Some(None)` absent.
    current: Option<Option<Vec<u8>>>,
}

/// What folding a user's events into its value gives.
struct Folded {
    next: Stored,
    accepted: u64,
    created: bool,
}

/// Folds `events` into the stored value `current` (absent: a new user). Events at or before the
/// watermark of their partition are skipped; `None` when every event was.
fn fold(
    current: Option<&[u8]>,
    events: &[(Event, Option<LogPosition>)],
) -> Result<Option<Folded>, StateError> {
    let (mut s, created) = match current {
        Some(bytes) => (codec::decode(bytes)?, false),
        None => (
            Stored {
                cas: 0,
                watermark: None,
                agg: UserAggregate::default(),
            },
            true,
        ),
    };
    let mut accepted = 0;
    for (e, pos) in events {
        if let Some(p) = pos {
            // Offsets compare within a partition only: an event from another partition (the
            // topic was repartitioned, so the user's key moved) starts a new sequence.
            if let Some(w) = s.watermark {
                if w.partition == p.partition && p.offset <= w.offset {
                    continue;
                }
            }
            s.watermark = Some(*p);
        }
        s.agg.apply(e);
        accepted += 1;
    }
    if accepted == 0 {
        return Ok(None);
    }
    s.cas = next_token(s.cas);
    Ok(Some(Folded {
        next: s,
        accepted,
        created,
    }))
}

/// A fresh compare-and-set token, never the previous one. Random rather than a counter: two
/// replicas folding identical events onto the same value must still write distinguishable
/// values, so that a writer that finds its own value stored knows its write landed (and one
/// that finds another's identical-looking value knows it lost).
fn next_token(previous: u64) -> u64 {
    loop {
        let t = rand::random::<u64>();
        if t != previous {
            return t;
        }
    }
}

/// Groups events by user, keeping each user's events in order.
fn group(events: Vec<(UserEvent, Option<LogPosition>)>) -> Vec<Pending> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut users: Vec<Pending> = Vec::new();
    for (e, pos) in events {
        let i = *index.entry(e.user_id.clone()).or_insert_with(|| {
            users.push(Pending {
                key: codec::key(&e.user_id),
                tombstone: codec::tombstone_key(&e.user_id),
                events: Vec::new(),
                current: None,
            });
            users.len() - 1
        });
        users[i].events.push((e.event(), pos));
    }
    users
}

/// How one compare-and-set ended.
enum Outcome {
    Written,
    /// Lost: the value now stored (`None`: absent).
    Lost(Option<Vec<u8>>),
    /// The script is not loaded on that node (a restart or failover emptied its cache).
    NoScript,
    /// The user is erased: nothing written, the events dropped.
    Erased,
}

fn outcome(
    result: ::redis::RedisResult<Value>,
    written: &[u8],
    state: &RedisState,
) -> Result<Outcome, StateError> {
    match result {
        Ok(Value::Int(1)) => Ok(Outcome::Written),
        Ok(Value::Int(0)) => Ok(Outcome::Lost(None)),
        Ok(Value::Int(-1)) => Ok(Outcome::Erased),
        // A retried command whose first try had landed finds its own value.
        Ok(Value::BulkString(cur)) if cur == written => Ok(Outcome::Written),
        Ok(Value::BulkString(cur)) => Ok(Outcome::Lost(Some(cur))),
        Ok(other) => Err(StateError::RedisProtocol {
            op: "apply",
            what: format!("compare-and-set answered {other:?}"),
        }),
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => Ok(Outcome::NoScript),
        Err(e) => Err(state.failed("apply", e)),
    }
}

impl RedisState {
    /// [`super::super::UserState::apply`] and `apply_logged` (events with positions).
    pub(super) async fn write_events(
        &self,
        events: Vec<(UserEvent, Option<LogPosition>)>,
    ) -> Result<Applied, StateError> {
        self.check_open()?;
        let mut users = group(events);
        let mut applied = Applied {
            accepted: 0,
            new_users: 0,
        };
        let mut open: Vec<usize> = (0..users.len()).collect();
        for attempt in 0..MAX_ATTEMPTS {
            self.read_unknown(&mut users, &open).await?;
            let mut cmds = Vec::new();
            let mut plans = Vec::new();
            for &i in &open {
                let u = &users[i];
                let current = u.current.as_ref().and_then(|c| c.as_deref());
                let Some(f) = fold(current, &u.events)? else {
                    continue; // every event already applied: nothing to write
                };
                let bytes = codec::encode(&f.next)?;
                let mut cmd = ::redis::cmd("EVALSHA");
                cmd.arg(self.script.get_hash())
                    .arg(2)
                    .arg(&u.key)
                    .arg(&u.tombstone)
                    .arg(current.map(codec::cas_prefix).unwrap_or_default())
                    .arg(&bytes);
                cmds.push((u.key.clone(), cmd));
                plans.push((i, bytes, f.accepted, f.created));
            }
            let results = self.call("apply", self.conn.pipelined(cmds)).await?;
            let (mut retry, mut no_script) = (Vec::new(), false);
            for ((i, bytes, accepted, created), result) in plans.into_iter().zip(results) {
                match outcome(result, &bytes, self)? {
                    Outcome::Written => {
                        applied.accepted += accepted;
                        applied.new_users += u64::from(created);
                    }
                    Outcome::Lost(now) => {
                        users[i].current = Some(now);
                        retry.push(i);
                    }
                    Outcome::Erased => {}
                    Outcome::NoScript => {
                        no_script = true;
                        retry.push(i);
                    }
                }
            }
            if retry.is_empty() {
                self.wrote(applied.new_users);
                return Ok(applied);
            }
            if no_script {
                self.call("apply", self.conn.load_script(&self.script))
                    .await?;
            } else {
                self.metrics.backend_error("cas_retry");
                // A short jitter (at most 1 ms), so two replicas do not collide again in lockstep
                // without letting the faster writers take every round meanwhile.
                let cap = 1u64 << attempt.min(2);
                tokio::time::sleep(Duration::from_micros(rand::random::<u64>() % (cap * 250)))
                    .await;
            }
            open = retry;
        }
        self.wrote(applied.new_users);
        self.metrics.backend_error("contention");
        Err(StateError::RedisContention {
            attempts: MAX_ATTEMPTS,
            users: open.len(),
        })
    }

    /// Reads the values of the users in `open` not read yet (one pipelined round trip).
    async fn read_unknown(&self, users: &mut [Pending], open: &[usize]) -> Result<(), StateError> {
        let unknown: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| users[i].current.is_none())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = unknown.iter().map(|&i| users[i].key.clone()).collect();
        let values = self.call("apply", self.conn.mget(&keys)).await?;
        for (i, v) in unknown.into_iter().zip(values) {
            users[i].current = Some(v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::EventKind;

    fn order(ts: i64) -> Event {
        Event {
            ts,
            kind: EventKind::Order,
            amount: 1.0,
            watch_seconds: 0,
            room: 0,
            category: 0,
            order: 0,
            channel: 0,
        }
    }

    fn at(partition: i32, offset: i64) -> Option<LogPosition> {
        Some(LogPosition { partition, offset })
    }

    #[test]
    fn folding_skips_events_at_or_before_the_watermark_of_their_partition() {
        let first = fold(None, &[(order(10), at(0, 5)), (order(11), at(0, 6))])
            .unwrap()
            .unwrap();
        assert_eq!((first.accepted, first.created), (2, true));
        assert_eq!(first.next.watermark, at(0, 6));
        let bytes = codec::encode(&first.next).unwrap();
        // A redelivery of both changes nothing.
        assert!(fold(
            Some(&bytes),
            &[(order(10), at(0, 5)), (order(11), at(0, 6))]
        )
        .unwrap()
        .is_none());
        // One old, one new: the new one only.
        let next = fold(
            Some(&bytes),
            &[(order(11), at(0, 6)), (order(12), at(0, 7))],
        )
        .unwrap()
        .unwrap();
        assert_eq!((next.accepted, next.created), (1, false));
        assert_ne!(
            next.next.cas, first.next.cas,
            "every write gets a fresh token"
        );
        assert_eq!(next.next.agg.orders, 3);
        // Another partition starts a new sequence; events without a position always apply.
        let moved = fold(Some(&bytes), &[(order(12), at(3, 0)), (order(13), None)])
            .unwrap()
            .unwrap();
        assert_eq!((moved.accepted, moved.next.watermark), (2, at(3, 0)));
    }
}
