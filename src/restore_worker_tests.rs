use super::*;
use crate::store::keys::{Credentials, Secret};
use crate::store::snapshot::PushStats;
use crate::store::tree::{Node, NodeKind};
use chrono::TimeZone;
use clap::Parser;

fn snap(source: &str, mode: Option<&str>, consistency: Option<&str>, minute: u32) -> Snapshot {
    Snapshot {
        version: 2,
        time: Utc.with_ymd_and_hms(2026, 12, 1, 10, minute, 0).unwrap(),
        hostname: "h".into(),
        source: source.into(),
        kind: SourceKind::Dir,
        root_node: Node::from_metadata(std::ffi::OsStr::new("x"), NodeKind::Dir, &std::fs::metadata(".").unwrap()),
        tree: Id::random(),
        parent: None,
        tags: Default::default(),
        repository: Some("ns/shop".into()),
        // The labels as a snapshot file spells them.
        mode: mode.map(|m| serde_json::from_value(m.into()).unwrap()),
        consistency: consistency.map(|c| serde_json::from_value(c.into()).unwrap()),
        job: None,
        stats: PushStats { bytes_total: minute as u64 * 100, ..Default::default() },
        warnings: vec![],
        changed_during_read: vec![],
        program: "test".into(),
    }
}

fn store_of_snapshots() -> Vec<(Id, Snapshot)> {
    vec![
        (Id::random(), snap("pvc/ns/data", Some("offline"), Some("consistent"), 1)),
        (Id::random(), snap("pvc/ns/data", Some("online"), Some("crash-consistent"), 2)),
        (Id::random(), snap("pvc/ns/data", Some("online"), Some("inconsistent"), 3)),
        (Id::random(), snap("pvc/ns/logs", Some("offline"), Some("consistent"), 1)),
        (Id::random(), snap("pvc/other/data", Some("offline"), Some("consistent"), 9)),
    ]
}

fn sel(ns: &str) -> Selection {
    Selection { namespace: ns.into(), ..Default::default() }
}

#[test]
fn latest_is_per_volume_and_respects_mode_and_time() {
    let s = store_of_snapshots();
    let vols = vec!["data".to_string(), "logs".to_string()];
    let (r, alt) = choose(&s, &sel("ns"), &vols).unwrap();
    assert_eq!(r[0].snapshot, s[2].0.to_hex(), "newest of data");
    assert_eq!(r[0].consistency, Consistency::Inconsistent);
    assert_eq!(r[1].snapshot, s[3].0.to_hex(), "logs has its own history");
    assert_eq!(alt, vec![s[0].0.to_hex()], "the consistent alternative of data");

    let (r, alt) = choose(&s, &Selection { mode: Some(Mode::Offline), ..sel("ns") }, &vols).unwrap();
    assert_eq!(r[0].snapshot, s[0].0.to_hex());
    assert!(alt.is_empty());

    let as_of = Utc.with_ymd_and_hms(2026, 12, 1, 10, 2, 30).unwrap();
    let (r, _) = choose(&s, &Selection { as_of: Some(as_of), ..sel("ns") }, &vols[..1]).unwrap();
    assert_eq!(r[0].snapshot, s[1].0.to_hex());
    assert_eq!(r[0].bytes, 200);

    // Another namespace's history (a restore into a new namespace).
    let (r, _) = choose(&s, &sel("other"), &vols[..1]).unwrap();
    assert_eq!(r[0].snapshot, s[4].0.to_hex());
}

#[test]
fn a_volume_without_a_matching_snapshot_fails_the_whole_choice() {
    let s = store_of_snapshots();
    let e =
        choose(&s, &Selection { mode: Some(Mode::Online), ..sel("ns") }, &["data".into(), "logs".into()]).unwrap_err();
    assert_eq!(e.0, RestoreFailure::SnapshotNotFound);
    assert!(e.1.contains("logs") && e.1.contains("online"), "{}", e.1);
    let early = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    assert!(choose(&s, &Selection { as_of: Some(early), ..sel("ns") }, &["data".into()]).is_err());
}

#[test]
fn ids_pick_their_own_volumes_and_are_checked() {
    let s = store_of_snapshots();
    let vols = vec!["data".to_string(), "logs".to_string()];
    let ids = vec![s[1].0.to_hex()[..10].to_string()];
    let (r, _) = choose(&s, &Selection { ids, ..sel("ns") }, &vols).unwrap();
    assert_eq!(r.len(), 1, "only the ids' volumes");
    assert_eq!(r[0].volume, "data");
    assert_eq!(r[0].consistency, Consistency::CrashConsistent);
    for (ids, what) in [
        (vec!["ffffffffffffffff".to_string()], "no snapshot has id"),
        (vec![s[4].0.to_hex()], "not of a volume of this Repository"),
        (vec![s[0].0.to_hex(), s[1].0.to_hex()], "two ids name snapshots of volume data"),
    ] {
        let e = choose(&s, &Selection { ids, ..sel("ns") }, &vols).unwrap_err();
        assert_eq!(e.0, RestoreFailure::SnapshotNotFound);
        assert!(e.1.contains(what), "{}", e.1);
    }
}

#[test]
fn unlabelled_snapshots_promise_nothing() {
    use crate::store::snapshot::Consistency as Recorded;
    assert_eq!(Consistency::of_snapshot(None), Consistency::Inconsistent);
    assert_eq!(Consistency::of_snapshot(Some(Recorded::Unknown)), Consistency::Inconsistent);
    assert_eq!(Consistency::of_snapshot(Some(Recorded::Consistent)), Consistency::Consistent);
    assert_eq!(Consistency::of_snapshot(Some(Recorded::CrashConsistent)), Consistency::CrashConsistent);
    assert_eq!(Mode::of_snapshot(Some(crate::store::snapshot::Mode::Unknown)), None);
}

#[test]
fn reports_fit_the_termination_message() {
    let r = RestoreWorkerReport {
        cleaned: (0..500).map(|i| format!("data/some/long/path/{i}.lock")).collect(),
        ..Default::default()
    };
    let s = encode_report(&r);
    assert!(s.len() <= 4000);
    let back: RestoreWorkerReport = serde_json::from_str(&s).unwrap();
    assert!(back.cleaned.last().unwrap().contains("more"));
}

#[test]
fn every_pod_the_operator_builds_parses_with_the_worker_cli() {
    use crate::api::*;
    use crate::controller::push_job::build::WorkerConfig;
    use crate::controller::push_job::security::WorkerIdentity;
    use crate::controller::restore_job::build::worker_pod;
    let repo: Repository = serde_json::from_value(serde_json::json!({
        "apiVersion": "rediacc.io/v1alpha1", "kind": "Repository",
        "metadata": {"name": "shop", "namespace": "ns"},
        "spec": {"volumes": ["data"], "storage": {"bucket": "b", "prefix": "p", "pathStyle": true}}
    }))
    .unwrap();
    let job: RestoreJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "rediacc.io/v1alpha1", "kind": "RestoreJob",
        "metadata": {"name": "r1", "namespace": "ns", "uid": "u"},
        "spec": {"repositoryRef": {"name": "shop"}, "target": {"inPlace": {}},
                 "snapshot": {"latest": "Offline", "fromNamespace": "old"},
                 "cleanup": {"paths": ["postmaster.pid", "*.lock"], "when": "Always"}},
        "status": {"volumes": [{"volume": "data", "claim": "data", "snapshot": "aaaa", "safetySnapshot": "cccc"}]}
    }))
    .unwrap();
    let claims = vec![("data".to_string(), "data".to_string())];
    for (step, identity) in [
        (WorkerStep::Resolve, WorkerIdentity::Root),
        (WorkerStep::Restore, WorkerIdentity::Root),
        (WorkerStep::Undo, WorkerIdentity::App { uid: 999, gid: Some(999), groups: vec![] }),
    ] {
        let c = if step == WorkerStep::Resolve { &[][..] } else { &claims[..] };
        let pod = worker_pod(&job, &repo, "p", step, c, &Default::default(), &identity, &WorkerConfig::default());
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let argv = container.args.clone().unwrap();
        assert_eq!(argv[0], "restore-worker");
        let cli = match crate::cli::Cli::try_parse_from(std::iter::once("push-operator".to_string()).chain(argv))
            .unwrap_or_else(|e| panic!("{step:?}: {e}"))
            .command
        {
            crate::cli::Command::RestoreWorker(c) => c,
            _ => panic!("{step:?}: not restore-worker"),
        };
        assert_eq!(cli.args.step, step);
        assert_eq!(cli.store.store, "s3://b/p");
        assert_eq!(cli.store.s3_path_style, Some(true));
        assert_eq!(cli.args.selection().namespace, if step == WorkerStep::Resolve { "old" } else { "ns" });
        match step {
            WorkerStep::Resolve => {
                assert_eq!(cli.args.want, vec!["data"]);
                assert_eq!(cli.args.selection().mode, Some(Mode::Offline));
                assert!(container.volume_mounts.as_ref().unwrap().iter().all(|m| m.name == "tmp"));
            }
            WorkerStep::Restore => {
                assert_eq!(cli.args.snapshots, vec![("data".to_string(), "aaaa".to_string())]);
                assert!(cli.args.mirror);
                assert_eq!(cli.args.cleanup, vec!["postmaster.pid", "*.lock"]);
                assert_eq!(cli.args.cleanup_when, CleanupWhen::Always);
                let caps = container.security_context.as_ref().unwrap().capabilities.as_ref().unwrap();
                assert_eq!(caps.add.clone().unwrap(), vec!["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]);
                assert_eq!(caps.drop.clone().unwrap(), vec!["ALL"]);
                let m = container.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "v0").unwrap();
                assert_eq!(m.read_only, None, "restores write");
            }
            WorkerStep::Undo => {
                assert_eq!(cli.args.snapshots, vec![("data".to_string(), "cccc".to_string())]);
                assert!(cli.args.cleanup.is_empty(), "the undo puts back exactly what was there");
                let caps = container.security_context.as_ref().unwrap().capabilities.as_ref().unwrap();
                assert_eq!(caps.add, None, "a restricted worker gets no capability");
            }
            WorkerStep::SafetyPush | WorkerStep::Check => unreachable!(),
        }
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(pod.metadata.labels.as_ref().unwrap().get(RESTORE_LABEL).map(String::as_str), Some("r1"));
        assert_eq!(pod.metadata.owner_references.as_ref().unwrap()[0].kind, "RestoreJob");
    }
    // The undo push is the push worker with its own CLI.
    let pod = worker_pod(
        &job,
        &repo,
        "p",
        WorkerStep::SafetyPush,
        &claims,
        &Default::default(),
        &WorkerIdentity::Root,
        &WorkerConfig::default(),
    );
    let argv = pod.spec.unwrap().containers[0].args.clone().unwrap();
    assert_eq!(argv[0], "worker");
    match crate::cli::Cli::try_parse_from(std::iter::once("push-operator".to_string()).chain(argv)).unwrap().command {
        crate::cli::Command::Worker(w) => {
            assert_eq!((w.args.mode, w.args.job.as_str()), (Mode::Offline, "r1"));
            assert_eq!(w.args.volumes, vec![("data".to_string(), std::path::PathBuf::from("/volumes/data"))]);
        }
        _ => panic!("the safety push is not the push worker"),
    }
}

#[test]
fn resolve_then_restore_in_place_mirrors_checks_and_audits() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("data");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::write(vol.join("a.txt"), "version 1").unwrap();
    std::fs::write(vol.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
    let backend = std::sync::Arc::new(crate::store::backend::fs::FsBackend::new(tmp.path().join("store")));
    let creds = Credentials::given(Secret::Raw(crate::store::crypto::random_key()));
    let store = Store::open_or_init(backend, &Default::default(), &creds).unwrap();
    let push = crate::worker::WorkerArgs {
        namespace: "ns".into(),
        repository: "shop".into(),
        job: "p1".into(),
        mode: Mode::Offline,
        consistency: Consistency::Consistent,
        priority: crate::api::Priority::P4,
        reason: None,
        excludes: vec![],
        volumes: vec![("data".into(), vol.clone())],
        retention: None,
    };
    let pushed = crate::worker::run(&store, &push);
    assert!(pushed.error.is_none(), "{:?}", pushed.error);
    let id = pushed.volumes[0].snapshot.clone();
    // The application moves on: a changed file, a new file, a lock left behind.
    std::fs::write(vol.join("a.txt"), "version 2, longer").unwrap();
    std::fs::write(vol.join("new.txt"), "not in the snapshot").unwrap();

    let cli = |argv: &[&str]| {
        let base = ["push-operator", "restore-worker", "--store", "x", "--namespace", "ns", "--repository", "shop"];
        let parsed = crate::cli::Cli::try_parse_from(base.iter().chain(&["--job", "r1"]).chain(argv)).unwrap();
        match parsed.command {
            crate::cli::Command::RestoreWorker(c) => c.args,
            _ => unreachable!("restore-worker parses as itself"),
        }
    };
    let r = run(&store, &cli(&["--step", "resolve", "--want", "data"]));
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.resolved[0].snapshot, id);
    assert_eq!(r.resolved[0].consistency, Consistency::Consistent);
    let target = format!("data={}", vol.display());
    let snapshot = format!("data={id}");
    let r = run(&store, &cli(&["--step", "restore", "--volume", &target, "--snapshot", &snapshot, "--mirror"]));
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(std::fs::read_to_string(vol.join("a.txt")).unwrap(), "version 1");
    assert!(!vol.join("new.txt").exists(), "mirror removed what the snapshot does not have");
    assert_eq!(std::fs::read(vol.join("sub/b.bin")).unwrap(), vec![7u8; 100_000]);
    let stats = r.stats.unwrap();
    assert_eq!(stats.files_checked, 2);
    assert!(stats.removed >= 1);
    let audit = crate::store::audit::list(&store).unwrap();
    let rec = audit.iter().find(|a| a.action == crate::store::audit::Action::Restore).expect("a restore audit record");
    assert_eq!(rec.result, crate::store::audit::Outcome::Ok);
    assert_eq!(rec.job.as_deref(), Some("r1"));
    assert_eq!(rec.snapshots, vec![id.clone()]);

    // A snapshot id that does not exist: named reason, nothing written.
    let r = run(&store, &cli(&["--step", "resolve", "--want", "data", "--id", "0123456789abcdef"]));
    assert_eq!(r.reason, Some(RestoreFailure::SnapshotNotFound));
}

#[test]
fn a_restore_jobs_test_worker_env_reaches_its_worker_pods() {
    use crate::api::*;
    use crate::controller::push_job::build::WorkerConfig;
    use crate::controller::push_job::security::WorkerIdentity;
    use crate::controller::restore_job::build::worker_pod;
    let repo: Repository = serde_json::from_value(serde_json::json!({
        "apiVersion": "rediacc.io/v1alpha1", "kind": "Repository",
        "metadata": {"name": "shop", "namespace": "ns"},
        "spec": {"volumes": ["a", "b"], "storage": {"bucket": "b", "prefix": "p"}}
    }))
    .unwrap();
    let job: RestoreJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "rediacc.io/v1alpha1", "kind": "RestoreJob",
        "metadata": {"name": "r1", "namespace": "ns", "uid": "u",
                     "annotations": {crate::test_hooks::WORKER_ENV_ANNOTATION: "PUSH_OPERATOR_CRASH_AT=restore:1"}},
        "spec": {"repositoryRef": {"name": "shop"}, "target": {"inPlace": {}}},
        "status": {"volumes": [{"volume": "a", "claim": "a", "snapshot": "aaaa"}, {"volume": "b", "claim": "b", "snapshot": "bbbb"}]}
    }))
    .unwrap();
    let claims = vec![("a".to_string(), "a".to_string()), ("b".to_string(), "b".to_string())];
    for step in [WorkerStep::SafetyPush, WorkerStep::Restore, WorkerStep::Undo] {
        let pod = worker_pod(
            &job,
            &repo,
            "p",
            step,
            &claims,
            &Default::default(),
            &WorkerIdentity::Root,
            &WorkerConfig::default(),
        );
        let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
        let crash: Vec<_> = env.iter().filter(|e| e.name == "PUSH_OPERATOR_CRASH_AT").collect();
        assert_eq!(crash.len(), 1, "{step:?}: {env:?}");
        assert_eq!(crash[0].value.as_deref(), Some("restore:1"));
    }
}

#[test]
fn store_failures_are_the_restores_reasons_with_their_fixes() {
    use crate::store::OpenError;
    use crate::store::backend::BackendError;
    let cases: Vec<(anyhow::Error, RestoreFailure)> = vec![
        (BackendError::Denied("403".into()).into(), RestoreFailure::StoreAccessDenied),
        (BackendError::NoBucket("404".into()).into(), RestoreFailure::StoreBucketMissing),
        (BackendError::Transient("reset".into()).into(), RestoreFailure::StoreUnreachable),
        (OpenError::Missing("s3://b/p".into()).into(), RestoreFailure::StoreNotFound),
        (OpenError::KeyMissing("s3://b/p".into()).into(), RestoreFailure::StoreKeyMissing),
        (OpenError::NotEncrypted("s3://b/p".into()).into(), RestoreFailure::StoreNotEncrypted),
        (crate::store::crypto::OpenFailed { what: "pack x".into() }.into(), RestoreFailure::StoreDamaged),
    ];
    for (e, want) in cases {
        let e = e.context("restore of volume data");
        assert_eq!(RestoreFailure::of(&e), Some(want), "{e:#}");
        assert!(!want.fix().is_empty());
    }
    assert_eq!(RestoreFailure::of(&anyhow::anyhow!("something else")), None);
}
