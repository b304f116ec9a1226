//! Support for the operator's cluster tests and the scale benchmark: the
//! operator run in-process against the test control plane, the CRD
//! installed from its checked-in manifest, and waits on LiveApplication
//! conditions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::conditions;
use kube::{Api, Client, ResourceExt};
use oxcast_crds::live_application::LiveApplication;
use oxcast_operator::{CancellationToken, Health, LeaseSettings, Metrics, Settings};

use crate::cluster::{self, Error, TestCluster};

/// Field manager of the tests' own writes.
pub const TEST_MANAGER: &str = "oxcast-tests";
/// Image the test LiveApplications run: kwok's pods run no containers, so
/// any name works there; on a real cluster point `OXCAST_TEST_INGEST_IMAGE`
/// at a built ingest image.
pub const INGEST_IMAGE_ENV: &str = "OXCAST_TEST_INGEST_IMAGE";

/// The ingest image for test LiveApplications.
pub fn ingest_image() -> String {
    std::env::var(INGEST_IMAGE_ENV)
        .ok()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| "ghcr.io/oxcast/oxcast-ingest:test".to_string())
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of `examples/<name>`.
pub fn example_path(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

/// Installs the checked-in CRD manifest (what users apply) with server-side
/// apply and waits until it is Established. Idempotent.
pub async fn install_crd(client: &Client) -> Result<CustomResourceDefinition, Error> {
    let path = repo_root().join("crds/yaml/liveapplication.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(Error::io_path("read the CRD manifest", &path))?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text)
        .map_err(|e| Error::Config(format!("parse {}: {e}", path.display())))?;
    let name = crd.name_any();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    cluster::wait_for_condition(
        crds,
        &name,
        Duration::from_secs(60),
        conditions::is_crd_established(),
    )
    .await?
    .ok_or_else(|| Error::Config("the CRD vanished after it was applied".into()))
}

/// Operator settings for a test: the given namespaces only, the test image,
/// a short resync so "nothing changes on resync" is observable quickly.
pub fn settings(identity: &str, namespaces: &[&str]) -> Settings {
    let mut settings = Settings::new(identity);
    settings.controller.watch_namespaces = namespaces.iter().map(|n| n.to_string()).collect();
    settings.controller.build.default_image = ingest_image();
    settings.controller.resync_interval = Duration::from_secs(2);
    settings
}

/// Leader election settings with short timings, so take-overs happen in
/// seconds.
pub fn fast_lease(name: &str, namespace: &str, identity: &str) -> LeaseSettings {
    let mut lease = LeaseSettings::new(name, namespace, identity);
    lease.lease_duration = Duration::from_secs(4);
    lease.renew_deadline = Duration::from_secs(3);
    lease.retry_period = Duration::from_millis(500);
    lease
}

/// An operator instance running on the caller's tokio runtime.
pub struct RunningOperator {
    pub identity: String,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), oxcast_operator::Error>>>,
}

impl RunningOperator {
    /// Starts `oxcast_operator::run` with the cluster's admin credentials.
    pub fn start(cluster: &TestCluster, settings: Settings) -> Self {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let cancel = CancellationToken::new();
        let identity = settings.controller.identity.clone();
        let task = tokio::spawn(oxcast_operator::run(
            cluster.config().clone(),
            settings,
            metrics.clone(),
            health.clone(),
            cancel.clone(),
        ));
        Self {
            identity,
            metrics,
            health,
            cancel,
            task: Some(task),
        }
    }

    /// SIGTERM, in effect: finish in-flight work, release the lease.
    pub async fn stop(mut self) -> Result<(), String> {
        self.cancel.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(result)) => result.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("operator task failed: {e}")),
            Err(_) => Err("the operator did not stop within 60 s".into()),
        }
    }

    /// A crash: the task is dropped mid-flight and the lease is not released.
    pub fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Whether `run` has returned (e.g. after losing the lease).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Plays the cloud controller: gives Service `name` a load balancer address.
pub async fn assign_load_balancer(
    services: &Api<Service>,
    name: &str,
    ip: &str,
) -> Result<(), Error> {
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
    services
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Whether condition `type_` of a LiveApplication has `status` for its
/// current generation.
pub fn has_condition(app: &LiveApplication, type_: &str, status: &str) -> bool {
    let Some(s) = app.status.as_ref() else {
        return false;
    };
    s.observed_generation == app.metadata.generation
        && s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == status)
}

/// The reason of condition `type_`, if set.
pub fn condition_reason(app: &LiveApplication, type_: &str) -> Option<String> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.clone())
}

/// The message of condition `type_`, if set.
pub fn condition_message(app: &LiveApplication, type_: &str) -> Option<String> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
}

/// Watches LiveApplication `name` until `check` holds.
pub async fn wait_for_app(
    apps: &Api<LiveApplication>,
    name: &str,
    timeout: Duration,
    check: impl Fn(&LiveApplication) -> bool,
) -> Result<LiveApplication, Error> {
    cluster::wait_for_condition(
        apps.clone(),
        name,
        timeout,
        move |app: Option<&LiveApplication>| app.is_some_and(&check),
    )
    .await?
    .ok_or_else(|| Error::Config(format!("LiveApplication {name} vanished")))
}
