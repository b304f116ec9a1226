//! The real node (tests/src/cluster/node.rs): it turns Ready, a pod that
//! passes Pod Security `restricted` runs on it, a Service ClusterIP reaches
//! that pod from the node and from another pod (through kube-proxy), a
//! privileged pod is refused, a LoadBalancer address (MetalLB) reaches it
//! from the host, and the host cannot reach an address of the test range
//! that is not routed into the node.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{LogParams, PostParams};
use kube::Api;
use oxcast_tests::cluster::loadbalancer::MetalLb;
use oxcast_tests::cluster::node::{NodeCluster, BUSYBOX_IMAGE, LOADBALANCER_CIDR, NODE_NAME};
use oxcast_tests::cluster::{eventually, Error};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A pod that satisfies Pod Security `restricted`: non-root, no privilege
/// escalation, every capability dropped, the runtime's seccomp profile.
fn restricted_pod(name: &str, labels: serde_json::Value, command: &[&str]) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": null,
            "terminationGracePeriodSeconds": 1,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "command": command,
                "ports": [{"containerPort": 8080}],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    }))
    .expect("the pod literal parses")
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn real_node_runs_pods_and_services_inside_the_test_range() -> Result<(), Error> {
    let node = NodeCluster::shared().await?;
    let t = node.timings();
    eprintln!(
        "node start: total {:?} (binaries {:?}, network {:?}, control plane {:?}, containerd {:?}, kubelet Ready {:?}, kube-proxy {:?})",
        t.total, t.binaries, t.network, t.control_plane, t.containerd, t.kubelet, t.kube_proxy
    );
    let client = node.client()?;
    let ns = node.cluster().namespace("node-smoke").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let services: Api<Service> = Api::namespaced(client.clone(), ns.name());

    // Pod Security restricted is enforced by default.
    let mut privileged = restricted_pod("privileged", serde_json::json!({}), &["sleep", "1"]);
    if let Some(c) = privileged
        .spec
        .as_mut()
        .and_then(|s| s.containers.first_mut())
    {
        c.security_context = serde_json::from_value(serde_json::json!({"privileged": true})).ok();
    }
    match pods.create(&PostParams::default(), &privileged).await {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 403 && e.message.contains("PodSecurity"),
            "a privileged pod must be refused by Pod Security, got {e:?}"
        ),
        Ok(_) => panic!("a privileged pod was admitted: Pod Security restricted is not enforced"),
        Err(e) => return Err(e.into()),
    }

    // A server pod: busybox nc answers every connection with "hello".
    let started = std::time::Instant::now();
    let server = restricted_pod(
        "server",
        serde_json::json!({"app": "server"}),
        &[
            "/bin/busybox",
            "nc",
            "-ll",
            "-p",
            "8080",
            "-e",
            "/bin/busybox",
            "echo",
            "hello",
        ],
    );
    let mut server = server;
    if let Some(c) = server.spec.as_mut().and_then(|s| s.containers.first_mut()) {
        c.readiness_probe = serde_json::from_value(serde_json::json!({
            "tcpSocket": {"port": 8080}, "periodSeconds": 1,
        }))
        .ok();
    }
    pods.create(&PostParams::default(), &server).await?;
    let ready = eventually("the server pod to be Ready", TIMEOUT, || {
        let pods = pods.clone();
        async move { Ok::<_, kube::Error>(pods.get("server").await.ok().filter(pod_ready)) }
    })
    .await?;
    eprintln!("server pod Ready {:?} after create", started.elapsed());
    let spec = ready.spec.as_ref().expect("pod spec");
    assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
    let pod_ip: Ipv4Addr = ready
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .expect("the pod has an IPv4 address");
    assert_eq!(
        pod_ip.octets()[..3],
        [198, 18, 1],
        "pod IP {pod_ip} not in 198.18.1.0/24"
    );

    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "server"},
        "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .expect("the service literal parses");
    let svc = services.create(&PostParams::default(), &svc).await?;
    let cluster_ip: Ipv4Addr = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .expect("the Service has a ClusterIP");
    assert_eq!(
        cluster_ip.octets()[..2],
        [198, 19],
        "ClusterIP {cluster_ip} not in 198.19.0.0/16"
    );

    // From the node's network namespace, through kube-proxy's rules.
    let target = format!("{cluster_ip}");
    eventually("the ClusterIP to answer from the node", TIMEOUT, || {
        let mut cmd = node.node_command("/bin/busybox");
        cmd.args(["nc", "-w", "2", &target, "80"]);
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok::<_, String>(text.contains("hello").then_some(()))
        }
    })
    .await?;

    // From the host, routed into the node (the path a LoadBalancer address takes).
    eventually(
        "the ClusterIP to answer from the host",
        TIMEOUT,
        || async move {
            tokio::task::spawn_blocking(move || host_says_hello(SocketAddrV4::new(cluster_ip, 80)))
                .await
                .map_err(|e| e.to_string())?
        },
    )
    .await?;

    // From another pod on the same bridge, through the ClusterIP.
    let client_pod = restricted_pod(
        "client",
        serde_json::json!({"app": "client"}),
        &["/bin/busybox", "nc", "-w", "5", &target, "80"],
    );
    pods.create(&PostParams::default(), &client_pod).await?;
    let logs = eventually(
        "the client pod to print the server's answer",
        TIMEOUT,
        || {
            let pods = pods.clone();
            async move {
                let pod = pods.get("client").await?;
                let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
                if phase != "Succeeded" && phase != "Failed" {
                    return Ok::<_, kube::Error>(None);
                }
                Ok(Some((
                    phase,
                    pods.logs("client", &LogParams::default()).await?,
                )))
            }
        },
    )
    .await?;
    assert_eq!(
        logs,
        ("Succeeded".to_string(), "hello\n".to_string()),
        "client pod phase and logs"
    );

    // Pods reach the API server through the `kubernetes` Service (198.19.0.1:443
    // -> 198.18.255.1), as in-cluster clients such as the operator do. A
    // plain HTTP request gets the API server's own TLS-port answer.
    let api_pod = restricted_pod(
        "api-client",
        serde_json::json!({"app": "api-client"}),
        &[
            "/bin/sh",
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 5 \"$KUBERNETES_SERVICE_HOST\" \"$KUBERNETES_SERVICE_PORT\"",
        ],
    );
    pods.create(&PostParams::default(), &api_pod).await?;
    let (phase, logs) = eventually("the API client pod to finish", TIMEOUT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("api-client").await?;
            let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
            if phase != "Succeeded" && phase != "Failed" {
                return Ok::<_, kube::Error>(None);
            }
            Ok(Some((
                phase,
                pods.logs("api-client", &LogParams::default()).await?,
            )))
        }
    })
    .await?;
    assert!(
        logs.contains("HTTP request to an HTTPS server"),
        "a pod did not reach the API server through the kubernetes Service ({phase}): {logs}"
    );

    // A LoadBalancer address (MetalLB's controller assigns it from the pool
    // the host routes into the node) reaches the pod from the host.
    let _metallb = MetalLb::start(node.kubeconfig(), LOADBALANCER_CIDR).await?;
    let lb: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "server-lb"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "server"},
            "ports": [{"port": 1935, "targetPort": 8080}],
        },
    }))
    .expect("the service literal parses");
    services.create(&PostParams::default(), &lb).await?;
    let lb_ip: Ipv4Addr = eventually("a LoadBalancer address", TIMEOUT, || {
        let services = services.clone();
        async move {
            let svc = services.get("server-lb").await?;
            Ok::<_, kube::Error>(
                svc.status
                    .and_then(|s| s.load_balancer)
                    .and_then(|lb| lb.ingress)
                    .and_then(|i| i.into_iter().next())
                    .and_then(|i| i.ip)
                    .and_then(|ip| ip.parse().ok()),
            )
        }
    })
    .await?;
    assert_eq!(
        lb_ip.octets()[..3],
        [198, 18, 200],
        "LoadBalancer address {lb_ip} not in the pool"
    );
    eventually(
        "the LoadBalancer address to answer from the host",
        TIMEOUT,
        || async move {
            tokio::task::spawn_blocking(move || host_says_hello(SocketAddrV4::new(lb_ip, 1935)))
                .await
                .map_err(|e| e.to_string())?
        },
    )
    .await?;

    // Nothing in the test range that is not routed into the node is reachable
    // from the host: the unreachable route answers locally.
    let unrouted = SocketAddrV4::new(Ipv4Addr::new(198, 18, 77, 7), 80);
    let err = TcpStream::connect_timeout(&unrouted.into(), Duration::from_secs(2))
        .expect_err("an unrouted test-range address must not be reachable");
    assert!(
        err.raw_os_error() == Some(libc_ehostunreach()) || err.kind() == ErrorKind::HostUnreachable,
        "expected EHOSTUNREACH from the unreachable route, got {err:?}"
    );
    Ok(())
}

/// Connects from the host and reads what the server pod says.
fn host_says_hello(addr: SocketAddrV4) -> Result<Option<()>, String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    Ok(text.contains("hello").then_some(()))
}

fn libc_ehostunreach() -> i32 {
    113
}
