#![no_main]
//! Arbitrary H.264 SPS NAL units through the picture-size parser.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = oxcast_ingest::fuzzing::sps(data);
});
