//! Storage faults while a stream is live: the segment directory removed, the
//! disk full (a small tmpfs), the directory unwritable (`chattr +i`). Each time the
//! fault is logged with the stream name and counted in
//! `oxcast_storage_errors_total`, the stream goes on, and segments resume
//! once the fault clears; the process never panics.
//!
//! The tmpfs and chattr cases need root (CI runs as root) and an ext4-like
//! file system for `chattr`; without them they fail with the reason, never
//! pass without running.
//!
//! Run: `cargo test -p oxcast-tests --test storage_faults`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use oxcast_tests::media::{
    require, wait_until, Fixture, Playlist, Publisher, Server, ServerBuilder,
};

const FAULT_TIMEOUT: Duration = Duration::from_secs(20);

fn storage_errors(server: &Server) -> u64 {
    server
        .metric("oxcast_storage_errors_total")
        .expect("GET /metrics with oxcast_storage_errors_total") as u64
}

fn segment_count(playlist: &Path) -> Option<u64> {
    let p = Playlist::read(playlist).ok().flatten()?;
    Some(p.media_sequence + p.segments.len() as u64)
}

/// Waits until the playlist lists a segment beyond `after` (segments keep
/// being produced).
#[track_caller]
fn wait_for_new_segment(playlist: &Path, after: u64, what: &str) -> u64 {
    let mut latest = after;
    wait_until(what, FAULT_TIMEOUT, || {
        latest = segment_count(playlist).unwrap_or(0);
        latest > after
    });
    latest
}

#[track_caller]
fn assert_no_panic(server: &mut Server) {
    assert!(server.is_running(), "server died:\n{}", server.stderr());
    assert!(
        !server.stderr().contains("panicked"),
        "server panicked:\n{}",
        server.stderr()
    );
}

fn long_publisher(server: &Server, key: &str) -> Publisher {
    Publisher::start_with(
        require(Fixture::Av14s),
        &server.rtmp_url(key),
        &["-stream_loop", "3"],
    )
}

#[test]
fn removed_stream_directory_is_recreated() {
    let mut server = ServerBuilder::default().hls("fragment", "1s").start();
    let publisher = long_publisher(&server, "cam");
    let playlist = server.playlist_path("cam");
    let before = wait_for_new_segment(&playlist, 0, "first segment");
    std::fs::remove_dir_all(playlist.parent().expect("stream dir")).expect("remove stream dir");
    let after = wait_for_new_segment(
        &playlist,
        before,
        "segments after the directory was removed",
    );
    assert!(after > before);
    wait_until(
        "the lost segment counted as a storage error",
        FAULT_TIMEOUT,
        || storage_errors(&server) >= 1,
    );
    assert!(
        server.stderr().contains("cam"),
        "fault not logged with the stream name"
    );
    drop(publisher);
    assert_no_panic(&mut server);
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "mounting a tmpfs needs root: run the storage fault tests as root (CI does)"
        );
        let dir = tempfile::tempdir().expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "oxcast-test"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount -t tmpfs failed although running as root");
        Tmpfs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn resize(&self, size: &str) {
        self.remount(&format!("size={size}"));
    }

    fn remount(&self, options: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {options} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn full_disk_then_space_freed() {
    let fs = Tmpfs::mount("600k");
    let mut server = ServerBuilder::default()
        .root(&fs.path())
        .hls("fragment", "1s")
        .hls("cleanup", "false")
        .start();
    let publisher = long_publisher(&server, "full");
    let playlist = server.playlist_path("full");
    wait_until("ENOSPC counted", FAULT_TIMEOUT, || {
        storage_errors(&server) >= 1
    });
    let stuck = segment_count(&playlist).unwrap_or(0);
    fs.resize("64m");
    wait_for_new_segment(&playlist, stuck, "segments after space was freed");
    drop(publisher);
    assert_no_panic(&mut server);
}

/// `chattr +i` makes the stream directory refuse new files even for root
/// (the permission fault a read-only volume or a wrong owner causes), then
/// `chattr -i` clears it. Needs root and a file system with attributes (ext4).
#[test]
fn unwritable_directory_then_writable_again() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "chattr +i needs root: run the storage fault tests as root (CI does)"
    );
    let mut server = ServerBuilder::default().hls("fragment", "1s").start();
    let publisher = long_publisher(&server, "locked");
    let playlist = server.playlist_path("locked");
    let before = wait_for_new_segment(&playlist, 0, "first segment");
    let dir = playlist.parent().expect("stream dir").to_path_buf();
    let chattr = |flag: &str| {
        Command::new("chattr")
            .arg(flag)
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        chattr("+i"),
        "chattr +i failed on {}: the test needs a file system with attributes (ext4)",
        dir.display()
    );
    let unlock = scopeguard(|| {
        let _ = Command::new("chattr").arg("-i").arg(&dir).status();
    });
    wait_until("EPERM counted", FAULT_TIMEOUT, || {
        storage_errors(&server) >= 1
    });
    let stuck = segment_count(&playlist).unwrap_or(before);
    assert!(chattr("-i"), "chattr -i failed");
    drop(unlock);
    wait_for_new_segment(
        &playlist,
        stuck,
        "segments after the directory became writable",
    );
    drop(publisher);
    assert_no_panic(&mut server);
}

/// Runs `f` when dropped (also when the test panics).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
