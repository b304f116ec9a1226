//! The HTTP role: serves the HLS tree the way the reference nginx does
//! (segments cached "forever", playlists revalidated on every request) and
//! what operating it needs around that.
//!
//! Routes:
//! - `<prefix>/…` (default `/live`): `.m3u8` and `.ts` files under the HLS
//!   root, GET/HEAD/OPTIONS, with validators, conditional requests, ranges
//!   and CORS ([`files`], [`path`], [`conditional`], [`cors`]).
//! - `/`: the player page; `/player/…` its script, style and hls.js
//!   ([`player`]).
//! - `<keyPath>/<stream>/<id>.key` (default `/keys`, only with
//!   `hls.encryption` on): keys of encrypted streams, authorized ([`keys`]).
//! - `/api/streams`: live streams as JSON ([`api`]).
//! - `/healthz`, `/readyz`: probes ([`health`]); `/metrics`: Prometheus.
//!
//! Every response is counted in `oxcast_http_responses_total` by status
//! class, by a layer around the whole router.

pub mod api;
pub mod cache;
pub mod conditional;
pub mod cors;
pub mod files;
pub mod fs;
pub mod health;
pub mod keys;
pub mod path;
pub mod player;
pub mod scan;
pub mod sendfile;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use oxcast_crds::HttpSettings;
use tower::util::MapResponseLayer;

use crate::metrics::Metrics;
pub use api::StreamSource;
use cors::Cors;
use files::{Files, Policy};
pub use health::Health;
use path::{hls_path, Refused};
pub use sendfile::{raise_fd_limit, SendfileListener};

/// Memory for the player assets cache (hls.js is about half a megabyte).
const ASSET_CACHE_BYTES: u64 = 16 << 20;

/// Invalid HTTP settings, found when the router is built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid http.corsAllowOrigin: {0}")]
    Cors(String),
    #[error("key delivery: {0}")]
    Keys(#[from] keys::KeyDeliveryError),
}

/// Everything the HTTP role needs to know.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The HLS root.
    pub root: PathBuf,
    pub settings: HttpSettings,
    /// Directory with hls.js (`player/dist`); `None` or missing: the page
    /// relies on native HLS.
    pub player_assets: Option<PathBuf>,
    pub source: StreamSource,
    /// Key delivery, when `hls.encryption` is on.
    pub keys: Option<Arc<keys::KeyDelivery>>,
}

/// Shared by all handlers.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The path prefix without a trailing slash (`/live`; empty for `/`).
    prefix: Arc<str>,
    hls: Arc<Files>,
    assets: Option<Arc<Files>>,
    cors: Arc<Cors>,
    metrics: Arc<Metrics>,
    source: StreamSource,
    stream_list: Arc<api::ListCache>,
    health: Arc<Health>,
    keys: Option<Arc<keys::KeyDelivery>>,
}

/// Builds the router for `options`.
pub fn router(
    options: HttpOptions,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<Router, HttpError> {
    let cors = Cors::parse(&options.settings.cors_allow_origin).map_err(HttpError::Cors)?;
    let prefix: Arc<str> = options.settings.path_prefix.trim_end_matches('/').into();
    let cache_bytes = u64::from(options.settings.cache_size_mib) << 20;
    let assets = options.player_assets.and_then(|dir| {
        if dir.is_dir() {
            tracing::info!(dir = %dir.display(), "serving player assets");
            Some(Arc::new(Files::new(dir, ASSET_CACHE_BYTES)))
        } else {
            tracing::info!(dir = %dir.display(), "no player assets directory; the player page uses native HLS");
            None
        }
    });
    let state = HttpState {
        prefix: prefix.clone(),
        hls: Arc::new(Files::new(options.root, cache_bytes)),
        assets,
        cors: Arc::new(cors),
        metrics: metrics.clone(),
        source: options.source,
        stream_list: Arc::default(),
        health,
        keys: options.keys.clone(),
    };
    let count = MapResponseLayer::new(move |response: Response| {
        metrics.http_responses.inc(status_class(response.status()));
        response
    });
    let mut router = Router::new();
    if let Some(k) = &options.keys {
        router = router.route(
            &format!("{}/{{stream}}/{{file}}", k.path()),
            any(keys::serve_key),
        );
    }
    Ok(router
        .route(&format!("{prefix}/{{*path}}"), any(serve_hls))
        .route("/", get(player::page))
        .route(
            &format!("{}/{{*file}}", player::ASSETS_PATH),
            any(player::asset),
        )
        .route("/api/streams", get(api::streams).options(preflight))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(serve_metrics))
        .fallback(not_found)
        .layer(count)
        .with_state(state))
}

/// Only the operations endpoints (`/healthz`, `/readyz`, `/metrics`): the
/// `rtmp` role's listener, which serves no HLS.
pub fn ops_router(
    root: PathBuf,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<Router, HttpError> {
    let state = HttpState {
        prefix: "".into(),
        hls: Arc::new(Files::new(root, 0)),
        assets: None,
        cors: Arc::new(Cors::parse("").map_err(HttpError::Cors)?),
        metrics,
        source: StreamSource::Tree,
        stream_list: Arc::default(),
        health,
        keys: None,
    };
    Ok(Router::new()
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(serve_metrics))
        .fallback(not_found)
        .with_state(state))
}

/// The `oxcast_http_responses_total` label of a status.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// A short plain-text error.
pub(crate) fn error_response(status: StatusCode) -> Response {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 405 with the methods a read-only resource supports.
pub(crate) fn method_not_allowed() -> Response {
    let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED);
    r.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    r
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND)
}

async fn preflight(State(state): State<HttpState>, request: Request) -> Response {
    state.cors.preflight(request.headers())
}

/// `<prefix>/…`: a file of the HLS tree.
async fn serve_hls(State(state): State<HttpState>, request: Request) -> Response {
    let (method, headers) = (request.method(), request.headers());
    if method == Method::OPTIONS {
        return state.cors.preflight(headers);
    }
    let rest = request
        .uri()
        .path()
        .strip_prefix(&*state.prefix)
        .unwrap_or_default();
    let mut response = match hls_path(rest) {
        Ok((rel, kind)) => {
            let carry = kind == path::HlsKind::Playlist
                && method == Method::GET
                && state.keys.as_ref().is_some_and(|k| k.carries_tokens())
                && keys::has_token(request.uri().query());
            if carry {
                // The whole playlist is rewritten, so ranges (ffmpeg sends
                // `Range: bytes=0-`) are answered with all of it.
                let mut whole = headers.clone();
                whole.remove(header::RANGE);
                whole.remove(header::IF_RANGE);
                let served = state
                    .hls
                    .serve(&rel, Policy::Hls(kind), method, &whole)
                    .await;
                keys::carry_token_in_response(request.uri().query(), served).await
            } else {
                state
                    .hls
                    .serve(&rel, Policy::Hls(kind), method, headers)
                    .await
            }
        }
        Err(Refused::TooLong) => error_response(StatusCode::URI_TOO_LONG),
        Err(Refused::NotFound) => error_response(StatusCode::NOT_FOUND),
    };
    // Also on errors, so a cross-origin player sees the real status.
    state.cors.apply(headers, response.headers_mut());
    response
}

async fn serve_metrics(State(state): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(StatusCode::OK), "2xx");
        assert_eq!(status_class(StatusCode::NOT_MODIFIED), "3xx");
        assert_eq!(status_class(StatusCode::RANGE_NOT_SATISFIABLE), "4xx");
        assert_eq!(status_class(StatusCode::BAD_GATEWAY), "5xx");
    }
}
