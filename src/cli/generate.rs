//! `tiering generate`: write a seeded synthetic live-commerce data set (events + users tables).

use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;
use tiering::features::{format_rfc3339, parse_instant, Timestamp};
use tiering::generate::writer::{GeneratedFormat, GeneratedWriter, Vocabulary};
use tiering::generate::{generate, GenerateParams, Persona};
use tiering::io::write::WriteError;
use tracing::info;

/// Output format of the generated tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Parquet,
}

impl From<Format> for GeneratedFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Csv => GeneratedFormat::Csv,
            Format::Parquet => GeneratedFormat::Parquet,
        }
    }
}

/// Kind names written to the events table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VocabularyArg {
    /// order, view, comment, like, share, follow, gift, refund.
    Canonical,
    /// pay_success, enter_room, comment, thumbs_up, share, follow, send_gift, refund; writes
    /// train.toml (the [events] mapping) next to the data.
    Platform,
}

impl From<VocabularyArg> for Vocabulary {
    fn from(v: VocabularyArg) -> Self {
        match v {
            VocabularyArg::Canonical => Vocabulary::Canonical,
            VocabularyArg::Platform => Vocabulary::Platform,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Number of users.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Days of history; events fall in the `days` days before `--end`.
    #[arg(long, default_value_t = 180)]
    pub days: u32,
    /// Seed of every random draw: the same seed (and --end) gives byte-identical files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory; gets events.<ext> and users.<ext>.
    #[arg(long)]
    pub out: PathBuf,
    /// File format of both tables.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// End of the history: YYYY-MM-DD (the end of that day, UTC) or an RFC 3339 time.
    /// Default: now. Pass it for reproducible output.
    #[arg(long, value_parser = parse_end)]
    pub end: Option<Timestamp>,
    /// Emit no refunds (by default orders are refunded at persona-dependent rates, bargain
    /// hunters the most; orders and linked refunds carry an order_id).
    #[arg(long)]
    pub no_refunds: bool,
    /// Give events a channel (live, short_video, social, offline_store, app, by persona) and
    /// users a favourite category by persona, written as a `channel` column.
    #[arg(long)]
    pub channels: bool,
    /// Kind names of the events table; `platform` also writes train.toml with the mapping.
    #[arg(long, value_enum, default_value_t = VocabularyArg::Canonical)]
    pub vocabulary: VocabularyArg,
}

/// `YYYY-MM-DD` means the end of that day (the next midnight, UTC); otherwise RFC 3339.
fn parse_end(s: &str) -> Result<Timestamp, String> {
    parse_instant(s).map_err(|e| e.to_string())
}

fn progress_bar(users: u64) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {human_pos}/{human_len} users ({per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    indicatif::ProgressBar::new(users).with_style(style)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let end = args.end.unwrap_or_else(|| chrono::Utc::now().timestamp());
    let params = GenerateParams {
        users: args.users,
        days: args.days,
        seed: args.seed,
        end,
        refunds: !args.no_refunds,
        channels: args.channels,
    }
    .check()
    .context("invalid generate parameters")?;
    let end_text = format_rfc3339(end);
    info!(users = args.users, days = args.days, seed = args.seed, end = %end_text, format = ?args.format,
        out = %args.out.display(), "generating synthetic live-commerce data");

    let vocabulary = Vocabulary::from(args.vocabulary);
    let mut writer =
        GeneratedWriter::create_full(&args.out, args.format.into(), vocabulary, args.channels)
            .context("preparing the output files")?;
    let bar = progress_bar(args.users);
    let mut unreported = 0u64;
    let summary = generate(&params, |user, events| {
        writer.write_user(user, events)?;
        unreported += 1;
        if unreported == 4096 {
            bar.inc(unreported);
            unreported = 0;
        }
        Ok::<(), WriteError>(())
    })
    .context("writing the generated tables")?;
    bar.finish_and_clear();
    let paths = writer.finish().context("finishing the generated tables")?;
    if let Some(toml) = vocabulary.train_toml() {
        let path = args.out.join("train.toml");
        std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "wrote {} (the [events] mapping of the platform vocabulary): tiering train --config {}",
            path.display(),
            path.display()
        );
    }

    let secs = started.elapsed().as_secs_f64();
    let mix: Vec<String> = Persona::ALL
        .iter()
        .map(|p| {
            format!(
                "{}={:.1}%",
                p,
                100.0 * summary.persona_users[p.index()] as f64 / summary.users as f64
            )
        })
        .collect();
    info!(events = summary.events, orders = summary.orders, churned = summary.churned, mix = %mix.join(" "),
        events_path = %paths.events.display(), users_path = %paths.users.display(), secs, "generated");
    println!(
        "generated {} users ({} personas), {} events ({} orders, {} refunds) in {:.1} s ({:.2} M events/s), history ending {} -> {}, {}",
        summary.users,
        summary.personas(),
        summary.events,
        summary.orders,
        summary.refunds,
        secs,
        summary.events as f64 / secs.max(1e-9) / 1e6,
        end_text,
        paths.events.display(),
        paths.users.display(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_accepts_a_date_as_the_end_of_that_day_or_rfc3339() {
        assert_eq!(parse_end("2026-04-30"), Ok(1_777_593_600));
        assert_eq!(parse_end("2026-05-01T00:00:00Z"), Ok(1_777_593_600));
        assert_eq!(parse_end("2026-05-01T08:00:00+08:00"), Ok(1_777_593_600));
        assert!(parse_end("yesterday").is_err());
    }
}
