//! Support for the Helm chart tests (`tests/tests/chart_*.rs`): the real
//! `helm` binaries (Helm 3 and Helm 4, installed by `tests/tools.sh`),
//! rendering `charts/oxcast` and reading the rendered objects back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use crate::media::process::{run, run_ok};
use crate::media::workspace_root;

/// How long one helm or kubectl invocation may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The chart under test.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/oxcast")
}

/// The example values files the chart is tested with (`charts/oxcast/ci/`),
/// sorted by name.
pub fn values_files() -> Vec<PathBuf> {
    let dir = chart_dir().join("ci");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// `appVersion` of the chart: the default tag of both images.
pub fn app_version() -> String {
    chart_field("appVersion")
}

/// `version` of the chart.
pub fn chart_version() -> String {
    chart_field("version")
}

fn chart_field(key: &str) -> String {
    let path = chart_dir().join("Chart.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let chart: Value = serde_yaml::from_str(&text).expect("Chart.yaml is YAML");
    chart[key]
        .as_str()
        .unwrap_or_else(|| panic!("Chart.yaml has no string {key}"))
        .to_string()
}

/// A Helm major version; the chart must work with both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helm {
    V3,
    V4,
}

impl Helm {
    pub const ALL: [Helm; 2] = [Helm::V3, Helm::V4];

    fn tool(self) -> &'static str {
        match self {
            Helm::V3 => "helm3",
            Helm::V4 => "helm",
        }
    }

    /// Path of the binary, installed by `tests/tools.sh` on first use.
    pub fn path(self) -> PathBuf {
        static V3: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        static V4: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let cell = match self {
            Helm::V3 => &V3,
            Helm::V4 => &V4,
        };
        cell.get_or_init(|| tool_path(self.tool()))
            .clone()
            .unwrap_or_else(|e| panic!("{self:?} is unavailable: {e}"))
    }

    /// `helm` with a private config/cache/data home, so a developer's repos,
    /// plugins and contexts never change what the tests see.
    pub fn command(self) -> Command {
        let mut cmd = Command::new(self.path());
        let home = helm_home();
        cmd.env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT");
        cmd
    }

    /// `helm template RELEASE charts/oxcast -n NAMESPACE ARGS...`: the
    /// rendered manifests, or helm's error output.
    pub fn template(self, release: &str, namespace: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.command();
        cmd.arg("template")
            .arg(release)
            .arg(chart_dir())
            .args(["--namespace", namespace])
            .args(args);
        run_helm(cmd)
    }

    /// [`Helm::template`] that must succeed, parsed.
    pub fn render(self, release: &str, namespace: &str, args: &[&str]) -> Rendered {
        let text = self
            .template(release, namespace, args)
            .unwrap_or_else(|e| panic!("{self:?} template {args:?} failed: {e}"));
        Rendered::parse(&text)
    }
}

fn helm_home() -> PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("oxcast-helm-home-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a helm home for the tests");
        dir
    })
    .clone()
}

/// Runs a helm command: stdout on success, stderr (and stdout) on failure.
pub fn run_helm(cmd: Command) -> Result<String, String> {
    let done = run(cmd, COMMAND_TIMEOUT)?;
    if done.success() {
        Ok(done.stdout)
    } else {
        Err(format!("{}{}", done.stderr, done.stdout))
    }
}

/// Path of a tool installed by `tests/tools.sh` (installing it if needed).
pub fn tool_path(name: &str) -> Result<PathBuf, String> {
    let mut cmd = Command::new(workspace_root().join("tests/tools.sh"));
    cmd.args(["path", name]);
    let out = run_ok(cmd, Duration::from_secs(20 * 60))?;
    let path = PathBuf::from(out.trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("tests/tools.sh printed {path:?}, which is no file"))
    }
}

/// The objects of a rendered chart.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub objects: Vec<Value>,
}

impl Rendered {
    /// Parses a multi-document YAML stream, skipping empty documents.
    pub fn parse(text: &str) -> Rendered {
        let objects = serde_yaml::Deserializer::from_str(text)
            .map(|doc| {
                Value::deserialize(doc)
                    .unwrap_or_else(|e| panic!("helm rendered invalid YAML: {e}"))
            })
            .filter(|v| !v.is_null())
            .collect();
        Rendered { objects }
    }

    /// `kind/name` (and `namespace` when set) of every object, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .objects
            .iter()
            .map(|o| {
                let ns = o["metadata"]["namespace"].as_str();
                match ns {
                    Some(ns) => format!("{}/{} -n {ns}", kind(o), name(o)),
                    None => format!("{}/{}", kind(o), name(o)),
                }
            })
            .collect();
        ids.sort();
        ids
    }

    /// Every object of `kind`.
    pub fn of_kind<'a>(&'a self, wanted: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let wanted = wanted.to_string();
        self.objects.iter().filter(move |o| kind(o) == wanted)
    }

    /// The only object of `kind`; panics when there is none or several.
    pub fn one(&self, wanted: &str) -> &Value {
        let all: Vec<&Value> = self.of_kind(wanted).collect();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one {wanted}, rendered: {:?}",
            self.ids()
        );
        all[0]
    }

    /// Whether any object is of `kind`.
    pub fn has(&self, wanted: &str) -> bool {
        self.of_kind(wanted).next().is_some()
    }
}

/// `kind` of an object.
pub fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or("")
}

/// `metadata.name` of an object.
pub fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

/// The strings of a YAML sequence.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The `value` of environment variable `name` in a container.
pub fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(var))
        .and_then(|e| e["value"].as_str())
}

/// A file of the chart, e.g. `values.schema.json`.
pub fn chart_file(rel: impl AsRef<Path>) -> PathBuf {
    chart_dir().join(rel)
}

/// Checks the NOTES in `helm install` output: how to create a
/// LiveApplication, wait for it, read its RTMP URL, publish and play.
/// `app_namespace` is where the NOTES tell to create it ("" for no `-n`).
pub fn assert_notes_explain_the_workflow(install_output: &str, release: &str, app_namespace: &str) {
    let notes = install_output
        .split("NOTES:")
        .nth(1)
        .unwrap_or_else(|| panic!("helm printed no NOTES:\n{install_output}"));
    let ns = if app_namespace.is_empty() {
        String::new()
    } else {
        format!(" -n {app_namespace}")
    };
    for needle in [
        "examples/minimal.yaml".to_string(),
        "kind: LiveApplication".to_string(),
        format!("kubectl{ns} wait liveapp/live --for=condition=Ready"),
        format!("kubectl{ns} get liveapp live "),
        "jsonpath='{.status.rtmpUrl}'".to_string(),
        "ffmpeg -re".to_string(),
        "/live/test/index.m3u8".to_string(),
        format!("rollout status deployment/{release}-oxcast"),
    ] {
        assert!(notes.contains(&needle), "NOTES lack {needle:?}:\n{notes}");
    }
}

/// Path of the `oxcast-operator` binary, built once per test process with
/// `cargo build -p oxcast-operator` (a no-op when fresh) in this test's
/// target directory and profile. `OXCAST_OPERATOR_BIN` overrides it.
pub fn operator_binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("OXCAST_OPERATOR_BIN") {
            return Ok(PathBuf::from(bin));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // <target>/<profile>/deps/<test-binary>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("cannot locate the test executable's profile directory")?;
        let profile = profile_dir
            .file_name()
            .and_then(|p| p.to_str())
            .unwrap_or("debug")
            .to_string();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", crate::media::target_dir())
            .args(["build", "-p", "oxcast-operator", "--bin", "oxcast-operator"]);
        if profile == "release" {
            cmd.arg("--release");
        } else if profile != "debug" {
            cmd.args(["--profile", &profile]);
        }
        run_ok(cmd, Duration::from_secs(30 * 60))?;
        let bin = crate::media::target_dir()
            .join(&profile)
            .join("oxcast-operator");
        if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "cargo build succeeded but {} is missing",
                bin.display()
            ))
        }
    })
    .clone()
}
