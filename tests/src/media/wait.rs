//! Polling helpers: wait for a condition instead of sleeping a fixed time.

use std::time::{Duration, Instant};

/// How often a condition is re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Re-evaluates `check` until it returns `Some`, or `timeout` has passed.
///
/// Returns `None` on timeout. The condition is always evaluated at least once
/// and once more right at the deadline, so a condition that holds at the end
/// is never reported as a timeout.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
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
}
