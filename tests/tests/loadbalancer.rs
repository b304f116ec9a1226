//! MetalLB's controller as the test cluster's LoadBalancer implementation
//! (tests/src/cluster/loadbalancer.rs): Services of type LoadBalancer get an
//! address from the pool, distinct addresses, freed on delete; a request for
//! an address outside the pool is refused with a Warning event.
//!
//! Runs against the local control plane with kwok nodes: address assignment
//! needs no real node (routing the pool into a node is the node harness's job).
//!
//! Run: `cargo test -p oxcast-tests --test loadbalancer -- --nocapture`
//! (the first run builds the control plane and the MetalLB controller, see
//! tests/cluster/README.md).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Service, ServicePort, ServiceSpec};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::wait::conditions;
use kube::ResourceExt;
use oxcast_tests::cluster::loadbalancer::{
    self, MetalLb, ALLOCATED_FROM_POOL_ANNOTATION, LOAD_BALANCER_IPS_ANNOTATION, POOL_NAME,
};
use oxcast_tests::cluster::{self, eventually, wait_for_condition};

const POOL: &str = "198.18.200.0/24";
/// Inside the benchmark range, outside the pool. Nothing is ever sent to it.
const OUTSIDE_POOL: &str = "198.18.201.7";
const TIMEOUT: Duration = Duration::from_secs(60);

fn in_pool(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    (a, b, c) == (198, 18, 200)
}

fn lb_service(name: &str, annotations: &[(&str, &str)]) -> Service {
    let mut svc = Service::default();
    svc.metadata.name = Some(name.to_string());
    if !annotations.is_empty() {
        svc.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }
    svc.spec = Some(ServiceSpec {
        type_: Some("LoadBalancer".into()),
        selector: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
        ports: Some(vec![ServicePort {
            name: Some("rtmp".into()),
            port: 1935,
            ..ServicePort::default()
        }]),
        ..ServiceSpec::default()
    });
    svc
}

fn ingress_ip(svc: &Service) -> Option<Ipv4Addr> {
    svc.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .as_deref()?
        .parse()
        .ok()
}

/// Creates the Service and watches it until it has an ingress address;
/// returns the address and the time from the create call to seeing it.
async fn create_and_wait_for_ip(api: &Api<Service>, svc: Service) -> (Ipv4Addr, Duration) {
    let name = svc.name_any();
    let start = Instant::now();
    api.create(&PostParams::default(), &svc)
        .await
        .unwrap_or_else(|e| panic!("create Service {name}: {e}"));
    let done = wait_for_condition(api.clone(), &name, TIMEOUT, |obj: Option<&Service>| {
        obj.and_then(ingress_ip).is_some()
    })
    .await
    .unwrap_or_else(|e| panic!("Service {name} to get a LoadBalancer address: {e}"))
    .unwrap_or_else(|| panic!("Service {name} vanished"));
    let elapsed = start.elapsed();
    let ip = ingress_ip(&done).expect("the condition saw an ingress address");
    (ip, elapsed)
}

async fn pool_assigned(pools: &Api<DynamicObject>, expected: i64) {
    eventually(
        &format!("IPAddressPool {POOL_NAME} to count {expected} assigned addresses"),
        TIMEOUT,
        || {
            let pools = pools.clone();
            async move {
                let pool = pools.get(POOL_NAME).await?;
                let assigned = pool.data["status"]["assignedIPv4"].as_i64();
                Ok::<_, kube::Error>((assigned == Some(expected)).then_some(()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn load_balancer_services_get_addresses_from_the_metallb_pool() {
    let ctx = cluster::expect_test_context("loadbalancer").await;
    let mut lb = MetalLb::start(ctx.cluster.kubeconfig(), POOL)
        .await
        .unwrap_or_else(|e| panic!("start MetalLB: {e}"));
    eprintln!(
        "MetalLB controller ready {:?} after start (CRDs, pool, process); log {}",
        lb.startup_time(),
        lb.log_path().display()
    );
    let services: Api<Service> = ctx.api();
    let pools: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        loadbalancer::NAMESPACE,
        &loadbalancer::ip_address_pool_resource(),
    );
    // Other tests of this binary could hold addresses; there are none, so
    // counting from zero is exact.
    pool_assigned(&pools, 0).await;

    // 1. An address from the pool, and the annotation naming the pool.
    let (first_ip, first_latency) =
        create_and_wait_for_ip(&services, lb_service("first", &[])).await;
    assert!(in_pool(first_ip), "{first_ip} is not in {POOL}");
    let first = services.get("first").await.expect("get Service first");
    assert_eq!(
        first
            .annotations()
            .get(ALLOCATED_FROM_POOL_ANNOTATION)
            .map(String::as_str),
        Some(POOL_NAME),
        "MetalLB names the pool the address came from"
    );

    // 2. A second Service gets a different address.
    let (second_ip, second_latency) =
        create_and_wait_for_ip(&services, lb_service("second", &[])).await;
    assert!(in_pool(second_ip), "{second_ip} is not in {POOL}");
    assert_ne!(first_ip, second_ip, "two Services share an address");
    pool_assigned(&pools, 2).await;
    eprintln!("Service create -> ingress IP: {first_latency:?} ({first_ip}), {second_latency:?} ({second_ip})");

    // 3. Deleting a Service frees its address: the pool counts it as free
    //    again, and a new Service asking for exactly that address gets it.
    let first_uid = first.uid().expect("Service first has a uid");
    services
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete Service first");
    wait_for_condition(
        services.clone(),
        "first",
        TIMEOUT,
        conditions::is_deleted(&first_uid),
    )
    .await
    .expect("Service first to be gone");
    pool_assigned(&pools, 1).await;
    let wanted = first_ip.to_string();
    let (reused_ip, reuse_latency) = create_and_wait_for_ip(
        &services,
        lb_service("reuse", &[(LOAD_BALANCER_IPS_ANNOTATION, &wanted)]),
    )
    .await;
    assert_eq!(reused_ip, first_ip, "the freed address is assignable again");
    eprintln!("Service with a requested address -> ingress IP: {reuse_latency:?}");

    // 4. An address outside the pool is refused: no ingress address, and a
    //    Warning event on the Service says why.
    services
        .create(
            &PostParams::default(),
            &lb_service("outside", &[(LOAD_BALANCER_IPS_ANNOTATION, OUTSIDE_POOL)]),
        )
        .await
        .expect("create Service outside");
    let events: Api<Event> = ctx.api();
    let refusal = eventually(
        "a Warning event refusing the out-of-pool address",
        TIMEOUT,
        || {
            let events = events.clone();
            async move {
                let list = events
                    .list(&ListParams::default().fields("involvedObject.name=outside"))
                    .await?;
                Ok::<_, kube::Error>(list.items.into_iter().find(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("AllocationFailed")
                }))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let message = refusal.message.unwrap_or_default();
    assert!(
        message.contains(OUTSIDE_POOL),
        "the event names the refused address: {message:?}"
    );
    eprintln!("out-of-pool request refused: {message}");
    let outside = services.get("outside").await.expect("get Service outside");
    assert_eq!(
        ingress_ip(&outside),
        None,
        "an out-of-pool address was assigned"
    );
    pool_assigned(&pools, 2).await;

    // 5. The controller is still running, and dropping the guard stops it.
    lb.check_running()
        .expect("the MetalLB controller is running");
    let pid = lb.pid() as libc::pid_t;
    assert!(pid > 0, "the guard knows the controller's pid");
    assert_eq!(metallb_children(), vec![pid], "one controller, ours");
    drop(lb);
    // SAFETY: signal 0 only checks whether the pid exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(
        !alive,
        "the MetalLB controller (pid {pid}) outlived its guard"
    );

    // 6. A pool MetalLB cannot parse fails the start at once, with its reason
    //    (not a time-out), and leaves no controller behind.
    let started = Instant::now();
    let err = match MetalLb::start(ctx.cluster.kubeconfig(), "198.18.200.0/33").await {
        Ok(lb) => panic!(
            "MetalLB accepted the pool 198.18.200.0/33 (pid {})",
            lb.pid()
        ),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("rejected") && err.contains("invalid CIDR \"198.18.200.0/33\""),
        "the error names the pool and MetalLB's reason: {err}"
    );
    assert!(
        started.elapsed() < TIMEOUT,
        "an invalid pool took {:?} to be reported",
        started.elapsed()
    );
    eprintln!("invalid pool refused in {:?}: {err}", started.elapsed());
    assert_eq!(
        metallb_children(),
        Vec::<i32>::new(),
        "a failed start left its controller running"
    );
}

/// Live child processes of this test binary running the MetalLB controller
/// (`comm` is cut to 15 bytes: "metallb-control"). Zombies do not count.
fn metallb_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // /proc/<pid>/stat: "pid (comm) state ppid ..."
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let ppid = fields.next();
            comm.ends_with("(metallb-control") && state != Some("Z") && ppid == Some(me.as_str())
        })
        .collect()
}
