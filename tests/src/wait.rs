//! The tests' one poll helper: wait for a condition, with a time-out and a
//! description of what was awaited, instead of sleeping a fixed time or
//! writing another loop.
//!
//! - Blocking tests (a real server, ffmpeg, files): [`wait_for`] and
//!   [`wait_until`] (panic with what was awaited), [`poll_until`] (returns
//!   `None`), [`observe_for`] (a property that must hold throughout).
//! - Async code (the cluster harness, kube clients): [`eventually`], which
//!   backs off from 50 ms to 500 ms and reports the last error on time-out.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Re-evaluates `check` until it returns `Some`, or `timeout` has passed.
///
/// Returns `None` on timeout. The condition is always evaluated at least once
/// and once more right at the deadline, so a condition that holds at the end
/// is never reported as a timeout.
pub fn poll_until<T>(timeout: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(POLL_INTERVAL, timeout, check)
}

/// [`poll_until`], re-checking every `interval` (shorter for what is cheap
/// to check and quick to happen, such as a child process exiting).
pub fn poll_every<T>(
    interval: Duration,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}

/// Like [`poll_until`], but panics with `what` (and how long it waited) on timeout.
///
/// Meant for tests: the panic message says which condition never came true.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    match poll_until(timeout, check) {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting for: {what}"),
    }
}

/// Waits for a boolean condition; panics with `what` on timeout.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    wait_for(what, timeout, || check().then_some(()))
}

/// Calls `observe` repeatedly for `duration` (every [`POLL_INTERVAL`]).
///
/// For properties that must hold *throughout* a period (for example "every
/// playlist snapshot respects the window bound"), where there is nothing to
/// wait for but time itself.
pub fn observe_for(duration: Duration, mut observe: impl FnMut()) {
    let deadline = Instant::now() + duration;
    loop {
        observe();
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// [`eventually`] gave up: what it waited for, for how long, and the last
/// error the probe returned, if any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {}", self.described())]
pub struct TimedOut {
    pub what: String,
    pub timeout: Duration,
    pub last_error: Option<String>,
}

impl TimedOut {
    /// What was awaited, with the last error if there was one.
    pub fn described(&self) -> String {
        match &self.last_error {
            Some(e) => format!("{} (last error: {e})", self.what),
            None => self.what.clone(),
        }
    }
}

/// First and longest delay between two probes of [`eventually`].
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(500));

/// Re-runs the async `probe` until it returns `Ok(Some(value))`, backing off
/// from 50 ms to 500 ms between tries, for conditions that cannot be
/// watched. An `Err` counts as "not yet" (an API server still starting, an
/// RBAC change that takes a moment to apply) and the last one is reported
/// on time-out. A condition that must stop the wait early is a value: make
/// `T` a `Result` and return `Ok(Some(Err(..)))`.
pub async fn eventually<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T, TimedOut>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = BACKOFF.0;
    loop {
        let last_error = match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        };
        if Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                timeout,
                last_error,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(BACKOFF.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_until_returns_value_once_condition_holds() {
        let mut calls = 0;
        let got = poll_until(Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
    }

    #[test]
    fn poll_until_times_out() {
        let start = Instant::now();
        let got: Option<()> = poll_until(Duration::from_millis(120), || None);
        assert!(got.is_none());
        assert!(start.elapsed() >= Duration::from_millis(120));
    }

    #[tokio::test]
    async fn eventually_returns_the_value_and_reports_the_last_error() {
        let mut calls = 0;
        let got = eventually("three calls", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { Ok::<_, String>((n == 3).then_some(n)) }
        })
        .await;
        assert_eq!(got, Ok(3));

        let err = eventually("never", Duration::from_millis(120), || async {
            Err::<Option<()>, _>("refused")
        })
        .await
        .expect_err("times out");
        assert_eq!(err.last_error.as_deref(), Some("refused"));
        assert_eq!(
            err.to_string(),
            "timed out after 120ms waiting for never (last error: refused)"
        );
    }
}
