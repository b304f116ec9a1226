//! RTMP timestamps are 32-bit milliseconds and wrap after ~49.7 days of
//! streaming. ffmpeg cannot produce such a stream (its FLV muxer stops at
//! 2^31), so this test takes the tags of a real ffmpeg capture (the fuzz
//! seed) and shifts their timestamps to cross 2^32 mid-stream, then runs
//! them through the remuxer and segmenter: no discontinuity may appear and
//! the segment durations must add up to the media's duration.

use oxcast_ingest::hls::{SegmentEvent, Segmenter, SegmenterConfig};
use oxcast_ingest::media::Remuxer;

/// (is_audio, timestamp, tag body) records of the ffmpeg seed.
fn seed_tags() -> Vec<(bool, u32, Vec<u8>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/corpus/flv_to_hls/ffmpeg-h264-aac"
    );
    let data = std::fs::read(path).expect("seed corpus");
    let mut tags = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 7 {
        let ts = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let len = usize::from(u16::from_be_bytes([rest[5], rest[6]]));
        tags.push((rest[0] & 1 == 1, ts, rest[7..7 + len].to_vec()));
        rest = &rest[7 + len..];
    }
    tags
}

fn run(offset: u32) -> (Vec<(i64, bool)>, Vec<i64>) {
    let mut remuxer = Remuxer::new();
    let mut segmenter = Segmenter::new(SegmenterConfig {
        fragment: 45_000,
        max_fragment: 180_000,
        forced_cuts: true,
    });
    let mut events = Vec::new();
    for (audio, ts, body) in seed_tags() {
        let ts = ts.wrapping_add(offset);
        let frame = if audio {
            remuxer.push_audio(ts, &body)
        } else {
            remuxer.push_video(ts, &body)
        };
        if let Ok(Some(frame)) = frame {
            segmenter.push(&frame, &mut events).expect("mux");
        }
    }
    segmenter.finish(&mut events).expect("mux");
    let mut begins = Vec::new();
    let mut durations = Vec::new();
    for e in events {
        match e {
            SegmentEvent::Begin {
                start,
                discontinuity,
            } => begins.push((start, discontinuity)),
            SegmentEvent::End { duration } => durations.push(duration),
            SegmentEvent::Bytes(_) => {}
        }
    }
    (begins, durations)
}

#[test]
fn wrap_around_is_seamless() {
    let tags = seed_tags();
    let last = tags.iter().map(|t| t.1).max().expect("tags");
    assert!(last > 1000, "seed too short");
    // Wrap half-way through the seed.
    let offset = u32::MAX - last / 2;
    let (plain_begins, plain_durations) = run(0);
    let (begins, durations) = run(offset);
    assert!(begins.len() >= 2, "expected several segments");
    assert!(
        begins.iter().all(|(_, d)| !d),
        "discontinuity at the wrap: {begins:?}"
    );
    assert_eq!(
        durations, plain_durations,
        "durations differ across the wrap"
    );
    // Starts advance monotonically across the wrap, by the same steps.
    let steps = |b: &[(i64, bool)]| b.windows(2).map(|w| w[1].0 - w[0].0).collect::<Vec<_>>();
    assert_eq!(steps(&begins), steps(&plain_begins));
    assert!(begins.windows(2).all(|w| w[1].0 > w[0].0));
}
