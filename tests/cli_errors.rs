//! Bad input gets a one-line error that names the fix, and changes nothing.

mod common;
use common::*;
use std::fs;

#[test]
fn missing_source_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    fails_with(
        run(&["push", tmp.path().join("nope").to_str().unwrap(), "--store", store.to_str().unwrap()]),
        "does not exist",
    );
    assert!(!store.exists(), "a failed push must not create the store");
}

#[test]
fn store_of_another_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    fs::create_dir_all(&store).unwrap();
    fs::write(store.join("config"), br#"{"version": 99, "id": "x"}"#).unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let err =
        fails_with(run(&["push", src.to_str().unwrap(), "--store", store.to_str().unwrap()]), "format version 99");
    assert!(err.contains("reads versions 1 and 2"), "{err}");
    assert_eq!(fs::read_dir(&store).unwrap().count(), 1, "nothing written next to the config");
    fails_with(run(&["snapshots", "--store", store.to_str().unwrap()]), "format version 99");
}

#[test]
fn a_directory_that_is_not_a_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("photos");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(foreign.join("cat.jpg"), b"meow").unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fails_with(
        run(&["push", src.to_str().unwrap(), "--store", foreign.to_str().unwrap()]),
        "not a push-operator store",
    );
    assert_eq!(fs::read_dir(&foreign).unwrap().count(), 1);
}

#[test]
fn reading_a_store_that_does_not_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("none");
    fails_with(run(&["snapshots", "--store", store.to_str().unwrap()]), "no store at");
    fails_with(
        run(&[
            "restore",
            "latest",
            "--store",
            store.to_str().unwrap(),
            "--target",
            tmp.path().join("t").to_str().unwrap(),
        ]),
        "no store at",
    );
    assert!(!store.exists());
}

#[test]
fn unknown_snapshot_and_bad_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let store = tmp.path().join("store");
    push_json(&src, store.to_str().unwrap(), &[]);
    fails_with(
        run(&[
            "restore",
            "ffff",
            "--store",
            store.to_str().unwrap(),
            "--target",
            tmp.path().join("t").to_str().unwrap(),
        ]),
        "push-operator snapshots",
    );
    fails_with(run(&["snapshots", "--store", "gs://bucket"]), "unknown store scheme");
    let o = run(&["push", src.to_str().unwrap(), "--store", store.to_str().unwrap(), "--tag", "novalue"]);
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
    assert!(stderr(&o).contains("KEY=VALUE"));
    let o = run(&["verify", "--store", store.to_str().unwrap(), "--read-data", "150"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn unreadable_files_are_recorded_and_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("locked-dir")).unwrap();
    fs::write(src.join("readable"), b"fine").unwrap();
    fs::write(src.join("secret"), b"no access").unwrap();
    fs::write(src.join("locked-dir/inside"), b"x").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(src.join("locked-dir"), fs::Permissions::from_mode(0o000)).unwrap();
    let store = tmp.path().join("store");
    // Root reads everything: run the push as an unprivileged user when we are root.
    let mut args: Vec<String> = Vec::new();
    if am_root() {
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(src.join("readable"), fs::Permissions::from_mode(0o644)).unwrap();
        args.extend(["--reuid=65534", "--regid=65534", "--clear-groups", BIN].map(String::from));
    } else {
        args.push(BIN.to_string());
    }
    args.extend(["push", src.to_str().unwrap(), "--store", store.to_str().unwrap(), "--json"].map(String::from));
    let (prog, rest) = if am_root() { ("setpriv", &args[..]) } else { (BIN, &args[1..]) };
    let o = std::process::Command::new(prog).args(rest).env("PUSH_OPERATOR_KEY", TEST_KEY).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "completed with warnings: {}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["errors"], 2);
    let warnings = r["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().starts_with("secret:")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.as_str().unwrap().starts_with("locked-dir:")), "{warnings:?}");
    // The snapshot exists, holds the readable file, and records the warnings.
    let out = tmp.path().join("out");
    ok(run(&["restore", "latest", "--store", store.to_str().unwrap(), "--target", out.to_str().unwrap()]));
    assert_eq!(fs::read(out.join("readable")).unwrap(), b"fine");
    assert!(!out.join("secret").exists());
    assert!(out.join("locked-dir").is_dir(), "an unlistable directory is kept, empty");
    let list: serde_json::Value =
        serde_json::from_slice(&ok(run(&["snapshots", "--store", store.to_str().unwrap(), "--json"])).stdout).unwrap();
    assert_eq!(list[0]["warnings"].as_array().unwrap().len(), 2);
}
