//! Starts the same local control plane the cluster tests use and keeps it
//! running until Ctrl-C, for poking at it by hand (kubectl, helm, the
//! operator run from a shell) or for running the tests against it with
//! `OXCAST_TEST_USE_EXISTING_CLUSTER=1`.
//!
//! `cargo run -p oxcast-tests --bin oxcast-test-cluster`
//!
//! With `--node`, the control plane gets a real node (kubelet, containerd,
//! kube-proxy; see tests/cluster/README.md) instead of kwok's fake one, as
//! `oxcast_tests::cluster::node::NodeCluster` starts it for the tests.

use std::process::ExitCode;

use oxcast_tests::cluster;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    oxcast_tests::log::init_cli_tracing("oxcast_tests=info");

    let with_node = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--node") => true,
        Some(other) => {
            eprintln!("oxcast-test-cluster: unknown argument {other} (usage: oxcast-test-cluster [--node])");
            return ExitCode::from(2);
        }
    };
    let started = match with_node {
        true => cluster::node::NodeCluster::shared().await.map(|n| {
            let t = n.timings();
            eprintln!(
                "node {} Ready in {:?} (control plane {:?}, containerd {:?}, kubelet {:?}, kube-proxy {:?})",
                n.node_name(), t.total, t.control_plane, t.containerd, t.kubelet, t.kube_proxy
            );
            eprintln!("node logs: {}", n.dir().join("logs").display());
            eprintln!(
                "node shell: nsenter -t {} -n -m   images: ctr -n k8s.io --address {} images ls",
                n.holder_pid(),
                n.containerd_socket().display()
            );
            n.cluster()
        }),
        false => cluster::shared().await,
    };
    let cluster = match started {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oxcast-test-cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("export KUBECONFIG={}", cluster.kubeconfig().display());
    if let Some(bin) = cluster.bin_dir() {
        println!("export PATH={}:$PATH", bin.display());
    }
    if let Some(dir) = cluster.run_dir() {
        eprintln!("component logs: {}", dir.join("logs").display());
    }
    eprintln!("control plane running; Ctrl-C or SIGTERM stops it and removes its files");

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oxcast-test-cluster: cannot listen for SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Returning from main runs the exit hook: children killed, files removed.
    ExitCode::SUCCESS
}
