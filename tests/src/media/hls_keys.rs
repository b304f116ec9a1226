//! Encrypted HLS, checked independently of the server's code: key tokens
//! minted from the documented algorithm (README "Minting a key token",
//! docs/key-token-vectors.json), `EXT-X-KEY` lines read back, and segments
//! decrypted with the RustCrypto crates.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A key token: `expires.viewer.hex(HMAC-SHA-256(secret,
/// "oxcast-key-v1\n" + stream + "\n" + expires + "\n" + viewer))`.
pub fn mint(secret: &str, stream: &str, expires: u64, viewer: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("oxcast-key-v1\n{stream}\n{expires}\n{viewer}").as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{expires}.{viewer}.{hex}")
}

/// AES-128-CBC with PKCS#7 padding (RFC 8216 §5.2); None when the key,
/// the IV or the padding is wrong.
pub fn decrypt(key: &[u8], iv: &[u8; 16], data: &[u8]) -> Option<Vec<u8>> {
    cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
        .ok()?
        .decrypt_padded_vec_mut::<Pkcs7>(data)
        .ok()
}

/// Is `data` whole MPEG-TS packets?
pub fn is_transport_stream(data: &[u8]) -> bool {
    !data.is_empty() && data.len().is_multiple_of(188) && data.chunks(188).all(|p| p[0] == 0x47)
}

/// One listed segment and the key line in force for it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub uri: String,
    pub key_uri: String,
    pub iv: [u8; 16],
}

/// The segments of a media playlist with their `EXT-X-KEY` (every listed
/// segment must have one, with an explicit IV).
#[track_caller]
pub fn listed(text: &str) -> Vec<Listed> {
    let mut key: Option<(String, [u8; 16])> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(attrs) = line.strip_prefix("#EXT-X-KEY:") {
            assert!(attrs.starts_with("METHOD=AES-128,"), "{line}");
            let uri = attrs
                .split("URI=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("no URI in {line}"));
            let hex = attrs
                .split("IV=0x")
                .nth(1)
                .unwrap_or_else(|| panic!("no IV in {line}"));
            assert_eq!(hex.len(), 32, "{line}");
            let mut iv = [0u8; 16];
            for (i, b) in iv.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex IV");
            }
            key = Some((uri.to_string(), iv));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let (key_uri, iv) = key
                .clone()
                .unwrap_or_else(|| panic!("segment {line} without a key line:\n{text}"));
            out.push(Listed {
                uri: line.to_string(),
                key_uri,
                iv,
            });
        }
    }
    out
}

/// `/keys/cam/12.key?token=…` → 12.
#[track_caller]
pub fn key_id(uri: &str) -> u64 {
    let name = uri.rsplit('/').next().unwrap_or(uri);
    let name = name.split('?').next().unwrap_or(name);
    name.strip_suffix(".key")
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("key URI {uri:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mints_the_published_vectors() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/key-token-vectors.json"),
        )
        .expect("docs/key-token-vectors.json");
        let vectors: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let list = vectors
            .get("sign")
            .and_then(|v| v.as_array())
            .expect("the sign vectors");
        assert!(!list.is_empty());
        for v in list {
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default();
            let expires = v.get("expires").and_then(|x| x.as_u64()).expect("expires");
            assert_eq!(
                mint(s("secret"), s("stream"), expires, s("viewer")),
                s("token"),
                "{v}"
            );
        }
    }

    #[test]
    fn reads_key_lines_and_ids() {
        let text = "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"/keys/cam/7.key?token=t\",IV=0x000102030405060708090a0b0c0d0e0f\n#EXTINF:1.0,\n1.ts\n2.ts\n";
        let l = listed(text);
        assert_eq!(l.len(), 2);
        assert_eq!(key_id(&l[1].key_uri), 7);
        assert_eq!(l[0].iv[15], 15);
    }
}
