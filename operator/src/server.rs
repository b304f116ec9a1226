//! The operator's HTTP endpoint: `/metrics` (Prometheus/OpenMetrics),
//! `/healthz` (liveness: the process serves requests) and `/readyz`
//! (readiness: it has reached the API server, see [`Health::set_ready`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Error, Health, Metrics};

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The routes, for serving or for tests.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, health })
}

/// Serves until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(Error::Serve)
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the API server has not been reached yet\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String, Option<String>) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("the router answers");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = to_bytes(response.into_body(), 1 << 20).await.expect("body");
        (
            status,
            String::from_utf8_lossy(&body).into_owned(),
            content_type,
        )
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let router = || router(metrics.clone(), health.clone());

        assert_eq!(get(router(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(router(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready();
        assert_eq!(get(router(), "/readyz").await.0, StatusCode::OK);

        metrics.reconciled(std::time::Duration::from_millis(3), None);
        metrics.reconciled(std::time::Duration::from_millis(3), Some("apply"));
        let (status, body, content_type) = get(router(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.is_some_and(|c| c.starts_with("application/openmetrics-text")));
        for expected in [
            "oxcast_operator_reconciles_total{result=\"ok\"} 1",
            "oxcast_operator_reconciles_total{result=\"error\"} 1",
            "oxcast_operator_reconcile_errors_total{reason=\"apply\"} 1",
            "oxcast_operator_reconcile_duration_seconds_count 2",
            "oxcast_operator_leader 0",
        ] {
            assert!(body.contains(expected), "{expected} missing from\n{body}");
        }
        assert_eq!(get(router(), "/nope").await.0, StatusCode::NOT_FOUND);
    }
}
