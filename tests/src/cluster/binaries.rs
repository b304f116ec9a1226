//! Finding the control-plane binaries built by `tests/cluster/build.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Error;

/// Every binary the harness starts or offers to tests.
pub const REQUIRED: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
];

/// kwok's Stage definitions, collected by build.sh next to the binaries.
pub const KWOK_STAGES: &str = "kwok-stages.yaml";

/// Environment variable naming a directory with prebuilt binaries; skips build.sh.
pub const BIN_DIR_ENV: &str = "OXCAST_K8S_BIN_DIR";

/// `tests/cluster/build.sh` in this checkout.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cluster")
        .join("build.sh")
}

/// A directory holding all [`REQUIRED`] binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// Uses `$OXCAST_K8S_BIN_DIR` when set; otherwise runs `build.sh`, which
    /// returns at once when the pinned versions are built and builds them
    /// from the Go module proxy when not (the first run on a machine takes a
    /// while; its progress goes to this process's stderr), so a plain
    /// `cargo test` works on a fresh machine.
    pub fn locate() -> Result<Self, Error> {
        let dir = match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => run_build_script()?,
        };
        let bins = Self { dir };
        for name in REQUIRED.iter().chain(&[KWOK_STAGES]) {
            let path = bins.path(name);
            if !path.is_file() {
                return Err(Error::MissingBinary { path });
            }
        }
        Ok(bins)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The Stages kwok runs with (see build.sh).
    pub fn kwok_stages(&self) -> PathBuf {
        self.dir.join(KWOK_STAGES)
    }
}

fn run_build_script() -> Result<PathBuf, Error> {
    let script = build_script();
    tracing::info!(script = %script.display(), "locating control-plane binaries (builds them on first use)");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(Error::io_path(
            "run the control-plane build script",
            &script,
        ))?;
    if !output.status.success() {
        return Err(Error::BuildScript {
            script,
            status: output.status,
        });
    }
    // Contract with build.sh: the bin directory is its only stdout line.
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().map(str::trim).rfind(|l| !l.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Err(Error::BuildScript {
            script,
            status: output.status,
        }),
    }
}
