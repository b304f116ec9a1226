//! Shared support for the end-to-end tests: spawning real binaries, real media tools.

pub mod chart;
pub mod cluster;
pub mod images;
pub mod load;
pub mod media;
pub mod operator;
pub mod rtmp_client;
pub mod tcp_proxy;
