//! Replays the fuzz corpora (`ingest/fuzz/corpus/<target>/*`) through the
//! same entry points the fuzz targets use, so every input the fuzzer ever
//! kept — and every crash it found, once added — is re-checked by
//! `cargo test` on stable Rust, without cargo-fuzz.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).expect("corpus file readable");
            (p, data)
        })
        .collect()
}

#[test]
fn rtmp_input_corpus_replays_cleanly() {
    let inputs = corpus("rtmp_input");
    assert!(!inputs.is_empty(), "no rtmp_input seeds");
    for (path, data) in inputs {
        eprintln!("replaying {}", path.display());
        oxcast_ingest::fuzzing::rtmp_server_input(&data);
    }
}

#[test]
fn flv_to_hls_corpus_replays_cleanly() {
    let inputs = corpus("flv_to_hls");
    assert!(!inputs.is_empty(), "no flv_to_hls seeds");
    for (path, data) in inputs {
        eprintln!("replaying {}", path.display());
        oxcast_ingest::fuzzing::flv_to_hls(&data);
    }
}

#[test]
fn sps_corpus_replays_cleanly() {
    let inputs = corpus("sps");
    assert!(!inputs.is_empty(), "no sps seeds");
    for (path, data) in inputs {
        eprintln!("replaying {}", path.display());
        oxcast_ingest::fuzzing::sps(&data);
    }
}

#[test]
fn playlist_corpus_replays_cleanly() {
    let inputs = corpus("playlist");
    assert!(!inputs.is_empty(), "no playlist seeds");
    for (path, data) in inputs {
        eprintln!("replaying {}", path.display());
        oxcast_ingest::fuzzing::playlist(&data);
    }
}

fn is_seed(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("ffmpeg-"))
}

/// The seeds are real ffmpeg publishes: they must drive the pipeline all
/// the way through, or the fuzzer would start from inputs that stop early.
#[test]
fn seeds_reach_the_segmenter() {
    for (path, data) in corpus("rtmp_input").into_iter().filter(|(p, _)| is_seed(p)) {
        let frames = oxcast_ingest::fuzzing::rtmp_server_input(&data);
        assert!(frames > 20, "{}: only {frames} frames", path.display());
    }
    for (path, data) in corpus("flv_to_hls").into_iter().filter(|(p, _)| is_seed(p)) {
        let segments = oxcast_ingest::fuzzing::flv_to_hls(&data);
        assert!(
            segments >= 2,
            "{}: only {segments} segments",
            path.display()
        );
    }
}

/// The SPS seeds are libx264's: each must parse, to the size it was
/// encoded at (the cropped ones included).
#[test]
fn sps_seeds_parse_to_their_picture_size() {
    for (path, data) in corpus("sps").into_iter().filter(|(p, _)| is_seed(p)) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let size = name.rsplit('-').next().unwrap_or_default();
        let (w, h) = size.split_once('x').expect("seed name ends in WxH");
        let expected = (w.parse().unwrap(), h.parse().unwrap());
        assert_eq!(
            oxcast_ingest::fuzzing::sps(&data),
            Some(expected),
            "{}",
            path.display()
        );
    }
}

/// Every playlist seed is one the server writes (or could write later in a
/// stream's life): each must parse with its segments. (Crash inputs kept
/// for replay need not.)
#[test]
fn playlist_seeds_parse_with_their_segments() {
    let seeds = corpus("playlist").into_iter().filter(|(p, _)| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("crash-"))
    });
    for (path, data) in seeds {
        let segments = oxcast_ingest::fuzzing::playlist(&data);
        assert!(segments >= 1, "{}: no segments", path.display());
    }
}
