//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator
//! replicas never reconcile at the same time.
//!
//! The algorithm is client-go's: the holder renews the Lease every
//! `retry_period`; a candidate takes it over once it has seen the same
//! record (holder and renew time) unchanged for `lease_duration`, measured
//! on its own clock, so clock skew between nodes does not matter. Every
//! write carries the resourceVersion that was read, so two candidates can
//! never both win. A holder that cannot renew for `renew_deadline` stops
//! reconciling (it must assume someone else took over); a holder that shuts
//! down releases the Lease, so a standby takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Where and how to hold the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This instance, as written into `holderIdentity` (the pod name).
    pub identity: String,
    /// How long a candidate waits for a silent holder before taking over.
    pub lease_duration: Duration,
    /// How long a holder keeps reconciling while renewals fail.
    pub renew_deadline: Duration,
    /// Time between renewals, and between a candidate's attempts.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The holder and renew time last read, and when they were first seen.
#[derive(Debug)]
struct Observation {
    holder: Option<String>,
    renew_time: Option<String>,
    duration: Duration,
    since: Instant,
}

/// One candidate for the lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observation>,
}

/// Outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Held,
    HeldByOther,
}

impl LeaderElector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.settings.identity
    }

    /// Waits until this instance holds the lease. Returns `false` when
    /// `cancel` fired first. `on_contact` runs after every successful round
    /// trip to the API server (readiness).
    pub async fn acquire(
        &mut self,
        cancel: &CancellationToken,
        on_contact: &(dyn Fn() + Sync),
    ) -> bool {
        let mut logged_holder: Option<String> = None;
        loop {
            // A hung request must not hold up cancellation (shutdown of a
            // standby), nor an attempt outlast the lease it would take.
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return false,
                attempt = tokio::time::timeout(self.settings.lease_duration, self.try_acquire_or_renew()) => attempt,
            };
            let Ok(attempt) = attempt else {
                tracing::warn!(lease = %self.settings.name, "the API server did not answer within the lease duration; retrying");
                continue;
            };
            match attempt {
                Ok(Attempt::Held) => {
                    on_contact();
                    tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "became leader");
                    return true;
                }
                Ok(Attempt::HeldByOther) => {
                    on_contact();
                    let holder = self.observed.as_ref().and_then(|o| o.holder.clone());
                    if holder != logged_holder {
                        tracing::info!(lease = %self.settings.name, holder = holder.as_deref().unwrap_or(""), "standing by: another instance leads");
                        logged_holder = holder;
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.settings.name, error = %e, "cannot read or take the leader lease; retrying")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(self.settings.retry_period) => {}
            }
        }
    }

    /// Renews the lease until renewing fails for longer than the renew
    /// deadline, or someone else holds it; returns why leadership ended.
    ///
    /// Each attempt is bounded by what is left of the renew deadline: a
    /// request that hangs (an API server that accepts the connection and
    /// never answers, a stalled proxy or load balancer) must not keep this
    /// instance leading past the point where a standby may take over.
    pub async fn keep_renewing(&mut self) -> Error {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            let remaining = self
                .settings
                .renew_deadline
                .saturating_sub(last_renewed.elapsed());
            let attempt = match tokio::time::timeout(remaining, self.try_acquire_or_renew()).await {
                Ok(attempt) => attempt,
                Err(_) => {
                    return Error::LeadershipLost(format!(
                        "could not renew Lease {}/{} within the renew deadline {:?}: \
                             the API server did not answer",
                        self.settings.namespace, self.settings.name, self.settings.renew_deadline
                    ))
                }
            };
            match attempt {
                Ok(Attempt::Held) => last_renewed = Instant::now(),
                Ok(Attempt::HeldByOther) => {
                    return Error::LeadershipLost(format!(
                        "Lease {}/{} is now held by {}",
                        self.settings.namespace,
                        self.settings.name,
                        self.observed
                            .as_ref()
                            .and_then(|o| o.holder.as_deref())
                            .unwrap_or("nobody")
                    ))
                }
                Err(e) => {
                    tracing::warn!(lease = %self.settings.name, error = %e, "cannot renew the leader lease");
                    if last_renewed.elapsed() > self.settings.renew_deadline {
                        return Error::LeadershipLost(format!(
                            "could not renew Lease {}/{} for {:?}: {e}",
                            self.settings.namespace,
                            self.settings.name,
                            self.settings.renew_deadline
                        ));
                    }
                }
            }
        }
    }

    /// Gives the lease up, so a standby need not wait for it to expire.
    /// Bounded by the retry period: shutdown never waits on a hung API
    /// server (the lease then expires on its own).
    pub async fn release(&mut self) {
        let attempt = async {
            let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        };
        let result = match tokio::time::timeout(self.settings.retry_period, attempt).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(lease = %self.settings.name, "the API server did not answer; the leader lease expires on its own");
                return;
            }
        };
        match result {
            Ok(()) => tracing::info!(lease = %self.settings.name, "released the leader lease"),
            Err(e) => {
                tracing::warn!(lease = %self.settings.name, error = %e, "could not release the leader lease; it expires on its own")
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let me = self.settings.identity.clone();
        let duration_secs =
            i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX);

        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                // Someone else created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther),
                Err(e) => Err(e),
            };
        };

        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew_time = spec.renew_time.as_ref().map(|t| t.0.to_string());
        let record_duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(duration_secs)).unwrap_or(0),
        );
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew_time != renew_time);
        if changed {
            self.observed = Some(Observation {
                holder: holder.clone(),
                renew_time,
                duration: record_duration,
                since: Instant::now(),
            });
        }
        let held_by_me = holder.as_deref() == Some(me.as_str());
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|o| o.since.elapsed() > o.duration);
        if !held_by_me && holder.is_some() && !expired {
            return Ok(Attempt::HeldByOther);
        }

        if !held_by_me {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(now);
        // `replace` sends the resourceVersion that was read: if anyone wrote
        // the Lease in between, this fails with a conflict and nobody is
        // elected twice.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                let renew_time = written
                    .spec
                    .as_ref()
                    .and_then(|s| s.renew_time.as_ref())
                    .map(|t| t.0.to_string());
                self.observed = Some(Observation {
                    holder: Some(me),
                    renew_time,
                    duration: self.settings.lease_duration,
                    since: Instant::now(),
                });
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther),
            Err(e) => Err(e),
        }
    }
}
