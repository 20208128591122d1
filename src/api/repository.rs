//! Repository: one application's data, the workloads that use it, and where pushes go.

use super::conditions::conditions_schema;
use super::{LocalRef, Mode};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rediacc.io",
    version = "v1alpha1",
    kind = "Repository",
    namespaced,
    status = "RepositoryStatus",
    shortname = "repo",
    category = "push",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Mounted", type_ = "boolean", json_path = ".status.mounted"),
    printcolumn(name = "Last online", type_ = "date", json_path = ".status.lastOnlinePush.time"),
    printcolumn(name = "Last offline", type_ = "date", json_path = ".status.lastOfflinePush.time"),
    printcolumn(name = "Snapshots", type_ = "integer", json_path = ".status.snapshotCount"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("(has(self.volumes) && size(self.volumes) > 0) || has(self.volumeSelector)").message("name the PVCs: spec.volumes or spec.volumeSelector"))]
#[serde(rename_all = "camelCase")]
pub struct RepositorySpec {
    /// PVC names (in this namespace) that make up the repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub volumes: Vec<String>,
    /// Or: every PVC in this namespace matching this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_selector: Option<LabelSelector>,
    /// Deployments and StatefulSets to stop for offline pushes. When absent they are found
    /// from the pods that mount the volumes (through their owners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub workloads: Option<Vec<WorkloadRef>>,
    /// Where pushes go. Repositories with the same bucket and prefix share one store, and
    /// deduplicate against each other.
    pub storage: StorageSpec,
    /// How online pushes read the volumes.
    #[serde(default)]
    pub online: OnlineSpec,
    /// Commands run in an application container around the snapshot of an online push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
    /// Globs of paths to skip (relative to each volume, or by name). Sockets, FIFOs and device
    /// nodes are always skipped and counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub exclude: Vec<String>,
    /// Resources of the worker pod (defaults from the operator's flags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_resources: Option<ResourceRequirements>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// S3 endpoint URL (MinIO, SeaweedFS, Ceph, ...); AWS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub endpoint: Option<String>,
    /// Bucket name (it must exist).
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing; by default on when an endpoint is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (optionally
    /// `AWS_SESSION_TOKEN`). Absent: the worker's own identity (IRSA, instance role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalRef>,
    /// How the store is encrypted. New stores are encrypted: name a Secret here, or say
    /// `mode: None` to store plaintext. Absent: an existing unencrypted store goes on as it is,
    /// and pushes to a new store fail (`EncryptionNotConfigured`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
    /// S3 Object Lock for a store the first push creates: every object is written with this
    /// retention, which scheduled maintenance extends for what live snapshots use; nobody
    /// holding the worker's credentials can delete or overwrite a snapshot within it. The
    /// bucket must be created with Object Lock enabled. An existing store keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLockSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectLockSpec {
    #[serde(default)]
    pub mode: ObjectLockMode,
    #[schemars(range(min = 1, max = 36500))]
    pub retention_days: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum ObjectLockMode {
    /// Nobody, not even the bucket's owner, can shorten the retention or delete a version.
    #[default]
    Compliance,
    /// Identities allowed to bypass governance retention can.
    Governance,
}

/// The store's encryption: AES-256-GCM with a master key that the Secret's passphrase (or raw
/// key) opens. Repositories that share a bucket and prefix share one store, one master key
/// and its deduplication: give them Secrets that open it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("self.mode == 'None' ? !has(self.secretRef) : has(self.secretRef)").message("encryption: name a secretRef (mode Encrypted), or set mode None without one"))]
#[serde(rename_all = "camelCase")]
pub struct EncryptionSpec {
    #[serde(default)]
    pub mode: EncryptionMode,
    /// Secret with `PUSH_OPERATOR_PASSWORD` (a passphrase) or `PUSH_OPERATOR_KEY` (a raw key:
    /// 64 hex digits or base64 of 32 bytes). To rotate, put the new value there and the old one
    /// under `PUSH_OPERATOR_PREVIOUS_PASSWORD` (or `_KEY`): the next push replaces the old key
    /// slot by a new one; then remove the old value. Passed to workers only as environment
    /// from the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum EncryptionMode {
    /// Every object sealed with AES-256-GCM; keyed chunk ids (the default).
    #[default]
    Encrypted,
    /// Plaintext: whoever can read the bucket reads the data.
    None,
}

impl StorageSpec {
    /// The Secret holding the store's key, if any.
    pub fn encryption_secret(&self) -> Option<&str> {
        self.encryption.as_ref().and_then(|e| e.secret_ref.as_ref()).map(|r| r.name.as_str())
    }
}

impl StorageSpec {
    /// The store address the worker gets: `s3://bucket/prefix`.
    pub fn store_url(&self) -> String {
        match self.prefix.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
            Some(p) => format!("s3://{}/{p}", self.bucket),
            None => format!("s3://{}", self.bucket),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!(has(self.volumeSnapshotClassName) && has(self.live) && self.live)").message("online: set volumeSnapshotClassName or live, not both"))]
#[serde(rename_all = "camelCase")]
pub struct OnlineSpec {
    /// CSI VolumeSnapshotClass: online pushes copy a snapshot clone (crash-consistent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_snapshot_class_name: Option<String>,
    /// Read the live volume (no snapshot class): the snapshot is marked inconsistent, and the
    /// job gets a ConsistencyWarning. This is also what happens when no class is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// Before the snapshot (flush, freeze).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre: Vec<Hook>,
    /// After the snapshot is taken (thaw), whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post: Vec<Hook>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// Pods to run in (label selector); the pods that mount the volumes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Container to run in; the pod's first when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    #[serde(default = "default_hook_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i64,
    /// Fail the push when the hook fails (default), or go on.
    #[serde(default)]
    pub on_error: HookErrorPolicy,
}

fn default_hook_timeout() -> i64 {
    30
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum HookErrorPolicy {
    #[default]
    Fail,
    Continue,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// PVCs the repository resolves to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Workloads an offline push stops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadRef>,
    /// Are the services running (a running pod mounts a volume)?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_online_push: Option<PushRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offline_push: Option<PushRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<i64>,
    /// Bytes of the volumes as of the last push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<i64>,
    /// Bytes the pushes of this repository added to the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_ratio: Option<f64>,
    /// The last scheduled restore test (written by the RestoreJob controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore_test: Option<RestoreTestRecord>,
}

/// A finished restore test.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTestRecord {
    pub time: Time,
    pub job: String,
    /// The PushPolicy's test.
    pub test: String,
    pub result: JobResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The snapshots restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// Admission to completion: the recovery time this test measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
}

/// How a finished PushJob ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum JobResult {
    Succeeded,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushRecord {
    pub time: Time,
    pub job: String,
    pub mode: Mode,
    pub result: JobResult,
    /// Snapshot ids, one per volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
}
