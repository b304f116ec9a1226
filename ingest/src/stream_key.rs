//! Stream names as they appear in RTMP URLs and on disk.

use std::fmt;

/// A validated stream name: 1–128 characters of `A-Z a-z 0-9 . _ -`, and not
/// `.` or `..`. Because it can contain no separator, a `StreamKey` is safe to
/// use as a file or directory name under the HLS root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey(String);

/// Why a publisher's stream name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream name {name:?}: use 1-128 characters of A-Z a-z 0-9 . _ - (not . or ..)")]
pub struct InvalidStreamKey {
    name: String,
}

impl StreamKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(name: &str) -> Result<Self, InvalidStreamKey> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Self(name.to_string()))
        } else {
            let shown: String = name.chars().take(Self::MAX_LEN + 8).collect();
            Err(InvalidStreamKey { name: shown })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for name in ["a", "stream-1", "My_Stream.v2", &"x".repeat(128), "..."] {
            assert_eq!(StreamKey::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_invalid_names() {
        let long = "x".repeat(129);
        for name in [
            "", ".", "..", "a/b", "a\\b", "a b", "ünï", "a\0", "a?b", "%2e%2e", &long,
        ] {
            assert!(StreamKey::parse(name).is_err(), "{name:?} accepted");
        }
    }
}
