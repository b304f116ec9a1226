//! Media end-to-end tests: the real `oxcast-ingest` binary, published to by
//! the real ffmpeg over RTMP, its HLS output checked with ffprobe, ffmpeg
//! decodes, an independent playlist parser and raw HTTP requests.
//!
//! Every test runs its own server on ephemeral ports with its own temporary
//! HLS root. Needs `ffmpeg` and `ffprobe` (Debian package `ffmpeg`); a
//! missing tool fails the tests. Most tests have one shape, the shared
//! [`publish_fixture`]: a server, a fixture published to a key until the
//! playlist ends, then checks on that playlist and its segments.
//!
//! By feature:
//! - [`layout`]: nested and flat layouts, segment namings.
//! - [`segments`]: what the segments contain and how streams are cut.
//! - [`codecs`]: audio only, video only, HE-AAC, mono 44.1 kHz, resolution change.
//! - [`window`]: the sliding window, its cleanup, program date-times, discontinuity numbers.
//! - [`lifecycle`]: republish, restart, SIGTERM, ENDLIST.
//! - [`options`]: EVENT playlists, base URL, the config file.
//! - [`admission`]: which RTMP publishers and players are let in, and for how long.
//! - [`serving`]: the live stream over HTTP, split RTMP and HTTP roles.
//!
//! Run: `cargo test -p oxcast-tests --test media_e2e` (one feature:
//! `... --test media_e2e window::`).

mod admission;
mod codecs;
mod layout;
mod lifecycle;
mod options;
mod segments;
mod serving;
mod window;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oxcast_tests::media::{
    need_ffmpeg, publish_to_end, require, wait_playlist, Fixture, Media, Playlist, Publisher,
    Server, ServerBuilder,
};

/// How long a first segment may take to appear after publishing starts.
const FIRST_SEGMENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a rejected publish may take to fail.
const REJECT_TIMEOUT: Duration = Duration::from_secs(20);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// How every test here starts: ffmpeg and the `fixture` required, a server
/// started from `builder`.
#[track_caller]
fn start(builder: ServerBuilder, fixture: Fixture) -> (Server, &'static Media) {
    need_ffmpeg();
    let media = require(fixture);
    (builder.start(), media)
}

/// The shape most tests here share: [`start`], then the fixture published
/// to `key` in real time until the playlist has `#EXT-X-ENDLIST`. Returns
/// the server, the fixture and that final playlist, which has passed
/// [`check_playlist`].
#[track_caller]
fn publish_fixture(
    builder: ServerBuilder,
    fixture: Fixture,
    key: &str,
) -> (Server, &'static Media, Playlist) {
    let (server, media) = start(builder, fixture);
    let pl = publish_to_end(&server, key, media);
    check_playlist(&pl);
    (server, media, pl)
}

/// Starts publishing `media` to `key` and waits until its playlist lists
/// `segments` segments: the stream is live. Returns the running publisher.
#[track_caller]
fn publish_live(server: &Server, key: &str, media: &Media, segments: usize) -> Publisher {
    let publisher = Publisher::start(media, &server.rtmp_url(key));
    wait_playlist(
        &server.playlist_path(key),
        &format!("{key} live with {segments} segment(s)"),
        FIRST_SEGMENT_TIMEOUT,
        |p| p.segments.len() >= segments,
    );
    publisher
}

/// The server refused `publisher`: ffmpeg failed, and before its time
/// limit ([`REJECT_TIMEOUT`]); `what` names the publish.
#[track_caller]
fn assert_rejected(publisher: Publisher, what: &str) {
    let done = publisher.wait_at_most(REJECT_TIMEOUT);
    assert!(
        !done.success() && !done.timed_out(),
        "{what} was not rejected ({:?}, {:?})",
        done.status,
        done.elapsed
    );
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
