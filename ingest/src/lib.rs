//! oxcast-ingest: an RTMP ingest server that packages live streams as HLS,
//! and the HTTP server that serves them.
//!
//! Data flows one way: [`rtmp`] (sessions, one task per connection) →
//! [`media`] (FLV → Annex B / ADTS) → [`hls`] (segmenter, TS mux, playlist)
//! → [`store`] (files on disk) ← [`http`] (serving).

pub mod hls;
pub mod media;
