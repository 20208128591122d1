//! Forget: delete the snapshot objects a retention policy does not keep. The data they
//! reference stays until a prune finds it unreferenced.

use super::Store;
use super::audit::{self, Action, AuditRecord, Outcome};
use super::id::Id;
use super::retention::{KeepPolicy, select};
use super::snapshot::{Mode, Snapshot, snapshot_key};
use chrono_tz::Tz;
use serde::Serialize;
use std::collections::BTreeMap;

/// Rules, optionally per mode: the online and offline rules replace the default ones for
/// snapshots of that mode. With per-mode rules, groups are split by mode as well.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub default: KeepPolicy,
    pub online: Option<KeepPolicy>,
    pub offline: Option<KeepPolicy>,
}

impl Rules {
    pub fn per_mode(&self) -> bool {
        self.online.is_some() || self.offline.is_some()
    }

    pub fn for_mode(&self, mode: Option<Mode>) -> &KeepPolicy {
        match mode {
            Some(Mode::Online) => self.online.as_ref().unwrap_or(&self.default),
            Some(Mode::Offline) => self.offline.as_ref().unwrap_or(&self.default),
            Some(Mode::Unknown) | None => &self.default,
        }
    }

    /// True when some group would lose everything (no rule at all).
    pub fn is_empty(&self) -> bool {
        self.default.is_empty()
            && self.online.as_ref().is_none_or(|p| p.is_empty())
            && self.offline.as_ref().is_none_or(|p| p.is_empty())
    }
}

impl std::fmt::Display for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.default)?;
        if let Some(o) = &self.online {
            write!(f, "; online: {o}")?;
        }
        if let Some(o) = &self.offline {
            write!(f, "; offline: {o}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct ForgetOptions {
    pub rules: Rules,
    pub tz: Option<Tz>,
    pub dry_run: bool,
    /// Only snapshots of this repository (`namespace/name`).
    pub repository: Option<String>,
    /// Only snapshots of this source.
    pub source: Option<String>,
    /// Only snapshots of this mode.
    pub mode: Option<Mode>,
    /// For the audit record.
    pub reason: String,
    pub job: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotDecision {
    pub id: String,
    pub time: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    pub policy: String,
    pub keep: Vec<SnapshotDecision>,
    pub remove: Vec<SnapshotDecision>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ForgetReport {
    pub groups: Vec<GroupReport>,
    pub kept: usize,
    pub removed: Vec<String>,
    pub dry_run: bool,
}

/// Groups and decides, without touching the store. Groups whose rules are empty keep all.
pub fn plan(snaps: &[(Id, Snapshot)], opts: &ForgetOptions) -> ForgetReport {
    let tz = opts.tz.unwrap_or(Tz::UTC);
    type Group<'a> = Vec<&'a (Id, Snapshot)>;
    let mut groups: BTreeMap<(String, Option<Mode>), Group> = BTreeMap::new();
    for s in snaps {
        if opts.repository.as_ref().is_some_and(|r| s.1.repository.as_ref() != Some(r))
            || opts.source.as_ref().is_some_and(|src| &s.1.source != src)
            || opts.mode.is_some_and(|m| s.1.mode != Some(m))
        {
            continue;
        }
        let mode = if opts.rules.per_mode() { s.1.mode } else { None };
        groups.entry((s.1.source.clone(), mode)).or_default().push(s);
    }
    let mut report = ForgetReport { dry_run: opts.dry_run, ..Default::default() };
    for ((source, mode), members) in groups {
        let policy = opts.rules.for_mode(mode);
        let mut g = GroupReport { source, mode, policy: policy.to_string(), keep: vec![], remove: vec![] };
        let times: Vec<_> = members.iter().map(|(_, s)| s.time).collect();
        let decisions = if policy.is_empty() {
            vec![super::retention::Decision { keep: true, reasons: vec!["no rules".into()] }; times.len()]
        } else {
            select(&times, policy, tz)
        };
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by(|a, b| times[*b].cmp(&times[*a]));
        for i in order {
            let d = SnapshotDecision {
                id: members[i].0.to_hex(),
                time: members[i].1.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                reasons: decisions[i].reasons.clone(),
            };
            if decisions[i].keep {
                report.kept += 1;
                g.keep.push(d);
            } else {
                report.removed.push(d.id.clone());
                g.remove.push(d);
            }
        }
        report.groups.push(g);
    }
    report
}

/// Forgets the given snapshots (ids or unique prefixes), whatever the rules; as `restic forget
/// ID...`.
pub fn forget_ids(store: &Store, ids: &[String], dry_run: bool, reason: &str) -> anyhow::Result<ForgetReport> {
    let mut report = ForgetReport { dry_run, ..Default::default() };
    let mut found = Vec::new();
    for spec in ids {
        if spec == "latest" {
            anyhow::bail!("give snapshot ids to forget (\"latest\" is not accepted here)");
        }
        let (id, _) = store.find_snapshot(spec)?;
        found.push(id);
    }
    found.sort();
    found.dedup();
    report.removed = found.iter().map(|i| i.to_hex()).collect();
    if dry_run {
        return Ok(report);
    }
    let mut rec = AuditRecord::new(Action::Forget, Outcome::Ok);
    rec.reason = reason.into();
    remove(store, &found, rec)?;
    Ok(report)
}

/// Applies the rules to the store: deletes the snapshots not kept (unless a dry run) and
/// appends an audit record.
pub fn forget(store: &Store, opts: &ForgetOptions) -> anyhow::Result<ForgetReport> {
    if opts.rules.is_empty() {
        anyhow::bail!(
            "no retention rule given: forget would remove every snapshot; give at least one --keep-* rule (e.g. --keep-last 7)"
        );
    }
    let snaps = store.list_snapshots()?;
    let report = plan(&snaps, opts);
    if opts.dry_run {
        return Ok(report);
    }
    let ids =
        report.removed.iter().map(|h| Id::parse(h).map_err(anyhow::Error::msg)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut rec = AuditRecord::new(Action::Forget, Outcome::Ok)
        .detail("kept", report.kept)
        .detail("rules", opts.rules.to_string());
    rec.reason = opts.reason.clone();
    rec.job = opts.job.clone();
    rec.repository = opts.repository.clone();
    remove(store, &ids, rec)?;
    Ok(report)
}

/// Deletes the snapshot objects in order, stopping at the first failure, and appends `rec`
/// completed with what was removed (result "failed" and the error when a delete failed).
fn remove(store: &Store, ids: &[Id], mut rec: AuditRecord) -> anyhow::Result<()> {
    let mut failure = None;
    for id in ids {
        match store.backend().delete(&snapshot_key(id)) {
            Ok(()) => rec.snapshots.push(id.to_hex()),
            Err(e) => {
                failure = Some(format!("cannot delete snapshot {}: {e}", id.short()));
                break;
            }
        }
    }
    if rec.snapshots.is_empty() && failure.is_none() {
        return Ok(());
    }
    let removed = rec.snapshots.len();
    rec = rec.detail("removed", removed);
    if let Some(f) = &failure {
        rec.result = Outcome::Failed;
        rec.error = Some(f.clone());
    }
    audit::append(store, &rec)?;
    match failure {
        Some(f) => anyhow::bail!(f),
        None => Ok(()),
    }
}
