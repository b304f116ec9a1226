//! Live streams as seen from the HLS tree alone, for the `http` role, which
//! has no publisher in its process: a stream is live while its playlist has
//! no `EXT-X-ENDLIST` and keeps being rewritten.
//!
//! What the tree can tell: the name, the playlist URL, when the oldest
//! listed segment started (its `EXT-X-PROGRAM-DATE-TIME`), and the average
//! bitrate of the listed segments (file sizes over `EXTINF` durations).
//! Codecs, resolution and frame rate live inside the segments and are not
//! reported here.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::store::layout::NESTED_PLAYLIST;
use crate::stream_key::StreamKey;

/// A live stream found in the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeStream {
    pub name: String,
    /// URL path of the playlist below the HTTP prefix (`cam/index.m3u8`).
    pub playlist: String,
    /// `EXT-X-PROGRAM-DATE-TIME` of the first listed segment.
    pub first_segment_at: Option<time::OffsetDateTime>,
    /// Bits per second over the listed segments found on disk.
    pub bitrate: Option<u64>,
}

/// Playlists larger than this are not live HLS playlists of ours.
const MAX_PLAYLIST: u64 = 1 << 20;
/// Directory entries looked at, at most, so a huge tree cannot make the
/// API slow.
const MAX_ENTRIES: usize = 10_000;
/// A playlist untouched for this long (or three target durations, if
/// longer) belongs to a publisher that is gone without ending it.
const MIN_STALE_AFTER: Duration = Duration::from_secs(10);

/// The parts of a media playlist the scan needs.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct PlaylistFacts {
    ended: bool,
    target_duration: Option<u64>,
    first_date: Option<time::OffsetDateTime>,
    /// (URI, duration in seconds) of each segment.
    segments: Vec<(String, f64)>,
}

pub(crate) fn parse_playlist(text: &str) -> PlaylistFacts {
    let mut facts = PlaylistFacts::default();
    let mut duration = None;
    for line in text.lines().map(str::trim) {
        if line == "#EXT-X-ENDLIST" {
            facts.ended = true;
        } else if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            facts.target_duration = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            if facts.first_date.is_none() && facts.segments.is_empty() {
                facts.first_date = time::OffsetDateTime::parse(
                    v.trim(),
                    &time::format_description::well_known::Rfc3339,
                )
                .ok();
            }
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            duration = v
                .split(',')
                .next()
                .and_then(|d| d.trim().parse::<f64>().ok());
        } else if !line.is_empty() && !line.starts_with('#') {
            facts
                .segments
                .push((line.to_string(), duration.take().unwrap_or(0.0)));
        }
    }
    facts
}

/// Reads at most [`MAX_PLAYLIST`] bytes of a playlist.
fn read_playlist(path: &Path) -> Option<String> {
    let mut text = String::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_PLAYLIST)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Looks at one candidate playlist; `dir` is where its segment URIs point.
fn inspect(
    name: &str,
    playlist_path: &Path,
    dir: &Path,
    url: String,
    now: SystemTime,
) -> Option<TreeStream> {
    let meta = fs::metadata(playlist_path).ok()?;
    if !meta.is_file() || meta.len() > MAX_PLAYLIST {
        return None;
    }
    let age = now
        .duration_since(meta.modified().ok()?)
        .unwrap_or_default();
    if age > MIN_STALE_AFTER * 30 {
        return None; // cheap early out before reading
    }
    let facts = parse_playlist(&read_playlist(playlist_path)?);
    let stale_after = facts
        .target_duration
        .map(|t| Duration::from_secs(t.saturating_mul(3)))
        .unwrap_or_default()
        .max(MIN_STALE_AFTER);
    if facts.ended || age > stale_after {
        return None;
    }
    // Bitrate from segment sizes; only plain relative URIs are local files.
    let (mut bytes, mut secs) = (0u64, 0f64);
    for (uri, d) in &facts.segments {
        let plain = !uri.contains(['/', '\\', '?', '#', ':']) && !uri.starts_with('.');
        if let Some(m) = plain.then(|| fs::metadata(dir.join(uri)).ok()).flatten() {
            bytes += m.len();
            secs += d;
        }
    }
    let bitrate = (secs > 0.0).then(|| (bytes as f64 * 8.0 / secs).round() as u64);
    Some(TreeStream {
        name: name.to_string(),
        playlist: url,
        first_segment_at: facts.first_date,
        bitrate,
    })
}

/// Finds live streams under `root`, in both layouts: nested
/// (`<name>/index.m3u8`) and flat (`<name>.m3u8`). Sorted by name.
pub fn live_streams(root: &Path, now: SystemTime) -> Vec<TreeStream> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.take(MAX_ENTRIES).flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let found = if kind.is_dir() {
            StreamKey::parse(file_name).ok().and_then(|key| {
                let dir = entry.path();
                let url = format!("{key}/{NESTED_PLAYLIST}");
                inspect(key.as_str(), &dir.join(NESTED_PLAYLIST), &dir, url, now)
            })
        } else {
            file_name
                .strip_suffix(".m3u8")
                .and_then(|n| StreamKey::parse(n).ok())
                .and_then(|key| {
                    let url = format!("{key}.m3u8");
                    inspect(key.as_str(), &entry.path(), root, url, now)
                })
        };
        out.extend(found);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str =
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:4\n\
        #EXT-X-PROGRAM-DATE-TIME:2024-05-01T10:00:00.000+00:00\n#EXTINF:2.000,\n1.ts\n\
        #EXT-X-PROGRAM-DATE-TIME:2024-05-01T10:00:02.000+00:00\n#EXTINF:2.000,\n2.ts\n";

    #[test]
    fn parses_the_facts_it_needs() {
        let f = parse_playlist(LIVE);
        assert!(!f.ended);
        assert_eq!(f.target_duration, Some(2));
        assert_eq!(
            f.first_date.map(|d| d.unix_timestamp()),
            Some(1_714_557_600)
        );
        assert_eq!(f.segments, vec![("1.ts".into(), 2.0), ("2.ts".into(), 2.0)]);
        assert!(parse_playlist(&format!("{LIVE}#EXT-X-ENDLIST\n")).ended);
    }

    #[test]
    fn finds_live_nested_and_flat_streams() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("cam")).unwrap();
        fs::write(root.join("cam/index.m3u8"), LIVE).unwrap();
        fs::write(root.join("cam/1.ts"), vec![0u8; 1000]).unwrap();
        fs::write(root.join("cam/2.ts"), vec![0u8; 1000]).unwrap();
        fs::write(root.join("flat.m3u8"), LIVE.replace("1.ts", "flat-1.ts")).unwrap();
        fs::create_dir(root.join("ended")).unwrap();
        fs::write(
            root.join("ended/index.m3u8"),
            format!("{LIVE}#EXT-X-ENDLIST\n"),
        )
        .unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::write(root.join("bad name.m3u8"), LIVE).unwrap();

        let now = SystemTime::now();
        let found = live_streams(root, now);
        let names: Vec<_> = found.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["cam", "flat"]);
        assert_eq!(found[0].playlist, "cam/index.m3u8");
        assert_eq!(found[0].bitrate, Some(2000 * 8 / 4));
        assert_eq!(found[1].playlist, "flat.m3u8");
        assert_eq!(found[1].bitrate, None, "its segments are not on disk");

        // Not rewritten for three target durations (and the 10 s floor): gone.
        assert!(live_streams(root, now + Duration::from_secs(11)).is_empty());
    }
}
