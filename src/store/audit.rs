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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time: DateTime<Utc>,
    /// "push", "forget" or "prune".
    pub action: String,
    /// "ok", "failed", "dry-run", "pending" (a prune that marked packs for a later run).
    pub result: String,
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
    pub fn new(action: &str, result: &str) -> AuditRecord {
        AuditRecord {
            time: Utc::now(),
            action: action.into(),
            result: result.into(),
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
