//! `restore --delete` (mirror), `--cleanup` and `--verify` through the CLI.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

/// A source with files, nested directories, modes and a symlink; the names the mirror test
/// turns into conflicts (`dir-in-snap`, `file-in-snap`, `sub-was-link`) included.
fn make_source(src: &Path) {
    fs::create_dir_all(src.join("data/sub")).unwrap();
    fs::create_dir_all(src.join("dir-in-snap")).unwrap();
    fs::create_dir_all(src.join("sub-was-link")).unwrap();
    fs::write(src.join("keep.txt"), b"keep me\n").unwrap();
    fs::write(src.join("data/a.bin"), seeded_bytes(1, 3 << 20)).unwrap();
    fs::write(src.join("data/sub/b.txt"), text_bytes(2, 10_000)).unwrap();
    fs::write(src.join("data/secret.conf"), b"x=1\n").unwrap();
    fs::set_permissions(src.join("data/secret.conf"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(src.join("dir-in-snap/inner.txt"), b"inner\n").unwrap();
    fs::write(src.join("file-in-snap"), b"a file in the snapshot\n").unwrap();
    fs::write(src.join("sub-was-link/f.txt"), b"f\n").unwrap();
    symlink("keep.txt", src.join("link")).unwrap();
    for (i, (p, _)) in walk(src).iter().rev().enumerate() {
        set_mtime(&src.join(p), 1_600_000_000 + i as i64, 0);
    }
}

fn restore_args<'a>(store: &'a str, target: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["restore", "latest", "--store", store, "--target", target.to_str().unwrap()];
    a.extend_from_slice(extra);
    a
}

#[test]
fn delete_makes_the_target_equal_the_snapshot_without_following_symlinks_out() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src);
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap();
    push_json(&src, store_s, &[]);

    // Outside the target: what symlinks in the target point at.
    let outside = tmp.path().join("outside");
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("precious.txt"), b"precious").unwrap();
    fs::write(outside.join("dir/keep-me.txt"), b"keep me too").unwrap();

    // A target that was restored once and then drifted.
    let target = tmp.path().join("target");
    ok(run(&restore_args(store_s, &target, &[])));
    fs::write(target.join("extra.txt"), b"extra").unwrap(); // 1
    fs::write(target.join("data/extra.bin"), b"extra").unwrap(); // 1
    fs::create_dir_all(target.join("junk/deep/er")).unwrap(); // 3
    fs::write(target.join("junk/deep/er/f"), b"f").unwrap(); // 1
    symlink(outside.join("precious.txt"), target.join("escape")).unwrap(); // 1
    symlink(outside.join("dir"), target.join("escape-dir")).unwrap(); // 1
    fs::remove_dir_all(target.join("dir-in-snap")).unwrap();
    fs::write(target.join("dir-in-snap"), b"a file where the snapshot has a directory").unwrap(); // 1
    fs::remove_file(target.join("file-in-snap")).unwrap();
    fs::create_dir_all(target.join("file-in-snap/x")).unwrap(); // 2
    fs::write(target.join("file-in-snap/x/y"), b"y").unwrap(); // 1
    fs::remove_dir_all(target.join("sub-was-link")).unwrap();
    symlink(outside.join("dir"), target.join("sub-was-link")).unwrap(); // 1
    let _sock = std::os::unix::net::UnixListener::bind(target.join("data/stale.sock")).unwrap(); // 1
    fs::write(target.join("data/a.bin"), b"changed").unwrap();
    fs::set_permissions(target.join("data/secret.conf"), fs::Permissions::from_mode(0o666)).unwrap();

    let o = ok(run(&restore_args(store_s, &target, &["--delete", "--verify", "--json"])));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["removed"], 14, "{r}");
    assert_eq!(r["check"]["problems_total"], 0, "{r}");
    assert_eq!(r["ok"], true);
    assert!(r["check"]["files"].as_u64().unwrap() >= 6, "{r}");

    // Same entries, bytes, modes and times as the source.
    assert_same_tree(&src, &target);
    assert!(!target.join("data/stale.sock").exists());
    // Nothing outside was touched.
    assert_eq!(fs::read(outside.join("precious.txt")).unwrap(), b"precious");
    assert_eq!(fs::read(outside.join("dir/keep-me.txt")).unwrap(), b"keep me too");
    assert_eq!(fs::read_dir(outside.join("dir")).unwrap().count(), 1, "the mirror wrote through a symlink");

    // Again: nothing left to remove; the text output says so.
    let o = ok(run(&restore_args(store_s, &target, &["--delete", "--verify"])));
    let text = stdout(&o);
    assert!(text.contains("removed 0 entries"), "{text}");
    assert!(text.contains("verified:"), "{text}");
    assert_same_tree(&src, &target);
}

#[test]
fn delete_with_include_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src);
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap();
    push_json(&src, store_s, &[]);
    let target = tmp.path().join("target");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("extra.txt"), b"extra").unwrap();
    let before = describe(&target, true);
    fails_with(
        run(&restore_args(store_s, &target, &["--delete", "--include", "data"])),
        "cannot be combined with --include",
    );
    fails_with(
        run(&restore_args(store_s, &target, &["--verify", "--include", "data"])),
        "cannot be combined with --include",
    );
    assert_eq!(describe(&target, true), before, "a refused restore changed the target");
    // A file snapshot cannot be mirrored either.
    let file_store = tmp.path().join("file-store");
    push_json(&src.join("keep.txt"), file_store.to_str().unwrap(), &[]);
    fails_with(run(&restore_args(file_store.to_str().unwrap(), &target, &["--delete"])), "needs a directory snapshot");
    assert_eq!(describe(&target, true), before);
    fails_with(run(&restore_args(store_s, &target, &["--cleanup", "a[b"])), "invalid cleanup pattern");
    assert_eq!(describe(&target, true), before);
}

#[test]
fn cleanup_removes_matching_entries_reports_them_and_verify_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("pgdata/base/1")).unwrap();
    fs::create_dir_all(src.join("pgdata/sub")).unwrap();
    fs::create_dir_all(src.join("cache.lock")).unwrap();
    fs::write(src.join("pgdata/postmaster.pid"), b"4242\n/var/lib/postgresql/data\n").unwrap();
    fs::write(src.join("pgdata/base/1/1259"), seeded_bytes(3, 1 << 20)).unwrap();
    fs::write(src.join("pgdata/sub/x.lock"), b"").unwrap();
    fs::write(src.join("pgdata/not-a.lock.txt"), b"stays").unwrap();
    fs::write(src.join("app.lock"), b"1").unwrap();
    fs::write(src.join("cache.lock/inside"), b"in a directory that matches").unwrap();
    fs::write(src.join("keep.txt"), b"keep").unwrap();
    set_mtime(&src.join("pgdata"), 1_600_000_000, 5);
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap();
    push_json(&src, store_s, &[]);

    // A socket the server left in the target (sockets are never in a snapshot).
    let target = tmp.path().join("target");
    fs::create_dir_all(target.join("pgdata")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(target.join("pgdata/.s.PGSQL.5432")).unwrap();

    let o = ok(run(&restore_args(
        store_s,
        &target,
        &["--cleanup", "postmaster.pid", "--cleanup", "*.lock", "--cleanup", ".s.PGSQL.*", "--verify", "--json"],
    )));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cleaned: Vec<&str> = r["cleaned"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(
        cleaned,
        ["app.lock", "cache.lock", "pgdata/.s.PGSQL.5432", "pgdata/postmaster.pid", "pgdata/sub/x.lock"],
        "{r}"
    );
    for p in &cleaned {
        assert!(fs::symlink_metadata(target.join(p)).is_err(), "{p} is still there");
    }
    assert_eq!(fs::read(target.join("pgdata/not-a.lock.txt")).unwrap(), b"stays");
    assert_eq!(fs::read(target.join("keep.txt")).unwrap(), b"keep");
    assert_eq!(fs::read(target.join("pgdata/base/1/1259")).unwrap(), seeded_bytes(3, 1 << 20));
    assert_eq!(r["ok"], true, "verify skips what the cleanup removed: {r}");
    assert_eq!(r["check"]["problems_total"], 0);
    // The directories the cleanup removed from keep their restored times.
    let m = fs::metadata(target.join("pgdata")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 5));

    // Text output names them too.
    let target2 = tmp.path().join("target2");
    let o = ok(run(&restore_args(store_s, &target2, &["--cleanup", "postmaster.pid", "--verify"])));
    let text = stdout(&o);
    assert!(text.contains("cleanup removed: pgdata/postmaster.pid"), "{text}");
    assert!(text.contains("verified:"), "{text}");
}
