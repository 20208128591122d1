//! The PushJob controller: observe the cluster, ask the pure state machine what is next, write
//! the status, then act. Every action is idempotent, so a crash anywhere is repaired by the
//! next reconcile (or, for a deleted job, by the finalizer).

pub mod build;
pub mod security;
pub mod state;

use super::offline::WorkloadAction;
use super::{Context, Error, Result, StatusManager, apply_status, queue, snapshots_api, volume_attachment_api};
use crate::api::*;
use build::{PodInfo, discover};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Namespace, PersistentVolumeClaim, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status as ExecStatus;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::finalizer::Event as Finalizer;
use kube::{Resource, ResourceExt};
use serde_json::json;
use state::{Action, Observed, SnapshotObs, WorkerObs, WorkloadObs};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

pub async fn reconcile(job: Arc<PushJob>, ctx: Arc<Context>) -> Result<Requeue> {
    let ns = job.namespace().ok_or_else(|| Error::NotNamespaced(job.name_any()))?;
    let api: Api<PushJob> = Api::namespaced(ctx.client.clone(), &ns);
    super::finalized(&api, FINALIZER, job, |event| async {
        match event {
            Finalizer::Apply(job) => apply(job, ctx.clone()).await,
            Finalizer::Cleanup(job) => cleanup(job, ctx.clone()).await,
        }
    })
    .await
}

pub fn key(job: &PushJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

fn workload_api<K>(ctx: &Context, ns: &str) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::namespaced(ctx.client.clone(), ns)
}

/// `spec.replicas` and our annotation of a workload, `None` when it does not exist.
pub(crate) async fn workload_state(ctx: &Context, ns: &str, w: &WorkloadRef) -> Result<Option<(i32, Option<String>)>> {
    let (replicas, annotations) = match w.kind {
        WorkloadKind::Deployment => match workload_api::<Deployment>(ctx, ns).get_opt(&w.name).await? {
            None => return Ok(None),
            Some(d) => (d.spec.replicas.unwrap_or(1), d.metadata.annotations),
        },
        WorkloadKind::StatefulSet => match workload_api::<StatefulSet>(ctx, ns).get_opt(&w.name).await? {
            None => return Ok(None),
            Some(s) => (s.spec.replicas.unwrap_or(1), s.metadata.annotations),
        },
    };
    Ok(Some((replicas, annotations.and_then(|a| a.get(REPLICAS_ANNOTATION).cloned()))))
}

/// Who the application using `volumes` runs as: the first pod mounting one (by name), else the
/// first Deployment or StatefulSet template that does (offline pushes have scaled the pods away).
pub(crate) async fn app_identity(ctx: &Context, ns: &str, volumes: &[String]) -> Result<Option<security::AppIdentity>> {
    let lp = ListParams::default();
    let mut pods = Api::<Pod>::namespaced(ctx.client.clone(), ns).list(&lp).await?.items;
    pods.retain(|p| p.labels().get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY));
    pods.sort_by_key(|p| p.name_any());
    let mut specs: Vec<PodSpec> = pods.into_iter().filter_map(|p| p.spec).collect();
    let mut deps = workload_api::<Deployment>(ctx, ns).list(&lp).await?.items;
    deps.sort_by_key(|d| d.name_any());
    specs.extend(deps.into_iter().filter_map(|d| d.spec.template.spec));
    let mut sets = workload_api::<StatefulSet>(ctx, ns).list(&lp).await?.items;
    sets.sort_by_key(|s| s.name_any());
    specs.extend(sets.into_iter().filter_map(|s| s.spec.template.spec));
    Ok(specs.iter().find_map(|s| security::AppIdentity::of_pod_spec(s, volumes)))
}

/// The PVC names a Repository resolves to, and the named ones that are missing.
pub async fn resolve_volumes(ctx: &Context, ns: &str, spec: &RepositorySpec) -> Result<(Vec<String>, Vec<String>)> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let mut found = BTreeSet::new();
    let mut missing = Vec::new();
    for name in &spec.volumes {
        match pvcs.get_opt(name).await? {
            Some(_) => {
                found.insert(name.clone());
            }
            None => missing.push(name.clone()),
        }
    }
    if let Some(sel) = &spec.volume_selector {
        let selector = label_selector_string(sel);
        for p in pvcs.list(&ListParams::default().labels(&selector)).await? {
            if p.labels().get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
                found.insert(p.name_any());
            }
        }
    }
    Ok((found.into_iter().collect(), missing))
}

pub fn label_selector_string(sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> String {
    let mut parts: Vec<String> =
        sel.match_labels.clone().unwrap_or_default().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    for e in sel.match_expressions.clone().unwrap_or_default() {
        let vals = e.values.unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({vals})", e.key),
            "NotIn" => format!("{} notin ({vals})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// Pods of the namespace and the ReplicaSet -> Deployment map, for discovery.
pub async fn pods_and_owners(ctx: &Context, ns: &str) -> Result<(Vec<PodInfo>, BTreeMap<String, Option<String>>)> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let infos = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                || p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .map(PodInfo::from_pod)
        .collect();
    let rs: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let owners = rs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|r| {
            let dep = r
                .metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.iter().find(|o| o.controller == Some(true) && o.kind == "Deployment"))
                .map(|o| o.name.clone());
            (r.name_any(), dep)
        })
        .collect();
    Ok((infos, owners))
}

async fn observe(job: &PushJob, ctx: &Context, deleted: bool) -> Result<Observed> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let phase = job.phase();
    let status = job.status.clone().unwrap_or_default();
    let mut obs = Observed { now: chrono::Utc::now(), deleted, ..Default::default() };
    obs.refused = ctx.refusals.lock().await.remove(&key(job));
    let repos: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
    obs.repository = repos.get_opt(&job.spec.repository_ref.name).await?.map(|r| r.spec);
    if let Some(repo) = &obs.repository {
        if phase == Phase::Pending {
            (obs.volumes, obs.missing_volumes) = resolve_volumes(ctx, &ns, repo).await?;
        } else {
            obs.volumes = status.volumes.clone();
        }
    }
    let volumes = if status.volumes.is_empty() { obs.volumes.clone() } else { status.volumes.clone() };
    let (pods, owners) = pods_and_owners(ctx, &ns).await?;
    let d = discover(&volumes, &pods, &owners);
    obs.bare_pods = d.bare_pods;
    obs.mount_node = d.node;
    obs.pods_mounting = d.mounting;

    // Workloads: the recorded ones once recorded (pods are gone after scaling), else the
    // declared or discovered ones.
    let mut workloads: Vec<WorkloadRef> = if !status.replicas.is_empty() {
        status.replicas.iter().map(|r| WorkloadRef { kind: r.kind, name: r.name.clone() }).collect()
    } else if let Some(declared) = obs.repository.as_ref().and_then(|r| r.workloads.clone()) {
        declared
    } else {
        d.workloads
    };
    workloads.sort();
    workloads.dedup();
    if job.spec.mode == Mode::Offline {
        for w in workloads {
            let st = workload_state(ctx, &ns, &w).await?;
            obs.workloads.push(WorkloadObs {
                workload: w,
                replicas: st.as_ref().map(|s| s.0),
                annotation: st.and_then(|s| s.1),
            });
        }
    }

    // VolumeAttachments holding the PVs of the volumes.
    if matches!(phase, Phase::WaitingForDetach | Phase::Quiescing) {
        obs.attachments = attachments(ctx, &ns, &volumes).await?;
    }

    let by_job = ListParams::default().labels(&format!("{JOB_LABEL}={name}"));
    if status.created.iter().any(|c| c.kind == CreatedKind::VolumeSnapshot) || phase == Phase::Snapshotting {
        for s in snapshots_api(&ctx.client, &ns).list(&by_job).await? {
            if s.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let st = s.data.get("status");
            obs.snapshots.push(SnapshotObs {
                name: s.name_any(),
                volume: s.data["spec"]["source"]["persistentVolumeClaimName"].as_str().unwrap_or("").to_string(),
                ready: st.and_then(|s| s["readyToUse"].as_bool()).unwrap_or(false),
                error: st.and_then(|s| s["error"]["message"].as_str()).map(String::from),
            });
        }
    }
    if status.created.iter().any(|c| c.kind == CreatedKind::PersistentVolumeClaim) {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        obs.clones = pvcs
            .list(&by_job)
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    obs.worker = pods_api.get_opt(&state::worker_name(&name)).await?.and_then(|p| worker_obs(&p));

    if matches!(phase, Phase::Pending | Phase::Queued) {
        let (admitted, position) = admission(job, ctx).await;
        obs.admitted = admitted;
        obs.queue_position = position;
    }
    Ok(obs)
}

/// VolumeAttachments that hold the PVs of `volumes`.
pub(crate) async fn attachments(ctx: &Context, ns: &str, volumes: &[String]) -> Result<Vec<String>> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let mut pvs = BTreeSet::new();
    for v in volumes {
        if let Some(pv) = pvcs.get_opt(v).await?.and_then(|p| p.spec).and_then(|s| s.volume_name) {
            pvs.insert(pv);
        }
    }
    let mut out = Vec::new();
    for a in volume_attachment_api(&ctx.client).list(&ListParams::default()).await? {
        if a.spec.source.persistent_volume_name.as_ref().is_some_and(|pv| pvs.contains(pv)) {
            out.push(a.name_any());
        }
    }
    Ok(out)
}

pub(crate) fn worker_obs(p: &Pod) -> Option<WorkerObs> {
    if p.metadata.deletion_timestamp.is_some() {
        return None;
    }
    // A pod just created may have no status yet: that is Pending, not gone.
    let status = p.status.clone().unwrap_or_default();
    let term = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone());
    let message = term.as_ref().and_then(|t| t.message.clone()).unwrap_or_default();
    Some(match status.phase.as_deref() {
        Some("Succeeded") => WorkerObs::Succeeded { message },
        Some("Failed") => WorkerObs::Failed {
            message: if message.is_empty() { status.message.unwrap_or_default() } else { message },
            oom_killed: killed_for_memory(term.as_ref(), status.reason.as_deref()),
            exit_code: term.map(|t| t.exit_code),
        },
        Some("Running") => WorkerObs::Running,
        _ => WorkerObs::Pending,
    })
}

/// Whether the worker's container was killed for its memory. The runtime says `OOMKilled` when
/// the container's own cgroup hit its limit; when the pod's cgroup did (cgroup v1 charges the
/// pod as a whole), containerd attributes the OOM to the sandbox and the container ends as
/// `Error` with exit 137 (SIGKILL). Nothing else SIGKILLs a worker that is not deleted (it has
/// no probes): an eviction says `Evicted` on the pod.
fn killed_for_memory(term: Option<&ContainerStateTerminated>, pod_reason: Option<&str>) -> bool {
    let Some(t) = term else { return false };
    t.reason.as_deref() == Some("OOMKilled") || (t.exit_code == 137 && pod_reason != Some("Evicted"))
}

/// The queue's answer for one job (serialized: one admission decision at a time).
async fn admission(job: &PushJob, ctx: &Context) -> (bool, Option<i32>) {
    queue_admission(ctx, push_entry(job, false)).await
}

fn push_entry(j: &PushJob, admitted: bool) -> queue::Entry {
    queue::Entry {
        key: key(j),
        repository: format!("{}/{}", j.namespace().unwrap_or_default(), j.spec.repository_ref.name),
        priority: j.spec.priority,
        created: j.metadata.creation_timestamp.as_ref().map(|t| chrono_of(&t.0)).unwrap_or_else(chrono::Utc::now),
        stage: j.phase().into(),
        admitted,
    }
}

/// The queue key of a RestoreJob (PushJob keys are `namespace/name`).
pub fn restore_key(j: &RestoreJob) -> String {
    format!("restore:{}/{}", j.namespace().unwrap_or_default(), j.name_any())
}

fn restore_entry(j: &RestoreJob, admitted: bool) -> queue::Entry {
    queue::Entry {
        key: restore_key(j),
        repository: format!("{}/{}", j.namespace().unwrap_or_default(), j.spec.repository_ref.name),
        priority: j.spec.priority,
        created: j.metadata.creation_timestamp.as_ref().map(|t| chrono_of(&t.0)).unwrap_or_else(chrono::Utc::now),
        stage: j.phase().into(),
        admitted,
    }
}

/// The queue's answer for `me`, a PushJob or a RestoreJob: both share one queue (one running job
/// per Repository, `max_concurrent_pushes` in all).
pub async fn queue_admission(ctx: &Context, me: queue::Entry) -> (bool, Option<i32>) {
    let mut admitted = ctx.admitted.lock().await;
    let pushes = ctx.jobs.state();
    let restores = ctx.restores.state();
    let mut entries: Vec<queue::Entry> = pushes
        .iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .map(|j| push_entry(j, false))
        .chain(restores.iter().filter(|j| j.metadata.deletion_timestamp.is_none()).map(|j| restore_entry(j, false)))
        .collect();
    // Forget admissions the caches now show as running or finished, and finished jobs they
    // show finished (or gone); the others are finished whatever the cache says.
    admitted.retain(|k| entries.iter().any(|e| e.key == *k && e.stage.is_waiting()));
    let mut finished = ctx.finished.lock().await;
    finished.retain(|k| entries.iter().any(|e| e.key == *k && e.stage != queue::Stage::Finished));
    for e in entries.iter_mut().filter(|e| finished.contains(&e.key)) {
        e.stage = queue::Stage::Finished;
    }
    drop(finished);
    if admitted.contains(&me.key) {
        return (true, None);
    }
    for e in &mut entries {
        e.admitted = admitted.contains(&e.key);
        if e.key == me.key {
            e.stage = me.stage;
        }
    }
    if !entries.iter().any(|e| e.key == me.key) {
        entries.push(me.clone());
    }
    let plan = queue::plan(&entries, ctx.config.max_concurrent_pushes);
    for p in Priority::ALL {
        ctx.metrics.queue_depth.with_label_values(&[p.as_str()]).set(plan.depth.get(&p).copied().unwrap_or(0));
    }
    let running = entries.iter().filter(|e| e.stage == queue::Stage::Running || e.admitted).count() + plan.admit.len();
    ctx.metrics.jobs_running.set(running as f64);
    for k in &plan.admit {
        admitted.insert(k.clone());
    }
    (admitted.contains(&me.key), plan.positions.get(&me.key).copied())
}

/// Merge-patches a Deployment or StatefulSet, or (with `scale`) its scale subresource.
pub async fn patch_workload(
    ctx: &Context,
    ns: &str,
    w: &WorkloadRef,
    patch: serde_json::Value,
    scale: bool,
) -> Result<(), kube::Error> {
    let pp = PatchParams::default();
    let patch = Patch::Merge(patch);
    match (w.kind, scale) {
        (WorkloadKind::Deployment, false) => {
            workload_api::<Deployment>(ctx, ns).patch(&w.name, &pp, &patch).await.map(|_| ())
        }
        (WorkloadKind::Deployment, true) => {
            workload_api::<Deployment>(ctx, ns).patch_scale(&w.name, &pp, &patch).await.map(|_| ())
        }
        (WorkloadKind::StatefulSet, false) => {
            workload_api::<StatefulSet>(ctx, ns).patch(&w.name, &pp, &patch).await.map(|_| ())
        }
        (WorkloadKind::StatefulSet, true) => {
            workload_api::<StatefulSet>(ctx, ns).patch_scale(&w.name, &pp, &patch).await.map(|_| ())
        }
    }
}

/// A workload action of a PushJob or RestoreJob (`job`: its key, for the log): a workload
/// already gone is no error when the annotation or the scale would only undo our own change.
pub(crate) async fn perform_workload(ctx: &Context, ns: &str, job: &str, action: &WorkloadAction) -> Result<()> {
    match action {
        WorkloadAction::Annotate { workload, value } => {
            let patch = json!({"metadata": {"annotations": {REPLICAS_ANNOTATION: value}}});
            patch_workload(ctx, ns, workload, patch, false).await?;
        }
        WorkloadAction::RemoveAnnotation { workload } => {
            let patch = json!({"metadata": {"annotations": {REPLICAS_ANNOTATION: null}}});
            super::ok_absent(patch_workload(ctx, ns, workload, patch, false).await)?;
        }
        WorkloadAction::Scale { workload, replicas } => {
            super::ok_absent(patch_workload(ctx, ns, workload, json!({"spec": {"replicas": replicas}}), true).await)?;
            tracing::info!(job, workload = %workload.name, replicas, "scaled");
        }
    }
    Ok(())
}

async fn perform(job: &PushJob, ctx: &Context, action: &Action) -> Result<()> {
    let ns = job.namespace().unwrap_or_default();
    match action {
        Action::Workload(w) => perform_workload(ctx, &ns, &key(job), w).await?,
        Action::CreateSnapshot { name, volume, class } => {
            let obj: kube::api::DynamicObject =
                serde_json::from_value(build::volume_snapshot(job, name, volume, class))?;
            super::ok_absent(snapshots_api(&ctx.client, &ns).create(&PostParams::default(), &obj).await.map(|_| ()))?;
        }
        Action::CreateClone { name, volume, snapshot } => {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let source = pvcs.get(volume).await?;
            let clone = build::clone_pvc(job, name, &source, snapshot);
            super::ok_absent(pvcs.create(&PostParams::default(), &clone).await.map(|_| ()))?;
        }
        Action::CreateWorker { name, claims, node } => {
            let repos: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
            let repo = repos.get(&job.spec.repository_ref.name).await?;
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let mut block = BTreeSet::new();
            for (_, claim) in claims {
                let mode = pvcs.get_opt(claim).await?.and_then(|p| p.spec).and_then(|s| s.volume_mode);
                if mode.as_deref() == Some("Block") {
                    block.insert(claim.clone());
                }
            }
            let level = security::Level::of_namespace(
                Api::<Namespace>::all(ctx.client.clone()).get_metadata(&ns).await?.labels(),
            );
            let volumes: Vec<String> = claims.iter().map(|(v, _)| v.clone()).collect();
            let app = app_identity(ctx, &ns, &volumes).await?;
            let identity = security::decide(level, &ns, app.as_ref()).map_err(Error::WorkerNotAdmitted)?;
            let pod = build::worker_pod(job, &repo, name, claims, &block, node.clone(), &identity, &ctx.config.worker);
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            let created = pods.create(&PostParams::default(), &pod).await.map(|_| ());
            if let Err(kube::Error::Api(e)) = &created
                && let Some(why) = security::rejected_by_admission(&ns, level, e.code, &e.message)
            {
                return Err(Error::WorkerNotAdmitted(why));
            }
            super::ok_absent(created)?;
        }
        Action::RunHooks(stage) => {
            let (outcome, any_failed) = run_hooks(job, ctx, *stage).await?;
            let field = match stage {
                state::HookStage::Pre => "preHook",
                state::HookStage::Post => "postHook",
            };
            let api: Api<PushJob> = Api::namespaced(ctx.client.clone(), &ns);
            apply_status(&api, &job.name_any(), StatusManager::Hooks, json!({ field: outcome })).await?;
            let reason = match (outcome.ok, any_failed) {
                (false, _) => "HookFailed",
                (true, true) => "HookFailedIgnored",
                (true, false) => "HookSucceeded",
            };
            publish(ctx, job, any_failed, reason, &format!("{field}: {}", outcome.message)).await;
        }
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
                CreatedKind::VolumeSnapshot => snapshots_api(&ctx.client, &ns).delete(&o.name, &dp).await.map(|_| ()),
            };
            super::ok_absent(r)?;
        }
    }
    Ok(())
}

/// The last bytes of a hook's stderr kept for its failure message.
const HOOK_STDERR_TAIL: usize = 1024;

/// Runs one command in a pod and waits for its exit status; `Ok(None)` when it succeeded, else
/// why not (with the tail of its stderr). Stderr is read as it comes: kube-rs buffers only 1 KiB
/// per stream, so a hook that writes more would otherwise stall until its timeout.
async fn exec_hook(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    command: &[String],
    timeout: Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let ap = kube::api::AttachParams::default().container(container).stdout(false).stderr(true);
    let run = async {
        let mut proc = pods.exec(pod, command.to_vec(), &ap).await?;
        let stderr = proc.stderr();
        let status = proc.take_status();
        let tail = async move {
            let mut tail = Vec::new();
            if let Some(mut r) = stderr {
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = r.read(&mut buf).await {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > HOOK_STDERR_TAIL {
                        tail.drain(..tail.len() - HOOK_STDERR_TAIL);
                    }
                }
            }
            tail
        };
        let status = async move { status?.await };
        let (tail, status) = tokio::join!(tail, status);
        Ok::<_, kube::Error>((status, tail))
    };
    let (status, tail) = match tokio::time::timeout(timeout, run).await {
        Err(_) => return Some(format!("timed out after {}s", timeout.as_secs())),
        Ok(Err(e)) => return Some(format!("exec failed: {e}")),
        Ok(Ok(r)) => r,
    };
    hook_failure(status, &tail)
}

/// Why a hook failed, from the Status its exec ended with (none: the stream broke) and the tail
/// of its stderr; `None` when it succeeded.
fn hook_failure(status: Option<ExecStatus>, stderr_tail: &[u8]) -> Option<String> {
    let why = match status {
        Some(s) if s.status.as_deref() == Some("Success") => return None,
        Some(s) => s.message.unwrap_or_else(|| "non-zero exit".into()),
        None => "the exec stream ended without an exit status".into(),
    };
    let tail = String::from_utf8_lossy(stderr_tail);
    let tail = tail.trim();
    Some(if tail.is_empty() { why } else { format!("{why}; stderr: {tail}") })
}

/// Runs the Repository's hooks of one stage in their pods; never fails for a hook's own error
/// (that is the outcome), only for API errors. The flag is true when a hook failed, even one
/// whose `onError: Continue` keeps the outcome ok.
async fn run_hooks(job: &PushJob, ctx: &Context, stage: state::HookStage) -> Result<(HookOutcome, bool)> {
    let ns = job.namespace().unwrap_or_default();
    let repos: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(repo) = repos.get_opt(&job.spec.repository_ref.name).await? else {
        return Ok((HookOutcome { ok: false, message: "the Repository is gone".into() }, true));
    };
    let hooks = repo.spec.hooks.clone().unwrap_or_default();
    let list = match stage {
        state::HookStage::Pre => hooks.pre,
        state::HookStage::Post => hooks.post,
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let volumes = job.status.as_ref().map(|s| s.volumes.clone()).unwrap_or_default();
    let mut notes = Vec::new();
    let mut ok = true;
    for (i, hook) in list.iter().enumerate() {
        let targets: Vec<Pod> = match &hook.pod_selector {
            Some(sel) => pods_api.list(&ListParams::default().labels(&label_selector_string(sel))).await?.items,
            None => pods_api
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|p| {
                    let info = PodInfo::from_pod(p);
                    !info.ours && info.claims.iter().any(|c| volumes.contains(c))
                })
                .collect(),
        };
        let running: Vec<&Pod> =
            targets.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).collect();
        if running.is_empty() {
            notes.push(format!("hook {i}: no running pod to run in"));
            ok &= hook.on_error == HookErrorPolicy::Continue;
            continue;
        }
        for pod in running {
            let container = hook
                .container
                .clone()
                .or_else(|| pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone()))
                .unwrap_or_default();
            let timeout = Duration::from_secs(hook.timeout_seconds.max(1) as u64);
            if let Some(why) = exec_hook(&pods_api, &pod.name_any(), &container, &hook.command, timeout).await {
                notes.push(format!("hook {i} in {}/{container}: {why}", pod.name_any()));
                ok &= hook.on_error == HookErrorPolicy::Continue;
            }
        }
    }
    let any_failed = !notes.is_empty();
    let message = if notes.is_empty() { format!("{} hooks succeeded", list.len()) } else { notes.join("; ") };
    Ok((HookOutcome { ok, message }, any_failed))
}

async fn publish(ctx: &Context, job: &PushJob, warning: bool, reason: &str, message: &str) {
    super::publish_event(ctx, &job.object_ref(&()), "Push", warning, reason, message).await;
}

/// One step of the state machine: observe, decide, store the status, act. Returns the phase
/// reached and when to look again.
async fn pass(job: &PushJob, ctx: &Context, deleted: bool) -> Result<(Phase, Option<Duration>)> {
    let before = job.phase();
    let obs = observe(job, ctx, deleted).await?;
    let decision = state::next(job, &obs, &ctx.config.settings);
    let ns = job.namespace().unwrap_or_default();
    let api: Api<PushJob> = Api::namespaced(ctx.client.clone(), &ns);
    // Status first: what will be done (replica records, objects about to be created) is
    // stored before it is done.
    if job.status.as_ref() != Some(&decision.status) {
        apply_status(&api, &job.name_any(), StatusManager::PushJob, serde_json::to_value(&decision.status)?).await?;
    }
    for a in &decision.actions {
        if let Err(e) = perform(job, ctx, a).await {
            let Some(refusal) = e.refusal() else { return Err(e) };
            // The next pass fails the job (its status already records what this pass meant to do).
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
        // A job deleted mid-flow is no push result: no metric, no Repository record.
        if !deleted {
            record_completion(job, &decision.status, ctx).await?;
        }
    }
    Ok((after, decision.requeue))
}

async fn apply(job: Arc<PushJob>, ctx: Arc<Context>) -> Result<Requeue> {
    if job.phase().is_terminal() {
        return finished(&job, &ctx).await;
    }
    let (_, requeue) = pass(&job, &ctx, false).await?;
    Ok(match requeue {
        Some(d) => Requeue::requeue(d.max(Duration::from_millis(200))),
        None => Requeue::requeue(Duration::from_secs(300)),
    })
}

/// A finished job: deleted once its TTL passed.
async fn finished(job: &PushJob, ctx: &Context) -> Result<Requeue> {
    let api: Api<PushJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let done = job.status.as_ref().and_then(|s| s.completion_time.as_ref());
    super::expire(&api, &job.name_any(), job.spec.ttl_seconds_after_finished, done).await
}

/// Metrics and the Repository's last-push record for a job that just finished.
async fn record_completion(job: &PushJob, st: &PushJobStatus, ctx: &Context) -> Result<()> {
    let ns = job.namespace().unwrap_or_default();
    let mode = job.spec.mode.as_str();
    let ok = st.phase == Some(Phase::Succeeded);
    let repo_name = &job.spec.repository_ref.name;
    ctx.metrics.jobs.with_label_values(&[mode, if ok { "succeeded" } else { "failed" }]).inc();
    if let (Some(s), Some(e)) = (&st.start_time, &st.completion_time) {
        ctx.metrics
            .job_duration
            .with_label_values(&[mode])
            .observe((chrono_of(&e.0) - chrono_of(&s.0)).num_milliseconds() as f64 / 1000.0);
    }
    let labels = [ns.as_str(), repo_name.as_str(), mode];
    if let Some(stats) = &st.stats {
        ctx.metrics.bytes_read.with_label_values(&labels).inc_by(stats.bytes_read.max(0) as u64);
        ctx.metrics.bytes_new.with_label_values(&labels).inc_by(stats.bytes_new.max(0) as u64);
        ctx.metrics.bytes_uploaded.with_label_values(&labels).inc_by(stats.bytes_uploaded.max(0) as u64);
        if let Some(r) = stats.dedup_ratio {
            ctx.metrics.dedup_ratio.with_label_values(&[ns.as_str(), repo_name.as_str()]).set(r);
        }
        if let Some(b) = stats.store_bytes {
            ctx.metrics.store_bytes.with_label_values(&[ns.as_str(), repo_name.as_str()]).set(b);
        }
    }
    if ok {
        ctx.metrics.last_success.with_label_values(&labels).set(chrono::Utc::now().timestamp() as f64);
    }
    let repos: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(repo) = repos.get_opt(repo_name).await? else { return Ok(()) };
    let rs = repo.status.clone().unwrap_or_default();
    let record = PushRecord {
        time: st.completion_time.clone().unwrap_or_else(|| time(chrono::Utc::now())),
        job: job.name_any(),
        mode: job.spec.mode,
        result: if ok { JobResult::Succeeded } else { JobResult::Failed },
        snapshots: st.snapshots.iter().map(|s| s.snapshot.clone()).collect(),
    };
    let records =
        push_records(&rs, job.spec.mode, record, if ok { st.stats.as_ref() } else { None }, st.snapshots.len());
    apply_status(&repos, repo_name, StatusManager::PushJob, records).await?;
    Ok(())
}

/// The push records of a Repository's status after a job (the fields this controller owns
/// there, all of them: with server-side apply, a field left out would be given up): `record` as
/// the last push of its mode, and the counts moved by `stats` of a successful one.
pub fn push_records(
    rs: &RepositoryStatus,
    mode: Mode,
    record: PushRecord,
    stats: Option<&JobStats>,
    snapshots: usize,
) -> serde_json::Value {
    let mut r = RepositoryStatus {
        last_online_push: rs.last_online_push.clone(),
        last_offline_push: rs.last_offline_push.clone(),
        snapshot_count: rs.snapshot_count,
        logical_bytes: rs.logical_bytes,
        stored_bytes: rs.stored_bytes,
        dedup_ratio: rs.dedup_ratio,
        ..Default::default()
    };
    match mode {
        Mode::Online => r.last_online_push = Some(record),
        Mode::Offline => r.last_offline_push = Some(record),
    }
    if let Some(stats) = stats {
        r.snapshot_count = Some(rs.snapshot_count.unwrap_or(0) + snapshots as i64);
        r.logical_bytes = Some(stats.bytes_total);
        r.stored_bytes = Some(rs.stored_bytes.unwrap_or(0) + stats.bytes_uploaded);
        r.dedup_ratio = stats.dedup_ratio.or(rs.dedup_ratio);
    }
    serde_json::to_value(&r).expect("a status serializes")
}

/// Finalizer: a deleted job that has not finished unwinds through the state machine, the same
/// way as after a failure (the worker stops, post hooks thaw, the workloads come back, what it
/// created goes) before the finalizer goes; one step per call, called again until the job has
/// reached an end.
async fn cleanup(job: Arc<PushJob>, ctx: Arc<Context>) -> Result<Requeue> {
    if job.phase().is_terminal() {
        return Ok(Requeue::await_change());
    }
    let (phase, requeue) = pass(&job, &ctx, true).await?;
    if phase.is_terminal() {
        publish(&ctx, &job, false, "CleanedUp", "deleted mid-flow: nothing of it is left scaled down or behind").await;
        return Ok(Requeue::await_change());
    }
    Err(Error::cleanup_pending(key(&job), requeue))
}

pub fn error_policy(job: Arc<PushJob>, err: &Error, ctx: Arc<Context>) -> Requeue {
    tracing::warn!(job = %key(&job), error = %err, "reconcile failed");
    ctx.metrics.reconcile_errors.with_label_values(&["pushjob", &err.metric_label()]).inc();
    Requeue::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod hook_tests {
    use super::*;

    #[test]
    fn a_worker_killed_at_its_memory_limit_is_oom_killed_whichever_cgroup_hit_it() {
        let term = |reason: &str, exit_code| ContainerStateTerminated {
            reason: Some(reason.into()),
            exit_code,
            ..Default::default()
        };
        assert!(killed_for_memory(Some(&term("OOMKilled", 137)), None));
        // The pod's cgroup hit the limit: the runtime blames the sandbox, the container says Error.
        assert!(killed_for_memory(Some(&term("Error", 137)), None));
        assert!(!killed_for_memory(Some(&term("Error", 137)), Some("Evicted")), "an eviction is not OOM");
        assert!(!killed_for_memory(Some(&term("Error", 1)), None));
        assert!(!killed_for_memory(None, None));
    }

    fn status(s: &str, message: Option<&str>) -> Option<ExecStatus> {
        Some(ExecStatus { status: Some(s.into()), message: message.map(String::from), ..Default::default() })
    }

    #[test]
    fn a_hook_fails_unless_its_exec_ends_with_success() {
        assert_eq!(hook_failure(status("Success", None), b"warnings on stderr"), None);
        let exit3 = "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3";
        assert_eq!(
            hook_failure(status("Failure", Some(exit3)), b"  cannot freeze: busy\n").as_deref(),
            Some(format!("{exit3}; stderr: cannot freeze: busy").as_str())
        );
        assert_eq!(hook_failure(status("Failure", None), b"").as_deref(), Some("non-zero exit"));
        // A stream that ends without a Status is not a success.
        assert_eq!(hook_failure(None, b"").as_deref(), Some("the exec stream ended without an exit status"));
    }
}
