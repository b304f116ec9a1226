//! Signed key tokens (`hls.encryption.authorization.mode: signed`), pure.
//!
//! A website that decides who may watch a stream mints a token and puts it
//! on the playlist URL only (`…/<stream>/index.m3u8?token=<token>`); the
//! HTTP role copies it onto the key URIs of the playlist it returns, and
//! serves a key only for a valid token of that key's stream.
//!
//! Format, version 1 (test vectors: `docs/key-token-vectors.json`):
//!
//! ```text
//! token     = expires "." viewer "." signature
//! expires   = Unix time in seconds (decimal) after which the token is refused
//! viewer    = 0-64 characters of A-Z a-z 0-9 _ - (may be empty): whom the
//!             token was minted for; signed, logged with key requests, and
//!             when not empty bound to the viewer: a key is served only to
//!             a request whose viewer cookie (`viewerCookie`, default
//!             `oxcast_viewer`) has exactly this value ([`check_viewer`])
//! signature = lowercase hex of HMAC-SHA-256(secret,
//!             "oxcast-key-v1\n" + stream + "\n" + expires + "\n" + viewer)
//! ```
//!
//! `secret` is the secret file's bytes without trailing whitespace.
//! Verification is constant time (`hmac`'s `verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation: what a v1 key token signs starts with this line.
const CONTEXT: &str = "oxcast-key-v1";
/// Longest viewer id.
pub const MAX_VIEWER_LEN: usize = 64;
/// Longest token accepted (a v1 token is at most about 150 bytes).
pub const MAX_TOKEN_LEN: usize = 256;

/// Why a token was refused (all answered 403, without key bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not match (tampered, another stream, or an unknown secret)")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error(
        "token is bound to another viewer (the request's viewer cookie is missing or differs)"
    )]
    ViewerMismatch,
}

impl TokenError {
    /// The refusal as one word, for logs and the test vectors.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad-signature",
            Self::Expired => "expired",
            Self::ViewerMismatch => "viewer-mismatch",
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims<'a> {
    pub expires: u64,
    pub viewer: &'a str,
}

fn valid_viewer(viewer: &str) -> bool {
    viewer.len() <= MAX_VIEWER_LEN
        && viewer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Can `token` be copied into a playlist URI as it is? (Only token
/// characters: nothing that could end the quoted URI or add a parameter.)
pub fn is_token_shaped(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn mac(secret: &[u8], stream: &str, expires: u64, viewer: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts every key length"),
    };
    m.update(format!("{CONTEXT}\n{stream}\n{expires}\n{viewer}").as_bytes());
    m
}

/// Mints a token (what the website does; here for tests and tools).
/// `viewer` must be 0-64 characters of A-Z a-z 0-9 _ -.
pub fn sign(secret: &[u8], stream: &str, expires: u64, viewer: &str) -> Option<String> {
    if !valid_viewer(viewer) {
        return None;
    }
    let tag = mac(secret, stream, expires, viewer).finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in tag {
        hex.push_str(&format!("{b:02x}"));
    }
    Some(format!("{expires}.{viewer}.{hex}"))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            let pair = s.get(i..i + 2)?;
            if !pair
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return None;
            }
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

/// Checks `token` for `stream` at Unix time `now` against each of
/// `secrets` (the current one, then a previous one still in its grace).
pub fn verify<'t>(
    secrets: &[&[u8]],
    stream: &str,
    token: &'t str,
    now: u64,
) -> Result<Claims<'t>, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(expires), Some(viewer), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if expires.is_empty() || expires.len() > 20 || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::Malformed);
    }
    let expires_at: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    // The exact decimal text is what was signed: no leading zeros.
    if expires_at.to_string() != expires || !valid_viewer(viewer) {
        return Err(TokenError::Malformed);
    }
    let signature = unhex(signature).ok_or(TokenError::Malformed)?;
    let matched = secrets.iter().any(|secret| {
        mac(secret, stream, expires_at, viewer)
            .verify_slice(&signature)
            .is_ok()
    });
    if !matched {
        return Err(TokenError::BadSignature);
    }
    if now > expires_at {
        return Err(TokenError::Expired);
    }
    Ok(Claims {
        expires: expires_at,
        viewer,
    })
}

/// The value of cookie `name` in `Cookie` header values (RFC 6265 §5.4:
/// `name=value` pairs separated by `; `; a value may be in double quotes).
/// `None` when absent or given more than once with different values (an
/// ambiguous request is not trusted).
pub fn cookie<'h>(headers: impl IntoIterator<Item = &'h str>, name: &str) -> Option<&'h str> {
    let mut found: Option<&str> = None;
    for header in headers {
        for pair in header.split(';') {
            let Some((n, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if n.trim() != name {
                continue;
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            match found {
                Some(f) if f != v => return None,
                _ => found = Some(v),
            }
        }
    }
    found
}

/// A token minted for a viewer is good only for that viewer: `presented`
/// is the request's viewer cookie. Tokens with an empty viewer are bound
/// to nobody.
pub fn check_viewer(claims: &Claims<'_>, presented: Option<&str>) -> Result<(), TokenError> {
    if claims.viewer.is_empty() || presented == Some(claims.viewer) {
        Ok(())
    } else {
        Err(TokenError::ViewerMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vectors {
        sign: Vec<SignVector>,
        verify: Vec<VerifyVector>,
    }

    #[derive(serde::Deserialize)]
    struct SignVector {
        secret: String,
        stream: String,
        expires: u64,
        viewer: String,
        token: String,
    }

    #[derive(serde::Deserialize)]
    struct VerifyVector {
        secret: String,
        stream: String,
        token: String,
        now: u64,
        /// "ok" or the refusal.
        result: String,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(include_str!("../../../docs/key-token-vectors.json")).unwrap()
    }

    #[test]
    fn published_vectors_sign_and_verify() {
        let v = vectors();
        assert!(v.sign.len() >= 3 && v.verify.len() >= 5);
        for s in &v.sign {
            let token = sign(s.secret.as_bytes(), &s.stream, s.expires, &s.viewer).unwrap();
            assert_eq!(token, s.token, "{}/{}", s.stream, s.viewer);
            let claims = verify(&[s.secret.as_bytes()], &s.stream, &token, s.expires).unwrap();
            assert_eq!(claims.viewer, s.viewer);
        }
        for c in &v.verify {
            let got = match verify(&[c.secret.as_bytes()], &c.stream, &c.token, c.now) {
                Ok(_) => "ok",
                Err(e) => e.reason(),
            };
            assert_eq!(got, c.result, "{} for {}", c.token, c.stream);
        }
    }

    #[test]
    fn refuses_tampering_other_streams_expiry_and_unknown_secrets() {
        let secret = b"s3cret";
        let t = sign(secret, "cam", 2_000, "alice").unwrap();
        assert!(verify(&[secret], "cam", &t, 2_000).is_ok());
        assert_eq!(
            verify(&[secret], "cam", &t, 2_001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&[secret], "cam2", &t, 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(&[b"other"], "cam", &t, 0),
            Err(TokenError::BadSignature)
        );
        // Rotation: the previous secret is still accepted when offered.
        assert!(verify(&[b"new", secret], "cam", &t, 0).is_ok());
        let later = t.replacen("2000.", "3000.", 1);
        assert_eq!(
            verify(&[secret], "cam", &later, 0),
            Err(TokenError::BadSignature)
        );
        let bob = t.replacen(".alice.", ".bob.", 1);
        assert_eq!(
            verify(&[secret], "cam", &bob, 0),
            Err(TokenError::BadSignature)
        );
        for bad in [
            "",
            "2000",
            "2000.alice",
            "02000.alice.00",
            "x.alice.00",
            "2000.al ice.00",
            &format!("{t}.x"),
            &t.to_uppercase(),
        ] {
            assert!(verify(&[secret], "cam", bad, 0).is_err(), "{bad}");
        }
        assert!(sign(secret, "cam", 1, "a.b").is_none());
        assert!(is_token_shaped(&t));
        assert!(!is_token_shaped("a\"b"));
        assert!(!is_token_shaped("a&b=c"));
    }

    #[test]
    fn a_bound_token_needs_its_viewer_cookie() {
        let secret = b"s3cret";
        let alice = sign(secret, "cam", 2_000, "alice").unwrap();
        let claims = verify(&[secret], "cam", &alice, 0).unwrap();
        assert_eq!(check_viewer(&claims, Some("alice")), Ok(()));
        for other in [None, Some(""), Some("bob"), Some("alice2")] {
            assert_eq!(
                check_viewer(&claims, other),
                Err(TokenError::ViewerMismatch),
                "{other:?}"
            );
        }
        let anyone = sign(secret, "cam", 2_000, "").unwrap();
        let claims = verify(&[secret], "cam", &anyone, 0).unwrap();
        assert_eq!(check_viewer(&claims, None), Ok(()));
        assert_eq!(check_viewer(&claims, Some("bob")), Ok(()));
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let c = |headers: &[&'static str]| cookie(headers.iter().copied(), "oxcast_viewer");
        assert_eq!(c(&["oxcast_viewer=alice"]), Some("alice"));
        assert_eq!(c(&["a=1; oxcast_viewer=alice; b=2"]), Some("alice"));
        assert_eq!(c(&["a=1", "oxcast_viewer=\"alice\""]), Some("alice"));
        assert_eq!(c(&["xoxcast_viewer=alice; oxcast_viewer2=bob"]), None);
        assert_eq!(c(&[]), None);
        assert_eq!(c(&["oxcast_viewer"]), None);
        // Sent twice: the same value is fine, two values are not trusted.
        assert_eq!(c(&["oxcast_viewer=a; oxcast_viewer=a"]), Some("a"));
        assert_eq!(c(&["oxcast_viewer=a", "oxcast_viewer=b"]), None);
    }
}
