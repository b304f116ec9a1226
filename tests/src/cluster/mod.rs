//! A real Kubernetes control plane for the test suite.
//!
//! The operator has to be tested against a real API server, not a mock:
//! OpenAPI and CEL validation, server-side apply, owner-reference garbage
//! collection and RBAC all live there. kind needs Docker, so instead this
//! module starts etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok (fake nodes whose pods turn Running and Ready
//! without containers) as plain processes on loopback ports, from binaries
//! that `tests/cluster/build.sh` builds from the Go modules and caches.
//!
//! One control plane per test binary, started on first use and shared by its
//! tests; each test gets its own namespace. Nothing outlives the test binary
//! (`process.rs` explains how that holds on panics, Ctrl-C and SIGKILL).
//!
//! ```no_run
//! # async fn demo() -> Result<(), oxcast_tests::cluster::Error> {
//! let ctx = oxcast_tests::cluster::test_context("smoke").await?;
//! let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = ctx.api();
//! pods.list(&Default::default()).await?;
//! # Ok(()) }
//! ```
//!
//! With `OXCAST_TEST_USE_EXISTING_CLUSTER=1` and `KUBECONFIG` set, the tests
//! run against that cluster instead (kind, a developer's cluster) and nothing
//! is started.

mod binaries;
mod control_plane;
pub mod loadbalancer;
pub mod node;
mod pki;
mod process;

use std::ffi::OsString;
use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions};
use kube::runtime::wait::{await_condition, Condition};
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;

pub use binaries::{build_script, Binaries, BIN_DIR_ENV, REQUIRED as REQUIRED_BINARIES};
pub use control_plane::KEEP_RUN_DIR_ENV;

/// Set to `1` (with `KUBECONFIG`) to test against an existing cluster.
pub const USE_EXISTING_CLUSTER_ENV: &str = "OXCAST_TEST_USE_EXISTING_CLUSTER";
/// Set to keep test namespaces instead of deleting them, for debugging.
pub const KEEP_NAMESPACES_ENV: &str = "OXCAST_TEST_KEEP_NAMESPACES";
/// Label on every namespace the harness creates, so leftovers in a shared
/// cluster can be found and removed (`kubectl delete ns -l oxcast.dev/test`).
pub const TEST_NAMESPACE_LABEL: &str = "oxcast.dev/test";

/// How long a new namespace may take to get its `default` ServiceAccount.
const NAMESPACE_READY: Duration = Duration::from_secs(60);

/// Everything that can go wrong while providing a cluster to a test.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {name} ({}): {source}", program.display())]
    Spawn {
        name: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{name} exited during startup ({}); the end of {}:\n{log_tail}",
        process::describe_status(status),
        log.display()
    )]
    ProcessExited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
        log_tail: String,
    },
    #[error("control-plane binary {} is missing; run tests/cluster/build.sh", path.display())]
    MissingBinary { path: PathBuf },
    #[error("{} failed ({status}); see its output above", script.display())]
    BuildScript { script: PathBuf, status: ExitStatus },
    #[error("generating test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("reading a kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("the shared test cluster is unavailable: {0}")]
    Startup(Arc<Error>),
    #[error("{0}")]
    Config(String),
}

impl From<crate::wait::TimedOut> for Error {
    fn from(t: crate::wait::TimedOut) -> Self {
        Error::Timeout {
            what: t.described(),
            timeout: t.timeout,
        }
    }
}

impl Error {
    /// Adapter for `map_err` that says what was being done.
    pub(crate) fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            what: what.to_string(),
            source,
        }
    }

    /// Like [`Error::io`], naming the path involved.
    pub(crate) fn io_path<'a>(
        what: &'a str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::Io {
            what: format!("{what} ({})", path.display()),
            source,
        }
    }
}

/// The cluster the tests of this binary share.
pub struct TestCluster {
    admin_config: Config,
    kubeconfig: PathBuf,
    local: Option<Local>,
}

/// What only a cluster started by the harness has.
struct Local {
    bins: Binaries,
    control_plane: control_plane::LocalControlPlane,
}

static SHARED: OnceLock<Result<TestCluster, Arc<Error>>> = OnceLock::new();

/// The cluster shared by all tests of this binary, started on first call.
///
/// A failed start is remembered, so every test reports the same error
/// instead of each one trying (and timing out) again.
pub async fn shared() -> Result<&'static TestCluster, Error> {
    if let Some(result) = SHARED.get() {
        return result.as_ref().map_err(|e| Error::Startup(e.clone()));
    }
    // Startup blocks (it may even build the binaries), so keep it off the
    // test's async runtime.
    tokio::task::spawn_blocking(shared_blocking)
        .await
        .map_err(|e| Error::Config(format!("the cluster startup task failed: {e}")))?
}

/// [`shared`] for synchronous callers.
pub fn shared_blocking() -> Result<&'static TestCluster, Error> {
    SHARED
        .get_or_init(|| start_supervised().map_err(Arc::new))
        .as_ref()
        .map_err(|e| Error::Startup(e.clone()))
}

/// Starts the cluster on a dedicated thread that then stays alive for the
/// rest of the process: children get `PR_SET_PDEATHSIG`, which fires when the
/// thread that spawned them ends, so they must not be spawned from a test
/// thread (libtest ends each test's thread when the test finishes).
fn start_supervised() -> Result<TestCluster, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("oxcast-test-cluster".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::io("build the cluster startup runtime"))
                .and_then(|rt| rt.block_on(start()));
            let owns_processes = matches!(&result, Ok(c) if c.local.is_some());
            let _ = tx.send(result);
            if owns_processes {
                loop {
                    std::thread::park();
                }
            }
        })
        .map_err(Error::io("spawn the cluster supervisor thread"))?;
    rx.recv().map_err(|_| {
        Error::Config("the cluster supervisor thread panicked during startup".into())
    })?
}

async fn start() -> Result<TestCluster, Error> {
    if std::env::var(USE_EXISTING_CLUSTER_ENV).is_ok_and(|v| v == "1") {
        return existing_cluster().await;
    }
    // Blocking (it may build the binaries), which is harmless here: this runs
    // on the supervisor thread's own single-threaded runtime.
    let bins = Binaries::locate()?;
    let cp = control_plane::start(&bins, control_plane::Mode::Kwok).await?;
    Ok(TestCluster {
        admin_config: cp.admin_config.clone(),
        kubeconfig: cp.admin_kubeconfig.clone(),
        local: Some(Local {
            bins,
            control_plane: cp,
        }),
    })
}

async fn existing_cluster() -> Result<TestCluster, Error> {
    let paths = std::env::var_os("KUBECONFIG")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::Config(format!(
                "{USE_EXISTING_CLUSTER_ENV}=1 needs KUBECONFIG to point at the cluster"
            ))
        })?;
    let kubeconfig =
        first_path(&paths).ok_or_else(|| Error::Config("KUBECONFIG names no file".into()))?;
    let admin_config = Config::from_kubeconfig(&KubeConfigOptions::default()).await?;
    tracing::info!(kubeconfig = %kubeconfig.display(), server = %admin_config.cluster_url, "using an existing cluster");
    Ok(TestCluster {
        admin_config,
        kubeconfig,
        local: None,
    })
}

fn first_path(list: &OsString) -> Option<PathBuf> {
    std::env::split_paths(list).find(|p| !p.as_os_str().is_empty())
}

impl TestCluster {
    /// A client with cluster-admin rights. Call it inside the test's tokio
    /// runtime: a client belongs to the runtime that created it.
    pub fn client(&self) -> Result<Client, Error> {
        Ok(Client::try_from(self.admin_config.clone())?)
    }

    /// The admin client configuration, to derive other identities from.
    pub fn config(&self) -> &Config {
        &self.admin_config
    }

    /// A client that impersonates `user` in `groups`: RBAC decisions are made
    /// for that identity, as `kubectl --as` does.
    pub fn client_as(&self, user: &str, groups: &[&str]) -> Result<Client, Error> {
        let mut config = self.admin_config.clone();
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        Ok(Client::try_from(config)?)
    }

    /// A client that authenticates with a real token of ServiceAccount
    /// `namespace/name` (created when missing), exactly as a pod would.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Client, Error> {
        let admin = self.client()?;
        let accounts: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        if accounts.get_opt(name).await?.is_none() {
            let mut sa = ServiceAccount::default();
            sa.metadata.name = Some(name.to_string());
            accounts.create(&PostParams::default(), &sa).await?;
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let issued: TokenRequest = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await?;
        let token = issued.status.map(|s| s.token).ok_or_else(|| {
            Error::Config(format!(
                "TokenRequest for {namespace}/{name} returned no token"
            ))
        })?;
        let mut config = self.admin_config.clone();
        // AuthInfo keeps the token in a secret type; build it through serde
        // so only the token, and no admin credential, is carried over.
        config.auth_info =
            serde_json::from_value::<AuthInfo>(serde_json::json!({ "token": token }))
                .map_err(|e| Error::Config(format!("build token credentials: {e}")))?;
        Ok(Client::try_from(config)?)
    }

    /// Path of an admin kubeconfig for this cluster (for kubectl, helm, or an
    /// operator binary started by a test).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Whether the harness started this cluster (as opposed to
    /// `OXCAST_TEST_USE_EXISTING_CLUSTER`).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// Directory of the control-plane binaries, for a local cluster.
    pub fn bin_dir(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.bins.dir())
    }

    /// For a test that runs on the local control plane only (`why`: it
    /// installs cluster-scoped objects, or runs binaries against it): the
    /// directory of the control-plane binaries. On an existing cluster
    /// (`OXCAST_TEST_USE_EXISTING_CLUSTER`) the test fails, saying why,
    /// rather than passing without having run.
    #[track_caller]
    pub fn expect_local(&self, why: &str) -> &Path {
        match self.bin_dir() {
            Some(dir) => dir,
            None => panic!(
                "this test runs on the local control plane only ({why}); \
                 unset {USE_EXISTING_CLUSTER_ENV} or skip it by name"
            ),
        }
    }

    /// Scratch directory of a local cluster: `logs/` holds each component's log.
    pub fn run_dir(&self) -> Option<&Path> {
        self.local
            .as_ref()
            .map(|l| l.control_plane.run_dir.as_path())
    }

    /// The kwok node of a local cluster; workloads are scheduled there.
    pub fn fake_node(&self) -> Option<&'static str> {
        self.local
            .as_ref()
            .filter(|l| l.control_plane.mode == control_plane::Mode::Kwok)
            .map(|_| control_plane::FAKE_NODE_NAME)
    }

    /// `kubectl` pointed at this cluster: the built one for a local cluster,
    /// the one on `PATH` otherwise.
    pub fn kubectl(&self) -> Command {
        let program = match &self.local {
            Some(l) => l.bins.path("kubectl"),
            None => PathBuf::from("kubectl"),
        };
        let mut cmd = Command::new(program);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// A fresh namespace, deleted when the returned guard drops.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace, Error> {
        let client = self.client()?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.generate_name = Some(format!("oxcast-{}-", sanitize(prefix)));
        ns.metadata.labels = Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into());
        let created = namespaces.create(&PostParams::default(), &ns).await?;
        let name = created.metadata.name.ok_or_else(|| {
            Error::Config("the API server returned a namespace without a name".into())
        })?;
        let guard = TestNamespace {
            name,
            config: self.admin_config.clone(),
        };
        // Pods are rejected until the namespace's `default` ServiceAccount
        // exists; hand out the namespace only once it can run workloads.
        let accounts: Api<ServiceAccount> = Api::namespaced(client, &guard.name);
        eventually(
            "the default ServiceAccount of a new namespace",
            NAMESPACE_READY,
            || {
                let accounts = accounts.clone();
                async move { accounts.get_opt("default").await.map(|sa| sa.map(|_| ())) }
            },
        )
        .await?;
        Ok(guard)
    }
}

/// Turns a test name into something valid inside a namespace name.
fn sanitize(prefix: &str) -> String {
    let mut out: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(40);
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "test".to_string()
    } else {
        trimmed.to_string()
    }
}

/// A namespace that belongs to one test. Dropping it deletes the namespace
/// (in the background on the server), also when the test panics.
pub struct TestNamespace {
    name: String,
    config: Config,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_NAMESPACES_ENV).is_some() {
            tracing::info!(namespace = %self.name, "keeping test namespace ({KEEP_NAMESPACES_ENV} is set)");
            return;
        }
        let name = self.name.clone();
        let config = self.config.clone();
        // Drop cannot await, and the test's runtime may be shutting down, so
        // the delete runs on a short-lived thread with its own runtime.
        let deleted = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let client = Client::try_from(config).map_err(|e| e.to_string())?;
                let namespaces: Api<Namespace> = Api::all(client);
                match namespaces.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .join();
        match deleted {
            Ok(Ok(())) => tracing::debug!(namespace = %self.name, "deleted test namespace"),
            Ok(Err(e)) => {
                tracing::warn!(namespace = %self.name, error = %e, "could not delete test namespace")
            }
            Err(_) => tracing::warn!(namespace = %self.name, "namespace cleanup thread panicked"),
        }
    }
}

/// What a test usually needs: the shared cluster, an admin client made on
/// the test's runtime, and a namespace of its own.
pub struct TestContext {
    pub cluster: &'static TestCluster,
    pub client: Client,
    pub namespace: TestNamespace,
}

impl TestContext {
    /// The test namespace's name.
    pub fn ns(&self) -> &str {
        self.namespace.name()
    }

    /// An API handle for `K` in the test namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), self.ns())
    }
}

/// What a cluster test starts with: [`test_context`], with the tests'
/// tracing set up ([`crate::log::init_tracing`]); panics when there is no
/// cluster (a test without one fails, it does not pass untested).
pub async fn expect_test_context(prefix: &str) -> TestContext {
    crate::log::init_tracing();
    match test_context(prefix).await {
        Ok(ctx) => ctx,
        Err(e) => panic!("no test cluster: {e}"),
    }
}

/// Shared cluster + client + fresh namespace named after `prefix`.
pub async fn test_context(prefix: &str) -> Result<TestContext, Error> {
    let cluster = shared().await?;
    let client = cluster.client()?;
    let namespace = cluster.namespace(prefix).await?;
    Ok(TestContext {
        cluster,
        client,
        namespace,
    })
}

/// Polls `probe` until it returns `Ok(Some(value))`, for conditions that
/// cannot be watched: [`crate::wait::eventually`] with this module's error.
/// Errors count as "not yet" (an RBAC change, for one, takes a moment to
/// apply) and the last one is reported on time-out.
pub async fn eventually<T, E, F, Fut>(what: &str, timeout: Duration, probe: F) -> Result<T, Error>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    Ok(crate::wait::eventually(what, timeout, probe).await?)
}

/// Watches object `name` until `condition` holds and returns it: no polling
/// interval to tune, and the object as it was when the condition held.
pub async fn wait_for_condition<K>(
    api: Api<K>,
    name: &str,
    timeout: Duration,
    condition: impl Condition<K>,
) -> Result<Option<K>, Error>
where
    K: Clone + std::fmt::Debug + Send + DeserializeOwned + Resource + 'static,
    <K as Resource>::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).to_string();
    match tokio::time::timeout(timeout, await_condition(api, name, condition)).await {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(e)) => Err(Error::Config(format!("watching {kind} {name}: {e}"))),
        Err(_) => Err(Error::Timeout {
            what: format!("{kind} {name} to reach the expected condition"),
            timeout,
        }),
    }
}
