//! `oxcast-operator`: the command line around the library. The flags are
//! the contract the Helm chart builds on; keep their names.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Parser, ValueEnum};
use oxcast_crds::HumanDuration;
use oxcast_operator::{Health, LeaseSettings, Metrics, Settings, DEFAULT_INGEST_IMAGE};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Reconciles LiveApplication resources into running RTMP→HLS ingest.
#[derive(Debug, Parser)]
#[command(name = "oxcast-operator", version)]
struct Cli {
    /// Namespaces to watch, comma-separated; empty watches all namespaces.
    #[arg(
        long,
        env = "OXCAST_WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    watch_namespaces: Vec<String>,
    /// Ingest server image for LiveApplications that name none.
    #[arg(long, env = "OXCAST_INGEST_IMAGE", default_value = DEFAULT_INGEST_IMAGE)]
    ingest_image: String,
    /// Log format (logs go to stderr; filter with RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Elect a leader through a Lease, so several replicas are safe.
    #[arg(long, action = ArgAction::Set, default_value_t = true, num_args = 0..=1, default_missing_value = "true")]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "oxcast-operator")]
    lease_name: String,
    /// Namespace of the leader Lease [default: $POD_NAMESPACE, else the
    /// service account's namespace, else the kubeconfig's].
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How often every LiveApplication is reconciled without any event.
    #[arg(long, default_value = "5m")]
    resync_interval: HumanDuration,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Watch Secrets (metadata only) and report a LiveApplication whose
    /// key-token Secret does not exist (status reason KeySecretMissing).
    /// Needs get, list and watch on Secrets; false reads no Secrets at all.
    #[arg(long, env = "OXCAST_CHECK_SECRETS", action = ArgAction::Set, default_value_t = true, num_args = 0..=1, default_missing_value = "true")]
    check_secrets: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "oxcast-operator failed");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (in-cluster service account or KUBECONFIG)")?;
    let identity = identity();
    let mut settings = Settings::new(identity.clone());
    settings.controller.watch_namespaces = cli
        .watch_namespaces
        .iter()
        .map(|ns| ns.trim().to_string())
        .filter(|ns| !ns.is_empty())
        .collect();
    settings.controller.build.default_image = cli.ingest_image.clone();
    settings.controller.resync_interval = cli.resync_interval.get().max(Duration::from_secs(1));
    settings.controller.concurrency = cli.concurrency.max(1);
    settings.controller.check_secrets = cli.check_secrets;
    if cli.leader_election {
        let namespace = cli
            .lease_namespace
            .clone()
            .or_else(service_account_namespace)
            .unwrap_or_else(|| config.default_namespace.clone());
        settings.leader_election = Some(LeaseSettings::new(&cli.lease_name, namespace, &identity));
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        identity,
        watch_namespaces = ?settings.controller.watch_namespaces,
        ingest_image = cli.ingest_image,
        leader_election = cli.leader_election,
        lease = cli.lease_name,
        check_secrets = cli.check_secrets,
        "starting"
    );

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let cancel = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!(address = %cli.listen, "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(oxcast_operator::server::serve(
        listener,
        metrics.clone(),
        health.clone(),
        cancel.clone(),
    ));
    tokio::spawn(cancel_on_signal(cancel.clone()));

    let result = oxcast_operator::run(config, settings, metrics, health, cancel.clone()).await;
    cancel.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP endpoint failed"),
        Err(e) => tracing::warn!(error = %e, "HTTP endpoint task failed"),
    }
    result.context("operator stopped")?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C: finish in-flight
/// reconciles, release the lease, exit.
async fn cancel_on_signal(cancel: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
        () = terminate => tracing::info!("SIGTERM, shutting down"),
    }
    cancel.cancel();
}

/// The pod name (unique among replicas, stable in logs); off-cluster the
/// host name plus process id, so two local instances differ.
fn identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "oxcast-operator".to_string());
    format!("{host}-{}", std::process::id())
}

fn service_account_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|ns| ns.trim().to_string())
        .filter(|ns| !ns.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("oxcast-operator").chain(args.iter().copied()))
            .expect("valid flags")
    }

    /// The flags the Helm chart passes, in the forms it passes them.
    #[test]
    fn the_chart_contract_parses() {
        let cli = parse(&[
            "--listen=0.0.0.0:9090",
            "--log-format=json",
            "--leader-election=false",
            "--lease-name=my-lease",
            "--lease-namespace=ops",
            "--watch-namespaces=a,b",
            "--ingest-image=example.com/ingest:1",
            "--check-secrets=false",
        ]);
        assert_eq!(cli.listen, "0.0.0.0:9090".parse().expect("addr"));
        assert!(matches!(cli.log_format, LogFormat::Json));
        assert!(!cli.leader_election);
        assert_eq!(cli.lease_name, "my-lease");
        assert_eq!(cli.lease_namespace.as_deref(), Some("ops"));
        assert_eq!(cli.watch_namespaces, ["a", "b"]);
        assert_eq!(cli.ingest_image, "example.com/ingest:1");
        assert!(!cli.check_secrets);
    }

    #[test]
    fn defaults() {
        // Run without the chart's environment.
        for var in [
            "OXCAST_WATCH_NAMESPACES",
            "OXCAST_INGEST_IMAGE",
            "OXCAST_CHECK_SECRETS",
            "POD_NAMESPACE",
        ] {
            if std::env::var_os(var).is_some() {
                return;
            }
        }
        let cli = parse(&[]);
        assert!(cli.leader_election);
        assert_eq!(cli.lease_name, "oxcast-operator");
        assert_eq!(cli.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(
            cli.ingest_image,
            format!("ghcr.io/oxcast/oxcast-ingest:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(cli.watch_namespaces, [""], "empty: every namespace");
        assert!(parse(&["--leader-election"]).leader_election);
        assert!(parse(&["--leader-election", "true"]).leader_election);
        assert!(cli.check_secrets);
        assert!(parse(&["--check-secrets"]).check_secrets);
    }
}
