//! `tiering state`: check, repair, back up and restore a server's state directory (the
//! snapshot `state.bin` and the event log `wal-*.log`). See README "Operations / Storage".
//!
//! `check`, `repair` and `restore` take the directory's lock, so they refuse while a server
//! runs on it; `backup` works while it runs.

use anyhow::{Context, Result};
use std::path::PathBuf;
use tiering::serve::audit::{Audit, Entry};
use tiering::serve::state::embedded::tools::{self, Repaired};
use tiering::serve::state::embedded::{Recovery, StateKey};

#[derive(clap::Args)]
pub struct StateArgs {
    /// The state directory (the server's `--state`).
    #[arg(long, global = true, default_value = "state", value_name = "DIR")]
    pub state: PathBuf,
    /// Append an audit entry for `repair` and `restore` to FILE (the server's `--audit-log`);
    /// a log line with target `audit` is written either way.
    #[arg(long, global = true, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// The key the state is encrypted with (the server's --state-key-file).
    #[arg(long, global = true, value_name = "FILE")]
    pub state_key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Replay the snapshot and the log without changing anything, and say what was found
    /// (exit 1 if the server would refuse to start).
    Check,
    /// Cut a damaged log at its first bad byte (the file is first copied to `<file>.broken`),
    /// and cut a torn tail; the events after the damage are lost unless --salvage.
    Repair {
        /// Keep every valid record after the damage too (drops only the bad bytes).
        #[arg(long)]
        salvage: bool,
    },
    /// Copy the state (consistently, also while a server runs) into DEST (absent or empty).
    Backup {
        #[arg(long, value_name = "DEST")]
        to: PathBuf,
    },
    /// Check the backup in SRC and copy it into the state directory.
    Restore {
        #[arg(long, value_name = "SRC")]
        from: PathBuf,
        /// Move state already in the directory aside (to `replaced-<unix time>/`) instead of
        /// refusing.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(args: StateArgs) -> Result<()> {
    let dir = &args.state;
    let key = args
        .state_key_file
        .as_deref()
        .map(StateKey::from_file)
        .transpose()
        .context("reading --state-key-file")?;
    let key = key.as_ref();
    match args.action {
        Action::Check => {
            // A server creates its directory at first start: a missing one is a typo or a
            // server that never ran there, not a state it would refuse.
            super::existing_dir(
                dir,
                "state directory",
                "nothing to check; a server creates it at its first start",
            )?;
            let r = tools::check(dir, key).with_context(|| {
                format!(
                    "checking {}: the server would refuse to start",
                    dir.display()
                )
            })?;
            print_recovery("ok", &r);
        }
        Action::Repair { salvage } => {
            let (changed, r) = tools::repair(dir, salvage, key)
                .with_context(|| format!("repairing {}", dir.display()))?;
            for Repaired {
                path,
                broken_copy,
                before,
                after,
            } in &changed
            {
                println!(
                    "repaired {}: {before} -> {after} bytes (the original is kept as {})",
                    path.display(),
                    broken_copy.display()
                );
            }
            if changed.is_empty() {
                println!("no damaged record found");
            }
            audit(args.audit_log.as_deref(), "state repair", |e| {
                e.detail("salvage", salvage)
                    .detail("segments_cut", changed.len() as u64)
            })?;
            print_recovery("now", &r);
        }
        Action::Backup { to } => {
            let r = tools::backup(dir, &to, key)
                .with_context(|| format!("backing up {} to {}", dir.display(), to.display()))?;
            print_recovery(&format!("backup in {}", to.display()), &r);
        }
        Action::Restore { from, force } => {
            let r = tools::restore(&from, dir, force, key)
                .with_context(|| format!("restoring {} into {}", from.display(), dir.display()))?;
            print_recovery(&format!("restored into {}", dir.display()), &r);
            audit(args.audit_log.as_deref(), "state restore", |e| {
                e.detail("force", force)
            })?;
        }
    }
    Ok(())
}

/// An audit entry for a state change made from the command line: who is the local user.
fn audit(
    file: Option<&std::path::Path>,
    action: &'static str,
    detail: impl FnOnce(Entry) -> Entry,
) -> Result<()> {
    let who = std::env::var("USER").unwrap_or_else(|_| "local".to_string());
    let log = Audit::open(file, None).context("opening the audit log")?;
    log.record(detail(Entry::new(format!("cli:{who}"), action)));
    Ok(())
}

fn print_recovery(label: &str, r: &Recovery) {
    println!(
        "{label}: {} users, seeded from {}, {} events in {} records after the snapshot",
        r.users,
        r.seeded_from.as_deref().unwrap_or("(not yet seeded)"),
        r.replayed_events,
        r.replayed_records,
    );
    for s in &r.segments {
        println!("  {s}");
    }
    if r.unclean_stop() {
        println!(
            "  the log after the snapshot is not empty: the last run stopped without its final \
             snapshot (a crash, a kill, a power cut); a cut at a record boundary cannot be told \
             from the log's true end"
        );
    }
}
