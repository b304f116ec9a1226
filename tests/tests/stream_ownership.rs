//! One owner per stream (issue 12): three `oxcast-ingest rtmp` replicas on
//! one shared HLS directory, with ownership through Leases on the test
//! control plane (`oxcast_tests::cluster`), published to by real ffmpeg.
//!
//! - the same key on a second replica is rejected (RTMP error + log line);
//! - restarting or SIGKILLing a replica never touches another replica's live
//!   stream (no ENDLIST, no listed file deleted, the playlist advances);
//! - a republish on another replica continues the sequence with a
//!   DISCONTINUITY;
//! - a SIGKILLed owner's stream is ended and later cleaned by a survivor;
//! - a replica that loses the API server stops writing and drops its
//!   publisher (fencing), and the stream is taken over;
//! - API writes with 100 live streams (reported; bounded by replicas).
//!
//! Needs ffmpeg/ffprobe and the control-plane binaries (tests/run.sh).
//! Run: `cargo test -p oxcast-tests --test stream_ownership`

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::Api;
use oxcast_tests::cluster::{self, TestCluster, TestNamespace};
use oxcast_tests::media::http;
use oxcast_tests::media::process::send_signal;
use oxcast_tests::media::{
    have_ffmpeg, observe_for, require, wait_for, wait_until, Fixture, Layout, Playlist, Publisher,
    Role, Server,
};
use oxcast_tests::rtmp_client::{amf0, connect_payload, contains, message, RawRtmp, AMF0_COMMAND};

const LEASE_DURATION: &str = "6s";
const RENEW_INTERVAL: &str = "1s";
const PLAYLIST_LENGTH: Duration = Duration::from_secs(6);
/// Lease expiry + a sweep + slack on a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(25);
const FIRST_SEGMENTS: Duration = Duration::from_secs(30);

/// The replicas are heavy (ffmpeg, three servers): one scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct Env {
    rt: tokio::runtime::Runtime,
    cluster: &'static TestCluster,
    ns: TestNamespace,
    root: tempfile::TempDir,
}

impl Env {
    fn new(prefix: &str) -> Env {
        assert!(have_ffmpeg(), "ffmpeg and ffprobe are required");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cluster = cluster::shared_blocking().expect("test control plane");
        let ns = rt
            .block_on(cluster.namespace(prefix))
            .expect("test namespace");
        let root = tempfile::Builder::new()
            .prefix("oxcast-owners-")
            .tempdir()
            .expect("shared HLS root");
        Env {
            rt,
            cluster,
            ns,
            root,
        }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn replica(&self, id: &str) -> Server {
        self.replica_with(id, self.cluster.kubeconfig(), &[])
    }

    fn replica_with(&self, id: &str, kubeconfig: &Path, extra: &[&str]) -> Server {
        let mut b = Server::builder()
            .role(Role::Rtmp)
            .root(self.root())
            .hls("fragment", "1s")
            .hls("playlist-length", "6s")
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info");
        for a in [
            "--ops-listen",
            "127.0.0.1:0",
            "--ownership",
            "leases",
            "--lease-namespace",
            self.ns.name(),
            "--replica-id",
            id,
            "--lease-prefix",
            "owners",
            "--lease-duration",
            LEASE_DURATION,
            "--lease-renew-interval",
            RENEW_INTERVAL,
        ]
        .iter()
        .chain(extra)
        {
            b = b.arg(*a);
        }
        b.start()
    }

    fn leases(&self) -> Vec<Lease> {
        let client = self
            .rt
            .block_on(async { self.cluster.client() })
            .expect("client");
        let api: Api<Lease> = Api::namespaced(client, self.ns.name());
        self.rt
            .block_on(api.list(&ListParams::default()))
            .expect("list leases")
            .items
    }

    fn playlist_path(&self, key: &str) -> PathBuf {
        Layout::Nested.playlist(self.root(), key)
    }

    fn playlist(&self, key: &str) -> Option<Playlist> {
        match Playlist::read(&self.playlist_path(key)) {
            Ok(p) => p,
            Err(e) => panic!("unparsable playlist of {key}: {e}"),
        }
    }

    fn wait_segments(&self, key: &str, n: usize) -> Playlist {
        wait_for(&format!("{n} segments of {key}"), FIRST_SEGMENTS, || {
            self.playlist(key)
                .filter(|p| p.segments.len() >= n && !p.end_list)
        })
    }

    /// Every segment the playlist lists exists on disk.
    #[track_caller]
    fn assert_listed_files_exist(&self, key: &str, p: &Playlist) {
        for s in &p.segments {
            let path = Layout::Nested.segment(self.root(), key, &s.uri);
            assert!(
                path.exists(),
                "{} is listed but was deleted",
                path.display()
            );
        }
    }
}

/// The `rtmp` role's `/metrics` + probes listener.
fn ops_addr(server: &Server) -> SocketAddr {
    wait_for("the ops listener", Duration::from_secs(10), || {
        server.stdout_lines().iter().find_map(|l| {
            l.trim()
                .strip_prefix("listening ops ")
                .and_then(|a| a.parse().ok())
        })
    })
}

fn get(server: &Server, path: &str) -> (u16, String) {
    let r = http::get(ops_addr(server), path).expect("GET from the ops listener");
    (r.status, r.text())
}

fn last_sequence(p: &Playlist) -> u64 {
    p.segments.last().map(|s| s.sequence).unwrap_or(0)
}

fn looping(server: &Server, key: &str) -> Publisher {
    Publisher::start_with(
        require(Fixture::Av14s),
        &server.rtmp_url(key),
        &["-stream_loop", "-1"],
    )
}

fn sigkill(server: &mut Server) {
    let pid = server.pid().expect("running");
    send_signal(pid, libc::SIGKILL);
    wait_until(
        "the SIGKILLed replica is gone",
        Duration::from_secs(10),
        || !server.is_running(),
    );
}

fn holder(l: &Lease) -> String {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

fn stream_leases(leases: &[Lease]) -> Vec<&Lease> {
    leases
        .iter()
        .filter(|l| {
            l.metadata
                .labels
                .as_ref()
                .and_then(|m| m.get("oxcast.io/lease-kind"))
                .is_some_and(|k| k == "stream")
        })
        .collect()
}

#[test]
fn a_second_publisher_on_another_replica_is_rejected() {
    let _serial = serial();
    let env = Env::new("owner-reject");
    let a = env.replica("replica-a");
    let mut b = env.replica("replica-b");
    let _pa = looping(&a, "cam");
    let first = env.wait_segments("cam", 2);

    let leases = env.leases();
    let streams = stream_leases(&leases);
    assert_eq!(streams.len(), 1, "one stream Lease: {leases:?}");
    assert!(
        holder(streams[0]).starts_with("replica-a_"),
        "held by replica-a: {:?}",
        streams[0]
    );
    assert_eq!(
        leases.len(),
        3,
        "two heartbeat Leases and one stream Lease, nothing per stream per time"
    );

    let second = Publisher::start(require(Fixture::Av8s), &b.rtmp_url("cam"));
    let done = second.wait_at_most(Duration::from_secs(30));
    assert!(
        !done.success(),
        "the second publisher was accepted: {done:?}"
    );
    wait_until(
        "replica-b logs the rejection",
        Duration::from_secs(10),
        || {
            let log = b.stderr();
            log.contains("publish rejected")
                && log.contains("stream cam is already being published")
        },
    );
    assert!(b.is_running());
    let (status, metrics) = get(&b, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("oxcast_publish_rejections_total{reason=\"already_live\"} 1\n"),
        "rejection counted by reason:\n{metrics}"
    );
    assert_eq!(get(&a, "/readyz").0, 200);
    // replica-a's stream went on, unharmed.
    let later = wait_for("cam keeps advancing", FIRST_SEGMENTS, || {
        env.playlist("cam")
            .filter(|p| last_sequence(p) >= last_sequence(&first) + 2)
    });
    assert!(!later.end_list);
    env.assert_listed_files_exist("cam", &later);
}

#[test]
fn restarting_or_killing_a_replica_never_touches_another_replicas_stream() {
    let _serial = serial();
    let env = Env::new("owner-restart");
    let a = env.replica("replica-a");
    let mut b = env.replica("replica-b");
    let mut c = env.replica("replica-c");
    let _pa = looping(&a, "live1");
    let first = env.wait_segments("live1", 2);

    // SIGKILL and restart b; SIGTERM and restart c; start a fourth one.
    sigkill(&mut b);
    let _b2 = env.replica("replica-b");
    c.stop();
    let _c2 = env.replica("replica-c");
    let _d = env.replica("replica-d");

    let mut seen = BTreeSet::new();
    let mut last = last_sequence(&first);
    observe_for(PLAYLIST_LENGTH * 2 + Duration::from_secs(2), || {
        let p = env
            .playlist("live1")
            .expect("the live playlist was deleted");
        assert!(!p.end_list, "another replica ended a live stream:\n{p:?}");
        env.assert_listed_files_exist("live1", &p);
        assert!(last_sequence(&p) >= last, "the sequence went back");
        last = last_sequence(&p);
        seen.extend(p.segments.iter().map(|s| s.uri.clone()));
    });
    assert!(
        last >= last_sequence(&first) + 8,
        "the stream stopped advancing: {} -> {last}",
        last_sequence(&first)
    );
    assert!(seen.len() >= 10, "{seen:?}");
}

#[test]
fn a_republish_on_another_replica_continues_the_sequence() {
    let _serial = serial();
    let env = Env::new("owner-continue");
    let a = env.replica("replica-a");
    let b = env.replica("replica-b");
    let media = require(Fixture::Av8s);
    let done = Publisher::start(media, &a.rtmp_url("show")).wait();
    assert!(done.success(), "{done:?}");
    let ended = wait_for("ENDLIST from replica-a", Duration::from_secs(15), || {
        env.playlist("show").filter(|p| p.end_list)
    });
    let old: BTreeSet<String> = ended.segments.iter().map(|s| s.uri.clone()).collect();
    let old_last = last_sequence(&ended);

    let _pb = looping(&b, "show");
    let continued = wait_for("replica-b's first segment", FIRST_SEGMENTS, || {
        env.playlist("show")
            .filter(|p| p.segments.iter().any(|s| !old.contains(&s.uri)))
    });
    assert!(!continued.end_list);
    let first_new = continued
        .segments
        .iter()
        .find(|s| !old.contains(&s.uri))
        .expect("a new segment");
    assert_eq!(
        first_new.sequence,
        old_last + 1,
        "media sequence continues from the volume:\n{continued:?}"
    );
    assert!(
        first_new.discontinuity,
        "EXT-X-DISCONTINUITY before the republish"
    );
    let old_ids: Vec<u64> = old
        .iter()
        .filter_map(|u| u.trim_end_matches(".ts").parse().ok())
        .collect();
    let new_id: u64 = first_new
        .uri
        .trim_end_matches(".ts")
        .parse()
        .expect("numeric segment id");
    assert!(
        old_ids.iter().all(|o| *o < new_id),
        "segment ids continue upwards: {old_ids:?} then {new_id}"
    );
}

#[test]
fn a_sigkilled_owners_stream_is_ended_and_cleaned_by_a_survivor() {
    let _serial = serial();
    let env = Env::new("owner-takeover");
    let mut a = env.replica("replica-a");
    let mut b = env.replica("replica-b");
    let pa = looping(&a, "orphan");
    env.wait_segments("orphan", 2);
    sigkill(&mut a);
    drop(pa);
    let killed_at = Instant::now();

    let ended = wait_for("a survivor ends the orphaned stream", TAKEOVER, || {
        env.playlist("orphan").filter(|p| p.end_list)
    });
    // The survivor logs the take-over just after writing the playlist.
    wait_for(
        "replica-b to log that it ended the stream",
        Duration::from_secs(10),
        || {
            b.stderr()
                .contains("recovered stream left without an owner")
                .then_some(())
        },
    );
    env.assert_listed_files_exist("orphan", &ended);
    eprintln!("ended {:?} after SIGKILL", killed_at.elapsed());

    let dir = env.root().join("orphan");
    wait_until(
        "the survivor removes the ended stream's files",
        PLAYLIST_LENGTH + TAKEOVER,
        || !dir.exists(),
    );
    eprintln!("cleaned {:?} after SIGKILL", killed_at.elapsed());
    assert!(b.is_running());
    wait_until(
        "the stream Lease is released",
        Duration::from_secs(10),
        || stream_leases(&env.leases()).is_empty(),
    );
}

/// A TCP proxy to the API server that the test can cut.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        Proxy::start_on(0, target)
    }

    fn start_on(port: u16, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, c) = (stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        let Ok(up) = TcpStream::connect(target) else {
                            continue;
                        };
                        let mut list = c.lock().unwrap_or_else(|p| p.into_inner());
                        for (from, to) in [(&down, &up), (&up, &down)] {
                            let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone())
                            else {
                                continue;
                            };
                            std::thread::spawn(move || {
                                let mut buf = [0u8; 16384];
                                while let Ok(n) = from.read(&mut buf) {
                                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                let _ = to.shutdown(Shutdown::Both);
                            });
                        }
                        list.push(down);
                        list.push(up);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        });
        Proxy {
            addr,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    /// Closes every connection and the listener: the API server is gone.
    fn cut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The admin kubeconfig with the API server replaced by `addr`.
fn kubeconfig_via(original: &Path, addr: SocketAddr, out: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(original).expect("read kubeconfig");
    let mut doc: serde_json::Value = serde_yaml::from_str(&text).expect("parse kubeconfig");
    let server = doc["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("server URL")
        .to_string();
    let host_port = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let target: SocketAddr = host_port.parse().expect("API server address is ip:port");
    doc["clusters"][0]["cluster"]["server"] =
        serde_json::Value::String(format!("https://127.0.0.1:{}", addr.port()));
    std::fs::write(out, serde_json::to_string(&doc).expect("render")).expect("write kubeconfig");
    target
}

#[test]
fn a_replica_that_loses_the_api_server_stops_writing_and_its_stream_is_taken_over() {
    let _serial = serial();
    let env = Env::new("owner-fence");
    let kubeconfig = env
        .root()
        .join("..")
        .join(format!("{}-via-proxy.kubeconfig", env.ns.name()));
    // Find the API server first, then proxy it.
    let probe = Proxy::start("127.0.0.1:9".parse().expect("addr"));
    let target = kubeconfig_via(env.cluster.kubeconfig(), probe.addr, &kubeconfig);
    drop(probe);
    let mut proxy = Proxy::start(target);
    kubeconfig_via(env.cluster.kubeconfig(), proxy.addr, &kubeconfig);

    let mut a = env.replica_with("replica-a", &kubeconfig, &[]);
    let b = env.replica("replica-b");
    let mut pa = looping(&a, "fenced");
    env.wait_segments("fenced", 2);

    proxy.cut();
    let cut_at = Instant::now();
    wait_until(
        "the fenced replica drops its publisher",
        Duration::from_secs(15),
        || !pa.is_running(),
    );
    let dropped_after = cut_at.elapsed();
    // Lease 6s, renew 1s: claims are valid 5 s after the last heartbeat,
    // checked every second.
    assert!(
        dropped_after <= Duration::from_secs(10),
        "publisher dropped only after {dropped_after:?}"
    );
    let at_drop = env.playlist("fenced").expect("playlist");
    assert!(
        !at_drop.end_list,
        "a fenced replica must not end the stream"
    );
    wait_until(
        "replica-a to log the fencing",
        Duration::from_secs(10),
        || a.stderr().contains("fenced"),
    );
    assert!(a.is_running(), "fencing does not kill the replica");
    let (status, body) = get(&a, "/readyz");
    assert_eq!(status, 503, "a fenced replica is not ready: {body}");
    assert!(body.contains("cannot prove stream ownership"), "{body}");
    assert!(get(&a, "/metrics")
        .1
        .contains("oxcast_ownership_fenced_total 1\n"));
    assert_eq!(get(&b, "/readyz").0, 200);

    let ended = wait_for("a survivor ends the stream", TAKEOVER, || {
        env.playlist("fenced").filter(|p| p.end_list)
    });
    let uris = |p: &Playlist| p.segments.iter().map(|s| s.uri.clone()).collect::<Vec<_>>();
    assert_eq!(
        uris(&ended),
        uris(&at_drop),
        "nothing written after fencing but the survivor's ENDLIST"
    );

    // The broadcaster reconnects to the survivor and continues.
    let _pb = looping(&b, "fenced");
    let continued = wait_for("the republish on replica-b", FIRST_SEGMENTS, || {
        env.playlist("fenced")
            .filter(|p| !p.end_list && last_sequence(p) > last_sequence(&ended))
    });
    let first_new = continued
        .segments
        .iter()
        .find(|s| s.sequence == last_sequence(&ended) + 1)
        .expect("the sequence continues");
    assert!(first_new.discontinuity);

    // The API server comes back: replica-a registers again (a new holder,
    // so its old claims stay void) and takes publishes again.
    let _proxy_again = Proxy::start_on(proxy.addr.port(), target);
    wait_until("replica-a is ready again", Duration::from_secs(20), || {
        get(&a, "/readyz").0 == 200
    });
    let _pa2 = looping(&a, "after-fence");
    env.wait_segments("after-fence", 2);
    let again = env.playlist("fenced").expect("playlist");
    assert!(!again.end_list, "replica-b's stream is untouched");
    let _ = std::fs::remove_file(&kubeconfig);
    a.stop();
}

/// Publishes `key` over a raw RTMP connection without media: the publish is
/// accepted (a claim) and stays live until the idle timeout.
fn raw_publish(addr: SocketAddr, key: &str) -> RawRtmp {
    let mut c = RawRtmp::handshaken(addr).expect("handshake");
    // connect, createStream and publish in one go; the server answers them
    // in order.
    let mut create = amf0::string("createStream");
    create.extend(amf0::number(2.0));
    create.extend(amf0::null());
    let mut publish = amf0::string("publish");
    publish.extend(amf0::number(3.0));
    publish.extend(amf0::null());
    publish.extend(amf0::string(key));
    publish.extend(amf0::string("live"));
    let mut out = message(3, AMF0_COMMAND, 0, &connect_payload("app"), 128);
    out.extend(message(3, AMF0_COMMAND, 0, &create, 128));
    out.extend(message(8, AMF0_COMMAND, 1, &publish, 128));
    c.send(&out).expect("send commands");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        got.extend(c.read_for(Duration::from_millis(50)).expect("read"));
        if contains(&got, b"NetStream.Publish.Start") {
            return c;
        }
        assert!(
            !contains(&got, b"NetStream.Publish.BadName"),
            "publish of {key} refused"
        );
    }
    panic!("publish of {key} not accepted within 20 s");
}

/// Counts Lease writes in the namespace (one watch event per successful
/// create, update or delete) for `window`.
fn lease_writes(env: &Env, window: Duration) -> usize {
    let client = env
        .rt
        .block_on(async { env.cluster.client() })
        .expect("client");
    let api: Api<Lease> = Api::namespaced(client, env.ns.name());
    env.rt.block_on(async {
        use futures::StreamExt;
        let list = api.list(&ListParams::default()).await.expect("list");
        let rv = list.metadata.resource_version.unwrap_or_default();
        let mut events = api
            .watch(&WatchParams::default().timeout(290), &rv)
            .await
            .expect("watch")
            .boxed();
        let mut n = 0;
        let until = tokio::time::Instant::now() + window;
        loop {
            tokio::select! {
                e = events.next() => match e {
                    Some(Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_))) => n += 1,
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        n
    })
}

#[test]
fn lease_writes_do_not_grow_with_live_streams() {
    let _serial = serial();
    let env = Env::new("owner-writes");
    let config = env
        .root()
        .join("..")
        .join(format!("{}-ingest.yaml", env.ns.name()));
    std::fs::write(&config, "rtmp:\n  limits:\n    idleTimeout: 10m\n").expect("config");
    let cfg = config.to_string_lossy().to_string();
    let kubeconfig = env.cluster.kubeconfig().to_path_buf();
    let replicas: Vec<Server> = ["replica-a", "replica-b", "replica-c"]
        .iter()
        .map(|id| env.replica_with(id, &kubeconfig, &["--config", &cfg]))
        .collect();
    let window = Duration::from_secs(20);
    let idle = lease_writes(&env, window);

    const STREAMS: usize = 100;
    let started = Instant::now();
    let conns: Vec<RawRtmp> = (0..STREAMS)
        .map(|i| raw_publish(replicas[i % 3].rtmp.expect("rtmp"), &format!("s{i}")))
        .collect();
    let claimed_in = started.elapsed();
    assert_eq!(stream_leases(&env.leases()).len(), STREAMS);
    let busy = lease_writes(&env, window);
    let per_s = |n: usize| n as f64 / window.as_secs_f64();
    eprintln!(
        "lease writes/s with 3 replicas (renew {RENEW_INTERVAL}): 0 streams {:.2}, {STREAMS} live streams {:.2} (claims of {STREAMS} took {claimed_in:?})",
        per_s(idle),
        per_s(busy)
    );
    // 3 heartbeats per renew interval, whatever the number of streams.
    assert!(
        busy <= idle + 4,
        "writes grew with live streams: {idle} -> {busy} in {window:?}"
    );
    assert!(per_s(busy) <= 3.0 * 1.5, "{busy} writes in {window:?}");
    drop(conns);
    let _ = std::fs::remove_file(&config);
}
