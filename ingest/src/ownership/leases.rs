//! Stream ownership on coordination.k8s.io Leases.
//!
//! # Design
//!
//! Two kinds of Lease, both in the application's namespace and labelled
//! `oxcast.io/lease-group=<prefix>` (so `kubectl get leases -l …` shows them
//! and one LIST reads them all):
//!
//! - **Heartbeat** `<prefix>-replica-<replica id>`: one per replica.
//!   `holderIdentity` is `<replica id>_<nonce>`, the nonce new for every
//!   process start and after every fencing, so a restarted replica with the
//!   same pod name never inherits its predecessor's streams. The replica
//!   renews it every `renewInterval` (one write), whatever the number of
//!   streams it owns.
//! - **Stream** `<prefix>-stream-<key>-<hash>`: created when a publish is
//!   accepted, deleted when it ends. It names its holder and, in the
//!   annotation `oxcast.io/replica-lease`, the holder's heartbeat Lease. It
//!   is never renewed: a stream Lease is valid exactly while the heartbeat
//!   it points at still has the same holder and is unexpired.
//!
//! API writes therefore grow with publish events (a create, a delete) and
//! with replicas (a heartbeat per `renewInterval`), not with live streams ×
//! time: 100 live streams on 3 replicas cost 3 / 2 s = 1.5 writes per
//! second, the same as 0 streams. The cost of the design is that a stream
//! can only be taken over as a whole replica dies, which is exactly the
//! failure that matters (a process cannot lose one stream's heartbeat and
//! not another's).
//!
//! **Claim** (publish accepted, or a survivor about to end/delete a dead
//! stream): create the stream Lease; `409 AlreadyExists` → read it and its
//! heartbeat: held by a live replica → refused (`already_live`), otherwise
//! (holder's heartbeat expired, gone, or held by another process
//! incarnation) → replace it, conditioned on the `resourceVersion` read, so
//! of two replicas taking over at once exactly one wins.
//!
//! **Fencing**: a heartbeat that succeeded when sent at `t` makes this
//! replica's claims valid until `t + leaseDuration - renewInterval`, on the
//! local monotonic clock. Others consider the heartbeat expired only at
//! `renewTime + leaseDuration` (renewTime ≈ `t`), so the owner stops writing
//! at least `renewInterval` before anybody may take over. Every segment and
//! playlist write checks the [`Fence`]; publishers of a fenced replica are
//! disconnected. After fencing the replica registers again under a new
//! nonce: its old claims stay invalid for good, and new publishes work as
//! soon as the API server answers again.
//!
//! Expiry across replicas compares `renewTime + leaseDurationSeconds` with
//! the local wall clock, as kube's own leader election does; clocks within a
//! cluster are NTP-synchronised to well under the `renewInterval` margin.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::Api;
use tokio::sync::{mpsc, watch};

use super::{Fence, Refusal, ReplicaClock, StreamClaim};
use crate::metrics::Metrics;
use crate::stream_key::StreamKey;

pub const GROUP_LABEL: &str = "oxcast.io/lease-group";
pub const KIND_LABEL: &str = "oxcast.io/lease-kind";
pub const REPLICA_ANNOTATION: &str = "oxcast.io/replica-lease";
pub const STREAM_ANNOTATION: &str = "oxcast.io/stream";

/// Where and as whom to hold Leases.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// Namespace of the Leases; default: the client's (the pod's own).
    pub namespace: Option<String>,
    /// This replica (the pod name).
    pub replica_id: String,
    /// Lease name prefix (the application).
    pub prefix: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseSetupError {
    #[error("no Kubernetes client configuration (in-cluster or KUBECONFIG): {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot register heartbeat Lease {name}: {reason}")]
    Register { name: String, reason: String },
}

/// The current registration of this replica.
#[derive(Debug)]
struct Registration {
    /// `holderIdentity` of the heartbeat and of every stream Lease claimed
    /// under it.
    holder: String,
    generation: u64,
    /// resourceVersion of the heartbeat as last written; `None` until
    /// (re-)registered.
    resource_version: Option<String>,
    acquired: Option<MicroTime>,
}

const CHANGED_BY_OTHERS: &str = "heartbeat Lease was changed by someone else";

/// A claim's Lease to delete once the claim is dropped.
#[derive(Debug)]
struct PendingRelease {
    name: String,
    resource_version: Option<String>,
    generation: u64,
}

/// Sends a stream Lease to the heartbeat task for deletion.
pub(super) struct LeaseRelease {
    held: Arc<Mutex<HashSet<StreamKey>>>,
    tx: mpsc::UnboundedSender<PendingRelease>,
    pending: Option<PendingRelease>,
}

impl LeaseRelease {
    pub(super) fn release(mut self, key: &StreamKey) {
        lock(&self.held).remove(key);
        if let Some(p) = self.pending.take() {
            // The task is gone only at shutdown; the Lease then dies with
            // the heartbeat.
            let _ = self.tx.send(p);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Lowercase DNS label characters: everything else becomes `-`.
fn dns_part(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    while out.starts_with('-') {
        out.remove(0);
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// FNV-1a: stable across processes and versions (names are shared state).
fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The sanitized prefix every Lease name of the group starts with.
pub fn group_name(prefix: &str) -> String {
    let p = dns_part(prefix, 40);
    if p.is_empty() {
        "oxcast".to_string()
    } else {
        p
    }
}

/// Name of a stream's Lease: readable, DNS-safe, and distinct for keys that
/// differ only in case or punctuation (the hash is of the exact key).
pub fn stream_lease_name(group: &str, key: &StreamKey) -> String {
    let readable = dns_part(key.as_str(), 100);
    let hash = fnv64(key.as_str());
    if readable.is_empty() {
        format!("{group}-stream-{hash:016x}")
    } else {
        format!("{group}-stream-{readable}-{hash:016x}")
    }
}

/// Name of a replica's heartbeat Lease.
pub fn replica_lease_name(group: &str, replica_id: &str) -> String {
    let readable = dns_part(replica_id, 100);
    let hash = fnv64(replica_id);
    format!("{group}-replica-{readable}-{:08x}", hash as u32)
}

fn nonce(generation: u64) -> String {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = fnv64(&format!("{t}/{}/{generation}", std::process::id()));
    format!("{:08x}", mixed as u32)
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn to_system(t: &MicroTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(t.0.as_microsecond()).unwrap_or(0))
}

/// When `lease` expires: `renewTime` (or `acquireTime`) + duration.
fn expiry(lease: &Lease) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    let at = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let secs = u64::try_from(spec.lease_duration_seconds?).ok()?;
    Some(to_system(at) + Duration::from_secs(secs))
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// Is the stream Lease held by a live replica, given its heartbeat Lease
/// (as read)?
fn stream_lease_alive(stream: &Lease, replica: Option<&Lease>, now: SystemTime) -> bool {
    let Some(h) = holder(stream) else {
        return false;
    };
    let points_at_replica = stream
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(REPLICA_ANNOTATION));
    if !points_at_replica {
        // Not one of ours: a plain Lease with its own expiry.
        return expiry(stream).is_some_and(|e| e > now);
    }
    replica.is_some_and(|r| holder(r) == Some(h) && expiry(r).is_some_and(|e| e > now))
}

fn replica_annotation(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REPLICA_ANNOTATION))
        .map(String::as_str)
}

/// Which streams live replicas own, as of one LIST.
#[derive(Debug, Default)]
pub struct Snapshot {
    group: String,
    streams: HashMap<String, Lease>,
    replicas: HashMap<String, Lease>,
    taken_at: Option<SystemTime>,
}

impl Snapshot {
    /// Does a live replica (this one included) own `key`?
    pub fn owned(&self, key: &StreamKey) -> bool {
        let Some(stream) = self.streams.get(&stream_lease_name(&self.group, key)) else {
            return false;
        };
        let replica = replica_annotation(stream).and_then(|n| self.replicas.get(n));
        stream_lease_alive(
            stream,
            replica,
            self.taken_at.unwrap_or_else(SystemTime::now),
        )
    }
}

/// Stream ownership through Leases; see the module docs.
pub struct LeaseOwnership {
    api: Api<Lease>,
    namespace: String,
    group: String,
    replica_id: String,
    replica_lease: String,
    duration: Duration,
    renew: Duration,
    clock: Arc<ReplicaClock>,
    registration: Mutex<Registration>,
    held: Arc<Mutex<HashSet<StreamKey>>>,
    releases: mpsc::UnboundedSender<PendingRelease>,
    releases_rx: Mutex<Option<mpsc::UnboundedReceiver<PendingRelease>>>,
    stop: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl LeaseOwnership {
    /// Connects (in-cluster config or KUBECONFIG) and registers this
    /// replica's heartbeat; fails if the API server does not accept it.
    pub async fn connect(
        options: LeaseOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, LeaseSetupError> {
        let mut config = kube::Config::infer().await?;
        // No request may outlive the time a heartbeat keeps claims valid: a
        // hanging API server must show up as failed heartbeats, not as a
        // stuck task.
        let limit = options
            .lease_duration
            .saturating_sub(options.renew_interval)
            .max(Duration::from_secs(1));
        config.connect_timeout = Some(limit);
        config.read_timeout = Some(limit);
        config.write_timeout = Some(limit);
        let namespace = options
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config)?;
        let api: Api<Lease> = Api::namespaced(client, &namespace);
        let group = group_name(&options.prefix);
        let replica_lease = replica_lease_name(&group, &options.replica_id);
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, _) = watch::channel(false);
        let clock = Arc::new(ReplicaClock::new(false));
        let generation = clock.generation();
        let this = Arc::new(Self {
            api,
            namespace,
            group,
            replica_id: options.replica_id.clone(),
            replica_lease,
            duration: options.lease_duration,
            renew: options.renew_interval,
            clock,
            registration: Mutex::new(Registration {
                holder: format!("{}_{}", options.replica_id, nonce(generation)),
                generation,
                resource_version: None,
                acquired: None,
            }),
            held: Arc::default(),
            releases: tx,
            releases_rx: Mutex::new(Some(rx)),
            stop,
            metrics,
        });
        this.beat()
            .await
            .map_err(|reason| LeaseSetupError::Register {
                name: this.replica_lease.clone(),
                reason,
            })?;
        tracing::info!(
            namespace = %this.namespace,
            lease = %this.replica_lease,
            holder = %lock(&this.registration).holder,
            "stream ownership through Leases"
        );
        Ok(this)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn replica_lease(&self) -> &str {
        &self.replica_lease
    }

    /// Can this replica claim streams now (registered and not fenced)?
    pub fn available(&self) -> bool {
        self.clock.valid()
    }

    fn count(&self, verb: &'static str) {
        self.metrics.ownership_api_requests.inc(verb);
    }

    fn labels(&self, kind: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (GROUP_LABEL.to_string(), self.group.clone()),
            (KIND_LABEL.to_string(), kind.to_string()),
        ])
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// How long a heartbeat sent at `t` keeps claims valid (from `t`).
    fn valid_for(&self) -> Duration {
        self.duration.saturating_sub(self.renew)
    }

    /// Renews (or first registers) the heartbeat Lease.
    async fn beat(&self) -> Result<(), String> {
        let sent = Instant::now();
        let (holder, generation, rv) = {
            let r = lock(&self.registration);
            (r.holder.clone(), r.generation, r.resource_version.clone())
        };
        let written = match rv {
            Some(rv) => {
                // Ours alone: a conflict means somebody else wrote it.
                let mut lease = self.heartbeat_lease(&holder, 0);
                lease.metadata.resource_version = Some(rv);
                if let Some(spec) = lease.spec.as_mut() {
                    spec.acquire_time = lock(&self.registration).acquired.clone();
                    spec.lease_transitions = None;
                }
                self.count("update");
                self.api
                    .replace(&self.replica_lease, &PostParams::default(), &lease)
                    .await
                    .map_err(|e| match api_code(&e) {
                        Some(404) | Some(409) => {
                            format!("{CHANGED_BY_OTHERS}: {e}")
                        }
                        _ => e.to_string(),
                    })
            }
            None => self.register(&holder).await,
        };
        let lease = written?;
        let mut r = lock(&self.registration);
        if r.generation == generation {
            r.resource_version = lease.metadata.resource_version;
            if r.acquired.is_none() {
                r.acquired = lease.spec.and_then(|s| s.acquire_time);
            }
            drop(r);
            if self.clock.generation() == generation {
                self.clock.extend_to(sent + self.valid_for());
            }
        }
        Ok(())
    }

    fn heartbeat_lease(&self, holder: &str, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.replica_lease.clone()),
                labels: Some(self.labels("replica")),
                annotations: Some(BTreeMap::from([(
                    "oxcast.io/replica".to_string(),
                    self.replica_id.clone(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                lease_duration_seconds: Some(self.lease_seconds()),
                acquire_time: Some(micro_now()),
                renew_time: Some(micro_now()),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    /// Creates or takes over (same name, e.g. a restarted pod) the
    /// heartbeat Lease under a new holder.
    async fn register(&self, holder: &str) -> Result<Lease, String> {
        self.count("get");
        let existing = self
            .api
            .get_opt(&self.replica_lease)
            .await
            .map_err(|e| e.to_string())?;
        match existing {
            None => {
                self.count("create");
                self.api
                    .create(&PostParams::default(), &self.heartbeat_lease(holder, 0))
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(old) => {
                let transitions = old
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0)
                    .saturating_add(1);
                let mut lease = self.heartbeat_lease(holder, transitions);
                lease.metadata.resource_version = old.metadata.resource_version;
                self.count("update");
                self.api
                    .replace(&self.replica_lease, &PostParams::default(), &lease)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Stops all writing under the current holder and prepares a new
    /// registration.
    fn fence(&self, why: &str) {
        let generation = self.clock.fence();
        let mut r = lock(&self.registration);
        r.generation = generation;
        r.holder = format!("{}_{}", self.replica_id, nonce(generation));
        r.resource_version = None;
        r.acquired = None;
        drop(r);
        lock(&self.held).clear();
        self.metrics
            .ownership_fenced
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(lease = %self.replica_lease, reason = %why, "fenced: cannot prove stream ownership; stopped writing every stream and dropping their publishers");
    }

    /// Claims `key`; see the module docs.
    pub async fn claim(&self, key: &StreamKey) -> Result<StreamClaim, Refusal> {
        let (holder, generation) = {
            let r = lock(&self.registration);
            (r.holder.clone(), r.generation)
        };
        if !self.clock.holds(generation) {
            return Err(Refusal::Unavailable(
                "this replica is not registered with the API server (fenced)".into(),
            ));
        }
        if !lock(&self.held).insert(key.clone()) {
            return Err(Refusal::Owned(key.clone()));
        }
        match self.claim_lease(key, &holder).await {
            Ok(lease) if self.clock.holds(generation) => Ok(StreamClaim {
                key: key.clone(),
                fence: Fence::new(self.clock.clone(), generation),
                release: Some(super::Release::Lease(LeaseRelease {
                    held: self.held.clone(),
                    tx: self.releases.clone(),
                    pending: Some(PendingRelease {
                        name: lease.metadata.name.unwrap_or_default(),
                        resource_version: lease.metadata.resource_version,
                        generation,
                    }),
                })),
            }),
            Ok(_) => {
                lock(&self.held).remove(key);
                Err(Refusal::Unavailable("fenced while claiming".into()))
            }
            Err(e) => {
                lock(&self.held).remove(key);
                Err(e)
            }
        }
    }

    async fn claim_lease(&self, key: &StreamKey, holder: &str) -> Result<Lease, Refusal> {
        let name = stream_lease_name(&self.group, key);
        let unavailable = |e: kube::Error| Refusal::Unavailable(e.to_string());
        let fresh = |resource_version: Option<String>, transitions: i32| Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(self.labels("stream")),
                annotations: Some(BTreeMap::from([
                    (REPLICA_ANNOTATION.to_string(), self.replica_lease.clone()),
                    (STREAM_ANNOTATION.to_string(), key.as_str().to_string()),
                ])),
                resource_version,
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                lease_duration_seconds: Some(self.lease_seconds()),
                acquire_time: Some(micro_now()),
                renew_time: Some(micro_now()),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        };
        for _ in 0..4 {
            self.count("create");
            match self
                .api
                .create(&PostParams::default(), &fresh(None, 0))
                .await
            {
                Ok(lease) => return Ok(lease),
                Err(e) if api_code(&e) == Some(409) => {}
                Err(e) => return Err(unavailable(e)),
            }
            self.count("get");
            let Some(existing) = self.api.get_opt(&name).await.map_err(unavailable)? else {
                continue;
            };
            // Held by this very registration but not claimed locally: a
            // release whose delete has not gone through yet; free.
            let own_stale = holder_is(&existing, holder);
            if !own_stale {
                let replica = match replica_annotation(&existing) {
                    Some(r) => {
                        self.count("get");
                        self.api.get_opt(r).await.map_err(unavailable)?
                    }
                    None => None,
                };
                if stream_lease_alive(&existing, replica.as_ref(), SystemTime::now()) {
                    return Err(Refusal::Owned(key.clone()));
                }
                tracing::info!(stream = %key, lease = %name, previous = holder_of(&existing), "taking over the stream from a dead replica");
            }
            let transitions = existing
                .spec
                .as_ref()
                .and_then(|s| s.lease_transitions)
                .unwrap_or(0)
                .saturating_add(1);
            self.count("update");
            match self
                .api
                .replace(
                    &name,
                    &PostParams::default(),
                    &fresh(existing.metadata.resource_version.clone(), transitions),
                )
                .await
            {
                Ok(lease) => return Ok(lease),
                // Somebody else changed it (took it first, released it):
                // decide again.
                Err(e) if matches!(api_code(&e), Some(409) | Some(404)) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(Refusal::Unavailable(format!(
            "Lease {name} keeps changing; try again"
        )))
    }

    /// One LIST of the group's Leases.
    pub async fn snapshot(&self) -> Result<Snapshot, Refusal> {
        self.count("list");
        let list = self
            .api
            .list(&ListParams::default().labels(&format!("{GROUP_LABEL}={}", self.group)))
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let mut snapshot = Snapshot {
            group: self.group.clone(),
            taken_at: Some(SystemTime::now()),
            ..Snapshot::default()
        };
        for lease in list.items {
            let Some(name) = lease.metadata.name.clone() else {
                continue;
            };
            let kind = lease
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(KIND_LABEL))
                .map(String::as_str);
            match kind {
                Some("replica") => {
                    snapshot.replicas.insert(name, lease);
                }
                Some("stream") => {
                    snapshot.streams.insert(name, lease);
                }
                _ => {}
            }
        }
        Ok(snapshot)
    }

    async fn delete_stream_lease(&self, r: PendingRelease) -> Result<(), PendingRelease> {
        if r.generation != self.clock.generation() {
            // Claimed under a fenced registration: free already, and maybe
            // somebody else's by now.
            return Ok(());
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: r.resource_version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        self.count("delete");
        match self.api.delete(&r.name, &dp).await {
            Ok(_) => Ok(()),
            // Gone, or re-claimed since (our own republish took it over).
            Err(e) if matches!(api_code(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => {
                tracing::warn!(lease = %r.name, error = %e, "cannot release stream Lease; will retry");
                Err(r)
            }
        }
    }

    /// The heartbeat task: renews every `renewInterval`, deletes released
    /// stream Leases, fences when ownership can no longer be proven. Runs
    /// until [`LeaseOwnership::shutdown`].
    pub async fn run(self: Arc<Self>) {
        let Some(mut releases) = lock(&self.releases_rx).take() else {
            return;
        };
        let mut stop = self.stop.subscribe();
        let mut tick = tokio::time::interval(self.renew);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry: Vec<PendingRelease> = Vec::new();
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let registered = lock(&self.registration).resource_version.is_some();
                    match tokio::time::timeout(self.valid_for().max(self.renew), self.beat()).await {
                        Ok(Ok(())) => {
                            if failing_since.take().is_some() || !registered {
                                tracing::info!(lease = %self.replica_lease, holder = %lock(&self.registration).holder, "heartbeat Lease renewed; claiming streams again");
                            }
                        }
                        outcome => {
                            let reason = match outcome {
                                Ok(Err(e)) => e,
                                _ => "timed out".to_string(),
                            };
                            let since = *failing_since.get_or_insert_with(Instant::now);
                            tracing::warn!(lease = %self.replica_lease, error = %reason, failing_for = ?since.elapsed(), "heartbeat failed");
                            let changed = reason.starts_with(CHANGED_BY_OTHERS);
                            if registered && (changed || !self.clock.valid()) {
                                self.fence(&reason);
                            }
                        }
                    }
                    for r in std::mem::take(&mut retry) {
                        if let Err(r) = self.delete_stream_lease(r).await {
                            retry.push(r);
                        }
                    }
                }
                Some(r) = releases.recv() => {
                    if let Err(r) = self.delete_stream_lease(r).await {
                        retry.push(r);
                    }
                }
                _ = stop.changed() => break,
            }
        }
        // Shutting down: publishers have finished; release what is left and
        // the heartbeat itself, so nothing waits for an expiry.
        while let Ok(r) = releases.try_recv() {
            retry.push(r);
        }
        for r in retry {
            let _ = self.delete_stream_lease(r).await;
        }
        self.count("delete");
        if let Err(e) = self
            .api
            .delete(&self.replica_lease, &DeleteParams::default())
            .await
        {
            tracing::warn!(lease = %self.replica_lease, error = %e, "cannot delete heartbeat Lease at shutdown");
        }
    }

    /// Ends [`LeaseOwnership::run`] after releasing what is left.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

fn holder_is(lease: &Lease, h: &str) -> bool {
    holder(lease) == Some(h)
}

fn holder_of(lease: &Lease) -> &str {
    holder(lease).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: u64, duration: i32, replica: Option<&str>) -> Lease {
        let at = SystemTime::now() - Duration::from_secs(renewed_secs_ago);
        let micros = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        Lease {
            metadata: ObjectMeta {
                annotations: replica
                    .map(|r| BTreeMap::from([(REPLICA_ANNOTATION.to_string(), r.to_string())])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(Timestamp::from_microsecond(micros).unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn names_are_dns_safe_and_distinct() {
        let g = group_name("Live_App");
        assert_eq!(g, "live-app");
        let a = stream_lease_name(&g, &StreamKey::parse("Cam_1").unwrap());
        let b = stream_lease_name(&g, &StreamKey::parse("cam-1").unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("live-app-stream-cam-1-"), "{a}");
        let long = StreamKey::parse(&"A.".repeat(64)).unwrap();
        let n = stream_lease_name(&g, &long);
        assert!(
            n.len() <= 253
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(!n.ends_with('-'));
        let r = replica_lease_name(&g, "ingest-7d9f-abc");
        assert!(r.starts_with("live-app-replica-ingest-7d9f-abc-"), "{r}");
        assert_eq!(group_name("__"), "oxcast");
    }

    #[test]
    fn a_stream_lease_lives_and_dies_with_its_holders_heartbeat() {
        let stream = lease("pod-a_1", 600, 10, Some("g-replica-a"));
        let now = SystemTime::now();
        let live = lease("pod-a_1", 1, 10, None);
        assert!(
            stream_lease_alive(&stream, Some(&live), now),
            "old stream lease, fresh heartbeat"
        );
        let expired = lease("pod-a_1", 11, 10, None);
        assert!(!stream_lease_alive(&stream, Some(&expired), now));
        let restarted = lease("pod-a_2", 1, 10, None);
        assert!(
            !stream_lease_alive(&stream, Some(&restarted), now),
            "new incarnation"
        );
        assert!(!stream_lease_alive(&stream, None, now), "heartbeat gone");
        let plain = lease("x", 1, 10, None);
        assert!(stream_lease_alive(&plain, None, now));
    }
}
