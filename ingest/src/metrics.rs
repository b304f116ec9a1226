//! Process-wide counters, rendered in the Prometheus text exposition format
//! (version 0.0.4) at `/metrics`. Hand-rolled on atomics: a handful of
//! metrics, updated on hot paths, need nothing heavier.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the segment write latency histogram buckets.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A histogram of durations with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
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
    /// Streams with a connected publisher.
    pub live_streams: AtomicI64,
    /// RTMP connections currently open.
    pub rtmp_connections: AtomicI64,
    /// Publishers currently connected.
    pub publishers: AtomicI64,
    /// Connected publishers whose keyframe interval is longer than the
    /// fragment (their segments are longer than configured).
    pub publishers_long_keyframe_interval: AtomicI64,
    /// RTMP bytes received from clients.
    pub bytes_received: AtomicU64,
    /// Complete segments written and listed.
    pub segments_written: AtomicU64,
    /// Segment or playlist writes that failed (disk full, permissions…).
    pub storage_errors: AtomicU64,
    /// Time from a segment's first byte to its playlist being replaced.
    pub segment_write_seconds: Histogram,
    /// Publish attempts refused, by reason.
    pub publish_rejections: LabeledCounter,
    /// HTTP responses by status class (`2xx`, `3xx`, `4xx`, `5xx`).
    pub http_responses: LabeledCounter,
    /// Kubernetes API requests made for stream ownership, by verb.
    pub ownership_api_requests: LabeledCounter,
    /// Times this replica lost its proof of ownership and stopped writing.
    pub ownership_fenced: AtomicU64,
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
                "Streams with a connected publisher.",
                &self.live_streams,
            ),
            (
                "oxcast_rtmp_connections",
                "Open RTMP connections.",
                &self.rtmp_connections,
            ),
            (
                "oxcast_publishers",
                "Connected publishers.",
                &self.publishers,
            ),
            (
                "oxcast_publishers_keyframe_interval_too_long",
                "Connected publishers whose keyframe interval is longer than hls.fragment (segments as long as their keyframe interval).",
                &self.publishers_long_keyframe_interval,
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
        let name = "oxcast_segment_write_seconds";
        header(
            &mut s,
            name,
            "histogram",
            "Time to write a segment and publish it in the playlist.",
        );
        let h = &self.segment_write_seconds;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            let _ = writeln!(
                s,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", h.count());
        let _ = writeln!(
            s,
            "{name}_sum {}",
            h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "{name}_count {}", h.count());
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
}
