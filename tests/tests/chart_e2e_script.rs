//! The cluster-independent parts of `tests/kind/e2e.sh`, the end-to-end
//! script the kind workflow runs: its argument handling, and its stream and
//! verify stage against a local `oxcast-ingest run` on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use oxcast_tests::media::process::run;
use oxcast_tests::media::server::ingest_binary;
use oxcast_tests::media::{have_ffmpeg, workspace_root};

const TIMEOUT: Duration = Duration::from_secs(120);

fn script() -> Command {
    let mut cmd = Command::new(workspace_root().join("tests/kind/e2e.sh"));
    // Never touch a developer's cluster from these tests.
    cmd.env("KUBECONFIG", "/nonexistent/kubeconfig");
    cmd
}

#[test]
fn help_lists_every_command_and_option() {
    let mut cmd = script();
    cmd.arg("--help");
    let done = run(cmd, TIMEOUT).expect("run e2e.sh --help");
    assert!(done.success(), "{done:?}");
    for word in [
        "all",
        "install",
        "minimal",
        "scale-out",
        "kind-rwx-storage",
        "stream-verify",
        "verify-url",
        "verify-local",
        "dump",
        "cleanup",
        "--context",
        "--operator-image",
        "--ingest-image",
        "--duration",
    ] {
        assert!(
            done.stdout.contains(word),
            "--help lacks {word}:\n{}",
            done.stdout
        );
    }
}

#[test]
fn bad_arguments_are_usage_errors_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "no command given"),
        (&["bogus"], "unknown command 'bogus'"),
        (&["--bogus", "all"], "unknown option --bogus"),
        (
            &["--duration", "x", "verify-local"],
            "--duration must be a positive integer",
        ),
        (
            &["--duration", "0", "verify-local"],
            "--duration must be a positive integer",
        ),
        (&["--timeout"], "--timeout needs a value"),
        (
            &["--stream-key", "a/b", "verify-local"],
            "--stream-key must be",
        ),
        (
            &["--path-prefix", "live", "verify-local"],
            "--path-prefix must start with /",
        ),
        (
            &["stream-verify", "rtmp://x/app"],
            "stream-verify takes 2 argument(s)",
        ),
        (
            &["kind-rwx-storage"],
            "kind-rwx-storage takes 1 argument(s)",
        ),
        (
            &["verify-local", "extra"],
            "verify-local takes 0 argument(s)",
        ),
    ];
    for (args, message) in cases {
        let mut cmd = script();
        cmd.args(*args);
        let done = run(cmd, TIMEOUT).expect("run e2e.sh");
        assert_eq!(
            done.status.and_then(|s| s.code()),
            Some(2),
            "{args:?} must be a usage error: {done:?}"
        );
        assert!(done.stderr.contains(message), "{args:?}: {}", done.stderr);
    }
}

#[test]
fn image_references_are_split_for_the_chart_values() {
    // `install` turns --operator-image/--ingest-image into the chart's
    // repository and tag (or digest) values with the script's split_image.
    let cases = [
        (
            "ghcr.io/oxcast/oxcast-ingest:e2e",
            "ghcr.io/oxcast/oxcast-ingest",
            "e2e",
        ),
        (
            "localhost:5000/oxcast-ingest:1.2",
            "localhost:5000/oxcast-ingest",
            "1.2",
        ),
        (
            "localhost:5000/oxcast-ingest",
            "localhost:5000/oxcast-ingest",
            "",
        ),
        ("ghcr.io/o/i@sha256:abc", "ghcr.io/o/i", "@sha256:abc"),
    ];
    let script = workspace_root().join("tests/kind/e2e.sh");
    for (image, repo, tag) in cases {
        // Source only the function definitions (everything before the
        // argument parsing) and call split_image.
        let program = format!(
            "eval \"$(sed -n '/^split_image()/,/^}}/p' '{}')\"; split_image '{image}'",
            script.display()
        );
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &program]);
        let done = run(cmd, TIMEOUT).expect("run bash");
        assert!(done.success(), "{done:?}");
        let lines: Vec<&str> = done.stdout.lines().collect();
        assert_eq!(lines, [repo, tag], "split_image {image}");
    }
}

#[test]
fn verify_local_publishes_and_verifies_hls_from_a_local_server() {
    assert!(
        have_ffmpeg(),
        "ffmpeg and ffprobe are needed (tests/run.sh installs them)"
    );
    let bin = ingest_binary().expect("build oxcast-ingest");
    let mut cmd = script();
    cmd.arg("--ingest-bin").arg(&bin).arg("verify-local");
    let done = run(cmd, TIMEOUT).expect("run e2e.sh verify-local");
    assert!(
        done.success(),
        "verify-local failed:\n{}{}",
        done.stdout,
        done.stderr
    );
    for line in [
        "the live playlist is up",
        "headers, codecs and a clean decode",
        "verify-local passed",
    ] {
        assert!(
            done.stderr.contains(line),
            "missing {line:?} in:\n{}",
            done.stderr
        );
    }
}

/// The verify stage must fail on an HLS server that gets the cache headers
/// wrong: a plain static file server serving a well-formed playlist.
#[test]
fn verify_url_rejects_a_server_without_the_hls_cache_headers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stream = dir.path().join("live/s");
    std::fs::create_dir_all(&stream).expect("mkdir");
    std::fs::write(
        stream.join("index.m3u8"),
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n0.ts\n#EXT-X-ENDLIST\n",
    )
    .expect("write the playlist");
    let mut server = Command::new("python3")
        .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3 -m http.server");
    let stdout = server.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("http.server prints its port");
    let port = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .expect("a port in the banner")
        .to_string();

    let mut cmd = script();
    cmd.args(["--duration", "2", "verify-url"])
        .arg(format!("http://127.0.0.1:{port}/live/s/index.m3u8"));
    let done = run(cmd, TIMEOUT).expect("run e2e.sh verify-url");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(done.status.and_then(|s| s.code()), Some(1), "{done:?}");
    assert!(
        done.stderr
            .contains("the playlist: Cache-Control is '', expected 'no-cache'"),
        "{}",
        done.stderr
    );
}
