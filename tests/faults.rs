//! Faults: crashes at exact points and at random moments, a failing backend, and damage that
//! verify must find. After each, nothing is lost: the store verifies, no partial snapshot is
//! listed, and the next push completes and restores byte for byte.

mod common;
use common::*;
use push_operator::store::backend::Backend;
use push_operator::store::backend::fault::{FaultPlan, Faulty};
use push_operator::store::backend::fs::FsBackend;
use push_operator::store::backend::retry::{RetryPolicy, Retrying};
use push_operator::store::push::{Counters, PushOptions, push};
use push_operator::store::restore::{RestoreOptions, restore};
use push_operator::store::verify::{VerifyOptions, verify};
use push_operator::store::{InitOptions, Store};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// ~40 MB over a few files, random so nothing compresses or dedups by accident.
fn make_data(root: &Path) {
    fs::create_dir_all(root.join("sub")).unwrap();
    for i in 0..4u64 {
        fs::write(root.join(format!("f{i}.bin")), seeded_bytes(100 + i, 8 << 20)).unwrap();
    }
    fs::write(root.join("sub/text.txt"), text_bytes(9, 2 << 20)).unwrap();
    fs::write(root.join("sub/more.bin"), seeded_bytes(200, 6 << 20)).unwrap();
}

fn init_small_packs(store: &str) {
    ok(run(&["init", "--store", store, "--pack-size-mib", "1"]));
}

fn snapshot_count(store: &str) -> usize {
    let o = ok(run(&["snapshots", "--store", store, "--json"]));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().len()
}

#[test]
fn killed_at_exact_points_leaves_a_valid_store_and_the_next_push_reuses_uploads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_data(&src);
    // Reference: a clean push, for the total upload size.
    let reference = tmp.path().join("reference");
    init_small_packs(reference.to_str().unwrap());
    let full = push_json(&src, reference.to_str().unwrap(), &[]);
    let full_new = full["bytes_new"].as_u64().unwrap();

    for point in ["pack:1", "pack:5", "index:1", "index:3", "snapshot:0"] {
        let store = tmp.path().join(format!("store-{}", point.replace(':', "-")));
        let store_s = store.to_str().unwrap();
        init_small_packs(store_s);
        let o = run_env(
            &["push", src.to_str().unwrap(), "--store", store_s, "--json"],
            &[("PUSH_OPERATOR_CRASH_AT", point)],
        );
        assert_eq!(o.status.signal(), Some(9), "{point}: the push should have been killed: {}", stderr(&o));
        assert_eq!(snapshot_count(store_s), 0, "{point}: a killed push must not leave a snapshot");
        let v = run(&["verify", "--store", store_s, "--read-data"]);
        assert!(v.status.success(), "{point}: store invalid after the crash: {}", stdout(&v));

        let again = push_json(&src, store_s, &[]);
        // Chunks stored before the crash are known again (from the index, or from the trailers
        // of packs no index lists yet): only the rest is new.
        let new = again["bytes_new"].as_u64().unwrap();
        if point != "pack:1" {
            assert!(
                new < full_new * 9 / 10,
                "{point}: the next push found only {} of {full_new} bytes",
                full_new - new
            );
        }
        assert_eq!(snapshot_count(store_s), 1);
        ok(run(&["verify", "--store", store_s, "--read-data"]));
        let out = tmp.path().join(format!("out-{}", point.replace(':', "-")));
        ok(run(&["restore", "latest", "--store", store_s, "--target", out.to_str().unwrap()]));
        assert_same_tree(&src, &out);
    }
}

#[test]
fn killed_at_random_moments_while_packs_are_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_data(&src);
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap();
    init_small_packs(store_s);
    for wait_for_packs in [2usize, 9, 20] {
        let mut child = cli()
            .args(["push", src.to_str().unwrap(), "--store", store_s, "--parent", "none"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        loop {
            if count_files(&store.join("packs")) >= wait_for_packs || child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "push made no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let v = run(&["verify", "--store", store_s]);
        assert!(v.status.success(), "store invalid after kill -9: {}", stdout(&v));
    }
    // Whatever the kills left, the next push completes and is exact.
    push_json(&src, store_s, &[]);
    ok(run(&["verify", "--store", store_s, "--read-data"]));
    let out = tmp.path().join("out");
    ok(run(&["restore", "latest", "--store", store_s, "--target", out.to_str().unwrap()]));
    assert_same_tree(&src, &out);
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy { attempts: 12, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) }
}

fn small_packs() -> InitOptions {
    InitOptions { pack_size: 1 << 20, ..InitOptions::default() }
}

#[test]
fn transient_errors_and_lost_responses_are_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_data(&src);
    let faulty = Arc::new(Faulty::new(
        FsBackend::new(tmp.path().join("store")),
        FaultPlan { transient_every: 3, lost_response_every: 4, fail_puts_after: None },
    ));
    let backend: Arc<dyn Backend> = Arc::new(Retrying::new(faulty.clone(), fast_retries()));
    let store = Store::init(backend, &small_packs(), &test_credentials()).unwrap();
    let outcome = push(&store, &PushOptions::new(&src), &Counters::default()).unwrap();
    assert!(faulty.injected() > 20, "the wrapper injected only {} faults", faulty.injected());
    let report = verify(&store, &VerifyOptions { read_data_percent: Some(100.0) }).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    let out = tmp.path().join("out");
    restore(&store, &outcome.snapshot, &RestoreOptions { target: out.clone(), ..Default::default() }).unwrap();
    assert_same_tree(&src, &out);
}

#[test]
fn a_store_that_stops_accepting_writes_fails_the_push_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_data(&src);
    let dir = tmp.path().join("store");
    // Create the store with a healthy backend, then lose it after 6 more writes.
    Store::init(Arc::new(FsBackend::new(&dir)), &small_packs(), &test_credentials()).unwrap();
    let faulty = Faulty::new(FsBackend::new(&dir), FaultPlan { fail_puts_after: Some(6), ..FaultPlan::default() });
    let store = Store::open(Arc::new(Retrying::new(faulty, fast_retries())), &test_credentials()).unwrap();
    let err = push(&store, &PushOptions::new(&src), &Counters::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("store unreachable"), "the error should say why: {msg}");

    // Nothing published, nothing damaged; a healthy push then completes and reuses the packs.
    let healthy = Store::open(Arc::new(FsBackend::new(&dir)), &test_credentials()).unwrap();
    assert!(healthy.list_snapshots().unwrap().is_empty());
    let report = verify(&healthy, &VerifyOptions { read_data_percent: Some(100.0) }).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    let counters = Counters::default();
    let outcome = push(&healthy, &PushOptions::new(&src), &counters).unwrap();
    assert!(outcome.snapshot.stats.chunks_reused > 0, "packs stored before the failure are reused");
    let out = tmp.path().join("out");
    restore(&healthy, &outcome.snapshot, &RestoreOptions { target: out.clone(), ..Default::default() }).unwrap();
    assert_same_tree(&src, &out);
}

/// A store with one snapshot of a small tree, for the damage tests.
fn damaged_fixture(tmp: &Path) -> (std::path::PathBuf, String) {
    let src = tmp.join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/data.bin"), seeded_bytes(1, 3 << 20)).unwrap();
    fs::write(src.join("note.txt"), b"small file").unwrap();
    let store = tmp.join("store");
    push_json(&src, store.to_str().unwrap(), &[]);
    let id = push_json(&src, store.to_str().unwrap(), &["--parent", "none"])["snapshot"].as_str().unwrap().to_string();
    ok(run(&["verify", "--store", store.to_str().unwrap(), "--read-data"]));
    (store, id)
}

fn packs_by_size(store: &Path) -> Vec<std::path::PathBuf> {
    let mut packs: Vec<_> = walk(&store.join("packs")).into_iter().filter(|(_, m)| m.is_file()).collect();
    packs.sort_by_key(|(_, m)| std::cmp::Reverse(m.len()));
    packs.into_iter().map(|(p, _)| store.join("packs").join(p)).collect()
}

#[test]
fn a_flipped_byte_in_a_data_pack_is_found_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, id) = damaged_fixture(tmp.path());
    let store_s = store.to_str().unwrap();
    let data_pack = &packs_by_size(&store)[0];
    let mut bytes = fs::read(data_pack).unwrap();
    bytes[1000] ^= 0x40;
    fs::write(data_pack, bytes).unwrap();

    let v = run(&["verify", "--store", store_s, "--read-data", "--json"]);
    assert!(!v.status.success(), "verify must fail on a flipped byte");
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let affected = report["affected"].as_array().unwrap();
    assert_eq!(affected.len(), 2, "both snapshots use the damaged chunk: {report}");
    assert!(affected.iter().any(|a| a["id"] == id.as_str()));
    assert_eq!(affected[0]["paths"], serde_json::json!(["d/data.bin"]));
    let human = stdout(&run(&["verify", "--store", store_s, "--read-data"]));
    assert!(human.contains("d/data.bin") && human.contains("DAMAGE FOUND"), "{human}");
    // Restore checks every chunk on the way and refuses to write damaged data silently.
    let r = run(&["restore", "latest", "--store", store_s, "--target", tmp.path().join("out").to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("damaged"), "{}", stderr(&r));
}

#[test]
fn a_deleted_pack_is_found_without_reading_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = damaged_fixture(tmp.path());
    fs::remove_file(&packs_by_size(&store)[0]).unwrap();
    let v = run(&["verify", "--store", store.to_str().unwrap()]);
    assert!(!v.status.success());
    let out = stdout(&v);
    assert!(out.contains("is missing") && out.contains("d/data.bin"), "{out}");
}

#[test]
fn a_damaged_tree_pack_is_found_without_reading_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = damaged_fixture(tmp.path());
    let packs = packs_by_size(&store);
    let tree_pack = packs.last().unwrap(); // the small one holds the trees
    let mut bytes = fs::read(tree_pack).unwrap();
    bytes[10] ^= 0x01;
    fs::write(tree_pack, bytes).unwrap();
    let v = run(&["verify", "--store", store.to_str().unwrap()]);
    assert!(!v.status.success(), "{}", stdout(&v));
    assert!(stdout(&v).contains("tree"), "{}", stdout(&v));
}

#[test]
fn a_deleted_index_is_found_and_the_next_prune_reindexes_from_the_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = damaged_fixture(tmp.path());
    let store_s = store.to_str().unwrap();
    for (p, m) in walk(&store.join("index")) {
        if m.is_file() {
            fs::remove_file(store.join("index").join(p)).unwrap();
        }
    }
    let v = run(&["verify", "--store", store_s]);
    assert!(!v.status.success());
    assert!(
        stdout(&v).contains("cannot be restored intact") || stdout(&v).contains("not in the index"),
        "{}",
        stdout(&v)
    );
    // Packs carry their own trailers: the next prune indexes them again and nothing is lost.
    // (A push looks for unindexed packs only when another push left its lock behind.)
    let p = ok(run(&["prune", "--store", store_s]));
    assert!(stdout(&p).contains("indexed again"), "{}", stdout(&p));
    let r = push_json(&tmp.path().join("src"), store_s, &[]);
    assert_eq!(r["bytes_new"], 0, "every chunk is found again in the re-indexed packs");
    ok(run(&["verify", "--store", store_s, "--read-data"]));
    let out = tmp.path().join("out");
    ok(run(&["restore", "latest", "--store", store_s, "--target", out.to_str().unwrap()]));
    assert_same_tree(&tmp.path().join("src"), &out);
}
