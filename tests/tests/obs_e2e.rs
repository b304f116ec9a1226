//! Real OBS Studio publishing to the real `oxcast-ingest`: Debian's
//! `obs-studio` (29) runs headless under `Xvfb` with Mesa's software GL, a
//! private config directory (profile with an x264 stream encoder, a
//! custom-server service, a scene with a looping media source), starts with
//! `--startstreaming` and stops on SIGINT, as a broadcaster's OBS would.
//!
//! Checked: every segment decodes on its own and starts with a keyframe,
//! no discontinuity in one continuous publish, segment durations as the
//! keyframe setting dictates, a target duration that never changes, and
//! `EXT-X-ENDLIST` once OBS has stopped.
//!
//! Needs `obs` (Debian package `obs-studio`), `Xvfb` (`xvfb`) and ffmpeg;
//! tests/run.sh installs them. A missing tool fails the test.
//!
//! Run: `cargo test -p oxcast-tests --test obs_e2e`

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use oxcast_tests::http;
use oxcast_tests::media::probe::probe;
use oxcast_tests::media::process::{run_ok, send_signal, terminate};
use oxcast_tests::media::{
    assert_decodes, assert_starts_with_keyframe, need_ffmpeg, poll_until, read_playlist,
    wait_playlist, Playlist, Server,
};

/// One OBS at a time: each encodes in real time, and the machine may have
/// two cores.
static SERIAL: Mutex<()> = Mutex::new(());

const FRAGMENT: &str = "2s";
const STREAM: &str = "obs";
/// OBS's start (Qt, GL, encoders) under Xvfb on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Is `program` an executable file on PATH? (`obs -version` would start
/// the GUI, so the tool is not run to find out.)
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

#[track_caller]
fn need_tools() {
    for tool in ["obs", "Xvfb"] {
        assert!(
            on_path(tool),
            "{tool} is required for the OBS tests (apt-get install obs-studio xvfb; tests/run.sh does it)"
        );
    }
    need_ffmpeg();
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Guard {
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// Xvfb on a display number it picks itself (`-displayfd`).
fn start_xvfb() -> (Guard, String) {
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x720x24",
            "-nolisten",
            "tcp",
            "+extension",
            "GLX",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Xvfb");
    let out = child.stdout.take().expect("Xvfb stdout");
    let guard = Guard { child };
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("read Xvfb display number");
    let n = line.trim();
    assert!(
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
        "Xvfb printed no display number ({line:?})"
    );
    (guard, format!(":{n}"))
}

/// A 20 s 640x360 30 fps clip with a tone, for OBS's media source (which
/// loops it; OBS decodes and re-encodes it with its own keyframe setting).
fn make_clip(dir: &Path) -> PathBuf {
    let clip = dir.join("clip.mp4");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-v", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", "20", "-c:v", "libx264", "-preset", "ultrafast"])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"])
        .arg(&clip);
    run_ok(cmd, Duration::from_secs(300)).expect("encode the test clip");
    clip
}

/// OBS's config directory (`$XDG_CONFIG_HOME/obs-studio`): no first-run
/// wizard, no confirmation dialogs, profile `oxcast` (640x360 at 30 fps,
/// advanced output, x264 CBR with `keyint_sec` — 0 is OBS's "auto"), a
/// custom RTMP server and key, and scene collection `oxcast` with the clip
/// as a looping media source.
fn write_obs_config(config_home: &Path, server: &str, key: &str, keyint_sec: u32, clip: &Path) {
    let obs = config_home.join("obs-studio");
    let profile = obs.join("basic/profiles/oxcast");
    let scenes = obs.join("basic/scenes");
    std::fs::create_dir_all(&profile).expect("profile dir");
    std::fs::create_dir_all(&scenes).expect("scenes dir");
    let write = |path: PathBuf, text: String| {
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()))
    };
    write(
        obs.join("global.ini"),
        "[General]\nPre19Defaults=false\nPre21Defaults=false\nPre23Defaults=false\n\
         Pre24.1Defaults=false\nFirstRun=true\nConfirmOnExit=false\n\n\
         [BasicWindow]\nWarnBeforeStartingStream=false\nWarnBeforeStoppingStream=false\n\
         SysTrayEnabled=false\n\n\
         [Basic]\nProfile=oxcast\nProfileDir=oxcast\nSceneCollection=oxcast\n\
         SceneCollectionFile=oxcast\n"
            .to_string(),
    );
    write(
        profile.join("basic.ini"),
        "[General]\nName=oxcast\n\n\
         [Video]\nBaseCX=640\nBaseCY=360\nOutputCX=640\nOutputCY=360\nFPSType=0\nFPSCommon=30\n\n\
         [Audio]\nSampleRate=48000\nChannelSetup=Stereo\n\n\
         [Output]\nMode=Advanced\n\n\
         [AdvOut]\nEncoder=obs_x264\nTrackIndex=1\nTrack1Bitrate=128\nApplyServiceSettings=false\n"
            .to_string(),
    );
    write(
        profile.join("streamEncoder.json"),
        serde_json::json!({
            "rate_control": "CBR",
            "bitrate": 800,
            "keyint_sec": keyint_sec,
            "preset": "veryfast",
            "profile": "main",
        })
        .to_string(),
    );
    write(
        profile.join("service.json"),
        serde_json::json!({
            "type": "rtmp_custom",
            "settings": {"server": server, "key": key, "use_auth": false},
        })
        .to_string(),
    );
    write(
        scenes.join("oxcast.json"),
        serde_json::json!({
            "name": "oxcast",
            "current_scene": "Scene",
            "current_program_scene": "Scene",
            "scene_order": [{"name": "Scene"}],
            "sources": [
                {
                    "id": "scene",
                    "versioned_id": "scene",
                    "name": "Scene",
                    "settings": {
                        "id_counter": 1,
                        "custom_size": false,
                        "items": [{
                            "name": "clip", "id": 1, "visible": true, "locked": false,
                            "pos": {"x": 0, "y": 0}, "scale": {"x": 1, "y": 1},
                            "align": 5, "bounds_type": 0, "rot": 0
                        }]
                    }
                },
                {
                    "id": "ffmpeg_source",
                    "versioned_id": "ffmpeg_source",
                    "name": "clip",
                    "settings": {
                        "is_local_file": true,
                        "local_file": clip.to_string_lossy(),
                        "looping": true,
                        "restart_on_activate": false,
                        "close_when_inactive": false
                    }
                }
            ]
        })
        .to_string(),
    );
}

struct ObsRun {
    /// Every distinct playlist seen while OBS streamed.
    snapshots: Vec<Playlist>,
    /// The playlist once it has ENDLIST, after OBS stopped.
    ended: Playlist,
    server: Server,
    obs_log: String,
}

/// Streams with OBS (`keyint_sec`, 0 = auto) until the playlist satisfies
/// `enough`, then stops OBS with SIGINT and waits for ENDLIST.
fn stream_with_obs(keyint_sec: u32, enough: impl Fn(&Playlist) -> bool) -> ObsRun {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    need_tools();
    let dir = tempfile::tempdir().expect("temp dir");
    let clip = make_clip(dir.path());
    let server = Server::builder()
        .hls("fragment", FRAGMENT)
        .hls("fragment-naming", "sequential")
        .start();
    let rtmp = server.rtmp.expect("rtmp listener");
    let config_home = dir.path().join("config");
    write_obs_config(
        &config_home,
        &format!("rtmp://{rtmp}/app"),
        STREAM,
        keyint_sec,
        &clip,
    );
    let (_xvfb, display) = start_xvfb();
    let obs_log_path = dir.path().join("obs.log");
    let obs_log = std::fs::File::create(&obs_log_path).expect("obs log");
    let obs_err = obs_log.try_clone().expect("obs log");
    let child = Command::new("obs")
        .args([
            "--startstreaming",
            "--multi",
            "--disable-missing-files-check",
            "--profile",
            "oxcast",
            "--collection",
            "oxcast",
        ])
        .current_dir(dir.path())
        .env("DISPLAY", &display)
        .env("XDG_CONFIG_HOME", &config_home)
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .env("QT_QPA_PLATFORM", "xcb")
        .stdin(Stdio::null())
        .stdout(Stdio::from(obs_log))
        .stderr(Stdio::from(obs_err))
        .spawn()
        .expect("start obs");
    let mut obs = Guard { child };
    let read_log = || std::fs::read_to_string(&obs_log_path).unwrap_or_default();

    let path = server.playlist_path(STREAM);
    let mut snapshots: Vec<Playlist> = Vec::new();
    let streamed = poll_until(START_TIMEOUT + Duration::from_secs(60), || {
        if let Some(pl) = read_playlist(&path) {
            if snapshots.last() != Some(&pl) {
                snapshots.push(pl);
            }
        }
        if let Ok(Some(status)) = obs.child.try_wait() {
            panic!(
                "OBS exited ({status}) before streaming enough; OBS log:\n{}\nserver:\n{}",
                read_log(),
                server.stderr()
            );
        }
        snapshots.last().is_some_and(&enough).then_some(())
    });
    assert!(
        streamed.is_some(),
        "not enough segments from OBS in time; last playlist: {:#?}\nOBS log:\n{}\nserver:\n{}",
        snapshots.last(),
        read_log(),
        server.stderr()
    );
    // OBS stops streaming and quits cleanly on SIGINT (SIGTERM kills it
    // without closing the stream).
    send_signal(obs.child.id(), libc::SIGINT);
    let exited = poll_until(Duration::from_secs(30), || {
        obs.child.try_wait().ok().flatten()
    });
    assert!(
        exited.is_some(),
        "OBS did not quit within 30 s of SIGINT; log:\n{}",
        read_log()
    );
    let ended = wait_playlist(
        &path,
        "EXT-X-ENDLIST after OBS stopped",
        Duration::from_secs(20),
        |p| p.end_list,
    );
    let obs_log = read_log();
    drop(obs);
    ObsRun {
        snapshots,
        ended,
        server,
        obs_log,
    }
}

/// What every OBS run must give: every segment decodes on its own and
/// starts with a keyframe, no discontinuity, independent segments claimed,
/// one target duration throughout. Returns the segment durations.
#[track_caller]
fn check_run(run: &ObsRun) -> Vec<f64> {
    let pl = &run.ended;
    let durations: Vec<f64> = pl.segments.iter().map(|s| s.duration).collect();
    eprintln!(
        "OBS stream: {} segments, TARGETDURATION {:?}, EXTINFs {durations:?}",
        durations.len(),
        pl.target_duration
    );
    pl.assert_rfc_valid();
    for s in &pl.segments {
        assert!(
            !s.discontinuity,
            "DISCONTINUITY on {} in one continuous OBS stream:\n{pl:#?}",
            s.uri
        );
        let seg = run.server.segment_path(STREAM, &s.uri);
        let what = format!("segment {} on its own", s.uri);
        assert_decodes(&seg, &what);
        assert_starts_with_keyframe(&seg, &what);
        let p = probe(&seg, true).expect("ffprobe segment");
        assert!(
            p.packets_of("audio").next().is_some(),
            "no audio in {}",
            s.uri
        );
    }
    let mut targets = BTreeSet::new();
    for snap in run.snapshots.iter().chain(std::iter::once(pl)) {
        snap.assert_rfc_valid();
        targets.insert(snap.target_duration);
    }
    assert_eq!(
        targets.len(),
        1,
        "EXT-X-TARGETDURATION changed during the stream (RFC 8216 §6.2.1): {targets:?}"
    );
    assert!(
        pl.other_tags
            .iter()
            .any(|t| t == "#EXT-X-INDEPENDENT-SEGMENTS"),
        "{pl:#?}"
    );
    durations
}

/// OBS's default Keyframe Interval (0 = auto: x264 keyint 250, 8.33 s at
/// 30 fps) with a 2 s fragment: segments are whole GOPs, each playable on
/// its own, and the server tells the broadcaster how to fix the interval.
#[test]
fn obs_default_keyframe_interval() {
    let run = stream_with_obs(0, |pl| pl.segments.len() >= 2);
    let durations = check_run(&run);
    let gop = 250.0 / 30.0;
    // No segment is longer than one GOP (a scene cut may add a keyframe and
    // so a shorter segment); the first is exactly one.
    for d in &durations {
        assert!(*d <= gop + 0.05, "segment of {d} s: {durations:?}");
    }
    assert!(
        (durations[0] - gop).abs() <= 0.05,
        "first segment {} s, want one 8.33 s GOP: {durations:?}\nOBS log:\n{}",
        durations[0],
        run.obs_log
    );
    assert_eq!(run.ended.target_duration, Some(8));
    let log = run.server.stderr();
    assert!(
        log.contains("keyframe interval 8.3 s is longer than the 2 s fragment"),
        "no warning for the broadcaster:\n{log}"
    );
    let http = run.server.http.expect("http listener");
    // The stream has ended; the API no longer lists it, but the metric is
    // back to zero.
    let metrics = http::get(http, "/metrics").expect("GET /metrics").text();
    assert!(
        metrics.contains("\noxcast_publishers_keyframe_interval_too_long 0\n"),
        "{metrics}"
    );
}

/// Keyframe Interval 2 s, the fragment: every segment is 2 s (OBS stamps
/// whole milliseconds, and its keyframes land a millisecond off the 2 s
/// marks), including the first.
#[test]
fn obs_two_second_keyframe_interval() {
    let run = stream_with_obs(2, |pl| pl.segments.len() >= 4);
    let durations = check_run(&run);
    let n = durations.len();
    for d in &durations[..n - 1] {
        assert!(
            *d <= 2.05,
            "segment of {d} s with 2 s keyframes: {durations:?}"
        );
    }
    assert!(
        (durations[0] - 2.0).abs() <= 0.05,
        "first segment {} s, want 2 s: {durations:?}",
        durations[0]
    );
    let full = durations[..n - 1]
        .iter()
        .filter(|d| (**d - 2.0).abs() <= 0.05)
        .count();
    assert!(
        full * 2 >= n - 1,
        "most segments should be 2 s: {durations:?}"
    );
    assert_eq!(run.ended.target_duration, Some(2));
    let log = run.server.stderr();
    assert!(
        !log.contains("is longer than the"),
        "warned about a keyframe interval that matches the fragment:\n{log}"
    );
}
