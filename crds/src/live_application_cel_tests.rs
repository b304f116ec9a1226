//! The CRD's CEL rules, evaluated client-side by kube's `cel` feature
//! against the generated schema: the same rules the API server runs at
//! admission (tests/tests/operator_cluster.rs checks them there too).

use kube::core::cel::{validate_cel, validate_cel_update};

use super::testdata::invalid_cases;
use super::*;

/// What the API server does before validating: fill in the schema
/// defaults. serde's defaults are the same values (a unit test in
/// `oxcast-tests` checks that against the server), so parsing stands in.
fn admit(manifest: serde_json::Value) -> LiveApplication {
    serde_json::from_value(manifest).expect("the manifest matches the schema")
}

fn errors(app: &LiveApplication) -> Vec<String> {
    match validate_cel(app) {
        Ok(()) => Vec::new(),
        Err(errs) => errs.into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn the_default_spec_is_valid() {
    let app = LiveApplication::new("app", LiveApplicationSpec::default());
    assert_eq!(errors(&app), Vec::<String>::new());
}

#[test]
fn every_example_is_valid() {
    for (file, text) in [
        ("minimal.yaml", include_str!("../../examples/minimal.yaml")),
        (
            "scale-out.yaml",
            include_str!("../../examples/scale-out.yaml"),
        ),
        (
            "stream-keys.yaml",
            include_str!("../../examples/stream-keys.yaml"),
        ),
        (
            "encrypted.yaml",
            include_str!("../../examples/encrypted.yaml"),
        ),
    ] {
        let mut found = 0;
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_json::Value::deserialize(doc).expect("examples are YAML");
            if value["kind"] != "LiveApplication" {
                continue;
            }
            found += 1;
            let app = admit(value);
            assert_eq!(errors(&app), Vec::<String>::new(), "examples/{file}");
        }
        assert_eq!(found, 1, "examples/{file} holds one LiveApplication");
    }
}

#[test]
fn every_invalid_case_is_rejected_with_its_message() {
    let cases = invalid_cases().expect("parse the invalid cases");
    assert!(cases.len() >= 15, "the table lost cases");
    for case in cases {
        let app = admit(case.manifest());
        let errs = errors(&app);
        assert!(
            errs.iter().any(|m| m.contains(&case.message)),
            "{}: expected a rejection containing {:?}, got {errs:?}",
            case.case,
            case.message
        );
    }
}

#[test]
fn valid_edge_cases_pass() {
    let ok = |spec: serde_json::Value| {
        let app = admit(serde_json::json!({
            "apiVersion": "live.oxcast.dev/v1alpha1",
            "kind": "LiveApplication",
            "metadata": {"name": "edge"},
            "spec": spec,
        }));
        assert_eq!(errors(&app), Vec::<String>::new(), "{:?}", app.spec);
    };
    // Playlist exactly one (default) max fragment long; sub-second durations.
    ok(serde_json::json!({"hls": {"fragment": "5s", "playlistLength": "10s"}}));
    ok(
        serde_json::json!({"hls": {"fragment": "500ms", "maxFragment": "1.5s", "playlistLength": "1m"}}),
    );
    // Scaled to zero on emptyDir.
    ok(serde_json::json!({"replicas": 0}));
    // Several replicas and separate HTTP pods on a shared claim.
    ok(serde_json::json!({
        "replicas": 3,
        "http": {"mode": "deployment", "replicas": 2},
        "storage": {"persistentVolumeClaim": {"accessModes": ["ReadWriteMany"]}},
    }));
    ok(serde_json::json!({
        "replicas": 2,
        "http": {"mode": "deployment"},
        "storage": {"existingClaim": {"claimName": "hls"}},
    }));
    // A claim you manage, declared ReadWriteOnce: one pod, HTTP as its sidecar.
    ok(serde_json::json!({
        "replicas": 1,
        "storage": {"existingClaim": {"claimName": "hls", "accessMode": "ReadWriteOnce"}},
    }));
    ok(serde_json::json!({
        "replicas": 0,
        "storage": {"existingClaim": {"claimName": "hls", "accessMode": "ReadWriteOncePod"}},
    }));
    // Disruption budgets as numbers or percentages; preStop delays.
    ok(serde_json::json!({"podDisruptionBudget": {"maxUnavailable": 1}}));
    ok(serde_json::json!({"podDisruptionBudget": {"minAvailable": "50%"}}));
    ok(serde_json::json!({"preStopDelay": "0s"}));
    ok(serde_json::json!({"preStopDelay": "30s"}));
    // Root path prefix; keys and webhook auth with what they need.
    ok(serde_json::json!({"http": {"pathPrefix": "/"}}));
    ok(serde_json::json!({"rtmp": {"auth": {"mode": "keys", "keys": {"secretName": "k"}}}}));
    ok(
        serde_json::json!({"rtmp": {"auth": {"mode": "webhook", "webhook": {"url": "http://auth/publish"}}}}),
    );
    ok(serde_json::json!({"storage": {"emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}}));
}

#[test]
fn storage_class_cannot_change() {
    let with_class = |class: &str| {
        admit(serde_json::json!({
            "apiVersion": "live.oxcast.dev/v1alpha1",
            "kind": "LiveApplication",
            "metadata": {"name": "pvc"},
            "spec": {"storage": {"persistentVolumeClaim": {"storageClassName": class}}},
        }))
    };
    let old = with_class("nfs");
    assert!(validate_cel_update(&with_class("nfs"), &old).is_ok());
    let errs = validate_cel_update(&with_class("fast"), &old).expect_err("class changed");
    assert!(
        errs.iter()
            .any(|e| e.message.contains("storageClassName cannot change")),
        "{errs:?}"
    );
}
