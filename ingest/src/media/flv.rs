//! What an FLV audio or video tag body carries, read from its first bytes
//! (as RTMP delivers tags: without the 11-byte FLV tag header). The one
//! place that knows the FLV codec ids, frame types and packet types; the
//! remuxer, the publication and the RTMP player fan-out ask here.

const FRAME_KEY: u8 = 1;
const FRAME_INFO: u8 = 5;
const CODEC_AVC: u8 = 7;
/// Set in the first byte of an Enhanced RTMP (`ExVideoTagHeader`) tag.
const ENHANCED: u8 = 0x80;
const SOUND_AAC: u8 = 10;
const AVC_SEQUENCE_HEADER: u8 = 0;
const AVC_NALU: u8 = 1;
const AVC_END_OF_SEQUENCE: u8 = 2;
const AAC_SEQUENCE_HEADER: u8 = 0;

/// The AVCPacketType of an H.264 video tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvcPacket {
    /// An AVCDecoderConfigurationRecord (SPS/PPS).
    SequenceHeader,
    /// One access unit of length-prefixed NAL units.
    Nalu,
    EndOfSequence,
    /// A packet type H.264-in-FLV does not define.
    Unknown(u8),
}

/// A classified FLV video tag body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoTag {
    /// No bytes at all.
    Empty,
    /// Enhanced RTMP (HEVC, AV1, VP9 via `ExVideoTagHeader`).
    Enhanced,
    /// A video info/command frame (frame type 5): carries no picture.
    Info,
    /// H.264. `packet` is `None` when the tag ends after its first byte.
    Avc {
        keyframe: bool,
        packet: Option<AvcPacket>,
    },
    /// Another legacy FLV codec (Sorenson, VP6, …), by its codec id.
    Other { codec: u8, keyframe: bool },
}

impl VideoTag {
    pub fn classify(tag: &[u8]) -> Self {
        let Some(&head) = tag.first() else {
            return Self::Empty;
        };
        if head & ENHANCED != 0 {
            return Self::Enhanced;
        }
        let frame_type = head >> 4;
        let codec = head & 0x0f;
        let keyframe = frame_type == FRAME_KEY;
        if frame_type == FRAME_INFO {
            return Self::Info;
        }
        if codec != CODEC_AVC {
            return Self::Other { codec, keyframe };
        }
        let packet = tag.get(1).map(|&p| match p {
            AVC_SEQUENCE_HEADER => AvcPacket::SequenceHeader,
            AVC_NALU => AvcPacket::Nalu,
            AVC_END_OF_SEQUENCE => AvcPacket::EndOfSequence,
            other => AvcPacket::Unknown(other),
        });
        Self::Avc { keyframe, packet }
    }

    /// A keyframe (FLV frame type 1): where a player may start.
    pub fn is_keyframe(self) -> bool {
        matches!(
            self,
            Self::Avc { keyframe: true, .. } | Self::Other { keyframe: true, .. }
        )
    }

    /// An H.264 sequence header, which players need before any frame.
    pub fn is_sequence_header(self) -> bool {
        matches!(
            self,
            Self::Avc {
                packet: Some(AvcPacket::SequenceHeader),
                ..
            }
        )
    }
}

/// The AACPacketType of an AAC audio tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AacPacket {
    /// An AudioSpecificConfig.
    SequenceHeader,
    /// A raw AAC frame (every packet type other than 0).
    Raw,
}

/// A classified FLV audio tag body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioTag {
    Empty,
    /// AAC. `packet` is `None` when the tag ends after its first byte.
    Aac {
        packet: Option<AacPacket>,
    },
    /// Another FLV sound format (MP3, Speex, …), by its id.
    Other {
        format: u8,
    },
}

impl AudioTag {
    pub fn classify(tag: &[u8]) -> Self {
        let Some(&head) = tag.first() else {
            return Self::Empty;
        };
        let format = head >> 4;
        if format != SOUND_AAC {
            return Self::Other { format };
        }
        let packet = tag.get(1).map(|&p| match p {
            AAC_SEQUENCE_HEADER => AacPacket::SequenceHeader,
            _ => AacPacket::Raw,
        });
        Self::Aac { packet }
    }

    /// An AAC sequence header, which players need before any frame.
    pub fn is_sequence_header(self) -> bool {
        matches!(
            self,
            Self::Aac {
                packet: Some(AacPacket::SequenceHeader)
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_tags() {
        assert_eq!(VideoTag::classify(&[]), VideoTag::Empty);
        let header = VideoTag::classify(&[0x17, 0, 0, 0, 0]);
        assert!(header.is_sequence_header() && header.is_keyframe());
        let idr = VideoTag::classify(&[0x17, 1, 0, 0, 0]);
        assert_eq!(
            idr,
            VideoTag::Avc {
                keyframe: true,
                packet: Some(AvcPacket::Nalu)
            }
        );
        assert!(idr.is_keyframe() && !idr.is_sequence_header());
        let inter = VideoTag::classify(&[0x27, 1]);
        assert!(!inter.is_keyframe());
        assert_eq!(
            VideoTag::classify(&[0x17]),
            VideoTag::Avc {
                keyframe: true,
                packet: None
            }
        );
        assert_eq!(
            VideoTag::classify(&[0x17, 2]),
            VideoTag::Avc {
                keyframe: true,
                packet: Some(AvcPacket::EndOfSequence)
            }
        );
        assert_eq!(VideoTag::classify(&[0x57, 0]), VideoTag::Info);
        assert_eq!(VideoTag::classify(&[0x9c, 0, 0, 0, 0]), VideoTag::Enhanced);
        let vp6 = VideoTag::classify(&[0x14, 0]);
        assert_eq!(
            vp6,
            VideoTag::Other {
                codec: 4,
                keyframe: true
            }
        );
        assert!(vp6.is_keyframe() && !vp6.is_sequence_header());
    }

    #[test]
    fn audio_tags() {
        assert_eq!(AudioTag::classify(&[]), AudioTag::Empty);
        assert!(AudioTag::classify(&[0xaf, 0, 0x12, 0x10]).is_sequence_header());
        assert_eq!(
            AudioTag::classify(&[0xaf, 1, 0xde]),
            AudioTag::Aac {
                packet: Some(AacPacket::Raw)
            }
        );
        assert_eq!(AudioTag::classify(&[0xaf]), AudioTag::Aac { packet: None });
        assert_eq!(
            AudioTag::classify(&[0x2f, 0]),
            AudioTag::Other { format: 2 }
        );
        assert!(!AudioTag::classify(&[0x2f, 0]).is_sequence_header());
    }
}
