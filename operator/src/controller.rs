//! The LiveApplication controller: watches, the reconcile pipeline and its
//! error policy.
//!
//! Per reconcile: validate and build the desired children (pure, see
//! [`crate::build`]) → server-side apply each child whose observed copy
//! differs (one field manager, controller owner references) → delete
//! children an earlier spec needed → observe → write the status if it
//! changed. Observed objects come from reflector stores fed by the same
//! watches that trigger reconciles, so a reconcile that has nothing to
//! change sends no request at all.
//!
//! With [`ControllerSettings::check_secrets`] the controller also watches
//! Secrets, metadata only, to report a key-token Secret the spec names but
//! the namespace lacks (`KeySecretMissing`) and to reconcile again when it
//! appears or goes away.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use oxcast_crds::live_application::{HttpMode, LiveApplication, LiveApplicationStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::build::{self, BuildError, BuildSettings, Desired, ObsoleteKind};
use crate::diff::needs_apply;
use crate::metrics::Metrics;
use crate::names::{Names, LABEL_INSTANCE, MANAGED_SELECTOR, MANAGER};
use crate::render;
use crate::status::{self, Observed};
use crate::trim::{self, Compact};
use crate::{Error, Health};

/// The label that names an EndpointSlice's Service (set by the
/// EndpointSlice controller).
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the controller needs to know besides the cluster.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// Namespaces to watch; empty means all.
    pub watch_namespaces: Vec<String>,
    pub build: BuildSettings,
    /// How often a LiveApplication is reconciled with no event at all, to
    /// catch anything a watch missed.
    pub resync_interval: Duration,
    /// Reconciles running at once (per watched namespace).
    pub concurrency: u16,
    /// This instance, for Events (`reportingInstance`).
    pub identity: String,
    /// Watch Secrets (metadata only) and report a missing key-token Secret
    /// in the status. Off for clusters that grant the operator no access
    /// to Secrets: then nothing about Secrets is read at all.
    pub check_secrets: bool,
}

/// State shared by every reconcile of this operator instance.
struct Shared {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    settings: ControllerSettings,
    /// Consecutive failures per LiveApplication, for exponential backoff.
    failures: Mutex<HashMap<(String, String), u32>>,
}

/// The reflector stores of one watch scope (all namespaces, or one).
#[derive(Clone)]
struct Stores {
    deployments: Store<Compact<Deployment>>,
    services: Store<Compact<Service>>,
    config_maps: Store<Compact<ConfigMap>>,
    pvcs: Store<Compact<PersistentVolumeClaim>>,
    pods: Store<Compact<Pod>>,
    service_accounts: Store<Compact<ServiceAccount>>,
    roles: Store<Compact<Role>>,
    role_bindings: Store<Compact<RoleBinding>>,
    pod_disruption_budgets: Store<Compact<PodDisruptionBudget>>,
    /// The Services' EndpointSlices (the EndpointSlice controller copies the
    /// Service's labels onto them, so the managed-by selector finds them).
    endpoint_slices: Store<Compact<EndpointSlice>>,
    /// Which Secrets exist (names only, see [`trim::presence`]), with
    /// `check_secrets`.
    secrets: Option<Store<PartialObjectMeta<Secret>>>,
    /// True once every store above has its initial list.
    synced: watch::Receiver<bool>,
}

impl Stores {
    /// Waits for every store's initial list: before that, a missing object
    /// may just not have been listed yet, and "creating" it would be a
    /// needless write.
    async fn ready(&self) -> Result<(), Error> {
        let mut synced = self.synced.clone();
        synced
            .wait_for(|synced| *synced)
            .await
            .map(|_| ())
            .map_err(|_| Error::Shutdown)
    }
}

/// Resolves once every store has listed its objects.
///
/// `Store::wait_until_ready` must have a single waiter per store: it sits on
/// a oneshot receiver that keeps only the last poller's waker, so with
/// several concurrent waiters (parallel reconciles) all but one can sleep
/// forever. So one task waits here and broadcasts through a watch channel.
async fn wait_synced(stores: Stores) -> bool {
    stores.deployments.wait_until_ready().await.is_ok()
        && stores.services.wait_until_ready().await.is_ok()
        && stores.config_maps.wait_until_ready().await.is_ok()
        && stores.pvcs.wait_until_ready().await.is_ok()
        && stores.pods.wait_until_ready().await.is_ok()
        && stores.service_accounts.wait_until_ready().await.is_ok()
        && stores.roles.wait_until_ready().await.is_ok()
        && stores.role_bindings.wait_until_ready().await.is_ok()
        && stores
            .pod_disruption_budgets
            .wait_until_ready()
            .await
            .is_ok()
        && stores.endpoint_slices.wait_until_ready().await.is_ok()
        && match &stores.secrets {
            Some(secrets) => secrets.wait_until_ready().await.is_ok(),
            None => true,
        }
}

struct Context {
    shared: Arc<Shared>,
    stores: Stores,
}

/// Runs the controllers until `cancel` fires, then lets in-flight
/// reconciles finish. One controller per watched namespace (or one for the
/// whole cluster): each has its own watches, so a namespaced install needs
/// no cluster-wide read access.
pub(crate) async fn run(
    client: Client,
    settings: ControllerSettings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    let reporter = Reporter {
        controller: MANAGER.to_string(),
        instance: Some(settings.identity.clone()),
    };
    let scopes: Vec<Option<String>> = if settings.watch_namespaces.is_empty() {
        vec![None]
    } else {
        settings
            .watch_namespaces
            .iter()
            .cloned()
            .map(Some)
            .collect()
    };
    let shared = Arc::new(Shared {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        settings,
        failures: Mutex::new(HashMap::new()),
    });
    let controllers = scopes
        .into_iter()
        .map(|scope| run_scope(shared.clone(), scope, health.clone(), cancel.clone()));
    futures::future::join_all(controllers).await;
}

fn scoped<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Objects per page of a watch's initial list. kube's default, 500, makes
/// a restarted operator hold 500 whole Deployments or pods (managedFields
/// and all, several MB of JSON and several times that parsed) per watch,
/// for every watch at once, before anything is trimmed: most of the memory
/// peak of a restart. Pages of 100 cost a few more list requests (ten per
/// kind at 1000 objects).
const LIST_PAGE_SIZE: u32 = 100;

/// A watch of the operator's own objects of kind `K`, feeding a store that
/// keeps them [`Compact`] (see [`trim`]).
fn child_watch<K>(
    client: &Client,
    scope: Option<&str>,
) -> (
    Store<Compact<K>>,
    impl futures::Stream<Item = Result<Compact<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let config = watcher::Config::default()
        .labels(MANAGED_SELECTOR)
        .page_size(LIST_PAGE_SIZE);
    let stream = watcher(scoped::<Compact<K>>(client, scope), config)
        .default_backoff()
        .reflect(writer)
        // Deleted children count too: deleting one must trigger its owner
        // so it is recreated.
        .touched_objects();
    (store, stream)
}

/// A metadata-only watch of every Secret in scope, feeding a store that
/// keeps only their names: whether a Secret exists is all a reconcile asks.
/// Not label-selected: the Secrets are the user's.
fn secret_watch(
    client: &Client,
    scope: Option<&str>,
) -> (
    Store<PartialObjectMeta<Secret>>,
    impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static,
) {
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let namespace = scope.unwrap_or("<all>").to_string();
    // An Api of PartialObjectMeta makes metadata-only requests
    // (PartialObjectMetadata): Secret data never reaches the operator.
    let stream = watcher(scoped::<PartialObjectMeta<Secret>>(client, scope), config)
        // Until it lists, no reconcile runs (the stores are not synced):
        // say why, at a level that is logged by default.
        .inspect_err(move |e| {
            tracing::warn!(
                namespace,
                error = %e,
                "cannot watch Secrets: the operator needs get, list and watch on secrets, or --check-secrets=false"
            )
        })
        .default_backoff()
        .modify(trim::presence::<PartialObjectMeta<Secret>>)
        .reflect(writer)
        // A deleted Secret counts too: its LiveApplications are missing it now.
        .touched_objects();
    (store, stream)
}

/// The LiveApplications in `secret`'s namespace whose key-token Secret it is.
fn apps_using_secret(
    apps: &Store<LiveApplication>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<LiveApplication>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    apps.state_filter(|app| {
        app.namespace() == namespace && render::key_token_secret(&app.spec) == Some(name.as_str())
    })
    .iter()
    .map(|app| ObjectRef::from_obj(app.as_ref()))
    .collect()
}

async fn run_scope(
    shared: Arc<Shared>,
    scope: Option<String>,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    let client = shared.client.clone();
    let scope_ref = scope.as_deref();
    let (deployments, deployment_events) = child_watch::<Deployment>(&client, scope_ref);
    let (services, service_events) = child_watch::<Service>(&client, scope_ref);
    let (config_maps, config_map_events) = child_watch::<ConfigMap>(&client, scope_ref);
    let (pvcs, pvc_events) = child_watch::<PersistentVolumeClaim>(&client, scope_ref);
    let (pods, pod_events) = child_watch::<Pod>(&client, scope_ref);
    let (service_accounts, service_account_events) =
        child_watch::<ServiceAccount>(&client, scope_ref);
    let (roles, role_events) = child_watch::<Role>(&client, scope_ref);
    let (role_bindings, role_binding_events) = child_watch::<RoleBinding>(&client, scope_ref);
    let (pod_disruption_budgets, pod_disruption_budget_events) =
        child_watch::<PodDisruptionBudget>(&client, scope_ref);
    let (endpoint_slices, endpoint_slice_events) = child_watch::<EndpointSlice>(&client, scope_ref);
    let (secrets, secret_events) = if shared.settings.check_secrets {
        let (store, events) = secret_watch(&client, scope_ref);
        (Some(store), Some(events))
    } else {
        (None, None)
    };
    let (synced_tx, synced) = watch::channel(false);
    let stores = Stores {
        deployments,
        services,
        config_maps,
        pvcs,
        pods,
        service_accounts,
        roles,
        role_bindings,
        pod_disruption_budgets,
        endpoint_slices,
        secrets,
        synced,
    };
    tokio::spawn(wait_synced(stores.clone()).then(move |ok| async move {
        if ok {
            // Ready (for /readyz) once the first scope has listed everything.
            health.set_ready();
            let _ = synced_tx.send(true);
        }
    }));
    // The controller's own store of LiveApplications, trimmed like the
    // children's (Controller::new would store them whole).
    let (apps, apps_writer) = reflector::store();
    let app_events = watcher(
        scoped::<LiveApplication>(&client, scope_ref),
        watcher::Config::default().page_size(LIST_PAGE_SIZE),
    )
    .default_backoff()
    .modify(trim::metadata::<LiveApplication>)
    .reflect(apps_writer)
    .applied_objects();
    let config = ControllerConfig::default().concurrency(shared.settings.concurrency);
    let context = Arc::new(Context {
        shared: shared.clone(),
        stores,
    });
    tracing::info!(
        namespace = scope_ref.unwrap_or("<all>"),
        check_secrets = secret_events.is_some(),
        "starting the LiveApplication controller"
    );
    let apps_store = apps.clone();
    let mut controller = Controller::for_stream(app_events, apps)
        .with_config(config)
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .owns_stream(config_map_events)
        .owns_stream(pvc_events)
        .owns_stream(service_account_events)
        .owns_stream(role_events)
        .owns_stream(role_binding_events)
        .owns_stream(pod_disruption_budget_events)
        // Pods belong to ReplicaSets, not to the LiveApplication: map them
        // by label. Their states feed the Degraded condition.
        .watches_stream(pod_events, |pod: Compact<Pod>| {
            let namespace = pod.namespace();
            pod.labels().get(LABEL_INSTANCE).map(|name| {
                ObjectRef::<LiveApplication>::new(name)
                    .within(namespace.as_deref().unwrap_or_default())
            })
        })
        // EndpointSlices belong to the Services: map them by label too.
        // Ready waits for the RTMP Service's (see `status`).
        .watches_stream(endpoint_slice_events, |slice: Compact<EndpointSlice>| {
            let namespace = slice.namespace();
            slice.labels().get(LABEL_INSTANCE).map(|name| {
                ObjectRef::<LiveApplication>::new(name)
                    .within(namespace.as_deref().unwrap_or_default())
            })
        });
    if let Some(events) = secret_events {
        // A key-token Secret created (or deleted) changes the status of
        // the LiveApplications that name it.
        controller = controller.watches_stream(events, move |secret| {
            apps_using_secret(&apps_store, &secret)
        });
    }
    controller
        .graceful_shutdown_on(cancel.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::trace!(%object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
    tracing::info!(
        namespace = scope_ref.unwrap_or("<all>"),
        "LiveApplication controller stopped"
    );
}

async fn reconcile(app: Arc<LiveApplication>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_app(&app, &ctx).await;
    tracing::debug!(
        namespace = app.namespace().unwrap_or_default(),
        name = %app.name_any(),
        elapsed = ?started.elapsed(),
        ok = result.is_ok(),
        "reconcile finished"
    );
    let shared = &ctx.shared;
    shared
        .metrics
        .reconciled(started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        if let Ok(mut failures) = shared.failures.lock() {
            failures.remove(&key(&app));
        }
    }
    result
}

fn key(app: &LiveApplication) -> (String, String) {
    (app.namespace().unwrap_or_default(), app.name_any())
}

/// Requeue with exponential backoff per LiveApplication: 1 s, 2 s, 4 s, …
/// up to 5 minutes, so a persistent error neither spins nor goes unnoticed.
fn error_policy(app: Arc<LiveApplication>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = match ctx.shared.failures.lock() {
        Ok(mut failures) => {
            let n = failures.entry(key(&app)).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let delay = Duration::from_secs(1u64 << failures.saturating_sub(1).min(9))
        .min(Duration::from_secs(300));
    tracing::warn!(
        namespace = app.namespace().unwrap_or_default(),
        name = %app.name_any(),
        error = %error,
        failures,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// The children as they are after this reconcile's writes.
#[derive(Default)]
struct Children {
    ingest: Option<Deployment>,
    http: Option<Deployment>,
    rtmp_service: Option<Service>,
    http_service: Option<Service>,
    pvc: Option<PersistentVolumeClaim>,
}

/// What applying changed, for Events.
#[derive(Default)]
struct Changes {
    created: Vec<String>,
    updated: Vec<String>,
    deleted: Vec<String>,
}

async fn reconcile_app(app: &LiveApplication, ctx: &Context) -> Result<Action, Error> {
    ctx.stores.ready().await?;
    if app.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    let shared = &ctx.shared;
    let namespace = app.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let names = Names::new(app.name_any());
    let resync = Action::requeue(shared.settings.resync_interval);

    let desired = match build::build(app, &shared.settings.build) {
        Ok(desired) => desired,
        Err(BuildError::Invalid(invalid)) => {
            let message = invalid.to_string();
            let none = Children::default();
            let observed = observe(app, &namespace, &names, &none, &[], Some(&message), None);
            if write_status(app, ctx, &observed).await?.is_some() {
                tracing::warn!(namespace, name = %names.app, error = %message, "invalid spec");
                event(
                    ctx,
                    app,
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    message,
                )
                .await;
            }
            // Nothing to retry: the next spec change triggers a reconcile.
            return Ok(Action::await_change());
        }
        Err(other) => return Err(other.into()),
    };

    let mut changes = Changes::default();
    let children = match apply_all(ctx, &desired, &mut changes).await {
        Ok(children) => children,
        Err(e) => {
            let message = e.to_string();
            let none = Children::default();
            let observed = observe(app, &namespace, &names, &none, &[], None, Some(&message));
            // The apply error is what matters; a failing status write is
            // only logged.
            if let Err(status_error) = write_status(app, ctx, &observed).await {
                tracing::warn!(namespace, name = %names.app, error = %status_error, "cannot record the apply error in status");
            }
            event(
                ctx,
                app,
                EventType::Warning,
                "ApplyFailed",
                "Apply",
                message,
            )
            .await;
            report_changes(ctx, app, changes).await;
            return Err(e);
        }
    };
    delete_obsolete(app, ctx, &desired, &mut changes).await?;
    report_changes(ctx, app, changes).await;

    let pods = ctx
        .stores
        .pods
        .state_filter(|pod| {
            pod.meta().namespace.as_deref() == Some(namespace.as_str())
                && pod.labels().get(LABEL_INSTANCE) == Some(&names.app)
        })
        .iter()
        .map(|pod| pod.decode())
        .collect::<Result<Vec<Pod>, _>>()
        .map_err(|source| Error::Decode {
            kind: "Pod".to_string(),
            source,
        })?;
    let rtmp_service = names.rtmp_service();
    let rtmp_slices = ctx
        .stores
        .endpoint_slices
        .state_filter(|slice| {
            slice.meta().namespace.as_deref() == Some(namespace.as_str())
                && slice.labels().get(SERVICE_NAME_LABEL) == Some(&rtmp_service)
        })
        .iter()
        .map(|slice| slice.decode())
        .collect::<Result<Vec<EndpointSlice>, _>>()
        .map_err(|source| Error::Decode {
            kind: "EndpointSlice".to_string(),
            source,
        })?;
    let mut observed = observe(app, &namespace, &names, &children, &pods, None, None);
    observed.rtmp_ready_endpoints = status::ready_endpoints(rtmp_slices.iter());
    observed.missing_secret = missing_secret(ctx, app, &namespace);
    let before = app.status.as_ref();
    if let Some(after) = write_status(app, ctx, &observed).await? {
        if let Some(secret) = observed.missing_secret {
            tracing::warn!(namespace, name = %names.app, secret, "the key-token Secret does not exist");
        }
        for (type_, event_type) in [
            (status::READY, EventType::Normal),
            (status::DEGRADED, EventType::Warning),
        ] {
            let Some(c) = status::newly_true(before, &after, type_) else {
                continue;
            };
            event(
                ctx,
                app,
                event_type,
                &c.reason,
                "Observe",
                c.message.clone(),
            )
            .await;
        }
    }
    Ok(resync)
}

/// The key-token Secret `app` names, if Secrets are checked and `namespace`
/// has none of that name.
fn missing_secret<'a>(ctx: &Context, app: &'a LiveApplication, namespace: &str) -> Option<&'a str> {
    let secrets = ctx.stores.secrets.as_ref()?;
    let name = render::key_token_secret(&app.spec)?;
    let key = ObjectRef::<PartialObjectMeta<Secret>>::new(name).within(namespace);
    secrets.get(&key).is_none().then_some(name)
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn observe<'a>(
    app: &'a LiveApplication,
    namespace: &'a str,
    names: &'a Names,
    children: &'a Children,
    pods: &'a [Pod],
    invalid: Option<&'a str>,
    apply_error: Option<&'a str>,
) -> Observed<'a> {
    let spec = &app.spec;
    Observed {
        generation: app.metadata.generation,
        namespace,
        names,
        spec,
        invalid,
        apply_error,
        missing_secret: None,
        ingest: children.ingest.as_ref(),
        http: children.http.as_ref(),
        expect_http_deployment: spec.http.mode == HttpMode::Deployment,
        rtmp_service: children.rtmp_service.as_ref(),
        http_service: children.http_service.as_ref(),
        pvc: children.pvc.as_ref(),
        expect_pvc: spec.storage.persistent_volume_claim.is_some(),
        pods: pods.iter().collect(),
        rtmp_ready_endpoints: 0,
    }
}

/// Writes the status if it differs from the current one; returns the new
/// status if it did.
async fn write_status(
    app: &LiveApplication,
    ctx: &Context,
    observed: &Observed<'_>,
) -> Result<Option<LiveApplicationStatus>, Error> {
    let current = app.status.as_ref();
    let new = status::compute(current, observed, &now());
    if current == Some(&new) {
        return Ok(None);
    }
    let name = &observed.names.app;
    let api: Api<LiveApplication> = Api::namespaced(ctx.shared.client.clone(), observed.namespace);
    let patch = serde_json::json!({
        "apiVersion": LiveApplication::api_version(&()),
        "kind": LiveApplication::kind(&()),
        "status": new,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Status {
        name: name.clone(),
        source,
    })?;
    ctx.shared.metrics.status_updated();
    Ok(Some(new))
}

async fn apply_all(
    ctx: &Context,
    desired: &Desired,
    changes: &mut Changes,
) -> Result<Children, Error> {
    let stores = &ctx.stores;
    apply(ctx, &stores.config_maps, &desired.config_map, changes).await?;
    // The ingest pods' identity before the pods that use it: a pod naming
    // a ServiceAccount that does not exist yet is refused.
    apply(
        ctx,
        &stores.service_accounts,
        &desired.service_account,
        changes,
    )
    .await?;
    apply(ctx, &stores.roles, &desired.role, changes).await?;
    apply(ctx, &stores.role_bindings, &desired.role_binding, changes).await?;
    let pvc = match &desired.pvc {
        Some(pvc) => Some(apply(ctx, &stores.pvcs, pvc, changes).await?),
        None => None,
    };
    let ingest = apply(
        ctx,
        &stores.deployments,
        &desired.ingest_deployment,
        changes,
    )
    .await?;
    let http = match &desired.http_deployment {
        Some(deployment) => Some(apply(ctx, &stores.deployments, deployment, changes).await?),
        None => None,
    };
    let rtmp_service = apply(ctx, &stores.services, &desired.rtmp_service, changes).await?;
    let http_service = apply(ctx, &stores.services, &desired.http_service, changes).await?;
    if let Some(budget) = &desired.pod_disruption_budget {
        apply(ctx, &stores.pod_disruption_budgets, budget, changes).await?;
    }
    Ok(Children {
        ingest: Some(ingest),
        http,
        rtmp_service: Some(rtmp_service),
        http_service: Some(http_service),
        pvc,
    })
}

/// Applies `desired` unless the stored copy already matches it; returns the
/// object as it now is.
async fn apply<K>(
    ctx: &Context,
    store: &Store<Compact<K>>,
    desired: &K,
    changes: &mut Changes,
) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let kind = K::kind(&());
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let observed = store.get(&ObjectRef::new(&name).within(&namespace));
    let want = serde_json::to_value(desired).map_err(|source| Error::Serialize {
        kind: kind.to_string(),
        source,
    })?;
    let decode_error = |source| Error::Decode {
        kind: kind.to_string(),
        source,
    };
    let have = observed
        .as_deref()
        .map(Compact::to_json)
        .transpose()
        .map_err(decode_error)?;
    if let Some(current) = have.filter(|have| !needs_apply(&want, Some(have))) {
        return serde_json::from_value(current).map_err(decode_error);
    }
    let api: Api<K> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
        .map_err(|source| Error::Apply {
            kind: kind.to_string(),
            name: name.clone(),
            source,
        })?;
    ctx.shared.metrics.applied(static_kind(&kind));
    let what = format!("{kind} {name}");
    tracing::info!(namespace, object = %what, created = observed.is_none(), "applied");
    if observed.is_some() {
        changes.updated.push(what);
    } else {
        changes.created.push(what);
    }
    Ok(applied)
}

/// Metric labels must be `'static`.
fn static_kind(kind: &str) -> &'static str {
    match kind {
        "Deployment" => "Deployment",
        "Service" => "Service",
        "ConfigMap" => "ConfigMap",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        "ServiceAccount" => "ServiceAccount",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        _ => "Other",
    }
}

async fn delete_obsolete(
    app: &LiveApplication,
    ctx: &Context,
    desired: &Desired,
    changes: &mut Changes,
) -> Result<(), Error> {
    let uid = app.uid().unwrap_or_default();
    let namespace = app.namespace().unwrap_or_default();
    for obsolete in &desired.obsolete {
        match obsolete.kind {
            ObsoleteKind::Deployment => {
                delete_if_controlled(
                    ctx,
                    &ctx.stores.deployments,
                    &namespace,
                    &obsolete.name,
                    &uid,
                    changes,
                )
                .await?
            }
            ObsoleteKind::PersistentVolumeClaim => {
                delete_if_controlled(
                    ctx,
                    &ctx.stores.pvcs,
                    &namespace,
                    &obsolete.name,
                    &uid,
                    changes,
                )
                .await?
            }
            ObsoleteKind::PodDisruptionBudget => {
                delete_if_controlled(
                    ctx,
                    &ctx.stores.pod_disruption_budgets,
                    &namespace,
                    &obsolete.name,
                    &uid,
                    changes,
                )
                .await?
            }
        }
    }
    Ok(())
}

/// Deletes `name` if it exists and this LiveApplication is its controller:
/// an object of the same name that someone else made is left alone.
async fn delete_if_controlled<K>(
    ctx: &Context,
    store: &Store<Compact<K>>,
    namespace: &str,
    name: &str,
    owner_uid: &str,
    changes: &mut Changes,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let Some(existing) = store.get(&ObjectRef::new(name).within(namespace)) else {
        return Ok(());
    };
    let controlled = existing
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == owner_uid);
    if !controlled || existing.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(ctx.shared.client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error::Delete {
                kind: kind.to_string(),
                name: name.to_string(),
                source,
            })
        }
    }
    ctx.shared.metrics.deleted(static_kind(&kind));
    tracing::info!(namespace, object = %format!("{kind} {name}"), "deleted, no longer needed");
    changes.deleted.push(format!("{kind} {name}"));
    Ok(())
}

async fn report_changes(ctx: &Context, app: &LiveApplication, changes: Changes) {
    for (reason, list) in [
        ("Created", changes.created),
        ("Updated", changes.updated),
        ("Deleted", changes.deleted),
    ] {
        if !list.is_empty() {
            let note = format!("{} {}", reason.to_lowercase(), list.join(", "));
            event(ctx, app, EventType::Normal, reason, "Apply", note).await;
        }
    }
}

/// Publishes an Event about `app`. Events are best effort: failing to
/// record one must not fail the reconcile.
async fn event(
    ctx: &Context,
    app: &LiveApplication,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    // The API server rejects notes over 1 kB.
    let note: String = note.chars().take(1000).collect();
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx
        .shared
        .recorder
        .publish(&event, &app.object_ref(&()))
        .await
    {
        tracing::warn!(name = %app.name_any(), reason, error = %e, "cannot publish an Event");
    }
}
