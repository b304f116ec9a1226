#![no_main]
//! Arbitrary FLV audio/video tags through remux, segmenter and playlist.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = oxcast_ingest::fuzzing::flv_to_hls(data);
});
