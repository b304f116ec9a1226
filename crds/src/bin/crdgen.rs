//! Prints the oxcast CustomResourceDefinitions as YAML on stdout.
//!
//! The checked-in manifests are regenerated with
//!
//! ```sh
//! cargo run -p oxcast-crds --bin crdgen > crds/yaml/liveapplication.yaml
//! cargo run -p oxcast-crds --bin crdgen -- --chart > charts/oxcast/templates/crds/liveapplication.yaml
//! ```
//!
//! `--chart` wraps the same CRD in the Helm guards the chart needs
//! (`crds.enabled`, `crds.keep`). Unit tests in `oxcast-crds` fail when either
//! copy drifts from the Rust types.

use std::io::Write;
use std::process::ExitCode;

use oxcast_crds::live_application::{chart_crd_yaml, crd_yaml};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let render = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => crd_yaml,
        ["--chart"] => chart_crd_yaml,
        _ => {
            eprintln!("usage: crdgen [--chart]");
            return ExitCode::from(2);
        }
    };
    let yaml = match render() {
        Ok(yaml) => yaml,
        Err(err) => {
            eprintln!("crdgen: cannot render the LiveApplication CRD: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout
        .write_all(yaml.as_bytes())
        .and_then(|()| stdout.flush())
    {
        eprintln!("crdgen: cannot write to stdout: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
