//! Status: what the children say, turned into conditions and URLs. A pure
//! function of the observed objects and the previous status, so every
//! transition is unit-tested and an unchanged world yields an equal status
//! (which the reconciler then does not write).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use oxcast_crds::live_application::{LiveApplicationSpec, LiveApplicationStatus, ServiceType};

use crate::names::Names;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Reason of Ready=False and Degraded=True while the key-token Secret is
/// missing.
pub const KEY_SECRET_MISSING: &str = "KeySecretMissing";

/// Container waiting reasons that will not fix themselves: the pod needs a
/// different spec, image, Secret or node.
const STUCK_WAITING_REASONS: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Everything the status is computed from.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub namespace: &'a str,
    pub names: &'a Names,
    pub spec: &'a LiveApplicationSpec,
    /// Why the spec cannot be built; nothing else matters then.
    pub invalid: Option<&'a str>,
    /// Why applying the children failed.
    pub apply_error: Option<&'a str>,
    /// The key-token Secret (`hls.encryption.authorization.secretName`)
    /// the spec names but the namespace lacks: the HTTP pods cannot mount
    /// it, so they never start. `None` when it exists, when the spec names
    /// none, or when the operator does not check (`--check-secrets=false`).
    pub missing_secret: Option<&'a str>,
    pub ingest: Option<&'a Deployment>,
    /// The HTTP Deployment, in http.mode deployment.
    pub http: Option<&'a Deployment>,
    pub expect_http_deployment: bool,
    pub rtmp_service: Option<&'a Service>,
    pub http_service: Option<&'a Service>,
    /// The claim the operator created, in storage.persistentVolumeClaim.
    pub pvc: Option<&'a PersistentVolumeClaim>,
    pub expect_pvc: bool,
    /// The application's pods (ingest and HTTP).
    pub pods: Vec<&'a Pod>,
    /// Ready endpoints in the RTMP Service's EndpointSlices: what kube-proxy
    /// and load balancers route publishers to (see [`ready_endpoints`]).
    pub rtmp_ready_endpoints: usize,
}

/// Ready endpoints in `slices` (unique addresses): `ready` unset counts as
/// ready, as the EndpointSlice API says consumers should read it.
pub fn ready_endpoints<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> usize {
    let mut addresses: Vec<&str> = slices
        .into_iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter().map(String::as_str))
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses.len()
}

/// A condition before timestamps: type, status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    status: bool,
    reason: &'static str,
    message: String,
}

impl Verdict {
    fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: true,
            reason,
            message: message.into(),
        }
    }

    fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// The new status. `previous` supplies the transition times of conditions
/// whose status did not change; `now` stamps the others.
pub fn compute(
    previous: Option<&LiveApplicationStatus>,
    observed: &Observed<'_>,
    now: &Time,
) -> LiveApplicationStatus {
    let (ready, progressing, degraded) = verdicts(observed);
    let mut status = LiveApplicationStatus {
        observed_generation: observed.generation,
        ready_replicas: observed.ingest.map(ready_replicas),
        http_ready_replicas: observed.http.map(ready_replicas),
        rtmp_url: rtmp_url(observed),
        playback_url: playback_url(observed),
        conditions: Vec::new(),
    };
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    for (type_, verdict) in [
        (READY, ready),
        (PROGRESSING, progressing),
        (DEGRADED, degraded),
    ] {
        status.conditions.push(condition(
            previous_conditions,
            type_,
            verdict,
            observed.generation,
            now,
        ));
    }
    status
}

fn condition(
    previous: &[Condition],
    type_: &str,
    verdict: Verdict,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if verdict.status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: verdict.reason.to_string(),
        message: verdict.message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Condition `type_` of `after` if it is True and was not True with the
/// same reason `before`: worth an Event (Degraded by stuck pods, then by a
/// deleted Secret, is news too).
pub fn newly_true<'a>(
    before: Option<&LiveApplicationStatus>,
    after: &'a LiveApplicationStatus,
    type_: &str,
) -> Option<&'a Condition> {
    let now = find(after, type_).filter(|c| c.status == "True")?;
    let was = before
        .and_then(|b| find(b, type_))
        .filter(|c| c.status == "True");
    match was {
        Some(was) if was.reason == now.reason => None,
        _ => Some(now),
    }
}

/// The condition of `type_`, if any.
pub fn find<'a>(status: &'a LiveApplicationStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn verdicts(o: &Observed<'_>) -> (Verdict, Verdict, Verdict) {
    if let Some(message) = o.invalid {
        return (
            Verdict::no(
                "InvalidSpec",
                "the spec is invalid; see the Degraded condition",
            ),
            Verdict::no("InvalidSpec", "waiting for a valid spec"),
            Verdict::yes("InvalidSpec", message),
        );
    }
    if let Some(message) = o.apply_error {
        return (
            Verdict::no(
                "ApplyFailed",
                "the operator could not update the application's objects",
            ),
            Verdict::no("ApplyFailed", "retrying with backoff"),
            Verdict::yes("ApplyFailed", message),
        );
    }

    let problem = degradation(o);
    let rollout = rollout_state(o);
    let lb_waiting = o.spec.rtmp.service.type_ == ServiceType::LoadBalancer
        && o.rtmp_service.and_then(lb_address).is_none();
    // Pods can be available before the Service routes to them: the
    // EndpointSlice controller, then kube-proxy and load balancers, follow
    // pod readiness. A publish that arrives in between is refused, so Ready
    // waits for a ready endpoint of the RTMP Service.
    let endpoints_waiting = o.spec.replicas > 0 && o.rtmp_ready_endpoints == 0;

    let degraded = match &problem {
        Some((reason, message)) => Verdict::yes(reason, message.clone()),
        None => Verdict::no("AsExpected", "no problems found"),
    };
    let no_endpoints = || {
        format!(
            "Service {} has no ready endpoint yet: publishers would be refused",
            o.names.rtmp_service()
        )
    };
    let progressing = match (&rollout, lb_waiting) {
        (Rollout::Pending(reason, message), _) => Verdict::yes(reason, message.clone()),
        (Rollout::Done, true) => Verdict::yes(
            "WaitingForLoadBalancer",
            format!(
                "Service {} waits for the cloud to assign a load balancer address",
                o.names.rtmp_service()
            ),
        ),
        (Rollout::Done, false) if endpoints_waiting => {
            Verdict::yes("WaitingForEndpoints", no_endpoints())
        }
        (Rollout::Done, false) => Verdict::no("Complete", "all objects are up to date"),
    };
    let ready = match (&problem, &rollout, lb_waiting) {
        (Some((reason, message)), _, _) => Verdict::no(reason, message.clone()),
        (None, Rollout::Pending(reason, message), _) => Verdict::no(reason, message.clone()),
        (None, Rollout::Done, true) => Verdict::no(
            "WaitingForLoadBalancer",
            format!(
                "no address assigned to Service {} yet",
                o.names.rtmp_service()
            ),
        ),
        (None, Rollout::Done, false) if endpoints_waiting => {
            Verdict::no("WaitingForEndpoints", no_endpoints())
        }
        (None, Rollout::Done, false) => match rtmp_url(o) {
            Some(url) => Verdict::yes("Ready", format!("publish to {url}/<stream-key>")),
            None => Verdict::yes("Ready", "all pods are available"),
        },
    };
    (ready, progressing, degraded)
}

enum Rollout {
    Done,
    Pending(&'static str, String),
}

/// Whether every Deployment runs its current template with all replicas
/// available, and every volume is there.
fn rollout_state(o: &Observed<'_>) -> Rollout {
    if o.expect_pvc {
        match o
            .pvc
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
        {
            Some("Bound") => {}
            _ => {
                return Rollout::Pending(
                    "VolumeNotBound",
                    format!("PersistentVolumeClaim {} is not bound yet", o.names.pvc()),
                )
            }
        }
    }
    let mut deployments = vec![(o.names.ingest_deployment(), o.ingest)];
    if o.expect_http_deployment {
        deployments.push((o.names.http_deployment(), o.http));
    }
    for (name, deployment) in deployments {
        let Some(deployment) = deployment else {
            return Rollout::Pending("Creating", format!("Deployment {name} does not exist yet"));
        };
        if let Some(message) = unfinished_rollout(deployment) {
            return Rollout::Pending("RollingOut", format!("Deployment {name}: {message}"));
        }
    }
    Rollout::Done
}

/// What a Deployment still has to do, in `kubectl rollout status` terms.
fn unfinished_rollout(d: &Deployment) -> Option<String> {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = d.status.as_ref() else {
        return Some("waiting for the Deployment controller".to_string());
    };
    if status.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
        return Some("waiting for the Deployment controller to see the new spec".to_string());
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        return Some(format!("{updated} of {want} pods updated"));
    }
    if total > updated {
        return Some(format!("{} old pods terminating", total - updated));
    }
    if available < want {
        return Some(format!("{available} of {want} pods available"));
    }
    None
}

/// The first problem that needs someone's attention, as (reason, message).
fn degradation(o: &Observed<'_>) -> Option<(&'static str, String)> {
    // First: it is why the HTTP pods hang in ContainerCreating (FailedMount),
    // which no pod state below reports.
    if let Some(secret) = o.missing_secret {
        return Some((
            KEY_SECRET_MISSING,
            missing_secret_message(secret, o.namespace),
        ));
    }
    if o.expect_pvc {
        if let Some(pvc) = o.pvc {
            match pvc.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Pending") | None => {
                    return Some((
                        "VolumeClaimPending",
                        format!(
                            "PersistentVolumeClaim {} is Pending: no volume matches it yet; check that its storage class exists and can provision {}",
                            o.names.pvc(),
                            access_modes(pvc)
                        ),
                    ))
                }
                Some("Lost") => {
                    return Some((
                        "VolumeClaimLost",
                        format!("PersistentVolumeClaim {} lost its volume", o.names.pvc()),
                    ))
                }
                _ => {}
            }
        }
    }
    for pod in &o.pods {
        if let Some(problem) = pod_problem(pod) {
            return Some(problem);
        }
    }
    for d in [o.ingest, o.http].into_iter().flatten() {
        let name = d.metadata.name.as_deref().unwrap_or_default();
        for c in d.status.iter().flat_map(|s| s.conditions.iter().flatten()) {
            if c.type_ == "ReplicaFailure" && c.status == "True" {
                return Some((
                    "ReplicaFailure",
                    format!(
                        "Deployment {name} cannot create pods: {}",
                        c.message.as_deref().unwrap_or("")
                    ),
                ));
            }
            if c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            {
                return Some((
                    "ProgressDeadlineExceeded",
                    format!(
                        "Deployment {name} made no progress: {}",
                        c.message.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
    }
    None
}

/// What to do about a missing key-token Secret, as a command to paste.
fn missing_secret_message(secret: &str, namespace: &str) -> String {
    format!(
        "Secret {secret:?} (hls.encryption.authorization.secretName) not found in namespace {namespace:?}; \
         the HTTP pods cannot start without it: create it with \
         kubectl create secret generic {secret} -n {namespace} --from-literal=secret=$(openssl rand -hex 32)"
    )
}

fn access_modes(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .map(|m| m.join(", "))
        .unwrap_or_default()
}

/// A pod that cannot run: stuck containers or no node to run on.
fn pod_problem(pod: &Pod) -> Option<(&'static str, String)> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten();
    for c in containers {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = waiting.reason.as_deref() else {
            continue;
        };
        if let Some(known) = STUCK_WAITING_REASONS.iter().find(|r| **r == reason) {
            let detail = waiting.message.as_deref().unwrap_or("");
            return Some((
                known,
                format!("pod {name}, container {}: {reason} {detail}", c.name)
                    .trim_end()
                    .to_string(),
            ));
        }
    }
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
        {
            return Some((
                "Unschedulable",
                format!(
                    "pod {name} cannot be scheduled: {}",
                    c.message.as_deref().unwrap_or("")
                ),
            ));
        }
    }
    None
}

fn ready_replicas(d: &Deployment) -> i32 {
    d.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// The first address a cloud load balancer reported for `svc`.
fn lb_address(svc: &Service) -> Option<String> {
    let ingress = svc
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?;
    ingress
        .iter()
        .find_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .filter(|a| !a.is_empty())
}

/// Host of a Service as clients reach it: the load balancer's address, or
/// (ClusterIP, NodePort) its cluster DNS name, usable from inside the cluster.
fn service_host(
    o: &Observed<'_>,
    svc: Option<&Service>,
    type_: ServiceType,
    name: &str,
) -> Option<String> {
    match type_ {
        ServiceType::LoadBalancer => svc.and_then(lb_address).map(|a| bracket_ipv6(&a)),
        ServiceType::ClusterIP | ServiceType::NodePort => {
            svc.map(|_| format!("{name}.{}.svc", o.namespace))
        }
    }
}

fn bracket_ipv6(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// `rtmp://<address>:<port>/<app>`.
pub fn rtmp_url(o: &Observed<'_>) -> Option<String> {
    let rtmp = &o.spec.rtmp;
    let host = service_host(
        o,
        o.rtmp_service,
        rtmp.service.type_,
        &o.names.rtmp_service(),
    )?;
    Some(format!("rtmp://{host}:{}/{}", rtmp.port, rtmp.settings.app))
}

/// `http://<address>[:<port>]<pathPrefix>/{stream}/index.m3u8` (nested) or
/// `.../{stream}.m3u8` (flat).
pub fn playback_url(o: &Observed<'_>) -> Option<String> {
    let http = &o.spec.http;
    let host = service_host(
        o,
        o.http_service,
        http.service.type_,
        &o.names.http_service(),
    )?;
    let port = match http.service.port {
        80 => String::new(),
        p => format!(":{p}"),
    };
    let prefix = http.settings.path_prefix.trim_end_matches('/');
    let file = if o.spec.hls.nested {
        "{stream}/index.m3u8"
    } else {
        "{stream}.m3u8"
    };
    Some(format!("http://{host}{port}{prefix}/{file}"))
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
