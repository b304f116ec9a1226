//! Shared support for the end-to-end tests: spawning real binaries, real media tools.
//!
//! One owner per concept: [`http`] is the one raw HTTP client, [`wait`] the
//! one poll helper, [`log`] the one tracing setup.

pub mod chart;
pub mod cluster;
pub mod http;
pub mod images;
pub mod load;
pub mod log;
pub mod media;
pub mod operator;
pub mod rtmp_client;
pub mod tcp_proxy;
pub mod wait;
