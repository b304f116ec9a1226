//! Smoke tests of the test control plane (tests/src/cluster): the
//! LiveApplication CRD against a real API server, workloads on kwok's fake
//! node, garbage collection and RBAC. They prove the harness gives later
//! operator tests what they rely on; each checks something a mock would not.
//!
//! Run: `cargo test -p oxcast-tests --test cluster_smoke`
//! (the first run builds the control plane, see tests/cluster/README.md).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::conditions;
use kube::{Client, Resource, ResourceExt};
use oxcast_crds::live_application::{LiveApplication, LiveApplicationSpec};
use oxcast_crds::{HlsSettings, HumanDuration};
use oxcast_tests::cluster::{self, TestContext};

/// Upper bound for anything the controllers do; typically done in seconds.
const TIMEOUT: Duration = Duration::from_secs(120);
const FIELD_MANAGER: &str = "oxcast-tests";
/// A real image, so the same test also passes on a cluster with real nodes.
const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

async fn context(prefix: &str) -> TestContext {
    cluster::expect_test_context(prefix).await
}

/// Installs the checked-in CRD manifest (the artifact users apply, not just
/// the Rust types) and waits until it is Established. Idempotent, so every
/// test can call it whatever the test order.
async fn install_crd(client: &Client) -> CustomResourceDefinition {
    oxcast_tests::operator::install_crd(client)
        .await
        .expect("apply the LiveApplication CRD and see it Established")
}

fn live_app(name: &str, spec: LiveApplicationSpec) -> LiveApplication {
    LiveApplication::new(name, spec)
}

fn api_error(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error status, got {other}"),
    }
}

#[tokio::test]
async fn crd_installs_becomes_established_and_validates() {
    let ctx = context("crd").await;
    let crd = install_crd(&ctx.client).await;

    assert_eq!(crd.spec.group, "live.oxcast.dev");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "the server's copy of the CRD lost the status subresource"
    );
    let accepted = crd
        .status
        .as_ref()
        .and_then(|s| s.accepted_names.as_ref())
        .and_then(|n| n.short_names.clone())
        .unwrap_or_default();
    assert_eq!(accepted, vec!["liveapp".to_string()]);

    // The served OpenAPI schema is enforced by the API server itself.
    let apps: Api<LiveApplication> = ctx.api();
    let negative = live_app(
        "negative-replicas",
        LiveApplicationSpec {
            replicas: -1,
            ..Default::default()
        },
    );
    let status = api_error(
        apps.create(&PostParams::default(), &negative)
            .await
            .expect_err("replicas -1 must be rejected by the schema minimum"),
    );
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("spec.replicas"),
        "{}",
        status.message
    );

    let bad_duration = serde_json::json!({
        "apiVersion": "live.oxcast.dev/v1alpha1",
        "kind": "LiveApplication",
        "metadata": {"name": "bad-duration"},
        "spec": {"hls": {"fragment": "five seconds"}},
    });
    let status = api_error(
        apps.patch(
            "bad-duration",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&bad_duration),
        )
        .await
        .expect_err("a malformed duration must be rejected by the schema pattern"),
    );
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("spec.hls.fragment"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn live_application_round_trips_with_defaults_and_status_subresource() {
    let ctx = context("liveapp").await;
    install_crd(&ctx.client).await;
    let apps: Api<LiveApplication> = ctx.api();

    let spec = LiveApplicationSpec {
        image: Some("ghcr.io/example/oxcast-ingest:test".into()),
        replicas: 0,
        hls: HlsSettings {
            fragment: HumanDuration::from_secs(2),
            ..HlsSettings::default()
        },
        ..LiveApplicationSpec::default()
    };
    apps.create(&PostParams::default(), &live_app("explicit", spec.clone()))
        .await
        .expect("create a LiveApplication");
    let read = apps
        .get("explicit")
        .await
        .expect("read the LiveApplication back");
    assert_eq!(read.spec, spec);
    assert_eq!(read.metadata.generation, Some(1));

    // An empty `hls` object is filled in by the server from the schema
    // defaults, which must equal the Rust defaults.
    let sparse = serde_json::json!({
        "apiVersion": "live.oxcast.dev/v1alpha1",
        "kind": "LiveApplication",
        "metadata": {"name": "sparse"},
        "spec": {"hls": {}},
    });
    let applied = apps
        .patch(
            "sparse",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&sparse),
        )
        .await
        .expect("server-side apply a sparse LiveApplication");
    assert_eq!(applied.spec, LiveApplicationSpec::default());

    // Status goes through its subresource only, and does not bump generation.
    let status_patch = serde_json::json!({"status": {"readyReplicas": 1, "observedGeneration": 1}});
    let after_status = apps
        .patch_status(
            "explicit",
            &PatchParams::default(),
            &Patch::Merge(&status_patch),
        )
        .await
        .expect("patch the status subresource");
    let status = after_status.status.as_ref().expect("status is set");
    assert_eq!(status.ready_replicas, Some(1));
    assert_eq!(after_status.metadata.generation, Some(1));
    assert_eq!(after_status.spec, spec);

    let sneaky = serde_json::json!({"spec": {"replicas": 1}, "status": {"readyReplicas": 99}});
    let after_main = apps
        .patch("explicit", &PatchParams::default(), &Patch::Merge(&sneaky))
        .await
        .expect("patch the main resource");
    assert_eq!(after_main.spec.replicas, 1);
    assert_eq!(after_main.metadata.generation, Some(2));
    assert_eq!(
        after_main.status.as_ref().and_then(|s| s.ready_replicas),
        Some(1),
        "a write to the main resource must not change status"
    );

    if ctx.cluster.is_local() {
        // kubectl resolves the short name through discovery.
        let out = ctx
            .cluster
            .kubectl()
            .args(["get", "liveapp", "-n", ctx.ns(), "-o", "name"])
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let names = String::from_utf8_lossy(&out.stdout);
        assert!(
            names.contains("liveapplication.live.oxcast.dev/explicit"),
            "{names}"
        );
        assert!(
            names.contains("liveapplication.live.oxcast.dev/sparse"),
            "{names}"
        );
    }
}

fn pause_deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "pause", "image": PAUSE_IMAGE}]},
            },
        },
    }))
    .expect("the Deployment literal matches the schema")
}

fn deployment_available(replicas: i32) -> impl Fn(Option<&Deployment>) -> bool {
    move |d: Option<&Deployment>| {
        let Some(status) = d.and_then(|d| d.status.as_ref()) else {
            return false;
        };
        let available = status.conditions.as_ref().is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
        });
        available && status.available_replicas == Some(replicas)
    }
}

#[tokio::test]
async fn deployment_becomes_available_on_fake_nodes() {
    let ctx = context("deploy").await;
    let deployments: Api<Deployment> = ctx.api();
    deployments
        .create(&PostParams::default(), &pause_deployment("smoke", 2))
        .await
        .expect("create a Deployment");
    let ready = cluster::wait_for_condition(deployments, "smoke", TIMEOUT, deployment_available(2))
        .await
        .expect("the Deployment becomes Available")
        .expect("the Deployment exists");
    assert_eq!(
        ready.status.as_ref().and_then(|s| s.ready_replicas),
        Some(2)
    );

    let pods: Api<Pod> = ctx.api();
    let pods = pods
        .list(&ListParams::default().labels("app=smoke"))
        .await
        .expect("list the Deployment's pods");
    assert_eq!(pods.items.len(), 2, "exactly the desired pods exist");
    for pod in &pods.items {
        let status = pod.status.as_ref().expect("pod status");
        assert_eq!(
            status.phase.as_deref(),
            Some("Running"),
            "{}",
            pod.name_any()
        );
        assert!(status.pod_ip.is_some(), "{} has no IP", pod.name_any());
        if let Some(node) = ctx.cluster.fake_node() {
            assert_eq!(
                pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
                Some(node)
            );
        }
        // The pod went through the ReplicaSet controller, not around it.
        let owner = pod.owner_references().first().expect("pod has an owner");
        assert_eq!(owner.kind, "ReplicaSet");
    }
}

fn owned_by(owner: &LiveApplication) -> OwnerReference {
    owner
        .controller_owner_ref(&())
        .expect("a created LiveApplication has a name and uid")
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependents() {
    let ctx = context("gc").await;
    install_crd(&ctx.client).await;
    let apps: Api<LiveApplication> = ctx.api();
    let owner = apps
        .create(
            &PostParams::default(),
            &live_app("owner", LiveApplicationSpec::default()),
        )
        .await
        .expect("create the owner");

    let config_maps: Api<ConfigMap> = ctx.api();
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("owned-config".into());
    cm.metadata.owner_references = Some(vec![owned_by(&owner)]);
    cm.data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    let cm = config_maps
        .create(&PostParams::default(), &cm)
        .await
        .expect("create the dependent ConfigMap");

    // A second level: the Deployment is owned by the LiveApplication and
    // owns a ReplicaSet, so deletion must cascade through both.
    let deployments: Api<Deployment> = ctx.api();
    let mut deploy = pause_deployment("owned-deploy", 1);
    deploy.metadata.owner_references = Some(vec![owned_by(&owner)]);
    let deploy = deployments
        .create(&PostParams::default(), &deploy)
        .await
        .expect("create the dependent Deployment");
    let replica_sets: Api<ReplicaSet> = ctx.api();
    let rs = cluster::eventually("the Deployment's ReplicaSet", TIMEOUT, || {
        let replica_sets = replica_sets.clone();
        async move {
            let list = replica_sets
                .list(&ListParams::default().labels("app=owned-deploy"))
                .await?;
            Ok::<_, kube::Error>(list.items.into_iter().next())
        }
    })
    .await
    .expect("the ReplicaSet controller creates a ReplicaSet");

    // A bystander without owner references must survive.
    let mut bystander = ConfigMap::default();
    bystander.metadata.name = Some("bystander".into());
    config_maps
        .create(&PostParams::default(), &bystander)
        .await
        .expect("create an unowned ConfigMap");

    apps.delete("owner", &DeleteParams::background())
        .await
        .expect("delete the owner");

    let cm_uid = cm.uid().expect("uid");
    let deploy_uid = deploy.uid().expect("uid");
    let rs_name = rs.name_any();
    let rs_uid = rs.uid().expect("uid");
    cluster::wait_for_condition(
        config_maps.clone(),
        "owned-config",
        TIMEOUT,
        conditions::is_deleted(&cm_uid),
    )
    .await
    .expect("the owned ConfigMap is garbage-collected");
    cluster::wait_for_condition(
        deployments,
        "owned-deploy",
        TIMEOUT,
        conditions::is_deleted(&deploy_uid),
    )
    .await
    .expect("the owned Deployment is garbage-collected");
    cluster::wait_for_condition(
        replica_sets,
        &rs_name,
        TIMEOUT,
        conditions::is_deleted(&rs_uid),
    )
    .await
    .expect("the Deployment's ReplicaSet is garbage-collected in turn");
    assert!(
        config_maps
            .get_opt("bystander")
            .await
            .expect("read the bystander")
            .is_some(),
        "garbage collection removed an object nobody owned"
    );
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test]
async fn rbac_applies_to_service_account_tokens_and_impersonation() {
    let ctx = context("rbac").await;
    let ns = ctx.ns().to_string();
    let sa_client = ctx
        .cluster
        .service_account_client(&ns, "reader")
        .await
        .expect("a client with a real ServiceAccount token");
    let user = format!("system:serviceaccount:{ns}:reader");
    let impersonated = ctx
        .cluster
        .client_as(&user, &["system:serviceaccounts", "system:authenticated"])
        .expect("an impersonating client");

    let lp = ListParams::default();
    let sa_config_maps: Api<ConfigMap> = Api::namespaced(sa_client.clone(), &ns);
    let as_config_maps: Api<ConfigMap> = Api::namespaced(impersonated.clone(), &ns);
    assert!(
        forbidden(sa_config_maps.list(&lp).await),
        "a fresh ServiceAccount may not list ConfigMaps"
    );
    assert!(
        forbidden(as_config_maps.list(&lp).await),
        "impersonation must be subject to RBAC too"
    );

    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    }))
    .expect("Role literal");
    let roles: Api<Role> = ctx.api();
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("create the Role");
    let binding = RoleBinding {
        metadata: kube::core::ObjectMeta {
            name: Some("reader".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "configmap-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    let bindings: Api<RoleBinding> = ctx.api();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("create the RoleBinding");

    // The authorizer's cache picks the binding up within moments.
    cluster::eventually("the RoleBinding to apply to the token", TIMEOUT, || {
        let api = sa_config_maps.clone();
        async move { api.list(&ListParams::default()).await.map(Some) }
    })
    .await
    .expect("the ServiceAccount can list ConfigMaps once bound");
    as_config_maps
        .list(&lp)
        .await
        .expect("the impersonated ServiceAccount can list ConfigMaps too");

    // The grant is exactly what the Role says: nothing else, nowhere else.
    let sa_secrets: Api<Secret> = Api::namespaced(sa_client.clone(), &ns);
    assert!(
        forbidden(sa_secrets.list(&lp).await),
        "Secrets were never granted"
    );
    let other_ns: Api<ConfigMap> = Api::namespaced(sa_client, "default");
    assert!(
        forbidden(other_ns.list(&lp).await),
        "the Role binds only in its namespace"
    );
}

/// The harness must hand each test a namespace of its own, labelled so
/// leftovers in a shared cluster can be found.
#[tokio::test]
async fn each_test_gets_a_fresh_labelled_namespace() {
    let a = context("fresh").await;
    let b = context("fresh").await;
    assert_ne!(a.ns(), b.ns());
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    let got = ns.get(a.ns()).await.expect("the namespace exists");
    assert_eq!(
        got.labels()
            .get(cluster::TEST_NAMESPACE_LABEL)
            .map(String::as_str),
        Some("true")
    );
    let name = a.ns().to_string();
    let uid = got.uid().expect("uid");
    drop(a);
    // Deletion is asynchronous on the server (finalizers run first); it must
    // at least have started.
    let after = ns.get_opt(&name).await.expect("read the namespace");
    let deleting = after
        .is_none_or(|n| n.metadata.deletion_timestamp.is_some() || n.uid() != Some(uid.clone()));
    assert!(
        deleting,
        "dropping the guard did not delete namespace {name}"
    );
}
