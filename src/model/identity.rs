//! The catalogue of business identities a cluster can be given, and how a centroid is judged
//! against them.
//!
//! Each archetype scores a centroid (in scaled space, so 0 is the population average and 1 a
//! standard deviation) with signed weights on [`Feature`]s; features the model lacks count 0.
//! Clusters get archetypes by minimum-cost assignment, so two clusters never share an identity.
//!
//! Names must hold on any data: each archetype has *defining* features with a direction
//! (`dormant`: days since activity high). An archetype is offered only when the model has all
//! its defining features (no engagement names on an orders-only log, whose feature set has no
//! comments), and a cluster may take it only when its centroid shows each of them by at least
//! [`SHOWN`] standard deviations in that direction ([`Archetype::shown_by`]). A cluster that shows
//! the meaning of an archetype another cluster already holds is not given a second, unrelated
//! name: it is named after that archetype and what separates the two ([`separated`], e.g.
//! `dormant_high_monetary_total`, "Dormant (higher monetary total)").
//!
//! [`TierIdentity`] (what callers see instead of a cluster index) lives here; `tiers` uses this
//! module, never the other way round.

use crate::features::Feature;
use pathfinding::prelude::{kuhn_munkres_min, Matrix};
use serde::{Deserialize, Serialize};

/// A tier's business identity: what callers see instead of a cluster index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierIdentity {
    pub id: String,
    pub name_en: String,
    pub name_zh: String,
    pub description: String,
    pub playbook: Vec<String>,
}

/// How far (in standard deviations of the scaled features) a centroid must lean in a defining
/// feature's direction to show it.
pub const SHOWN: f64 = 0.25;

impl TierIdentity {
    /// An identity with an empty description (training writes one from the tier's profile).
    pub fn new(
        id: impl Into<String>,
        name_en: impl Into<String>,
        name_zh: impl Into<String>,
        playbook: Vec<String>,
    ) -> TierIdentity {
        TierIdentity {
            id: id.into(),
            name_en: name_en.into(),
            name_zh: name_zh.into(),
            description: String::new(),
            playbook,
        }
    }
}

pub(crate) struct Archetype {
    pub id: &'static str,
    pub name_en: &'static str,
    pub name_zh: &'static str,
    pub weights: &'static [(Feature, f64)],
    /// The features that define the identity, with their direction (+1 high, -1 low): all must
    /// be in the model and shown by the centroid.
    pub defining: &'static [(Feature, f64)],
    pub playbook: &'static [&'static str],
}

impl Archetype {
    pub fn identity(&self) -> TierIdentity {
        TierIdentity {
            id: self.id.to_string(),
            name_en: self.name_en.to_string(),
            name_zh: self.name_zh.to_string(),
            description: String::new(),
            playbook: self.playbook.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The model has every defining feature.
    pub fn available(&self, features: &[Feature]) -> bool {
        self.defining.iter().all(|(f, _)| features.contains(f))
    }

    /// The model has every defining feature and the centroid leans at least [`SHOWN`] in each
    /// one's direction.
    pub fn shown_by(&self, centroid: &[f64], features: &[Feature]) -> bool {
        self.defining.iter().all(|(f, sign)| {
            features
                .iter()
                .position(|g| g == f)
                .is_some_and(|j| sign * centroid[j] >= SHOWN)
        })
    }

    /// The defining features with the centroid's values: "days_since_activity +1.92 SD".
    pub fn evidence(&self, centroid: &[f64], features: &[Feature]) -> String {
        self.defining
            .iter()
            .map(|(f, _)| match features.iter().position(|g| g == f) {
                Some(j) => format!("{} {:+.2} SD", f.name(), centroid[j]),
                None => format!("{} absent", f.name()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The weighted sum over the features the model has (`features`, in column order).
    pub fn score(&self, centroid: &[f64], features: &[Feature]) -> f64 {
        self.weights
            .iter()
            .filter_map(|(f, w)| {
                features
                    .iter()
                    .position(|g| g == f)
                    .map(|j| w * centroid[j])
            })
            .sum()
    }
}

pub(crate) const CATALOGUE: &[Archetype] = &[
    Archetype {
        id: "core_fans",
        name_en: "Core fans",
        name_zh: "核心铁粉",
        weights: &[
            (Feature::MonetaryTotal, 1.0),
            (Feature::Frequency, 1.0),
            (Feature::Comments, 0.5),
            (Feature::Likes, 0.3),
            (Feature::Shares, 0.3),
            (Feature::WatchMinutes, 0.3),
            (Feature::RecencyDays, -0.7),
            (Feature::DaysSinceActivity, -0.5),
        ],
        defining: &[
            (Feature::Frequency, 1.0),
            (Feature::MonetaryTotal, 1.0),
            (Feature::RecencyDays, -1.0),
        ],
        playbook: &[
            "Exclusive fan community and early access to drops",
            "Priority co-streaming and backstage moments with hosts",
            "New-product trials and VIP gifts",
        ],
    },
    Archetype {
        id: "active_regulars",
        name_en: "Active regulars",
        name_zh: "活跃常客",
        weights: &[
            (Feature::RecencyDays, -0.8),
            (Feature::DaysSinceActivity, -0.8),
            (Feature::Frequency, 0.5),
            (Feature::MonetaryTotal, 0.3),
            (Feature::TenureDays, 0.3),
        ],
        defining: &[
            (Feature::RecencyDays, -1.0),
            (Feature::DaysSinceActivity, -1.0),
        ],
        playbook: &[
            "Membership points and tier upgrades",
            "Flash sales at the hours they usually watch",
            "Greet them by name in the live room",
        ],
    },
    Archetype {
        id: "potential_new",
        name_en: "Potential new customers",
        name_zh: "潜力新客",
        weights: &[
            (Feature::TenureDays, -1.5),
            (Feature::Frequency, -0.3),
            (Feature::DaysSinceActivity, -0.5),
        ],
        defining: &[(Feature::TenureDays, -1.0)],
        playbook: &[
            "Guided first order with a new-user coupon",
            "Route them to best-seller rooms",
            "Onboarding message within 48 hours",
        ],
    },
    Archetype {
        id: "bargain_hunters",
        name_en: "Bargain hunters",
        name_zh: "价格敏感客",
        weights: &[
            (Feature::Frequency, 1.5),
            (Feature::MonetaryAvg, -1.0),
            (Feature::Sessions, -0.3),
        ],
        defining: &[(Feature::Frequency, 1.0), (Feature::MonetaryAvg, -1.0)],
        playbook: &[
            "Bundle deals and spend-threshold discounts (满减)",
            "Flash-sale reminders",
            "Avoid blanket coupons; nudge basket size instead",
        ],
    },
    Archetype {
        id: "silent_onlookers",
        name_en: "Silent onlookers",
        name_zh: "沉默围观者",
        weights: &[
            (Feature::Sessions, 0.8),
            (Feature::WatchMinutes, 0.8),
            (Feature::Comments, -0.7),
            (Feature::Likes, -0.4),
            (Feature::Frequency, -0.6),
            (Feature::MonetaryTotal, -0.4),
        ],
        defining: &[(Feature::Sessions, 1.0), (Feature::Frequency, -1.0)],
        playbook: &[
            "Low-friction interactions: polls and lucky draws",
            "Limited-time offers in the rooms they watch",
            "Social proof: show what others are buying",
        ],
    },
    Archetype {
        id: "drifting_away",
        name_en: "Drifting away",
        name_zh: "渐行渐远",
        weights: &[
            (Feature::Trend, -1.5),
            (Feature::DaysSinceActivity, 0.4),
            (Feature::Frequency, 0.3),
        ],
        defining: &[(Feature::Trend, -1.0)],
        playbook: &[
            "Win-back coupon before they go quiet",
            "Personalised replays of their favourite hosts",
            "Ask why: a one-question survey",
        ],
    },
    Archetype {
        id: "dormant",
        name_en: "Dormant",
        name_zh: "沉睡用户",
        weights: &[
            (Feature::DaysSinceActivity, 1.2),
            (Feature::RecencyDays, 0.8),
            (Feature::Trend, -0.3),
            (Feature::Sessions, -0.3),
        ],
        defining: &[(Feature::DaysSinceActivity, 1.0)],
        playbook: &[
            "Reactivation campaign with a strong incentive",
            "Re-introduce them through new hosts and categories",
            "Suppress from costly channels if they do not respond",
        ],
    },
    Archetype {
        id: "engaged_fans",
        name_en: "Deeply engaged fans",
        name_zh: "深度互动粉",
        weights: &[
            (Feature::Comments, 1.0),
            (Feature::Likes, 0.8),
            (Feature::Shares, 0.8),
            (Feature::MonetaryTotal, -0.8),
        ],
        defining: &[(Feature::Comments, 1.0)],
        playbook: &[
            "Convert engagement: host shout-outs with product links",
            "Fan-club tasks that reward the next purchase",
            "Invite them to community events",
        ],
    },
    Archetype {
        id: "content_browsers",
        name_en: "Content browsers",
        name_zh: "内容浏览者",
        weights: &[
            (Feature::Rooms, 1.0),
            (Feature::Categories, 1.0),
            (Feature::Sessions, 0.5),
            (Feature::Frequency, -0.5),
        ],
        defining: &[(Feature::Rooms, 1.0), (Feature::Categories, 1.0)],
        playbook: &[
            "Personalised room recommendations across categories",
            "Curated themed sessions",
            "Follow prompts for the hosts they return to",
        ],
    },
];

/// A neutral identity for clusters beyond the catalogue.
pub(crate) fn generic(n: usize) -> TierIdentity {
    TierIdentity {
        id: format!("segment_{n}"),
        name_en: format!("Segment {n}"),
        name_zh: format!("用户群 {n}"),
        description: String::new(),
        playbook: vec!["Review this segment's profile before targeting it".to_string()],
    }
}

/// Archetype scores are assigned as integers (the assignment solver wants them): in millionths.
const COST_SCALE: f64 = 1e6;
/// The cost of a pair whose centroid does not show the archetype (never kept).
const FORBIDDEN: i64 = i64::MAX / 1024;

/// For each centroid, the index into `free` of its archetype: `None` when it shows none of the
/// archetypes left to it (or there are more centroids than archetypes). Maximises the total
/// score over the pairs whose centroid shows the archetype ([`Archetype::shown_by`]).
pub(crate) fn assign_archetypes(
    centroids: &[&[f64]],
    features: &[Feature],
    free: &[&Archetype],
) -> Vec<Option<usize>> {
    let (n, m) = (centroids.len(), free.len());
    let mut out = vec![None; n];
    if n == 0 || m == 0 {
        return out;
    }
    let allowed = |c: usize, a: usize| free[a].shown_by(centroids[c], features);
    let score = |c: usize, a: usize| -> i64 {
        if !allowed(c, a) {
            return FORBIDDEN;
        }
        ((-free[a].score(centroids[c], features) * COST_SCALE) as i64)
            .clamp(-FORBIDDEN / 4, FORBIDDEN / 4)
    };
    if n <= m {
        let mut cost = Matrix::new(n, m, 0i64);
        for c in 0..n {
            for a in 0..m {
                cost[(c, a)] = score(c, a);
            }
        }
        let (_, assign) = kuhn_munkres_min(&cost);
        for (c, (slot, a)) in out.iter_mut().zip(assign).enumerate() {
            *slot = allowed(c, a).then_some(a);
        }
    } else {
        let mut cost = Matrix::new(m, n, 0i64);
        for a in 0..m {
            for c in 0..n {
                cost[(a, c)] = score(c, a);
            }
        }
        let (_, assign) = kuhn_munkres_min(&cost);
        for (a, &c) in assign.iter().enumerate() {
            if allowed(c, a) {
                out[c] = Some(a);
            }
        }
    }
    out
}

/// The catalogue archetype an identity id names: its own id, or a [`separated`] variant's
/// (`dormant_high_monetary_total` -> `dormant`).
pub(crate) fn archetype_of(id: &str) -> Option<&'static Archetype> {
    CATALOGUE
        .iter()
        .filter(|a| id == a.id || id.starts_with(&format!("{}_", a.id)))
        .max_by_key(|a| a.id.len())
}

/// Whether `identity` still holds for `centroid`: a catalogue identity (or a variant of one)
/// whose archetype the centroid shows; generic segments always hold. `Err` says why not.
pub(crate) fn still_holds(
    identity: &TierIdentity,
    centroid: &[f64],
    features: &[Feature],
) -> Result<(), String> {
    let Some(a) = archetype_of(&identity.id) else {
        return Ok(());
    };
    if a.shown_by(centroid, features) {
        return Ok(());
    }
    Err(format!(
        "`{}` needs {} by at least {SHOWN} SD each; this cluster: {}",
        identity.id,
        a.defining
            .iter()
            .map(|(f, s)| format!("{} {}", if *s > 0.0 { "high" } else { "low" }, f.name()))
            .collect::<Vec<_>>()
            .join(" and "),
        a.evidence(centroid, features)
    ))
}

/// Chinese labels of the features, for separated names.
fn feature_zh(f: Feature) -> &'static str {
    match f {
        Feature::RecencyDays => "距上次下单",
        Feature::Frequency => "下单次数",
        Feature::MonetaryTotal => "消费总额",
        Feature::MonetaryAvg => "客单价",
        Feature::TenureDays => "注册时长",
        Feature::DaysSinceActivity => "距上次活跃",
        Feature::WatchMinutes => "观看时长",
        Feature::Sessions => "观看场次",
        Feature::Comments => "评论",
        Feature::Likes => "点赞",
        Feature::Shares => "分享",
        Feature::Rooms => "直播间数",
        Feature::Categories => "品类数",
        Feature::Trend => "活跃趋势",
        Feature::RefundShare => "退款比例",
        Feature::OrdersRefunded => "全额退款单数",
        Feature::MeanOrderGapDays => "平均下单间隔",
        Feature::RecencyOverGap => "相对下单间隔的沉默",
        Feature::BgnbdPAlive => "存活概率",
        Feature::BgnbdExpectedOrders => "预期下单数",
    }
}

/// The identity of a cluster (`centroid`) that shows archetype `a` while another cluster
/// (`holder`) holds it: `a` qualified by the feature that separates the two most.
pub(crate) fn separated(
    a: &Archetype,
    centroid: &[f64],
    holder: &[f64],
    features: &[Feature],
) -> TierIdentity {
    let j = (0..features.len())
        .max_by(|&x, &y| {
            (centroid[x] - holder[x])
                .abs()
                .total_cmp(&(centroid[y] - holder[y]).abs())
        })
        .unwrap_or(0);
    let Some(&f) = features.get(j) else {
        return a.identity();
    };
    let high = centroid[j] >= holder[j];
    let mut t = a.identity();
    t.id = format!(
        "{}_{}_{}",
        a.id,
        if high { "high" } else { "low" },
        f.name()
    );
    t.name_en = format!(
        "{} ({} {})",
        a.name_en,
        if high { "higher" } else { "lower" },
        f.name().replace('_', " ")
    );
    t.name_zh = format!(
        "{}（{}{}）",
        a.name_zh,
        feature_zh(f),
        if high { "较高" } else { "较低" }
    );
    t
}

/// Human label and formatting for a feature value in original units.
fn phrase(feature: Feature, value: f64) -> String {
    match feature {
        Feature::RecencyDays => format!("last order {value:.0} days ago"),
        Feature::Frequency => format!("{value:.1} orders"),
        Feature::MonetaryTotal => format!("{value:.0} total spend"),
        Feature::MonetaryAvg => format!("{value:.0} per order"),
        Feature::TenureDays => format!("{value:.0} days tenure"),
        Feature::DaysSinceActivity => format!("last seen {value:.0} days ago"),
        Feature::WatchMinutes => format!("{value:.0} min watched"),
        Feature::Sessions => format!("{value:.0} live sessions"),
        Feature::Comments => format!("{value:.0} comments"),
        Feature::Likes => format!("{value:.0} likes"),
        Feature::Shares => format!("{value:.1} shares"),
        Feature::Rooms => format!("{value:.1} rooms"),
        Feature::Categories => format!("{value:.1} categories"),
        Feature::RefundShare => format!("{:.0}% of spend refunded", 100.0 * value),
        Feature::OrdersRefunded => format!("{value:.0} orders fully refunded"),
        Feature::MeanOrderGapDays => format!("{value:.0} days between orders"),
        Feature::RecencyOverGap => format!("{value:.1} own order gaps since the last order"),
        Feature::BgnbdPAlive => format!("P(alive) {value:.2}"),
        Feature::BgnbdExpectedOrders => format!("{value:.2} expected orders"),
        Feature::Trend => {
            if value < 0.0 {
                format!("activity falling ({value:+.2} log-ratio)")
            } else {
                format!("activity rising ({value:+.2} log-ratio)")
            }
        }
    }
}

/// One line describing a cluster: its three most distinctive features, high or low, with the
/// cluster's mean in original units.
pub fn describe(features: &[Feature], centroid_scaled: &[f64], raw_means: &[f64]) -> String {
    let mut order: Vec<usize> = (0..features.len()).collect();
    order.sort_by(|&a, &b| {
        centroid_scaled[b]
            .abs()
            .total_cmp(&centroid_scaled[a].abs())
    });
    let parts: Vec<String> = order
        .iter()
        .take(3)
        .map(|&j| {
            let level = if centroid_scaled[j] >= 0.0 {
                "high"
            } else {
                "low"
            };
            let f = features[j].name().replace('_', " ");
            format!("{level} {f} ({})", phrase(features[j], raw_means[j]))
        })
        .collect();
    let mut s = parts.join(", ");
    if let Some(first) = s.get(0..1) {
        s = first.to_uppercase() + &s[1..];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archetypes_go_to_the_centroids_that_fit_them() {
        let names = [
            Feature::RecencyDays,
            Feature::Frequency,
            Feature::MonetaryTotal,
            Feature::MonetaryAvg,
            Feature::TenureDays,
            Feature::DaysSinceActivity,
            Feature::Trend,
        ];
        // core-fan-like, brand-new, dormant
        let core = [-1.0, 2.0, 2.0, 0.5, 0.5, -1.0, 0.0];
        let newbie = [0.0, -0.8, -0.8, 0.0, -2.0, -0.5, 0.5];
        let dormant = [2.0, -0.5, -0.3, 0.0, 0.5, 2.0, -0.5];
        let free: Vec<&Archetype> = CATALOGUE.iter().collect();
        let a = assign_archetypes(&[&core, &newbie, &dormant], &names, &free);
        assert_eq!(free[a[0].unwrap()].id, "core_fans");
        assert_eq!(free[a[1].unwrap()].id, "potential_new");
        assert_eq!(free[a[2].unwrap()].id, "dormant");
    }

    #[test]
    fn non_buyers_are_not_bargain_hunters() {
        let names = [
            Feature::Frequency,
            Feature::MonetaryAvg,
            Feature::Sessions,
            Feature::WatchMinutes,
            Feature::Comments,
            Feature::MonetaryTotal,
        ];
        // Never ordered (frequency and average value far below the mean), watches a lot.
        let watcher = [-1.5, -1.5, 1.0, 1.0, -0.5, -1.2];
        // Orders often, small baskets.
        let hunter = [1.2, -0.8, -0.2, -0.2, -0.3, 0.2];
        let free: Vec<&Archetype> = CATALOGUE
            .iter()
            .filter(|a| ["bargain_hunters", "silent_onlookers"].contains(&a.id))
            .collect();
        let a = assign_archetypes(&[&watcher, &hunter], &names, &free);
        assert_eq!(free[a[0].unwrap()].id, "silent_onlookers");
        assert_eq!(free[a[1].unwrap()].id, "bargain_hunters");
    }

    #[test]
    fn more_centroids_than_archetypes_leaves_some_unnamed() {
        let names = [
            Feature::RecencyDays,
            Feature::Frequency,
            Feature::MonetaryTotal,
            Feature::DaysSinceActivity,
        ];
        let free: Vec<&Archetype> = CATALOGUE.iter().take(2).collect();
        // Every centroid shows both archetypes (core fans, active regulars).
        let c: Vec<[f64; 4]> = (1..=4)
            .map(|i| {
                let v = f64::from(i);
                [-v, v, v, -v]
            })
            .collect();
        let refs: Vec<&[f64]> = c.iter().map(|x| &x[..]).collect();
        let a = assign_archetypes(&refs, &names, &free);
        assert_eq!(a.iter().filter(|x| x.is_none()).count(), 2);
    }

    /// The columns of a transaction-only log (no behaviour events).
    const ORDERS_ONLY: [Feature; 7] = [
        Feature::RecencyDays,
        Feature::Frequency,
        Feature::MonetaryTotal,
        Feature::MonetaryAvg,
        Feature::TenureDays,
        Feature::DaysSinceActivity,
        Feature::Trend,
    ];

    #[test]
    fn an_orders_only_log_gets_no_engagement_names_and_one_dormant_tier() {
        // Two lapsed clusters (the second spent more), core buyers, recent first-timers.
        let lapsed = [1.8, -0.4, -0.3, 0.0, 0.4, 1.9, 0.0];
        let lapsed_rich = [1.9, -0.2, 0.6, 0.9, 0.5, 2.0, 0.0];
        let core = [-0.9, 1.8, 1.7, 0.3, 0.4, -0.9, 0.1];
        let new = [-0.5, -0.5, -0.4, 0.0, -1.6, -0.6, 0.3];
        let free: Vec<&Archetype> = CATALOGUE.iter().collect();
        assert!(free.iter().filter(|a| a.available(&ORDERS_ONLY)).all(|a| ![
            "engaged_fans",
            "silent_onlookers",
            "content_browsers"
        ]
        .contains(&a.id)));
        let cs: [&[f64]; 4] = [&lapsed, &lapsed_rich, &core, &new];
        let got = assign_archetypes(&cs, &ORDERS_ONLY, &free);
        let ids: Vec<Option<&str>> = got.iter().map(|a| a.map(|i| free[i].id)).collect();
        assert_eq!(ids[2], Some("core_fans"));
        assert_eq!(ids[3], Some("potential_new"));
        assert_eq!(ids.iter().filter(|x| **x == Some("dormant")).count(), 1);
        let unnamed = ids
            .iter()
            .position(Option::is_none)
            .expect("one lapsed cluster left");
        assert!(unnamed <= 1, "{ids:?}");
        // It is named after the meaning it shares and what separates it from the holder.
        let holder = 1 - unnamed;
        let dormant = archetype_of("dormant").expect("in the catalogue");
        let t = separated(dormant, cs[unnamed], cs[holder], &ORDERS_ONLY);
        assert!(
            t.id.starts_with("dormant_") && t.id != "dormant",
            "{}",
            t.id
        );
        assert!(t.name_en.starts_with("Dormant ("), "{}", t.name_en);
        assert_eq!(archetype_of(&t.id).map(|a| a.id), Some("dormant"));
    }

    #[test]
    fn an_identity_holds_only_while_its_centroid_shows_its_defining_features() {
        let dormant = archetype_of("dormant").expect("dormant").identity();
        let lapsed = [1.8, -0.4, -0.3, 0.0, 0.4, 1.9, 0.0];
        let active = [-0.8, 0.5, 0.3, 0.0, 0.4, -0.9, 0.0];
        assert_eq!(still_holds(&dormant, &lapsed, &ORDERS_ONLY), Ok(()));
        let why = still_holds(&dormant, &active, &ORDERS_ONLY).unwrap_err();
        assert!(why.contains("days_since_activity -0.90 SD"), "{why}");
        let fans = archetype_of("engaged_fans")
            .expect("engaged_fans")
            .identity();
        let why = still_holds(&fans, &lapsed, &ORDERS_ONLY).unwrap_err();
        assert!(why.contains("comments absent"), "{why}");
        assert_eq!(still_holds(&generic(3), &lapsed, &ORDERS_ONLY), Ok(()));
    }

    #[test]
    fn descriptions_name_the_most_distinctive_features() {
        let d = describe(
            &[Feature::Frequency, Feature::RecencyDays],
            &[2.5, -0.1],
            &[12.0, 3.0],
        );
        assert!(d.starts_with("High frequency (12.0 orders)"), "{d}");
    }

    #[test]
    fn catalogue_ids_are_unique() {
        let mut ids: Vec<&str> = CATALOGUE.iter().map(|a| a.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), CATALOGUE.len());
    }
}
