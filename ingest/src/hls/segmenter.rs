//! Decides where segments start and end, and fills them with TS bytes.
//!
//! Segments are cut on a video keyframe once they are at least `fragment`
//! long (on any audio frame for audio-only streams), and cut regardless at
//! `max_fragment`, in which case the next segment is a discontinuity. Sans-IO:
//! frames in, [`SegmentEvent`]s out; the store decides file names and times.

use crate::media::{MediaFrame, TrackKind};

use super::ts::{MuxError, Tracks, TsMuxer};

/// Flush TS bytes to the caller in chunks of about this size, so a segment is
/// never held in memory whole.
const FLUSH_BYTES: usize = 64 * 1024;
/// Audio frames are packed several to a PES (less TS overhead) up to this span.
const AUDIO_PES_SPAN: i64 = 9_000;
/// A clock jump of more than this (backwards, or forwards past `max_fragment`
/// plus this) is a timestamp discontinuity from the publisher.
const JUMP_TOLERANCE: i64 = 90_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEvent {
    /// A segment starts; `start` is its first timestamp on the clock track.
    Begin { start: i64, discontinuity: bool },
    /// TS bytes belonging to the open segment.
    Bytes(Vec<u8>),
    /// The open segment is complete; `duration` in 90 kHz ticks.
    End { duration: i64 },
}

/// Segment lengths, in 90 kHz ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmenterConfig {
    pub fragment: i64,
    pub max_fragment: i64,
}

#[derive(Debug)]
struct OpenSegment {
    start: i64,
    clock: TrackKind,
    last: i64,
    last_delta: i64,
}

#[derive(Debug)]
pub struct Segmenter {
    config: SegmenterConfig,
    muxer: TsMuxer,
    open: Option<OpenSegment>,
    expected: Tracks,
    video_seen: bool,
    pending_discontinuity: bool,
    audio: Vec<u8>,
    audio_pts: i64,
    out: Vec<u8>,
}

impl Segmenter {
    pub fn new(config: SegmenterConfig) -> Self {
        Self {
            config,
            muxer: TsMuxer::default(),
            open: None,
            expected: Tracks::default(),
            video_seen: false,
            pending_discontinuity: false,
            audio: Vec::new(),
            audio_pts: 0,
            out: Vec::with_capacity(FLUSH_BYTES + 4096),
        }
    }

    /// Tells which tracks the publisher announced (stream metadata or codec
    /// sequence headers): with video expected, audio before the first
    /// keyframe is dropped so every segment starts on a keyframe.
    pub fn expect_tracks(&mut self, tracks: Tracks) {
        self.expected.video |= tracks.video;
        self.expected.audio |= tracks.audio;
    }

    /// The next segment starts on the next keyframe, marked as a
    /// discontinuity (e.g. the codec configuration changed).
    pub fn force_discontinuity(&mut self) {
        self.pending_discontinuity = true;
    }

    fn clock_track(&self) -> TrackKind {
        if self.video_seen || self.expected.video {
            TrackKind::Video
        } else {
            TrackKind::Audio
        }
    }

    fn tracks(&self, frame: TrackKind) -> Tracks {
        Tracks {
            video: self.expected.video || self.video_seen || frame == TrackKind::Video,
            audio: self.expected.audio || frame == TrackKind::Audio,
        }
    }

    pub fn push(
        &mut self,
        frame: &MediaFrame,
        events: &mut Vec<SegmentEvent>,
    ) -> Result<(), MuxError> {
        if frame.kind == TrackKind::Video {
            self.video_seen = true;
        }
        let clock = self.clock_track();
        let ts = if frame.kind == TrackKind::Video {
            frame.dts
        } else {
            frame.pts
        };

        if let Some(open) = &self.open {
            if frame.kind == clock {
                let jumped = ts < open.last - JUMP_TOLERANCE
                    || ts > open.last + self.config.max_fragment + JUMP_TOLERANCE;
                if jumped {
                    self.end(None, events)?;
                    self.pending_discontinuity = true;
                }
            }
        }

        match &self.open {
            None => {
                if frame.kind != clock || !frame.keyframe {
                    return Ok(());
                }
                let discontinuity = std::mem::take(&mut self.pending_discontinuity);
                self.begin(ts, discontinuity, frame.kind, events)?;
            }
            Some(open) if frame.kind == clock => {
                let elapsed = ts - open.start;
                let mut forced = false;
                let cut = if open.clock != clock {
                    frame.keyframe
                } else if frame.keyframe
                    && (elapsed >= self.config.fragment || self.pending_discontinuity)
                {
                    true
                } else if elapsed >= self.config.max_fragment {
                    forced = true;
                    true
                } else {
                    false
                };
                if cut {
                    self.end(Some(ts), events)?;
                    let discontinuity = forced || std::mem::take(&mut self.pending_discontinuity);
                    self.begin(ts, discontinuity, clock, events)?;
                }
            }
            Some(_) => {}
        }

        let pcr_on_audio = clock == TrackKind::Audio;
        match frame.kind {
            TrackKind::Video => {
                self.flush_audio(pcr_on_audio)?;
                self.muxer.write_video(
                    frame.dts,
                    frame.pts,
                    frame.keyframe,
                    &frame.data,
                    &mut self.out,
                )?;
            }
            TrackKind::Audio => {
                if !self.audio.is_empty() && frame.pts - self.audio_pts >= AUDIO_PES_SPAN {
                    self.flush_audio(pcr_on_audio)?;
                }
                if self.audio.is_empty() {
                    self.audio_pts = frame.pts;
                }
                self.audio.extend_from_slice(&frame.data);
            }
        }
        if frame.kind == clock {
            if let Some(open) = &mut self.open {
                if ts > open.last {
                    open.last_delta = ts - open.last;
                }
                open.last = open.last.max(ts);
            }
        }
        if self.out.len() >= FLUSH_BYTES {
            events.push(SegmentEvent::Bytes(std::mem::replace(
                &mut self.out,
                Vec::with_capacity(FLUSH_BYTES + 4096),
            )));
        }
        Ok(())
    }

    /// The publisher stopped: complete the open segment.
    pub fn finish(&mut self, events: &mut Vec<SegmentEvent>) -> Result<(), MuxError> {
        self.end(None, events)
    }

    fn flush_audio(&mut self, pcr: bool) -> Result<(), MuxError> {
        if !self.audio.is_empty() {
            self.muxer
                .write_audio(self.audio_pts, pcr, &self.audio, &mut self.out)?;
            self.audio.clear();
        }
        Ok(())
    }

    fn begin(
        &mut self,
        start: i64,
        discontinuity: bool,
        clock: TrackKind,
        events: &mut Vec<SegmentEvent>,
    ) -> Result<(), MuxError> {
        events.push(SegmentEvent::Begin {
            start,
            discontinuity,
        });
        let tracks = self.tracks(clock);
        self.muxer.write_tables(tracks, &mut self.out)?;
        let default_delta = if clock == TrackKind::Video {
            3_000
        } else {
            1_920
        };
        self.open = Some(OpenSegment {
            start,
            clock,
            last: start,
            last_delta: default_delta,
        });
        Ok(())
    }

    /// Ends the open segment. With `next_start` the duration runs up to the
    /// next segment's first frame; without it (end of stream, clock jump) up
    /// to the last frame plus one frame interval.
    fn end(
        &mut self,
        next_start: Option<i64>,
        events: &mut Vec<SegmentEvent>,
    ) -> Result<(), MuxError> {
        let Some(open) = self.open.take() else {
            self.audio.clear();
            return Ok(());
        };
        self.flush_audio(open.clock == TrackKind::Audio)?;
        let duration = match next_start {
            Some(next) => next - open.start,
            None => open.last - open.start + open.last_delta,
        }
        .max(1);
        if !self.out.is_empty() {
            events.push(SegmentEvent::Bytes(std::mem::take(&mut self.out)));
        }
        events.push(SegmentEvent::End { duration });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const SEC: i64 = 90_000;

    fn video(dts: i64, keyframe: bool) -> MediaFrame {
        MediaFrame {
            kind: TrackKind::Video,
            dts,
            pts: dts + 6_000,
            keyframe,
            data: Bytes::from_static(&[0, 0, 0, 1, 9, 0xf0]),
        }
    }

    fn audio(pts: i64) -> MediaFrame {
        MediaFrame {
            kind: TrackKind::Audio,
            dts: pts,
            pts,
            keyframe: true,
            data: Bytes::from_static(&[0xff, 0xf1, 0x50, 0x80, 0x01, 0x1f, 0xfc, 1]),
        }
    }

    fn segmenter(fragment: i64, max: i64) -> Segmenter {
        Segmenter::new(SegmenterConfig {
            fragment: fragment * SEC,
            max_fragment: max * SEC,
        })
    }

    /// (start, discontinuity, duration) of each completed segment.
    fn segments(events: &[SegmentEvent]) -> Vec<(i64, bool, i64)> {
        let mut out = Vec::new();
        let mut current = None;
        for e in events {
            match e {
                SegmentEvent::Begin {
                    start,
                    discontinuity,
                } => current = Some((*start, *discontinuity)),
                SegmentEvent::End { duration } => {
                    let (s, d) = current.take().expect("End without Begin");
                    out.push((s, d, *duration));
                }
                SegmentEvent::Bytes(b) => {
                    assert!(current.is_some(), "bytes outside a segment");
                    assert_eq!(b.len() % 188, 0);
                }
            }
        }
        out
    }

    #[test]
    fn cuts_on_first_keyframe_after_fragment() {
        let mut s = segmenter(2, 4);
        let mut ev = Vec::new();
        // 30 fps, keyframe every second.
        for i in 0..(7 * 30) {
            let dts = i * 3_000;
            s.push(&video(dts, i % 30 == 0), &mut ev).unwrap();
            s.push(&audio(dts), &mut ev).unwrap();
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        assert_eq!(
            segs,
            vec![
                (0, false, 2 * SEC),
                (2 * SEC, false, 2 * SEC),
                (4 * SEC, false, 2 * SEC),
                (6 * SEC, false, SEC)
            ]
        );
    }

    #[test]
    fn drops_until_first_keyframe() {
        let mut s = segmenter(1, 2);
        s.expect_tracks(Tracks {
            video: true,
            audio: true,
        });
        let mut ev = Vec::new();
        s.push(&audio(0), &mut ev).unwrap();
        s.push(&video(0, false), &mut ev).unwrap();
        assert!(ev.is_empty());
        s.push(&video(3_000, true), &mut ev).unwrap();
        assert_eq!(
            ev,
            vec![SegmentEvent::Begin {
                start: 3_000,
                discontinuity: false
            }]
        );
    }

    #[test]
    fn forced_cut_at_max_fragment_marks_discontinuity() {
        let mut s = segmenter(2, 3);
        let mut ev = Vec::new();
        // Keyframe only at 0 and at 10 s.
        for i in 0..=(10 * 30) {
            s.push(&video(i * 3_000, i % 300 == 0), &mut ev).unwrap();
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        assert_eq!(segs[0], (0, false, 3 * SEC));
        assert_eq!(segs[1], (3 * SEC, true, 3 * SEC));
        assert!(segs.iter().all(|(_, _, d)| *d <= 3 * SEC));
    }

    #[test]
    fn audio_only_cuts_on_audio() {
        let mut s = segmenter(1, 2);
        let mut ev = Vec::new();
        for i in 0..100 {
            s.push(&audio(i * 1_920), &mut ev).unwrap();
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        assert!(segs.len() >= 2);
        assert!(segs[..segs.len() - 1]
            .iter()
            .all(|(_, _, d)| *d >= SEC && *d < SEC + 1_920));
        let total: i64 = segs.iter().map(|s| s.2).sum();
        assert_eq!(total, 100 * 1_920);
    }

    #[test]
    fn forced_discontinuity_waits_for_keyframe() {
        let mut s = segmenter(5, 10);
        let mut ev = Vec::new();
        s.push(&video(0, true), &mut ev).unwrap();
        s.push(&video(3_000, false), &mut ev).unwrap();
        s.force_discontinuity();
        s.push(&video(6_000, false), &mut ev).unwrap();
        s.push(&video(9_000, true), &mut ev).unwrap();
        s.finish(&mut ev).unwrap();
        assert_eq!(segments(&ev), vec![(0, false, 9_000), (9_000, true, 3_000)]);
    }

    #[test]
    fn timestamp_reset_starts_a_discontinuity() {
        let mut s = segmenter(1, 2);
        let mut ev = Vec::new();
        for i in 0..20 {
            s.push(&video(100 * SEC + i * 3_000, i == 0), &mut ev)
                .unwrap();
        }
        for i in 0..20 {
            s.push(&video(i * 3_000, i == 0), &mut ev).unwrap();
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0], (100 * SEC, false, 20 * 3_000));
        assert_eq!(segs[1], (0, true, 20 * 3_000));
    }
}
