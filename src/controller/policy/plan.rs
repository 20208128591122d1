//! What a PushPolicy should do now: a pure function of the policy, the jobs it owns, the
//! Repositories it targets and the clock. The controller (`super`) only observes and applies.

use super::schedule::{CronSchedule, Due, due};
use crate::api::conditions::{self, set_condition};
use crate::api::*;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Label on PushJobs and prune Pods naming the PushPolicy that created them.
pub const POLICY_LABEL: &str = "rediacc.io/push-policy";
/// Label naming the schedule ("maintenance" for prunes).
pub const SCHEDULE_LABEL: &str = "rediacc.io/push-schedule";
/// Annotation with the scheduled time (RFC 3339) a job or pod was created for.
pub const SCHEDULED_ANNOTATION: &str = "rediacc.io/scheduled-time";
/// The schedule name of maintenance runs.
pub const MAINTENANCE: &str = "maintenance";
/// Runs kept in the status.
pub const RECENT_RUNS: usize = 20;
/// Longest sleep between reconciles (a resync even when no schedule is near).
pub const MAX_REQUEUE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Active,
    Succeeded,
    Failed,
}

impl Outcome {
    pub fn result(&self) -> RunResult {
        match self {
            Outcome::Active => RunResult::Running,
            Outcome::Succeeded => RunResult::Succeeded,
            Outcome::Failed => RunResult::Failed,
        }
    }
}

/// What the plan needs of a PushJob or a prune Pod the policy created.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    pub name: String,
    pub schedule: String,
    pub repository: String,
    pub scheduled: Option<DateTime<Utc>>,
    pub outcome: Outcome,
    pub finished: Option<DateTime<Utc>>,
    /// Failure reason and message, or a summary of success.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Snapshots the job's retention forgot (PushJobs).
    pub forgotten: i64,
    /// Bytes a prune reclaimed and the store size after it (prune Pods).
    pub bytes_reclaimed: Option<u64>,
    pub store_bytes: Option<u64>,
}

pub struct Input<'a> {
    pub name: &'a str,
    pub spec: &'a PushPolicySpec,
    pub status: Option<&'a PushPolicyStatus>,
    pub generation: Option<i64>,
    pub created: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// The Repositories the policy targets (name -> exists). With a selector, only existing ones.
    pub repositories: BTreeMap<String, bool>,
    /// Jobs and prune pods this policy created.
    pub runs: Vec<RunView>,
    /// Repositories with an offline PushJob that has not finished (whoever created it).
    pub offline_active: BTreeSet<String>,
}

/// A PushJob to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub name: String,
    pub schedule: String,
    pub repository: String,
    pub scheduled: DateTime<Utc>,
    pub spec: PushJobSpec,
}

/// A prune Pod to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPrune {
    pub name: String,
    pub repository: String,
    pub scheduled: DateTime<Utc>,
    pub max_unused_percent: i32,
    pub wait_seconds: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// A run that finished since the last reconcile (for metrics and Events).
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub run: RunView,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create_jobs: Vec<NewJob>,
    pub create_prunes: Vec<NewPrune>,
    /// Finished jobs and pods beyond the history limits.
    pub delete_jobs: Vec<String>,
    pub delete_pods: Vec<String>,
    pub events: Vec<Event>,
    /// Scheduled runs missed (not run), per schedule.
    pub missed: BTreeMap<String, u32>,
    pub finished: Vec<Finished>,
    pub status: PushPolicyStatus,
    pub requeue: Duration,
}

/// The name of the job for (policy, schedule, repository, scheduled time): the same inputs
/// always give the same name, so a restart or a second operator can never create a duplicate.
/// Kept within 52 characters (derived object names add suffixes; label values stop at 63).
pub fn job_name(policy: &str, schedule: &str, repository: Option<&str>, scheduled: DateTime<Utc>) -> String {
    let minutes = scheduled.timestamp().div_euclid(60);
    let base = match repository {
        Some(r) => format!("{policy}-{schedule}-{r}"),
        None => format!("{policy}-{schedule}"),
    };
    let suffix = format!("-{minutes}");
    if base.len() + suffix.len() <= 52 {
        return format!("{base}{suffix}");
    }
    let hash = &blake3::hash(base.as_bytes()).to_hex()[..8];
    let keep = 52 - suffix.len() - hash.len() - 1;
    let head = base[..keep].trim_end_matches('-');
    format!("{head}-{hash}{suffix}")
}

fn parse_time(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<DateTime<Utc>> {
    t.as_ref().map(|t| chrono_of(&t.0))
}

/// The plan.
pub fn plan(input: &Input) -> Plan {
    let Input { name, spec, now, generation, .. } = *input;
    let mut p = Plan::default();
    let old = input.status.cloned().unwrap_or_default();
    let mut st = PushPolicyStatus { observed_generation: generation, ..old.clone() };

    // Every schedule must parse: a policy half applied is worse than one that says why not.
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for s in &spec.schedules {
        match CronSchedule::parse(&s.cron, s.time_zone.as_deref()) {
            Ok(c) => parsed.push((s, c)),
            Err(e) => problems.push(format!("schedule {}: {e}", s.name)),
        }
    }
    let maintenance = spec.maintenance.as_ref().map(|m| CronSchedule::parse(&m.cron, m.time_zone.as_deref()));
    if let Some(Err(e)) = &maintenance {
        problems.push(format!("maintenance: {e}"));
    }
    if let Some(r) = &spec.retention
        && let Err(e) = r.to_rules()
    {
        problems.push(format!("retention: {e}"));
    }
    let missing: Vec<&String> = input.repositories.iter().filter(|(_, ok)| !**ok).map(|(n, _)| n).collect();

    // Records: refresh what became of runs still listed.
    let mut records = old.recent_runs.clone();
    for r in &input.runs {
        let rec = records.iter_mut().find(|x| x.job.as_deref() == Some(r.name.as_str()));
        match rec {
            Some(rec) => {
                let was_active = rec.result == RunResult::Running;
                if rec.result != r.outcome.result() {
                    rec.result = r.outcome.result();
                    rec.reason = r.reason.clone();
                    rec.message = r.message.clone();
                    if was_active && r.outcome != Outcome::Active {
                        p.finished.push(Finished { run: r.clone() });
                    }
                }
            }
            None => {
                // Created before the status recorded it (a restart between the two).
                if let Some(t) = r.scheduled {
                    records.push(RunRecord {
                        schedule: r.schedule.clone(),
                        repository: r.repository.clone(),
                        scheduled_time: time(t),
                        job: Some(r.name.clone()),
                        result: r.outcome.result(),
                        reason: r.reason.clone(),
                        message: r.message.clone(),
                    });
                    if r.outcome != Outcome::Active {
                        p.finished.push(Finished { run: r.clone() });
                    }
                }
            }
        }
    }
    // A run still recorded as running whose job is gone (deleted by hand) is closed.
    for rec in records.iter_mut().filter(|r| r.result == RunResult::Running) {
        let gone = rec.job.as_ref().is_some_and(|j| !input.runs.iter().any(|r| &r.name == j));
        if gone && now - chrono_of(&rec.scheduled_time.0) > chrono::Duration::minutes(10) {
            rec.result = RunResult::Unknown;
            rec.reason = Some("Deleted".into());
            rec.message = Some("the job was deleted before it finished".into());
        }
    }
    for f in &p.finished {
        let r = &f.run;
        let what = if r.schedule == MAINTENANCE { "prune" } else { "push" };
        match r.outcome {
            Outcome::Succeeded => {
                let mut note = format!("{what} {} of repository {} succeeded", r.name, r.repository);
                if r.forgotten > 0 {
                    note.push_str(&format!("; retention forgot {} snapshot(s)", r.forgotten));
                }
                if let Some(b) = r.bytes_reclaimed {
                    note.push_str(&format!("; reclaimed {b} bytes"));
                }
                p.events.push(Event { warning: false, reason: "RunSucceeded".into(), note });
            }
            Outcome::Failed => p.events.push(Event {
                warning: true,
                reason: "RunFailed".into(),
                note: format!(
                    "{what} {} of repository {} failed: {}",
                    r.name,
                    r.repository,
                    r.message.clone().or(r.reason.clone()).unwrap_or_default()
                ),
            }),
            Outcome::Active => {}
        }
    }

    let mut schedule_status: Vec<ScheduleStatus> = Vec::new();
    let mut next_wake: Option<DateTime<Utc>> = None;
    let deadline = spec.starting_deadline_seconds.map(chrono::Duration::seconds);
    let healthy = problems.is_empty() && missing.is_empty();
    let targets: Vec<&String> = input.repositories.iter().filter(|(_, ok)| **ok).map(|(n, _)| n).collect();
    let name_repo = spec.repository_selector.is_some();

    let mut evaluate =
        |sched_name: &str, cron: &CronSchedule, prev: Option<&ScheduleStatus>| -> (ScheduleStatus, Due) {
            // The latest time already dealt with: the status, or a job created for a later time
            // (the status write can lag a restart), or the policy's creation.
            let from_runs = input.runs.iter().filter(|r| r.schedule == sched_name).filter_map(|r| r.scheduled).max();
            let handled = [
                prev.and_then(|s| parse_time(&s.last_handled_time)),
                prev.and_then(|s| parse_time(&s.last_schedule_time)),
                from_runs,
                Some(input.created),
            ]
            .into_iter()
            .flatten()
            .max()
            .expect("creation time");
            let d = due(cron, handled, now, deadline);
            let mut s =
                prev.cloned().unwrap_or_else(|| ScheduleStatus { name: sched_name.to_string(), ..Default::default() });
            s.name = sched_name.to_string();
            s.next_schedule_time = d.next.map(time);
            if let Some(n) = d.next {
                next_wake = Some(next_wake.map_or(n, |w: DateTime<Utc>| w.min(n)));
            }
            (s, d)
        };

    // Offline schedules first: an online run due at the same moment as an offline one of the
    // same repository gives way to it.
    parsed.sort_by_key(|(s, _)| s.mode != Mode::Offline);
    let mut offline_active = input.offline_active.clone();
    for (sched, cron) in &parsed {
        let prev = old.schedules.iter().find(|s| s.name == sched.name);
        let (mut s, d) = evaluate(&sched.name, cron, prev);
        if let Some(t) = d.scheduled {
            s.last_handled_time = Some(time(t));
            if spec.suspend {
                // Passed while suspended: neither run nor missed.
            } else if !healthy {
                records.push(record(
                    &sched.name,
                    "-",
                    t,
                    None,
                    RunResult::Skipped,
                    "PolicyNotReady",
                    "the policy is not ready",
                ));
            } else {
                if d.missed_before > 0 {
                    *p.missed.entry(sched.name.clone()).or_default() += d.missed_before;
                    p.events.push(Event {
                        warning: true,
                        reason: "MissedSchedule".into(),
                        note: format!(
                            "schedule {}: {} run(s) before {} were missed (operator not running); only the latest is considered",
                            sched.name,
                            d.missed_before,
                            t.format("%Y-%m-%d %H:%M UTC")
                        ),
                    });
                }
                for repo in &targets {
                    if d.too_late {
                        *p.missed.entry(sched.name.clone()).or_default() += 1;
                        let msg = format!(
                            "started too late: {}s after {} is past startingDeadlineSeconds",
                            (now - t).num_seconds(),
                            t.format("%H:%M UTC")
                        );
                        p.events.push(Event {
                            warning: true,
                            reason: "MissedSchedule".into(),
                            note: format!("schedule {} for repository {repo}: {msg}", sched.name),
                        });
                        records.push(record(
                            &sched.name,
                            repo,
                            t,
                            None,
                            RunResult::Missed,
                            "MissedStartingDeadline",
                            &msg,
                        ));
                        continue;
                    }
                    let job = job_name(name, &sched.name, name_repo.then_some(repo.as_str()), t);
                    if input.runs.iter().any(|r| r.name == job) {
                        continue; // created already (before a restart)
                    }
                    if let Some(prev_run) = input
                        .runs
                        .iter()
                        .find(|r| r.schedule == sched.name && &r.repository == *repo && r.outcome == Outcome::Active)
                    {
                        let msg = format!("the previous run {} has not finished", prev_run.name);
                        p.events.push(Event {
                            warning: true,
                            reason: "Skipped".into(),
                            note: format!("schedule {} for repository {repo}: {msg}", sched.name),
                        });
                        records.push(record(&sched.name, repo, t, None, RunResult::Skipped, "PreviousRunActive", &msg));
                        continue;
                    }
                    if sched.mode == Mode::Online && offline_active.contains(*repo) {
                        let msg =
                            "an offline push of the repository is running; this online run is skipped".to_string();
                        p.events.push(Event {
                            warning: false,
                            reason: "Skipped".into(),
                            note: format!("schedule {} for repository {repo}: {msg}", sched.name),
                        });
                        records.push(record(
                            &sched.name,
                            repo,
                            t,
                            None,
                            RunResult::Skipped,
                            "OfflinePushRunning",
                            &msg,
                        ));
                        continue;
                    }
                    let retention = spec.retention.clone();
                    p.create_jobs.push(NewJob {
                        name: job.clone(),
                        schedule: sched.name.clone(),
                        repository: (*repo).clone(),
                        scheduled: t,
                        spec: PushJobSpec {
                            repository_ref: LocalRef { name: (*repo).clone() },
                            mode: sched.mode,
                            priority: sched.priority,
                            deadline_seconds: None,
                            reason: Some(format!("schedule {} of PushPolicy {name}", sched.name)),
                            ttl_seconds_after_finished: None,
                            retention,
                        },
                    });
                    records.push(record(&sched.name, repo, t, Some(job), RunResult::Running, "Created", ""));
                    s.last_schedule_time = Some(time(t));
                    if sched.mode == Mode::Offline {
                        offline_active.insert((*repo).clone());
                    }
                }
            }
        }
        schedule_status.push(s);
    }

    // Maintenance: a prune pod per repository.
    st.maintenance = None;
    if let (Some(m), Some(Ok(cron))) = (&spec.maintenance, &maintenance) {
        let (mut s, d) = evaluate(MAINTENANCE, cron, old.maintenance.as_ref());
        if let Some(t) = d.scheduled {
            s.last_handled_time = Some(time(t));
            if !spec.suspend && healthy && !d.too_late {
                for repo in &targets {
                    let pod = job_name(name, MAINTENANCE, name_repo.then_some(repo.as_str()), t);
                    if input.runs.iter().any(|r| r.name == pod) {
                        continue;
                    }
                    if input
                        .runs
                        .iter()
                        .any(|r| r.schedule == MAINTENANCE && &r.repository == *repo && r.outcome == Outcome::Active)
                    {
                        records.push(record(
                            MAINTENANCE,
                            repo,
                            t,
                            None,
                            RunResult::Skipped,
                            "PreviousRunActive",
                            "the previous prune has not finished",
                        ));
                        continue;
                    }
                    p.create_prunes.push(NewPrune {
                        name: pod.clone(),
                        repository: (*repo).clone(),
                        scheduled: t,
                        max_unused_percent: m.max_unused_percent.unwrap_or(5),
                        wait_seconds: m.wait_seconds.unwrap_or(600),
                    });
                    records.push(record(MAINTENANCE, repo, t, Some(pod), RunResult::Running, "Created", ""));
                    s.last_schedule_time = Some(time(t));
                }
            } else if !spec.suspend && d.too_late {
                *p.missed.entry(MAINTENANCE.into()).or_default() += 1;
            }
        }
        st.maintenance = Some(s);
    }

    // Records: newest first, bounded; the schedules' last results; the success rate.
    records.sort_by(|a, b| {
        chrono_of(&b.scheduled_time.0).cmp(&chrono_of(&a.scheduled_time.0)).then(a.schedule.cmp(&b.schedule))
    });
    records.dedup_by(|a, b| a.job.is_some() && a.job == b.job);
    records.truncate(RECENT_RUNS);
    for s in schedule_status.iter_mut().chain(st.maintenance.iter_mut()) {
        if let Some(r) = records.iter().find(|r| r.schedule == s.name) {
            s.last_result = Some(match &r.reason {
                Some(reason) if matches!(r.result, RunResult::Skipped | RunResult::Missed) => {
                    format!("{} ({reason})", r.result.as_str())
                }
                _ => r.result.as_str().to_string(),
            });
            s.last_job = r.job.clone().or(s.last_job.clone());
        }
    }
    let counted: Vec<&RunRecord> = records
        .iter()
        .filter(|r| {
            r.schedule != MAINTENANCE
                && matches!(r.result, RunResult::Succeeded | RunResult::Failed | RunResult::Missed)
        })
        .collect();
    st.success_rate = (!counted.is_empty()).then(|| {
        let ok = counted.iter().filter(|r| r.result == RunResult::Succeeded).count() as f64;
        (ok / counted.len() as f64 * 1000.0).round() / 1000.0
    });
    st.recent_runs = records;
    st.schedules = schedule_status;

    // History: finished runs beyond the limits, oldest first, only ours.
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum RunKind {
        PushJob,
        PrunePod,
    }
    let mut by_outcome: BTreeMap<(bool, RunKind), Vec<&RunView>> = BTreeMap::new();
    for r in &input.runs {
        if r.outcome != Outcome::Active {
            let kind = if r.schedule == MAINTENANCE { RunKind::PrunePod } else { RunKind::PushJob };
            by_outcome.entry((r.outcome == Outcome::Succeeded, kind)).or_default().push(r);
        }
    }
    for ((ok, kind), mut runs) in by_outcome {
        runs.sort_by(|a, b| b.finished.cmp(&a.finished).then(b.name.cmp(&a.name)));
        let limit = match (kind, ok) {
            (RunKind::PrunePod, _) => 1,
            (RunKind::PushJob, true) => spec.successful_jobs_history_limit.max(0) as usize,
            (RunKind::PushJob, false) => spec.failed_jobs_history_limit.max(0) as usize,
        };
        let names = runs.into_iter().skip(limit).map(|r| r.name.clone());
        match kind {
            RunKind::PrunePod => p.delete_pods.extend(names),
            RunKind::PushJob => p.delete_jobs.extend(names),
        }
    }

    // Conditions.
    let c = &mut st.conditions;
    let g = generation;
    if !problems.is_empty() {
        let msg = problems.join("; ");
        set_condition(c, conditions::READY, false, "InvalidSpec", &msg, g, now);
        set_condition(c, conditions::STALLED, true, "InvalidSpec", &msg, g, now);
    } else if !missing.is_empty() {
        let msg = format!(
            "Repository {} not found in this namespace; no push is scheduled until it exists",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
        set_condition(c, conditions::READY, false, "RepositoryNotFound", &msg, g, now);
        set_condition(c, conditions::STALLED, true, "RepositoryNotFound", &msg, g, now);
    } else if targets.is_empty() {
        let msg = "repositorySelector matches no Repository";
        set_condition(c, conditions::READY, false, "NoRepository", msg, g, now);
        set_condition(c, conditions::STALLED, true, "NoRepository", msg, g, now);
    } else if spec.suspend {
        set_condition(c, conditions::READY, true, "Suspended", "suspended: no job is created", g, now);
        set_condition(c, conditions::STALLED, false, "Suspended", "", g, now);
    } else {
        let msg = format!("{} schedule(s) for {} repository(ies)", spec.schedules.len(), targets.len());
        set_condition(c, conditions::READY, true, "Scheduled", &msg, g, now);
        set_condition(c, conditions::STALLED, false, "Scheduled", "", g, now);
    }
    set_condition(c, conditions::RECONCILING, false, "Reconciled", "", g, now);
    p.status = st;

    // Wake at the next scheduled time (a little after, so "now" is past it), or at the
    // resync interval; sooner while runs are active, to record their results.
    let mut wait = next_wake
        .map(|n| (n - now).to_std().unwrap_or_default() + Duration::from_millis(200))
        .unwrap_or(MAX_REQUEUE)
        .min(MAX_REQUEUE);
    if input.runs.iter().any(|r| r.outcome == Outcome::Active) {
        wait = wait.min(Duration::from_secs(30));
    }
    p.requeue = wait;
    p
}

fn record(
    schedule: &str,
    repo: &str,
    t: DateTime<Utc>,
    job: Option<String>,
    result: RunResult,
    reason: &str,
    msg: &str,
) -> RunRecord {
    RunRecord {
        schedule: schedule.into(),
        repository: repo.into(),
        scheduled_time: time(t),
        job,
        result,
        reason: (!reason.is_empty()).then(|| reason.into()),
        message: (!msg.is_empty()).then(|| msg.into()),
    }
}
