//! The backtest section: a bundle's predictions against what happened since (the figures are
//! defined in [`crate::train::backtest`]).

use super::fmt::{escape, int, num, pct};
use crate::train::backtest::Backtest;

/// The backtest figures as an HTML fragment (a `<section>`; every text escaped): the training
/// report's section and the body of `tiering backtest`'s page.
pub fn backtest_html(b: &Backtest) -> String {
    let mut out = String::new();
    let provisional = if b.complete() {
        String::new()
    } else {
        format!(
            " <strong>Provisional:</strong> the data covers {} of the {} days.",
            num(b.days_covered, 1),
            b.horizon_days
        )
    };
    out.push_str(&format!(
        "<section id=\"backtest\">\n<h2>Backtest of {}</h2>\n<p class=\"note\">Its predictions at {} against the next {} days.{provisional}</p>\n<table><tbody>",
        escape(&b.version),
        escape(&b.as_of),
        b.horizon_days
    ));
    let rows: [(&str, String); 9] = [
        ("users scored", int(b.users)),
        ("churned", int(b.churned)),
        ("ROC-AUC", num(b.roc_auc, 4)),
        ("Brier", num(b.brier, 4)),
        (
            "top decile by churn probability: churned",
            format!(
                "{} of {}",
                int(b.top_decile_churned),
                int(b.top_decile_users)
            ),
        ),
        (
            "value lost (spend before, users who churned)",
            num(b.value_lost, 2),
        ),
        (
            "value retained (spend before, users who stayed)",
            format!(
                "{} ({})",
                num(b.value_retained, 2),
                pct(b.value_retained_share, 1)
            ),
        ),
        (
            "share of value lost in the top decile by value at risk",
            pct(b.top_decile_value_at_risk_lost_share, 1),
        ),
        ("realised spend in the window", num(b.realised_spend, 2)),
    ];
    for (k, v) in rows {
        out.push_str(&format!("<tr><th>{}</th><td>{v}</td></tr>", escape(k)));
    }
    out.push_str("</tbody></table>\n<h3>Calibration by decile</h3>\n<table><thead><tr><th>decile</th><th>users</th><th>mean predicted</th><th>observed churn</th></tr></thead><tbody>");
    for d in &b.deciles {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            d.decile,
            int(d.users),
            num(d.mean_predicted, 3),
            num(d.observed_rate, 3)
        ));
    }
    out.push_str("</tbody></table>\n</section>\n");
    out
}
