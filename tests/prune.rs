//! Forget, prune and the audit trail on a real store on disk: what is reclaimed, what is never
//! lost (a push running during the prune, a prune killed at each step, a damaged index), and
//! locks that expire by themselves.

mod common;
use common::*;
use push_operator::store::backend::fs::FsBackend;
use push_operator::store::backend::{Backend, ObjectInfo, Result as BResult};
use push_operator::store::forget::{ForgetOptions, Rules, forget};
use push_operator::store::lock::{self, Lock};
use push_operator::store::prune::{PruneOptions, PruneReport, prune};
use push_operator::store::push::{Counters, PushOptions, push};
use push_operator::store::restore::{RestoreOptions, restore};
use push_operator::store::retention::KeepPolicy;
use push_operator::store::verify::{VerifyOptions, verify};
use push_operator::store::{InitOptions, Store};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const MIB: usize = 1 << 20;

fn small_packs() -> InitOptions {
    InitOptions { pack_size: MIB as u64, ..Default::default() }
}

fn open(root: &Path) -> Store {
    Store::open_or_init(Arc::new(FsBackend::new(root)), &small_packs(), &test_credentials()).unwrap()
}

/// A temporary directory holding a store with small packs in `store/` and an empty `src/`.
struct Fixture {
    tmp: tempfile::TempDir,
    root: PathBuf,
    store: Store,
    src: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = open(&root);
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    Fixture { tmp, root, store, src }
}

fn push_dir(store: &Store, src: &Path, source_name: &str) -> push_operator::store::push::PushOutcome {
    let mut o = PushOptions::new(src);
    o.source_name = Some(source_name.into());
    push(store, &o, &Counters::default()).unwrap()
}

fn keep_last(n: u32) -> ForgetOptions {
    ForgetOptions {
        rules: Rules { default: KeepPolicy { last: Some(n), ..Default::default() }, ..Default::default() },
        ..Default::default()
    }
}

fn quick() -> PruneOptions {
    PruneOptions { ttl: Duration::from_secs(30), ..Default::default() }
}

#[track_caller]
fn assert_verified(store: &Store) {
    let r = verify(store, &VerifyOptions { read_data_percent: Some(100.0) }).unwrap();
    assert!(r.ok(), "verify --read-data found damage: {:?}", r.problems);
}

#[track_caller]
fn assert_restores(store: &Store, spec: &str, original: &Path, scratch: &Path) {
    let (_, snap) = store.find_snapshot(spec).unwrap();
    let target = scratch.join(format!("restore-{}", rand_suffix()));
    restore(store, &snap, &RestoreOptions { target: target.clone(), ..Default::default() }).unwrap();
    assert_same_tree(original, &target);
}

fn rand_suffix() -> String {
    push_operator::store::id::Id::random().short()
}

fn pack_count(root: &Path) -> usize {
    count_files(&root.join("packs"))
}

fn dir_bytes(root: &Path) -> u64 {
    walk(root).iter().filter(|(_, m)| m.is_file()).map(|(_, m)| m.len()).sum()
}

#[test]
fn forget_then_prune_reclaims_the_forgotten_data_and_keeps_the_rest_restorable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = open(&root);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, seed) in [(&a, 1u64), (&b, 2)] {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("data.bin"), seeded_bytes(seed, 6 * MIB)).unwrap();
        fs::write(dir.join("shared.txt"), text_bytes(9, 300_000)).unwrap();
    }
    push_dir(&store, &a, "app");
    let kept = push_dir(&store, &b, "app");
    let before = dir_bytes(&root);

    // Dry runs change nothing.
    let plan = forget(&store, &ForgetOptions { dry_run: true, ..keep_last(1) }).unwrap();
    assert_eq!(plan.removed.len(), 1);
    assert_eq!(store.list_snapshots().unwrap().len(), 2);
    let dry = prune(&store, &PruneOptions { dry_run: true, ..quick() }).unwrap();
    assert_eq!((dry.packs_unused, dry.packs_deleted), (0, 0), "nothing is unreferenced yet");

    let r = forget(&store, &keep_last(1)).unwrap();
    assert_eq!(r.kept, 1);
    let snaps = store.list_snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].0, kept.id);

    let packs_before = pack_count(&root);
    let bytes_before = dir_bytes(&root);
    let dry = prune(&store, &PruneOptions { dry_run: true, ..quick() }).unwrap();
    // The forgotten data's packs go whole, or are repacked when the parallel push put a chunk
    // the kept snapshot shares into one of them (which pack a chunk lands in varies by run).
    assert!(dry.packs_unused + dry.packs_repack >= 5, "{dry:?}");
    assert_eq!(pack_count(&root), packs_before, "a dry run deletes nothing");
    assert!(dir_bytes(&root) >= bytes_before, "a dry run deletes nothing (it adds an audit record)");

    let r = prune(&store, &quick()).unwrap();
    assert_eq!(r.plans_pending, 0, "no push runs: deleted at once: {r:?}");
    assert_eq!(r.packs_deleted, dry.packs_unused + dry.packs_repack);
    assert!(r.bytes_reclaimed >= 6 * MIB as u64, "{r:?}");
    assert_eq!(pack_count(&root), packs_before - r.packs_deleted + r.packs_written);
    assert!(dir_bytes(&root) < before - 5 * MIB as u64);
    assert!(root.join("prune").read_dir().map(|mut d| d.next().is_none()).unwrap_or(true), "plan removed");
    assert_verified(&store);
    assert_restores(&store, "latest", &b, tmp.path());

    // A second prune finds nothing to do.
    let again = prune(&store, &quick()).unwrap();
    assert_eq!((again.packs_unused, again.packs_repack, again.packs_deleted), (0, 0, 0));
}

#[test]
fn mostly_unused_packs_are_repacked() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    // Big packs, so both files share one.
    let store = Store::open_or_init(
        Arc::new(FsBackend::new(&root)),
        &InitOptions { pack_size: 16 * MIB as u64, ..Default::default() },
        &test_credentials(),
    )
    .unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), seeded_bytes(5, 3 * MIB)).unwrap();
    fs::write(src.join("small.bin"), seeded_bytes(6, 200_000)).unwrap();
    push_dir(&store, &src, "app");
    fs::remove_file(src.join("big.bin")).unwrap();
    push_dir(&store, &src, "app");
    forget(&store, &keep_last(1)).unwrap();
    let before = dir_bytes(&root);
    let r = prune(&store, &quick()).unwrap();
    assert!(r.packs_repack >= 1, "{r:?}");
    assert!(r.bytes_repacked > 0 && r.bytes_repacked < MIB as u64, "{r:?}");
    assert!(dir_bytes(&root) + 2 * MIB as u64 <= before, "{} -> {}", before, dir_bytes(&root));
    assert_verified(&store);
    assert_restores(&store, "latest", &src, tmp.path());
}

fn pack_bytes(root: &Path) -> u64 {
    walk(&root.join("packs")).iter().filter(|(_, m)| m.is_file()).map(|(_, m)| m.len()).sum()
}

#[test]
fn the_store_size_reported_by_push_and_prune_is_the_bytes_of_its_packs() {
    let Fixture { tmp: _tmp, root, store, src } = fixture();
    fs::write(src.join("a.bin"), seeded_bytes(41, 3 * MIB)).unwrap();
    let first = push_dir(&store, &src, "app");
    assert_eq!(first.store_bytes, pack_bytes(&root));
    fs::write(src.join("b.bin"), seeded_bytes(42, 2 * MIB)).unwrap();
    let second = push_dir(&store, &src, "app");
    assert_eq!(second.store_bytes, pack_bytes(&root), "indexed packs plus the new ones");
    assert!(second.store_bytes > first.store_bytes + MIB as u64);
    let unchanged = push_dir(&store, &src, "app");
    assert_eq!(unchanged.store_bytes, second.store_bytes, "nothing new, nothing added");
    fs::remove_file(src.join("a.bin")).unwrap();
    push_dir(&store, &src, "app");
    forget(&store, &keep_last(1)).unwrap();
    let r = prune(&store, &quick()).unwrap();
    assert!(r.bytes_reclaimed > 0, "{r:?}");
    assert_eq!(r.store_bytes, pack_bytes(&root), "{r:?}");
    fs::write(src.join("c.bin"), seeded_bytes(43, MIB)).unwrap();
    assert_eq!(push_dir(&store, &src, "app").store_bytes, pack_bytes(&root), "after a prune");
}

#[test]
fn scattered_garbage_is_repacked_down_to_the_max_unused_share() {
    let Fixture { tmp, store, src, .. } = fixture();
    // 40 files of 100 KB (one chunk each) in ~4 packs of 1 MiB; then one file in ten changes.
    for i in 0..40u64 {
        fs::write(src.join(format!("f{i:02}")), seeded_bytes(100 + i, 100_000)).unwrap();
    }
    push_dir(&store, &src, "app");
    for i in (0..40u64).step_by(10) {
        fs::write(src.join(format!("f{i:02}")), seeded_bytes(900 + i, 100_000)).unwrap();
    }
    push_dir(&store, &src, "app");
    forget(&store, &keep_last(1)).unwrap();
    // Tolerating half: every pack is ~10 % unused, nothing is repacked.
    let lax = prune(&store, &PruneOptions { dry_run: true, max_unused: 0.5, ..quick() }).unwrap();
    assert_eq!(lax.packs_repack, 0, "{lax:?}");
    assert!(lax.bytes_unused_left >= 300_000, "{lax:?}");
    // The default 5 %: the most unused packs are repacked until at most 5 % is left.
    let r = prune(&store, &quick()).unwrap();
    assert!(r.packs_repack >= 1, "{r:?}");
    assert!(r.bytes_unused_left as f64 <= 0.05 * r.bytes_used as f64, "{r:?}");
    let after = prune(&store, &PruneOptions { dry_run: true, ..quick() }).unwrap();
    assert_eq!((after.packs_unused, after.packs_repack), (0, 0), "{after:?}");
    assert!(after.bytes_unused_left as f64 <= 0.05 * after.bytes_used as f64, "{after:?}");
    assert_verified(&store);
    assert_restores(&store, "latest", &src, tmp.path());
}

/// A backend that holds snapshot writes until released: a push "in flight" at a chosen point.
struct Gated {
    inner: FsBackend,
    open: Mutex<bool>,
    cv: Condvar,
    waiting: Mutex<bool>,
}

impl Gated {
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
    fn wait_until_blocked(&self) {
        for _ in 0..600 {
            if *self.waiting.lock().unwrap() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the push never reached its snapshot");
    }
}

impl Backend for Gated {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<bool> {
        if key.starts_with("snapshots/") {
            *self.waiting.lock().unwrap() = true;
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.cv.wait(open).unwrap();
            }
        }
        self.inner.put_if_absent(key, data)
    }
    fn get(&self, key: &str) -> BResult<Vec<u8>> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> BResult<Vec<u8>> {
        self.inner.get_range(key, offset, len)
    }
    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        self.inner.stat(key)
    }
    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> BResult<()> {
        self.inner.delete(key)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The hard case: a push reuses chunks of a snapshot that is forgotten, and a prune runs while
/// the push is between reading the index and writing its snapshot. The prune sees those packs
/// unreferenced; the push then references them.
fn push_during_prune(wait: bool) -> (tempfile::TempDir, PruneReport) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("data.bin"), seeded_bytes(11, 5 * MIB)).unwrap();
    fs::write(src.join("notes.txt"), text_bytes(12, 100_000)).unwrap();
    let plain = open(&root);
    let first = push_dir(&plain, &src, "app");

    let gated = Arc::new(Gated {
        inner: FsBackend::new(&root),
        open: Mutex::new(false),
        cv: Condvar::new(),
        waiting: Mutex::new(false),
    });
    let gated_store = Store::open(gated.clone(), &test_credentials()).unwrap();
    let src2 = src.clone();
    let pusher = std::thread::spawn(move || {
        let mut o = PushOptions::new(&src2);
        o.source_name = Some("app".into());
        o.parent = push_operator::store::push::ParentChoice::None;
        push(&gated_store, &o, &Counters::default()).unwrap()
    });
    gated.wait_until_blocked();
    // The push reused every chunk of the first snapshot; now that snapshot goes (forget with
    // rules cannot remove the last one: delete it as forget does).
    plain.backend().delete(&format!("snapshots/{}", first.id)).unwrap();
    assert!(plain.list_snapshots().unwrap().is_empty());

    let report = if wait {
        let g = gated.clone();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            g.release();
        });
        let r = prune(&plain, &PruneOptions { wait: Some(Duration::from_secs(60)), ..quick() }).unwrap();
        releaser.join().unwrap();
        r
    } else {
        let r = prune(&plain, &quick()).unwrap();
        assert_eq!(r.plans_pending, 1, "the running push keeps the marked packs: {r:?}");
        assert_eq!(r.packs_deleted, 0);
        gated.release();
        r
    };
    let outcome = pusher.join().unwrap();
    assert_eq!(outcome.snapshot.stats.bytes_new, 0, "the push reused the old chunks");

    // Restorable and verified right away (the marked packs are still read) ...
    assert_verified(&plain);
    assert_restores(&plain, "latest", &src, tmp.path());
    // ... and after the prune completes.
    let r2 = prune(&plain, &quick()).unwrap();
    assert_eq!(r2.plans_pending, 0, "{r2:?}");
    assert_verified(&plain);
    assert_restores(&plain, "latest", &src, tmp.path());
    (tmp, report)
}

#[test]
fn a_push_running_during_a_prune_loses_nothing() {
    let (_tmp, report) = push_during_prune(false);
    assert_eq!(report.packs_deleted, 0);
}

#[test]
fn a_prune_that_waits_keeps_what_the_push_used() {
    let (_tmp, report) = push_during_prune(true);
    assert_eq!(report.plans_pending, 0, "{report:?}");
    assert!(report.packs_kept_for_new_snapshots >= 1, "the push's snapshot uses the marked packs: {report:?}");
    assert_eq!(report.packs_deleted, 0);
}

#[test]
fn a_push_after_the_mark_stores_chunks_again_and_the_marked_packs_go() {
    let Fixture { tmp, store, src, .. } = fixture();
    fs::write(src.join("data.bin"), seeded_bytes(21, 3 * MIB)).unwrap();
    let first = push_dir(&store, &src, "old");
    fs::write(tmp.path().join("other"), b"x").unwrap();
    push_dir(&store, &tmp.path().join("other"), "other");
    store.backend().delete(&format!("snapshots/{}", first.id)).unwrap();

    // Someone holds a push lock: the prune marks and leaves the deletion.
    let outsider = Lock::acquire(&store, lock::LockKind::Push, "outsider", Duration::from_secs(30)).unwrap();
    let r = prune(&store, &quick()).unwrap();
    assert_eq!((r.plans_pending, r.packs_deleted), (1, 0), "{r:?}");
    // A push now must not reuse the marked chunks.
    let again = push_dir(&store, &src, "new");
    assert_eq!(again.snapshot.stats.bytes_new, 3 * MIB as u64, "marked chunks are stored again");
    assert_verified(&store);
    drop(outsider);
    let r = prune(&store, &quick()).unwrap();
    assert_eq!(r.plans_pending, 0);
    assert!(r.packs_deleted >= 3, "{r:?}");
    assert_eq!(r.packs_kept_for_new_snapshots, 0);
    assert_verified(&store);
    assert_restores(&store, "latest", &src, tmp.path());
}

#[test]
fn nothing_is_deleted_from_a_store_whose_index_cannot_be_read() {
    let Fixture { tmp: _tmp, root, store, src } = fixture();
    fs::write(src.join("a.bin"), seeded_bytes(31, 3 * MIB)).unwrap();
    push_dir(&store, &src, "a");
    fs::write(src.join("a.bin"), seeded_bytes(32, 3 * MIB)).unwrap();
    push_dir(&store, &src, "a");
    forget(&store, &keep_last(1)).unwrap();
    // Damage one index object.
    let idx = root.join("index").join(walk(&root.join("index")).into_iter().find(|(_, m)| m.is_file()).unwrap().0);
    let mut bytes = fs::read(&idx).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&idx, &bytes).unwrap();
    let packs = pack_count(&root);
    let err = prune(&store, &quick()).unwrap_err();
    assert!(format!("{err:#}").contains("nothing deleted"), "{err:#}");
    assert_eq!(pack_count(&root), packs);
    // The failure is in the audit trail.
    let recs = push_operator::store::audit::list(&store).unwrap();
    assert_eq!(recs.last().unwrap().result, push_operator::store::audit::Outcome::Failed);
}

#[test]
fn a_lock_left_by_a_killed_process_expires_and_a_live_prune_excludes_another() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = open(&root);
    // A dead push's lock, already expired: it neither blocks nor survives the prune.
    let dead = push_operator::store::lock::LockInfo {
        holder: push_operator::store::id::Id::random(),
        kind: push_operator::store::lock::LockKind::Push,
        host: "gone".into(),
        pid: 1,
        since: chrono::Utc::now() - chrono::Duration::hours(2),
        expires: chrono::Utc::now() - chrono::Duration::hours(1),
        seq: 7,
        purpose: String::new(),
    };
    store
        .backend()
        .put_if_absent(&format!("locks/{}-0000000007", dead.holder), &serde_json::to_vec(&dead).unwrap())
        .unwrap();
    assert!(lock::live_holders(&store, chrono::Utc::now()).unwrap().is_empty());
    let r = prune(&store, &quick()).unwrap();
    assert_eq!(r.locks_removed, 1);
    assert!(lock::read_locks(store.backend().as_ref()).unwrap().is_empty());

    // A live prune lock, older than ours: this prune refuses and says until when.
    let other = Lock::acquire(&store, lock::LockKind::Prune, "", Duration::from_secs(30)).unwrap();
    let err = prune(&store, &quick()).unwrap_err().to_string();
    assert!(err.contains("another prune is running") && err.contains("expires"), "{err}");
    drop(other);
    prune(&store, &quick()).unwrap();
}

#[test]
fn a_prune_killed_at_each_step_loses_nothing_and_the_next_one_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for point in ["prune:1", "prune:2", "prune:3"] {
        let store = tmp.path().join(format!("store-{}", point.replace(':', "-")));
        let s = store.to_str().unwrap();
        ok(run(&["init", "--store", s, "--pack-size-mib", "1"]));
        fs::write(src.join("data.bin"), seeded_bytes(41, 4 * MIB)).unwrap();
        push_json(&src, s, &["--source-name", "app"]);
        fs::write(src.join("data.bin"), seeded_bytes(42, 4 * MIB)).unwrap();
        push_json(&src, s, &["--source-name", "app"]);
        ok(run(&["forget", "--store", s, "--keep-last", "1"]));
        let o =
            run_env(&["prune", "--store", s], &[("PUSH_OPERATOR_CRASH_AT", point), ("PUSH_OPERATOR_LOCK_TTL", "2")]);
        assert_eq!(o.status.signal(), Some(9), "{point}: {}", stderr(&o));
        // Right after the crash: verified and restorable.
        ok(run(&["verify", "--store", s, "--read-data"]));
        let t1 = tmp.path().join(format!("r1-{}", point.replace(':', "-")));
        ok(run(&["restore", "latest", "--store", s, "--target", t1.to_str().unwrap()]));
        assert_same_tree(&src, &t1);
        // The killed prune's lock expires (2 s); the next prune completes the work.
        std::thread::sleep(Duration::from_millis(2500));
        let o = ok(run(&["prune", "--store", s, "--json"]));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["plans_pending"], 0, "{point}: {r}");
        let o = ok(run(&["prune", "--store", s, "--dry-run", "--json"]));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["packs_unused"], 0, "{point}: everything unreferenced is gone: {r}");
        ok(run(&["verify", "--store", s, "--read-data"]));
        let t2 = tmp.path().join(format!("r2-{}", point.replace(':', "-")));
        ok(run(&["restore", "latest", "--store", s, "--target", t2.to_str().unwrap()]));
        assert_same_tree(&src, &t2);
        assert!(count_files(&store.join("prune")) == 0, "{point}: no plan left");
    }
}

#[test]
fn the_cli_forgets_prunes_and_lists_the_audit_trail() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..3u64 {
        fs::write(src.join("f.bin"), seeded_bytes(50 + i, 2 * MIB)).unwrap();
        push_json(&src, s, &["--tag", "reason=nightly"]);
    }
    // Maintenance of a Repository never pushed: nothing to prune, nothing created.
    let missing = tmp.path().join("missing");
    let o = run(&["prune", "--store", missing.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("no store"), "{}", stderr(&o));
    let o = ok(run(&["prune", "--store", missing.to_str().unwrap(), "--if-exists"]));
    assert!(stdout(&o).contains("nothing to prune"), "{}", stdout(&o));
    assert!(!missing.exists());
    // No rule: refused, nothing changed.
    let o = run(&["forget", "--store", s]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--keep-last"), "{}", stderr(&o));
    let o = run(&["forget", "--store", s, "--keep-within", "7x"]);
    assert!(!o.status.success() && stderr(&o).contains("not one of"), "{}", stderr(&o));
    let o = ok(run(&["forget", "--store", s, "--keep-last", "1", "--dry-run"]));
    assert!(stdout(&o).contains("2 would be forgotten"), "{}", stdout(&o));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&ok(run(&["snapshots", "--store", s, "--json"])).stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // Forget by id (restic's `forget ID`): a dry run, then for real.
    let snaps: Vec<serde_json::Value> =
        serde_json::from_slice(&ok(run(&["snapshots", "--store", s, "--json"])).stdout).unwrap();
    let oldest = snaps[0]["id"].as_str().unwrap().to_string();
    let o = run(&["forget", "--store", s, &oldest[..10], "--keep-last", "1"]);
    assert!(!o.status.success() && stderr(&o).contains("not both"), "{}", stderr(&o));
    let o = ok(run(&["forget", "--store", s, &oldest[..10], "--dry-run"]));
    assert!(stdout(&o).contains("would remove"), "{}", stdout(&o));
    let o = ok(run(&["forget", "--store", s, &oldest[..10]]));
    assert!(stdout(&o).contains(&format!("removed {}", &oldest[..8])), "{}", stdout(&o));
    let o = ok(run(&["forget", "--store", s, "--keep-last", "1", "--prune"]));
    assert!(stdout(&o).contains("1 forgotten") && stdout(&o).contains("reclaimed"), "{}", stdout(&o));

    let o = ok(run(&["audit", "--store", s, "--json"]));
    let recs: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let actions: Vec<&str> = recs.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["push", "push", "push", "forget", "forget", "prune"]);
    assert_eq!(recs[0]["reason"], "nightly");
    assert_eq!(recs[0]["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(recs[3]["snapshots"][0], oldest.as_str());
    assert_eq!(recs[4]["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(recs[5]["result"], "ok");
    assert!(recs[5]["details"]["bytes_reclaimed"].as_u64().unwrap() >= 4 * MIB as u64);
    let o = ok(run(&["audit", "--store", s, "--action", "push", "--last", "1"]));
    assert!(stdout(&o).contains("1 records") && stdout(&o).contains("nightly"), "{}", stdout(&o));
}

/// After a prune the index is one consolidated table; once it is large, a push reads it in
/// part (its header and a page per lookup), and dedup, restore and verify work as before.
#[test]
fn a_push_into_a_consolidated_store_reads_the_table_in_part() {
    let f = fixture();
    // 24k distinct small files: one blob each, a table over 1 MiB.
    for d in 0..24 {
        let dir = f.src.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..1000 {
            fs::write(dir.join(format!("f{i:04}")), format!("file {d} {i} {}", "x".repeat(i % 50))).unwrap();
        }
    }
    fs::write(f.src.join("big"), text_bytes(5, 6 * MIB)).unwrap();
    push_dir(&f.store, &f.src, "src");
    let other = f.tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("one"), "another source").unwrap();
    push_dir(&f.store, &other, "other");
    prune(&f.store, &quick()).unwrap();
    let index: Vec<_> = f.store.backend().list("index/").unwrap();
    assert_eq!(index.len(), 1, "the prune consolidated the index into one table");
    let table = f.store.backend().get(&index[0].key).unwrap();
    assert!(push_operator::store::table::is_table(&table));
    assert!(index[0].size >= push_operator::store::LAZY_TABLE_BYTES, "{} bytes", index[0].size);

    // Without a parent every file is read and chunked again: every chunk is found in the table.
    let mut o = PushOptions::new(&f.src);
    o.source_name = Some("src".into());
    o.parent = push_operator::store::push::ParentChoice::None;
    let again = push(&f.store, &o, &Counters::default()).unwrap();
    let s = &again.snapshot.stats;
    assert_eq!(s.chunks_new, 0, "{s:?}");
    assert!(s.chunks_reused > 24_000, "{s:?}");
    // Every page at most once: no more than the table.
    assert!(s.index_bytes_read > 0 && s.index_bytes_read <= index[0].size, "{s:?}");

    // A change after the table: the new chunks go into a new index object, the rest is found.
    let mut big = fs::read(f.src.join("big")).unwrap();
    big[3 * MIB..3 * MIB + 1000].fill(b'!');
    fs::write(f.src.join("big"), &big).unwrap();
    fs::write(f.src.join("d00/new"), "a new file").unwrap();
    let changed = push_dir(&f.store, &f.src, "src");
    assert!(
        changed.snapshot.stats.chunks_new >= 1 && changed.snapshot.stats.chunks_new <= 4,
        "{:?}",
        changed.snapshot.stats
    );
    // Its 24k unchanged files are checked against the table: each page read at most once.
    assert!(changed.snapshot.stats.index_bytes_read <= index[0].size + (1 << 20), "{:?}", changed.snapshot.stats);

    assert_restores(&f.store, "latest", &f.src, f.tmp.path());
    assert_verified(&f.store);
    // A second prune reads the table in full and writes the next one.
    forget(&f.store, &keep_last(1)).unwrap();
    prune(&f.store, &quick()).unwrap();
    assert_restores(&f.store, "latest", &f.src, f.tmp.path());
    assert_verified(&f.store);
}

#[test]
fn a_push_after_a_prune_finds_its_parent_in_the_catalogue_without_reading_every_snapshot() {
    let f = fixture();
    fs::write(f.src.join("a"), text_bytes(7, 200_000)).unwrap();
    let other = f.tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("b"), "another source").unwrap();
    for _ in 0..3 {
        push_dir(&f.store, &other, "other");
    }
    let first = push_dir(&f.store, &f.src, "src");
    assert_eq!(first.snapshot.stats.snapshot_objects_read, 3, "no catalogue yet: every snapshot is read");

    let r = prune(&f.store, &quick()).unwrap();
    assert!(r.catalog_written, "{r:?}");
    assert_eq!(f.store.backend().list("catalog/").unwrap().len(), 1);

    fs::write(f.src.join("c"), "new").unwrap();
    let second = push_dir(&f.store, &f.src, "src");
    assert_eq!(second.snapshot.stats.snapshot_objects_read, 0, "{:?}", second.snapshot.stats);
    assert_eq!(second.snapshot.parent, Some(first.id), "the parent came from the catalogue");
    assert_eq!(second.snapshot.stats.files_unchanged, 1, "a was not read again");
    let third = push_dir(&f.store, &f.src, "src");
    assert_eq!(third.snapshot.stats.snapshot_objects_read, 1, "only the snapshot written since");
    assert_eq!(third.snapshot.parent, Some(second.id));

    // Forgotten snapshots leave the listing at once; the next prune writes a catalogue of the rest.
    forget(&f.store, &keep_last(1)).unwrap();
    let listed: Vec<_> = f.store.list_snapshots().unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(listed.len(), 2, "one per source: {listed:?}");
    assert!(listed.contains(&third.id));
    let r = prune(&f.store, &quick()).unwrap();
    assert!(r.catalog_written, "{r:?}");
    let l = f.store.snapshot_listing().unwrap();
    assert_eq!((l.read_alone, l.stale, l.catalogs.len()), (0, 0, 1));
    assert_eq!(l.snapshots.iter().map(|(id, _)| *id).collect::<Vec<_>>(), listed);
    assert_verified(&f.store);
    assert_restores(&f.store, "latest", &f.src, f.tmp.path());
    assert!(!prune(&f.store, &quick()).unwrap().catalog_written, "nothing changed since");
}
