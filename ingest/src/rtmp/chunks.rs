//! RTMP chunk stream → whole messages, vetted before `rml_rtmp` sees them.
//!
//! `rml_rtmp` 0.8 keeps one payload buffer for all chunk streams, so a chunk
//! of stream B arriving inside a message on stream A (legal RTMP) makes it
//! panic or mix payloads. It also trusts sizes and AMF nesting from the
//! peer. The [`ChunkReassembler`] therefore parses the client's chunks
//! itself, enforces the limits, and re-emits every complete message whole:
//! a type-0 chunk and its type-3 continuations, of [`SESSION_CHUNK_SIZE`]
//! (which the session is told once, up front), never interleaved with
//! another message, so the session only ever joins one message at a time.

use std::collections::HashMap;

use super::amf;

/// Largest chunk size RTMP allows (31 bits).
pub const MAX_CHUNK_SIZE: u32 = 0x7fff_ffff;

/// The chunk size messages are re-emitted to the session with. The
/// session's deserializer buffers a whole chunk before copying it out and
/// keeps that buffer's capacity for as long as the connection lasts: with
/// one chunk per message that was the largest keyframe (~140 KiB at
/// 3 Mbit/s) per publisher. Fed at most a chunk at a time
/// (`ConnectionMachine::pump`), it holds about two.
pub const SESSION_CHUNK_SIZE: usize = 8 * 1024;
const INITIAL_CHUNK_SIZE: usize = 128;
const EXTENDED_TIMESTAMP: u32 = 0x00ff_ffff;
/// Chunk streams a client may have in flight; encoders use a handful.
const MAX_CHUNK_STREAMS: usize = 64;

const MSG_SET_CHUNK_SIZE: u8 = 1;
const MSG_ABORT: u8 = 2;
const MSG_AMF3_DATA: u8 = 15;
const MSG_AMF3_COMMAND: u8 = 17;
const MSG_AMF0_DATA: u8 = 18;
const MSG_AMF0_COMMAND: u8 = 20;

/// Why a client's byte stream was refused; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk header of format {format} on chunk stream {csid} that has no previous header")]
    NoPreviousHeader { format: u8, csid: u32 },
    #[error("new message header on chunk stream {csid} while a message on it is incomplete")]
    InterruptedMessage { csid: u32 },
    #[error("SetChunkSize {0} is outside 1..=2147483647")]
    InvalidChunkSize(u32),
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    MessageTooLarge { size: u32, limit: u32 },
    #[error("more than {MAX_CHUNK_STREAMS} chunk streams in use")]
    TooManyChunkStreams,
    #[error("partially received messages exceed {0} bytes")]
    TooMuchBuffered(usize),
    #[error("malformed message of type {type_id}: {source}")]
    Amf { type_id: u8, source: amf::AmfError },
    #[error(
        "command message with {0} values; a command needs a name, a transaction id and an object"
    )]
    ShortCommand(usize),
}

#[derive(Debug, Default)]
struct ChunkStream {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
    /// Payload of the message being received, if one is in progress.
    partial: Option<Vec<u8>>,
}

/// A complete message, as the reassembler hands it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Vec<u8>,
}

/// Parses the client's chunk stream incrementally. See the module docs.
#[derive(Debug)]
pub struct ChunkReassembler {
    chunk_size: usize,
    max_message_size: u32,
    streams: HashMap<u32, ChunkStream>,
    buffer: Vec<u8>,
    buffered_partials: usize,
    tc_url: Option<String>,
    /// End offsets in the caller's `out` of each message the last `push`
    /// emitted, so the session can be fed one message at a time.
    ends: Vec<usize>,
}

impl ChunkReassembler {
    pub fn new(max_message_size: u32) -> Self {
        Self {
            chunk_size: INITIAL_CHUNK_SIZE,
            max_message_size,
            streams: HashMap::new(),
            buffer: Vec::new(),
            buffered_partials: 0,
            tc_url: None,
            ends: Vec::new(),
        }
    }

    /// Where each message emitted by the last [`push`](Self::push) ends in
    /// its output. A session must see a command's answer go out before the
    /// next command is handled (a client may pipeline `connect`,
    /// `createStream` and `publish` in one packet), so callers feed
    /// messages one by one.
    pub fn message_ends(&self) -> &[usize] {
        &self.ends
    }

    /// The `tcUrl` the client sent with `connect` (the session does not
    /// expose it; the publish webhook wants it).
    pub fn tc_url(&self) -> Option<&str> {
        self.tc_url.as_deref()
    }

    /// What to feed the session before any client bytes: a SetChunkSize to
    /// [`SESSION_CHUNK_SIZE`], the size messages are re-emitted with.
    pub fn session_preamble() -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        write_message(
            &mut out,
            &Message {
                csid: 2,
                timestamp: 0,
                type_id: MSG_SET_CHUNK_SIZE,
                stream_id: 0,
                payload: (SESSION_CHUNK_SIZE as u32).to_be_bytes().to_vec(),
            },
        );
        out
    }

    /// Bytes held for incomplete chunks and messages (bounded by the limits).
    pub fn buffered(&self) -> usize {
        self.buffer.len() + self.buffered_partials
    }

    /// Consumes client bytes and appends every message they complete to
    /// `out`, re-encoded for the session (see [`write_message`]).
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
        self.ends.clear();
        let mut data = bytes;
        let owned;
        if !self.buffer.is_empty() {
            self.buffer.extend_from_slice(bytes);
            owned = std::mem::take(&mut self.buffer);
            data = &owned;
        }
        let mut pos = 0;
        while let Some(used) = self.parse_chunk(&data[pos..], out)? {
            pos += used;
        }
        self.buffer.extend_from_slice(&data[pos..]);
        // An incomplete chunk header plus at most one chunk of payload.
        let limit = self.chunk_size.min(self.max_message_size as usize) + 18;
        if self.buffer.len() > limit {
            return Err(ChunkError::TooMuchBuffered(limit));
        }
        Ok(())
    }

    /// Parses one chunk from the front of `data`; `None` if it is incomplete.
    fn parse_chunk(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, ChunkError> {
        let Some(&first) = data.first() else {
            return Ok(None);
        };
        let format = first >> 6;
        let (csid, mut pos) = match first & 0x3f {
            0 => match data.get(1) {
                Some(b) => (64 + u32::from(*b), 2),
                None => return Ok(None),
            },
            1 => match data.get(1..3) {
                Some(b) => (64 + u32::from(b[0]) + 256 * u32::from(b[1]), 3),
                None => return Ok(None),
            },
            n => (u32::from(n), 1),
        };
        let header_len = [11, 7, 3, 0][usize::from(format)];
        let Some(header) = data.get(pos..pos + header_len) else {
            return Ok(None);
        };
        pos += header_len;
        let be24 = |b: &[u8]| u32::from_be_bytes([0, b[0], b[1], b[2]]);

        if !self.streams.contains_key(&csid) {
            if format != 0 {
                return Err(ChunkError::NoPreviousHeader { format, csid });
            }
            if self.streams.len() >= MAX_CHUNK_STREAMS {
                return Err(ChunkError::TooManyChunkStreams);
            }
        }
        let previous = self.streams.get(&csid);
        let in_progress = previous.is_some_and(|s| s.partial.is_some());
        if format != 3 && in_progress {
            return Err(ChunkError::InterruptedMessage { csid });
        }
        let field = if format < 3 { be24(&header[0..3]) } else { 0 };
        let extended = if format < 3 {
            field == EXTENDED_TIMESTAMP
        } else {
            previous.is_some_and(|s| s.extended)
        };
        let ext_value = if extended {
            let Some(b) = data.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        } else {
            None
        };

        // The header is complete; is the chunk's payload here too? Work out
        // its size before touching any state, so an incomplete chunk can
        // simply be parsed again when more bytes arrive.
        let length = match format {
            0 | 1 => be24(&header[3..6]),
            _ => previous.map_or(0, |s| s.length),
        };
        if length > self.max_message_size {
            return Err(ChunkError::MessageTooLarge {
                size: length,
                limit: self.max_message_size,
            });
        }
        let have = previous
            .and_then(|s| s.partial.as_ref())
            .map_or(0, Vec::len);
        let want = (length as usize).saturating_sub(have).min(self.chunk_size);
        let Some(body) = data.get(pos..pos + want) else {
            return Ok(None);
        };
        pos += want;

        let s = self.streams.entry(csid).or_default();
        let field = ext_value.unwrap_or(field);
        match format {
            0 => {
                s.timestamp = field;
                s.delta = field;
                s.type_id = header[6];
                s.stream_id = u32::from_le_bytes([header[7], header[8], header[9], header[10]]);
            }
            1 => {
                s.delta = field;
                s.timestamp = s.timestamp.wrapping_add(field);
                s.type_id = header[6];
            }
            2 => {
                s.delta = field;
                s.timestamp = s.timestamp.wrapping_add(field);
            }
            _ => {
                if s.partial.is_none() {
                    s.timestamp = s.timestamp.wrapping_add(s.delta);
                }
            }
        }
        s.length = length;
        if format < 3 {
            s.extended = extended;
        }

        if have + want == s.length as usize {
            let mut payload = s.partial.take().unwrap_or_default();
            self.buffered_partials -= payload.len();
            payload.extend_from_slice(body);
            let message = Message {
                csid,
                timestamp: s.timestamp,
                type_id: s.type_id,
                stream_id: s.stream_id,
                payload,
            };
            self.deliver(message, out)?;
        } else {
            let partial = s.partial.get_or_insert_with(Vec::new);
            partial.extend_from_slice(body);
            self.buffered_partials += want;
            let limit = 2 * self.max_message_size as usize;
            if self.buffered_partials > limit {
                return Err(ChunkError::TooMuchBuffered(limit));
            }
        }
        Ok(Some(pos))
    }

    /// Vets a complete message and hands it on, or handles it here.
    fn deliver(&mut self, message: Message, out: &mut Vec<u8>) -> Result<(), ChunkError> {
        match message.type_id {
            MSG_SET_CHUNK_SIZE => {
                // Consumed here: the session stays at the maximum chunk size.
                let size = message
                    .payload
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if size == 0 || size > MAX_CHUNK_SIZE {
                    return Err(ChunkError::InvalidChunkSize(size));
                }
                self.chunk_size = size as usize;
                return Ok(());
            }
            MSG_ABORT => {
                let csid = message
                    .payload
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if let Some(partial) = self.streams.get_mut(&csid).and_then(|s| s.partial.take()) {
                    self.buffered_partials -= partial.len();
                }
                return Ok(());
            }
            MSG_AMF0_DATA | MSG_AMF0_COMMAND | MSG_AMF3_DATA | MSG_AMF3_COMMAND => {
                let body = match (message.type_id, message.payload.first()) {
                    (MSG_AMF3_COMMAND, Some(0)) => &message.payload[1..],
                    _ => &message.payload[..],
                };
                let summary = amf::scan(body).map_err(|source| ChunkError::Amf {
                    type_id: message.type_id,
                    source,
                })?;
                let is_data = matches!(message.type_id, MSG_AMF0_DATA | MSG_AMF3_DATA);
                // rml_rtmp slices the first three values of a command
                // without checking there are three.
                if !is_data && summary.values < 3 {
                    return Err(ChunkError::ShortCommand(summary.values));
                }
                if !is_data && summary.first_string.as_deref() == Some("connect") {
                    self.tc_url = connect_tc_url(body);
                }
                // `@setDataFrame` needs a name and a value after it, or the
                // session indexes past the end of its value list.
                if is_data
                    && summary.first_string.as_deref() == Some("@setDataFrame")
                    && summary.values < 3
                {
                    tracing::debug!("dropping @setDataFrame with {} values", summary.values);
                    return Ok(());
                }
            }
            _ => {}
        }
        write_message(out, &message);
        self.ends.push(out.len());
        Ok(())
    }
}

/// `tcUrl` from a `connect` command (already vetted by [`amf::scan`]).
fn connect_tc_url(body: &[u8]) -> Option<String> {
    use rml_rtmp::rml_amf0::{deserialize, Amf0Value};
    let values = deserialize(&mut std::io::Cursor::new(body)).ok()?;
    let properties = values.into_iter().nth(2)?.get_object_properties()?;
    match properties.get("tcUrl") {
        Some(Amf0Value::Utf8String(url)) => Some(url.clone()),
        _ => None,
    }
}

/// Encodes a message as a type-0 chunk followed by type-3 continuation
/// chunks of [`SESSION_CHUNK_SIZE`] bytes.
fn write_message(out: &mut Vec<u8>, m: &Message) {
    let ts_field = m.timestamp.min(EXTENDED_TIMESTAMP);
    let extended = ts_field == EXTENDED_TIMESTAMP;
    out.reserve(max_encoded_len(m.payload.len()));
    write_basic_header(out, 0, m.csid);
    out.extend_from_slice(&ts_field.to_be_bytes()[1..]);
    out.extend_from_slice(&(m.payload.len() as u32).to_be_bytes()[1..]);
    out.push(m.type_id);
    out.extend_from_slice(&m.stream_id.to_le_bytes());
    if extended {
        out.extend_from_slice(&m.timestamp.to_be_bytes());
    }
    let mut pieces = m.payload.chunks(SESSION_CHUNK_SIZE);
    if let Some(first) = pieces.next() {
        out.extend_from_slice(first);
    }
    for piece in pieces {
        write_basic_header(out, 3, m.csid);
        // A continuation of a message with an extended timestamp repeats it.
        if extended {
            out.extend_from_slice(&m.timestamp.to_be_bytes());
        }
        out.extend_from_slice(piece);
    }
}

/// The most bytes [`write_message`] writes for a payload of `len` bytes:
/// headers of up to 3 + 11 + 4 bytes, then 3 + 4 per continuation chunk.
pub fn max_encoded_len(len: usize) -> usize {
    let continuations = len.saturating_sub(1) / SESSION_CHUNK_SIZE;
    len.saturating_add(18)
        .saturating_add(continuations.saturating_mul(7))
}

/// A chunk's basic header: format (0 or 3 here) and chunk stream id.
fn write_basic_header(out: &mut Vec<u8>, format: u8, csid: u32) {
    let format = format << 6;
    match csid {
        2..=63 => out.push(format | csid as u8),
        64..=319 => out.extend_from_slice(&[format, (csid - 64) as u8]),
        _ => {
            let v = csid - 64;
            out.extend_from_slice(&[format | 1, (v & 0xff) as u8, (v >> 8) as u8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a message into chunks the way a client would.
    fn chunked(
        csid: u8,
        timestamp: u32,
        type_id: u8,
        payload: &[u8],
        chunk_size: usize,
    ) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        for (i, piece) in payload.chunks(chunk_size).enumerate() {
            let mut c = Vec::new();
            if i == 0 {
                c.push(csid);
                c.extend_from_slice(&timestamp.to_be_bytes()[1..]);
                c.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
                c.push(type_id);
                c.extend_from_slice(&1u32.to_le_bytes());
            } else {
                c.push(0xc0 | csid);
            }
            c.extend_from_slice(piece);
            chunks.push(c);
        }
        chunks
    }

    fn messages(bytes: &[u8]) -> Vec<Message> {
        // Decode our own output back (csid < 64, no extended ts): a type-0
        // chunk, then one-byte type-3 headers every SESSION_CHUNK_SIZE.
        let mut v = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            assert_eq!(bytes[pos] >> 6, 0, "a message starts with a type-0 chunk");
            let csid = u32::from(bytes[pos] & 0x3f);
            let h = &bytes[pos + 1..pos + 12];
            let len = u32::from_be_bytes([0, h[3], h[4], h[5]]) as usize;
            pos += 12;
            let mut payload = Vec::new();
            while payload.len() < len {
                if !payload.is_empty() {
                    assert_eq!(u32::from(bytes[pos]), 0xc0 | csid, "a type-3 continuation");
                    pos += 1;
                }
                let take = (len - payload.len()).min(SESSION_CHUNK_SIZE);
                payload.extend_from_slice(&bytes[pos..pos + take]);
                pos += take;
            }
            v.push(Message {
                csid,
                timestamp: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                type_id: h[6],
                stream_id: u32::from_le_bytes([h[7], h[8], h[9], h[10]]),
                payload,
            });
        }
        v
    }

    #[test]
    fn joins_interleaved_chunk_streams() {
        let video: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let audio: Vec<u8> = (0..200u32).map(|i| (i * 3) as u8).collect();
        let v = chunked(6, 1000, 9, &video, 128);
        let a = chunked(4, 1010, 8, &audio, 128);
        // v0 a0 v1 a1 v2: chunks of two messages interleaved.
        let wire: Vec<u8> = [&v[0], &a[0], &v[1], &a[1], &v[2]]
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect();
        let mut r = ChunkReassembler::new(1 << 20);
        let mut out = Vec::new();
        // Byte by byte, to exercise every partial-header path.
        for b in &wire {
            r.push(std::slice::from_ref(b), &mut out).unwrap();
        }
        let got = messages(&out);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].csid, got[0].timestamp, got[0].payload.clone()),
            (4, 1010, audio)
        );
        assert_eq!(
            (got[1].csid, got[1].timestamp, got[1].payload.clone()),
            (6, 1000, video)
        );
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn applies_timestamp_deltas() {
        let mut r = ChunkReassembler::new(1 << 20);
        let mut out = Vec::new();
        let mut wire = chunked(4, 100, 8, &[1, 2], 128).concat();
        wire.extend_from_slice(&[0x84, 0, 0, 23, 7]); // format 2: delta 23, payload [7, ?]
        wire.push(8);
        wire.extend_from_slice(&[0xc4, 9, 9]); // format 3: same delta again
        r.push(&wire, &mut out).unwrap();
        let ts: Vec<u32> = messages(&out).iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![100, 123, 146]);
    }

    #[test]
    fn refuses_bad_chunk_sizes_and_oversized_messages() {
        for size in [0u32, 0x8000_0000, u32::MAX] {
            let mut r = ChunkReassembler::new(1 << 20);
            let wire = chunked(2, 0, MSG_SET_CHUNK_SIZE, &size.to_be_bytes(), 128).concat();
            assert_eq!(
                r.push(&wire, &mut Vec::new()),
                Err(ChunkError::InvalidChunkSize(size))
            );
        }
        let mut r = ChunkReassembler::new(1000);
        let wire = chunked(4, 0, 9, &[0; 1001], 128).concat();
        assert!(matches!(
            r.push(&wire, &mut Vec::new()),
            Err(ChunkError::MessageTooLarge { .. })
        ));
    }

    #[test]
    fn bounds_what_a_peer_can_make_it_buffer() {
        let mut r = ChunkReassembler::new(1 << 20);
        let mut out = Vec::new();
        // 512 KiB chunks, then many half-sent 1 MiB messages on separate streams.
        r.push(
            &chunked(2, 0, MSG_SET_CHUNK_SIZE, &(1u32 << 19).to_be_bytes(), 128).concat(),
            &mut out,
        )
        .unwrap();
        let mut err = None;
        for csid in 3..63u8 {
            let mut c = chunked(csid, 0, 9, &vec![0; 1 << 20], 1 << 19);
            c.truncate(1);
            if let Err(e) = r.push(&c[0], &mut out) {
                err = Some(e);
                break;
            }
            assert!(r.buffered() <= 2 << 20);
        }
        assert!(
            matches!(err, Some(ChunkError::TooMuchBuffered(_))),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_continuation_without_header_and_deep_amf() {
        let mut r = ChunkReassembler::new(1 << 20);
        assert!(matches!(
            r.push(&[0xc5, 1, 2], &mut Vec::new()),
            Err(ChunkError::NoPreviousHeader { .. })
        ));
        let mut deep = Vec::new();
        for _ in 0..2000 {
            deep.extend_from_slice(&[3, 0, 1, b'a']);
        }
        let mut r = ChunkReassembler::new(1 << 20);
        let wire = chunked(3, 0, MSG_AMF0_DATA, &deep, 128).concat();
        assert!(matches!(
            r.push(&wire, &mut Vec::new()),
            Err(ChunkError::Amf { .. })
        ));
    }

    #[test]
    fn refuses_commands_without_name_id_and_object() {
        let mut payload = vec![2, 0, 7];
        payload.extend_from_slice(b"connect");
        payload.push(0);
        payload.extend_from_slice(&1f64.to_be_bytes());
        let mut r = ChunkReassembler::new(1 << 20);
        let wire = chunked(3, 0, MSG_AMF0_COMMAND, &payload, 128).concat();
        assert_eq!(
            r.push(&wire, &mut Vec::new()),
            Err(ChunkError::ShortCommand(2))
        );
        let mut r = ChunkReassembler::new(1 << 20);
        // An empty command: a bare type-0 header with length 0.
        let wire = [3, 0, 0, 0, 0, 0, 0, MSG_AMF0_COMMAND, 1, 0, 0, 0];
        assert_eq!(
            r.push(&wire, &mut Vec::new()),
            Err(ChunkError::ShortCommand(0))
        );
    }

    #[test]
    fn drops_short_set_data_frame() {
        let mut payload = vec![2, 0, 13];
        payload.extend_from_slice(b"@setDataFrame");
        let mut r = ChunkReassembler::new(1 << 20);
        let mut out = Vec::new();
        r.push(
            &chunked(3, 0, MSG_AMF0_DATA, &payload, 128).concat(),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn extended_timestamps_survive() {
        let mut r = ChunkReassembler::new(1 << 20);
        let mut out = Vec::new();
        let mut wire = vec![4, 0xff, 0xff, 0xff, 0, 0, 2, 8, 1, 0, 0, 0];
        wire.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        wire.extend_from_slice(&[5, 6]);
        r.push(&wire, &mut out).unwrap();
        assert_eq!(&out[1..4], &[0xff, 0xff, 0xff]);
        assert_eq!(&out[12..16], &0x1234_5678u32.to_be_bytes());
        assert_eq!(&out[16..], &[5, 6]);
    }
}
