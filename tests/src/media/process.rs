//! Running external tools (ffmpeg, ffprobe, cargo) with a time limit.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::wait::poll_every;

/// How often a child process is checked for having exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// What a finished (or killed) command left behind.
#[derive(Debug, Clone)]
pub struct Finished {
    /// `None` if it was killed because it overran its time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// Exited on its own with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Ran past its time limit and was killed.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
}

fn drain<R: Read + Send + 'static>(reader: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = reader {
            // A read error only truncates what we report; nothing to recover.
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A started command whose output is being collected.
pub struct Running {
    child: Child,
    started: Instant,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
    what: String,
}

impl Running {
    /// Starts `cmd` with stdin closed and stdout/stderr collected.
    pub fn spawn(mut cmd: Command) -> Result<Running, String> {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        let out = Some(drain(child.stdout.take()));
        let err = Some(drain(child.stderr.take()));
        Ok(Running {
            child,
            started: Instant::now(),
            out,
            err,
            what,
        })
    }

    /// The OS process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// Has it exited? (Does not reap output.)
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits up to `timeout` for the process to exit; kills it after that.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        // `Some(None)`: try_wait failed, give up on the process at once.
        let exited = poll_every(EXIT_POLL, timeout, || match self.child.try_wait() {
            Ok(Some(status)) => Some(Some(status)),
            Ok(None) => None,
            Err(_) => Some(None),
        });
        let status = match exited.flatten() {
            Some(status) => Some(status),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                None
            }
        };
        self.collect(status)
    }

    /// Stops the process now: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(mut self, grace: Duration) -> Finished {
        terminate(&mut self.child, grace);
        let status = self.child.try_wait().ok().flatten();
        self.collect(status)
    }

    fn collect(&mut self, status: Option<ExitStatus>) -> Finished {
        let stdout = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Finished {
            status,
            stdout,
            stderr,
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            terminate(&mut self.child, Duration::from_secs(2));
        }
    }
}

/// Sends SIGTERM, waits up to `grace` for exit, then SIGKILLs. Reaps the child.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    send_signal(child.id(), libc::SIGTERM);
    if let Some(status) = poll_every(EXIT_POLL, grace, || child.try_wait().ok().flatten()) {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Sends `signal` to process `pid` (ignoring errors: it may have exited).
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; pid is our own child.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Runs `cmd` to completion (or kills it after `timeout`).
pub fn run(cmd: Command, timeout: Duration) -> Result<Finished, String> {
    Ok(Running::spawn(cmd)?.wait(timeout))
}

/// Runs `cmd` and requires exit status 0; returns stdout.
pub fn run_ok(cmd: Command, timeout: Duration) -> Result<String, String> {
    let running = Running::spawn(cmd)?;
    let what = running.describe().to_string();
    let done = running.wait(timeout);
    if done.success() {
        Ok(done.stdout)
    } else if done.timed_out() {
        Err(format!(
            "{what} timed out after {timeout:?}\n{}",
            done.stderr
        ))
    } else {
        Err(format!(
            "{what} failed ({:?}):\n{}",
            done.status, done.stderr
        ))
    }
}

/// Is `program` on PATH and runnable?
pub fn have_tool(program: &str) -> bool {
    let mut cmd = Command::new(program);
    cmd.arg("-version");
    run(cmd, Duration::from_secs(10)).is_ok_and(|f| f.success())
}
