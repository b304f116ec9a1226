//! oxcast-ingest: an RTMP ingest server that packages live streams as HLS,
//! and the HTTP server that serves them.
//!
//! Data flows one way: [`rtmp`] (sessions, one task per connection) →
//! [`media`] (FLV → Annex B / ADTS) → [`hls`] (segmenter, TS mux, playlist)
//! → [`store`] (files on disk) ← [`http`] (serving). [`live`] is the table
//! of streams; [`server`] wires the roles together.

pub mod auth;
pub mod cli;
#[doc(hidden)]
pub mod fuzzing;
pub mod hls;
pub mod http;
pub mod live;
pub mod media;
pub mod metrics;
pub mod ownership;
pub mod rtmp;
pub mod server;
pub mod store;
pub mod stream_key;
