//! Assembles the roles: listeners, the stream table recovered from disk, the
//! janitor, and an orderly shutdown.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oxcast_crds::{IngestConfig, OwnershipMode};
use tokio::sync::watch;

use crate::auth::Authorizer;
use crate::http::{Health, HttpOptions, SendfileListener, StreamSource};
use crate::live::LiveStreams;
use crate::metrics::Metrics;
use crate::ownership::{LeaseOptions, LeaseOwnership, Refusal, StreamOwnership};
use crate::rtmp::{self, RtmpContext};
use crate::store::output::{load_history, recover};
use crate::store::{CleanupQueue, Layout, StorageWriters};
use crate::stream_key::StreamKey;

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
    #[error("stream ownership: {0}")]
    Ownership(#[from] crate::ownership::LeaseSetupError),
    #[error("the key directory {0} is inside the HLS root: keys would be part of the served tree; use a directory next to it (--hls-key-dir)")]
    KeyDirInTree(PathBuf),
    #[error("cannot use key directory {path}: {source}")]
    KeyDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to run: RTMP ingest, HTTP serving, or both (all-in-one).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub rtmp_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    /// `/healthz`, `/readyz` and `/metrics` only (the `rtmp` role, which has
    /// no HTTP listener of its own).
    pub ops_listen: Option<SocketAddr>,
    pub hls_root: PathBuf,
    /// Key files of encrypted streams (default: `<hls_root>-keys`).
    pub hls_key_dir: Option<PathBuf>,
    pub config: IngestConfig,
    /// hls.js for the player page (HTTP roles); see `--player-assets`.
    pub player_assets: Option<PathBuf>,
    /// Print `listening rtmp|http ADDR` on stdout (see [`announce`]). Off
    /// with JSON logs, where every line a container prints must be a JSON
    /// object; the `rtmp listening` / `http listening` events carry the
    /// address there.
    pub announce: bool,
    /// Namespace of the ownership Leases (default: the client's).
    pub lease_namespace: Option<String>,
    /// This replica's identity in Leases (default: the host name).
    pub replica_id: Option<String>,
    /// RTMP worker threads (event loops); `None`: one per core.
    pub rtmp_workers: Option<usize>,
    /// Per-stream limit of segment bytes queued for storage.
    pub storage_backlog: u64,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("oxcast-ingest-{}", std::process::id()))
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
    let mut layout = Layout::new(root.clone(), hls.nested);
    if let Some(dir) = &options.hls_key_dir {
        layout = layout.with_key_dir(dir.clone());
    }
    let key_files = layout.key_files();
    if hls.encryption.enabled {
        if crate::store::keys::inside_tree(key_files.dir(), &root) {
            return Err(ServerError::KeyDirInTree(key_files.dir().to_path_buf()));
        }
        if options.rtmp_listen.is_some() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(key_files.dir())
                .map_err(|source| ServerError::KeyDir {
                    path: key_files.dir().to_path_buf(),
                    source,
                })?;
        }
    }
    let streams = Arc::new(LiveStreams::default());
    let cleanup = Arc::new(CleanupQueue::default());
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(options.rtmp_listen.is_some(), shutdown.clone()));

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = options.rtmp_listen {
        let ownership = match config.ownership.mode {
            OwnershipMode::InProcess => StreamOwnership::in_process(),
            OwnershipMode::Leases => {
                let o = &config.ownership;
                let leases = LeaseOwnership::connect(
                    LeaseOptions {
                        namespace: options.lease_namespace.clone(),
                        replica_id: options.replica_id.clone().unwrap_or_else(host_name),
                        prefix: o
                            .lease_prefix
                            .clone()
                            .unwrap_or_else(|| config.rtmp.app.clone()),
                        lease_duration: o.lease_duration.get(),
                        renew_interval: o.renew_interval.get(),
                    },
                    metrics.clone(),
                )
                .await?;
                tasks.spawn(leases.clone().run());
                StreamOwnership::Leases(leases)
            }
        };
        health.set_ownership(ownership.clone());
        let keeper = Keeper {
            streams: streams.clone(),
            cleanup: cleanup.clone(),
            layout: layout.clone(),
            hls: hls.clone(),
            ownership: ownership.clone(),
            removing: Arc::default(),
        };
        // Before listening: streams left by an earlier run (or by a dead
        // replica) are ended and adopted; live replicas' streams are left alone.
        std::fs::read_dir(&root).map_err(root_err)?;
        keeper.adopt_unowned().await;
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
            ownership: ownership.clone(),
            writers: Arc::new(StorageWriters::new(
                options.storage_backlog,
                metrics.clone(),
            )),
            workers: options.rtmp_workers,
        });
        tracing::info!(addr = %local, app = %config.rtmp.app, "rtmp listening");
        if options.announce {
            announce("rtmp", local);
        }
        health.set_rtmp_listening(true);
        let rtmp_health = health.clone();
        let rtmp_shutdown = shutdown.clone();
        let rtmp_ownership = ownership.clone();
        tasks.spawn(async move {
            rtmp::serve(listener, ctx, rtmp_shutdown).await;
            rtmp_health.set_rtmp_listening(false);
            // Every publication has ended (and released its claim).
            if let StreamOwnership::Leases(l) = rtmp_ownership {
                l.shutdown();
            }
        });
        let sweep_every = ownership
            .is_shared()
            .then(|| (config.ownership.lease_duration.get() / 2).max(Duration::from_secs(1)));
        tasks.spawn(janitor(keeper, sweep_every, shutdown.clone()));
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
                layout: layout.clone(),
            }
        } else {
            StreamSource::Tree
        };
        let http_options = HttpOptions {
            root: root.clone(),
            settings: config.http.clone(),
            player_assets: options.player_assets.clone(),
            source,
            keys: if hls.encryption.enabled {
                let delivery = crate::http::keys::KeyDelivery::new(&hls.encryption, key_files)
                    .map_err(crate::http::HttpError::from)?;
                Some(Arc::new(delivery))
            } else {
                None
            },
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
    if let (Some(addr), None) = (options.ops_listen, options.http_listen) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                what: "ops",
                addr,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            what: "ops",
            addr,
            source,
        })?;
        let app = crate::http::ops_router(root.clone(), metrics.clone(), health.clone())?;
        tracing::info!(addr = %local, "ops (metrics, probes) listening");
        if options.announce {
            announce("ops", local);
        }
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %ServerError::Http(e), "ops server stopped");
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

/// What recovery and the janitor work with.
struct Keeper {
    streams: Arc<LiveStreams>,
    cleanup: Arc<CleanupQueue>,
    layout: Layout,
    hls: Arc<oxcast_crds::HlsSettings>,
    ownership: StreamOwnership,
    removing: Arc<Removing>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

impl Keeper {
    /// Takes in the streams on the volume that this server does not know and
    /// nobody owns: left by an earlier run of this server, or by a replica
    /// that died. A stream that did not end properly gets its ENDLIST (under
    /// a claim, so nobody republishes it meanwhile); all of them become idle
    /// here, to be continued by a republish or cleaned by [`janitor`].
    /// Streams a live replica owns are not touched.
    async fn adopt_unowned(&self) {
        let layout = self.layout.clone();
        let keys = match blocking(move || layout.discover()).await {
            Some(Ok(keys)) => keys,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot list the HLS root");
                return;
            }
            None => return,
        };
        let keys: Vec<StreamKey> = keys
            .into_iter()
            .filter(|k| !self.streams.knows(k))
            .collect();
        if keys.is_empty() {
            return;
        }
        let snapshot = match self.ownership.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read stream ownership; not adopting streams now");
                return;
            }
        };
        for key in keys {
            if snapshot.as_ref().is_some_and(|s| s.owned(&key)) {
                continue;
            }
            let (layout, hls, k) = (self.layout.clone(), self.hls.clone(), key.clone());
            let Some(Some((history, unlisted))) =
                blocking(move || load_history(&k, &layout, &hls)).await
            else {
                continue;
            };
            let needs_end =
                !history.window.ended && self.hls.end_list && !history.window.entries.is_empty();
            let needs_cleanup = self.hls.cleanup && !unlisted.is_empty();
            if !needs_end && !needs_cleanup {
                tracing::info!(stream = %key, segments = history.window.entries.len(), "recovered ended stream from disk");
                self.streams.insert_idle(key, history);
                continue;
            }
            // Writes ahead: only as the owner.
            let claim = match self.ownership.claim(&key).await {
                Ok(c) => c,
                Err(Refusal::Owned(_)) => continue,
                Err(e) => {
                    tracing::warn!(stream = %key, error = %e, "cannot claim unowned stream; will retry");
                    continue;
                }
            };
            let (layout, hls, cleanup, k) = (
                self.layout.clone(),
                self.hls.clone(),
                self.cleanup.clone(),
                key.clone(),
            );
            if let Some(Some(history)) =
                blocking(move || recover(&k, &layout, &hls, &cleanup)).await
            {
                tracing::info!(stream = %key, segments = history.window.entries.len(), ended = needs_end, "recovered stream left without an owner");
                self.streams.insert_idle(key, history);
            }
            drop(claim);
        }
    }

    /// Removes the files of idle streams whose `playlist_length` is over,
    /// as their owner (a claim); with shared ownership only if nobody wrote
    /// the stream since it went idle here.
    ///
    /// Returns the removals it started (they run on their own; the janitor
    /// does not wait for them).
    async fn expire_idle(&self, now: Instant) -> Vec<tokio::task::JoinHandle<()>> {
        let ttl = self.hls.playlist_length.get();
        let mut started = Vec::new();
        for (key, idle_since) in self.streams.idle_expired(now, ttl) {
            if self.removing.busy(&key) {
                continue;
            }
            if self.ownership.is_shared() {
                let path = self.layout.playlist_path(&key);
                let modified =
                    blocking(move || std::fs::metadata(path).and_then(|m| m.modified())).await;
                match modified {
                    Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Cleaned by another replica.
                        self.streams.forget_idle(&key);
                        continue;
                    }
                    Some(Ok(m)) if m > idle_since + Duration::from_secs(1) => {
                        // Published elsewhere since: its idle period restarts.
                        self.streams.refresh_idle(&key);
                        continue;
                    }
                    _ => {}
                }
            }
            let claim = match self.ownership.claim(&key).await {
                Ok(c) => c,
                Err(Refusal::Owned(_)) => {
                    // Live here again or on another replica: not ours to delete.
                    if self.ownership.is_shared() {
                        self.streams.forget_idle(&key);
                    }
                    continue;
                }
                Err(Refusal::Unavailable(e)) => {
                    tracing::debug!(stream = %key, error = %e, "cannot claim ended stream for cleanup; later");
                    continue;
                }
            };
            // The deletion runs on its own: a stream directory on a stalled
            // volume holds back only itself. The claim is held until its
            // files are gone, so nobody republishes the key meanwhile.
            if !self.removing.start(&key) {
                continue;
            }
            tracing::info!(stream = %key, "removing files of ended stream");
            let (layout, streams, removing) = (
                self.layout.clone(),
                self.streams.clone(),
                self.removing.clone(),
            );
            started.push(tokio::spawn(async move {
                let done = Removing::guard(removing, key.clone());
                let k = key.clone();
                blocking(move || remove_stream_files(&layout, &k)).await;
                streams.forget_idle(&key);
                drop(claim);
                drop(done);
            }));
        }
        started
    }
}

/// Streams whose files are being removed (so the janitor does not start
/// the same removal twice while a slow volume works on it).
#[derive(Debug, Default)]
struct Removing(Mutex<HashSet<StreamKey>>);

/// Takes a key out of [`Removing`] on drop.
struct RemovingGuard(Arc<Removing>, StreamKey);

impl Drop for RemovingGuard {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

impl Removing {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<StreamKey>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn busy(&self, key: &StreamKey) -> bool {
        self.lock().contains(key)
    }

    /// Marks `key` as being removed; false when it already is.
    fn start(&self, key: &StreamKey) -> bool {
        self.lock().insert(key.clone())
    }

    fn guard(this: Arc<Self>, key: StreamKey) -> RemovingGuard {
        RemovingGuard(this, key)
    }
}

fn remove_stream_files(layout: &Layout, key: &StreamKey) {
    let _ = std::fs::remove_file(layout.playlist_path(key));
    if let Ok(files) = layout.segment_files(key) {
        for name in files {
            let _ = std::fs::remove_file(layout.segment_path(key, &name));
        }
    }
    if layout.stream_dir(key) != layout.root() {
        let _ = std::fs::remove_dir(layout.stream_dir(key));
    }
    layout.key_files().remove_stream(key);
}

/// Deletes segments whose grace period is over and, with cleanup on, an
/// ended stream's remaining files once `playlist_length` has passed. With
/// shared ownership it also adopts streams whose owner died, every
/// `sweep_every`.
async fn janitor(
    keeper: Keeper,
    sweep_every: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        // Deletions run on the blocking pool, a batch per directory; the
        // janitor does not wait for them.
        keeper.cleanup.spawn_due(now);
        if let Some(every) = sweep_every {
            if now.duration_since(last_sweep) >= every && keeper.ownership.available() {
                last_sweep = now;
                keeper.adopt_unowned().await;
            }
        }
        if keeper.hls.cleanup {
            keeper.expire_idle(now).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::{PlaylistEntry, PlaylistWindow};
    use oxcast_crds::{HlsSettings, HumanDuration, PlaylistType};

    fn keeper(root: &std::path::Path) -> Keeper {
        let hls = HlsSettings {
            playlist_length: HumanDuration::from_millis(200),
            ..HlsSettings::default()
        };
        Keeper {
            streams: Arc::default(),
            cleanup: Arc::default(),
            layout: Layout::new(root, true),
            hls: Arc::new(hls),
            ownership: StreamOwnership::in_process(),
            removing: Arc::default(),
        }
    }

    fn unended_stream(k: &Keeper, key: &StreamKey) {
        let mut w = PlaylistWindow::new(PlaylistType::Live, 2);
        w.push(
            PlaylistEntry {
                id: 1,
                file_name: "1.ts".into(),
                duration: 180_000,
                discontinuity: false,
                program_date_time: None,
                key: None,
            },
            i64::MAX,
        );
        std::fs::create_dir_all(k.layout.stream_dir(key)).unwrap();
        std::fs::write(k.layout.segment_path(key, "1.ts"), b"ts").unwrap();
        std::fs::write(k.layout.segment_path(key, "0.ts.part"), b"").unwrap();
        std::fs::write(k.layout.playlist_path(key), w.render("")).unwrap();
    }

    #[tokio::test]
    async fn unowned_streams_are_ended_then_cleaned_as_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let k = keeper(dir.path());
        let key = StreamKey::parse("left").unwrap();
        unended_stream(&k, &key);
        k.adopt_unowned().await;
        let text = std::fs::read_to_string(k.layout.playlist_path(&key)).unwrap();
        assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
        assert!(k.streams.knows(&key));

        // While someone owns the key (a publish in flight), nothing is deleted.
        let held = k.ownership.try_claim_now(&key).unwrap().unwrap();
        let started = k.expire_idle(Instant::now() + Duration::from_secs(1)).await;
        assert!(started.is_empty());
        assert!(k.layout.playlist_path(&key).exists());
        drop(held);
        for removal in k.expire_idle(Instant::now() + Duration::from_secs(1)).await {
            removal.await.unwrap();
        }
        assert!(!k.layout.stream_dir(&key).exists());
        assert!(!k.streams.knows(&key));
        // The claim taken for the cleanup was released.
        assert!(k.ownership.try_claim_now(&key).unwrap().is_ok());
    }
}
