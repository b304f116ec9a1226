//! Starts the same local control plane the cluster tests use and keeps it
//! running until Ctrl-C, for poking at it by hand (kubectl, helm, the
//! operator run from a shell) or for running the tests against it with
//! `OXCAST_TEST_USE_EXISTING_CLUSTER=1`.
//!
//! `cargo run -p oxcast-tests --bin oxcast-test-cluster`

use std::process::ExitCode;

use oxcast_tests::cluster;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("oxcast_tests=info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let cluster = match cluster::shared().await {
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
