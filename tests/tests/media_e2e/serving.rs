//! HTTP serving of a live stream (headers, bodies, traversal) and the split
//! RTMP and HTTP roles on a shared root.

use oxcast_tests::http;
use oxcast_tests::media::{
    assert_running, need_ffmpeg, require, wait_ended, Fixture, Playlist, Role, Server,
};

use crate::{check_playlist, publish_live, start};

#[test]
fn http_serves_playlist_and_segments_with_cache_headers() {
    let (mut server, media) = start(Server::builder().hls("fragment", "1s"), Fixture::Av8s);
    let listening: Vec<String> = server
        .stdout_lines()
        .into_iter()
        .filter(|l| l.starts_with("listening"))
        .collect();
    assert_eq!(
        listening.len(),
        2,
        "one listening line per listener: {listening:?}"
    );
    let http_addr = server.http.expect("http listener");
    let key = "web1";
    let publisher = publish_live(&server, key, media, 2);

    let r = http::get(http_addr, &format!("/live/{key}/index.m3u8")).expect("GET playlist");
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/vnd.apple.mpegurl"),
        "playlist content-type {ct:?}"
    );
    let cc = r.header("cache-control").unwrap_or_default();
    assert!(cc.contains("no-cache"), "playlist cache-control {cc:?}");
    let pl = Playlist::parse(&r.text()).expect("served playlist parses");
    check_playlist(&pl);

    let seg = &pl.segments[0];
    let r = http::get(http_addr, &format!("/live/{key}/{}", seg.uri)).expect("GET segment");
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert_eq!(ct, "video/mp2t", "segment content-type");
    let cc = r.header("cache-control").unwrap_or_default();
    for part in ["public", "max-age=31536000", "immutable"] {
        assert!(
            cc.contains(part),
            "segment cache-control {cc:?} lacks {part}"
        );
    }
    let disk = std::fs::read(server.segment_path(key, &seg.uri)).expect("segment on disk");
    assert_eq!(r.body.len(), disk.len(), "served segment length");
    assert!(r.body == disk, "served segment differs from the file");
    assert_eq!(r.body.first(), Some(&0x47), "not an MPEG-TS packet");

    let r = http::get(http_addr, &format!("/live/{key}/999999999.ts")).expect("GET missing");
    assert_eq!(r.status, 404, "missing segment");
    for evil in [
        "/live/../../../../../../etc/passwd",
        "/live/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/live/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    ] {
        let r = http::get(http_addr, evil).expect("GET traversal");
        assert_ne!(r.status, 200, "{evil} served something");
        assert!(!r.text().contains("root:"), "{evil} leaked /etc/passwd");
    }
    let done = publisher.wait();
    assert!(done.success(), "{}", done.stderr);
    assert_running(&mut server);
}

#[test]
fn split_rtmp_and_http_roles_share_a_root() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let root = tempfile::Builder::new()
        .prefix("oxcast-split-")
        .tempdir()
        .expect("temp dir");
    let mut ingest = Server::builder()
        .role(Role::Rtmp)
        .root(root.path())
        .hls("fragment", "1s")
        .start();
    let mut web = Server::builder()
        .role(Role::Http)
        .root(root.path())
        .arg("--http-path-prefix")
        .arg("/hls")
        .start();
    assert!(ingest.http.is_none() && web.rtmp.is_none());
    let lines = |s: &Server| -> Vec<String> {
        s.stdout_lines()
            .into_iter()
            .filter(|l| l.starts_with("listening"))
            .collect()
    };
    assert_eq!(lines(&ingest).len(), 1, "rtmp role: {:?}", lines(&ingest));
    assert!(lines(&ingest)[0].starts_with("listening rtmp "));
    assert_eq!(lines(&web).len(), 1, "http role: {:?}", lines(&web));
    assert!(lines(&web)[0].starts_with("listening http "));

    let key = "split1";
    let publisher = publish_live(&ingest, key, media, 2);
    let addr = web.http.expect("http listener");
    let r = http::get(addr, &format!("/hls/{key}/index.m3u8")).expect("GET playlist");
    assert_eq!(r.status, 200, "http role serving the shared root");
    let pl = Playlist::parse(&r.text()).expect("served playlist parses");
    let r = http::get(addr, &format!("/hls/{key}/{}", pl.segments[0].uri)).expect("GET segment");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("video/mp2t"));
    let r = http::get(addr, &format!("/live/{key}/index.m3u8")).expect("GET old prefix");
    assert_eq!(
        r.status, 404,
        "the default prefix must not be served with --http-path-prefix /hls"
    );
    let done = publisher.wait();
    assert!(done.success(), "{}", done.stderr);
    wait_ended(&ingest.playlist_path(key));
    let r = http::get(addr, &format!("/hls/{key}/index.m3u8")).expect("GET final playlist");
    assert!(
        Playlist::parse(&r.text()).expect("parses").end_list,
        "served final playlist"
    );
    assert_running(&mut ingest);
    assert_running(&mut web);
}
