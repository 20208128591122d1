//! Scheduled restore tests of a PushPolicy: which test RestoreJobs to create and which old ones
//! to delete. Pure; the controller creates and deletes.
//!
//! A test run is a RestoreJob into scratch PVCs (`newVolumes.deleteAfter`), named from
//! (policy, test, repository, scheduled time) like scheduled PushJobs, so a restart never runs a
//! test twice. The newest run of each test is always kept: its scheduled time is what the next
//! decision counts from.

use super::plan::{POLICY_LABEL, SCHEDULED_ANNOTATION, job_name};
use super::schedule::{CronSchedule, due};
use crate::api::*;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::time::Duration;

/// Label naming the test a RestoreJob runs.
pub const RESTORE_TEST_LABEL: &str = "rediacc.io/restore-test";
/// Finished runs kept per test and repository.
pub const KEEP_RUNS: usize = 3;

/// A test RestoreJob as the plan needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRun {
    pub name: String,
    pub test: String,
    pub repository: String,
    pub scheduled: DateTime<Utc>,
    pub finished: bool,
}

/// A test run to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTest {
    pub name: String,
    pub test: String,
    pub repository: String,
    pub scheduled: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TestPlan {
    pub create: Vec<NewTest>,
    pub delete: Vec<String>,
    /// Until the next scheduled test (`None`: no test scheduled).
    pub requeue: Option<Duration>,
    /// Tests whose cron does not parse (the CRD's pattern lets some through): (test, why).
    pub invalid: Vec<(String, String)>,
}

/// Decides for every (test, repository): one run for the latest due time not yet run (a run
/// missed by more than `deadline` is skipped), and the history beyond [`KEEP_RUNS`] deleted.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    policy: &str,
    tests: &[RestoreTest],
    repositories: &[String],
    name_repository: bool,
    suspended: bool,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
    runs: &[TestRun],
    deadline: Option<chrono::Duration>,
) -> TestPlan {
    let mut out = TestPlan::default();
    for t in tests {
        let s = match CronSchedule::parse(&t.cron, t.time_zone.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                out.invalid.push((t.name.clone(), e));
                continue;
            }
        };
        for repo in repositories {
            let mut mine: Vec<&TestRun> = runs.iter().filter(|r| r.test == t.name && r.repository == *repo).collect();
            mine.sort_by_key(|r| std::cmp::Reverse(r.scheduled));
            let handled = mine.first().map(|r| r.scheduled).unwrap_or(created).max(created);
            let d = due(&s, handled, now, deadline);
            if let (Some(at), false, false) = (d.scheduled, d.too_late, suspended) {
                let name = job_name(policy, &t.name, name_repository.then_some(repo.as_str()), at);
                out.create.push(NewTest { name, test: t.name.clone(), repository: repo.clone(), scheduled: at });
            }
            if let Some(next) = d.next {
                let wait = (next - now).to_std().unwrap_or_default();
                out.requeue = Some(out.requeue.map_or(wait, |r| r.min(wait)));
            }
            // The newest stays; finished runs beyond the limit go, oldest first.
            let finished: Vec<&&TestRun> = mine.iter().skip(1).filter(|r| r.finished).collect();
            out.delete.extend(finished.iter().skip(KEEP_RUNS.saturating_sub(1)).map(|r| r.name.clone()));
        }
    }
    out
}

/// The RestoreJob of one test run.
pub fn test_job(policy: &PushPolicy, test: &RestoreTest, t: &NewTest) -> RestoreJob {
    let mut j = RestoreJob::new(
        &t.name,
        RestoreJobSpec {
            repository_ref: LocalRef { name: t.repository.clone() },
            snapshot: test.snapshot.clone(),
            target: RestoreTarget {
                new_volumes: Some(NewVolumes {
                    name_template: Some("{volume}-{job}".into()),
                    storage_class_name: test.storage_class_name.clone(),
                    delete_after: true,
                    ..Default::default()
                }),
                in_place: None,
            },
            volumes: vec![],
            priority: test.priority,
            deadline_seconds: None,
            reason: Some(format!(
                "restore test {} of policy {}",
                test.name,
                policy.metadata.name.as_deref().unwrap_or("")
            )),
            cleanup: test.cleanup.clone(),
            check: test.check.clone(),
            ttl_seconds_after_finished: None,
        },
    );
    j.metadata.namespace = policy.metadata.namespace.clone();
    j.metadata.labels = Some(BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (POLICY_LABEL.to_string(), policy.metadata.name.clone().unwrap_or_default()),
        (RESTORE_TEST_LABEL.to_string(), test.name.clone()),
    ]));
    j.metadata.annotations = Some(BTreeMap::from([(SCHEDULED_ANNOTATION.to_string(), t.scheduled.to_rfc3339())]));
    use kube::Resource;
    j.metadata.owner_references = Some(policy.controller_owner_ref(&()).into_iter().collect());
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0).unwrap()
    }

    fn test(name: &str, cron: &str) -> RestoreTest {
        serde_json::from_value(serde_json::json!({"name": name, "cron": cron})).unwrap()
    }

    fn run(name: &str, scheduled: DateTime<Utc>, finished: bool) -> TestRun {
        TestRun { name: name.into(), test: "daily".into(), repository: "shop".into(), scheduled, finished }
    }

    #[test]
    fn a_due_test_runs_once_and_a_restart_finds_it_by_name() {
        let tests = [test("daily", "0 3 * * *")];
        let repos = ["shop".to_string()];
        let p = plan("p", &tests, &repos, false, false, at(0, 0), at(3, 1), &[], None);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].scheduled, at(3, 0));
        assert_eq!(p.create[0].name, job_name("p", "daily", None, at(3, 0)));
        // Once it exists, nothing more until tomorrow.
        let runs = [run(&p.create[0].name, at(3, 0), false)];
        let p2 = plan("p", &tests, &repos, false, false, at(0, 0), at(3, 5), &runs, None);
        assert!(p2.create.is_empty());
        assert_eq!(p2.requeue, Some(Duration::from_secs(23 * 3600 + 55 * 60)));
        // Nothing before the policy existed; nothing while suspended; nothing past the deadline.
        assert!(plan("p", &tests, &repos, false, false, at(3, 30), at(3, 31), &[], None).create.is_empty());
        assert!(plan("p", &tests, &repos, false, true, at(0, 0), at(3, 1), &[], None).create.is_empty());
        let late = plan("p", &tests, &repos, false, false, at(0, 0), at(5, 0), &[], Some(chrono::Duration::hours(1)));
        assert!(late.create.is_empty());
    }

    #[test]
    fn history_keeps_the_newest_and_the_last_finished_runs() {
        let tests = [test("daily", "0 3 * * *")];
        let repos = ["shop".to_string()];
        let runs: Vec<TestRun> =
            (0..6).map(|d| run(&format!("r{d}"), at(3, 0) - chrono::Duration::days(d), true)).collect();
        let p = plan("p", &tests, &repos, false, false, at(0, 0) - chrono::Duration::days(10), at(3, 30), &runs, None);
        assert_eq!(p.delete, vec!["r3", "r4", "r5"]);
        assert!(p.create.is_empty(), "today's run exists");
    }

    #[test]
    fn a_cron_that_does_not_parse_is_reported_not_run() {
        let p = plan("p", &[test("bad", "61 * * * *")], &["shop".into()], false, false, at(0, 0), at(3, 0), &[], None);
        assert_eq!(p.invalid.len(), 1);
        assert!(p.create.is_empty());
    }

    #[test]
    fn the_test_job_restores_into_scratch_volumes_it_deletes() {
        let policy: PushPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "rediacc.io/v1alpha1", "kind": "PushPolicy",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"repositoryRef": {"name": "shop"}, "schedules": [{"name": "s", "mode": "Offline", "cron": "@daily"}]}
        }))
        .unwrap();
        let t = test("daily", "@daily");
        let j = test_job(
            &policy,
            &t,
            &NewTest { name: "p-daily-1".into(), test: "daily".into(), repository: "shop".into(), scheduled: at(0, 0) },
        );
        let nv = j.spec.target.new_volumes.unwrap();
        assert!(nv.delete_after);
        assert_eq!(j.spec.priority, Priority::P5);
        assert_eq!(j.metadata.labels.unwrap()[RESTORE_TEST_LABEL], "daily");
        assert_eq!(j.metadata.owner_references.unwrap()[0].kind, "PushPolicy");
    }
}
