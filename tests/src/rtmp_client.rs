//! The tests' RTMP client: [`RawRtmp`], a raw client for crafted-input tests
//! (it does the handshake and then sends whatever bytes a test builds,
//! including ones no real encoder would send), and [`publisher`], a plain
//! tokio publisher for the load generator (`rtmp-load`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One TCP connection to an RTMP server.
pub struct RawRtmp {
    stream: TcpStream,
}

/// AMF0 encoders for building commands by hand: the ingest crate's, so
/// the tests and the connection machine's unit tests build the same bytes.
pub use oxcast_ingest::rtmp::amf::encode as amf0;

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

/// Appends one message to `out` as chunks of `chunk_size` bytes: a type-0
/// header (with an extended timestamp when `timestamp` does not fit in 24
/// bits, repeated in every continuation chunk as the specification and
/// FFmpeg do), then type-3 continuations.
pub fn write_message(
    out: &mut Vec<u8>,
    csid: u8,
    timestamp: u32,
    type_id: u8,
    stream_id: u32,
    payload: &[u8],
    chunk_size: usize,
) {
    let extended = timestamp >= 0xff_ffff;
    let header_ts = if extended { 0xff_ffff } else { timestamp };
    out.push(csid & 0x3f);
    out.extend_from_slice(&header_ts.to_be_bytes()[1..]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    if extended {
        out.extend_from_slice(&timestamp.to_be_bytes());
    }
    let mut pieces = payload.chunks(chunk_size.max(1));
    if let Some(first) = pieces.next() {
        out.extend_from_slice(first);
    }
    for piece in pieces {
        out.push(0xc0 | (csid & 0x3f));
        if extended {
            out.extend_from_slice(&timestamp.to_be_bytes());
        }
        out.extend_from_slice(piece);
    }
}

/// A plain RTMP publisher on tokio: handshake, `connect`, `createStream`,
/// `publish`, then whatever messages the caller writes. Used by the load
/// generator (`rtmp-load`); it speaks what FFmpeg speaks, so nginx-rtmp and
/// oxcast both accept it.
pub mod publisher {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::TcpStream;

    use super::{amf0, write_message, AMF0_COMMAND, SET_CHUNK_SIZE};

    /// The chunk size the publisher announces and writes with (FFmpeg's).
    pub const CHUNK_SIZE: usize = 4096;
    /// Chunk stream ids (as FFmpeg: 3 for commands, 4 for media data).
    pub const CSID_COMMAND: u8 = 3;
    pub const CSID_AUDIO: u8 = 4;
    pub const CSID_VIDEO: u8 = 6;
    pub const CSID_DATA: u8 = 5;

    /// Why a publish could not start.
    #[derive(Debug, thiserror::Error)]
    pub enum PublishError {
        #[error("io: {0}")]
        Io(#[from] std::io::Error),
        #[error("timed out waiting for {0}")]
        Timeout(&'static str),
        #[error("server closed the connection during {0}")]
        Closed(&'static str),
        #[error("protocol: {0}")]
        Protocol(String),
        #[error("server refused: {0}")]
        Refused(String),
    }

    /// An `rtmp://host:port/app` URL, split.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RtmpUrl {
        pub host: String,
        pub port: u16,
        pub app: String,
    }

    impl RtmpUrl {
        pub fn parse(url: &str) -> Result<RtmpUrl, String> {
            let rest = url
                .strip_prefix("rtmp://")
                .ok_or_else(|| format!("{url}: not an rtmp:// URL"))?;
            let (authority, app) = rest
                .split_once('/')
                .ok_or_else(|| format!("{url}: no application (rtmp://host:port/app)"))?;
            let app = app.trim_end_matches('/');
            if app.is_empty() {
                return Err(format!("{url}: empty application"));
            }
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                    h.trim_start_matches('[').trim_end_matches(']'),
                    p.parse::<u16>()
                        .map_err(|e| format!("{url}: bad port {p:?}: {e}"))?,
                ),
                _ => (authority, 1935),
            };
            if host.is_empty() {
                return Err(format!("{url}: empty host"));
            }
            Ok(RtmpUrl {
                host: host.to_string(),
                port,
                app: app.to_string(),
            })
        }

        /// The tcUrl sent in `connect`.
        pub fn tc_url(&self) -> String {
            format!("rtmp://{}:{}/{}", self.host, self.port, self.app)
        }
    }

    /// A connection that is publishing: write media with
    /// [`Publishing::writer`], and keep draining [`Publishing::reader`]
    /// (the server's acknowledgements) so the server never blocks on us.
    pub struct Publishing {
        pub reader: OwnedReadHalf,
        pub writer: OwnedWriteHalf,
        /// The message stream id `createStream` returned.
        pub stream_id: u32,
    }

    /// Connects to `url` and publishes `key` (live), with `timeout` for
    /// each step.
    pub async fn publish(
        url: &RtmpUrl,
        key: &str,
        timeout: Duration,
    ) -> Result<Publishing, PublishError> {
        let step = |what: &'static str| (timeout, what);
        let stream = within(step("the TCP connection"), async {
            Ok(TcpStream::connect((url.host.as_str(), url.port)).await?)
        })
        .await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            inbox: Vec::new(),
            in_chunk_size: 128,
            partial: Default::default(),
        };
        within(step("the handshake"), conn.handshake()).await?;

        let mut out = Vec::new();
        write_message(
            &mut out,
            2,
            0,
            SET_CHUNK_SIZE,
            0,
            &(CHUNK_SIZE as u32).to_be_bytes(),
            128,
        );
        let mut p = amf0::string("connect");
        p.extend(amf0::number(1.0));
        p.extend(amf0::object(&[
            ("app", &url.app),
            ("type", "nonprivate"),
            ("flashVer", "FMLE/3.0 (compatible; oxcast rtmp-load)"),
            ("tcUrl", &url.tc_url()),
        ]));
        write_message(&mut out, CSID_COMMAND, 0, AMF0_COMMAND, 0, &p, CHUNK_SIZE);
        conn.stream.write_all(&out).await?;
        within(step("connect's _result"), conn.wait_result(1.0, "connect")).await?;

        out.clear();
        for (i, name) in ["releaseStream", "FCPublish"].iter().enumerate() {
            let p = amf0::command(name, 2.0 + i as f64, &[amf0::string(key)]);
            write_message(&mut out, CSID_COMMAND, 0, AMF0_COMMAND, 0, &p, CHUNK_SIZE);
        }
        let p = amf0::command("createStream", 4.0, &[]);
        write_message(&mut out, CSID_COMMAND, 0, AMF0_COMMAND, 0, &p, CHUNK_SIZE);
        conn.stream.write_all(&out).await?;
        let reply = within(
            step("createStream's _result"),
            conn.wait_result(4.0, "createStream"),
        )
        .await?;
        let stream_id = match reply.get(3) {
            Some(Amf::Number(n)) if *n >= 1.0 && *n < f64::from(u32::MAX) => *n as u32,
            other => {
                return Err(PublishError::Protocol(format!(
                    "createStream returned no stream id: {other:?}"
                )))
            }
        };

        out.clear();
        let p = amf0::command("publish", 5.0, &[amf0::string(key), amf0::string("live")]);
        write_message(
            &mut out,
            CSID_DATA,
            0,
            AMF0_COMMAND,
            stream_id,
            &p,
            CHUNK_SIZE,
        );
        conn.stream.write_all(&out).await?;
        within(step("NetStream.Publish.Start"), conn.wait_publish_start()).await?;

        let (reader, writer) = conn.stream.into_split();
        Ok(Publishing {
            reader,
            writer,
            stream_id,
        })
    }

    async fn within<T>(
        (timeout, what): (Duration, &'static str),
        fut: impl std::future::Future<Output = Result<T, PublishError>>,
    ) -> Result<T, PublishError> {
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| PublishError::Timeout(what))?
    }

    /// `FCUnpublish` + `deleteStream`, what FFmpeg sends when it stops.
    pub fn unpublish_messages(key: &str, stream_id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let p = amf0::command("FCUnpublish", 6.0, &[amf0::string(key)]);
        write_message(&mut out, CSID_COMMAND, 0, AMF0_COMMAND, 0, &p, CHUNK_SIZE);
        let stream = amf0::number(f64::from(stream_id));
        let p = amf0::command("deleteStream", 7.0, &[stream]);
        write_message(&mut out, CSID_COMMAND, 0, AMF0_COMMAND, 0, &p, CHUNK_SIZE);
        out
    }

    /// Reads and discards what the server sends until it closes the
    /// connection; returns how it ended.
    pub async fn drain(mut reader: OwnedReadHalf) -> std::io::Result<()> {
        let mut buf = vec![0u8; 4096];
        loop {
            if reader.read(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }

    /// An AMF0 value, as far as the replies to a publisher need.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Amf {
        Number(f64),
        Bool(bool),
        String(String),
        Object(Vec<(String, Amf)>),
        Null,
    }

    impl Amf {
        fn prop(&self, name: &str) -> Option<&Amf> {
            match self {
                Amf::Object(props) => props.iter().find(|(k, _)| k == name).map(|(_, v)| v),
                _ => None,
            }
        }

        fn as_str(&self) -> Option<&str> {
            match self {
                Amf::String(s) => Some(s),
                _ => None,
            }
        }
    }

    /// Decodes AMF0 values until `data` ends (or an unsupported type).
    pub fn decode_amf0(mut data: &[u8]) -> Result<Vec<Amf>, String> {
        let mut out = Vec::new();
        while !data.is_empty() {
            out.push(decode_value(&mut data, 0)?);
        }
        Ok(out)
    }

    fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if data.len() < n {
            return Err("truncated AMF0".to_string());
        }
        let (head, tail) = data.split_at(n);
        *data = tail;
        Ok(head)
    }

    fn decode_string(data: &mut &[u8], long: bool) -> Result<String, String> {
        let len = if long {
            let b = take(data, 4)?;
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        } else {
            let b = take(data, 2)?;
            u16::from_be_bytes([b[0], b[1]]) as usize
        };
        Ok(String::from_utf8_lossy(take(data, len)?).into_owned())
    }

    fn decode_props(data: &mut &[u8], depth: usize) -> Result<Vec<(String, Amf)>, String> {
        let mut props = Vec::new();
        loop {
            let key = decode_string(data, false)?;
            if key.is_empty() && data.first() == Some(&0x09) {
                take(data, 1)?;
                return Ok(props);
            }
            let value = decode_value(data, depth + 1)?;
            props.push((key, value));
        }
    }

    fn decode_value(data: &mut &[u8], depth: usize) -> Result<Amf, String> {
        if depth > 32 {
            return Err("AMF0 nested too deep".to_string());
        }
        let marker = take(data, 1)?[0];
        Ok(match marker {
            0x00 => {
                let b = take(data, 8)?;
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                Amf::Number(f64::from_be_bytes(n))
            }
            0x01 => Amf::Bool(take(data, 1)?[0] != 0),
            0x02 => Amf::String(decode_string(data, false)?),
            0x0c => Amf::String(decode_string(data, true)?),
            0x03 => Amf::Object(decode_props(data, depth)?),
            0x08 => {
                take(data, 4)?;
                Amf::Object(decode_props(data, depth)?)
            }
            0x05 | 0x06 => Amf::Null,
            other => return Err(format!("unsupported AMF0 marker {other:#04x}")),
        })
    }

    #[derive(Default, Clone)]
    struct Partial {
        timestamp: u32,
        length: usize,
        type_id: u8,
        body: Vec<u8>,
    }

    /// The connection before publishing: a minimal chunk-stream reader.
    struct Conn {
        stream: TcpStream,
        inbox: Vec<u8>,
        in_chunk_size: usize,
        partial: std::collections::HashMap<u32, Partial>,
    }

    impl Conn {
        async fn handshake(&mut self) -> Result<(), PublishError> {
            let mut c0c1 = vec![3u8];
            c0c1.extend((0..1536u32).map(|i| (i.wrapping_mul(7) + 3) as u8));
            c0c1[1..9].fill(0);
            self.stream.write_all(&c0c1).await?;
            let mut s = vec![0u8; 1 + 1536 + 1536];
            self.stream.read_exact(&mut s).await?;
            if s[0] != 3 {
                return Err(PublishError::Protocol(format!(
                    "server handshake version {}",
                    s[0]
                )));
            }
            // C2 echoes S1.
            self.stream.write_all(&s[1..1537]).await?;
            Ok(())
        }

        async fn fill(&mut self, what: &'static str) -> Result<(), PublishError> {
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Err(PublishError::Closed(what));
            }
            self.inbox.extend_from_slice(&buf[..n]);
            Ok(())
        }

        /// The next complete message (type id, payload).
        async fn next_message(
            &mut self,
            what: &'static str,
        ) -> Result<(u8, Vec<u8>), PublishError> {
            loop {
                if let Some(m) = self.parse_one()? {
                    return Ok(m);
                }
                self.fill(what).await?;
            }
        }

        /// Parses one chunk from the inbox; returns a message when the chunk
        /// completed one. `Ok(None)` when more bytes are needed or the chunk
        /// did not complete a message (the caller loops either way).
        fn parse_one(&mut self) -> Result<Option<(u8, Vec<u8>)>, PublishError> {
            loop {
                let buf = &self.inbox;
                let Some(&b0) = buf.first() else {
                    return Ok(None);
                };
                let fmt = b0 >> 6;
                let (csid, mut pos) = match b0 & 0x3f {
                    0 if buf.len() >= 2 => (64 + u32::from(buf[1]), 2),
                    1 if buf.len() >= 3 => (64 + u32::from(buf[1]) + 256 * u32::from(buf[2]), 3),
                    0 | 1 => return Ok(None),
                    id => (u32::from(id), 1),
                };
                let header_len = [11, 7, 3, 0][fmt as usize];
                if buf.len() < pos + header_len {
                    return Ok(None);
                }
                let h = &buf[pos..pos + header_len];
                let mut p = self.partial.get(&csid).cloned().unwrap_or_default();
                let mut ts_field = p.timestamp;
                if fmt <= 2 {
                    ts_field = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                }
                if fmt <= 1 {
                    p.length = u32::from_be_bytes([0, h[3], h[4], h[5]]) as usize;
                    p.type_id = h[6];
                }
                pos += header_len;
                if ts_field == 0xff_ffff || (fmt == 3 && p.timestamp >= 0xff_ffff) {
                    if buf.len() < pos + 4 {
                        return Ok(None);
                    }
                    pos += 4;
                }
                p.timestamp = ts_field;
                let want = (p.length - p.body.len().min(p.length)).min(self.in_chunk_size);
                if buf.len() < pos + want {
                    return Ok(None);
                }
                p.body.extend_from_slice(&buf[pos..pos + want]);
                self.inbox.drain(..pos + want);
                if p.body.len() >= p.length {
                    let body = std::mem::take(&mut p.body);
                    let type_id = p.type_id;
                    self.partial.insert(csid, p);
                    if type_id == SET_CHUNK_SIZE && body.len() >= 4 {
                        let size =
                            u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff;
                        self.in_chunk_size = (size as usize).max(1);
                    }
                    return Ok(Some((type_id, body)));
                }
                self.partial.insert(csid, p);
            }
        }

        /// Waits for the `_result` of transaction `txid`; an `_error` is a
        /// refusal.
        async fn wait_result(
            &mut self,
            txid: f64,
            what: &'static str,
        ) -> Result<Vec<Amf>, PublishError> {
            loop {
                let (type_id, body) = self.next_message(what).await?;
                if type_id != AMF0_COMMAND {
                    continue;
                }
                let values = decode_amf0(&body).map_err(PublishError::Protocol)?;
                let name = values.first().and_then(Amf::as_str).unwrap_or_default();
                let id = match values.get(1) {
                    Some(Amf::Number(n)) => *n,
                    _ => -1.0,
                };
                match name {
                    "_result" if id == txid => return Ok(values),
                    "_error" if id == txid => {
                        return Err(PublishError::Refused(format!("{what}: {values:?}")))
                    }
                    _ => {}
                }
            }
        }

        /// Waits for `onStatus` `NetStream.Publish.Start`; any other
        /// error-level status is a refusal.
        async fn wait_publish_start(&mut self) -> Result<(), PublishError> {
            loop {
                let (type_id, body) = self.next_message("publish").await?;
                if type_id != AMF0_COMMAND {
                    continue;
                }
                let values = decode_amf0(&body).map_err(PublishError::Protocol)?;
                if values.first().and_then(Amf::as_str) != Some("onStatus") {
                    continue;
                }
                let info = values.get(3);
                let code = info
                    .and_then(|i| i.prop("code"))
                    .and_then(Amf::as_str)
                    .unwrap_or_default();
                let level = info
                    .and_then(|i| i.prop("level"))
                    .and_then(Amf::as_str)
                    .unwrap_or_default();
                if code == "NetStream.Publish.Start" {
                    return Ok(());
                }
                if level == "error" || code.contains("BadName") || code.contains("Failed") {
                    return Err(PublishError::Refused(code.to_string()));
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_urls() {
            assert_eq!(
                RtmpUrl::parse("rtmp://127.0.0.1:1936/live").expect("url"),
                RtmpUrl {
                    host: "127.0.0.1".into(),
                    port: 1936,
                    app: "live".into()
                }
            );
            assert_eq!(
                RtmpUrl::parse("rtmp://localhost/app/").expect("url").port,
                1935
            );
            assert!(RtmpUrl::parse("http://x/app").is_err());
            assert!(RtmpUrl::parse("rtmp://x:1935").is_err());
        }

        #[test]
        fn decodes_amf0() {
            let mut p = amf0::string("_result");
            p.extend(amf0::number(4.0));
            p.extend(amf0::null());
            p.extend(amf0::object(&[("code", "NetStream.Publish.Start")]));
            let v = decode_amf0(&p).expect("amf0");
            assert_eq!(v[0], Amf::String("_result".into()));
            assert_eq!(v[1], Amf::Number(4.0));
            assert_eq!(
                v[3].prop("code").and_then(Amf::as_str),
                Some("NetStream.Publish.Start")
            );
        }

        #[test]
        fn extended_timestamps_repeat_in_continuations() {
            let mut out = Vec::new();
            write_message(&mut out, 4, 0x0100_0000, 9, 1, &[7u8; 10], 4);
            // type 0 (12) + ext (4) + 4 bytes, then 2 × (1 + 4 + ≤4).
            assert_eq!(out.len(), 12 + 4 + 4 + (1 + 4 + 4) + (1 + 4 + 2));
            assert_eq!(&out[1..4], &[0xff, 0xff, 0xff]);
            assert_eq!(&out[12..16], &0x0100_0000u32.to_be_bytes());
            assert_eq!(out[20], 0xc4);
        }
    }
}
