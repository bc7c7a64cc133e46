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
    model_reloads: IntCounterVec,
    users_held: IntGauge,
    events_ingested: IntCounter,
    wal_commits: IntCounter,
    wal_group: Histogram,
    wal_sync_seconds: Histogram,
}

impl Metrics {
    /// The registry, for gauges defined elsewhere (the drift gauges).
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);
        let requests = IntCounterVec::new(
            Opts::new("tiering_requests_total", "gRPC requests, by RPC"),
            &["rpc"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tiering_request_duration_seconds",
                "gRPC request latency, by RPC",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["rpc"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "tiering_request_errors_total",
                "gRPC errors, by RPC and status code",
            ),
            &["rpc", "code"],
        )?;
        let model_info = IntGaugeVec::new(
            Opts::new("tiering_model_info", "1 for the live model version"),
            &["version"],
        )?;
        let model_reloads = IntCounterVec::new(
            Opts::new(
                "tiering_model_reloads_total",
                "Model loads, by outcome (loaded, refused)",
            ),
            &["outcome"],
        )?;
        let users_held = IntGauge::new("tiering_users_held", "Users in the live state")?;
        let events_ingested = IntCounter::new(
            "tiering_events_ingested_total",
            "Events made durable and applied",
        )?;
        let wal_commits = IntCounter::new(
            "tiering_wal_commits_total",
            "Group commits (one fsync each)",
        )?;
        let wal_group = Histogram::with_opts(
            HistogramOpts::new(
                "tiering_wal_group_requests",
                "RecordEvents requests per group commit",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
            ]),
        )?;
        let wal_sync_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tiering_wal_commit_seconds",
                "Write + fsync time of a group commit",
            )
            .buckets(vec![
                0.000_1, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
            ]),
        )?;
        reg(Box::new(requests.clone()))?;
        reg(Box::new(latency.clone()))?;
        reg(Box::new(errors.clone()))?;
        reg(Box::new(model_info.clone()))?;
        reg(Box::new(model_reloads.clone()))?;
        reg(Box::new(users_held.clone()))?;
        reg(Box::new(events_ingested.clone()))?;
        reg(Box::new(wal_commits.clone()))?;
        reg(Box::new(wal_group.clone()))?;
        reg(Box::new(wal_sync_seconds.clone()))?;
        let rpcs = Rpc::ALL
            .iter()
            .map(|r| RpcHandles {
                requests: requests.with_label_values(&[r.name()]),
                latency: latency.with_label_values(&[r.name()]),
            })
            .collect();
        Ok(Metrics {
            registry,
            rpcs,
            errors,
            model_info,
            model_reloads,
            users_held,
            events_ingested,
            wal_commits,
            wal_group,
            wal_sync_seconds,
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
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let resp = if req.method() == hyper::Method::GET
                            && req.uri().path() == "/metrics"
                        {
                            hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(metrics.render())))
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
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}
