//! A small Nelder-Mead minimiser (adaptive coefficients of Gao & Han 2012) with restarts, for
//! the few-parameter likelihoods of the BTYD models. Derivative-free on purpose: the
//! likelihoods are cheap, smooth and low-dimensional, and a simplex that restarts from its best
//! point until the restart no longer improves is robust against the flat valleys these
//! likelihoods have (BG/NBD's `a` and `b` are weakly identified).
//!
//! The simplex gets close but can stall in such a valley (on CDNOW it stopped with `a`, `b` 3%
//! from the maximum, 6e-6 of mean log-likelihood below it): [`minimize`] ends with a Newton
//! polish on finite-difference derivatives, which walks the valley floor in a few steps.

/// Result of a minimisation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Minimum {
    pub x: Vec<f64>,
    pub value: f64,
    /// Function evaluations used.
    pub evaluations: usize,
}

/// Stopping rules.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Largest simplex side (in the coordinates) to stop at.
    pub x_tol: f64,
    /// Spread of the simplex values to stop at.
    pub f_tol: f64,
    /// Evaluations per simplex run.
    pub max_evaluations: usize,
    /// Restarts from the best point after a run converges.
    pub restarts: usize,
    /// Side of the initial simplex.
    pub step: f64,
}

impl Default for Options {
    fn default() -> Self {
        // The Newton polish finishes the job: the simplex only has to get near.
        Options {
            x_tol: 1e-7,
            f_tol: 1e-10,
            max_evaluations: 4000,
            restarts: 2,
            step: 0.5,
        }
    }
}

/// Minimises `f` from `x0`. Non-finite values count as +infinity (the simplex moves away).
pub(crate) fn minimize(f: &mut dyn FnMut(&[f64]) -> f64, x0: &[f64], opt: Options) -> Minimum {
    let mut best = Minimum {
        x: x0.to_vec(),
        value: finite_or_inf(f(x0)),
        evaluations: 1,
    };
    for _ in 0..=opt.restarts {
        let run = simplex_run(f, &best.x, opt);
        let evaluations = best.evaluations + run.evaluations;
        let improved = best.value - run.value;
        if run.value <= best.value {
            best = Minimum { evaluations, ..run };
        } else {
            best.evaluations = evaluations;
        }
        if improved.abs() <= opt.f_tol * (1.0 + best.value.abs()) {
            break;
        }
    }
    newton_polish(f, best, NEWTON_STEPS)
}

/// The Newton polish alone from `x0` (a starting point near the minimum); `None` when it did
/// not settle within its step budget (then start the simplex).
pub(crate) fn polish(f: &mut dyn FnMut(&[f64]) -> f64, x0: &[f64]) -> Option<Minimum> {
    let start = Minimum {
        x: x0.to_vec(),
        value: finite_or_inf(f(x0)),
        evaluations: 1,
    };
    let (m, settled) = newton_steps(f, start, NEWTON_STEPS);
    settled.then_some(m)
}

/// Newton steps of the polish at most.
const NEWTON_STEPS: usize = 50;
/// Finite-difference step (the coordinates are log-parameters: a relative step).
const FD_STEP: f64 = 1e-4;

/// Gradient and Hessian of `f` at `x` by central differences (`fx` = f(x)).
fn derivatives(
    f: &mut dyn FnMut(&[f64]) -> f64,
    x: &[f64],
    fx: f64,
    evaluations: &mut usize,
) -> (Vec<f64>, Vec<f64>) {
    let n = x.len();
    let h = FD_STEP;
    let mut at = |dx: &[(usize, f64)]| {
        let mut p = x.to_vec();
        for &(i, d) in dx {
            p[i] += d;
        }
        *evaluations += 1;
        f(&p)
    };
    let mut g = vec![0.0; n];
    let mut hess = vec![0.0; n * n];
    for i in 0..n {
        let (up, down) = (at(&[(i, h)]), at(&[(i, -h)]));
        g[i] = (up - down) / (2.0 * h);
        hess[i * n + i] = (up - 2.0 * fx + down) / (h * h);
    }
    for i in 0..n {
        for j in i + 1..n {
            let v = (at(&[(i, h), (j, h)]) - at(&[(i, h), (j, -h)]) - at(&[(i, -h), (j, h)])
                + at(&[(i, -h), (j, -h)]))
                / (4.0 * h * h);
            hess[i * n + j] = v;
            hess[j * n + i] = v;
        }
    }
    (g, hess)
}

/// Solves `a · d = b` (n × n, row-major) by Gaussian elimination with partial pivoting;
/// `None` when singular.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[pivot * n + col].abs() < 1e-300 || !a[pivot * n + col].is_finite() {
            return None;
        }
        for k in 0..n {
            a.swap(col * n + k, pivot * n + k);
        }
        b.swap(col, pivot);
        for i in col + 1..n {
            let m = a[i * n + col] / a[col * n + col];
            for k in col..n {
                a[i * n + k] -= m * a[col * n + k];
            }
            b[i] -= m * b[col];
        }
    }
    let mut d = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| a[i * n + k] * d[k]).sum();
        d[i] = (b[i] - s) / a[i * n + i];
    }
    d.iter().all(|v| v.is_finite()).then_some(d)
}

/// Damped Newton from `start`: a step is taken only when it lowers `f` (halving it up to 30
/// times); the polish ends when no step helps or after `steps` steps. Never worse than `start`.
fn newton_polish(f: &mut dyn FnMut(&[f64]) -> f64, start: Minimum, steps: usize) -> Minimum {
    newton_steps(f, start, steps).0
}

/// [`newton_polish`], and whether it settled (stopped before its step budget).
fn newton_steps(f: &mut dyn FnMut(&[f64]) -> f64, start: Minimum, steps: usize) -> (Minimum, bool) {
    let mut best = start;
    if !best.value.is_finite() {
        return (best, false);
    }
    for _ in 0..steps {
        let (g, hess) = derivatives(f, &best.x, best.value, &mut best.evaluations);
        if g.iter().any(|v| !v.is_finite()) {
            return (best, false);
        }
        // Newton direction when the Hessian gives a descent direction, else steepest descent.
        let neg_g: Vec<f64> = g.iter().map(|v| -v).collect();
        let newton = solve(hess, neg_g.clone())
            .filter(|d| d.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>() < 0.0);
        let dir = newton.unwrap_or(neg_g);
        let mut t = 1.0;
        let mut moved = false;
        for _ in 0..30 {
            let x: Vec<f64> = best.x.iter().zip(&dir).map(|(a, d)| a + t * d).collect();
            let v = finite_or_inf(f(&x));
            best.evaluations += 1;
            if v < best.value {
                moved = best.value - v > 1e-15 * (1.0 + v.abs());
                best.x = x;
                best.value = v;
                break;
            }
            t *= 0.5;
        }
        if !moved {
            return (best, true);
        }
    }
    (best, false)
}

fn finite_or_inf(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        f64::INFINITY
    }
}

fn simplex_run(f: &mut dyn FnMut(&[f64]) -> f64, x0: &[f64], opt: Options) -> Minimum {
    let n = x0.len();
    let nf = n as f64;
    // Adaptive coefficients (better than the classic 1, 2, 1/2, 1/2 beyond two dimensions).
    let (alpha, gamma, rho, sigma) = (1.0, 1.0 + 2.0 / nf, 0.75 - 0.5 / nf, 1.0 - 1.0 / nf);
    let mut eval = |x: &[f64], count: &mut usize| {
        *count += 1;
        finite_or_inf(f(x))
    };
    let mut evaluations = 0usize;
    let mut pts: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
    pts.push(x0.to_vec());
    for i in 0..n {
        let mut p = x0.to_vec();
        p[i] += opt.step;
        pts.push(p);
    }
    let mut vals: Vec<f64> = pts.iter().map(|p| eval(p, &mut evaluations)).collect();
    let mut order: Vec<usize> = (0..=n).collect();
    while evaluations < opt.max_evaluations {
        order.sort_by(|&i, &j| vals[i].total_cmp(&vals[j]));
        let (lo, hi, second) = (order[0], order[n], order[n - 1]);
        let spread = vals[hi] - vals[lo];
        let size = pts
            .iter()
            .map(|p| {
                p.iter()
                    .zip(&pts[lo])
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            })
            .fold(0.0f64, f64::max);
        if size <= opt.x_tol
            || (spread.is_finite()
                && spread <= opt.f_tol * (1.0 + vals[lo].abs())
                && size <= opt.x_tol.sqrt())
        {
            break;
        }
        let mut centroid = vec![0.0; n];
        for &i in &order[..n] {
            for (c, v) in centroid.iter_mut().zip(&pts[i]) {
                *c += v / nf;
            }
        }
        let along = |t: f64| -> Vec<f64> {
            centroid
                .iter()
                .zip(&pts[hi])
                .map(|(c, h)| c + t * (c - h))
                .collect()
        };
        let xr = along(alpha);
        let fr = eval(&xr, &mut evaluations);
        if fr < vals[lo] {
            let xe = along(gamma);
            let fe = eval(&xe, &mut evaluations);
            if fe < fr {
                (pts[hi], vals[hi]) = (xe, fe);
            } else {
                (pts[hi], vals[hi]) = (xr, fr);
            }
            continue;
        }
        if fr < vals[second] {
            (pts[hi], vals[hi]) = (xr, fr);
            continue;
        }
        // Outside contraction when the reflection helped a little, inside otherwise.
        let xc = if fr < vals[hi] {
            along(rho * alpha)
        } else {
            along(-rho)
        };
        let fc = eval(&xc, &mut evaluations);
        if fc < vals[hi].min(fr) {
            (pts[hi], vals[hi]) = (xc, fc);
            continue;
        }
        // Shrink towards the best point.
        let best = pts[lo].clone();
        for &i in &order[1..] {
            for (p, b) in pts[i].iter_mut().zip(&best) {
                *p = b + sigma * (*p - b);
            }
            vals[i] = eval(&pts[i], &mut evaluations);
        }
    }
    let lo = (0..=n)
        .min_by(|&i, &j| vals[i].total_cmp(&vals[j]))
        .unwrap_or(0);
    Minimum {
        x: pts[lo].clone(),
        value: vals[lo],
        evaluations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simplex_finds_the_minimum_of_the_rosenbrock_valley() {
        let mut f = |x: &[f64]| (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2);
        let m = minimize(&mut f, &[-1.2, 1.0], Options::default());
        assert!(
            (m.x[0] - 1.0).abs() < 1e-5 && (m.x[1] - 1.0).abs() < 1e-5,
            "{m:?}"
        );
    }

    /// A long, flat, curved valley where a simplex alone tends to stall short of the minimum:
    /// the polish ends at the minimum.
    #[test]
    fn the_newton_polish_walks_a_flat_valley_to_its_minimum() {
        let mut f = |x: &[f64]| {
            let u = x[0] + x[1];
            let v = x[0] - x[1] - 0.3 * u * u;
            (u - 1.0).powi(2) + 1e-6 * (v - 0.5).powi(2) + 1e-3 * (x[2] - 2.0).powi(2)
        };
        let start = Minimum {
            x: vec![0.5, 0.5, 0.0],
            value: f(&[0.5, 0.5, 0.0]),
            evaluations: 1,
        };
        let m = newton_polish(&mut f, start, NEWTON_STEPS);
        // u = 1, v = x0 - x1 - 0.3 = 0.5: x0 - x1 = 0.8, x0 + x1 = 1 (to the finite
        // differences' precision along the flat direction).
        for (got, want) in m.x.iter().zip([0.9, 0.1, 2.0]) {
            assert!((got - want).abs() < 1e-5, "{m:?}");
        }
    }

    #[test]
    fn the_simplex_finds_a_four_dimensional_quadratic_minimum_and_avoids_non_finite_regions() {
        let target = [0.3, -1.5, 2.0, 0.7];
        let mut f = |x: &[f64]| {
            if x[0] < -5.0 {
                return f64::NAN;
            }
            x.iter()
                .zip(&target)
                .enumerate()
                .map(|(i, (a, b))| (i as f64 + 1.0) * (a - b).powi(2))
                .sum::<f64>()
        };
        let m = minimize(&mut f, &[0.0; 4], Options::default());
        for (a, b) in m.x.iter().zip(&target) {
            assert!((a - b).abs() < 1e-5, "{m:?}");
        }
    }
}
