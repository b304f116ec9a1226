//! A publisher that unpublishes (`FCUnpublish` + `deleteStream`, as FFmpeg
//! does when it stops) but keeps its TCP connection open must see its
//! stream end promptly: the server coalesces a publisher's reads
//! (`SO_RCVLOWAT`), and those few bytes stay below the low-water mark, so
//! the once-a-second idle tick has to pick them up. (Tokio's `try_read`
//! answers from cached readiness and left them unread until the peer
//! closed; the stream stayed live for as long as the connection did.)
//!
//! Run: `cargo test -p oxcast-tests --test rtmp_unpublish`

use std::time::Duration;

use oxcast_tests::media::{http, wait_until, ServerBuilder};
use oxcast_tests::rtmp_client::publisher::{self, RtmpUrl};
use tokio::io::AsyncWriteExt;

fn publishers(addr: std::net::SocketAddr) -> Option<f64> {
    let body = http::get(addr, "/metrics").ok()?.text();
    http::sample(&body, "oxcast_publishers")
}

#[test]
fn unpublish_ends_the_stream_while_the_connection_stays_open() {
    let server = ServerBuilder::default().start();
    let metrics = server.http.expect("http listener");
    let rtmp = server.rtmp.expect("rtmp listener");
    let url = RtmpUrl {
        host: rtmp.ip().to_string(),
        port: rtmp.port(),
        app: server.app.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut publishing = publisher::publish(&url, "cam", Duration::from_secs(10))
            .await
            .expect("publish starts");
        let drain = tokio::spawn(publisher::drain(publishing.reader));
        tokio::task::spawn_blocking(move || {
            wait_until("one publisher", Duration::from_secs(10), || {
                publishers(metrics) == Some(1.0)
            })
        })
        .await
        .expect("poll task");
        let bye = publisher::unpublish_messages("cam", publishing.stream_id);
        assert!(bye.len() < 1024, "the unpublish is a few bytes");
        publishing
            .writer
            .write_all(&bye)
            .await
            .expect("send unpublish");
        // The connection stays open; the stream must end anyway, within
        // the 1 s tick (plus slack for a loaded machine).
        tokio::task::spawn_blocking(move || {
            wait_until(
                "no publisher after the unpublish",
                Duration::from_secs(5),
                || publishers(metrics) == Some(0.0),
            )
        })
        .await
        .expect("poll task");
        assert!(!drain.is_finished(), "the server closed the connection");
        drop(publishing.writer);
    });
}
