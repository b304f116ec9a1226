//! A raw RTMP client for crafted-input tests: it does the handshake and
//! then sends whatever bytes a test builds, including ones no real encoder
//! would send.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One TCP connection to an RTMP server.
pub struct RawRtmp {
    stream: TcpStream,
}

/// AMF0 encoders for building commands by hand.
pub mod amf0 {
    pub fn number(v: f64) -> Vec<u8> {
        let mut out = vec![0x00];
        out.extend_from_slice(&v.to_be_bytes());
        out
    }

    pub fn string(s: &str) -> Vec<u8> {
        let mut out = vec![0x02];
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
        out
    }

    pub fn null() -> Vec<u8> {
        vec![0x05]
    }

    /// An object with string properties.
    pub fn object(props: &[(&str, &str)]) -> Vec<u8> {
        let mut out = vec![0x03];
        for (k, v) in props {
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend(string(v));
        }
        out.extend_from_slice(&[0, 0, 0x09]);
        out
    }

    /// `depth` objects nested inside each other (each `{a: …}`).
    pub fn nested_objects(depth: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(depth * 7);
        for _ in 0..depth {
            out.extend_from_slice(&[0x03, 0, 1, b'a']);
        }
        out.push(0x05);
        for _ in 0..depth {
            out.extend_from_slice(&[0, 0, 0x09]);
        }
        out
    }
}

/// Message type ids.
pub const SET_CHUNK_SIZE: u8 = 1;
pub const WINDOW_ACK_SIZE: u8 = 5;
pub const AMF0_DATA: u8 = 18;
pub const AMF0_COMMAND: u8 = 20;

/// Splits a message into chunks: a type-0 header, then type-3 continuations.
pub fn chunks(
    csid: u8,
    timestamp: u32,
    type_id: u8,
    stream_id: u32,
    payload: &[u8],
    chunk_size: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = if payload.is_empty() {
        vec![&[]]
    } else {
        payload.chunks(chunk_size).collect()
    };
    for (i, piece) in pieces.into_iter().enumerate() {
        let mut c = Vec::with_capacity(piece.len() + 12);
        if i == 0 {
            c.push(csid & 0x3f);
            c.extend_from_slice(&timestamp.min(0xff_ffff).to_be_bytes()[1..]);
            c.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            c.push(type_id);
            c.extend_from_slice(&stream_id.to_le_bytes());
        } else {
            c.push(0xc0 | (csid & 0x3f));
        }
        c.extend_from_slice(piece);
        out.push(c);
    }
    out
}

/// A whole message as bytes (chunks concatenated).
pub fn message(
    csid: u8,
    type_id: u8,
    stream_id: u32,
    payload: &[u8],
    chunk_size: usize,
) -> Vec<u8> {
    chunks(csid, 0, type_id, stream_id, payload, chunk_size).concat()
}

/// `connect(app)` as a command payload.
pub fn connect_payload(app: &str) -> Vec<u8> {
    let mut p = amf0::string("connect");
    p.extend(amf0::number(1.0));
    p.extend(amf0::object(&[
        ("app", app),
        ("tcUrl", &format!("rtmp://127.0.0.1/{app}")),
    ]));
    p
}

impl RawRtmp {
    /// Connects without a handshake.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        Ok(Self { stream })
    }

    /// Connects and completes the plain RTMP handshake (C0/C1, S0/S1/S2, C2).
    pub fn handshaken(addr: SocketAddr) -> io::Result<Self> {
        let mut c = Self::connect(addr)?;
        let mut c0c1 = vec![3u8];
        c0c1.extend((0..1536u32).map(|i| (i * 7 + 3) as u8));
        c0c1[1..9].fill(0);
        c.stream.write_all(&c0c1)?;
        let mut s = vec![0u8; 1 + 1536 + 1536];
        c.stream.read_exact(&mut s)?;
        // C2 echoes S1.
        c.stream.write_all(&s[1..1537])?;
        Ok(c)
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads whatever the server sends within `wait`.
    pub fn read_for(&mut self, wait: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Waits up to `timeout` for the server to close the connection
    /// (EOF or reset); reads and discards what it sends meanwhile.
    pub fn closed_by_server_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .is_err()
            {
                return true;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
        false
    }

    /// Sends `connect` for `app` and waits for the server's `_result`.
    pub fn rtmp_connect(&mut self, app: &str) -> io::Result<bool> {
        self.send(&message(3, AMF0_COMMAND, 0, &connect_payload(app), 128))?;
        let reply = self.read_for(Duration::from_secs(2))?;
        Ok(contains(&reply, b"_result"))
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
