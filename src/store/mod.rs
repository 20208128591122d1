//! The store: a write-once, content-addressed layout in any [`backend::Backend`].
//!
//! ```text
//! config                 JSON: format version, store id, chunker and compression parameters
//! packs/<2 hex>/<id>     blobs (file chunks and trees), see [`pack`]
//! index/<id>             which pack holds which blob, see [`index`]; a prune's [`table`]
//! snapshots/<id>         one JSON object per push, written last, see [`snapshot`]
//! keys/<id>              the master key wrapped by a passphrase or a raw key, see [`keys`]
//! ```
//! From format version 2 on, every object but `config` and `keys/` is sealed (see [`crypto`]),
//! unless the store was created with encryption `none`.
//! Nothing here knows about Kubernetes. The full format is in docs/FORMAT.md.

pub mod audit;
pub mod backend;
pub mod catalog;
pub mod chunker;
pub mod compress;
pub mod crypto;
pub mod forget;
pub mod id;
pub mod index;
pub mod keys;
pub mod lock;
pub mod pack;
pub mod prune;
pub mod push;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod table;
#[cfg(any(test, feature = "test-hooks"))]
pub mod testdata;
pub mod tree;
pub mod verify;

use anyhow::{Context, bail};
use backend::{Backend, BackendError, ObjectInfo, Retention, RetentionMode};
use chunker::{Chunker, ChunkerParams};
use crypto::{Crypto, Keys, ObjectKind, Sealed};
use id::Id;
use index::{Index, IndexFile};
use keys::{Credentials, Secret};
use pack::{BlobKind, PackEntry};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use snapshot::Snapshot;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use table::TableReader;
use tree::Tree;

/// The format this program writes; it reads this one and [`FORMAT_V1`].
pub const FORMAT_VERSION: u32 = 2;
/// The first format: no encryption, plain BLAKE3 ids. Still read and written to.
pub const FORMAT_V1: u32 = 1;

/// Tables at least this large are read in part by a push; smaller ones are simply loaded.
pub const LAZY_TABLE_BYTES: u64 = 1 << 20;

/// One index object as a loader sees it.
enum IndexPart {
    /// Loaded in full: its content and stored length.
    File(Id, IndexFile, u64),
    Table(Id, Box<TableReader>),
}

/// What [`Store::load_index_parts`] found.
struct IndexParts {
    files: Vec<(Id, IndexFile)>,
    tables: Vec<TableReader>,
    /// Bytes of the objects loaded in full.
    loaded_bytes: u64,
}

/// How a store's objects are protected (format 2; format 1 is always `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Encryption {
    /// AES-256-GCM seals with one-time keys, keyed BLAKE3 ids, a keyed chunker (see [`crypto`]).
    #[default]
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// Plaintext: anyone who reads the store reads the data.
    #[serde(rename = "none")]
    None,
}

impl std::str::FromStr for Encryption {
    type Err = String;
    fn from_str(s: &str) -> Result<Encryption, String> {
        match s {
            "aes-256-gcm" => Ok(Encryption::Aes256Gcm),
            "none" => Ok(Encryption::None),
            _ => Err(format!("unknown encryption {s:?}: use aes-256-gcm (the default) or none")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressionParams {
    /// Always "zstd".
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    pub id: Id,
    pub created: chrono::DateTime<chrono::Utc>,
    pub chunker: ChunkerParams,
    pub compression: CompressionParams,
    /// Target pack size in bytes.
    pub pack_size: u64,
    /// Format 2 only (absent in format 1, which is never encrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// S3 Object Lock: every object the store keeps is written with this retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
    /// Encrypted stores: keyed BLAKE3 of this config with `mac` empty, so a change made by
    /// whoever holds the storage is noticed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Object Lock of a store (an S3 bucket created with Object Lock enabled): every object it
/// keeps is written with a retention of `period_seconds`, which maintenance extends for what
/// live snapshots use; prune deletes nothing whose retention has not passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLock {
    pub mode: RetentionMode,
    pub period_seconds: u64,
}

impl ObjectLock {
    /// The retention of an object written (or extended) now.
    pub fn from_now(&self) -> Retention {
        let period = chrono::Duration::seconds(self.period_seconds.min(i64::MAX as u64 / 1000) as i64);
        Retention { mode: self.mode, until: chrono::Utc::now() + period }
    }
}

impl Config {
    pub fn encryption(&self) -> Encryption {
        self.encryption.unwrap_or(Encryption::None)
    }

    fn mac_input(&self) -> Vec<u8> {
        serde_json::to_vec(&Config { mac: None, ..self.clone() }).expect("a config serializes")
    }
}

/// Parameters for a new store.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub pack_size: u64,
    /// With [`Encryption::Aes256Gcm`] the credentials' current secret opens the first key slot.
    pub encryption: Encryption,
    /// S3 Object Lock for every object (the bucket must have it enabled).
    pub object_lock: Option<ObjectLock>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            compression_level: 3,
            pack_size: 16 << 20,
            encryption: Encryption::Aes256Gcm,
            object_lock: None,
        }
    }
}

impl InitOptions {
    /// The defaults for a store that is not encrypted (tests of the format-independent parts).
    pub fn plaintext() -> InitOptions {
        InitOptions { encryption: Encryption::None, ..InitOptions::default() }
    }
}

const NO_KEYS: &str = "the store is not encrypted: it has no keys (it was created with --encryption none or by a release before format 2)";

/// Objects named by the hash of their bytes: `Damaged` (naming `what`) when `bytes`, read under
/// `id`, hash to something else.
pub(crate) fn check_name(bytes: &[u8], id: &Id, what: impl FnOnce() -> String) -> Result<(), Damaged> {
    if Id::of(bytes) == *id {
        return Ok(());
    }
    Err(Damaged(format!("{} is damaged (content does not match its name)", what())))
}

/// Data of the store that does not match its name or id (changed, truncated, replaced): the
/// store is damaged. `push-operator verify` says where, and which snapshots it affects.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Damaged(pub String);

/// Why a store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no store at {0}: push to it once to create it, or check the address")]
    Missing(String),
    #[error(
        "the store at {location} has format version {found}; this push-operator reads versions {FORMAT_V1} and {FORMAT_VERSION}: use a push-operator release that matches the store"
    )]
    Version { location: String, found: u32 },
    #[error(
        "the store at {0} is encrypted and no key was given: set PUSH_OPERATOR_PASSWORD (or PUSH_OPERATOR_KEY), or use --password-file (or --key-file)"
    )]
    KeyMissing(String),
    #[error(
        "there is no store at {0} yet, and a new store is encrypted: give a passphrase (PUSH_OPERATOR_PASSWORD, --password-file, or a prompt on a terminal) or a raw key (PUSH_OPERATOR_KEY, --key-file), or create it with --encryption none to store plaintext"
    )]
    NewStoreNeedsKey(String),
    #[error(
        "no key slot of the store at {location} opens with the given {kind}: check it (`push-operator key list` shows the slots of a store you can open)"
    )]
    WrongKey { location: String, kind: &'static str },
    #[error(
        "the store at {0} is not encrypted, but a key was given: unset PUSH_OPERATOR_PASSWORD / PUSH_OPERATOR_KEY (and the --password-file / --key-file options) to use it as it is, or push to a new store to have it encrypted"
    )]
    NotEncrypted(String),
    #[error("{0} is not a push-operator store (it holds other files and no config): choose a new or empty location")]
    Foreign(String),
    #[error("the store config at {location} is damaged: {reason}")]
    Damaged { location: String, reason: String },
    #[error("{0}")]
    Backend(#[from] BackendError),
}

pub struct Store {
    backend: Arc<dyn Backend>,
    pub config: Config,
    chunker: Chunker,
    crypto: Arc<Crypto>,
    /// The key slot that opened the store and the master key it holds (encrypted stores).
    slot: Option<(Id, crypto::Key32)>,
}

impl Store {
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    pub fn location(&self) -> String {
        self.backend.describe()
    }

    /// Opens an existing store with the secrets given (none are needed for a store that is not
    /// encrypted, and none may be given for one: see [`OpenError::NotEncrypted`]).
    pub fn open(backend: Arc<dyn Backend>, credentials: &Credentials) -> Result<Store, OpenError> {
        let location = backend.describe();
        let config = Store::read_config(&*backend)?;
        let damaged = |reason: String| OpenError::Damaged { location: location.clone(), reason };
        let (crypto, slot) = match config.encryption() {
            Encryption::None if !credentials.is_empty() => return Err(OpenError::NotEncrypted(location)),
            Encryption::None => {
                if !keys::list_slots(&*backend).map_err(|e| damaged(format!("{e:#}")))?.is_empty() {
                    return Err(damaged("it says it is not encrypted, yet it has key slots: it was changed".into()));
                }
                (Crypto::None, None)
            }
            Encryption::Aes256Gcm => {
                let (slot, master) =
                    Store::unlock(&*backend, &config, credentials).map_err(|e| match e.downcast::<OpenError>() {
                        Ok(e) => e,
                        Err(e) => damaged(format!("{e:#}")),
                    })?;
                let crypto = Crypto::Sealed(Box::new(Keys::derive(&master)));
                if crypto.config_mac(&config.mac_input()) != config.mac {
                    return Err(damaged(
                        "its config was changed after the store was created (the MAC does not match)".into(),
                    ));
                }
                (crypto, Some((slot, master)))
            }
        };
        let chunker = Chunker::new(&config.chunker, crypto.gear());
        Ok(Store { backend, config, chunker, crypto: Arc::new(crypto), slot })
    }

    /// The config, checked for a format this program reads.
    fn read_config(backend: &dyn Backend) -> Result<Config, OpenError> {
        let location = backend.describe();
        let raw = match backend.get("config") {
            Ok(raw) => raw,
            Err(BackendError::NotFound(_)) => {
                // Key slots alone are what a creation that died (or lost a race) leaves.
                let foreign = backend.list("")?.iter().any(|o| !o.key.starts_with(keys::KEYS_PREFIX));
                return Err(if foreign { OpenError::Foreign(location) } else { OpenError::Missing(location) });
            }
            Err(e) => return Err(e.into()),
        };
        let damaged = |reason: String| OpenError::Damaged { location: location.clone(), reason };
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let probe: Probe = serde_json::from_slice(&raw).map_err(|e| damaged(e.to_string()))?;
        if probe.version != FORMAT_VERSION && probe.version != FORMAT_V1 {
            return Err(OpenError::Version { location, found: probe.version });
        }
        let config: Config = serde_json::from_slice(&raw).map_err(|e| damaged(e.to_string()))?;
        if probe.version == FORMAT_V1 && config.encryption.is_some() {
            return Err(damaged("a version 1 config cannot name an encryption".into()));
        }
        if probe.version == FORMAT_VERSION && config.encryption.is_none() {
            return Err(damaged("a version 2 config must name its encryption".into()));
        }
        config.chunker.validate().map_err(damaged)?;
        if config.compression.algorithm != "zstd" {
            return Err(damaged(format!("unknown compression {}", config.compression.algorithm)));
        }
        Ok(config)
    }

    /// The master key from the first slot the current secret opens; failing that, from the
    /// previous secret, then a slot for the current secret replaces the previous one's.
    fn unlock(
        backend: &dyn Backend,
        config: &Config,
        credentials: &Credentials,
    ) -> anyhow::Result<(Id, crypto::Key32)> {
        let location = backend.describe();
        let Some(current) = &credentials.current else {
            return Err(OpenError::KeyMissing(location).into());
        };
        let slots = keys::list_slots(backend)?;
        if slots.is_empty() {
            bail!("it is encrypted but has no key slot (the keys/ objects were deleted)");
        }
        if let Some((slot, master)) = keys::unlock(&slots, &config.id, current)? {
            return Ok((slot, master));
        }
        if let Some(previous) = &credentials.previous
            && let Some((old, master)) = keys::unlock(&slots, &config.id, previous)?
        {
            let retention = config.object_lock.map(|l| l.from_now());
            let slot = keys::add_slot(backend, &config.id, &master, current, retention.as_ref())?;
            keys::remove_slot(backend, &old)?;
            tracing::info!(added = %slot.short(), removed = %old.short(), "key rotated: the previous secret's slot was replaced");
            return Ok((slot, master));
        }
        Err(OpenError::WrongKey { location, kind: current.kind() }.into())
    }

    /// Creates a store; when one exists already (created meanwhile by a concurrent push, say),
    /// opens it instead.
    pub fn init(backend: Arc<dyn Backend>, opts: &InitOptions, credentials: &Credentials) -> anyhow::Result<Store> {
        opts.chunker.validate().map_err(|e| anyhow::anyhow!(e))?;
        if !(1..=22).contains(&opts.compression_level) {
            bail!("compression level {} out of range 1..=22", opts.compression_level);
        }
        if !((1 << 20)..=(1 << 30)).contains(&opts.pack_size) {
            bail!("pack size {} out of range 1 MiB..=1 GiB", opts.pack_size);
        }
        match Store::open(backend.clone(), credentials) {
            Ok(s) => return Ok(s),
            Err(OpenError::Missing(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(lock) = &opts.object_lock {
            if lock.period_seconds == 0 {
                bail!("the object lock period must be longer than 0 seconds");
            }
            if !backend.supports_object_lock()? {
                bail!(
                    "{} has no Object Lock: create the bucket with Object Lock enabled (it cannot be turned on for a store's objects later), or leave out --object-lock-period",
                    backend.describe()
                );
            }
        }
        let mut config = Config {
            version: FORMAT_VERSION,
            id: Id::random(),
            created: chrono::Utc::now(),
            chunker: opts.chunker,
            compression: CompressionParams { algorithm: "zstd".into(), level: opts.compression_level },
            pack_size: opts.pack_size,
            encryption: Some(opts.encryption),
            object_lock: opts.object_lock,
            mac: None,
        };
        let retention = opts.object_lock.map(|l| l.from_now());
        let mut own_slot = None;
        match opts.encryption {
            Encryption::None if !credentials.is_empty() => {
                bail!("a store without encryption was asked for, but a key was given: give one or the other")
            }
            Encryption::None => {}
            Encryption::Aes256Gcm => {
                let Some(secret) = &credentials.current else {
                    return Err(OpenError::NewStoreNeedsKey(backend.describe()).into());
                };
                let master = crypto::random_key();
                config.mac = Crypto::Sealed(Box::new(Keys::derive(&master))).config_mac(&config.mac_input());
                // The slot first, bound to this config's id: a creation that dies here leaves a
                // slot that opens nothing, never a config without a key.
                own_slot = Some(keys::add_slot(&*backend, &config.id, &master, secret, retention.as_ref())?);
            }
        }
        let bytes = serde_json::to_vec_pretty(&config)?;
        let written = backend::put_kept(&*backend, "config", &bytes, retention.as_ref())?;
        if !written && let Some(slot) = own_slot {
            // Another writer created the store meanwhile: ours is not its key.
            keys::remove_slot(&*backend, &slot)?;
        }
        Ok(Store::open(backend, credentials)?)
    }

    /// The key slot this store was opened with (encrypted stores).
    pub fn slot(&self) -> Option<Id> {
        self.slot.as_ref().map(|(id, _)| *id)
    }

    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    pub fn is_encrypted(&self) -> bool {
        self.crypto.is_encrypted()
    }

    /// Adds a key slot that `secret` opens.
    pub fn add_key(&self, secret: &Secret) -> anyhow::Result<Id> {
        let (_, master) = self.slot.as_ref().context(NO_KEYS)?;
        keys::add_slot(&*self.backend, &self.config.id, master, secret, self.retention_from_now().as_ref())
    }

    /// The retention of an object written now (stores with Object Lock).
    pub fn retention_from_now(&self) -> Option<Retention> {
        self.config.object_lock.map(|l| l.from_now())
    }

    /// Writes an object the store keeps (put-if-absent), with the store's retention when it
    /// has Object Lock. Locks and prune plans, which the store deletes as it works, are written
    /// with the backend's plain put instead.
    pub fn put(&self, key: &str, data: &[u8]) -> Result<bool, BackendError> {
        backend::put_kept(&*self.backend, key, data, self.retention_from_now().as_ref())
    }

    /// Until when Object Lock keeps this object from being deleted; `None` when it may go now.
    pub fn retained_until(&self, key: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, BackendError> {
        if self.config.object_lock.is_none() {
            return Ok(None);
        }
        Ok(self.backend.retention(key)?.map(|r| r.until).filter(|t| *t > chrono::Utc::now()))
    }

    /// Removes a key slot, given by id or a unique prefix. The last slot and the slot this
    /// store was opened with are refused (`key passwd` replaces the latter).
    pub fn remove_key(&self, spec: &str) -> anyhow::Result<Id> {
        let (current, _) = self.slot.as_ref().context(NO_KEYS)?;
        let slots = keys::list_slots(&*self.backend)?;
        let spec = spec.to_ascii_lowercase();
        let matches: Vec<Id> = slots.iter().map(|(id, _)| *id).filter(|id| id.to_hex().starts_with(&spec)).collect();
        let id = match matches.as_slice() {
            [] => bail!("no key slot {spec:?}: `push-operator key list` lists them"),
            [id] => *id,
            _ => bail!("{} key slots start with {spec:?}: give more digits", matches.len()),
        };
        if slots.len() == 1 {
            bail!(
                "{} is the store's only key slot: removing it would lose every snapshot; add another first",
                id.short()
            );
        }
        if id == *current {
            bail!(
                "{} is the slot this command opened the store with: use `key passwd` to replace it, or open with another key",
                id.short()
            );
        }
        keys::remove_slot(&*self.backend, &id)?;
        Ok(id)
    }

    /// Replaces the slot this store was opened with by one for `secret`; returns (new, old).
    pub fn change_key(&self, secret: &Secret) -> anyhow::Result<(Id, Id)> {
        let (current, _) = self.slot.as_ref().context(NO_KEYS)?;
        let new = self.add_key(secret)?;
        keys::remove_slot(&*self.backend, current)?;
        Ok((new, *current))
    }

    /// Seals a whole object of this kind (a copy of the bytes when the store is not encrypted).
    pub fn seal_object<'a>(&self, kind: ObjectKind, plain: &'a [u8]) -> Cow<'a, [u8]> {
        self.crypto.seal(Sealed::Object(kind), plain)
    }

    /// Opens a whole object read from `key`.
    pub fn open_object<'a>(&self, kind: ObjectKind, key: &str, bytes: &'a [u8]) -> anyhow::Result<Cow<'a, [u8]>> {
        self.crypto.open(Sealed::Object(kind), bytes).with_context(|| format!("object {key}"))
    }

    pub fn open_or_init(
        backend: Arc<dyn Backend>,
        opts: &InitOptions,
        credentials: &Credentials,
    ) -> anyhow::Result<Store> {
        match Store::open(backend.clone(), credentials) {
            Ok(s) => Ok(s),
            Err(OpenError::Missing(_)) => Store::init(backend, opts, credentials),
            Err(e) => Err(e.into()),
        }
    }

    /// The index for reading and pushing: every live index object, plus the packs pending
    /// prunes have marked for deletion (readable, never reused; see [`prune`]).
    pub fn load_index(&self) -> anyhow::Result<Index> {
        self.index_of(self.load_index_files()?)
    }

    /// The index of these index objects plus the doomed packs (what [`Store::load_index`]
    /// gives, for callers that also need the objects themselves).
    pub fn index_of(&self, files: Vec<(Id, IndexFile)>) -> anyhow::Result<Index> {
        let mut index = Index::from_files(files, self.crypto.overhead());
        for (pack, entries) in self.doomed_packs()? {
            index.add_doomed_pack(pack, &entries);
        }
        Ok(index)
    }

    /// Every index object that is not superseded, decoded (tables in full).
    pub fn load_index_files(&self) -> anyhow::Result<Vec<(Id, IndexFile)>> {
        Ok(self.load_index_parts(false)?.files)
    }

    /// The index for a push: index objects in memory, consolidated tables read in part (their
    /// headers now, a page per lookup later), so what a push reads and holds follows what it
    /// pushes rather than what the store holds.
    pub fn load_push_index(&self) -> anyhow::Result<Index> {
        let IndexParts { files, tables, loaded_bytes } = self.load_index_parts(true)?;
        let mut index = self.index_of(files)?;
        index.loaded_bytes = loaded_bytes;
        for t in tables {
            index.add_table(t);
        }
        Ok(index)
    }

    /// The live index objects, decoded, and (when `lazy`) the tables of at least
    /// [`LAZY_TABLE_BYTES`] opened in part. An object that disappears while being read (a
    /// prune replaced it) makes the listing start over.
    fn load_index_parts(&self, lazy: bool) -> anyhow::Result<IndexParts> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let objects = self.backend.list("index/")?;
            let loaded: Vec<anyhow::Result<Option<IndexPart>>> =
                objects.par_iter().map(|o| self.load_index_part(o, lazy)).collect();
            let mut files = Vec::with_capacity(loaded.len());
            let mut tables = Vec::new();
            let mut vanished = false;
            let mut bytes = 0;
            for r in loaded {
                match r? {
                    Some(IndexPart::File(id, f, len)) => {
                        files.push((id, f));
                        bytes += len;
                    }
                    Some(IndexPart::Table(id, t)) => tables.push((id, t)),
                    None => vanished = true,
                }
            }
            if !vanished || attempt >= 5 {
                if vanished {
                    bail!("index objects keep disappearing while being read: is a prune running? try again");
                }
                let superseded: std::collections::HashSet<Id> = files
                    .iter()
                    .flat_map(|(_, f)| f.supersedes.iter())
                    .chain(tables.iter().flat_map(|(_, t)| t.header.supersedes.iter()))
                    .copied()
                    .collect();
                files.retain(|(id, _)| !superseded.contains(id));
                tables.retain(|(id, _)| !superseded.contains(id));
                let tables = tables.into_iter().map(|(_, t)| *t).collect();
                return Ok(IndexParts { files, tables, loaded_bytes: bytes });
            }
        }
    }

    fn load_index_part(&self, o: &ObjectInfo, lazy: bool) -> anyhow::Result<Option<IndexPart>> {
        let name = o.key.trim_start_matches("index/");
        let id = Id::parse(name).map_err(|e| anyhow::anyhow!("stray object {} in the store: {e}", o.key))?;
        let missing_is_none = |r: Result<Vec<u8>, BackendError>| match r {
            Ok(b) => Ok(Some(b)),
            Err(BackendError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        };
        if lazy && o.size >= LAZY_TABLE_BYTES {
            let Some(first) = missing_is_none(self.backend.get_range(&o.key, 0, 12))? else {
                return Ok(None);
            };
            if table::is_table(&first) {
                return match TableReader::open(self.backend.clone(), self.crypto.clone(), &o.key, o.size) {
                    Ok(t) => Ok(Some(IndexPart::Table(id, Box::new(t)))),
                    Err(e) if self.backend.stat(&o.key)?.is_none() => {
                        tracing::debug!(key = %o.key, error = %format!("{e:#}"), "index table vanished while opened");
                        Ok(None)
                    }
                    Err(e) => Err(e),
                };
            }
        }
        let Some(bytes) = missing_is_none(self.backend.get(&o.key))? else {
            return Ok(None);
        };
        check_name(&bytes, &id, || format!("index object {}", o.key))?;
        Ok(Some(IndexPart::File(id, self.decode_index(ObjectKind::Index, &o.key, &bytes)?, bytes.len() as u64)))
    }

    /// The packs pending prunes have marked for deletion, with their entries.
    pub fn doomed_packs(&self) -> anyhow::Result<Vec<(Id, Vec<PackEntry>)>> {
        let mut out = Vec::new();
        for o in self.backend.list(prune::PLAN_PREFIX)? {
            if !o.key.ends_with(".index") {
                continue;
            }
            match self.backend.get(&o.key) {
                Ok(b) => out.extend(self.decode_index(ObjectKind::PruneIndex, &o.key, &b)?.packs),
                Err(BackendError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Writes an index object; returns its id and size.
    ///
    /// Every index object carries one random id in its `supersedes` list (it names no object):
    /// no two index objects are ever identical, so an object a prune deletes can never be one
    /// a push is writing at the same moment.
    pub fn write_index(&self, file: &IndexFile) -> anyhow::Result<(Id, u64)> {
        let mut file = file.clone();
        file.supersedes.push(Id::random());
        self.put_index_object(&self.encode_index(ObjectKind::Index, &file))
    }

    /// Stores an index object (or table) under its content id; returns the id and the bytes
    /// written (0 when it was already there).
    fn put_index_object(&self, bytes: &[u8]) -> anyhow::Result<(Id, u64)> {
        let id = Id::of(bytes);
        let written = self.put(&format!("index/{id}"), bytes)?;
        Ok((id, if written { bytes.len() as u64 } else { 0 }))
    }

    /// Writes a consolidated index (see [`table`]) of `packs` that replaces the index objects
    /// `supersedes`; returns its id and size. Like [`Store::write_index`], it also supersedes
    /// one random id, so no two tables are identical.
    pub fn write_table(&self, supersedes: &[Id], packs: &[(Id, Vec<PackEntry>)]) -> anyhow::Result<(Id, u64)> {
        let mut supersedes = supersedes.to_vec();
        supersedes.push(Id::random());
        self.put_index_object(&table::encode(&self.crypto, &supersedes, packs))
    }

    /// An index object's stored bytes (index objects, and the index of a prune plan).
    pub fn encode_index(&self, kind: ObjectKind, file: &IndexFile) -> Vec<u8> {
        self.seal_object(kind, &file.encode()).into_owned()
    }

    /// Opens and decodes an index object read from `key`.
    pub fn decode_index(&self, kind: ObjectKind, key: &str, bytes: &[u8]) -> anyhow::Result<IndexFile> {
        if kind == ObjectKind::Index && table::is_table(bytes) {
            return table::decode_full(&self.crypto, bytes).with_context(|| format!("index table {key}"));
        }
        let plain = self.open_object(kind, key, bytes)?;
        IndexFile::decode(&plain).with_context(|| format!("index object {key}"))
    }

    /// Finds packs that no index lists (left by a push that died before writing its index)
    /// and indexes them from their trailers, so their blobs are reused. Packs are written
    /// whole, so one whose trailer cannot be read is damaged: it is left alone, and verify
    /// reports it.
    pub fn adopt_unindexed_packs(&self, index: &mut Index) -> anyhow::Result<usize> {
        let packs = self.backend.list("packs/")?;
        let in_tables = index.table_pack_ids()?;
        let orphans: Vec<_> = packs
            .into_iter()
            .filter_map(|o| {
                let id = Id::parse(o.key.rsplit('/').next()?).ok()?;
                (!index.contains_pack(&id) && !in_tables.contains(&id)).then_some((id, o))
            })
            .collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let found: Vec<(Id, Vec<PackEntry>)> = orphans
            .par_iter()
            .filter_map(|(id, o)| match self.read_pack_trailer(&o.key, o.size) {
                Ok(entries) => Some((*id, entries)),
                Err(e) => {
                    tracing::warn!(pack = %id, error = %format!("{e:#}"), "unindexed pack has no readable trailer; left alone");
                    None
                }
            })
            .collect();
        let n = found.len();
        for chunk in found.chunks(64) {
            let file = IndexFile { supersedes: vec![], packs: chunk.to_vec() };
            self.write_index(&file)?;
            for (id, entries) in chunk {
                index.add_pack(*id, entries);
            }
        }
        Ok(n)
    }

    /// The entries of a pack, read from its trailer with two range requests.
    pub fn read_pack_trailer(&self, key: &str, size: u64) -> anyhow::Result<Vec<PackEntry>> {
        if size < (pack::PACK_MAGIC.len() + pack::FOOTER_LEN) as u64 {
            bail!("pack {key} is too short ({size} bytes)");
        }
        let footer = self.backend.get_range(key, size - pack::FOOTER_LEN as u64, pack::FOOTER_LEN as u64)?;
        let count = pack::parse_footer(&footer)?;
        let tlen = pack::trailer_len(count, &self.crypto) as u64;
        if tlen + (pack::FOOTER_LEN + pack::PACK_MAGIC.len()) as u64 > size {
            bail!("pack {key}: trailer does not fit");
        }
        let trailer = self.backend.get_range(key, size - pack::FOOTER_LEN as u64 - tlen, tlen)?;
        pack::parse_trailer(&self.crypto, &trailer, size)
    }

    /// Every snapshot, oldest first (through the catalogues: see [`catalog`]).
    pub fn list_snapshots(&self) -> anyhow::Result<Vec<(Id, Snapshot)>> {
        Ok(self.snapshot_listing()?.snapshots)
    }

    /// Resolves `latest`, a full id or a unique prefix.
    pub fn find_snapshot(&self, spec: &str) -> anyhow::Result<(Id, Snapshot)> {
        let mut snaps = self.list_snapshots()?;
        if snaps.is_empty() {
            bail!("the store at {} has no snapshots yet", self.location());
        }
        if spec == "latest" {
            return Ok(snaps.pop().expect("not empty"));
        }
        let spec_l = spec.to_ascii_lowercase();
        let matches: Vec<_> = snaps.into_iter().filter(|(id, _)| id.to_hex().starts_with(&spec_l)).collect();
        match matches.len() {
            0 => bail!("no snapshot {spec:?} in the store: `push-operator snapshots` lists them"),
            1 => Ok(matches.into_iter().next().unwrap()),
            n => bail!("{n} snapshots start with {spec:?}: give more digits"),
        }
    }

    /// Writes a snapshot object; returns its id and size.
    pub fn write_snapshot(&self, snap: &Snapshot) -> anyhow::Result<(Id, u64)> {
        let bytes = self.seal_object(ObjectKind::Snapshot, &serde_json::to_vec_pretty(snap)?).into_owned();
        let id = Id::of(&bytes);
        self.put(&snapshot::snapshot_key(&id), &bytes)?;
        Ok((id, bytes.len() as u64))
    }
}

/// Reads blobs through the index, checking every hash. Tree blobs are served from whole packs
/// kept in a small cache (trees are read in walk order, which is pack order).
pub struct BlobReader<'a> {
    store: &'a Store,
    index: &'a Index,
    cache: Mutex<Vec<(Id, Arc<Vec<u8>>)>>,
    cache_packs: usize,
}

impl<'a> BlobReader<'a> {
    pub fn new(store: &'a Store, index: &'a Index) -> BlobReader<'a> {
        BlobReader { store, index, cache: Mutex::new(Vec::new()), cache_packs: 4 }
    }

    pub fn index(&self) -> &Index {
        self.index
    }

    fn cached_pack(&self, pack: Id) -> anyhow::Result<Arc<Vec<u8>>> {
        {
            let mut c = self.cache.lock().unwrap();
            if let Some(pos) = c.iter().position(|(id, _)| *id == pack) {
                let e = c.remove(pos);
                let data = e.1.clone();
                c.insert(0, e);
                return Ok(data);
            }
        }
        let data = Arc::new(self.store.backend.get(&pack::pack_key(&pack))?);
        let mut c = self.cache.lock().unwrap();
        c.insert(0, (pack, data.clone()));
        c.truncate(self.cache_packs);
        Ok(data)
    }

    /// The plaintext of a blob, hash checked.
    pub fn read(&self, id: &Id) -> anyhow::Result<Vec<u8>> {
        let (pack, entry) = self.index.locate(id)?.with_context(|| format!("blob {id} is not in the index"))?;
        let stored = if entry.kind == BlobKind::Tree {
            let data = self.cached_pack(pack)?;
            let (s, e) = (entry.offset as usize, (entry.offset + entry.length) as usize);
            if e > data.len() {
                bail!("pack {pack} is shorter than its index says");
            }
            data[s..e].to_vec()
        } else {
            self.store.backend.get_range(&pack::pack_key(&pack), entry.offset as u64, entry.length as u64)?
        };
        pack::decode_blob(&self.store.crypto, &entry, &stored).with_context(|| format!("in pack {pack}"))
    }

    pub fn read_tree(&self, id: &Id) -> anyhow::Result<Tree> {
        let bytes = self.read(id)?;
        Tree::decode(&bytes).with_context(|| format!("tree {id} does not parse"))
    }
}

/// Groups blob ids by the pack that holds them (for restore and verify, which read packs whole).
pub fn group_by_pack<'i>(index: &Index, ids: impl Iterator<Item = &'i Id>) -> HashMap<Id, Vec<Id>> {
    let mut out: HashMap<Id, Vec<Id>> = HashMap::new();
    for id in ids {
        if let Some(loc) = index.get(id) {
            out.entry(index.pack_id(loc)).or_default().push(*id);
        }
    }
    out
}
