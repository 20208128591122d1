//! `push-operator restore-worker`: what the RestoreJob's worker pods run, and the contract
//! between them and the operator (the arguments, parsed by [`RestoreWorkerArgs`], and the
//! report, [`RestoreWorkerReport`], written to the termination message).
//!
//! - `--step resolve` looks the snapshots up in the store (not in any cluster's status, so a
//!   new cluster restores from the bucket) and reports what it chose;
//! - `--step restore` writes pinned snapshots into mounted volumes and checks the result
//!   (every file's content re-hashed, sizes, types); the undo is the same step with the undo
//!   snapshots.
//!
//! Every restore leaves a record in the store's audit trail.

use crate::api::{CleanupWhen, Consistency, Latest, Mode, RestoreStats};
use crate::controller::push_job::state::WorkerFailure;
use crate::store::Store;
use crate::store::audit::{self, AuditRecord};
use crate::store::id::Id;
use crate::store::restore::{RestoreOptions, check_restored, restore};
use crate::store::snapshot::{Snapshot, SourceKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One step of a RestoreJob, each its own pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum WorkerStep {
    /// Choose the snapshots.
    Resolve,
    /// In place: push the volumes' current state (the push worker runs this step).
    SafetyPush,
    /// Write the snapshots and check them.
    Restore,
    /// Write the undo snapshots back after a failed in-place restore.
    Undo,
    /// The user's check pod (their image, not this program).
    Check,
}

impl WorkerStep {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStep::Resolve => "resolve",
            WorkerStep::SafetyPush => "safety",
            WorkerStep::Restore => "restore",
            WorkerStep::Undo => "undo",
            WorkerStep::Check => "check",
        }
    }
    pub fn doing(self) -> &'static str {
        match self {
            WorkerStep::Resolve => "looking the snapshots up",
            WorkerStep::SafetyPush => "pushing the volumes' current state",
            WorkerStep::Restore => "writing and checking the snapshots",
            WorkerStep::Undo => "writing the undo snapshot back",
            WorkerStep::Check => "running the check",
        }
    }
    /// The job's reason when this step's worker fails without naming a reason.
    pub fn failure_reason(self) -> &'static str {
        match self {
            WorkerStep::Resolve => "ResolveFailed",
            WorkerStep::SafetyPush => "SafetyPushFailed",
            WorkerStep::Restore => "RestoreFailed",
            WorkerStep::Undo => "UndoFailed",
            WorkerStep::Check => "UserCheckFailed",
        }
    }
}

/// Failures a restore worker names, each the reason of the failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreFailure {
    /// No snapshot matches the selection for a volume (or an id matches none, or several).
    SnapshotNotFound,
    /// The restored data differs from the snapshot.
    CheckFailed,
    /// A target is smaller than the snapshot (block devices).
    TargetTooSmall,
    StoreKeyMissing,
    StoreKeyWrong,
    /// There is no store at the Repository's bucket and prefix.
    StoreNotFound,
    StoreAccessDenied,
    StoreBucketMissing,
    StoreUnreachable,
    /// An object the restore reads does not open, or the store's config is damaged.
    StoreDamaged,
    /// The Repository gives a key, but the store is not encrypted.
    StoreNotEncrypted,
}

impl RestoreFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreFailure::SnapshotNotFound => "SnapshotNotFound",
            RestoreFailure::CheckFailed => "CheckFailed",
            RestoreFailure::TargetTooSmall => "TargetTooSmall",
            RestoreFailure::StoreKeyMissing => "StoreKeyMissing",
            RestoreFailure::StoreKeyWrong => "StoreKeyWrong",
            RestoreFailure::StoreNotFound => "StoreNotFound",
            RestoreFailure::StoreAccessDenied => "StoreAccessDenied",
            RestoreFailure::StoreBucketMissing => "StoreBucketMissing",
            RestoreFailure::StoreUnreachable => "StoreUnreachable",
            RestoreFailure::StoreDamaged => "StoreDamaged",
            RestoreFailure::StoreNotEncrypted => "StoreNotEncrypted",
        }
    }

    pub fn fix(self) -> &'static str {
        match self {
            RestoreFailure::SnapshotNotFound => {
                "list the snapshots with `push-operator snapshots`; choose ids, another asOf or mode, or restore only the volumes that have snapshots (spec.volumes); for another namespace's snapshots set snapshot.fromNamespace"
            }
            RestoreFailure::CheckFailed => {
                "the data written does not match the snapshot: run `push-operator verify` on the store, and check the volume (full, read-only, another writer)"
            }
            RestoreFailure::TargetTooSmall => "give newVolumes.size at least the snapshot's size",
            RestoreFailure::StoreKeyMissing => {
                "name the Secret with the store's passphrase in spec.storage.encryption.secretRef"
            }
            RestoreFailure::StoreKeyWrong => {
                "put the store's passphrase (or raw key) in the Secret of spec.storage.encryption.secretRef"
            }
            RestoreFailure::StoreNotFound => {
                "check the Repository's spec.storage (endpoint, bucket, prefix): no store is there"
            }
            RestoreFailure::StoreAccessDenied => WorkerFailure::StoreAccessDenied.fix(),
            RestoreFailure::StoreBucketMissing => WorkerFailure::StoreBucketMissing.fix(),
            RestoreFailure::StoreUnreachable => WorkerFailure::StoreUnreachable.fix(),
            RestoreFailure::StoreNotEncrypted => WorkerFailure::StoreNotEncrypted.fix(),
            RestoreFailure::StoreDamaged => {
                "run `push-operator verify` against the store to see which snapshots the damage affects, and restore another snapshot (snapshot.ids or asOf); nothing was restored from the damaged data"
            }
        }
    }

    pub fn of(e: &anyhow::Error) -> Option<RestoreFailure> {
        use crate::store::OpenError;
        if let Some(f) = e.downcast_ref::<ResolveError>() {
            return Some(f.0);
        }
        if let Some(OpenError::Missing(_)) = e.downcast_ref::<OpenError>() {
            return Some(RestoreFailure::StoreNotFound);
        }
        Some(match WorkerFailure::of(e)? {
            WorkerFailure::StoreKeyMissing => RestoreFailure::StoreKeyMissing,
            WorkerFailure::StoreKeyWrong => RestoreFailure::StoreKeyWrong,
            WorkerFailure::StoreAccessDenied => RestoreFailure::StoreAccessDenied,
            WorkerFailure::StoreBucketMissing => RestoreFailure::StoreBucketMissing,
            WorkerFailure::StoreUnreachable => RestoreFailure::StoreUnreachable,
            WorkerFailure::StoreDamaged => RestoreFailure::StoreDamaged,
            WorkerFailure::StoreNotEncrypted => RestoreFailure::StoreNotEncrypted,
            // Only a push creates a store or reads a volume as its source.
            WorkerFailure::EncryptionNotConfigured | WorkerFailure::SourceUnreadable => return None,
        })
    }
}

/// A failure with its reason, as the steps return it.
#[derive(Debug, thiserror::Error)]
#[error("{1}")]
pub struct ResolveError(pub RestoreFailure, pub String);

/// One volume's chosen snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedVolume {
    pub volume: String,
    pub snapshot: String,
    pub time: DateTime<Utc>,
    pub consistency: Consistency,
    #[serde(default)]
    pub mode: Option<Mode>,
    pub bytes: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_during_read: Vec<String>,
}

/// What a restore worker writes to its termination message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreWorkerReport {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<ResolvedVolume>,
    /// Resolve: the newest consistent snapshot of each volume whose chosen one is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<RestoreStats>,
    /// Restore: paths the post-restore cleanup removed (`volume/path`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleaned: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RestoreFailure>,
}

/// A push mode on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Offline,
    Online,
}

/// Which snapshots `resolve` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LatestArg {
    Any,
    Offline,
    Online,
}

/// The restore worker's arguments (what the operator's pod builder writes; tests parse every
/// pod it builds with this definition).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct RestoreWorkerArgs {
    #[arg(long, value_enum)]
    pub step: WorkerStep,
    /// The job's namespace.
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub repository: String,
    #[arg(long)]
    pub job: String,
    /// The namespace whose snapshots are restored (sources `pvc/<namespace>/<pvc>`).
    #[arg(long)]
    pub from_namespace: Option<String>,
    /// Resolve: the volumes wanted (repeatable).
    #[arg(long = "want")]
    pub want: Vec<String>,
    /// Resolve: snapshot ids or unique prefixes (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    #[arg(long, value_enum)]
    pub latest: Option<LatestArg>,
    /// Resolve: only snapshots of this push mode.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Resolve: the newest snapshot at or before this time (RFC 3339).
    #[arg(long)]
    pub as_of: Option<DateTime<Utc>>,
    /// Restore: VOLUME=PATH of a mounted target (repeatable).
    #[arg(long = "volume", value_parser = parse_pair)]
    pub volumes: Vec<(String, PathBuf)>,
    /// Restore: VOLUME=SNAPSHOT-ID (repeatable).
    #[arg(long = "snapshot", value_parser = parse_pair_str)]
    pub snapshots: Vec<(String, String)>,
    /// Restore: remove what the snapshot does not have (in place).
    #[arg(long)]
    pub mirror: bool,
    /// Restore: globs removed after the data is written (repeatable).
    #[arg(long = "cleanup")]
    pub cleanup: Vec<String>,
    #[arg(long, value_enum, default_value = "not-consistent")]
    pub cleanup_when: CleanupWhen,
    /// Why (audit trail).
    #[arg(long)]
    pub reason: Option<String>,
    /// Where the report goes (the kubelet shows it as the termination message).
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}

fn parse_pair(s: &str) -> Result<(String, PathBuf), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not VOLUME=PATH"))?;
    Ok((k.to_string(), PathBuf::from(v)))
}

fn parse_pair_str(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not VOLUME=SNAPSHOT"))?;
    Ok((k.to_string(), v.to_string()))
}

/// What `resolve` is asked for.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Vec<String>,
    pub latest: Option<Latest>,
    pub as_of: Option<DateTime<Utc>>,
    pub mode: Option<Mode>,
    pub namespace: String,
}

fn source_of(ns: &str, volume: &str) -> String {
    format!("pvc/{ns}/{volume}")
}

fn resolved(id: &Id, s: &Snapshot, volume: &str) -> ResolvedVolume {
    ResolvedVolume {
        volume: volume.to_string(),
        snapshot: id.to_hex(),
        time: s.time,
        consistency: Consistency::of_snapshot(s.consistency),
        mode: Mode::of_snapshot(s.mode),
        bytes: s.stats.bytes_total as i64,
        changed_during_read: s.changed_during_read.iter().take(20).cloned().collect(),
    }
}

/// Chooses one snapshot per volume from `snaps` (any order). Every wanted volume must get one
/// unless `ids` are given (then exactly the ids' volumes). Returns the choice and the newest
/// consistent alternative of each volume whose choice is not consistent. Pure.
pub fn choose(
    snaps: &[(Id, Snapshot)],
    sel: &Selection,
    volumes: &[String],
) -> Result<(Vec<ResolvedVolume>, Vec<String>), ResolveError> {
    let not_found = |m: String| ResolveError(RestoreFailure::SnapshotNotFound, m);
    let volume_of = |s: &Snapshot| volumes.iter().find(|v| s.source == source_of(&sel.namespace, v)).cloned();
    let mut out: Vec<ResolvedVolume> = Vec::new();
    if !sel.ids.is_empty() {
        for want in &sel.ids {
            let want = want.to_ascii_lowercase();
            let hits: Vec<&(Id, Snapshot)> = snaps.iter().filter(|(id, _)| id.to_hex().starts_with(&want)).collect();
            let (id, s) = match hits.as_slice() {
                [one] => *one,
                [] => return Err(not_found(format!("no snapshot has id {want}"))),
                _ => return Err(not_found(format!("id {want} matches {} snapshots: give more digits", hits.len()))),
            };
            let Some(v) = volume_of(s) else {
                return Err(not_found(format!(
                    "snapshot {want} is of {}, not of a volume of this Repository in namespace {} ({})",
                    s.source,
                    sel.namespace,
                    volumes.join(", ")
                )));
            };
            if out.iter().any(|r| r.volume == v) {
                return Err(not_found(format!("two ids name snapshots of volume {v}")));
            }
            out.push(resolved(id, s, &v));
        }
    } else {
        for v in volumes {
            let src = source_of(&sel.namespace, v);
            let best = snaps
                .iter()
                .filter(|(_, s)| s.source == src)
                .filter(|(_, s)| sel.mode.is_none() || Mode::of_snapshot(s.mode) == sel.mode)
                .filter(|(_, s)| sel.as_of.is_none_or(|t| s.time <= t))
                .max_by_key(|(id, s)| (s.time, id.to_hex()));
            let Some((id, s)) = best else {
                let mode = sel.mode.map(|m| format!(" {}", m.as_str())).unwrap_or_default();
                let asof = sel.as_of.map(|t| format!(" at or before {}", t.to_rfc3339())).unwrap_or_default();
                return Err(not_found(format!("volume {v} has no{mode} snapshot{asof} (source {src})")));
            };
            out.push(resolved(id, s, v));
        }
    }
    let mut alternatives = Vec::new();
    for r in &out {
        if r.consistency == Consistency::Consistent {
            continue;
        }
        let src = source_of(&sel.namespace, &r.volume);
        if let Some((id, _)) = snaps
            .iter()
            .filter(|(_, s)| s.source == src && Consistency::of_snapshot(s.consistency) == Consistency::Consistent)
            .max_by_key(|(id, s)| (s.time, id.to_hex()))
        {
            alternatives.push(id.to_hex());
        }
    }
    Ok((out, alternatives))
}

impl RestoreWorkerArgs {
    pub fn selection(&self) -> Selection {
        Selection {
            ids: self.ids.clone(),
            latest: self.latest.map(|l| match l {
                LatestArg::Any => Latest::Any,
                LatestArg::Offline => Latest::Offline,
                LatestArg::Online => Latest::Online,
            }),
            as_of: self.as_of,
            mode: match (self.latest, self.mode) {
                (Some(LatestArg::Offline), _) | (_, Some(ModeArg::Offline)) => Some(Mode::Offline),
                (Some(LatestArg::Online), _) | (_, Some(ModeArg::Online)) => Some(Mode::Online),
                _ => None,
            },
            namespace: self.from_namespace.clone().unwrap_or_else(|| self.namespace.clone()),
        }
    }
}

/// Runs one step; the report says what was done, or the error and its reason.
pub fn run(store: &Store, args: &RestoreWorkerArgs) -> RestoreWorkerReport {
    let result = match args.step {
        WorkerStep::Resolve => run_resolve(store, args),
        WorkerStep::Restore | WorkerStep::Undo => run_restore(store, args),
        WorkerStep::SafetyPush => Err(anyhow::anyhow!("the undo push is the push worker's step")),
        WorkerStep::Check => Err(anyhow::anyhow!("the check runs the RestoreJob's own image")),
    };
    match result {
        Ok(r) => r,
        Err(e) => failure_report(&e),
    }
}

/// The report of a step that failed with `e`.
pub fn failure_report(e: &anyhow::Error) -> RestoreWorkerReport {
    RestoreWorkerReport { error: Some(format!("{e:#}")), reason: RestoreFailure::of(e), ..Default::default() }
}

fn run_resolve(store: &Store, args: &RestoreWorkerArgs) -> anyhow::Result<RestoreWorkerReport> {
    let snaps = store.list_snapshots()?;
    let sel = args.selection();
    let (resolved, alternatives) = choose(&snaps, &sel, &args.want)?;
    for r in &resolved {
        tracing::info!(volume = %r.volume, snapshot = %r.snapshot, consistency = r.consistency.as_str(), "chosen");
    }
    Ok(RestoreWorkerReport { resolved, alternatives, ..Default::default() })
}

fn run_restore(store: &Store, args: &RestoreWorkerArgs) -> anyhow::Result<RestoreWorkerReport> {
    let started = std::time::Instant::now();
    let mut report = RestoreWorkerReport::default();
    let mut stats = RestoreStats::default();
    let mut audit_rec = AuditRecord::new(
        if args.step == WorkerStep::Undo { audit::Action::Undo } else { audit::Action::Restore },
        audit::Outcome::Ok,
    );
    audit_rec.reason = args.reason.clone().unwrap_or_else(|| "manual".into());
    audit_rec.job = Some(args.job.clone());
    audit_rec.repository = Some(format!("{}/{}", args.namespace, args.repository));
    let result = (|| -> anyhow::Result<()> {
        for (n, (volume, id)) in args.snapshots.iter().enumerate() {
            // Test hook (`PUSH_OPERATOR_CRASH_AT=restore:N`, or `undo:N`): killed after N volumes.
            crate::test_hooks::crashpoint(if args.step == WorkerStep::Undo { "undo" } else { "restore" }, n as u64);
            let Some((_, path)) = args.volumes.iter().find(|(v, _)| v == volume) else {
                anyhow::bail!("no --volume for {volume}");
            };
            let (sid, snap) = store.find_snapshot(id)?;
            audit_rec.snapshots.push(sid.to_hex());
            let consistent = Consistency::of_snapshot(snap.consistency) == Consistency::Consistent;
            let cleanup = match args.cleanup_when {
                CleanupWhen::Always => args.cleanup.clone(),
                CleanupWhen::NotConsistent if !consistent => args.cleanup.clone(),
                CleanupWhen::NotConsistent => Vec::new(),
            };
            let opts = RestoreOptions {
                target: path.clone(),
                mirror: args.mirror && snap.kind == SourceKind::Dir,
                cleanup,
                ..Default::default()
            };
            let rs = restore(store, &snap, &opts).map_err(|e| {
                let small = format!("{e:#}").contains("holds") && snap.kind == SourceKind::Device;
                if small {
                    anyhow::Error::new(ResolveError(RestoreFailure::TargetTooSmall, format!("{e:#}")))
                } else {
                    e
                }
            })?;
            let check = check_restored(store, &snap, path, &rs.cleaned)?;
            if !check.ok() {
                return Err(ResolveError(
                    RestoreFailure::CheckFailed,
                    format!(
                        "volume {volume}: {} differences after the restore: {}",
                        check.problems_total,
                        check.problems.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
                    ),
                )
                .into());
            }
            tracing::info!(volume, snapshot = %sid, files = rs.files, bytes = rs.bytes_total, removed = rs.removed, "restored and checked");
            stats.files += rs.files as i64;
            stats.bytes_total += rs.bytes_total as i64;
            stats.bytes_written += rs.bytes_written as i64;
            stats.removed += rs.removed as i64;
            stats.files_checked += check.files as i64;
            report.cleaned.extend(rs.cleaned.iter().map(|c| format!("{volume}/{c}")));
        }
        Ok(())
    })();
    stats.duration_seconds = started.elapsed().as_secs_f64();
    audit_rec = audit_rec
        .detail("files", stats.files)
        .detail("bytes_total", stats.bytes_total)
        .detail("files_checked", stats.files_checked)
        .detail("duration_seconds", stats.duration_seconds);
    if let Err(e) = &result {
        audit_rec.result = audit::Outcome::Failed;
        audit_rec.error = Some(format!("{e:#}"));
    }
    if let Err(e) = audit::append(store, &audit_rec) {
        tracing::warn!(error = %format!("{e:#}"), "cannot write the restore's audit record");
    }
    result?;
    report.stats = Some(stats);
    Ok(report)
}

/// The termination message is cut at 4096 bytes by the kubelet: keep the report under that.
pub fn encode_report(report: &RestoreWorkerReport) -> String {
    let mut r = report.clone();
    loop {
        let s = serde_json::to_string(&r).expect("reports serialize");
        if s.len() <= 4000 {
            return s;
        }
        if r.cleaned.len() > 1 {
            let n = r.cleaned.len();
            r.cleaned.truncate(n / 2);
            r.cleaned.push(format!("... and {} more", n - n / 2));
        } else if r.resolved.iter().any(|v| !v.changed_during_read.is_empty()) {
            for v in &mut r.resolved {
                v.changed_during_read.truncate(v.changed_during_read.len() / 2);
            }
        } else if let Some(e) = &mut r.error
            && e.len() > 200
        {
            *e = crate::prefix_within(e, e.len() / 2).to_string();
        } else {
            return s;
        }
    }
}

#[cfg(test)]
#[path = "restore_worker_tests.rs"]
mod tests;
