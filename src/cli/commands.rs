//! What each subcommand does: one function per command of [`super::Command`].

use super::*;
use crate::progress::PushProgress;
use crate::store::push::{Counters, ParentChoice, PushOptions, push};
use crate::store::restore::{RestoreOptions, build_cleanup, check_restored, restore};
use crate::store::verify::{VerifyOptions, verify};
use indicatif::HumanBytes;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Exit code of a push that completed but could not read some entries (as restic's 3).
const EXIT_WARNINGS: u8 = 3;

const NOT_ENCRYPTED: &str = "WARNING: this store is NOT encrypted: whoever can read it reads every file in it (push to a new store without --encryption none to have it encrypted)";

fn run_key(action: KeyAction) -> anyhow::Result<ExitCode> {
    match action {
        KeyAction::List { store, json } => {
            let s = store.open()?;
            if !s.is_encrypted() {
                anyhow::bail!("the store at {} is not encrypted: it has no keys", s.location());
            }
            let slots = crate::store::keys::list_slots(&**s.backend())?;
            if json {
                let v: Vec<serde_json::Value> = slots
                    .iter()
                    .map(|(id, slot)| {
                        serde_json::json!({"id": id.to_hex(), "kind": slot.kind(), "created": slot.created,
                            "host": slot.host, "current": Some(*id) == s.slot()})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(" {:<10} {:<11} {:<20} host", "id", "kind", "created (UTC)");
                for (id, slot) in &slots {
                    let mark = if Some(*id) == s.slot() { '*' } else { ' ' };
                    println!(
                        "{mark}{:<10} {:<11} {:<20} {}",
                        id.short(),
                        slot.kind(),
                        slot.created.format("%Y-%m-%d %H:%M:%S"),
                        slot.host
                    );
                }
            }
        }
        KeyAction::Add { store, new } => {
            let s = store.open()?;
            let secret = secrets::new_secret(new.new_password_file.as_deref(), new.new_key_file.as_deref())?;
            let id = s.add_key(&secret)?;
            println!("added key slot {} ({})", id.short(), secret.kind());
        }
        KeyAction::Remove { id, store } => {
            let removed = store.open()?.remove_key(&id)?;
            println!("removed key slot {}", removed.short());
        }
        KeyAction::Passwd { store, new } => {
            let s = store.open()?;
            let secret = secrets::new_secret(new.new_password_file.as_deref(), new.new_key_file.as_deref())?;
            let (added, removed) = s.change_key(&secret)?;
            println!("key slot {} replaced by {} ({})", removed.short(), added.short(), secret.kind());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `forget --prune`.
fn prune_after_forget(s: &Store, a: &ForgetArgs) -> anyhow::Result<()> {
    if a.prune && !a.dry_run {
        let r = crate::store::prune::prune(s, &Default::default())?;
        if !a.json {
            print_prune(&r);
        }
    }
    Ok(())
}

fn print_prune(r: &crate::store::prune::PruneReport) {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    if r.packs_adopted > 0 {
        println!("{} packs no index listed (left by an interrupted push) indexed again", r.packs_adopted);
    }
    println!(
        "{} snapshots reference {} blobs in {} packs; {} packs unused, {} to repack",
        r.snapshots, r.blobs_used, r.packs, r.packs_unused, r.packs_repack
    );
    if r.dry_run {
        println!("{verb} {} (dry run: nothing changed)", HumanBytes(r.bytes_reclaimed));
    } else {
        println!(
            "{verb} {} packs, reclaimed {}, repacked {}; index objects {} -> {}",
            r.packs_deleted,
            HumanBytes(r.bytes_reclaimed),
            HumanBytes(r.bytes_repacked),
            r.index_objects_before,
            r.index_objects_after
        );
    }
    if r.plans_pending > 0 {
        println!("{} still marked, deleted by a later prune: {} plan(s)", HumanBytes(r.bytes_pending), r.plans_pending);
    }
    if r.retention_extended > 0 {
        println!("Object Lock retention extended for {} objects", r.retention_extended);
    }
    for m in &r.messages {
        println!("{m}");
    }
}

fn controller_config(a: &ControllerArgs) -> anyhow::Result<crate::controller::run::RunOptions> {
    use crate::controller::push_job::build::WorkerConfig;
    use crate::controller::push_job::state::Settings;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let mut settings = Settings {
        detach_timeout: parse_duration(&a.detach_timeout)?,
        snapshot_timeout: parse_duration(&a.snapshot_timeout)?,
        ..Settings::default()
    };
    for part in a.default_deadlines.split(',').filter(|p| !p.is_empty()) {
        let (p, d) =
            part.split_once('=').with_context(|| format!("--default-deadlines: {part:?} is not P<n>=DURATION"))?;
        let idx = match p.trim() {
            "P1" => 0,
            "P2" => 1,
            "P3" => 2,
            "P4" => 3,
            "P5" => 4,
            other => anyhow::bail!("--default-deadlines: unknown priority {other:?} (P1..P5)"),
        };
        let d = parse_duration(d)?;
        settings.default_deadlines[idx] = (!d.is_zero()).then_some(d);
    }
    if a.max_concurrent_pushes == 0 {
        anyhow::bail!("--max-concurrent-pushes must be at least 1");
    }
    let q = |s: &str| Quantity(s.to_string());
    let worker = WorkerConfig {
        image: a.worker_image.clone(),
        image_pull_policy: None,
        service_account: a.worker_service_account.clone(),
        image_pull_secrets: a.worker_image_pull_secrets.clone(),
        resources: k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), q(&a.worker_cpu_request)),
                ("memory".into(), q(&a.worker_memory_request)),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), q(&a.worker_memory_limit))])),
            ..Default::default()
        },
    };
    Ok(crate::controller::run::RunOptions {
        config: crate::controller::Config {
            max_concurrent_pushes: a.max_concurrent_pushes,
            settings,
            worker,
            namespace: a.watch_namespace.clone(),
        },
        listen: a.listen,
        leader_election: a.leader_elect,
        lease_namespace: a.lease_namespace.clone(),
        lease_name: a.lease_name.clone(),
        lease_duration: std::time::Duration::from_secs(15),
    })
}

/// The first `n` of `paths` joined, with how many more there are of `total`.
fn name_some(paths: &[String], total: u64, n: usize) -> String {
    let shown: Vec<&str> = paths.iter().take(n).map(String::as_str).collect();
    let more = total.saturating_sub(shown.len() as u64);
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

/// A worker is PID 1 of its container, and PID 1 ignores SIGTERM unless it handles it: the pod of
/// a deleted job would keep running until the kubelet's SIGKILL at the end of the grace period.
/// So a worker ends at once on SIGTERM, as that SIGKILL would end it: a push publishes nothing
/// (its snapshot is the last write), an interrupted restore is undone by the operator.
fn exit_on_sigterm() {
    extern "C" fn on_term(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(143) }
    }
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
    }
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Init(a) => init(a),
        Command::Push(a) => push_cmd(a),
        Command::Snapshots(a) => snapshots(a),
        Command::Restore(a) => restore_cmd(a),
        Command::Crds => {
            print!("{}", crate::api::crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Controller(a) => controller(a),
        Command::Wait(a) => wait_cmd(a),
        Command::RestoreWorker(a) => restore_worker(a),
        Command::Worker(a) => worker(a),
        Command::Forget(a) if !a.snapshots.is_empty() => forget_snapshots(a),
        Command::Forget(a) => forget_cmd(a),
        Command::Prune(a) => prune_cmd(a),
        Command::Audit(a) => audit(a),
        Command::Key { action } => run_key(action),
        Command::Verify(a) => verify_cmd(a),
        Command::SyntheticIndex(a) => synthetic_index(a),
        Command::EngineLimits(a) => engine_limits(a),
    }
}

fn engine_limits(a: EngineLimitsArgs) -> anyhow::Result<ExitCode> {
    use crate::store::crypto::{Crypto, Keys, Sealed};
    use crate::store::pack::BlobKind;
    use std::time::Instant;
    let mut paths = Vec::new();
    if a.source.is_dir() {
        let mut stack = vec![a.source.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                let t = e.file_type()?;
                if t.is_dir() {
                    stack.push(e.path());
                } else if t.is_file() {
                    paths.push(e.path());
                }
            }
        }
    } else {
        paths.push(a.source.clone());
    }
    let t = Instant::now();
    let data: Vec<Vec<u8>> = paths.iter().map(std::fs::read).collect::<std::io::Result<_>>()?;
    let read_s = t.elapsed().as_secs_f64();
    let opts = crate::store::InitOptions::default();
    let crypto = Crypto::Sealed(Box::new(Keys::derive(&crate::store::crypto::random_key())));
    let chunker = crate::store::chunker::Chunker::new(&opts.chunker, crypto.gear());
    let t = Instant::now();
    let cuts: Vec<Vec<usize>> = data.iter().map(|d| chunker.cut_points(d, true)).collect();
    let chunk_s = t.elapsed().as_secs_f64();
    let chunks: Vec<&[u8]> = data
        .iter()
        .zip(&cuts)
        .flat_map(|(d, c)| {
            let starts = std::iter::once(0).chain(c.iter().copied());
            starts.zip(c.iter().copied()).map(move |(s, e)| &d[s..e])
        })
        .collect();
    let t = Instant::now();
    let ids: Vec<_> = chunks.iter().map(|c| crypto.id_of(c)).collect();
    let hash_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let compressed: Vec<Option<Vec<u8>>> = chunks
        .iter()
        .map(|c| crate::store::compress::compress(c, opts.compression_level))
        .collect::<std::io::Result<_>>()?;
    let compress_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut sealed_bytes = 0usize;
    for ((c, z), id) in chunks.iter().zip(&compressed).zip(&ids) {
        let plain = z.as_deref().unwrap_or(c);
        sealed_bytes += crypto.seal(Sealed::Blob { kind: BlobKind::Data, id }, plain).len();
    }
    let seal_s = t.elapsed().as_secs_f64();
    let bytes: usize = data.iter().map(|d| d.len()).sum();
    let sum = read_s + chunk_s + hash_s + compress_s + seal_s;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "{}",
        serde_json::json!({
            "files": data.len(), "bytes": bytes, "chunks": chunks.len(), "stored_bytes": sealed_bytes,
            "read_s": read_s, "fastcdc_s": chunk_s, "blake3_s": hash_s, "zstd_s": compress_s, "seal_s": seal_s,
            "sum_s": sum, "cores": cores, "bound_s": sum / cores as f64,
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn synthetic_index(a: SyntheticIndexArgs) -> anyhow::Result<ExitCode> {
    use crate::store::pack::{BlobKind, Compression, PackEntry};
    use rayon::prelude::*;
    let s = a.store.open()?;
    anyhow::ensure!(a.per_pack > 0, "--per-pack must be at least 1");
    let salt = crate::store::id::Id::random();
    let n_packs = a.blobs.div_ceil(a.per_pack as u64);
    let made_up = |what: &str, n: u64| crate::store::id::Id::of(format!("{salt} {what} {n}").as_bytes());
    let packs: Vec<(crate::store::id::Id, Vec<PackEntry>)> = (0..n_packs)
        .into_par_iter()
        .map(|p| {
            let first = p * a.per_pack as u64;
            let entries = (first..(first + a.per_pack as u64).min(a.blobs))
                .enumerate()
                .map(|(i, b)| PackEntry {
                    kind: BlobKind::Data,
                    compression: Compression::Zstd,
                    id: made_up("blob", b),
                    offset: 8 + i as u32 * (300 << 10),
                    length: 300 << 10,
                    raw_length: 512 << 10,
                })
                .collect();
            (made_up("pack", p), entries)
        })
        .collect();
    let (id, bytes) = s.write_table(&[], &packs)?;
    println!("index table {} with {} blobs in {} made-up packs: {} bytes", id.short(), a.blobs, n_packs, bytes);
    if a.snapshots > 0 {
        let (_, first) = s.list_snapshots()?.into_iter().next().context("the store needs one snapshot to copy")?;
        (0..a.snapshots).into_par_iter().try_for_each(|n| -> anyhow::Result<()> {
            let mut snap = first.clone();
            snap.source = format!("synthetic-{n}");
            snap.time = first.time - chrono::Duration::minutes(n as i64 + 1);
            s.write_snapshot(&snap)?;
            Ok(())
        })?;
        println!("{} snapshots of other sources", a.snapshots);
    }
    // What the prune that wrote such a table would leave too: a catalogue of the snapshots.
    let listing = s.snapshot_listing()?;
    s.refresh_catalog(&listing)?;
    println!("snapshot catalogue of {} snapshots", listing.snapshots.len());
    Ok(ExitCode::SUCCESS)
}

fn init(a: InitCmd) -> anyhow::Result<ExitCode> {
    let InitCmd { store, init } = a;
    let opts = init.options();
    let s = store.open_or_init(&opts)?;
    println!("store {} at {}", s.config.id.short(), s.location());
    if !s.is_encrypted() {
        eprintln!("{}", NOT_ENCRYPTED);
    }
    Ok(ExitCode::SUCCESS)
}

fn push_cmd(a: PushArgs) -> anyhow::Result<ExitCode> {
    let PushArgs { source, store, tags, excludes, source_name, parent, json, repository, mode, consistency, job, init } =
        a;
    // Check the input before anything is created.
    crate::store::push::check_source(&source)?;
    crate::store::push::build_excludes(&excludes)?;
    let s = store.open_or_init(&init.options())?;
    let mut opts = PushOptions::new(source);
    opts.tags = tags.into_iter().collect::<BTreeMap<_, _>>();
    opts.excludes = excludes;
    opts.source_name = source_name;
    opts.parent = match parent.as_deref() {
        None => ParentChoice::Auto,
        Some("none") => ParentChoice::None,
        Some(p) => ParentChoice::Snapshot(p.to_string()),
    };
    (opts.repository, opts.mode, opts.consistency, opts.job) = (repository, mode, consistency, job);
    let counters = Arc::new(Counters::default());
    let outcome = {
        let _progress = PushProgress::start(counters.clone());
        push(&s, &opts, &counters)?
    };
    let st = &outcome.snapshot.stats;
    if json {
        let mut v = serde_json::to_value(st)?;
        let o = v.as_object_mut().expect("stats are an object");
        o.insert("snapshot".into(), outcome.id.to_hex().into());
        o.insert("source".into(), outcome.snapshot.source.clone().into());
        o.insert("dedup_ratio".into(), st.dedup_ratio().into());
        o.insert("warnings".into(), outcome.warnings.clone().into());
        let changed: Vec<String> = outcome.snapshot.changed_during_read.iter().take(100).cloned().collect();
        o.insert("changed_during_read".into(), changed.into());
        o.insert("consistency".into(), serde_json::to_value(outcome.snapshot.consistency)?);
        o.insert("store_bytes".into(), outcome.store_bytes.into());
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("snapshot {} saved ({})", outcome.id.short(), outcome.snapshot.source);
        println!(
            "  files {} ({} unchanged), dirs {}, symlinks {}, skipped special {}",
            st.files, st.files_unchanged, st.dirs, st.symlinks, st.skipped_special
        );
        println!(
            "  read {}, new {} in {} chunks ({} reused), uploaded {}, in {:.2}s",
            HumanBytes(st.bytes_read),
            HumanBytes(st.bytes_new),
            st.chunks_new,
            st.chunks_reused,
            HumanBytes(st.bytes_uploaded),
            st.duration_seconds
        );
        println!("  store now holds {} of packs", HumanBytes(outcome.store_bytes));
        if st.files_changed_during_read > 0 {
            println!(
                "  {} files changed while they were read and may be torn ({}): the snapshot is marked inconsistent",
                st.files_changed_during_read,
                name_some(&outcome.snapshot.changed_during_read, st.files_changed_during_read, 5)
            );
        }
        for w in &outcome.warnings {
            eprintln!("warning: cannot read {w}");
        }
    }
    if outcome.warnings.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("push completed with warnings: {} entries could not be read", outcome.warnings.len());
        Ok(ExitCode::from(EXIT_WARNINGS))
    }
}

fn snapshots(a: SnapshotsArgs) -> anyhow::Result<ExitCode> {
    let SnapshotsArgs { store, json } = a;
    let s = store.open()?;
    if !s.is_encrypted() {
        eprintln!("{NOT_ENCRYPTED}");
    }
    let snaps = s.list_snapshots()?;
    if json {
        let v: Vec<serde_json::Value> = snaps
            .iter()
            .map(|(id, snap)| {
                let mut v = serde_json::to_value(snap).expect("snapshots serialize");
                v.as_object_mut().unwrap().insert("id".into(), id.to_hex().into());
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{:<10} {:<20} {:<8} {:>10}  {:<8} source / tags", "id", "time (UTC)", "kind", "size", "mode");
        for (id, snap) in &snaps {
            let tags: Vec<String> = snap.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{:<10} {:<20} {:<8} {:>10}  {:<8} {} {}",
                id.short(),
                snap.time.format("%Y-%m-%d %H:%M:%S"),
                format!("{:?}", snap.kind).to_lowercase(),
                HumanBytes(snap.stats.bytes_total).to_string(),
                snap.mode.map_or("-", |m| m.as_str()),
                snap.source,
                tags.join(",")
            );
        }
        println!("{} snapshots", snaps.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn restore_cmd(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let RestoreArgs { snapshot, store, target, includes, delete, cleanup, verify, json } = a;
    for inc in &includes {
        if inc.is_absolute() || inc.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            anyhow::bail!("--include {} must be a relative path inside the snapshot", inc.display());
        }
    }
    if delete && !includes.is_empty() {
        anyhow::bail!(
            "--delete makes the target hold exactly the snapshot: it cannot be combined with --include (nothing was changed)"
        );
    }
    if verify && !includes.is_empty() {
        anyhow::bail!("--verify checks the whole snapshot: it cannot be combined with --include (nothing was changed)");
    }
    build_cleanup(&cleanup)?;
    let s = store.open()?;
    let (id, snap) = s.find_snapshot(&snapshot)?;
    let opts = RestoreOptions { target: target.clone(), includes, mirror: delete, cleanup };
    let stats = restore(&s, &snap, &opts).with_context(|| format!("restore of snapshot {} failed", id.short()))?;
    let check = if verify {
        Some(
            check_restored(&s, &snap, &target, &stats.cleaned)
                .with_context(|| format!("cannot check the restore of snapshot {}", id.short()))?,
        )
    } else {
        None
    };
    let torn = &stats.changed_during_read;
    let torn_total = snap.stats.files_changed_during_read.max(torn.len() as u64);
    if json {
        let mut v = serde_json::to_value(&stats)?;
        let o = v.as_object_mut().unwrap();
        o.insert("snapshot".into(), id.to_hex().into());
        o.insert("files_changed_during_read".into(), torn_total.into());
        o.insert("check".into(), serde_json::to_value(&check)?);
        if let Some(c) = &check {
            o.insert("ok".into(), c.ok().into());
        }
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "restored snapshot {} to {}: {} files, {} dirs, {} symlinks, {} hard links, {} ({} blobs checked) in {:.2}s",
            id.short(),
            target.display(),
            stats.files,
            stats.dirs,
            stats.symlinks,
            stats.hardlinks,
            HumanBytes(stats.bytes_total),
            stats.blobs_checked,
            stats.duration_seconds
        );
        if delete {
            println!("  removed {} entries the snapshot does not have", stats.removed);
        }
        if !opts.cleanup.is_empty() {
            if stats.cleaned.is_empty() {
                println!("  cleanup: nothing matched");
            } else {
                println!("  cleanup removed: {}", stats.cleaned.join(", "));
            }
        }
        if let Some(c) = &check {
            if c.ok() {
                println!(
                    "  verified: {} files ({}), {} dirs, {} symlinks match the snapshot",
                    c.files,
                    HumanBytes(c.bytes),
                    c.dirs,
                    c.symlinks
                );
            } else {
                println!("  verify found {} differences from the snapshot:", c.problems_total);
                for p in &c.problems {
                    println!("    {p}");
                }
            }
        }
    }
    if !torn.is_empty() {
        eprintln!(
            "warning: these files changed while they were pushed and may be torn: {}",
            name_some(torn, torn_total, if json { 10 } else { 100 })
        );
    }
    match &check {
        Some(c) if !c.ok() => {
            let shown: Vec<&str> = c.problems.iter().take(3).map(String::as_str).collect();
            let more = c.problems_total.saturating_sub(shown.len() as u64);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            eprintln!(
                "error: the restored target differs from snapshot {} in {} places: {}{more}",
                id.short(),
                c.problems_total,
                shown.join("; ")
            );
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn controller(a: ControllerArgs) -> anyhow::Result<ExitCode> {
    let opts = controller_config(&a)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(crate::controller::run::run(opts))?;
    Ok(ExitCode::SUCCESS)
}

fn wait_cmd(a: WaitArgs) -> anyhow::Result<ExitCode> {
    let WaitArgs { target, namespace, timeout } = a;
    use crate::wait;
    let (kind, name) = wait::parse_target(&target).map_err(anyhow::Error::msg)?;
    let timeout = parse_duration(&timeout).context("--timeout")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let client = kube::Client::try_default().await.context("cannot reach the Kubernetes API")?;
        let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
        Ok::<_, anyhow::Error>(wait::wait(client, &ns, kind, &name, timeout, std::time::Duration::from_secs(2)).await)
    })?;
    match result {
        Ok(message) => {
            println!("{target}: succeeded: {message}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn restore_worker(a: RestoreWorkerCli) -> anyhow::Result<ExitCode> {
    use crate::restore_worker;
    exit_on_sigterm();
    crate::test_hooks::start_delay();
    let report = match a.store.open() {
        Ok(store) => restore_worker::run(&store, &a.args),
        Err(e) => restore_worker::failure_report(&e),
    };
    Ok(deliver(&restore_worker::encode_report(&report), &a.args.termination_log, report.error.as_deref()))
}

fn worker(a: WorkerCli) -> anyhow::Result<ExitCode> {
    use crate::worker;
    exit_on_sigterm();
    crate::test_hooks::start_delay();
    let report = match a.store.open_or_init(&a.init.options()) {
        Ok(store) => worker::run(&store, &a.args),
        Err(e) => {
            use crate::controller::push_job::state::{WorkerFailure, WorkerReport};
            WorkerReport { error: Some(format!("{e:#}")), reason: WorkerFailure::of(&e), ..Default::default() }
        }
    };
    Ok(deliver(&worker::encode_report(&report), &a.termination_log, report.error.as_deref()))
}

/// A worker's end: its report to the termination message (what the operator reads) and to
/// stdout, the error to stderr; the exit code says whether it failed.
fn deliver(report: &str, termination_log: &std::path::Path, error: Option<&str>) -> ExitCode {
    if let Err(e) = std::fs::write(termination_log, report) {
        tracing::warn!(path = %termination_log.display(), error = %e, "cannot write the termination message");
    }
    println!("{report}");
    match error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn forget_snapshots(a: ForgetArgs) -> anyhow::Result<ExitCode> {
    if !a.keep.policy().is_empty() {
        anyhow::bail!("give snapshot ids or --keep-* rules, not both");
    }
    let s = a.store.open()?;
    let report = crate::store::forget::forget_ids(&s, &a.snapshots, a.dry_run, "manual")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for id in &report.removed {
            println!("{} {:.8}", if a.dry_run { "would remove" } else { "removed" }, id);
        }
    }
    prune_after_forget(&s, &a)?;
    Ok(ExitCode::SUCCESS)
}

fn forget_cmd(a: ForgetArgs) -> anyhow::Result<ExitCode> {
    let s = a.store.open()?;
    let opts = crate::store::forget::ForgetOptions {
        rules: crate::store::forget::Rules { default: a.keep.policy(), online: None, offline: None },
        tz: a.time_zone,
        dry_run: a.dry_run,
        repository: a.repository.clone(),
        source: a.source.clone(),
        mode: a.mode,
        reason: "manual".into(),
        job: None,
    };
    let report = crate::store::forget::forget(&s, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for g in &report.groups {
            let mode = g.mode.map(|m| format!(" ({m})")).unwrap_or_default();
            println!("{}{mode}: keep {} by {}", g.source, g.keep.len(), g.policy);
            for d in &g.keep {
                println!("  keep   {:.8} {}  {}", d.id, d.time, d.reasons.join(", "));
            }
            for d in &g.remove {
                println!("  {} {:.8} {}", if a.dry_run { "would remove" } else { "remove" }, d.id, d.time);
            }
        }
        println!(
            "{} kept, {} {}",
            report.kept,
            report.removed.len(),
            if a.dry_run { "would be forgotten (dry run: nothing changed)" } else { "forgotten" }
        );
    }
    prune_after_forget(&s, &a)?;
    Ok(ExitCode::SUCCESS)
}

fn prune_cmd(a: PruneArgs) -> anyhow::Result<ExitCode> {
    let s = match Store::open(a.store.backend()?, &a.store.credentials()?) {
        Ok(s) => s,
        Err(crate::store::OpenError::Missing(at)) if a.if_exists => {
            let note = format!("no store at {at} yet: nothing to prune");
            if let Some(path) = &a.termination_log {
                let _ = std::fs::write(path, PruneMessage::skipped(note.clone()).encode());
            }
            println!("{note}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    let opts = crate::store::prune::PruneOptions {
        dry_run: a.dry_run,
        max_unused: a.max_unused,
        wait: a.wait,
        reason: a.reason,
        job: a.job,
        ..Default::default()
    };
    let result = crate::store::prune::prune(&s, &opts);
    if let Some(path) = &a.termination_log {
        let text = PruneMessage::of(&result).encode();
        if let Err(e) = std::fs::write(path, text) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the termination message");
        }
    }
    let r = result?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_prune(&r);
    }
    Ok(ExitCode::SUCCESS)
}

fn audit(a: AuditArgs) -> anyhow::Result<ExitCode> {
    let AuditArgs { store, last, action, json } = a;
    let s = store.open()?;
    let mut recs = crate::store::audit::list(&s)?;
    if let Some(a) = &action {
        recs.retain(|r| r.action == *a);
    }
    if let Some(n) = last {
        let skip = recs.len().saturating_sub(n);
        recs.drain(..skip);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&recs)?);
    } else {
        println!("{:<20} {:<7} {:<8} {:<26} {:<10} details", "time (UTC)", "action", "result", "reason", "snapshot");
        for r in &recs {
            let snap = match r.snapshots.len() {
                0 => "-".to_string(),
                1 => r.snapshots[0].chars().take(8).collect(),
                n => format!("{n} snaps"),
            };
            let mut details: Vec<String> = r
                .details
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    v => format!("{k}={v}"),
                })
                .collect();
            if let Some(j) = &r.job {
                details.insert(0, format!("job={j}"));
            }
            if let Some(e) = &r.error {
                details.push(format!("error={e}"));
            }
            println!(
                "{:<20} {:<7} {:<8} {:<26} {:<10} {}",
                r.time.format("%Y-%m-%d %H:%M:%S"),
                r.action,
                r.result,
                r.reason.chars().take(26).collect::<String>(),
                snap,
                details.join(" ")
            );
        }
        println!("{} records", recs.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_cmd(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let VerifyArgs { store, read_data, json } = a;
    let s = store.open()?;
    let report = verify(&s, &VerifyOptions { read_data_percent: read_data })?;
    if json {
        let mut v = serde_json::to_value(&report)?;
        v.as_object_mut().unwrap().insert("ok".into(), report.ok().into());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "checked {} snapshots, {} trees, {} index objects, {} packs ({} read back, {} blobs checked)",
            report.snapshots,
            report.trees_checked,
            report.index_objects,
            report.packs_indexed,
            report.packs_read,
            report.blobs_read
        );
        if report.packs_unindexed > 0 {
            println!(
                "{} packs are in no index (left by an interrupted push): the next prune indexes them again",
                report.packs_unindexed
            );
        }
        for p in &report.problems {
            println!("damage: {p}");
        }
        for a in &report.affected {
            println!("snapshot {} ({}, {}) cannot restore intact:", &a.id[..8], a.time, a.source);
            for p in &a.paths {
                println!("  {p}");
            }
        }
        println!("{}", if report.ok() { "no damage found" } else { "DAMAGE FOUND" });
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
