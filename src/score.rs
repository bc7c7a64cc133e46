//! Offline scoring rows and writers: a [`Scorer`]'s [`Score`]s as the output rows of
//! `tiering score` and of the bundle's `scores.parquet`. The file formats are
//! [`crate::io::write::ScoreWriter`]'s.

use crate::io::write::{ScoreRow, ScoreWriter, WriteError};
use crate::model::{Score, Scorer};

/// Rows whose reasons text is formatted (on all cores) ahead of the sequential writer.
const ROWS_PER_BLOCK: usize = 1 << 15;

/// The text columns formatted ahead of the writer: reasons, interests, channels.
pub(crate) struct RowTexts {
    pub factors: String,
    pub interests: String,
    pub channels: String,
}

impl RowTexts {
    pub(crate) fn of(scorer: &Scorer, s: &Score) -> RowTexts {
        let interests = s
            .interests
            .ranked()
            .into_iter()
            .map(|(id, _)| crate::features::interests::display_name(id))
            .collect::<Vec<_>>()
            .join("; ");
        let channels = s
            .channels
            .list()
            .into_iter()
            .map(|(c, spend, activity)| format!("{}={spend:.3}/{activity:.3}", c.as_str()))
            .collect::<Vec<_>>()
            .join("; ");
        RowTexts {
            factors: scorer.format_factors(s),
            interests,
            channels,
        }
    }
}

/// The output row of one scored user (`tiering score`, the bundle's `scores.parquet`).
/// `texts` is [`RowTexts::of`] the score, passed in so callers can format on all cores.
pub(crate) fn score_row<'a>(
    scorer: &'a Scorer,
    user_id: &'a str,
    s: &Score,
    texts: &'a RowTexts,
) -> ScoreRow<'a> {
    let tier = &scorer.tiers.tiers[usize::from(s.tier)];
    ScoreRow {
        user_id,
        tier_id: &tier.id,
        tier_name: &tier.name_en,
        churn_probability: s.churn_probability,
        risk_level: s.risk_level.id(),
        risk_percentile: s.risk_percentile,
        rfm_segment: s.rfm_segment.id(),
        lifecycle_stage: s.lifecycle_stage.id(),
        top_factors: &texts.factors,
        interests: &texts.interests,
        channels: &texts.channels,
        clv: s.clv,
        expected_orders: s.expected_orders,
        p_alive: s.p_alive,
        value_at_risk: s.value_at_risk,
    }
}

/// Writes every user's score through `writer`, row `u` named `user_ids[u]`. The reasons text
/// is formatted on all cores, a block of rows at a time, ahead of the (sequential) writer.
pub fn write_scores(
    writer: &mut ScoreWriter,
    scorer: &Scorer,
    user_ids: &[String],
    scores: &[Score],
) -> Result<(), WriteError> {
    use rayon::prelude::*;
    for (block, (ids, ss)) in user_ids
        .chunks(ROWS_PER_BLOCK)
        .zip(scores.chunks(ROWS_PER_BLOCK))
        .enumerate()
    {
        let texts: Vec<RowTexts> = ss.par_iter().map(|s| RowTexts::of(scorer, s)).collect();
        for ((id, s), f) in ids.iter().zip(ss).zip(&texts) {
            writer.write(&score_row(scorer, id, s, f))?;
        }
        tracing::trace!(block, "scores written");
    }
    Ok(())
}
