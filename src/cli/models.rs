//! `tiering models`: list, promote or roll back the bundles of a models directory.
//!
//! `promote` and `rollback` verify the target bundle (checksums, model, state) before they move
//! `MODELS/CURRENT`; a running server notices the change within its poll interval (or at once on
//! SIGHUP) and keeps serving the old model if the new one fails to load.
//!
//! With `--verify-key` (files or directories of `*.pub` public keys), `promote` and `rollback`
//! refuse a bundle that is not signed by one of the keys, as a server with the same keys would,
//! and `list` marks such bundles broken; `list` always shows the key id a bundle names.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tiering::bundle::{BundleStore, Manifest, VerifyKeys, VersionInfo, MANIFEST};
use tiering::features::time::format_rfc3339;
use unicode_width::UnicodeWidthStr;

#[derive(clap::Args)]
pub struct ModelsArgs {
    /// The models directory (bundles, CURRENT, HISTORY).
    #[arg(long, global = true, default_value = "models", value_name = "DIR")]
    pub models: PathBuf,
    /// Accept only bundles signed by this public key (a PEM file, or a directory of *.pub
    /// files); repeat for several (key rotation).
    #[arg(long, global = true, value_name = "FILE|DIR")]
    pub verify_key: Vec<PathBuf>,
    /// Administer the models of a running server instead (ListModels, PromoteModel,
    /// RollbackModel; role admin): its gRPC URL. The server checks with its own verify keys.
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    #[command(flatten)]
    pub security: super::client::SecurityArgs,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Every bundle, oldest first: version, creation time, model, quality, the CURRENT one
    /// marked, and why a bundle does not load.
    List,
    /// Verify bundle VERSION and make it current.
    Promote {
        /// The version id (a directory name under MODELS).
        version: String,
    },
    /// Make the version that was current before the current one current again.
    Rollback,
    /// Delete every bundle but the current one and the KEEP newest others (the retention rule
    /// for ids of erased users inside bundles: README, "Ids inside existing bundles").
    Prune {
        /// Bundles kept besides the current one (the rollback window).
        #[arg(long)]
        keep: usize,
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(args: ModelsArgs) -> Result<()> {
    if let Some(server) = &args.server {
        if matches!(args.action, Action::Prune { .. }) {
            return prune_is_local_only();
        }
        return remote(server, &args);
    }
    let keys = if args.verify_key.is_empty() {
        None
    } else {
        Some(Arc::new(
            VerifyKeys::load(&args.verify_key).context("reading --verify-key")?,
        ))
    };
    // A missing directory is not an empty store: `list` and a scheduled `prune` would
    // otherwise succeed with nothing to say.
    super::existing_dir(
        &args.models,
        "models directory",
        &format!(
            "train a bundle into it with `tiering train --models {}`",
            args.models.display()
        ),
    )?;
    let store = BundleStore::new(&args.models).with_verify_keys(keys);
    match args.action {
        Action::List => list(&store),
        Action::Promote { version } => {
            let before = store.current().ok().flatten();
            let bundle = store
                .promote(&version)
                .with_context(|| format!("promoting {version} in {}", store.root.display()))?;
            println!(
                "{} is now current (was {}); a running server switches within its poll interval, \
                 or at once on SIGHUP",
                bundle.version(),
                before.as_deref().unwrap_or("none")
            );
            Ok(())
        }
        Action::Prune { keep, dry_run } => {
            let pruned = store
                .prune(keep, dry_run)
                .with_context(|| format!("pruning {}", store.root.display()))?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for v in &pruned.removed {
                println!("{verb} {v}");
            }
            println!(
                "{} bundle(s) {verb}, {} kept: {}",
                pruned.removed.len(),
                pruned.kept.len(),
                pruned.kept.join(", ")
            );
            Ok(())
        }
        Action::Rollback => {
            let before = store.current().ok().flatten();
            let bundle = store
                .rollback()
                .with_context(|| format!("rolling back in {}", store.root.display()))?;
            println!(
                "rolled back from {} to {}",
                before.as_deref().unwrap_or("none"),
                bundle.version()
            );
            Ok(())
        }
    }
}

/// One row of the listing; `-` where the bundle does not say.
struct Row {
    version: String,
    created_at: String,
    as_of: String,
    model: String,
    roc_auc: String,
    users: String,
    signed_by: String,
    status: String,
}

/// Details from a bundle's manifest (already verified by `BundleStore::list`).
fn row(root: &Path, v: &VersionInfo) -> Row {
    let manifest: Option<Manifest> = if v.problem.is_none() {
        std::fs::read(root.join(&v.version).join(MANIFEST))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    } else {
        None
    };
    let dash = || "-".to_string();
    let m = manifest.as_ref();
    let chosen = m.and_then(|m| {
        m.metrics
            .models
            .iter()
            .find(|x| x.name == m.metrics.chosen_model)
    });
    let status = match (&v.problem, v.current) {
        (Some(p), true) => format!("CURRENT, BROKEN: {p}"),
        (Some(p), false) => format!("BROKEN: {p}"),
        (None, true) => "CURRENT".to_string(),
        (None, false) => String::new(),
    };
    Row {
        version: v.version.clone(),
        created_at: v.created_at.map_or_else(dash, format_rfc3339),
        as_of: m.map_or_else(dash, |m| m.as_of.clone()),
        model: m.map_or_else(dash, |m| m.metrics.chosen_model.clone()),
        roc_auc: chosen.map_or_else(dash, |c| format!("{:.4}", c.metrics.roc_auc)),
        users: m.map_or_else(dash, |m| m.data.users.to_string()),
        signed_by: v.signed_by.clone().unwrap_or_else(|| "unsigned".into()),
        status,
    }
}

fn list(store: &BundleStore) -> Result<()> {
    let root = &store.root;
    let current = store
        .current()
        .with_context(|| format!("reading {}/CURRENT", root.display()))?;
    let versions = store
        .list()
        .with_context(|| format!("listing bundles in {}", root.display()))?;
    if versions.is_empty() {
        println!(
            "no bundles in {} (train one with `tiering train --models {}`)",
            root.display(),
            root.display()
        );
        return Ok(());
    }
    let rows: Vec<Row> = versions.iter().map(|v| row(root, v)).collect();
    let header = [
        "VERSION",
        "CREATED_AT",
        "AS_OF",
        "MODEL",
        "ROC_AUC",
        "USERS",
        "SIGNED_BY",
        "STATUS",
    ];
    let cells = |r: &Row| -> [String; 8] {
        [
            r.version.clone(),
            r.created_at.clone(),
            r.as_of.clone(),
            r.model.clone(),
            r.roc_auc.clone(),
            r.users.clone(),
            r.signed_by.clone(),
            r.status.clone(),
        ]
    };
    let table: Vec<[String; 8]> = rows.iter().map(cells).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for r in &table {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.width());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(widths[i].saturating_sub(c.width()) + 2));
            }
        }
        println!("{}", s.trim_end());
    };
    line(&header);
    for r in &table {
        let c: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&c);
    }
    match current {
        None => println!("no bundle is current: `tiering models promote VERSION`"),
        Some(c) if !versions.iter().any(|v| v.version == c) => {
            println!(
                "warning: CURRENT names {c}, which is not a bundle in {}",
                root.display()
            )
        }
        Some(_) => {}
    }
    match store.verify_keys() {
        Some(keys) => println!(
            "signatures verified against key ids {}",
            keys.key_ids().join(", ")
        ),
        None => println!("signatures not verified (give --verify-key to check them)"),
    }
    Ok(())
}

/// `tiering models --server URL ...`: the same actions through the server's admin RPCs.
fn remote(server: &str, args: &ModelsArgs) -> Result<()> {
    let url = super::client::server_url(server);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut client = super::client::connect_with(&url, &args.security, 60).await?;
        let status = |s: tonic::Status| {
            anyhow::anyhow!("{}: {}", super::client::code_name(s.code()), s.message())
        };
        match &args.action {
            Action::List => {
                let r = client
                    .list_models(tiering::pb::ListModelsRequest {})
                    .await
                    .map_err(status)?
                    .into_inner();
                println!("VERSION  SIGNED_BY  STATUS");
                for m in &r.models {
                    let state = match (m.current, m.problem.as_str()) {
                        (true, "") => "CURRENT".to_string(),
                        (true, p) => format!("CURRENT, BROKEN: {p}"),
                        (false, "") => String::new(),
                        (false, p) => format!("BROKEN: {p}"),
                    };
                    let signed = if m.signed_by.is_empty() {
                        "unsigned"
                    } else {
                        &m.signed_by
                    };
                    println!("{}  {}  {}", m.version, signed, state.trim_end());
                }
                Ok(())
            }
            Action::Promote { version } => {
                let r = client
                    .promote_model(tiering::pb::PromoteModelRequest {
                        version: version.clone(),
                    })
                    .await
                    .map_err(status)
                    .with_context(|| format!("promoting {version} on {url}"))?
                    .into_inner();
                println!(
                    "{} is now current (was {})",
                    r.version,
                    or_none(&r.previous)
                );
                Ok(())
            }
            Action::Rollback => {
                let r = client
                    .rollback_model(tiering::pb::RollbackModelRequest {})
                    .await
                    .map_err(status)
                    .with_context(|| format!("rolling back on {url}"))?
                    .into_inner();
                println!("rolled back from {} to {}", or_none(&r.previous), r.version);
                Ok(())
            }
            Action::Prune { .. } => prune_is_local_only(),
        }
    })
}

/// Prune has no RPC: it deletes directories, so it runs where the models directory is.
fn prune_is_local_only() -> Result<()> {
    anyhow::bail!(
        "prune deletes bundle directories: run it where the models directory is (--models DIR), not through --server"
    )
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "none"
    } else {
        s
    }
}
