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

use crate::hls::PlaylistWindow;
use crate::store::Layout;
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
    // The one playlist parser (the one a restarted ingest continues from);
    // a playlist it refuses is not one of ours.
    let window = PlaylistWindow::parse(&read_playlist(playlist_path)?, "").ok()?;
    let stale_after =
        Duration::from_secs(window.target_duration.saturating_mul(3)).max(MIN_STALE_AFTER);
    if window.ended || age > stale_after {
        return None;
    }
    // Bitrate from segment sizes; only plain file names are local files.
    let (mut bytes, mut secs) = (0u64, 0f64);
    for entry in &window.entries {
        let name = &entry.file_name;
        let plain = !name.contains(['\\', '?', '#', ':']) && !name.starts_with('.');
        if let Some(m) = plain.then(|| fs::metadata(dir.join(name)).ok()).flatten() {
            bytes += m.len();
            secs += entry.duration as f64 / 90_000.0;
        }
    }
    let bitrate = (secs > 0.0).then(|| (bytes as f64 * 8.0 / secs).round() as u64);
    let first_segment_at = window
        .entries
        .front()
        .and_then(|e| e.program_date_time)
        .and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        });
    Some(TreeStream {
        name: name.to_string(),
        playlist: url,
        first_segment_at,
        bitrate,
    })
}

/// Finds live streams under `root`, in both layouts: nested
/// (`<name>/index.m3u8`) and flat (`<name>.m3u8`). Sorted by name.
pub fn live_streams(root: &Path, now: SystemTime) -> Vec<TreeStream> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let (nested, flat) = (Layout::new(root, true), Layout::new(root, false));
    let mut out = Vec::new();
    for entry in entries.take(MAX_ENTRIES).flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let candidate = if kind.is_dir() {
            StreamKey::parse(file_name).ok().map(|key| (key, &nested))
        } else {
            file_name
                .strip_suffix(".m3u8")
                .and_then(|n| StreamKey::parse(n).ok())
                .map(|key| (key, &flat))
        };
        let found = candidate.and_then(|(key, layout)| {
            inspect(
                key.as_str(),
                &layout.playlist_path(&key),
                &layout.stream_dir(&key),
                layout.playlist_url(&key),
                now,
            )
        });
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
        assert_eq!(
            found[0].first_segment_at.map(|d| d.unix_timestamp()),
            Some(1_714_557_600)
        );
        assert_eq!(found[1].playlist, "flat.m3u8");
        assert_eq!(found[1].bitrate, None, "its segments are not on disk");

        // Not rewritten for three target durations (and the 10 s floor): gone.
        assert!(live_streams(root, now + Duration::from_secs(11)).is_empty());
    }
}
