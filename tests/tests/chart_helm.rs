//! `helm install`, `upgrade` and `uninstall` of the chart for real, with
//! Helm 4 and Helm 3, against the local control plane. A test binary of its
//! own: Helm refuses to adopt a CRD that another test applied with kubectl.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use oxcast_tests::chart::{self, Helm};
use oxcast_tests::cluster::{self, TestCluster};

const TIMEOUT: Duration = Duration::from_secs(180);

fn helm(helm: Helm, cluster: &TestCluster, args: &[&str]) -> Result<String, String> {
    let mut cmd = helm.command();
    cmd.args(args).arg("--kubeconfig").arg(cluster.kubeconfig());
    chart::run_helm(cmd)
}

/// Release `name` of the chart in namespace `ns`, driven by one Helm major.
struct Release<'a> {
    helm: Helm,
    cluster: &'a TestCluster,
    name: &'a str,
    ns: &'a str,
}

impl Release<'_> {
    /// `helm VERB NAME [CHART] --namespace NS [--wait --timeout T] [--set S]...`
    fn run(&self, verb: &str, chart: bool, wait: bool, sets: &[&str]) -> Result<String, String> {
        let chart_dir = chart::chart_dir();
        let timeout = format!("{}s", TIMEOUT.as_secs());
        let mut args = vec![verb, self.name];
        if chart {
            args.push(chart_dir.to_str().expect("UTF-8 path"));
        }
        args.extend(["--namespace", self.ns]);
        if wait {
            args.extend(["--wait", "--timeout", &timeout]);
        }
        for set in sets {
            args.extend(["--set", set]);
        }
        helm(self.helm, self.cluster, &args)
    }

    /// `helm install --wait`, panicking on failure; returns Helm's output.
    fn install(&self, sets: &[&str]) -> String {
        self.run("install", true, true, sets)
            .unwrap_or_else(|e| panic!("{:?} install {}: {e}", self.helm, self.name))
    }

    /// `helm upgrade --wait`, panicking on failure.
    fn upgrade(&self, sets: &[&str]) {
        self.run("upgrade", true, true, sets)
            .unwrap_or_else(|e| panic!("{:?} upgrade {}: {e}", self.helm, self.name));
    }

    /// `helm uninstall --wait`, panicking on failure.
    fn uninstall(&self) {
        self.run("uninstall", false, true, &[])
            .unwrap_or_else(|e| panic!("{:?} uninstall {}: {e}", self.helm, self.name));
    }
}

fn kubectl(cluster: &TestCluster, args: &[&str]) -> Result<String, String> {
    let mut cmd = cluster.kubectl();
    cmd.args(args);
    oxcast_tests::media::process::run_ok(cmd, chart::COMMAND_TIMEOUT)
}

async fn ready_replicas(client: &kube::Client, ns: &str, name: &str) -> Option<i32> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .get_opt(name)
        .await
        .expect("read the operator Deployment")
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
}

#[tokio::test]
async fn helm_4_and_helm_3_install_upgrade_and_uninstall_the_chart() {
    let ctx = cluster::expect_test_context("chart-helm").await;
    ctx.cluster
        .expect_local("it installs cluster-scoped objects");
    let ns = ctx.ns().to_string();

    // Helm 4: the default install, CRD included.
    let h4 = Release {
        helm: Helm::V4,
        cluster: ctx.cluster,
        name: "h4",
        ns: &ns,
    };
    let out = h4.install(&[]);
    chart::assert_notes_explain_the_workflow(&out, "h4", "");
    assert_eq!(ready_replicas(&ctx.client, &ns, "h4-oxcast").await, Some(1));
    kubectl(
        ctx.cluster,
        &["get", "crd", "liveapplications.live.oxcast.dev"],
    )
    .expect("helm installed the CRD");

    // An upgrade changes what it should (two replicas, leader election
    // keeps them safe) ...
    h4.upgrade(&["operator.replicas=2"]);
    assert_eq!(ready_replicas(&ctx.client, &ns, "h4-oxcast").await, Some(2));
    // ... and a wrongly typed value is refused before anything changes.
    let refused = h4
        .run("upgrade", true, false, &["operator.replicas=many"])
        .expect_err("a string for operator.replicas must be refused");
    assert!(refused.contains("/operator/replicas"), "{refused}");

    // Uninstall removes the operator but keeps the CRD (crds.keep).
    h4.uninstall();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    assert!(deployments
        .get_opt("h4-oxcast")
        .await
        .expect("read")
        .is_none());
    kubectl(
        ctx.cluster,
        &["get", "crd", "liveapplications.live.oxcast.dev"],
    )
    .expect("the CRD survives helm uninstall (helm.sh/resource-policy: keep)");
    assert!(
        kubectl(ctx.cluster, &["get", "clusterrole", "h4-oxcast"]).is_err(),
        "the ClusterRole must go with the release"
    );

    // Helm 3: a namespaced install next to the kept CRD.
    let apps = ctx
        .cluster
        .namespace("chart-helm-apps")
        .await
        .expect("a namespace to watch");
    let watch = format!("watchNamespaces={{{}}}", apps.name());
    let h3 = Release {
        helm: Helm::V3,
        cluster: ctx.cluster,
        name: "h3",
        ns: &ns,
    };
    let out = h3.install(&["crds.enabled=false", &watch]);
    chart::assert_notes_explain_the_workflow(&out, "h3", apps.name());
    assert_eq!(ready_replicas(&ctx.client, &ns, "h3-oxcast").await, Some(1));
    kubectl(
        ctx.cluster,
        &["get", "role", "h3-oxcast", "-n", apps.name()],
    )
    .expect("a Role in the watched namespace");
    assert!(kubectl(ctx.cluster, &["get", "clusterrole", "h3-oxcast"]).is_err());
    let status =
        helm(Helm::V3, ctx.cluster, &["status", "h3", "--namespace", &ns]).expect("helm 3 status");
    assert!(status.contains("STATUS: deployed"), "{status}");
    h3.uninstall();
}
