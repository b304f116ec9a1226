//! HLS packaging, sans-IO: cutting segments, TS muxing, the playlist model.

pub mod playlist;
pub mod segmenter;
pub mod ts;

pub use playlist::{PlaylistEntry, PlaylistWindow};
pub use segmenter::{SegmentEvent, Segmenter, SegmenterConfig};
pub use ts::{MuxError, Tracks, TsMuxer};
