//! The load generator (`rtmp-load`) against the real `oxcast-ingest`: a few
//! streams for a few seconds, longer than the capture so it loops. Every
//! stream's playlist must advance, its segments must decode with timestamps
//! that keep increasing across the loop, and the JSON report must be sane.
//!
//! Needs `ffmpeg` and `ffprobe` (Debian package `ffmpeg`).
//!
//! Run: `cargo test -p oxcast-tests --test rtmp_load`

use std::process::Command;
use std::time::Duration;

use oxcast_tests::media::probe::probe;
use oxcast_tests::media::process::Running;
use oxcast_tests::media::{
    assert_decodes, need_ffmpeg, read_playlist, target_dir, wait_for, wait_playlist, Server,
};
use serde_json::Value;

const STREAMS: usize = 3;
/// Seconds each connection sends; the capture is 4 s, so it loops.
const DURATION: u64 = 6;
const CAPTURE_SECONDS: u64 = 4;
const MAX_LAG_MS: f64 = 500.0;
/// Encoding the capture (first run) plus the run itself.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn number(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("report has no number at {pointer}: {report:#}"))
}

#[test]
fn load_generator_publishes_looping_streams_to_oxcast() {
    need_ffmpeg();
    let server = Server::builder().hls("fragment", "1s").start();
    let rtmp = server.rtmp.expect("the run role listens for RTMP");
    let url = format!("rtmp://{rtmp}/{}", server.app);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let report_path = out_dir.path().join("report.json");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtmp-load"));
    cmd.args(["--url", &url])
        .args(["--streams", &STREAMS.to_string()])
        .args(["--duration", &DURATION.to_string()])
        .args(["--prefix", "loadtest"])
        .args(["--encode", "320x240@25:400k"])
        .args(["--encode-seconds", &CAPTURE_SECONDS.to_string()])
        .args(["--gop", "1"])
        .args(["--ramp", "0.5"])
        .args(["--max-lag", &MAX_LAG_MS.to_string()])
        .arg("--cache")
        .arg(target_dir().join("oxcast-load"))
        .arg("--output")
        .arg(&report_path);
    let mut load = Running::spawn(cmd).expect("start rtmp-load");

    // Every stream's playlist appears while the generator runs…
    let keys: Vec<String> = (1..=STREAMS).map(|n| format!("loadtest-{n}")).collect();
    let first: Vec<u64> = keys
        .iter()
        .map(|key| {
            let path = server.playlist_path(key);
            wait_for(&format!("{key}'s first segment"), RUN_TIMEOUT, || {
                assert!(
                    !load.has_exited() || path.exists(),
                    "rtmp-load exited before {key} had a playlist"
                );
                read_playlist(&path)
                    .filter(|p| !p.segments.is_empty())
                    .map(|p| p.next_sequence())
            })
        })
        .collect();

    let done = load.wait(RUN_TIMEOUT);
    assert!(
        done.success(),
        "rtmp-load failed ({:?}):\n{}\n{}",
        done.status,
        done.stdout,
        done.stderr
    );

    // …and advances past the first loop of the capture.
    for (key, first) in keys.iter().zip(first) {
        let path = server.playlist_path(key);
        let playlist = wait_playlist(
            &path,
            &format!("{key}'s playlist to end"),
            RUN_TIMEOUT,
            |p| p.end_list,
        );
        playlist.assert_rfc_valid();
        assert!(
            playlist.next_sequence() > first,
            "{key}: the playlist did not advance ({first} → {})",
            playlist.next_sequence()
        );
        let total = playlist.total_duration();
        assert!(
            total > CAPTURE_SECONDS as f64 + 0.5 && total < DURATION as f64 + 1.5,
            "{key}: {total:.2} s of segments for {DURATION} s sent (capture {CAPTURE_SECONDS} s)"
        );
        assert!(
            playlist.segments.iter().all(|s| !s.discontinuity),
            "{key}: a discontinuity the input did not have:\n{playlist:?}"
        );
        // Every segment decodes; timestamps keep increasing across segments
        // (and so across the capture's loop).
        let mut last_dts: Option<(i64, &str)> = None;
        let mut last_audio: Option<i64> = None;
        for seg in &playlist.segments {
            let file = server.segment_path(key, &seg.uri);
            assert_decodes(&file, &format!("{key}/{}", seg.uri));
            let p = probe(&file, true).expect("ffprobe");
            assert!(p.stream("video").is_some() && p.stream("audio").is_some());
            for pkt in p.packets_of("video") {
                let dts = pkt.dts.expect("video dts");
                if let Some((prev, uri)) = last_dts {
                    assert!(
                        dts > prev,
                        "{key}: video dts went from {prev} ({uri}) to {dts} ({})",
                        seg.uri
                    );
                }
                last_dts = Some((dts, &seg.uri));
            }
            for pkt in p.packets_of("audio") {
                let dts = pkt.dts.expect("audio dts");
                if let Some(prev) = last_audio {
                    assert!(dts > prev, "{key}: audio dts {prev} → {dts} in {}", seg.uri);
                }
                last_audio = Some(dts);
            }
        }
    }

    // Every listed segment's playlist publish latency was measured (the
    // server's histogram), and on a local disk none took a second.
    let listed = server
        .metric("oxcast_segments_written_total")
        .expect("oxcast_segments_written_total");
    let latency = "oxcast_playlist_publish_latency_seconds";
    let measured = server.metric(&format!("{latency}_count"));
    assert_eq!(measured, Some(listed), "one latency per listed segment");
    assert!(listed >= keys.len() as f64);
    assert_eq!(
        server.metric(&format!("{latency}_bucket{{le=\"1\"}}")),
        Some(listed),
        "a publish latency over 1 s on a local disk"
    );

    // The report.
    let text = std::fs::read_to_string(&report_path).expect("report file");
    let report: Value = serde_json::from_str(&text).expect("report is JSON");
    assert_eq!(number(&report, "/streams"), STREAMS as f64, "{text}");
    assert_eq!(number(&report, "/published"), STREAMS as f64, "{text}");
    assert_eq!(
        report
            .pointer("/failed")
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(0),
        "{text}"
    );
    assert_eq!(report.pointer("/valid"), Some(&Value::Bool(true)), "{text}");
    let bytes = number(&report, "/bytes_sent");
    let input_kbps = number(&report, "/input_kbps");
    let kbps = number(&report, "/kbps_per_stream");
    assert!(bytes > 0.0, "{text}");
    assert!(
        kbps > 0.7 * input_kbps && kbps < 1.5 * input_kbps,
        "sent {kbps} kbit/s per stream of a {input_kbps} kbit/s capture: {text}"
    );
    assert_eq!(
        number(&report, "/loop_seconds").round(),
        CAPTURE_SECONDS as f64
    );
    for lag in ["/lag/max_ms", "/generator_lag/max_ms"] {
        assert!(number(&report, lag) < MAX_LAG_MS, "{lag}: {text}");
    }
    assert!(number(&report, "/lag/samples") > 0.0, "{text}");
    assert_eq!(number(&report, "/connections_behind"), 0.0, "{text}");
    let cpu = number(&report, "/cpu/seconds");
    let per_stream = number(&report, "/cpu/percent_per_stream");
    assert!(cpu > 0.0 && per_stream > 0.0, "{text}");
    let wall = number(&report, "/wall_seconds");
    assert!(
        wall >= DURATION as f64 && wall < DURATION as f64 + 10.0,
        "real-time pace: {wall} s for {DURATION} s of media: {text}"
    );
}
