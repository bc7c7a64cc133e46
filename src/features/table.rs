//! The in-memory events table: columnar, one entry per event, users interned to dense indices.
//!
//! Readers at the I/O edge fill it; the feature code sweeps it. Columns are plain vectors so a
//! sweep over 50M events touches ~29 bytes each and nothing else.

use super::event::{Event, EventKind, Timestamp};
use std::collections::HashMap;

/// Which optional parts of the data contract the input actually carried. Features the data cannot
/// support are left out of the model (see `FeatureSet::supported_by`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnsPresent {
    pub watch_seconds: bool,
    pub room_id: bool,
    pub category: bool,
    /// A users table with `registered_at` was given.
    pub users_table: bool,
}

/// Columnar events, with users interned.
#[derive(Debug, Clone, Default)]
pub struct EventTable {
    /// Dense user index -> the caller's opaque id.
    pub user_ids: Vec<String>,
    /// Opaque id -> dense index; kept so late rows and the users table resolve in O(1).
    pub index: HashMap<String, u32>,
    /// Registration time per user index, when a users table gave one.
    pub registered_at: Vec<Option<Timestamp>>,
    pub user: Vec<u32>,
    pub ts: Vec<Timestamp>,
    pub kind: Vec<EventKind>,
    /// f32 keeps the 50M-row table small; order values need no more than 7 significant digits.
    pub amount: Vec<f32>,
    pub watch_seconds: Vec<u32>,
    pub room: Vec<u32>,
    pub category: Vec<u32>,
    pub columns: ColumnsPresent,
}

impl EventTable {
    pub fn with_capacity(events: usize) -> Self {
        EventTable {
            user: Vec::with_capacity(events),
            ts: Vec::with_capacity(events),
            kind: Vec::with_capacity(events),
            amount: Vec::with_capacity(events),
            watch_seconds: Vec::with_capacity(events),
            room: Vec::with_capacity(events),
            category: Vec::with_capacity(events),
            ..Default::default()
        }
    }

    /// The dense index of `user_id`, creating the user on first sight.
    pub fn intern(&mut self, user_id: &str) -> u32 {
        if let Some(&i) = self.index.get(user_id) {
            return i;
        }
        let i = self.user_ids.len() as u32;
        self.user_ids.push(user_id.to_string());
        self.registered_at.push(None);
        self.index.insert(user_id.to_string(), i);
        i
    }

    pub fn push(&mut self, user: u32, e: Event) {
        self.user.push(user);
        self.ts.push(e.ts);
        self.kind.push(e.kind);
        self.amount.push(e.amount as f32);
        self.watch_seconds.push(e.watch_seconds);
        self.room.push(e.room);
        self.category.push(e.category);
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    pub fn n_users(&self) -> usize {
        self.user_ids.len()
    }

    pub fn event(&self, i: usize) -> Event {
        Event {
            ts: self.ts[i],
            kind: self.kind[i],
            amount: f64::from(self.amount[i]),
            watch_seconds: self.watch_seconds[i],
            room: self.room[i],
            category: self.category[i],
        }
    }

    /// Time of the last event, if any.
    pub fn max_ts(&self) -> Option<Timestamp> {
        self.ts.iter().copied().max()
    }

    /// Time of the first event, if any.
    pub fn min_ts(&self) -> Option<Timestamp> {
        self.ts.iter().copied().min()
    }

    /// Which kinds occur at all (a plain transaction log has only orders).
    pub fn kinds_present(&self) -> [bool; EventKind::ALL.len()] {
        let mut seen = [false; EventKind::ALL.len()];
        for k in &self.kind {
            seen[*k as usize] = true;
        }
        seen
    }
}
