//! Admission: request ids, deadlines, request bodies and bounded concurrency, as one tower layer
//! in front of every service.
//!
//! - Every request gets an id ([`RequestId`]): the caller's `x-request-id` metadata when it is
//!   1 to 128 visible ASCII characters, else one made here. Every log line of the request is in
//!   a `request` span carrying it, every answer carries it back as `x-request-id` metadata, and
//!   every error answer also as a `google.rpc.RequestInfo` in its status details.
//! - A `tiering.v1.Tiering` request's body is read in full *before* it may take a concurrency
//!   slot, within `request_body_timeout` (DEADLINE_EXCEEDED after it) and `max_message_bytes`
//!   (RESOURCE_EXHAUSTED above it): a client that sends headers and no body holds no slot and
//!   is dropped after the timeout, so it cannot starve the others.
//! - The request's connection counts as busy until its response body ends (see
//!   [`super::connections`]: idle connections are closed).
//! - A request tonic cannot decode (bad protobuf) is answered INVALID_ARGUMENT instead of
//!   tonic's INTERNAL, logged, and counted in `tiering_decode_failures_total`.
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

use super::connections::ConnInfo;
use super::metrics::{Metrics, Rpc};
use crate::pb::rpc_status;
use http_body_util::BodyExt;
use hyper::body::Bytes;
use prost::Message;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::codegen::http;
use tracing::Instrument;

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

/// Longest caller-given request id kept; longer or non-printable ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The id of one request, for logs and error details (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestId(pub Arc<str>);

impl RequestId {
    /// The caller's `x-request-id` if usable, else a new random one.
    pub fn of<B>(req: &http::Request<B>) -> RequestId {
        let given = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                (1..=MAX_REQUEST_ID).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic())
            });
        match given {
            Some(id) => RequestId(Arc::from(id)),
            None => RequestId(Arc::from(format!("{:016x}", rand::random::<u64>()))),
        }
    }
}

/// Admission settings, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdmissionLimits {
    /// Requests processed at once across all connections.
    pub max_concurrent: usize,
    /// Longest wait for a request's body once its headers arrived.
    pub body_timeout: Duration,
    /// Largest request message (the gRPC frame header comes on top).
    pub max_message_bytes: usize,
}

#[derive(Clone)]
pub(crate) struct AdmissionLayer {
    slots: Arc<Semaphore>,
    limits: AdmissionLimits,
    metrics: Arc<Metrics>,
}

impl AdmissionLayer {
    pub fn new(limits: AdmissionLimits, metrics: Arc<Metrics>) -> Self {
        AdmissionLayer {
            slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            limits,
            metrics,
        }
    }

    /// The `max_concurrent_requests` slots: the HTTP listener's requests take the same ones
    /// ([`super::http`]), so the cap is the server's, whichever protocol asks.
    pub fn slots(&self) -> Arc<Semaphore> {
        self.slots.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            slots: self.slots.clone(),
            limits: self.limits,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    slots: Arc<Semaphore>,
    limits: AdmissionLimits,
    metrics: Arc<Metrics>,
}

/// The gRPC status of a trailers-only answer (what every unary error and every refusal is).
fn status_of<B>(resp: &http::Response<B>) -> Option<(i32, String)> {
    let h = resp.headers();
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    Some((code, message))
}

/// Rewrites tonic's codes where gRPC's conventions differ, and counts decode failures:
/// - an oversized message: tonic says OUT_OF_RANGE, clients expect RESOURCE_EXHAUSTED;
/// - a message that is not valid protobuf: tonic says INTERNAL, but the fault is the caller's
///   (INVALID_ARGUMENT, as the status-code guide allows for a malformed request).
fn rewrite_status<B>(resp: &mut http::Response<B>, rpc: Rpc, metrics: &Metrics, started: Instant) {
    let Some((code, message)) = status_of(resp) else {
        return;
    };
    let new = if code == 11 && message.contains("message length too large") {
        tonic::Code::ResourceExhausted
    } else if code == 13 && message.starts_with("failed to decode Protobuf message") {
        metrics.decode_failure(rpc);
        tracing::warn!(error = %message, "undecodable request answered INVALID_ARGUMENT");
        tonic::Code::InvalidArgument
    } else {
        return;
    };
    let value = http::HeaderValue::from(new as i32);
    resp.headers_mut().insert("grpc-status", value);
    metrics.observe(rpc, started.elapsed(), Some(new));
}

/// Every answer names its request id; an error's details carry it as a RequestInfo.
///
/// The id is marked sensitive, which HTTP/2 encodes as a never-indexed literal: a value unique
/// to each answer would otherwise be inserted into the connection's HPACK table on every
/// answer, and each insertion first compares the new value with every id already held (the
/// table fills with ids alone). That was about 8% of the server's CPU under a GetUserTier load.
fn tag_with_id<B>(resp: &mut http::Response<B>, id: &RequestId) {
    if let Ok(mut v) = http::HeaderValue::from_str(&id.0) {
        v.set_sensitive(true);
        resp.headers_mut().insert("x-request-id", v);
    }
    let Some((code, message)) = status_of(resp) else {
        return;
    };
    if code == 0 || resp.headers().contains_key("grpc-status-details-bin") {
        return;
    }
    let info = rpc_status::RequestInfo {
        request_id: id.0.to_string(),
        serving_data: String::new(),
    };
    let status = rpc_status::Status {
        code,
        message,
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.RequestInfo".into(),
            value: info.encode_to_vec(),
        }],
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec());
    if let Ok(v) = http::HeaderValue::from_str(&b64) {
        resp.headers_mut().insert("grpc-status-details-bin", v);
    }
}

fn refused<B: Default>(
    metrics: &Metrics,
    rpc: Option<Rpc>,
    started: Instant,
    status: tonic::Status,
) -> http::Response<B> {
    if let Some(rpc) = rpc {
        metrics.observe(rpc, started.elapsed(), Some(status.code()));
    }
    status.into_http()
}

fn exceeded<B: Default>(
    metrics: &Metrics,
    rpc: Option<Rpc>,
    started: Instant,
) -> http::Response<B> {
    let status = tonic::Status::deadline_exceeded(
        "the request's deadline passed before it could be answered",
    );
    refused(metrics, rpc, started, status)
}

/// Why a request body was not read.
pub(crate) enum BodyRefused {
    TimedOut,
    TooLarge,
    Broken(String),
}

/// Reads the whole body, at most `limit` bytes, within `timeout` (a gRPC or an HTTP body).
pub(crate) async fn read_body<B>(
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyRefused>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(BodyRefused::TimedOut),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyRefused::TooLarge),
        Ok(Err(e)) => Err(BodyRefused::Broken(e.to_string())),
    }
}

impl<S> Admission<S> {
    /// Reads the body, then waits for a slot, then runs the request; all under `deadline`'s
    /// caller (see `call`).
    async fn admit<ResBody>(
        inner: &mut S,
        slots: Arc<Semaphore>,
        limits: AdmissionLimits,
        metrics: &Metrics,
        rpc: Rpc,
        req: http::Request<tonic::body::Body>,
        started: Instant,
    ) -> Result<http::Response<ResBody>, S::Error>
    where
        S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
        ResBody: Default,
    {
        let (parts, body) = req.into_parts();
        // The gRPC frame header (5 bytes) comes on top of the message.
        let limit = limits.max_message_bytes.saturating_add(5);
        let bytes = match read_body(body, limit, limits.body_timeout).await {
            Ok(b) => b,
            Err(why) => {
                let status = match why {
                    BodyRefused::TimedOut => {
                        metrics.refused("body_timeout");
                        tracing::warn!(timeout = ?limits.body_timeout, "request body did not arrive in time");
                        tonic::Status::deadline_exceeded(format!(
                            "the request body did not arrive within {} ms",
                            limits.body_timeout.as_millis()
                        ))
                    }
                    BodyRefused::TooLarge => {
                        metrics.refused("too_large");
                        tonic::Status::resource_exhausted(format!(
                            "message length too large: the limit is {} bytes",
                            limits.max_message_bytes
                        ))
                    }
                    BodyRefused::Broken(e) => tonic::Status::cancelled(format!(
                        "the request body was not received: {}",
                        super::error::capped(&e)
                    )),
                };
                return Ok(refused(metrics, Some(rpc), started, status));
            }
        };
        let req = http::Request::from_parts(
            parts,
            tonic::body::Body::new(http_body_util::Full::new(bytes)),
        );
        // The semaphore is never closed.
        let _slot = slots.acquire_owned().await.ok();
        let mut resp = inner.call(req).await?;
        rewrite_status(&mut resp, rpc, metrics, started);
        Ok(resp)
    }
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Admission<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let started = Instant::now();
        // The connection is busy (not idle) until the response body is done.
        let busy = req.extensions().get::<ConnInfo>().map(ConnInfo::busy);
        let id = RequestId::of(&req);
        let rpc = Rpc::from_path(req.uri().path());
        let span = tracing::info_span!("request", id = %id.0, path = %req.uri().path());
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let deadline = timeout.map(|t| started + t.saturating_sub(MARGIN));
        req.extensions_mut().insert(RequestDeadline(deadline));
        req.extensions_mut().insert(id.clone());
        let metrics = self.metrics.clone();
        if timeout.is_some_and(|t| t <= MARGIN) {
            return Box::pin(async move {
                let mut resp = exceeded(&metrics, rpc, started);
                tag_with_id(&mut resp, &id);
                Ok(resp)
            });
        }
        // The instance that was polled ready serves this call; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (slots, limits) = (self.slots.clone(), self.limits);
        let fut = async move {
            let work = async {
                match rpc {
                    // Only our RPCs are buffered and take a slot: health checks and reflection
                    // (a bidirectional stream) must answer even when the server is saturated.
                    Some(rpc) => {
                        Self::admit(&mut inner, slots, limits, &metrics, rpc, req, started).await
                    }
                    None => inner.call(req).await,
                }
            };
            let mut resp = match deadline {
                None => work.await?,
                Some(d) => tokio::select! {
                    biased;
                    r = work => r?,
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(d)) => exceeded(&metrics, rpc, started),
                },
            };
            tag_with_id(&mut resp, &id);
            Ok(resp.map(|body| {
                tonic::body::Body::new(body.map_frame(move |f| {
                    let _ = &busy;
                    f
                }))
            }))
        };
        Box::pin(fut.instrument(span))
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

    #[test]
    fn the_request_id_is_answered_as_a_header_hpack_never_indexes() {
        let mut resp = http::Response::new(());
        tag_with_id(&mut resp, &RequestId(Arc::from("4174d2f49610a471")));
        let v = &resp.headers()["x-request-id"];
        assert_eq!(v, "4174d2f49610a471");
        assert!(
            v.is_sensitive(),
            "a per-answer value must not enter the HPACK table"
        );
    }
}
