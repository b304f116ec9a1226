//! One publisher's media path: FLV tags → [`Remuxer`] → [`Segmenter`] →
//! [`StorageWriter`] (the stream's writer thread, which drives its
//! `HlsOutput`), plus fan-out to RTMP players. Nothing here waits for storage.

use std::sync::Arc;

use bytes::Bytes;
use rml_rtmp::sessions::StreamMetadata;

use crate::hls::segmenter::SegmenterStats;
use crate::hls::{SegmentEvent, Segmenter, SegmenterConfig, Tracks};
use crate::live::{LiveGuard, LiveStream, PlayPacket};
use crate::media::{AudioTag, MediaError, MediaFrame, Remuxer, VideoTag};
use crate::metrics::GaugeShare;
use crate::ownership::StreamClaim;
use crate::store::StorageWriter;

/// A publication holds its stream twice, both released on drop (also on a
/// panic): the slot in this server's table, then the stream's ownership.
/// Fields drop in declaration order, so the slot goes first.
pub struct Publication {
    live: Arc<LiveStream>,
    slot: LiveGuard,
    claim: StreamClaim,
    remuxer: Remuxer,
    segmenter: Segmenter,
    output: StorageWriter,
    events: Vec<SegmentEvent>,
    media_errors: u64,
    fragment: i64,
    /// What the segmenter measured when last looked at.
    seen: SegmenterStats,
    /// The keyframe interval is longer than the fragment (counted in the
    /// metric while it is, warned about once).
    long_keyframe_interval: GaugeShare,
    warned: bool,
}

/// 90 kHz ticks as seconds for people: `8.3`, `2`.
fn seconds(ticks: i64) -> String {
    let s = ticks as f64 / 90_000.0;
    let text = format!("{s:.1}");
    text.strip_suffix(".0").map(str::to_string).unwrap_or(text)
}

/// The warning for a publisher keyed less often than every fragment.
pub fn long_keyframe_interval_advice(interval: i64, fragment: i64) -> String {
    let (interval, fragment) = (seconds(interval), seconds(fragment));
    format!(
        "keyframe interval {interval} s is longer than the {fragment} s fragment: segments are \
         {interval} s long and viewers wait longer to start; set your encoder's keyframe \
         interval to {fragment} s — OBS: Settings → Output → Streaming → Keyframe Interval; \
         ffmpeg: -g <frame rate × {fragment}>"
    )
}

/// Whether a measured keyframe interval is longer than the fragment, with
/// the cut tolerance (a few milliseconds of timestamp rounding).
fn too_long(interval: i64, fragment: i64) -> bool {
    interval > fragment + 1_800
}

impl Publication {
    pub fn new(
        slot: LiveGuard,
        claim: StreamClaim,
        output: StorageWriter,
        config: SegmenterConfig,
    ) -> Self {
        let long_keyframe_interval = GaugeShare::new(slot.metrics().clone(), |m| {
            &m.publishers_long_keyframe_interval
        });
        Self {
            live: slot.live().clone(),
            slot,
            claim,
            remuxer: Remuxer::new(),
            segmenter: Segmenter::new(config),
            output,
            events: Vec::new(),
            media_errors: 0,
            fragment: config.fragment,
            seen: SegmenterStats::default(),
            long_keyframe_interval,
            warned: false,
        }
    }

    pub fn metadata(&mut self, metadata: StreamMetadata) {
        self.segmenter.expect_tracks(Tracks {
            video: metadata.video_codec_id.is_some() || metadata.video_width.is_some(),
            audio: metadata.audio_codec_id.is_some() || metadata.audio_sample_rate.is_some(),
        });
        self.live.record_metadata(&metadata);
        let metadata = Arc::new(metadata);
        self.live.headers().metadata = Some(metadata.clone());
        self.live.send(PlayPacket::Metadata(metadata));
    }

    pub fn video(&mut self, timestamp: u32, data: Bytes) {
        let tag = VideoTag::classify(&data);
        let keyframe = tag.is_keyframe();
        let is_header = tag.is_sequence_header();
        if is_header {
            self.live.headers().video = Some((timestamp, data.clone()));
            self.segmenter.expect_tracks(Tracks {
                video: true,
                audio: false,
            });
        }
        let result = self.remuxer.push_video(timestamp, &data);
        let config = is_header.then(|| self.remuxer.video_config()).flatten();
        self.live.record_video(timestamp, data.len(), config);
        if !is_header {
            self.live.send(PlayPacket::Video {
                timestamp,
                data,
                keyframe,
            });
        }
        self.media(result);
    }

    pub fn audio(&mut self, timestamp: u32, data: Bytes) {
        let is_header = AudioTag::classify(&data).is_sequence_header();
        if is_header {
            self.live.headers().audio = Some((timestamp, data.clone()));
            self.segmenter.expect_tracks(Tracks {
                video: false,
                audio: true,
            });
        }
        let result = self.remuxer.push_audio(timestamp, &data);
        let config = is_header.then(|| self.remuxer.audio_config()).flatten();
        if let Some(config) = config {
            self.segmenter
                .set_audio_frame_duration(config.frame_duration_90khz());
        }
        self.live.record_audio(timestamp, data.len(), config);
        if !is_header {
            self.live.send(PlayPacket::Audio { timestamp, data });
        }
        self.media(result);
    }

    fn media(&mut self, result: Result<Option<MediaFrame>, MediaError>) {
        if self.remuxer.take_config_change() {
            tracing::info!(stream = %self.live.key, "codec configuration changed; next segment starts a discontinuity");
            self.segmenter.force_discontinuity();
        }
        let frame = match result {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                self.media_errors += 1;
                // Log the first and then every thousandth, so a broken
                // encoder cannot flood the log.
                if self.media_errors % 1000 == 1 {
                    tracing::warn!(stream = %self.live.key, error = %e, count = self.media_errors, "dropping unusable media");
                }
                return;
            }
        };
        if let Err(e) = self.segmenter.push(&frame, &mut self.events) {
            tracing::error!(stream = %self.live.key, error = %e, "muxing failed");
        }
        self.drain();
        self.observe_segmenter();
    }

    /// Tells the broadcaster (log, metric, streams API) what the segmenter
    /// measured about its keyframes.
    fn observe_segmenter(&mut self) {
        let now = self.segmenter.stats();
        if now == self.seen {
            return;
        }
        let before = std::mem::replace(&mut self.seen, now);
        if let Some(interval) = now
            .keyframe_interval
            .filter(|_| now.keyframe_interval != before.keyframe_interval)
        {
            self.live
                .record_keyframe_interval(interval as f64 / 90_000.0);
            let long = too_long(interval, self.fragment);
            self.long_keyframe_interval.set(long);
            if long && !self.warned {
                self.warned = true;
                let advice = long_keyframe_interval_advice(interval, self.fragment);
                tracing::warn!(stream = %self.live.key, keyframe_interval_s = interval as f64 / 90_000.0, "{advice}");
            }
        }
        if now.keyframe_waits_given_up > before.keyframe_waits_given_up {
            tracing::warn!(stream = %self.live.key, "no keyframe for 10 fragments: media up to the next keyframe is dropped (it could not be played); set the encoder's keyframe interval to the fragment length");
        }
        if now.frozen_timestamp_cuts > before.frozen_timestamp_cuts {
            let cuts = now.frozen_timestamp_cuts - before.frozen_timestamp_cuts;
            self.slot
                .metrics()
                .segments_cut_on_frozen_timestamps
                .fetch_add(cuts, std::sync::atomic::Ordering::Relaxed);
            if before.frozen_timestamp_cuts == 0 {
                tracing::warn!(stream = %self.live.key, "the publisher's timestamps stopped advancing while media kept coming: segments are cut by the length of the media they hold; check the encoder's clock or muxer");
            }
        }
        if now.forced_cuts > before.forced_cuts && before.forced_cuts == 0 {
            tracing::info!(stream = %self.live.key, "segment cut between keyframes at hls.maxFragment; viewers who join on such a segment wait for the next keyframe");
        }
    }

    fn drain(&mut self) {
        for event in self.events.drain(..) {
            self.output.submit(event);
        }
    }

    /// Does this replica still own the stream (see [`crate::ownership`])?
    pub fn owned(&self) -> bool {
        self.claim.holds()
    }

    /// The publisher left: complete the last segment and hand the slot and
    /// the claim to the writer, which (after the queued writes) ends the
    /// playlist, gives the history back to the stream table and then lets
    /// the ownership go. The event loop does not wait for any of it.
    pub fn finish(mut self) {
        if let Err(e) = self.segmenter.finish(&mut self.events) {
            tracing::error!(stream = %self.live.key, error = %e, "muxing failed");
        }
        self.drain();
        let Publication {
            live,
            slot,
            claim,
            output,
            long_keyframe_interval,
            ..
        } = self;
        let key = live.key.clone();
        // The publisher's gauges, like its slot, count until the playlist
        // is ended (as when this ran on the connection).
        output.finish(Box::new(move |history| {
            tracing::info!(stream = %key, segments = history.window.entries.len(), "publish ended");
            slot.finish(history);
            drop(long_keyframe_interval);
            drop(claim);
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_names_the_interval_the_fragment_and_the_obs_setting() {
        let text = long_keyframe_interval_advice(250 * 3_000, 2 * 90_000);
        assert!(
            text.starts_with(
                "keyframe interval 8.3 s is longer than the 2 s fragment: segments are 8.3 s long"
            ),
            "{text}"
        );
        assert!(text.contains("set your encoder's keyframe interval to 2 s"));
        assert!(text.contains("OBS: Settings → Output → Streaming → Keyframe Interval"));
    }

    #[test]
    fn whole_millisecond_stamps_are_not_a_long_interval() {
        assert!(!too_long(2_001 * 90, 2 * 90_000));
        assert!(too_long(4 * 90_000, 2 * 90_000));
    }
}
