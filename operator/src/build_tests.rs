//! Field assertions on the objects built for each example manifest.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde::Deserialize;

use super::*;
use crate::names::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY};

const IMAGE: &str = "registry.example/oxcast-ingest:test";

fn settings() -> BuildSettings {
    BuildSettings {
        default_image: IMAGE.to_string(),
    }
}

/// The LiveApplication in `examples/<file>`, as the API server would hand
/// it to the operator (namespace and uid set, defaults filled in).
fn example(text: &str) -> LiveApplication {
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(doc).expect("examples are YAML");
        if value["kind"] == "LiveApplication" {
            let mut app: LiveApplication =
                serde_json::from_value(value).expect("a valid LiveApplication");
            app.metadata.namespace = Some("media".to_string());
            app.metadata.uid = Some("6b1f3c1e-0000-4000-8000-000000000001".to_string());
            return app;
        }
    }
    panic!("no LiveApplication in the example");
}

fn minimal() -> LiveApplication {
    example(include_str!("../../examples/minimal.yaml"))
}

fn scale_out() -> LiveApplication {
    example(include_str!("../../examples/scale-out.yaml"))
}

fn stream_keys() -> LiveApplication {
    example(include_str!("../../examples/stream-keys.yaml"))
}

fn encrypted() -> LiveApplication {
    example(include_str!("../../examples/encrypted.yaml"))
}

fn pod(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod template spec")
}

fn container<'a>(d: &'a Deployment, name: &str) -> &'a Container {
    pod(d)
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(key).cloned())
}

fn volume<'a>(d: &'a Deployment, name: &str) -> &'a Volume {
    pod(d)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn assert_restricted(d: &Deployment) {
    let pod = pod(d);
    let psc = pod.security_context.as_ref().expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
    for c in &pod.containers {
        let sc = c
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()]),
            "{}",
            c.name
        );
        assert!(
            c.readiness_probe.is_some() && c.liveness_probe.is_some(),
            "{}",
            c.name
        );
        let pre_stop = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|p| p.sleep.as_ref())
            .map(|s| s.seconds);
        assert_eq!(pre_stop, Some(5), "{}: the default preStopDelay", c.name);
    }
}

fn assert_owned(meta: &ObjectMeta, app: &LiveApplication) {
    let refs = meta.owner_references.as_ref().expect("owner references");
    assert_eq!(refs.len(), 1);
    let owner = &refs[0];
    assert_eq!(owner.kind, "LiveApplication");
    assert_eq!(owner.api_version, "live.oxcast.dev/v1alpha1");
    assert_eq!(Some(&owner.uid), app.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(owner.block_owner_deletion, Some(true));
    assert_eq!(meta.namespace.as_deref(), Some("media"));
    let labels = meta.labels.as_ref().expect("labels");
    assert_eq!(
        labels.get(LABEL_MANAGED_BY).map(String::as_str),
        Some("oxcast-operator")
    );
    assert_eq!(labels.get(LABEL_INSTANCE), app.metadata.name.as_ref());
    assert!(
        meta.annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION_DESIRED_HASH)),
        "every child carries the desired hash"
    );
}

/// The rendered config file, as the server reads it.
fn ingest_config_of(d: &Desired) -> oxcast_crds::IngestConfig {
    serde_yaml::from_str(&d.config_map.data.as_ref().expect("data")["config.yaml"]).expect("config")
}

/// Readiness and liveness on the ops listener (`--ops-listen`).
fn assert_ops_probes(c: &Container) {
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{}: an HTTP probe on {path}", c.name));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("ops".to_string()));
        assert!(probe.as_ref().and_then(|p| p.tcp_socket.as_ref()).is_none());
    }
}

/// The ingest pods run as `<app>-ingest` and know their name and namespace
/// (Lease holder and namespace).
fn assert_replica_identity(ingest: &Deployment) {
    let app = ingest.metadata.name.as_deref().expect("name");
    assert_eq!(
        pod(ingest).service_account_name,
        Some(format!("{app}-ingest"))
    );
    let env: Vec<_> = container(ingest, "ingest")
        .env
        .iter()
        .flatten()
        .map(|e| {
            (
                e.name.as_str(),
                e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.as_str()),
            )
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", Some("metadata.name")),
            ("POD_NAMESPACE", Some("metadata.namespace"))
        ]
    );
}

/// API credentials: mounted into the ingest container alone (never through
/// the pod-wide automount), and only when `leases`.
fn assert_api_access(d: &Deployment, leases: bool) {
    let pod = pod(d);
    assert_eq!(pod.automount_service_account_token, Some(false));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "kube-api-access");
    assert_eq!(volume.is_some(), leases, "{:?}", pod.volumes);
    for c in &pod.containers {
        let mounted: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.mount_path == SERVICE_ACCOUNT_DIR)
            .collect();
        let want = leases && c.name == "ingest";
        assert_eq!(mounted.len(), usize::from(want), "{}", c.name);
        if want {
            assert_eq!(mounted[0].name, "kube-api-access");
            assert_eq!(mounted[0].read_only, Some(true));
        }
    }
    if let Some(volume) = volume {
        let sources = volume
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .expect("a projected volume");
        let token = sources
            .iter()
            .find_map(|s| s.service_account_token.as_ref())
            .expect("a token");
        assert_eq!(token.path, "token");
        assert!(token.audience.is_none(), "the API server's own audience");
        let ca = sources
            .iter()
            .find_map(|s| s.config_map.as_ref())
            .expect("the cluster CA");
        assert_eq!(ca.name, "kube-root-ca.crt");
        let ns = sources
            .iter()
            .find_map(|s| s.downward_api.as_ref())
            .and_then(|d| d.items.as_ref())
            .expect("the namespace file");
        assert_eq!(ns[0].path, "namespace");
    }
}

#[test]
fn minimal_example_is_one_pod_with_an_http_sidecar_on_an_empty_dir() {
    let app = minimal();
    let d = build(&app, &settings()).expect("build");
    assert!(d.pvc.is_none());
    assert!(d.http_deployment.is_none());
    assert_owned(&d.config_map.metadata, &app);

    let ingest = &d.ingest_deployment;
    assert_owned(&ingest.metadata, &app);
    assert_eq!(ingest.metadata.name.as_deref(), Some("live"));
    let spec = ingest.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.selector
            .match_labels
            .as_ref()
            .and_then(|l| l.get(LABEL_COMPONENT))
            .map(String::as_str),
        Some("ingest")
    );
    assert_restricted(ingest);
    let names: Vec<_> = pod(ingest)
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["ingest", "http"]);

    let rtmp = container(ingest, "ingest");
    assert_eq!(
        rtmp.image.as_deref(),
        Some(IMAGE),
        "the operator's default image"
    );
    assert_eq!(rtmp.command, Some(vec!["oxcast-ingest".to_string()]));
    assert_eq!(
        rtmp.args.as_deref().expect("args"),
        [
            "rtmp",
            "--config",
            "/etc/oxcast/config.yaml",
            "--hls-root",
            "/var/lib/oxcast/hls",
            "--rtmp-listen",
            "0.0.0.0:1935",
            "--ops-listen",
            "0.0.0.0:9090",
            "--log-format",
            "json"
        ]
    );
    let ports: Vec<_> = rtmp
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(ports, [(Some("rtmp"), 1935), (Some("ops"), 9090)]);
    assert_ops_probes(rtmp);
    assert_replica_identity(ingest);
    // An emptyDir is one pod's: ownership stays in-process, and the ingest
    // container gets no API credentials.
    assert_api_access(ingest, false);
    let config = ingest_config_of(&d);
    assert_eq!(config.ownership, oxcast_crds::OwnershipSettings::default());

    let http = container(ingest, "http");
    assert_eq!(
        http.args.as_deref().expect("args"),
        [
            "http",
            "--config",
            "/etc/oxcast/config.yaml",
            "--hls-root",
            "/var/lib/oxcast/hls",
            "--http-listen",
            "0.0.0.0:8080",
            "--log-format",
            "json"
        ]
    );
    let port = &http.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("http"), 8080)
    );
    let get = |p: &Option<Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.path.clone())
    };
    assert_eq!(get(&http.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(get(&http.readiness_probe).as_deref(), Some("/readyz"));
    let hls_mount = http
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "hls")
        .expect("hls mount");
    assert_eq!(
        hls_mount.read_only,
        Some(true),
        "the HTTP server only reads"
    );

    let hls = volume(ingest, "hls");
    assert!(hls.empty_dir.is_some() && hls.persistent_volume_claim.is_none());
    assert_eq!(
        volume(ingest, "config")
            .config_map
            .as_ref()
            .map(|c| c.name.as_str()),
        Some("live-config")
    );
    // 5 s preStop + 10 s default maxFragment + 10 s margin.
    assert_eq!(pod(ingest).termination_grace_period_seconds, Some(25));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("RollingUpdate")
    );

    let rtmp_svc = d.rtmp_service.spec.as_ref().expect("spec");
    assert_eq!(d.rtmp_service.metadata.name.as_deref(), Some("live-rtmp"));
    assert_eq!(rtmp_svc.type_.as_deref(), Some("LoadBalancer"));
    let port = &rtmp_svc.ports.as_ref().expect("ports")[0];
    assert_eq!(port.port, 1935);
    assert_eq!(port.target_port, Some(IntOrString::String("rtmp".into())));
    assert_eq!(
        rtmp_svc.selector,
        Some(Names::new("live").selector(Component::Ingest))
    );

    let http_svc = d.http_service.spec.as_ref().expect("spec");
    assert_eq!(d.http_service.metadata.name.as_deref(), Some("live-http"));
    assert_eq!(http_svc.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(http_svc.ports.as_ref().expect("ports")[0].port, 80);
    assert_eq!(
        http_svc.selector,
        Some(Names::new("live").selector(Component::Ingest)),
        "in sidecar mode the ingest pods serve HTTP"
    );

    // The ConfigMap is the server's config, reference defaults.
    let text = &d.config_map.data.as_ref().expect("data")["config.yaml"];
    let config: oxcast_crds::IngestConfig =
        serde_yaml::from_str(text).expect("the server can read it");
    assert_eq!(config, oxcast_crds::IngestConfig::default());
    assert_eq!(
        template_annotation(ingest, ANNOTATION_INGEST_CONFIG_CHECKSUM),
        render::ingest_checksum(&config).ok()
    );
    assert_eq!(
        template_annotation(ingest, ANNOTATION_HTTP_CONFIG_CHECKSUM),
        render::http_checksum(&config).ok(),
        "the sidecar runs in the ingest pods"
    );

    let obsolete: Vec<_> = d
        .obsolete
        .iter()
        .map(|o| (o.kind, o.name.as_str()))
        .collect();
    assert_eq!(
        obsolete,
        [
            (ObsoleteKind::Deployment, "live-http"),
            (ObsoleteKind::PersistentVolumeClaim, "live-hls"),
            (ObsoleteKind::PodDisruptionBudget, "live-ingest")
        ]
    );
}

#[test]
fn scale_out_example_shares_a_read_write_many_claim_with_an_http_deployment() {
    let app = scale_out();
    let d = build(&app, &settings()).expect("build");
    let pvc = d.pvc.as_ref().expect("a claim");
    assert_owned(&pvc.metadata, &app);
    assert_eq!(pvc.metadata.name.as_deref(), Some("scale-out-hls"));
    let pvc_spec = pvc.spec.as_ref().expect("spec");
    assert_eq!(
        pvc_spec.access_modes,
        Some(vec!["ReadWriteMany".to_string()])
    );
    assert_eq!(
        pvc_spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .map(|r| r["storage"].0.as_str()),
        Some("20Gi")
    );

    let (ingest, http) = (
        &d.ingest_deployment,
        d.http_deployment.as_ref().expect("an HTTP Deployment"),
    );
    assert_eq!(ingest.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(http.metadata.name.as_deref(), Some("scale-out-http"));
    assert_eq!(http.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert_owned(&http.metadata, &app);
    assert_restricted(ingest);
    assert_restricted(http);
    let ingest_names: Vec<_> = pod(ingest)
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(ingest_names, ["ingest"], "no sidecar in deployment mode");
    let http_names: Vec<_> = pod(http)
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(http_names, ["http"]);
    for dep in [ingest, http] {
        assert_eq!(
            volume(dep, "hls")
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("scale-out-hls")
        );
    }
    assert!(template_annotation(ingest, ANNOTATION_INGEST_CONFIG_CHECKSUM).is_some());
    assert!(template_annotation(ingest, ANNOTATION_HTTP_CONFIG_CHECKSUM).is_none());
    assert!(template_annotation(http, ANNOTATION_HTTP_CONFIG_CHECKSUM).is_some());
    assert!(template_annotation(http, ANNOTATION_INGEST_CONFIG_CHECKSUM).is_none());
    assert_eq!(
        container(ingest, "ingest")
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .map(|r| r["cpu"].0.as_str()),
        Some("500m")
    );
    assert_eq!(
        container(http, "http")
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .map(|r| r["memory"].0.as_str()),
        Some("256Mi")
    );
    assert!(pod(ingest).affinity.is_some());

    // Several replicas on one volume: Lease ownership, named after the
    // application, with credentials in the ingest containers only.
    assert_ops_probes(container(ingest, "ingest"));
    assert_replica_identity(ingest);
    assert_api_access(ingest, true);
    assert_api_access(http, false);
    assert_eq!(pod(http).service_account_name, None);
    assert!(container(http, "http").env.is_none());
    let config = ingest_config_of(&d);
    assert_eq!(config.ownership.mode, oxcast_crds::OwnershipMode::Leases);
    assert_eq!(config.ownership.lease_prefix.as_deref(), Some("scale-out"));

    let rtmp_svc = d.rtmp_service.spec.as_ref().expect("spec");
    assert_eq!(rtmp_svc.external_traffic_policy.as_deref(), Some("Local"));
    let http_svc = d.http_service.spec.as_ref().expect("spec");
    assert_eq!(
        http_svc.selector,
        Some(Names::new("scale-out").selector(Component::Http)),
        "in deployment mode the HTTP pods serve HTTP"
    );
    assert!(d.obsolete.is_empty(), "{:?}", d.obsolete);

    let config: oxcast_crds::IngestConfig =
        serde_yaml::from_str(&d.config_map.data.as_ref().expect("data")["config.yaml"])
            .expect("config");
    assert_eq!(
        config.hls.fragment,
        oxcast_crds::HumanDuration::from_secs(2)
    );
    assert_eq!(
        config.hls.playlist_length,
        oxcast_crds::HumanDuration::from_secs(20)
    );
}

#[test]
fn stream_keys_example_mounts_the_secret_where_the_config_points() {
    let app = stream_keys();
    let d = build(&app, &settings()).expect("build");
    let ingest = &d.ingest_deployment;
    let keys = volume(ingest, "stream-keys")
        .secret
        .as_ref()
        .expect("secret volume");
    assert_eq!(keys.secret_name.as_deref(), Some("stream-keys"));
    let mount = container(ingest, "ingest")
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "stream-keys")
        .expect("keys mount");
    assert_eq!(mount.mount_path, render::KEYS_DIR);
    assert_eq!(mount.read_only, Some(true));
    assert!(
        !container(ingest, "http")
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "stream-keys"),
        "the HTTP server never sees the keys"
    );
    let config: oxcast_crds::IngestConfig =
        serde_yaml::from_str(&d.config_map.data.as_ref().expect("data")["config.yaml"])
            .expect("config");
    assert_eq!(config.rtmp.auth.mode, oxcast_crds::AuthMode::Keys);
    assert_eq!(
        config
            .rtmp
            .auth
            .keys
            .as_ref()
            .and_then(|k| k.path.as_deref()),
        Some(render::KEYS_DIR)
    );
    assert!(config.validate().is_ok());
}

#[test]
fn a_config_change_changes_the_pod_template_and_nothing_else_does_not() {
    let app = minimal();
    let before = build(&app, &settings()).expect("build");
    let again = build(&app, &settings()).expect("build");
    let checksum =
        |d: &Desired| template_annotation(&d.ingest_deployment, ANNOTATION_INGEST_CONFIG_CHECKSUM);
    assert_eq!(
        checksum(&before),
        checksum(&again),
        "building is deterministic"
    );
    assert_eq!(
        before.ingest_deployment.metadata.annotations,
        again.ingest_deployment.metadata.annotations
    );

    let mut changed = app.clone();
    changed.spec.hls.fragment = oxcast_crds::HumanDuration::from_secs(2);
    let after = build(&changed, &settings()).expect("build");
    assert_ne!(checksum(&before), checksum(&after), "new config, new pods");
}

/// The pod template of a Deployment, as its rollout trigger sees it.
fn template(d: &Deployment) -> serde_json::Value {
    serde_json::to_value(&d.spec.as_ref().expect("spec").template).expect("serialize")
}

#[test]
fn http_only_changes_leave_the_ingest_pods_alone_and_ingest_only_changes_the_http_pods() {
    let app = scale_out();
    let before = build(&app, &settings()).expect("build");
    let (ingest, http) = (
        &before.ingest_deployment,
        before.http_deployment.as_ref().expect("an HTTP Deployment"),
    );

    // HTTP server settings and the HTTP pods' own fields.
    let mut http_only = app.clone();
    http_only.spec.http.settings.cors_allow_origin = "https://player.example".into();
    http_only.spec.http.settings.cache_size_mib = 32;
    http_only.spec.http.settings.path_prefix = "/hls".into();
    http_only.spec.http.replicas = 4;
    let after = build(&http_only, &settings()).expect("build");
    assert_ne!(
        before.config_map.data, after.config_map.data,
        "the file changed"
    );
    assert_eq!(
        template(ingest),
        template(&after.ingest_deployment),
        "an HTTP-only change must not roll the ingest pods (publishers would be cut)"
    );
    assert_eq!(
        ingest.metadata.annotations, after.ingest_deployment.metadata.annotations,
        "the ingest Deployment is not even re-applied"
    );
    assert_ne!(
        template(http),
        template(after.http_deployment.as_ref().expect("an HTTP Deployment")),
        "the HTTP pods roll"
    );

    // Ingest-only settings: the HTTP pods stay.
    for change in [
        |a: &mut LiveApplication| a.spec.hls.fragment = oxcast_crds::HumanDuration::from_secs(3),
        |a: &mut LiveApplication| a.spec.rtmp.settings.limits.max_publishers = 7,
        |a: &mut LiveApplication| a.spec.rtmp.settings.allow_play = true,
    ] {
        let mut ingest_only = app.clone();
        change(&mut ingest_only);
        let after = build(&ingest_only, &settings()).expect("build");
        assert_ne!(template(ingest), template(&after.ingest_deployment));
        assert_eq!(
            template(http),
            template(after.http_deployment.as_ref().expect("an HTTP Deployment")),
            "an ingest-only change must not roll the HTTP pods"
        );
    }

    // Sidecar mode: the HTTP server lives in the ingest pods, so an HTTP
    // change has to roll them.
    let sidecar = minimal();
    let before = build(&sidecar, &settings()).expect("build");
    let mut changed = sidecar.clone();
    changed.spec.http.settings.cors_allow_origin = "https://player.example".into();
    let after = build(&changed, &settings()).expect("build");
    assert_ne!(
        template(&before.ingest_deployment),
        template(&after.ingest_deployment)
    );
}

fn grace(d: &Deployment) -> Option<i64> {
    pod(d).termination_grace_period_seconds
}

fn pre_stop_seconds(c: &Container) -> Option<i64> {
    c.lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|p| p.sleep.as_ref())
        .map(|s| s.seconds)
}

#[test]
fn the_pre_stop_delay_is_configurable_and_the_grace_period_covers_it() {
    // Default: 5 s; the ingest grace period adds the longest segment (the
    // example's 2 s fragment and no maxFragment: a segment waits for a
    // keyframe up to 4 s) and the 10 s margin.
    let app = scale_out();
    assert_eq!(
        app.spec.hls.effective_max_fragment().get(),
        std::time::Duration::from_secs(4)
    );
    let d = build(&app, &settings()).expect("build");
    let (ingest, http) = (
        &d.ingest_deployment,
        d.http_deployment.as_ref().expect("an HTTP Deployment"),
    );
    assert_eq!(pre_stop_seconds(container(ingest, "ingest")), Some(5));
    assert_eq!(pre_stop_seconds(container(http, "http")), Some(5));
    assert_eq!(grace(ingest), Some(5 + 4 + 10));
    assert_eq!(grace(http), Some(5 + 10));

    // A cloud load balancer that needs 30 s to deregister a target.
    let mut slow_lb = app.clone();
    slow_lb.spec.pre_stop_delay = oxcast_crds::HumanDuration::from_secs(30);
    let d = build(&slow_lb, &settings()).expect("build");
    let (ingest, http) = (
        &d.ingest_deployment,
        d.http_deployment.as_ref().expect("an HTTP Deployment"),
    );
    assert_eq!(pre_stop_seconds(container(ingest, "ingest")), Some(30));
    assert_eq!(pre_stop_seconds(container(http, "http")), Some(30));
    assert_eq!(grace(ingest), Some(30 + 4 + 10));
    assert_eq!(grace(http), Some(30 + 10));
    for dep in [ingest, http] {
        let pre_stop = pod(dep)
            .containers
            .iter()
            .filter_map(pre_stop_seconds)
            .max()
            .expect("a preStop sleep");
        assert!(
            grace(dep).expect("grace") > pre_stop,
            "SIGTERM must come inside the grace period"
        );
    }

    // Sub-second delays round up (a preStop sleep counts whole seconds);
    // zero turns the hook off.
    let mut short = minimal();
    short.spec.pre_stop_delay = oxcast_crds::HumanDuration::from_millis(1500);
    let d = build(&short, &settings()).expect("build");
    assert_eq!(
        pre_stop_seconds(container(&d.ingest_deployment, "ingest")),
        Some(2)
    );
    let mut none = minimal();
    none.spec.pre_stop_delay = oxcast_crds::HumanDuration::from_secs(0);
    let d = build(&none, &settings()).expect("build");
    for c in &pod(&d.ingest_deployment).containers {
        assert_eq!(c.lifecycle, None, "{}", c.name);
    }
    assert_eq!(
        grace(&d.ingest_deployment),
        Some(10 + 10),
        "the longest segment (twice the default 5 s fragment) + margin"
    );
}

#[test]
fn a_disruption_budget_is_built_for_the_ingest_pods_only_when_asked_for() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use oxcast_crds::live_application::DisruptionBudget;

    let app = scale_out();
    let d = build(&app, &settings()).expect("build");
    let pdb = d
        .pod_disruption_budget
        .as_ref()
        .expect("the scale-out example asks for one");
    assert_owned(&pdb.metadata, &app);
    assert_eq!(pdb.metadata.name.as_deref(), Some("scale-out-ingest"));
    let spec = pdb.spec.as_ref().expect("spec");
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(spec.min_available, None);
    assert_eq!(
        spec.selector.as_ref().and_then(|s| s.match_labels.clone()),
        Some(Names::new("scale-out").selector(Component::Ingest)),
        "the ingest pods, not the HTTP ones"
    );
    assert_eq!(
        spec.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
    assert!(!d
        .obsolete
        .iter()
        .any(|o| o.kind == ObsoleteKind::PodDisruptionBudget));

    // A percentage works too.
    let mut pct = app.clone();
    pct.spec.pod_disruption_budget = Some(DisruptionBudget {
        min_available: Some(IntOrString::String("50%".into())),
        max_unavailable: None,
    });
    let d = build(&pct, &settings()).expect("build");
    let spec = d.pod_disruption_budget.and_then(|p| p.spec).expect("spec");
    assert_eq!(spec.min_available, Some(IntOrString::String("50%".into())));

    // Dropped from the spec: none built, and the old one is deleted.
    let mut without = app.clone();
    without.spec.pod_disruption_budget = None;
    let d = build(&without, &settings()).expect("build");
    assert!(d.pod_disruption_budget.is_none());
    assert!(d.obsolete.contains(&Obsolete {
        kind: ObsoleteKind::PodDisruptionBudget,
        name: "scale-out-ingest".into(),
    }));
    assert!(build(&minimal(), &settings())
        .expect("build")
        .pod_disruption_budget
        .is_none());

    // Both or neither bound: invalid (the CRD's CEL rule says the same).
    for budget in [
        DisruptionBudget {
            min_available: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(1)),
        },
        DisruptionBudget {
            min_available: None,
            max_unavailable: None,
        },
    ] {
        let mut bad = app.clone();
        bad.spec.pod_disruption_budget = Some(budget);
        match build(&bad, &settings()) {
            Err(BuildError::Invalid(e)) => assert_eq!(e.field, "podDisruptionBudget"),
            other => panic!("expected an invalid spec, got {other:?}"),
        }
    }
}

#[test]
fn service_options_only_where_they_apply() {
    let mut app = minimal();
    app.spec.rtmp.service.options.load_balancer_source_ranges = vec!["10.0.0.0/8".into()];
    app.spec
        .rtmp
        .service
        .options
        .annotations
        .insert("lb.example/type".into(), "nlb".into());
    let d = build(&app, &settings()).expect("build");
    let svc = &d.rtmp_service;
    assert_eq!(
        svc.spec
            .as_ref()
            .and_then(|s| s.load_balancer_source_ranges.clone()),
        Some(vec!["10.0.0.0/8".to_string()])
    );
    assert_eq!(
        svc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("lb.example/type"))
            .map(String::as_str),
        Some("nlb")
    );

    // Removing an option removes the field from what is applied.
    app.spec.rtmp.service.options = ServiceOptions::default();
    let d = build(&app, &settings()).expect("build");
    let json = serde_json::to_value(&d.rtmp_service).expect("json");
    assert!(
        json["spec"].get("loadBalancerSourceRanges").is_none(),
        "{json}"
    );
    assert!(
        json["metadata"]["annotations"]
            .get("lb.example/type")
            .is_none(),
        "{json}"
    );
}

#[test]
fn read_write_once_claims_recreate_instead_of_surging() {
    let mut app = minimal();
    app.spec.storage = StorageSpec {
        empty_dir: None,
        persistent_volume_claim: Some(oxcast_crds::live_application::PvcStorage {
            access_modes: vec![AccessMode::ReadWriteOnce],
            ..Default::default()
        }),
        existing_claim: None,
    };
    let d = build(&app, &settings()).expect("build");
    assert_eq!(strategy(&d.ingest_deployment), Some("Recreate"));
}

fn strategy(d: &Deployment) -> Option<&str> {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
}

fn existing_claim(mode: AccessMode) -> StorageSpec {
    StorageSpec {
        empty_dir: None,
        persistent_volume_claim: None,
        existing_claim: Some(oxcast_crds::live_application::ExistingClaim {
            claim_name: "shared-hls".into(),
            access_mode: mode,
        }),
    }
}

#[test]
fn existing_claims_declared_read_write_once_recreate_and_allow_one_pod() {
    for mode in [AccessMode::ReadWriteOnce, AccessMode::ReadWriteOncePod] {
        let mut app = minimal();
        app.spec.storage = existing_claim(mode);
        let d = build(&app, &settings()).expect("build");
        assert!(
            d.http_deployment.is_none(),
            "{mode:?}: the HTTP server is a sidecar"
        );
        assert_eq!(strategy(&d.ingest_deployment), Some("Recreate"), "{mode:?}");
        assert_eq!(
            d.ingest_deployment
                .spec
                .as_ref()
                .and_then(|s| s.strategy.as_ref())
                .and_then(|s| s.rolling_update.as_ref()),
            None
        );

        // The operator re-checks what the CRD's CEL rules reject.
        let mut scaled = app.clone();
        scaled.spec.replicas = 2;
        match build(&scaled, &settings()) {
            Err(BuildError::Invalid(e)) => {
                assert_eq!(e.field, "replicas");
                assert!(e.message.contains("accessMode ReadWriteMany"), "{e}");
            }
            other => panic!("{mode:?}: expected an invalid spec, got {other:?}"),
        }
        let mut separate = app.clone();
        separate.spec.http.mode = HttpMode::Deployment;
        assert!(matches!(
            build(&separate, &settings()),
            Err(BuildError::Invalid(_))
        ));
    }
    // ReadWriteMany (the default) surges a new pod first.
    let mut app = minimal();
    app.spec.storage = existing_claim(AccessMode::ReadWriteMany);
    app.spec.replicas = 3;
    let d = build(&app, &settings()).expect("build");
    assert_eq!(strategy(&d.ingest_deployment), Some("RollingUpdate"));
    let declared: oxcast_crds::live_application::ExistingClaim =
        serde_json::from_value(serde_json::json!({"claimName": "hls"})).expect("parse");
    assert_eq!(declared.access_mode, AccessMode::ReadWriteMany);
}

#[test]
fn existing_claims_are_mounted_but_never_created_or_deleted() {
    let mut app = minimal();
    app.spec.replicas = 2;
    app.spec.http.mode = HttpMode::Deployment;
    app.spec.storage = StorageSpec {
        empty_dir: None,
        persistent_volume_claim: None,
        existing_claim: Some(oxcast_crds::live_application::ExistingClaim {
            claim_name: "shared-hls".into(),
            access_mode: AccessMode::ReadWriteMany,
        }),
    };
    let d = build(&app, &settings()).expect("build");
    assert!(d.pvc.is_none());
    for dep in std::iter::once(&d.ingest_deployment).chain(&d.http_deployment) {
        assert_eq!(
            volume(dep, "hls")
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("shared-hls")
        );
    }
    let ingest = &d.ingest_deployment;
    assert_api_access(ingest, true);
    assert_eq!(
        ingest_config_of(&d).ownership.mode,
        oxcast_crds::OwnershipMode::Leases
    );
    // Only the operator's own claim name is ever considered for deletion.
    assert!(d
        .obsolete
        .iter()
        .all(|o| o.kind != ObsoleteKind::PersistentVolumeClaim || o.name == "live-hls"));
}

#[test]
fn the_image_in_the_spec_wins() {
    let mut app = minimal();
    app.spec.image = Some("my.registry/ingest:1.2".into());
    app.spec.image_pull_policy = Some(oxcast_crds::live_application::ImagePullPolicy::IfNotPresent);
    let d = build(&app, &settings()).expect("build");
    for c in &pod(&d.ingest_deployment).containers {
        assert_eq!(c.image.as_deref(), Some("my.registry/ingest:1.2"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    }
}

#[test]
fn invalid_specs_build_nothing_and_say_why() {
    let mut app = minimal();
    app.spec.http.mode = HttpMode::Deployment;
    match build(&app, &settings()) {
        Err(BuildError::Invalid(e)) => assert_eq!(e.field, "http.mode"),
        other => panic!("expected an invalid spec, got {other:?}"),
    }
    let mut app = minimal();
    app.spec.http.settings.path_prefix = "live".into();
    match build(&app, &settings()) {
        Err(BuildError::Invalid(e)) => assert_eq!(e.field, "http.pathPrefix"),
        other => panic!("expected an invalid spec, got {other:?}"),
    }
    let mut app = minimal();
    app.spec.storage.existing_claim = Some(oxcast_crds::live_application::ExistingClaim {
        claim_name: "x".into(),
        access_mode: AccessMode::ReadWriteMany,
    });
    assert!(matches!(
        build(&app, &settings()),
        Err(BuildError::Invalid(_))
    ));
    let mut app = minimal();
    app.metadata.uid = None;
    assert!(matches!(
        build(&app, &settings()),
        Err(BuildError::MissingMetadata("uid"))
    ));
}

#[test]
fn ingest_pods_get_a_service_account_allowed_exactly_the_lease_verbs() {
    for app in [minimal(), scale_out()] {
        let d = build(&app, &settings()).expect("build");
        let name = format!("{}-ingest", app.metadata.name.as_deref().expect("name"));
        assert_owned(&d.service_account.metadata, &app);
        assert_owned(&d.role.metadata, &app);
        assert_owned(&d.role_binding.metadata, &app);
        for meta in [
            &d.service_account.metadata,
            &d.role.metadata,
            &d.role_binding.metadata,
        ] {
            assert_eq!(meta.name.as_deref(), Some(name.as_str()));
        }
        assert_eq!(
            d.service_account.automount_service_account_token,
            Some(false),
            "tokens are mounted per container, never pod-wide"
        );
        let rules = d.role.rules.as_ref().expect("rules");
        assert_eq!(rules.len(), 1, "{rules:?}");
        let rule = &rules[0];
        assert_eq!(
            rule.api_groups.as_deref(),
            Some(&["coordination.k8s.io".to_string()][..])
        );
        assert_eq!(rule.resources.as_deref(), Some(&["leases".to_string()][..]));
        assert_eq!(rule.verbs, ["get", "list", "create", "update", "delete"]);
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());

        let binding = &d.role_binding;
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
        assert_eq!(binding.role_ref.name, name);
        let subjects = binding.subjects.as_ref().expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, name);
        assert_eq!(subjects[0].namespace.as_deref(), Some("media"));

        assert_eq!(
            pod(&d.ingest_deployment).service_account_name.as_deref(),
            Some(name.as_str())
        );
    }
}

#[test]
fn the_sidecar_layout_on_a_claim_mounts_credentials_into_the_ingest_container_only() {
    let mut app = minimal();
    app.spec.storage = StorageSpec {
        empty_dir: None,
        persistent_volume_claim: Some(oxcast_crds::live_application::PvcStorage {
            access_modes: vec![AccessMode::ReadWriteOnce],
            ..Default::default()
        }),
        existing_claim: None,
    };
    let d = build(&app, &settings()).expect("build");
    let ingest = &d.ingest_deployment;
    let names: Vec<_> = pod(ingest)
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["ingest", "http"]);
    assert_api_access(ingest, true);
    assert_ops_probes(container(ingest, "ingest"));
    let config = ingest_config_of(&d);
    assert_eq!(config.ownership.mode, oxcast_crds::OwnershipMode::Leases);
    assert_eq!(config.ownership.lease_prefix.as_deref(), Some("live"));
}

#[test]
fn encrypted_example_keeps_keys_on_the_volume_and_the_token_secret_in_http_only() {
    let app = encrypted();
    let desired = build(&app, &settings()).unwrap();
    let config = ingest_config_of(&desired);
    let e = &config.hls.encryption;
    assert!(e.enabled);
    assert_eq!(
        e.authorization.secret_file.as_deref(),
        Some("/var/run/oxcast/key-token/secret")
    );
    assert_eq!(
        e.authorization.previous_secret_file.as_deref(),
        Some("/var/run/oxcast/key-token/previous")
    );
    let ingest = &desired.ingest_deployment;
    let arg_after = |c: &Container, flag: &str| -> Option<String> {
        let args = c.args.as_ref()?;
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).cloned()
    };
    for name in ["ingest", "http"] {
        let c = container(ingest, name);
        // The tree and the keys side by side on the one volume.
        assert_eq!(
            arg_after(c, "--hls-root").as_deref(),
            Some("/var/lib/oxcast/data/hls")
        );
        assert_eq!(
            arg_after(c, "--hls-key-dir").as_deref(),
            Some("/var/lib/oxcast/data/keys")
        );
        let hls = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "hls")
            .expect("hls volume mounted");
        assert_eq!(hls.mount_path, "/var/lib/oxcast/data");
        let token = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "key-token");
        match name {
            "http" => {
                let m = token.expect("the HTTP container gets the token secret");
                assert_eq!(m.mount_path, "/var/run/oxcast/key-token");
                assert_eq!(m.read_only, Some(true));
            }
            _ => assert!(
                token.is_none(),
                "the ingest container gets no signing secret"
            ),
        }
    }
    let v = volume(ingest, "key-token");
    let secret = v.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("key-token"));
    assert_eq!(secret.default_mode, Some(0o440));
    assert_restricted(ingest);

    // Without encryption nothing moves.
    let plain = build(&minimal(), &settings()).unwrap();
    let c = container(&plain.ingest_deployment, "ingest");
    assert_eq!(
        arg_after(c, "--hls-root").as_deref(),
        Some("/var/lib/oxcast/hls")
    );
    assert!(arg_after(c, "--hls-key-dir").is_none());
}
