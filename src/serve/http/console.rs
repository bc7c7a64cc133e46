//! The web console: three files of `web/`, compiled into the binary (no CDN, works offline),
//! served at `/`, `/console.js` and `/console.css`. They hold no data: the page asks the JSON
//! API for everything with the token the user signs in with (kept in the tab's session storage
//! and sent as `Authorization: Bearer`, never as a cookie).

use axum::http::{header, HeaderValue};
use axum::response::Response;
use std::sync::Arc;

const INDEX: &str = include_str!("../../../web/index.html");
const SCRIPT: &str = include_str!("../../../web/console.js");
const STYLE: &str = include_str!("../../../web/console.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page runs only its own script and style, talks only to this server, and may not be
    // framed (clickjacking).
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
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
