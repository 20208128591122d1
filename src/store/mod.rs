//! The store: a write-once, content-addressed layout in any [`backend::Backend`].
//!
//! ```text
//! config                 JSON: format version, store id, chunker and compression parameters
//! packs/<2 hex>/<id>     blobs (file chunks and trees), see [`pack`]
//! index/<id>             which pack holds which blob, see [`index`]
//! snapshots/<id>         one JSON object per push, written last, see [`snapshot`]
//! ```
//! Nothing here knows about Kubernetes. The full format is in docs/FORMAT.md.

pub mod audit;
pub mod backend;
pub mod chunker;
pub mod compress;
pub mod forget;
pub mod id;
pub mod index;
pub mod lock;
pub mod pack;
pub mod prune;
pub mod push;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod testdata;
pub mod tree;
pub mod verify;

use anyhow::{Context, bail};
use backend::{Backend, BackendError};
use chunker::{Chunker, ChunkerParams};
use id::Id;
use index::{Index, IndexFile};
use pack::{BlobKind, PackEntry};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use snapshot::Snapshot;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tree::Tree;

/// The format this program writes and reads.
pub const FORMAT_VERSION: u32 = 1;

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
}

/// Parameters for a new store.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub pack_size: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { chunker: ChunkerParams::default(), compression_level: 3, pack_size: 16 << 20 }
    }
}

/// Why a store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no store at {0}: push to it once to create it, or check the address")]
    Missing(String),
    #[error(
        "the store at {location} has format version {found}; this push-operator reads version {FORMAT_VERSION}: use a push-operator release that matches the store"
    )]
    Version { location: String, found: u32 },
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

    /// Opens an existing store.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Store, OpenError> {
        let location = backend.describe();
        let raw = match backend.get("config") {
            Ok(raw) => raw,
            Err(BackendError::NotFound(_)) => {
                let foreign = !backend.list("")?.is_empty();
                return Err(if foreign { OpenError::Foreign(location) } else { OpenError::Missing(location) });
            }
            Err(e) => return Err(e.into()),
        };
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let probe: Probe = serde_json::from_slice(&raw)
            .map_err(|e| OpenError::Damaged { location: location.clone(), reason: e.to_string() })?;
        if probe.version != FORMAT_VERSION {
            return Err(OpenError::Version { location, found: probe.version });
        }
        let config: Config = serde_json::from_slice(&raw)
            .map_err(|e| OpenError::Damaged { location: location.clone(), reason: e.to_string() })?;
        config.chunker.validate().map_err(|reason| OpenError::Damaged { location: location.clone(), reason })?;
        if config.compression.algorithm != "zstd" {
            return Err(OpenError::Damaged {
                location,
                reason: format!("unknown compression {}", config.compression.algorithm),
            });
        }
        let chunker = Chunker::new(&config.chunker);
        Ok(Store { backend, config, chunker })
    }

    /// Creates a store; when one exists already (created meanwhile by a concurrent push, say),
    /// opens it instead.
    pub fn init(backend: Arc<dyn Backend>, opts: &InitOptions) -> anyhow::Result<Store> {
        opts.chunker.validate().map_err(|e| anyhow::anyhow!(e))?;
        if !(1..=22).contains(&opts.compression_level) {
            bail!("compression level {} out of range 1..=22", opts.compression_level);
        }
        if !((1 << 20)..=(1 << 30)).contains(&opts.pack_size) {
            bail!("pack size {} out of range 1 MiB..=1 GiB", opts.pack_size);
        }
        match Store::open(backend.clone()) {
            Ok(s) => return Ok(s),
            Err(OpenError::Missing(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let config = Config {
            version: FORMAT_VERSION,
            id: Id::random(),
            created: chrono::Utc::now(),
            chunker: opts.chunker,
            compression: CompressionParams { algorithm: "zstd".into(), level: opts.compression_level },
            pack_size: opts.pack_size,
        };
        let bytes = serde_json::to_vec_pretty(&config)?;
        backend.put_if_absent("config", &bytes)?;
        Ok(Store::open(backend)?)
    }

    pub fn open_or_init(backend: Arc<dyn Backend>, opts: &InitOptions) -> anyhow::Result<Store> {
        match Store::open(backend.clone()) {
            Ok(s) => Ok(s),
            Err(OpenError::Missing(_)) => Store::init(backend, opts),
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
        let mut index = Index::from_files(files);
        for (pack, entries) in self.doomed_packs()? {
            index.add_doomed_pack(pack, &entries);
        }
        Ok(index)
    }

    /// Every index object that is not superseded, decoded. An object that disappears while
    /// being read (a prune replaced it) makes the listing start over.
    pub fn load_index_files(&self) -> anyhow::Result<Vec<(Id, IndexFile)>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let objects = self.backend.list("index/")?;
            let loaded: Vec<anyhow::Result<Option<(Id, IndexFile)>>> = objects
                .par_iter()
                .map(|o| -> anyhow::Result<Option<(Id, IndexFile)>> {
                    let name = o.key.trim_start_matches("index/");
                    let id =
                        Id::parse(name).map_err(|e| anyhow::anyhow!("stray object {} in the store: {e}", o.key))?;
                    let bytes = match self.backend.get(&o.key) {
                        Ok(b) => b,
                        Err(BackendError::NotFound(_)) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    };
                    if Id::of(&bytes) != id {
                        bail!("index object {} is damaged (content does not match its name)", o.key);
                    }
                    Ok(Some((id, IndexFile::decode(&bytes).with_context(|| format!("index object {}", o.key))?)))
                })
                .collect();
            let mut files = Vec::with_capacity(loaded.len());
            let mut vanished = false;
            for r in loaded {
                match r? {
                    Some(f) => files.push(f),
                    None => vanished = true,
                }
            }
            if !vanished || attempt >= 5 {
                if vanished {
                    bail!("index objects keep disappearing while being read: is a prune running? try again");
                }
                let superseded: std::collections::HashSet<Id> =
                    files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
                files.retain(|(id, _)| !superseded.contains(id));
                return Ok(files);
            }
        }
    }

    /// The packs pending prunes have marked for deletion, with their entries.
    pub fn doomed_packs(&self) -> anyhow::Result<Vec<(Id, Vec<PackEntry>)>> {
        let mut out = Vec::new();
        for o in self.backend.list(prune::PLAN_PREFIX)? {
            if !o.key.ends_with(".index") {
                continue;
            }
            match self.backend.get(&o.key) {
                Ok(b) => out.extend(IndexFile::decode(&b).with_context(|| format!("prune plan {}", o.key))?.packs),
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
        let bytes = file.encode();
        let id = Id::of(&bytes);
        let written = self.backend.put_if_absent(&format!("index/{id}"), &bytes)?;
        Ok((id, if written { bytes.len() as u64 } else { 0 }))
    }

    /// Finds packs that no index lists (left by a push that died before writing its index)
    /// and indexes them from their trailers, so their blobs are reused. Packs are written
    /// whole, so one whose trailer cannot be read is damaged: it is left alone, and verify
    /// reports it.
    pub fn adopt_unindexed_packs(&self, index: &mut Index) -> anyhow::Result<usize> {
        let packs = self.backend.list("packs/")?;
        let orphans: Vec<_> = packs
            .into_iter()
            .filter_map(|o| {
                let id = Id::parse(o.key.rsplit('/').next()?).ok()?;
                (!index.contains_pack(&id)).then_some((id, o))
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
        let tlen = (count * pack::ENTRY_LEN) as u64;
        if tlen + (pack::FOOTER_LEN + pack::PACK_MAGIC.len()) as u64 > size {
            bail!("pack {key}: trailer does not fit");
        }
        let trailer = self.backend.get_range(key, size - pack::FOOTER_LEN as u64 - tlen, tlen)?;
        pack::parse_trailer(&trailer, size)
    }

    /// Every snapshot, oldest first.
    pub fn list_snapshots(&self) -> anyhow::Result<Vec<(Id, Snapshot)>> {
        let objects = self.backend.list("snapshots/")?;
        let mut snaps: Vec<(Id, Snapshot)> = objects
            .par_iter()
            .map(|o| -> anyhow::Result<(Id, Snapshot)> {
                let id = Id::parse(o.key.trim_start_matches("snapshots/"))
                    .map_err(|e| anyhow::anyhow!("stray object {} in the store: {e}", o.key))?;
                let bytes = self.backend.get(&o.key)?;
                if Id::of(&bytes) != id {
                    bail!("snapshot {} is damaged (content does not match its name)", id.short());
                }
                let snap: Snapshot = serde_json::from_slice(&bytes)
                    .with_context(|| format!("snapshot {} does not parse", id.short()))?;
                Ok((id, snap))
            })
            .collect::<anyhow::Result<_>>()?;
        snaps.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(snaps)
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
        let bytes = serde_json::to_vec_pretty(snap)?;
        let id = Id::of(&bytes);
        self.backend.put_if_absent(&snapshot::snapshot_key(&id), &bytes)?;
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
        let loc = self.index.get(id).with_context(|| format!("blob {id} is not in the index"))?;
        let pack = self.index.pack_id(loc);
        let entry = self.index.entry(id).expect("present");
        let stored = if loc.kind == BlobKind::Tree {
            let data = self.cached_pack(pack)?;
            let (s, e) = (loc.offset as usize, (loc.offset + loc.length) as usize);
            if e > data.len() {
                bail!("pack {pack} is shorter than its index says");
            }
            data[s..e].to_vec()
        } else {
            self.store.backend.get_range(&pack::pack_key(&pack), loc.offset as u64, loc.length as u64)?
        };
        pack::decode_blob(&entry, &stored).with_context(|| format!("in pack {pack}"))
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
