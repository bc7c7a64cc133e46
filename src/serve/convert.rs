//! Proto ⇄ domain, in one place. Requests are validated while they are converted, so a handler
//! either gets well-formed domain values or an INVALID_ARGUMENT naming the field.

use super::at_risk::{AtRiskQuery, PageToken};
use super::error::RequestError;
use super::slot::LiveModel;
use super::state::UserEvent;
use crate::features::hash::fnv1a64;
use crate::features::time::format_rfc3339;
use crate::features::{hash_str, EventKind, LifecycleStage, Timestamp, Transform, UserAggregate};
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
    /// ScoreUser: every event must be this user's (or leave `user_id` empty).
    pub only_user: Option<&'a str>,
}

/// Validates and converts `events[i]`.
pub fn event(i: usize, e: &proto::Event, rules: EventRules<'_>) -> Result<UserEvent, RequestError> {
    let f = |name: &str| format!("events[{i}].{name}");
    let user = match rules.only_user {
        Some(only) => {
            if !e.user_id.is_empty() && e.user_id != only {
                return Err(RequestError::invalid(
                    f("user_id"),
                    format!("{:?} is not the scored user {only:?}", e.user_id),
                ));
            }
            only.to_string()
        }
        None => user_id(&f("user_id"), &e.user_id)?.to_string(),
    };
    let kind: EventKind = e
        .kind
        .parse()
        .map_err(|err: crate::features::event::UnknownKind| {
            RequestError::invalid(f("kind"), err.to_string())
        })?;
    let ts = past_time(&f("ts"), e.ts.as_ref(), rules.now, rules.future_tolerance)?;
    if !e.amount.is_finite() || !(0.0..=MAX_AMOUNT).contains(&e.amount) {
        return Err(RequestError::invalid(
            f("amount"),
            format!("must be a number in [0, {MAX_AMOUNT:e}], got {}", e.amount),
        ));
    }
    Ok(UserEvent {
        user_id: user,
        ts,
        kind,
        amount: if kind == EventKind::Order {
            e.amount
        } else {
            0.0
        },
        watch_seconds: e.watch_seconds,
        room: hash_str(&e.room_id),
        category: hash_str(&e.category),
    })
}

/// RecordEvents: every event validated before any is accepted.
pub fn record_events(
    req: &proto::RecordEventsRequest,
    limit: usize,
    rules: EventRules<'_>,
) -> Result<Vec<UserEvent>, RequestError> {
    within_limit("events", req.events.len(), limit)?;
    req.events
        .iter()
        .enumerate()
        .map(|(i, e)| event(i, e, rules))
        .collect()
}

/// ScoreUser: the user's aggregate built from the request alone.
pub fn score_user(
    req: &proto::ScoreUserRequest,
    limit: usize,
    now: Timestamp,
    tolerance: i64,
) -> Result<UserAggregate, RequestError> {
    within_limit("events", req.events.len(), limit)?;
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
        now,
        future_tolerance: tolerance,
        only_user: Some(&req.user_id),
    };
    let mut agg = UserAggregate::with_registration(registered);
    for (i, e) in req.events.iter().enumerate() {
        agg.apply(&event(i, e, rules)?.event());
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
        recommended_actions: tier.map(|t| t.playbook.clone()).unwrap_or_default(),
        model_version: model.version.clone(),
        as_of: Some(to_timestamp(as_of)),
        next_page_token: String::new(),
    }
}

/// GetModelInfo, from the manifest.
pub(crate) fn model_info(model: &LiveModel, users_held: usize) -> proto::ModelInfo {
    let m = &model.manifest;
    let created_at = chrono::DateTime::parse_from_rfc3339(&m.created_at)
        .ok()
        .map(|d| to_timestamp(d.timestamp()));
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
        warnings: m.warnings.clone(),
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

/// ListAtRiskUsers: filters resolved against the model, the page token checked.
pub(crate) fn at_risk_query(
    req: &proto::ListAtRiskUsersRequest,
    model: &LiveModel,
    limits: PageLimits,
    now: Timestamp,
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
                        "unknown tier {id:?} (this model's tiers: {})",
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
                        "unknown stage {s:?} (new, mature_active, silent, about_to_churn, churned)"
                    ),
                )
            })?;
            mask[stage as usize] = true;
        }
        Some(mask)
    };
    let limit = match req.limit {
        0 => limits.default,
        n => n.min(limits.max),
    } as usize;
    let filter_hash = {
        let mut tier_ids = req.tier_ids.clone();
        tier_ids.sort();
        tier_ids.dedup();
        let mut st = req.lifecycle_stages.clone();
        st.sort();
        st.dedup();
        fnv1a64(format!("{}|{}|{}", p.to_bits(), tier_ids.join(","), st.join(",")).as_bytes())
    };
    let model_hash = fnv1a64(model.version.as_bytes());
    let (as_of, after) = if req.page_token.is_empty() {
        (now, None)
    } else {
        let t = PageToken::decode(&req.page_token).ok_or_else(|| {
            RequestError::invalid(
                "page_token",
                "malformed page token (pass next_page_token back unchanged)",
            )
        })?;
        if t.filter_hash != filter_hash {
            return Err(RequestError::invalid(
                "page_token",
                "the token was issued for other filters (keep min_churn_probability, tier_ids and lifecycle_stages unchanged while paging)",
            ));
        }
        if t.model_hash != model_hash {
            return Err(RequestError::ModelChanged(model.version.clone()));
        }
        (t.as_of, Some((t.last_probability, t.last_user)))
    };
    Ok(AtRiskQuery {
        min_probability: p,
        tiers,
        stages,
        limit,
        as_of,
        after,
        filter_hash,
    })
}

/// The token that continues after `last` (the page's final user).
pub fn next_page_token(q: &AtRiskQuery, model: &LiveModel, last: (&str, f64)) -> String {
    PageToken {
        as_of: q.as_of,
        last_probability: last.1,
        last_user: last.0.to_string(),
        filter_hash: q.filter_hash,
        model_hash: fnv1a64(model.version.as_bytes()),
    }
    .encode()
}
