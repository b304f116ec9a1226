//! Prometheus metrics of one operator instance, served at `/metrics`.
//!
//! Besides reconcile counts and durations, every request the operator's
//! client sends is counted by verb and resource: that is how "a reconcile
//! with nothing to change writes nothing" is checked in tests and measured
//! in the scale benchmark, and how an operator hammering the API server
//! shows up on a dashboard.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::{Method, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    resource: String,
}

/// The operator's metrics. One per operator instance (tests run several in
/// one process), shared by the controller, the client and the HTTP server.
pub struct Metrics {
    registry: Mutex<Registry>,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_errors: Family<ReasonLabel, Counter>,
    reconcile_duration: Histogram,
    applies: Family<KindLabel, Counter>,
    deletes: Family<KindLabel, Counter>,
    status_updates: Counter,
    api_requests: Family<RequestLabels, Counter>,
    leader: Gauge,
    // Plain totals, for tests and the benchmark to read without parsing.
    reconcile_total: AtomicU64,
    write_total: AtomicU64,
    request_total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let reconciles = Family::<ResultLabel, Counter>::default();
        let reconcile_errors = Family::<ReasonLabel, Counter>::default();
        // 1 ms .. ~16 s.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let applies = Family::<KindLabel, Counter>::default();
        let deletes = Family::<KindLabel, Counter>::default();
        let status_updates = Counter::default();
        let api_requests = Family::<RequestLabels, Counter>::default();
        let leader = Gauge::default();

        let mut registry = Registry::with_prefix("oxcast_operator");
        registry.register(
            "reconciles",
            "LiveApplication reconciles, by result (ok, error)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_duration.clone(),
        );
        registry.register(
            "applies",
            "Child objects written with server-side apply, by kind",
            applies.clone(),
        );
        registry.register(
            "deletes",
            "Child objects deleted because the spec no longer needs them, by kind",
            deletes.clone(),
        );
        registry.register(
            "status_updates",
            "LiveApplication status writes",
            status_updates.clone(),
        );
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API server, by verb and resource",
            api_requests.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance holds the leader lease (or runs without leader election)",
            leader.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            reconciles,
            reconcile_errors,
            reconcile_duration,
            applies,
            deletes,
            status_updates,
            api_requests,
            leader,
            reconcile_total: AtomicU64::new(0),
            write_total: AtomicU64::new(0),
            request_total: AtomicU64::new(0),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = match self.registry.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    pub fn reconciled(&self, duration: Duration, error: Option<&'static str>) {
        self.reconcile_duration.observe(duration.as_secs_f64());
        self.reconcile_total.fetch_add(1, Ordering::Relaxed);
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
        if let Some(reason) = error {
            self.reconcile_errors
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }

    pub fn applied(&self, kind: &'static str) {
        self.applies.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn deleted(&self, kind: &'static str) {
        self.deletes.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn status_updated(&self) {
        self.status_updates.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Reconciles run so far.
    pub fn reconcile_count(&self) -> u64 {
        self.reconcile_total.load(Ordering::Relaxed)
    }

    /// Requests sent so far.
    pub fn request_count(&self) -> u64 {
        self.request_total.load(Ordering::Relaxed)
    }

    /// Write requests (create, update, patch, delete) sent so far, except
    /// renewals of the leader lease and Events: the writes that reconciling
    /// causes.
    pub fn write_count(&self) -> u64 {
        self.write_total.load(Ordering::Relaxed)
    }

    /// Counts one request; called by the client's middleware.
    pub fn count_request<B>(&self, request: &Request<B>) {
        let (verb, resource) = classify(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        self.request_total.fetch_add(1, Ordering::Relaxed);
        let is_write = !matches!(verb, "get" | "list" | "watch");
        if is_write && resource != "leases" && resource != "events" {
            self.write_total.fetch_add(1, Ordering::Relaxed);
        }
        self.api_requests
            .get_or_create(&RequestLabels { verb, resource })
            .inc();
    }
}

/// Kubernetes verb and resource (`deployments`, `liveapplications/status`)
/// of a request, from its method and path.
fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest: &[&str] = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _ns, more @ ..] if !more.is_empty() => more,
        other => other,
    };
    let (resource, named) = match rest {
        [] => ("other".to_string(), false),
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_like_the_api_server_does() {
        let cases = [
            (
                Method::GET,
                "/apis/apps/v1/deployments",
                Some("labelSelector=x&watch=true"),
                "watch",
                "deployments",
            ),
            (
                Method::GET,
                "/apis/apps/v1/namespaces/ns/deployments",
                None,
                "list",
                "deployments",
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/ns/deployments/live",
                Some("fieldManager=x"),
                "patch",
                "deployments",
            ),
            (
                Method::PATCH,
                "/apis/live.oxcast.dev/v1alpha1/namespaces/ns/liveapplications/live/status",
                None,
                "patch",
                "liveapplications/status",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ns/services/live-rtmp",
                None,
                "get",
                "services",
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases/op",
                None,
                "update",
                "leases",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/ns/persistentvolumeclaims/x",
                None,
                "delete",
                "persistentvolumeclaims",
            ),
            (
                Method::GET,
                "/api/v1/namespaces",
                None,
                "list",
                "namespaces",
            ),
        ];
        for (method, path, query, verb, resource) in cases {
            assert_eq!(
                classify(&method, path, query),
                (verb, resource.to_string()),
                "{path}"
            );
        }
    }

    #[test]
    fn writes_exclude_leases_and_events() {
        let m = Metrics::new();
        let req = |method: Method, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .expect("request")
        };
        m.count_request(&req(
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/n/leases/l",
        ));
        m.count_request(&req(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/n/events",
        ));
        m.count_request(&req(Method::GET, "/api/v1/namespaces/n/configmaps"));
        assert_eq!(m.write_count(), 0);
        m.count_request(&req(Method::PATCH, "/api/v1/namespaces/n/configmaps/c"));
        assert_eq!(m.write_count(), 1);
        assert_eq!(m.request_count(), 4);
        let text = m.encode();
        assert!(
            text.contains(
                "oxcast_operator_api_requests_total{verb=\"patch\",resource=\"configmaps\"} 1"
            ),
            "{text}"
        );
    }
}
