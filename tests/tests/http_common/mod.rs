//! Shared by the `http_*` tests: a raw HTTP/1.1 client that sends the
//! request bytes exactly as given (so paths are not normalised and any
//! header can be set), and helpers to build HLS trees and start the server.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, SystemTime};

use oxcast_tests::media::{Role, Server};

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header (for repeated ones such as `Vary`).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[track_caller]
    pub fn expect_header(&self, name: &str) -> &str {
        match self.header(name) {
            Some(v) => v,
            None => panic!("no {name} header in {:?}", self.headers),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Sends `raw` verbatim and reads until the server closes the connection
/// (requests must say `Connection: close`). `head` marks a HEAD request,
/// whose response has no body whatever its headers say.
pub fn send_raw(addr: SocketAddr, raw: &[u8], head: bool) -> io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.set_write_timeout(Some(Duration::from_secs(15)))?;
    stream.write_all(raw)?;
    stream.flush()?;
    let mut data = Vec::new();
    stream.read_to_end(&mut data)?;
    parse(&data, head)
}

/// `METHOD target` with extra headers, `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> io::Result<Reply> {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    send_raw(addr, raw.as_bytes(), method == "HEAD")
}

/// GET with extra headers; panics on a transport error.
#[track_caller]
pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    match request(addr, "GET", target, headers) {
        Ok(r) => r,
        Err(e) => panic!("GET {target}: {e}"),
    }
}

fn parse(data: &[u8], head: bool) -> io::Result<Reply> {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("no end of headers in {} bytes", data.len())))?;
    let text = std::str::from_utf8(&data[..end]).map_err(|_| invalid("non-UTF-8 head"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header {line:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &data[end + 4..];
    if head || status == 204 || status == 304 {
        if !rest.is_empty() {
            return Err(invalid(format!(
                "{} bytes after a bodiless response",
                rest.len()
            )));
        }
        return Ok(reply);
    }
    let chunked = reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    reply.body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = reply.header("content-length") {
        let len: usize = len.parse().map_err(|_| invalid("bad content-length"))?;
        if rest.len() != len {
            return Err(invalid(format!(
                "body is {} bytes, content-length {len}",
                rest.len()
            )));
        }
        rest.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(reply)
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk"))?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| invalid("chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid("chunk size"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(invalid("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Seconds since the epoch of an HTTP date header value.
#[track_caller]
pub fn http_date(value: &str) -> i64 {
    let t = httpdate::parse_http_date(value).unwrap_or_else(|e| panic!("{value:?}: {e}"));
    t.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Writes `contents` to `path` (creating directories) with its
/// modification time `age` in the past, so `Last-Modified` is sent at once
/// (the server withholds it during the second a file was modified in).
#[track_caller]
pub fn write_aged(path: &Path, contents: &[u8], age: Duration) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, contents).expect("write");
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.set_modified(SystemTime::now() - age).expect("set mtime");
}

/// Modification time of `path` in whole seconds.
pub fn mtime_secs(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime")
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// `oxcast-ingest http` serving `root`, with extra arguments.
#[track_caller]
pub fn http_server(root: &Path, args: &[&str]) -> Server {
    let mut b = Server::builder().role(Role::Http).root(root);
    for a in args {
        b = b.arg(*a);
    }
    b.start()
}

/// The value of a Prometheus sample line `name{labels} value`, or 0.
pub fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}
