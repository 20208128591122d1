//! The PushPolicy controller: creates the PushJobs of each schedule (deterministic names, so a
//! restart never duplicates one), the prune Pods of the maintenance schedule, trims the job
//! history, and keeps the status (last and next run per schedule, recent results, success
//! rate), Events and metrics. The decisions are in [`plan`] (pure); this module observes and
//! applies.

pub mod plan;
pub mod restore_tests;
pub mod schedule;

use super::push_job::build::{WorkerConfig, hardened_pod, store_access};
use super::push_job::label_selector_string;
use super::push_job::security::WorkerIdentity;
use super::{Context, Error, Result, StatusManager, apply_status};
use crate::api::*;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};
use plan::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

fn owner(policy: &PushPolicy) -> OwnerReference {
    OwnerReference {
        api_version: PushPolicy::api_version(&()).into_owned(),
        kind: PushPolicy::kind(&()).into_owned(),
        name: policy.name_any(),
        uid: policy.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn run_meta(policy: &PushPolicy, name: &str, schedule: &str, scheduled: chrono::DateTime<chrono::Utc>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: policy.namespace(),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (POLICY_LABEL.to_string(), policy.name_any()),
            (SCHEDULE_LABEL.to_string(), schedule.to_string()),
        ])),
        annotations: Some(BTreeMap::from([(
            SCHEDULED_ANNOTATION.to_string(),
            scheduled.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )])),
        owner_references: Some(vec![owner(policy)]),
        ..Default::default()
    }
}

/// The PushJob of a scheduled run (pure).
pub fn job_object(policy: &PushPolicy, j: &NewJob) -> PushJob {
    PushJob { metadata: run_meta(policy, &j.name, &j.schedule, j.scheduled), spec: j.spec.clone(), status: None }
}

/// The prune Pod of a maintenance run (pure): the operator's image running `prune` against
/// the Repository's store, with the same credentials path as the push workers and no volume.
pub fn prune_pod(policy: &PushPolicy, repo: &Repository, p: &NewPrune, cfg: &WorkerConfig) -> Pod {
    let storage = &repo.spec.storage;
    let mut args = vec![
        "prune".to_string(),
        "--store".into(),
        storage.store_url(),
        "--max-unused".into(),
        p.max_unused_percent.to_string(),
        "--wait".into(),
        format!("{}s", p.wait_seconds),
        "--reason".into(),
        format!("maintenance of PushPolicy {}/{}", policy.namespace().unwrap_or_default(), policy.name_any()),
        "--job".into(),
        p.name.clone(),
        "--if-exists".into(),
    ];
    let (store_args, mut envs) = store_access(storage);
    args.extend(store_args);
    envs.push(k8s_openapi::api::core::v1::EnvVar {
        name: "PUSH_OPERATOR_TERMINATION_LOG".into(),
        value: Some("/dev/termination-log".into()),
        ..Default::default()
    });
    let mut metadata = run_meta(policy, &p.name, MAINTENANCE, p.scheduled);
    metadata.labels.get_or_insert_default().insert(PRUNE_REPOSITORY_LABEL.into(), p.repository.clone());
    let container = Container {
        name: "prune".into(),
        args: Some(args),
        env: Some(envs),
        resources: Some(repo.spec.worker_resources.clone().unwrap_or_else(|| cfg.resources.clone())),
        ..Default::default()
    };
    // No volume of the application: the prune reads and writes the store only, as nobody.
    let nobody = WorkerIdentity::App { uid: PRUNE_USER, gid: Some(PRUNE_USER), groups: vec![] };
    hardened_pod(metadata, container, vec![], None, &nobody, cfg)
}

/// The user a prune pod runs as (the image's unprivileged user).
const PRUNE_USER: i64 = 65532;

fn scheduled_of(meta: &ObjectMeta) -> Option<chrono::DateTime<chrono::Utc>> {
    meta.annotations
        .as_ref()?
        .get(SCHEDULED_ANNOTATION)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn owned_by(meta: &ObjectMeta, policy: &PushPolicy) -> bool {
    meta.labels.as_ref().and_then(|l| l.get(POLICY_LABEL)).map(String::as_str) == Some(policy.name_any().as_str())
        && meta.owner_references.iter().flatten().any(|o| Some(&o.uid) == policy.metadata.uid.as_ref())
}

/// What the plan needs of a PushJob (pure).
pub fn job_view(job: &PushJob) -> RunView {
    let st = job.status.clone().unwrap_or_default();
    let phase = job.phase();
    let outcome = match phase {
        Phase::Succeeded => Outcome::Succeeded,
        Phase::Failed => Outcome::Failed,
        _ => Outcome::Active,
    };
    RunView {
        name: job.name_any(),
        schedule: job.labels().get(SCHEDULE_LABEL).cloned().unwrap_or_default(),
        repository: job.spec.repository_ref.name.clone(),
        scheduled: scheduled_of(&job.metadata),
        outcome,
        finished: st.completion_time.as_ref().map(|t| chrono_of(&t.0)),
        reason: st.failure.as_ref().map(|f| f.reason.clone()),
        message: st.failure.as_ref().map(|f| f.message.clone()),
        forgotten: st.stats.as_ref().map(|s| s.snapshots_forgotten).unwrap_or(0),
        bytes_reclaimed: None,
        store_bytes: None,
    }
}

/// What the plan needs of a prune Pod (pure): its phase and the report in its termination
/// message.
pub fn pod_view(pod: &Pod, repository: &str) -> RunView {
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    let term = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone());
    let report = term.as_ref().and_then(|t| t.message.as_deref()).and_then(crate::cli::PruneMessage::parse);
    let outcome = match phase.as_str() {
        "Succeeded" => Outcome::Succeeded,
        "Failed" => Outcome::Failed,
        _ => Outcome::Active,
    };
    let error = report.as_ref().and_then(|r| r.error.clone());
    RunView {
        name: pod.name_any(),
        schedule: MAINTENANCE.into(),
        repository: repository.into(),
        scheduled: scheduled_of(&pod.metadata),
        outcome,
        finished: term.as_ref().and_then(|t| t.finished_at.as_ref()).map(|t| chrono_of(&t.0)),
        reason: (outcome == Outcome::Failed).then(|| "PruneFailed".to_string()),
        message: if outcome == Outcome::Failed {
            Some(error.unwrap_or_else(|| term.as_ref().and_then(|t| t.message.clone()).unwrap_or_default()))
        } else {
            None
        },
        forgotten: 0,
        bytes_reclaimed: report.as_ref().and_then(|r| r.bytes_reclaimed),
        store_bytes: report.as_ref().and_then(|r| r.store_bytes),
    }
}

pub const PRUNE_REPOSITORY_LABEL: &str = "rediacc.io/repository";

async fn publish(ctx: &Context, policy: &PushPolicy, warning: bool, reason: &str, message: &str) {
    super::publish_event(ctx, &policy.object_ref(&()), "Schedule", warning, reason, message).await;
}

pub async fn reconcile(policy: Arc<PushPolicy>, ctx: Arc<Context>) -> Result<Requeue> {
    let ns = policy.namespace().ok_or_else(|| Error::NotNamespaced(policy.name_any()))?;
    let name = policy.name_any();
    if policy.metadata.deletion_timestamp.is_some() {
        // Owned jobs and pods go with the garbage collector; nothing else to do.
        return Ok(Requeue::await_change());
    }
    let now = chrono::Utc::now();
    let repos = Repositories::of(&policy, &ctx, &ns).await?;
    let (runs, offline_active) = observe_runs(&policy, &ctx, &ns).await?;
    let created = policy.metadata.creation_timestamp.as_ref().map(|t| chrono_of(&t.0)).unwrap_or(now);
    // The status this process wrote last is the truth (one leader writes it); the cached object
    // can lag it by a reconcile, which would repeat events and metrics.
    let uid = policy.metadata.uid.clone().unwrap_or_default();
    let status = ctx.policy_status.lock().await.get(&uid).cloned().or_else(|| policy.status.clone());
    let p = plan::plan(&Input {
        name: &name,
        spec: &policy.spec,
        status: status.as_ref(),
        generation: policy.metadata.generation,
        created,
        now,
        repositories: repos.exists.clone(),
        runs,
        offline_active,
    });
    // Create first: a crash after this leaves jobs the next reconcile finds by name.
    create_runs(&policy, &ctx, &ns, &p, &repos.objects).await?;
    record_finished(&ctx, &ns, &name, &p);
    for e in &p.events {
        publish(&ctx, &policy, e.warning, &e.reason, &e.note).await;
    }
    if status.as_ref() != Some(&p.status) {
        let api = Api::<PushPolicy>::namespaced(ctx.client.clone(), &ns);
        apply_status(&api, &name, StatusManager::PushPolicy, serde_json::to_value(&p.status)?).await?;
    }
    ctx.policy_status.lock().await.insert(uid, p.status.clone());
    let present: Vec<String> = repos.objects.keys().cloned().collect();
    let test_requeue = restore_tests_pass(&policy, &ctx, &ns, &present, created, now).await?;
    // History last: the status above already holds what these runs did.
    delete_history(&ctx, &ns, &p).await?;
    Ok(Requeue::requeue(test_requeue.map_or(p.requeue, |t| t.min(p.requeue))))
}

/// The Repositories the policy names (by name or by selector).
struct Repositories {
    /// Each named or selected Repository and whether it exists.
    exists: BTreeMap<String, bool>,
    /// The ones that exist.
    objects: BTreeMap<String, Repository>,
}

impl Repositories {
    async fn of(policy: &PushPolicy, ctx: &Context, ns: &str) -> Result<Repositories> {
        let api: Api<Repository> = Api::namespaced(ctx.client.clone(), ns);
        let mut exists = BTreeMap::new();
        let mut objects = BTreeMap::new();
        if let Some(r) = &policy.spec.repository_ref {
            let obj = api.get_opt(&r.name).await?;
            exists.insert(r.name.clone(), obj.is_some());
            if let Some(obj) = obj {
                objects.insert(r.name.clone(), obj);
            }
        } else if let Some(sel) = &policy.spec.repository_selector {
            for obj in api.list(&ListParams::default().labels(&label_selector_string(sel))).await? {
                exists.insert(obj.name_any(), true);
                objects.insert(obj.name_any(), obj);
            }
        }
        Ok(Repositories { exists, objects })
    }
}

/// The policy's runs (its PushJobs and prune pods), and the Repositories of the namespace with
/// an offline push in flight (maintenance waits for them).
async fn observe_runs(policy: &PushPolicy, ctx: &Context, ns: &str) -> Result<(Vec<RunView>, BTreeSet<String>)> {
    // The PushJob cache: right after a start it may still be filling; a job it misses is found
    // by name when the create is refused (409), so no duplicate can result.
    let all_jobs = ctx.jobs.state();
    let mut runs: Vec<RunView> = all_jobs
        .iter()
        .filter(|j| j.namespace().as_deref() == Some(ns) && owned_by(&j.metadata, policy))
        .map(|j| job_view(j))
        .collect();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("{POLICY_LABEL}={},{MANAGED_BY_LABEL}={MANAGED_BY}", policy.name_any());
    let pods = pods_api.list(&ListParams::default().labels(&selector)).await?;
    for pod in pods.items.iter().filter(|p| owned_by(&p.metadata, policy)) {
        let repo = pod.labels().get(PRUNE_REPOSITORY_LABEL).cloned().unwrap_or_default();
        runs.push(pod_view(pod, &repo));
    }
    let offline_active = all_jobs
        .iter()
        .filter(|j| j.namespace().as_deref() == Some(ns) && j.spec.mode == Mode::Offline && !j.phase().is_terminal())
        .map(|j| j.spec.repository_ref.name.clone())
        .collect();
    Ok((runs, offline_active))
}

/// Creates the PushJobs and prune pods that are due; one that exists already (a restart
/// between its create and the status) is left as it is.
async fn create_runs(
    policy: &PushPolicy,
    ctx: &Context,
    ns: &str,
    p: &Plan,
    repos: &BTreeMap<String, Repository>,
) -> Result<()> {
    let name = policy.name_any();
    let jobs_api: Api<PushJob> = Api::namespaced(ctx.client.clone(), ns);
    for j in &p.create_jobs {
        match jobs_api.create(&PostParams::default(), &job_object(policy, j)).await {
            Ok(_) => {
                tracing::info!(policy = %name, job = %j.name, schedule = %j.schedule, "scheduled PushJob created");
                ctx.metrics.policy_runs.with_label_values(&[ns, &name, &j.schedule, "created"]).inc();
                let note = format!("schedule {}: PushJob {} ({})", j.schedule, j.name, j.spec.mode.as_str());
                publish(ctx, policy, false, "JobCreated", &note).await;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(job = %j.name, "scheduled PushJob exists already");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for pr in &p.create_prunes {
        let Some(repo) = repos.get(&pr.repository) else { continue };
        match pods_api.create(&PostParams::default(), &prune_pod(policy, repo, pr, &ctx.config.worker)).await {
            Ok(_) => publish(ctx, policy, false, "PruneStarted", &format!("maintenance: prune Pod {}", pr.name)).await,
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Metrics of the runs that just finished and of the schedules that were missed.
fn record_finished(ctx: &Context, ns: &str, name: &str, p: &Plan) {
    for (schedule, n) in &p.missed {
        ctx.metrics.missed_schedules.with_label_values(&[ns, name, schedule]).inc_by(*n as u64);
    }
    for f in &p.finished {
        let r = &f.run;
        let result = if r.outcome == Outcome::Succeeded { "succeeded" } else { "failed" };
        tracing::info!(policy = %name, run = %r.name, result, "scheduled run finished");
        ctx.metrics.policy_runs.with_label_values(&[ns, name, &r.schedule, result]).inc();
        if r.forgotten > 0 {
            ctx.metrics.snapshots_forgotten.with_label_values(&[ns, &r.repository]).inc_by(r.forgotten as u64);
        }
        if let Some(b) = r.bytes_reclaimed {
            ctx.metrics.bytes_reclaimed.with_label_values(&[ns, &r.repository]).inc_by(b);
        }
        if let Some(b) = r.store_bytes {
            ctx.metrics.store_bytes.with_label_values(&[ns, &r.repository]).set(b as i64);
        }
    }
}

/// Deletes the jobs and pods beyond the history limits.
async fn delete_history(ctx: &Context, ns: &str, p: &Plan) -> Result<()> {
    let bg = DeleteParams::background();
    let jobs_api: Api<PushJob> = Api::namespaced(ctx.client.clone(), ns);
    for j in &p.delete_jobs {
        super::ok_absent(jobs_api.delete(j, &bg).await.map(|_| ()))?;
        tracing::info!(job = %j, "old PushJob deleted (history limit)");
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for pod in &p.delete_pods {
        super::ok_absent(pods_api.delete(pod, &bg).await.map(|_| ()))?;
    }
    Ok(())
}

/// Creates the restore test runs that are due and deletes old ones; returns when to look again.
async fn restore_tests_pass(
    policy: &PushPolicy,
    ctx: &Context,
    ns: &str,
    repositories: &[String],
    created: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Duration>> {
    use restore_tests::{RESTORE_TEST_LABEL, TestRun};
    if policy.spec.restore_tests.is_empty() {
        return Ok(None);
    }
    let runs: Vec<TestRun> = ctx
        .restores
        .state()
        .iter()
        .filter(|j| j.namespace().as_deref() == Some(ns) && owned_by(&j.metadata, policy))
        .filter_map(|j| {
            Some(TestRun {
                name: j.name_any(),
                test: j.labels().get(RESTORE_TEST_LABEL)?.clone(),
                repository: j.spec.repository_ref.name.clone(),
                scheduled: scheduled_of(&j.metadata)?,
                finished: j.phase().is_terminal(),
            })
        })
        .collect();
    let name_repository = policy.spec.repository_selector.is_some();
    let p = restore_tests::plan(
        &policy.name_any(),
        &policy.spec.restore_tests,
        repositories,
        name_repository,
        policy.spec.suspend,
        created,
        now,
        &runs,
        policy.spec.starting_deadline_seconds.map(chrono::Duration::seconds),
    );
    for (test, why) in &p.invalid {
        publish(ctx, policy, true, "InvalidSchedule", &format!("restore test {test}: {why}")).await;
    }
    let api: Api<RestoreJob> = Api::namespaced(ctx.client.clone(), ns);
    for t in &p.create {
        let Some(test) = policy.spec.restore_tests.iter().find(|x| x.name == t.test) else { continue };
        match api.create(&PostParams::default(), &restore_tests::test_job(policy, test, t)).await {
            Ok(_) => {
                let msg = format!("restore test {}: RestoreJob {} of {}", t.test, t.name, t.repository);
                publish(ctx, policy, false, "RestoreTestCreated", &msg).await;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for name in &p.delete {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(p.requeue)
}

pub fn error_policy(policy: Arc<PushPolicy>, err: &Error, ctx: Arc<Context>) -> Requeue {
    tracing::warn!(policy = %policy.name_any(), error = %err, "pushpolicy reconcile failed");
    ctx.metrics.reconcile_errors.with_label_values(&["pushpolicy", &err.metric_label()]).inc();
    Requeue::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests;
