//! Command-line front end. Each subcommand parses its flags, calls the library, and reports.

mod aggregate;
mod backtest;
mod client;
mod client_output;
mod features;
mod generate;
mod keys;
mod models;
mod privacy;
mod quickstart;
mod score;
mod serve;
mod state;
mod train;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tiering",
    version,
    about = "Learned user tiers and calibrated churn probabilities, served over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: generate a demo platform, train on it, serve it (see README).
    Quickstart(quickstart::QuickstartArgs),
    /// Write a seeded synthetic live-commerce data set (events + users).
    Generate(generate::GenerateArgs),
    /// Train tiers and the churn model on an events table; write a versioned bundle + report.
    Train(train::TrainArgs),
    /// Export the per-user aggregates at training's snapshots (the warehouse SQL's schema).
    Features(features::FeaturesArgs),
    /// Score every user of a data set offline with a bundle (CSV or Parquet out).
    Score(score::ScoreArgs),
    /// Score a bundle's predictions against what happened since its as-of time.
    Backtest(backtest::BacktestArgs),
    /// Serve tiers and churn probabilities over gRPC from MODELS/CURRENT.
    Serve(Box<serve::ServeArgs>),
    /// Apply the Kafka event topic to the shared state (a consumer group member; feature kafka).
    Aggregate(aggregate::AggregateArgs),
    /// Check, repair, back up or restore a server's state directory.
    State(state::StateArgs),
    /// List, promote or roll back model bundles.
    Models(models::ModelsArgs),
    /// Bundle-signing key pairs and API tokens (a keys file of hashed tokens with their roles).
    Keys(keys::KeysArgs),
    /// Pull the at-risk list from a running server (CSV, JSON or a table).
    AtRisk(client::AtRiskArgs),
    /// Look one user up on a running server.
    User(client::UserArgs),
    /// Erase a person's data on a running server (admin; audited).
    Erase(privacy::EraseArgs),
    /// Everything a running server holds about one person, as JSON (admin; audited).
    ExportUser(privacy::ExportUserArgs),
    /// Record (or --withdraw) a person's objection to profiling (admin; audited).
    Object(privacy::ObjectArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    owner_only_files();
    let result: anyhow::Result<()> = match cli.command {
        Command::Quickstart(args) => quickstart::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Train(args) => train::run(args),
        Command::Features(args) => features::run(args),
        Command::Score(args) => score::run(args),
        Command::Backtest(args) => backtest::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Models(args) => models::run(args),
        Command::Keys(args) => keys::run(args),
        Command::State(args) => state::run(args),
        Command::Aggregate(args) => aggregate::run(args),
        Command::AtRisk(args) => client::run_at_risk(args),
        Command::User(args) => client::run_user(args),
        Command::Erase(args) => privacy::run_erase(args),
        Command::ExportUser(args) => privacy::run_export(args),
        Command::Object(args) => privacy::run_object(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", causes(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: ` (as `{:#}` prints them), each cause once: the
/// library errors show their source in their own message (`path: source`, so that they read
/// whole on their own) and name it as their source as well, which `{:#}` printed twice.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Everything this binary creates (bundles, state files, exports, reports) holds users' data:
/// umask 077 makes new files `0600` and directories `0700` (README "Data at rest and
/// pseudonyms").
fn owner_only_files() {
    #[cfg(unix)]
    // SAFETY: umask(2) only sets the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Logs go to stderr through tracing; `RUST_LOG` filters (default: info for tiering, warn else).
/// Coloured only on a terminal, and not when `NO_COLOR` is set (<https://no-color.org>): a log
/// in a file, a pipe or a service manager's journal is plain text.
fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tiering=info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .try_init();
}

/// A spinner on stderr for a long step (hidden when stderr is not a terminal).
pub fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Fails unless `dir` exists: "DIR: no such WHAT (HINT)" when it does not (a typo, an unmounted
/// volume), the OS error when it cannot be looked at. For commands that only read what a
/// directory holds, where a missing one must not pass for an empty one.
pub fn existing_dir(dir: &std::path::Path, what: &str, hint: &str) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{}: no such {what} ({hint})", dir.display())
        }
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("reading the {what} {}", dir.display())))
        }
    }
}

/// A time argument: RFC 3339, or a bare YYYY-MM-DD meaning the *end* of that day (UTC), so that
/// events on that date count as known ([`tiering::features::parse_instant`]).
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    Ok(tiering::features::parse_instant(s)?)
}

#[cfg(test)]
mod tests {
    use super::{causes, parse_time};

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Shows {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let io = || std::io::Error::other("disk full");
        let shown = anyhow::Error::new(Shows {
            path: "/m/CURRENT".into(),
            source: io(),
        })
        .context("pruning /m");
        assert_eq!(causes(&shown), "pruning /m: /m/CURRENT: disk full");
        assert_eq!(
            format!("{shown:#}"),
            "pruning /m: /m/CURRENT: disk full: disk full"
        );
        let plain = anyhow::Error::new(io()).context("writing /m/x");
        assert_eq!(causes(&plain), "writing /m/x: disk full");
    }

    #[test]
    fn a_bare_date_means_the_end_of_that_day() {
        assert_eq!(
            parse_time("2026-01-01").unwrap(),
            parse_time("2026-01-02T00:00:00Z").unwrap()
        );
        assert_eq!(
            parse_time("2026-01-01T12:00:00+08:00").unwrap(),
            parse_time("2026-01-01T04:00:00Z").unwrap()
        );
        assert!(parse_time("yesterday").is_err());
    }
}
