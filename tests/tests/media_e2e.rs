//! Media end-to-end tests: the real `oxcast-ingest` binary, published to by
//! the real ffmpeg over RTMP, its HLS output checked with ffprobe, ffmpeg
//! decodes, an independent playlist parser and raw HTTP requests.
//!
//! Every test runs its own server on ephemeral ports with its own temporary
//! HLS root. Needs `ffmpeg` and `ffprobe` (Debian package `ffmpeg`).
//!
//! Run: `cargo test -p oxcast-tests --test media_e2e`

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oxcast_tests::media::http;
use oxcast_tests::media::probe::{decode_errors, frame_sizes, probe};
use oxcast_tests::media::{
    files_under, fixture, have_ffmpeg, observe_for, require, wait_for, wait_until, Fixture,
    FixtureError, Layout, Media, Playlist, Publisher, Role, Server,
};

/// How long after its publisher stops a playlist may take to get ENDLIST.
const END_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a first segment may take to appear after publishing starts.
const FIRST_SEGMENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a rejected publish may take to fail.
const REJECT_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// helpers

#[track_caller]
fn need_ffmpeg() {
    assert!(
        have_ffmpeg(),
        "ffmpeg and ffprobe are required for the media tests (apt-get install ffmpeg)"
    );
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Reads and parses a playlist; panics on a malformed one (a half-written
/// or invalid playlist is a server bug), `None` if it does not exist yet.
#[track_caller]
fn read_playlist(path: &Path) -> Option<Playlist> {
    match Playlist::read(path) {
        Ok(p) => p,
        Err(e) => panic!("unparsable playlist: {e}"),
    }
}

/// Waits until the playlist exists and satisfies `pred`.
#[track_caller]
fn wait_playlist(
    path: &Path,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Playlist) -> bool,
) -> Playlist {
    wait_for(&format!("{what} ({})", path.display()), timeout, || {
        read_playlist(path).filter(|p| pred(p))
    })
}

/// Waits for `#EXT-X-ENDLIST` after a publisher stopped.
#[track_caller]
fn wait_ended(path: &Path) -> Playlist {
    wait_playlist(path, "#EXT-X-ENDLIST", END_TIMEOUT, |p| p.end_list)
}

/// Publishes `media` to `key` in real time while snapshotting the playlist
/// every poll; calls `each` on every new snapshot. Returns the snapshots and
/// asserts that ffmpeg exited successfully.
#[track_caller]
fn publish_watching(
    server: &Server,
    key: &str,
    media: &Media,
    mut each: impl FnMut(&Playlist),
) -> Vec<Playlist> {
    let path = server.playlist_path(key);
    let mut publisher = Publisher::start(media, &server.rtmp_url(key));
    let mut snapshots: Vec<Playlist> = Vec::new();
    let deadline =
        Instant::now() + Duration::from_secs_f64(media.duration) + Duration::from_secs(30);
    while publisher.is_running() && Instant::now() < deadline {
        if let Some(pl) = read_playlist(&path) {
            if snapshots.last() != Some(&pl) {
                each(&pl);
                snapshots.push(pl);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = publisher.wait_at_most(Duration::from_secs(5));
    assert!(
        done.success(),
        "publisher to {key} failed ({:?}): {}",
        done.status,
        done.stderr
    );
    snapshots
}

/// Publishes `media` to `key`, requires ffmpeg to succeed, and returns the
/// final playlist once it has `#EXT-X-ENDLIST`.
#[track_caller]
fn publish_to_end(server: &Server, key: &str, media: &Media) -> Playlist {
    publish_watching(server, key, media, |_| {});
    wait_ended(&server.playlist_path(key))
}

/// The numeric id in a segment URI (`123.ts`, `key-123.ts`, `…/123.ts`).
#[track_caller]
fn segment_id(uri: &str) -> u64 {
    let name = uri.rsplit('/').next().unwrap_or(uri);
    let stem = name
        .strip_suffix(".ts")
        .unwrap_or_else(|| panic!("segment URI {uri:?} does not end in .ts"));
    let digits = stem.rsplit('-').next().unwrap_or(stem);
    digits
        .parse()
        .unwrap_or_else(|_| panic!("segment URI {uri:?} has no numeric id"))
}

/// Common checks on every playlist the server writes.
#[track_caller]
fn check_playlist(pl: &Playlist) {
    assert_eq!(pl.version, Some(3), "EXT-X-VERSION must be 3:\n{pl:#?}");
    pl.assert_rfc_valid();
    for s in &pl.segments {
        let decimals = s.duration_text.split_once('.').map(|(_, d)| d.len());
        assert_eq!(
            decimals,
            Some(3),
            "EXTINF {:?} of {} should have 3 decimals",
            s.duration_text,
            s.uri
        );
    }
}

/// Every segment listed in `pl` exists on disk.
#[track_caller]
fn check_segments_exist(server: &Server, key: &str, pl: &Playlist) {
    for s in &pl.segments {
        let p = server.segment_path(key, &s.uri);
        assert!(
            p.exists(),
            "segment {} listed in the playlist is missing on disk ({})",
            s.uri,
            p.display()
        );
    }
}

#[track_caller]
fn assert_alive(server: &mut Server) {
    assert!(
        server.is_running(),
        "oxcast-ingest exited unexpectedly ({:?}); stderr:\n{}",
        server.try_exit_status(),
        server.stderr()
    );
}

#[track_caller]
fn assert_close(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: got {got}, want {want} ± {tolerance}"
    );
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// layout and naming

#[test]
fn nested_layout_with_sequential_naming() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("fragment-naming", "sequential")
        .start();
    let pl = publish_to_end(&server, "nested1", media);
    check_playlist(&pl);

    let root = server.root().to_path_buf();
    assert_eq!(
        server.playlist_path("nested1"),
        root.join("nested1").join("index.m3u8")
    );
    assert!(
        !root.join("nested1.m3u8").exists(),
        "flat playlist written in nested mode"
    );
    assert!(pl.segments.len() >= 6, "8 s at 1 s fragments: {pl:#?}");
    let ids: Vec<u64> = pl.segments.iter().map(|s| segment_id(&s.uri)).collect();
    for (s, id) in pl.segments.iter().zip(&ids) {
        assert_eq!(s.uri, format!("{id}.ts"), "nested URIs are bare <id>.ts");
        assert!(
            root.join("nested1").join(&s.uri).is_file(),
            "{} missing",
            s.uri
        );
    }
    for w in ids.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "sequential ids must be consecutive: {ids:?}"
        );
    }
    // Sequential ids follow the media sequence.
    let offset: Vec<i128> = pl
        .segments
        .iter()
        .zip(&ids)
        .map(|(s, id)| i128::from(*id) - i128::from(s.sequence))
        .collect();
    assert!(
        offset.windows(2).all(|w| w[0] == w[1]),
        "ids vs media sequence: {offset:?}"
    );
    for f in files_under(&root) {
        assert!(
            f.starts_with(root.join("nested1")),
            "file outside the stream directory: {}",
            f.display()
        );
    }
    assert_alive(&mut server);
}

#[test]
fn flat_layout() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("nested", "false")
        .hls("fragment-naming", "sequential")
        .start();
    let pl = publish_to_end(&server, "flat1", media);
    check_playlist(&pl);

    let root = server.root().to_path_buf();
    assert!(root.join("flat1.m3u8").is_file());
    assert!(
        !root.join("flat1").exists(),
        "no stream directory in flat mode"
    );
    assert!(pl.segments.len() >= 6, "{pl:#?}");
    for s in &pl.segments {
        let id = segment_id(&s.uri);
        assert_eq!(
            s.uri,
            format!("flat1-{id}.ts"),
            "flat URIs are <stream>-<id>.ts"
        );
        assert!(root.join(&s.uri).is_file(), "{} missing", s.uri);
    }
    let on_disk = Layout::Flat.segment_files(&root, "flat1");
    assert_eq!(
        on_disk.len(),
        pl.segments.len(),
        "segment files: {on_disk:?}"
    );
    assert_alive(&mut server);
}

#[test]
fn system_naming_is_wall_clock_milliseconds() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder().hls("fragment", "2s").start();
    let t0 = now_ms();
    let pl = publish_to_end(&server, "sys1", media);
    let t1 = now_ms();
    check_playlist(&pl);
    check_segments_exist(&server, "sys1", &pl);
    assert!(pl.segments.len() >= 3, "{pl:#?}");
    let ids: Vec<i64> = pl
        .segments
        .iter()
        .map(|s| {
            let stem = s.uri.trim_end_matches(".ts");
            assert_eq!(stem.len(), 13, "system ids have 13 digits: {}", s.uri);
            segment_id(&s.uri) as i64
        })
        .collect();
    for id in &ids {
        assert!(
            (t0 - 1000..=t1 + 1000).contains(id),
            "id {id} not within the publish wall-clock window [{t0}, {t1}]"
        );
    }
    for (w, s) in ids.windows(2).zip(&pl.segments) {
        let step = (w[1] - w[0]) as f64;
        assert_close(
            &format!("wall-clock step after {}", s.uri),
            step,
            s.duration * 1000.0,
            500.0,
        );
    }
    assert_alive(&mut server);
}

#[test]
fn timestamp_naming_is_90khz_dts() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder()
        .hls("fragment", "2s")
        .hls("fragment-naming", "timestamp")
        .start();
    let pl = publish_to_end(&server, "ts1", media);
    check_playlist(&pl);
    check_segments_exist(&server, "ts1", &pl);
    assert!(pl.segments.len() >= 3, "{pl:#?}");
    let ids: Vec<u64> = pl.segments.iter().map(|s| segment_id(&s.uri)).collect();
    for (w, s) in ids.windows(2).zip(&pl.segments) {
        assert!(w[1] > w[0], "timestamp ids must increase: {ids:?}");
        let step = (w[1] - w[0]) as f64;
        // One 25 fps frame is 3600 ticks.
        assert_close(
            &format!("90 kHz step after {}", s.uri),
            step,
            s.duration * 90_000.0,
            3600.0,
        );
    }
    // The first segment starts at the stream's first DTS (0 in the FLV), so
    // it must not look like a wall-clock or millisecond value.
    assert!(
        ids[0] < 10 * 90_000,
        "first timestamp id {} is not near the stream start",
        ids[0]
    );
    assert_alive(&mut server);
}

#[test]
fn naming_granularity_rounds_ids_down() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder()
        .hls("fragment", "2s")
        .hls("fragment-naming-granularity", "1000")
        .start();
    let pl = publish_to_end(&server, "gran1", media);
    check_playlist(&pl);
    check_segments_exist(&server, "gran1", &pl);
    assert!(pl.segments.len() >= 3, "{pl:#?}");
    let ids: Vec<u64> = pl.segments.iter().map(|s| segment_id(&s.uri)).collect();
    for id in &ids {
        assert_eq!(
            id % 1000,
            0,
            "id {id} is not a multiple of the granularity: {ids:?}"
        );
    }
    assert!(
        ids.windows(2).all(|w| w[1] > w[0]),
        "ids must stay distinct and increase: {ids:?}"
    );
    assert_alive(&mut server);
}

// ---------------------------------------------------------------------------
// media correctness

#[test]
fn output_decodes_without_errors() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder().hls("fragment", "2s").start();
    let pl = publish_to_end(&server, "dec1", media);
    check_playlist(&pl);
    let playlist = server.playlist_path("dec1");
    let errors = decode_errors(&path_str(&playlist)).expect("run ffmpeg");
    assert!(
        errors.trim().is_empty(),
        "ffmpeg -v error decode printed:\n{errors}"
    );
    let first = probe(&server.segment_path("dec1", &pl.segments[0].uri), false).expect("ffprobe");
    let v = first.stream("video").expect("video stream in segment");
    let a = first.stream("audio").expect("audio stream in segment");
    assert_eq!(v.codec_name, "h264");
    assert_eq!(v.profile.as_deref(), Some("High"));
    assert_eq!((v.width, v.height), (Some(320), Some(240)));
    assert_eq!(a.codec_name, "aac");
    assert_eq!(a.profile.as_deref(), Some("LC"));
    assert_eq!((a.sample_rate, a.channels), (Some(48_000), Some(2)));
    assert_alive(&mut server);
}

#[test]
fn extinf_durations_match_the_media() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder().hls("fragment", "2s").start();
    let pl = publish_to_end(&server, "dur1", media);
    check_playlist(&pl);
    assert_close("sum of EXTINF", pl.total_duration(), media.duration, 0.25);
    let n = pl.segments.len();
    for (i, s) in pl.segments.iter().enumerate() {
        let p = probe(&server.segment_path("dur1", &s.uri), false).expect("ffprobe segment");
        let d = p.duration.expect("segment duration");
        assert_close(
            &format!("ffprobe duration of {}", s.uri),
            d,
            s.duration,
            0.15,
        );
        if i + 1 < n {
            // Cut on the first keyframe once >= fragment (1 s GOPs): 2 s.
            assert!(
                (1.99..=4.01).contains(&s.duration),
                "segment {} is {} s; fragment 2s / max 4s",
                s.uri,
                s.duration
            );
        }
    }
    assert_alive(&mut server);
}

#[test]
fn every_segment_starts_with_a_keyframe() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder().hls("fragment", "1s").start();
    let pl = publish_to_end(&server, "key1", media);
    check_playlist(&pl);
    assert!(pl.segments.len() >= 6, "{pl:#?}");
    for s in &pl.segments {
        let p = probe(&server.segment_path("key1", &s.uri), true).expect("ffprobe segment");
        let first = p
            .packets_of("video")
            .next()
            .unwrap_or_else(|| panic!("no video packet in {}", s.uri));
        assert!(
            first.is_key(),
            "segment {} starts with a non-key video packet {first:?}",
            s.uri
        );
        assert!(
            p.packets_of("audio").next().is_some(),
            "no audio in {}",
            s.uri
        );
        assert!(!s.discontinuity, "unexpected DISCONTINUITY on {}", s.uri);
    }
    assert_alive(&mut server);
}

#[test]
fn b_frames_survive_remuxing() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let input = probe(&media.path, true).expect("ffprobe fixture");
    let input_reordered = input.packets_of("video").filter(|p| p.pts != p.dts).count();
    assert!(input_reordered > 0, "fixture has no B-frames");

    let mut server = Server::builder().hls("fragment", "2s").start();
    let pl = publish_to_end(&server, "bf1", media);
    check_playlist(&pl);
    let mut reordered = 0;
    let mut video = 0;
    for s in &pl.segments {
        let p = probe(&server.segment_path("bf1", &s.uri), true).expect("ffprobe segment");
        for pkt in p.packets_of("video") {
            video += 1;
            let (pts, dts) = (pkt.pts.expect("pts"), pkt.dts.expect("dts"));
            assert!(pts >= dts, "pts {pts} < dts {dts} in {}", s.uri);
            if pts != dts {
                reordered += 1;
            }
        }
    }
    assert_eq!(
        video,
        input.packets_of("video").count(),
        "video packets lost or added"
    );
    assert_eq!(
        reordered, input_reordered,
        "packets with pts != dts: output {reordered}, input {input_reordered}"
    );
    assert_alive(&mut server);
}

#[test]
fn extinf_rounding_never_exceeds_a_constant_target_duration() {
    need_ffmpeg();
    // 0.52 s GOPs with a 1.3 s fragment: segments of about 1.56 s.
    let media = require(Fixture::OddGop);
    let mut server = Server::builder().hls("fragment", "1.3s").start();
    let mut targets = BTreeSet::new();
    let snapshots = publish_watching(&server, "odd1", media, |pl| {
        check_playlist(pl);
        targets.insert(pl.target_duration);
    });
    let pl = wait_ended(&server.playlist_path("odd1"));
    check_playlist(&pl);
    targets.insert(pl.target_duration);
    assert!(!snapshots.is_empty(), "no playlist seen while publishing");
    assert_eq!(
        targets.len(),
        1,
        "EXT-X-TARGETDURATION changed (RFC 8216 §6.2.1): {targets:?}"
    );
    let target = pl.target_duration.expect("target duration");
    let max_rounded = pl.segments.iter().map(|s| s.duration.round() as u64).max();
    assert!(max_rounded <= Some(target));
    // Not more than the longest allowed segment (max fragment 2.6 s).
    assert!(
        target <= 3,
        "TARGETDURATION {target} is larger than ceil(max fragment)"
    );
    assert!(
        pl.segments
            .iter()
            .any(|s| (s.duration - s.duration.round()).abs() > 0.01),
        "fixture should give non-integer durations: {pl:#?}"
    );
    assert_alive(&mut server);
}

/// The playlist claims `EXT-X-INDEPENDENT-SEGMENTS`.
fn claims_independent_segments(pl: &Playlist) -> bool {
    pl.other_tags
        .iter()
        .any(|t| t == "#EXT-X-INDEPENDENT-SEGMENTS")
}

// Until issue 16 this test was `forced_cut_at_max_fragment_marks_a_discontinuity`:
// a forced cut was tagged EXT-X-DISCONTINUITY. The media across a forced cut
// is continuous (same timestamps, same encoding), and a discontinuity makes
// players flush and re-sync, so a forced cut is no longer marked (RFC 8216
// §4.3.2.3 lists what a discontinuity is for; a cut mid-GOP is none of it).
// Forced cuts are also no longer the default: they happen only with
// `maxFragment` set, which this test does.
#[test]
fn forced_cut_at_max_fragment_is_continuous() {
    need_ffmpeg();
    // 5 s GOPs, fragment 1 s, max fragment 2 s: cuts without a keyframe.
    let media = require(Fixture::LongGop);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("max-fragment", "2s")
        .start();
    let pl = publish_to_end(&server, "long1", media);
    check_playlist(&pl);
    assert!(
        !claims_independent_segments(&pl),
        "forced cuts make segments that do not start with a keyframe:\n{pl:#?}"
    );
    let frame = 0.04;
    let mut forced = 0;
    for (i, s) in pl.segments.iter().enumerate() {
        assert!(
            s.duration <= 2.0 + frame + 0.005,
            "segment {} is {} s, longer than max fragment 2s",
            s.uri,
            s.duration
        );
        assert!(
            !s.discontinuity,
            "segment {} is marked DISCONTINUITY but the media is continuous",
            s.uri
        );
        let p = probe(&server.segment_path("long1", &s.uri), true).expect("ffprobe segment");
        let starts_with_key = p.packets_of("video").next().is_some_and(|k| k.is_key());
        if i > 0 && !starts_with_key {
            forced += 1;
        }
    }
    assert!(forced >= 1, "expected forced cuts with 5 s GOPs: {pl:#?}");
    // Continuous: the playlist as a whole decodes without errors.
    let errors = decode_errors(&path_str(&server.playlist_path("long1"))).expect("ffmpeg");
    assert!(
        errors.trim().is_empty(),
        "playlist does not decode:\n{errors}"
    );
    assert_alive(&mut server);
}

/// OBS's default keyframe setting (x264 keyint 250: a keyframe every 8.33 s
/// at 30 fps) with a 2 s fragment and the default settings: every segment
/// is one GOP, starts with a keyframe and decodes on its own, none is a
/// discontinuity, the target duration is sized for the GOP and never
/// changes, and the broadcaster is told (log line, streams API, metric).
#[test]
fn gop_longer_than_fragment_gives_whole_gop_segments_that_decode_alone() {
    need_ffmpeg();
    let media = require(Fixture::Gop250);
    let mut server = Server::builder()
        .hls("fragment", "2s")
        .hls("fragment-naming", "sequential")
        .start();
    let http = server.http.expect("http listener");
    let mut targets = BTreeSet::new();
    let mut api_interval = None;
    let mut long_gauge = None;
    publish_watching(&server, "gop250", media, |pl| {
        check_playlist(pl);
        targets.insert(pl.target_duration);
        if let Ok(r) = http::get(http, "/api/streams") {
            let body: serde_json::Value = serde_json::from_str(&r.text()).unwrap_or_default();
            if let Some(v) = body["streams"][0]["keyframeInterval"].as_f64() {
                api_interval = Some(v);
            }
        }
        // The gauge while live: once the playlist is ended the publication
        // is gone (ffmpeg may still be running after its deleteStream).
        let metrics = (!pl.end_list).then(|| http::get(http, "/metrics"));
        if let Some(Ok(r)) = metrics {
            let text = r.text();
            if let Some(line) = text
                .lines()
                .find(|l| l.starts_with("oxcast_publishers_keyframe_interval_too_long "))
            {
                long_gauge = line.rsplit(' ').next().map(str::to_string);
            }
        }
    });
    let pl = wait_ended(&server.playlist_path("gop250"));
    check_playlist(&pl);
    targets.insert(pl.target_duration);
    assert_eq!(
        targets.len(),
        1,
        "EXT-X-TARGETDURATION changed (RFC 8216 §6.2.1): {targets:?}"
    );
    assert_eq!(pl.target_duration, Some(8), "{pl:#?}");
    assert!(claims_independent_segments(&pl), "{pl:#?}");
    assert!(pl.segments.len() >= 3, "{pl:#?}");
    let gop = 250.0 / 30.0;
    let n = pl.segments.len();
    for (i, s) in pl.segments.iter().enumerate() {
        assert!(!s.discontinuity, "unwarranted DISCONTINUITY on {}", s.uri);
        if i + 1 < n {
            assert_close(&format!("EXTINF of {}", s.uri), s.duration, gop, 0.02);
        }
        let seg = server.segment_path("gop250", &s.uri);
        let errors = decode_errors(&path_str(&seg)).expect("ffmpeg");
        assert!(
            errors.trim().is_empty(),
            "segment {} does not decode on its own:\n{errors}",
            s.uri
        );
        let p = probe(&seg, true).expect("ffprobe segment");
        assert!(
            p.packets_of("video").next().is_some_and(|k| k.is_key()),
            "segment {} does not start with a keyframe",
            s.uri
        );
    }
    let interval = api_interval.expect("keyframeInterval in /api/streams while live");
    assert_close("keyframeInterval", interval, gop, 0.01);
    assert_eq!(long_gauge.as_deref(), Some("1"), "metric while live");
    let log = server.stderr();
    assert!(
        log.contains("keyframe interval 8.3 s is longer than the 2 s fragment")
            && log.contains("OBS: Settings → Output → Streaming → Keyframe Interval"),
        "no warning telling the broadcaster what to fix:\n{log}"
    );
    assert_alive(&mut server);
}

// ---------------------------------------------------------------------------
// codecs and stream shapes

#[test]
fn audio_only_stream() {
    need_ffmpeg();
    let media = require(Fixture::AudioOnly);
    let mut server = Server::builder().hls("fragment", "1s").start();
    let pl = publish_to_end(&server, "audio1", media);
    check_playlist(&pl);
    assert!(
        pl.segments.len() >= 4,
        "audio-only must still be cut: {pl:#?}"
    );
    assert_close("sum of EXTINF", pl.total_duration(), media.duration, 0.25);
    let n = pl.segments.len();
    for (i, s) in pl.segments.iter().enumerate() {
        let p = probe(&server.segment_path("audio1", &s.uri), false).expect("ffprobe segment");
        assert!(
            p.stream("video").is_none(),
            "video stream in audio-only {}",
            s.uri
        );
        assert_eq!(
            p.stream("audio").map(|a| a.codec_name.as_str()),
            Some("aac")
        );
        if i + 1 < n {
            assert!(
                s.duration >= 0.97,
                "segment {} shorter than the fragment",
                s.uri
            );
        }
    }
    let errors = decode_errors(&path_str(&server.playlist_path("audio1"))).expect("ffmpeg");
    assert!(errors.trim().is_empty(), "decode errors:\n{errors}");
    assert_alive(&mut server);
}

#[test]
fn video_only_stream() {
    need_ffmpeg();
    let media = require(Fixture::VideoOnly);
    let mut server = Server::builder().hls("fragment", "1s").start();
    let pl = publish_to_end(&server, "video1", media);
    check_playlist(&pl);
    assert!(pl.segments.len() >= 6, "{pl:#?}");
    assert_close("sum of EXTINF", pl.total_duration(), media.duration, 0.25);
    for s in &pl.segments {
        let p = probe(&server.segment_path("video1", &s.uri), true).expect("ffprobe segment");
        assert!(
            p.stream("audio").is_none(),
            "audio stream in video-only {}",
            s.uri
        );
        let first = p.packets_of("video").next().expect("video packet");
        assert!(first.is_key(), "{} does not start with a keyframe", s.uri);
    }
    let errors = decode_errors(&path_str(&server.playlist_path("video1"))).expect("ffmpeg");
    assert!(errors.trim().is_empty(), "decode errors:\n{errors}");
    assert_alive(&mut server);
}

#[test]
fn he_aac_stream() {
    need_ffmpeg();
    let media = match fixture(Fixture::HeAac) {
        Ok(m) => m,
        Err(FixtureError::Unsupported(why)) => {
            eprintln!("SKIPPED he_aac_stream: {why}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut server = Server::builder().hls("fragment", "2s").start();
    let pl = publish_to_end(&server, "he1", media);
    check_playlist(&pl);
    let p = probe(&server.segment_path("he1", &pl.segments[0].uri), false).expect("ffprobe");
    let profile = p
        .stream("audio")
        .and_then(|a| a.profile.clone())
        .unwrap_or_default();
    assert!(
        profile.contains("HE"),
        "audio profile in output: {profile:?}"
    );
    let errors = decode_errors(&path_str(&server.playlist_path("he1"))).expect("ffmpeg");
    assert!(errors.trim().is_empty(), "decode errors:\n{errors}");
    assert_alive(&mut server);
}

#[test]
fn mono_44_1_khz_audio() {
    need_ffmpeg();
    let media = require(Fixture::Mono44k);
    let mut server = Server::builder().hls("fragment", "2s").start();
    let pl = publish_to_end(&server, "mono1", media);
    check_playlist(&pl);
    assert_close("sum of EXTINF", pl.total_duration(), media.duration, 0.25);
    for s in &pl.segments {
        let p = probe(&server.segment_path("mono1", &s.uri), false).expect("ffprobe");
        let a = p.stream("audio").expect("audio stream");
        assert_eq!(
            (a.sample_rate, a.channels),
            (Some(44_100), Some(1)),
            "audio of {}",
            s.uri
        );
    }
    let errors = decode_errors(&path_str(&server.playlist_path("mono1"))).expect("ffmpeg");
    assert!(errors.trim().is_empty(), "decode errors:\n{errors}");
    assert_alive(&mut server);
}

#[test]
fn resolution_change_mid_stream() {
    need_ffmpeg();
    let media = require(Fixture::ResolutionChange);
    let mut server = Server::builder().hls("fragment", "1s").start();
    let pl = publish_to_end(&server, "res1", media);
    check_playlist(&pl);
    let playlist = path_str(&server.playlist_path("res1"));
    let errors = decode_errors(&playlist).expect("ffmpeg");
    assert!(errors.trim().is_empty(), "decode errors:\n{errors}");
    let sizes = frame_sizes(&playlist).expect("ffprobe frames");
    let first_big = sizes
        .iter()
        .position(|s| *s == (640, 360))
        .unwrap_or_else(|| panic!("no 640x360 frames decoded: {:?}", sizes.first()));
    assert!(
        first_big > 50,
        "640x360 frames start too early ({first_big})"
    );
    assert!(sizes[..first_big].iter().all(|s| *s == (320, 240)));
    assert!(sizes[first_big..].iter().all(|s| *s == (640, 360)));
    assert!(sizes.len() >= 190, "decoded {} of 200 frames", sizes.len());
    assert_alive(&mut server);
}

// ---------------------------------------------------------------------------
// playlist over time

#[test]
fn program_date_time_steps_and_survives_the_sliding_window() {
    need_ffmpeg();
    let media = require(Fixture::Av14s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("playlist-length", "3s")
        .hls("fragment-naming", "sequential")
        .start();
    let t0 = now_ms() as f64;
    let mut pdt_by_uri: BTreeMap<String, String> = BTreeMap::new();
    let mut max_sequence = 0;
    let mut check = |pl: &Playlist| {
        check_playlist(pl);
        max_sequence = max_sequence.max(pl.media_sequence);
        for s in &pl.segments {
            let pdt = s
                .program_date_time
                .as_ref()
                .unwrap_or_else(|| panic!("segment {} has no PROGRAM-DATE-TIME:\n{pl:#?}", s.uri));
            let now = now_ms() as f64;
            assert!(
                (t0 - 2000.0..=now + 1000.0).contains(&pdt.unix_millis()),
                "PDT {} of {} is not wall-clock time of this test",
                pdt.text,
                s.uri
            );
            let prev = pdt_by_uri.insert(s.uri.clone(), pdt.text.clone());
            if let Some(prev) = prev {
                assert_eq!(
                    prev, pdt.text,
                    "PDT of {} changed between playlist updates",
                    s.uri
                );
            }
        }
        for w in pl.segments.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if b.discontinuity {
                continue;
            }
            let (pa, pb) = match (&a.program_date_time, &b.program_date_time) {
                (Some(pa), Some(pb)) => (pa, pb),
                _ => continue,
            };
            let step_us = pb.unix_micros - pa.unix_micros;
            let extinf_us = (a.duration * 1e6).round() as i64;
            assert!(
                (step_us - extinf_us).abs() <= 1000,
                "PDT step {} -> {} is {step_us} µs but EXTINF of {} is {} s",
                pa.text,
                pb.text,
                a.uri,
                a.duration_text
            );
        }
    };
    let snapshots = publish_watching(&server, "pdt1", media, &mut check);
    let pl = wait_ended(&server.playlist_path("pdt1"));
    check(&pl);
    assert!(
        snapshots.len() >= 5,
        "too few playlist updates seen: {}",
        snapshots.len()
    );
    assert!(
        max_sequence >= 5,
        "the window should have slid (media sequence reached only {max_sequence})"
    );
    assert_alive(&mut server);
}

#[test]
fn window_is_bounded_and_old_segments_are_cleaned_up() {
    need_ffmpeg();
    let media = require(Fixture::Av14s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("playlist-length", "3s")
        .hls("fragment-naming", "sequential")
        .start();
    let key = "win1";
    let path = server.playlist_path(key);
    let mut publisher = Publisher::start(media, &server.rtmp_url(key));
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let mut previous: Option<Playlist> = None;
    let mut first_uri: Option<String> = None;
    let mut deleted_while_live = false;
    let mut left_window = 0;
    while publisher.is_running() {
        if let Some(pl) = read_playlist(&path) {
            if previous.as_ref() != Some(&pl) {
                check_playlist(&pl);
                // Every listed segment exists (no racy cleanup).
                check_segments_exist(&server, key, &pl);
                assert!(
                    pl.total_duration() <= 3.0 + 1.0 + 0.05,
                    "window holds {} s > playlist_length 3s + one fragment:\n{pl:#?}",
                    pl.total_duration()
                );
                // A segment that just left the window is still on disk (grace).
                if let Some(prev) = &previous {
                    let now: BTreeSet<&str> = pl.segments.iter().map(|s| s.uri.as_str()).collect();
                    for s in prev
                        .segments
                        .iter()
                        .filter(|s| !now.contains(s.uri.as_str()))
                    {
                        left_window += 1;
                        assert!(
                            server.segment_path(key, &s.uri).exists(),
                            "{} was deleted the moment it left the window (no grace)",
                            s.uri
                        );
                    }
                }
                if first_uri.is_none() {
                    first_uri = pl.segments.first().map(|s| s.uri.clone());
                }
                listed.extend(pl.segments.iter().map(|s| s.uri.clone()));
                previous = Some(pl);
            }
        }
        if let Some(first) = &first_uri {
            if !server.segment_path(key, first).exists() {
                deleted_while_live = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = publisher.wait();
    assert!(done.success(), "publisher failed: {}", done.stderr);
    assert!(left_window >= 3, "the window never slid");
    assert!(
        deleted_while_live,
        "the first segment {first_uri:?} was not deleted while the stream was live \
         (grace = segment duration + playlist_length = 4 s; the stream ran 14 s)"
    );
    let pl = wait_ended(&path);
    check_playlist(&pl);
    // An ended stream's files are removed after playlist_length.
    wait_until(
        "all segment files of the ended stream deleted",
        Duration::from_secs(20),
        || Layout::Nested.segment_files(server.root(), key).is_empty(),
    );
    for uri in &listed {
        assert!(!server.segment_path(key, uri).exists(), "{uri} left behind");
    }
    assert_alive(&mut server);
}

#[test]
fn cleanup_off_keeps_every_segment() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("playlist-length", "2s")
        .hls("fragment-naming", "sequential")
        .hls("cleanup", "false")
        .start();
    let key = "keep1";
    let mut listed: BTreeSet<String> = BTreeSet::new();
    publish_watching(&server, key, media, |pl| {
        check_playlist(pl);
        listed.extend(pl.segments.iter().map(|s| s.uri.clone()));
    });
    let pl = wait_ended(&server.playlist_path(key));
    listed.extend(pl.segments.iter().map(|s| s.uri.clone()));
    assert!(
        pl.media_sequence > 0,
        "the 2 s window should have slid over 8 s of media:\n{pl:#?}"
    );
    // Nothing to wait for: give cleanup more than its grace
    // (segment + playlist_length = 3 s) and the end-of-stream delay (2 s).
    std::thread::sleep(Duration::from_secs(6));
    for uri in &listed {
        assert!(
            server.segment_path(key, uri).exists(),
            "{uri} deleted although cleanup is off"
        );
    }
    assert!(
        server.playlist_path(key).exists(),
        "playlist deleted although cleanup is off"
    );
    assert!(Layout::Nested.segment_files(server.root(), key).len() > pl.segments.len());
    assert_alive(&mut server);
}

/// Discontinuity number of each URI: discontinuity sequence plus the
/// DISCONTINUITY tags up to and including the segment (RFC 8216 §6.2.2).
fn discontinuity_numbers(pl: &Playlist) -> Vec<(String, u64)> {
    let mut n = pl.discontinuity_sequence;
    pl.segments
        .iter()
        .map(|s| {
            if s.discontinuity {
                n += 1;
            }
            (s.uri.clone(), n)
        })
        .collect()
}

#[test]
fn republish_continues_the_playlist_after_a_discontinuity() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("fragment-naming", "sequential")
        .start();
    let key = "re1";
    let first = publish_to_end(&server, key, media);
    check_playlist(&first);
    assert!(
        !first.segments.iter().any(|s| s.discontinuity),
        "{first:#?}"
    );

    let path = server.playlist_path(key);
    let mut saw_live_again = false;
    publish_watching(&server, key, media, |pl| {
        check_playlist(pl);
        // ffmpeg may close the stream a moment before its process exits,
        // so only a playlist still short of the media must lack ENDLIST.
        let second_part = pl.total_duration() - first.total_duration();
        if pl.segments.len() > first.segments.len() && second_part < media.duration - 1.0 {
            assert!(
                !pl.end_list,
                "ENDLIST kept while the stream is live again:\n{pl:#?}"
            );
            saw_live_again = true;
        }
    });
    assert!(
        saw_live_again,
        "the republished stream never appeared in the playlist"
    );
    let second = wait_playlist(&path, "ENDLIST after the republish", END_TIMEOUT, |p| {
        p.end_list && p.segments.len() > first.segments.len()
    });
    check_playlist(&second);
    check_segments_exist(&server, key, &second);
    assert_eq!(
        second.media_sequence, first.media_sequence,
        "media sequence restarted"
    );
    let n = first.segments.len();
    let old: Vec<&str> = first.segments.iter().map(|s| s.uri.as_str()).collect();
    let kept: Vec<&str> = second.segments[..n]
        .iter()
        .map(|s| s.uri.as_str())
        .collect();
    assert_eq!(kept, old, "the first session's segments must stay listed");
    assert!(
        second.segments[n].discontinuity,
        "no DISCONTINUITY at the republish:\n{second:#?}"
    );
    assert_eq!(
        second.segments.iter().filter(|s| s.discontinuity).count(),
        1,
        "exactly one DISCONTINUITY expected:\n{second:#?}"
    );
    assert_eq!(
        segment_id(&second.segments[n].uri),
        segment_id(&second.segments[n - 1].uri) + 1,
        "segment ids must continue"
    );
    assert_alive(&mut server);
}

#[test]
fn discontinuity_sequence_counts_discontinuities_that_left_the_window() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("playlist-length", "2s")
        .hls("fragment-naming", "sequential")
        .hls("cleanup", "false")
        .start();
    let key = "dseq1";
    let mut numbers: BTreeMap<String, u64> = BTreeMap::new();
    let mut record = |pl: &Playlist| {
        check_playlist(pl);
        for (uri, n) in discontinuity_numbers(pl) {
            if let Some(prev) = numbers.insert(uri.clone(), n) {
                assert_eq!(
                    prev, n,
                    "discontinuity number of {uri} changed: DISCONTINUITY-SEQUENCE not \
                     incremented when a DISCONTINUITY left the window?\n{pl:#?}"
                );
            }
        }
    };
    publish_watching(&server, key, media, &mut record);
    let first = wait_ended(&server.playlist_path(key));
    record(&first);
    publish_watching(&server, key, media, &mut record);
    let last = wait_playlist(
        &server.playlist_path(key),
        "ENDLIST after the republish",
        END_TIMEOUT,
        |p| p.end_list && p.media_sequence > first.next_sequence(),
    );
    record(&last);
    assert_eq!(
        last.discontinuity_sequence, 1,
        "the republish DISCONTINUITY has left the 2 s window:\n{last:#?}"
    );
    assert!(last.has_discontinuity_sequence_tag);
    assert_alive(&mut server);
}

#[test]
fn restart_on_the_same_root_continues_the_playlist() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let root = tempfile::Builder::new()
        .prefix("oxcast-restart-")
        .tempdir()
        .expect("temp dir");
    let key = "rs1";
    let first = {
        let mut a = Server::builder()
            .root(root.path())
            .hls("fragment", "1s")
            .hls("fragment-naming", "sequential")
            .start();
        let pl = publish_to_end(&a, key, media);
        let status = a.sigterm(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "server did not exit cleanly on SIGTERM: {status:?}\n{}",
            a.stderr()
        );
        pl
    };
    let mut b = Server::builder()
        .root(root.path())
        .hls("fragment", "1s")
        .hls("fragment-naming", "sequential")
        .start();
    publish_watching(&b, key, media, |pl| check_playlist(pl));
    let second = wait_playlist(
        &b.playlist_path(key),
        "ENDLIST after restart",
        END_TIMEOUT,
        |p| p.end_list && p.segments.len() > first.segments.len(),
    );
    check_playlist(&second);
    check_segments_exist(&b, key, &second);
    let n = first.segments.len();
    assert_eq!(second.media_sequence, first.media_sequence);
    assert_eq!(
        second.segments[..n]
            .iter()
            .map(|s| &s.uri)
            .collect::<Vec<_>>(),
        first.segments.iter().map(|s| &s.uri).collect::<Vec<_>>(),
        "segments from before the restart must stay listed"
    );
    assert!(
        second.segments[n].discontinuity,
        "no DISCONTINUITY after restart:\n{second:#?}"
    );
    assert_eq!(
        segment_id(&second.segments[n].uri),
        segment_id(&first.segments[n - 1].uri) + 1,
        "ids continue across the restart"
    );
    assert_alive(&mut b);
}

#[test]
fn sigterm_finishes_the_current_segment_and_writes_endlist() {
    need_ffmpeg();
    let media = require(Fixture::Av14s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("fragment-naming", "sequential")
        .start();
    let key = "term1";
    let path = server.playlist_path(key);
    let publisher = Publisher::start(media, &server.rtmp_url(key));
    let live = wait_playlist(
        &path,
        "3 segments",
        FIRST_SEGMENT_TIMEOUT + Duration::from_secs(5),
        |p| p.segments.len() >= 3,
    );
    assert!(!live.end_list);
    let status = server.sigterm(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: server did not exit 0 within 10 s ({status:?})\n{}",
        server.stderr()
    );
    let pl = read_playlist(&path).expect("playlist after shutdown");
    check_playlist(&pl);
    assert!(pl.end_list, "no ENDLIST after SIGTERM:\n{pl:#?}");
    assert!(
        pl.segments.len() >= live.segments.len(),
        "segments lost on shutdown"
    );
    check_segments_exist(&server, key, &pl);
    let last = pl.segments.last().expect("a segment");
    let last_path = server.segment_path(key, &last.uri);
    let errors = decode_errors(&path_str(&last_path)).expect("ffmpeg");
    assert!(
        errors.trim().is_empty(),
        "last segment does not decode:\n{errors}"
    );
    // The cut is mid-GOP, so the PTS span ffprobe reports includes B-frame
    // reordering; the DTS span of the video is what EXTINF measures.
    let p = probe(&last_path, true).expect("ffprobe last segment");
    let dts: Vec<f64> = p.packets_of("video").filter_map(|k| k.dts_time).collect();
    let (lo, hi) = (
        dts.iter().cloned().fold(f64::INFINITY, f64::min),
        dts.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    );
    assert!(!dts.is_empty(), "no video in the last segment");
    assert_close(
        "last segment: video DTS span + one frame vs EXTINF",
        hi - lo + 0.04,
        last.duration,
        0.045,
    );
    let done = publisher.wait_at_most(Duration::from_secs(10));
    assert!(
        !done.timed_out(),
        "publisher still running after the server stopped"
    );
}

#[test]
fn endlist_only_after_the_publisher_stops() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder().hls("fragment", "1s").start();
    let snapshots = publish_watching(&server, "end1", media, |pl| {
        check_playlist(pl);
        // ffmpeg may close the stream a moment before its process exits:
        // only a playlist still clearly short of the media must lack ENDLIST.
        assert!(
            !pl.end_list || pl.total_duration() >= media.duration - 1.0,
            "ENDLIST while the publisher is still live:\n{pl:#?}"
        );
    });
    assert!(!snapshots.is_empty());
    let pl = wait_ended(&server.playlist_path("end1"));
    check_playlist(&pl);
    assert!(pl.segments.len() >= snapshots.last().map_or(0, |p| p.segments.len()));
    assert_alive(&mut server);
}

#[test]
fn end_list_off_writes_no_endlist() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("end-list", "false")
        .start();
    let key = "noend1";
    publish_watching(&server, key, media, |pl| check_playlist(pl));
    // The final segment is still flushed when the publisher leaves...
    let pl = wait_playlist(
        &server.playlist_path(key),
        "the whole stream listed",
        END_TIMEOUT,
        |p| p.total_duration() >= media.duration - 0.25,
    );
    check_playlist(&pl);
    // ...and nothing to wait for after that: give it time to (wrongly) end.
    observe_for(Duration::from_secs(3), || {
        let pl = read_playlist(&server.playlist_path(key)).expect("playlist");
        assert!(!pl.end_list, "ENDLIST written although end-list is off");
    });
    assert_alive(&mut server);
}

#[test]
fn event_playlist_only_appends() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("playlist-length", "3s")
        .hls("type", "event")
        .start();
    let mut previous: Option<Playlist> = None;
    publish_watching(&server, "ev1", media, |pl| {
        check_playlist(pl);
        assert_eq!(pl.playlist_type.as_deref(), Some("EVENT"));
        assert_eq!(
            pl.media_sequence, 0,
            "an EVENT playlist never removes segments"
        );
        if let Some(prev) = &previous {
            assert!(
                pl.segments.len() >= prev.segments.len()
                    && pl.segments[..prev.segments.len()]
                        .iter()
                        .zip(&prev.segments)
                        .all(|(a, b)| a.uri == b.uri && a.duration_text == b.duration_text),
                "EVENT playlist changed existing entries:\n{prev:#?}\n->\n{pl:#?}"
            );
        }
        previous = Some(pl.clone());
    });
    let pl = wait_ended(&server.playlist_path("ev1"));
    check_playlist(&pl);
    assert_eq!(pl.playlist_type.as_deref(), Some("EVENT"));
    assert_close(
        "EVENT playlist keeps all media",
        pl.total_duration(),
        media.duration,
        0.25,
    );
    assert_alive(&mut server);
}

#[test]
fn base_url_prefix_and_datetime_none() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let base = "http://cdn.example.test/hls/base1/";
    let mut server = Server::builder()
        .hls("fragment", "2s")
        .hls("base-url", base)
        .hls("datetime", "none")
        .start();
    let pl = publish_to_end(&server, "base1", media);
    check_playlist(&pl);
    for s in &pl.segments {
        assert!(
            s.program_date_time.is_none(),
            "PROGRAM-DATE-TIME with datetime none"
        );
        let name = s
            .uri
            .strip_prefix(base)
            .unwrap_or_else(|| panic!("URI {} lacks the base URL {base}", s.uri));
        assert!(
            server.segment_path("base1", name).is_file(),
            "{name} missing on disk"
        );
    }
    assert_alive(&mut server);
}

#[test]
fn config_file_settings_apply() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("oxcast.yaml");
    std::fs::write(
        &config,
        "rtmp:\n  app: fromconfig\nhls:\n  fragment: 1s\n  nested: false\n  \
         fragmentNaming: sequential\n  datetime: none\n",
    )
    .expect("write config");
    let mut server = Server::builder()
        .app_from_config("fromconfig")
        .expect_layout(Layout::Flat)
        .arg("--config")
        .arg(&config)
        .start();
    let pl = publish_to_end(&server, "cfg1", media);
    check_playlist(&pl);
    assert!(
        server.root().join("cfg1.m3u8").is_file(),
        "flat layout from the config file"
    );
    assert!(
        pl.segments.len() >= 6,
        "1 s fragments from the config file: {pl:#?}"
    );
    for s in &pl.segments {
        assert!(s.uri.starts_with("cfg1-"), "flat naming: {}", s.uri);
        assert!(segment_id(&s.uri) < 1000, "sequential naming: {}", s.uri);
        assert!(
            s.program_date_time.is_none(),
            "datetime none from the config file"
        );
    }
    assert_alive(&mut server);
}

// ---------------------------------------------------------------------------
// RTMP admission

#[test]
fn invalid_stream_keys_are_rejected() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder().hls("fragment", "1s").start();
    let long = "a".repeat(129);
    let keys = ["bad$key", "..", ".", "semi;colon", long.as_str()];
    let publishers: Vec<(&str, Publisher)> = keys
        .iter()
        .map(|k| (*k, Publisher::start(media, &server.rtmp_url(k))))
        .collect();
    for (key, p) in publishers {
        let done = p.wait_at_most(REJECT_TIMEOUT);
        assert!(
            !done.success() && !done.timed_out(),
            "publish with invalid key {key:?} was not rejected ({:?}, {:?})",
            done.status,
            done.elapsed
        );
    }
    let files = files_under(server.root());
    assert!(
        files.is_empty(),
        "rejected publishes created files: {files:?}"
    );
    // The server still takes a valid key.
    let mut ok = Publisher::start(media, &server.rtmp_url("good-key_1.x"));
    wait_playlist(
        &server.playlist_path("good-key_1.x"),
        "a valid key is still accepted",
        FIRST_SEGMENT_TIMEOUT,
        |p| !p.segments.is_empty(),
    );
    assert!(ok.is_running());
    drop(ok.stop());
    assert_alive(&mut server);
}

#[test]
fn unknown_app_is_rejected() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder().start();
    let p = Publisher::start(media, &server.rtmp_url_for_app("otherapp", "key1"));
    let done = p.wait_at_most(REJECT_TIMEOUT);
    assert!(
        !done.success() && !done.timed_out(),
        "publish to an unknown app was not rejected ({:?}, {:?})",
        done.status,
        done.elapsed
    );
    let files = files_under(server.root());
    assert!(
        files.is_empty(),
        "rejected publish created files: {files:?}"
    );
    assert_alive(&mut server);
}

#[test]
fn second_publisher_on_a_live_key_is_rejected() {
    need_ffmpeg();
    let media = require(Fixture::Av14s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .hls("fragment-naming", "sequential")
        .start();
    let key = "dup1";
    let path = server.playlist_path(key);
    let mut first = Publisher::start(media, &server.rtmp_url(key));
    wait_playlist(&path, "first segment", FIRST_SEGMENT_TIMEOUT, |p| {
        !p.segments.is_empty()
    });
    let second = Publisher::start(require(Fixture::Av8s), &server.rtmp_url(key));
    let done = second.wait_at_most(REJECT_TIMEOUT);
    assert!(
        !done.success() && !done.timed_out(),
        "second publisher on a live key was not rejected ({:?}, {:?})",
        done.status,
        done.elapsed
    );
    assert!(first.is_running(), "the first publisher was disconnected");
    let after = read_playlist(&path).expect("playlist").next_sequence();
    let more = wait_playlist(
        &path,
        "the first publisher keeps producing segments",
        Duration::from_secs(10),
        |p| p.next_sequence() >= after + 2,
    );
    assert!(!more.segments.iter().any(|s| s.discontinuity), "{more:#?}");
    let done = first.wait();
    assert!(done.success(), "first publisher failed: {}", done.stderr);
    let pl = wait_ended(&path);
    check_playlist(&pl);
    assert_close(
        "the first stream is complete",
        pl.total_duration(),
        media.duration,
        0.3,
    );
    assert_alive(&mut server);
}

#[test]
fn rtmp_play_is_denied_by_default() {
    need_ffmpeg();
    let media = require(Fixture::Av14s);
    let mut server = Server::builder().hls("fragment", "1s").start();
    let key = "play1";
    let mut publisher = Publisher::start(media, &server.rtmp_url(key));
    wait_playlist(
        &server.playlist_path(key),
        "stream live",
        FIRST_SEGMENT_TIMEOUT,
        |p| !p.segments.is_empty(),
    );
    let out = tempfile::tempdir().expect("temp dir");
    let file = out.path().join("play.flv");
    let done = oxcast_tests::media::play_to_file(
        &server.rtmp_url(key),
        2.0,
        &file,
        Duration::from_secs(15),
    );
    assert!(
        !done.success(),
        "RTMP play succeeded although play is denied by default ({:?})",
        done.status
    );
    let got = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let media_frames = probe(&file, true).map(|p| p.packets.len()).unwrap_or(0);
    assert_eq!(
        media_frames, 0,
        "denied player still received media ({got} bytes)"
    );
    assert!(
        publisher.is_running(),
        "the publisher was disturbed by the denied player"
    );
    drop(publisher.stop());
    assert_alive(&mut server);
}

#[test]
fn rtmp_play_works_with_allow_play() {
    need_ffmpeg();
    let media = require(Fixture::Av14s);
    let mut server = Server::builder()
        .hls("fragment", "1s")
        .arg("--allow-play")
        .start();
    let key = "play2";
    let publisher = Publisher::start(media, &server.rtmp_url(key));
    wait_playlist(
        &server.playlist_path(key),
        "stream live",
        FIRST_SEGMENT_TIMEOUT,
        |p| p.segments.len() >= 2,
    );
    let out = tempfile::tempdir().expect("temp dir");
    let file = out.path().join("play.flv");
    let done = oxcast_tests::media::play_to_file(
        &server.rtmp_url(key),
        3.0,
        &file,
        Duration::from_secs(20),
    );
    assert!(
        done.success(),
        "RTMP play failed ({:?}): {}",
        done.status,
        done.stderr
    );
    let p = probe(&file, true).expect("ffprobe played file");
    assert!(
        p.stream("video").is_some() && p.stream("audio").is_some(),
        "{:?}",
        p.streams
    );
    let first = p.packets_of("video").next().expect("video packets");
    assert!(
        first.is_key(),
        "playback does not start at a keyframe: {first:?}"
    );
    assert!(
        p.packets_of("video").count() >= 50,
        "less than 2 s of video played"
    );
    let errors = decode_errors(&path_str(&file)).expect("ffmpeg");
    assert!(
        errors.trim().is_empty(),
        "played stream decode errors:\n{errors}"
    );
    let done = publisher.wait();
    assert!(
        done.success(),
        "publisher failed with a player attached: {}",
        done.stderr
    );
    assert_alive(&mut server);
}

/// A server whose config file sets `rtmp.limits.idleTimeout: 2s`.
fn server_with_idle_timeout_2s(dir: &Path) -> Server {
    let config = dir.join("idle.yaml");
    std::fs::write(
        &config,
        "rtmp:\n  limits:\n    idleTimeout: 2s\nhls:\n  fragment: 1s\n  fragmentNaming: sequential\n",
    )
    .expect("write config");
    Server::builder().arg("--config").arg(&config).start()
}

#[test]
fn active_publisher_outlives_the_idle_timeout() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = server_with_idle_timeout_2s(dir.path());
    // 8 s of steadily flowing media against a 2 s idle timeout: the
    // publisher must not be dropped.
    let pl = publish_to_end(&server, "idle1", media);
    check_playlist(&pl);
    assert!(
        !pl.segments.iter().any(|s| s.discontinuity),
        "stream was interrupted:\n{pl:#?}"
    );
    assert_close(
        "whole stream listed",
        pl.total_duration(),
        media.duration,
        0.25,
    );
    assert_alive(&mut server);
}

#[test]
fn stalled_publisher_is_dropped_after_the_idle_timeout() {
    need_ffmpeg();
    let media = require(Fixture::Av14s);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = server_with_idle_timeout_2s(dir.path());
    let key = "stall1";
    let path = server.playlist_path(key);
    let publisher = Publisher::start(media, &server.rtmp_url(key));
    wait_playlist(&path, "first segment", FIRST_SEGMENT_TIMEOUT, |p| {
        !p.segments.is_empty()
    });
    // Freeze ffmpeg: its TCP connection stays open but sends nothing.
    oxcast_tests::media::process::send_signal(publisher.pid(), libc::SIGSTOP);
    let stalled_at = Instant::now();
    let pl = wait_playlist(
        &path,
        "ENDLIST after the idle timeout",
        Duration::from_secs(10),
        |p| p.end_list,
    );
    let after = stalled_at.elapsed();
    oxcast_tests::media::process::send_signal(publisher.pid(), libc::SIGCONT);
    check_playlist(&pl);
    assert!(
        after >= Duration::from_millis(1500),
        "stream ended {after:?} after the stall, before the 2 s idle timeout"
    );
    let done = publisher.wait_at_most(Duration::from_secs(15));
    assert!(
        !done.success(),
        "the dropped publisher should see its connection closed"
    );
    assert_alive(&mut server);
}

// ---------------------------------------------------------------------------
// HTTP serving and roles

#[test]
fn http_serves_playlist_and_segments_with_cache_headers() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let mut server = Server::builder().hls("fragment", "1s").start();
    let listening: Vec<String> = server
        .stdout_lines()
        .into_iter()
        .filter(|l| l.starts_with("listening"))
        .collect();
    assert_eq!(
        listening.len(),
        2,
        "one listening line per listener: {listening:?}"
    );
    let http_addr = server.http.expect("http listener");
    let key = "web1";
    let publisher = Publisher::start(media, &server.rtmp_url(key));
    wait_playlist(
        &server.playlist_path(key),
        "2 segments",
        FIRST_SEGMENT_TIMEOUT,
        |p| p.segments.len() >= 2,
    );

    let r = http::get(http_addr, &format!("/live/{key}/index.m3u8")).expect("GET playlist");
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/vnd.apple.mpegurl"),
        "playlist content-type {ct:?}"
    );
    let cc = r.header("cache-control").unwrap_or_default();
    assert!(cc.contains("no-cache"), "playlist cache-control {cc:?}");
    let pl = Playlist::parse(&r.text()).expect("served playlist parses");
    check_playlist(&pl);

    let seg = &pl.segments[0];
    let r = http::get(http_addr, &format!("/live/{key}/{}", seg.uri)).expect("GET segment");
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert_eq!(ct, "video/mp2t", "segment content-type");
    let cc = r.header("cache-control").unwrap_or_default();
    for part in ["public", "max-age=31536000", "immutable"] {
        assert!(
            cc.contains(part),
            "segment cache-control {cc:?} lacks {part}"
        );
    }
    let disk = std::fs::read(server.segment_path(key, &seg.uri)).expect("segment on disk");
    assert_eq!(r.body.len(), disk.len(), "served segment length");
    assert!(r.body == disk, "served segment differs from the file");
    assert_eq!(r.body.first(), Some(&0x47), "not an MPEG-TS packet");

    let r = http::get(http_addr, &format!("/live/{key}/999999999.ts")).expect("GET missing");
    assert_eq!(r.status, 404, "missing segment");
    for evil in [
        "/live/../../../../../../etc/passwd",
        "/live/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/live/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    ] {
        let r = http::get(http_addr, evil).expect("GET traversal");
        assert_ne!(r.status, 200, "{evil} served something");
        assert!(!r.text().contains("root:"), "{evil} leaked /etc/passwd");
    }
    let done = publisher.wait();
    assert!(done.success(), "{}", done.stderr);
    assert_alive(&mut server);
}

#[test]
fn split_rtmp_and_http_roles_share_a_root() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let root = tempfile::Builder::new()
        .prefix("oxcast-split-")
        .tempdir()
        .expect("temp dir");
    let mut ingest = Server::builder()
        .role(Role::Rtmp)
        .root(root.path())
        .hls("fragment", "1s")
        .start();
    let mut web = Server::builder()
        .role(Role::Http)
        .root(root.path())
        .arg("--http-path-prefix")
        .arg("/hls")
        .start();
    assert!(ingest.http.is_none() && web.rtmp.is_none());
    let lines = |s: &Server| -> Vec<String> {
        s.stdout_lines()
            .into_iter()
            .filter(|l| l.starts_with("listening"))
            .collect()
    };
    assert_eq!(lines(&ingest).len(), 1, "rtmp role: {:?}", lines(&ingest));
    assert!(lines(&ingest)[0].starts_with("listening rtmp "));
    assert_eq!(lines(&web).len(), 1, "http role: {:?}", lines(&web));
    assert!(lines(&web)[0].starts_with("listening http "));

    let key = "split1";
    let publisher = Publisher::start(media, &ingest.rtmp_url(key));
    wait_playlist(
        &ingest.playlist_path(key),
        "2 segments",
        FIRST_SEGMENT_TIMEOUT,
        |p| p.segments.len() >= 2,
    );
    let addr = web.http.expect("http listener");
    let r = http::get(addr, &format!("/hls/{key}/index.m3u8")).expect("GET playlist");
    assert_eq!(r.status, 200, "http role serving the shared root");
    let pl = Playlist::parse(&r.text()).expect("served playlist parses");
    let r = http::get(addr, &format!("/hls/{key}/{}", pl.segments[0].uri)).expect("GET segment");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("video/mp2t"));
    let r = http::get(addr, &format!("/live/{key}/index.m3u8")).expect("GET old prefix");
    assert_eq!(
        r.status, 404,
        "the default prefix must not be served with --http-path-prefix /hls"
    );
    let done = publisher.wait();
    assert!(done.success(), "{}", done.stderr);
    wait_ended(&ingest.playlist_path(key));
    let r = http::get(addr, &format!("/hls/{key}/index.m3u8")).expect("GET final playlist");
    assert!(
        Playlist::parse(&r.text()).expect("parses").end_list,
        "served final playlist"
    );
    assert_alive(&mut ingest);
    assert_alive(&mut web);
}
