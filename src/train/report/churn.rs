//! The churn model section: metrics table, ROC curves, calibration, churn by group, feature
//! importance and users per risk level.

use super::fmt::{escape, int, num, pct, ratio, text_or_dash};
use super::svg::{
    bar_chart, line_chart, Bar, BarChart, Fmt, Legend, LineChart, Series, Strip, PALETTE,
};
use super::{risk_color, risk_label, seconds, GroupRate, ReportExtras};
use crate::bundle::manifest::Manifest;
use crate::model::metrics::{BinaryMetrics, CalibrationRow};
use std::fmt::Write as _;

pub(super) fn churn_section(out: &mut String, m: &Manifest, x: &ReportExtras) {
    w!(
        out,
        "<section id=\"churn\">\n<h2>Churn model</h2>\n<p class=\"lede\">Churn: no order or activity within {} days after the snapshot.</p>\n",
        m.horizon_days
    );
    let models = model_rows(m, x);
    metrics_table(out, &models);
    let evaluation = &m.metrics.evaluation;
    if !evaluation.trim().is_empty() {
        w!(
            out,
            "<p class=\"note\"><b>Evaluation:</b> {}</p>\n",
            escape(evaluation)
        );
    }
    out.push_str("<div class=\"figs\">");
    w!(
        out,
        "<figure><figcaption>ROC curves<span class=\"note\">up and to the left is better; grey diagonal = chance</span></figcaption>{}</figure>",
        roc_chart(&models)
    );
    w!(
        out,
        "<figure><figcaption>Calibration (chosen model)<span class=\"note\">on the diagonal = well calibrated; dots and bars sized by users per bin</span></figcaption>{}</figure>",
        calibration_chart(&m.metrics.calibration)
    );
    out.push_str("</div>\n");
    calibration_table(out, &m.metrics.calibration);

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
        bar_chart(&spec("Churn rate by RFM segment"), &rate_bars(&x.churn_by_segment, "#e15759")),
        bar_chart(&spec("Churn rate by lifecycle stage"), &rate_bars(&x.churn_by_lifecycle, "#e15759"))
    );

    let importance: Vec<Bar> = x
        .feature_importance
        .iter()
        .map(|(f, v)| Bar {
            label: f.clone(),
            value: *v,
            text: pct(*v, 1),
            color: "#2f6db5".to_string(),
        })
        .collect();
    let total: u64 = x.risk_levels.iter().map(|(_, n)| n).sum();
    let risk: Vec<Bar> = x
        .risk_levels
        .iter()
        .map(|(level, n)| Bar {
            label: risk_label(*level, &x.risk),
            value: *n as f64,
            text: format!("{} · {}", int(*n), pct(ratio(*n, total), 1)),
            color: risk_color(*level).to_string(),
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

/// One evaluated model as the report shows it: the manifest's metrics, whether it is the served
/// one, and its ROC curve.
struct ModelRow<'a> {
    name: &'a str,
    chosen: bool,
    metrics: &'a BinaryMetrics,
    fit_seconds: f64,
    roc: &'a [(f64, f64)],
}

fn model_rows<'a>(m: &'a Manifest, x: &'a ReportExtras) -> Vec<ModelRow<'a>> {
    m.metrics
        .models
        .iter()
        .enumerate()
        .map(|(i, mm)| ModelRow {
            name: &mm.name,
            chosen: mm.name == m.metrics.chosen_model,
            metrics: &mm.metrics,
            fit_seconds: mm.fit_seconds,
            roc: x.rocs.get(i).map_or(&[], |r| r.as_slice()),
        })
        .collect()
}

/// Per metric: its value, and whether higher is better.
fn metric_columns(m: &ModelRow) -> [(f64, bool); 5] {
    let b = m.metrics;
    [
        (b.roc_auc, true),
        (b.pr_auc, true),
        (b.brier, false),
        (b.log_loss, false),
        (b.lift_top_decile, true),
    ]
}

fn metrics_table(out: &mut String, models: &[ModelRow]) {
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
            text_or_dash(m.name),
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

fn roc_chart(models: &[ModelRow]) -> String {
    // The chosen model is drawn last (on top), thicker, in the first palette colour.
    let mut order: Vec<(usize, &ModelRow)> = models.iter().enumerate().collect();
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
                num(m.metrics.roc_auc, 3),
                if m.chosen { " (chosen)" } else { "" }
            );
            let mut s = Series::new(name, color, m.roc.to_vec());
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

fn calibration_chart(bins: &[CalibrationRow]) -> String {
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
fn calibration_table(out: &mut String, bins: &[CalibrationRow]) {
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
