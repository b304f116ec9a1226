#![no_main]
//! Arbitrary bytes from an RTMP client through the server's connection
//! state machine: handshake, chunks, commands, media, play.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = oxcast_ingest::fuzzing::rtmp_server_input(data);
});
