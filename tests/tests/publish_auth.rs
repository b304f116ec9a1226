//! Publish authentication against the real server: stream keys from a file
//! and from a Secret-style directory (re-read on change), and the
//! `on_publish` webhook served by a real HTTP endpoint in this test.
//!
//! Run: `cargo test -p oxcast-tests --test publish_auth`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oxcast_tests::media::{
    files_under, require, wait_until, Fixture, Playlist, Publisher, Server, ServerBuilder,
};

const SEGMENT_TIMEOUT: Duration = Duration::from_secs(20);
const REJECT_TIMEOUT: Duration = Duration::from_secs(20);

fn server_with_auth(dir: &Path, auth_yaml: &str) -> Server {
    let config = dir.join("config.yaml");
    let mut text = String::from("rtmp:\n  app: app\n  auth:\n");
    for line in auth_yaml.lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&config, text).expect("write config");
    ServerBuilder::default()
        .app_from_config("app")
        .arg("--config")
        .arg(config.as_os_str())
        .hls("fragment", "1s")
        .start()
}

/// Publishes `key`; expects HLS under `public` or, with `None`, a rejection
/// that writes nothing.
#[track_caller]
fn publish_expect(server: &Server, key: &str, public: Option<&str>) {
    let media = require(Fixture::Av8s);
    let files_before = files_under(server.root());
    let publisher = Publisher::start(media, &server.rtmp_url(key));
    match public {
        Some(name) => {
            let playlist = server.playlist_path(name);
            wait_until(&format!("segments under {name}"), SEGMENT_TIMEOUT, || {
                Playlist::read(&playlist)
                    .ok()
                    .flatten()
                    .is_some_and(|p| !p.segments.is_empty())
            });
            drop(publisher);
            if name != key {
                // The secret key never appears in any path under the HLS root.
                for f in files_under(server.root()) {
                    let path = f.to_string_lossy().into_owned();
                    assert!(!path.contains(key), "secret key leaked into {path}");
                }
            }
        }
        None => {
            let finished = publisher.wait_at_most(REJECT_TIMEOUT);
            assert!(!finished.success(), "publish with key {key:?} was accepted");
            let new: Vec<_> = files_under(server.root())
                .into_iter()
                .filter(|f| !files_before.contains(f) && f.to_string_lossy().contains(key))
                .collect();
            assert!(new.is_empty(), "rejected publish wrote {new:?}");
        }
    }
}

#[test]
fn keys_file_allows_listed_keys_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "# key [public-name]\ns3cret-alice alice\nopen-key\n").unwrap();
    let server = server_with_auth(
        dir.path(),
        &format!("mode: keys\nkeys:\n  path: {}", keys.display()),
    );
    publish_expect(&server, "s3cret-alice", Some("alice"));
    publish_expect(&server, "open-key", Some("open-key"));
    publish_expect(&server, "guessed-key", None);
    // Rotate the keys without restarting: the old key stops working.
    std::fs::write(&keys, "n3w-secret-for-alice-2 alice\n").unwrap();
    publish_expect(&server, "s3cret-alice", None);
    publish_expect(&server, "n3w-secret-for-alice-2", Some("alice"));
}

#[test]
fn keys_from_a_secret_directory() {
    let dir = tempfile::tempdir().unwrap();
    // The layout kubelet uses for a mounted Secret: entries are symlinks
    // into a timestamped directory swapped via `..data`.
    let secret = dir.path().join("secret");
    let v1 = secret.join("..2026_v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("studio"), "k-studio-1\n").unwrap();
    std::os::unix::fs::symlink("..2026_v1", secret.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/studio", secret.join("studio")).unwrap();
    let server = server_with_auth(
        dir.path(),
        &format!("mode: keys\nkeys:\n  path: {}", secret.display()),
    );
    publish_expect(&server, "k-studio-1", Some("studio"));
    publish_expect(&server, "studio", None);
    // Secret update: new version directory, `..data` swapped atomically.
    let v2 = secret.join("..2026_v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("studio"), "k-studio-22\n").unwrap();
    std::os::unix::fs::symlink("..2026_v2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    publish_expect(&server, "k-studio-1", None);
    publish_expect(&server, "k-studio-22", Some("studio"));
}

/// What the fake `on_publish` endpoint answers.
#[derive(Clone, Copy)]
enum Answer {
    Accept,
    Rename(&'static str),
    Forbid,
    Hang,
}

/// A real HTTP endpoint that records each request body and answers by the
/// `name` field of the form.
struct Hook {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    fn start(decide: fn(&str) -> Answer) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind hook");
        let addr = listener.local_addr().expect("hook addr");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let body = String::from_utf8_lossy(&body).into_owned();
                    let name = form_value(&body, "name").unwrap_or_default();
                    let call = form_value(&body, "call").unwrap_or_default();
                    seen.lock().unwrap().push(body);
                    let answer = if call == "publish" {
                        decide(&name)
                    } else {
                        Answer::Accept
                    };
                    let response = match answer {
                        Answer::Accept => {
                            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string()
                        }
                        Answer::Rename(to) => {
                            format!(
                                "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n"
                            )
                        }
                        Answer::Forbid => {
                            "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_string()
                        }
                        Answer::Hang => {
                            std::thread::sleep(Duration::from_secs(30));
                            return;
                        }
                    };
                    let mut stream = reader.into_inner();
                    let _ = stream.write_all(response.as_bytes());
                });
            }
        });
        Hook { addr, bodies }
    }

    fn calls(&self, call: &str) -> Vec<String> {
        let needle = format!("call={call}&");
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.starts_with(&needle))
            .cloned()
            .collect()
    }
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.replace('+', " "))
    })
}

#[test]
fn webhook_decides_and_renames() {
    let hook = Hook::start(|name| match name {
        "good" => Answer::Accept,
        "sk_live_123" => Answer::Rename("channel-7"),
        "url-rename" => Answer::Rename("rtmp://elsewhere/app/channel-8"),
        "bad-rename" => Answer::Rename("../etc"),
        "slow" => Answer::Hang,
        _ => Answer::Forbid,
    });
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_auth(
        dir.path(),
        &format!(
            "mode: webhook\nwebhook:\n  url: http://{0}/on_publish\n  timeout: 2s\n  onPublishDoneUrl: http://{0}/done",
            hook.addr
        ),
    );
    publish_expect(&server, "good", Some("good"));
    publish_expect(&server, "sk_live_123", Some("channel-7"));
    publish_expect(&server, "url-rename", Some("channel-8"));
    publish_expect(&server, "bad-rename", None);
    publish_expect(&server, "denied", None);
    publish_expect(&server, "slow", None);

    let publishes = hook.calls("publish");
    let first = publishes
        .iter()
        .find(|b| b.contains("name=good"))
        .expect("hook saw 'good'");
    for field in ["addr=127.0.0.1", "clientid=", "app=app", "tcUrl=rtmp"] {
        assert!(first.contains(field), "{field} missing from {first}");
    }
    wait_until(
        "publish_done for the accepted publishes",
        Duration::from_secs(10),
        || {
            let done = hook.calls("publish_done");
            ["name=good", "name=sk_live_123", "name=url-rename"]
                .iter()
                .all(|n| done.iter().any(|b| b.contains(n)))
        },
    );
}

#[test]
fn unreachable_webhook_rejects() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_auth(
        dir.path(),
        &format!(
            "mode: webhook\nwebhook:\n  url: http://127.0.0.1:{port}/on_publish\n  timeout: 2s"
        ),
    );
    publish_expect(&server, "anyone", None);
}

#[test]
fn query_arguments_reach_the_webhook() {
    let hook = Hook::start(|_| Answer::Accept);
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_auth(
        dir.path(),
        &format!(
            "mode: webhook\nwebhook:\n  url: http://{}/on_publish",
            hook.addr
        ),
    );
    let media = require(Fixture::Av8s);
    let publisher = Publisher::start(
        media,
        &format!("{}?token=abc%20def&user=7", server.rtmp_url("cam")),
    );
    let playlist = server.playlist_path("cam");
    wait_until("segments under cam", SEGMENT_TIMEOUT, || {
        Playlist::read(&playlist)
            .ok()
            .flatten()
            .is_some_and(|p| !p.segments.is_empty())
    });
    drop(publisher);
    let calls = hook.calls("publish");
    assert!(
        calls.iter().any(|b| b.contains("token=abc+def")
            && b.contains("user=7")
            && b.contains("name=cam&")),
        "{calls:?}"
    );
}
