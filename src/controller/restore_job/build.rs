//! Pure builders: the pods and PVCs a restore creates. Every pod starts from the push worker's
//! hardened pod ([`push_build::worker_pod`]: no token, read-only root, seccomp, every capability
//! dropped), so a security change reaches them all.

use crate::api::*;
use crate::controller::push_job::build::{self as push_build, WorkerConfig, mount_path};
use crate::controller::push_job::security::WorkerIdentity;
use crate::restore_worker::WorkerStep;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, TypedLocalObjectReference, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use std::collections::{BTreeMap, BTreeSet};

/// The capabilities a root restore worker needs to write any file and give it back its owner
/// and mode (all in Pod Security `baseline`'s list).
pub const RESTORE_CAPABILITIES: [&str; 4] = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"];

pub fn labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (RESTORE_LABEL.to_string(), job.to_string()),
        ("app.kubernetes.io/name".to_string(), "push-operator".to_string()),
        ("app.kubernetes.io/component".to_string(), "restore-worker".to_string()),
    ])
}

fn meta(job: &RestoreJob, name: &str, owned: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: job.metadata.namespace.clone(),
        labels: Some(labels(job.metadata.name.as_deref().unwrap_or(""))),
        owner_references: if owned { Some(job.controller_owner_ref(&()).into_iter().collect()) } else { None },
        ..Default::default()
    }
}

/// The PushJob an undo push runs as: offline (the workloads are stopped), consistent.
fn undo_push(job: &RestoreJob) -> PushJob {
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut p = PushJob::new(
        &name,
        PushJobSpec {
            repository_ref: job.spec.repository_ref.clone(),
            mode: Mode::Offline,
            priority: job.spec.priority,
            deadline_seconds: None,
            reason: Some(format!("undo snapshot before restore {name}")),
            ttl_seconds_after_finished: None,
            retention: None,
        },
    );
    p.metadata.namespace = job.metadata.namespace.clone();
    p.status = Some(PushJobStatus { consistency: Some(Consistency::Consistent), ..Default::default() });
    p
}

/// The arguments of the restore worker for `step`.
pub fn restore_args(job: &RestoreJob, repo: &Repository, step: WorkerStep) -> Vec<String> {
    let st = job.status.clone().unwrap_or_default();
    let mut args = vec![
        "restore-worker".to_string(),
        "--step".into(),
        match step {
            WorkerStep::Resolve => "resolve",
            WorkerStep::Restore => "restore",
            WorkerStep::Undo => "undo",
            WorkerStep::SafetyPush => "safety-push",
            WorkerStep::Check => "check",
        }
        .into(),
        "--store".into(),
        repo.spec.storage.store_url(),
        "--namespace".into(),
        job.metadata.namespace.clone().unwrap_or_default(),
        "--repository".into(),
        repo.metadata.name.clone().unwrap_or_default(),
        "--job".into(),
        job.metadata.name.clone().unwrap_or_default(),
    ];
    let sel = &job.spec.snapshot;
    match step {
        WorkerStep::Resolve => {
            if let Some(ns) = &sel.from_namespace {
                args.extend(["--from-namespace".into(), ns.clone()]);
            }
            for v in &st.volumes {
                args.extend(["--want".into(), v.volume.clone()]);
            }
            for id in sel.ids.iter().flatten() {
                args.extend(["--id".into(), id.clone()]);
            }
            match sel.mode_filter() {
                Some(Mode::Offline) => args.extend(["--mode".into(), "offline".into()]),
                Some(Mode::Online) => args.extend(["--mode".into(), "online".into()]),
                None => {}
            }
            if let Some(t) = &sel.as_of {
                args.extend(["--as-of".into(), chrono_of(&t.0).to_rfc3339()]);
            }
        }
        WorkerStep::Restore | WorkerStep::Undo => {
            for v in &st.volumes {
                let id = if step == WorkerStep::Undo { &v.safety_snapshot } else { &v.snapshot };
                if let Some(id) = id {
                    args.extend(["--volume".into(), format!("{}={}", v.volume, mount_path(&v.volume))]);
                    args.extend(["--snapshot".into(), format!("{}={id}", v.volume)]);
                }
            }
            if job.spec.target.kind() == TargetKind::InPlace {
                args.push("--mirror".into());
            }
            if step == WorkerStep::Restore
                && let Some(c) = &job.spec.cleanup
            {
                for p in &c.paths {
                    args.extend(["--cleanup".into(), p.clone()]);
                }
                if c.when == CleanupWhen::Always {
                    args.extend(["--cleanup-when".into(), "always".into()]);
                }
            }
            let why = job.spec.reason.clone().unwrap_or_else(|| "manual".into());
            let reason = if step == WorkerStep::Undo { format!("undo of a failed restore: {why}") } else { why };
            args.extend(["--reason".into(), reason]);
        }
        WorkerStep::SafetyPush | WorkerStep::Check => {}
    }
    args
}

/// The worker pod of one step. `claims`: (volume, claim) pairs it mounts (none to resolve);
/// restore and undo mount them writable, the undo push read-only.
#[allow(clippy::too_many_arguments)]
pub fn worker_pod(
    job: &RestoreJob,
    repo: &Repository,
    name: &str,
    step: WorkerStep,
    claims: &[(String, String)],
    block: &BTreeSet<String>,
    identity: &WorkerIdentity,
    cfg: &WorkerConfig,
) -> Pod {
    let mut pod = push_build::worker_pod(&undo_push(job), repo, name, claims, block, None, identity, cfg);
    pod.metadata = meta(job, name, true);
    let hooks = crate::test_hooks::worker_env(job.metadata.annotations.as_ref());
    if let Some(env) = pod.spec.as_mut().and_then(|s| s.containers[0].env.as_mut()) {
        env.extend(hooks);
    }
    if step == WorkerStep::SafetyPush {
        return pod;
    }
    if step == WorkerStep::Check {
        return check_pod(pod, job);
    }
    let spec = pod.spec.as_mut().expect("worker pods have a spec");
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(c) = &mut v.persistent_volume_claim {
            c.read_only = None;
        }
    }
    let c = &mut spec.containers[0];
    for m in c.volume_mounts.iter_mut().flatten() {
        m.read_only = None;
    }
    c.name = "restore".into();
    let mut args = restore_args(job, repo, step);
    args.extend(push_build::store_access(&repo.spec.storage).0);
    c.args = Some(args);
    if let (WorkerIdentity::Root, Some(sc)) = (identity, c.security_context.as_mut())
        && let Some(caps) = sc.capabilities.as_mut()
    {
        caps.add = Some(RESTORE_CAPABILITIES.iter().map(|s| s.to_string()).collect());
    }
    pod
}

/// The user's check: their image and command on the hardened skeleton, the volumes writable
/// (an application started on them writes), a writable root (its own image's state), and
/// nothing of the store: no credentials, no arguments of ours.
fn check_pod(mut pod: Pod, job: &RestoreJob) -> Pod {
    let check = job.spec.check.clone().expect("a check pod is built for a job with a check");
    if let Some(l) = pod.metadata.labels.as_mut() {
        l.insert("app.kubernetes.io/component".into(), "restore-check".into());
    }
    let spec = pod.spec.as_mut().expect("worker pods have a spec");
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(c) = &mut v.persistent_volume_claim {
            c.read_only = None;
        }
    }
    let c = &mut spec.containers[0];
    c.name = "check".into();
    c.image = Some(check.image);
    c.image_pull_policy = None;
    c.command = Some(check.command);
    c.args = if check.args.is_empty() { None } else { Some(check.args) };
    c.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
        name: "PUSH_OPERATOR_RESTORED".into(),
        value: Some("/volumes".into()),
        ..Default::default()
    }]);
    for m in c.volume_mounts.iter_mut().flatten() {
        m.read_only = None;
    }
    if let Some(sc) = c.security_context.as_mut() {
        sc.read_only_root_filesystem = Some(false);
    }
    pod
}

/// Bytes from a Kubernetes quantity (`1Gi`, `500M`, `1073741824`); `None` when it is not one.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        _ => return None,
    };
    Some((n * mult).ceil() as u64)
}

/// The size of a new PVC for a snapshot of `bytes`: the size asked for (`Err` when it is
/// smaller than the data), else the source PVC's request, grown when the data needs more room
/// (the files plus an eighth and 64 MiB for the filesystem), in MiB.
pub fn claim_size(asked: Option<&str>, source: Option<&str>, bytes: i64) -> Result<String, String> {
    let needed = (bytes.max(0) as u64) + (bytes.max(0) as u64) / 8 + (64 << 20);
    if let Some(a) = asked {
        let n = quantity_bytes(a).ok_or_else(|| format!("newVolumes.size {a:?} is not a quantity (like 10Gi)"))?;
        if n < bytes.max(0) as u64 {
            return Err(format!("newVolumes.size {a} is smaller than the snapshot's {bytes} bytes"));
        }
        return Ok(a.to_string());
    }
    let from_source = source.and_then(quantity_bytes).unwrap_or(0);
    if from_source >= needed {
        return Ok(source.unwrap_or_default().to_string());
    }
    Ok(format!("{}Mi", needed.div_ceil(1 << 20)))
}

/// A new PVC for `volume` (not owned by the job: it is the restore's result and outlives it).
pub fn new_claim(
    job: &RestoreJob,
    name: &str,
    source: Option<&PersistentVolumeClaim>,
    size: &str,
) -> PersistentVolumeClaim {
    let s = source.and_then(|p| p.spec.clone()).unwrap_or_default();
    let nv = job.spec.target.new_volumes.clone().unwrap_or_default();
    let mut md = meta(job, name, false);
    md.labels.get_or_insert_default().extend(nv.labels.clone());
    PersistentVolumeClaim {
        metadata: md,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: s.access_modes.clone().or_else(|| Some(vec!["ReadWriteOnce".into()])),
            storage_class_name: nv.storage_class_name.clone().or(s.storage_class_name.clone()),
            volume_mode: s.volume_mode.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity(size.to_string()))])),
                ..Default::default()
            }),
            data_source: None::<TypedLocalObjectReference>,
            ..Default::default()
        }),
        status: None,
    }
}
