//! The Helm chart against a real API server (the local control plane of
//! `tests/src/cluster`): every values file applies with a server-side dry
//! run and then for real, its pods pass the restricted Pod Security
//! Standard, and its RBAC lets the real operator do its work while denying
//! everything it does not need.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::Api;
use oxcast_crds::live_application::LiveApplication;
use oxcast_tests::chart::{self, Helm};
use oxcast_tests::cluster::{self, TestCluster, TestContext, TestNamespace};
use oxcast_tests::media::process::{run, run_ok, Running};
use oxcast_tests::media::workspace_root;
use serde_yaml::Value;

const TIMEOUT: Duration = Duration::from_secs(120);
const FIELD_MANAGER: &str = "oxcast-chart-tests";

async fn context(prefix: &str) -> TestContext {
    cluster::expect_test_context(prefix).await
}

async fn namespace(cluster: &TestCluster, prefix: &str) -> TestNamespace {
    cluster
        .namespace(prefix)
        .await
        .unwrap_or_else(|e| panic!("create a namespace: {e}"))
}

fn kubectl(cluster: &TestCluster, args: &[&str]) -> Result<String, String> {
    let mut cmd = cluster.kubectl();
    cmd.args(args);
    run_ok(cmd, chart::COMMAND_TIMEOUT)
}

/// `kubectl apply --server-side` of a manifest, optionally as a server-side
/// dry run; returns kubectl's report, one line per object.
fn apply(cluster: &TestCluster, manifest: &str, dry_run: bool) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("manifest.yaml");
    std::fs::write(&file, manifest).map_err(|e| e.to_string())?;
    let file = file.to_str().ok_or("non-UTF-8 temp path")?;
    let mut args = vec![
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        FIELD_MANAGER,
        "-f",
        file,
    ];
    if dry_run {
        args.push("--dry-run=server");
    }
    kubectl(cluster, &args)
}

/// Enforces the restricted Pod Security Standard on a namespace, so any
/// pod the chart creates there that breaks it is rejected.
fn enforce_restricted(cluster: &TestCluster, ns: &str) {
    kubectl(
        cluster,
        &[
            "label",
            "namespace",
            ns,
            "--overwrite",
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ],
    )
    .expect("label the namespace for Pod Security admission");
}

/// A stand-in for the Prometheus Operator's ServiceMonitor CRD, so the
/// chart's ServiceMonitor can be applied.
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn install_service_monitor_crd(cluster: &TestCluster) {
    apply(cluster, SERVICE_MONITOR_CRD, false).expect("install the ServiceMonitor CRD");
    kubectl(
        cluster,
        &[
            "wait",
            "--for=condition=Established",
            "crd/servicemonitors.monitoring.coreos.com",
            "--timeout=60s",
        ],
    )
    .expect("the ServiceMonitor CRD is established");
}

/// Installs the LiveApplication CRD from the chart (kubectl, no Helm
/// ownership), for tests that render the chart without it.
fn install_live_application_crd(cluster: &TestCluster) {
    let crd = Helm::V4
        .template(
            "crd",
            "default",
            &["--show-only", "templates/crds/liveapplication.yaml"],
        )
        .expect("render the CRD");
    apply(cluster, &crd, false).expect("apply the LiveApplication CRD");
    kubectl(
        cluster,
        &[
            "wait",
            "--for=condition=Established",
            "crd/liveapplications.live.oxcast.dev",
            "--timeout=60s",
        ],
    )
    .expect("the LiveApplication CRD is established");
}

fn deployment_available(replicas: i32) -> impl Fn(Option<&Deployment>) -> bool {
    move |d: Option<&Deployment>| {
        let Some(status) = d.and_then(|d| d.status.as_ref()) else {
            return false;
        };
        status.conditions.as_ref().is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
        }) && status.available_replicas == Some(replicas)
    }
}

/// The rendered chart of `values` in `ns`, applied for real after a
/// server-side dry run; waits until the operator Deployment is available.
async fn apply_chart(
    ctx: &TestContext,
    release: &str,
    ns: &str,
    values: Option<&Path>,
    sets: &[String],
) -> chart::Rendered {
    let mut args: Vec<String> = Vec::new();
    if let Some(file) = values {
        args.push("-f".into());
        args.push(file.to_str().expect("UTF-8 path").into());
    }
    for s in sets {
        args.push("--set".into());
        args.push(s.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let manifest = Helm::V4
        .template(release, ns, &args)
        .unwrap_or_else(|e| panic!("helm template {args:?}: {e}"));
    let rendered = chart::Rendered::parse(&manifest);

    let dry = apply(ctx.cluster, &manifest, true)
        .unwrap_or_else(|e| panic!("server-side dry run of {args:?} rejected:\n{e}"));
    let reported = dry
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert_eq!(
        reported,
        rendered.objects.len(),
        "the dry run did not accept every object:\n{dry}"
    );

    apply(ctx.cluster, &manifest, false)
        .unwrap_or_else(|e| panic!("applying {args:?} for real failed:\n{e}"));
    // Everything rendered now exists.
    for id in rendered.ids() {
        let mut parts = id.split(' ');
        let object = parts.next().expect("kind/name");
        let mut get = vec!["get", object, "-o", "name"];
        if let (Some("-n"), Some(n)) = (parts.next(), parts.next()) {
            get.extend(["-n", n]);
        }
        kubectl(ctx.cluster, &get).unwrap_or_else(|e| panic!("{id} was not created: {e}"));
    }

    let replicas = rendered.one("Deployment")["spec"]["replicas"]
        .as_i64()
        .expect("replicas") as i32;
    if ctx.cluster.is_local() {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
        cluster::wait_for_condition(
            deployments,
            &format!("{release}-oxcast"),
            TIMEOUT,
            deployment_available(replicas),
        )
        .await
        .unwrap_or_else(|e| {
            let events = kubectl(ctx.cluster, &["get", "events", "-n", ns]).unwrap_or_default();
            panic!("the operator Deployment of {args:?} never became available: {e}\n{events}")
        });
    }
    rendered
}

#[tokio::test]
async fn every_values_file_applies_with_server_dry_run_then_for_real() {
    let ctx = context("chart-apply").await;
    install_service_monitor_crd(ctx.cluster);
    for file in chart::values_files() {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name")
            .trim_end_matches("-values")
            .to_string();
        let release_ns = namespace(ctx.cluster, &format!("chart-{stem}")).await;
        enforce_restricted(ctx.cluster, release_ns.name());
        // Namespaced installs get fresh namespaces instead of the file's.
        let text = std::fs::read_to_string(&file).expect("read the values file");
        let values: Value = serde_yaml::from_str(&text).expect("values YAML");
        let mut sets = Vec::new();
        let mut watched = Vec::new();
        if values["watchNamespaces"].is_sequence() {
            watched.push(namespace(ctx.cluster, "watched-a").await);
            watched.push(namespace(ctx.cluster, "watched-b").await);
            let names: Vec<&str> = watched.iter().map(|n| n.name()).collect();
            sets.push(format!("watchNamespaces={{{}}}", names.join(",")));
            // crds.enabled=false there: the CRD comes from elsewhere.
            install_live_application_crd(ctx.cluster);
        }
        let release = format!("apply-{stem}");
        let rendered = apply_chart(&ctx, &release, release_ns.name(), Some(&file), &sets).await;
        for w in &watched {
            kubectl(
                ctx.cluster,
                &["get", "role", &format!("{release}-oxcast"), "-n", w.name()],
            )
            .unwrap_or_else(|e| panic!("no Role in watched namespace {}: {e}", w.name()));
        }
        if rendered.has("NetworkPolicy") {
            let policies = kubectl(
                ctx.cluster,
                &[
                    "get",
                    "networkpolicy",
                    "-n",
                    release_ns.name(),
                    "-o",
                    "name",
                ],
            )
            .expect("list NetworkPolicies");
            assert!(
                policies.contains(&format!("{release}-oxcast-ingest")),
                "{policies}"
            );
        }
    }
}

/// The identity the chart's operator pods run as.
fn service_account(release: &str, ns: &str) -> String {
    format!("system:serviceaccount:{ns}:{release}-oxcast")
}

/// `kubectl auth can-i` as `user`: true for "yes", false for "no".
fn can_i(cluster: &TestCluster, user: &str, check: &[&str]) -> bool {
    let mut cmd = cluster.kubectl();
    cmd.args(["auth", "can-i"])
        .args(check)
        .arg(format!("--as={user}"));
    let done = run(cmd, chart::COMMAND_TIMEOUT).expect("run kubectl auth can-i");
    match done.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {check:?}: {other:?} {}", done.stderr),
    }
}

/// Waits until the bindings of `user` are in effect (RBAC changes are
/// picked up by the authorizer within moments).
async fn await_grant(cluster: &TestCluster, user: &str, check: &[&str]) {
    cluster::eventually("the chart's RBAC to take effect", TIMEOUT, || async {
        Ok::<_, String>(can_i(cluster, user, check).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{user} never got {check:?}: {e}"));
}

/// What the operator does in a namespace it manages (`operator/rbac.md`).
const MANAGED_GRANTS: &[&[&str]] = &[
    &["get", "liveapplications.live.oxcast.dev"],
    &["list", "liveapplications.live.oxcast.dev"],
    &["watch", "liveapplications.live.oxcast.dev"],
    &[
        "patch",
        "liveapplications.live.oxcast.dev",
        "--subresource=status",
    ],
    &[
        "update",
        "liveapplications.live.oxcast.dev",
        "--subresource=finalizers",
    ],
    &["create", "deployments.apps"],
    &["patch", "deployments.apps"],
    &["delete", "deployments.apps"],
    &["watch", "deployments.apps"],
    &["create", "services"],
    &["patch", "services"],
    &["list", "services"],
    &["create", "configmaps"],
    &["patch", "configmaps"],
    &["watch", "configmaps"],
    &["create", "persistentvolumeclaims"],
    &["patch", "persistentvolumeclaims"],
    &["delete", "persistentvolumeclaims"],
    &["list", "persistentvolumeclaims"],
    &["list", "endpointslices.discovery.k8s.io"],
    &["watch", "endpointslices.discovery.k8s.io"],
    &["get", "poddisruptionbudgets.policy"],
    &["list", "poddisruptionbudgets.policy"],
    &["watch", "poddisruptionbudgets.policy"],
    &["create", "poddisruptionbudgets.policy"],
    &["patch", "poddisruptionbudgets.policy"],
    &["delete", "poddisruptionbudgets.policy"],
    &["get", "pods"],
    &["list", "pods"],
    &["watch", "pods"],
    &["create", "events.events.k8s.io"],
    &["patch", "events.events.k8s.io"],
    // The ingest pods' ServiceAccount, Role and RoleBinding per
    // LiveApplication, and the Lease verbs that Role grants (RBAC lets it
    // grant only what it holds).
    &["get", "serviceaccounts"],
    &["list", "serviceaccounts"],
    &["watch", "serviceaccounts"],
    &["create", "serviceaccounts"],
    &["patch", "serviceaccounts"],
    &["list", "roles.rbac.authorization.k8s.io"],
    &["watch", "roles.rbac.authorization.k8s.io"],
    &["create", "roles.rbac.authorization.k8s.io"],
    &["patch", "roles.rbac.authorization.k8s.io"],
    &["list", "rolebindings.rbac.authorization.k8s.io"],
    &["watch", "rolebindings.rbac.authorization.k8s.io"],
    &["create", "rolebindings.rbac.authorization.k8s.io"],
    &["patch", "rolebindings.rbac.authorization.k8s.io"],
    &["get", "leases.coordination.k8s.io"],
    &["list", "leases.coordination.k8s.io"],
    &["create", "leases.coordination.k8s.io"],
    &["update", "leases.coordination.k8s.io"],
    &["delete", "leases.coordination.k8s.io"],
];

/// Secret reads, for its metadata-only watch of Secrets (a missing
/// key-token Secret): granted with `operator.checkSecrets` (the default),
/// denied without.
const SECRET_READS: &[&[&str]] = &[
    &["get", "secrets"],
    &["list", "secrets"],
    &["watch", "secrets"],
];

/// What it must never do, anywhere it manages LiveApplications.
const MANAGED_DENIALS: &[&[&str]] = &[
    &["create", "secrets"],
    &["update", "secrets"],
    &["patch", "secrets"],
    &["delete", "secrets"],
    &["create", "pods"],
    &["delete", "pods"],
    &["create", "pods/exec"],
    &["update", "liveapplications.live.oxcast.dev"],
    &["patch", "liveapplications.live.oxcast.dev"],
    &["delete", "liveapplications.live.oxcast.dev"],
    &["create", "liveapplications.live.oxcast.dev"],
    &[
        "update",
        "liveapplications.live.oxcast.dev",
        "--subresource=status",
    ],
    &["update", "deployments.apps"],
    &["update", "poddisruptionbudgets.policy"],
    &["create", "endpointslices.discovery.k8s.io"],
    &["delete", "endpointslices.discovery.k8s.io"],
    &["delete", "services"],
    &["delete", "configmaps"],
    &["create", "events"],
    &["create", "statefulsets.apps"],
    &["create", "daemonsets.apps"],
    &["create", "replicasets.apps"],
    &["create", "ingresses.networking.k8s.io"],
    &["create", "networkpolicies.networking.k8s.io"],
    // Tokens of any ServiceAccount (the ingest ones included): never.
    // (`serviceaccounts/token` would ask about a ServiceAccount named
    // "token".)
    &["create", "serviceaccounts", "--subresource=token"],
    &["delete", "serviceaccounts"],
    &["update", "serviceaccounts"],
    &["delete", "roles.rbac.authorization.k8s.io"],
    &["update", "roles.rbac.authorization.k8s.io"],
    &["escalate", "roles.rbac.authorization.k8s.io"],
    &["bind", "roles.rbac.authorization.k8s.io"],
    &["delete", "rolebindings.rbac.authorization.k8s.io"],
    &["patch", "leases.coordination.k8s.io"],
    &["watch", "leases.coordination.k8s.io"],
];

/// Never, cluster-wide.
const CLUSTER_DENIALS: &[&[&str]] = &[
    &["create", "secrets", "--all-namespaces"],
    &["delete", "secrets", "--all-namespaces"],
    &["delete", "namespaces"],
    &["create", "namespaces"],
    &["get", "nodes"],
    &["create", "clusterroles.rbac.authorization.k8s.io"],
    &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
    &["escalate", "clusterroles.rbac.authorization.k8s.io"],
    &["bind", "clusterroles.rbac.authorization.k8s.io"],
    &["impersonate", "users"],
    &["impersonate", "serviceaccounts"],
    &["create", "customresourcedefinitions.apiextensions.k8s.io"],
    &["delete", "customresourcedefinitions.apiextensions.k8s.io"],
    &["create", "certificatesigningrequests.certificates.k8s.io"],
];

fn check_all(cluster: &TestCluster, user: &str, checks: &[&[&str]], ns: Option<&str>, want: bool) {
    let mut wrong = Vec::new();
    for check in checks {
        let mut args: Vec<&str> = check.to_vec();
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        if can_i(cluster, user, &args) != want {
            wrong.push(args.join(" "));
        }
    }
    assert!(
        wrong.is_empty(),
        "{user} should {}be allowed to: {wrong:#?}",
        if want { "" } else { "not " }
    );
}

/// Leader election: its own Lease in the release namespace. Where it does
/// not manage LiveApplications (`managed_everywhere` false: the release
/// namespace and `elsewhere` are not watched), nothing else; a cluster-wide
/// install holds the ingest Roles' Lease verbs everywhere (MANAGED_GRANTS).
fn check_lease_rules(
    cluster: &TestCluster,
    user: &str,
    release_ns: &str,
    elsewhere: &str,
    managed_everywhere: bool,
) {
    let allowed: &[&[&str]] = &[
        &["create", "leases.coordination.k8s.io", "-n", release_ns],
        &[
            "get",
            "leases.coordination.k8s.io/oxcast-operator",
            "-n",
            release_ns,
        ],
        &[
            "update",
            "leases.coordination.k8s.io/oxcast-operator",
            "-n",
            release_ns,
        ],
    ];
    check_all(cluster, user, allowed, None, true);
    if managed_everywhere {
        return;
    }
    let denied: &[&[&str]] = &[
        &[
            "update",
            "leases.coordination.k8s.io/kube-scheduler",
            "-n",
            release_ns,
        ],
        &[
            "delete",
            "leases.coordination.k8s.io/oxcast-operator",
            "-n",
            release_ns,
        ],
        &["create", "leases.coordination.k8s.io", "-n", elsewhere],
        &["create", "leases.coordination.k8s.io", "-n", "kube-system"],
        &[
            "update",
            "leases.coordination.k8s.io/kube-controller-manager",
            "-n",
            "kube-system",
        ],
    ];
    check_all(cluster, user, denied, None, false);
}

#[tokio::test]
async fn cluster_wide_rbac_grants_what_the_operator_needs_and_nothing_else() {
    let ctx = context("chart-rbac").await;
    // `kubectl auth can-i` resolves `liveapplications.live.oxcast.dev`
    // through discovery: without the CRD the answer is always "no", and
    // another test installing it first must not be what makes this pass.
    install_live_application_crd(ctx.cluster);
    let release = "rbac";
    apply_chart(
        &ctx,
        release,
        ctx.ns(),
        None,
        &["crds.enabled=false".into()],
    )
    .await;
    let user = service_account(release, ctx.ns());
    let elsewhere = namespace(ctx.cluster, "elsewhere").await;
    await_grant(
        ctx.cluster,
        &user,
        &[
            "list",
            "liveapplications.live.oxcast.dev",
            "--all-namespaces",
        ],
    )
    .await;

    for ns in [elsewhere.name(), ctx.ns()] {
        check_all(ctx.cluster, &user, MANAGED_GRANTS, Some(ns), true);
        check_all(ctx.cluster, &user, SECRET_READS, Some(ns), true);
        check_all(ctx.cluster, &user, MANAGED_DENIALS, Some(ns), false);
    }
    check_all(
        ctx.cluster,
        &user,
        &[
            &[
                "watch",
                "liveapplications.live.oxcast.dev",
                "--all-namespaces",
            ],
            &["watch", "deployments.apps", "--all-namespaces"],
            &["watch", "pods", "--all-namespaces"],
            // operator.checkSecrets (default): the metadata-only watch.
            &["watch", "secrets", "--all-namespaces"],
        ],
        None,
        true,
    );
    check_all(ctx.cluster, &user, CLUSTER_DENIALS, None, false);
    check_lease_rules(ctx.cluster, &user, ctx.ns(), elsewhere.name(), true);

    // The same answers for a real token of that ServiceAccount, as the pod
    // would present it.
    let client = ctx
        .cluster
        .service_account_client(ctx.ns(), &format!("{release}-oxcast"))
        .await
        .expect("a token of the chart's ServiceAccount");
    // Secrets: the metadata list the operator makes works, writing one is
    // forbidden.
    let secrets: Api<Secret> = Api::all(client.clone());
    secrets
        .list_metadata(&ListParams::default().limit(1))
        .await
        .expect("the operator may list Secrets' metadata cluster-wide");
    let in_ns: Api<Secret> = Api::namespaced(client.clone(), ctx.ns());
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "not-yours"},
        "stringData": {"secret": "x"},
    }))
    .expect("Secret literal");
    match in_ns.create(&PostParams::default(), &secret).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("creating a Secret must be forbidden, got {other:?}"),
    }
    let config_maps: Api<ConfigMap> = Api::all(client);
    config_maps
        .list(&ListParams::default().limit(1))
        .await
        .expect("the operator may list ConfigMaps cluster-wide");
}

#[tokio::test]
async fn namespaced_rbac_reaches_only_the_watched_namespaces() {
    let ctx = context("chart-rbac-ns").await;
    // `kubectl auth can-i` resolves `liveapplications.live.oxcast.dev`
    // through discovery: without the CRD the answer is always "no", and
    // another test installing it first must not be what makes this pass.
    install_live_application_crd(ctx.cluster);
    let team_a = namespace(ctx.cluster, "team-a").await;
    let team_b = namespace(ctx.cluster, "team-b").await;
    let other = namespace(ctx.cluster, "not-watched").await;
    let release = "rbacns";
    let rendered = apply_chart(
        &ctx,
        release,
        ctx.ns(),
        None,
        &[
            "crds.enabled=false".into(),
            format!("watchNamespaces={{{},{}}}", team_a.name(), team_b.name()),
            // No Secret access at all (checkSecrets' default is covered
            // cluster-wide above).
            "operator.checkSecrets=false".into(),
        ],
    )
    .await;
    assert!(!rendered.has("ClusterRole"), "{:?}", rendered.ids());
    let user = service_account(release, ctx.ns());
    await_grant(
        ctx.cluster,
        &user,
        &[
            "list",
            "liveapplications.live.oxcast.dev",
            "-n",
            team_a.name(),
        ],
    )
    .await;

    for ns in [team_a.name(), team_b.name()] {
        check_all(ctx.cluster, &user, MANAGED_GRANTS, Some(ns), true);
        check_all(ctx.cluster, &user, MANAGED_DENIALS, Some(ns), false);
        check_all(ctx.cluster, &user, SECRET_READS, Some(ns), false);
    }
    // Nothing in a namespace it does not watch, and nothing cluster-wide.
    check_all(
        ctx.cluster,
        &user,
        MANAGED_GRANTS,
        Some(other.name()),
        false,
    );
    check_all(
        ctx.cluster,
        &user,
        &[
            &[
                "list",
                "liveapplications.live.oxcast.dev",
                "--all-namespaces",
            ],
            &["list", "deployments.apps", "--all-namespaces"],
            &["list", "pods", "--all-namespaces"],
            &["list", "secrets", "--all-namespaces"],
            &["get", "secrets", "--all-namespaces"],
        ],
        None,
        false,
    );
    check_all(ctx.cluster, &user, CLUSTER_DENIALS, None, false);
    check_lease_rules(ctx.cluster, &user, ctx.ns(), other.name(), false);
}

/// A `kubectl -l` selector from a LabelSelector (matchLabels and `In`
/// expressions).
fn label_selector(selector: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(labels) = selector["matchLabels"].as_mapping() {
        for (k, v) in labels {
            parts.push(format!(
                "{}={}",
                k.as_str().expect("key"),
                v.as_str().expect("value")
            ));
        }
    }
    if let Some(exprs) = selector["matchExpressions"].as_sequence() {
        for e in exprs {
            assert_eq!(e["operator"].as_str(), Some("In"), "{e:?}");
            parts.push(format!(
                "{} in ({})",
                e["key"].as_str().expect("key"),
                chart::strings(&e["values"]).join(",")
            ));
        }
    }
    parts.join(",")
}

/// A kubeconfig for the test cluster that authenticates with `token` only.
fn token_kubeconfig(cluster: &TestCluster, token: &str, dir: &Path) -> PathBuf {
    let admin: Value = serde_yaml::from_str(
        &std::fs::read_to_string(cluster.kubeconfig()).expect("read the admin kubeconfig"),
    )
    .expect("the admin kubeconfig is YAML");
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": serde_json::to_value(&admin["clusters"][0]["cluster"]).expect("cluster")}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": "operator"}}],
        "current-context": "operator",
    });
    let path = dir.join("operator.kubeconfig");
    std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
        .expect("write kubeconfig");
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs the real operator binary with a token of the chart's
/// ServiceAccount and checks it reconciles examples/minimal.yaml without a
/// single permission error: the chart's RBAC is sufficient.
async fn operator_reconciles_as_the_chart_service_account(namespaced: bool) {
    let ctx = context(if namespaced {
        "chart-op-ns"
    } else {
        "chart-op"
    })
    .await;
    ctx.cluster
        .expect_local("it runs the operator binary against the control plane");
    let bin = chart::operator_binary().unwrap_or_else(|e| panic!("build oxcast-operator: {e}"));
    install_live_application_crd(ctx.cluster);
    let apps_ns = namespace(ctx.cluster, "live-apps").await;
    let release = if namespaced { "opns" } else { "op" };
    let mut sets = vec!["crds.enabled=false".to_string()];
    if namespaced {
        sets.push(format!("watchNamespaces={{{}}}", apps_ns.name()));
        // Its ingest NetworkPolicy lands in the watched namespace.
        sets.push("networkPolicy.enabled=true".to_string());
        // No Secret rule: the operator (--check-secrets=false from the
        // chart's args) must not ask for Secrets either. The cluster-wide
        // run covers the default, which watches them.
        sets.push("operator.checkSecrets=false".to_string());
    }
    let rendered = apply_chart(&ctx, release, ctx.ns(), None, &sets).await;
    let container = &rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0];
    let watch = chart::env_value(container, "OXCAST_WATCH_NAMESPACES")
        .expect("OXCAST_WATCH_NAMESPACES")
        .to_string();

    let sa = format!("{release}-oxcast");
    // Start once the new bindings are in effect, so a permission error in
    // the log can only mean a missing rule.
    let user = service_account(release, ctx.ns());
    await_grant(
        ctx.cluster,
        &user,
        &[
            "watch",
            "liveapplications.live.oxcast.dev",
            "-n",
            apps_ns.name(),
        ],
    )
    .await;
    await_grant(
        ctx.cluster,
        &user,
        &["create", "leases.coordination.k8s.io", "-n", ctx.ns()],
    )
    .await;
    let token = kubectl(
        ctx.cluster,
        &["create", "token", &sa, "-n", ctx.ns(), "--duration=1h"],
    )
    .expect("a token of the chart's ServiceAccount");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = token_kubeconfig(ctx.cluster, token.trim(), dir.path());
    let port = free_port();
    let mut cmd = std::process::Command::new(&bin);
    // The chart's flags and environment, minus what only a pod has.
    let args = chart::strings(&container["args"]);
    assert!(args.iter().any(|a| a.starts_with("--listen=")), "{args:?}");
    cmd.args(args.iter().filter(|a| !a.starts_with("--listen=")))
        .arg(format!("--listen=127.0.0.1:{port}"))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "operator-under-test")
        .env("POD_NAMESPACE", ctx.ns())
        .env("OXCAST_WATCH_NAMESPACES", &watch)
        .env("OXCAST_INGEST_IMAGE", "registry.k8s.io/pause:3.10")
        .env("RUST_LOG", "info")
        .env_remove("KUBERNETES_SERVICE_HOST");
    let operator = Running::spawn(cmd).expect("start oxcast-operator");

    let example = workspace_root().join("examples/minimal.yaml");
    kubectl(
        ctx.cluster,
        &[
            "apply",
            "-n",
            apps_ns.name(),
            "-f",
            example.to_str().expect("utf-8"),
        ],
    )
    .expect("apply examples/minimal.yaml");

    let client = ctx.client.clone();
    let apps: Api<LiveApplication> = Api::namespaced(client.clone(), apps_ns.name());
    let reconciled =
        cluster::wait_for_condition(apps, "live", TIMEOUT, |app: Option<&LiveApplication>| {
            app.and_then(|a| a.status.as_ref())
                .is_some_and(|s| !s.conditions.is_empty() && s.observed_generation.is_some())
        })
        .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), apps_ns.name());
    let services: Api<Service> = Api::namespaced(client.clone(), apps_ns.name());
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), apps_ns.name());
    let leases: Api<Lease> = Api::namespaced(client.clone(), ctx.ns());
    let deployment = deployments
        .get_opt("live")
        .await
        .expect("read Deployment live");
    let rtmp = services
        .get_opt("live-rtmp")
        .await
        .expect("read Service live-rtmp");
    let http = services
        .get_opt("live-http")
        .await
        .expect("read Service live-http");
    let config = config_maps
        .get_opt("live-config")
        .await
        .expect("read ConfigMap live-config");
    let lease = leases
        .get_opt("oxcast-operator")
        .await
        .expect("read the Lease");
    // The ingest pods' Role and RoleBinding: creating them needs the Lease
    // verbs they grant (RBAC escalation prevention), so their existence
    // proves the chart gives the operator those too.
    let ingest_role = cluster::eventually("the ingest Role and RoleBinding", TIMEOUT, || {
        let roles: Api<Role> = Api::namespaced(client.clone(), apps_ns.name());
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), apps_ns.name());
        async move {
            let role = roles
                .get_opt("live-ingest")
                .await
                .map_err(|e| e.to_string())?;
            let binding = bindings
                .get_opt("live-ingest")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(role.zip(binding))
        }
    })
    .await;

    // The chart's NetworkPolicy selects exactly the pods the operator
    // made, and admits the ports they listen on.
    let policy_ports = if namespaced {
        let policy = rendered
            .of_kind("NetworkPolicy")
            .find(|p| p["metadata"]["namespace"].as_str() == Some(apps_ns.name()))
            .expect("an ingest NetworkPolicy in the watched namespace");
        let selector = label_selector(&policy["spec"]["podSelector"]);
        let ns = apps_ns.name().to_string();
        let found = cluster::eventually("the ingest pods", TIMEOUT, || {
            let selector = selector.clone();
            let ns = ns.clone();
            async move {
                let ports = kubectl(
                    ctx.cluster,
                    &[
                        "get",
                        "pods",
                        "-n",
                        &ns,
                        "-l",
                        &selector,
                        "-o",
                        "jsonpath={.items[*].spec.containers[*].ports[*].containerPort}",
                    ],
                )?;
                Ok::<_, String>(Some(ports).filter(|p| !p.trim().is_empty()))
            }
        })
        .await;
        Some((found, policy.clone()))
    } else {
        None
    };
    let finished = operator.stop(Duration::from_secs(10));
    let log = format!("{}{}", finished.stdout, finished.stderr);
    reconciled.unwrap_or_else(|e| {
        panic!("the operator never reported status: {e}\noperator log:\n{log}")
    });
    assert!(deployment.is_some(), "no Deployment live\n{log}");
    assert!(rtmp.is_some() && http.is_some(), "Services missing\n{log}");
    assert!(config.is_some(), "no ConfigMap live-config\n{log}");
    let (role, _) = ingest_role
        .unwrap_or_else(|e| panic!("no ingest Role/RoleBinding live-ingest: {e}\n{log}"));
    assert_eq!(
        role.rules.unwrap_or_default()[0].verbs,
        oxcast_operator::build::INGEST_LEASE_VERBS
    );
    let holder = lease
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert_eq!(
        holder, "operator-under-test",
        "the operator did not take the Lease\n{log}"
    );
    if let Some((found, policy)) = policy_ports {
        let ports = found.unwrap_or_else(|e| {
            panic!("no pod matches the NetworkPolicy's selector: {e}\noperator log:\n{log}")
        });
        let mut listening: Vec<u64> = ports
            .split_whitespace()
            .map(|p| p.parse().expect("a port number"))
            .collect();
        listening.sort();
        listening.dedup();
        let mut admitted: Vec<u64> = policy["spec"]["ingress"]
            .as_sequence()
            .expect("ingress rules")
            .iter()
            .flat_map(|r| r["ports"].as_sequence().cloned().unwrap_or_default())
            .map(|p| p["port"].as_u64().expect("numeric port"))
            .collect();
        admitted.sort();
        assert_eq!(
            listening, admitted,
            "the ingest pods listen on {listening:?}, the NetworkPolicy admits {admitted:?}"
        );
    }
    // kube-rs reports a 403 as `... forbidden: User ... cannot ...`.
    assert!(
        !log.to_ascii_lowercase().contains("forbidden"),
        "the operator hit a permission error:\n{log}"
    );
}

#[tokio::test]
async fn operator_runs_with_the_cluster_wide_rbac_of_the_chart() {
    operator_reconciles_as_the_chart_service_account(false).await;
}

#[tokio::test]
async fn operator_runs_with_the_namespaced_rbac_of_the_chart() {
    operator_reconciles_as_the_chart_service_account(true).await;
}
