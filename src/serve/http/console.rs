//! The web console: three files of `web/`, compiled into the binary (no CDN, works offline),
//! served at `/`, `/console.js` and `/console.css`. They hold no data: the page asks the JSON
//! API for everything with the token the user signs in with (kept in the tab's session storage
//! and sent as `Authorization: Bearer`, never as a cookie).
//!
//! A bundle's report is fetched with that token and shown in an `<iframe sandbox srcdoc>` (no
//! script, an opaque origin): a frame cannot send the header itself. A `srcdoc` frame takes the
//! console's Content-Security-Policy, so that policy allows inline *styles* (the report's own);
//! scripts stay `'self'` only.

use axum::http::{header, HeaderValue};
use axum::response::Response;
use std::sync::Arc;

const INDEX: &str = include_str!("../../../web/index.html");
const SCRIPT: &str = include_str!("../../../web/console.js");
const STYLE: &str = include_str!("../../../web/console.css");

/// The console's policy: only its own script, talks only to this server, may not be framed
/// (clickjacking); inline styles for the report frame (see the module docs).
pub const CONSOLE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// A bundle report's policy: nothing but its inline styles and inline images; no script, no
/// network, no forms, sandboxed (an opaque origin even when opened directly).
pub const REPORT_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; sandbox";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    page(axum::body::Body::from(body), content_type, CONSOLE_CSP)
}

/// A bundle's `report.html` under [`REPORT_CSP`].
pub(super) fn report(html: Vec<u8>) -> Response {
    let mut r = page(
        axum::body::Body::from(html),
        "text/html; charset=utf-8",
        REPORT_CSP,
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn page(body: axum::body::Body, content_type: &'static str, csp: &'static str) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// Adds the console's routes.
pub(super) fn routes(app: axum::Router<Arc<super::Api>>) -> axum::Router<Arc<super::Api>> {
    app.route(
        "/",
        axum::routing::get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
    )
    .route(
        "/console.js",
        axum::routing::get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
    )
    .route(
        "/console.css",
        axum::routing::get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
    )
}
