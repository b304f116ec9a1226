//! HLS packaging, sans-IO: cutting segments, TS muxing, the playlist model.

pub mod encryption;
pub mod playlist;
pub mod segmenter;
pub mod ts;

pub use encryption::{KeyRotation, SegmentCipher};
pub use playlist::{PlaylistEntry, PlaylistWindow, SegmentKey};
pub use segmenter::{SegmentEvent, Segmenter, SegmenterConfig};
pub use ts::{MuxError, Tracks, TsMuxer};
