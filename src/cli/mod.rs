//! The command line: every subcommand's arguments, parsed by clap. It is also the contract
//! between the operator and the pods it starts: the operator builds `worker`, `restore-worker`
//! and `prune` argument lists (`controller::push_job::build`, `controller::restore_job::build`,
//! `controller::policy`), and `tests.rs` parses every list the builders make with [`Cli`].
//! What each command does is in [`commands`].

pub mod commands;
pub mod secrets;
#[cfg(test)]
mod tests;

use crate::location::{Location, S3Flags};
use crate::store::chunker::ChunkerParams;
use crate::store::keys::Credentials;
use crate::store::{Encryption, InitOptions, OpenError, Store};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "push-operator",
    version,
    about = "Push volumes to object storage: deduplicated, verified, restorable"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log level (error, warn, info, debug, trace) or a RUST_LOG filter.
    #[arg(long, global = true, default_value = "warn", env = "PUSH_OPERATOR_LOG")]
    pub log: String,
    /// Logs as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Args, Clone)]
pub struct StoreArgs {
    /// The store: a path, file://PATH or s3://BUCKET/PREFIX.
    #[arg(long, short = 's', env = "PUSH_OPERATOR_STORE")]
    pub store: String,
    /// S3 endpoint URL (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long)]
    pub s3_region: Option<String>,
    /// Path-style S3 addressing (default: on with a custom endpoint).
    #[arg(long)]
    pub s3_path_style: Option<bool>,
    /// Read the store's passphrase from this file (default: PUSH_OPERATOR_PASSWORD, else a
    /// prompt on a terminal).
    #[arg(long, env = "PUSH_OPERATOR_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Read a raw 32-byte key (64 hex digits or base64) from this file instead of a passphrase
    /// (default: PUSH_OPERATOR_KEY).
    #[arg(long, env = "PUSH_OPERATOR_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

impl StoreArgs {
    pub fn backend(&self) -> anyhow::Result<Arc<dyn crate::store::backend::Backend>> {
        Location::parse(&self.store)?.open(&S3Flags {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
        })
    }
    /// The secrets given: files, then the environment (PUSH_OPERATOR_PASSWORD, PUSH_OPERATOR_KEY,
    /// and PUSH_OPERATOR_PREVIOUS_PASSWORD / PUSH_OPERATOR_PREVIOUS_KEY for a rotation).
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let current = secrets::given(self.password_file.as_deref(), self.key_file.as_deref(), secrets::CURRENT)?;
        let previous = secrets::given(None, None, secrets::PREVIOUS)?;
        Ok(Credentials { current, previous })
    }

    /// Opens the store; asks for the passphrase on a terminal when it is encrypted and none was given.
    pub fn open(&self) -> anyhow::Result<Store> {
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
    pub fn open_or_init(&self, init: &InitOptions) -> anyhow::Result<Store> {
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

#[derive(Args, Clone)]
pub struct InitArgs {
    /// Minimum chunk size in bytes (only when the store is created).
    #[arg(long, default_value_t = ChunkerParams::default().min_size)]
    pub chunk_min: u32,
    /// Average chunk size in bytes.
    #[arg(long, default_value_t = ChunkerParams::default().avg_size)]
    pub chunk_avg: u32,
    /// Maximum chunk size in bytes.
    #[arg(long, default_value_t = ChunkerParams::default().max_size)]
    pub chunk_max: u32,
    /// zstd level, 1 (fast) to 22 (small).
    #[arg(long, default_value_t = 3)]
    pub compression_level: i32,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pub pack_size_mib: u64,
    /// aes-256-gcm (the default: every object sealed, keyed ids) or none (plaintext: anyone
    /// who can read the store reads the data).
    #[arg(long, default_value = "aes-256-gcm")]
    pub encryption: Encryption,
    /// S3 Object Lock: write every object retained this long (e.g. 30d; the bucket must have
    /// Object Lock enabled). Fixed when the store is created.
    #[arg(long, value_parser = |s: &str| parse_duration(s).map_err(|e| e.to_string()))]
    pub object_lock_period: Option<std::time::Duration>,
    /// compliance (nobody can shorten or bypass it) or governance.
    #[arg(long, default_value = "compliance", requires = "object_lock_period")]
    pub object_lock_mode: crate::store::backend::RetentionMode,
}

impl InitArgs {
    pub fn options(&self) -> InitOptions {
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
                .map(|p| crate::store::ObjectLock { mode: self.object_lock_mode, period_seconds: p.as_secs() }),
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a store (push creates one with the defaults on first use).
    Init(InitCmd),
    /// Push a directory, a regular file or a block device into the store.
    Push(PushArgs),
    /// List the snapshots in the store, oldest first.
    Snapshots(SnapshotsArgs),
    /// Restore a snapshot (an id, a unique prefix or "latest").
    Restore(RestoreArgs),
    /// Print the CustomResourceDefinitions (YAML).
    Crds,
    /// Run the operator: the Repository and PushJob controllers.
    Controller(ControllerArgs),
    /// Push the mounted volumes of a PushJob (what the worker pod runs).
    Worker(WorkerCli),
    /// One step of a RestoreJob (what its worker pods run).
    RestoreWorker(RestoreWorkerCli),
    /// Wait until a PushJob or RestoreJob finishes: exit 0 when it succeeded, 1 at once when it
    /// failed (with its reason and message) or at the timeout (for pre-upgrade hooks).
    Wait(WaitArgs),
    /// Forget snapshots a retention policy does not keep (restic's rules; the data goes with
    /// the next prune).
    Forget(ForgetArgs),
    /// Delete data no snapshot references; safe while pushes run.
    Prune(PruneArgs),
    /// List the audit trail: every push, forget and prune, with its result.
    Audit(AuditArgs),
    /// Manage the store's keys: list, add, remove, passwd (encrypted stores).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Check that every snapshot is restorable; with --read-data, read the data back too.
    Verify(VerifyArgs),
    /// Benchmarks only: add a consolidated index of made-up blobs in packs that do not exist,
    /// so a store looks as large as a real one to a push (never use on a store you keep:
    /// verify and prune report the packs missing).
    #[command(hide = true)]
    SyntheticIndex(SyntheticIndexArgs),
    /// Benchmarks only: time each stage of a push alone (read, FastCDC, BLAKE3, zstd, AES-GCM)
    /// on one thread over the same data, the machine's limit for a push of it.
    #[command(hide = true)]
    EngineLimits(EngineLimitsArgs),
}

#[derive(Args, Clone)]
pub struct EngineLimitsArgs {
    /// A directory or a file.
    pub source: PathBuf,
}

#[derive(Args, Clone)]
pub struct SyntheticIndexArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// How many blobs.
    #[arg(long)]
    pub blobs: u64,
    /// Blobs per made-up pack (32: 512 KiB chunks in 16 MiB packs).
    #[arg(long, default_value_t = 32)]
    pub per_pack: u32,
    /// Also this many snapshots of other sources (copies of the store's first snapshot).
    #[arg(long, default_value_t = 0)]
    pub snapshots: u32,
}

#[derive(Args, Clone)]
pub struct InitCmd {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub init: InitArgs,
}

#[derive(Args, Clone)]
pub struct PushArgs {
    /// What to push.
    pub source: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// A tag KEY=VALUE (repeatable).
    #[arg(long = "tag", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Skip paths matching this glob, relative to the source or by name (repeatable).
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// Identity of the source for finding the parent (default: its absolute path).
    #[arg(long)]
    pub source_name: Option<String>,
    /// Parent snapshot: an id or prefix, or "none" to read everything (default: the latest
    /// snapshot of the same source).
    #[arg(long)]
    pub parent: Option<String>,
    /// Print one JSON object with the result.
    #[arg(long)]
    pub json: bool,
    /// Recorded in the snapshot: the Repository (namespace/name).
    #[arg(long, hide = true)]
    pub repository: Option<String>,
    /// Recorded in the snapshot: online or offline.
    #[arg(long, hide = true)]
    pub mode: Option<crate::store::snapshot::Mode>,
    /// Recorded in the snapshot: consistent, crash-consistent or inconsistent.
    #[arg(long, hide = true)]
    pub consistency: Option<crate::store::snapshot::Consistency>,
    /// Recorded in the snapshot: the PushJob.
    #[arg(long, hide = true)]
    pub job: Option<String>,
    #[command(flatten)]
    pub init: InitArgs,
}

#[derive(Args, Clone)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct RestoreArgs {
    pub snapshot: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where to restore: a directory for a directory snapshot, a file or block device for a
    /// file or device snapshot.
    #[arg(long)]
    pub target: PathBuf,
    /// Restore only this path of the snapshot and what is below it (repeatable).
    #[arg(long = "include")]
    pub includes: Vec<PathBuf>,
    /// Mirror: also remove every file, directory and symlink in the target that the
    /// snapshot does not have (symlinks are removed, never followed). Not with --include.
    #[arg(long)]
    pub delete: bool,
    /// After the restore, remove entries matching this glob, by path relative to the target
    /// or by name, e.g. postmaster.pid or '*.lock' (repeatable; sockets too).
    #[arg(long = "cleanup", value_name = "GLOB")]
    pub cleanup: Vec<String>,
    /// After the restore, check the target against the snapshot (types, modes, symlink
    /// targets, sizes, content re-hashed); exit non-zero when anything differs.
    #[arg(long)]
    pub verify: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct WaitArgs {
    /// pushjob/NAME or restorejob/NAME.
    pub target: String,
    /// The job's namespace (default: the kubeconfig's, or the pod's own).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Give up after this long ("30m", "2h", "90s").
    #[arg(long, default_value = "30m")]
    pub timeout: String,
}

#[derive(Args, Clone)]
pub struct AuditArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only the newest N records.
    #[arg(long)]
    pub last: Option<usize>,
    /// Only records of this action.
    #[arg(long, value_enum)]
    pub action: Option<crate::store::audit::Action>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Read back and check every blob of PERCENT of the packs (default 100).
    #[arg(long, num_args = 0..=1, default_missing_value = "100", value_parser = parse_percent)]
    pub read_data: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct NewKeyArgs {
    /// Read the new passphrase from this file (default: PUSH_OPERATOR_NEW_PASSWORD, else a prompt).
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
    /// Read a new raw key from this file (default: PUSH_OPERATOR_NEW_KEY).
    #[arg(long)]
    pub new_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum KeyAction {
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
pub struct ControllerArgs {
    /// At most this many pushes run at once (and always at most one per Repository).
    #[arg(long, default_value_t = 2, env = "PUSH_OPERATOR_MAX_CONCURRENT_PUSHES")]
    pub max_concurrent_pushes: usize,
    /// Default deadline per priority, e.g. P1=33s,P2=6h (units s, m, h; 0 = none).
    #[arg(long, default_value = "P1=33s,P2=6h,P3=6h,P4=6h,P5=6h")]
    pub default_deadlines: String,
    /// Longest wait for pods and volume attachments to go before an offline push fails.
    #[arg(long, default_value = "10m")]
    pub detach_timeout: String,
    /// Longest wait for VolumeSnapshots to become ready.
    #[arg(long, default_value = "10m")]
    pub snapshot_timeout: String,
    /// Image of the worker pods (the operator's own image).
    #[arg(long, env = "PUSH_OPERATOR_WORKER_IMAGE", default_value = "ghcr.io/rediacc/push-operator:latest")]
    pub worker_image: String,
    /// ServiceAccount of the worker pods (it must exist in every namespace with PushJobs;
    /// default: the namespace's default account, without a token).
    #[arg(long, env = "PUSH_OPERATOR_WORKER_SERVICE_ACCOUNT")]
    pub worker_service_account: Option<String>,
    /// Secret for pulling the worker image, in each job's namespace (repeatable).
    #[arg(long = "worker-image-pull-secret")]
    pub worker_image_pull_secrets: Vec<String>,
    /// Worker CPU request.
    #[arg(long, default_value = "500m")]
    pub worker_cpu_request: String,
    /// Worker memory request.
    #[arg(long, default_value = "512Mi")]
    pub worker_memory_request: String,
    /// Worker memory limit.
    #[arg(long, default_value = "2Gi")]
    pub worker_memory_limit: String,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "PUSH_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// Elect a leader on a Lease (run several replicas safely).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    #[arg(long, env = "POD_NAMESPACE", default_value = "push-operator-system")]
    pub lease_namespace: String,
    #[arg(long, default_value = "push-operator-leader")]
    pub lease_name: String,
}

#[derive(Args, Clone)]
pub struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// ... of each of the N most recent days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// ... of each of the N most recent ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// ... of each of the N most recent months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// ... of each of the N most recent years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot newer than the newest one minus DURATION (e.g. 7d, 36h, 1y6m).
    #[arg(long, value_name = "DURATION", value_parser = crate::store::retention::Within::parse)]
    pub keep_within: Option<crate::store::retention::Within>,
}

impl KeepArgs {
    pub fn policy(&self) -> crate::store::retention::KeepPolicy {
        crate::store::retention::KeepPolicy {
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
pub struct ForgetArgs {
    /// Forget these snapshots (ids or unique prefixes) instead of applying --keep-* rules.
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Only snapshots of this Repository (NAMESPACE/NAME).
    #[arg(long)]
    pub repository: Option<String>,
    /// Only snapshots of this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Only snapshots of this mode.
    #[arg(long)]
    pub mode: Option<crate::store::snapshot::Mode>,
    /// Time zone of the calendar periods (an IANA name; default UTC).
    #[arg(long, value_parser = parse_tz)]
    pub time_zone: Option<chrono_tz::Tz>,
    /// Show what would be forgotten; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune afterwards.
    #[arg(long)]
    pub prune: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct PruneArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Show what would be deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Repack (most unused packs first) until the unreferenced bytes left are at most this
    /// share of the referenced ones (percent, as restic's --max-unused).
    #[arg(long, default_value = "5", value_parser = parse_share)]
    pub max_unused: f64,
    /// Wait this long for pushes that started before the prune, then delete (default: leave
    /// the deletion to the next prune when pushes still run).
    #[arg(long, value_parser = |s: &str| parse_duration(s).map_err(|e| e.to_string()))]
    pub wait: Option<std::time::Duration>,
    /// Succeed without doing anything when there is no store yet (scheduled maintenance of a
    /// Repository that was never pushed).
    #[arg(long)]
    pub if_exists: bool,
    /// Recorded in the audit trail.
    #[arg(long, default_value = "manual")]
    pub reason: String,
    #[arg(long, hide = true)]
    pub job: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report here (the maintenance pod's termination message).
    #[arg(long, hide = true, env = "PUSH_OPERATOR_TERMINATION_LOG")]
    pub termination_log: Option<PathBuf>,
}

pub fn parse_tz(s: &str) -> Result<chrono_tz::Tz, String> {
    s.parse::<chrono_tz::Tz>().map_err(|_| format!("unknown time zone {s:?}: use an IANA name such as Europe/Berlin"))
}

pub fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s} is not in [0, 100]"));
    }
    Ok(v / 100.0)
}

/// `push-operator worker`: the PushJob's worker pod. The operator builds these arguments
/// (`controller::push_job::build::worker_pod`); the tests parse what it builds with this.
#[derive(Args, Clone)]
pub struct WorkerCli {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub args: crate::worker::WorkerArgs,
    /// Where the report goes (the kubelet shows it as the termination message).
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    /// How a store this push creates is made (an existing store keeps its own settings).
    #[command(flatten)]
    pub init: InitArgs,
}

#[derive(Args, Clone)]
pub struct RestoreWorkerCli {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub args: crate::restore_worker::RestoreWorkerArgs,
}

/// "33s", "10m", "6h", "0" -> seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
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

pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("tag {s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("tag {s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!("{s} is not in (0, 100]"));
    }
    Ok(v)
}

/// What `prune --termination-log` writes (the maintenance pod's termination message) and the
/// operator reads back: the report's totals, the error of a failed prune, or why it did nothing.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default, Clone, PartialEq)]
pub struct PruneMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_reclaimed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl PruneMessage {
    pub fn of(result: &anyhow::Result<crate::store::prune::PruneReport>) -> Self {
        match result {
            Ok(r) => PruneMessage {
                bytes_reclaimed: Some(r.bytes_reclaimed),
                store_bytes: Some(r.store_bytes),
                ..Default::default()
            },
            // The kubelet keeps 4096 bytes: cut the error, not the JSON around it.
            Err(e) => PruneMessage {
                error: Some(crate::prefix_within(&format!("{e:#}"), 3000).to_string()),
                ..Default::default()
            },
        }
    }
    pub fn skipped(note: String) -> Self {
        PruneMessage { skipped: Some(note), ..Default::default() }
    }
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("prune messages serialize")
    }
    /// None when the message is not one (a pod that died before writing it: the kubelet then
    /// puts the log's tail there).
    pub fn parse(message: &str) -> Option<Self> {
        serde_json::from_str(message).ok()
    }
}
