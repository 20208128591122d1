//! The CRDs and the operator against the real Kubernetes control plane (e2e/cluster/up).

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use apiserver::*;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use push_operator::api::*;
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;

fn server() -> &'static ApiServer {
    static S: OnceLock<ApiServer> = OnceLock::new();
    S.get_or_init(ApiServer::start)
}

async fn client() -> kube::Client {
    let c = server().client().await;
    install_crds(&c, our_crds()).await;
    c
}

fn dynamic(client: &kube::Client, ns: &str, kind: &str, plural: &str) -> Api<kube::api::DynamicObject> {
    let ar =
        kube::api::ApiResource::from_gvk_with_plural(&kube::api::GroupVersionKind::gvk(GROUP, VERSION, kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn repository(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "rediacc.io/v1alpha1", "kind": "Repository",
        "metadata": {"name": name},
        "spec": {
            "volumes": ["data"],
            "storage": {"endpoint": "http://minio:9000", "bucket": "backups", "prefix": "shop",
                        "credentialsSecretRef": {"name": "s3"}},
            "online": {"volumeSnapshotClassName": "csi-snap"}
        }
    })
}

fn pushjob(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "rediacc.io/v1alpha1", "kind": "PushJob",
        "metadata": {"name": name},
        "spec": {"repositoryRef": {"name": "shop"}, "mode": "Offline"}
    })
}

fn policy(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "rediacc.io/v1alpha1", "kind": "PushPolicy",
        "metadata": {"name": name},
        "spec": {
            "repositoryRef": {"name": "shop"},
            "schedules": [
                {"name": "daytime-online", "mode": "Online", "cron": "0 8,12,16,20 * * *", "timeZone": "Europe/Berlin", "priority": "P3"},
                {"name": "weekly-offline", "mode": "Offline", "cron": "0 2 * * 0", "priority": "P2"}
            ],
            "retention": {"keepLast": 5, "offline": {"keepWeekly": 8, "keepWithin": "30d"}}
        }
    })
}

async fn create(api: &Api<kube::api::DynamicObject>, v: serde_json::Value) -> Result<kube::api::DynamicObject, String> {
    let obj: kube::api::DynamicObject = serde_json::from_value(v).unwrap();
    api.create(&PostParams::default(), &obj).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn crds_are_accepted_and_valid_objects_get_defaults() {
    let c = client().await;
    let ns = "valid";
    ensure_namespace(&c, ns).await;
    let repos = dynamic(&c, ns, "Repository", "repositories");
    let jobs = dynamic(&c, ns, "PushJob", "pushjobs");
    let pols = dynamic(&c, ns, "PushPolicy", "pushpolicies");
    create(&repos, repository("shop")).await.unwrap();
    let j = create(&jobs, pushjob("j1")).await.unwrap();
    assert_eq!(j.data["spec"]["priority"], "P4", "priority defaults to P4");
    let p = create(&pols, policy("hybrid")).await.unwrap();
    assert_eq!(p.data["spec"]["successfulJobsHistoryLimit"], 3);
    assert_eq!(p.data["spec"]["suspend"], false);
    // And they read back as our typed objects.
    let typed: Api<PushJob> = Api::namespaced(c.clone(), ns);
    let got = typed.get("j1").await.unwrap();
    assert_eq!(got.spec.priority, Priority::P4);
    assert_eq!(got.spec.mode, Mode::Offline);
    let typed: Api<PushPolicy> = Api::namespaced(c.clone(), ns);
    assert_eq!(typed.get("hybrid").await.unwrap().spec.schedules.len(), 2);
}

#[tokio::test]
async fn invalid_manifests_are_rejected_with_clear_messages() {
    let c = client().await;
    let ns = "invalid";
    ensure_namespace(&c, ns).await;
    let repos = dynamic(&c, ns, "Repository", "repositories");
    let jobs = dynamic(&c, ns, "PushJob", "pushjobs");
    let pols = dynamic(&c, ns, "PushPolicy", "pushpolicies");
    // Sets (or, with null, removes) the value at a path; numeric segments index arrays.
    let with = |mut v: serde_json::Value, path: &[&str], value: serde_json::Value| {
        let mut cur = &mut v;
        for p in &path[..path.len() - 1] {
            cur = match p.parse::<usize>() {
                Ok(i) if cur.is_array() => &mut cur[i],
                _ => &mut cur[*p],
            };
        }
        let last = path[path.len() - 1];
        match (value.is_null(), last.parse::<usize>()) {
            (true, _) => {
                cur.as_object_mut().unwrap().remove(last);
            }
            (false, Ok(i)) if cur.is_array() => cur[i] = value,
            (false, _) => cur[last] = value,
        }
        v
    };
    let cases: Vec<(&Api<kube::api::DynamicObject>, serde_json::Value, &str)> = vec![
        (
            &jobs,
            with(pushjob("no-repo"), &["spec", "repositoryRef"], serde_json::Value::Null),
            "spec.repositoryRef: Required value",
        ),
        (&jobs, with(pushjob("bad-priority"), &["spec", "priority"], json!("P9")), "Unsupported value: \"P9\""),
        (&jobs, with(pushjob("bad-mode"), &["spec", "mode"], json!("Sideways")), "Unsupported value: \"Sideways\""),
        (
            &jobs,
            with(pushjob("zero-deadline"), &["spec", "deadlineSeconds"], json!(0)),
            "should be greater than or equal to 1",
        ),
        (
            &repos,
            with(repository("no-volumes"), &["spec", "volumes"], serde_json::Value::Null),
            "name the PVCs: spec.volumes or spec.volumeSelector",
        ),
        (
            &repos,
            with(repository("bad-bucket"), &["spec", "storage", "bucket"], json!("Bad_Bucket")),
            "spec.storage.bucket",
        ),
        (
            &repos,
            with(repository("bad-endpoint"), &["spec", "storage", "endpoint"], json!("ftp://x")),
            "spec.storage.endpoint",
        ),
        (
            &repos,
            with(repository("both-online"), &["spec", "online", "live"], json!(true)),
            "set volumeSnapshotClassName or live, not both",
        ),
        (
            &pols,
            with(policy("bad-cron"), &["spec", "schedules", "0", "cron"], json!("every day at noon")),
            "spec.schedules[0].cron",
        ),
        (
            &pols,
            with(policy("dup-names"), &["spec", "schedules", "1", "name"], json!("daytime-online")),
            "schedule names must be unique",
        ),
        (
            &pols,
            with(policy("both-refs"), &["spec", "repositorySelector"], json!({"matchLabels": {"a": "b"}})),
            "set exactly one of repositoryRef and repositorySelector",
        ),
        (
            &pols,
            with(policy("bad-within"), &["spec", "retention", "offline", "keepWithin"], json!("7 days")),
            "keepWithin",
        ),
        (&pols, with(policy("no-schedules"), &["spec", "schedules"], json!([])), "spec.schedules"),
        (
            &pols,
            with(policy("bad-maintenance"), &["spec", "maintenance"], json!({"cron": "weekly"})),
            "spec.maintenance.cron",
        ),
        (
            &pols,
            with(policy("bad-unused"), &["spec", "maintenance"], json!({"cron": "@weekly", "maxUnusedPercent": 150})),
            "spec.maintenance.maxUnusedPercent",
        ),
    ];
    assert!(cases.len() >= 8);
    for (api, manifest, expected) in cases {
        let name = manifest["metadata"]["name"].as_str().unwrap().to_string();
        match create(api, manifest).await {
            Ok(_) => panic!("{name}: accepted, expected a rejection mentioning {expected:?}"),
            Err(e) => assert!(e.contains(expected), "{name}: expected {expected:?} in: {e}"),
        }
    }

    // Immutable fields: the repository and mode of a PushJob.
    create(&jobs, pushjob("fixed")).await.unwrap();
    let err = jobs
        .patch("fixed", &PatchParams::default(), &Patch::Merge(json!({"spec": {"mode": "Online"}})))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("repositoryRef and mode cannot change"), "{err}");
    // The priority may change while queued.
    jobs.patch("fixed", &PatchParams::default(), &Patch::Merge(json!({"spec": {"priority": "P1"}}))).await.unwrap();
}

#[tokio::test]
async fn status_subresource_finalizers_and_conflicts() {
    let c = client().await;
    let ns = "lifecycle";
    ensure_namespace(&c, ns).await;
    let api: Api<PushJob> = Api::namespaced(c.clone(), ns);
    let job: PushJob = serde_json::from_value(pushjob("life")).unwrap();
    let created = api.create(&PostParams::default(), &job).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    // Status goes through the status subresource and does not bump the generation.
    let mut st = PushJobStatus { phase: Some(Phase::Queued), queue_position: Some(2), ..Default::default() };
    set_condition(&mut st.conditions, READY, false, "Queued", "waiting", Some(1), chrono::Utc::now());
    api.patch_status("life", &PatchParams::default(), &Patch::Merge(json!({"status": st}))).await.unwrap();
    let got = api.get("life").await.unwrap();
    assert_eq!(got.status.as_ref().unwrap().phase, Some(Phase::Queued));
    assert_eq!(got.status.as_ref().unwrap().conditions[0].reason, "Queued");
    assert_eq!(got.metadata.generation, Some(1));
    // A status sent through the main resource is ignored.
    api.patch(
        "life",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}, "spec": {"priority": "P2"}})),
    )
    .await
    .unwrap();
    let got = api.get("life").await.unwrap();
    assert_eq!(got.status.as_ref().unwrap().phase, Some(Phase::Queued));
    assert_eq!(got.metadata.generation, Some(2), "a spec change bumps the generation");

    // A stale update is a conflict.
    let mut stale = created.clone();
    stale.spec.priority = Priority::P5;
    let err = api.replace("life", &PostParams::default(), &stale).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(e) if e.code == 409), "{err}");

    // Finalizers hold a deleted object until they are removed.
    api.patch("life", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": [FINALIZER]}})))
        .await
        .unwrap();
    api.delete("life", &DeleteParams::default()).await.unwrap();
    let held = api.get("life").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch("life", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    for _ in 0..50 {
        if api.get_opt("life").await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("object still present after its finalizer was removed");
}

#[tokio::test]
async fn the_controller_runs_leads_and_serves_metrics() {
    let c = client().await;
    ensure_namespace(&c, "ops").await;
    let port = common::free_port();
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args([
        "controller",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--lease-namespace",
        "ops",
        "--max-concurrent-pushes",
        "1",
    ])
    .env("KUBECONFIG", &server().kubeconfig)
    .env("PUSH_OPERATOR_LOG", "info")
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(server().dir.path().join("controller.log")).unwrap());
    let pid = common::spawn_tied(cmd);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(c.clone(), "ops");
    let mut holder = None;
    for _ in 0..100 {
        if let Ok(l) = leases.get("push-operator-leader").await {
            holder = l.spec.and_then(|s| s.holder_identity);
            if holder.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let holder = holder.expect("the controller took the leader lease");
    // A PushJob for a Repository that does not exist fails with a reason. Created before the
    // metrics are read, so a reconcile is owed whatever else the server holds.
    let jobs: Api<PushJob> = Api::namespaced(c.clone(), "ops");
    jobs.create(&PostParams::default(), &serde_json::from_value(pushjob("seen")).unwrap()).await.unwrap();
    // Waits for the queue gauges (the first reconciles may be of other tests' objects).
    let metrics =
        loop_get(&format!("http://127.0.0.1:{port}/metrics"), "push_operator_queue_depth{priority=\"P1\"}").await;
    assert!(metrics.contains("push_operator_reconcile_total"), "{metrics}");
    assert!(loop_get(&format!("http://127.0.0.1:{port}/healthz"), "ok").await.contains("ok"));
    assert!(loop_get(&format!("http://127.0.0.1:{port}/readyz"), "ready").await.contains("ready"));
    let mut finalized = false;
    for _ in 0..50 {
        let j = jobs.get("seen").await.unwrap();
        if j.metadata.finalizers.unwrap_or_default().contains(&FINALIZER.to_string()) {
            finalized = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(finalized, "the controller added its finalizer to the new job");
    let mut reason = None;
    for _ in 0..100 {
        let st = jobs.get("seen").await.unwrap().status.unwrap_or_default();
        if st.phase == Some(Phase::Failed) {
            reason = st.failure.map(|f| f.reason);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(reason.as_deref(), Some("RepositoryNotFound"), "the job fails, naming the missing Repository");
    let m = loop_get(&format!("http://127.0.0.1:{port}/metrics"), "controller=\"pushjob\"").await;
    assert!(m.contains("push_operator_reconcile_total{controller=\"pushjob\"}"), "{m}");

    // SIGTERM: a graceful stop that hands the lease back.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    for _ in 0..100 {
        let l = leases.get("push-operator-leader").await.unwrap();
        if l.spec.and_then(|s| s.holder_identity).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the lease held by {holder} was not released on SIGTERM");
}

async fn loop_get(url: &str, needle: &str) -> String {
    for _ in 0..100 {
        if let Ok(o) = tokio::process::Command::new("curl").args(["-s", url]).output().await {
            let body = String::from_utf8_lossy(&o.stdout).into_owned();
            if body.contains(needle) {
                return body;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{url} never answered with {needle:?}");
}

/// Every rediacc.io object in config/samples/ is accepted by the real API server (the files
/// with Helm template syntax are rendered and checked by scripts/check-chart).
#[tokio::test]
async fn config_samples_are_accepted() {
    let c = client().await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/samples");
    let mut created = 0;
    let mut policies = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        // Flux post-build substitution (`${var}`), done as Flux would, with a value.
        while let Some(start) = text.find("${") {
            let end = start + text[start..].find('}').expect("closed ${...}");
            text.replace_range(start..=end, "v1");
        }
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") || text.contains("{{") {
            continue;
        }
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v["apiVersion"].as_str().unwrap_or("").starts_with("rediacc.io/") {
                continue;
            }
            let kind = v["kind"].as_str().unwrap().to_string();
            let plural = match kind.as_str() {
                "Repository" => "repositories",
                "PushJob" => "pushjobs",
                "PushPolicy" => "pushpolicies",
                k => panic!("unknown kind {k} in {}", path.display()),
            };
            let ns = format!("samples-{created}");
            ensure_namespace(&c, &ns).await;
            let api = dynamic(&c, &ns, &kind, plural);
            let mut v = v;
            v["metadata"].as_object_mut().unwrap().remove("namespace");
            create(&api, v).await.unwrap_or_else(|e| panic!("{} ({kind}) rejected: {e}", path.display()));
            created += 1;
            if kind == "PushPolicy" {
                policies.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(created >= 4, "only {created} sample objects found");
    policies.sort();
    assert_eq!(
        policies,
        ["pushpolicy-development.yaml", "pushpolicy-ecommerce.yaml", "pushpolicy-production-database.yaml"],
        "the three strategies, each accepted"
    );
}

/// Status writes are server-side applies, one field manager per controller: a field a controller
/// stops sending is removed on the server, and the fields of one controller survive the other's
/// writes.
#[tokio::test]
async fn status_writes_clear_fields_and_keep_each_controllers_own() {
    use push_operator::controller::push_job::push_records;
    use push_operator::controller::{StatusManager, apply_status};
    let c = client().await;
    let ns = "ssa";
    ensure_namespace(&c, ns).await;
    let jobs: Api<PushJob> = Api::namespaced(c.clone(), ns);
    jobs.create(&PostParams::default(), &serde_json::from_value(pushjob("cleared")).unwrap()).await.unwrap();
    let running = PushJobStatus {
        phase: Some(Phase::Pushing),
        queue_position: Some(3),
        node_name: Some("node-a".into()),
        created: vec![CreatedObject { kind: CreatedKind::Pod, name: "cleared-push".into() }],
        ..Default::default()
    };
    apply_status(&jobs, "cleared", StatusManager::PushJob, serde_json::to_value(&running).unwrap()).await.unwrap();
    let hook = json!({"preHook": {"ok": true, "message": "froze"}});
    apply_status(&jobs, "cleared", StatusManager::Hooks, hook).await.unwrap();
    let got = jobs.get("cleared").await.unwrap().status.unwrap();
    assert_eq!((got.queue_position, got.node_name.as_deref(), got.created.len()), (Some(3), Some("node-a"), 1));
    let done = PushJobStatus { phase: Some(Phase::Succeeded), ..Default::default() };
    apply_status(&jobs, "cleared", StatusManager::PushJob, serde_json::to_value(&done).unwrap()).await.unwrap();
    let got = jobs.get("cleared").await.unwrap().status.unwrap();
    assert_eq!(got.phase, Some(Phase::Succeeded));
    assert_eq!((got.queue_position, got.node_name, got.created), (None, None, vec![]), "cleared fields are gone");
    assert!(got.pre_hook.is_some_and(|h| h.ok), "the hooks' field is another manager's: kept");

    let repos = dynamic(&c, ns, "Repository", "repositories");
    create(&repos, repository("shop")).await.unwrap();
    let typed: Api<Repository> = Api::namespaced(c.clone(), ns);
    let mine = |volumes: &[&str]| json!({"volumes": volumes, "mounted": true});
    apply_status(&typed, "shop", StatusManager::Repository, mine(&["data"])).await.unwrap();
    let record = |job: &str, mode| PushRecord {
        time: time(chrono::Utc::now()),
        job: job.into(),
        mode,
        result: JobResult::Succeeded,
        snapshots: vec!["abc".into()],
    };
    let stats = JobStats { bytes_total: 100, bytes_uploaded: 40, ..Default::default() };
    let rs = typed.get("shop").await.unwrap().status.unwrap_or_default();
    let records = push_records(&rs, Mode::Offline, record("off-1", Mode::Offline), Some(&stats), 1);
    apply_status(&typed, "shop", StatusManager::PushJob, records).await.unwrap();
    // The Repository controller writes again, without the push records and with other volumes.
    apply_status(&typed, "shop", StatusManager::Repository, mine(&["data", "logs"])).await.unwrap();
    let rs = typed.get("shop").await.unwrap().status.unwrap();
    assert_eq!(rs.volumes, ["data", "logs"]);
    assert_eq!(rs.last_offline_push.as_ref().map(|r| r.job.as_str()), Some("off-1"), "the push record survives");
    assert_eq!((rs.snapshot_count, rs.stored_bytes), (Some(1), Some(40)));
    // An online push: the offline record stays (the PushJob controller sends all its fields).
    let records = push_records(&rs, Mode::Online, record("on-1", Mode::Online), Some(&stats), 1);
    apply_status(&typed, "shop", StatusManager::PushJob, records).await.unwrap();
    let rs = typed.get("shop").await.unwrap().status.unwrap();
    assert_eq!(rs.last_online_push.map(|r| r.job), Some("on-1".into()));
    assert_eq!(rs.last_offline_push.map(|r| r.job), Some("off-1".into()));
    assert_eq!((rs.snapshot_count, rs.stored_bytes, rs.mounted), (Some(2), Some(80), Some(true)));
    assert_eq!(rs.volumes, ["data", "logs"], "the Repository controller's fields survive the PushJob's");
}
