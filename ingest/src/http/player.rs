//! The player page at `/`: HTML, script and style compiled into the binary,
//! plus hls.js from the player assets directory (`--player-assets`), which
//! `npm ci && npm run build` in `player/` produces. Without that directory
//! the page still works in browsers that play HLS natively.

use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;

use super::files::Policy;
use super::path::file_name;
use super::{error_response, method_not_allowed, HttpState};

const INDEX_HTML: &str = include_str!("player/index.html");
const APP_JS: &str = include_str!("player/app.js");
const STYLE_CSS: &str = include_str!("player/style.css");

/// URL path under which the page's own files and the assets are served.
pub const ASSETS_PATH: &str = "/player";

/// The page may load media and playlists from other origins (a CDN named
/// by `hls_base_url`), but scripts only from here; hls.js runs its
/// transmuxer in a blob: worker and feeds the video element blob: URLs.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; media-src 'self' blob: http: https:; \
    connect-src 'self' http: https:; worker-src 'self' blob:; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'self'";

/// A file compiled into the binary, with a strong ETag of its content.
struct Embedded {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

fn embedded(body: &'static str, content_type: &'static str) -> Embedded {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    let etag = HeaderValue::from_str(&format!("\"{:016x}\"", h.finish()))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    Embedded {
        body,
        content_type,
        etag,
    }
}

static PAGE: LazyLock<Embedded> =
    LazyLock::new(|| embedded(INDEX_HTML, "text/html; charset=utf-8"));
static APP: LazyLock<Embedded> =
    LazyLock::new(|| embedded(APP_JS, "text/javascript; charset=utf-8"));
static STYLE: LazyLock<Embedded> = LazyLock::new(|| embedded(STYLE_CSS, "text/css; charset=utf-8"));

fn serve_embedded(file: &Embedded, request: &HeaderMap, page: bool) -> Response {
    let not_modified = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == file.etag.as_bytes());
    let mut response = if not_modified {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(file.body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
        r
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, file.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if page {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// `GET /`.
pub async fn page(headers: HeaderMap) -> Response {
    serve_embedded(&PAGE, &headers, true)
}

/// Content types of the files an npm build may put in the assets directory.
fn asset_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "map" | "json" => "application/json",
        "css" => "text/css; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    })
}

/// `GET /player/<file>`: the page's own script and style, or a file from
/// the assets directory.
pub async fn asset(State(state): State<HttpState>, request: Request) -> Response {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    let rest = request
        .uri()
        .path()
        .strip_prefix(ASSETS_PATH)
        .unwrap_or_default();
    let Ok(name) = file_name(rest) else {
        return error_response(StatusCode::NOT_FOUND);
    };
    match &*name {
        "app.js" => return serve_embedded(&APP, request.headers(), false),
        "style.css" => return serve_embedded(&STYLE, request.headers(), false),
        _ => {}
    }
    let (Some(files), Some(content_type)) = (&state.assets, asset_type(&name)) else {
        return error_response(StatusCode::NOT_FOUND);
    };
    let mut response = files
        .serve(
            &name,
            Policy::Asset { content_type },
            method,
            request.headers(),
        )
        .await;
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_references_the_assets_it_needs() {
        assert!(INDEX_HTML.contains("/player/hls.min.js"));
        assert!(INDEX_HTML.contains("/player/app.js"));
        assert!(INDEX_HTML.contains("/player/style.css"));
        assert!(
            !INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"),
            "the page must not load anything from another site"
        );
        assert!(APP_JS.contains("/api/streams"));
    }

    #[test]
    fn asset_types() {
        assert_eq!(
            asset_type("hls.min.js"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(asset_type("hls.min.js.map"), Some("application/json"));
        assert_eq!(asset_type("README"), None);
        assert_eq!(asset_type("x.html"), None);
    }
}
