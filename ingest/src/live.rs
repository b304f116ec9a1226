//! The table of streams this server knows: live ones (a publisher is
//! connected; a second publisher on the key is refused) and idle ones whose
//! playlist history waits for a republish [hls_continuous] or for expiry.
//!
//! The table's lock guards the map only: no file is read, written or
//! deleted while it is held (the janitor lists expired streams, deletes
//! their files on the blocking pool, then forgets them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rml_rtmp::sessions::StreamMetadata;
use tokio::sync::broadcast;

use crate::media::{AacConfig, AvcConfig};
use crate::store::StreamHistory;
use crate::stream_key::StreamKey;

/// A message fanned out from a publisher to its RTMP players [allow_play].
#[derive(Debug, Clone)]
pub enum PlayPacket {
    Metadata(Arc<StreamMetadata>),
    Video {
        timestamp: u32,
        data: Bytes,
        keyframe: bool,
    },
    Audio {
        timestamp: u32,
        data: Bytes,
    },
    /// The publisher stopped.
    End,
}

/// What a player must receive before the live packets: the last metadata
/// and codec sequence headers.
#[derive(Debug, Clone, Default)]
pub struct StreamHeaders {
    pub metadata: Option<Arc<StreamMetadata>>,
    pub video: Option<(u32, Bytes)>,
    pub audio: Option<(u32, Bytes)>,
}

/// A stream with a connected publisher.
#[derive(Debug)]
pub struct LiveStream {
    pub key: StreamKey,
    pub started_at: SystemTime,
    /// The player feed, made when the first player subscribes: 1024 slots
    /// (~64 KiB) that a stream nobody plays (the default, `allowPlay`
    /// false) never needs.
    packets: OnceLock<broadcast::Sender<PlayPacket>>,
    headers: Mutex<StreamHeaders>,
    stats: Mutex<StreamStats>,
}

/// What the streams API tells viewers about a live stream. Fields the
/// publisher has not (yet) revealed are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamInfo {
    /// RFC 6381 codec of the video track, e.g. `avc1.64001f`.
    pub video_codec: Option<String>,
    /// RFC 6381 codec of the audio track, e.g. `mp4a.40.2`.
    pub audio_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Frames per second, measured from the video timestamps (the
    /// publisher's metadata until a measurement window has passed).
    pub frame_rate: Option<f64>,
    /// Media bits per second (audio + video payload) over the last window.
    pub bitrate: Option<u64>,
    pub audio_sample_rate: Option<u32>,
    pub audio_channels: Option<u8>,
    /// Seconds between video keyframes: the longest of the last few.
    pub keyframe_interval: Option<f64>,
}

/// Media time over which bitrate and frame rate are averaged.
const RATE_WINDOW_MS: u32 = 2000;
/// A timestamp jump larger than this restarts the measurement window
/// instead of producing an absurd rate.
const RATE_MAX_GAP_MS: u32 = 60_000;

/// Running measurements behind [`StreamInfo`]. Windows are timed by the
/// media timestamps, not the wall clock, so a publisher that sends in bursts
/// still gets its real frame rate.
#[derive(Debug, Default)]
struct StreamStats {
    info: StreamInfo,
    seen_video: bool,
    window_start: Option<u32>,
    window_bytes: u64,
    window_frames: u32,
}

impl StreamStats {
    fn metadata(&mut self, m: &StreamMetadata) {
        // Metadata is the publisher's claim; parsed sequence headers and
        // measurements win once they exist.
        let info = &mut self.info;
        if info.width.is_none() {
            info.width = m.video_width.filter(|w| *w > 0);
        }
        if info.height.is_none() {
            info.height = m.video_height.filter(|h| *h > 0);
        }
        if info.frame_rate.is_none() {
            info.frame_rate = m
                .video_frame_rate
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(|r| round2(f64::from(r)));
        }
    }

    fn video_config(&mut self, config: &AvcConfig) {
        if let Some(sps) = config.sps.first().filter(|s| s.len() >= 4) {
            self.info.video_codec =
                Some(format!("avc1.{:02x}{:02x}{:02x}", sps[1], sps[2], sps[3]));
        }
        if let Some((w, h)) = config.resolution() {
            self.info.width = Some(w);
            self.info.height = Some(h);
        }
    }

    fn audio_config(&mut self, config: &AacConfig) {
        // HE-AAC is announced as object type 5 (SBR), as players expect.
        let object_type = if config.sbr { 5 } else { config.object_type };
        self.info.audio_codec = Some(format!("mp4a.40.{object_type}"));
        self.info.audio_sample_rate = Some(config.output_sample_rate());
        self.info.audio_channels = match config.channel_config {
            0 => None,
            7 => Some(8),
            n => Some(n),
        };
    }

    /// Counts one media packet; `video_frame` for video frames (not headers).
    fn packet(&mut self, timestamp: u32, len: usize, video: bool, video_frame: bool) {
        self.seen_video |= video;
        self.window_bytes += len as u64;
        // Video drives the window clock when there is video; audio otherwise.
        if video != self.seen_video {
            return;
        }
        let Some(start) = self.window_start else {
            self.window_start = Some(timestamp);
            self.window_frames = u32::from(video_frame);
            return;
        };
        let elapsed = timestamp.wrapping_sub(start);
        if elapsed > RATE_MAX_GAP_MS {
            self.restart(timestamp, len, video_frame);
            return;
        }
        if elapsed >= RATE_WINDOW_MS {
            // The packet that closes a window belongs to the next one.
            let bytes = self.window_bytes - len as u64;
            self.info.bitrate = Some(bytes * 8 * 1000 / u64::from(elapsed));
            if self.seen_video && self.window_frames > 0 {
                self.info.frame_rate = Some(round2(
                    f64::from(self.window_frames) * 1000.0 / f64::from(elapsed),
                ));
            }
            self.restart(timestamp, len, video_frame);
        } else if video_frame {
            self.window_frames += 1;
        }
    }

    fn restart(&mut self, timestamp: u32, len: usize, video_frame: bool) {
        self.window_start = Some(timestamp);
        self.window_bytes = len as u64;
        self.window_frames = u32::from(video_frame);
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Backlog per player before it is considered lagging and skips to the next
/// keyframe.
const PLAYER_BACKLOG: usize = 1024;

impl LiveStream {
    fn new(key: StreamKey) -> Self {
        Self {
            key,
            started_at: SystemTime::now(),
            packets: OnceLock::new(),
            headers: Mutex::new(StreamHeaders::default()),
            stats: Mutex::new(StreamStats::default()),
        }
    }

    fn stats(&self) -> MutexGuard<'_, StreamStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Codecs, resolution and rates as known so far.
    pub fn info(&self) -> StreamInfo {
        self.stats().info.clone()
    }

    /// The publisher sent `@setDataFrame onMetaData`.
    pub fn record_metadata(&self, metadata: &StreamMetadata) {
        self.stats().metadata(metadata);
    }

    /// A video tag of `len` bytes; `config` is the decoder configuration
    /// when the tag was a sequence header.
    pub fn record_video(&self, timestamp: u32, len: usize, config: Option<&AvcConfig>) {
        let mut stats = self.stats();
        if let Some(config) = config {
            stats.video_config(config);
        }
        stats.packet(timestamp, len, true, config.is_none());
    }

    /// An audio tag of `len` bytes; `config` as for [`LiveStream::record_video`].
    /// Records the measured keyframe interval, in seconds.
    pub fn record_keyframe_interval(&self, seconds: f64) {
        self.stats().info.keyframe_interval = Some(round2(seconds));
    }

    pub fn record_audio(&self, timestamp: u32, len: usize, config: Option<&AacConfig>) {
        let mut stats = self.stats();
        if let Some(config) = config {
            stats.audio_config(config);
        }
        stats.packet(timestamp, len, false, false);
    }

    pub fn has_players(&self) -> bool {
        self.packets.get().is_some_and(|p| p.receiver_count() > 0)
    }

    /// Sends to players, if any; without players nothing is kept.
    pub fn send(&self, packet: PlayPacket) {
        if self.has_players() {
            if let Some(packets) = self.packets.get() {
                let _ = packets.send(packet);
            }
        }
    }

    pub fn headers(&self) -> MutexGuard<'_, StreamHeaders> {
        self.headers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new player: the headers to send first and the live packet feed.
    pub fn subscribe(&self) -> (StreamHeaders, broadcast::Receiver<PlayPacket>) {
        let headers = self.headers().clone();
        let packets = self
            .packets
            .get_or_init(|| broadcast::channel(PLAYER_BACKLOG).0);
        (headers, packets.subscribe())
    }
}

enum Slot {
    Live(Arc<LiveStream>),
    Idle {
        history: StreamHistory,
        since: Instant,
        /// The same moment on the wall clock (compared with file mtimes).
        since_wall: SystemTime,
    },
}

/// Why a stream could not go live.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("stream {0} is already being published")]
    AlreadyLive(StreamKey),
    #[error("{0} streams are live, the maxPublishers limit")]
    TooManyPublishers(usize),
    #[error("stream {0}: {1}")]
    OwnershipUnavailable(StreamKey, String),
}

#[derive(Default)]
pub struct LiveStreams {
    slots: Mutex<HashMap<StreamKey, Slot>>,
}

impl LiveStreams {
    fn lock(&self) -> MutexGuard<'_, HashMap<StreamKey, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `key` live, if it is not already and fewer than `max_live`
    /// streams are; returns the history a previous publication left.
    pub fn claim(
        &self,
        key: &StreamKey,
        max_live: usize,
    ) -> Result<(Arc<LiveStream>, Option<StreamHistory>), ClaimError> {
        let mut slots = self.lock();
        if matches!(slots.get(key), Some(Slot::Live(_))) {
            return Err(ClaimError::AlreadyLive(key.clone()));
        }
        let live_count = slots
            .values()
            .filter(|s| matches!(s, Slot::Live(_)))
            .count();
        if live_count >= max_live {
            return Err(ClaimError::TooManyPublishers(live_count));
        }
        let live = Arc::new(LiveStream::new(key.clone()));
        match slots.insert(key.clone(), Slot::Live(live.clone())) {
            Some(Slot::Idle { history, .. }) => Ok((live, Some(history))),
            _ => Ok((live, None)),
        }
    }

    /// The publisher of `live` left; keep its history for a republish.
    pub fn release(&self, live: &Arc<LiveStream>, history: StreamHistory) {
        live.send(PlayPacket::End);
        let mut slots = self.lock();
        if matches!(slots.get(&live.key), Some(Slot::Live(l)) if Arc::ptr_eq(l, live)) {
            slots.insert(
                live.key.clone(),
                Slot::Idle {
                    history,
                    since: Instant::now(),
                    since_wall: SystemTime::now(),
                },
            );
        }
    }

    /// The publication of `live` ended without a history (it panicked or
    /// was never started): forget the key.
    fn abandon(&self, live: &Arc<LiveStream>) {
        live.send(PlayPacket::End);
        let mut slots = self.lock();
        if matches!(slots.get(&live.key), Some(Slot::Live(l)) if Arc::ptr_eq(l, live)) {
            slots.remove(&live.key);
        }
    }

    /// History recovered from disk at start-up.
    pub fn insert_idle(&self, key: StreamKey, history: StreamHistory) {
        self.lock().entry(key).or_insert(Slot::Idle {
            history,
            since: Instant::now(),
            since_wall: SystemTime::now(),
        });
    }

    /// Is `key` in the table (live or idle)?
    pub fn knows(&self, key: &StreamKey) -> bool {
        self.lock().contains_key(key)
    }

    /// Idle streams older than `ttl`, with when they went idle (wall clock).
    pub fn idle_expired(&self, now: Instant, ttl: Duration) -> Vec<(StreamKey, SystemTime)> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .filter_map(|(key, slot)| match slot {
                Slot::Idle {
                    since, since_wall, ..
                } if now.duration_since(*since) >= ttl => Some((key.clone(), *since_wall)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Drops `key` if it is (still) idle.
    pub fn forget_idle(&self, key: &StreamKey) {
        let mut slots = self.lock();
        if matches!(slots.get(key), Some(Slot::Idle { .. })) {
            slots.remove(key);
        }
    }

    /// Restarts the idle period of `key` (someone else wrote it since).
    pub fn refresh_idle(&self, key: &StreamKey) {
        if let Some(Slot::Idle {
            since, since_wall, ..
        }) = self.lock().get_mut(key)
        {
            *since = Instant::now();
            *since_wall = SystemTime::now();
        }
    }

    pub fn live(&self, key: &StreamKey) -> Option<Arc<LiveStream>> {
        match self.lock().get(key) {
            Some(Slot::Live(l)) => Some(l.clone()),
            _ => None,
        }
    }

    pub fn all_live(&self) -> Vec<Arc<LiveStream>> {
        let mut v: Vec<_> = self
            .lock()
            .values()
            .filter_map(|s| match s {
                Slot::Live(l) => Some(l.clone()),
                Slot::Idle { .. } => None,
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}

/// A live slot in the table, released on drop: back to idle with the
/// publication's history when it ended normally, forgotten if it panicked
/// or was never started, so a key never stays "live" forever.
pub struct LiveGuard {
    streams: Arc<LiveStreams>,
    live: Arc<LiveStream>,
    metrics: Arc<crate::metrics::Metrics>,
    history: Option<StreamHistory>,
}

impl LiveGuard {
    pub fn new(
        streams: Arc<LiveStreams>,
        live: Arc<LiveStream>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        use std::sync::atomic::Ordering;
        metrics.publishers.fetch_add(1, Ordering::Relaxed);
        Self {
            streams,
            live,
            metrics,
            history: None,
        }
    }

    pub fn live(&self) -> &Arc<LiveStream> {
        &self.live
    }

    /// The server's metrics, for the publication's own gauges.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The publication ended normally and left `history`.
    pub fn finish(mut self, history: StreamHistory) {
        self.history = Some(history);
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        match self.history.take() {
            Some(history) => self.streams.release(&self.live, history),
            None => self.streams.abandon(&self.live),
        }
        self.metrics.publishers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::PlaylistWindow;
    use oxcast_crds::PlaylistType;

    fn history() -> StreamHistory {
        StreamHistory {
            window: PlaylistWindow::new(PlaylistType::Live, 5),
            last_id: Some(7),
        }
    }

    #[test]
    fn second_publisher_is_refused_until_release() {
        let streams = LiveStreams::default();
        let key = StreamKey::parse("k").unwrap();
        let (first, prev) = streams.claim(&key, 10).unwrap();
        assert!(prev.is_none());
        assert_eq!(
            streams.claim(&key, 10).unwrap_err(),
            ClaimError::AlreadyLive(key.clone())
        );
        let other = StreamKey::parse("other").unwrap();
        assert_eq!(
            streams.claim(&other, 1).unwrap_err(),
            ClaimError::TooManyPublishers(1)
        );
        assert!(Arc::ptr_eq(&streams.live(&key).unwrap(), &first));
        streams.release(&first, history());
        assert!(streams.live(&key).is_none());
        let (_, prev) = streams.claim(&key, 10).unwrap();
        assert_eq!(prev.unwrap().last_id, Some(7));
    }

    #[test]
    fn a_dropped_guard_frees_the_key_even_on_panic() {
        let streams = Arc::new(LiveStreams::default());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let key = StreamKey::parse("k").unwrap();
        let (s2, m2, k2) = (streams.clone(), metrics.clone(), key.clone());
        let joined = std::thread::spawn(move || {
            let (live, _) = s2.claim(&k2, 10).unwrap();
            let _guard = LiveGuard::new(s2.clone(), live, m2);
            panic!("publication panics");
        })
        .join();
        assert!(joined.is_err());
        assert!(streams.live(&key).is_none());
        assert!(!streams.knows(&key));
        assert_eq!(
            metrics
                .publishers
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        let (live, _) = streams.claim(&key, 10).unwrap();
        LiveGuard::new(streams.clone(), live, metrics.clone()).finish(history());
        assert!(streams.knows(&key) && streams.live(&key).is_none());
        assert_eq!(
            streams.idle_expired(Instant::now(), Duration::ZERO).len(),
            1
        );
        streams.forget_idle(&key);
        assert!(!streams.knows(&key));
    }

    #[test]
    fn expiry_lists_only_old_idle_streams() {
        let streams = LiveStreams::default();
        let a = StreamKey::parse("a").unwrap();
        let b = StreamKey::parse("b").unwrap();
        streams.insert_idle(a.clone(), history());
        let _live_b = streams.claim(&b, 10).unwrap();
        let ttl = Duration::from_secs(3600);
        assert!(streams.idle_expired(Instant::now(), ttl).is_empty());
        let expired = streams.idle_expired(Instant::now() + Duration::from_secs(3601), ttl);
        assert_eq!(
            expired.into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
            vec![a.clone()]
        );
        // The janitor deletes the files (off the table's lock), then:
        streams.forget_idle(&a);
        assert!(!streams.knows(&a));
        assert!(streams.live(&b).is_some());
    }

    #[test]
    fn stats_measure_rates_from_media_timestamps() {
        let mut stats = StreamStats::default();
        let mut meta = StreamMetadata::new();
        meta.video_width = Some(640);
        meta.video_height = Some(360);
        meta.video_frame_rate = Some(25.0);
        stats.metadata(&meta);
        assert_eq!(stats.info.width, Some(640));
        assert_eq!(stats.info.frame_rate, Some(25.0));
        // 30 fps video of 1000 bytes a frame, 50 audio packets/s of 100 bytes.
        for i in 0..=90u32 {
            let ts = i * 1000 / 30;
            stats.packet(ts, 1000, true, true);
            if i % 3 == 0 {
                stats.packet(ts, 100, false, false);
                stats.packet(ts + 10, 100, false, false);
            }
        }
        let info = &stats.info;
        assert_eq!(info.frame_rate, Some(30.0));
        // 30 frames × 1000 B + ~20 audio packets × 100 B per second.
        let bitrate = info.bitrate.expect("measured");
        assert!((250_000..=265_000).contains(&bitrate), "{bitrate}");
    }

    #[test]
    fn stats_take_codecs_from_sequence_headers() {
        let mut stats = StreamStats::default();
        let avc = AvcConfig::parse(&crate::media::avc::tests::sample_record()).unwrap();
        stats.video_config(&avc);
        let codec = stats.info.video_codec.clone().expect("codec");
        assert!(codec.starts_with("avc1.") && codec.len() == 11, "{codec}");
        let aac = AacConfig::parse(&[0x11, 0x90]).unwrap(); // LC, 48 kHz, stereo
        stats.audio_config(&aac);
        assert_eq!(stats.info.audio_codec.as_deref(), Some("mp4a.40.2"));
        assert_eq!(stats.info.audio_sample_rate, Some(48_000));
        assert_eq!(stats.info.audio_channels, Some(2));
    }

    #[test]
    fn stats_restart_after_a_timestamp_jump() {
        let mut stats = StreamStats::default();
        stats.packet(0, 10, true, true);
        stats.packet(100_000, 10, true, true);
        assert_eq!(stats.info.bitrate, None, "a 100 s gap is not a window");
        stats.packet(102_000, 10, true, true);
        assert_eq!(stats.info.bitrate, Some(10 * 8 * 1000 / 2000));
    }
}
