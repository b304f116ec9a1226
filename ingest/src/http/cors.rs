//! Cross-origin access to the HLS tree and the API, so players embedded on
//! other sites (and hls.js, which fetches with XHR) can load streams.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

/// Who may read responses from another origin, from `http.corsAllowOrigin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers (`""`): only same-origin pages can use the streams.
    Off,
    /// `Access-Control-Allow-Origin: *` (the default).
    Any,
    /// Only these exact origins (`https://a.example, https://b.example`);
    /// the matching one is echoed, with `Vary: Origin`.
    Origins(Vec<HeaderValue>),
}

/// Response headers a script may read besides the CORS-safelisted ones:
/// hls.js looks at the range and validators of what it fetched.
const EXPOSE: &str = "Content-Length, Content-Range, ETag, Date";
const METHODS: &str = "GET, HEAD, OPTIONS";
/// Request headers a player sends that are not CORS-safelisted.
const DEFAULT_ALLOW_HEADERS: &str = "Range, If-None-Match, If-Modified-Since, If-Range";
/// Browsers cache a preflight answer this long (they cap it themselves).
const MAX_AGE: &str = "86400";

impl Cors {
    /// Parses the setting: `*`, empty, or a comma-separated list of origins.
    /// An origin that is not a valid header value is an error naming it.
    pub fn parse(setting: &str) -> Result<Self, String> {
        let setting = setting.trim();
        if setting.is_empty() {
            return Ok(Self::Off);
        }
        if setting == "*" {
            return Ok(Self::Any);
        }
        let mut origins = Vec::new();
        for o in setting.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if o == "*" {
                return Ok(Self::Any);
            }
            origins.push(HeaderValue::from_str(o).map_err(|_| format!("invalid origin {o:?}"))?);
        }
        Ok(Self::Origins(origins))
    }

    /// The `Access-Control-Allow-Origin` value for a request, if allowed.
    fn allowed(&self, request: &HeaderMap) -> Option<HeaderValue> {
        match self {
            Self::Off => None,
            Self::Any => Some(HeaderValue::from_static("*")),
            Self::Origins(list) => {
                let origin = request.get(header::ORIGIN)?;
                list.iter().find(|o| *o == origin).cloned()
            }
        }
    }

    /// Adds the headers of a CORS response to an actual (non-preflight)
    /// request's response.
    pub fn apply(&self, request: &HeaderMap, response: &mut HeaderMap) {
        if let Self::Origins(_) = self {
            response.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(origin) = self.allowed(request) {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            response.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE),
            );
        }
    }

    /// Answers an `OPTIONS` request: a CORS preflight gets the allowed
    /// methods and headers; a plain `OPTIONS` learns the methods (`Allow`).
    pub fn preflight(&self, request: &HeaderMap) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        h.insert(header::ALLOW, HeaderValue::from_static(METHODS));
        if let Self::Origins(_) = self {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let is_preflight = request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let Some(origin) = self.allowed(request).filter(|_| is_preflight) else {
            return response;
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        // Echo the requested headers when they look like a header list:
        // these are read-only resources, any request header is harmless.
        let requested = request
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .filter(|v| {
                v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(b))
            })
            .cloned();
        match requested {
            Some(v) if !v.is_empty() => {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
                h.append(
                    header::VARY,
                    HeaderValue::from_static("Access-Control-Request-Headers"),
                );
            }
            _ => {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(DEFAULT_ALLOW_HEADERS),
                );
            }
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn parses_settings() {
        assert_eq!(Cors::parse("").unwrap(), Cors::Off);
        assert_eq!(Cors::parse("*").unwrap(), Cors::Any);
        assert_eq!(
            Cors::parse("https://a.test, https://b.test").unwrap(),
            Cors::Origins(vec![
                HeaderValue::from_static("https://a.test"),
                HeaderValue::from_static("https://b.test")
            ])
        );
        assert!(Cors::parse("https://a.test\n").is_ok());
        assert!(Cors::parse("bad\u{7f}origin").is_err());
    }

    #[test]
    fn echoes_only_listed_origins() {
        let cors = Cors::parse("https://a.test").unwrap();
        let mut out = HeaderMap::new();
        cors.apply(&req(&[(header::ORIGIN, "https://a.test")]), &mut out);
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.test");
        assert_eq!(out[header::VARY], "Origin");
        let mut out = HeaderMap::new();
        cors.apply(&req(&[(header::ORIGIN, "https://evil.test")]), &mut out);
        assert!(!out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn preflight() {
        let r = Cors::Any.preflight(&req(&[
            (header::ORIGIN, "https://x.test"),
            (header::ACCESS_CONTROL_REQUEST_METHOD, "GET"),
            (header::ACCESS_CONTROL_REQUEST_HEADERS, "range"),
        ]));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let h = r.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "range");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], METHODS);
        let plain = Cors::Any.preflight(&HeaderMap::new());
        assert!(!plain
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(plain.headers()[header::ALLOW], METHODS);
    }
}
