//! Support for the media end-to-end tests: the real `oxcast-ingest` binary,
//! published to by the real ffmpeg, its output checked with ffprobe/ffmpeg
//! and an independent playlist parser.
//!
//! - [`fixtures`]: test media generated once with ffmpeg lavfi sources.
//! - [`server`]: a guard that runs `oxcast-ingest` on ephemeral ports.
//! - [`publish`]: ffmpeg publisher/player helpers.
//! - [`m3u8`]: an RFC 8216 media playlist parser written for the tests.
//! - [`probe`]: ffprobe/ffmpeg inspection of the produced segments.
//! - [`checks`]: the checks the media tests share (playlists read and
//!   awaited on disk, segments that decode and start with a keyframe).
//! - [`process`]: running external tools with time limits.
//! - [`hls_keys`]: key tokens, key lines and segment decryption for
//!   encrypted HLS, independent of the server's code.
//!
//! The HTTP client ([`http`]) and the poll helpers ([`wait`]) are the
//! crate's own ([`crate::http`], [`crate::wait`]), re-exported here.

pub mod checks;
pub mod fixtures;
pub mod hls_keys;
pub mod m3u8;
pub mod probe;
pub mod process;
pub mod publish;
pub mod server;

pub use crate::{http, wait};
pub use checks::{
    assert_close, assert_decodes, assert_running, assert_starts_with_keyframe, read_playlist,
    segment_id, wait_playlist,
};
pub use fixtures::{fixture, require, Fixture, FixtureError, Media};
pub use m3u8::{Playlist, Segment};
pub use publish::{
    play_to_file, publish, publish_to_end, publish_watching, wait_ended, Publisher, END_TIMEOUT,
};
pub use server::{
    files_under, mtime_secs, target_dir, workspace_root, write_aged, Layout, Role, Server,
    ServerBuilder,
};
pub use wait::{observe_for, poll_until, wait_for, wait_until};

/// Are ffmpeg and ffprobe installed? The media tests need both.
pub fn have_ffmpeg() -> bool {
    process::have_tool("ffmpeg") && process::have_tool("ffprobe")
}

/// Panics (saying how to install them) unless ffmpeg and ffprobe are
/// installed: a missing tool fails a media test, it never skips it.
#[track_caller]
pub fn need_ffmpeg() {
    assert!(
        have_ffmpeg(),
        "ffmpeg and ffprobe are required for the media tests (apt-get install ffmpeg; tests/run.sh does it)"
    );
}
