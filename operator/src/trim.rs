//! What the reflector stores keep of each watched object, and in what form.
//!
//! The stores hold every LiveApplication, every child and every pod of the
//! cluster (or of the watched namespaces) for the life of the operator.
//! Kept whole and typed, a Deployment costs about 20 kB of heap (its pod
//! template alone about 13 kB: k8s-openapi structs are large, mostly
//! `None` fields, and `managedFields` is a tree of JSON maps), so at 1000
//! LiveApplications the stores were most of the operator's memory. So:
//!
//! - `metadata.managedFields` and the
//!   `kubectl.kubernetes.io/last-applied-configuration` annotation are
//!   dropped from every object ([`metadata`]): no reconcile reads them;
//! - children and pods are stored as [`Compact`]: typed metadata (the
//!   store's keys, labels, owner references) and the rest as the compact
//!   JSON text the API server sent, decoded again only when a reconcile
//!   reads the object (a few objects per reconcile);
//! - a pod's spec is not kept at all: the status reads only the pod's
//!   name, labels, conditions and container states ([`crate::status`]);
//! - Secrets are watched metadata only, and only their names are kept
//!   ([`presence`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The annotation client-side `kubectl apply` writes: the applied object again.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops the metadata no reconcile reads.
pub fn metadata<K: Resource>(obj: &mut K) {
    trim_meta(obj.meta_mut());
}

fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// Keeps only an object's name and namespace: what says it exists. For the
/// Secrets the operator watches (metadata only) to learn whether a
/// LiveApplication's key-token Secret exists; their labels and annotations
/// are never read (and client-side `kubectl apply` copies a Secret's data
/// into one).
pub fn presence<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        ..ObjectMeta::default()
    };
}

/// Top-level fields of a kind that no reconcile reads, beyond metadata.
fn unread_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        // Pods feed only the Degraded condition, from their status; the
        // pod template the operator compares is the Deployment's.
        "Pod" => &["spec"],
        _ => &[],
    }
}

/// An object of kind `K` as a store keeps it: typed metadata, and the rest
/// (spec, status, data, rules, …) as compact JSON text. [`Compact::decode`]
/// gives back the typed object (with trimmed metadata).
pub struct Compact<K> {
    metadata: ObjectMeta,
    /// The object without `metadata`, a JSON object.
    rest: Box<str>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Compact<K> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            rest: self.rest.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Compact<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compact")
            .field("metadata", &self.metadata)
            .field("rest", &self.rest)
            .finish()
    }
}

impl<K: Resource<DynamicType = ()>> Compact<K> {
    /// The object as JSON, as it was received minus what was trimmed.
    pub fn to_json(&self) -> Result<Value, serde_json::Error> {
        let mut value: Value = serde_json::from_str(&self.rest)?;
        if let Value::Object(map) = &mut value {
            // List items come without apiVersion and kind; the typed
            // objects the diff compares with always have them.
            map.entry("apiVersion")
                .or_insert_with(|| Value::from(K::api_version(&()).as_ref()));
            map.entry("kind")
                .or_insert_with(|| Value::from(K::kind(&()).as_ref()));
            map.insert(
                "metadata".to_string(),
                serde_json::to_value(&self.metadata)?,
            );
        }
        Ok(value)
    }

    /// The typed object.
    pub fn decode(&self) -> Result<K, serde_json::Error>
    where
        K: DeserializeOwned,
    {
        serde_json::from_value(self.to_json()?)
    }
}

impl<'de, K: Resource<DynamicType = ()>> Deserialize<'de> for Compact<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Values, not borrowed raw text: a watch event may reach us through
        // serde's buffered content, which raw values do not support.
        let mut fields = BTreeMap::<String, Value>::deserialize(deserializer)?;
        let mut metadata: ObjectMeta = match fields.remove("metadata") {
            Some(meta) => serde_json::from_value(meta).map_err(D::Error::custom)?,
            None => ObjectMeta::default(),
        };
        trim_meta(&mut metadata);
        for field in unread_fields(&K::kind(&())) {
            fields.remove(*field);
        }
        let rest = serde_json::to_string(&fields).map_err(D::Error::custom)?;
        Ok(Self {
            metadata,
            rest: rest.into_boxed_str(),
            kind: PhantomData,
        })
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Compact<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{self, Observed};
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;

    fn pod_json() -> Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "demo-ingest-abc",
                "namespace": "ns",
                "labels": {"app.kubernetes.io/instance": "demo"},
                "annotations": {
                    LAST_APPLIED_ANNOTATION: "{\"big\": true}",
                    "keep": "me",
                },
                "managedFields": [{"manager": "kube-scheduler", "operation": "Update"}],
            },
            "spec": {"containers": [{"name": "ingest", "image": "ingest:1"}]},
            "status": {
                "phase": "Pending",
                "podIP": "10.0.0.1",
                "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/1 nodes are available",
                }],
                "containerStatuses": [{
                    "name": "ingest", "image": "ingest:1", "imageID": "sha256:x",
                    "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                }],
            },
        })
    }

    #[test]
    fn metadata_drops_managed_fields_and_last_applied_only() {
        let mut pod: Pod = serde_json::from_value(pod_json()).expect("pod");
        metadata(&mut pod);
        assert!(pod.metadata.managed_fields.is_none());
        let annotations = pod.metadata.annotations.as_ref().expect("annotations");
        assert!(!annotations.contains_key(LAST_APPLIED_ANNOTATION));
        assert_eq!(annotations.get("keep").map(String::as_str), Some("me"));
        assert!(pod.spec.is_some(), "metadata() keeps the spec");
    }

    #[test]
    fn presence_keeps_only_name_and_namespace() {
        let json = serde_json::json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {
                "name": "key-token", "namespace": "live", "uid": "u1",
                "resourceVersion": "42",
                "labels": {"team": "video"},
                "annotations": {LAST_APPLIED_ANNOTATION: "{\"stringData\":{\"secret\":\"s3cret\"}}"},
                "managedFields": [{"manager": "kubectl", "operation": "Update"}],
            },
        });
        let mut secret: kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::Secret> =
            serde_json::from_value(json).expect("metadata");
        presence(&mut secret);
        assert_eq!(
            secret.metadata,
            ObjectMeta {
                name: Some("key-token".into()),
                namespace: Some("live".into()),
                ..ObjectMeta::default()
            }
        );
    }

    /// A compact child decodes to the object it was made from, minus the
    /// trimmed metadata, and its JSON is what the diff compares.
    #[test]
    fn a_compact_child_decodes_to_the_same_object() {
        let json = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "demo-ingest", "namespace": "ns", "generation": 2,
                "labels": {"a": "b"},
                "managedFields": [{"manager": "oxcast-operator", "operation": "Apply"}],
                "ownerReferences": [{"apiVersion": "live.oxcast.dev/v1alpha1", "kind": "LiveApplication",
                    "name": "demo", "uid": "u1", "controller": true}],
            },
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "ingest", "image": "ingest:1",
                        "resources": {"limits": {"cpu": "500m"}}}]}},
            },
            "status": {"observedGeneration": 2, "replicas": 1, "availableReplicas": 1},
        });
        let compact: Compact<Deployment> = serde_json::from_value(json.clone()).expect("compact");
        assert_eq!(compact.meta().name.as_deref(), Some("demo-ingest"));
        assert!(compact.meta().managed_fields.is_none());
        assert_eq!(
            compact.meta().owner_references.as_ref().map(Vec::len),
            Some(1)
        );

        let mut whole: Deployment = serde_json::from_value(json).expect("deployment");
        metadata(&mut whole);
        assert_eq!(compact.decode().expect("decode"), whole);
        let as_json = compact.to_json().expect("json");
        assert_eq!(
            as_json["spec"]["template"]["spec"]["containers"][0]["image"],
            "ingest:1"
        );
        assert!(crate::diff::contains(
            &serde_json::to_value(&whole).expect("value"),
            &as_json
        ));
        assert_eq!(
            <Compact<Deployment> as Resource>::url_path(&(), Some("ns")),
            Deployment::url_path(&(), Some("ns"))
        );
    }

    /// A compact pod has no spec but the same Degraded verdicts as the
    /// whole one: everything the status reads survives.
    #[test]
    fn a_compact_pod_keeps_what_the_status_reads() {
        let names = crate::names::Names::new("demo".to_string());
        let spec = serde_json::from_value(serde_json::json!({})).expect("empty spec");
        let deployment: Option<&Deployment> = None;
        let observe = |pod: &Pod| {
            let observed = Observed {
                generation: Some(1),
                namespace: "ns",
                names: &names,
                spec: &spec,
                invalid: None,
                apply_error: None,
                missing_secret: None,
                ingest: deployment,
                http: None,
                expect_http_deployment: false,
                rtmp_service: None,
                http_service: None,
                pvc: None,
                expect_pvc: false,
                pods: vec![pod],
                rtmp_ready_endpoints: 0,
            };
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            );
            status::compute(None, &observed, &now)
        };
        let mut unscheduled = pod_json();
        unscheduled["status"]["containerStatuses"] = serde_json::json!([]);
        for (json, reason) in [
            (pod_json(), "CrashLoopBackOff"),
            (unscheduled, "Unschedulable"),
        ] {
            let whole: Pod = serde_json::from_value(json.clone()).expect("pod");
            let compact: Compact<Pod> = serde_json::from_value(json).expect("compact");
            let decoded = compact.decode().expect("decode");
            assert!(decoded.spec.is_none());
            assert_eq!(decoded.metadata.labels, whole.metadata.labels);
            let from_whole = observe(&whole);
            assert_eq!(observe(&decoded), from_whole);
            let degraded = status::find(&from_whole, status::DEGRADED).expect("Degraded");
            assert_eq!(degraded.reason, reason, "{degraded:?}");
        }
    }

    /// Watch events arrive as `{"type": …, "object": …}` and lists as
    /// `{"items": […]}`: both decode into compact objects.
    #[test]
    fn watch_events_and_lists_decode() {
        let event = serde_json::json!({"type": "ADDED", "object": pod_json()}).to_string();
        let event: kube::core::WatchEvent<Compact<Pod>> =
            serde_json::from_str(&event).expect("event");
        assert!(
            matches!(event, kube::core::WatchEvent::Added(ref p) if p.meta().name.as_deref() == Some("demo-ingest-abc"))
        );
        // The object before the type: serde buffers it first.
        let reversed = format!(r#"{{"object": {}, "type": "MODIFIED"}}"#, pod_json());
        let event: kube::core::WatchEvent<Compact<Pod>> =
            serde_json::from_str(&reversed).expect("event");
        assert!(matches!(event, kube::core::WatchEvent::Modified(_)));
        let mut without_type = pod_json();
        if let Some(map) = without_type.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
        let list = serde_json::json!({
            "apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": "7"},
            "items": [pod_json(), without_type],
        })
        .to_string();
        let list: kube::core::ObjectList<Compact<Pod>> = serde_json::from_str(&list).expect("list");
        assert_eq!(list.items.len(), 2);
        // Items of a list carry no apiVersion and kind: they are put back.
        let json = list.items[1].to_json().expect("json");
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["kind"], "Pod");
    }
}
