//! The live wallboard and the cases page: static HTML, CSS and JavaScript compiled into the
//! binary (no CDN, no build step), served at `/wallboard` and `/wallboard/cases`. The pages hold
//! no data; their scripts read the API (`/api/v1/live/stream`, `/api/v1/cases`) with the token
//! from the page's own URL (`?token=`), so the API's roles apply to them as to any client.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const WALLBOARD_HTML: &str = include_str!("../../../assets/wallboard/wallboard.html");
const CASES_HTML: &str = include_str!("../../../assets/wallboard/cases.html");
const CSS: &str = include_str!("../../../assets/wallboard/wallboard.css");
const WALLBOARD_JS: &str = include_str!("../../../assets/wallboard/wallboard.js");
const CASES_JS: &str = include_str!("../../../assets/wallboard/cases.js");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:",
            ),
        ],
        body,
    )
}

pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    const HTML: &str = "text/html; charset=utf-8";
    const JS: &str = "text/javascript; charset=utf-8";
    axum::Router::new()
        .route("/wallboard", get(|| async { asset(HTML, WALLBOARD_HTML) }))
        .route(
            "/wallboard/cases",
            get(|| async { asset(HTML, CASES_HTML) }),
        )
        .route(
            "/wallboard/assets/wallboard.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/wallboard/assets/wallboard.js",
            get(|| async { asset(JS, WALLBOARD_JS) }),
        )
        .route(
            "/wallboard/assets/cases.js",
            get(|| async { asset(JS, CASES_JS) }),
        )
}
