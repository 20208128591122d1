//! The offline steps PushJobs and RestoreJobs share, as pure decisions: record the replica
//! counts, stop the workloads, wait until the volumes are free, bring the workloads back; and
//! the kstatus conditions of a job. Each state machine maps the [`WorkloadAction`]s to its own
//! actions.

use crate::api::conditions::{self, set_condition};
use crate::api::{Failure, Priority, ReplicaRecord, WorkloadRef};
use crate::controller::push_job::state::{Event, Refusal, Settings, WorkloadObs, annotation_value, parse_annotation};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::time::Duration;

/// What a job does to a workload.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadAction {
    /// Write `<job>=<replicas>` into the workload's annotation (before scaling it).
    Annotate {
        workload: WorkloadRef,
        value: String,
    },
    Scale {
        workload: WorkloadRef,
        replicas: i32,
    },
    RemoveAnnotation {
        workload: WorkloadRef,
    },
}

/// The next step of stopping the workloads.
#[derive(Debug, Clone, PartialEq)]
pub enum Quiesce {
    /// Store these replica counts first; touch nothing until they are stored.
    Record(Vec<ReplicaRecord>),
    /// Annotate and scale these; look again.
    Act(Vec<WorkloadAction>),
    /// Every recorded workload is at zero (or gone).
    Stopped,
}

/// Stopping the workloads: counts recorded first, then each annotated with `job` (the
/// annotation's job part) and scaled to zero.
pub fn quiesce(recorded: &[ReplicaRecord], workloads: &[WorkloadObs], job: &str) -> Quiesce {
    if recorded.is_empty() && !workloads.is_empty() {
        return Quiesce::Record(
            workloads
                .iter()
                .map(|w| ReplicaRecord {
                    kind: w.workload.kind,
                    name: w.workload.name.clone(),
                    replicas: w.replicas.unwrap_or(0),
                })
                .collect(),
        );
    }
    let mut actions = Vec::new();
    for rec in recorded {
        let w = WorkloadRef { kind: rec.kind, name: rec.name.clone() };
        let obs = workloads.iter().find(|o| o.workload == w);
        let Some(current) = obs.and_then(|o| o.replicas) else { continue }; // deleted meanwhile
        let value = annotation_value(job, rec.replicas);
        if obs.and_then(|o| o.annotation.as_deref()) != Some(value.as_str()) {
            actions.push(WorkloadAction::Annotate { workload: w.clone(), value });
        }
        if current != 0 {
            actions.push(WorkloadAction::Scale { workload: w, replicas: 0 });
        }
    }
    if actions.is_empty() { Quiesce::Stopped } else { Quiesce::Act(actions) }
}

/// Bringing the workloads back and removing `job`'s annotation; empty when every workload is
/// back. The counts recorded in the status win; a workload `job` annotated whose count the
/// status never stored goes back to the annotated count.
pub fn resume(recorded: &[ReplicaRecord], workloads: &[WorkloadObs], job: &str) -> Vec<WorkloadAction> {
    let mut actions = Vec::new();
    for obs in workloads {
        let Some(current) = obs.replicas else { continue }; // deleted: nothing to bring back
        let w = &obs.workload;
        let stored = recorded.iter().find(|r| r.kind == w.kind && r.name == w.name).map(|r| r.replicas);
        let annotated = obs.annotation.as_deref().and_then(parse_annotation).filter(|(j, _)| j == job).map(|(_, n)| n);
        if let Some(want) = stored.or(annotated)
            && current != want
        {
            actions.push(WorkloadAction::Scale { workload: w.clone(), replicas: want });
        }
        if annotated.is_some() {
            actions.push(WorkloadAction::RemoveAnnotation { workload: w.clone() });
        }
    }
    actions
}

/// Waiting until no pod mounts the volumes and no VolumeAttachment holds them.
#[derive(Debug, Clone, PartialEq)]
pub enum Detach {
    Free,
    /// Still held; the message says by what.
    Wait(String),
    /// Held longer than the timeout: the failure message.
    TimedOut(String),
}

pub fn detach(pods: &[String], attachments: &[String], waited: Duration, timeout: Duration) -> Detach {
    if pods.is_empty() && attachments.is_empty() {
        return Detach::Free;
    }
    if waited >= timeout {
        return Detach::TimedOut(format!(
            "after {}s, still mounted by pods [{}] / attached by [{}]",
            timeout.as_secs(),
            pods.join(", "),
            attachments.join(", ")
        ));
    }
    Detach::Wait(format!("waiting for {} pods and {} volume attachments to go", pods.len(), attachments.len()))
}

/// How a job stands, for its kstatus conditions.
pub enum Standing<'a> {
    Succeeded(&'a str),
    Failed(&'a Failure),
    /// In progress: the phase and the current message.
    Running(&'a str, &'a str),
}

/// Sets Ready, Reconciling, Stalled, Complete and Failed as kstatus reads them.
pub fn set_job_conditions(c: &mut Vec<Condition>, standing: Standing, generation: Option<i64>, now: DateTime<Utc>) {
    match standing {
        Standing::Succeeded(msg) => {
            set_condition(c, conditions::COMPLETE, true, "Succeeded", msg, generation, now);
            set_condition(c, conditions::READY, true, "Succeeded", msg, generation, now);
            set_condition(c, conditions::RECONCILING, false, "Succeeded", "", generation, now);
            set_condition(c, conditions::STALLED, false, "Succeeded", "", generation, now);
            conditions::remove_condition(c, conditions::FAILED);
        }
        Standing::Failed(f) => {
            set_condition(c, conditions::FAILED, true, &f.reason, &f.message, generation, now);
            set_condition(c, conditions::STALLED, true, &f.reason, &f.message, generation, now);
            set_condition(c, conditions::READY, false, &f.reason, &f.message, generation, now);
            set_condition(c, conditions::RECONCILING, false, &f.reason, "", generation, now);
            conditions::remove_condition(c, conditions::COMPLETE);
        }
        Standing::Running(phase, msg) => {
            set_condition(c, conditions::RECONCILING, true, phase, msg, generation, now);
            set_condition(c, conditions::READY, false, phase, msg, generation, now);
            set_condition(c, conditions::STALLED, false, phase, "", generation, now);
        }
    }
}

/// A job's deadline: its own `deadlineSeconds`, else the default of its priority.
pub fn deadline(seconds: Option<i64>, priority: Priority, settings: &Settings) -> Option<Duration> {
    match seconds {
        Some(s) => Some(Duration::from_secs(s.max(1) as u64)),
        None => settings.default_deadlines[priority as usize],
    }
}

/// Whether a job that is not unwinding may go on.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Yes; look again within this long at the latest (its deadline).
    Go(Option<Duration>),
    /// No: fail with this reason and message.
    Stop(String, String),
}

/// The checks before every step of a job that is not unwinding: its deadline (counted from
/// `created`), then an action the API server refused for good on the last pass.
pub fn gate(
    deadline: Option<Duration>,
    priority: Priority,
    created: Option<DateTime<Utc>>,
    phase: &str,
    now: DateTime<Utc>,
    refused: Option<&Refusal>,
) -> Gate {
    let mut left = None;
    if let (Some(d), Some(created)) = (deadline, created) {
        let ends = created + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        if now >= ends {
            let why = format!("the {} deadline of {}s passed in phase {phase}", priority.as_str(), d.as_secs());
            return Gate::Stop("DeadlineExceeded".into(), why);
        }
        left = Some((ends - now).to_std().unwrap_or_default());
    }
    if let Some(r) = refused {
        return Gate::Stop(r.reason.into(), r.message.clone());
    }
    Gate::Go(left)
}

/// The status fields every job's state machine moves: the phase, when it was entered, the message.
pub trait Progress {
    type Phase: Copy + PartialEq;
    fn phase(&self) -> Option<Self::Phase>;
    fn phase_name(phase: Self::Phase) -> &'static str;
    /// Sets the phase; `since` when it is a new one.
    fn set_phase(&mut self, phase: Self::Phase, since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>);
    fn set_message(&mut self, message: String);
}

/// One pass of a job's state machine (PushJob or RestoreJob): the status it builds from the
/// job's, the actions and Events it decides, and when to look again. Each state machine adds
/// its own steps in an `impl` of its own `Pass` type.
pub struct Pass<'a, J, O, S, A> {
    pub job: &'a J,
    pub obs: &'a O,
    pub now: DateTime<Utc>,
    pub st: S,
    pub actions: Vec<A>,
    pub events: Vec<Event>,
    pub requeue: Option<Duration>,
}

impl<'a, J, O, S: Progress, A> Pass<'a, J, O, S, A> {
    pub fn new(job: &'a J, obs: &'a O, now: DateTime<Utc>, st: S) -> Self {
        Pass { job, obs, now, st, actions: Vec::new(), events: Vec::new(), requeue: None }
    }

    pub fn event(&mut self, warning: bool, reason: &str, message: impl Into<String>) {
        self.events.push(Event { warning, reason: reason.into(), message: message.into() });
    }

    /// Moves to `phase` (an Event when it is a new one) and looks again at once.
    pub fn enter(&mut self, phase: S::Phase, message: impl Into<String>) {
        let message = message.into();
        let new = self.st.phase() != Some(phase);
        if new {
            self.event(false, S::phase_name(phase), message.clone());
        }
        self.st.set_phase(phase, new.then(|| crate::api::time(self.now)));
        self.st.set_message(message);
        self.requeue = Some(Duration::ZERO);
    }

    /// Stays, saying why, and looks again after `after` at the latest.
    pub fn wait(&mut self, message: impl Into<String>, after: Duration) {
        self.st.set_message(message.into());
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }
}
