//! A real Kubernetes node next to the local control plane: kubelet,
//! containerd, runc, the CNI bridge plugin and kube-proxy, so pods run for
//! real (kwok only pretends).
//!
//! Layout (tests/cluster/README.md has the picture and how to debug it):
//! - a namespace holder (`unshare --net --mount --propagation private sleep
//!   infinity`) owns the node's network and mount namespaces; containerd,
//!   kubelet and kube-proxy run inside them (`nsenter -t PID -n -m`);
//! - a veth pair: host `oxcast-h` 198.18.255.1/30, node `eth0` 198.18.255.2/30;
//! - host routes: `unreachable 198.18.0.0/15` first, then pods 198.18.1.0/24,
//!   Services 198.19.0.0/16 and LoadBalancer addresses 198.18.200.0/24 via
//!   198.18.255.2. Nothing in the test range can leave the machine: what is not
//!   routed into the node is unreachable, and the node has no route out;
//! - the API server listens on 198.18.255.1 (host end of the veth).
//!
//! One node per test binary ([`NodeCluster::shared`]), torn down like the
//! control plane: an exit hook (normal exit, failed test), `PR_SET_PDEATHSIG`
//! (SIGKILL, Ctrl-C), and a janitor at the next start for what a killed run
//! leaves (container shims, pod cgroups).

mod oci;

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

use super::binaries::Binaries;
use super::control_plane::{self, Mode};
use super::pki::{NODE_API_SERVER_IP, NODE_IP};
use super::process::{self, ExitCleanup, Processes};
use super::{Error, Local, TestCluster};

/// Name of the real node.
pub const NODE_NAME: &str = super::pki::NODE_NAME;

/// The whole test range: unreachable from the host except through the node.
pub const TEST_RANGE: &str = "198.18.0.0/15";
/// Host end of the node's veth; the API server listens here.
pub const HOST_ADDR: Ipv4Addr = NODE_API_SERVER_IP;
/// Node end of the veth: the node's InternalIP.
pub const NODE_ADDR: Ipv4Addr = NODE_IP;
/// Pod addresses (CNI bridge, host-local IPAM).
pub const POD_CIDR: &str = "198.18.1.0/24";
/// Service ClusterIPs; the `kubernetes` Service is 198.19.0.1.
pub const SERVICE_CIDR: &str = control_plane::NODE_SERVICE_CLUSTER_IP_RANGE;
/// LoadBalancer addresses (for the load-balancer controller's pool); routed
/// into the node, where kube-proxy handles them.
pub const LOADBALANCER_CIDR: &str = "198.18.200.0/24";
/// The sandbox image, built from tests/cluster/pause.c and imported at start.
pub const PAUSE_IMAGE: &str = "oxcast.test/pause:1";
/// Debian's busybox-static as an image (`/bin/busybox`, `/bin/sh`, user
/// 65532), imported at start, for test pods: `nc` works, `wget` crashes.
pub const BUSYBOX_IMAGE: &str = "oxcast.test/busybox:1";

/// Host side of the veth pair (at most 15 characters).
const HOST_VETH: &str = "oxcast-h";
const NODE_VETH: &str = "eth0";
const BRIDGE: &str = "oxcast0";
const POD_GATEWAY: &str = "198.18.1.1";

/// Where Debian's containernetworking-plugins installs the plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

const CONTAINERD_READY: Duration = Duration::from_secs(60);
const NODE_READY: Duration = Duration::from_secs(120);
const PROXY_READY: Duration = Duration::from_secs(60);

/// The sysctls kubelet insists on with `protectKernelDefaults: true`
/// (pkg/kubelet/cm/container_manager_linux.go, setupKernelTunables). Those
/// that differ on the host are shadowed by read-only bind mounts inside the
/// node's mount namespace, so the machine's own values never change.
const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// How long each phase of the start took.
#[derive(Debug, Clone, Default)]
pub struct StartupTimings {
    /// Locating (and, cold, building) the binaries.
    pub binaries: Duration,
    /// Namespace holder, veth, routes, sysctl shadows, images built.
    pub network: Duration,
    /// etcd + API server + controllers.
    pub control_plane: Duration,
    /// containerd up and the node's images imported.
    pub containerd: Duration,
    /// kubelet started until the Node is Ready.
    pub kubelet: Duration,
    /// kube-proxy started until it programmed the `kubernetes` Service.
    pub kube_proxy: Duration,
    /// Everything.
    pub total: Duration,
}

/// The control plane plus one real node, shared by the tests of a binary.
pub struct NodeCluster {
    cluster: TestCluster,
    holder_pid: u32,
    dir: PathBuf,
    socket: PathBuf,
    timings: StartupTimings,
    teardown: Arc<Teardown>,
    _processes: Processes,
}

static SHARED: OnceLock<Result<NodeCluster, Arc<Error>>> = OnceLock::new();

impl NodeCluster {
    /// The node cluster of this test binary, started on first call. A failed
    /// start is remembered and reported to every caller.
    pub async fn shared() -> Result<&'static NodeCluster, Error> {
        if let Some(result) = SHARED.get() {
            return result.as_ref().map_err(|e| Error::Startup(e.clone()));
        }
        tokio::task::spawn_blocking(Self::shared_blocking)
            .await
            .map_err(|e| Error::Config(format!("the node startup task failed: {e}")))?
    }

    /// [`NodeCluster::shared`] for synchronous callers.
    pub fn shared_blocking() -> Result<&'static NodeCluster, Error> {
        SHARED
            .get_or_init(|| start_supervised().map_err(Arc::new))
            .as_ref()
            .map_err(|e| Error::Startup(e.clone()))
    }

    /// The cluster: clients, namespaces, kubectl (see [`TestCluster`]).
    pub fn cluster(&self) -> &TestCluster {
        &self.cluster
    }

    /// Admin kubeconfig (for kubectl and helm); the server is
    /// `https://198.18.255.1:<port>`.
    pub fn kubeconfig(&self) -> &Path {
        self.cluster.kubeconfig()
    }

    /// A cluster-admin client; call it on the test's runtime.
    pub fn client(&self) -> Result<Client, Error> {
        self.cluster.client()
    }

    /// The node's name (`oxcast-node`).
    pub fn node_name(&self) -> &'static str {
        NODE_NAME
    }

    /// PID of the process that holds the node's network and mount namespaces.
    pub fn holder_pid(&self) -> u32 {
        self.holder_pid
    }

    /// containerd's socket (namespace `k8s.io` holds the CRI images).
    pub fn containerd_socket(&self) -> &Path {
        &self.socket
    }

    /// Scratch directory of the node: `logs/` has containerd, kubelet and
    /// kube-proxy logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long the start took, phase by phase.
    pub fn timings(&self) -> &StartupTimings {
        &self.timings
    }

    /// `program` run inside the node's network and mount namespaces (what
    /// the node's own processes see: pod and Service addresses, iptables).
    pub fn node_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.holder_pid.to_string())
            .args(["-n", "-m", "--"])
            .arg(program);
        cmd
    }

    /// Imports an OCI (or Docker) image tar into the node's containerd, in
    /// the `k8s.io` namespace where kubelet finds it; a pod using its tag
    /// with `imagePullPolicy: IfNotPresent` (the default for a non-`latest`
    /// tag) then pulls nothing. The tag comes from the tar's index
    /// (`io.containerd.image.name` or `org.opencontainers.image.ref.name`).
    pub async fn import_image(&self, tar: &Path) -> Result<(), Error> {
        let mut cmd = tokio::process::Command::from(ctr_import(&self.socket, tar));
        let output = cmd
            .output()
            .await
            .map_err(Error::io_path("run ctr images import", tar))?;
        check_output("ctr images import", tar, &output)
    }

    /// [`NodeCluster::import_image`] for synchronous callers.
    pub fn import_image_blocking(&self, tar: &Path) -> Result<(), Error> {
        let output = ctr_import(&self.socket, tar)
            .output()
            .map_err(Error::io_path("run ctr images import", tar))?;
        check_output("ctr images import", tar, &output)
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        self.teardown.run();
    }
}

fn ctr_import(socket: &Path, tar: &Path) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.args(["-n", "k8s.io", "--address"])
        .arg(socket)
        .args(["images", "import", "--all-platforms"])
        .arg(tar)
        .stdin(Stdio::null());
    cmd
}

fn check_output(what: &str, subject: &Path, output: &std::process::Output) -> Result<(), Error> {
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {} failed ({}): {}{}",
            subject.display(),
            process::describe_status(&output.status),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// Same pattern as `super::start_supervised`: the children's death signal is
/// tied to the spawning thread, so that thread lives as long as the process.
fn start_supervised() -> Result<NodeCluster, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("oxcast-test-node".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::io("build the node startup runtime"))
                .and_then(|rt| rt.block_on(start()));
            let ok = result.is_ok();
            let _ = tx.send(result);
            if ok {
                loop {
                    std::thread::park();
                }
            }
        })
        .map_err(Error::io("spawn the node supervisor thread"))?;
    rx.recv()
        .map_err(|_| Error::Config("the node supervisor thread panicked during startup".into()))?
}

async fn start() -> Result<NodeCluster, Error> {
    let t0 = Instant::now();
    let mut timings = StartupTimings::default();
    preflight()?;
    let bins = Binaries::locate()?;
    for name in ["kubelet", "kube-proxy"] {
        let path = bins.path(name);
        if !path.is_file() {
            return Err(Error::MissingBinary { path });
        }
    }
    timings.binaries = t0.elapsed();

    let root = std::env::temp_dir().join("oxcast-cluster");
    fs::create_dir_all(&root).map_err(Error::io_path("create the scratch root", &root))?;
    // Held until the node's routes and veth exist (see NodeLock).
    let node_lock = NodeLock::take();
    janitor(&root)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-node-", std::process::id()))
        .tempdir_in(&root)
        .map_err(Error::io_path("create the node directory", &root))?
        .keep();
    let keep = std::env::var_os(super::KEEP_RUN_DIR_ENV).is_some();
    if keep {
        let marker = dir.join(process::KEEP_MARKER);
        fs::write(&marker, b"").map_err(Error::io_path("mark the node directory", &marker))?;
    }
    tracing::info!(dir = %dir.display(), "starting a real node");

    let t = Instant::now();
    let mut procs = Processes::new(dir.join("logs"))?;
    procs.spawn(
        "netns-holder",
        Path::new("unshare"),
        &strings(&[
            "--net",
            "--mount",
            "--propagation",
            "private",
            "sleep",
            "infinity",
        ]),
    )?;
    let holder_pid = procs
        .last_pid()
        .ok_or_else(|| Error::Config("the namespace holder has no pid".into()))?;
    let teardown = Arc::new(Teardown::new(holder_pid));
    {
        let teardown = teardown.clone();
        process::register_for_exit_cleanup(ExitCleanup::Hook(Box::new(move || teardown.run())));
    }
    if !keep {
        process::register_for_exit_cleanup(ExitCleanup::Dir(dir.clone()));
    }
    spawn_watchdog(&dir, &teardown, keep)?;

    let result = async {
        wait_for_namespaces(&mut procs, holder_pid).await?;
        let ns = Ns { pid: holder_pid };
        setup_network(&ns)?;
        drop(node_lock);
        shadow_sysctls(&ns, &dir)?;
        let images = build_images(&dir)?;
        timings.network = t.elapsed();

        let t = Instant::now();
        let cp = control_plane::start(&bins, Mode::RealNode).await?;
        timings.control_plane = t.elapsed();
        let client = Client::try_from(cp.admin_config.clone())?;

        let t = Instant::now();
        let socket = dir.join("containerd.sock");
        let containerd_config = write_containerd_config(&dir, &socket)?;
        procs.spawn(
            "containerd",
            Path::new("nsenter"),
            &ns.args(&["containerd", "--config", &containerd_config]),
        )?;
        teardown.set_containerd(procs.last_pid(), &socket);
        wait_for(
            &mut procs,
            "containerd to answer on its socket",
            CONTAINERD_READY,
            || {
                Command::new("ctr")
                    .arg("--address")
                    .arg(&socket)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
        )
        .await?;
        for tar in &images {
            let output = ctr_import(&socket, tar)
                .output()
                .map_err(Error::io_path("run ctr images import", tar))?;
            check_output("ctr images import", tar, &output)?;
        }
        timings.containerd = t.elapsed();

        let t = Instant::now();
        let kubelet_kubeconfig = dir.join("kubelet.kubeconfig");
        control_plane::write_kubeconfig(
            &kubelet_kubeconfig,
            &cp.server,
            &cp.pki.ca_cert,
            &cp.pki.kubelet_client,
        )?;
        let kubelet_config = write_kubelet_config(&dir, &socket, &cp.pki)?;
        let kubelet_root = dir.join("kubelet");
        procs.spawn(
            "kubelet",
            Path::new("nsenter"),
            &ns.args(&[
                &bins.path("kubelet").display().to_string(),
                &format!("--config={kubelet_config}"),
                &format!("--kubeconfig={}", kubelet_kubeconfig.display()),
                &format!("--root-dir={}", kubelet_root.display()),
                &format!("--hostname-override={NODE_NAME}"),
                &format!("--node-ip={NODE_ADDR}"),
                "--v=2",
            ]),
        )?;
        teardown.set_kubelet(procs.last_pid());
        let nodes: Api<Node> = Api::all(client.clone());
        let mut last_error;
        let deadline = Instant::now() + NODE_READY;
        loop {
            procs.check_running()?;
            match nodes.get_opt(NODE_NAME).await {
                Ok(Some(node)) if control_plane::node_is_ready(&node) => break,
                Ok(Some(_)) => last_error = "registered, not Ready".into(),
                Ok(None) => last_error = "not registered".into(),
                Err(e) => last_error = e.to_string(),
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "node {NODE_NAME} to turn Ready ({last_error}); see {}",
                        dir.join("logs/kubelet.log").display()
                    ),
                    timeout: NODE_READY,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        timings.kubelet = t.elapsed();

        let t = Instant::now();
        let proxy_kubeconfig = dir.join("kube-proxy.kubeconfig");
        control_plane::write_kubeconfig(
            &proxy_kubeconfig,
            &cp.server,
            &cp.pki.ca_cert,
            &cp.pki.kube_proxy,
        )?;
        let proxy_config = write_proxy_config(&dir, &proxy_kubeconfig)?;
        procs.spawn(
            "kube-proxy",
            Path::new("nsenter"),
            &ns.args(&[
                &bins.path("kube-proxy").display().to_string(),
                &format!("--config={proxy_config}"),
                "--v=2",
            ]),
        )?;
        teardown.set_proxy(procs.last_pid());
        let kubernetes_ip = super::pki::NODE_KUBERNETES_SERVICE_IP.to_string();
        wait_for(
            &mut procs,
            "kube-proxy to program the kubernetes Service",
            PROXY_READY,
            || {
                ns.command("iptables")
                    .args(["-w", "-t", "nat", "-S", "KUBE-SERVICES"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&kubernetes_ip))
            },
        )
        .await?;
        timings.kube_proxy = t.elapsed();
        Ok::<_, Error>((cp, socket))
    }
    .await;

    match result {
        Ok((cp, socket)) => {
            timings.total = t0.elapsed();
            tracing::info!(?timings, "real node ready");
            Ok(NodeCluster {
                cluster: TestCluster {
                    admin_config: cp.admin_config.clone(),
                    kubeconfig: cp.admin_kubeconfig.clone(),
                    local: Some(Local {
                        bins,
                        control_plane: cp,
                    }),
                },
                holder_pid,
                dir,
                socket,
                timings,
                teardown,
                _processes: procs,
            })
        }
        Err(err) => {
            tracing::error!(%err, logs = %dir.join("logs").display(), "node startup failed");
            teardown.run();
            procs.kill_all();
            Err(err)
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The node's namespaces, entered with nsenter.
#[derive(Clone, Copy)]
struct Ns {
    pid: u32,
}

impl Ns {
    /// Arguments for `nsenter` that run `argv` in the node's namespaces.
    fn args(&self, argv: &[&str]) -> Vec<String> {
        let mut args = strings(&["-t", &self.pid.to_string(), "-n", "-m", "--"]);
        args.extend(strings(argv));
        args
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-n", "-m", "--", program]);
        cmd
    }

    fn run(&self, argv: &[&str]) -> Result<(), Error> {
        let (program, rest) = argv
            .split_first()
            .ok_or_else(|| Error::Config("empty command".into()))?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        run(cmd, &format!("in the node: {}", argv.join(" ")))
    }
}

fn host(argv: &[&str]) -> Result<(), Error> {
    let (program, rest) = argv
        .split_first()
        .ok_or_else(|| Error::Config("empty command".into()))?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    run(cmd, &format!("on the host: {}", argv.join(" ")))
}

fn run(mut cmd: Command, what: &str) -> Result<(), Error> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Config(format!("cannot run {what}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} failed ({}): {}",
            process::describe_status(&output.status),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Fails with a message naming what is missing, before anything is started.
fn preflight() -> Result<(), Error> {
    // SAFETY: plain syscall without arguments.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Config(
            "the real node needs root (network namespaces, veth, mounts, cgroups)".into(),
        ));
    }
    let mut missing = Vec::new();
    for tool in [
        "unshare",
        "nsenter",
        "mount",
        "ip",
        "iptables",
        "conntrack",
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
    ] {
        if which(tool).is_none() {
            missing.push(tool.to_string());
        }
    }
    if which("musl-gcc").is_none() && which("gcc").is_none() {
        missing.push("gcc or musl-gcc (builds the pause image)".into());
    }
    if !Path::new("/bin/busybox").is_file() {
        missing.push("/bin/busybox (Debian package busybox-static)".into());
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new(CNI_BIN_DIR).join(plugin).is_file() {
            missing.push(format!("{CNI_BIN_DIR}/{plugin}"));
        }
    }
    if !missing.is_empty() {
        return Err(Error::Config(format!(
            "the real node needs {} (tests/run.sh installs the Debian packages containerd, \
             runc, containernetworking-plugins, iptables, iproute2, conntrack, busybox-static)",
            missing.join(", ")
        )));
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.contains("overlay") {
        return Err(Error::Config(
            "the kernel has no overlay filesystem (containerd's overlayfs snapshotter needs it; \
             try `modprobe overlay`)"
                .into(),
        ));
    }
    if !Path::new("/sys/fs/cgroup/pids").is_dir()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").is_file()
    {
        return Err(Error::Config(
            "no cgroup hierarchy under /sys/fs/cgroup (kubelet needs one)".into(),
        ));
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Waits until the holder has left the host's namespaces (unshare has run).
async fn wait_for_namespaces(procs: &mut Processes, pid: u32) -> Result<(), Error> {
    let own =
        fs::read_link("/proc/self/ns/net").map_err(Error::io("read our network namespace"))?;
    wait_for(
        procs,
        "the namespace holder to unshare",
        Duration::from_secs(10),
        || {
            fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns != own)
                && fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "sleep"))
        },
    )
    .await
}

async fn wait_for(
    procs: &mut Processes,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    loop {
        procs.check_running()?;
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                timeout,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// Host: the unreachable /15 first, then the veth and the routes into the
/// node. Node: loopback, its veth end, forwarding (inside the namespace only).
fn setup_network(ns: &Ns) -> Result<(), Error> {
    // Before anything can send to the test range: whatever is not routed
    // into the node below is unreachable, never the default route.
    host(&["ip", "route", "replace", "unreachable", TEST_RANGE])?;
    let pid = ns.pid.to_string();
    host(&[
        "ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", NODE_VETH, "netns", &pid,
    ])?;
    host(&[
        "ip",
        "addr",
        "add",
        &format!("{HOST_ADDR}/30"),
        "dev",
        HOST_VETH,
    ])?;
    host(&["ip", "link", "set", HOST_VETH, "up"])?;
    ns.run(&["ip", "link", "set", "lo", "up"])?;
    ns.run(&[
        "ip",
        "addr",
        "add",
        &format!("{NODE_ADDR}/30"),
        "dev",
        NODE_VETH,
    ])?;
    ns.run(&["ip", "link", "set", NODE_VETH, "up"])?;
    let via = NODE_ADDR.to_string();
    for range in [POD_CIDR, SERVICE_CIDR, LOADBALANCER_CIDR] {
        host(&[
            "ip", "route", "replace", range, "via", &via, "dev", HOST_VETH,
        ])?;
    }
    // The node itself (not only pods and the host) must reach ClusterIPs
    // and LoadBalancer addresses: its own connections need a route for the
    // lookup before kube-proxy's OUTPUT rules rewrite the destination. Via
    // `lo`, what no rule rewrites is dropped instead of leaving the node.
    let src = NODE_ADDR.to_string();
    for range in [SERVICE_CIDR, LOADBALANCER_CIDR] {
        ns.run(&["ip", "route", "add", range, "dev", "lo", "src", &src])?;
    }
    // /proc/sys/net belongs to the network namespace of the writer.
    ns.run(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
    // Pod -> Service -> pod on the same bridge needs the bridge to pass
    // frames through iptables (kube-proxy's DNAT); per namespace since 5.3.
    if let Err(e) = ns.run(&[
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables",
    ]) {
        tracing::warn!(%e, "br_netfilter unavailable: pod-to-Service traffic between pods on the node may fail");
    }
    Ok(())
}

/// Read-only files with kubelet's expected values bound over the host's
/// `/proc/sys` entries, inside the node's private mount namespace only.
fn shadow_sysctls(ns: &Ns, dir: &Path) -> Result<(), Error> {
    let sysctl_dir = dir.join("sysctl");
    fs::create_dir_all(&sysctl_dir).map_err(Error::io_path("create", &sysctl_dir))?;
    for (key, value) in KUBELET_SYSCTLS {
        let proc_path = format!("/proc/sys/{key}");
        let current = fs::read_to_string(&proc_path).unwrap_or_default();
        if current.trim() == value {
            continue;
        }
        let file = sysctl_dir.join(key.replace('/', "."));
        fs::write(&file, format!("{value}\n")).map_err(Error::io_path("write", &file))?;
        ns.run(&[
            "mount",
            "--bind",
            "-o",
            "ro",
            &file.display().to_string(),
            &proc_path,
        ])?;
    }
    Ok(())
}

/// The pause and busybox image tars, written into `<dir>/images`.
fn build_images(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let images = dir.join("images");
    fs::create_dir_all(&images).map_err(Error::io_path("create", &images))?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/pause.c");
    let pause_bin = images.join("pause");
    let compiler = if which("musl-gcc").is_some() {
        "musl-gcc"
    } else {
        "gcc"
    };
    host(&[
        compiler,
        "-static",
        "-Os",
        "-s",
        "-o",
        &pause_bin.display().to_string(),
        &source.display().to_string(),
    ])?;
    let pause = fs::read(&pause_bin).map_err(Error::io_path("read", &pause_bin))?;
    let busybox =
        fs::read("/bin/busybox").map_err(Error::io_path("read", Path::new("/bin/busybox")))?;
    let build =
        |reference: &str, file: &str, entries: Vec<oci::Entry>, config: oci::ImageConfig<'_>| {
            let bytes = oci::image_layout_tar(reference, &entries, &config)
                .map_err(|e| Error::Config(format!("build image {reference}: {e}")))?;
            let path = images.join(file);
            fs::write(&path, bytes).map_err(Error::io_path("write an image tar", &path))?;
            Ok::<_, Error>(path)
        };
    let pause_tar = build(
        PAUSE_IMAGE,
        "pause.tar",
        vec![oci::Entry::File {
            path: "pause".into(),
            mode: 0o755,
            data: pause,
        }],
        oci::ImageConfig {
            entrypoint: &["/pause"],
            cmd: &[],
            user: "65535",
        },
    )?;
    let busybox_tar = build(
        BUSYBOX_IMAGE,
        "busybox.tar",
        vec![
            oci::Entry::Dir {
                path: "bin".into(),
                mode: 0o755,
            },
            oci::Entry::File {
                path: "bin/busybox".into(),
                mode: 0o755,
                data: busybox,
            },
            oci::Entry::Symlink {
                path: "bin/sh".into(),
                target: "busybox".into(),
            },
            oci::Entry::Dir {
                path: "tmp".into(),
                mode: 0o1777,
            },
        ],
        oci::ImageConfig {
            entrypoint: &[],
            cmd: &["/bin/sh"],
            user: "65532",
        },
    )?;
    Ok(vec![pause_tar, busybox_tar])
}

fn write_file(path: &Path, contents: &str) -> Result<String, Error> {
    fs::write(path, contents).map_err(Error::io_path("write a node config file", path))?;
    Ok(path.display().to_string())
}

fn write_containerd_config(dir: &Path, socket: &Path) -> Result<String, Error> {
    let cni_dir = dir.join("cni");
    fs::create_dir_all(&cni_dir).map_err(Error::io_path("create", &cni_dir))?;
    let cni = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "oxcast",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("cni-ipam"),
            },
        }],
    });
    write_file(&cni_dir.join("10-oxcast.conflist"), &cni.to_string())?;
    let d = dir.display();
    let config = format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
    max_conf_num = 1
"#,
        socket = socket.display(),
        cni = cni_dir.display(),
    );
    write_file(&dir.join("containerd.toml"), &config)
}

fn write_kubelet_config(dir: &Path, socket: &Path, pki: &super::pki::Pki) -> Result<String, Error> {
    let resolv = dir.join("resolv.conf");
    // No DNS in the node: pods get an empty resolv.conf (they reach the API
    // through KUBERNETES_SERVICE_HOST), never the host's resolvers.
    fs::write(&resolv, "").map_err(Error::io_path("write", &resolv))?;
    let config = serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // cgroup v1 (hybrid) host; kubelet >= 1.35 refuses it otherwise.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        // Never write the host's sysctls (they are shadowed in the node's
        // mount namespace, see shadow_sysctls).
        "protectKernelDefaults": true,
        "containerRuntimeEndpoint": format!("unix://{}", socket.display()),
        "address": NODE_ADDR.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": pki.kubelet_serving.cert,
        "tlsPrivateKeyFile": pki.kubelet_serving.key,
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": pki.ca_cert},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local",
        "resolvConf": resolv,
        "failSwapOn": false,
        "podLogsDir": dir.join("pod-logs"),
        "volumePluginDir": dir.join("volume-plugins"),
        // Never garbage-collect the imported images (nothing can be pulled).
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        // A shared CI disk may be fuller than kubelet's defaults allow.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "nodeStatusUpdateFrequency": "2s",
        "maxPods": 110,
        "serializeImagePulls": false,
    });
    write_file(&dir.join("kubelet.json"), &config.to_string())
}

fn write_proxy_config(dir: &Path, kubeconfig: &Path) -> Result<String, Error> {
    let config = serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_ADDR.to_string(),
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        // It may not change the machine's conntrack sysctls.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "oomScoreAdj": 0,
    });
    write_file(&dir.join("kube-proxy.json"), &config.to_string())
}

/// What to undo when the node goes away; runs once, from Drop, the exit hook
/// or a failed start.
struct Teardown {
    holder_pid: u32,
    state: Mutex<TeardownState>,
    /// cgroup directories kubelet and containerd create, and whether each
    /// existed before the node started (those are left alone).
    cgroups: Vec<(PathBuf, bool)>,
}

#[derive(Default)]
struct TeardownState {
    done: bool,
    containerd: Option<u32>,
    socket: Option<PathBuf>,
    kubelet: Option<u32>,
    proxy: Option<u32>,
}

impl Teardown {
    fn new(holder_pid: u32) -> Self {
        let cgroups = node_cgroup_dirs()
            .into_iter()
            .map(|d| {
                let existed = d.exists();
                (d, existed)
            })
            .collect();
        Self {
            holder_pid,
            state: Mutex::new(TeardownState::default()),
            cgroups,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TeardownState> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    fn set_containerd(&self, pid: Option<u32>, socket: &Path) {
        let mut s = self.lock();
        s.containerd = pid;
        s.socket = Some(socket.to_path_buf());
    }

    fn set_kubelet(&self, pid: Option<u32>) {
        self.lock().kubelet = pid;
    }

    fn set_proxy(&self, pid: Option<u32>) {
        self.lock().proxy = pid;
    }

    /// kubelet and kube-proxy first (nothing restarts what follows), then
    /// every container and shim, containerd, the holder; then the cgroups
    /// the node created and the unreachable route. The veth, the bridge,
    /// the iptables rules and the mounts go with the namespaces.
    fn run(&self) {
        let mut s = self.lock();
        if s.done {
            return;
        }
        s.done = true;
        for pid in [s.kubelet, s.proxy].into_iter().flatten() {
            kill_child(pid);
        }
        // Containers: every process in the pod cgroups.
        let mut victims = Vec::new();
        for (dir, existed) in &self.cgroups {
            if !existed {
                collect_cgroup_procs(dir, &mut victims);
            }
        }
        // Shims of our containerd (they daemonize, so they are not our children).
        if let Some(socket) = &s.socket {
            victims.extend(shims_of(&|addr| addr == socket.as_path()));
        }
        for pid in &victims {
            // SAFETY: plain syscall.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        for pid in [s.containerd, Some(self.holder_pid)].into_iter().flatten() {
            kill_child(pid);
        }
        wait_gone(&victims, Duration::from_secs(5));
        for (dir, existed) in &self.cgroups {
            if !existed {
                remove_cgroup_tree(dir);
            }
        }
        // The veth goes with the namespaces, a moment after their last
        // process; only then is the unreachable route ours alone to remove.
        let _lock = NodeLock::take();
        let deadline = Instant::now() + Duration::from_secs(3);
        while host_veth_exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !host_veth_exists() {
            let _ = Command::new("ip")
                .args(["route", "del", "unreachable", TEST_RANGE])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn host_veth_exists() -> bool {
    Path::new("/sys/class/net").join(HOST_VETH).exists()
}

/// Machine-wide lock around "check that no node runs, add the route and
/// the veth" and around "the veth is gone, remove the route", so a node that
/// is going away never removes the unreachable route of one that is coming
/// up (test binaries run one after the other, and a watchdog may still be
/// at work when the next node starts).
struct NodeLock {
    /// Holds the lock until dropped (closing releases it).
    _file: Option<fs::File>,
}

/// Path of the lock file (also used by the watchdog's `flock`).
const NODE_LOCK: &str = "/tmp/oxcast-node.lock";

impl NodeLock {
    /// Blocks until the lock is held; without a lock file it degrades to no
    /// lock (only the unlikely race above is then possible).
    fn take() -> NodeLock {
        use std::os::fd::AsRawFd;
        let Ok(file) = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(NODE_LOCK)
        else {
            return NodeLock { _file: None };
        };
        // SAFETY: plain syscall on a descriptor we own; released on close.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        NodeLock {
            _file: (rc == 0).then_some(file),
        }
    }
}

/// Cleans up after the test binary when it dies in a way that runs no exit
/// hook (SIGKILL, a CI time-out): containerd, kubelet, kube-proxy and the
/// holder die with it (`PR_SET_PDEATHSIG`), but container shims daemonize and
/// would keep the containers, and with them the node's namespaces and veth,
/// alive. This shell reads its stdin, a pipe whose only writer is the test
/// binary, so it wakes when the binary is gone however it ended, and then
/// does what [`Teardown::run`] does (harmless when that already ran).
/// Arguments: containerd socket, node directory ("" to keep it), the
/// [`NodeLock`] file, then the
/// cgroup directories the node created.
const WATCHDOG: &str = r#"trap '' HUP INT TERM
while read -r _; do :; done
sock=$1 dir=$2 lock=$3
shift 3
for _ in 1 2 3 4 5 6 7 8 9 10; do
  victims=
  for cg in "$@"; do
    [ -d "$cg" ] && victims="$victims $(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)"
  done
  for d in /proc/[0-9]*; do
    case " $(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)" in
      *"containerd-shim-runc-v2 "*"-address $sock "*) victims="$victims ${d#/proc/}" ;;
    esac
  done
  victims=$(echo $victims)
  [ -z "$victims" ] && break
  kill -9 $victims 2>/dev/null
  sleep 0.5
done
for cg in "$@"; do
  [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
done
# The veth goes with the node's namespaces; remove the unreachable route only
# once it is gone (a veth present now belongs to a newer node, which needs it).
exec 9>>"$lock"
flock 9
for _ in 1 2 3 4 5 6 7 8 9 10; do
  ip link show oxcast-h >/dev/null 2>&1 || break
  sleep 0.5
done
ip link show oxcast-h >/dev/null 2>&1 || ip route del unreachable 198.18.0.0/15 2>/dev/null
exec 9>&-
[ -n "$dir" ] && rm -rf "$dir"
exit 0
"#;

fn spawn_watchdog(dir: &Path, teardown: &Teardown, keep: bool) -> Result<(), Error> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two fresh descriptors; both are owned below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io("create the node watchdog's pipe")(
            std::io::Error::last_os_error(),
        ));
    }
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    // SAFETY: fresh descriptors from pipe2, each wrapped exactly once.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("oxcast-node-watchdog")
        .arg(dir.join("containerd.sock"))
        .arg(if keep {
            PathBuf::new()
        } else {
            dir.to_path_buf()
        })
        .arg(NODE_LOCK)
        .args(
            teardown
                .cgroups
                .iter()
                .filter(|(_, existed)| !existed)
                .map(|(d, _)| d),
        )
        .stdin(Stdio::from(read))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a terminal's Ctrl-C must not stop it first.
        .process_group(0);
    // Never waited for: it only returns after this process is gone.
    let _child = cmd
        .spawn()
        .map_err(Error::io("start the node watchdog (sh)"))?;
    // The write end stays open (close-on-exec, so no other child holds it)
    // until this process is gone; then the watchdog reads EOF.
    let _ = write.into_raw_fd();
    Ok(())
}

/// SIGKILL and reap one of our own children.
fn kill_child(pid: u32) {
    let pid = pid as i32;
    // SAFETY: plain syscalls on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
    process::forget_pid(pid);
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still "exists"; look at its state.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_gone(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|p| pid_alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kubepods` (kubelet, cgroupfs driver) and `k8s.io` (containerd) in every
/// cgroup v1 hierarchy, or at the root of a cgroup v2 one.
fn node_cgroup_dirs() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut bases = Vec::new();
    if root.join("cgroup.controllers").is_file() {
        bases.push(root.to_path_buf());
    } else if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() && !e.file_type().is_ok_and(|t| t.is_symlink()) {
                bases.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for base in bases {
        out.push(base.join("kubepods"));
        out.push(base.join("k8s.io"));
    }
    out
}

fn collect_cgroup_procs(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_cgroup_procs(&e.path(), out);
            }
        }
    }
}

/// rmdir a cgroup tree bottom-up (cgroupfs only removes empty directories).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// PIDs of containerd shims whose `-address` satisfies `matches`.
fn shims_of(matches: &dyn Fn(&Path) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        if !is_shim {
            continue;
        }
        let address = args
            .windows(2)
            .find(|w| w[0] == b"-address")
            .map(|w| PathBuf::from(String::from_utf8_lossy(w[1]).into_owned()));
        if address.is_some_and(|a| matches(&a)) {
            out.push(pid);
        }
    }
    out
}

/// Removes what a killed run (SIGKILL skips the exit hook) left behind: its
/// containers' shims (they daemonize and outlive containerd), the containers
/// in the pod cgroups, and so its namespaces and veth. Then refuses to start
/// when another node is still running.
fn janitor(root: &Path) -> Result<(), Error> {
    let own = std::process::id();
    let owner_of = |addr: &Path| -> Option<u32> {
        let rel = addr.strip_prefix(root).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        first.split('-').next()?.parse::<u32>().ok()
    };
    let live_node =
        !shims_of(&|addr| owner_of(addr).is_some_and(|p| p != own && pid_alive(p))).is_empty();
    let stale = shims_of(&|addr| owner_of(addr).is_some_and(|p| p != own && !pid_alive(p)));
    if !stale.is_empty() {
        tracing::info!(?stale, "killing container shims left by a killed test run");
        let mut victims = stale.clone();
        if !live_node {
            for dir in node_cgroup_dirs() {
                collect_cgroup_procs(&dir, &mut victims);
            }
        }
        for pid in &victims {
            // SAFETY: plain syscall.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        wait_gone(&victims, Duration::from_secs(5));
    }
    // The veth goes away with the namespace, shortly after its last process.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let output = Command::new("ip")
            .args(["-o", "addr", "show", "to", &HOST_ADDR.to_string()])
            .output()
            .map_err(|e| Error::Config(format!("cannot run ip: {e}")))?;
        let text = String::from_utf8_lossy(&output.stdout);
        if text.trim().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Config(format!(
                "{HOST_ADDR} is already in use on this machine ({}); another oxcast node \
                 (a test binary or `oxcast-test-cluster --node`) is running: stop it first",
                text.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !live_node {
        for dir in node_cgroup_dirs() {
            remove_cgroup_tree(&dir);
        }
    }
    Ok(())
}
