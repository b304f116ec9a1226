//! FLV tags (as RTMP carries them) → elementary stream frames for MPEG-TS:
//! H.264 access units in Annex B and AAC frames in ADTS, on a 64-bit
//! 90 kHz timeline. Sans-IO: bytes and timestamps in, frames out.

pub mod aac;
pub mod avc;
pub mod flv;
pub mod sps;
pub mod timestamp;

use bytes::{Bytes, BytesMut};

pub use aac::AacConfig;
pub use avc::AvcConfig;
pub use flv::{AacPacket, AudioTag, AvcPacket, VideoTag};
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

/// Turns one publisher's FLV audio and video tags into [`MediaFrame`]s.
#[derive(Debug, Default)]
pub struct Remuxer {
    clock: TimestampExtender,
    avc: Option<AvcConfig>,
    aac: Option<AacConfig>,
    /// Set when a codec configuration changed after media had started;
    /// the segmenter should start a new segment with a discontinuity.
    config_changed: bool,
    /// The frame being written. Each frame takes it whole (a fresh
    /// allocation per frame) rather than splitting off a shared one, which
    /// would keep the largest keyframe's worth of memory per publisher
    /// for as long as the stream lasts.
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
        let (keyframe, packet) = match VideoTag::classify(tag) {
            VideoTag::Empty => return Err(MediaError::TruncatedTag),
            VideoTag::Enhanced => {
                return Err(MediaError::UnsupportedVideo(
                    "enhanced RTMP (HEVC/AV1/VP9) is not supported; publish H.264".into(),
                ))
            }
            VideoTag::Info => return Ok(None),
            VideoTag::Other { codec, .. } => {
                return Err(MediaError::UnsupportedVideo(format!(
                    "FLV video codec id {codec}; publish H.264"
                )))
            }
            VideoTag::Avc { keyframe, packet } => (keyframe, packet),
        };
        // After the packet type: the composition time offset, signed 24-bit ms.
        let Some(&[_, c0, c1, c2]) = tag.get(1..5) else {
            return Err(MediaError::TruncatedTag);
        };
        let cts = (i32::from_be_bytes([c0, c1, c2, 0]) >> 8) as i64;
        let payload = &tag[5..];
        match packet {
            Some(AvcPacket::SequenceHeader) => {
                let config = AvcConfig::parse(payload)?;
                if self.avc.as_ref().is_some_and(|old| *old != config) {
                    self.config_changed = true;
                }
                self.avc = Some(config);
                Ok(None)
            }
            Some(AvcPacket::Nalu) => {
                let config = self.avc.as_ref().ok_or(MediaError::MissingSequenceHeader)?;
                avc::avcc_to_annexb(config, payload, keyframe, &mut self.scratch)
                    .inspect_err(|_| self.scratch.clear())?;
                Ok(Some(MediaFrame {
                    kind: TrackKind::Video,
                    dts: ts,
                    pts: ts + cts * TICKS_PER_MS,
                    keyframe,
                    data: std::mem::take(&mut self.scratch).freeze(),
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
        let packet = match AudioTag::classify(tag) {
            AudioTag::Empty | AudioTag::Aac { packet: None } => {
                return Err(MediaError::TruncatedTag)
            }
            AudioTag::Other { format } => {
                return Err(MediaError::UnsupportedAudio(format!(
                    "FLV sound format {format}; publish AAC"
                )))
            }
            AudioTag::Aac { packet: Some(p) } => p,
        };
        let payload = &tag[2..];
        if packet == AacPacket::SequenceHeader {
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
            data: std::mem::take(&mut self.scratch).freeze(),
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
