//! The container images without a container engine: the binaries are built
//! by `docker/build-static.sh` (what `docker/Dockerfile` runs), each image's
//! root filesystem is assembled from the Dockerfile's own `COPY`
//! instructions into an otherwise empty directory (`oxcast_tests::images`,
//! which also writes the OCI image tars), and the binaries run
//! there under `chroot` as the image's non-root user, in its working
//! directory, with only its environment. No libc, no shell, no /etc: what
//! runs here runs on distroless/static.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use oxcast_tests::http;
use oxcast_tests::images::{self, Stage};
use oxcast_tests::media::process::{run, run_ok};
use oxcast_tests::media::{self, workspace_root, Fixture, Publisher};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The root filesystem of image `name`: only what its stage's COPY lines
/// bring in (`oxcast_tests::images::stage_layer`, the same tree the OCI
/// image's top layer holds), without the distroless base: the binaries
/// must not need it.
fn image_root(name: &str, stage: &Stage) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("oxcast-image-root-")
        .tempdir()
        .expect("temp dir");
    images::stage_layer(name, stage)
        .unwrap_or_else(|e| panic!("the files of {name}: {e}"))
        .materialize(root.path())
        .unwrap_or_else(|e| panic!("writing the files of {name}: {e}"));
    root
}

fn dockerfile_stages() -> BTreeMap<String, Stage> {
    images::dockerfile_stages().unwrap_or_else(|e| panic!("{e}"))
}

fn static_build() -> &'static Path {
    images::static_build().unwrap_or_else(|e| panic!("{e}"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The image's process: chroot into `root`, cd to WORKDIR, drop to USER,
/// only the image's ENV; `args` after the ENTRYPOINT.
fn in_image(root: &Path, stage: &Stage, args: &[&str]) -> Command {
    // The path as seen inside the image: exec happens after chroot(2).
    let program = stage.entrypoint.first().expect("ENTRYPOINT");
    assert!(
        root.join(program.trim_start_matches('/')).is_file(),
        "{program} is not in the image root"
    );
    let mut cmd = Command::new(program);
    cmd.args(&stage.entrypoint[1..])
        .args(args)
        .env_clear()
        .envs(&stage.env);
    let root_c = CString::new(root.as_os_str().as_bytes()).expect("root path");
    let workdir =
        CString::new(stage.workdir.clone().unwrap_or_else(|| "/".into())).expect("workdir");
    let (uid, gid) = stage.user.expect("the image sets USER");
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root_c.as_ptr()) != 0
                || libc::chdir(workdir.as_ptr()) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The stages, for tests that run commands as the image would: chroot(2)
/// needs root, which CI and tests/run.sh have; without it the test fails
/// (it does not pass untested).
#[track_caller]
fn stages_as_root() -> BTreeMap<String, Stage> {
    assert!(
        is_root(),
        "running the image needs chroot, so root (CI and tests/run.sh run as root; \
         skip this test by name elsewhere)"
    );
    dockerfile_stages()
}

#[test]
fn dockerfile_builds_non_root_images_with_oci_labels_and_exec_entrypoints() {
    let stages = dockerfile_stages();
    for name in ["oxcast-operator", "oxcast-ingest"] {
        let stage = stages
            .get(name)
            .unwrap_or_else(|| panic!("no stage {name}: {:?}", stages.keys()));
        let (uid, gid) = stage.user.expect("USER");
        assert_ne!(uid, 0, "{name} runs as root");
        assert_ne!(gid, 0, "{name} runs in group root");
        assert_eq!(
            stage.entrypoint,
            [format!("/usr/local/bin/{name}")],
            "{name}"
        );
        for label in [
            "org.opencontainers.image.title",
            "org.opencontainers.image.source",
            "org.opencontainers.image.licenses",
            "org.opencontainers.image.version",
            "org.opencontainers.image.revision",
        ] {
            assert!(stage.labels.contains_key(label), "{name} lacks {label}");
        }
        assert_eq!(
            stage.labels["org.opencontainers.image.title"], name,
            "{name}: title"
        );
        // The version label defaults to the release the chart installs.
        assert_eq!(
            stage.labels["org.opencontainers.image.version"],
            oxcast_tests::chart::app_version(),
            "{name}: ARG VERSION's default is not the chart's appVersion"
        );
        assert!(
            stage.copies.iter().all(|c| c.from != "context"),
            "{name} copies from the build context instead of a build stage"
        );
    }
    let ingest = &stages["oxcast-ingest"];
    assert_eq!(ingest.cmd, ["run"]);
    assert_eq!(
        ingest.env.get("OXCAST_PLAYER_ASSETS").map(String::as_str),
        Some("/usr/share/oxcast/player")
    );
    assert!(ingest
        .copies
        .iter()
        .any(|c| c.from == "player" && c.dest == "/usr/share/oxcast/player"));
}

#[test]
fn dockerfile_passes_hadolint() {
    let hadolint = oxcast_tests::chart::tool_path("hadolint").expect("hadolint (tests/tools.sh)");
    let mut cmd = Command::new(hadolint);
    cmd.arg(workspace_root().join("docker/Dockerfile"));
    let done = run(cmd, TIMEOUT).expect("run hadolint");
    assert!(done.success(), "hadolint:\n{}{}", done.stdout, done.stderr);
}

#[test]
fn static_binaries_have_no_dynamic_loader() {
    for bin in ["oxcast-ingest", "oxcast-operator"] {
        let path = static_build().join("usr/local/bin").join(bin);
        let mut cmd = Command::new("readelf");
        cmd.arg("--program-headers").arg(&path).env("LC_ALL", "C");
        let headers = run_ok(cmd, TIMEOUT).expect("readelf");
        assert!(
            headers.contains("LOAD"),
            "{bin}: not an executable?\n{headers}"
        );
        assert!(
            !headers.contains("INTERP"),
            "{bin} names a dynamic loader:\n{headers}"
        );
        let mut cmd = Command::new("readelf");
        cmd.arg("--dynamic").arg(&path).env("LC_ALL", "C");
        let dynamic = run_ok(cmd, TIMEOUT).expect("readelf --dynamic");
        assert!(
            !dynamic.contains("(NEEDED)"),
            "{bin} needs shared libraries:\n{dynamic}"
        );
    }
}

#[test]
fn operator_image_runs_from_an_empty_root_as_non_root() {
    let stages = stages_as_root();
    let stage = &stages["oxcast-operator"];
    let root = image_root("oxcast-operator", stage);
    let help = run(in_image(root.path(), stage, &["--help"]), TIMEOUT).expect("run --help");
    assert!(
        help.success(),
        "oxcast-operator --help in the image root failed: {help:?}"
    );
    for flag in [
        "--watch-namespaces",
        "--ingest-image",
        "--leader-election",
        "--lease-name",
        "--listen",
    ] {
        assert!(
            help.stdout.contains(flag),
            "--help lacks {flag}:\n{}",
            help.stdout
        );
    }
    // Without a cluster it must fail cleanly with a reason, not crash.
    let no_cluster = run(
        in_image(root.path(), stage, &["--leader-election=false"]),
        TIMEOUT,
    )
    .expect("run the operator");
    assert_eq!(
        no_cluster.status.and_then(|s| s.code()),
        Some(1),
        "{no_cluster:?}"
    );
    assert!(
        no_cluster.stderr.contains("Kubernetes configuration"),
        "{}",
        no_cluster.stderr
    );
}

/// A server started in the image root, killed on drop.
struct ImageServer {
    child: Child,
    rtmp: SocketAddr,
    http: SocketAddr,
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_in_image(root: &Path, stage: &Stage, args: &[&str]) -> ImageServer {
    let mut all: Vec<&str> = stage.cmd.iter().map(String::as_str).collect();
    all.extend(args);
    let mut cmd = in_image(root, stage, &all);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start oxcast-ingest in the image root");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut rtmp = None;
    let mut http = None;
    while rtmp.is_none() || http.is_none() {
        let line = rx.recv_timeout(TIMEOUT).unwrap_or_else(|e| {
            panic!("no `listening` lines from the server in the image root: {e}")
        });
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("listening"), Some("rtmp"), Some(a)) => rtmp = a.parse().ok(),
            (Some("listening"), Some("http"), Some(a)) => http = a.parse().ok(),
            _ => {}
        }
    }
    ImageServer {
        child,
        rtmp: rtmp.expect("rtmp address"),
        http: http.expect("http address"),
    }
}

#[test]
fn ingest_image_serves_a_live_stream_from_an_empty_root_as_non_root() {
    let stages = stages_as_root();
    let stage = &stages["oxcast-ingest"];
    let root = image_root("oxcast-ingest", stage);

    let help = run(in_image(root.path(), stage, &["--help"]), TIMEOUT).expect("run --help");
    assert!(
        help.success(),
        "oxcast-ingest --help in the image root failed: {help:?}"
    );
    for sub in ["run", "rtmp", "http"] {
        assert!(
            help.stdout.contains(sub),
            "--help lacks {sub}:\n{}",
            help.stdout
        );
    }

    // The image's CMD (`run`) with no HLS root: it writes ./live in WORKDIR.
    let server = start_in_image(
        root.path(),
        stage,
        &[
            "--rtmp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--hls-fragment",
            "1s",
        ],
    );
    let health = http::get(server.http, "/healthz").expect("GET /healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.text().trim(), "ok");

    media::need_ffmpeg();
    let fixture = media::require(Fixture::Av8s);
    let publisher = Publisher::start(fixture, &format!("rtmp://{}/app/image", server.rtmp));
    let playlist = media::wait_for("the playlist over HTTP", TIMEOUT, || {
        http::get(server.http, "/live/image/index.m3u8")
            .ok()
            .filter(|r| r.status == 200 && r.text().contains("#EXTINF"))
    });
    assert!(
        playlist.text().starts_with("#EXTM3U"),
        "{}",
        playlist.text()
    );
    let finished = publisher.wait();
    assert!(finished.success(), "ffmpeg: {}", finished.stderr);

    // Written by the image's user, inside its working directory.
    let workdir = root.path().join(
        stage
            .workdir
            .as_deref()
            .expect("WORKDIR")
            .trim_start_matches('/'),
    );
    let written = workdir.join("live/image/index.m3u8");
    let meta = std::fs::metadata(&written).expect("the playlist is in WORKDIR/live");
    let (uid, _) = stage.user.expect("USER");
    assert_eq!(
        meta.uid(),
        uid,
        "the playlist is not owned by the image's user"
    );

    // The player page's hls.js, when player/dist has been built here.
    if workspace_root().join("player/dist/hls.min.js").exists() {
        let js = http::get(server.http, "/player/hls.min.js").expect("GET the hls.js bundle");
        assert_eq!(js.status, 200, "the image's player assets are not served");
    }
}
