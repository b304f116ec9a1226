//! A real LoadBalancer implementation for the test cluster: MetalLB's
//! controller, built from its Go module by `tests/cluster/build.sh`
//! (`METALLB_VERSION` in `versions.env`), run as a child process of the test
//! binary with the cluster's admin kubeconfig.
//!
//! Only address assignment is needed: the node harness routes the pool from
//! the host into the node's network namespace, where kube-proxy (iptables
//! mode) DNATs LoadBalancer addresses to pods. So there is no speaker (no ARP,
//! no BGP) and no memberlist secret (`--ml-secret-name` unset). The
//! controller runs out of cluster:
//! - with the admin kubeconfig (`--kubeconfig`), so no ServiceAccount or RBAC
//!   is installed (upstream's controller ClusterRole is what an in-cluster
//!   install would need);
//! - with `--webhook-mode=disabled` and `--disable-cert-rotation`: upstream's
//!   validating webhooks only reject bad MetalLB objects early (the
//!   controller validates them again when it loads them), and the CRDs from
//!   `config/crd/bases` carry no conversion webhook, so nothing needs a
//!   webhook server, certificates or their rotation. (The API server runs on
//!   the host and could reach a webhook on loopback, but registering one
//!   would make every MetalLB object write depend on this process.)
//! - its Prometheus endpoint on a free port (v0.15 always serves one).
//!
//! The flags are those of the pinned version (v0.15.x). v0.16 reads its own
//! Pod at startup (`--pod-name`, to own a ConfigurationState object) and
//! takes `--health-probe-port`; a bump must add a never-scheduled
//! placeholder Pod (a scheduling gate keeps it off every node) and those
//! flags.
//!
//! ```no_run
//! # async fn demo() -> Result<(), oxcast_tests::cluster::Error> {
//! let cluster = oxcast_tests::cluster::shared().await?;
//! let lb = oxcast_tests::cluster::loadbalancer::MetalLb::start(
//!     cluster.kubeconfig(),
//!     "198.18.200.0/24",
//! )
//! .await?;
//! // Services of type LoadBalancer now get an address from the pool.
//! drop(lb); // stops the controller
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::conditions;
use kube::{Api, Client, Config, ResourceExt};
use serde::Deserialize;
use serde_json::json;

use super::process::{self, Processes};
use super::{eventually, wait_for_condition, Binaries, Error};

/// Namespace of MetalLB's objects (upstream's default).
pub const NAMESPACE: &str = "metallb-system";
/// Name of the IPAddressPool [`MetalLb::start`] creates.
pub const POOL_NAME: &str = "oxcast-test-pool";
/// The controller binary build.sh installs next to the control plane's.
pub const CONTROLLER_BINARY: &str = "metallb-controller";
/// MetalLB's CRDs, collected by build.sh from the same module version.
pub const CRDS_FILE: &str = "metallb-crds.yaml";
/// Annotation that asks MetalLB for specific addresses (comma-separated).
pub const LOAD_BALANCER_IPS_ANNOTATION: &str = "metallb.io/loadBalancerIPs";
/// Annotation MetalLB sets on a Service to name the pool its address came from.
pub const ALLOCATED_FROM_POOL_ANNOTATION: &str = "metallb.io/ip-allocated-from-pool";

const FIELD_MANAGER: &str = "oxcast-tests-metallb";
const CRD_ESTABLISHED: Duration = Duration::from_secs(60);
const POOL_GONE: Duration = Duration::from_secs(60);
const CONTROLLER_READY: Duration = Duration::from_secs(60);
const LOG_NAME: &str = "metallb-controller";

/// The IPAddressPool resource (metallb.io/v1beta1).
pub fn ip_address_pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metallb.io", "v1beta1", "IPAddressPool"),
        "ipaddresspools",
    )
}

/// A running MetalLB controller. Dropping it stops the controller; the CRDs,
/// the namespace, the pool and the addresses already in Service status stay
/// (a later [`MetalLb::start`] picks them up again). One at a time per
/// cluster: two controllers would hand out the same addresses.
pub struct MetalLb {
    pool: String,
    pid: u32,
    log: PathBuf,
    startup: Duration,
    processes: Processes,
    /// Spawned the controller and lives until the guard drops: the child's
    /// `PR_SET_PDEATHSIG` fires when the *thread* that forked it ends, so the
    /// spawning thread must outlive the controller, whichever thread (a test's,
    /// a blocking-pool worker) called `start`.
    keeper: Option<Keeper>,
    /// Holds the log directory when the kubeconfig's directory has none.
    _log_dir: Option<tempfile::TempDir>,
}

impl MetalLb {
    /// Installs MetalLB's CRDs (waiting until each is Established), the
    /// `metallb-system` namespace and an IPAddressPool
    /// named [`POOL_NAME`] with `pool` (a CIDR or `first-last` range; `.0`
    /// and `.255` addresses are skipped), starts the controller and returns
    /// once it has loaded the pool (the pool's status counts its addresses).
    ///
    /// The binary and the CRDs come from `tests/cluster/build.sh` (built on
    /// first use, like the control plane). The controller's log is
    /// `logs/metallb-controller.log` next to the kubeconfig when that
    /// directory exists (a local cluster's run directory), else in a
    /// temporary directory; see [`MetalLb::log_path`].
    pub async fn start(kubeconfig: &Path, pool: &str) -> Result<MetalLb, Error> {
        let started = Instant::now();
        let bins = tokio::task::spawn_blocking(Binaries::locate)
            .await
            .map_err(|e| Error::Config(format!("the binary lookup task failed: {e}")))??;
        let controller = bins.path(CONTROLLER_BINARY);
        let crds_path = bins.path(CRDS_FILE);
        for path in [&controller, &crds_path] {
            if !path.is_file() {
                return Err(Error::MissingBinary { path: path.clone() });
            }
        }

        let client = client_for(kubeconfig).await?;
        install_crds(&client, &crds_path).await?;
        install_namespace(&client).await?;
        recreate_pool(&client, pool).await?;

        let (log_dir, temp_log_dir) = log_dir_for(kubeconfig)?;
        let args = controller_args(kubeconfig, process::free_port()?);
        let (processes, keeper) = spawn_kept(log_dir.clone(), controller, args)?;
        let mut lb = MetalLb {
            pool: pool.to_string(),
            pid: 0,
            log: log_dir.join(format!("{LOG_NAME}.log")),
            startup: Duration::ZERO,
            processes,
            keeper: Some(keeper),
            _log_dir: temp_log_dir,
        };
        lb.pid = lb.processes.first_pid().unwrap_or(0);
        lb.wait_ready(&client).await?;
        lb.startup = started.elapsed();
        tracing::info!(pool, startup = ?lb.startup, log = %lb.log.display(), "MetalLB controller is running");
        Ok(lb)
    }

    /// The address range the pool was created with.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Process id of the controller.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The controller's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// From the call to [`MetalLb::start`] until the controller had loaded
    /// the pool (includes applying the CRDs; not a build, when one ran).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Fails with the controller's log tail when it is no longer running.
    pub fn check_running(&mut self) -> Result<(), Error> {
        self.processes.check_running()
    }

    /// Waits until the controller has loaded the pool: MetalLB writes the
    /// pool's address counters only from its allocator, so a status with
    /// available addresses proves the configuration was read and accepted.
    /// A dead controller, or a configuration MetalLB rejects (it logs why;
    /// its webhooks, which would refuse the pool up front, are off), fails
    /// at once.
    async fn wait_ready(&mut self, client: &Client) -> Result<(), Error> {
        let pools: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), NAMESPACE, &ip_address_pool_resource());
        // A dead controller, a rejected pool or a failed read end the wait
        // (a final `Err` value); only a pool without addresses is "not yet".
        let waited = crate::wait::eventually("the pool", CONTROLLER_READY, || {
            let alive = self.processes.check_running();
            let log = self.log.clone();
            let pool = self.pool.clone();
            let pools = pools.clone();
            async move {
                if let Err(dead) = alive {
                    return Ok::<_, Error>(Some(Err(dead)));
                }
                if let Some(reason) = rejected_config(&log).await {
                    return Ok(Some(Err(Error::Config(format!(
                        "MetalLB rejected IPAddressPool {NAMESPACE}/{POOL_NAME} with {pool:?}: {reason}"
                    )))));
                }
                let loaded = match pools.get_opt(POOL_NAME).await {
                    Err(e) => return Ok(Some(Err(e.into()))),
                    Ok(found) => found.is_some_and(|pool| {
                        pool.data["status"]["availableIPv4"].as_i64().unwrap_or(0)
                            + pool.data["status"]["availableIPv6"].as_i64().unwrap_or(0)
                            > 0
                    }),
                };
                Ok(loaded.then_some(Ok(())))
            }
        });
        match waited.await {
            Ok(done) => done,
            Err(_) => Err(Error::Timeout {
                what: format!(
                    "the MetalLB controller to load IPAddressPool {NAMESPACE}/{POOL_NAME} \
                     with {:?}; the end of {}:\n{}",
                    self.pool,
                    self.log.display(),
                    process::log_tail(&self.log)
                ),
                timeout: CONTROLLER_READY,
            }),
        }
    }
}

impl Drop for MetalLb {
    fn drop(&mut self) {
        self.processes.kill_all();
        if let Some((stop, thread)) = self.keeper.take() {
            drop(stop);
            let _ = thread.join();
        }
        tracing::debug!(pid = self.pid, "stopped the MetalLB controller");
    }
}

/// Why the controller refused its configuration, if its log says so.
async fn rejected_config(log: &Path) -> Option<String> {
    let text = tokio::fs::read_to_string(log).await.ok()?;
    text.lines().find_map(config_rejection)
}

/// MetalLB logs JSON lines. Its pool reconciler logs a configuration it
/// cannot use as `level=error` with the parse error in `error` (and, in
/// v0.15, a first `error` key that the JSON encoding overwrites); failures
/// to read objects from the API, which are retried, carry a `message` too.
fn config_rejection(line: &str) -> Option<String> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    let rejected = entry["controller"] == "PoolReconciler"
        && entry["level"] == "error"
        && entry.get("message").is_none();
    if rejected {
        entry["error"].as_str().map(str::to_string)
    } else {
        None
    }
}

async fn client_for(kubeconfig: &Path) -> Result<Client, Error> {
    let config = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Reads every CRD document of `path`, applies it server-side and waits
/// until each is Established.
async fn install_crds(client: &Client, path: &Path) -> Result<(), Error> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(Error::io_path("read the MetalLB CRDs", path))?;
    let crds =
        parse_crds(&text).map_err(|e| Error::Config(format!("parse {}: {e}", path.display())))?;
    if !crds
        .iter()
        .any(|c| c.name_any() == "ipaddresspools.metallb.io")
    {
        return Err(Error::Config(format!(
            "{} holds no IPAddressPool CRD",
            path.display()
        )));
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in &crds {
        api.patch(&crd.name_any(), &params, &Patch::Apply(crd))
            .await?;
    }
    for crd in &crds {
        wait_for_condition(
            api.clone(),
            &crd.name_any(),
            CRD_ESTABLISHED,
            conditions::is_crd_established(),
        )
        .await?;
    }
    Ok(())
}

/// The CRDs of a multi-document YAML file; empty documents are skipped.
pub fn parse_crds(text: &str) -> Result<Vec<CustomResourceDefinition>, serde_yaml::Error> {
    let mut crds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        crds.push(serde_yaml::from_value(value)?);
    }
    Ok(crds)
}

/// The namespace MetalLB's objects live in.
async fn install_namespace(client: &Client) -> Result<(), Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": NAMESPACE },
    }))
    .map_err(|e| Error::Config(format!("build the {NAMESPACE} namespace: {e}")))?;
    namespaces
        .patch(
            NAMESPACE,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await?;
    Ok(())
}

/// Replaces the pool, so the status the readiness check reads can only come
/// from the controller about to start, not from an earlier one.
async fn recreate_pool(client: &Client, pool: &str) -> Result<(), Error> {
    let resource = ip_address_pool_resource();
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
    match pools.delete(POOL_NAME, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    eventually("the old IPAddressPool to be gone", POOL_GONE, || {
        let pools = pools.clone();
        async move {
            let gone = pools.get_opt(POOL_NAME).await?.is_none();
            Ok::<_, kube::Error>(gone.then_some(()))
        }
    })
    .await?;
    let object = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": { "name": POOL_NAME, "namespace": NAMESPACE },
        "spec": {
            "addresses": [pool],
            "autoAssign": true,
            "avoidBuggyIPs": true,
        },
    });
    pools
        .patch(
            POOL_NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await?;
    Ok(())
}

fn log_dir_for(kubeconfig: &Path) -> Result<(PathBuf, Option<tempfile::TempDir>), Error> {
    if let Some(logs) = kubeconfig.parent().map(|d| d.join("logs")) {
        if logs.is_dir() {
            return Ok((logs, None));
        }
    }
    let temp = tempfile::Builder::new()
        .prefix("oxcast-metallb-")
        .tempdir()
        .map_err(Error::io(
            "create a log directory for the MetalLB controller",
        ))?;
    Ok((temp.path().to_path_buf(), Some(temp)))
}

fn controller_args(kubeconfig: &Path, metrics_port: u16) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--namespace={NAMESPACE}"),
        "--webhook-mode=disabled".into(),
        "--disable-cert-rotation".into(),
        // Its default (7472) would collide between test binaries running at
        // once; nothing scrapes it.
        format!("--port={metrics_port}"),
        "--log-level=info".into(),
    ]
}

type Keeper = (mpsc::Sender<()>, JoinHandle<()>);

/// Spawns the controller from a thread that stays alive until the returned
/// sender is dropped (see [`MetalLb::keeper`]).
fn spawn_kept(
    log_dir: PathBuf,
    program: PathBuf,
    args: Vec<String>,
) -> Result<(Processes, Keeper), Error> {
    let (result_tx, result_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("oxcast-metallb".into())
        .spawn(move || {
            let spawned = Processes::new(log_dir).and_then(|mut procs| {
                procs.spawn(LOG_NAME, &program, &args)?;
                Ok(procs)
            });
            let ok = spawned.is_ok();
            let _ = result_tx.send(spawned);
            if ok {
                // Returns when the guard drops its sender.
                let _ = stop_rx.recv();
            }
        })
        .map_err(Error::io("spawn the MetalLB keeper thread"))?;
    match result_rx.recv() {
        Ok(Ok(procs)) => Ok((procs, (stop_tx, thread))),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(Error::Config(
            "the MetalLB keeper thread panicked while spawning the controller".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_crds_and_skips_empty_documents() {
        let text = "# header\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: a.example.com\nspec:\n  group: example.com\n  names: {kind: A, plural: a}\n  scope: Namespaced\n  versions: []\n---\n\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: b.example.com\nspec:\n  group: example.com\n  names: {kind: B, plural: b}\n  scope: Cluster\n  versions: []\n";
        let crds = parse_crds(text).expect("parse");
        let names: Vec<String> = crds.iter().map(|c| c.name_any()).collect();
        assert_eq!(names, ["a.example.com", "b.example.com"]);
    }

    /// A test binary may keep one controller for all its tests in a static.
    #[test]
    fn the_guard_can_live_in_a_static() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<MetalLb>();
    }

    #[test]
    fn recognises_a_rejected_configuration_in_the_log() {
        let rejected = r#"{"caller":"pool_controller.go:81","controller":"PoolReconciler","error":"parsing address pool p: invalid CIDR \"x\"","level":"error","ts":"2026-12-01T02:01:19Z"}"#;
        assert_eq!(
            config_rejection(rejected).as_deref(),
            Some(r#"parsing address pool p: invalid CIDR "x""#)
        );
        let transient = r#"{"controller":"PoolReconciler","message":"failed to get ipaddresspools","error":"connection refused","level":"error"}"#;
        assert_eq!(config_rejection(transient), None);
        let info = r#"{"controller":"PoolReconciler","event":"config reloaded","level":"info"}"#;
        assert_eq!(config_rejection(info), None);
        assert_eq!(config_rejection("not json"), None);
    }

    #[test]
    fn controller_runs_without_webhooks_metrics_or_memberlist() {
        let args = controller_args(Path::new("/k/admin.kubeconfig"), 4242);
        assert!(args.contains(&"--webhook-mode=disabled".to_string()));
        assert!(args.contains(&"--port=4242".to_string()));
        assert!(args.contains(&"--kubeconfig=/k/admin.kubeconfig".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--ml-secret-name")));
    }
}
