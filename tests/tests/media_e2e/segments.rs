//! What is in the segments: they decode, EXTINF matches the media, cuts on
//! keyframes (forced cuts with a max fragment, whole GOPs when the GOP is
//! longer than the fragment), B-frames survive, the target duration holds.

use std::collections::BTreeSet;

use oxcast_tests::http;
use oxcast_tests::media::probe::probe;
use oxcast_tests::media::{
    assert_close, assert_decodes, assert_running, assert_starts_with_keyframe, need_ffmpeg,
    publish_to_end, publish_watching, require, wait_ended, Fixture, Playlist, Server,
};

use crate::{check_playlist, publish_fixture, start};

#[test]
fn output_decodes_without_errors() {
    let (mut server, _, pl) = publish_fixture(
        Server::builder().hls("fragment", "2s"),
        Fixture::Av8s,
        "dec1",
    );
    let playlist = server.playlist_path("dec1");
    assert_decodes(&playlist, "the playlist");
    let first = probe(&server.segment_path("dec1", &pl.segments[0].uri), false).expect("ffprobe");
    let v = first.stream("video").expect("video stream in segment");
    let a = first.stream("audio").expect("audio stream in segment");
    assert_eq!(v.codec_name, "h264");
    assert_eq!(v.profile.as_deref(), Some("High"));
    assert_eq!((v.width, v.height), (Some(320), Some(240)));
    assert_eq!(a.codec_name, "aac");
    assert_eq!(a.profile.as_deref(), Some("LC"));
    assert_eq!((a.sample_rate, a.channels), (Some(48_000), Some(2)));
    assert_running(&mut server);
}

#[test]
fn extinf_durations_match_the_media() {
    let (mut server, media, pl) = publish_fixture(
        Server::builder().hls("fragment", "2s"),
        Fixture::Av8s,
        "dur1",
    );
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
    assert_running(&mut server);
}

#[test]
fn every_segment_starts_with_a_keyframe() {
    let (mut server, _, pl) = publish_fixture(
        Server::builder().hls("fragment", "1s"),
        Fixture::Av8s,
        "key1",
    );
    assert!(pl.segments.len() >= 6, "{pl:#?}");
    for s in &pl.segments {
        let seg = server.segment_path("key1", &s.uri);
        assert_starts_with_keyframe(&seg, &format!("segment {}", s.uri));
        let p = probe(&seg, true).expect("ffprobe segment");
        assert!(
            p.packets_of("audio").next().is_some(),
            "no audio in {}",
            s.uri
        );
        assert!(!s.discontinuity, "unexpected DISCONTINUITY on {}", s.uri);
    }
    assert_running(&mut server);
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
    assert_running(&mut server);
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
    assert_running(&mut server);
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
    assert_decodes(
        &server.playlist_path("long1"),
        "the playlist across the forced cuts",
    );
    assert_running(&mut server);
}

/// OBS's default keyframe setting (x264 keyint 250: a keyframe every 8.33 s
/// at 30 fps) with a 2 s fragment and the default settings: every segment
/// is one GOP, starts with a keyframe and decodes on its own, none is a
/// discontinuity, the target duration is sized for the GOP and never
/// changes, and the broadcaster is told (log line, streams API, metric).
#[test]
fn gop_longer_than_fragment_gives_whole_gop_segments_that_decode_alone() {
    let (mut server, media) = start(
        Server::builder()
            .hls("fragment", "2s")
            .hls("fragment-naming", "sequential"),
        Fixture::Gop250,
    );
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
        let what = format!("segment {} on its own", s.uri);
        assert_decodes(&seg, &what);
        assert_starts_with_keyframe(&seg, &what);
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
    assert_running(&mut server);
}
