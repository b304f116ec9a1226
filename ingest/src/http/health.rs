//! Probes for Kubernetes: `/healthz` (liveness: the process answers) and
//! `/readyz` (readiness: it can do its job right now).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::HttpState;

/// What readiness depends on besides the HTTP listener itself (which is up
/// if the probe gets an answer at all).
#[derive(Debug)]
pub struct Health {
    /// `Some` in roles that ingest RTMP: whether its listener is serving.
    rtmp: Option<AtomicBool>,
    /// Ingest writes the HLS root; the `http` role only reads it.
    root_must_be_writable: bool,
    /// Set when the process is shutting down: stop sending traffic here.
    shutdown: watch::Receiver<bool>,
    /// Shared stream ownership: not ready while this replica cannot claim
    /// streams (fenced, or not registered with the API server).
    ownership: OnceLock<crate::ownership::StreamOwnership>,
}

impl Health {
    pub fn new(rtmp: bool, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            rtmp: rtmp.then(|| AtomicBool::new(false)),
            root_must_be_writable: rtmp,
            shutdown,
            ownership: OnceLock::new(),
        }
    }

    /// Readiness also requires that `ownership` can claim streams.
    pub fn set_ownership(&self, ownership: crate::ownership::StreamOwnership) {
        let _ = self.ownership.set(ownership);
    }

    /// The RTMP listener started (`true`) or its accept loop ended.
    pub fn set_rtmp_listening(&self, up: bool) {
        if let Some(flag) = &self.rtmp {
            flag.store(up, Ordering::Relaxed);
        }
    }
}

/// `GET /healthz`: alive as long as the runtime serves requests.
pub async fn live() -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        "ok\n",
    )
        .into_response()
}

/// Checks that the root can be listed and, where required, written: a
/// probe file is created and removed (a dot-file, never served).
fn check_root(state: &HttpState, writable: bool) -> Result<(), String> {
    let root = state.hls.root();
    let path = root.path();
    root.refresh()
        .map_err(|e| format!("HLS root {} unavailable: {e}", path.display()))?;
    std::fs::read_dir(path)
        .map_err(|e| format!("HLS root {} not readable: {e}", path.display()))?;
    if writable {
        // Unique per pod on a shared volume: every container is PID 1.
        let probe = path.join(format!(".oxcast-readyz-{}", probe_id()));
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| format!("HLS root {} not writable: {e}", path.display()))?;
    }
    Ok(())
}

/// Host name (the pod name) and process id.
fn probe_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .take(64)
            .collect();
        format!("{host}-{}", std::process::id())
    })
}

/// `GET /readyz`: 200 `ready`, or 503 with one reason per line.
pub async fn ready(State(state): State<HttpState>) -> Response {
    let health = state.health.clone();
    let mut problems = Vec::new();
    if *health.shutdown.borrow() {
        problems.push("shutting down".to_string());
    }
    if let Some(up) = &health.rtmp {
        if !up.load(Ordering::Relaxed) {
            problems.push("rtmp listener is not running".to_string());
        }
    }
    if let Some(o) = health.ownership.get() {
        if !o.available() {
            problems
                .push("cannot prove stream ownership (API server unreachable: fenced)".to_string());
        }
    }
    let writable = health.root_must_be_writable;
    let checked = tokio::task::spawn_blocking(move || check_root(&state, writable)).await;
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(problem)) => problems.push(problem),
        Err(e) => problems.push(format!("root check failed: {e}")),
    }
    let headers = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    if problems.is_empty() {
        (StatusCode::OK, headers, "ready\n".to_string()).into_response()
    } else {
        tracing::debug!(?problems, "not ready");
        let body = format!("not ready:\n{}\n", problems.join("\n"));
        (StatusCode::SERVICE_UNAVAILABLE, headers, body).into_response()
    }
}
