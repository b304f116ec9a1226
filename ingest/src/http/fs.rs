//! The file system side of serving: a directory handle that requests are
//! resolved against, a cheap `stat` for the hot path, and an `open` that
//! the kernel confines to the directory.
//!
//! Confinement is done by the kernel, not by string checks alone:
//! `openat2(RESOLVE_BENEATH)` fails for any path — including one through a
//! symlink placed inside the root — that would resolve outside it. Where
//! `openat2` is unavailable (old kernels, seccomp profiles that refuse it),
//! the path is walked one component at a time with `O_NOFOLLOW`, which
//! refuses every symlink. The `stat` used for cache validation may follow
//! a symlink out of the root, but it only ever selects bytes that were read
//! through the confined open earlier (see `cache`), so it reveals nothing.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::conditional::Validators;

/// Identity of one version of a file: a different inode (a file replaced
/// by rename), modification time or length is a different version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: i64,
    pub len: u64,
}

impl FileId {
    fn from_stat(st: &libc::stat) -> Self {
        Self {
            dev: st.st_dev,
            ino: st.st_ino,
            mtime_secs: st.st_mtime,
            mtime_nanos: st.st_mtime_nsec,
            len: u64::try_from(st.st_size).unwrap_or(0),
        }
    }

    pub fn from_metadata(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            mtime_secs: m.mtime(),
            mtime_nanos: m.mtime_nsec(),
            len: m.len(),
        }
    }

    /// The validators clients see. The ETag leaves out device and inode so
    /// that HTTP pods sharing one volume agree on it.
    pub fn validators(&self) -> Validators {
        Validators {
            etag: format!(
                "\"{:x}.{:x}-{:x}\"",
                self.mtime_secs, self.mtime_nanos, self.len
            ),
            mtime_secs: self.mtime_secs,
        }
    }
}

/// Longest relative path handed to the kernel; matches `path::MAX_PATH_LEN`
/// with room for the terminating NUL.
const STAT_BUF: usize = super::path::MAX_PATH_LEN + 1;

/// A served directory, opened once and re-opened if it is replaced.
#[derive(Debug)]
pub struct RootDir {
    path: PathBuf,
    fd: RwLock<Option<Arc<OwnedFd>>>,
}

/// Set once `openat2` turned out to be unavailable here.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: `c` is a valid NUL-terminated string; the returned fd is owned.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RootDir {
    /// A root at `path`; opening is attempted now and again on use, so a
    /// volume that appears later is picked up.
    pub fn new(path: PathBuf) -> Self {
        let fd = open_dir(&path).ok().map(Arc::new);
        Self {
            path,
            fd: RwLock::new(fd),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn handle(&self) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.fd.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(fd.clone());
        }
        let fd = Arc::new(open_dir(&self.path)?);
        *self.fd.write().unwrap_or_else(|p| p.into_inner()) = Some(fd.clone());
        Ok(fd)
    }

    /// Re-opens the directory if the path now names another one (the root
    /// was deleted and re-created, a volume was re-mounted). Called from the
    /// readiness probe, not per request.
    pub fn refresh(&self) -> io::Result<()> {
        let on_disk = std::fs::metadata(&self.path)?;
        let current = self.handle()?;
        let mut st = empty_stat();
        // SAFETY: `current` is an open fd and `st` is a valid out-pointer.
        cvt(unsafe { libc::fstat(current.as_raw_fd(), &mut st) })?;
        if st.st_ino != on_disk.ino() || st.st_dev != on_disk.dev() {
            tracing::info!(root = %self.path.display(), "served directory was replaced; re-opening it");
            *self.fd.write().unwrap_or_else(|p| p.into_inner()) =
                Some(Arc::new(open_dir(&self.path)?));
        }
        Ok(())
    }

    /// `stat` of `rel` (follows symlinks; see the module docs for why that
    /// is safe). `Ok(None)` if it is not a regular file.
    ///
    /// This runs on the async worker thread, like nginx's own blocking
    /// `open`/`stat` on its event loop: on a local or page-cached file
    /// system it costs about a microsecond, far less than a hop to the
    /// blocking pool.
    pub fn stat(&self, rel: &str) -> io::Result<Option<FileId>> {
        let fd = self.handle()?;
        let mut buf = [0u8; STAT_BUF];
        let bytes = rel.as_bytes();
        if bytes.len() >= STAT_BUF || bytes.contains(&0) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        buf[..bytes.len()].copy_from_slice(bytes);
        let mut st = empty_stat();
        // SAFETY: `buf` is NUL-terminated (zeroed beyond `bytes`), `st` is a
        // valid out-pointer and `fd` an open directory.
        cvt(unsafe {
            libc::fstatat(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                &mut st,
                libc::AT_NO_AUTOMOUNT,
            )
        })?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(None);
        }
        Ok(Some(FileId::from_stat(&st)))
    }

    /// Opens `rel` for reading, confined to the root, and returns it with
    /// its identity. Not a regular file → `NotFound`.
    pub fn open(&self, rel: &str) -> io::Result<(File, FileId)> {
        let dir = self.handle()?;
        let c = CString::new(rel)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let file = if NO_OPENAT2.load(Ordering::Relaxed) {
            open_walk(&dir, rel)?
        } else {
            match open_beneath(&dir, &c) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                    tracing::info!(error = %e, "openat2 unavailable; serving without following symlinks");
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    open_walk(&dir, rel)?
                }
                other => other?,
            }
        };
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok((file, FileId::from_metadata(&meta)))
    }
}

fn empty_stat() -> libc::stat {
    // SAFETY: `stat` is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Flags for opening a file to serve: never become a controlling terminal,
/// never block on a FIFO.
const READ_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

/// `openat2(dir, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
fn open_beneath(dir: &OwnedFd, rel: &std::ffi::CStr) -> io::Result<File> {
    let mut how: libc::open_how = {
        // SAFETY: `open_how` is plain old data; zero means "no options".
        unsafe { std::mem::zeroed() }
    };
    how.flags = READ_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the pointers are valid for the call and the size matches the
    // struct passed; the returned fd is owned.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if ret < 0 {
        return Err(map_escape(io::Error::last_os_error()));
    }
    let fd = libc::c_int::try_from(ret).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: `fd` was just returned by openat2(2) and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A path that would leave the root (EXDEV from RESOLVE_BENEATH) or hits a
/// refused symlink (ELOOP; ENOTDIR for a symlinked directory) is reported
/// as absent.
fn map_escape(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::EXDEV | libc::ELOOP | libc::ENOTDIR) => io::ErrorKind::NotFound.into(),
        _ => e,
    }
}

/// The fallback: one `openat(O_NOFOLLOW)` per component. Components were
/// validated by `path` (no `..`, no `/`), so this cannot leave the root.
pub(super) fn open_walk(dir: &OwnedFd, rel: &str) -> io::Result<File> {
    let mut parts = rel.split('/').peekable();
    let mut current: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        let c = CString::new(part)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let base = current.as_ref().unwrap_or(dir).as_raw_fd();
        let last = parts.peek().is_none();
        let flags = if last {
            READ_FLAGS | libc::O_NOFOLLOW
        } else {
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
        };
        // SAFETY: `c` is NUL-terminated and `base` an open directory fd.
        let fd = cvt(unsafe { libc::openat(base, c.as_ptr(), flags) }).map_err(map_escape)?;
        // SAFETY: `fd` was just returned by openat(2) and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if last {
            return Ok(File::from(owned));
        }
        current = Some(owned);
    }
    Err(io::ErrorKind::NotFound.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        std::fs::create_dir_all(root.join("cam")).unwrap();
        std::fs::write(root.join("cam/1.ts"), b"inside").unwrap();
        std::fs::write(base.path().join("secret.ts"), b"outside").unwrap();
        std::os::unix::fs::symlink(base.path().join("secret.ts"), root.join("cam/out.ts")).unwrap();
        std::os::unix::fs::symlink("1.ts", root.join("cam/in.ts")).unwrap();
        std::os::unix::fs::symlink(base.path(), root.join("up")).unwrap();
        (base, root)
    }

    #[test]
    fn opens_inside_and_refuses_escapes() {
        let (_base, root) = tree();
        let dir = RootDir::new(root);
        let (_, id) = dir.open("cam/1.ts").unwrap();
        assert_eq!(id.len, 6);
        assert_eq!(dir.stat("cam/1.ts").unwrap(), Some(id));
        for bad in ["cam/out.ts", "up/secret.ts", "cam/missing.ts", "cam"] {
            let e = dir.open(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{bad}");
        }
        // A symlink that stays inside is fine with openat2.
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            assert_eq!(dir.open("cam/in.ts").unwrap().1.len, 6);
        }
        assert_eq!(dir.stat("cam").unwrap(), None);
    }

    #[test]
    fn the_fallback_walk_follows_no_symlinks() {
        let (_base, root) = tree();
        let fd = open_dir(&root).unwrap();
        assert!(open_walk(&fd, "cam/1.ts").is_ok());
        for bad in ["cam/out.ts", "up/secret.ts", "cam/in.ts"] {
            let e = open_walk(&fd, bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{bad}");
        }
    }

    #[test]
    fn etag_changes_with_version() {
        let a = FileId {
            dev: 1,
            ino: 2,
            mtime_secs: 100,
            mtime_nanos: 5,
            len: 10,
        };
        let b = FileId {
            mtime_nanos: 6,
            ..a
        };
        assert_ne!(a.validators().etag, b.validators().etag);
        assert_eq!(a.validators().etag, "\"64.5-a\"");
    }
}
