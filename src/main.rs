use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::HumanBytes;
use push_operator::location::{Location, S3Flags};
use push_operator::progress::PushProgress;
use push_operator::store::chunker::ChunkerParams;
use push_operator::store::keys::Credentials;
use push_operator::store::push::{Counters, ParentChoice, PushOptions, push};
use push_operator::store::restore::{RestoreOptions, build_cleanup, check_restored, restore};
use push_operator::store::verify::{VerifyOptions, verify};
use push_operator::store::{Encryption, InitOptions, OpenError, Store};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Exit code of a push that completed but could not read some entries (as restic's 3).
const EXIT_WARNINGS: u8 = 3;

const NOT_ENCRYPTED: &str = "WARNING: this store is NOT encrypted: whoever can read it reads every file in it (push to a new store without --encryption none to have it encrypted)";

#[derive(Parser)]
#[command(
    name = "push-operator",
    version,
    about = "Push volumes to object storage: deduplicated, verified, restorable"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level (error, warn, info, debug, trace) or a RUST_LOG filter.
    #[arg(long, global = true, default_value = "warn", env = "PUSH_OPERATOR_LOG")]
    log: String,
    /// Logs as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// The store: a path, file://PATH or s3://BUCKET/PREFIX.
    #[arg(long, short = 's', env = "PUSH_OPERATOR_STORE")]
    store: String,
    /// S3 endpoint URL (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long)]
    s3_region: Option<String>,
    /// Path-style S3 addressing (default: on with a custom endpoint).
    #[arg(long)]
    s3_path_style: Option<bool>,
    /// Read the store's passphrase from this file (default: PUSH_OPERATOR_PASSWORD, else a
    /// prompt on a terminal).
    #[arg(long, env = "PUSH_OPERATOR_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// Read a raw 32-byte key (64 hex digits or base64) from this file instead of a passphrase
    /// (default: PUSH_OPERATOR_KEY).
    #[arg(long, env = "PUSH_OPERATOR_KEY_FILE")]
    key_file: Option<PathBuf>,
}

impl StoreArgs {
    fn backend(&self) -> anyhow::Result<Arc<dyn push_operator::store::backend::Backend>> {
        Location::parse(&self.store)?.open(&S3Flags {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
        })
    }
    /// The secrets given: files, then the environment (PUSH_OPERATOR_PASSWORD, PUSH_OPERATOR_KEY,
    /// and PUSH_OPERATOR_PREVIOUS_PASSWORD / PUSH_OPERATOR_PREVIOUS_KEY for a rotation).
    fn credentials(&self) -> anyhow::Result<Credentials> {
        let current = secrets::given(self.password_file.as_deref(), self.key_file.as_deref(), secrets::CURRENT)?;
        let previous = secrets::given(None, None, secrets::PREVIOUS)?;
        Ok(Credentials { current, previous })
    }

    /// Opens the store; asks for the passphrase on a terminal when it is encrypted and none was given.
    fn open(&self) -> anyhow::Result<Store> {
        let backend = self.backend()?;
        let credentials = self.credentials()?;
        match Store::open(backend.clone(), &credentials) {
            Err(OpenError::KeyMissing(_)) if credentials.is_empty() && secrets::can_prompt() => {
                Ok(Store::open(backend, &Credentials::given(secrets::prompt("passphrase of the store", false)?))?)
            }
            r => Ok(r?),
        }
    }

    /// Opens the store, or creates it with `init` when there is none; on a terminal, asks for
    /// the passphrase (twice for a new store) when none was given.
    fn open_or_init(&self, init: &InitOptions) -> anyhow::Result<Store> {
        let backend = self.backend()?;
        let credentials = self.credentials()?;
        // Some(true): a new store that needs a key; Some(false): an existing one.
        let key_wanted = match Store::open(backend.clone(), &credentials) {
            Ok(s) => return Ok(s),
            Err(OpenError::Missing(_)) => (init.encryption == Encryption::Aes256Gcm).then_some(true),
            Err(OpenError::KeyMissing(_)) => Some(false),
            Err(e) => return Err(e.into()),
        };
        let credentials = match key_wanted {
            Some(new) if credentials.is_empty() && secrets::can_prompt() => {
                let what = if new { "passphrase for the new store" } else { "passphrase of the store" };
                Credentials::given(secrets::prompt(what, new)?)
            }
            _ => credentials,
        };
        Store::open_or_init(backend, init, &credentials)
    }
}

/// Where secrets come from: files, the environment, or a prompt; never arguments.
mod secrets {
    use push_operator::store::keys::Secret;
    use std::io::IsTerminal;
    use std::path::Path;
    use zeroize::Zeroizing;

    /// Names of the variables that carry one secret: (passphrase, raw key).
    pub type Names = (&'static str, &'static str);
    pub const CURRENT: Names = ("PUSH_OPERATOR_PASSWORD", "PUSH_OPERATOR_KEY");
    pub const PREVIOUS: Names = ("PUSH_OPERATOR_PREVIOUS_PASSWORD", "PUSH_OPERATOR_PREVIOUS_KEY");
    pub const NEW: Names = ("PUSH_OPERATOR_NEW_PASSWORD", "PUSH_OPERATOR_NEW_KEY");

    fn read(path: &Path) -> anyhow::Result<Zeroizing<String>> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        );
        Ok(Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string()))
    }

    fn env(name: &str) -> Option<Zeroizing<String>> {
        std::env::var(name).ok().filter(|v| !v.is_empty()).map(Zeroizing::new)
    }

    fn password(text: Zeroizing<String>, from: &str) -> anyhow::Result<Secret> {
        if text.is_empty() {
            anyhow::bail!("the passphrase from {from} is empty");
        }
        Ok(Secret::Password(text))
    }

    /// The one secret given by these files or variables; two at once is an error.
    pub fn given(
        password_file: Option<&Path>,
        key_file: Option<&Path>,
        names: Names,
    ) -> anyhow::Result<Option<Secret>> {
        let (pw_var, key_var) = names;
        let mut found = Vec::new();
        if let Some(p) = password_file {
            found.push(password(read(p)?, &p.display().to_string())?);
        }
        if let Some(p) = key_file {
            found.push(Secret::parse_raw(&read(p)?).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?);
        }
        if found.is_empty() {
            if let Some(v) = env(pw_var) {
                found.push(password(v, pw_var)?);
            }
            if let Some(v) = env(key_var) {
                found.push(Secret::parse_raw(&v).map_err(|e| anyhow::anyhow!("{key_var}: {e}"))?);
            }
        }
        if found.len() > 1 {
            anyhow::bail!("give a passphrase or a raw key, not both ({pw_var} / {key_var} and their files)");
        }
        Ok(found.pop())
    }

    pub fn can_prompt() -> bool {
        std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
    }

    /// Asks on the terminal (twice when `confirm`).
    pub fn prompt(what: &str, confirm: bool) -> anyhow::Result<Secret> {
        let first = Zeroizing::new(rpassword::prompt_password(format!("enter the {what}: "))?);
        if confirm {
            let again = Zeroizing::new(rpassword::prompt_password(format!("enter the {what} again: "))?);
            if *again != *first {
                anyhow::bail!("the two passphrases differ: nothing was changed");
            }
        }
        password(first, "the prompt")
    }

    /// The new secret of `key add` and `key passwd`.
    pub fn new_secret(password_file: Option<&Path>, key_file: Option<&Path>) -> anyhow::Result<Secret> {
        match given(password_file, key_file, NEW)? {
            Some(s) => Ok(s),
            None if can_prompt() => prompt("new passphrase", true),
            None => anyhow::bail!(
                "no new key given: set PUSH_OPERATOR_NEW_PASSWORD (or PUSH_OPERATOR_NEW_KEY), or use --new-password-file (or --new-key-file)"
            ),
        }
    }
}

#[derive(Args, Clone)]
struct InitArgs {
    /// Minimum chunk size in bytes (only when the store is created).
    #[arg(long, default_value_t = ChunkerParams::default().min_size)]
    chunk_min: u32,
    /// Average chunk size in bytes.
    #[arg(long, default_value_t = ChunkerParams::default().avg_size)]
    chunk_avg: u32,
    /// Maximum chunk size in bytes.
    #[arg(long, default_value_t = ChunkerParams::default().max_size)]
    chunk_max: u32,
    /// zstd level, 1 (fast) to 22 (small).
    #[arg(long, default_value_t = 3)]
    compression_level: i32,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pack_size_mib: u64,
    /// aes-256-gcm (the default: every object sealed, keyed ids) or none (plaintext: anyone
    /// who can read the store reads the data).
    #[arg(long, default_value = "aes-256-gcm")]
    encryption: Encryption,
    /// S3 Object Lock: write every object retained this long (e.g. 30d; the bucket must have
    /// Object Lock enabled). Fixed when the store is created.
    #[arg(long, value_parser = |s: &str| parse_duration(s).map_err(|e| e.to_string()))]
    object_lock_period: Option<std::time::Duration>,
    /// compliance (nobody can shorten or bypass it) or governance.
    #[arg(long, default_value = "compliance", requires = "object_lock_period")]
    object_lock_mode: push_operator::store::backend::RetentionMode,
}

impl InitArgs {
    fn options(&self) -> InitOptions {
        InitOptions {
            chunker: ChunkerParams {
                min_size: self.chunk_min,
                avg_size: self.chunk_avg,
                max_size: self.chunk_max,
                ..ChunkerParams::default()
            },
            compression_level: self.compression_level,
            pack_size: self.pack_size_mib << 20,
            encryption: self.encryption,
            object_lock: self
                .object_lock_period
                .map(|p| push_operator::store::ObjectLock { mode: self.object_lock_mode, period_seconds: p.as_secs() }),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a store (push creates one with the defaults on first use).
    Init {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        init: InitArgs,
    },
    /// Push a directory, a regular file or a block device into the store.
    Push {
        /// What to push.
        source: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// A tag KEY=VALUE (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Skip paths matching this glob, relative to the source or by name (repeatable).
        #[arg(long = "exclude")]
        excludes: Vec<String>,
        /// Identity of the source for finding the parent (default: its absolute path).
        #[arg(long)]
        source_name: Option<String>,
        /// Parent snapshot: an id or prefix, or "none" to read everything (default: the latest
        /// snapshot of the same source).
        #[arg(long)]
        parent: Option<String>,
        /// Print one JSON object with the result.
        #[arg(long)]
        json: bool,
        /// Recorded in the snapshot: the Repository (namespace/name).
        #[arg(long, hide = true)]
        repository: Option<String>,
        /// Recorded in the snapshot: online or offline.
        #[arg(long, hide = true)]
        mode: Option<String>,
        /// Recorded in the snapshot: consistent, crash-consistent or inconsistent.
        #[arg(long, hide = true)]
        consistency: Option<String>,
        /// Recorded in the snapshot: the PushJob.
        #[arg(long, hide = true)]
        job: Option<String>,
        #[command(flatten)]
        init: InitArgs,
    },
    /// List the snapshots in the store, oldest first.
    Snapshots {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot (an id, a unique prefix or "latest").
    Restore {
        snapshot: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Where to restore: a directory for a directory snapshot, a file or block device for a
        /// file or device snapshot.
        #[arg(long)]
        target: PathBuf,
        /// Restore only this path of the snapshot and what is below it (repeatable).
        #[arg(long = "include")]
        includes: Vec<PathBuf>,
        /// Mirror: also remove every file, directory and symlink in the target that the
        /// snapshot does not have (symlinks are removed, never followed). Not with --include.
        #[arg(long)]
        delete: bool,
        /// After the restore, remove entries matching this glob, by path relative to the target
        /// or by name, e.g. postmaster.pid or '*.lock' (repeatable; sockets too).
        #[arg(long = "cleanup", value_name = "GLOB")]
        cleanup: Vec<String>,
        /// After the restore, check the target against the snapshot (types, modes, symlink
        /// targets, sizes, content re-hashed); exit non-zero when anything differs.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the CustomResourceDefinitions (YAML).
    Crds,
    /// Run the operator: the Repository and PushJob controllers.
    Controller(ControllerArgs),
    /// Push the mounted volumes of a PushJob (what the worker pod runs).
    Worker(WorkerCliArgs),
    /// One step of a RestoreJob (what its worker pods run).
    RestoreWorker(RestoreWorkerCli),
    /// Wait until a PushJob or RestoreJob finishes: exit 0 when it succeeded, 1 at once when it
    /// failed (with its reason and message) or at the timeout (for pre-upgrade hooks).
    Wait {
        /// pushjob/NAME or restorejob/NAME.
        target: String,
        /// The job's namespace (default: the kubeconfig's, or the pod's own).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Give up after this long ("30m", "2h", "90s").
        #[arg(long, default_value = "30m")]
        timeout: String,
    },
    /// Forget snapshots a retention policy does not keep (restic's rules; the data goes with
    /// the next prune).
    Forget(ForgetArgs),
    /// Delete data no snapshot references; safe while pushes run.
    Prune(PruneArgs),
    /// List the audit trail: every push, forget and prune, with its result.
    Audit {
        #[command(flatten)]
        store: StoreArgs,
        /// Only the newest N records.
        #[arg(long)]
        last: Option<usize>,
        /// Only records of this action (push, forget, prune).
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Manage the store's keys: list, add, remove, passwd (encrypted stores).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Check that every snapshot is restorable; with --read-data, read the data back too.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Read back and check every blob of PERCENT of the packs (default 100).
        #[arg(long, num_args = 0..=1, default_missing_value = "100", value_parser = parse_percent)]
        read_data: Option<f64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct NewKeyArgs {
    /// Read the new passphrase from this file (default: PUSH_OPERATOR_NEW_PASSWORD, else a prompt).
    #[arg(long)]
    new_password_file: Option<PathBuf>,
    /// Read a new raw key from this file (default: PUSH_OPERATOR_NEW_KEY).
    #[arg(long)]
    new_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeyAction {
    /// List the key slots (the one used to open the store is marked with *).
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Add a key slot for a new passphrase or raw key.
    Add {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        new: NewKeyArgs,
    },
    /// Remove a key slot (by id or unique prefix); never the last one, nor the one in use.
    Remove {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Replace the slot in use by one for a new passphrase or raw key.
    Passwd {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        new: NewKeyArgs,
    },
}

#[derive(Args, Clone)]
struct ControllerArgs {
    /// At most this many pushes run at once (and always at most one per Repository).
    #[arg(long, default_value_t = 2, env = "PUSH_OPERATOR_MAX_CONCURRENT_PUSHES")]
    max_concurrent_pushes: usize,
    /// Default deadline per priority, e.g. P1=33s,P2=6h (units s, m, h; 0 = none).
    #[arg(long, default_value = "P1=33s,P2=6h,P3=6h,P4=6h,P5=6h")]
    default_deadlines: String,
    /// Longest wait for pods and volume attachments to go before an offline push fails.
    #[arg(long, default_value = "10m")]
    detach_timeout: String,
    /// Longest wait for VolumeSnapshots to become ready.
    #[arg(long, default_value = "10m")]
    snapshot_timeout: String,
    /// Image of the worker pods (the operator's own image).
    #[arg(long, env = "PUSH_OPERATOR_WORKER_IMAGE", default_value = "ghcr.io/rediacc/push-operator:latest")]
    worker_image: String,
    /// ServiceAccount of the worker pods (it must exist in every namespace with PushJobs;
    /// default: the namespace's default account, without a token).
    #[arg(long, env = "PUSH_OPERATOR_WORKER_SERVICE_ACCOUNT")]
    worker_service_account: Option<String>,
    /// Secret for pulling the worker image, in each job's namespace (repeatable).
    #[arg(long = "worker-image-pull-secret")]
    worker_image_pull_secrets: Vec<String>,
    /// Worker CPU request.
    #[arg(long, default_value = "500m")]
    worker_cpu_request: String,
    /// Worker memory request.
    #[arg(long, default_value = "512Mi")]
    worker_memory_request: String,
    /// Worker memory limit.
    #[arg(long, default_value = "2Gi")]
    worker_memory_limit: String,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "PUSH_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Elect a leader on a Lease (run several replicas safely).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[arg(long, env = "POD_NAMESPACE", default_value = "push-operator-system")]
    lease_namespace: String,
    #[arg(long, default_value = "push-operator-leader")]
    lease_name: String,
}

#[derive(Args, Clone)]
struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent hours that have one.
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// ... of each of the N most recent days.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// ... of each of the N most recent ISO weeks.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// ... of each of the N most recent months.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// ... of each of the N most recent years.
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Keep every snapshot newer than the newest one minus DURATION (e.g. 7d, 36h, 1y6m).
    #[arg(long, value_name = "DURATION", value_parser = push_operator::store::retention::Within::parse)]
    keep_within: Option<push_operator::store::retention::Within>,
}

impl KeepArgs {
    fn policy(&self) -> push_operator::store::retention::KeepPolicy {
        push_operator::store::retention::KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
        }
    }
}

#[derive(Args, Clone)]
struct ForgetArgs {
    /// Forget these snapshots (ids or unique prefixes) instead of applying --keep-* rules.
    snapshots: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    keep: KeepArgs,
    /// Only snapshots of this Repository (NAMESPACE/NAME).
    #[arg(long)]
    repository: Option<String>,
    /// Only snapshots of this source.
    #[arg(long)]
    source: Option<String>,
    /// Only snapshots of this mode (online, offline).
    #[arg(long, value_parser = ["online", "offline"])]
    mode: Option<String>,
    /// Time zone of the calendar periods (an IANA name; default UTC).
    #[arg(long, value_parser = parse_tz)]
    time_zone: Option<chrono_tz::Tz>,
    /// Show what would be forgotten; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Prune afterwards.
    #[arg(long)]
    prune: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct PruneArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Show what would be deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Repack (most unused packs first) until the unreferenced bytes left are at most this
    /// share of the referenced ones (percent, as restic's --max-unused).
    #[arg(long, default_value = "5", value_parser = parse_share)]
    max_unused: f64,
    /// Wait this long for pushes that started before the prune, then delete (default: leave
    /// the deletion to the next prune when pushes still run).
    #[arg(long, value_parser = |s: &str| parse_duration(s).map_err(|e| e.to_string()))]
    wait: Option<std::time::Duration>,
    /// Succeed without doing anything when there is no store yet (scheduled maintenance of a
    /// Repository that was never pushed).
    #[arg(long)]
    if_exists: bool,
    /// Recorded in the audit trail.
    #[arg(long, default_value = "manual")]
    reason: String,
    #[arg(long, hide = true)]
    job: Option<String>,
    #[arg(long)]
    json: bool,
    /// Also write the JSON report here (the maintenance pod's termination message).
    #[arg(long, hide = true, env = "PUSH_OPERATOR_TERMINATION_LOG")]
    termination_log: Option<PathBuf>,
}

fn run_key(action: KeyAction) -> anyhow::Result<ExitCode> {
    match action {
        KeyAction::List { store, json } => {
            let s = store.open()?;
            if !s.is_encrypted() {
                anyhow::bail!("the store at {} is not encrypted: it has no keys", s.location());
            }
            let slots = push_operator::store::keys::list_slots(&**s.backend())?;
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

fn parse_tz(s: &str) -> Result<chrono_tz::Tz, String> {
    s.parse::<chrono_tz::Tz>().map_err(|_| format!("unknown time zone {s:?}: use an IANA name such as Europe/Berlin"))
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s} is not in [0, 100]"));
    }
    Ok(v / 100.0)
}

/// `forget --prune`.
fn prune_after_forget(s: &Store, a: &ForgetArgs) -> anyhow::Result<()> {
    if a.prune && !a.dry_run {
        let r = push_operator::store::prune::prune(s, &Default::default())?;
        if !a.json {
            print_prune(&r);
        }
    }
    Ok(())
}

fn print_prune(r: &push_operator::store::prune::PruneReport) {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
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

#[derive(Args, Clone)]
struct WorkerCliArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    namespace: String,
    #[arg(long)]
    repository: String,
    #[arg(long)]
    job: String,
    #[arg(long)]
    mode: String,
    #[arg(long)]
    consistency: String,
    #[arg(long, default_value = "P4")]
    priority: String,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long = "exclude")]
    excludes: Vec<String>,
    /// A volume to push: PVC=MOUNTPATH (repeatable).
    #[arg(long = "volume", value_parser = parse_volume, required = true)]
    volumes: Vec<(String, PathBuf)>,
    /// After a successful push, forget what this retention (a PushPolicy's, JSON) does not keep.
    #[arg(long)]
    retention: Option<String>,
    /// Where the report goes (the kubelet shows it as the termination message).
    #[arg(long, default_value = "/dev/termination-log")]
    termination_log: PathBuf,
    /// How a store this push creates is made (an existing store keeps its own settings).
    #[command(flatten)]
    init: InitArgs,
}

#[derive(Args, Clone)]
struct RestoreWorkerCli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    args: push_operator::restore_worker::RestoreWorkerArgs,
}

fn parse_volume(s: &str) -> Result<(String, PathBuf), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("volume {s:?} is not PVC=PATH"))?;
    Ok((k.to_string(), PathBuf::from(v)))
}

/// "33s", "10m", "6h", "0" -> seconds.
fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("duration {s:?}: give a number with s, m, h or d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("duration {s:?}: unit must be s, m, h or d"),
    };
    Ok(std::time::Duration::from_secs(n * mult))
}

fn controller_config(a: &ControllerArgs) -> anyhow::Result<push_operator::controller::run::RunOptions> {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use push_operator::controller::push_job::build::WorkerConfig;
    use push_operator::controller::push_job::state::Settings;
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
    Ok(push_operator::controller::run::RunOptions {
        config: push_operator::controller::Config {
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

fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("tag {s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("tag {s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!("{s} is not in (0, 100]"));
    }
    Ok(v)
}

fn init_logging(level: &str, json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal: a pod's log (and a worker's failure message taken
    // from it) stays plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        b.json().init();
    } else {
        b.init();
    }
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Init { store, init } => {
            let opts = init.options();
            let s = store.open_or_init(&opts)?;
            println!("store {} at {}", s.config.id.short(), s.location());
            if !s.is_encrypted() {
                eprintln!("{}", NOT_ENCRYPTED);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Push {
            source,
            store,
            tags,
            excludes,
            source_name,
            parent,
            json,
            repository,
            mode,
            consistency,
            job,
            init,
        } => {
            // Check the input before anything is created.
            push_operator::store::push::check_source(&source)?;
            push_operator::store::push::build_excludes(&excludes)?;
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
                o.insert("consistency".into(), outcome.snapshot.consistency.clone().into());
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
        Command::Snapshots { store, json } => {
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
                        snap.mode.as_deref().unwrap_or("-"),
                        snap.source,
                        tags.join(",")
                    );
                }
                println!("{} snapshots", snaps.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { snapshot, store, target, includes, delete, cleanup, verify, json } => {
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
                anyhow::bail!(
                    "--verify checks the whole snapshot: it cannot be combined with --include (nothing was changed)"
                );
            }
            build_cleanup(&cleanup)?;
            let s = store.open()?;
            let (id, snap) = s.find_snapshot(&snapshot)?;
            let opts = RestoreOptions { target: target.clone(), includes, mirror: delete, cleanup };
            let stats =
                restore(&s, &snap, &opts).with_context(|| format!("restore of snapshot {} failed", id.short()))?;
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
        Command::Crds => {
            print!("{}", push_operator::api::crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Controller(a) => {
            let opts = controller_config(&a)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(push_operator::controller::run::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Wait { target, namespace, timeout } => {
            use push_operator::wait;
            let (kind, name) = wait::parse_target(&target).map_err(anyhow::Error::msg)?;
            let timeout = parse_duration(&timeout).context("--timeout")?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let result = rt.block_on(async {
                let client = kube::Client::try_default().await.context("cannot reach the Kubernetes API")?;
                let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
                Ok::<_, anyhow::Error>(
                    wait::wait(client, &ns, kind, &name, timeout, std::time::Duration::from_secs(2)).await,
                )
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
        Command::RestoreWorker(a) => {
            use push_operator::restore_worker;
            exit_on_sigterm();
            push_operator::test_hooks::start_delay();
            let report = match a.store.open() {
                Ok(store) => restore_worker::run(&store, &a.args),
                Err(e) => restore_worker::failure_report(&e),
            };
            let text = restore_worker::encode_report(&report);
            if let Err(e) = std::fs::write(&a.args.termination_log, &text) {
                tracing::warn!(path = %a.args.termination_log.display(), error = %e, "cannot write the termination message");
            }
            println!("{text}");
            Ok(match &report.error {
                None => ExitCode::SUCCESS,
                Some(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            })
        }
        Command::Worker(a) => {
            use push_operator::worker;
            exit_on_sigterm();
            push_operator::test_hooks::start_delay();
            let args = worker::WorkerArgs {
                namespace: a.namespace,
                repository: a.repository,
                job: a.job,
                mode: a.mode,
                consistency: a.consistency,
                priority: a.priority,
                reason: a.reason,
                excludes: a.excludes,
                volumes: a.volumes,
                retention: match &a.retention {
                    None => None,
                    Some(j) => Some(serde_json::from_str(j).context("--retention is not a retention spec (JSON)")?),
                },
            };
            let report = match a.store.open_or_init(&a.init.options()) {
                Ok(store) => worker::run(&store, &args),
                Err(e) => {
                    use push_operator::controller::push_job::state::{WorkerFailure, WorkerReport};
                    WorkerReport { error: Some(format!("{e:#}")), reason: WorkerFailure::of(&e), ..Default::default() }
                }
            };
            let text = worker::encode_report(&report);
            if let Err(e) = std::fs::write(&a.termination_log, &text) {
                tracing::warn!(path = %a.termination_log.display(), error = %e, "cannot write the termination message");
            }
            println!("{text}");
            Ok(match &report.error {
                None => ExitCode::SUCCESS,
                Some(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            })
        }
        Command::Forget(a) if !a.snapshots.is_empty() => {
            if !a.keep.policy().is_empty() {
                anyhow::bail!("give snapshot ids or --keep-* rules, not both");
            }
            let s = a.store.open()?;
            let report = push_operator::store::forget::forget_ids(&s, &a.snapshots, a.dry_run, "manual")?;
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
        Command::Forget(a) => {
            let s = a.store.open()?;
            let opts = push_operator::store::forget::ForgetOptions {
                rules: push_operator::store::forget::Rules { default: a.keep.policy(), online: None, offline: None },
                tz: a.time_zone,
                dry_run: a.dry_run,
                repository: a.repository.clone(),
                source: a.source.clone(),
                mode: a.mode.clone(),
                reason: "manual".into(),
                job: None,
            };
            let report = push_operator::store::forget::forget(&s, &opts)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for g in &report.groups {
                    let mode = g.mode.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
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
        Command::Prune(a) => {
            let s = match Store::open(a.store.backend()?, &a.store.credentials()?) {
                Ok(s) => s,
                Err(push_operator::store::OpenError::Missing(at)) if a.if_exists => {
                    let note = format!("no store at {at} yet: nothing to prune");
                    if let Some(path) = &a.termination_log {
                        let _ = std::fs::write(path, serde_json::json!({ "skipped": note }).to_string());
                    }
                    println!("{note}");
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e.into()),
            };
            let opts = push_operator::store::prune::PruneOptions {
                dry_run: a.dry_run,
                max_unused: a.max_unused,
                wait: a.wait,
                reason: a.reason,
                job: a.job,
                ..Default::default()
            };
            let result = push_operator::store::prune::prune(&s, &opts);
            if let Some(path) = &a.termination_log {
                // The kubelet keeps 4096 bytes: cut the error, not the JSON around it.
                let text = match &result {
                    Ok(r) => serde_json::to_string(r)?,
                    Err(e) => {
                        let msg = format!("{e:#}");
                        serde_json::json!({ "error": push_operator::prefix_within(&msg, 3000) }).to_string()
                    }
                };
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
        Command::Audit { store, last, action, json } => {
            let s = store.open()?;
            let mut recs = push_operator::store::audit::list(&s)?;
            if let Some(a) = &action {
                recs.retain(|r| &r.action == a);
            }
            if let Some(n) = last {
                let skip = recs.len().saturating_sub(n);
                recs.drain(..skip);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&recs)?);
            } else {
                println!(
                    "{:<20} {:<7} {:<8} {:<26} {:<10} details",
                    "time (UTC)", "action", "result", "reason", "snapshot"
                );
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
        Command::Key { action } => run_key(action),
        Command::Verify { store, read_data, json } => {
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
                    println!("{} packs are in no index (left by an interrupted push)", report.packs_unindexed);
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
    }
}
