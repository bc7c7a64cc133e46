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
//!   the in-memory table with its write-ahead log and snapshots, [`state::redis`] the shared
//!   Redis state for scale-out replicas (`--state redis://...`; readiness follows its
//!   reachability).
//! - [`slot`] — the live model slot, bundle loading and validation, CURRENT watching, swaps.
//! - [`ranking`] — the at-risk ranking ListAtRiskUsers pages through: maintained incrementally
//!   from RecordEvents, rebuilt on a schedule and after model swaps, published as immutable
//!   versions that page tokens pin.
//! - [`at_risk`] — the at-risk query, and the full scan (the reference the ranking equals).
//! - [`page_token`] — HMAC-signed page tokens and their keys (file or environment).
//! - [`admission`] — request ids, request bodies, deadlines and bounded concurrency (a tower layer).
//! - [`connections`] — the accept loop: connection cap below the descriptor limit, accept
//!   backoff, idle timeout.
//! - [`metrics`] — Prometheus metrics and the `GET /metrics` endpoint.
//! - [`http`] — the HTTP/JSON API and the web console on `http_listen`: every route calls the
//!   gRPC handlers of [`service`], behind the same TLS and role check.
//! - [`error`] — [`RequestError`] with its one `From<RequestError> for tonic::Status` table, and
//!   [`ServeError`] for start-up.
//!
//! Imports point down: `service` → `convert` → `at_risk` → `state`; `service` → `ranking` →
//! `state`, `slot`; `slot` → `state`.
//!
//! # Lifecycle
//!
//! Start: the state directory is locked, its snapshot loaded and its log replayed (a failure
//! here is fatal); then the server accepts connections at once, health NOT_SERVING and every
//! RPC UNAVAILABLE until the first model loads. The first model seeds an empty state from its
//! snapshot; afterwards the state directory is the source of truth. Models are then swapped as
//! `MODELS/CURRENT` changes or on SIGHUP. Shutdown: health goes NOT_SERVING, in-flight requests
//! drain for at most `shutdown_grace_ms` (then the remaining connections are dropped),
//! background tasks stop, and a final snapshot is written.

pub(crate) mod admin;
pub(crate) mod admission;
#[cfg(feature = "kafka")]
pub mod aggregator;
pub mod at_risk;
pub mod audit;
pub mod auth;
pub mod config;
pub mod connections;
pub mod convert;
pub(crate) mod drift;
pub mod error;
pub mod events;
pub mod http;
pub mod metrics;
pub mod page_token;
pub mod privacy;
pub mod pseudonym;
pub mod ranking;
pub mod service;
pub(crate) mod slot;
pub mod state;
pub mod tls;

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
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let (tls, auth) = load_security(&config, &metrics, addr)?;
    let token_keys = Arc::new(load_token_keys(&config)?);
    let state = Arc::new(open_state(&config, metrics.clone()).await?);
    let sink = Arc::new(open_sink(&config)?);
    let privacy = open_privacy(&config, &state).await?;
    let slot = Arc::new(ModelSlot::default());
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let (reflection_v1, reflection_v1alpha) = reflection_services(config.reflection)?;

    // Background tasks stop when `stop` fires, or when this future is dropped (its sender goes).
    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (writes_health, backend_health) = spawn_health(&state, &slot, &health, &draining, &stop_rx);
    let drift = drift::spawn(
        slot.clone(),
        state.clone(),
        &metrics,
        config.clock(),
        stop_rx.clone(),
    );
    let (ranking, refresh) = ranking::start(&config, &state, &slot, stop_rx.clone());
    let background = Background::spawn(
        &config,
        Loader::new(
            BundleStore::new(&config.models).with_verify_keys(config.verify_keys()),
            slot.clone(),
            state.clone(),
            health.clone(),
            metrics.clone(),
        ),
        state.clone(),
        metrics_listener.map(|l| (l, metrics.clone(), tls.clone())),
        stop_rx.clone(),
    );
    let privacy_refresh = spawn_privacy_refresh(&privacy, stop_rx.clone());
    let watchers = spawn_credential_watchers(&config, tls.clone(), auth.clone(), stop_rx.clone());
    let handlers = service::TieringService::new(Arc::new(context(
        &config,
        slot,
        state.clone(),
        sink.clone(),
        metrics.clone(),
        token_keys,
        ranking,
        privacy.clone(),
    )));
    let admission = admission_layer(&config, &metrics);
    let http = spawn_http(&config, &handlers, &tls, &auth, &admission, stop_rx.clone()).await?;
    let tiering = crate::pb::tiering_server::TieringServer::new(handlers)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    tracing::info!(%addr, models = %config.models.display(), "serving gRPC");
    let drain_health = health.clone();
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        draining.store(true, std::sync::atomic::Ordering::Release);
        tracing::info!("shutting down: draining in-flight requests");
        set_health(&drain_health, ServingStatus::NotServing).await;
        let _ = draining_tx.send(());
    };
    let incoming = connections::incoming(listener, conn_limits(&config), metrics.clone(), tls);
    let mut server = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams_per_connection)
        .http2_keepalive_interval(secs(config.http2_keepalive_interval_secs))
        .http2_keepalive_timeout(secs(config.http2_keepalive_timeout_secs));
    if let Some(age) = secs(config.max_connection_age_secs) {
        server = server
            .max_connection_age(age)
            .max_connection_age_grace(Duration::from_secs(config.max_connection_age_grace_secs));
    }
    let serve = server
        .layer(admission)
        .layer(auth::AuthLayer::new(auth))
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(tiering)
        .serve_with_incoming_shutdown(incoming, signal);
    let served = drain_within(
        serve,
        draining_rx,
        Duration::from_millis(config.shutdown_grace_ms),
    )
    .await;

    let _ = stop_tx.send(true);
    background.join().await;
    if let Some(http) = http {
        let _ = http.await;
    }
    for w in watchers {
        let _ = w.await;
    }
    let _ = writes_health.await;
    let _ = backend_health.await;
    let _ = drift.await;
    let _ = privacy_refresh.await;
    sink.close(Duration::from_millis(config.events_timeout_ms));
    let _ = refresh.await;
    final_snapshot(&state).await;
    served?;
    Ok(())
}

/// The admission of both listeners (one set of `max_concurrent_requests` slots).
fn admission_layer(
    config: &ValidServeConfig,
    metrics: &Arc<metrics::Metrics>,
) -> admission::AdmissionLayer {
    admission::AdmissionLayer::new(
        admission::AdmissionLimits {
            max_concurrent: config.max_concurrent_requests,
            body_timeout: Duration::from_millis(config.request_body_timeout_ms),
            max_message_bytes: config.max_message_bytes,
        },
        metrics.clone(),
    )
}

/// The HTTP/JSON API and console on `http_listen`, when set, until `stop` fires. It shares the
/// gRPC listener's handlers, TLS, authentication and admission slots.
async fn spawn_http(
    config: &ValidServeConfig,
    handlers: &service::TieringService,
    tls: &Option<Arc<tls::Tls>>,
    auth: &Option<Arc<auth::Auth>>,
    admission: &admission::AdmissionLayer,
    stop: watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, ServeError> {
    let Some(addr) = config.http_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::HttpListen { addr, source })?;
    let bound = listener.local_addr().map_err(ServeError::Listener)?;
    check_exposure(config, bound, tls.is_some(), auth.is_some())?;
    let api = Arc::new(http::Api {
        svc: handlers.clone(),
        auth: auth.clone(),
        codec: http::json::Codec::new().map_err(|e| ServeError::HttpApi(e.to_string()))?,
        walk_page: config.max_page_size,
    });
    let opts = http::HttpOptions {
        max_connections: conn_limits(config).max_connections,
        max_body_bytes: config.max_message_bytes,
        body_timeout: Duration::from_millis(config.request_body_timeout_ms),
        slots: admission.slots(),
        metrics: admission.metrics(),
        tls_handshake_timeout: Duration::from_millis(config.tls_handshake_timeout_ms),
        grace: Duration::from_millis(config.shutdown_grace_ms),
    };
    tracing::info!(addr = %bound, tls = tls.is_some(), "serving the HTTP/JSON API and the web console");
    Ok(Some(tokio::spawn(http::serve(
        listener,
        api,
        tls.clone(),
        opts,
        stop,
    ))))
}

/// The tasks that keep the writes' and the backend's health current until `stop` fires.
fn spawn_health(
    state: &Arc<StateBackend>,
    slot: &Arc<ModelSlot>,
    health: &HealthReporter,
    draining: &Arc<std::sync::atomic::AtomicBool>,
    stop: &watch::Receiver<bool>,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let writes = tokio::spawn(report_writes_health(
        state.clone(),
        health.clone(),
        stop.clone(),
    ));
    let backend = tokio::spawn(report_backend_health(
        state.clone(),
        slot.clone(),
        health.clone(),
        draining.clone(),
        stop.clone(),
    ));
    (writes, backend)
}

/// The state's last checkpoint at shutdown. A failed final snapshot (a full disk) loses nothing:
/// the log keeps every acknowledged event and the next start replays it. So it is logged, and
/// the exit stays clean.
async fn final_snapshot(state: &StateBackend) {
    match state.shutdown().await {
        Ok(()) => tracing::info!("final state snapshot written"),
        Err(e) => {
            tracing::error!(error = %e, "final state snapshot failed; nothing is lost: the event log keeps every acknowledged event and the next start replays it")
        }
    }
}

/// Health name that reports whether writes (RecordEvents) are accepted: NOT_SERVING while the
/// state refuses them (a full disk) or before the state is seeded; reads may still be served.
pub(crate) const WRITES_HEALTH_NAME: &str = "tiering.v1.Tiering.RecordEvents";

/// Keeps [`WRITES_HEALTH_NAME`] current until `stop` fires.
async fn report_writes_health(
    state: Arc<StateBackend>,
    health: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let ok = state.is_seeded() && !state.refusing_writes();
        if last != Some(ok) {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status(WRITES_HEALTH_NAME, status).await;
            last = Some(ok);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => break,
        }
    }
    health
        .set_service_status(WRITES_HEALTH_NAME, ServingStatus::NotServing)
        .await;
}

/// Keeps readiness following a shared backend's reachability until `stop` fires: NOT_SERVING
/// while it cannot be reached, SERVING again by itself once it answers (if a model is live and
/// the server is not draining). Nothing to do for the embedded state.
async fn report_backend_health(
    state: Arc<StateBackend>,
    slot: Arc<ModelSlot>,
    health: HealthReporter,
    draining: Arc<std::sync::atomic::AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    if matches!(*state, StateBackend::Embedded(_)) {
        return;
    }
    let mut last = true;
    loop {
        let up = state.is_reachable();
        if up != last {
            if !up {
                set_health(&health, ServingStatus::NotServing).await;
            } else if slot.version().is_some()
                && !draining.load(std::sync::atomic::Ordering::Acquire)
            {
                set_health(&health, ServingStatus::Serving).await;
            }
            last = up;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Runs `serve` to its end, but once `draining` fires (the shutdown began) gives it only
/// `grace` more: then it is dropped with whatever connections it still holds (a client that
/// never sends its request body, or never reads its response, cannot hold the shutdown).
async fn drain_within<E>(
    serve: impl Future<Output = Result<(), E>>,
    draining: tokio::sync::oneshot::Receiver<()>,
    grace: Duration,
) -> Result<(), E> {
    tokio::pin!(serve);
    let deadline = async {
        if draining.await.is_err() {
            // The sender went with the signal future: serve has finished or will.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = &mut serve => r,
        () = deadline => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown grace period over: dropping the connections still open");
            Ok(())
        }
    }
}

/// Opens the configured state backend (blocking work, on a blocking thread) and logs what
/// start-up found.
async fn open_state(
    config: &ValidServeConfig,
    metrics: Arc<metrics::Metrics>,
) -> Result<StateBackend, ServeError> {
    let state_dir = match config.state() {
        config::StateLocation::Dir(dir) => dir.clone(),
        config::StateLocation::Redis(target) => {
            let opts = state::redis::RedisOptions {
                target: target.clone(),
                models: config.models.clone(),
                reseed: config.reseed_state,
                timeout: Duration::from_millis(config.backend_timeout_ms),
                access: state::redis::RedisAccess {
                    ca_file: config.redis_ca_file.clone(),
                    user: config.redis_user.clone(),
                    password_file: config.redis_password_file.clone(),
                },
            };
            let state = state::redis::RedisState::open(opts, metrics.clone()).await?;
            tracing::info!(
                %target,
                seeded = state.is_seeded(),
                value_format = state::redis::FORMAT_VERSION,
                "Redis state connected"
            );
            return Ok(StateBackend::Redis(state));
        }
    };
    let opts = LogOptions {
        fsync: config.wal_fsync,
        snapshot_bytes: config.snapshot_wal_bytes,
    };
    let (dir, shards, m) = (state_dir.clone(), config.shards, metrics.clone());
    let key_file = config.state_key_file.clone();
    let (state, recovery) = tokio::task::spawn_blocking(move || {
        EmbeddedState::open_with_key_file(&dir, shards, opts, key_file.as_deref(), m)
    })
    .await
    .map_err(ServeError::OpenTask)??;
    tracing::info!(
        state_dir = %state_dir.display(),
        users = recovery.users,
        replayed_events = recovery.replayed_events,
        torn_tail = recovery.torn_tail(),
        unclean_stop = recovery.unclean_stop(),
        seeded_from = recovery.seeded_from.as_deref().unwrap_or("(not yet: the first model seeds it)"),
        "state loaded"
    );
    for segment in &recovery.segments {
        if segment.torn.is_some() {
            tracing::warn!("event log: {segment}");
        } else if segment.records > 0 {
            tracing::warn!("event log: {segment}: the previous run stopped without its final snapshot (a crash or a kill); a cut at a record boundary would look the same, so compare with what clients were acknowledged if in doubt");
        } else {
            tracing::info!("event log: {segment}");
        }
    }
    let state = StateBackend::Embedded(state);
    metrics.events_ingested(0, state.users());
    Ok(state)
}

/// The handlers' shared context, from the configuration.
#[allow(clippy::too_many_arguments)]
fn context(
    config: &ValidServeConfig,
    model: Arc<ModelSlot>,
    state: Arc<StateBackend>,
    sink: Arc<events::EventSink>,
    metrics: Arc<metrics::Metrics>,
    token_keys: Arc<page_token::TokenKeys>,
    ranking: Arc<ranking::RankingBackend>,
    privacy: Arc<privacy::Privacy>,
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
            earliest_event: config.earliest_event(),
        },
        clock: config.clock(),
        token_keys,
        at_risk_streams: Arc::new(tokio::sync::Semaphore::new(config.max_open_at_risk_streams)),
        model,
        state,
        sink,
        metrics,
        ranking,
        admin: Arc::new(admin::ModelAdmin::new(
            BundleStore::new(&config.models).with_verify_keys(config.verify_keys()),
            privacy.audit(),
        )),
        privacy,
        pseudonyms: pseudonym::Pseudonyms(config.pseudonym_key()),
    }
}

/// The audit log and the privacy lists. The privacy key: `privacy_key_file`, else
/// `TIERING_PRIVACY_KEY`, else (embedded state) one generated into the state directory; a
/// Redis state without a key serves, but refuses the rights calls (logged).
async fn open_privacy(
    config: &ValidServeConfig,
    state: &Arc<StateBackend>,
) -> Result<Arc<privacy::Privacy>, ServeError> {
    let dir = match config.state() {
        config::StateLocation::Dir(d) => Some(d.clone()),
        config::StateLocation::Redis(_) => None,
    };
    let env = std::env::var(privacy::lists::KEY_ENV).ok();
    let key = match privacy::lists::PrivacyKey::load(
        config.privacy_key_file.as_deref(),
        env,
        dir.as_deref(),
    ) {
        Ok((key, source)) => {
            tracing::info!(?source, "privacy key loaded");
            Some(key)
        }
        Err(privacy::lists::PrivacyError::NoKey) => {
            tracing::warn!("no privacy key (privacy_key_file, {}): EraseUser, ExportUser and SetProfilingObjection are refused", privacy::lists::KEY_ENV);
            None
        }
        Err(e) => return Err(ServeError::Privacy(e)),
    };
    let audit = Arc::new(
        audit::Audit::open(config.audit_log.as_deref(), key.clone()).map_err(
            |audit::AuditError::Open { path, source }| ServeError::AuditLog { path, source },
        )?,
    );
    let privacy = privacy::Privacy::open(key, dir, state.clone(), audit)
        .await
        .map_err(ServeError::Privacy)?;
    Ok(Arc::new(privacy))
}

/// Re-reads the shared privacy lists every second (Redis state; returns at once otherwise).
fn spawn_privacy_refresh(
    privacy: &Arc<privacy::Privacy>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let privacy = privacy.clone();
    tokio::spawn(async move {
        if !privacy.shared() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = privacy.refresh().await {
                tracing::warn!(error = %e, "re-reading the privacy lists failed");
            }
        }
    })
}

/// Where RecordEvents' events go (`events`): the local state, or the Kafka topic.
fn open_sink(config: &ValidServeConfig) -> Result<events::EventSink, ServeError> {
    let opts = events::SinkOptions {
        timeout: Duration::from_millis(config.events_timeout_ms),
        linger: Duration::from_millis(config.events_linger_ms),
    };
    let sink = events::EventSink::open(config.events(), opts).map_err(ServeError::Events)?;
    if let Some(t) = config.events() {
        tracing::info!(brokers = %t.brokers, topic = %t.topic, "RecordEvents produces to the event topic");
    }
    Ok(sink)
}

/// `Some(n seconds)`, or `None` for 0 (off).
fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

/// The listener's limits; the connection cap is derived from the descriptor limit and logged.
fn conn_limits(config: &ValidServeConfig) -> connections::ConnLimits {
    let nofile = connections::nofile_limit();
    let max_connections =
        connections::connection_cap(config.max_connections, nofile, config.fd_reserve);
    tracing::info!(
        max_connections,
        fd_limit = ?nofile,
        fd_reserve = config.fd_reserve,
        "connection cap"
    );
    connections::ConnLimits {
        max_connections,
        idle_timeout: secs(config.connection_idle_timeout_secs),
        tcp_keepalive: secs(config.tcp_keepalive_secs),
        tls_handshake_timeout: Duration::from_millis(config.tls_handshake_timeout_ms),
    }
}

/// Server reflection (v1 and v1alpha) when `enabled`.
#[allow(clippy::type_complexity)]
fn reflection_services(
    enabled: bool,
) -> Result<
    (
        Option<
            tonic_reflection::server::v1::ServerReflectionServer<
                impl tonic_reflection::server::v1::ServerReflection,
            >,
        >,
        Option<
            tonic_reflection::server::v1alpha::ServerReflectionServer<
                impl tonic_reflection::server::v1alpha::ServerReflection,
            >,
        >,
    ),
    ServeError,
> {
    if !enabled {
        return Ok((None, None));
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((
        Some(reflection().build_v1()?),
        Some(reflection().build_v1alpha()?),
    ))
}

/// TLS and authentication from the configuration, and the exposure check on `addr`.
#[allow(clippy::type_complexity)]
fn load_security(
    config: &ValidServeConfig,
    metrics: &Arc<metrics::Metrics>,
    addr: std::net::SocketAddr,
) -> Result<(Option<Arc<tls::Tls>>, Option<Arc<auth::Auth>>), ServeError> {
    let tls = load_tls(config, metrics)?;
    let auth = load_auth(config, metrics)?;
    check_exposure(config, addr, tls.is_some(), auth.is_some())?;
    Ok((tls, auth))
}

/// TLS from `tls_cert` / `tls_key` / `tls_client_ca`, when configured.
fn load_tls(
    config: &ValidServeConfig,
    metrics: &Arc<metrics::Metrics>,
) -> Result<Option<Arc<tls::Tls>>, ServeError> {
    let Some(files) = config.tls_files() else {
        return Ok(None);
    };
    let m = metrics.clone();
    let tls = tls::Tls::load(files, Arc::new(move |reason| m.refused(reason)))?;
    tracing::info!(
        cert = %tls.files().cert.display(),
        mutual = tls.files().client_ca.is_some(),
        "TLS on the gRPC and metrics listeners"
    );
    Ok(Some(Arc::new(tls)))
}

/// Authentication from `keys_file`, when configured.
fn load_auth(
    config: &ValidServeConfig,
    metrics: &Arc<metrics::Metrics>,
) -> Result<Option<Arc<auth::Auth>>, ServeError> {
    let Some(path) = &config.keys_file else {
        return Ok(None);
    };
    let keys = auth::keys::Keys::load(path)?;
    let (k, i) = keys.counts();
    tracing::info!(path = %path.display(), keys = k, identities = i, "authentication on");
    let settings = auth::AuthSettings {
        reflection: config.reflection,
        quota_rate: config.quota_rate,
        quota_burst: config.quota_burst,
    };
    Ok(Some(Arc::new(auth::Auth::new(
        keys,
        settings,
        metrics.clone(),
    ))))
}

/// Beyond loopback without TLS or without authentication: refused unless `insecure`, and
/// logged loudly either way.
fn check_exposure(
    config: &ValidServeConfig,
    addr: std::net::SocketAddr,
    tls: bool,
    auth: bool,
) -> Result<(), ServeError> {
    let missing: Vec<&str> = [(!tls).then_some("TLS"), (!auth).then_some("authentication")]
        .into_iter()
        .flatten()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let missing = missing.join(" and ");
    if addr.ip().is_loopback() {
        tracing::info!(%addr, "listening on loopback without {missing}");
        return Ok(());
    }
    if !config.insecure {
        tracing::error!(%addr, "refusing to listen beyond loopback without {missing} (set insecure to accept the risk)");
        return Err(ServeError::Insecure { addr, missing });
    }
    tracing::warn!(%addr, "INSECURE: listening beyond loopback without {missing}; anyone who can reach this port can read and change every user's data");
    Ok(())
}

/// Reloads the TLS files and the keys file when they change or on SIGHUP.
fn spawn_credential_watchers(
    config: &ValidServeConfig,
    tls: Option<Arc<tls::Tls>>,
    auth: Option<Arc<auth::Auth>>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let every = Duration::from_secs(config.tls_reload_secs);
    let mut tasks = Vec::new();
    if let Some(tls) = tls {
        let paths = tls.files().paths();
        tasks.push(auth::reload::spawn_watcher(
            paths,
            every,
            stop.clone(),
            move || tls.reload(),
        ));
    }
    if let (Some(auth), Some(path)) = (auth, config.keys_file.clone()) {
        let p = path.clone();
        tasks.push(auth::reload::spawn_watcher(
            vec![path],
            every,
            stop,
            move || auth.reload(&p),
        ));
    }
    tasks
}

/// The page-token keys: `page_token_key_file`, else `TIERING_PAGE_TOKEN_KEYS`, else random.
fn load_token_keys(config: &ValidServeConfig) -> Result<page_token::TokenKeys, ServeError> {
    let env = std::env::var(page_token::KEYS_ENV).ok();
    let (keys, source) = page_token::TokenKeys::load(config.page_token_key_file.as_deref(), env)?;
    match source {
        page_token::KeySource::Random => tracing::warn!(
            "no page-token keys (page_token_key_file, {}): page tokens are valid on this process only",
            page_token::KEYS_ENV
        ),
        source => tracing::info!(?source, signing_key = keys.signing_id(), "page-token keys loaded"),
    }
    Ok(keys)
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
        metrics: Option<(TcpListener, Arc<metrics::Metrics>, Option<Arc<tls::Tls>>)>,
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
        let metrics = metrics.map(|(l, m, tls)| {
            let mut stop = stop_rx.clone();
            tokio::spawn(metrics::serve(l, m, tls, async move {
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
