//! Standard scaling, fitted on training rows and stored in the bundle.

use serde::{Deserialize, Serialize};

/// Per-column mean and standard deviation. A constant column gets std 1 (it scales to 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl StandardScaler {
    /// Fits on a row-major matrix with `cols` columns.
    pub fn fit(rows: &[f64], cols: usize) -> Self {
        let n = rows.len().checked_div(cols).unwrap_or(0);
        let mut mean = vec![0.0; cols];
        let mut m2 = vec![0.0; cols];
        // Welford, column-wise, for numerical stability at 1M rows.
        for (i, row) in rows.chunks_exact(cols.max(1)).enumerate().take(n) {
            let k = (i + 1) as f64;
            for ((x, m), s) in row.iter().zip(mean.iter_mut()).zip(m2.iter_mut()) {
                let d = x - *m;
                *m += d / k;
                *s += d * (x - *m);
            }
        }
        let std = m2
            .iter()
            .map(|&s| {
                let v = if n > 1 { s / n as f64 } else { 0.0 };
                let sd = v.sqrt();
                if sd.is_finite() && sd > 1e-12 {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        StandardScaler { mean, std }
    }

    #[inline]
    pub(crate) fn transform_in_place(&self, row: &mut [f64]) {
        for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
            *x = (*x - m) / s;
        }
    }

    #[inline]
    pub(crate) fn inverse_in_place(&self, row: &mut [f64]) {
        for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
            *x = *x * s + m;
        }
    }

    pub fn transform_rows(&self, rows: &mut [f64]) {
        let cols = self.mean.len().max(1);
        for row in rows.chunks_exact_mut(cols) {
            self.transform_in_place(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_columns_have_zero_mean_unit_variance() {
        let rows: Vec<f64> = (0..100)
            .flat_map(|i| [i as f64, 5.0, (i * i) as f64])
            .collect();
        let s = StandardScaler::fit(&rows, 3);
        let mut scaled = rows.clone();
        s.transform_rows(&mut scaled);
        for j in 0..3 {
            let col: Vec<f64> = scaled.chunks(3).map(|r| r[j]).collect();
            let mean = col.iter().sum::<f64>() / 100.0;
            assert!(mean.abs() < 1e-9);
            if j != 1 {
                let var = col.iter().map(|x| x * x).sum::<f64>() / 100.0;
                assert!((var - 1.0).abs() < 1e-9);
            }
        }
        assert_eq!(s.std[1], 1.0, "constant column keeps std 1");
    }
}
