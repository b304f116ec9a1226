//! The `LiveApplication` custom resource: one live ingest deployment (RTMP in,
//! HLS out) that the operator turns into Deployments, Services and volumes.
//!
//! This is the first, minimal shape of the API, enough to install the CRD and
//! exercise it against a real API server; the full spec (storage modes,
//! services, auth) comes with the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::HlsSettings;

/// Desired state of a live ingest application.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "live.oxcast.dev",
    version = "v1alpha1",
    kind = "LiveApplication",
    plural = "liveapplications",
    shortname = "liveapp",
    namespaced,
    status = "LiveApplicationStatus",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LiveApplicationSpec {
    /// Container image of the ingest server. Unset means the image released
    /// together with the operator, so operator and server versions match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Number of ingest pods. Unset means one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// HLS packaging: segment length, playlist window, naming, cleanup.
    /// Unset keeps the defaults of the reference nginx-rtmp configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls: Option<HlsSettings>,
}

/// Observed state, written by the operator through the status subresource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveApplicationStatus {
    /// The `metadata.generation` this status describes; lets clients tell a
    /// stale status from a current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ingest pods that pass their readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Standard conditions (Ready, Progressing, Degraded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Path of the checked-in CRD manifest, relative to the `crds` crate root.
pub const CRD_YAML_PATH: &str = "yaml/liveapplication.yaml";

/// Renders the `LiveApplication` CustomResourceDefinition as the YAML that is
/// checked in at [`CRD_YAML_PATH`] and shipped with the Helm chart.
///
/// `crdgen` and the drift test both call this, so the file on disk can only
/// differ from the types when someone forgot to regenerate it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&LiveApplication::crd())?;
    Ok(format!(
        "# Generated from crds/src/live_application.rs by `cargo run -p oxcast-crds --bin crdgen`.\n\
         # Do not edit: change the Rust types and regenerate.\n\
         ---\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crd_yaml_matches_the_types() {
        let checked_in = include_str!("../yaml/liveapplication.yaml");
        let generated = crd_yaml().expect("render CRD YAML");
        assert!(
            checked_in == generated,
            "crds/{CRD_YAML_PATH} is out of date with the Rust types; regenerate it with\n  \
             cargo run -p oxcast-crds --bin crdgen > crds/{CRD_YAML_PATH}"
        );
    }

    #[test]
    fn crd_identity_is_what_clients_expect() {
        let crd = LiveApplication::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("liveapplications.live.oxcast.dev")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "LiveApplication");
        assert_eq!(
            crd.spec.names.short_names,
            Some(vec!["liveapp".to_string()])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status must be a subresource so spec writers cannot overwrite it"
        );
    }

    #[test]
    fn spec_round_trips_through_camel_case_json() {
        let spec = LiveApplicationSpec {
            image: Some("ghcr.io/example/oxcast:1".into()),
            replicas: Some(2),
            hls: Some(HlsSettings::default()),
        };
        let json = serde_json::to_value(&spec).expect("serialize spec");
        assert_eq!(json["replicas"], 2);
        assert!(json["hls"].get("playlistLength").is_some(), "{json}");
        let back: LiveApplicationSpec = serde_json::from_value(json).expect("deserialize spec");
        assert_eq!(back, spec);
    }
}
