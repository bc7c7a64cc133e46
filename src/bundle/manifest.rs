//! `manifest.json`: what a bundle is, where it came from, and how good it is.

use crate::features::{
    ChurnDefinition, ColumnsPresent, KindMapping, KindSeen, Timestamp, Transform,
};
use crate::model::drift::{DriftFigures, DriftReference};
use crate::model::metrics::{BinaryMetrics, CalibrationRow};
use crate::model::Scorer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Sortable id: `YYYYMMDDTHHMMSSZ-<hash>`.
    pub version: String,
    /// When the bundle was made (Unix seconds; RFC 3339 text in the file).
    #[serde(with = "time_text")]
    pub created_at: Timestamp,
    /// The bundle that was current when this one was trained (tier ids were matched to it).
    pub previous_version: Option<String>,
    pub data: DataInfo,
    /// The training configuration as run (after defaults and flags).
    pub params: serde_json::Value,
    /// The time the final model scored users at (RFC 3339 and Unix seconds).
    pub as_of: String,
    pub as_of_ts: i64,
    pub horizon_days: u32,
    pub churn_definition: ChurnDefinition,
    /// Model columns in order, with their transform and fitted scaling.
    pub features: Vec<FeatureSpec>,
    pub features_left_out: Vec<LeftOut>,
    pub tiers: Vec<TierEntry>,
    pub metrics: Metrics,
    /// Plain-language caveats; non-empty means "read before trusting the numbers".
    pub warnings: Vec<String>,
    /// sha256 of every file in the bundle but the manifest itself.
    pub files: BTreeMap<String, String>,
    /// The training population's distributions (features, churn probability, tier shares),
    /// which the server and the next training measure drift against. Absent in bundles
    /// written before it existed.
    #[serde(default)]
    pub drift_reference: Option<DriftReference>,
    /// The kind mapping the bundle was trained with (training's `[events]`): the server reads
    /// `RecordEvents` and `ScoreUser` kinds with it. Canonical names only for bundles written
    /// before it existed.
    #[serde(default)]
    pub kinds: KindMapping,
}

impl Manifest {
    /// A manifest with a version and creation time (Unix seconds) and nothing else: no data, no
    /// features, no tiers, default metrics. Fill in the fields a use needs.
    pub fn new(version: impl Into<String>, created_at: Timestamp) -> Manifest {
        Manifest {
            format_version: crate::bundle::FORMAT_VERSION,
            version: version.into(),
            created_at,
            previous_version: None,
            data: DataInfo::default(),
            params: serde_json::Value::Null,
            as_of: String::new(),
            as_of_ts: 0,
            horizon_days: 0,
            churn_definition: ChurnDefinition::NoOrder,
            features: Vec::new(),
            features_left_out: Vec::new(),
            tiers: Vec::new(),
            metrics: Metrics::default(),
            warnings: Vec::new(),
            files: BTreeMap::new(),
            drift_reference: None,
            kinds: KindMapping::default(),
        }
    }

    /// [`Manifest::new`] describing `scorer`: its features with their scaling, its tiers (no
    /// users counted, no profiles) and its churn model as the chosen one. The scoring time
    /// (`as_of`, `as_of_ts`) is left for the caller.
    pub fn for_scorer(
        version: impl Into<String>,
        created_at: Timestamp,
        scorer: &Scorer,
    ) -> Manifest {
        let mut m = Manifest::new(version, created_at);
        m.features = (scorer.features.features.iter().enumerate())
            .map(|(j, f)| FeatureSpec {
                name: f.name().into(),
                transform: f.transform(),
                mean: scorer.scaler.mean.get(j).copied().unwrap_or_default(),
                std: scorer.scaler.std.get(j).copied().unwrap_or(1.0),
            })
            .collect();
        m.tiers = (scorer.tiers.tiers.iter())
            .map(|t| TierEntry {
                id: t.id.clone(),
                name_en: t.name_en.clone(),
                name_zh: t.name_zh.clone(),
                description: t.description.clone(),
                playbook: t.playbook.clone(),
                users: 0,
                share: 0.0,
                churn_rate: None,
                mean_churn_probability: 0.0,
                profile: BTreeMap::new(),
                categories: Vec::new(),
            })
            .collect();
        m.metrics.chosen_model = scorer.churn.name().into();
        m.metrics.k = scorer.tiers.k();
        m
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// sha256 over the input files' bytes.
    pub fingerprint: String,
    pub files: Vec<String>,
    pub events: u64,
    pub users: u64,
    /// The first and the last event's time (`None` for a table without events; RFC 3339 text,
    /// or an empty string, in the file).
    #[serde(with = "optional_time_text")]
    pub first_event: Option<Timestamp>,
    #[serde(with = "optional_time_text")]
    pub last_event: Option<Timestamp>,
    pub bad_rows_skipped: u64,
    pub columns: ColumnsPresent,
    /// Every source kind name seen, its rows and what it became (empty in bundles written
    /// before kind mappings).
    #[serde(default)]
    pub kinds_seen: Vec<KindSeen>,
    /// Rows dropped on purpose by the kind mapping (ignored or skipped kinds).
    #[serde(default)]
    pub kind_rows_dropped: u64,
    /// Refunds in the training data whose order id matched no order (see the refund rules in
    /// `features::aggregate`), as of the bundle's time.
    #[serde(default)]
    pub orphan_refunds: u64,
    /// The category names seen, sorted (the server names interests with them; hashes are
    /// `hash_str` of these). Not written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// The room ids seen, sorted (the server names the rooms of the interests with them; at
    /// most `features::interests::MAX_CATEGORY_NAMES`). Not written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// Rows per channel (`live` includes rows without a channel), when the data has a
    /// `channel` column. Not written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_rows: Vec<(String, u64)>,
    /// Channel values read as `other` (unknown), with rows, most first. Not written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_channels: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    pub transform: Transform,
    pub mean: f64,
    pub std: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeftOut {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierEntry {
    pub id: String,
    pub name_en: String,
    pub name_zh: String,
    pub description: String,
    pub playbook: Vec<String>,
    /// Users in this tier in the scored snapshot.
    pub users: u64,
    pub share: f64,
    /// Observed churn rate on the evaluation snapshot, when evaluated.
    pub churn_rate: Option<f64>,
    pub mean_churn_probability: f64,
    /// Mean of each feature in original units.
    pub profile: BTreeMap<String, f64>,
    /// The categories that characterise the tier: held in the interests of at least 5% of its
    /// users and most over-represented against all users, at most 3: `(category, share of the
    /// tier's users whose interests hold it, lift = that share / the share among all users)`.
    /// Not written when empty (data without categories).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<(String, f64, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    pub name: String,
    pub metrics: BinaryMetrics,
    pub fit_seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The model the bundle serves.
    pub chosen_model: String,
    /// How the metrics were measured (out of time, or held-out users).
    pub evaluation: String,
    pub models: Vec<ModelMetrics>,
    pub calibration: Vec<CalibrationRow>,
    pub k: usize,
    pub k_scores: Vec<(usize, f64)>,
    pub inertia: f64,
    /// Agreement of tiers with ground-truth personas, when the data carried them.
    pub tier_ari: Option<f64>,
    /// Users present in the previous bundle's snapshot, and how many changed tier id.
    pub tier_changes: Option<TierChanges>,
    /// Stability of each candidate k: ARI between the best runs of the two halves of its
    /// seeded runs.
    #[serde(default)]
    pub k_stability: Vec<(usize, f64)>,
    /// Why this k, in a sentence.
    #[serde(default)]
    pub k_reason: String,
    /// How k-means was started (a warm start from the previous bundle, or why not).
    #[serde(default)]
    pub tier_init: String,
    /// Tier changes against the previous bundle, split into model and behaviour changes.
    #[serde(default)]
    pub stability: Option<Stability>,
    /// PSI of this snapshot, under the previous bundle, against that bundle's training
    /// distributions (what the server's drift gauges showed before this retrain).
    #[serde(default)]
    pub drift: Option<DriftFigures>,
}

/// Tier changes against the previous bundle (issue 13).
///
/// - *Model changed*: on this snapshot, every user is scored by the previous bundle and by the
///   new one; the users whose tier id differs moved because the model changed, not because
///   they did. This is what the promotion gate limits.
/// - *Behaviour changed*: for the users in both snapshots, the previous bundle's tier then (at
///   its `as_of`) against its tier now: they moved with their own features.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stability {
    pub previous_version: String,
    pub compared: u64,
    pub model_changed: u64,
    pub model_changed_share: f64,
    pub behaviour_compared: u64,
    pub behaviour_changed: u64,
    pub behaviour_changed_share: f64,
    /// Previous tier (previous bundle, this snapshot) -> new tier (new bundle, this snapshot).
    pub model: TransitionCounts,
    /// Previous tier at the previous snapshot -> previous tier at this one (previous bundle).
    pub behaviour: TransitionCounts,
}

/// Users per (from tier, to tier), by tier id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransitionCounts {
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// `counts[i][j]`: users in `from[i]` then and `to[j]` now.
    pub counts: Vec<Vec<u64>>,
}

impl TransitionCounts {
    /// The moves between different tier ids, largest first: (from, to, users).
    pub fn moves(&self) -> Vec<(&str, &str, u64)> {
        let mut out: Vec<(&str, &str, u64)> = Vec::new();
        for (i, row) in self.counts.iter().enumerate() {
            for (j, &n) in row.iter().enumerate() {
                let (a, b) = (self.from[i].as_str(), self.to[j].as_str());
                if n > 0 && a != b {
                    out.push((a, b, n));
                }
            }
        }
        out.sort_by(|x, y| y.2.cmp(&x.2).then_with(|| (x.0, x.1).cmp(&(y.0, y.1))));
        out
    }

    /// "1,234 active_regulars -> drifting_away, ..." for the `n` largest moves.
    pub fn describe_moves(&self, n: usize) -> String {
        let moves = self.moves();
        let mut parts: Vec<String> = moves
            .iter()
            .take(n)
            .map(|(a, b, c)| format!("{c} {a} -> {b}"))
            .collect();
        if moves.len() > n {
            let rest: u64 = moves[n..].iter().map(|m| m.2).sum();
            parts.push(format!("{rest} in {} other moves", moves.len() - n));
        }
        parts.join(", ")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TierChanges {
    pub compared: u64,
    pub changed: u64,
}

/// A time in the manifest: Unix seconds in memory, `2026-05-01T12:34:56Z` in the file (any RFC 3339
/// offset is read).
mod time_text {
    use crate::features::time::format_rfc3339;
    use crate::features::Timestamp;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339(*ts))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(D::Error::custom)
    }

    pub(super) fn parse(text: &str) -> Result<Timestamp, String> {
        chrono::DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.timestamp())
            .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))
    }
}

/// An optional time in the manifest: `None` is the empty string in the file.
mod optional_time_text {
    use crate::features::time::format_rfc3339;
    use crate::features::Timestamp;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        ts: &Option<Timestamp>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts.map(format_rfc3339).unwrap_or_default())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        super::time_text::parse(&text)
            .map(Some)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_rfc3339_text_and_read_back_from_any_offset_or_empty() {
        let mut m = Manifest::new("v1", 1_790_928_942);
        m.data.first_event = Some(1_767_225_603);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["created_at"], "2026-10-02T08:15:42Z");
        assert_eq!(json["data"]["first_event"], "2026-01-01T00:00:03Z");
        assert_eq!(
            json["data"]["last_event"], "",
            "no event: the empty string, as before"
        );
        let back: Manifest = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, m);

        // Bundles written by earlier builds: an offset form, and empty event times.
        let mut old = json;
        old["created_at"] = "2026-10-02T16:15:42+08:00".into();
        old["data"]["first_event"] = "".into();
        let read: Manifest = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(read.created_at, 1_790_928_942);
        assert_eq!(read.data.first_event, None);

        old["created_at"] = "yesterday".into();
        let err = serde_json::from_value::<Manifest>(old).unwrap_err();
        assert!(err.to_string().contains("not an RFC 3339 time"), "{err}");
    }
}
