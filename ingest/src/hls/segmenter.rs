//! Decides where segments start and end, and fills them with TS bytes.
//!
//! Segments are cut on a video keyframe once they are `fragment` long (on
//! any audio frame for audio-only streams), so each starts with an IDR and
//! its parameter sets and decodes on its own. A keyframe within half a frame
//! interval of the boundary counts as on it: encoders stamp whole
//! milliseconds (33/33/34 ms at 30 fps) and land a hair early.
//!
//! What happens when the publisher's keyframes are further apart than
//! `max_fragment` depends on [`SegmenterConfig::forced_cuts`]:
//! - off (the default): no segment is ever cut between keyframes. A segment
//!   that reaches `max_fragment` (10 × `fragment` by default, as nginx-rtmp's
//!   `hls_max_fragment`) without a keyframe is closed and the media up to the
//!   next keyframe is dropped, since it could not be decoded; the segment
//!   after the gap is a discontinuity (media is missing).
//! - on: the segment is cut at `max_fragment` on any frame. The media is
//!   continuous, so there is no discontinuity, but the next segment starts
//!   mid-GOP: a player that joins on it shows nothing until the next keyframe.
//!
//! Timestamps that stop advancing while frames keep coming (a frozen
//! encoder clock, a muxer that repeats one timestamp) would hold a segment
//! open forever, its file growing without bound, since no elapsed time ever
//! reaches `fragment`. The segmenter also adds up the media it put into the
//! open segment (a frame duration per clock-track frame) and, for the rules
//! above, takes the segment's elapsed time as at least that length less
//! `max_fragment` of slack: a frozen clock gives segments of `max_fragment`
//! plus `fragment` (cut on a keyframe, or by the `max_fragment` rule two
//! `max_fragment`s in), listed with the media's own length. Timestamps that
//! advance, even unevenly, never come near the slack.
//!
//! The target duration (RFC 8216 §6.2.1: must not change) is sized by the
//! first segment, that is by the publisher's keyframe interval; a keyframe
//! before `fragment` closes a segment early when waiting for the next one
//! (one observed keyframe interval away) would overrun that target.
//!
//! Sans-IO: frames in, [`SegmentEvent`]s out; the store decides file names
//! and times.

use oxcast_crds::HlsSettings;

use crate::media::{MediaFrame, TrackKind};

use super::playlist::rounded_seconds;
use super::ts::{MuxError, Tracks, TsMuxer};

/// Flush TS bytes to the caller in chunks of about this size, so a segment is
/// never held in memory whole. Every publisher holds one such buffer; 32 KiB
/// is about 0.1 s of a 3 Mbit/s stream, a storage write (and writer wake-up)
/// every 0.1 s.
const FLUSH_BYTES: usize = 32 * 1024;
/// Audio frames are packed several to a PES (less TS overhead) up to this span.
const AUDIO_PES_SPAN: i64 = 9_000;
/// ... and up to this many bytes, so a PES stays bounded when the span does
/// not grow (a publisher that repeats one audio timestamp would otherwise
/// pack its whole stream into one PES). An audio PES must fit the 16-bit
/// `PES_packet_length` (0, "unbounded", is for video only in a transport
/// stream, ISO/IEC 13818-1 §2.4.3.7), and muxers pack far less than that:
/// this is FFmpeg's default audio PES payload (`pes_payload_size`, 15 full
/// TS payloads plus one after the PES header, 2930 bytes). Normal streams
/// reach it only above about 230 kbit/s, where the PES is just cut earlier;
/// a single frame larger than this (at most 8191 bytes with its ADTS header)
/// gets a PES of its own, still well inside the 16-bit length.
const AUDIO_PES_MAX_BYTES: usize = 15 * 184 + 170;
/// A clock jump of more than this (backwards, or forwards past `max_fragment`
/// plus this) is a timestamp discontinuity from the publisher.
const JUMP_TOLERANCE: i64 = 90_000;
/// Without forced cuts, how many fragments a segment may wait for a
/// keyframe (nginx-rtmp's `hls_max_fragment` default, 10 × `hls_fragment`).
pub const KEYFRAME_WAIT_FRAGMENTS: i64 = 10;
/// Keyframe intervals remembered for [`SegmenterStats::keyframe_interval`].
const INTERVALS_KEPT: usize = 8;
const SEC: i64 = 90_000;
/// One AAC frame (1024 samples) at 48 kHz, the audio frame duration until
/// the stream's AudioSpecificConfig tells the real one
/// ([`Segmenter::set_audio_frame_duration`]).
const DEFAULT_AUDIO_FRAME: i64 = 1_920;
/// A video frame at 30 fps, the frame interval assumed before a second
/// frame shows the real one.
const DEFAULT_VIDEO_FRAME: i64 = 3_000;

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
    /// The longest segment: forced cut (with `forced_cuts`) or the longest
    /// wait for a keyframe (without).
    pub max_fragment: i64,
    /// Cut at `max_fragment` between keyframes instead of waiting for one.
    pub forced_cuts: bool,
}

impl SegmenterConfig {
    /// The segmenter for `hls`: forced cuts exactly when `maxFragment` is set.
    pub fn from_settings(hls: &HlsSettings) -> Self {
        let fragment = (hls.fragment.as_90khz() as i64).max(1);
        match hls.max_fragment {
            Some(max) => Self {
                fragment,
                max_fragment: (max.as_90khz() as i64).max(fragment),
                forced_cuts: true,
            },
            None => Self {
                fragment,
                max_fragment: fragment.saturating_mul(KEYFRAME_WAIT_FRAGMENTS),
                forced_cuts: false,
            },
        }
    }
}

/// What the segmenter measured about the publisher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmenterStats {
    /// The longest of the last few keyframe intervals, 90 kHz ticks.
    pub keyframe_interval: Option<i64>,
    /// Times the segmenter gave up waiting for a keyframe and dropped media
    /// (only without forced cuts).
    pub keyframe_waits_given_up: u64,
    /// Segments cut between keyframes (only with forced cuts).
    pub forced_cuts: u64,
    /// Segments closed because the timestamps stopped advancing while media
    /// kept coming (their content ran `max_fragment` ahead of the clock).
    pub frozen_timestamp_cuts: u64,
}

#[derive(Debug)]
struct OpenSegment {
    start: i64,
    clock: TrackKind,
    last: i64,
    last_delta: i64,
    /// Media put into the segment on the clock track, in 90 kHz ticks: one
    /// frame duration per frame, whatever the timestamps say.
    content: i64,
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
    /// One audio frame's duration in 90 kHz ticks.
    audio_frame: i64,
    out: Vec<u8>,
    /// Target duration in whole seconds, as the playlist will round it;
    /// settled by the first complete segment.
    target_secs: i64,
    target_settled: bool,
    last_keyframe: Option<i64>,
    intervals: Vec<i64>,
    longest_interval: Option<i64>,
    stats: SegmenterStats,
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
            audio_frame: DEFAULT_AUDIO_FRAME,
            out: Vec::with_capacity(FLUSH_BYTES + 4096),
            target_secs: ((config.fragment + SEC / 2) / SEC).max(1),
            target_settled: false,
            last_keyframe: None,
            intervals: Vec::with_capacity(INTERVALS_KEPT),
            longest_interval: None,
            stats: SegmenterStats::default(),
        }
    }

    /// What was measured so far.
    pub fn stats(&self) -> SegmenterStats {
        self.stats
    }

    /// Tells which tracks the publisher announced (stream metadata or codec
    /// sequence headers): with video expected, audio before the first
    /// keyframe is dropped so every segment starts on a keyframe.
    pub fn expect_tracks(&mut self, tracks: Tracks) {
        self.expected.video |= tracks.video;
        self.expected.audio |= tracks.audio;
    }

    /// The duration of one audio frame in 90 kHz ticks, from the stream's
    /// codec configuration ([`crate::media::AacConfig::frame_duration_90khz`]:
    /// 2090 at 44.1 kHz, 3840 for HE-AAC at 48 kHz). An audio-only segment's
    /// last frame lasts this long; RTMP's millisecond timestamps only give
    /// it to within a millisecond. Values below one tick are ignored.
    pub fn set_audio_frame_duration(&mut self, ticks: i64) {
        if ticks > 0 {
            self.audio_frame = ticks;
        }
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

    /// Records a video keyframe's timestamp for the interval measurement.
    fn keyframe_at(&mut self, ts: i64) {
        if let Some(last) = self.last_keyframe {
            let interval = ts - last;
            if interval > 0 {
                if self.intervals.len() == INTERVALS_KEPT {
                    self.intervals.remove(0);
                }
                self.intervals.push(interval);
                self.longest_interval = Some(self.longest_interval.unwrap_or(0).max(interval));
                self.stats.keyframe_interval = self.intervals.iter().copied().max();
            }
        }
        self.last_keyframe = Some(ts);
    }

    /// The longest duration a segment may have and still round to the
    /// target duration.
    fn target_limit(&self) -> i64 {
        self.target_secs * SEC + SEC / 2 - 90
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
                    self.last_keyframe = None;
                }
            }
        }
        if frame.kind == TrackKind::Video && frame.keyframe {
            self.keyframe_at(ts);
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
                // The media's own length, less `max_fragment` of slack for
                // timestamps that merely lag, stands in for a clock that
                // stopped (see the module docs).
                let by_content = open.content.saturating_sub(self.config.max_fragment);
                let frozen = by_content > ts - open.start;
                let elapsed = (ts - open.start).max(by_content);
                // Half a frame interval: a keyframe stamped a millisecond
                // before the boundary is on it.
                let tolerance = open.last_delta / 2;
                let would_overrun = self.target_settled
                    && self
                        .longest_interval
                        .is_some_and(|gop| elapsed > 0 && elapsed + gop > self.target_limit());
                if open.clock != clock {
                    if frame.keyframe {
                        self.cut(ts, false, events)?;
                    }
                } else if frame.keyframe
                    && (elapsed + tolerance >= self.config.fragment
                        || self.pending_discontinuity
                        || would_overrun)
                {
                    self.cut(ts, false, events)?;
                } else if elapsed >= self.config.max_fragment {
                    if self.config.forced_cuts {
                        self.stats.forced_cuts += 1;
                        self.cut(ts, true, events)?;
                    } else {
                        // Nothing decodable until the next keyframe: close
                        // the segment and drop what comes before that one.
                        self.stats.keyframe_waits_given_up += 1;
                        self.end(Some(ts), events)?;
                        self.pending_discontinuity = true;
                        if frozen {
                            self.stats.frozen_timestamp_cuts += 1;
                        }
                        return Ok(());
                    }
                }
                // A segment just begun holds no media yet: it was cut here.
                let cut = self.open.as_ref().is_some_and(|o| o.content == 0);
                if frozen && cut {
                    self.stats.frozen_timestamp_cuts += 1;
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
                let full = self.audio.len() + frame.data.len() > AUDIO_PES_MAX_BYTES;
                if !self.audio.is_empty() && (full || frame.pts - self.audio_pts >= AUDIO_PES_SPAN)
                {
                    self.flush_audio(pcr_on_audio)?;
                }
                if self.audio.is_empty() {
                    self.audio_pts = frame.pts;
                }
                self.audio.extend_from_slice(&frame.data);
            }
        }
        if frame.kind == clock {
            let audio_frame = self.audio_frame;
            if let Some(open) = &mut self.open {
                if ts > open.last {
                    open.last_delta = ts - open.last;
                }
                open.last = open.last.max(ts);
                let frame_duration = match frame.kind {
                    TrackKind::Audio => audio_frame,
                    TrackKind::Video => open.last_delta,
                };
                open.content = open.content.saturating_add(frame_duration);
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

    /// Ends the open segment at `ts` and begins the next one there. A
    /// pending discontinuity waits for a cut on a keyframe (`mid_gop` false).
    fn cut(
        &mut self,
        ts: i64,
        mid_gop: bool,
        events: &mut Vec<SegmentEvent>,
    ) -> Result<(), MuxError> {
        let clock = self.clock_track();
        self.end(Some(ts), events)?;
        let discontinuity = !mid_gop && std::mem::take(&mut self.pending_discontinuity);
        self.begin(ts, discontinuity, clock, events)
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
            DEFAULT_VIDEO_FRAME
        } else {
            self.audio_frame
        };
        self.open = Some(OpenSegment {
            start,
            clock,
            last: start,
            last_delta: default_delta,
            content: 0,
        });
        Ok(())
    }

    /// Ends the open segment. With `next_start` the duration runs up to the
    /// next segment's first frame; without it (end of stream, clock jump) up
    /// to the end of the last frame: plus one audio frame duration on an
    /// audio clock, plus the last frame interval on a video clock.
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
        let last_frame = match open.clock {
            TrackKind::Audio => self.audio_frame,
            TrackKind::Video => open.last_delta,
        };
        let span = match next_start {
            Some(next) => next - open.start,
            None => open.last - open.start + last_frame,
        }
        .max(1);
        // Cut for frozen timestamps: the clock says nothing of its length.
        let duration = if open.content.saturating_sub(span) > self.config.max_fragment {
            open.content
        } else {
            span
        };
        if !self.out.is_empty() {
            events.push(SegmentEvent::Bytes(std::mem::take(&mut self.out)));
        }
        self.target_secs = self.target_secs.max(rounded_seconds(duration) as i64);
        self.target_settled = true;
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

    /// Forced cuts at `max` seconds (`maxFragment` set).
    fn segmenter(fragment: i64, max: i64) -> Segmenter {
        Segmenter::new(SegmenterConfig {
            fragment: fragment * SEC,
            max_fragment: max * SEC,
            forced_cuts: true,
        })
    }

    /// The default: `maxFragment` unset, cuts on keyframes only.
    fn keyframe_segmenter(fragment_ms: i64) -> Segmenter {
        let hls = HlsSettings {
            fragment: std::time::Duration::from_millis(fragment_ms as u64).into(),
            ..HlsSettings::default()
        };
        let config = SegmenterConfig::from_settings(&hls);
        assert!(!config.forced_cuts);
        assert_eq!(config.max_fragment, 10 * fragment_ms * 90);
        Segmenter::new(config)
    }

    /// Video at whole-millisecond timestamps `ms`, keyframes where `key`.
    fn push_ms(s: &mut Segmenter, ev: &mut Vec<SegmentEvent>, ms: i64, key: bool) {
        s.push(&video(ms * 90, key), ev).unwrap();
        s.push(&audio(ms * 90), ev).unwrap();
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
    fn forced_cut_at_max_fragment_is_continuous() {
        // With maxFragment set the segment is cut mid-GOP; the media goes on
        // without a break, so the next segment is not a discontinuity.
        let mut s = segmenter(2, 3);
        let mut ev = Vec::new();
        // Keyframe only at 0 and at 10 s.
        for i in 0..=(10 * 30) {
            s.push(&video(i * 3_000, i % 300 == 0), &mut ev).unwrap();
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        assert_eq!(segs[0], (0, false, 3 * SEC));
        assert_eq!(segs[1], (3 * SEC, false, 3 * SEC));
        assert!(segs.iter().all(|(_, d, _)| !d), "{segs:?}");
        assert!(segs.iter().all(|(_, _, d)| *d <= 3 * SEC));
        assert_eq!(s.stats().forced_cuts, 3);
    }

    #[test]
    fn long_gops_get_whole_gop_segments_by_default() {
        // OBS's default: x264 keyint 250 at 30 fps, a keyframe every 8.33 s,
        // with a 2 s fragment. Every segment starts on a keyframe and none
        // is a discontinuity.
        let mut s = keyframe_segmenter(2_000);
        let mut ev = Vec::new();
        for i in 0..(1000 + 1) {
            s.push(&video(i * 3_000, i % 250 == 0), &mut ev).unwrap();
            s.push(&audio(i * 3_000), &mut ev).unwrap();
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        let gop = 250 * 3_000;
        assert_eq!(
            segs,
            vec![
                (0, false, gop),
                (gop, false, gop),
                (2 * gop, false, gop),
                (3 * gop, false, gop),
                (4 * gop, false, 3_000),
            ]
        );
        assert_eq!(s.stats().keyframe_interval, Some(gop));
        assert_eq!(s.stats().forced_cuts, 0);
    }

    #[test]
    fn a_scene_cut_keyframe_closes_a_segment_early_to_keep_the_target_duration() {
        // 8.33 s GOPs make the target duration 8; an extra keyframe 1 s into
        // a segment is followed by a whole GOP, so waiting for it would make
        // a 9.33 s segment. The segment is closed on the extra keyframe.
        let mut s = keyframe_segmenter(2_000);
        let mut ev = Vec::new();
        let gop = 250;
        let keyframes = [0, gop, gop + 30, 2 * gop + 30, 3 * gop + 30];
        for i in 0..(3 * gop + 31) {
            s.push(&video(i * 3_000, keyframes.contains(&i)), &mut ev)
                .unwrap();
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        let starts: Vec<i64> = segs.iter().map(|s| s.0 / 3_000).collect();
        assert_eq!(starts, keyframes);
        for (_, disc, d) in &segs {
            assert!(!disc);
            assert!(rounded_seconds(*d) <= 8, "{segs:?}");
        }
    }

    #[test]
    fn no_keyframe_for_ten_fragments_drops_media_until_the_next_one() {
        // Without forced cuts nothing undecodable is published: a segment
        // that waited 10 × fragment is closed, the frames up to the next
        // keyframe are dropped and the segment after the gap is marked.
        let mut s = keyframe_segmenter(1_000);
        let mut ev = Vec::new();
        for i in 0..(15 * 30) {
            s.push(&video(i * 3_000, i == 0 || i == 12 * 30), &mut ev)
                .unwrap();
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        assert_eq!(segs, vec![(0, false, 10 * SEC), (12 * SEC, true, 3 * SEC)]);
        assert_eq!(s.stats().keyframe_waits_given_up, 1);
    }

    #[test]
    fn a_keyframe_within_half_a_frame_of_the_boundary_closes_the_segment() {
        // 30 fps stamped in whole milliseconds (33/33/34 ms); the keyframe
        // meant for the 2 s mark is stamped 1999 ms.
        let ms = |i: i64| if i == 0 { 0 } else { (i * 1000 - 1) / 30 };
        let deltas: Vec<i64> = (1..7).map(|i| ms(i) - ms(i - 1)).collect();
        assert!(deltas.iter().all(|d| *d == 33 || *d == 34), "{deltas:?}");
        let mut s = keyframe_segmenter(2_000);
        let mut ev = Vec::new();
        for i in 0..=(6 * 30) {
            push_ms(&mut s, &mut ev, ms(i), i % 60 == 0);
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        assert_eq!(ms(60), 1999);
        assert_eq!(
            segs.iter().map(|s| s.0 / 90).collect::<Vec<_>>(),
            vec![0, 1999, 3999, 5999]
        );
        assert_eq!(segs[0].2, 1999 * 90);
        assert!(segs.iter().all(|s| !s.1));
    }

    #[test]
    fn a_keyframe_more_than_half_a_frame_early_does_not_close_the_segment() {
        // 33 ms frames; keyframes 20 ms before each 2 s mark are too early
        // (tolerance 16.5 ms), the next keyframes at 4 s close the segment.
        let mut s = keyframe_segmenter(2_000);
        let mut ev = Vec::new();
        for i in 0..130 {
            let t = i * 33;
            let key = i == 0 || t == 1980 || t == 3993;
            push_ms(&mut s, &mut ev, t, key);
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        assert_eq!(segs[0], (0, false, 3993 * 90), "{segs:?}");
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

    /// The audio PES packets in `events`' TS bytes: (PTS, payload length).
    fn audio_pes(events: &[SegmentEvent]) -> Vec<(u64, usize)> {
        use mpeg2ts::pes::{PesPacketReader, ReadPesPacket};
        use mpeg2ts::ts::TsPacketReader;
        let ts: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                SegmentEvent::Bytes(b) => Some(b.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect();
        let mut reader = PesPacketReader::new(TsPacketReader::new(&ts[..]));
        let mut out = Vec::new();
        while let Some(pes) = reader.read_pes_packet().unwrap() {
            if pes.header.stream_id.is_audio() {
                out.push((pes.header.pts.unwrap().as_u64(), pes.data.len()));
            }
        }
        out
    }

    #[test]
    fn audio_with_a_frozen_timestamp_is_packed_into_bounded_pes() {
        // A video stream whose audio timestamp stops advancing: before the
        // bound every frame went into one PES until the next video frame,
        // which here never comes.
        let mut s = segmenter(2, 4);
        s.expect_tracks(Tracks {
            video: true,
            audio: true,
        });
        let mut ev = Vec::new();
        s.push(&video(0, true), &mut ev).unwrap();
        let frame = audio(0);
        let frames: usize = 10_000;
        for _ in 0..frames {
            s.push(&frame, &mut ev).unwrap();
        }
        s.finish(&mut ev).unwrap();
        let pes = audio_pes(&ev);
        let per_pes = AUDIO_PES_MAX_BYTES / frame.data.len();
        assert_eq!(pes.len(), frames.div_ceil(per_pes), "{} PES", pes.len());
        assert!(pes
            .iter()
            .all(|(_, len)| *len <= AUDIO_PES_MAX_BYTES && *len > 0));
        let total: usize = pes.iter().map(|(_, len)| len).sum();
        assert_eq!(total, frames * frame.data.len(), "no audio lost");
        // Each PES carries the (frozen) timestamp of its first frame.
        let pts = pes[0].0;
        assert!(pes.iter().all(|(p, _)| *p == pts));
    }

    #[test]
    fn audio_only_stream_with_a_frozen_timestamp_stays_bounded() {
        let mut s = segmenter(1, 2);
        let mut ev = Vec::new();
        for _ in 0..5_000 {
            s.push(&audio(1_920), &mut ev).unwrap();
            // The buffer never holds more than one PES worth.
            assert!(s.audio.len() <= AUDIO_PES_MAX_BYTES);
        }
        s.finish(&mut ev).unwrap();
        let pes = audio_pes(&ev);
        assert!(pes.iter().all(|(_, len)| *len <= AUDIO_PES_MAX_BYTES));
        assert_eq!(pes.iter().map(|(_, len)| len).sum::<usize>(), 5_000 * 8);
    }

    #[test]
    fn an_audio_only_stream_whose_clock_stops_is_cut_by_its_content() {
        // 2 s fragments, 20 s max: a frozen clock gives 22 s segments, each
        // listed with the length of the audio it holds.
        let mut s = keyframe_segmenter(2_000);
        let mut ev = Vec::new();
        let frames = 4_219; // 90 s of 48 kHz AAC
        for _ in 0..frames {
            s.push(&audio(1_920), &mut ev).unwrap();
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        assert_eq!(segs.len(), 5, "{segs:?}");
        for (_, discontinuity, duration) in &segs[..4] {
            assert!(!discontinuity);
            // 22 s less half a frame (the keyframe tolerance).
            assert_eq!(*duration, 1_031 * 1_920);
        }
        // The last segment's 95 frames are within the slack: it keeps its
        // timestamp span (one frame).
        assert_eq!(segs[4].2, 1_920);
        assert_eq!(s.stats().frozen_timestamp_cuts, 4);
        let audio_bytes: usize = audio_pes(&ev).iter().map(|(_, len)| len).sum();
        assert_eq!(audio_bytes, frames as usize * 8, "no audio lost");
    }

    #[test]
    fn a_video_stream_whose_clock_stops_is_cut_on_keyframes_by_its_content() {
        // 30 fps, a keyframe every 2 s, and a DTS that never moves.
        let mut s = keyframe_segmenter(2_000);
        let mut ev = Vec::new();
        for i in 0..1_800 {
            s.push(&video(0, i % 60 == 0), &mut ev).unwrap();
        }
        s.finish(&mut ev).unwrap();
        let segs = segments(&ev);
        assert_eq!(segs.len(), 3, "{segs:?}");
        // Cut on the first keyframe 22 s of frames in: nothing dropped.
        assert_eq!(segs[0].2, 660 * 3_000);
        assert_eq!(segs[1].2, 660 * 3_000);
        // The rest is within the slack: its timestamp span, one frame.
        assert_eq!(segs[2].2, 3_000);
        assert!(segs.iter().all(|(_, discontinuity, _)| !discontinuity));
        let stats = s.stats();
        assert_eq!(stats.frozen_timestamp_cuts, 2);
        assert_eq!(stats.keyframe_waits_given_up, 0);
    }

    #[test]
    fn timestamps_that_advance_are_never_overruled_by_the_content() {
        // 25 fps frames stamped 40 ms apart, every other one repeated
        // (a muxer that duplicates timestamps): the content runs ahead of
        // the clock by half, never by max_fragment within a segment.
        let mut s = keyframe_segmenter(2_000);
        let mut ev = Vec::new();
        for i in 0..1_500_i64 {
            s.push(&video(i / 2 * 3_600, i % 100 == 0), &mut ev)
                .unwrap();
        }
        s.finish(&mut ev).unwrap();
        assert_eq!(s.stats().frozen_timestamp_cuts, 0);
        let segs = segments(&ev);
        assert!(
            segs[..segs.len() - 1].iter().all(|s| s.2 == 2 * SEC),
            "{segs:?}"
        );
    }

    #[test]
    fn a_single_frame_larger_than_the_bound_gets_its_own_pes() {
        let mut s = segmenter(1, 2);
        let mut ev = Vec::new();
        let big = MediaFrame {
            data: Bytes::from(vec![0xaa; 5_000]),
            ..audio(0)
        };
        s.push(&audio(0), &mut ev).unwrap();
        s.push(&big, &mut ev).unwrap();
        s.push(&audio(1_920), &mut ev).unwrap();
        s.finish(&mut ev).unwrap();
        let lens: Vec<usize> = audio_pes(&ev).iter().map(|(_, len)| *len).collect();
        assert_eq!(lens, vec![8, 5_000, 8]);
    }

    /// Audio-only, `frames` AAC frames of `frame_ticks` each stamped in
    /// whole milliseconds as RTMP carries them; (segments, real duration).
    fn audio_only_at(frame_ticks: i64, frames: i64) -> (Vec<(i64, bool, i64)>, i64) {
        let mut s = segmenter(1, 2);
        s.set_audio_frame_duration(frame_ticks);
        let mut ev = Vec::new();
        // The exact start of frame i in 90 kHz ticks, then RTMP's rounding.
        let ms = |i: i64| (i * frame_ticks + 45) / 90;
        for i in 0..frames {
            s.push(&audio(ms(i) * 90), &mut ev).unwrap();
        }
        s.finish(&mut ev).unwrap();
        let last_start = ms(frames - 1) * 90;
        (segments(&ev), last_start + frame_ticks)
    }

    #[test]
    fn audio_at_44_1_khz_ends_on_the_real_frame_duration() {
        let frame = crate::media::AacConfig::parse(&[0x12, 0x08])
            .unwrap()
            .frame_duration_90khz();
        assert_eq!(
            frame, 2_090,
            "1024 samples at 44.1 kHz, to the nearest tick"
        );
        // One frame: the segment lasts one 44.1 kHz frame, not 48 kHz's 1920.
        let (segs, _) = audio_only_at(frame, 1);
        assert_eq!(segs, vec![(0, false, frame)]);
        // 100 frames (2.3 s): the segments add up to the real duration; the
        // last one ends one frame after the last frame's timestamp rather
        // than one (rounded, 23 or 24 ms) timestamp step.
        let (segs, total) = audio_only_at(frame, 100);
        assert!(segs.len() >= 2, "{segs:?}");
        assert_eq!(segs.iter().map(|s| s.2).sum::<i64>(), total);
        assert!(
            segs[..segs.len() - 1]
                .iter()
                .all(|(_, _, d)| (SEC - frame..SEC + frame).contains(d)),
            "{segs:?}"
        );
    }

    #[test]
    fn he_aac_frames_last_1024_core_samples() {
        // HE-AAC, 48 kHz out from a 24 kHz core: 2048 output samples per
        // frame, 42.67 ms, twice an AAC-LC frame at 48 kHz.
        let he = crate::media::AacConfig::parse(&[0x2b, 0x11, 0x88, 0x00]).unwrap();
        assert!(he.sbr);
        let frame = he.frame_duration_90khz();
        assert_eq!(frame, 3_840);
        let (segs, _) = audio_only_at(frame, 1);
        assert_eq!(segs, vec![(0, false, frame)]);
        let (segs, total) = audio_only_at(frame, 60);
        assert_eq!(segs.iter().map(|s| s.2).sum::<i64>(), total);
        // Cut on the frame within half a frame of 1 s: the 23rd, at 981 ms.
        assert_eq!(segs[1].0, 981 * 90, "{segs:?}");
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
