//! What AES-128 segment encryption costs per byte, and whether the
//! streaming `SegmentCipher` adds anything to the cipher itself.
//!
//! Three passes over the same 2 s segment of a 3 Mbit/s stream (750 kB),
//! in the same run:
//! - `copy`: the bytes copied once (the floor of any pass over them);
//! - `one-shot`: RustCrypto AES-128-CBC with PKCS#7 over the whole segment
//!   in one call (the cipher alone);
//! - `streaming`: `SegmentCipher` fed the way the storage writer feeds it
//!   (TS packets in writes of 7 × 188 bytes, each returned at once).
//!
//! `streaming / one-shot` near 1.0 means the encryption path costs what
//! AES-128-CBC costs and no more; CBC encryption is serial (each block
//! needs the previous ciphertext), so that is the floor per stream.
//!
//! Run: `cargo bench -p oxcast-ingest --bench segment_cipher`

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
use oxcast_ingest::hls::SegmentCipher;

const SEGMENT: usize = 750_000 / 188 * 188;
const WRITE: usize = 7 * 188;
const ROUNDS: usize = 7;

/// Best of `ROUNDS` (each at least 0.3 s), in ns per byte.
fn ns_per_byte(mut pass: impl FnMut() -> usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut bytes = 0usize;
        while started.elapsed() < Duration::from_millis(300) {
            bytes += pass();
        }
        let ns = started.elapsed().as_nanos() as f64 / bytes as f64;
        best = best.min(ns);
    }
    best
}

fn main() {
    let segment: Vec<u8> = (0..SEGMENT).map(|i| (i * 31 % 251) as u8).collect();
    let key = [7u8; 16];
    let iv = [9u8; 16];

    let mut copy_out = vec![0u8; SEGMENT];
    let copy = ns_per_byte(|| {
        copy_out.copy_from_slice(black_box(&segment));
        black_box(&copy_out);
        SEGMENT
    });
    let one_shot = ns_per_byte(|| {
        let out = cbc::Encryptor::<aes::Aes128>::new(&key.into(), &iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(black_box(&segment));
        black_box(out.len());
        SEGMENT
    });
    let streaming = ns_per_byte(|| {
        let mut cipher = SegmentCipher::new(&key, &iv);
        let mut written = 0usize;
        for piece in black_box(&segment).chunks(WRITE) {
            written += black_box(cipher.update(piece)).len();
        }
        written += cipher.finish().len();
        black_box(written);
        SEGMENT
    });

    let stream_bytes_per_s = 3_000_000.0 / 8.0;
    println!(
        "segment_cipher: {SEGMENT} bytes per segment, writes of {WRITE} bytes, best of {ROUNDS}"
    );
    println!("copy        {copy:8.3} ns/byte");
    println!("one-shot    {one_shot:8.3} ns/byte (AES-128-CBC alone)");
    println!(
        "streaming   {streaming:8.3} ns/byte (SegmentCipher), streaming / one-shot = {:.3}",
        streaming / one_shot
    );
    println!(
        "per 3 Mbit/s stream: {:.4} % of a core for encryption",
        streaming * stream_bytes_per_s / 1e9 * 100.0
    );
}
