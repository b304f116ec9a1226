//! RTMP ingest: accept connections, handshake, session and publish/play
//! decisions. The listener runs on the server's runtime and hands each
//! connection to one of the [`ConnectionWorkers`] (one thread per core,
//! each a single-threaded runtime), where it stays as one task until it
//! closes.

pub mod amf;
pub mod chunks;
mod connection;
pub mod machine;
mod publication;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use oxcast_crds::IngestConfig;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::auth::Authorizer;
use crate::live::LiveStreams;
use crate::metrics::Metrics;
use crate::store::{CleanupQueue, Layout, StorageWriters};

/// Everything a connection needs, shared by all of them.
pub struct RtmpContext {
    pub config: Arc<IngestConfig>,
    pub hls: Arc<oxcast_crds::HlsSettings>,
    pub layout: Layout,
    pub streams: Arc<LiveStreams>,
    pub cleanup: Arc<CleanupQueue>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authorizer>,
    pub ownership: crate::ownership::StreamOwnership,
    /// Each publication's storage writer thread (off the event loops).
    pub writers: Arc<StorageWriters>,
    /// RTMP worker threads (event loops); `None`: one per core.
    pub workers: Option<usize>,
}

/// One of the `maxConnections` slots, counted when a connection is
/// accepted and given back on drop: when the connection ends, when its task
/// panics, or when the hand-off to a worker fails.
pub struct ConnectionSlot(Arc<Metrics>);

impl ConnectionSlot {
    pub fn take(metrics: Arc<Metrics>) -> Self {
        metrics.rtmp_connections.fetch_add(1, Ordering::Relaxed);
        Self(metrics)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.rtmp_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

type Handoff = (std::net::TcpStream, SocketAddr, ConnectionSlot);

/// Accepts connections until `shutdown` flips to true, hands each one to a
/// [`ConnectionWorkers`] thread, then waits for every connection to wind
/// down (publishers finish their segment and playlist).
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<RtmpContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let workers = ConnectionWorkers::start(ctx.clone(), shutdown.clone());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let open = ctx.metrics.rtmp_connections.load(Ordering::Relaxed);
                    let max = i64::from(ctx.config.rtmp.limits.max_connections);
                    if open >= max {
                        tracing::warn!(%peer, open, max, "rtmp connection refused: maxConnections reached");
                        ctx.metrics.publish_rejections.inc("max_connections");
                        drop(socket);
                        continue;
                    }
                    // Counted here, before the hand-over, so a burst of
                    // connects cannot overshoot the limit.
                    let slot = ConnectionSlot::take(ctx.metrics.clone());
                    workers.dispatch(socket, peer, slot);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rtmp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::task::spawn_blocking(move || workers.join()).await;
    // Every connection has handed its publication's last writes over; wait
    // for them (ENDLIST, the history, the claim's release).
    let writers = ctx.writers.clone();
    let _ = tokio::task::spawn_blocking(move || {
        while !writers.wait_idle(Duration::from_secs(5)) {
            tracing::warn!(
                streams = writers.running(),
                "shutdown waits for storage: streams still writing their last segments"
            );
        }
    })
    .await;
}

/// One thread per core, each running its own single-threaded runtime, like
/// nginx's worker processes (but all of them, not one). A connection stays
/// on the thread it was given, so a stream's packets never hop threads and
/// idle threads sleep in epoll instead of being woken to steal work: for
/// many small, steady RTMP streams this costs far less CPU than a
/// work-stealing pool.
pub struct ConnectionWorkers {
    senders: Vec<mpsc::UnboundedSender<Handoff>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: AtomicUsize,
}

impl ConnectionWorkers {
    pub fn start(ctx: Arc<RtmpContext>, shutdown: watch::Receiver<bool>) -> Self {
        let count = ctx
            .workers
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = ctx.clone();
            let shutdown = shutdown.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("rtmp-worker-{index}"))
                .spawn(move || worker_thread(rx, ctx, shutdown));
            match spawned {
                Ok(handle) => {
                    senders.push(tx);
                    threads.push(handle);
                }
                Err(e) => tracing::error!(error = %e, "cannot start rtmp worker thread"),
            }
        }
        tracing::info!(
            workers = threads.len(),
            storage_backlog_bytes = ctx.writers.backlog_limit(),
            "rtmp workers started"
        );
        Self {
            senders,
            threads,
            next: AtomicUsize::new(0),
        }
    }

    /// Gives the connection to the next worker, round robin.
    pub fn dispatch(&self, socket: TcpStream, peer: SocketAddr, slot: ConnectionSlot) {
        let socket = match socket.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand over rtmp connection");
                return;
            }
        };
        if self.senders.is_empty() {
            tracing::error!(%peer, "no rtmp worker threads; dropping connection");
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        if self.senders[i].send((socket, peer, slot)).is_err() {
            tracing::error!(%peer, worker = i, "rtmp worker is gone; dropping connection");
        }
    }

    /// Stops taking connections and waits for the workers to finish theirs.
    pub fn join(self) {
        drop(self.senders);
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("rtmp worker thread panicked");
            }
        }
    }
}

fn worker_thread(
    mut incoming: mpsc::UnboundedReceiver<Handoff>,
    ctx: Arc<RtmpContext>,
    shutdown: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start rtmp worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                next = incoming.recv() => match next {
                    Some((socket, peer, slot)) => match TcpStream::from_std(socket) {
                        Ok(socket) => {
                            connections.spawn(connection::run(socket, peer, ctx.clone(), shutdown.clone(), slot));
                        }
                        Err(e) => tracing::warn!(%peer, error = %e, "cannot adopt rtmp connection"),
                    },
                    None => break,
                },
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "rtmp connection task failed");
                    }
                }
            }
        }
        while let Some(done) = connections.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "rtmp connection task failed");
            }
        }
    });
}

/// Binds the RTMP listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
