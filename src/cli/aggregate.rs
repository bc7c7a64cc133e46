//! `tiering aggregate --events kafka://BROKERS/TOPIC --state redis://HOST:PORT --group NAME
//! [--metrics-listen ADDR]`: one member of the consumer group that applies the event topic to the shared state (see
//! `tiering::serve::aggregator`). SIGINT/SIGTERM stop it after the batch in hand.
//!
//! A subcommand of its own rather than `tiering serve --consume`: the aggregator needs no
//! model, no gRPC listener and no local state directory, and it scales with the topic's
//! partitions (at most one busy member per partition), not with read traffic; a serving
//! replica stays stateless and can be rolled without a consumer-group rebalance.

#[derive(Debug, clap::Args)]
pub struct AggregateArgs {
    /// The event topic: kafka://BROKER1:9092,BROKER2:9092/TOPIC.
    #[arg(long, value_name = "URL")]
    pub events: String,
    /// The shared state the events are applied to: redis://HOST:PORT[/DB] or
    /// redis+cluster://HOST:PORT,...; rediss:// over TLS (see --redis-ca-file, --redis-user,
    /// --redis-password-file: the same as `tiering serve`'s).
    #[arg(long, value_name = "URL")]
    pub state: String,
    #[command(flatten)]
    pub redis: super::serve::RedisAccessArgs,
    /// The shared models directory the replicas serve from: the Redis state's marker is checked
    /// against its record (`redis-state.json`) as a replica does at start.
    #[arg(long, value_name = "DIR")]
    pub models: std::path::PathBuf,
    /// The consumer group; every aggregator of one state shares it.
    #[arg(long, value_name = "NAME", default_value = "tiering-aggregator")]
    pub group: String,
    /// Most records in one batch (one state write, one offset commit).
    #[arg(long, default_value_t = 1000)]
    pub max_batch: usize,
    /// Longest a batch waits to fill, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub max_wait_ms: u64,
    /// Serve the aggregator's Prometheus metrics (consumer lag per partition, events applied,
    /// skipped and undecodable, batch latency) at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How often the consumer lag is refreshed, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub stats_interval_ms: u64,
    /// A member silent this long (a crash) loses its partitions to the others, in milliseconds
    /// (`session.timeout.ms`; the broker bounds it).
    #[arg(long, default_value_t = 45_000)]
    pub session_timeout_ms: u64,
}

#[cfg(not(feature = "kafka"))]
pub fn run(_args: AggregateArgs) -> anyhow::Result<()> {
    anyhow::bail!("tiering aggregate needs the `kafka` feature, and this binary was built without it (cargo build --features kafka)")
}

#[cfg(feature = "kafka")]
pub fn run(args: AggregateArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::sync::Arc;
    use std::time::Duration;
    use tiering::serve::aggregator::{Aggregator, AggregatorConfig, AggregatorMetrics};
    use tiering::serve::config::EventsTarget;

    let target = EventsTarget::parse(&args.events).context("--events")?;
    let mut config = AggregatorConfig::new(target, args.group);
    config.max_batch = args.max_batch.max(1);
    config.max_wait = Duration::from_millis(args.max_wait_ms);
    config.stats_interval = Duration::from_millis(args.stats_interval_ms.max(1));
    config.session_timeout = Duration::from_millis(args.session_timeout_ms.max(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let state = open_shared_state(&args.state, &args.models, args.redis.access()).await?;
        let metrics = Arc::new(AggregatorMetrics::new()?);
        let aggregator = Aggregator::connect(config, metrics.clone())?;
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(addr) = args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}"))?;
            let bound = listener.local_addr().context("--metrics-listen")?;
            eprintln!("tiering: aggregator metrics on http://{bound}/metrics");
            let m = metrics.clone();
            let render: tiering::serve::metrics::Render =
                Arc::new(move || m.render().into_bytes());
            tokio::spawn(tiering::serve::metrics::serve_text(listener, render, None, async {
                let _ = metrics_stopped.await;
            }));
        }
        eprintln!("tiering: aggregating {} into {}", args.events, args.state);
        let totals = aggregator
            .run(&state, super::serve::shutdown_signal())
            .await;
        let _ = stop_metrics.send(());
        let totals = totals?;
        eprintln!(
            "tiering: aggregator stopped: {} batches, {} events applied, {} skipped (redelivered), {} undecodable",
            totals.batches, totals.applied, totals.skipped, totals.undecodable
        );
        Ok(())
    })
}

/// The shared state named by `--state` (Redis), opened as a replica opens it (the marker is
/// checked against the models directory's record), and required to be seeded: events applied
/// to users before the bundle's snapshot seeds them would make the seed skip those users
/// (seeding never overwrites), losing their history. A replica seeds the state at its first start.
#[cfg(feature = "kafka")]
async fn open_shared_state(
    url: &str,
    models: &std::path::Path,
    access: tiering::serve::state::redis::RedisAccess,
) -> anyhow::Result<tiering::serve::state::StateBackend> {
    use anyhow::Context;
    use std::sync::Arc;
    use tiering::serve::config::StateLocation;
    use tiering::serve::state::redis::{RedisOptions, RedisState};
    use tiering::serve::state::{StateBackend, UserState};
    let target = match StateLocation::parse(url.into()).context("--state")? {
        StateLocation::Redis(target) => target,
        StateLocation::Dir(_) => anyhow::bail!(
            "--state {url}: the aggregator applies events to a shared state (redis://HOST:PORT or redis+cluster://...); the embedded state does not consume a topic"
        ),
    };
    let metrics = Arc::new(tiering::serve::metrics::Metrics::new().context("metrics registry")?);
    let opts = RedisOptions {
        target,
        models: models.to_path_buf(),
        reseed: false,
        timeout: std::time::Duration::from_secs(2),
        access,
    };
    let state = RedisState::open(opts, metrics)
        .await
        .with_context(|| format!("opening the Redis state {url}"))?;
    if !state.is_seeded() {
        anyhow::bail!(
            "--state {url}: the Redis state is not seeded yet; start a serving replica first (it seeds the state from the current bundle), then the aggregator"
        );
    }
    Ok(StateBackend::Redis(state))
}
