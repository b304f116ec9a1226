//! RTMP load generator: replays one capture to N RTMP publish connections
//! from one process, at real-time pace, and reports JSON.
//!
//! ```sh
//! cargo build --release -p oxcast-tests --bin rtmp-load
//! target/release/rtmp-load --url rtmp://127.0.0.1:1935/live --streams 100 \
//!     --duration 60 --prefix load --encode 1280x720@30:3M --max-lag 200
//! ```
//!
//! Each connection publishes `<prefix>-<n>` (n = 1..=N) with a plain RTMP
//! handshake, `connect`/`createStream`/`publish`, then `@setDataFrame
//! onMetaData`, the sequence headers and the capture's tags, looped with
//! timestamps that keep increasing. Connections start spread over
//! `--ramp` seconds so their keyframes do not all go out at once.
//!
//! Exit status: 0 for a valid run in which every connection published to
//! the end; 2 when the run is invalid (the generator itself fell behind
//! real time by more than `--max-lag`); 3 when it is valid but some
//! connections failed; 1 for errors before any connection (bad arguments,
//! unreadable input, failed encode). The JSON report is printed (and
//! written to `--output`) in every case but the last.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use oxcast_tests::load::{
    default_cache_dir, process_cpu_time, run_connection, summarize, Capture, ConnectionPlan,
    EncodeSpec, RunInfo,
};
use oxcast_tests::rtmp_client::publisher::RtmpUrl;
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "rtmp-load",
    about = "Replay a capture to N RTMP publish connections"
)]
struct Args {
    /// The server's application URL: rtmp://host:port/app.
    #[arg(long)]
    url: String,
    /// Number of connections (each publishes its own stream key).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Seconds of media each connection sends.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Stream keys are `<prefix>-<n>`, n = 1..=streams.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// An FLV capture to replay (H.264/AAC as an encoder sends it).
    #[arg(long, conflicts_with = "encode")]
    input: Option<PathBuf>,
    /// Encode the capture with ffmpeg (once, cached): WxH@FPS:BITRATE.
    #[arg(long, default_value = "1280x720@30:3M")]
    encode: String,
    /// Length of the encoded capture in seconds (it is looped).
    #[arg(long, default_value_t = 60)]
    encode_seconds: u32,
    /// Keyframe interval of the encoded capture in seconds.
    #[arg(long, default_value_t = 2)]
    gop: u32,
    /// Where encoded captures are cached (default: $CARGO_TARGET_DIR/oxcast-load
    /// or ~/.cache/oxcast/load).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// The run is invalid when the generator falls behind real time by more
    /// than this (ms); connections whose send lag exceeds it are counted as
    /// behind.
    #[arg(long, default_value_t = 200)]
    max_lag: u64,
    /// Connections start spread evenly over this many seconds.
    #[arg(long, default_value_t = 2.0)]
    ramp: f64,
    /// Send messages due within this many ms of each other in one write
    /// (0: one write per due time, as an encoder sends).
    #[arg(long, default_value_t = 0)]
    batch_ms: u64,
    /// Runtime worker threads (1: a single-threaded runtime, the cheapest).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds each connection may take to get to publishing.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Also write the JSON report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn seconds(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|e| format!("--{what} {v}: {e}"))
}

fn main() -> ExitCode {
    oxcast_tests::log::init_cli_tracing("info");
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    let url = RtmpUrl::parse(&args.url)?;
    if args.streams == 0 {
        return Err("--streams must be at least 1".to_string());
    }
    let duration = seconds(args.duration, "duration")?;
    let ramp = seconds(args.ramp, "ramp")?;
    let connect_timeout = seconds(args.connect_timeout, "connect-timeout")?;
    let max_lag = Duration::from_millis(args.max_lag);
    let path = match &args.input {
        Some(p) => p.clone(),
        None => {
            let spec = EncodeSpec::parse(&args.encode, args.encode_seconds, args.gop)
                .map_err(|e| e.to_string())?;
            let cache = args.cache.clone().unwrap_or_else(default_cache_dir);
            tracing::info!(spec = %args.encode, cache = %cache.display(), "capture");
            spec.ensure(&cache).map_err(|e| e.to_string())?
        }
    };
    let capture = Arc::new(Capture::load(&path).map_err(|e| e.to_string())?);
    tracing::info!(
        input = %path.display(),
        kbps = capture.kbps().round(),
        loop_ms = capture.loop_ms,
        streams = args.streams,
        "publishing"
    );

    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("tokio runtime: {e}"))?;

    let cpu_before = process_cpu_time();
    let (results, wall) = runtime.block_on(async {
        let begin = Instant::now();
        let step = ramp / u32::try_from(args.streams).unwrap_or(u32::MAX);
        let tasks: Vec<_> = (0..args.streams)
            .map(|i| {
                let plan = ConnectionPlan {
                    url: url.clone(),
                    key: format!("{}-{}", args.prefix, i + 1),
                    start: begin + step * u32::try_from(i).unwrap_or(u32::MAX),
                    duration,
                    connect_timeout,
                    batch: Duration::from_millis(args.batch_ms),
                };
                tokio::spawn(run_connection(capture.clone(), plan))
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await {
                Ok(r) => results.push(r),
                Err(e) => results.push(oxcast_tests::load::ConnectionResult {
                    key: format!("{}-{}", args.prefix, i + 1),
                    error: Some(format!("task: {e}")),
                    ..Default::default()
                }),
            }
        }
        (results, begin.elapsed())
    });
    let cpu = process_cpu_time().since(cpu_before);
    drop(runtime);

    let report = summarize(
        &capture,
        &RunInfo {
            url: args.url.clone(),
            prefix: args.prefix.clone(),
            duration,
            wall,
            cpu,
            max_lag,
        },
        &results,
    );
    let json = serde_json::to_string_pretty(&report).map_err(|e| format!("report: {e}"))?;
    println!("{json}");
    if let Some(out) = &args.output {
        std::fs::write(out, format!("{json}\n"))
            .map_err(|e| format!("writing {}: {e}", out.display()))?;
    }
    for f in &report.failed {
        tracing::warn!(key = %f.key, published = f.published, "connection failed: {}", f.error);
    }
    Ok(if !report.valid {
        tracing::error!(
            "invalid run: {}",
            report.invalid_reason.as_deref().unwrap_or_default()
        );
        ExitCode::from(2)
    } else if !report.failed.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
