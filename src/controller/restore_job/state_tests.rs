use super::*;
use crate::controller::push_job::state::{WorkloadObs, parse_annotation};
use crate::restore_worker::{ResolvedVolume, RestoreFailure};
use chrono::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fn job(target: RestoreTarget) -> RestoreJob {
    let mut j = RestoreJob::new(
        "r1",
        RestoreJobSpec {
            repository_ref: LocalRef { name: "shop".into() },
            snapshot: SnapshotSelector::default(),
            target,
            volumes: vec![],
            priority: Priority::P3,
            deadline_seconds: None,
            reason: None,
            cleanup: None,
            check: None,
            ttl_seconds_after_finished: None,
        },
    );
    j.metadata.namespace = Some("ns".into());
    j.metadata.creation_timestamp = Some(Time(crate::api::time(t0()).0));
    j
}

fn in_place() -> RestoreJob {
    job(RestoreTarget { in_place: Some(InPlace {}), new_volumes: None })
}

fn new_volumes() -> RestoreJob {
    job(RestoreTarget { in_place: None, new_volumes: Some(NewVolumes::default()) })
}

fn repo() -> RepositorySpec {
    serde_json::from_value(serde_json::json!({"volumes": ["data"], "storage": {"bucket": "b"}})).unwrap()
}

fn web(replicas: Option<i32>, annotation: Option<&str>) -> WorkloadObs {
    WorkloadObs {
        workload: WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() },
        replicas,
        annotation: annotation.map(String::from),
    }
}

fn obs() -> Observed {
    Observed {
        now: t0() + chrono::Duration::seconds(1),
        repository: Some(repo()),
        volumes: vec!["data".into()],
        existing_claims: vec!["data".into()],
        workloads: vec![web(Some(2), None)],
        admitted: true,
        ..Default::default()
    }
}

fn resolved(consistency: Consistency) -> String {
    serde_json::to_string(&RestoreWorkerReport {
        resolved: vec![ResolvedVolume {
            volume: "data".into(),
            snapshot: "a".repeat(64),
            time: t0(),
            consistency,
            mode: Some(if consistency == Consistency::Consistent { Mode::Offline } else { Mode::Online }),
            bytes: 1 << 30,
            changed_during_read: vec![],
        }],
        alternatives: vec!["b".repeat(64)],
        ..Default::default()
    })
    .unwrap()
}

fn safety_report() -> String {
    serde_json::to_string(&crate::controller::push_job::state::WorkerReport {
        volumes: vec![VolumeResult {
            volume: "data".into(),
            snapshot: "c".repeat(64),
            files: 1,
            bytes_total: 1,
            bytes_new: 0,
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap()
}

fn restored() -> String {
    serde_json::to_string(&RestoreWorkerReport {
        stats: Some(RestoreStats { files: 3, bytes_total: 10, ..Default::default() }),
        cleaned: vec!["data/postmaster.pid".into()],
        ..Default::default()
    })
    .unwrap()
}

/// Applies decisions as the apply layer would (status stored, pods created/deleted,
/// scaling done), with the worker of each step ending as `outcome(step_pod)` says.
struct World {
    job: RestoreJob,
    obs: Observed,
    log: Vec<Action>,
}

impl World {
    fn new(job: RestoreJob, obs: Observed) -> World {
        World { job, obs, log: vec![] }
    }

    fn step(&mut self) -> Decision {
        let d = next(&self.job, &self.obs, &Settings::default());
        self.job.status = Some(d.status.clone());
        for a in &d.actions {
            self.log.push(a.clone());
            match a {
                Action::Workload(WorkloadAction::Annotate { value, .. }) => {
                    self.obs.workloads[0].annotation = Some(value.clone())
                }
                Action::Workload(WorkloadAction::RemoveAnnotation { .. }) => self.obs.workloads[0].annotation = None,
                Action::Workload(WorkloadAction::Scale { replicas, .. }) => {
                    self.obs.workloads[0].replicas = Some(*replicas)
                }
                Action::CreateClaim { name, .. } => self.obs.existing_claims.push(name.clone()),
                Action::CreateWorker { name, .. } => {
                    self.obs.pods.push(name.clone());
                    self.obs.worker = Some(WorkerObs::Running);
                }
                Action::Delete(o) => {
                    self.obs.pods.retain(|p| *p != o.name);
                    self.obs.existing_claims.retain(|p| *p != o.name);
                    if d.status.worker.as_deref() == Some(o.name.as_str()) {
                        self.obs.worker = None;
                    }
                }
            }
        }
        // The worker of the current step, seen as the pod list says.
        if let Some(w) = &d.status.worker
            && !self.obs.pods.contains(w)
        {
            self.obs.worker = None;
        }
        self.obs.now += chrono::Duration::seconds(1);
        d
    }

    fn phase(&self) -> RestorePhase {
        self.job.phase()
    }

    /// Steps until the phase is `p` (at most 20 steps).
    fn until(&mut self, p: RestorePhase) {
        for _ in 0..20 {
            if self.phase() == p {
                return;
            }
            self.step();
        }
        panic!("never reached {p:?}; at {:?}: {:?}", self.phase(), self.job.status.as_ref().unwrap().message);
    }

    /// Steps until the current worker is `step`'s and running.
    fn until_worker(&mut self, step: WorkerStep, attempt: i32) {
        let want = worker_name("r1", step, attempt);
        for _ in 0..10 {
            let st = self.job.status.clone().unwrap_or_default();
            if st.worker.as_deref() == Some(want.as_str()) && self.obs.pods.contains(&want) {
                return;
            }
            self.step();
        }
        panic!("worker {want} never started; at {:?}", self.phase());
    }

    fn worker_ends(&mut self, w: WorkerObs) {
        self.obs.worker = Some(w);
    }
}

fn ok(message: String) -> WorkerObs {
    WorkerObs::Succeeded { message }
}

fn failed(message: &str) -> WorkerObs {
    WorkerObs::Failed { message: message.into(), exit_code: Some(1), oom_killed: false }
}

fn to_in_place_restoring(w: &mut World, consistency: Consistency) {
    w.until_worker(WorkerStep::Resolve, 0);
    w.worker_ends(ok(resolved(consistency)));
    w.until(RestorePhase::Quiescing);
    w.until(RestorePhase::SafetyPush);
    w.until_worker(WorkerStep::SafetyPush, 0);
    w.worker_ends(ok(safety_report()));
    w.until(RestorePhase::Restoring);
    w.until_worker(WorkerStep::Restore, 0);
}

#[test]
fn in_place_restore_records_replicas_pushes_the_undo_snapshot_then_restores_and_resumes() {
    let mut w = World::new(in_place(), obs());
    to_in_place_restoring(&mut w, Consistency::Consistent);
    let st = w.job.status.clone().unwrap();
    assert_eq!(st.replicas[0].replicas, 2, "replicas recorded");
    assert_eq!(w.obs.workloads[0].replicas, Some(0), "stopped while the data is written");
    assert_eq!(st.volumes[0].snapshot.as_deref(), Some("a".repeat(64).as_str()), "pinned");
    assert_eq!(st.volumes[0].safety_snapshot.as_deref(), Some("c".repeat(64).as_str()));
    assert!(st.writing);
    // The undo push ran before the restore worker was created.
    let order: Vec<&Action> = w.log.iter().filter(|a| matches!(a, Action::CreateWorker { .. })).collect();
    let steps: Vec<WorkerStep> =
        order.iter().map(|a| if let Action::CreateWorker { step, .. } = a { *step } else { unreachable!() }).collect();
    assert_eq!(steps, vec![WorkerStep::Resolve, WorkerStep::SafetyPush, WorkerStep::Restore]);
    // Every worker ran alone: the previous pod was gone before the next was created.
    w.worker_ends(ok(restored()));
    w.until(RestorePhase::Succeeded);
    let st = w.job.status.clone().unwrap();
    assert_eq!(w.obs.workloads[0].replicas, Some(2), "workloads back");
    assert_eq!(w.obs.workloads[0].annotation, None);
    assert!(w.obs.pods.is_empty(), "worker pods deleted: {:?}", w.obs.pods);
    assert_eq!(st.cleaned, vec!["data/postmaster.pid".to_string()]);
    assert_eq!(st.undone, None);
    assert!(conditions::condition_true(&st.conditions, conditions::COMPLETE));
    assert!(!st.conditions.iter().any(|c| c.type_ == conditions::CONSISTENCY_WARNING));
}

#[test]
fn a_failure_at_any_in_place_step_brings_the_workloads_back_and_undoes_only_what_was_written() {
    // (step whose worker fails, undo expected)
    for (fail_at, undo) in [(WorkerStep::Resolve, false), (WorkerStep::SafetyPush, false), (WorkerStep::Restore, true)]
    {
        let mut w = World::new(in_place(), obs());
        w.until_worker(WorkerStep::Resolve, 0);
        if fail_at != WorkerStep::Resolve {
            w.worker_ends(ok(resolved(Consistency::Consistent)));
            w.until_worker(WorkerStep::SafetyPush, 0);
            if fail_at != WorkerStep::SafetyPush {
                w.worker_ends(ok(safety_report()));
                w.until_worker(WorkerStep::Restore, 0);
            }
        }
        w.worker_ends(failed("disk on fire"));
        w.step();
        if undo {
            assert_eq!(w.phase(), RestorePhase::Undoing, "{fail_at:?}");
            assert_eq!(w.obs.workloads[0].replicas, Some(0), "still stopped while the undo runs");
            w.until_worker(WorkerStep::Undo, 1);
            let undo_args = w.job.status.clone().unwrap();
            assert_eq!(undo_args.volumes[0].safety_snapshot.as_deref(), Some("c".repeat(64).as_str()));
            w.worker_ends(ok(restored()));
        }
        w.until(RestorePhase::Failed);
        let st = w.job.status.clone().unwrap();
        assert_eq!(w.obs.workloads[0].replicas, Some(2), "{fail_at:?}: workloads back");
        assert_eq!(st.undone, undo.then_some(true), "{fail_at:?}");
        assert!(w.obs.pods.is_empty(), "{fail_at:?}: {:?}", w.obs.pods);
        let reason = st.failure.unwrap().reason;
        assert_eq!(reason, fail_at.failure_reason(), "{fail_at:?}");
        assert!(!w.log.iter().any(|a| matches!(a, Action::Delete(o) if o.kind == CreatedKind::PersistentVolumeClaim)));
    }
}

#[test]
fn a_restore_worker_that_vanishes_is_undone_and_the_next_worker_waits_for_it_to_be_gone() {
    let mut w = World::new(in_place(), obs());
    to_in_place_restoring(&mut w, Consistency::Consistent);
    w.step(); // seen running
    assert!(w.job.status.as_ref().unwrap().worker_start_time.is_some());
    // Killed: the pod is deleted and gone before it reported.
    w.obs.pods.clear();
    w.obs.worker = None;
    w.step();
    assert_eq!(w.phase(), RestorePhase::Undoing);
    assert_eq!(w.job.status.as_ref().unwrap().failure.as_ref().unwrap().reason, "WorkerLost");
    w.until_worker(WorkerStep::Undo, 1);
    w.worker_ends(ok(restored()));
    w.until(RestorePhase::Failed);
    assert_eq!(w.obs.workloads[0].replicas, Some(2));
}

#[test]
fn a_worker_still_running_is_stopped_and_gone_before_the_undo_starts() {
    let mut w = World::new(in_place(), obs());
    to_in_place_restoring(&mut w, Consistency::Consistent);
    // The deadline passes while the restore worker runs.
    w.obs.now = t0() + chrono::Duration::hours(7);
    let d = w.step();
    assert_eq!(w.phase(), RestorePhase::Undoing);
    assert!(
        d.actions.iter().any(|a| matches!(a, Action::Delete(o) if o.name == worker_name("r1", WorkerStep::Restore, 0)))
    );
    // Pretend the pod lingers (terminating): no undo worker yet.
    w.obs.pods.push(worker_name("r1", WorkerStep::Restore, 0));
    w.obs.worker = Some(WorkerObs::Running);
    let d = w.step();
    assert!(!d.actions.iter().any(|a| matches!(a, Action::CreateWorker { .. })), "{:?}", d.actions);
    w.obs.pods.clear();
    w.obs.worker = None;
    w.until_worker(WorkerStep::Undo, 1);
    assert_eq!(w.job.status.as_ref().unwrap().failure.as_ref().unwrap().reason, "DeadlineExceeded");
}

#[test]
fn an_undo_that_keeps_failing_is_retried_then_reported_and_the_workloads_still_come_back() {
    let mut w = World::new(in_place(), obs());
    to_in_place_restoring(&mut w, Consistency::Consistent);
    w.worker_ends(failed("boom"));
    for attempt in 1..=UNDO_ATTEMPTS {
        w.until_worker(WorkerStep::Undo, attempt);
        w.worker_ends(failed("store unreachable"));
    }
    w.until(RestorePhase::Failed);
    let st = w.job.status.clone().unwrap();
    assert_eq!(st.failure.as_ref().unwrap().reason, "UndoFailed");
    assert!(st.failure.as_ref().unwrap().message.contains(&"c".repeat(64)), "names the undo snapshot");
    assert_eq!(st.undone, Some(false));
    assert_eq!(w.obs.workloads[0].replicas, Some(2));
}

#[test]
fn deleting_a_running_in_place_restore_unwinds_through_the_undo() {
    let mut w = World::new(in_place(), obs());
    to_in_place_restoring(&mut w, Consistency::Consistent);
    w.obs.deleted = true;
    w.step();
    assert_eq!(w.phase(), RestorePhase::Undoing);
    w.until_worker(WorkerStep::Undo, 1);
    w.worker_ends(ok(restored()));
    w.until(RestorePhase::Failed);
    assert_eq!(w.job.status.unwrap().failure.unwrap().reason, "Deleted");
    assert_eq!(w.obs.workloads[0].replicas, Some(2));
}

#[test]
fn new_volumes_are_created_after_resolving_sized_for_the_snapshot_and_kept_on_success() {
    let mut o = obs();
    o.source_requests.insert("data".into(), "1Gi".into());
    let mut w = World::new(new_volumes(), o);
    w.until_worker(WorkerStep::Resolve, 0);
    w.worker_ends(ok(resolved(Consistency::Consistent)));
    w.until(RestorePhase::Restoring);
    let create = w.log.iter().find_map(|a| match a {
        Action::CreateClaim { name, size, .. } => Some((name.clone(), size.clone())),
        _ => None,
    });
    // 1 GiB of files needs more than the source's 1Gi request.
    assert_eq!(create, Some(("data-r1".to_string(), "1216Mi".to_string())));
    w.until_worker(WorkerStep::Restore, 0);
    w.worker_ends(ok(restored()));
    w.until(RestorePhase::Succeeded);
    assert!(w.obs.existing_claims.contains(&"data-r1".to_string()), "the result stays");
    assert_eq!(w.obs.workloads[0].replicas, Some(2), "new volumes touch no workload");
    assert!(!w.log.iter().any(|a| matches!(a, Action::Workload(WorkloadAction::Scale { .. }))));
}

#[test]
fn a_failed_restore_into_new_volumes_deletes_the_pvcs_it_created_and_nothing_else() {
    let mut w = World::new(new_volumes(), obs());
    w.until_worker(WorkerStep::Resolve, 0);
    w.worker_ends(ok(resolved(Consistency::Consistent)));
    w.until_worker(WorkerStep::Restore, 0);
    w.worker_ends(failed(
        &serde_json::to_string(&RestoreWorkerReport {
            error: Some("3 differences".into()),
            reason: Some(RestoreFailure::CheckFailed),
            ..Default::default()
        })
        .unwrap(),
    ));
    w.until(RestorePhase::Failed);
    let st = w.job.status.unwrap();
    assert_eq!(st.failure.as_ref().unwrap().reason, "CheckFailed");
    assert!(st.failure.unwrap().message.contains("verify"), "the fix is in the message");
    assert!(!w.obs.existing_claims.contains(&"data-r1".to_string()));
    assert!(w.obs.existing_claims.contains(&"data".to_string()), "the source PVC is not ours");
}

#[test]
fn new_volumes_never_overwrite_an_existing_claim() {
    let mut o = obs();
    o.existing_claims.push("data-r1".into());
    let mut w = World::new(new_volumes(), o);
    w.until(RestorePhase::Failed);
    let st = w.job.status.unwrap();
    assert_eq!(st.failure.unwrap().reason, "TargetExists");
    assert!(w.log.iter().all(|a| !matches!(a, Action::CreateWorker { .. } | Action::Delete(_))));
}

#[test]
fn a_claim_that_appears_between_resolve_and_create_is_not_taken_over() {
    let mut w = World::new(new_volumes(), obs());
    w.until_worker(WorkerStep::Resolve, 0);
    w.obs.existing_claims.push("data-r1".into()); // someone else's
    w.worker_ends(ok(resolved(Consistency::Consistent)));
    w.until(RestorePhase::Failed);
    assert_eq!(w.job.status.clone().unwrap().failure.unwrap().reason, "TargetExists");
    assert!(w.obs.existing_claims.contains(&"data-r1".to_string()), "not deleted: not ours");
}

#[test]
fn restoring_a_snapshot_that_is_not_consistent_warns_and_names_the_offline_alternative() {
    let mut w = World::new(new_volumes(), obs());
    w.until_worker(WorkerStep::Resolve, 0);
    w.worker_ends(ok(resolved(Consistency::Inconsistent)));
    let d = w.step();
    let ev = d.events.iter().find(|e| e.reason == "ConsistencyWarning").expect("a warning event");
    assert!(ev.warning);
    assert!(ev.message.contains("repair") && ev.message.contains("bbbbbbbbbbbb"), "{}", ev.message);
    let st = w.job.status.clone().unwrap();
    let c = st.conditions.iter().find(|c| c.type_ == conditions::CONSISTENCY_WARNING).unwrap();
    assert_eq!(c.reason, "InconsistentSnapshot");
    assert_eq!(st.consistency, Some(Consistency::Inconsistent));
}

#[test]
fn bad_input_fails_before_anything_is_touched() {
    let cases: Vec<(RestoreJob, Observed, &str)> = vec![
        (in_place(), Observed { repository: None, ..obs() }, "RepositoryNotFound"),
        (
            {
                let mut j = in_place();
                j.spec.volumes = vec!["nope".into()];
                j
            },
            obs(),
            "VolumeNotFound",
        ),
        (in_place(), Observed { missing_volumes: vec!["data".into()], ..obs() }, "VolumeNotFound"),
        (in_place(), Observed { bare_pods: vec!["p".into()], ..obs() }, "BarePod"),
        (
            {
                let mut j = new_volumes();
                j.spec.target.new_volumes =
                    Some(NewVolumes { name_template: Some("Bad_{volume}".into()), ..Default::default() });
                j
            },
            obs(),
            "InvalidTarget",
        ),
        (in_place(), Observed { volumes: vec![], ..obs() }, "NoVolumes"),
    ];
    for (j, o, reason) in cases {
        let mut w = World::new(j, o);
        w.until(RestorePhase::Failed);
        assert_eq!(w.job.status.clone().unwrap().failure.unwrap().reason, reason);
        assert!(w.log.is_empty(), "{reason}: {:?}", w.log);
    }
}

#[test]
fn a_new_volume_size_smaller_than_the_snapshot_fails_before_creating_anything() {
    let mut j = new_volumes();
    j.spec.target.new_volumes = Some(NewVolumes { size: Some("100Mi".into()), ..Default::default() });
    let mut w = World::new(j, obs());
    w.until_worker(WorkerStep::Resolve, 0);
    w.worker_ends(ok(resolved(Consistency::Consistent)));
    w.until(RestorePhase::Failed);
    assert_eq!(w.job.status.clone().unwrap().failure.unwrap().reason, "TargetTooSmall");
    assert!(!w.log.iter().any(|a| matches!(a, Action::CreateClaim { .. })));
}

#[test]
fn a_queued_job_waits_and_shows_its_place() {
    let mut o = obs();
    o.admitted = false;
    o.queue_position = Some(2);
    let mut w = World::new(in_place(), o);
    w.step();
    w.step();
    let st = w.job.status.clone().unwrap();
    assert_eq!(st.phase, Some(RestorePhase::Queued));
    assert_eq!(st.queue_position, Some(2));
    assert!(w.log.is_empty());
}

#[test]
fn the_replica_annotation_names_the_restore_job() {
    let mut w = World::new(in_place(), obs());
    to_in_place_restoring(&mut w, Consistency::Consistent);
    let ann = w.log.iter().find_map(|a| match a {
        Action::Workload(WorkloadAction::Annotate { value, .. }) => Some(value.clone()),
        _ => None,
    });
    assert_eq!(ann.as_deref(), Some("restore:r1=2"));
    assert_eq!(parse_annotation("restore:r1=2"), Some(("restore:r1".to_string(), 2)));
}

#[test]
fn claim_names_and_sizes() {
    assert_eq!(claim_name(None, "r1", "data"), "data-r1");
    assert_eq!(claim_name(Some("{volume}-restored"), "r1", "data"), "data-restored");
    assert!(valid_claim_name("data-r1") && !valid_claim_name("Data") && !valid_claim_name("-x"));
    use super::super::build::{claim_size, quantity_bytes};
    assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
    assert_eq!(quantity_bytes("500M"), Some(500_000_000));
    assert_eq!(quantity_bytes("lots"), None);
    assert_eq!(claim_size(None, Some("10Gi"), 1 << 20).unwrap(), "10Gi");
    assert_eq!(claim_size(Some("2Gi"), None, 1 << 30).unwrap(), "2Gi");
    assert!(claim_size(Some("1Mi"), None, 1 << 30).is_err());
    assert!(claim_size(Some("many"), None, 1).is_err());
    assert_eq!(claim_size(None, None, 0).unwrap(), "64Mi");
}

fn with_check(mut j: RestoreJob) -> RestoreJob {
    j.spec.check = Some(UserCheck {
        image: "postgres:17".into(),
        command: vec!["pg_amcheck".into()],
        args: vec![],
        timeout_seconds: 60,
    });
    j
}

#[test]
fn the_user_check_runs_after_the_restore_and_a_failure_undoes_an_in_place_restore() {
    let mut w = World::new(with_check(in_place()), obs());
    to_in_place_restoring(&mut w, Consistency::Consistent);
    w.worker_ends(ok(restored()));
    w.until(RestorePhase::Checking);
    assert_eq!(w.obs.workloads[0].replicas, Some(0), "the check runs before the services");
    w.until_worker(WorkerStep::Check, 0);
    w.worker_ends(failed("amcheck: corruption in index"));
    w.step();
    assert_eq!(w.phase(), RestorePhase::Undoing);
    w.until_worker(WorkerStep::Undo, 1);
    w.worker_ends(ok(restored()));
    w.until(RestorePhase::Failed);
    let st = w.job.status.clone().unwrap();
    assert_eq!(st.failure.unwrap().reason, "UserCheckFailed");
    assert_eq!(st.check.map(|c| c.ok), Some(false));
    assert_eq!(st.undone, Some(true));
    assert_eq!(w.obs.workloads[0].replicas, Some(2));
}

#[test]
fn a_check_that_passes_lets_the_job_succeed_and_one_that_hangs_times_out() {
    let mut w = World::new(with_check(new_volumes()), obs());
    w.until_worker(WorkerStep::Resolve, 0);
    w.worker_ends(ok(resolved(Consistency::Consistent)));
    w.until_worker(WorkerStep::Restore, 0);
    w.worker_ends(ok(restored()));
    w.until_worker(WorkerStep::Check, 0);
    w.worker_ends(ok(String::new()));
    w.until(RestorePhase::Succeeded);
    assert_eq!(w.job.status.clone().unwrap().check.map(|c| c.ok), Some(true));

    let mut w = World::new(with_check(new_volumes()), obs());
    w.until_worker(WorkerStep::Resolve, 0);
    w.worker_ends(ok(resolved(Consistency::Consistent)));
    w.until_worker(WorkerStep::Restore, 0);
    w.worker_ends(ok(restored()));
    w.until_worker(WorkerStep::Check, 0);
    w.obs.now += chrono::Duration::seconds(61);
    w.until(RestorePhase::Failed);
    assert_eq!(w.job.status.clone().unwrap().failure.unwrap().reason, "UserCheckTimeout");
    assert!(w.obs.pods.is_empty(), "the hanging check pod is deleted");
}

#[test]
fn scratch_volumes_of_a_restore_test_go_whatever_happens() {
    for fails in [false, true] {
        let mut j = new_volumes();
        j.spec.target.new_volumes = Some(NewVolumes { delete_after: true, ..Default::default() });
        let mut w = World::new(j, obs());
        w.until_worker(WorkerStep::Resolve, 0);
        w.worker_ends(ok(resolved(Consistency::Consistent)));
        w.until_worker(WorkerStep::Restore, 0);
        w.worker_ends(if fails { failed("boom") } else { ok(restored()) });
        w.until(if fails { RestorePhase::Failed } else { RestorePhase::Succeeded });
        assert!(!w.obs.existing_claims.contains(&"data-r1".to_string()), "fails={fails}");
        assert!(w.obs.existing_claims.contains(&"data".to_string()));
    }
}
