//! The gRPC service. Proto types stop here: the generated code is [`crate::pb`], and conversions
//! between it and the domain types live in [`convert`] only.
//!
//! # Layout
//!
//! - [`run`] / [`run_with_metrics`]: the entry points (mini-redis style: the caller binds the
//!   listener and owns the shutdown future, so tests bind 127.0.0.1:0 and stop the server). They
//!   take a [`ValidServeConfig`] only.
//! - [`config`] — [`ServeConfig`], layered defaults → TOML file → `TIERING__*` env → flags, and
//!   [`ServeConfig::check`] → [`ValidServeConfig`].
//! - [`service`] — the thin `tiering.v1.Tiering` handlers.
//! - [`convert`] — proto ⇄ domain, with request validation (INVALID_ARGUMENT names the field).
//! - [`state`] — the user state behind the [`state::UserState`] trait; [`state::embedded`] is
//!   the in-memory table with its write-ahead log and snapshots.
//! - [`slot`] — the live model slot, bundle loading and validation, CURRENT watching, swaps.
//! - [`at_risk`] — the at-risk scan (over any state backend) with top-k selection and page
//!   tokens.
//! - [`admission`] — deadlines and bounded concurrency (a tower layer).
//! - [`metrics`] — Prometheus metrics and the `GET /metrics` endpoint.
//! - [`error`] — [`RequestError`] with its one `From<RequestError> for tonic::Status` table, and
//!   [`ServeError`] for start-up.
//!
//! Imports point down: `service` → `convert` → `at_risk` → `state`; `slot` → `state`.
//!
//! # Lifecycle
//!
//! Start: the state directory is locked, its snapshot loaded and its log replayed (a failure
//! here is fatal); then the server accepts connections at once, health NOT_SERVING and every
//! RPC UNAVAILABLE until the first model loads. The first model seeds an empty state from its
//! snapshot; afterwards the state directory is the source of truth. Models are then swapped as
//! `MODELS/CURRENT` changes or on SIGHUP. Shutdown: health goes NOT_SERVING, in-flight requests
//! drain, background tasks stop, and a final snapshot is written.

pub(crate) mod admission;
pub mod at_risk;
pub mod config;
pub mod convert;
pub(crate) mod drift;
pub mod error;
pub mod metrics;
pub mod service;
pub(crate) mod slot;
pub mod state;

pub use config::{Clock, ConfigError, ServeConfig, ValidServeConfig};
pub use error::{RequestError, ServeError};

/// Transitional: the generated code moved to [`crate::pb`]; `tests/common` still names it here
/// until its call sites are swapped after the merge. Do not use in new code.
#[doc(hidden)]
use crate::bundle::BundleStore;
use slot::{Loader, ModelSlot, SERVICE_NAME};
use state::embedded::{EmbeddedState, LogOptions};
use state::{StateBackend, UserState};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Serves until `shutdown` resolves, then drains in-flight requests and writes a final state
/// snapshot. Binds `config.metrics_listen` itself when set.
pub async fn run(
    config: ValidServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    run_with_metrics(config, listener, metrics_listener, shutdown).await
}

/// [`run`], with the metrics listener bound by the caller (tests bind 127.0.0.1:0 for both).
/// `config.metrics_listen` is ignored.
pub async fn run_with_metrics(
    config: ValidServeConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let metrics = Arc::new(metrics::Metrics::new()?);
    let state = Arc::new(open_state(&config, metrics.clone()).await?);
    let slot = Arc::new(ModelSlot::default());
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // Background tasks stop when `stop` fires, or when this future is dropped (its sender goes).
    let (stop_tx, stop_rx) = watch::channel(false);
    let drift = drift::spawn(
        slot.clone(),
        state.clone(),
        &metrics,
        config.clock(),
        stop_rx.clone(),
    );
    let background = Background::spawn(
        &config,
        Loader::new(
            BundleStore::new(&config.models),
            slot.clone(),
            state.clone(),
            health.clone(),
            metrics.clone(),
        ),
        state.clone(),
        metrics_listener.map(|l| (l, metrics.clone())),
        stop_rx,
    );
    let tiering = crate::pb::tiering_server::TieringServer::new(service::TieringService::new(
        Arc::new(context(&config, slot, state.clone(), metrics.clone())),
    ))
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);

    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    tracing::info!(%addr, models = %config.models.display(), "serving gRPC");
    let drain_health = health.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        set_health(&drain_health, ServingStatus::NotServing).await;
    };
    let served = tonic::transport::Server::builder()
        .layer(admission::AdmissionLayer::new(
            config.max_concurrent_requests,
            metrics.clone(),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tiering)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        )
        .await;

    let _ = stop_tx.send(true);
    background.join().await;
    let _ = drift.await;
    let flushed = state.shutdown().await;
    match &flushed {
        Ok(()) => tracing::info!("final state snapshot written"),
        Err(e) => {
            tracing::error!(error = %e, "final state snapshot failed (the event log keeps every event)")
        }
    }
    served?;
    Ok(flushed?)
}

/// Opens the configured state backend (blocking work, on a blocking thread) and logs what
/// start-up found.
async fn open_state(
    config: &ValidServeConfig,
    metrics: Arc<metrics::Metrics>,
) -> Result<StateBackend, ServeError> {
    let state_dir = config.state_dir();
    let opts = LogOptions {
        fsync: config.wal_fsync,
        snapshot_bytes: config.snapshot_wal_bytes,
    };
    let (dir, shards, m) = (state_dir.clone(), config.shards, metrics.clone());
    let (state, recovery) =
        tokio::task::spawn_blocking(move || EmbeddedState::open(&dir, shards, opts, m))
            .await
            .map_err(ServeError::OpenTask)??;
    tracing::info!(
        state_dir = %state_dir.display(),
        users = recovery.users,
        replayed_events = recovery.replayed_events,
        torn_tail = recovery.torn_tail,
        seeded_from = recovery.seeded_from.as_deref().unwrap_or("(not yet: the first model seeds it)"),
        "state loaded"
    );
    let state = StateBackend::Embedded(state);
    metrics.events_ingested(0, state.users());
    Ok(state)
}

/// The handlers' shared context, from the configuration.
fn context(
    config: &ValidServeConfig,
    model: Arc<ModelSlot>,
    state: Arc<StateBackend>,
    metrics: Arc<metrics::Metrics>,
) -> service::Context {
    service::Context {
        limits: service::Limits {
            max_batch_size: config.max_batch_size,
            max_events_per_request: config.max_events_per_request,
            page: convert::PageLimits {
                default: config.default_page_size,
                max: config.max_page_size,
            },
            future_tolerance: i64::try_from(config.future_tolerance_secs).unwrap_or(i64::MAX),
        },
        clock: config.clock(),
        model,
        state,
        metrics,
    }
}

/// Health of the whole server and of the Tiering service, set together.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// The tasks that run beside the gRPC server: the model watcher, periodic snapshots, the
/// metrics endpoint, and the SIGHUP listener.
struct Background {
    watcher: tokio::task::JoinHandle<()>,
    snapshots: tokio::task::JoinHandle<()>,
    metrics: Option<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn spawn(
        config: &ValidServeConfig,
        loader: Loader,
        state: Arc<StateBackend>,
        metrics: Option<(TcpListener, Arc<metrics::Metrics>)>,
        stop_rx: watch::Receiver<bool>,
    ) -> Background {
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        spawn_sighup_listener(reload_tx, stop_rx.clone());
        let watcher = tokio::spawn(loader.watch(config.model_poll(), reload_rx, stop_rx.clone()));
        let snapshots = tokio::spawn(snapshot_periodically(
            state,
            Duration::from_secs(config.snapshot_interval_secs),
            stop_rx.clone(),
        ));
        let metrics = metrics.map(|(l, m)| {
            let mut stop = stop_rx.clone();
            tokio::spawn(metrics::serve(l, m, async move {
                let _ = stop.changed().await;
            }))
        });
        Background {
            watcher,
            snapshots,
            metrics,
        }
    }

    /// Waits for every task (after `stop` fired).
    async fn join(self) {
        let _ = self.watcher.await;
        let _ = self.snapshots.await;
        if let Some(t) = self.metrics {
            let _ = t.await;
        }
    }
}

async fn snapshot_periodically(
    state: Arc<StateBackend>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => match state.checkpoint().await {
                Ok(true) => tracing::debug!("state snapshot written"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "periodic state snapshot failed (the event log keeps every event)"),
            },
            _ = stop.changed() => return,
        }
    }
}

/// SIGHUP asks the model loader to check `MODELS/CURRENT` now (and retry a refused bundle).
fn spawn_sighup_listener(reload: tokio::sync::mpsc::Sender<()>, mut stop: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            Some(()) = hup.recv() => { let _ = reload.try_send(()); }
                            _ = stop.changed() => return,
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; models reload on CURRENT changes only")
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reload, stop);
    }
}
