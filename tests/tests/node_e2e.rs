//! The product in a real cluster: the chart, the operator and the ingest and
//! HTTP servers run as pods on a real node (kubelet, containerd, runc, CNI,
//! kube-proxy), from the images `docker/Dockerfile` defines, and a real
//! load-balancer controller (MetalLB) gives the RTMP Service the address
//! ffmpeg publishes to. `tests/kind/e2e.sh` runs here exactly as the README
//! and the kind workflow call it, with its defaults.
//!
//! The tests of this binary share one node and run one at a time (the node
//! has two CPUs, and the scale-out example requests most of them).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use oxcast_tests::chart::Helm;
use oxcast_tests::cluster::loadbalancer::MetalLb;
use oxcast_tests::cluster::node::{NodeCluster, LOADBALANCER_CIDR};
use oxcast_tests::images;
use oxcast_tests::media::process::run;
use oxcast_tests::media::workspace_root;

/// One e2e.sh command (it waits up to its own --timeout, 300 s, per step).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// What every test of this binary needs, set up once.
struct Setup {
    node: &'static NodeCluster,
    /// PATH with helm and kubectl first.
    path: OsString,
    _load_balancer: MetalLb,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let node = NodeCluster::shared_blocking()
            .unwrap_or_else(|e| panic!("the real node did not start: {e}"));
        let out = images::scratch_dir("node-e2e").expect("a directory for the images");
        let built = images::build_oci_images(&out).expect("build the OCI images");
        for image in &built {
            node.import_image_blocking(&image.path)
                .unwrap_or_else(|e| panic!("import {} into the node: {e}", image.name));
            eprintln!("node_e2e: imported {}", image.name);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let load_balancer = runtime
            .block_on(MetalLb::start(node.kubeconfig(), LOADBALANCER_CIDR))
            .unwrap_or_else(|e| panic!("the MetalLB controller did not start: {e}"));
        let helm_dir = Helm::V4
            .path()
            .parent()
            .expect("helm's directory")
            .to_path_buf();
        let kubectl_dir = node
            .cluster()
            .bin_dir()
            .expect("the local cluster's binaries")
            .to_path_buf();
        let path = std::env::join_paths([helm_dir, kubectl_dir].into_iter().chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .expect("PATH");
        Setup {
            node,
            path,
            _load_balancer: load_balancer,
        }
    })
}

/// One test at a time on the node; a failed test does not block the rest.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The start of a test on the node: one test at a time, the chart
/// installed as the README's end-to-end script does, and namespace `ns`
/// created afresh. Hold the guard for the whole test.
fn begin(ns: &str) -> (MutexGuard<'static, ()>, &'static Setup) {
    let serial = serial();
    let setup = setup();
    run_line(setup, "tests/kind/e2e.sh install", &[]);
    let _ = kubectl_try(setup, &["delete", "namespace", ns, "--wait=true"]);
    kubectl(setup, &["create", "namespace", ns]);
    (serial, setup)
}

/// Runs a shell command line from the README or a workflow, as written, in
/// the repository, against the node's cluster.
fn run_line(setup: &Setup, line: &str, extra_env: &[(&str, &Path)]) {
    eprintln!("node_e2e: $ {line}");
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", line])
        .current_dir(workspace_root())
        .env("PATH", &setup.path)
        .env("KUBECONFIG", setup.node.kubeconfig());
    for (key, value) in extra_env {
        cmd.env(key, value);
    }
    let done = run(cmd, SCRIPT_TIMEOUT).unwrap_or_else(|e| panic!("run {line}: {e}"));
    assert!(
        done.success(),
        "`{line}` failed ({:?}):\n--- stdout\n{}\n--- stderr\n{}\n--- node logs in {}",
        done.status,
        done.stdout,
        done.stderr,
        setup.node.dir().join("logs").display()
    );
    eprintln!("{}", done.stderr);
}

/// The shell lines of the first ```sh block after `heading` in `file`,
/// with backslash continuations joined.
fn shell_block_after(file: &str, heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join(file))
        .unwrap_or_else(|e| panic!("read {file}: {e}"));
    let after = text
        .split_once(heading)
        .unwrap_or_else(|| panic!("{file} has no {heading:?}"))
        .1;
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("{file}: no ```sh block after {heading:?}"))
        .0;
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line.trim());
                if !current.trim().is_empty() {
                    lines.push(std::mem::take(&mut current).trim().to_string());
                }
                current.clear();
            }
        }
    }
    lines
}

/// The kind workflow's `run:` line that calls `tests/kind/e2e.sh` with
/// `command`, as written there.
fn workflow_line(command: &str) -> String {
    let text = std::fs::read_to_string(workspace_root().join(".github/workflows/e2e-kind.yml"))
        .expect("read the kind workflow");
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("tests/kind/e2e.sh") && l.ends_with(&format!(" {command}")))
        .unwrap_or_else(|| panic!("the kind workflow has no e2e.sh ... {command} line"))
        .to_string()
}

#[test]
fn the_readme_end_to_end_commands_pass_on_a_real_node() {
    let _serial = serial();
    let setup = setup();
    let readme = shell_block_after("README.md", "### End-to-end check of a cluster");
    assert!(
        readme.len() == 2 && readme[0].ends_with(" all") && readme[1].ends_with(" cleanup"),
        "the README's e2e block changed; update this test: {readme:?}"
    );

    // Install the chart with the images built here, the minimal example,
    // ffmpeg to the LoadBalancer address, every segment back over HTTP.
    run_line(setup, &readme[0], &[]);

    // The scale-out example on a shared volume, as the kind workflow runs
    // it; this machine is the node, so the volume is a local directory.
    let rwx = tempfile::Builder::new()
        .prefix("oxcast-rwx-")
        .tempdir()
        .expect("a directory for the shared volume");
    run_line(
        setup,
        "tests/kind/e2e.sh --rwx-dir \"$RWX_DIR\" host-rwx-storage",
        &[("RWX_DIR", rwx.path())],
    );
    run_line(setup, &workflow_line("scale-out"), &[]);

    run_line(setup, &readme[1], &[]);
}

/// The image names the chart's defaults use are the ones imported.
#[test]
fn the_node_runs_the_images_under_the_chart_default_names() {
    let _serial = serial();
    let setup = setup();
    let out = setup
        .node
        .node_command("ctr")
        .arg("--address")
        .arg(setup.node.containerd_socket())
        .args(["-n", "k8s.io", "images", "list", "-q"])
        .output()
        .expect("run ctr images list");
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    for stage in ["oxcast-operator", "oxcast-ingest"] {
        let name = images::chart_image_name(stage).expect("the chart's image name");
        assert!(
            listed.lines().any(|l| l == name),
            "{name} is not in the node's containerd:\n{listed}"
        );
    }
}

/// `kubectl ARGS` against the node's cluster; panics unless it succeeds.
fn kubectl(setup: &Setup, args: &[&str]) -> String {
    let mut cmd = setup.node.cluster().kubectl();
    cmd.args(args);
    let done = run(cmd, Duration::from_secs(120)).expect("run kubectl");
    assert!(
        done.success(),
        "kubectl {args:?} failed: {}{}",
        done.stdout,
        done.stderr
    );
    done.stdout
}

/// `kubectl ARGS` that may fail (for polling).
fn kubectl_try(setup: &Setup, args: &[&str]) -> Option<String> {
    let mut cmd = setup.node.cluster().kubectl();
    cmd.args(args);
    run(cmd, Duration::from_secs(60))
        .ok()
        .filter(|d| d.success())
        .map(|d| d.stdout)
}

/// Processes on this machine whose cgroup names pod `uid` (the node's
/// containers are ordinary processes of the host), with their command line.
fn pod_processes(uid: &str) -> Vec<(u32, String)> {
    let needle = format!("pod{uid}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if !cgroup.contains(&needle) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        found.push((pid, cmdline.trim().to_string()));
    }
    found
}

/// The `Uid:` line of /proc/PID/status: real, effective, saved, fs.
fn uids(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read the process status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("a Uid line")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The mount options of the process's root filesystem.
fn root_mount_options(pid: u32) -> String {
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("read mountinfo");
    mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .and_then(|l| l.split_whitespace().nth(5))
        .expect("the root mount")
        .to_string()
}

fn jsonpath(setup: &Setup, ns: &str, object: &str, path: &str) -> String {
    kubectl(
        setup,
        &["-n", ns, "get", object, "-o", &format!("jsonpath={path}")],
    )
}

/// Waits (at most 300 s, kubectl's own wait) until LiveApplication `app`
/// is Ready.
fn wait_ready(setup: &Setup, ns: &str, app: &str) {
    kubectl(
        setup,
        &[
            "-n",
            ns,
            "wait",
            &format!("liveapplication/{app}"),
            "--for=condition=Ready",
            "--timeout=300s",
        ],
    );
}

/// The address of `app`'s HTTP Service (ClusterIP, port 80), reachable
/// from this machine through the node's routes.
fn http_service(setup: &Setup, ns: &str, app: &str) -> std::net::SocketAddr {
    let cluster_ip = jsonpath(
        setup,
        ns,
        &format!("service/{app}-http"),
        "{.spec.clusterIP}",
    );
    format!("{cluster_ip}:80").parse().expect("ClusterIP")
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `limit`;
/// a time-out fails with what the cluster says about namespace `ns`
/// (objects, pod descriptions, every container's log): the node is gone
/// once the test binary ends.
fn wait_or_dump<T>(
    setup: &Setup,
    ns: &str,
    what: &str,
    limit: Duration,
    check: impl FnMut() -> Option<T>,
) -> T {
    let mut check = check;
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if std::time::Instant::now() >= deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                diagnostics(setup, ns)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn diagnostics(setup: &Setup, ns: &str) -> String {
    let mut out = String::new();
    for args in [
        vec![
            "-n",
            ns,
            "get",
            "all,pvc,liveapplications,events",
            "-o",
            "wide",
        ],
        vec!["get", "pv,nodes", "-o", "wide"],
        vec!["-n", ns, "describe", "pods"],
    ] {
        out.push_str(&format!("--- kubectl {}\n", args.join(" ")));
        out.push_str(&kubectl_try(setup, &args).unwrap_or_else(|| "(failed)".into()));
    }
    let pods = kubectl_try(setup, &["-n", ns, "get", "pods", "-o", "name"]).unwrap_or_default();
    for pod in pods.lines() {
        out.push_str(&format!("--- logs {pod}\n"));
        out.push_str(
            &kubectl_try(
                setup,
                &[
                    "-n",
                    ns,
                    "logs",
                    pod,
                    "--all-containers",
                    "--prefix",
                    "--tail=60",
                ],
            )
            .unwrap_or_else(|| "(failed)".into()),
        );
    }
    out
}

/// A ReadWriteMany volume shared by the pods of one test: a 1777 directory
/// of this machine (the node) behind a hostPath PersistentVolume and a
/// StorageClass of its own, both called `name`. Dropping it deletes both
/// (without waiting: the claim goes with the test's namespace) and the
/// directory.
struct SharedVolume {
    setup: &'static Setup,
    name: &'static str,
    dir: tempfile::TempDir,
}

impl SharedVolume {
    fn new(setup: &'static Setup, name: &'static str) -> Self {
        let _ = kubectl_try(setup, &["delete", "persistentvolume", name]);
        let _ = kubectl_try(setup, &["delete", "storageclass", name]);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .expect("a directory for the volume");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .expect("chmod the volume");
        Self { setup, name, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The StorageClass and PersistentVolume, to apply with the
    /// LiveApplication whose `storage.persistentVolumeClaim` names the class.
    fn objects(&self) -> String {
        format!(
            r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {name}}}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}}}
spec:
  storageClassName: {name}
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {{path: {dir}, type: Directory}}"#,
            name = self.name,
            dir = self.path().display(),
        )
    }

    /// A LiveApplication's `spec.http` and `spec.storage` (indented for
    /// its spec): the HTTP server in a Deployment of its own behind a
    /// ClusterIP Service on port 80, the volume claimed ReadWriteMany.
    fn http_deployment_and_claim(&self) -> String {
        format!(
            r#"  http:
    mode: deployment
    replicas: 1
    service: {{type: ClusterIP, port: 80}}
  storage:
    persistentVolumeClaim:
      storageClassName: {name}
      size: 1Gi
      accessModes: [ReadWriteMany]
"#,
            name = self.name
        )
    }

    /// `kubectl apply` of `manifest`, written next to (not inside) the
    /// trees the pods serve.
    fn apply(&self, manifest: &str) {
        let file = self.path().join("manifest.yaml");
        std::fs::write(&file, manifest).expect("write the manifest");
        kubectl(
            self.setup,
            &["apply", "-f", file.to_str().expect("utf-8 path")],
        );
    }
}

impl Drop for SharedVolume {
    fn drop(&mut self) {
        for kind in ["persistentvolume", "storageclass"] {
            let _ = kubectl_try(self.setup, &["delete", kind, self.name, "--wait=false"]);
        }
    }
}

/// Waits (a minute at most) until the playlist at `path`, fetched through
/// the HTTP Service at `addr`, is served (200) and contains `needle`.
fn wait_for_playlist(
    setup: &Setup,
    ns: &str,
    addr: std::net::SocketAddr,
    path: &str,
    needle: &str,
) {
    wait_or_dump(
        setup,
        ns,
        &format!("{needle} in {path} over the HTTP Service"),
        Duration::from_secs(60),
        || {
            oxcast_tests::media::http::get(addr, path)
                .ok()
                .filter(|r| r.status == 200 && r.text().contains(needle))
        },
    );
}

/// Starts a real-time ffmpeg publisher (the fixture looped for minutes) and
/// returns it once it has stayed connected for 2 s; retries for a minute (a
/// LoadBalancer address whose endpoints are not programmed yet refuses),
/// then fails with ffmpeg's own words and the cluster's state.
fn start_publisher(
    setup: &Setup,
    ns: &str,
    media: &oxcast_tests::media::fixtures::Media,
    url: &str,
) -> oxcast_tests::media::Publisher {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut publisher =
            oxcast_tests::media::Publisher::start_with(media, url, &["-stream_loop", "30"]);
        std::thread::sleep(Duration::from_secs(2));
        if publisher.is_running() {
            return publisher;
        }
        let done = publisher.wait();
        if std::time::Instant::now() >= deadline {
            panic!(
                "ffmpeg cannot publish to {url}: {:?}\n{}\n{}",
                done.status,
                done.stderr,
                diagnostics(setup, ns)
            );
        }
        eprintln!(
            "node_e2e: ffmpeg could not publish to {url} yet: {}",
            done.stderr.trim()
        );
    }
}

/// What only real pods show, on one LiveApplication with its segments on a
/// shared volume (a directory of this machine) and the HTTP server in its
/// own Deployment: the restricted pods run as 65532 on a read-only root and
/// write segments through fsGroup; `kubectl logs` is JSON; SIGTERM with a
/// live publisher ends the playlist within the grace period; a config change
/// rolls the pods, cutting the publisher and ending the playlist cleanly;
/// deleting the LiveApplication removes everything it created.
#[test]
fn ingest_pods_run_restricted_and_end_streams_cleanly_on_sigterm_and_rollout() {
    use oxcast_tests::media::fixtures::{require, Fixture};
    use oxcast_tests::media::http;

    let ns = "oxcast-pods";
    let (_serial, setup) = begin(ns);
    let app = "pods";
    let key = "sigterm";

    // Restricted Pod Security is enforced on this namespace without any
    // label of ours: a pod that asks for root is refused.
    let privileged = kubectl_try(
        setup,
        &[
            "-n",
            ns,
            "run",
            "root-shell",
            "--image=oxcast.test/busybox:1",
            "--restart=Never",
            "--overrides={\"spec\":{\"securityContext\":{\"runAsUser\":0}}}",
            "--",
            "sleep",
            "1",
        ],
    );
    assert!(
        privileged.is_none(),
        "a pod running as root was admitted: {privileged:?}"
    );

    // The shared volume: a directory of this machine, as in e2e.sh's
    // host-rwx-storage, with a StorageClass of its own.
    let volume = SharedVolume::new(setup, "oxcast-pods");
    let manifest = format!(
        r#"{volume_objects}
---
apiVersion: live.oxcast.dev/v1alpha1
kind: LiveApplication
metadata: {{name: {app}, namespace: {ns}}}
spec:
  rtmp:
    service: {{type: LoadBalancer}}
  hls:
    fragment: 1s
    playlistLength: 10s
{served_from_volume}"#,
        volume_objects = volume.objects(),
        served_from_volume = volume.http_deployment_and_claim(),
    );
    volume.apply(&manifest);
    wait_ready(setup, ns, app);
    let rtmp_url = wait_or_dump(
        setup,
        ns,
        "status.rtmpUrl",
        Duration::from_secs(120),
        || {
            Some(jsonpath(
                setup,
                ns,
                &format!("liveapplication/{app}"),
                "{.status.rtmpUrl}",
            ))
            .filter(|u| u.starts_with("rtmp://198.18.200."))
        },
    );
    let http_addr = http_service(setup, ns, app);
    let first = running_ingest_pods(setup, ns, app, ".metadata.uid");
    let (pod, uid) = first
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no running ingest pod: {first:?}"));

    // The ingest server runs as 65532 on a read-only root filesystem.
    let processes = pod_processes(&uid);
    let (server_pid, _) = processes
        .iter()
        .find(|(_, cmd)| cmd.starts_with("oxcast-ingest rtmp"))
        .unwrap_or_else(|| panic!("no oxcast-ingest rtmp process in pod {pod}: {processes:?}"));
    assert_eq!(uids(*server_pid), "65532 65532 65532 65532");
    let options = root_mount_options(*server_pid);
    assert!(
        options.split(',').any(|o| o == "ro"),
        "the ingest container's root is mounted {options}"
    );

    // A live stream through the LoadBalancer address, served by the HTTP
    // Deployment from the shared volume, written through fsGroup.
    let media = require(Fixture::Av14s);
    let mut publisher = start_publisher(setup, ns, media, &format!("{rtmp_url}/{key}"));
    let playlist_path = format!("/live/{key}/index.m3u8");
    wait_for_playlist(setup, ns, http_addr, &playlist_path, "#EXTINF:");
    let on_disk = volume.path().join(key).join("index.m3u8");
    let segment = std::fs::read_dir(volume.path().join(key))
        .expect("the stream's directory on the volume")
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "ts"))
        .expect("a segment on the volume");
    let gid = std::os::unix::fs::MetadataExt::gid(&segment.metadata().expect("segment metadata"));
    assert_eq!(gid, 65532, "segments are written with the pod's fsGroup");

    // kubectl logs: one JSON object per line.
    let logs = kubectl(setup, &["-n", ns, "logs", &pod, "-c", "ingest"]);
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the ingest container logged nothing");
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        assert!(value.get("level").is_some(), "no level in {line}");
    }
    assert!(
        logs.contains("publish started"),
        "the publish is not in the logs:\n{logs}"
    );

    // The shared volume makes the operator turn on Lease ownership: the
    // stream's Lease names this pod's heartbeat, visible with kubectl.
    let leases = kubectl(
        setup,
        &[
            "-n",
            ns,
            "get",
            "leases",
            "-l",
            &format!("oxcast.io/lease-group={app}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.holderIdentity}{\"\\n\"}{end}",
        ],
    );
    assert!(
        leases
            .lines()
            .any(|l| l.starts_with(&format!("{app}-stream-{key}-"))),
        "no Lease for stream {key}:\n{leases}"
    );
    assert!(
        leases
            .lines()
            .any(|l| l.starts_with(&format!("{app}-replica-")) && l.contains(&pod)),
        "no heartbeat Lease held by {pod}:\n{leases}"
    );

    // Readiness tells the truth: an HLS root the server cannot write takes
    // the ingest pod out of its Service, and it comes back when fixed.
    let pod_ready = |want: &str| {
        jsonpath(
            setup,
            ns,
            &format!("pod/{pod}"),
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        ) == want
    };
    std::fs::set_permissions(
        volume.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("make the volume unwritable for the pod");
    wait_or_dump(
        setup,
        ns,
        "the ingest pod to turn unready with an unwritable HLS root",
        Duration::from_secs(60),
        || pod_ready("False").then_some(()),
    );
    std::fs::set_permissions(
        volume.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("make the volume writable again");
    wait_or_dump(
        setup,
        ns,
        "the ingest pod to be ready again",
        Duration::from_secs(60),
        || pod_ready("True").then_some(()),
    );

    // SIGTERM with a live publisher: the pod's own server ends the playlist
    // within the grace period, and the publisher is cut.
    let grace: u64 = jsonpath(
        setup,
        ns,
        &format!("pod/{pod}"),
        "{.spec.terminationGracePeriodSeconds}",
    )
    .parse()
    .expect("terminationGracePeriodSeconds");
    let mut follow = setup.node.cluster().kubectl();
    follow.args(["-n", ns, "logs", "-f", &pod, "-c", "ingest", "--since=1s"]);
    let follower = oxcast_tests::media::process::Running::spawn(follow).expect("kubectl logs -f");
    let deleted_at = std::time::Instant::now();
    kubectl(setup, &["-n", ns, "delete", "pod", &pod, "--wait=false"]);
    wait_or_dump(
        setup,
        ns,
        "ENDLIST in the playlist on the volume",
        Duration::from_secs(grace + 10),
        || {
            std::fs::read_to_string(&on_disk)
                .ok()
                .filter(|p| p.contains("#EXT-X-ENDLIST"))
        },
    );
    let ended_after = deleted_at.elapsed();
    assert!(
        ended_after <= Duration::from_secs(grace),
        "the playlist ended {ended_after:?} after the delete, grace period {grace}s"
    );
    let followed = follower.wait(Duration::from_secs(grace + 30));
    assert!(
        followed
            .stdout
            .contains("shutting down: finishing segments and playlists"),
        "the terminating pod did not shut down on SIGTERM:\n{}",
        followed.stdout
    );
    wait_or_dump(
        setup,
        ns,
        "the publisher to be cut",
        Duration::from_secs(grace + 30),
        || (!publisher.is_running()).then_some(()),
    );
    let ended = http::get(http_addr, &playlist_path).expect("fetch the ended playlist");
    assert!(ended.text().contains("#EXT-X-ENDLIST"), "{}", ended.text());

    // A config change rolls the ingest pod: a new publisher is cut by the
    // rollout and its playlist ends cleanly.
    wait_ready(setup, ns, app);
    let second_key = "rollout";
    let mut publisher = start_publisher(setup, ns, media, &format!("{rtmp_url}/{second_key}"));
    let second_playlist = format!("/live/{second_key}/index.m3u8");
    wait_for_playlist(setup, ns, http_addr, &second_playlist, "#EXTINF:");
    kubectl(
        setup,
        &[
            "-n",
            ns,
            "patch",
            &format!("liveapplication/{app}"),
            "--type=merge",
            "-p",
            r#"{"spec":{"hls":{"playlistLength":"12s"}}}"#,
        ],
    );
    wait_or_dump(
        setup,
        ns,
        "the rollout to cut the publisher",
        Duration::from_secs(120),
        || (!publisher.is_running()).then_some(()),
    );
    wait_for_playlist(setup, ns, http_addr, &second_playlist, "#EXT-X-ENDLIST");
    kubectl(
        setup,
        &[
            "-n",
            ns,
            "rollout",
            "status",
            &format!("deployment/{app}"),
            "--timeout=300s",
        ],
    );

    // Deleting the LiveApplication removes every pod, Service, ConfigMap
    // and claim it created.
    kubectl(
        setup,
        &[
            "-n",
            ns,
            "delete",
            &format!("liveapplication/{app}"),
            "--wait=true",
        ],
    );
    let selector = format!("app.kubernetes.io/instance={app}");
    wait_or_dump(
        setup,
        ns,
        "the application's objects to be gone",
        Duration::from_secs(180),
        || {
            let left = kubectl(
                setup,
                &[
                    "-n",
                    ns,
                    "get",
                    "pods,services,deployments,configmaps,pvc",
                    "-l",
                    &selector,
                    "-o",
                    "name",
                ],
            );
            left.trim().is_empty().then_some(())
        },
    );
    kubectl(
        setup,
        &["delete", "namespace", ns, "--wait=true", "--timeout=180s"],
    );
}

/// `EXT-X-MEDIA-SEQUENCE` of a playlist.
fn media_sequence(playlist: &str) -> Option<u64> {
    playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The segment URIs a playlist lists, in order.
fn segment_uris(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Media sequence number of the last segment listed.
fn last_sequence(playlist: &str) -> Option<u64> {
    let listed = segment_uris(playlist).len() as u64;
    media_sequence(playlist).map(|first| first + listed.saturating_sub(1))
}

/// The pod (replica id) holding the Lease of stream `key` of `app`, from
/// `kubectl get leases`: holderIdentity is `<pod>_<nonce>`.
/// The app's running ingest pods: each one's name and the value of `field`
/// (a JSONPath such as `.status.podIP`).
fn running_ingest_pods(setup: &Setup, ns: &str, app: &str, field: &str) -> Vec<(String, String)> {
    kubectl(
        setup,
        &[
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            &format!("app.kubernetes.io/instance={app},app.kubernetes.io/component=ingest"),
            "--field-selector=status.phase=Running",
            "-o",
            &format!(
                "jsonpath={{range .items[*]}}{{.metadata.name}} {{{field}}}{{\"\\n\"}}{{end}}"
            ),
        ],
    )
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

fn stream_owner(setup: &Setup, ns: &str, app: &str, key: &str) -> Option<String> {
    let leases = kubectl_try(
        setup,
        &[
            "-n",
            ns,
            "get",
            "leases",
            "-l",
            &format!("oxcast.io/lease-group={app},oxcast.io/lease-kind=stream"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.holderIdentity}{\"\\n\"}{end}",
        ],
    )?;
    leases.lines().find_map(|l| {
        let (name, holder) = l.split_once(' ')?;
        name.starts_with(&format!("{app}-stream-{key}-"))
            .then(|| holder.rsplit_once('_').map(|(pod, _)| pod.to_string()))
            .flatten()
    })
}

/// One observation of the live playlist served over the HTTP Service.
struct Seen {
    at: std::time::Instant,
    playlist: String,
}

/// Issue 12's scale-out scenarios on real pods: three ingest replicas on a
/// shared (hostPath, ReadWriteMany) volume with Lease ownership, the HTTP
/// server in its own Deployment. One publisher through the LoadBalancer
/// address; a second publisher of the same key sent straight to another
/// replica's pod address is rejected and the stream goes on; `kubectl
/// delete pod` of the owner (the stream Lease's holder) mid-stream cuts the
/// publisher after the configured preStop delay; the publisher reconnects as
/// an encoder would and the stream continues on another replica: media
/// sequence goes on, `EXT-X-DISCONTINUITY`, no `EXT-X-ENDLIST` while
/// publishing, no listed segment missing from the volume, the playlist over
/// the HTTP Service keeps advancing; the operator's PodDisruptionBudget
/// is there. Also measures Ready → first accepted publish.
#[test]
fn scale_out_streams_survive_the_owner_pod_and_keep_one_owner() {
    use oxcast_tests::media::fixtures::{require, Fixture};
    use oxcast_tests::media::http;
    use std::time::Instant;

    let ns = "oxcast-scale";
    let (_serial, setup) = begin(ns);
    let app = "scale";
    let key = "owned";
    let pre_stop = 3u64;
    let playlist_length = Duration::from_secs(10);
    let volume = SharedVolume::new(setup, "oxcast-scale");
    let manifest = format!(
        r#"{volume_objects}
---
apiVersion: live.oxcast.dev/v1alpha1
kind: LiveApplication
metadata: {{name: {app}, namespace: {ns}}}
spec:
  replicas: 3
  preStopDelay: {pre_stop}s
  podDisruptionBudget: {{maxUnavailable: 1}}
  rtmp:
    service: {{type: LoadBalancer}}
  hls:
    fragment: 1s
    playlistLength: {playlist}s
{served_from_volume}"#,
        volume_objects = volume.objects(),
        served_from_volume = volume.http_deployment_and_claim(),
        playlist = playlist_length.as_secs(),
    );
    volume.apply(&manifest);
    wait_ready(setup, ns, app);
    let ready_at = Instant::now();
    let rtmp_url = jsonpath(
        setup,
        ns,
        &format!("liveapplication/{app}"),
        "{.status.rtmpUrl}",
    );
    assert!(
        rtmp_url.starts_with("rtmp://198.18.200."),
        "Ready without a LoadBalancer address: {rtmp_url:?}"
    );
    let http_addr = http_service(setup, ns, app);

    // The operator's PodDisruptionBudget over the three ingest pods.
    wait_or_dump(
        setup,
        ns,
        "the ingest PodDisruptionBudget to cover three pods",
        Duration::from_secs(60),
        || {
            kubectl_try(
                setup,
                &[
                    "-n",
                    ns,
                    "get",
                    &format!("poddisruptionbudget/{app}-ingest"),
                    "-o",
                    "jsonpath={.spec.maxUnavailable} {.status.expectedPods} {.status.disruptionsAllowed}",
                ],
            )
            .filter(|b| b == "1 3 1")
        },
    );

    // Ready means routed: the first publish right after Ready is accepted
    // (before Ready waited for the RTMP Service's EndpointSlice, it could
    // be refused for a second while kube-proxy caught up).
    let media = require(Fixture::Av14s);
    let url = format!("{rtmp_url}/{key}");
    let mut first_try =
        oxcast_tests::media::Publisher::start_with(media, &url, &["-stream_loop", "30"]);
    let tried_after = ready_at.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let mut publisher = if first_try.is_running() {
        eprintln!("node_e2e: the first publish, {tried_after:?} after Ready, was accepted");
        first_try
    } else {
        let refused = first_try.wait();
        eprintln!(
            "node_e2e: the first publish, {tried_after:?} after Ready, was refused: {}",
            refused.stderr.trim()
        );
        start_publisher(setup, ns, media, &url)
    };
    let playlist_path = format!("/live/{key}/index.m3u8");
    let fetch = || {
        http::get(http_addr, &playlist_path)
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.text().to_string())
    };
    let mut seen: Vec<Seen> = Vec::new();
    let observe = |seen: &mut Vec<Seen>| -> Option<String> {
        let playlist = fetch()?;
        // Every segment a viewer is told about is on the volume.
        for uri in segment_uris(&playlist) {
            let file = volume.path().join(key).join(&uri);
            assert!(
                file.is_file(),
                "{uri} is listed but not on the volume:\n{playlist}"
            );
        }
        seen.push(Seen {
            at: Instant::now(),
            playlist: playlist.clone(),
        });
        Some(playlist)
    };
    wait_or_dump(
        setup,
        ns,
        "three segments in the playlist over the HTTP Service",
        Duration::from_secs(60),
        || observe(&mut seen).filter(|p| segment_uris(p).len() >= 3),
    );
    let owner = wait_or_dump(
        setup,
        ns,
        "the stream Lease",
        Duration::from_secs(30),
        || stream_owner(setup, ns, app, key),
    );
    let running_pods = || running_ingest_pods(setup, ns, app, ".status.podIP");
    let pods = running_pods();
    assert_eq!(pods.len(), 3, "three running ingest pods: {pods:?}");
    assert!(
        pods.iter().any(|(n, _)| *n == owner),
        "the Lease holder {owner} is one of the ingest pods {pods:?}"
    );
    eprintln!("node_e2e: stream {key} is owned by {owner}");

    // A second publisher of the same key on another replica (straight to
    // its pod address, so it cannot land on the owner): rejected, and the
    // stream goes on.
    let (other, other_ip) = pods
        .iter()
        .find(|(n, _)| *n != owner)
        .cloned()
        .expect("another replica");
    let app_name = rtmp_url.rsplit('/').next().expect("the RTMP app");
    let second = oxcast_tests::media::Publisher::start(
        media,
        &format!("rtmp://{other_ip}:1935/{app_name}/{key}"),
    );
    let done = second.wait_at_most(Duration::from_secs(30));
    assert!(
        !done.success(),
        "a second publisher of {key} on {other} was accepted: {done:?}"
    );
    let other_logs = kubectl(setup, &["-n", ns, "logs", &other, "-c", "ingest"]);
    assert!(
        other_logs.contains("publish rejected")
            && other_logs.contains(&format!("stream {key} is already being published")),
        "{other} did not log the rejection:\n{other_logs}"
    );
    assert!(publisher.is_running(), "the first publisher was cut");
    let before_second = seen.last().and_then(|s| last_sequence(&s.playlist));
    wait_or_dump(
        setup,
        ns,
        "the stream to keep advancing after the rejected publisher",
        Duration::from_secs(30),
        || {
            observe(&mut seen)
                .filter(|p| last_sequence(p) >= before_second.map(|s| s + 2))
                .map(|_| ())
        },
    );
    assert_eq!(
        stream_owner(setup, ns, app, key).as_deref(),
        Some(owner.as_str()),
        "the owner did not change"
    );
    for s in &seen {
        assert!(
            !s.playlist.contains("#EXT-X-ENDLIST"),
            "ENDLIST while publishing:\n{}",
            s.playlist
        );
    }
    let before_delete = seen.last().map(|s| s.playlist.clone()).expect("a playlist");
    let last_before = last_sequence(&before_delete).expect("a media sequence");

    // `kubectl delete pod` of the owner mid-stream: the publisher is cut
    // once the preStop delay is over (SIGTERM ends the publish).
    let deleted_at = Instant::now();
    kubectl(setup, &["-n", ns, "delete", "pod", &owner, "--wait=false"]);
    wait_or_dump(
        setup,
        ns,
        "the owner's publisher to be cut",
        Duration::from_secs(60),
        || (!publisher.is_running()).then_some(()),
    );
    let cut_after = deleted_at.elapsed();
    eprintln!("node_e2e: delete pod {owner} -> publisher cut after {cut_after:?}");
    assert!(
        cut_after >= Duration::from_secs(pre_stop),
        "the publisher was cut {cut_after:?} after the delete, before the {pre_stop}s preStop delay"
    );
    drop(publisher);

    // The broadcaster's encoder reconnects to the same URL and lands on
    // another replica (the deleted pod left the Service's endpoints).
    let reconnect_at = Instant::now();
    let publisher = start_publisher(setup, ns, media, &url);
    eprintln!(
        "node_e2e: reconnected {:?} after the cut ({:?} after the delete)",
        reconnect_at.elapsed(),
        deleted_at.elapsed()
    );
    let new_owner = wait_or_dump(
        setup,
        ns,
        "a new owner of the stream",
        Duration::from_secs(30),
        || stream_owner(setup, ns, app, key).filter(|o| *o != owner),
    );
    // Another replica, or the Deployment's replacement for the deleted pod
    // if it was Ready before the encoder reconnected: a running ingest pod.
    let now_running = running_pods();
    assert!(
        now_running.iter().any(|(n, _)| *n == new_owner),
        "the new owner {new_owner} is a running ingest pod {now_running:?}"
    );
    eprintln!("node_e2e: stream {key} continues on {new_owner}");

    // The stream continues from the volume: the sequence goes on past what
    // was listed before the delete, after a discontinuity.
    let continued = wait_or_dump(
        setup,
        ns,
        "the stream to continue on another replica",
        Duration::from_secs(60),
        || {
            observe(&mut seen).filter(|p| {
                p.contains("#EXT-X-DISCONTINUITY")
                    && !p.contains("#EXT-X-ENDLIST")
                    && last_sequence(p) > Some(last_before + 1)
            })
        },
    );
    assert!(
        media_sequence(&continued) >= media_sequence(&before_delete),
        "the media sequence went back:\nbefore\n{before_delete}\nafter\n{continued}"
    );
    let continued_at = seen.len() - 1;
    eprintln!(
        "node_e2e: continued {:?} after the delete:\n{continued}",
        deleted_at.elapsed()
    );

    // Two playlist lengths of publishing on the new owner: no ENDLIST, the
    // playlist keeps advancing, and the sequence never goes back.
    let watch_until = Instant::now() + playlist_length * 2;
    while Instant::now() < watch_until {
        let playlist = observe(&mut seen).unwrap_or_else(|| {
            panic!(
                "the playlist is not served while publishing\n{}",
                diagnostics(setup, ns)
            )
        });
        assert!(
            !playlist.contains("#EXT-X-ENDLIST"),
            "ENDLIST while publishing:\n{playlist}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = &seen[continued_at..];
    for pair in seen.windows(2) {
        assert!(
            media_sequence(&pair[1].playlist) >= media_sequence(&pair[0].playlist),
            "the media sequence went back:\n{}\n{}",
            pair[0].playlist,
            pair[1].playlist
        );
    }
    let first_after = after.first().and_then(|s| last_sequence(&s.playlist));
    let last_after = after.last().and_then(|s| last_sequence(&s.playlist));
    let advanced = last_after
        .zip(first_after)
        .map(|(l, f)| l.saturating_sub(f));
    let span = after
        .last()
        .zip(after.first())
        .map(|(l, f)| l.at - f.at)
        .unwrap_or_default();
    assert!(
        advanced >= Some(10),
        "the playlist advanced by {advanced:?} segments of 1 s in {span:?}"
    );
    // Every segment still listed is served over HTTP.
    let last = seen.last().map(|s| s.playlist.clone()).expect("a playlist");
    for uri in segment_uris(&last) {
        let path = format!("/live/{key}/{uri}");
        let got = http::get(http_addr, &path).expect("fetch a segment");
        assert_eq!(got.status, 200, "{path}");
    }
    assert!(
        stream_owner(setup, ns, app, key).as_deref() == Some(new_owner.as_str()),
        "one owner while publishing"
    );
    drop(publisher);

    kubectl(
        setup,
        &["delete", "namespace", ns, "--wait=true", "--timeout=180s"],
    );
}

/// Encrypted HLS in the scale-out layout under a real kubelet: two ingest
/// replicas and a separate HTTP Deployment on one shared volume, the
/// key-token Secret mounted by the kubelet into the HTTP pod. The keys an
/// ingest pod writes are served by the HTTP pod only with a token, never
/// from the HLS tree; every listed segment fetched over the Service
/// decrypts with the key its playlist names; ffmpeg plays the stream
/// through the Service with a token and not without one.
#[test]
fn encrypted_streams_share_keys_across_pods_and_need_a_token_on_a_real_node() {
    use oxcast_tests::media::fixtures::{require, Fixture};
    use oxcast_tests::media::hls_keys::{decrypt, is_transport_stream, key_id, listed, mint};
    use oxcast_tests::media::http;
    use oxcast_tests::media::probe::frame_sizes;

    let ns = "oxcast-enc";
    let (_serial, setup) = begin(ns);
    let app = "secure";
    let key = "paid";
    let secret = "node-e2e key-token secret";
    let volume = SharedVolume::new(setup, "oxcast-enc");
    kubectl(
        setup,
        &[
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            "key-token",
            &format!("--from-literal=secret={secret}"),
        ],
    );
    let manifest = format!(
        r#"{volume_objects}
---
apiVersion: live.oxcast.dev/v1alpha1
kind: LiveApplication
metadata: {{name: {app}, namespace: {ns}}}
spec:
  replicas: 2
  rtmp:
    service: {{type: LoadBalancer}}
  hls:
    fragment: 1s
    playlistLength: 10s
    encryption:
      enabled: true
      fragmentsPerKey: 2
      authorization:
        mode: signed
        secretName: key-token
{served_from_volume}"#,
        volume_objects = volume.objects(),
        served_from_volume = volume.http_deployment_and_claim(),
    );
    volume.apply(&manifest);
    wait_ready(setup, ns, app);
    let rtmp_url = jsonpath(
        setup,
        ns,
        &format!("liveapplication/{app}"),
        "{.status.rtmpUrl}",
    );
    let http_addr = http_service(setup, ns, app);

    let media = require(Fixture::Av14s);
    let publisher = start_publisher(setup, ns, media, &format!("{rtmp_url}/{key}"));
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 600;
    let token = mint(secret, key, expires, "");
    let playlist_path = format!("/live/{key}/index.m3u8");
    let with_token = format!("{playlist_path}?token={token}");

    // Four segments (two keys) listed, fetched as a viewer with a token.
    let playlist = wait_or_dump(
        setup,
        ns,
        "four encrypted segments in the playlist over the HTTP Service",
        Duration::from_secs(90),
        || {
            http::get(http_addr, &with_token)
                .ok()
                .filter(|r| r.status == 200)
                .map(|r| r.text().to_string())
                .filter(|p| listed(p).len() >= 4)
        },
    );
    let segments = listed(&playlist);
    assert!(
        segments
            .iter()
            .all(|s| s.key_uri.ends_with(&format!("?token={token}"))),
        "the token is carried onto every key URI:\n{playlist}"
    );
    let key_ids: std::collections::BTreeSet<u64> =
        segments.iter().map(|s| key_id(&s.key_uri)).collect();
    assert!(
        key_ids.len() >= 2,
        "a new key every 2 segments:\n{playlist}"
    );

    for s in &segments {
        // The key, from the HTTP pod, as an ingest pod wrote it.
        let got = http::get(http_addr, &s.key_uri).expect("fetch the key");
        assert_eq!(got.status, 200, "{}: {}", s.key_uri, got.text());
        assert_eq!(got.body.len(), 16, "{}", s.key_uri);
        assert_eq!(
            got.header("cache-control"),
            Some("private, no-store"),
            "{}",
            s.key_uri
        );
        let bare = s.key_uri.split('?').next().expect("a path");
        let refused = http::get(http_addr, bare).expect("fetch the key without a token");
        assert_eq!(refused.status, 403, "{bare} without a token");
        assert!(
            !refused.body.windows(16).any(|w| w == got.body.as_slice()),
            "{bare}: key bytes in a refusal"
        );
        // The segment, shared by every viewer (no token), decrypts with it.
        let segment = http::get(http_addr, &format!("/live/{key}/{}", s.uri)).expect("segment");
        assert_eq!(segment.status, 200, "{}", s.uri);
        assert!(
            !is_transport_stream(&segment.body),
            "{} is served in clear",
            s.uri
        );
        let plain = decrypt(&got.body, &s.iv, &segment.body)
            .unwrap_or_else(|| panic!("{} does not decrypt with {}", s.uri, s.key_uri));
        assert!(
            is_transport_stream(&plain),
            "{} decrypts to something that is not MPEG-TS",
            s.uri
        );
    }

    // Keys live on the shared volume beside the tree, never inside it.
    let keys_dir = volume.path().join("keys").join(key);
    for id in &key_ids {
        assert!(
            keys_dir.join(format!("{id}.key")).is_file(),
            "key {id} is not in {}",
            keys_dir.display()
        );
    }
    let served = oxcast_tests::media::files_under(&volume.path().join("hls"));
    assert!(
        served
            .iter()
            .all(|f| f.extension().is_none_or(|e| e != "key")),
        "a key file inside the served tree: {served:?}"
    );
    for id in &key_ids {
        let probe = http::get(http_addr, &format!("/live/{key}/../../keys/{key}/{id}.key"))
            .expect("a traversal attempt");
        assert_ne!(probe.status, 200, "key {id} reachable under the HLS prefix");
    }

    // A player: once the stream has ended (so ffprobe reads to the end),
    // ffmpeg decodes it through the Service with the token, and nothing
    // without it.
    drop(publisher);
    wait_or_dump(
        setup,
        ns,
        "ENDLIST after the publisher stopped",
        Duration::from_secs(60),
        || {
            http::get(http_addr, &with_token)
                .ok()
                .filter(|r| r.status == 200 && r.text().contains("#EXT-X-ENDLIST"))
        },
    );
    let url = |path: &str| format!("http://{http_addr}{path}");
    let frames = frame_sizes(&url(&with_token)).unwrap_or_default().len();
    assert!(frames >= 30, "{frames} frames decoded with a token");
    let frames = frame_sizes(&url(&playlist_path)).unwrap_or_default().len();
    assert_eq!(frames, 0, "frames decoded without a token");

    kubectl(
        setup,
        &["delete", "namespace", ns, "--wait=true", "--timeout=180s"],
    );
}
