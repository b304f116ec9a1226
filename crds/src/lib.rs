//! oxcast API types.
//!
//! One source of truth for every setting: the same Rust types describe the
//! `LiveApplication` custom resource (through schemars), the ingest server's
//! config file (through serde) and the defaults of its command line.

pub mod auth;
pub mod duration;
pub mod hls;
pub mod live_application;
pub mod server;

pub use auth::{AuthMode, AuthSettings, KeysAuth, WebhookAuth};
pub use duration::HumanDuration;
pub use hls::{
    DatetimeMode, FragmentNaming, HlsEncryption, HlsSettings, KeyAuthMode, KeyAuthorization,
    PlaylistType,
};
pub use server::{
    HttpSettings, IngestConfig, OwnershipMode, OwnershipSettings, RtmpLimits, RtmpSettings,
};

/// A setting that is out of range or inconsistent with another one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSetting {
    /// The setting's path, as it appears in the config file (e.g. `hls.maxFragment`).
    pub field: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl InvalidSetting {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
