//! Child processes of the control plane, and the guarantees that none of them
//! (nor their scratch directory) outlives the test binary.
//!
//! Three layers, because a test binary can end in three ways:
//! - normally or through a failed test (libtest calls `exit`): an `atexit`
//!   hook kills the process group and removes the run directory;
//! - killed or interrupted (Ctrl-C, SIGKILL, a CI timeout): every child was
//!   spawned with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when
//!   the test process dies; the run directory is left behind and
//! - the next run's janitor removes run directories whose owner pid is gone.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
//! the process, so children are spawned only from the cluster's own
//! long-lived supervisor thread (see `super::shared`), never from a test thread.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, Once};

use super::Error;

/// Bytes of a process log quoted in an error message.
const LOG_TAIL_BYTES: u64 = 4096;

/// A loopback TCP port that was free a moment ago.
///
/// The port is released before the server binds it, so another process could
/// take it in between; the kernel hands out ephemeral ports round-robin, which
/// makes that unlikely, and a collision fails startup loudly rather than
/// silently sharing a server.
pub(crate) fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(Error::io("bind a free loopback port"))?;
    let port = listener
        .local_addr()
        .map_err(Error::io("read the address of a free loopback port"))?
        .port();
    Ok(port)
}

/// One running child with its log file.
struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The processes of one control plane, all in one process group.
pub(crate) struct Processes {
    log_dir: PathBuf,
    /// Process group of every child: the pid of the first one spawned.
    pgid: Option<i32>,
    children: Vec<Managed>,
}

impl Processes {
    pub(crate) fn new(log_dir: PathBuf) -> Result<Self, Error> {
        fs::create_dir_all(&log_dir)
            .map_err(Error::io_path("create the log directory", &log_dir))?;
        Ok(Self {
            log_dir,
            pgid: None,
            children: Vec::new(),
        })
    }

    /// Starts `program args…` with stdout and stderr going to `<log_dir>/<name>.log`.
    pub(crate) fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> Result<(), Error> {
        let log = self.log_dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(Error::io_path("create a process log", &log))?;
        let err = out
            .try_clone()
            .map_err(Error::io_path("duplicate a process log handle", &log))?;

        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Our own group: a terminal's Ctrl-C goes to the test binary only,
            // and teardown can signal every child (and any grandchild) at once.
            .process_group(self.pgid.unwrap_or(0));
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and calls
        // only async-signal-safe syscalls (prctl, getppid); it does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl; then no
                // signal will ever come, so refuse to start.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        tracing::debug!(name, program = %program.display(), ?args, "spawning control-plane process");
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            name: name.to_string(),
            program: program.to_path_buf(),
            source,
        })?;
        let pid = child.id() as i32;
        if self.pgid.is_none() {
            self.pgid = Some(pid);
        }
        register_for_exit_cleanup(ExitCleanup::Pid(pid));
        self.children.push(Managed {
            name: name.to_string(),
            child,
            log,
        });
        Ok(())
    }

    /// Fails with the process's log tail when any child has exited: a control
    /// plane with a dead component is broken, and waiting on it would only
    /// turn a clear error into a time-out.
    pub(crate) fn check_running(&mut self) -> Result<(), Error> {
        for m in &mut self.children {
            if let Some(status) = m
                .child
                .try_wait()
                .map_err(Error::io("poll a control-plane process"))?
            {
                return Err(Error::ProcessExited {
                    name: m.name.clone(),
                    status,
                    log: m.log.clone(),
                    log_tail: log_tail(&m.log),
                });
            }
        }
        Ok(())
    }

    /// Process id of the first child spawned (the group leader), if any.
    pub(crate) fn first_pid(&self) -> Option<u32> {
        self.children.first().map(|m| m.child.id())
    }

    /// Process id of the child spawned last.
    pub(crate) fn last_pid(&self) -> Option<u32> {
        self.children.last().map(|m| m.child.id())
    }

    /// Kills every child and reaps it. Used when startup fails half-way.
    pub(crate) fn kill_all(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: plain syscall; a negative pid addresses the process group.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        for m in &mut self.children {
            let _ = m.child.kill();
            let _ = m.child.wait();
            // Reaped: the pid may be reused by an unrelated process now, so
            // the exit hook must not signal it.
            forget_pid(m.child.id() as i32);
        }
        self.children.clear();
    }
}

/// Human-readable description of how a process ended.
pub(crate) fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// The last few KiB of a log file, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// What the `atexit` hook must undo.
pub(crate) enum ExitCleanup {
    /// A child process to kill and reap (and, through its group, its peers).
    Pid(i32),
    /// A directory to delete once the processes using it are dead.
    Dir(PathBuf),
    /// Teardown code that must run before the processes are killed (the real
    /// node's: its containers, shims and cgroups).
    Hook(Box<dyn FnOnce() + Send>),
}

/// Everything registered for the `atexit` hook, in registration order.
static EXIT_CLEANUP: Mutex<Vec<ExitCleanup>> = Mutex::new(Vec::new());
static EXIT_HOOK: Once = Once::new();

/// Records something to undo when the test binary exits, installing the
/// `atexit` hook on first use.
///
/// The shared control plane lives in a `static`, and statics are never
/// dropped, so `Drop` cannot be relied on for teardown; libtest ends with
/// `std::process::exit`, which does run `atexit` hooks.
pub(crate) fn register_for_exit_cleanup(item: ExitCleanup) {
    EXIT_HOOK.call_once(|| {
        // SAFETY: registering a plain `extern "C"` function without arguments.
        unsafe {
            libc::atexit(run_exit_cleanup);
        }
    });
    match EXIT_CLEANUP.lock() {
        Ok(mut items) => items.push(item),
        Err(poisoned) => poisoned.into_inner().push(item),
    }
}

pub(crate) fn forget_pid(pid: i32) {
    let mut items = match EXIT_CLEANUP.lock() {
        Ok(items) => items,
        Err(poisoned) => poisoned.into_inner(),
    };
    items.retain(|item| !matches!(item, ExitCleanup::Pid(p) if *p == pid));
}

extern "C" fn run_exit_cleanup() {
    // Never block or panic at exit: if the lock is busy, the death signal and
    // the next run's janitor still clean up.
    let Ok(mut guard) = EXIT_CLEANUP.try_lock() else {
        return;
    };
    let mut items = std::mem::take(&mut *guard);
    // Hooks may call `forget_pid`, which takes the lock.
    drop(guard);
    for item in &mut items {
        if let ExitCleanup::Hook(hook) = item {
            let hook = std::mem::replace(hook, Box::new(|| {}));
            hook();
        }
    }
    let mut pids = Vec::new();
    for item in &items {
        if let ExitCleanup::Pid(pid) = item {
            pids.push(*pid);
            // SAFETY: plain syscalls on our own children and their group.
            unsafe {
                libc::kill(-*pid, libc::SIGKILL);
                libc::kill(*pid, libc::SIGKILL);
            }
        }
    }
    for pid in pids {
        let mut status = 0;
        // SAFETY: reaping our own child; it was just sent SIGKILL, so this
        // returns promptly (or with ECHILD if it was reaped already).
        unsafe {
            libc::waitpid(pid, &mut status, 0);
        }
    }
    for item in items {
        if let ExitCleanup::Dir(dir) = item {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Whether a process with this pid exists (it may be another program that
/// reused the pid; callers treat "alive" as "leave it alone").
fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A file in a run directory that asks the janitor to leave it alone
/// (written when the developer asked to keep the directory for debugging).
pub(crate) const KEEP_MARKER: &str = "KEEP";

/// Removes run directories under `root` left by test binaries that died
/// without running their exit hook. Directory names start with the owner's pid.
pub(crate) fn remove_stale_runs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32
            && !pid_alive(pid)
            && !entry.path().join(KEEP_MARKER).exists()
        {
            tracing::info!(dir = %entry.path().display(), pid, "removing a stale control-plane run directory");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
