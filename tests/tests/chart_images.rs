//! The container images without a container engine: the binaries are built
//! by `docker/build-static.sh` (what `docker/Dockerfile` runs), each image's
//! root filesystem is assembled from the Dockerfile's own `COPY`
//! instructions into an otherwise empty directory, and the binaries run
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
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use oxcast_tests::media::process::{run, run_ok};
use oxcast_tests::media::{self, http, workspace_root, Fixture, Publisher};

const TIMEOUT: Duration = Duration::from_secs(30);

/// One final stage of docker/Dockerfile.
#[derive(Debug, Default)]
struct Stage {
    /// (source stage, path in that stage, path in the image)
    copies: Vec<(String, String, String)>,
    user: Option<(u32, u32)>,
    workdir: Option<String>,
    env: BTreeMap<String, String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    labels: String,
}

/// Reads the final stages of the Dockerfile, joining continuation lines.
fn dockerfile_stages() -> BTreeMap<String, Stage> {
    let text = std::fs::read_to_string(workspace_root().join("docker/Dockerfile"))
        .expect("read docker/Dockerfile");
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.is_empty() {
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    let json_list = |s: &str| -> Vec<String> {
        serde_json::from_str(s.trim())
            .unwrap_or_else(|e| panic!("exec form expected, got {s}: {e}"))
    };
    let mut stages = BTreeMap::new();
    let mut name: Option<String> = None;
    let mut stage = Stage::default();
    for line in lines {
        let (instr, rest) = line.split_once(' ').unwrap_or((&line, ""));
        match instr.to_ascii_uppercase().as_str() {
            "FROM" => {
                if let Some(n) = name.take() {
                    stages.insert(n, std::mem::take(&mut stage));
                }
                stage = Stage::default();
                name = rest
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .find(|w| w[0].eq_ignore_ascii_case("AS"))
                    .map(|w| w[1].to_string());
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let from = words
                    .iter()
                    .find_map(|w| w.strip_prefix("--from="))
                    .unwrap_or("context")
                    .to_string();
                let paths: Vec<&str> = words
                    .iter()
                    .filter(|w| !w.starts_with("--"))
                    .copied()
                    .collect();
                if let [src, dest] = paths.as_slice() {
                    stage.copies.push((from, src.to_string(), dest.to_string()));
                }
            }
            "USER" => {
                let (u, g) = rest.trim().split_once(':').expect("USER uid:gid");
                stage.user = Some((
                    u.parse().expect("numeric uid"),
                    g.parse().expect("numeric gid"),
                ));
            }
            "WORKDIR" => stage.workdir = Some(rest.trim().to_string()),
            "ENV" => {
                let (k, v) = rest.trim().split_once('=').expect("ENV KEY=value");
                stage.env.insert(k.to_string(), v.to_string());
            }
            "ENTRYPOINT" => stage.entrypoint = json_list(rest),
            "CMD" => stage.cmd = json_list(rest),
            "LABEL" => stage.labels.push_str(rest),
            _ => {}
        }
    }
    if let Some(n) = name {
        stages.insert(n, stage);
    }
    stages
}

/// `docker/build-static.sh` output, built once per test binary.
fn static_build() -> &'static Path {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = tempfile::Builder::new()
            .prefix("oxcast-static-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let mut cmd = Command::new(workspace_root().join("docker/build-static.sh"));
        // The work tree's Cargo.lock may be mid-update while others edit
        // manifests; --locked is for the Dockerfile's clean checkout.
        cmd.arg(&out)
            .env("CARGO_TARGET_DIR", media::target_dir())
            .env("OXCAST_BUILD_LOCKED", "0");
        run_ok(cmd, Duration::from_secs(40 * 60))
            .unwrap_or_else(|e| panic!("docker/build-static.sh failed: {e}"));
        out
    })
}

/// The root filesystem of image `stage`: only what its COPY lines bring
/// in, from the static build (stage `build`) or the player build (stage
/// `player`, when `player/dist` has been built here).
fn image_root(stage: &Stage) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("oxcast-image-root-")
        .tempdir()
        .expect("temp dir");
    for (from, src, dest) in &stage.copies {
        let source = match from.as_str() {
            "build" => static_build().join(src.strip_prefix("/out/").expect("a /out path")),
            "player" => {
                assert_eq!(src, "/player/dist", "the player stage's output");
                workspace_root().join("player/dist")
            }
            other => panic!("COPY from unexpected stage {other}"),
        };
        let target = root.path().join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        if source.exists() {
            copy_tree(&source, &target);
        } else {
            assert_eq!(
                from,
                "player",
                "{} is missing from the static build",
                source.display()
            );
            std::fs::create_dir_all(&target).expect("mkdir");
        }
    }
    // The image's user owns its working directory (COPY --chown).
    if let (Some((uid, gid)), Some(workdir)) = (stage.user, &stage.workdir) {
        let dir = root.path().join(workdir.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("workdir");
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the workdir");
    }
    // distroless has a world-writable /tmp; nothing else is added.
    root
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("dir entry");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
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

/// Commands run as the image would; `None` (with a note) without root.
fn stages_or_skip() -> Option<BTreeMap<String, Stage>> {
    if !is_root() {
        eprintln!("skipped: chroot needs root (CI and tests/run.sh run as root)");
        return None;
    }
    Some(dockerfile_stages())
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
            assert!(stage.labels.contains(label), "{name} lacks {label}");
        }
        assert!(
            stage.labels.contains(&format!("\"{name}\"")),
            "{name}: title"
        );
        assert!(
            stage.copies.iter().all(|(from, _, _)| from != "context"),
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
        .any(|(from, _, dest)| from == "player" && dest == "/usr/share/oxcast/player"));
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
    let Some(stages) = stages_or_skip() else {
        return;
    };
    let stage = &stages["oxcast-operator"];
    let root = image_root(stage);
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
    let Some(stages) = stages_or_skip() else {
        return;
    };
    let stage = &stages["oxcast-ingest"];
    let root = image_root(stage);

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

    if !media::have_ffmpeg() {
        panic!("ffmpeg is needed (tests/run.sh installs it)");
    }
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
