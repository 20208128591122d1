//! The PushPolicy plan with fixed clocks: what is created, skipped, missed and trimmed.

use super::plan::*;
use super::*;
use chrono::{DateTime, Utc};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn sched(name: &str, mode: Mode, cron: &str) -> Schedule {
    Schedule { name: name.into(), mode, cron: cron.into(), time_zone: None, priority: Priority::P4 }
}

fn spec(schedules: Vec<Schedule>) -> PushPolicySpec {
    PushPolicySpec {
        repository_ref: Some(LocalRef { name: "shop".into() }),
        repository_selector: None,
        schedules,
        retention: None,
        suspend: false,
        starting_deadline_seconds: None,
        successful_jobs_history_limit: 3,
        failed_jobs_history_limit: 1,
        maintenance: None,
        restore_tests: vec![],
    }
}

struct World {
    spec: PushPolicySpec,
    status: Option<PushPolicyStatus>,
    created: DateTime<Utc>,
    runs: Vec<RunView>,
    offline_active: BTreeSet<String>,
    repositories: BTreeMap<String, bool>,
}

impl World {
    fn new(spec: PushPolicySpec, created: &str) -> World {
        World {
            spec,
            status: None,
            created: t(created),
            runs: vec![],
            offline_active: BTreeSet::new(),
            repositories: BTreeMap::from([("shop".to_string(), true)]),
        }
    }

    /// One reconcile at `now`; created jobs appear as active runs, the status is kept.
    fn at(&mut self, now: &str) -> Plan {
        let p = plan(&Input {
            name: "nightly",
            spec: &self.spec,
            status: self.status.as_ref(),
            generation: Some(1),
            created: self.created,
            now: t(now),
            repositories: self.repositories.clone(),
            runs: self.runs.clone(),
            offline_active: self.offline_active.clone(),
        });
        let created = p.create_jobs.iter().map(|j| (&j.name, j.schedule.as_str(), &j.repository, j.scheduled));
        let pruned = p.create_prunes.iter().map(|j| (&j.name, MAINTENANCE, &j.repository, j.scheduled));
        for (name, schedule, repository, scheduled) in created.chain(pruned) {
            self.runs.push(RunView {
                name: name.clone(),
                schedule: schedule.into(),
                repository: repository.clone(),
                scheduled: Some(scheduled),
                outcome: Outcome::Active,
                finished: None,
                reason: None,
                message: None,
                forgotten: 0,
                bytes_reclaimed: None,
                store_bytes: None,
            });
        }
        self.runs.retain(|r| !p.delete_jobs.contains(&r.name) && !p.delete_pods.contains(&r.name));
        self.status = Some(p.status.clone());
        p
    }

    fn finish(&mut self, name: &str, ok: bool, at: &str) {
        let r = self.runs.iter_mut().find(|r| r.name == name).unwrap();
        r.outcome = if ok { Outcome::Succeeded } else { Outcome::Failed };
        r.finished = Some(t(at));
        if !ok {
            r.reason = Some("WorkerFailed".into());
            r.message = Some("store unreachable".into());
        }
    }

    fn names(p: &Plan) -> Vec<String> {
        p.create_jobs.iter().map(|j| j.name.clone()).collect()
    }
}

fn cond<'a>(st: &'a PushPolicyStatus, ty: &str) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    st.conditions.iter().find(|c| c.type_ == ty).unwrap()
}

#[test]
fn an_every_minute_schedule_creates_one_job_per_minute_with_a_deterministic_name() {
    let mut w = World::new(spec(vec![sched("minutely", Mode::Online, "* * * * *")]), "2026-11-26T07:00:30Z");
    // Before the first boundary after creation: nothing, wake at 07:01.
    let p = w.at("2026-11-26T07:00:40Z");
    assert!(p.create_jobs.is_empty());
    assert!(p.requeue <= Duration::from_secs(21) && p.requeue >= Duration::from_secs(20), "{:?}", p.requeue);
    assert_eq!(p.status.schedules[0].next_schedule_time, Some(time(t("2026-11-26T07:01:00Z"))));
    // At the boundary: one job, named by policy, schedule and scheduled minute.
    let p = w.at("2026-11-26T07:01:00.300Z");
    let minute = t("2026-11-26T07:01:00Z").timestamp() / 60;
    assert_eq!(World::names(&p), [format!("nightly-minutely-{minute}")]);
    let j = &p.create_jobs[0];
    assert_eq!((j.spec.mode, j.spec.priority), (Mode::Online, Priority::P4));
    assert_eq!(j.spec.repository_ref.name, "shop");
    assert!(j.spec.reason.as_deref().unwrap().contains("schedule minutely of PushPolicy nightly"));
    assert_eq!(p.status.schedules[0].last_schedule_time, Some(time(t("2026-11-26T07:01:00Z"))));
    assert_eq!(p.status.recent_runs[0].result, RunResult::Running);
    // Later in the same minute: nothing new.
    assert!(w.at("2026-11-26T07:01:40Z").create_jobs.is_empty());
    w.finish(&format!("nightly-minutely-{minute}"), true, "2026-11-26T07:01:50Z");
    let p = w.at("2026-11-26T07:02:00.100Z");
    assert_eq!(p.create_jobs.len(), 1);
    assert_eq!(p.finished.len(), 1, "the first run's result is recorded");
    assert!(p.events.iter().any(|e| e.reason == "RunSucceeded"));
    assert_eq!(p.status.success_rate, Some(1.0));
}

#[test]
fn a_restart_at_the_boundary_never_creates_a_second_job() {
    let mut w = World::new(spec(vec![sched("minutely", Mode::Online, "* * * * *")]), "2026-11-26T07:00:30Z");
    let first = w.at("2026-11-26T07:01:00.100Z");
    assert_eq!(first.create_jobs.len(), 1);
    // The operator died after creating the job, before its status write: the status is lost.
    w.status = None;
    let again = w.at("2026-11-26T07:01:02Z");
    assert!(again.create_jobs.is_empty(), "the job exists: {:?}", World::names(&again));
    assert_eq!(again.status.schedules[0].last_schedule_time, None);
    assert_eq!(again.status.recent_runs.len(), 1, "the existing job is recorded");
    // And a second operator computing the same plan would name the job the same.
    let mut other = World::new(spec(vec![sched("minutely", Mode::Online, "* * * * *")]), "2026-11-26T07:00:30Z");
    assert_eq!(World::names(&other.at("2026-11-26T07:01:00.900Z")), World::names(&first));
}

#[test]
fn missed_runs_give_one_late_run_or_a_skip_never_a_burst() {
    let mut s = spec(vec![sched("hourly", Mode::Online, "0 * * * *")]);
    let mut w = World::new(s.clone(), "2026-11-26T00:30:00Z");
    w.at("2026-11-26T01:00:00Z");
    let first = w.runs[0].name.clone();
    w.finish(&first, true, "2026-11-26T01:05:00Z");
    // Down from 01:05 to 05:10: one run, for 05:00; 02:00, 03:00 and 04:00 counted as missed.
    let p = w.at("2026-11-26T05:10:00Z");
    assert_eq!(p.create_jobs.len(), 1);
    assert_eq!(p.create_jobs[0].scheduled, t("2026-11-26T05:00:00Z"));
    assert_eq!(p.missed.get("hourly"), Some(&3));
    assert!(p.events.iter().any(|e| e.reason == "MissedSchedule" && e.note.contains("3 run(s)")));

    // With a starting deadline of 5 minutes, 10 minutes late is a skip.
    s.starting_deadline_seconds = Some(300);
    let mut w = World::new(s, "2026-11-26T00:30:00Z");
    let p = w.at("2026-11-26T01:10:00Z");
    assert!(p.create_jobs.is_empty());
    assert_eq!(p.missed.get("hourly"), Some(&1));
    let rec = &p.status.recent_runs[0];
    assert_eq!((rec.result, rec.reason.as_deref()), (RunResult::Missed, Some("MissedStartingDeadline")));
    assert_eq!(p.status.schedules[0].last_result.as_deref(), Some("Missed (MissedStartingDeadline)"));
    assert_eq!(p.status.success_rate, Some(0.0), "a missed run counts against the success rate");
    // It is not retried later.
    assert!(w.at("2026-11-26T01:20:00Z").create_jobs.is_empty());
    // 4 minutes late is still on time.
    assert_eq!(w.at("2026-11-26T02:04:00Z").create_jobs.len(), 1);
}

#[test]
fn suspend_stops_jobs_and_resuming_does_not_catch_up() {
    let mut s = spec(vec![sched("minutely", Mode::Online, "* * * * *")]);
    s.suspend = true;
    let mut w = World::new(s, "2026-11-26T07:00:30Z");
    for now in ["2026-11-26T07:01:00Z", "2026-11-26T07:02:00Z", "2026-11-26T07:05:00Z"] {
        let p = w.at(now);
        assert!(p.create_jobs.is_empty());
        assert!(p.missed.is_empty(), "time passed while suspended is not missed");
    }
    let st = w.status.clone().unwrap();
    assert_eq!(cond(&st, "Ready").reason, "Suspended");
    w.spec.suspend = false;
    let p = w.at("2026-11-26T07:05:30Z");
    assert!(p.create_jobs.is_empty(), "07:05 passed while suspended");
    assert_eq!(w.at("2026-11-26T07:06:00Z").create_jobs.len(), 1);
}

#[test]
fn an_online_run_during_an_offline_push_is_skipped_and_recorded() {
    let mut w = World::new(
        spec(vec![sched("hourly", Mode::Online, "0 * * * *"), sched("weekly", Mode::Offline, "0 2 * * 0")]),
        "2026-11-28T00:00:00Z",
    );
    // An offline push (a pre-upgrade PushJob, not ours) runs at 01:00.
    w.offline_active.insert("shop".into());
    let p = w.at("2026-11-28T01:00:00Z");
    assert!(p.create_jobs.is_empty());
    let rec = &p.status.recent_runs[0];
    assert_eq!((rec.result, rec.reason.as_deref()), (RunResult::Skipped, Some("OfflinePushRunning")));
    assert!(p.events.iter().any(|e| e.reason == "Skipped" && !e.warning));
    assert_eq!(p.status.success_rate, None, "skips by design do not count");
    w.offline_active.clear();
    // Sunday 02:00: both fire; the offline one runs, the online one gives way.
    let p = w.at("2026-11-29T02:00:00Z");
    assert_eq!(p.create_jobs.len(), 1);
    assert_eq!(p.create_jobs[0].spec.mode, Mode::Offline);
    assert!(
        p.status
            .recent_runs
            .iter()
            .any(|r| r.schedule == "hourly" && r.reason.as_deref() == Some("OfflinePushRunning"))
    );
}

#[test]
fn a_run_whose_previous_run_is_still_active_is_skipped() {
    let mut w = World::new(spec(vec![sched("minutely", Mode::Online, "* * * * *")]), "2026-11-26T07:00:30Z");
    assert_eq!(w.at("2026-11-26T07:01:00Z").create_jobs.len(), 1);
    let p = w.at("2026-11-26T07:02:00Z");
    assert!(p.create_jobs.is_empty());
    assert_eq!(p.status.recent_runs[0].reason.as_deref(), Some("PreviousRunActive"));
}

#[test]
fn history_limits_delete_only_the_oldest_finished_runs() {
    let mut w = World::new(spec(vec![sched("minutely", Mode::Online, "* * * * *")]), "2026-11-26T07:00:30Z");
    for (i, ok) in [true, true, false, true, false, true, true].iter().enumerate() {
        let now = format!("2026-11-26T07:{:02}:00Z", i + 1);
        let p = w.at(&now);
        let name = p.create_jobs[0].name.clone();
        w.finish(&name, *ok, &format!("2026-11-26T07:{:02}:30Z", i + 1));
    }
    w.at("2026-11-26T07:07:45Z");
    let ok: Vec<_> = w.runs.iter().filter(|r| r.outcome == Outcome::Succeeded).map(|r| r.scheduled.unwrap()).collect();
    let failed: Vec<_> = w.runs.iter().filter(|r| r.outcome == Outcome::Failed).map(|r| r.scheduled.unwrap()).collect();
    assert_eq!(ok, [t("2026-11-26T07:04:00Z"), t("2026-11-26T07:06:00Z"), t("2026-11-26T07:07:00Z")]);
    assert_eq!(failed, [t("2026-11-26T07:05:00Z")]);
    let st = w.status.clone().unwrap();
    // 5 of 7 succeeded; deleted jobs keep their result in the status.
    assert_eq!(st.success_rate, Some(0.714));
    assert_eq!(st.recent_runs.len(), 7);
    assert!(
        st.recent_runs
            .iter()
            .any(|r| r.result == RunResult::Failed && r.message.as_deref() == Some("store unreachable"))
    );
}

#[test]
fn invalid_schedules_and_missing_repositories_stall_the_policy_and_create_nothing() {
    let mut bad = spec(vec![sched("a", Mode::Online, "0 0 31 2 *")]);
    bad.schedules[0].time_zone = None;
    let mut w = World::new(bad, "2026-11-26T00:00:00Z");
    let p = w.at("2026-11-27T00:00:00Z");
    assert!(p.create_jobs.is_empty());
    let c = cond(&p.status, "Stalled");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "InvalidSpec"));
    assert!(c.message.contains("schedule a") && c.message.contains("never matches"), "{}", c.message);

    let mut tz = spec(vec![sched("a", Mode::Online, "@daily")]);
    tz.schedules[0].time_zone = Some("Europe/Atlantis".into());
    let mut w = World::new(tz, "2026-11-26T00:00:00Z");
    let c = cond(&w.at("2026-11-27T00:00:00Z").status, "Ready").clone();
    assert!(c.message.contains("IANA"), "{}", c.message);

    let mut w = World::new(spec(vec![sched("a", Mode::Online, "@daily")]), "2026-11-26T00:00:00Z");
    w.repositories = BTreeMap::from([("shop".to_string(), false)]);
    let p = w.at("2026-11-27T00:00:00Z");
    assert!(p.create_jobs.is_empty());
    assert_eq!(cond(&p.status, "Ready").reason, "RepositoryNotFound");
    assert_eq!(p.status.recent_runs[0].reason.as_deref(), Some("PolicyNotReady"));
}

#[test]
fn a_selector_policy_creates_one_job_per_repository() {
    let mut s = spec(vec![sched("daily", Mode::Offline, "0 3 * * *")]);
    s.repository_ref = None;
    s.repository_selector = Some(Default::default());
    let mut w = World::new(s, "2026-11-26T00:00:00Z");
    w.repositories = BTreeMap::from([("db".to_string(), true), ("web".to_string(), true)]);
    let p = w.at("2026-11-26T03:00:00Z");
    let minute = t("2026-11-26T03:00:00Z").timestamp() / 60;
    assert_eq!(World::names(&p), [format!("nightly-daily-db-{minute}"), format!("nightly-daily-web-{minute}")]);
}

#[test]
fn names_are_bounded_and_deterministic() {
    let at = t("2026-11-26T03:00:00Z");
    let long = job_name(&"p".repeat(60), "hourly-online-pushes", Some("a-repository-with-a-long-name"), at);
    assert!(long.len() <= 52, "{long}");
    assert_eq!(long, job_name(&"p".repeat(60), "hourly-online-pushes", Some("a-repository-with-a-long-name"), at));
    assert_ne!(long, job_name(&"p".repeat(60), "hourly-online-pushez", Some("a-repository-with-a-long-name"), at));
    assert!(long.ends_with(&format!("-{}", at.timestamp() / 60)));
    assert!(long.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
}

#[test]
fn time_zones_and_dst_reach_the_jobs() {
    let mut s = spec(vec![sched("nightly", Mode::Offline, "30 2 * * *")]);
    s.schedules[0].time_zone = Some("Europe/Berlin".into());
    let mut w = World::new(s, "2026-03-28T00:00:00Z");
    // 02:30 does not exist on 2026-03-29 in Berlin: the run comes once, at 03:00 CEST.
    let p = w.at("2026-03-29T01:00:00Z");
    assert_eq!(p.create_jobs.len(), 1);
    assert_eq!(p.create_jobs[0].scheduled, t("2026-03-29T01:00:00Z"));
    assert_eq!(p.status.schedules[0].next_schedule_time, Some(time(t("2026-03-30T00:30:00Z"))));
}

#[test]
fn retention_goes_with_every_job_and_finished_runs_report_what_it_forgot() {
    let mut s = spec(vec![sched("minutely", Mode::Online, "* * * * *")]);
    s.retention = Some(RetentionSpec {
        all: KeepRules { keep_last: Some(3), ..Default::default() },
        offline: Some(KeepRules { keep_weekly: Some(8), ..Default::default() }),
        ..Default::default()
    });
    let mut w = World::new(s, "2026-11-26T07:00:30Z");
    let p = w.at("2026-11-26T07:01:00Z");
    assert_eq!(p.create_jobs[0].spec.retention.as_ref().unwrap().all.keep_last, Some(3));
    let name = p.create_jobs[0].name.clone();
    w.finish(&name, true, "2026-11-26T07:01:20Z");
    w.runs[0].forgotten = 2;
    let p = w.at("2026-11-26T07:01:30Z");
    assert_eq!(p.finished[0].run.forgotten, 2);
    assert!(p.events.iter().any(|e| e.note.contains("retention forgot 2 snapshot(s)")));
    // Bad retention durations stall the policy.
    w.spec.retention.as_mut().unwrap().all.keep_within = Some("7q".into());
    assert_eq!(cond(&w.at("2026-11-26T07:01:40Z").status, "Ready").reason, "InvalidSpec");
}

#[test]
fn maintenance_creates_a_prune_pod_per_repository() {
    let mut s = spec(vec![sched("hourly", Mode::Online, "0 * * * *")]);
    s.maintenance = Some(Maintenance {
        cron: "0 4 * * 0".into(),
        time_zone: None,
        max_unused_percent: Some(30),
        wait_seconds: None,
    });
    let mut w = World::new(s, "2026-11-28T00:00:00Z");
    let p = w.at("2026-11-29T04:00:00Z");
    assert_eq!(p.create_prunes.len(), 1);
    let pr = &p.create_prunes[0];
    assert_eq!((pr.max_unused_percent, pr.wait_seconds), (30, 600));
    assert_eq!(p.status.maintenance.as_ref().unwrap().last_schedule_time, Some(time(t("2026-11-29T04:00:00Z"))));
    // The pod: prune against the store, credentials from the Secret only, no volumes.
    let mut policy = PushPolicy::new("nightly", w.spec.clone());
    policy.metadata.namespace = Some("prod".into());
    policy.metadata.uid = Some("uid-p".into());
    let repo: Repository = serde_json::from_value(serde_json::json!({
        "apiVersion": "rediacc.io/v1alpha1", "kind": "Repository",
        "metadata": {"name": "shop", "namespace": "prod"},
        "spec": {"volumes": ["data"], "storage": {"bucket": "backups", "prefix": "prod", "endpoint": "http://minio:9000",
                 "credentialsSecretRef": {"name": "s3"}}}
    }))
    .unwrap();
    let pod = prune_pod(&policy, &repo, pr, &WorkerConfig::default());
    let c = &pod.spec.as_ref().unwrap().containers[0];
    let args = c.args.as_ref().unwrap().join(" ");
    assert!(args.starts_with("prune --store s3://backups/prod --max-unused 30 --wait 600s"), "{args}");
    assert!(!args.contains("AWS"), "{args}");
    let env = c.env.as_ref().unwrap();
    assert!(env.iter().any(|e| e.name == "AWS_SECRET_ACCESS_KEY" && e.value.is_none()));
    assert!(env.iter().any(|e| e.name == "PUSH_OPERATOR_TERMINATION_LOG"));
    assert_eq!(pod.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-p");
    assert_eq!(pod.metadata.labels.as_ref().unwrap()[POLICY_LABEL], "nightly");
    assert_eq!(pod.metadata.labels.as_ref().unwrap()[PRUNE_REPOSITORY_LABEL], "shop");
    assert_eq!(pod.spec.as_ref().unwrap().security_context.as_ref().unwrap().run_as_non_root, Some(true));
    // The pod's report reaches the metrics; finished pods beyond one are deleted.
    let name = pr.name.clone();
    w.finish(&name, true, "2026-11-29T04:01:00Z");
    w.runs.iter_mut().find(|r| r.name == name).unwrap().bytes_reclaimed = Some(1234);
    let p = w.at("2026-11-29T04:02:00Z");
    assert_eq!(p.finished[0].run.bytes_reclaimed, Some(1234));
    assert!(p.events.iter().any(|e| e.note.contains("reclaimed 1234 bytes")));
}

#[test]
fn job_and_pod_views_read_the_objects() {
    let mut job = PushJob::new(
        "nightly-minutely-1",
        PushJobSpec {
            repository_ref: LocalRef { name: "shop".into() },
            mode: Mode::Online,
            priority: Priority::P4,
            deadline_seconds: None,
            reason: None,
            ttl_seconds_after_finished: None,
            retention: None,
        },
    );
    job.metadata.labels = Some(BTreeMap::from([(SCHEDULE_LABEL.to_string(), "minutely".to_string())]));
    job.metadata.annotations =
        Some(BTreeMap::from([(SCHEDULED_ANNOTATION.to_string(), "2026-11-26T07:01:00Z".to_string())]));
    job.status = Some(PushJobStatus {
        phase: Some(Phase::Succeeded),
        stats: Some(JobStats { snapshots_forgotten: 4, ..Default::default() }),
        ..Default::default()
    });
    let v = job_view(&job);
    assert_eq!((v.outcome, v.forgotten, v.schedule.as_str()), (Outcome::Succeeded, 4, "minutely"));
    assert_eq!(v.scheduled, Some(t("2026-11-26T07:01:00Z")));

    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "annotations": {SCHEDULED_ANNOTATION: "2026-11-29T04:00:00Z"}},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "prune", "ready": false, "restartCount": 0,
            "image": "", "imageID": "", "state": {"terminated": {"exitCode": 1,
            "message": "{\"error\":\"cannot read the index: nothing deleted\"}"}}}]}
    }))
    .unwrap();
    let v = pod_view(&pod, "shop");
    assert_eq!(v.outcome, Outcome::Failed);
    assert_eq!(v.message.as_deref(), Some("cannot read the index: nothing deleted"));
}

/// The three strategies of config/samples plan as documented (docs/POLICIES.md).
#[test]
fn the_sample_policies_schedule_what_their_comments_say() {
    fn load(file: &str) -> PushPolicySpec {
        let path = format!("{}/config/samples/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if v["kind"] == "PushPolicy" {
                return serde_json::from_value(v["spec"].clone()).unwrap();
            }
        }
        panic!("no PushPolicy in {file}");
    }
    fn day(spec: PushPolicySpec, repo: &str, from: &str, to: &str) -> Vec<(String, DateTime<Utc>)> {
        let mut w = World::new(spec, from);
        w.repositories = BTreeMap::from([(repo.to_string(), true)]);
        let mut out = Vec::new();
        let mut now = t(from);
        while now < t(to) {
            let p = w.at(&now.to_rfc3339());
            assert_eq!(cond(&p.status, "Ready").status, "True", "{:?}", p.status.conditions);
            for j in &p.create_jobs {
                out.push((j.schedule.clone(), j.scheduled));
                let name = j.name.clone();
                w.finish(&name, true, &now.to_rfc3339());
            }
            now += chrono::Duration::minutes(15);
        }
        out
    }
    // E-commerce, Sunday 2026-11-29 in Berlin (UTC+1): online at 00, 04, ... local; offline
    // at 02:00 local = 01:00 UTC.
    let shop = day(load("pushpolicy-ecommerce.yaml"), "shop", "2026-11-28T22:50:00Z", "2026-11-29T23:00:00Z");
    let online: Vec<_> =
        shop.iter().filter(|(s, _)| s == "online-4h").map(|(_, t)| t.format("%H:%M").to_string()).collect();
    assert_eq!(online, ["23:00", "03:00", "07:00", "11:00", "15:00", "19:00"]);
    assert_eq!(
        shop.iter().filter(|(s, _)| s == "offline-weekly").map(|(_, t)| *t).collect::<Vec<_>>(),
        [t("2026-11-29T01:00:00Z")]
    );
    // Development: Friday 2026-11-27 in Istanbul (UTC+3): 08:00 to 18:00 local every 2 hours.
    let dev = day(load("pushpolicy-development.yaml"), "dev", "2026-11-27T00:00:00Z", "2026-11-28T23:00:00Z");
    let hours: Vec<_> = dev.iter().map(|(_, t)| t.format("%d %H:%M").to_string()).collect();
    assert_eq!(hours, ["27 05:00", "27 07:00", "27 09:00", "27 11:00", "27 13:00", "27 15:00"], "none on Saturday");
    // Production database: 24 hourly online runs, one offline at 03:00 New York (08:00 UTC),
    // and the online run at 08:00 gives way to it.
    let db =
        day(load("pushpolicy-production-database.yaml"), "orders-db", "2026-11-26T00:00:30Z", "2026-11-27T00:00:30Z");
    assert_eq!(
        db.iter().filter(|(s, _)| s == "nightly-offline").map(|(_, t)| *t).collect::<Vec<_>>(),
        [t("2026-11-26T08:00:00Z")]
    );
    // 01:00 to 23:00 (the policy was created after 00:00), less 08:00.
    assert_eq!(db.iter().filter(|(s, _)| s == "hourly").count(), 22);
}

#[test]
fn an_active_run_is_looked_at_again_within_seconds_and_an_idle_policy_sleeps_to_its_next_time() {
    let mut w = World::new(spec(vec![sched("hourly", Mode::Online, "0 * * * *")]), "2026-11-26T06:30:00Z");
    let p = w.at("2026-11-26T07:00:00.300Z");
    assert_eq!(p.create_jobs.len(), 1);
    // The job runs: its result, the history trim and the metrics must not wait for 08:00.
    let p = w.at("2026-11-26T07:00:10Z");
    assert!(p.requeue <= crate::controller::policy::plan::ACTIVE_RUN_REQUEUE, "{:?}", p.requeue);
    let name = p.status.recent_runs[0].job.clone().unwrap();
    w.finish(&name, true, "2026-11-26T07:00:20Z");
    let p = w.at("2026-11-26T07:00:21Z");
    assert!(p.requeue >= Duration::from_secs(60), "idle: the resync interval, not seconds: {:?}", p.requeue);
}
