//! Admission: deadlines and bounded concurrency, as one tower layer in front of every service.
//!
//! - The caller's `grpc-timeout` becomes a deadline stored in the request's extensions
//!   ([`RequestDeadline`]), which handlers check before doing work that cannot be taken back.
//! - A request whose deadline has already passed is answered DEADLINE_EXCEEDED and never reaches
//!   a handler; one whose deadline passes while it waits or runs is answered DEADLINE_EXCEEDED too.
//! - At most `max_concurrent_requests` `tiering.v1.Tiering` requests run at once across all
//!   connections; the others wait for a slot *under their deadline*, so an overloaded server
//!   sheds late work instead of doing it for nobody. Health checks and reflection never wait.
//!
//! Our deadline fires a little before tonic's own `grpc-timeout` timer (which would answer
//! CANCELLED), so callers see the standard DEADLINE_EXCEEDED.

use super::metrics::{Metrics, Rpc};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::codegen::http;

/// How much earlier than the caller's deadline we give up (see the module docs).
const MARGIN: Duration = Duration::from_micros(250);

/// The instant after which a request's answer is useless to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestDeadline(pub Option<Instant>);

impl RequestDeadline {
    pub(crate) fn passed(&self) -> bool {
        self.0.is_some_and(|d| Instant::now() >= d)
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n). Malformed values are ignored,
/// as tonic does.
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[derive(Clone)]
pub(crate) struct AdmissionLayer {
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl AdmissionLayer {
    pub fn new(max_concurrent: usize, metrics: Arc<Metrics>) -> Self {
        AdmissionLayer {
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            slots: self.slots.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// tonic answers an oversized request with OUT_OF_RANGE; gRPC's convention for "message larger
/// than the server accepts" is RESOURCE_EXHAUSTED, which is what clients retry logic expects.
fn oversized_to_resource_exhausted<B>(resp: &mut http::Response<B>) -> bool {
    let h = resp.headers_mut();
    let oversized = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11")
        && h.get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if oversized {
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    oversized
}

fn exceeded<B: Default>(metrics: &Metrics, path: &str, started: Instant) -> http::Response<B> {
    if let Some(rpc) = Rpc::from_path(path) {
        metrics.observe(rpc, started.elapsed(), Some(tonic::Code::DeadlineExceeded));
    }
    tonic::Status::deadline_exceeded("the request's deadline passed before it could be answered")
        .into_http()
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Admission<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let deadline = timeout.map(|t| started + t.saturating_sub(MARGIN));
        req.extensions_mut().insert(RequestDeadline(deadline));
        let path = req.uri().path().to_string();
        let metrics = self.metrics.clone();
        if timeout.is_some_and(|t| t <= MARGIN) {
            return Box::pin(async move { Ok(exceeded(&metrics, &path, started)) });
        }
        // The instance that was polled ready serves this call; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let slots = self.slots.clone();
        Box::pin(async move {
            let (work_path, work_metrics) = (path.clone(), metrics.clone());
            let work = async move {
                // Only our RPCs take a slot: health checks and reflection must answer even
                // when the server is saturated. (The semaphore is never closed.)
                let _slot = match Rpc::from_path(&work_path) {
                    Some(_) => slots.acquire_owned().await.ok(),
                    None => None,
                };
                let mut resp = inner.call(req).await?;
                if oversized_to_resource_exhausted(&mut resp) {
                    if let Some(rpc) = Rpc::from_path(&work_path) {
                        work_metrics.observe(
                            rpc,
                            started.elapsed(),
                            Some(tonic::Code::ResourceExhausted),
                        );
                    }
                }
                Ok(resp)
            };
            match deadline {
                None => work.await,
                Some(d) => tokio::select! {
                    biased;
                    r = work => r,
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(d)) => Ok(exceeded(&metrics, &path, started)),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("1n"), Some(Duration::from_nanos(1)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
    }
}
