//! The RTMP load generator behind `rtmp-load`: one process replays a real
//! capture (an FLV file) to N RTMP connections at real-time pace.
//!
//! - [`Capture`]: the FLV, split into metadata, sequence headers and the
//!   media tags that are looped, with the loop length that keeps every
//!   track's timestamps increasing across loops.
//! - [`EncodeSpec`]: `WxH@FPS:BITRATE`, an input encoded once by ffmpeg and
//!   cached, keyed by its parameters.
//! - [`run_connection`]: one publisher, paced against the wall clock; it
//!   records how late each message went out ([`LagHistogram`]).
//! - [`Report`]: the JSON summary.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::media::fixtures::{aac_args, lavfi_audio, lavfi_video, video_args, FFMPEG_QUIET};
use crate::rtmp_client::publisher::{self, RtmpUrl, CHUNK_SIZE, CSID_AUDIO, CSID_DATA, CSID_VIDEO};
use crate::rtmp_client::{amf0, write_message, AMF0_DATA};

/// FLV tag types.
pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

/// Why an input cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not an FLV file")]
    NotFlv(PathBuf),
    #[error("{path}: {what}")]
    Malformed { path: PathBuf, what: String },
    #[error("bad --encode {spec:?}: {why} (expected WxH@FPS:BITRATE, e.g. 1280x720@30:3M)")]
    Spec { spec: String, why: String },
    #[error("encoding with ffmpeg failed: {0}")]
    Encode(String),
}

/// One FLV tag: its type, timestamp (ms, relative to the first tag) and body.
#[derive(Debug, Clone)]
pub struct Tag {
    pub kind: u8,
    pub timestamp: u32,
    pub data: Arc<[u8]>,
}

/// A capture ready to be replayed.
#[derive(Debug, Clone)]
pub struct Capture {
    pub path: PathBuf,
    /// `@setDataFrame` + the file's `onMetaData`, as an AMF0 data payload.
    pub metadata: Option<Vec<u8>>,
    /// The AVC and AAC sequence headers (sent once, before the tags).
    pub headers: Vec<Tag>,
    /// The media tags of one loop, in file order.
    pub tags: Vec<Tag>,
    /// Timestamp offset between two loops, in ms: every track's next loop
    /// starts after its last tag plus one frame.
    pub loop_ms: u32,
    /// Payload bytes of one loop (what the bit rate is computed from).
    pub loop_bytes: u64,
}

fn malformed(path: &Path, what: impl Into<String>) -> InputError {
    InputError::Malformed {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Whether a tag body is a sequence header (AVC/HEVC config, AAC config).
fn is_sequence_header(kind: u8, data: &[u8]) -> bool {
    match kind {
        TAG_VIDEO => data.len() >= 2 && (data[0] & 0x0f) == 7 && data[1] == 0,
        TAG_AUDIO => data.len() >= 2 && (data[0] >> 4) == 10 && data[1] == 0,
        _ => false,
    }
}

/// An AVC end-of-sequence tag (FFmpeg writes one at the end of a file);
/// it must not be replayed in the middle of a loop.
fn is_end_of_sequence(kind: u8, data: &[u8]) -> bool {
    kind == TAG_VIDEO && data.len() >= 2 && (data[0] & 0x0f) == 7 && data[1] == 2
}

/// The median gap between consecutive timestamps (one frame), or `None`.
fn frame_ms(timestamps: &[u32]) -> Option<u32> {
    let mut gaps: Vec<u32> = timestamps
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .filter(|g| *g > 0)
        .collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_unstable();
    Some(gaps[gaps.len() / 2])
}

impl Capture {
    /// Reads and splits an FLV file.
    pub fn load(path: &Path) -> Result<Capture, InputError> {
        let bytes = std::fs::read(path).map_err(|source| InputError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Capture::parse(path, &bytes)
    }

    /// Splits FLV `bytes` (`path` is for messages).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Capture, InputError> {
        if bytes.len() < 9 || &bytes[..3] != b"FLV" {
            return Err(InputError::NotFlv(path.to_path_buf()));
        }
        let header_len = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
        let mut pos = header_len + 4; // + PreviousTagSize0
        let mut metadata = None;
        let mut headers: Vec<Tag> = Vec::new();
        let mut tags: Vec<Tag> = Vec::new();
        let mut first_ts: Option<u32> = None;
        while pos + 11 <= bytes.len() {
            let h = &bytes[pos..pos + 11];
            let kind = h[0] & 0x1f;
            let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
            let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
            let start = pos + 11;
            let end = start + size;
            if end > bytes.len() {
                // A truncated last tag (a capture cut short): ignore it.
                break;
            }
            let data = &bytes[start..end];
            pos = end + 4;
            match kind {
                TAG_SCRIPT if metadata.is_none() => {
                    let mut payload = amf0::string("@setDataFrame");
                    payload.extend_from_slice(data);
                    metadata = Some(payload);
                }
                TAG_AUDIO | TAG_VIDEO if data.is_empty() => {}
                TAG_AUDIO | TAG_VIDEO if is_sequence_header(kind, data) => {
                    // The first header of each track; a later one (a
                    // mid-stream change) stays in the loop.
                    if headers.iter().any(|t| t.kind == kind) {
                        let base = *first_ts.get_or_insert(ts);
                        tags.push(Tag {
                            kind,
                            timestamp: ts.saturating_sub(base),
                            data: data.into(),
                        });
                    } else {
                        headers.push(Tag {
                            kind,
                            timestamp: 0,
                            data: data.into(),
                        });
                    }
                }
                TAG_AUDIO | TAG_VIDEO if is_end_of_sequence(kind, data) => {}
                TAG_AUDIO | TAG_VIDEO => {
                    let base = *first_ts.get_or_insert(ts);
                    tags.push(Tag {
                        kind,
                        timestamp: ts.saturating_sub(base),
                        data: data.into(),
                    });
                }
                _ => {}
            }
        }
        if tags.is_empty() {
            return Err(malformed(path, "no audio or video tags"));
        }
        let mut loop_ms = 0u32;
        for kind in [TAG_AUDIO, TAG_VIDEO] {
            let ts: Vec<u32> = tags
                .iter()
                .filter(|t| t.kind == kind)
                .map(|t| t.timestamp)
                .collect();
            if let Some(last) = ts.last() {
                let frame = frame_ms(&ts).unwrap_or(40);
                loop_ms = loop_ms.max(last + frame);
            }
        }
        if loop_ms < 100 {
            return Err(malformed(
                path,
                format!("only {loop_ms} ms of media: too short to loop"),
            ));
        }
        let loop_bytes = tags.iter().map(|t| t.data.len() as u64).sum();
        Ok(Capture {
            path: path.to_path_buf(),
            metadata,
            headers,
            tags,
            loop_ms,
            loop_bytes,
        })
    }

    /// The capture's average bit rate in kbit/s (payload only).
    pub fn kbps(&self) -> f64 {
        self.loop_bytes as f64 * 8.0 / f64::from(self.loop_ms)
    }
}

/// An input to encode: `WxH@FPS:BITRATE` plus capture length and GOP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EncodeSpec {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Total bit rate in kbit/s (video gets it minus the audio's).
    pub kbps: u32,
    /// Length of the capture in seconds (it is looped).
    pub seconds: u32,
    /// Keyframe interval in seconds.
    pub gop_seconds: u32,
}

/// Audio bit rate of an encoded capture (kbit/s), as the ingest benchmark.
const AUDIO_KBPS: u32 = 160;
/// Audio bit rate for small encodes (total below 600 kbit/s).
const SMALL_AUDIO_KBPS: u32 = 64;

impl EncodeSpec {
    /// Parses `WxH@FPS:BITRATE` (BITRATE like `3M`, `3000k` or `3000000`).
    pub fn parse(spec: &str, seconds: u32, gop_seconds: u32) -> Result<EncodeSpec, InputError> {
        let bad = |why: &str| InputError::Spec {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let (size, rest) = spec.split_once('@').ok_or_else(|| bad("no @"))?;
        let (fps, rate) = rest.split_once(':').ok_or_else(|| bad("no :"))?;
        let (w, h) = size.split_once('x').ok_or_else(|| bad("size is not WxH"))?;
        let num = |s: &str, what: &str| {
            s.parse::<u32>()
                .map_err(|_| bad(&format!("{what} {s:?} is not a number")))
        };
        let (width, height, fps) = (num(w, "width")?, num(h, "height")?, num(fps, "fps")?);
        let rate_lower = rate.to_ascii_lowercase();
        let kbps = if let Some(m) = rate_lower.strip_suffix('m') {
            m.parse::<f64>()
                .map(|v| (v * 1000.0).round() as u32)
                .map_err(|_| bad("bad bit rate"))?
        } else if let Some(k) = rate_lower.strip_suffix('k') {
            num(k, "bit rate")?
        } else {
            num(&rate_lower, "bit rate")? / 1000
        };
        if width < 16 || height < 16 || width % 2 == 1 || height % 2 == 1 {
            return Err(bad("width and height must be even and at least 16"));
        }
        if !(1..=120).contains(&fps) {
            return Err(bad("fps must be 1..=120"));
        }
        if kbps < 100 {
            return Err(bad("bit rate must be at least 100k"));
        }
        if seconds < 1 || gop_seconds < 1 {
            return Err(bad("capture length and GOP must be at least 1 s"));
        }
        Ok(EncodeSpec {
            width,
            height,
            fps,
            kbps,
            seconds,
            gop_seconds,
        })
    }

    fn audio_kbps(&self) -> u32 {
        if self.kbps < 600 {
            SMALL_AUDIO_KBPS
        } else {
            AUDIO_KBPS
        }
    }

    /// The ffmpeg arguments (before the output file). Noise makes the
    /// encoder spend the bits; CBR with filler keeps the rate steady, like
    /// a broadcaster's CBR setting (the same recipe as bench/ingest.sh).
    pub fn ffmpeg_args(&self) -> Vec<String> {
        let video = self.kbps.saturating_sub(self.audio_kbps()).max(50);
        let size = format!("{}x{}", self.width, self.height);
        let v = format!("{video}k");
        let mut args: Vec<String> = FFMPEG_QUIET.iter().map(|s| s.to_string()).collect();
        args.extend(lavfi_video(&size, self.fps));
        args.extend(lavfi_audio(48_000));
        let seconds = self.seconds.to_string();
        args.extend(
            ["-t", &seconds, "-vf", "noise=alls=12:allf=t"]
                .iter()
                .map(|s| s.to_string()),
        );
        args.extend(video_args(&size, self.fps * self.gop_seconds));
        args.extend(
            [
                "-b:v",
                &v,
                "-minrate",
                &v,
                "-maxrate",
                &v,
                "-bufsize",
                &v,
                "-x264-params",
                "nal-hrd=cbr",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.extend(aac_args("aac_low", 2, 48_000, self.audio_kbps()));
        args.extend(["-f".to_string(), "flv".to_string()]);
        args
    }

    /// The cache file name, keyed by the parameters and the exact recipe.
    pub fn file_name(&self) -> String {
        let mut hasher = DefaultHasher::new();
        self.ffmpeg_args().hash(&mut hasher);
        format!(
            "{}x{}p{}-{}k-{}s-gop{}-{:016x}.flv",
            self.width,
            self.height,
            self.fps,
            self.kbps,
            self.seconds,
            self.gop_seconds,
            hasher.finish()
        )
    }

    /// The cached capture, encoding it first when missing. The file is
    /// written under a temporary name and renamed into place, so concurrent
    /// runs never read half a file.
    pub fn ensure(&self, cache: &Path) -> Result<PathBuf, InputError> {
        let path = cache.join(self.file_name());
        if path.exists() {
            return Ok(path);
        }
        std::fs::create_dir_all(cache)
            .map_err(|e| InputError::Encode(format!("creating {}: {e}", cache.display())))?;
        let tmp = cache.join(format!(".{}.{}.tmp", self.file_name(), std::process::id()));
        let out = Command::new("ffmpeg")
            .args(self.ffmpeg_args())
            .arg(&tmp)
            .output()
            .map_err(|e| InputError::Encode(format!("running ffmpeg: {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(InputError::Encode(format!(
                "ffmpeg {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::rename(&tmp, &path)
            .map_err(|e| InputError::Encode(format!("moving into {}: {e}", path.display())))?;
        Ok(path)
    }
}

/// Where encoded captures are cached: `$CARGO_TARGET_DIR/oxcast-load` when
/// that is set, else `~/.cache/oxcast/load`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        if dir.is_absolute() {
            return dir.join("oxcast-load");
        }
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("oxcast").join("load")
}

/// A log-linear histogram of durations in microseconds: exact below 64 µs,
/// then 32 buckets per power of two (≤ 3 % relative error). Small enough
/// for one per connection; merged at the end.
#[derive(Debug, Clone)]
pub struct LagHistogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

const SUB_BITS: u32 = 5;
const LINEAR: u64 = 64;
/// Larger lags (12.7 days) are counted in the last bucket.
const MAX_US: u64 = (1 << 40) - 1;

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            counts: vec![0; Self::bucket(MAX_US) + 1],
            total: 0,
            max_us: 0,
        }
    }
}

impl LagHistogram {
    fn bucket(us: u64) -> usize {
        let us = us.min(MAX_US);
        if us < LINEAR {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros(); // ≥ 6
        let sub = (us >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        (LINEAR + u64::from(exp - 6) * (1 << SUB_BITS) + sub) as usize
    }

    /// The upper bound of bucket `i` (what a percentile reports).
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < LINEAR {
            return i;
        }
        let exp = (i - LINEAR) / (1 << SUB_BITS) + 6;
        let sub = (i - LINEAR) % (1 << SUB_BITS);
        let width = 1u64 << (exp - u64::from(SUB_BITS));
        (1u64 << exp) + sub * width + (width - 1)
    }

    pub fn record(&mut self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &LagHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }

    /// The `q` quantile (0..=1), never above the maximum.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_micros(Self::upper(i).min(self.max_us));
            }
        }
        self.max()
    }

    pub fn summary(&self) -> LagSummary {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        LagSummary {
            samples: self.total,
            p50_ms: ms(self.quantile(0.5)),
            p99_ms: ms(self.quantile(0.99)),
            max_ms: ms(self.max()),
        }
    }
}

/// Quantiles of a lag histogram, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LagSummary {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What one connection is asked to do.
#[derive(Debug, Clone)]
pub struct ConnectionPlan {
    pub url: RtmpUrl,
    pub key: String,
    /// When it connects (connections are spread over the ramp).
    pub start: Instant,
    /// How much media time it sends.
    pub duration: Duration,
    pub connect_timeout: Duration,
    /// Messages due within this window of the one being sent go out in the
    /// same write (zero: one write per due time, as an encoder sends).
    pub batch: Duration,
}

/// What one connection did.
#[derive(Debug, Clone, Default)]
pub struct ConnectionResult {
    pub key: String,
    pub error: Option<String>,
    /// Whether it published at all (the handshake and publish succeeded).
    pub published: bool,
    pub bytes_sent: u64,
    pub messages_sent: u64,
    /// Socket writes (messages already due go out together).
    pub writes: u64,
    /// How late each message went out against its due time (media
    /// timestamp on the wall clock since publish start): the connection's
    /// send lag, whoever caused it.
    pub lag: LagHistogram,
    /// The part of the lag the generator caused: the time from when a
    /// message was due (or the previous write finished, if later) to when
    /// its write started. A saturated generator shows here; a server that
    /// stops reading shows in `blocked` instead.
    pub generator_lag: LagHistogram,
    /// Time spent inside socket writes (backpressure from the server).
    pub blocked: Duration,
}

/// Publishes `capture` on one connection until `plan.duration` of media
/// has been sent (looping the capture with continuing timestamps), then
/// unpublishes and closes.
pub async fn run_connection(capture: Arc<Capture>, plan: ConnectionPlan) -> ConnectionResult {
    let mut result = ConnectionResult {
        key: plan.key.clone(),
        ..Default::default()
    };
    tokio::time::sleep_until(plan.start).await;
    let publishing = match publisher::publish(&plan.url, &plan.key, plan.connect_timeout).await {
        Ok(p) => p,
        Err(e) => {
            result.error = Some(format!("publish: {e}"));
            return result;
        }
    };
    result.published = true;
    let stream_id = publishing.stream_id;
    let mut writer = publishing.writer;
    let mut drain = tokio::spawn(publisher::drain(publishing.reader));
    let outcome = send_media(
        &capture,
        &plan,
        stream_id,
        &mut writer,
        &mut drain,
        &mut result,
    )
    .await;
    match outcome {
        Ok(()) => {
            let bye = publisher::unpublish_messages(&plan.key, stream_id);
            let _ = writer.write_all(&bye).await;
            let _ = writer.shutdown().await;
            // The server closes after deleteStream or on our FIN; don't wait
            // long for it.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut drain).await;
        }
        Err(e) => result.error = Some(e),
    }
    drain.abort();
    result
}

async fn send_media(
    capture: &Capture,
    plan: &ConnectionPlan,
    stream_id: u32,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    drain: &mut tokio::task::JoinHandle<std::io::Result<()>>,
    result: &mut ConnectionResult,
) -> Result<(), String> {
    let mut buf = Vec::with_capacity(64 * 1024);
    if let Some(meta) = &capture.metadata {
        write_message(
            &mut buf, CSID_DATA, 0, AMF0_DATA, stream_id, meta, CHUNK_SIZE,
        );
    }
    for tag in &capture.headers {
        let csid = if tag.kind == TAG_VIDEO {
            CSID_VIDEO
        } else {
            CSID_AUDIO
        };
        write_message(
            &mut buf, csid, 0, tag.kind, stream_id, &tag.data, CHUNK_SIZE,
        );
    }
    let write_err = |e: std::io::Error| format!("write: {e}");
    writer.write_all(&buf).await.map_err(write_err)?;
    result.bytes_sent += buf.len() as u64;
    result.messages_sent +=
        (capture.headers.len() + usize::from(capture.metadata.is_some())) as u64;

    let t0 = Instant::now();
    let end_ms = u64::try_from(plan.duration.as_millis()).unwrap_or(u64::MAX);
    let mut prev_write_end = t0;
    let per_loop = capture.tags.len() as u64;
    // Message k of the endless replay: loop k / len, tag k % len.
    let nth = |k: u64| {
        let tag = &capture.tags[(k % per_loop) as usize];
        let media_ms = k / per_loop * u64::from(capture.loop_ms) + u64::from(tag.timestamp);
        (media_ms, tag)
    };
    let mut next: u64 = 0;
    loop {
        let (media_ms, _) = nth(next);
        if media_ms >= end_ms {
            break;
        }
        let due = t0 + Duration::from_millis(media_ms);
        if Instant::now() < due {
            tokio::time::sleep_until(due).await;
        }
        if drain.is_finished() {
            return Err("the server closed the connection".to_string());
        }
        let start = Instant::now();
        // This message, and with it every later one already due (or due
        // within the batch window), in one write.
        buf.clear();
        let mut batched = 0u64;
        loop {
            let (media_ms, tag) = nth(next);
            if media_ms >= end_ms {
                break;
            }
            let due = t0 + Duration::from_millis(media_ms);
            if batched > 0 && due > start + plan.batch {
                break;
            }
            result.lag.record(start.saturating_duration_since(due));
            result
                .generator_lag
                .record(start.saturating_duration_since(due.max(prev_write_end)));
            let csid = if tag.kind == TAG_VIDEO {
                CSID_VIDEO
            } else {
                CSID_AUDIO
            };
            // RTMP timestamps are 32 bits and wrap (after 49.7 days).
            let ts = (media_ms & 0xffff_ffff) as u32;
            write_message(
                &mut buf, csid, ts, tag.kind, stream_id, &tag.data, CHUNK_SIZE,
            );
            next += 1;
            batched += 1;
        }
        writer.write_all(&buf).await.map_err(write_err)?;
        prev_write_end = Instant::now();
        result.blocked += prev_write_end - start;
        result.bytes_sent += buf.len() as u64;
        result.messages_sent += batched;
        result.writes += 1;
    }
    Ok(())
}

/// Processor time of this process (user and system).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// `self − earlier`, per field.
    pub fn since(&self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// Processor time this process has used so far (`getrusage`).
pub fn process_cpu_time() -> CpuTime {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer; getrusage only writes it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return CpuTime::default();
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    CpuTime {
        user: tv(usage.ru_utime),
        system: tv(usage.ru_stime),
    }
}

/// The generator's own CPU use.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuReport {
    /// User + system CPU seconds of this process while the connections ran.
    pub seconds: f64,
    pub user_seconds: f64,
    /// System time includes the loopback TCP stack's work on sends.
    pub system_seconds: f64,
    /// Of one core, over the run's wall time.
    pub percent: f64,
    /// `percent` divided by the streams that published.
    pub percent_per_stream: f64,
}

/// A connection that failed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    pub key: String,
    pub published: bool,
    pub error: String,
}

/// The JSON report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub input: String,
    pub input_kbps: f64,
    pub loop_seconds: f64,
    pub streams: usize,
    pub prefix: String,
    pub duration_seconds: f64,
    pub wall_seconds: f64,
    pub published: usize,
    pub failed: Vec<Failure>,
    pub bytes_sent: u64,
    pub messages_sent: u64,
    pub writes: u64,
    /// Sent kbit/s per published stream, over its media duration.
    pub kbps_per_stream: f64,
    /// Send lag of every message of every connection.
    pub lag: LagSummary,
    /// The generator's part of the lag (see [`ConnectionResult`]).
    pub generator_lag: LagSummary,
    /// Quantiles over connections of each connection's worst lag (ms).
    pub connection_max_lag: LagSummary,
    /// Connections whose lag exceeded `max_lag_ms` at some point.
    pub connections_behind: usize,
    /// Total time writes waited on the server, summed over connections.
    pub blocked_seconds: f64,
    pub cpu: CpuReport,
    pub max_lag_ms: f64,
    /// False when the generator itself fell behind by more than
    /// `max_lag_ms`: the run measured the generator, not the server.
    pub valid: bool,
    pub invalid_reason: Option<String>,
}

/// Everything [`summarize`] needs besides the connection results.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub url: String,
    pub prefix: String,
    pub duration: Duration,
    pub wall: Duration,
    pub cpu: CpuTime,
    pub max_lag: Duration,
}

/// Builds the report of a run.
pub fn summarize(capture: &Capture, info: &RunInfo, results: &[ConnectionResult]) -> Report {
    let mut lag = LagHistogram::default();
    let mut generator_lag = LagHistogram::default();
    let mut connection_max = LagHistogram::default();
    let mut failed = Vec::new();
    let mut blocked = Duration::ZERO;
    let mut behind = 0;
    for r in results {
        lag.merge(&r.lag);
        generator_lag.merge(&r.generator_lag);
        blocked += r.blocked;
        if r.lag.count() > 0 {
            connection_max.record(r.lag.max());
            if r.lag.max() > info.max_lag {
                behind += 1;
            }
        }
        if let Some(e) = &r.error {
            failed.push(Failure {
                key: r.key.clone(),
                published: r.published,
                error: e.clone(),
            });
        }
    }
    let published = results.iter().filter(|r| r.published).count();
    let bytes_sent = results.iter().map(|r| r.bytes_sent).sum();
    let wall = info.wall.as_secs_f64().max(1e-9);
    let percent = info.cpu.total().as_secs_f64() / wall * 100.0;
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    let (valid, invalid_reason) = if generator_lag.max() > info.max_lag {
        (
            false,
            Some(format!(
                "the generator fell behind by {:.1} ms (more than --max-lag {} ms)",
                generator_lag.max().as_secs_f64() * 1e3,
                info.max_lag.as_millis()
            )),
        )
    } else {
        (true, None)
    };
    Report {
        url: info.url.clone(),
        input: capture.path.display().to_string(),
        input_kbps: round3(capture.kbps()),
        loop_seconds: f64::from(capture.loop_ms) / 1e3,
        streams: results.len(),
        prefix: info.prefix.clone(),
        duration_seconds: info.duration.as_secs_f64(),
        wall_seconds: round3(info.wall.as_secs_f64()),
        published,
        failed,
        bytes_sent,
        messages_sent: results.iter().map(|r| r.messages_sent).sum(),
        writes: results.iter().map(|r| r.writes).sum(),
        kbps_per_stream: if published == 0 {
            0.0
        } else {
            round3(
                bytes_sent as f64 * 8.0
                    / 1e3
                    / info.duration.as_secs_f64().max(1e-9)
                    / published as f64,
            )
        },
        lag: lag.summary(),
        generator_lag: generator_lag.summary(),
        connection_max_lag: connection_max.summary(),
        connections_behind: behind,
        blocked_seconds: round3(blocked.as_secs_f64()),
        cpu: CpuReport {
            seconds: round3(info.cpu.total().as_secs_f64()),
            user_seconds: round3(info.cpu.user.as_secs_f64()),
            system_seconds: round3(info.cpu.system.as_secs_f64()),
            percent: round3(percent),
            percent_per_stream: if published == 0 {
                0.0
            } else {
                round3(percent / published as f64 * 1000.0) / 1000.0
            },
        },
        max_lag_ms: info.max_lag.as_secs_f64() * 1e3,
        valid,
        invalid_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flv_tag(kind: u8, ts: u32, data: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        t.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        t.extend_from_slice(&ts.to_be_bytes()[1..]);
        t.push((ts >> 24) as u8);
        t.extend_from_slice(&[0, 0, 0]);
        t.extend_from_slice(data);
        t.extend_from_slice(&(data.len() as u32 + 11).to_be_bytes());
        t
    }

    fn flv(tags: &[Vec<u8>]) -> Vec<u8> {
        let mut f = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        for t in tags {
            f.extend_from_slice(t);
        }
        f
    }

    #[test]
    fn splits_an_flv_and_computes_the_loop() {
        let mut meta = amf0::string("onMetaData");
        meta.extend(amf0::null());
        let mut tags = vec![
            flv_tag(TAG_SCRIPT, 0, &meta),
            flv_tag(TAG_VIDEO, 0, &[0x17, 0, 0, 0, 0, 1]),
            flv_tag(TAG_AUDIO, 0, &[0xaf, 0, 0x12, 0x10]),
        ];
        for i in 0..30u32 {
            let key = if i % 10 == 0 { 0x17 } else { 0x27 };
            tags.push(flv_tag(TAG_VIDEO, 1000 + i * 40, &[key, 1, 0, 0, 0, 9]));
            tags.push(flv_tag(TAG_AUDIO, 1000 + i * 40, &[0xaf, 1, 9]));
        }
        tags.push(flv_tag(TAG_VIDEO, 1000 + 29 * 40, &[0x17, 2, 0, 0, 0]));
        let c = Capture::parse(Path::new("x.flv"), &flv(&tags)).expect("parse");
        assert!(c
            .metadata
            .as_deref()
            .is_some_and(|m| m.starts_with(&amf0::string("@setDataFrame"))));
        assert_eq!(c.headers.len(), 2);
        // End of sequence dropped, timestamps rebased on the first media tag.
        assert_eq!(c.tags.len(), 60);
        assert_eq!(c.tags[0].timestamp, 0);
        assert_eq!(c.loop_ms, 30 * 40);
    }

    #[test]
    fn rejects_what_is_not_flv() {
        assert!(matches!(
            Capture::parse(Path::new("x"), b"GIF89a....."),
            Err(InputError::NotFlv(_))
        ));
    }

    #[test]
    fn parses_encode_specs() {
        let s = EncodeSpec::parse("1280x720@30:3M", 60, 2).expect("spec");
        assert_eq!((s.width, s.height, s.fps, s.kbps), (1280, 720, 30, 3000));
        assert_eq!(
            EncodeSpec::parse("320x240@25:400k", 4, 1)
                .expect("spec")
                .kbps,
            400
        );
        assert_eq!(
            EncodeSpec::parse("320x240@25:400000", 4, 1)
                .expect("spec")
                .kbps,
            400
        );
        assert!(EncodeSpec::parse("320x240:400k", 4, 1).is_err());
        assert!(EncodeSpec::parse("321x240@25:400k", 4, 1).is_err());
        let a = EncodeSpec::parse("320x240@25:400k", 4, 1).expect("spec");
        let b = EncodeSpec::parse("320x240@25:400k", 5, 1).expect("spec");
        assert_ne!(a.file_name(), b.file_name());
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = LagHistogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).as_secs_f64() * 1e3;
        let p99 = h.quantile(0.99).as_secs_f64() * 1e3;
        assert!((48.0..=52.0).contains(&p50), "{p50}");
        assert!((96.0..=100.0).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_millis(100));
        for us in [0u64, 63, 64, 65, 1000, 123_456, 10_000_000_000, MAX_US] {
            let b = LagHistogram::bucket(us);
            assert!(LagHistogram::upper(b) >= us, "{us}");
            assert!(
                LagHistogram::upper(b) as f64 <= us as f64 * 1.04 + 1.0,
                "{us}"
            );
        }
    }
}
