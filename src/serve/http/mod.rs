//! The HTTP/JSON API (`/v1/...`) and the web console (`/`) on `http_listen`.
//!
//! # Layout
//!
//! - [`ROUTES`]: the one table of the API: each route, the gRPC method it is, and the messages it
//!   takes and answers. The router, the role check and the OpenAPI description
//!   ([`openapi`], served at `/openapi.json`) are all made from it.
//! - `api`: one dispatcher for every route: CSRF check → the role check of the route's RPC
//!   ([`super::auth::Auth::check_call`], the same `METHODS` table as gRPC) → request JSON (body,
//!   path and query) to the proto message (`json`) → the gRPC handler itself
//!   ([`super::service`]: no rule is implemented twice) → the answer as canonical JSON. An error
//!   is the handler's gRPC status: `{"code", "status", "message", "field"}` with the HTTP status
//!   of [`super::error::http_status`].
//! - [`csv`]: the at-risk CSV (the same rows as `tiering at-risk --format csv`), streamed page by
//!   page.
//! - `console`: the embedded web console (`web/`: HTML, JS, CSS; English and Chinese).
//! - `admission`: body limits and timeouts, the concurrency cap (the gRPC listener's slots) and
//!   deadlines in front of every `/v1` route: 413, 408, 429, 504 (see its docs).
//! - `GET /v1/models/{version}/report`: a bundle's training report (`report.html`), guarded as
//!   ListModels (role `admin`: like the list of versions, a report describes the data a model
//!   was trained on). The version id is checked by the bundle store's one rule (letters,
//!   digits, `-`, `_`, `.`, not starting with `.`: no `..`, no `/`, however encoded), the file
//!   against the manifest's checksum, and the page is served under a Content-Security-Policy
//!   that allows no script, no network, no frames, no forms and sandboxes it (inline styles
//!   only: the report's own).
//!
//! # Security
//!
//! The listener takes the gRPC listener's TLS certificate (HTTP/1.1 ALPN, client certificates
//! when mutual TLS is on) and the same keys file. Credentials are a bearer token in the
//! `Authorization` header, never a cookie, so a page on another site cannot make the browser
//! send them (cross-site request forgery needs ambient credentials). On top, a state-changing
//! request (POST) must be `Content-Type: application/json` (a cross-site HTML form can only send
//! form or text bodies; JSON needs a CORS preflight this server never grants: it sends no CORS
//! headers) and, when the browser sends `Origin` or `Sec-Fetch-Site`, come from this origin.
//! Without authentication (loopback only, see [`super::run`]) these checks are what stands
//! between a malicious page and a local server, so they apply always.

mod admission;
mod api;
mod console;
pub mod csv;
pub(crate) mod json;
pub mod openapi;

use super::service::TieringService;
use super::tls::Tls;
use crate::serve::error::{code_name, http_status, FIELD_METADATA};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::Status;

/// An HTTP method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
        }
    }
}

/// Where a route's request message comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The JSON body (empty: `{}`).
    Body,
    /// The path parameters and the URL query.
    Query,
}

/// What a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The response message as JSON.
    Message(&'static str),
    /// One ListAtRiskUsers page: `{"users": [UserTier...], "nextPageToken": "..."}`.
    AtRiskPage,
    /// Every page of ListAtRiskUsers as CSV, streamed.
    AtRiskCsv,
    /// `{"matched": "N"}`: how many users the at-risk filters match (every page walked).
    AtRiskCount,
    /// The `report.html` of the bundle named by the `version` path parameter.
    Report,
}

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub verb: Verb,
    /// axum syntax (`/v1/users/{user_id}`); a path parameter is the request field of its name.
    pub path: &'static str,
    /// The gRPC method (`GetUserTier`): its handler answers, its row of `METHODS` guards it.
    pub rpc: &'static str,
    /// The request message (`tiering.v1.` + this).
    pub request: &'static str,
    pub input: Input,
    pub output: Output,
    pub summary: &'static str,
}

/// The gRPC path of a route's method, as the access table names it.
pub fn grpc_path(rpc: &str) -> String {
    format!("/tiering.v1.Tiering/{rpc}")
}

const fn route(
    verb: Verb,
    path: &'static str,
    rpc: &'static str,
    request: &'static str,
    input: Input,
    output: Output,
    summary: &'static str,
) -> Route {
    Route {
        verb,
        path,
        rpc,
        request,
        input,
        output,
        summary,
    }
}

use Input::{Body, Query};
use Verb::{Get, Post};

/// The API, resource for resource the gRPC service.
pub const ROUTES: &[Route] = &[
    route(
        Get,
        "/v1/users/{user_id}",
        "GetUserTier",
        "GetUserTierRequest",
        Query,
        Output::Message("UserTier"),
        "Tier, churn probability and reasons for one known user.",
    ),
    route(
        Post,
        "/v1/users:batchGet",
        "BatchGetUserTiers",
        "BatchGetUserTiersRequest",
        Body,
        Output::Message("BatchGetUserTiersResponse"),
        "The same for many users (unknown ids in notFound).",
    ),
    route(
        Post,
        "/v1/users:score",
        "ScoreUser",
        "ScoreUserRequest",
        Body,
        Output::Message("UserTier"),
        "Scores raw activity for a user the service does not hold.",
    ),
    route(
        Post,
        "/v1/events",
        "RecordEvents",
        "RecordEventsRequest",
        Body,
        Output::Message("RecordEventsResponse"),
        "Records events into the users' aggregates.",
    ),
    route(
        Get,
        "/v1/at-risk",
        "ListAtRiskUsers",
        "ListAtRiskUsersRequest",
        Query,
        Output::AtRiskPage,
        "One page of users sorted by risk, filtered; continue with pageToken.",
    ),
    route(
        Get,
        "/v1/at-risk.csv",
        "ListAtRiskUsers",
        "ListAtRiskUsersRequest",
        Query,
        Output::AtRiskCsv,
        "Every matching user as CSV (the rows of `tiering at-risk --format csv`), streamed.",
    ),
    route(
        Get,
        "/v1/at-risk:count",
        "ListAtRiskUsers",
        "ListAtRiskUsersRequest",
        Query,
        Output::AtRiskCount,
        "How many users the filters match.",
    ),
    route(
        Get,
        "/v1/model",
        "GetModelInfo",
        "GetModelInfoRequest",
        Query,
        Output::Message("ModelInfo"),
        "The live model: version, features, tiers, metrics, stability.",
    ),
    route(
        Get,
        "/v1/models",
        "ListModels",
        "ListModelsRequest",
        Query,
        Output::Message("ListModelsResponse"),
        "Every bundle of the models directory (admin).",
    ),
    route(
        Get,
        "/v1/models/{version}/report",
        "ListModels",
        "ListModelsRequest",
        Query,
        Output::Report,
        "A bundle's training report, as HTML (admin, as ListModels).",
    ),
    route(
        Post,
        "/v1/models:promote",
        "PromoteModel",
        "PromoteModelRequest",
        Body,
        Output::Message("ModelChange"),
        "Verifies a bundle and makes it current (admin).",
    ),
    route(
        Post,
        "/v1/models:rollback",
        "RollbackModel",
        "RollbackModelRequest",
        Body,
        Output::Message("ModelChange"),
        "Makes the previous version current again (admin).",
    ),
    route(
        Post,
        "/v1/privacy:erase",
        "EraseUser",
        "EraseUserRequest",
        Body,
        Output::Message("EraseUserResponse"),
        "Erases a person from the live state (admin).",
    ),
    route(
        Post,
        "/v1/privacy:export",
        "ExportUser",
        "ExportUserRequest",
        Body,
        Output::Message("ExportUserResponse"),
        "Everything held about a person, as JSON (admin).",
    ),
    route(
        Post,
        "/v1/privacy:setProfilingObjection",
        "SetProfilingObjection",
        "SetProfilingObjectionRequest",
        Body,
        Output::Message("SetProfilingObjectionResponse"),
        "Records or withdraws an objection to profiling (admin).",
    ),
];

/// What the gRPC handlers see of an HTTP request besides its message: the authenticated caller
/// (for the audit log) and the metadata they read.
#[derive(Clone, Default)]
pub(crate) struct Meta {
    pub(super) caller: Option<crate::serve::auth::Caller>,
    pub(super) headers: axum::http::HeaderMap,
    /// The request's deadline (`grpc-timeout`; see `admission`), as gRPC handlers read it.
    pub(super) deadline: Option<std::time::Instant>,
}

/// Request headers passed on to the handlers as gRPC metadata.
pub(super) const PASSED_HEADERS: &[&str] =
    &[crate::serve::service::WAIT_APPLIED_HEADER, "x-request-id"];

impl Meta {
    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(self.headers.clone());
        if let Some(c) = &self.caller {
            req.extensions_mut().insert(c.clone());
        }
        req.extensions_mut()
            .insert(crate::serve::admission::RequestDeadline(self.deadline));
        req
    }
}

/// What the HTTP side shares.
pub(crate) struct Api {
    pub(crate) svc: TieringService,
    pub(crate) auth: Option<Arc<super::auth::Auth>>,
    pub(crate) codec: json::Codec,
    /// Page size of the CSV and count walks (the server's `max_page_size`).
    pub(crate) walk_page: u32,
}

/// The listener's settings.
pub(crate) struct HttpOptions {
    pub max_connections: usize,
    pub max_body_bytes: usize,
    /// `request_body_timeout_ms`: for the body, and for the headers of each request.
    pub body_timeout: Duration,
    /// `max_concurrent_requests`: the gRPC listener's semaphore.
    pub slots: Arc<tokio::sync::Semaphore>,
    pub metrics: Arc<crate::serve::metrics::Metrics>,
    pub tls_handshake_timeout: Duration,
    /// How long open connections may finish their answers once `stop` fired.
    pub grace: Duration,
}

/// The client certificate's names of a connection (mutual TLS), for the role check.
#[derive(Clone, Default)]
pub(crate) struct Peer(pub Option<Arc<[String]>>);

/// Serves the API and the console until `stop` fires; then open connections get `grace` to
/// finish their answers.
pub(crate) async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    tls: Option<Arc<Tls>>,
    opts: HttpOptions,
    mut stop: watch::Receiver<bool>,
) {
    let admit = Arc::new(admission::Admit {
        slots: opts.slots.clone(),
        body_timeout: opts.body_timeout,
        max_body: opts.max_body_bytes,
        metrics: opts.metrics.clone(),
    });
    let app = api::router(api, admit);
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("HTTP listener: connection cap reached, closing a new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, stop) = (app.clone(), tls.clone(), stop.clone());
        let (handshake_timeout, grace) = (opts.tls_handshake_timeout, opts.grace);
        let limits = ConnLimits {
            grace,
            header_timeout: opts.body_timeout,
        };
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, app, Peer::default(), stop, limits).await,
                Some(tls) => {
                    let accept = tls.http_acceptor().accept(stream);
                    let stream = match tokio::time::timeout(handshake_timeout, accept).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tls.handshake_failed(&e),
                        Err(_) => return tls.handshake_failed(&"timed out"),
                    };
                    let names = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::from(super::tls::cert_names(c.as_ref())));
                    connection(stream, app, Peer(names), stop, limits).await
                }
            }
        });
    }
}

/// The timing limits of one connection.
#[derive(Clone, Copy)]
struct ConnLimits {
    /// How long it may finish its answers once `stop` fired.
    grace: Duration,
    /// How long a request's headers may take to arrive (a slow-loris client is dropped).
    header_timeout: Duration,
}

/// One HTTP/1.1 connection, shut down gracefully when `stop` fires.
async fn connection<I>(
    io: I,
    app: axum::Router,
    peer: Peer,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let mut app = app.clone();
        async move { tower::Service::call(&mut app, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.grace, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection");
    }
}

/// JSON answers and errors, shared by the dispatcher and the admission.
fn json_response(status: StatusCode, doc: &Value) -> Response {
    let body = serde_json::to_vec(doc).unwrap_or_default();
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A gRPC status as the HTTP API's error: `{"code": 5, "status": "NOT_FOUND", "message": ...,
/// "field": "user_id"}` (`field` only when the error is about one) with the HTTP status of
/// [`http_status`].
fn error_response(status: &Status) -> Response {
    let code = status.code();
    let mut doc = serde_json::json!({
        "code": code as i32,
        "status": code_name(code),
        "message": status.message(),
    });
    if let Some(field) = status
        .metadata()
        .get(FIELD_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|f| !f.is_empty())
    {
        doc["field"] = Value::String(field.to_string());
    }
    let http = StatusCode::from_u16(http_status(code)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(http, &doc);
    if code == tonic::Code::Unauthenticated {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}
