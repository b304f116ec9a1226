//! One RTMP connection as a sans-IO state machine: bytes the client sent and
//! the current time go in; bytes to send and [`Event`]s come out. The
//! socket, the publish authorization (`auth`), the stream claims, the
//! player feed and the timers live in the async driver
//! ([`super::connection`]); the fuzz targets and the unit tests below drive
//! this same type without any of them.
//!
//! Inside: the handshake, the chunk reassembler that vets the client's
//! input before `rml_rtmp` sees it ([`super::chunks`]), the `rml_rtmp`
//! server session, and every decision that needs nothing but the
//! configuration (the application name, a busy connection, a malformed
//! stream name, play denied). Decisions that need the outside world — may
//! this key go live, is that stream live — are asked for with an event
//! ([`Event::PublishRequested`], [`Event::PlayRequested`]), and the machine
//! handles no further client message until the answer comes
//! ([`ConnectionMachine::accept_publish`] and friends), so commands a client
//! pipelines behind a publish (and the media after it) are handled in
//! order, after the decision.
//!
//! `rml_rtmp` can panic on some malformed input; every call into it is
//! wrapped in `catch_unwind`, so such a client loses only its own
//! connection ([`Close::Error`] with [`ConnectionError::Panicked`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionError, ServerSessionEvent,
    ServerSessionResult, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;

use super::chunks::{max_encoded_len, ChunkError, ChunkReassembler, SESSION_CHUNK_SIZE};
use crate::auth::PublishRequest;
use crate::live::{PlayPacket, StreamHeaders};
use crate::stream_key::StreamKey;

/// The largest re-chunked message buffer a connection keeps between reads
/// (enough for the commands and small media of a read); a larger one is
/// freed once drained.
const NORMALIZED_KEPT: usize = 16 * 1024;

/// Why a connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("protocol error: {0}")]
    Session(String),
    #[error("malformed input made the RTMP library fail")]
    Panicked,
    #[error("refused input: {0}")]
    Chunk(#[from] ChunkError),
    #[error("more than {0} bytes of messages sent while a publish or play decision was pending")]
    TooMuchPending(usize),
    #[error("no media for {0:?} (idleTimeout)")]
    Idle(Duration),
    #[error("this replica can no longer prove it owns the stream (fenced)")]
    Fenced,
}

/// How a connection ended.
#[derive(Debug)]
pub enum Close {
    /// Normally: the peer left, a refusal was sent, the played stream
    /// ended, or the server shuts down.
    Done,
    /// The handshake failed, timed out, or the peer left during it.
    Handshake(ConnectionError),
    /// The `rml_rtmp` session could not be set up.
    Setup(ConnectionError),
    /// Anything else: malformed or refused input, idleness, fencing, i/o.
    Error(ConnectionError),
}

/// Why a connect or publish was refused; `label` is the
/// `oxcast_publish_rejections_total` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRejection {
    UnknownApp,
    ConnectionBusy,
    InvalidName,
    Unauthorized,
    AlreadyLive,
    MaxPublishers,
    OwnershipUnavailable,
    /// The stream's storage writer could not be started.
    StorageUnavailable,
}

impl PublishRejection {
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownApp => "unknown_app",
            Self::ConnectionBusy => "connection_busy",
            Self::InvalidName => "invalid_name",
            Self::Unauthorized => "unauthorized",
            Self::AlreadyLive => "already_live",
            Self::MaxPublishers => "max_publishers",
            Self::OwnershipUnavailable => "ownership_unavailable",
            Self::StorageUnavailable => "storage_writer",
        }
    }

    /// The status code and description the client receives.
    fn status(self) -> (&'static str, &'static str) {
        match self {
            Self::UnknownApp => ("NetConnection.Connect.Rejected", "unknown application"),
            Self::ConnectionBusy => ("NetStream.Publish.BadName", "connection already in use"),
            Self::InvalidName => ("NetStream.Publish.BadName", "invalid stream name"),
            Self::Unauthorized => ("NetStream.Publish.BadName", "not authorized"),
            Self::AlreadyLive => (
                "NetStream.Publish.BadName",
                "stream is already being published",
            ),
            Self::MaxPublishers => ("NetStream.Publish.BadName", "too many publishers"),
            Self::OwnershipUnavailable => {
                ("NetStream.Publish.BadName", "stream ownership unavailable")
            }
            Self::StorageUnavailable => ("NetStream.Publish.BadName", "storage unavailable"),
        }
    }
}

/// What the machine tells its driver, in order.
#[derive(Debug)]
pub enum Event {
    /// The client asked to publish; answer with
    /// [`ConnectionMachine::accept_publish`] or
    /// [`ConnectionMachine::reject_publish`].
    PublishRequested {
        request_id: u32,
        request: PublishRequest,
    },
    /// A connect or publish was refused (count it).
    PublishRejected(PublishRejection),
    /// The publisher unpublished; the connection stays open (it may
    /// publish again).
    Unpublished,
    Metadata(StreamMetadata),
    /// An FLV video tag body of the publication.
    Video {
        timestamp: u32,
        data: Bytes,
    },
    /// An FLV audio tag body of the publication.
    Audio {
        timestamp: u32,
        data: Bytes,
    },
    /// The client asked to play `key`; answer with
    /// [`ConnectionMachine::accept_play`] or
    /// [`ConnectionMachine::play_not_found`].
    PlayRequested {
        request_id: u32,
        key: StreamKey,
        requested: String,
    },
    /// The player stopped playing; the connection stays open.
    PlayFinished,
    /// The connection is over: send what [`ConnectionMachine::output`]
    /// holds, then close the socket.
    Closed(Close),
}

/// What the machine needs to know from the server's configuration.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// The one RTMP application clients may connect to.
    pub app: String,
    pub allow_play: bool,
    pub max_message_size: u32,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

impl MachineConfig {
    pub fn from_settings(rtmp: &oxcast_crds::RtmpSettings) -> Self {
        Self {
            app: rtmp.app.clone(),
            allow_play: rtmp.allow_play,
            max_message_size: rtmp.limits.max_message_size,
            handshake_timeout: rtmp.limits.handshake_timeout.get(),
            idle_timeout: rtmp.limits.idle_timeout.get(),
        }
    }
}

enum Role {
    Idle,
    /// Waiting for the driver's answer to a publish request.
    PublishRequested(u32),
    /// Waiting for the driver's answer to a play request.
    PlayRequested {
        request_id: u32,
        stream_id: u32,
    },
    Publishing,
    Playing {
        stream_id: u32,
        waiting_for_keyframe: bool,
    },
}

/// See the module documentation.
pub struct ConnectionMachine {
    config: MachineConfig,
    peer: SocketAddr,
    client_id: u64,
    /// Until the handshake completes.
    handshake: Option<Handshake>,
    /// After it.
    session: Option<ServerSession>,
    chunks: ChunkReassembler,
    /// Whole messages from `chunks`, re-encoded for the session; those
    /// before `start` (the `next`th end) have been handled.
    normalized: Vec<u8>,
    ends: Vec<usize>,
    next: usize,
    start: usize,
    role: Role,
    started: Instant,
    /// When the publisher last sent audio or video.
    last_media: Instant,
    out: Vec<u8>,
    events: VecDeque<Event>,
    closed: bool,
}

impl ConnectionMachine {
    /// A connection accepted at `now`, before the handshake.
    /// `client_id` identifies it to the publish webhook.
    pub fn new(config: MachineConfig, peer: SocketAddr, client_id: u64, now: Instant) -> Self {
        Self {
            chunks: ChunkReassembler::new(config.max_message_size),
            config,
            peer,
            client_id,
            handshake: Some(Handshake::new(PeerType::Server)),
            session: None,
            normalized: Vec::new(),
            ends: Vec::new(),
            next: 0,
            start: 0,
            role: Role::Idle,
            started: now,
            last_media: now,
            out: Vec::new(),
            events: VecDeque::new(),
            closed: false,
        }
    }

    /// Bytes to send to the client; call [`Self::sent`] once written.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn sent(&mut self) {
        self.out.clear();
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn in_handshake(&self) -> bool {
        self.handshake.is_some()
    }

    pub fn is_publishing(&self) -> bool {
        matches!(self.role, Role::Publishing)
    }

    pub fn is_playing(&self) -> bool {
        matches!(self.role, Role::Playing { .. })
    }

    /// False while a decision is pending (or the connection is closed): the
    /// driver should not read from the client then.
    pub fn wants_input(&self) -> bool {
        !self.closed
            && !matches!(
                self.role,
                Role::PublishRequested(_) | Role::PlayRequested { .. }
            )
    }

    /// When [`Self::handle_timeout`] has something to check: the
    /// handshake deadline, or the idle deadline of a publisher.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            None
        } else if self.handshake.is_some() {
            Some(self.started + self.config.handshake_timeout)
        } else if self.is_publishing() {
            Some(self.last_media + self.config.idle_timeout)
        } else {
            None
        }
    }

    /// Closes the connection if a deadline of [`Self::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if self.handshake.is_some() {
            if now.duration_since(self.started) >= self.config.handshake_timeout {
                let e = ConnectionError::HandshakeTimeout(self.config.handshake_timeout);
                self.close(Close::Handshake(e));
            }
        } else if self.is_publishing()
            && now.duration_since(self.last_media) >= self.config.idle_timeout
        {
            self.close(Close::Error(ConnectionError::Idle(
                self.config.idle_timeout,
            )));
        }
    }

    /// Bytes the client sent.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if self.closed {
            return;
        }
        let handled = match self.handshake.as_mut() {
            Some(hs) => {
                Self::handshake_input(hs, bytes).and_then(|step| self.after_handshake(now, step))
            }
            None => self.feed(now, bytes),
        };
        if let Err(close) = handled {
            self.close(close);
        }
    }

    /// The client closed its side.
    pub fn peer_closed(&mut self) {
        if self.handshake.is_some() {
            self.fail(ConnectionError::Handshake(
                "peer closed the connection".into(),
            ));
        } else {
            self.close(Close::Done);
        }
    }

    /// Ends the connection for a reason found outside (i/o, fencing).
    pub fn fail(&mut self, error: ConnectionError) {
        if self.handshake.is_some() {
            self.close(Close::Handshake(error));
        } else {
            self.close(Close::Error(error));
        }
    }

    /// Ends the connection (idempotent; the first reason counts).
    pub fn close(&mut self, close: Close) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(Event::Closed(close));
        }
    }

    fn handshake_input(hs: &mut Handshake, bytes: &[u8]) -> Result<HandshakeProcessResult, Close> {
        catch_unwind(AssertUnwindSafe(|| hs.process_bytes(bytes)))
            .map_err(|_| Close::Handshake(ConnectionError::Panicked))?
            .map_err(|e| Close::Handshake(ConnectionError::Handshake(e.to_string())))
    }

    fn after_handshake(&mut self, now: Instant, step: HandshakeProcessResult) -> Result<(), Close> {
        match step {
            HandshakeProcessResult::InProgress { response_bytes } => {
                self.out.extend_from_slice(&response_bytes);
                Ok(())
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                self.out.extend_from_slice(&response_bytes);
                self.handshake = None;
                self.start_session(now).map_err(Close::Setup)?;
                if remaining_bytes.is_empty() {
                    Ok(())
                } else {
                    self.feed(now, &remaining_bytes)
                }
            }
        }
    }

    /// Creates the session and tells it the chunk size the reassembler
    /// re-emits messages with.
    fn start_session(&mut self, now: Instant) -> Result<(), ConnectionError> {
        let (session, initial) = catch_unwind(|| ServerSession::new(ServerSessionConfig::new()))
            .map_err(|_| ConnectionError::Panicked)?
            .map_err(|e| ConnectionError::Session(e.to_string()))?;
        self.session = Some(session);
        self.handle_results(now, initial)?;
        let preamble = ChunkReassembler::session_preamble();
        let results = self.session_call(|s| s.handle_input(&preamble))?;
        self.handle_results(now, results)
    }

    fn feed(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Close> {
        if self.next == self.ends.len() {
            self.normalized.clear();
            self.ends.clear();
            self.next = 0;
            self.start = 0;
        }
        self.chunks
            .push(bytes, &mut self.normalized)
            .map_err(|e| Close::Error(e.into()))?;
        self.ends.extend_from_slice(self.chunks.message_ends());
        // Whole messages waiting behind a pending decision, bounded like
        // partial ones in the reassembler (the driver stops reading while a
        // decision is pending, see `wants_input`, so normally only the rest
        // of one read waits here).
        let limit = 2 * max_encoded_len(self.config.max_message_size as usize);
        if self.normalized.len() - self.start > limit {
            return Err(Close::Error(ConnectionError::TooMuchPending(limit)));
        }
        self.pump(now).map_err(Close::Error)
    }

    /// Hands queued messages to the session, one at a time (each answered
    /// before the next is handled), until a decision is pending.
    fn pump(&mut self, now: Instant) -> Result<(), ConnectionError> {
        while self.wants_input() && self.next < self.ends.len() {
            let (start, end) = (self.start, self.ends[self.next]);
            self.next += 1;
            self.start = end;
            // A chunk at a time: the session's buffer grows to what it is fed.
            let mut at = start;
            while at < end {
                let piece_end = end.min(at.saturating_add(SESSION_CHUNK_SIZE));
                let Some(session) = self.session.as_mut() else {
                    return Ok(());
                };
                let piece = &self.normalized[at..piece_end];
                let results = guarded(|| session.handle_input(piece))?;
                at = piece_end;
                self.handle_results(now, results)?;
            }
        }
        if self.next == self.ends.len() && self.normalized.capacity() > NORMALIZED_KEPT {
            // Drained after a big message (a keyframe): free it rather than
            // hold it until the next read. The next read's allocation reuses
            // what a connection on the same event loop just freed, so the
            // memory is per thread instead of per publisher.
            self.normalized = Vec::new();
            self.ends.clear();
            self.next = 0;
            self.start = 0;
        }
        Ok(())
    }

    /// Calls into the session, guarding against panics.
    fn session_call<T>(
        &mut self,
        call: impl FnOnce(&mut ServerSession) -> Result<T, ServerSessionError>,
    ) -> Result<T, ConnectionError> {
        let Some(session) = self.session.as_mut() else {
            return Err(ConnectionError::Session("no session yet".into()));
        };
        guarded(|| call(session))
    }

    fn handle_results(
        &mut self,
        now: Instant,
        results: Vec<ServerSessionResult>,
    ) -> Result<(), ConnectionError> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    self.out.extend_from_slice(&packet.bytes)
                }
                ServerSessionResult::RaisedEvent(event) => self.on_event(now, event)?,
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn on_event(&mut self, now: Instant, event: ServerSessionEvent) -> Result<(), ConnectionError> {
        let peer = self.peer;
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name.trim_end_matches('/') == self.config.app {
                    let results = self.session_call(|s| s.accept_request(request_id))?;
                    self.handle_results(now, results)
                } else {
                    tracing::warn!(%peer, app = %app_name, "connect rejected: unknown application");
                    self.refuse_publish(now, request_id, PublishRejection::UnknownApp)
                }
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => self.on_publish(now, request_id, &stream_key),
            ServerSessionEvent::PublishStreamFinished { .. } => {
                if self.is_publishing() {
                    self.role = Role::Idle;
                    self.events.push_back(Event::Unpublished);
                }
                Ok(())
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                if self.is_publishing() {
                    self.events.push_back(Event::Metadata(metadata));
                }
                Ok(())
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                if self.is_publishing() {
                    self.last_media = now;
                    self.events.push_back(Event::Video {
                        timestamp: timestamp.value,
                        data,
                    });
                }
                Ok(())
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                if self.is_publishing() {
                    self.last_media = now;
                    self.events.push_back(Event::Audio {
                        timestamp: timestamp.value,
                        data,
                    });
                }
                Ok(())
            }
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                stream_key,
                stream_id,
                ..
            } => self.on_play(now, request_id, stream_id, &stream_key),
            ServerSessionEvent::PlayStreamFinished { .. } => {
                if self.is_playing() {
                    self.role = Role::Idle;
                    self.events.push_back(Event::PlayFinished);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_publish(
        &mut self,
        now: Instant,
        request_id: u32,
        requested: &str,
    ) -> Result<(), ConnectionError> {
        let peer = self.peer;
        if !matches!(self.role, Role::Idle) {
            tracing::warn!(%peer, "publish rejected: connection is already publishing or playing");
            return self.refuse_publish(now, request_id, PublishRejection::ConnectionBusy);
        }
        // Query arguments (`key?token=…`) are for authentication, not the name.
        let (name, args) = PublishRequest::split_name(requested);
        if let Err(e) = StreamKey::parse(&name) {
            tracing::warn!(%peer, error = %e, "publish rejected");
            return self.refuse_publish(now, request_id, PublishRejection::InvalidName);
        }
        let request = PublishRequest {
            addr: peer,
            client_id: self.client_id,
            app: self.config.app.clone(),
            name,
            tc_url: self.chunks.tc_url().unwrap_or_default().to_string(),
            args,
        };
        self.role = Role::PublishRequested(request_id);
        self.events.push_back(Event::PublishRequested {
            request_id,
            request,
        });
        Ok(())
    }

    /// Sends the refusal; the connection closes once it is out.
    fn refuse_publish(
        &mut self,
        now: Instant,
        request_id: u32,
        why: PublishRejection,
    ) -> Result<(), ConnectionError> {
        self.events.push_back(Event::PublishRejected(why));
        let (code, description) = why.status();
        self.refuse(now, request_id, code, description)
    }

    fn refuse(
        &mut self,
        now: Instant,
        request_id: u32,
        code: &str,
        description: &str,
    ) -> Result<(), ConnectionError> {
        let results = self.session_call(|s| s.reject_request(request_id, code, description))?;
        self.handle_results(now, results)?;
        self.close(Close::Done);
        Ok(())
    }

    /// Runs `step` and resumes handling queued client messages; an error
    /// closes the connection.
    fn answer(
        &mut self,
        now: Instant,
        step: impl FnOnce(&mut Self) -> Result<(), ConnectionError>,
    ) {
        if self.closed {
            return;
        }
        if let Err(e) = step(self).and_then(|()| self.pump(now)) {
            self.close(Close::Error(e));
        }
    }

    /// The publish `request_id` may go ahead: audio and video from now on
    /// come out as [`Event::Video`]/[`Event::Audio`].
    pub fn accept_publish(&mut self, now: Instant, request_id: u32) {
        if !matches!(self.role, Role::PublishRequested(id) if id == request_id) {
            return;
        }
        self.role = Role::Publishing;
        self.last_media = now;
        self.answer(now, |m| {
            let results = m.session_call(|s| s.accept_request(request_id))?;
            m.handle_results(now, results)
        });
    }

    /// Refuses the publish `request_id`; the connection closes.
    pub fn reject_publish(&mut self, now: Instant, request_id: u32, why: PublishRejection) {
        if !matches!(self.role, Role::PublishRequested(id) if id == request_id) {
            return;
        }
        self.role = Role::Idle;
        self.answer(now, |m| m.refuse_publish(now, request_id, why));
    }

    fn on_play(
        &mut self,
        now: Instant,
        request_id: u32,
        stream_id: u32,
        requested: &str,
    ) -> Result<(), ConnectionError> {
        let peer = self.peer;
        if !self.config.allow_play {
            tracing::warn!(%peer, stream = %requested, "play rejected: RTMP play is denied (allowPlay is off)");
            return self.refuse(now, request_id, "NetStream.Play.Failed", "play is denied");
        }
        if !matches!(self.role, Role::Idle) {
            return self.refuse(
                now,
                request_id,
                "NetStream.Play.Failed",
                "connection already in use",
            );
        }
        let name = requested.split('?').next().unwrap_or_default();
        let Ok(key) = StreamKey::parse(name) else {
            return self.refuse_play(now, request_id, requested);
        };
        self.role = Role::PlayRequested {
            request_id,
            stream_id,
        };
        self.events.push_back(Event::PlayRequested {
            request_id,
            key,
            requested: requested.to_string(),
        });
        Ok(())
    }

    fn refuse_play(
        &mut self,
        now: Instant,
        request_id: u32,
        requested: &str,
    ) -> Result<(), ConnectionError> {
        tracing::info!(peer = %self.peer, stream = %requested, "play rejected: no such live stream");
        self.refuse(
            now,
            request_id,
            "NetStream.Play.StreamNotFound",
            "no such live stream",
        )
    }

    /// The stream of play request `request_id` is live: sends its
    /// `headers` (metadata and sequence headers); then feed it with
    /// [`Self::play`].
    pub fn accept_play(&mut self, now: Instant, request_id: u32, headers: &StreamHeaders) {
        let stream_id = match self.role {
            Role::PlayRequested {
                request_id: id,
                stream_id,
            } if id == request_id => stream_id,
            _ => return,
        };
        self.role = Role::Playing {
            stream_id,
            waiting_for_keyframe: true,
        };
        self.answer(now, |m| {
            let results = m.session_call(|s| s.accept_request(request_id))?;
            m.handle_results(now, results)?;
            if let Some(metadata) = &headers.metadata {
                m.send_metadata(stream_id, metadata)?;
            }
            if let Some((ts, data)) = headers.video.clone() {
                let packet = m.session_call(|s| {
                    s.send_video_data(stream_id, data, RtmpTimestamp::new(ts), false)
                })?;
                m.out.extend_from_slice(&packet.bytes);
            }
            if let Some((ts, data)) = headers.audio.clone() {
                let packet = m.session_call(|s| {
                    s.send_audio_data(stream_id, data, RtmpTimestamp::new(ts), false)
                })?;
                m.out.extend_from_slice(&packet.bytes);
            }
            Ok(())
        });
    }

    /// The stream of play request `request_id` is not live; the
    /// connection closes.
    pub fn play_not_found(&mut self, now: Instant, request_id: u32, requested: &str) {
        if !matches!(self.role, Role::PlayRequested { request_id: id, .. } if id == request_id) {
            return;
        }
        self.role = Role::Idle;
        self.answer(now, |m| m.refuse_play(now, request_id, requested));
    }

    fn send_metadata(
        &mut self,
        stream_id: u32,
        metadata: &StreamMetadata,
    ) -> Result<(), ConnectionError> {
        let packet = self.session_call(|s| s.send_metadata(stream_id, metadata))?;
        self.out.extend_from_slice(&packet.bytes);
        Ok(())
    }

    /// A packet of the played stream. Until the first keyframe nothing is
    /// sent (a player cannot decode from the middle of a GOP); the end of
    /// the stream closes the connection.
    pub fn play(&mut self, packet: PlayPacket) {
        if self.closed {
            return;
        }
        let Role::Playing {
            stream_id,
            waiting_for_keyframe,
        } = &mut self.role
        else {
            return;
        };
        let stream_id = *stream_id;
        let sent = match packet {
            PlayPacket::End => {
                self.close(Close::Done);
                return;
            }
            PlayPacket::Metadata(m) => self.send_metadata(stream_id, &m),
            PlayPacket::Video {
                timestamp,
                data,
                keyframe,
            } => {
                if *waiting_for_keyframe && !keyframe {
                    return;
                }
                *waiting_for_keyframe = false;
                self.session_call(|s| {
                    s.send_video_data(stream_id, data, RtmpTimestamp::new(timestamp), !keyframe)
                })
                .map(|packet| self.out.extend_from_slice(&packet.bytes))
            }
            PlayPacket::Audio { timestamp, data } => {
                if *waiting_for_keyframe {
                    return;
                }
                self.session_call(|s| {
                    s.send_audio_data(stream_id, data, RtmpTimestamp::new(timestamp), true)
                })
                .map(|packet| self.out.extend_from_slice(&packet.bytes))
            }
        };
        if let Err(e) = sent {
            self.close(Close::Error(e));
        }
    }

    /// The player fell behind the publisher and packets were skipped:
    /// resume at the next keyframe.
    pub fn play_lagged(&mut self) {
        if let Role::Playing {
            waiting_for_keyframe,
            ..
        } = &mut self.role
        {
            *waiting_for_keyframe = true;
        }
    }
}

/// Calls into `rml_rtmp`, turning a panic into an error.
fn guarded<T>(call: impl FnOnce() -> Result<T, ServerSessionError>) -> Result<T, ConnectionError> {
    catch_unwind(AssertUnwindSafe(call))
        .map_err(|_| ConnectionError::Panicked)?
        .map_err(|e| ConnectionError::Session(e.to_string()))
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
