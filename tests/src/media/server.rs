//! Spawning the real `oxcast-ingest` binary for a test.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{run_ok, send_signal, terminate};
use crate::wait::poll_every;

/// How long a server may take to print its `listening` lines.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERMed server gets before it is SIGKILLed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Which subcommand to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `run`: RTMP ingest and HTTP serving in one process.
    All,
    /// `rtmp`: ingest only.
    Rtmp,
    /// `http`: serve only.
    Http,
}

impl Role {
    fn subcommand(self) -> &'static str {
        match self {
            Role::All => "run",
            Role::Rtmp => "rtmp",
            Role::Http => "http",
        }
    }

    fn has_rtmp(self) -> bool {
        matches!(self, Role::All | Role::Rtmp)
    }

    fn has_http(self) -> bool {
        matches!(self, Role::All | Role::Http)
    }
}

/// Where the files of one stream live under the HLS root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `<root>/<stream>/index.m3u8`, `<root>/<stream>/<id>.ts`.
    Nested,
    /// `<root>/<stream>.m3u8`, `<root>/<stream>-<id>.ts`.
    Flat,
}

impl Layout {
    /// The playlist file of `stream`.
    pub fn playlist(self, root: &Path, stream: &str) -> PathBuf {
        match self {
            Layout::Nested => root.join(stream).join("index.m3u8"),
            Layout::Flat => root.join(format!("{stream}.m3u8")),
        }
    }

    /// The file a (relative) playlist URI of `stream` refers to.
    pub fn segment(self, root: &Path, stream: &str, uri: &str) -> PathBuf {
        match self {
            Layout::Nested => root.join(stream).join(uri),
            Layout::Flat => root.join(uri),
        }
    }

    /// `.ts` files of `stream` currently on disk, sorted by name.
    pub fn segment_files(self, root: &Path, stream: &str) -> Vec<PathBuf> {
        let (dir, prefix) = match self {
            Layout::Nested => (root.join(stream), String::new()),
            Layout::Flat => (root.to_path_buf(), format!("{stream}-")),
        };
        let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(OsStr::to_str).unwrap_or_default();
                name.ends_with(".ts") && name.starts_with(&prefix)
            })
            .collect();
        out.sort();
        out
    }

    /// The HTTP path of `stream`'s playlist under `prefix` (e.g. `/live`).
    pub fn playlist_url_path(self, prefix: &str, stream: &str) -> String {
        let prefix = prefix.trim_end_matches('/');
        match self {
            Layout::Nested => format!("{prefix}/{stream}/index.m3u8"),
            Layout::Flat => format!("{prefix}/{stream}.m3u8"),
        }
    }

    /// The HTTP path of a segment URI of `stream` under `prefix`.
    pub fn segment_url_path(self, prefix: &str, stream: &str, uri: &str) -> String {
        let prefix = prefix.trim_end_matches('/');
        match self {
            Layout::Nested => format!("{prefix}/{stream}/{uri}"),
            Layout::Flat => format!("{prefix}/{uri}"),
        }
    }
}

/// Every regular file under `dir`, recursively (empty if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Writes `contents` to `path` (creating directories) with its
/// modification time `age` in the past, so `Last-Modified` is sent at once
/// (the server withholds it during the second a file was modified in).
#[track_caller]
pub fn write_aged(path: &Path, contents: &[u8], age: Duration) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, contents).expect("write");
    let f = File::options().write(true).open(path).expect("open");
    f.set_modified(std::time::SystemTime::now() - age)
        .expect("set mtime");
}

/// Modification time of `path` in whole seconds since the epoch.
#[track_caller]
pub fn mtime_secs(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Builds the command line of one server process.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    role: Role,
    root: Option<PathBuf>,
    app: String,
    pass_app: bool,
    layout: Layout,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            role: Role::All,
            root: None,
            app: "app".to_string(),
            pass_app: true,
            layout: Layout::Nested,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }
}

impl ServerBuilder {
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// Use this HLS root (e.g. shared with another server, or reused after a
    /// restart) instead of a fresh temporary directory owned by the server.
    pub fn root(mut self, root: &Path) -> Self {
        self.root = Some(root.to_path_buf());
        self
    }

    /// `--app NAME`.
    pub fn app(mut self, app: &str) -> Self {
        self.app = app.to_string();
        self.pass_app = true;
        self
    }

    /// Pass no `--app`: the app comes from a config file (or the default);
    /// `app` is what the URL helpers will use.
    pub fn app_from_config(mut self, app: &str) -> Self {
        self.app = app.to_string();
        self.pass_app = false;
        self
    }

    /// `--hls-NAME VALUE`, e.g. `hls("fragment", "1s")`.
    pub fn hls(mut self, name: &str, value: &str) -> Self {
        if name == "nested" {
            self.layout = if value == "false" {
                Layout::Flat
            } else {
                Layout::Nested
            };
        }
        self.args.push(format!("--hls-{name}").into());
        self.args.push(value.into());
        self
    }

    /// Tell the helpers which layout to expect (when set via a config file).
    pub fn expect_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Any other argument(s), verbatim.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An environment variable for the process (e.g. `KUBECONFIG`).
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Starts the server and waits for its `listening` lines.
    pub fn spawn(self) -> Result<Server, String> {
        Server::start(self)
    }

    /// Like [`ServerBuilder::spawn`] but panics with the reason.
    #[track_caller]
    pub fn start(self) -> Server {
        match self.spawn() {
            Ok(server) => server,
            Err(e) => panic!("oxcast-ingest did not start: {e}"),
        }
    }
}

/// A running `oxcast-ingest` process. Dropping it stops the process
/// (SIGTERM, then SIGKILL); if the test is panicking, its stderr is printed.
pub struct Server {
    child: Option<Child>,
    /// RTMP listener (roles `run` and `rtmp`).
    pub rtmp: Option<SocketAddr>,
    /// HTTP listener (roles `run` and `http`).
    pub http: Option<SocketAddr>,
    pub app: String,
    pub layout: Layout,
    root: PathBuf,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
    // Dropped last: the log directory and (if owned) the HLS root.
    _logs: TempDir,
    _owned_root: Option<TempDir>,
}

fn parse_listening(line: &str) -> Option<(&str, SocketAddr)> {
    let rest = line.trim().strip_prefix("listening ")?;
    let (kind, addr) = rest.split_once(' ')?;
    Some((kind, addr.trim().parse().ok()?))
}

impl Server {
    /// A builder for the all-in-one role with app `app` on fresh temp root.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// `oxcast-ingest http` serving the HLS tree at `root`, with extra
    /// arguments.
    #[track_caller]
    pub fn http_only(root: &Path, args: &[&str]) -> Server {
        let mut b = Server::builder().role(Role::Http).root(root);
        for a in args {
            b = b.arg(*a);
        }
        b.start()
    }

    fn start(b: ServerBuilder) -> Result<Server, String> {
        let bin = ingest_binary()?;
        let logs = tempfile::Builder::new()
            .prefix("oxcast-server-log-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let (root, owned_root) = match &b.root {
            Some(r) => (r.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("oxcast-hls-")
                    .tempdir()
                    .map_err(|e| format!("temp dir: {e}"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let stderr_path = logs.path().join("stderr.log");
        let stderr = File::create(&stderr_path)
            .map_err(|e| format!("creating {}: {e}", stderr_path.display()))?;

        let mut cmd = Command::new(&bin);
        cmd.arg(b.role.subcommand());
        if b.role.has_rtmp() {
            cmd.args(["--rtmp-listen", "127.0.0.1:0"]);
            if b.pass_app {
                cmd.args(["--app", &b.app]);
            }
        }
        if b.role.has_http() {
            cmd.args(["--http-listen", "127.0.0.1:0"]);
        }
        cmd.arg("--hls-root").arg(&root);
        cmd.args(&b.args);
        cmd.envs(b.envs.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let described = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {described}: {e}"))?;

        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&stdout_lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line.clone());
                    }
                    let _ = tx.send(line); // receiver gone after startup: fine
                }
            });
        }

        let mut server = Server {
            child: Some(child),
            rtmp: None,
            http: None,
            app: b.app.clone(),
            layout: b.layout,
            root,
            stdout_lines,
            stderr_path,
            exit: None,
            _logs: logs,
            _owned_root: owned_root,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while (b.role.has_rtmp() && server.rtmp.is_none())
            || (b.role.has_http() && server.http.is_none())
        {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "no listening line(s) within {STARTUP_TIMEOUT:?} from {described}\nstderr:\n{}",
                    server.stderr()
                ));
            }
            match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
                Ok(line) => match parse_listening(&line) {
                    Some(("rtmp", addr)) => server.rtmp = Some(addr),
                    Some(("http", addr)) => server.http = Some(addr),
                    _ => {}
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = server.try_exit_status() {
                        return Err(format!(
                            "{described} exited ({status}) before listening\nstderr:\n{}",
                            server.stderr()
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.wait_exit(Duration::from_secs(5));
                    return Err(format!(
                        "{described} closed stdout ({status:?}) before listening\nstderr:\n{}",
                        server.stderr()
                    ));
                }
            }
        }
        Ok(server)
    }

    /// The value of one sample (`name{labels}`) of this server's
    /// `/metrics`; None when it is absent or the server does not answer.
    #[track_caller]
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let addr = self.http.expect("this server role has no HTTP listener");
        let body = crate::http::get(addr, "/metrics").ok()?.text();
        crate::http::sample(&body, sample)
    }

    /// The HLS root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rtmp://127.0.0.1:PORT/<app>/<key>`.
    #[track_caller]
    pub fn rtmp_url(&self, key: &str) -> String {
        self.rtmp_url_for_app(&self.app, key)
    }

    /// `rtmp://127.0.0.1:PORT/<app>/<key>` for another app name.
    #[track_caller]
    pub fn rtmp_url_for_app(&self, app: &str, key: &str) -> String {
        let addr = self.rtmp.expect("this server role has no RTMP listener");
        format!("rtmp://{addr}/{app}/{key}")
    }

    /// Path of `stream`'s playlist under this server's root and layout.
    pub fn playlist_path(&self, stream: &str) -> PathBuf {
        self.layout.playlist(&self.root, stream)
    }

    /// File behind a playlist URI of `stream`.
    pub fn segment_path(&self, stream: &str, uri: &str) -> PathBuf {
        self.layout.segment(&self.root, stream, uri)
    }

    /// Everything the server printed to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Everything the server logged to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has exited (without blocking).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit = Some(status);
                }
            }
        }
        self.exit
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_every(Duration::from_millis(20), timeout, || {
            self.try_exit_status()
        })
    }

    /// Sends SIGTERM and waits up to `timeout` for a graceful exit.
    /// Returns the exit status, or `None` if it is still running (it is
    /// then left running; drop kills it).
    pub fn sigterm(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(pid) = self.pid() {
            if self.is_running() {
                send_signal(pid, libc::SIGTERM);
            }
        }
        self.wait_exit(timeout)
    }

    /// Stops the process (SIGTERM, SIGKILL after [`STOP_GRACE`]).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            if self.exit.is_none() {
                self.exit = terminate(child, STOP_GRACE);
            }
        }
        self.exit
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.stderr();
            let tail: String = {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(80)..].join("\n")
            };
            eprintln!(
                "---- oxcast-ingest (root {}) exit {:?}, stderr tail ----\n{tail}\n---- end ----",
                self.root.display(),
                self.exit
            );
        }
    }
}

/// The cargo profile directory the running test binary was built into
/// (`<target>/debug` for `…/debug/deps/media_e2e-HASH`).
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? == "deps" {
        Some(deps.parent()?.to_path_buf())
    } else {
        Some(deps.to_path_buf())
    }
}

/// The cargo target directory of this build.
///
/// `CARGO_TARGET_DIR` when set to an absolute path, else derived from the
/// test executable's location, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        if dir.is_absolute() {
            return dir;
        }
    }
    if let Some(profile) = profile_dir() {
        if let Some(target) = profile.parent() {
            return target.to_path_buf();
        }
    }
    workspace_root().join("target")
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_path_buf()
}

fn build_ingest(profile: &str) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir())
        .args(["build", "-p", "oxcast-ingest", "--bin", "oxcast-ingest"]);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    run_ok(cmd, Duration::from_secs(30 * 60)).map(|_| ())
}

/// Path of the `oxcast-ingest` binary to test.
///
/// `OXCAST_INGEST_BIN` if set; otherwise the binary in the same target
/// directory and profile as this test, brought up to date once per process
/// with `cargo build -p oxcast-ingest --bin oxcast-ingest` (a no-op when
/// fresh) so a stale binary is never tested.
pub fn ingest_binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("OXCAST_INGEST_BIN") {
            return Ok(PathBuf::from(bin));
        }
        let profile_dir = profile_dir().ok_or("cannot locate the test executable")?;
        let profile = profile_dir
            .file_name()
            .and_then(OsStr::to_str)
            .unwrap_or("debug")
            .to_string();
        let bin = target_dir().join(&profile).join("oxcast-ingest");
        let built = build_ingest(&profile);
        match (built, bin.exists()) {
            (Ok(()), true) => Ok(bin),
            (Ok(()), false) => Err(format!(
                "cargo build succeeded but {} is missing",
                bin.display()
            )),
            (Err(e), true) => {
                eprintln!(
                    "warning: rebuilding oxcast-ingest failed, testing the existing {}: {e}",
                    bin.display()
                );
                Ok(bin)
            }
            (Err(e), false) => Err(format!("building oxcast-ingest failed: {e}")),
        }
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        assert_eq!(
            parse_listening("listening rtmp 127.0.0.1:1935"),
            Some(("rtmp", "127.0.0.1:1935".parse().expect("addr")))
        );
        assert_eq!(
            parse_listening("listening http [::1]:80\n").map(|p| p.0),
            Some("http")
        );
        assert_eq!(parse_listening("something else"), None);
    }

    #[test]
    fn layouts() {
        let root = Path::new("/r");
        assert_eq!(
            Layout::Nested.playlist(root, "s"),
            Path::new("/r/s/index.m3u8")
        );
        assert_eq!(Layout::Flat.playlist(root, "s"), Path::new("/r/s.m3u8"));
        assert_eq!(
            Layout::Flat.segment(root, "s", "s-1.ts"),
            Path::new("/r/s-1.ts")
        );
        assert_eq!(
            Layout::Nested.playlist_url_path("/live/", "s"),
            "/live/s/index.m3u8"
        );
    }
}
