//! Operator scale benchmark: N LiveApplications to steady state against the
//! local control plane, with the real `oxcast-operator` binary.
//!
//! ```sh
//! cargo build --release -p oxcast-operator -p oxcast-tests
//! cargo run --release -p oxcast-tests --bin operator-scale -- [COUNT]   # default 1000
//! ```
//!
//! Reports (markdown, on stdout): time until every LiveApplication is Ready,
//! the operator's RSS, API requests per reconcile and writes per
//! application (from the operator's own `/metrics`), and the writes during a
//! full steady-state resync and after an operator restart, which must be 0:
//! the exit status is 1 when either wrote anything. The other targets of
//! issue 15 (first status of all within 30 s, RSS under 64 MiB at steady
//! state and after a restart) are reported as met or missed: they depend on
//! the machine and its load.
//!
//! kwok runs the pods, so this measures the operator and the control plane,
//! not containers. The RTMP Services are ClusterIP: with no cloud load
//! balancer, Ready would otherwise wait for an address.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use oxcast_crds::live_application::LiveApplication;
use oxcast_tests::cluster;
use oxcast_tests::operator::{has_condition, install_crd, TEST_MANAGER};
use oxcast_tests::{http, wait};

const NAMESPACE: &str = "oxcast-scale";
/// Pods per fake node (the harness's node has 110, like a kubelet default).
const PODS_PER_NODE: usize = 110;
/// kwok manages nodes with this annotation (tests/src/cluster/control_plane.rs).
const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
const RESYNC: &str = "60s";
const STEADY_TIMEOUT: Duration = Duration::from_secs(1800);
/// Issue 15's targets at 1000 LiveApplications.
const TARGET_FIRST_STATUS: Duration = Duration::from_secs(30);
const TARGET_RSS_MIB: f64 = 64.0;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    oxcast_tests::log::init_cli_tracing("warn");
    let count = match std::env::args().nth(1).map(|a| a.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: operator-scale [COUNT]");
            return ExitCode::from(2);
        }
    };
    match run(count).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("operator-scale: {e}");
            ExitCode::FAILURE
        }
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[operator-scale] {}", msg.as_ref());
}

async fn run(count: usize) -> Result<(), BoxError> {
    let operator_bin = operator_binary()?;
    let started = Instant::now();
    let cluster = cluster::shared().await?;
    progress(format!("control plane up in {:.1?}", started.elapsed()));
    let client = cluster.client()?;
    install_crd(&client).await?;
    add_fake_nodes(&client, count).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {cluster::TEST_NAMESPACE_LABEL: "true"}},
    });
    namespaces
        .patch(
            NAMESPACE,
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&ns),
        )
        .await?;

    let log_dir =
        std::env::temp_dir().join(format!("oxcast-operator-scale-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir)?;
    let mut operator = Operator::start(&operator_bin, cluster.kubeconfig(), &log_dir, "first")?;
    operator.wait_ready().await?;

    // Create everything as fast as the API server takes it.
    let apps: Api<LiveApplication> = Api::namespaced(client.clone(), NAMESPACE);
    let t0 = Instant::now();
    let creates = futures::stream::iter(0..count)
        .map(|i| {
            let apps = apps.clone();
            async move {
                let name = format!("app-{i:04}");
                let manifest = serde_json::json!({
                    "apiVersion": "live.oxcast.dev/v1alpha1",
                    "kind": "LiveApplication",
                    "metadata": {"name": name},
                    "spec": {"rtmp": {"service": {"type": "ClusterIP"}}},
                });
                apps.patch(
                    &name,
                    &PatchParams::apply(TEST_MANAGER),
                    &Patch::Apply(&manifest),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>();
    creates.await?;
    let created = t0.elapsed();
    progress(format!("{count} LiveApplications created in {created:.1?}"));

    let all_observed = wait_all_ready(&client, count, STEADY_TIMEOUT).await?;
    let steady = t0.elapsed();
    let reconciled = all_observed.duration_since(t0);
    progress(format!("all {count} Ready after {steady:.1?}"));
    let rss_steady = operator.rss()?;
    let cpu_steady = operator.cpu_seconds()?;
    let at_steady = operator.scrape()?;

    // One full resync: every LiveApplication reconciled again, nothing changed.
    let resync_started = Instant::now();
    let resynced = operator
        .wait_for_reconciles(
            at_steady.reconciles + count as f64,
            Duration::from_secs(600),
        )
        .await?;
    let resync_time = resync_started.elapsed();
    let rss_after_resync = operator.rss()?;
    let cpu_resync = operator.cpu_seconds()? - cpu_steady;

    // A fresh operator (an upgrade, a failover) finds everything in place.
    operator.stop()?;
    let mut second = Operator::start(&operator_bin, cluster.kubeconfig(), &log_dir, "second")?;
    let restart_started = Instant::now();
    second.wait_ready().await?;
    let restarted = second
        .wait_for_reconciles(count as f64, Duration::from_secs(600))
        .await?;
    let restart_time = restart_started.elapsed();
    let rss_restart = second.rss()?;
    second.stop()?;

    let resync_delta = resynced.minus(&at_steady);
    println!(
        "{}",
        report(Report {
            count,
            created,
            reconciled,
            steady,
            rss_steady,
            cpu_steady,
            cpu_resync,
            rss_after_resync,
            at_steady: &at_steady,
            resync: &resync_delta,
            resync_time,
            restart: &restarted,
            restart_time,
            rss_restart,
        })
    );
    let _ = std::fs::remove_dir_all(&log_dir);
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    let peak = rss_steady.1.max(rss_after_resync.1);
    println!("| target | value | |\n|---|---|---|");
    println!(
        "| all applied, first status written < {} s | {:.1} s | {} |",
        TARGET_FIRST_STATUS.as_secs(),
        reconciled.as_secs_f64(),
        met(reconciled < TARGET_FIRST_STATUS)
    );
    println!(
        "| RSS < {TARGET_RSS_MIB} MiB at steady state (peak) | {peak:.1} MiB | {} |",
        met(peak < TARGET_RSS_MIB)
    );
    println!(
        "| RSS < {TARGET_RSS_MIB} MiB after a restart (peak) | {:.1} MiB | {} |",
        rss_restart.1,
        met(rss_restart.1 < TARGET_RSS_MIB)
    );
    let writes = resync_delta.reconcile_writes() + restarted.reconcile_writes();
    println!(
        "| 0 writes on resync and restart | {writes:.0} | {} |",
        met(writes == 0.0)
    );
    if writes > 0.0 {
        return Err("steady state was not write-free".into());
    }
    Ok(())
}

fn operator_binary() -> Result<PathBuf, BoxError> {
    if let Some(path) = std::env::var_os("OXCAST_OPERATOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .ok_or("the benchmark binary has no directory")?
        .join("oxcast-operator");
    if !path.exists() {
        return Err(format!(
            "{} is missing: build it first (cargo build --release -p oxcast-operator) or set OXCAST_OPERATOR_BIN",
            path.display()
        )
        .into());
    }
    Ok(path)
}

/// Enough kwok nodes for one pod per LiveApplication.
async fn add_fake_nodes(client: &Client, count: usize) -> Result<(), BoxError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let needed = count.div_ceil(PODS_PER_NODE);
    // kwok-node-0 comes with the harness.
    for i in 1..needed.max(1) {
        let name = format!("kwok-node-{i}");
        let (key, value) = KWOK_NODE_ANNOTATION;
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
            },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": PODS_PER_NODE.to_string()},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": PODS_PER_NODE.to_string()},
                "phase": "Running",
            },
        }))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Watches the namespace until `count` LiveApplications are Ready for their
/// current generation.
async fn wait_all_ready(
    client: &Client,
    count: usize,
    timeout: Duration,
) -> Result<Instant, BoxError> {
    let apps: Api<LiveApplication> = Api::namespaced(client.clone(), NAMESPACE);
    let (reader, writer) = kube::runtime::reflector::store::<LiveApplication>();
    let stream = watcher(apps, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let reader = Arc::new(reader);
    let mut last_report = Instant::now();
    let mut all_observed: Option<Instant> = None;
    let wait = async {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                progress(format!("watch error (retrying): {e}"));
                continue;
            }
            let state = reader.state();
            let ready = state
                .iter()
                .filter(|a| has_condition(a, "Ready", "True"))
                .count();
            let observed = state
                .iter()
                .filter(|a| {
                    a.status.as_ref().and_then(|s| s.observed_generation) == a.metadata.generation
                })
                .count();
            if observed >= count && all_observed.is_none() {
                all_observed = Some(Instant::now());
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                progress(format!("{ready}/{count} Ready"));
                last_report = Instant::now();
            }
            if ready >= count {
                return Ok::<Instant, BoxError>(all_observed.unwrap_or_else(Instant::now));
            }
        }
        Err("the watch ended".into())
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| format!("not all LiveApplications were Ready within {timeout:?}"))?
}

/// The operator binary, running.
struct Operator {
    child: Child,
    metrics: SocketAddr,
}

impl Operator {
    fn start(
        bin: &PathBuf,
        kubeconfig: &std::path::Path,
        log_dir: &std::path::Path,
        tag: &str,
    ) -> Result<Self, BoxError> {
        let port = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            l.local_addr()?.port()
        };
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::fs::File::create(log_dir.join(format!("operator-{tag}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .env("POD_NAME", format!("scale-{tag}"))
            .env_remove("OXCAST_WATCH_NAMESPACES")
            .args([
                "--listen",
                &metrics.to_string(),
                "--leader-election=true",
                "--lease-namespace",
                NAMESPACE,
                "--resync-interval",
                RESYNC,
                "--log-format",
                "json",
            ])
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // kill the operator if this benchmark dies first.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Self { child, metrics })
    }

    async fn wait_ready(&mut self) -> Result<(), BoxError> {
        let waited = wait::eventually(
            "the operator to become ready and leader",
            Duration::from_secs(120),
            || {
                let found: Option<Result<(), BoxError>> = match self.child.try_wait() {
                    Err(e) => Some(Err(e.into())),
                    Ok(Some(status)) => Some(Err(format!(
                        "the operator exited during startup: {status}"
                    )
                    .into())),
                    Ok(None) => {
                        let ready = http::get(self.metrics, "/readyz")
                            .is_ok_and(|r| r.status == 200)
                            && self.scrape().is_ok_and(|m| m.leader == 1.0);
                        ready.then_some(Ok(()))
                    }
                };
                std::future::ready(Ok::<_, Infallible>(found))
            },
        );
        waited.await?
    }

    fn scrape(&self) -> Result<Scrape, BoxError> {
        let response = http::get(self.metrics, "/metrics")?;
        if response.status != 200 {
            return Err(format!("/metrics answered {}", response.status).into());
        }
        Ok(Scrape::parse(&response.text()))
    }

    async fn wait_for_reconciles(
        &self,
        at_least: f64,
        timeout: Duration,
    ) -> Result<Scrape, BoxError> {
        let what = format!("{at_least} reconciles");
        let waited = wait::eventually(&what, timeout, || {
            // A failed scrape ends the wait; too few reconciles is "not yet".
            let attempt = match self.scrape() {
                Err(e) => Ok(Some(Err(e))),
                Ok(m) if m.reconciles >= at_least => Ok(Some(Ok(m))),
                Ok(m) => Err(format!("{} so far", m.reconciles)),
            };
            std::future::ready(attempt)
        });
        waited.await?
    }

    /// Resident set size and its peak, in MiB.
    fn rss(&self) -> Result<(f64, f64), BoxError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    /// User plus system CPU time so far, in seconds.
    fn cpu_seconds(&self) -> Result<f64, BoxError> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line, in clock ticks.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or("malformed /proc stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok((ticks(11) + ticks(12)) / hz.max(1.0))
    }

    /// SIGTERM and wait: the operator finishes its reconciles and releases the lease.
    fn stop(&mut self) -> Result<(), BoxError> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("the operator exited with {status}").into());
        }
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The counters the report needs, from `/metrics`.
#[derive(Debug, Clone, Default)]
struct Scrape {
    reconciles: f64,
    leader: f64,
    /// (verb, resource) -> requests.
    requests: BTreeMap<(String, String), f64>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut s = Scrape::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if key.starts_with("oxcast_operator_reconciles_total") {
                s.reconciles += value;
            } else if key == "oxcast_operator_leader" {
                s.leader = value;
            } else if let Some(labels) = key.strip_prefix("oxcast_operator_api_requests_total{") {
                let label = |name: &str| {
                    labels
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                        .map(|v| v.trim_end_matches(['"', '}']).to_string())
                        .unwrap_or_default()
                };
                s.requests.insert((label("verb"), label("resource")), value);
            }
        }
        s
    }

    fn minus(&self, before: &Scrape) -> Scrape {
        let mut requests = self.requests.clone();
        for (k, v) in requests.iter_mut() {
            *v -= before.requests.get(k).copied().unwrap_or(0.0);
        }
        Scrape {
            reconciles: self.reconciles - before.reconciles,
            leader: self.leader,
            requests,
        }
    }

    fn sum(&self, keep: impl Fn(&str, &str) -> bool) -> f64 {
        self.requests
            .iter()
            .filter(|((verb, resource), _)| keep(verb, resource))
            .map(|(_, v)| v)
            .sum::<f64>()
            // An empty f64 sum is -0.0; print it as 0.
            + 0.0
    }

    /// Writes caused by reconciling: everything but reads, Events and the lease.
    fn reconcile_writes(&self) -> f64 {
        self.sum(|verb, resource| is_write(verb) && resource != "leases" && resource != "events")
    }

    /// Requests caused by reconciling: no watches (they are long-lived
    /// streams, not per reconcile), no lease, no Events.
    fn reconcile_requests(&self) -> f64 {
        self.sum(|verb, resource| verb != "watch" && resource != "leases" && resource != "events")
    }
}

fn is_write(verb: &str) -> bool {
    matches!(verb, "create" | "update" | "patch" | "delete")
}

struct Report<'a> {
    count: usize,
    created: Duration,
    reconciled: Duration,
    steady: Duration,
    rss_steady: (f64, f64),
    cpu_steady: f64,
    cpu_resync: f64,
    rss_after_resync: (f64, f64),
    at_steady: &'a Scrape,
    resync: &'a Scrape,
    resync_time: Duration,
    restart: &'a Scrape,
    restart_time: Duration,
    rss_restart: (f64, f64),
}

fn report(r: Report<'_>) -> String {
    let n = r.count as f64;
    let s = r.at_steady;
    let writes_by = |scrape: &Scrape| {
        let mut parts: Vec<String> = scrape
            .requests
            .iter()
            .filter(|((verb, resource), v)| {
                is_write(verb) && resource != "leases" && resource != "events" && **v > 0.0
            })
            .map(|((verb, resource), v)| format!("{verb} {resource}: {v}"))
            .collect();
        if parts.is_empty() {
            parts.push("none".into());
        }
        parts.join(", ")
    };
    let mut out = String::new();
    out.push_str(&format!(
        "| {} LiveApplications | value |\n|---|---|\n",
        r.count
    ));
    out.push_str(&format!(
        "| all created (16 parallel server-side applies) | {:.1} s |\n",
        r.created.as_secs_f64()
    ));
    out.push_str(&format!(
        "| all applied, first status written (from the first create) | {:.1} s |\n",
        r.reconciled.as_secs_f64()
    ));
    out.push_str(&format!(
        "| all Ready (pods Available on kwok) | {:.1} s |\n",
        r.steady.as_secs_f64()
    ));
    out.push_str(&format!(
        "| operator CPU time to steady state | {:.1} s |\n",
        r.cpu_steady
    ));
    out.push_str(&format!(
        "| operator RSS at steady state (peak) | {:.1} MiB ({:.1} MiB) |\n",
        r.rss_steady.0, r.rss_steady.1
    ));
    out.push_str(&format!(
        "| reconciles to steady state | {:.0} ({:.1} per application) |\n",
        s.reconciles,
        s.reconciles / n
    ));
    out.push_str(&format!(
        "| API requests per reconcile (no watches, lease, Events) | {:.2} |\n",
        s.reconcile_requests() / s.reconciles.max(1.0)
    ));
    out.push_str(&format!(
        "| writes per application to steady state | {:.2} ({}) |\n",
        s.reconcile_writes() / n,
        writes_by(s)
    ));
    out.push_str(&format!(
        "| Events written | {:.0} |\n",
        s.sum(|verb, resource| is_write(verb) && resource == "events")
    ));
    out.push_str(&format!(
        "| steady-state resync: reconciles, time | {:.0} in {:.1} s |\n",
        r.resync.reconciles,
        r.resync_time.as_secs_f64()
    ));
    out.push_str(&format!(
        "| steady-state resync: requests / writes | {:.0} / {:.0} |\n",
        r.resync.reconcile_requests(),
        r.resync.reconcile_writes()
    ));
    out.push_str(&format!(
        "| steady-state resync: operator CPU time | {:.2} s |\n",
        r.cpu_resync
    ));
    out.push_str(&format!(
        "| operator RSS after the resync (peak) | {:.1} MiB ({:.1} MiB) |\n",
        r.rss_after_resync.0, r.rss_after_resync.1
    ));
    out.push_str(&format!(
        "| restarted operator: reconciles all, time | {:.0} in {:.1} s |\n",
        r.restart.reconciles,
        r.restart_time.as_secs_f64()
    ));
    out.push_str(&format!(
        "| restarted operator: requests / writes | {:.0} / {:.0} ({}) |\n",
        r.restart.reconcile_requests(),
        r.restart.reconcile_writes(),
        writes_by(r.restart)
    ));
    out.push_str(&format!(
        "| restarted operator RSS (peak) | {:.1} MiB ({:.1} MiB) |\n",
        r.rss_restart.0, r.rss_restart.1
    ));
    out
}
