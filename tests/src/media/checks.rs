//! Checks the media tests share: playlists read and awaited on disk,
//! segment ids, outputs that decode, segments that start with a keyframe.
//! Each panics with what failed (they are assertions).

use std::path::Path;
use std::time::Duration;

use super::probe::{decode_errors, probe};
use super::{wait_for, Playlist, Server};

/// Reads and parses a playlist; panics on a malformed one (a half-written
/// or invalid playlist is a server bug), `None` if it does not exist yet.
#[track_caller]
pub fn read_playlist(path: &Path) -> Option<Playlist> {
    match Playlist::read(path) {
        Ok(p) => p,
        Err(e) => panic!("unparsable playlist {}: {e}", path.display()),
    }
}

/// Waits until the playlist at `path` exists and satisfies `pred`; `what`
/// names the awaited state in the time-out message.
#[track_caller]
pub fn wait_playlist(
    path: &Path,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Playlist) -> bool,
) -> Playlist {
    wait_for(&format!("{what} ({})", path.display()), timeout, || {
        read_playlist(path).filter(|p| pred(p))
    })
}

/// The numeric id in a segment URI (`123.ts`, `key-123.ts`, `…/123.ts`).
#[track_caller]
pub fn segment_id(uri: &str) -> u64 {
    let name = uri.rsplit('/').next().unwrap_or(uri);
    let stem = name
        .strip_suffix(".ts")
        .unwrap_or_else(|| panic!("segment URI {uri:?} does not end in .ts"));
    let digits = stem.rsplit('-').next().unwrap_or(stem);
    digits
        .parse()
        .unwrap_or_else(|_| panic!("segment URI {uri:?} has no numeric id"))
}

/// `got` is within `tolerance` of `want`.
#[track_caller]
pub fn assert_close(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: got {got}, want {want} ± {tolerance}"
    );
}

/// The server has not exited (it must survive whatever the test did).
#[track_caller]
pub fn assert_running(server: &mut Server) {
    assert!(
        server.is_running(),
        "oxcast-ingest exited unexpectedly ({:?}); stderr:\n{}",
        server.try_exit_status(),
        server.stderr()
    );
}

/// ffmpeg decodes `path` (a segment, a playlist, a recording) without a
/// single error; `what` names it in the failure.
#[track_caller]
pub fn assert_decodes(path: &Path, what: &str) {
    let errors = decode_errors(&path.to_string_lossy()).expect("run ffmpeg");
    assert!(
        errors.trim().is_empty(),
        "{what} does not decode cleanly ({}):\n{errors}",
        path.display()
    );
}

/// The first video packet of segment `path` is a keyframe (so the segment
/// can be played on its own).
#[track_caller]
pub fn assert_starts_with_keyframe(path: &Path, what: &str) {
    let p = probe(path, true).expect("ffprobe segment");
    let first = p
        .packets_of("video")
        .next()
        .unwrap_or_else(|| panic!("no video packet in {what}"));
    assert!(
        first.is_key(),
        "{what} starts with a non-key video packet {first:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_ids_of_every_naming() {
        assert_eq!(segment_id("123.ts"), 123);
        assert_eq!(segment_id("cam-1-45.ts"), 45);
        assert_eq!(segment_id("http://cdn.test/hls/cam/7.ts"), 7);
    }
}
