//! Names and labels of the objects a LiveApplication owns.
//!
//! Names are derived from the LiveApplication's name only, so the operator
//! finds its children again after a restart without any bookkeeping, and
//! users can guess them (`kubectl logs deploy/<name>`).

use std::collections::BTreeMap;

/// The field manager of every server-side apply, and `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "oxcast-operator";
/// Label selector of everything the operator creates; its watches use it so
/// they hold only the operator's own objects in memory.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=oxcast-operator";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";

/// Hash of the desired object, on every child: a cheap, exact test of
/// whether the operator's intent changed since it last applied the object.
pub const ANNOTATION_DESIRED_HASH: &str = "live.oxcast.dev/desired-hash";
/// Checksum of the config the ingest server reads (everything but the
/// `http` section), on the ingest pod template: a change there changes the
/// template, so the Deployment rolls the ingest pods.
pub const ANNOTATION_INGEST_CONFIG_CHECKSUM: &str = "live.oxcast.dev/ingest-config-checksum";
/// Checksum of the config the HTTP server reads (the `http` section), on the
/// pod template of the pods that run it: the HTTP Deployment's, or the
/// ingest pods' in sidecar mode (one pod, so an HTTP change rolls it too).
pub const ANNOTATION_HTTP_CONFIG_CHECKSUM: &str = "live.oxcast.dev/http-config-checksum";

/// Which pods a label set describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// RTMP ingest pods (plus the HTTP sidecar in sidecar mode).
    Ingest,
    /// Separate HTTP pods (http.mode deployment).
    Http,
    /// Objects that belong to the whole application (ConfigMap, volume).
    Application,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Http => "http",
            Self::Application => "application",
        }
    }
}

/// The children's names for one LiveApplication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub app: String,
}

impl Names {
    pub fn new(app: impl Into<String>) -> Self {
        Self { app: app.into() }
    }

    /// ConfigMap with the ingest server's config file.
    pub fn config_map(&self) -> String {
        format!("{}-config", self.app)
    }

    /// The ingest Deployment carries the application's own name: it is what
    /// users look for first.
    pub fn ingest_deployment(&self) -> String {
        self.app.clone()
    }

    /// The HTTP Deployment (http.mode deployment).
    pub fn http_deployment(&self) -> String {
        format!("{}-http", self.app)
    }

    pub fn rtmp_service(&self) -> String {
        format!("{}-rtmp", self.app)
    }

    pub fn http_service(&self) -> String {
        format!("{}-http", self.app)
    }

    /// The ingest pods' ServiceAccount, and the Role and RoleBinding that
    /// let it hold stream-ownership Leases (one name for all three).
    pub fn ingest_identity(&self) -> String {
        format!("{}-ingest", self.app)
    }

    /// The ingest pods' PodDisruptionBudget (spec.podDisruptionBudget).
    pub fn ingest_disruption_budget(&self) -> String {
        format!("{}-ingest", self.app)
    }

    /// The PersistentVolumeClaim the operator creates (storage.persistentVolumeClaim).
    pub fn pvc(&self) -> String {
        format!("{}-hls", self.app)
    }

    /// Labels that select one component's pods. Kept minimal because a
    /// Deployment's selector can never change.
    pub fn selector(&self, component: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_string(), "oxcast".to_string()),
            (LABEL_INSTANCE.to_string(), self.app.clone()),
            (LABEL_COMPONENT.to_string(), component.as_str().to_string()),
        ])
    }

    /// Labels on every object (and pod) of a component.
    pub fn labels(&self, component: Component) -> BTreeMap<String, String> {
        let mut labels = self.selector(component);
        labels.insert(LABEL_MANAGED_BY.to_string(), MANAGER.to_string());
        labels.insert(LABEL_PART_OF.to_string(), "oxcast".to_string());
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_have_distinct_predictable_names() {
        let n = Names::new("live");
        let names = [
            n.config_map(),
            n.ingest_deployment(),
            n.rtmp_service(),
            n.http_service(),
            n.pvc(),
        ];
        assert_eq!(
            names,
            ["live-config", "live", "live-rtmp", "live-http", "live-hls"]
        );
        assert_eq!(n.http_deployment(), "live-http");
        assert_eq!(n.ingest_identity(), "live-ingest");
    }

    #[test]
    fn the_managed_selector_matches_the_labels() {
        let labels = Names::new("x").labels(Component::Ingest);
        let (key, value) = MANAGED_SELECTOR.split_once('=').expect("key=value");
        assert_eq!(labels.get(key).map(String::as_str), Some(value));
    }
}
