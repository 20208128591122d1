//! Snapshot catalogues: what prune read of every snapshot, in one object, so that listing the
//! snapshots (a push looking for its parent, `snapshots`, forget) reads one object and lists the
//! `snapshots/` keys instead of reading every snapshot object.
//!
//! A catalogue only repeats immutable objects: a snapshot's id is the hash of its object, so an
//! entry under an id is that snapshot for as long as the id is listed. Which snapshots exist is
//! still decided by the listing of `snapshots/` alone: a forgotten snapshot's entry is ignored,
//! a snapshot written after the catalogue is read on its own. A catalogue that cannot be read is
//! skipped (its snapshots are read one by one) and reported by verify.

use super::crypto::ObjectKind;
use super::id::Id;
use super::snapshot::{Snapshot, snapshot_key};
use super::{Store, check_name};
use anyhow::Context;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

pub const CATALOG_PREFIX: &str = "catalog/";
const VERSION: u32 = 1;
/// zstd level of a catalogue's JSON (snapshots repeat their field names and sources).
const LEVEL: i32 = 3;

pub fn catalog_key(id: &Id) -> String {
    format!("{CATALOG_PREFIX}{id}")
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    /// Earlier catalogues this one replaces (left in place by Object Lock, or by a prune that
    /// stopped before deleting them): a reader skips them.
    #[serde(default)]
    supersedes: Vec<Id>,
    snapshots: Vec<(Id, Snapshot)>,
}

/// The snapshots of the store and how they were found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Oldest first.
    pub snapshots: Vec<(Id, Snapshot)>,
    /// The catalogues present (read or not).
    pub catalogs: Vec<Id>,
    /// Of those, the ones another catalogue supersedes (kept by Object Lock).
    pub superseded: usize,
    /// Snapshots no readable catalogue holds: read on their own.
    pub read_alone: usize,
    /// Catalogue entries of snapshots no longer listed (forgotten since).
    pub stale: usize,
    /// Catalogues that could not be read (damaged, or a newer format): skipped.
    pub unreadable: Vec<(Id, String)>,
}

impl Listing {
    /// Whether a prune should write a new catalogue: one that holds every listed snapshot and
    /// nothing else, and replaces the others.
    pub fn wants_refresh(&self) -> bool {
        let live = self.catalogs.len() - self.superseded - self.unreadable.len();
        self.read_alone > 0 || self.stale > 0 || live != 1
    }
}

impl Store {
    /// Every snapshot, oldest first, read through the catalogues where they can serve.
    pub fn snapshot_listing(&self) -> anyhow::Result<Listing> {
        let listed: Vec<Id> = self
            .backend
            .list("snapshots/")?
            .into_iter()
            .map(|o| {
                Id::parse(o.key.trim_start_matches("snapshots/"))
                    .map_err(|e| anyhow::anyhow!("stray object {} in the store: {e}", o.key))
            })
            .collect::<anyhow::Result<_>>()?;
        let catalogs: Vec<Id> = self
            .backend
            .list(CATALOG_PREFIX)?
            .into_iter()
            .filter_map(|o| Id::parse(o.key.trim_start_matches(CATALOG_PREFIX)).ok())
            .collect();
        let files: Vec<(Id, Result<CatalogFile, String>)> =
            catalogs.par_iter().map(|id| (*id, self.read_catalog(id).map_err(|e| format!("{e:#}")))).collect();
        let superseded: HashSet<Id> =
            files.iter().filter_map(|(_, f)| f.as_ref().ok()).flat_map(|f| f.supersedes.iter().copied()).collect();
        let mut listing = Listing { catalogs, ..Default::default() };
        let mut known: HashMap<Id, Snapshot> = HashMap::new();
        for (id, file) in files {
            match file {
                Ok(f) if !superseded.contains(&id) => known.extend(f.snapshots),
                Ok(_) => listing.superseded += 1,
                Err(e) => {
                    tracing::warn!(catalog = %id.short(), error = %e, "snapshot catalogue unreadable; reading its snapshots one by one");
                    listing.unreadable.push((id, e));
                }
            }
        }
        let listed_set: HashSet<Id> = listed.iter().copied().collect();
        listing.stale = known.keys().filter(|id| !listed_set.contains(id)).count();
        let alone: Vec<Id> = listed.iter().filter(|id| !known.contains_key(id)).copied().collect();
        listing.read_alone = alone.len();
        let read: Vec<(Id, Snapshot)> =
            alone.par_iter().map(|id| Ok((*id, self.read_snapshot(id)?))).collect::<anyhow::Result<_>>()?;
        let mut snaps: Vec<(Id, Snapshot)> =
            listed.into_iter().filter_map(|id| known.remove(&id).map(|s| (id, s))).chain(read).collect();
        snaps.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        listing.snapshots = snaps;
        Ok(listing)
    }

    /// One snapshot object, checked against its name.
    pub fn read_snapshot(&self, id: &Id) -> anyhow::Result<Snapshot> {
        let key = snapshot_key(id);
        let bytes = self.backend.get(&key)?;
        check_name(&bytes, id, || format!("snapshot {}", id.short()))?;
        let bytes = self.open_object(ObjectKind::Snapshot, &key, &bytes)?;
        serde_json::from_slice(&bytes).with_context(|| format!("snapshot {} does not parse", id.short()))
    }

    fn read_catalog(&self, id: &Id) -> anyhow::Result<CatalogFile> {
        let key = catalog_key(id);
        let bytes = self.backend.get(&key)?;
        check_name(&bytes, id, || format!("catalogue {}", id.short()))?;
        let plain = self.open_object(ObjectKind::Catalog, &key, &bytes)?;
        let json = zstd::stream::decode_all(&plain[..])
            .with_context(|| format!("catalogue {} does not decompress", id.short()))?;
        let file: CatalogFile =
            serde_json::from_slice(&json).with_context(|| format!("catalogue {} does not parse", id.short()))?;
        if file.version != VERSION {
            anyhow::bail!(
                "catalogue {} has version {}; this program reads version {VERSION}",
                id.short(),
                file.version
            );
        }
        Ok(file)
    }

    /// Writes a catalogue of `snapshots` that supersedes `old`; returns its id.
    pub fn write_catalog(&self, snapshots: &[(Id, Snapshot)], old: &[Id]) -> anyhow::Result<Id> {
        let file = CatalogFile { version: VERSION, supersedes: old.to_vec(), snapshots: snapshots.to_vec() };
        let json = serde_json::to_vec(&file)?;
        let packed = zstd::bulk::compress(&json, LEVEL)?;
        let bytes = self.seal_object(ObjectKind::Catalog, &packed).into_owned();
        let id = Id::of(&bytes);
        self.put(&catalog_key(&id), &bytes)?;
        Ok(id)
    }

    /// Replaces the catalogues of `listing` by one of its snapshots when they no longer describe
    /// the store; the old ones are deleted unless Object Lock still retains them. Returns
    /// whether a catalogue was written.
    pub fn refresh_catalog(&self, listing: &Listing) -> anyhow::Result<bool> {
        if !listing.wants_refresh() {
            return Ok(false);
        }
        let written = self.write_catalog(&listing.snapshots, &listing.catalogs)?;
        for id in listing.catalogs.iter().filter(|id| **id != written) {
            let key = catalog_key(id);
            if self.retained_until(&key)?.is_none() {
                self.backend.delete(&key)?;
            }
        }
        Ok(true)
    }

    /// Catalogue entries that disagree with the snapshot objects they repeat, and catalogues
    /// that cannot be read: verify's findings.
    pub fn check_catalogs(&self, snapshots: &[(Id, Snapshot)]) -> anyhow::Result<Vec<String>> {
        let by_id: HashMap<&Id, &Snapshot> = snapshots.iter().map(|(id, s)| (id, s)).collect();
        let mut problems = Vec::new();
        for o in self.backend.list(CATALOG_PREFIX)? {
            let name = o.key.trim_start_matches(CATALOG_PREFIX);
            let file = Id::parse(name).map_err(anyhow::Error::msg).and_then(|id| self.read_catalog(&id));
            match file {
                Err(e) => problems.push(format!("catalogue {name:.8} is damaged: {e:#}")),
                Ok(f) => {
                    for (id, snap) in &f.snapshots {
                        if by_id.get(id).is_some_and(|s| *s != snap) {
                            problems.push(format!(
                                "catalogue {name:.8} disagrees with snapshot {}: a prune rewrites it",
                                id.short()
                            ));
                        }
                    }
                }
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::fs::FsBackend;
    use crate::store::keys::{Credentials, Secret};
    use crate::store::push::{Counters, PushOptions, push};
    use crate::store::{InitOptions, crypto::random_key};
    use std::sync::Arc;

    /// A snapshot like `base` of another source, `minutes` later.
    fn snap(store: &Store, base: &Snapshot, source: &str, minutes: i64) -> Id {
        let mut s = base.clone();
        s.source = source.to_string();
        s.time += chrono::Duration::minutes(minutes);
        store.write_snapshot(&s).unwrap().0
    }

    /// A plaintext and an encrypted store, each with a base snapshot (removed from the store)
    /// to copy.
    fn stores() -> Vec<(tempfile::TempDir, Store, Snapshot)> {
        [
            (InitOptions::plaintext(), Credentials::default()),
            (InitOptions::default(), Credentials::given(Secret::Raw(random_key()))),
        ]
        .into_iter()
        .map(|(opts, credentials)| {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src");
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("f"), b"catalogue").unwrap();
            let backend = Arc::new(FsBackend::new(dir.path().join("store")));
            let store = Store::open_or_init(backend, &opts, &credentials).unwrap();
            let out = push(&store, &PushOptions::new(&src), &Counters::default()).unwrap();
            store.backend().delete(&snapshot_key(&out.id)).unwrap();
            (dir, store, out.snapshot)
        })
        .collect()
    }

    #[test]
    fn a_catalogue_serves_the_listing_and_only_new_snapshots_are_read() {
        for (_dir, store, base) in stores() {
            let a = snap(&store, &base, "a", 0);
            let b = snap(&store, &base, "b", 1);
            let first = store.snapshot_listing().unwrap();
            assert_eq!((first.read_alone, first.catalogs.len()), (2, 0));
            assert!(store.refresh_catalog(&first).unwrap());

            let c = snap(&store, &base, "c", 2);
            let l = store.snapshot_listing().unwrap();
            assert_eq!(l.read_alone, 1, "only the snapshot written after the catalogue");
            assert_eq!(l.snapshots.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![a, b, c]);
            let direct: Vec<Snapshot> = [a, b, c].iter().map(|id| store.read_snapshot(id).unwrap()).collect();
            assert_eq!(l.snapshots.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>(), direct);

            assert!(store.refresh_catalog(&l).unwrap());
            let l = store.snapshot_listing().unwrap();
            assert_eq!((l.read_alone, l.catalogs.len(), l.stale), (0, 1, 0), "the old catalogue is gone");
            assert!(!store.refresh_catalog(&l).unwrap(), "nothing to refresh");
            assert!(store.check_catalogs(&l.snapshots).unwrap().is_empty());
        }
    }

    #[test]
    fn a_forgotten_snapshot_is_not_listed_from_the_catalogue() {
        for (_dir, store, base) in stores() {
            let a = snap(&store, &base, "a", 0);
            let b = snap(&store, &base, "b", 1);
            store.refresh_catalog(&store.snapshot_listing().unwrap()).unwrap();
            store.backend().delete(&snapshot_key(&a)).unwrap();
            let l = store.snapshot_listing().unwrap();
            assert_eq!(l.snapshots.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![b]);
            assert_eq!((l.stale, l.read_alone), (1, 0));
            assert!(l.wants_refresh());
        }
    }

    #[test]
    fn a_damaged_catalogue_is_skipped_and_reported() {
        for (_dir, store, base) in stores() {
            let a = snap(&store, &base, "a", 0);
            store.refresh_catalog(&store.snapshot_listing().unwrap()).unwrap();
            let cat = store.snapshot_listing().unwrap().catalogs[0];
            let key = catalog_key(&cat);
            let mut bytes = store.backend().get(&key).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            store.backend().delete(&key).unwrap();
            store.backend().put_if_absent(&key, &bytes).unwrap();
            let l = store.snapshot_listing().unwrap();
            assert_eq!(l.snapshots.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![a], "read on its own");
            assert_eq!((l.read_alone, l.unreadable.len()), (1, 1));
            let problems = store.check_catalogs(&l.snapshots).unwrap();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains("damaged"), "{problems:?}");
            assert!(store.refresh_catalog(&l).unwrap());
            let l = store.snapshot_listing().unwrap();
            assert_eq!((l.read_alone, l.catalogs.len()), (0, 1), "the refresh replaced it");
        }
    }

    #[test]
    fn a_superseded_catalogue_left_behind_is_ignored() {
        for (_dir, store, base) in stores() {
            let a = snap(&store, &base, "a", 0);
            let b = snap(&store, &base, "b", 1);
            let listing = store.snapshot_listing().unwrap();
            // A catalogue that still names a (as if written before a was forgotten and
            // replaced), and a newer one that supersedes it, both present.
            let old = store.write_catalog(&listing.snapshots, &[]).unwrap();
            store.backend().delete(&snapshot_key(&a)).unwrap();
            let mut s = store.read_snapshot(&b).unwrap();
            s.hostname = "elsewhere".into();
            s.time += chrono::Duration::minutes(1);
            let b2 = store.write_snapshot(&s).unwrap().0;
            store.write_catalog(&[(b, store.read_snapshot(&b).unwrap()), (b2, s)], &[old]).unwrap();
            let l = store.snapshot_listing().unwrap();
            assert_eq!(l.snapshots.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![b, b2]);
            assert_eq!((l.read_alone, l.stale, l.catalogs.len()), (0, 0, 2));
        }
    }
}
