//! Where a stream's playlist and segments live under the HLS root
//! [hls_nested]: nested `<root>/<stream>/index.m3u8` + `<root>/<stream>/<id>.ts`,
//! or flat `<root>/<stream>.m3u8` + `<root>/<stream>-<id>.ts`.

use std::path::{Path, PathBuf};

use crate::stream_key::StreamKey;

pub const NESTED_PLAYLIST: &str = "index.m3u8";
/// Suffix of a segment being written; never served, renamed when complete.
pub const PARTIAL_SUFFIX: &str = ".part";

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    nested: bool,
    /// Key files of encrypted streams, outside the tree (see `store::keys`).
    key_dir: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>, nested: bool) -> Self {
        let root = root.into();
        Self {
            key_dir: super::keys::default_key_dir(&root),
            root,
            nested,
        }
    }

    /// Keys in `dir` instead of next to the root.
    pub fn with_key_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.key_dir = dir.into();
        self
    }

    pub fn key_files(&self) -> super::keys::KeyFiles {
        super::keys::KeyFiles::new(self.key_dir.clone())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding the stream's playlist and segments.
    pub fn stream_dir(&self, key: &StreamKey) -> PathBuf {
        if self.nested {
            self.root.join(key.as_str())
        } else {
            self.root.clone()
        }
    }

    pub fn playlist_path(&self, key: &StreamKey) -> PathBuf {
        self.root.join(self.playlist_url(key))
    }

    /// The playlist's URL path relative to the tree's HTTP prefix
    /// (`cam/index.m3u8` or `cam.m3u8`); stream keys need no escaping.
    pub fn playlist_url(&self, key: &StreamKey) -> String {
        if self.nested {
            format!("{key}/{NESTED_PLAYLIST}")
        } else {
            format!("{key}.m3u8")
        }
    }

    /// The segment's file name, which is also its URI relative to the playlist.
    pub fn segment_file_name(&self, key: &StreamKey, id: u64) -> String {
        if self.nested {
            format!("{id}.ts")
        } else {
            format!("{key}-{id}.ts")
        }
    }

    pub fn segment_path(&self, key: &StreamKey, file_name: &str) -> PathBuf {
        self.stream_dir(key).join(file_name)
    }

    /// Streams that have a playlist on disk (from before a restart).
    pub fn discover(&self) -> std::io::Result<Vec<StreamKey>> {
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let candidate = if self.nested {
                if !entry.file_type()?.is_dir() {
                    continue;
                }
                Some(name)
            } else {
                name.strip_suffix(".m3u8")
            };
            if let Some(key) = candidate.and_then(|n| StreamKey::parse(n).ok()) {
                if self.playlist_path(&key).is_file() {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// The id of one of this stream's segment files, complete or partial:
    /// the inverse of [`Layout::segment_file_name`] (plus the partial
    /// suffix); `None` for any other file.
    pub fn segment_id(&self, key: &StreamKey, file_name: &str) -> Option<u64> {
        let stem = file_name.strip_suffix(PARTIAL_SUFFIX).unwrap_or(file_name);
        let stem = stem.strip_suffix(".ts")?;
        let digits = if self.nested {
            stem
        } else {
            stem.strip_prefix(key.as_str())?.strip_prefix('-')?
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Segment files (complete or partial) of this stream found on disk.
    pub fn segment_files(&self, key: &StreamKey) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.stream_dir(key))? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if self.segment_id(key, name).is_some() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_ids_are_read_back_from_the_names_the_layout_gives() {
        let key = StreamKey::parse("cam-1").unwrap();
        for nested in [true, false] {
            let layout = Layout::new("/srv/hls", nested);
            for id in [0, 7, 1_717_171_717_171] {
                let name = layout.segment_file_name(&key, id);
                assert_eq!(layout.segment_id(&key, &name), Some(id), "{name}");
                let part = format!("{name}{PARTIAL_SUFFIX}");
                assert_eq!(layout.segment_id(&key, &part), Some(id), "{part}");
            }
            for other in [
                "index.m3u8",
                ".ts",
                "x.ts",
                "cam-1-.ts",
                "12.ts.tmp",
                "99999999999999999999999.ts",
            ] {
                assert_eq!(
                    layout.segment_id(&key, other),
                    None,
                    "{other} (nested {nested})"
                );
            }
        }
        // Flat: another stream's segments are not this stream's.
        let flat = Layout::new("/srv/hls", false);
        assert_eq!(flat.segment_id(&key, "cam-2-12.ts"), None);
        assert_eq!(flat.segment_id(&key, "12.ts"), None);
    }

    #[test]
    fn nested_and_flat_paths() {
        let key = StreamKey::parse("cam1").unwrap();
        let nested = Layout::new("/srv/live", true);
        assert_eq!(
            nested.playlist_path(&key),
            Path::new("/srv/live/cam1/index.m3u8")
        );
        assert_eq!(nested.segment_file_name(&key, 42), "42.ts");
        assert_eq!(
            nested.segment_path(&key, "42.ts"),
            Path::new("/srv/live/cam1/42.ts")
        );
        let flat = Layout::new("/srv/live", false);
        assert_eq!(flat.playlist_path(&key), Path::new("/srv/live/cam1.m3u8"));
        assert_eq!(flat.segment_file_name(&key, 42), "cam1-42.ts");
        assert_eq!(
            flat.segment_path(&key, "cam1-42.ts"),
            Path::new("/srv/live/cam1-42.ts")
        );
    }

    #[test]
    fn discovers_streams_and_their_segments() {
        let dir = tempfile::tempdir().unwrap();
        let flat = Layout::new(dir.path(), false);
        let a = StreamKey::parse("a").unwrap();
        let ab = StreamKey::parse("a-b").unwrap();
        for f in [
            "a.m3u8",
            "a-1.ts",
            "a-2.ts.part",
            "a-b.m3u8",
            "a-b-7.ts",
            "junk.txt",
            "a-x.ts",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        assert_eq!(flat.discover().unwrap(), vec![a.clone(), ab.clone()]);
        assert_eq!(
            flat.segment_files(&a).unwrap(),
            vec!["a-1.ts", "a-2.ts.part"]
        );
        assert_eq!(flat.segment_files(&ab).unwrap(), vec!["a-b-7.ts"]);

        let nested = Layout::new(dir.path(), true);
        std::fs::create_dir(dir.path().join("cam")).unwrap();
        std::fs::write(dir.path().join("cam/index.m3u8"), b"").unwrap();
        std::fs::write(dir.path().join("cam/5.ts"), b"").unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let cam = StreamKey::parse("cam").unwrap();
        assert_eq!(nested.discover().unwrap(), vec![cam.clone()]);
        assert_eq!(nested.segment_files(&cam).unwrap(), vec!["5.ts"]);
    }
}
