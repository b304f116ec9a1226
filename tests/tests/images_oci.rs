//! The OCI image tars that the real node imports (`oxcast_tests::images`)
//! against `docker/Dockerfile`: names as the chart's defaults say, the
//! configuration and the files of each final stage, a valid image layout
//! (re-read and re-hashed here, and read by a real OCI tool, Debian's
//! `skopeo`, which `tests/run.sh` installs), and the binaries run from the
//! unpacked image as its user.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use oxcast_tests::chart;
use oxcast_tests::images::{self, InspectedImage, Listed, OciImage, Stage};
use oxcast_tests::media::process::run_ok;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Both images, built once per test binary.
fn built() -> &'static [OciImage] {
    static BUILT: OnceLock<Vec<OciImage>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = images::scratch_dir("oci").unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        let built = images::build_oci_images(&dir).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "built {} in {:?}",
            built
                .iter()
                .map(|i| format!(
                    "{} ({} bytes)",
                    i.name,
                    std::fs::metadata(&i.path).map(|m| m.len()).unwrap_or(0)
                ))
                .collect::<Vec<_>>()
                .join(", "),
            started.elapsed()
        );
        built
    })
}

fn stages() -> BTreeMap<String, Stage> {
    images::dockerfile_stages().unwrap_or_else(|e| panic!("{e}"))
}

fn image(target: &str) -> (&'static OciImage, InspectedImage) {
    let image = built()
        .iter()
        .find(|i| {
            i.path.file_name().and_then(|n| n.to_str()) == Some(format!("{target}.tar").as_str())
        })
        .unwrap_or_else(|| panic!("no image for {target}: {:?}", built()));
    let read = images::inspect_oci_archive(&image.path).unwrap_or_else(|e| panic!("{e}"));
    (image, read)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn images_carry_the_names_the_chart_installs() {
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart::chart_file("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let tag = chart::app_version();
    let expected = [
        (
            "oxcast-operator",
            values["operator"]["image"]["repository"].as_str(),
        ),
        (
            "oxcast-ingest",
            values["ingest"]["image"]["repository"].as_str(),
        ),
    ];
    assert_eq!(built().len(), expected.len(), "{:?}", built());
    for (target, repository) in expected {
        let repository = repository.expect("the chart names the repository");
        let name = format!("{repository}:{tag}");
        let (image, read) = image(target);
        assert_eq!(image.name, name);
        // `ctr images import` names the image from these annotations.
        assert_eq!(read.ref_name, name);
        assert_eq!(read.containerd_name.as_deref(), Some(name.as_str()));
        assert_eq!(read.manifest_digest, image.manifest_digest);
    }
}

#[test]
fn image_configs_say_what_the_dockerfile_stages_say() {
    let stages = stages();
    for (target, _) in images::IMAGES {
        let stage = &stages[*target];
        let (_, read) = image(target);
        let config = &read.config["config"];
        assert_eq!(read.config["os"], "linux");
        assert_eq!(read.config["architecture"], images::oci_architecture());
        assert_eq!(strings(&config["Entrypoint"]), stage.entrypoint, "{target}");
        assert_eq!(strings(&config["Cmd"]), stage.cmd, "{target}");
        let (uid, gid) = stage.user.expect("USER");
        assert_eq!(config["User"], format!("{uid}:{gid}"), "{target}");
        assert_eq!(
            config["WorkingDir"].as_str(),
            Some(
                stage
                    .workdir
                    .as_deref()
                    .unwrap_or(images::DISTROLESS_NONROOT_WORKDIR)
            ),
            "{target}"
        );
        let mut env: BTreeMap<String, String> = images::DISTROLESS_BASE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend(stage.env.clone());
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(strings(&config["Env"]), env, "{target}");
        let labels: BTreeMap<String, String> =
            serde_json::from_value(config["Labels"].clone()).expect("Labels");
        assert_eq!(labels, stage.labels, "{target}");
        let ports: BTreeSet<String> = config["ExposedPorts"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(ports, stage.exposed_ports, "{target}");
    }
    // And the Dockerfile says what the chart and the product expect.
    let (_, operator) = image("oxcast-operator");
    assert_eq!(operator.config["config"]["User"], "65532:65532");
    assert_eq!(
        strings(&operator.config["config"]["Entrypoint"]),
        ["/usr/local/bin/oxcast-operator"]
    );
    let (_, ingest) = image("oxcast-ingest");
    assert_eq!(strings(&ingest.config["config"]["Cmd"]), ["run"]);
    assert_eq!(ingest.config["config"]["WorkingDir"], "/var/lib/oxcast");
    assert!(
        strings(&ingest.config["config"]["Env"])
            .contains(&"OXCAST_PLAYER_ASSETS=/usr/share/oxcast/player".to_string()),
        "{}",
        ingest.config
    );
}

/// What a `COPY SRC DEST` of a stage puts in the image, walked here from
/// the source on disk (not through `images::Layer`).
fn expected_copy(src: &Path, dest: &str, owner: (u32, u32), out: &mut Vec<Listed>) {
    let meta = std::fs::symlink_metadata(src).expect("copy source");
    let (kind, size, link) = if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src).expect("readlink");
        ('l', 0, target.to_string_lossy().into_owned())
    } else if meta.is_dir() {
        ('d', 0, String::new())
    } else {
        ('f', meta.len(), String::new())
    };
    out.push(Listed {
        path: dest.trim_matches('/').to_string(),
        kind,
        mode: if kind == 'l' {
            0o777
        } else {
            meta.permissions().mode() & 0o7777
        },
        uid: owner.0,
        gid: owner.1,
        size,
        link,
    });
    if kind == 'd' {
        for entry in std::fs::read_dir(src).expect("read dir") {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            expected_copy(
                &entry.path(),
                &format!("{}/{name}", dest.trim_end_matches('/')),
                owner,
                out,
            );
        }
    }
}

#[test]
fn image_files_are_the_dockerfile_copies_on_the_distroless_stand_in() {
    let stages = stages();
    for (target, _) in images::IMAGES {
        let stage = &stages[*target];
        let (_, read) = image(target);
        assert_eq!(
            read.layers.len(),
            2,
            "{target}: the base stand-in, then the stage"
        );

        // The stage's layer: its COPY lines (ownership as Docker's COPY
        // gives it) and the directories leading to them, nothing else.
        let mut expected = Vec::new();
        for copy in &stage.copies {
            match images::copy_source(target, copy).unwrap_or_else(|e| panic!("{e}")) {
                Some(src) => expected_copy(
                    &src,
                    &copy.dest,
                    copy.chown.unwrap_or((0, 0)),
                    &mut expected,
                ),
                None => expected.push(Listed {
                    path: copy.dest.trim_matches('/').to_string(),
                    kind: 'd',
                    mode: 0o755,
                    uid: copy.chown.map_or(0, |c| c.0),
                    gid: copy.chown.map_or(0, |c| c.1),
                    size: 0,
                    link: String::new(),
                }),
            }
        }
        let mut parents = BTreeSet::new();
        for e in &expected {
            let mut p = Path::new(&e.path).parent();
            while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
                parents.insert(dir.to_string_lossy().into_owned());
                p = dir.parent();
            }
        }
        for dir in parents {
            if !expected.iter().any(|e| e.path == dir) {
                expected.push(Listed {
                    path: dir,
                    kind: 'd',
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    link: String::new(),
                });
            }
        }
        expected.sort();
        let mut actual = read.layers[1].clone();
        actual.sort();
        assert_eq!(actual, expected, "{target}: the stage layer");
        let entrypoint = stage.entrypoint[0].trim_start_matches('/');
        let binary = actual
            .iter()
            .find(|e| e.path == entrypoint)
            .unwrap_or_else(|| panic!("{target}: no {entrypoint}"));
        assert_eq!(binary.kind, 'f');
        assert_eq!(binary.mode & 0o111, 0o111, "{target}: not executable");
        if let Some(workdir) = &stage.workdir {
            let (uid, gid) = stage.user.expect("USER");
            let dir = actual
                .iter()
                .find(|e| e.path == workdir.trim_matches('/'))
                .unwrap_or_else(|| panic!("{target}: no WORKDIR {workdir}"));
            assert_eq!((dir.uid, dir.gid), (uid, gid), "{target}: WORKDIR owner");
        }

        // The distroless stand-in: what the binaries rely on.
        let base: BTreeMap<&str, &Listed> = read.layers[0]
            .iter()
            .map(|e| (e.path.as_str(), e))
            .collect();
        let tmp = base.get("tmp").expect("/tmp");
        assert_eq!((tmp.kind, tmp.mode, tmp.uid), ('d', 0o1777, 0));
        let home = base.get("home/nonroot").expect("/home/nonroot");
        assert_eq!((home.kind, home.uid, home.gid), ('d', 65532, 65532));
        for file in ["etc/passwd", "etc/group", "etc/nsswitch.conf"] {
            let e = base.get(file).unwrap_or_else(|| panic!("no /{file}"));
            assert_eq!((e.kind, e.mode, e.uid), ('f', 0o644, 0), "/{file}");
        }
        let ca = base
            .get("etc/ssl/certs/ca-certificates.crt")
            .expect("the CA bundle");
        assert_eq!(
            ca.size,
            std::fs::metadata(images::HOST_CA_BUNDLE)
                .expect("host CA bundle")
                .len()
        );
    }
}

fn skopeo() -> Command {
    let mut version = Command::new("skopeo");
    version.arg("--version");
    if let Err(e) = run_ok(version, Duration::from_secs(10)) {
        panic!("skopeo is needed (tests/run.sh installs Debian's skopeo): {e}");
    }
    Command::new("skopeo")
}

fn in_path(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// skopeo reads each tar (and checks every digest while copying it out);
/// the unpacked layers hold the users, the ownership and the binary, which
/// runs from that root as the image's user.
#[test]
fn skopeo_reads_the_images_and_their_binaries_run_as_the_image_user() {
    let stages = stages();
    let scratch = tempfile::tempdir().expect("temp dir");
    let policy = scratch.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .expect("write policy");
    for (target, _) in images::IMAGES {
        let stage = &stages[*target];
        let (image, read) = image(target);
        let archive = format!("oci-archive:{}", image.path.display());

        let mut cmd = skopeo();
        cmd.args(["inspect", "--raw", &archive]);
        let manifest: Value =
            serde_json::from_str(&run_ok(cmd, TIMEOUT).expect("skopeo inspect --raw"))
                .expect("manifest JSON");
        assert_eq!(
            manifest["mediaType"],
            images::media_type::MANIFEST,
            "{manifest}"
        );
        let mut cmd = skopeo();
        cmd.args(["inspect", "--config", &archive]);
        let config: Value =
            serde_json::from_str(&run_ok(cmd, TIMEOUT).expect("skopeo inspect --config"))
                .expect("config JSON");
        assert_eq!(config, read.config, "{target}: skopeo reads another config");
        let mut cmd = skopeo();
        cmd.args(["inspect", &archive]);
        let summary: Value = serde_json::from_str(&run_ok(cmd, TIMEOUT).expect("skopeo inspect"))
            .expect("inspect JSON");
        assert_eq!(
            summary["Digest"],
            image.manifest_digest.as_str(),
            "{summary}"
        );
        let labels: BTreeMap<String, String> =
            serde_json::from_value(summary["Labels"].clone()).expect("Labels");
        assert_eq!(labels, stage.labels);

        // `skopeo copy` verifies each blob against its digest.
        let copied = scratch.path().join(format!("{target}-dir"));
        let mut cmd = skopeo();
        cmd.arg("--policy")
            .arg(&policy)
            .arg("copy")
            .arg("--quiet")
            .arg(&archive)
            .arg(format!("dir:{}", copied.display()));
        run_ok(cmd, TIMEOUT).expect("skopeo copy");

        // Unpack the layers in order with GNU tar, as root keeping owners.
        let rootfs = scratch.path().join(format!("{target}-rootfs"));
        std::fs::create_dir_all(&rootfs).expect("mkdir rootfs");
        for layer in manifest["layers"].as_array().expect("layers") {
            let digest = layer["digest"].as_str().expect("digest");
            let blob: PathBuf = copied.join(digest.trim_start_matches("sha256:"));
            let mut cmd = Command::new("tar");
            cmd.arg("-xf").arg(&blob).arg("-C").arg(&rootfs);
            if is_root() {
                cmd.args(["--same-owner", "--numeric-owner", "--same-permissions"]);
            }
            run_ok(cmd, TIMEOUT).expect("tar -x a layer");
        }
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("/etc/passwd");
        assert!(
            passwd.contains("nonroot:x:65532:65532:"),
            "{target}: /etc/passwd lacks nonroot:\n{passwd}"
        );
        let group = std::fs::read_to_string(rootfs.join("etc/group")).expect("/etc/group");
        assert!(group.contains("nonroot:x:65532:"), "{group}");
        let tmp = std::fs::metadata(rootfs.join("tmp")).expect("/tmp");
        assert_eq!(tmp.mode() & 0o7777, 0o1777);

        if !is_root() {
            panic!("unpacking with owners and chroot need root (tests/run.sh and CI run as root)");
        }
        let (uid, gid) = stage.user.expect("USER");
        if let Some(workdir) = &stage.workdir {
            let meta =
                std::fs::metadata(rootfs.join(workdir.trim_start_matches('/'))).expect("WORKDIR");
            assert_eq!(
                (meta.uid(), meta.gid()),
                (uid, gid),
                "{target}: WORKDIR owner"
            );
        }
        // The image's environment only; chroot itself is found on ours.
        let mut cmd = Command::new(in_path("chroot"));
        cmd.arg(format!("--userspec={uid}:{gid}"))
            .arg(&rootfs)
            .args(&stage.entrypoint)
            .arg("--help")
            .env_clear();
        let help = run_ok(cmd, TIMEOUT)
            .unwrap_or_else(|e| panic!("{target} --help in the unpacked image: {e}"));
        assert!(help.contains("Usage"), "{target} --help:\n{help}");
    }
}
