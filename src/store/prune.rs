//! Prune: delete packs no snapshot references and repack packs that are mostly unused, safely
//! while pushes run.
//!
//! The danger is a push that read the index before the prune and reuses a chunk of a pack the
//! prune deletes: its snapshot would reference a chunk that is gone. Prune therefore deletes in
//! two phases (a plan is the unit of both):
//!
//! 1. **Mark.** With the index and every snapshot read (any failure: nothing is marked), the
//!    prune selects the packs to delete (no referenced blob) and to repack (the most unused
//!    ones, until what stays unreferenced is at most `max_unused` of what is referenced). It writes the plan, `prune/<plan>.index`
//!    (the marked packs' entries) and `prune/<plan>.plan`, *before* touching the index: from
//!    then on pushes read the marked packs as "doomed" (readable, never reused, never adopted as
//!    unindexed packs). It copies the referenced blobs of the packs to repack into new packs,
//!    rewrites the index without the marked packs (new objects that supersede the old ones,
//!    then the old ones deleted), and finally lists the live push locks: the holders that may
//!    still use the old index. They are written to `prune/<plan>.ready`.
//! 2. **Delete.** Once none of those holders is alive (ended, or its lock expired: a killed
//!    push never blocks a prune for longer than the lock's time to live), the snapshots written
//!    since the mark are walked. A marked pack that holds a blob one of them references, and
//!    that the index does not offer elsewhere, is put back into the index; the others are
//!    deleted, then the plan.
//!
//! A prune waits for phase 2 up to `wait`; otherwise the next prune (or the next maintenance
//! run) completes it. Reads (restore, verify) see the doomed packs meanwhile, so every
//! snapshot stays restorable throughout. One prune runs at a time (a `prune` lock).

use super::audit::{self, Action, AuditRecord, Outcome};
use super::backend::BackendError;
use super::catalog::Listing;
use super::crypto::ObjectKind;
use super::id::Id;
use super::index::{Index, IndexFile};
use super::lock::{self, Lock};
use super::pack::{BlobKind, PackBuilder, PackEntry, pack_key, pack_len};
use super::snapshot::Snapshot;
use super::{BlobReader, Store};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

pub const PLAN_PREFIX: &str = "prune/";

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub dry_run: bool,
    /// Repack (most unused packs first) until the unreferenced bytes left are at most this
    /// share of the referenced ones (0..=1; restic's --max-unused).
    pub max_unused: f64,
    /// How long to wait for pushes that started before the mark; `None` leaves the deletion to
    /// the next prune when any runs.
    pub wait: Option<Duration>,
    pub ttl: Duration,
    pub reason: String,
    pub job: Option<String>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            max_unused: 0.05,
            wait: None,
            ttl: lock::ttl_from_env(),
            reason: "manual".into(),
            job: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: usize,
    pub packs: usize,
    pub blobs_used: usize,
    /// Packs with no referenced blob.
    pub packs_unused: usize,
    /// Packs repacked (or that would be).
    pub packs_repack: usize,
    /// Referenced bytes (stored, in packs this prune keeps or repacks).
    pub bytes_used: u64,
    /// Unreferenced bytes left in kept packs (at most `max_unused` of `bytes_used`).
    pub bytes_unused_left: u64,
    /// Packs deleted by this run (from its own plan and earlier ones).
    pub packs_deleted: usize,
    pub bytes_reclaimed: u64,
    /// Bytes written into new packs by repacking.
    pub bytes_repacked: u64,
    /// New packs written by repacking.
    pub packs_written: usize,
    /// Marked packs put back because a snapshot written meanwhile uses them.
    pub packs_kept_for_new_snapshots: usize,
    /// Plans whose deletion waits for running pushes.
    pub plans_pending: usize,
    pub bytes_pending: u64,
    pub index_objects_before: usize,
    pub index_objects_after: usize,
    pub locks_removed: usize,
    /// Packs no index listed (left by a push that died before indexing them), indexed now so
    /// this prune judges them like any pack.
    pub packs_adopted: usize,
    /// Bytes of packs the index lists, after this run.
    pub store_bytes: u64,
    /// Object Lock: unused packs kept because their retention has not passed.
    pub packs_retained: usize,
    /// ... the earliest time one of them may go.
    pub retained_until: Option<DateTime<Utc>>,
    /// Object Lock: objects whose retention this run extended.
    pub retention_extended: usize,
    /// A new snapshot catalogue was written (snapshots were written or forgotten since the
    /// last one): what pushes list their parents from.
    #[serde(default)]
    pub catalog_written: bool,
    pub messages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Plan {
    id: Id,
    created: DateTime<Utc>,
    /// The prune that wrote it.
    holder: Id,
    /// Snapshots that existed at the mark.
    snapshots: Vec<Id>,
    packs: Vec<Id>,
    bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ready {
    /// Lock holders alive after the index was rewritten.
    holders: Vec<Id>,
}

fn key(plan: &Id, ext: &str) -> String {
    format!("{PLAN_PREFIX}{plan}.{ext}")
}

fn get_json<T: for<'de> Deserialize<'de>>(store: &Store, kind: ObjectKind, k: &str) -> anyhow::Result<Option<T>> {
    match store.backend().get(k) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&store.open_object(kind, k, &b)?).with_context(|| format!("{k} does not parse"))?,
        )),
        Err(BackendError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every blob the given snapshots reference (trees and chunks). Any tree that cannot be read
/// fails the whole walk: prune deletes nothing on partial knowledge.
fn referenced(store: &Store, index: &Index, snaps: &[&(Id, Snapshot)]) -> anyhow::Result<HashSet<Id>> {
    let reader = BlobReader::new(store, index);
    let mut used = HashSet::new();
    let mut stack: Vec<(Id, Id)> = snaps.iter().map(|(sid, s)| (*sid, s.tree)).collect();
    while let Some((sid, tree_id)) = stack.pop() {
        if !used.insert(tree_id) {
            continue;
        }
        let tree = reader.read_tree(&tree_id).with_context(|| {
            format!(
                "cannot read tree {} of snapshot {}: nothing deleted; run `push-operator verify` to see the damage",
                tree_id.short(),
                sid.short()
            )
        })?;
        for node in &tree.nodes {
            for c in &node.content {
                if !index.contains(c) {
                    bail!(
                        "snapshot {} references chunk {} that no index lists: nothing deleted; run `push-operator verify`",
                        sid.short(),
                        c.short()
                    );
                }
                used.insert(*c);
            }
            if let Some(sub) = node.subtree {
                stack.push((sid, sub));
            }
        }
    }
    Ok(used)
}

/// Runs a prune; see the module documentation.
pub fn prune(store: &Store, opts: &PruneOptions) -> anyhow::Result<PruneReport> {
    if !(0.0..=1.0).contains(&opts.max_unused) {
        bail!("--max-unused must be between 0 and 100 percent");
    }
    let mut report = PruneReport { dry_run: opts.dry_run, ..Default::default() };
    let lock = Lock::acquire(store, super::lock::LockKind::Prune, opts.job.as_deref().unwrap_or(""), opts.ttl)?;
    let me = lock.info();
    let now = Utc::now();
    if let Some(other) = lock::live_holders(store, now)?.into_values().find(|l| {
        l.kind == super::lock::LockKind::Prune && l.holder != me.holder && (l.since, l.holder) < (me.since, me.holder)
    }) {
        bail!(
            "another prune is running on this store (host {}, pid {}, since {}); it ends, or its lock expires at {} at the latest: try again later",
            other.host,
            other.pid,
            other.since.format("%Y-%m-%d %H:%M:%S UTC"),
            other.expires.format("%H:%M:%S UTC")
        );
    }
    let result = run(store, opts, &lock, &mut report);
    let result_name = match (&result, opts.dry_run) {
        (Err(_), _) => Outcome::Failed,
        (Ok(()), true) => Outcome::DryRun,
        (Ok(()), false) if report.plans_pending > 0 => Outcome::Pending,
        _ => Outcome::Ok,
    };
    let mut rec = AuditRecord::new(Action::Prune, result_name)
        .detail("packs_deleted", report.packs_deleted)
        .detail("packs_repacked", report.packs_repack)
        .detail("bytes_reclaimed", report.bytes_reclaimed)
        .detail("bytes_pending", report.bytes_pending)
        .detail("plans_pending", report.plans_pending)
        .detail("store_bytes", report.store_bytes);
    rec.reason = opts.reason.clone();
    rec.job = opts.job.clone();
    if let Err(e) = &result {
        rec.error = Some(format!("{e:#}"));
    }
    let appended = audit::append(store, &rec);
    drop(lock);
    result?;
    appended?;
    Ok(report)
}

fn run(store: &Store, opts: &PruneOptions, lock: &Lock, report: &mut PruneReport) -> anyhow::Result<()> {
    let me = lock.holder();
    if !opts.dry_run {
        // Adopt before the expired locks go: a dead push's lock is what makes pushes look.
        let mut index = store.load_index().context("cannot read the index: nothing deleted")?;
        report.packs_adopted = store.adopt_unindexed_packs(&mut index)?;
        drop(index);
        report.locks_removed = lock::remove_expired(store, Utc::now(), opts.ttl)?;
    }
    let pending_packs = settle_plans(store, opts, report)?;
    let seen = Seen::read(store, report)?;
    if !opts.dry_run {
        lock.check()?;
        report.catalog_written = store.refresh_catalog(&seen.listing)?;
    }
    let overhead = store.crypto().overhead();
    let d = decide(&seen.entries_of, &pending_packs, |p, e| seen.reads_from(p, e), opts.max_unused, overhead);
    report.store_bytes = d.store_bytes;
    let unused: HashSet<Id> = d.delete.iter().copied().collect();
    let delete = hold_retained(store, d.delete, &seen.entries_of, report)?;
    let repack = hold_retained(store, d.repack, &seen.entries_of, report)?;
    if let Some(until) = report.retained_until {
        report.messages.push(format!(
            "{} pack(s) no snapshot needs are kept by Object Lock (the first until {}); a later prune deletes them",
            report.packs_retained,
            until.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    report.packs_unused = delete.len();
    report.packs_repack = repack.len();
    report.bytes_unused_left = d.unused_left;
    report.bytes_used = d.used;
    let marked: Vec<Id> = delete.iter().chain(&repack).copied().collect();
    if !opts.dry_run {
        // Packs with a referenced blob that stay: not the unused ones (retained or not).
        let live_packs = seen.entries_of.keys().filter(|p| !unused.contains(p) && !marked.contains(p)).map(pack_key);
        let live_snapshots = seen.listing.snapshots.iter().map(|(id, _)| super::snapshot::snapshot_key(id));
        let index = seen.files.iter().map(|(id, _)| format!("index/{id}"));
        extend_retention(store, live_packs.chain(live_snapshots).chain(index), report)?;
    }
    // Consolidated into one table as soon as there are two objects: what pushes read in part.
    let consolidate = seen.files.len() > 1;
    if opts.dry_run || (marked.is_empty() && !consolidate) {
        report.index_objects_after = seen.files.len();
        if opts.dry_run {
            report.bytes_reclaimed = marked.iter().map(|p| pack_len(&seen.entries_of[p], overhead)).sum();
        }
        return Ok(());
    }
    let plan = mark(store, me, &seen, &marked)?;
    crate::test_hooks::crashpoint("prune", 1);
    let new_packs = repack_packs(store, &seen, &repack, report)?;
    rewrite_index(store, lock, &seen, &marked, &new_packs, report)?;
    crate::test_hooks::crashpoint("prune", 2);
    if marked.is_empty() {
        return Ok(());
    }
    delete_when_unused(store, lock, opts, me, &plan, report)
}

/// Earlier plans: finishes those whose pushes ended and drops those never completed; returns
/// the packs of the plans still pending (left alone by this run).
fn settle_plans(store: &Store, opts: &PruneOptions, report: &mut PruneReport) -> anyhow::Result<HashSet<Id>> {
    let plans = list_plans(store)?;
    let live = lock::live_holders(store, Utc::now())?;
    let mut pending_packs: HashSet<Id> = HashSet::new();
    for (plan, ready) in &plans {
        match ready {
            Some(r) if r.holders.iter().all(|h| !live.contains_key(h)) && !opts.dry_run => {
                finish(store, plan, report)?;
            }
            None if !live.contains_key(&plan.holder) && !opts.dry_run => {
                // Its prune died before the plan was complete: the marked packs go back to
                // being ordinary packs (indexed, or adopted by the next push).
                report
                    .messages
                    .push(format!("plan {} was left incomplete by a stopped prune; dropped", plan.id.short()));
                drop_plan(store, &plan.id)?;
            }
            _ => {
                pending_packs.extend(plan.packs.iter().copied());
                report.plans_pending += 1;
                report.bytes_pending += plan.bytes;
            }
        }
    }
    Ok(pending_packs)
}

/// Everything the store has, read in full before anything is decided.
struct Seen {
    files: Vec<(Id, IndexFile)>,
    /// One index serves reading (it holds the doomed packs of pending plans too) and the
    /// question "which pack is this blob read from": live entries come first, so a blob in a
    /// live pack is never located in a doomed one.
    read_index: Index,
    /// The snapshots, and the catalogues they were listed through.
    listing: Listing,
    /// Every blob a snapshot references.
    used: HashSet<Id>,
    entries_of: BTreeMap<Id, Vec<PackEntry>>,
}

impl Seen {
    fn read(store: &Store, report: &mut PruneReport) -> anyhow::Result<Seen> {
        let files = store.load_index_files().context("cannot read the index: nothing deleted")?;
        report.index_objects_before = files.len();
        let read_index = store.index_of(files.clone()).context("cannot read the index: nothing deleted")?;
        let listing = store.snapshot_listing().context("cannot read the snapshots: nothing deleted")?;
        report.snapshots = listing.snapshots.len();
        let used = referenced(store, &read_index, &listing.snapshots.iter().collect::<Vec<_>>())?;
        report.blobs_used = used.len();
        let mut entries_of: BTreeMap<Id, Vec<PackEntry>> = BTreeMap::new();
        for (_, f) in &files {
            for (pack, entries) in &f.packs {
                entries_of.entry(*pack).or_insert_with(|| entries.clone());
            }
        }
        report.packs = entries_of.len();
        Ok(Seen { files, read_index, listing, used, entries_of })
    }

    /// Whether blob `e` of `pack` is referenced and read from this pack (other copies of a
    /// blob are unused).
    fn reads_from(&self, pack: &Id, e: &PackEntry) -> bool {
        self.used.contains(&e.id) && self.read_index.get(&e.id).is_some_and(|l| self.read_index.pack_id(l) == *pack)
    }
}

/// What a prune does with the packs: delete the ones without a referenced blob, repack the
/// most wasteful until what stays unreferenced is at most `max_unused` of what is referenced.
#[derive(Debug, Default, PartialEq)]
struct Decision {
    delete: Vec<Id>,
    repack: Vec<Id>,
    /// Stored bytes of the packs that stay as they are.
    store_bytes: u64,
    /// Unreferenced bytes left in the packs that stay.
    unused_left: u64,
    /// Referenced bytes.
    used: u64,
}

/// The decision (pure). `referenced(pack, entry)`: whether the blob counts as referenced in
/// that pack; the packs in `pending` belong to an earlier plan and are left alone. Repacking
/// the most wasteful packs first is restic's `--max-unused`: a few scattered changes leave
/// many packs a little unused, and they add up.
fn decide(
    entries_of: &BTreeMap<Id, Vec<PackEntry>>,
    pending: &HashSet<Id>,
    referenced: impl Fn(&Id, &PackEntry) -> bool,
    max_unused: f64,
    overhead: usize,
) -> Decision {
    let mut d = Decision::default();
    let mut partial: Vec<(Id, u64, u64, u64)> = Vec::new(); // (pack, unused, used, size)
    for (pack, entries) in entries_of.iter().filter(|(p, _)| !pending.contains(p)) {
        let total: u64 = entries.iter().map(|e| e.length as u64).sum();
        let used_bytes: u64 = entries.iter().filter(|e| referenced(pack, e)).map(|e| e.length as u64).sum();
        if used_bytes == 0 {
            d.delete.push(*pack);
        } else {
            d.used += used_bytes;
            partial.push((*pack, total - used_bytes, used_bytes, pack_len(entries, overhead)));
        }
    }
    partial.sort_by(|a, b| {
        let fa = a.1 as f64 / (a.1 + a.2) as f64;
        let fb = b.1 as f64 / (b.1 + b.2) as f64;
        fb.total_cmp(&fa).then(a.0.cmp(&b.0))
    });
    d.unused_left = partial.iter().map(|p| p.1).sum();
    for (pack, unused, _, size) in partial {
        if unused > 0 && d.unused_left as f64 > max_unused * d.used as f64 {
            d.repack.push(pack);
            d.unused_left -= unused;
        } else {
            d.store_bytes += size;
        }
    }
    d
}

/// Phase 1: the plan and the marked packs' entries, written before the index changes.
fn mark(store: &Store, me: Id, seen: &Seen, marked: &[Id]) -> anyhow::Result<Plan> {
    let overhead = store.crypto().overhead();
    let plan = Plan {
        id: Id::random(),
        created: Utc::now(),
        holder: me,
        snapshots: seen.listing.snapshots.iter().map(|(id, _)| *id).collect(),
        packs: marked.to_vec(),
        bytes: marked.iter().map(|p| pack_len(&seen.entries_of[p], overhead)).sum(),
    };
    if !marked.is_empty() {
        let doomed =
            IndexFile { supersedes: vec![], packs: marked.iter().map(|p| (*p, seen.entries_of[p].clone())).collect() };
        store.backend().put_if_absent(&key(&plan.id, "index"), &store.encode_index(ObjectKind::PruneIndex, &doomed))?;
        let plan_bytes = serde_json::to_vec_pretty(&plan)?;
        store
            .backend()
            .put_if_absent(&key(&plan.id, "plan"), &store.seal_object(ObjectKind::PrunePlan, &plan_bytes))?;
    }
    Ok(plan)
}

/// The referenced blobs of the packs to repack, moved to new packs (stored bytes copied as
/// they are, hash checked on the way); the new packs are indexed as they are written.
fn repack_packs(
    store: &Store,
    seen: &Seen,
    repack: &[Id],
    report: &mut PruneReport,
) -> anyhow::Result<Vec<(Id, Vec<PackEntry>)>> {
    let mut new_packs: Vec<(Id, Vec<PackEntry>)> = Vec::new();
    let mut builder = PackBuilder::new(0);
    let mut kinds_seen: Option<BlobKind> = None;
    for pack in repack {
        let bytes = store.backend().get(&pack_key(pack)).with_context(|| format!("repacking pack {}", pack.short()))?;
        if Id::of(&bytes) != *pack {
            return Err(super::Damaged(format!(
                "pack {} is damaged (content does not match its name): nothing deleted; run verify",
                pack.short()
            ))
            .into());
        }
        for e in seen.entries_of[pack].iter().filter(|e| seen.reads_from(pack, e)) {
            let stored = &bytes[e.offset as usize..(e.offset + e.length) as usize];
            super::pack::decode_blob(store.crypto(), e, stored)
                .with_context(|| format!("blob {} in pack {}", e.id.short(), pack.short()))?;
            if kinds_seen.is_some_and(|k| k != e.kind) || builder.len() >= store.config.pack_size as usize {
                flush(store, &mut builder, &mut new_packs, report)?;
            }
            kinds_seen = Some(e.kind);
            builder.add(e.kind, e.compression, e.id, stored, e.raw_length as usize);
        }
    }
    flush(store, &mut builder, &mut new_packs, report)?;
    Ok(new_packs)
}

/// The new index: every pack but the marked ones, in a few new objects; then the objects read
/// before go. (A reader that lists in between sees both: the same entries twice, or the marked
/// packs as usable; the pushes that can have seen that are alive now, so phase 2 waits for them.)
fn rewrite_index(
    store: &Store,
    lock: &Lock,
    seen: &Seen,
    marked: &[Id],
    new_packs: &[(Id, Vec<PackEntry>)],
    report: &mut PruneReport,
) -> anyhow::Result<()> {
    let marked_set: HashSet<Id> = marked.iter().copied().collect();
    let keep: Vec<(Id, Vec<PackEntry>)> =
        seen.entries_of.iter().filter(|(p, _)| !marked_set.contains(p)).map(|(p, e)| (*p, e.clone())).collect();
    report.store_bytes += new_packs.iter().map(|(_, e)| pack_len(e, store.crypto().overhead())).sum::<u64>();
    // With Object Lock, old index objects may outlive this prune: the last new object
    // supersedes the ones read above and those they superseded that are still there (an
    // earlier prune could not delete them yet: they must never come back), and they are
    // deleted once retention allows. Objects written by pushes meanwhile are left alone.
    let locked = store.config.object_lock.is_some();
    let old: Vec<Id> = if locked {
        let read: HashSet<Id> =
            seen.files.iter().flat_map(|(id, f)| std::iter::once(*id).chain(f.supersedes.iter().copied())).collect();
        let present = store.backend().list("index/")?;
        present
            .iter()
            .filter_map(|o| Id::parse(o.key.trim_start_matches("index/")).ok())
            .filter(|id| read.contains(id))
            .collect()
    } else {
        seen.files.iter().map(|(id, _)| *id).collect()
    };
    // One table for everything kept (a push reads it in part, see `table`); it supersedes the
    // objects it replaces, so a reader that still lists them ignores them.
    let mut written = HashSet::new();
    if !keep.is_empty() || locked {
        lock.check()?;
        written.insert(store.write_table(&old, &keep)?.0);
    }
    let mut retained = 0;
    for id in old.iter().filter(|id| !written.contains(id)) {
        let key = format!("index/{id}");
        if store.retained_until(&key)?.is_some() {
            retained += 1;
            continue;
        }
        store.backend().delete(&key)?;
    }
    if retained > 0 {
        report
            .messages
            .push(format!("{retained} superseded index object(s) kept until their Object Lock retention ends"));
    }
    report.index_objects_after = store.backend().list("index/")?.len();
    Ok(())
}

/// Phase 2, now or after a wait, or by a later prune: the pushes that may hold the old view are
/// recorded, and the marked packs are deleted once none of them is alive.
fn delete_when_unused(
    store: &Store,
    lock: &Lock,
    opts: &PruneOptions,
    me: Id,
    plan: &Plan,
    report: &mut PruneReport,
) -> anyhow::Result<()> {
    let holders: Vec<Id> = lock::live_holders(store, Utc::now())?.into_keys().filter(|h| *h != me).collect();
    let ready = serde_json::to_vec(&Ready { holders: holders.clone() })?;
    store.backend().put_if_absent(&key(&plan.id, "ready"), &store.seal_object(ObjectKind::PruneReady, &ready))?;
    let deadline = opts.wait.map(|w| Instant::now() + w);
    loop {
        let live = lock::live_holders(store, Utc::now())?;
        if holders.iter().all(|h| !live.contains_key(h)) {
            return finish(store, plan, report);
        }
        if deadline.is_none_or(|d| Instant::now() >= d) {
            let waiting: Vec<String> = holders
                .iter()
                .filter_map(|h| live.get(h))
                .map(|l| {
                    format!(
                        "{} on {} (pid {}){}",
                        l.kind,
                        l.host,
                        l.pid,
                        if l.purpose.is_empty() { String::new() } else { format!(" for {}", l.purpose) }
                    )
                })
                .collect();
            report.plans_pending += 1;
            report.bytes_pending += plan.bytes;
            report.messages.push(format!(
                "{} pack(s) marked; deleted by the next prune once these end: {}",
                plan.packs.len(),
                waiting.join(", ")
            ));
            return Ok(());
        }
        lock.check()?;
        std::thread::sleep((opts.ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(10)));
    }
}

fn flush(
    store: &Store,
    builder: &mut PackBuilder,
    out: &mut Vec<(Id, Vec<PackEntry>)>,
    report: &mut PruneReport,
) -> anyhow::Result<()> {
    if builder.is_empty() {
        return Ok(());
    }
    let sealed = std::mem::replace(builder, PackBuilder::new(0)).seal(store.crypto());
    store.put(&pack_key(&sealed.id), &sealed.bytes)?;
    report.bytes_repacked += sealed.bytes.len() as u64;
    report.packs_written += 1;
    // Indexed at once: the new packs must never look like leftovers.
    store.write_index(&IndexFile { supersedes: vec![], packs: vec![(sealed.id, sealed.entries.clone())] })?;
    out.push((sealed.id, sealed.entries));
    Ok(())
}

fn list_plans(store: &Store) -> anyhow::Result<Vec<(Plan, Option<Ready>)>> {
    let objects = store.backend().list(PLAN_PREFIX)?;
    let names: BTreeSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let mut out = Vec::new();
    for o in &objects {
        let Some(stem) = o.key.strip_suffix(".plan") else { continue };
        let Some(plan) = get_json::<Plan>(store, ObjectKind::PrunePlan, &o.key)? else { continue };
        let ready = if names.contains(format!("{stem}.ready").as_str()) {
            get_json::<Ready>(store, ObjectKind::PruneReady, &format!("{stem}.ready"))?
        } else {
            None
        };
        out.push((plan, ready));
    }
    out.sort_by_key(|(p, _)| p.created);
    Ok(out)
}

/// Object Lock: the packs of `packs` whose retention has not passed stay as they are (a later
/// prune takes them); returns the others.
fn hold_retained(
    store: &Store,
    packs: Vec<Id>,
    entries_of: &BTreeMap<Id, Vec<PackEntry>>,
    report: &mut PruneReport,
) -> anyhow::Result<Vec<Id>> {
    if store.config.object_lock.is_none() {
        return Ok(packs);
    }
    let mut out = Vec::with_capacity(packs.len());
    for pack in packs {
        match store.retained_until(&pack_key(&pack))? {
            Some(until) => {
                report.packs_retained += 1;
                report.store_bytes += pack_len(&entries_of[&pack], store.crypto().overhead());
                report.retained_until = Some(report.retained_until.map_or(until, |t| t.min(until)));
            }
            None => out.push(pack),
        }
    }
    Ok(out)
}

/// Object Lock: what live snapshots use (and the store's keys and config) is kept retained for
/// at least half the period more; what this prune marked is not extended.
fn extend_retention(store: &Store, keys: impl Iterator<Item = String>, report: &mut PruneReport) -> anyhow::Result<()> {
    let Some(lock) = store.config.object_lock else { return Ok(()) };
    let threshold = Utc::now() + chrono::Duration::seconds((lock.period_seconds / 2) as i64);
    let slots = store.backend().list(super::keys::KEYS_PREFIX)?.into_iter().map(|o| o.key);
    for key in keys.chain(slots).chain(["config".to_string()]) {
        match store.backend().retention(&key)? {
            Some(r) if r.until >= threshold => {}
            _ => match store.backend().set_retention(&key, &lock.from_now()) {
                Ok(()) => report.retention_extended += 1,
                Err(BackendError::NotFound(_)) => {} // forgotten meanwhile
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(())
}

fn drop_plan(store: &Store, plan: &Id) -> anyhow::Result<()> {
    for ext in ["ready", "plan", "index"] {
        store.backend().delete(&key(plan, ext))?;
    }
    Ok(())
}

/// Phase 2 of a plan whose pushes have all ended.
fn finish(store: &Store, plan: &Plan, report: &mut PruneReport) -> anyhow::Result<()> {
    let doomed: HashMap<Id, Vec<PackEntry>> = match store.backend().get(&key(&plan.id, "index")) {
        Ok(b) => store.decode_index(ObjectKind::PruneIndex, &key(&plan.id, "index"), &b)?.packs.into_iter().collect(),
        Err(BackendError::NotFound(_)) => HashMap::new(),
        Err(e) => return Err(e.into()),
    };
    let index = store.load_index().context("cannot read the index: nothing deleted")?;
    let seen: HashSet<Id> = plan.snapshots.iter().copied().collect();
    let snaps = store.list_snapshots().context("cannot read the snapshots: nothing deleted")?;
    let new: Vec<&(Id, Snapshot)> = snaps.iter().filter(|(id, _)| !seen.contains(id)).collect();
    let used = referenced(store, &index, &new)?;
    let mut resurrect = Vec::new();
    let mut delete = Vec::new();
    for pack in &plan.packs {
        let Some(entries) = doomed.get(pack) else { continue };
        // Needed: a new snapshot uses a blob that no live pack offers. Listed live: an index
        // object names the pack (add_doomed_pack leaves such packs usable).
        let needed = entries.iter().any(|e| used.contains(&e.id) && !index.usable(&e.id));
        if needed || (index.contains_pack(pack) && !index.is_doomed_pack(pack)) {
            resurrect.push((*pack, entries.clone()));
        } else {
            delete.push((*pack, pack_len(entries, store.crypto().overhead())));
        }
    }
    if !resurrect.is_empty() {
        report.packs_kept_for_new_snapshots += resurrect.len();
        report
            .messages
            .push(format!("{} marked pack(s) kept: snapshots written during the prune use them", resurrect.len()));
        store.write_index(&IndexFile { supersedes: vec![], packs: resurrect.clone() })?;
        report.store_bytes += resurrect.iter().map(|(_, e)| pack_len(e, store.crypto().overhead())).sum::<u64>();
    }
    for (i, (pack, size)) in delete.iter().enumerate() {
        if i == 1 {
            crate::test_hooks::crashpoint("prune", 3);
        }
        if let Some(until) = store.retained_until(&pack_key(pack))? {
            // Not deletable yet (its retention was extended meanwhile): an ordinary pack again,
            // taken by a later prune.
            report.messages.push(format!("pack {} kept by Object Lock until {until}", pack.short()));
            continue;
        }
        store.backend().delete(&pack_key(pack))?;
        report.packs_deleted += 1;
        report.bytes_reclaimed += size;
    }
    drop_plan(store, &plan.id)
}

#[cfg(test)]
mod decide_tests {
    //! The prune decision from fixed packs: what goes, what is repacked, what stays.
    use super::*;
    use crate::store::pack::Compression;

    /// A pack of blobs of these lengths; returns its id and the ids of its blobs.
    fn pack(n: u8, lengths: &[u32]) -> (Id, Vec<PackEntry>) {
        let mut offset = 0;
        let entries = lengths
            .iter()
            .enumerate()
            .map(|(i, &length)| {
                let e = PackEntry {
                    kind: BlobKind::Data,
                    compression: Compression::Raw,
                    id: Id::of(&[n, i as u8]),
                    offset,
                    length,
                    raw_length: length,
                };
                offset += length;
                e
            })
            .collect();
        (Id::of(&[n]), entries)
    }

    /// The decision when the blobs in `used` are referenced (each read from the pack it is in).
    fn decide_with(packs: &[(Id, Vec<PackEntry>)], used: &HashSet<Id>, pending: &[Id], max_unused: f64) -> Decision {
        let entries_of: BTreeMap<Id, Vec<PackEntry>> = packs.iter().cloned().collect();
        let pending: HashSet<Id> = pending.iter().copied().collect();
        decide(&entries_of, &pending, |_, e| used.contains(&e.id), max_unused, 0)
    }

    #[test]
    fn a_pack_without_a_referenced_blob_is_deleted_and_a_full_one_stays() {
        let (a, ea) = pack(1, &[100, 100]);
        let (b, eb) = pack(2, &[100, 100]);
        let used: HashSet<Id> = eb.iter().map(|e| e.id).collect();
        let d = decide_with(&[(a, ea), (b, eb.clone())], &used, &[], 0.05);
        assert_eq!((d.delete, d.repack), (vec![a], vec![]));
        assert_eq!((d.used, d.unused_left), (200, 0));
        assert_eq!(d.store_bytes, pack_len(&eb, 0));
    }

    #[test]
    fn the_most_wasteful_packs_are_repacked_until_the_waste_is_within_max_unused() {
        // Pack 1 is 90% unused, pack 2 50%, pack 3 10%.
        let (p1, e1) = pack(1, &[10, 90]);
        let (p2, e2) = pack(2, &[50, 50]);
        let (p3, e3) = pack(3, &[90, 10]);
        let used: HashSet<Id> = [e1[0].id, e2[0].id, e3[0].id].into();
        let packs = [(p1, e1), (p2, e2), (p3, e3)];
        // 150 bytes referenced; 150 unused. Within 100%: nothing to do.
        let d = decide_with(&packs, &used, &[], 1.0);
        assert!(d.repack.is_empty() && d.delete.is_empty());
        assert_eq!((d.used, d.unused_left), (150, 150));
        // Within 50% (75 bytes): pack 1 goes (60 left).
        let d = decide_with(&packs, &used, &[], 0.5);
        assert_eq!((d.repack, d.unused_left), (vec![p1], 60));
        // Within 5% (7.5 bytes): after packs 1 and 2, 10 bytes are left; pack 3 goes too.
        let d = decide_with(&packs, &used, &[], 0.05);
        assert_eq!((d.repack, d.unused_left, d.store_bytes), (vec![p1, p2, p3], 0, 0));
    }

    #[test]
    fn the_packs_of_a_pending_plan_are_left_alone() {
        let (a, ea) = pack(1, &[100]);
        let (b, eb) = pack(2, &[100]);
        let d = decide_with(&[(a, ea), (b, eb)], &HashSet::new(), &[a], 0.05);
        assert_eq!(d.delete, vec![b], "only the pack no plan holds");
        assert_eq!(d.store_bytes, 0, "a pending pack is counted by its plan, not here");
    }
}
