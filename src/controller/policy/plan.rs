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
    let Input { spec, now, generation, .. } = *input;
    let mut p = Plan::default();
    let old = input.status.cloned().unwrap_or_default();
    let mut st = PushPolicyStatus { observed_generation: generation, ..old.clone() };
    let v = validate(input);
    let (mut records, finished) = refresh_records(&old.recent_runs, &input.runs, now);
    p.events.extend(finished.iter().filter_map(finished_event));
    p.finished = finished;
    let targets: Vec<&String> = input.repositories.iter().filter(|(_, ok)| **ok).map(|(n, _)| n).collect();
    let healthy = v.problems.is_empty() && v.missing.is_empty();
    let mut runs = Runs { input, targets: &targets, healthy, p: &mut p, records: &mut records, next_wake: None };
    let mut schedule_status = runs.schedules(&v.parsed, &old.schedules);
    st.maintenance = None;
    if let (Some(m), Some(Ok(cron))) = (&spec.maintenance, &v.maintenance) {
        st.maintenance = Some(runs.maintenance(m, cron, old.maintenance.as_ref()));
    }
    let next_wake = runs.next_wake;
    summarize(&mut records, &mut schedule_status, st.maintenance.as_mut());
    st.success_rate = success_rate(&records);
    st.recent_runs = records;
    st.schedules = schedule_status;
    (p.delete_jobs, p.delete_pods) = beyond_history(spec, &input.runs);
    set_conditions(&mut st, &v, &targets, spec, generation, now);
    p.status = st;
    p.requeue = requeue(next_wake, &input.runs, now);
    p
}

/// What is wrong with the policy, and its parsed schedules.
struct Validated<'a> {
    parsed: Vec<(&'a Schedule, CronSchedule)>,
    maintenance: Option<Result<CronSchedule, String>>,
    /// Every schedule must parse: a policy half applied is worse than one that says why not.
    problems: Vec<String>,
    /// Named Repositories that do not exist.
    missing: Vec<&'a String>,
}

fn validate<'a>(input: &'a Input) -> Validated<'a> {
    let spec = input.spec;
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
    let missing = input.repositories.iter().filter(|(_, ok)| !**ok).map(|(n, _)| n).collect();
    Validated { parsed, maintenance, problems, missing }
}

/// The recorded runs brought up to date with what became of them; the runs that finished since.
fn refresh_records(old: &[RunRecord], runs: &[RunView], now: DateTime<Utc>) -> (Vec<RunRecord>, Vec<Finished>) {
    let mut records = old.to_vec();
    let mut finished = Vec::new();
    for r in runs {
        match records.iter_mut().find(|x| x.job.as_deref() == Some(r.name.as_str())) {
            Some(rec) => {
                let was_active = rec.result == RunResult::Running;
                if rec.result != r.outcome.result() {
                    rec.result = r.outcome.result();
                    rec.reason = r.reason.clone();
                    rec.message = r.message.clone();
                    if was_active && r.outcome != Outcome::Active {
                        finished.push(Finished { run: r.clone() });
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
                        finished.push(Finished { run: r.clone() });
                    }
                }
            }
        }
    }
    // A run still recorded as running whose job is gone (deleted by hand) is closed.
    for rec in records.iter_mut().filter(|r| r.result == RunResult::Running) {
        let gone = rec.job.as_ref().is_some_and(|j| !runs.iter().any(|r| &r.name == j));
        if gone && now - chrono_of(&rec.scheduled_time.0) > chrono::Duration::minutes(10) {
            rec.result = RunResult::Unknown;
            rec.reason = Some("Deleted".into());
            rec.message = Some("the job was deleted before it finished".into());
        }
    }
    (records, finished)
}

/// The Event of a run that finished.
fn finished_event(f: &Finished) -> Option<Event> {
    let r = &f.run;
    let what = if r.schedule == MAINTENANCE { "prune" } else { "push" };
    Some(match r.outcome {
        Outcome::Active => return None,
        Outcome::Failed => Event {
            warning: true,
            reason: "RunFailed".into(),
            note: format!(
                "{what} {} of repository {} failed: {}",
                r.name,
                r.repository,
                r.message.clone().or(r.reason.clone()).unwrap_or_default()
            ),
        },
        Outcome::Succeeded => {
            let mut note = format!("{what} {} of repository {} succeeded", r.name, r.repository);
            if r.forgotten > 0 {
                note.push_str(&format!("; retention forgot {} snapshot(s)", r.forgotten));
            }
            if let Some(b) = r.bytes_reclaimed {
                note.push_str(&format!("; reclaimed {b} bytes"));
            }
            Event { warning: false, reason: "RunSucceeded".into(), note }
        }
    })
}

/// What one scheduled time gives for one repository.
enum RunDecision {
    /// Created already (before a restart): nothing to do.
    Exists,
    /// Recorded, not run: (result, reason, message, an Event's warning flag if one is sent).
    NotRun {
        result: RunResult,
        reason: &'static str,
        message: String,
        event: Option<bool>,
    },
    Create,
}

/// The scheduling of one reconcile: the runs due now, the records they leave, the next wake.
struct Runs<'a, 'b> {
    input: &'a Input<'a>,
    targets: &'a [&'a String],
    healthy: bool,
    p: &'b mut Plan,
    records: &'b mut Vec<RunRecord>,
    next_wake: Option<DateTime<Utc>>,
}

impl Runs<'_, '_> {
    /// The status of schedule `name` and what is due: the latest time already dealt with is
    /// the status's, or a job created for a later time (the status write can lag a restart), or
    /// the policy's creation.
    fn evaluate(&mut self, name: &str, cron: &CronSchedule, prev: Option<&ScheduleStatus>) -> (ScheduleStatus, Due) {
        let input = self.input;
        let from_runs = input.runs.iter().filter(|r| r.schedule == name).filter_map(|r| r.scheduled).max();
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
        let deadline = input.spec.starting_deadline_seconds.map(chrono::Duration::seconds);
        let d = due(cron, handled, input.now, deadline);
        let mut s = prev.cloned().unwrap_or_else(|| ScheduleStatus { name: name.to_string(), ..Default::default() });
        s.name = name.to_string();
        s.next_schedule_time = d.next.map(time);
        if let Some(n) = d.next {
            self.next_wake = Some(self.next_wake.map_or(n, |w| w.min(n)));
        }
        (s, d)
    }

    /// The push schedules, offline ones first: an online run due at the same moment as an
    /// offline one of the same repository gives way to it.
    fn schedules(&mut self, parsed: &[(&Schedule, CronSchedule)], old: &[ScheduleStatus]) -> Vec<ScheduleStatus> {
        let mut parsed: Vec<&(&Schedule, CronSchedule)> = parsed.iter().collect();
        parsed.sort_by_key(|(s, _)| s.mode != Mode::Offline);
        let mut offline_active = self.input.offline_active.clone();
        let mut out = Vec::new();
        for (sched, cron) in parsed {
            let (mut s, d) = self.evaluate(&sched.name, cron, old.iter().find(|s| s.name == sched.name));
            if let Some(t) = d.scheduled {
                s.last_handled_time = Some(time(t));
                self.schedule_due(sched, t, &d, &mut s, &mut offline_active);
            }
            out.push(s);
        }
        out
    }

    /// Scheduled time `t` of `sched` is due: a job per target repository, or a record of why not.
    fn schedule_due(
        &mut self,
        sched: &Schedule,
        t: DateTime<Utc>,
        d: &Due,
        s: &mut ScheduleStatus,
        offline_active: &mut BTreeSet<String>,
    ) {
        let Input { name, spec, now, .. } = *self.input;
        if spec.suspend {
            return; // Passed while suspended: neither run nor missed.
        }
        if !self.healthy {
            let rec =
                record(&sched.name, "-", t, None, RunResult::Skipped, "PolicyNotReady", "the policy is not ready");
            self.records.push(rec);
            return;
        }
        if d.missed_before > 0 {
            *self.p.missed.entry(sched.name.clone()).or_default() += d.missed_before;
            self.p.events.push(Event {
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
        let name_repo = spec.repository_selector.is_some();
        for repo in self.targets {
            let job = job_name(name, &sched.name, name_repo.then_some(repo.as_str()), t);
            match self.decide(sched, repo, &job, t, d, now, offline_active) {
                RunDecision::Exists => {}
                RunDecision::NotRun { result, reason, message, event } => {
                    if result == RunResult::Missed {
                        *self.p.missed.entry(sched.name.clone()).or_default() += 1;
                    }
                    if let Some(warning) = event {
                        let kind = if result == RunResult::Missed { "MissedSchedule" } else { "Skipped" };
                        self.p.events.push(Event {
                            warning,
                            reason: kind.into(),
                            note: format!("schedule {} for repository {repo}: {message}", sched.name),
                        });
                    }
                    self.records.push(record(&sched.name, repo, t, None, result, reason, &message));
                }
                RunDecision::Create => {
                    self.p.create_jobs.push(NewJob {
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
                            retention: spec.retention.clone(),
                        },
                    });
                    self.records.push(record(&sched.name, repo, t, Some(job), RunResult::Running, "Created", ""));
                    s.last_schedule_time = Some(time(t));
                    if sched.mode == Mode::Offline {
                        offline_active.insert((*repo).clone());
                    }
                }
            }
        }
    }

    /// Whether the run of `sched` at `t` for `repo` (job `job`) is created, and why not.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        sched: &Schedule,
        repo: &str,
        job: &str,
        t: DateTime<Utc>,
        d: &Due,
        now: DateTime<Utc>,
        offline_active: &BTreeSet<String>,
    ) -> RunDecision {
        let runs = &self.input.runs;
        if d.too_late {
            let message = format!(
                "started too late: {}s after {} is past startingDeadlineSeconds",
                (now - t).num_seconds(),
                t.format("%H:%M UTC")
            );
            return RunDecision::NotRun {
                result: RunResult::Missed,
                reason: "MissedStartingDeadline",
                message,
                event: Some(true),
            };
        }
        if runs.iter().any(|r| r.name == job) {
            return RunDecision::Exists;
        }
        if let Some(prev) =
            runs.iter().find(|r| r.schedule == sched.name && r.repository == repo && r.outcome == Outcome::Active)
        {
            let message = format!("the previous run {} has not finished", prev.name);
            return RunDecision::NotRun {
                result: RunResult::Skipped,
                reason: "PreviousRunActive",
                message,
                event: Some(true),
            };
        }
        if sched.mode == Mode::Online && offline_active.contains(repo) {
            return RunDecision::NotRun {
                result: RunResult::Skipped,
                reason: "OfflinePushRunning",
                message: "an offline push of the repository is running; this online run is skipped".into(),
                event: Some(false),
            };
        }
        RunDecision::Create
    }

    /// Maintenance: a prune pod per repository.
    fn maintenance(&mut self, m: &Maintenance, cron: &CronSchedule, prev: Option<&ScheduleStatus>) -> ScheduleStatus {
        let Input { name, spec, .. } = *self.input;
        let name_repo = spec.repository_selector.is_some();
        let (mut s, d) = self.evaluate(MAINTENANCE, cron, prev);
        let Some(t) = d.scheduled else { return s };
        s.last_handled_time = Some(time(t));
        if spec.suspend {
            return s;
        }
        if d.too_late {
            *self.p.missed.entry(MAINTENANCE.into()).or_default() += 1;
            return s;
        }
        if !self.healthy {
            return s;
        }
        for repo in self.targets {
            let pod = job_name(name, MAINTENANCE, name_repo.then_some(repo.as_str()), t);
            let runs = &self.input.runs;
            if runs.iter().any(|r| r.name == pod) {
                continue;
            }
            if runs.iter().any(|r| r.schedule == MAINTENANCE && &r.repository == *repo && r.outcome == Outcome::Active)
            {
                let msg = "the previous prune has not finished";
                self.records.push(record(MAINTENANCE, repo, t, None, RunResult::Skipped, "PreviousRunActive", msg));
                continue;
            }
            self.p.create_prunes.push(NewPrune {
                name: pod.clone(),
                repository: (*repo).clone(),
                scheduled: t,
                max_unused_percent: m.max_unused_percent.unwrap_or(5),
                wait_seconds: m.wait_seconds.unwrap_or(600),
            });
            self.records.push(record(MAINTENANCE, repo, t, Some(pod), RunResult::Running, "Created", ""));
            s.last_schedule_time = Some(time(t));
        }
        s
    }
}

/// Records newest first, bounded; each schedule's last result.
fn summarize(records: &mut Vec<RunRecord>, schedules: &mut [ScheduleStatus], maintenance: Option<&mut ScheduleStatus>) {
    records.sort_by(|a, b| {
        chrono_of(&b.scheduled_time.0).cmp(&chrono_of(&a.scheduled_time.0)).then(a.schedule.cmp(&b.schedule))
    });
    records.dedup_by(|a, b| a.job.is_some() && a.job == b.job);
    records.truncate(RECENT_RUNS);
    for s in schedules.iter_mut().chain(maintenance) {
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
}

/// The share of push runs that succeeded among those that ended (missed ones count as failed).
fn success_rate(records: &[RunRecord]) -> Option<f64> {
    let counted: Vec<&RunRecord> = records
        .iter()
        .filter(|r| {
            r.schedule != MAINTENANCE
                && matches!(r.result, RunResult::Succeeded | RunResult::Failed | RunResult::Missed)
        })
        .collect();
    (!counted.is_empty()).then(|| {
        let ok = counted.iter().filter(|r| r.result == RunResult::Succeeded).count() as f64;
        (ok / counted.len() as f64 * 1000.0).round() / 1000.0
    })
}

/// Finished runs beyond the history limits, oldest first, only ours: (jobs, prune pods).
fn beyond_history(spec: &PushPolicySpec, runs: &[RunView]) -> (Vec<String>, Vec<String>) {
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum RunKind {
        PushJob,
        PrunePod,
    }
    let mut by_outcome: BTreeMap<(bool, RunKind), Vec<&RunView>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.outcome != Outcome::Active) {
        let kind = if r.schedule == MAINTENANCE { RunKind::PrunePod } else { RunKind::PushJob };
        by_outcome.entry((r.outcome == Outcome::Succeeded, kind)).or_default().push(r);
    }
    let (mut jobs, mut pods) = (vec![], vec![]);
    for ((ok, kind), mut runs) in by_outcome {
        runs.sort_by(|a, b| b.finished.cmp(&a.finished).then(b.name.cmp(&a.name)));
        let limit = match (kind, ok) {
            (RunKind::PrunePod, _) => 1,
            (RunKind::PushJob, true) => spec.successful_jobs_history_limit.max(0) as usize,
            (RunKind::PushJob, false) => spec.failed_jobs_history_limit.max(0) as usize,
        };
        let names = runs.into_iter().skip(limit).map(|r| r.name.clone());
        match kind {
            RunKind::PrunePod => pods.extend(names),
            RunKind::PushJob => jobs.extend(names),
        }
    }
    (jobs, pods)
}

fn set_conditions(
    st: &mut PushPolicyStatus,
    v: &Validated,
    targets: &[&String],
    spec: &PushPolicySpec,
    g: Option<i64>,
    now: DateTime<Utc>,
) {
    let c = &mut st.conditions;
    if !v.problems.is_empty() {
        let msg = v.problems.join("; ");
        set_condition(c, conditions::READY, false, "InvalidSpec", &msg, g, now);
        set_condition(c, conditions::STALLED, true, "InvalidSpec", &msg, g, now);
    } else if !v.missing.is_empty() {
        let msg = format!(
            "Repository {} not found in this namespace; no push is scheduled until it exists",
            v.missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
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
}

/// While a run is active the policy looks again this often: a finished job wakes the policy
/// through its watch, but the job cache the policy reads can lag that event, and the run's
/// result, history trim and metrics would otherwise wait for the next scheduled time.
pub const ACTIVE_RUN_REQUEUE: Duration = Duration::from_secs(5);

/// Wake at the next scheduled time (a little after, so "now" is past it), or at the resync
/// interval; sooner while runs are active, to record their results.
fn requeue(next_wake: Option<DateTime<Utc>>, runs: &[RunView], now: DateTime<Utc>) -> Duration {
    let wait = next_wake
        .map(|n| (n - now).to_std().unwrap_or_default() + Duration::from_millis(200))
        .unwrap_or(MAX_REQUEUE)
        .min(MAX_REQUEUE);
    if runs.iter().any(|r| r.outcome == Outcome::Active) { wait.min(ACTIVE_RUN_REQUEUE) } else { wait }
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
