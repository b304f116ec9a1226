//! Support for the media end-to-end tests: the real `oxcast-ingest` binary,
//! published to by the real ffmpeg, its output checked with ffprobe/ffmpeg
//! and an independent playlist parser.
//!
//! - [`fixtures`]: test media generated once with ffmpeg lavfi sources.
//! - [`server`]: a guard that runs `oxcast-ingest` on ephemeral ports.
//! - [`publish`]: ffmpeg publisher/player helpers.
//! - [`m3u8`]: an RFC 8216 media playlist parser written for the tests.
//! - [`probe`]: ffprobe/ffmpeg inspection of the produced segments.
//! - [`http`]: a tiny HTTP/1.1 GET client.
//! - [`wait`]: polling helpers (no fixed sleeps where a condition exists).
//! - [`process`]: running external tools with time limits.

pub mod fixtures;
pub mod http;
pub mod m3u8;
pub mod probe;
pub mod process;
pub mod publish;
pub mod server;
pub mod wait;

pub use fixtures::{fixture, require, Fixture, FixtureError, Media};
pub use m3u8::{Playlist, Segment};
pub use publish::{play_to_file, publish, Publisher};
pub use server::{files_under, target_dir, workspace_root, Layout, Role, Server, ServerBuilder};
pub use wait::{observe_for, poll_until, wait_for, wait_until};

/// Are ffmpeg and ffprobe installed? The media tests need both.
pub fn have_ffmpeg() -> bool {
    process::have_tool("ffmpeg") && process::have_tool("ffprobe")
}
