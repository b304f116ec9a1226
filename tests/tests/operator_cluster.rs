//! The operator against a real control plane (tests/src/cluster): admission
//! (CEL rules), server-side apply, owner references and garbage
//! collection, status from real Deployment/Service/PVC controllers, events,
//! leader election over a real Lease.
//!
//! Each test runs its own operator in-process, watching only the test's
//! namespace, so the tests run in parallel on one shared control plane.
//!
//! Run: `cargo test -p oxcast-tests --test operator_cluster`

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, ResourceQuota, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::conditions;
use kube::{Resource, ResourceExt};
use oxcast_crds::live_application::testdata::invalid_cases;
use oxcast_crds::live_application::LiveApplication;
use oxcast_crds::{HumanDuration, IngestConfig};
use oxcast_tests::cluster::{self, TestContext};
use oxcast_tests::operator::{
    assign_load_balancer, condition_message, condition_reason, example_path, fast_lease,
    has_condition, install_crd, settings, wait_for_app, RunningOperator, TEST_MANAGER,
};

/// Upper bound for anything the control plane and the operator do; usually
/// seconds. Garbage collection of a new kind can take ~30 s to start.
const TIMEOUT: Duration = Duration::from_secs(120);

async fn context(prefix: &str) -> TestContext {
    let ctx = cluster::expect_test_context(prefix).await;
    install_crd(&ctx.client).await.expect("install the CRD");
    ctx
}

/// A test namespace with an operator watching it (no leader election).
async fn with_operator(prefix: &str) -> (TestContext, RunningOperator) {
    let ctx = context(prefix).await;
    let op = RunningOperator::start(ctx.cluster, settings(&format!("op-{prefix}"), &[ctx.ns()]));
    (ctx, op)
}

/// Server-side applies a LiveApplication as a user would.
async fn apply_app(ctx: &TestContext, name: &str, spec: serde_json::Value) -> LiveApplication {
    let manifest = serde_json::json!({
        "apiVersion": "live.oxcast.dev/v1alpha1",
        "kind": "LiveApplication",
        "metadata": {"name": name},
        "spec": spec,
    });
    ctx.api::<LiveApplication>()
        .patch(
            name,
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&manifest),
        )
        .await
        .unwrap_or_else(|e| panic!("apply LiveApplication {name}: {e}"))
}

/// `kubectl apply --server-side -f examples/<file>`: what the README tells users.
fn kubectl_apply_example(ctx: &TestContext, file: &str) {
    let out = ctx
        .cluster
        .kubectl()
        .args(["apply", "--server-side", "-n", ctx.ns(), "-f"])
        .arg(example_path(file))
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl apply {file} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for object `name` to exist and returns it.
async fn wait_exists<K>(api: &Api<K>, name: &str) -> K
where
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned + Resource + Send + 'static,
    <K as Resource>::DynamicType: Default,
{
    cluster::wait_for_condition(api.clone(), name, TIMEOUT, |o: Option<&K>| o.is_some())
        .await
        .unwrap_or_else(|e| panic!("{name} never appeared: {e}"))
        .unwrap_or_else(|| panic!("{name} vanished"))
}

/// Waits until `check` holds for object `name`.
async fn wait_until<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    check: impl Fn(&K) -> bool + Send + 'static,
) -> K
where
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned + Resource + Send + 'static,
    <K as Resource>::DynamicType: Default,
{
    cluster::wait_for_condition(api.clone(), name, TIMEOUT, move |o: Option<&K>| {
        o.is_some_and(&check)
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: {what}: {e}"))
    .unwrap_or_else(|| panic!("{name} vanished"))
}

async fn wait_app(
    ctx: &TestContext,
    name: &str,
    what: &str,
    check: impl Fn(&LiveApplication) -> bool,
) -> LiveApplication {
    wait_for_app(&ctx.api(), name, TIMEOUT, check)
        .await
        .unwrap_or_else(|e| panic!("LiveApplication {name}: {what}: {e}"))
}

fn assert_controlled_by(obj: &impl Resource, owner: &LiveApplication) {
    let refs = obj.meta().owner_references.clone().unwrap_or_default();
    assert_eq!(refs.len(), 1, "{:?}", obj.meta().name);
    let r = &refs[0];
    assert_eq!(r.kind, "LiveApplication");
    assert_eq!(r.name, owner.name_any());
    assert_eq!(Some(&r.uid), owner.metadata.uid.as_ref());
    assert_eq!(r.controller, Some(true));
    assert_eq!(r.block_owner_deletion, Some(true));
}

fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(key).cloned())
}

/// `kubectl rollout status`: the current template runs on every replica.
fn rolled_out(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    d.status.as_ref().is_some_and(|s| {
        s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.replicas == Some(want)
            && s.available_replicas == Some(want)
    })
}

async fn events_for(ctx: &TestContext, name: &str) -> Vec<Event> {
    let events: Api<Event> = ctx.api();
    events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// Waits for `n` more reconciles by `op`, by polling its counters.
async fn wait_for_reconciles(op: &RunningOperator, n: u64) {
    let start = op.metrics.reconcile_count();
    cluster::eventually("more reconciles", TIMEOUT, || async {
        Ok::<_, std::convert::Infallible>((op.metrics.reconcile_count() >= start + n).then_some(()))
    })
    .await
    .expect("the operator keeps resyncing");
}

/// Waits until `op` stops reconciling: its count holds between two polls
/// (the reconcile that follows its own status write included).
async fn wait_for_idle(op: &RunningOperator) {
    let mut last = None;
    cluster::eventually("the operator to go idle", TIMEOUT, || {
        let count = op.metrics.reconcile_count();
        let idle = last == Some(count);
        last = Some(count);
        async move { Ok::<_, std::convert::Infallible>(idle.then_some(())) }
    })
    .await
    .expect("the operator goes idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_example_comes_up_restricted_ready_and_then_writes_nothing() {
    let (ctx, op) = with_operator("create").await;
    // Pods must pass the "restricted" Pod Security Standard, enforced by the
    // API server's admission for every pod the ReplicaSets create.
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let label = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    namespaces
        .patch(ctx.ns(), &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("label the namespace restricted");

    kubectl_apply_example(&ctx, "minimal.yaml");
    let apps: Api<LiveApplication> = ctx.api();
    let app = apps
        .get("live")
        .await
        .expect("the example's LiveApplication");

    let deployments: Api<Deployment> = ctx.api();
    let services: Api<Service> = ctx.api();
    let config_maps: Api<ConfigMap> = ctx.api();
    let deployment = wait_exists(&deployments, "live").await;
    assert_controlled_by(&deployment, &app);
    let containers: Vec<_> = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    assert_eq!(containers, ["ingest", "http"]);
    let config_map = wait_exists(&config_maps, "live-config").await;
    assert_controlled_by(&config_map, &app);
    let text = &config_map.data.as_ref().expect("data")["config.yaml"];
    let config: IngestConfig = serde_yaml::from_str(text).expect("the config the server reads");
    assert_eq!(config, IngestConfig::default(), "the reference setup");
    for name in ["live-rtmp", "live-http"] {
        assert_controlled_by(&wait_exists(&services, name).await, &app);
    }
    // The ingest pods' identity and its Lease permissions.
    let sa = wait_exists(&ctx.api::<ServiceAccount>(), "live-ingest").await;
    assert_controlled_by(&sa, &app);
    assert_eq!(sa.automount_service_account_token, Some(false));
    let role = wait_exists(&ctx.api::<Role>(), "live-ingest").await;
    assert_controlled_by(&role, &app);
    let rules = role.rules.clone().unwrap_or_default();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].resources, Some(vec!["leases".to_string()]));
    assert_eq!(
        rules[0].verbs,
        ["get", "list", "create", "update", "delete"]
    );
    let binding = wait_exists(&ctx.api::<RoleBinding>(), "live-ingest").await;
    assert_controlled_by(&binding, &app);
    assert_eq!(binding.role_ref.name, "live-ingest");
    assert_eq!(
        deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.service_account_name.as_deref()),
        Some("live-ingest")
    );
    let rtmp = services.get("live-rtmp").await.expect("rtmp service");
    assert_eq!(
        rtmp.spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("LoadBalancer")
    );

    // kwok runs the (restricted) pods; only the load balancer is missing.
    let waiting = wait_app(&ctx, "live", "waits for its load balancer", |a| {
        condition_reason(a, "Ready").as_deref() == Some("WaitingForLoadBalancer")
    })
    .await;
    assert!(has_condition(&waiting, "Progressing", "True"));
    assert!(has_condition(&waiting, "Degraded", "False"));
    assert_eq!(
        waiting.status.as_ref().and_then(|s| s.rtmp_url.clone()),
        None
    );

    // Play the cloud's load balancer controller.
    assign_load_balancer(&services, "live-rtmp", "203.0.113.10")
        .await
        .expect("assign an address");
    let ready = wait_app(&ctx, "live", "becomes Ready", |a| {
        has_condition(a, "Ready", "True")
    })
    .await;
    let status = ready.status.expect("status");
    assert_eq!(
        status.rtmp_url.as_deref(),
        Some("rtmp://203.0.113.10:1935/app")
    );
    assert_eq!(
        status.playback_url,
        Some(format!(
            "http://live-http.{}.svc/live/{{stream}}/index.m3u8",
            ctx.ns()
        ))
    );
    assert_eq!(status.ready_replicas, Some(1));
    assert_eq!(status.observed_generation, ready.metadata.generation);
    let live = deployments.get("live").await.expect("deployment");
    assert!(rolled_out(&live), "{:?}", live.status);

    let reasons: Vec<String> = events_for(&ctx, "live")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "Created"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Ready"), "{reasons:?}");

    // Steady state: resyncs (every 2 s here) find nothing to change and
    // write nothing — no apply, no status patch.
    wait_for_reconciles(&op, 1).await;
    let writes = op.metrics.write_count();
    let version = apps.get("live").await.expect("read").resource_version();
    wait_for_reconciles(&op, 3).await;
    assert_eq!(
        op.metrics.write_count(),
        writes,
        "a resync with nothing to change wrote"
    );
    assert_eq!(
        apps.get("live").await.expect("read").resource_version(),
        version
    );
    op.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_changes_roll_the_pods_and_dropped_options_disappear() {
    let (ctx, op) = with_operator("update").await;
    let app = apply_app(
        &ctx,
        "roll",
        serde_json::json!({
            "rtmp": {"service": {
                "type": "LoadBalancer",
                "loadBalancerSourceRanges": ["198.51.100.0/24"],
                "annotations": {"lb.example.com/internal": "true"},
            }},
            "podAnnotations": {"example.com/team": "video"},
        }),
    )
    .await;
    let deployments: Api<Deployment> = ctx.api();
    let services: Api<Service> = ctx.api();
    let config_maps: Api<ConfigMap> = ctx.api();
    let before = wait_until(&deployments, "roll", "rolled out", rolled_out).await;
    let checksum =
        template_annotation(&before, "live.oxcast.dev/ingest-config-checksum").expect("checksum");
    assert_eq!(
        template_annotation(&before, "example.com/team").as_deref(),
        Some("video")
    );
    let svc = wait_exists(&services, "roll-rtmp").await;
    assert_eq!(
        svc.spec
            .as_ref()
            .and_then(|s| s.load_balancer_source_ranges.clone()),
        Some(vec!["198.51.100.0/24".to_string()])
    );
    let replica_sets: Api<ReplicaSet> = ctx.api();
    let selector = "app.kubernetes.io/instance=roll,app.kubernetes.io/component=ingest";
    let first_rs: Vec<String> = replica_sets
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list replica sets")
        .items
        .iter()
        .map(|rs| rs.name_any())
        .collect();
    assert_eq!(first_rs.len(), 1);

    // New HLS settings; the source ranges, the Service annotation and the
    // pod annotation are left out, so they must go.
    let updated = apply_app(
        &ctx,
        "roll",
        serde_json::json!({"hls": {"fragment": "2s", "playlistLength": "20s"}}),
    )
    .await;
    assert!(updated.metadata.generation > app.metadata.generation);

    let config_map = wait_until(
        &config_maps,
        "roll-config",
        "new config",
        |cm: &ConfigMap| {
            cm.data
                .as_ref()
                .is_some_and(|d| d["config.yaml"].contains("fragment: 2s"))
        },
    )
    .await;
    let config: IngestConfig =
        serde_yaml::from_str(&config_map.data.expect("data")["config.yaml"]).expect("config");
    assert_eq!(config.hls.fragment, HumanDuration::from_secs(2));
    assert_eq!(config.hls.playlist_length, HumanDuration::from_secs(20));

    let old = checksum.clone();
    let after = wait_until(
        &deployments,
        "roll",
        "new pod template, rolled out",
        move |d: &Deployment| {
            template_annotation(d, "live.oxcast.dev/ingest-config-checksum")
                .is_some_and(|c| c != old)
                && rolled_out(d)
        },
    )
    .await;
    assert_eq!(
        template_annotation(&after, "example.com/team"),
        None,
        "a dropped pod annotation stays dropped"
    );
    // The pods rolled: a new ReplicaSet runs them.
    let replica_sets = replica_sets
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list replica sets")
        .items;
    let current: Vec<_> = replica_sets
        .iter()
        .filter(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0))
        .map(|rs| rs.name_any())
        .collect();
    assert_eq!(current.len(), 1, "{current:?}");
    assert!(
        !first_rs.contains(&current[0]),
        "the pods were not replaced"
    );

    let svc = wait_until(
        &services,
        "roll-rtmp",
        "dropped options removed",
        |s: &Service| {
            s.spec
                .as_ref()
                .is_some_and(|s| s.load_balancer_source_ranges.is_none())
                && !s.annotations().contains_key("lb.example.com/internal")
        },
    )
    .await;
    assert_eq!(
        svc.spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("LoadBalancer")
    );
    op.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_or_hand_edited_children_are_restored() {
    let (ctx, op) = with_operator("heal").await;
    apply_app(
        &ctx,
        "heal",
        serde_json::json!({"rtmp": {"service": {"type": "ClusterIP"}}}),
    )
    .await;
    let deployments: Api<Deployment> = ctx.api();
    let services: Api<Service> = ctx.api();
    let config_maps: Api<ConfigMap> = ctx.api();
    wait_app(&ctx, "heal", "Ready", |a| has_condition(a, "Ready", "True")).await;

    // Deleted children come back (new objects, new uids).
    let cm_uid = config_maps
        .get("heal-config")
        .await
        .expect("config map")
        .uid();
    config_maps
        .delete("heal-config", &DeleteParams::default())
        .await
        .expect("delete the ConfigMap");
    wait_until(
        &config_maps,
        "heal-config",
        "recreated",
        move |cm: &ConfigMap| cm.uid() != cm_uid,
    )
    .await;
    let svc_uid = services.get("heal-rtmp").await.expect("service").uid();
    services
        .delete("heal-rtmp", &DeleteParams::default())
        .await
        .expect("delete the Service");
    wait_until(&services, "heal-rtmp", "recreated", move |s: &Service| {
        s.uid() != svc_uid
    })
    .await;
    // The ingest pods' ServiceAccount, Role and RoleBinding too.
    let roles: Api<Role> = ctx.api();
    let role_uid = wait_exists(&roles, "heal-ingest").await.uid();
    roles
        .delete("heal-ingest", &DeleteParams::default())
        .await
        .expect("delete the Role");
    wait_until(&roles, "heal-ingest", "recreated", move |r: &Role| {
        r.uid() != role_uid
    })
    .await;
    let bindings: Api<RoleBinding> = ctx.api();
    let binding_uid = wait_exists(&bindings, "heal-ingest").await.uid();
    bindings
        .delete("heal-ingest", &DeleteParams::default())
        .await
        .expect("delete the RoleBinding");
    wait_until(
        &bindings,
        "heal-ingest",
        "recreated",
        move |b: &RoleBinding| b.uid() != binding_uid,
    )
    .await;
    let accounts: Api<ServiceAccount> = ctx.api();
    let account_uid = wait_exists(&accounts, "heal-ingest").await.uid();
    accounts
        .delete("heal-ingest", &DeleteParams::default())
        .await
        .expect("delete the ServiceAccount");
    wait_until(
        &accounts,
        "heal-ingest",
        "recreated",
        move |a: &ServiceAccount| a.uid() != account_uid,
    )
    .await;
    // A verb added by hand is taken away again.
    let edit = serde_json::json!({"rules": [{
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "list", "create", "update", "delete", "watch", "patch"],
    }]});
    roles
        .patch("heal-ingest", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("widen the Role by hand");
    wait_until(&roles, "heal-ingest", "rules restored", |r: &Role| {
        r.rules.as_ref().is_some_and(|rules| {
            rules.len() == 1 && rules[0].verbs == ["get", "list", "create", "update", "delete"]
        })
    })
    .await;

    // Hand edits of managed fields are reverted; fields nobody manages
    // (a label someone adds) are left alone.
    let edit = serde_json::json!({
        "metadata": {"labels": {"example.com/owner-team": "video"}},
        "spec": {"replicas": 3},
    });
    deployments
        .patch("heal", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("scale by hand");
    let restored = wait_until(
        &deployments,
        "heal",
        "replicas restored",
        |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas) == Some(1),
    )
    .await;
    assert_eq!(
        restored
            .labels()
            .get("example.com/owner-team")
            .map(String::as_str),
        Some("video"),
        "the operator must not fight other managers' fields"
    );

    let edit = serde_json::json!({"data": {"config.yaml": "rtmp:\n  app: hijacked\n"}});
    config_maps
        .patch("heal-config", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("edit the config by hand");
    wait_until(
        &config_maps,
        "heal-config",
        "config restored",
        |cm: &ConfigMap| {
            cm.data
                .as_ref()
                .is_some_and(|d| !d["config.yaml"].contains("hijacked"))
        },
    )
    .await;

    // `kubectl set image` by hand.
    let edit = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "ingest", "image": "example.com/other:1"}]}}}});
    deployments
        .patch("heal", &PatchParams::default(), &Patch::Strategic(&edit))
        .await
        .expect("change the image by hand");
    wait_until(&deployments, "heal", "image restored", |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .is_some_and(|p| {
                p.containers
                    .iter()
                    .all(|c| c.image.as_deref() != Some("example.com/other:1"))
            })
    })
    .await;

    let edit = serde_json::json!({"spec": {"type": "NodePort"}});
    services
        .patch("heal-http", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("change the Service type by hand");
    wait_until(&services, "heal-http", "type restored", |s: &Service| {
        s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ClusterIP")
    })
    .await;
    op.stop().await.expect("graceful stop");
}

/// `podDisruptionBudget` makes the operator own a PodDisruptionBudget over
/// the ingest pods; dropping it from the spec deletes it; a claim declared
/// ReadWriteOnce replaces the ingest pod with `Recreate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruption_budgets_are_owned_and_pruned_and_rollouts_fit_the_volume() {
    let (ctx, op) = with_operator("pdb").await;
    let app = apply_app(
        &ctx,
        "budget",
        serde_json::json!({
            "rtmp": {"service": {"type": "ClusterIP"}},
            "podDisruptionBudget": {"maxUnavailable": 1},
            "storage": {"existingClaim": {"claimName": "hls", "accessMode": "ReadWriteOnce"}},
        }),
    )
    .await;
    let budgets: Api<PodDisruptionBudget> = ctx.api();
    let pdb = wait_exists(&budgets, "budget-ingest").await;
    assert_controlled_by(&pdb, &app);
    let spec = pdb.spec.as_ref().expect("spec");
    assert_eq!(
        spec.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(
        spec.selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .and_then(|l| l.get("app.kubernetes.io/component"))
            .map(String::as_str),
        Some("ingest")
    );
    let deployments: Api<Deployment> = ctx.api();
    let ingest = wait_exists(&deployments, "budget").await;
    assert_eq!(
        ingest
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.as_deref()),
        Some("Recreate"),
        "a ReadWriteOnce claim cannot be mounted by a surge pod on another node"
    );

    // Dropped from the spec: the operator deletes it.
    let uid = pdb.uid().expect("uid");
    apply_app(
        &ctx,
        "budget",
        serde_json::json!({
            "rtmp": {"service": {"type": "ClusterIP"}},
            "storage": {"existingClaim": {"claimName": "hls", "accessMode": "ReadWriteOnce"}},
        }),
    )
    .await;
    cluster::wait_for_condition(
        budgets,
        "budget-ingest",
        TIMEOUT,
        conditions::is_deleted(&uid),
    )
    .await
    .expect("the PodDisruptionBudget is deleted when the spec drops it");
    op.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_application_garbage_collects_its_children() {
    let (ctx, op) = with_operator("gc").await;
    apply_app(
        &ctx,
        "gone",
        serde_json::json!({"rtmp": {"service": {"type": "ClusterIP"}}}),
    )
    .await;
    let deployments: Api<Deployment> = ctx.api();
    let services: Api<Service> = ctx.api();
    let config_maps: Api<ConfigMap> = ctx.api();
    let d_uid = wait_exists(&deployments, "gone").await.uid().expect("uid");
    let cm_uid = wait_exists(&config_maps, "gone-config")
        .await
        .uid()
        .expect("uid");
    let rtmp_uid = wait_exists(&services, "gone-rtmp")
        .await
        .uid()
        .expect("uid");
    let http_uid = wait_exists(&services, "gone-http")
        .await
        .uid()
        .expect("uid");
    let roles: Api<Role> = ctx.api();
    let role_uid = wait_exists(&roles, "gone-ingest").await.uid().expect("uid");

    ctx.api::<LiveApplication>()
        .delete("gone", &DeleteParams::background())
        .await
        .expect("delete the LiveApplication");
    // The garbage collector needs to discover a new kind first (~30 s).
    for (api, name, uid) in [
        (services.clone(), "gone-rtmp", rtmp_uid),
        (services.clone(), "gone-http", http_uid),
    ] {
        cluster::wait_for_condition(api, name, TIMEOUT, conditions::is_deleted(&uid))
            .await
            .unwrap_or_else(|e| panic!("{name} is garbage-collected: {e}"));
    }
    cluster::wait_for_condition(deployments, "gone", TIMEOUT, conditions::is_deleted(&d_uid))
        .await
        .expect("the Deployment is garbage-collected");
    cluster::wait_for_condition(
        config_maps,
        "gone-config",
        TIMEOUT,
        conditions::is_deleted(&cm_uid),
    )
    .await
    .expect("the ConfigMap is garbage-collected");
    cluster::wait_for_condition(
        roles,
        "gone-ingest",
        TIMEOUT,
        conditions::is_deleted(&role_uid),
    )
    .await
    .expect("the ingest Role is garbage-collected");
    op.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_at_admission_with_their_message() {
    let ctx = context("admission").await;
    let apps: Api<LiveApplication> = ctx.api();
    let cases = invalid_cases().expect("the shared invalid cases");
    for case in &cases {
        let result = apps
            .patch(
                &case.name,
                &PatchParams::apply(TEST_MANAGER),
                &Patch::Apply(&case.manifest()),
            )
            .await;
        match result {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{}: {status:?}", case.case);
                assert!(
                    status.message.contains(&case.message),
                    "{}: expected {:?} in {:?}",
                    case.case,
                    case.message,
                    status.message
                );
            }
            other => panic!("{}: expected a rejection, got {other:?}", case.case),
        }
    }

    // A transition rule: the claim's storage class is fixed once set.
    let spec = |class: &str| {
        serde_json::json!({
            "apiVersion": "live.oxcast.dev/v1alpha1",
            "kind": "LiveApplication",
            "metadata": {"name": "claim"},
            "spec": {"storage": {"persistentVolumeClaim": {"storageClassName": class}}},
        })
    };
    apps.patch(
        "claim",
        &PatchParams::apply(TEST_MANAGER),
        &Patch::Apply(&spec("nfs")),
    )
    .await
    .expect("a claim with a storage class is valid");
    match apps
        .patch(
            "claim",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&spec("fast")),
        )
        .await
    {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains("storageClassName cannot change"),
            "{}",
            status.message
        ),
        other => panic!("changing the storage class must be rejected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_apply_cleanly_and_come_up() {
    let (ctx, op) = with_operator("examples").await;
    for file in [
        "minimal.yaml",
        "scale-out.yaml",
        "stream-keys.yaml",
        "encrypted.yaml",
    ] {
        kubectl_apply_example(&ctx, file);
    }
    let services: Api<Service> = ctx.api();
    for (app, ip) in [
        ("live", "203.0.113.21"),
        ("scale-out", "203.0.113.22"),
        ("keyed", "203.0.113.23"),
        ("secure", "203.0.113.24"),
    ] {
        let svc = format!("{app}-rtmp");
        wait_exists(&services, &svc).await;
        assign_load_balancer(&services, &svc, ip)
            .await
            .expect("assign an address");
    }
    wait_app(&ctx, "live", "Ready", |a| has_condition(a, "Ready", "True")).await;

    // Keys come from the Secret, mounted where the rendered config points.
    let keyed = wait_app(&ctx, "keyed", "Ready", |a| {
        has_condition(a, "Ready", "True")
    })
    .await;
    assert_eq!(
        keyed.status.and_then(|s| s.rtmp_url).as_deref(),
        Some("rtmp://203.0.113.23:1935/app")
    );
    let deployment = ctx
        .api::<Deployment>()
        .get("keyed")
        .await
        .expect("deployment");
    let secret_volume = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.volumes)
        .unwrap_or_default()
        .into_iter()
        .find_map(|v| v.secret)
        .expect("a Secret volume");
    assert_eq!(secret_volume.secret_name.as_deref(), Some("stream-keys"));

    // Encrypted streams: the key-token Secret is mounted read-only into the
    // HTTP server's container only; the ingest container never sees it.
    wait_app(&ctx, "secure", "Ready", |a| {
        has_condition(a, "Ready", "True")
    })
    .await;
    let pod_spec = ctx
        .api::<Deployment>()
        .get("secure")
        .await
        .expect("deployment")
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let key_volume = pod_spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("key-token"))
        .map(|v| v.name.clone())
        .expect("a volume of the key-token Secret");
    for container in &pod_spec.containers {
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == key_volume);
        match container.name.as_str() {
            "http" => assert_eq!(
                mount.and_then(|m| m.read_only),
                Some(true),
                "the HTTP container mounts the key-token Secret read-only"
            ),
            other => assert!(
                mount.is_none(),
                "container {other} must not mount the key-token Secret"
            ),
        }
    }
    let config: IngestConfig = serde_yaml::from_str(
        &ctx.api::<ConfigMap>()
            .get("secure-config")
            .await
            .expect("config map")
            .data
            .expect("data")["config.yaml"],
    )
    .expect("the config the server reads");
    assert!(config.hls.encryption.enabled);

    // Scale-out: the claim stays Pending without a ReadWriteMany volume,
    // and the status says so.
    let pending = wait_app(&ctx, "scale-out", "Degraded by the pending claim", |a| {
        has_condition(a, "Degraded", "True")
    })
    .await;
    assert_eq!(
        condition_reason(&pending, "Degraded").as_deref(),
        Some("VolumeClaimPending")
    );
    assert!(has_condition(&pending, "Ready", "False"));

    // An administrator provides a volume (bound to this claim only, so
    // parallel tests cannot take it); the claim binds and the ingest and
    // HTTP Deployments come up.
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv_name = format!("{}-hls", ctx.ns());
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": pv_name, "labels": {cluster::TEST_NAMESPACE_LABEL: "true"}},
        "spec": {
            "capacity": {"storage": "20Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": "/tmp/oxcast-test-hls"},
            "claimRef": {"namespace": ctx.ns(), "name": "scale-out-hls"},
        },
    }))
    .expect("PersistentVolume literal");
    pvs.create(&PostParams::default(), &pv)
        .await
        .expect("create the volume");
    let claims: Api<PersistentVolumeClaim> = ctx.api();
    wait_until(
        &claims,
        "scale-out-hls",
        "Bound",
        |c: &PersistentVolumeClaim| {
            c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        },
    )
    .await;
    let ready = wait_app(&ctx, "scale-out", "Ready", |a| {
        has_condition(a, "Ready", "True")
    })
    .await;
    let status = ready.status.expect("status");
    assert_eq!(status.ready_replicas, Some(3));
    assert_eq!(status.http_ready_replicas, Some(2));
    // Several replicas on one volume: stream ownership through Leases,
    // named after the application.
    let config_map = ctx
        .api::<ConfigMap>()
        .get("scale-out-config")
        .await
        .expect("config map");
    let config: IngestConfig =
        serde_yaml::from_str(&config_map.data.as_ref().expect("data")["config.yaml"])
            .expect("the config the server reads");
    assert_eq!(config.ownership.mode, oxcast_crds::OwnershipMode::Leases);
    assert_eq!(config.ownership.lease_prefix.as_deref(), Some("scale-out"));
    assert!(has_condition_in(&status, "Degraded", "False"));
    let _ = pvs.delete(&pv_name, &DeleteParams::default()).await;
    op.stop().await.expect("graceful stop");
}

fn has_condition_in(
    status: &oxcast_crds::live_application::LiveApplicationStatus,
    type_: &str,
    value: &str,
) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_failures_degrade_and_recover() {
    let (ctx, op) = with_operator("quota").await;
    // No Services allowed: the operator's apply of the Services fails.
    let quotas: Api<ResourceQuota> = ctx.api();
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "no-services"},
        "spec": {"hard": {"services": "0"}},
    }))
    .expect("quota literal");
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("create the quota");

    apply_app(
        &ctx,
        "quota",
        serde_json::json!({"rtmp": {"service": {"type": "ClusterIP"}}}),
    )
    .await;
    let degraded = wait_app(&ctx, "quota", "Degraded by the failed apply", |a| {
        has_condition(a, "Degraded", "True")
    })
    .await;
    assert_eq!(
        condition_reason(&degraded, "Degraded").as_deref(),
        Some("ApplyFailed")
    );
    let message = degraded
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("quota"), "{message}");
    // The Warning is published just after the status is written: wait for it.
    cluster::eventually("an ApplyFailed Warning", TIMEOUT, || async {
        let warnings: Vec<_> = events_for(&ctx, "quota")
            .await
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter_map(|e| e.reason)
            .collect();
        Ok::<_, std::convert::Infallible>(warnings.iter().any(|r| r == "ApplyFailed").then_some(()))
    })
    .await
    .expect("the failed apply is reported as a Warning Event");

    // Once the obstacle is gone, the retry (with backoff) succeeds.
    quotas
        .delete("no-services", &DeleteParams::default())
        .await
        .expect("delete the quota");
    let ready = wait_app(&ctx, "quota", "Ready after the quota is gone", |a| {
        has_condition(a, "Ready", "True")
    })
    .await;
    assert!(has_condition(&ready, "Degraded", "False"));
    op.stop().await.expect("graceful stop");
}

/// Encrypted HLS with signed key delivery, the token secret in Secret
/// `key-token` (examples/encrypted.yaml without the Secret).
fn signed_encryption_spec() -> serde_json::Value {
    serde_json::json!({
        "rtmp": {"service": {"type": "ClusterIP"}},
        "hls": {"encryption": {
            "enabled": true,
            "authorization": {"mode": "signed", "secretName": "key-token"},
        }},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_token_secret_is_reported_until_it_is_created() {
    let ctx = context("keysecret").await;
    // No resync: only the watches can bring the news below.
    let mut settings = settings("op-keysecret", &[ctx.ns()]);
    settings.controller.resync_interval = Duration::from_secs(3600);
    let op = RunningOperator::start(ctx.cluster, settings);
    let name = "secure";
    apply_app(&ctx, name, signed_encryption_spec()).await;
    let missing = |a: &LiveApplication| {
        has_condition(a, "Degraded", "True")
            && condition_reason(a, "Degraded").as_deref() == Some("KeySecretMissing")
    };
    // Settled: the pods run (the test nodes mount nothing) and the
    // Service routes to them, and the Secret is all that is missing.
    let degraded = wait_app(&ctx, name, "KeySecretMissing, rolled out", |a| {
        missing(a) && has_condition(a, "Progressing", "False")
    })
    .await;
    assert!(has_condition(&degraded, "Ready", "False"));
    assert_eq!(
        condition_reason(&degraded, "Ready").as_deref(),
        Some("KeySecretMissing")
    );
    let hint = format!(
        "kubectl create secret generic key-token -n {} --from-literal=secret=$(openssl rand -hex 32)",
        ctx.ns()
    );
    let message = condition_message(&degraded, "Degraded").unwrap_or_default();
    assert!(
        message.contains(&format!(
            "Secret \"key-token\" (hls.encryption.authorization.secretName) not found in namespace \"{}\"",
            ctx.ns()
        )) && message.ends_with(&hint),
        "{message}"
    );
    // And a Warning Event with the same hint, for `kubectl describe`.
    cluster::eventually("a KeySecretMissing Warning", TIMEOUT, || async {
        let found = events_for(&ctx, name).await.into_iter().any(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some("KeySecretMissing")
                && e.note.as_deref().is_some_and(|n| n.ends_with(&hint))
        });
        Ok::<_, std::convert::Infallible>(found.then_some(()))
    })
    .await
    .expect("the missing Secret is reported as a Warning Event");

    // Creating the Secret, as the message says, triggers a reconcile (the
    // operator watches Secrets): the reason goes away and the application
    // comes up. Nothing else would reconcile it now: no resync, and its
    // children are settled.
    wait_for_idle(&op).await;
    let secrets: Api<Secret> = ctx.api();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "key-token"},
        "stringData": {"secret": "0123456789abcdef0123456789abcdef"},
    }))
    .expect("Secret literal");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the key-token Secret");
    wait_app(&ctx, name, "no KeySecretMissing once it exists", |a| {
        a.status.as_ref().is_some_and(|s| {
            !s.conditions.is_empty() && s.conditions.iter().all(|c| c.reason != "KeySecretMissing")
        })
    })
    .await;
    wait_app(&ctx, name, "Ready with the Secret", |a| {
        has_condition(a, "Ready", "True")
    })
    .await;

    // Deleting it is noticed too, again through the Secret watch alone.
    wait_for_idle(&op).await;
    secrets
        .delete("key-token", &DeleteParams::default())
        .await
        .expect("delete the key-token Secret");
    wait_app(&ctx, name, "KeySecretMissing again", missing).await;
    op.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_check_secrets_nothing_about_secrets_is_reported() {
    let ctx = context("nokeycheck").await;
    let mut settings = settings("op-nokeycheck", &[ctx.ns()]);
    settings.controller.check_secrets = false;
    let op = RunningOperator::start(ctx.cluster, settings);
    let name = "secure";
    apply_app(&ctx, name, signed_encryption_spec()).await;
    // The operator does not look: the status follows the pods alone (the
    // test nodes run no containers, so nothing fails to mount).
    wait_app(&ctx, name, "Ready without looking for the Secret", |a| {
        has_condition(a, "Ready", "True")
    })
    .await;
    op.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_that_hands_over_when_it_stops() {
    let ctx = context("leader").await;
    let ns = ctx.ns().to_string();
    let start = |identity: &str| {
        let mut s = settings(identity, &[ns.as_str()]);
        s.leader_election = Some(fast_lease("oxcast-operator", &ns, identity));
        RunningOperator::start(ctx.cluster, s)
    };
    let a = start("op-a");
    let b = start("op-b");
    cluster::eventually("a leader", TIMEOUT, || async {
        Ok::<_, std::convert::Infallible>(
            (a.metrics.is_leader() || b.metrics.is_leader()).then_some(()),
        )
    })
    .await
    .expect("one instance becomes leader");
    let (leader, standby) = if a.metrics.is_leader() {
        (a, b)
    } else {
        (b, a)
    };
    assert!(!standby.metrics.is_leader(), "two leaders");
    let leases: Api<Lease> = ctx.api();
    let lease = leases.get("oxcast-operator").await.expect("the Lease");
    assert_eq!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some(leader.identity.as_str())
    );

    let config_maps: Api<ConfigMap> = ctx.api();
    apply_app(
        &ctx,
        "first",
        serde_json::json!({"rtmp": {"service": {"type": "ClusterIP"}}}),
    )
    .await;
    wait_app(&ctx, "first", "Ready", |a| {
        has_condition(a, "Ready", "True")
    })
    .await;
    assert!(leader.metrics.reconcile_count() > 0);
    assert_eq!(
        standby.metrics.reconcile_count(),
        0,
        "the standby reconciled"
    );
    assert_eq!(standby.metrics.write_count(), 0, "the standby wrote");
    cluster::eventually("the standby to be ready", TIMEOUT, || async {
        Ok::<_, std::convert::Infallible>(standby.health.is_ready().then_some(()))
    })
    .await
    .expect("a standby reports ready");

    // A graceful stop releases the lease: the standby takes over at once.
    leader.stop().await.expect("graceful stop");
    cluster::eventually(
        "the standby to take over",
        Duration::from_secs(30),
        || async { Ok::<_, std::convert::Infallible>(standby.metrics.is_leader().then_some(())) },
    )
    .await
    .expect("the standby becomes leader");
    apply_app(
        &ctx,
        "second",
        serde_json::json!({"rtmp": {"service": {"type": "ClusterIP"}}}),
    )
    .await;
    wait_exists(&config_maps, "second-config").await;
    assert!(standby.metrics.reconcile_count() > 0);

    // A crash releases nothing: a new standby waits for the lease to expire.
    let third = start("op-c");
    cluster::eventually("the new standby to see the lease", TIMEOUT, || async {
        Ok::<_, std::convert::Infallible>(third.health.is_ready().then_some(()))
    })
    .await
    .expect("the third instance stands by");
    assert!(!third.metrics.is_leader());
    standby.kill();
    cluster::eventually(
        "take-over after the lease expires",
        Duration::from_secs(60),
        || async { Ok::<_, std::convert::Infallible>(third.metrics.is_leader().then_some(())) },
    )
    .await
    .expect("the third instance takes over");
    apply_app(
        &ctx,
        "third",
        serde_json::json!({"rtmp": {"service": {"type": "ClusterIP"}}}),
    )
    .await;
    wait_exists(&config_maps, "third-config").await;
    let lease = leases.get("oxcast-operator").await.expect("the Lease");
    let spec = lease.spec.expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("op-c"));
    assert!(spec.lease_transitions.unwrap_or(0) >= 2, "{spec:?}");
    third.stop().await.expect("graceful stop");
}

/// A leader whose API server stops answering (the connection stays open,
/// nothing comes back) steps down within its renew deadline instead of
/// waiting on the hung request while its controllers keep writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_steps_down_when_the_api_server_stops_answering() {
    use oxcast_operator::leader::LeaderElector;
    use oxcast_tests::tcp_proxy::StallingProxy;

    let ctx = context("leader-stall").await;
    let mut config = ctx.cluster.config().clone();
    let authority = config
        .cluster_url
        .authority()
        .expect("the API server URL has an authority")
        .as_str()
        .to_string();
    let upstream = tokio::net::lookup_host(&authority)
        .await
        .expect("resolve the API server")
        .next()
        .expect("an API server address");
    let proxy = StallingProxy::start(upstream)
        .await
        .expect("start the proxy");
    config.cluster_url = format!("https://{}", proxy.addr())
        .parse()
        .expect("proxy URL");
    // The API server's certificate names 127.0.0.1, which the proxy shares.
    let client = kube::Client::try_from(config).expect("a client through the proxy");

    let settings = fast_lease("stall", ctx.ns(), "op-stalled");
    let renew_deadline = settings.renew_deadline;
    let mut elector = LeaderElector::new(client, settings);
    let cancel = oxcast_operator::CancellationToken::new();
    assert!(
        tokio::time::timeout(TIMEOUT, elector.acquire(&cancel, &|| {}))
            .await
            .expect("acquire in time"),
        "the only candidate becomes leader"
    );
    let renewing = tokio::spawn(async move { elector.keep_renewing().await });
    // A few renewals go through while the proxy forwards.
    tokio::time::sleep(renew_deadline * 2).await;
    assert!(
        !renewing.is_finished(),
        "leadership ended while the API server answered"
    );

    proxy.stall();
    let stalled_at = std::time::Instant::now();
    let ended = tokio::time::timeout(renew_deadline * 4, renewing)
        .await
        .expect("the leader steps down instead of waiting on a hung request")
        .expect("the renew task");
    let took = stalled_at.elapsed();
    assert!(
        matches!(ended, oxcast_operator::Error::LeadershipLost(_)),
        "{ended}"
    );
    // Within the renew deadline plus one retry period (the renew that was
    // in flight may have just started when the proxy stalled).
    assert!(
        took <= renew_deadline + Duration::from_secs(1),
        "stepped down after {took:?} (renew deadline {renew_deadline:?})"
    );
    drop(proxy);
}
