//! Key files of encrypted streams [hls_key_path]: `<key dir>/<stream>/<id>.key`,
//! 16 raw bytes each, in a directory outside the served HLS tree (by
//! default `<hls root>-keys` next to it; on the shared volume in scale-out,
//! so every ingest and HTTP replica sees the same keys). Written atomically
//! with mode 0600 in directories of mode 0700: readable only by the
//! server's user. The HTTP role reads them through [`KeyFiles::read`];
//! nothing under the HLS prefix can name them.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::hls::encryption::{random_block, ActiveKey, KeyRotation, SegmentCipher, BLOCK};
use crate::hls::{PlaylistEntry, PlaylistWindow, SegmentKey};
use crate::stream_key::StreamKey;

/// The key directory of an HLS root when none is configured: a sibling
/// `<root>-keys` (for `./live`, `./live-keys`).
pub fn default_key_dir(hls_root: &Path) -> PathBuf {
    let mut name = hls_root
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "hls".into());
    name.push("-keys");
    match hls_root.parent() {
        Some(parent) => parent.join(name),
        None => PathBuf::from(name),
    }
}

/// Is `key_dir` the HLS root or inside it (where the tree could serve it)?
/// Compared on canonical paths when they exist.
pub fn inside_tree(key_dir: &Path, hls_root: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(key_dir).starts_with(canon(hls_root))
}

/// Where key files live.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    dir: PathBuf,
}

/// Parses a key file name (`<id>.key`).
pub fn key_id(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_suffix(".key")?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl KeyFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stream_dir(&self, stream: &StreamKey) -> PathBuf {
        self.dir.join(stream.as_str())
    }

    pub fn path(&self, stream: &StreamKey, id: u64) -> PathBuf {
        self.stream_dir(stream).join(format!("{id}.key"))
    }

    /// Stores a key: a 0600 temp file in the stream's 0700 directory, then
    /// renamed over the target, so readers never see a partial key.
    pub fn write(&self, stream: &StreamKey, id: u64, key: &[u8; BLOCK]) -> std::io::Result<()> {
        let dir = self.stream_dir(stream);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let path = self.path(stream, id);
        let tmp = dir.join(format!(".{id}.key.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)
    }

    /// Reads a key; a file that is not exactly 16 bytes is an error.
    pub fn read(&self, stream: &StreamKey, id: u64) -> std::io::Result<[u8; BLOCK]> {
        let bytes = std::fs::read(self.path(stream, id))?;
        bytes
            .try_into()
            .map_err(|_| std::io::Error::other("key file is not 16 bytes"))
    }

    /// Ids of the stream's key files on disk.
    pub fn ids(&self, stream: &StreamKey) -> std::io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        match std::fs::read_dir(self.stream_dir(stream)) {
            Ok(entries) => {
                for entry in entries {
                    if let Some(id) = entry?.file_name().to_str().and_then(key_id) {
                        ids.push(id);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Deletes all of a stream's keys (with the stream's other files).
    pub fn remove_stream(&self, stream: &StreamKey) {
        let dir = self.stream_dir(stream);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::debug!(stream = %stream, "keys deleted"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(stream = %stream, error = %e, "cannot delete keys"),
        }
    }

    /// Key ids on disk that no entry of `window` references (and that are
    /// not `keep`): safe to delete after the cleanup grace.
    pub fn unreferenced(
        &self,
        stream: &StreamKey,
        window: &PlaylistWindow,
        keep: Option<u64>,
    ) -> Vec<u64> {
        let ids = self.ids(stream).unwrap_or_default();
        ids.into_iter()
            .filter(|id| Some(*id) != keep && !references(window, *id))
            .collect()
    }
}

fn references(window: &PlaylistWindow, id: u64) -> bool {
    window
        .entries
        .iter()
        .any(|e| e.key.as_ref().is_some_and(|k| k.id == id))
}

/// Key ids that `dropped` segments used and that nothing still listed (nor
/// the key in use) references: they may go once the dropped segments may.
pub fn released_keys(
    dropped: &[PlaylistEntry],
    window: &PlaylistWindow,
    current: Option<u64>,
) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for e in dropped {
        if let Some(k) = &e.key {
            if Some(k.id) != current && !references(window, k.id) && !out.contains(&k.id) {
                out.push(k.id);
            }
        }
    }
    out
}

/// Why a segment cannot be encrypted (it is then dropped, never written
/// in the clear).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no randomness from the operating system: {0}")]
    Random(getrandom::Error),
    #[error("cannot store key {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One publication's encryption: rotates keys, stores new ones, and hands
/// out a cipher and key line per segment.
#[derive(Debug)]
pub struct StreamEncryption {
    files: KeyFiles,
    rotation: KeyRotation,
    /// URL path of keys (`/keys`).
    key_path: String,
}

impl StreamEncryption {
    pub fn new(files: KeyFiles, fragments_per_key: u32, key_path: &str) -> Self {
        Self {
            files,
            rotation: KeyRotation::new(fragments_per_key),
            key_path: key_path.trim_end_matches('/').to_string(),
        }
    }

    pub fn files(&self) -> &KeyFiles {
        &self.files
    }

    /// The key in use, whose file must stay.
    pub fn current_id(&self) -> Option<u64> {
        self.rotation.current_id()
    }

    /// The key line and cipher for segment `segment_id` of `stream`; makes
    /// and stores a new key first when one is due.
    pub fn begin_segment(
        &mut self,
        stream: &StreamKey,
        segment_id: u64,
    ) -> Result<(SegmentKey, SegmentCipher), KeyError> {
        if let Some(id) = self.rotation.due(segment_id) {
            let key = random_block().map_err(KeyError::Random)?;
            self.files
                .write(stream, id, &key)
                .map_err(|source| KeyError::Store {
                    path: self.files.path(stream, id),
                    source,
                })?;
            tracing::debug!(stream = %stream, key_id = id, "new encryption key");
            self.rotation.install(ActiveKey { id, key });
        }
        let iv = random_block().map_err(KeyError::Random)?;
        let Some(active) = self.rotation.take_for_segment() else {
            unreachable!("a key was installed above")
        };
        let cipher = SegmentCipher::new(&active.key, &iv);
        let key = SegmentKey {
            id: active.id,
            uri: format!("{}/{}/{}.key", self.key_path, stream, active.id),
            iv,
        };
        Ok((key, cipher))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn default_key_dir_is_a_sibling_outside_the_tree() {
        assert_eq!(
            default_key_dir(Path::new("./live")),
            PathBuf::from("./live-keys")
        );
        assert_eq!(
            default_key_dir(Path::new("/var/lib/oxcast/hls")),
            PathBuf::from("/var/lib/oxcast/hls-keys")
        );
        let root = Path::new("/srv/live");
        assert!(!inside_tree(&default_key_dir(root), root));
        assert!(inside_tree(Path::new("/srv/live/keys"), root));
        assert!(inside_tree(Path::new("/srv/live"), root));
    }

    #[test]
    fn keys_are_written_atomically_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path().join("keys"));
        let cam = StreamKey::parse("cam").unwrap();
        files.write(&cam, 42, &[9; 16]).unwrap();
        files.write(&cam, 42, &[8; 16]).unwrap();
        assert_eq!(files.read(&cam, 42).unwrap(), [8; 16]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.path(&cam, 42)), 0o600);
        assert_eq!(mode(&files.stream_dir(&cam)), 0o700);
        let names: Vec<_> = std::fs::read_dir(files.stream_dir(&cam))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["42.key"], "no temp file left");
        std::fs::write(files.path(&cam, 7), b"short").unwrap();
        assert!(files.read(&cam, 7).is_err());
        assert_eq!(files.ids(&cam).unwrap(), [7, 42]);
        files.remove_stream(&cam);
        assert!(!files.stream_dir(&cam).exists());
        assert!(files.ids(&cam).unwrap().is_empty());
    }

    #[test]
    fn a_publication_rotates_and_stores_keys() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        let cam = StreamKey::parse("cam").unwrap();
        let mut enc = StreamEncryption::new(files.clone(), 2, "/keys/");
        let mut window = PlaylistWindow::new(oxcast_crds::PlaylistType::Live, 1);
        let mut all_dropped = Vec::new();
        for seg in 100..106u64 {
            let (key, cipher) = enc.begin_segment(&cam, seg).unwrap();
            assert_eq!(key.uri, format!("/keys/cam/{}.key", key.id));
            assert_eq!(key.id, seg - seg % 2);
            let ct = {
                let mut c = cipher;
                let mut out = c.update(&[0x47; 188]).to_vec();
                out.extend(c.finish());
                out
            };
            let stored = files.read(&cam, key.id).unwrap();
            assert_eq!(
                crate::hls::encryption::decrypt(&stored, &key.iv, &ct).unwrap(),
                [0x47; 188]
            );
            let dropped = window.push(
                PlaylistEntry {
                    id: seg,
                    file_name: format!("{seg}.ts"),
                    duration: 90_000,
                    discontinuity: false,
                    program_date_time: None,
                    key: Some(key),
                },
                3 * 90_000,
            );
            let released = released_keys(&dropped, &window, enc.current_id());
            all_dropped.extend(released);
        }
        assert_eq!(files.ids(&cam).unwrap(), [100, 102, 104]);
        // Window holds 103, 104, 105: key 100 went with segment 101, key
        // 102 is still needed by segment 103.
        assert_eq!(all_dropped, [100]);
        assert_eq!(files.unreferenced(&cam, &window, enc.current_id()), [100]);
    }
}
