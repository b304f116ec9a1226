//! Entry points for the fuzz targets in `ingest/fuzz/` and for replaying
//! their corpora in ordinary tests. Each runs the server's real input path on
//! arbitrary bytes, in memory; the only acceptable outcomes are a value or an
//! error, never a panic, a hang or an abort.

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};

use crate::hls::{PlaylistEntry, PlaylistWindow, SegmentEvent, Segmenter, SegmenterConfig};
use crate::media::Remuxer;
use crate::rtmp::chunks::ChunkReassembler;

/// The RTMP path a client's bytes take: handshake, chunk reassembly and
/// vetting, the `rml_rtmp` session (every request accepted, as for a
/// publisher with open auth), then remuxing and segmenting of its media.
///
/// The first byte of `data` picks where the input is split into reads, so
/// the fuzzer also explores message boundaries that straddle reads. The
/// handshake is skipped when the second byte is odd, so the fuzzer reaches
/// the chunk layer without having to forge a valid handshake.
/// Returns how many audio/video frames reached the segmenter.
pub fn rtmp_server_input(data: &[u8]) -> usize {
    let Some((&split, rest)) = data.split_first() else {
        return 0;
    };
    let Some((&mode, mut rest)) = rest.split_first() else {
        return 0;
    };
    let step = usize::from(split).max(1) * 7;

    if mode & 1 == 0 {
        let mut hs = Handshake::new(PeerType::Server);
        loop {
            let n = step.min(rest.len());
            if n == 0 {
                return 0;
            }
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            match hs.process_bytes(piece) {
                Ok(HandshakeProcessResult::InProgress { .. }) => continue,
                Ok(HandshakeProcessResult::Completed {
                    remaining_bytes, ..
                }) => {
                    return session_input(&remaining_bytes, rest, step);
                }
                Err(_) => return 0,
            }
        }
    }
    session_input(&[], rest, step)
}

fn session_input(first: &[u8], rest: &[u8], step: usize) -> usize {
    let mut frames = 0;
    let Ok((mut session, _)) = ServerSession::new(ServerSessionConfig::new()) else {
        return 0;
    };
    if session
        .handle_input(&ChunkReassembler::session_preamble())
        .is_err()
    {
        return 0;
    }
    let mut chunks = ChunkReassembler::new(1 << 20);
    let mut remuxer = Remuxer::new();
    let mut segmenter = Segmenter::new(SegmenterConfig {
        fragment: 90_000,
        max_fragment: 180_000,
        forced_cuts: true,
    });
    let mut events = Vec::new();
    let mut normalized = Vec::new();
    let pieces = std::iter::once(first).chain(rest.chunks(step));
    for piece in pieces {
        normalized.clear();
        if chunks.push(piece, &mut normalized).is_err() {
            return frames;
        }
        let mut start = 0;
        for &end in chunks.message_ends() {
            let Ok(results) = session.handle_input(&normalized[start..end]) else {
                return frames;
            };
            start = end;
            let mut queue: std::collections::VecDeque<ServerSessionResult> = results.into();
            while let Some(result) = queue.pop_front() {
                let ServerSessionResult::RaisedEvent(event) = result else {
                    continue;
                };
                match event {
                    ServerSessionEvent::ConnectionRequested { request_id, .. }
                    | ServerSessionEvent::PublishStreamRequested { request_id, .. }
                    | ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                        if let Ok(more) = session.accept_request(request_id) {
                            queue.extend(more);
                        }
                    }
                    ServerSessionEvent::VideoDataReceived {
                        data, timestamp, ..
                    } => {
                        if let Ok(Some(frame)) = remuxer.push_video(timestamp.value, &data) {
                            frames += 1;
                            let _ = segmenter.push(&frame, &mut events);
                        }
                    }
                    ServerSessionEvent::AudioDataReceived {
                        data, timestamp, ..
                    } => {
                        if let Ok(Some(frame)) = remuxer.push_audio(timestamp.value, &data) {
                            frames += 1;
                            let _ = segmenter.push(&frame, &mut events);
                        }
                    }
                    _ => {}
                }
                events.clear();
            }
        }
    }
    frames
}

/// Adds every completed segment in `events` to `window`; returns the last id.
fn list_segments(events: &mut Vec<SegmentEvent>, window: &mut PlaylistWindow, mut id: u64) -> u64 {
    for event in events.drain(..) {
        if let SegmentEvent::End { duration } = event {
            id += 1;
            window.push(
                PlaylistEntry {
                    id,
                    file_name: format!("{id}.ts"),
                    duration,
                    discontinuity: id.is_multiple_of(3),
                    program_date_time: Some(1_700_000_000_000 + id as i64),
                    key: None,
                },
                450_000,
            );
        }
    }
    id
}

/// FLV tags straight into the media and HLS stages. `data` is a sequence of
/// records `[kind, ts0, ts1, ts2, ts3, len0, len1, payload…]` where kind's
/// low bit picks audio or video; then the segments become a playlist that
/// is rendered and parsed back. Returns the number of segments completed.
pub fn flv_to_hls(data: &[u8]) -> u64 {
    let mut remuxer = Remuxer::new();
    let mut segmenter = Segmenter::new(SegmenterConfig {
        fragment: 45_000,
        max_fragment: 90_000,
        forced_cuts: true,
    });
    let mut events = Vec::new();
    let mut window = PlaylistWindow::new(oxcast_crds::PlaylistType::Live, 1);
    let mut id = 0u64;
    let mut rest = data;
    while rest.len() >= 7 {
        let kind = rest[0];
        let ts = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let len = usize::from(u16::from_be_bytes([rest[5], rest[6]])).min(rest.len() - 7);
        let tag = &rest[7..7 + len];
        rest = &rest[7 + len..];
        let frame = if kind & 1 == 0 {
            remuxer.push_video(ts, tag)
        } else {
            let frame = remuxer.push_audio(ts, tag);
            if let Some(config) = remuxer.audio_config() {
                segmenter.set_audio_frame_duration(config.frame_duration_90khz());
            }
            frame
        };
        if remuxer.take_config_change() {
            segmenter.force_discontinuity();
        }
        if let Ok(Some(frame)) = frame {
            let _ = segmenter.push(&frame, &mut events);
        }
        id = list_segments(&mut events, &mut window, id);
    }
    let _ = segmenter.finish(&mut events);
    id = list_segments(&mut events, &mut window, id);
    let text = window.render("");
    let _ = PlaylistWindow::parse(&text, "");
    id
}
