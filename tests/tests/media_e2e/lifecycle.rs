//! A stream's life: republishing and restarting continue the playlist,
//! SIGTERM and the publisher's end write ENDLIST (unless end-list is off).

use std::time::Duration;

use oxcast_tests::media::probe::probe;
use oxcast_tests::media::{
    assert_close, assert_decodes, assert_running, need_ffmpeg, observe_for, publish_to_end,
    publish_watching, read_playlist, require, segment_id, wait_ended, wait_playlist, Fixture,
    Publisher, Server, END_TIMEOUT,
};

use crate::{check_playlist, check_segments_exist, start, FIRST_SEGMENT_TIMEOUT};

#[test]
fn republish_continues_the_playlist_after_a_discontinuity() {
    let (mut server, media) = start(
        Server::builder()
            .hls("fragment", "1s")
            .hls("fragment-naming", "sequential"),
        Fixture::Av8s,
    );
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
    assert_running(&mut server);
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
    assert_running(&mut b);
}

#[test]
fn sigterm_finishes_the_current_segment_and_writes_endlist() {
    let (mut server, media) = start(
        Server::builder()
            .hls("fragment", "1s")
            .hls("fragment-naming", "sequential"),
        Fixture::Av14s,
    );
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
    assert_decodes(&last_path, "the last segment");
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
    let (mut server, media) = start(Server::builder().hls("fragment", "1s"), Fixture::Av8s);
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
    assert_running(&mut server);
}

#[test]
fn end_list_off_writes_no_endlist() {
    let (mut server, media) = start(
        Server::builder()
            .hls("fragment", "1s")
            .hls("end-list", "false"),
        Fixture::Av8s,
    );
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
    assert_running(&mut server);
}
