//! RestoreJob: one restore of a Repository's volumes, into new PVCs or in place (offline, with
//! an undo snapshot taken first).

use super::conditions::conditions_schema;
use super::pushjob::{CreatedObject, Failure, ReplicaRecord};
use super::{Consistency, LocalRef, Mode, Priority};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rediacc.io",
    version = "v1alpha1",
    kind = "RestoreJob",
    namespaced,
    status = "RestoreJobStatus",
    shortname = "rj",
    category = "push",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Repository", type_ = "string", json_path = ".spec.repositoryRef.name"),
    printcolumn(name = "Target", type_ = "string", json_path = ".status.target"),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.volumes[0].snapshot"),
    printcolumn(name = "Consistency", type_ = "string", json_path = ".status.consistency"),
    printcolumn(name = "Undo", type_ = "string", json_path = ".status.volumes[0].safetySnapshot", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.repositoryRef == oldSelf.repositoryRef && self.target == oldSelf.target && has(self.snapshot) == has(oldSelf.snapshot) && (!has(self.snapshot) || self.snapshot == oldSelf.snapshot)").message("repositoryRef, snapshot and target cannot change: create a new RestoreJob"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreJobSpec {
    /// The Repository whose volumes are restored (same namespace). Its storage is where the
    /// snapshots are looked up, in the store itself: a new cluster restores from the bucket.
    pub repository_ref: LocalRef,
    /// Which snapshot of each volume; the latest of any mode when empty.
    #[serde(default)]
    pub snapshot: SnapshotSelector,
    /// Where the data goes.
    pub target: RestoreTarget,
    /// Restore only these of the Repository's volumes (all of them when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub volumes: Vec<String>,
    /// Queue priority, shared with PushJobs: one running job per Repository.
    #[serde(default)]
    pub priority: Priority,
    /// Seconds from creation until the job fails with DeadlineExceeded. An in-place restore
    /// that runs out of time is undone before the workloads resume. Default by priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub deadline_seconds: Option<i64>,
    /// Why this restore was made (recorded in the store's audit trail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// Paths removed after the data is written: files a stopped service would trip over, such as
    /// a PostgreSQL `postmaster.pid`, sockets, `*.lock`. Globs, matched against paths relative
    /// to the volume and against bare names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<CleanupSpec>,
    /// A check of the restored data after the restore worker's own (which re-hashes every
    /// file): a pod of your image with the restored volumes mounted; success by exit code. A
    /// failing check fails the job (in place: the undo runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<UserCheck>,
    /// Delete the job this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// A pod that checks restored data, e.g. PostgreSQL started on the restored volume and
/// `pg_amcheck` run against it. The volumes are mounted at `/volumes/<volume>` (and
/// `PUSH_OPERATOR_RESTORED=/volumes`); it gets no store credentials and no API token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserCheck {
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The check fails when it runs longer.
    #[serde(default = "default_check_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i64,
}

fn default_check_timeout() -> i64 {
    600
}

/// What the user's check said.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct CheckOutcome {
    pub ok: bool,
    pub message: String,
}

/// Which snapshot to restore, per volume (each PVC has its own history).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(validation = Rule::new("(has(self.ids) ? 1 : 0) + (has(self.latest) ? 1 : 0) + (has(self.asOf) ? 1 : 0) <= 1").message("give one of ids, latest or asOf"))]
#[x_kube(validation = Rule::new("!has(self.mode) || !has(self.ids)").message("mode selects among snapshots: it does not go with ids"))]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSelector {
    /// Snapshot ids (or unique prefixes), one per volume: each snapshot's source names its volume.
    /// This is how a safety snapshot is restored to undo an in-place restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub ids: Option<Vec<String>>,
    /// The newest snapshot of each volume (of `mode`, when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Latest>,
    /// The newest snapshot of each volume taken at or before this time (of `mode`, when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<Time>,
    /// Only snapshots of this push mode (`Offline` for consistent ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The namespace the snapshots were pushed from, when it is not this one (a restore into a
    /// new namespace or cluster: the snapshots' sources are `pvc/<namespace>/<pvc>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub from_namespace: Option<String>,
}

/// Shorthands for the newest snapshot.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Latest {
    /// Of any mode.
    Any,
    /// Of an offline push: consistent.
    Offline,
    /// Of an online push.
    Online,
}

impl SnapshotSelector {
    /// The mode filter this selector means.
    pub fn mode_filter(&self) -> Option<Mode> {
        match self.latest {
            Some(Latest::Offline) => Some(Mode::Offline),
            Some(Latest::Online) => Some(Mode::Online),
            _ => self.mode,
        }
    }
}

/// Where restored data goes: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.newVolumes) != has(self.inPlace)").message("give exactly one of newVolumes or inPlace"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreTarget {
    /// Into new PVCs, created by the job (never over an existing PVC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_volumes: Option<NewVolumes>,
    /// Into the Repository's own PVCs, offline: the workloads are scaled to zero, the volumes'
    /// current state is pushed first (the undo snapshot), the data is replaced with mirror
    /// semantics and checked, and the workloads come back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlace>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InPlace {}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewVolumes {
    /// Name of each new PVC; `{volume}` is the source PVC's name, `{job}` this job's.
    /// Default `{volume}-{job}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub name_template: Option<String>,
    /// Storage class of the new PVCs (default: the source PVC's, else the cluster default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Size of each new PVC (default: the source PVC's request; never less than the snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Labels for the new PVCs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Delete the new PVCs when the job ends, whatever happens (scratch volumes of restore tests).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_after: bool,
}

/// Post-restore cleanup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupSpec {
    #[schemars(length(max = 64))]
    pub paths: Vec<String>,
    /// When to apply it.
    #[serde(default)]
    pub when: CleanupWhen,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema, clap::ValueEnum)]
pub enum CleanupWhen {
    /// Only to snapshots that are not `consistent` (a stopped service left no stale files).
    #[default]
    NotConsistent,
    Always,
}

/// The kind of target, as shown in status and metrics.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TargetKind {
    NewVolumes,
    InPlace,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::NewVolumes => "new-volumes",
            TargetKind::InPlace => "in-place",
        }
    }
}

impl RestoreTarget {
    pub fn kind(&self) -> TargetKind {
        if self.in_place.is_some() { TargetKind::InPlace } else { TargetKind::NewVolumes }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, schemars::JsonSchema)]
pub enum RestorePhase {
    #[default]
    Pending,
    Queued,
    /// A worker looks the snapshots up in the store; their ids are pinned in status.
    Resolving,
    /// New volumes: creating the target PVCs.
    Provisioning,
    /// In place: recording replica counts and scaling the workloads to zero.
    Quiescing,
    /// In place: waiting until no pod mounts the volumes and no VolumeAttachment holds them.
    WaitingForDetach,
    /// In place: pushing the volumes' current state, the undo snapshot.
    SafetyPush,
    /// A worker writes the snapshots into the targets and checks them.
    Restoring,
    /// The user's check pod runs against the restored volumes.
    Checking,
    /// In place, after a failure: the undo snapshot is written back.
    Undoing,
    /// In place: scaling the workloads back to their recorded replicas.
    Resuming,
    /// Deleting the worker pods (and, on failure, the new PVCs) this job created.
    CleaningUp,
    Succeeded,
    Failed,
}

impl RestorePhase {
    pub fn is_terminal(&self) -> bool {
        matches!(self, RestorePhase::Succeeded | RestorePhase::Failed)
    }
    pub fn is_running(&self) -> bool {
        !matches!(self, RestorePhase::Pending | RestorePhase::Queued) && !self.is_terminal()
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            RestorePhase::Pending => "Pending",
            RestorePhase::Queued => "Queued",
            RestorePhase::Resolving => "Resolving",
            RestorePhase::Provisioning => "Provisioning",
            RestorePhase::Quiescing => "Quiescing",
            RestorePhase::WaitingForDetach => "WaitingForDetach",
            RestorePhase::SafetyPush => "SafetyPush",
            RestorePhase::Restoring => "Restoring",
            RestorePhase::Checking => "Checking",
            RestorePhase::Undoing => "Undoing",
            RestorePhase::Resuming => "Resuming",
            RestorePhase::CleaningUp => "CleaningUp",
            RestorePhase::Succeeded => "Succeeded",
            RestorePhase::Failed => "Failed",
        }
    }
}

/// One volume of a restore: what was chosen, where it goes, what happened.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreVolume {
    /// The Repository's PVC the snapshot is of.
    pub volume: String,
    /// The PVC written to (the volume itself in place, a new PVC otherwise).
    pub claim: String,
    /// The snapshot id, pinned once resolved: a retry never drifts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Bytes of the snapshot's files (new PVCs are at least this large).
    #[serde(default)]
    pub bytes: i64,
    /// In place: the snapshot of the volume's state before the restore (restore it to undo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_snapshot: Option<String>,
    /// Files the push saw change while it read them (possibly torn), first ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_during_read: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStats {
    pub files: i64,
    pub bytes_total: i64,
    pub bytes_written: i64,
    /// Entries removed from in-place targets because the snapshot does not have them.
    #[serde(default)]
    pub removed: i64,
    /// Files whose content the check after the restore re-hashed and found equal.
    #[serde(default)]
    pub files_checked: i64,
    /// Seconds the restore worker took (data written and checked).
    pub duration_seconds: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_time: Option<Time>,
    /// The least consistency among the restored snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// The newest offline (consistent) snapshots, named when a less consistent one is restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consistent_alternatives: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<RestoreVolume>,
    /// In place: the replica counts to restore, recorded before any scaling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaRecord>,
    /// Objects this job created; cleanup deletes exactly these (new PVCs only on failure).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<CreatedObject>,
    /// The current step's worker pod, and when it was first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_start_time: Option<Time>,
    /// Set once the restore worker has been started: from then on an in-place target may be
    /// partly written, and a failure runs the undo.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writing: bool,
    /// Undo attempts made after a failed in-place restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_attempts: Option<i32>,
    /// True once the undo snapshot was written back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undone: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<RestoreStats>,
    /// The user's check, once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckOutcome>,
    /// Paths the post-restore cleanup removed (volume/path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleaned: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl RestoreJob {
    pub fn phase(&self) -> RestorePhase {
        self.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
    }
}
