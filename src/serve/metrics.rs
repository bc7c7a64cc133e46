//! Prometheus metrics, and the minimal HTTP endpoint (`GET /metrics`) that exposes them.
//!
//! Each server has its own registry (several servers can live in one process, as in tests).

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The service's RPCs, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    GetUserTier,
    BatchGetUserTiers,
    ScoreUser,
    RecordEvents,
    ListAtRiskUsers,
    GetModelInfo,
}

impl Rpc {
    pub const ALL: [Rpc; 6] = [
        Rpc::GetUserTier,
        Rpc::BatchGetUserTiers,
        Rpc::ScoreUser,
        Rpc::RecordEvents,
        Rpc::ListAtRiskUsers,
        Rpc::GetModelInfo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::GetUserTier => "GetUserTier",
            Rpc::BatchGetUserTiers => "BatchGetUserTiers",
            Rpc::ScoreUser => "ScoreUser",
            Rpc::RecordEvents => "RecordEvents",
            Rpc::ListAtRiskUsers => "ListAtRiskUsers",
            Rpc::GetModelInfo => "GetModelInfo",
        }
    }

    /// The RPC of a request path (`/tiering.v1.Tiering/GetUserTier`).
    pub fn from_path(path: &str) -> Option<Rpc> {
        let method = path.strip_prefix("/tiering.v1.Tiering/")?;
        Rpc::ALL.into_iter().find(|r| r.name() == method)
    }
}

struct RpcHandles {
    requests: IntCounter,
    latency: Histogram,
}

pub struct Metrics {
    registry: Registry,
    rpcs: Vec<RpcHandles>,
    errors: IntCounterVec,
    model_info: IntGaugeVec,
    /// 1 while a fallback serves because the wanted (CURRENT) bundle failed to load at start.
    model_fallback: IntGaugeVec,
    model_reloads: IntCounterVec,
    users_held: IntGauge,
    events_ingested: IntCounter,
    wal_commits: IntCounter,
    wal_group: Histogram,
    wal_sync_seconds: Histogram,
    decode_failures: IntCounterVec,
    refused: IntCounterVec,
    at_risk_streams: IntGauge,
    connections: IntGauge,
    backend_seconds: HistogramVec,
    backend_errors: IntCounterVec,
    backend_up: IntGauge,
}

/// Creating a metric and registering it are one step: a metric cannot be forgotten in the registry.
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<C, prometheus::Error>,
) -> Result<C, prometheus::Error> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    registered(r, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, prometheus::Error> {
    registered(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())),
    )
}

/// Latency buckets of a request, 50 µs to 5 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// The shared state backend's (Redis) metrics: call latency by operation, failures by kind,
/// and whether its health probe answers.
fn backend_metrics(
    r: &Registry,
) -> Result<(HistogramVec, IntCounterVec, IntGauge), prometheus::Error> {
    Ok((
        registered(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "tiering_state_backend_seconds",
                    "Shared state backend (Redis) call latency, by operation",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["op"],
            ),
        )?,
        counter_vec(
            r,
            "tiering_state_backend_errors_total",
            "Shared state backend (Redis) call failures, by kind (unavailable, timeout, reply, contention, cas_retry)",
            &["kind"],
        )?,
        registered(
            r,
            IntGauge::new(
                "tiering_state_backend_up",
                "1 while the shared state backend (Redis) answers its health probe",
            ),
        )?,
    ))
}

impl Metrics {
    /// The registry, for gauges defined elsewhere (the drift gauges).
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let requests = counter_vec(
            r,
            "tiering_requests_total",
            "gRPC requests, by RPC",
            &["rpc"],
        )?;
        let latency = registered(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "tiering_request_duration_seconds",
                    "gRPC request latency, by RPC",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["rpc"],
            ),
        )?;
        let rpcs = Rpc::ALL
            .iter()
            .map(|rpc| RpcHandles {
                requests: requests.with_label_values(&[rpc.name()]),
                latency: latency.with_label_values(&[rpc.name()]),
            })
            .collect();
        let (backend_seconds, backend_errors, backend_up) = backend_metrics(r)?;
        Ok(Metrics {
            rpcs,
            errors: counter_vec(
                r,
                "tiering_request_errors_total",
                "gRPC errors, by RPC and status code",
                &["rpc", "code"],
            )?,
            model_info: gauge_vec(
                r,
                "tiering_model_info",
                "1 for the live model version",
                &["version"],
            )?,
            model_fallback: gauge_vec(
                r,
                "tiering_model_fallback",
                "1 while an earlier version serves because the CURRENT one failed to load at start",
                &["wanted", "serving"],
            )?,
            model_reloads: counter_vec(
                r,
                "tiering_model_reloads_total",
                "Model loads, by outcome (loaded, refused)",
                &["outcome"],
            )?,
            users_held: registered(
                r,
                IntGauge::new("tiering_users_held", "Users in the live state"),
            )?,
            events_ingested: registered(
                r,
                IntCounter::new(
                    "tiering_events_ingested_total",
                    "Events made durable and applied",
                ),
            )?,
            wal_commits: registered(
                r,
                IntCounter::new(
                    "tiering_wal_commits_total",
                    "Group commits (one fsync each)",
                ),
            )?,
            wal_group: histogram(
                r,
                "tiering_wal_group_requests",
                "RecordEvents requests per group commit",
                &[
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
                ],
            )?,
            wal_sync_seconds: histogram(
                r,
                "tiering_wal_commit_seconds",
                "Write + fsync time of a group commit",
                &[
                    0.000_1, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
                ],
            )?,
            decode_failures: counter_vec(
                r,
                "tiering_decode_failures_total",
                "Requests whose message is not valid protobuf (answered INVALID_ARGUMENT), by RPC",
                &["rpc"],
            )?,
            refused: counter_vec(
                r,
                "tiering_refused_total",
                "Requests or connections refused by a protection limit, by reason",
                &["reason"],
            )?,
            at_risk_streams: registered(
                r,
                IntGauge::new(
                    "tiering_at_risk_streams_open",
                    "ListAtRiskUsers answers still being streamed",
                ),
            )?,
            connections: registered(
                r,
                IntGauge::new("tiering_connections_open", "Open gRPC connections"),
            )?,
            backend_seconds,
            backend_errors,
            backend_up,
            registry,
        })
    }

    /// One finished request; `code` is `None` on success.
    pub(crate) fn observe(&self, rpc: Rpc, elapsed: Duration, code: Option<tonic::Code>) {
        if let Some(h) = self.rpcs.get(rpc as usize) {
            h.requests.inc();
            h.latency.observe(elapsed.as_secs_f64());
        }
        if let Some(code) = code {
            self.errors
                .with_label_values(&[rpc.name(), &format!("{code:?}")])
                .inc();
        }
    }

    pub(crate) fn model_loaded(&self, version: &str) {
        self.model_info.reset();
        self.model_info.with_label_values(&[version]).set(1);
        self.model_reloads.with_label_values(&["loaded"]).inc();
    }

    /// `Some((wanted, serving))` while a fallback serves; `None` once CURRENT itself is live.
    pub(crate) fn model_fallback(&self, fallback: Option<(&str, &str)>) {
        self.model_fallback.reset();
        if let Some((wanted, serving)) = fallback {
            self.model_fallback
                .with_label_values(&[wanted, serving])
                .set(1);
        }
    }

    pub(crate) fn model_refused(&self) {
        self.model_reloads.with_label_values(&["refused"]).inc();
    }

    pub(crate) fn events_ingested(&self, n: u64, users: usize) {
        self.events_ingested.inc_by(n);
        self.users_held.set(users as i64);
    }

    pub(crate) fn wal_commit(&self, requests: usize, elapsed: Duration) {
        self.wal_commits.inc();
        self.wal_group.observe(requests as f64);
        self.wal_sync_seconds.observe(elapsed.as_secs_f64());
    }

    /// A request tonic could not decode.
    pub(crate) fn decode_failure(&self, rpc: Rpc) {
        self.decode_failures.with_label_values(&[rpc.name()]).inc();
    }

    /// A request or connection refused by a limit (`body_timeout`, `too_large`,
    /// `at_risk_streams`, `connections`, `accept_error`).
    pub fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    /// Open ListAtRiskUsers streams go up (`+1`) or down (`-1`).
    pub(crate) fn at_risk_streams(&self, delta: i64) {
        self.at_risk_streams.add(delta);
    }

    /// Open connections go up (`+1`) or down (`-1`).
    pub fn connections(&self, delta: i64) {
        self.connections.add(delta);
    }

    /// One shared-backend call (`op`: get, get_many, apply, scan, seed, checkpoint, ping).
    pub(crate) fn backend_call(&self, op: &str, elapsed: Duration) {
        self.backend_seconds
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }

    /// A shared-backend failure or retry, by kind.
    pub(crate) fn backend_error(&self, kind: &str) {
        self.backend_errors.with_label_values(&[kind]).inc();
    }

    /// The shared backend's health probe result.
    pub(crate) fn backend_up(&self, up: bool) {
        self.backend_up.set(i64::from(up));
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        buf
    }
}

/// Serves `GET /metrics` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    tls: Option<Arc<super::tls::Tls>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_text(listener, Arc::new(move || metrics.render()), tls, shutdown).await
}

/// What a metrics endpoint answers: the text exposition of some registry (the server's
/// [`Metrics`], the aggregator's own).
pub type Render = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// Serves `GET /metrics` with what `render` gives (over TLS when `tls` is given), until
/// `shutdown` resolves.
pub async fn serve_text(
    listener: TcpListener,
    render: Render,
    tls: Option<Arc<super::tls::Tls>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move {
                        let resp = if req.method() == hyper::Method::GET
                            && req.uri().path() == "/metrics"
                        {
                            hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(render())))
                        } else {
                            hyper::Response::builder().status(404).body(Full::new(
                                Bytes::from_static(b"not found: try GET /metrics\n"),
                            ))
                        };
                        Ok::<_, Infallible>(
                            resp.unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new()))),
                        )
                    }
                });
            let served = match tls {
                None => {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await
                }
                Some(tls) => {
                    let handshake = tls.http_acceptor().accept(stream);
                    let stream =
                        match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return tls.handshake_failed(&e),
                            Err(_) => return tls.handshake_failed(&"timed out"),
                        };
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}
