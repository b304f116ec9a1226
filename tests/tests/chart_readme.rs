//! Every command of the README's "Install on Kubernetes" section is one the
//! kind end-to-end test runs (tests/kind/e2e.sh or the workflow around it),
//! so the instructions cannot drift from what is tested.

use oxcast_tests::media::workspace_root;

/// (README command prefix, file that runs it, the text it runs it with).
const EXERCISED: &[(&str, &str, &str)] = &[
    (
        "docker build -f docker/Dockerfile --target oxcast-operator -t ",
        ".github/workflows/e2e-kind.yml",
        "docker build -f docker/Dockerfile --target oxcast-operator -t ",
    ),
    (
        "docker build -f docker/Dockerfile --target oxcast-ingest -t ",
        ".github/workflows/e2e-kind.yml",
        "docker build -f docker/Dockerfile --target oxcast-ingest -t ",
    ),
    (
        "kind load docker-image ",
        ".github/workflows/e2e-kind.yml",
        "kind load docker-image ",
    ),
    (
        "helm upgrade --install oxcast charts/oxcast --namespace oxcast-system --create-namespace --wait",
        "tests/kind/e2e.sh",
        "hm upgrade --install \"$release\" \"$repo/charts/oxcast\" \\\n        --namespace \"$release_namespace\" --create-namespace \\\n        --wait",
    ),
    (
        "--set operator.image.repository=",
        "tests/kind/e2e.sh",
        "--set \"$key.repository=",
    ),
    (
        "--set ingest.image.repository=",
        "tests/kind/e2e.sh",
        "image_args ingest.image",
    ),
    (
        "kubectl create namespace ",
        "tests/kind/e2e.sh",
        "kc create namespace \"$namespace\"",
    ),
    (
        "kubectl apply -n live -f examples/minimal.yaml",
        "tests/kind/e2e.sh",
        "kc apply -n \"$namespace\" -f \"$file\"",
    ),
    (
        "kubectl wait -n live liveapplication/live --for=condition=Ready --timeout=",
        "tests/kind/e2e.sh",
        "kc wait -n \"$namespace\" \"liveapplication/$app\" --for=condition=Ready --timeout=",
    ),
    (
        "kubectl get -n live liveapp live",
        "tests/kind/e2e.sh",
        "kc get -n \"$namespace\" liveapp \"$app\"",
    ),
    (
        "RTMP_URL=$(kubectl get -n live liveapplication live -o jsonpath='{.status.rtmpUrl}')",
        "tests/kind/e2e.sh",
        "kc get -n \"$namespace\" liveapplication \"$1\" -o jsonpath='{.status.rtmpUrl}'",
    ),
    (
        "ffmpeg -re -i input.mp4 -c:v libx264 -g 60 -c:a aac -f flv \"$RTMP_URL/test\"",
        "tests/kind/e2e.sh",
        "-f flv \"$publish_url\"",
    ),
    (
        "kubectl port-forward -n live service/live-http 8080:80",
        "tests/kind/e2e.sh",
        "kc port-forward -n \"$namespace\" \"service/$svc\"",
    ),
    (
        "tests/kind/e2e.sh --operator-image ghcr.io/oxcast/oxcast-operator:0.1.0",
        ".github/workflows/e2e-kind.yml",
        "tests/kind/e2e.sh --operator-image \"$OPERATOR_IMAGE\" --ingest-image \"$INGEST_IMAGE\"",
    ),
    (
        "--ingest-image ghcr.io/oxcast/oxcast-ingest:0.1.0 all",
        ".github/workflows/e2e-kind.yml",
        "--duration 30 all",
    ),
    (
        "tests/kind/e2e.sh cleanup",
        ".github/workflows/e2e-kind.yml",
        "tests/kind/e2e.sh cleanup",
    ),
];

/// The shell commands of the section: lines of its ```sh blocks, with
/// continuation lines kept as lines of their own.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let start = readme
        .find("\n## Install on Kubernetes\n")
        .expect("README has an \"Install on Kubernetes\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if in_sh && !line.trim().is_empty() {
            commands.push(line.trim().trim_end_matches('\\').trim().to_string());
        }
    }
    commands
}

#[test]
fn every_install_command_in_the_readme_is_run_by_the_kind_e2e() {
    let commands = readme_commands();
    assert!(commands.len() >= 10, "found only {commands:?}");
    let mut unexercised = Vec::new();
    for command in &commands {
        match EXERCISED
            .iter()
            .find(|(prefix, _, _)| command.starts_with(prefix))
        {
            None => unexercised.push(command.clone()),
            Some((_, file, text)) => {
                let body = std::fs::read_to_string(workspace_root().join(file))
                    .unwrap_or_else(|e| panic!("read {file}: {e}"));
                assert!(
                    body.contains(text),
                    "README command {command:?} is supposed to be run by {file}, which lacks {text:?}"
                );
            }
        }
    }
    assert!(
        unexercised.is_empty(),
        "README commands no test runs (add them to tests/kind/e2e.sh or the workflow, and to EXERCISED): {unexercised:#?}"
    );
    // And each entry still matches a README command (no stale entries).
    for (prefix, _, _) in EXERCISED {
        assert!(
            commands.iter().any(|c| c.starts_with(prefix)),
            "EXERCISED lists {prefix:?}, which the README no longer has"
        );
    }
}
