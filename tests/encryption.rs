//! Encryption at rest: stores are encrypted by default, nothing of the source is readable in
//! them, keys are managed in slots, and whatever is changed or swapped is caught.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const MARKER: &str = "PLAINTEXT-MARKER-7f3a9c";
const PASS: &str = "correct horse battery staple";

fn pw(p: &str) -> [(&'static str, &str); 1] {
    [("PUSH_OPERATOR_PASSWORD", p)]
}

/// A source whose file contents and names hold the marker, compressible and not.
fn marked_source(root: &Path) {
    fs::create_dir_all(root.join(format!("dir-{MARKER}"))).unwrap();
    let mut text = Vec::new();
    for i in 0..2000 {
        text.extend_from_slice(format!("line {i}: {MARKER} and some ordinary words\n").as_bytes());
    }
    fs::write(root.join("notes.txt"), &text).unwrap();
    fs::write(root.join(format!("dir-{MARKER}/{MARKER}.bin")), [seeded_bytes(9, 300_000), text.clone()].concat())
        .unwrap();
    fs::write(root.join("small"), MARKER).unwrap();
}

/// No key at all (the tests' CLI gets the test key unless told otherwise).
const NO_KEY: [(&str, &str); 1] = [("PUSH_OPERATOR_KEY", "")];

/// A temporary directory with the marked source in `src/` and room for a store at `store`.
struct Fixture {
    tmp: tempfile::TempDir,
    src: PathBuf,
    store: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        marked_source(&src);
        Fixture { tmp, src, store }
    }
}

fn files_of(store: &Path) -> Vec<PathBuf> {
    walk(store).into_iter().filter(|(_, m)| m.is_file()).map(|(p, _)| store.join(p)).collect()
}

fn listing(store: &Path) -> BTreeSet<PathBuf> {
    if !store.exists() {
        return BTreeSet::new();
    }
    walk(store).into_iter().map(|(p, _)| p).collect()
}

fn holds(store: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_of(store).into_iter().filter(|f| fs::read(f).unwrap().windows(needle.len()).any(|w| w == needle)).collect()
}

fn config(store: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(store.join("config")).unwrap()).unwrap()
}

#[test]
fn a_passphrase_store_round_trips_and_holds_nothing_readable() {
    let f = Fixture::new();
    let (tmp, src, store) = (f.tmp.path(), f.src.clone(), f.store.clone());
    let s = store.to_str().unwrap();
    let o = ok(run_env(&["push", src.to_str().unwrap(), "--store", s, "--json"], &pw(PASS)));
    let first: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(config(&store)["version"], 2);
    assert_eq!(config(&store)["encryption"], "aes-256-gcm");
    assert!(config(&store)["mac"].is_string());
    // Change one file, push again: dedup works on keyed ids.
    fs::write(src.join("small"), format!("{MARKER} changed")).unwrap();
    let o = ok(run_env(&["push", src.to_str().unwrap(), "--store", s, "--json"], &pw(PASS)));
    let second: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(second["chunks_reused"].as_u64().unwrap() + second["files_unchanged"].as_u64().unwrap() > 0);
    assert!(second["bytes_new"].as_u64().unwrap() < first["bytes_new"].as_u64().unwrap() / 10);

    let found = holds(&store, MARKER.as_bytes());
    assert!(found.is_empty(), "plaintext of the source found in {found:?}");
    let src_name = src.file_name().unwrap().to_str().unwrap().as_bytes().to_vec();
    let tmp_name = tmp.file_name().unwrap().to_str().unwrap().as_bytes().to_vec();
    assert!(holds(&store, &tmp_name).is_empty(), "the source path ({src_name:?}) is not readable either");

    let out = tmp.join("out");
    ok(run_env(&["restore", "latest", "--store", s, "--target", out.to_str().unwrap()], &pw(PASS)));
    assert_same_tree(&src, &out);
    ok(run_env(&["verify", "--store", s, "--read-data"], &pw(PASS)));
    let snaps = ok(run_env(&["snapshots", "--store", s], &pw(PASS)));
    assert!(!stderr(&snaps).contains("NOT encrypted"));
}

/// The control for the test above: the same source in a plaintext store is found by the grep.
#[test]
fn a_plaintext_store_is_asked_for_and_says_so() {
    let f = Fixture::new();
    let (src, store) = (f.src.clone(), f.store.clone());
    let s = store.to_str().unwrap();
    let none = NO_KEY;
    ok(run_env(&["push", src.to_str().unwrap(), "--store", s, "--encryption", "none"], &none));
    assert_eq!(config(&store)["encryption"], "none");
    assert!(!holds(&store, MARKER.as_bytes()).is_empty(), "a plaintext store shows its data");
    let snaps = ok(run_env(&["snapshots", "--store", s], &none));
    assert!(stderr(&snaps).contains("NOT encrypted"), "{}", stderr(&snaps));
    // A key given for it is refused: it would suggest an encryption that is not there.
    fails_with(run(&["snapshots", "--store", s]), "is not encrypted, but a key was given");
}

#[test]
fn missing_and_wrong_keys_fail_in_one_line_and_write_nothing() {
    let f = Fixture::new();
    let (tmp, src, store) = (f.tmp.path(), f.src.clone(), f.store.clone());
    let s = store.to_str().unwrap();
    let none = NO_KEY;

    // A new store without a key: refused before anything is created.
    fails_with(run_env(&["push", src.to_str().unwrap(), "--store", s], &none), "a new store is encrypted");
    assert!(listing(&store).is_empty(), "nothing created: {:?}", listing(&store));

    ok(run_env(&["push", src.to_str().unwrap(), "--store", s], &pw(PASS)));
    let before = listing(&store);
    let target = tmp.join("t");
    for args in [
        vec!["push", src.to_str().unwrap(), "--store", s],
        vec!["snapshots", "--store", s],
        vec!["restore", "latest", "--store", s, "--target", target.to_str().unwrap()],
        vec!["verify", "--store", s],
        vec!["prune", "--store", s],
        vec!["forget", "--store", s, "--keep-last", "1"],
    ] {
        fails_with(run_env(&args, &none), "is encrypted and no key was given");
        fails_with(run_env(&args, &pw("not the passphrase")), "no key slot");
        fails_with(run_env(&args, &[("PUSH_OPERATOR_KEY", TEST_KEY)]), "no key slot");
    }
    assert_eq!(listing(&store), before, "failed commands changed the store");
    assert!(!target.exists());
    // Garbage as a raw key is a usage error that names the format.
    fails_with(run_env(&["snapshots", "--store", s], &[("PUSH_OPERATOR_KEY", "xyz")]), "64 hex digits");
    // A passphrase from a file works as the variable does.
    let pf = tmp.join("pass");
    fs::write(&pf, format!("{PASS}\n")).unwrap();
    ok(run_env(&["snapshots", "--store", s, "--password-file", pf.to_str().unwrap()], &none));
}

fn slots(store: &str, env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    serde_json::from_slice::<Vec<serde_json::Value>>(
        &ok(run_env(&["key", "list", "--store", store, "--json"], env)).stdout,
    )
    .unwrap()
}

#[test]
fn key_slots_add_remove_passwd_and_rotation() {
    let f = Fixture::new();
    let (tmp, src, store) = (f.tmp.path(), f.src.clone(), f.store.clone());
    let s = store.to_str().unwrap();
    ok(run_env(&["push", src.to_str().unwrap(), "--store", s], &pw("first")));
    let one = slots(s, &pw("first"));
    assert_eq!(one.len(), 1);
    assert_eq!((one[0]["kind"].as_str(), one[0]["current"].as_bool()), (Some("passphrase"), Some(true)));

    // Add a second passphrase and a raw key: each opens the store.
    ok(run_env(
        &["key", "add", "--store", s],
        &[("PUSH_OPERATOR_PASSWORD", "first"), ("PUSH_OPERATOR_NEW_PASSWORD", "second")],
    ));
    let keyfile = tmp.join("raw.key");
    fs::write(&keyfile, "ab".repeat(32)).unwrap();
    ok(run_env(&["key", "add", "--store", s, "--new-key-file", keyfile.to_str().unwrap()], &pw("first")));
    ok(run_env(&["snapshots", "--store", s], &pw("second")));
    ok(run_env(&["snapshots", "--store", s, "--key-file", keyfile.to_str().unwrap()], &NO_KEY));
    let three = slots(s, &pw("second"));
    assert_eq!(three.len(), 3);
    let first_id = three.iter().find(|v| v["current"] == false && v["kind"] == "passphrase").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The slot in use cannot be removed; another one can, by prefix.
    let current = three.iter().find(|v| v["current"] == true).unwrap()["id"].as_str().unwrap().to_string();
    fails_with(run_env(&["key", "remove", &current[..12], "--store", s], &pw("second")), "key passwd");
    ok(run_env(&["key", "remove", &first_id[..12], "--store", s], &pw("second")));
    fails_with(run_env(&["snapshots", "--store", s], &pw("first")), "no key slot");

    // passwd replaces the slot in use.
    ok(run_env(
        &["key", "passwd", "--store", s],
        &[("PUSH_OPERATOR_PASSWORD", "second"), ("PUSH_OPERATOR_NEW_PASSWORD", "third")],
    ));
    fails_with(run_env(&["snapshots", "--store", s], &pw("second")), "no key slot");
    assert_eq!(slots(s, &pw("third")).len(), 2);

    // Rotation as the operator does it: the new secret with the previous one beside it.
    let rotate = [("PUSH_OPERATOR_PASSWORD", "fourth"), ("PUSH_OPERATOR_PREVIOUS_PASSWORD", "third")];
    ok(run_env(&["push", src.to_str().unwrap(), "--store", s], &rotate));
    fails_with(run_env(&["snapshots", "--store", s], &pw("third")), "no key slot");
    ok(run_env(&["push", src.to_str().unwrap(), "--store", s], &rotate)); // idempotent
    assert_eq!(slots(s, &pw("fourth")).len(), 2, "the previous slot was replaced, the raw key kept");

    // The last slot is never removed.
    let raw_id = slots(s, &pw("fourth")).into_iter().find(|v| v["kind"] == "raw key").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(run_env(&["key", "remove", &raw_id, "--store", s], &pw("fourth")));
    let last = slots(s, &pw("fourth"))[0]["id"].as_str().unwrap().to_string();
    let e = fails_with(run_env(&["key", "remove", &last, "--store", s], &pw("fourth")), "only key slot");
    assert!(e.contains("add another first"), "{e}");
    // Data is the same throughout: no re-encryption.
    let out = tmp.join("out");
    ok(run_env(&["restore", "latest", "--store", s, "--target", out.to_str().unwrap()], &pw("fourth")));
    assert_same_tree(&src, &out);
}

/// Flip one byte of an object of each kind: verify reports damage naming it, nothing panics.
#[test]
fn a_flipped_byte_in_any_object_is_damage() {
    let f = Fixture::new();
    let (tmp, src) = (f.tmp.path(), f.src.clone());
    let pristine = tmp.join("pristine");
    ok(run(&["push", src.to_str().unwrap(), "--store", pristine.to_str().unwrap()]));
    for what in [Object::Index, Object::Snapshot, Object::DataPack, Object::TreePack] {
        for at in [Where::Start, Where::Middle, Where::End] {
            let store = tmp.join(format!("store-{what:?}-{at:?}"));
            copy_dir(&pristine, &store);
            let f = what.pick(&store);
            flip(&f, at);
            let o = run(&["verify", "--store", store.to_str().unwrap(), "--read-data"]);
            assert_eq!(o.status.code(), Some(1), "{what:?} {at:?}: {}{}", stdout(&o), stderr(&o));
            let text = stdout(&o) + &stderr(&o);
            assert!(text.contains("damaged") || text.contains("does not open"), "{what:?} {at:?}: {text}");
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Object {
    Index,
    Snapshot,
    /// The largest pack (file data).
    DataPack,
    /// The smallest pack (trees).
    TreePack,
}

impl Object {
    fn pick(self, store: &Path) -> PathBuf {
        let packs = || files_of(&store.join("packs"));
        let by_size = |f: &PathBuf| fs::metadata(f).unwrap().len();
        match self {
            Object::Index => files_of(&store.join("index"))[0].clone(),
            Object::Snapshot => files_of(&store.join("snapshots"))[0].clone(),
            Object::DataPack => packs().into_iter().max_by_key(by_size).unwrap(),
            Object::TreePack => packs().into_iter().min_by_key(by_size).unwrap(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Where {
    Start,
    Middle,
    End,
}

fn flip(f: &Path, at: Where) {
    let mut b = fs::read(f).unwrap();
    let i = match at {
        Where::Start => 9.min(b.len() - 1),
        Where::Middle => b.len() / 2,
        Where::End => b.len() - 13,
    };
    b[i] ^= 0x20;
    fs::write(f, b).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, m) in walk(from) {
        if m.is_dir() {
            fs::create_dir_all(to.join(&rel)).unwrap();
        } else {
            fs::create_dir_all(to.join(&rel).parent().unwrap()).unwrap();
            fs::copy(from.join(&rel), to.join(&rel)).unwrap();
        }
    }
}

/// An object passed off as another (its name still its hash): a snapshot put where an index
/// object belongs, and an index object of another store with another key.
#[test]
fn an_object_swapped_for_another_is_rejected() {
    let f = Fixture::new();
    let (tmp, src) = (f.tmp.path(), f.src.clone());
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    ok(run(&["push", src.to_str().unwrap(), "--store", a.to_str().unwrap()]));
    ok(run_env(&["push", src.to_str().unwrap(), "--store", b.to_str().unwrap()], &pw(PASS)));

    let snap = files_of(&a.join("snapshots"))[0].clone();
    let as_index = a.join("index").join(snap.file_name().unwrap());
    fs::copy(&snap, &as_index).unwrap();
    let push_a = || run(&["push", src.to_str().unwrap(), "--store", a.to_str().unwrap()]);
    let e = fails_with(push_a(), "does not open with this store's key");
    assert!(e.contains("index object"), "{e}");
    let o = run(&["verify", "--store", a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    fs::remove_file(&as_index).unwrap();

    let foreign = files_of(&b.join("index"))[0].clone();
    fs::copy(&foreign, a.join("index").join(foreign.file_name().unwrap())).unwrap();
    fails_with(push_a(), "does not open with this store's key");
}

#[test]
fn a_changed_config_is_noticed() {
    let f = Fixture::new();
    let (src, store) = (f.src.clone(), f.store.clone());
    let s = store.to_str().unwrap();
    ok(run(&["push", src.to_str().unwrap(), "--store", s]));
    let original = fs::read(store.join("config")).unwrap();
    let mut c = config(&store);
    c["compression"]["level"] = 19.into();
    fs::write(store.join("config"), serde_json::to_vec(&c).unwrap()).unwrap();
    fails_with(run(&["snapshots", "--store", s]), "config was changed");
    // A downgrade to plaintext, so that the next push would write plaintext: refused.
    let mut c: serde_json::Value = serde_json::from_slice(&original).unwrap();
    c["encryption"] = "none".into();
    c.as_object_mut().unwrap().remove("mac");
    fs::write(store.join("config"), serde_json::to_vec(&c).unwrap()).unwrap();
    fails_with(run(&["push", src.to_str().unwrap(), "--store", s]), "is not encrypted, but a key was given");
    fails_with(run_env(&["push", src.to_str().unwrap(), "--store", s], &NO_KEY), "key slots");
}

/// Format 1 (before encryption) is format 2 without encryption, less the field: such stores
/// are still read and pushed to.
#[test]
fn a_format_1_store_still_restores() {
    let f = Fixture::new();
    let (tmp, src, store) = (f.tmp.path(), f.src.clone(), f.store.clone());
    let s = store.to_str().unwrap();
    let none = NO_KEY;
    ok(run_env(&["push", src.to_str().unwrap(), "--store", s, "--encryption", "none"], &none));
    let mut c = config(&store);
    c["version"] = 1.into();
    c.as_object_mut().unwrap().remove("encryption");
    fs::write(store.join("config"), serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    let out = tmp.join("out");
    ok(run_env(&["restore", "latest", "--store", s, "--target", out.to_str().unwrap()], &none));
    assert_same_tree(&src, &out);
    ok(run_env(&["push", src.to_str().unwrap(), "--store", s], &none));
    ok(run_env(&["verify", "--store", s, "--read-data"], &none));
    assert_eq!(config(&store)["version"], 1, "an old store is not rewritten");
}
