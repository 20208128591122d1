//! The contract between the operator and its pods: every argument list the operator builds
//! parses with the binary's own command line, and every message a pod writes is read back.

use super::*;
use crate::api::policy::{PushPolicy, RetentionSpec};
use crate::api::{Consistency, Mode, Priority, PushJob, Repository};
use crate::controller::push_job::build::{WorkerConfig, worker_pod};
use crate::controller::push_job::security::WorkerIdentity;
use std::collections::BTreeSet;

fn parse(argv: Vec<String>) -> Command {
    Cli::try_parse_from(std::iter::once("push-operator".to_string()).chain(argv.clone()))
        .unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}"))
        .command
}

fn repository() -> Repository {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "rediacc.io/v1alpha1", "kind": "Repository",
        "metadata": {"name": "shop", "namespace": "prod"},
        "spec": {"volumes": ["data", "disk"], "exclude": ["*.sock", "cache/**"],
                 "storage": {"bucket": "backups", "prefix": "prod", "endpoint": "http://s3:9000", "pathStyle": true,
                             "region": "eu-west-1", "credentialsSecretRef": {"name": "s3"},
                             "encryption": {"mode": "None"},
                             "objectLock": {"mode": "Governance", "retentionDays": 30}}}
    }))
    .unwrap()
}

#[test]
fn the_command_line_is_well_formed() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn every_push_worker_pod_parses_with_the_worker_cli() {
    let repo = repository();
    for (mode, consistency, priority, retention) in [
        (Mode::Offline, Consistency::Consistent, Priority::P1, None),
        (Mode::Online, Consistency::CrashConsistent, Priority::P4, Some(RetentionSpec::default())),
        (Mode::Online, Consistency::Inconsistent, Priority::P5, None),
    ] {
        let job: PushJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "rediacc.io/v1alpha1", "kind": "PushJob",
            "metadata": {"name": "j1", "namespace": "prod", "uid": "u1"},
            "spec": {"repositoryRef": {"name": "shop"}, "mode": mode, "priority": priority,
                     "reason": "pre-upgrade", "retention": retention},
            "status": {"consistency": consistency}
        }))
        .unwrap();
        let claims = vec![("data".to_string(), "data-claim".to_string()), ("disk".to_string(), "disk".to_string())];
        let block = BTreeSet::from(["disk".to_string()]);
        let pod = worker_pod(&job, &repo, "j1-push", &claims, &block, None, &WorkerIdentity::Root, &Default::default());
        let argv = pod.spec.unwrap().containers[0].args.clone().unwrap();
        let Command::Worker(w) = parse(argv) else { panic!("not the worker command") };
        assert_eq!((w.store.store.as_str(), w.store.s3_path_style), ("s3://backups/prod", Some(true)));
        // Endpoint and region reach the worker through its environment (AWS_ENDPOINT_URL, AWS_REGION).
        assert_eq!((w.store.s3_endpoint.as_deref(), w.store.s3_region.as_deref()), (None, None));
        let a = &w.args;
        assert_eq!((a.namespace.as_str(), a.repository.as_str(), a.job.as_str()), ("prod", "shop", "j1"));
        assert_eq!((a.mode, a.consistency, a.priority), (mode, consistency, priority));
        assert_eq!(a.reason.as_deref(), Some("pre-upgrade"));
        assert_eq!(a.excludes, vec!["*.sock", "cache/**"]);
        let mounts: Vec<(String, PathBuf)> =
            vec![("data".into(), "/volumes/data".into()), ("disk".into(), "/volumes/disk".into())];
        assert_eq!(a.volumes, mounts, "volumes by name, where the pod mounts them");
        assert_eq!(a.retention, retention);
        // A store the push creates has the Repository's settings.
        let init = w.init.options();
        assert_eq!(init.encryption, Encryption::None);
        let lock = init.object_lock.unwrap();
        assert_eq!((lock.mode, lock.period_seconds), (crate::store::backend::RetentionMode::Governance, 30 * 86400));
        assert_eq!(w.termination_log, PathBuf::from("/dev/termination-log"));
    }
}

#[test]
fn a_worker_argument_the_operator_never_writes_is_refused() {
    let base = ["worker", "--store", "s3://b/p", "--namespace", "n", "--repository", "r", "--job", "j"];
    let with = |extra: &[&str]| {
        Cli::try_parse_from(std::iter::once("push-operator").chain(base).chain(extra.iter().copied())).map(|_| ())
    };
    assert!(with(&["--mode", "offline", "--consistency", "consistent", "--volume", "d=/v"]).is_ok());
    for bad in [
        &["--mode", "Offline", "--consistency", "consistent", "--volume", "d=/v"][..],
        &["--mode", "offline", "--consistency", "torn", "--volume", "d=/v"],
        &["--mode", "offline", "--consistency", "consistent", "--priority", "P9", "--volume", "d=/v"],
        &["--mode", "offline", "--consistency", "consistent", "--volume", "no-path"],
        &["--mode", "offline", "--consistency", "consistent", "--volume", "d=/v", "--retention", "{"],
        &["--mode", "offline", "--consistency", "consistent"],
    ] {
        assert!(with(bad).is_err(), "{bad:?} parsed");
    }
}

fn policy() -> PushPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "rediacc.io/v1alpha1", "kind": "PushPolicy",
        "metadata": {"name": "nightly", "namespace": "prod", "uid": "p1"},
        "spec": {"repositoryRef": {"name": "shop"}, "schedules": []}
    }))
    .unwrap()
}

#[test]
fn every_prune_pod_parses_with_the_prune_cli() {
    use crate::controller::policy::{plan::NewPrune, prune_pod};
    let p = NewPrune {
        name: "nightly-maintenance-1".into(),
        repository: "shop".into(),
        scheduled: chrono::Utc::now(),
        max_unused_percent: 30,
        wait_seconds: 600,
    };
    let pod = prune_pod(&policy(), &repository(), &p, &WorkerConfig::default());
    let c = &pod.spec.as_ref().unwrap().containers[0];
    let Command::Prune(a) = parse(c.args.clone().unwrap()) else { panic!("not the prune command") };
    assert_eq!(a.store.store, "s3://backups/prod");
    assert!((a.max_unused - 0.30).abs() < 1e-9, "{}", a.max_unused);
    assert_eq!(a.wait, Some(std::time::Duration::from_secs(600)));
    assert!(a.if_exists && !a.dry_run);
    assert_eq!(a.job.as_deref(), Some("nightly-maintenance-1"));
    assert_eq!(a.reason, "maintenance of PushPolicy prod/nightly");
    // The report's path comes from the pod's environment (clap reads it from there).
    let env = c.env.as_ref().unwrap();
    let log = env.iter().find(|e| e.name == "PUSH_OPERATOR_TERMINATION_LOG").unwrap();
    assert_eq!(log.value.as_deref(), Some("/dev/termination-log"));
}

/// A finished maintenance pod whose termination message is `message`.
fn finished_prune_pod(succeeded: bool, message: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nightly-maintenance-1", "namespace": "prod"},
        "status": {"phase": if succeeded { "Succeeded" } else { "Failed" },
                   "containerStatuses": [{"name": "prune", "image": "i", "imageID": "", "ready": false,
                                          "restartCount": 0,
                                          "state": {"terminated": {"exitCode": if succeeded { 0 } else { 1 },
                                                                   "message": message}}}]}
    }))
    .unwrap()
}

#[test]
fn every_prune_message_is_read_back_by_the_operator() {
    use crate::controller::policy::pod_view;
    let report = crate::store::prune::PruneReport { bytes_reclaimed: 1234, store_bytes: 99_000, ..Default::default() };
    let v = pod_view(&finished_prune_pod(true, &PruneMessage::of(&Ok(report)).encode()), "shop");
    assert_eq!((v.bytes_reclaimed, v.store_bytes, v.reason), (Some(1234), Some(99_000), None));

    let err = anyhow::anyhow!("access denied").context("cannot list packs");
    let v = pod_view(&finished_prune_pod(false, &PruneMessage::of(&Err(err)).encode()), "shop");
    assert_eq!(v.reason.as_deref(), Some("PruneFailed"));
    assert_eq!(v.message.as_deref(), Some("cannot list packs: access denied"));

    let long = anyhow::anyhow!("{}", "é".repeat(5000));
    let msg = PruneMessage::of(&Err(long)).encode();
    assert!(msg.len() < 4096, "the kubelet keeps 4096 bytes: {}", msg.len());
    assert!(PruneMessage::parse(&msg).unwrap().error.is_some());

    let v = pod_view(&finished_prune_pod(true, &PruneMessage::skipped("no store yet".into()).encode()), "shop");
    assert_eq!((v.bytes_reclaimed, v.reason), (None, None));

    // A pod that died before writing its message: the kubelet's log tail is the message.
    let v = pod_view(&finished_prune_pod(false, "thread 'main' panicked"), "shop");
    assert_eq!(v.message.as_deref(), Some("thread 'main' panicked"));
}
