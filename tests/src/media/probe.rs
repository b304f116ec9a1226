//! ffprobe / ffmpeg based inspection of produced media.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::process::{run, run_ok};

const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// One elementary stream as ffprobe reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub index: u64,
    pub codec_type: String,
    pub codec_name: String,
    pub profile: Option<String>,
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub sample_rate: Option<u64>,
    pub channels: Option<u64>,
}

/// One demuxed packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub stream_index: u64,
    pub codec_type: String,
    pub pts: Option<i64>,
    pub dts: Option<i64>,
    pub pts_time: Option<f64>,
    pub dts_time: Option<f64>,
    pub flags: String,
}

impl Packet {
    pub fn is_key(&self) -> bool {
        self.flags.contains('K')
    }
}

/// Streams, container duration and (optionally) packets of one file.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub streams: Vec<StreamInfo>,
    pub duration: Option<f64>,
    pub packets: Vec<Packet>,
}

impl Probe {
    pub fn stream(&self, codec_type: &str) -> Option<&StreamInfo> {
        self.streams.iter().find(|s| s.codec_type == codec_type)
    }

    pub fn packets_of<'a>(&'a self, codec_type: &'a str) -> impl Iterator<Item = &'a Packet> {
        self.packets
            .iter()
            .filter(move |p| p.codec_type == codec_type)
    }
}

fn num_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn num_i64(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn num_f64(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Probes streams and duration; with `packets`, every packet too.
pub fn probe(path: &Path, packets: bool) -> Result<Probe, String> {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-of",
        "json",
        "-show_streams",
        "-show_format",
    ]);
    if packets {
        cmd.args([
            "-show_entries",
            "packet=stream_index,pts,dts,pts_time,dts_time,flags",
        ]);
        cmd.arg("-show_packets");
    }
    cmd.arg(path);
    let out = run_ok(cmd, PROBE_TIMEOUT)?;
    let json: Value = serde_json::from_str(&out)
        .map_err(|e| format!("ffprobe {} gave bad JSON: {e}", path.display()))?;
    let mut probe = Probe::default();
    for s in json["streams"].as_array().into_iter().flatten() {
        probe.streams.push(StreamInfo {
            index: num_u64(&s["index"]).unwrap_or_default(),
            codec_type: text(&s["codec_type"]).unwrap_or_default(),
            codec_name: text(&s["codec_name"]).unwrap_or_default(),
            profile: text(&s["profile"]),
            width: num_u64(&s["width"]),
            height: num_u64(&s["height"]),
            sample_rate: num_u64(&s["sample_rate"]),
            channels: num_u64(&s["channels"]),
        });
    }
    probe.duration = num_f64(&json["format"]["duration"]);
    for p in json["packets"].as_array().into_iter().flatten() {
        let stream_index = num_u64(&p["stream_index"]).unwrap_or_default();
        let codec_type = probe
            .streams
            .iter()
            .find(|s| s.index == stream_index)
            .map(|s| s.codec_type.clone())
            .unwrap_or_default();
        probe.packets.push(Packet {
            stream_index,
            codec_type,
            pts: num_i64(&p["pts"]),
            dts: num_i64(&p["dts"]),
            pts_time: num_f64(&p["pts_time"]),
            dts_time: num_f64(&p["dts_time"]),
            flags: text(&p["flags"]).unwrap_or_default(),
        });
    }
    Ok(probe)
}

/// Decodes `input` (a file or playlist path/URL) completely with
/// `ffmpeg -v error … -f null -` and returns everything ffmpeg printed plus a
/// note on a non-zero exit. An empty string means a clean decode.
pub fn decode_errors(input: &str) -> Result<String, String> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-i",
        input,
        "-f",
        "null",
        "-",
    ]);
    let done = run(cmd, Duration::from_secs(120))?;
    let mut report = format!("{}{}", done.stdout, done.stderr);
    if !done.success() {
        report.push_str(&format!("\n[ffmpeg exit status {:?}]", done.status));
    }
    Ok(report)
}

/// Width × height of every decoded video frame of `input`, in order.
pub fn frame_sizes(input: &str) -> Result<Vec<(u64, u64)>, String> {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-show_entries",
        "frame=width,height",
        "-of",
        "csv=p=0",
        input,
    ]);
    let out = run_ok(cmd, Duration::from_secs(120))?;
    let mut sizes = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split(',').map(str::trim);
        let w = it.next().and_then(|v| v.parse().ok());
        let h = it.next().and_then(|v| v.parse().ok());
        match (w, h) {
            (Some(w), Some(h)) => sizes.push((w, h)),
            _ => return Err(format!("unexpected ffprobe frame line {line:?}")),
        }
    }
    Ok(sizes)
}
