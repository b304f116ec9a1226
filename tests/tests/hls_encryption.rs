//! Encrypted HLS end to end (issue 14): the real `oxcast-ingest` binary,
//! published to by the real ffmpeg with `--hls-encryption`, played back by
//! ffmpeg over HTTP through the key delivery of the HTTP role.
//!
//! Segments are decrypted here with the RustCrypto crates and tokens are
//! minted here from the documented algorithm, independently of the
//! server's code. Needs `ffmpeg` and `ffprobe`.
//!
//! Run: `cargo test -p oxcast-tests --test hls_encryption`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oxcast_tests::media::hls_keys::{decrypt, is_transport_stream, key_id, listed, mint};
use oxcast_tests::media::http;
use oxcast_tests::media::probe::{decode_errors, frame_sizes, probe};
use oxcast_tests::media::process::Running;
use oxcast_tests::media::{have_ffmpeg, require, wait_for, Fixture, Publisher, Role, Server};

const SECRET: &str = "test secret for encrypted HLS";
const TIMEOUT: Duration = Duration::from_secs(40);

#[track_caller]
fn need_ffmpeg() {
    assert!(
        have_ffmpeg(),
        "ffmpeg and ffprobe are required for the encryption tests (apt-get install ffmpeg)"
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Every listed segment on disk is ciphertext and decrypts, with the key
/// file its key line names, to MPEG-TS.
#[track_caller]
fn check_segments_decrypt(root: &Path, keys: &Path, stream: &str, text: &str) -> usize {
    let segments = listed(text);
    for s in &segments {
        let on_disk = std::fs::read(root.join(stream).join(&s.uri)).expect("listed segment");
        assert!(
            on_disk.len().is_multiple_of(16) && on_disk.len() >= 188,
            "{}: {} bytes is not AES-CBC output",
            s.uri,
            on_disk.len()
        );
        assert!(
            on_disk.chunks(188).any(|p| p[0] != 0x47),
            "{} looks like clear MPEG-TS",
            s.uri
        );
        let key_file = keys
            .join(stream)
            .join(format!("{}.key", key_id(&s.key_uri)));
        let key = std::fs::read(&key_file)
            .unwrap_or_else(|e| panic!("{} ({}): {e}", key_file.display(), s.uri));
        assert_eq!(key.len(), 16);
        let plain = decrypt(&key, &s.iv, &on_disk)
            .unwrap_or_else(|| panic!("{} does not decrypt with {}", s.uri, s.key_uri));
        assert!(
            is_transport_stream(&plain),
            "{} decrypts to something that is not MPEG-TS",
            s.uri
        );
    }
    segments.len()
}

/// Decoded video frames of `url` (0 when ffmpeg cannot play it at all).
fn frames(url: &str) -> usize {
    frame_sizes(url).map(|f| f.len()).unwrap_or(0)
}

#[test]
fn encrypted_live_stream_plays_with_a_token_only_and_keys_rotate() {
    need_ffmpeg();
    let media = require(Fixture::Av14s);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("hls");
    let keys = dir.path().join("keys");
    let secret_file = dir.path().join("secret");
    // Trailing newline, as `echo … > file` and many editors leave it.
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    std::fs::create_dir_all(&root).unwrap();

    // The scale-out layout: ingest and HTTP in separate processes sharing
    // the HLS root and the key directory.
    let ingest = |root: &Path| {
        Server::builder()
            .role(Role::Rtmp)
            .root(root)
            .hls("fragment", "1s")
            .hls("fragment-naming", "sequential")
            .hls("playlist-length", "60s")
            .hls("encryption", "true")
            .hls("fragments-per-key", "2")
            .hls("key-dir", keys.to_str().unwrap())
            .start()
    };
    let mut rtmp = ingest(&root);
    let web = Server::builder()
        .role(Role::Http)
        .root(&root)
        .hls("encryption", "true")
        .hls("key-dir", keys.to_str().unwrap())
        .hls("key-secret-file", secret_file.to_str().unwrap())
        .start();
    let http_addr = web.http.expect("http listener");
    let base = format!("http://{http_addr}/live/cam/index.m3u8");
    // Not bound to a viewer (ffmpeg sends no viewer cookie); the binding
    // is checked on the key route below.
    let token = mint(SECRET, "cam", unix_now() + 3600, "");
    let with_token = format!("{base}?token={token}");

    let started = Instant::now();
    let publisher = Publisher::start(media, &rtmp.rtmp_url("cam"));
    let playlist = root.join("cam").join("index.m3u8");
    wait_for("three listed segments", TIMEOUT, || {
        let text = std::fs::read_to_string(&playlist).ok()?;
        (listed(&text).len() >= 3).then_some(())
    });

    // A player joins the live stream with a token: ffmpeg follows the
    // playlist until ENDLIST, fetching keys through the HTTP role.
    let mut live = std::process::Command::new("ffmpeg");
    live.args(["-nostdin", "-hide_banner", "-v", "error", "-i", &with_token]);
    live.args(["-map", "0:v", "-f", "framecrc", "-"]);
    let live = Running::spawn(live).expect("ffmpeg starts");

    // Meanwhile, without a token or with a bad one, nothing decodes.
    assert_eq!(frames(&base), 0, "played without a token");
    let expired = mint(SECRET, "cam", unix_now() - 1, "viewer-1");
    assert_eq!(
        frames(&format!("{base}?token={expired}")),
        0,
        "expired token"
    );
    let other = mint(SECRET, "other", unix_now() + 3600, "viewer-1");
    assert_eq!(
        frames(&format!("{base}?token={other}")),
        0,
        "other stream's token"
    );

    let done = publisher.wait_at_most(TIMEOUT);
    assert!(done.success(), "publisher failed: {}", done.stderr);
    wait_for("ENDLIST", TIMEOUT, || {
        let text = std::fs::read_to_string(&playlist).ok()?;
        text.contains("#EXT-X-ENDLIST").then_some(())
    });
    let live = live.wait(TIMEOUT);
    assert!(live.success(), "live playback failed: {}", live.stderr);
    assert!(
        live.stderr.trim().is_empty(),
        "live playback errors: {}",
        live.stderr
    );
    let live_frames = live.stdout.lines().filter(|l| !l.starts_with('#')).count();
    assert!(
        live_frames >= 50,
        "live player decoded {live_frames} frames"
    );

    // The whole stream, after the fact: a clean decode of every frame.
    assert_eq!(decode_errors(&with_token).unwrap(), "");
    let all = frames(&with_token);
    assert!(all >= 300, "decoded {all} frames of a 14 s 25 fps stream");
    eprintln!(
        "encrypted stream: {all} frames decoded, live player {live_frames}, {:?}",
        started.elapsed()
    );

    // On disk: ciphertext, each segment decrypting with the key its
    // playlist names; a new key every 2 segments, a new IV every segment.
    let text = std::fs::read_to_string(&playlist).unwrap();
    assert!(text.contains("#EXT-X-VERSION:3\n"), "IV needs version >= 2");
    let n = check_segments_decrypt(&root, &keys, "cam", &text);
    assert!(n >= 10, "{n} segments");
    let segments = listed(&text);
    let mut runs: Vec<(String, usize)> = Vec::new();
    for s in &segments {
        match runs.last_mut() {
            Some((uri, count)) if *uri == s.key_uri => *count += 1,
            _ => runs.push((s.key_uri.clone(), 1)),
        }
    }
    assert!(runs.len() >= 5, "keys: {runs:?}");
    let (last, whole) = runs.split_last().unwrap();
    assert!(
        whole.iter().all(|(_, c)| *c == 2),
        "rotation every 2: {runs:?}"
    );
    assert!(last.1 <= 2, "{runs:?}");
    let mut ivs: Vec<_> = segments.iter().map(|s| s.iv).collect();
    ivs.sort();
    ivs.dedup();
    assert_eq!(ivs.len(), segments.len(), "one IV per segment");
    let probed = probe(&root.join("cam").join(&segments[0].uri), false);
    assert!(
        probed.map(|p| p.stream("video").is_none()).unwrap_or(true),
        "an encrypted segment must not probe as video"
    );

    // Keys: outside the tree, private files.
    assert!(!keys.starts_with(&root));
    let first_key = keys
        .join("cam")
        .join(format!("{}.key", key_id(&segments[0].key_uri)));
    let mode = std::fs::metadata(&first_key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", first_key.display());
    let key_bytes = std::fs::read(&first_key).unwrap();

    // The playlist served with a token carries it onto key URIs only.
    let served = http::get(http_addr, &format!("/live/cam/index.m3u8?token={token}")).unwrap();
    assert_eq!(served.status, 200);
    let served_text = served.text();
    let key_lines: Vec<&str> = served_text
        .lines()
        .filter(|l| l.starts_with("#EXT-X-KEY"))
        .collect();
    assert_eq!(key_lines.len(), segments.len());
    for l in &key_lines {
        assert!(l.contains(&format!(".key?token={token}\"")), "{l}");
    }
    assert!(served_text
        .lines()
        .filter(|l| l.ends_with(".ts"))
        .all(|l| !l.contains("token")));
    let plain = http::get(http_addr, "/live/cam/index.m3u8").unwrap();
    assert!(!plain.text().contains("token="), "{}", plain.text());

    // Key delivery: the key for a valid token, 403 without key bytes otherwise.
    let key_path = segments[0].key_uri.clone();
    let ok = http::get(http_addr, &format!("{key_path}?token={token}")).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.body, key_bytes);
    assert_eq!(ok.header("cache-control"), Some("private, no-store"));
    assert_eq!(ok.header("access-control-allow-origin"), Some("*"));
    let mut tampered = token.clone();
    let last_char = tampered.pop().unwrap();
    tampered.push(if last_char == '0' { '1' } else { '0' });
    for (what, query) in [
        ("no token", String::new()),
        ("expired", format!("?token={expired}")),
        ("other stream", format!("?token={other}")),
        ("tampered", format!("?token={tampered}")),
        (
            "wrong secret",
            format!("?token={}", mint("guess", "cam", unix_now() + 60, "")),
        ),
    ] {
        let r = http::get(http_addr, &format!("{key_path}{query}")).unwrap();
        assert_eq!(r.status, 403, "{what}");
        assert!(
            !r.body.windows(16).any(|w| w == &key_bytes[..]),
            "{what}: key bytes in a refusal"
        );
        assert_eq!(
            r.header("cache-control"),
            Some("private, no-store"),
            "{what}"
        );
    }

    // A token minted for a viewer serves keys only to that viewer's cookie
    // (hls.encryption.authorization.viewerCookie, default oxcast_viewer).
    let bound = format!(
        "{key_path}?token={}",
        mint(SECRET, "cam", unix_now() + 3600, "viewer-1")
    );
    let mine = http::get_with(
        http_addr,
        &bound,
        &[("Cookie", "theme=dark; oxcast_viewer=viewer-1")],
    )
    .unwrap();
    assert_eq!(mine.status, 200, "the bound viewer's own cookie");
    assert_eq!(mine.body, key_bytes);
    for (what, cookies) in [
        ("no cookie", vec![]),
        ("another viewer", vec![("Cookie", "oxcast_viewer=viewer-2")]),
        (
            "a similar name",
            vec![("Cookie", "my_oxcast_viewer=viewer-1")],
        ),
        (
            "two viewers",
            vec![("Cookie", "oxcast_viewer=viewer-1; oxcast_viewer=viewer-2")],
        ),
    ] {
        let r = http::get_with(http_addr, &bound, &cookies).unwrap();
        assert_eq!(r.status, 403, "bound token, {what}");
        assert!(
            !r.body.windows(16).any(|w| w == &key_bytes[..]),
            "{what}: key bytes in a refusal"
        );
    }

    // No URL under the HLS prefix reaches a key, traversal included.
    let id = key_id(&key_path);
    for path in [
        format!("/live/cam/{id}.key"),
        format!("/live/../keys/cam/{id}.key"),
        format!("/live/%2e%2e/keys/cam/{id}.key"),
        format!("/live/..%2fkeys/cam/{id}.key"),
        format!("/live/cam/..%2f..%2fkeys/cam/{id}.key?token={token}"),
        format!("/keys/cam/..%2f..%2fhls/cam/index.m3u8?token={token}"),
        format!("/keys/..%2fkeys/cam/{id}.key?token={token}"),
    ] {
        let r = http::get(http_addr, &path).unwrap();
        assert_ne!(r.status, 200, "{path}");
        assert!(!r.body.windows(16).any(|w| w == &key_bytes[..]), "{path}");
    }

    // Keys survive a restart of the ingest process and a republish: the
    // continued playlist lists old and new segments, each decrypting with
    // its own key, and still plays end to end.
    let old_keys: Vec<u64> = segments.iter().map(|s| key_id(&s.key_uri)).collect();
    rtmp.stop();
    let rtmp = ingest(&root);
    let short = require(Fixture::Av8s);
    let done = Publisher::start(short, &rtmp.rtmp_url("cam")).wait_at_most(TIMEOUT);
    assert!(done.success(), "republish failed: {}", done.stderr);
    let text = wait_for("ENDLIST after the republish", TIMEOUT, || {
        let text = std::fs::read_to_string(&playlist).ok()?;
        let n = listed(&text).len();
        (text.contains("#EXT-X-ENDLIST") && n > segments.len()).then_some(text)
    });
    check_segments_decrypt(&root, &keys, "cam", &text);
    let after = listed(&text);
    assert!(after.iter().any(|s| old_keys.contains(&key_id(&s.key_uri))));
    assert!(after
        .iter()
        .any(|s| !old_keys.contains(&key_id(&s.key_uri))));
    assert!(text.contains("#EXT-X-DISCONTINUITY"), "{text}");
    assert_eq!(decode_errors(&with_token).unwrap(), "");
}

/// A tiny key-authorization webhook: 2xx for `Cookie: session=good`, a
/// slow answer for `session=slow`, 500 for `session=broken`, 403
/// otherwise; records what it got.
struct Hook {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Hook {
    fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || answer(conn, &seen));
            }
        });
        Hook {
            addr,
            requests,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/auth", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn answer(mut conn: TcpStream, seen: &Mutex<Vec<String>>) {
    let mut head = String::new();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    seen.lock().unwrap().push(head.clone());
    let lower = head.to_ascii_lowercase();
    let status = if lower.contains("cookie: session=good") {
        "204 No Content"
    } else if lower.contains("cookie: session=slow") {
        std::thread::sleep(Duration::from_secs(3));
        "204 No Content"
    } else if lower.contains("cookie: session=broken") {
        "500 Internal Server Error"
    } else {
        "403 Forbidden"
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = conn.flush();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// All in one process, 1 s fragments, keys in the default place (next to
/// the root), webhook key delivery with a 1 s timeout and `cache`.
fn webhook_server(root: &Path, hook: &Hook, cache: &str) -> Server {
    Server::builder()
        .root(root)
        .hls("fragment", "1s")
        .hls("encryption", "true")
        .hls("key-auth", "webhook")
        .hls("key-webhook-url", &hook.url())
        .hls("key-webhook-timeout", "1s")
        .hls("key-webhook-cache", cache)
        .start()
}

#[test]
fn webhook_mode_asks_with_the_viewers_cookie_and_denies_on_timeout() {
    need_ffmpeg();
    let hook = Hook::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("hls");
    std::fs::create_dir_all(&root).unwrap();
    let server = webhook_server(&root, &hook, "0s");
    let addr = server.http.unwrap();
    let done = Publisher::start(require(Fixture::Av8s), &server.rtmp_url("cam")).wait();
    assert!(done.success(), "publish failed: {}", done.stderr);
    let playlist = root.join("cam").join("index.m3u8");
    let text = wait_for("ENDLIST", TIMEOUT, || {
        let text = std::fs::read_to_string(&playlist).ok()?;
        text.contains("#EXT-X-ENDLIST").then_some(text)
    });
    let keys: PathBuf = dir.path().join("hls-keys");
    check_segments_decrypt(&root, &keys, "cam", &text);
    let key_uri = listed(&text)[0].key_uri.clone();
    assert!(
        !key_uri.contains('?'),
        "no token in webhook mode: {key_uri}"
    );
    let key_bytes = std::fs::read(keys.join("cam").join(format!("{}.key", key_id(&key_uri))))
        .expect("key next to the HLS root");

    let good = http::get_with(
        addr,
        &key_uri,
        &[("Cookie", "session=good"), ("Authorization", "Bearer abc")],
    )
    .unwrap();
    assert_eq!(good.status, 200);
    assert_eq!(good.body, key_bytes);
    assert_eq!(good.header("cache-control"), Some("private, no-store"));
    let asked = hook.requests();
    let last = asked.last().expect("the webhook was asked");
    assert!(
        last.starts_with(&format!(
            "GET /auth?stream=cam&key={} HTTP/1.1",
            key_id(&key_uri)
        )),
        "{last}"
    );
    let lower = last.to_ascii_lowercase();
    assert!(lower.contains("cookie: session=good"), "{last}");
    assert!(lower.contains("authorization: bearer abc"), "{last}");

    for (what, headers) in [
        ("no cookie", vec![]),
        ("bad cookie", vec![("Cookie", "session=bad")]),
    ] {
        let r = http::get_with(addr, &key_uri, &headers).unwrap();
        assert_eq!(r.status, 403, "{what}");
        assert!(r.body.len() != 16 || r.body != key_bytes, "{what}");
    }
    let started = Instant::now();
    let slow = http::get_with(addr, &key_uri, &[("Cookie", "session=slow")]).unwrap();
    assert_eq!(slow.status, 403, "a webhook timeout denies");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "answered after the 1 s timeout, not the webhook's 3 s: {:?}",
        started.elapsed()
    );
    // ffmpeg without the cookie gets nothing to decode.
    assert_eq!(frames(&format!("http://{addr}/live/cam/index.m3u8")), 0);
}

#[test]
fn webhook_decisions_are_reused_but_failures_are_asked_again() {
    let hook = Hook::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("hls");
    std::fs::create_dir_all(&root).unwrap();
    let server = webhook_server(&root, &hook, "60s");
    let addr = server.http.unwrap();
    // A key where the server keeps them (next to the root), as a
    // publication would have stored it.
    let key_dir = dir.path().join("hls-keys").join("cam");
    std::fs::create_dir_all(&key_dir).unwrap();
    let key_bytes = *b"0123456789abcdef";
    std::fs::write(key_dir.join("0.key"), key_bytes).unwrap();
    let asked = || hook.requests().len();
    let fetch = |cookie: &str| {
        http::get_with(addr, "/keys/cam/0.key", &[("Cookie", cookie)])
            .unwrap()
            .status
    };

    // Allowed (2xx) and denied (4xx) are the webhook's decisions: asked
    // once per viewer and stream, then reused for the cache time.
    assert_eq!(fetch("session=good"), 200);
    assert_eq!(asked(), 1);
    assert_eq!(fetch("session=good"), 200);
    assert_eq!(asked(), 1, "a 2xx is reused");
    assert_eq!(fetch("session=bad"), 403);
    assert_eq!(fetch("session=bad"), 403);
    assert_eq!(asked(), 2, "a 4xx is reused");
    // No decision: a 5xx or a timeout denies that request only.
    assert_eq!(fetch("session=broken"), 403);
    assert_eq!(fetch("session=broken"), 403);
    assert_eq!(asked(), 4, "a 5xx is asked again");
    assert_eq!(fetch("session=slow"), 403);
    assert_eq!(fetch("session=slow"), 403);
    assert_eq!(asked(), 6, "a timeout is asked again");
    // The good viewer's decision is still cached.
    assert_eq!(fetch("session=good"), 200);
    assert_eq!(asked(), 6);
}

#[test]
fn key_dir_inside_the_hls_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("hls");
    std::fs::create_dir_all(&root).unwrap();
    let inside = root.join("keys");
    let err = Server::builder()
        .root(&root)
        .hls("encryption", "true")
        .hls("key-auth", "public")
        .hls("key-dir", inside.to_str().unwrap())
        .spawn()
        .err()
        .expect("a key directory inside the served tree must be refused");
    assert!(err.contains("inside the HLS root"), "{err}");
}

/// The fenced block of `lang` after `from` in `text`.
#[track_caller]
fn code_block<'a>(text: &'a str, lang: &str) -> &'a str {
    let fence = format!("```{lang}\n");
    let start = text
        .find(&fence)
        .unwrap_or_else(|| panic!("no {lang} block"))
        + fence.len();
    let len = text[start..].find("```").expect("closing fence");
    &text[start..start + len]
}

#[test]
fn readme_token_snippets_reproduce_the_published_vectors() {
    use oxcast_tests::media::process::run_ok;
    let have = |tool: &str| {
        let mut cmd = std::process::Command::new(tool);
        cmd.arg("--version");
        run_ok(cmd, Duration::from_secs(10)).is_ok()
    };
    assert!(
        have("python3"),
        "python3 is required (apt-get install python3)"
    );
    assert!(have("node"), "node is required (apt-get install nodejs)");
    let root = oxcast_tests::media::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let at = readme
        .find("#### Minting a key token")
        .expect("README section for website developers");
    let section = &readme[at..];
    let vectors_path = root.join("docs/key-token-vectors.json");
    let vectors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&vectors_path).unwrap()).unwrap();
    let expected: Vec<String> = vectors["sign"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["token"].as_str().unwrap().to_string())
        .collect();
    assert!(expected.len() >= 3);
    // The vectors agree with the algorithm as the tests implement it.
    for c in vectors["sign"].as_array().unwrap() {
        assert_eq!(
            mint(
                c["secret"].as_str().unwrap(),
                c["stream"].as_str().unwrap(),
                c["expires"].as_u64().unwrap(),
                c["viewer"].as_str().unwrap()
            ),
            c["token"].as_str().unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let py = dir.path().join("token.py");
    std::fs::write(
        &py,
        format!(
            "{}\nimport json, sys\nfor c in json.load(open(sys.argv[1]))['sign']:\n    print(oxcast_key_token(c['secret'].encode(), c['stream'], c['expires'], c['viewer']))\n",
            code_block(section, "python")
        ),
    )
    .unwrap();
    let js = dir.path().join("token.js");
    std::fs::write(
        &js,
        format!(
            "{}\nfor (const c of require(process.argv[2]).sign) console.log(oxcastKeyToken(c.secret, c.stream, c.expires, c.viewer));\n",
            code_block(section, "js")
        ),
    )
    .unwrap();
    for (tool, script) in [("python3", &py), ("node", &js)] {
        let mut cmd = std::process::Command::new(tool);
        cmd.arg(script).arg(&vectors_path);
        let out = run_ok(cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{tool}: {e}"));
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(got, expected, "{tool} snippet");
    }
}
