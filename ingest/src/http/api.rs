//! `GET /api/streams`: the live streams, for the player page and for
//! dashboards.
//!
//! In the all-in-one role the answer comes from the stream table, where the
//! publisher's media path records codecs, resolution, frame rate and
//! bitrate. In the `http` role there is no publisher in the process, so the
//! HLS tree is scanned instead (see `scan`) and only what the playlists
//! reveal is reported; the other fields are `null`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;

use super::{error_response, scan, HttpState};
use crate::live::{LiveStream, LiveStreams};
use crate::store::Layout;

/// Where the list of live streams comes from.
#[derive(Clone)]
pub enum StreamSource {
    /// The stream table of this process's RTMP ingest, and the layout of
    /// the tree it writes.
    Publishers {
        streams: Arc<LiveStreams>,
        layout: Layout,
    },
    /// Only the HLS tree on disk (the `http` role).
    Tree,
}

impl std::fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Publishers { layout, .. } => write!(f, "Publishers {{ {layout:?} }}"),
            Self::Tree => f.write_str("Tree"),
        }
    }
}

/// The JSON body.
#[derive(Debug, Serialize)]
pub struct StreamList {
    pub streams: Vec<StreamJson>,
}

/// One live stream. Unknown values are `null`, never left out, so clients
/// see the same shape from both roles.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamJson {
    pub name: String,
    /// Absolute URL path of the media playlist on this server.
    pub playlist_url: String,
    /// Whether the playlist exists yet (the first segment takes a fragment
    /// duration to complete after a publisher starts).
    pub playlist_ready: bool,
    /// RFC 3339. With a publisher: when it started publishing. From the
    /// tree: the program date-time of the oldest segment still listed.
    pub started_at: Option<String>,
    /// RFC 6381 codecs, comma-separated, as in a multivariant playlist's
    /// `CODECS` attribute.
    pub codecs: Option<String>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// `WIDTHxHEIGHT`, as in a playlist's `RESOLUTION` attribute.
    pub resolution: Option<String>,
    pub frame_rate: Option<f64>,
    /// Bits per second: measured from the media received over the last
    /// seconds (publisher), or averaged over the listed segments (tree).
    pub bitrate: Option<u64>,
    pub audio_sample_rate: Option<u32>,
    pub audio_channels: Option<u8>,
    /// Seconds between the publisher's video keyframes (the longest of the
    /// last few). Segments are cut on keyframes, so when this is longer
    /// than `hls.fragment` the segments are this long.
    pub keyframe_interval: Option<f64>,
    /// `publisher` or `playlist`: which of the two the fields came from.
    pub source: &'static str,
}

fn rfc3339(t: time::OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn from_publisher(live: &LiveStream, prefix: &str, layout: &Layout) -> StreamJson {
    let info = live.info();
    let key = live.key.as_str();
    let rel = layout.playlist_url(&live.key);
    let codecs: Vec<&str> = [&info.video_codec, &info.audio_codec]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let resolution = info.width.zip(info.height).map(|(w, h)| format!("{w}x{h}"));
    StreamJson {
        name: key.to_string(),
        playlist_url: format!("{prefix}/{rel}"),
        playlist_ready: layout.playlist_path(&live.key).is_file(),
        started_at: rfc3339(live.started_at.into()),
        codecs: (!codecs.is_empty()).then(|| codecs.join(",")),
        video_codec: info.video_codec,
        audio_codec: info.audio_codec,
        width: info.width,
        height: info.height,
        resolution,
        frame_rate: info.frame_rate,
        bitrate: info.bitrate,
        audio_sample_rate: info.audio_sample_rate,
        audio_channels: info.audio_channels,
        keyframe_interval: info.keyframe_interval,
        source: "publisher",
    }
}

fn from_tree(s: scan::TreeStream, prefix: &str) -> StreamJson {
    StreamJson {
        name: s.name,
        playlist_url: format!("{prefix}/{}", s.playlist),
        playlist_ready: true,
        started_at: s.first_segment_at.and_then(rfc3339),
        codecs: None,
        video_codec: None,
        audio_codec: None,
        width: None,
        height: None,
        resolution: None,
        frame_rate: None,
        bitrate: s.bitrate,
        audio_sample_rate: None,
        audio_channels: None,
        keyframe_interval: None,
        source: "playlist",
    }
}

/// How long a computed list is reused. The player page polls every few
/// seconds per viewer; in the `http` role each computation scans the tree,
/// so many viewers must not mean many scans.
const LIST_TTL: Duration = Duration::from_secs(1);

/// The last JSON body and when it was computed.
#[derive(Debug, Default)]
pub struct ListCache {
    last: Mutex<Option<(Instant, Bytes)>>,
}

impl ListCache {
    fn fresh(&self, now: Instant) -> Option<Bytes> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(at, _)| now.duration_since(*at) < LIST_TTL)
            .map(|(_, body)| body.clone())
    }

    fn store(&self, at: Instant, body: Bytes) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, body));
    }
}

/// Computes the list (file system work, on the blocking pool).
async fn compute(state: &HttpState) -> Option<Vec<StreamJson>> {
    let prefix = state.prefix.clone();
    let root = state.hls.root().path().to_path_buf();
    let list = match &state.source {
        StreamSource::Publishers { streams, layout } => {
            let layout = layout.clone();
            let live = streams.all_live();
            tokio::task::spawn_blocking(move || {
                live.iter()
                    .map(|l| from_publisher(l, &prefix, &layout))
                    .collect::<Vec<_>>()
            })
            .await
        }
        StreamSource::Tree => {
            tokio::task::spawn_blocking(move || {
                scan::live_streams(&root, SystemTime::now())
                    .into_iter()
                    .map(|s| from_tree(s, &prefix))
                    .collect::<Vec<_>>()
            })
            .await
        }
    };
    list.ok()
}

/// The handler.
pub async fn streams(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let now = Instant::now();
    let body = match state.stream_list.fresh(now) {
        Some(body) => body,
        None => {
            let Some(streams) = compute(&state).await else {
                return error_response(StatusCode::INTERNAL_SERVER_ERROR);
            };
            let body = match serde_json::to_vec(&StreamList { streams }) {
                Ok(json) => Bytes::from(json),
                Err(e) => {
                    tracing::error!(error = %e, "cannot serialise the stream list");
                    return error_response(StatusCode::INTERNAL_SERVER_ERROR);
                }
            };
            state.stream_list.store(now, body.clone());
            body
        }
    };
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    state.cors.apply(&headers, h);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream_key::StreamKey;

    #[test]
    fn publisher_entry_has_every_field() {
        let streams = LiveStreams::default();
        let key = StreamKey::parse("cam").unwrap();
        let (live, _) = streams.claim(&key, 10).unwrap();
        let j = from_publisher(&live, "/live", &Layout::new("/nonexistent", true));
        assert_eq!(j.playlist_url, "/live/cam/index.m3u8");
        assert!(!j.playlist_ready);
        assert!(j.started_at.is_some());
        assert_eq!(j.codecs, None);
        let text = serde_json::to_value(&j).unwrap();
        for field in [
            "name",
            "playlistUrl",
            "startedAt",
            "codecs",
            "resolution",
            "frameRate",
            "bitrate",
            "keyframeInterval",
        ] {
            assert!(text.get(field).is_some(), "{field} missing");
        }
        live.record_keyframe_interval(8.333_33);
        let j = from_publisher(&live, "/live", &Layout::new("/nonexistent", true));
        assert_eq!(j.keyframe_interval, Some(8.33));
        let flat = from_publisher(&live, "", &Layout::new("/nonexistent", false));
        assert_eq!(flat.playlist_url, "/cam.m3u8");
    }
}
