//! The in-memory events table: columnar, one entry per event, users interned to dense indices.
//!
//! Readers at the I/O edge fill it; the feature code sweeps it. Columns are plain vectors so a
//! sweep over 50M events touches ~29 bytes each and nothing else.

use super::event::{Event, EventKind, Timestamp};
use super::vocabulary::KindTally;
use std::collections::HashMap;

/// Which optional parts of the data contract the input actually carried. Features the data cannot
/// support are left out of the model (see `FeatureSet::supported_by`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnsPresent {
    pub watch_seconds: bool,
    pub room_id: bool,
    pub category: bool,
    /// An `order_id` column (links refunds to orders).
    #[serde(default)]
    pub order_id: bool,
    /// A users table with `registered_at` was given.
    pub users_table: bool,
    /// A `channel` column (not written when absent, so that a manifest of data without one is
    /// what it was before channels existed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub channel: bool,
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
    /// `hash_str(order_id)`, 0 when absent.
    pub order: Vec<u32>,
    /// [`crate::features::Channel`] codes, 0 when unspecified.
    pub channel: Vec<u8>,
    /// Rows per source kind name, as the readers resolved them (the report and the manifest
    /// list them).
    pub kind_tally: KindTally,
    pub columns: ColumnsPresent,
}

impl EventTable {
    pub fn with_capacity(events: usize) -> Self {
        let mut t = EventTable::default();
        t.reserve(events);
        t
    }

    /// Room for `events` more events in every event column.
    pub(crate) fn reserve(&mut self, events: usize) {
        self.user.reserve(events);
        self.ts.reserve(events);
        self.kind.reserve(events);
        self.amount.reserve(events);
        self.watch_seconds.reserve(events);
        self.room.reserve(events);
        self.category.reserve(events);
        self.order.reserve(events);
        self.channel.reserve(events);
    }

    /// Empties the table (users and events), keeping its allocations. Every field is named, so
    /// a new column cannot be missed.
    pub fn clear(&mut self) {
        let EventTable {
            user_ids,
            index,
            registered_at,
            user,
            ts,
            kind,
            amount,
            watch_seconds,
            room,
            category,
            order,
            channel,
            kind_tally,
            columns,
        } = self;
        user_ids.clear();
        index.clear();
        registered_at.clear();
        user.clear();
        ts.clear();
        kind.clear();
        amount.clear();
        watch_seconds.clear();
        room.clear();
        category.clear();
        order.clear();
        channel.clear();
        *kind_tally = KindTally::default();
        *columns = ColumnsPresent::default();
    }

    /// Appends `other`'s events without their users: `other`'s user indexes mean nothing here,
    /// so the caller pushes one `user` per appended event. Every field is named, so a new column
    /// cannot be missed.
    pub(crate) fn extend_events(&mut self, other: &EventTable) {
        let EventTable {
            user_ids: _,
            index: _,
            registered_at: _,
            user: _,
            ts,
            kind,
            amount,
            watch_seconds,
            room,
            category,
            order,
            channel,
            kind_tally,
            columns: _,
        } = other;
        self.order.extend_from_slice(order);
        self.channel.extend_from_slice(channel);
        self.kind_tally.merge(kind_tally);
        self.ts.extend_from_slice(ts);
        self.kind.extend_from_slice(kind);
        self.amount.extend_from_slice(amount);
        self.watch_seconds.extend_from_slice(watch_seconds);
        self.room.extend_from_slice(room);
        self.category.extend_from_slice(category);
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
        self.order.push(e.order);
        self.channel.push(e.channel);
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    pub(crate) fn n_users(&self) -> usize {
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
            order: self.order[i],
            channel: self.channel[i],
        }
    }

    /// Time of the last event, if any.
    pub fn max_ts(&self) -> Option<Timestamp> {
        self.ts.iter().copied().max()
    }

    /// Time of the first event, if any.
    pub(crate) fn min_ts(&self) -> Option<Timestamp> {
        self.ts.iter().copied().min()
    }

    /// Which kinds occur at all (a plain transaction log has only orders).
    pub(crate) fn kinds_present(&self) -> [bool; EventKind::ALL.len()] {
        let mut seen = [false; EventKind::ALL.len()];
        for k in &self.kind {
            seen[*k as usize] = true;
        }
        seen
    }
}
