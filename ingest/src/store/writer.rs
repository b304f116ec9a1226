//! Storage IO off the RTMP event loops: every publication gets its own
//! writer thread, fed through a byte-bounded queue.
//!
//! # Why a thread per publication
//!
//! The RTMP side runs one single-threaded runtime per core with many
//! connections on each ([`crate::rtmp`]). A segment's create/write/rename and
//! the playlist's atomic replace are blocking syscalls; on a shared volume
//! (NFS, any RWX driver) one of them can take seconds or hang until the
//! server comes back. Run on the event loop, that stalls every stream on
//! the core; run on a shared pool, a few stalled streams exhaust the pool
//! and stall the rest. So the IO of one stream runs on a thread of its own:
//!
//! - a stalled volume blocks exactly the threads of the streams written to
//!   it, nothing else (the event loop only appends to a queue);
//! - a stream's writes stay in order without any per-stream sequencing
//!   across a pool (create → writes → rename → playlist, then the next
//!   segment), so the playlist never lists a file that is not complete;
//! - the thread count is bounded by `rtmp.limits.maxPublishers`, each thread
//!   sleeps on a condition variable between segments (a few wake-ups per
//!   segment), and its stack is only what it touches.
//!
//! A blocking pool with per-stream ordered queues would reuse threads across
//! publications, but needs the same one-thread-per-stalled-stream to keep
//! the isolation, plus hand-over logic; publications last minutes to hours,
//! so a thread spawn per publish costs nothing measurable.
//!
//! # The queue and its bound
//!
//! The publication (on the event loop) calls [`StorageWriter::submit`] with
//! the segmenter's events; that takes the queue lock for a push and never
//! waits for IO. Each queued command is charged its payload plus a small
//! overhead against the stream's backlog limit (`--storage-backlog`,
//! [`DEFAULT_BACKLOG`]). While storage keeps up the queue holds a few
//! kilobytes.
//!
//! When the limit would be exceeded (storage is stalled or slower than the
//! stream), the segment being produced is dropped as a whole: its already
//! queued part is cancelled (the writer removes its `.part` file), and
//! whole segments keep being dropped until the backlog has drained below
//! half the limit. The first segment written after the gap carries
//! `EXT-X-DISCONTINUITY`, so players know media is missing. Nothing is
//! dropped silently: each episode is logged when it starts (warn, with
//! `stream`, `backlog_bytes`, `limit_bytes`) and when it ends (with the
//! number of segments and seconds of media dropped), and every dropped
//! segment is counted in `oxcast_segments_dropped_total{reason="storage_backlog"}`.
//! Segments queued before the overflow are written once storage answers.
//! The publisher stays connected: a storage hiccup costs viewers a gap, not
//! the broadcaster a reconnect. Memory per stream stays under the limit;
//! `oxcast_storage_backlog_bytes` is the sum over all streams.
//!
//! # The end of a publication
//!
//! [`StorageWriter::finish`] queues a last command carrying what the
//! publication still holds (its stream-table slot, its ownership claim) as a
//! closure. The writer thread runs it after every queued write and the
//! playlist's `EXT-X-ENDLIST`, so ENDLIST is the last thing written, the
//! stream's history reaches the stream table only once it is final (a
//! republish continues from the right sequence), and the ownership is held
//! until then. The event loop does not wait. [`StorageWriters::wait_idle`]
//! lets an orderly shutdown wait for the writers to finish.
//!
//! Fencing stays where the writes are: [`HlsOutput`] checks the stream's
//! ownership before every write it makes, at the time it makes it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::hls::SegmentEvent;
use crate::metrics::Metrics;
use crate::stream_key::StreamKey;

use super::output::{HlsOutput, Produced, StreamHistory};

/// Default per-stream backlog limit: 16 MiB, about 20 s of a 6 Mbit/s
/// stream or 40 s at 3 Mbit/s.
pub const DEFAULT_BACKLOG: u64 = 16 * 1024 * 1024;

/// Bookkeeping charged per queued command on top of its payload, so even a
/// flood of tiny commands is bounded.
const COMMAND_OVERHEAD: u64 = 64;

/// The metric label of segments dropped because storage fell behind.
pub const DROP_STORAGE_BACKLOG: &str = "storage_backlog";

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("cannot start the storage writer of stream {key}: {source}")]
    Spawn {
        key: StreamKey,
        source: std::io::Error,
    },
}

/// Runs on the writer thread once the publication's last write is done,
/// with the history the next publication continues.
pub type OnFinish = Box<dyn FnOnce(StreamHistory) + Send>;

enum Command {
    Event {
        event: SegmentEvent,
        /// When the event loop produced it: the wall clock (Unix ms) for
        /// date-times and system ids, the monotonic clock for latency.
        produced: Produced,
    },
    /// The open segment was dropped (backlog overflow): discard it.
    Abort,
    Finish(OnFinish),
}

impl Command {
    fn cost(&self) -> u64 {
        match self {
            Command::Event {
                event: SegmentEvent::Bytes(b),
                ..
            } => b.len() as u64 + COMMAND_OVERHEAD,
            _ => COMMAND_OVERHEAD,
        }
    }
}

#[derive(Default)]
struct Queue {
    commands: VecDeque<(Command, u64)>,
    /// Sum of the queued commands' costs.
    bytes: u64,
    /// The producer went away without finishing (its publication was
    /// dropped, e.g. on a panic): stop after the write in progress.
    abandoned: bool,
    /// The writer thread is gone (it finished or panicked).
    writer_gone: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts live writer threads so a shutdown can wait for them.
#[derive(Default)]
struct Running {
    count: Mutex<usize>,
    idle: Condvar,
}

/// Starts per-publication writers and knows how many are still running.
pub struct StorageWriters {
    backlog_limit: u64,
    metrics: Arc<Metrics>,
    running: Arc<Running>,
    /// Streams whose publication ended and whose writer is still working
    /// through its queue; the sender is dropped when it is done.
    draining: Arc<Mutex<Draining>>,
}

type Draining = HashMap<StreamKey, Arc<tokio::sync::watch::Sender<()>>>;

/// Held by a writer thread; counts it out on drop (also on a panic) and
/// gives its remaining backlog back to the gauge.
struct WriterTicket {
    running: Arc<Running>,
    shared: Arc<Shared>,
}

impl Drop for WriterTicket {
    fn drop(&mut self) {
        {
            let mut q = self.shared.lock();
            q.writer_gone = true;
            let left = std::mem::take(&mut q.bytes);
            q.commands.clear();
            self.shared
                .metrics
                .storage_backlog_bytes
                .fetch_sub(left as i64, Ordering::Relaxed);
        }
        let mut n = self.running.count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        self.running.idle.notify_all();
    }
}

impl StorageWriters {
    pub fn new(backlog_limit: u64, metrics: Arc<Metrics>) -> Self {
        Self {
            backlog_limit: backlog_limit.max(COMMAND_OVERHEAD * 4),
            metrics,
            running: Arc::default(),
            draining: Arc::default(),
        }
    }

    /// Waits (at most `timeout`) until the previous publication of `key`
    /// has written everything and handed its history back; true when it
    /// has (or there was none). A republish calls this before its claim so
    /// it continues from the final history. Does not block the thread.
    pub async fn wait_drained(&self, key: &StreamKey, timeout: Duration) -> bool {
        let pending = self
            .draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(|tx| tx.subscribe());
        let Some(mut done) = pending else {
            return true;
        };
        tokio::time::timeout(
            timeout,
            async move { while done.changed().await.is_ok() {} },
        )
        .await
        .is_ok()
    }

    /// Is a finished publication of `key` still writing?
    pub fn is_draining(&self, key: &StreamKey) -> bool {
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    pub fn backlog_limit(&self) -> u64 {
        self.backlog_limit
    }

    /// Moves `output` to a new writer thread for `key`'s publication.
    pub fn start(&self, key: StreamKey, output: HlsOutput) -> Result<StorageWriter, WriterError> {
        let (writer, ticket) = self.prepare(key.clone());
        spawn_writer(key, output, ticket)?;
        Ok(writer)
    }

    /// The producer's end and the (not yet running) writer's ticket.
    fn prepare(&self, key: StreamKey) -> (StorageWriter, WriterTicket) {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            metrics: self.metrics.clone(),
        });
        *self.running.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let ticket = WriterTicket {
            running: self.running.clone(),
            shared: shared.clone(),
        };
        let writer = StorageWriter {
            key,
            draining: self.draining.clone(),
            shared,
            limit: self.backlog_limit,
            state: Flow::Open,
            gap_pending: false,
            episode: None,
            in_segment: false,
            dead_logged: false,
            finished: false,
        };
        (writer, ticket)
    }

    /// Writer threads still running (publications still writing).
    pub fn running(&self) -> usize {
        *self.running.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until every writer has finished or `timeout` passed; true
    /// when none is left. For a shutdown, off any event loop.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let count = self.running.count.lock().unwrap_or_else(|p| p.into_inner());
        let (count, _) = self
            .running
            .idle
            .wait_timeout_while(count, timeout, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *count == 0
    }
}

fn spawn_writer(
    key: StreamKey,
    output: HlsOutput,
    ticket: WriterTicket,
) -> Result<(), WriterError> {
    let thread_key = key.clone();
    std::thread::Builder::new()
        .name(format!("storage-{key}"))
        .spawn(move || write_loop(thread_key, output, ticket))
        .map(drop)
        // The ticket was dropped with the closure: counted out again.
        .map_err(|source| WriterError::Spawn { key, source })
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The writer thread: applies the commands in order until the finish.
fn write_loop(key: StreamKey, mut output: HlsOutput, ticket: WriterTicket) {
    let shared = ticket.shared.clone();
    loop {
        let command = {
            let mut q = shared.lock();
            loop {
                if q.abandoned {
                    break None;
                }
                if let Some((command, cost)) = q.commands.pop_front() {
                    q.bytes -= cost;
                    shared
                        .metrics
                        .storage_backlog_bytes
                        .fetch_sub(cost as i64, Ordering::Relaxed);
                    break Some(command);
                }
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        match command {
            Some(Command::Event { event, produced }) => output.handle_at(event, produced),
            Some(Command::Abort) => output.abort_segment(),
            Some(Command::Finish(done)) => {
                let history = output.finish();
                done(history);
                break;
            }
            None => {
                tracing::warn!(stream = %key, "publication ended without finishing; its storage writer stops");
                output.abort_segment();
                break;
            }
        }
    }
    drop(ticket);
}

/// Whether segments currently go to storage or are being dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Open,
    /// Dropping whole segments until the backlog is below half the limit.
    Dropping,
}

/// One overflow episode, for its closing log line.
#[derive(Debug, Default)]
struct Episode {
    segments: u64,
    media_ticks: i64,
}

/// The event loop's end of a publication's writer: hands segment events
/// over without blocking. Dropping it without [`StorageWriter::finish`]
/// (a panicking publication) stops the writer after its current write.
pub struct StorageWriter {
    key: StreamKey,
    draining: Arc<Mutex<Draining>>,
    shared: Arc<Shared>,
    limit: u64,
    state: Flow,
    /// Media was dropped: the next segment written starts a discontinuity.
    gap_pending: bool,
    episode: Option<Episode>,
    /// A segment has begun and not ended (on the producer's side).
    in_segment: bool,
    dead_logged: bool,
    /// The finish is queued: dropping this end no longer abandons.
    finished: bool,
}

impl StorageWriter {
    /// Queued bytes right now (payloads plus bookkeeping).
    pub fn backlog(&self) -> u64 {
        self.shared.lock().bytes
    }

    /// Is the writer thread still there? (False after a panic in it.)
    pub fn alive(&self) -> bool {
        !self.shared.lock().writer_gone
    }

    /// Hands one segmenter event to the writer; never waits for storage.
    pub fn submit(&mut self, event: SegmentEvent) {
        match event {
            SegmentEvent::Begin {
                start,
                discontinuity,
            } => {
                self.in_segment = true;
                if self.state == Flow::Dropping {
                    let backlog = self.backlog();
                    if backlog > self.limit / 2 {
                        return self.count_drop();
                    }
                    self.recovered(backlog);
                }
                let discontinuity = discontinuity || std::mem::take(&mut self.gap_pending);
                let event = SegmentEvent::Begin {
                    start,
                    discontinuity,
                };
                if !self.push(event) {
                    self.overflow(false);
                }
            }
            SegmentEvent::Bytes(bytes) => {
                if self.state == Flow::Dropping {
                    return;
                }
                if !self.push(SegmentEvent::Bytes(bytes)) {
                    self.overflow(self.in_segment);
                }
            }
            SegmentEvent::End { duration } => {
                self.in_segment = false;
                if self.state == Flow::Dropping {
                    if let Some(e) = &mut self.episode {
                        e.media_ticks += duration.max(0);
                    }
                    return;
                }
                if !self.push(SegmentEvent::End { duration }) {
                    self.overflow(true);
                    if let Some(e) = &mut self.episode {
                        e.media_ticks += duration.max(0);
                    }
                }
            }
        }
    }

    /// Queues `event` if it fits the backlog limit.
    fn push(&mut self, event: SegmentEvent) -> bool {
        let command = Command::Event {
            event,
            produced: Produced {
                wall_ms: now_unix_ms(),
                at: Instant::now(),
            },
        };
        let cost = command.cost();
        let q = self.shared.lock();
        if q.writer_gone {
            drop(q);
            if !std::mem::replace(&mut self.dead_logged, true) {
                tracing::error!(stream = %self.key, "storage writer is gone; this stream's segments are no longer written");
            }
            // Not an overflow: nothing will drain, so do not pile up.
            return true;
        }
        if q.bytes + cost > self.limit {
            return false;
        }
        self.enqueue(q, command, cost);
        true
    }

    /// Queues a bookkeeping command, which is never refused (its cost is
    /// still counted, and at most one is queued per dropped segment).
    fn push_control(&self, command: Command) {
        let cost = command.cost();
        let q = self.shared.lock();
        if !q.writer_gone {
            self.enqueue(q, command, cost);
        }
    }

    /// Appends `command` to the locked queue, counts its cost in the queue
    /// and the backlog gauge, and wakes the writer.
    fn enqueue(&self, mut q: MutexGuard<'_, Queue>, command: Command, cost: u64) {
        q.bytes += cost;
        q.commands.push_back((command, cost));
        drop(q);
        self.shared
            .metrics
            .storage_backlog_bytes
            .fetch_add(cost as i64, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }

    /// The backlog is full: drop the segment in progress (cancelling its
    /// queued part when `cancel_open`) and start dropping whole segments.
    fn overflow(&mut self, cancel_open: bool) {
        if cancel_open {
            self.push_control(Command::Abort);
        }
        self.state = Flow::Dropping;
        self.gap_pending = true;
        let backlog = self.backlog();
        tracing::warn!(
            stream = %self.key,
            backlog_bytes = backlog,
            limit_bytes = self.limit,
            reason = DROP_STORAGE_BACKLOG,
            "storage is not keeping up: segments of this stream are dropped until its backlog drains; the next segment written starts with a discontinuity"
        );
        self.episode = Some(Episode::default());
        self.count_drop();
    }

    fn count_drop(&mut self) {
        if let Some(e) = &mut self.episode {
            e.segments += 1;
        }
        self.shared
            .metrics
            .segments_dropped
            .inc(DROP_STORAGE_BACKLOG);
    }

    fn recovered(&mut self, backlog: u64) {
        self.state = Flow::Open;
        let episode = self.episode.take().unwrap_or_default();
        tracing::warn!(
            stream = %self.key,
            dropped_segments = episode.segments,
            dropped_seconds = episode.media_ticks as f64 / 90_000.0,
            backlog_bytes = backlog,
            reason = DROP_STORAGE_BACKLOG,
            "storage caught up: writing segments again after a gap (EXT-X-DISCONTINUITY)"
        );
    }

    /// The publication ended: after the queued writes, the writer ends the
    /// playlist and calls `done` with the stream's history, on its thread.
    /// If the writer is gone, `done` is dropped unrun (its guards release).
    pub fn finish(mut self, done: OnFinish) {
        if let Some(episode) = self.episode.take() {
            tracing::warn!(
                stream = %self.key,
                dropped_segments = episode.segments,
                dropped_seconds = episode.media_ticks as f64 / 90_000.0,
                reason = DROP_STORAGE_BACKLOG,
                "publication ended while storage was behind: its last segments were dropped"
            );
        }
        // Republishes of the key wait for this (see `wait_drained`).
        let marker = Arc::new(tokio::sync::watch::channel(()).0);
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.key.clone(), marker.clone());
        let mark = DrainMark {
            draining: self.draining.clone(),
            key: self.key.clone(),
            marker,
        };
        self.push_control(Command::Finish(Box::new(move |history| {
            done(history);
            drop(mark);
        })));
        self.finished = true;
    }
}

/// A finished publication's entry in the draining map, removed on drop:
/// after its history was handed back, or when its finish could not run.
struct DrainMark {
    draining: Arc<Mutex<Draining>>,
    key: StreamKey,
    marker: Arc<tokio::sync::watch::Sender<()>>,
}

impl Drop for DrainMark {
    fn drop(&mut self) {
        let mut map = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::ptr_eq(m, &self.marker))
        {
            map.remove(&self.key);
        }
    }
}

impl Drop for StorageWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut q = self.shared.lock();
        q.abandoned = true;
        drop(q);
        self.shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::PlaylistWindow;
    use crate::ownership::{Fence, ReplicaClock};
    use crate::store::{CleanupQueue, Layout};
    use oxcast_crds::HlsSettings;
    use std::path::Path;
    use std::sync::mpsc;
    use std::time::Instant;

    const SECOND: i64 = 90_000;

    fn key() -> StreamKey {
        StreamKey::parse("cam").unwrap()
    }

    fn output(dir: &Path, metrics: &Arc<Metrics>, fence: Fence) -> HlsOutput {
        let settings = HlsSettings {
            fragment_naming: oxcast_crds::FragmentNaming::Sequential,
            ..HlsSettings::default()
        };
        HlsOutput::start(
            key(),
            Layout::new(dir, true),
            Arc::new(settings),
            Arc::new(CleanupQueue::default()),
            metrics.clone(),
            None,
            fence,
        )
    }

    /// One segment of `len` payload bytes starting at `index` seconds.
    fn segment(w: &mut StorageWriter, index: i64, len: usize) {
        w.submit(SegmentEvent::Begin {
            start: index * SECOND,
            discontinuity: false,
        });
        for chunk in vec![0x47u8; len].chunks(188 * 7) {
            w.submit(SegmentEvent::Bytes(chunk.to_vec()));
        }
        w.submit(SegmentEvent::End { duration: SECOND });
    }

    fn finish(w: StorageWriter) -> mpsc::Receiver<StreamHistory> {
        let (tx, rx) = mpsc::channel();
        w.finish(Box::new(move |h| {
            let _ = tx.send(h);
        }));
        rx
    }

    fn playlist(dir: &Path) -> PlaylistWindow {
        let text = std::fs::read_to_string(dir.join("cam/index.m3u8")).unwrap();
        PlaylistWindow::parse(&text, "").unwrap()
    }

    #[test]
    fn writes_in_order_and_finishes_after_the_queued_writes() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let writers = StorageWriters::new(DEFAULT_BACKLOG, metrics.clone());
        // Storage does not answer yet: everything is queued first.
        let (mut w, ticket) = writers.prepare(key());
        for i in 0..5 {
            segment(&mut w, i, 10_000);
        }
        assert!(w.backlog() > 5 * 10_000);
        let done = finish(w);
        assert_eq!(writers.running(), 1);
        assert!(done.try_recv().is_err(), "finish waits for the writes");
        spawn_writer(key(), output(dir.path(), &metrics, Fence::always()), ticket).unwrap();
        let history = done.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(writers.wait_idle(Duration::from_secs(10)));
        let ids: Vec<u64> = history.window.entries.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
        let on_disk = playlist(dir.path());
        assert!(
            on_disk.ended,
            "ENDLIST is written before the history is handed back"
        );
        assert_eq!(on_disk.entries.len(), 5);
        for e in &on_disk.entries {
            let len = std::fs::metadata(dir.path().join("cam").join(&e.file_name))
                .unwrap()
                .len();
            assert_eq!(len, 10_000, "{} complete", e.file_name);
        }
        assert_eq!(metrics.storage_backlog_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.segments_written.load(Ordering::Relaxed), 5);
        assert_eq!(metrics.segments_dropped.get(DROP_STORAGE_BACKLOG), 0);
    }

    #[test]
    fn a_full_backlog_drops_whole_segments_and_marks_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let limit = 64 * 1024;
        let writers = StorageWriters::new(limit, metrics.clone());
        let (mut w, ticket) = writers.prepare(key());
        // 20 KB segments against a 64 KiB limit while storage is stalled:
        // three fit, the fourth overflows halfway, later ones are dropped.
        for i in 0..8 {
            segment(&mut w, i, 20_000);
            assert!(
                w.backlog() <= limit,
                "backlog {} over the limit",
                w.backlog()
            );
            let gauge = metrics.storage_backlog_bytes.load(Ordering::Relaxed);
            assert!(gauge as u64 <= limit);
        }
        assert_eq!(metrics.segments_dropped.get(DROP_STORAGE_BACKLOG), 5);
        // Storage answers again and drains the backlog.
        spawn_writer(key(), output(dir.path(), &metrics, Fence::always()), ticket).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.backlog() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(w.backlog(), 0);
        segment(&mut w, 8, 20_000);
        segment(&mut w, 9, 20_000);
        let history = finish(w).recv_timeout(Duration::from_secs(10)).unwrap();
        let listed: Vec<(u64, bool)> = history
            .window
            .entries
            .iter()
            .map(|e| (e.id, e.discontinuity))
            .collect();
        // Segments 0-2 were queued before the overflow and are written; 3
        // was cancelled (its id is not reused); the one after the gap
        // starts a discontinuity.
        assert_eq!(
            listed,
            vec![(0, false), (1, false), (2, false), (4, true), (5, false)]
        );
        // The overflowing segment's partial file was removed.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("cam"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(playlist(dir.path()).ended);
        assert!(writers.wait_idle(Duration::from_secs(10)));
        assert_eq!(metrics.storage_backlog_bytes.load(Ordering::Relaxed), 0);
        assert!(metrics
            .render()
            .contains("oxcast_segments_dropped_total{reason=\"storage_backlog\"} 5\n"));
    }

    #[test]
    fn queued_writes_are_not_written_once_ownership_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let clock = Arc::new(ReplicaClock::new(false));
        clock.extend_to(Instant::now() + Duration::from_secs(60));
        let fence = Fence::new(clock.clone(), clock.generation());
        let writers = StorageWriters::new(DEFAULT_BACKLOG, metrics.clone());
        let (mut w, ticket) = writers.prepare(key());
        segment(&mut w, 0, 1_000);
        segment(&mut w, 1, 1_000);
        let done = finish(w);
        // Ownership is lost while the writes wait for storage.
        clock.fence();
        spawn_writer(key(), output(dir.path(), &metrics, fence), ticket).unwrap();
        done.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(writers.wait_idle(Duration::from_secs(10)));
        assert!(
            !dir.path().join("cam").exists(),
            "nothing written without ownership"
        );
        assert_eq!(metrics.live_streams.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_abandoned_writer_stops_and_its_guards_release() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let writers = StorageWriters::new(DEFAULT_BACKLOG, metrics.clone());
        let mut w = writers
            .start(key(), output(dir.path(), &metrics, Fence::always()))
            .unwrap();
        segment(&mut w, 0, 1_000);
        assert!(w.alive());
        // A panicking publication drops its writer without finishing.
        drop(w);
        assert!(writers.wait_idle(Duration::from_secs(10)));
        assert_eq!(metrics.storage_backlog_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.live_streams.load(Ordering::Relaxed), 0);

        // A finish handed to a writer that is gone is dropped unrun, so
        // the guards it carries release.
        let (w, ticket) = writers.prepare(key());
        drop(ticket);
        assert!(!w.alive());
        let (tx, rx) = mpsc::channel::<&str>();
        struct Guard(mpsc::Sender<&'static str>);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = self.0.send("released");
            }
        }
        let guard = Guard(tx);
        w.finish(Box::new(move |_| drop(guard)));
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok("released"));
        assert_eq!(writers.running(), 0);
    }

    #[tokio::test]
    async fn a_republish_waits_until_the_previous_writes_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let writers = StorageWriters::new(DEFAULT_BACKLOG, metrics.clone());
        assert!(writers.wait_drained(&key(), Duration::ZERO).await);
        let (mut w, ticket) = writers.prepare(key());
        segment(&mut w, 0, 1_000);
        let done = finish(w);
        assert!(writers.is_draining(&key()));
        // Storage is stalled: the wait times out (the loop is not blocked).
        assert!(
            !writers
                .wait_drained(&key(), Duration::from_millis(50))
                .await
        );
        spawn_writer(key(), output(dir.path(), &metrics, Fence::always()), ticket).unwrap();
        assert!(writers.wait_drained(&key(), Duration::from_secs(10)).await);
        assert!(!writers.is_draining(&key()));
        // The history was handed back before the wait ended.
        assert_eq!(done.try_recv().unwrap().window.entries.len(), 1);
    }
}
