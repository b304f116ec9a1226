//! A stalled volume stalls only its own stream (issue 12 item 4).
//!
//! One stream's directory (`<root>/stall`, the nested layout) is a bindfs
//! (FUSE) view of another directory. The real `oxcast-ingest` runs with a
//! single RTMP worker, so every stream shares one event loop, and real
//! ffmpeg publishes four streams. Then the bindfs process is SIGSTOPped for
//! 10 s: every storage call into that directory hangs, exactly like a hard
//! NFS mount whose server went away. Meanwhile:
//!
//! - the other streams keep producing segments on time (each lists at least
//!   7 new 1 s segments, none more than 2.5 s after the previous one),
//!   their old segments keep being deleted (the janitor is not stuck),
//! - a new publisher is accepted and goes live,
//! - `/metrics` answers promptly, the storage backlog stays under the
//!   per-stream limit (`--storage-backlog 256KiB`, which the stalled stream
//!   overflows at this bitrate) and the process's memory stays flat.
//!
//! After SIGCONT the stalled stream's queued segments are written, the
//! dropped ones are logged and counted in
//! `oxcast_segments_dropped_total{reason="storage_backlog"}`, the playlist
//! resumes with an `EXT-X-DISCONTINUITY`, every listed segment is complete
//! on disk, and every stream ends with `EXT-X-ENDLIST`.
//!
//! Needs root (FUSE mounts), `/dev/fuse` and bindfs (tests/run.sh installs
//! it); without them the test fails with the reason.
//!
//! Run: `cargo test -p oxcast-tests --test storage_stall -- --nocapture`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxcast_tests::media::process::send_signal;
use oxcast_tests::media::{
    require, wait_for, wait_until, Fixture, Playlist, Publisher, Server, ServerBuilder,
};

const STALL: Duration = Duration::from_secs(10);
const FRAGMENT_S: f64 = 1.0;
/// A healthy stream's segment may appear this much later than a fragment
/// after the previous one (real-time ffmpeg on a loaded 2-core machine).
const CADENCE_TOLERANCE_S: f64 = 1.5;
const BACKLOG_LIMIT: u64 = 256 * 1024;
const HEALTHY: [&str; 3] = ["cam1", "cam2", "cam3"];
const STALLED: &str = "stall";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A bindfs (FUSE) view of `source` mounted at `mount`, run in the
/// foreground as our child so it can be paused. On drop: resumed,
/// unmounted (lazily if busy) and reaped, also when the test panics.
struct BindMount {
    child: Child,
    mount: PathBuf,
    _source: tempfile::TempDir,
}

fn mounted(mount: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mount.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

impl BindMount {
    #[track_caller]
    fn mount(mount: &Path) -> BindMount {
        let found = Command::new("bindfs")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "bindfs is missing: this test needs it (Debian package `bindfs`, installed by tests/run.sh)"
        );
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: this test needs FUSE"
        );
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "mounting FUSE file systems for this test needs root"
        );
        let source = tempfile::Builder::new()
            .prefix("oxcast-stall-src-")
            .tempdir()
            .expect("bindfs source dir");
        std::fs::create_dir_all(mount).expect("mount point");
        let child = Command::new("bindfs")
            .arg("-f")
            .arg(source.path())
            .arg(mount)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start bindfs");
        let guard = BindMount {
            child,
            mount: mount.to_path_buf(),
            _source: source,
        };
        wait_until("bindfs mounted", TIMEOUT, || mounted(mount));
        guard
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Pauses the file system until the returned guard is dropped.
    fn pause(&self) -> Paused {
        send_signal(self.pid(), libc::SIGSTOP);
        Paused(self.pid())
    }
}

/// The bindfs process is stopped; SIGCONT on drop (before anything else
/// is torn down, so no process stays stuck in the mount).
struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        send_signal(self.0, libc::SIGCONT);
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        send_signal(self.pid(), libc::SIGCONT);
        let unmounted = Command::new("fusermount")
            .arg("-u")
            .arg(&self.mount)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Segments a playlist has listed so far (media sequence + entries).
fn produced(playlist: &Path) -> Option<u64> {
    let p = Playlist::read(playlist).ok().flatten()?;
    Some(p.media_sequence + p.segments.len() as u64)
}

/// The server's log without colour escapes (`key=value` as printed).
fn log(server: &Server) -> String {
    let raw = server.stderr();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// When each new segment of each stream appeared, polled every 50 ms.
#[derive(Default)]
struct Cadence {
    last_count: BTreeMap<&'static str, u64>,
    /// When the listed count went up, and by how much.
    arrivals: BTreeMap<&'static str, Vec<(Instant, u64)>>,
}

impl Cadence {
    fn observe(&mut self, server: &Server, streams: &[&'static str]) {
        let now = Instant::now();
        for s in streams {
            let Some(n) = produced(&server.playlist_path(s)) else {
                continue;
            };
            let last = self.last_count.entry(s).or_insert(n);
            if n > *last {
                self.arrivals.entry(s).or_default().push((now, n - *last));
                *last = n;
            }
        }
    }

    fn new_segments(&self, stream: &str, from: Instant, to: Instant) -> u64 {
        self.arrivals.get(stream).map_or(0, |a| {
            a.iter()
                .filter(|(t, _)| *t >= from && *t <= to)
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// The longest time without a new segment within [from, to], seconds.
    fn longest_gap(&self, stream: &str, from: Instant, to: Instant) -> f64 {
        let mut marks = vec![from];
        if let Some(a) = self.arrivals.get(stream) {
            marks.extend(a.iter().map(|(t, _)| *t).filter(|t| *t > from && *t < to));
        }
        marks.push(to);
        marks
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .fold(0.0, f64::max)
    }
}

fn lowest_segment_id(server: &Server, stream: &str) -> Option<u64> {
    server
        .layout
        .segment_files(server.root(), stream)
        .iter()
        .filter_map(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
        .min()
}

#[test]
fn a_stalled_volume_stalls_only_its_own_stream() {
    let root = tempfile::Builder::new()
        .prefix("oxcast-stall-root-")
        .tempdir()
        .expect("hls root");
    let fs = BindMount::mount(&root.path().join(STALLED));
    let mut server = ServerBuilder::default()
        .root(root.path())
        .hls("fragment", "1s")
        .hls("playlist-length", "6s")
        .arg("--rtmp-workers")
        .arg("1")
        .arg("--storage-backlog")
        .arg("256KiB")
        .start();
    wait_until("the server reports one RTMP worker", TIMEOUT, || {
        let log = log(&server);
        log.contains("rtmp workers started") && log.contains("workers=1")
    });
    let server_pid = server.pid().expect("server pid");
    let media = require(Fixture::Av14s);
    let loops = ["-stream_loop", "4"]; // 70 s of media
    let mut publishers: Vec<Publisher> = HEALTHY
        .iter()
        .chain([&STALLED])
        .map(|k| Publisher::start_with(media, &server.rtmp_url(k), &loops))
        .collect();

    // Every stream runs and lists a few segments (the janitor is deleting
    // old ones by the time the stall starts: 6 s window + grace).
    for key in HEALTHY.iter().chain([&STALLED]) {
        let playlist = server.playlist_path(key);
        wait_until(&format!("{key}: 4 segments"), TIMEOUT, || {
            produced(&playlist).is_some_and(|n| n >= 4)
        });
    }
    let mut cadence = Cadence::default();
    let baseline_from = Instant::now();
    let baseline_to = baseline_from + STALL;
    while Instant::now() < baseline_to {
        cadence.observe(&server, &HEALTHY);
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_before = rss_kib(server_pid);
    let stalled_before = produced(&server.playlist_path(STALLED)).expect("stalled playlist");
    let lowest_before: Vec<Option<u64>> = HEALTHY
        .iter()
        .map(|k| lowest_segment_id(&server, k))
        .collect();

    // --- The stall ------------------------------------------------------
    let late: Publisher;
    let mut late_live_after: Option<Duration> = None;
    let mut worst_metrics_latency = Duration::ZERO;
    let mut peak_backlog = 0.0f64;
    let mut metrics_failed = 0;
    let mut peak_rss = rss_before;
    let stall_from;
    let stall_to;
    {
        let paused = fs.pause();
        stall_from = Instant::now();
        stall_to = stall_from + STALL;
        // A new publisher during the stall: the shared event loop accepts it.
        late = Publisher::start_with(media, &server.rtmp_url("late"), &loops);
        let late_playlist = server.playlist_path("late");
        while Instant::now() < stall_to {
            cadence.observe(&server, &HEALTHY);
            let asked = Instant::now();
            let backlog = server.metric("oxcast_storage_backlog_bytes ");
            worst_metrics_latency = worst_metrics_latency.max(asked.elapsed());
            match backlog {
                Some(b) => peak_backlog = peak_backlog.max(b),
                None => metrics_failed += 1,
            }
            peak_rss = peak_rss.max(rss_kib(server_pid));
            if late_live_after.is_none() && produced(&late_playlist).is_some_and(|n| n >= 1) {
                late_live_after = Some(stall_from.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // (Nothing under the stalled directory is read here: it would hang.)
        drop(paused);
    }
    let resumed = Instant::now();

    // --- What the other streams saw during the stall ---------------------
    let mut report = Vec::new();
    for (i, key) in HEALTHY.iter().enumerate() {
        let during = cadence.new_segments(key, stall_from, stall_to);
        let gap = cadence.longest_gap(key, stall_from, stall_to);
        let base_gap = cadence.longest_gap(key, baseline_from, baseline_to);
        let base_n = cadence.new_segments(key, baseline_from, baseline_to);
        report.push(format!(
            "{key}: {during} segments during the 10 s stall (longest gap {gap:.2} s); \
             baseline {base_n} in the 10 s before (longest gap {base_gap:.2} s)"
        ));
        assert!(
            during >= 7,
            "{key} listed only {during} segments during the stall\n{}",
            server.stderr()
        );
        assert!(
            gap <= FRAGMENT_S + CADENCE_TOLERANCE_S,
            "{key} went {gap:.2} s without a new segment during the stall"
        );
        let lowest_after = lowest_segment_id(&server, key);
        assert!(
            lowest_after > lowest_before[i],
            "{key}: old segments were not deleted during the stall ({:?} → {lowest_after:?})",
            lowest_before[i]
        );
    }
    let late_live_after =
        late_live_after.expect("a publisher that connected during the stall went live during it");
    report.push(format!(
        "late publisher live {:.2} s into the stall; /metrics worst latency {:.0} ms; \
         peak backlog {peak_backlog} B (limit {BACKLOG_LIMIT} B per stream); \
         RSS {rss_before} KiB before, peak {peak_rss} KiB during",
        late_live_after.as_secs_f64(),
        worst_metrics_latency.as_secs_f64() * 1000.0
    ));
    assert_eq!(
        metrics_failed, 0,
        "/metrics did not answer during the stall"
    );
    assert!(
        worst_metrics_latency < Duration::from_secs(1),
        "/metrics took {worst_metrics_latency:?} during the stall"
    );
    assert!(
        peak_backlog <= (BACKLOG_LIMIT + 64 * 1024) as f64,
        "storage backlog {peak_backlog} B exceeds the limit"
    );
    assert!(
        peak_rss.saturating_sub(rss_before) < 32 * 1024,
        "server memory grew from {rss_before} KiB to {peak_rss} KiB during the stall"
    );

    // --- The stalled stream recovers --------------------------------------
    let stalled_playlist = server.playlist_path(STALLED);
    let recovered = wait_for("the stalled stream lists new segments", TIMEOUT, || {
        produced(&stalled_playlist).filter(|n| *n > stalled_before + 2)
    });
    let recovered_after = resumed.elapsed();
    wait_until(
        "the segments dropped during the stall are counted",
        TIMEOUT,
        || {
            server
                .metric("oxcast_segments_dropped_total{reason=\"storage_backlog\"} ")
                .is_some_and(|n| n >= 1.0)
        },
    );
    let dropped = server
        .metric("oxcast_segments_dropped_total{reason=\"storage_backlog\"} ")
        .unwrap_or(0.0);
    let p = wait_for("a discontinuity after the gap", TIMEOUT, || {
        Playlist::read(&stalled_playlist)
            .ok()
            .flatten()
            .filter(|p| p.segments.iter().any(|s| s.discontinuity))
    });
    for s in &p.segments {
        let path = server.segment_path(STALLED, &s.uri);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 0 && len % 188 == 0,
            "{} listed but not complete ({len} B)",
            path.display()
        );
    }
    let stderr = log(&server);
    assert!(
        stderr.contains("storage is not keeping up") && stderr.contains("stream=stall"),
        "the overflow was not logged with the stream:\n{stderr}"
    );
    wait_until("the end of the drop episode is logged", TIMEOUT, || {
        log(&server).contains("storage caught up")
    });
    report.push(format!(
        "stalled stream: {stalled_before} segments before, {recovered} listed {:.2} s after SIGCONT; \
         {dropped} segments dropped (backlog over 256 KiB), DISCONTINUITY after the gap",
        recovered_after.as_secs_f64()
    ));
    assert!(server
        .metric("oxcast_storage_backlog_bytes ")
        .is_some_and(|b| b <= BACKLOG_LIMIT as f64));

    let writes = server
        .metric("oxcast_segment_write_seconds_count ")
        .unwrap_or(0.0);
    let write_time = server
        .metric("oxcast_segment_write_seconds_sum ")
        .unwrap_or(0.0);
    let under_10ms = server
        .metric("oxcast_segment_write_seconds_bucket{le=\"0.01\"} ")
        .unwrap_or(0.0);
    let over_5s = writes
        - server
            .metric("oxcast_segment_write_seconds_bucket{le=\"5\"} ")
            .unwrap_or(0.0);
    report.push(format!(
        "segment writes: {writes} segments, mean storage time {:.1} ms, {under_10ms} under 10 ms, \
         {over_5s} over 5 s (the one in flight when the volume stopped)",
        if writes > 0.0 {
            write_time / writes * 1000.0
        } else {
            0.0
        }
    ));

    // --- Every stream ends with ENDLIST -----------------------------------
    publishers.push(late);
    for p in publishers {
        let _ = p.stop();
    }
    for key in HEALTHY.iter().chain([&STALLED, &"late"]) {
        let playlist = server.playlist_path(key);
        wait_until(&format!("{key}: ENDLIST"), TIMEOUT, || {
            Playlist::read(&playlist)
                .ok()
                .flatten()
                .is_some_and(|p| p.end_list)
        });
    }
    assert!(server.is_running(), "server died:\n{}", server.stderr());
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
    eprintln!("storage_stall measurements:\n  {}", report.join("\n  "));
    drop(server);
    drop(fs);
}
