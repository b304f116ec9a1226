//! RTMP admission: invalid keys and unknown apps rejected, one publisher per
//! key, RTMP play denied unless allowed, the idle timeout.

use std::path::Path;
use std::time::{Duration, Instant};

use oxcast_tests::media::probe::probe;
use oxcast_tests::media::{
    assert_close, assert_decodes, assert_running, files_under, need_ffmpeg, publish_to_end,
    read_playlist, require, wait_ended, wait_playlist, Fixture, Publisher, Server,
};

use crate::{assert_rejected, check_playlist, publish_live, start};

#[test]
fn invalid_stream_keys_are_rejected() {
    let (mut server, media) = start(Server::builder().hls("fragment", "1s"), Fixture::Av8s);
    let long = "a".repeat(129);
    let keys = ["bad$key", "..", ".", "semi;colon", long.as_str()];
    let publishers: Vec<(&str, Publisher)> = keys
        .iter()
        .map(|k| (*k, Publisher::start(media, &server.rtmp_url(k))))
        .collect();
    for (key, p) in publishers {
        assert_rejected(p, &format!("publish with invalid key {key:?}"));
    }
    let files = files_under(server.root());
    assert!(
        files.is_empty(),
        "rejected publishes created files: {files:?}"
    );
    // The server still takes a valid key.
    let mut ok = publish_live(&server, "good-key_1.x", media, 1);
    assert!(ok.is_running());
    drop(ok.stop());
    assert_running(&mut server);
}

#[test]
fn unknown_app_is_rejected() {
    let (mut server, media) = start(Server::builder(), Fixture::Av8s);
    let p = Publisher::start(media, &server.rtmp_url_for_app("otherapp", "key1"));
    assert_rejected(p, "publish to an unknown app");
    let files = files_under(server.root());
    assert!(
        files.is_empty(),
        "rejected publish created files: {files:?}"
    );
    assert_running(&mut server);
}

#[test]
fn second_publisher_on_a_live_key_is_rejected() {
    let (mut server, media) = start(
        Server::builder()
            .hls("fragment", "1s")
            .hls("fragment-naming", "sequential"),
        Fixture::Av14s,
    );
    let key = "dup1";
    let path = server.playlist_path(key);
    let mut first = publish_live(&server, key, media, 1);
    let second = Publisher::start(require(Fixture::Av8s), &server.rtmp_url(key));
    assert_rejected(second, "second publisher on a live key");
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
    assert_running(&mut server);
}

#[test]
fn rtmp_play_is_denied_by_default() {
    let (mut server, media) = start(Server::builder().hls("fragment", "1s"), Fixture::Av14s);
    let key = "play1";
    let mut publisher = publish_live(&server, key, media, 1);
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
    assert_running(&mut server);
}

#[test]
fn rtmp_play_works_with_allow_play() {
    let (mut server, media) = start(
        Server::builder().hls("fragment", "1s").arg("--allow-play"),
        Fixture::Av14s,
    );
    let key = "play2";
    let publisher = publish_live(&server, key, media, 2);
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
    assert_decodes(&file, "the played stream");
    let done = publisher.wait();
    assert!(
        done.success(),
        "publisher failed with a player attached: {}",
        done.stderr
    );
    assert_running(&mut server);
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
    assert_running(&mut server);
}

#[test]
fn stalled_publisher_is_dropped_after_the_idle_timeout() {
    need_ffmpeg();
    let media = require(Fixture::Av14s);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = server_with_idle_timeout_2s(dir.path());
    let key = "stall1";
    let path = server.playlist_path(key);
    let publisher = publish_live(&server, key, media, 1);
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
    assert_running(&mut server);
}
