//! Publish authentication [on_publish]: decides whether a publisher may go
//! live and under which public stream name.
//!
//! The public name is what appears in HLS paths. With `keys` it comes from
//! the keys file (or the Secret's entry name), with `webhook` from a 3xx
//! `Location`, so the secret key a broadcaster types into OBS never shows up
//! in a URL viewers can see — unlike nginx-rtmp, which keeps the key.

mod keys;
pub(crate) mod webhook;

use std::net::SocketAddr;

use oxcast_crds::{AuthMode, AuthSettings};

pub use keys::KeyStore;
pub use webhook::Webhook;

use crate::stream_key::StreamKey;

/// Everything known about a publish attempt, as the webhook receives it.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub addr: SocketAddr,
    pub client_id: u64,
    pub app: String,
    /// The name the client asked for, without its query string.
    pub name: String,
    pub tc_url: String,
    /// The publisher's query arguments (`rtmp://…/app/key?token=…`).
    pub args: Vec<(String, String)>,
}

impl PublishRequest {
    /// Splits `key?a=b&c=d` into the name and its arguments.
    pub fn split_name(requested: &str) -> (String, Vec<(String, String)>) {
        match requested.split_once('?') {
            Some((name, query)) => (
                name.to_string(),
                form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect(),
            ),
            None => (requested.to_string(), Vec::new()),
        }
    }
}

/// The outcome of an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go live under this (public) name.
    Accept(StreamKey),
    /// Refused; the reason is logged, never sent to the client.
    Reject(String),
}

/// Configuration problems found when the server starts.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("webhook url {url:?}: {message}")]
    WebhookUrl { url: String, message: String },
    #[error("cannot set up TLS for the webhook: {0}")]
    Tls(std::io::Error),
}

/// The configured authorization mode, ready to answer requests.
pub enum Authorizer {
    Open,
    Keys(KeyStore),
    Webhook(Box<Webhook>),
}

impl Authorizer {
    pub fn from_settings(settings: &AuthSettings) -> Result<Self, AuthError> {
        Ok(match settings.mode {
            AuthMode::None => Self::Open,
            AuthMode::Keys => {
                let path = settings
                    .keys
                    .as_ref()
                    .and_then(|k| k.path.clone())
                    .unwrap_or_default();
                Self::Keys(KeyStore::new(path.into()))
            }
            AuthMode::Webhook => {
                let hook = settings.webhook.clone().unwrap_or_default();
                Self::Webhook(Box::new(Webhook::new(&hook)?))
            }
        })
    }

    /// The decision, when it needs no network call; `None` for the webhook.
    pub fn decide_now(&self, request: &PublishRequest) -> Option<Decision> {
        match self {
            Self::Open => Some(match StreamKey::parse(&request.name) {
                Ok(key) => Decision::Accept(key),
                Err(e) => Decision::Reject(e.to_string()),
            }),
            Self::Keys(store) => Some(match store.lookup(&request.name) {
                Ok(Some(key)) => Decision::Accept(key),
                Ok(None) => Decision::Reject("unknown stream key".into()),
                Err(e) => Decision::Reject(format!("cannot read stream keys: {e}")),
            }),
            Self::Webhook(_) => None,
        }
    }

    pub async fn authorize(&self, request: &PublishRequest) -> Decision {
        match self {
            Self::Webhook(hook) => hook.on_publish(request).await,
            _ => self
                .decide_now(request)
                .unwrap_or_else(|| Decision::Reject("no decision".into())),
        }
    }

    /// Tells the webhook a publish ended (fire and forget).
    pub fn publish_done(&self, request: PublishRequest) {
        if let Self::Webhook(hook) = self {
            hook.on_publish_done(request);
        }
    }
}
