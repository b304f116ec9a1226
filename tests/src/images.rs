//! The container images without a container engine.
//!
//! `docker/Dockerfile` is the one definition of the operator and ingest
//! images. This module reads its final stages ([`dockerfile_stages`]),
//! builds the static binaries with `docker/build-static.sh` (what the
//! Dockerfile runs), lays out each image's file tree from the stage's own
//! `COPY` lines ([`stage_layer`]) and writes the images as OCI image-layout
//! tars ([`build_oci_images`], [`write_oci_layers`]) that
//! `ctr -n k8s.io images import` loads under the chart's image names.
//! `tests/tests/chart_images.rs` runs the same trees under `chroot`;
//! `tests/tests/images_oci.rs` proves the tars and the Dockerfile agree.
//!
//! # Why a small writer instead of a tool
//!
//! The OCI image layout is four JSON documents and tar files addressed by
//! their SHA-256; writing it takes a few hundred lines with the `tar` and
//! `sha2` crates. The maintained tools available here do not fit better:
//! `skopeo` only copies existing images (it cannot make one from a
//! directory); `umoci` can (`umoci init/new/insert/config`), but it takes
//! file ownership from the disk, so the tree would first have to be
//! written and `chown`ed as root, and the result depends on who builds it;
//! go-containerregistry's `crane` would be one more Go build in the run
//! and still wants a layer tar made by someone. Here the layer's
//! ownership, modes and timestamps are data ([`Layer`]), exactly as
//! Docker's `COPY` defines them (root unless `--chown`), independent of who
//! runs the build, and the output is reproducible (every timestamp is the
//! epoch, as distroless' own images are). A real tool still checks the
//! result: the drift test reads every tar back with `skopeo` (Debian's,
//! installed by `tests/run.sh`) besides this module's own reader
//! ([`inspect_oci_archive`]), which re-hashes every blob.
//!
//! Layers are uncompressed tars (`application/vnd.oci.image.layer.v1.tar`):
//! the images only travel from this disk into a local containerd, where
//! gzip would cost time and buy nothing.
//!
//! # The base image
//!
//! The Dockerfile's final stages start `FROM
//! gcr.io/distroless/static-debian12:nonroot`, which cannot be pulled here
//! (no registry). [`distroless_base_layer`] and [`DISTROLESS_BASE_ENV`]
//! stand in for it with what our binaries rely on: `/etc/passwd` and
//! `/etc/group` naming the user `nonroot` (65532), a world-writable `/tmp`,
//! the home directory `/home/nonroot`, the CA bundle
//! `/etc/ssl/certs/ca-certificates.crt` (the host's, from Debian's
//! `ca-certificates`, as distroless ships Debian's) with `SSL_CERT_FILE`
//! pointing at it, and `/etc/nsswitch.conf`. Like Docker's image, each
//! oxcast image has two layers: that base, then the stage's own files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::media::process::run_ok;
use crate::media::{target_dir, workspace_root};

/// The user of the distroless `nonroot` images (and of ours).
pub const NONROOT_UID: u32 = 65532;

/// The image configuration's `Env` that distroless/static-debian12 sets;
/// a stage's `ENV` lines add to it.
pub const DISTROLESS_BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
];

/// distroless' `nonroot` variant's `User` and `WorkingDir`, which a stage's
/// `USER` and `WORKDIR` override.
pub const DISTROLESS_NONROOT_USER: &str = "65532";
/// See [`DISTROLESS_NONROOT_USER`].
pub const DISTROLESS_NONROOT_WORKDIR: &str = "/home/nonroot";

/// The host's CA bundle (Debian's `ca-certificates`), copied into the
/// base layer where distroless has its own copy of the same package.
pub const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Media types of the OCI image spec.
pub mod media_type {
    /// `index.json`.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An image configuration.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An uncompressed layer.
    pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
}

/// The annotation on `index.json`'s manifest that names the image.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// containerd's own naming annotation; `ctr images import` prefers it and
/// takes it verbatim.
pub const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";

/// What can go wrong reading the Dockerfile, building or writing images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The Dockerfile says something this module does not understand; the
    /// drift between it and the images would go unnoticed, so this fails.
    #[error("docker/Dockerfile line {line}: {message}")]
    Dockerfile {
        /// 1-based line of the instruction (its first line).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A final stage lacks something an image needs, or copies from an
    /// unknown place.
    #[error("docker/Dockerfile stage {stage}: {message}")]
    Stage {
        /// The stage name.
        stage: String,
        /// What is wrong.
        message: String,
    },
    /// `docker/build-static.sh` failed.
    #[error("docker/build-static.sh: {0}")]
    Build(String),
    /// The chart's Chart.yaml or values.yaml lacks the image names.
    #[error("chart: {0}")]
    Chart(String),
    /// A tree or an archive holds something that cannot be in a layer
    /// (a device, a path that is not UTF-8) or an archive is not a valid
    /// OCI image layout.
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------
// The Dockerfile

/// One `COPY` of a final stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInstr {
    /// `--from=`: a build stage, or `context` for the build context.
    pub from: String,
    /// The path in that stage.
    pub src: String,
    /// The absolute path in the image.
    pub dest: String,
    /// `--chown=uid:gid` (numeric only); Docker makes everything else root's.
    pub chown: Option<(u32, u32)>,
    /// `--chmod=` (octal).
    pub chmod: Option<u32>,
}

/// What one stage of docker/Dockerfile sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stage {
    /// The `FROM` image, as written.
    pub base: String,
    /// `ARG NAME=default` of this stage (defaults, as a build without
    /// `--build-arg` sees them).
    pub args: BTreeMap<String, String>,
    /// The `COPY` lines, in order.
    pub copies: Vec<CopyInstr>,
    /// `USER uid:gid` (numeric; a lone uid means gid = uid).
    pub user: Option<(u32, u32)>,
    /// `WORKDIR`.
    pub workdir: Option<String>,
    /// `ENV`, with `$VAR` / `${VAR}` substituted.
    pub env: BTreeMap<String, String>,
    /// `ENTRYPOINT` (exec form).
    pub entrypoint: Vec<String>,
    /// `CMD` (exec form).
    pub cmd: Vec<String>,
    /// `LABEL`s, with `$VAR` / `${VAR}` substituted.
    pub labels: BTreeMap<String, String>,
    /// `EXPOSE`d ports as `PORT/PROTO` (`8080/tcp`).
    pub exposed_ports: BTreeSet<String>,
}

/// The stages of the repository's `docker/Dockerfile`, by `AS` name.
pub fn dockerfile_stages() -> Result<BTreeMap<String, Stage>, Error> {
    let path = workspace_root().join("docker/Dockerfile");
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    parse_dockerfile(&text)
}

/// Parses the stages of a Dockerfile: the instructions that shape an
/// image's files and configuration. `RUN` and the like are skipped (the
/// final stages have none: distroless has no shell).
pub fn parse_dockerfile(text: &str) -> Result<BTreeMap<String, Stage>, Error> {
    let mut stages = BTreeMap::new();
    let mut current: Option<(String, Stage)> = None;
    for (line, instruction) in logical_lines(text) {
        let bad = |message: String| Error::Dockerfile { line, message };
        let (keyword, rest) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((instruction.as_str(), ""));
        let keyword = keyword.to_ascii_uppercase();
        let rest = rest.trim();
        if keyword == "FROM" {
            if let Some((name, stage)) = current.take() {
                stages.insert(name, stage);
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            let words: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
            let base = words
                .first()
                .ok_or_else(|| bad("FROM without an image".into()))?;
            let name = match words.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("AS") => name.to_string(),
                [_] => format!("stage-{}", stages.len()),
                _ => return Err(bad(format!("FROM {rest}: expected IMAGE [AS NAME]"))),
            };
            current = Some((
                name,
                Stage {
                    base: base.to_string(),
                    ..Stage::default()
                },
            ));
            continue;
        }
        // Instructions before the first FROM (global ARGs) only feed FROM.
        let Some((_, stage)) = current.as_mut() else {
            continue;
        };
        match keyword.as_str() {
            "ARG" => {
                for word in split_words(rest).map_err(&bad)? {
                    let (k, v) = word.split_once('=').unwrap_or((word.as_str(), ""));
                    stage.args.insert(k.to_string(), v.to_string());
                }
            }
            "COPY" | "ADD" => {
                if keyword == "ADD" {
                    return Err(bad("ADD: use COPY (ADD fetches and unpacks)".into()));
                }
                let words = split_words(rest).map_err(&bad)?;
                let mut copy = CopyInstr {
                    from: "context".into(),
                    src: String::new(),
                    dest: String::new(),
                    chown: None,
                    chmod: None,
                };
                let mut paths = Vec::new();
                for word in words {
                    if let Some(v) = word.strip_prefix("--from=") {
                        copy.from = v.to_string();
                    } else if let Some(v) = word.strip_prefix("--chown=") {
                        let (u, g) = v.split_once(':').unwrap_or((v, v));
                        copy.chown = Some((
                            u.parse()
                                .map_err(|_| bad(format!("--chown={v}: not numeric")))?,
                            g.parse()
                                .map_err(|_| bad(format!("--chown={v}: not numeric")))?,
                        ));
                    } else if let Some(v) = word.strip_prefix("--chmod=") {
                        copy.chmod = Some(
                            u32::from_str_radix(v, 8)
                                .map_err(|_| bad(format!("--chmod={v}: not octal")))?,
                        );
                    } else if word.starts_with("--") {
                        return Err(bad(format!("COPY {word}: unsupported flag")));
                    } else {
                        paths.push(substitute(&word, &stage.args, &stage.env).map_err(&bad)?);
                    }
                }
                match paths.as_slice() {
                    [src, dest] => {
                        copy.src = src.clone();
                        copy.dest = dest.clone();
                    }
                    _ => {
                        // Only final stages need this to be exact; build
                        // stages may copy several files into `./`.
                        copy.src = paths[..paths.len().saturating_sub(1)].join(" ");
                        copy.dest = paths.last().cloned().unwrap_or_default();
                    }
                }
                stage.copies.push(copy);
            }
            "USER" => {
                let spec = substitute(rest, &stage.args, &stage.env).map_err(&bad)?;
                let (u, g) = spec.split_once(':').unwrap_or((&spec, &spec));
                stage.user = Some((
                    u.parse()
                        .map_err(|_| bad(format!("USER {spec}: use a numeric uid[:gid]")))?,
                    g.parse()
                        .map_err(|_| bad(format!("USER {spec}: use a numeric uid[:gid]")))?,
                ));
            }
            "WORKDIR" => {
                let dir = substitute(rest, &stage.args, &stage.env).map_err(&bad)?;
                let dir = match (&stage.workdir, dir.starts_with('/')) {
                    (_, true) => dir,
                    (Some(prev), false) => format!("{}/{dir}", prev.trim_end_matches('/')),
                    (None, false) => format!("/{dir}"),
                };
                stage.workdir = Some(dir);
            }
            "ENV" => {
                let words = split_words(rest).map_err(&bad)?;
                if words.first().is_some_and(|w| !w.contains('=')) {
                    // Legacy `ENV KEY value with spaces`.
                    let (k, v) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    let v = substitute(v.trim(), &stage.args, &stage.env).map_err(&bad)?;
                    stage.env.insert(k.to_string(), v);
                } else {
                    for word in words {
                        let (k, v) = word
                            .split_once('=')
                            .ok_or_else(|| bad(format!("ENV {word}: expected KEY=value")))?;
                        let v = substitute(v, &stage.args, &stage.env).map_err(&bad)?;
                        stage.env.insert(k.to_string(), v);
                    }
                }
            }
            "LABEL" => {
                for word in split_words(rest).map_err(&bad)? {
                    let (k, v) = word
                        .split_once('=')
                        .ok_or_else(|| bad(format!("LABEL {word}: expected key=value")))?;
                    let k = substitute(k, &stage.args, &stage.env).map_err(&bad)?;
                    let v = substitute(v, &stage.args, &stage.env).map_err(&bad)?;
                    stage.labels.insert(k, v);
                }
            }
            "EXPOSE" => {
                for word in rest.split_whitespace() {
                    let port = substitute(word, &stage.args, &stage.env).map_err(&bad)?;
                    let port = if port.contains('/') {
                        port
                    } else {
                        format!("{port}/tcp")
                    };
                    stage.exposed_ports.insert(port);
                }
            }
            "ENTRYPOINT" | "CMD" => {
                let list: Vec<String> = serde_json::from_str(rest).map_err(|e| {
                    bad(format!(
                        "{keyword} {rest}: use the exec form [\"...\"] ({e})"
                    ))
                })?;
                if keyword == "ENTRYPOINT" {
                    stage.entrypoint = list;
                    // Docker: a new ENTRYPOINT resets an inherited CMD.
                    stage.cmd.clear();
                } else {
                    stage.cmd = list;
                }
            }
            "SHELL" | "VOLUME" | "STOPSIGNAL" | "HEALTHCHECK" | "ONBUILD" => {
                return Err(bad(format!(
                    "{keyword}: not modelled by oxcast_tests::images (teach it, or the images drift)"
                )));
            }
            // RUN, MAINTAINER: no effect on the final stages' files here.
            _ => {}
        }
    }
    if let Some((name, stage)) = current {
        stages.insert(name, stage);
    }
    Ok(stages)
}

/// The Dockerfile's instructions with continuation lines joined and
/// comments dropped (also inside continuations, as Docker does), each
/// with the number of its first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && !current.is_empty()) {
            continue;
        }
        if current.is_empty() {
            start = i + 1;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body.trim_end());
            current.push(' ');
        } else {
            current.push_str(trimmed);
            let line = std::mem::take(&mut current);
            if !line.trim().is_empty() {
                out.push((start, line.trim().to_string()));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push((start, current.trim().to_string()));
    }
    out
}

/// Splits on whitespace outside double quotes; quotes are removed and
/// `\"` / `\\` inside them unescaped (`key="a b"` is one word `key=a b`).
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => match chars.next() {
                Some(n @ ('"' | '\\')) => word.push(n),
                Some(n) => {
                    word.push('\\');
                    word.push(n);
                }
                None => return Err(format!("trailing backslash in {s}")),
            },
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(format!("unterminated quote in {s}"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `$NAME` and `${NAME}` from the stage's ARGs and ENVs (ENV wins, as in
/// Docker); an unknown name is an error rather than an empty string.
fn substitute(
    s: &str,
    args: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in {s}"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() || name.contains(':') {
            return Err(format!("unsupported substitution in {s}"));
        }
        let value = env
            .get(name)
            .or_else(|| args.get(name))
            .ok_or_else(|| format!("${name} is not an ARG or ENV of this stage ({s})"))?;
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------
// Layers

/// What a layer entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with the contents of a file on disk.
    File(PathBuf),
    /// A regular file with these contents.
    Bytes(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
}

/// One file, directory or link of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (07777).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// A layer's file tree as data: paths (relative to `/`, no leading or
/// trailing slash) with their ownership and modes. Sorted, so parents come
/// before their children in the tar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
}

/// A layer entry as a listing: what the drift test compares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    /// The path, relative to `/`.
    pub path: String,
    /// `d` (directory), `f` (file) or `l` (symlink).
    pub kind: char,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Bytes of a file; 0 otherwise.
    pub size: u64,
    /// A symlink's target; empty otherwise.
    pub link: String,
}

fn rel(path: &str) -> String {
    path.trim_matches('/').to_string()
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Layer {
        Layer::default()
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// The entry at `path` (absolute or relative).
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&rel(path))
    }

    /// Adds (or replaces) an entry; missing parent directories are added
    /// as root's, mode 0755 (what `COPY` creates).
    pub fn insert(&mut self, path: &str, entry: Entry) {
        let path = rel(path);
        if path.is_empty() {
            return;
        }
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.entries
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Entry {
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                });
            parent = p.parent();
        }
        self.entries.insert(path, entry);
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32, owner: (u32, u32)) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::Dir,
                mode,
                uid: owner.0,
                gid: owner.1,
            },
        );
    }

    /// Adds a file with the given contents.
    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32, owner: (u32, u32)) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::Bytes(data.into()),
                mode,
                uid: owner.0,
                gid: owner.1,
            },
        );
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str, owner: (u32, u32)) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::Symlink(target.to_string()),
                mode: 0o777,
                uid: owner.0,
                gid: owner.1,
            },
        );
    }

    /// Docker's `COPY source dest` (with `--chown=owner`, `--chmod=mode`):
    /// a file, or a directory's contents, recursively; modes from the
    /// source unless `chmod`; everything root's unless `owner`. Symbolic
    /// links are copied as links.
    pub fn copy(
        &mut self,
        source: &Path,
        dest: &str,
        owner: Option<(u32, u32)>,
        chmod: Option<u32>,
    ) -> Result<(), Error> {
        let meta = fs::symlink_metadata(source).map_err(io_err(source))?;
        let (uid, gid) = owner.unwrap_or((0, 0));
        let mode = chmod.unwrap_or(meta.permissions().mode() & 0o7777);
        let kind = if meta.file_type().is_symlink() {
            let target = fs::read_link(source).map_err(io_err(source))?;
            EntryKind::Symlink(utf8(&target)?.to_string())
        } else if meta.is_dir() {
            EntryKind::Dir
        } else if meta.is_file() {
            EntryKind::File(source.to_path_buf())
        } else {
            return Err(Error::Invalid(format!(
                "{}: not a file, directory or symlink",
                source.display()
            )));
        };
        let is_dir = kind == EntryKind::Dir;
        self.insert(
            dest,
            Entry {
                kind,
                mode,
                uid,
                gid,
            },
        );
        if is_dir {
            let mut children: Vec<_> = fs::read_dir(source)
                .map_err(io_err(source))?
                .collect::<Result<_, _>>()
                .map_err(io_err(source))?;
            children.sort_by_key(|e| e.file_name());
            for child in children {
                let name = child.file_name();
                let name = name.to_str().ok_or_else(|| {
                    Error::Invalid(format!("{}: not UTF-8", child.path().display()))
                })?;
                self.copy(
                    &child.path(),
                    &format!("{}/{name}", rel(dest)),
                    owner,
                    chmod,
                )?;
            }
        }
        Ok(())
    }

    /// The layer as a sorted listing (sizes read from disk for files).
    pub fn listing(&self) -> Result<Vec<Listed>, Error> {
        self.entries
            .iter()
            .map(|(path, e)| {
                let (kind, size, link) = match &e.kind {
                    EntryKind::Dir => ('d', 0, String::new()),
                    EntryKind::File(src) => (
                        'f',
                        fs::metadata(src).map_err(io_err(src))?.len(),
                        String::new(),
                    ),
                    EntryKind::Bytes(b) => ('f', b.len() as u64, String::new()),
                    EntryKind::Symlink(t) => ('l', 0, t.clone()),
                };
                Ok(Listed {
                    path: path.clone(),
                    kind,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    size,
                    link,
                })
            })
            .collect()
    }

    /// Writes the layer into directory `root` (for running it under
    /// `chroot`). Ownership is applied when running as root, else left
    /// to the current user.
    pub fn materialize(&self, root: &Path) -> Result<(), Error> {
        let as_root = unsafe_geteuid() == 0;
        for (path, e) in &self.entries {
            let target = root.join(path);
            match &e.kind {
                EntryKind::Dir => fs::create_dir_all(&target).map_err(io_err(&target))?,
                EntryKind::File(src) => {
                    fs::copy(src, &target).map_err(io_err(&target))?;
                }
                EntryKind::Bytes(data) => fs::write(&target, data).map_err(io_err(&target))?,
                EntryKind::Symlink(to) => {
                    std::os::unix::fs::symlink(to, &target).map_err(io_err(&target))?
                }
            }
        }
        // Children first, so a read-only directory is closed last.
        for (path, e) in self.entries.iter().rev() {
            let target = root.join(path);
            if as_root {
                std::os::unix::fs::lchown(&target, Some(e.uid), Some(e.gid))
                    .map_err(io_err(&target))?;
            }
            if !matches!(e.kind, EntryKind::Symlink(_)) {
                fs::set_permissions(&target, fs::Permissions::from_mode(e.mode))
                    .map_err(io_err(&target))?;
            }
        }
        Ok(())
    }

    /// The layer as an uncompressed tar (every timestamp the epoch).
    pub fn to_tar(&self) -> Result<Vec<u8>, Error> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, e) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(e.mode);
            header.set_uid(e.uid.into());
            header.set_gid(e.gid.into());
            header.set_mtime(0);
            let tar_err = |source| Error::Io {
                path: PathBuf::from(path),
                source,
            };
            match &e.kind {
                EntryKind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, format!("{path}/"), io::empty())
                        .map_err(tar_err)?;
                }
                EntryKind::File(src) => {
                    let file = fs::File::open(src).map_err(io_err(src))?;
                    let len = file.metadata().map_err(io_err(src))?.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(len);
                    // `take` guards against a file that grows meanwhile.
                    builder
                        .append_data(&mut header, path, file.take(len))
                        .map_err(tar_err)?;
                }
                EntryKind::Bytes(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    builder
                        .append_data(&mut header, path, data.as_slice())
                        .map_err(tar_err)?;
                }
                EntryKind::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, path, target)
                        .map_err(tar_err)?;
                }
            }
        }
        builder
            .into_inner()
            .map_err(|source| Error::Invalid(format!("finishing a layer tar: {source}")))
    }
}

fn utf8(path: &Path) -> Result<&str, Error> {
    path.to_str()
        .ok_or_else(|| Error::Invalid(format!("{}: not UTF-8", path.display())))
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The stand-in for gcr.io/distroless/static-debian12:nonroot's file
/// tree, which cannot be pulled here: what our static binaries rely on
/// from it (users, groups, /tmp, the CA bundle), with distroless' own
/// ownership and modes. Needs the host's Debian `ca-certificates`.
pub fn distroless_base_layer() -> Result<Layer, Error> {
    let root = (0, 0);
    let nonroot = (NONROOT_UID, NONROOT_UID);
    let mut layer = Layer::new();
    layer.dir("etc", 0o755, root);
    layer.bytes(
        "etc/passwd",
        "root:x:0:0:root:/root:/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
         nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        0o644,
        root,
    );
    layer.bytes(
        "etc/group",
        "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n",
        0o644,
        root,
    );
    layer.bytes(
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n\
         networks: files\nprotocols: files\nservices: files\n",
        0o644,
        root,
    );
    let ca = Path::new(HOST_CA_BUNDLE);
    if !ca.is_file() {
        return Err(Error::Invalid(format!(
            "{HOST_CA_BUNDLE} is missing: install Debian's ca-certificates (the images' CA bundle)"
        )));
    }
    layer.dir("etc/ssl", 0o755, root);
    layer.dir("etc/ssl/certs", 0o755, root);
    layer.copy(ca, HOST_CA_BUNDLE, None, Some(0o644))?;
    layer.dir("home", 0o755, root);
    layer.dir("home/nonroot", 0o700, nonroot);
    layer.dir("root", 0o700, root);
    layer.dir("tmp", 0o1777, root);
    Ok(layer)
}

// ---------------------------------------------------------------------------
// Building the images of docker/Dockerfile

/// The images `docker/Dockerfile` defines, each with the chart value that
/// names its repository.
pub const IMAGES: &[(&str, &str)] = &[
    ("oxcast-operator", "operator.image.repository"),
    ("oxcast-ingest", "ingest.image.repository"),
];

/// The image name the chart uses by default for Dockerfile target
/// `stage`: the repository from `charts/oxcast/values.yaml` and the tag
/// `appVersion` from `Chart.yaml`.
pub fn chart_image_name(stage: &str) -> Result<String, Error> {
    let key = IMAGES
        .iter()
        .find(|(s, _)| *s == stage)
        .map(|(_, k)| *k)
        .ok_or_else(|| Error::Chart(format!("no chart value names the image of stage {stage}")))?;
    let chart = workspace_root().join("charts/oxcast");
    let read_yaml = |file: &str| -> Result<serde_yaml::Value, Error> {
        let path = chart.join(file);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_yaml::from_str(&text).map_err(|e| Error::Chart(format!("{file}: {e}")))
    };
    let values = read_yaml("values.yaml")?;
    let mut node = &values;
    for part in key.split('.') {
        node = &node[part];
    }
    let repository = node
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Chart(format!("values.yaml has no {key}")))?;
    let app_version = read_yaml("Chart.yaml")?["appVersion"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Chart("Chart.yaml has no appVersion".into()))?;
    Ok(format!("{repository}:{app_version}"))
}

/// `docker/build-static.sh` output (binaries under `usr/local/bin`),
/// built once per process into `$CARGO_TARGET_DIR/oxcast-images/`, where
/// cargo's incremental cache keeps later builds to seconds. Each process
/// gets its own copy (named after its pid; copies of dead processes are
/// removed) so concurrent test binaries never see a half-written one.
pub fn static_build() -> Result<&'static Path, Error> {
    static OUT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = scratch_dir("static").map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut cmd = Command::new(workspace_root().join("docker/build-static.sh"));
        // The work tree's Cargo.lock may be mid-update while others edit
        // manifests; --locked is for the Dockerfile's clean checkout.
        cmd.arg(&out)
            .env("CARGO_TARGET_DIR", target_dir())
            .env("OXCAST_BUILD_LOCKED", "0");
        // What cargo sets for the test process is not the build's business:
        // ring's build script depends on CARGO_MANIFEST_DIR, so leaking it
        // would make every build from a test a cold one (minutes), and the
        // next build from a shell another.
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
                || matches!(
                    key,
                    "CARGO"
                        | "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                )
            {
                cmd.env_remove(key);
            }
        }
        run_ok(cmd, Duration::from_secs(40 * 60))?;
        tracing::info!(dir = %out.display(), elapsed = ?started.elapsed(), "static binaries built");
        Ok(out)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(|e| Error::Build(e.clone()))
}

/// A directory of this process under `$CARGO_TARGET_DIR/oxcast-images/`
/// (`PID-purpose`), for image tars: removed by a later process once this
/// one is gone, so test runs leave nothing behind for long.
pub fn scratch_dir(purpose: &str) -> Result<PathBuf, Error> {
    let parent = target_dir().join("oxcast-images");
    remove_stale_builds(&parent);
    let dir = parent.join(format!("{}-{purpose}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    Ok(dir)
}

fn remove_stale_builds(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if pid != std::process::id() as i32 && !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Where a `COPY --from=STAGE SRC` of a final stage comes from here:
/// stage `build` is `docker/build-static.sh`'s output; stage `player` is
/// `player/dist` (built by `tests/run.sh`; `None` when it has not been
/// built yet, and the image then has an empty player directory).
pub fn copy_source(stage_name: &str, copy: &CopyInstr) -> Result<Option<PathBuf>, Error> {
    let bad = |message: String| Error::Stage {
        stage: stage_name.to_string(),
        message,
    };
    match copy.from.as_str() {
        "build" => {
            let rel = copy
                .src
                .strip_prefix("/out/")
                .ok_or_else(|| bad(format!("COPY --from=build {}: not under /out", copy.src)))?;
            Ok(Some(static_build()?.join(rel)))
        }
        "player" => {
            if copy.src != "/player/dist" {
                return Err(bad(format!(
                    "COPY --from=player {}: expected /player/dist",
                    copy.src
                )));
            }
            let dist = workspace_root().join("player/dist");
            Ok(dist.is_dir().then_some(dist))
        }
        other => Err(bad(format!(
            "COPY --from={other}: only the build and player stages are known here"
        ))),
    }
}

/// The files a final stage adds to its base: its `COPY` lines (with
/// Docker's ownership rules) and its `WORKDIR` (created as root's when no
/// `COPY` made it).
pub fn stage_layer(stage_name: &str, stage: &Stage) -> Result<Layer, Error> {
    let mut layer = Layer::new();
    for copy in &stage.copies {
        match copy_source(stage_name, copy)? {
            Some(source) => layer.copy(&source, &copy.dest, copy.chown, copy.chmod)?,
            None => {
                tracing::warn!(stage = stage_name, dest = %copy.dest, "player/dist is not built: the image gets an empty player directory");
                layer.dir(&copy.dest, 0o755, copy.chown.unwrap_or((0, 0)));
            }
        }
    }
    if let Some(workdir) = &stage.workdir {
        if layer.get(workdir).is_none() {
            layer.dir(workdir, 0o755, (0, 0));
        }
    }
    Ok(layer)
}

/// An image configuration (the parts of the OCI config's `config` that
/// the images set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `User` (`uid:gid`).
    pub user: Option<String>,
    /// `Env` as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `ExposedPorts` (`8080/tcp`).
    pub exposed_ports: BTreeSet<String>,
}

impl ImageConfig {
    /// A final stage's configuration on the distroless nonroot base:
    /// the base's `Env`, `User` and `WorkingDir`, overridden by the stage.
    pub fn from_stage(stage: &Stage) -> ImageConfig {
        let mut env: BTreeMap<String, String> = DISTROLESS_BASE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend(stage.env.clone());
        ImageConfig {
            entrypoint: stage.entrypoint.clone(),
            cmd: stage.cmd.clone(),
            user: Some(
                stage
                    .user
                    .map(|(u, g)| format!("{u}:{g}"))
                    .unwrap_or_else(|| DISTROLESS_NONROOT_USER.to_string()),
            ),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: Some(
                stage
                    .workdir
                    .clone()
                    .unwrap_or_else(|| DISTROLESS_NONROOT_WORKDIR.to_string()),
            ),
            labels: stage.labels.clone(),
            exposed_ports: stage.exposed_ports.clone(),
        }
    }

    /// The OCI config's `config` object.
    pub fn to_json(&self) -> Value {
        let mut c = serde_json::Map::new();
        if let Some(user) = &self.user {
            c.insert("User".into(), json!(user));
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            c.insert("ExposedPorts".into(), Value::Object(ports));
        }
        if !self.env.is_empty() {
            c.insert("Env".into(), json!(self.env));
        }
        if !self.entrypoint.is_empty() {
            c.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            c.insert("Cmd".into(), json!(self.cmd));
        }
        if let Some(dir) = &self.working_dir {
            c.insert("WorkingDir".into(), json!(dir));
        }
        if !self.labels.is_empty() {
            c.insert("Labels".into(), json!(self.labels));
        }
        Value::Object(c)
    }
}

/// An image written as an OCI image-layout tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciImage {
    /// The full reference it is imported as (`ghcr.io/oxcast/oxcast-operator:0.1.0`).
    pub name: String,
    /// The tar.
    pub path: PathBuf,
    /// `sha256:...` of the manifest (what `crictl images --digests` shows).
    pub manifest_digest: String,
}

/// Builds the operator and ingest images of `docker/Dockerfile` into
/// `out_dir` (`oxcast-operator.tar`, `oxcast-ingest.tar`), named as the
/// chart's defaults name them. The first call in a process runs
/// `docker/build-static.sh` (minutes cold, seconds warm).
pub fn build_oci_images(out_dir: &Path) -> Result<Vec<OciImage>, Error> {
    let stages = dockerfile_stages()?;
    let base = distroless_base_layer()?;
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let mut images = Vec::new();
    for (stage_name, _) in IMAGES {
        let stage = stages.get(*stage_name).ok_or_else(|| Error::Stage {
            stage: stage_name.to_string(),
            message: "missing from docker/Dockerfile".into(),
        })?;
        let layer = stage_layer(stage_name, stage)?;
        let name = chart_image_name(stage_name)?;
        let out = out_dir.join(format!("{stage_name}.tar"));
        let started = Instant::now();
        let image = write_oci_layers(
            &[
                (base.clone(), format!("{} (stand-in)", stage.base)),
                (layer, format!("docker/Dockerfile stage {stage_name}")),
            ],
            &ImageConfig::from_stage(stage),
            &name,
            &out,
        )?;
        tracing::info!(name = %name, path = %out.display(), elapsed = ?started.elapsed(), "OCI image written");
        images.push(image);
    }
    Ok(images)
}

/// The OCI/Go name of this machine's architecture.
pub fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Writes layers (each with a history note) and a configuration as an
/// OCI image-layout tar at `out_tar` (atomically: a temporary file is
/// renamed into place).
pub fn write_oci_layers(
    layers: &[(Layer, String)],
    config: &ImageConfig,
    name: &str,
    out_tar: &Path,
) -> Result<OciImage, Error> {
    if !name.contains(':') && !name.contains('@') {
        return Err(Error::Invalid(format!(
            "image name {name}: give a full reference with a tag"
        )));
    }
    let epoch = "1970-01-01T00:00:00Z";
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut layer_descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (layer, note) in layers {
        let tar = layer.to_tar()?;
        let digest = format!("sha256:{}", sha256_hex(&tar));
        layer_descriptors.push(json!({
            "mediaType": media_type::LAYER_TAR,
            "digest": digest,
            "size": tar.len(),
        }));
        diff_ids.push(digest);
        history.push(json!({"created": epoch, "created_by": note}));
        blobs.push((sha256_hex(&tar), tar));
    }
    let config_doc = json!({
        "created": epoch,
        "architecture": oci_architecture(),
        "os": "linux",
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let config_bytes =
        serde_json::to_vec(&config_doc).map_err(|e| Error::Invalid(format!("config JSON: {e}")))?;
    let config_hex = sha256_hex(&config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::MANIFEST,
        "config": {
            "mediaType": media_type::CONFIG,
            "digest": format!("sha256:{config_hex}"),
            "size": config_bytes.len(),
        },
        "layers": layer_descriptors,
    });
    blobs.push((config_hex, config_bytes));
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| Error::Invalid(format!("manifest JSON: {e}")))?;
    let manifest_hex = sha256_hex(&manifest_bytes);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::INDEX,
        "manifests": [{
            "mediaType": media_type::MANIFEST,
            "digest": format!("sha256:{manifest_hex}"),
            "size": manifest_bytes.len(),
            "platform": {"architecture": oci_architecture(), "os": "linux"},
            "annotations": {
                REF_NAME_ANNOTATION: name,
                CONTAINERD_NAME_ANNOTATION: name,
            },
        }],
    });
    blobs.push((manifest_hex.clone(), manifest_bytes));
    let index_bytes =
        serde_json::to_vec(&index).map_err(|e| Error::Invalid(format!("index JSON: {e}")))?;

    let dir = out_tar
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let mut builder = tar::Builder::new(io::BufWriter::new(tmp));
    let tar_err = |source| Error::Io {
        path: tmp_path.clone(),
        source,
    };
    let mut append = |path: &str, data: &[u8], dir: bool| -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if dir {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
        }
        builder.append_data(&mut header, path, data)
    };
    append("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, false).map_err(tar_err)?;
    append("blobs/", b"", true).map_err(tar_err)?;
    append("blobs/sha256/", b"", true).map_err(tar_err)?;
    let mut seen = BTreeSet::new();
    for (hex, data) in &blobs {
        // Two identical layers are one blob.
        if seen.insert(hex.clone()) {
            append(&format!("blobs/sha256/{hex}"), data, false).map_err(tar_err)?;
        }
    }
    append("index.json", &index_bytes, false).map_err(tar_err)?;
    let writer = builder.into_inner().map_err(tar_err)?;
    let mut tmp = writer.into_inner().map_err(|e| tar_err(e.into_error()))?;
    tmp.flush().map_err(tar_err)?;
    // NamedTempFile is private (0600); an image is not a secret.
    fs::set_permissions(&tmp_path, fs::Permissions::from_mode(0o644)).map_err(tar_err)?;
    tmp.as_file().sync_all().map_err(tar_err)?;
    tmp.persist(out_tar).map_err(|e| Error::Io {
        path: out_tar.to_path_buf(),
        source: e.error,
    })?;
    Ok(OciImage {
        name: name.to_string(),
        path: out_tar.to_path_buf(),
        manifest_digest: format!("sha256:{manifest_hex}"),
    })
}

// ---------------------------------------------------------------------------
// Reading an image back

/// An OCI image-layout tar as read back and verified by
/// [`inspect_oci_archive`].
#[derive(Debug, Clone)]
pub struct InspectedImage {
    /// The `org.opencontainers.image.ref.name` annotation.
    pub ref_name: String,
    /// The `io.containerd.image.name` annotation, if any.
    pub containerd_name: Option<String>,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The whole configuration document.
    pub config: Value,
    /// Each layer's entries, in tar order.
    pub layers: Vec<Vec<Listed>>,
}

/// Reads an OCI image-layout tar with one image and checks it: the
/// `oci-layout` version, every blob's name is its SHA-256, every
/// descriptor's digest and size match a blob, media types, and the
/// config's `diff_ids` match the (uncompressed) layers.
pub fn inspect_oci_archive(path: &Path) -> Result<InspectedImage, Error> {
    let invalid = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in archive.entries().map_err(io_err(path))? {
        let mut entry = entry.map_err(io_err(path))?;
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let name = entry
            .path()
            .map_err(io_err(path))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(io_err(path))?;
        if files.insert(name.clone(), data).is_some() {
            return Err(invalid(format!("{name} appears twice")));
        }
    }
    let json_of = |name: &str| -> Result<Value, Error> {
        let data = files
            .get(name)
            .ok_or_else(|| invalid(format!("no {name}")))?;
        serde_json::from_slice(data).map_err(|e| invalid(format!("{name}: {e}")))
    };
    let layout = json_of("oci-layout")?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        return Err(invalid(format!("oci-layout is {layout}")));
    }
    for (name, data) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let actual = sha256_hex(data);
            if actual != hex {
                return Err(invalid(format!("blob {name} hashes to {actual}")));
            }
        } else if name != "oci-layout" && name != "index.json" {
            return Err(invalid(format!("unexpected file {name}")));
        }
    }
    let blob = |desc: &Value, media: &str| blob_of(&files, desc, media, path);
    let index = json_of("index.json")?;
    if index["schemaVersion"] != 2 {
        return Err(invalid("index.json: schemaVersion is not 2".into()));
    }
    let manifests = index["manifests"]
        .as_array()
        .filter(|m| m.len() == 1)
        .ok_or_else(|| invalid("index.json: expected exactly one manifest".into()))?;
    let desc = &manifests[0];
    let manifest: Value = serde_json::from_slice(blob(desc, media_type::MANIFEST)?)
        .map_err(|e| invalid(format!("manifest: {e}")))?;
    let ref_name = desc["annotations"][REF_NAME_ANNOTATION]
        .as_str()
        .ok_or_else(|| invalid(format!("index.json: no {REF_NAME_ANNOTATION}")))?
        .to_string();
    let containerd_name = desc["annotations"][CONTAINERD_NAME_ANNOTATION]
        .as_str()
        .map(str::to_string);
    if manifest["schemaVersion"] != 2 {
        return Err(invalid("manifest: schemaVersion is not 2".into()));
    }
    let config: Value = serde_json::from_slice(blob(&manifest["config"], media_type::CONFIG)?)
        .map_err(|e| invalid(format!("config: {e}")))?;
    let layer_descs = manifest["layers"]
        .as_array()
        .ok_or_else(|| invalid("manifest: no layers".into()))?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| invalid("config: no rootfs.diff_ids".into()))?;
    if diff_ids.len() != layer_descs.len() {
        return Err(invalid(
            "config: diff_ids and layers differ in number".into(),
        ));
    }
    let mut layers = Vec::new();
    for (desc, diff_id) in layer_descs.iter().zip(diff_ids) {
        let data = blob(desc, media_type::LAYER_TAR)?;
        // Uncompressed: the diff_id is the layer's own digest.
        if desc["digest"] != *diff_id {
            return Err(invalid(format!(
                "diff_id {diff_id} is not {}",
                desc["digest"]
            )));
        }
        layers.push(list_tar(data).map_err(|e| invalid(format!("layer: {e}")))?);
    }
    Ok(InspectedImage {
        ref_name,
        containerd_name,
        manifest_digest: desc["digest"].as_str().unwrap_or_default().to_string(),
        config,
        layers,
    })
}

/// The blob a descriptor points at, checked against its media type and size.
fn blob_of<'a>(
    files: &'a BTreeMap<String, Vec<u8>>,
    desc: &Value,
    media: &str,
    path: &Path,
) -> Result<&'a [u8], Error> {
    let invalid = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
    if desc["mediaType"] != media {
        return Err(invalid(format!("{desc}: expected mediaType {media}")));
    }
    let digest = desc["digest"]
        .as_str()
        .ok_or_else(|| invalid(format!("{desc}: no digest")))?;
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| invalid(format!("{digest}: not sha256")))?;
    let data = files
        .get(&format!("blobs/sha256/{hex}"))
        .ok_or_else(|| invalid(format!("blob {digest} is missing")))?;
    if desc["size"].as_u64() != Some(data.len() as u64) {
        return Err(invalid(format!(
            "{digest}: descriptor size {} but the blob has {} bytes",
            desc["size"],
            data.len()
        )));
    }
    Ok(data)
}

fn list_tar(data: &[u8]) -> io::Result<Vec<Listed>> {
    let mut archive = tar::Archive::new(data);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Regular => 'f',
            tar::EntryType::Symlink => 'l',
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected entry type {other:?}"),
                ))
            }
        };
        out.push(Listed {
            path: entry
                .path()?
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string(),
            kind,
            mode: header.mode()? & 0o7777,
            uid: u32::try_from(header.uid()?).unwrap_or(u32::MAX),
            gid: u32::try_from(header.gid()?).unwrap_or(u32::MAX),
            size: if kind == 'f' { header.size()? } else { 0 },
            link: entry
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_args_env_and_continuations() {
        let text = r#"
# syntax=docker/dockerfile:1
ARG GLOBAL=1
FROM scratch AS build
RUN make
FROM base:1 AS app
ARG VERSION=0.1.0
LABEL a="x y" \
      # a comment inside a continuation
      b="v${VERSION}"
COPY --from=build --chown=7:8 /out/x /x
ENV K=$VERSION
WORKDIR /w
USER 7
EXPOSE 80 53/udp
ENTRYPOINT ["/x"]
"#;
        let stages = parse_dockerfile(text).expect("parse");
        let app = &stages["app"];
        assert_eq!(app.base, "base:1");
        assert_eq!(app.labels["a"], "x y");
        assert_eq!(app.labels["b"], "v0.1.0");
        assert_eq!(app.env["K"], "0.1.0");
        assert_eq!(app.user, Some((7, 7)));
        assert_eq!(app.workdir.as_deref(), Some("/w"));
        assert_eq!(app.copies[0].chown, Some((7, 8)));
        assert_eq!(app.copies[0].from, "build");
        assert!(app.exposed_ports.contains("80/tcp"));
        assert!(app.exposed_ports.contains("53/udp"));
        assert_eq!(app.entrypoint, ["/x"]);
        assert!(app.cmd.is_empty());
    }

    #[test]
    fn rejects_what_it_does_not_model() {
        for bad in [
            "FROM a AS b\nLABEL x=${NOPE}\n",
            "FROM a AS b\nENTRYPOINT /x\n",
            "FROM a AS b\nUSER nonroot\n",
            "FROM a AS b\nVOLUME /data\n",
            "FROM a AS b\nCOPY --link /a /b\n",
        ] {
            assert!(parse_dockerfile(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_a_layout_that_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut layer = Layer::new();
        layer.dir("tmp", 0o1777, (0, 0));
        layer.bytes("a/b/c", "hello", 0o640, (65532, 65532));
        let mut config = ImageConfig {
            entrypoint: vec!["/a/b/c".into()],
            ..ImageConfig::default()
        };
        config.user = Some("65532:65532".into());
        let out = dir.path().join("x.tar");
        let image = write_oci_layers(
            &[(layer.clone(), "test".into())],
            &config,
            "example.test/x:1",
            &out,
        )
        .expect("write");
        let read = inspect_oci_archive(&out).expect("inspect");
        assert_eq!(read.ref_name, "example.test/x:1");
        assert_eq!(read.manifest_digest, image.manifest_digest);
        assert_eq!(read.config["config"]["User"], "65532:65532");
        assert_eq!(read.layers, [layer.listing().expect("listing")]);
        // Deterministic: the same input gives the same digest.
        let again = write_oci_layers(
            &[(layer, "test".into())],
            &config,
            "example.test/x:1",
            &dir.path().join("y.tar"),
        )
        .expect("write again");
        assert_eq!(again.manifest_digest, image.manifest_digest);
    }
}
