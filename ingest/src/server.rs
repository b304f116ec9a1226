//! Assembles the roles: listeners, the stream table recovered from disk, the
//! janitor, and an orderly shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxcast_crds::IngestConfig;
use tokio::sync::watch;

use crate::auth::Authorizer;
use crate::http::{Health, HttpOptions, SendfileListener, StreamSource};
use crate::live::LiveStreams;
use crate::metrics::Metrics;
use crate::rtmp::{self, RtmpContext};
use crate::store::{output::recover, CleanupQueue, Layout};

/// Start-up failures; the process reports them and exits.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] oxcast_crds::InvalidSetting),
    #[error("cannot use HLS root {path}: {source}")]
    HlsRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("publish authentication: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("http server failed: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    HttpSetup(#[from] crate::http::HttpError),
}

/// What to run: RTMP ingest, HTTP serving, or both (all-in-one).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub rtmp_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub hls_root: PathBuf,
    pub config: IngestConfig,
    /// hls.js for the player page (HTTP roles); see `--player-assets`.
    pub player_assets: Option<PathBuf>,
    /// Print `listening rtmp|http ADDR` on stdout (see [`announce`]). Off
    /// with JSON logs, where every line a container prints must be a JSON
    /// object; the `rtmp listening` / `http listening` events carry the
    /// address there.
    pub announce: bool,
}

/// Prints the bound address on stdout, one line per listener, so scripts
/// and tests that asked for port 0 learn the real port.
fn announce(what: &str, addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {what} {addr}");
    let _ = out.flush();
}

pub async fn run(
    options: ServerOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServerError> {
    options.config.validate()?;
    let config = Arc::new(options.config);
    let hls = Arc::new(config.hls.clone());
    let root = options.hls_root.clone();
    let root_err = |source| ServerError::HlsRoot {
        path: root.clone(),
        source,
    };
    if options.rtmp_listen.is_some() {
        std::fs::create_dir_all(&root).map_err(root_err)?;
    }
    let layout = Layout::new(root.clone(), hls.nested);
    let streams = Arc::new(LiveStreams::default());
    let cleanup = Arc::new(CleanupQueue::default());
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(options.rtmp_listen.is_some(), shutdown.clone()));

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = options.rtmp_listen {
        for key in layout.discover().map_err(root_err)? {
            if let Some(history) = recover(&key, &layout, &hls, &cleanup) {
                tracing::info!(stream = %key, segments = history.window.entries.len(), "recovered stream from disk");
                streams.insert_idle(key, history);
            }
        }
        let listener = rtmp::bind(addr).await.map_err(|source| ServerError::Bind {
            what: "rtmp",
            addr,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            what: "rtmp",
            addr,
            source,
        })?;
        let ctx = Arc::new(RtmpContext {
            config: config.clone(),
            hls: hls.clone(),
            layout: layout.clone(),
            streams: streams.clone(),
            cleanup: cleanup.clone(),
            metrics: metrics.clone(),
            auth: Arc::new(Authorizer::from_settings(&config.rtmp.auth)?),
        });
        tracing::info!(addr = %local, app = %config.rtmp.app, "rtmp listening");
        if options.announce {
            announce("rtmp", local);
        }
        health.set_rtmp_listening(true);
        let rtmp_health = health.clone();
        let rtmp_shutdown = shutdown.clone();
        tasks.spawn(async move {
            rtmp::serve(listener, ctx, rtmp_shutdown).await;
            rtmp_health.set_rtmp_listening(false);
        });
        tasks.spawn(janitor(
            streams.clone(),
            cleanup.clone(),
            layout.clone(),
            hls.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(addr) = options.http_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                what: "http",
                addr,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            what: "http",
            addr,
            source,
        })?;
        let source = if options.rtmp_listen.is_some() {
            StreamSource::Publishers {
                streams: streams.clone(),
                nested: hls.nested,
            }
        } else {
            StreamSource::Tree
        };
        let http_options = HttpOptions {
            root: root.clone(),
            settings: config.http.clone(),
            player_assets: options.player_assets.clone(),
            source,
        };
        let app = crate::http::router(http_options, metrics.clone(), health.clone())?;
        crate::http::raise_fd_limit();
        let listener = SendfileListener::new(listener);
        tracing::info!(addr = %local, root = %root.display(), "http listening");
        if options.announce {
            announce("http", local);
        }
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %ServerError::Http(e), "http server stopped");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "server task failed");
        }
    }
    Ok(())
}

/// Deletes segments whose grace period is over and, with cleanup on, an
/// ended stream's remaining files once `playlist_length` has passed.
async fn janitor(
    streams: Arc<LiveStreams>,
    cleanup: Arc<CleanupQueue>,
    layout: Layout,
    hls: Arc<oxcast_crds::HlsSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        cleanup.run_due(now);
        if hls.cleanup {
            streams.expire(now, hls.playlist_length.get(), |key, _history| {
                tracing::info!(stream = %key, "removing files of ended stream");
                let _ = std::fs::remove_file(layout.playlist_path(key));
                if let Ok(files) = layout.segment_files(key) {
                    for name in files {
                        let _ = std::fs::remove_file(layout.segment_path(key, &name));
                    }
                }
                if layout.stream_dir(key) != layout.root() {
                    let _ = std::fs::remove_dir(layout.stream_dir(key));
                }
            });
        }
    }
}
