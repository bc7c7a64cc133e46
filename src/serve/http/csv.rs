//! The at-risk list as CSV: the one definition of its columns and rows (`tiering at-risk
//! --format csv` writes them too), and the HTTP download that streams it page by page.
//!
//! The download walks ListAtRiskUsers through its handler, page after page of one ranking
//! version (every matching user once, in order, as the gRPC walk), and sends each page as soon
//! as it is encoded; at most two pages wait for a slow reader. An error after the first page
//! (ABORTED: the version expired while the client read slowly) cuts the body off without its
//! terminating chunk, so a client can tell a cut download from a whole one; an error on the
//! first page is an ordinary JSON error answer.

use super::{Api, Meta};
use crate::pb as proto;
use crate::pb::tiering_server::Tiering;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use tokio_stream::StreamExt;
use tonic::Status;

/// The CSV header (and the keys of the CLI's JSON objects).
pub const COLUMNS: [&str; 18] = [
    "user_id",
    "churn_probability",
    "risk_level",
    "risk_percentile",
    "tier_id",
    "tier_name",
    "tier_name_zh",
    "lifecycle_stage",
    "rfm_segment",
    "reasons",
    "playbook",
    "clv",
    "expected_orders",
    "p_alive",
    "value_at_risk",
    "interests",
    "channels",
    "rooms",
];

/// One user's CSV row, in the order of [`COLUMNS`].
pub fn csv_row(u: &proto::UserTier) -> [String; 18] {
    [
        u.user_id.clone(),
        format!("{:.6}", u.churn_probability + 0.0),
        u.risk_level.clone(),
        format!("{:.2}", u.risk_percentile + 0.0),
        u.tier_id.clone(),
        u.tier_name.clone(),
        u.tier_name_zh.clone(),
        u.lifecycle_stage.clone(),
        u.rfm_segment.clone(),
        reasons_text(&u.top_factors),
        u.recommended_actions.join(" | "),
        format!("{:.2}", u.clv + 0.0),
        format!("{:.4}", u.expected_orders + 0.0),
        format!("{:.4}", u.p_alive + 0.0),
        format!("{:.2}", u.value_at_risk + 0.0),
        interests_text(&u.interests),
        channels_text(&u.channels),
        rooms_text(&u.rooms),
    ]
}

/// `room_id=score; ...` (the CSV's `rooms`, as `interests`; empty without rooms).
pub fn rooms_text(r: &[proto::RoomInterest]) -> String {
    r.iter()
        .map(|x| format!("{}={:.2}", x.room_id, x.score + 0.0))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `category=score; ...` (the CSV's `interests`).
pub fn interests_text(i: &[proto::Interest]) -> String {
    i.iter()
        .map(|x| format!("{}={:.2}", x.category, x.score + 0.0))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `channel=spend/activity; ...` (the CSV's `channels`).
pub fn channels_text(c: &[proto::ChannelShare]) -> String {
    c.iter()
        .map(|x| {
            format!(
                "{}={:.3}/{:.3}",
                x.channel,
                x.spend_share + 0.0,
                x.activity_share + 0.0
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `recency_days=+0.42 (81.04); ...`
pub fn reasons_text(factors: &[proto::Factor]) -> String {
    factors
        .iter()
        .map(|f| {
            format!(
                "{}={:+.2} ({})",
                f.feature,
                // `+ 0.0` turns -0.0 into 0.0: proto3 does not send a zero, so a gRPC client
                // (`tiering at-risk`) reads +0.00 where the server held -0.00.
                f.contribution + 0.0,
                value_text(f.value)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A feature value without noise: `81.04`, `5`, `0.5`.
pub fn value_text(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// One ListAtRiskUsers page through the gRPC handler: its users and the next page's token
/// (empty: the last page).
pub(super) async fn page(
    api: &Api,
    req: proto::ListAtRiskUsersRequest,
    meta: &Meta,
) -> Result<(Vec<proto::UserTier>, String), Status> {
    let mut stream = api
        .svc
        .list_at_risk_users(meta.request(req))
        .await?
        .into_inner();
    let mut users = Vec::new();
    let mut next = String::new();
    while let Some(u) = stream.next().await {
        let mut u = u?;
        if !u.next_page_token.is_empty() {
            next = std::mem::take(&mut u.next_page_token);
        }
        users.push(u);
    }
    Ok((users, next))
}

/// The walk's request: the filters of `req`, pages of the requested size (or the server's
/// largest), from the first page.
fn walk_request(
    api: &Api,
    mut req: proto::ListAtRiskUsersRequest,
) -> proto::ListAtRiskUsersRequest {
    if req.limit == 0 {
        req.limit = api.walk_page;
    }
    req
}

/// Whether a walk should stop: no next token, or the same token again (a defect, never a loop).
fn done(token: &str, next: &str) -> bool {
    next.is_empty() || next == token
}

/// How many users match the filters of `req` (every page walked).
pub(super) async fn count(
    api: &Api,
    req: proto::ListAtRiskUsersRequest,
    meta: &Meta,
) -> Result<u64, Status> {
    let mut req = walk_request(api, req);
    let mut n = 0u64;
    loop {
        let (users, next) = page(api, req.clone(), meta).await?;
        n += users.len() as u64;
        if done(&req.page_token, &next) {
            return Ok(n);
        }
        req.page_token = next;
    }
}

/// The rows of `users` (with the header when `header`).
fn encode(users: &[proto::UserTier], header: bool) -> Result<Bytes, Status> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    let rows = header.then(|| w.write_record(COLUMNS)).into_iter().chain(
        users
            .iter()
            .map(|u| w.write_record(csv_row(u)))
            .collect::<Vec<_>>(),
    );
    for r in rows {
        r.map_err(|e| Status::internal(format!("writing CSV: {e}")))?;
    }
    w.into_inner()
        .map(Bytes::from)
        .map_err(|e| Status::internal(format!("writing CSV: {e}")))
}

/// The CSV download of every matching user, streamed.
pub(super) async fn download(
    api: &std::sync::Arc<Api>,
    req: proto::ListAtRiskUsersRequest,
    meta: Meta,
) -> Result<Response, Status> {
    let mut req = walk_request(api, req);
    let (users, next) = page(api, req.clone(), &meta).await?;
    let first = encode(&users, true)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let walker = api.clone();
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut next = next;
        while !done(&req.page_token, &next) {
            req.page_token = std::mem::take(&mut next);
            let chunk = match page(&walker, req.clone(), &meta).await {
                Ok((users, n)) => {
                    next = n;
                    encode(&users, false)
                }
                Err(e) => Err(e),
            };
            let chunk = chunk.map_err(|s| std::io::Error::other(s.message().to_string()));
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    let mut r = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"at-risk.csv\""),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
