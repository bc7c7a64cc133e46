//! Per-tier value figures of a bundle, from its scored snapshot (`scores.parquet`: every user
//! as of `as_of`, with its tier, CLV and value at risk). The manifest's tier table has sizes and
//! churn but no value, so the server reads these once when it loads a bundle (GetModelInfo
//! answers them without touching the file again).

use super::{io_err, Bundle, BundleError, SCORES};
use arrow_array::{Array, Float64Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use std::collections::BTreeMap;
use std::fs::File;

/// One tier's value in the scored snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TierValue {
    pub users: u64,
    /// Mean CLV of its users.
    pub mean_clv: f64,
    /// Sum of its users' value at risk.
    pub value_at_risk: f64,
}

const COLUMNS: [&str; 3] = ["tier_id", "clv", "value_at_risk"];

impl Bundle {
    /// Tier id → its value figures, summed over `scores.parquet` (checked at load against the
    /// manifest's checksum). Reads three columns only.
    pub fn tier_values(&self) -> Result<BTreeMap<String, TierValue>, BundleError> {
        let path = self.dir.join(SCORES);
        let corrupt = |message: String| BundleError::Corrupt {
            path: path.clone(),
            what: "scored snapshot",
            message,
        };
        let file = File::open(&path).map_err(io_err(&path))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| corrupt(e.to_string()))?;
        let leaves: Vec<usize> = COLUMNS
            .iter()
            .map(|name| {
                builder
                    .parquet_schema()
                    .columns()
                    .iter()
                    .position(|c| c.name() == *name)
                    .ok_or_else(|| corrupt(format!("no column {name}")))
            })
            .collect::<Result<_, _>>()?;
        let mask = ProjectionMask::leaves(builder.parquet_schema(), leaves);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| corrupt(e.to_string()))?;
        let mut sums: BTreeMap<String, TierValue> = BTreeMap::new();
        for batch in reader {
            let batch = batch.map_err(|e| corrupt(e.to_string()))?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| corrupt(format!("no column {name}")))
            };
            let tiers = column(COLUMNS[0])?;
            let tiers = tiers
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| corrupt("tier_id is not text".into()))?;
            let (clv, var) = (column(COLUMNS[1])?, column(COLUMNS[2])?);
            let number = |a: &dyn Array, name: &str| {
                a.as_any()
                    .downcast_ref::<Float64Array>()
                    .cloned()
                    .ok_or_else(|| corrupt(format!("{name} is not a number")))
            };
            let (clv, var) = (
                number(clv.as_ref(), "clv")?,
                number(var.as_ref(), "value_at_risk")?,
            );
            for i in 0..batch.num_rows() {
                let key = tiers.value(i);
                if !sums.contains_key(key) {
                    sums.insert(key.to_string(), TierValue::default());
                }
                let Some(t) = sums.get_mut(key) else {
                    continue;
                };
                t.users += 1;
                t.mean_clv += clv.value(i);
                t.value_at_risk += var.value(i);
            }
        }
        for t in sums.values_mut() {
            t.mean_clv /= t.users.max(1) as f64;
        }
        Ok(sums)
    }
}
