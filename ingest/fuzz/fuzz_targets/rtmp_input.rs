#![no_main]
//! Arbitrary bytes from an RTMP client: handshake, chunks, messages.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = oxcast_ingest::fuzzing::rtmp_server_input(data);
});
