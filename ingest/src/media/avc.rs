//! H.264 in FLV (AVCC: length-prefixed NAL units plus a separate decoder
//! configuration record) → Annex B byte stream, as MPEG-TS requires.

use bytes::{BufMut, BytesMut};

use super::MediaError;

const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// An access unit delimiter NAL (primary_pic_type 7: any slice type).
/// Apple's HLS authoring rules ask for one at the start of every access unit.
const AUD: [u8; 2] = [0x09, 0xf0];

const NAL_SPS: u8 = 7;
const NAL_AUD: u8 = 9;

/// The parts of an `AVCDecoderConfigurationRecord` (ISO/IEC 14496-15) that
/// remuxing needs: the NAL length size and the parameter sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    pub nal_length_size: usize,
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
}

impl AvcConfig {
    pub fn parse(record: &[u8]) -> Result<Self, MediaError> {
        let bad = |why: &'static str| MediaError::InvalidAvcConfig(why);
        if record.len() < 6 {
            return Err(bad("shorter than 6 bytes"));
        }
        if record[0] != 1 {
            return Err(bad("configurationVersion is not 1"));
        }
        let nal_length_size = usize::from(record[4] & 0x03) + 1;
        if nal_length_size == 3 {
            return Err(bad("NAL length size 3 is not allowed"));
        }
        let mut pos = 5;
        let read_sets = |count: usize, pos: &mut usize| -> Result<Vec<Vec<u8>>, MediaError> {
            let mut sets = Vec::with_capacity(count);
            for _ in 0..count {
                let len_bytes = record
                    .get(*pos..*pos + 2)
                    .ok_or(bad("parameter set length truncated"))?;
                let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
                *pos += 2;
                let set = record
                    .get(*pos..*pos + len)
                    .ok_or(bad("parameter set truncated"))?;
                if !set.is_empty() {
                    sets.push(set.to_vec());
                }
                *pos += len;
            }
            Ok(sets)
        };
        let sps_count = usize::from(record[5] & 0x1f);
        pos += 1;
        let sps = read_sets(sps_count, &mut pos)?;
        let pps_count = usize::from(*record.get(pos).ok_or(bad("no PPS count"))?);
        pos += 1;
        let pps = read_sets(pps_count, &mut pos)?;
        if sps.is_empty() || pps.is_empty() {
            return Err(bad("no SPS or no PPS"));
        }
        Ok(Self {
            nal_length_size,
            sps,
            pps,
        })
    }

    /// Width and height from the first SPS, if it parses. A malformed SPS
    /// only costs the size in the streams API (the decoder in the player
    /// judges the stream); it is logged with the field at fault.
    pub fn resolution(&self) -> Option<(u32, u32)> {
        match super::sps::resolution(self.sps.first()?) {
            Ok(size) => Some(size),
            Err(error) => {
                tracing::warn!(%error, "unreadable H.264 SPS: picture size unknown");
                None
            }
        }
    }
}

/// Rewrites one AVCC access unit as Annex B into `out`: an AUD first, then
/// SPS/PPS from `config` before a keyframe that does not carry its own, then
/// every NAL unit with a start code. Existing AUDs are dropped (one is enough).
pub fn avcc_to_annexb(
    config: &AvcConfig,
    access_unit: &[u8],
    keyframe: bool,
    out: &mut BytesMut,
) -> Result<(), MediaError> {
    out.reserve(access_unit.len() + 64);
    out.put_slice(&START_CODE);
    out.put_slice(&AUD);

    let n = config.nal_length_size;
    let nals = NalIter {
        data: access_unit,
        len_size: n,
    };
    // This pass also checks every NAL length, so the second one (over the
    // same bytes) meets no errors.
    let has_sps = nals.clone().try_fold(false, |has_sps, nal| {
        nal.map(|nal| has_sps || nal.first().map(|b| b & 0x1f) == Some(NAL_SPS))
    })?;
    if keyframe && !has_sps {
        for set in config.sps.iter().chain(config.pps.iter()) {
            out.put_slice(&START_CODE);
            out.put_slice(set);
        }
    }
    for nal in nals.flatten() {
        match nal.first().map(|b| b & 0x1f) {
            None | Some(NAL_AUD) => continue,
            Some(_) => {
                out.put_slice(&START_CODE);
                out.put_slice(nal);
            }
        }
    }
    Ok(())
}

#[derive(Clone)]
struct NalIter<'a> {
    data: &'a [u8],
    len_size: usize,
}

impl<'a> Iterator for NalIter<'a> {
    type Item = Result<&'a [u8], MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        if self.data.len() < self.len_size {
            self.data = &[];
            return Some(Err(MediaError::TruncatedNal));
        }
        let len = self.data[..self.len_size]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        let rest = &self.data[self.len_size..];
        if rest.len() < len {
            self.data = &[];
            return Some(Err(MediaError::TruncatedNal));
        }
        let (nal, tail) = rest.split_at(len);
        self.data = tail;
        Some(Ok(nal))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A decoder configuration record with one SPS and one PPS.
    pub(crate) fn sample_record() -> Vec<u8> {
        let sps = [0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9];
        let pps = [0x68, 0xeb, 0xe3, 0xcb];
        let mut r = vec![1, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0, sps.len() as u8];
        r.extend_from_slice(&sps);
        r.extend_from_slice(&[1, 0, pps.len() as u8]);
        r.extend_from_slice(&pps);
        r
    }

    #[test]
    fn parses_record() {
        let c = AvcConfig::parse(&sample_record()).unwrap();
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.sps, vec![vec![0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9]]);
        assert_eq!(c.pps, vec![vec![0x68, 0xeb, 0xe3, 0xcb]]);
    }

    #[test]
    fn rejects_truncated_records() {
        let r = sample_record();
        for len in 0..r.len() {
            assert!(
                AvcConfig::parse(&r[..len]).is_err(),
                "prefix of {len} parsed"
            );
        }
    }

    #[test]
    fn keyframe_gets_aud_and_parameter_sets() {
        let c = AvcConfig::parse(&sample_record()).unwrap();
        let au = [0, 0, 0, 3, 0x65, 0xaa, 0xbb, 0, 0, 0, 2, 0x09, 0xf0];
        let mut out = BytesMut::new();
        avcc_to_annexb(&c, &au, true, &mut out).unwrap();
        let mut expected = vec![0, 0, 0, 1, 0x09, 0xf0];
        expected.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9]);
        expected.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xeb, 0xe3, 0xcb]);
        expected.extend_from_slice(&[0, 0, 0, 1, 0x65, 0xaa, 0xbb]);
        assert_eq!(&out[..], &expected[..], "input AUD dropped, ours first");
    }

    #[test]
    fn inter_frame_has_no_parameter_sets() {
        let c = AvcConfig::parse(&sample_record()).unwrap();
        let au = [0, 0, 0, 2, 0x41, 0x9a];
        let mut out = BytesMut::new();
        avcc_to_annexb(&c, &au, false, &mut out).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x41, 0x9a]);
    }

    #[test]
    fn truncated_nal_is_an_error() {
        let c = AvcConfig::parse(&sample_record()).unwrap();
        let mut out = BytesMut::new();
        assert!(avcc_to_annexb(&c, &[0, 0, 0, 9, 0x41], false, &mut out).is_err());
        assert!(avcc_to_annexb(&c, &[0, 0], false, &mut out).is_err());
    }
}
