//! `push-operator controller`: the Repository and PushJob controllers, leader election, and the
//! metrics/health endpoints.

pub mod lease;
pub mod offline;
pub mod policy;
pub mod push_job;
pub mod queue;
pub mod repository;
pub mod restore_job;

use crate::metrics::Metrics;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use push_job::build::WorkerConfig;
use push_job::state::Settings;
use std::collections::HashSet;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{0} is not namespaced")]
    NotNamespaced(String),
    /// Not a failure: a deleted job's unwind has done what it could for now and wants to be
    /// called again after `after` (the finalizer stays until the unwind is complete).
    #[error("cleanup of {job} still in progress")]
    CleanupPending { job: String, after: std::time::Duration },
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    /// A worker pod that Pod Security (or another admission) would not or did not admit; the
    /// job fails with reason WorkerNotAdmitted and this message.
    #[error("worker not admitted: {0}")]
    WorkerNotAdmitted(String),
}

impl Error {
    /// The refusal this error is, when retrying cannot help: an admission that will not admit
    /// the worker, or a request RBAC forbids (HTTP 403).
    pub fn refusal(&self) -> Option<push_job::state::Refusal> {
        use push_job::state::Refusal;
        match self {
            Error::WorkerNotAdmitted(m) => Some(Refusal { reason: "WorkerNotAdmitted", message: m.clone() }),
            Error::Kube(kube::Error::Api(e)) if e.code == 403 => Some(Refusal {
                reason: "Forbidden",
                message: format!(
                    "the API server refused a request of the operator (HTTP 403): {}; grant it to the operator's \
                     ServiceAccount (the chart's ClusterRole lists every request the operator makes)",
                    e.message
                ),
            }),
            _ => None,
        }
    }

    /// A short label for the errors metric.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(e)) => format!("api_{}", e.code),
            Error::Kube(_) => "kube".into(),
            Error::Finalizer(_) => "finalizer".into(),
            Error::NotNamespaced(_) => "not_namespaced".into(),
            Error::CleanupPending { .. } => "cleanup_pending".into(),
            Error::Json(_) => "json".into(),
            Error::WorkerNotAdmitted(_) => "worker_not_admitted".into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A finalizer's cleanup that made one step and must be called again: after the step's
    /// requeue, between 200 ms and 2 s.
    pub fn cleanup_pending(job: String, requeue: Option<std::time::Duration>) -> Error {
        use std::time::Duration;
        let after = requeue.unwrap_or(Duration::from_secs(1)).clamp(Duration::from_millis(200), Duration::from_secs(2));
        Error::CleanupPending { job, after }
    }
}

/// A create, patch or delete of an operator-made change whose object is already gone (404) or
/// already there (409): nothing left to do.
pub(crate) fn ok_absent(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        other => other,
    }
}

/// A job's reconcile under its finalizer: `reconcile` gets Apply while the job lives and Cleanup
/// once it is deleted. The finalizer goes only when Cleanup returns Ok; a Cleanup that returns
/// [`Error::CleanupPending`] is called again after its delay (a requeue, not an error).
pub async fn finalized<K, Fut>(
    api: &Api<K>,
    name: &str,
    obj: std::sync::Arc<K>,
    reconcile: impl FnOnce(kube::runtime::finalizer::Event<K>) -> Fut,
) -> Result<kube::runtime::controller::Action>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
    Fut: std::future::Future<Output = Result<kube::runtime::controller::Action>>,
{
    use kube::runtime::controller::Action as Requeue;
    use kube::runtime::finalizer::{Error as FinalizerError, finalizer};
    finalizer(api, name, obj, reconcile).await.or_else(|e| match e {
        FinalizerError::CleanupFailed(Error::CleanupPending { after, .. }) => Ok(Requeue::requeue(after)),
        // The job was already gone when the finalizer was to be removed: nothing left to do.
        FinalizerError::RemoveFinalizer(kube::Error::Api(ae)) if ae.code == 404 => Ok(Requeue::await_change()),
        e => Err(Error::Finalizer(Box::new(e))),
    })
}

/// Operator settings from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_concurrent_pushes: usize,
    pub settings: Settings,
    pub worker: WorkerConfig,
    /// Watch one namespace only (all when `None`).
    pub namespace: Option<String>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Jobs this process admitted whose status may not show it yet.
    pub admitted: Mutex<HashSet<String>>,
    /// The PushJob cache (every job, for the queue).
    pub jobs: kube::runtime::reflector::Store<crate::api::PushJob>,
    /// The RestoreJob cache (they share the queue).
    pub restores: kube::runtime::reflector::Store<crate::api::RestoreJob>,
    /// The status each PushPolicy (by uid) was last given by this process.
    pub policy_status: Mutex<std::collections::HashMap<String, crate::api::PushPolicyStatus>>,
    /// Actions refused for good (by job key), for the job's next reconcile to fail it.
    pub refusals: Mutex<std::collections::HashMap<String, push_job::state::Refusal>>,
    /// Counts the push slots freed (a job finished or was deleted): each change wakes the waiting
    /// jobs, which would otherwise look again only at their next requeue.
    pub slots_freed: tokio::sync::watch::Sender<u64>,
    /// Jobs this process saw finish or go whose cache entry may not show it yet (their slot is
    /// free even so).
    pub finished: Mutex<HashSet<String>>,
}

impl Context {
    pub fn with_metrics(
        client: Client,
        config: Config,
        jobs: kube::runtime::reflector::Store<crate::api::PushJob>,
        metrics: Metrics,
    ) -> Context {
        let reporter = Reporter { controller: "push-operator".into(), instance: std::env::var("POD_NAME").ok() };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            admitted: Mutex::new(HashSet::new()),
            jobs,
            restores: kube::runtime::reflector::store().0,
            policy_status: Mutex::new(Default::default()),
            refusals: Mutex::new(Default::default()),
            slots_freed: tokio::sync::watch::Sender::new(0),
            finished: Mutex::new(HashSet::new()),
        }
    }

    /// Job `key` (its queue key) finished or went: the queue may admit the next one now.
    pub async fn slot_freed(&self, key: String) {
        self.finished.lock().await.insert(key);
        self.slots_freed.send_modify(|n| *n += 1);
    }
}

impl Context {
    /// The RestoreJob cache the queue reads (empty until given).
    pub fn with_restores(mut self, restores: kube::runtime::reflector::Store<crate::api::RestoreJob>) -> Context {
        self.restores = restores;
        self
    }
}

/// Who writes which status: each controller applies its own fields with server-side apply under
/// its own field manager, so a field it stops sending is removed, and a field another manager
/// owns is never touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusManager {
    /// PushJob status; on a Repository, the push records (`lastOnlinePush`, `snapshotCount`, ...).
    PushJob,
    /// The hook outcomes (`preHook`, `postHook`) of a PushJob, written right after the hooks ran.
    Hooks,
    /// Repository status but the push records.
    Repository,
    /// PushPolicy status.
    PushPolicy,
    /// RestoreJob status; on a Repository, the restore records.
    RestoreJob,
}

impl StatusManager {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusManager::PushJob => "push-operator-pushjob",
            StatusManager::Hooks => "push-operator-hooks",
            StatusManager::Repository => "push-operator-repository",
            StatusManager::PushPolicy => "push-operator-pushpolicy",
            StatusManager::RestoreJob => "push-operator-restorejob",
        }
    }
}

/// Server-side apply of `status` (a serialized status object: fields left out are given up) to
/// object `name`, as `manager`.
pub async fn apply_status<K>(api: &Api<K>, name: &str, manager: StatusManager, status: serde_json::Value) -> Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name},
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(manager.as_str()).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

/// A finished job (`done` is its completion time) is deleted once `ttl` seconds have passed.
pub async fn expire<K>(
    api: &Api<K>,
    name: &str,
    ttl: Option<i64>,
    done: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Result<kube::runtime::controller::Action>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use kube::runtime::controller::Action as Requeue;
    let (Some(ttl), Some(done)) = (ttl, done) else { return Ok(Requeue::await_change()) };
    let expires = crate::api::chrono_of(&done.0) + chrono::Duration::seconds(ttl);
    let now = chrono::Utc::now();
    if now < expires {
        return Ok(Requeue::requeue((expires - now).to_std().unwrap_or(std::time::Duration::from_secs(1))));
    }
    match api.delete(name, &kube::api::DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Requeue::await_change())
}

/// The API server rejects an Event whose note is over 1024 bytes (not characters).
const EVENT_NOTE_MAX: usize = 1024;

/// Publishes an Event about `regarding` (a failure to publish is logged, never fatal).
pub async fn publish_event(
    ctx: &Context,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    action: &str,
    warning: bool,
    reason: &str,
    message: &str,
) {
    use kube::runtime::events::{Event, EventType};
    let ev = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.into(),
        note: Some(crate::prefix_within(message, EVENT_NOTE_MAX).to_string()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, regarding).await {
        tracing::warn!(error = %e, "cannot publish event");
    }
}

pub fn snapshot_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

pub fn volume_attachment_api(client: &Client) -> Api<k8s_openapi::api::storage::v1::VolumeAttachment> {
    Api::all(client.clone())
}

pub fn snapshots_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &snapshot_resource())
}

pub mod run;
