#![no_main]
//! Arbitrary text through both playlist parsers; what the model parses
//! must render to a fixed point.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = oxcast_ingest::fuzzing::playlist(data);
});
