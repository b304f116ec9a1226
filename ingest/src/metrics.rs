//! Process-wide counters, rendered in the Prometheus text exposition format
//! (version 0.0.4) at `/metrics`. Hand-rolled on atomics: a handful of
//! metrics, updated on hot paths, need nothing heavier.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The most buckets a [`Histogram`] has.
const MAX_BUCKETS: usize = 16;

/// Upper bounds (seconds) of a histogram's buckets.
pub trait Buckets {
    const BOUNDS: &'static [f64];
}

/// Storage latency: a local disk answers in well under a millisecond, a
/// struggling network volume in seconds.
#[derive(Debug)]
pub struct Latency;

impl Buckets for Latency {
    const BOUNDS: &'static [f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
}

/// From the media that closes a segment to the playlist listing it on
/// disk: a fraction of a millisecond on a local disk with an idle writer,
/// milliseconds under load, seconds when storage stalls.
#[derive(Debug)]
pub struct PublishLatency;

impl Buckets for PublishLatency {
    const BOUNDS: &'static [f64] = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
}

/// Segment durations: around `hls.fragment` (2 s by default) when the
/// publisher's keyframes fit it, up to 10 fragments when they do not, and
/// short ones at the end of a publication or before a discontinuity.
#[derive(Debug)]
pub struct SegmentLength;

impl Buckets for SegmentLength {
    const BOUNDS: &'static [f64] = &[
        0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0,
    ];
}

/// A histogram of durations with fixed buckets `B`.
#[derive(Debug)]
pub struct Histogram<B: Buckets> {
    buckets: [AtomicU64; MAX_BUCKETS],
    count: AtomicU64,
    sum_micros: AtomicU64,
    bounds: PhantomData<B>,
}

impl<B: Buckets> Default for Histogram<B> {
    fn default() -> Self {
        const { assert!(B::BOUNDS.len() <= MAX_BUCKETS) };
        Self {
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            bounds: PhantomData,
        }
    }
}

impl<B: Buckets> Histogram<B> {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in B::BOUNDS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        for (bound, bucket) in B::BOUNDS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count());
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {}", self.count());
    }
}

/// A counter split by one label.
#[derive(Debug, Default)]
pub struct LabeledCounter {
    values: Mutex<BTreeMap<&'static str, u64>>,
}

impl LabeledCounter {
    pub fn inc(&self, label: &'static str) {
        let mut v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        *v.entry(label).or_default() += 1;
    }

    pub fn get(&self, label: &str) -> u64 {
        let v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        v.get(label).copied().unwrap_or(0)
    }

    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().map(|(k, n)| (*k, *n)).collect()
    }
}

/// Every metric the server exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Streams whose current publication has listed a segment in its
    /// playlist (and still owns the stream): what viewers can watch now.
    pub live_streams: AtomicI64,
    /// RTMP connections currently open.
    pub rtmp_connections: AtomicI64,
    /// Publishers currently connected (publish accepted), whether or not
    /// their stream is live yet: `publishers - live_streams` are waiting
    /// for a first keyframe or sending nothing usable.
    pub publishers: AtomicI64,
    /// Connected publishers whose keyframe interval is longer than the
    /// fragment (their segments are longer than configured).
    pub publishers_long_keyframe_interval: AtomicI64,
    /// RTMP bytes received from clients.
    pub bytes_received: AtomicU64,
    /// Complete segments written and listed.
    pub segments_written: AtomicU64,
    /// Segments cut because the publisher's timestamps stopped advancing
    /// while media kept coming (see `hls::segmenter`).
    pub segments_cut_on_frozen_timestamps: AtomicU64,
    /// Segment or playlist writes that failed (disk full, permissions…).
    pub storage_errors: AtomicU64,
    /// Time spent in storage calls for one segment: creating, writing and
    /// renaming its file, and writing the playlist that lists it.
    pub segment_write_seconds: Histogram<Latency>,
    /// Media duration of each segment listed.
    pub segment_duration_seconds: Histogram<SegmentLength>,
    /// From the arrival of the media that closed a segment (the keyframe
    /// starting the next one) to the playlist listing it written: queueing
    /// behind other writes of the stream plus the storage calls.
    pub playlist_publish_latency_seconds: Histogram<PublishLatency>,
    /// Publish attempts refused, by reason.
    pub publish_rejections: LabeledCounter,
    /// HTTP responses by status class (`2xx`, `3xx`, `4xx`, `5xx`).
    pub http_responses: LabeledCounter,
    /// Kubernetes API requests made for stream ownership, by verb.
    pub ownership_api_requests: LabeledCounter,
    /// Times this replica lost its proof of ownership and stopped writing.
    pub ownership_fenced: AtomicU64,
    /// Segment bytes (plus bookkeeping) queued for storage, all streams.
    pub storage_backlog_bytes: AtomicI64,
    /// Segments produced but not written, by reason (`storage_backlog`:
    /// storage fell behind by more than the stream's backlog limit).
    pub segments_dropped: LabeledCounter,
}

/// One holder's share (0 or 1) of a gauge, such as a publication's of
/// `live_streams`: set while a condition holds, given back on drop (also
/// on a panic), so the gauge cannot drift.
#[derive(Debug)]
pub struct GaugeShare {
    metrics: Arc<Metrics>,
    gauge: fn(&Metrics) -> &AtomicI64,
    counted: bool,
}

impl GaugeShare {
    /// A share of `gauge`, not counted yet.
    pub fn new(metrics: Arc<Metrics>, gauge: fn(&Metrics) -> &AtomicI64) -> Self {
        Self {
            metrics,
            gauge,
            counted: false,
        }
    }

    /// Counts this holder in the gauge, or not.
    pub fn set(&mut self, counted: bool) {
        if counted != self.counted {
            self.counted = counted;
            let delta = if counted { 1 } else { -1 };
            (self.gauge)(&self.metrics).fetch_add(delta, Ordering::Relaxed);
        }
    }
}

impl Drop for GaugeShare {
    fn drop(&mut self) {
        self.set(false);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Metrics {
    /// The text exposition format served at `/metrics`.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        let gauges = [
            (
                "oxcast_live_streams",
                "Streams with a connected publisher and at least one segment listed by it.",
                &self.live_streams,
            ),
            (
                "oxcast_rtmp_connections",
                "Open RTMP connections.",
                &self.rtmp_connections,
            ),
            (
                "oxcast_publishers",
                "Connected publishers, live or not yet (no segment listed).",
                &self.publishers,
            ),
            (
                "oxcast_publishers_keyframe_interval_too_long",
                "Connected publishers whose keyframe interval is longer than hls.fragment (segments as long as their keyframe interval).",
                &self.publishers_long_keyframe_interval,
            ),
            (
                "oxcast_storage_backlog_bytes",
                "Segment bytes queued for storage and not yet written, all streams.",
                &self.storage_backlog_bytes,
            ),
        ];
        for (name, help, v) in gauges {
            header(&mut s, name, "gauge", help);
            let _ = writeln!(s, "{name} {}", v.load(Ordering::Relaxed));
        }
        let counters = [
            (
                "oxcast_rtmp_received_bytes_total",
                "RTMP bytes received.",
                &self.bytes_received,
            ),
            (
                "oxcast_segments_written_total",
                "HLS segments written.",
                &self.segments_written,
            ),
            (
                "oxcast_segments_cut_on_frozen_timestamps_total",
                "Segments cut by the length of their media because the publisher's timestamps stopped advancing.",
                &self.segments_cut_on_frozen_timestamps,
            ),
            (
                "oxcast_storage_errors_total",
                "Failed segment or playlist writes.",
                &self.storage_errors,
            ),
            (
                "oxcast_ownership_fenced_total",
                "Times this replica could not prove stream ownership and stopped writing.",
                &self.ownership_fenced,
            ),
        ];
        for (name, help, v) in counters {
            header(&mut s, name, "counter", help);
            let _ = writeln!(s, "{name} {}", v.load(Ordering::Relaxed));
        }
        self.segment_write_seconds.render(
            &mut s,
            "oxcast_segment_write_seconds",
            "Time spent in storage calls for one segment: creating, writing and renaming its file, and writing the playlist that lists it.",
        );
        self.segment_duration_seconds.render(
            &mut s,
            "oxcast_segment_duration_seconds",
            "Media duration of the segments listed.",
        );
        self.playlist_publish_latency_seconds.render(
            &mut s,
            "oxcast_playlist_publish_latency_seconds",
            "From the arrival of the media that closed a segment to the playlist listing it written to storage.",
        );
        let labeled = [
            (
                "oxcast_publish_rejections_total",
                "Refused publish attempts.",
                "reason",
                &self.publish_rejections,
            ),
            (
                "oxcast_http_responses_total",
                "HTTP responses.",
                "class",
                &self.http_responses,
            ),
            (
                "oxcast_ownership_api_requests_total",
                "Kubernetes API requests for stream ownership (Leases).",
                "verb",
                &self.ownership_api_requests,
            ),
            (
                "oxcast_segments_dropped_total",
                "Segments produced but not written, by reason.",
                "reason",
                &self.segments_dropped,
            ),
        ];
        for (name, help, label, counter) in labeled {
            header(&mut s, name, "counter", help);
            for (value, n) in counter.snapshot() {
                let _ = writeln!(s, "{name}{{{label}=\"{value}\"}} {n}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.live_streams.fetch_add(2, Ordering::Relaxed);
        m.publish_rejections.inc("invalid_name");
        m.publish_rejections.inc("invalid_name");
        m.segment_write_seconds.observe(Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("# TYPE oxcast_live_streams gauge\noxcast_live_streams 2\n"));
        assert!(text.contains("oxcast_publishers_keyframe_interval_too_long 0\n"));
        assert!(text.contains("oxcast_publish_rejections_total{reason=\"invalid_name\"} 2\n"));
        assert!(text.contains("oxcast_segment_write_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("oxcast_segment_write_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("oxcast_segment_write_seconds_count 1\n"));
    }

    #[test]
    fn publish_latency_resolves_fractions_of_a_millisecond() {
        let m = Metrics::default();
        m.playlist_publish_latency_seconds
            .observe(Duration::from_micros(300));
        m.playlist_publish_latency_seconds
            .observe(Duration::from_millis(7));
        let text = m.render();
        let name = "oxcast_playlist_publish_latency_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.00025\"}} 0\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.0005\"}} 1\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.005\"}} 1\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.01\"}} 2\n")));
        assert!(text.contains(&format!("{name}_sum 0.0073\n")));
    }

    #[test]
    fn segment_durations_get_buckets_past_one_second() {
        let m = Metrics::default();
        m.segment_duration_seconds
            .observe(Duration::from_millis(2_002));
        m.segment_duration_seconds.observe(Duration::from_secs(9));
        let text = m.render();
        assert!(text.contains("# TYPE oxcast_segment_duration_seconds histogram\n"));
        assert!(text.contains("oxcast_segment_duration_seconds_bucket{le=\"2\"} 0\n"));
        assert!(text.contains("oxcast_segment_duration_seconds_bucket{le=\"2.5\"} 1\n"));
        assert!(text.contains("oxcast_segment_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("oxcast_segment_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("oxcast_segment_duration_seconds_sum 11.002\n"));
        assert!(text.contains("oxcast_segment_write_seconds_bucket{le=\"10\"} 0\n"));
    }
}
