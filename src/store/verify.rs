//! Verify: is every snapshot restorable?
//!
//! Structure (always): every index object parses, every indexed pack exists and is long
//! enough, every snapshot's trees are readable (hash checked) and every chunk they reference is
//! in the index. Data (`--read-data [PERCENT]`): packs are read back whole, their hash checked
//! against their name and every blob decompressed and checked against its id. Damage is
//! reported with the snapshots and files it affects.

use super::crypto::ObjectKind;
use super::id::Id;
use super::index::{Index, IndexFile};
use super::pack::{decode_blob, pack_key, parse_pack};
use super::snapshot::Snapshot;
use super::tree::NodeKind;
use super::{BlobReader, Store};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Read back this share of the packs (0 < p <= 100); `None` checks structure only.
    pub read_data_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AffectedSnapshot {
    pub id: String,
    pub time: String,
    pub source: String,
    /// Paths (relative to the snapshot root) that cannot be restored intact.
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub index_objects: usize,
    pub packs_indexed: usize,
    pub packs_read: usize,
    pub blobs_indexed: usize,
    pub blobs_read: usize,
    pub trees_checked: usize,
    /// Packs present but in no index (left by an interrupted or running push; prune removes them).
    pub packs_unindexed: usize,
    pub problems: Vec<String>,
    pub affected: Vec<AffectedSnapshot>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Per-tree result, memoized so a subtree shared by many snapshots is walked once.
type BadPaths = Arc<Vec<String>>;

struct Walker<'a> {
    reader: BlobReader<'a>,
    index: &'a Index,
    damaged: &'a HashSet<Id>,
    memo: Mutex<HashMap<Id, BadPaths>>,
    problems: Mutex<Vec<String>>,
    trees: std::sync::atomic::AtomicUsize,
}

impl Walker<'_> {
    fn bad_blob(&self, id: &Id) -> bool {
        !self.index.contains(id) || self.damaged.contains(id)
    }

    /// Paths below `tree` (relative to it) that cannot be restored; "" means the tree itself.
    fn walk(&self, tree: &Id) -> BadPaths {
        if let Some(r) = self.memo.lock().unwrap().get(tree) {
            return r.clone();
        }
        self.trees.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = match self.reader.read_tree(tree) {
            Err(e) => {
                self.problems.lock().unwrap().push(format!("tree {}: {e:#}", tree.short()));
                vec![String::new()]
            }
            Ok(t) => {
                let per_node: Vec<Vec<String>> = t
                    .nodes
                    .par_iter()
                    .map(|n| {
                        let name = n.name.clone();
                        match n.kind {
                            NodeKind::Dir => match n.subtree {
                                None => vec![name],
                                Some(sub) => self
                                    .walk(&sub)
                                    .iter()
                                    .map(|p| if p.is_empty() { name.clone() } else { format!("{name}/{p}") })
                                    .collect(),
                            },
                            NodeKind::File => {
                                if n.content.iter().any(|c| self.bad_blob(c)) {
                                    vec![name]
                                } else {
                                    vec![]
                                }
                            }
                            NodeKind::Symlink => vec![],
                        }
                    })
                    .collect();
                per_node.into_iter().flatten().collect()
            }
        };
        let result = Arc::new(result);
        self.memo.lock().unwrap().insert(*tree, result.clone());
        result
    }
}

fn selected(pack: &Id, percent: f64, salt: &Id) -> bool {
    if percent >= 100.0 {
        return true;
    }
    let mut h = blake3::Hasher::new();
    h.update(&salt.0);
    h.update(&pack.0);
    let v = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap());
    (v as f64 / u64::MAX as f64) * 100.0 < percent
}

pub fn verify(store: &Store, opts: &VerifyOptions) -> anyhow::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let index = load_index(store, &mut report)?;
    let packs = Packs::of(store, &index)?;
    let mut damaged = check_packs(&index, &packs, &mut report);
    if let Some(percent) = opts.read_data_percent {
        damaged.extend(read_packs(store, &index, &packs, percent, &mut report));
    }
    let snaps = load_snapshots(store, &mut report)?;
    report.problems.extend(store.check_catalogs(&snaps)?);
    check_snapshots(store, &index, &damaged, &snaps, &mut report);
    Ok(report)
}

/// The index objects, one by one, so one damaged object does not hide the rest; the packs a
/// pending prune marked for deletion are still read (see store::prune).
fn load_index(store: &Store, report: &mut VerifyReport) -> anyhow::Result<Index> {
    let backend = store.backend();
    let objects = backend.list("index/")?;
    let loaded: Vec<Result<(Id, IndexFile), String>> = objects
        .par_iter()
        .map(|o| {
            let id = Id::parse(o.key.trim_start_matches("index/")).map_err(|e| format!("{}: {e}", o.key))?;
            let bytes = backend.get(&o.key).map_err(|e| format!("index {}: {e}", id.short()))?;
            if Id::of(&bytes) != id {
                return Err(format!("index {} is damaged: content does not match its name", id.short()));
            }
            store
                .decode_index(ObjectKind::Index, &o.key, &bytes)
                .map(|f| (id, f))
                .map_err(|e| format!("index {} is damaged: {e:#}", id.short()))
        })
        .collect();
    let mut files = Vec::new();
    for r in loaded {
        match r {
            Ok(f) => files.push(f),
            Err(p) => report.problems.push(p),
        }
    }
    let mut index = Index::from_files(files, store.crypto().overhead());
    match store.doomed_packs() {
        Ok(doomed) => {
            for (pack, entries) in doomed {
                index.add_doomed_pack(pack, &entries);
            }
        }
        Err(e) => report.problems.push(format!("prune plans: {e:#}")),
    }
    report.index_objects = index.files.len();
    report.packs_indexed = index.packs.len();
    report.blobs_indexed = index.blob_count();
    Ok(index)
}

/// The packs as the index describes them and as the backend holds them.
struct Packs {
    /// Sizes of the packs the backend holds.
    present: HashMap<Id, u64>,
    /// The blobs the index places in each pack.
    blobs: HashMap<Id, Vec<Id>>,
    /// How long each pack must be to hold its indexed blobs.
    end: HashMap<Id, u64>,
    /// The indexed packs, sorted.
    indexed: Vec<Id>,
}

impl Packs {
    fn of(store: &Store, index: &Index) -> anyhow::Result<Packs> {
        let present = store
            .backend()
            .list("packs/")?
            .into_iter()
            .filter_map(|o| Some((Id::parse(o.key.rsplit('/').next()?).ok()?, o.size)))
            .collect();
        let mut end: HashMap<Id, u64> = HashMap::new();
        let mut blobs: HashMap<Id, Vec<Id>> = HashMap::new();
        for (id, loc) in index.iter() {
            let p = index.pack_id(loc);
            let e = end.entry(p).or_default();
            *e = (*e).max((loc.offset + loc.length) as u64);
            blobs.entry(p).or_default().push(*id);
        }
        let mut indexed: Vec<Id> = index.packs.to_vec();
        indexed.sort();
        Ok(Packs { present, blobs, end, indexed })
    }

    fn blobs(&self, pack: &Id) -> &[Id] {
        self.blobs.get(pack).map(|v| v.as_slice()).unwrap_or(&[])
    }
}

/// Every indexed pack present and long enough; returns the blobs of those that are not.
fn check_packs(index: &Index, packs: &Packs, report: &mut VerifyReport) -> HashSet<Id> {
    let mut damaged: HashSet<Id> = HashSet::new();
    for p in &packs.indexed {
        let blobs = packs.blobs(p);
        match packs.present.get(p) {
            // Deleted by a prune that has not yet removed its plan: only a snapshot that
            // needs it makes it a problem (reported by check_snapshots).
            None if index.is_doomed_pack(p) => damaged.extend(blobs.iter().copied()),
            None => {
                report.problems.push(format!("pack {} is missing ({} blobs lost)", p.short(), blobs.len()));
                damaged.extend(blobs.iter().copied());
            }
            Some(&size) if size < packs.end.get(p).copied().unwrap_or(0) => {
                report.problems.push(format!("pack {} is truncated ({size} bytes)", p.short()));
                damaged.extend(blobs.iter().copied());
            }
            _ => {}
        }
    }
    report.packs_unindexed = packs.present.keys().filter(|p| !index.contains_pack(p)).count();
    damaged
}

/// Reads `percent` of the present packs back whole (a random share, different each run):
/// each pack's hash against its name, its trailer, every blob against its id. Returns the
/// blobs found damaged.
fn read_packs(store: &Store, index: &Index, packs: &Packs, percent: f64, report: &mut VerifyReport) -> Vec<Id> {
    let salt = Id::random();
    let chosen: Vec<&Id> =
        packs.indexed.iter().filter(|p| packs.present.contains_key(*p) && selected(p, percent, &salt)).collect();
    let results: Vec<PackRead> = chosen.par_iter().map(|p| read_pack(store, index, p, packs.blobs(p))).collect();
    report.packs_read = chosen.len();
    let mut damaged = Vec::new();
    for r in results {
        report.problems.extend(r.problems);
        damaged.extend(r.bad);
        report.blobs_read += r.read;
    }
    damaged
}

struct PackRead {
    problems: Vec<String>,
    bad: Vec<Id>,
    read: usize,
}

fn read_pack(store: &Store, index: &Index, p: &Id, blobs: &[Id]) -> PackRead {
    let bytes = match store.backend().get(&pack_key(p)) {
        Ok(b) => b,
        Err(e) => return PackRead { problems: vec![format!("pack {}: {e}", p.short())], bad: blobs.to_vec(), read: 0 },
    };
    let mut out = PackRead { problems: Vec::new(), bad: Vec::new(), read: 0 };
    if Id::of(&bytes) != *p {
        out.problems.push(format!("pack {} is damaged: content does not match its name", p.short()));
    }
    if let Err(e) = parse_pack(store.crypto(), &bytes) {
        out.problems.push(format!("pack {} has a damaged trailer: {e:#}", p.short()));
    }
    for id in blobs {
        let e = index.entry(id).expect("from the index");
        let (s, t) = (e.offset as usize, (e.offset + e.length) as usize);
        let ok = t <= bytes.len() && decode_blob(store.crypto(), &e, &bytes[s..t]).is_ok();
        out.read += 1;
        if !ok {
            out.problems.push(format!("blob {} in pack {} is damaged", id.short(), p.short()));
            out.bad.push(*id);
        }
    }
    out
}

/// Every snapshot object, oldest first; a damaged one is a problem, not an error.
fn load_snapshots(store: &Store, report: &mut VerifyReport) -> anyhow::Result<Vec<(Id, Snapshot)>> {
    let backend = store.backend();
    let mut snaps: Vec<(Id, Snapshot)> = Vec::new();
    for o in backend.list("snapshots/")? {
        let name = o.key.trim_start_matches("snapshots/").to_string();
        match Id::parse(&name).map_err(anyhow::Error::msg).and_then(|id| Ok((id, store.read_snapshot(&id)?))) {
            Ok(s) => snaps.push(s),
            Err(e) => report.problems.push(format!("snapshot {name:.8} cannot be read: {e:#}")),
        }
    }
    snaps.sort_by_key(|a| a.1.time);
    report.snapshots = snaps.len();
    Ok(snaps)
}

/// Every snapshot's trees readable and every chunk indexed and undamaged; a snapshot that is
/// not is reported with the paths that cannot be restored intact.
fn check_snapshots(
    store: &Store,
    index: &Index,
    damaged: &HashSet<Id>,
    snaps: &[(Id, Snapshot)],
    report: &mut VerifyReport,
) {
    let walker = Walker {
        reader: BlobReader::new(store, index),
        index,
        damaged,
        memo: Mutex::new(HashMap::new()),
        problems: Mutex::new(Vec::new()),
        trees: Default::default(),
    };
    for (id, snap) in snaps {
        let bad = walker.walk(&snap.tree);
        if bad.is_empty() {
            continue;
        }
        let mut paths: Vec<String> =
            bad.iter().map(|p| if p.is_empty() { "/".to_string() } else { p.clone() }).collect();
        paths.sort();
        paths.dedup();
        report.problems.push(format!(
            "snapshot {} ({}, {}): {} path(s) cannot be restored intact",
            id.short(),
            snap.time.format("%Y-%m-%d %H:%M:%S"),
            snap.source,
            paths.len()
        ));
        report.affected.push(AffectedSnapshot {
            id: id.to_hex(),
            time: snap.time.to_rfc3339(),
            source: snap.source.clone(),
            paths,
        });
    }
    report.trees_checked = walker.trees.load(std::sync::atomic::Ordering::Relaxed);
    let mut tree_problems = walker.problems.into_inner().unwrap();
    tree_problems.sort();
    tree_problems.dedup();
    report.problems.extend(tree_problems);
}
