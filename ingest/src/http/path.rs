//! Turns the part of a request path below a served prefix into a relative
//! file path that cannot name anything outside the served directory.
//!
//! The rules are deliberately narrower than what a file system allows: the
//! ingest server only ever writes names of `A-Z a-z 0-9 . _ -`, so every
//! other byte (after percent-decoding, once) is refused rather than
//! interpreted. That closes `..`, encoded dots and slashes, backslashes,
//! NUL, absolute paths and double encoding in one rule, and keeps hidden
//! and temporary files (`.index.m3u8.tmp`, `<id>.ts.part`) out of reach
//! because they either start with a dot or do not end in a served extension.

use std::borrow::Cow;

/// Longest path component accepted (file systems allow 255 bytes).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Longest relative path accepted, decoded, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Most components in a path (`<stream>/<file>` needs two).
pub const MAX_DEPTH: usize = 8;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a name this server could have written: answered 404, as if absent.
    #[error("not a servable path")]
    NotFound,
    /// Longer than any path the server writes: answered 414.
    #[error("path too long")]
    TooLong,
}

/// What a served HLS file is; decides its `Content-Type` and cache rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HlsKind {
    /// `.m3u8`: replaced on every new segment, must be revalidated.
    Playlist,
    /// `.ts`: written once under a fresh name, immutable once listed.
    Segment,
}

impl HlsKind {
    fn of(name: &str) -> Option<Self> {
        if name.ends_with(".m3u8") {
            Some(Self::Playlist)
        } else if name.ends_with(".ts") {
            Some(Self::Segment)
        } else {
            None
        }
    }
}

/// Is `b` allowed in a path component (after decoding)?
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes once; a malformed escape is refused.
fn percent_decode(raw: &str) -> Result<Cow<'_, str>, Refused> {
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(Refused::NotFound),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Any non-ASCII byte is refused by the component check anyway.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| Refused::NotFound)
}

/// Checks one decoded component: a plain name that does not start with a
/// dot (so neither `.`, `..` nor hidden/temporary files).
fn check_component(c: &str) -> Result<(), Refused> {
    if c.len() > MAX_COMPONENT_LEN {
        return Err(Refused::TooLong);
    }
    if c.is_empty() || c.starts_with('.') || !c.bytes().all(name_byte) {
        return Err(Refused::NotFound);
    }
    Ok(())
}

/// Parses `rest`, the request path after the prefix (`/cam/index.m3u8`),
/// into a relative path under the served root and its kind.
pub fn hls_path(rest: &str) -> Result<(Cow<'_, str>, HlsKind), Refused> {
    let rel = relative_path(rest)?;
    let name = rel.rsplit('/').next().unwrap_or_default();
    let kind = HlsKind::of(name).ok_or(Refused::NotFound)?;
    Ok((rel, kind))
}

/// Parses a request path below a prefix into a relative path whose every
/// component passed [`check_component`]. No extension rule is applied.
pub fn relative_path(rest: &str) -> Result<Cow<'_, str>, Refused> {
    // The raw form can only be longer than the decoded one, and the
    // decoded one has to fit MAX_PATH_LEN; allow for escapes.
    if rest.len() > 3 * MAX_PATH_LEN {
        return Err(Refused::TooLong);
    }
    let rest = rest.strip_prefix('/').ok_or(Refused::NotFound)?;
    if rest.is_empty() {
        return Err(Refused::NotFound);
    }
    // Decode per component after splitting on the raw `/`, so an encoded
    // slash stays inside its component and is then refused.
    let mut depth = 0;
    let mut decoded_any = false;
    for raw in rest.split('/') {
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(Refused::NotFound);
        }
        let c = percent_decode(raw)?;
        decoded_any |= matches!(c, Cow::Owned(_));
        check_component(&c)?;
    }
    if !decoded_any {
        if rest.len() > MAX_PATH_LEN {
            return Err(Refused::TooLong);
        }
        return Ok(Cow::Borrowed(rest));
    }
    let mut out = String::with_capacity(rest.len());
    for (i, raw) in rest.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&percent_decode(raw)?);
    }
    if out.len() > MAX_PATH_LEN {
        return Err(Refused::TooLong);
    }
    Ok(Cow::Owned(out))
}

/// A single file name (no directories), e.g. a player asset.
pub fn file_name(rest: &str) -> Result<Cow<'_, str>, Refused> {
    let rel = relative_path(rest)?;
    if rel.contains('/') {
        return Err(Refused::NotFound);
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_files_the_ingest_server_writes() {
        assert_eq!(
            hls_path("/cam/index.m3u8").unwrap(),
            (Cow::Borrowed("cam/index.m3u8"), HlsKind::Playlist)
        );
        assert_eq!(
            hls_path("/cam/1700000000000.ts").unwrap().1,
            HlsKind::Segment
        );
        assert_eq!(hls_path("/cam.m3u8").unwrap().0, "cam.m3u8");
        assert_eq!(hls_path("/cam-12.ts").unwrap().0, "cam-12.ts");
        // Escaped unreserved characters are the same name (RFC 3986 §6.2.2.2).
        assert_eq!(hls_path("/c%61m/%31.ts").unwrap().0, "cam/1.ts");
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "/",
            "cam/1.ts",
            "/../x.ts",
            "/cam/../x.ts",
            "/cam/./1.ts",
            "/cam//1.ts",
            "/cam/1.ts/",
            "//etc/x.ts",
            "/cam\\1.ts",
            "/%2e%2e/x.ts",
            "/%2E%2E%2Fx.ts",
            "/cam%2f1.ts",
            "/cam%5c1.ts",
            "/%252e%252e/x.ts",
            "/cam/1.ts%00",
            "/cam/1.ts\0",
            "/cam/%zz.ts",
            "/cam/%2",
            "/cam/1.ts.part",
            "/cam/.index.m3u8.tmp",
            "/cam/.hidden.ts",
            "/cam/1.mp4",
            "/cam/1.key",
            "/cam/index.m3u8?x",
            "/cam/é.ts",
            "/a/b/c/d/e/f/g/h/i.ts",
        ] {
            assert!(hls_path(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("/{}.ts", "a".repeat(300));
        assert_eq!(hls_path(&long), Err(Refused::TooLong));
        let very_long = format!("/{}", "a/".repeat(3000));
        assert_eq!(hls_path(&very_long), Err(Refused::TooLong));
    }

    #[test]
    fn file_names_have_no_directories() {
        assert_eq!(file_name("/hls.min.js").unwrap(), "hls.min.js");
        assert!(file_name("/a/hls.min.js").is_err());
        assert!(file_name("/..").is_err());
    }
}
