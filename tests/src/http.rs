//! The tests' one raw HTTP/1.1 client, over `std::net`: enough to check
//! status, headers and bodies of the ingest's HTTP server and the
//! operator's metrics without pulling in a client stack.
//!
//! Requests go out as given: paths are not normalised (`..`, `%2e` reach
//! the server, as traversal tests need), any header can be set, and
//! [`send_raw`] sends arbitrary bytes. Every request says
//! `Connection: close`, and the response is read to the end and parsed
//! strictly (a body longer or shorter than its `Content-Length`, or bytes
//! after a bodiless response, are errors: they would be server bugs).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A received HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, values trimmed, in received order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers_named(name).into_iter().next()
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

    /// The header `name`; panics (listing the headers) when there is none.
    #[track_caller]
    pub fn expect_header(&self, name: &str) -> &str {
        match self.header(name) {
            Some(v) => v,
            None => panic!("no {name} header in {:?}", self.headers),
        }
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Sends `GET target` to `addr` and reads the reply.
pub fn get(addr: SocketAddr, target: &str) -> io::Result<Response> {
    request(addr, "GET", target, &[])
}

/// `GET target` with extra request headers (a `Cookie`, a `Range`).
pub fn get_with(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    request(addr, "GET", target, headers)
}

/// `GET target` with extra headers; panics on a transport or framing error
/// (what the HTTP serving tests want: only the response is under test).
#[track_caller]
pub fn fetch(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Response {
    match get_with(addr, target, headers) {
        Ok(r) => r,
        Err(e) => panic!("GET {target}: {e}"),
    }
}

/// `METHOD target` with extra headers (HEAD responses have no body).
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    send_raw(addr, raw.as_bytes(), method == "HEAD")
}

/// Sends `raw` verbatim and reads until the server closes the connection
/// (so the request must say `Connection: close`). `head` marks a HEAD
/// request, whose response has no body whatever its headers say.
pub fn send_raw(addr: SocketAddr, raw: &[u8], head: bool) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(raw)?;
    stream.flush()?;
    let mut data = Vec::new();
    stream.read_to_end(&mut data)?;
    parse_response(&data, head)
}

fn parse_response(data: &[u8], head: bool) -> io::Result<Response> {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("no end of headers in {} bytes", data.len())))?;
    let text = std::str::from_utf8(&data[..end]).map_err(|_| invalid("non-UTF-8 headers"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err(invalid(format!("bad status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut response = Response {
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
        return Ok(response);
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    response.body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
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
    Ok(response)
}

fn decode_chunked(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk size"))?;
        let size_text = std::str::from_utf8(&data[..eol])
            .map_err(|_| invalid("bad chunk size"))?
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
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

/// Seconds since the epoch of an HTTP date header value; panics on a
/// malformed one.
#[track_caller]
pub fn http_date(value: &str) -> i64 {
    let t = httpdate::parse_http_date(value).unwrap_or_else(|e| panic!("{value:?}: {e}"));
    t.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// The value of the Prometheus sample `name{labels}` (exactly that name
/// and label set) in a `/metrics` body, if present.
pub fn sample(text: &str, sample: &str) -> Option<f64> {
    let sample = sample.trim_end();
    text.lines().find_map(|l| {
        let value = l.strip_prefix(sample)?;
        value
            .starts_with(' ')
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_body() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc",
            false,
        )
        .expect("parses");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn rejects_a_body_longer_than_its_content_length() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", false);
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn parses_chunked_body() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            false,
        )
        .expect("parses");
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn head_and_not_modified_have_no_body() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).expect("parses");
        assert!(r.body.is_empty());
        let r = parse_response(b"HTTP/1.1 304 Not Modified\r\n\r\nxyz", false);
        assert!(r.is_err(), "bytes after a 304: {r:?}");
    }

    #[test]
    fn repeated_headers_are_all_kept() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nVary: Origin\r\nvary: Accept\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .expect("parses");
        assert_eq!(r.headers_named("Vary"), ["Origin", "Accept"]);
        assert_eq!(r.expect_header("VARY"), "Origin");
    }

    #[test]
    fn sample_reads_exactly_the_named_sample() {
        let text = "# HELP x\nx_total{a=\"b\"} 7\ny_sum 0.25\ny 3\n";
        assert_eq!(sample(text, "x_total{a=\"b\"}"), Some(7.0));
        assert_eq!(sample(text, "y"), Some(3.0), "not y_sum");
        assert_eq!(sample(text, "y_sum "), Some(0.25));
        assert_eq!(sample(text, "z"), None);
    }
}
