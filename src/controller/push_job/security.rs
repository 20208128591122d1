//! Which user a worker pod reads the volumes as, so that Pod Security admission admits it.
//!
//! The worker mounts the volumes read-only and needs to read every file on them. Per the
//! namespace's enforced Pod Security level (label `pod-security.kubernetes.io/enforce`):
//! - `privileged` (or no label) and `baseline`: uid 0 with every capability dropped but
//!   `DAC_OVERRIDE`, which is in `baseline`'s allowed list. On read-only mounts under a read-only
//!   root filesystem it reads what it must and can write nothing but its own `/tmp`;
//! - `restricted`: no capability and no root, so the worker runs as the application itself: the
//!   uid, gid and groups (its fsGroup as a supplemental group) of the pods that use the volumes.
//!   The worker then reads exactly what the application can read. An application with no
//!   non-root `runAsUser` leaves nobody to be: the job fails at once, naming the label to change.
//!
//! Admission can still refuse (a cluster-wide default level, a policy engine): the operator
//! turns that answer into the same failure reason, see [`rejected_by_admission`].

use k8s_openapi::api::core::v1::PodSpec;
use std::collections::BTreeMap;

pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// The Pod Security Standards level a namespace enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    /// From the namespace's labels: no label is `privileged` (the API server's default when no
    /// admission configuration says otherwise); a value that is not a level is taken as
    /// `restricted`, the strictest reading.
    pub fn of_namespace(labels: &BTreeMap<String, String>) -> Level {
        match labels.get(ENFORCE_LABEL).map(String::as_str) {
            None | Some("privileged") => Level::Privileged,
            Some("baseline") => Level::Baseline,
            Some(_) => Level::Restricted,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// The user and groups an application's pod runs as (its container's own settings win over
/// the pod's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppIdentity {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub fs_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
}

impl AppIdentity {
    /// The identity of the first container of `spec` that mounts one of `claims` (a PVC name),
    /// `None` when no container does.
    pub fn of_pod_spec(spec: &PodSpec, claims: &[String]) -> Option<AppIdentity> {
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| claims.contains(&c.claim_name)))
            .map(|v| v.name.as_str())
            .collect();
        if volumes.is_empty() {
            return None;
        }
        let mounts = |c: &k8s_openapi::api::core::v1::Container| {
            c.volume_mounts.iter().flatten().any(|m| volumes.contains(&m.name.as_str()))
                || c.volume_devices.iter().flatten().any(|d| volumes.contains(&d.name.as_str()))
        };
        let container = spec.containers.iter().find(|c| mounts(c));
        let pod = spec.security_context.clone().unwrap_or_default();
        let own = container.and_then(|c| c.security_context.clone()).unwrap_or_default();
        Some(AppIdentity {
            run_as_user: own.run_as_user.or(pod.run_as_user),
            run_as_group: own.run_as_group.or(pod.run_as_group),
            fs_group: pod.fs_group,
            supplemental_groups: pod.supplemental_groups.unwrap_or_default(),
        })
    }
}

/// Who the worker runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerIdentity {
    /// uid 0, capabilities: only `DAC_OVERRIDE` (admitted up to `baseline`).
    Root,
    /// The application's non-root user and its groups, no capability (admitted by `restricted`).
    App { uid: i64, gid: Option<i64>, groups: Vec<i64> },
}

/// Decides who the worker runs as in namespace `ns`; `Err` is the failure message (reason
/// `WorkerNotAdmitted`), which names what to change.
pub fn decide(level: Level, ns: &str, app: Option<&AppIdentity>) -> Result<WorkerIdentity, String> {
    if level != Level::Restricted {
        return Ok(WorkerIdentity::Root);
    }
    match app.and_then(|a| a.run_as_user.filter(|&u| u != 0).map(|u| (u, a))) {
        Some((uid, a)) => {
            let mut groups = a.supplemental_groups.clone();
            groups.extend(a.fs_group);
            groups.sort_unstable();
            groups.dedup();
            Ok(WorkerIdentity::App { uid, gid: a.run_as_group, groups })
        }
        None => Err(format!(
            "namespace {ns} enforces Pod Security \"restricted\" ({ENFORCE_LABEL}), which admits no root \
             worker, and no pod or workload using the volumes sets a non-root runAsUser for the worker to \
             read as: set runAsUser (and fsGroup) in the application's pod template, or label the namespace \
             {ENFORCE_LABEL}=baseline (the worker then runs as root with only DAC_OVERRIDE, on read-only mounts)"
        )),
    }
}

/// The failure message for a worker pod that admission refused (`message` is the API server's),
/// or `None` when the refusal is not admission's (RBAC, quota, ...).
pub fn rejected_by_admission(ns: &str, level: Level, code: u16, message: &str) -> Option<String> {
    let pod_security = message.contains("violates PodSecurity");
    let policy = message.contains("admission webhook") || message.contains("ValidatingAdmissionPolicy");
    // Pod Security and webhooks answer 403; a ValidatingAdmissionPolicy 422 unless it sets a reason.
    if !matches!(code, 403 | 422) || !(pod_security || policy) {
        return None;
    }
    let fix = if pod_security {
        match level {
            Level::Restricted => format!(
                "the worker runs as the application's user: check that it is non-root and can read the volumes, or \
                 label the namespace {ENFORCE_LABEL}=baseline"
            ),
            _ => format!(
                "the namespace's label says \"{}\" but admission enforces a stricter level (a cluster-wide \
                 default?): label namespace {ns} {ENFORCE_LABEL}=baseline, or {ENFORCE_LABEL}=restricted \
                 with a non-root runAsUser in the application's pod template",
                level.as_str()
            ),
        }
    } else {
        "an admission policy refused it: allow push-operator's worker pods (label \
         app.kubernetes.io/managed-by=push-operator) in that policy"
            .to_string()
    };
    Some(format!("the worker pod was not admitted in namespace {ns}: {message}; {fix}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, PersistentVolumeClaimVolumeSource, PodSecurityContext, SecurityContext, Volume, VolumeMount,
    };

    fn labels(v: Option<&str>) -> BTreeMap<String, String> {
        v.map(|v| [(ENFORCE_LABEL.to_string(), v.to_string())].into()).unwrap_or_default()
    }

    #[test]
    fn levels_from_labels() {
        assert_eq!(Level::of_namespace(&labels(None)), Level::Privileged);
        assert_eq!(Level::of_namespace(&labels(Some("privileged"))), Level::Privileged);
        assert_eq!(Level::of_namespace(&labels(Some("baseline"))), Level::Baseline);
        assert_eq!(Level::of_namespace(&labels(Some("restricted"))), Level::Restricted);
        assert_eq!(Level::of_namespace(&labels(Some("Restricted!"))), Level::Restricted, "unknown: strictest");
    }

    fn app_spec(pod_uid: Option<i64>, container_uid: Option<i64>) -> PodSpec {
        PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_user: pod_uid,
                run_as_group: Some(2000),
                fs_group: Some(3000),
                supplemental_groups: Some(vec![4000, 3000]),
                ..Default::default()
            }),
            containers: vec![
                Container { name: "sidecar".into(), ..Default::default() },
                Container {
                    name: "db".into(),
                    volume_mounts: Some(vec![VolumeMount {
                        name: "data".into(),
                        mount_path: "/data".into(),
                        ..Default::default()
                    }]),
                    security_context: Some(SecurityContext { run_as_user: container_uid, ..Default::default() }),
                    ..Default::default()
                },
            ],
            volumes: Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: "db-data".into(),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn identity_is_the_mounting_containers() {
        let claims = ["db-data".to_string()];
        let id = AppIdentity::of_pod_spec(&app_spec(Some(1000), Some(999)), &claims).unwrap();
        assert_eq!(id.run_as_user, Some(999), "the container's runAsUser wins over the pod's");
        assert_eq!((id.run_as_group, id.fs_group), (Some(2000), Some(3000)));
        let id = AppIdentity::of_pod_spec(&app_spec(Some(1000), None), &claims).unwrap();
        assert_eq!(id.run_as_user, Some(1000));
        assert_eq!(AppIdentity::of_pod_spec(&app_spec(Some(1000), None), &["other".into()]), None);
    }

    #[test]
    fn root_up_to_baseline_the_application_under_restricted() {
        let app = AppIdentity::of_pod_spec(&app_spec(Some(1000), None), &["db-data".into()]).unwrap();
        for level in [Level::Privileged, Level::Baseline] {
            assert_eq!(decide(level, "shop", Some(&app)), Ok(WorkerIdentity::Root));
            assert_eq!(decide(level, "shop", None), Ok(WorkerIdentity::Root));
        }
        assert_eq!(
            decide(Level::Restricted, "shop", Some(&app)),
            Ok(WorkerIdentity::App { uid: 1000, gid: Some(2000), groups: vec![3000, 4000] })
        );
    }

    #[test]
    fn restricted_without_a_non_root_user_names_the_label() {
        let root = AppIdentity { run_as_user: Some(0), ..Default::default() };
        for app in [None, Some(AppIdentity::default()), Some(root)] {
            let err = decide(Level::Restricted, "shop", app.as_ref()).unwrap_err();
            assert!(err.contains("namespace shop enforces Pod Security \"restricted\""), "{err}");
            assert!(err.contains("pod-security.kubernetes.io/enforce=baseline"), "{err}");
            assert!(err.contains("runAsUser"), "{err}");
        }
    }

    #[test]
    fn admission_refusals_are_told_apart() {
        let psa = "pods \"j-push\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true";
        let m = rejected_by_admission("shop", Level::Privileged, 403, psa).unwrap();
        assert!(m.contains("not admitted in namespace shop") && m.contains(psa), "{m}");
        assert!(m.contains("label namespace shop pod-security.kubernetes.io/enforce=baseline"), "{m}");
        let m = rejected_by_admission("shop", Level::Restricted, 403, psa).unwrap();
        assert!(m.contains("application's user"), "{m}");
        let hook = "admission webhook \"validate.kyverno.svc\" denied the request: no root";
        assert!(rejected_by_admission("shop", Level::Baseline, 403, hook).unwrap().contains("admission policy"));
        let vap = "pods \"j-push\" is forbidden: ValidatingAdmissionPolicy 'no-root' with binding 'b' denied request";
        assert!(rejected_by_admission("shop", Level::Baseline, 422, vap).unwrap().contains("admission policy"));
        let rbac = "pods is forbidden: User \"system:serviceaccount:x:y\" cannot create resource \"pods\"";
        assert_eq!(rejected_by_admission("shop", Level::Baseline, 403, rbac), None, "RBAC is not admission");
        assert_eq!(rejected_by_admission("shop", Level::Baseline, 409, psa), None);
    }
}
