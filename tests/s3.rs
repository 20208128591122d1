//! The store on a real S3 server: SeaweedFS, started once for this test binary.

mod common;
#[path = "common/conformance.rs"]
mod conformance;

use common::*;
use push_operator::store::backend::Backend;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

fn server() -> &'static Seaweed {
    static S: OnceLock<Seaweed> = OnceLock::new();
    S.get_or_init(Seaweed::start)
}

fn bucket(name: &str) -> String {
    server().create_bucket(name);
    name.to_string()
}

fn run_s3(args: &[&str]) -> std::process::Output {
    let env = server().env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_env(args, &env)
}

#[test]
fn s3_backend_conforms() {
    let b = bucket("conformance");
    conformance::run_suite(Arc::new(server().backend(&b, "suite/prefix")));
}

#[test]
fn push_restore_verify_on_s3() {
    let b = bucket("roundtrip");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_full_tree(&src);
    let store = format!("s3://{b}/team/app");
    let o = ok(run_s3(&["push", src.to_str().unwrap(), "--store", &store, "--json"]));
    let first: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(first["bytes_uploaded"].as_u64().unwrap() > 0);
    let o = ok(run_s3(&["push", src.to_str().unwrap(), "--store", &store, "--json"]));
    let second: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(second["bytes_read"], 0);
    assert_eq!(second["packs_uploaded"], 0);
    let out = tmp.path().join("out");
    ok(run_s3(&["restore", "latest", "--store", &store, "--target", out.to_str().unwrap()]));
    assert_same_tree(&src, &out);
    ok(run_s3(&["verify", "--store", &store, "--read-data"]));
    // Everything lives under the prefix.
    let objects = server().backend(&b, "").list("").unwrap();
    assert!(objects.iter().all(|o| o.key.starts_with("team/app/")), "{objects:?}");
}

#[test]
fn concurrent_pushes_of_different_sources_share_one_store() {
    let b = bucket("shared");
    let tmp = tempfile::tempdir().unwrap();
    let common = seeded_bytes(77, 12 << 20);
    let mut srcs = Vec::new();
    for i in 0..2u64 {
        let src = tmp.path().join(format!("app{i}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("common.bin"), &common).unwrap();
        std::fs::write(src.join("own.bin"), seeded_bytes(i, 4 << 20)).unwrap();
        srcs.push(src);
    }
    let store = format!("s3://{b}/shared");
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let hs: Vec<_> = srcs
            .iter()
            .map(|src| s.spawn(|| run_s3(&["push", src.to_str().unwrap(), "--store", &store, "--json"])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outs {
        assert!(o.status.success(), "{}", stderr(o));
    }
    let list: serde_json::Value =
        serde_json::from_slice(&ok(run_s3(&["snapshots", "--store", &store, "--json"])).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    ok(run_s3(&["verify", "--store", &store, "--read-data"]));
    for (i, src) in srcs.iter().enumerate() {
        let id = serde_json::from_slice::<serde_json::Value>(&outs[i].stdout).unwrap()["snapshot"]
            .as_str()
            .unwrap()
            .to_string();
        let out = tmp.path().join(format!("out{i}"));
        ok(run_s3(&["restore", &id, "--store", &store, "--target", out.to_str().unwrap()]));
        assert_same_tree(src, &out);
    }
    // A third source holding the common file: its chunks are all known now.
    let third = tmp.path().join("app3");
    std::fs::create_dir_all(&third).unwrap();
    std::fs::write(third.join("copy.bin"), &common).unwrap();
    let o = ok(run_s3(&["push", third.to_str().unwrap(), "--store", &store, "--json"]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["bytes_new"], 0, "the shared chunks deduplicate across sources");
}

#[test]
fn wrong_credentials_and_missing_bucket_are_clear_errors() {
    let b = bucket("creds");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), b"data").unwrap();
    let s = server();
    let o = run_env(
        &["push", tmp.path().to_str().unwrap(), "--store", &format!("s3://{b}/x")],
        &[
            ("AWS_ENDPOINT_URL", &s.endpoint),
            ("AWS_ACCESS_KEY_ID", "WRONGKEY"),
            ("AWS_SECRET_ACCESS_KEY", "wrong"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("denied") && err.contains("AWS_ACCESS_KEY_ID"), "{err}");

    let o = run_s3(&["push", tmp.path().to_str().unwrap(), "--store", "s3://no-such-bucket/x"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("does not exist") && err.contains("create it"), "{err}");
    // Nothing was created: the bucket still does not exist, the other bucket is empty.
    assert!(s.backend(&b, "").list("").unwrap().is_empty());
    let o = run_s3(&["snapshots", "--store", "s3://no-such-bucket/x"]);
    assert!(stderr(&o).contains("does not exist"));
}

/// A TCP proxy that resets every connection after it has carried `cut_after` bytes upstream,
/// so uploads break mid-request and must be retried on a new connection.
fn cutting_proxy(upstream: String, cut_after: u64) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let cuts = Arc::new(AtomicU64::new(0));
    let c = cuts.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let up = upstream.trim_start_matches("http://").to_string();
            let cuts = c.clone();
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(&up) else { return };
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_read, mut c_write) = (server, client);
                let back = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                });
                let mut buf = vec![0u8; 64 << 10];
                let mut carried = 0u64;
                loop {
                    let n = match c_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if carried + n as u64 > cut_after {
                        cuts.fetch_add(1, Ordering::Relaxed);
                        // Reset both sides mid-request.
                        let _ = socket_linger_zero(&c_read);
                        let _ = c_read.shutdown(std::net::Shutdown::Both);
                        let _ = s_write.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    carried += n as u64;
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_write.shutdown(std::net::Shutdown::Write);
                let _ = back.join();
            });
        }
    });
    (addr, cuts)
}

fn socket_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[test]
fn connection_resets_mid_upload_are_retried() {
    let b = bucket("resets");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3u64 {
        std::fs::write(src.join(format!("f{i}")), seeded_bytes(300 + i, 5 << 20)).unwrap();
    }
    let s = server();
    let (proxy, cuts) = cutting_proxy(s.endpoint.clone(), 3 << 20);
    let store = format!("s3://{b}/r");
    let env = [
        ("AWS_ENDPOINT_URL", proxy.as_str()),
        ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s.secret_key.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    ok(run_env(&["init", "--store", &store, "--pack-size-mib", "1"], &env));
    let o = run_env(&["push", src.to_str().unwrap(), "--store", &store, "--json"], &env);
    assert!(o.status.success(), "push through resets failed: {}", stderr(&o));
    assert!(cuts.load(Ordering::Relaxed) >= 3, "the proxy cut only {} connections", cuts.load(Ordering::Relaxed));
    ok(run_s3(&["verify", "--store", &store, "--read-data"]));
    let out = tmp.path().join("out");
    ok(run_env(&["restore", "latest", "--store", &store, "--target", out.to_str().unwrap()], &env));
    assert_same_tree(&src, &out);
}
