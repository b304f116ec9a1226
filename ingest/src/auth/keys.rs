//! Stream keys from a file or a mounted Secret, re-read when they change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::stream_key::StreamKey;

/// Allowed keys and the public name each publishes under.
///
/// - A **file**: one entry per line, `#` comments and blank lines ignored.
///   `KEY` publishes under the key itself; `KEY NAME` publishes under `NAME`.
/// - A **directory** (a Kubernetes Secret mounted as a volume): each file's
///   name is the public stream name and its content the key. Hidden entries
///   (the kubelet's `..data` links) are skipped.
///
/// The source is re-read whenever a file's modification time or size
/// changes, so a rotated Secret takes effect without a restart.
pub struct KeyStore {
    path: PathBuf,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    fingerprint: Vec<(String, Option<SystemTime>, u64)>,
    keys: HashMap<String, StreamKey>,
}

impl KeyStore {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new(Cache::default()),
        }
    }

    fn fingerprint(&self) -> std::io::Result<Vec<(String, Option<SystemTime>, u64)>> {
        let meta = std::fs::metadata(&self.path)?;
        if !meta.is_dir() {
            return Ok(vec![(String::new(), meta.modified().ok(), meta.len())]);
        }
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            // Follows the Secret's symlinks to the current version.
            let meta = std::fs::metadata(entry.path())?;
            if meta.is_file() {
                entries.push((name, meta.modified().ok(), meta.len()));
            }
        }
        entries.sort();
        Ok(entries)
    }

    fn load(&self) -> std::io::Result<HashMap<String, StreamKey>> {
        let mut keys = HashMap::new();
        if std::fs::metadata(&self.path)?.is_dir() {
            for (name, _, _) in self.fingerprint()? {
                let key = std::fs::read_to_string(self.path.join(&name))?;
                let key = key.trim();
                match StreamKey::parse(&name) {
                    Ok(public) if !key.is_empty() => {
                        keys.insert(key.to_string(), public);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), entry = %name, error = %e, "skipping stream key entry")
                    }
                }
            }
        } else {
            let text = std::fs::read_to_string(&self.path)?;
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or_default().trim();
                let mut words = line.split_whitespace();
                let (Some(key), name) = (words.next(), words.next()) else {
                    continue;
                };
                match StreamKey::parse(name.unwrap_or(key)) {
                    Ok(public) => {
                        keys.insert(key.to_string(), public);
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), line = n + 1, error = %e, "skipping stream key line")
                    }
                }
            }
        }
        Ok(keys)
    }

    /// The public name for `key`, or `None` if the key is not allowed.
    pub fn lookup(&self, key: &str) -> std::io::Result<Option<StreamKey>> {
        let fingerprint = self.fingerprint()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.fingerprint != fingerprint || cache.fingerprint.is_empty() {
            cache.keys = self.load()?;
            cache.fingerprint = fingerprint;
            tracing::info!(path = %self.path.display(), keys = cache.keys.len(), "stream keys loaded");
        }
        Ok(cache.keys.get(key).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_entries_map_keys_to_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            "# broadcasters\nsecret-1 alice\nsecret-2\n\n  secret-3   bob  # trailing\n",
        )
        .unwrap();
        let store = KeyStore::new(path.clone());
        assert_eq!(store.lookup("secret-1").unwrap().unwrap().as_str(), "alice");
        assert_eq!(
            store.lookup("secret-2").unwrap().unwrap().as_str(),
            "secret-2"
        );
        assert_eq!(store.lookup("secret-3").unwrap().unwrap().as_str(), "bob");
        assert_eq!(store.lookup("alice").unwrap(), None);
        // Rewritten file (different size) is picked up without a restart.
        std::fs::write(&path, "secret-9 carol\n").unwrap();
        assert_eq!(store.lookup("secret-1").unwrap(), None);
        assert_eq!(store.lookup("secret-9").unwrap().unwrap().as_str(), "carol");
    }

    #[test]
    fn directory_entries_are_name_to_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alice"), "k-alice\n").unwrap();
        std::fs::write(dir.path().join("bob"), "k-bob").unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        let store = KeyStore::new(dir.path().to_path_buf());
        assert_eq!(store.lookup("k-alice").unwrap().unwrap().as_str(), "alice");
        assert_eq!(store.lookup("k-bob").unwrap().unwrap().as_str(), "bob");
        std::fs::remove_file(dir.path().join("bob")).unwrap();
        assert_eq!(store.lookup("k-bob").unwrap(), None);
    }

    #[test]
    fn missing_source_is_an_error() {
        let store = KeyStore::new("/nonexistent/keys".into());
        assert!(store.lookup("x").is_err());
    }
}
