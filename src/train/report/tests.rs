//! The report's tests: a realistic sample, its non-finite and flat variants, and an empty one.

use super::fmt::int;
use super::*;
use crate::bundle::manifest::{DataInfo, FeatureSpec, LeftOut, Metrics, ModelMetrics};
use crate::features::Transform;
use crate::model::metrics::{BinaryMetrics, CalibrationRow};

const FEATURES: [&str; 12] = [
    "recency_days",
    "frequency",
    "monetary_total",
    "monetary_avg",
    "tenure_days",
    "days_since_activity",
    "watch_minutes",
    "sessions",
    "comments",
    "likes",
    "trend",
    "categories",
];

/// (id, English name, Chinese name, users, churn rate, profile in `FEATURES` order)
type TierRow = (
    &'static str,
    &'static str,
    &'static str,
    u64,
    f64,
    [f64; 12],
);

const TIERS: [TierRow; 6] = [
    (
        "core_fans",
        "Core fans",
        "核心铁粉",
        812,
        0.04,
        [
            3.2, 14.5, 2350.8, 162.1, 410.0, 0.8, 2210.0, 95.0, 48.2, 130.5, 0.12, 5.4,
        ],
    ),
    (
        "active_regulars",
        "Active regulars",
        "活跃常客",
        2140,
        0.11,
        [
            9.8, 6.2, 780.4, 125.9, 300.0, 2.1, 840.0, 41.0, 9.1, 33.0, 0.05, 3.8,
        ],
    ),
    (
        "potential_new",
        "Potential new customers",
        "潜力新客",
        1630,
        0.32,
        [
            12.1, 1.1, 89.0, 80.9, 18.0, 4.0, 260.0, 12.0, 2.2, 8.4, 0.41, 1.9,
        ],
    ),
    (
        "silent_onlookers",
        "Silent onlookers",
        "沉默围观者",
        2890,
        0.47,
        [
            48.0, 0.4, 22.5, 56.3, 220.0, 6.5, 610.0, 30.0, 0.1, 0.6, -0.08, 2.4,
        ],
    ),
    (
        "bargain_hunters",
        "Bargain hunters",
        "价格敏感型",
        1210,
        0.29,
        [
            15.5, 5.1, 210.2, 41.2, 260.0, 5.0, 150.0, 9.0, 0.7, 2.5, -0.02, 2.9,
        ],
    ),
    (
        "dormant",
        "Dormant",
        "沉睡用户",
        3318,
        0.86,
        [
            121.0, 0.9, 60.1, 66.8, 380.0, 97.0, 20.0, 1.0, 0.0, 0.1, -0.69, 1.1,
        ],
    ),
];

fn roc(strength: f64) -> Vec<(f64, f64)> {
    (0..=60)
        .map(|i| f64::from(i) / 60.0)
        .map(|x| (x, x.powf(1.0 / strength)))
        .collect()
}

fn group(group: &str, users: u64, churn_rate: f64) -> GroupRate {
    GroupRate {
        group: group.to_string(),
        users,
        churn_rate,
    }
}

/// A report's inputs: the manifest and the extras.
#[derive(Clone)]
struct Sample {
    m: Manifest,
    x: ReportExtras,
}

impl Sample {
    fn html(&self) -> String {
        render(&self.m, &self.x)
    }
}

fn model(
    name: &str,
    roc_auc: f64,
    pr_auc: f64,
    brier: f64,
    log_loss: f64,
    lift: f64,
    fit_seconds: f64,
) -> ModelMetrics {
    ModelMetrics {
        name: name.to_string(),
        metrics: BinaryMetrics {
            n: 12_000,
            positives: 4_000,
            roc_auc,
            pr_auc,
            brier,
            log_loss,
            lift_top_decile: lift,
        },
        fit_seconds,
    }
}

/// A realistic report: 6 tiers, 2 models, 10 calibration bins, transitions.
fn sample() -> Sample {
    let total: u64 = TIERS.iter().map(|t| t.3).sum();
    let tiers = TIERS
        .iter()
        .enumerate()
        .map(|(i, &(id, en, zh, users, churn, profile))| TierEntry {
            id: id.to_string(),
            name_en: en.to_string(),
            name_zh: zh.to_string(),
            description: format!(
                "{en}: tier {} of the population, described in plain words for the retention team.",
                i + 1
            ),
            playbook: vec![
                "Exclusive community and priority co-streaming".to_string(),
                "New-product trials before launch".to_string(),
                format!("Weekly check-in for {zh}"),
            ],
            users,
            share: users as f64 / total as f64,
            churn_rate: Some(churn),
            mean_churn_probability: (churn * 1.05 + 0.01).min(0.99),
            profile: FEATURES
                .iter()
                .zip(profile)
                .map(|(f, v)| (f.to_string(), v))
                .collect(),
            categories: if i == 0 {
                vec![("beauty".to_string(), 0.62, 2.4)]
            } else {
                Vec::new()
            },
        })
        .collect();
    let calibration = (0..10u32)
        .map(|i| {
            let lo = f64::from(i) / 10.0;
            let mean = lo + 0.05;
            CalibrationRow {
                lo,
                hi: lo + 0.1,
                mean_predicted: mean,
                observed_rate: (mean + 0.04 * (f64::from(i) - 4.5) / 4.5).clamp(0.0, 1.0),
                count: [3100, 2200, 1400, 900, 700, 650, 600, 720, 900, 1830][i as usize],
            }
        })
        .collect();
    let ids: Vec<String> = TIERS.iter().map(|t| t.0.to_string()).collect();
    let counts = (0..6u64)
        .map(|i| {
            (0..6u64)
                .map(|j| {
                    if i == j {
                        600 + 90 * i
                    } else {
                        (i * 7 + j * 13) % 40
                    }
                })
                .collect()
        })
        .collect::<Vec<Vec<u64>>>();
    let compared: u64 = counts.iter().flatten().sum();
    let stayed: u64 = (0..6).map(|i| counts[i][i]).sum();
    let mut m = Manifest::new("2026-10-01T00-00-00Z-3f9c2a", 1_790_928_942);
    m.as_of_ts = 1_790_812_800; // 2026-10-01T00:00:00Z
    m.as_of = "2026-10-01T00:00:00Z".to_string();
    m.horizon_days = 30;
    m.data = DataInfo {
        events: 4_812_331,
        users: total,
        first_event: Some(1_767_225_603),
        last_event: Some(1_790_812_798),
        fingerprint: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            .to_string(),
        bad_rows_skipped: 17,
        ..DataInfo::default()
    };
    m.warnings = vec![
        "Only 214 churners in the evaluation window: metrics are noisy.".to_string(),
        "History shorter than 3 horizons: tenure features are truncated.".to_string(),
    ];
    m.features = FEATURES
        .iter()
        .map(|f| FeatureSpec {
            name: f.to_string(),
            transform: Transform::Log1p,
            mean: 0.0,
            std: 1.0,
        })
        .collect();
    m.features_left_out = vec![
        LeftOut {
            name: "shares".to_string(),
            reason: "no share events".to_string(),
        },
        LeftOut {
            name: "rooms".to_string(),
            reason: "no room_id column".to_string(),
        },
    ];
    m.tiers = tiers;
    m.metrics = Metrics {
        chosen_model: "gradient_boosting".to_string(),
        evaluation: "out of time: trained at 2026-08-01, evaluated at 2026-09-01 (30-day labels)"
            .to_string(),
        models: vec![
            model(
                "logistic_regression",
                0.781,
                0.612,
                0.1642,
                0.4983,
                2.21,
                0.84,
            ),
            model(
                "gradient_boosting",
                0.846,
                0.703,
                0.1388,
                0.4321,
                2.74,
                12.6,
            ),
        ],
        calibration,
        k: 6,
        k_scores: (3..=10)
            .map(|k| (k, 0.21 + 0.03 * (6.0 - (k as f64 - 6.0).abs()) / 6.0))
            .collect(),
        tier_ari: Some(0.812),
        ..Metrics::default()
    };
    let x = ReportExtras {
        rocs: vec![roc(2.4), roc(3.6)],
        churn_by_segment: vec![
            group("important_value 重要价值", 640, 0.05),
            group("important_develop 重要发展", 820, 0.14),
            group("important_keep 重要保持", 510, 0.31),
            group("important_retain 重要挽留", 430, 0.58),
            group("general_value 一般价值", 900, 0.12),
            group("general_develop 一般发展", 1900, 0.27),
            group("general_keep 一般保持", 760, 0.44),
            group("general_retain 一般挽留", 1300, 0.71),
            group("non_buyer 未购买", 4740, 0.52),
        ],
        churn_by_lifecycle: vec![
            group("new 新用户", 1500, 0.38),
            group("mature_active 成熟活跃用户", 5200, 0.09),
            group("silent 沉默用户", 2400, 0.46),
            group("about_to_churn 濒临流失", 1600, 0.77),
            group("churned 流失用户", 1300, 0.93),
        ],
        feature_importance: vec![
            ("days_since_activity".to_string(), 0.31),
            ("recency_days".to_string(), 0.22),
            ("trend".to_string(), 0.14),
            ("frequency".to_string(), 0.09),
            ("watch_minutes".to_string(), 0.07),
            ("monetary_total".to_string(), 0.06),
            ("tenure_days".to_string(), 0.05),
            ("sessions".to_string(), 0.03),
            ("comments".to_string(), 0.02),
            ("likes".to_string(), 0.01),
        ],
        risk: RiskThresholds::default(),
        risk_levels: vec![
            (RiskLevel::Low, 5200),
            (RiskLevel::Medium, 3100),
            (RiskLevel::High, 3700),
        ],
        transitions: Some(Transitions {
            previous_version: "2026-09-01T00-00-00Z-77ab01".to_string(),
            from: ids.clone(),
            to: ids,
            counts,
            compared,
            changed: compared - stayed,
        }),
        backtest: None,
    };
    Sample { m, x }
}

/// Every numeric SVG attribute value in `html`, with the attribute name.
fn svg_numeric_attributes(html: &str) -> Vec<(String, String)> {
    const NUMERIC: [&str; 15] = [
        "x",
        "y",
        "x1",
        "x2",
        "y1",
        "y2",
        "cx",
        "cy",
        "r",
        "width",
        "height",
        "d",
        "viewBox",
        "transform",
        "points",
    ];
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<svg") {
        let end = rest[start..]
            .find("</svg>")
            .map_or(rest.len(), |e| start + e);
        let svg = &rest[start..end];
        for tag in svg.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap_or("");
            for attr in tag.split("\" ").flat_map(|a| a.split_whitespace().last()) {
                if let Some((name, value)) = attr.split_once("=\"") {
                    if NUMERIC.contains(&name) {
                        found.push((
                            name.to_string(),
                            value.trim_end_matches(['"', '/']).to_string(),
                        ));
                    }
                }
            }
            // Values with spaces (d, viewBox, transform) are split above; take them whole too.
            for name in ["d", "viewBox", "transform"] {
                if let Some(i) = tag.find(&format!(" {name}=\"")) {
                    let v = &tag[i + name.len() + 3..];
                    found.push((
                        name.to_string(),
                        v.split('"').next().unwrap_or("").to_string(),
                    ));
                }
            }
        }
        rest = &rest[end..];
    }
    found
}

fn assert_no_nan_or_inf_in_svg(html: &str) {
    let attrs = svg_numeric_attributes(html);
    assert!(!attrs.is_empty(), "expected some SVG attributes");
    for (name, value) in attrs {
        let lower = value.to_ascii_lowercase();
        assert!(
            !lower.contains("nan") && !lower.contains("inf"),
            "{name}=\"{value}\""
        );
    }
}

fn assert_balanced(html: &str) {
    for tag in [
        "svg", "table", "section", "figure", "div", "ul", "ol", "tr", "article",
    ] {
        let open =
            html.matches(&format!("<{tag}>")).count() + html.matches(&format!("<{tag} ")).count();
        let close = html.matches(&format!("</{tag}>")).count();
        assert_eq!(
            open, close,
            "<{tag}> opened {open} times, closed {close} times"
        );
    }
}

#[test]
fn report_is_one_well_formed_self_contained_document() {
    let html = sample().html();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<meta charset=\"utf-8\">"));
    assert!(html.trim_end().ends_with("</html>"));
    assert_balanced(&html);
    assert!(
        html.matches("<svg").count() >= 8,
        "tier sizes, k, ROC, calibration, 2 rate charts, importance, risk"
    );
    assert!(!html.contains("<script"), "no JavaScript");
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("url("),
        "no network references"
    );
    assert_no_nan_or_inf_in_svg(&html);
}

#[test]
fn report_shows_every_section_in_order() {
    let html = sample().html();
    let at = |s: &str| html.find(s).unwrap_or_else(|| panic!("missing {s}"));
    assert!(at("<header>") < at("id=\"tiers\""));
    assert!(at("id=\"tiers\"") < at("id=\"churn\""));
    assert!(at("id=\"churn\"") < at("id=\"transitions\""));
    assert!(at("id=\"transitions\"") < at("id=\"features\""));
    for tier in TIERS {
        assert!(html.contains(tier.2), "missing Chinese name {}", tier.2);
        assert!(html.contains(tier.1), "missing English name {}", tier.1);
    }
    assert!(html.contains("2 warnings"));
    assert!(
        html.contains(">9f86d081884c<"),
        "fingerprint shortened to 12 hex chars"
    );
    assert!(html.contains("4,812,331"));
    assert!(html.contains("class=\"chosen\""));
    assert!(html.contains("chosen k = 6"));
    assert!(html.contains("not supported by the data"));
    assert!(
        html.contains("2026-10-01 00:00 UTC"),
        "as of, from the typed time"
    );
    let t = sample().x.transitions.unwrap_or_default();
    let changed = format!(
        "<b>{}</b> of <b>{}</b> users changed tier",
        int(t.changed),
        int(t.compared)
    );
    assert!(html.contains(&changed), "{changed}");
}

#[test]
fn report_colours_risk_by_the_models_risk_levels() {
    let mut s = sample();
    // One tier just under the default medium threshold (0.4), one just under high (0.7).
    s.m.tiers[0].mean_churn_probability = 0.35;
    s.m.tiers[1].mean_churn_probability = 0.65;
    let html = s.html();
    assert!(
        html.contains("<span class=\"v lo\">35.0%</span>"),
        "0.35 is low"
    );
    assert!(
        html.contains("<span class=\"v mid\">65.0%</span>"),
        "0.65 is medium"
    );
    for (level, color) in [
        ("low", "#59a14f"),
        ("medium", "#f28e2b"),
        ("high", "#e15759"),
    ] {
        assert!(html.contains(level), "missing risk level {level}");
        assert!(html.contains(color), "missing colour {color} of {level}");
    }
    // Thresholds of another model move the colours with them.
    s.x.risk = RiskThresholds {
        medium: 0.3,
        high: 0.6,
    };
    let html = s.html();
    assert!(html.contains("<span class=\"v mid\">35.0%</span>"));
    assert!(html.contains("<span class=\"v hi\">65.0%</span>"));
}

#[test]
fn report_escapes_text_from_the_data() {
    let mut s = sample();
    s.m.tiers[0].name_en = "<script>alert(1)</script>".to_string();
    s.m.tiers[1].name_zh = "\"><img src=x onerror=alert(1)>".to_string();
    s.m.features[0].name = "a<b>&c".to_string();
    s.m.warnings.push("<b>bold</b> & co".to_string());
    let html = s.html();
    assert!(!html.contains("<script>"));
    assert!(!html.contains("<img"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&lt;b&gt;bold&lt;/b&gt; &amp; co"));
    assert!(!html.contains("a<b>&c"));
    assert_balanced(&html);
}

#[test]
fn report_without_warnings_says_so_quietly() {
    let mut s = sample();
    s.m.warnings.clear();
    let html = s.html();
    assert!(html.contains("No warnings"));
    assert!(!html.contains("class=\"banner\""));
}

/// The sample with NaN and infinities wherever a number can go.
fn non_finite() -> Sample {
    let mut s = sample();
    for t in &mut s.m.tiers {
        t.share = f64::NAN;
        t.churn_rate = Some(f64::NAN);
        t.mean_churn_probability = f64::INFINITY;
        for v in t.profile.values_mut() {
            *v = f64::NAN;
        }
    }
    for m in &mut s.m.metrics.models {
        m.metrics.roc_auc = f64::NAN;
        m.metrics.brier = f64::NEG_INFINITY;
        m.fit_seconds = f64::NAN;
    }
    for roc in &mut s.x.rocs {
        roc.insert(20, (f64::NAN, 0.5));
        roc.insert(40, (0.5, f64::INFINITY));
    }
    for b in s.m.metrics.calibration.iter_mut().step_by(2) {
        b.mean_predicted = f64::NAN;
        b.lo = f64::NAN;
    }
    s.m.metrics.calibration[3].observed_rate = f64::INFINITY;
    s.x.churn_by_segment[0].churn_rate = f64::NAN;
    s.x.churn_by_lifecycle
        .iter_mut()
        .for_each(|g| g.churn_rate = f64::NAN);
    s.x.feature_importance[0].1 = f64::INFINITY;
    s.m.metrics
        .k_scores
        .iter_mut()
        .step_by(3)
        .for_each(|k| k.1 = f64::NAN);
    s.m.metrics.tier_ari = Some(f64::NAN);
    s
}

/// The sample with nothing to compare: zero users, equal profiles, one model without a curve.
fn flat() -> Sample {
    let mut s = sample();
    for t in &mut s.m.tiers {
        t.users = 0;
        t.share = 0.0;
        t.profile.values_mut().for_each(|v| *v = 7.0);
    }
    s.m.metrics.models.truncate(1);
    s.x.rocs = vec![Vec::new()];
    s.m.metrics.calibration.iter_mut().for_each(|b| b.count = 0);
    s.m.metrics.k_scores = vec![(6, 0.25)];
    s.x.feature_importance = vec![("recency_days".to_string(), 0.0)];
    s.x.risk_levels = vec![(RiskLevel::Low, 0)];
    if let Some(t) = &mut s.x.transitions {
        t.counts = vec![vec![0; 6]; 2]; // fewer rows than `from`
        t.compared = 0;
        t.changed = 0;
    }
    s
}

/// Nothing at all: an empty manifest and no extras.
fn empty() -> Sample {
    Sample {
        m: Manifest::new("", 0),
        x: ReportExtras::default(),
    }
}

#[test]
fn report_never_writes_nan_or_infinity_into_svg_attributes() {
    let html = non_finite().html();
    assert_no_nan_or_inf_in_svg(&html);
    assert!(
        !html.contains("NaN") && !html.contains("inf<"),
        "non-finite numbers read as n/a"
    );
    assert!(html.contains("n/a"));
    assert_balanced(&html);
}

#[test]
fn report_survives_flat_and_empty_data() {
    let html = flat().html();
    assert_balanced(&html);
    assert_no_nan_or_inf_in_svg(&html);
    assert!(html.contains("<b>0</b> of <b>0</b> users changed tier (<b>0.0%</b>)"));
    assert!(!html.contains("NaN"));
}

#[test]
fn default_report_renders_without_panicking() {
    let html = empty().html();
    assert!(html.contains("<meta charset=\"utf-8\">"));
    assert!(html.contains("No tiers"));
    assert!(html.contains("No models"));
    assert!(!html.contains("id=\"transitions\""));
    assert_balanced(&html);
    assert!(!html.contains("NaN"));
}

#[test]
fn report_shows_stability_split_by_cause_and_drift() {
    use crate::bundle::manifest::{Stability, TransitionCounts};
    use crate::model::drift::DriftFigures;
    let mut s = sample();
    let ids = vec!["core_fans".to_string(), "dormant".to_string()];
    let counts = |a, b| TransitionCounts {
        from: ids.clone(),
        to: ids.clone(),
        counts: vec![vec![900, a], vec![b, 100]],
    };
    s.m.metrics.k_reason = "k = 6 kept from the previous bundle".into();
    s.m.metrics.tier_init = "warm start from the previous bundle's centroids".into();
    s.m.metrics.k_stability = vec![(6, 0.97)];
    s.m.metrics.stability = Some(Stability {
        previous_version: "v0".into(),
        compared: 1000,
        model_changed: 12,
        model_changed_share: 0.012,
        behaviour_compared: 1000,
        behaviour_changed: 40,
        behaviour_changed_share: 0.04,
        model: counts(10, 2),
        behaviour: counts(30, 10),
    });
    s.m.metrics.drift = Some(DriftFigures {
        users: 1000,
        features: vec![("recency_days".into(), 0.31)],
        churn_probability: 0.02,
        tier_shares: 0.01,
    });
    let html = s.html();
    assert_balanced(&html);
    assert!(html.contains("id=\"stability\""));
    assert!(html.contains("<b>12</b> of 1,000 users (1.20%) changed tier because the <b>model</b>"));
    assert!(html.contains("<b>40</b> of 1,000 (4.00%) moved with their own <b>behaviour</b>"));
    assert!(html.contains("kept from the previous bundle"));
    assert!(
        html.contains("<td>recency_days</td><td>0.310 ⚠</td>"),
        "drift over 0.25 is flagged"
    );
    assert!(!empty().html().contains("id=\"stability\""));
}

/// Every sample report (the full one, non-finite figures, a flat model, no users) is one
/// complete document. With `TIERING_REPORT_SAMPLES=DIR` set, they are also written there as
/// report-<name>.html for a look in a browser
/// (`TIERING_REPORT_SAMPLES=/tmp cargo test --lib report::tests::every_sample`).
#[test]
fn every_sample_report_is_a_complete_document() {
    let out = std::env::var_os("TIERING_REPORT_SAMPLES").map(std::path::PathBuf::from);
    for (name, s) in [
        ("sample", sample()),
        ("non-finite", non_finite()),
        ("flat", flat()),
        ("empty", empty()),
    ] {
        let html = s.html();
        assert!(html.starts_with("<!DOCTYPE html>"), "{name}");
        assert_eq!(html.matches("<html").count(), 1, "{name}");
        assert!(html.trim_end().ends_with("</html>"), "{name}");
        assert_balanced(&html);
        if let Some(dir) = &out {
            let path = dir.join(format!("report-{name}.html"));
            std::fs::write(&path, html).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("wrote {}", path.display());
        }
    }
}

#[test]
fn report_names_the_categories_that_characterise_a_tier() {
    let html = sample().html();
    assert!(html.contains("Characteristic categories"), "the heading");
    assert!(
        html.contains("beauty <span class=\"l\">62% of the tier's users, 2.4× all users</span>"),
        "the category with its share and lift"
    );
    assert_eq!(
        html.matches("Characteristic categories").count(),
        1,
        "only tiers with categories show the list"
    );
    assert_balanced(&html);
}
