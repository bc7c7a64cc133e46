//! The dispatcher behind every route of [`super::ROUTES`] (see the module docs of
//! [`super`]): CSRF check, role check, request JSON → proto, the gRPC handler, answer → JSON.

use super::json;
use super::{error_response, json_response};
use super::{Api, Input, Meta, Output, Peer, Route, Verb, PASSED_HEADERS, ROUTES};
use crate::pb as proto;
use crate::pb::tiering_server::Tiering;
use crate::serve::error::RequestError;
use axum::body::Body;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{RawPathParams, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use prost::Message;
use serde_json::{Map, Value};
use std::sync::Arc;
use tonic::Status;

/// The router: every route of [`ROUTES`] behind [`super::admission`], `/openapi.json`, the
/// console, and a JSON 404 (UNIMPLEMENTED) for anything else.
pub(super) fn router(api: Arc<Api>, admit: Arc<super::admission::Admit>) -> axum::Router {
    let max_body_bytes = admit.max_body;
    let mut app = axum::Router::new();
    for route in ROUTES {
        let handler = move |State(api): State<Arc<Api>>,
                            params: Result<RawPathParams, RawPathParamsRejection>,
                            req: Request| async move {
            let answered = match params {
                Ok(params) => answer(&api, route, &params, req, max_body_bytes).await,
                Err(e) => Err(path_rejected(route, &e)),
            };
            match answered {
                Ok(r) => r,
                Err(status) => error_response(&status),
            }
        };
        let method = match route.verb {
            Verb::Get => axum::routing::get(handler),
            Verb::Post => axum::routing::post(handler),
        };
        app = app.route(route.path, method);
    }
    let app = app.route_layer(axum::middleware::from_fn_with_state(
        admit,
        super::admission::admit,
    ));
    super::console::routes(app)
        .route("/openapi.json", axum::routing::get(openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
}

/// A path parameter axum could not take (percent-decoded, it is not UTF-8): the API's JSON
/// error naming the parameter (every route has at most one, `{user_id}` or `{version}`).
fn path_rejected(route: &Route, e: &RawPathParamsRejection) -> Status {
    let param = super::openapi::path_params(route.path)
        .first()
        .copied()
        .unwrap_or_default();
    match e {
        RawPathParamsRejection::InvalidUtf8InPathParam(_) => {
            RequestError::invalid(param, "not valid UTF-8 once percent-decoded").into()
        }
        _ => Status::internal(e.body_text()),
    }
}

/// A route that exists, asked with a method it does not take: 405 with the API's JSON error
/// (axum adds the `Allow` header).
async fn method_not_allowed(req: Request) -> Response {
    let path = crate::serve::error::quote(req.uri().path());
    let message = format!("{} is not a method of {path}", req.method());
    unrouted(StatusCode::METHOD_NOT_ALLOWED, message)
}

async fn openapi(State(api): State<Arc<Api>>) -> Response {
    match super::openapi::document(&api.codec) {
        Ok(doc) => json_response(StatusCode::OK, &doc),
        Err(e) => error_response(&Status::internal(e.to_string())),
    }
}

async fn no_route(req: Request) -> Response {
    let path = crate::serve::error::quote(req.uri().path());
    unrouted(
        StatusCode::NOT_FOUND,
        format!("no route {} {path}", req.method()),
    )
}

/// A request the router did not take: the API's JSON error, status UNIMPLEMENTED.
fn unrouted(http: StatusCode, message: String) -> Response {
    let status = Status::unimplemented(format!("{message} (see /openapi.json)"));
    let mut r = error_response(&status);
    *r.status_mut() = http;
    r
}

async fn answer(
    api: &Arc<Api>,
    route: &'static Route,
    params: &RawPathParams,
    req: Request,
    max_body_bytes: usize,
) -> Result<Response, Status> {
    let (parts, body) = req.into_parts();
    if route.verb == Verb::Post {
        csrf(&parts.headers)?;
    }
    let caller = match &api.auth {
        Some(auth) => auth.check_call(
            &super::grpc_path(route.rpc),
            parts.headers.get(header::AUTHORIZATION),
            parts.extensions.get::<Peer>().and_then(|p| p.0.clone()),
        )?,
        None => None,
    };
    let mut headers = HeaderMap::new();
    for name in PASSED_HEADERS {
        if let Some(v) = parts.headers.get(*name) {
            headers.insert(*name, v.clone());
        }
    }
    let deadline = parts
        .extensions
        .get::<crate::serve::admission::RequestDeadline>()
        .and_then(|d| d.0);
    let meta = Meta {
        caller,
        headers,
        deadline,
    };
    let desc = api.codec.message(route.request).map_err(internal)?;
    let mut obj = match route.input {
        Input::Body => body_object(body, max_body_bytes).await?,
        Input::Query => {
            let mut m = Map::new();
            json::add_query(&desc, parts.uri.query().unwrap_or(""), &mut m)?;
            m
        }
    };
    for (k, v) in params.iter() {
        json::add_param(&desc, k, v, &mut obj);
    }
    let value = Value::Object(obj);
    match route.output {
        Output::Message(response) => {
            let wire = unary(api, route, value, &meta).await?;
            let json = api.codec.to_json(response, &wire).map_err(internal)?;
            Ok(json_response(StatusCode::OK, &json))
        }
        Output::AtRiskPage => {
            let req = api.codec.parse_json(route.request, value)?;
            let (users, next) = super::csv::page(api, req, &meta).await?;
            let mut out = Vec::with_capacity(users.len());
            for u in &users {
                let mut v = api
                    .codec
                    .to_json("UserTier", &u.encode_to_vec())
                    .map_err(internal)?;
                if let Value::Object(m) = &mut v {
                    m.remove("nextPageToken");
                }
                out.push(v);
            }
            let doc = serde_json::json!({"users": out, "nextPageToken": next});
            Ok(json_response(StatusCode::OK, &doc))
        }
        Output::AtRiskCsv => {
            let req = api.codec.parse_json(route.request, value)?;
            super::csv::download(api, req, meta).await
        }
        Output::AtRiskCount => {
            let req = api.codec.parse_json(route.request, value)?;
            let n = super::csv::count(api, req, &meta).await?;
            let doc = serde_json::json!({"matched": n.to_string()});
            Ok(json_response(StatusCode::OK, &doc))
        }
        Output::Report => {
            // The request message (ListModelsRequest) has no field: the version is the path's.
            let version = params
                .iter()
                .find(|(k, _)| *k == "version")
                .map_or("", |(_, v)| v);
            let html = api.svc.model_admin().report(version.to_string()).await?;
            Ok(super::console::report(html))
        }
    }
}

/// Calls the route's unary gRPC handler with the request JSON; the answer's proto bytes.
async fn unary(api: &Api, route: &Route, value: Value, meta: &Meta) -> Result<Vec<u8>, Status> {
    macro_rules! call {
        ($method:ident, $T:ty) => {{
            let msg: $T = api.codec.parse_json(route.request, value)?;
            api.svc
                .$method(meta.request(msg))
                .await
                .map(|r| r.into_inner().encode_to_vec())
        }};
    }
    match route.rpc {
        "GetUserTier" => call!(get_user_tier, proto::GetUserTierRequest),
        "BatchGetUserTiers" => call!(batch_get_user_tiers, proto::BatchGetUserTiersRequest),
        "ScoreUser" => call!(score_user, proto::ScoreUserRequest),
        "RecordEvents" => call!(record_events, proto::RecordEventsRequest),
        "GetModelInfo" => call!(get_model_info, proto::GetModelInfoRequest),
        "ListModels" => call!(list_models, proto::ListModelsRequest),
        "PromoteModel" => call!(promote_model, proto::PromoteModelRequest),
        "RollbackModel" => call!(rollback_model, proto::RollbackModelRequest),
        "EraseUser" => call!(erase_user, proto::EraseUserRequest),
        "ExportUser" => call!(export_user, proto::ExportUserRequest),
        "SetProfilingObjection" => {
            call!(set_profiling_objection, proto::SetProfilingObjectionRequest)
        }
        other => Err(Status::unimplemented(format!(
            "no unary handler for {other}"
        ))),
    }
}

/// The JSON object of a request body (an empty body is `{}`).
async fn body_object(body: Body, max: usize) -> Result<Map<String, Value>, Status> {
    // The admission read it already, within its limits; this only takes the bytes.
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        Status::resource_exhausted(format!(
            "the request body is over {max} bytes (max_message_bytes)"
        ))
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(RequestError::invalid("", "the request body is not a JSON object").into()),
        Err(e) => {
            Err(RequestError::invalid("", format!("the request body is not JSON: {e}")).into())
        }
    }
}

/// Cross-site request forgery protection for state-changing requests (see the module docs of
/// [`super`]): JSON bodies only, and the browser's own word that the request is same-origin.
fn csrf(headers: &HeaderMap) -> Result<(), Status> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(RequestError::invalid(
            "Content-Type",
            "a POST must be `Content-Type: application/json` (cross-site request forgery protection)",
        )
        .into());
    }
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Err(Status::permission_denied(format!(
                "cross-site request refused (Sec-Fetch-Site: {})",
                crate::serve::error::quote(site)
            )));
        }
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or("");
        let same = origin
            .split_once("://")
            .is_some_and(|(_, rest)| !host.is_empty() && rest == host);
        if !same {
            return Err(Status::permission_denied(format!(
                "cross-origin request refused (Origin {} is not this server)",
                crate::serve::error::quote(origin)
            )));
        }
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "HTTP API: internal error");
    Status::internal(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, axum::http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_form_post_or_a_cross_site_post_is_refused() {
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        assert_eq!(
            csrf(&form).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let plain = headers(&[("content-type", "text/plain")]);
        assert!(csrf(&plain).is_err());
        let cross = headers(&[
            ("content-type", "application/json"),
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(
            csrf(&cross).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let site = headers(&[
            ("content-type", "application/json"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert!(csrf(&site).is_err());
        let same = headers(&[
            ("content-type", "application/json; charset=utf-8"),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(csrf(&same).is_ok());
        // A script client (curl) sends neither Origin nor Sec-Fetch-Site.
        assert!(csrf(&headers(&[("content-type", "application/json")])).is_ok());
    }
}
