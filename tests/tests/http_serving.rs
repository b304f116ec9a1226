//! The HTTP role against the real binary: every header rule and status code
//! of serving the HLS tree, the probes, metrics and the player page.
//!
//! Each test starts `oxcast-ingest http` on port 0 over a temporary root it
//! fills by hand, and talks raw HTTP/1.1 to it.

use std::time::{Duration, SystemTime};

use oxcast_tests::http::{fetch, http_date, request, sample, Response};
use oxcast_tests::media::{mtime_secs, wait_for, wait_until, write_aged, Role, Server};

const PLAYLIST: &str = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2.000,\n7.ts\n";
const AGE: Duration = Duration::from_secs(30);
const YEAR: i64 = 31_536_000;

/// A root with `cam/index.m3u8` and `cam/7.ts` (1000 bytes, 0..=255 repeating).
fn tree() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    write_aged(&dir.path().join("cam/index.m3u8"), PLAYLIST.as_bytes(), AGE);
    write_aged(&dir.path().join("cam/7.ts"), &segment, AGE);
    (dir, segment)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[track_caller]
fn assert_validators(r: &Response, mtime: i64) {
    let etag = r.expect_header("etag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "strong quoted ETag, got {etag}"
    );
    assert_eq!(http_date(r.expect_header("last-modified")), mtime);
}

#[test]
fn playlists_are_revalidated_every_time() {
    let (dir, _) = tree();
    let server = Server::http_only(dir.path(), &[]);
    let addr = server.http.expect("http");
    let r = fetch(addr, "/live/cam/index.m3u8", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), PLAYLIST);
    assert_eq!(
        r.expect_header("content-type"),
        "application/vnd.apple.mpegurl"
    );
    assert_eq!(r.expect_header("cache-control"), "no-cache");
    let expires = http_date(r.expect_header("expires"));
    let date = http_date(r.expect_header("date"));
    assert!(
        expires < date,
        "Expires {expires} must lie before Date {date}"
    );
    assert_eq!(
        r.expect_header("content-length"),
        PLAYLIST.len().to_string()
    );
    assert_eq!(r.expect_header("access-control-allow-origin"), "*");
    assert_eq!(r.expect_header("accept-ranges"), "bytes");
    assert_validators(&r, mtime_secs(&dir.path().join("cam/index.m3u8")));
}

#[test]
fn segments_are_cached_for_a_year() {
    let (dir, segment) = tree();
    let server = Server::http_only(dir.path(), &[]);
    let addr = server.http.expect("http");
    let r = fetch(addr, "/live/cam/7.ts", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, segment);
    assert_eq!(r.expect_header("content-type"), "video/mp2t");
    assert_eq!(
        r.expect_header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    let expires = http_date(r.expect_header("expires"));
    let date = http_date(r.expect_header("date"));
    assert!(
        (expires - date - YEAR).abs() <= 2,
        "Expires {expires} should be a year after Date {date}"
    );
    assert_eq!(r.expect_header("access-control-allow-origin"), "*");
    assert_validators(&r, mtime_secs(&dir.path().join("cam/7.ts")));
}

#[test]
fn head_has_the_headers_of_get_and_no_body() {
    let (dir, segment) = tree();
    let server = Server::http_only(dir.path(), &[]);
    let addr = server.http.expect("http");
    for path in ["/live/cam/7.ts", "/live/cam/index.m3u8"] {
        let g = fetch(addr, path, &[]);
        let h = request(addr, "HEAD", path, &[]).expect("HEAD");
        assert_eq!(h.status, 200);
        assert!(h.body.is_empty());
        for name in [
            "content-type",
            "content-length",
            "cache-control",
            "etag",
            "last-modified",
            "access-control-allow-origin",
        ] {
            assert_eq!(h.header(name), g.header(name), "{path} {name}");
        }
    }
    let h = request(addr, "HEAD", "/live/cam/7.ts", &[]).expect("HEAD");
    assert_eq!(h.expect_header("content-length"), segment.len().to_string());
}

#[test]
fn conditional_requests_answer_304_and_412() {
    let (dir, _) = tree();
    let server = Server::http_only(dir.path(), &[]);
    let addr = server.http.expect("http");
    for path in ["/live/cam/7.ts", "/live/cam/index.m3u8"] {
        let first = fetch(addr, path, &[]);
        let etag = first.expect_header("etag").to_string();
        let last_modified = first.expect_header("last-modified").to_string();

        let r = fetch(addr, path, &[("If-None-Match", &etag)]);
        assert_eq!(r.status, 304, "{path} If-None-Match current");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(r.header("cache-control"), first.header("cache-control"));
        assert!(r.header("expires").is_some(), "304 repeats Expires");
        assert!(r.header("content-type").is_none());

        let weak = format!("W/{etag}");
        let list = format!("\"nope\", {etag}");
        assert_eq!(fetch(addr, path, &[("If-None-Match", &weak)]).status, 304);
        assert_eq!(fetch(addr, path, &[("If-None-Match", &list)]).status, 304);
        assert_eq!(fetch(addr, path, &[("If-None-Match", "*")]).status, 304);
        let r = fetch(addr, path, &[("If-None-Match", "\"stale\"")]);
        assert_eq!(r.status, 200, "{path} If-None-Match stale");
        assert!(!r.body.is_empty());

        assert_eq!(
            fetch(addr, path, &[("If-Modified-Since", &last_modified)]).status,
            304
        );
        let earlier = httpdate::fmt_http_date(
            SystemTime::UNIX_EPOCH + Duration::from_secs((http_date(&last_modified) - 1) as u64),
        );
        assert_eq!(
            fetch(addr, path, &[("If-Modified-Since", &earlier)]).status,
            200
        );
        assert_eq!(
            fetch(addr, path, &[("If-Modified-Since", "yesterday")]).status,
            200
        );
        // If-None-Match wins over If-Modified-Since (RFC 7232 §6).
        let both = fetch(
            addr,
            path,
            &[
                ("If-None-Match", "\"stale\""),
                ("If-Modified-Since", &last_modified),
            ],
        );
        assert_eq!(both.status, 200);

        assert_eq!(fetch(addr, path, &[("If-Match", &etag)]).status, 200);
        assert_eq!(fetch(addr, path, &[("If-Match", "\"stale\"")]).status, 412);
        assert_eq!(
            fetch(addr, path, &[("If-Unmodified-Since", &earlier)]).status,
            412
        );
        // HEAD follows the same rules.
        let h = request(addr, "HEAD", path, &[("If-None-Match", &etag)]).expect("HEAD");
        assert_eq!(h.status, 304);
    }
}

#[test]
fn a_playlist_replaced_by_rename_is_served_fresh() {
    let (dir, _) = tree();
    let server = Server::http_only(dir.path(), &[]);
    let addr = server.http.expect("http");
    let path = "/live/cam/index.m3u8";
    let v1 = fetch(addr, path, &[]);
    let etag1 = v1.expect_header("etag").to_string();
    assert_eq!(
        fetch(addr, path, &[]).body,
        v1.body,
        "served again (from memory)"
    );
    // The ingest server's way: a temp file renamed over the playlist. The
    // new version has the same length and, here, the same mtime second.
    let v2_text = PLAYLIST.replace("#EXT-X-MEDIA-SEQUENCE:7", "#EXT-X-MEDIA-SEQUENCE:8");
    assert_eq!(v2_text.len(), PLAYLIST.len());
    let tmp = dir.path().join("cam/.index.m3u8.tmp");
    std::fs::write(&tmp, &v2_text).expect("write");
    std::fs::rename(&tmp, dir.path().join("cam/index.m3u8")).expect("rename");
    let v2 = fetch(addr, path, &[("If-None-Match", &etag1)]);
    assert_eq!(v2.status, 200, "the old ETag no longer matches");
    assert_eq!(v2.text(), v2_text);
    assert_ne!(v2.expect_header("etag"), etag1);
    // Modified in the current second: Last-Modified is withheld (it could
    // not tell this version from another one written in the same second),
    // so an If-Modified-Since client cannot be wrongly told "not modified".
    if mtime_secs(&dir.path().join("cam/index.m3u8")) == now_secs() {
        assert!(v2.header("last-modified").is_none());
    }
}

#[test]
fn ranges_answer_206_and_416() {
    let (dir, segment) = tree();
    let server = Server::http_only(dir.path(), &[]);
    let addr = server.http.expect("http");
    let path = "/live/cam/7.ts";
    let len = segment.len();
    let cases: [(&str, usize, usize); 5] = [
        ("bytes=0-99", 0, 99),
        ("bytes=100-199", 100, 199),
        ("bytes=900-", 900, len - 1),
        ("bytes=-10", len - 10, len - 1),
        ("bytes=990-5000", 990, len - 1),
    ];
    for (range, first, last) in cases {
        let r = fetch(addr, path, &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.expect_header("content-range"),
            format!("bytes {first}-{last}/{len}"),
            "{range}"
        );
        assert_eq!(r.body, &segment[first..=last], "{range}");
        assert_eq!(r.expect_header("content-type"), "video/mp2t");
        assert!(r.header("etag").is_some() && r.header("cache-control").is_some());
    }
    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let r = fetch(addr, path, &[("Range", range)]);
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.expect_header("content-range"), format!("bytes */{len}"));
        assert!(r.body.is_empty());
    }
    // Ignored: other units, bad syntax, several ranges → the whole file.
    for range in ["items=0-1", "bytes=9-1", "bytes=0-1,5-6"] {
        let r = fetch(addr, path, &[("Range", range)]);
        assert_eq!(r.status, 200, "{range}");
        assert_eq!(r.body, segment);
    }
    let etag = fetch(addr, path, &[]).expect_header("etag").to_string();
    let r = fetch(addr, path, &[("Range", "bytes=0-9"), ("If-Range", &etag)]);
    assert_eq!(r.status, 206, "If-Range current");
    let r = fetch(
        addr,
        path,
        &[("Range", "bytes=0-9"), ("If-Range", "\"old\"")],
    );
    assert_eq!((r.status, r.body.len()), (200, len), "If-Range stale");
    // A range on a playlist works the same way.
    let r = fetch(addr, "/live/cam/index.m3u8", &[("Range", "bytes=0-6")]);
    assert_eq!((r.status, r.text().as_str()), (206, "#EXTM3U"));
}

#[test]
fn files_larger_than_the_cache_admits_are_streamed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1 MiB cache → files over 128 KiB are read from disk per request.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write_aged(&dir.path().join("cam/1.ts"), &big, AGE);
    let server = Server::http_only(dir.path(), &["--http-cache-size-mib", "1"]);
    let addr = server.http.expect("http");
    let r = fetch(addr, "/live/cam/1.ts", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, big);
    assert_eq!(r.expect_header("content-length"), big.len().to_string());
    assert_eq!(r.expect_header("content-type"), "video/mp2t");
    let r = fetch(addr, "/live/cam/1.ts", &[("Range", "bytes=150000-150099")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &big[150_000..150_100]);
    let h = request(addr, "HEAD", "/live/cam/1.ts", &[]).expect("HEAD");
    assert_eq!(h.expect_header("content-length"), big.len().to_string());
    let etag = r.expect_header("etag").to_string();
    assert_eq!(
        fetch(addr, "/live/cam/1.ts", &[("If-None-Match", &etag)]).status,
        304
    );
    // With the cache off entirely, small files are streamed too.
    let server = Server::http_only(dir.path(), &["--http-cache-size-mib", "0"]);
    let r = fetch(server.http.expect("http"), "/live/cam/1.ts", &[]);
    assert_eq!((r.status, r.body.len()), (200, big.len()));
}

#[test]
fn cors_default_preflight_and_configured_origins() {
    let (dir, _) = tree();
    let server = Server::http_only(dir.path(), &[]);
    let addr = server.http.expect("http");
    let origin = [("Origin", "https://player.example")];
    let r = fetch(addr, "/live/cam/7.ts", &origin);
    assert_eq!(r.expect_header("access-control-allow-origin"), "*");
    let exposed = r.expect_header("access-control-expose-headers");
    assert!(exposed.contains("Content-Range") && exposed.contains("ETag"));
    // Errors carry it too, so a cross-origin player sees the real status.
    let r = fetch(addr, "/live/cam/404.ts", &origin);
    assert_eq!(r.status, 404);
    assert_eq!(r.expect_header("access-control-allow-origin"), "*");

    let preflight = request(
        addr,
        "OPTIONS",
        "/live/cam/index.m3u8",
        &[
            ("Origin", "https://player.example"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "range, if-none-match"),
        ],
    )
    .expect("OPTIONS");
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.expect_header("access-control-allow-origin"), "*");
    assert!(preflight
        .expect_header("access-control-allow-methods")
        .contains("GET"));
    assert_eq!(
        preflight.expect_header("access-control-allow-headers"),
        "range, if-none-match"
    );
    assert!(preflight.header("access-control-max-age").is_some());
    let api = request(
        addr,
        "OPTIONS",
        "/api/streams",
        &[
            ("Origin", "https://x.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .expect("OPTIONS api");
    assert_eq!(api.status, 204);
    assert_eq!(api.expect_header("access-control-allow-origin"), "*");

    let listed = Server::http_only(
        dir.path(),
        &["--http-cors-origin", "https://a.example, https://b.example"],
    );
    let addr = listed.http.expect("http");
    let r = fetch(addr, "/live/cam/7.ts", &[("Origin", "https://b.example")]);
    assert_eq!(
        r.expect_header("access-control-allow-origin"),
        "https://b.example"
    );
    assert!(r.headers_named("vary").iter().any(|v| v.contains("Origin")));
    let r = fetch(
        addr,
        "/live/cam/7.ts",
        &[("Origin", "https://evil.example")],
    );
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(r.headers_named("vary").iter().any(|v| v.contains("Origin")));

    let off = Server::http_only(dir.path(), &["--http-cors-origin", ""]);
    let r = fetch(off.http.expect("http"), "/live/cam/7.ts", &origin);
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
}

#[test]
fn only_hls_files_are_served() {
    let (dir, _) = tree();
    let root = dir.path();
    for name in [
        "cam/8.ts.part",
        "cam/.index.m3u8.tmp",
        "cam/.hidden.ts",
        "cam/clip.mp4",
        "cam/enc.key",
        "cam/notes.txt",
        "cam/index.html",
    ] {
        write_aged(&root.join(name), b"not for you", AGE);
    }
    std::fs::create_dir_all(root.join("dir.ts")).expect("mkdir");
    let server = Server::http_only(root, &[]);
    let addr = server.http.expect("http");
    for path in [
        "/live/cam/8.ts.part",
        "/live/cam/.index.m3u8.tmp",
        "/live/cam/.hidden.ts",
        "/live/cam/clip.mp4",
        "/live/cam/enc.key",
        "/live/cam/notes.txt",
        "/live/cam/index.html",
        "/live/cam/",
        "/live/cam",
        "/live/",
        "/live",
        "/live/dir.ts",
        "/live/cam/missing.ts",
        "/live/nope/index.m3u8",
        "/cam/index.m3u8",
        "/livecam/index.m3u8",
        "/index.m3u8",
        "/favicon.ico",
    ] {
        let r = fetch(addr, path, &[]);
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.text().contains("not for you"), "{path}");
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = request(addr, method, "/live/cam/7.ts", &[("Content-Length", "0")]).expect(method);
        assert_eq!(r.status, 405, "{method}");
        assert!(r.expect_header("allow").contains("GET"));
    }
    // A query string does not change what is served.
    assert_eq!(fetch(addr, "/live/cam/7.ts?token=abc", &[]).status, 200);
}

#[test]
fn another_path_prefix_moves_the_tree() {
    let (dir, _) = tree();
    let server = Server::http_only(dir.path(), &["--http-path-prefix", "/hls/v1"]);
    let addr = server.http.expect("http");
    assert_eq!(fetch(addr, "/hls/v1/cam/7.ts", &[]).status, 200);
    assert_eq!(fetch(addr, "/live/cam/7.ts", &[]).status, 404);
    assert_eq!(fetch(addr, "/hls/cam/7.ts", &[]).status, 404);
}

#[test]
fn probes_report_liveness_and_readiness() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("hls");
    std::fs::create_dir(&root).expect("mkdir");
    let server = Server::http_only(&root, &[]);
    let addr = server.http.expect("http");
    let r = fetch(addr, "/healthz", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = fetch(addr, "/readyz", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    // The shared volume goes away: not ready, but still alive.
    std::fs::remove_dir(&root).expect("rmdir");
    let r = fetch(addr, "/readyz", &[]);
    assert_eq!(r.status, 503);
    assert!(r.text().contains("HLS root"), "{}", r.text());
    assert_eq!(fetch(addr, "/healthz", &[]).status, 200);
    // It comes back (a new directory, so the server must re-open it).
    std::fs::create_dir(&root).expect("mkdir");
    write_aged(&root.join("cam/7.ts"), b"back", AGE);
    assert_eq!(fetch(addr, "/readyz", &[]).status, 200);
    assert_eq!(fetch(addr, "/live/cam/7.ts", &[]).text(), "back");

    // The all-in-one role is ready once RTMP listens and the root is writable.
    let all = Server::builder().role(Role::All).start();
    let addr = all.http.expect("http");
    wait_until("run role ready", Duration::from_secs(10), || {
        fetch(addr, "/readyz", &[]).status == 200
    });
    assert!(
        all.root().read_dir().expect("root").all(|e| {
            !e.expect("entry")
                .file_name()
                .to_string_lossy()
                .starts_with(".oxcast-readyz")
        }),
        "the write probe leaves nothing behind"
    );
}

#[test]
fn metrics_count_responses_by_status_class() {
    let (dir, _) = tree();
    let server = Server::http_only(dir.path(), &[]);
    let addr = server.http.expect("http");
    let etag = fetch(addr, "/live/cam/7.ts", &[])
        .expect_header("etag")
        .to_string();
    fetch(addr, "/live/cam/index.m3u8", &[]);
    fetch(addr, "/live/cam/7.ts", &[("If-None-Match", &etag)]);
    fetch(addr, "/live/cam/none.ts", &[]);
    fetch(addr, "/live/cam/7.ts", &[("Range", "bytes=9999-")]);
    fetch(addr, "/live/../etc/passwd", &[]);
    let r = fetch(addr, "/metrics", &[]);
    assert_eq!(r.status, 200);
    assert!(r
        .expect_header("content-type")
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    assert!(text.contains("# TYPE oxcast_http_responses_total counter"));
    let class = |c: &str| {
        // A class never answered has no sample yet.
        sample(
            &text,
            &format!("oxcast_http_responses_total{{class=\"{c}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        (class("2xx"), class("3xx"), class("4xx"), class("5xx")),
        (2.0, 1.0, 3.0, 0.0)
    );
    // The scrape itself is counted once it is answered.
    let text = fetch(addr, "/metrics", &[]).text();
    assert_eq!(
        sample(&text, "oxcast_http_responses_total{class=\"2xx\"}"),
        Some(3.0)
    );
}

#[test]
fn the_player_page_and_its_assets() {
    let (dir, _) = tree();
    let server = Server::http_only(
        dir.path(),
        &["--player-assets", "/nonexistent/oxcast-assets"],
    );
    let addr = server.http.expect("http");
    let page = fetch(addr, "/", &[]);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.expect_header("content-type"),
        "text/html; charset=utf-8"
    );
    let html = page.text();
    assert!(html.contains("/player/hls.min.js") && html.contains("/player/app.js"));
    assert!(!html.contains("https://"), "nothing is loaded from a CDN");
    let csp = page.expect_header("content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let etag = page.expect_header("etag").to_string();
    assert_eq!(fetch(addr, "/", &[("If-None-Match", &etag)]).status, 304);
    let js = fetch(addr, "/player/app.js", &[]);
    assert_eq!(js.status, 200);
    assert_eq!(
        js.expect_header("content-type"),
        "text/javascript; charset=utf-8"
    );
    assert!(js.text().contains("/api/streams"));
    assert_eq!(fetch(addr, "/player/style.css", &[]).status, 200);
    // No assets directory: hls.js is absent, the page falls back to native HLS.
    assert_eq!(fetch(addr, "/player/hls.min.js", &[]).status, 404);

    let assets = tempfile::tempdir().expect("tempdir");
    write_aged(&assets.path().join("hls.min.js"), b"/* hls */", AGE);
    write_aged(&assets.path().join("secret.html"), b"<html>", AGE);
    std::fs::write(dir.path().join("outside.js"), b"/* outside */").expect("write");
    let assets_arg = assets.path().to_str().expect("utf-8 path");
    let server = Server::http_only(dir.path(), &["--player-assets", assets_arg]);
    let addr = server.http.expect("http");
    let r = fetch(addr, "/player/hls.min.js", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "/* hls */"));
    assert_eq!(
        r.expect_header("content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(r.expect_header("cache-control"), "no-cache");
    assert!(r.header("etag").is_some());
    for path in [
        "/player/secret.html",
        "/player/../outside.js",
        "/player/%2e%2e/outside.js",
        "/player/sub/hls.min.js",
        "/player/",
    ] {
        assert_eq!(fetch(addr, path, &[]).status, 404, "{path}");
    }
}

#[test]
fn the_streams_api_reads_the_tree_in_the_http_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let live = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:3\n\
        #EXT-X-PROGRAM-DATE-TIME:2024-05-01T10:00:00.000+00:00\n#EXTINF:2.000,\n3.ts\n\
        #EXT-X-PROGRAM-DATE-TIME:2024-05-01T10:00:02.000+00:00\n#EXTINF:2.000,\n4.ts\n";
    write_aged(
        &root.join("cam/index.m3u8"),
        live.as_bytes(),
        Duration::ZERO,
    );
    write_aged(&root.join("cam/3.ts"), &[0u8; 50_000], Duration::ZERO);
    write_aged(&root.join("cam/4.ts"), &[0u8; 50_000], Duration::ZERO);
    let flat = live
        .replace("\n3.ts", "\nflat-3.ts")
        .replace("\n4.ts", "\nflat-4.ts");
    write_aged(&root.join("flat.m3u8"), flat.as_bytes(), Duration::ZERO);
    let ended = format!("{live}#EXT-X-ENDLIST\n");
    write_aged(
        &root.join("ended/index.m3u8"),
        ended.as_bytes(),
        Duration::ZERO,
    );
    write_aged(
        &root.join("stale/index.m3u8"),
        live.as_bytes(),
        Duration::from_secs(600),
    );
    let server = Server::http_only(root, &["--http-path-prefix", "/hls"]);
    let addr = server.http.expect("http");
    let r = fetch(addr, "/api/streams", &[("Origin", "https://dash.example")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.expect_header("content-type"), "application/json");
    assert_eq!(r.expect_header("access-control-allow-origin"), "*");
    let json: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    let streams = json["streams"].as_array().expect("streams array");
    let names: Vec<&str> = streams.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["cam", "flat"], "{json}");
    let cam = &streams[0];
    assert_eq!(cam["playlistUrl"], "/hls/cam/index.m3u8");
    assert_eq!(cam["playlistReady"], true);
    assert_eq!(cam["startedAt"], "2024-05-01T10:00:00Z");
    assert_eq!(cam["bitrate"], 100_000 * 8 / 4);
    assert_eq!(cam["source"], "playlist");
    for unknown in ["codecs", "resolution", "frameRate", "width", "height"] {
        assert!(
            cam[unknown].is_null(),
            "{unknown} is not known from the tree"
        );
    }
    assert_eq!(streams[1]["playlistUrl"], "/hls/flat.m3u8");
    // The playlist URL it gives is served.
    assert_eq!(fetch(addr, "/hls/cam/index.m3u8", &[]).status, 200);
    // Once the playlist stops being rewritten (3 target durations, at least
    // 10 s), the stream is no longer listed.
    let f = std::fs::File::options()
        .write(true)
        .open(root.join("cam/index.m3u8"))
        .expect("open");
    f.set_modified(SystemTime::now() - Duration::from_secs(11))
        .expect("mtime");
    let names = wait_for("cam to drop out", Duration::from_secs(5), || {
        let json: serde_json::Value =
            serde_json::from_slice(&fetch(addr, "/api/streams", &[]).body).ok()?;
        let names: Vec<String> = json["streams"]
            .as_array()?
            .iter()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect();
        (!names.contains(&"cam".to_string())).then_some(names)
    });
    assert_eq!(names, ["flat"]);
}

#[test]
fn concurrent_first_requests_all_get_the_new_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    write_aged(&dir.path().join("cam/9.ts"), &segment, AGE);
    let server = Server::http_only(dir.path(), &[]);
    let addr = server.http.expect("http");
    // A new segment at the live edge: every viewer asks at once, and the
    // server reads it once for all of them (see the unit tests of
    // `http::files`); each must still get the whole, right body.
    let viewers = 48;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(viewers));
    let handles: Vec<_> = (0..viewers)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let range = format!("bytes={}-", i * 1000);
                if i % 2 == 0 {
                    (i, fetch(addr, "/live/cam/9.ts", &[]))
                } else {
                    (i, fetch(addr, "/live/cam/9.ts", &[("Range", &range)]))
                }
            })
        })
        .collect();
    for h in handles {
        let (i, r) = h.join().expect("viewer thread");
        if i % 2 == 0 {
            assert_eq!(r.status, 200);
            assert!(r.body == segment, "viewer {i}: body differs");
        } else {
            assert_eq!(r.status, 206);
            assert!(r.body == segment[i * 1000..], "viewer {i}: range differs");
        }
    }
}
