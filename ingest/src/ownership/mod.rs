//! Who may write a stream's files: exactly one owner per live stream,
//! cluster-wide (DESIGN.md, "Scale-out: one owner per stream").
//!
//! A publish is accepted only with a [`StreamClaim`]; start-up recovery and
//! the janitor take one too before they end (ENDLIST) or delete a stream, so
//! nothing touches a stream another live replica owns. A claim is released
//! when the guard is dropped (publish end, panic, failed hand-off alike).
//! Every file write checks the claim's [`Fence`] first: a replica that can no
//! longer prove its ownership stops writing.
//!
//! Two implementations:
//! - in-process (the all-in-one `run` on one machine): a set of claimed keys
//!   in memory, the fence always holds;
//! - Kubernetes Leases ([`leases`]): see that module for how claims,
//!   renewal, take-over and fencing work, and why API writes grow with
//!   publish events and replicas, not with live streams × time.

pub mod leases;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::stream_key::StreamKey;

pub use leases::{LeaseOptions, LeaseOwnership, LeaseSetupError, Snapshot};

/// Why a stream could not be claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another publication (here or on a live replica) owns it.
    #[error("stream {0} is already being published")]
    Owned(StreamKey),
    /// Ownership cannot be decided now (API server unreachable, this
    /// replica is fenced); nothing may be written.
    #[error("stream ownership cannot be established: {0}")]
    Unavailable(String),
}

/// The replica-wide validity of claims: a generation (bumped when the
/// replica is fenced, so old claims stay invalid forever) and a deadline on
/// a monotonic clock, pushed forward by each successful heartbeat.
#[derive(Debug)]
pub(crate) struct ReplicaClock {
    epoch: Instant,
    generation: AtomicU64,
    /// Milliseconds since `epoch`; `u64::MAX` never expires.
    valid_until_ms: AtomicU64,
}

impl ReplicaClock {
    pub(crate) fn new(valid_forever: bool) -> Self {
        Self {
            epoch: Instant::now(),
            generation: AtomicU64::new(1),
            valid_until_ms: AtomicU64::new(if valid_forever { u64::MAX } else { 0 }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Valid until `at` (a heartbeat sent at some instant succeeded).
    pub(crate) fn extend_to(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.epoch).as_millis() as u64;
        self.valid_until_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Invalidates every claim of the current generation; returns the new one.
    pub(crate) fn fence(&self) -> u64 {
        self.valid_until_ms.store(0, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub(crate) fn holds(&self, generation: u64) -> bool {
        self.generation() == generation
            && self.now_ms() < self.valid_until_ms.load(Ordering::Acquire)
    }

    /// Is the current generation valid?
    pub(crate) fn valid(&self) -> bool {
        self.holds(self.generation())
    }
}

/// Proof of ownership that writes check. Cheap to clone and to check (two
/// atomic loads).
#[derive(Debug, Clone)]
pub struct Fence {
    clock: Option<Arc<ReplicaClock>>,
    generation: u64,
}

impl Fence {
    /// A fence that always holds (in-process ownership, tests).
    pub fn always() -> Self {
        Self {
            clock: None,
            generation: 0,
        }
    }

    pub(crate) fn new(clock: Arc<ReplicaClock>, generation: u64) -> Self {
        Self {
            clock: Some(clock),
            generation,
        }
    }

    /// May the holder still write?
    pub fn holds(&self) -> bool {
        match &self.clock {
            None => true,
            Some(c) => c.holds(self.generation),
        }
    }
}

/// What releasing a claim does.
enum Release {
    InProcess(Arc<Mutex<HashSet<StreamKey>>>),
    Lease(leases::LeaseRelease),
}

/// Ownership of one stream; released on drop.
pub struct StreamClaim {
    key: StreamKey,
    fence: Fence,
    release: Option<Release>,
}

impl std::fmt::Debug for StreamClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamClaim")
            .field("key", &self.key)
            .field("holds", &self.fence.holds())
            .finish()
    }
}

impl StreamClaim {
    pub fn key(&self) -> &StreamKey {
        &self.key
    }

    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    pub fn holds(&self) -> bool {
        self.fence.holds()
    }
}

impl Drop for StreamClaim {
    fn drop(&mut self) {
        match self.release.take() {
            Some(Release::InProcess(held)) => {
                held.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&self.key);
            }
            Some(Release::Lease(r)) => r.release(&self.key),
            None => {}
        }
    }
}

/// The ownership backend this server runs with.
#[derive(Clone)]
pub enum StreamOwnership {
    InProcess(Arc<Mutex<HashSet<StreamKey>>>),
    Leases(Arc<LeaseOwnership>),
}

impl std::fmt::Debug for StreamOwnership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InProcess(_) => f.write_str("StreamOwnership::InProcess"),
            Self::Leases(l) => write!(f, "StreamOwnership::Leases({})", l.replica_lease()),
        }
    }
}

impl Default for StreamOwnership {
    fn default() -> Self {
        Self::in_process()
    }
}

impl StreamOwnership {
    pub fn in_process() -> Self {
        Self::InProcess(Arc::default())
    }

    /// Shared across processes (another replica may own streams on the
    /// same volume)?
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Leases(_))
    }

    /// Claims without waiting, when the backend can decide locally.
    pub fn try_claim_now(&self, key: &StreamKey) -> Option<Result<StreamClaim, Refusal>> {
        match self {
            Self::InProcess(held) => {
                let mut set = held.lock().unwrap_or_else(|p| p.into_inner());
                if !set.insert(key.clone()) {
                    return Some(Err(Refusal::Owned(key.clone())));
                }
                Some(Ok(StreamClaim {
                    key: key.clone(),
                    fence: Fence::always(),
                    release: Some(Release::InProcess(held.clone())),
                }))
            }
            Self::Leases(_) => None,
        }
    }

    /// Claims `key` for this replica.
    pub async fn claim(&self, key: &StreamKey) -> Result<StreamClaim, Refusal> {
        match self {
            Self::InProcess(_) => match self.try_claim_now(key) {
                Some(r) => r,
                None => Err(Refusal::Unavailable("unreachable".into())),
            },
            Self::Leases(l) => l.claim(key).await,
        }
    }

    /// Which streams live replicas own right now (one API read); `None` for
    /// in-process ownership, where nobody else does.
    pub async fn snapshot(&self) -> Result<Option<Snapshot>, Refusal> {
        match self {
            Self::InProcess(_) => Ok(None),
            Self::Leases(l) => l.snapshot().await.map(Some),
        }
    }

    /// Can this replica currently claim anything?
    pub fn available(&self) -> bool {
        match self {
            Self::InProcess(_) => true,
            Self::Leases(l) => l.available(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_claims_are_exclusive_and_released_on_drop() {
        let own = StreamOwnership::in_process();
        let key = StreamKey::parse("cam").unwrap();
        let claim = own.try_claim_now(&key).unwrap().unwrap();
        assert!(claim.holds());
        assert_eq!(
            own.try_claim_now(&key).unwrap().unwrap_err(),
            Refusal::Owned(key.clone())
        );
        drop(claim);
        assert!(own.try_claim_now(&key).unwrap().is_ok());
    }

    #[test]
    fn claims_are_released_when_the_holder_panics() {
        let own = StreamOwnership::in_process();
        let key = StreamKey::parse("cam").unwrap();
        let own2 = own.clone();
        let key2 = key.clone();
        let panicked = std::thread::spawn(move || {
            let _claim = own2.try_claim_now(&key2).unwrap().unwrap();
            panic!("connection task panics while publishing");
        })
        .join();
        assert!(panicked.is_err());
        assert!(own.try_claim_now(&key).unwrap().is_ok());
    }

    #[test]
    fn fencing_invalidates_a_generation_for_good() {
        let clock = Arc::new(ReplicaClock::new(false));
        let g = clock.generation();
        let fence = Fence::new(clock.clone(), g);
        assert!(!fence.holds(), "not valid before the first heartbeat");
        clock.extend_to(Instant::now() + std::time::Duration::from_secs(5));
        assert!(fence.holds());
        let g2 = clock.fence();
        assert!(!fence.holds());
        clock.extend_to(Instant::now() + std::time::Duration::from_secs(5));
        assert!(!fence.holds(), "an old generation never holds again");
        assert!(Fence::new(clock, g2).holds());
    }
}
