//! AES-128 segment encryption (RFC 8216 §4.3.2.4, §5.2), sans-IO: a
//! transform from plaintext TS bytes to ciphertext, and the key-rotation
//! rule. Where keys are stored and who may fetch them is `store::keys` and
//! `http::keys`.
//!
//! Every segment is encrypted on its own with AES-128-CBC and PKCS#7
//! padding under the current key and its own random IV, which its
//! `EXT-X-KEY` line carries (`IV=0x…`). So two segments under one key never
//! share an IV (identical first TS packets do not show as identical
//! ciphertext), and a player never has to derive the IV from the media
//! sequence number. Keys and IVs come from the operating system's CSPRNG
//! (`getrandom`). No cryptography is implemented here: the RustCrypto `aes`
//! and `cbc` crates do it.

use aes::Aes128;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::generic_array::GenericArray;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

/// AES-128 key and IV length, and the cipher's block size.
pub const BLOCK: usize = 16;

type Encryptor = cbc::Encryptor<Aes128>;
type Decryptor = cbc::Decryptor<Aes128>;

/// 16 bytes from the operating system's CSPRNG.
pub fn random_block() -> Result<[u8; BLOCK], getrandom::Error> {
    let mut b = [0u8; BLOCK];
    getrandom::fill(&mut b)?;
    Ok(b)
}

/// Encrypts one segment as its bytes arrive: whole blocks are encrypted by
/// [`update`](Self::update), the rest is padded (PKCS#7, 1–16 bytes) by
/// [`finish`](Self::finish). The output is exactly
/// `encrypt(key, iv, all input)`.
pub struct SegmentCipher {
    cbc: Encryptor,
    /// Input not yet encrypted: less than one block.
    pending: Vec<u8>,
    /// The blocks [`update`](Self::update) returns, reused from call to
    /// call: a segment is written in many small pieces, and an allocation
    /// per piece would cost more than the copy.
    out: Vec<u8>,
}

impl std::fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCipher").finish_non_exhaustive()
    }
}

impl SegmentCipher {
    pub fn new(key: &[u8; BLOCK], iv: &[u8; BLOCK]) -> Self {
        Self {
            cbc: Encryptor::new(key.into(), iv.into()),
            pending: Vec::with_capacity(BLOCK),
            out: Vec::new(),
        }
    }

    /// Encrypts what whole blocks `plaintext` completes and returns them
    /// (valid until the next call).
    pub fn update(&mut self, plaintext: &[u8]) -> &[u8] {
        let total = self.pending.len() + plaintext.len();
        let whole = total - total % BLOCK;
        self.out.clear();
        if whole == 0 {
            self.pending.extend_from_slice(plaintext);
            return &self.out;
        }
        // One copy of the input: into the output, encrypted in place; the
        // incomplete last block (under 16 bytes) waits for more.
        self.out.extend_from_slice(&self.pending);
        self.out.extend_from_slice(plaintext);
        self.pending.clear();
        self.pending.extend_from_slice(&self.out[whole..]);
        self.out.truncate(whole);
        for block in self.out.chunks_exact_mut(BLOCK) {
            self.cbc
                .encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        &self.out
    }

    /// The last, padded block(s).
    pub fn finish(self) -> Vec<u8> {
        self.cbc.encrypt_padded_vec_mut::<Pkcs7>(&self.pending)
    }
}

/// A whole segment at once.
pub fn encrypt(key: &[u8; BLOCK], iv: &[u8; BLOCK], plaintext: &[u8]) -> Vec<u8> {
    Encryptor::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext)
}

/// Ciphertext that does not decrypt to validly padded plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ciphertext is not AES-128-CBC with PKCS#7 padding under this key")]
pub struct DecryptError;

/// What a player does with a segment (used by tests and tools).
pub fn decrypt(
    key: &[u8; BLOCK],
    iv: &[u8; BLOCK],
    ciphertext: &[u8],
) -> Result<Vec<u8>, DecryptError> {
    Decryptor::new(key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| DecryptError)
}

/// A key in use: its id (the id of the first segment encrypted with it,
/// so ids never repeat for a stream) and its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ActiveKey {
    pub id: u64,
    pub key: [u8; BLOCK],
}

impl std::fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log key bytes.
        f.debug_struct("ActiveKey").field("id", &self.id).finish()
    }
}

/// When to start a new key [hls_fragments_per_key]: every
/// `fragments_per_key` segments, or once per publication when 0.
#[derive(Debug)]
pub struct KeyRotation {
    fragments_per_key: u32,
    current: Option<ActiveKey>,
    used: u32,
}

impl KeyRotation {
    pub fn new(fragments_per_key: u32) -> Self {
        Self {
            fragments_per_key,
            current: None,
            used: 0,
        }
    }

    /// The key segment `segment_id` needs now, before it is used: `Some`
    /// with a fresh id when a new key must be made (then
    /// [`install`](Self::install) it once it is stored), `None` when the
    /// current key goes on.
    pub fn due(&self, segment_id: u64) -> Option<u64> {
        let rotate = self.fragments_per_key > 0 && self.used >= self.fragments_per_key;
        (self.current.is_none() || rotate).then_some(segment_id)
    }

    /// Makes `key` the current one.
    pub fn install(&mut self, key: ActiveKey) {
        self.current = Some(key);
        self.used = 0;
    }

    /// The current key, counting one more segment encrypted with it.
    pub fn take_for_segment(&mut self) -> Option<ActiveKey> {
        let k = self.current.clone()?;
        self.used += 1;
        Some(k)
    }

    pub fn current_id(&self) -> Option<u64> {
        self.current.as_ref().map(|k| k.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_one_shot_and_decrypts_back() {
        let key = random_block().unwrap();
        let iv = random_block().unwrap();
        // TS-sized and odd-sized pieces, incl. empty ones.
        let plain: Vec<u8> = (0..188 * 50 + 7).map(|i| (i * 31 % 251) as u8).collect();
        for piece in [1usize, 15, 16, 17, 188, 4096, plain.len()] {
            let mut c = SegmentCipher::new(&key, &iv);
            let mut out = Vec::new();
            for chunk in plain.chunks(piece) {
                out.extend(c.update(chunk));
                out.extend(c.update(&[]));
            }
            out.extend(c.finish());
            assert_eq!(out, encrypt(&key, &iv, &plain), "piece {piece}");
            assert_eq!(out.len(), (plain.len() / BLOCK + 1) * BLOCK, "PKCS#7 pads");
            assert_eq!(decrypt(&key, &iv, &out).unwrap(), plain);
        }
        // An exact multiple of the block size gets a whole padding block.
        assert_eq!(encrypt(&key, &iv, &[0; 32]).len(), 48);
        assert_eq!(SegmentCipher::new(&key, &iv).finish().len(), 16);
    }

    #[test]
    fn ciphertext_hides_the_ts_and_needs_the_right_key() {
        let key = random_block().unwrap();
        let iv = random_block().unwrap();
        let plain = vec![0x47u8; 188 * 4];
        let ct = encrypt(&key, &iv, &plain);
        assert!(
            ct.chunks(188).any(|p| p[0] != 0x47),
            "not a TS sync pattern"
        );
        let mut other = key;
        other[0] ^= 1;
        assert_ne!(decrypt(&other, &iv, &ct).ok(), Some(plain.clone()));
        // Same key, another IV: another ciphertext from the first block on.
        let iv2 = random_block().unwrap();
        assert_ne!(ct[..16], encrypt(&key, &iv2, &plain)[..16]);
    }

    #[test]
    fn known_answer_nist_sp800_38a_cbc_aes128() {
        // F.2.1 CBC-AES128.Encrypt, first block (padding block follows).
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let key: [u8; 16] = hex("2b7e151628aed2a6abf7158809cf4f3c").try_into().unwrap();
        let iv: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let ct = encrypt(&key, &iv, &hex("6bc1bee22e409f96e93d7e117393172a"));
        assert_eq!(ct[..16], hex("7649abac8119b246cee98e9b12e9197d")[..]);
    }

    #[test]
    fn rotation_every_n_segments_or_once_per_publish() {
        let mut r = KeyRotation::new(3);
        let mut ids = Vec::new();
        for seg in 10..20u64 {
            if let Some(id) = r.due(seg) {
                r.install(ActiveKey { id, key: [0; 16] });
            }
            ids.push(r.take_for_segment().unwrap().id);
        }
        assert_eq!(ids, [10, 10, 10, 13, 13, 13, 16, 16, 16, 19]);

        let mut once = KeyRotation::new(0);
        for seg in 0..100u64 {
            if let Some(id) = once.due(seg) {
                once.install(ActiveKey { id, key: [0; 16] });
            }
            assert_eq!(once.take_for_segment().unwrap().id, 0);
        }
        assert!(!format!(
            "{:?}",
            ActiveKey {
                id: 1,
                key: [7; 16]
            }
        )
        .contains('7'));
    }
}
