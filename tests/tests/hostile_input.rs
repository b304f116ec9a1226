//! Crafted and hostile RTMP input against the real `oxcast-ingest` binary.
//!
//! Each test sends bytes a broken encoder, scanner or attacker might send,
//! then proves two things: the offending connection is dealt with (closed
//! or its message dropped), and the server is alive and still turns a normal
//! ffmpeg publish on another key into HLS. Known crashers of `rml_rtmp` 0.8
//! are among the inputs: a short `@setDataFrame`, interleaved chunk
//! streams, and deeply nested AMF0 (a stack overflow would abort the whole
//! process).
//!
//! Run: `cargo test -p oxcast-tests --test hostile_input`

use std::path::PathBuf;
use std::time::Duration;

use oxcast_tests::media::{
    require, wait_until, Fixture, Playlist, Publisher, Server, ServerBuilder,
};
use oxcast_tests::rtmp_client::{
    amf0, chunks, connect_payload, contains, message, RawRtmp, AMF0_COMMAND, AMF0_DATA,
    SET_CHUNK_SIZE, WINDOW_ACK_SIZE,
};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const SEGMENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A server with `--config` holding `rtmp_yaml` under `rtmp:` and 1 s segments.
fn server_with(rtmp_yaml: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config: PathBuf = dir.path().join("config.yaml");
    let mut text = String::from("rtmp:\n  app: app\n");
    for line in rtmp_yaml.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&config, text).expect("write config");
    let server = ServerBuilder::default()
        .app_from_config("app")
        .arg("--config")
        .arg(config.as_os_str())
        .hls("fragment", "1s")
        .start();
    (server, dir)
}

/// The server is alive and a real publish on `key` produces a segment.
#[track_caller]
fn assert_serves_normal_publish(server: &mut Server, key: &str) {
    assert!(server.is_running(), "server died:\n{}", server.stderr());
    let media = require(Fixture::Av8s);
    let publisher = Publisher::start(media, &server.rtmp_url(key));
    let playlist = server.playlist_path(key);
    wait_until(&format!("a segment for {key}"), SEGMENT_TIMEOUT, || {
        Playlist::read(&playlist)
            .ok()
            .flatten()
            .is_some_and(|p| !p.segments.is_empty())
    });
    drop(publisher);
    assert!(server.is_running(), "server died:\n{}", server.stderr());
}

#[test]
fn short_set_data_frame_is_dropped() {
    let (mut server, _dir) = server_with("");
    let mut c = RawRtmp::handshaken(server.rtmp.unwrap()).unwrap();
    assert!(c.rtmp_connect("app").unwrap(), "connect answered");
    // `@setDataFrame` alone, and with only a name: rml_rtmp indexes past both.
    c.send(&message(
        4,
        AMF0_DATA,
        1,
        &amf0::string("@setDataFrame"),
        128,
    ))
    .unwrap();
    let mut two = amf0::string("@setDataFrame");
    two.extend(amf0::string("onMetaData"));
    c.send(&message(4, AMF0_DATA, 1, &two, 128)).unwrap();
    assert!(
        !c.closed_by_server_within(Duration::from_millis(500)),
        "harmless message closed the connection"
    );
    assert_serves_normal_publish(&mut server, "after-setdataframe");
}

#[test]
fn interleaved_chunk_streams_are_reassembled() {
    let (mut server, _dir) = server_with("");
    let mut c = RawRtmp::handshaken(server.rtmp.unwrap()).unwrap();
    // connect split into 128-byte chunks on csid 3, with a whole message on
    // csid 2 between its chunks (legal RTMP; rml_rtmp alone panics on it).
    let mut payload = connect_payload("app");
    payload.extend(amf0::object(&[("padding", &"x".repeat(300))]));
    let connect = chunks(3, 0, AMF0_COMMAND, 0, &payload, 128);
    assert!(connect.len() >= 3);
    let ack = message(2, WINDOW_ACK_SIZE, 0, &5_000_000u32.to_be_bytes(), 128);
    let mut wire = connect[0].clone();
    wire.extend(&ack);
    for rest in &connect[1..] {
        wire.extend(rest);
    }
    c.send(&wire).unwrap();
    let reply = c.read_for(Duration::from_secs(2)).unwrap();
    assert!(
        contains(&reply, b"_result"),
        "interleaved connect was not answered"
    );
    assert_serves_normal_publish(&mut server, "after-interleave");
}

#[test]
fn deeply_nested_amf_closes_only_that_connection() {
    let (mut server, _dir) = server_with("");
    let mut c = RawRtmp::handshaken(server.rtmp.unwrap()).unwrap();
    assert!(c.rtmp_connect("app").unwrap());
    let mut payload = amf0::string("@setDataFrame");
    payload.extend(amf0::nested_objects(3000)); // ~20 KB
    assert!(payload.len() > 19_000);
    c.send(&message(4, AMF0_DATA, 1, &payload, 128)).unwrap();
    assert!(
        c.closed_by_server_within(CLOSE_TIMEOUT),
        "deep AMF0 was accepted"
    );
    // Also as a command, before connect.
    let mut c = RawRtmp::handshaken(server.rtmp.unwrap()).unwrap();
    let mut cmd = amf0::string("connect");
    cmd.extend(amf0::number(1.0));
    cmd.extend(amf0::nested_objects(3000));
    c.send(&message(3, AMF0_COMMAND, 0, &cmd, 128)).unwrap();
    assert!(c.closed_by_server_within(CLOSE_TIMEOUT));
    assert_serves_normal_publish(&mut server, "after-deep-amf");
}

#[test]
fn invalid_chunk_sizes_close_the_connection() {
    let (mut server, _dir) = server_with("");
    for size in [0u32, 0x8000_0000, u32::MAX] {
        let mut c = RawRtmp::handshaken(server.rtmp.unwrap()).unwrap();
        c.send(&message(2, SET_CHUNK_SIZE, 0, &size.to_be_bytes(), 128))
            .unwrap();
        assert!(
            c.closed_by_server_within(CLOSE_TIMEOUT),
            "SetChunkSize {size} accepted"
        );
    }
    assert_serves_normal_publish(&mut server, "after-chunk-size");
}

#[test]
fn oversized_message_closes_the_connection() {
    let (mut server, _dir) = server_with("limits:\n  maxMessageSize: 1048576");
    let mut c = RawRtmp::handshaken(server.rtmp.unwrap()).unwrap();
    // Header announcing a 2 MiB message; only the header is needed.
    let mut header = vec![4u8, 0, 0, 0];
    header.extend_from_slice(&(2u32 << 20).to_be_bytes()[1..]);
    header.push(9);
    header.extend_from_slice(&1u32.to_le_bytes());
    c.send(&header).unwrap();
    assert!(
        c.closed_by_server_within(CLOSE_TIMEOUT),
        "oversized message accepted"
    );
    assert_serves_normal_publish(&mut server, "after-oversized");
}

#[test]
fn garbage_before_and_inside_the_handshake() {
    let (mut server, _dir) = server_with("limits:\n  handshakeTimeout: 2s");
    let addr = server.rtmp.unwrap();
    // An HTTP request to the RTMP port, then random bytes.
    let mut c = RawRtmp::connect(addr).unwrap();
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(c.closed_by_server_within(CLOSE_TIMEOUT));
    let mut c = RawRtmp::connect(addr).unwrap();
    let junk: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    c.send(&junk).unwrap();
    assert!(c.closed_by_server_within(CLOSE_TIMEOUT));
    // A valid handshake followed by garbage where chunks should be.
    let mut c = RawRtmp::handshaken(addr).unwrap();
    let _ = c.send(&junk);
    assert!(c.closed_by_server_within(CLOSE_TIMEOUT));
    assert_serves_normal_publish(&mut server, "after-garbage");
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    let (mut server, _dir) = server_with("limits:\n  handshakeTimeout: 1s");
    let mut c = RawRtmp::connect(server.rtmp.unwrap()).unwrap();
    assert!(
        c.closed_by_server_within(Duration::from_secs(4)),
        "silent client kept"
    );
    assert_serves_normal_publish(&mut server, "after-silence");
}

#[test]
fn idle_publisher_is_disconnected_and_its_stream_ended() {
    let (mut server, _dir) = server_with("limits:\n  idleTimeout: 2s");
    let media = require(Fixture::Av14s);
    let publisher = Publisher::start(media, &server.rtmp_url("idle"));
    let playlist = server.playlist_path("idle");
    wait_until("first segment", SEGMENT_TIMEOUT, || {
        Playlist::read(&playlist)
            .ok()
            .flatten()
            .is_some_and(|p| !p.segments.is_empty())
    });
    // Freeze ffmpeg: the connection stays open but no media flows.
    signal(publisher.pid(), libc::SIGSTOP);
    wait_until(
        "ENDLIST after the idle timeout",
        Duration::from_secs(10),
        || {
            Playlist::read(&playlist)
                .ok()
                .flatten()
                .is_some_and(|p| p.end_list)
        },
    );
    signal(publisher.pid(), libc::SIGCONT);
    drop(publisher);
    assert_serves_normal_publish(&mut server, "after-idle");
}

fn signal(pid: u32, signal: libc::c_int) {
    oxcast_tests::media::process::send_signal(pid, signal);
}

#[test]
fn connections_beyond_max_connections_are_refused() {
    let (mut server, _dir) = server_with("limits:\n  maxConnections: 2");
    let addr = server.rtmp.unwrap();
    let mut a = RawRtmp::handshaken(addr).unwrap();
    let mut b = RawRtmp::handshaken(addr).unwrap();
    let mut third = RawRtmp::connect(addr).unwrap();
    assert!(
        third.closed_by_server_within(CLOSE_TIMEOUT),
        "third connection accepted"
    );
    assert!(!a.closed_by_server_within(Duration::from_millis(200)));
    assert!(!b.closed_by_server_within(Duration::from_millis(200)));
    assert!(
        server
            .metric("oxcast_publish_rejections_total{reason=\"max_connections\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    drop((a, b));
    wait_until("connections released", Duration::from_secs(5), || {
        server.metric("oxcast_rtmp_connections") == Some(0.0)
    });
    assert_serves_normal_publish(&mut server, "after-max-connections");
}

#[test]
fn publishers_beyond_max_publishers_are_refused() {
    let (mut server, _dir) = server_with("limits:\n  maxPublishers: 1");
    let media = require(Fixture::Av14s);
    let first = Publisher::start(media, &server.rtmp_url("one"));
    let playlist = server.playlist_path("one");
    wait_until("first publisher live", SEGMENT_TIMEOUT, || {
        Playlist::read(&playlist)
            .ok()
            .flatten()
            .is_some_and(|p| !p.segments.is_empty())
    });
    let second = Publisher::start(require(Fixture::Av8s), &server.rtmp_url("two"));
    let result = second.wait_at_most(Duration::from_secs(20));
    assert!(!result.success(), "second publisher was accepted");
    assert!(!server.playlist_path("two").exists());
    assert!(
        server
            .metric("oxcast_publish_rejections_total{reason=\"max_publishers\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    drop(first);
    assert_serves_normal_publish(&mut server, "after-max-publishers");
}

/// A peer that announces large messages and never completes them, on many
/// chunk streams, is cut off before it can make the server hold more than
/// twice the message size limit; the server's memory stays small.
#[test]
fn half_sent_messages_cannot_grow_memory() {
    let (mut server, _dir) = server_with("limits:\n  maxMessageSize: 4194304");
    let pid = server.pid().expect("server pid");
    let mut c = RawRtmp::handshaken(server.rtmp.unwrap()).unwrap();
    c.send(&message(
        2,
        SET_CHUNK_SIZE,
        0,
        &(1u32 << 20).to_be_bytes(),
        128,
    ))
    .unwrap();
    let mut closed = false;
    for csid in 3..60u8 {
        // First 1 MiB chunk of a 4 MiB message on each chunk stream.
        let first = chunks(csid, 0, 9, 1, &vec![0u8; 4 << 20], 1 << 20).swap_remove(0);
        if c.send(&first).is_err() {
            closed = true;
            break;
        }
    }
    assert!(
        closed || c.closed_by_server_within(CLOSE_TIMEOUT),
        "peer was never cut off"
    );
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .expect("server peak RSS");
    assert!(rss_kib < 64 * 1024, "server peak RSS {rss_kib} KiB");
    assert_serves_normal_publish(&mut server, "after-memory");
}
