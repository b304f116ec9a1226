//! Prints the oxcast CustomResourceDefinitions as YAML on stdout.
//!
//! The checked-in manifest is regenerated with
//! `cargo run -p oxcast-crds --bin crdgen > crds/yaml/liveapplication.yaml`;
//! a unit test in `oxcast-crds` fails when it drifts from the Rust types.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match oxcast_crds::live_application::crd_yaml() {
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
