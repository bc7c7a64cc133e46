//! Proto ⇄ domain, in one place. Requests are validated while they are converted, so a handler
//! either gets well-formed domain values or an INVALID_ARGUMENT naming the field.

use super::at_risk::AtRiskQuery;
use super::error::{quote, RequestError};
use super::page_token::{Order, PageToken, TokenKeys, VersionId};
use super::slot::LiveModel;
use super::state::UserEvent;
use crate::features::hash::fnv1a64;
use crate::features::interests::{display_name, learn_name, learn_room_name, room_display_name};
use crate::features::time::format_rfc3339;
use crate::features::vocabulary::{KindResolver, Resolved, UnknownKinds};
use crate::features::{
    hash_str, Channel, EventKind, Interests, LifecycleStage, Rooms, Timestamp, Transform,
    UserAggregate,
};
use crate::model::Score;
use crate::pb::{self as proto, MAX_SECONDS, MIN_SECONDS};

/// Longest user id accepted.
pub(crate) const MAX_USER_ID_BYTES: usize = 256;
/// Largest order value accepted: far above any real order, far below where sums lose meaning.
pub(crate) const MAX_AMOUNT: f64 = 1e12;

/// A user id: non-empty, at most [`MAX_USER_ID_BYTES`].
pub fn user_id<'a>(field: &str, id: &'a str) -> Result<&'a str, RequestError> {
    if id.is_empty() {
        return Err(RequestError::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_USER_ID_BYTES {
        return Err(RequestError::invalid(
            field,
            format!("longer than {MAX_USER_ID_BYTES} bytes"),
        ));
    }
    Ok(id)
}

/// Count check for repeated fields.
pub(crate) fn within_limit(
    field: &'static str,
    count: usize,
    limit: usize,
) -> Result<(), RequestError> {
    if count > limit {
        return Err(RequestError::TooMany {
            field,
            count,
            limit,
        });
    }
    Ok(())
}

/// A proto timestamp as Unix seconds (sub-second part dropped).
pub fn timestamp(field: &str, ts: &prost_types::Timestamp) -> Result<Timestamp, RequestError> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(RequestError::invalid(
            format!("{field}.nanos"),
            "must be in 0..1000000000",
        ));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(RequestError::invalid(field, "outside years 0001..=9999"));
    }
    Ok(ts.seconds)
}

/// A time that must not be later than `now` + `tolerance`.
fn past_time(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
    now: Timestamp,
    tolerance: i64,
) -> Result<Timestamp, RequestError> {
    let ts = ts.ok_or_else(|| RequestError::invalid(field, "is required"))?;
    let t = timestamp(field, ts)?;
    if t > now.saturating_add(tolerance) {
        return Err(RequestError::invalid(
            field,
            format!(
                "{} is in the future (now is {}, tolerance {tolerance} s)",
                format_rfc3339(t),
                format_rfc3339(now)
            ),
        ));
    }
    Ok(t)
}

pub(crate) fn to_timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t,
        nanos: 0,
    }
}

/// Validation context for events.
#[derive(Debug, Clone, Copy)]
pub struct EventRules<'a> {
    pub now: Timestamp,
    pub future_tolerance: i64,
    /// Events before this are refused (`earliest_event_time`; the rules are documented at
    /// [`crate::features::DEFAULT_EARLIEST_EVENT`]).
    pub earliest: Timestamp,
    /// ScoreUser: every event must be this user's (or leave `user_id` empty).
    pub only_user: Option<&'a str>,
    /// The served bundle's kind mapping (its training configuration's `[events]`), so that a
    /// kind name means here what it meant in training.
    pub kinds: &'a KindResolver,
}

/// Validates and converts `events[i]`; `None` for an event whose kind the bundle's mapping
/// drops (ignored, or unmapped under `unknown_kinds = "skip"`), which is still validated.
pub fn event(
    i: usize,
    e: &proto::Event,
    rules: EventRules<'_>,
) -> Result<Option<UserEvent>, RequestError> {
    let f = |name: &str| format!("events[{i}].{name}");
    let user = match rules.only_user {
        Some(only) => {
            if !e.user_id.is_empty() && e.user_id != only {
                return Err(RequestError::invalid(
                    f("user_id"),
                    format!(
                        "{} is not the scored user {}",
                        quote(&e.user_id),
                        quote(only)
                    ),
                ));
            }
            only.to_string()
        }
        None => user_id(&f("user_id"), &e.user_id)?.to_string(),
    };
    let kind = match rules.kinds.resolve(&e.kind) {
        Resolved::Kind(k, _) => Some(k),
        Resolved::Ignored(_) => None,
        Resolved::Unknown if rules.kinds.unknown == UnknownKinds::Skip => None,
        Resolved::Unknown => {
            return Err(RequestError::invalid(
                f("kind"),
                format!(
                    "unknown event kind {} (expected one of {}, or a name the served bundle's \
                     kind mapping knows)",
                    quote(&e.kind),
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ),
            ))
        }
    };
    let ts = past_time(&f("ts"), e.ts.as_ref(), rules.now, rules.future_tolerance)?;
    if ts < rules.earliest {
        return Err(RequestError::invalid(
            f("ts"),
            format!(
                "{} is before the earliest accepted event time {} (earliest_event_time)",
                format_rfc3339(ts),
                format_rfc3339(rules.earliest)
            ),
        ));
    }
    // A zero amount is a valid order (a free gift, a fully discounted order): it counts as an
    // order with no spend. proto3 reads a missing amount as 0, which means the same.
    if !e.amount.is_finite() || !(0.0..=MAX_AMOUNT).contains(&e.amount) {
        return Err(RequestError::invalid(
            f("amount"),
            format!(
                "must be a number in [0, {MAX_AMOUNT:e}], got {}",
                // 1e300 as written, not as 301 digits.
                if e.amount.abs() >= MAX_AMOUNT && e.amount.is_finite() {
                    format!("{:e}", e.amount)
                } else {
                    e.amount.to_string()
                }
            ),
        ));
    }
    if e.order_id.len() > MAX_USER_ID_BYTES {
        return Err(RequestError::invalid(
            f("order_id"),
            format!("longer than {MAX_USER_ID_BYTES} bytes"),
        ));
    }
    if e.channel.len() > 64 || e.channel.chars().any(char::is_control) {
        return Err(RequestError::invalid(
            f("channel"),
            "malformed channel (a short name such as live, short_video, social, offline_store \
             or app: at most 64 bytes, no control characters)",
        ));
    }
    let Some(kind) = kind else {
        return Ok(None);
    };
    let with_money = matches!(kind, EventKind::Order | EventKind::Refund);
    let category = hash_str(&e.category);
    learn_name(category, &e.category);
    let room = hash_str(&e.room_id);
    learn_room_name(room, &e.room_id);
    Ok(Some(UserEvent {
        user_id: user,
        ts,
        kind,
        amount: if with_money { e.amount } else { 0.0 },
        watch_seconds: e.watch_seconds,
        room,
        category,
        // The readers' rule: trimmed, blank is none, hashed like rooms.
        order: if with_money {
            hash_str(e.order_id.trim())
        } else {
            0
        },
        channel: Channel::parse(&e.channel) as u8,
    }))
}

/// RecordEvents: every event validated before any is accepted; events the bundle's mapping
/// drops are left out.
pub fn record_events(
    req: &proto::RecordEventsRequest,
    limit: usize,
    rules: EventRules<'_>,
) -> Result<Vec<UserEvent>, RequestError> {
    within_limit("events", req.events.len(), limit)?;
    let mut out = Vec::with_capacity(req.events.len());
    for (i, e) in req.events.iter().enumerate() {
        out.extend(event(i, e, rules)?);
    }
    Ok(out)
}

/// ScoreUser: the user's aggregate built from the request alone. `rules.only_user` is replaced
/// by the request's user.
pub fn score_user(
    req: &proto::ScoreUserRequest,
    limit: usize,
    rules: EventRules<'_>,
) -> Result<UserAggregate, RequestError> {
    within_limit("events", req.events.len(), limit)?;
    let (now, tolerance) = (rules.now, rules.future_tolerance);
    let registered = match &req.registered_at {
        Some(r) => Some(past_time("registered_at", Some(r), now, tolerance)?),
        None => None,
    };
    if req.events.is_empty() && registered.is_none() {
        return Err(RequestError::invalid(
            "events",
            "give at least one event or registered_at",
        ));
    }
    if !req.user_id.is_empty() {
        user_id("user_id", &req.user_id)?;
    }
    let rules = EventRules {
        only_user: Some(&req.user_id),
        ..rules
    };
    let mut agg = UserAggregate::with_registration(registered);
    for (i, e) in req.events.iter().enumerate() {
        if let Some(e) = event(i, e, rules)? {
            agg.apply(&e.event());
        }
    }
    Ok(agg)
}

/// A scored user, every field filled.
pub(crate) fn user_tier(
    user_id: &str,
    s: &Score,
    model: &LiveModel,
    as_of: Timestamp,
) -> proto::UserTier {
    let scorer = &model.scorer;
    let tier = scorer.tiers.tiers.get(usize::from(s.tier));
    proto::UserTier {
        user_id: user_id.to_string(),
        tier_id: tier.map(|t| t.id.clone()).unwrap_or_default(),
        tier_name: tier.map(|t| t.name_en.clone()).unwrap_or_default(),
        tier_name_zh: tier.map(|t| t.name_zh.clone()).unwrap_or_default(),
        churn_probability: s.churn_probability,
        risk_level: s.risk_level.id().to_string(),
        risk_percentile: s.risk_percentile,
        rfm_segment: s.rfm_segment.id().to_string(),
        lifecycle_stage: s.lifecycle_stage.id().to_string(),
        top_factors: s
            .factors()
            .iter()
            .map(|f| proto::Factor {
                feature: scorer
                    .features
                    .features
                    .get(usize::from(f.feature))
                    .map_or("?", |x| x.name())
                    .to_string(),
                contribution: f64::from(f.contribution),
                value: f64::from(f.value),
            })
            .collect(),
        recommended_actions: tier
            .map(|t| playbook(&t.playbook, &s.interests))
            .unwrap_or_default(),
        model_version: model.version.clone(),
        as_of: Some(to_timestamp(as_of)),
        next_page_token: String::new(),
        clv: s.clv,
        expected_orders: s.expected_orders,
        p_alive: s.p_alive,
        value_at_risk: s.value_at_risk,
        interests: interests(&s.interests, as_of),
        rooms: rooms(&s.rooms, as_of),
        channels: s
            .channels
            .list()
            .into_iter()
            .map(|(c, spend, activity)| proto::ChannelShare {
                channel: c.as_str().to_string(),
                spend_share: spend,
                activity_share: activity,
            })
            .collect(),
    }
}

/// The placeholder a playbook line may hold for the user's top interest category.
pub const TOP_CATEGORY: &str = "{top_category}";

/// The tier's playbook for one user: a line holding [`TOP_CATEGORY`] names the user's top
/// category ("recommend new arrivals in {top_category}" reads "... in beauty"), or "their
/// favourite categories" for a user without interests.
pub(crate) fn playbook(lines: &[String], interests: &Interests) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            if !l.contains(TOP_CATEGORY) {
                return l.clone();
            }
            let top = interests
                .top()
                .map_or_else(|| "their favourite categories".to_string(), display_name);
            l.replace(TOP_CATEGORY, &top)
        })
        .collect()
}

/// A user's interests as the answers carry them: named, scored as of `as_of`, highest first
/// (ties by name).
pub(crate) fn interests(i: &Interests, as_of: Timestamp) -> Vec<proto::Interest> {
    let mut out: Vec<(f32, proto::Interest)> = i
        .ranked()
        .into_iter()
        .map(|(id, level)| {
            (
                level,
                proto::Interest {
                    category: display_name(id),
                    score: Interests::score_at(level, as_of),
                },
            )
        })
        .collect();
    out.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1.category.cmp(&b.1.category))
    });
    out.into_iter().map(|x| x.1).collect()
}

/// A user's top rooms as the answers carry them: named, scored as of `as_of`, highest first
/// (ties by room id).
pub(crate) fn rooms(r: &Rooms, as_of: Timestamp) -> Vec<proto::RoomInterest> {
    let mut out: Vec<(f32, proto::RoomInterest)> = r
        .ranked()
        .into_iter()
        .map(|(id, level)| {
            (
                level,
                proto::RoomInterest {
                    room_id: room_display_name(id),
                    score: Rooms::score_at(level, as_of),
                },
            )
        })
        .collect();
    out.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1.room_id.cmp(&b.1.room_id))
    });
    out.into_iter().map(|x| x.1).collect()
}

/// GetModelInfo, from the manifest.
pub(crate) fn model_info(model: &LiveModel, users_held: usize) -> proto::ModelInfo {
    let m = &model.manifest;
    let created_at = Some(to_timestamp(m.created_at));
    let value = |id: &str| model.tier_values.as_ref().and_then(|v| v.get(id));
    proto::ModelInfo {
        version: model.version.clone(),
        created_at,
        features: m
            .features
            .iter()
            .map(|f| proto::FeatureInfo {
                name: f.name.clone(),
                transform: match f.transform {
                    Transform::Log1p => "log1p",
                    Transform::Identity => "identity",
                }
                .to_string(),
                mean: f.mean,
                std: f.std,
            })
            .collect(),
        tiers: m
            .tiers
            .iter()
            .map(|t| proto::TierInfo {
                id: t.id.clone(),
                name_en: t.name_en.clone(),
                name_zh: t.name_zh.clone(),
                description: t.description.clone(),
                playbook: t.playbook.clone(),
                users: t.users,
                share: t.share,
                mean_churn_probability: t.mean_churn_probability,
                mean_clv: value(t.id.as_str()).map(|v| v.mean_clv),
                value_at_risk: value(t.id.as_str()).map(|v| v.value_at_risk),
            })
            .collect(),
        metrics: m
            .metrics
            .models
            .iter()
            .map(|x| proto::ModelMetric {
                model: x.name.clone(),
                roc_auc: x.metrics.roc_auc,
                pr_auc: x.metrics.pr_auc,
                brier: x.metrics.brier,
                log_loss: x.metrics.log_loss,
                lift_top_decile: x.metrics.lift_top_decile,
            })
            .collect(),
        chosen_model: m.metrics.chosen_model.clone(),
        horizon_days: m.horizon_days,
        evaluation: m.metrics.evaluation.clone(),
        warnings: m
            .warnings
            .iter()
            .cloned()
            .chain(model.fallback.as_ref().map(|f| {
                format!(
                    "fallback: {} (named by MODELS/CURRENT) does not load, so {} serves: {}",
                    f.wanted, model.version, f.reason
                )
            }))
            .collect(),
        users_held: users_held as u64,
        trained_as_of: Some(to_timestamp(m.as_of_ts)),
        stability: super::drift::stability_info(m),
        k_reason: m.metrics.k_reason.clone(),
    }
}

/// Page-size and filter limits for ListAtRiskUsers.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    pub default: u32,
    pub max: u32,
}

/// The interest filter: `hash_str` of each category (`None`: no filter).
fn interest_categories(names: &[String]) -> Result<Option<Vec<u32>>, RequestError> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut v = Vec::with_capacity(names.len());
    for (i, c) in names.iter().enumerate() {
        if c.is_empty() {
            return Err(RequestError::invalid(
                format!("interest_categories[{i}]"),
                "must not be empty",
            ));
        }
        v.push(hash_str(c));
    }
    Ok(Some(v))
}

/// Identifies a request's filters (a page token carries it). Without `exclude_churned` and
/// interest categories it is what it was before those filters existed, so tokens of an earlier
/// binary still continue.
fn filter_hash(req: &proto::ListAtRiskUsersRequest) -> u64 {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let (tier_ids, st, cats) = (
        sorted(&req.tier_ids),
        sorted(&req.lifecycle_stages),
        sorted(&req.interest_categories),
    );
    let churned = if req.exclude_churned { "|x" } else { "" };
    let cats = if cats.is_empty() {
        String::new()
    } else {
        format!("|{}", cats.join("\u{1f}"))
    };
    fnv1a64(
        format!(
            "{}|{}|{}{churned}{cats}",
            req.min_churn_probability.to_bits(),
            tier_ids.join(","),
            st.join(",")
        )
        .as_bytes(),
    )
}

/// The ordering a ListAtRiskUsers request asks for.
fn order_of(req: &proto::ListAtRiskUsersRequest) -> Result<Order, RequestError> {
    match proto::AtRiskOrder::try_from(req.order_by) {
        Ok(proto::AtRiskOrder::ChurnProbability) => Ok(Order::ChurnDescending),
        Ok(proto::AtRiskOrder::ValueAtRisk) => Ok(Order::ValueAtRiskDescending),
        Err(_) => Err(RequestError::invalid(
            "order_by",
            format!(
                "unknown order {} (AT_RISK_ORDER_CHURN_PROBABILITY or AT_RISK_ORDER_VALUE_AT_RISK)",
                req.order_by
            ),
        )),
    }
}

/// ListAtRiskUsers: filters resolved against the model, the page token checked.
pub(crate) fn at_risk_query(
    req: &proto::ListAtRiskUsersRequest,
    model: &LiveModel,
    limits: PageLimits,
    now: Timestamp,
    keys: &TokenKeys,
) -> Result<AtRiskQuery, RequestError> {
    let p = req.min_churn_probability;
    if !p.is_finite() || !(0.0..=1.0).contains(&p) {
        return Err(RequestError::invalid(
            "min_churn_probability",
            format!("must be in [0, 1], got {p}"),
        ));
    }
    let tiers = if req.tier_ids.is_empty() {
        None
    } else {
        let mut mask = vec![false; model.scorer.tiers.k()];
        for (i, id) in req.tier_ids.iter().enumerate() {
            let Some(&t) = model.tier_index.get(id) else {
                let known: Vec<&str> = model
                    .scorer
                    .tiers
                    .tiers
                    .iter()
                    .map(|t| t.id.as_str())
                    .collect();
                return Err(RequestError::invalid(
                    format!("tier_ids[{i}]"),
                    format!(
                        "unknown tier {} (this model's tiers: {})",
                        quote(id),
                        known.join(", ")
                    ),
                ));
            };
            mask[usize::from(t)] = true;
        }
        Some(mask)
    };
    let stages = if req.lifecycle_stages.is_empty() {
        None
    } else {
        let mut mask = [false; LifecycleStage::ALL.len()];
        for (i, s) in req.lifecycle_stages.iter().enumerate() {
            let stage = LifecycleStage::from_id(s).ok_or_else(|| {
                RequestError::invalid(
                    format!("lifecycle_stages[{i}]"),
                    format!(
                        "unknown stage {} (new, mature_active, silent, about_to_churn, churned)",
                        quote(s)
                    ),
                )
            })?;
            mask[stage as usize] = true;
        }
        Some(mask)
    };
    let categories = interest_categories(&req.interest_categories)?;
    let limit = match req.limit {
        0 => limits.default,
        n => n.min(limits.max),
    } as usize;
    let filter_hash = filter_hash(req);
    let order = order_of(req)?;
    let (as_of, after, pinned) = if req.page_token.is_empty() {
        (now, None, None)
    } else {
        let t = PageToken::decode(&req.page_token, keys)
            .map_err(|e| RequestError::invalid("page_token", e.to_string()))?;
        if t.filter_hash != filter_hash {
            return Err(RequestError::invalid(
                "page_token",
                "the token was issued for other filters (keep min_churn_probability, tier_ids, lifecycle_stages, exclude_churned and interest_categories unchanged while paging)",
            ));
        }
        if t.order != order {
            return Err(RequestError::invalid(
                "page_token",
                "the token was issued for another order_by (keep it unchanged while paging)",
            ));
        }
        (
            t.as_of,
            Some((t.last_probability, t.last_user)),
            Some(t.version),
        )
    };
    Ok(AtRiskQuery {
        min_probability: p,
        tiers,
        stages,
        categories,
        limit,
        as_of,
        after,
        filter_hash,
        order,
        exclude_churned: req.exclude_churned,
        pinned,
    })
}

/// The value `order` ranks a served user by (what a page token's cursor holds).
pub(crate) fn order_value(order: Order, u: &proto::UserTier) -> f64 {
    match order {
        Order::ChurnDescending => u.churn_probability,
        Order::ValueAtRiskDescending => u.value_at_risk,
    }
}

/// The token that continues after `last` (the page's final user and its [`order_value`]) in
/// the page's version.
pub fn next_page_token(
    q: &AtRiskQuery,
    page: (VersionId, Timestamp),
    last: (&str, f64),
    keys: &TokenKeys,
) -> String {
    PageToken {
        as_of: page.1,
        last_probability: last.1,
        last_user: last.0.to_string(),
        filter_hash: q.filter_hash,
        order: q.order,
        version: page.0,
    }
    .encode(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_defaults_to_churn_and_unknown_orders_are_refused() {
        let mut req = proto::ListAtRiskUsersRequest::default();
        assert_eq!(order_of(&req).ok(), Some(Order::ChurnDescending));
        req.order_by = proto::AtRiskOrder::ValueAtRisk as i32;
        assert_eq!(order_of(&req).ok(), Some(Order::ValueAtRiskDescending));
        req.order_by = 7;
        assert!(order_of(&req).is_err());
        let plain = proto::ListAtRiskUsersRequest::default();
        let saveable = proto::ListAtRiskUsersRequest {
            exclude_churned: true,
            ..Default::default()
        };
        assert_ne!(filter_hash(&plain), filter_hash(&saveable));
    }
    use proptest::prelude::*;

    const NOW: Timestamp = 1_717_200_000;

    fn rules(only_user: Option<&str>) -> EventRules<'_> {
        EventRules {
            now: NOW,
            future_tolerance: 300,
            earliest: crate::features::DEFAULT_EARLIEST_EVENT,
            only_user,
            kinds: &CANONICAL,
        }
    }

    static CANONICAL: KindResolver = KindResolver::CANONICAL;

    #[test]
    fn a_playbook_line_can_name_the_users_top_category() {
        let lines = vec![
            "recommend new arrivals in {top_category}".to_string(),
            "invite to the fan group".to_string(),
        ];
        let mut i = Interests::default();
        assert_eq!(
            playbook(&lines, &i)[0],
            "recommend new arrivals in their favourite categories"
        );
        learn_name(hash_str("lipstick-beauty"), "lipstick-beauty");
        i.add(hash_str("lipstick-beauty"), 300.0);
        i.add(hash_str("books"), 200.0);
        let out = playbook(&lines, &i);
        assert_eq!(out[0], "recommend new arrivals in lipstick-beauty");
        assert_eq!(out[1], lines[1]);
    }

    /// Rooms in the answer: named from RecordEvents' room ids (an unknown hash as `#` and hex),
    /// highest score first, scored as of the answer's time.
    #[test]
    fn an_answers_rooms_are_named_and_ranked_by_score() {
        let e = proto::Event {
            user_id: "u".into(),
            ts: Some(to_timestamp(NOW - 10)),
            kind: "order".into(),
            room_id: "room_0042".into(),
            ..Default::default()
        };
        let ev = event(0, &e, rules(None)).unwrap().unwrap();
        assert_eq!(ev.room, hash_str("room_0042"));
        let mut r = Rooms::default();
        r.add(hash_str("room_0042"), 300.0);
        r.add(7, 301.0);
        let t = crate::features::interests::T_REF;
        let got = rooms(&r, t);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].room_id, "#00000007");
        assert_eq!(got[1].room_id, "room_0042");
        assert!((got[1].score - 2f64.powi(300)).abs() <= 1e-6 * 2f64.powi(300));
    }

    #[test]
    fn an_event_channel_is_read_loosely_and_unknown_values_are_other() {
        let e = |c: &str| proto::Event {
            user_id: "u".into(),
            ts: Some(to_timestamp(NOW - 10)),
            kind: "view".into(),
            channel: c.into(),
            ..Default::default()
        };
        let ch = |c: &str| event(0, &e(c), rules(None)).unwrap().unwrap().channel;
        assert_eq!(ch(""), Channel::Unspecified as u8);
        assert_eq!(ch(" Social "), Channel::Social as u8);
        assert_eq!(ch("kiosk"), Channel::Other as u8);
        let bad = event(3, &e("li\u{7}ve"), rules(None)).unwrap_err();
        assert!(bad.to_string().contains("events[3].channel"), "{bad}");
    }

    fn any_event() -> impl Strategy<Value = proto::Event> {
        (
            prop_oneof![".{0,300}", Just(String::new()), "[a-z0-9-]{1,20}"],
            prop_oneof![
                ".{0,40}",
                Just("order".to_string()),
                Just(" VIEW ".to_string())
            ],
            // Any time, and times around the earliest accepted one (year 0001 to just past now).
            proptest::option::of((
                prop_oneof![any::<i64>(), MIN_SECONDS..=NOW + 1000],
                prop_oneof![any::<i32>(), 0..1_000_000_000i32],
            )),
            prop_oneof![any::<f64>(), 0.0f64..1e6, Just(0.0)],
            any::<u32>(),
            ".{0,20}",
        )
            .prop_map(
                |(user_id, kind, ts, amount, watch_seconds, room)| proto::Event {
                    user_id,
                    kind,
                    ts: ts.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                    amount,
                    watch_seconds,
                    room_id: room,
                    ..Default::default()
                },
            )
    }

    /// The documented error: INVALID_ARGUMENT naming a field of `events[i]`, or the count limit;
    /// and never a message that quotes more than the cap.
    fn documented(e: &RequestError, i: Option<usize>) -> bool {
        let short = e.to_string().len() <= 1024;
        short
            && match e {
                RequestError::InvalidArgument { field, .. } => match i {
                    Some(i) => field.starts_with(&format!("events[{i}].")),
                    None => {
                        field.starts_with("events[")
                            || field == "events"
                            || field == "user_id"
                            || field.starts_with("registered_at")
                    }
                },
                RequestError::TooMany { field, .. } => *field == "events",
                _ => false,
            }
    }

    fn order(seconds: Timestamp, kind: &str, amount: f64) -> proto::Event {
        proto::Event {
            user_id: "u1".into(),
            kind: kind.into(),
            ts: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            amount,
            ..Default::default()
        }
    }

    #[test]
    fn events_before_the_earliest_accepted_time_name_events_i_ts() {
        for t in [0, MIN_SECONDS, crate::features::DEFAULT_EARLIEST_EVENT - 1] {
            let err = event(2, &order(t, "order", 1.0), rules(None)).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with("events[2].ts: ")
                    && msg.ends_with(
                        "is before the earliest accepted event time 2000-01-01T00:00:00Z (earliest_event_time)"
                    ),
                "{msg}"
            );
        }
        let at = event(0, &order(946_684_800, "order", 1.0), rules(None))
            .unwrap()
            .unwrap();
        assert_eq!(at.ts, 946_684_800);
        let earlier = EventRules {
            earliest: MIN_SECONDS,
            ..rules(None)
        };
        assert_eq!(
            event(0, &order(0, "order", 1.0), earlier)
                .unwrap()
                .unwrap()
                .ts,
            0
        );
        assert_eq!(
            event(0, &order(MIN_SECONDS, "order", 1.0), earlier)
                .unwrap()
                .unwrap()
                .ts,
            MIN_SECONDS
        );
    }

    /// An amount out of range is named with the value in a readable form, however large.
    #[test]
    fn an_amount_out_of_range_is_quoted_short() {
        for (amount, shown) in [
            (1e300, "got 1e300"),
            (-2.5, "got -2.5"),
            (f64::INFINITY, "got inf"),
            (f64::NAN, "got NaN"),
            (1.5e12, "got 1.5e12"),
        ] {
            let err = event(1, &order(NOW - 60, "order", amount), rules(None)).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with("events[1].amount: must be a number in [0, 1e12], "),
                "{msg}"
            );
            assert!(msg.ends_with(shown) && msg.len() < 80, "{msg}");
        }
    }

    #[test]
    fn a_zero_or_missing_amount_order_with_a_padded_kind_counts_as_an_order_with_no_spend() {
        let e = event(0, &order(NOW - 60, " Order ", 0.0), rules(None))
            .unwrap()
            .unwrap();
        assert_eq!((e.kind, e.amount), (EventKind::Order, 0.0));
        let mut agg = UserAggregate::with_registration(None);
        agg.apply(&e.event());
        assert_eq!((agg.orders, agg.spend), (1, 0.0));
    }

    /// The server resolves kinds with the served bundle's mapping: a platform name maps, an
    /// ignored one is dropped, an unknown one names `events[i].kind`; a refund keeps its amount
    /// and its order id, and lowers net spend.
    #[test]
    fn kinds_resolve_with_the_bundles_mapping_and_a_refund_keeps_amount_and_order_id() {
        use crate::features::vocabulary::KindMapping;
        let mapping = KindMapping {
            kinds: [
                ("pay_success".to_string(), EventKind::Order),
                ("return".to_string(), EventKind::Refund),
            ]
            .into(),
            ignore: vec!["add_to_cart".into()],
            ..KindMapping::default()
        };
        let kinds = mapping.resolver().unwrap();
        let r = EventRules {
            kinds: &kinds,
            ..rules(None)
        };
        let with_id = |kind: &str, amount: f64, id: &str| proto::Event {
            order_id: id.into(),
            ..order(NOW - 60, kind, amount)
        };
        let paid = event(0, &with_id("PAY_SUCCESS", 30.0, "o-1"), r)
            .unwrap()
            .unwrap();
        let back = event(1, &with_id(" return ", 30.0, "o-1"), r)
            .unwrap()
            .unwrap();
        assert_eq!(
            (paid.kind, back.kind),
            (EventKind::Order, EventKind::Refund)
        );
        assert_eq!((back.amount, back.order), (30.0, hash_str("o-1")));
        assert_eq!(event(2, &with_id("add_to_cart", 0.0, ""), r).unwrap(), None);
        let err = event(3, &with_id("thumbs_up", 0.0, ""), r).unwrap_err();
        assert!(err.to_string().starts_with("events[3].kind: "), "{err}");
        let mut agg = UserAggregate::default();
        agg.apply(&paid.event());
        agg.apply(&back.event());
        assert_eq!((agg.orders, agg.orders_refunded), (1, 1));
        assert_eq!(agg.net_spend(), 0.0);
    }

    proptest! {
        #[test]
        fn any_event_converts_or_names_its_field(e in any_event()) {
            match event(3, &e, rules(None)) {
                Ok(None) => prop_assert!(false, "no mapping drops nothing"),
                Ok(Some(ev)) => {
                    prop_assert!(!ev.user_id.is_empty() && ev.user_id.len() <= MAX_USER_ID_BYTES);
                    prop_assert!(ev.ts <= NOW + 300 && ev.ts >= crate::features::DEFAULT_EARLIEST_EVENT);
                    prop_assert!(ev.amount.is_finite() && (0.0..=MAX_AMOUNT).contains(&ev.amount));
                }
                Err(err) => prop_assert!(documented(&err, Some(3)), "{err}"),
            }
        }

        #[test]
        fn any_record_events_request_is_validated_whole(events in proptest::collection::vec(any_event(), 0..12)) {
            let req = proto::RecordEventsRequest { events };
            match record_events(&req, 8, rules(None)) {
                Ok(v) => prop_assert_eq!(v.len(), req.events.len()),
                Err(err) => prop_assert!(documented(&err, None), "{err}"),
            }
        }

        #[test]
        fn any_score_user_request_scores_or_names_its_field(
            user in ".{0,300}",
            events in proptest::collection::vec(any_event(), 0..6),
            registered in proptest::option::of((any::<i64>(), any::<i32>())),
        ) {
            let req = proto::ScoreUserRequest {
                user_id: user,
                events,
                registered_at: registered.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            };
            if let Err(err) = score_user(&req, 4, rules(None)) {
                prop_assert!(documented(&err, None), "{err}");
            }
        }

        #[test]
        fn any_timestamp_is_in_range_or_refused(seconds: i64, nanos: i32) {
            let ts = prost_types::Timestamp { seconds, nanos };
            match timestamp("t", &ts) {
                Ok(t) => prop_assert!((MIN_SECONDS..=MAX_SECONDS).contains(&t)),
                Err(RequestError::InvalidArgument { field, .. }) => prop_assert!(field.starts_with('t')),
                Err(other) => prop_assert!(false, "{other}"),
            }
        }
    }
}
