//! One publisher's media path: FLV tags → [`Remuxer`] → [`Segmenter`] →
//! [`HlsOutput`], plus fan-out to RTMP players.

use std::sync::Arc;

use bytes::Bytes;
use rml_rtmp::sessions::StreamMetadata;

use crate::hls::{SegmentEvent, Segmenter, SegmenterConfig, Tracks};
use crate::live::{LiveGuard, LiveStream, PlayPacket};
use crate::media::{MediaError, MediaFrame, Remuxer};
use crate::ownership::StreamClaim;
use crate::store::HlsOutput;

/// A publication holds its stream twice, both released on drop (also on a
/// panic): the slot in this server's table, then the stream's ownership.
/// Fields drop in declaration order, so the slot goes first.
pub struct Publication {
    live: Arc<LiveStream>,
    slot: LiveGuard,
    claim: StreamClaim,
    remuxer: Remuxer,
    segmenter: Segmenter,
    output: HlsOutput,
    events: Vec<SegmentEvent>,
    media_errors: u64,
}

impl Publication {
    pub fn new(
        slot: LiveGuard,
        claim: StreamClaim,
        output: HlsOutput,
        config: SegmenterConfig,
    ) -> Self {
        Self {
            live: slot.live().clone(),
            slot,
            claim,
            remuxer: Remuxer::new(),
            segmenter: Segmenter::new(config),
            output,
            events: Vec::new(),
            media_errors: 0,
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
        let keyframe = data.first().is_some_and(|b| b >> 4 == 1);
        let is_header = data.len() > 1 && data[1] == 0 && data[0] & 0x0f == 7;
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
        let is_header = data.len() > 1 && data[1] == 0 && data[0] >> 4 == 10;
        if is_header {
            self.live.headers().audio = Some((timestamp, data.clone()));
            self.segmenter.expect_tracks(Tracks {
                video: false,
                audio: true,
            });
        }
        let result = self.remuxer.push_audio(timestamp, &data);
        let config = is_header.then(|| self.remuxer.audio_config()).flatten();
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
    }

    fn drain(&mut self) {
        for event in self.events.drain(..) {
            self.output.handle(event);
        }
    }

    /// Does this replica still own the stream (see [`crate::ownership`])?
    pub fn owned(&self) -> bool {
        self.claim.holds()
    }

    /// The publisher left: complete the last segment, end the playlist and
    /// hand the history back to the stream table; then the ownership goes.
    pub fn finish(mut self) {
        if let Err(e) = self.segmenter.finish(&mut self.events) {
            tracing::error!(stream = %self.live.key, error = %e, "muxing failed");
        }
        self.drain();
        let history = self.output.finish();
        tracing::info!(stream = %self.live.key, segments = history.window.entries.len(), "publish ended");
        self.slot.finish(history);
        drop(self.claim);
    }
}
