//! The rule-based views: the 8 classic RFM segments and the lifecycle stage.
//!
//! Both are pure functions of original-unit feature values and thresholds that are fitted (RFM:
//! population medians among buyers at the training snapshot) or configured (lifecycle, in
//! `training/train.toml`) and stored in the bundle, so the server classifies exactly as training did.

use serde::{Deserialize, Serialize};

/// Population thresholds for "high" R, F and M. Fitted as medians over users with an order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RfmThresholds {
    /// R is high (recent) when days since the last order are at most this.
    pub recency_days: f64,
    /// F is high when the number of orders is above this.
    pub frequency: f64,
    /// M is high when total spend is above this.
    pub monetary: f64,
}

impl RfmThresholds {
    /// Medians of (recency, frequency, monetary) over buyers; `None` when nobody has ordered.
    pub fn fit(buyers: impl Iterator<Item = (f64, f64, f64)>) -> Option<Self> {
        let (mut r, mut f, mut m) = (Vec::new(), Vec::new(), Vec::new());
        for (a, b, c) in buyers {
            r.push(a);
            f.push(b);
            m.push(c);
        }
        if r.is_empty() {
            return None;
        }
        Some(RfmThresholds {
            recency_days: median(&mut r),
            frequency: median(&mut f),
            monetary: median(&mut m),
        })
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The classic RFM segments (重要价值 ... 一般挽留), plus users who never ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RfmSegment {
    /// Recent, frequent, high spend.
    ImportantValue,
    /// Recent, infrequent, high spend.
    ImportantDevelop,
    /// Not recent, frequent, high spend.
    ImportantKeep,
    /// Not recent, infrequent, high spend.
    ImportantRetain,
    GeneralValue,
    GeneralDevelop,
    GeneralKeep,
    GeneralRetain,
    NonBuyer,
}

impl RfmSegment {
    pub const ALL: [RfmSegment; 9] = [
        RfmSegment::ImportantValue,
        RfmSegment::ImportantDevelop,
        RfmSegment::ImportantKeep,
        RfmSegment::ImportantRetain,
        RfmSegment::GeneralValue,
        RfmSegment::GeneralDevelop,
        RfmSegment::GeneralKeep,
        RfmSegment::GeneralRetain,
        RfmSegment::NonBuyer,
    ];

    /// `spend` is net spend (refunds deducted); `buyer` is
    /// [`super::UserAggregate::is_buyer`]: a user without orders, or whose every order was
    /// refunded, is a non-buyer.
    pub(crate) fn classify(
        recency_days: f64,
        orders: f64,
        spend: f64,
        buyer: bool,
        th: &RfmThresholds,
    ) -> RfmSegment {
        if orders <= 0.0 || !buyer {
            return RfmSegment::NonBuyer;
        }
        let r = recency_days <= th.recency_days;
        let f = orders > th.frequency;
        let m = spend > th.monetary;
        match (m, r, f) {
            (true, true, true) => RfmSegment::ImportantValue,
            (true, true, false) => RfmSegment::ImportantDevelop,
            (true, false, true) => RfmSegment::ImportantKeep,
            (true, false, false) => RfmSegment::ImportantRetain,
            (false, true, true) => RfmSegment::GeneralValue,
            (false, true, false) => RfmSegment::GeneralDevelop,
            (false, false, true) => RfmSegment::GeneralKeep,
            (false, false, false) => RfmSegment::GeneralRetain,
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            RfmSegment::ImportantValue => "important_value",
            RfmSegment::ImportantDevelop => "important_develop",
            RfmSegment::ImportantKeep => "important_keep",
            RfmSegment::ImportantRetain => "important_retain",
            RfmSegment::GeneralValue => "general_value",
            RfmSegment::GeneralDevelop => "general_develop",
            RfmSegment::GeneralKeep => "general_keep",
            RfmSegment::GeneralRetain => "general_retain",
            RfmSegment::NonBuyer => "non_buyer",
        }
    }

    pub fn name_zh(self) -> &'static str {
        match self {
            RfmSegment::ImportantValue => "重要价值",
            RfmSegment::ImportantDevelop => "重要发展",
            RfmSegment::ImportantKeep => "重要保持",
            RfmSegment::ImportantRetain => "重要挽留",
            RfmSegment::GeneralValue => "一般价值",
            RfmSegment::GeneralDevelop => "一般发展",
            RfmSegment::GeneralKeep => "一般保持",
            RfmSegment::GeneralRetain => "一般挽留",
            RfmSegment::NonBuyer => "未购买",
        }
    }
}

/// Lifecycle thresholds, in days. Configured in `training/train.toml` and stored in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
// `default`: a configuration section may set some keys only (training/train.toml).
#[serde(deny_unknown_fields, default)]
pub struct LifecycleThresholds {
    /// Tenure below this (and not yet silent) is a new user.
    pub new_days: f64,
    /// No activity for more than this: silent.
    pub silent_days: f64,
    /// No activity for more than this: about to churn.
    pub at_risk_days: f64,
    /// No activity for more than this: churned.
    pub churned_days: f64,
}

impl Default for LifecycleThresholds {
    fn default() -> Self {
        LifecycleThresholds {
            new_days: 30.0,
            silent_days: 14.0,
            at_risk_days: 30.0,
            churned_days: 90.0,
        }
    }
}

impl LifecycleThresholds {
    /// Thresholds must be positive and ordered silent < at_risk < churned.
    pub(crate) fn is_valid(&self) -> bool {
        self.new_days > 0.0
            && self.silent_days > 0.0
            && self.silent_days < self.at_risk_days
            && self.at_risk_days < self.churned_days
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleStage {
    New,
    MatureActive,
    Silent,
    AboutToChurn,
    Churned,
}

impl LifecycleStage {
    pub const ALL: [LifecycleStage; 5] = [
        LifecycleStage::New,
        LifecycleStage::MatureActive,
        LifecycleStage::Silent,
        LifecycleStage::AboutToChurn,
        LifecycleStage::Churned,
    ];

    /// Inactivity decides first (a quiet user is silent however new), then tenure.
    pub(crate) fn classify(
        tenure_days: f64,
        days_since_activity: f64,
        th: &LifecycleThresholds,
    ) -> Self {
        if days_since_activity > th.churned_days {
            LifecycleStage::Churned
        } else if days_since_activity > th.at_risk_days {
            LifecycleStage::AboutToChurn
        } else if days_since_activity > th.silent_days {
            LifecycleStage::Silent
        } else if tenure_days < th.new_days {
            LifecycleStage::New
        } else {
            LifecycleStage::MatureActive
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            LifecycleStage::New => "new",
            LifecycleStage::MatureActive => "mature_active",
            LifecycleStage::Silent => "silent",
            LifecycleStage::AboutToChurn => "about_to_churn",
            LifecycleStage::Churned => "churned",
        }
    }

    pub(crate) fn from_id(s: &str) -> Option<Self> {
        LifecycleStage::ALL.into_iter().find(|l| l.id() == s)
    }

    pub fn name_zh(self) -> &'static str {
        match self {
            LifecycleStage::New => "新用户",
            LifecycleStage::MatureActive => "成熟活跃用户",
            LifecycleStage::Silent => "沉默用户",
            LifecycleStage::AboutToChurn => "濒临流失",
            LifecycleStage::Churned => "流失用户",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfm_segments_follow_the_classic_table() {
        let th = RfmThresholds {
            recency_days: 10.0,
            frequency: 3.0,
            monetary: 100.0,
        };
        assert_eq!(
            RfmSegment::classify(2.0, 5.0, 500.0, true, &th),
            RfmSegment::ImportantValue
        );
        assert_eq!(
            RfmSegment::classify(2.0, 1.0, 500.0, true, &th),
            RfmSegment::ImportantDevelop
        );
        assert_eq!(
            RfmSegment::classify(50.0, 5.0, 500.0, true, &th),
            RfmSegment::ImportantKeep
        );
        assert_eq!(
            RfmSegment::classify(50.0, 1.0, 500.0, true, &th),
            RfmSegment::ImportantRetain
        );
        assert_eq!(
            RfmSegment::classify(50.0, 1.0, 50.0, true, &th),
            RfmSegment::GeneralRetain
        );
        assert_eq!(
            RfmSegment::classify(5.0, 0.0, 0.0, true, &th),
            RfmSegment::NonBuyer
        );
    }

    #[test]
    fn lifecycle_puts_inactivity_before_tenure() {
        let th = LifecycleThresholds::default();
        assert_eq!(LifecycleStage::classify(5.0, 1.0, &th), LifecycleStage::New);
        assert_eq!(
            LifecycleStage::classify(200.0, 3.0, &th),
            LifecycleStage::MatureActive
        );
        assert_eq!(
            LifecycleStage::classify(200.0, 20.0, &th),
            LifecycleStage::Silent
        );
        assert_eq!(
            LifecycleStage::classify(200.0, 45.0, &th),
            LifecycleStage::AboutToChurn
        );
        assert_eq!(
            LifecycleStage::classify(200.0, 120.0, &th),
            LifecycleStage::Churned
        );
        assert!(th.is_valid());
    }

    #[test]
    fn rfm_thresholds_are_buyer_medians() {
        let th =
            RfmThresholds::fit([(1.0, 1.0, 10.0), (3.0, 2.0, 30.0), (9.0, 7.0, 20.0)].into_iter());
        assert_eq!(
            th,
            Some(RfmThresholds {
                recency_days: 3.0,
                frequency: 2.0,
                monetary: 20.0
            })
        );
        assert_eq!(RfmThresholds::fit(std::iter::empty()), None);
    }
}
