//! Pure builders: the objects a push creates, and workload discovery. No I/O.

use super::security::WorkerIdentity;
use crate::api::*;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, TypedLocalObjectReference, Volume, VolumeDevice, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use std::collections::{BTreeMap, BTreeSet};

/// Mount point of volume `v` inside the worker.
pub fn mount_path(volume: &str) -> String {
    format!("/volumes/{volume}")
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub service_account: Option<String>,
    /// Secrets (in each job's namespace) for pulling the worker image.
    pub image_pull_secrets: Vec<String>,
    pub resources: ResourceRequirements,
}

impl WorkerConfig {
    /// `imagePullSecrets` of worker and prune pods.
    pub fn pull_secrets(&self) -> Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>> {
        (!self.image_pull_secrets.is_empty()).then(|| {
            self.image_pull_secrets
                .iter()
                .map(|n| k8s_openapi::api::core::v1::LocalObjectReference { name: n.clone() })
                .collect()
        })
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let q = |s: &str| Quantity(s.to_string());
        WorkerConfig {
            image: "ghcr.io/rediacc/push-operator:latest".into(),
            image_pull_policy: None,
            service_account: None,
            image_pull_secrets: Vec::new(),
            resources: ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".into(), q("500m")), ("memory".into(), q("512Mi"))])),
                limits: Some(BTreeMap::from([("memory".into(), q("2Gi"))])),
                ..Default::default()
            },
        }
    }
}

pub fn labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (JOB_LABEL.to_string(), job.to_string()),
        ("app.kubernetes.io/name".to_string(), "push-operator".to_string()),
        ("app.kubernetes.io/component".to_string(), "worker".to_string()),
    ])
}

fn owner(job: &PushJob) -> Vec<OwnerReference> {
    job.controller_owner_ref(&()).into_iter().collect()
}

fn meta(job: &PushJob, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: job.metadata.namespace.clone(),
        labels: Some(labels(job.metadata.name.as_deref().unwrap_or(""))),
        owner_references: Some(owner(job)),
        ..Default::default()
    }
}

/// The keys of an encryption Secret that reach workers (as the CLI's variables of the same names).
pub const ENCRYPTION_SECRET_KEYS: [&str; 4] =
    ["PUSH_OPERATOR_PASSWORD", "PUSH_OPERATOR_KEY", "PUSH_OPERATOR_PREVIOUS_PASSWORD", "PUSH_OPERATOR_PREVIOUS_KEY"];

fn secret_env(secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: key.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(optional),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.to_string()), ..Default::default() }
}

/// How a worker reaches the Repository's store: extra arguments and environment (credentials
/// only through secretKeyRef, never in arguments).
pub fn store_access(storage: &crate::api::StorageSpec) -> (Vec<String>, Vec<EnvVar>) {
    let mut args = Vec::new();
    let mut envs = vec![env("PUSH_OPERATOR_LOG", "info")];
    if let Some(ep) = &storage.endpoint {
        envs.push(env("AWS_ENDPOINT_URL", ep));
    }
    if let Some(r) = &storage.region {
        envs.push(env("AWS_REGION", r));
    }
    if let Some(ps) = storage.path_style {
        args.extend(["--s3-path-style".into(), ps.to_string()]);
    }
    if let Some(secret) = &storage.credentials_secret_ref {
        envs.push(secret_env(&secret.name, "AWS_ACCESS_KEY_ID", false));
        envs.push(secret_env(&secret.name, "AWS_SECRET_ACCESS_KEY", false));
        envs.push(secret_env(&secret.name, "AWS_SESSION_TOKEN", true));
    }
    if let Some(secret) = storage.encryption_secret() {
        // Each optional: the Secret holds a passphrase or a raw key, and the previous one only
        // during a rotation. The Repository controller checks that one of the first two is there.
        for key in ENCRYPTION_SECRET_KEYS {
            envs.push(secret_env(secret, key, true));
        }
    }
    (args, envs)
}

/// The pod-level and container-level security contexts of a worker running as `identity`
/// (see [`super::security`]): every capability dropped (but `DAC_OVERRIDE` for root), no
/// privilege escalation, a read-only root filesystem, the runtime's seccomp profile.
fn worker_security(identity: &WorkerIdentity) -> (PodSecurityContext, SecurityContext) {
    let seccomp = Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() });
    let (pod, non_root, add) = match identity {
        WorkerIdentity::Root => (
            PodSecurityContext {
                run_as_user: Some(0),
                run_as_group: Some(0),
                seccomp_profile: seccomp,
                ..Default::default()
            },
            false,
            Some(vec!["DAC_OVERRIDE".into()]),
        ),
        WorkerIdentity::App { uid, gid, groups } => (
            PodSecurityContext {
                run_as_user: Some(*uid),
                run_as_group: *gid,
                run_as_non_root: Some(true),
                supplemental_groups: if groups.is_empty() { None } else { Some(groups.clone()) },
                seccomp_profile: seccomp,
                ..Default::default()
            },
            true,
            None,
        ),
    };
    let container = SecurityContext {
        run_as_non_root: Some(non_root),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add }),
        ..Default::default()
    };
    (pod, container)
}

/// The worker pod: the operator's image running `push-operator worker`, the volumes mounted
/// read-only (block volumes as devices), as `identity`, and the store credentials from the
/// Secret (never in arguments or logs).
#[allow(clippy::too_many_arguments)]
pub fn worker_pod(
    job: &PushJob,
    repo: &Repository,
    name: &str,
    claims: &[(String, String)],
    block: &BTreeSet<String>,
    node: Option<String>,
    identity: &WorkerIdentity,
    cfg: &WorkerConfig,
) -> Pod {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let repo_name = repo.metadata.name.clone().unwrap_or_default();
    let storage = &repo.spec.storage;
    let consistency = job.status.as_ref().and_then(|s| s.consistency).unwrap_or(Consistency::Inconsistent);
    let mut args = vec![
        "worker".to_string(),
        "--store".into(),
        storage.store_url(),
        "--namespace".into(),
        ns.clone(),
        "--repository".into(),
        repo_name,
        "--job".into(),
        job_name.clone(),
        "--mode".into(),
        job.spec.mode.as_str().into(),
        "--consistency".into(),
        consistency.as_str().into(),
        "--priority".into(),
        job.spec.priority.as_str().into(),
    ];
    if let Some(r) = &job.spec.reason {
        args.extend(["--reason".into(), r.clone()]);
    }
    for g in &repo.spec.exclude {
        args.extend(["--exclude".into(), g.clone()]);
    }
    if let Some(r) = &job.spec.retention {
        args.extend(["--retention".into(), serde_json::to_string(r).expect("retention serializes")]);
    }
    let mut volumes = vec![];
    let mut mounts = vec![];
    let mut devices = vec![];
    for (i, (volume, claim)) in claims.iter().enumerate() {
        let vname = format!("v{i}");
        volumes.push(Volume {
            name: vname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
        if block.contains(claim) {
            devices.push(VolumeDevice { name: vname, device_path: mount_path(volume) });
        } else {
            mounts.push(VolumeMount {
                name: vname,
                mount_path: mount_path(volume),
                read_only: Some(true),
                ..Default::default()
            });
        }
        args.extend(["--volume".into(), format!("{volume}={}", mount_path(volume))]);
    }
    let (store_args, envs) = store_access(storage);
    args.extend(store_args);
    if storage.encryption.as_ref().is_some_and(|e| e.mode == EncryptionMode::None) {
        args.extend(["--encryption".into(), "none".into()]);
    }
    if let Some(lock) = &storage.object_lock {
        let mode = match lock.mode {
            ObjectLockMode::Compliance => "compliance",
            ObjectLockMode::Governance => "governance",
        };
        args.extend(["--object-lock-period".into(), format!("{}d", lock.retention_days)]);
        args.extend(["--object-lock-mode".into(), mode.into()]);
    }
    let container = Container {
        name: "worker".into(),
        args: Some(args),
        env: Some([envs, crate::test_hooks::worker_env(job.metadata.annotations.as_ref())].concat()),
        resources: Some(repo.spec.worker_resources.clone().unwrap_or_else(|| cfg.resources.clone())),
        volume_mounts: Some(mounts),
        volume_devices: if devices.is_empty() { None } else { Some(devices) },
        ..Default::default()
    };
    hardened_pod(meta(job, name), container, volumes, node, identity, cfg)
}

/// The skeleton of every pod the operator starts (push, restore and prune workers): the
/// operator's image, never restarted, no ServiceAccount token, run as `identity` with the
/// runtime's seccomp profile, every capability dropped but what `identity` needs, no privilege
/// escalation, a read-only root with a writable `/tmp`, and the report read from the
/// termination message (or the log's tail when there is none). `container` brings its name,
/// arguments, environment, resources and mounts; `volumes` the pod's volumes besides `/tmp`.
pub fn hardened_pod(
    metadata: ObjectMeta,
    mut container: Container,
    volumes: Vec<Volume>,
    node: Option<String>,
    identity: &WorkerIdentity,
    cfg: &WorkerConfig,
) -> Pod {
    let (pod_security, container_security) = worker_security(identity);
    let tmp = "tmp".to_string();
    let mut mounts = vec![VolumeMount { name: tmp.clone(), mount_path: "/tmp".into(), ..Default::default() }];
    mounts.extend(container.volume_mounts.take().unwrap_or_default());
    let mut all_volumes = vec![Volume { name: tmp, empty_dir: Some(Default::default()), ..Default::default() }];
    all_volumes.extend(volumes);
    Pod {
        metadata,
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            node_name: node,
            service_account_name: cfg.service_account.clone(),
            image_pull_secrets: cfg.pull_secrets(),
            automount_service_account_token: Some(false),
            security_context: Some(pod_security),
            containers: vec![Container {
                image: Some(cfg.image.clone()),
                image_pull_policy: cfg.image_pull_policy.clone(),
                volume_mounts: Some(mounts),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                security_context: Some(container_security),
                ..container
            }],
            volumes: Some(all_volumes),
            ..Default::default()
        }),
        status: None,
    }
}

/// A CSI VolumeSnapshot of `volume` (snapshot.storage.k8s.io/v1).
pub fn volume_snapshot(job: &PushJob, name: &str, volume: &str, class: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": meta(job, name),
        "spec": {
            "volumeSnapshotClassName": class,
            "source": { "persistentVolumeClaimName": volume }
        }
    })
}

/// A PVC cloned from snapshot `snapshot` with the source PVC's class, size and modes.
pub fn clone_pvc(job: &PushJob, name: &str, source: &PersistentVolumeClaim, snapshot: &str) -> PersistentVolumeClaim {
    let s = source.spec.clone().unwrap_or_default();
    PersistentVolumeClaim {
        metadata: meta(job, name),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: s.access_modes.clone(),
            storage_class_name: s.storage_class_name.clone(),
            volume_mode: s.volume_mode.clone(),
            resources: s.resources.clone(),
            data_source: Some(TypedLocalObjectReference {
                api_group: Some("snapshot.storage.k8s.io".into()),
                kind: "VolumeSnapshot".into(),
                name: snapshot.to_string(),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// What discovery needs of a pod.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    pub name: String,
    pub claims: Vec<String>,
    /// (kind, name) of the controlling owner.
    pub owner: Option<(String, String)>,
    pub node: Option<String>,
    pub running: bool,
    /// One of ours (a worker): never a workload.
    pub ours: bool,
}

impl PodInfo {
    pub fn from_pod(p: &Pod) -> PodInfo {
        let spec = p.spec.clone().unwrap_or_default();
        let owner = p
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.iter().find(|r| r.controller == Some(true)))
            .map(|r| (r.kind.clone(), r.name.clone()));
        PodInfo {
            name: p.metadata.name.clone().unwrap_or_default(),
            claims: spec
                .volumes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
                .collect(),
            owner,
            node: spec.node_name,
            running: p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"),
            ours: p.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL)).map(String::as_str)
                == Some(MANAGED_BY),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discovery {
    pub workloads: Vec<WorkloadRef>,
    /// Pods with no Deployment/StatefulSet behind them.
    pub bare_pods: Vec<String>,
    /// Pods (not ours) that mount the volumes.
    pub mounting: Vec<String>,
    /// Node of a running pod that mounts a volume.
    pub node: Option<String>,
}

/// Finds the workloads behind the pods that mount `volumes`: Pod -> ReplicaSet -> Deployment,
/// Pod -> StatefulSet. `replicasets` maps a ReplicaSet name to its controlling Deployment.
pub fn discover(volumes: &[String], pods: &[PodInfo], replicasets: &BTreeMap<String, Option<String>>) -> Discovery {
    let mut workloads = BTreeSet::new();
    let mut d = Discovery::default();
    for p in pods.iter().filter(|p| !p.ours && p.claims.iter().any(|c| volumes.contains(c))) {
        d.mounting.push(p.name.clone());
        if p.running && d.node.is_none() {
            d.node = p.node.clone();
        }
        match p.owner.as_ref().map(|(k, n)| (k.as_str(), n.as_str())) {
            Some(("StatefulSet", n)) => {
                workloads.insert(WorkloadRef { kind: WorkloadKind::StatefulSet, name: n.into() });
            }
            Some(("ReplicaSet", rs)) => match replicasets.get(rs) {
                Some(Some(dep)) => {
                    workloads.insert(WorkloadRef { kind: WorkloadKind::Deployment, name: dep.clone() });
                }
                _ => d.bare_pods.push(format!("{} (ReplicaSet {rs} without a Deployment)", p.name)),
            },
            Some((k, n)) => d.bare_pods.push(format!("{} ({k} {n})", p.name)),
            None => d.bare_pods.push(p.name.clone()),
        }
    }
    d.workloads = workloads.into_iter().collect();
    d.mounting.sort();
    d.bare_pods.sort();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, claims: &[&str], owner: Option<(&str, &str)>) -> PodInfo {
        PodInfo {
            name: name.into(),
            claims: claims.iter().map(|c| c.to_string()).collect(),
            owner: owner.map(|(k, n)| (k.into(), n.into())),
            node: Some(format!("node-{name}")),
            running: true,
            ours: false,
        }
    }

    #[test]
    fn discovery_follows_owners() {
        let pods = vec![
            pod("web-abc-1", &["data"], Some(("ReplicaSet", "web-abc"))),
            pod("web-abc-2", &["data"], Some(("ReplicaSet", "web-abc"))),
            pod("db-0", &["db-data"], Some(("StatefulSet", "db"))),
            pod("unrelated", &["other"], None),
            pod("lonely", &["data"], None),
            pod("batch-x", &["data"], Some(("Job", "batch"))),
            PodInfo { ours: true, ..pod("j1-push", &["data"], None) },
        ];
        let rs = BTreeMap::from([("web-abc".to_string(), Some("web".to_string()))]);
        let d = discover(&["data".into(), "db-data".into()], &pods, &rs);
        assert_eq!(
            d.workloads,
            vec![
                WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() },
                WorkloadRef { kind: WorkloadKind::StatefulSet, name: "db".into() },
            ]
        );
        assert_eq!(d.bare_pods, vec!["batch-x (Job batch)", "lonely"]);
        assert_eq!(d.mounting, vec!["batch-x", "db-0", "lonely", "web-abc-1", "web-abc-2"]);
        assert_eq!(d.node.as_deref(), Some("node-web-abc-1"));
    }

    fn fixtures() -> (PushJob, Repository) {
        let mut job = PushJob::new(
            "j1",
            PushJobSpec {
                repository_ref: LocalRef { name: "shop".into() },
                mode: Mode::Offline,
                priority: Priority::P2,
                deadline_seconds: None,
                reason: Some("pre-upgrade".into()),
                ttl_seconds_after_finished: None,
                retention: None,
            },
        );
        job.metadata.namespace = Some("prod".into());
        job.metadata.uid = Some("uid-1".into());
        job.metadata.creation_timestamp = Some(time(chrono::Utc::now()));
        job.status = Some(PushJobStatus { consistency: Some(Consistency::Consistent), ..Default::default() });
        let mut repo = Repository::new(
            "shop",
            RepositorySpec {
                volumes: vec!["data".into()],
                volume_selector: None,
                workloads: None,
                storage: StorageSpec {
                    endpoint: Some("http://minio:9000".into()),
                    bucket: "backups".into(),
                    prefix: Some("prod/".into()),
                    region: None,
                    path_style: Some(true),
                    credentials_secret_ref: Some(LocalRef { name: "s3-creds".into() }),
                    encryption: Some(EncryptionSpec {
                        mode: EncryptionMode::Encrypted,
                        secret_ref: Some(LocalRef { name: "shop-key".into() }),
                    }),
                    object_lock: Some(ObjectLockSpec { mode: ObjectLockMode::Governance, retention_days: 30 }),
                },
                online: OnlineSpec::default(),
                hooks: None,
                exclude: vec!["*.sock".into()],
                worker_resources: None,
            },
        );
        repo.metadata.namespace = Some("prod".into());
        (job, repo)
    }

    #[test]
    fn worker_pod_is_least_privilege_and_reads_only() {
        let (job, repo) = fixtures();
        let claims = vec![("data".to_string(), "data".to_string()), ("disk".to_string(), "disk".to_string())];
        let block = BTreeSet::from(["disk".to_string()]);
        let pod =
            worker_pod(&job, &repo, "j1-push", &claims, &block, None, &WorkerIdentity::Root, &WorkerConfig::default());
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let c = &spec.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(caps.add.as_deref(), Some(&["DAC_OVERRIDE".to_string()][..]), "in baseline's list");
        assert_eq!(spec.security_context.as_ref().unwrap().run_as_user, Some(0));
        // Every PVC is mounted read-only; the block one as a device.
        for v in spec.volumes.as_ref().unwrap().iter().filter_map(|v| v.persistent_volume_claim.as_ref()) {
            assert_eq!(v.read_only, Some(true));
        }
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path == "/volumes/data" && m.read_only == Some(true)));
        assert_eq!(c.volume_devices.as_ref().unwrap()[0].device_path, "/volumes/disk");
        // Credentials only through secretKeyRef; none in the arguments.
        let args = c.args.as_ref().unwrap().join(" ");
        assert!(args.contains("--store s3://backups/prod") && args.contains("--consistency consistent"), "{args}");
        assert!(args.contains("--volume data=/volumes/data") && args.contains("--exclude *.sock"));
        let env = c.env.as_ref().unwrap();
        let key = env.iter().find(|e| e.name == "AWS_SECRET_ACCESS_KEY").unwrap();
        assert!(key.value.is_none());
        assert_eq!(key.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name, "s3-creds");
        assert!(env.iter().any(|e| e.name == "AWS_ENDPOINT_URL" && e.value.as_deref() == Some("http://minio:9000")));
        // The store's key too: from the Secret, each variable optional (a passphrase or a raw
        // key, the previous one only while rotating), never a value in the spec.
        for name in ENCRYPTION_SECRET_KEYS {
            let e = env.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name} reaches the worker"));
            let r = e.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
            assert_eq!((r.name.as_str(), r.key.as_str(), r.optional), ("shop-key", name, Some(true)));
            assert!(e.value.is_none());
        }
        assert!(!args.contains("--encryption"), "a new store is encrypted by default: {args}");
        assert!(args.contains("--object-lock-period 30d --object-lock-mode governance"), "{args}");
        // Labelled and owned, so cleanup and garbage collection find it.
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels.get(MANAGED_BY_LABEL).map(String::as_str), Some(MANAGED_BY));
        assert_eq!(labels.get(JOB_LABEL).map(String::as_str), Some("j1"));
        assert_eq!(pod.metadata.owner_references.unwrap()[0].name, "j1");
    }

    /// What the `restricted` Pod Security level demands of a pod, checked on a worker that runs
    /// as the application (the real admission is exercised by the e2e scenario pod-security).
    #[test]
    fn a_worker_running_as_the_application_meets_restricted() {
        let (job, repo) = fixtures();
        let me = WorkerIdentity::App { uid: 1000, gid: Some(2000), groups: vec![3000] };
        let claims = [("data".to_string(), "data".to_string())];
        let pod = worker_pod(&job, &repo, "w", &claims, &BTreeSet::new(), None, &me, &WorkerConfig::default());
        let spec = pod.spec.unwrap();
        let psc = spec.security_context.unwrap();
        assert_eq!((psc.run_as_user, psc.run_as_group, psc.run_as_non_root), (Some(1000), Some(2000), Some(true)));
        assert_eq!(psc.supplemental_groups, Some(vec![3000]), "the application's fsGroup, as a group only");
        assert_eq!(psc.fs_group, None, "no fsGroup: nothing is chowned");
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = spec.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.unwrap();
        assert_eq!((caps.drop, caps.add), (Some(vec!["ALL".to_string()]), None));
    }

    #[test]
    fn a_plaintext_repository_says_so_to_the_worker_and_passes_no_key() {
        let (job, mut repo) = fixtures();
        repo.spec.storage.encryption = Some(EncryptionSpec { mode: EncryptionMode::None, secret_ref: None });
        let pod = worker_pod(
            &job,
            &repo,
            "w",
            &[("data".into(), "data".into())],
            &BTreeSet::new(),
            None,
            &WorkerIdentity::Root,
            &WorkerConfig::default(),
        );
        let c = &pod.spec.unwrap().containers[0];
        assert!(c.args.as_ref().unwrap().join(" ").contains("--encryption none"));
        assert!(
            !c.env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name.starts_with("PUSH_OPERATOR_") && e.name != "PUSH_OPERATOR_LOG")
        );
    }

    #[test]
    fn live_reads_pin_the_worker_to_the_node() {
        let (job, repo) = fixtures();
        let cfg = WorkerConfig { image_pull_secrets: vec!["regcred".into()], ..WorkerConfig::default() };
        let claims = [("data".to_string(), "data".to_string())];
        let pod =
            worker_pod(&job, &repo, "w", &claims, &BTreeSet::new(), Some("n1".into()), &WorkerIdentity::Root, &cfg);
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "regcred", "pull secrets reach the workers");
    }

    #[test]
    fn snapshot_and_clone() {
        let (job, _) = fixtures();
        let s = volume_snapshot(&job, "j1-data-snap", "data", "csi-snap");
        assert_eq!(s["spec"]["source"]["persistentVolumeClaimName"], "data");
        assert_eq!(s["spec"]["volumeSnapshotClassName"], "csi-snap");
        assert_eq!(s["metadata"]["labels"][JOB_LABEL], "j1");
        let src = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some("fast".into()),
                resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity("10Gi".into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = clone_pvc(&job, "j1-data-clone", &src, "j1-data-snap");
        let spec = c.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(spec.data_source.unwrap().name, "j1-data-snap");
        assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"], Quantity("10Gi".into()));
    }
}
