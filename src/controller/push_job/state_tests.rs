use super::*;
use chrono::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 2, 0, 0).unwrap()
}

fn repo(class: Option<&str>) -> RepositorySpec {
    RepositorySpec {
        volumes: vec!["data".into(), "logs".into()],
        volume_selector: None,
        workloads: None,
        storage: StorageSpec { bucket: "b".into(), ..Default::default() },
        online: OnlineSpec { volume_snapshot_class_name: class.map(String::from), live: None },
        hooks: None,
        exclude: vec![],
        worker_resources: None,
    }
}

fn job(mode: Mode, priority: Priority) -> PushJob {
    PushJob {
        metadata: ObjectMeta {
            name: Some("j1".into()),
            namespace: Some("shop".into()),
            generation: Some(1),
            creation_timestamp: Some(time(t0())),
            ..Default::default()
        },
        spec: PushJobSpec {
            repository_ref: LocalRef { name: "shop".into() },
            mode,
            priority,
            deadline_seconds: None,
            reason: None,
            ttl_seconds_after_finished: None,
            retention: None,
        },
        status: None,
    }
}

fn wl(kind: WorkloadKind, name: &str) -> WorkloadRef {
    WorkloadRef { kind, name: name.into() }
}

/// A tiny cluster that applies actions the way the apply layer would, with the simulated
/// controllers (pods follow replicas; attachments follow pods; snapshots become ready).
#[derive(Debug, Clone)]
struct World {
    now: DateTime<Utc>,
    repo: Option<RepositorySpec>,
    replicas: BTreeMap<WorkloadRef, i32>,
    original: BTreeMap<WorkloadRef, i32>,
    annotations: BTreeMap<WorkloadRef, String>,
    pods_left: usize,
    worker: Option<WorkerObs>,
    snapshots: Vec<SnapshotObs>,
    clones: Vec<String>,
    admitted: bool,
    /// What the worker will do once it runs.
    worker_outcome: WorkerObs,
    /// Every replica count ever seen (to check the workloads only went to 0 and back).
    history: Vec<(WorkloadRef, i32)>,
    /// Whether the pre hooks succeed.
    pre_hook_ok: bool,
    /// Everything that happened, in order (hooks, snapshots, clones, worker).
    log: Vec<String>,
    /// A snapshot error to report.
    snapshot_error: Option<String>,
    /// Refuse creating the worker pod / a VolumeSnapshot with this (as admission or RBAC would).
    refuse_worker: Option<Refusal>,
    refuse_snapshot: Option<Refusal>,
    /// The refusal the apply layer hands to the next pass.
    refused: std::cell::RefCell<Option<Refusal>>,
    /// The job has been deleted (its finalizer runs the machine).
    deleted: bool,
}

impl World {
    fn new(repo: Option<RepositorySpec>) -> World {
        let mut replicas = BTreeMap::new();
        replicas.insert(wl(WorkloadKind::Deployment, "web"), 3);
        replicas.insert(wl(WorkloadKind::StatefulSet, "db"), 1);
        World {
            now: t0(),
            repo,
            original: replicas.clone(),
            replicas,
            annotations: BTreeMap::new(),
            pods_left: 4,
            worker: None,
            snapshots: vec![],
            clones: vec![],
            admitted: true,
            worker_outcome: WorkerObs::Succeeded { message: report_json() },
            history: vec![],
            pre_hook_ok: true,
            log: vec![],
            snapshot_error: None,
            refuse_worker: None,
            refuse_snapshot: None,
            refused: Default::default(),
            deleted: false,
        }
    }

    fn observe(&self) -> Observed {
        Observed {
            now: self.now,
            repository: self.repo.clone(),
            volumes: vec!["data".into(), "logs".into()],
            missing_volumes: vec![],
            workloads: self
                .replicas
                .iter()
                .map(|(w, r)| WorkloadObs {
                    workload: w.clone(),
                    replicas: Some(*r),
                    annotation: self.annotations.get(w).cloned(),
                })
                .collect(),
            bare_pods: vec![],
            pods_mounting: (0..self.pods_left).map(|i| format!("pod-{i}")).collect(),
            attachments: if self.pods_left > 0 { vec!["att-1".into()] } else { vec![] },
            mount_node: Some("node-a".into()),
            snapshots: self.snapshots.clone(),
            clones: self.clones.clone(),
            worker: self.worker.clone(),
            refused: self.refused.borrow_mut().take(),
            admitted: self.admitted,
            queue_position: if self.admitted { None } else { Some(2) },
            deleted: self.deleted,
        }
    }

    fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Workload(WorkloadAction::Annotate { workload, value }) => {
                    self.annotations.insert(workload.clone(), value.clone());
                }
                Action::Workload(WorkloadAction::Scale { workload, replicas }) => {
                    assert!(
                        *replicas == 0
                            || self.annotations.contains_key(workload)
                            || *replicas == self.original[workload],
                        "scale to a count that is neither 0 nor the original"
                    );
                    if *replicas == 0 {
                        assert!(
                            self.annotations.contains_key(workload),
                            "scaled to zero before the annotation was written"
                        );
                    }
                    self.replicas.insert(workload.clone(), *replicas);
                    self.history.push((workload.clone(), *replicas));
                }
                Action::Workload(WorkloadAction::RemoveAnnotation { workload }) => {
                    self.annotations.remove(workload);
                }
                Action::RunHooks(stage) => self.log.push(format!("hooks {stage:?}")),
                Action::CreateSnapshot { .. } | Action::CreateWorker { .. } => {
                    let refusal = if matches!(a, Action::CreateWorker { .. }) {
                        &self.refuse_worker
                    } else {
                        &self.refuse_snapshot
                    };
                    if let Some(r) = refusal {
                        *self.refused.borrow_mut() = Some(r.clone());
                        return;
                    }
                    match a {
                        Action::CreateSnapshot { name, volume, .. } => self.snapshots.push(SnapshotObs {
                            name: name.clone(),
                            volume: volume.clone(),
                            ready: false,
                            error: None,
                        }),
                        _ => self.worker = Some(WorkerObs::Pending),
                    }
                }
                Action::CreateClone { name, .. } => self.clones.push(name.clone()),
                Action::Delete(o) => match o.kind {
                    CreatedKind::Pod => self.worker = None,
                    CreatedKind::VolumeSnapshot => self.snapshots.retain(|s| s.name != o.name),
                    CreatedKind::PersistentVolumeClaim => self.clones.retain(|c| *c != o.name),
                },
            }
        }
    }

    /// The simulated controllers take one step.
    fn tick(&mut self) {
        self.now += chrono::Duration::seconds(1);
        if self.replicas.values().all(|r| *r == 0) && self.pods_left > 0 {
            self.pods_left -= 1;
        }
        if self.replicas.values().any(|r| *r > 0) {
            self.pods_left = 4;
        }
        for s in &mut self.snapshots {
            s.ready = self.snapshot_error.is_none();
            s.error = self.snapshot_error.clone();
        }
        self.worker = match self.worker.take() {
            Some(WorkerObs::Pending) => Some(WorkerObs::Running),
            Some(WorkerObs::Running) => Some(self.worker_outcome.clone()),
            other => other,
        };
    }
}

/// What the apply layer does after running hooks: store the outcome in the status.
fn record_hooks(job: &mut PushJob, world: &World, actions: &[Action]) {
    let st = job.status.as_mut().unwrap();
    for a in actions {
        match a {
            Action::RunHooks(HookStage::Pre) => {
                st.pre_hook = Some(HookOutcome {
                    ok: world.pre_hook_ok,
                    message: if world.pre_hook_ok { "ok".into() } else { "fsfreeze: exit 1".into() },
                })
            }
            Action::RunHooks(HookStage::Post) => st.post_hook = Some(HookOutcome { ok: true, message: "ok".into() }),
            _ => {}
        }
    }
}

fn with_hooks(mut r: RepositorySpec) -> RepositorySpec {
    let hook = |cmd: &str| Hook {
        pod_selector: None,
        container: None,
        command: vec!["sh".into(), "-c".into(), cmd.into()],
        timeout_seconds: 30,
        on_error: HookErrorPolicy::Fail,
    };
    r.hooks = Some(Hooks { pre: vec![hook("fsfreeze -f /data")], post: vec![hook("fsfreeze -u /data")] });
    r
}

fn report_json() -> String {
    serde_json::to_string(&WorkerReport {
        volumes: vec![VolumeResult {
            volume: "data".into(),
            snapshot: "abc123".into(),
            files: 3,
            bytes_total: 10,
            bytes_new: 5,
            ..Default::default()
        }],
        stats: JobStats { files: 3, bytes_total: 10, ..Default::default() },
        warnings: vec![],
        error: None,
        reason: None,
    })
    .unwrap()
}

/// Runs the job to a terminal phase; `interrupt` may change the world before step `n`.
fn run(job: &mut PushJob, world: &mut World, mut interrupt: impl FnMut(usize, &mut PushJob, &mut World)) -> Vec<Event> {
    let settings = Settings::default();
    let mut events = vec![];
    for step in 0..500 {
        interrupt(step, job, world);
        let d = next(job, &world.observe(), &settings);
        world.apply(&d.actions);
        events.extend(d.events);
        job.status = Some(d.status);
        record_hooks(job, world, &d.actions);
        if job.phase().is_terminal() {
            return events;
        }
        world.tick();
    }
    panic!("job did not finish: {:?}", job.status);
}

fn assert_nothing_lost(world: &World) {
    assert_eq!(world.replicas, world.original, "every workload back at its recorded replicas");
    assert!(world.annotations.is_empty(), "annotations removed: {:?}", world.annotations);
    assert!(world.worker.is_none() && world.snapshots.is_empty() && world.clones.is_empty(), "created objects deleted");
}

fn cond(job: &PushJob, t: &str) -> Option<String> {
    job.status.as_ref()?.conditions.iter().find(|c| c.type_ == t).map(|c| format!("{}/{}", c.status, c.reason))
}

#[test]
fn offline_push_scales_down_waits_pushes_and_restores() {
    let mut j = job(Mode::Offline, Priority::P4);
    let mut w = World::new(Some(repo(None)));
    let mut saw_push_with_pods = false;
    let events = run(&mut j, &mut w, |_, job, world| {
        if job.phase() == Phase::Pushing && world.pods_left > 0 {
            saw_push_with_pods = true;
        }
    });
    assert!(!saw_push_with_pods, "the worker starts only after every pod is gone");
    assert_eq!(j.phase(), Phase::Succeeded);
    assert_nothing_lost(&w);
    let st = j.status.as_ref().unwrap();
    assert_eq!(st.consistency, Some(Consistency::Consistent));
    assert_eq!(st.replicas.len(), 2);
    assert_eq!(st.snapshots[0].snapshot, "abc123");
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert_eq!(cond(&j, "Complete").as_deref(), Some("True/Succeeded"));
    assert_eq!(cond(&j, "Ready").as_deref(), Some("True/Succeeded"));
    assert_eq!(cond(&j, "Reconciling").as_deref(), Some("False/Succeeded"));
    // Replicas went 3 -> 0 -> 3 and 1 -> 0 -> 1.
    let web: Vec<i32> = w.history.iter().filter(|(k, _)| k.name == "web").map(|(_, r)| *r).collect();
    assert_eq!(web, vec![0, 3]);
    let phases: Vec<&str> = events.iter().filter(|e| !e.warning).map(|e| e.reason.as_str()).collect();
    assert_eq!(
        phases,
        vec!["Queued", "Quiescing", "WaitingForDetach", "Pushing", "Resuming", "CleaningUp", "Succeeded"]
    );
}

#[test]
fn replicas_are_stored_before_any_workload_is_touched() {
    let j = job(Mode::Offline, Priority::P4);
    let w = World::new(Some(repo(None)));
    let settings = Settings::default();
    let mut j = j;
    j.status = Some(PushJobStatus { phase: Some(Phase::Quiescing), ..Default::default() });
    let d = next(&j, &w.observe(), &settings);
    assert!(d.actions.is_empty(), "first the record, no action: {:?}", d.actions);
    assert_eq!(d.status.replicas.len(), 2);
    j.status = Some(d.status);
    let d = next(&j, &w.observe(), &settings);
    // For each workload: annotate, then scale.
    let kinds: Vec<String> = d
        .actions
        .iter()
        .map(|a| match a {
            Action::Workload(WorkloadAction::Annotate { workload, .. }) => format!("annotate {}", workload.name),
            Action::Workload(WorkloadAction::Scale { workload, replicas }) => {
                format!("scale {} {replicas}", workload.name)
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, vec!["annotate web", "scale web 0", "annotate db", "scale db 0"]);
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::Workload(WorkloadAction::Annotate { value, .. }) if value == "j1=3"))
    );
}

#[test]
fn online_with_snapshot_class_never_scales_and_cleans_up() {
    let mut j = job(Mode::Online, Priority::P3);
    let mut w = World::new(Some(repo(Some("csi-snap"))));
    let mut worker_claims = vec![];
    let mut created_snaps = 0;
    run(&mut j, &mut w, |_, _, world| {
        created_snaps = created_snaps.max(world.snapshots.len());
        if world.worker.is_some() {
            worker_claims = world.clones.clone();
        }
    });
    assert_eq!(j.phase(), Phase::Succeeded);
    assert!(w.history.is_empty(), "an online push never scales");
    assert_eq!(created_snaps, 2, "one snapshot per PVC");
    assert_eq!(worker_claims, vec!["j1-data-clone", "j1-logs-clone"], "the worker reads the clones");
    assert_nothing_lost(&w);
    assert_eq!(j.status.as_ref().unwrap().consistency, Some(Consistency::CrashConsistent));
    assert_eq!(cond(&j, "ConsistencyWarning"), None);
}

#[test]
fn online_without_class_reads_live_on_the_mount_node_and_warns() {
    let j = job(Mode::Online, Priority::P4);
    let mut w = World::new(Some(repo(None)));
    let settings = Settings::default();
    let mut j = j;
    let mut events = vec![];
    let mut worker_action = None;
    for _ in 0..4 {
        let d = next(&j, &w.observe(), &settings);
        for a in &d.actions {
            if let Action::CreateWorker { .. } = a {
                worker_action = Some(a.clone());
            }
        }
        w.apply(&d.actions);
        events.extend(d.events);
        j.status = Some(d.status);
    }
    assert_eq!(
        worker_action,
        Some(Action::CreateWorker {
            name: "j1-push".into(),
            claims: vec![("data".into(), "data".into()), ("logs".into(), "logs".into())],
            node: Some("node-a".into()),
        })
    );
    assert!(events.iter().any(|e| e.warning && e.reason == "ConsistencyWarning"));
    assert_eq!(j.status.as_ref().unwrap().consistency, Some(Consistency::Inconsistent));
    assert_eq!(cond(&j, "ConsistencyWarning").as_deref(), Some("True/LiveRead"));
    let mut w2 = w.clone();
    run(&mut j, &mut w2, |_, _, _| {});
    assert_eq!(j.phase(), Phase::Succeeded);
    assert_eq!(
        cond(&j, "ConsistencyWarning").as_deref(),
        Some("True/LiveRead"),
        "the warning stays on the finished job"
    );
}

#[test]
fn queued_jobs_wait_with_their_position() {
    let mut j = job(Mode::Offline, Priority::P5);
    let mut w = World::new(Some(repo(None)));
    w.admitted = false;
    let s = Settings::default();
    for _ in 0..3 {
        let d = next(&j, &w.observe(), &s);
        j.status = Some(d.status);
    }
    let st = j.status.as_ref().unwrap();
    assert_eq!(st.phase, Some(Phase::Queued));
    assert_eq!(st.queue_position, Some(2));
    assert!(st.replicas.is_empty() && w.history.is_empty());
    assert_eq!(cond(&j, "Reconciling").as_deref(), Some("True/Queued"));
}

#[test]
fn p1_deadline_fails_the_job_and_still_restores_replicas() {
    for stop_in in [Phase::Queued, Phase::Quiescing, Phase::WaitingForDetach, Phase::Pushing] {
        let mut j = job(Mode::Offline, Priority::P1);
        let mut w = World::new(Some(repo(None)));
        w.worker_outcome = WorkerObs::Running; // the copy would never finish
        if stop_in == Phase::Queued {
            w.admitted = false;
        }
        let mut jumped = false;
        run(&mut j, &mut w, |_, job, world| {
            if job.phase() == stop_in && !jumped {
                jumped = true;
                world.now = t0() + chrono::Duration::seconds(34);
            }
        });
        assert_eq!(j.phase(), Phase::Failed, "{stop_in:?}");
        assert_eq!(cond(&j, "Failed").as_deref(), Some("True/DeadlineExceeded"), "{stop_in:?}");
        assert_eq!(cond(&j, "Stalled").as_deref(), Some("True/DeadlineExceeded"));
        assert_nothing_lost(&w);
    }
}

#[test]
fn a_refused_request_fails_the_job_at_once_and_nothing_is_lost() {
    let not_admitted = Refusal { reason: "WorkerNotAdmitted", message: "namespace shop enforces restricted".into() };
    let forbidden = Refusal { reason: "Forbidden", message: "cannot create volumesnapshots".into() };
    for (mode, class, worker, snapshot, reason) in [
        (Mode::Offline, None, Some(not_admitted.clone()), None, "WorkerNotAdmitted"),
        (Mode::Online, Some("csi"), Some(not_admitted), None, "WorkerNotAdmitted"),
        (Mode::Online, Some("csi"), None, Some(forbidden), "Forbidden"),
    ] {
        let mut j = job(mode, Priority::P3);
        let mut w = World::new(Some(repo(class)));
        w.refuse_worker = worker;
        w.refuse_snapshot = snapshot;
        let events = run(&mut j, &mut w, |_, _, _| {});
        assert_eq!(cond(&j, "Failed").as_deref(), Some(format!("True/{reason}").as_str()), "{mode:?}");
        assert!(events.iter().any(|e| e.warning && e.reason == reason), "{events:?}");
        assert_nothing_lost(&w);
    }
}

#[test]
fn explicit_deadline_overrides_the_priority_default() {
    let mut j = job(Mode::Online, Priority::P1);
    j.spec.deadline_seconds = Some(600);
    assert_eq!(deadline(&j, &Settings::default()), Some(Duration::from_secs(600)));
    j.spec.deadline_seconds = None;
    assert_eq!(deadline(&j, &Settings::default()), Some(Duration::from_secs(33)));
}

#[test]
fn a_failure_at_any_step_never_leaves_a_workload_down() {
    // Fail the worker, or pass the deadline, at every step of an offline push.
    for fail_at in 0..30 {
        for how in ["worker", "deadline"] {
            let mut j = job(Mode::Offline, Priority::P4);
            let mut w = World::new(Some(repo(None)));
            run(&mut j, &mut w, |step, _, world| {
                if step == fail_at {
                    match how {
                        "worker" => {
                            world.worker_outcome =
                                WorkerObs::Failed { message: r#"{"volumes":[],"stats":{"files":0,"bytes_total":0,"bytes_read":0,"bytes_new":0,"bytes_uploaded":0,"chunks_new":0,"chunks_reused":0,"duration_seconds":0.0},"error":"store unreachable"}"#.into(), exit_code: Some(1), oom_killed: false }
                        }
                        _ => world.now = t0() + chrono::Duration::hours(7),
                    }
                }
            });
            assert!(j.phase().is_terminal());
            assert_nothing_lost(&w);
        }
    }
}

#[test]
fn worker_failure_reports_the_workers_error() {
    let mut j = job(Mode::Offline, Priority::P4);
    let mut w = World::new(Some(repo(None)));
    w.worker_outcome = WorkerObs::Failed {
        message: r#"{"volumes":[],"stats":{"files":0,"bytes_total":0,"bytes_read":0,"bytes_new":0,"bytes_uploaded":0,"chunks_new":0,"chunks_reused":0,"duration_seconds":0.0},"error":"cannot reach the S3 endpoint"}"#.into(),
        exit_code: Some(1),
        oom_killed: false,
    };
    let events = run(&mut j, &mut w, |_, _, _| {});
    assert_eq!(j.phase(), Phase::Failed);
    let f = j.status.as_ref().unwrap().failure.clone().unwrap();
    assert_eq!(f.reason, "WorkerFailed");
    assert!(f.message.contains("cannot reach the S3 endpoint") && f.message.contains("exit 1"), "{}", f.message);
    assert!(events.iter().any(|e| e.warning && e.reason == "WorkerFailed"));
    assert_nothing_lost(&w);
}

/// A store-key failure the worker names is the job's reason, with the fix in the message, and
/// the workloads still come back.
#[test]
fn a_store_key_failure_is_its_own_reason() {
    for reason in [
        WorkerFailure::StoreKeyMissing,
        WorkerFailure::StoreKeyWrong,
        WorkerFailure::StoreNotEncrypted,
        WorkerFailure::EncryptionNotConfigured,
    ] {
        let mut j = job(Mode::Offline, Priority::P4);
        let mut w = World::new(Some(repo(None)));
        let report =
            WorkerReport { error: Some("the store said no".into()), reason: Some(reason), ..Default::default() };
        w.worker_outcome = WorkerObs::Failed {
            message: serde_json::to_string(&report).unwrap(),
            exit_code: Some(1),
            oom_killed: false,
        };
        let events = run(&mut j, &mut w, |_, _, _| {});
        assert_eq!(j.phase(), Phase::Failed);
        let f = j.status.as_ref().unwrap().failure.clone().unwrap();
        assert_eq!(f.reason, reason.as_str());
        assert!(f.message.contains("the store said no") && f.message.contains(reason.fix()), "{}", f.message);
        assert!(f.message.contains("spec.storage.encryption"), "the fix names the field: {}", f.message);
        assert!(events.iter().any(|e| e.warning && e.reason == reason.as_str()));
        assert_nothing_lost(&w);
    }
}

/// Every kind of failure the worker names is the job's reason, with its fix, and nothing is
/// left scaled down.
#[test]
fn each_store_and_source_failure_is_its_own_reason_with_its_fix() {
    for (reason, field) in [
        (WorkerFailure::StoreAccessDenied, "credentialsSecretRef"),
        (WorkerFailure::StoreBucketMissing, "spec.storage.bucket"),
        (WorkerFailure::StoreUnreachable, "spec.storage.endpoint"),
        (WorkerFailure::SourceUnreadable, "restricted"),
        (WorkerFailure::StoreDamaged, "push-operator verify"),
    ] {
        let mut j = job(Mode::Offline, Priority::P4);
        let mut w = World::new(Some(repo(None)));
        let report = WorkerReport { error: Some("detail".into()), reason: Some(reason), ..Default::default() };
        w.worker_outcome = WorkerObs::Failed {
            message: serde_json::to_string(&report).unwrap(),
            exit_code: Some(1),
            oom_killed: false,
        };
        run(&mut j, &mut w, |_, _, _| {});
        let f = j.status.as_ref().unwrap().failure.clone().unwrap();
        assert_eq!(f.reason, reason.as_str());
        assert!(f.message.contains(field), "{reason:?}: {}", f.message);
        assert_nothing_lost(&w);
    }
}

#[test]
fn a_worker_killed_for_memory_says_so_and_what_to_raise() {
    let mut j = job(Mode::Offline, Priority::P4);
    let mut w = World::new(Some(repo(None)));
    w.worker_outcome = WorkerObs::Failed { message: String::new(), exit_code: Some(137), oom_killed: true };
    run(&mut j, &mut w, |_, _, _| {});
    let f = j.status.as_ref().unwrap().failure.clone().unwrap();
    assert_eq!(f.reason, "WorkerOOMKilled");
    assert!(f.message.contains("workerResources"), "{}", f.message);
    assert_nothing_lost(&w);
}

#[test]
fn store_errors_are_classified_through_their_context() {
    use crate::store::OpenError;
    use crate::store::backend::BackendError;
    use anyhow::Context;
    let wrap = |e: anyhow::Error| Err::<(), _>(e).context("volume data").context("push").unwrap_err();
    let cases: Vec<(anyhow::Error, Option<WorkerFailure>)> = vec![
        (BackendError::Denied("403".into()).into(), Some(WorkerFailure::StoreAccessDenied)),
        (BackendError::NoBucket("404".into()).into(), Some(WorkerFailure::StoreBucketMissing)),
        (BackendError::Transient("reset".into()).into(), Some(WorkerFailure::StoreUnreachable)),
        (OpenError::Backend(BackendError::NoBucket("x".into())).into(), Some(WorkerFailure::StoreBucketMissing)),
        (OpenError::KeyMissing("s3://b".into()).into(), Some(WorkerFailure::StoreKeyMissing)),
        (crate::store::push::SourceError("cannot read".into()).into(), Some(WorkerFailure::SourceUnreadable)),
        (crate::store::crypto::OpenFailed { what: "index x".into() }.into(), Some(WorkerFailure::StoreDamaged)),
        (crate::store::Damaged("pack x is damaged".into()).into(), Some(WorkerFailure::StoreDamaged)),
        (
            OpenError::Damaged { location: "s3://b".into(), reason: "not JSON".into() }.into(),
            Some(WorkerFailure::StoreDamaged),
        ),
        (BackendError::Permanent("bad request".into()).into(), None),
        (anyhow::anyhow!("something else"), None),
    ];
    for (e, want) in cases {
        let shown = format!("{e:#}");
        assert_eq!(WorkerFailure::of(&wrap(e)), want, "{shown}");
    }
}

#[test]
fn bad_input_fails_with_a_reason_and_touches_nothing() {
    let mut j = job(Mode::Offline, Priority::P4);
    let mut w = World::new(None);
    run(&mut j, &mut w, |_, _, _| {});
    assert_eq!(cond(&j, "Failed").as_deref(), Some("True/RepositoryNotFound"));
    assert!(w.history.is_empty() && w.annotations.is_empty());

    let mut j = job(Mode::Offline, Priority::P4);
    let w = World::new(Some(repo(None)));
    let mut o = w.observe();
    o.bare_pods = vec!["lonely".into()];
    let d = next(&j, &o, &Settings::default());
    assert_eq!(d.status.failure.as_ref().unwrap().reason, "BarePod");
    assert!(d.actions.is_empty());
    j.status = Some(d.status);
    let d = next(&j, &o, &Settings::default());
    assert_eq!(d.status.phase, Some(Phase::Failed));

    let j = job(Mode::Online, Priority::P4);
    let mut o = World::new(Some(repo(None))).observe();
    o.missing_volumes = vec!["gone".into()];
    let d = next(&j, &o, &Settings::default());
    assert_eq!(d.status.failure.as_ref().unwrap().reason, "VolumeNotFound");
    assert!(d.status.failure.as_ref().unwrap().message.contains("gone"));
}

#[test]
fn detach_timeout_fails_and_restores() {
    let mut j = job(Mode::Offline, Priority::P4);
    let mut w = World::new(Some(repo(None)));
    let mut stuck = false;
    run(&mut j, &mut w, |_, job, world| {
        if job.phase() == Phase::WaitingForDetach && !stuck {
            stuck = true;
            world.now += chrono::Duration::seconds(601);
        }
        if job.phase() == Phase::WaitingForDetach {
            world.pods_left = 1; // a pod that never goes away
        }
    });
    assert_eq!(cond(&j, "Failed").as_deref(), Some("True/DetachTimeout"));
    assert_nothing_lost(&w);
}

#[test]
fn deleted_mid_flow_unwinds_like_a_failure() {
    for phase in
        [Phase::Queued, Phase::Quiescing, Phase::WaitingForDetach, Phase::Pushing, Phase::Snapshotting, Phase::Cloning]
    {
        let mode = if matches!(phase, Phase::Snapshotting | Phase::Cloning) { Mode::Online } else { Mode::Offline };
        let mut j = job(mode, Priority::P4);
        let mut w = World::new(Some(repo(Some("csi"))));
        w.worker_outcome = WorkerObs::Running;
        w.admitted = phase != Phase::Queued;
        // Deleted one step after the job entered the phase (the phase has acted once).
        let mut steps_in = 0;
        let events = run(&mut j, &mut w, |_, job, world| {
            if steps_in > 0 || job.phase() == phase {
                steps_in += 1;
            }
            world.deleted |= steps_in == 2;
        });
        assert!(w.deleted, "{phase:?} was reached");
        assert_eq!(cond(&j, "Failed").as_deref(), Some("True/Deleted"), "deleted in {phase:?}");
        assert!(events.iter().any(|e| e.reason == "Deleted" && e.warning), "{events:?}");
        assert_nothing_lost(&w);
    }
}

#[test]
fn a_job_deleted_between_freeze_and_thaw_still_thaws() {
    let mut j = job(Mode::Online, Priority::P3);
    let mut w = World::new(Some(with_hooks(repo(Some("csi")))));
    run(&mut j, &mut w, |_, job, world| {
        world.deleted |= job.status.as_ref().is_some_and(|s| s.pre_hook.is_some());
    });
    assert_eq!(cond(&j, "Failed").as_deref(), Some("True/Deleted"));
    assert_eq!(w.log, vec!["hooks Pre", "hooks Post"], "the post hooks undo the freeze");
    assert_nothing_lost(&w);
}

#[test]
fn a_deleted_job_trusts_the_annotation_when_the_status_was_lost() {
    let mut j = job(Mode::Offline, Priority::P4);
    let mut w = World::new(Some(repo(None)));
    let web = wl(WorkloadKind::Deployment, "web");
    w.annotations.insert(web.clone(), "j1=3".into());
    w.replicas.insert(web.clone(), 0);
    // another job's annotation is not ours to act on
    let db = wl(WorkloadKind::StatefulSet, "db");
    w.annotations.insert(db.clone(), "other=1".into());
    w.deleted = true;
    let s = Settings::default();
    let d = next(&j, &w.observe(), &s);
    assert_eq!(d.status.phase, Some(Phase::Resuming));
    j.status = Some(d.status);
    let d = next(&j, &w.observe(), &s);
    assert_eq!(
        d.actions,
        vec![
            WorkloadAction::Scale { workload: web.clone(), replicas: 3 }.into(),
            WorkloadAction::RemoveAnnotation { workload: web }.into()
        ]
    );
}

#[test]
fn names_fit_in_63_characters_and_stay_unique() {
    let long = "a".repeat(60);
    let a = snapshot_name(&long, "data-volume-one");
    let b = snapshot_name(&long, "data-volume-two");
    assert!(a.len() <= 63 && b.len() <= 63);
    assert_ne!(a, b);
    assert_eq!(worker_name("j1"), "j1-push");
    assert_eq!(parse_annotation("my-job=3"), Some(("my-job".into(), 3)));
    assert_eq!(parse_annotation("garbage"), None);
}

#[test]
fn hooks_wrap_the_snapshot() {
    let mut j = job(Mode::Online, Priority::P3);
    let mut w = World::new(Some(with_hooks(repo(Some("csi")))));
    // Record the order of hooks and snapshot/clone creation.
    let settings = Settings::default();
    let mut order = vec![];
    for _ in 0..100 {
        let d = next(&j, &w.observe(), &settings);
        for a in &d.actions {
            match a {
                Action::RunHooks(s) => order.push(format!("hooks {s:?}")),
                Action::CreateSnapshot { volume, .. } => order.push(format!("snapshot {volume}")),
                Action::CreateClone { volume, .. } => order.push(format!("clone {volume}")),
                Action::CreateWorker { .. } => order.push("worker".into()),
                _ => {}
            }
        }
        w.apply(&d.actions);
        j.status = Some(d.status);
        record_hooks(&mut j, &w, &d.actions);
        if j.phase().is_terminal() {
            break;
        }
        w.tick();
    }
    assert_eq!(j.phase(), Phase::Succeeded);
    assert_eq!(
        order,
        vec!["hooks Pre", "snapshot data", "snapshot logs", "hooks Post", "clone data", "clone logs", "worker"],
        "pre hook before any snapshot, post hook once all are ready, then the copy"
    );
}

#[test]
fn a_failed_pre_hook_fails_the_job_and_still_thaws() {
    let mut j = job(Mode::Online, Priority::P3);
    let mut w = World::new(Some(with_hooks(repo(Some("csi")))));
    w.pre_hook_ok = false;
    run(&mut j, &mut w, |_, _, _| {});
    assert_eq!(cond(&j, "Failed").as_deref(), Some("True/HookFailed"));
    assert_eq!(w.log, vec!["hooks Pre", "hooks Post"], "post hooks run after a failed pre hook");
    assert!(w.snapshots.is_empty(), "no snapshot taken after a failed pre hook");
    assert_nothing_lost(&w);
}

#[test]
fn a_snapshot_failure_after_the_pre_hook_still_runs_the_post_hook() {
    let mut j = job(Mode::Online, Priority::P3);
    let mut w = World::new(Some(with_hooks(repo(Some("csi")))));
    w.snapshot_error = Some("driver error".into());
    run(&mut j, &mut w, |_, _, _| {});
    assert_eq!(cond(&j, "Failed").as_deref(), Some("True/SnapshotFailed"));
    assert_eq!(w.log, vec!["hooks Pre", "hooks Post"]);
    assert_nothing_lost(&w);
}

#[test]
fn live_reads_run_hooks_around_the_copy() {
    let mut j = job(Mode::Online, Priority::P3);
    let mut w = World::new(Some(with_hooks(repo(None))));
    run(&mut j, &mut w, |_, _, _| {});
    assert_eq!(j.phase(), Phase::Succeeded);
    assert_eq!(w.log, vec!["hooks Pre", "hooks Post"]);
    assert!(j.status.as_ref().unwrap().post_hook.as_ref().unwrap().ok);
}

#[test]
fn a_recorded_worker_never_seen_is_created_and_a_vanished_one_fails() {
    let mut j = job(Mode::Online, Priority::P4);
    let w = World::new(Some(repo(None)));
    let s = Settings::default();
    // The status says the worker was created, but the operator died before creating it.
    j.status = Some(PushJobStatus {
        phase: Some(Phase::Pushing),
        volumes: vec!["data".into()],
        consistency: Some(Consistency::Inconsistent),
        created: vec![CreatedObject { kind: CreatedKind::Pod, name: "j1-push".into() }],
        ..Default::default()
    });
    let d = next(&j, &w.observe(), &s);
    assert!(d.actions.iter().any(|a| matches!(a, Action::CreateWorker { .. })), "{:?}", d.actions);
    assert!(d.status.failure.is_none());
    // Once seen running, a worker that vanishes before reporting fails the job.
    let mut o = w.observe();
    o.worker = Some(WorkerObs::Running);
    j.status = Some(d.status);
    let d = next(&j, &o, &s);
    assert!(d.status.worker_start_time.is_some());
    j.status = Some(d.status);
    let d = next(&j, &w.observe(), &s);
    assert_eq!(d.status.failure.as_ref().map(|f| f.reason.as_str()), Some("WorkerLost"));
}

#[test]
fn an_offline_push_that_saw_files_change_is_marked_inconsistent_and_says_so() {
    let mut j = job(Mode::Offline, Priority::P4);
    let mut w = World::new(Some(repo(None)));
    w.worker_outcome = WorkerObs::Succeeded {
        message: serde_json::to_string(&WorkerReport {
            volumes: vec![VolumeResult {
                volume: "data".into(),
                snapshot: "abc123".into(),
                consistency: Some(Consistency::Inconsistent),
                changed_during_read: vec!["db/wal.log".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap(),
    };
    let events = run(&mut j, &mut w, |_, _, _| {});
    assert_eq!(j.phase(), Phase::Succeeded);
    assert_nothing_lost(&w);
    let st = j.status.as_ref().unwrap();
    assert_eq!(st.consistency, Some(Consistency::Inconsistent));
    assert_eq!(cond(&j, "ConsistencyWarning").as_deref(), Some("True/ChangedDuringRead"));
    let e = events.iter().find(|e| e.reason == "ConsistencyWarning").expect("a warning");
    assert!(e.warning && e.message.contains("db/wal.log"), "{}", e.message);
}
