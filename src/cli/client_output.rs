//! Output formatting for `tiering at-risk` and `tiering user`: the formats, the columns, and
//! how a scored user reads as CSV, JSON, JSON Lines or an aligned table. The RPC side (flags,
//! connecting, paging) is in [`super::client`].
//!
//! - `csv` (default): a header, then one row per user with the columns of [`COLUMNS`]; `reasons`
//!   is the top factors as `feature=+0.42 (value)` joined by `; `, `playbook` the tier's actions
//!   joined by ` | `, `interests` the top categories as `category=score` joined by `; `
//!   (score to two decimals), `channels` the channel mix as
//!   `channel=spend_share/activity_share` joined by `; ` (empty without channel data), `rooms`
//!   the top live rooms as `room_id=score` joined by `; ` like the interests (empty without
//!   rooms, as on a data set without a `room_id` column).
//! - `json`: one JSON array of objects, one object per line. Keys as the CSV columns, but
//!   `reasons` is an array of `{feature, contribution, value}`, `playbook` an array of
//!   strings, `interests` `{category, score}`, `channels` `{channel, spend_share,
//!   activity_share}` and `rooms` `{room_id, score}` objects; plus `model_version` and `as_of`
//!   (RFC 3339).
//! - `jsonl`: the same objects as JSON Lines (one per line, no array), for streaming tools.
//! - `table`: aligned columns for a terminal (CJK-width aware).
//!
//! The value columns (`clv`, `expected_orders`, `p_alive`, `value_at_risk`; see
//! `tiering::model::btyd`) come last, so that readers of the older columns by position are
//! unaffected; value at risk = churn probability × CLV.

use serde::Serialize;
use std::io::{self, Write};
use tiering::pb as proto;
use unicode_width::UnicodeWidthStr;

/// The CSV header (and the keys of the JSON objects); the rows are the library's, shared with
/// the HTTP API's CSV download.
pub use tiering::serve::http::csv::{csv_row, value_text, COLUMNS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Csv,
    /// A JSON array, one object per line.
    Json,
    /// JSON Lines: one object per line.
    Jsonl,
    /// Aligned columns for a terminal.
    Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UserFormat {
    Table,
    Json,
}

/// An `f32` the server computed, widened without the noise digits (`0.331199`, not
/// `0.3311994969844818`).
fn f32_clean(x: f64) -> f64 {
    (x as f32).to_string().parse().unwrap_or(x)
}

/// `tiering at-risk --order-by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AtRiskOrderArg {
    /// Churn probability × CLV: the value lost if the user churns.
    ValueAtRisk,
    ChurnProbability,
}

impl AtRiskOrderArg {
    pub fn proto(self) -> proto::AtRiskOrder {
        match self {
            AtRiskOrderArg::ValueAtRisk => proto::AtRiskOrder::ValueAtRisk,
            AtRiskOrderArg::ChurnProbability => proto::AtRiskOrder::ChurnProbability,
        }
    }

    fn value(self, u: &proto::UserTier) -> f64 {
        match self {
            AtRiskOrderArg::ValueAtRisk => u.value_at_risk,
            AtRiskOrderArg::ChurnProbability => u.churn_probability,
        }
    }
}

/// Highest value of `order` first, then user id ascending (the server's order).
pub fn sort_users(users: &mut [proto::UserTier], order: AtRiskOrderArg) {
    users.sort_by(|a, b| {
        order
            .value(b)
            .total_cmp(&order.value(a))
            .then_with(|| a.user_id.cmp(&b.user_id))
    });
}

pub fn as_of_text(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map(|t| tiering::features::time::format_rfc3339(t.seconds))
        .unwrap_or_default()
}

#[derive(Serialize)]
struct JsonFactor<'a> {
    feature: &'a str,
    contribution: f64,
    value: f64,
}

/// One user as JSON (`at-risk --format json|jsonl`, `user --format json`).
#[derive(Serialize)]
pub struct JsonUser<'a> {
    user_id: &'a str,
    churn_probability: f64,
    risk_level: &'a str,
    risk_percentile: f64,
    tier_id: &'a str,
    tier_name: &'a str,
    tier_name_zh: &'a str,
    lifecycle_stage: &'a str,
    rfm_segment: &'a str,
    reasons: Vec<JsonFactor<'a>>,
    playbook: &'a [String],
    clv: f64,
    expected_orders: f64,
    p_alive: f64,
    value_at_risk: f64,
    interests: Vec<JsonInterest<'a>>,
    channels: Vec<JsonChannel<'a>>,
    rooms: Vec<JsonRoom<'a>>,
    model_version: &'a str,
    as_of: String,
}

#[derive(Serialize)]
struct JsonInterest<'a> {
    category: &'a str,
    score: f64,
}

#[derive(Serialize)]
struct JsonRoom<'a> {
    room_id: &'a str,
    score: f64,
}

#[derive(Serialize)]
struct JsonChannel<'a> {
    channel: &'a str,
    spend_share: f64,
    activity_share: f64,
}

impl<'a> From<&'a proto::UserTier> for JsonUser<'a> {
    fn from(u: &'a proto::UserTier) -> Self {
        JsonUser {
            user_id: &u.user_id,
            churn_probability: u.churn_probability,
            risk_level: &u.risk_level,
            risk_percentile: u.risk_percentile,
            tier_id: &u.tier_id,
            tier_name: &u.tier_name,
            tier_name_zh: &u.tier_name_zh,
            lifecycle_stage: &u.lifecycle_stage,
            rfm_segment: &u.rfm_segment,
            reasons: u
                .top_factors
                .iter()
                .map(|f| JsonFactor {
                    feature: &f.feature,
                    contribution: f32_clean(f.contribution),
                    value: f32_clean(f.value),
                })
                .collect(),
            playbook: &u.recommended_actions,
            clv: u.clv,
            expected_orders: u.expected_orders,
            p_alive: u.p_alive,
            value_at_risk: u.value_at_risk,
            interests: u
                .interests
                .iter()
                .map(|i| JsonInterest {
                    category: &i.category,
                    score: i.score,
                })
                .collect(),
            channels: u
                .channels
                .iter()
                .map(|c| JsonChannel {
                    channel: &c.channel,
                    spend_share: c.spend_share,
                    activity_share: c.activity_share,
                })
                .collect(),
            rooms: u
                .rooms
                .iter()
                .map(|r| JsonRoom {
                    room_id: &r.room_id,
                    score: r.score,
                })
                .collect(),
            model_version: &u.model_version,
            as_of: as_of_text(u.as_of.as_ref()),
        }
    }
}

/// Writes the list in `format`.
pub fn write_users(
    out: &mut dyn Write,
    users: &[proto::UserTier],
    format: ListFormat,
) -> io::Result<()> {
    match format {
        ListFormat::Csv => write_csv(out, users),
        ListFormat::Json => {
            out.write_all(b"[")?;
            for (i, u) in users.iter().enumerate() {
                out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *out, &JsonUser::from(u))?;
            }
            out.write_all(b"\n]\n")
        }
        ListFormat::Jsonl => {
            for u in users {
                serde_json::to_writer(&mut *out, &JsonUser::from(u))?;
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        ListFormat::Table => write_table(out, users),
    }
}

fn write_csv(out: &mut dyn Write, users: &[proto::UserTier]) -> io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(COLUMNS)?;
    for u in users {
        w.write_record(csv_row(u))?;
    }
    w.flush()
}

/// Aligned columns; numbers right-aligned, the last column unpadded.
fn write_table(out: &mut dyn Write, users: &[proto::UserTier]) -> io::Result<()> {
    let header = [
        "USER_ID",
        "CHURN",
        "RISK",
        "PCTILE",
        "TIER",
        "TIER_NAME",
        "中文",
        "LIFECYCLE",
        "RFM",
        "REASONS",
        "PLAYBOOK",
        "CLV",
        "EXP_ORDERS",
        "P_ALIVE",
        "VALUE_AT_RISK",
    ];
    let right = [
        false, true, false, true, false, false, false, false, false, false, false, true, true,
        true, true,
    ];
    // The table keeps its fifteen columns (interests, channels and rooms are in the other
    // formats, and in `tiering user`'s view).
    let rows: Vec<[String; 15]> = users
        .iter()
        .map(|u| {
            let full = csv_row(u);
            let mut r: [String; 15] = std::array::from_fn(|i| full[i].clone());
            r[1] = format!("{:.4}", u.churn_probability);
            r[3] = format!("{:.1}", u.risk_percentile);
            r
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.width());
        }
    }
    let mut line = |cells: &[&str]| -> io::Result<()> {
        let mut s = String::new();
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                s.push_str(cell);
                break;
            }
            let pad = " ".repeat(widths[i].saturating_sub(cell.width()));
            if right[i] {
                s.push_str(&pad);
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&pad);
            }
            s.push_str("  ");
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(&header)?;
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells)?;
    }
    Ok(())
}

/// Every field of one user, one per line.
pub fn write_user_table(out: &mut dyn Write, u: &proto::UserTier) -> io::Result<()> {
    const W: usize = 20;
    let plain = [
        ("user_id", u.user_id.clone()),
        ("tier_id", u.tier_id.clone()),
        ("tier_name", u.tier_name.clone()),
        ("tier_name_zh", u.tier_name_zh.clone()),
        ("churn_probability", format!("{:.4}", u.churn_probability)),
        ("risk_level", u.risk_level.clone()),
        (
            "risk_percentile",
            format!(
                "{:.1} (share of users at or below this risk)",
                u.risk_percentile
            ),
        ),
        ("rfm_segment", u.rfm_segment.clone()),
        ("lifecycle_stage", u.lifecycle_stage.clone()),
        (
            "clv",
            format!("{:.2} (expected spend over the value horizon)", u.clv),
        ),
        ("expected_orders", format!("{:.4}", u.expected_orders)),
        ("p_alive", format!("{:.4}", u.p_alive)),
        (
            "value_at_risk",
            format!("{:.2} (churn probability × clv)", u.value_at_risk),
        ),
    ];
    for (k, v) in plain {
        writeln!(out, "{k:<W$} {v}")?;
    }
    let fw = u
        .top_factors
        .iter()
        .map(|f| f.feature.width())
        .max()
        .unwrap_or(0);
    if u.top_factors.is_empty() {
        writeln!(out, "{:<W$} -", "top_factors")?;
    }
    for (i, f) in u.top_factors.iter().enumerate() {
        let key = if i == 0 { "top_factors" } else { "" };
        writeln!(
            out,
            "{key:<W$} {:<fw$}  {:+.3} log-odds  (value {})",
            f.feature,
            f.contribution,
            value_text(f.value)
        )?;
    }
    if u.recommended_actions.is_empty() {
        writeln!(out, "{:<W$} -", "recommended_actions")?;
    }
    for (i, a) in u.recommended_actions.iter().enumerate() {
        let key = if i == 0 { "recommended_actions" } else { "" };
        writeln!(out, "{key:<W$} - {a}")?;
    }
    if u.interests.is_empty() {
        writeln!(out, "{:<W$} -", "interests")?;
    }
    for (i, x) in u.interests.iter().enumerate() {
        let key = if i == 0 { "interests" } else { "" };
        writeln!(out, "{key:<W$} {}  {:.2}", x.category, x.score)?;
    }
    if u.rooms.is_empty() {
        writeln!(out, "{:<W$} -", "rooms")?;
    }
    for (i, r) in u.rooms.iter().enumerate() {
        let key = if i == 0 { "rooms" } else { "" };
        writeln!(out, "{key:<W$} {}  {:.2}", r.room_id, r.score)?;
    }
    if u.channels.is_empty() {
        writeln!(out, "{:<W$} -", "channels")?;
    }
    for (i, c) in u.channels.iter().enumerate() {
        let key = if i == 0 { "channels" } else { "" };
        writeln!(
            out,
            "{key:<W$} {}  spend {:.1}%  activity {:.1}%",
            c.channel,
            c.spend_share * 100.0,
            c.activity_share * 100.0
        )?;
    }
    writeln!(out, "{:<W$} {}", "model_version", u.model_version)?;
    writeln!(out, "{:<W$} {}", "as_of", as_of_text(u.as_of.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiering::serve::http::csv::reasons_text;

    fn user(id: &str, p: f64) -> proto::UserTier {
        proto::UserTier {
            user_id: id.into(),
            churn_probability: p,
            tier_id: "core_fans".into(),
            tier_name: "Core fans".into(),
            tier_name_zh: "核心铁粉".into(),
            top_factors: vec![
                proto::Factor {
                    feature: "recency_days".into(),
                    contribution: 0.4213,
                    value: 81.0416,
                },
                proto::Factor {
                    feature: "orders".into(),
                    contribution: -0.1,
                    value: 5.0,
                },
            ],
            recommended_actions: vec!["exclusive community".into(), "co-streaming".into()],
            ..Default::default()
        }
    }

    #[test]
    fn reasons_read_as_feature_signed_contribution_and_value() {
        assert_eq!(
            reasons_text(&user("a", 0.5).top_factors),
            "recency_days=+0.42 (81.04); orders=-0.10 (5)"
        );
        assert_eq!(value_text(0.5), "0.5");
        assert_eq!(value_text(-0.001), "0");
    }

    #[test]
    fn users_sort_by_probability_then_id() {
        let mut v = vec![user("b", 0.5), user("c", 0.9), user("a", 0.5)];
        sort_users(&mut v, AtRiskOrderArg::ChurnProbability);
        let ids: Vec<&str> = v.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
        let with = |id: &str, p: f64, var: f64| proto::UserTier {
            value_at_risk: var,
            ..user(id, p)
        };
        let mut v = vec![
            with("a", 0.9, 1.0),
            with("b", 0.2, 50.0),
            with("c", 0.5, 50.0),
        ];
        sort_users(&mut v, AtRiskOrderArg::ValueAtRisk);
        let ids: Vec<&str> = v.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "a"]);
    }

    #[test]
    fn csv_has_the_header_and_joined_reasons_and_playbook() {
        let mut out = Vec::new();
        write_users(&mut out, &[user("a", 0.75)], ListFormat::Csv).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(COLUMNS.join(",").as_str()));
        let row = lines.next().unwrap();
        assert!(row.starts_with("a,0.750000,"), "{row}");
        assert!(row.contains("exclusive community | co-streaming"), "{row}");
    }

    #[test]
    fn csv_and_json_carry_the_value_figures_before_the_interests() {
        let mut u = user("a", 0.5);
        (u.clv, u.expected_orders, u.p_alive, u.value_at_risk) = (120.456, 1.5, 0.8, 60.228);
        let mut out = Vec::new();
        write_users(&mut out, std::slice::from_ref(&u), ListFormat::Csv).unwrap();
        let text = String::from_utf8(out).unwrap();
        let header = text.lines().next().unwrap();
        assert!(
            header.ends_with(",clv,expected_orders,p_alive,value_at_risk,interests,channels,rooms"),
            "{header}"
        );
        let row = text.lines().nth(1).unwrap();
        // No interests, channel mix or rooms: three empty cells after the value figures.
        assert!(row.ends_with(",120.46,1.5000,0.8000,60.23,,,"), "{row}");
        let mut out = Vec::new();
        write_users(&mut out, &[u], ListFormat::Jsonl).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["value_at_risk"], 60.228);
        assert_eq!(v["p_alive"], 0.8);
    }

    #[test]
    fn csv_and_json_carry_the_top_rooms_with_scores_next_to_the_interests_and_channels() {
        let mut u = user("a", 0.5);
        u.interests = vec![proto::Interest {
            category: "beauty".into(),
            score: 12.5,
        }];
        u.channels = vec![proto::ChannelShare {
            channel: "live".into(),
            spend_share: 1.0,
            activity_share: 0.75,
        }];
        u.rooms = vec![
            proto::RoomInterest {
                room_id: "room_0042".into(),
                score: 11.7749,
            },
            proto::RoomInterest {
                room_id: "room_7".into(),
                score: 1.78,
            },
        ];
        let mut out = Vec::new();
        write_users(&mut out, &[u.clone(), user("b", 0.4)], ListFormat::Csv).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        let at = |name: &str| header.iter().position(|h| h == name).unwrap();
        assert_eq!(at("rooms"), at("channels") + 1, "{header:?}");
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(&rows[0][at("interests")], "beauty=12.50");
        assert_eq!(&rows[0][at("channels")], "live=1.000/0.750");
        assert_eq!(&rows[0][at("rooms")], "room_0042=11.77; room_7=1.78");
        // A user without rooms (a data set without room ids): an empty cell.
        assert_eq!(&rows[1][at("rooms")], "");
        let mut out = Vec::new();
        write_users(&mut out, &[u], ListFormat::Jsonl).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["rooms"][0]["room_id"], "room_0042");
        assert_eq!(v["rooms"][1]["score"], 1.78);
    }

    #[test]
    fn json_is_an_array_and_jsonl_one_object_per_line() {
        let users = [user("a", 0.75), user("b", 0.5)];
        let mut out = Vec::new();
        write_users(&mut out, &users, ListFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(2));
        assert_eq!(v[0]["reasons"][0]["feature"], "recency_days");
        let mut out = Vec::new();
        write_users(&mut out, &[], ListFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(0));
        let mut out = Vec::new();
        write_users(&mut out, &users, ListFormat::Jsonl).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn table_columns_line_up_with_wide_characters() {
        let mut out = Vec::new();
        write_users(
            &mut out,
            &[user("a", 0.75), user("bbbbbb", 0.5)],
            ListFormat::Table,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |l: &str| l[..l.find("core_fans").unwrap_or(l.len())].width();
        assert_eq!(col(lines[1]), col(lines[2]));
        let zh = |l: &str| l[..l.find("核心铁粉").unwrap_or(0)].width();
        assert_eq!(zh(lines[1]), zh(lines[2]));
    }
}
