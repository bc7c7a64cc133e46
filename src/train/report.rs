//! The training report: one self-contained HTML file with inline SVG charts (no network, no JS).
//!
//! The pipeline fills a [`ReportData`]; [`render`] turns it into HTML. Pure: no I/O here.

use serde::{Deserialize, Serialize};

/// Everything the report shows. Values are in original units unless a field says otherwise.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReportData {
    pub version: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: the time the final model scores users at.
    pub as_of: String,
    pub horizon_days: u32,
    pub data: DataSummary,
    /// Plain-language caveats (too few churners, history too short, ...). Shown first, in a banner.
    pub warnings: Vec<String>,
    /// How the metrics were obtained, e.g. "out of time: trained at 2026-09-01, evaluated at 2026-10-01".
    pub evaluation: String,
    /// Feature names in model order, and the ones left out because the data cannot support them.
    pub features: Vec<String>,
    pub features_left_out: Vec<String>,
    pub tiers: Vec<TierReport>,
    /// Silhouette score per candidate k (empty when k was fixed), and the k used.
    pub k_scores: Vec<(usize, f64)>,
    pub k: usize,
    /// Adjusted Rand index of tiers against known ground-truth personas, when the data has them.
    pub ari: Option<f64>,
    pub models: Vec<ModelReport>,
    /// Calibration of the chosen model on the evaluation set.
    pub calibration: Vec<CalibrationBin>,
    /// Observed churn rate per RFM segment and per lifecycle stage on the evaluation set.
    pub churn_by_segment: Vec<GroupRate>,
    pub churn_by_lifecycle: Vec<GroupRate>,
    /// (feature, importance), importance normalised to sum to 1, largest first.
    pub feature_importance: Vec<(String, f64)>,
    /// Users per risk level in the final scored snapshot: (level, users).
    pub risk_levels: Vec<(String, u64)>,
    /// Present when a previous bundle existed.
    pub transitions: Option<Transitions>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DataSummary {
    pub events: u64,
    pub users: u64,
    pub first_event: String,
    pub last_event: String,
    pub fingerprint: String,
    pub bad_rows_skipped: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TierReport {
    pub id: String,
    pub name_en: String,
    pub name_zh: String,
    pub description: String,
    pub playbook: Vec<String>,
    pub users: u64,
    /// Fraction of all users.
    pub share: f64,
    /// Observed churn rate of this tier's users on the evaluation set, if evaluated.
    pub churn_rate: Option<f64>,
    /// Mean predicted churn probability in the final scored snapshot.
    pub mean_churn_probability: f64,
    /// (feature, centroid value in original units), same order as `ReportData::features`.
    pub profile: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelReport {
    pub name: String,
    pub chosen: bool,
    pub roc_auc: f64,
    pub pr_auc: f64,
    pub brier: f64,
    pub log_loss: f64,
    /// Churn rate in the top decile of predicted risk divided by the overall churn rate.
    pub lift_top_decile: f64,
    /// ROC curve points (false positive rate, true positive rate), from (0,0) to (1,1).
    pub roc: Vec<(f64, f64)>,
    pub fit_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub lo: f64,
    pub hi: f64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupRate {
    pub group: String,
    pub users: u64,
    pub churn_rate: f64,
}

/// How many users moved from each previous tier to each new one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Transitions {
    pub previous_version: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// counts[i][j]: users in previous tier `from[i]` now in tier `to[j]`.
    pub counts: Vec<Vec<u64>>,
    /// Users present in both, and how many of them changed tier id.
    pub compared: u64,
    pub changed: u64,
}

/// Renders the report as one self-contained HTML document.
pub fn render(data: &ReportData) -> String {
    let _ = data;
    String::new()
}
