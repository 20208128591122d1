//! The PushJob state machine: a pure function from (job, observed world, now) to the next
//! status and the actions that move the world towards it. No I/O: the apply layer observes the
//! cluster, calls [`next`], performs the actions in order and writes the status.
//!
//! Safety rules this module enforces (and its tests check):
//! - replica counts are written to the job status *before* any workload is touched, and to an
//!   annotation on the workload before it is scaled;
//! - once a job fails (error, deadline, deletion), it unwinds: the worker is stopped, workloads
//!   are scaled back to the recorded counts, then the objects the job created are deleted;
//! - unwinding has no deadline: it runs until every workload is back.

use crate::api::conditions::{self, set_condition};
use crate::api::*;
use crate::controller::offline::{self, Detach, Gate, Quiesce, Standing, WorkloadAction};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::Duration;

/// The world as the apply layer saw it for one job.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub now: DateTime<Utc>,
    /// The Repository, when it exists.
    pub repository: Option<RepositorySpec>,
    /// PVCs of the repository that exist / that are named but missing.
    pub volumes: Vec<String>,
    pub missing_volumes: Vec<String>,
    /// Offline: the workloads to stop, with their current spec replicas and annotation.
    pub workloads: Vec<WorkloadObs>,
    /// Pods mounting the volumes that no Deployment/StatefulSet owns (cannot be brought back).
    pub bare_pods: Vec<String>,
    /// Pods other than our worker that mount the volumes and are not gone yet.
    pub pods_mounting: Vec<String>,
    /// VolumeAttachments that still hold the volumes' PVs.
    pub attachments: Vec<String>,
    /// Node of a running pod that mounts the volumes (live reads run there).
    pub mount_node: Option<String>,
    /// VolumeSnapshots labelled with this job.
    pub snapshots: Vec<SnapshotObs>,
    /// Clone PVCs labelled with this job.
    pub clones: Vec<String>,
    /// The worker pod, when it exists.
    pub worker: Option<WorkerObs>,
    /// An action of the previous pass that the API server refused for good.
    pub refused: Option<Refusal>,
    /// The queue's answer: may this job start?
    pub admitted: bool,
    pub queue_position: Option<i32>,
    /// The job is being deleted: it unwinds as after a failure.
    pub deleted: bool,
}

/// An action the API server refused and will refuse again: retrying cannot help, the job fails.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `WorkerNotAdmitted` (Pod Security or another admission) or `Forbidden` (RBAC).
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadObs {
    pub workload: WorkloadRef,
    /// `spec.replicas`; `None` when the workload no longer exists.
    pub replicas: Option<i32>,
    /// Our annotation on it, when present.
    pub annotation: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotObs {
    pub name: String,
    pub volume: String,
    pub ready: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WorkerObs {
    Pending,
    Running,
    Succeeded { message: String },
    Failed { message: String, exit_code: Option<i32>, oom_killed: bool },
}

/// Something to do to the cluster. Every action is idempotent.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Annotate, scale or un-annotate a workload (the offline steps both jobs share).
    Workload(WorkloadAction),
    CreateSnapshot {
        name: String,
        volume: String,
        class: String,
    },
    CreateClone {
        name: String,
        volume: String,
        snapshot: String,
    },
    /// Create the worker pod for these (volume name, claim name) pairs.
    CreateWorker {
        name: String,
        claims: Vec<(String, String)>,
        node: Option<String>,
    },
    Delete(CreatedObject),
    /// Run the Repository's hooks of this stage and record the outcome in the status.
    RunHooks(HookStage),
}

impl From<WorkloadAction> for Action {
    fn from(a: WorkloadAction) -> Action {
        Action::Workload(a)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookStage {
    Pre,
    Post,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: PushJobStatus,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    /// Look again after this long (the watches wake us earlier on changes).
    pub requeue: Option<Duration>,
}

/// Operator settings the state machine needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Default deadline per priority (index 0 = P1); `None` = no deadline.
    pub default_deadlines: [Option<Duration>; 5],
    /// Longest wait for pods and attachments to go away before an offline push gives up.
    pub detach_timeout: Duration,
    /// Longest wait for VolumeSnapshots to become ready.
    pub snapshot_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_deadlines: [
                Some(Duration::from_secs(33)),
                Some(Duration::from_secs(6 * 3600)),
                Some(Duration::from_secs(6 * 3600)),
                Some(Duration::from_secs(6 * 3600)),
                Some(Duration::from_secs(6 * 3600)),
            ],
            detach_timeout: Duration::from_secs(600),
            snapshot_timeout: Duration::from_secs(600),
        }
    }
}

pub fn worker_name(job: &str) -> String {
    object_name(job, "push")
}
pub fn snapshot_name(job: &str, volume: &str) -> String {
    object_name(&format!("{job}-{volume}"), "snap")
}
pub fn clone_name(job: &str, volume: &str) -> String {
    object_name(&format!("{job}-{volume}"), "clone")
}

/// `<base>-<suffix>` kept within 63 characters (a hash keeps truncated names unique).
pub fn object_name(base: &str, suffix: &str) -> String {
    let full = format!("{base}-{suffix}");
    if full.len() <= 63 {
        return full;
    }
    let h = &blake3::hash(base.as_bytes()).to_hex()[..8];
    let keep = 63 - suffix.len() - h.len() - 2;
    format!("{}-{h}-{suffix}", base[..keep].trim_end_matches('-'))
}

/// `job=replicas`: the annotation value that records a workload's replicas for a job.
pub fn annotation_value(job: &str, replicas: i32) -> String {
    format!("{job}={replicas}")
}

/// Parses an annotation value back into (job, replicas).
pub fn parse_annotation(v: &str) -> Option<(String, i32)> {
    let (job, n) = v.rsplit_once('=')?;
    Some((job.to_string(), n.parse().ok()?))
}

pub fn deadline(job: &PushJob, settings: &Settings) -> Option<Duration> {
    offline::deadline(job.spec.deadline_seconds, job.spec.priority, settings)
}

type Builder<'a> = offline::Pass<'a, PushJob, Observed, PushJobStatus, Action>;

impl offline::Progress for PushJobStatus {
    type Phase = Phase;
    fn phase(&self) -> Option<Phase> {
        self.phase
    }
    fn phase_name(phase: Phase) -> &'static str {
        phase.as_str()
    }
    fn set_phase(&mut self, phase: Phase, since: Option<Time>) {
        self.phase = Some(phase);
        if since.is_some() {
            self.phase_time = since;
        }
    }
    fn set_message(&mut self, message: String) {
        self.message = Some(message);
    }
}

impl Builder<'_> {
    fn name(&self) -> &str {
        self.job.metadata.name.as_deref().unwrap_or("")
    }

    fn phase(&self) -> Phase {
        self.st.phase.unwrap_or_default()
    }

    /// Records a failure and starts unwinding (the worker stops, workloads come back, created
    /// objects go). A second failure keeps the first reason.
    fn fail(&mut self, reason: &str, message: impl Into<String>) {
        let message = message.into();
        if self.st.failure.is_none() {
            self.event(true, reason, message.clone());
            self.st.failure = Some(Failure { reason: reason.into(), message: message.clone() });
        }
        self.stop_worker();
        self.thaw_if_needed();
        if !offline::resume(&self.st.replicas, &self.obs.workloads, self.name()).is_empty() {
            self.enter(Phase::Resuming, format!("{reason}: bringing the workloads back"));
        } else {
            self.enter(Phase::CleaningUp, format!("{reason}: cleaning up"));
        }
    }

    fn hooks(&self, stage: HookStage) -> usize {
        let h = self.obs.repository.as_ref().and_then(|r| r.hooks.as_ref());
        match stage {
            HookStage::Pre => h.map_or(0, |h| h.pre.len()),
            HookStage::Post => h.map_or(0, |h| h.post.len()),
        }
    }

    /// Post hooks are owed once the pre hooks ran (even when they failed: a partial freeze must
    /// be undone) until they have run once.
    fn post_hooks_owed(&self) -> bool {
        self.st.pre_hook.is_some() && self.st.post_hook.is_none() && self.hooks(HookStage::Post) > 0
    }

    fn thaw_if_needed(&mut self) {
        if self.post_hooks_owed() && !self.actions.contains(&Action::RunHooks(HookStage::Post)) {
            self.actions.push(Action::RunHooks(HookStage::Post));
        }
    }

    fn stop_worker(&mut self) {
        if let Some(w) = &self.obs.worker
            && matches!(w, WorkerObs::Pending | WorkerObs::Running)
        {
            self.actions.push(Action::Delete(CreatedObject { kind: CreatedKind::Pod, name: worker_name(self.name()) }));
        }
    }

    fn created(&mut self, kind: CreatedKind, name: &str) {
        let o = CreatedObject { kind, name: name.into() };
        if !self.st.created.contains(&o) {
            self.st.created.push(o);
        }
    }

    fn set_conditions(&mut self) {
        let now = self.obs.now;
        let generation = self.job.metadata.generation;
        self.st.observed_generation = generation;
        let failure =
            self.st.failure.clone().unwrap_or(Failure { reason: "Failed".into(), message: "push failed".into() });
        let message = self.st.message.clone().unwrap_or_default();
        let phase = self.phase();
        let standing = match phase {
            Phase::Succeeded => Standing::Succeeded("push complete"),
            Phase::Failed => Standing::Failed(&failure),
            p => Standing::Running(p.as_str(), &message),
        };
        let c = &mut self.st.conditions;
        offline::set_job_conditions(c, standing, generation, now);
        if self.st.torn {
            set_condition(
                c,
                conditions::CONSISTENCY_WARNING,
                true,
                "ChangedDuringRead",
                "files changed while the push read them: the snapshots are marked inconsistent (status.snapshots[].changedDuringRead names them); something wrote to the volumes",
                generation,
                now,
            );
        } else if self.st.consistency == Some(Consistency::Inconsistent) {
            set_condition(
                c,
                conditions::CONSISTENCY_WARNING,
                true,
                "LiveRead",
                "no VolumeSnapshotClass: the volumes were read while in use; files may be torn (keep offline pushes as safety anchors)",
                generation,
                now,
            );
        }
    }

    fn finish(mut self) -> Decision {
        self.set_conditions();
        Decision { status: self.st, actions: self.actions, events: self.events, requeue: self.requeue }
    }
}

/// The next step for `job` given what was observed.
pub fn next(job: &PushJob, obs: &Observed, settings: &Settings) -> Decision {
    let mut b = Builder::new(job, obs, obs.now, job.status.clone().unwrap_or_default());
    if b.st.phase.is_none() {
        b.st.phase = Some(Phase::Pending);
        b.st.phase_time = Some(time(obs.now));
    }
    let phase = b.phase();
    if phase.is_terminal() {
        return b.finish();
    }
    let unwinding = matches!(phase, Phase::Resuming | Phase::CleaningUp);
    if !unwinding && obs.deleted {
        b.fail("Deleted", format!("the PushJob was deleted in phase {}", phase.as_str()));
        return b.finish();
    }

    // The job deadline counts from creation; unwinding is never cut short, and retries what
    // the API server refused instead of failing again.
    if !unwinding {
        let created = job.metadata.creation_timestamp.as_ref().map(|t| chrono_of(&t.0));
        let d = deadline(job, settings);
        match offline::gate(d, job.spec.priority, created, phase.as_str(), obs.now, obs.refused.as_ref()) {
            Gate::Stop(reason, message) => {
                b.fail(&reason, message);
                return b.finish();
            }
            Gate::Go(left) => b.requeue = left,
        }
    }

    match phase {
        Phase::Pending => pending(&mut b),
        Phase::Queued => queued(&mut b),
        Phase::Quiescing => quiescing(&mut b),
        Phase::WaitingForDetach => waiting_for_detach(&mut b, settings),
        Phase::Hooks => hooks(&mut b),
        Phase::Snapshotting => snapshotting(&mut b, settings),
        Phase::Cloning => cloning(&mut b),
        Phase::Pushing => pushing(&mut b),
        Phase::Resuming => resuming(&mut b),
        Phase::CleaningUp => cleaning_up(&mut b),
        Phase::Succeeded | Phase::Failed => unreachable!("terminal phases return early"),
    }
    b.finish()
}

fn pending(b: &mut Builder) {
    let Some(repo) = &b.obs.repository else {
        let name = &b.job.spec.repository_ref.name;
        return b.fail("RepositoryNotFound", format!("Repository {name:?} does not exist in this namespace"));
    };
    if !b.obs.missing_volumes.is_empty() {
        return b.fail("VolumeNotFound", format!("PVCs not found: {}", b.obs.missing_volumes.join(", ")));
    }
    if b.obs.volumes.is_empty() {
        return b.fail("NoVolumes", "the Repository selects no PVC");
    }
    if b.job.spec.mode == Mode::Offline && !b.obs.bare_pods.is_empty() && repo.workloads.is_none() {
        return b.fail(
            "BarePod",
            format!(
                "pods {} mount the volumes but no Deployment or StatefulSet owns them, so an offline push could not bring them back; manage them with a controller or list spec.workloads",
                b.obs.bare_pods.join(", ")
            ),
        );
    }
    b.st.volumes = b.obs.volumes.clone();
    b.enter(Phase::Queued, "waiting for a push slot");
}

fn queued(b: &mut Builder) {
    if !b.obs.admitted {
        b.st.queue_position = b.obs.queue_position;
        let pos = b.obs.queue_position.map(|p| format!(" (position {p})")).unwrap_or_default();
        b.wait(format!("waiting for a push slot{pos}"), Duration::from_secs(10));
        return;
    }
    b.st.queue_position = None;
    b.st.start_time = Some(time(b.obs.now));
    let Some(repo) = b.obs.repository.clone() else {
        let name = &b.job.spec.repository_ref.name;
        return b.fail("RepositoryNotFound", format!("Repository {name:?} was deleted"));
    };
    match b.job.spec.mode {
        Mode::Offline => {
            b.st.consistency = Some(Consistency::Consistent);
            b.enter(Phase::Quiescing, "recording replicas and scaling the workloads to zero");
        }
        Mode::Online => match repo.online.volume_snapshot_class_name.as_deref() {
            Some(_) if repo.online.live != Some(true) => {
                b.st.consistency = Some(Consistency::CrashConsistent);
                if b.hooks(HookStage::Pre) > 0 {
                    b.enter(Phase::Hooks, "running the pre hooks");
                } else {
                    b.enter(Phase::Snapshotting, "taking VolumeSnapshots");
                }
            }
            _ => {
                b.st.consistency = Some(Consistency::Inconsistent);
                b.event(
                    true,
                    "ConsistencyWarning",
                    "no VolumeSnapshotClass: reading the live volumes; the snapshot is marked inconsistent",
                );
                if b.hooks(HookStage::Pre) > 0 {
                    b.enter(Phase::Hooks, "running the pre hooks");
                } else {
                    b.enter(Phase::Pushing, "reading the live volumes");
                }
            }
        },
    }
}

fn hooks(b: &mut Builder) {
    match b.st.pre_hook.clone() {
        None => {
            b.actions.push(Action::RunHooks(HookStage::Pre));
            b.wait("running the pre hooks", Duration::from_secs(1));
        }
        Some(o) if !o.ok => b.fail("HookFailed", format!("pre hook failed: {}", o.message)),
        Some(o) => {
            if !o.message.is_empty() {
                b.st.message = Some(o.message);
            }
            if b.st.consistency == Some(Consistency::Inconsistent) {
                b.enter(Phase::Pushing, "reading the live volumes");
            } else {
                b.enter(Phase::Snapshotting, "taking VolumeSnapshots");
            }
        }
    }
}

fn quiescing(b: &mut Builder) {
    let name = b.name().to_string();
    match offline::quiesce(&b.st.replicas, &b.obs.workloads, &name) {
        Quiesce::Record(records) => {
            // Step 1: record the counts in the job status, and touch nothing until that is stored.
            b.st.replicas = records;
            b.wait("replica counts recorded", Duration::ZERO);
        }
        Quiesce::Act(actions) => {
            // Step 2: annotate each workload, then scale it to zero.
            b.actions.extend(actions.into_iter().map(Action::from));
            b.wait("scaling the workloads to zero", Duration::from_secs(1));
        }
        Quiesce::Stopped => {
            b.enter(Phase::WaitingForDetach, "waiting until the pods are gone and the volumes detached")
        }
    }
}

fn phase_age(b: &Builder) -> Duration {
    b.st.phase_time.as_ref().and_then(|t| (b.obs.now - chrono_of(&t.0)).to_std().ok()).unwrap_or_default()
}

fn waiting_for_detach(b: &mut Builder, settings: &Settings) {
    match offline::detach(&b.obs.pods_mounting, &b.obs.attachments, phase_age(b), settings.detach_timeout) {
        Detach::Free => b.enter(Phase::Pushing, "copying the volumes"),
        Detach::TimedOut(msg) => b.fail("DetachTimeout", msg),
        Detach::Wait(msg) => b.wait(msg, Duration::from_secs(2)),
    }
}

fn snapshotting(b: &mut Builder, settings: &Settings) {
    let class = b.obs.repository.as_ref().and_then(|r| r.online.volume_snapshot_class_name.clone()).unwrap_or_default();
    let name = b.name().to_string();
    let mut all_ready = true;
    for v in b.st.volumes.clone() {
        let sn = snapshot_name(&name, &v);
        match b.obs.snapshots.iter().find(|s| s.name == sn) {
            None => {
                all_ready = false;
                b.created(CreatedKind::VolumeSnapshot, &sn);
                b.actions.push(Action::CreateSnapshot { name: sn, volume: v, class: class.clone() });
            }
            Some(s) if s.error.is_some() => {
                return b
                    .fail("SnapshotFailed", format!("VolumeSnapshot {sn}: {}", s.error.clone().unwrap_or_default()));
            }
            Some(s) if !s.ready => all_ready = false,
            Some(_) => {}
        }
    }
    if all_ready && b.post_hooks_owed() {
        b.actions.push(Action::RunHooks(HookStage::Post));
        b.wait("snapshots taken; running the post hooks", Duration::from_secs(1));
    } else if all_ready {
        b.enter(Phase::Cloning, "creating PVCs from the snapshots");
    } else if phase_age(b) >= settings.snapshot_timeout {
        b.fail("SnapshotTimeout", format!("VolumeSnapshots not ready after {}s", settings.snapshot_timeout.as_secs()));
    } else {
        b.wait("waiting for the VolumeSnapshots to be ready", Duration::from_secs(2));
    }
}

fn cloning(b: &mut Builder) {
    let name = b.name().to_string();
    for v in b.st.volumes.clone() {
        let cn = clone_name(&name, &v);
        if !b.obs.clones.contains(&cn) {
            b.created(CreatedKind::PersistentVolumeClaim, &cn);
            b.actions.push(Action::CreateClone { name: cn, volume: v.clone(), snapshot: snapshot_name(&name, &v) });
        }
    }
    // No wait for Bound: with WaitForFirstConsumer the clone binds when the worker is scheduled.
    b.enter(Phase::Pushing, "copying the snapshot clones");
}

/// The worker's report, from its termination message.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, PartialEq)]
pub struct WorkerReport {
    pub volumes: Vec<VolumeResult>,
    pub stats: JobStats,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// Why the worker failed, when it knows (the job's reason); `WorkerFailed` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<WorkerFailure>,
}

/// Failures a worker names, each the reason of the failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkerFailure {
    /// The store is encrypted and the Repository gives no key.
    StoreKeyMissing,
    /// No key slot of the store opens with the Repository's key.
    StoreKeyWrong,
    /// The Repository gives a key, but the store is not encrypted.
    StoreNotEncrypted,
    /// There is no store yet and the Repository says nothing about encryption.
    EncryptionNotConfigured,
    /// The store refused the credentials (HTTP 401/403).
    StoreAccessDenied,
    /// The Repository's bucket does not exist.
    StoreBucketMissing,
    /// The store did not answer (endpoint down, network, 5xx) through every retry.
    StoreUnreachable,
    /// A volume could not be read at all.
    SourceUnreadable,
    /// An object of the store does not open (changed, replaced, sealed with another key) or
    /// its config is damaged.
    StoreDamaged,
}

impl WorkerFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerFailure::StoreKeyMissing => "StoreKeyMissing",
            WorkerFailure::StoreKeyWrong => "StoreKeyWrong",
            WorkerFailure::StoreNotEncrypted => "StoreNotEncrypted",
            WorkerFailure::EncryptionNotConfigured => "EncryptionNotConfigured",
            WorkerFailure::StoreAccessDenied => "StoreAccessDenied",
            WorkerFailure::StoreBucketMissing => "StoreBucketMissing",
            WorkerFailure::StoreUnreachable => "StoreUnreachable",
            WorkerFailure::SourceUnreadable => "SourceUnreadable",
            WorkerFailure::StoreDamaged => "StoreDamaged",
        }
    }

    /// What the user does about it (appended to the job's message).
    pub fn fix(self) -> &'static str {
        match self {
            WorkerFailure::StoreKeyMissing => {
                "name the Secret with the store's passphrase in spec.storage.encryption.secretRef"
            }
            WorkerFailure::StoreKeyWrong => {
                "put the store's passphrase (or raw key) in the Secret of spec.storage.encryption.secretRef; to change it, keep the old one under PUSH_OPERATOR_PREVIOUS_PASSWORD until a push succeeds"
            }
            WorkerFailure::StoreNotEncrypted => {
                "the store was created without encryption: remove spec.storage.encryption (or set mode: None), or point the Repository at a new prefix to start an encrypted store"
            }
            WorkerFailure::EncryptionNotConfigured => {
                "set spec.storage.encryption.secretRef to a Secret with PUSH_OPERATOR_PASSWORD, or spec.storage.encryption.mode: None to store plaintext"
            }
            WorkerFailure::StoreAccessDenied => {
                "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the Secret of spec.storage.credentialsSecretRef, and the bucket policy"
            }
            WorkerFailure::StoreBucketMissing => {
                "create the bucket, or fix spec.storage.bucket and spec.storage.endpoint"
            }
            WorkerFailure::StoreUnreachable => {
                "check spec.storage.endpoint, the network path from the namespace (NetworkPolicies, DNS) and the store's health; the next push retries"
            }
            WorkerFailure::SourceUnreadable => {
                "the volume could not be read: check the PVC's filesystem and, under Pod Security restricted, that the application's uid can read it"
            }
            WorkerFailure::StoreDamaged => {
                "run `push-operator verify` against the store to see what is damaged and which snapshots it affects; nothing was written over it, and pushing to a new prefix starts a clean store"
            }
        }
    }

    /// The failure a store error stands for, if it is one of these.
    pub fn of(e: &anyhow::Error) -> Option<WorkerFailure> {
        use crate::store::OpenError;
        use crate::store::backend::BackendError;
        let backend = |b: &BackendError| match b {
            BackendError::Denied(_) => Some(WorkerFailure::StoreAccessDenied),
            BackendError::NoBucket(_) => Some(WorkerFailure::StoreBucketMissing),
            BackendError::Transient(_) => Some(WorkerFailure::StoreUnreachable),
            BackendError::NotFound(_) | BackendError::Permanent(_) => None,
        };
        for cause in e.chain() {
            if let Some(o) = cause.downcast_ref::<OpenError>() {
                return match o {
                    OpenError::KeyMissing(_) => Some(WorkerFailure::StoreKeyMissing),
                    OpenError::WrongKey { .. } => Some(WorkerFailure::StoreKeyWrong),
                    OpenError::NotEncrypted(_) => Some(WorkerFailure::StoreNotEncrypted),
                    OpenError::NewStoreNeedsKey(_) => Some(WorkerFailure::EncryptionNotConfigured),
                    OpenError::Damaged { .. } => Some(WorkerFailure::StoreDamaged),
                    OpenError::Backend(b) => backend(b),
                    _ => None,
                };
            }
            if let Some(b) = cause.downcast_ref::<BackendError>() {
                return backend(b);
            }
            if cause.downcast_ref::<crate::store::push::SourceError>().is_some() {
                return Some(WorkerFailure::SourceUnreadable);
            }
            if cause.downcast_ref::<crate::store::crypto::OpenFailed>().is_some()
                || cause.downcast_ref::<crate::store::Damaged>().is_some()
            {
                return Some(WorkerFailure::StoreDamaged);
            }
        }
        None
    }
}

fn pushing(b: &mut Builder) {
    let name = b.name().to_string();
    let wn = worker_name(&name);
    match b.obs.worker.clone() {
        None => {
            if b.st.worker_start_time.is_some() && b.st.stats.is_none() {
                // It ran and vanished (evicted, deleted by hand) before reporting. (A worker
                // recorded but never seen was not created yet, e.g. the operator died between
                // storing the status and creating the pod: it is created now.)
                return b.fail("WorkerLost", format!("worker pod {wn} disappeared before it reported"));
            }
            let claims: Vec<(String, String)> =
                b.st.volumes
                    .iter()
                    .map(|v| {
                        let claim = if b.st.consistency == Some(Consistency::CrashConsistent) {
                            clone_name(&name, v)
                        } else {
                            v.clone()
                        };
                        (v.clone(), claim)
                    })
                    .collect();
            let node =
                if b.st.consistency == Some(Consistency::Inconsistent) { b.obs.mount_node.clone() } else { None };
            b.st.node_name = node.clone();
            b.created(CreatedKind::Pod, &wn);
            b.actions.push(Action::CreateWorker { name: wn, claims, node });
            b.wait("worker pod created", Duration::from_secs(2));
        }
        Some(WorkerObs::Pending) | Some(WorkerObs::Running) => {
            if b.st.worker_start_time.is_none() {
                b.st.worker_start_time = Some(time(b.obs.now));
            }
            b.wait("copying the volumes", Duration::from_secs(5))
        }
        Some(WorkerObs::Succeeded { message }) => match serde_json::from_str::<WorkerReport>(&message) {
            Ok(report) => {
                if !report.warnings.is_empty() {
                    b.event(
                        true,
                        "UnreadableEntries",
                        format!("{} entries could not be read: {}", report.warnings.len(), report.warnings.join("; ")),
                    );
                }
                let torn: Vec<String> = report
                    .volumes
                    .iter()
                    .filter(|v| v.consistency == Some(Consistency::Inconsistent) && !v.changed_during_read.is_empty())
                    .map(|v| format!("{}: {}", v.volume, v.changed_during_read.join(", ")))
                    .collect();
                if !torn.is_empty() {
                    b.st.consistency = Some(Consistency::Inconsistent);
                    b.st.torn = true;
                    b.event(
                        true,
                        "ConsistencyWarning",
                        format!(
                            "files changed while they were read, so the snapshots are marked inconsistent: {}",
                            torn.join("; ")
                        ),
                    );
                }
                b.st.snapshots = report.volumes;
                b.st.stats = Some(report.stats);
                if b.post_hooks_owed() {
                    b.actions.push(Action::RunHooks(HookStage::Post));
                    b.wait("copy complete; running the post hooks", Duration::from_secs(1));
                } else if b.job.spec.mode == Mode::Offline && !b.st.replicas.is_empty() {
                    b.enter(Phase::Resuming, "copy complete; bringing the workloads back");
                } else {
                    b.enter(Phase::CleaningUp, "copy complete; cleaning up");
                }
            }
            Err(e) => b.fail("WorkerReportInvalid", format!("the worker's report does not parse: {e}")),
        },
        Some(WorkerObs::Failed { oom_killed: true, exit_code, .. }) => {
            let code = exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default();
            b.fail(
                "WorkerOOMKilled",
                format!(
                    "the worker was killed for using more memory than its limit{code}: raise the Repository's spec.workerResources.limits.memory (or the chart's worker memory limit)"
                ),
            )
        }
        Some(WorkerObs::Failed { message, exit_code, .. }) => {
            let report = serde_json::from_str::<WorkerReport>(&message).ok();
            let code = exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default();
            match report.as_ref().and_then(|r| Some((r.reason?, r.error.clone().unwrap_or_default()))) {
                Some((reason, detail)) => b.fail(reason.as_str(), format!("{detail}; {}", reason.fix())),
                None => {
                    let detail = report.and_then(|r| r.error).unwrap_or(message);
                    b.fail("WorkerFailed", format!("the worker failed{code}: {detail}"))
                }
            }
        }
    }
}

fn resuming(b: &mut Builder) {
    b.stop_worker();
    let name = b.name().to_string();
    b.actions.extend(offline::resume(&b.st.replicas, &b.obs.workloads, &name).into_iter().map(Action::from));
    if b.actions.is_empty() {
        b.enter(Phase::CleaningUp, "workloads back; cleaning up");
    } else {
        b.wait("scaling the workloads back", Duration::from_secs(1));
    }
}

fn exists(obs: &Observed, o: &CreatedObject) -> bool {
    match o.kind {
        CreatedKind::Pod => obs.worker.is_some(),
        CreatedKind::VolumeSnapshot => obs.snapshots.iter().any(|s| s.name == o.name),
        CreatedKind::PersistentVolumeClaim => obs.clones.contains(&o.name),
    }
}

fn cleaning_up(b: &mut Builder) {
    if b.post_hooks_owed() {
        b.thaw_if_needed();
        b.wait("running the post hooks", Duration::from_secs(1));
        return;
    }
    let left: Vec<CreatedObject> = b.st.created.iter().filter(|o| exists(b.obs, o)).cloned().collect();
    if !left.is_empty() {
        for o in left {
            b.actions.push(Action::Delete(o));
        }
        b.wait("deleting what the push created", Duration::from_secs(2));
        return;
    }
    b.st.completion_time = Some(time(b.obs.now));
    b.st.node_name = None;
    if b.st.failure.is_some() {
        let f = b.st.failure.clone().unwrap();
        b.enter(Phase::Failed, format!("{}: {}", f.reason, f.message));
    } else {
        b.enter(Phase::Succeeded, "push complete");
    }
    b.requeue = None;
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
