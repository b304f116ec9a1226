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
}
