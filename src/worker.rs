//! `push-operator worker`: what runs in the worker pod. Pushes each mounted volume to the
//! Repository's store as its own snapshot (source `pvc/<namespace>/<pvc>`, so each volume has
//! its own parents and history), then writes a JSON report to the termination message, which
//! the operator copies into the PushJob status.

use crate::api::{Consistency, JobStats, Mode, Priority, VolumeResult};
use crate::controller::push_job::state::WorkerReport;
use crate::store::Store;
use crate::store::forget::{ForgetOptions, forget};
use crate::store::push::{Counters, PushOptions, push};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The worker's arguments (`push-operator worker`, with the store's in [`crate::cli::WorkerCli`]).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The PushJob's namespace (snapshot sources are `pvc/<namespace>/<pvc>`).
    #[arg(long)]
    pub namespace: String,
    /// The Repository, recorded in each snapshot as namespace/name.
    #[arg(long)]
    pub repository: String,
    /// The PushJob, recorded in each snapshot and in the audit trail.
    #[arg(long)]
    pub job: String,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// What the snapshots can promise (the operator decides it from how the volumes were read).
    #[arg(long, value_enum)]
    pub consistency: Consistency,
    #[arg(long, value_enum, default_value = "P4")]
    pub priority: Priority,
    /// Why the push ran (a tag of each snapshot).
    #[arg(long)]
    pub reason: Option<String>,
    /// Skip paths matching this glob (repeatable).
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// A volume to push: PVC=MOUNTPATH (repeatable).
    #[arg(long = "volume", value_parser = parse_volume, required = true)]
    pub volumes: Vec<(String, PathBuf)>,
    /// After a successful push, forget what this retention (a PushPolicy's, JSON) does not keep.
    #[arg(long, value_parser = parse_retention)]
    pub retention: Option<crate::api::policy::RetentionSpec>,
}

fn parse_volume(s: &str) -> Result<(String, PathBuf), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("volume {s:?} is not PVC=PATH"))?;
    Ok((k.to_string(), PathBuf::from(v)))
}

fn parse_retention(s: &str) -> Result<crate::api::policy::RetentionSpec, String> {
    serde_json::from_str(s).map_err(|e| format!("not a retention spec (JSON): {e}"))
}

/// The termination message is cut at 4096 bytes by the kubelet: keep the report under that.
pub fn encode_report(report: &WorkerReport) -> String {
    let mut r = report.clone();
    loop {
        let s = serde_json::to_string(&r).expect("reports serialize");
        if s.len() <= 4000 || (r.warnings.is_empty() && r.error.as_ref().is_none_or(|e| e.len() < 200)) {
            return s;
        }
        if !r.warnings.is_empty() {
            let n = r.warnings.len();
            r.warnings.truncate(n / 2);
            r.warnings.push(format!("... and {} more", n - n / 2));
            if n <= 2 {
                r.warnings.clear();
            }
        } else if let Some(e) = &mut r.error {
            *e = crate::prefix_within(e, e.len() / 2).to_string();
        }
    }
}

/// Pushes every volume; the report says what was done, or the error.
pub fn run(store: &Store, args: &WorkerArgs) -> WorkerReport {
    let mut report = WorkerReport::default();
    let started = std::time::Instant::now();
    let mut total = JobStats::default();
    for (volume, path) in &args.volumes {
        let mut opts = PushOptions::new(path);
        opts.source_name = Some(format!("pvc/{}/{volume}", args.namespace));
        opts.excludes = args.excludes.clone();
        opts.repository = Some(format!("{}/{}", args.namespace, args.repository));
        opts.mode = Some(args.mode.into());
        opts.consistency = Some(args.consistency.into());
        opts.job = Some(args.job.clone());
        let mut tags = BTreeMap::from([
            ("priority".to_string(), args.priority.as_str().to_string()),
            ("volume".to_string(), volume.clone()),
        ]);
        if let Some(r) = &args.reason {
            tags.insert("reason".into(), r.clone());
        }
        opts.tags = tags;
        let counters = Counters::default();
        match push(store, &opts, &counters) {
            Ok(outcome) => {
                let s = &outcome.snapshot.stats;
                tracing::info!(volume, snapshot = %outcome.id, files = s.files, bytes_new = s.bytes_new, "volume pushed");
                report.volumes.push(VolumeResult {
                    volume: volume.clone(),
                    snapshot: outcome.id.to_hex(),
                    files: s.files as i64,
                    bytes_total: s.bytes_total as i64,
                    bytes_new: s.bytes_new as i64,
                    consistency: Some(crate::api::Consistency::of_snapshot(outcome.snapshot.consistency)),
                    changed_during_read: outcome.snapshot.changed_during_read.iter().take(10).cloned().collect(),
                });
                if s.files_changed_during_read > 0 {
                    report.warnings.push(format!(
                        "{volume}: {} files changed while they were read ({}); the snapshot is marked inconsistent",
                        s.files_changed_during_read,
                        outcome.snapshot.changed_during_read.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                total.files += s.files as i64;
                total.bytes_total += s.bytes_total as i64;
                total.bytes_read += s.bytes_read as i64;
                total.bytes_new += s.bytes_new as i64;
                total.bytes_uploaded += s.bytes_uploaded as i64;
                total.chunks_new += s.chunks_new as i64;
                total.chunks_reused += s.chunks_reused as i64;
                total.errors += s.errors as i64;
                total.store_bytes = Some(outcome.store_bytes as i64);
                report.warnings.extend(outcome.warnings.iter().map(|w| format!("{volume}/{w}")));
            }
            Err(e) => {
                report.error = Some(format!("volume {volume}: {e:#}"));
                report.reason = crate::controller::push_job::state::WorkerFailure::of(&e);
                break;
            }
        }
    }
    if report.error.is_none()
        && let Some(spec) = &args.retention
    {
        match apply_retention(store, args, spec) {
            Ok(n) => total.snapshots_forgotten = n as i64,
            // The push succeeded: a retention failure is a warning, and the next push retries.
            Err(e) => report.warnings.insert(0, format!("retention not applied: {e:#}")),
        }
    }
    total.duration_seconds = started.elapsed().as_secs_f64();
    total.dedup_ratio = match (total.bytes_total, total.bytes_new) {
        (0, _) => Some(1.0),
        (_, 0) => None,
        (t, n) => Some(t as f64 / n as f64),
    };
    report.stats = total;
    report
}

/// Forgets the snapshots of this Repository the rules do not keep.
fn apply_retention(store: &Store, args: &WorkerArgs, spec: &crate::api::policy::RetentionSpec) -> anyhow::Result<u32> {
    let (rules, tz) = spec.to_rules().map_err(anyhow::Error::msg)?;
    if rules.is_empty() {
        return Ok(0);
    }
    let opts = ForgetOptions {
        rules,
        tz,
        dry_run: false,
        repository: Some(format!("{}/{}", args.namespace, args.repository)),
        source: None,
        mode: None,
        reason: "retention after push".into(),
        job: Some(args.job.clone()),
    };
    let report = forget(store, &opts)?;
    tracing::info!(kept = report.kept, forgotten = report.removed.len(), "retention applied");
    Ok(report.removed.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_fits_the_termination_message() {
        let r = WorkerReport {
            volumes: vec![VolumeResult {
                volume: "data".into(),
                snapshot: "a".repeat(64),
                files: 1,
                bytes_total: 1,
                bytes_new: 1,
                ..Default::default()
            }],
            stats: JobStats::default(),
            warnings: (0..500).map(|i| format!("some/long/path/number/{i}: permission denied")).collect(),
            error: None,
            reason: None,
        };
        let s = encode_report(&r);
        assert!(s.len() <= 4000, "{}", s.len());
        let back: WorkerReport = serde_json::from_str(&s).unwrap();
        assert_eq!(back.volumes, r.volumes);
        assert!(back.warnings.last().unwrap().contains("more"));
    }

    #[test]
    fn a_long_error_in_any_script_is_cut_to_fit() {
        for unit in ["x", "ü", "€", "😀"] {
            let r = WorkerReport { error: Some(format!("volume data: {}", unit.repeat(5000))), ..Default::default() };
            let s = encode_report(&r);
            assert!(s.len() <= 4000, "{unit}: {}", s.len());
            let back: WorkerReport = serde_json::from_str(&s).unwrap();
            assert!(back.error.unwrap().starts_with("volume data: "));
        }
    }

    #[test]
    fn pushes_each_volume_as_its_own_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        for v in ["a", "b"] {
            std::fs::create_dir_all(tmp.path().join(v)).unwrap();
            std::fs::write(tmp.path().join(v).join("f"), format!("volume {v}")).unwrap();
        }
        let backend = std::sync::Arc::new(crate::store::backend::fs::FsBackend::new(tmp.path().join("store")));
        let key = crate::store::keys::Secret::Raw(crate::store::crypto::random_key());
        let store =
            Store::open_or_init(backend, &Default::default(), &crate::store::keys::Credentials::given(key)).unwrap();
        assert!(store.is_encrypted());
        let mut args = offline_push(vec![("a".into(), tmp.path().join("a")), ("b".into(), tmp.path().join("b"))]);
        (args.priority, args.reason) = (Priority::P2, Some("pre-upgrade".into()));
        let report = run(&store, &args);
        assert!(report.error.is_none(), "{:?}", report.error);
        assert_eq!(report.volumes.len(), 2);
        assert_eq!(report.stats.files, 2);
        let packs: u64 = std::fs::read_dir(tmp.path().join("store/packs"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .map(|f| f.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(report.stats.store_bytes, Some(packs as i64), "the store size is its packs' bytes");
        let snaps = store.list_snapshots().unwrap();
        assert_eq!(snaps.len(), 2);
        let s = &snaps.iter().find(|(_, s)| s.source == "pvc/shop/a").unwrap().1;
        assert_eq!(s.repository.as_deref(), Some("shop/web"));
        assert_eq!(s.consistency, Some(crate::store::snapshot::Consistency::Consistent));
        assert_eq!(s.job.as_deref(), Some("j1"));
        assert_eq!(s.tags.get("reason").map(String::as_str), Some("pre-upgrade"));
    }

    #[test]
    fn a_store_with_a_changed_object_fails_the_push_as_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("v")).unwrap();
        std::fs::write(tmp.path().join("v/f"), "data").unwrap();
        let backend = std::sync::Arc::new(crate::store::backend::fs::FsBackend::new(tmp.path().join("store")));
        let creds =
            crate::store::keys::Credentials::given(crate::store::keys::Secret::Raw(crate::store::crypto::random_key()));
        let store = Store::open_or_init(backend, &Default::default(), &creds).unwrap();
        let args = offline_push(vec![("v".into(), tmp.path().join("v"))]);
        assert!(run(&store, &args).error.is_none());
        // Someone rewrites every index object of the store (a bit flipped at the end).
        let mut changed = 0;
        for e in walk(&tmp.path().join("store/index")) {
            let mut b = std::fs::read(&e).unwrap();
            *b.last_mut().unwrap() ^= 1;
            std::fs::write(&e, b).unwrap();
            changed += 1;
        }
        assert!(changed > 0, "the push wrote no index object");
        std::fs::write(tmp.path().join("v/f"), "new data").unwrap();
        let store = Store::open(store.backend().clone(), &creds).unwrap();
        let report = run(&store, &args);
        assert!(report.error.is_some(), "a push on a damaged index succeeded");
        assert_eq!(
            report.reason,
            Some(crate::controller::push_job::state::WorkerFailure::StoreDamaged),
            "{:?}",
            report.error
        );
    }

    /// The arguments of job shop/j1's offline push of `volumes` (Repository web).
    fn offline_push(volumes: Vec<(String, PathBuf)>) -> WorkerArgs {
        WorkerArgs {
            namespace: "shop".into(),
            repository: "web".into(),
            job: "j1".into(),
            mode: Mode::Offline,
            consistency: Consistency::Consistent,
            priority: Priority::P4,
            reason: None,
            excludes: vec![],
            volumes,
            retention: None,
        }
    }

    fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut out = vec![];
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }
}
