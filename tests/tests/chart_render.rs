//! The Helm chart without a cluster: `helm lint --strict`, the values schema,
//! and what the templates render, with Helm 3 and Helm 4 alike.

use oxcast_tests::chart::{
    self, app_version, chart_version, env_value, name, strings, values_files, Helm, Rendered,
};
use serde_yaml::Value;

const NS: &str = "oxcast-system";

fn set(args: &[&str]) -> Vec<String> {
    args.iter()
        .flat_map(|a| ["--set".to_string(), a.to_string()])
        .collect()
}

fn render_with(helm: Helm, args: &[String]) -> Rendered {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    helm.render("rel", NS, &args)
}

fn operator_container(r: &Rendered) -> &Value {
    let deploy = r.one("Deployment");
    let containers = deploy["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one operator container");
    &containers[0]
}

#[test]
fn lint_strict_passes_with_every_values_file_on_helm_3_and_4() {
    let files = values_files();
    assert!(
        files.len() >= 3,
        "expected the ci/ values files, found {files:?}"
    );
    for helm in Helm::ALL {
        let mut cmd = helm.command();
        cmd.arg("lint").arg("--strict").arg(chart::chart_dir());
        let out = chart::run_helm(cmd).unwrap_or_else(|e| panic!("{helm:?} lint --strict: {e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
        for file in &files {
            let mut cmd = helm.command();
            cmd.arg("lint")
                .arg("--strict")
                .arg(chart::chart_dir())
                .arg("-f")
                .arg(file);
            chart::run_helm(cmd)
                .unwrap_or_else(|e| panic!("{helm:?} lint --strict -f {}: {e}", file.display()));
        }
    }
}

#[test]
fn helm_3_and_4_render_the_same_manifests() {
    for file in values_files() {
        let f = file.to_str().expect("utf-8 path");
        let v3 = Helm::V3
            .template("rel", NS, &["-f", f])
            .expect("helm 3 template");
        let v4 = Helm::V4
            .template("rel", NS, &["-f", f])
            .expect("helm 4 template");
        let (a, b) = (Rendered::parse(&v3), Rendered::parse(&v4));
        assert!(!a.objects.is_empty(), "{f} rendered nothing");
        assert_eq!(a.objects, b.objects, "Helm 3 and 4 disagree on {f}");
    }
}

/// Each case: the `--set` that is wrong, and what the error must point at.
const WRONG_VALUES: &[(&str, &[&str])] = &[
    ("operator.replicas=two", &["/operator/replicas", "integer"]),
    ("crds.enabled=yes", &["/crds/enabled", "boolean"]),
    ("operator.logFormat=xml", &["/operator/logFormat"]),
    ("operator.metricsPort=70000", &["/operator/metricsPort"]),
    ("operator.replica=2", &["/operator", "replica"]),
    (
        "watchNamespaces[0]=Not_A_Namespace",
        &["/watchNamespaces/0"],
    ),
    ("operator.image.digest=latest", &["/operator/image/digest"]),
];

#[test]
fn values_schema_rejects_wrongly_typed_values_with_a_clear_message() {
    for helm in Helm::ALL {
        for (wrong, expected) in WRONG_VALUES {
            let err = helm
                .template("rel", NS, &["--set", wrong])
                .expect_err(&format!("{helm:?} accepted --set {wrong}"));
            assert!(
                err.contains("values don't meet the specifications of the schema"),
                "{helm:?} --set {wrong}: not a schema error: {err}"
            );
            for needle in *expected {
                assert!(
                    err.contains(needle),
                    "{helm:?} --set {wrong}: the error does not mention {needle:?}: {err}"
                );
            }
        }
    }
}

/// Every key of values.yaml is described in the schema, so `additionalProperties:
/// false` cannot reject a default and no value goes unchecked.
#[test]
fn values_schema_covers_every_default_value() {
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart::chart_file("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart::chart_file("values.schema.json")).expect("schema"),
    )
    .expect("values.schema.json is JSON");
    let mut missing = Vec::new();
    walk(&values, &schema, "", &mut missing);
    assert!(
        missing.is_empty(),
        "values without a schema entry: {missing:?}"
    );

    fn walk(v: &Value, s: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        let Some(map) = v.as_mapping() else { return };
        let props = &s["properties"];
        for (k, child) in map {
            let k = k.as_str().expect("string keys");
            let p = format!("{path}.{k}");
            match props.get(k) {
                None => missing.push(p),
                Some(sub) => {
                    assert!(
                        sub.get("description").is_some() || sub.get("properties").is_some(),
                        "{p} has no description in the schema"
                    );
                    // Free-form Kubernetes objects (resources, probes, ...)
                    // are not described key by key.
                    if sub.get("properties").is_some() {
                        walk(child, sub, &p, missing);
                    }
                }
            }
        }
    }
}

#[test]
fn defaults_run_a_hardened_operator_at_the_chart_app_version() {
    let r = Helm::V4.render("rel", NS, &[]);
    let version = app_version();
    let deploy = r.one("Deployment");
    assert_eq!(name(deploy), "rel-oxcast");
    assert_eq!(deploy["metadata"]["namespace"].as_str(), Some(NS));
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"].as_str(), Some("rel-oxcast"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );

    let c = operator_container(&r);
    assert_eq!(
        c["image"].as_str(),
        Some(format!("ghcr.io/oxcast/oxcast-operator:{version}").as_str())
    );
    assert_eq!(
        env_value(c, "OXCAST_INGEST_IMAGE"),
        Some(format!("ghcr.io/oxcast/oxcast-ingest:{version}").as_str())
    );
    assert_eq!(env_value(c, "OXCAST_WATCH_NAMESPACES"), Some(""));
    let env_names = strings(&Value::Sequence(
        c["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .map(|e| e["name"].clone())
            .collect(),
    ));
    for var in ["POD_NAME", "POD_NAMESPACE"] {
        assert!(
            env_names.contains(&var.to_string()),
            "{var} missing: {env_names:?}"
        );
    }
    let args = strings(&c["args"]);
    for arg in [
        "--leader-election=true",
        "--lease-name=oxcast-operator",
        "--listen=0.0.0.0:8080",
        "--log-format=json",
        "--check-secrets=true",
    ] {
        assert!(
            args.contains(&arg.to_string()),
            "{arg} missing from {args:?}"
        );
    }

    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    for o in &r.objects {
        let labels = &o["metadata"]["labels"];
        if chart::kind(o) == "CustomResourceDefinition" {
            continue;
        }
        assert_eq!(
            labels["helm.sh/chart"].as_str(),
            Some(format!("oxcast-{}", chart_version()).as_str()),
            "{} lacks the chart label",
            name(o)
        );
        assert_eq!(labels["app.kubernetes.io/instance"].as_str(), Some("rel"));
    }

    // Optional objects stay off by default.
    for kind in ["NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor"] {
        assert!(!r.has(kind), "{kind} rendered by default");
    }
}

#[test]
fn default_rbac_is_one_cluster_role_without_wildcards_or_secret_writes() {
    let r = Helm::V4.render("rel", NS, &[]);
    let role = r.one("ClusterRole");
    let rules = role["rules"].as_sequence().expect("rules");
    for rule in rules {
        let resources = strings(&rule["resources"]);
        let verbs = strings(&rule["verbs"]);
        let groups = strings(&rule["apiGroups"]);
        for forbidden in [
            "*",
            "namespaces",
            "nodes",
            "clusterroles",
            "clusterrolebindings",
            "serviceaccounts/token",
        ] {
            assert!(!resources.contains(&forbidden.to_string()), "{rule:?}");
        }
        // The ingest pods' ServiceAccount, Role and RoleBinding: applied,
        // never deleted (the garbage collector does), no escalate or bind.
        if resources
            .iter()
            .any(|r| ["serviceaccounts", "roles", "rolebindings"].contains(&r.as_str()))
        {
            assert_eq!(
                verbs,
                ["get", "list", "watch", "create", "patch"],
                "{rule:?}"
            );
        }
        if resources.contains(&"roles".to_string())
            || resources.contains(&"rolebindings".to_string())
        {
            assert_eq!(groups, ["rbac.authorization.k8s.io"], "{rule:?}");
            assert_eq!(resources, ["roles", "rolebindings"], "{rule:?}");
        }
        // Leases: exactly the verbs the Role it creates for the ingest pods
        // grants (RBAC lets it grant only what it holds).
        if resources.contains(&"leases".to_string()) {
            assert_eq!(resources, ["leases"], "{rule:?}");
            assert_eq!(groups, ["coordination.k8s.io"], "{rule:?}");
            assert_eq!(
                verbs,
                oxcast_operator::build::INGEST_LEASE_VERBS,
                "{rule:?}"
            );
        }
        // EndpointSlices are only watched (Ready waits for the RTMP Service's).
        if resources.contains(&"endpointslices".to_string()) {
            assert_eq!(resources, ["endpointslices"], "{rule:?}");
            assert_eq!(groups, ["discovery.k8s.io"], "{rule:?}");
            assert_eq!(verbs, ["list", "watch"], "{rule:?}");
        }
        // Secrets are only watched, metadata only, to report a missing
        // key-token Secret (operator.checkSecrets, on by default).
        if resources.contains(&"secrets".to_string()) {
            assert_eq!(secret_rule(rule), Some(()), "{rule:?}");
        }
        // Pods are only watched (their states feed the Degraded condition).
        if resources.contains(&"pods".to_string()) {
            assert_eq!(resources, ["pods"], "{rule:?}");
            assert_eq!(verbs, ["get", "list", "watch"], "{rule:?}");
        }
        // Nothing it never calls: no update on its children (server-side
        // apply patches) and no deleting of Services or ConfigMaps.
        if resources
            .iter()
            .any(|r| r != "liveapplications/finalizers" && r != "leases")
        {
            assert!(!verbs.contains(&"update".to_string()), "{rule:?}");
        }
        if resources.contains(&"services".to_string()) {
            assert!(!verbs.contains(&"delete".to_string()), "{rule:?}");
        }
        assert!(!verbs.contains(&"*".to_string()), "{rule:?}");
        assert!(!verbs.contains(&"escalate".to_string()), "{rule:?}");
        assert!(!verbs.contains(&"bind".to_string()), "{rule:?}");
        assert!(!verbs.contains(&"impersonate".to_string()), "{rule:?}");
        assert!(!groups.contains(&"*".to_string()), "{rule:?}");
    }
    let granted = |resource: &str| {
        rules
            .iter()
            .any(|r| strings(&r["resources"]).contains(&resource.to_string()))
    };
    for needed in [
        "serviceaccounts",
        "roles",
        "rolebindings",
        "leases",
        "poddisruptionbudgets",
        "endpointslices",
        "secrets",
    ] {
        assert!(granted(needed), "{needed} missing from {rules:?}");
    }
    let binding = r.one("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"].as_str(), Some("rel-oxcast"));
    assert_eq!(binding["subjects"][0]["name"].as_str(), Some("rel-oxcast"));
    assert_eq!(binding["subjects"][0]["namespace"].as_str(), Some(NS));

    // Leader election: a Role in the release namespace, naming its Lease.
    let lease_role = r
        .of_kind("Role")
        .find(|o| name(o) == "rel-oxcast-leader-election")
        .expect("leader election Role");
    assert_eq!(lease_role["metadata"]["namespace"].as_str(), Some(NS));
    let named = lease_role["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .find(|r| !r["resourceNames"].is_null())
        .expect("a rule limited to the Lease's name");
    assert_eq!(strings(&named["resourceNames"]), ["oxcast-operator"]);

    let no_election = render_with(Helm::V4, &set(&["operator.leaderElection.enabled=false"]));
    assert!(!no_election
        .of_kind("Role")
        .any(|o| name(o).ends_with("leader-election")));
    let args = strings(&operator_container(&no_election)["args"]);
    assert!(
        args.contains(&"--leader-election=false".to_string()),
        "{args:?}"
    );
}

/// `Some` if `rule` is the checkSecrets rule: get, list and watch on core
/// Secrets, nothing else.
fn secret_rule(rule: &Value) -> Option<()> {
    (strings(&rule["apiGroups"]) == [""]
        && strings(&rule["resources"]) == ["secrets"]
        && strings(&rule["verbs"]) == ["get", "list", "watch"]
        && rule["resourceNames"].is_null())
    .then_some(())
}

fn secret_rules(role: &Value) -> Vec<&Value> {
    role["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .filter(|r| strings(&r["resources"]).contains(&"secrets".to_string()))
        .collect()
}

#[test]
fn check_secrets_adds_the_secret_rule_and_false_drops_it_and_the_check() {
    for namespaced in [false, true] {
        let mut values = vec![];
        if namespaced {
            values.push("watchNamespaces={team-a,team-b}");
        }
        let on = render_with(Helm::V4, &set(&values));
        values.push("operator.checkSecrets=false");
        let off = render_with(Helm::V4, &set(&values));
        let roles = |r: &Rendered| -> Vec<Value> {
            let kind = if namespaced { "Role" } else { "ClusterRole" };
            r.of_kind(kind)
                .filter(|o| name(o) == "rel-oxcast")
                .cloned()
                .collect()
        };
        let (roles_on, roles_off) = (roles(&on), roles(&off));
        assert_eq!(roles_on.len(), if namespaced { 2 } else { 1 });
        assert_eq!(roles_off.len(), roles_on.len());
        for role in &roles_on {
            let rules = secret_rules(role);
            assert_eq!(rules.len(), 1, "{rules:?}");
            assert_eq!(secret_rule(rules[0]), Some(()), "{rules:?}");
        }
        for role in &roles_off {
            assert!(secret_rules(role).is_empty(), "{role:?}");
        }
        // Nothing else changes: the same rules without the Secret one.
        for (a, b) in roles_on.iter().zip(&roles_off) {
            let without: Vec<&Value> = a["rules"]
                .as_sequence()
                .expect("rules")
                .iter()
                .filter(|r| secret_rule(r).is_none())
                .collect();
            let off_rules: Vec<&Value> = b["rules"].as_sequence().expect("rules").iter().collect();
            assert_eq!(without, off_rules);
        }
        let args = strings(&operator_container(&off)["args"]);
        assert!(
            args.contains(&"--check-secrets=false".to_string()),
            "{args:?}"
        );
    }
}

#[test]
fn watch_namespaces_switch_to_namespaced_roles_only() {
    let r = render_with(Helm::V4, &set(&["watchNamespaces={team-b,team-a,team-b}"]));
    assert!(!r.has("ClusterRole"), "{:?}", r.ids());
    assert!(!r.has("ClusterRoleBinding"), "{:?}", r.ids());
    let mut role_namespaces: Vec<&str> = r
        .of_kind("Role")
        .filter(|o| name(o) == "rel-oxcast")
        .map(|o| o["metadata"]["namespace"].as_str().expect("namespace"))
        .collect();
    role_namespaces.sort();
    assert_eq!(
        role_namespaces,
        ["team-a", "team-b"],
        "one Role per namespace, no duplicates"
    );
    let bindings: Vec<&Value> = r
        .of_kind("RoleBinding")
        .filter(|o| name(o) == "rel-oxcast")
        .collect();
    assert_eq!(bindings.len(), 2);
    // The same rules as the cluster-wide install, Lease verbs included
    // (each watched namespace gets ingest Roles).
    let cluster_wide = Helm::V4.render("rel", NS, &[]);
    for role in r.of_kind("Role").filter(|o| name(o) == "rel-oxcast") {
        assert_eq!(role["rules"], cluster_wide.one("ClusterRole")["rules"]);
    }
    for b in bindings {
        assert_eq!(b["subjects"][0]["namespace"].as_str(), Some(NS));
    }
    assert_eq!(
        env_value(operator_container(&r), "OXCAST_WATCH_NAMESPACES"),
        Some("team-a,team-b")
    );
}

#[test]
fn crd_is_guarded_by_crds_enabled_and_kept_with_crds_keep() {
    let crd_name = "liveapplications.live.oxcast.dev";
    let r = Helm::V4.render("rel", NS, &[]);
    let crd = r.one("CustomResourceDefinition");
    assert_eq!(name(crd), crd_name);
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(),
        Some("keep")
    );

    let not_kept = render_with(Helm::V4, &set(&["crds.keep=false"]));
    assert!(not_kept.one("CustomResourceDefinition")["metadata"]["annotations"].is_null());

    let without = render_with(Helm::V4, &set(&["crds.enabled=false"]));
    assert!(
        !without.has("CustomResourceDefinition"),
        "{:?}",
        without.ids()
    );
    assert!(without.has("Deployment"));
}

#[test]
fn image_overrides_tags_and_digests() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let r = render_with(
        Helm::V4,
        &set(&[
            "operator.image.repository=registry.example/op",
            "operator.image.tag=dev",
            &format!("ingest.image.digest={digest}"),
        ]),
    );
    let c = operator_container(&r);
    assert_eq!(c["image"].as_str(), Some("registry.example/op:dev"));
    assert_eq!(
        env_value(c, "OXCAST_INGEST_IMAGE"),
        Some(format!("ghcr.io/oxcast/oxcast-ingest@{digest}").as_str())
    );
}

#[test]
fn production_values_add_monitoring_disruption_budget_and_network_policies() {
    let file = chart::chart_file("ci/production-values.yaml");
    let r = Helm::V4.render("rel", NS, &["-f", file.to_str().expect("utf-8")]);

    let sm = r.one("ServiceMonitor");
    assert_eq!(
        sm["metadata"]["labels"]["release"].as_str(),
        Some("prometheus")
    );
    assert_eq!(sm["spec"]["endpoints"][0]["port"].as_str(), Some("metrics"));
    let svc = r.one("Service");
    assert_eq!(
        svc["spec"]["ports"][0]["targetPort"].as_str(),
        Some("metrics")
    );
    // The ServiceMonitor finds the Service, and the Service the pods.
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("labels")
    {
        assert_eq!(&svc["metadata"]["labels"][k], v);
    }
    let pod_labels = &r.one("Deployment")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(&pod_labels[k], v);
    }

    let pdb = r.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_u64(), Some(1));

    let ingest = r
        .of_kind("NetworkPolicy")
        .find(|o| name(o) == "rel-oxcast-ingest")
        .expect("ingest NetworkPolicy");
    assert_eq!(ingest["metadata"]["namespace"].as_str(), Some(NS));
    assert_eq!(strings(&ingest["spec"]["policyTypes"]), ["Ingress"]);
    let mut ports: Vec<(u64, String)> = ingest["spec"]["ingress"]
        .as_sequence()
        .expect("ingress rules")
        .iter()
        .flat_map(|rule| rule["ports"].as_sequence().expect("ports").clone())
        .map(|p| {
            (
                p["port"].as_u64().expect("numeric port"),
                p["protocol"].as_str().expect("protocol").to_string(),
            )
        })
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        [
            (1935, "TCP".to_string()),
            (8080, "TCP".to_string()),
            (9090, "TCP".to_string())
        ]
    );
    // RTMP from anywhere (no `from`), HTTP only from the ingress controller.
    let rules = ingest["spec"]["ingress"].as_sequence().expect("rules");
    assert!(rules[0]["from"].is_null());
    assert_eq!(
        rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            .as_str(),
        Some("ingress-nginx")
    );
    // The ingest ops port (metrics) to whoever may scrape metrics.
    assert_eq!(
        rules[2]["ports"][0]["port"].as_u64(),
        Some(u64::from(
            oxcast_operator::build::OPS_CONTAINER_PORT.unsigned_abs()
        ))
    );
    assert!(r
        .of_kind("NetworkPolicy")
        .any(|o| name(o) == "rel-oxcast-operator"));

    assert_eq!(r.one("Deployment")["spec"]["replicas"].as_u64(), Some(2));
    assert!(operator_container(&r)["image"]
        .as_str()
        .expect("image")
        .contains("@sha256:"));
}

#[test]
fn network_policies_follow_the_watched_namespaces() {
    let r = render_with(
        Helm::V4,
        &set(&["networkPolicy.enabled=true", "watchNamespaces={a,b}"]),
    );
    let mut namespaces: Vec<&str> = r
        .of_kind("NetworkPolicy")
        .filter(|o| name(o) == "rel-oxcast-ingest")
        .map(|o| o["metadata"]["namespace"].as_str().expect("namespace"))
        .collect();
    namespaces.sort();
    assert_eq!(namespaces, ["a", "b"]);

    let explicit = render_with(
        Helm::V4,
        &set(&[
            "networkPolicy.enabled=true",
            "networkPolicy.namespaces={media}",
        ]),
    );
    let namespaces: Vec<&str> = explicit
        .of_kind("NetworkPolicy")
        .filter(|o| name(o) == "rel-oxcast-ingest")
        .map(|o| o["metadata"]["namespace"].as_str().expect("namespace"))
        .collect();
    assert_eq!(namespaces, ["media"]);
}

#[test]
fn service_monitor_without_the_metrics_service_fails_with_a_reason() {
    let err = Helm::V4
        .template(
            "rel",
            NS,
            &[
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "metrics.service.enabled=false",
            ],
        )
        .expect_err("a ServiceMonitor without a Service to scrape must not render");
    assert!(err.contains("metrics.service.enabled"), "{err}");
}

/// Helm 4 renders NOTES offline; Helm 3's `install --dry-run=client` wants a
/// cluster, so chart_cluster.rs checks its NOTES on a real install.
#[test]
fn notes_tell_how_to_create_a_live_application_and_find_its_rtmp_url() {
    let install_dry_run = |extra: &[&str]| {
        let mut cmd = Helm::V4.command();
        cmd.args(["install", "rel"])
            .arg(chart::chart_dir())
            .args(["--namespace", NS, "--dry-run=client"])
            .args(extra);
        chart::run_helm(cmd).unwrap_or_else(|e| panic!("helm install --dry-run {extra:?}: {e}"))
    };
    chart::assert_notes_explain_the_workflow(&install_dry_run(&[]), "rel", "");
    chart::assert_notes_explain_the_workflow(
        &install_dry_run(&["--set", "watchNamespaces={media}"]),
        "rel",
        "media",
    );
}
