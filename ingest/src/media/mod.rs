//! FLV tags (as RTMP carries them) → elementary stream frames for MPEG-TS:
//! H.264 access units in Annex B and AAC frames in ADTS, on a 64-bit
//! 90 kHz timeline. Sans-IO: bytes and timestamps in, frames out.

pub mod aac;
pub mod avc;
pub mod sps;
pub mod timestamp;

use bytes::{Bytes, BytesMut};

pub use aac::AacConfig;
pub use avc::AvcConfig;
pub use timestamp::{TimestampExtender, TICKS_PER_MS};

/// Why a tag could not be remuxed. The tag is dropped; the stream goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("empty or truncated FLV tag")]
    TruncatedTag,
    #[error("unsupported video: {0}")]
    UnsupportedVideo(String),
    #[error("unsupported audio: {0}")]
    UnsupportedAudio(String),
    #[error("invalid AVC decoder configuration: {0}")]
    InvalidAvcConfig(&'static str),
    #[error("invalid AAC AudioSpecificConfig: {0}")]
    InvalidAacConfig(&'static str),
    #[error("H.264 NAL unit length runs past the end of the frame")]
    TruncatedNal,
    #[error("AAC frame of {0} bytes does not fit ADTS")]
    AudioFrameTooLarge(usize),
    #[error("coded frame before its sequence header")]
    MissingSequenceHeader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Video,
    Audio,
}

/// One access unit (video) or one AAC frame (audio), ready for PES packing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    pub kind: TrackKind,
    /// Decode timestamp, 90 kHz.
    pub dts: i64,
    /// Presentation timestamp, 90 kHz (differs from `dts` with B-frames).
    pub pts: i64,
    /// An IDR access unit; always true for audio.
    pub keyframe: bool,
    /// Annex B (video) or ADTS (audio) bytes.
    pub data: Bytes,
}

const FLV_CODEC_AVC: u8 = 7;
const FLV_FRAME_KEY: u8 = 1;
const FLV_FRAME_INFO: u8 = 5;
const FLV_SOUND_AAC: u8 = 10;
const AVC_SEQUENCE_HEADER: u8 = 0;
const AVC_NALU: u8 = 1;
const AAC_SEQUENCE_HEADER: u8 = 0;

/// Turns one publisher's FLV audio and video tags into [`MediaFrame`]s.
#[derive(Debug, Default)]
pub struct Remuxer {
    clock: TimestampExtender,
    avc: Option<AvcConfig>,
    aac: Option<AacConfig>,
    /// Set when a codec configuration changed after media had started;
    /// the segmenter should start a new segment with a discontinuity.
    config_changed: bool,
    scratch: BytesMut,
}

impl Remuxer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn video_config(&self) -> Option<&AvcConfig> {
        self.avc.as_ref()
    }

    pub fn audio_config(&self) -> Option<&AacConfig> {
        self.aac.as_ref()
    }

    /// True once after a sequence header replaced a different earlier one.
    pub fn take_config_change(&mut self) -> bool {
        std::mem::take(&mut self.config_changed)
    }

    /// Remuxes an FLV video tag body. `Ok(None)` for tags that carry no
    /// frame (sequence headers, end of sequence, info frames).
    pub fn push_video(
        &mut self,
        timestamp_ms: u32,
        tag: &[u8],
    ) -> Result<Option<MediaFrame>, MediaError> {
        let ts = self.clock.extend(timestamp_ms) * TICKS_PER_MS;
        let (&head, body) = tag.split_first().ok_or(MediaError::TruncatedTag)?;
        if head & 0x80 != 0 {
            return Err(MediaError::UnsupportedVideo(
                "enhanced RTMP (HEVC/AV1/VP9) is not supported; publish H.264".into(),
            ));
        }
        let frame_type = head >> 4;
        let codec = head & 0x0f;
        if frame_type == FLV_FRAME_INFO {
            return Ok(None);
        }
        if codec != FLV_CODEC_AVC {
            return Err(MediaError::UnsupportedVideo(format!(
                "FLV video codec id {codec}; publish H.264"
            )));
        }
        if body.len() < 4 {
            return Err(MediaError::TruncatedTag);
        }
        let packet_type = body[0];
        // Composition time offset: signed 24-bit milliseconds.
        let cts = (i32::from_be_bytes([body[1], body[2], body[3], 0]) >> 8) as i64;
        let payload = &body[4..];
        match packet_type {
            AVC_SEQUENCE_HEADER => {
                let config = AvcConfig::parse(payload)?;
                if self.avc.as_ref().is_some_and(|old| *old != config) {
                    self.config_changed = true;
                }
                self.avc = Some(config);
                Ok(None)
            }
            AVC_NALU => {
                let config = self.avc.as_ref().ok_or(MediaError::MissingSequenceHeader)?;
                let keyframe = frame_type == FLV_FRAME_KEY;
                avc::avcc_to_annexb(config, payload, keyframe, &mut self.scratch)
                    .inspect_err(|_| self.scratch.clear())?;
                Ok(Some(MediaFrame {
                    kind: TrackKind::Video,
                    dts: ts,
                    pts: ts + cts * TICKS_PER_MS,
                    keyframe,
                    data: self.scratch.split().freeze(),
                }))
            }
            _ => Ok(None),
        }
    }

    /// Remuxes an FLV audio tag body. `Ok(None)` for sequence headers.
    pub fn push_audio(
        &mut self,
        timestamp_ms: u32,
        tag: &[u8],
    ) -> Result<Option<MediaFrame>, MediaError> {
        let ts = self.clock.extend(timestamp_ms) * TICKS_PER_MS;
        let (&head, body) = tag.split_first().ok_or(MediaError::TruncatedTag)?;
        let format = head >> 4;
        if format != FLV_SOUND_AAC {
            return Err(MediaError::UnsupportedAudio(format!(
                "FLV sound format {format}; publish AAC"
            )));
        }
        let (&packet_type, payload) = body.split_first().ok_or(MediaError::TruncatedTag)?;
        if packet_type == AAC_SEQUENCE_HEADER {
            let config = AacConfig::parse(payload)?;
            if self.aac.is_some_and(|old| old != config) {
                self.config_changed = true;
            }
            self.aac = Some(config);
            return Ok(None);
        }
        let config = self.aac.ok_or(MediaError::MissingSequenceHeader)?;
        if payload.is_empty() {
            return Ok(None);
        }
        config.write_adts(payload, &mut self.scratch)?;
        Ok(Some(MediaFrame {
            kind: TrackKind::Audio,
            dts: ts,
            pts: ts,
            keyframe: true,
            data: self.scratch.split().freeze(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avc_seq_header() -> Vec<u8> {
        let mut tag = vec![0x17, 0, 0, 0, 0];
        tag.extend(avc::tests::sample_record());
        tag
    }

    #[test]
    fn video_frames_carry_composition_offset() {
        let mut r = Remuxer::new();
        assert_eq!(r.push_video(0, &avc_seq_header()).unwrap(), None);
        // Keyframe at 1000 ms with cts +66 ms.
        let tag = [0x17, 1, 0, 0, 66, 0, 0, 0, 2, 0x65, 0x88];
        let f = r.push_video(1000, &tag).unwrap().unwrap();
        assert_eq!(f.kind, TrackKind::Video);
        assert!(f.keyframe);
        assert_eq!(f.dts, 90_000);
        assert_eq!(f.pts, 90_000 + 66 * 90);
        assert!(f
            .data
            .starts_with(&[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67]));
        // Negative composition offset (-33 ms), inter frame.
        let tag = [0x27, 1, 0xff, 0xff, 0xdf, 0, 0, 0, 2, 0x41, 0x9a];
        let f = r.push_video(1033, &tag).unwrap().unwrap();
        assert!(!f.keyframe);
        assert_eq!(f.pts - f.dts, -33 * 90);
    }

    #[test]
    fn frame_before_sequence_header_is_an_error() {
        let mut r = Remuxer::new();
        let tag = [0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65];
        assert_eq!(
            r.push_video(0, &tag),
            Err(MediaError::MissingSequenceHeader)
        );
        assert_eq!(
            r.push_audio(0, &[0xaf, 1, 1, 2]),
            Err(MediaError::MissingSequenceHeader)
        );
    }

    #[test]
    fn audio_frames_become_adts() {
        let mut r = Remuxer::new();
        assert_eq!(r.push_audio(0, &[0xaf, 0, 0x11, 0x90]).unwrap(), None);
        let f = r.push_audio(21, &[0xaf, 1, 0xde, 0xad]).unwrap().unwrap();
        assert_eq!(f.kind, TrackKind::Audio);
        assert_eq!(f.pts, 21 * 90);
        assert_eq!(f.data.len(), 9);
        assert_eq!(&f.data[7..], &[0xde, 0xad]);
    }

    #[test]
    fn changed_sequence_header_is_reported_once() {
        let mut r = Remuxer::new();
        r.push_video(0, &avc_seq_header()).unwrap();
        r.push_video(0, &avc_seq_header()).unwrap();
        assert!(!r.take_config_change(), "identical header is not a change");
        let mut other = avc_seq_header();
        let last = other.len() - 1;
        other[last] ^= 0xff;
        r.push_video(40, &other).unwrap();
        assert!(r.take_config_change());
        assert!(!r.take_config_change());
    }

    #[test]
    fn rejects_other_codecs_and_garbage() {
        let mut r = Remuxer::new();
        assert!(matches!(
            r.push_video(0, &[0x12, 0]),
            Err(MediaError::UnsupportedVideo(_))
        ));
        assert!(matches!(
            r.push_video(0, &[0x90, 0, 0, 0, 0]),
            Err(MediaError::UnsupportedVideo(_))
        ));
        assert!(matches!(
            r.push_audio(0, &[0x2f, 1]),
            Err(MediaError::UnsupportedAudio(_))
        ));
        assert_eq!(r.push_video(0, &[]), Err(MediaError::TruncatedTag));
        assert_eq!(r.push_video(0, &[0x17, 1]), Err(MediaError::TruncatedTag));
        assert_eq!(r.push_audio(0, &[0xaf]), Err(MediaError::TruncatedTag));
        assert_eq!(
            r.push_video(0, &[0x57, 0]),
            Ok(None),
            "info frames are skipped"
        );
    }
}
