//! The oxcast operator: turns `LiveApplication` resources into the
//! Deployments, Services, ConfigMap and volume that run them, keeps them
//! that way, and reports where to publish and where to watch.
//!
//! A library so tests can run one or several operators in-process against a
//! real API server; `main.rs` only parses flags and wires signals.
//!
//! - [`build`]: spec → desired objects (pure)
//! - [`diff`]: does an observed object already match (pure)
//! - [`status`]: observed objects → conditions and URLs (pure)
//! - [`controller`]: watches, reconcile, apply, events
//! - [`leader`]: Lease-based leader election
//! - [`metrics`], [`server`]: `/metrics`, `/healthz`, `/readyz`
//!
//! The API permissions the operator needs are listed in `operator/rbac.md`.

pub mod build;
pub mod controller;
pub mod diff;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod render;
pub mod server;
pub mod status;
pub mod trim;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;

pub use controller::ControllerSettings;
pub use leader::LeaseSettings;
pub use metrics::Metrics;
/// Stops [`run`]; re-exported so embedders need no tokio-util of their own.
pub use tokio_util::sync::CancellationToken;

/// Default ingest image: the one released with this operator, so operator
/// and server versions match unless a LiveApplication says otherwise.
pub const DEFAULT_INGEST_IMAGE: &str =
    concat!("ghcr.io/oxcast/oxcast-ingest:", env!("CARGO_PKG_VERSION"));

/// Everything that stops a reconcile or the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Build(#[from] build::BuildError),
    #[error("the LiveApplication has no {0}")]
    MissingMetadata(&'static str),
    #[error("serializing a {kind}: {source}")]
    Serialize {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("decoding a stored {kind}: {source}")]
    Decode {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status of LiveApplication {name}: {source}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("lost leadership: {0}")]
    LeadershipLost(String),
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
    #[error("the operator is shutting down")]
    Shutdown,
}

impl Error {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Build(_) => "build",
            Self::MissingMetadata(_) => "missing_metadata",
            Self::Serialize { .. } => "serialize",
            Self::Decode { .. } => "decode",
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::Status { .. } => "status",
            Self::Client(_) => "client",
            Self::LeadershipLost(_) => "leadership_lost",
            Self::Serve(_) => "serve",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Liveness and readiness, as `/healthz` and `/readyz` report them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Ready once the operator has talked to the API server: as leader when
    /// its watches have listed everything, as standby once it has read the
    /// Lease. A standby is ready: it is doing its job, which is waiting.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// How to run one operator instance.
#[derive(Debug, Clone)]
pub struct Settings {
    pub controller: ControllerSettings,
    /// `None` runs without leader election (one replica only!).
    pub leader_election: Option<LeaseSettings>,
}

impl Settings {
    /// Watch everything, default image, Secrets checked, leader election
    /// off: what a test or a one-replica development setup wants.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            controller: ControllerSettings {
                watch_namespaces: Vec::new(),
                build: build::BuildSettings {
                    default_image: DEFAULT_INGEST_IMAGE.to_string(),
                },
                resync_interval: Duration::from_secs(300),
                concurrency: 16,
                identity: identity.into(),
                check_secrets: true,
            },
            leader_election: None,
        }
    }
}

/// A client whose every request is counted in `metrics`.
pub fn client(config: kube::Config, metrics: Arc<Metrics>) -> Result<Client, Error> {
    let count =
        tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            metrics.count_request(&request);
            request
        });
    let builder = kube::client::ClientBuilder::try_from(config).map_err(Error::Client)?;
    Ok(builder.with_layer(&count).build())
}

/// Runs one operator instance until `cancel` fires (then finishes in-flight
/// reconciles, releases the lease and returns `Ok`), or until it loses the
/// lease (returns [`Error::LeadershipLost`]: the caller should exit, as
/// client-go operators do, rather than risk reconciling next to the new
/// leader).
pub async fn run(
    config: kube::Config,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let client = client(config, metrics.clone())?;
    let Some(lease) = settings.leader_election else {
        metrics.set_leader(true);
        controller::run(client, settings.controller, metrics.clone(), health, cancel).await;
        metrics.set_leader(false);
        return Ok(());
    };

    let mut elector = leader::LeaderElector::new(client.clone(), lease);
    let contact = {
        let health = health.clone();
        move || health.set_ready()
    };
    if !elector.acquire(&cancel, &contact).await {
        return Ok(());
    }
    metrics.set_leader(true);
    // Controllers get their own token: on lost leadership they are dropped
    // at once, on shutdown they drain first.
    let controllers = controller::run(
        client,
        settings.controller,
        metrics.clone(),
        health,
        cancel.child_token(),
    );
    tokio::pin!(controllers);
    let outcome = tokio::select! {
        () = &mut controllers => Ok(()),
        lost = elector.keep_renewing() => Err(lost),
    };
    metrics.set_leader(false);
    match outcome {
        Ok(()) => {
            elector.release().await;
            Ok(())
        }
        Err(lost) => {
            tracing::error!(error = %lost, "stopping: no longer the leader");
            Err(lost)
        }
    }
}
