//! Zero-copy sending of cached files: the body bytes handed to hyper are
//! recognised on their way to the socket and sent with `sendfile(2)` from
//! the file they were read from, as nginx does, instead of being copied from
//! user memory into the kernel.
//!
//! How: a large cached file is kept as [`Bytes`] whose memory is owned by a
//! [`FileBacked`], which also keeps the file open and registers its address
//! range in a process-wide table. [`SendfileStream`] wraps each accepted
//! connection; when hyper writes a buffer that lies inside a registered
//! range, the stream calls `sendfile` with the matching file offset. Any
//! other buffer (headers, playlists, API responses) is written normally.
//!
//! Why this is sound: a registered range belongs to a live allocation (it
//! is removed from the table before the memory is freed), and the buffer
//! hyper passes is borrowed from a `Bytes` it still holds, so the region,
//! and the file descriptor it names, outlive the call. The bytes in memory
//! are the file's bytes at the time it was read; the cache only keeps a
//! version whose inode, modification time and length have not changed, and
//! the ingest server never modifies a published file in place (it writes a
//! new name and renames).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::RwLock;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Bodies smaller than this are written from memory: for them the copy
/// costs less than the extra system call, and fewer files stay open.
pub const MIN_SENDFILE: usize = 128 * 1024;

struct Region {
    len: usize,
    fd: RawFd,
}

/// Start address → region, for every live [`FileBacked`].
static REGIONS: RwLock<BTreeMap<usize, Region>> = RwLock::new(BTreeMap::new());

/// The file and file offset behind `buf`, if it lies wholly inside a
/// registered region.
fn lookup(buf: &[u8]) -> Option<(RawFd, u64)> {
    if buf.len() < MIN_SENDFILE {
        return None;
    }
    let addr = buf.as_ptr() as usize;
    let regions = REGIONS.read().unwrap_or_else(|p| p.into_inner());
    let (start, region) = regions.range(..=addr).next_back()?;
    let offset = addr - start;
    (offset + buf.len() <= region.len).then_some((region.fd, offset as u64))
}

/// A file's contents in memory together with the open file they came from.
pub struct FileBacked {
    data: Box<[u8]>,
    _file: File,
}

impl FileBacked {
    /// `data` must be the contents of `file` from offset 0.
    fn new(data: Vec<u8>, file: File) -> Self {
        let data = data.into_boxed_slice();
        let region = Region {
            len: data.len(),
            fd: file.as_raw_fd(),
        };
        REGIONS
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(data.as_ptr() as usize, region);
        Self { data, _file: file }
    }
}

impl AsRef<[u8]> for FileBacked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for FileBacked {
    fn drop(&mut self) {
        // Unregister before the memory (and the descriptor) go away.
        REGIONS
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(self.data.as_ptr() as usize));
    }
}

/// The body of a file read whole into `data`: file-backed (so it can be
/// sent with `sendfile`) when it is large enough, plain memory otherwise.
pub fn file_bytes(data: Vec<u8>, file: File) -> Bytes {
    if data.len() >= MIN_SENDFILE {
        Bytes::from_owner(FileBacked::new(data, file))
    } else {
        Bytes::from(data)
    }
}

/// An accepted connection that sends file-backed buffers with `sendfile`.
#[derive(Debug)]
pub struct SendfileStream {
    inner: TcpStream,
}

impl SendfileStream {
    /// Sends `len` bytes of `file` from `offset`; returns how many went out.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: RawFd,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let socket = self.inner.as_raw_fd();
        let Ok(mut off) = libc::off_t::try_from(offset) else {
            return Poll::Ready(Err(io::ErrorKind::InvalidInput.into()));
        };
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                // SAFETY: both descriptors are open for the duration of the
                // call (see the module docs) and `off` is a valid pointer.
                let n = unsafe { libc::sendfile(socket, file, &mut off, len) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
                // The file is shorter than it was when read: it was
                // truncated under us. Fail the connection, as nginx does.
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// `writev` with `MSG_MORE`: the headers in front of a file body leave
    /// in the same packets as the body's first bytes (nginx: `tcp_nopush`).
    fn poll_write_more(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let socket = self.inner.as_raw_fd();
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                // SAFETY: `msghdr` is plain old data; all-zero is valid.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                // IoSlice is guaranteed ABI-compatible with iovec on Unix.
                msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = bufs.len() as _;
                // SAFETY: `msg` points at `bufs`, which outlive the call.
                let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_MORE | libc::MSG_NOSIGNAL) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some((fd, offset)) = lookup(buf) {
            return self.poll_sendfile(cx, fd, offset, buf.len());
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let start = bufs
            .iter()
            .position(|b| !b.is_empty())
            .unwrap_or(bufs.len());
        let bufs = &bufs[start..];
        let Some(first) = bufs.first() else {
            return Poll::Ready(Ok(0));
        };
        if let Some((fd, offset)) = lookup(first) {
            return self.poll_sendfile(cx, fd, offset, first.len());
        }
        // Plain buffers up to the next file-backed one.
        let end = bufs
            .iter()
            .skip(1)
            .position(|b| lookup(b).is_some())
            .map(|i| i + 1);
        match end {
            Some(end) => self.poll_write_more(cx, &bufs[..end]),
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        // Makes hyper queue body buffers as they are instead of copying
        // them into its own, which is what lets them be recognised here.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP listener: accepts [`SendfileStream`]s with `TCP_NODELAY` set
/// (responses are written whole; Nagle would only delay their last packet).
#[derive(Debug)]
pub struct SendfileListener {
    inner: TcpListener,
}

impl SendfileListener {
    pub fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

impl axum::serve::Listener for SendfileListener {
    type Io = SendfileStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    return (SendfileStream { inner: stream }, addr);
                }
                // Per-connection failures: the next accept may succeed.
                Err(e) if is_connection_error(&e) => {}
                // Out of descriptors or memory: back off instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Raises the soft limit on open files to the hard limit: every connection
/// and every cached file body held for `sendfile` needs a descriptor, and
/// the usual soft limit of 1024 is far below what a busy server holds.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur >= lim.rlim_max
    {
        return;
    }
    let wanted = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: `wanted` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        tracing::debug!(
            from = lim.rlim_cur,
            to = lim.rlim_max,
            "raised the open file limit"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn backed(len: usize) -> (Bytes, tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let file = File::open(f.path()).unwrap();
        (file_bytes(data.clone(), file), f, data)
    }

    #[test]
    fn registers_large_bodies_only_while_alive() {
        let (b, _f, _) = backed(MIN_SENDFILE * 2);
        let (fd, off) = lookup(&b[100..MIN_SENDFILE + 100]).expect("registered");
        assert!(fd >= 0);
        assert_eq!(off, 100);
        assert!(
            lookup(&b[MIN_SENDFILE + 1..]).is_none(),
            "too short to bother"
        );
        let copy = b.to_vec();
        assert!(lookup(&copy).is_none(), "a copy is not the file");
        let addr = b.as_ptr() as usize;
        drop(b);
        let regions = REGIONS.read().unwrap();
        assert!(!regions.contains_key(&addr), "unregistered on drop");
        let (small, _f, _) = backed(1000);
        assert!(lookup(&small).is_none());
    }

    #[tokio::test]
    async fn sends_headers_and_file_body_intact() {
        let (body, _f, data) = backed(3 * 1024 * 1024 + 17);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut s = SendfileStream { inner: stream };
            let head = b"HEAD-".to_vec();
            let mut bufs_sent = 0;
            let total = head.len() + body.len();
            // Write the way hyper does: vectored, advancing on partial writes.
            while bufs_sent < total {
                let (a, b) = if bufs_sent < head.len() {
                    (&head[bufs_sent..], &body[..])
                } else {
                    (&[][..], &body[bufs_sent - head.len()..])
                };
                let n = std::future::poll_fn(|cx| {
                    Pin::new(&mut s).poll_write_vectored(cx, &[IoSlice::new(a), IoSlice::new(b)])
                })
                .await
                .unwrap();
                bufs_sent += n;
            }
            s.shutdown().await.unwrap();
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        server.await.unwrap();
        assert_eq!(&got[..5], b"HEAD-");
        assert!(got[5..] == data[..], "body differs");
    }
}
