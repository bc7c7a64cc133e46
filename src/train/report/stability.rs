//! The tier-stability section: how k was chosen and k-means started, tier changes against the
//! previous bundle split into model and behaviour changes, and the drift of this snapshot
//! against the previous bundle's training population (the figures the server's gauges show).

use super::fmt::{escape, int, num, pct, ratio};
use crate::bundle::manifest::{Metrics, TransitionCounts};
use crate::model::drift::{DriftFigures, PSI_RETRAIN};
use std::fmt::Write as _;

fn matrix(out: &mut String, caption: &str, t: &TransitionCounts) {
    w!(
        out,
        "<h3>{}</h3>\n<div class=\"scroll\"><table class=\"matrix\"><thead><tr><th>from ↓ / to →</th>",
        escape(caption)
    );
    for to in &t.to {
        w!(out, "<th>{}</th>", escape(to));
    }
    out.push_str("</tr></thead><tbody>");
    for (from, row) in t.from.iter().zip(&t.counts) {
        w!(out, "<tr><th>{}</th>", escape(from));
        for (to, &n) in t.to.iter().zip(row) {
            let stay = if from == to { " class=\"stay\"" } else { "" };
            w!(out, "<td{stay}>{}</td>", int(n));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>\n");
}

fn drift_table(out: &mut String, d: &DriftFigures) {
    w!(
        out,
        "<h3>Drift since the previous bundle was trained</h3>\n<p class=\"note\">Population stability index of {} users now, under the previous bundle, against its training population (the server's <code>tiering_drift_psi</code> gauges); above {PSI_RETRAIN} a retrain is due.</p>\n<table><thead><tr><th>quantity</th><th>PSI</th></tr></thead><tbody>",
        int(d.users)
    );
    let mut rows: Vec<(String, f64)> = vec![
        ("churn probability".into(), d.churn_probability),
        ("tier shares".into(), d.tier_shares),
    ];
    rows.extend(d.features.iter().cloned());
    for (name, psi) in rows {
        let flag = if psi > PSI_RETRAIN { " ⚠" } else { "" };
        w!(
            out,
            "<tr><td>{}</td><td>{}{flag}</td></tr>",
            escape(&name),
            num(psi, 3)
        );
    }
    out.push_str("</tbody></table>\n");
}

/// The section; nothing when the bundle says nothing about k, stability or drift.
pub(super) fn stability_section(out: &mut String, m: &Metrics) {
    if m.k_reason.is_empty() && m.stability.is_none() && m.drift.is_none() {
        return;
    }
    out.push_str("<section id=\"stability\">\n<h2>Tier stability</h2>\n");
    if !m.k_reason.is_empty() {
        w!(
            out,
            "<p>{}. {}.</p>\n",
            escape(&m.k_reason),
            escape(&m.tier_init)
        );
    }
    if !m.k_stability.is_empty() {
        out.push_str("<table><thead><tr><th>k</th><th>silhouette</th><th>stability (ARI of the best runs of two halves)</th></tr></thead><tbody>");
        for &(k, st) in &m.k_stability {
            let sil = m
                .k_scores
                .iter()
                .find(|s| s.0 == k)
                .map_or(f64::NAN, |s| s.1);
            let b = if k == m.k { " class=\"stay\"" } else { "" };
            w!(
                out,
                "<tr{b}><td>{k}</td><td>{}</td><td>{}</td></tr>",
                num(sil, 3),
                num(st, 3)
            );
        }
        out.push_str("</tbody></table>\n");
    }
    if let Some(s) = &m.stability {
        w!(
            out,
            "<p class=\"lede\">Against <code>{}</code> on this snapshot: <b>{}</b> of {} users ({}) changed tier because the <b>model</b> changed; <b>{}</b> of {} ({}) moved with their own <b>behaviour</b> since the previous snapshot.</p>\n",
            escape(&s.previous_version),
            int(s.model_changed),
            int(s.compared),
            pct(ratio(s.model_changed, s.compared), 2),
            int(s.behaviour_changed),
            int(s.behaviour_compared),
            pct(ratio(s.behaviour_changed, s.behaviour_compared), 2)
        );
        matrix(
            out,
            "Model changed: previous bundle → new bundle, same features",
            &s.model,
        );
        matrix(
            out,
            "Behaviour changed: previous bundle, then → now",
            &s.behaviour,
        );
    }
    if let Some(d) = &m.drift {
        drift_table(out, d);
    }
    out.push_str("</section>\n");
}
