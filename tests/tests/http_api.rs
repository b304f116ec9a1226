//! `GET /api/streams` in the all-in-one role, while ffmpeg publishes: the
//! fields come from the publisher's media path (codecs from the sequence
//! headers, resolution from the SPS, measured frame rate and bitrate).

use std::time::Duration;

use oxcast_tests::http::fetch;
use oxcast_tests::media::{need_ffmpeg, require, wait_for, Fixture, Publisher, Server};
use serde_json::Value;

fn streams(addr: std::net::SocketAddr) -> Option<Vec<Value>> {
    let r = fetch(addr, "/api/streams", &[]);
    assert_eq!(r.status, 200);
    let json: Value = serde_json::from_slice(&r.body).ok()?;
    json["streams"].as_array().cloned()
}

#[test]
fn live_streams_report_what_the_publisher_sends() {
    need_ffmpeg();
    // 14 s of 320x240 25 fps H.264 High + AAC-LC 48 kHz stereo.
    let media = require(Fixture::Av14s);
    let server = Server::builder().hls("fragment", "1s").start();
    let addr = server.http.expect("http");
    assert_eq!(streams(addr), Some(vec![]), "nothing live yet");

    let publisher = Publisher::start(media, &server.rtmp_url("cam"));
    let cam = wait_for(
        "cam with a measured bitrate and a playlist",
        Duration::from_secs(20),
        || {
            let list = streams(addr)?;
            let cam = list.into_iter().find(|s| s["name"] == "cam")?;
            (cam["bitrate"].is_u64() && cam["playlistReady"] == true).then_some(cam)
        },
    );
    assert_eq!(cam["source"], "publisher");
    assert_eq!(cam["playlistUrl"], "/live/cam/index.m3u8");
    let video = cam["videoCodec"].as_str().expect("videoCodec");
    assert!(video.starts_with("avc1.64"), "H.264 High, got {video}");
    assert_eq!(cam["audioCodec"], "mp4a.40.2");
    assert_eq!(cam["codecs"], format!("{video},mp4a.40.2"));
    assert_eq!(
        (cam["width"].as_u64(), cam["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(cam["resolution"], "320x240");
    let fps = cam["frameRate"].as_f64().expect("frameRate");
    assert!((fps - 25.0).abs() < 0.5, "frame rate {fps}");
    let bitrate = cam["bitrate"].as_u64().expect("bitrate");
    assert!((10_000..20_000_000).contains(&bitrate), "bitrate {bitrate}");
    assert_eq!(cam["audioSampleRate"], 48_000);
    assert_eq!(cam["audioChannels"], 2);
    // The fixture has a keyframe every second (25 frames at 25 fps).
    let keyframes = cam["keyframeInterval"].as_f64().expect("keyframeInterval");
    assert!(
        (keyframes - 1.0).abs() < 0.01,
        "keyframe interval {keyframes}"
    );
    let started = cam["startedAt"].as_str().expect("startedAt");
    let started = parse_rfc3339(started);
    let now = std::time::SystemTime::now();
    assert!(
        now.duration_since(started)
            .is_ok_and(|d| d < Duration::from_secs(60)),
        "started {started:?}"
    );
    // The URL it gives is served.
    let playlist = fetch(addr, "/live/cam/index.m3u8", &[]);
    assert_eq!(playlist.status, 200);
    assert!(playlist.text().starts_with("#EXTM3U"));

    // When the publisher goes, so does the entry.
    drop(publisher.stop());
    wait_for("cam to leave the list", Duration::from_secs(20), || {
        streams(addr)?.is_empty().then_some(())
    });
}

/// Parses the RFC 3339 timestamps the API writes.
fn parse_rfc3339(s: &str) -> std::time::SystemTime {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("bad RFC 3339 {s:?}: {e}"));
    t.into()
}
