//! Where segments and playlists live: the file layout, atomic writes,
//! segment naming and cleanup. The only part of the HLS path that does IO,
//! and none of it on an event loop: segment and playlist writes run on each
//! publication's writer thread ([`writer`]), deletions on the blocking pool
//! ([`cleanup`]).

pub mod cleanup;
pub mod keys;
pub mod layout;
pub mod output;
pub mod writer;

use std::io::Write;
use std::path::Path;

pub use cleanup::CleanupQueue;
pub use layout::Layout;
pub use output::{HlsOutput, StreamHistory};
pub use writer::{StorageWriter, StorageWriters};

/// Writes `contents` to `path` so that readers see either the old file or
/// the new one, never a torn write: a temp file in the same directory, then
/// rename over the target.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("atomic write target has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.m3u8");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("index.m3u8")]);
    }

    #[test]
    fn atomic_write_into_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_atomically(&dir.path().join("gone/index.m3u8"), b"x").is_err());
    }
}
