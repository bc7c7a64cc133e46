//! Special functions the BTYD closed forms need: log-gamma (musl's, through `libm`) and the
//! Gauss hypergeometric function in the one form BG/NBD's conditional expectation uses.

/// `ln Γ(x)` for `x > 0`.
#[inline]
pub(crate) fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// `ln [(1-z)^(c-a-b) · 2F1(c-a, c-b; c; z)]`, which equals `ln 2F1(a, b; c; z)` (Euler's
/// transformation), for `0 <= z < 1`, `c > 0`, and a positive result. BG/NBD calls it with
/// `a = r+x`, `b = b+x`, `c = a+b+x-1`: the transformed parameters `c-a`, `c-b` stay small
/// whatever the purchase count `x`, so the series converges fast where the direct one would
/// overflow (what `lifetimes` falls back to when its first try is infinite). `None` if the
/// series does not settle within its term budget or the sum is not positive.
pub(crate) fn ln_hyp2f1_euler(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    let (a2, b2) = (c - a, c - b);
    let mut term = 1.0f64;
    let mut sum = 1.0f64;
    for n in 0..100_000u32 {
        let nf = f64::from(n);
        term *= (a2 + nf) * (b2 + nf) / ((c + nf) * (nf + 1.0)) * z;
        sum += term;
        if term.abs() <= 1e-16 * sum.abs() || term == 0.0 {
            return (sum > 0.0 && sum.is_finite()).then(|| (c - a - b) * (-z).ln_1p() + sum.ln());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_gamma_matches_factorials_and_the_half_integer_value() {
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
    }

    #[test]
    fn the_transformed_series_matches_closed_forms_of_the_hypergeometric_function() {
        // 2F1(1, 1; 2; z) = -ln(1-z)/z.
        for z in [0.01f64, 0.3, 0.9, 0.99] {
            let want = (-(-z).ln_1p() / z).ln();
            let got = ln_hyp2f1_euler(1.0, 1.0, 2.0, z).unwrap_or(f64::NAN);
            assert!((got - want).abs() < 1e-10, "z={z}: {got} vs {want}");
        }
        // 2F1(a, b; b; z) = (1-z)^-a, with large parameters as BG/NBD's heavy buyers give.
        for (a, b, z) in [(250.5f64, 300.25f64, 0.4f64), (0.3, 2.5, 0.95)] {
            let want = -a * (-z).ln_1p();
            let got = ln_hyp2f1_euler(a, b, b, z).unwrap_or(f64::NAN);
            assert!(
                (got - want).abs() < 1e-9 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }
}
