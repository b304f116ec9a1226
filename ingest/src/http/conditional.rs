//! Conditional requests (RFC 7232) and byte ranges (RFC 7233), as pure
//! functions of the request headers and the file's validators, so every
//! rule can be tested without a socket.
//!
//! Validators: every file has a strong `ETag` derived from its modification
//! time (nanoseconds) and length. `Last-Modified` has one-second resolution,
//! so it is only a safe validator once that second is over (RFC 7232
//! §2.2.2): a playlist replaced twice within one second would otherwise
//! look unchanged to an `If-Modified-Since` client. [`Validators::dated`]
//! says whether the date may be sent and used.

use std::ops::Range;

use axum::http::{header, HeaderMap};

/// What identifies the served version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// The quoted strong entity tag, e.g. `"6650a1b2.1f3a-4e20"`.
    pub etag: String,
    /// Modification time, whole seconds since the epoch.
    pub mtime_secs: i64,
}

impl Validators {
    /// Is the modification date strong enough to send as `Last-Modified`
    /// and to honour `If-Modified-Since` / date `If-Range` against? Only
    /// once the clock has left the second the file was modified in.
    pub fn dated(&self, now_secs: i64) -> bool {
        self.mtime_secs < now_secs
    }
}

/// The outcome of the preconditions of a GET or HEAD request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the representation (subject to `Range`).
    Proceed,
    /// 304: the client's copy is current.
    NotModified,
    /// 412: an `If-Match` / `If-Unmodified-Since` condition is false.
    Failed,
}

/// One entity tag from a list header, without its `W/` prefix.
struct Tag<'a> {
    weak: bool,
    opaque: &'a str,
}

/// Splits an `If-Match` / `If-None-Match` value into entity tags; `None`
/// for `*`. Tags are `"…"` with optional `W/`; anything malformed ends the
/// list (what was parsed so far still counts).
fn tags(value: &str) -> Option<Vec<Tag<'_>>> {
    if value.trim() == "*" {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (weak, r) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let Some(r) = r.strip_prefix('"') else { break };
        let Some(end) = r.find('"') else { break };
        out.push(Tag {
            weak,
            opaque: &r[..end],
        });
        rest = &r[end + 1..];
    }
    Some(out)
}

/// The opaque part of our own (strong, quoted) tag.
fn opaque(etag: &str) -> &str {
    etag.trim_matches('"')
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn http_date_secs(value: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(value).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_secs()).ok()
}

/// Evaluates the preconditions of a GET/HEAD request in the order of
/// RFC 7232 §6.
pub fn preconditions(headers: &HeaderMap, v: &Validators, now_secs: i64) -> Precondition {
    let ours = opaque(&v.etag);
    // 1. If-Match: strong comparison.
    if let Some(value) = header_str(headers, header::IF_MATCH) {
        let matched = match tags(value) {
            None => true,
            Some(list) => list.iter().any(|t| !t.weak && t.opaque == ours),
        };
        if !matched {
            return Precondition::Failed;
        }
    } else if let Some(value) = header_str(headers, header::IF_UNMODIFIED_SINCE) {
        // 2. If-Unmodified-Since, only without If-Match; ignored if invalid.
        if let Some(since) = http_date_secs(value) {
            if v.mtime_secs > since {
                return Precondition::Failed;
            }
        }
    }
    // 3. If-None-Match: weak comparison.
    if let Some(value) = header_str(headers, header::IF_NONE_MATCH) {
        let matched = match tags(value) {
            None => true,
            Some(list) => list.iter().any(|t| t.opaque == ours),
        };
        return if matched {
            Precondition::NotModified
        } else {
            Precondition::Proceed
        };
    }
    // 4. If-Modified-Since, only without If-None-Match.
    if let Some(value) = header_str(headers, header::IF_MODIFIED_SINCE) {
        if let Some(since) = http_date_secs(value) {
            if v.dated(now_secs) && v.mtime_secs <= since && since <= now_secs {
                return Precondition::NotModified;
            }
        }
    }
    Precondition::Proceed
}

/// What to send for a GET given its `Range` / `If-Range` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// 200 with the whole body (no range, a range we ignore, or a stale
    /// `If-Range`).
    Full,
    /// 206 with these bytes.
    Partial(Range<u64>),
    /// 416: no byte of the range exists.
    Unsatisfiable,
}

/// Decides the response to a `Range` request on a body of `len` bytes.
///
/// One range is served as 206. Several ranges (multipart/byteranges) are
/// answered with the whole file, which RFC 7233 §3.1 allows and which no
/// HLS client asks for; other units and syntax errors are ignored the same
/// way.
pub fn range(headers: &HeaderMap, v: &Validators, len: u64, now_secs: i64) -> RangeOutcome {
    let Some(value) = header_str(headers, header::RANGE) else {
        return RangeOutcome::Full;
    };
    if let Some(if_range) = header_str(headers, header::IF_RANGE) {
        let current = if if_range.trim_start().starts_with(['"', 'W']) {
            // An entity tag: strong comparison only.
            !if_range.trim_start().starts_with("W/") && opaque(if_range.trim()) == opaque(&v.etag)
        } else {
            // A date: must equal a strong Last-Modified exactly.
            http_date_secs(if_range).is_some_and(|d| v.dated(now_secs) && d == v.mtime_secs)
        };
        if !current {
            return RangeOutcome::Full;
        }
    }
    let Some((unit, spec)) = value.split_once('=') else {
        return RangeOutcome::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeOutcome::Full;
    };
    let parse = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (start, end_inclusive) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            let Some(n) = parse(last) else {
                return RangeOutcome::Full;
            };
            if n == 0 || len == 0 {
                return RangeOutcome::Unsatisfiable;
            }
            (len.saturating_sub(n), len - 1)
        }
        // bytes=A-: from A to the end.
        (false, true) => {
            let Some(a) = parse(first) else {
                return RangeOutcome::Full;
            };
            (a, len.saturating_sub(1))
        }
        // bytes=A-B
        (false, false) => {
            let (Some(a), Some(b)) = (parse(first), parse(last)) else {
                return RangeOutcome::Full;
            };
            if b < a {
                // Syntactically invalid: ignore the header (RFC 7233 §2.1).
                return RangeOutcome::Full;
            }
            (a, b.min(len.saturating_sub(1)))
        }
        (true, true) => return RangeOutcome::Full,
    };
    if start >= len {
        return RangeOutcome::Unsatisfiable;
    }
    RangeOutcome::Partial(start..end_inclusive + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const NOW: i64 = 1_700_000_100;

    fn v() -> Validators {
        Validators {
            etag: "\"abc-10\"".into(),
            mtime_secs: 1_700_000_000,
        }
    }

    fn h(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, val) in pairs {
            m.append(k.clone(), HeaderValue::from_str(val).unwrap());
        }
        m
    }

    const AT: &str = "Tue, 14 Nov 2023 22:13:20 GMT"; // 1_700_000_000
    const BEFORE: &str = "Tue, 14 Nov 2023 22:13:19 GMT";

    #[test]
    fn if_none_match() {
        use Precondition::*;
        let p = |val: &str| preconditions(&h(&[(header::IF_NONE_MATCH, val)]), &v(), NOW);
        assert_eq!(p("\"abc-10\""), NotModified);
        assert_eq!(p("W/\"abc-10\""), NotModified);
        assert_eq!(p("\"x\", \"abc-10\""), NotModified);
        assert_eq!(p("*"), NotModified);
        assert_eq!(p("\"abc-11\""), Proceed);
        assert_eq!(p("abc-10"), Proceed);
        // If-None-Match wins over If-Modified-Since.
        let both = h(&[
            (header::IF_NONE_MATCH, "\"other\""),
            (header::IF_MODIFIED_SINCE, AT),
        ]);
        assert_eq!(preconditions(&both, &v(), NOW), Proceed);
    }

    #[test]
    fn if_modified_since() {
        use Precondition::*;
        let p = |val: &str, now| preconditions(&h(&[(header::IF_MODIFIED_SINCE, val)]), &v(), now);
        assert_eq!(p(AT, NOW), NotModified);
        assert_eq!(p(BEFORE, NOW), Proceed);
        assert_eq!(p("garbage", NOW), Proceed);
        // Modified in the current second: the date is not a safe validator.
        assert_eq!(p(AT, 1_700_000_000), Proceed);
        // A date in the future is ignored.
        assert_eq!(p("Tue, 14 Nov 2023 22:20:00 GMT", NOW), Proceed);
    }

    #[test]
    fn if_match_and_if_unmodified_since() {
        use Precondition::*;
        let p = |k: header::HeaderName, val: &str| preconditions(&h(&[(k, val)]), &v(), NOW);
        assert_eq!(p(header::IF_MATCH, "\"abc-10\""), Proceed);
        assert_eq!(p(header::IF_MATCH, "*"), Proceed);
        assert_eq!(p(header::IF_MATCH, "W/\"abc-10\""), Failed);
        assert_eq!(p(header::IF_MATCH, "\"zzz\""), Failed);
        assert_eq!(p(header::IF_UNMODIFIED_SINCE, AT), Proceed);
        assert_eq!(p(header::IF_UNMODIFIED_SINCE, BEFORE), Failed);
    }

    #[test]
    fn ranges() {
        use RangeOutcome::*;
        let r = |val: &str, len| range(&h(&[(header::RANGE, val)]), &v(), len, NOW);
        assert_eq!(r("bytes=0-99", 1000), Partial(0..100));
        assert_eq!(r("bytes=900-", 1000), Partial(900..1000));
        assert_eq!(r("bytes=-100", 1000), Partial(900..1000));
        assert_eq!(r("bytes=-5000", 1000), Partial(0..1000));
        assert_eq!(r("bytes=990-2000", 1000), Partial(990..1000));
        assert_eq!(r("BYTES = 1-1", 1000), Partial(1..2));
        assert_eq!(r("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(r("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=5-1", 1000), Full);
        assert_eq!(r("bytes=0-1,5-6", 1000), Full);
        assert_eq!(r("items=0-1", 1000), Full);
        assert_eq!(r("bytes=a-b", 1000), Full);
        assert_eq!(r("bytes=-", 1000), Full);
    }

    #[test]
    fn if_range() {
        use RangeOutcome::*;
        let r = |if_range: &str| {
            range(
                &h(&[(header::RANGE, "bytes=0-0"), (header::IF_RANGE, if_range)]),
                &v(),
                10,
                NOW,
            )
        };
        assert_eq!(r("\"abc-10\""), Partial(0..1));
        assert_eq!(r("\"old\""), Full);
        assert_eq!(r("W/\"abc-10\""), Full);
        assert_eq!(r(AT), Partial(0..1));
        assert_eq!(r(BEFORE), Full);
    }
}
