//! Deferred deletion of segment files [hls_cleanup].
//!
//! A segment that leaves the playlist must stay fetchable for its own
//! duration plus the playlist's (RFC 8216 §6.2.2), since a player may have
//! loaded the previous playlist just before. Deletions are queued with a
//! deadline and carried out by the janitor task.
//!
//! The deletions themselves run on the blocking pool, one batch per
//! directory at a time ([`CleanupQueue::spawn_due`]): a directory on a
//! stalled volume holds back its own deletions only, never the janitor,
//! another stream's directory or an event loop. No lock is held while a
//! file is deleted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct CleanupQueue {
    due: Mutex<BinaryHeap<Reverse<(Instant, PathBuf)>>>,
    /// Directories with a deletion batch in flight.
    busy: Mutex<HashSet<PathBuf>>,
}

/// Marks a directory busy while its batch runs; cleared on drop (also if
/// the batch panics).
struct BusyDir {
    queue: Arc<CleanupQueue>,
    dir: PathBuf,
}

impl Drop for BusyDir {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.queue.busy.lock() {
            busy.remove(&self.dir);
        }
    }
}

impl CleanupQueue {
    pub fn schedule(&self, path: PathBuf, after: Duration) {
        let deadline = Instant::now() + after;
        if let Ok(mut q) = self.due.lock() {
            q.push(Reverse((deadline, path)));
        }
    }

    /// Removes and returns every path whose deadline is at or before `now`.
    pub fn take_due(&self, now: Instant) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(mut q) = self.due.lock() {
            while q.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                if let Some(Reverse((_, p))) = q.pop() {
                    out.push(p);
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.due.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deletes the due files now, on this thread; a file already gone is
    /// not an error. Blocks on storage: never call it on an event loop.
    pub fn run_due(&self, now: Instant) {
        for path in self.take_due(now) {
            remove(&path);
        }
    }

    /// Starts deleting the due files on the blocking pool, one batch per
    /// directory, and returns without waiting. A directory whose previous
    /// batch is still running (its volume is slow) keeps its due files
    /// queued for a later call. Must be called inside a Tokio runtime.
    pub fn spawn_due(self: &Arc<Self>, now: Instant) -> Vec<tokio::task::JoinHandle<()>> {
        let mut by_dir: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
        for path in self.take_due(now) {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            by_dir.entry(dir).or_default().push(path);
        }
        let mut started = Vec::new();
        for (dir, paths) in by_dir {
            let free = self
                .busy
                .lock()
                .map(|mut busy| busy.insert(dir.clone()))
                .unwrap_or(false);
            if !free {
                for path in paths {
                    self.schedule(path, Duration::ZERO);
                }
                continue;
            }
            let guard = BusyDir {
                queue: self.clone(),
                dir,
            };
            started.push(tokio::task::spawn_blocking(move || {
                for path in paths {
                    remove(&path);
                }
                drop(guard);
            }));
        }
        started
    }
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "segment deleted"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "segment cleanup failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_paths_in_deadline_order() {
        let q = CleanupQueue::default();
        q.schedule("b".into(), Duration::from_secs(20));
        q.schedule("a".into(), Duration::from_secs(10));
        let now = Instant::now();
        assert!(q.take_due(now).is_empty());
        assert_eq!(
            q.take_due(now + Duration::from_secs(15)),
            vec![PathBuf::from("a")]
        );
        assert_eq!(
            q.take_due(now + Duration::from_secs(60)),
            vec![PathBuf::from("b")]
        );
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_busy_directory_keeps_its_deletions_queued_and_others_proceed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        for d in [&a, &b] {
            std::fs::write(d.join("1.ts"), b"x").unwrap();
        }
        let q = Arc::new(CleanupQueue::default());
        // A batch for `a` is in flight (its volume hangs).
        q.busy.lock().unwrap().insert(a.clone());
        q.schedule(a.join("1.ts"), Duration::ZERO);
        q.schedule(b.join("1.ts"), Duration::ZERO);
        for task in q.spawn_due(Instant::now()) {
            task.await.unwrap();
        }
        assert!(!b.join("1.ts").exists(), "the free directory is cleaned");
        assert!(a.join("1.ts").exists(), "the busy directory waits");
        assert_eq!(q.len(), 1, "and its deletion stays queued");
        q.busy.lock().unwrap().remove(&a);
        for task in q.spawn_due(Instant::now()) {
            task.await.unwrap();
        }
        assert!(!a.join("1.ts").exists());
        assert!(q.is_empty() && q.busy.lock().unwrap().is_empty());
    }
}
