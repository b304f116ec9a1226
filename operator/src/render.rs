//! The ingest server's config file, rendered from a LiveApplication spec.
//!
//! The pods read `oxcast_crds::IngestConfig` as YAML from a ConfigMap; the
//! spec embeds the same settings types, so rendering is a copy plus the one
//! thing only the operator knows: where it mounted the stream-keys Secret.

use oxcast_crds::live_application::{LiveApplicationSpec, StorageSpec};
use oxcast_crds::{AuthMode, IngestConfig, InvalidSetting, KeyAuthMode, OwnershipMode};
use sha2::{Digest, Sha256};

/// Where the ConfigMap is mounted in every container.
pub const CONFIG_DIR: &str = "/etc/oxcast";
/// The config file's key in the ConfigMap (and its name in [`CONFIG_DIR`]).
pub const CONFIG_KEY: &str = "config.yaml";
/// The HLS tree inside the pods.
pub const HLS_ROOT: &str = "/var/lib/oxcast/hls";
/// Where the stream-keys Secret is mounted: a directory whose entries are
/// the keys, which the server reads as such and re-reads on change.
pub const KEYS_DIR: &str = "/var/run/oxcast/stream-keys";

/// With `hls.encryption` on, the HLS volume is mounted here instead, and
/// holds the tree and the encryption keys side by side ([`hls_root`],
/// [`key_dir`]): keys on the shared volume, outside the served tree.
pub const DATA_DIR: &str = "/var/lib/oxcast/data";
/// Where the key-token Secret (`hls.encryption.authorization.secretName`)
/// is mounted: in the HTTP containers only.
pub const KEY_TOKEN_DIR: &str = "/var/run/oxcast/key-token";

fn encrypted(spec: &LiveApplicationSpec) -> bool {
    spec.hls.encryption.enabled
}

/// Where the HLS volume is mounted.
pub fn volume_mount_path(spec: &LiveApplicationSpec) -> &'static str {
    if encrypted(spec) {
        DATA_DIR
    } else {
        HLS_ROOT
    }
}

/// The HLS tree in the containers (`--hls-root`).
pub fn hls_root(spec: &LiveApplicationSpec) -> String {
    if encrypted(spec) {
        format!("{DATA_DIR}/hls")
    } else {
        HLS_ROOT.to_string()
    }
}

/// The key directory (`--hls-key-dir`), with encryption on.
pub fn key_dir(spec: &LiveApplicationSpec) -> Option<String> {
    encrypted(spec).then(|| format!("{DATA_DIR}/keys"))
}

/// The Secret holding the key-token HMAC secret (keys `secret`, optional
/// `previous`), for signed key delivery.
pub fn key_token_secret(spec: &LiveApplicationSpec) -> Option<&str> {
    let e = &spec.hls.encryption;
    (e.enabled && e.authorization.mode == KeyAuthMode::Signed)
        .then_some(e.authorization.secret_name.as_deref())
        .flatten()
        .filter(|s| !s.is_empty())
}

/// Full path of the config file in the containers.
pub fn config_path() -> String {
    format!("{CONFIG_DIR}/{CONFIG_KEY}")
}

/// Whether the ingest pods prove stream ownership through Leases: the HLS
/// tree is on a claim (`storage.persistentVolumeClaim` or
/// `storage.existingClaim`), which outlives pods and can be mounted by
/// several of them at once (ReadWriteMany on any nodes, ReadWriteOnce by
/// every pod on one node, and old and new pods during a rollout). An
/// `emptyDir` belongs to one pod, so ownership stays in-process.
pub fn uses_leases(storage: &StorageSpec) -> bool {
    storage.persistent_volume_claim.is_some() || storage.existing_claim.is_some()
}

/// The config the pods of the LiveApplication `app` run with.
pub fn ingest_config(spec: &LiveApplicationSpec, app: &str) -> IngestConfig {
    let mut config = spec.ingest_config();
    if let Some(keys) = config.rtmp.auth.keys.as_mut() {
        if keys.secret_name.is_some() {
            keys.path = Some(KEYS_DIR.to_string());
        }
    }
    if key_token_secret(spec).is_some() {
        let a = &mut config.hls.encryption.authorization;
        a.secret_file = Some(format!("{KEY_TOKEN_DIR}/secret"));
        a.previous_secret_file = Some(format!("{KEY_TOKEN_DIR}/previous"));
    }
    if uses_leases(&spec.storage) {
        // One Lease group per LiveApplication: two applications in one
        // namespace never share a stream.
        config.ownership.mode = OwnershipMode::Leases;
        config.ownership.lease_prefix = Some(app.to_string());
    }
    config
}

/// The Secret to mount for `keys` auth, if any.
pub fn keys_secret(spec: &LiveApplicationSpec) -> Option<&str> {
    let auth = &spec.rtmp.settings.auth;
    match auth.mode {
        AuthMode::Keys => auth
            .keys
            .as_ref()
            .and_then(|k| k.secret_name.as_deref())
            .filter(|s| !s.is_empty()),
        AuthMode::None | AuthMode::Webhook => None,
    }
}

/// Checks what the server would check at startup, so a spec the server
/// would refuse never reaches the pods (they would only crash-loop).
pub fn validate(config: &IngestConfig) -> Result<(), InvalidSetting> {
    config.validate()
}

/// The config file's text.
pub fn render(config: &IngestConfig) -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(config)?;
    Ok(format!(
        "# Rendered by oxcast-operator from the LiveApplication spec; edits are overwritten.\n{body}"
    ))
}

/// Checksum of what the ingest (`rtmp`) role reads from the config file:
/// everything but the `http` section. On the ingest pod template, so a
/// change rolls the ingest pods; an HTTP-only change does not.
///
/// Everything not known to be HTTP-only counts, so a section added later
/// rolls the ingest pods until someone decides otherwise.
pub fn ingest_checksum(config: &IngestConfig) -> Result<String, serde_yaml::Error> {
    let ingest_part = IngestConfig {
        http: Default::default(),
        ..config.clone()
    };
    Ok(checksum(&serde_yaml::to_string(&ingest_part)?))
}

/// Checksum of what the `http` role reads from the config file: its
/// `http` section (it serves whatever tree it finds, nested or flat) and
/// `hls.encryption` (key delivery: path, authorization mode, secret files).
/// On the pod template of every pod running the HTTP server (the ingest pods
/// in sidecar mode, the HTTP Deployment's pods in deployment mode).
pub fn http_checksum(config: &IngestConfig) -> Result<String, serde_yaml::Error> {
    let http_part = (&config.http, &config.hls.encryption);
    Ok(checksum(&serde_yaml::to_string(&http_part)?))
}

/// Hex SHA-256 of `text`.
pub fn checksum(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxcast_crds::{AuthSettings, KeysAuth};

    #[test]
    fn the_rendered_file_is_what_the_server_reads() {
        let spec = LiveApplicationSpec::default();
        let text = render(&ingest_config(&spec, "live")).expect("render");
        let back: IngestConfig = serde_yaml::from_str(&text).expect("the server can parse it");
        assert_eq!(back, IngestConfig::default());
        assert!(validate(&back).is_ok());
    }

    #[test]
    fn keys_auth_points_at_the_mounted_secret() {
        let mut spec = LiveApplicationSpec::default();
        spec.rtmp.settings.auth = AuthSettings {
            mode: AuthMode::Keys,
            keys: Some(KeysAuth {
                path: None,
                secret_name: Some("stream-keys".into()),
            }),
            webhook: None,
        };
        let config = ingest_config(&spec, "live");
        assert_eq!(
            config
                .rtmp
                .auth
                .keys
                .as_ref()
                .and_then(|k| k.path.as_deref()),
            Some(KEYS_DIR)
        );
        assert!(validate(&config).is_ok(), "the server accepts it");
        assert_eq!(keys_secret(&spec), Some("stream-keys"));
    }

    #[test]
    fn http_server_settings_are_passed_through() {
        let mut spec = LiveApplicationSpec::default();
        spec.http.settings.path_prefix = "/hls".into();
        spec.http.settings.cors_allow_origin = "https://player.example".into();
        spec.http.settings.cache_size_mib = 16;
        let config = ingest_config(&spec, "live");
        assert_eq!(config.http, spec.http.settings);
        let text = render(&config).expect("render");
        assert!(
            text.contains("corsAllowOrigin: https://player.example"),
            "{text}"
        );
        assert!(text.contains("cacheSizeMib: 16"), "{text}");
    }

    #[test]
    fn claims_get_lease_ownership_named_after_the_application() {
        let spec = LiveApplicationSpec::default();
        assert!(
            spec.storage.empty_dir.is_some(),
            "the default is an emptyDir"
        );
        let config = ingest_config(&spec, "live");
        assert_eq!(config.ownership, oxcast_crds::OwnershipSettings::default());
        let text = render(&config).expect("render");
        assert!(
            !text.contains("ownership"),
            "in-process stays implicit: {text}"
        );

        let mut shared = spec.clone();
        shared.storage = serde_json::from_value(serde_json::json!({
            "existingClaim": {"claimName": "hls"}
        }))
        .expect("storage");
        let config = ingest_config(&shared, "live");
        assert_eq!(config.ownership.mode, OwnershipMode::Leases);
        assert_eq!(config.ownership.lease_prefix.as_deref(), Some("live"));
        assert!(validate(&config).is_ok(), "the server accepts it");
        let text = render(&config).expect("render");
        assert!(
            text.contains("ownership:\n  mode: leases\n  leasePrefix: live\n"),
            "{text}"
        );
        let back: IngestConfig = serde_yaml::from_str(&text).expect("the server can parse it");
        assert_eq!(back, config);
    }

    #[test]
    fn http_settings_only_change_the_http_checksum() {
        let spec = LiveApplicationSpec::default();
        let before = ingest_config(&spec, "live");
        let mut http_only = spec.clone();
        http_only.http.settings.cors_allow_origin = "https://player.example".into();
        http_only.http.settings.cache_size_mib = 16;
        let after = ingest_config(&http_only, "live");
        assert_eq!(ingest_checksum(&before).ok(), ingest_checksum(&after).ok());
        assert_ne!(http_checksum(&before).ok(), http_checksum(&after).ok());

        let mut ingest_only = spec.clone();
        ingest_only.rtmp.settings.limits.max_publishers = 7;
        ingest_only.hls.fragment = oxcast_crds::HumanDuration::from_secs(2);
        let after = ingest_config(&ingest_only, "live");
        assert_ne!(ingest_checksum(&before).ok(), ingest_checksum(&after).ok());
        assert_eq!(http_checksum(&before).ok(), http_checksum(&after).ok());
    }

    #[test]
    fn checksum_changes_with_the_text() {
        assert_eq!(checksum("a"), checksum("a"));
        assert_ne!(checksum("a"), checksum("b"));
        assert_eq!(checksum("").len(), 64);
    }
}
