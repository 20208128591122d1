//! The Repository controller: checks the spec against the cluster (PVCs, workloads, Secret),
//! reports Ready/Stalled with reasons and whether the services are running, and is the safety
//! net of offline pushes: a workload still carrying our replica annotation while no live job
//! owns it is scaled back to the recorded count.

use super::push_job::build::discover;
use super::push_job::state::parse_annotation;
use super::push_job::{patch_workload, pods_and_owners, resolve_volumes};
use super::{Context, Error, Result};
use crate::api::conditions::{self, set_condition};
use crate::api::*;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The check results (pure input to the status).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checks {
    pub volumes: Vec<String>,
    pub missing_volumes: Vec<String>,
    pub secret_missing: Option<String>,
    pub workloads: Vec<WorkloadRef>,
    pub bare_pods: Vec<String>,
    pub mounted: bool,
}

/// Conditions from the checks (pure).
pub fn status_from(
    checks: &Checks,
    old: Option<&RepositoryStatus>,
    generation: Option<i64>,
    now: chrono::DateTime<chrono::Utc>,
) -> RepositoryStatus {
    let mut st = old.cloned().unwrap_or_default();
    st.observed_generation = generation;
    st.volumes = checks.volumes.clone();
    st.workloads = checks.workloads.clone();
    st.mounted = Some(checks.mounted);
    let problem = if !checks.missing_volumes.is_empty() {
        Some(("VolumeNotFound", format!("PVCs not found: {}", checks.missing_volumes.join(", "))))
    } else if checks.volumes.is_empty() {
        Some(("NoVolumes", "spec.volumes and spec.volumeSelector select no PVC".to_string()))
    } else {
        checks.secret_missing.as_ref().map(|s| ("SecretNotFound", format!("credentials Secret {s:?} not found")))
    };
    let c = &mut st.conditions;
    match problem {
        Some((reason, msg)) => {
            set_condition(c, conditions::READY, false, reason, &msg, generation, now);
            set_condition(c, conditions::STALLED, true, reason, &msg, generation, now);
        }
        None => {
            let msg = format!("{} volumes, {} workloads", checks.volumes.len(), checks.workloads.len());
            set_condition(c, conditions::READY, true, "Ready", &msg, generation, now);
            set_condition(c, conditions::STALLED, false, "Ready", "", generation, now);
        }
    }
    set_condition(c, conditions::RECONCILING, false, "Checked", "", generation, now);
    if checks.bare_pods.is_empty() {
        conditions::remove_condition(c, "OfflineBlocked");
    } else {
        let msg = format!(
            "pods without a Deployment or StatefulSet mount the volumes ({}); offline pushes would not be able to bring them back and will fail",
            checks.bare_pods.join(", ")
        );
        set_condition(c, "OfflineBlocked", true, "BarePod", &msg, generation, now);
    }
    st
}

pub async fn reconcile(repo: Arc<Repository>, ctx: Arc<Context>) -> Result<Requeue> {
    let ns = repo.namespace().ok_or_else(|| Error::NotNamespaced(repo.name_any()))?;
    let (volumes, missing) = resolve_volumes(&ctx, &ns, &repo.spec).await?;
    let (pods, owners) = pods_and_owners(&ctx, &ns).await?;
    let d = discover(&volumes, &pods, &owners);
    let mounted = pods.iter().any(|p| p.running && !p.ours && p.claims.iter().any(|c| volumes.contains(c)));
    let secret_missing = match &repo.spec.storage.credentials_secret_ref {
        Some(s) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            secrets.get_metadata_opt(&s.name).await?.is_none().then(|| s.name.clone())
        }
        None => None,
    };
    let checks = Checks {
        volumes,
        missing_volumes: missing,
        secret_missing,
        workloads: repo.spec.workloads.clone().unwrap_or(d.workloads),
        bare_pods: if repo.spec.workloads.is_some() { vec![] } else { d.bare_pods },
        mounted,
    };
    sweep_orphaned_scale_downs(&ctx, &ns).await?;
    let st = status_from(&checks, repo.status.as_ref(), repo.metadata.generation, chrono::Utc::now());
    if repo.status.as_ref() != Some(&st) {
        let api: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
        let mut patch = serde_json::to_value(&st)?;
        // Push records belong to the PushJob controller: never overwrite them from here.
        if let Some(o) = patch.as_object_mut() {
            for k in ["lastOnlinePush", "lastOfflinePush", "snapshotCount", "logicalBytes", "storedBytes", "dedupRatio"]
            {
                o.remove(k);
            }
        }
        api.patch_status(&repo.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": patch }))).await?;
    }
    Ok(Requeue::requeue(Duration::from_secs(30)))
}

/// Workloads left scaled down by a job that no longer runs (deleted without its finalizer,
/// or a crash between the annotation and the status): scale them back.
async fn sweep_orphaned_scale_downs(ctx: &Context, ns: &str) -> Result<()> {
    let jobs: Api<PushJob> = Api::namespaced(ctx.client.clone(), ns);
    let live = |job: &str| {
        let job = job.to_string();
        let jobs = jobs.clone();
        async move {
            match jobs.get_opt(&job).await? {
                Some(j) => Ok::<bool, kube::Error>(!j.phase().is_terminal() || j.metadata.deletion_timestamp.is_some()),
                None => Ok(false),
            }
        }
    };
    let mut annotated: Vec<(WorkloadRef, String)> = Vec::new();
    let deps: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    for d in deps.list(&ListParams::default()).await? {
        if let Some(v) = d.annotations().get(REPLICAS_ANNOTATION) {
            annotated.push((WorkloadRef { kind: WorkloadKind::Deployment, name: d.name_any() }, v.clone()));
        }
    }
    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    for s in sts.list(&ListParams::default()).await? {
        if let Some(v) = s.annotations().get(REPLICAS_ANNOTATION) {
            annotated.push((WorkloadRef { kind: WorkloadKind::StatefulSet, name: s.name_any() }, v.clone()));
        }
    }
    for (w, value) in annotated {
        let Some((job, replicas)) = parse_annotation(&value) else { continue };
        if live(&job).await? {
            continue;
        }
        tracing::warn!(namespace = ns, kind = w.kind.as_str(), name = %w.name, job, replicas, "restoring replicas left by a job that is gone");
        patch_workload(ctx, ns, &w, json!({"spec": {"replicas": replicas}}), true).await?;
        patch_workload(ctx, ns, &w, json!({"metadata": {"annotations": {REPLICAS_ANNOTATION: null}}}), false).await?;
        ctx.metrics.workloads_restored.with_label_values(&[ns]).inc();
    }
    Ok(())
}

pub fn error_policy(repo: Arc<Repository>, err: &Error, ctx: Arc<Context>) -> Requeue {
    tracing::warn!(repository = %repo.name_any(), error = %err, "reconcile failed");
    ctx.metrics.reconcile_errors.with_label_values(&["repository", &err.metric_label()]).inc();
    Requeue::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn status_reasons() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let ok = Checks { volumes: vec!["data".into()], mounted: true, ..Default::default() };
        let st = status_from(&ok, None, Some(3), now);
        assert!(conditions::condition_true(&st.conditions, "Ready"));
        assert_eq!(st.mounted, Some(true));
        assert_eq!(st.observed_generation, Some(3));
        let missing = Checks { missing_volumes: vec!["gone".into()], ..ok.clone() };
        let st = status_from(&missing, Some(&st), Some(4), now);
        assert!(conditions::condition_true(&st.conditions, "Stalled"));
        assert!(
            st.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "VolumeNotFound" && c.message.contains("gone"))
        );
        let secret = Checks { secret_missing: Some("creds".into()), ..ok.clone() };
        let st = status_from(&secret, None, None, now);
        assert!(st.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "SecretNotFound"));
        let bare = Checks { bare_pods: vec!["lonely".into()], ..ok.clone() };
        let st = status_from(&bare, None, None, now);
        assert!(conditions::condition_true(&st.conditions, "Ready"), "online pushes still work");
        assert!(st.conditions.iter().any(|c| c.type_ == "OfflineBlocked" && c.reason == "BarePod"));
    }
}
