//! AAC in FLV (raw frames plus an AudioSpecificConfig) → ADTS frames, as
//! MPEG-TS requires.

use bytes::{BufMut, BytesMut};

use super::MediaError;

const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Object types that signal SBR (HE-AAC) or SBR+PS (HE-AACv2) explicitly.
const AOT_SBR: u8 = 5;
const AOT_PS: u8 = 29;

/// The fields of an `AudioSpecificConfig` (ISO/IEC 14496-3) that an ADTS
/// header repeats. For HE-AAC the *core* (AAC-LC) object type and sample
/// rate go into ADTS; decoders find SBR/PS implicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    /// Core audio object type (2 = AAC-LC).
    pub object_type: u8,
    /// Index into the MPEG-4 sample rate table of the core sample rate.
    pub sample_rate_index: u8,
    pub channel_config: u8,
    /// Whether SBR was signalled (HE-AAC); the output rate is then doubled.
    pub sbr: bool,
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn take(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Some(v)
    }

    fn object_type(&mut self) -> Option<u8> {
        let t = self.take(5)? as u8;
        if t == 31 {
            Some(32 + self.take(6)? as u8)
        } else {
            Some(t)
        }
    }

    fn sample_rate_index(&mut self) -> Option<u8> {
        let i = self.take(4)? as u8;
        if i == 15 {
            // An explicit 24-bit rate: ADTS cannot carry it.
            self.take(24)?;
        }
        Some(i)
    }
}

impl AacConfig {
    pub fn parse(asc: &[u8]) -> Result<Self, MediaError> {
        let mut b = Bits { data: asc, pos: 0 };
        let truncated = MediaError::InvalidAacConfig("truncated AudioSpecificConfig");
        let mut object_type = b.object_type().ok_or(truncated.clone())?;
        let sample_rate_index = b.sample_rate_index().ok_or(truncated.clone())?;
        let channel_config = b.take(4).ok_or(truncated.clone())? as u8;
        let mut sbr = false;
        if object_type == AOT_SBR || object_type == AOT_PS {
            sbr = true;
            // The extension sample rate follows, then the core object type.
            let _extension_rate = b.sample_rate_index().ok_or(truncated.clone())?;
            object_type = b.object_type().ok_or(truncated)?;
        }
        if sample_rate_index as usize >= SAMPLE_RATES.len() {
            return Err(MediaError::InvalidAacConfig(
                "sample rate not expressible in ADTS",
            ));
        }
        if !(1..=4).contains(&object_type) {
            return Err(MediaError::UnsupportedAudio(format!(
                "AAC object type {object_type} (only Main, LC, SSR, LTP cores fit ADTS)"
            )));
        }
        Ok(Self {
            object_type,
            sample_rate_index,
            channel_config,
            sbr,
        })
    }

    /// The core sample rate in Hz (half the output rate for HE-AAC).
    pub fn core_sample_rate(&self) -> u32 {
        SAMPLE_RATES[usize::from(self.sample_rate_index)]
    }

    /// The decoded output sample rate in Hz.
    pub fn output_sample_rate(&self) -> u32 {
        self.core_sample_rate() * if self.sbr { 2 } else { 1 }
    }

    /// Duration of one AAC frame (1024 core samples) in 90 kHz ticks,
    /// rounded to the nearest tick (2089.8 → 2090 at 44.1 kHz; exact at
    /// 48, 32, 24, 16 and 8 kHz). The error stays below half a tick (6 µs)
    /// per frame; timestamps, not this sum, place frames on the timeline.
    pub fn frame_duration_90khz(&self) -> i64 {
        let rate = i64::from(self.core_sample_rate());
        (1024 * 90_000 + rate / 2) / rate
    }

    /// Appends a 7-byte ADTS header (no CRC) and the raw frame to `out`.
    pub fn write_adts(&self, raw: &[u8], out: &mut BytesMut) -> Result<(), MediaError> {
        let frame_len = raw.len() + 7;
        if frame_len > 0x1fff {
            return Err(MediaError::AudioFrameTooLarge(raw.len()));
        }
        let profile = self.object_type - 1;
        let sr = self.sample_rate_index;
        let ch = self.channel_config;
        let len = frame_len as u32;
        out.reserve(frame_len);
        out.put_slice(&[
            0xff,
            0xf1, // sync, MPEG-4, layer 0, no CRC
            (profile << 6) | (sr << 2) | ((ch >> 2) & 1),
            ((ch & 3) << 6) | ((len >> 11) as u8 & 0x03),
            (len >> 3) as u8,
            (((len & 7) as u8) << 5) | 0x1f,
            0xfc, // buffer fullness 0x7ff (VBR), one raw data block
        ]);
        out.put_slice(raw);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lc_stereo_48k() {
        let c = AacConfig::parse(&[0x11, 0x90]).unwrap();
        assert_eq!(c.object_type, 2);
        assert_eq!(c.core_sample_rate(), 48000);
        assert_eq!(c.channel_config, 2);
        assert!(!c.sbr);
        assert_eq!(c.frame_duration_90khz(), 1920);
    }

    #[test]
    fn lc_mono_44k1() {
        let c = AacConfig::parse(&[0x12, 0x08]).unwrap();
        assert_eq!(
            (c.object_type, c.core_sample_rate(), c.channel_config),
            (2, 44100, 1)
        );
        assert_eq!(c.frame_duration_90khz(), 2090, "2089.795… rounded");
    }

    #[test]
    fn explicit_he_aac_uses_core_in_adts() {
        // AOT 5 (SBR), core 24 kHz stereo, extension 48 kHz, core AOT 2.
        let c = AacConfig::parse(&[0x2b, 0x11, 0x88, 0x00]).unwrap();
        assert!(c.sbr);
        assert_eq!(c.object_type, 2);
        assert_eq!(c.core_sample_rate(), 24000);
        assert_eq!(c.output_sample_rate(), 48000);
        assert_eq!(c.channel_config, 2);
    }

    #[test]
    fn adts_header_fields() {
        let c = AacConfig::parse(&[0x11, 0x90]).unwrap();
        let mut out = BytesMut::new();
        c.write_adts(&[0xaa; 100], &mut out).unwrap();
        assert_eq!(out.len(), 107);
        assert_eq!(out[0], 0xff);
        assert_eq!(out[1] & 0xf6, 0xf0);
        assert_eq!(out[2] >> 6, 1, "profile LC");
        assert_eq!((out[2] >> 2) & 0xf, 3, "48 kHz");
        let len = (u32::from(out[3] & 3) << 11) | (u32::from(out[4]) << 3) | u32::from(out[5] >> 5);
        assert_eq!(len, 107);
        assert_eq!(((out[2] & 1) << 2) | (out[3] >> 6), 2, "stereo");
    }

    #[test]
    fn rejects_truncated_and_oversized() {
        assert!(AacConfig::parse(&[]).is_err());
        assert!(AacConfig::parse(&[0x11]).is_err());
        let c = AacConfig::parse(&[0x11, 0x90]).unwrap();
        assert!(c.write_adts(&vec![0; 9000], &mut BytesMut::new()).is_err());
    }
}
