//! Authentication, roles and quotas: ONE tower layer checks every call by its gRPC path against
//! one table ([`METHODS`]: method → what it needs).
//!
//! - Credentials: a bearer token (`authorization: Bearer tk_…`, an API key whose SHA-256 is in
//!   the keys file, see [`keys`]) or, with mutual TLS, the client certificate's DNS SANs or
//!   subject CN matched against the keys file's `[[identity]]` entries. A token, when sent,
//!   decides (a bad token is refused even on a good certificate).
//! - No valid credentials: UNAUTHENTICATED. Valid credentials without the method's role:
//!   PERMISSION_DENIED. A method missing from the table: PERMISSION_DENIED (deny by default).
//!   Health is open; reflection is open when enabled (`reflection = true`), else unknown.
//! - Quotas: a token bucket per key or identity (its `rate`/`burst`, else `quota_rate` /
//!   `quota_burst`); beyond it RESOURCE_EXHAUSTED.
//! - Denials are logged with the identity's name and the method, never a user id or a token,
//!   and counted in `tiering_refused_total{reason="unauthenticated"|"permission_denied"|"quota"}`.
//!
//! Roles do not imply each other: a key holds every role it needs. Without a keys file the
//! layer lets every call through (auth off; see the start-up checks in [`super::run`]).
//!
//! The keys file is reloaded when it changes (polled) or on SIGHUP; a bad new file is refused,
//! logged and counted (`reason="keys_reload"`), and the old keys stay in force.

pub mod keys;
pub(crate) mod quota;
pub(crate) mod reload;

use super::connections::ConnInfo;
use super::metrics::Metrics;
use arc_swap::ArcSwap;
use keys::{Keys, Principal};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http;

/// Why the keys file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("keys file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keys file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("keys file {path}: mode {mode:o} lets group or others read or write it (chmod 600)")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("keys file entry {name:?}: {why}")]
    Entry { name: String, why: String },
    #[error("keys file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keys file: {0}")]
    Serialize(#[source] toml::ser::Error),
}

/// A role a key or identity holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GetUserTier, BatchGetUserTiers, ScoreUser, GetModelInfo.
    Reader,
    /// ListAtRiskUsers (a bulk export of the user base is a separate right).
    Retention,
    /// RecordEvents.
    Writer,
    /// ListModels, PromoteModel, RollbackModel, EraseUser, ExportUser, SetProfilingObjection.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "reader" => Ok(Role::Reader),
            "retention" => Ok(Role::Retention),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (reader, retention, writer, admin)"
            )),
        }
    }
}

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health).
    Open,
    /// Anyone while reflection is enabled; an unknown method otherwise.
    Reflection,
    /// An authenticated caller holding the role.
    Role(Role),
}

/// The one table: every method the server answers, and what it needs.
pub const METHODS: &[(&str, Access)] = &[
    (
        "/tiering.v1.Tiering/GetUserTier",
        Access::Role(Role::Reader),
    ),
    (
        "/tiering.v1.Tiering/BatchGetUserTiers",
        Access::Role(Role::Reader),
    ),
    ("/tiering.v1.Tiering/ScoreUser", Access::Role(Role::Reader)),
    (
        "/tiering.v1.Tiering/GetModelInfo",
        Access::Role(Role::Reader),
    ),
    (
        "/tiering.v1.Tiering/ListAtRiskUsers",
        Access::Role(Role::Retention),
    ),
    (
        "/tiering.v1.Tiering/RecordEvents",
        Access::Role(Role::Writer),
    ),
    ("/tiering.v1.Tiering/ListModels", Access::Role(Role::Admin)),
    (
        "/tiering.v1.Tiering/PromoteModel",
        Access::Role(Role::Admin),
    ),
    (
        "/tiering.v1.Tiering/RollbackModel",
        Access::Role(Role::Admin),
    ),
    ("/tiering.v1.Tiering/EraseUser", Access::Role(Role::Admin)),
    ("/tiering.v1.Tiering/ExportUser", Access::Role(Role::Admin)),
    (
        "/tiering.v1.Tiering/SetProfilingObjection",
        Access::Role(Role::Admin),
    ),
    ("/grpc.health.v1.Health/Check", Access::Open),
    ("/grpc.health.v1.Health/Watch", Access::Open),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Access::Reflection,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Access::Reflection,
    ),
];

/// What `path` needs; `None`: not in the table (denied).
pub fn access_for(path: &str) -> Option<Access> {
    METHODS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// The layer's settings.
#[derive(Debug, Clone, Copy)]
pub struct AuthSettings {
    pub reflection: bool,
    /// Requests per second per identity without its own `rate`; 0: unlimited.
    pub quota_rate: f64,
    pub quota_burst: u32,
}

/// The live keys (swapped on reload) and the quota buckets.
pub struct Auth {
    keys: ArcSwap<Keys>,
    quotas: quota::Quotas,
    settings: AuthSettings,
    metrics: Arc<Metrics>,
}

impl Auth {
    pub fn new(keys: Keys, settings: AuthSettings, metrics: Arc<Metrics>) -> Auth {
        Auth {
            keys: ArcSwap::from_pointee(keys),
            quotas: quota::Quotas::default(),
            settings,
            metrics,
        }
    }

    /// Re-reads the keys file; a bad file is logged and counted, and the old keys stay.
    pub fn reload(&self, path: &std::path::Path) {
        match Keys::load(path) {
            Ok(keys) => {
                let (k, i) = keys.counts();
                self.keys.store(Arc::new(keys));
                tracing::info!(path = %path.display(), keys = k, identities = i, "keys file reloaded");
            }
            Err(e) => {
                self.metrics.refused("keys_reload");
                tracing::error!(error = %e, "keys file refused; the previous keys stay in force");
            }
        }
    }

    /// The decision for one call: `Ok` to pass it on (with the caller's identity when the
    /// method needs a role), or the status to answer.
    fn check<B>(&self, req: &http::Request<B>) -> Result<Option<Caller>, tonic::Status> {
        let peer_names = req
            .extensions()
            .get::<ConnInfo>()
            .and_then(|c| c.peer_names.clone());
        self.check_call(
            req.uri().path(),
            req.headers().get(http::header::AUTHORIZATION),
            peer_names,
        )
    }

    /// [`Auth::check`] for a call that did not come through the gRPC layer: the HTTP API
    /// ([`super::http`]) checks each route as the RPC it maps to (`path` is that RPC's gRPC path),
    /// with the request's `Authorization` header and the connection's client-certificate names.
    pub(crate) fn check_call(
        &self,
        path: &str,
        authorization: Option<&http::HeaderValue>,
        peer_names: Option<Arc<[String]>>,
    ) -> Result<Option<Caller>, tonic::Status> {
        let role = match access_for(path) {
            Some(Access::Open) => return Ok(None),
            Some(Access::Reflection) if self.settings.reflection => return Ok(None),
            Some(Access::Role(role)) => role,
            Some(Access::Reflection) | None => {
                self.metrics.refused("permission_denied");
                tracing::warn!(method = %path, "denied: a method outside the access table");
                return Err(tonic::Status::permission_denied("unknown method"));
            }
        };
        let keys = self.keys.load();
        let principal = match credentials(&keys, authorization, peer_names) {
            Ok(p) => p,
            Err(why) => {
                self.metrics.refused("unauthenticated");
                tracing::warn!(method = %path, why, "denied: unauthenticated");
                return Err(tonic::Status::unauthenticated(why));
            }
        };
        if !principal.roles.contains(&role) {
            self.metrics.refused("permission_denied");
            tracing::warn!(identity = %principal.name, method = %path, ?role, "denied: the role is missing");
            return Err(tonic::Status::permission_denied(format!(
                "{} lacks the role {:?}",
                principal.name, role
            )));
        }
        let rate = principal.rate.unwrap_or(self.settings.quota_rate);
        let burst = principal.burst.unwrap_or(self.settings.quota_burst);
        if rate > 0.0 && !self.quotas.take(&principal.name, rate, burst) {
            self.metrics.refused("quota");
            tracing::warn!(identity = %principal.name, method = %path, "denied: quota exceeded");
            return Err(tonic::Status::resource_exhausted(format!(
                "quota exceeded: {rate} requests per second, burst {burst}"
            )));
        }
        Ok(Some(Caller(principal.name.as_str().into())))
    }
}

/// The authenticated identity of a call (the key's or certificate identity's name in the keys
/// file), put in the request's extensions by the layer for handlers that record who acted (the
/// audit log, [`super::audit`]). Absent when authentication is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Arc<str>);

/// The caller: the bearer token when one is sent, else the client certificate's identity.
fn credentials<'k>(
    keys: &'k Keys,
    authorization: Option<&http::HeaderValue>,
    peer_names: Option<Arc<[String]>>,
) -> Result<&'k Principal, &'static str> {
    if let Some(value) = authorization {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or("the authorization header is not `Bearer TOKEN`")?;
        return keys.by_token(token).ok_or("unknown token");
    }
    match peer_names {
        Some(names) => keys
            .by_identity(names.iter().map(String::as_str))
            .ok_or("the client certificate names no identity in the keys file"),
        None => Err("no credentials: send `authorization: Bearer TOKEN` or a client certificate"),
    }
}

/// The tower layer (see the module docs).
#[derive(Clone)]
pub struct AuthLayer {
    auth: Option<Arc<Auth>>,
}

impl AuthLayer {
    /// `None`: auth off, every call passes.
    pub fn new(auth: Option<Arc<Auth>>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Auth>>,
}

impl<S, ResBody> tower::Service<http::Request<tonic::body::Body>> for AuthService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut req = req;
        if let Some(auth) = &self.auth {
            match auth.check(&req) {
                Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
                Ok(Some(caller)) => {
                    req.extensions_mut().insert(caller);
                }
                Ok(None) => {}
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tiering_rpc_in_the_proto_has_a_row() {
        let proto = include_str!("../../../proto/tiering/v1/tiering.proto");
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap_or_default().trim();
                let path = format!("/tiering.v1.Tiering/{name}");
                assert!(access_for(&path).is_some(), "{path} has no row in METHODS");
            }
        }
    }
}
