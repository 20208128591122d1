//! A file written to while it is pushed is named as changed during read, and the snapshot is
//! marked inconsistent whatever the push was told; without a writer, nothing is named.

mod common;
use common::*;
use std::fs;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn snapshots(store: &str) -> Vec<serde_json::Value> {
    let o = ok(run(&["snapshots", "--store", store, "--json"]));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().clone()
}

#[test]
fn a_file_appended_to_during_the_push_is_named_and_the_snapshot_is_inconsistent() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("growing.log"), seeded_bytes(1, 48 << 20)).unwrap();
    fs::write(src.join("calm.txt"), b"nobody writes here\n").unwrap();
    fs::write(src.join("sub/other.bin"), seeded_bytes(2, 4 << 20)).unwrap();
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap();

    // A writer appends a few bytes every millisecond, from before the push starts until the
    // push process has exited.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let path = src.join("growing.log");
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                f.write_all(b"tick\n").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let o = run(&["push", src.to_str().unwrap(), "--store", store_s, "--json", "--consistency", "consistent"]);
    stop.store(true, Ordering::SeqCst);
    let ticks = writer.join().unwrap();
    assert!(ticks > 5, "the writer did not run ({ticks} appends)");
    let o = ok(o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["changed_during_read"], serde_json::json!(["growing.log"]), "{r}");
    assert_eq!(r["files_changed_during_read"], 1, "{r}");
    assert_eq!(r["consistency"], "inconsistent", "{r}");
    assert_eq!(r["files"], 3);

    let snaps = snapshots(store_s);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["consistency"], "inconsistent", "asked for consistent, but a file was torn");
    assert_eq!(snaps[0]["changed_during_read"], serde_json::json!(["growing.log"]));
    assert_eq!(snaps[0]["stats"]["files_changed_during_read"], 1);

    // The text output of such a push says so.
    // Restore names the file, in text and in JSON.
    let out = tmp.path().join("out");
    let o = ok(run(&["restore", "latest", "--store", store_s, "--target", out.to_str().unwrap()]));
    let err = stderr(&o);
    assert!(err.contains("these files changed while they were pushed and may be torn: growing.log"), "{err}");
    let out2 = tmp.path().join("out2");
    let o = ok(run(&["restore", "latest", "--store", store_s, "--target", out2.to_str().unwrap(), "--json"]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["changed_during_read"], serde_json::json!(["growing.log"]), "{r}");
    assert_eq!(r["files_changed_during_read"], 1, "{r}");
    assert_eq!(fs::read(out.join("calm.txt")).unwrap(), b"nobody writes here\n");

    // No writer now: a push that reads every file names none, and keeps the consistency asked.
    let r = push_json(&src, store_s, &["--consistency", "consistent", "--parent", "none"]);
    assert_eq!(r["changed_during_read"], serde_json::json!([]), "{r}");
    assert_eq!(r["files_changed_during_read"], 0, "{r}");
    assert_eq!(
        r["bytes_read"].as_u64().unwrap(),
        fs::metadata(src.join("growing.log")).unwrap().len() + 19 + (4 << 20)
    );
    let snaps = snapshots(store_s);
    assert_eq!(snaps[1]["consistency"], "consistent");
    assert!(snaps[1].get("changed_during_read").is_none(), "{}", snaps[1]);
    assert_eq!(snaps[1]["stats"]["files_changed_during_read"], 0);
    let out3 = tmp.path().join("out3");
    let o = ok(run(&["restore", "latest", "--store", store_s, "--target", out3.to_str().unwrap()]));
    assert!(!stderr(&o).contains("may be torn"), "{}", stderr(&o));
    assert_same_tree(&src, &out3);
}

#[test]
fn the_text_output_of_a_push_names_the_changed_files() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("busy.db"), seeded_bytes(5, 48 << 20)).unwrap();
    let store = tmp.path().join("store");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let path = src.join("busy.db");
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
            while !stop.load(Ordering::SeqCst) {
                f.write_all(b"row\n").unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let o = run(&["push", src.to_str().unwrap(), "--store", store.to_str().unwrap()]);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let text = stdout(&ok(o));
    assert!(
        text.contains(
            "1 files changed while they were read and may be torn (busy.db): the snapshot is marked inconsistent"
        ),
        "{text}"
    );
}
