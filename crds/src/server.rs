//! The ingest server's configuration file: the settings a `LiveApplication`
//! renders into a ConfigMap, and what `oxcast-ingest --config FILE` reads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AuthSettings, HlsSettings, HumanDuration, InvalidSetting};

/// Everything the ingest server can be told, apart from where it listens and
/// where the HLS tree lives (those are per-process, given on the command line).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IngestConfig {
    pub rtmp: RtmpSettings,
    pub hls: HlsSettings,
    pub http: HttpSettings,
    /// Who owns a live stream when several ingest replicas share one
    /// volume. Left out of the rendered file while it is the default.
    #[serde(skip_serializing_if = "OwnershipSettings::is_default")]
    pub ownership: OwnershipSettings,
}

/// How a replica proves it owns a stream (see DESIGN.md, "Scale-out: one
/// owner per stream").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OwnershipMode {
    /// One process owns every stream it publishes (the all-in-one `run`
    /// without a cluster, the single-VPS setup).
    #[default]
    InProcess,
    /// coordination.k8s.io Leases in the application's namespace: one
    /// heartbeat Lease per replica, one Lease per live stream.
    Leases,
}

/// Stream ownership across replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct OwnershipSettings {
    pub mode: OwnershipMode,
    /// Prefix of the Lease names (the LiveApplication's name, so two
    /// applications in one namespace never share a stream); default: the
    /// RTMP app.
    pub lease_prefix: Option<String>,
    /// A replica whose heartbeat Lease was not renewed for this long is
    /// dead: its streams may be taken over, and it stops writing them itself
    /// (fencing) before that.
    pub lease_duration: HumanDuration,
    /// How often a replica renews its heartbeat Lease (one API write per
    /// interval per replica, however many streams it owns).
    pub renew_interval: HumanDuration,
}

impl Default for OwnershipSettings {
    fn default() -> Self {
        Self {
            mode: OwnershipMode::InProcess,
            lease_prefix: None,
            lease_duration: HumanDuration::from_secs(10),
            renew_interval: HumanDuration::from_secs(2),
        }
    }
}

impl OwnershipSettings {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// RTMP ingest settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RtmpSettings {
    /// The RTMP application publishers connect to (`rtmp://host/<app>/<key>`).
    pub app: String,
    /// Let RTMP players watch live streams (nginx-rtmp `allow play`); denied
    /// by default as in the reference `deny play all`.
    pub allow_play: bool,
    /// Who may publish.
    pub auth: AuthSettings,
    /// Connection and resource limits.
    pub limits: RtmpLimits,
}

impl Default for RtmpSettings {
    fn default() -> Self {
        Self {
            app: "app".to_string(),
            allow_play: false,
            auth: AuthSettings::default(),
            limits: RtmpLimits::default(),
        }
    }
}

/// Limits that keep one client from hurting the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RtmpLimits {
    /// Time a client has to complete the RTMP handshake.
    pub handshake_timeout: HumanDuration,
    /// A publisher that sends no media for this long is disconnected and its
    /// stream ended [drop_idle_publisher].
    pub idle_timeout: HumanDuration,
    /// Open RTMP connections at most [max_connections]; more are refused.
    #[schemars(range(min = 1))]
    pub max_connections: u32,
    /// Concurrent publishers at most; more are refused.
    #[schemars(range(min = 1))]
    pub max_publishers: u32,
    /// Largest RTMP message accepted, in bytes; a larger one closes the
    /// connection.
    #[schemars(range(min = 65536))]
    pub max_message_size: u32,
}

impl Default for RtmpLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: HumanDuration::from_secs(10),
            idle_timeout: HumanDuration::from_secs(30),
            max_connections: 1000,
            max_publishers: 100,
            max_message_size: 8 * 1024 * 1024,
        }
    }
}

/// HTTP serving settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpSettings {
    /// URL path under which the HLS tree is served (`/live/<stream>/index.m3u8`).
    pub path_prefix: String,
    /// `Access-Control-Allow-Origin` for the HLS tree and the API: `*` (any
    /// site may embed the streams), a comma-separated list of exact origins
    /// (`https://a.example, https://b.example`), or empty for no CORS.
    pub cors_allow_origin: String,
    /// Memory for recently served playlists and segments, in MiB; files
    /// larger than an eighth of it are read from disk each time. 0 disables
    /// the cache.
    #[schemars(range(max = 65536))]
    pub cache_size_mib: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            path_prefix: "/live".to_string(),
            cors_allow_origin: "*".to_string(),
            cache_size_mib: 64,
        }
    }
}

/// Characters allowed in an RTMP application name.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl IngestConfig {
    /// Checks every section; the error names the setting to fix.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let own = &self.ownership;
        if own.lease_duration.get() < std::time::Duration::from_secs(2) {
            return Err(InvalidSetting::new(
                "ownership.leaseDuration",
                "must be at least 2s",
            ));
        }
        if own.renew_interval.get().is_zero()
            || own.renew_interval.get() * 3 > own.lease_duration.get()
        {
            return Err(InvalidSetting::new(
                "ownership.renewInterval",
                "must be more than 0 and at most a third of leaseDuration",
            ));
        }
        if let Some(prefix) = &own.lease_prefix {
            if prefix.is_empty() || prefix.len() > 63 || !prefix.chars().all(is_name_char) {
                return Err(InvalidSetting::new(
                    "ownership.leasePrefix",
                    format!("{prefix:?} must be 1-63 characters of A-Z a-z 0-9 . _ -"),
                ));
            }
        }
        let app = &self.rtmp.app;
        if app.is_empty() || app.len() > 128 || !app.chars().all(is_name_char) {
            return Err(InvalidSetting::new(
                "rtmp.app",
                format!("{app:?} must be 1-128 characters of A-Z a-z 0-9 . _ -"),
            ));
        }
        let prefix = &self.http.path_prefix;
        if !prefix.starts_with('/')
            || prefix.contains("..")
            || prefix.contains("//")
            || (prefix.len() > 1 && prefix.ends_with('/'))
        {
            return Err(InvalidSetting::new(
                "http.pathPrefix",
                format!("{prefix:?} must be an absolute URL path such as /live, without a trailing slash"),
            ));
        }
        let keys = &self.hls.encryption.key_path;
        let under =
            |a: &str, b: &str| a == b || a.starts_with(&format!("{}/", b.trim_end_matches('/')));
        if self.hls.encryption.enabled && (under(keys, prefix) || under(prefix, keys)) {
            return Err(InvalidSetting::new(
                "hls.encryption.keyPath",
                format!("{keys:?} overlaps http.pathPrefix {prefix:?}: keys are never served under the HLS prefix"),
            ));
        }
        let cookie = &self.hls.encryption.authorization.viewer_cookie;
        if self.hls.encryption.enabled && !crate::hls::valid_cookie_name(cookie) {
            return Err(InvalidSetting::new(
                "hls.encryption.authorization.viewerCookie",
                format!("{cookie:?} must be a cookie name: letters, digits and !#$%&*+-.^_|~"),
            ));
        }
        let cors = &self.http.cors_allow_origin;
        if !cors.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
            return Err(InvalidSetting::new(
                "http.corsAllowOrigin",
                format!("{cors:?} must be *, empty, or comma-separated origins"),
            ));
        }
        if self.http.cache_size_mib > 65536 {
            return Err(InvalidSetting::new(
                "http.cacheSizeMib",
                "must be at most 65536 (64 GiB)",
            ));
        }
        let limits = &self.rtmp.limits;
        if limits.handshake_timeout.get().is_zero() || limits.idle_timeout.get().is_zero() {
            return Err(InvalidSetting::new(
                "rtmp.limits",
                "handshakeTimeout and idleTimeout must be greater than zero",
            ));
        }
        if limits.max_connections == 0 || limits.max_publishers == 0 {
            return Err(InvalidSetting::new(
                "rtmp.limits",
                "maxConnections and maxPublishers must be at least 1",
            ));
        }
        if limits.max_message_size < 65536 {
            return Err(InvalidSetting::new(
                "rtmp.limits.maxMessageSize",
                "must be at least 65536 bytes (a keyframe of HD video is larger)",
            ));
        }
        self.rtmp.auth.validate()?;
        self.hls.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_reference_defaults() {
        let c: IngestConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(c, IngestConfig::default());
        assert_eq!(c.rtmp.app, "app");
        assert!(!c.rtmp.allow_play);
        assert_eq!(c.http.path_prefix, "/live");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn rejects_bad_app_and_prefix() {
        let mut c = IngestConfig::default();
        c.rtmp.app = "a/b".into();
        assert_eq!(c.validate().unwrap_err().field, "rtmp.app");
        c.rtmp.app = "app".into();
        c.http.path_prefix = "live".into();
        assert_eq!(c.validate().unwrap_err().field, "http.pathPrefix");
        c.http.path_prefix = "/".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn http_defaults_and_limits() {
        let c = IngestConfig::default();
        assert_eq!(c.http.cors_allow_origin, "*");
        assert_eq!(c.http.cache_size_mib, 64);
        let mut c: IngestConfig = serde_yaml::from_str(
            "http:\n  corsAllowOrigin: 'https://a.example, https://b.example'\n  cacheSizeMib: 0\n",
        )
        .unwrap();
        assert!(c.validate().is_ok());
        c.http.cors_allow_origin = "https://a.example\nX-Evil: 1".into();
        assert_eq!(c.validate().unwrap_err().field, "http.corsAllowOrigin");
        c.http.cors_allow_origin = "*".into();
        c.http.cache_size_mib = 65537;
        assert_eq!(c.validate().unwrap_err().field, "http.cacheSizeMib");
    }
}
