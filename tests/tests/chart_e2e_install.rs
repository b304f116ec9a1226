//! The cluster stages of `tests/kind/e2e.sh` that need no LoadBalancer
//! (`install`, `dump`, `cleanup`), run against the local control plane with
//! the chart's real Helm install, with the script's defaults (release
//! `oxcast` in namespace `oxcast-system`, whose operator Deployment the chart
//! names just `oxcast`). A test binary of its own: the chart's CRD belongs to
//! whichever Helm release installed it first.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use oxcast_tests::chart::{self, Helm};
use oxcast_tests::cluster;
use oxcast_tests::media::process::run;
use oxcast_tests::media::workspace_root;

const TIMEOUT: Duration = Duration::from_secs(300);
/// The script's default release and its namespace, as the README runs it.
const RELEASE: &str = "oxcast";
const RELEASE_NAMESPACE: &str = "oxcast-system";

#[tokio::test]
async fn install_dump_and_cleanup_stages_work_on_a_real_api_server() {
    let ctx = cluster::expect_test_context("e2e-install").await;
    let bin_dir = ctx
        .cluster
        .expect_local("it installs cluster-scoped objects");
    let apps = ctx
        .cluster
        .namespace("e2e-apps")
        .await
        .expect("a namespace for the LiveApplications");
    let helm_dir = Helm::V4
        .path()
        .parent()
        .expect("helm's directory")
        .to_path_buf();
    let path = std::env::join_paths([helm_dir, bin_dir.to_path_buf()].into_iter().chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let digest = format!("sha256:{}", "c".repeat(64));
    let stage = |name: &str| {
        let mut cmd = Command::new(workspace_root().join("tests/kind/e2e.sh"));
        cmd.env("PATH", &path)
            .env("KUBECONFIG", ctx.cluster.kubeconfig())
            .args(["--namespace", apps.name(), "--timeout", "120"])
            .args([
                "--operator-image",
                "registry.example:5000/oxcast/operator:t1",
            ])
            .arg("--ingest-image")
            .arg(format!("registry.example:5000/oxcast/ingest@{digest}"))
            .arg(name);
        run(cmd, TIMEOUT).expect("run tests/kind/e2e.sh")
    };

    let install = stage("install");
    assert!(
        install.success(),
        "install failed:\n{}{}",
        install.stdout,
        install.stderr
    );
    assert!(
        install.stdout.contains("successfully rolled out"),
        "{}",
        install.stdout
    );
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), RELEASE_NAMESPACE);
    let deploy = deployments
        .get(RELEASE)
        .await
        .expect("the operator Deployment");
    let container = &deploy
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec")
        .containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example:5000/oxcast/operator:t1")
    );
    let ingest_image = container
        .env
        .as_ref()
        .and_then(|env| env.iter().find(|e| e.name == "OXCAST_INGEST_IMAGE"))
        .and_then(|e| e.value.clone());
    assert_eq!(
        ingest_image.as_deref(),
        Some(format!("registry.example:5000/oxcast/ingest@{digest}").as_str())
    );

    // Installing again is an upgrade, not an error.
    let again = stage("install");
    assert!(
        again.success(),
        "a second install failed:\n{}",
        again.stderr
    );

    let dump = stage("dump");
    assert!(dump.success(), "dump failed: {}", dump.stderr);
    for needle in [
        format!("===== namespace {RELEASE_NAMESPACE}"),
        format!("===== namespace {}", apps.name()),
        format!("deployment.apps/{RELEASE}"),
        "----- events".to_string(),
        format!("----- logs pod/{RELEASE}-"),
    ] {
        assert!(
            dump.stdout.contains(&needle),
            "dump lacks {needle:?}:\n{}",
            dump.stdout
        );
    }

    let cleanup = stage("cleanup");
    assert!(cleanup.success(), "cleanup failed: {}", cleanup.stderr);
    assert!(
        deployments.get_opt(RELEASE).await.expect("read").is_none(),
        "cleanup left the operator Deployment"
    );
    let mut status = Helm::V4.command();
    status
        .args(["status", RELEASE, "--namespace", RELEASE_NAMESPACE])
        .arg("--kubeconfig")
        .arg(ctx.cluster.kubeconfig());
    assert!(
        chart::run_helm(status).is_err(),
        "the release is still installed after cleanup"
    );
}
