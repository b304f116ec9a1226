//! Key delivery for encrypted streams: `GET <keyPath>/<stream>/<id>.key`
//! (default `/keys/…`), answered with the 16 key bytes and
//! `Cache-Control: private, no-store`, CORS as the HLS tree, only when the
//! request is authorized ([`KeyAuthMode`]):
//!
//! - `signed`: `?token=` must be a valid token for the stream ([`token`]),
//!   and a token minted for a viewer needs that viewer in the request's
//!   viewer cookie. The website puts the token on the playlist URL only;
//!   [`carry_token`] copies it onto the key URIs of the playlist the HLS
//!   route returns.
//! - `webhook`: the viewer's `Cookie` and `Authorization` headers, the
//!   stream and key id go to a URL (nginx `auth_request`); 2xx serves.
//!   Decisions are cached briefly per viewer and stream.
//! - `public`: anyone.
//!
//! Refusals are 403 with no key bytes. Key files are read from the key
//! directory, never from the HLS tree.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use oxcast_crds::{HlsEncryption, KeyAuthMode};
use sha2::{Digest, Sha256};

use super::token::{self, TokenError};
use super::{error_response, method_not_allowed, HttpState};
use crate::auth::webhook::{https_client, parse_url, HttpsClient};
use crate::store::keys::{key_id, KeyFiles};
use crate::stream_key::StreamKey;

/// Problems with the key-delivery settings, found at start.
#[derive(Debug, thiserror::Error)]
pub enum KeyDeliveryError {
    #[error("hls.encryption.authorization.secretFile {path}: {source}")]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hls.encryption.authorization.secretFile is required for mode signed")]
    NoSecret,
    #[error("hls.encryption.authorization.secretFile {0} is empty")]
    EmptySecret(PathBuf),
    #[error("hls.encryption.authorization.webhookUrl: {0}")]
    Webhook(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Invalid(#[from] oxcast_crds::InvalidSetting),
}

/// How often the secret files are looked at again (a rotated Kubernetes
/// Secret shows up in the mounted files within a minute or so).
const SECRET_RELOAD: Duration = Duration::from_secs(5);
/// Most cached webhook decisions; the cache is emptied when full.
const WEBHOOK_CACHE_MAX: usize = 10_000;

#[derive(Clone)]
struct Secrets {
    current: Vec<u8>,
    /// The previous secret and until when it is accepted.
    previous: Option<(Vec<u8>, SystemTime)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

fn trimmed(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    bytes
}

/// The signed mode's secrets, read from files and re-read now and then so
/// a rotation needs no restart.
#[derive(Debug)]
struct SecretFiles {
    /// The cookie a viewer-bound token's viewer must be in.
    viewer_cookie: String,
    current: PathBuf,
    previous: Option<PathBuf>,
    grace: Duration,
    loaded: Mutex<(Instant, Secrets)>,
}

impl SecretFiles {
    fn load(&self) -> Result<Secrets, KeyDeliveryError> {
        let current = std::fs::read(&self.current)
            .map(trimmed)
            .map_err(|source| KeyDeliveryError::Secret {
                path: self.current.clone(),
                source,
            })?;
        if current.is_empty() {
            return Err(KeyDeliveryError::EmptySecret(self.current.clone()));
        }
        // A missing or empty previous secret is simply not accepted.
        let previous = self.previous.as_ref().and_then(|p| {
            let written = std::fs::metadata(p).and_then(|m| m.modified()).ok()?;
            let bytes = trimmed(std::fs::read(p).ok()?);
            (!bytes.is_empty()).then_some((bytes, written + self.grace))
        });
        Ok(Secrets { current, previous })
    }

    /// The secrets to check a token against now.
    async fn get(&self) -> Vec<Vec<u8>> {
        let (stale, mut secrets) = match self.loaded.lock() {
            Ok(l) => (l.0.elapsed() >= SECRET_RELOAD, l.1.clone()),
            Err(_) => return Vec::new(),
        };
        if stale {
            // File reads off the async threads.
            let me = SecretFiles {
                viewer_cookie: self.viewer_cookie.clone(),
                current: self.current.clone(),
                previous: self.previous.clone(),
                grace: self.grace,
                loaded: Mutex::new((Instant::now(), secrets.clone())),
            };
            match tokio::task::spawn_blocking(move || me.load()).await {
                Ok(Ok(fresh)) => secrets = fresh,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot re-read the key-token secret; keeping the one loaded")
                }
                Err(_) => {}
            }
            if let Ok(mut l) = self.loaded.lock() {
                *l = (Instant::now(), secrets.clone());
            }
        }
        let now = SystemTime::now();
        let mut out = vec![secrets.current];
        if let Some((previous, until)) = secrets.previous {
            if now <= until {
                out.push(previous);
            }
        }
        out
    }
}

/// The webhook mode's client and decision cache.
struct KeyWebhook {
    url: hyper::Uri,
    timeout: Duration,
    cache_for: Duration,
    client: HttpsClient,
    decisions: Mutex<HashMap<[u8; 32], (Instant, bool)>>,
}

impl std::fmt::Debug for KeyWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyWebhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// What the key webhook said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WebhookAnswer {
    /// 2xx.
    Allowed,
    /// 4xx: the webhook decided against this viewer.
    Denied,
    /// No decision (timeout, unreachable, 3xx, 5xx): denied this time.
    Unavailable,
}

impl WebhookAnswer {
    /// The decision to reuse for a while, if the webhook made one.
    fn decision(self) -> Option<bool> {
        match self {
            Self::Allowed => Some(true),
            Self::Denied => Some(false),
            Self::Unavailable => None,
        }
    }
}

const FORWARDED: [header::HeaderName; 2] = [header::COOKIE, header::AUTHORIZATION];

impl KeyWebhook {
    /// Who is asking for which stream, hashed (no credentials kept in memory).
    fn viewer(headers: &HeaderMap, stream: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        for name in &FORWARDED {
            for v in headers.get_all(name) {
                h.update(v.as_bytes());
                h.update([0u8]);
            }
            h.update([1u8]);
        }
        h.update(stream.as_bytes());
        h.finalize().into()
    }

    async fn allows(&self, headers: &HeaderMap, stream: &str, id: u64, uri: &str) -> bool {
        let who = Self::viewer(headers, stream);
        if !self.cache_for.is_zero() {
            if let Ok(d) = self.decisions.lock() {
                if let Some((at, ok)) = d.get(&who) {
                    if at.elapsed() < self.cache_for {
                        return *ok;
                    }
                }
            }
        }
        let answer = self.ask(headers, stream, id, uri).await;
        // Only the webhook's own decisions are reused: a timeout, an
        // unreachable webhook or its 5xx is asked again next time, so a
        // blip does not lock a viewer out for the cache time.
        if let (false, Some(ok)) = (self.cache_for.is_zero(), answer.decision()) {
            if let Ok(mut d) = self.decisions.lock() {
                if d.len() >= WEBHOOK_CACHE_MAX {
                    d.clear();
                }
                d.insert(who, (Instant::now(), ok));
            }
        }
        answer == WebhookAnswer::Allowed
    }

    async fn ask(&self, headers: &HeaderMap, stream: &str, id: u64, uri: &str) -> WebhookAnswer {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("stream", stream)
            .append_pair("key", &id.to_string())
            .finish();
        let url = self.url.to_string();
        let sep = if url.contains('?') { '&' } else { '?' };
        let mut request = hyper::Request::builder()
            .method(Method::GET)
            .uri(format!("{url}{sep}{query}"))
            .header("X-Original-URI", uri)
            .header("X-Oxcast-Stream", stream)
            .header("X-Oxcast-Key-Id", id.to_string());
        for name in &FORWARDED {
            for v in headers.get_all(name) {
                request = request.header(name, v);
            }
        }
        let Ok(request) = request.body(Full::new(Bytes::new())) else {
            return WebhookAnswer::Unavailable;
        };
        let call = async {
            let response = self.client.request(request).await.ok()?;
            let status = response.status();
            // Drain the body so the connection can be reused.
            let _ = response.into_body().collect().await;
            Some(status)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Some(status)) if status.is_success() => WebhookAnswer::Allowed,
            Ok(Some(status)) if status.is_client_error() => {
                tracing::debug!(stream, key_id = id, %status, "key webhook denied");
                WebhookAnswer::Denied
            }
            Ok(Some(status)) => {
                tracing::warn!(stream, key_id = id, %status, "key webhook failed; denied");
                WebhookAnswer::Unavailable
            }
            Ok(None) => {
                tracing::warn!(stream, key_id = id, "key webhook unreachable; denied");
                WebhookAnswer::Unavailable
            }
            Err(_) => {
                tracing::warn!(stream, key_id = id, timeout = ?self.timeout, "key webhook timed out; denied");
                WebhookAnswer::Unavailable
            }
        }
    }
}

#[derive(Debug)]
enum Authorization {
    Public,
    Signed(SecretFiles),
    Webhook(Box<KeyWebhook>),
}

/// Serves keys of encrypted streams.
#[derive(Debug)]
pub struct KeyDelivery {
    files: KeyFiles,
    /// URL path keys are served under (`/keys`).
    path: String,
    auth: Authorization,
}

impl KeyDelivery {
    /// Reads the secret (signed) or sets up the client (webhook).
    pub fn new(settings: &HlsEncryption, files: KeyFiles) -> Result<Self, KeyDeliveryError> {
        let a = &settings.authorization;
        a.validate()?;
        let auth = match a.mode {
            KeyAuthMode::Public => {
                tracing::warn!(
                    "hls.encryption.authorization.mode public: keys are served to anyone who asks"
                );
                Authorization::Public
            }
            KeyAuthMode::Signed => {
                let current = a.secret_file.clone().ok_or(KeyDeliveryError::NoSecret)?;
                let files = SecretFiles {
                    viewer_cookie: a.viewer_cookie.clone(),
                    current: current.into(),
                    previous: a.previous_secret_file.clone().map(PathBuf::from),
                    grace: a.previous_secret_grace.get(),
                    loaded: Mutex::new((
                        Instant::now(),
                        Secrets {
                            current: Vec::new(),
                            previous: None,
                        },
                    )),
                };
                let secrets = files.load()?;
                if let Ok(mut l) = files.loaded.lock() {
                    *l = (Instant::now(), secrets);
                }
                Authorization::Signed(files)
            }
            KeyAuthMode::Webhook => {
                let url = a.webhook_url.clone().unwrap_or_default();
                Authorization::Webhook(Box::new(KeyWebhook {
                    url: parse_url(&url)?,
                    timeout: a.webhook_timeout.get(),
                    cache_for: a.webhook_cache.get(),
                    client: https_client()?,
                    decisions: Mutex::default(),
                }))
            }
        };
        Ok(Self {
            files,
            path: settings.key_path.trim_end_matches('/').to_string(),
            auth,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether playlists get the viewer's token on their key URIs.
    pub fn carries_tokens(&self) -> bool {
        matches!(self.auth, Authorization::Signed(_))
    }
}

fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// Does the query carry a `token` parameter?
pub fn has_token(query: Option<&str>) -> bool {
    query_token(query).is_some()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `<keyPath>/<stream>/<id>.key`.
pub async fn serve_key(
    State(state): State<HttpState>,
    Path((stream, file)): Path<(String, String)>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let headers = &parts.headers;
    let mut response = match state.keys.as_deref() {
        None => error_response(StatusCode::NOT_FOUND),
        Some(_) if parts.method == Method::OPTIONS => state.cors.preflight(headers),
        Some(_) if parts.method != Method::GET && parts.method != Method::HEAD => {
            method_not_allowed()
        }
        Some(keys) => answer(keys, &stream, &file, &parts).await,
    };
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    state.cors.apply(headers, response.headers_mut());
    response
}

async fn answer(
    keys: &KeyDelivery,
    stream: &str,
    file: &str,
    request: &axum::http::request::Parts,
) -> Response {
    let (Ok(stream_key), Some(id)) = (StreamKey::parse(stream), key_id(file)) else {
        return error_response(StatusCode::NOT_FOUND);
    };
    let allowed = match &keys.auth {
        Authorization::Public => true,
        Authorization::Signed(secrets) => {
            let token = query_token(request.uri.query()).unwrap_or_default();
            let cookies = request
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok());
            let presented = token::cookie(cookies, &secrets.viewer_cookie);
            let secrets = secrets.get().await;
            let refs: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
            let checked = token::verify(&refs, stream, &token, unix_now())
                .and_then(|claims| token::check_viewer(&claims, presented).map(|()| claims));
            match checked {
                Ok(claims) => {
                    tracing::debug!(stream, key_id = id, viewer = claims.viewer, "key served");
                    true
                }
                Err(e @ (TokenError::Missing | TokenError::Expired)) => {
                    tracing::debug!(stream, key_id = id, reason = e.reason(), "key refused");
                    false
                }
                Err(e) => {
                    tracing::info!(stream, key_id = id, reason = e.reason(), error = %e, "key refused");
                    false
                }
            }
        }
        Authorization::Webhook(hook) => {
            let uri = request.uri.to_string();
            hook.allows(&request.headers, stream, id, &uri).await
        }
    };
    if !allowed {
        return error_response(StatusCode::FORBIDDEN);
    }
    let files = keys.files.clone();
    let read = tokio::task::spawn_blocking(move || files.read(&stream_key, id)).await;
    match read {
        Ok(Ok(key)) => {
            let mut r = if request.method == Method::HEAD {
                Response::new(Body::empty())
            } else {
                Response::new(Body::from(key.to_vec()))
            };
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(key.len()));
            r
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            error_response(StatusCode::NOT_FOUND)
        }
        Ok(Err(e)) => {
            tracing::warn!(stream, key_id = id, error = %e, "cannot read key");
            error_response(StatusCode::INTERNAL_SERVER_ERROR)
        }
        Err(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// The playlist text with `token` added to the URI of every `EXT-X-KEY`
/// line (signed mode: the website signs the playlist URL only). `None`
/// when the token is not token-shaped (nothing is copied then).
pub fn carry_token(playlist: &str, token: &str) -> Option<String> {
    if !token::is_token_shaped(token) {
        return None;
    }
    let mut out = String::with_capacity(playlist.len() + 128);
    for line in playlist.split_inclusive('\n') {
        let rewritten = line.strip_prefix("#EXT-X-KEY:").and_then(|_| {
            let start = line.find("URI=\"")? + 5;
            let end = start + line[start..].find('"')?;
            let uri = &line[start..end];
            let sep = if uri.contains('?') { '&' } else { '?' };
            Some(format!(
                "{}{uri}{sep}token={token}{}",
                &line[..start],
                &line[end..]
            ))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
    }
    Some(out)
}

/// Signed mode: when a playlist was asked for with `?token=`, returns it
/// with the token on its key URIs. Other responses pass unchanged.
pub async fn carry_token_in_response(query: Option<&str>, response: Response) -> Response {
    let Some(token) = query_token(query) else {
        return response;
    };
    if response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Playlists are small; anything this large is not one of ours.
    let Ok(bytes) = axum::body::to_bytes(body, 4 << 20).await else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let rewritten = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| carry_token(text, &token));
    let body = match rewritten {
        Some(text) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
            Bytes::from(text)
        }
        None => bytes,
    };
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_go_onto_key_uris_only() {
        let playlist = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-KEY:METHOD=AES-128,URI=\"/keys/cam/1.key\",IV=0x00\n#EXTINF:2.000,\n1.ts\n#EXT-X-KEY:METHOD=NONE\n#EXTINF:2.000,\n2.ts\n";
        let out = carry_token(playlist, "100.v.ab").unwrap();
        assert_eq!(
            out,
            playlist.replace("/keys/cam/1.key\"", "/keys/cam/1.key?token=100.v.ab\"")
        );
        assert!(carry_token(playlist, "x\"\n#EXT-X-ENDLIST").is_none());
        assert!(carry_token(playlist, "a&b").is_none());
        assert!(carry_token(playlist, "").is_none());
    }

    fn secret_files(dir: &std::path::Path, grace: Duration) -> SecretFiles {
        let files = SecretFiles {
            viewer_cookie: "oxcast_viewer".into(),
            current: dir.join("secret"),
            previous: Some(dir.join("previous")),
            grace,
            loaded: Mutex::new((
                Instant::now(),
                Secrets {
                    current: Vec::new(),
                    previous: None,
                },
            )),
        };
        let loaded = files.load().unwrap();
        *files.loaded.lock().unwrap() = (Instant::now(), loaded);
        files
    }

    #[tokio::test]
    async fn previous_secret_is_accepted_only_within_its_grace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "new\n").unwrap();
        std::fs::write(dir.path().join("previous"), "old").unwrap();
        let within = secret_files(dir.path(), Duration::from_secs(3600));
        assert_eq!(within.get().await, [b"new".to_vec(), b"old".to_vec()]);
        let over = secret_files(dir.path(), Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(over.get().await, [b"new".to_vec()]);
        // No previous file: just the current secret; an empty one is refused.
        std::fs::remove_file(dir.path().join("previous")).unwrap();
        assert_eq!(
            secret_files(dir.path(), Duration::from_secs(60))
                .get()
                .await,
            [b"new".to_vec()]
        );
        std::fs::write(dir.path().join("secret"), "\n").unwrap();
        let empty = SecretFiles {
            viewer_cookie: "oxcast_viewer".into(),
            current: dir.path().join("secret"),
            previous: None,
            grace: Duration::ZERO,
            loaded: Mutex::new((
                Instant::now(),
                Secrets {
                    current: Vec::new(),
                    previous: None,
                },
            )),
        };
        assert!(matches!(
            empty.load(),
            Err(KeyDeliveryError::EmptySecret(_))
        ));
    }

    #[test]
    fn webhook_viewers_differ_by_credentials_and_stream() {
        let mut a = HeaderMap::new();
        a.insert(header::COOKIE, HeaderValue::from_static("s=1"));
        let mut b = HeaderMap::new();
        b.insert(header::COOKIE, HeaderValue::from_static("s=2"));
        assert_ne!(KeyWebhook::viewer(&a, "cam"), KeyWebhook::viewer(&b, "cam"));
        assert_ne!(
            KeyWebhook::viewer(&a, "cam"),
            KeyWebhook::viewer(&a, "cam2")
        );
        assert_eq!(KeyWebhook::viewer(&a, "cam"), KeyWebhook::viewer(&a, "cam"));
    }
}
