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

/// How the source was read, as the snapshot records it (the operator sets it; a CLI push may).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Services kept running: the source was a CSI snapshot's clone or the live volume.
    Online,
    /// Workloads scaled to zero and volumes detached before the copy.
    Offline,
    /// A mode this version does not know (a newer one wrote it): matches no mode filter and
    /// takes the default retention rules.
    #[serde(other)]
    #[value(skip)]
    Unknown,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Online => "online",
            Mode::Offline => "offline",
            Mode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a restore of the snapshot can promise, as the snapshot records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Read with the services stopped and the volumes detached.
    Consistent,
    /// Read from a CSI snapshot of the live volume: as after a power cut.
    CrashConsistent,
    /// Read live while services wrote, or files changed during the read: files may be torn.
    Inconsistent,
    /// A label this version does not know (a newer one wrote it): treated as inconsistent,
    /// because it promises nothing this version can check.
    #[serde(other)]
    #[value(skip)]
    Unknown,
}

impl Consistency {
    pub fn as_str(&self) -> &'static str {
        match self {
            Consistency::Consistent => "consistent",
            Consistency::CrashConsistent => "crash-consistent",
            Consistency::Inconsistent => "inconsistent",
            Consistency::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Bytes of the store's index the push read: index objects in full, and of consolidated
    /// tables only the header and the pages its lookups needed.
    #[serde(default)]
    pub index_bytes_read: u64,
    /// Snapshot objects the push read to find its parent: those no catalogue holds (written
    /// since the last prune), not every snapshot of the store.
    #[serde(default)]
    pub snapshot_objects_read: u64,
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
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
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

    #[test]
    fn mode_and_consistency_read_back_and_unknown_labels_still_parse() {
        for m in [Mode::Online, Mode::Offline] {
            let v = serde_json::to_value(m).unwrap();
            assert_eq!(v, m.as_str());
            assert_eq!(serde_json::from_value::<Mode>(v).unwrap(), m);
        }
        for c in [Consistency::Consistent, Consistency::CrashConsistent, Consistency::Inconsistent] {
            let v = serde_json::to_value(c).unwrap();
            assert_eq!(v, c.as_str());
            assert_eq!(serde_json::from_value::<Consistency>(v).unwrap(), c);
        }
        // A label written by a newer version does not make the snapshot unreadable.
        assert_eq!(serde_json::from_str::<Mode>(r#""standby""#).unwrap(), Mode::Unknown);
        assert_eq!(serde_json::from_str::<Consistency>(r#""app-consistent""#).unwrap(), Consistency::Unknown);
        // The CLI takes the known ones only.
        use clap::ValueEnum;
        assert!(Mode::from_str("online", false).is_ok() && Mode::from_str("unknown", false).is_err());
        assert!(Consistency::from_str("crash-consistent", false).is_ok());
        assert!(Consistency::from_str("unknown", false).is_err());
    }
}
