//! A TCP proxy on loopback that can be told to stall: connections stay open
//! but no byte moves in either direction until it resumes. This is the
//! failure that timeouts must handle and that a refused connection does not
//! exercise: an API server (or the load balancer in front of it) that
//! accepts a request and never answers.
//!
//! ```no_run
//! # async fn demo(upstream: std::net::SocketAddr) -> std::io::Result<()> {
//! let proxy = oxcast_tests::tcp_proxy::StallingProxy::start(upstream).await?;
//! // point a client at proxy.addr() ...
//! proxy.stall();
//! proxy.resume();
//! # Ok(()) }
//! ```

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy; dropping it stops accepting and closes every connection.
pub struct StallingProxy {
    addr: SocketAddr,
    stalled: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl StallingProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    /// Call inside a tokio runtime; the proxy lives on it.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stalled, watcher) = watch::channel(false);
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let watcher = watcher.clone();
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    // Either direction ending ends the connection.
                    tokio::select! {
                        _ = pump(client_read, server_write, watcher.clone()) => {}
                        _ = pump(server_read, client_write, watcher) => {}
                    }
                });
            }
            // Dropping the JoinSet aborts the connections.
        });
        Ok(Self {
            addr,
            stalled,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on no byte is forwarded (open connections hang, new ones
    /// are accepted and hang too).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwarding resumes where it stopped.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, holding every chunk (read or unwritten) while the
/// proxy is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
