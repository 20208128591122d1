//! PushJob: one push, created by a policy, by hand, or by a Helm/Argo CD/Flux pre-upgrade hook.

use super::conditions::conditions_schema;
use super::repository::WorkloadKind;
use super::{Consistency, LocalRef, Mode, Priority};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rediacc.io",
    version = "v1alpha1",
    kind = "PushJob",
    namespaced,
    status = "PushJobStatus",
    shortname = "pj",
    category = "push",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Priority", type_ = "string", json_path = ".spec.priority"),
    printcolumn(name = "Repository", type_ = "string", json_path = ".spec.repositoryRef.name"),
    printcolumn(name = "Consistency", type_ = "string", json_path = ".status.consistency", priority = 1),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.snapshots[0].snapshot"),
    printcolumn(name = "Queue", type_ = "integer", json_path = ".status.queuePosition", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.repositoryRef.name == oldSelf.repositoryRef.name && self.mode == oldSelf.mode").message("repositoryRef and mode cannot change: create a new PushJob"))]
#[serde(rename_all = "camelCase")]
pub struct PushJobSpec {
    /// The Repository to push (same namespace).
    pub repository_ref: LocalRef,
    pub mode: Mode,
    /// Queue priority: P1 (emergency, 33-second deadline by default) to P5.
    #[serde(default)]
    pub priority: Priority,
    /// Seconds from creation until the job fails with DeadlineExceeded (cleanup still runs).
    /// Default by priority (P1: 33).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub deadline_seconds: Option<i64>,
    /// Why this push was made (audit trail; recorded in the snapshot tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// Delete the job this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// After a successful push, forget the snapshots of this Repository that these rules do
    /// not keep (set by the PushPolicy that creates the job; restic's `forget` rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<crate::api::policy::RetentionSpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, schemars::JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Queued,
    /// Offline: recording replica counts and scaling the workloads to zero.
    Quiescing,
    /// Offline: waiting until no pod mounts the volumes and no VolumeAttachment holds them.
    WaitingForDetach,
    /// Online: running the pre hooks.
    Hooks,
    /// Online: creating VolumeSnapshots and waiting until they are ready.
    Snapshotting,
    /// Online: creating PVCs cloned from the snapshots.
    Cloning,
    /// The worker pod copies the volumes to the store.
    Pushing,
    /// Offline: scaling the workloads back to their recorded replicas.
    Resuming,
    /// Deleting the worker pod, clones and snapshots this job created.
    CleaningUp,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
    /// Admitted and not finished: counts against the concurrency limits.
    pub fn is_running(&self) -> bool {
        !matches!(self, Phase::Pending | Phase::Queued | Phase::Succeeded | Phase::Failed)
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Queued => "Queued",
            Phase::Quiescing => "Quiescing",
            Phase::WaitingForDetach => "WaitingForDetach",
            Phase::Hooks => "Hooks",
            Phase::Snapshotting => "Snapshotting",
            Phase::Cloning => "Cloning",
            Phase::Pushing => "Pushing",
            Phase::Resuming => "Resuming",
            Phase::CleaningUp => "CleaningUp",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// A workload's replica count before the push scaled it down.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct ReplicaRecord {
    pub kind: WorkloadKind,
    pub name: String,
    pub replicas: i32,
}

/// The kinds of object a push creates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum CreatedKind {
    /// The worker pod.
    Pod,
    /// A clone of a VolumeSnapshot (online pushes with a snapshot class).
    PersistentVolumeClaim,
    /// A CSI VolumeSnapshot of a volume.
    VolumeSnapshot,
}

/// An object this job created (and so may delete).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct CreatedObject {
    pub kind: CreatedKind,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeResult {
    /// The PVC.
    pub volume: String,
    /// The snapshot id in the store.
    pub snapshot: String,
    #[serde(default)]
    pub files: i64,
    #[serde(default)]
    pub bytes_total: i64,
    #[serde(default)]
    pub bytes_new: i64,
    /// What this volume's snapshot promises: less than the job's when the push saw files change
    /// while it read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// Files that changed while they were read (possibly torn), the first ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_during_read: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStats {
    pub files: i64,
    pub bytes_total: i64,
    pub bytes_read: i64,
    pub bytes_new: i64,
    pub bytes_uploaded: i64,
    pub chunks_new: i64,
    pub chunks_reused: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_ratio: Option<f64>,
    pub duration_seconds: f64,
    /// Entries the worker could not read.
    #[serde(default)]
    pub errors: i64,
    /// Snapshots the job's retention forgot after the push.
    #[serde(default)]
    pub snapshots_forgotten: i64,
    /// Bytes of packs in the store after the push, as the worker saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_bytes: Option<i64>,
}

/// What the hooks of one stage did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct HookOutcome {
    /// All hooks succeeded, or the failing ones have `onError: Continue`.
    pub ok: bool,
    pub message: String,
}

/// Why a job is failing, recorded as soon as it is known, while cleanup still runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Place in the queue (1 = next) while Queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// When the job was admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// When the current phase began (for per-phase timeouts and alerts on stuck jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// The push saw files change while it read them: the consistency above was lowered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub torn: bool,
    /// The PVCs being pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Offline: the replica counts to restore, recorded before any scaling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaRecord>,
    /// Objects this job created; cleanup deletes exactly these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<CreatedObject>,
    /// When the worker pod was first seen (a recorded worker never seen was not created yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_start_time: Option<Time>,
    /// Live reads: the node of the pod that mounts the volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<VolumeResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<JobStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Online: the pre hooks' outcome (they ran before the snapshot or live read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_hook: Option<HookOutcome>,
    /// Online: the post hooks' outcome (they run after the snapshot, and after a failure once
    /// the pre hooks ran, so a freeze is always thawed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_hook: Option<HookOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl PushJob {
    pub fn phase(&self) -> Phase {
        self.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
    }
}
