//! Buy-till-you-die models: BG/NBD for repeat purchases and Gamma-Gamma for order value, fitted
//! at training time on the same point-in-time snapshot as the churn model, and the per-user
//! figures the product serves from them: P(alive), expected orders and CLV over a horizon, and
//! value at risk.
//!
//! Pure code over arrays of [`Customer`] summaries (no I/O). A user's summary is read off their
//! aggregate ([`Customer::of`]) in days, so training and the server compute it the same way:
//! - `frequency` = order days − 1 (repeat purchase days, as `lifetimes` counts with `freq="D"`);
//! - `recency` = days from the first to the last order, `age` = days from the first order to the
//!   last day observed (the day of `as_of − 1 s`, as `lifetimes` counts `T` to its
//!   `observation_period_end`). The aggregate keeps no first-order time: the first *seen* time
//!   stands in for it, exact on an orders-only log and earlier by the browsing before the first
//!   order otherwise;
//! - `monetary` = net spend / order days: the mean value of a transaction as BG/NBD counts
//!   transactions (an order day; two orders on one day are one transaction of their sum, as
//!   `lifetimes` merges them with `freq="D"`), the first order day included.
//!
//! Gamma-Gamma is fitted on the all-orders basis ([`Basis::AllOrders`]): a buyer's mean covers
//! x + 1 transactions and the likelihood counts x + 1 values, fitted over every buyer (one-time
//! buyers included). The rule, and why: the aggregate keeps total spend but not the first
//! order's amount, so the only mean it knows is over all orders; Gamma-Gamma's likelihood and
//! its shrinkage weight `p·n / (p·n + q − 1)` must then use the number of values that mean
//! averages (n = x + 1), or a one-repeat customer's mean of two orders is shrunk as if it were one
//! order. `lifetimes`' standard set-up ([`Basis::RepeatOrders`]: n = x, the repeat orders' mean)
//! is the other consistent choice; it needs the first order's amount, which the aggregate (and
//! its WAL, snapshot, Redis and warehouse formats) does not carry. Bundles written before the
//! basis was recorded read as [`Basis::RepeatOrders`], as they were fitted.
//!
//! The churn model may also use BG/NBD's P(alive) and expected orders as inputs
//! ([`PurchaseFeatures`]: fitted per training snapshot, carried in the scorer).
//!
//! Above 100,000 buyers training fits both models on a sample of 100,000 keyed by the user id's
//! hash (`train::stages::purchases`); the figures are then computed for every user.
//!
//! Users who never ordered are outside the models: their CLV, expected orders, P(alive) and value
//! at risk are 0.
//!
//! CLV over the horizon `H` days, as `lifetimes.customer_lifetime_value` computes it: in 30-day
//! steps k (the last one shorter if `H` is not a multiple of 30),
//! `CLV = Σ_k E[order value] · (E[Y(t_k)] − E[Y(t_{k−1})]) / (1 + d)^(t_k / 30)`, with `d` the
//! monthly discount rate. Value at risk = churn probability × CLV: the expected value lost if
//! the user churns, weighting what the user is expected to bring by the served churn model's
//! probability that they stop (a long-gone user has a CLV near 0, so little value at risk).

mod bgnbd;
mod gamma_gamma;
mod nelder_mead;
mod special;

pub use bgnbd::BgNbd;
pub use gamma_gamma::{Basis, GammaGamma};

use crate::features::{purchase_summary, Feature, FeatureSet, Timestamp, UserAggregate};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BtydError {
    #[error("no customers to fit on")]
    Empty,
    #[error("a customer summary is not finite or out of order (need 0 <= recency <= age)")]
    BadSummary,
    #[error("every customer has age 0: no time span to fit on")]
    NoSpan,
    #[error("{0} customers with repeat purchases: too few for Gamma-Gamma")]
    TooFewRepeatBuyers(usize),
    #[error("the {0} fit did not converge to finite positive parameters")]
    Diverged(&'static str),
    #[error("horizon {0} days or monthly discount rate out of range")]
    BadHorizon(f64),
}

/// One customer's purchase summary (see the module docs for how it is read off an aggregate).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Customer {
    /// Repeat purchases x.
    pub frequency: f64,
    /// t_x: time from the first to the last purchase.
    pub recency: f64,
    /// T: time from the first purchase to the end of observation.
    pub age: f64,
    /// Mean transaction value (see the module docs for which transactions it covers).
    pub monetary: f64,
}

impl Customer {
    /// The summary of a user as of `t`, in days ([`purchase_summary`]); `None` for a user with
    /// no order.
    pub fn of(a: &UserAggregate, t: Timestamp) -> Option<Customer> {
        let (frequency, recency, age) = purchase_summary(a, t)?;
        Some(Customer {
            frequency,
            recency,
            age,
            monetary: a.net_spend() / f64::from(a.order_days),
        })
    }
}

/// The BG/NBD behind the model-derived churn features ([`Feature::BgnbdPAlive`],
/// [`Feature::BgnbdExpectedOrders`]), serialised in the bundle's scorer so the server computes
/// them as training did. Training fits one per snapshot on the buyers known there (the rows of a
/// snapshot never see a fit on later data); the served one is fitted at the as-of time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseFeatures {
    pub bgnbd: BgNbd,
    /// The horizon of the expected orders, days (training's churn horizon).
    pub horizon_days: f64,
}

impl PurchaseFeatures {
    /// Fits the BG/NBD on `customers`.
    pub fn fit(customers: &[Customer], horizon_days: f64) -> Result<PurchaseFeatures, BtydError> {
        Self::fit_from(customers, None, horizon_days)
    }

    /// [`PurchaseFeatures::fit`] from a fit on similar data ([`BgNbd::fit_from`]).
    pub fn fit_from(
        customers: &[Customer],
        start: Option<&BgNbd>,
        horizon_days: f64,
    ) -> Result<PurchaseFeatures, BtydError> {
        let p = PurchaseFeatures {
            bgnbd: BgNbd::fit_from(customers, start)?,
            horizon_days,
        };
        p.check().map(|()| p)
    }

    /// A fitted or deserialised model is usable.
    pub fn check(&self) -> Result<(), BtydError> {
        self.bgnbd.check()?;
        if self.horizon_days > 0.0 && self.horizon_days <= 3650.0 {
            Ok(())
        } else {
            Err(BtydError::BadHorizon(self.horizon_days))
        }
    }

    /// Overwrites the model-derived columns of `raw` (original units, in `fs` order) with the
    /// user's values as of `t`: P(alive) and expected orders in the horizon, 0 without orders.
    #[inline]
    pub fn fill(&self, fs: &FeatureSet, a: &UserAggregate, t: Timestamp, raw: &mut [f64]) {
        let mut customer: Option<Option<Customer>> = None;
        for (o, f) in raw.iter_mut().zip(&fs.features) {
            if !f.is_model_derived() {
                continue;
            }
            let c = *customer.get_or_insert_with(|| Customer::of(a, t));
            *o = match (f, c) {
                (_, None) => 0.0,
                (Feature::BgnbdPAlive, Some(c)) => self.bgnbd.p_alive(&c),
                (_, Some(c)) => self.bgnbd.expected_purchases(self.horizon_days, &c),
            };
        }
    }
}

pub(crate) fn check_customers(customers: &[Customer]) -> Result<(), BtydError> {
    if customers.is_empty() {
        return Err(BtydError::Empty);
    }
    let bad = |c: &Customer| {
        !(c.frequency.is_finite() && c.recency.is_finite() && c.age.is_finite())
            || c.frequency < 0.0
            || c.recency < 0.0
            || c.recency > c.age
    };
    if customers.iter().any(bad) {
        return Err(BtydError::BadSummary);
    }
    Ok(())
}

/// The per-user value figures.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CustomerValue {
    pub p_alive: f64,
    /// Expected orders in the horizon.
    pub expected_orders: f64,
    /// Discounted expected spend in the horizon.
    pub clv: f64,
}

/// Both fitted models and the horizon they are read over: serialised in the bundle's scorer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueModel {
    pub bgnbd: BgNbd,
    /// `None` when too few users bought twice: CLV then uses each user's own mean order value.
    pub gamma_gamma: Option<GammaGamma>,
    /// Which transactions the Gamma-Gamma means cover ([`Basis::AllOrders`] for every fit now;
    /// absent, as in earlier bundles, it reads as [`Basis::RepeatOrders`]).
    #[serde(default)]
    pub basis: Basis,
    pub horizon_days: f64,
    /// Monthly (30-day) discount rate of the CLV.
    pub monthly_discount: f64,
    /// Mean transaction value (per order day) of the training buyers: the order value of users
    /// Gamma-Gamma cannot judge.
    pub mean_order_value: f64,
}

impl ValueModel {
    /// Fits both models on the summaries (Gamma-Gamma is left out, not an error, when too few
    /// customers have repeat purchases).
    pub fn fit(
        customers: &[Customer],
        horizon_days: f64,
        monthly_discount: f64,
    ) -> Result<ValueModel, BtydError> {
        Self::fit_with(customers, None, horizon_days, monthly_discount)
    }

    /// [`ValueModel::fit`], reusing `bgnbd` when it was already fitted on the same customers.
    pub fn fit_with(
        customers: &[Customer],
        bgnbd: Option<BgNbd>,
        horizon_days: f64,
        monthly_discount: f64,
    ) -> Result<ValueModel, BtydError> {
        if !(horizon_days > 0.0 && horizon_days <= 3650.0 && (0.0..1.0).contains(&monthly_discount))
        {
            return Err(BtydError::BadHorizon(horizon_days));
        }
        let bgnbd = match bgnbd {
            Some(b) => b,
            None => BgNbd::fit(customers)?,
        };
        let basis = Basis::AllOrders;
        let gamma_gamma = match GammaGamma::fit_on(customers, basis) {
            Ok(g) => Some(g),
            Err(BtydError::TooFewRepeatBuyers(_)) => None,
            Err(e) => return Err(e),
        };
        let spend: f64 = customers.iter().map(|c| c.monetary).sum();
        Ok(ValueModel {
            bgnbd,
            gamma_gamma,
            basis,
            horizon_days,
            monthly_discount,
            mean_order_value: spend / customers.len() as f64,
        })
    }

    /// A deserialised model's parameters are usable.
    pub fn check(&self) -> Result<(), BtydError> {
        self.bgnbd.check()?;
        if let Some(g) = &self.gamma_gamma {
            g.check()?;
        }
        if !(self.horizon_days > 0.0
            && self.horizon_days <= 3650.0
            && (0.0..1.0).contains(&self.monthly_discount)
            && self.mean_order_value.is_finite())
        {
            return Err(BtydError::BadHorizon(self.horizon_days));
        }
        Ok(())
    }

    /// Expected value of a customer's next transaction (Gamma-Gamma on the model's basis, or
    /// their own mean without it).
    pub fn order_value(&self, c: &Customer) -> f64 {
        match &self.gamma_gamma {
            Some(g) => g.expected_value(self.basis, c, self.mean_order_value),
            None if c.monetary > 0.0 => c.monetary,
            None => self.mean_order_value,
        }
    }

    /// The figures of one customer; all 0 for `None` (a user who never ordered).
    pub fn value(&self, c: Option<&Customer>) -> CustomerValue {
        let Some(c) = c else {
            return CustomerValue::default();
        };
        // The CLV's last cumulative step is E[Y(horizon)]: one series per step, not one more.
        let (clv, expected_orders) = clv_and_orders(
            &self.bgnbd,
            self.order_value(c),
            c,
            self.horizon_days,
            30.0,
            self.monthly_discount,
        );
        CustomerValue {
            p_alive: self.bgnbd.p_alive(c),
            expected_orders,
            clv,
        }
    }
}

/// Discounted expected spend over `horizon` in steps of `period` (the discount rate per
/// period), as `lifetimes.customer_lifetime_value` sums it.
pub fn clv(
    model: &BgNbd,
    order_value: f64,
    c: &Customer,
    horizon: f64,
    period: f64,
    discount: f64,
) -> f64 {
    clv_and_orders(model, order_value, c, horizon, period, discount).0
}

/// [`clv`] and the expected purchases over the whole horizon (its last cumulative step).
fn clv_and_orders(
    model: &BgNbd,
    order_value: f64,
    c: &Customer,
    horizon: f64,
    period: f64,
    discount: f64,
) -> (f64, f64) {
    let steps = (horizon / period - 1e-9).ceil().max(1.0) as usize;
    let mut total = 0.0;
    let mut before = 0.0;
    for k in 1..=steps {
        let t = (k as f64 * period).min(horizon);
        let cumulative = model.expected_purchases(t, c);
        total += order_value * (cumulative - before) / (1.0 + discount).powf(t / period);
        before = cumulative;
    }
    (total, before)
}

#[cfg(test)]
mod tests;
