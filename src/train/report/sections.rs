//! The page's sections: header, tiers (cards, profiles, choice of k), tier transitions and
//! features. They read the manifest; the churn section lives in `churn`.

use super::fmt::{
    breakable, escape, feature_value, heat, int, num, pct, position, ratio, text_or_dash,
};
use super::svg::{bar_chart, line_chart, Bar, BarChart, Fmt, LineChart, Series, INK, PALETTE};
use super::{day, risk_class, tier_color, tier_label, when_ts, Transitions};
use crate::bundle::manifest::{LeftOut, Manifest, Metrics, TierEntry};
use crate::model::RiskThresholds;
use std::fmt::Write as _;

pub(super) fn header(out: &mut String, m: &Manifest) {
    w!(
        out,
        "<header>\n<div class=\"eyebrow\">tiering · training report</div>\n<h1>Model <span class=\"mono\">{}</span></h1>\n\
         <dl class=\"facts\"><div><dt>Created</dt><dd>{}</dd></div><div><dt>Scored as of</dt><dd>{}</dd></div>\
         <div><dt>Churn horizon</dt><dd>{} days</dd></div><div><dt>Tiers</dt><dd>{}</dd></div></dl>\n",
        text_or_dash(&m.version),
        when_ts(m.created_at),
        when_ts(m.as_of_ts),
        m.horizon_days,
        m.tiers.len()
    );
    let s = &m.data;
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
        day(s.first_event),
        day(s.last_event),
        int(s.bad_rows_skipped),
        escape(&s.fingerprint),
        text_or_dash(&fp)
    );
    if m.warnings.is_empty() {
        out.push_str("<p class=\"nowarn\">✓ No warnings</p>\n");
    } else {
        let n = m.warnings.len();
        w!(
            out,
            "<div class=\"banner\" role=\"alert\"><strong>⚠ {n} warning{}: read before trusting the numbers below</strong><ul>",
            if n == 1 { "" } else { "s" }
        );
        for warning in &m.warnings {
            w!(out, "<li>{}</li>", escape(warning));
        }
        out.push_str("</ul></div>\n");
    }
    out.push_str("</header>\n");
}

pub(super) fn tiers_section(out: &mut String, m: &Manifest, risk: &RiskThresholds) {
    out.push_str("<section id=\"tiers\">\n<h2>Tiers</h2>\n");
    if m.tiers.is_empty() {
        out.push_str("<p class=\"empty\">No tiers in this report.</p>\n");
    } else {
        let total: u64 = m.tiers.iter().map(|t| t.users).sum();
        w!(
            out,
            "<p class=\"lede\">{} tiers learned by k-means over scaled RFM, behaviour and lifecycle features, covering {} users.</p>\n",
            m.tiers.len(),
            int(total)
        );
        let bars: Vec<Bar> = m
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
        for (i, t) in m.tiers.iter().enumerate() {
            tier_card(out, t, tier_color(i), risk);
        }
        out.push_str("</div>\n");
        profile_table(out, m);
    }
    k_selection(out, &m.metrics);
    out.push_str("</section>\n");
}

fn tier_card(out: &mut String, t: &TierEntry, color: &str, risk: &RiskThresholds) {
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
        risk_class(churn, risk),
        pct(churn, 1),
        if t.churn_rate.is_none() { " (not evaluated)" } else { " (evaluation set)" },
        risk_class(t.mean_churn_probability, risk),
        pct(t.mean_churn_probability, 1)
    );
    if !t.categories.is_empty() {
        out.push_str("<h4>Characteristic categories</h4><ul class=\"cats\">");
        for (name, share, lift) in &t.categories {
            w!(
                out,
                "<li>{} <span class=\"l\">{} of the tier's users, {:.1}× all users</span></li>",
                escape(name),
                pct(*share, 0),
                lift
            );
        }
        out.push_str("</ul>");
    }
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
/// that appears in a profile, tier by tier.
fn profile_columns(m: &Manifest) -> Vec<String> {
    if !m.features.is_empty() {
        return m.features.iter().map(|f| f.name.clone()).collect();
    }
    let mut cols: Vec<String> = Vec::new();
    for f in m.tiers.iter().flat_map(|t| t.profile.keys()) {
        if !cols.contains(f) {
            cols.push(f.clone());
        }
    }
    cols
}

fn profile_table(out: &mut String, m: &Manifest) {
    let cols = profile_columns(m);
    out.push_str("<h3>Tier profiles</h3>\n");
    if cols.is_empty() {
        out.push_str("<p class=\"empty\">No feature profiles.</p>\n");
        return;
    }
    out.push_str(
        "<p class=\"note\">Centroid of each tier in original units (days, counts, money). \
         Shade: how high the value is compared with the other tiers (darker = higher).</p>\n",
    );
    let value = |t: &TierEntry, f: &str| -> f64 { t.profile.get(f).copied().unwrap_or(f64::NAN) };
    let extent: Vec<(f64, f64)> = cols
        .iter()
        .map(|f| {
            m.tiers
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
    for (i, t) in m.tiers.iter().enumerate() {
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

fn k_selection(out: &mut String, d: &Metrics) {
    if d.k_scores.is_empty() && d.tier_ari.is_none() {
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
    if let Some(ari) = d.tier_ari {
        w!(
            out,
            "<div>Adjusted Rand index against known personas: <b>{}</b><span class=\"sub\">1 = same grouping as the personas, 0 = chance</span></div>",
            num(ari, 3)
        );
    }
    out.push_str("</figure></div>\n");
}

pub(super) fn transitions_section(out: &mut String, t: &Transitions, tiers: &[TierEntry]) {
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

pub(super) fn features_section(out: &mut String, m: &Manifest) {
    w!(
        out,
        "<section id=\"features\">\n<h2>Features</h2>\n<h3>Used by the models ({})</h3>\n",
        m.features.len()
    );
    if m.features.is_empty() {
        out.push_str("<p class=\"empty\">None listed.</p>\n");
    } else {
        out.push_str("<ol class=\"chips\">");
        for (i, f) in m.features.iter().enumerate() {
            w!(out, "<li><i>{}</i>{}</li>", i + 1, escape(&f.name));
        }
        out.push_str("</ol>\n");
    }
    w!(
        out,
        "<h3>Left out: not supported by the data ({})</h3>\n",
        m.features_left_out.len()
    );
    if m.features_left_out.is_empty() {
        out.push_str("<p class=\"note\">None: the data supports every feature.</p>\n");
    } else {
        out.push_str("<ul class=\"chips off\">");
        for LeftOut { name, reason } in &m.features_left_out {
            // Strike the name, keep the reason readable.
            w!(
                out,
                "<li title=\"not supported by the data\"><s>{}</s>",
                escape(name)
            );
            if !reason.trim().is_empty() {
                w!(out, " <span class=\"why\">{}</span>", escape(reason));
            }
            out.push_str("</li>");
        }
        out.push_str("</ul>\n<p class=\"note\">These features need event kinds or columns that the training data does not have.</p>\n");
    }
    event_kinds(out, m);
    out.push_str("</section>\n");
}

/// The source kind names the data had, their rows and what each became (the `[events]`
/// mapping), and the refunds that matched no order.
fn event_kinds(out: &mut String, m: &Manifest) {
    use crate::features::KindFate;
    let d = &m.data;
    if d.kinds_seen.is_empty() {
        return;
    }
    w!(
        out,
        "<h3>Event kinds ({})</h3>\n<table><thead><tr><th>source kind</th><th>rows</th><th>became</th></tr></thead><tbody>",
        d.kinds_seen.len()
    );
    for k in &d.kinds_seen {
        let became = match &k.became {
            KindFate::Kind(kind) => kind.as_str().to_string(),
            KindFate::Ignored => "ignored (events.ignore)".to_string(),
            KindFate::Skipped => "skipped (unmapped, events.unknown_kinds = \"skip\")".to_string(),
        };
        w!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            escape(&k.source),
            int(k.rows),
            escape(&became)
        );
    }
    w!(
        out,
        "</tbody></table>\n<p class=\"note\">{} rows dropped by the kind mapping; {} refunds with an order_id that matched no order (orphans: they still lower net spend).</p>\n",
        int(d.kind_rows_dropped),
        int(d.orphan_refunds)
    );
}
