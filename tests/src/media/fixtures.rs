//! Fixture media generated with ffmpeg's lavfi sources.
//!
//! Each fixture is encoded at most once per test process (and cached across
//! runs in the cargo target directory, keyed by its exact recipe, so a change
//! of recipe regenerates it). Files are written under a temporary name and
//! renamed into place, so concurrent test binaries never see half a file.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::probe::{decode_errors, probe};
use super::process::run_ok;

/// The fixtures the media tests publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fixture {
    /// H.264 High, B-frames (bf 2), 25 fps, 1 s GOP, 320x240 + AAC-LC stereo
    /// 48 kHz; 8 s.
    Av8s,
    /// Same as [`Fixture::Av8s`] but 14 s long (for sliding windows).
    Av14s,
    /// AAC-LC stereo 48 kHz only; 8 s.
    AudioOnly,
    /// H.264 only (as `Av8s` without audio); 8 s.
    VideoOnly,
    /// H.264 + HE-AAC (SBR) stereo; 8 s. Not every ffmpeg build can make it.
    HeAac,
    /// H.264 + AAC-LC mono 44.1 kHz; 8 s.
    Mono44k,
    /// 4 s of 320x240 followed by 4 s of 640x360 (two FLVs concatenated).
    ResolutionChange,
    /// As `Av8s` but with a 5 s GOP (forces cuts at max_fragment).
    LongGop,
    /// As `Av8s` but with a 0.52 s GOP (13 frames): odd segment durations.
    OddGop,
    /// x264's default keyframe interval, what OBS's "auto" gives: 30 fps
    /// with `-g 250` (a keyframe every 8.33 s), no scene cuts; 18 s.
    Gop250,
}

const ALL: [Fixture; 10] = [
    Fixture::Av8s,
    Fixture::Av14s,
    Fixture::AudioOnly,
    Fixture::VideoOnly,
    Fixture::HeAac,
    Fixture::Mono44k,
    Fixture::ResolutionChange,
    Fixture::LongGop,
    Fixture::OddGop,
    Fixture::Gop250,
];

/// A generated fixture file.
#[derive(Debug, Clone)]
pub struct Media {
    pub path: PathBuf,
    /// Nominal duration in seconds.
    pub duration: f64,
    pub has_video: bool,
    pub has_audio: bool,
}

/// Why a fixture is not available.
#[derive(Debug, Clone)]
pub enum FixtureError {
    /// This machine's ffmpeg cannot produce it; the reason says why.
    Unsupported(String),
    /// Generating it failed.
    Failed(String),
}

impl std::fmt::Display for FixtureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FixtureError::Unsupported(why) => write!(f, "fixture unsupported here: {why}"),
            FixtureError::Failed(why) => write!(f, "fixture generation failed: {why}"),
        }
    }
}

const FPS: u32 = 25;
const ENCODE_TIMEOUT: Duration = Duration::from_secs(300);

// The encode recipe every generated capture shares (these fixtures and the
// load generator's captures, src/load.rs): lavfi test sources, H.264 High
// with B-frames and a fixed GOP, AAC.

/// ffmpeg's global options for a quiet, non-interactive encode.
pub(crate) const FFMPEG_QUIET: [&str; 5] = ["-nostdin", "-hide_banner", "-v", "error", "-y"];

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// x264 output options: High profile, 2 B-frames, a keyframe exactly every
/// `gop` frames (no scene cuts), 4:2:0, scaled to `size`.
pub(crate) fn video_args(size: &str, gop: u32) -> Vec<String> {
    let gop = gop.to_string();
    strings(&[
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        "high",
        "-bf",
        "2",
        "-g",
        &gop,
        "-keyint_min",
        &gop,
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-s",
        size,
    ])
}

/// The lavfi colour-bars-and-counter video source.
pub(crate) fn lavfi_video(size: &str, fps: u32) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc2=size={size}:rate={fps}"),
    ]
}

/// The lavfi beeping-sine audio source.
pub(crate) fn lavfi_audio(rate: u32) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=frequency=440:beep_factor=4:sample_rate={rate}"),
    ]
}

/// AAC output options (ffmpeg's native encoder, `profile` such as `aac_low`).
pub(crate) fn aac_args(profile: &str, channels: u32, rate: u32, kbps: u32) -> Vec<String> {
    vec![
        "-c:a".into(),
        "aac".into(),
        "-profile:a".into(),
        profile.into(),
        "-ac".into(),
        channels.to_string(),
        "-ar".into(),
        rate.to_string(),
        "-b:a".into(),
        format!("{kbps}k"),
    ]
}

/// ffmpeg arguments (between the global options and the output file) of a
/// single-encode recipe.
fn av_recipe(
    secs: u32,
    video: Option<(&str, u32)>,
    audio: Option<(&str, u32, u32)>,
) -> Vec<String> {
    let mut args = Vec::new();
    if let Some((size, _)) = video {
        args.extend(lavfi_video(size, FPS));
    }
    if let Some((_, _, rate)) = audio {
        args.extend(lavfi_audio(rate));
    }
    args.extend(["-t".to_string(), secs.to_string()]);
    if let Some((size, gop)) = video {
        args.extend(video_args(size, gop));
    }
    if let Some((profile, channels, rate)) = audio {
        args.extend(aac_args(profile, channels, rate, 96));
    }
    args.extend(["-f".to_string(), "flv".to_string()]);
    args
}

fn recipe(kind: Fixture) -> (Vec<Vec<String>>, Media) {
    let one_s = FPS;
    let media = |secs: u32, v: bool, a: bool| Media {
        path: PathBuf::new(),
        duration: f64::from(secs),
        has_video: v,
        has_audio: a,
    };
    let stereo = Some(("aac_low", 2, 48_000));
    let qvga = Some(("320x240", one_s));
    match kind {
        Fixture::Av8s => (vec![av_recipe(8, qvga, stereo)], media(8, true, true)),
        Fixture::Av14s => (vec![av_recipe(14, qvga, stereo)], media(14, true, true)),
        Fixture::AudioOnly => (vec![av_recipe(8, None, stereo)], media(8, false, true)),
        Fixture::VideoOnly => (vec![av_recipe(8, qvga, None)], media(8, true, false)),
        Fixture::HeAac => (
            vec![av_recipe(8, qvga, Some(("aac_he", 2, 48_000)))],
            media(8, true, true),
        ),
        Fixture::Mono44k => (
            vec![av_recipe(8, qvga, Some(("aac_low", 1, 44_100)))],
            media(8, true, true),
        ),
        Fixture::ResolutionChange => (
            vec![
                av_recipe(4, qvga, stereo),
                av_recipe(4, Some(("640x360", one_s)), stereo),
            ],
            media(8, true, true),
        ),
        Fixture::LongGop => (
            vec![av_recipe(8, Some(("320x240", 5 * FPS)), stereo)],
            media(8, true, true),
        ),
        Fixture::OddGop => (
            vec![av_recipe(8, Some(("320x240", 13)), stereo)],
            media(8, true, true),
        ),
        Fixture::Gop250 => {
            let mut args = av_recipe(18, Some(("320x240", 250)), stereo);
            for a in &mut args {
                if a.starts_with("testsrc2=") {
                    *a = "testsrc2=size=320x240:rate=30".to_string();
                }
            }
            (vec![args], media(18, true, true))
        }
    }
}

fn cache_dir() -> PathBuf {
    super::target_dir().join("oxcast-media-fixtures")
}

fn encode(args: &[String], out: &Path) -> Result<(), String> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(FFMPEG_QUIET);
    cmd.args(args);
    cmd.arg(out);
    run_ok(cmd, ENCODE_TIMEOUT).map(|_| ())
}

fn generate(kind: Fixture) -> Result<Media, FixtureError> {
    let fail = FixtureError::Failed;
    let (parts, mut media) = recipe(kind);
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    let key = hasher.finish();
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    let name = format!("{kind:?}-{key:016x}").to_ascii_lowercase();
    let path = dir.join(format!("{name}.flv"));
    media.path = path.clone();
    if !path.exists() {
        // Unique scratch names: several test binaries may race here.
        let scratch = tempfile::Builder::new()
            .prefix(&format!(".{name}-"))
            .tempdir_in(&dir)
            .map_err(|e| fail(format!("scratch dir in {}: {e}", dir.display())))?;
        let out = scratch.path().join("out.flv");
        if parts.len() == 1 {
            encode(&parts[0], &out).map_err(fail)?;
        } else {
            let mut list = String::new();
            for (i, part) in parts.iter().enumerate() {
                let p = scratch.path().join(format!("part{i}.flv"));
                encode(part, &p).map_err(fail)?;
                list.push_str(&format!("file '{}'\n", p.display()));
            }
            let list_path = scratch.path().join("list.txt");
            std::fs::write(&list_path, list)
                .map_err(|e| fail(format!("writing {}: {e}", list_path.display())))?;
            let mut cmd = Command::new("ffmpeg");
            cmd.args(FFMPEG_QUIET);
            cmd.args(["-f", "concat", "-safe", "0", "-i"]);
            cmd.arg(&list_path);
            cmd.args(["-c", "copy", "-f", "flv"]);
            cmd.arg(&out);
            run_ok(cmd, ENCODE_TIMEOUT).map_err(fail)?;
        }
        std::fs::rename(&out, &path)
            .map_err(|e| fail(format!("moving fixture to {}: {e}", path.display())))?;
    }
    if kind == Fixture::HeAac {
        check_he_aac(&path)?;
    }
    Ok(media)
}

/// Debian's ffmpeg has only the native AAC encoder, which accepts
/// `-profile:a aac_he` but does not implement SBR: the result is not HE-AAC
/// and does not even decode. Only a file that really is HE-AAC and decodes
/// cleanly counts.
fn check_he_aac(path: &Path) -> Result<(), FixtureError> {
    let p = probe(path, false).map_err(|e| {
        FixtureError::Unsupported(format!(
            "this ffmpeg cannot make HE-AAC: its encoder accepts `-profile:a aac_he` but \
             has no SBR, and ffprobe cannot read the result ({})",
            e.lines().last().unwrap_or_default().trim()
        ))
    })?;
    let profile = p
        .stream("audio")
        .and_then(|s| s.profile.clone())
        .unwrap_or_default();
    if !profile.contains("HE") {
        return Err(FixtureError::Unsupported(format!(
            "this ffmpeg's AAC encoder did not produce HE-AAC (ffprobe profile {profile:?}); \
             an encoder with SBR (libfdk_aac) is needed"
        )));
    }
    let errors = decode_errors(&path.to_string_lossy()).map_err(FixtureError::Failed)?;
    if !errors.trim().is_empty() {
        return Err(FixtureError::Unsupported(format!(
            "this ffmpeg's `-profile:a aac_he` output does not decode: {}",
            errors.trim()
        )));
    }
    Ok(())
}

fn cells() -> &'static [OnceLock<Result<Media, FixtureError>>; ALL.len()] {
    static CELLS: OnceLock<[OnceLock<Result<Media, FixtureError>>; ALL.len()]> = OnceLock::new();
    CELLS.get_or_init(|| std::array::from_fn(|_| OnceLock::new()))
}

/// The fixture `kind`, generating it on first use.
pub fn fixture(kind: Fixture) -> Result<&'static Media, FixtureError> {
    let index = ALL.iter().position(|k| *k == kind).unwrap_or_default();
    cells()[index]
        .get_or_init(|| generate(kind))
        .as_ref()
        .map_err(Clone::clone)
}

/// The fixture `kind`; panics when it cannot be had (for fixtures every
/// ffmpeg with libx264 and the native AAC encoder can make).
#[track_caller]
pub fn require(kind: Fixture) -> &'static Media {
    match fixture(kind) {
        Ok(media) => media,
        Err(e) => panic!("{kind:?}: {e}"),
    }
}
