//! The async driver of one RTMP connection: the socket, the timers, the
//! publish authorization and stream claim, the publication and the player
//! feed around the sans-IO [`ConnectionMachine`] (see [`super::machine`]),
//! which holds the protocol and every decision that needs no outside world.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};

use super::machine::{
    Close, ConnectionError, ConnectionMachine, Event, MachineConfig, PublishRejection,
};
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

/// How often a publisher connection checks for idleness and drains reads
/// below the low-water mark.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Once a publisher streams, wake up only when this much media is buffered
/// (or the peer closes): a 3 Mbit/s stream then costs ~12 reads per second
/// instead of one per frame, which is most of the CPU an idle-ish ingest
/// server spends. Commands before the publish are answered byte by byte.
const PUBLISH_READ_LOW_WATER: libc::c_int = 32 * 1024;

/// The most one read takes from a socket: twice the publisher's low-water
/// mark, so a coalesced read usually empties the socket.
const READ_BUFFER_SIZE: usize = 64 * 1024;

thread_local! {
    /// The read buffer of every connection on this thread's event loop. A
    /// read is handed to the machine, which copies what it keeps, before the
    /// connection awaits again, so one buffer per thread serves them all
    /// (64 KiB per connection otherwise: a third of a publisher's memory).
    static READ_BUFFER: RefCell<Box<[u8]>> =
        RefCell::new(vec![0u8; READ_BUFFER_SIZE].into_boxed_slice());
}

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

/// A connection playing a live stream: its packet feed.
struct Player {
    key: StreamKey,
    packets: broadcast::Receiver<PlayPacket>,
}

/// Waits for the next packet for a player; never resolves without one.
async fn next_play_packet(
    player: &mut Option<Player>,
) -> Result<PlayPacket, broadcast::error::RecvError> {
    match player {
        Some(p) => p.packets.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; never resolves without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads what the socket holds, even below the low-water mark. (Tokio's
/// `try_read` answers from its cached readiness, which epoll only sets once
/// `SO_RCVLOWAT` bytes are queued, so it would leave a slow publisher's
/// last bytes, such as its `deleteStream`, unread.)
fn read_below_low_water(socket: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `socket`, which outlives the call;
    // `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
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
    let machine = ConnectionMachine::new(
        MachineConfig::from_settings(&ctx.config.rtmp),
        peer,
        NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
        Instant::now(),
    );
    let mut conn = Connection {
        peer,
        ctx,
        machine,
        publication: None,
        player: None,
        pending_auth: None,
        publish_request: None,
        coalesce_reads: false,
        closed: None,
    };
    conn.serve(socket, shutdown).await;
    conn.end_publication();
    match conn.closed.unwrap_or(Close::Done) {
        Close::Done => tracing::debug!(%peer, "rtmp connection closed"),
        Close::Handshake(e) => {
            tracing::info!(%peer, error = %e, "rtmp connection closed during handshake")
        }
        Close::Setup(e) => tracing::info!(%peer, error = %e, "rtmp session setup failed"),
        Close::Error(e) => tracing::info!(%peer, error = %e, "rtmp connection closed"),
    }
    drop(slot);
}

struct Connection {
    peer: SocketAddr,
    ctx: Arc<RtmpContext>,
    machine: ConnectionMachine,
    publication: Option<Box<Publication>>,
    player: Option<Player>,
    /// A publish waiting for the webhook's answer or the ownership claim.
    pending_auth: Option<PendingAuth>,
    /// The request behind the current publication (for `publish_done`).
    publish_request: Option<PublishRequest>,
    /// A publish was just accepted: switch the socket to coalesced reads.
    coalesce_reads: bool,
    /// Why the machine closed the connection.
    closed: Option<Close>,
}

impl Connection {
    async fn serve(&mut self, mut socket: TcpStream, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(IDLE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.handle_events();
            if !self.machine.output().is_empty() {
                match socket.write_all(self.machine.output()).await {
                    Ok(()) => self.machine.sent(),
                    Err(e) => {
                        self.machine.fail(e.into());
                        self.handle_events();
                    }
                }
            }
            if self.machine.is_closed() {
                return;
            }
            if std::mem::take(&mut self.coalesce_reads) {
                if let Err(e) = set_read_low_water(&socket, PUBLISH_READ_LOW_WATER) {
                    tracing::debug!(peer = %self.peer, error = %e, "cannot coalesce reads");
                }
            }
            // The publisher's idle deadline is judged on the tick, after
            // picking up what coalesced reads left in the socket.
            let deadline = self
                .machine
                .poll_timeout()
                .filter(|_| !self.machine.is_publishing());
            tokio::select! {
                ready = socket.readable(), if self.machine.wants_input() => match ready {
                    Ok(()) => self.read_ready(&socket),
                    Err(e) => self.machine.fail(e.into()),
                },
                packet = next_play_packet(&mut self.player) => match packet {
                    Ok(packet) => self.machine.play(packet),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        if let Some(player) = &self.player {
                            tracing::warn!(peer = %self.peer, stream = %player.key, missed, "player too slow; skipping to the next keyframe");
                        }
                        self.machine.play_lagged();
                    }
                    Err(broadcast::error::RecvError::Closed) => self.machine.close(Close::Done),
                },
                (request_id, request, outcome) = next_auth_decision(&mut self.pending_auth) => {
                    self.finish_publish(request_id, request, outcome);
                }
                () = sleep_until(deadline) => self.machine.handle_timeout(Instant::now()),
                _ = tick.tick(), if self.publication.is_some() => {
                    // Reads are coalesced (SO_RCVLOWAT): pick up whatever a
                    // slow publisher has sent since, then judge idleness.
                    READ_BUFFER.with_borrow_mut(|buf| {
                        let read = read_below_low_water(&socket, buf);
                        self.take_read(read, buf);
                    });
                    self.machine.handle_timeout(Instant::now());
                    if self.publication.as_ref().is_some_and(|p| !p.owned()) {
                        self.machine.fail(ConnectionError::Fenced);
                    }
                }
                _ = shutdown.changed() => self.machine.close(Close::Done),
            }
        }
    }

    /// The socket reported readable: reads what it holds into the thread's
    /// buffer and hands it to the machine.
    fn read_ready(&mut self, socket: &TcpStream) {
        READ_BUFFER.with_borrow_mut(|buf| {
            let read = socket.try_read(buf);
            self.take_read(read, buf);
        });
    }

    fn take_read(&mut self, read: std::io::Result<usize>, buf: &[u8]) {
        match read {
            Ok(0) => self.machine.peer_closed(),
            Ok(n) => self.input(&buf[..n]),
            // The readiness was stale; the next `readable` waits again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => self.machine.fail(e.into()),
        }
    }

    fn input(&mut self, bytes: &[u8]) {
        self.ctx
            .metrics
            .bytes_received
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.machine.handle_input(Instant::now(), bytes);
    }

    /// Acts on everything the machine asked for since last time.
    fn handle_events(&mut self) {
        while let Some(event) = self.machine.poll_event() {
            match event {
                Event::PublishRequested {
                    request_id,
                    request,
                } => self.on_publish(request_id, request),
                Event::PublishRejected(why) => {
                    self.ctx.metrics.publish_rejections.inc(why.label());
                }
                Event::Unpublished => self.end_publication(),
                Event::Metadata(metadata) => {
                    if let Some(p) = &mut self.publication {
                        p.metadata(metadata);
                    }
                }
                Event::Video { timestamp, data } => {
                    if let Some(p) = &mut self.publication {
                        p.video(timestamp, data);
                    }
                }
                Event::Audio { timestamp, data } => {
                    if let Some(p) = &mut self.publication {
                        p.audio(timestamp, data);
                    }
                }
                Event::PlayRequested {
                    request_id,
                    key,
                    requested,
                } => self.on_play(request_id, key, &requested),
                Event::PlayFinished => self.player = None,
                Event::Closed(close) => self.closed = Some(close),
            }
        }
    }

    /// Authorizes a publish (at once, or in the background for the
    /// webhook) and claims the stream.
    fn on_publish(&mut self, request_id: u32, request: PublishRequest) {
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
    ) {
        let peer = self.peer;
        let now = Instant::now();
        let max = self.ctx.config.rtmp.limits.max_publishers as usize;
        let (key, claim, from_volume) = match outcome {
            PublishOutcome::Claimed {
                key,
                claim,
                from_volume,
            } => (key, Ok(claim), from_volume),
            PublishOutcome::Unauthorized(reason) => {
                tracing::warn!(%peer, %reason, "publish rejected: not authorized");
                self.machine
                    .reject_publish(now, request_id, PublishRejection::Unauthorized);
                return;
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
                let why = match e {
                    ClaimError::AlreadyLive(_) => PublishRejection::AlreadyLive,
                    ClaimError::TooManyPublishers(_) => PublishRejection::MaxPublishers,
                    ClaimError::OwnershipUnavailable(..) => PublishRejection::OwnershipUnavailable,
                };
                self.machine.reject_publish(now, request_id, why);
                return;
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
                self.machine
                    .reject_publish(now, request_id, PublishRejection::StorageUnavailable);
                return;
            }
        };
        self.publication = Some(Box::new(Publication::new(slot, claim, output, config)));
        if key.as_str() == request.name {
            tracing::info!(%peer, stream = %key, "publish started");
        } else {
            // The requested name may be a secret key: never log it.
            tracing::info!(%peer, stream = %key, "publish started under its public name");
        }
        self.publish_request = Some(request);
        self.coalesce_reads = true;
        self.machine.accept_publish(now, request_id);
    }

    fn on_play(&mut self, request_id: u32, key: StreamKey, requested: &str) {
        let now = Instant::now();
        let Some(live) = self.ctx.streams.live(&key) else {
            self.machine.play_not_found(now, request_id, requested);
            return;
        };
        let (headers, packets) = live.subscribe();
        self.machine.accept_play(now, request_id, &headers);
        if self.machine.is_playing() {
            tracing::info!(peer = %self.peer, stream = %live.key, "play started");
            self.player = Some(Player {
                key: live.key.clone(),
                packets,
            });
        }
    }

    /// Ends a publication, if there is one: it is completed and the
    /// webhook hears `publish_done`.
    fn end_publication(&mut self) {
        if let Some(p) = self.publication.take() {
            p.finish();
        }
        if let Some(request) = self.publish_request.take() {
            self.ctx.auth.publish_done(request);
        }
    }
}
