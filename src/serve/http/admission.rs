//! Admission on the HTTP listener: the rules of the gRPC listener's
//! [`crate::serve::admission`], with HTTP's statuses, in front of every `/v1` route.
//!
//! - A request's body is read in full *before* it may take a slot (the same
//!   [`read_body`] as gRPC), within `request_body_timeout_ms` and `max_message_bytes`:
//!   - late: **408 Request Timeout**, code DEADLINE_EXCEEDED (the client was slow, not the
//!     server: a client that sends headers and no body holds no slot and is dropped after the
//!     timeout);
//!   - too large: **413 Content Too Large**, code RESOURCE_EXHAUSTED (a `Content-Length` over
//!     the limit is refused before a byte of the body is read).
//! - Then it takes one of the `max_concurrent_requests` slots: the *same* semaphore the gRPC
//!   requests take ([`crate::serve::admission::AdmissionLayer::slots`]). None free: **429 Too Many
//!   Requests**, code RESOURCE_EXHAUSTED, `Retry-After: 1`, at once (an HTTP caller has no
//!   deadline to queue under unless it sends one, so it is told to come back instead of piling
//!   up). The slot is held until the answer's head is ready (a CSV download's later pages are
//!   bounded by `max_open_at_risk_streams`, as gRPC's stream is).
//! - A `grpc-timeout` header (gRPC's syntax, e.g. `250m`) sets the request's deadline: the
//!   handlers see it as they see a gRPC caller's ([`RequestDeadline`]), and once it passes the
//!   answer is **504 Gateway Timeout**, code DEADLINE_EXCEEDED.
//!
//! Every request gets an id as gRPC's do ([`RequestId::of`]: the caller's `x-request-id` when
//! usable, else a new one): the handlers see it as metadata, its log lines carry it in their
//! `request` span, and the answer names it in `x-request-id`.
//!
//! Headers themselves must arrive within `request_body_timeout_ms` too (hyper's header read
//! timeout, set in [`super::connection`]).

use super::error_response;
use crate::serve::admission::{
    parse_grpc_timeout, read_body, BodyRefused, RequestDeadline, RequestId,
};
use crate::serve::metrics::Metrics;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::Status;
use tracing::Instrument;

/// The limits of [`admit`].
pub(crate) struct Admit {
    /// Shared with the gRPC listener.
    pub slots: Arc<Semaphore>,
    pub body_timeout: Duration,
    pub max_body: usize,
    pub metrics: Arc<Metrics>,
}

/// An error answer with an HTTP status of its own (the code's default status is not the one).
fn refusal(status: Status, http: StatusCode) -> Response {
    let mut r = error_response(&status);
    *r.status_mut() = http;
    r
}

fn too_large(a: &Admit) -> Response {
    a.metrics.refused("too_large");
    refusal(
        Status::resource_exhausted(format!(
            "the request body is over {} bytes (max_message_bytes)",
            a.max_body
        )),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
}

fn deadline_passed() -> Response {
    error_response(&Status::deadline_exceeded(
        "the request's deadline passed before it could be answered",
    ))
}

/// The middleware (see the module docs).
pub(crate) async fn admit(State(a): State<Arc<Admit>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = RequestId::of(&req);
    let id_header = HeaderValue::from_str(&id.0).ok();
    if let Some(v) = &id_header {
        req.headers_mut().insert("x-request-id", v.clone());
    }
    let span = tracing::info_span!("request", id = %id.0, path = %req.uri().path());
    let deadline = req
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map(|t| started + t);
    let work = admitted(&a, deadline, req, next);
    let mut r = match deadline {
        None => work.instrument(span).await,
        Some(d) => tokio::time::timeout_at(d.into(), work.instrument(span))
            .await
            .unwrap_or_else(|_| deadline_passed()),
    };
    if let Some(v) = id_header {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

/// Body, then slot, then the route.
async fn admitted(a: &Admit, deadline: Option<Instant>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > a.max_body as u64) {
        return too_large(a);
    }
    let bytes = match read_body(body, a.max_body, a.body_timeout).await {
        Ok(b) => b,
        Err(BodyRefused::TooLarge) => return too_large(a),
        Err(BodyRefused::TimedOut) => {
            a.metrics.refused("body_timeout");
            tracing::warn!(timeout = ?a.body_timeout, "HTTP request body did not arrive in time");
            let status = Status::deadline_exceeded(format!(
                "the request body did not arrive within {} ms",
                a.body_timeout.as_millis()
            ));
            return refusal(status, StatusCode::REQUEST_TIMEOUT);
        }
        Err(BodyRefused::Broken(e)) => {
            return error_response(&Status::cancelled(format!(
                "the request body was not received: {}",
                crate::serve::error::capped(&e)
            )))
        }
    };
    let Ok(_slot) = a.slots.clone().try_acquire_owned() else {
        a.metrics.refused("http_busy");
        let mut r = error_response(&Status::resource_exhausted(
            "the server is at max_concurrent_requests; retry later",
        ));
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    parts.extensions.insert(RequestDeadline(deadline));
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn router(slots: Arc<Semaphore>, entered: Arc<tokio::sync::Notify>) -> axum::Router {
        let a = Arc::new(Admit {
            slots,
            body_timeout: Duration::from_secs(5),
            max_body: 64,
            metrics: Arc::new(Metrics::new().unwrap()),
        });
        let release = Arc::new(tokio::sync::Notify::new());
        axum::Router::new()
            .route(
                "/slow",
                axum::routing::get(move || {
                    let (entered, release) = (entered.clone(), release.clone());
                    async move {
                        entered.notify_one();
                        release.notified().await;
                        "late"
                    }
                }),
            )
            .route("/echo", axum::routing::post(|b: String| async move { b }))
            .route_layer(axum::middleware::from_fn_with_state(a, admit))
    }

    fn get(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_request_over_the_concurrency_cap_is_answered_429_at_once_and_frees_nothing() {
        let slots = Arc::new(Semaphore::new(1));
        let entered = Arc::new(tokio::sync::Notify::new());
        let app = router(slots.clone(), entered.clone());
        let held = tokio::spawn(app.clone().oneshot(get("/slow")));
        tokio::time::timeout(Duration::from_secs(5), entered.notified())
            .await
            .expect("the first request runs");
        let r = tokio::time::timeout(Duration::from_secs(5), app.clone().oneshot(get("/slow")))
            .await
            .expect("refused at once")
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            slots.available_permits(),
            0,
            "the first still holds its slot"
        );
        held.abort();
        let _ = held.await;
        assert_eq!(
            slots.available_permits(),
            1,
            "a dropped request gives it back"
        );
    }

    #[tokio::test]
    async fn a_deadline_that_passes_is_answered_504_and_a_body_over_the_limit_413() {
        let slots = Arc::new(Semaphore::new(4));
        let app = router(slots.clone(), Arc::new(tokio::sync::Notify::new()));
        let mut req = get("/slow");
        req.headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static("50m"));
        let r = tokio::time::timeout(Duration::from_secs(5), app.clone().oneshot(req))
            .await
            .expect("answered at the deadline")
            .unwrap();
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(slots.available_permits(), 4);
        let big = Request::builder()
            .method("POST")
            .uri("/echo")
            .body(Body::from(vec![b'x'; 65]))
            .unwrap();
        assert_eq!(
            app.clone().oneshot(big).await.unwrap().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let mut fits = Request::builder()
            .method("POST")
            .uri("/echo")
            .body(Body::from(vec![b'x'; 64]))
            .unwrap();
        fits.headers_mut()
            .insert("x-request-id", HeaderValue::from_static("req-42"));
        let r = app.oneshot(fits).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["x-request-id"],
            "req-42",
            "the caller's id comes back"
        );
    }
}
