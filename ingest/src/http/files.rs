//! Serving the files of one directory (the HLS root, or the player assets)
//! over GET/HEAD with the reference nginx cache rules, validators,
//! conditional requests and byte ranges.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

use super::cache::{CachedFile, FileCache, FileMeta};
use super::conditional::{preconditions, range, Precondition, RangeOutcome};
use super::fs::{FileId, RootDir};
use super::path::HlsKind;
use super::{error_response, method_not_allowed};

/// How a file is labelled and cached by clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Hls(HlsKind),
    /// A player asset: revalidated on every use (it changes on upgrade,
    /// under the same name).
    Asset {
        content_type: &'static str,
    },
}

/// `expires max` as sent by nginx's reference config, in seconds.
const SEGMENT_MAX_AGE: u64 = 31_536_000;
/// nginx `expires -1d`: a playlist's `Expires` lies a day in the past.
const PLAYLIST_EXPIRES_AGO: u64 = 24 * 3600;
/// Chunk size when streaming a file too large for the cache.
const STREAM_CHUNK: usize = 256 * 1024;

impl Policy {
    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Policy::Hls(HlsKind::Playlist) => "application/vnd.apple.mpegurl",
            Policy::Hls(HlsKind::Segment) => "video/mp2t",
            Policy::Asset { content_type } => content_type,
        })
    }

    fn cache_control(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Policy::Hls(HlsKind::Segment) => "public, max-age=31536000, immutable",
            Policy::Hls(HlsKind::Playlist) | Policy::Asset { .. } => "no-cache",
        })
    }

    fn expires(self, now_secs: u64) -> Option<HeaderValue> {
        match self {
            Policy::Hls(kind) => Some(expires_value(kind, now_secs)),
            Policy::Asset { .. } => None,
        }
    }
}

/// `Expires` values for the current second, per thread: formatting a date
/// for every response would cost more than serving a cached playlist.
struct Dates {
    secs: u64,
    past: HeaderValue,
    future: HeaderValue,
}

thread_local! {
    static DATES: RefCell<Option<Dates>> = const { RefCell::new(None) };
}

fn http_date(secs: u64) -> HeaderValue {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    HeaderValue::from_str(&httpdate::fmt_http_date(t))
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

fn expires_value(kind: HlsKind, now_secs: u64) -> HeaderValue {
    DATES.with(|cell| {
        let mut dates = cell.borrow_mut();
        let d = match dates.as_mut() {
            Some(d) if d.secs == now_secs => d,
            _ => dates.insert(Dates {
                secs: now_secs,
                past: http_date(now_secs.saturating_sub(PLAYLIST_EXPIRES_AGO)),
                future: http_date(now_secs + SEGMENT_MAX_AGE),
            }),
        };
        match kind {
            HlsKind::Playlist => d.past.clone(),
            HlsKind::Segment => d.future.clone(),
        }
    })
}

/// A served directory and its memory cache.
#[derive(Debug)]
pub struct Files {
    root: RootDir,
    cache: FileCache,
    /// Loads in progress, by path: when a new segment appears, every viewer
    /// asks for it at about the same time, and one read must serve them all
    /// (rather than one blocking thread and one copy in memory each).
    inflight: Mutex<HashMap<Box<str>, (FileId, Flight)>>,
    /// Files opened and read from disk (the slow path), for tests.
    disk_loads: AtomicU64,
}

/// One shared load of one version of a file.
type Flight = Arc<OnceCell<Result<Arc<CachedFile>, FlightError>>>;

/// Why a shared load produced no cached file. `io::Error` is not `Clone`,
/// so its kind and OS code are kept to rebuild it for every waiter.
#[derive(Debug, Clone, Copy)]
enum FlightError {
    Io(io::ErrorKind, Option<i32>),
    /// It had grown too large to cache by the time it was opened: each
    /// request streams it on its own.
    NotCacheable,
}

impl From<&io::Error> for FlightError {
    fn from(e: &io::Error) -> Self {
        Self::Io(e.kind(), e.raw_os_error())
    }
}

/// The body to send: from memory, or streamed from an open file.
enum Payload {
    Memory(Bytes),
    File(std::fs::File),
}

/// What a slow-path load produced.
enum Loaded {
    /// Read into memory (and cached, unless it changed while being read).
    Memory(Arc<CachedFile>),
    /// Too large for the cache: streamed.
    Stream(std::fs::File, FileMeta),
}

impl Files {
    pub fn new(root: PathBuf, cache_bytes: u64) -> Self {
        Self {
            root: RootDir::new(root),
            cache: FileCache::new(cache_bytes),
            inflight: Mutex::new(HashMap::new()),
            disk_loads: AtomicU64::new(0),
        }
    }

    pub fn root(&self) -> &RootDir {
        &self.root
    }

    /// Serves `rel` (already validated by `path`) for a GET or HEAD;
    /// other methods get 405. CORS headers are the caller's business.
    pub async fn serve(
        self: &Arc<Self>,
        rel: &str,
        policy: Policy,
        method: &Method,
        headers: &HeaderMap,
    ) -> Response {
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed();
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Fast path: one stat, then memory.
        let id = match self.root.stat(rel) {
            Ok(Some(id)) => id,
            Ok(None) => return error_response(StatusCode::NOT_FOUND),
            Err(e) => return io_error_response(&e, rel),
        };
        if let Some(hit) = self.cache.get(rel, &id) {
            let body = Payload::Memory(hit.body.clone());
            return respond(policy, &hit.meta, body, method, headers, now);
        }
        // Slow path: one shared load per version if it can be cached,
        // else a load of its own, on the blocking pool.
        if self.cache.admits(id.len) {
            match self.load_shared(rel, id).await {
                Ok(file) => {
                    let body = Payload::Memory(file.body.clone());
                    return respond(policy, &file.meta, body, method, headers, now);
                }
                Err(FlightError::Io(kind, os)) => {
                    let e = os.map_or_else(|| io::Error::from(kind), io::Error::from_raw_os_error);
                    return io_error_response(&e, rel);
                }
                Err(FlightError::NotCacheable) => {}
            }
        }
        let (meta, payload) = match self.load_blocking(rel).await {
            Ok(Loaded::Memory(file)) => (file.meta.clone(), Payload::Memory(file.body.clone())),
            Ok(Loaded::Stream(file, meta)) => (meta, Payload::File(file)),
            Err(e) => return io_error_response(&e, rel),
        };
        respond(policy, &meta, payload, method, headers, now)
    }

    /// [`Files::load`] on the blocking pool.
    async fn load_blocking(self: &Arc<Self>, rel: &str) -> io::Result<Loaded> {
        let this = self.clone();
        let rel_owned = rel.to_owned();
        match tokio::task::spawn_blocking(move || this.load(&rel_owned)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(path = rel, error = %e, "file load task failed");
                Err(io::Error::other("file load task failed"))
            }
        }
    }

    /// Loads version `id` of `rel` once for all concurrent requests.
    async fn load_shared(
        self: &Arc<Self>,
        rel: &str,
        id: FileId,
    ) -> Result<Arc<CachedFile>, FlightError> {
        let flight = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(rel) {
                Some((current, flight)) if *current == id => flight.clone(),
                _ => {
                    let flight = Flight::default();
                    inflight.insert(rel.into(), (id, flight.clone()));
                    flight
                }
            }
        };
        // If the request that started the load goes away, a waiter takes
        // over (OnceCell re-runs the initialiser).
        let result = flight
            .get_or_init(|| async {
                match self.load_blocking(rel).await {
                    Ok(Loaded::Memory(file)) => Ok(file),
                    Ok(Loaded::Stream(..)) => Err(FlightError::NotCacheable),
                    Err(e) => Err(FlightError::from(&e)),
                }
            })
            .await
            .clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(inflight.get(rel), Some((_, f)) if Arc::ptr_eq(f, &flight)) {
            inflight.remove(rel);
        }
        result
    }

    /// Opens `rel` confined to the root; reads and caches it if it is small
    /// enough, else hands back the open file.
    fn load(&self, rel: &str) -> io::Result<Loaded> {
        self.disk_loads.fetch_add(1, Ordering::Relaxed);
        let (mut file, id) = self.root.open(rel)?;
        if !self.cache.admits(id.len) {
            return Ok(Loaded::Stream(file, FileMeta::new(id)));
        }
        let mut buf = Vec::with_capacity(usize::try_from(id.len).unwrap_or(0));
        // Read at most one byte more than announced, to notice growth.
        (&mut file).take(id.len + 1).read_to_end(&mut buf)?;
        let after = FileId::from_metadata(&file.metadata()?);
        if after != id || buf.len() as u64 != id.len {
            // Written to while we read (not how the ingest server writes,
            // but another writer might): serve what we have, cache nothing.
            let len = buf.len() as u64;
            let file = CachedFile::new(FileId { len, ..after }, Bytes::from(buf));
            return Ok(Loaded::Memory(Arc::new(file)));
        }
        // Large bodies keep their file open so they can be sent with
        // sendfile(2) (see `sendfile`); the bytes stay the fallback.
        let body = super::sendfile::file_bytes(buf, file);
        let cached = Arc::new(CachedFile::new(id, body));
        self.cache.insert(rel, cached.clone());
        Ok(Loaded::Memory(cached))
    }
}

/// Maps a file system error to a status: absent → 404, unreadable → 403,
/// anything else → 500 (logged: it is the server's problem, not the client's).
fn io_error_response(e: &io::Error, rel: &str) -> Response {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidInput => {
            error_response(StatusCode::NOT_FOUND)
        }
        io::ErrorKind::PermissionDenied => error_response(StatusCode::FORBIDDEN),
        _ if e.raw_os_error() == Some(libc::ENAMETOOLONG) => error_response(StatusCode::NOT_FOUND),
        _ if e.raw_os_error() == Some(libc::ELOOP) => error_response(StatusCode::NOT_FOUND),
        _ => {
            tracing::warn!(path = rel, error = %e, "cannot serve file");
            error_response(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// Builds the response for one version of a file.
fn respond(
    policy: Policy,
    meta: &FileMeta,
    payload: Payload,
    method: &Method,
    req: &HeaderMap,
    now_secs: u64,
) -> Response {
    let now = i64::try_from(now_secs).unwrap_or(i64::MAX);
    let v = &meta.validators;
    let len = meta.id.len;
    let mut h = HeaderMap::with_capacity(8);
    // Validators and caching rules go on 200, 206 and 304 alike.
    let validators = |h: &mut HeaderMap| {
        h.insert(header::ETAG, meta.etag.clone());
        if v.dated(now) {
            h.insert(header::LAST_MODIFIED, meta.last_modified.clone());
        }
        h.insert(header::CACHE_CONTROL, policy.cache_control());
        if let Some(e) = policy.expires(now_secs) {
            h.insert(header::EXPIRES, e);
        }
    };
    let finish = |status: StatusCode, headers: HeaderMap, body: Body| {
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        r
    };
    match preconditions(req, v, now) {
        Precondition::Failed => return finish(StatusCode::PRECONDITION_FAILED, h, Body::empty()),
        Precondition::NotModified => {
            validators(&mut h);
            return finish(StatusCode::NOT_MODIFIED, h, Body::empty());
        }
        Precondition::Proceed => validators(&mut h),
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Range applies to GET only (RFC 7233 §3.1).
    let outcome = if method == Method::GET {
        range(req, v, len, now)
    } else {
        RangeOutcome::Full
    };
    let (status, span) = match outcome {
        RangeOutcome::Full => (StatusCode::OK, 0..len),
        RangeOutcome::Partial(r) => {
            let value = format!("bytes {}-{}/{len}", r.start, r.end - 1);
            if let Ok(value) = HeaderValue::from_str(&value) {
                h.insert(header::CONTENT_RANGE, value);
            }
            (StatusCode::PARTIAL_CONTENT, r)
        }
        RangeOutcome::Unsatisfiable => {
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(header::CONTENT_RANGE, value);
            }
            return finish(StatusCode::RANGE_NOT_SATISFIABLE, h, Body::empty());
        }
    };
    h.insert(header::CONTENT_TYPE, policy.content_type());
    let body = match payload {
        Payload::Memory(bytes) => {
            let start = usize::try_from(span.start).unwrap_or(0).min(bytes.len());
            let end = usize::try_from(span.end).unwrap_or(0).min(bytes.len());
            Body::from(bytes.slice(start..end))
        }
        Payload::File(file) => {
            let n = span.end - span.start;
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            if method == Method::HEAD {
                Body::empty()
            } else {
                match stream_file(file, span.start, n) {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot stream file");
                        return error_response(StatusCode::INTERNAL_SERVER_ERROR);
                    }
                }
            }
        }
    };
    finish(status, h, body)
}

/// A body of `n` bytes of `file` from `start`, read as it is sent.
fn stream_file(mut file: std::fs::File, start: u64, n: u64) -> io::Result<Body> {
    if start > 0 {
        file.seek(SeekFrom::Start(start))?;
    }
    let file = tokio::fs::File::from_std(file).take(n);
    Ok(Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(file, STREAM_CHUNK),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn request(files: &Arc<Files>, rel: &str) -> Response {
        files
            .serve(
                rel,
                Policy::Hls(HlsKind::Segment),
                &Method::GET,
                &HeaderMap::new(),
            )
            .await
    }

    /// Statuses of `n` requests for `rel` started together: on this
    /// single-threaded runtime each runs until it waits for the disk before
    /// the next one starts.
    async fn together(files: &Arc<Files>, rel: &'static str, n: usize) -> Vec<StatusCode> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let files = files.clone();
            set.spawn(async move { request(&files, rel).await.status() });
        }
        set.join_all().await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_misses_share_one_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("cam")).unwrap();
        std::fs::write(dir.path().join("cam/1.ts"), vec![7u8; 4 << 20]).unwrap();
        let files = Arc::new(Files::new(dir.path().to_path_buf(), 64 << 20));
        // All of them miss the cache before the first read completes: the
        // first starts the read, the others join it.
        let statuses = together(&files, "cam/1.ts", 32).await;
        assert!(statuses.iter().all(|s| *s == StatusCode::OK));
        assert_eq!(files.disk_loads.load(Ordering::Relaxed), 1);
        assert!(
            files.inflight.lock().unwrap().is_empty(),
            "flights are forgotten"
        );
        // Later requests are served from memory.
        assert_eq!(request(&files, "cam/1.ts").await.status(), StatusCode::OK);
        assert_eq!(files.disk_loads.load(Ordering::Relaxed), 1);
        // A new version (replaced by rename) is read again, once.
        std::fs::write(dir.path().join("cam/.1.ts.tmp"), vec![8u8; 4 << 20]).unwrap();
        std::fs::rename(
            dir.path().join("cam/.1.ts.tmp"),
            dir.path().join("cam/1.ts"),
        )
        .unwrap();
        let statuses = together(&files, "cam/1.ts", 8).await;
        assert!(statuses.iter().all(|s| *s == StatusCode::OK));
        assert_eq!(files.disk_loads.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shared_misses_report_errors_to_every_waiter() {
        // The stat follows the symlink; the confined open refuses it.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("cam")).unwrap();
        std::fs::write(dir.path().join("secret.ts"), b"outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.ts"), root.join("cam/out.ts")).unwrap();
        let files = Arc::new(Files::new(root, 64 << 20));
        let statuses = together(&files, "cam/out.ts", 4).await;
        assert!(statuses.iter().all(|s| *s == StatusCode::NOT_FOUND));
        assert_eq!(files.disk_loads.load(Ordering::Relaxed), 1);
    }
}
