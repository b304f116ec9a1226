//! Deferred deletion of segment files [hls_cleanup].
//!
//! A segment that leaves the playlist must stay fetchable for its own
//! duration plus the playlist's (RFC 8216 §6.2.2), since a player may have
//! loaded the previous playlist just before. Deletions are queued with a
//! deadline and carried out by the janitor task.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct CleanupQueue {
    due: Mutex<BinaryHeap<Reverse<(Instant, PathBuf)>>>,
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

    /// Deletes the due files; a file already gone is not an error.
    pub fn run_due(&self, now: Instant) {
        for path in self.take_due(now) {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "segment deleted"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "segment cleanup failed")
                }
            }
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
}
