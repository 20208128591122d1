//! The RestoreJob state machine: a pure function from (job, observed world, now) to the next
//! status and the actions that move the world towards it. No I/O.
//!
//! Safety rules this module enforces (and its tests check):
//! - in place, replica counts are written to the status before any workload is touched, and
//!   the workloads always come back, whatever fails;
//! - in place, nothing is written before the volumes' current state is pushed (the undo
//!   snapshot); once the restore worker has started, a failure writes the undo snapshot back
//!   before the workloads resume, so a target is never left half-restored;
//! - snapshot ids are pinned in status once resolved: a retry restores the same snapshots;
//! - new PVCs are never created over an existing claim, and are deleted only when the job fails;
//! - unwinding (undo, resume, cleanup) has no deadline.

use crate::api::conditions::{self, set_condition};
use crate::api::*;
use crate::controller::offline::{self, Detach, Gate, Quiesce, Standing, WorkloadAction};
use crate::controller::push_job::state::{Event, Refusal, WorkerObs, WorkloadObs, object_name};
use crate::restore_worker::{RestoreWorkerReport, WorkerStep};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::Duration;

/// Undo attempts before an in-place restore gives up on writing the undo snapshot back.
pub const UNDO_ATTEMPTS: i32 = 3;

/// The world as the apply layer saw it for one job.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub now: DateTime<Utc>,
    pub repository: Option<RepositorySpec>,
    /// The Repository's volumes: PVC names (existing or not).
    pub volumes: Vec<String>,
    /// The Repository's PVCs that are named but do not exist.
    pub missing_volumes: Vec<String>,
    /// Claims that exist among the job's target claims (new volumes: any is a conflict until
    /// the job created it).
    pub existing_claims: Vec<String>,
    /// The storage requests of the Repository's PVCs that exist (new PVCs are at least as large).
    pub source_requests: std::collections::BTreeMap<String, String>,
    /// In place: the workloads to stop, as for an offline push.
    pub workloads: Vec<WorkloadObs>,
    pub bare_pods: Vec<String>,
    pub pods_mounting: Vec<String>,
    pub attachments: Vec<String>,
    /// Pods labelled with this job that exist.
    pub pods: Vec<String>,
    /// The current step's worker pod (`status.worker`), when it exists.
    pub worker: Option<WorkerObs>,
    pub refused: Option<Refusal>,
    pub admitted: bool,
    pub queue_position: Option<i32>,
    /// The job is being deleted: it unwinds as after a failure.
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Annotate, scale or un-annotate a workload (the offline steps both jobs share).
    Workload(WorkloadAction),
    /// A new PVC for `volume` named `name` of `size`.
    CreateClaim {
        name: String,
        volume: String,
        size: String,
    },
    /// The worker pod of one step.
    CreateWorker {
        name: String,
        step: WorkerStep,
    },
    Delete(CreatedObject),
}

impl From<WorkloadAction> for Action {
    fn from(a: WorkloadAction) -> Action {
        Action::Workload(a)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: RestoreJobStatus,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    pub requeue: Option<Duration>,
}

/// Operator settings the state machine needs (shared with PushJobs).
pub use crate::controller::push_job::state::Settings;

/// The job part of the replica annotation a RestoreJob writes (`restore:<name>`), so the crash
/// sweep knows which kind of job to look for.
pub fn annotation_job(name: &str) -> String {
    format!("restore:{name}")
}

pub fn worker_name(job: &str, step: WorkerStep, attempt: i32) -> String {
    match step {
        WorkerStep::Undo => object_name(job, &format!("undo-{attempt}")),
        s => object_name(job, s.as_str()),
    }
}

/// The new PVC for `volume` from the template (`{volume}`, `{job}`; default `{volume}-{job}`).
pub fn claim_name(template: Option<&str>, job: &str, volume: &str) -> String {
    template.unwrap_or("{volume}-{job}").replace("{volume}", volume).replace("{job}", job)
}

/// Is `name` a valid PVC name (a DNS-1123 subdomain)?
pub fn valid_claim_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

pub fn deadline(job: &RestoreJob, settings: &Settings) -> Option<Duration> {
    offline::deadline(job.spec.deadline_seconds, job.spec.priority, settings)
}

/// The least consistency of `a` and `b`.
pub fn worst(a: Consistency, b: Consistency) -> Consistency {
    let rank = |c: Consistency| match c {
        Consistency::Consistent => 0,
        Consistency::CrashConsistent => 1,
        Consistency::Inconsistent => 2,
    };
    if rank(a) >= rank(b) { a } else { b }
}

/// What the recovery guide says to do after restoring a snapshot of this consistency.
pub fn consistency_advice(c: Consistency) -> &'static str {
    match c {
        Consistency::Consistent => "",
        Consistency::CrashConsistent => {
            "the snapshot is crash-consistent (as after a power cut): expect the application to run its crash recovery; run its repair or check tools before trusting the data"
        }
        Consistency::Inconsistent => {
            "the snapshot was read while the services wrote (inconsistent): files may be torn; run the application's repair tools, or consider restoring from the latest offline push instead"
        }
    }
}

type Builder<'a> = offline::Pass<'a, RestoreJob, Observed, RestoreJobStatus, Action>;

impl offline::Progress for RestoreJobStatus {
    type Phase = RestorePhase;
    fn phase(&self) -> Option<RestorePhase> {
        self.phase
    }
    fn phase_name(phase: RestorePhase) -> &'static str {
        phase.as_str()
    }
    fn set_phase(&mut self, phase: RestorePhase, since: Option<Time>) {
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

    fn phase(&self) -> RestorePhase {
        self.st.phase.unwrap_or_default()
    }

    fn in_place(&self) -> bool {
        self.job.spec.target.kind() == TargetKind::InPlace
    }

    fn created(&mut self, kind: CreatedKind, name: &str) {
        let o = CreatedObject { kind, name: name.into() };
        if !self.st.created.contains(&o) {
            self.st.created.push(o);
        }
    }

    fn stop_worker(&mut self) {
        if let (Some(name), Some(WorkerObs::Pending | WorkerObs::Running)) = (&self.st.worker, &self.obs.worker) {
            self.actions.push(Action::Delete(CreatedObject { kind: CreatedKind::Pod, name: name.clone() }));
        }
    }

    /// An in-place target may be partly written and its undo snapshot exists: it must be undone.
    fn undo_owed(&self) -> bool {
        self.in_place()
            && self.st.writing
            && self.st.undone.is_none()
            && !self.st.volumes.is_empty()
            && self.st.volumes.iter().all(|v| v.safety_snapshot.is_some())
    }

    /// Records a failure (the first reason stays) and unwinds: undo, resume, clean up.
    fn fail(&mut self, reason: &str, message: impl Into<String>) {
        let message = message.into();
        if self.st.failure.is_none() {
            self.event(true, reason, message.clone());
            self.st.failure = Some(Failure { reason: reason.into(), message: message.clone() });
        }
        self.stop_worker();
        if self.undo_owed() {
            self.enter(RestorePhase::Undoing, format!("{reason}: writing the undo snapshot back"));
        } else if !offline::resume(&self.st.replicas, &self.obs.workloads, &annotation_job(self.name())).is_empty() {
            self.enter(RestorePhase::Resuming, format!("{reason}: bringing the workloads back"));
        } else {
            self.enter(RestorePhase::CleaningUp, format!("{reason}: cleaning up"));
        }
    }

    /// Creates the worker of `step` (recorded in status before it is created).
    fn create_worker(&mut self, step: WorkerStep, name: String) {
        self.st.worker = Some(name.clone());
        self.created(CreatedKind::Pod, &name);
        self.actions.push(Action::CreateWorker { name: name.clone(), step });
        self.wait(format!("worker {name} created"), Duration::from_secs(2));
    }

    /// The current step's worker: `None` while it runs (or was just created), else its report,
    /// or why it failed as (reason, message).
    fn worker_outcome(&mut self, step: WorkerStep, attempt: i32) -> Option<Result<String, (String, String)>> {
        let name = worker_name(self.name(), step, attempt);
        if self.st.worker.as_deref() != Some(name.as_str()) {
            // One worker at a time: the previous step's pod is gone before the next starts (a
            // restore pod still writing must not race its undo).
            if let Some(prev) = self.st.worker.clone()
                && self.obs.pods.contains(&prev)
            {
                self.actions.push(Action::Delete(CreatedObject { kind: CreatedKind::Pod, name: prev.clone() }));
                self.wait(format!("waiting for worker {prev} to stop"), Duration::from_secs(1));
                return None;
            }
            self.st.worker_start_time = None;
            self.create_worker(step, name);
            return None;
        }
        match self.obs.worker.clone() {
            None if self.st.worker_start_time.is_some() => {
                Some(Err(("WorkerLost".into(), format!("worker pod {name} disappeared before it reported"))))
            }
            None => {
                // Recorded but never seen: the operator stopped between status and create.
                self.create_worker(step, name);
                None
            }
            Some(WorkerObs::Pending | WorkerObs::Running) => {
                if self.st.worker_start_time.is_none() {
                    self.st.worker_start_time = Some(time(self.obs.now));
                }
                self.wait(format!("{} ({name})", step.doing()), Duration::from_secs(3));
                None
            }
            Some(WorkerObs::Succeeded { message }) => Some(Ok(message)),
            Some(WorkerObs::Failed { oom_killed: true, .. }) => Some(Err((
                "WorkerOOMKilled".into(),
                format!(
                    "{name} was killed for using more memory than its limit: raise the Repository's spec.workerResources.limits.memory"
                ),
            ))),
            Some(WorkerObs::Failed { message, exit_code, .. }) => {
                let report = serde_json::from_str::<RestoreWorkerReport>(&message).ok();
                let code = exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default();
                Some(Err(match report {
                    Some(RestoreWorkerReport { reason: Some(r), error, .. }) => {
                        (r.as_str().to_string(), format!("{}; {}", error.unwrap_or_default(), r.fix()))
                    }
                    Some(RestoreWorkerReport { error: Some(e), .. }) => {
                        (step.failure_reason().into(), format!("{name} failed{code}: {e}"))
                    }
                    _ => (step.failure_reason().into(), format!("{name} failed{code}: {message}")),
                }))
            }
        }
    }

    fn set_conditions(&mut self) {
        let now = self.obs.now;
        let generation = self.job.metadata.generation;
        self.st.observed_generation = generation;
        let failure =
            self.st.failure.clone().unwrap_or(Failure { reason: "Failed".into(), message: "restore failed".into() });
        let message = self.st.message.clone().unwrap_or_default();
        let phase = self.phase();
        let standing = match phase {
            RestorePhase::Succeeded => Standing::Succeeded("restore complete"),
            RestorePhase::Failed => Standing::Failed(&failure),
            p => Standing::Running(p.as_str(), &message),
        };
        let c = &mut self.st.conditions;
        offline::set_job_conditions(c, standing, generation, now);
        if let Some(w) = self.st.consistency.filter(|c| *c != Consistency::Consistent) {
            let reason = match w {
                Consistency::CrashConsistent => "CrashConsistentSnapshot",
                _ => "InconsistentSnapshot",
            };
            set_condition(
                c,
                conditions::CONSISTENCY_WARNING,
                true,
                reason,
                &consistency_message(w, &self.st.consistent_alternatives),
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

fn consistency_message(c: Consistency, alternatives: &[String]) -> String {
    let alt = if alternatives.is_empty() {
        "no offline snapshot of these volumes exists".to_string()
    } else {
        format!(
            "the latest offline (consistent) snapshots: {}",
            alternatives.iter().map(|a| &a[..a.len().min(12)]).collect::<Vec<_>>().join(", ")
        )
    };
    format!("{}; {alt}", consistency_advice(c))
}

/// The next step for `job` given what was observed.
pub fn next(job: &RestoreJob, obs: &Observed, settings: &Settings) -> Decision {
    let mut b = Builder::new(job, obs, obs.now, job.status.clone().unwrap_or_default());
    if b.st.phase.is_none() {
        b.st.phase = Some(RestorePhase::Pending);
        b.st.phase_time = Some(time(obs.now));
        b.st.target = Some(job.spec.target.kind());
    }
    let phase = b.phase();
    if phase.is_terminal() {
        return b.finish();
    }
    let unwinding = matches!(phase, RestorePhase::Undoing | RestorePhase::Resuming | RestorePhase::CleaningUp);
    if !unwinding && obs.deleted {
        b.fail("Deleted", format!("the RestoreJob was deleted in phase {}", phase.as_str()));
        return b.finish();
    }
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
        RestorePhase::Pending => pending(&mut b),
        RestorePhase::Queued => queued(&mut b),
        RestorePhase::Resolving => resolving(&mut b),
        RestorePhase::Provisioning => provisioning(&mut b),
        RestorePhase::Quiescing => quiescing(&mut b),
        RestorePhase::WaitingForDetach => waiting_for_detach(&mut b, settings),
        RestorePhase::SafetyPush => safety_push(&mut b),
        RestorePhase::Restoring => restoring(&mut b),
        RestorePhase::Checking => checking(&mut b),
        RestorePhase::Undoing => undoing(&mut b),
        RestorePhase::Resuming => resuming(&mut b),
        RestorePhase::CleaningUp => cleaning_up(&mut b),
        RestorePhase::Succeeded | RestorePhase::Failed => unreachable!("terminal phases return early"),
    }
    b.finish()
}

fn pending(b: &mut Builder) {
    let Some(repo) = &b.obs.repository else {
        let name = &b.job.spec.repository_ref.name;
        return b.fail("RepositoryNotFound", format!("Repository {name:?} does not exist in this namespace"));
    };
    let unknown: Vec<&String> = b.job.spec.volumes.iter().filter(|v| !b.obs.volumes.contains(v)).collect();
    if !unknown.is_empty() {
        let list = unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        return b.fail(
            "VolumeNotFound",
            format!("spec.volumes names {list}, which the Repository does not select ({})", b.obs.volumes.join(", ")),
        );
    }
    let volumes: Vec<String> = if b.job.spec.volumes.is_empty() {
        b.obs.volumes.clone()
    } else {
        b.obs.volumes.iter().filter(|v| b.job.spec.volumes.contains(v)).cloned().collect()
    };
    if volumes.is_empty() {
        return b.fail("NoVolumes", "the Repository selects no PVC");
    }
    let name = b.name().to_string();
    let mut entries = Vec::new();
    match (&b.job.spec.target.new_volumes, b.in_place()) {
        (_, true) => {
            let missing: Vec<&String> = volumes.iter().filter(|v| b.obs.missing_volumes.contains(v)).collect();
            if !missing.is_empty() {
                let list = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
                return b.fail(
                    "VolumeNotFound",
                    format!("PVCs not found: {list}; an in-place restore writes into existing PVCs (use newVolumes to create them)"),
                );
            }
            if !b.obs.bare_pods.is_empty() && repo.workloads.is_none() {
                return b.fail(
                    "BarePod",
                    format!(
                        "pods {} mount the volumes but no Deployment or StatefulSet owns them, so they could not be stopped and brought back; manage them with a controller or list spec.workloads",
                        b.obs.bare_pods.join(", ")
                    ),
                );
            }
            for v in &volumes {
                entries.push(RestoreVolume { volume: v.clone(), claim: v.clone(), ..Default::default() });
            }
        }
        (nv, false) => {
            let template = nv.as_ref().and_then(|n| n.name_template.as_deref());
            for v in &volumes {
                let claim = claim_name(template, &name, v);
                if !valid_claim_name(&claim) {
                    return b.fail(
                        "InvalidTarget",
                        format!("newVolumes.nameTemplate gives {claim:?} for {v}, which is not a valid PVC name"),
                    );
                }
                if b.obs.existing_claims.contains(&claim) || volumes.contains(&claim) {
                    return b.fail(
                        "TargetExists",
                        format!("PVC {claim} already exists; a restore into new volumes never overwrites one (delete it, or choose another nameTemplate)"),
                    );
                }
                entries.push(RestoreVolume { volume: v.clone(), claim, ..Default::default() });
            }
        }
    }
    b.st.volumes = entries;
    b.enter(RestorePhase::Queued, "waiting for a slot (one running job per Repository)");
}

fn queued(b: &mut Builder) {
    if !b.obs.admitted {
        b.st.queue_position = b.obs.queue_position;
        let pos = b.obs.queue_position.map(|p| format!(" (position {p})")).unwrap_or_default();
        b.wait(format!("waiting for a slot{pos}"), Duration::from_secs(10));
        return;
    }
    b.st.queue_position = None;
    b.st.start_time = Some(time(b.obs.now));
    if b.obs.repository.is_none() {
        let name = &b.job.spec.repository_ref.name;
        return b.fail("RepositoryNotFound", format!("Repository {name:?} was deleted"));
    }
    b.enter(RestorePhase::Resolving, "looking the snapshots up in the store");
}

fn resolving(b: &mut Builder) {
    let report = match b.worker_outcome(WorkerStep::Resolve, 0) {
        None => return,
        Some(Err((reason, message))) => return b.fail(&reason, message),
        Some(Ok(message)) => match serde_json::from_str::<RestoreWorkerReport>(&message) {
            Ok(r) => r,
            Err(e) => return b.fail("WorkerReportInvalid", format!("the resolve report does not parse: {e}")),
        },
    };
    // Pin what was chosen; volumes the selection does not cover (ids of some volumes) go.
    let mut pinned = Vec::new();
    let mut least = Consistency::Consistent;
    for mut v in b.st.volumes.clone() {
        let Some(r) = report.resolved.iter().find(|r| r.volume == v.volume) else { continue };
        v.snapshot = Some(r.snapshot.clone());
        v.snapshot_time = Some(time(r.time));
        v.consistency = Some(r.consistency);
        v.mode = r.mode;
        v.bytes = r.bytes;
        v.changed_during_read = r.changed_during_read.clone();
        least = worst(least, r.consistency);
        pinned.push(v);
    }
    if pinned.is_empty() {
        return b.fail("SnapshotNotFound", "the selection matches no snapshot of the Repository's volumes");
    }
    b.st.volumes = pinned;
    b.st.consistency = Some(least);
    b.st.consistent_alternatives = report.alternatives;
    if least != Consistency::Consistent {
        let msg = consistency_message(least, &b.st.consistent_alternatives);
        b.event(true, "ConsistencyWarning", msg);
    }
    if b.in_place() {
        b.enter(RestorePhase::Quiescing, "recording replicas and scaling the workloads to zero");
    } else {
        b.enter(RestorePhase::Provisioning, "creating the new PVCs");
    }
}

fn provisioning(b: &mut Builder) {
    for v in b.st.volumes.clone() {
        let ours = b.st.created.iter().any(|c| c.kind == CreatedKind::PersistentVolumeClaim && c.name == v.claim);
        if b.obs.existing_claims.contains(&v.claim) {
            if !ours {
                return b.fail(
                    "TargetExists",
                    format!("PVC {} appeared meanwhile; a restore never overwrites one", v.claim),
                );
            }
            continue;
        }
        let asked = b.job.spec.target.new_volumes.as_ref().and_then(|n| n.size.clone());
        let size = match super::build::claim_size(
            asked.as_deref(),
            b.obs.source_requests.get(&v.volume).map(String::as_str),
            v.bytes,
        ) {
            Ok(s) => s,
            Err(e) => return b.fail("TargetTooSmall", e),
        };
        b.created(CreatedKind::PersistentVolumeClaim, &v.claim);
        b.actions.push(Action::CreateClaim { name: v.claim.clone(), volume: v.volume.clone(), size });
    }
    if b.actions.is_empty() {
        b.enter(RestorePhase::Restoring, "writing the snapshots into the new PVCs");
    } else {
        b.wait("creating the new PVCs", Duration::from_secs(1));
    }
}

fn quiescing(b: &mut Builder) {
    let job = annotation_job(b.name());
    match offline::quiesce(&b.st.replicas, &b.obs.workloads, &job) {
        Quiesce::Record(records) => {
            b.st.replicas = records;
            b.wait("replica counts recorded", Duration::ZERO);
        }
        Quiesce::Act(actions) => {
            b.actions.extend(actions.into_iter().map(Action::from));
            b.wait("scaling the workloads to zero", Duration::from_secs(1));
        }
        Quiesce::Stopped => {
            b.enter(RestorePhase::WaitingForDetach, "waiting until the pods are gone and the volumes detached")
        }
    }
}

fn phase_age(b: &Builder) -> Duration {
    b.st.phase_time.as_ref().and_then(|t| (b.obs.now - chrono_of(&t.0)).to_std().ok()).unwrap_or_default()
}

fn waiting_for_detach(b: &mut Builder, settings: &Settings) {
    match offline::detach(&b.obs.pods_mounting, &b.obs.attachments, phase_age(b), settings.detach_timeout) {
        Detach::Free => b.enter(RestorePhase::SafetyPush, "pushing the volumes' current state (the undo snapshot)"),
        Detach::TimedOut(msg) => b.fail("DetachTimeout", msg),
        Detach::Wait(msg) => b.wait(msg, Duration::from_secs(2)),
    }
}

fn safety_push(b: &mut Builder) {
    let message = match b.worker_outcome(WorkerStep::SafetyPush, 0) {
        None => return,
        Some(Err((reason, message))) => {
            let reason = if reason == WorkerStep::SafetyPush.failure_reason() || reason == "WorkerLost" {
                "SafetyPushFailed".to_string()
            } else {
                reason
            };
            return b.fail(&reason, format!("{message}; nothing was restored"));
        }
        Some(Ok(m)) => m,
    };
    let report = match serde_json::from_str::<crate::controller::push_job::state::WorkerReport>(&message) {
        Ok(r) => r,
        Err(e) => return b.fail("WorkerReportInvalid", format!("the undo push's report does not parse: {e}")),
    };
    for v in &mut b.st.volumes {
        v.safety_snapshot = report.volumes.iter().find(|r| r.volume == v.volume).map(|r| r.snapshot.clone());
    }
    if let Some(v) = b.st.volumes.iter().find(|v| v.safety_snapshot.is_none()) {
        let msg = format!("the undo push reported no snapshot of {}; nothing was restored", v.volume);
        return b.fail("SafetyPushFailed", msg);
    }
    let ids: Vec<String> =
        b.st.volumes
            .iter()
            .filter_map(|v| v.safety_snapshot.as_ref().map(|s| s[..s.len().min(12)].to_string()))
            .collect();
    b.event(
        false,
        "UndoSnapshot",
        format!("current state pushed; to undo this restore, restore ids {}", ids.join(", ")),
    );
    b.enter(RestorePhase::Restoring, "writing the snapshots into the volumes");
}

fn restoring(b: &mut Builder) {
    b.st.writing = true;
    let message = match b.worker_outcome(WorkerStep::Restore, 0) {
        None => return,
        Some(Err((reason, message))) => return b.fail(&reason, message),
        Some(Ok(m)) => m,
    };
    let report = match serde_json::from_str::<RestoreWorkerReport>(&message) {
        Ok(r) => r,
        Err(e) => return b.fail("WorkerReportInvalid", format!("the restore report does not parse: {e}")),
    };
    b.st.stats = report.stats;
    b.st.cleaned = report.cleaned;
    if !b.st.cleaned.is_empty() {
        let msg = format!("post-restore cleanup removed {}", b.st.cleaned.join(", "));
        b.event(false, "CleanedUp", msg);
    }
    if b.job.spec.check.is_some() {
        b.enter(RestorePhase::Checking, "restored and checked; running the check");
    } else {
        restored(b, "restored and checked");
    }
}

/// The data is written and checked: the workloads come back (in place), or cleanup.
fn restored(b: &mut Builder, what: &str) {
    if b.in_place() {
        b.enter(RestorePhase::Resuming, format!("{what}; bringing the workloads back"));
    } else {
        b.enter(RestorePhase::CleaningUp, format!("{what}; cleaning up"));
    }
}

fn checking(b: &mut Builder) {
    let timeout = b.job.spec.check.as_ref().map_or(600, |c| c.timeout_seconds.max(1)) as u64;
    match b.worker_outcome(WorkerStep::Check, 0) {
        None if phase_age(b) >= Duration::from_secs(timeout) => {
            let message = format!("the check did not finish within {timeout}s");
            b.st.check = Some(CheckOutcome { ok: false, message: message.clone() });
            b.fail("UserCheckTimeout", message);
        }
        None => {}
        Some(Ok(_)) => {
            b.st.check = Some(CheckOutcome { ok: true, message: "the check exited 0".into() });
            restored(b, "restored; the check passed");
        }
        Some(Err((_, message))) => {
            b.st.check = Some(CheckOutcome { ok: false, message: message.clone() });
            b.fail("UserCheckFailed", format!("the check failed: {message}"));
        }
    }
}

fn undoing(b: &mut Builder) {
    let attempt = b.st.undo_attempts.unwrap_or(0).max(1);
    b.st.undo_attempts = Some(attempt);
    match b.worker_outcome(WorkerStep::Undo, attempt) {
        None => {}
        Some(Ok(_)) => {
            b.st.undone = Some(true);
            b.event(false, "Undone", "the volumes hold their state from before the restore again");
            b.enter(RestorePhase::Resuming, "undo written back; bringing the workloads back");
        }
        Some(Err((_, message))) if attempt < UNDO_ATTEMPTS => {
            b.event(true, "UndoRetry", format!("undo attempt {attempt} failed: {message}"));
            b.st.undo_attempts = Some(attempt + 1);
            b.wait("retrying the undo", Duration::ZERO);
        }
        Some(Err((_, message))) => {
            b.st.undone = Some(false);
            let ids: Vec<String> = b.st.volumes.iter().filter_map(|v| v.safety_snapshot.clone()).collect();
            let first = b.st.failure.clone().map(|f| format!("{}: {}", f.reason, f.message)).unwrap_or_default();
            b.st.failure = Some(Failure {
                reason: "UndoFailed".into(),
                message: format!(
                    "{first}; then the undo failed {UNDO_ATTEMPTS} times ({message}): the volumes may be partly restored; restore snapshot ids {} in place before using them",
                    ids.join(", ")
                ),
            });
            b.event(true, "UndoFailed", b.st.failure.clone().unwrap().message);
            b.enter(RestorePhase::Resuming, "undo failed; bringing the workloads back");
        }
    }
}

fn resuming(b: &mut Builder) {
    b.stop_worker();
    let job = annotation_job(b.name());
    b.actions.extend(offline::resume(&b.st.replicas, &b.obs.workloads, &job).into_iter().map(Action::from));
    if b.actions.is_empty() {
        b.enter(RestorePhase::CleaningUp, "workloads back; cleaning up");
    } else {
        b.wait("scaling the workloads back", Duration::from_secs(1));
    }
}

fn cleaning_up(b: &mut Builder) {
    let failed = b.st.failure.is_some();
    let delete_after = b.job.spec.target.new_volumes.as_ref().is_some_and(|n| n.delete_after);
    let left: Vec<CreatedObject> = b
        .st
        .created
        .iter()
        .filter(|o| match o.kind {
            CreatedKind::Pod => b.obs.pods.contains(&o.name),
            // New PVCs are the result of a successful restore; a failed one takes them away, and
            // scratch volumes (restore tests) go whatever happens.
            CreatedKind::PersistentVolumeClaim => (failed || delete_after) && b.obs.existing_claims.contains(&o.name),
            CreatedKind::VolumeSnapshot => false,
        })
        .cloned()
        .collect();
    if !left.is_empty() {
        for o in left {
            b.actions.push(Action::Delete(o));
        }
        b.wait("deleting what the restore created", Duration::from_secs(2));
        return;
    }
    b.st.completion_time = Some(time(b.obs.now));
    b.st.worker = None;
    match b.st.failure.clone() {
        Some(f) => b.enter(RestorePhase::Failed, format!("{}: {}", f.reason, f.message)),
        None => b.enter(RestorePhase::Succeeded, "restore complete"),
    }
    b.requeue = None;
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
