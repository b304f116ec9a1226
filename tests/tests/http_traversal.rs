//! No request may read a byte outside the HLS root. Table-driven, against
//! the real binary, with raw TCP requests so nothing normalises the path on
//! the way: dot segments, percent-encoded and double-encoded dots and
//! slashes, backslashes, absolute paths, NUL, overlong names, and symlinks
//! placed inside the root that point out of it.

use std::os::unix::fs::symlink;
use std::time::Duration;

use oxcast_tests::http::{fetch, send_raw};
use oxcast_tests::media::{write_aged, Server};

/// Every file outside the root contains this; no response may.
const SECRET: &str = "OXCAST-SECRET-7f3a";

#[test]
fn no_request_reads_outside_the_root() {
    let base = tempfile::tempdir().expect("tempdir");
    let b = base.path();
    let root = b.join("root");
    let age = Duration::from_secs(30);
    write_aged(&root.join("cam/index.m3u8"), b"#EXTM3U\n", age);
    write_aged(&root.join("cam/1.ts"), b"inside segment", age);
    // Targets outside the root, named like servable files.
    for name in ["secret.ts", "secret.m3u8", "cam/secret.ts", "root.ts"] {
        write_aged(&b.join("outside").join(name), SECRET.as_bytes(), age);
    }
    write_aged(&b.join("secret.ts"), SECRET.as_bytes(), age);
    write_aged(&b.join("secret.m3u8"), SECRET.as_bytes(), age);
    // Symlinks inside the root leading out: relative, absolute, directory.
    symlink("../../secret.ts", root.join("cam/rel-link.ts")).expect("symlink");
    symlink(b.join("secret.m3u8"), root.join("cam/abs-link.m3u8")).expect("symlink");
    symlink(b.join("outside"), root.join("escape")).expect("symlink");
    symlink("/etc", root.join("etc")).expect("symlink");
    // Inside the root, a symlink that stays inside is harmless.
    symlink("1.ts", root.join("cam/in-link.ts")).expect("symlink");

    let server = Server::http_only(&root, &[]);
    let addr = server.http.expect("http listener");

    // The control: a legitimate file is served.
    let ok = fetch(addr, "/live/cam/1.ts", &[]);
    assert_eq!((ok.status, ok.text().as_str()), (200, "inside segment"));

    let abs = b.join("secret.ts");
    let abs = abs.to_str().expect("utf-8 temp path");
    let abs_encoded = abs.replace('/', "%2f");
    let long_name = format!("/live/cam/{}.ts", "a".repeat(300));
    let long_path = format!("/live/{}secret.ts", "a/".repeat(1200));
    let deep = format!("/live/{}secret.ts", "../".repeat(12));
    let targets: Vec<(&str, String)> = vec![
        ("dot-dot", "/live/../secret.ts".into()),
        ("dot-dot twice", "/live/cam/../../secret.ts".into()),
        ("many dot-dots", deep),
        ("dot segment first", "/live/./cam/../../secret.ts".into()),
        ("encoded dots", "/live/%2e%2e/secret.ts".into()),
        ("encoded dots upper", "/live/%2E%2E/secret.ts".into()),
        ("half-encoded dots", "/live/.%2e/secret.ts".into()),
        (
            "encoded dots in stream dir",
            "/live/cam/%2e%2e/%2e%2e/secret.ts".into(),
        ),
        ("encoded slash", "/live/%2e%2e%2fsecret.ts".into()),
        (
            "encoded slash upper",
            "/live/cam%2F..%2F..%2Fsecret.ts".into(),
        ),
        ("encoded backslash", "/live/..%5csecret.ts".into()),
        ("backslash", "/live/..\\secret.ts".into()),
        ("backslashes", "/live/cam\\..\\..\\secret.ts".into()),
        ("double-encoded dots", "/live/%252e%252e/secret.ts".into()),
        ("double-encoded slash", "/live/..%252fsecret.ts".into()),
        ("overlong UTF-8 dots", "/live/%c0%ae%c0%ae/secret.ts".into()),
        ("IIS unicode dots", "/live/%u002e%u002e/secret.ts".into()),
        ("absolute path", format!("/live/{abs}")),
        (
            "absolute path, double slash",
            format!("/live//{}", abs.trim_start_matches('/')),
        ),
        ("encoded absolute path", format!("/live/{abs_encoded}")),
        ("NUL encoded", "/live/cam/1.ts%00/../../secret.ts".into()),
        ("NUL before extension", "/live/../secret.ts%00.m3u8".into()),
        ("semicolon segments", "/live/cam/..;/..;/secret.ts".into()),
        (
            "trailing dot-dot after file",
            "/live/cam/1.ts/../../../secret.ts".into(),
        ),
        ("overlong name", long_name),
        ("overlong path", long_path),
        ("symlink out, relative", "/live/cam/rel-link.ts".into()),
        ("symlink out, absolute", "/live/cam/abs-link.m3u8".into()),
        ("symlinked directory out", "/live/escape/secret.ts".into()),
        (
            "symlinked directory, nested",
            "/live/escape/cam/secret.ts".into(),
        ),
        ("symlink to /etc", "/live/etc/passwd".into()),
        (
            "absolute-form target",
            "http://localhost/live/../secret.ts".into(),
        ),
        ("prefix escape", "/live/../../../../../../etc/passwd".into()),
        ("outside the prefix", "/../secret.ts".into()),
    ];
    assert!(targets.len() >= 20);
    let mut report = Vec::new();
    for (what, target) in &targets {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        match send_raw(addr, raw.as_bytes(), false) {
            Ok(r) => {
                let leaked = r.text().contains(SECRET);
                let refused = matches!(r.status, 400 | 403 | 404 | 414);
                if leaked || !refused {
                    report.push(format!("{what}: {target} → {} {:?}", r.status, r.text()));
                }
            }
            // The server may also just close on a request it cannot parse.
            Err(e) => eprintln!("{what}: connection ended without a response ({e})"),
        }
    }
    // A raw NUL and raw control bytes in the request line: refused by the
    // HTTP parser before routing.
    for raw in [
        &b"GET /live/cam/1.ts\0/../../secret.ts HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        &b"GET /live/\x01../secret.ts HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
    ] {
        if let Ok(r) = send_raw(addr, raw, false) {
            if r.text().contains(SECRET) || r.status < 400 {
                report.push(format!("raw bytes → {} {:?}", r.status, r.text()));
            }
        }
    }
    assert!(
        report.is_empty(),
        "requests that were not refused:\n{}",
        report.join("\n")
    );

    // A symlink that stays inside the root may be followed (openat2), or
    // refused where the kernel lacks it; either way it serves inside bytes.
    let r = fetch(addr, "/live/cam/in-link.ts", &[]);
    assert!(
        (r.status == 200 && r.text() == "inside segment") || r.status == 404,
        "{} {:?}",
        r.status,
        r.text()
    );
    // The server is still fine.
    assert_eq!(fetch(addr, "/live/cam/1.ts", &[]).status, 200);
}
