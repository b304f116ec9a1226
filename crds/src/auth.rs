//! Publish authentication: who may publish which stream key.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{HumanDuration, InvalidSetting};

/// How a publish request is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AuthMode {
    /// Anyone who can reach the RTMP port may publish any valid key.
    #[default]
    None,
    /// Only stream keys listed in a file (or a mounted Secret) may publish.
    Keys,
    /// An HTTP endpoint decides, like nginx-rtmp's `on_publish`.
    Webhook,
}

/// Stream keys allowed to publish (`mode: keys`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct KeysAuth {
    /// A file with one key per line (`#` starts a comment), or a directory
    /// whose files each hold keys (a Kubernetes Secret mounted as a volume).
    /// Re-read when it changes. Set by the operator when `secretName` is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Kubernetes only: the Secret in the LiveApplication's namespace whose
    /// values are the allowed keys; the operator mounts it and sets `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// An `on_publish`-style HTTP hook (`mode: webhook`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct WebhookAuth {
    /// Receives a form-encoded POST (`call=publish`, `addr`, `clientid`,
    /// `app`, `name`, `tcUrl` and the publisher's query arguments). 2xx
    /// accepts; 3xx with `Location: <name>` accepts and publishes under that
    /// name; anything else rejects.
    pub url: String,
    /// How long to wait for the hook before rejecting.
    pub timeout: HumanDuration,
    /// Notified (fire and forget, `call=publish_done`) when a publish ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_publish_done_url: Option<String>,
}

impl Default for WebhookAuth {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout: HumanDuration::from_secs(5),
            on_publish_done_url: None,
        }
    }
}

/// Publish authentication settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookAuth>,
}

impl AuthSettings {
    /// The server-side check: the selected mode has what it needs.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        match self.mode {
            AuthMode::None => Ok(()),
            AuthMode::Keys => match self.keys.as_ref().and_then(|k| k.path.as_deref()) {
                Some(p) if !p.is_empty() => Ok(()),
                _ => Err(InvalidSetting::new(
                    "rtmp.auth.keys.path",
                    "mode keys needs a keys file or directory (rtmp.auth.keys.path)",
                )),
            },
            AuthMode::Webhook => match &self.webhook {
                Some(w) if w.url.starts_with("http://") || w.url.starts_with("https://") => {
                    if w.timeout.get().is_zero() {
                        return Err(InvalidSetting::new(
                            "rtmp.auth.webhook.timeout",
                            "must be greater than zero (e.g. 5s)",
                        ));
                    }
                    Ok(())
                }
                _ => Err(InvalidSetting::new(
                    "rtmp.auth.webhook.url",
                    "mode webhook needs an http:// or https:// URL",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_open() {
        assert_eq!(AuthSettings::default().mode, AuthMode::None);
        assert!(AuthSettings::default().validate().is_ok());
    }

    #[test]
    fn modes_need_their_section() {
        let keys: AuthSettings = serde_yaml::from_str("mode: keys\n").unwrap();
        assert_eq!(keys.validate().unwrap_err().field, "rtmp.auth.keys.path");
        let keys: AuthSettings =
            serde_yaml::from_str("mode: keys\nkeys:\n  path: /etc/keys\n").unwrap();
        assert!(keys.validate().is_ok());
        let hook: AuthSettings =
            serde_yaml::from_str("mode: webhook\nwebhook:\n  url: ftp://x\n").unwrap();
        assert_eq!(hook.validate().unwrap_err().field, "rtmp.auth.webhook.url");
        let hook: AuthSettings =
            serde_yaml::from_str("mode: webhook\nwebhook:\n  url: http://auth/publish\n").unwrap();
        assert!(hook.validate().is_ok());
        assert_eq!(hook.webhook.unwrap().timeout, HumanDuration::from_secs(5));
    }
}
