//! Publishing to and playing from RTMP with the real ffmpeg CLI.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::checks::{read_playlist, wait_playlist};
use super::fixtures::Media;
use super::m3u8::Playlist;
use super::process::{Finished, Running};
use super::server::Server;
use crate::wait::poll_until;

/// Extra wall-clock time a real-time (`-re`) publish may take beyond the
/// media's duration (connection set-up, a loaded CI machine).
pub const PUBLISH_SLACK: Duration = Duration::from_secs(20);
/// How long after its publisher stops a playlist may take to get ENDLIST.
pub const END_TIMEOUT: Duration = Duration::from_secs(15);

/// A running ffmpeg publisher (`ffmpeg -re -i FILE -c copy -f flv URL`).
/// Dropping it stops ffmpeg.
pub struct Publisher {
    running: Running,
    timeout: Duration,
    pub url: String,
}

fn publish_command(media: &Media, url: &str, extra_input_args: &[&str]) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-v", "error", "-re"]);
    cmd.args(extra_input_args);
    cmd.arg("-i").arg(&media.path);
    cmd.args(["-c", "copy", "-f", "flv", url]);
    cmd
}

impl Publisher {
    /// Starts publishing `media` to `url` in real time.
    #[track_caller]
    pub fn start(media: &Media, url: &str) -> Publisher {
        Publisher::start_with(media, url, &[])
    }

    /// As [`Publisher::start`] with extra ffmpeg input options (before `-i`),
    /// e.g. `["-stream_loop", "1"]`.
    #[track_caller]
    pub fn start_with(media: &Media, url: &str, extra_input_args: &[&str]) -> Publisher {
        let loops = extra_input_args
            .windows(2)
            .find(|w| w[0] == "-stream_loop")
            .and_then(|w| w[1].parse::<u32>().ok())
            .unwrap_or(0);
        let media_time = Duration::from_secs_f64(media.duration * f64::from(loops + 1));
        let running = match Running::spawn(publish_command(media, url, extra_input_args)) {
            Ok(r) => r,
            Err(e) => panic!("cannot start the ffmpeg publisher: {e}"),
        };
        Publisher {
            running,
            timeout: media_time + PUBLISH_SLACK,
            url: url.to_string(),
        }
    }

    /// ffmpeg's process id (to pause it with SIGSTOP, for instance).
    pub fn pid(&self) -> u32 {
        self.running.id()
    }

    /// Is ffmpeg still running?
    pub fn is_running(&mut self) -> bool {
        !self.running.has_exited()
    }

    /// Waits for ffmpeg to finish (killing it if it overruns the media
    /// duration plus [`PUBLISH_SLACK`]).
    pub fn wait(self) -> Finished {
        self.running.wait(self.timeout)
    }

    /// Waits at most `timeout` for ffmpeg to finish.
    pub fn wait_at_most(self, timeout: Duration) -> Finished {
        self.running.wait(timeout)
    }

    /// Stops ffmpeg now (SIGTERM: ffmpeg closes the stream cleanly).
    pub fn stop(self) -> Finished {
        self.running.stop(Duration::from_secs(5))
    }
}

/// Publishes `media` to `url` in real time and waits until ffmpeg exits.
pub fn publish(media: &Media, url: &str) -> Finished {
    Publisher::start(media, url).wait()
}

/// Publishes `media` to stream `key` of `server` in real time while
/// snapshotting its playlist on every poll; calls `each` on every new
/// snapshot. Returns the snapshots and asserts that ffmpeg exited
/// successfully.
#[track_caller]
pub fn publish_watching(
    server: &Server,
    key: &str,
    media: &Media,
    mut each: impl FnMut(&Playlist),
) -> Vec<Playlist> {
    let path = server.playlist_path(key);
    let mut publisher = Publisher::start(media, &server.rtmp_url(key));
    let mut snapshots: Vec<Playlist> = Vec::new();
    let limit = Duration::from_secs_f64(media.duration) + Duration::from_secs(30);
    // Whether ffmpeg ends in time is checked below, with its output.
    // Snapshots are taken only while ffmpeg runs, so `each` sees the
    // stream live (a snapshot after the publisher left would not be).
    poll_until(limit, || {
        if !publisher.is_running() {
            return Some(());
        }
        if let Some(pl) = read_playlist(&path) {
            if snapshots.last() != Some(&pl) {
                each(&pl);
                snapshots.push(pl);
            }
        }
        None
    });
    let done = publisher.wait_at_most(Duration::from_secs(5));
    assert!(
        done.success(),
        "publisher to {key} failed ({:?}): {}",
        done.status,
        done.stderr
    );
    snapshots
}

/// Publishes `media` to stream `key` of `server`, requires ffmpeg to
/// succeed, and returns the final playlist once it has `#EXT-X-ENDLIST`.
#[track_caller]
pub fn publish_to_end(server: &Server, key: &str, media: &Media) -> Playlist {
    publish_watching(server, key, media, |_| {});
    wait_ended(&server.playlist_path(key))
}

/// Waits (up to [`END_TIMEOUT`]) for `#EXT-X-ENDLIST` after a publisher
/// stopped.
#[track_caller]
pub fn wait_ended(path: &Path) -> Playlist {
    wait_playlist(path, "#EXT-X-ENDLIST", END_TIMEOUT, |p| p.end_list)
}

/// Plays `url` with ffmpeg for `seconds` of media, copying it into `out`
/// (an FLV file). Killed after `timeout`.
pub fn play_to_file(url: &str, seconds: f64, out: &Path, timeout: Duration) -> Finished {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-v", "error", "-y", "-i", url]);
    cmd.args(["-t", &format!("{seconds}"), "-c", "copy", "-f", "flv"]);
    cmd.arg(out);
    match Running::spawn(cmd) {
        Ok(r) => r.wait(timeout),
        Err(e) => Finished {
            status: None,
            stdout: String::new(),
            stderr: e,
            elapsed: Duration::ZERO,
        },
    }
}
