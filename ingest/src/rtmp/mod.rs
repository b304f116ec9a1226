//! RTMP ingest: accept connections, one task per connection (tokio's
//! multi-threaded runtime spreads them over every core), handshake, session
//! and publish/play decisions.

mod connection;
mod publication;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use oxcast_crds::IngestConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::live::LiveStreams;
use crate::store::{CleanupQueue, Layout};

/// Everything a connection needs, shared by all of them.
pub struct RtmpContext {
    pub config: Arc<IngestConfig>,
    pub hls: Arc<oxcast_crds::HlsSettings>,
    pub layout: Layout,
    pub streams: Arc<LiveStreams>,
    pub cleanup: Arc<CleanupQueue>,
}

/// How long a client may take to complete the RTMP handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` flips to true, then waits for every
/// connection to wind down (publishers finish their segment and playlist).
pub async fn serve(listener: TcpListener, ctx: Arc<RtmpContext>, mut shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    connections.spawn(connection::run(socket, peer, ctx, shutdown));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rtmp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "rtmp connection task failed");
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    while let Some(done) = connections.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "rtmp connection task failed");
        }
    }
}

/// Binds the RTMP listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
