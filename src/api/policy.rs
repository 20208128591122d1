//! PushPolicy: when to push (schedules), what to keep (retention) and when to prune.

use super::conditions::conditions_schema;
use super::{LocalRef, Mode, Priority};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// What the CRD accepts as a cron expression (the controller checks the rest, such as ranges).
pub const CRON_PATTERN: &str = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|([0-9*,/-]+)\s+([0-9*,/-]+)\s+([0-9*,/?LW-]+)\s+([0-9A-Za-z*,/-]+)\s+([0-9A-Za-z*,/?L#-]+))$";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rediacc.io",
    version = "v1alpha1",
    kind = "PushPolicy",
    namespaced,
    status = "PushPolicyStatus",
    shortname = "pp",
    category = "push",
    plural = "pushpolicies",
    printcolumn(name = "Repository", type_ = "string", json_path = ".spec.repositoryRef.name"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Success", type_ = "number", json_path = ".status.successRate"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.repositoryRef) != has(self.repositorySelector)").message("set exactly one of repositoryRef and repositorySelector"))]
#[x_kube(validation = Rule::new("self.schedules.all(s, self.schedules.exists_one(t, t.name == s.name))").message("schedule names must be unique"))]
#[serde(rename_all = "camelCase")]
pub struct PushPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_ref: Option<LocalRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_selector: Option<LabelSelector>,
    #[schemars(length(min = 1, max = 16))]
    pub schedules: Vec<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    #[serde(default)]
    pub suspend: bool,
    /// A run missed by more than this is skipped (one late run at most, never a burst).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
    #[serde(default = "default_success_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: i32,
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: i32,
    /// Scheduled prune of the Repository's store (deletes data no snapshot references).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Scheduled restore tests: each run restores into scratch PVCs (deleted afterwards,
    /// whatever happens), checks the data, and records the result and the time it took in the
    /// Repository's status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub restore_tests: Vec<RestoreTest>,
}

/// One scheduled restore test.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTest {
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Five-field cron or a macro, as for schedules.
    #[schemars(length(max = 128), regex(pattern = CRON_PATTERN))]
    pub cron: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// Which snapshot to test (the latest of any mode when empty).
    #[serde(default)]
    pub snapshot: crate::api::SnapshotSelector,
    /// Storage class of the scratch PVCs (default: the source PVCs').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// The check after the restore worker's own (see RestoreJob `check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::api::UserCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<crate::api::CleanupSpec>,
    /// Default P5: a test gives way to every push.
    #[serde(default = "lowest_priority")]
    pub priority: Priority,
}

fn lowest_priority() -> Priority {
    Priority::P5
}

/// When and how to prune.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Five-field cron or a macro, as for schedules.
    #[schemars(length(max = 128), regex(pattern = CRON_PATTERN))]
    pub cron: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// Repack (most unused packs first) until the unreferenced bytes left are at most this
    /// percentage of the referenced ones (default 5, as restic's --max-unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_unused_percent: Option<i32>,
    /// How long the prune waits for pushes that started before it, before it leaves the
    /// deletion to the next run (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub wait_seconds: Option<i64>,
}

fn default_success_history() -> i32 {
    3
}
fn default_failed_history() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    pub mode: Mode,
    /// Five-field cron (minute hour day-of-month month day-of-week) or @hourly, @daily, ...
    #[schemars(length(max = 128), regex(pattern = CRON_PATTERN))]
    pub cron: String,
    /// IANA time zone (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub priority: Priority,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeepRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_last: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_hourly: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_daily: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_weekly: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_monthly: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_yearly: Option<i32>,
    /// Keep everything newer than this duration (e.g. 7d, 36h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+[ymwdh])+$"))]
    pub keep_within: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Rules for every snapshot, unless a per-mode rule is given.
    #[serde(flatten)]
    pub all: KeepRules,
    /// Rules for online snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<KeepRules>,
    /// Rules for offline snapshots (the safety anchors: keep them longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline: Option<KeepRules>,
    /// IANA time zone in which hours, days, weeks, months and years are counted (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
}

impl KeepRules {
    pub fn to_policy(&self) -> Result<crate::store::retention::KeepPolicy, String> {
        let n = |v: Option<i32>| v.map(|v| v.max(0) as u32);
        Ok(crate::store::retention::KeepPolicy {
            last: n(self.keep_last),
            hourly: n(self.keep_hourly),
            daily: n(self.keep_daily),
            weekly: n(self.keep_weekly),
            monthly: n(self.keep_monthly),
            yearly: n(self.keep_yearly),
            within: self.keep_within.as_deref().map(crate::store::retention::Within::parse).transpose()?,
        })
    }
}

impl RetentionSpec {
    /// The rules in the store's terms; an error names what is wrong.
    pub fn to_rules(&self) -> Result<(crate::store::forget::Rules, Option<chrono_tz::Tz>), String> {
        let rules = crate::store::forget::Rules {
            default: self.all.to_policy()?,
            online: self.online.as_ref().map(KeepRules::to_policy).transpose()?,
            offline: self.offline.as_ref().map(KeepRules::to_policy).transpose()?,
        };
        let tz = self
            .time_zone
            .as_deref()
            .map(|z| z.parse::<chrono_tz::Tz>().map_err(|_| format!("unknown time zone {z:?}")))
            .transpose()?;
        Ok((rules, tz))
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    pub name: String,
    /// The scheduled time of the last job created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The latest scheduled time dealt with: run, skipped, missed or passed while suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
}

/// What became of a scheduled run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum RunResult {
    /// Its PushJob (or prune pod) was created and has not finished.
    Running,
    Succeeded,
    Failed,
    /// Not started, on purpose (the previous run still active, an offline push running, ...).
    Skipped,
    /// Not started in time (the operator was down, or past startingDeadlineSeconds).
    Missed,
    /// Its job was deleted before it finished.
    Unknown,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Running => "Running",
            RunResult::Succeeded => "Succeeded",
            RunResult::Failed => "Failed",
            RunResult::Skipped => "Skipped",
            RunResult::Missed => "Missed",
            RunResult::Unknown => "Unknown",
        }
    }
}

/// One scheduled run and what became of it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// The schedule's name ("maintenance" for prunes).
    pub schedule: String,
    pub repository: String,
    pub scheduled_time: Time,
    /// The PushJob (or prune Pod) created, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub result: RunResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushPolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleStatus>,
    /// Succeeded over succeeded, failed and missed runs among the recent ones (skips by design,
    /// such as an online run during an offline push, do not count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// The most recent runs, newest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_runs: Vec<RunRecord>,
    /// Maintenance (prune) runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<ScheduleStatus>,
}
