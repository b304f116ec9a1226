//! Starting a local control plane: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok as plain processes on
//! loopback ports, the way controller-runtime's envtest does it, plus the
//! controllers (garbage collection, ReplicaSets, ServiceAccounts) and fake
//! nodes that envtest leaves out.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::binaries::Binaries;
use super::pki::{CertPair, Pki, FRONT_PROXY_CLIENT};
use super::process::{self, ExitCleanup, Processes};
use super::Error;

/// Range the API server assigns Service cluster IPs from.
const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
/// The same with a real node: inside the test range 198.18.0.0/15, routed
/// from the host into the node (see `node.rs`).
pub(crate) const NODE_SERVICE_CLUSTER_IP_RANGE: &str = "198.19.0.0/16";
/// Pod IPs kwok hands out on its fake node.
const POD_CIDR: &str = "10.244.0.0/16";
/// Issuer (and default audience) of ServiceAccount tokens, as in most clusters.
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The annotation kwok is told to look for; nodes without it are left alone.
pub(crate) const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
/// Name of the fake node every local control plane gets.
pub(crate) const FAKE_NODE_NAME: &str = "kwok-node-0";

/// Environment variable: keep the run directory (logs, etcd data, PKI) after
/// the test binary exits, for debugging.
pub const KEEP_RUN_DIR_ENV: &str = "OXCAST_TEST_KEEP_CLUSTER_DIR";

/// Startup deadlines. Generous: a 2-core CI machine may be compiling at the
/// same time, and the first start of the API server installs every built-in
/// API and bootstrap RBAC object.
const API_SERVER_READY: Duration = Duration::from_secs(180);
const CONTROLLERS_READY: Duration = Duration::from_secs(120);
const NODE_READY: Duration = Duration::from_secs(120);

/// What kind of cluster the control plane serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// kwok's fake node; the API server on loopback (the default).
    Kwok,
    /// A real node (`node.rs`): the API server on the host end of the node's
    /// veth (which must exist already), Services in 198.19.0.0/16, the
    /// `kubernetes` Service backed by the API server, Pod Security
    /// `restricted` enforced everywhere but kube-system, and no kwok (its
    /// fake node would attract pods that never run).
    RealNode,
}

/// A running local control plane.
pub(crate) struct LocalControlPlane {
    pub run_dir: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub admin_config: Config,
    /// `https://host:port` of the API server.
    pub server: String,
    pub mode: Mode,
    pub pki: Pki,
    /// Kept so the children stay owned; they die with the test binary.
    pub _processes: Processes,
}

/// Free loopback ports, one per listener.
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
    scheduler: u16,
    kwok: u16,
}

impl Ports {
    fn pick() -> Result<Self, Error> {
        // Each listener is closed again before the next is bound, so the
        // kernel could hand out one port twice; ask until all differ.
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 6 {
            let p = process::free_port()?;
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        Ok(Self {
            etcd_client: ports[0],
            etcd_peer: ports[1],
            apiserver: ports[2],
            controller_manager: ports[3],
            scheduler: ports[4],
            kwok: ports[5],
        })
    }
}

/// Starts every component and waits until the cluster can run workloads.
pub(crate) async fn start(bins: &Binaries, mode: Mode) -> Result<LocalControlPlane, Error> {
    let root = std::env::temp_dir().join("oxcast-cluster");
    std::fs::create_dir_all(&root).map_err(Error::io_path(
        "create the control-plane scratch root",
        &root,
    ))?;
    process::remove_stale_runs(&root);
    // Named "<pid>-…" so a later run can tell whether its owner is still alive.
    let run_dir = tempfile::Builder::new()
        .prefix(&format!("{}-", std::process::id()))
        .tempdir_in(&root)
        .map_err(Error::io_path(
            "create the control-plane run directory",
            &root,
        ))?
        .keep();
    if std::env::var_os(KEEP_RUN_DIR_ENV).is_some() {
        tracing::warn!(dir = %run_dir.display(), "keeping the control-plane run directory ({KEEP_RUN_DIR_ENV} is set)");
        let marker = run_dir.join(process::KEEP_MARKER);
        std::fs::write(&marker, b"")
            .map_err(Error::io_path("mark the run directory as kept", &marker))?;
    } else {
        process::register_for_exit_cleanup(ExitCleanup::Dir(run_dir.clone()));
    }
    tracing::info!(dir = %run_dir.display(), bin_dir = %bins.dir().display(), "starting a local Kubernetes control plane");

    let pki = Pki::generate(&run_dir.join("pki"))?;
    let ports = Ports::pick()?;
    let api_host = match mode {
        Mode::Kwok => "127.0.0.1".to_string(),
        Mode::RealNode => super::pki::NODE_API_SERVER_IP.to_string(),
    };
    let server = format!("https://{api_host}:{}", ports.apiserver);
    let admin_kubeconfig = run_dir.join("admin.kubeconfig");
    write_kubeconfig(&admin_kubeconfig, &server, &pki.ca_cert, &pki.admin)?;
    let cm_kubeconfig = run_dir.join("controller-manager.kubeconfig");
    write_kubeconfig(
        &cm_kubeconfig,
        &server,
        &pki.ca_cert,
        &pki.controller_manager,
    )?;
    let scheduler_kubeconfig = run_dir.join("scheduler.kubeconfig");
    write_kubeconfig(&scheduler_kubeconfig, &server, &pki.ca_cert, &pki.scheduler)?;

    let mut procs = Processes::new(run_dir.join("logs"))?;
    let started = Instant::now();
    let result = async {
        procs.spawn("etcd", &bins.path("etcd"), &etcd_args(&run_dir, &ports))?;
        procs.spawn(
            "kube-apiserver",
            &bins.path("kube-apiserver"),
            &apiserver_args(&run_dir, &ports, &pki, mode)?,
        )?;
        let kubeconfig = Kubeconfig::read_from(&admin_kubeconfig)?;
        let admin_config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let client = Client::try_from(admin_config.clone())?;

        poll(
            &mut procs,
            "kube-apiserver /readyz",
            API_SERVER_READY,
            || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .map_err(|e| Error::Config(format!("build the /readyz request: {e}")))?;
                    Ok(client
                        .request_text(req)
                        .await
                        .ok()
                        .filter(|body| body.trim() == "ok"))
                }
            },
        )
        .await?;
        tracing::info!(elapsed = ?started.elapsed(), "kube-apiserver is ready");

        procs.spawn(
            "kube-controller-manager",
            &bins.path("kube-controller-manager"),
            &controller_manager_args(&run_dir, &ports, &pki, &cm_kubeconfig),
        )?;
        procs.spawn(
            "kube-scheduler",
            &bins.path("kube-scheduler"),
            &scheduler_args(&run_dir, &ports, &scheduler_kubeconfig),
        )?;
        let nodes: Api<Node> = Api::all(client.clone());
        if mode == Mode::Kwok {
            procs.spawn(
                "kwok",
                &bins.path("kwok"),
                &kwok_args(&bins.kwok_stages(), &ports, &admin_kubeconfig),
            )?;
            nodes.create(&PostParams::default(), &fake_node()?).await?;
        }

        // The ServiceAccount controller (in the controller manager) creates
        // `default` in every namespace; seeing it proves the controllers run.
        let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        poll(
            &mut procs,
            "the controller manager (default ServiceAccount)",
            CONTROLLERS_READY,
            || {
                let api = service_accounts.clone();
                async move { Ok(api.get_opt("default").await?.map(|_| ())) }
            },
        )
        .await?;

        if mode == Mode::Kwok {
            poll(
                &mut procs,
                "kwok to report the fake node Ready",
                NODE_READY,
                || {
                    let nodes = nodes.clone();
                    async move {
                        let node = nodes.get(FAKE_NODE_NAME).await?;
                        Ok(node_is_ready(&node).then_some(()))
                    }
                },
            )
            .await?;
        }
        tracing::info!(elapsed = ?started.elapsed(), "local control plane is ready");
        Ok::<_, Error>(admin_config)
    }
    .await;

    match result {
        Ok(admin_config) => Ok(LocalControlPlane {
            run_dir,
            admin_kubeconfig,
            admin_config,
            server,
            pki,
            mode,
            _processes: procs,
        }),
        Err(err) => {
            tracing::error!(%err, logs = %run_dir.join("logs").display(), "control-plane startup failed");
            procs.kill_all();
            Err(err)
        }
    }
}

pub(crate) fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conds| {
            conds
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Polls `probe` until it yields `Some`, failing early when a component dies
/// ([`crate::wait::eventually`], with a dead component as a final value).
async fn poll<T, F, Fut>(
    procs: &mut Processes,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, Error>>,
{
    crate::wait::eventually(what, timeout, || {
        let alive = procs.check_running();
        let attempt = probe();
        async move {
            match alive {
                Err(dead) => Ok(Some(Err(dead))),
                // Not ready yet often shows as an error (connection refused,
                // 403 while RBAC bootstraps): eventually reports the last.
                Ok(()) => attempt.await.map(|found| found.map(Ok)),
            }
        }
    })
    .await?
}

fn path_arg(flag: &str, path: &Path) -> String {
    format!("--{flag}={}", path.display())
}

fn etcd_args(run_dir: &Path, ports: &Ports) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    vec![
        "--name=oxcast-test".into(),
        path_arg("data-dir", &run_dir.join("etcd")),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=oxcast-test={peer}"),
        // The data is thrown away with the run: skip fsync, which otherwise
        // dominates API latency on a shared CI disk.
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ]
}

fn apiserver_args(
    run_dir: &Path,
    ports: &Ports,
    pki: &Pki,
    mode: Mode,
) -> Result<Vec<String>, Error> {
    let mut args = vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
        format!("--secure-port={}", ports.apiserver),
        path_arg("cert-dir", &run_dir.join("apiserver")),
        path_arg("tls-cert-file", &pki.serving.cert),
        path_arg("tls-private-key-file", &pki.serving.key),
        path_arg("client-ca-file", &pki.ca_cert),
        // Request-header authentication for the aggregation layer.
        path_arg("requestheader-client-ca-file", &pki.front_proxy_ca),
        format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT}"),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        path_arg("proxy-client-cert-file", &pki.front_proxy_client.cert),
        path_arg("proxy-client-key-file", &pki.front_proxy_client.key),
        // Real ServiceAccount tokens, so tests can act as a workload would.
        format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
        path_arg("service-account-key-file", &pki.service_account_pub),
        path_arg("service-account-signing-key-file", &pki.service_account_key),
        // RBAC enforced as in production clusters (Node for kubelet identities).
        "--authorization-mode=Node,RBAC".into(),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
    ];
    match mode {
        Mode::Kwok => args.extend([
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            // The `kubernetes` Service would otherwise get a loopback endpoint,
            // which EndpointSlice validation rejects over and over in the log.
            "--endpoint-reconciler-type=none".into(),
        ]),
        Mode::RealNode => {
            let ip = super::pki::NODE_API_SERVER_IP;
            let admission = run_dir.join("admission.yaml");
            std::fs::write(&admission, ADMISSION_CONFIG).map_err(Error::io_path(
                "write the admission configuration",
                &admission,
            ))?;
            args.extend([
                // Only the host end of the node's veth (and no other
                // interface); the `kubernetes` Service points there, so pods
                // reach the API server through kube-proxy.
                format!("--bind-address={ip}"),
                format!("--advertise-address={ip}"),
                format!("--service-cluster-ip-range={NODE_SERVICE_CLUSTER_IP_RANGE}"),
                "--enable-admission-plugins=NodeRestriction".into(),
                path_arg("admission-control-config-file", &admission),
                // `kubectl logs/exec` go through the API server to the kubelet.
                path_arg(
                    "kubelet-client-certificate",
                    &pki.apiserver_kubelet_client.cert,
                ),
                path_arg("kubelet-client-key", &pki.apiserver_kubelet_client.key),
                "--kubelet-preferred-address-types=InternalIP".into(),
            ]);
        }
    }
    Ok(args)
}

/// Pod Security admission with a real node: `restricted` enforced (and
/// audited and warned) on every namespace that does not say otherwise,
/// kube-system exempt, as a hardened production cluster sets it up.
const ADMISSION_CONFIG: &str = r#"apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: PodSecurity
    configuration:
      apiVersion: pod-security.admission.config.k8s.io/v1
      kind: PodSecurityConfiguration
      defaults:
        enforce: restricted
        enforce-version: latest
        audit: restricted
        audit-version: latest
        warn: restricted
        warn-version: latest
      exemptions:
        usernames: []
        runtimeClasses: []
        namespaces: [kube-system]
"#;

fn controller_manager_args(
    run_dir: &Path,
    ports: &Ports,
    pki: &Pki,
    kubeconfig: &Path,
) -> Vec<String> {
    let mut args = component_args(
        "controller-manager",
        ports.controller_manager,
        run_dir,
        kubeconfig,
    );
    args.extend([
        "--cluster-name=oxcast-test".into(),
        path_arg("root-ca-file", &pki.ca_cert),
        path_arg("service-account-private-key-file", &pki.service_account_key),
        // Each controller acts as its own ServiceAccount, as in kubeadm
        // clusters, so RBAC gaps show up here too.
        "--use-service-account-credentials=true".into(),
    ]);
    args
}

fn scheduler_args(run_dir: &Path, ports: &Ports, kubeconfig: &Path) -> Vec<String> {
    component_args("scheduler", ports.scheduler, run_dir, kubeconfig)
}

/// What the controller manager and the scheduler share: `kubeconfig` for
/// the API and for delegated authn/authz, loopback on `port`, certificates
/// in `run_dir/name`, no leader election (one of each).
fn component_args(name: &str, port: u16, run_dir: &Path, kubeconfig: &Path) -> Vec<String> {
    vec![
        path_arg("kubeconfig", kubeconfig),
        path_arg("authentication-kubeconfig", kubeconfig),
        path_arg("authorization-kubeconfig", kubeconfig),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        path_arg("cert-dir", &run_dir.join(name)),
        "--leader-elect=false".into(),
    ]
}

fn kwok_args(stages: &Path, ports: &Ports, kubeconfig: &Path) -> Vec<String> {
    let (key, value) = KWOK_NODE_ANNOTATION;
    vec![
        path_arg("kubeconfig", kubeconfig),
        // The only config kwok reads (so a developer's ~/.kwok never changes
        // what the tests see): upstream's default Stages, collected by
        // build.sh. Managed nodes turn Ready and heartbeat through Leases;
        // pods bound to them turn Running and Ready; deletions complete.
        path_arg("config", stages),
        "--manage-all-nodes=false".into(),
        format!("--manage-nodes-with-annotation-selector={key}={value}"),
        format!("--cidr={POD_CIDR}"),
        "--node-ip=127.0.0.1".into(),
        // Heartbeats through Leases, as kubelets do, so the node lifecycle
        // controller keeps the node Ready.
        "--node-lease-duration-seconds=40".into(),
        format!("--server-address=127.0.0.1:{}", ports.kwok),
    ]
}

/// The Node kwok pretends to run. No taints, so ordinary workloads (and the
/// operator's Deployments) schedule onto it without tolerations.
fn fake_node() -> Result<Node, Error> {
    let (key, value) = KWOK_NODE_ANNOTATION;
    let node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": FAKE_NODE_NAME,
            "annotations": {
                key: value,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "kubernetes.io/hostname": FAKE_NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "bootID": "", "machineID": "", "systemUUID": "",
                "containerRuntimeVersion": "", "kernelVersion": "", "osImage": "",
            },
            "phase": "Running",
        },
    });
    serde_json::from_value(node)
        .map_err(|e| Error::Config(format!("the fake Node literal does not parse: {e}")))
}

/// Writes a kubeconfig (as JSON, which is valid YAML and read by every
/// client) that authenticates with a client certificate.
pub(crate) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &CertPair,
) -> Result<(), Error> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "oxcast-test", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{"name": "oxcast-test", "user": {
            "client-certificate": user.cert,
            "client-key": user.key,
        }}],
        "contexts": [{"name": "oxcast-test", "context": {
            "cluster": "oxcast-test",
            "user": "oxcast-test",
            "namespace": "default",
        }}],
        "current-context": "oxcast-test",
    });
    let text = serde_json::to_string_pretty(&doc)
        .map_err(|e| Error::Config(format!("render a kubeconfig: {e}")))?;
    std::fs::write(path, text).map_err(Error::io_path("write a kubeconfig", path))
}
