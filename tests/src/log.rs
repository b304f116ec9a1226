//! The tests' one tracing setup.
//!
//! - [`init_tracing`]: in a test, once per process (later calls do nothing):
//!   events go through the test harness's capture, so they show with a
//!   failing test's output only, filtered by `RUST_LOG` (nothing when unset).
//! - [`init_cli_tracing`]: in the support binaries (`oxcast-test-cluster`,
//!   `rtmp-load`, `operator-scale`): to stderr, `RUST_LOG` or their default.

use tracing_subscriber::EnvFilter;

/// Routes `tracing` events of a test process to the test writer.
pub fn init_tracing() {
    // Err means a subscriber is already installed: by an earlier test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Logs of a support binary to stderr, filtered by `RUST_LOG` or else by
/// `default_filter` (an `EnvFilter` directive such as `"info"`).
pub fn init_cli_tracing(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
}
