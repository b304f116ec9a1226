//! The connection state machine driven directly: client bytes built by
//! hand (as an encoder or an attacker sends them), decisions given the way
//! the driver gives them, time passed in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::live::{PlayPacket, StreamHeaders};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_MESSAGE: u32 = 64 * 1024;

fn config() -> MachineConfig {
    MachineConfig {
        app: "app".into(),
        allow_play: true,
        max_message_size: MAX_MESSAGE,
        handshake_timeout: HANDSHAKE_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50_000))
}

use crate::rtmp::amf::encode as amf0;

const AUDIO: u8 = 8;
const VIDEO: u8 = 9;
const AMF0_COMMAND: u8 = 20;
/// The message stream `createStream` hands out first.
const STREAM: u32 = 1;

/// A message as chunks of the default size 128: a type-0 header, then
/// type-3 continuations.
fn message(csid: u8, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, piece) in payload.chunks(128).enumerate() {
        if i == 0 {
            out.push(csid);
            out.extend_from_slice(&timestamp.to_be_bytes()[1..]);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            out.push(type_id);
            out.extend_from_slice(&stream_id.to_le_bytes());
        } else {
            out.push(0xc0 | csid);
        }
        out.extend_from_slice(piece);
    }
    out
}

fn command(stream_id: u32, name: &str, transaction: f64, args: &[Vec<u8>]) -> Vec<u8> {
    let payload = amf0::command(name, transaction, args);
    message(3, 0, AMF0_COMMAND, stream_id, &payload)
}

fn connect(app: &str) -> Vec<u8> {
    let mut payload = amf0::string("connect");
    payload.extend(amf0::number(1.0));
    payload.extend(amf0::object(&[
        ("app", app),
        ("tcUrl", &format!("rtmp://198.18.0.1/{app}")),
    ]));
    message(3, 0, AMF0_COMMAND, 0, &payload)
}

fn create_stream() -> Vec<u8> {
    command(0, "createStream", 2.0, &[])
}

fn publish(name: &str) -> Vec<u8> {
    publish_on(STREAM, name)
}

fn publish_on(stream_id: u32, name: &str) -> Vec<u8> {
    command(
        stream_id,
        "publish",
        3.0,
        &[amf0::string(name), amf0::string("live")],
    )
}

fn play(name: &str) -> Vec<u8> {
    command(STREAM, "play", 3.0, &[amf0::string(name)])
}

fn delete_stream() -> Vec<u8> {
    command(0, "deleteStream", 4.0, &[amf0::number(f64::from(STREAM))])
}

fn video(timestamp: u32, body: &[u8]) -> Vec<u8> {
    message(6, timestamp, VIDEO, STREAM, body)
}

fn audio(timestamp: u32, body: &[u8]) -> Vec<u8> {
    message(4, timestamp, AUDIO, STREAM, body)
}

const AVC_HEADER: &[u8] = &[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f];
const AVC_KEYFRAME: &[u8] = &[0x17, 1, 0, 0, 0, 0, 0, 0, 2, 0x65, 0x88];

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A machine, its start time, and what it has said so far.
struct Harness {
    m: ConnectionMachine,
    t0: Instant,
    sent: Vec<u8>,
}

impl Harness {
    /// Accepted at `t0`, handshake not yet done.
    fn new(config: MachineConfig) -> Self {
        let t0 = Instant::now();
        Self {
            m: ConnectionMachine::new(config, peer(), 7, t0),
            t0,
            sent: Vec::new(),
        }
    }

    /// After a plain (version 3, no digest) handshake.
    fn handshaken(config: MachineConfig) -> Self {
        let mut h = Self::new(config);
        let mut c0c1 = vec![3u8];
        c0c1.extend((0..1536u32).map(|i| (i * 7 + 3) as u8));
        c0c1[1..9].fill(0);
        h.m.handle_input(h.t0, &c0c1);
        assert!(h.m.in_handshake());
        assert_eq!(h.take_output().len(), 1 + 1536 + 1536, "S0, S1, S2");
        h.m.handle_input(h.t0, &[0x55; 1536]);
        assert!(!h.m.in_handshake(), "C2 completes the handshake");
        h.take_output();
        assert!(h.events().is_empty());
        h
    }

    fn at(&self, seconds: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(seconds)
    }

    fn input(&mut self, bytes: &[u8]) {
        self.m.handle_input(self.t0, bytes);
    }

    fn take_output(&mut self) -> Vec<u8> {
        let out = self.m.output().to_vec();
        self.sent.extend_from_slice(&out);
        self.m.sent();
        out
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.m.poll_event()).collect()
    }

    /// connect + createStream + publish in one read; returns the request.
    fn request_publish(&mut self, name: &str) -> (u32, PublishRequest) {
        self.input(&[connect("app"), create_stream(), publish(name)].concat());
        let mut events = self.events();
        assert_eq!(events.len(), 1, "{events:?}");
        match events.remove(0) {
            Event::PublishRequested {
                request_id,
                request,
            } => (request_id, request),
            other => panic!("expected a publish request, got {other:?}"),
        }
    }

    fn publishing(name: &str) -> Self {
        let mut h = Self::handshaken(config());
        let (id, _) = h.request_publish(name);
        h.m.accept_publish(h.t0, id);
        assert!(h.m.is_publishing());
        assert!(h.events().is_empty());
        h
    }
}

fn closed(events: &[Event]) -> Option<&Close> {
    events.iter().find_map(|e| match e {
        Event::Closed(c) => Some(c),
        _ => None,
    })
}

#[test]
fn pipelined_commands_wait_for_the_publish_decision() {
    let mut h = Harness::handshaken(config());
    // Everything an eager encoder may send in one packet: the commands and
    // the first media right behind the publish.
    h.input(
        &[
            connect("app"),
            create_stream(),
            publish("cam?token=s3cret&user=7"),
            video(0, AVC_HEADER),
            video(40, AVC_KEYFRAME),
        ]
        .concat(),
    );
    let out = h.take_output();
    assert!(contains(&out, "NetConnection.Connect.Success"));
    assert!(contains(&out, "_result"), "createStream answered");
    let events = h.events();
    let [Event::PublishRequested {
        request_id,
        request,
    }] = &events[..]
    else {
        panic!("expected exactly a publish request: {events:?}");
    };
    assert_eq!(request.name, "cam");
    assert_eq!(
        request.args,
        vec![
            ("token".to_string(), "s3cret".to_string()),
            ("user".to_string(), "7".to_string())
        ]
    );
    assert_eq!(request.app, "app");
    assert_eq!(request.tc_url, "rtmp://198.18.0.1/app");
    assert_eq!(request.client_id, 7);
    assert_eq!(request.addr, peer());
    // Nothing behind the publish is handled until the decision.
    assert!(!h.m.wants_input());
    assert!(!h.m.is_publishing());
    h.m.accept_publish(h.t0, *request_id);
    let out = h.take_output();
    assert!(contains(&out, "NetStream.Publish.Start"));
    let events = h.events();
    assert!(
        matches!(
            &events[..],
            [
                Event::Video { timestamp: 0, data: a },
                Event::Video { timestamp: 40, data: b },
            ] if a[..] == *AVC_HEADER && b[..] == *AVC_KEYFRAME
        ),
        "{events:?}"
    );
    assert!(h.m.wants_input());
}

#[test]
fn commands_split_across_reads_byte_by_byte() {
    let mut h = Harness::handshaken(config());
    let bytes = [connect("app"), create_stream(), publish("cam")].concat();
    for b in &bytes {
        h.input(std::slice::from_ref(b));
    }
    let events = h.events();
    assert!(
        matches!(&events[..], [Event::PublishRequested { request, .. }] if request.name == "cam"),
        "{events:?}"
    );
}

#[test]
fn media_before_a_publish_is_not_an_event() {
    let mut h = Harness::handshaken(config());
    h.input(&[connect("app"), create_stream(), video(0, AVC_HEADER)].concat());
    assert!(h.events().is_empty());
    assert!(!h.m.is_closed());
}

#[test]
fn publish_unpublish_republish() {
    let mut h = Harness::publishing("cam");
    h.input(&[audio(0, &[0xaf, 0, 0x12, 0x10]), video(0, AVC_HEADER)].concat());
    let events = h.events();
    assert!(
        matches!(&events[..], [Event::Audio { .. }, Event::Video { .. }]),
        "{events:?}"
    );
    h.input(&delete_stream());
    let events = h.events();
    assert!(matches!(&events[..], [Event::Unpublished]), "{events:?}");
    assert!(!h.m.is_publishing());
    assert!(!h.m.is_closed(), "the connection outlives the publication");
    // Media after the unpublish belongs to nobody.
    h.input(&video(80, AVC_KEYFRAME));
    assert!(h.events().is_empty());
    // The same connection publishes again, on the next stream id.
    h.input(&[create_stream(), publish_on(2, "cam")].concat());
    let events = h.events();
    let [Event::PublishRequested { request_id, .. }] = &events[..] else {
        panic!("no second publish request: {events:?}");
    };
    h.m.accept_publish(h.t0, *request_id);
    h.input(&message(6, 120, VIDEO, 2, AVC_KEYFRAME));
    let events = h.events();
    assert!(
        matches!(&events[..], [Event::Video { timestamp: 120, .. }]),
        "{events:?}"
    );
}

#[test]
fn a_second_publish_on_a_publishing_connection_is_refused() {
    let mut h = Harness::publishing("cam");
    h.take_output();
    h.input(&[create_stream(), publish("other")].concat());
    let events = h.events();
    assert!(
        matches!(
            &events[..],
            [
                Event::PublishRejected(PublishRejection::ConnectionBusy),
                Event::Closed(Close::Done)
            ]
        ),
        "{events:?}"
    );
    assert!(contains(&h.take_output(), "NetStream.Publish.BadName"));
}

#[test]
fn rejected_publish_sends_the_status_then_closes() {
    let mut h = Harness::handshaken(config());
    let (id, _) = h.request_publish("guessed-key");
    // Media queued behind the publish is dropped with the connection.
    h.input(&video(0, AVC_HEADER));
    h.m.reject_publish(h.t0, id, PublishRejection::Unauthorized);
    let out = h.take_output();
    assert!(contains(&out, "NetStream.Publish.BadName"));
    assert!(contains(&out, "not authorized"));
    let events = h.events();
    assert!(
        matches!(
            &events[..],
            [
                Event::PublishRejected(PublishRejection::Unauthorized),
                Event::Closed(Close::Done)
            ]
        ),
        "{events:?}"
    );
    assert!(h.m.is_closed() && !h.m.wants_input());
    // A closed machine ignores everything.
    h.input(&video(0, AVC_HEADER));
    h.m.accept_publish(h.t0, id);
    assert!(h.events().is_empty());
}

#[test]
fn an_answer_to_another_request_is_ignored() {
    let mut h = Harness::handshaken(config());
    let (id, _) = h.request_publish("cam");
    h.m.accept_publish(h.t0, id + 1);
    assert!(!h.m.is_publishing() && !h.m.wants_input());
    h.m.accept_publish(h.t0, id);
    assert!(h.m.is_publishing());
}

#[test]
fn unknown_application_is_refused() {
    let mut h = Harness::handshaken(config());
    h.input(&[connect("other"), create_stream(), publish("cam")].concat());
    let events = h.events();
    assert!(
        matches!(
            &events[..],
            [
                Event::PublishRejected(PublishRejection::UnknownApp),
                Event::Closed(Close::Done)
            ]
        ),
        "nothing after the refusal is handled: {events:?}"
    );
    assert!(contains(&h.take_output(), "NetConnection.Connect.Rejected"));
}

#[test]
fn application_name_may_end_in_a_slash() {
    let mut h = Harness::handshaken(config());
    h.input(&connect("app/"));
    assert!(contains(&h.take_output(), "NetConnection.Connect.Success"));
    assert!(h.events().is_empty());
}

#[test]
fn invalid_stream_names_are_refused() {
    for name in ["../etc", "", "a/b", "a b"] {
        let mut h = Harness::handshaken(config());
        h.input(&[connect("app"), create_stream(), publish(name)].concat());
        let events = h.events();
        assert!(
            matches!(
                &events[..],
                [
                    Event::PublishRejected(PublishRejection::InvalidName),
                    Event::Closed(Close::Done)
                ]
            ),
            "{name:?}: {events:?}"
        );
    }
}

#[test]
fn play_is_refused_when_denied() {
    let mut h = Harness::handshaken(MachineConfig {
        allow_play: false,
        ..config()
    });
    h.input(&[connect("app"), create_stream(), play("cam")].concat());
    let events = h.events();
    assert!(
        matches!(&events[..], [Event::Closed(Close::Done)]),
        "{events:?}"
    );
    let out = h.take_output();
    assert!(contains(&out, "NetStream.Play.Failed"));
    assert!(contains(&out, "play is denied"));
}

#[test]
fn play_of_a_stream_that_is_not_live_is_refused() {
    let mut h = Harness::handshaken(config());
    h.input(&[connect("app"), create_stream(), play("cam?x=1")].concat());
    let events = h.events();
    let [Event::PlayRequested {
        request_id,
        key,
        requested,
    }] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!(key.as_str(), "cam");
    assert_eq!(requested, "cam?x=1");
    h.m.play_not_found(h.t0, *request_id, requested);
    assert!(contains(&h.take_output(), "NetStream.Play.StreamNotFound"));
    assert!(matches!(closed(&h.events()), Some(Close::Done)));

    // A name that cannot be a stream is refused without asking.
    let mut h = Harness::handshaken(config());
    h.input(&[connect("app"), create_stream(), play("../x")].concat());
    assert!(matches!(closed(&h.events()), Some(Close::Done)));
    assert!(contains(&h.take_output(), "NetStream.Play.StreamNotFound"));
}

#[test]
fn allowed_play_sends_headers_then_starts_at_a_keyframe() {
    let mut h = Harness::handshaken(config());
    h.input(&[connect("app"), create_stream(), play("cam")].concat());
    let events = h.events();
    let [Event::PlayRequested { request_id, .. }] = &events[..] else {
        panic!("{events:?}");
    };
    let headers = StreamHeaders {
        metadata: None,
        video: Some((0, Bytes::from_static(AVC_HEADER))),
        audio: Some((0, Bytes::from_static(&[0xaf, 0, 0x12, 0x10]))),
    };
    h.m.accept_play(h.t0, *request_id, &headers);
    assert!(h.m.is_playing());
    let out = h.take_output();
    assert!(contains(&out, "NetStream.Play.Start"));
    assert!(
        out.windows(AVC_HEADER.len()).any(|w| w == AVC_HEADER),
        "video sequence header sent"
    );
    // Inter frames and audio before the first keyframe are skipped.
    h.m.play(PlayPacket::Video {
        timestamp: 40,
        data: Bytes::from_static(&[0x27, 1, 0, 0, 0, 0xaa, 0xbb]),
        keyframe: false,
    });
    h.m.play(PlayPacket::Audio {
        timestamp: 40,
        data: Bytes::from_static(&[0xaf, 1, 0xcc]),
    });
    assert!(h.take_output().is_empty());
    h.m.play(PlayPacket::Video {
        timestamp: 80,
        data: Bytes::from_static(AVC_KEYFRAME),
        keyframe: true,
    });
    h.m.play(PlayPacket::Audio {
        timestamp: 80,
        data: Bytes::from_static(&[0xaf, 1, 0xcc]),
    });
    let out = h.take_output();
    assert!(out.windows(AVC_KEYFRAME.len()).any(|w| w == AVC_KEYFRAME));
    assert!(out.ends_with(&[0xaf, 1, 0xcc]));
    // A lagging player skips to the next keyframe again.
    h.m.play_lagged();
    h.m.play(PlayPacket::Audio {
        timestamp: 120,
        data: Bytes::from_static(&[0xaf, 1, 0xdd]),
    });
    assert!(h.take_output().is_empty());
    assert!(h.events().is_empty());
    h.m.play(PlayPacket::Metadata(Arc::new(StreamMetadata::new())));
    assert!(contains(&h.take_output(), "onMetaData"));
    // The publisher's end ends the play.
    h.m.play(PlayPacket::End);
    assert!(matches!(closed(&h.events()), Some(Close::Done)));
}

#[test]
fn a_player_that_stops_playing_stays_connected() {
    let mut h = Harness::handshaken(config());
    h.input(&[connect("app"), create_stream(), play("cam")].concat());
    let Some(Event::PlayRequested { request_id, .. }) = h.m.poll_event() else {
        panic!("no play request");
    };
    h.m.accept_play(h.t0, request_id, &StreamHeaders::default());
    h.input(&delete_stream());
    let events = h.events();
    assert!(matches!(&events[..], [Event::PlayFinished]), "{events:?}");
    assert!(!h.m.is_playing() && !h.m.is_closed());
}

#[test]
fn handshake_must_complete_in_time() {
    let mut h = Harness::new(config());
    assert_eq!(h.m.poll_timeout(), Some(h.t0 + HANDSHAKE_TIMEOUT));
    h.m.handle_input(h.at(1.0), &[3]);
    h.m.handle_timeout(h.at(4.9));
    assert!(!h.m.is_closed());
    h.m.handle_timeout(h.at(5.0));
    assert!(matches!(
        closed(&h.events()),
        Some(Close::Handshake(ConnectionError::HandshakeTimeout(t))) if *t == HANDSHAKE_TIMEOUT
    ));
    assert_eq!(h.m.poll_timeout(), None);
}

#[test]
fn no_deadline_after_the_handshake_until_publishing() {
    let h = Harness::handshaken(config());
    assert_eq!(h.m.poll_timeout(), None);
}

#[test]
fn idle_publisher_is_closed() {
    let mut h = Harness::publishing("cam");
    assert_eq!(h.m.poll_timeout(), Some(h.t0 + IDLE_TIMEOUT));
    // Media at 8 s moves the deadline to 18 s.
    h.m.handle_input(h.at(8.0), &video(8_000, AVC_KEYFRAME));
    h.events();
    assert_eq!(h.m.poll_timeout(), Some(h.at(18.0)));
    h.m.handle_timeout(h.at(17.9));
    assert!(!h.m.is_closed());
    // Commands are not media: they do not keep a publisher alive.
    h.m.handle_input(h.at(17.95), &create_stream());
    h.m.handle_timeout(h.at(18.0));
    assert!(matches!(
        closed(&h.events()),
        Some(Close::Error(ConnectionError::Idle(t))) if *t == IDLE_TIMEOUT
    ));
}

#[test]
fn oversized_message_closes_the_connection() {
    let mut h = Harness::handshaken(config());
    let mut header = vec![3u8, 0, 0, 0];
    header.extend_from_slice(&(MAX_MESSAGE + 1).to_be_bytes()[1..]);
    header.push(VIDEO);
    header.extend_from_slice(&STREAM.to_le_bytes());
    h.input(&header);
    assert!(matches!(
        closed(&h.events()),
        Some(Close::Error(ConnectionError::Chunk(
            ChunkError::MessageTooLarge { .. }
        )))
    ));
}

#[test]
fn messages_queued_behind_a_decision_are_bounded() {
    let mut h = Harness::handshaken(config());
    h.request_publish("cam");
    let frame = vec![0x27; MAX_MESSAGE as usize - 16];
    for i in 0..2 {
        h.input(&video(i, &frame));
        assert!(!h.m.is_closed(), "two large messages may wait");
    }
    h.input(&video(2, &frame));
    assert!(matches!(
        closed(&h.events()),
        Some(Close::Error(ConnectionError::TooMuchPending(_)))
    ));
}

#[test]
fn malformed_input_closes_only_this_connection() {
    let mut good = Harness::publishing("good");
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("bad handshake version", vec![0x47, 0x45, 0x54, 0x20]),
        (
            "short command (rml_rtmp drains three values)",
            message(3, 0, AMF0_COMMAND, 0, &amf0::string("connect")),
        ),
        ("deeply nested AMF0", {
            let mut p = amf0::string("connect");
            p.extend(amf0::number(1.0));
            for _ in 0..10_000 {
                p.extend_from_slice(&[0x03, 0, 1, b'a']);
            }
            message(3, 0, AMF0_COMMAND, 0, &p)
        }),
        (
            "chunk stream without a first header",
            vec![0x43, 0, 0, 0, 0, 0, 5, VIDEO, 1, 2, 3, 4, 5],
        ),
        ("chunk size 0", message(2, 0, 1, 0, &0u32.to_be_bytes())),
    ];
    for (what, bytes) in inputs {
        let mut bad = if what.starts_with("bad handshake") {
            Harness::new(config())
        } else {
            Harness::handshaken(config())
        };
        bad.input(&bytes);
        let events = bad.events();
        assert!(
            matches!(
                closed(&events),
                Some(Close::Error(_)) | Some(Close::Handshake(_))
            ),
            "{what}: {events:?}"
        );
        // The other connection goes on as if nothing happened.
        good.input(&video(0, AVC_KEYFRAME));
        let events = good.events();
        assert!(
            matches!(&events[..], [Event::Video { .. }]),
            "{what}: {events:?}"
        );
    }
}

#[test]
fn peer_leaving_during_the_handshake_is_a_handshake_failure() {
    let mut h = Harness::new(config());
    h.m.peer_closed();
    assert!(matches!(
        closed(&h.events()),
        Some(Close::Handshake(ConnectionError::Handshake(_)))
    ));
    let mut h = Harness::handshaken(config());
    h.m.peer_closed();
    h.m.fail(ConnectionError::Fenced);
    let events = h.events();
    assert!(
        matches!(&events[..], [Event::Closed(Close::Done)]),
        "the first reason counts: {events:?}"
    );
}

#[test]
fn fencing_is_an_error_close() {
    let mut h = Harness::publishing("cam");
    h.m.fail(ConnectionError::Fenced);
    assert!(matches!(
        closed(&h.events()),
        Some(Close::Error(ConnectionError::Fenced))
    ));
}

#[test]
fn large_messages_reach_the_session_whole_with_extended_timestamps() {
    // Re-emitted to the session in several chunks (SESSION_CHUNK_SIZE) and
    // fed a chunk at a time: a keyframe-sized message still arrives whole,
    // with its timestamp, including one past the 24-bit field.
    let mut h = Harness::publishing("cam");
    let frame: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let timestamp = 0x0123_4567u32;
    let mut wire = vec![6u8, 0xff, 0xff, 0xff];
    wire.extend_from_slice(&(frame.len() as u32).to_be_bytes()[1..]);
    wire.push(VIDEO);
    wire.extend_from_slice(&STREAM.to_le_bytes());
    for (i, piece) in frame.chunks(128).enumerate() {
        if i > 0 {
            wire.push(0xc0 | 6);
        }
        // The extended timestamp follows every chunk header of the message.
        wire.extend_from_slice(&timestamp.to_be_bytes());
        wire.extend_from_slice(piece);
    }
    wire.extend(video(40, AVC_KEYFRAME));
    h.input(&wire);
    let events = h.events();
    let [Event::Video {
        timestamp: first,
        data,
    }, Event::Video { timestamp: 40, .. }] = &events[..]
    else {
        panic!("expected two video messages: {events:?}");
    };
    assert_eq!(*first, timestamp);
    assert_eq!(&data[..], &frame[..]);
    assert!(!h.m.is_closed());
}
