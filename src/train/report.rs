//! The training report: one self-contained HTML file with inline SVG charts (no network, no JS).
//!
//! The pipeline fills a [`ReportData`]; [`render`] turns it into HTML. Pure: no I/O here.
//!
//! Layout: this file holds the data types and the page (header, tiers, churn model, tier
//! transitions, features); `fmt` escapes text and formats numbers ("n/a" for NaN); `svg` holds
//! the chart primitives (scales, ticks, a bar chart and a multi-series line chart) that every
//! chart on the page is built from, and never writes NaN or infinity into an attribute.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// `write!` into a `String`, which cannot fail.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

mod fmt;
mod svg;

use fmt::{breakable, escape, feature_value, heat, int, num, pct, position, ratio, text_or_dash};
use svg::{
    bar_chart, line_chart, Bar, BarChart, Fmt, Legend, LineChart, Series, Strip, INK, PALETTE,
};

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
    /// `counts[i][j]`: users in previous tier `from[i]` now in tier `to[j]`.
    pub counts: Vec<Vec<u64>>,
    /// Users present in both, and how many of them changed tier id.
    pub compared: u64,
    pub changed: u64,
}

/// Renders the report as one self-contained HTML document.
///
/// Inline CSS and SVG only: no scripts, fonts, images or links to fetch, so the file can be
/// mailed, archived with the bundle and printed. Every piece of text from `data` is escaped.
pub fn render(data: &ReportData) -> String {
    let mut out = String::with_capacity(96 * 1024);
    let title = if data.version.trim().is_empty() {
        "Training report".to_string()
    } else {
        format!("Training report · {}", data.version)
    };
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        escape(&title)
    );
    header(&mut out, data);
    tiers_section(&mut out, data);
    churn_section(&mut out, data);
    if let Some(t) = &data.transitions {
        transitions_section(&mut out, t, &data.tiers);
    }
    features_section(&mut out, data);
    w!(
        out,
        "<footer>Generated by tiering {} · self-contained: no scripts, no network.</footer>\n</main>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION")
    );
    out
}

const STYLE: &str = r#"
:root{--ink:#1d2330;--muted:#5b6475;--line:#e3e6ec;--bg:#f5f6f8;--accent:#2f6db5}
*{box-sizing:border-box}
html{-webkit-print-color-adjust:exact;print-color-adjust:exact}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Helvetica Neue",Arial,"PingFang SC","Hiragino Sans GB","Noto Sans CJK SC","Source Han Sans SC","Microsoft YaHei",sans-serif}
main{max-width:1120px;margin:0 auto;padding:28px 28px 40px}
h1{font-size:26px;margin:2px 0 10px;line-height:1.2}
h2{font-size:20px;margin:40px 0 14px;padding-bottom:6px;border-bottom:2px solid var(--ink)}
h3{font-size:15px;margin:24px 0 8px}
h4{font-size:12px;margin:12px 0 4px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:.92em}
.eyebrow{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.08em}
.facts{display:flex;flex-wrap:wrap;gap:10px 32px;margin:0 0 10px;padding:0}
.facts div{display:flex;flex-direction:column}
.facts dt{font-size:11px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.facts dd{margin:0;font-size:15px;font-weight:600}
.datasum{margin:0;padding:8px 12px;background:#fff;border:1px solid var(--line);border-radius:8px}
.datasum b{font-weight:600}.sep{color:#aab1bd;margin:0 6px}
.banner{margin:14px 0 0;background:#fff4d6;border:1px solid #f0c36d;border-left:6px solid #e39b00;border-radius:8px;padding:10px 16px;color:#5a3b00}
.banner strong{display:block;font-size:15px;margin-bottom:2px}.banner ul{margin:4px 0 0;padding-left:20px}
.nowarn{margin:10px 0 0;color:var(--muted);font-size:13px}
.lede{margin:0 0 12px}.note{color:var(--muted);font-size:12.5px;margin:4px 0 8px}
.empty{color:var(--muted);font-style:italic;margin:6px 0}
figure{margin:0 0 14px;background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px;break-inside:avoid}
figcaption{font-weight:600;margin-bottom:2px}figcaption .note{display:block;font-weight:400;margin:0 0 6px}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(430px,100%),1fr));gap:14px;margin-bottom:14px}
.figs figure{margin:0}
svg.chart{display:block;max-width:100%;height:auto}figure.wide svg.chart{width:100%}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(330px,100%),1fr));gap:14px;margin:14px 0}
.card{background:#fff;border:1px solid var(--line);border-top:5px solid var(--c);border-radius:8px;padding:12px 16px;break-inside:avoid}
.card .name{font-size:16px;font-weight:700}.card .zh{font-weight:600;margin-left:6px}
.card .id{color:var(--muted);font-size:12px}.card p{margin:6px 0}
.card ul{margin:2px 0 0;padding-left:18px}.card li{margin:1px 0}
.kpis{display:grid;grid-template-columns:repeat(3,1fr);gap:8px;margin:10px 0 4px;padding:8px 0;border-top:1px solid var(--line);border-bottom:1px solid var(--line)}
.kpis .v{display:block;font-size:18px;font-weight:700;font-variant-numeric:tabular-nums}
.kpis .l{display:block;font-size:11px;color:var(--muted);line-height:1.3}
.lo{color:#2e7d32}.mid{color:#b26a00}.hi{color:#c62828}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;background:var(--c)}
.scroll{overflow-x:auto;margin-bottom:8px}
table{border-collapse:collapse;width:100%;background:#fff;font-variant-numeric:tabular-nums;font-size:13px;border:1px solid var(--line)}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:right;vertical-align:middle}
th:first-child,td:first-child{text-align:left}
thead th{font-size:12px;color:var(--muted);font-weight:600;border-bottom:2px solid #cdd3dc;vertical-align:bottom;background:#fafbfc}
tbody th{font-weight:600;white-space:nowrap}
tr.chosen td,tr.chosen th{background:#e8f1fc}
td.best{font-weight:700}
.badge{display:inline-block;font-size:10.5px;font-weight:700;color:#fff;background:var(--accent);border-radius:999px;padding:0 7px;margin-left:6px;vertical-align:1px;text-transform:uppercase;letter-spacing:.04em}
table.profile{font-size:12.5px}table.calib thead th{white-space:nowrap}table.profile th,table.profile td{padding:5px 6px}
table.profile tbody th{white-space:normal;min-width:120px}
.kbox{display:flex;flex-direction:column;justify-content:center;gap:10px}
.big{font-size:30px;font-weight:700;line-height:1.1}
table.matrix{table-layout:fixed}table.matrix thead th:first-child{width:170px}
table.matrix td.stay{outline:2px solid var(--ink);outline-offset:-2px;font-weight:700}
table.matrix td.total,table.matrix th.total{color:var(--muted);background:#fafbfc}
.sub{display:block;font-size:11px;color:var(--muted);font-weight:400}
.chips{list-style:none;margin:4px 0 8px;padding:0;display:flex;flex-wrap:wrap;gap:6px}
.chips li{background:#fff;border:1px solid var(--line);border-radius:999px;padding:1px 11px;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.chips li i{font-style:normal;color:var(--muted);margin-right:5px}
.chips.off li{background:#f2f3f5;color:var(--muted)}.chips.off s{text-decoration-color:#9aa3b2}
.chips .why{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",Arial,sans-serif;font-size:12px}
footer{margin-top:40px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:10px}
@media print{body{background:#fff;font-size:12px}main{max-width:none;padding:0}.scroll{overflow:visible}h2{break-after:avoid;margin-top:24px}h3{break-after:avoid}figure,.card,table,.banner{break-inside:avoid}.figs{grid-template-columns:1fr 1fr}.cards{grid-template-columns:1fr 1fr}#churn,#transitions{break-before:page}}
@page{margin:12mm}
"#;

/// Tier colours follow tier order, so a tier is the same colour in every chart and card.
fn tier_color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// "core fans 核心铁粉", falling back to the id.
fn tier_label(t: &TierReport) -> String {
    let name = format!("{} {}", t.name_en.trim(), t.name_zh.trim());
    let name = name.trim();
    if name.is_empty() {
        t.id.clone()
    } else {
        name.to_string()
    }
}

/// An RFC 3339 time as "2026-10-02 08:15 UTC"; anything else is shown as given.
fn when(s: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(s.trim()) {
        Ok(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M UTC")
            .to_string(),
        Err(_) => text_or_dash(s),
    }
}

/// A time or date shown as its day: "2026-10-02".
fn day(s: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(s.trim()) {
        Ok(t) => t.with_timezone(&chrono::Utc).format("%Y-%m-%d").to_string(),
        Err(_) => text_or_dash(s),
    }
}

/// CSS class colouring a churn probability or rate: green, amber, red.
fn risk_class(p: f64) -> &'static str {
    if !p.is_finite() {
        ""
    } else if p < 0.3 {
        "lo"
    } else if p < 0.6 {
        "mid"
    } else {
        "hi"
    }
}

fn risk_color(level: &str, i: usize) -> &'static str {
    let l = level.to_ascii_lowercase();
    if l.contains("low") {
        "#59a14f"
    } else if l.contains("critical")
        || (l.contains("high") && (l.contains("very") || l.contains("extreme")))
    {
        "#a4161a"
    } else if l.contains("high") {
        "#e15759"
    } else if l.contains("med") || l.contains("moderate") {
        "#f28e2b"
    } else {
        PALETTE[i % PALETTE.len()]
    }
}

fn seconds(s: f64) -> String {
    if !s.is_finite() {
        num(s, 0)
    } else if s < 10.0 {
        format!("{} s", num(s, 2))
    } else if s < 120.0 {
        format!("{} s", num(s, 1))
    } else {
        format!("{} min {} s", num((s / 60.0).floor(), 0), num(s % 60.0, 0))
    }
}

fn header(out: &mut String, d: &ReportData) {
    w!(
        out,
        "<header>\n<div class=\"eyebrow\">tiering · training report</div>\n<h1>Model <span class=\"mono\">{}</span></h1>\n\
         <dl class=\"facts\"><div><dt>Created</dt><dd>{}</dd></div><div><dt>Scored as of</dt><dd>{}</dd></div>\
         <div><dt>Churn horizon</dt><dd>{} days</dd></div><div><dt>Tiers</dt><dd>{}</dd></div></dl>\n",
        text_or_dash(&d.version),
        when(&d.created_at),
        when(&d.as_of),
        d.horizon_days,
        d.tiers.len()
    );
    let s = &d.data;
    let fp: String = s
        .fingerprint
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    let sep = "<span class=\"sep\">·</span>";
    w!(
        out,
        "<p class=\"datasum\">Data: <b>{}</b> events{sep}<b>{}</b> users{sep}{} → {}{sep}<b>{}</b> bad rows skipped{sep}fingerprint <code title=\"{}\">{}</code></p>\n",
        int(s.events),
        int(s.users),
        day(&s.first_event),
        day(&s.last_event),
        int(s.bad_rows_skipped),
        escape(&s.fingerprint),
        text_or_dash(&fp)
    );
    if d.warnings.is_empty() {
        out.push_str("<p class=\"nowarn\">✓ No warnings</p>\n");
    } else {
        let n = d.warnings.len();
        w!(
            out,
            "<div class=\"banner\" role=\"alert\"><strong>⚠ {n} warning{}: read before trusting the numbers below</strong><ul>",
            if n == 1 { "" } else { "s" }
        );
        for warning in &d.warnings {
            w!(out, "<li>{}</li>", escape(warning));
        }
        out.push_str("</ul></div>\n");
    }
    out.push_str("</header>\n");
}

fn tiers_section(out: &mut String, d: &ReportData) {
    out.push_str("<section id=\"tiers\">\n<h2>Tiers</h2>\n");
    if d.tiers.is_empty() {
        out.push_str("<p class=\"empty\">No tiers in this report.</p>\n");
    } else {
        let total: u64 = d.tiers.iter().map(|t| t.users).sum();
        w!(
            out,
            "<p class=\"lede\">{} tiers learned by k-means over scaled RFM, behaviour and lifecycle features, covering {} users.</p>\n",
            d.tiers.len(),
            int(total)
        );
        let bars: Vec<Bar> = d
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| Bar {
                label: tier_label(t),
                value: t.users as f64,
                text: format!("{} · {}", int(t.users), pct(t.share, 1)),
                color: tier_color(i).to_string(),
            })
            .collect();
        let chart = bar_chart(
            &BarChart {
                label: "Users per tier",
                width: 860.0,
                fmt: Fmt::Int,
                ..BarChart::default()
            },
            &bars,
        );
        w!(out, "<figure class=\"wide\"><figcaption>Tier sizes<span class=\"note\">users and share of all users</span></figcaption>{chart}</figure>\n");
        out.push_str("<div class=\"cards\">\n");
        for (i, t) in d.tiers.iter().enumerate() {
            tier_card(out, t, tier_color(i));
        }
        out.push_str("</div>\n");
        profile_table(out, d);
    }
    k_selection(out, d);
    out.push_str("</section>\n");
}

fn tier_card(out: &mut String, t: &TierReport, color: &str) {
    w!(
        out,
        "<article class=\"card\" style=\"--c:{color}\"><div class=\"name\"><span class=\"swatch\"></span>{}<span class=\"zh\">{}</span></div>\
         <div class=\"id\">id <code>{}</code></div>",
        escape(t.name_en.trim()),
        escape(t.name_zh.trim()),
        text_or_dash(&t.id)
    );
    if !t.description.trim().is_empty() {
        w!(out, "<p>{}</p>", escape(&t.description));
    }
    let churn = t.churn_rate.unwrap_or(f64::NAN);
    w!(
        out,
        "<div class=\"kpis\"><div><span class=\"v\">{}</span><span class=\"l\">users ({} of all)</span></div>\
         <div><span class=\"v {}\">{}</span><span class=\"l\">observed churn{}</span></div>\
         <div><span class=\"v {}\">{}</span><span class=\"l\">mean predicted churn probability</span></div></div>",
        int(t.users),
        pct(t.share, 1),
        risk_class(churn),
        pct(churn, 1),
        if t.churn_rate.is_none() { " (not evaluated)" } else { " (evaluation set)" },
        risk_class(t.mean_churn_probability),
        pct(t.mean_churn_probability, 1)
    );
    if !t.playbook.is_empty() {
        out.push_str("<h4>Playbook</h4><ul>");
        for p in &t.playbook {
            w!(out, "<li>{}</li>", escape(p));
        }
        out.push_str("</ul>");
    }
    out.push_str("</article>\n");
}

/// Columns of the profile table: the model's features, or (if the list is empty) every feature
/// that appears in a profile, in order of first appearance.
fn profile_columns(d: &ReportData) -> Vec<String> {
    if !d.features.is_empty() {
        return d.features.clone();
    }
    let mut cols: Vec<String> = Vec::new();
    for (f, _) in d.tiers.iter().flat_map(|t| t.profile.iter()) {
        if !cols.contains(f) {
            cols.push(f.clone());
        }
    }
    cols
}

fn profile_table(out: &mut String, d: &ReportData) {
    let cols = profile_columns(d);
    out.push_str("<h3>Tier profiles</h3>\n");
    if cols.is_empty() {
        out.push_str("<p class=\"empty\">No feature profiles.</p>\n");
        return;
    }
    out.push_str(
        "<p class=\"note\">Centroid of each tier in original units (days, counts, money). \
         Shade: how high the value is compared with the other tiers (darker = higher).</p>\n",
    );
    let value = |t: &TierReport, f: &str| -> f64 {
        t.profile
            .iter()
            .find(|(name, _)| name == f)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    let extent: Vec<(f64, f64)> = cols
        .iter()
        .map(|f| {
            d.tiers
                .iter()
                .map(|t| value(t, f))
                .filter(|v| v.is_finite())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                })
        })
        .collect();
    out.push_str("<div class=\"scroll\"><table class=\"heat profile\"><thead><tr><th>Tier</th>");
    for f in &cols {
        w!(out, "<th title=\"{}\">{}</th>", escape(f), breakable(f));
    }
    out.push_str("</tr></thead><tbody>");
    for (i, t) in d.tiers.iter().enumerate() {
        w!(
            out,
            "<tr><th style=\"--c:{}\"><span class=\"swatch\"></span>{}<span class=\"sub\">{}</span></th>",
            tier_color(i),
            escape(&t.name_en),
            escape(&t.name_zh)
        );
        for (f, &(lo, hi)) in cols.iter().zip(&extent) {
            let v = value(t, f);
            match position(v, lo, hi) {
                Some(p) => w!(
                    out,
                    "<td style=\"background:{}\">{}</td>",
                    heat(p, (47, 109, 181)),
                    feature_value(f, v)
                ),
                None => w!(out, "<td>{}</td>", feature_value(f, v)),
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>\n");
}

fn k_selection(out: &mut String, d: &ReportData) {
    if d.k_scores.is_empty() && d.ari.is_none() {
        if d.k > 0 {
            w!(
                out,
                "<p class=\"note\">k fixed at {} (no search over k).</p>\n",
                d.k
            );
        }
        return;
    }
    out.push_str("<h3>Choosing k</h3>\n<div class=\"figs\">");
    let chosen = d
        .k_scores
        .iter()
        .find(|(k, _)| *k == d.k)
        .map(|&(k, s)| (k as f64, s));
    if !d.k_scores.is_empty() {
        let points: Vec<(f64, f64)> = d.k_scores.iter().map(|&(k, s)| (k as f64, s)).collect();
        let mut line = Series::new("silhouette", PALETTE[0], points);
        line.markers = true;
        line.tips = d
            .k_scores
            .iter()
            .map(|(k, s)| format!("k = {k}: silhouette {}", num(*s, 3)))
            .collect();
        let mut series = vec![line];
        if let Some(p) = chosen {
            let mut mark = Series::new("chosen k", INK, vec![p]);
            mark.markers = true;
            mark.radii = vec![6.0];
            series.push(mark);
        }
        let spec = LineChart {
            label: "Silhouette score by number of tiers k",
            width: 500.0,
            height: 260.0,
            x_label: "k (number of tiers)",
            y_label: "silhouette",
            x_fmt: Fmt::Int,
            x_mark: Some((d.k as f64, format!("chosen k = {}", d.k))),
            ..LineChart::default()
        };
        w!(
            out,
            "<figure><figcaption>Silhouette vs k<span class=\"note\">higher = better separated tiers</span></figcaption>{}</figure>",
            line_chart(&spec, &series)
        );
    }
    out.push_str("<figure class=\"kbox\">");
    w!(
        out,
        "<div><span class=\"big\">k = {}</span><span class=\"sub\">tiers used</span></div>",
        d.k
    );
    if let Some((_, s)) = chosen {
        let best = d
            .k_scores
            .iter()
            .filter(|(_, s)| s.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let verdict = match best {
            Some(&(k, _)) if k == d.k => format!("the best of {} candidates", d.k_scores.len()),
            Some(&(k, b)) => format!("best was k = {k} at {}", num(b, 3)),
            None => "no finite scores".to_string(),
        };
        w!(
            out,
            "<div>Silhouette at k = {}: <b>{}</b><span class=\"sub\">{}</span></div>",
            d.k,
            num(s, 3),
            escape(&verdict)
        );
    } else if d.k_scores.is_empty() {
        out.push_str("<div class=\"note\">k was fixed: no search over k.</div>");
    }
    if let Some(ari) = d.ari {
        w!(
            out,
            "<div>Adjusted Rand index against known personas: <b>{}</b><span class=\"sub\">1 = same grouping as the personas, 0 = chance</span></div>",
            num(ari, 3)
        );
    }
    out.push_str("</figure></div>\n");
}

fn churn_section(out: &mut String, d: &ReportData) {
    w!(
        out,
        "<section id=\"churn\">\n<h2>Churn model</h2>\n<p class=\"lede\">Churn: no order or activity within {} days after the snapshot.</p>\n",
        d.horizon_days
    );
    metrics_table(out, &d.models);
    if !d.evaluation.trim().is_empty() {
        w!(
            out,
            "<p class=\"note\"><b>Evaluation:</b> {}</p>\n",
            escape(&d.evaluation)
        );
    }
    out.push_str("<div class=\"figs\">");
    w!(
        out,
        "<figure><figcaption>ROC curves<span class=\"note\">up and to the left is better; grey diagonal = chance</span></figcaption>{}</figure>",
        roc_chart(&d.models)
    );
    w!(
        out,
        "<figure><figcaption>Calibration (chosen model)<span class=\"note\">on the diagonal = well calibrated; dots and bars sized by users per bin</span></figcaption>{}</figure>",
        calibration_chart(&d.calibration)
    );
    out.push_str("</div>\n");
    calibration_table(out, &d.calibration);

    let rate_bars = |groups: &[GroupRate], color: &str| -> Vec<Bar> {
        groups
            .iter()
            .map(|g| Bar {
                label: g.group.clone(),
                value: g.churn_rate,
                text: format!("{} · {} users", pct(g.churn_rate, 1), int(g.users)),
                color: color.to_string(),
            })
            .collect()
    };
    let spec = |label| BarChart {
        label,
        width: 500.0,
        fmt: Fmt::Pct,
        ..BarChart::default()
    };
    w!(
        out,
        "<div class=\"figs\"><figure><figcaption>Churn rate by RFM segment<span class=\"note\">observed, evaluation set</span></figcaption>{}</figure>\
         <figure><figcaption>Churn rate by lifecycle stage<span class=\"note\">observed, evaluation set</span></figcaption>{}</figure></div>\n",
        bar_chart(&spec("Churn rate by RFM segment"), &rate_bars(&d.churn_by_segment, "#e15759")),
        bar_chart(&spec("Churn rate by lifecycle stage"), &rate_bars(&d.churn_by_lifecycle, "#e15759"))
    );

    let importance: Vec<Bar> = d
        .feature_importance
        .iter()
        .map(|(f, v)| Bar {
            label: f.clone(),
            value: *v,
            text: pct(*v, 1),
            color: "#2f6db5".to_string(),
        })
        .collect();
    let total: u64 = d.risk_levels.iter().map(|(_, n)| n).sum();
    let risk: Vec<Bar> = d
        .risk_levels
        .iter()
        .enumerate()
        .map(|(i, (level, n))| Bar {
            label: level.clone(),
            value: *n as f64,
            text: format!("{} · {}", int(*n), pct(ratio(*n, total), 1)),
            color: risk_color(level, i).to_string(),
        })
        .collect();
    w!(
        out,
        "<div class=\"figs\"><figure><figcaption>Feature importance<span class=\"note\">share of the chosen model's total importance</span></figcaption>{}</figure>\
         <figure><figcaption>Users per risk level<span class=\"note\">final scored snapshot</span></figcaption>{}</figure></div>\n",
        bar_chart(&BarChart { label: "Feature importance", width: 500.0, fmt: Fmt::Pct, ..BarChart::default() }, &importance),
        bar_chart(&BarChart { label: "Users per risk level", width: 500.0, fmt: Fmt::Int, ..BarChart::default() }, &risk)
    );
    out.push_str("</section>\n");
}

/// Per metric: its value, and whether higher is better.
fn metric_columns(m: &ModelReport) -> [(f64, bool); 5] {
    [
        (m.roc_auc, true),
        (m.pr_auc, true),
        (m.brier, false),
        (m.log_loss, false),
        (m.lift_top_decile, true),
    ]
}

fn metrics_table(out: &mut String, models: &[ModelReport]) {
    if models.is_empty() {
        out.push_str("<p class=\"empty\">No models were evaluated.</p>\n");
        return;
    }
    // Best value per column, bolded when there is something to compare.
    let best: Vec<Option<f64>> = (0..5)
        .map(|c| {
            let higher = metric_columns(&models[0])[c].1;
            let vals = models
                .iter()
                .map(|m| metric_columns(m)[c].0)
                .filter(|v| v.is_finite());
            if models.len() < 2 {
                None
            } else if higher {
                vals.reduce(f64::max)
            } else {
                vals.reduce(f64::min)
            }
        })
        .collect();
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>Model</th><th>ROC-AUC ↑</th><th>PR-AUC ↑</th><th>Brier ↓</th>\
         <th>Log loss ↓</th><th>Lift, top 10% ↑</th><th>Fit time</th></tr></thead><tbody>",
    );
    for m in models {
        w!(
            out,
            "<tr{}><th>{}{}</th>",
            if m.chosen { " class=\"chosen\"" } else { "" },
            text_or_dash(&m.name),
            if m.chosen {
                "<span class=\"badge\">chosen</span>"
            } else {
                ""
            }
        );
        for (c, (v, _)) in metric_columns(m).into_iter().enumerate() {
            let s = match c {
                0 | 1 => num(v, 3),
                4 if v.is_finite() => format!("{}×", num(v, 2)),
                4 => num(v, 2),
                _ => num(v, 4),
            };
            let is_best = best[c].is_some_and(|b| b == v);
            w!(
                out,
                "<td{}>{s}</td>",
                if is_best { " class=\"best\"" } else { "" }
            );
        }
        w!(out, "<td>{}</td></tr>", seconds(m.fit_seconds));
    }
    out.push_str("</tbody></table></div>\n");
    if models.len() > 1 {
        out.push_str("<p class=\"note\">Bold: best value in the column. ↑ higher is better, ↓ lower is better.</p>\n");
    }
}

fn roc_chart(models: &[ModelReport]) -> String {
    // The chosen model is drawn last (on top), thicker, in the first palette colour.
    let mut order: Vec<(usize, &ModelReport)> = models.iter().enumerate().collect();
    order.sort_by_key(|(_, m)| m.chosen);
    let series: Vec<Series> = order
        .into_iter()
        .map(|(i, m)| {
            let color = if m.chosen {
                PALETTE[0]
            } else {
                PALETTE[(i + 1) % PALETTE.len()]
            };
            let name = format!(
                "{} · AUC {}{}",
                m.name,
                num(m.roc_auc, 3),
                if m.chosen { " (chosen)" } else { "" }
            );
            let mut s = Series::new(name, color, m.roc.clone());
            s.width = if m.chosen { 3.0 } else { 2.0 };
            // Every other challenger dashed, so close curves stay apart in a grey-scale print.
            s.dashed = !m.chosen && i % 2 == 1;
            s
        })
        .collect();
    let spec = LineChart {
        label: "ROC curves",
        width: 480.0,
        height: 400.0,
        x_label: "false positive rate",
        y_label: "true positive rate",
        x_domain: Some((0.0, 1.0)),
        y_domain: Some((0.0, 1.0)),
        x_fmt: Fmt::Num,
        y_fmt: Fmt::Num,
        diagonal: true,
        legend: Legend::BottomRight,
        ..LineChart::default()
    };
    let drawable = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    if !models.iter().any(|m| m.roc.iter().any(drawable)) {
        return "<p class=\"empty\">No ROC points.</p>".to_string();
    }
    line_chart(&spec, &series)
}

fn calibration_chart(bins: &[CalibrationBin]) -> String {
    let max = bins.iter().map(|b| b.count).max().unwrap_or(0);
    let points: Vec<(f64, f64)> = bins
        .iter()
        .map(|b| (b.mean_predicted, b.observed_rate))
        .collect();
    let mut s = Series::new("observed", PALETTE[0], points);
    s.markers = true;
    s.radii = bins
        .iter()
        .map(|b| 3.0 + 5.0 * ratio(b.count, max).sqrt())
        .collect();
    s.tips = bins
        .iter()
        .map(|b| {
            format!(
                "{}–{}: predicted {}, observed {}, {} users",
                pct(b.lo, 0),
                pct(b.hi, 0),
                pct(b.mean_predicted, 1),
                pct(b.observed_rate, 1),
                int(b.count)
            )
        })
        .collect();
    let spec = LineChart {
        label: "Reliability diagram: observed churn rate against mean predicted probability",
        width: 480.0,
        height: 400.0,
        x_label: "mean predicted probability",
        y_label: "observed churn rate",
        x_domain: Some((0.0, 1.0)),
        y_domain: Some((0.0, 1.0)),
        x_fmt: Fmt::Pct,
        y_fmt: Fmt::Pct,
        diagonal: true,
        strip: Some(Strip {
            label: "users".to_string(),
            bins: bins.iter().map(|b| (b.lo, b.hi, b.count as f64)).collect(),
        }),
        ..LineChart::default()
    };
    if !bins
        .iter()
        .any(|b| b.mean_predicted.is_finite() && b.observed_rate.is_finite())
    {
        return "<p class=\"empty\">No calibration bins.</p>".to_string();
    }
    line_chart(&spec, &[s])
}

/// Bins as columns (compact: four rows however many bins there are).
fn calibration_table(out: &mut String, bins: &[CalibrationBin]) {
    if bins.is_empty() {
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table class=\"calib\"><thead><tr><th>Predicted probability</th>",
    );
    for b in bins {
        w!(out, "<th>{}–{}</th>", pct(b.lo, 0), pct(b.hi, 0));
    }
    out.push_str("</tr></thead><tbody><tr><th>Users</th>");
    for b in bins {
        w!(out, "<td>{}</td>", int(b.count));
    }
    out.push_str("</tr><tr><th>Mean predicted</th>");
    for b in bins {
        w!(out, "<td>{}</td>", pct(b.mean_predicted, 1));
    }
    out.push_str("</tr><tr><th>Observed churn</th>");
    for b in bins {
        w!(out, "<td>{}</td>", pct(b.observed_rate, 1));
    }
    out.push_str("</tr><tr><th>Observed − predicted</th>");
    for b in bins {
        let gap = (b.observed_rate - b.mean_predicted) * 100.0;
        let sign = if gap >= 0.05 { "+" } else { "" };
        let text = if gap.is_finite() {
            format!("{sign}{}&nbsp;pp", num(gap, 1))
        } else {
            num(gap, 1)
        };
        w!(out, "<td>{text}</td>");
    }
    out.push_str("</tr></tbody></table></div>\n");
}

fn transitions_section(out: &mut String, t: &Transitions, tiers: &[TierReport]) {
    out.push_str("<section id=\"transitions\">\n<h2>Tier transitions</h2>\n");
    w!(
        out,
        "<p class=\"lede\"><b>{}</b> of <b>{}</b> users changed tier (<b>{}</b>) since the previous model <code>{}</code>.</p>\n",
        int(t.changed),
        int(t.compared),
        pct(ratio(t.changed, t.compared), 1),
        text_or_dash(&t.previous_version)
    );
    if t.from.is_empty() || t.to.is_empty() {
        out.push_str("<p class=\"empty\">No transition counts.</p>\n</section>\n");
        return;
    }
    let name_of = |id: &str| -> String {
        match tiers.iter().find(|tier| tier.id == id) {
            Some(tier) => format!(
                "{}<span class=\"sub\">{}</span>",
                breakable(id),
                escape(&tier.name_zh)
            ),
            None => breakable(id),
        }
    };
    let count = |i: usize, j: usize| -> u64 {
        t.counts.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0)
    };
    out.push_str(
        "<div class=\"scroll\"><table class=\"heat matrix\"><thead><tr><th>previous ↓ / new →</th>",
    );
    for to in &t.to {
        w!(out, "<th>{}</th>", name_of(to));
    }
    out.push_str("<th class=\"total\">total</th></tr></thead><tbody>");
    for (i, from) in t.from.iter().enumerate() {
        let row_total: u64 = (0..t.to.len()).map(|j| count(i, j)).sum();
        w!(out, "<tr><th>{}</th>", name_of(from));
        for (j, to) in t.to.iter().enumerate() {
            let n = count(i, j);
            let share = ratio(n, row_total);
            let stay = if from == to { " stay" } else { "" };
            let bg = if n > 0 {
                format!(
                    " style=\"background:{}\"",
                    heat(share.sqrt(), (176, 122, 161))
                )
            } else {
                String::new()
            };
            w!(
                out,
                "<td class=\"n{stay}\"{bg} title=\"{} → {}: {} of the row\">{}</td>",
                escape(from),
                escape(to),
                pct(share, 1),
                int(n)
            );
        }
        w!(out, "<td class=\"total\">{}</td></tr>", int(row_total));
    }
    out.push_str("</tbody></table></div>\n");
    out.push_str("<p class=\"note\">Rows: tier under the previous model; columns: tier now. Shade: share of the row. Outlined: stayed in the same tier.</p>\n</section>\n");
}

fn features_section(out: &mut String, d: &ReportData) {
    w!(
        out,
        "<section id=\"features\">\n<h2>Features</h2>\n<h3>Used by the models ({})</h3>\n",
        d.features.len()
    );
    if d.features.is_empty() {
        out.push_str("<p class=\"empty\">None listed.</p>\n");
    } else {
        out.push_str("<ol class=\"chips\">");
        for (i, f) in d.features.iter().enumerate() {
            w!(out, "<li><i>{}</i>{}</li>", i + 1, escape(f));
        }
        out.push_str("</ol>\n");
    }
    w!(
        out,
        "<h3>Left out: not supported by the data ({})</h3>\n",
        d.features_left_out.len()
    );
    if d.features_left_out.is_empty() {
        out.push_str("<p class=\"note\">None: the data supports every feature.</p>\n");
    } else {
        out.push_str("<ul class=\"chips off\">");
        for f in &d.features_left_out {
            // The pipeline writes "name (reason)"; strike the name, keep the reason readable.
            let (name, reason) = match f
                .trim_end()
                .strip_suffix(')')
                .and_then(|s| s.split_once(" ("))
            {
                Some((name, reason)) => (name, reason),
                None => (f.as_str(), ""),
            };
            w!(
                out,
                "<li title=\"not supported by the data\"><s>{}</s>",
                escape(name)
            );
            if !reason.is_empty() {
                w!(out, " <span class=\"why\">{}</span>", escape(reason));
            }
            out.push_str("</li>");
        }
        out.push_str("</ul>\n<p class=\"note\">These features need event kinds or columns that the training data does not have.</p>\n");
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A realistic report: 6 tiers, 2 models, 10 calibration bins, transitions.
    fn sample() -> ReportData {
        let total: u64 = TIERS.iter().map(|t| t.3).sum();
        let tiers = TIERS
            .iter()
            .enumerate()
            .map(|(i, &(id, en, zh, users, churn, profile))| TierReport {
                id: id.to_string(),
                name_en: en.to_string(),
                name_zh: zh.to_string(),
                description: format!("{en}: tier {} of the population, described in plain words for the retention team.", i + 1),
                playbook: vec![
                    "Exclusive community and priority co-streaming".to_string(),
                    "New-product trials before launch".to_string(),
                    format!("Weekly check-in for {zh}"),
                ],
                users,
                share: users as f64 / total as f64,
                churn_rate: Some(churn),
                mean_churn_probability: (churn * 1.05 + 0.01).min(0.99),
                profile: FEATURES.iter().zip(profile).map(|(f, v)| (f.to_string(), v)).collect(),
            })
            .collect();
        let calibration = (0..10u32)
            .map(|i| {
                let lo = f64::from(i) / 10.0;
                let mean = lo + 0.05;
                CalibrationBin {
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
        ReportData {
            version: "2026-10-01T00-00-00Z-3f9c2a".to_string(),
            created_at: "2026-10-02T08:15:42Z".to_string(),
            as_of: "2026-10-01T00:00:00Z".to_string(),
            horizon_days: 30,
            data: DataSummary {
                events: 4_812_331,
                users: total,
                first_event: "2026-01-01T00:00:03Z".to_string(),
                last_event: "2026-09-30T23:59:58Z".to_string(),
                fingerprint:
                    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                        .to_string(),
                bad_rows_skipped: 17,
            },
            warnings: vec![
                "Only 214 churners in the evaluation window: metrics are noisy.".to_string(),
                "History shorter than 3 horizons: tenure features are truncated.".to_string(),
            ],
            evaluation:
                "out of time: trained at 2026-08-01, evaluated at 2026-09-01 (30-day labels)"
                    .to_string(),
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
            features_left_out: vec![
                "shares (no share events)".to_string(),
                "rooms (no room_id column)".to_string(),
            ],
            tiers,
            k_scores: (3..=10)
                .map(|k| (k, 0.21 + 0.03 * (6.0 - (k as f64 - 6.0).abs()) / 6.0))
                .collect(),
            k: 6,
            ari: Some(0.812),
            models: vec![
                ModelReport {
                    name: "logistic_regression".to_string(),
                    chosen: false,
                    roc_auc: 0.781,
                    pr_auc: 0.612,
                    brier: 0.1642,
                    log_loss: 0.4983,
                    lift_top_decile: 2.21,
                    roc: roc(2.4),
                    fit_seconds: 0.84,
                },
                ModelReport {
                    name: "gradient_boosting".to_string(),
                    chosen: true,
                    roc_auc: 0.846,
                    pr_auc: 0.703,
                    brier: 0.1388,
                    log_loss: 0.4321,
                    lift_top_decile: 2.74,
                    roc: roc(3.6),
                    fit_seconds: 12.6,
                },
            ],
            calibration,
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
            risk_levels: vec![
                ("low".to_string(), 5200),
                ("medium".to_string(), 3100),
                ("high".to_string(), 2500),
                ("very_high".to_string(), 1200),
            ],
            transitions: Some(Transitions {
                previous_version: "2026-09-01T00-00-00Z-77ab01".to_string(),
                from: ids.clone(),
                to: ids,
                counts,
                compared,
                changed: compared - stayed,
            }),
        }
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
            let open = html.matches(&format!("<{tag}>")).count()
                + html.matches(&format!("<{tag} ")).count();
            let close = html.matches(&format!("</{tag}>")).count();
            assert_eq!(
                open, close,
                "<{tag}> opened {open} times, closed {close} times"
            );
        }
    }

    #[test]
    fn report_is_one_well_formed_self_contained_document() {
        let html = render(&sample());
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
        let html = render(&sample());
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
        let t = sample().transitions.unwrap_or_default();
        let changed = format!(
            "<b>{}</b> of <b>{}</b> users changed tier",
            int(t.changed),
            int(t.compared)
        );
        assert!(html.contains(&changed), "{changed}");
    }

    #[test]
    fn report_escapes_text_from_the_data() {
        let mut data = sample();
        data.tiers[0].name_en = "<script>alert(1)</script>".to_string();
        data.tiers[1].name_zh = "\"><img src=x onerror=alert(1)>".to_string();
        data.features[0] = "a<b>&c".to_string();
        data.warnings.push("<b>bold</b> & co".to_string());
        let html = render(&data);
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<img"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&lt;b&gt;bold&lt;/b&gt; &amp; co"));
        assert!(!html.contains("a<b>&c"));
        assert_balanced(&html);
    }

    #[test]
    fn report_without_warnings_says_so_quietly() {
        let mut data = sample();
        data.warnings.clear();
        let html = render(&data);
        assert!(html.contains("No warnings"));
        assert!(!html.contains("class=\"banner\""));
    }

    /// The sample with NaN and infinities wherever a number can go.
    fn non_finite() -> ReportData {
        let mut data = sample();
        for t in &mut data.tiers {
            t.share = f64::NAN;
            t.churn_rate = Some(f64::NAN);
            t.mean_churn_probability = f64::INFINITY;
            for p in &mut t.profile {
                p.1 = f64::NAN;
            }
        }
        for m in &mut data.models {
            m.roc_auc = f64::NAN;
            m.brier = f64::NEG_INFINITY;
            m.fit_seconds = f64::NAN;
            m.roc.insert(20, (f64::NAN, 0.5));
            m.roc.insert(40, (0.5, f64::INFINITY));
        }
        for b in data.calibration.iter_mut().step_by(2) {
            b.mean_predicted = f64::NAN;
            b.lo = f64::NAN;
        }
        data.calibration[3].observed_rate = f64::INFINITY;
        data.churn_by_segment[0].churn_rate = f64::NAN;
        data.churn_by_lifecycle
            .iter_mut()
            .for_each(|g| g.churn_rate = f64::NAN);
        data.feature_importance[0].1 = f64::INFINITY;
        data.k_scores
            .iter_mut()
            .step_by(3)
            .for_each(|s| s.1 = f64::NAN);
        data.ari = Some(f64::NAN);
        data
    }

    /// The sample with nothing to compare: zero users, equal profiles, one model without a curve.
    fn flat() -> ReportData {
        let mut data = sample();
        for t in &mut data.tiers {
            t.users = 0;
            t.share = 0.0;
            t.profile.iter_mut().for_each(|p| p.1 = 7.0);
        }
        data.models.truncate(1);
        data.models[0].roc.clear();
        data.calibration.iter_mut().for_each(|b| b.count = 0);
        data.k_scores = vec![(6, 0.25)];
        data.feature_importance = vec![("recency_days".to_string(), 0.0)];
        data.risk_levels = vec![("low".to_string(), 0)];
        if let Some(t) = &mut data.transitions {
            t.counts = vec![vec![0; 6]; 2]; // fewer rows than `from`
            t.compared = 0;
            t.changed = 0;
        }
        data
    }

    #[test]
    fn report_never_writes_nan_or_infinity_into_svg_attributes() {
        let html = render(&non_finite());
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
        let html = render(&flat());
        assert_balanced(&html);
        assert_no_nan_or_inf_in_svg(&html);
        assert!(html.contains("<b>0</b> of <b>0</b> users changed tier (<b>0.0%</b>)"));
        assert!(!html.contains("NaN"));
    }

    #[test]
    fn default_report_renders_without_panicking() {
        let html = render(&ReportData::default());
        assert!(html.contains("<meta charset=\"utf-8\">"));
        assert!(html.contains("No tiers"));
        assert!(html.contains("No models"));
        assert!(!html.contains("id=\"transitions\""));
        assert_balanced(&html);
        assert!(!html.contains("NaN"));
    }

    /// Writes the sample reports for a look in a browser (`cargo test --lib report -- --ignored`):
    /// report-sample.html, report-non-finite.html, report-flat.html and report-empty.html in the
    /// temp dir.
    #[test]
    #[ignore = "writes files for visual inspection"]
    fn write_sample_reports_for_visual_check() {
        let reports = [
            ("sample", sample()),
            ("non-finite", non_finite()),
            ("flat", flat()),
            ("empty", ReportData::default()),
        ];
        for (name, data) in reports {
            let path = std::env::temp_dir().join(format!("report-{name}.html"));
            std::fs::write(&path, render(&data)).expect("write sample report");
            eprintln!("wrote {}", path.display());
        }
    }
}
