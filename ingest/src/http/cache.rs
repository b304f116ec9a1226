//! An in-memory cache of served files, bounded in bytes.
//!
//! Viewers of a live stream all want the same few files: the playlist and
//! the newest segments. Keeping those in memory turns a request into one
//! `stat` (to notice a new version) and a write from memory, with headers
//! prepared once per version.
//!
//! Entries are keyed by relative path and tagged with the [`FileId`] they
//! were read as; a lookup only hits when the file on disk still has that
//! identity (same inode, modification time and length). A playlist
//! replaced by rename therefore misses at once, and bytes are only ever
//! served from the cache if they were read through the confined open.
//! Eviction is least-recently-used, by a coarse use counter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::http::HeaderValue;
use bytes::Bytes;

use super::conditional::Validators;
use super::fs::FileId;

/// What responses about one version of a file carry, built once.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub id: FileId,
    pub validators: Validators,
    /// `ETag` and `Last-Modified` as header values.
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
}

impl FileMeta {
    pub fn new(id: FileId) -> Self {
        let validators = id.validators();
        let etag = HeaderValue::from_str(&validators.etag)
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        let last_modified = last_modified_value(validators.mtime_secs);
        Self {
            id,
            validators,
            etag,
            last_modified,
        }
    }
}

/// One version of a file, ready to serve.
#[derive(Debug)]
pub struct CachedFile {
    pub meta: FileMeta,
    pub body: Bytes,
}

impl CachedFile {
    pub fn new(id: FileId, body: Bytes) -> Self {
        Self {
            meta: FileMeta::new(id),
            body,
        }
    }
}

/// `Last-Modified` for a modification time in whole seconds.
pub fn last_modified_value(mtime_secs: i64) -> HeaderValue {
    let t = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(mtime_secs).unwrap_or(0));
    HeaderValue::from_str(&httpdate::fmt_http_date(t))
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

struct Slot {
    file: Arc<CachedFile>,
    last_used: AtomicU64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Box<str>, Slot>,
    bytes: u64,
}

/// The cache. `budget` 0 disables it.
pub struct FileCache {
    budget: u64,
    max_entry: u64,
    clock: AtomicU64,
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for FileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCache")
            .field("budget", &self.budget)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl FileCache {
    /// A cache holding at most `budget` bytes of file bodies; files larger
    /// than an eighth of it are never cached, so one big file cannot flush
    /// the hot set.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            max_entry: budget / 8,
            clock: AtomicU64::new(0),
            inner: RwLock::new(Inner::default()),
        }
    }

    /// Would a file of `len` bytes be cached?
    pub fn admits(&self, len: u64) -> bool {
        len <= self.max_entry && self.budget > 0
    }

    /// The cached version of `rel` if it is still `id`.
    pub fn get(&self, rel: &str, id: &FileId) -> Option<Arc<CachedFile>> {
        if self.budget == 0 {
            return None;
        }
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let slot = inner.map.get(rel)?;
        if slot.file.meta.id != *id {
            return None;
        }
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        slot.last_used.store(tick, Ordering::Relaxed);
        Some(slot.file.clone())
    }

    /// Caches `file` under `rel`, replacing an older version and evicting
    /// the least recently used entries to stay within the budget.
    pub fn insert(&self, rel: &str, file: Arc<CachedFile>) {
        let len = file.body.len() as u64;
        if !self.admits(len) {
            return;
        }
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = inner.map.remove(rel) {
            inner.bytes -= old.file.body.len() as u64;
        }
        while inner.bytes + len > self.budget {
            let Some(victim) = inner
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(old) = inner.map.remove(&victim) {
                inner.bytes -= old.file.body.len() as u64;
            }
        }
        inner.bytes += len;
        inner.map.insert(
            rel.into(),
            Slot {
                file,
                last_used: AtomicU64::new(tick),
            },
        );
    }

    /// Bytes of file bodies held.
    pub fn bytes(&self) -> u64 {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64, len: u64) -> FileId {
        FileId {
            dev: 1,
            ino: n,
            mtime_secs: 1,
            mtime_nanos: 0,
            len,
        }
    }

    fn file(n: u64, len: usize) -> Arc<CachedFile> {
        Arc::new(CachedFile::new(
            id(n, len as u64),
            Bytes::from(vec![0u8; len]),
        ))
    }

    #[test]
    fn hits_only_the_same_version() {
        let c = FileCache::new(8000);
        c.insert("a.ts", file(1, 100));
        assert!(c.get("a.ts", &id(1, 100)).is_some());
        assert!(c.get("a.ts", &id(2, 100)).is_none(), "replaced by rename");
        assert!(c.get("a.ts", &id(1, 101)).is_none(), "grew");
        c.insert("a.ts", file(2, 200));
        assert_eq!(c.bytes(), 200);
        assert!(c.get("a.ts", &id(2, 200)).is_some());
    }

    #[test]
    fn stays_within_budget_evicting_least_recently_used() {
        let c = FileCache::new(8000); // entries up to 1000 bytes
        c.insert("big.ts", file(9, 1001));
        assert_eq!(c.bytes(), 0, "too large to cache");
        for n in 0..8 {
            c.insert(&format!("{n}.ts"), file(n, 1000));
        }
        assert_eq!(c.bytes(), 8000);
        assert!(c.get("0.ts", &id(0, 1000)).is_some());
        c.insert("8.ts", file(8, 1000));
        assert_eq!(c.bytes(), 8000);
        assert!(
            c.get("0.ts", &id(0, 1000)).is_some(),
            "recently used survives"
        );
        assert!(
            c.get("1.ts", &id(1, 1000)).is_none(),
            "least recently used went"
        );
    }

    #[test]
    fn zero_budget_disables() {
        let c = FileCache::new(0);
        c.insert("a.ts", file(1, 1));
        assert!(c.get("a.ts", &id(1, 1)).is_none());
        assert!(!c.admits(0));
    }
}
