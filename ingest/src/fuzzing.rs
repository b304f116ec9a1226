//! Entry points for the fuzz targets in `ingest/fuzz/` and for replaying
//! their corpora in ordinary tests (`ingest/tests/fuzz_corpus.rs`). The
//! only acceptable outcomes are a value or an error, never a panic, a hang
//! or an abort.
//!
//! [`rtmp_server_input`] drives the server's connection state machine
//! ([`ConnectionMachine`]), the very type the server's connection tasks
//! drive: only the socket, the auth/claim calls and the timers (which the
//! machine leaves to its driver) are replaced by answers given here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::hls::{PlaylistEntry, PlaylistWindow, SegmentEvent, Segmenter, SegmenterConfig};
use crate::live::{PlayPacket, StreamHeaders};
use crate::media::Remuxer;
use crate::rtmp::machine::{ConnectionMachine, Event, MachineConfig};

/// The configuration the RTMP target runs with: the server's defaults,
/// with a 1 MiB message limit and play allowed (so the play path is
/// reachable too).
fn machine_config() -> MachineConfig {
    MachineConfig {
        app: "app".into(),
        allow_play: true,
        max_message_size: 1 << 20,
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
    }
}

/// A plain (version 3, no digest) C0+C1 and a C2: what the target feeds
/// before the input when told to skip the handshake, so the fuzzer need
/// not forge one.
fn canned_handshake() -> Vec<u8> {
    let mut bytes = vec![3u8];
    bytes.extend((0..1536u32).map(|i| (i * 7 + 3) as u8));
    bytes[1..9].fill(0);
    bytes.extend(std::iter::repeat_n(0x55, 1536));
    bytes
}

/// The bytes of one RTMP client, read by read, through the server's
/// [`ConnectionMachine`]: handshake, chunk reassembly and vetting, the
/// `rml_rtmp` session and the machine's own decisions (application name,
/// stream names, busy connection). Publish requests are accepted (open
/// auth), play requests too (with the sequence headers the publication
/// would have), and the media the machine emits is remuxed and segmented.
/// Each read advances the clock by 1 ms and checks the machine's timeouts.
///
/// The first byte of `data` picks the read size, so the fuzzer also
/// explores message boundaries that straddle reads. When the second byte
/// is odd a valid handshake is fed first, so the fuzzer reaches the chunk
/// layer without having to forge one. Returns how many audio/video frames
/// reached the segmenter.
pub fn rtmp_server_input(data: &[u8]) -> usize {
    let Some((&split, rest)) = data.split_first() else {
        return 0;
    };
    let Some((&mode, rest)) = rest.split_first() else {
        return 0;
    };
    let step = usize::from(split).max(1) * 7;
    let start = Instant::now();
    let peer = SocketAddr::from(([198, 18, 0, 1], 1935));
    let mut machine = ConnectionMachine::new(machine_config(), peer, 1, start);
    let mut media = MediaPath::new();
    if mode & 1 == 1 {
        machine.handle_input(start, &canned_handshake());
    }
    for (i, piece) in rest.chunks(step).enumerate() {
        let now = start + Duration::from_millis(i as u64 + 1);
        machine.handle_input(now, piece);
        machine.handle_timeout(now);
        if machine.is_playing() {
            // Feed the player what a publication would fan out.
            machine.play(PlayPacket::Video {
                timestamp: i as u32,
                data: Bytes::copy_from_slice(piece),
                keyframe: piece.first().is_some_and(|b| b & 1 == 1),
            });
        }
        if media.drive(&mut machine, now) {
            break;
        }
        machine.sent();
    }
    media.frames
}

/// What the driver does with a machine's events, minus the IO.
struct MediaPath {
    remuxer: Remuxer,
    segmenter: Segmenter,
    events: Vec<SegmentEvent>,
    headers: StreamHeaders,
    frames: usize,
}

impl MediaPath {
    fn new() -> Self {
        Self {
            remuxer: Remuxer::new(),
            segmenter: Segmenter::new(SegmenterConfig {
                fragment: 90_000,
                max_fragment: 180_000,
                forced_cuts: true,
            }),
            events: Vec::new(),
            headers: StreamHeaders::default(),
            frames: 0,
        }
    }

    /// Handles every pending event; true once the connection is closed.
    fn drive(&mut self, machine: &mut ConnectionMachine, now: Instant) -> bool {
        while let Some(event) = machine.poll_event() {
            match event {
                Event::PublishRequested { request_id, .. } => {
                    machine.accept_publish(now, request_id)
                }
                Event::PlayRequested { request_id, .. } => {
                    machine.accept_play(now, request_id, &self.headers)
                }
                Event::Video { timestamp, data } => {
                    if crate::media::VideoTag::classify(&data).is_sequence_header() {
                        self.headers.video = Some((timestamp, data.clone()));
                    }
                    let frame = self.remuxer.push_video(timestamp, &data);
                    self.frame(frame);
                }
                Event::Audio { timestamp, data } => {
                    if crate::media::AudioTag::classify(&data).is_sequence_header() {
                        self.headers.audio = Some((timestamp, data.clone()));
                    }
                    let frame = self.remuxer.push_audio(timestamp, &data);
                    if let Some(config) = self.remuxer.audio_config() {
                        self.segmenter
                            .set_audio_frame_duration(config.frame_duration_90khz());
                    }
                    self.frame(frame);
                }
                Event::Unpublished => {
                    let _ = self.segmenter.finish(&mut self.events);
                    self.events.clear();
                }
                Event::Closed(_) => return true,
                Event::PublishRejected(_) | Event::Metadata(_) | Event::PlayFinished => {}
            }
        }
        false
    }

    fn frame(&mut self, frame: Result<Option<crate::media::MediaFrame>, crate::media::MediaError>) {
        if self.remuxer.take_config_change() {
            self.segmenter.force_discontinuity();
        }
        if let Ok(Some(frame)) = frame {
            self.frames += 1;
            let _ = self.segmenter.push(&frame, &mut self.events);
        }
        self.events.clear();
    }
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

/// An H.264 sequence parameter set NAL unit (with its NAL header byte)
/// through [`crate::media::sps::resolution`], the parser that reads the
/// publisher's picture size. Returns the size when the SPS parses.
pub fn sps(data: &[u8]) -> Option<(u32, u32)> {
    crate::media::sps::resolution(data).ok()
}

/// Text through the playlist parser ([`PlaylistWindow::parse`], used to
/// continue a stream after a restart and by the HTTP role's stream scan).
/// A playlist it parses
/// must render to text that parses back to the same rendering: the
/// rendering is a fixed point after one round. Returns the number of
/// segments the model parsed.
pub fn playlist(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let base = "https://cdn.example/live/cam/";
    let Ok(window) = PlaylistWindow::parse(&text, base) else {
        return 0;
    };
    let rendered = window.render(base);
    let again = match PlaylistWindow::parse(&rendered, base) {
        Ok(w) => w,
        Err(e) => panic!("rendered playlist does not parse ({e}):\n{rendered}"),
    };
    let rendered_again = again.render(base);
    assert_eq!(rendered, rendered_again, "rendering is not a fixed point");
    window.entries.len()
}
