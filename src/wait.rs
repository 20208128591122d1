//! `push-operator wait pushjob/NAME` (or `restorejob/NAME`): waits until the job finishes and
//! exits at once when it fails, with its reason and message, so a pre-upgrade hook does not
//! hold an upgrade until its timeout (`kubectl wait --for=condition=Complete` watches one
//! condition and only times out on a failed job).

use crate::api::conditions::{COMPLETE, FAILED, READY};
use crate::api::{PushJob, RestoreJob};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use std::time::{Duration, Instant};

/// Which kind of job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    PushJob,
    RestoreJob,
}

/// `pushjob/NAME`, `pushjobs/NAME`, `pj/NAME`, `restorejob/NAME`, `rj/NAME` -> (kind, name).
pub fn parse_target(s: &str) -> Result<(JobKind, String), String> {
    let (kind, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: give KIND/NAME, e.g. pushjob/before-upgrade or restorejob/rollback"))?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "pushjob" | "pushjobs" | "pj" => JobKind::PushJob,
        "restorejob" | "restorejobs" | "rj" => JobKind::RestoreJob,
        other => return Err(format!("{other:?} is not a job kind: use pushjob/NAME or restorejob/NAME")),
    };
    if name.is_empty() {
        return Err(format!("{s:?}: the name is missing"));
    }
    Ok((kind, name.to_string()))
}

/// How a job stands, from its conditions.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Succeeded(String),
    Failed {
        reason: String,
        message: String,
    },
    /// Not finished: the reason of its Ready condition (the phase).
    Running(String),
}

pub fn verdict(conditions: &[Condition]) -> Verdict {
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t && c.status == "True");
    if let Some(c) = find(FAILED) {
        return Verdict::Failed { reason: c.reason.clone(), message: c.message.clone() };
    }
    if let Some(c) = find(COMPLETE) {
        return Verdict::Succeeded(c.message.clone());
    }
    let phase = conditions.iter().find(|c| c.type_ == READY).map(|c| c.reason.clone()).unwrap_or_default();
    Verdict::Running(if phase.is_empty() { "Pending".into() } else { phase })
}

/// Why `wait` stopped without a success.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("{kind} {name} failed: {reason}: {message}")]
    Failed { kind: &'static str, name: String, reason: String, message: String },
    #[error(
        "{kind} {name} did not finish within {secs}s (still {phase}); raise --timeout, or see `kubectl describe {kind} {name}`"
    )]
    Timeout { kind: &'static str, name: String, secs: u64, phase: String },
    #[error("{kind} {name} does not exist in namespace {namespace} (or was deleted while waiting)")]
    NotFound { kind: &'static str, name: String, namespace: String },
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Polls the job every `interval` until it succeeds (`Ok` with its message), fails or the
/// timeout passes.
pub async fn wait(
    client: kube::Client,
    namespace: &str,
    kind: JobKind,
    name: &str,
    timeout: Duration,
    interval: Duration,
) -> Result<String, WaitError> {
    let started = Instant::now();
    let label = match kind {
        JobKind::PushJob => "pushjob",
        JobKind::RestoreJob => "restorejob",
    };
    loop {
        let conditions = match kind {
            JobKind::PushJob => Api::<PushJob>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .map(|j| j.status.unwrap_or_default().conditions),
            JobKind::RestoreJob => Api::<RestoreJob>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .map(|j| j.status.unwrap_or_default().conditions),
        };
        let Some(conditions) = conditions else {
            return Err(WaitError::NotFound { kind: label, name: name.into(), namespace: namespace.into() });
        };
        match verdict(&conditions) {
            Verdict::Succeeded(m) => return Ok(m),
            Verdict::Failed { reason, message } => {
                return Err(WaitError::Failed { kind: label, name: name.into(), reason, message });
            }
            Verdict::Running(phase) if started.elapsed() >= timeout => {
                return Err(WaitError::Timeout { kind: label, name: name.into(), secs: timeout.as_secs(), phase });
            }
            Verdict::Running(_) => tokio::time::sleep(interval).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(t: &str, status: bool, reason: &str, message: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: crate::api::time(chrono::Utc::now()),
            observed_generation: None,
        }
    }

    #[test]
    fn targets_parse_and_bad_ones_say_what_to_give() {
        assert_eq!(parse_target("pushjob/a").unwrap(), (JobKind::PushJob, "a".into()));
        assert_eq!(parse_target("rj/b").unwrap(), (JobKind::RestoreJob, "b".into()));
        assert!(parse_target("a").unwrap_err().contains("KIND/NAME"));
        assert!(parse_target("deployment/a").unwrap_err().contains("not a job kind"));
        assert!(parse_target("pushjob/").unwrap_err().contains("missing"));
    }

    #[test]
    fn a_failed_job_is_a_failure_at_once_and_a_running_one_names_its_phase() {
        assert_eq!(verdict(&[]), Verdict::Running("Pending".into()));
        let running = [cond(READY, false, "Pushing", "copying"), cond("Reconciling", true, "Pushing", "")];
        assert_eq!(verdict(&running), Verdict::Running("Pushing".into()));
        let failed = [cond(FAILED, true, "WorkerFailed", "bucket missing"), cond(READY, false, "WorkerFailed", "")];
        assert_eq!(
            verdict(&failed),
            Verdict::Failed { reason: "WorkerFailed".into(), message: "bucket missing".into() }
        );
        let done = [cond(COMPLETE, true, "Succeeded", "push complete")];
        assert_eq!(verdict(&done), Verdict::Succeeded("push complete".into()));
    }
}
