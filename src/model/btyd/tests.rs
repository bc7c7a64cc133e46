use super::*;
use crate::features::DAY;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Exp, Gamma};
use rand_xoshiro::Xoshiro256PlusPlus;

/// The fixed set: 500 customers simulated from BG/NBD (r 0.24, α 4.41, a 0.79, b 2.43) and
/// Gamma-Gamma (p 6.25, q 3.74, v 15.44), made once with
/// `bench/.venv/bin/python bench/python/btyd_reference.py simulate src/model/btyd/reference.csv`.
fn reference_set() -> Vec<Customer> {
    include_str!("reference.csv")
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<f64> = l
                .split(',')
                .map(|s| s.parse().unwrap_or(f64::NAN))
                .collect();
            Customer {
                frequency: v[0],
                recency: v[1],
                age: v[2],
                // lifetimes' monetary_value: the repeat transactions' mean (both means alike:
                // the set has no first-transaction values).
                monetary: v[3],
                repeat_monetary: Some(v[3]),
            }
        })
        .collect()
}

// The reference fit, by `lifetimes` 0.11.3 (BetaGeoFitter tol 1e-10, GammaGammaFitter default
// tol), from `bench/.venv/bin/python bench/python/btyd_reference.py fit src/model/btyd/reference.csv`.
const LIFETIMES_BGNBD: [f64; 4] = [
    0.2621014060887281,
    5.893001975944481,
    0.6591553927928112,
    2.0914740640698226,
];
const LIFETIMES_GG: [f64; 3] = [7.451351219383931, 3.3137075081855083, 12.115948881955573];

fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(1e-12)
}

#[test]
fn the_bgnbd_fit_matches_the_lifetimes_reference_fit_on_the_fixed_set() {
    let data = reference_set();
    assert_eq!(data.len(), 500);
    let m = BgNbd::fit(&data).unwrap_or_else(|e| panic!("{e}"));
    let got = [m.r, m.alpha, m.a, m.b];
    for (g, w) in got.iter().zip(LIFETIMES_BGNBD) {
        assert!(close(*g, w, 2e-3), "{got:?} vs {LIFETIMES_BGNBD:?}");
    }
    // And the likelihood is at least as high as at lifetimes' optimum.
    let [r, alpha, a, b] = LIFETIMES_BGNBD;
    let reference = BgNbd { r, alpha, a, b };
    assert!(m.log_likelihood(&data) >= reference.log_likelihood(&data) - 1e-9);
}

#[test]
fn the_gamma_gamma_fit_matches_the_lifetimes_reference_fit_on_the_fixed_set() {
    let m = GammaGamma::fit(&reference_set()).unwrap_or_else(|e| panic!("{e}"));
    let got = [m.p, m.q, m.v];
    // lifetimes stops on "precision loss" here (a flat ridge in p, q, v): 2% on parameters.
    for (g, w) in got.iter().zip(LIFETIMES_GG) {
        assert!(close(*g, w, 2e-2), "{got:?} vs {LIFETIMES_GG:?}");
    }
    let [p, q, v] = LIFETIMES_GG;
    let pop = GammaGamma { p, q, v }.population_mean().unwrap_or(f64::NAN);
    assert!(close(m.population_mean().unwrap_or(f64::NAN), pop, 2e-3));
}

#[test]
fn the_closed_forms_match_lifetimes_predictions_at_its_parameters() {
    // From the same command: the first six customers of the fixed set.
    let p_alive = [
        0.1545155184554122,
        0.8188029450682154,
        1.0,
        0.670270410294771,
        1.0,
        1.0,
    ];
    let purchases_12 = [
        0.18192865994008867,
        0.5193043501785712,
        0.07557218848949794,
        0.29737025285528756,
        0.14597942757693302,
        0.07379558411862912,
    ];
    let order_value = [
        23.217345854583897,
        36.036745028450106,
        39.01970761479439,
        24.906324650719757,
        39.01970761479439,
        39.01970761479439,
    ];
    // customer_lifetime_value(time=3, discount_rate=0.01, freq="W"): 3 steps of 4.345 weeks.
    let clv_3 = [
        4.484029429834564,
        19.856975740613706,
        3.1301099014922444,
        7.84754507636382,
        6.03137548784898,
        3.056732696575347,
    ];
    let [r, alpha, a, b] = LIFETIMES_BGNBD;
    let bg = BgNbd { r, alpha, a, b };
    let [p, q, v] = LIFETIMES_GG;
    let gg = GammaGamma { p, q, v };
    for (i, c) in reference_set().iter().take(6).enumerate() {
        assert!(close(bg.p_alive(c), p_alive[i], 1e-9), "p_alive {i}");
        assert!(
            close(bg.expected_purchases(12.0, c), purchases_12[i], 1e-9),
            "purchases {i}: {}",
            bg.expected_purchases(12.0, c)
        );
        let ov = gg.expected_order_value(c, 0.0);
        assert!(close(ov, order_value[i], 1e-9), "order value {i}");
        let got = clv(&bg, ov, c, 3.0 * 4.345, 4.345, 0.01);
        assert!(close(got, clv_3[i], 1e-9), "clv {i}: {got}");
    }
}

/// `n` customers from BG/NBD + Gamma-Gamma with ages uniform in 30..=365 days.
fn simulate(seed: u64, n: usize, bg: BgNbd, gg: GammaGamma) -> Vec<Customer> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let lambda = Gamma::new(bg.r, 1.0 / bg.alpha).unwrap_or_else(|e| panic!("{e}"));
    let drop = Beta::new(bg.a, bg.b).unwrap_or_else(|e| panic!("{e}"));
    let nu = Gamma::new(gg.q, 1.0 / gg.v).unwrap_or_else(|e| panic!("{e}"));
    (0..n)
        .map(|_| {
            let age = f64::from(rng.gen_range(30u32..=365));
            let (l, pd) = (lambda.sample(&mut rng), drop.sample(&mut rng));
            let gap = Exp::new(l.max(1e-12)).unwrap_or_else(|e| panic!("{e}"));
            let (mut t, mut times) = (0.0, 0u32);
            let mut last = 0.0;
            loop {
                t += gap.sample(&mut rng);
                if t > age || times > 10_000 {
                    break;
                }
                times += 1;
                last = t;
                if rng.gen::<f64>() < pd {
                    break;
                }
            }
            let scale = 1.0 / nu.sample(&mut rng);
            let value = Gamma::new(gg.p, scale).unwrap_or_else(|e| panic!("{e}"));
            let monetary = if times > 0 {
                (0..times).map(|_| value.sample(&mut rng)).sum::<f64>() / f64::from(times)
            } else {
                0.0
            };
            Customer {
                frequency: f64::from(times),
                recency: last,
                age,
                monetary,
                repeat_monetary: Some(monetary),
            }
        })
        .collect()
}

#[test]
fn the_fits_recover_the_parameters_of_data_simulated_from_the_models_over_seeds() {
    let bg = BgNbd {
        r: 0.8,
        alpha: 20.0,
        a: 0.9,
        b: 4.0,
    };
    let gg = GammaGamma {
        p: 5.0,
        q: 4.0,
        v: 60.0,
    };
    for seed in [1, 2, 3] {
        let data = simulate(seed, 20_000, bg, gg);
        let m = BgNbd::fit(&data).unwrap_or_else(|e| panic!("{e}"));
        // r and α within 15%; the dropout mean a/(a+b), the weakly identified part, within 20%.
        assert!(close(m.r, bg.r, 0.15), "seed {seed}: {m:?}");
        assert!(close(m.alpha, bg.alpha, 0.15), "seed {seed}: {m:?}");
        assert!(
            close(m.a / (m.a + m.b), bg.a / (bg.a + bg.b), 0.2),
            "seed {seed}: {m:?}"
        );
        let g = GammaGamma::fit(&data).unwrap_or_else(|e| panic!("{e}"));
        let (got, want) = (g.population_mean(), gg.population_mean());
        assert!(
            close(got.unwrap_or(0.0), want.unwrap_or(f64::NAN), 0.05),
            "seed {seed}: {g:?}"
        );
        assert!(close(g.p, gg.p, 0.15), "seed {seed}: {g:?}");
    }
}

#[test]
fn fits_refuse_empty_or_inconsistent_summaries() {
    assert_eq!(BgNbd::fit(&[]), Err(BtydError::Empty));
    let bad = Customer {
        frequency: 1.0,
        recency: 10.0,
        age: 5.0,
        monetary: 1.0,
        repeat_monetary: None,
    };
    assert_eq!(BgNbd::fit(&[bad]), Err(BtydError::BadSummary));
    assert_eq!(
        GammaGamma::fit(&[bad]),
        Err(BtydError::TooFewRepeatBuyers(1))
    );
}

#[test]
fn value_figures_are_zero_for_non_buyers_and_clv_grows_with_the_horizon() {
    let data = reference_set();
    let short = ValueModel::fit(&data, 30.0, 0.01).unwrap_or_else(|e| panic!("{e}"));
    let long = ValueModel::fit(&data, 90.0, 0.01).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(short.value(None), CustomerValue::default());
    let v30 = short.value(Some(&data[1]));
    let v90 = long.value(Some(&data[1]));
    assert!(v30.clv > 0.0 && v90.clv > v30.clv, "{v30:?} {v90:?}");
    assert!(v90.expected_orders > v30.expected_orders);
    assert!((0.0..=1.0).contains(&v30.p_alive));
    assert!(ValueModel::fit(&data, 0.0, 0.01).is_err());
}

#[test]
fn a_customer_summary_is_read_off_the_aggregate_in_days() {
    let mut a = UserAggregate::with_registration(None);
    assert_eq!(Customer::of(&a, 0), None);
    a.first_seen = 10 * DAY + 5;
    a.last_order = 40 * DAY + 7;
    a.orders = 4;
    a.order_days = 2;
    a.spend = 100.0;
    // As of day 100's midnight: the last day observed is day 99.
    let c = Customer::of(&a, 100 * DAY).unwrap_or_else(|| panic!("a buyer"));
    assert_eq!((c.frequency, c.recency, c.age), (1.0, 30.0, 89.0));
    // The mean per transaction as BG/NBD counts them (an order day): 100 / 2, not 100 / 4.
    assert!((c.monetary - 50.0).abs() < 1e-12, "{c:?}");
    // With the first order day known (layout 5), recency and age count from it, not from the
    // first event on day 10 (the first order day of this hand-made aggregate is day 20).
    a.first_order_day = 20;
    let c = Customer::of(&a, 100 * DAY).unwrap_or_else(|| panic!("a buyer"));
    assert_eq!((c.frequency, c.recency, c.age), (1.0, 20.0, 79.0));
}

/// By hand: p = 2, q = 3, v = 10 give a population mean p·v / (q − 1) = 10. A customer with one
/// repeat order day of 20 and a mean of 30 over both order days has n = 2 values on the
/// all-orders basis: weight 2·2 / (2·2 + 2) = 2/3, value 10/3 + 20 = 23.333…; on the repeat
/// basis n = 1 value of 20: weight 2 / (2 + 2) = 1/2, value 15; on the unrecorded basis of old
/// bundles n = 1 with the all-orders mean: 20. A one-time buyer (n = 1 on all orders) of 40:
/// weight 1/2, value 25; on the repeat (and unrecorded) basis n = 0: the population mean, 10.
#[test]
fn the_value_model_shrinks_each_buyers_mean_by_all_the_order_days_it_averages() {
    let gg = GammaGamma {
        p: 2.0,
        q: 3.0,
        v: 10.0,
    };
    let model = |basis| ValueModel {
        bgnbd: BgNbd {
            r: 0.25,
            alpha: 30.0,
            a: 0.7,
            b: 2.2,
        },
        gamma_gamma: Some(gg),
        basis,
        horizon_days: 90.0,
        monthly_discount: 0.01,
        mean_order_value: 99.0,
    };
    let repeat = Customer {
        frequency: 1.0,
        recency: 20.0,
        age: 60.0,
        monetary: 30.0,
        repeat_monetary: Some(20.0),
    };
    let once = Customer {
        frequency: 0.0,
        recency: 0.0,
        age: 60.0,
        monetary: 40.0,
        repeat_monetary: Some(0.0),
    };
    let all = model(Basis::AllOrders);
    assert!((all.order_value(&repeat) - 70.0 / 3.0).abs() < 1e-12);
    assert!((all.order_value(&once) - 25.0).abs() < 1e-12);
    let standard = model(Basis::RepeatOrders);
    assert!((standard.order_value(&repeat) - 15.0).abs() < 1e-12);
    assert!((standard.order_value(&once) - 10.0).abs() < 1e-12);
    let old = model(Basis::Unrecorded);
    assert!((old.order_value(&repeat) - 20.0).abs() < 1e-12);
    assert!((old.order_value(&once) - 10.0).abs() < 1e-12);
    // A repeat buyer whose first order day is unknown counts with the all-orders mean.
    let unknown = Customer {
        repeat_monetary: None,
        ..repeat
    };
    assert!((standard.order_value(&unknown) - 20.0).abs() < 1e-12);
    // The CLV is that value times the discounted expected order days.
    let bg = all.bgnbd;
    let want = clv(&bg, 70.0 / 3.0, &repeat, 90.0, 30.0, 0.01);
    assert!((all.value(Some(&repeat)).clv - want).abs() < 1e-12);
}

// `lifetimes` 0.11.3 GammaGammaFitter on the fixed set's buyers with monetary > 0, given
// frequency + 1 as the count (the all-orders basis), default tol (tol 1e-10 agrees to 6 digits),
// and its conditional_expected_average_profit(frequency + 1, monetary) for the first customers
// (by `bench/.venv/bin/python`, see the test).
const LIFETIMES_GG_ALL: [f64; 3] = [3.663922275447918, 3.444302560786854, 25.91024248498264];

#[test]
fn the_value_models_gamma_gamma_counts_every_order_day_as_lifetimes_does_given_x_plus_one() {
    let data = reference_set();
    let m = ValueModel::fit_with(&data, None, Basis::AllOrders, 90.0, 0.01)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.basis, Basis::AllOrders);
    // Customers 0, 1 and 3 bought (monetary > 0).
    let want = [
        (0, 23.724342864214172),
        (1, 36.172624351942275),
        (3, 25.105004392768205),
    ];
    assert_gamma_gamma_is_lifetimes(m, &data, LIFETIMES_GG_ALL, &want);
}

/// `m`'s Gamma-Gamma is lifetimes' fit `fitted` (p, q, v within 2%), and at exactly those
/// parameters its expected order values of `data`'s customers are `want` (customer, value).
fn assert_gamma_gamma_is_lifetimes(
    m: ValueModel,
    data: &[Customer],
    fitted: [f64; 3],
    want: &[(usize, f64)],
) {
    let g = m.gamma_gamma.unwrap_or_else(|| panic!("fitted"));
    let got = [g.p, g.q, g.v];
    for (g, w) in got.iter().zip(fitted) {
        assert!(close(*g, w, 2e-2), "{got:?} vs {fitted:?}");
    }
    let [p, q, v] = fitted;
    let at = ValueModel {
        gamma_gamma: Some(GammaGamma { p, q, v }),
        ..m
    };
    for &(i, w) in want {
        assert!(close(at.order_value(&data[i]), w, 1e-9), "customer {i}");
    }
}

#[test]
fn a_value_model_without_a_basis_reads_as_fitted_before_the_basis_was_recorded() {
    let json = r#"{"bgnbd":{"r":0.25,"alpha":30.0,"a":0.7,"b":2.2},
        "gamma_gamma":{"p":2.0,"q":3.0,"v":10.0},"horizon_days":90.0,
        "monthly_discount":0.01,"mean_order_value":12.0}"#;
    let m: ValueModel = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.basis, Basis::Unrecorded);
    // A recorded basis is kept.
    let all = json.replace(
        "\"horizon_days\"",
        "\"basis\":\"all_orders\",\"horizon_days\"",
    );
    let m: ValueModel = serde_json::from_str(&all).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.basis, Basis::AllOrders);
}

/// The default value model is `lifetimes`' standard one: on the fixed set (repeat means, as
/// `lifetimes` summarises transactions) its Gamma-Gamma is lifetimes' GammaGammaFitter fit and
/// its expected order values are lifetimes' `conditional_expected_average_profit` (the
/// constants of `the_closed_forms_match_lifetimes_predictions_at_its_parameters`).
#[test]
fn the_default_value_model_is_lifetimes_repeat_orders_gamma_gamma_on_the_fixed_set() {
    let data = reference_set();
    let m = ValueModel::fit(&data, 90.0, 0.01).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.basis, Basis::RepeatOrders);
    let want = [
        (0, 23.217345854583897),
        (1, 36.036745028450106),
        (2, 39.01970761479439),
        (3, 24.906324650719757),
    ];
    assert_gamma_gamma_is_lifetimes(m, &data, LIFETIMES_GG, &want);
}

/// A repeat-basis fit needs every repeat buyer's repeat mean: one unknown (an aggregate read
/// from an older layout, a table before schema version 3) and the fit falls back to the
/// all-orders basis, recorded in the model; a one-time buyer's unknown mean changes nothing.
#[test]
fn a_repeat_orders_fit_with_an_unknown_repeat_mean_falls_back_to_all_orders() {
    let mut data = reference_set();
    assert_eq!(
        ValueModel::fitted_basis(&data, Basis::RepeatOrders),
        Basis::RepeatOrders
    );
    let i = data
        .iter()
        .position(|c| c.frequency >= 1.0)
        .unwrap_or_else(|| panic!("a repeat buyer"));
    data[i].repeat_monetary = None;
    let m = ValueModel::fit(&data, 90.0, 0.01).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.basis, Basis::AllOrders);
    assert_eq!(
        ValueModel::fitted_basis(&data, Basis::Unrecorded),
        Basis::AllOrders
    );
    // A one-time buyer's unknown repeat mean changes nothing (x = 0 is outside the fit).
    let mut once = reference_set();
    let j = once
        .iter()
        .position(|c| c.frequency == 0.0)
        .unwrap_or_else(|| panic!("a one-time buyer"));
    once[j].repeat_monetary = None;
    assert_eq!(
        ValueModel::fitted_basis(&once, Basis::RepeatOrders),
        Basis::RepeatOrders
    );
}

/// The repeat mean read off an aggregate is `lifetimes`' `monetary_value` (freq "D"): orders on
/// one day merged, the first order day left out (its spend whatever order the events arrive
/// in; x = order days − 1 is exact in time order, as training applies them); refunds spread
/// over the order days by their spend; unknown for an aggregate of an older layout.
#[test]
fn the_repeat_mean_read_off_an_aggregate_leaves_out_the_first_order_day() {
    use crate::features::{Event, EventKind, UserAggregateV4};
    let order = |day: i64, amount: f64| Event {
        ts: 1_000 * DAY + day * DAY + 3_600,
        kind: EventKind::Order,
        amount,
        watch_seconds: 0,
        room: 0,
        category: 0,
        order: 0,
        channel: 0,
    };
    // Day 0: 10 + 5; day 3: 20 + 4; day 7: 30. lifetimes: x = 2, monetary_value (24 + 30) / 2.
    let events = [
        order(3, 20.0),
        order(7, 30.0),
        order(0, 10.0),
        order(3, 4.0),
        order(0, 5.0),
    ];
    let mut a = UserAggregate::default();
    let mut late = UserAggregate::default();
    events.iter().for_each(|e| late.apply(e));
    let mut in_time = events.to_vec();
    in_time.sort_by_key(|e| e.ts);
    in_time.iter().for_each(|e| a.apply(e));
    assert_eq!(late.first_and_repeat_spend(), Some((15.0, 54.0)));
    let t = 1_000 * DAY + 20 * DAY;
    let c = Customer::of(&a, t).unwrap_or_else(|| panic!("a buyer"));
    assert_eq!(a.first_and_repeat_spend(), Some((15.0, 54.0)));
    assert_eq!(c.repeat_monetary, Some(27.0));
    // A refund of a quarter of the spend: every order day keeps three quarters.
    a.apply(&Event {
        kind: EventKind::Refund,
        amount: 69.0 / 4.0,
        ..order(8, 0.0)
    });
    let c = Customer::of(&a, t).unwrap_or_else(|| panic!("a buyer"));
    let r = c.repeat_monetary.unwrap_or(f64::NAN);
    assert!((r - 27.0 * 0.75).abs() < 1e-9, "{r}");
    // Amounts arrive as f32: a repeat day of 0 after a first day of 11.77 is a repeat mean of
    // exactly 0 (left out of the fit as lifetimes leaves it), not a few millionths.
    let mut zero = UserAggregate::default();
    zero.apply(&order(0, f64::from(11.77f32)));
    zero.apply(&order(4, 0.0));
    let z = Customer::of(&zero, t).unwrap_or_else(|| panic!("a buyer"));
    assert_eq!((z.frequency, z.repeat_monetary), (1.0, Some(0.0)));
    // From the format-4 layout: unknown; the value model then uses the all-orders mean.
    let old = UserAggregate::from(UserAggregateV4::of(&a));
    let c = Customer::of(&old, t).unwrap_or_else(|| panic!("a buyer"));
    assert_eq!(c.repeat_monetary, None);
    assert_eq!(Basis::RepeatOrders.mean(&c), c.monetary);
}
