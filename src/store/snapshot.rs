//! Snapshots: one JSON object per push, written last. A snapshot that is listed is complete.

use super::id::Id;
use super::tree::Node;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory: the root tree holds its entries.
    Dir,
    /// A regular file: the root tree holds one node, the file.
    File,
    /// A block device read as one stream: the root tree holds one file node.
    Device,
}

/// What a push did, as reported by `push --json` and recorded in the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sockets, FIFOs and device nodes inside a directory: never pushed, always counted.
    pub skipped_special: u64,
    /// Files whose content came from the parent snapshot without being read.
    pub files_unchanged: u64,
    /// Sum of the sizes of the files in the snapshot.
    pub bytes_total: u64,
    pub bytes_read: u64,
    /// Plaintext bytes of chunks the store did not have.
    pub bytes_new: u64,
    /// Bytes written to the store (packs, index, snapshot).
    pub bytes_uploaded: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub trees_new: u64,
    pub packs_uploaded: u64,
    /// Entries that could not be read (listed in the push's warnings).
    pub errors: u64,
    /// Regular files whose size, mtime or ctime changed while they were read, or that read
    /// back a different length than their size: their content may be torn. All of them are
    /// counted; the snapshot names at most [`CHANGED_DURING_READ_MAX`].
    #[serde(default)]
    pub files_changed_during_read: u64,
    pub duration_seconds: f64,
}

impl PushStats {
    /// Logical bytes over new bytes: how much deduplication saved in this push. Infinite (null
    /// in JSON) when nothing was new.
    pub fn dedup_ratio(&self) -> f64 {
        match (self.bytes_total, self.bytes_new) {
            (0, _) => 1.0,
            (_, 0) => f64::INFINITY,
            (t, n) => t as f64 / n as f64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub time: chrono::DateTime<chrono::Utc>,
    pub hostname: String,
    /// Identity of the source for finding parents: an absolute path, or a name the caller gives
    /// (the worker uses `pvc/<namespace>/<name>`).
    pub source: String,
    pub kind: SourceKind,
    /// The source's own metadata (a directory's mode and times; for files, the file node).
    pub root_node: Node,
    /// The root tree.
    pub tree: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Set by the operator: the Repository (`namespace/name`), the push mode (online/offline),
    /// the consistency (consistent, crash-consistent, inconsistent) and the PushJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub stats: PushStats,
    /// Paths that could not be read and are missing from the snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Files (relative paths, sorted) that changed while the push read them, so their content
    /// may be torn; at most [`CHANGED_DURING_READ_MAX`], the count is in
    /// `stats.files_changed_during_read`. A snapshot with any is marked `inconsistent`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_during_read: Vec<String>,
    pub program: String,
}

/// At most this many changed-during-read paths are named in a snapshot.
pub const CHANGED_DURING_READ_MAX: usize = 1000;

pub fn snapshot_key(id: &Id) -> String {
    format!("snapshots/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_written_before_changed_during_read_still_parse() {
        let old = r#"{"version":2,"time":"2024-05-01T10:00:00Z","hostname":"h","source":"/data","kind":"dir",
            "root_node":{"name":"data","type":"dir","mode":493,"uid":0,"gid":0,"mtime":1,"mtime_nsec":0,
              "ctime":1,"ctime_nsec":0,"size":0,"inode":2,"dev":3,"nlink":2},
            "tree":"0000000000000000000000000000000000000000000000000000000000000000",
            "stats":{"files":1,"dirs":0,"symlinks":0,"skipped_special":0,"files_unchanged":0,"bytes_total":4,
              "bytes_read":4,"bytes_new":4,"bytes_uploaded":100,"chunks_new":1,"chunks_reused":0,"trees_new":1,
              "packs_uploaded":1,"errors":0,"duration_seconds":0.1},
            "program":"push-operator 0.1.0"}"#;
        let s: Snapshot = serde_json::from_str(old).unwrap();
        assert!(s.changed_during_read.is_empty());
        assert_eq!(s.stats.files_changed_during_read, 0);
        // Written again without changed files, the list is left out as before.
        let back = serde_json::to_value(&s).unwrap();
        assert!(back.get("changed_during_read").is_none());
        assert_eq!(serde_json::from_value::<Snapshot>(back).unwrap(), s);
    }
}
