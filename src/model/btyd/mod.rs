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
//!   `observation_period_end`), both from the first *order* day (`UserAggregate::first_order_day`,
//!   as `lifetimes` counts from the first purchase; a live-commerce user often watches for weeks
//!   before it). Where that day is unknown (an aggregate read from an older layout, or a
//!   warehouse table before schema version 3) the first *seen* day stands in for it, exact on
//!   an orders-only log and earlier by the browsing before the first order otherwise;
//! - `monetary` = net spend / order days: the mean value of a transaction as BG/NBD counts
//!   transactions (an order day; two orders on one day are one transaction of their sum, as
//!   `lifetimes` merges them with `freq="D"`), the first order day included;
//! - `repeat_monetary` = the net spend of the order days after the first / x: the mean of the
//!   repeat transactions, as `lifetimes`' `summary_data_from_transaction_data` computes its
//!   `monetary_value` (0 for x = 0). The aggregate keeps the first order day's spend
//!   (`UserAggregate::first_and_repeat_spend`; refunds spread over the order days in proportion
//!   to their spend); `None` when it is unknown (an aggregate read from an older layout, or a
//!   warehouse table before schema version 3).
//!
//! Gamma-Gamma is fitted on the repeat-orders basis by default ([`Basis::RepeatOrders`],
//! `lifetimes`' standard model, Fader, Hardie & Lee 2005): a buyer's (n, m) is (x, the repeat
//! mean), fitted over the buyers with x ≥ 1; a one-time buyer's expected order value is the
//! population mean. Its shrinkage weight `p·n / (p·n + q − 1)` counts the values the mean
//! averages. The all-orders basis ([`Basis::AllOrders`]: n = x + 1, the mean over all order
//! days, every buyer in the fit) stays selectable (`[value] gamma_gamma_basis = "all_orders"`)
//! and is what a repeat-basis fit falls back to when any repeat buyer's first order day is
//! unknown (training from a table without the column: the fit would otherwise mix the two
//! means); the fitted model records its basis. Bundles written before the basis was recorded
//! read as [`Basis::Unrecorded`] (n = x over the all-order-days mean, as they were fitted);
//! bundles fitted on the all-orders basis keep it. Measured on CDNOW against `lifetimes`: see
//! BENCHMARKS.md (issue 12).
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
    /// Mean transaction value over every order day (module docs).
    pub monetary: f64,
    /// Mean value of the repeat transactions (order days after the first; 0 without any),
    /// `None` when the first order day's spend is unknown (module docs).
    pub repeat_monetary: Option<f64>,
}

impl Customer {
    /// The summary of a user as of `t`, in days ([`purchase_summary`]); `None` for a user with
    /// no order.
    pub fn of(a: &UserAggregate, t: Timestamp) -> Option<Customer> {
        let (frequency, recency, age) = purchase_summary(a, t)?;
        let repeat_monetary = a.first_and_repeat_spend().map(|(_, repeat)| {
            if frequency >= 1.0 {
                repeat / frequency
            } else {
                0.0
            }
        });
        Some(Customer {
            frequency,
            recency,
            age,
            monetary: a.net_spend() / f64::from(a.order_days),
            repeat_monetary,
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
    /// Which transactions the Gamma-Gamma means cover (the configured basis, or
    /// [`Basis::AllOrders`] when the repeat means were not all known; absent, as in bundles
    /// written before it was recorded, it reads as [`Basis::Unrecorded`]).
    #[serde(default = "Basis::unrecorded")]
    pub basis: Basis,
    pub horizon_days: f64,
    /// Monthly (30-day) discount rate of the CLV.
    pub monthly_discount: f64,
    /// Mean transaction value (per order day) of the training buyers: the order value of users
    /// Gamma-Gamma cannot judge.
    pub mean_order_value: f64,
}

impl ValueModel {
    /// Fits both models on the summaries, Gamma-Gamma on the repeat-orders basis (left out,
    /// not an error, when too few customers have repeat purchases).
    pub fn fit(
        customers: &[Customer],
        horizon_days: f64,
        monthly_discount: f64,
    ) -> Result<ValueModel, BtydError> {
        Self::fit_with(
            customers,
            None,
            Basis::RepeatOrders,
            horizon_days,
            monthly_discount,
        )
    }

    /// The basis a fit on `customers` uses when `basis` is asked for: the repeat-orders basis
    /// needs every repeat buyer's repeat mean, else the all-orders basis (module docs);
    /// [`Basis::Unrecorded`] is never fitted (read as the all-orders basis).
    pub fn fitted_basis(customers: &[Customer], basis: Basis) -> Basis {
        let unknown = |c: &Customer| c.frequency >= 1.0 && c.repeat_monetary.is_none();
        match basis {
            Basis::RepeatOrders if !customers.iter().any(unknown) => Basis::RepeatOrders,
            _ => Basis::AllOrders,
        }
    }

    /// [`ValueModel::fit`] on `basis` (see [`ValueModel::fitted_basis`]), reusing `bgnbd` when
    /// it was already fitted on the same customers.
    pub fn fit_with(
        customers: &[Customer],
        bgnbd: Option<BgNbd>,
        basis: Basis,
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
        let basis = Self::fitted_basis(customers, basis);
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
