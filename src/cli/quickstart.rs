//! `tiering quickstart`: the main job. Generates a demo platform, trains on it, and serves it.
//! Re-running reuses what is already there (use `--fresh` to start over).

use super::{generate, serve, spinner, train};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use tiering::bundle::BundleStore;
use tiering::train::{TrainConfig, TrainJob};

#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Working directory for the demo: data/, models/, state/.
    #[arg(long, default_value = "demo")]
    pub dir: PathBuf,
    /// Synthetic users to generate.
    #[arg(long, default_value_t = 20_000)]
    pub users: u64,
    /// Days of history to generate (ending now).
    #[arg(long, default_value_t = 180)]
    pub days: u32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Prometheus metrics address.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,
    /// Delete the demo directory first: regenerate, retrain, fresh server state.
    #[arg(long)]
    pub fresh: bool,
    /// Stop after training (do not start the server).
    #[arg(long)]
    pub no_serve: bool,
}

pub fn run(args: QuickstartArgs) -> Result<()> {
    if args.fresh && args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("removing {}", args.dir.display()))?;
    }
    let data = args.dir.join("data");
    let models = args.dir.join("models");
    let state = args.dir.join("state");
    if !data.join("events.csv").exists() {
        println!(
            "== generating {} users x {} days into {}",
            args.users,
            args.days,
            data.display()
        );
        generate::run(generate::GenerateArgs {
            users: args.users,
            days: args.days,
            seed: args.seed,
            out: data.clone(),
            format: generate::Format::Csv,
            end: None,
            // Channels and favourite categories, so the demo shows interests and channel mixes.
            channels: true,
            // Refunds on, so the demo's report shows net spend and the refund features.
            no_refunds: false,
            vocabulary: generate::VocabularyArg::Canonical,
        })
        .context("generating the demo data")?;
    } else {
        println!("== reusing {}", data.display());
    }
    let store = BundleStore::new(&models);
    if store
        .current()
        .context("reading the demo's CURRENT")?
        .is_none()
    {
        println!("== training into {}", models.display());
        let params = TrainConfig {
            seed: args.seed,
            ..TrainConfig::default()
        }
        .check()
        .context("checking the training configuration")?;
        let job = TrainJob::new(data.clone(), models.clone(), params);
        let bar = spinner("reading events");
        let outcome =
            tiering::train::run(job, &mut |stage: &str| bar.set_message(stage.to_string()))
                .context("training the demo model")?;
        bar.finish_and_clear();
        train::print_outcome(&outcome);
    } else {
        println!("== reusing the current bundle in {}", models.display());
    }
    let bundle = store.load_current().context("loading the demo bundle")?;
    let exe = std::env::args().next().unwrap_or_else(|| "tiering".into());
    let server = format!("http://{}", args.listen);
    println!();
    println!(
        "report:   {}",
        bundle.dir.join(tiering::bundle::REPORT).display()
    );
    println!(
        "model:    {} ({} tiers, serving {})",
        bundle.version(),
        bundle.manifest.tiers.len(),
        bundle.manifest.metrics.chosen_model
    );
    if args.no_serve {
        println!(
            "start the server with: {exe} serve --models {} --state {} --listen {}",
            models.display(),
            state.display(),
            args.listen
        );
        return Ok(());
    }
    println!(
        "serving:  gRPC {} (health, reflection), metrics http://{}/metrics",
        args.listen, args.metrics_listen
    );
    println!("try, from another terminal:");
    println!("  {exe} user u0000042 --server {server}");
    println!("  {exe} at-risk --server {server} --min-probability 0.7 --limit 20 --format table");
    println!(
        "  grpcurl -plaintext -d '{{\"user_id\":\"u0000042\"}}' {} tiering.v1.Tiering/GetUserTier",
        args.listen
    );
    println!(
        "Ctrl-C stops the server (state is flushed to {}).",
        state.display()
    );
    serve::run(serve::ServeArgs {
        models: Some(models),
        listen: Some(args.listen),
        metrics_listen: Some(args.metrics_listen),
        http_listen: None,
        state: Some(state),
        reseed_state: false,
        redis: super::serve::RedisAccessArgs::default(),
        config: None,
        now: None,
        verify_key: Vec::new(),
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
        keys_file: None,
        insecure: false,
        audit_log: None,
        privacy_key_file: None,
        state_key_file: None,
        pseudonymize_key_file: None,
    })
}
