//! HLS packaging settings, named after the nginx-rtmp directives they replace.
//! Defaults reproduce the reference VPS configuration
//! (`hls on; hls_nested on; hls_fragment_naming system; hls_datetime system;`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{HumanDuration, InvalidSetting};

/// How segment files are named [hls_fragment_naming].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FragmentNaming {
    /// Wall-clock milliseconds since the Unix epoch at the segment's start (13 digits).
    #[default]
    System,
    /// 0, 1, 2, … continuing the media sequence.
    Sequential,
    /// The segment's first decode timestamp on the 90 kHz clock.
    Timestamp,
}

/// Whether segments carry `EXT-X-PROGRAM-DATE-TIME` [hls_datetime].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatetimeMode {
    /// Every segment is stamped with the wall-clock time of its first frame.
    #[default]
    System,
    /// No date-time tags.
    None,
}

/// `EXT-X-PLAYLIST-TYPE` [hls_type].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlaylistType {
    /// A sliding window of the last `playlistLength` of media.
    #[default]
    Live,
    /// Segments are only ever appended; nothing leaves the playlist.
    Event,
}

/// How the ingest server cuts, names, lists and removes HLS segments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HlsSettings {
    /// Target segment length [hls_fragment]: a segment is cut on the first
    /// video keyframe (on audio for audio-only streams) once it is this long.
    pub fragment: HumanDuration,
    /// Longest segment [hls_max_fragment], and the forced-cut switch.
    /// Unset (the default): segments are cut only on keyframes, so every
    /// segment starts with one and plays on its own
    /// (EXT-X-INDEPENDENT-SEGMENTS); a publisher whose keyframe interval is
    /// longer than `fragment` gets segments one keyframe interval long (and
    /// a warning telling it to key every `fragment`); one that sends no
    /// keyframe for 10 × `fragment` (nginx-rtmp's default) has its media
    /// up to the next keyframe dropped. Set: a segment is cut at this length
    /// even between keyframes, which bounds segment length and latency; the
    /// media stays continuous (no discontinuity), but a segment cut there
    /// starts mid-GOP, so a viewer who joins on it sees nothing until the
    /// next keyframe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_fragment: Option<HumanDuration>,
    /// How much media the live playlist lists [hls_playlist_length].
    pub playlist_length: HumanDuration,
    /// One directory per stream (`<stream>/index.m3u8`) instead of flat
    /// `<stream>.m3u8` files [hls_nested].
    pub nested: bool,
    /// Segment file naming [hls_fragment_naming].
    pub fragment_naming: FragmentNaming,
    /// When above zero, segment ids are rounded down to a multiple of this
    /// [hls_fragment_naming_granularity].
    pub fragment_naming_granularity: u64,
    /// `EXT-X-PROGRAM-DATE-TIME` on every segment [hls_datetime].
    pub datetime: DatetimeMode,
    /// A republish, or a server restart, continues the media sequence and
    /// segment ids of the previous playlist [hls_continuous].
    pub continuous: bool,
    /// Delete segments some time after they leave the playlist, and an ended
    /// stream's files after `playlistLength` [hls_cleanup].
    pub cleanup: bool,
    /// Write `EXT-X-ENDLIST` when the publisher stops.
    pub end_list: bool,
    /// Playlist type [hls_type].
    #[serde(rename = "type")]
    pub playlist_type: PlaylistType,
    /// Prefix put before every segment URI in the playlist [hls_base_url].
    pub base_url: String,
    /// AES-128 encryption of segments and how players get the keys
    /// [hls_keys]. Off by default.
    #[serde(skip_serializing_if = "HlsEncryption::is_default")]
    pub encryption: HlsEncryption,
}

/// Who may fetch a stream's keys from the HTTP role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyAuthMode {
    /// A token minted by the website (HMAC-SHA-256 over the stream name,
    /// an expiry and an optional viewer id) on the playlist URL; the HTTP
    /// role carries it onto the key URIs of the playlist it returns.
    #[default]
    Signed,
    /// Like nginx's `auth_request`: the viewer's `Cookie` and
    /// `Authorization` headers, the stream and the key id are sent to
    /// `webhookUrl`; a 2xx answer serves the key.
    Webhook,
    /// Keys are served to anyone who asks. This is obscurity, not
    /// protection: whoever has the playlist URL can play the stream.
    Public,
}

/// How key requests are authorized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct KeyAuthorization {
    pub mode: KeyAuthMode,
    /// `signed`: file holding the HMAC secret (trailing whitespace is
    /// ignored). The operator sets it to where it mounts `secretName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// `signed`: file with the previous secret, accepted for
    /// `previousSecretGrace` after that file was last written, so the
    /// secret can be rotated without cutting off viewers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_file: Option<String>,
    /// How long tokens signed with the previous secret stay valid after a
    /// rotation (measured from the previous-secret file's modification time).
    pub previous_secret_grace: HumanDuration,
    /// `signed`, in a LiveApplication: the Secret (key `secret`, optional
    /// key `previous`) the operator mounts into the HTTP pods only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// `signed`: the cookie holding the viewer id. A token minted for a
    /// viewer (non-empty viewer field) gets keys only for requests whose
    /// cookie of this name has exactly that value, so a leaked playlist URL
    /// does not play in somebody else's browser; tokens with an empty
    /// viewer are not bound.
    pub viewer_cookie: String,
    /// `webhook`: the URL asked about every key request (GET).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// `webhook`: no answer within this time denies the key.
    pub webhook_timeout: HumanDuration,
    /// `webhook`: the webhook's decision (2xx allows, 4xx denies) is reused
    /// this long for the same viewer (Cookie and Authorization) and stream;
    /// 0 asks every time. Timeouts, 3xx and 5xx deny that one request and
    /// are not reused.
    pub webhook_cache: HumanDuration,
}

impl Default for KeyAuthorization {
    fn default() -> Self {
        Self {
            mode: KeyAuthMode::Signed,
            secret_file: None,
            previous_secret_file: None,
            previous_secret_grace: HumanDuration::from_secs(3600),
            secret_name: None,
            viewer_cookie: "oxcast_viewer".to_string(),
            webhook_url: None,
            webhook_timeout: HumanDuration::from_secs(2),
            webhook_cache: HumanDuration::from_secs(5),
        }
    }
}

/// AES-128 segment encryption [hls_keys, hls_fragments_per_key,
/// hls_key_url]. Every segment is AES-128-CBC encrypted (PKCS#7 padding,
/// RFC 8216 section 5.2) with its own random IV, written on the segment's
/// `EXT-X-KEY` line; keys come from the operating system's CSPRNG and live
/// outside the served HLS tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HlsEncryption {
    /// Encrypt segments [hls_keys].
    pub enabled: bool,
    /// A new key every this many segments; 0 = one key per publish
    /// [hls_fragments_per_key].
    pub fragments_per_key: u32,
    /// URL path the HTTP role serves keys under, also used in the key URIs
    /// of playlists (`<keyPath>/<stream>/<id>.key`) [hls_key_url].
    pub key_path: String,
    /// Who may fetch keys.
    pub authorization: KeyAuthorization,
}

impl Default for HlsEncryption {
    fn default() -> Self {
        Self {
            enabled: false,
            fragments_per_key: 6,
            key_path: "/keys".to_string(),
            authorization: KeyAuthorization::default(),
        }
    }
}

impl HlsEncryption {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the key path (every role: ingest writes it into playlists,
    /// HTTP serves it).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let p = &self.key_path;
        if !p.starts_with('/')
            || p.len() < 2
            || p.ends_with('/')
            || p.contains("..")
            || p.contains("//")
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
        {
            return Err(InvalidSetting::new(
                "hls.encryption.keyPath",
                format!(
                    "{p:?} must be an absolute URL path such as /keys, without a trailing slash"
                ),
            ));
        }
        Ok(())
    }
}

/// Is `name` usable as a cookie name? (An RFC 7230 token without the
/// quote characters; the CRD's CEL rule allows the same set.)
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&*+-.^_|~".contains(&b))
}

impl KeyAuthorization {
    /// Checks that the chosen mode has what it needs (the HTTP role's
    /// concern: an ingest-only process never sees the secret).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let a = self;
        match a.mode {
            KeyAuthMode::Signed if a.secret_file.is_none() && a.secret_name.is_none() => {
                Err(InvalidSetting::new(
                    "hls.encryption.authorization.secretFile",
                    "mode signed needs the HMAC secret: set secretFile (or secretName in a LiveApplication)",
                ))
            }
            KeyAuthMode::Webhook if a.webhook_url.is_none() => Err(InvalidSetting::new(
                "hls.encryption.authorization.webhookUrl",
                "mode webhook needs webhookUrl",
            )),
            KeyAuthMode::Webhook if a.webhook_timeout.get().is_zero() => Err(InvalidSetting::new(
                "hls.encryption.authorization.webhookTimeout",
                "must be greater than zero",
            )),
            KeyAuthMode::Signed if !valid_cookie_name(&a.viewer_cookie) => {
                Err(InvalidSetting::new(
                    "hls.encryption.authorization.viewerCookie",
                    format!(
                        "{:?} is not a cookie name: use letters, digits and !#$%&*+-.^_|~",
                        a.viewer_cookie
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

impl Default for HlsSettings {
    fn default() -> Self {
        Self {
            fragment: HumanDuration::from_secs(5),
            max_fragment: None,
            playlist_length: HumanDuration::from_secs(30),
            nested: true,
            fragment_naming: FragmentNaming::System,
            fragment_naming_granularity: 0,
            datetime: DatetimeMode::System,
            continuous: true,
            cleanup: true,
            end_list: true,
            playlist_type: PlaylistType::Live,
            base_url: String::new(),
            encryption: HlsEncryption::default(),
        }
    }
}

impl HlsSettings {
    /// The longest segment to plan for (termination grace, playlist
    /// length): `maxFragment`, or when unset twice `fragment`, the most an
    /// encoder keyed every `fragment` produces.
    pub fn effective_max_fragment(&self) -> HumanDuration {
        self.max_fragment
            .unwrap_or_else(|| HumanDuration::from(self.fragment.get() * 2))
    }

    /// Checks the settings against each other: a positive fragment, and
    /// fragment ≤ maxFragment ≤ playlistLength.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.encryption.enabled {
            self.encryption.validate()?;
        }
        if self.fragment.get().is_zero() {
            return Err(InvalidSetting::new(
                "hls.fragment",
                "must be greater than zero (e.g. 5s)",
            ));
        }
        let max = self.effective_max_fragment();
        if max < self.fragment {
            return Err(InvalidSetting::new(
                "hls.maxFragment",
                format!(
                    "{max} is shorter than hls.fragment {}; set it to at least the fragment length",
                    self.fragment
                ),
            ));
        }
        if self.playlist_length < max {
            let longest = match self.max_fragment {
                Some(_) => format!("hls.maxFragment {max}"),
                None => format!("twice hls.fragment, {max}"),
            };
            return Err(InvalidSetting::new(
                "hls.playlistLength",
                format!(
                    "{} is shorter than the longest segment to plan for ({longest}); a playlist must hold at least one segment",
                    self.playlist_length
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference_config() {
        let s = HlsSettings::default();
        assert_eq!(s.fragment, HumanDuration::from_secs(5));
        assert_eq!(s.effective_max_fragment(), HumanDuration::from_secs(10));
        assert_eq!(s.playlist_length, HumanDuration::from_secs(30));
        assert!(s.nested && s.continuous && s.cleanup && s.end_list);
        assert_eq!(s.fragment_naming, FragmentNaming::System);
        assert_eq!(s.datetime, DatetimeMode::System);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn reads_camel_case_yaml_with_defaults_for_missing_keys() {
        let s: HlsSettings = serde_yaml::from_str(
            "fragment: 2s\nfragmentNaming: sequential\nnested: false\ntype: event\n",
        )
        .unwrap();
        assert_eq!(s.fragment, HumanDuration::from_secs(2));
        assert_eq!(s.fragment_naming, FragmentNaming::Sequential);
        assert!(!s.nested);
        assert_eq!(s.playlist_type, PlaylistType::Event);
        assert_eq!(s.playlist_length, HumanDuration::from_secs(30));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = serde_yaml::from_str::<HlsSettings>("fragmnet: 2s\n").unwrap_err();
        assert!(err.to_string().contains("fragmnet"), "{err}");
    }

    #[test]
    fn validation_names_the_setting_to_fix() {
        let mut s = HlsSettings {
            max_fragment: Some(HumanDuration::from_secs(1)),
            ..HlsSettings::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "hls.maxFragment");
        s.max_fragment = Some(HumanDuration::from_secs(60));
        assert_eq!(s.validate().unwrap_err().field, "hls.playlistLength");
        s.max_fragment = None;
        s.fragment = HumanDuration::from_secs(0);
        assert_eq!(s.validate().unwrap_err().field, "hls.fragment");
    }

    #[test]
    fn encryption_is_off_by_default_and_checked_when_on() {
        let s = HlsSettings::default();
        assert!(!s.encryption.enabled);
        assert_eq!(s.encryption.fragments_per_key, 6);
        assert_eq!(s.encryption.key_path, "/keys");
        // Left out of a rendered config while it is the default.
        assert!(!serde_yaml::to_string(&s).unwrap().contains("encryption"));
        let mut s: HlsSettings = serde_yaml::from_str(
            "encryption:\n  enabled: true\n  fragmentsPerKey: 3\n  authorization:\n    mode: signed\n",
        )
        .unwrap();
        assert_eq!(s.encryption.fragments_per_key, 3);
        // The ingest side needs no secret; key delivery does.
        assert!(s.validate().is_ok());
        let a = &mut s.encryption.authorization;
        assert_eq!(
            a.validate().unwrap_err().field,
            "hls.encryption.authorization.secretFile"
        );
        a.secret_file = Some("/etc/oxcast/secret".into());
        assert!(a.validate().is_ok());
        assert_eq!(a.viewer_cookie, "oxcast_viewer");
        a.viewer_cookie = "viewer id".into();
        assert_eq!(
            a.validate().unwrap_err().field,
            "hls.encryption.authorization.viewerCookie"
        );
        a.viewer_cookie = "sid".into();
        assert!(a.validate().is_ok());
        a.mode = KeyAuthMode::Webhook;
        assert_eq!(
            a.validate().unwrap_err().field,
            "hls.encryption.authorization.webhookUrl"
        );
        s.encryption.authorization.mode = KeyAuthMode::Public;
        for bad in ["keys", "/", "/keys/", "/a/../b", "/a b"] {
            s.encryption.key_path = bad.into();
            assert_eq!(
                s.validate().unwrap_err().field,
                "hls.encryption.keyPath",
                "{bad}"
            );
        }
        s.encryption.key_path = "/drm/keys".into();
        assert!(s.validate().is_ok());
    }
}
