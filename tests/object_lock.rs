//! Immutable stores: S3 Object Lock on a real server (SeaweedFS). Every object the store keeps
//! is written retained; whoever holds the worker's credentials cannot delete or overwrite a
//! snapshot within its retention; prune deletes nothing still retained, and maintenance extends
//! what live snapshots use.

mod common;
use common::*;
use std::fs;
use std::sync::OnceLock;
use std::time::Duration;

fn server() -> &'static Seaweed {
    static S: OnceLock<Seaweed> = OnceLock::new();
    S.get_or_init(Seaweed::start)
}

fn run_s3(args: &[&str]) -> std::process::Output {
    let env = server().env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_env(args, &env)
}

fn json(o: std::process::Output) -> serde_json::Value {
    let o = ok(o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {}", stdout(&o)))
}

/// Every key under `prefix` with the retention of its current version (None: none).
fn retentions(bucket: &str, prefix: &str) -> Vec<(String, Option<(String, i64)>)> {
    let (rt, c) = server().client();
    rt.block_on(async {
        let listed = c.list_objects_v2().bucket(bucket).prefix(prefix).send().await.unwrap();
        let mut out = Vec::new();
        for o in listed.contents() {
            let key = o.key().unwrap().to_string();
            let r = c.get_object_retention().bucket(bucket).key(&key).send().await.ok().and_then(|r| {
                let r = r.retention()?;
                Some((r.mode()?.as_str().to_string(), r.retain_until_date()?.secs()))
            });
            out.push((key, r));
        }
        out
    })
}

fn data(src: &std::path::Path, seed: u64) {
    fs::create_dir_all(src).unwrap();
    fs::write(src.join("text.txt"), text_bytes(seed, 400_000)).unwrap();
    fs::write(src.join("random.bin"), seeded_bytes(seed, 2_000_000)).unwrap();
}

#[test]
fn a_worker_cannot_delete_or_overwrite_a_retained_snapshot() {
    server().create_locked_bucket("worm");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    data(&src, 1);
    let store = "s3://worm/app";
    let push = json(run_s3(&["push", src.to_str().unwrap(), "--store", store, "--json", "--object-lock-period", "1d"]));
    let snapshot = push["snapshot"].as_str().unwrap().to_string();

    // Every object the store keeps is retained in compliance mode for about a day.
    let now = chrono::Utc::now().timestamp();
    let objects = retentions("worm", "app/");
    assert!(objects.iter().any(|(k, _)| k.starts_with("app/packs/")), "{objects:?}");
    for (key, r) in &objects {
        let (mode, until) = r.clone().unwrap_or_else(|| panic!("{key} has no retention"));
        assert_eq!(mode, "COMPLIANCE", "{key}");
        assert!(until > now + 23 * 3600 && until <= now + 24 * 3600 + 60, "{key}: until {until}, now {now}");
    }

    // What an attacker with the same credentials tries on the snapshot object.
    let (rt, c) = server().client();
    let key = format!("app/snapshots/{snapshot}");
    let original = rt.block_on(async { c.get_object().bucket("worm").key(&key).send().await.unwrap() });
    let version = original.version_id().unwrap().to_string();
    let original = rt.block_on(original.body.collect()).unwrap().into_bytes().to_vec();
    let refused = rt.block_on(c.delete_object().bucket("worm").key(&key).version_id(&version).send());
    let e = refused.expect_err("deleting a retained version must be refused");
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(403), "{e:?}");
    // Overwriting makes a new version; deleting without a version adds a delete marker. Neither
    // touches the retained one.
    rt.block_on(c.put_object().bucket("worm").key(&key).body(b"ransom note".to_vec().into()).send()).unwrap();
    rt.block_on(c.delete_object().bucket("worm").key(&key).send()).unwrap();
    let kept = rt.block_on(async {
        let o = c.get_object().bucket("worm").key(&key).version_id(&version).send().await.unwrap();
        o.body.collect().await.unwrap().into_bytes().to_vec()
    });
    assert_eq!(kept, original, "the retained snapshot version is intact");
}

#[test]
fn object_lock_needs_a_bucket_that_has_it() {
    server().create_bucket("plain-bucket");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    data(&src, 2);
    let o = run_s3(&["push", src.to_str().unwrap(), "--store", "s3://plain-bucket/x", "--object-lock-period", "1d"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has no Object Lock"), "{}", stderr(&o));
    assert!(retentions("plain-bucket", "").is_empty(), "nothing written");
}

#[test]
fn prune_waits_for_retention_and_maintenance_extends_what_is_live() {
    server().create_locked_bucket("retained");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    data(&src, 3);
    let store = "s3://retained/app";
    let period = 8i64;
    json(run_s3(&["push", src.to_str().unwrap(), "--store", store, "--json", "--object-lock-period", "8s"]));
    let first_push = chrono::Utc::now().timestamp();
    fs::write(src.join("random.bin"), seeded_bytes(33, 2_000_000)).unwrap();
    let second = json(run_s3(&["push", src.to_str().unwrap(), "--store", store, "--json"]));
    let live_key = format!("app/snapshots/{}", second["snapshot"].as_str().unwrap());
    let until_of = |key: &str| retentions("retained", "app/").into_iter().find(|(k, _)| k == key).unwrap().1.unwrap().1;
    let written_until = until_of(&live_key);

    // Past half the period: the first snapshot is forgotten; its data is still retained, so
    // prune keeps it; what the live snapshot uses gets a new retention.
    std::thread::sleep(Duration::from_millis(4500));
    ok(run_s3(&["forget", "--store", store, "--keep-last", "1"]));
    let r = json(run_s3(&["prune", "--store", store, "--json"]));
    assert_eq!(r["packs_deleted"], 0, "{r}");
    assert!(r["packs_retained"].as_u64().unwrap() > 0, "{r}");
    assert!(r["retention_extended"].as_u64().unwrap() > 0, "{r}");
    assert!(until_of(&live_key) > written_until, "maintenance extended the live snapshot's retention");
    ok(run_s3(&["verify", "--store", store, "--read-data"]));

    // Once the first push's retention has passed, the next prune deletes what only it used.
    // (A pack that also holds blobs the live snapshot uses was extended above: repacking it
    // waits for that retention.)
    let wait = (first_push + period + 2 - chrono::Utc::now().timestamp()).max(0) as u64;
    std::thread::sleep(Duration::from_secs(wait));
    let r = json(run_s3(&["prune", "--store", store, "--json"]));
    assert!(r["packs_deleted"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["packs_unused"], r["packs_deleted"], "every unused pack is gone: {r}");
    ok(run_s3(&["verify", "--store", store, "--read-data"]));
    let out = tmp.path().join("out");
    ok(run_s3(&["restore", "latest", "--store", store, "--target", out.to_str().unwrap()]));
    assert_same_tree(&src, &out);
}
