//! Channels: where an event happened (the live platform, short video, social media, an offline
//! store, the app), and each user's channel mix kept in [`super::UserAggregate`].
//!
//! # The data contract
//!
//! The optional `channel` column (files) / field (`Event.channel`, API) holds free text,
//! trimmed and matched case-insensitively against the known channels ([`Channel::KNOWN`]):
//! `live`, `short_video`, `social`, `offline_store`, `app` (`-` and spaces read as `_`, so
//! `Short Video` is `short_video`). Any other non-blank value is accepted as
//! [`Channel::Other`] and reported (the readers count the unknown values, the training report
//! lists them). A blank value or a missing column means [`Channel::Unspecified`], which counts
//! as `live`: a data set without the column is what it was before channels existed.
//!
//! # The mix
//!
//! Per user, order-independent and exact for up to two channels besides `live` ([`ChannelMix`]):
//! - `used`: a bit per channel seen (live for unspecified), so the number of channels used is
//!   exact;
//! - two slots hold the events and the order spend (whole cents) of the two *smallest-coded*
//!   non-live channels seen (codes in [`Channel`]'s order); any further non-live channel's
//!   events and spend go to a third, shared `rest` bucket, shown as `other`. When a
//!   smaller-coded channel arrives, the larger slot's counts move to `rest`. The final state is
//!   a function of the multiset of events (integer sums, and "the two smallest codes" does not
//!   depend on order), so training and the server agree exactly. Event counts are `u16`,
//!   saturating at 65,535 per slot (24 bytes a user, within issue 14's memory budget; the
//!   saturated sums are still order-independent, saturating addition of non-negative counts
//!   being `min(sum, max)`), spend in `u32` cents;
//! - live's share is the rest of the total: the user's events, and gross order spend in cents,
//!   minus the slots and `rest`.

/// A known channel, or the catch-alls. The discriminant is the code the events carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Channel {
    /// No channel given (no column, or a blank value): counts as live.
    Unspecified = 0,
    Live = 1,
    ShortVideo = 2,
    Social = 3,
    OfflineStore = 4,
    App = 5,
    /// A value that is none of the known channels (accepted, reported).
    Other = 6,
}

impl Channel {
    /// The known channels, by name.
    pub const KNOWN: [Channel; 5] = [
        Channel::Live,
        Channel::ShortVideo,
        Channel::Social,
        Channel::OfflineStore,
        Channel::App,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Unspecified | Channel::Live => "live",
            Channel::ShortVideo => "short_video",
            Channel::Social => "social",
            Channel::OfflineStore => "offline_store",
            Channel::App => "app",
            Channel::Other => "other",
        }
    }

    /// The channel of a code (unknown codes are `Other`).
    pub fn from_code(c: u8) -> Channel {
        match c {
            0 => Channel::Unspecified,
            1 => Channel::Live,
            2 => Channel::ShortVideo,
            3 => Channel::Social,
            4 => Channel::OfflineStore,
            5 => Channel::App,
            _ => Channel::Other,
        }
    }

    /// Free text as the contract reads it: blank is `Unspecified`, a known name (case and
    /// `-`/space/`_` insensitive) its channel, anything else `Other`.
    pub fn parse(text: &str) -> Channel {
        let t = text.trim();
        if t.is_empty() {
            return Channel::Unspecified;
        }
        let norm = |c: char| match c {
            '-' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        };
        Channel::KNOWN
            .into_iter()
            .find(|k| {
                let name = k.as_str();
                name.len() == t.len() && name.chars().zip(t.chars()).all(|(a, b)| a == norm(b))
            })
            .unwrap_or(Channel::Other)
    }

    /// The code as the mix counts it: unspecified is live.
    fn counted(self) -> u8 {
        match self {
            Channel::Unspecified => Channel::Live as u8,
            c => c as u8,
        }
    }
}

/// Slot value meaning "empty".
const NO_SLOT: u8 = 0;

/// One user's channel mix (module docs). 24 bytes (28 before rooms joined the aggregate:
/// the event counts became `u16`, serialised as before).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelMix {
    /// Bit `code` set once a channel was seen (bit 1 for live and unspecified).
    pub used: u8,
    /// Codes of the two slots, `0` when empty; slot 0 holds the smaller code.
    slots: [u8; 2],
    /// Events per slot, then the `rest`: saturating at 65,535 (a user with more events on one
    /// non-live channel shows live's activity share too high); serialised as `u32`s, the
    /// layout of aggregate format 3.
    #[serde(with = "events_u32")]
    events: [u16; 3],
    /// Order spend in whole cents per slot, then the `rest`.
    cents: [u32; 3],
}

/// The event counts serialised as `[u32; 3]` (format 3's layout), read back saturating.
mod events_u32 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u16; 3], s: S) -> Result<S::Ok, S::Error> {
        v.map(u32::from).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u16; 3], D::Error> {
        let wide = <[u32; 3]>::deserialize(d)?;
        Ok(wide.map(|x| u16::try_from(x).unwrap_or(u16::MAX)))
    }
}

impl ChannelMix {
    /// Counts one event of `channel` with `cents` of order spend (0 for non-orders).
    pub fn apply(&mut self, channel: Channel, cents: u32) {
        let code = channel.counted();
        self.used |= 1 << code;
        if code == Channel::Live as u8 {
            return;
        }
        let at = match self.slots.iter().position(|&s| s == code) {
            Some(i) => i,
            None => self.take_slot(code),
        };
        self.events[at] = self.events[at].saturating_add(1);
        self.cents[at] = self.cents[at].saturating_add(cents);
    }

    /// The index (slot 0/1, or 2 for `rest`) where a channel not in a slot counts.
    fn take_slot(&mut self, code: u8) -> usize {
        if let Some(i) = self.slots.iter().position(|&s| s == NO_SLOT) {
            self.slots[i] = code;
            self.sort_slots();
            return self.slots.iter().position(|&s| s == code).unwrap_or(2);
        }
        if code > self.slots[1] {
            return 2;
        }
        // The larger slot's counts move to rest; the new channel takes its place.
        self.events[2] = self.events[2].saturating_add(self.events[1]);
        self.cents[2] = self.cents[2].saturating_add(self.cents[1]);
        self.slots[1] = code;
        self.events[1] = 0;
        self.cents[1] = 0;
        self.sort_slots();
        self.slots.iter().position(|&s| s == code).unwrap_or(2)
    }

    /// Keeps slot 0 the smaller code (an empty slot last).
    fn sort_slots(&mut self) {
        let key = |s: u8| if s == NO_SLOT { u8::MAX } else { s };
        if key(self.slots[1]) < key(self.slots[0]) {
            self.slots.swap(0, 1);
            self.events.swap(0, 1);
            self.cents.swap(0, 1);
        }
    }

    /// The raw state `(used, slots, events, cents)`: what the warehouse aggregates table stores
    /// (`io::aggregates`, schema version 2).
    pub fn parts(&self) -> (u8, [u8; 2], [u32; 3], [u32; 3]) {
        (
            self.used,
            self.slots,
            self.events.map(u32::from),
            self.cents,
        )
    }

    /// The mix from [`ChannelMix::parts`]; `None` for a state [`ChannelMix::apply`] cannot
    /// reach: a slot code other than 0 (empty) or 2..=6, slot 0 not the smaller code (an empty
    /// slot last), counts in an empty slot, a slot's channel not marked used. Event counts
    /// saturate at `u16::MAX` as [`ChannelMix::apply`] counts them (a warehouse may count more).
    pub fn from_parts(
        used: u8,
        slots: [u8; 2],
        events: [u32; 3],
        cents: [u32; 3],
    ) -> Option<ChannelMix> {
        let valid = |s: u8| s == NO_SLOT || (2..=Channel::Other as u8).contains(&s);
        let ordered = match slots {
            [NO_SLOT, b] => b == NO_SLOT,
            [a, b] => b == NO_SLOT || a < b,
        };
        let counts_in_empty = (0..2).any(|i| slots[i] == NO_SLOT && (events[i] | cents[i]) != 0);
        let unmarked = slots.iter().any(|&s| s != NO_SLOT && used & (1 << s) == 0);
        (slots.iter().all(|&s| valid(s)) && ordered && !counts_in_empty && !unmarked).then_some(
            ChannelMix {
                used,
                slots,
                events: events.map(|e| u16::try_from(e).unwrap_or(u16::MAX)),
                cents,
            },
        )
    }

    /// Channels used (at least 1 once any event was counted).
    pub fn channels_used(&self) -> u32 {
        self.used.count_ones()
    }

    /// `(channel, events, cents)` of the non-live part: the slots, then `other` for the rest
    /// (merged with a slot holding `Other` itself), without empty entries.
    pub fn non_live(&self) -> Vec<(Channel, u64, u64)> {
        let mut out: Vec<(Channel, u64, u64)> = Vec::with_capacity(3);
        for i in 0..2 {
            if self.slots[i] != NO_SLOT {
                out.push((
                    Channel::from_code(self.slots[i]),
                    u64::from(self.events[i]),
                    u64::from(self.cents[i]),
                ));
            }
        }
        if self.events[2] > 0 {
            match out.iter_mut().find(|x| x.0 == Channel::Other) {
                Some(x) => {
                    x.1 += u64::from(self.events[2]);
                    x.2 += u64::from(self.cents[2]);
                }
                None => out.push((
                    Channel::Other,
                    u64::from(self.events[2]),
                    u64::from(self.cents[2]),
                )),
            }
        }
        out
    }

    /// Shares per channel used, `(channel, spend_share, activity_share)`, live first, given the
    /// user's total events and gross order spend in cents. Empty for a user seen only live
    /// with no channel data (a data set without the column).
    pub fn shares(&self, total_events: u64, total_cents: u64) -> Vec<(Channel, f64, f64)> {
        if self.slots == [NO_SLOT; 2] && self.events[2] == 0 {
            // Live only (every user of a data set without channels): nothing to allocate.
            return Vec::new();
        }
        let others = self.non_live();
        if others.is_empty() || total_events == 0 {
            return Vec::new();
        }
        let (ev, ce) = others
            .iter()
            .fold((0u64, 0u64), |(a, b), x| (a + x.1, b + x.2));
        let total_cents = total_cents.max(ce);
        let share = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        let mut out = Vec::with_capacity(others.len() + 1);
        let live_events = total_events.saturating_sub(ev);
        if live_events > 0 {
            out.push((
                Channel::Live,
                share(total_cents - ce, total_cents),
                share(live_events, total_events),
            ));
        }
        for (c, e, s) in others {
            out.push((c, share(s, total_cents), share(e, total_events)));
        }
        out
    }
}

/// A user's channel shares as the answers carry them (at most live, two slots and other):
/// `Copy`, so that a score can hold it. Empty for a user without channel data.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelShares {
    n: u8,
    channel: [u8; 4],
    spend: [f32; 4],
    activity: [f32; 4],
}

impl ChannelShares {
    /// From [`ChannelMix::shares`]'s list (the first four entries).
    pub fn from_list(list: &[(Channel, f64, f64)]) -> Self {
        let mut out = ChannelShares::default();
        for (i, &(c, s, a)) in list.iter().take(4).enumerate() {
            out.channel[i] = c as u8;
            out.spend[i] = s as f32;
            out.activity[i] = a as f32;
            out.n = i as u8 + 1;
        }
        out
    }

    /// `(channel, spend_share, activity_share)`, live first.
    pub fn list(&self) -> Vec<(Channel, f64, f64)> {
        (0..usize::from(self.n))
            .map(|i| {
                (
                    Channel::from_code(self.channel[i]),
                    f64::from(self.spend[i]),
                    f64::from(self.activity[i]),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_parse_loosely_and_unknown_values_are_other() {
        assert_eq!(Channel::parse(" Short Video "), Channel::ShortVideo);
        assert_eq!(Channel::parse("OFFLINE-STORE"), Channel::OfflineStore);
        assert_eq!(Channel::parse("live"), Channel::Live);
        assert_eq!(Channel::parse(""), Channel::Unspecified);
        assert_eq!(Channel::parse("tv_shopping"), Channel::Other);
        assert_eq!(Channel::parse("lives"), Channel::Other);
    }

    #[test]
    fn the_mix_is_the_same_in_any_order_with_more_channels_than_slots() {
        use Channel::*;
        let evs = [
            (App, 500),
            (Live, 100),
            (Social, 0),
            (ShortVideo, 700),
            (Other, 0),
            (App, 0),
            (Unspecified, 300),
            (Social, 200),
        ];
        let mut a = ChannelMix::default();
        evs.iter().for_each(|&(c, s)| a.apply(c, s));
        let mut b = ChannelMix::default();
        evs.iter().rev().for_each(|&(c, s)| b.apply(c, s));
        assert_eq!(a, b);
        assert_eq!(a.channels_used(), 5);
        // short_video and social in the slots, app and other together as other.
        assert_eq!(
            a.non_live(),
            vec![(ShortVideo, 1, 700), (Social, 2, 200), (Other, 3, 500)]
        );
        let shares = a.shares(8, 1800);
        assert_eq!(shares[0].0, Live);
        assert!((shares[0].1 - 400.0 / 1800.0).abs() < 1e-12);
        assert!((shares[0].2 - 2.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn a_warehouse_mix_reads_back_as_applied_saturates_counts_and_refuses_unreachable_states() {
        use Channel::*;
        let mut a = ChannelMix::default();
        for (c, s) in [(Social, 250), (App, 0), (OfflineStore, 900), (Live, 100)] {
            a.apply(c, s);
        }
        let (used, slots, events, cents) = a.parts();
        // App came second and was pushed to the rest by offline_store's smaller code.
        assert_eq!(slots, [Social as u8, OfflineStore as u8]);
        assert_eq!((events, cents), ([1, 1, 1], [250, 900, 0]));
        assert_eq!(ChannelMix::from_parts(used, slots, events, cents), Some(a));

        // A warehouse counts past u16::MAX; the mix holds what `apply` would have counted.
        let mut busy = ChannelMix::default();
        (0..70_000).for_each(|_| busy.apply(Social, 0));
        let (u, s, e, c) = busy.parts();
        assert_eq!(e, [65_535, 0, 0]);
        assert_eq!(ChannelMix::from_parts(u, s, [70_000, 0, 0], c), Some(busy));

        // States `apply` cannot reach.
        let social_unmarked = used & !(1 << Social as u8);
        let refused = [
            ("a code past other", used, [Social as u8, 7], events, cents),
            ("live in a slot", used, [Live as u8, 0], [1, 0, 0], [0; 3]),
            (
                "slot 0 the larger code",
                used,
                [OfflineStore as u8, Social as u8],
                events,
                cents,
            ),
            (
                "an empty slot first",
                used,
                [0, Social as u8],
                [0, 1, 0],
                [0, 250, 0],
            ),
            (
                "counts in an empty slot",
                used,
                [Social as u8, 0],
                [1, 4, 0],
                cents,
            ),
            (
                "a slot's channel not marked used",
                social_unmarked,
                slots,
                events,
                cents,
            ),
        ];
        for (why, u, s, e, c) in refused {
            assert_eq!(ChannelMix::from_parts(u, s, e, c), None, "{why}");
        }
    }

    #[test]
    fn a_user_seen_only_without_channels_has_no_mix() {
        let mut a = ChannelMix::default();
        a.apply(Channel::Unspecified, 100);
        assert!(a.shares(1, 100).is_empty());
        assert_eq!(a.channels_used(), 1);
    }
}
