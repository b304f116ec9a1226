//! The `LiveApplication` custom resource: one live ingest deployment (RTMP in,
//! HLS out) that the operator turns into Deployments, Services, a ConfigMap
//! and, for scale-out, a shared volume.
//!
//! The spec embeds the ingest server's own settings types ([`RtmpSettings`],
//! [`HlsSettings`], [`HttpSettings`]) rather than copies of them: whatever
//! the server learns to do shows up in the CRD schema (after `crdgen`), and
//! the operator renders those same values into the server's config file.
//!
//! Defaults live in the schema (the API server fills them in, so `kubectl get
//! -o yaml` shows what runs), and the CEL rules below reject inconsistent
//! specs at admission with a message that says what to change. The operator
//! still re-checks everything it renders ([`LiveApplicationSpec::ingest_config`]
//! plus [`oxcast_crds::IngestConfig::validate`](crate::IngestConfig::validate))
//! because a CRD can be installed from an older manifest.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{HlsSettings, HttpSettings, HumanDuration, IngestConfig, RtmpSettings};

/// Container port of the RTMP listener in every ingest pod (named `rtmp`).
pub const RTMP_CONTAINER_PORT: i32 = 1935;
/// Container port of the HTTP server in every HTTP container (named `http`).
pub const HTTP_CONTAINER_PORT: i32 = 8080;
/// Longest `metadata.name` a LiveApplication may have: its children are
/// named `<name>-config`, `<name>-rtmp`, `<name>-http`, `<name>-hls`, and
/// Service names are DNS labels of at most 63 characters.
pub const MAX_NAME_LENGTH: usize = 56;

/// Desired state of a live ingest application: RTMP in, HLS out.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "live.oxcast.dev",
    version = "v1alpha1",
    kind = "LiveApplication",
    plural = "liveapplications",
    shortname = "liveapp",
    namespaced,
    doc = "An RTMP application with HLS output: the operator runs it as Deployments, Services, a ConfigMap and (for scale-out) a shared volume, and reports where to publish and where to watch.",
    status = "LiveApplicationStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"RTMP URL","type":"string","jsonPath":".status.rtmpUrl"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 56 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label of at most 56 characters that starts with a letter (lower-case letters, digits and '-'): it names the Services <name>-rtmp and <name>-http")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.storage.emptyDir) || self.replicas <= 1")
        .message("storage.emptyDir keeps segments inside one pod, so replicas must be 0 or 1; to run more ingest pods use storage.persistentVolumeClaim with accessModes [ReadWriteMany], or storage.existingClaim")
        .field_path(".replicas"),
    validation = Rule::new("!has(self.storage.emptyDir) || self.http.mode == 'sidecar'")
        .message("http.mode deployment runs the HTTP server in pods of its own, which cannot see an emptyDir; set http.mode: sidecar, or use storage.persistentVolumeClaim with accessModes [ReadWriteMany], or storage.existingClaim")
        .field_path(".http.mode"),
    validation = Rule::new("self.http.mode != 'deployment' || !has(self.storage.persistentVolumeClaim) || self.storage.persistentVolumeClaim.accessModes.exists(m, m == 'ReadWriteMany')")
        .message("http.mode deployment shares the HLS volume between ingest and HTTP pods: storage.persistentVolumeClaim.accessModes must include ReadWriteMany")
        .field_path(".storage.persistentVolumeClaim.accessModes"),
    validation = Rule::new("self.replicas <= 1 || !has(self.storage.persistentVolumeClaim) || self.storage.persistentVolumeClaim.accessModes.exists(m, m == 'ReadWriteMany')")
        .message("more than one ingest replica shares the HLS volume: storage.persistentVolumeClaim.accessModes must include ReadWriteMany (or set replicas: 1)")
        .field_path(".storage.persistentVolumeClaim.accessModes"),
    validation = Rule::new("self.replicas <= 1 || !has(self.storage.existingClaim) || self.storage.existingClaim.accessMode == 'ReadWriteMany'")
        .message("storage.existingClaim.accessMode says the claim is mounted by one node (ReadWriteOnce) or one pod (ReadWriteOncePod) at a time, so replicas must be 0 or 1 (its pod is replaced with a Recreate rollout); to run more ingest replicas, use a ReadWriteMany claim and set storage.existingClaim.accessMode: ReadWriteMany")
        .field_path(".replicas"),
    validation = Rule::new("self.http.mode != 'deployment' || !has(self.storage.existingClaim) || self.storage.existingClaim.accessMode == 'ReadWriteMany'")
        .message("http.mode deployment shares the HLS volume between ingest and HTTP pods: storage.existingClaim must be a ReadWriteMany claim (storage.existingClaim.accessMode: ReadWriteMany), or set http.mode: sidecar")
        .field_path(".storage.existingClaim.accessMode"),
)]
pub struct LiveApplicationSpec {
    /// Container image of the ingest server (`oxcast-ingest`). Unset means
    /// the image the operator was configured with (`--ingest-image`), which
    /// by default is the one released together with the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the ingest and HTTP containers. Unset leaves the
    /// Kubernetes default (Always for `:latest`, IfNotPresent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Number of ingest pods. More than one needs a shared volume
    /// (storage.persistentVolumeClaim with ReadWriteMany, or existingClaim).
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// RTMP ingest: the published port and Service, the RTMP application
    /// name, who may publish, and connection limits.
    #[serde(default)]
    pub rtmp: RtmpSpec,
    /// HLS packaging: segment length, playlist window, naming, cleanup.
    /// Defaults are those of the reference nginx-rtmp configuration.
    #[serde(default)]
    #[x_kube(
        validation = Rule::new("duration(self.fragment) > duration('0s')")
            .message("hls.fragment must be greater than zero (e.g. 5s)")
            .field_path(".fragment"),
        validation = Rule::new("!has(self.maxFragment) || duration(self.maxFragment) >= duration(self.fragment)")
            .message("hls.maxFragment must be at least hls.fragment: raise maxFragment or lower fragment")
            .field_path(".maxFragment"),
        validation = Rule::new("duration(self.playlistLength) >= (has(self.maxFragment) ? duration(self.maxFragment) : duration(self.fragment) + duration(self.fragment))")
            .message("hls.playlistLength must be at least hls.maxFragment, or twice hls.fragment when maxFragment is unset, so a playlist can hold a whole segment: raise playlistLength or lower fragment/maxFragment")
            .field_path(".playlistLength"),
        validation = Rule::new("!has(self.encryption) || !has(self.encryption.enabled) || !self.encryption.enabled || (has(self.encryption.authorization) && has(self.encryption.authorization.mode) && self.encryption.authorization.mode != 'signed') || (has(self.encryption.authorization) && has(self.encryption.authorization.secretName))")
            .message("hls.encryption.authorization.mode signed needs secretName: the Secret (key `secret`, optional `previous`) holding the key-token HMAC secret, mounted into the HTTP pods only")
            .field_path(".encryption.authorization.secretName"),
        validation = Rule::new("!has(self.encryption) || !has(self.encryption.enabled) || !self.encryption.enabled || !has(self.encryption.authorization) || !has(self.encryption.authorization.mode) || self.encryption.authorization.mode != 'webhook' || has(self.encryption.authorization.webhookUrl)")
            .message("hls.encryption.authorization.mode webhook needs webhookUrl")
            .field_path(".encryption.authorization.webhookUrl"),
        validation = Rule::new("!has(self.encryption) || !has(self.encryption.authorization) || !has(self.encryption.authorization.viewerCookie) || self.encryption.authorization.viewerCookie.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$')")
            .message("hls.encryption.authorization.viewerCookie must be a cookie name: letters, digits and !#$%&*+-.^_|~ (e.g. oxcast_viewer)")
            .field_path(".encryption.authorization.viewerCookie"),
    )]
    pub hls: HlsSettings,
    /// HLS over HTTP: where the HTTP server runs (a sidecar in each ingest
    /// pod, or a Deployment of its own), its Service and URL path.
    #[serde(default)]
    pub http: HttpSpec,
    /// Where the HLS segments live. Exactly one of emptyDir (the default: one
    /// pod, no shared storage), persistentVolumeClaim (a claim the operator
    /// creates) or existingClaim (a claim you manage).
    #[serde(default)]
    pub storage: StorageSpec,
    /// CPU and memory of the ingest container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// A PodDisruptionBudget for the ingest pods: how many a node drain or
    /// cluster upgrade may evict at once. Unset: none (evictions are not
    /// limited). Each evicted pod cuts its publishers, who reconnect to
    /// another pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<DisruptionBudget>,
    /// How long a stopping pod keeps serving before it gets SIGTERM (its
    /// containers' preStop sleep): long enough for the Services' endpoints,
    /// kube-proxy and external load balancers to stop sending it new
    /// publishers and viewers. Cloud load balancers that health-check nodes
    /// may need more than the default (e.g. 15s–30s); `0s` turns it off.
    /// The pods' terminationGracePeriodSeconds is this plus the longest
    /// segment plus 10 s, so the server still completes its segments and
    /// playlists after SIGTERM.
    #[serde(default = "default_pre_stop_delay")]
    #[x_kube(validation = Rule::new("duration(self) <= duration('10m')")
        .message("preStopDelay must be at most 10m"))]
    pub pre_stop_delay: HumanDuration,
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra annotations on the pods (e.g. for log or mesh agents).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Secrets with credentials for pulling the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

fn one() -> i32 {
    1
}

/// The preStop delay when the spec sets none.
pub const DEFAULT_PRE_STOP_DELAY: HumanDuration = HumanDuration::from_secs(5);

fn default_pre_stop_delay() -> HumanDuration {
    DEFAULT_PRE_STOP_DELAY
}

/// A PodDisruptionBudget: exactly one of `minAvailable` and `maxUnavailable`,
/// each a number of pods or a percentage (`"50%"`).
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.minAvailable) != has(self.maxUnavailable)")
        .message("podDisruptionBudget: set exactly one of minAvailable or maxUnavailable (e.g. maxUnavailable: 1)"),
)]
pub struct DisruptionBudget {
    /// Ingest pods that must stay available during voluntary disruptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Ingest pods that may be unavailable at once during voluntary
    /// disruptions (`1`: a drain evicts them one at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

impl Default for LiveApplicationSpec {
    fn default() -> Self {
        Self {
            image: None,
            image_pull_policy: None,
            replicas: 1,
            rtmp: RtmpSpec::default(),
            hls: HlsSettings::default(),
            http: HttpSpec::default(),
            storage: StorageSpec::default(),
            resources: None,
            pod_disruption_budget: None,
            pre_stop_delay: DEFAULT_PRE_STOP_DELAY,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            pod_annotations: BTreeMap::new(),
            image_pull_secrets: Vec::new(),
        }
    }
}

impl LiveApplicationSpec {
    /// The ingest server's config file as this spec describes it, before the
    /// operator fills in where a keys Secret is mounted.
    pub fn ingest_config(&self) -> IngestConfig {
        IngestConfig {
            rtmp: self.rtmp.settings.clone(),
            hls: self.hls.clone(),
            http: self.http.settings.clone(),
            ownership: Default::default(),
        }
    }
}

/// Container image pull policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// RTMP ingest: the Service publishers connect to, plus the ingest server's
/// RTMP settings (`app`, `allowPlay`, `auth`, `limits`).
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.auth.mode != 'keys' || (has(self.auth.keys) && has(self.auth.keys.secretName) && self.auth.keys.secretName != '')")
        .message("rtmp.auth.mode keys needs rtmp.auth.keys.secretName: the Secret (in this namespace) whose values are the allowed stream keys")
        .field_path(".auth.keys.secretName"),
    validation = Rule::new("!has(self.auth.keys) || !has(self.auth.keys.path)")
        .message("rtmp.auth.keys.path is filled in by the operator where it mounts the Secret; name the Secret in rtmp.auth.keys.secretName instead")
        .field_path(".auth.keys.path"),
    validation = Rule::new("self.auth.mode != 'webhook' || (has(self.auth.webhook) && self.auth.webhook.url.matches('^https?://.+'))")
        .message("rtmp.auth.mode webhook needs rtmp.auth.webhook.url, an http:// or https:// URL")
        .field_path(".auth.webhook.url"),
    validation = Rule::new("self.app.matches('^[A-Za-z0-9._-]{1,128}$')")
        .message("rtmp.app must be 1-128 characters of A-Z a-z 0-9 . _ -")
        .field_path(".app"),
)]
pub struct RtmpSpec {
    /// Port of the RTMP Service (publishers use `rtmp://<address>:<port>/<app>/<key>`).
    #[serde(default = "default_rtmp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The Service publishers connect to.
    #[serde(default)]
    pub service: RtmpServiceSpec,
    /// The ingest server's RTMP settings, rendered into its config file.
    #[serde(flatten)]
    pub settings: RtmpSettings,
}

fn default_rtmp_port() -> i32 {
    RTMP_CONTAINER_PORT
}

impl Default for RtmpSpec {
    fn default() -> Self {
        Self {
            port: default_rtmp_port(),
            service: RtmpServiceSpec::default(),
            settings: RtmpSettings::default(),
        }
    }
}

/// Kubernetes Service type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Whether external traffic is spread over all nodes (`Cluster`) or only
/// reaches pods on the node it arrived at, keeping the client's source
/// address (`Local`: auth webhooks see the publisher's real IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "Cluster",
            Self::Local => "Local",
        }
    }
}

/// Service options shared by the RTMP and HTTP Services.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOptions {
    /// Annotations on the Service, e.g. to configure a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Client CIDRs a LoadBalancer Service accepts (e.g. your encoders' addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
    /// Load balancer implementation to use, for clusters with more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
    /// `Local` keeps the client's source address (NodePort and LoadBalancer only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
}

/// The RTMP Service.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type == 'LoadBalancer' || (!has(self.loadBalancerSourceRanges) && !has(self.loadBalancerClass))")
        .message("loadBalancerSourceRanges and loadBalancerClass only apply to type LoadBalancer"),
    validation = Rule::new("self.type != 'ClusterIP' || !has(self.externalTrafficPolicy)")
        .message("externalTrafficPolicy only applies to type NodePort or LoadBalancer"),
)]
pub struct RtmpServiceSpec {
    /// Service type. LoadBalancer gives publishers an address outside the cluster.
    #[serde(rename = "type", default = "load_balancer")]
    pub type_: ServiceType,
    #[serde(flatten)]
    pub options: ServiceOptions,
}

fn load_balancer() -> ServiceType {
    ServiceType::LoadBalancer
}

impl Default for RtmpServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::LoadBalancer,
            options: ServiceOptions::default(),
        }
    }
}

/// Where the HTTP server that serves the HLS tree runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HttpMode {
    /// A second container in every ingest pod, sharing the pod's HLS volume
    /// (works with any storage, including emptyDir).
    #[default]
    Sidecar,
    /// A Deployment of its own (scaled by http.replicas) reading a shared
    /// volume: needs storage.persistentVolumeClaim with ReadWriteMany, or
    /// storage.existingClaim.
    Deployment,
}

/// HLS over HTTP: where the server runs and how it is reached, plus the
/// HTTP server's own settings (`pathPrefix`, ...).
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode == 'deployment' || self.replicas == 1")
        .message("http.replicas only applies to http.mode deployment; in sidecar mode every ingest pod serves HTTP, so scale with spec.replicas")
        .field_path(".replicas"),
    validation = Rule::new("self.pathPrefix.matches('^/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?$') && !self.pathPrefix.contains('..')")
        .message("http.pathPrefix must be an absolute URL path such as /live, without a trailing slash or '..'")
        .field_path(".pathPrefix"),
)]
pub struct HttpSpec {
    /// `sidecar` (default) or `deployment`.
    #[serde(default)]
    pub mode: HttpMode,
    /// HTTP pods in mode `deployment`.
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// The Service viewers (or your CDN or Ingress) fetch HLS from.
    #[serde(default)]
    pub service: HttpServiceSpec,
    /// CPU and memory of the HTTP container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The HTTP server's settings, rendered into its config file.
    #[serde(flatten)]
    pub settings: HttpSettings,
}

impl Default for HttpSpec {
    fn default() -> Self {
        Self {
            mode: HttpMode::Sidecar,
            replicas: 1,
            service: HttpServiceSpec::default(),
            resources: None,
            settings: HttpSettings::default(),
        }
    }
}

/// The HTTP Service.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type == 'LoadBalancer' || (!has(self.loadBalancerSourceRanges) && !has(self.loadBalancerClass))")
        .message("loadBalancerSourceRanges and loadBalancerClass only apply to type LoadBalancer"),
    validation = Rule::new("self.type != 'ClusterIP' || !has(self.externalTrafficPolicy)")
        .message("externalTrafficPolicy only applies to type NodePort or LoadBalancer"),
)]
pub struct HttpServiceSpec {
    /// Service type. ClusterIP by default: HLS is usually put behind an
    /// Ingress or a CDN.
    #[serde(rename = "type", default = "cluster_ip")]
    pub type_: ServiceType,
    /// Service port.
    #[serde(default = "http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    #[serde(flatten)]
    pub options: ServiceOptions,
}

fn cluster_ip() -> ServiceType {
    ServiceType::ClusterIP
}

fn http_port() -> i32 {
    80
}

impl Default for HttpServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::ClusterIP,
            port: http_port(),
            options: ServiceOptions::default(),
        }
    }
}

/// Where HLS segments and playlists are written. Exactly one field is set.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.emptyDir) ? 1 : 0) + (has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.existingClaim) ? 1 : 0) == 1")
        .message("set exactly one of storage.emptyDir, storage.persistentVolumeClaim or storage.existingClaim"),
)]
pub struct StorageSpec {
    /// A volume inside the pod (the default). Segments live as long as the
    /// pod; one ingest replica with the HTTP server as a sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirStorage>,
    /// A PersistentVolumeClaim the operator creates and owns: deleted with
    /// the LiveApplication, or when the spec switches to another storage
    /// kind. ReadWriteMany lets several ingest pods and a separate HTTP
    /// Deployment share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcStorage>,
    /// A PersistentVolumeClaim you manage; it must allow every pod that
    /// mounts it (ReadWriteMany for more than one pod or node). Declare its
    /// access mode in `accessMode`: the operator does not read your claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_claim: Option<ExistingClaim>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            empty_dir: Some(EmptyDirStorage::default()),
            persistent_volume_claim: None,
            existing_claim: None,
        }
    }
}

/// emptyDir storage.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirStorage {
    /// `""` (node disk, the default) or `Memory` (tmpfs: fast, counts
    /// against the pod's memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == '' || self == 'Memory'")
        .message("storage.emptyDir.medium must be \"\" (node disk) or Memory"))]
    pub medium: Option<String>,
    /// Upper bound of the volume's size (e.g. `1Gi`); the pod is evicted
    /// beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_schema")]
    pub size_limit: Option<Quantity>,
}

/// A PersistentVolumeClaim created by the operator.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PvcStorage {
    /// StorageClass of the claim; unset uses the cluster default. Cannot
    /// change once the claim exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("storage.persistentVolumeClaim.storageClassName cannot change once the claim exists"))]
    pub storage_class_name: Option<String>,
    /// Requested size (e.g. `10Gi`).
    #[serde(default = "default_pvc_size")]
    #[schemars(schema_with = "quantity_schema")]
    pub size: Quantity,
    /// Access modes of the claim. ReadWriteMany is needed for more than one
    /// ingest replica or for http.mode deployment.
    #[serde(default = "default_access_modes")]
    #[schemars(length(min = 1))]
    pub access_modes: Vec<AccessMode>,
}

fn default_pvc_size() -> Quantity {
    Quantity("10Gi".to_string())
}

fn default_access_modes() -> Vec<AccessMode> {
    vec![AccessMode::ReadWriteMany]
}

impl Default for PvcStorage {
    fn default() -> Self {
        Self {
            storage_class_name: None,
            size: default_pvc_size(),
            access_modes: default_access_modes(),
        }
    }
}

/// PersistentVolumeClaim access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadWriteOncePod,
    ReadWriteMany,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "ReadWriteOnce",
            Self::ReadWriteOncePod => "ReadWriteOncePod",
            Self::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// A PersistentVolumeClaim managed outside the operator.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExistingClaim {
    /// Name of the claim, in the LiveApplication's namespace.
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// The claim's access mode, as you created it. ReadWriteMany (the
    /// default) lets several ingest pods and an HTTP Deployment share it.
    /// ReadWriteOnce (one node) or ReadWriteOncePod (one pod) allows one
    /// ingest pod with the HTTP server as its sidecar, and its pod is
    /// replaced with a Recreate rollout (the old pod stops before the new
    /// one mounts the claim), so a rollout interrupts publishing.
    #[serde(default = "read_write_many")]
    pub access_mode: AccessMode,
}

fn read_write_many() -> AccessMode {
    AccessMode::ReadWriteMany
}

impl ExistingClaim {
    /// Whether pods on any nodes can mount the claim at once.
    pub fn is_shared(&self) -> bool {
        self.access_mode == AccessMode::ReadWriteMany
    }
}

/// A Kubernetes quantity (`10Gi`, `500Mi`): integer or string, without the
/// long upstream description repeated at every use.
fn quantity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "pattern": "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$"
    })
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
    /// HTTP pods that pass their readiness probe (http.mode deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_ready_replicas: Option<i32>,
    /// Where to publish: `rtmp://<address>:<port>/<app>`, followed by
    /// `/<stream-key>`. Set once the Service has an address (for a
    /// LoadBalancer: once the cloud assigned one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmp_url: Option<String>,
    /// Where to watch, with `{stream}` standing for the stream key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playback_url: Option<String>,
    /// Standard conditions: Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Path of the checked-in CRD manifest, relative to the `crds` crate root.
pub const CRD_YAML_PATH: &str = "yaml/liveapplication.yaml";
/// Path of the Helm chart's copy, relative to the repository root.
pub const CHART_CRD_PATH: &str = "charts/oxcast/templates/crds/liveapplication.yaml";

const GENERATED_HEADER: &str =
    "# Generated from crds/src/live_application.rs by `cargo run -p oxcast-crds --bin crdgen`.\n\
     # Do not edit: change the Rust types and regenerate.\n";

/// The `LiveApplication` CustomResourceDefinition as it is shipped.
///
/// This is `LiveApplication::crd()` minus the `uint32`/`uint64` formats
/// schemars puts on unsigned settings: Kubernetes knows only `int32` and
/// `int64`, and would warn about an unrecognized format on every `kubectl
/// apply` of the CRD. The `minimum: 0` that comes with them stays.
pub fn crd() -> CustomResourceDefinition {
    fn drop_unsigned_formats(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if matches!(
                    map.get("format").and_then(|f| f.as_str()),
                    Some("uint32" | "uint64")
                ) {
                    map.remove("format");
                }
                map.values_mut().for_each(drop_unsigned_formats);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(drop_unsigned_formats),
            _ => {}
        }
    }
    let crd = LiveApplication::crd();
    let mut value = match serde_json::to_value(&crd) {
        Ok(value) => value,
        // A derived CRD always serializes; keep it unchanged if it did not.
        Err(_) => return crd,
    };
    drop_unsigned_formats(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// Renders the `LiveApplication` CustomResourceDefinition as the YAML that is
/// checked in at [`CRD_YAML_PATH`].
///
/// `crdgen` and the drift test both call this, so the file on disk can only
/// differ from the types when someone forgot to regenerate it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&crd())?;
    Ok(format!("{GENERATED_HEADER}---\n{body}"))
}

/// The same CRD as a Helm template for the chart at [`CHART_CRD_PATH`]:
/// installed only with `crds.enabled`, and kept on `helm uninstall` with
/// `crds.keep` (deleting the CRD would delete every LiveApplication, and
/// with them every running stream).
pub fn chart_crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&crd())?;
    // The CRD has no annotations of its own, so the chart's go right after
    // `metadata:`; fail loudly if that ever stops being true.
    let marker = "metadata:\n  name: liveapplications.live.oxcast.dev\n";
    if !body.contains(marker) || body.contains("\n  annotations:") {
        return Err(serde::ser::Error::custom(
            "unexpected CRD metadata layout; update chart_crd_yaml",
        ));
    }
    let templated = body.replacen(
        marker,
        "metadata:\n  name: liveapplications.live.oxcast.dev\n  \
         {{- if .Values.crds.keep }}\n  \
         annotations:\n    \
         helm.sh/resource-policy: keep\n  \
         {{- end }}\n",
        1,
    );
    Ok(format!(
        "{GENERATED_HEADER}# Helm: installed when .Values.crds.enabled; kept on uninstall when .Values.crds.keep.\n\
         {{{{- if .Values.crds.enabled }}}}\n---\n{templated}{{{{- end }}}}\n"
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
    fn chart_copy_of_the_crd_matches_the_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/oxcast/templates/crds/liveapplication.yaml"
        );
        let checked_in = std::fs::read_to_string(path).expect("read the chart's CRD template");
        let generated = chart_crd_yaml().expect("render the chart CRD template");
        assert!(
            checked_in == generated,
            "{CHART_CRD_PATH} is out of date with the Rust types; regenerate it with\n  \
             cargo run -p oxcast-crds --bin crdgen -- --chart > {CHART_CRD_PATH}"
        );
    }

    #[test]
    fn chart_template_is_the_plain_crd_inside_the_helm_guards() {
        let plain = crd_yaml().expect("render");
        let chart = chart_crd_yaml().expect("render");
        // Dropping the Helm lines must give back the plain manifest body.
        let strip = |s: &str| -> String {
            s.lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && !l.contains("{{")
                        && !l.contains("helm.sh/")
                        && l.trim() != "annotations:"
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&plain), strip(&chart));
        assert!(chart.contains("{{- if .Values.crds.enabled }}"));
        assert!(chart.contains("{{- if .Values.crds.keep }}"));
        assert!(chart.contains("helm.sh/resource-policy: keep"));
    }

    #[test]
    fn crd_identity_is_what_clients_expect() {
        let crd = crd();
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
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Ready", "RTMP URL", "Age"]);
        let text = serde_json::to_string(&crd).expect("serialize");
        assert!(
            !text.contains("uint"),
            "Kubernetes does not know unsigned formats"
        );
    }

    #[test]
    fn spec_round_trips_through_camel_case_json() {
        let spec = LiveApplicationSpec {
            image: Some("ghcr.io/example/oxcast:1".into()),
            replicas: 2,
            storage: StorageSpec {
                empty_dir: None,
                persistent_volume_claim: Some(PvcStorage::default()),
                existing_claim: None,
            },
            ..LiveApplicationSpec::default()
        };
        let json = serde_json::to_value(&spec).expect("serialize spec");
        assert_eq!(json["replicas"], 2);
        assert!(json["hls"].get("playlistLength").is_some(), "{json}");
        // Flattened server settings sit directly in their section.
        assert_eq!(json["rtmp"]["app"], "app");
        assert_eq!(json["rtmp"]["service"]["type"], "LoadBalancer");
        assert_eq!(json["http"]["pathPrefix"], "/live");
        assert_eq!(json["http"]["mode"], "sidecar");
        assert_eq!(
            json["storage"]["persistentVolumeClaim"]["accessModes"][0],
            "ReadWriteMany"
        );
        let back: LiveApplicationSpec = serde_json::from_value(json).expect("deserialize spec");
        assert_eq!(back, spec);
    }

    #[test]
    fn an_empty_spec_is_the_reference_setup() {
        let spec: LiveApplicationSpec = serde_json::from_str("{}").expect("empty spec");
        assert_eq!(spec, LiveApplicationSpec::default());
        assert_eq!(spec.replicas, 1);
        assert!(spec.storage.empty_dir.is_some());
        assert_eq!(spec.ingest_config(), IngestConfig::default());
    }
}

/// Test fixtures shared by the crate's CEL unit tests and the admission
/// tests against a real API server (in `oxcast-tests`), so both check the
/// same specs for the same messages. Not part of the API.
#[doc(hidden)]
pub mod testdata {
    use serde::Deserialize;

    /// `crds/src/testdata/invalid-liveapplications.yaml`.
    pub const INVALID_YAML: &str = include_str!("testdata/invalid-liveapplications.yaml");

    /// A LiveApplication that must be rejected, and why.
    #[derive(Debug, Clone, Deserialize)]
    pub struct InvalidCase {
        /// What is wrong, for test output.
        pub case: String,
        /// `metadata.name`; "invalid" unless the case is about the name.
        #[serde(default = "default_name")]
        pub name: String,
        /// Text the rejection message must contain.
        pub message: String,
        /// The spec as a user would write it (defaults not filled in).
        pub spec: serde_json::Value,
    }

    fn default_name() -> String {
        "invalid".to_string()
    }

    impl InvalidCase {
        /// The whole object as a user would apply it.
        pub fn manifest(&self) -> serde_json::Value {
            serde_json::json!({
                "apiVersion": "live.oxcast.dev/v1alpha1",
                "kind": "LiveApplication",
                "metadata": {"name": self.name},
                "spec": self.spec,
            })
        }
    }

    /// Every invalid case.
    pub fn invalid_cases() -> Result<Vec<InvalidCase>, serde_yaml::Error> {
        serde_yaml::from_str(INVALID_YAML)
    }
}

#[cfg(test)]
#[path = "live_application_cel_tests.rs"]
mod cel_tests;
