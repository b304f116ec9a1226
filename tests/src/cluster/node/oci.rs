//! A minimal writer of OCI image-layout tars (one uncompressed layer), enough
//! for the node's own images: the sandbox (pause) image and a busybox test
//! image. `ctr images import` loads them. The product images come from
//! `crate::images` (the IMAGES part of issue 11); this stays private to the
//! node so the node does not depend on it.

use std::io::Write;

use sha2::{Digest, Sha256};

/// One entry of an image layer.
pub(crate) enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// What the image config says about how to run it.
pub(crate) struct ImageConfig<'a> {
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
    pub user: &'a str,
}

/// The bytes of an OCI image-layout tar holding one image tagged `reference`
/// (`io.containerd.image.name` and `org.opencontainers.image.ref.name`).
pub(crate) fn image_layout_tar(
    reference: &str,
    entries: &[Entry],
    config: &ImageConfig<'_>,
) -> Result<Vec<u8>, String> {
    let layer = tar(entries)?;
    let layer_digest = digest(&layer);
    let config_json = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "User": config.user,
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .map_err(|e| e.to_string())?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config_json),
            "size": config_json.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .map_err(|e| e.to_string())?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": reference,
            },
        }],
    }))
    .map_err(|e| e.to_string())?;
    let blob = |bytes: &[u8]| Entry::File {
        path: format!("blobs/sha256/{}", hex(&Sha256::digest(bytes))),
        mode: 0o644,
        data: bytes.to_vec(),
    };
    tar(&[
        Entry::File {
            path: "oci-layout".into(),
            mode: 0o644,
            data: br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        },
        Entry::File {
            path: "index.json".into(),
            mode: 0o644,
            data: index,
        },
        Entry::Dir {
            path: "blobs".into(),
            mode: 0o755,
        },
        Entry::Dir {
            path: "blobs/sha256".into(),
            mode: 0o755,
        },
        blob(&layer),
        blob(&config_json),
        blob(&manifest),
    ])
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A ustar archive of `entries` (owner root, mtime 0, so equal inputs give
/// equal bytes and equal digests).
fn tar(entries: &[Entry]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for entry in entries {
        let (path, mode, type_flag, link, data): (&str, u32, u8, &str, &[u8]) = match entry {
            Entry::Dir { path, mode } => (path, *mode, b'5', "", &[]),
            Entry::File { path, mode, data } => (path, *mode, b'0', "", data),
            Entry::Symlink { path, target } => (path, 0o777, b'2', target, &[]),
        };
        let mut name = path.to_string();
        if type_flag == b'5' && !name.ends_with('/') {
            name.push('/');
        }
        if name.len() > 99 || link.len() > 99 {
            return Err(format!("tar path too long: {name}"));
        }
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        put_octal(&mut header[100..108], u64::from(mode));
        put_octal(&mut header[108..116], 0);
        put_octal(&mut header[116..124], 0);
        put_octal(&mut header[124..136], data.len() as u64);
        put_octal(&mut header[136..148], 0);
        header[148..156].copy_from_slice(b"        ");
        header[156] = type_flag;
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        let sum = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(sum.as_bytes());
        out.write_all(&header).map_err(|e| e.to_string())?;
        out.write_all(data).map_err(|e| e.to_string())?;
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    Ok(out)
}

/// NUL-terminated, zero-padded octal, as ustar wants numeric fields.
fn put_octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    field[..width].copy_from_slice(&text.as_bytes()[text.len() - width..]);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_tar_lists_the_layout() {
        let bytes = image_layout_tar(
            "oxcast.test/x:1",
            &[Entry::Symlink {
                path: "bin/sh".into(),
                target: "busybox".into(),
            }],
            &ImageConfig {
                entrypoint: &[],
                cmd: &["/bin/sh"],
                user: "65532",
            },
        )
        .expect("tar");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.tar");
        std::fs::write(&path, &bytes).expect("write");
        let out = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&path)
            .output()
            .expect("run tar");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            list.contains("index.json") && list.contains("oci-layout"),
            "{list}"
        );
        assert_eq!(list.matches("blobs/sha256/").count(), 4, "{list}");
    }
}
