//! One RTMP connection: handshake, then an `rml_rtmp` server session whose
//! events decide whether the client may connect, publish or play.
//!
//! `rml_rtmp` can panic on some malformed input; every call into it is
//! wrapped in `catch_unwind` so such a client loses only its own connection.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};

use super::chunks::{ChunkError, ChunkReassembler};
use super::publication::Publication;
use super::RtmpContext;
use crate::auth::{Decision, PublishRequest};
use crate::hls::SegmenterConfig;
use crate::live::PlayPacket;
use crate::live::{ClaimError, LiveGuard};
use crate::ownership::{Refusal, StreamClaim, StreamOwnership};
use crate::store::output::load_history;
use crate::store::{HlsOutput, Layout, StorageWriters, StreamHistory};
use crate::stream_key::StreamKey;

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("protocol error: {0}")]
    Session(String),
    #[error("malformed input made the RTMP library fail")]
    Panicked,
    #[error("refused input: {0}")]
    Chunk(#[from] ChunkError),
    #[error("no media for {0:?} (idleTimeout)")]
    Idle(std::time::Duration),
    #[error("this replica can no longer prove it owns the stream (fenced)")]
    Fenced,
}

enum Role {
    Idle,
    Publishing(Box<Publication>),
    Playing(Player),
}

struct Player {
    stream_id: u32,
    key: StreamKey,
    packets: broadcast::Receiver<PlayPacket>,
    waiting_for_keyframe: bool,
}

struct Connection {
    peer: SocketAddr,
    ctx: Arc<RtmpContext>,
    session: ServerSession,
    chunks: ChunkReassembler,
    /// Whole messages from `chunks`, re-encoded for `session`.
    normalized: Vec<u8>,
    role: Role,
    /// When the publisher last sent audio or video.
    last_media: tokio::time::Instant,
    /// Identifies the connection to the publish webhook.
    client_id: u64,
    /// A publish waiting for the webhook's answer.
    pending_auth: Option<PendingAuth>,
    /// The request behind the current publication (for `publish_done`).
    publish_request: Option<PublishRequest>,
    out: Vec<u8>,
    /// Close once pending output is written (after a rejection).
    closing: bool,
    /// A publish was just accepted: switch the socket to coalesced reads.
    coalesce_reads: bool,
}

/// How often a publisher connection checks for idleness and drains reads
/// below the low-water mark.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Once a publisher streams, wake up only when this much media is buffered
/// (or the peer closes): a 3 Mbit/s stream then costs ~12 reads per second
/// instead of one per frame, which is most of the CPU an idle-ish ingest
/// server spends. Commands before the publish are answered byte by byte.
const PUBLISH_READ_LOW_WATER: libc::c_int = 32 * 1024;

fn set_read_low_water(socket: &TcpStream, bytes: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `socket`, which outlives the call;
    // SO_RCVLOWAT takes a c_int, passed by pointer with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<RtmpContext>,
    shutdown: watch::Receiver<bool>,
    slot: super::ConnectionSlot,
) {
    let _ = socket.set_nodelay(true);
    tracing::debug!(%peer, "rtmp connection accepted");
    run_connection(socket, peer, ctx, shutdown).await;
    drop(slot);
}

async fn run_connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<RtmpContext>,
    shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let limits = ctx.config.rtmp.limits.clone();
    let handshake_timeout = limits.handshake_timeout.get();
    let remaining =
        match tokio::time::timeout(handshake_timeout, handshake(&mut socket, &mut buf)).await {
            Ok(Ok(rest)) => rest,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "rtmp connection closed during handshake");
                return;
            }
            Err(_) => {
                let e = ConnectionError::HandshakeTimeout(handshake_timeout);
                tracing::info!(%peer, error = %e, "rtmp connection closed during handshake");
                return;
            }
        };
    let session = match catch_unwind(|| ServerSession::new(ServerSessionConfig::new())) {
        Ok(Ok((session, initial))) => {
            let mut conn = Connection {
                peer,
                ctx,
                session,
                chunks: ChunkReassembler::new(limits.max_message_size),
                normalized: Vec::new(),
                role: Role::Idle,
                last_media: tokio::time::Instant::now(),
                client_id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
                pending_auth: None,
                publish_request: None,
                out: Vec::new(),
                closing: false,
                coalesce_reads: false,
            };
            let preamble = ChunkReassembler::session_preamble();
            let ready = conn
                .handle_results(initial)
                .and_then(|()| conn.session_call(|s| s.handle_input(&preamble)))
                .and_then(|results| conn.handle_results(results));
            if let Err(e) = ready {
                tracing::info!(%peer, error = %e, "rtmp session setup failed");
                return;
            }
            conn
        }
        _ => {
            tracing::error!(%peer, "rtmp session setup failed");
            return;
        }
    };
    let mut conn = session;
    let result = conn
        .serve(&mut socket, &mut buf, &remaining, shutdown)
        .await;
    conn.close();
    match result {
        Ok(()) => tracing::debug!(%peer, "rtmp connection closed"),
        Err(e) => tracing::info!(%peer, error = %e, "rtmp connection closed"),
    }
}

async fn handshake(socket: &mut TcpStream, buf: &mut [u8]) -> Result<Vec<u8>, ConnectionError> {
    let mut hs = Handshake::new(PeerType::Server);
    loop {
        let n = socket.read(buf).await?;
        if n == 0 {
            return Err(ConnectionError::Handshake(
                "peer closed the connection".into(),
            ));
        }
        let step = catch_unwind(AssertUnwindSafe(|| hs.process_bytes(&buf[..n])))
            .map_err(|_| ConnectionError::Panicked)?
            .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
        match step {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket.write_all(&response_bytes).await?;
                return Ok(remaining_bytes);
            }
        }
    }
}

/// Where a publish request ended up once authorization and the ownership
/// claim are through.
enum PublishOutcome {
    Unauthorized(String),
    Claimed {
        key: StreamKey,
        claim: StreamClaim,
        /// What the volume holds for the key, read after the claim (shared
        /// ownership); `None` with in-process ownership, where this
        /// server's own table is the history.
        from_volume: Option<Option<StreamHistory>>,
    },
    Refused(StreamKey, Refusal),
}

type PendingAuth = std::pin::Pin<
    Box<dyn std::future::Future<Output = (u32, PublishRequest, PublishOutcome)> + Send>,
>;

/// Claims `key` and, with shared ownership, reads its history from the
/// volume (off the event loop).
async fn claim_stream(
    ownership: StreamOwnership,
    key: StreamKey,
    layout: Layout,
    hls: Arc<oxcast_crds::HlsSettings>,
    writers: Arc<StorageWriters>,
) -> PublishOutcome {
    // A republish continues from the previous publication's final history:
    // wait (without blocking the loop) until its storage writer is done.
    if !writers.wait_drained(&key, REPUBLISH_DRAIN_WAIT).await {
        return PublishOutcome::Refused(
            key,
            Refusal::Unavailable(
                "the previous publication is still writing to storage (slow volume)".into(),
            ),
        );
    }
    let claim = match ownership.claim(&key).await {
        Ok(c) => c,
        Err(e) => return PublishOutcome::Refused(key, e),
    };
    let from_volume = if ownership.is_shared() {
        let k = key.clone();
        let read =
            tokio::task::spawn_blocking(move || load_history(&k, &layout, &hls).map(|(h, _)| h))
                .await;
        Some(read.unwrap_or(None))
    } else {
        None
    };
    PublishOutcome::Claimed {
        key,
        claim,
        from_volume,
    }
}

/// How long a republish waits for the previous publication's last writes.
const REPUBLISH_DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

static NEXT_CLIENT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Waits for a pending publish authorization; never resolves without one.
async fn next_auth_decision(
    pending: &mut Option<PendingAuth>,
) -> (u32, PublishRequest, PublishOutcome) {
    match pending {
        Some(fut) => {
            let out = fut.await;
            *pending = None;
            out
        }
        None => std::future::pending().await,
    }
}

/// Waits for the next packet for a player; never resolves for other roles.
async fn next_play_packet(role: &mut Role) -> Result<PlayPacket, broadcast::error::RecvError> {
    match role {
        Role::Playing(p) => p.packets.recv().await,
        _ => std::future::pending().await,
    }
}

impl Connection {
    async fn serve(
        &mut self,
        socket: &mut TcpStream,
        buf: &mut [u8],
        remaining: &[u8],
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        if !remaining.is_empty() {
            self.feed(remaining)?;
        }
        self.flush(socket).await?;
        let idle_timeout = self.ctx.config.rtmp.limits.idle_timeout.get();
        let mut tick = tokio::time::interval(IDLE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.closing {
            tokio::select! {
                read = socket.read(buf) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.feed(&buf[..n])?;
                }
                packet = next_play_packet(&mut self.role) => self.play(packet)?,
                (request_id, request, decision) = next_auth_decision(&mut self.pending_auth) => {
                    self.finish_publish(request_id, request, decision)?;
                }
                _ = tick.tick(), if matches!(self.role, Role::Publishing(_)) => {
                    // Reads are coalesced (SO_RCVLOWAT): pick up whatever a
                    // slow publisher has sent since, then judge idleness.
                    match socket.try_read(buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => self.feed(&buf[..n])?,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                    if self.last_media.elapsed() >= idle_timeout {
                        return Err(ConnectionError::Idle(idle_timeout));
                    }
                    if matches!(&self.role, Role::Publishing(p) if !p.owned()) {
                        return Err(ConnectionError::Fenced);
                    }
                }
                _ = shutdown.changed() => return Ok(()),
            }
            self.flush(socket).await?;
            if std::mem::take(&mut self.coalesce_reads) {
                if let Err(e) = set_read_low_water(socket, PUBLISH_READ_LOW_WATER) {
                    tracing::debug!(peer = %self.peer, error = %e, "cannot coalesce reads");
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self, socket: &mut TcpStream) -> Result<(), ConnectionError> {
        if !self.out.is_empty() {
            socket.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.ctx
            .metrics
            .bytes_received
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.chunks.push(bytes, &mut self.normalized)?;
        if self.normalized.is_empty() {
            return Ok(());
        }
        let normalized = std::mem::take(&mut self.normalized);
        let ends = self.chunks.message_ends().to_vec();
        let mut start = 0;
        let mut outcome = Ok(());
        // One message at a time, answering each before the next is handled.
        for end in ends {
            outcome = self
                .session_call(|s| s.handle_input(&normalized[start..end]))
                .and_then(|results| self.handle_results(results));
            if outcome.is_err() {
                break;
            }
            start = end;
        }
        self.normalized = normalized;
        self.normalized.clear();
        outcome
    }

    fn handle_results(&mut self, results: Vec<ServerSessionResult>) -> Result<(), ConnectionError> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    self.out.extend_from_slice(&packet.bytes)
                }
                ServerSessionResult::RaisedEvent(event) => self.on_event(event)?,
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    /// Calls into the session, guarding against panics, and queues its output.
    fn session_call<T>(
        &mut self,
        call: impl FnOnce(&mut ServerSession) -> Result<T, rml_rtmp::sessions::ServerSessionError>,
    ) -> Result<T, ConnectionError> {
        catch_unwind(AssertUnwindSafe(|| call(&mut self.session)))
            .map_err(|_| ConnectionError::Panicked)?
            .map_err(|e| ConnectionError::Session(e.to_string()))
    }

    fn reject(
        &mut self,
        request_id: u32,
        code: &str,
        description: &str,
    ) -> Result<(), ConnectionError> {
        let results = self.session_call(|s| s.reject_request(request_id, code, description))?;
        self.closing = true;
        self.handle_results(results)
    }

    fn accept(&mut self, request_id: u32) -> Result<(), ConnectionError> {
        let results = self.session_call(|s| s.accept_request(request_id))?;
        self.handle_results(results)
    }

    fn on_event(&mut self, event: ServerSessionEvent) -> Result<(), ConnectionError> {
        let peer = self.peer;
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name.trim_end_matches('/') == self.ctx.config.rtmp.app {
                    self.accept(request_id)
                } else {
                    tracing::warn!(%peer, app = %app_name, "connect rejected: unknown application");
                    self.ctx.metrics.publish_rejections.inc("unknown_app");
                    self.reject(
                        request_id,
                        "NetConnection.Connect.Rejected",
                        "unknown application",
                    )
                }
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => self.on_publish(request_id, &stream_key),
            ServerSessionEvent::PublishStreamFinished { .. } => {
                self.close();
                Ok(())
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                if let Role::Publishing(p) = &mut self.role {
                    p.metadata(metadata);
                }
                Ok(())
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                if let Role::Publishing(p) = &mut self.role {
                    self.last_media = tokio::time::Instant::now();
                    p.video(timestamp.value, data);
                }
                Ok(())
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                if let Role::Publishing(p) = &mut self.role {
                    self.last_media = tokio::time::Instant::now();
                    p.audio(timestamp.value, data);
                }
                Ok(())
            }
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                stream_key,
                stream_id,
                ..
            } => self.on_play(request_id, stream_id, &stream_key),
            ServerSessionEvent::PlayStreamFinished { .. } => {
                self.role = Role::Idle;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_publish(&mut self, request_id: u32, requested: &str) -> Result<(), ConnectionError> {
        let peer = self.peer;
        if !matches!(self.role, Role::Idle) || self.pending_auth.is_some() {
            tracing::warn!(%peer, "publish rejected: connection is already publishing or playing");
            self.ctx.metrics.publish_rejections.inc("connection_busy");
            return self.reject(
                request_id,
                "NetStream.Publish.BadName",
                "connection already in use",
            );
        }
        // Query arguments (`key?token=…`) are for authentication, not the name.
        let (name, args) = PublishRequest::split_name(requested);
        if let Err(e) = StreamKey::parse(&name) {
            tracing::warn!(%peer, error = %e, "publish rejected");
            self.ctx.metrics.publish_rejections.inc("invalid_name");
            return self.reject(
                request_id,
                "NetStream.Publish.BadName",
                "invalid stream name",
            );
        }
        let request = PublishRequest {
            addr: peer,
            client_id: self.client_id,
            app: self.ctx.config.rtmp.app.clone(),
            name,
            tc_url: self.chunks.tc_url().unwrap_or_default().to_string(),
            args,
        };
        let ownership = self.ctx.ownership.clone();
        let layout = self.ctx.layout.clone();
        let hls = self.ctx.hls.clone();
        let writers = self.ctx.writers.clone();
        match self.ctx.auth.decide_now(&request) {
            Some(Decision::Reject(reason)) => {
                self.finish_publish(request_id, request, PublishOutcome::Unauthorized(reason))
            }
            Some(Decision::Accept(key)) if writers.is_draining(&key) => {
                self.pending_auth = Some(Box::pin(async move {
                    let outcome = claim_stream(ownership, key, layout, hls, writers).await;
                    (request_id, request, outcome)
                }));
                Ok(())
            }
            Some(Decision::Accept(key)) => match ownership.try_claim_now(&key) {
                Some(Ok(claim)) => self.finish_publish(
                    request_id,
                    request,
                    PublishOutcome::Claimed {
                        key,
                        claim,
                        from_volume: None,
                    },
                ),
                Some(Err(e)) => {
                    self.finish_publish(request_id, request, PublishOutcome::Refused(key, e))
                }
                None => {
                    self.pending_auth = Some(Box::pin(async move {
                        let outcome = claim_stream(ownership, key, layout, hls, writers).await;
                        (request_id, request, outcome)
                    }));
                    Ok(())
                }
            },
            None => {
                let auth = self.ctx.auth.clone();
                self.pending_auth = Some(Box::pin(async move {
                    let outcome = match auth.authorize(&request).await {
                        Decision::Reject(reason) => PublishOutcome::Unauthorized(reason),
                        Decision::Accept(key) => {
                            claim_stream(ownership, key, layout, hls, writers).await
                        }
                    };
                    (request_id, request, outcome)
                }));
                Ok(())
            }
        }
    }

    /// Acts on the authorization: claims the (possibly renamed) stream and
    /// starts its HLS output, or refuses the publish.
    fn finish_publish(
        &mut self,
        request_id: u32,
        request: PublishRequest,
        outcome: PublishOutcome,
    ) -> Result<(), ConnectionError> {
        let peer = self.peer;
        let max = self.ctx.config.rtmp.limits.max_publishers as usize;
        let (key, claim, from_volume) = match outcome {
            PublishOutcome::Claimed {
                key,
                claim,
                from_volume,
            } => (key, Ok(claim), from_volume),
            PublishOutcome::Unauthorized(reason) => {
                tracing::warn!(%peer, %reason, "publish rejected: not authorized");
                self.ctx.metrics.publish_rejections.inc("unauthorized");
                return self.reject(request_id, "NetStream.Publish.BadName", "not authorized");
            }
            PublishOutcome::Refused(key, Refusal::Owned(_)) => {
                (key.clone(), Err(ClaimError::AlreadyLive(key)), None)
            }
            PublishOutcome::Refused(key, Refusal::Unavailable(why)) => (
                key.clone(),
                Err(ClaimError::OwnershipUnavailable(key, why)),
                None,
            ),
        };
        let claimed = claim.and_then(|claim| {
            self.ctx
                .streams
                .claim(&key, max)
                .map(|(live, previous)| (claim, live, previous))
        });
        let (claim, live, previous) = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(%peer, stream = %key, error = %e, "publish rejected");
                let (reason, text) = match e {
                    ClaimError::AlreadyLive(_) => {
                        ("already_live", "stream is already being published")
                    }
                    ClaimError::TooManyPublishers(_) => ("max_publishers", "too many publishers"),
                    ClaimError::OwnershipUnavailable(..) => {
                        ("ownership_unavailable", "stream ownership unavailable")
                    }
                };
                self.ctx.metrics.publish_rejections.inc(reason);
                return self.reject(request_id, "NetStream.Publish.BadName", text);
            }
        };
        let hls = self.ctx.hls.clone();
        let config = SegmenterConfig::from_settings(&hls);
        // With shared ownership the volume is the truth (another replica may
        // have published the key since this one last did).
        let previous = match from_volume {
            Some(on_volume) => on_volume,
            None => previous,
        };
        let slot = LiveGuard::new(self.ctx.streams.clone(), live, self.ctx.metrics.clone());
        let output = HlsOutput::start(
            key.clone(),
            self.ctx.layout.clone(),
            hls,
            self.ctx.cleanup.clone(),
            self.ctx.metrics.clone(),
            previous,
            claim.fence(),
        );
        let output = match self.ctx.writers.start(key.clone(), output) {
            Ok(writer) => writer,
            Err(e) => {
                tracing::error!(%peer, stream = %key, error = %e, "publish rejected");
                self.ctx.metrics.publish_rejections.inc("storage_writer");
                return self.reject(
                    request_id,
                    "NetStream.Publish.BadName",
                    "storage unavailable",
                );
            }
        };
        self.role = Role::Publishing(Box::new(Publication::new(slot, claim, output, config)));
        if key.as_str() == request.name {
            tracing::info!(%peer, stream = %key, "publish started");
        } else {
            // The requested name may be a secret key: never log it.
            tracing::info!(%peer, stream = %key, "publish started under its public name");
        }
        self.publish_request = Some(request);
        self.coalesce_reads = true;
        self.last_media = tokio::time::Instant::now();
        self.accept(request_id)
    }

    fn on_play(
        &mut self,
        request_id: u32,
        stream_id: u32,
        requested: &str,
    ) -> Result<(), ConnectionError> {
        let peer = self.peer;
        if !self.ctx.config.rtmp.allow_play {
            tracing::warn!(%peer, stream = %requested, "play rejected: RTMP play is denied (allowPlay is off)");
            return self.reject(request_id, "NetStream.Play.Failed", "play is denied");
        }
        if !matches!(self.role, Role::Idle) {
            return self.reject(
                request_id,
                "NetStream.Play.Failed",
                "connection already in use",
            );
        }
        let name = requested.split('?').next().unwrap_or_default();
        let live = StreamKey::parse(name)
            .ok()
            .and_then(|k| self.ctx.streams.live(&k));
        let Some(live) = live else {
            tracing::info!(%peer, stream = %requested, "play rejected: no such live stream");
            return self.reject(
                request_id,
                "NetStream.Play.StreamNotFound",
                "no such live stream",
            );
        };
        self.accept(request_id)?;
        let (headers, packets) = live.subscribe();
        if let Some(metadata) = &headers.metadata {
            self.send_metadata(stream_id, metadata)?;
        }
        for (ts, data) in [headers.video, headers.audio].into_iter().flatten() {
            let is_video = data.first().is_some_and(|b| b & 0x0f == 7);
            let packet = self.session_call(|s| {
                if is_video {
                    s.send_video_data(stream_id, data, RtmpTimestamp::new(ts), false)
                } else {
                    s.send_audio_data(stream_id, data, RtmpTimestamp::new(ts), false)
                }
            })?;
            self.out.extend_from_slice(&packet.bytes);
        }
        tracing::info!(%peer, stream = %live.key, "play started");
        self.role = Role::Playing(Player {
            stream_id,
            key: live.key.clone(),
            packets,
            waiting_for_keyframe: true,
        });
        Ok(())
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

    fn play(
        &mut self,
        packet: Result<PlayPacket, broadcast::error::RecvError>,
    ) -> Result<(), ConnectionError> {
        let Role::Playing(player) = &mut self.role else {
            return Ok(());
        };
        let stream_id = player.stream_id;
        let packet = match packet {
            Ok(p) => p,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(peer = %self.peer, stream = %player.key, missed, "player too slow; skipping to the next keyframe");
                player.waiting_for_keyframe = true;
                return Ok(());
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.closing = true;
                return Ok(());
            }
        };
        let bytes = match packet {
            PlayPacket::End => {
                self.closing = true;
                return Ok(());
            }
            PlayPacket::Metadata(m) => return self.send_metadata(stream_id, &m),
            PlayPacket::Video {
                timestamp,
                data,
                keyframe,
            } => {
                if player.waiting_for_keyframe && !keyframe {
                    return Ok(());
                }
                player.waiting_for_keyframe = false;
                self.session_call(|s| {
                    s.send_video_data(stream_id, data, RtmpTimestamp::new(timestamp), !keyframe)
                })?
            }
            PlayPacket::Audio { timestamp, data } => {
                if player.waiting_for_keyframe {
                    return Ok(());
                }
                self.session_call(|s| {
                    s.send_audio_data(stream_id, data, RtmpTimestamp::new(timestamp), true)
                })?
            }
        };
        self.out.extend_from_slice(&bytes.bytes);
        Ok(())
    }

    /// Ends whatever the connection was doing; a publication is completed.
    fn close(&mut self) {
        if let Role::Publishing(p) = std::mem::replace(&mut self.role, Role::Idle) {
            p.finish();
        }
        if let Some(request) = self.publish_request.take() {
            self.ctx.auth.publish_done(request);
        }
    }
}
