//! Desired state: a LiveApplication in, the Kubernetes objects that run it
//! out. Pure functions with no client, so every field is unit-tested and a
//! reconcile can compare what it wants with what it sees before writing.
//!
//! Every object carries only the fields the operator cares about: it is
//! applied with server-side apply, so the API server keeps its defaults and
//! other managers' fields, and a field dropped here is removed there.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIProjection, DownwardAPIVolumeFile, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection,
    ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use oxcast_crds::live_application::{
    AccessMode, HttpMode, LiveApplication, LiveApplicationSpec, ServiceOptions, ServiceType,
    StorageSpec, HTTP_CONTAINER_PORT, RTMP_CONTAINER_PORT,
};
use oxcast_crds::InvalidSetting;
use serde::Serialize;

use crate::names::{
    Component, Names, ANNOTATION_DESIRED_HASH, ANNOTATION_HTTP_CONFIG_CHECKSUM,
    ANNOTATION_INGEST_CONFIG_CHECKSUM,
};
use crate::render;

/// UID and GID the containers run as (distroless `nonroot`); the volumes'
/// group too, so the ingest server can write the HLS tree.
pub const RUN_AS: i64 = 65532;
/// Time the servers get after SIGTERM beyond the longest segment: the ingest
/// server completes each open segment and ends its playlist before exiting.
const SHUTDOWN_MARGIN_SECONDS: i64 = 10;

const VOLUME_CONFIG: &str = "config";
const VOLUME_HLS: &str = "hls";
const VOLUME_KEYS: &str = "stream-keys";
const VOLUME_KEY_TOKEN: &str = "key-token";
const VOLUME_API_ACCESS: &str = "kube-api-access";
const PORT_RTMP: &str = "rtmp";
const PORT_HTTP: &str = "http";
const PORT_OPS: &str = "ops";
/// The ingest container's `/healthz`, `/readyz` and `/metrics`
/// (`--ops-listen`); not published by any Service.
pub const OPS_CONTAINER_PORT: i32 = 9090;
/// Where a pod's API credentials are expected (in-cluster client config).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// What the ingest pods may do with coordination.k8s.io Leases in their own
/// namespace (stream ownership, `ingest/src/ownership/leases.rs`): create,
/// update (renew, take over) and delete their heartbeat and stream Leases,
/// read one, list the group's. No watch, no patch.
pub const INGEST_LEASE_VERBS: [&str; 5] = ["get", "list", "create", "update", "delete"];

/// Operator-wide inputs to the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSettings {
    /// Ingest image used when the spec names none (`--ingest-image`).
    pub default_image: String,
}

/// Why no objects could be built for a LiveApplication.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The spec is inconsistent; nothing is applied until it is fixed.
    #[error("invalid spec: {0}")]
    Invalid(#[from] InvalidSetting),
    /// The object came without a name, namespace or uid (never from the API server).
    #[error("the LiveApplication has no {0}")]
    MissingMetadata(&'static str),
    #[error("rendering the ingest config: {0}")]
    Render(#[from] serde_yaml::Error),
    #[error("hashing a desired object: {0}")]
    Hash(#[from] serde_json::Error),
}

/// A kind of child that a spec change can make unnecessary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObsoleteKind {
    Deployment,
    PersistentVolumeClaim,
    PodDisruptionBudget,
}

/// A child an earlier spec needed and this one does not: deleted if it
/// exists and this LiveApplication controls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obsolete {
    pub kind: ObsoleteKind,
    pub name: String,
}

/// Everything one LiveApplication should own.
#[derive(Debug, Clone)]
pub struct Desired {
    pub config_map: ConfigMap,
    /// The ingest pods' identity, and what it may do (stream-ownership
    /// Leases in the application's namespace).
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// The claim the operator creates (storage.persistentVolumeClaim only).
    pub pvc: Option<PersistentVolumeClaim>,
    /// The ingest pods (with the HTTP sidecar unless http.mode is
    /// deployment).
    pub ingest_deployment: Deployment,
    /// The HTTP server's own pods (http.mode: deployment only).
    pub http_deployment: Option<Deployment>,
    pub rtmp_service: Service,
    pub http_service: Service,
    /// The ingest pods' PodDisruptionBudget (spec.podDisruptionBudget only).
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    pub obsolete: Vec<Obsolete>,
}

/// Checks what the CRD's CEL rules check and the builders rely on, plus
/// what the ingest server checks at startup: a CRD installed from an older
/// manifest might not enforce everything, and a spec the server refuses
/// would only crash-loop its pods.
pub fn validate(spec: &LiveApplicationSpec) -> Result<(), InvalidSetting> {
    let invalid = |field, message: &str| {
        Err(InvalidSetting {
            field,
            message: message.to_string(),
        })
    };
    let storage = &spec.storage;
    let kinds = [
        storage.empty_dir.is_some(),
        storage.persistent_volume_claim.is_some(),
        storage.existing_claim.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return invalid(
            "storage",
            "set exactly one of storage.emptyDir, storage.persistentVolumeClaim or storage.existingClaim",
        );
    }
    if spec.http.mode == HttpMode::Deployment && !shared_volume(storage) {
        return invalid(
            "http.mode",
            "http.mode deployment needs a volume the HTTP pods can share: storage.persistentVolumeClaim with accessModes [ReadWriteMany], or storage.existingClaim with accessMode ReadWriteMany",
        );
    }
    if spec.replicas > 1 && !shared_volume(storage) {
        return invalid(
            "replicas",
            "more than one ingest replica needs a shared volume: storage.persistentVolumeClaim with accessModes [ReadWriteMany], or storage.existingClaim with accessMode ReadWriteMany",
        );
    }
    if let Some(budget) = &spec.pod_disruption_budget {
        if budget.min_available.is_some() == budget.max_unavailable.is_some() {
            return invalid(
                "podDisruptionBudget",
                "podDisruptionBudget: set exactly one of minAvailable or maxUnavailable (e.g. maxUnavailable: 1)",
            );
        }
    }
    // The Lease prefix (the application's name) is checked by `build`,
    // which knows the name.
    render::validate(&render::ingest_config(spec, "app"))
}

/// Whether several pods, on any nodes, can mount the HLS volume.
fn shared_volume(storage: &StorageSpec) -> bool {
    storage
        .existing_claim
        .as_ref()
        .is_some_and(|c| c.is_shared())
        || storage
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|p| p.access_modes.contains(&AccessMode::ReadWriteMany))
}

/// Validates `app` and builds its children.
pub fn build(app: &LiveApplication, settings: &BuildSettings) -> Result<Desired, BuildError> {
    let spec = &app.spec;
    validate(spec)?;
    let name = app
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = app
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let mut owner = app
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    // As controller-runtime does: a foreground deletion of the
    // LiveApplication waits for its children to be gone.
    owner.block_owner_deletion = Some(true);
    let b = Builder {
        spec,
        names: Names::new(name),
        namespace,
        owner,
        image: spec
            .image
            .clone()
            .unwrap_or_else(|| settings.default_image.clone()),
    };

    let config = render::ingest_config(spec, name);
    render::validate(&config)?;
    let config_text = render::render(&config)?;
    let checksums = Checksums {
        ingest: render::ingest_checksum(&config)?,
        http: render::http_checksum(&config)?,
    };
    let config_map = stamp(b.config_map(config_text))?;
    let service_account = stamp(b.service_account())?;
    let role = stamp(b.role())?;
    let role_binding = stamp(b.role_binding())?;
    let pvc = spec
        .storage
        .persistent_volume_claim
        .as_ref()
        .map(|_| stamp(b.pvc()))
        .transpose()?;
    let deployment_mode = spec.http.mode == HttpMode::Deployment;
    let ingest_deployment = stamp(b.ingest_deployment(&checksums))?;
    let http_deployment = if deployment_mode {
        Some(stamp(b.http_deployment(&checksums))?)
    } else {
        None
    };
    let rtmp_service = stamp(b.rtmp_service())?;
    let http_service = stamp(b.http_service())?;
    let pod_disruption_budget = b.pod_disruption_budget().map(stamp).transpose()?;

    let mut obsolete = Vec::new();
    if !deployment_mode {
        obsolete.push(Obsolete {
            kind: ObsoleteKind::Deployment,
            name: b.names.http_deployment(),
        });
    }
    if pvc.is_none() {
        obsolete.push(Obsolete {
            kind: ObsoleteKind::PersistentVolumeClaim,
            name: b.names.pvc(),
        });
    }
    if pod_disruption_budget.is_none() {
        obsolete.push(Obsolete {
            kind: ObsoleteKind::PodDisruptionBudget,
            name: b.names.ingest_disruption_budget(),
        });
    }
    Ok(Desired {
        config_map,
        service_account,
        role,
        role_binding,
        pvc,
        ingest_deployment,
        http_deployment,
        rtmp_service,
        http_service,
        pod_disruption_budget,
        obsolete,
    })
}

/// Adds [`ANNOTATION_DESIRED_HASH`]: the hash of the object as built, so a
/// later reconcile can tell "my intent changed" (hash differs) from "the
/// object drifted" (fields differ) without remembering anything.
fn stamp<K: Resource + Serialize>(mut obj: K) -> Result<K, serde_json::Error> {
    let text = serde_json::to_string(&obj)?;
    let hash = render::checksum(&text);
    obj.annotations_mut()
        .insert(ANNOTATION_DESIRED_HASH.to_string(), hash[..16].to_string());
    Ok(obj)
}

/// Checksums of the two servers' parts of the config file, so a change
/// rolls only the pods that read it (see [`render::ingest_checksum`]).
struct Checksums {
    ingest: String,
    http: String,
}

struct Builder<'a> {
    spec: &'a LiveApplicationSpec,
    names: Names,
    namespace: &'a str,
    owner: OwnerReference,
    image: String,
}

impl Builder<'_> {
    fn meta(&self, name: String, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_string()),
            labels: Some(self.names.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn config_map(&self, text: String) -> ConfigMap {
        ConfigMap {
            metadata: self.meta(self.names.config_map(), Component::Application),
            data: Some(BTreeMap::from([(render::CONFIG_KEY.to_string(), text)])),
            ..ConfigMap::default()
        }
    }

    /// The ingest pods' ServiceAccount. Its token is never mounted
    /// automatically: only the ingest container gets one, and only when it
    /// talks to the API server (see [`Builder::api_access_volume`]).
    fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(self.names.ingest_identity(), Component::Ingest),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        }
    }

    /// Exactly what stream ownership calls, in this namespace. Lease names
    /// are made per replica and per stream, so `resourceNames` cannot
    /// narrow it (and `create` and `list` cannot be narrowed by name).
    fn role(&self) -> Role {
        Role {
            metadata: self.meta(self.names.ingest_identity(), Component::Ingest),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".to_string()]),
                resources: Some(vec!["leases".to_string()]),
                verbs: INGEST_LEASE_VERBS.map(str::to_string).to_vec(),
                ..PolicyRule::default()
            }]),
        }
    }

    fn role_binding(&self) -> RoleBinding {
        RoleBinding {
            metadata: self.meta(self.names.ingest_identity(), Component::Ingest),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_string(),
                kind: "Role".to_string(),
                name: self.names.ingest_identity(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_string(),
                name: self.names.ingest_identity(),
                namespace: Some(self.namespace.to_string()),
                api_group: None,
            }]),
        }
    }

    /// Whether the ingest pods talk to the API server (Lease ownership).
    fn leases(&self) -> bool {
        render::uses_leases(&self.spec.storage)
    }

    /// The token, CA and namespace the in-cluster client reads, as the
    /// ServiceAccount admission plugin would mount them, but into the
    /// ingest container only: with `automountServiceAccountToken` (a pod
    /// flag) an HTTP sidecar would get API credentials it never uses.
    fn api_access_volume(&self) -> Volume {
        Volume {
            name: VOLUME_API_ACCESS.to_string(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o444),
                sources: Some(vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            path: "token".to_string(),
                            expiration_seconds: Some(3607),
                            audience: None,
                        }),
                        ..VolumeProjection::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".to_string(),
                            items: Some(vec![KeyToPath {
                                key: "ca.crt".to_string(),
                                path: "ca.crt".to_string(),
                                mode: None,
                            }]),
                            optional: None,
                        }),
                        ..VolumeProjection::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardAPIProjection {
                            items: Some(vec![DownwardAPIVolumeFile {
                                path: "namespace".to_string(),
                                field_ref: Some(field_ref("metadata.namespace")),
                                ..DownwardAPIVolumeFile::default()
                            }]),
                        }),
                        ..VolumeProjection::default()
                    },
                ]),
            }),
            ..Volume::default()
        }
    }

    fn pvc(&self) -> PersistentVolumeClaim {
        let pvc = self
            .spec
            .storage
            .persistent_volume_claim
            .clone()
            .unwrap_or_default();
        PersistentVolumeClaim {
            metadata: self.meta(self.names.pvc(), Component::Application),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(
                    pvc.access_modes
                        .iter()
                        .map(|m| m.as_str().to_string())
                        .collect(),
                ),
                storage_class_name: pvc.storage_class_name,
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), pvc.size)])),
                    limits: None,
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }
    }

    fn ingest_deployment(&self, checksums: &Checksums) -> Deployment {
        let sidecar = self.spec.http.mode == HttpMode::Sidecar;
        let mut config_annotations = vec![(ANNOTATION_INGEST_CONFIG_CHECKSUM, &checksums.ingest)];
        if sidecar {
            // The HTTP server runs in these pods too.
            config_annotations.push((ANNOTATION_HTTP_CONFIG_CHECKSUM, &checksums.http));
        }
        let mut containers = vec![self.ingest_container()];
        if sidecar {
            containers.push(self.http_container());
        }
        let mut volumes = vec![self.config_volume(), self.hls_volume()];
        if let Some(secret) = render::keys_secret(self.spec) {
            volumes.push(Volume {
                name: VOLUME_KEYS.to_string(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.to_string()),
                    // Owner and group (fsGroup) may read; nobody else.
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
        if self.leases() {
            volumes.push(self.api_access_volume());
        }
        if sidecar {
            volumes.extend(self.key_token_volume());
        }
        let grace = self.pre_stop_seconds()
            + self
                .spec
                .hls
                .effective_max_fragment()
                .get()
                .as_secs_f64()
                .ceil() as i64
            + SHUTDOWN_MARGIN_SECONDS;
        let mut deployment = self.deployment(
            self.names.ingest_deployment(),
            Component::Ingest,
            self.spec.replicas,
            self.ingest_strategy(),
            &config_annotations,
            containers,
            volumes,
            grace,
        );
        if let Some(pod) = deployment
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
        {
            pod.service_account_name = Some(self.names.ingest_identity());
        }
        deployment
    }

    fn http_deployment(&self, checksums: &Checksums) -> Deployment {
        self.deployment(
            self.names.http_deployment(),
            Component::Http,
            self.spec.http.replicas,
            rolling_update(),
            &[(ANNOTATION_HTTP_CONFIG_CHECKSUM, &checksums.http)],
            vec![self.http_container()],
            [self.config_volume(), self.hls_volume()]
                .into_iter()
                .chain(self.key_token_volume())
                .collect(),
            self.pre_stop_seconds() + SHUTDOWN_MARGIN_SECONDS,
        )
    }

    /// Whole seconds of `spec.preStopDelay`, rounded up (a preStop sleep
    /// counts in seconds).
    fn pre_stop_seconds(&self) -> i64 {
        let delay = self.spec.pre_stop_delay.get();
        let whole = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        i64::try_from(whole).unwrap_or(i64::MAX)
    }

    /// How long a terminating pod keeps running before it gets SIGTERM:
    /// long enough for Service endpoints, kube-proxy and load balancers to
    /// stop sending it new connections, so a rollout does not drop
    /// publishers that are just connecting or viewers fetching a segment.
    /// None with a zero delay.
    fn pre_stop_sleep(&self) -> Option<Lifecycle> {
        let seconds = self.pre_stop_seconds();
        (seconds > 0).then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        })
    }

    /// `<app>-ingest`, selecting the ingest pods, when the spec asks for one.
    /// Unhealthy pods may always be evicted: a budget must not keep a
    /// crash-looping pod on a node that is being drained.
    fn pod_disruption_budget(&self) -> Option<PodDisruptionBudget> {
        let budget = self.spec.pod_disruption_budget.as_ref()?;
        Some(PodDisruptionBudget {
            metadata: self.meta(self.names.ingest_disruption_budget(), Component::Ingest),
            spec: Some(PodDisruptionBudgetSpec {
                min_available: budget.min_available.clone(),
                max_unavailable: budget.max_unavailable.clone(),
                selector: Some(LabelSelector {
                    match_labels: Some(self.names.selector(Component::Ingest)),
                    match_expressions: None,
                }),
                unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            }),
            ..PodDisruptionBudget::default()
        })
    }

    /// A ReadWriteOnce claim can only be mounted on one node at a time (a
    /// ReadWriteOncePod one by one pod), whether the operator created it or
    /// the user declared it in `existingClaim.accessMode`: the old pod must
    /// go before the new one starts, or the new one hangs in
    /// ContainerCreating on another node. Everything else surges a new pod
    /// first, so the application stays reachable.
    fn ingest_strategy(&self) -> DeploymentStrategy {
        let storage = &self.spec.storage;
        let single_node = storage
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|pvc| !pvc.access_modes.contains(&AccessMode::ReadWriteMany))
            || storage
                .existing_claim
                .as_ref()
                .is_some_and(|c| !c.is_shared());
        if single_node {
            DeploymentStrategy {
                type_: Some("Recreate".to_string()),
                rolling_update: None,
            }
        } else {
            rolling_update()
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deployment(
        &self,
        name: String,
        component: Component,
        replicas: i32,
        strategy: DeploymentStrategy,
        config_checksums: &[(&str, &String)],
        containers: Vec<Container>,
        volumes: Vec<Volume>,
        termination_grace_seconds: i64,
    ) -> Deployment {
        let spec = self.spec;
        let mut annotations = spec.pod_annotations.clone();
        for (key, checksum) in config_checksums {
            annotations.insert(key.to_string(), checksum.to_string());
        }
        Deployment {
            metadata: self.meta(name, component),
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(self.names.selector(component)),
                    match_expressions: None,
                },
                strategy: Some(strategy),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.names.labels(component)),
                        annotations: Some(annotations),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers,
                        volumes: Some(volumes),
                        security_context: Some(pod_security_context()),
                        termination_grace_period_seconds: Some(termination_grace_seconds),
                        // No API credentials in every container: the ingest
                        // container gets its own when it needs them.
                        automount_service_account_token: Some(false),
                        // Service environment variables are noise to them.
                        enable_service_links: Some(false),
                        node_selector: non_empty_map(&spec.node_selector),
                        tolerations: non_empty_vec(&spec.tolerations),
                        affinity: spec.affinity.clone(),
                        image_pull_secrets: non_empty_vec(&spec.image_pull_secrets),
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        }
    }

    fn ingest_container(&self) -> Container {
        let mut mounts = vec![config_mount(), hls_mount(false, self.spec)];
        if render::keys_secret(self.spec).is_some() {
            mounts.push(VolumeMount {
                name: VOLUME_KEYS.to_string(),
                mount_path: render::KEYS_DIR.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        if self.leases() {
            mounts.push(VolumeMount {
                name: VOLUME_API_ACCESS.to_string(),
                mount_path: SERVICE_ACCOUNT_DIR.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        Container {
            name: "ingest".to_string(),
            image: Some(self.image.clone()),
            image_pull_policy: self.spec.image_pull_policy.map(|p| p.as_str().to_string()),
            command: Some(vec!["oxcast-ingest".to_string()]),
            args: Some(with_key_dir(
                [
                    "rtmp",
                    "--config",
                    &render::config_path(),
                    "--hls-root",
                    &render::hls_root(self.spec),
                    "--rtmp-listen",
                    &format!("0.0.0.0:{RTMP_CONTAINER_PORT}"),
                    "--ops-listen",
                    &format!("0.0.0.0:{OPS_CONTAINER_PORT}"),
                    // One JSON object per line: what log collectors parse.
                    "--log-format",
                    "json",
                ]
                .map(str::to_string)
                .to_vec(),
                self.spec,
            )),
            // Who this replica is (Lease holder, heartbeat name) and where its
            // Leases live; read by `--replica-id` and `--lease-namespace`.
            env: Some(vec![
                field_env("POD_NAME", "metadata.name"),
                field_env("POD_NAMESPACE", "metadata.namespace"),
            ]),
            ports: Some(vec![
                ContainerPort {
                    name: Some(PORT_RTMP.to_string()),
                    container_port: RTMP_CONTAINER_PORT,
                    protocol: Some("TCP".to_string()),
                    ..ContainerPort::default()
                },
                ContainerPort {
                    name: Some(PORT_OPS.to_string()),
                    container_port: OPS_CONTAINER_PORT,
                    protocol: Some("TCP".to_string()),
                    ..ContainerPort::default()
                },
            ]),
            // Ready only while the RTMP listener runs, the HLS volume is
            // writable and (Leases) the replica can prove stream ownership.
            readiness_probe: Some(Probe {
                period_seconds: Some(5),
                failure_threshold: Some(2),
                ..http_get(PORT_OPS, "/readyz")
            }),
            liveness_probe: Some(Probe {
                period_seconds: Some(10),
                failure_threshold: Some(3),
                ..http_get(PORT_OPS, "/healthz")
            }),
            lifecycle: self.pre_stop_sleep(),
            resources: self.spec.resources.clone(),
            volume_mounts: Some(mounts),
            security_context: Some(container_security_context()),
            ..Container::default()
        }
    }

    fn http_container(&self) -> Container {
        let get = |path: &str| http_get(PORT_HTTP, path);
        Container {
            name: "http".to_string(),
            image: Some(self.image.clone()),
            image_pull_policy: self.spec.image_pull_policy.map(|p| p.as_str().to_string()),
            command: Some(vec!["oxcast-ingest".to_string()]),
            args: Some(with_key_dir(
                [
                    "http",
                    "--config",
                    &render::config_path(),
                    "--hls-root",
                    &render::hls_root(self.spec),
                    "--http-listen",
                    &format!("0.0.0.0:{HTTP_CONTAINER_PORT}"),
                    "--log-format",
                    "json",
                ]
                .map(str::to_string)
                .to_vec(),
                self.spec,
            )),
            ports: Some(vec![ContainerPort {
                name: Some(PORT_HTTP.to_string()),
                container_port: HTTP_CONTAINER_PORT,
                protocol: Some("TCP".to_string()),
                ..ContainerPort::default()
            }]),
            readiness_probe: Some(Probe {
                period_seconds: Some(5),
                failure_threshold: Some(2),
                ..get("/readyz")
            }),
            liveness_probe: Some(Probe {
                period_seconds: Some(10),
                failure_threshold: Some(3),
                ..get("/healthz")
            }),
            lifecycle: self.pre_stop_sleep(),
            resources: self.spec.http.resources.clone(),
            // The HTTP server only reads the tree (and the keys); only it
            // gets the key-token secret.
            volume_mounts: Some(
                [config_mount(), hls_mount(true, self.spec)]
                    .into_iter()
                    .chain(render::key_token_secret(self.spec).map(|_| VolumeMount {
                        name: VOLUME_KEY_TOKEN.to_string(),
                        mount_path: render::KEY_TOKEN_DIR.to_string(),
                        read_only: Some(true),
                        ..VolumeMount::default()
                    }))
                    .collect(),
            ),
            security_context: Some(container_security_context()),
            ..Container::default()
        }
    }

    /// The key-token Secret (signed key delivery), for the HTTP container.
    fn key_token_volume(&self) -> Option<Volume> {
        let secret = render::key_token_secret(self.spec)?;
        Some(Volume {
            name: VOLUME_KEY_TOKEN.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_string()),
                // Owner and group (fsGroup) may read; nobody else.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        })
    }

    fn config_volume(&self) -> Volume {
        Volume {
            name: VOLUME_CONFIG.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: self.names.config_map(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }
    }

    fn hls_volume(&self) -> Volume {
        let storage = &self.spec.storage;
        let mut volume = Volume {
            name: VOLUME_HLS.to_string(),
            ..Volume::default()
        };
        if let Some(claim) = &storage.existing_claim {
            volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.claim_name.clone(),
                read_only: None,
            });
        } else if storage.persistent_volume_claim.is_some() {
            volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: self.names.pvc(),
                read_only: None,
            });
        } else {
            let empty_dir = storage.empty_dir.clone().unwrap_or_default();
            volume.empty_dir = Some(EmptyDirVolumeSource {
                medium: empty_dir.medium.filter(|m| !m.is_empty()),
                size_limit: empty_dir.size_limit,
            });
        }
        volume
    }

    fn rtmp_service(&self) -> Service {
        let svc = &self.spec.rtmp.service;
        self.service(
            self.names.rtmp_service(),
            Component::Ingest,
            svc.type_,
            &svc.options,
            ServicePort {
                name: Some(PORT_RTMP.to_string()),
                port: self.spec.rtmp.port,
                target_port: Some(IntOrString::String(PORT_RTMP.to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            },
        )
    }

    fn http_service(&self) -> Service {
        let svc = &self.spec.http.service;
        // In sidecar mode the ingest pods serve HTTP.
        let backend = match self.spec.http.mode {
            HttpMode::Sidecar => Component::Ingest,
            HttpMode::Deployment => Component::Http,
        };
        let mut service = self.service(
            self.names.http_service(),
            backend,
            svc.type_,
            &svc.options,
            ServicePort {
                name: Some(PORT_HTTP.to_string()),
                port: svc.port,
                target_port: Some(IntOrString::String(PORT_HTTP.to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            },
        );
        // The Service belongs to the HTTP role whichever pods back it.
        service.metadata.labels = Some(self.names.labels(Component::Http));
        service
    }

    fn service(
        &self,
        name: String,
        backend: Component,
        type_: ServiceType,
        options: &ServiceOptions,
        port: ServicePort,
    ) -> Service {
        let mut metadata = self.meta(name, backend);
        metadata.annotations = non_empty_map(&options.annotations);
        let external = type_ != ServiceType::ClusterIP;
        let load_balancer = type_ == ServiceType::LoadBalancer;
        Service {
            metadata,
            spec: Some(ServiceSpec {
                type_: Some(type_.as_str().to_string()),
                selector: Some(self.names.selector(backend)),
                ports: Some(vec![port]),
                load_balancer_source_ranges: non_empty_vec(&options.load_balancer_source_ranges)
                    .filter(|_| load_balancer),
                load_balancer_class: options
                    .load_balancer_class
                    .clone()
                    .filter(|_| load_balancer),
                external_traffic_policy: options
                    .external_traffic_policy
                    .filter(|_| external)
                    .map(|p| p.as_str().to_string()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }
}

fn http_get(port: &str, path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(port.to_string()),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    }
}

fn field_ref(path: &str) -> ObjectFieldSelector {
    ObjectFieldSelector {
        api_version: None,
        field_path: path.to_string(),
    }
}

/// An environment variable from the downward API.
fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(field_ref(path)),
            ..EnvVarSource::default()
        }),
    }
}

fn rolling_update() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_string()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(0)),
        }),
    }
}

fn config_mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME_CONFIG.to_string(),
        mount_path: render::CONFIG_DIR.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// `args` plus `--hls-key-dir DIR` when the spec encrypts (the config file
/// turns encryption on).
fn with_key_dir(mut args: Vec<String>, spec: &LiveApplicationSpec) -> Vec<String> {
    if let Some(dir) = render::key_dir(spec) {
        args.extend(["--hls-key-dir".to_string(), dir]);
    }
    args
}

fn hls_mount(read_only: bool, spec: &LiveApplicationSpec) -> VolumeMount {
    VolumeMount {
        name: VOLUME_HLS.to_string(),
        mount_path: render::volume_mount_path(spec).to_string(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// The Pod Security Standard "restricted", pod part.
fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        // Only chown a volume whose root does not already match: a large
        // HLS volume would otherwise be walked on every pod start.
        fs_group_change_policy: Some("OnRootMismatch".to_string()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The Pod Security Standard "restricted", container part.
fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// `None` for an empty map: the API server drops empty maps, and an absent
/// field is what the operator then sees.
fn non_empty_map(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

fn non_empty_vec<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
