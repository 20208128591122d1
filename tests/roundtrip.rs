//! Push and restore through the CLI, compared byte for byte and field for field.

mod common;
use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

#[test]
fn full_tree_round_trip_and_incremental_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let specials = make_full_tree(&src);
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap();

    // First push: everything is new.
    let first = push_json(&src, store_s, &["--tag", "kind=test"]);
    let files_in_src = describe(&src, false).values().filter(|e| e.kind == "file").count() as u64;
    assert_eq!(first["files"], files_in_src);
    assert_eq!(first["skipped_special"], specials as u64, "FIFO and socket are skipped and counted");
    assert!(first["bytes_new"].as_u64().unwrap() > 0);
    assert!(first["bytes_uploaded"].as_u64().unwrap() > 0);
    assert!(first["chunks_reused"].as_u64().unwrap() > 0, "the duplicate file and the hard links dedup");
    for key in [
        "snapshot",
        "files",
        "bytes_read",
        "bytes_new",
        "bytes_uploaded",
        "chunks_new",
        "chunks_reused",
        "duration_seconds",
    ] {
        assert!(first.get(key).is_some(), "push --json lacks {key}");
    }

    let out = tmp.path().join("restored");
    ok(run(&["restore", "latest", "--store", store_s, "--target", out.to_str().unwrap()]));
    assert_same_tree(&src, &out);
    // Sparse stays sparse: 64 MiB apparent, about 100 KB of data.
    assert!(allocated(&out.join("sparse.img")) < 4 << 20, "restored sparse file is not sparse");
    // Hard links are links again.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(out.join("hard/a")).unwrap().ino(), fs::metadata(out.join("hard-c")).unwrap().ino());
    // The restore root takes the source directory's metadata when it creates it.
    assert_eq!(fs::metadata(&out).unwrap().mtime(), 1_500_000_000);

    // Second push, nothing changed: nothing read, no pack written.
    let packs = count_files(&store.join("packs"));
    let second = push_json(&src, store_s, &[]);
    assert_eq!(second["bytes_read"], 0, "unchanged files must not be read");
    assert_eq!(second["bytes_new"], 0);
    assert_eq!(second["chunks_new"], 0);
    assert_eq!(second["files_unchanged"], first["files"]);
    assert_eq!(count_files(&store.join("packs")), packs, "a no-change push writes no pack");

    // Third push after changing one file: only that file is read.
    let lorem = src.join("text/lorem.txt");
    let mut data = fs::read(&lorem).unwrap();
    data.extend_from_slice(b"appended line\n");
    fs::write(&lorem, &data).unwrap();
    let third = push_json(&src, store_s, &[]);
    assert_eq!(third["bytes_read"], data.len() as u64);
    assert_eq!(third["files_unchanged"].as_u64().unwrap(), first["files"].as_u64().unwrap() - 1);
    assert!(third["bytes_new"].as_u64().unwrap() <= data.len() as u64);

    // Restore the newest and an older snapshot by prefix.
    let out3 = tmp.path().join("restored3");
    ok(run(&["restore", "latest", "--store", store_s, "--target", out3.to_str().unwrap()]));
    assert_eq!(fs::read(out3.join("text/lorem.txt")).unwrap(), data);
    let first_id = first["snapshot"].as_str().unwrap();
    let out1 = tmp.path().join("restored1");
    ok(run(&["restore", &first_id[..10], "--store", store_s, "--target", out1.to_str().unwrap()]));
    assert_eq!(fs::read(out1.join("text/lorem.txt")).unwrap(), &data[..data.len() - 14]);

    // Listing shows all three with the tag.
    let list: serde_json::Value =
        serde_json::from_slice(&ok(run(&["snapshots", "--store", store_s, "--json"])).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert_eq!(list[0]["tags"]["kind"], "test");
    assert_eq!(list[0]["id"], first_id);
    let human = stdout(&ok(run(&["snapshots", "--store", store_s])));
    assert!(human.contains(&first_id[..8]) && human.contains("3 snapshots"), "{human}");

    ok(run(&["verify", "--store", store_s, "--read-data"]));
}

#[test]
fn include_restores_only_the_named_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_full_tree(&src);
    let store = tmp.path().join("store");
    push_json(&src, store.to_str().unwrap(), &[]);
    let out = tmp.path().join("out");
    ok(run(&[
        "restore",
        "latest",
        "--store",
        store.to_str().unwrap(),
        "--target",
        out.to_str().unwrap(),
        "--include",
        "text",
        "--include",
        "modes/exec.sh",
    ]));
    let got: Vec<String> = walk(&out).into_iter().map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(got, vec!["modes", "modes/exec.sh", "text", "text/dup-of-lorem.txt", "text/lorem.txt", "text/up-link"]);
    assert_eq!(fs::read(out.join("text/lorem.txt")).unwrap(), fs::read(src.join("text/lorem.txt")).unwrap());
    let bad =
        run(&["restore", "latest", "--store", store.to_str().unwrap(), "--target", "/tmp/x", "--include", "../etc"]);
    assert!(!bad.status.success());
}

#[test]
fn excludes_skip_matching_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("cache/deep")).unwrap();
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::write(src.join("cache/deep/x"), b"x").unwrap();
    fs::write(src.join("keep/a.log"), b"log").unwrap();
    fs::write(src.join("keep/a.txt"), b"txt").unwrap();
    let store = tmp.path().join("store");
    let r = push_json(&src, store.to_str().unwrap(), &["--exclude", "cache", "--exclude", "*.log"]);
    assert_eq!(r["files"], 1);
    let out = tmp.path().join("out");
    ok(run(&["restore", "latest", "--store", store.to_str().unwrap(), "--target", out.to_str().unwrap()]));
    let got: Vec<String> = walk(&out).into_iter().map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(got, vec!["keep", "keep/a.txt"]);
}

fn losetup(img: &Path) -> String {
    let o = std::process::Command::new("losetup").args(["-f", "--show"]).arg(img).output().unwrap();
    assert!(
        o.status.success(),
        "losetup failed (the block-device test needs root and loop devices): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn single_file_and_block_device_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap();
    // A regular file (an image) restores to a file.
    let img = tmp.path().join("disk.img");
    let content = [seeded_bytes(10, 5 << 20), vec![0u8; 3 << 20], text_bytes(11, 4 << 20)].concat();
    fs::write(&img, &content).unwrap();
    let r = push_json(&img, store_s, &[]);
    assert_eq!(r["files"], 1);
    let out = tmp.path().join("restored.img");
    ok(run(&["restore", r["snapshot"].as_str().unwrap(), "--store", store_s, "--target", out.to_str().unwrap()]));
    assert_eq!(fs::read(&out).unwrap(), content);
    // Unchanged: not read again.
    assert_eq!(push_json(&img, store_s, &[])["bytes_read"], 0);

    if !am_root() {
        eprintln!("not root: the block-device half of this test needs root");
        return;
    }
    // A block device is read as one stream, and restores into a block device.
    let dev_img = tmp.path().join("dev.img");
    fs::write(&dev_img, &content).unwrap();
    let dev = Loop(losetup(&dev_img));
    let r = push_json(Path::new(&dev.0), store_s, &[]);
    assert_eq!(r["bytes_read"], content.len() as u64);
    assert!(r["bytes_new"].as_u64().unwrap() < 1 << 20, "same content as the file: deduplicated");
    let target_img = tmp.path().join("target.img");
    fs::write(&target_img, vec![0xAAu8; content.len()]).unwrap();
    let target = Loop(losetup(&target_img));
    ok(run(&["restore", r["snapshot"].as_str().unwrap(), "--store", store_s, "--target", &target.0]));
    drop(target);
    assert_eq!(fs::read(&target_img).unwrap(), content, "zero ranges must be written on a device");
    // And to a plain file.
    let out2 = tmp.path().join("from-device.img");
    ok(run(&["restore", r["snapshot"].as_str().unwrap(), "--store", store_s, "--target", out2.to_str().unwrap()]));
    assert_eq!(fs::read(&out2).unwrap(), content);
}

/// A pack of small files fills more files than a process may open: the restore keeps only a
/// few open at a time (2,000 files in one pack, restored under `ulimit -n 128`).
#[test]
fn a_restore_of_many_small_files_stays_under_the_open_file_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in 0..4 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for i in 0..500 {
            fs::write(src.join(format!("d{d}/f{i:03}")), format!("small file {d}/{i}")).unwrap();
        }
    }
    let store = tmp.path().join("store");
    ok(run(&["push", src.to_str().unwrap(), "--store", store.to_str().unwrap()]));
    let out = tmp.path().join("out");
    let mut c = cli();
    c.env("RAYON_NUM_THREADS", "2").args([
        "-c",
        r#"ulimit -n 128 && exec "$0" restore latest --store "$1" --target "$2""#,
        BIN,
        store.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let mut sh = Command::new("sh");
    sh.args(c.get_args()).envs(c.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    ok(sh.output().unwrap());
    assert_same_tree(&src, &out);
}
