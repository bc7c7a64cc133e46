//! The gRPC service. Proto types stop here: [`proto`] is the generated code, and conversions
//! between it and the domain types live in [`convert`] only.
//!
//! # Layout
//!
//! - [`run`] / [`run_with_metrics`]: the entry points (mini-redis style: the caller binds the
//!   listener and owns the shutdown future, so tests bind 127.0.0.1:0 and stop the server).
//! - [`config`] — [`ServeConfig`], layered defaults → TOML file → `TIERING__*` env → flags.
//! - [`service`] — the thin `tiering.v1.Tiering` handlers.
//! - [`convert`] — proto ⇄ domain, with request validation (INVALID_ARGUMENT names the field).
//! - [`store`] — the sharded in-memory user table (raw aggregates, model-independent).
//! - [`wal`] — durability: write-ahead log with group commit, snapshots, replay.
//! - [`model`] — the live model slot, bundle loading and validation, CURRENT watching, swaps.
//! - [`at_risk`] — the parallel at-risk scan with top-k selection and page tokens.
//! - [`admission`] — deadlines and bounded concurrency (a tower layer).
//! - [`metrics`] — Prometheus metrics and the `GET /metrics` endpoint.
//! - [`error`] — [`ServeError`] and its one `From<ServeError> for tonic::Status` table.
//!
//! # Lifecycle
//!
//! Start: the state directory is locked, its snapshot loaded and its log replayed (a failure
//! here is fatal); then the server accepts connections at once, health NOT_SERVING and every
//! RPC UNAVAILABLE until the first model loads. The first model seeds an empty state from its
//! snapshot; afterwards the state directory is the source of truth. Models are then swapped as
//! `MODELS/CURRENT` changes or on SIGHUP. Shutdown: health goes NOT_SERVING, in-flight requests
//! drain, background tasks stop, and a final snapshot is written.

pub mod admission;
pub mod at_risk;
pub mod config;
pub mod convert;
pub mod error;
pub mod metrics;
pub mod model;
pub mod service;
pub mod store;
pub mod wal;

pub use config::{Clock, ServeConfig};
pub use error::ServeError;

use crate::bundle::BundleStore;
use model::{Loader, ModelSlot, SERVICE_NAME};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

/// Generated from `proto/tiering/v1/tiering.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("tiering.v1");

    /// Encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tiering_descriptor.bin"));
}

/// Serves until `shutdown` resolves, then drains in-flight requests and writes a final state
/// snapshot. Binds `config.metrics_listen` itself when set.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| ServeError::Config(format!("metrics_listen {addr}: {e}")))?,
        ),
        None => None,
    };
    run_with_metrics(config, listener, metrics_listener, shutdown).await
}

/// [`run`], with the metrics listener bound by the caller (tests bind 127.0.0.1:0 for both).
/// `config.metrics_listen` is ignored.
pub async fn run_with_metrics(
    config: ServeConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    config.validate()?;
    let clock = config.clock()?;
    let metrics = Arc::new(metrics::Metrics::new()?);
    let store = Arc::new(store::UserStore::new(config.shards));
    let state_dir = config.state_dir();
    let opts = wal::LogOptions {
        fsync: config.wal_fsync,
        snapshot_bytes: config.snapshot_wal_bytes,
    };
    let (log, recovery) = {
        let (dir, store, metrics) = (state_dir.clone(), store.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || wal::EventLog::open(&dir, store, opts, metrics))
            .await
            .map_err(|e| ServeError::Internal(format!("opening the state: {e}")))??
    };
    tracing::info!(
        state_dir = %state_dir.display(),
        users = recovery.users,
        replayed_events = recovery.replayed_events,
        torn_tail = recovery.torn_tail,
        seeded_from = recovery.seeded_from.as_deref().unwrap_or("(not yet: the first model seeds it)"),
        "state loaded"
    );
    metrics.events_ingested(0, store.len());
    let log = Arc::new(log);
    let slot = Arc::new(ModelSlot::default());

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_err = |e: tonic_reflection::server::Error| {
        ServeError::Internal(format!("server reflection: {e}"))
    };
    let reflection_v1 = reflection().build_v1().map_err(reflection_err)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_err)?;

    // Background tasks stop when `stop` fires, or when this future is dropped (its sender goes).
    let (stop_tx, stop_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    spawn_sighup_listener(reload_tx, stop_rx.clone());
    let loader = Loader::new(
        BundleStore::new(&config.models),
        slot.clone(),
        log.clone(),
        health.clone(),
        metrics.clone(),
    );
    let watcher = tokio::spawn(loader.watch(config.model_poll(), reload_rx, stop_rx.clone()));
    let snapshots = tokio::spawn(snapshot_periodically(
        log.clone(),
        Duration::from_secs(config.snapshot_interval_secs),
        stop_rx.clone(),
    ));
    let metrics_task = metrics_listener.map(|l| {
        let mut stop = stop_rx.clone();
        tokio::spawn(metrics::serve(l, metrics.clone(), async move {
            let _ = stop.changed().await;
        }))
    });

    let ctx = Arc::new(service::Context {
        limits: service::Limits {
            max_batch_size: config.max_batch_size,
            max_events_per_request: config.max_events_per_request,
            page: convert::PageLimits {
                default: config.default_page_size,
                max: config.max_page_size,
            },
            future_tolerance: i64::try_from(config.future_tolerance_secs).unwrap_or(i64::MAX),
        },
        clock,
        model: slot,
        store,
        log: log.clone(),
        metrics: metrics.clone(),
    });
    let tiering = proto::tiering_server::TieringServer::new(service::TieringService::new(ctx))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    let addr = listener.local_addr().map_err(ServeError::io("listener"))?;
    tracing::info!(%addr, models = %config.models.display(), "serving gRPC");
    let drain_health = health.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        drain_health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        drain_health
            .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
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
    let _ = watcher.await;
    let _ = snapshots.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let flushed = log.shutdown().await;
    match &flushed {
        Ok(()) => tracing::info!("final state snapshot written"),
        Err(e) => {
            tracing::error!(error = %e, "final state snapshot failed (the event log keeps every event)")
        }
    }
    served?;
    flushed
}

async fn snapshot_periodically(
    log: Arc<wal::EventLog>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => match log.checkpoint().await {
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
