//! Turns one publication's segment events into files: a `.part` file while a
//! segment is written, renamed when complete, then listed in the playlist,
//! which is replaced atomically. Naming [hls_fragment_naming], date-times
//! [hls_datetime], continuity [hls_continuous] and cleanup are decided here.
//!
//! Everything here blocks on storage: an [`HlsOutput`] runs on its
//! publication's writer thread ([`super::writer`]), never on an event loop.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oxcast_crds::{DatetimeMode, FragmentNaming, HlsSettings};

use super::keys::{released_keys, StreamEncryption};
use super::layout::PARTIAL_SUFFIX;
use super::{write_atomically, CleanupQueue, Layout};
use crate::hls::{PlaylistEntry, PlaylistWindow, SegmentCipher, SegmentEvent, SegmentKey};
use crate::metrics::{GaugeShare, Metrics};
use crate::ownership::Fence;
use crate::stream_key::StreamKey;

/// What outlives a publication: the playlist window and the last segment id,
/// so a republish continues the sequence and never reuses a file name.
#[derive(Debug, Clone)]
pub struct StreamHistory {
    pub window: PlaylistWindow,
    pub last_id: Option<u64>,
}

struct OpenSegment {
    id: u64,
    file_name: String,
    part_path: PathBuf,
    file: Option<File>,
    discontinuity: bool,
    program_date_time: i64,
    /// Encrypted streams: the segment's key line and its cipher, which
    /// every byte goes through before it is written.
    key: Option<SegmentKey>,
    cipher: Option<SegmentCipher>,
    /// Time spent in storage calls for this segment so far.
    storage_time: Duration,
}

/// Runs `io`, adding the time it took to `total`.
fn timed<T>(total: &mut Duration, io: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let result = io();
    *total += start.elapsed();
    result
}

/// Writes one stream's HLS files for the duration of a publication.
pub struct HlsOutput {
    key: StreamKey,
    layout: Layout,
    settings: Arc<HlsSettings>,
    cleanup: Arc<CleanupQueue>,
    metrics: Arc<Metrics>,
    history: StreamHistory,
    open: Option<OpenSegment>,
    /// Media timestamp ↔ wall clock (Unix ms) pairing that date-times and
    /// system ids are derived from, so PROGRAM-DATE-TIME steps equal EXTINFs.
    anchor: Option<(i64, i64)>,
    /// The first segment of a republish continues an older playlist.
    continues_previous: bool,
    /// Checked before every write: without ownership, nothing is written.
    fence: Fence,
    fenced_logged: bool,
    /// This publication's share of `live_streams`: counted from its first
    /// listed segment until it ends or loses the stream's ownership.
    live: GaugeShare,
    /// Key rotation and key files when `hls.encryption` is on.
    encryption: Option<StreamEncryption>,
}

/// When the segmenter produced an event, on both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Produced {
    /// Unix milliseconds: program date-times and system segment ids.
    pub wall_ms: i64,
    /// Monotonic: latencies.
    pub at: Instant,
}

impl Produced {
    pub fn now() -> Self {
        Self {
            wall_ms: now_unix_ms(),
            at: Instant::now(),
        }
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ticks_to_ms(ticks: i64) -> i64 {
    (ticks + 45).div_euclid(90)
}

impl HlsOutput {
    /// Starts a publication; `previous` is what the last one on this key left.
    pub fn start(
        key: StreamKey,
        layout: Layout,
        settings: Arc<HlsSettings>,
        cleanup: Arc<CleanupQueue>,
        metrics: Arc<Metrics>,
        previous: Option<StreamHistory>,
        fence: Fence,
    ) -> Self {
        let fresh = PlaylistWindow::new(
            settings.playlist_type,
            settings.fragment.get().as_secs_f64().round().max(1.0) as u64,
        );
        let (mut history, continues_previous) = match previous {
            Some(h) if settings.continuous => {
                let continues = !h.window.entries.is_empty();
                (h, continues)
            }
            Some(h) => {
                if settings.cleanup {
                    for e in &h.window.entries {
                        cleanup.schedule(
                            layout.segment_path(&key, &e.file_name),
                            settings.playlist_length.get(),
                        );
                    }
                    for id in released_keys(&Vec::from(h.window.entries.clone()), &fresh, None) {
                        cleanup.schedule(
                            layout.key_files().path(&key, id),
                            settings.playlist_length.get(),
                        );
                    }
                }
                (
                    StreamHistory {
                        window: fresh,
                        last_id: h.last_id,
                    },
                    false,
                )
            }
            None => (
                StreamHistory {
                    window: fresh,
                    last_id: None,
                },
                false,
            ),
        };
        // Without forced cuts every segment starts on a keyframe.
        history.window.independent_segments = settings.max_fragment.is_none();
        let live = GaugeShare::new(metrics.clone(), |m| &m.live_streams);
        let e = &settings.encryption;
        let encryption = e
            .enabled
            .then(|| StreamEncryption::new(layout.key_files(), e.fragments_per_key, &e.key_path));
        Self {
            key,
            layout,
            settings,
            cleanup,
            metrics,
            history,
            open: None,
            anchor: None,
            continues_previous,
            fence,
            fenced_logged: false,
            live,
            encryption,
        }
    }

    /// Still the owner? Logs once when not.
    fn owned(&mut self) -> bool {
        if self.fence.holds() {
            return true;
        }
        self.live.set(false);
        if !std::mem::replace(&mut self.fenced_logged, true) {
            tracing::error!(stream = %self.key, "ownership lost (fenced): no more writes to this stream");
        }
        false
    }

    pub fn handle(&mut self, event: SegmentEvent) {
        self.handle_at(event, Produced::now());
    }

    /// Handles `event`, produced by the segmenter at `produced`: date-times
    /// and system ids follow the media, not the time the write got to
    /// storage, and a segment's publish latency runs from the media that
    /// closed it to its playlist on disk.
    pub fn handle_at(&mut self, event: SegmentEvent, produced: Produced) {
        match event {
            SegmentEvent::Begin {
                start,
                discontinuity,
            } => self.begin(start, discontinuity, produced.wall_ms),
            SegmentEvent::Bytes(bytes) => self.write(&bytes),
            SegmentEvent::End { duration } => self.end(duration, produced.at),
        }
    }

    fn next_id(&self, start: i64, pdt: i64) -> u64 {
        let raw = match self.settings.fragment_naming {
            FragmentNaming::System => pdt.max(0) as u64,
            FragmentNaming::Sequential => self.history.window.next_sequence(),
            FragmentNaming::Timestamp => start.max(0) as u64,
        };
        let g = self.settings.fragment_naming_granularity;
        let id = if g > 0 { raw - raw % g } else { raw };
        match self.history.last_id {
            Some(last) if id <= last => last + g.max(1),
            _ => id,
        }
    }

    fn begin(&mut self, start: i64, discontinuity: bool, wall_ms: i64) {
        if self.open.is_some() {
            self.discard_open();
        }
        if !self.owned() {
            return;
        }
        let anchor = match self.anchor {
            Some(a) if !discontinuity => a,
            _ => (start, wall_ms),
        };
        self.anchor = Some(anchor);
        let program_date_time = anchor.1 + ticks_to_ms(start - anchor.0);
        let id = self.next_id(start, program_date_time);
        self.history.last_id = Some(id);
        let file_name = self.layout.segment_file_name(&self.key, id);
        let final_path = self.layout.segment_path(&self.key, &file_name);
        let mut part = final_path.clone().into_os_string();
        part.push(PARTIAL_SUFFIX);
        let part_path = PathBuf::from(part);
        let mut storage_time = Duration::ZERO;
        // Encrypted streams: never written in the clear; without a stored
        // key the segment is dropped.
        let (key, cipher) = match self
            .encryption
            .as_mut()
            .map(|enc| timed(&mut storage_time, || enc.begin_segment(&self.key, id)))
        {
            None => (None, None),
            Some(Ok((key, cipher))) => (Some(key), Some(cipher)),
            Some(Err(e)) => {
                self.metrics.storage_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(stream = %self.key, error = %e, "cannot encrypt segment; this segment is dropped");
                (None, None)
            }
        };
        let encrypted_ok = self.encryption.is_none() || cipher.is_some();
        let file = timed(&mut storage_time, || {
            if !encrypted_ok {
                return Err(std::io::Error::other("no encryption key"));
            }
            std::fs::create_dir_all(self.layout.stream_dir(&self.key))
                .and_then(|()| File::create(&part_path))
        });
        let file = match file {
            Ok(f) => Some(f),
            Err(_) if !encrypted_ok => None,
            Err(e) => {
                self.metrics.storage_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(stream = %self.key, path = %part_path.display(), error = %e, "cannot create segment; this segment is dropped");
                None
            }
        };
        let discontinuity = discontinuity || std::mem::take(&mut self.continues_previous);
        self.open = Some(OpenSegment {
            id,
            file_name,
            part_path,
            file,
            discontinuity,
            program_date_time,
            key,
            cipher,
            storage_time,
        });
    }

    fn write(&mut self, bytes: &[u8]) {
        if !self.fence.holds() {
            // Dropped, not written: the owner check logs at the next cut.
            if let Some(open) = &mut self.open {
                open.file = None;
            }
            return;
        }
        let Some(open) = &mut self.open else { return };
        if let Some(f) = &mut open.file {
            let bytes = match &mut open.cipher {
                Some(cipher) => cipher.update(bytes),
                None => bytes,
            };
            if let Err(e) = timed(&mut open.storage_time, || f.write_all(bytes)) {
                self.metrics.storage_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(stream = %self.key, path = %open.part_path.display(), error = %e, "segment write failed; this segment is dropped");
                open.file = None;
            }
        }
    }

    /// The open segment will not be completed (it was dropped before its
    /// end reached storage): remove its partial file.
    pub fn abort_segment(&mut self) {
        self.discard_open();
    }

    fn discard_open(&mut self) {
        if let Some(open) = self.open.take() {
            if self.fence.holds() {
                let _ = std::fs::remove_file(&open.part_path);
            }
        }
    }

    /// Completes the open segment; `closed_at` is when the media that closed
    /// it reached the server.
    fn end(&mut self, duration: i64, closed_at: Instant) {
        if !self.owned() {
            self.open = None;
            return;
        }
        let Some(mut open) = self.open.take() else {
            return;
        };
        let Some(mut file) = open.file.take() else {
            let _ = std::fs::remove_file(&open.part_path);
            return;
        };
        if let Some(cipher) = open.cipher.take() {
            let tail = cipher.finish();
            if let Err(e) = timed(&mut open.storage_time, || file.write_all(&tail)) {
                self.metrics.storage_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(stream = %self.key, path = %open.part_path.display(), error = %e, "segment write failed; this segment is dropped");
                drop(file);
                let _ = std::fs::remove_file(&open.part_path);
                return;
            }
        }
        let final_path = self.layout.segment_path(&self.key, &open.file_name);
        let renamed = timed(&mut open.storage_time, || {
            drop(file);
            std::fs::rename(&open.part_path, &final_path)
        });
        if let Err(e) = renamed {
            self.metrics.storage_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(stream = %self.key, path = %final_path.display(), error = %e, "cannot publish segment; it is dropped");
            let _ = std::fs::remove_file(&open.part_path);
            return;
        }
        let entry = PlaylistEntry {
            id: open.id,
            file_name: open.file_name,
            duration,
            discontinuity: open.discontinuity,
            program_date_time: (self.settings.datetime == DatetimeMode::System)
                .then_some(open.program_date_time),
            key: open.key,
        };
        tracing::debug!(stream = %self.key, id = entry.id, duration_ms = entry.extinf_millis(), "segment complete");
        let max = self.settings.playlist_length.as_90khz() as i64;
        let dropped = self.history.window.push(entry, max);
        if self.settings.cleanup {
            if let Some(enc) = &self.encryption {
                // A key goes with the last listed segment that used it,
                // after the same grace (a player may hold an older playlist).
                let grace = dropped
                    .iter()
                    .map(|d| Duration::from_millis(d.extinf_millis().max(0) as u64))
                    .max()
                    .unwrap_or_default()
                    + self.settings.playlist_length.get();
                for id in released_keys(&dropped, &self.history.window, enc.current_id()) {
                    self.cleanup
                        .schedule(enc.files().path(&self.key, id), grace);
                }
            }
            for old in dropped {
                let grace = Duration::from_millis(old.extinf_millis().max(0) as u64)
                    + self.settings.playlist_length.get();
                self.cleanup
                    .schedule(self.layout.segment_path(&self.key, &old.file_name), grace);
            }
        }
        let listed = timed(&mut open.storage_time, || self.write_playlist());
        self.metrics
            .segments_written
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .segment_write_seconds
            .observe(open.storage_time);
        self.metrics
            .segment_duration_seconds
            .observe(Duration::from_micros(duration.max(0) as u64 * 100 / 9));
        if listed {
            self.metrics
                .playlist_publish_latency_seconds
                .observe(closed_at.elapsed());
            self.live.set(true);
        }
    }

    /// Writes the playlist; false when that failed (counted and logged).
    fn write_playlist(&self) -> bool {
        let path = self.layout.playlist_path(&self.key);
        let text = self.history.window.render(&self.settings.base_url);
        if let Err(e) = std::fs::create_dir_all(self.layout.stream_dir(&self.key))
            .and_then(|()| write_atomically(&path, text.as_bytes()))
        {
            self.metrics.storage_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(stream = %self.key, path = %path.display(), error = %e, "playlist write failed");
            return false;
        }
        true
    }

    /// The publication ended: drop an incomplete segment, mark the playlist
    /// ended [end_list] and hand back what the next publication continues.
    pub fn finish(mut self) -> StreamHistory {
        self.discard_open();
        if !self.history.window.entries.is_empty() && self.owned() {
            self.history.window.ended = self.settings.end_list;
            self.write_playlist();
        }
        self.history
    }
}

/// Reads back a stream left on disk by an earlier run, so the next publish
/// continues it. Segment files the playlist no longer lists are queued for
/// deletion when cleanup is on. A playlist that does not parse is left alone.
pub fn recover(
    key: &StreamKey,
    layout: &Layout,
    settings: &HlsSettings,
    cleanup: &CleanupQueue,
) -> Option<StreamHistory> {
    let (history, unlisted) = load_history(key, layout, settings)?;
    let path = layout.playlist_path(key);
    let mut window = history.window;
    if settings.cleanup {
        for name in unlisted {
            cleanup.schedule(
                layout.segment_path(key, &name),
                settings.playlist_length.get(),
            );
        }
        let keys = layout.key_files();
        for id in keys.unreferenced(key, &window, None) {
            cleanup.schedule(keys.path(key, id), settings.playlist_length.get());
        }
    }
    if !window.ended && settings.end_list && !window.entries.is_empty() {
        // The previous run stopped without ending this stream (a crash).
        window.ended = true;
        if let Err(e) = write_atomically(&path, window.render(&settings.base_url).as_bytes()) {
            tracing::warn!(stream = %key, error = %e, "cannot end playlist left by an earlier run");
        }
    }
    Some(StreamHistory {
        window,
        last_id: history.last_id,
    })
}

/// Reads (only) what a stream left on disk: its playlist window, the
/// highest segment id among the listed and unlisted files (so a new
/// publication never reuses a name), and the unlisted segment files.
pub fn load_history(
    key: &StreamKey,
    layout: &Layout,
    settings: &HlsSettings,
) -> Option<(StreamHistory, Vec<String>)> {
    let path = layout.playlist_path(key);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(stream = %key, path = %path.display(), error = %e, "cannot read playlist left by an earlier run");
            return None;
        }
    };
    let window = match PlaylistWindow::parse(&text, &settings.base_url) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(stream = %key, path = %path.display(), error = %e, "ignoring unparsable playlist left by an earlier run");
            return None;
        }
    };
    let mut last_id = window.entries.iter().map(|e| e.id).max();
    let mut unlisted = Vec::new();
    if let Ok(files) = layout.segment_files(key) {
        for name in files {
            if !window.entries.iter().any(|e| e.file_name == name) {
                if let Some(id) = layout.segment_id(key, &name) {
                    last_id = last_id.max(Some(id));
                }
                unlisted.push(name);
            }
        }
    }
    Some((StreamHistory { window, last_id }, unlisted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::ReplicaClock;

    fn output(dir: &std::path::Path, metrics: &Arc<Metrics>, fence: Fence) -> HlsOutput {
        HlsOutput::start(
            StreamKey::parse("k").unwrap(),
            Layout::new(dir, true),
            Arc::new(HlsSettings::default()),
            Arc::new(CleanupQueue::default()),
            metrics.clone(),
            None,
            fence,
        )
    }

    fn segment(out: &mut HlsOutput, start: i64, duration: i64) {
        out.handle(SegmentEvent::Begin {
            start,
            discontinuity: false,
        });
        out.handle(SegmentEvent::Bytes(vec![0x47; 188]));
        out.handle(SegmentEvent::End { duration });
    }

    fn live(metrics: &Metrics) -> i64 {
        metrics.live_streams.load(Ordering::Relaxed)
    }

    #[test]
    fn a_stream_is_live_from_its_first_listed_segment_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut out = output(dir.path(), &metrics, Fence::always());
        out.handle(SegmentEvent::Begin {
            start: 0,
            discontinuity: false,
        });
        assert_eq!(live(&metrics), 0, "no segment listed yet");
        out.handle(SegmentEvent::End { duration: 180_000 });
        assert_eq!(live(&metrics), 1);
        segment(&mut out, 180_000, 180_000);
        assert_eq!(live(&metrics), 1);
        out.finish();
        assert_eq!(live(&metrics), 0);

        // Dropped without finishing (a panicking publication): given back.
        let mut out = output(dir.path(), &metrics, Fence::always());
        segment(&mut out, 360_000, 180_000);
        assert_eq!(live(&metrics), 1);
        drop(out);
        assert_eq!(live(&metrics), 0);
    }

    #[test]
    fn a_fenced_stream_is_no_longer_live() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let clock = Arc::new(ReplicaClock::new(false));
        clock.extend_to(Instant::now() + Duration::from_secs(60));
        let mut out = output(
            dir.path(),
            &metrics,
            Fence::new(clock.clone(), clock.generation()),
        );
        segment(&mut out, 0, 180_000);
        assert_eq!(live(&metrics), 1);
        clock.fence();
        segment(&mut out, 180_000, 180_000);
        assert_eq!(live(&metrics), 0);
    }

    #[test]
    fn each_listed_segment_records_its_duration_and_its_storage_time() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut out = output(dir.path(), &metrics, Fence::always());
        segment(&mut out, 0, 2 * 90_000 + 180);
        segment(&mut out, 2 * 90_000 + 180, 9 * 90_000);
        assert_eq!(metrics.segment_write_seconds.count(), 2);
        assert_eq!(metrics.segment_duration_seconds.count(), 2);
        // Bucketing and rendering are metrics.rs's tests; here the values.
        let text = metrics.render();
        assert!(text.contains("oxcast_segment_duration_seconds_sum 11.002\n"));
        // Writing two tiny files to a temporary directory takes far less
        // than the segments last: the write histogram measures the writes.
        assert!(text.contains("oxcast_segment_write_seconds_bucket{le=\"1\"} 2\n"));
        // Both were listed, so both have a publish latency.
        assert_eq!(metrics.playlist_publish_latency_seconds.count(), 2);
        assert!(text.contains("oxcast_playlist_publish_latency_seconds_bucket{le=\"1\"} 2\n"));
    }

    #[test]
    fn encrypted_segments_decrypt_with_the_key_their_playlist_names() {
        use crate::hls::encryption::decrypt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("live");
        let layout = Layout::new(&root, true);
        let mut settings = HlsSettings::default();
        settings.encryption.enabled = true;
        settings.encryption.fragments_per_key = 2;
        settings.playlist_length = oxcast_crds::HumanDuration::from_secs(6);
        settings.fragment = oxcast_crds::HumanDuration::from_secs(2);
        settings.fragment_naming = FragmentNaming::Sequential;
        let cleanup = Arc::new(CleanupQueue::default());
        let key = StreamKey::parse("k").unwrap();
        let mut out = HlsOutput::start(
            key.clone(),
            layout.clone(),
            Arc::new(settings),
            cleanup.clone(),
            Arc::new(Metrics::default()),
            None,
            Fence::always(),
        );
        let plain: Vec<u8> = (0..188 * 10).map(|i| (i % 256) as u8).collect();
        for n in 0..8i64 {
            out.handle(SegmentEvent::Begin {
                start: n * 180_000,
                discontinuity: false,
            });
            for chunk in plain.chunks(100) {
                out.handle(SegmentEvent::Bytes(chunk.to_vec()));
            }
            out.handle(SegmentEvent::End { duration: 180_000 });
        }
        let text = std::fs::read_to_string(layout.playlist_path(&key)).unwrap();
        let window = PlaylistWindow::parse(&text, "").unwrap();
        assert_eq!(window.entries.len(), 3, "{text}");
        let keys = layout.key_files();
        for e in &window.entries {
            let k = e.key.as_ref().expect("every segment is encrypted");
            assert_eq!(k.uri, format!("/keys/k/{}.key", k.id));
            assert_eq!(k.id, e.id - e.id % 2, "a new key every 2 segments");
            let on_disk = std::fs::read(layout.segment_path(&key, &e.file_name)).unwrap();
            // Ciphertext, not the clear bytes: one whole PKCS#7 block more
            // than the 1880 clear bytes. (Its first byte is random, so it
            // may well be 0x47: compare the whole file.)
            assert_eq!(on_disk.len(), plain.len() + 8, "padded to 16-byte blocks");
            assert_ne!(on_disk[..plain.len()], plain[..], "encrypted on disk");
            let stored = keys.read(&key, k.id).unwrap();
            assert_eq!(decrypt(&stored, &k.iv, &on_disk).unwrap(), plain);
        }
        // Keys outside the tree; the released ones are queued with the segments.
        assert!(!keys.dir().starts_with(&root));
        let queued = cleanup.take_due(Instant::now() + Duration::from_secs(60));
        let released: Vec<_> = queued
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "key"))
            .collect();
        assert_eq!(
            released,
            [&keys.path(&key, 0), &keys.path(&key, 2)],
            "keys 0 and 2 are no longer listed; 4 is (segment 5), 6 is current"
        );
        let history = out.finish();
        assert!(history.window.ended);
    }
}
