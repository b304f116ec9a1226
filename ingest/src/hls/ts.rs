//! MPEG-TS multiplexing on top of the `mpeg2ts` crate: PAT/PMT at the start
//! of every segment, one PES per video access unit, aggregated AAC frames
//! per audio PES, PCR on the clock track.

use mpeg2ts::es::{StreamId, StreamType};
use mpeg2ts::pes::PesHeader;
use mpeg2ts::time::{ClockReference, Timestamp};
use mpeg2ts::ts::payload::{Bytes as TsBytes, Pat, Pes, Pmt};
use mpeg2ts::ts::{
    AdaptationField, ContinuityCounter, EsInfo, Pid, ProgramAssociation,
    TransportScramblingControl, TsHeader, TsPacket, TsPacketWriter, TsPayload, VersionNumber,
    WriteTsPacket,
};

/// TS muxing failed; only a bug can cause this since output goes to memory.
#[derive(Debug, thiserror::Error)]
#[error("MPEG-TS muxing failed: {0}")]
pub struct MuxError(String);

impl From<mpeg2ts::Error> for MuxError {
    fn from(e: mpeg2ts::Error) -> Self {
        Self(e.to_string())
    }
}

const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x100;
const AUDIO_PID: u16 = 0x101;
const PROGRAM: u16 = 1;
/// PTS/DTS run this far (0.7 s) ahead of the PCR so decoders have time to
/// buffer, as common muxers do.
const PCR_LEAD: i64 = 63_000;
const TS_MASK: i64 = (1 << 33) - 1;
const PAYLOAD: usize = TsPacket::SIZE - 4;

fn pid(n: u16) -> Result<Pid, MuxError> {
    Ok(Pid::new(n)?)
}

fn timestamp(t: i64) -> Result<Timestamp, MuxError> {
    Ok(Timestamp::new(((t + PCR_LEAD) & TS_MASK) as u64)?)
}

/// Which elementary streams the program carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tracks {
    pub video: bool,
    pub audio: bool,
}

/// Writes TS packets for one stream, keeping continuity counters across
/// segments.
#[derive(Debug, Default)]
pub struct TsMuxer {
    cc_pat: ContinuityCounter,
    cc_pmt: ContinuityCounter,
    cc_video: ContinuityCounter,
    cc_audio: ContinuityCounter,
}

fn header(pid: Pid, cc: &mut ContinuityCounter) -> TsHeader {
    let h = TsHeader {
        transport_error_indicator: false,
        transport_priority: false,
        pid,
        transport_scrambling_control: TransportScramblingControl::NotScrambled,
        continuity_counter: *cc,
    };
    cc.increment();
    h
}

impl TsMuxer {
    /// PAT and PMT; every segment starts with them so it decodes on its own.
    pub fn write_tables(&mut self, tracks: Tracks, out: &mut Vec<u8>) -> Result<(), MuxError> {
        let mut w = TsPacketWriter::new(out);
        let pat = TsPacket {
            header: header(pid(0)?, &mut self.cc_pat),
            adaptation_field: None,
            payload: Some(TsPayload::Pat(Pat {
                transport_stream_id: 1,
                version_number: VersionNumber::new(),
                table: vec![ProgramAssociation {
                    program_num: PROGRAM,
                    program_map_pid: pid(PMT_PID)?,
                }],
            })),
        };
        w.write_ts_packet(&pat)?;
        let mut es_info = Vec::with_capacity(2);
        if tracks.video {
            es_info.push(EsInfo {
                stream_type: StreamType::H264,
                elementary_pid: pid(VIDEO_PID)?,
                descriptors: vec![],
            });
        }
        if tracks.audio {
            es_info.push(EsInfo {
                stream_type: StreamType::AdtsAac,
                elementary_pid: pid(AUDIO_PID)?,
                descriptors: vec![],
            });
        }
        let pcr_pid = if tracks.video || !tracks.audio {
            VIDEO_PID
        } else {
            AUDIO_PID
        };
        let pmt = TsPacket {
            header: header(pid(PMT_PID)?, &mut self.cc_pmt),
            adaptation_field: None,
            payload: Some(TsPayload::Pmt(Pmt {
                program_num: PROGRAM,
                pcr_pid: Some(pid(pcr_pid)?),
                version_number: VersionNumber::new(),
                program_info: vec![],
                es_info,
            })),
        };
        w.write_ts_packet(&pmt)?;
        Ok(())
    }

    /// One H.264 access unit (Annex B) as a PES with a PCR in front.
    pub fn write_video(
        &mut self,
        dts: i64,
        pts: i64,
        keyframe: bool,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError> {
        let id = StreamId::new_video(StreamId::VIDEO_MIN)?;
        let mut cc = self.cc_video;
        let r = write_pes(VIDEO_PID, &mut cc, id, dts, pts, Some(keyframe), data, out);
        self.cc_video = cc;
        r
    }

    /// One or more ADTS frames as a PES; `pcr` when audio is the clock track.
    pub fn write_audio(
        &mut self,
        pts: i64,
        pcr: bool,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError> {
        let id = StreamId::new_audio(StreamId::AUDIO_MIN)?;
        let mut cc = self.cc_audio;
        let r = write_pes(
            AUDIO_PID,
            &mut cc,
            id,
            pts,
            pts,
            pcr.then_some(true),
            data,
            out,
        );
        self.cc_audio = cc;
        r
    }
}

/// Splits one PES over TS packets. `pcr_random_access` is `Some(random
/// access)` when the first packet carries a PCR.
#[allow(clippy::too_many_arguments)]
fn write_pes(
    pid_value: u16,
    cc: &mut ContinuityCounter,
    stream_id: StreamId,
    dts: i64,
    pts: i64,
    pcr_random_access: Option<bool>,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), MuxError> {
    let pid = pid(pid_value)?;
    let with_dts = dts != pts;
    let pes_header = PesHeader {
        stream_id,
        priority: false,
        data_alignment_indicator: true,
        copyright: false,
        original_or_copy: false,
        pts: Some(timestamp(pts)?),
        dts: if with_dts {
            Some(timestamp(dts)?)
        } else {
            None
        },
        escr: None,
    };
    let optional_len = 3 + 5 + if with_dts { 5 } else { 0 };
    let pes_header_len = 6 + optional_len;
    // Video may exceed 64 KiB: 0 means "unbounded", which ISO/IEC 13818-1
    // §2.4.3.7 allows in a transport stream for video only. Any other PES
    // must fit the 16-bit length; the segmenter bounds audio PES so, and a
    // longer one is refused rather than written with a length of 0.
    let total = optional_len + data.len();
    let pes_packet_len = if stream_id.is_video() {
        0
    } else {
        u16::try_from(total).map_err(|_| {
            MuxError(format!(
                "{} bytes of non-video PES exceed the 16-bit PES_packet_length",
                data.len()
            ))
        })?
    };
    let adaptation_field = match pcr_random_access {
        Some(random_access) => Some(AdaptationField {
            discontinuity_indicator: false,
            random_access_indicator: random_access,
            es_priority_indicator: false,
            pcr: Some(ClockReference::new((dts & TS_MASK) as u64 * 300)?),
            opcr: None,
            splice_countdown: None,
            transport_private_data: Vec::new(),
            extension: None,
        }),
        None => None,
    };
    let af_len = if adaptation_field.is_some() { 8 } else { 0 };
    let first_len = (PAYLOAD - af_len - pes_header_len).min(data.len());
    let (first, mut rest) = data.split_at(first_len);
    out.reserve((data.len() / PAYLOAD + 2) * TsPacket::SIZE);
    let mut w = TsPacketWriter::new(out);
    w.write_ts_packet(&TsPacket {
        header: header(pid, cc),
        adaptation_field,
        payload: Some(TsPayload::PesStart(Pes {
            header: pes_header,
            pes_packet_len,
            data: TsBytes::new(first)?,
        })),
    })?;
    while !rest.is_empty() {
        let n = rest.len().min(PAYLOAD);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        w.write_ts_packet(&TsPacket {
            header: header(pid, cc),
            adaptation_field: None,
            payload: Some(TsPayload::PesContinuation(TsBytes::new(chunk)?)),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpeg2ts::pes::{PesPacketReader, ReadPesPacket};
    use mpeg2ts::ts::TsPacketReader;

    #[test]
    fn round_trips_through_a_ts_reader() {
        let mut m = TsMuxer::default();
        let mut out = Vec::new();
        m.write_tables(
            Tracks {
                video: true,
                audio: true,
            },
            &mut out,
        )
        .unwrap();
        let video: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        m.write_video(9000, 12000, true, &video, &mut out).unwrap();
        let audio = vec![0x55u8; 700];
        m.write_audio(9100, false, &audio, &mut out).unwrap();
        assert_eq!(out.len() % TsPacket::SIZE, 0);
        assert!(out.chunks(TsPacket::SIZE).all(|p| p[0] == 0x47));

        let mut reader = PesPacketReader::new(TsPacketReader::new(&out[..]));
        let mut packets = vec![
            reader.read_pes_packet().unwrap().unwrap(),
            reader.read_pes_packet().unwrap().unwrap(),
        ];
        // The unbounded video PES only completes at the end of input.
        packets.sort_by_key(|p| p.header.stream_id.is_audio());
        let [v, a] = <[_; 2]>::try_from(packets).unwrap();
        assert!(v.header.stream_id.is_video());
        assert_eq!(v.data, video);
        assert_eq!(v.header.pts.unwrap().as_u64(), (12000 + PCR_LEAD) as u64);
        assert_eq!(v.header.dts.unwrap().as_u64(), (9000 + PCR_LEAD) as u64);
        assert!(a.header.stream_id.is_audio());
        assert_eq!(a.data, audio);
        assert_eq!(a.header.dts, None);
    }

    #[test]
    fn an_audio_pes_longer_than_its_16_bit_length_is_refused() {
        let mut m = TsMuxer::default();
        let mut out = Vec::new();
        // PTS header (8 bytes) + payload must fit 65535.
        m.write_audio(0, false, &vec![0; 65_527], &mut out).unwrap();
        let written = out.len();
        assert!(m.write_audio(0, false, &vec![0; 65_528], &mut out).is_err());
        assert_eq!(out.len(), written, "nothing written for the refused PES");
    }

    #[test]
    fn continuity_counters_advance_per_pid() {
        let mut m = TsMuxer::default();
        let mut out = Vec::new();
        m.write_video(0, 0, true, &[1u8; 1000], &mut out).unwrap();
        let ccs: Vec<u8> = out.chunks(TsPacket::SIZE).map(|p| p[3] & 0x0f).collect();
        assert_eq!(ccs, (0..ccs.len() as u8).collect::<Vec<_>>());
        let first_pkt = &out[..TsPacket::SIZE];
        assert_eq!(first_pkt[3] & 0x20, 0x20, "adaptation field with PCR");
        assert_eq!(first_pkt[5] & 0x50, 0x50, "random access + PCR flags");
    }

    #[test]
    fn wraps_timestamps_at_33_bits() {
        let mut m = TsMuxer::default();
        let mut out = Vec::new();
        let t = (1i64 << 33) + 500;
        m.write_tables(
            Tracks {
                video: true,
                audio: false,
            },
            &mut out,
        )
        .unwrap();
        m.write_video(t, t, true, &[1, 2, 3], &mut out).unwrap();
        let mut reader = PesPacketReader::new(TsPacketReader::new(&out[..]));
        let v = reader.read_pes_packet().unwrap().unwrap();
        assert_eq!(v.header.pts.unwrap().as_u64(), (500 + PCR_LEAD) as u64);
    }
}
