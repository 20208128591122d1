//! Test hooks: places where a test steers a worker from outside. They exist only with the
//! `test-hooks` feature (every test build turns it on through a dev-dependency; a release build
//! never has it), so no environment variable or annotation can stop, pause or kill a production
//! worker. Without the feature every function here does nothing.
//!
//! - `PUSH_OPERATOR_CRASH_AT=pack:N|index:N|snapshot|prune:N|restore:N|undo:N`: SIGKILL there;
//! - `PUSH_OPERATOR_PAUSE_BEFORE_SNAPSHOT=PATH`: a push writes `PATH.waiting` once everything but
//!   the snapshot is stored, then waits (at most ten minutes) until `PATH` exists;
//! - `PUSH_OPERATOR_TEST_START_DELAY=SECONDS`: a worker waits that long before it starts;
//! - the annotation `rediacc.io/test-worker-env` on a PushJob or RestoreJob (`NAME=VALUE` lines):
//!   the operator adds those variables to the job's worker pods, so tests on a real node can
//!   reach the hooks above.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;

/// The annotation whose `NAME=VALUE` lines become environment of a job's worker pods.
pub const WORKER_ENV_ANNOTATION: &str = "rediacc.io/test-worker-env";

/// SIGKILLs this process when `PUSH_OPERATOR_CRASH_AT` names `point:n`.
pub fn crashpoint(point: &str, n: u64) {
    #[cfg(feature = "test-hooks")]
    {
        static SPEC: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
        let spec = SPEC.get_or_init(|| {
            let v = std::env::var("PUSH_OPERATOR_CRASH_AT").ok()?;
            let (p, k) = v.split_once(':').unwrap_or((v.as_str(), "0"));
            Some((p.to_string(), k.parse().unwrap_or(0)))
        });
        if let Some((p, k)) = spec
            && p == point
            && *k == n
        {
            eprintln!("PUSH_OPERATOR_CRASH_AT={point}:{n}: killing this process");
            // SAFETY: kill(2) on our own pid and _exit(2) have no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
                // PID 1 of a container (a worker pod) cannot be killed from inside its PID
                // namespace: it ends the same way, at once and without cleanup.
                libc::_exit(137);
            }
        }
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = (point, n);
}

/// Waits for the gate file of `PUSH_OPERATOR_PAUSE_BEFORE_SNAPSHOT`, when it is set.
pub fn pausepoint() {
    #[cfg(feature = "test-hooks")]
    {
        use std::time::{Duration, Instant};
        let Some(path) = std::env::var_os("PUSH_OPERATOR_PAUSE_BEFORE_SNAPSHOT") else { return };
        let gate = std::path::PathBuf::from(path);
        let mut waiting = gate.clone().into_os_string();
        waiting.push(".waiting");
        let _ = std::fs::write(&waiting, b"");
        eprintln!("PUSH_OPERATOR_PAUSE_BEFORE_SNAPSHOT: waiting for {}", gate.display());
        let until = Instant::now() + Duration::from_secs(600);
        while !gate.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Sleeps `PUSH_OPERATOR_TEST_START_DELAY` seconds, when it is set (a slow worker start).
pub fn start_delay() {
    #[cfg(feature = "test-hooks")]
    if let Some(secs) = std::env::var("PUSH_OPERATOR_TEST_START_DELAY").ok().and_then(|v| v.parse::<u64>().ok()) {
        eprintln!("PUSH_OPERATOR_TEST_START_DELAY: waiting {secs} s");
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}

/// The environment a job's annotation asks for its worker pods (none without the feature).
pub fn worker_env(annotations: Option<&BTreeMap<String, String>>) -> Vec<EnvVar> {
    #[cfg(feature = "test-hooks")]
    if let Some(lines) = annotations.and_then(|a| a.get(WORKER_ENV_ANNOTATION)) {
        return lines
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .map(|(k, v)| EnvVar { name: k.trim().into(), value: Some(v.into()), ..Default::default() })
            .collect();
    }
    let _ = annotations;
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_becomes_worker_environment_in_test_builds() {
        let a = BTreeMap::from([(WORKER_ENV_ANNOTATION.to_string(), "A=1\n B = x=y \nnot a pair\n".to_string())]);
        let env = worker_env(Some(&a));
        let pairs: Vec<_> = env.iter().map(|e| (e.name.as_str(), e.value.as_deref().unwrap())).collect();
        assert_eq!(pairs, [("A", "1"), ("B", " x=y")]);
        assert!(worker_env(None).is_empty());
        assert!(worker_env(Some(&BTreeMap::new())).is_empty());
    }
}
