//! An independent HLS media playlist parser (RFC 8216), for assertions.
//!
//! Written for the tests and deliberately separate from the server's own
//! playlist code, so a bug there cannot hide itself here. It is strict about
//! structure (a playlist that is half-written or misordered fails to parse)
//! and keeps every tag it does not model in [`Playlist::other_tags`].

use std::fmt;
use std::path::Path;

/// One media segment entry of a media playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// The URI line, as written.
    pub uri: String,
    /// The `#EXTINF` duration in seconds.
    pub duration: f64,
    /// The `#EXTINF` duration exactly as written (to check decimal places).
    pub duration_text: String,
    /// `#EXT-X-DISCONTINUITY` precedes this segment.
    pub discontinuity: bool,
    /// `#EXT-X-PROGRAM-DATE-TIME` of this segment, if tagged.
    pub program_date_time: Option<DateTime>,
    /// Media sequence number (playlist media sequence + position).
    pub sequence: u64,
}

/// A parsed `#EXT-X-PROGRAM-DATE-TIME` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateTime {
    /// The value as written.
    pub text: String,
    /// The instant in microseconds since the Unix epoch.
    pub unix_micros: i64,
}

impl DateTime {
    /// The instant in (fractional) milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> f64 {
        self.unix_micros as f64 / 1000.0
    }
}

/// A parsed media playlist.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Playlist {
    pub version: Option<u32>,
    pub target_duration: Option<u64>,
    /// `#EXT-X-MEDIA-SEQUENCE`, 0 when absent (RFC 8216 §4.3.3.2).
    pub media_sequence: u64,
    pub has_media_sequence_tag: bool,
    /// `#EXT-X-DISCONTINUITY-SEQUENCE`, 0 when absent.
    pub discontinuity_sequence: u64,
    pub has_discontinuity_sequence_tag: bool,
    /// `#EXT-X-PLAYLIST-TYPE` value (`EVENT` / `VOD`).
    pub playlist_type: Option<String>,
    pub end_list: bool,
    pub segments: Vec<Segment>,
    /// Tags this parser does not model, in order, full line.
    pub other_tags: Vec<String>,
}

/// Why a playlist did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number (0 for whole-document errors).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m3u8 line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

impl Playlist {
    /// Parses media playlist text.
    pub fn parse(text: &str) -> Result<Playlist, ParseError> {
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, first)) if first.trim_end() == "#EXTM3U" => {}
            Some((n, first)) => {
                return Err(err(n, format!("first line must be #EXTM3U, got {first:?}")))
            }
            None => return Err(err(0, "empty playlist")),
        }
        if !text.ends_with('\n') {
            return Err(err(0, "playlist does not end with a newline (truncated?)"));
        }

        let mut pl = Playlist::default();
        // Per-segment tags seen since the last URI.
        let mut pending_inf: Option<(f64, String)> = None;
        let mut pending_disc = false;
        let mut pending_pdt: Option<DateTime> = None;
        let mut seen_version = false;
        let mut seen_target = false;

        for (n, raw) in lines {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            if pl.end_list {
                return Err(err(n, format!("content after #EXT-X-ENDLIST: {line:?}")));
            }
            if !line.starts_with('#') {
                let Some((duration, duration_text)) = pending_inf.take() else {
                    return Err(err(n, format!("URI without preceding #EXTINF: {line:?}")));
                };
                let sequence = pl.media_sequence + pl.segments.len() as u64;
                pl.segments.push(Segment {
                    uri: line.to_string(),
                    duration,
                    duration_text,
                    discontinuity: std::mem::take(&mut pending_disc),
                    program_date_time: pending_pdt.take(),
                    sequence,
                });
                continue;
            }
            if !line.starts_with("#EXT") {
                continue; // a comment
            }
            let (name, value) = match line.split_once(':') {
                Some((name, value)) => (name, Some(value)),
                None => (line, None),
            };
            let need_value = || value.ok_or_else(|| err(n, format!("{name} needs a value")));
            let in_header = pl.segments.is_empty() && pending_inf.is_none();
            let before_segments = |what: &str| {
                if in_header {
                    Ok(())
                } else {
                    Err(err(
                        n,
                        format!("{what} must appear before the first segment"),
                    ))
                }
            };
            match name {
                "#EXTM3U" => return Err(err(n, "#EXTM3U repeated")),
                "#EXT-X-VERSION" => {
                    if std::mem::replace(&mut seen_version, true) {
                        return Err(err(n, "#EXT-X-VERSION repeated"));
                    }
                    pl.version = Some(parse_int(n, need_value()?)? as u32);
                }
                "#EXT-X-TARGETDURATION" => {
                    if std::mem::replace(&mut seen_target, true) {
                        return Err(err(n, "#EXT-X-TARGETDURATION repeated"));
                    }
                    pl.target_duration = Some(parse_int(n, need_value()?)?);
                }
                "#EXT-X-MEDIA-SEQUENCE" => {
                    before_segments(name)?;
                    if std::mem::replace(&mut pl.has_media_sequence_tag, true) {
                        return Err(err(n, "#EXT-X-MEDIA-SEQUENCE repeated"));
                    }
                    pl.media_sequence = parse_int(n, need_value()?)?;
                }
                "#EXT-X-DISCONTINUITY-SEQUENCE" => {
                    before_segments(name)?;
                    if std::mem::replace(&mut pl.has_discontinuity_sequence_tag, true) {
                        return Err(err(n, "#EXT-X-DISCONTINUITY-SEQUENCE repeated"));
                    }
                    pl.discontinuity_sequence = parse_int(n, need_value()?)?;
                }
                "#EXT-X-PLAYLIST-TYPE" => {
                    let v = need_value()?;
                    if v != "EVENT" && v != "VOD" {
                        return Err(err(n, format!("bad #EXT-X-PLAYLIST-TYPE {v:?}")));
                    }
                    pl.playlist_type = Some(v.to_string());
                }
                "#EXT-X-ENDLIST" => {
                    if pending_inf.is_some() {
                        return Err(err(n, "#EXT-X-ENDLIST between #EXTINF and its URI"));
                    }
                    pl.end_list = true;
                }
                "#EXTINF" => {
                    if pending_inf.is_some() {
                        return Err(err(n, "#EXTINF without URI before the next #EXTINF"));
                    }
                    let v = need_value()?;
                    let (dur, _title) = v
                        .split_once(',')
                        .ok_or_else(|| err(n, format!("#EXTINF without comma: {v:?}")))?;
                    let d: f64 = dur
                        .parse()
                        .map_err(|_| err(n, format!("bad #EXTINF duration {dur:?}")))?;
                    if !d.is_finite() || d < 0.0 {
                        return Err(err(n, format!("bad #EXTINF duration {dur:?}")));
                    }
                    pending_inf = Some((d, dur.to_string()));
                }
                "#EXT-X-DISCONTINUITY" => pending_disc = true,
                "#EXT-X-PROGRAM-DATE-TIME" => {
                    let v = need_value()?;
                    let unix_micros = parse_date_time(v).map_err(|m| err(n, m))?;
                    pending_pdt = Some(DateTime {
                        text: v.to_string(),
                        unix_micros,
                    });
                }
                _ => pl.other_tags.push(line.to_string()),
            }
        }
        if pending_inf.is_some() {
            return Err(err(0, "last #EXTINF has no URI (truncated?)"));
        }
        Ok(pl)
    }

    /// Reads and parses a playlist file. `Ok(None)` if it does not exist (yet).
    pub fn read(path: &Path) -> Result<Option<Playlist>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Playlist::parse(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}\n--- content ---\n{text}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// Sum of all `#EXTINF` durations, seconds.
    pub fn total_duration(&self) -> f64 {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// Media sequence number one past the last segment.
    pub fn next_sequence(&self) -> u64 {
        self.media_sequence + self.segments.len() as u64
    }

    /// RFC 8216 rules every playlist of ours must satisfy. Empty when valid.
    pub fn rfc_violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(target) = self.target_duration else {
            out.push("missing #EXT-X-TARGETDURATION".to_string());
            return out;
        };
        for s in &self.segments {
            // §4.3.3.1: EXTINF rounded to the nearest integer <= target duration.
            let rounded = s.duration.round() as u64;
            if rounded > target {
                out.push(format!(
                    "segment {} EXTINF {} rounds to {rounded} > TARGETDURATION {target}",
                    s.uri, s.duration_text
                ));
            }
            if self.version.unwrap_or(1) < 3 && s.duration_text.contains('.') {
                out.push(format!(
                    "decimal EXTINF {} needs version >= 3",
                    s.duration_text
                ));
            }
        }
        let mut uris: Vec<&str> = self.segments.iter().map(|s| s.uri.as_str()).collect();
        uris.sort_unstable();
        for w in uris.windows(2) {
            if w[0] == w[1] {
                out.push(format!("segment URI {} listed twice", w[0]));
            }
        }
        if self.playlist_type.as_deref() == Some("VOD") && !self.end_list {
            out.push("VOD playlist without #EXT-X-ENDLIST".to_string());
        }
        out
    }

    /// Panics (with the playlist) if [`Playlist::rfc_violations`] is not empty.
    #[track_caller]
    pub fn assert_rfc_valid(&self) {
        let v = self.rfc_violations();
        assert!(
            v.is_empty(),
            "playlist violates RFC 8216: {v:#?}\n{self:#?}"
        );
    }
}

fn parse_int(line: usize, v: &str) -> Result<u64, ParseError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(line, format!("not a decimal integer: {v:?}")));
    }
    v.parse()
        .map_err(|_| err(line, format!("integer out of range: {v:?}")))
}

/// Days since 1970-01-01 of a proleptic Gregorian calendar date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an ISO 8601 / RFC 3339 date-time with a time zone (RFC 8216
/// §4.3.2.6) into microseconds since the Unix epoch.
pub fn parse_date_time(s: &str) -> Result<i64, String> {
    let bad = || format!("bad PROGRAM-DATE-TIME {s:?}");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return Err(bad());
    }
    if b[16] != b':' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let t = &s[r];
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    if second > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return Err(bad());
        }
        // First six digits as microseconds; further digits truncated.
        let mut padded: String = frac.chars().take(6).collect();
        while padded.len() < 6 {
            padded.push('0');
        }
        micros = padded.parse().map_err(|_| bad())?;
    }
    let offset_secs = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        tz if tz.len() == 5 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 3..i + 5)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Ok(secs * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n\
#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n\
#EXT-X-PROGRAM-DATE-TIME:2026-11-24T07:30:00.123+00:00\n#EXTINF:2.000,\n7.ts\n\
#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2026-11-24T07:30:02.123+00:00\n#EXTINF:2.520,\n8.ts\n\
#EXT-X-ENDLIST\n";

    #[test]
    fn parses_sample() {
        let pl = Playlist::parse(SAMPLE).expect("sample parses");
        assert_eq!(pl.version, Some(3));
        assert_eq!(pl.target_duration, Some(3));
        assert_eq!(pl.media_sequence, 7);
        assert_eq!(pl.discontinuity_sequence, 1);
        assert!(pl.end_list);
        assert_eq!(pl.segments.len(), 2);
        assert_eq!(pl.segments[1].uri, "8.ts");
        assert_eq!(pl.segments[1].sequence, 8);
        assert!(pl.segments[1].discontinuity);
        assert!(!pl.segments[0].discontinuity);
        let a = pl.segments[0].program_date_time.as_ref().expect("pdt");
        let b = pl.segments[1].program_date_time.as_ref().expect("pdt");
        assert_eq!(b.unix_micros - a.unix_micros, 2_000_000);
        assert!((pl.total_duration() - 4.52).abs() < 1e-9);
        pl.assert_rfc_valid();
    }

    #[test]
    fn date_time_epoch() {
        assert_eq!(parse_date_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_date_time("2000-03-01T00:00:01.5+01:00"),
            Ok((951_868_800 + 1 - 3600) * 1_000_000 + 500_000)
        );
        assert!(parse_date_time("2026-11-24 07:30:00Z").is_err());
        assert!(parse_date_time("2026-11-24T07:30:00").is_err());
    }

    #[test]
    fn rejects_truncated_and_misordered() {
        assert!(Playlist::parse("").is_err());
        assert!(Playlist::parse("#EXTM3U\n#EXTINF:1.0,\n").is_err());
        assert!(Playlist::parse("#EXTM3U\n#EXTINF:1.0,\na.ts").is_err());
        assert!(Playlist::parse("#EXTM3U\n#EXTINF:1.0,\na.ts\n#EXT-X-MEDIA-SEQUENCE:2\n").is_err());
        assert!(Playlist::parse("#EXTM3U\na.ts\n").is_err());
        assert!(Playlist::parse("#EXTM3U\n#EXT-X-ENDLIST\n#EXTINF:1.0,\na.ts\n").is_err());
    }

    #[test]
    fn flags_target_duration_violation() {
        let pl = Playlist::parse(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.5,\na.ts\n",
        )
        .expect("parses");
        assert_eq!(pl.rfc_violations().len(), 1);
        let pl = Playlist::parse(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.499,\na.ts\n",
        )
        .expect("parses");
        assert!(pl.rfc_violations().is_empty());
    }
}
