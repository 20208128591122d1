//! The audit trail: one immutable JSON record per push, forget and prune, kept in the store
//! itself (`audit/<time>-<random>`), so it travels with the data and outlives the cluster.
//! Keys sort by time; `push-operator audit` lists them.

use super::Store;
use super::backend::BackendError;
use super::crypto::ObjectKind;
use super::id::Id;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const AUDIT_PREFIX: &str = "audit/";

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Push,
    Forget,
    Prune,
    /// Snapshots written into volumes by a RestoreJob.
    Restore,
    /// The undo snapshots of a failed in-place restore written back.
    Undo,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    Failed,
    /// A prune or forget that only showed what it would do.
    DryRun,
    /// A prune that marked packs for deletion by a later run (pushes were still running).
    Pending,
}

impl Action {
    /// The name in the records (and on the command line).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Forget => "forget",
            Action::Prune => "prune",
            Action::Restore => "restore",
            Action::Undo => "undo",
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::DryRun => "dry-run",
            Outcome::Pending => "pending",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time: DateTime<Utc>,
    pub action: Action,
    pub result: Outcome,
    /// Why: "schedule hourly of policy shop/web", "manual", "retention after push", ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The snapshot written (push) or the snapshots forgotten (forget).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    pub host: String,
    pub program: String,
    /// Figures: bytes, counts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AuditRecord {
    pub fn new(action: Action, result: Outcome) -> AuditRecord {
        AuditRecord {
            time: Utc::now(),
            action,
            result,
            reason: String::new(),
            job: None,
            repository: None,
            snapshots: vec![],
            host: super::push::hostname(),
            program: format!("push-operator {}", env!("CARGO_PKG_VERSION")),
            details: BTreeMap::new(),
            error: None,
        }
    }

    pub fn detail(mut self, k: &str, v: impl Into<serde_json::Value>) -> Self {
        self.details.insert(k.into(), v.into());
        self
    }
}

/// Appends a record. Failing to write the record fails the caller: an action without its
/// record is not allowed to look successful.
pub fn append(store: &Store, rec: &AuditRecord) -> anyhow::Result<String> {
    let key = format!("{AUDIT_PREFIX}{}-{}", rec.time.format("%Y%m%dT%H%M%S%.6fZ"), &Id::random().to_hex()[..12]);
    store
        .put(&key, &store.seal_object(ObjectKind::Audit, &serde_json::to_vec_pretty(rec)?))
        .map_err(|e| anyhow::anyhow!("cannot write the audit record {key}: {e}"))?;
    Ok(key)
}

/// Every record, oldest first. Records that cannot be parsed are reported, not hidden.
pub fn list(store: &Store) -> anyhow::Result<Vec<AuditRecord>> {
    let mut objects = store.backend().list(AUDIT_PREFIX)?;
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = Vec::with_capacity(objects.len());
    for o in objects {
        let bytes = match store.backend().get(&o.key) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let bytes = store.open_object(ObjectKind::Audit, &o.key, &bytes)?;
        let rec: AuditRecord = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("audit record {} does not parse: {e}", o.key))?;
        out.push(rec);
    }
    out.sort_by_key(|r| r.time);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_in_the_records_are_the_names_shown() {
        for a in [Action::Push, Action::Forget, Action::Prune, Action::Restore, Action::Undo] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
            assert_eq!(serde_json::from_value::<Action>(a.as_str().into()).unwrap(), a);
        }
        for o in [Outcome::Ok, Outcome::Failed, Outcome::DryRun, Outcome::Pending] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        // Padding works as for strings (the `audit` table).
        assert_eq!(format!("{:<8}|", Outcome::Ok), "ok      |");
    }

    #[test]
    fn records_written_before_the_enums_still_read() {
        let old = r#"{"time":"2026-11-01T00:00:00Z","action":"prune","result":"dry-run","host":"h","program":"p"}"#;
        let r: AuditRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.action, r.result), (Action::Prune, Outcome::DryRun));
    }
}
