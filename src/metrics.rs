//! Prometheus metrics (prefix `push_operator_`).

use prometheus::{Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub jobs: IntCounterVec,
    pub job_duration: HistogramVec,
    pub bytes_read: IntCounterVec,
    pub bytes_new: IntCounterVec,
    pub bytes_uploaded: IntCounterVec,
    pub dedup_ratio: GaugeVec,
    pub last_success: GaugeVec,
    pub queue_depth: IntGaugeVec,
    pub jobs_running: Gauge,
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub workloads_restored: IntCounterVec,
    pub policy_runs: IntCounterVec,
    pub missed_schedules: IntCounterVec,
    pub snapshots_forgotten: IntCounterVec,
    pub bytes_reclaimed: IntCounterVec,
    pub store_bytes: IntGaugeVec,
    pub restores: IntCounterVec,
    pub restore_duration: HistogramVec,
    pub restore_bytes: IntCounterVec,
    pub restore_test_last_success: GaugeVec,
    pub restore_test_last_result: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let o = |n: &str, h: &str| Opts::new(format!("push_operator_{n}"), h.to_string());
        let jobs =
            IntCounterVec::new(o("jobs_total", "Finished PushJobs by mode and result"), &["mode", "result"]).unwrap();
        let job_duration = HistogramVec::new(
            HistogramOpts::new("push_operator_job_duration_seconds", "PushJob duration from admission to completion")
                .buckets(vec![1.0, 5.0, 15.0, 33.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0]),
            &["mode"],
        )
        .unwrap();
        let repo_labels = &["namespace", "repository", "mode"];
        let bytes_read = IntCounterVec::new(o("bytes_read_total", "Bytes the workers read"), repo_labels).unwrap();
        let bytes_new =
            IntCounterVec::new(o("bytes_new_total", "Bytes of chunks new to the store"), repo_labels).unwrap();
        let bytes_uploaded =
            IntCounterVec::new(o("bytes_uploaded_total", "Bytes written to the store"), repo_labels).unwrap();
        let dedup_ratio = GaugeVec::new(
            o("dedup_ratio", "Logical bytes over new bytes of the last push"),
            &["namespace", "repository"],
        )
        .unwrap();
        let last_success = GaugeVec::new(
            o("last_success_timestamp_seconds", "Completion time of the last successful push (the recovery point)"),
            repo_labels,
        )
        .unwrap();
        let queue_depth = IntGaugeVec::new(o("queue_depth", "PushJobs waiting, by priority"), &["priority"]).unwrap();
        let jobs_running = Gauge::with_opts(o("jobs_running", "PushJobs admitted and not finished")).unwrap();
        let reconciles = IntCounterVec::new(o("reconcile_total", "Reconcile runs"), &["controller"]).unwrap();
        let reconcile_errors =
            IntCounterVec::new(o("reconcile_errors_total", "Reconcile errors"), &["controller", "error"]).unwrap();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("push_operator_reconcile_duration_seconds", "Reconcile duration")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            &["controller"],
        )
        .unwrap();
        let workloads_restored = IntCounterVec::new(
            o(
                "workloads_restored_total",
                "Workloads scaled back by the crash-safety sweep (annotation without a live job)",
            ),
            &["namespace"],
        )
        .unwrap();
        let policy_runs = IntCounterVec::new(
            o("policy_runs_total", "Scheduled runs by policy, schedule and result (created, succeeded, failed)"),
            &["namespace", "policy", "schedule", "result"],
        )
        .unwrap();
        let missed_schedules = IntCounterVec::new(
            o(
                "missed_schedules_total",
                "Scheduled runs that did not run (operator down, or past the starting deadline)",
            ),
            &["namespace", "policy", "schedule"],
        )
        .unwrap();
        let store_labels = &["namespace", "repository"];
        let snapshots_forgotten = IntCounterVec::new(
            o("snapshots_forgotten_total", "Snapshots removed by retention after scheduled pushes"),
            store_labels,
        )
        .unwrap();
        let bytes_reclaimed =
            IntCounterVec::new(o("bytes_reclaimed_total", "Bytes deleted from stores by prunes"), store_labels)
                .unwrap();
        let store_bytes = IntGaugeVec::new(
            o("store_bytes", "Bytes of packs in the store after the last push or prune"),
            store_labels,
        )
        .unwrap();
        let restores = IntCounterVec::new(
            o("restores_total", "Finished RestoreJobs by target kind, result, reason, and whether a restore test"),
            &["target", "result", "reason", "test"],
        )
        .unwrap();
        let restore_duration = HistogramVec::new(
            HistogramOpts::new(
                "push_operator_restore_duration_seconds",
                "Successful restores from admission to completion (the recovery time)",
            )
            .buckets(vec![1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0]),
            &["namespace", "repository", "mode", "target", "test"],
        )
        .unwrap();
        let restore_bytes = IntCounterVec::new(
            o("restore_bytes_total", "Bytes of files written by successful restores"),
            &["namespace", "repository", "target"],
        )
        .unwrap();
        let restore_test_last_success = GaugeVec::new(
            o("restore_test_last_success_timestamp_seconds", "Completion time of the last successful restore test"),
            &["namespace", "repository"],
        )
        .unwrap();
        registry.register(Box::new(restore_test_last_success.clone())).unwrap();
        let restore_test_last_result = IntGaugeVec::new(
            o("restore_test_last_result", "1 when the last restore test succeeded, 0 when it failed"),
            &["namespace", "repository"],
        )
        .unwrap();
        registry.register(Box::new(restore_test_last_result.clone())).unwrap();
        for c in [
            &restores,
            &restore_bytes,
            &jobs,
            &reconciles,
            &reconcile_errors,
            &workloads_restored,
            &bytes_read,
            &bytes_new,
            &bytes_uploaded,
            &policy_runs,
            &missed_schedules,
            &snapshots_forgotten,
            &bytes_reclaimed,
        ] {
            registry.register(Box::new((*c).clone())).unwrap();
        }
        for h in [&job_duration, &reconcile_duration, &restore_duration] {
            registry.register(Box::new((*h).clone())).unwrap();
        }
        registry.register(Box::new(dedup_ratio.clone())).unwrap();
        registry.register(Box::new(last_success.clone())).unwrap();
        registry.register(Box::new(queue_depth.clone())).unwrap();
        registry.register(Box::new(jobs_running.clone())).unwrap();
        registry.register(Box::new(store_bytes.clone())).unwrap();
        // Every priority appears, at zero, from the start.
        for p in crate::api::Priority::ALL {
            queue_depth.with_label_values(&[p.as_str()]).set(0);
        }
        // Every job outcome too: a counter that first appears at 1 is no increase to Prometheus,
        // so the first failure after a start would never fire PushOperatorPushFailed.
        for mode in ["online", "offline"] {
            for result in ["succeeded", "failed"] {
                jobs.with_label_values(&[mode, result]).inc_by(0);
            }
        }
        for target in ["new-volumes", "in-place"] {
            for test in ["false", "true"] {
                restores.with_label_values(&[target, "succeeded", "Succeeded", test]).inc_by(0);
            }
        }
        Metrics {
            registry,
            jobs,
            job_duration,
            bytes_read,
            bytes_new,
            bytes_uploaded,
            dedup_ratio,
            last_success,
            queue_depth,
            jobs_running,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            workloads_restored,
            policy_runs,
            missed_schedules,
            snapshots_forgotten,
            bytes_reclaimed,
            store_bytes,
            restores,
            restore_duration,
            restore_bytes,
            restore_test_last_success,
            restore_test_last_result,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut buf).expect("metrics encode");
        buf
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_with_prefix() {
        let m = super::Metrics::new();
        m.jobs.with_label_values(&["offline", "succeeded"]).inc();
        let text = m.render();
        assert!(text.contains("push_operator_jobs_total{mode=\"offline\",result=\"succeeded\"} 1"), "{text}");
        assert!(text.contains("push_operator_queue_depth{priority=\"P1\"} 0"));
        assert!(
            text.contains("push_operator_jobs_total{mode=\"online\",result=\"failed\"} 0"),
            "from the start: {text}"
        );
    }
}
