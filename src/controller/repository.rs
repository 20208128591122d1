//! The Repository controller: checks the spec against the cluster (PVCs, workloads, Secret),
//! reports Ready/Stalled with reasons and whether the services are running, and is the safety
//! net of offline pushes: a workload still carrying our replica annotation while no live job
//! owns it is scaled back to the recorded count.

use super::push_job::build::discover;
use super::push_job::state::parse_annotation;
use super::push_job::{patch_workload, pods_and_owners, resolve_volumes};
use super::{Context, Error, Result, StatusManager, apply_status};
use crate::api::conditions::{self, set_condition};
use crate::api::*;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
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
    pub encryption: EncryptionCheck,
}

/// What the spec and its Secret say about the store's encryption.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum EncryptionCheck {
    /// `spec.storage.encryption` absent: existing plaintext stores go on, new ones fail.
    #[default]
    NotConfigured,
    /// `mode: None`.
    Plaintext,
    /// A Secret with a passphrase or a raw key.
    Configured,
    SecretNotFound(String),
    /// The Secret holds neither `PUSH_OPERATOR_PASSWORD` nor `PUSH_OPERATOR_KEY`.
    KeyNotInSecret(String),
}

impl EncryptionCheck {
    /// From the spec and the data keys of its Secret (`None`: the Secret does not exist).
    pub fn of(spec: &StorageSpec, secret_keys: Option<&[String]>) -> EncryptionCheck {
        match (&spec.encryption, spec.encryption_secret()) {
            (None, _) => EncryptionCheck::NotConfigured,
            (Some(e), _) if e.mode == EncryptionMode::None => EncryptionCheck::Plaintext,
            (Some(_), None) => EncryptionCheck::KeyNotInSecret(String::new()),
            (Some(_), Some(name)) => match secret_keys {
                None => EncryptionCheck::SecretNotFound(name.into()),
                Some(keys) if keys.iter().any(|k| k == "PUSH_OPERATOR_PASSWORD" || k == "PUSH_OPERATOR_KEY") => {
                    EncryptionCheck::Configured
                }
                Some(_) => EncryptionCheck::KeyNotInSecret(name.into()),
            },
        }
    }

    /// A problem that stalls the Repository.
    fn problem(&self) -> Option<(&'static str, String)> {
        match self {
            EncryptionCheck::SecretNotFound(s) => {
                Some(("EncryptionSecretNotFound", format!("encryption Secret {s:?} not found")))
            }
            EncryptionCheck::KeyNotInSecret(s) => Some((
                "EncryptionKeyNotInSecret",
                format!("encryption Secret {s:?} holds neither PUSH_OPERATOR_PASSWORD nor PUSH_OPERATOR_KEY"),
            )),
            _ => None,
        }
    }

    /// The `Encrypted` condition: (status, reason, message).
    fn condition(&self) -> (bool, &'static str, &'static str) {
        match self {
            EncryptionCheck::Configured => (true, "Configured", "the store is encrypted with the Secret's key"),
            EncryptionCheck::Plaintext => {
                (false, "Plaintext", "spec.storage.encryption.mode is None: whoever can read the bucket reads the data")
            }
            EncryptionCheck::NotConfigured => (
                false,
                "EncryptionNotConfigured",
                "spec.storage.encryption is not set: an existing unencrypted store goes on unencrypted, and pushes to a new store fail until a secretRef (or mode: None) is given",
            ),
            EncryptionCheck::SecretNotFound(_) | EncryptionCheck::KeyNotInSecret(_) => {
                (false, "EncryptionKeyUnavailable", "the encryption Secret gives no key (see Ready)")
            }
        }
    }
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
    } else if let Some(s) = &checks.secret_missing {
        Some(("SecretNotFound", format!("credentials Secret {s:?} not found")))
    } else {
        checks.encryption.problem()
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
    let (encrypted, reason, msg) = checks.encryption.condition();
    set_condition(c, "Encrypted", encrypted, reason, msg, generation, now);
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
    let encryption_keys = match repo.spec.storage.encryption_secret() {
        Some(name) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            // Only the names of the data keys are kept; the values are dropped here.
            secrets.get_opt(name).await?.map(|s| s.data.unwrap_or_default().into_keys().collect::<Vec<_>>())
        }
        None => None,
    };
    let checks = Checks {
        encryption: EncryptionCheck::of(&repo.spec.storage, encryption_keys.as_deref()),
        volumes,
        missing_volumes: missing,
        secret_missing,
        workloads: repo.spec.workloads.clone().unwrap_or(d.workloads),
        bare_pods: if repo.spec.workloads.is_some() { vec![] } else { d.bare_pods },
        mounted,
    };
    let st = status_from(&checks, repo.status.as_ref(), repo.metadata.generation, chrono::Utc::now());
    if repo.status.as_ref() != Some(&st) {
        let api: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
        let mut mine = serde_json::to_value(&st)?;
        // The push records are the PushJob controller's fields (see push_job::push_records).
        if let Some(o) = mine.as_object_mut() {
            for k in [
                "lastOnlinePush",
                "lastOfflinePush",
                "snapshotCount",
                "logicalBytes",
                "storedBytes",
                "dedupRatio",
                "lastRestoreTest",
            ] {
                o.remove(k);
            }
        }
        apply_status(&api, &repo.name_any(), StatusManager::Repository, mine).await?;
    }
    Ok(Requeue::requeue(recheck_after(&st)))
}

/// A Repository is checked again on a timer (its PVCs, pods and Secrets are not watched): soon
/// while something is missing, so it turns Ready shortly after the fix; rarely once it is
/// Ready, so a thousand idle Repositories cost little.
pub fn recheck_after(st: &RepositoryStatus) -> Duration {
    if conditions::condition_true(&st.conditions, conditions::READY) {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(30)
    }
}

/// How often the namespaces that hold Repositories are swept for scale-downs a gone job left.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The safety net of offline pushes, apart from the Repositories' own checks (which are rare
/// once they are Ready): every [`SWEEP_EVERY`], each namespace with a Repository is swept once.
pub async fn sweep_loop(ctx: Arc<Context>, repos: kube::runtime::reflector::Store<Repository>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let namespaces: std::collections::BTreeSet<String> =
            repos.state().iter().filter_map(|r| r.namespace()).collect();
        for ns in namespaces {
            if let Err(e) = sweep_orphaned_scale_downs(&ctx, &ns).await {
                tracing::warn!(namespace = %ns, error = %e, "sweep for scale-downs left by gone jobs failed");
                ctx.metrics.reconcile_errors.with_label_values(&["sweep", &e.metric_label()]).inc();
            }
        }
    }
}

/// Workloads left scaled down by a job that no longer runs (deleted without its finalizer,
/// or a crash between the annotation and the status): scale them back.
async fn sweep_orphaned_scale_downs(ctx: &Context, ns: &str) -> Result<()> {
    let jobs: Api<PushJob> = Api::namespaced(ctx.client.clone(), ns);
    let restores: Api<RestoreJob> = Api::namespaced(ctx.client.clone(), ns);
    // A job is live while it has not finished, or is deleted and still unwinding.
    let live = |job: &str| {
        let job = job.to_string();
        let (jobs, restores) = (jobs.clone(), restores.clone());
        async move {
            let (phase_done, deleting) = match job.strip_prefix("restore:") {
                Some(name) => match restores.get_opt(name).await? {
                    Some(j) => (j.phase().is_terminal(), j.metadata.deletion_timestamp.is_some()),
                    None => return Ok::<bool, kube::Error>(false),
                },
                None => match jobs.get_opt(&job).await? {
                    Some(j) => (j.phase().is_terminal(), j.metadata.deletion_timestamp.is_some()),
                    None => return Ok(false),
                },
            };
            Ok(!phase_done || deleting)
        }
    };
    // Metadata only: the annotation is all the sweep reads.
    let mut annotated: Vec<(WorkloadRef, String)> = Vec::new();
    let deps: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    for d in deps.list_metadata(&ListParams::default()).await? {
        if let Some(v) = d.annotations().get(REPLICAS_ANNOTATION) {
            annotated.push((WorkloadRef { kind: WorkloadKind::Deployment, name: d.name_any() }, v.clone()));
        }
    }
    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    for s in sts.list_metadata(&ListParams::default()).await? {
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
        let st = status_from(&ok, None, None, now);
        assert!(
            st.conditions
                .iter()
                .any(|c| c.type_ == "Encrypted" && c.status == "False" && c.reason == "EncryptionNotConfigured")
        );
        let bare = Checks { bare_pods: vec!["lonely".into()], ..ok.clone() };
        let st = status_from(&bare, None, None, now);
        assert!(conditions::condition_true(&st.conditions, "Ready"), "online pushes still work");
        assert!(st.conditions.iter().any(|c| c.type_ == "OfflineBlocked" && c.reason == "BarePod"));
    }

    #[test]
    fn a_ready_repository_is_checked_rarely_and_a_stalled_one_soon() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let ok = Checks { volumes: vec!["data".into()], ..Default::default() };
        assert_eq!(recheck_after(&status_from(&ok, None, None, now)), Duration::from_secs(120));
        let missing = Checks { missing_volumes: vec!["gone".into()], ..ok };
        assert_eq!(recheck_after(&status_from(&missing, None, None, now)), Duration::from_secs(30));
        assert_eq!(recheck_after(&RepositoryStatus::default()), Duration::from_secs(30), "never checked");
    }

    #[test]
    fn encryption_checks() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let spec = |e: Option<EncryptionSpec>| StorageSpec { bucket: "b".into(), encryption: e, ..Default::default() };
        let with_secret = spec(Some(EncryptionSpec {
            mode: EncryptionMode::Encrypted,
            secret_ref: Some(LocalRef { name: "k".into() }),
        }));
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(EncryptionCheck::of(&spec(None), None), EncryptionCheck::NotConfigured);
        let none = spec(Some(EncryptionSpec { mode: EncryptionMode::None, secret_ref: None }));
        assert_eq!(EncryptionCheck::of(&none, None), EncryptionCheck::Plaintext);
        assert_eq!(EncryptionCheck::of(&with_secret, None), EncryptionCheck::SecretNotFound("k".into()));
        assert_eq!(
            EncryptionCheck::of(&with_secret, Some(&keys(&["other"]))),
            EncryptionCheck::KeyNotInSecret("k".into())
        );
        assert_eq!(EncryptionCheck::of(&with_secret, Some(&keys(&["PUSH_OPERATOR_KEY"]))), EncryptionCheck::Configured);
        assert_eq!(
            EncryptionCheck::of(&with_secret, Some(&keys(&["PUSH_OPERATOR_PASSWORD"]))),
            EncryptionCheck::Configured
        );
        let ok = Checks { volumes: vec!["data".into()], ..Default::default() };
        for (check, reason) in [
            (EncryptionCheck::SecretNotFound("k".into()), "EncryptionSecretNotFound"),
            (EncryptionCheck::KeyNotInSecret("k".into()), "EncryptionKeyNotInSecret"),
        ] {
            let st = status_from(&Checks { encryption: check, ..ok.clone() }, None, None, now);
            assert!(conditions::condition_true(&st.conditions, "Stalled"));
            assert!(st.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == reason), "{reason}");
        }
        let st = status_from(&Checks { encryption: EncryptionCheck::Configured, ..ok.clone() }, None, None, now);
        assert!(conditions::condition_true(&st.conditions, "Ready"));
        assert!(conditions::condition_true(&st.conditions, "Encrypted"));
    }
}
