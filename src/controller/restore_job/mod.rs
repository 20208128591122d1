//! The RestoreJob controller: observe, ask the pure state machine what is next, write the
//! status, act. Like the PushJob controller, every action is idempotent; a deleted job unwinds
//! through the same state machine (undo, resume, clean up) before its finalizer goes.

pub mod build;
pub mod state;

use super::push_job::{self, build::discover, security};
use super::{Context, Error, Result, StatusManager, apply_status};
use crate::api::*;
use crate::restore_worker::WorkerStep;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::finalizer::Event as Finalizer;
use kube::{Resource, ResourceExt};
use serde_json::json;
use state::{Action, Observed};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub async fn reconcile(job: Arc<RestoreJob>, ctx: Arc<Context>) -> Result<Requeue> {
    let ns = job.namespace().ok_or_else(|| Error::NotNamespaced(job.name_any()))?;
    let api: Api<RestoreJob> = Api::namespaced(ctx.client.clone(), &ns);
    super::finalized(&api, FINALIZER, job, |event| async {
        match event {
            Finalizer::Apply(job) => apply(job, ctx.clone(), false).await,
            Finalizer::Cleanup(job) => cleanup(job, ctx.clone()).await,
        }
    })
    .await
}

pub fn key(job: &RestoreJob) -> String {
    push_job::restore_key(job)
}

async fn observe(job: &RestoreJob, ctx: &Context, deleted: bool) -> Result<Observed> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let phase = job.phase();
    let status = job.status.clone().unwrap_or_default();
    let mut obs = Observed { now: chrono::Utc::now(), deleted, ..Default::default() };
    obs.refused = ctx.refusals.lock().await.remove(&key(job));
    let repos: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
    obs.repository = repos.get_opt(&job.spec.repository_ref.name).await?.map(|r| r.spec);
    if let (Some(repo), RestorePhase::Pending) = (&obs.repository, phase) {
        let (found, missing) = push_job::resolve_volumes(ctx, &ns, repo).await?;
        let mut all: Vec<String> = found.into_iter().chain(missing.iter().cloned()).collect();
        all.sort();
        all.dedup();
        obs.volumes = all;
        obs.missing_volumes = missing;
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for p in pvcs.list(&ListParams::default()).await? {
        let pname = p.name_any();
        if let Some(req) = p.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref())
            && let Some(q) = req.get("storage")
        {
            obs.source_requests.insert(pname.clone(), q.0.clone());
        }
        obs.existing_claims.push(pname);
    }
    let in_place = job.spec.target.kind() == TargetKind::InPlace;
    let volumes: Vec<String> = if status.volumes.is_empty() {
        obs.volumes.clone()
    } else {
        status.volumes.iter().map(|v| v.volume.clone()).collect()
    };
    if in_place {
        let (pods, owners) = push_job::pods_and_owners(ctx, &ns).await?;
        let d = discover(&volumes, &pods, &owners);
        obs.bare_pods = d.bare_pods;
        obs.pods_mounting = d.mounting;
        let mut workloads: Vec<WorkloadRef> = if !status.replicas.is_empty() {
            status.replicas.iter().map(|r| WorkloadRef { kind: r.kind, name: r.name.clone() }).collect()
        } else if let Some(declared) = obs.repository.as_ref().and_then(|r| r.workloads.clone()) {
            declared
        } else {
            d.workloads
        };
        workloads.sort();
        workloads.dedup();
        for w in workloads {
            let st = push_job::workload_state(ctx, &ns, &w).await?;
            obs.workloads.push(push_job::state::WorkloadObs {
                workload: w,
                replicas: st.as_ref().map(|s| s.0),
                annotation: st.and_then(|s| s.1),
            });
        }
        if matches!(phase, RestorePhase::Quiescing | RestorePhase::WaitingForDetach) {
            obs.attachments = push_job::attachments(ctx, &ns, &volumes).await?;
        }
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let by_job = ListParams::default().labels(&format!("{RESTORE_LABEL}={name}"));
    obs.pods = pods_api.list(&by_job).await?.items.iter().map(|p| p.name_any()).collect();
    if let Some(w) = &status.worker {
        obs.worker = pods_api.get_opt(w).await?.and_then(|p| push_job::worker_obs(&p));
    }
    if matches!(phase, RestorePhase::Pending | RestorePhase::Queued) {
        let entry = super::queue::Entry {
            key: key(job),
            repository: format!("{ns}/{}", job.spec.repository_ref.name),
            priority: job.spec.priority,
            created: job.metadata.creation_timestamp.as_ref().map(|t| chrono_of(&t.0)).unwrap_or_else(chrono::Utc::now),
            stage: phase.into(),
            admitted: false,
        };
        (obs.admitted, obs.queue_position) = push_job::queue_admission(ctx, entry).await;
    }
    Ok(obs)
}

async fn perform(job: &RestoreJob, ctx: &Context, action: &Action) -> Result<()> {
    let ns = job.namespace().unwrap_or_default();
    match action {
        Action::Workload(w) => push_job::perform_workload(ctx, &ns, &key(job), w).await?,
        Action::CreateClaim { name, volume, size } => {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let source = pvcs.get_opt(volume).await?;
            let claim = build::new_claim(job, name, source.as_ref(), size);
            // 409: it exists; the next observation tells whether it is ours.
            super::ok_absent(pvcs.create(&PostParams::default(), &claim).await.map(|_| ()))?;
        }
        Action::CreateWorker { name, step } => create_worker(job, ctx, &ns, name, *step).await?,
        Action::Delete(o) => {
            let dp = DeleteParams::background();
            let r = match o.kind {
                CreatedKind::Pod => {
                    Api::<Pod>::namespaced(ctx.client.clone(), &ns).delete(&o.name, &dp).await.map(|_| ())
                }
                CreatedKind::PersistentVolumeClaim => Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
                    .delete(&o.name, &dp)
                    .await
                    .map(|_| ()),
                CreatedKind::VolumeSnapshot => Ok(()),
            };
            super::ok_absent(r)?;
        }
    }
    Ok(())
}

async fn create_worker(job: &RestoreJob, ctx: &Context, ns: &str, name: &str, step: WorkerStep) -> Result<()> {
    let repo = Api::<Repository>::namespaced(ctx.client.clone(), ns).get(&job.spec.repository_ref.name).await?;
    let st = job.status.clone().unwrap_or_default();
    let claims: Vec<(String, String)> = match step {
        WorkerStep::Resolve => Vec::new(),
        _ => st.volumes.iter().map(|v| (v.volume.clone(), v.claim.clone())).collect(),
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let mut block = BTreeSet::new();
    for (_, claim) in &claims {
        let mode = pvcs.get_opt(claim).await?.and_then(|p| p.spec).and_then(|s| s.volume_mode);
        if mode.as_deref() == Some("Block") {
            block.insert(claim.clone());
        }
    }
    let level =
        security::Level::of_namespace(Api::<Namespace>::all(ctx.client.clone()).get_metadata(ns).await?.labels());
    let volumes: Vec<String> = st.volumes.iter().map(|v| v.volume.clone()).collect();
    let app = push_job::app_identity(ctx, ns, &volumes).await?;
    let identity = security::decide(level, ns, app.as_ref()).map_err(Error::WorkerNotAdmitted)?;
    if let (security::WorkerIdentity::App { uid, .. }, WorkerStep::Restore) = (&identity, step) {
        let msg = format!(
            "the namespace enforces Pod Security restricted: restoring as the application's uid {uid}, so files keep that owner (other owners are not restored) and only modes the uid may set"
        );
        publish(ctx, job, true, "RestrictedRestore", &msg).await;
    }
    let pod = build::worker_pod(job, &repo, name, step, &claims, &block, &identity, &ctx.config.worker);
    let created = Api::<Pod>::namespaced(ctx.client.clone(), ns).create(&PostParams::default(), &pod).await.map(|_| ());
    if let Err(kube::Error::Api(e)) = &created
        && let Some(why) = security::rejected_by_admission(ns, level, e.code, &e.message)
    {
        return Err(Error::WorkerNotAdmitted(why));
    }
    match created {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        r => Ok(r?),
    }
}

async fn publish(ctx: &Context, job: &RestoreJob, warning: bool, reason: &str, message: &str) {
    super::publish_event(ctx, &job.object_ref(&()), "Restore", warning, reason, message).await;
}

/// One pass: observe, decide, store the status, act. Returns the decision's phase.
async fn pass(job: &RestoreJob, ctx: &Context, deleted: bool) -> Result<(RestorePhase, Option<Duration>)> {
    let before = job.phase();
    let obs = observe(job, ctx, deleted).await?;
    let decision = state::next(job, &obs, &ctx.config.settings);
    let ns = job.namespace().unwrap_or_default();
    let api: Api<RestoreJob> = Api::namespaced(ctx.client.clone(), &ns);
    if job.status.as_ref() != Some(&decision.status) {
        apply_status(&api, &job.name_any(), StatusManager::RestoreJob, serde_json::to_value(&decision.status)?).await?;
    }
    // The actions see the status they were decided with (the pod builder reads it).
    let mut acting = job.clone();
    acting.status = Some(decision.status.clone());
    for a in &decision.actions {
        if let Err(e) = perform(&acting, ctx, a).await {
            let Some(refusal) = e.refusal() else { return Err(e) };
            tracing::warn!(job = %key(job), reason = refusal.reason, "{}", refusal.message);
            ctx.refusals.lock().await.insert(key(job), refusal);
            return Ok((before, Some(Duration::from_millis(200))));
        }
    }
    for e in &decision.events {
        publish(ctx, job, e.warning, &e.reason, &e.message).await;
    }
    let after = decision.status.phase.unwrap_or_default();
    if after.is_terminal() && !before.is_terminal() {
        ctx.slot_freed(key(job)).await;
        record_completion(job, &decision.status, ctx).await?;
    }
    Ok((after, decision.requeue))
}

async fn apply(job: Arc<RestoreJob>, ctx: Arc<Context>, deleted: bool) -> Result<Requeue> {
    if job.phase().is_terminal() {
        return finished(&job, &ctx).await;
    }
    let (_, requeue) = pass(&job, &ctx, deleted).await?;
    Ok(match requeue {
        Some(d) => Requeue::requeue(d.max(Duration::from_millis(200))),
        None => Requeue::requeue(Duration::from_secs(300)),
    })
}

async fn finished(job: &RestoreJob, ctx: &Context) -> Result<Requeue> {
    let api: Api<RestoreJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let done = job.status.as_ref().and_then(|s| s.completion_time.as_ref());
    super::expire(&api, &job.name_any(), job.spec.ttl_seconds_after_finished, done).await
}

/// Finalizer: a deleted job that has not finished unwinds through the state machine (a restore
/// in place is undone, the workloads come back) before the finalizer goes; one step per call,
/// called again until the job has reached an end.
async fn cleanup(job: Arc<RestoreJob>, ctx: Arc<Context>) -> Result<Requeue> {
    if job.phase().is_terminal() {
        return Ok(Requeue::await_change());
    }
    let (phase, requeue) = pass(&job, &ctx, true).await?;
    if phase.is_terminal() {
        publish(&ctx, &job, false, "CleanedUp", "deleted mid-flow: unwound before the finalizer was removed").await;
        return Ok(Requeue::await_change());
    }
    Err(Error::cleanup_pending(key(&job), requeue))
}

/// Metrics, and for a restore test the Repository's `lastRestoreTest`, of a job that just
/// finished.
async fn record_completion(job: &RestoreJob, st: &RestoreJobStatus, ctx: &Context) -> Result<()> {
    let ns = job.namespace().unwrap_or_default();
    let repo = &job.spec.repository_ref.name;
    let target = job.spec.target.kind().as_str();
    let ok = st.phase == Some(RestorePhase::Succeeded);
    let test = job.labels().get(super::policy::restore_tests::RESTORE_TEST_LABEL).cloned();
    let is_test = if test.is_some() { "true" } else { "false" };
    let reason = st.failure.as_ref().map(|f| f.reason.clone()).unwrap_or_else(|| "Succeeded".into());
    let result = if ok { "succeeded" } else { "failed" };
    ctx.metrics.restores.with_label_values(&[target, result, &reason, is_test]).inc();
    // The snapshots' push mode: online when any is (its consistency is the weaker).
    let modes: Vec<Mode> = st.volumes.iter().filter_map(|v| v.mode).collect();
    let mode = if modes.contains(&Mode::Online) {
        "online"
    } else if modes.is_empty() {
        "unknown"
    } else {
        "offline"
    };
    let duration = match (&st.start_time, &st.completion_time) {
        (Some(s), Some(e)) => Some((chrono_of(&e.0) - chrono_of(&s.0)).num_milliseconds() as f64 / 1000.0),
        _ => None,
    };
    if ok {
        if let Some(secs) = duration {
            ctx.metrics.restore_duration.with_label_values(&[&ns, repo, mode, target, is_test]).observe(secs);
        }
        if let Some(stats) = &st.stats {
            ctx.metrics.restore_bytes.with_label_values(&[&ns, repo, target]).inc_by(stats.bytes_total.max(0) as u64);
        }
    }
    let Some(test) = test else { return Ok(()) };
    ctx.metrics.restore_test_last_result.with_label_values(&[&ns, repo]).set(i64::from(ok));
    if ok {
        ctx.metrics
            .restore_test_last_success
            .with_label_values(&[&ns, repo])
            .set(chrono::Utc::now().timestamp() as f64);
    }
    let record = RestoreTestRecord {
        time: st.completion_time.clone().unwrap_or_else(|| time(chrono::Utc::now())),
        job: job.name_any(),
        test,
        result: if ok { JobResult::Succeeded } else { JobResult::Failed },
        reason: st.failure.as_ref().map(|f| f.reason.clone()),
        snapshots: st.volumes.iter().filter_map(|v| v.snapshot.clone()).collect(),
        duration_seconds: duration,
    };
    let repos: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
    if repos.get_opt(repo).await?.is_some() {
        apply_status(&repos, repo, StatusManager::RestoreJob, json!({ "lastRestoreTest": record })).await?;
    }
    Ok(())
}

pub fn error_policy(job: Arc<RestoreJob>, err: &Error, ctx: Arc<Context>) -> Requeue {
    tracing::warn!(job = %key(&job), error = %err, "reconcile failed");
    ctx.metrics.reconcile_errors.with_label_values(&["restorejob", &err.metric_label()]).inc();
    Requeue::requeue(Duration::from_secs(2))
}
