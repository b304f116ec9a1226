//! Serves the HLS tree over HTTP with the reference nginx cache rules:
//! segments are immutable and cached "forever" (`expires max`), playlists
//! must be revalidated every time (`expires -1d`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// What the HTTP role serves.
#[derive(Debug, Clone)]
pub struct HttpState {
    root: Arc<PathBuf>,
    metrics: Arc<Metrics>,
}

/// Longest path segment accepted (file systems allow 255 bytes).
const MAX_SEGMENT_LEN: usize = 255;
const ONE_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn router(root: PathBuf, path_prefix: &str, metrics: Arc<Metrics>) -> Router {
    let state = HttpState {
        root: Arc::new(root),
        metrics,
    };
    let prefix = path_prefix.trim_end_matches('/');
    Router::new()
        .route(&format!("{prefix}/{{*path}}"), get(serve_file))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(serve_metrics))
        .with_state(state)
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Playlist,
    Segment,
}

/// Maps a URL path below the prefix to a file under the root, or `None`
/// when any segment could step outside it or the type is not served.
fn resolve(root: &Path, url_path: &str) -> Option<(PathBuf, Kind)> {
    let mut path = root.to_path_buf();
    let mut last = "";
    for segment in url_path.split('/') {
        let ok = !segment.is_empty()
            && segment.len() <= MAX_SEGMENT_LEN
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return None;
        }
        path.push(segment);
        last = segment;
    }
    let kind = if last.ends_with(".m3u8") {
        Kind::Playlist
    } else if last.ends_with(".ts") {
        Kind::Segment
    } else {
        return None;
    };
    Some((path, kind))
}

async fn serve_file(
    State(state): State<HttpState>,
    UrlPath(url_path): UrlPath<String>,
) -> Response {
    let Some((path, kind)) = resolve(&state.root, &url_path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // A symlink inside the root must not lead out of it.
    let inside = match (
        tokio::fs::canonicalize(&path).await,
        tokio::fs::canonicalize(&*state.root).await,
    ) {
        (Ok(real), Ok(root)) => real.starts_with(root),
        _ => false,
    };
    if !inside {
        return StatusCode::NOT_FOUND.into_response();
    }
    let body = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return StatusCode::NOT_FOUND.into_response()
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read file to serve");
            return StatusCode::NOT_FOUND.into_response();
        }
    };
    let mut headers = HeaderMap::new();
    let (content_type, cache_control, expires) = match kind {
        Kind::Playlist => (
            "application/vnd.apple.mpegurl",
            "no-cache",
            SystemTime::now() - Duration::from_secs(24 * 3600),
        ),
        Kind::Segment => (
            "video/mp2t",
            "public, max-age=31536000, immutable",
            SystemTime::now() + ONE_YEAR,
        ),
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(expires)) {
        headers.insert(header::EXPIRES, v);
    }
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_only_safe_hls_paths() {
        let root = Path::new("/srv/live");
        assert_eq!(
            resolve(root, "cam/index.m3u8").map(|(p, _)| p),
            Some(PathBuf::from("/srv/live/cam/index.m3u8"))
        );
        assert!(resolve(root, "cam/123.ts").is_some_and(|(_, k)| k == Kind::Segment));
        for bad in [
            "../etc/passwd.ts",
            "cam/../../x.ts",
            "cam//1.ts",
            "cam/1.ts/",
            "/abs.ts",
            "cam\\1.ts",
            "cam/%2e%2e/1.ts",
            "cam/1.mp4",
            "cam/",
            "cam/1.ts\0",
        ] {
            assert!(resolve(root, bad).is_none(), "{bad:?} resolved");
        }
    }
}
