//! Condition and URL computation from observed children.

use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateWaiting, ContainerStatus, LoadBalancerIngress,
    LoadBalancerStatus, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PodStatus,
    ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use oxcast_crds::live_application::{HttpMode, PvcStorage, StorageSpec};

use super::*;

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("timestamp"))
}

fn deployment(generation: i64, observed: i64, replicas: i32, available: i32) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("live".into()),
            generation: Some(generation),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            ..DeploymentSpec::default()
        }),
        status: Some(DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(replicas),
            updated_replicas: Some(replicas),
            ready_replicas: Some(available),
            available_replicas: Some(available),
            ..DeploymentStatus::default()
        }),
    }
}

fn service(ingress: Option<LoadBalancerIngress>) -> Service {
    Service {
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: ingress.map(|i| vec![i]),
            }),
            ..ServiceStatus::default()
        }),
        ..Service::default()
    }
}

fn ip(addr: &str) -> Option<LoadBalancerIngress> {
    Some(LoadBalancerIngress {
        ip: Some(addr.into()),
        ..LoadBalancerIngress::default()
    })
}

fn waiting_pod(reason: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("live-abc".into()),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "ingest".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: Some("details".into()),
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

struct World {
    spec: LiveApplicationSpec,
    names: Names,
    ingest: Option<Deployment>,
    http: Option<Deployment>,
    rtmp: Option<Service>,
    http_svc: Option<Service>,
    pvc: Option<PersistentVolumeClaim>,
    pods: Vec<Pod>,
    invalid: Option<String>,
    missing_secret: Option<String>,
    rtmp_slices: Vec<EndpointSlice>,
}

/// An EndpointSlice of the RTMP Service with one endpoint per
/// (address, ready) pair.
fn slice(endpoints: &[(&str, Option<bool>)]) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: endpoints
            .iter()
            .map(|(address, ready)| Endpoint {
                addresses: vec![address.to_string()],
                conditions: Some(EndpointConditions {
                    ready: *ready,
                    serving: *ready,
                    terminating: Some(false),
                }),
                ..Endpoint::default()
            })
            .collect(),
        ..EndpointSlice::default()
    }
}

impl World {
    /// The minimal example, fully rolled out, load balancer assigned.
    fn ready() -> Self {
        Self {
            spec: LiveApplicationSpec::default(),
            names: Names::new("live"),
            ingest: Some(deployment(2, 2, 1, 1)),
            http: None,
            rtmp: Some(service(ip("203.0.113.7"))),
            http_svc: Some(service(None)),
            pvc: None,
            pods: Vec::new(),
            invalid: None,
            missing_secret: None,
            rtmp_slices: vec![slice(&[("198.18.1.10", Some(true))])],
        }
    }

    fn status(
        &self,
        previous: Option<&LiveApplicationStatus>,
        now: &Time,
    ) -> LiveApplicationStatus {
        let observed = Observed {
            generation: Some(2),
            namespace: "media",
            names: &self.names,
            spec: &self.spec,
            invalid: self.invalid.as_deref(),
            apply_error: None,
            missing_secret: self.missing_secret.as_deref(),
            ingest: self.ingest.as_ref(),
            http: self.http.as_ref(),
            expect_http_deployment: self.spec.http.mode == HttpMode::Deployment,
            rtmp_service: self.rtmp.as_ref(),
            http_service: self.http_svc.as_ref(),
            pvc: self.pvc.as_ref(),
            expect_pvc: self.spec.storage.persistent_volume_claim.is_some(),
            pods: self.pods.iter().collect(),
            rtmp_ready_endpoints: ready_endpoints(&self.rtmp_slices),
        };
        compute(previous, &observed, now)
    }
}

fn cond<'a>(s: &'a LiveApplicationStatus, type_: &str) -> (&'a str, &'a str) {
    let c = find(s, type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn rolled_out_with_an_address_is_ready_and_says_where_to_publish() {
    let s = World::ready().status(None, &t(100));
    assert_eq!(cond(&s, READY), ("True", "Ready"));
    assert_eq!(cond(&s, PROGRESSING), ("False", "Complete"));
    assert_eq!(cond(&s, DEGRADED), ("False", "AsExpected"));
    assert_eq!(s.rtmp_url.as_deref(), Some("rtmp://203.0.113.7:1935/app"));
    assert_eq!(
        s.playback_url.as_deref(),
        Some("http://live-http.media.svc/live/{stream}/index.m3u8")
    );
    assert_eq!(s.ready_replicas, Some(1));
    assert_eq!(s.observed_generation, Some(2));
    assert!(s
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(2)));
    assert!(find(&s, READY)
        .expect("ready")
        .message
        .contains("rtmp://203.0.113.7:1935/app"));
}

#[test]
fn ready_waits_for_a_ready_endpoint_of_the_rtmp_service() {
    // Rolled out, address assigned, but the EndpointSlice controller has not
    // added the pod yet (or only as not ready): a publish would be refused.
    for slices in [
        Vec::new(),
        vec![slice(&[])],
        vec![slice(&[("198.18.1.10", Some(false))])],
    ] {
        let mut w = World::ready();
        w.rtmp_slices = slices;
        let s = w.status(None, &t(100));
        assert_eq!(cond(&s, READY), ("False", "WaitingForEndpoints"));
        assert_eq!(cond(&s, PROGRESSING), ("True", "WaitingForEndpoints"));
        assert_eq!(cond(&s, DEGRADED), ("False", "AsExpected"));
        assert!(find(&s, READY)
            .expect("ready")
            .message
            .contains("Service live-rtmp has no ready endpoint"));
        // The address is known: the URL is reported already.
        assert_eq!(s.rtmp_url.as_deref(), Some("rtmp://203.0.113.7:1935/app"));
    }
    // One ready endpoint among terminating ones, in any slice, is enough;
    // `ready` unset means ready.
    for slices in [
        vec![slice(&[
            ("198.18.1.10", Some(false)),
            ("198.18.1.11", Some(true)),
        ])],
        vec![slice(&[]), slice(&[("198.18.1.12", None)])],
    ] {
        let mut w = World::ready();
        w.rtmp_slices = slices;
        let s = w.status(None, &t(100));
        assert_eq!(cond(&s, READY), ("True", "Ready"));
    }
    // Scaled to zero there is nothing to wait for.
    let mut w = World::ready();
    w.spec.replicas = 0;
    w.ingest = Some(deployment(2, 2, 0, 0));
    w.rtmp_slices = Vec::new();
    assert_eq!(cond(&w.status(None, &t(100)), READY), ("True", "Ready"));
}

#[test]
fn ready_endpoints_counts_unique_ready_addresses() {
    let slices = [
        slice(&[("a", Some(true)), ("b", Some(false)), ("c", None)]),
        slice(&[("a", Some(true))]),
    ];
    assert_eq!(ready_endpoints(&slices), 2);
    assert_eq!(ready_endpoints(&[]), 0);
}

#[test]
fn without_a_load_balancer_address_it_waits() {
    let mut w = World::ready();
    w.rtmp = Some(service(None));
    let s = w.status(None, &t(100));
    assert_eq!(cond(&s, READY), ("False", "WaitingForLoadBalancer"));
    assert_eq!(cond(&s, PROGRESSING), ("True", "WaitingForLoadBalancer"));
    assert_eq!(cond(&s, DEGRADED), ("False", "AsExpected"));
    assert_eq!(s.rtmp_url, None);
}

#[test]
fn cluster_ip_services_use_cluster_dns_and_need_no_address() {
    let mut w = World::ready();
    w.spec.rtmp.service.type_ = ServiceType::ClusterIP;
    w.rtmp = Some(service(None));
    w.spec.http.service.port = 8080;
    w.spec.hls.nested = false;
    let s = w.status(None, &t(100));
    assert_eq!(cond(&s, READY), ("True", "Ready"));
    assert_eq!(
        s.rtmp_url.as_deref(),
        Some("rtmp://live-rtmp.media.svc:1935/app")
    );
    assert_eq!(
        s.playback_url.as_deref(),
        Some("http://live-http.media.svc:8080/live/{stream}.m3u8")
    );
}

#[test]
fn hostnames_and_ipv6_addresses() {
    let mut w = World::ready();
    w.rtmp = Some(service(Some(LoadBalancerIngress {
        hostname: Some("lb.example.net".into()),
        ..LoadBalancerIngress::default()
    })));
    assert_eq!(
        w.status(None, &t(1)).rtmp_url.as_deref(),
        Some("rtmp://lb.example.net:1935/app")
    );
    w.rtmp = Some(service(ip("2001:db8::7")));
    w.spec.rtmp.port = 443;
    w.spec.rtmp.settings.app = "live".into();
    assert_eq!(
        w.status(None, &t(1)).rtmp_url.as_deref(),
        Some("rtmp://[2001:db8::7]:443/live")
    );
}

#[test]
fn nothing_created_yet_is_progressing() {
    let mut w = World::ready();
    w.ingest = None;
    let s = w.status(None, &t(1));
    assert_eq!(cond(&s, READY), ("False", "Creating"));
    assert_eq!(cond(&s, PROGRESSING), ("True", "Creating"));
    assert_eq!(s.ready_replicas, None);
}

#[test]
fn a_rollout_in_progress_is_not_ready() {
    let mut w = World::ready();
    // The Deployment controller has not seen generation 3 yet.
    w.ingest = Some(deployment(3, 2, 1, 1));
    let s = w.status(None, &t(1));
    assert_eq!(cond(&s, READY), ("False", "RollingOut"));
    assert_eq!(cond(&s, PROGRESSING), ("True", "RollingOut"));
    // Seen, but the new pod is not available yet.
    w.ingest = Some(deployment(3, 3, 1, 0));
    let s = w.status(None, &t(1));
    assert_eq!(cond(&s, READY), ("False", "RollingOut"));
    assert!(find(&s, READY)
        .expect("ready")
        .message
        .contains("0 of 1 pods available"));
}

#[test]
fn stuck_pods_degrade_with_their_reason() {
    for reason in [
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
    ] {
        let mut w = World::ready();
        w.ingest = Some(deployment(2, 2, 1, 0));
        w.pods = vec![waiting_pod(reason)];
        let s = w.status(None, &t(1));
        assert_eq!(cond(&s, DEGRADED), ("True", reason));
        assert_eq!(cond(&s, READY), ("False", reason));
        let message = &find(&s, DEGRADED).expect("degraded").message;
        assert!(
            message.contains("live-abc")
                && message.contains("ingest")
                && message.contains("details"),
            "{message}"
        );
    }
    // Waiting for an image that is being pulled is normal.
    let mut w = World::ready();
    w.pods = vec![waiting_pod("ContainerCreating")];
    assert_eq!(
        cond(&w.status(None, &t(1)), DEGRADED),
        ("False", "AsExpected")
    );
}

#[test]
fn a_failing_deployment_degrades() {
    let mut w = World::ready();
    let mut d = deployment(2, 2, 1, 0);
    if let Some(status) = d.status.as_mut() {
        status.conditions = Some(vec![DeploymentCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            message: Some("pods \"live-x\" is forbidden: violates PodSecurity".into()),
            ..DeploymentCondition::default()
        }]);
    }
    w.ingest = Some(d);
    let s = w.status(None, &t(1));
    assert_eq!(cond(&s, DEGRADED), ("True", "ReplicaFailure"));
    assert!(find(&s, DEGRADED)
        .expect("degraded")
        .message
        .contains("PodSecurity"));
}

#[test]
fn a_pending_claim_degrades_until_bound() {
    let mut w = World::ready();
    w.spec.storage = StorageSpec {
        empty_dir: None,
        persistent_volume_claim: Some(PvcStorage::default()),
        existing_claim: None,
    };
    w.spec.http.mode = HttpMode::Deployment;
    w.http = Some(deployment(1, 1, 1, 1));
    let claim = |phase: &str| PersistentVolumeClaim {
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some(phase.into()),
            ..PersistentVolumeClaimStatus::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    w.pvc = Some(claim("Pending"));
    let s = w.status(None, &t(1));
    assert_eq!(cond(&s, DEGRADED), ("True", "VolumeClaimPending"));
    assert_eq!(cond(&s, READY), ("False", "VolumeClaimPending"));
    assert_eq!(cond(&s, PROGRESSING), ("True", "VolumeNotBound"));
    assert!(find(&s, DEGRADED)
        .expect("degraded")
        .message
        .contains("ReadWriteMany"));

    w.pvc = Some(claim("Bound"));
    let s = w.status(None, &t(1));
    assert_eq!(cond(&s, READY), ("True", "Ready"));
    assert_eq!(s.http_ready_replicas, Some(1));
}

#[test]
fn separate_http_pods_must_be_available_too() {
    let mut w = World::ready();
    w.spec.http.mode = HttpMode::Deployment;
    w.http = None;
    assert_eq!(cond(&w.status(None, &t(1)), READY), ("False", "Creating"));
    w.http = Some(deployment(1, 1, 2, 1));
    assert_eq!(cond(&w.status(None, &t(1)), READY), ("False", "RollingOut"));
}

#[test]
fn a_missing_key_token_secret_degrades_and_says_how_to_create_it() {
    let mut w = World::ready();
    // The HTTP sidecar cannot mount the Secret: the pod stays in
    // ContainerCreating, which on its own is no problem.
    w.ingest = Some(deployment(2, 2, 1, 0));
    w.pods = vec![waiting_pod("ContainerCreating")];
    w.missing_secret = Some("key-token".into());
    let s = w.status(None, &t(1));
    assert_eq!(cond(&s, DEGRADED), ("True", KEY_SECRET_MISSING));
    assert_eq!(cond(&s, READY), ("False", KEY_SECRET_MISSING));
    assert_eq!(cond(&s, PROGRESSING), ("True", "RollingOut"));
    let message = &find(&s, DEGRADED).expect("degraded").message;
    assert_eq!(
        message,
        "Secret \"key-token\" (hls.encryption.authorization.secretName) not found in \
         namespace \"media\"; the HTTP pods cannot start without it: create it with \
         kubectl create secret generic key-token -n media \
         --from-literal=secret=$(openssl rand -hex 32)"
    );
    assert_eq!(&find(&s, READY).expect("ready").message, message);

    // It is the first thing to fix, before any pod state.
    w.pods = vec![waiting_pod("CrashLoopBackOff")];
    assert_eq!(
        cond(&w.status(None, &t(1)), DEGRADED),
        ("True", KEY_SECRET_MISSING)
    );

    // Once it exists the condition moves on to what the pods say.
    w.missing_secret = None;
    let later = w.status(Some(&s), &t(2));
    assert_eq!(cond(&later, DEGRADED), ("True", "CrashLoopBackOff"));
    w.pods.clear();
    w.ingest = Some(deployment(2, 2, 1, 1));
    let fixed = w.status(Some(&later), &t(3));
    assert_eq!(cond(&fixed, DEGRADED), ("False", "AsExpected"));
    assert_eq!(cond(&fixed, READY), ("True", "Ready"));
}

#[test]
fn events_follow_conditions_that_become_true_or_change_reason() {
    let ready = World::ready().status(None, &t(1));
    let mut w = World::ready();
    w.ingest = Some(deployment(2, 2, 1, 0));
    w.pods = vec![waiting_pod("CrashLoopBackOff")];
    let crashing = w.status(Some(&ready), &t(2));
    w.missing_secret = Some("key-token".into());
    let missing = w.status(Some(&crashing), &t(3));
    let reason = |c: Option<&Condition>| c.map(|c| c.reason.clone());

    assert_eq!(
        reason(newly_true(None, &ready, READY)),
        Some("Ready".into())
    );
    assert_eq!(reason(newly_true(Some(&ready), &ready, READY)), None);
    assert_eq!(reason(newly_true(Some(&ready), &crashing, READY)), None);
    assert_eq!(
        reason(newly_true(Some(&ready), &crashing, DEGRADED)),
        Some("CrashLoopBackOff".into())
    );
    assert_eq!(
        reason(newly_true(Some(&crashing), &crashing, DEGRADED)),
        None
    );
    assert_eq!(
        reason(newly_true(Some(&crashing), &missing, DEGRADED)),
        Some(KEY_SECRET_MISSING.into())
    );
}

#[test]
fn an_invalid_spec_wins_over_a_missing_secret() {
    let mut w = World::ready();
    w.missing_secret = Some("key-token".into());
    w.invalid = Some("hls.encryption: bad".into());
    assert_eq!(
        cond(&w.status(None, &t(1)), DEGRADED),
        ("True", "InvalidSpec")
    );
}

#[test]
fn an_invalid_spec_says_why() {
    let mut w = World::ready();
    w.invalid = Some("http.pathPrefix: must be absolute".into());
    let s = w.status(None, &t(1));
    assert_eq!(cond(&s, DEGRADED), ("True", "InvalidSpec"));
    assert_eq!(
        find(&s, DEGRADED).expect("degraded").message,
        "http.pathPrefix: must be absolute"
    );
    assert_eq!(cond(&s, READY), ("False", "InvalidSpec"));
}

#[test]
fn transition_times_move_only_on_transitions() {
    let w = World::ready();
    let first = w.status(None, &t(100));
    assert!(first
        .conditions
        .iter()
        .all(|c| c.last_transition_time == t(100)));
    // Same world later: equal status, so nothing to write.
    let again = w.status(Some(&first), &t(200));
    assert_eq!(again, first);

    let mut w2 = World::ready();
    w2.rtmp = Some(service(None));
    let later = w2.status(Some(&first), &t(300));
    let time = |s: &LiveApplicationStatus, ty: &str| {
        find(s, ty).expect("condition").last_transition_time.clone()
    };
    assert_eq!(time(&later, READY), t(300), "Ready flipped");
    assert_eq!(time(&later, PROGRESSING), t(300), "Progressing flipped");
    assert_eq!(time(&later, DEGRADED), t(100), "Degraded stayed False");
}
