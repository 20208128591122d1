//! Push: a directory, a regular file or a block device into the store.
//!
//! Directories are walked in parallel (rayon); each file is chunked, hashed and, when new,
//! compressed on the worker that read it. New blobs go into one of two open packs (data, trees);
//! a full pack is sealed and handed to a bounded queue of uploader threads, so memory stays
//! bounded whatever the size of the source. After every few stored packs an index object is
//! written; the snapshot object is written last, once everything it references is stored and
//! indexed. A push that dies leaves no snapshot, and the next push reuses what was stored.

use super::audit::{self, Action, AuditRecord, Outcome};
use super::id::Id;
use super::index::{Index, IndexFile};
use super::lock::Lock;
use super::pack::{BlobKind, PackBuilder, SealedPack, encode_blob, pack_key};
use super::snapshot::{CHANGED_DURING_READ_MAX, PushStats, Snapshot, SourceKind};
use super::tree::{Node, NodeKind, Tree};
use super::{BlobReader, Store};
use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, Sender};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Files up to this size are read whole; larger ones stream.
const SEGMENT: usize = 16 << 20;
/// The segments a large file streams through, two at a time (see `Pusher::stream_chunks`).
const STREAM_SEGMENT: usize = 8 << 20;

#[derive(Debug, Clone, Default)]
pub enum ParentChoice {
    /// The latest snapshot of the same source.
    #[default]
    Auto,
    /// Read everything.
    None,
    /// A snapshot id or prefix.
    Snapshot(String),
}

#[derive(Debug, Clone)]
pub struct PushOptions {
    pub source: PathBuf,
    /// Identity of the source for parent lookup; the canonical path when `None`.
    pub source_name: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub excludes: Vec<String>,
    pub parent: ParentChoice,
    pub repository: Option<String>,
    pub mode: Option<super::snapshot::Mode>,
    pub consistency: Option<super::snapshot::Consistency>,
    pub job: Option<String>,
    /// Uploads in flight at once.
    pub uploaders: usize,
    /// Write an index object after this many packs.
    pub index_every_packs: usize,
}

impl PushOptions {
    pub fn new(source: impl Into<PathBuf>) -> PushOptions {
        PushOptions {
            source: source.into(),
            source_name: None,
            tags: BTreeMap::new(),
            excludes: Vec::new(),
            parent: ParentChoice::Auto,
            repository: None,
            mode: None,
            consistency: None,
            job: None,
            uploaders: 4,
            index_every_packs: 8,
        }
    }
}

/// Live counters of a running push (read by the progress display).
#[derive(Debug, Default)]
pub struct Counters {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub symlinks: AtomicU64,
    pub skipped_special: AtomicU64,
    pub files_unchanged: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_new: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub chunks_new: AtomicU64,
    pub chunks_reused: AtomicU64,
    pub trees_new: AtomicU64,
    pub packs_uploaded: AtomicU64,
    pub index_written: AtomicU64,
    pub errors: AtomicU64,
    /// Regular files that changed while they were read.
    pub files_changed_during_read: AtomicU64,
    pub index_bytes_read: AtomicU64,
    pub snapshot_objects_read: AtomicU64,
    /// Bytes of the packs this push stored.
    pub pack_bytes: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub fn stats(&self, duration_seconds: f64) -> PushStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PushStats {
            files: g(&self.files),
            dirs: g(&self.dirs),
            symlinks: g(&self.symlinks),
            skipped_special: g(&self.skipped_special),
            files_unchanged: g(&self.files_unchanged),
            bytes_total: g(&self.bytes_total),
            bytes_read: g(&self.bytes_read),
            bytes_new: g(&self.bytes_new),
            bytes_uploaded: g(&self.bytes_uploaded),
            chunks_new: g(&self.chunks_new),
            chunks_reused: g(&self.chunks_reused),
            trees_new: g(&self.trees_new),
            packs_uploaded: g(&self.packs_uploaded),
            errors: g(&self.errors),
            files_changed_during_read: g(&self.files_changed_during_read),
            index_bytes_read: g(&self.index_bytes_read),
            snapshot_objects_read: g(&self.snapshot_objects_read),
            duration_seconds,
        }
    }
}

#[derive(Debug)]
pub struct PushOutcome {
    pub id: Id,
    pub snapshot: Snapshot,
    /// Entries that could not be read, as "path: reason".
    pub warnings: Vec<String>,
    /// Bytes of packs in the store once the snapshot was written: those indexed when the push
    /// started plus those it stored (packs other writers stored meanwhile are not counted).
    pub store_bytes: u64,
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub fn build_excludes(patterns: &[String]) -> anyhow::Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = GlobBuilder::new(p.trim_end_matches('/'))
            .literal_separator(true)
            .build()
            .with_context(|| format!("invalid exclude pattern {p:?}"))?;
        b.add(g);
    }
    Ok(b.build()?)
}

/// An error while archiving one entry: unreadable source data is recorded and skipped; anything
/// else (the store failing) ends the push.
enum EntryError {
    Source(io::Error),
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for EntryError {
    fn from(e: anyhow::Error) -> Self {
        EntryError::Fatal(e)
    }
}

struct Pusher<'a> {
    store: &'a Store,
    index: &'a Index,
    reader: BlobReader<'a>,
    level: i32,
    pack_size: usize,
    index_every: usize,
    pending: Mutex<HashSet<Id>>,
    data_pack: Mutex<PackBuilder>,
    tree_pack: Mutex<PackBuilder>,
    /// The upload queue; `None` once closed.
    tx: Mutex<Option<Sender<SealedPack>>>,
    index_buf: Mutex<IndexFile>,
    counters: &'a Counters,
    warnings: Mutex<Vec<String>>,
    /// Files that changed while they were read (relative paths).
    changed: Mutex<Vec<String>>,
    excludes: GlobSet,
    abort: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Packs handed to the store, and packs listed by an index object this push wrote.
    packs_sent: AtomicU64,
    packs_indexed: AtomicU64,
}

impl Pusher<'_> {
    fn fail(&self, msg: String) {
        self.abort.store(true, Ordering::SeqCst);
        let mut f = self.failure.lock().unwrap();
        if f.is_none() {
            *f = Some(msg);
        }
    }

    fn check_abort(&self) -> anyhow::Result<()> {
        if self.abort.load(Ordering::Relaxed) {
            bail!("push aborted");
        }
        Ok(())
    }

    fn warn(&self, rel: &Path, e: &io::Error) {
        add(&self.counters.errors, 1);
        tracing::warn!(path = %rel.display(), error = %e, "cannot read; skipped");
        self.warnings.lock().unwrap().push(format!("{}: {e}", rel.display()));
    }

    /// Records a file whose content may be torn: it changed while it was read.
    fn changed_during_read(&self, rel: &Path, what: &str) {
        add(&self.counters.files_changed_during_read, 1);
        tracing::warn!(path = %rel.display(), change = what, "file changed while it was read: its content in the snapshot may be torn");
        self.changed.lock().unwrap().push(rel.to_string_lossy().into_owned());
    }

    fn packer(&self, kind: BlobKind) -> &Mutex<PackBuilder> {
        match kind {
            BlobKind::Data => &self.data_pack,
            BlobKind::Tree => &self.tree_pack,
        }
    }

    /// Stores a blob unless the store (or this push) has it. Returns its id and whether it was new.
    fn store_blob(&self, kind: BlobKind, data: &[u8]) -> anyhow::Result<(Id, bool)> {
        let id = self.store.crypto().id_of(data);
        if self.index.usable(&id) || !self.pending.lock().unwrap().insert(id) {
            return Ok((id, false));
        }
        let (comp, stored) = encode_blob(self.store.crypto(), kind, &id, data, self.level)?;
        let full = {
            let mut p = self.packer(kind).lock().unwrap();
            p.add(kind, comp, id, &stored, data.len());
            if p.len() >= self.pack_size {
                Some(std::mem::replace(&mut *p, PackBuilder::new(self.pack_size + (1 << 20))))
            } else {
                None
            }
        };
        if let Some(builder) = full {
            self.send(builder)?;
        }
        Ok((id, true))
    }

    fn send(&self, builder: PackBuilder) -> anyhow::Result<()> {
        let sealed = builder.seal(self.store.crypto());
        let tx = self.tx.lock().unwrap().clone().context("push aborted: upload queue closed")?;
        tx.send(sealed).map_err(|_| anyhow::anyhow!("push aborted: uploaders stopped"))
    }

    fn store_chunk(&self, data: &[u8]) -> anyhow::Result<Id> {
        let (id, new) = self.store_blob(BlobKind::Data, data)?;
        if new {
            add(&self.counters.chunks_new, 1);
            add(&self.counters.bytes_new, data.len() as u64);
        } else {
            add(&self.counters.chunks_reused, 1);
        }
        Ok(id)
    }

    /// Uploader thread: stores sealed packs and indexes them once stored.
    fn upload_loop(&self, rx: Receiver<SealedPack>) {
        for mut pack in rx {
            if self.abort.load(Ordering::Relaxed) {
                continue; // drain, so senders never block on a dead queue
            }
            if self.index.is_doomed_pack(&pack.id) {
                // The same bytes as a pack a prune is deleting: make this one different.
                pack = salted(self.store, pack);
            }
            self.packs_sent.fetch_add(1, Ordering::SeqCst);
            match self.store.put(&pack_key(&pack.id), &pack.bytes) {
                Ok(written) => {
                    if written {
                        add(&self.counters.bytes_uploaded, pack.bytes.len() as u64);
                    }
                    add(&self.counters.pack_bytes, pack.bytes.len() as u64);
                    let n = self.counters.packs_uploaded.fetch_add(1, Ordering::SeqCst) + 1;
                    crate::test_hooks::crashpoint("pack", n);
                    let full = {
                        let mut buf = self.index_buf.lock().unwrap();
                        buf.packs.push((pack.id, pack.entries));
                        (buf.packs.len() >= self.index_every).then(|| std::mem::take(&mut *buf))
                    };
                    if let Some(file) = full
                        && let Err(e) = self.write_index(&file)
                    {
                        self.fail(format!("{e:#}"));
                    }
                }
                Err(e) => self.fail(format!("cannot store pack {}: {e}", pack.id.short())),
            }
        }
    }

    fn write_index(&self, file: &IndexFile) -> anyhow::Result<()> {
        if file.packs.is_empty() {
            return Ok(());
        }
        let (_, written) = self.store.write_index(file).context("cannot write index")?;
        self.packs_indexed.fetch_add(file.packs.len() as u64, Ordering::SeqCst);
        add(&self.counters.bytes_uploaded, written);
        let n = self.counters.index_written.fetch_add(1, Ordering::SeqCst) + 1;
        crate::test_hooks::crashpoint("index", n);
        Ok(())
    }

    /// After a failure: indexes the packs stored since the last index object, so the next push
    /// reuses them. When a pack may be stored without an index (the index could not be
    /// written, or a pack's upload failed after it may have landed), the lock is left behind
    /// to tell the next push to look for unindexed packs.
    fn index_what_was_stored(&self, lock: &Lock) {
        let rest = std::mem::take(&mut *self.index_buf.lock().unwrap());
        if let Err(e) = self.write_index(&rest) {
            tracing::warn!(packs = rest.packs.len(), error = %format!("{e:#}"), "stored packs not indexed");
        }
        let (sent, indexed) = (self.packs_sent.load(Ordering::SeqCst), self.packs_indexed.load(Ordering::SeqCst));
        if sent > indexed {
            tracing::info!(
                packs = sent - indexed,
                "packs may be stored without an index: the lock stays until it expires, so the next push looks for them"
            );
            lock.leave_behind();
        }
    }

    fn excluded(&self, rel: &Path, name: &OsStr) -> bool {
        !self.excludes.is_empty() && (self.excludes.is_match(rel) || self.excludes.is_match(Path::new(name)))
    }

    fn parent_subtree(&self, node: Option<&Node>) -> Option<Tree> {
        let id = node.filter(|n| n.kind == NodeKind::Dir)?.subtree?;
        match self.reader.read_tree(&id) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(tree = %id, error = %format!("{e:#}"), "parent tree unreadable; reading the directory in full");
                None
            }
        }
    }

    /// Archives a directory's entries; returns the tree id.
    fn archive_dir(&self, path: &Path, rel: &Path, parent: Option<&Tree>) -> Result<Id, EntryError> {
        let mut entries: Vec<OsString> = fs::read_dir(path)
            .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>())
            .map_err(EntryError::Source)?;
        entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let nodes: Vec<Option<Node>> = entries
            .par_iter()
            .map(|name| self.archive_entry(&path.join(name), &rel.join(name), name, parent))
            .collect::<anyhow::Result<_>>()?;
        let tree = Tree { nodes: nodes.into_iter().flatten().collect() };
        let (id, new) = self.store_blob(BlobKind::Tree, &tree.encode())?;
        if new {
            add(&self.counters.trees_new, 1);
        }
        Ok(id)
    }

    fn archive_entry(
        &self,
        path: &Path,
        rel: &Path,
        name: &OsStr,
        parent: Option<&Tree>,
    ) -> anyhow::Result<Option<Node>> {
        self.check_abort()?;
        if self.excluded(rel, name) {
            return Ok(None);
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.warn(rel, &e);
                return Ok(None);
            }
        };
        let ft = meta.file_type();
        let pnode = parent.and_then(|t| t.find(name.as_bytes()));
        if ft.is_dir() {
            let mut node = Node::from_metadata(name, NodeKind::Dir, &meta);
            let ptree = self.parent_subtree(pnode);
            node.subtree = Some(match self.archive_dir(path, rel, ptree.as_ref()) {
                Ok(id) => id,
                Err(EntryError::Fatal(e)) => return Err(e),
                Err(EntryError::Source(e)) => {
                    // Keep the directory (with its metadata) but empty, and say so.
                    self.warn(rel, &e);
                    self.store_blob(BlobKind::Tree, &Tree::default().encode())?.0
                }
            });
            add(&self.counters.dirs, 1);
            Ok(Some(node))
        } else if ft.is_file() {
            let mut node = Node::from_metadata(name, NodeKind::File, &meta);
            match self.archive_file(path, rel, &mut node, pnode, false) {
                Ok(()) => Ok(Some(node)),
                Err(EntryError::Source(e)) => {
                    self.warn(rel, &e);
                    Ok(None)
                }
                Err(EntryError::Fatal(e)) => Err(e),
            }
        } else if ft.is_symlink() {
            let mut node = Node::from_metadata(name, NodeKind::Symlink, &meta);
            match fs::read_link(path) {
                Ok(t) => node.set_target(t.as_os_str()),
                Err(e) => {
                    self.warn(rel, &e);
                    return Ok(None);
                }
            }
            add(&self.counters.symlinks, 1);
            Ok(Some(node))
        } else {
            debug_assert!(ft.is_socket() || ft.is_fifo() || ft.is_block_device() || ft.is_char_device());
            add(&self.counters.skipped_special, 1);
            Ok(None)
        }
    }

    /// Fills `node.content` (and the size actually read). A regular file whose size, mtime or
    /// ctime after the read (fstat of the open file) differ from `node`'s (the walk's lstat,
    /// taken before it was opened), or that read back another length than that size, is
    /// recorded as changed during read. `node` keeps the metadata from before the read, so the
    /// next push reads such a file again.
    fn archive_file(
        &self,
        path: &Path,
        rel: &Path,
        node: &mut Node,
        parent: Option<&Node>,
        stream: bool,
    ) -> Result<(), EntryError> {
        // Reuse only what the index still offers: a chunk in a pack a prune has marked for
        // deletion must be stored again.
        if let Some(p) = parent
            && node.unchanged_since(p)
            && p.content.iter().all(|c| self.index.usable(c))
        {
            node.content = p.content.clone();
            add(&self.counters.files, 1);
            add(&self.counters.files_unchanged, 1);
            add(&self.counters.bytes_total, node.size);
            add(&self.counters.chunks_reused, node.content.len() as u64);
            return Ok(());
        }
        let mut f = File::open(path).map_err(EntryError::Source)?;
        let before = node.clone();
        let size = if !stream && node.size <= SEGMENT as u64 {
            let mut buf = Vec::with_capacity(node.size as usize + 1);
            f.read_to_end(&mut buf).map_err(EntryError::Source)?;
            add(&self.counters.bytes_read, buf.len() as u64);
            let mut start = 0;
            for end in self.store.chunker().cut_points(&buf, true) {
                node.content.push(self.store_chunk(&buf[start..end])?);
                start = end;
            }
            buf.len() as u64
        } else {
            let (read, content) = self.stream_chunks(&mut f)?;
            node.content.extend(content);
            read
        };
        // A block device (`stream`) has no size in its metadata, and its times do not follow
        // writes to it: only regular files are checked.
        if !stream {
            let after = f.metadata().map_err(EntryError::Source)?;
            if let Some(what) = changed_while_read(&before, &after, size) {
                self.changed_during_read(rel, what);
            }
        }
        node.size = size;
        add(&self.counters.files, 1);
        add(&self.counters.bytes_total, size);
        Ok(())
    }

    /// Chunks a large file or a device segment by segment: while the chunks of one segment are
    /// hashed, compressed and sealed in parallel, the next segment is read and cut. Two
    /// buffers of [`STREAM_SEGMENT`] take turns (as much memory as one segment of twice the
    /// size). Returns the bytes read and the chunk ids.
    fn stream_chunks(&self, f: &mut File) -> Result<(u64, Vec<Id>), EntryError> {
        let chunker = self.store.chunker();
        let cap = STREAM_SEGMENT + chunker.max_size();
        let read_and_cut = |f: &mut File, carry: &[u8], mut buf: Vec<u8>| -> io::Result<(Vec<u8>, bool, Vec<usize>)> {
            buf.clear();
            buf.extend_from_slice(carry);
            let eof = fill(f, &mut buf, cap)?;
            let cuts = chunker.cut_points(&buf, eof);
            Ok((buf, eof, cuts))
        };
        let (mut buf, mut eof, mut cuts) = read_and_cut(f, &[], Vec::with_capacity(cap)).map_err(EntryError::Source)?;
        let mut spare = Vec::with_capacity(cap);
        let (mut size, mut content) = (0u64, Vec::new());
        loop {
            self.check_abort()?;
            let consumed = cuts.last().copied().unwrap_or(0);
            let bounds: Vec<(usize, usize)> =
                std::iter::once(0).chain(cuts.iter().copied()).zip(cuts.iter().copied()).collect();
            let (ids, next) = rayon::join(
                || bounds.par_iter().map(|&(s, e)| self.store_chunk(&buf[s..e])).collect::<anyhow::Result<Vec<Id>>>(),
                || (!eof).then(|| read_and_cut(&mut *f, &buf[consumed..], std::mem::take(&mut spare))).transpose(),
            );
            content.extend(ids?);
            size += consumed as u64;
            add(&self.counters.bytes_read, consumed as u64);
            match next.map_err(EntryError::Source)? {
                Some((next_buf, next_eof, next_cuts)) => {
                    spare = std::mem::replace(&mut buf, next_buf);
                    (eof, cuts) = (next_eof, next_cuts);
                }
                None => return Ok((size, content)),
            }
        }
    }

    fn flush_packs(&self) -> anyhow::Result<()> {
        for kind in [BlobKind::Data, BlobKind::Tree] {
            let b = std::mem::replace(&mut *self.packer(kind).lock().unwrap(), PackBuilder::new(0));
            if !b.is_empty() {
                self.send(b)?;
            }
        }
        Ok(())
    }
}

/// What differs between a file's metadata before it was opened (`before`), after it was read
/// (`after`) and the bytes read: `None` when nothing did.
fn changed_while_read(before: &Node, after: &fs::Metadata, read: u64) -> Option<&'static str> {
    if after.len() != before.size {
        Some("size")
    } else if read != before.size {
        Some("bytes read")
    } else if (after.mtime(), after.mtime_nsec()) != (before.mtime, before.mtime_nsec as i64) {
        Some("mtime")
    } else if (after.ctime(), after.ctime_nsec()) != (before.ctime, before.ctime_nsec as i64) {
        Some("ctime")
    } else {
        None
    }
}

/// The same blobs plus one small random blob nothing references, so the pack gets a new id.
fn salted(store: &Store, pack: SealedPack) -> SealedPack {
    let mut b = PackBuilder::new(pack.bytes.len() + 64);
    for e in &pack.entries {
        b.add(
            e.kind,
            e.compression,
            e.id,
            &pack.bytes[e.offset as usize..(e.offset + e.length) as usize],
            e.raw_length as usize,
        );
    }
    let salt = Id::random().0;
    let id = store.crypto().id_of(&salt);
    let (comp, stored) = encode_blob(store.crypto(), BlobKind::Data, &id, &salt, store.config.compression.level)
        .expect("32 bytes are stored raw");
    b.add(BlobKind::Data, comp, id, &stored, salt.len());
    b.seal(store.crypto())
}

/// Reads until `buf` holds `target` bytes or the file ends; returns true at end of file.
fn fill(f: &mut File, buf: &mut Vec<u8>, target: usize) -> io::Result<bool> {
    while buf.len() < target {
        let start = buf.len();
        buf.resize(target, 0);
        match f.read(&mut buf[start..]) {
            Ok(0) => {
                buf.truncate(start);
                return Ok(true);
            }
            Ok(n) => buf.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(start),
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        }
    }
    Ok(false)
}

/// What kind of source `source` is, or an error that says how to fix the path. Reads nothing
/// but its metadata (and opens it once), so a caller can check before creating anything.
/// The source of a push cannot be read (missing, permissions, I/O): the user's side, not the
/// store's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

pub fn check_source(source: &Path) -> anyhow::Result<(SourceKind, fs::Metadata)> {
    let meta = fs::metadata(source).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SourceError(format!(
            "source {} does not exist: give an existing directory, file or block device",
            source.display()
        )),
        _ => SourceError(format!("cannot read source {}: {e}", source.display())),
    })?;
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        SourceKind::Dir
    } else if ft.is_file() {
        SourceKind::File
    } else if ft.is_block_device() {
        SourceKind::Device
    } else {
        bail!("source {} is not a directory, a regular file or a block device", source.display());
    };
    if kind == SourceKind::Dir {
        fs::read_dir(source).map_err(|e| SourceError(format!("cannot read source {}: {e}", source.display())))?;
    } else {
        File::open(source).map_err(|e| SourceError(format!("cannot read source {}: {e}", source.display())))?;
    }
    Ok((kind, meta))
}

/// Pushes `opts.source` into `store`, holding a push lock (see [`super::lock`]) from before
/// the index is read until the snapshot is written, and appends an audit record either way.
pub fn push(store: &Store, opts: &PushOptions, counters: &Counters) -> anyhow::Result<PushOutcome> {
    // Bad input fails before anything is written.
    check_source(&opts.source)?;
    build_excludes(&opts.excludes)?;
    let lock = Lock::acquire(
        store,
        super::lock::LockKind::Push,
        opts.job.as_deref().unwrap_or(""),
        super::lock::ttl_from_env(),
    )?;
    let result = push_locked(store, opts, counters, &lock);
    let mut rec = AuditRecord::new(Action::Push, if result.is_ok() { Outcome::Ok } else { Outcome::Failed });
    rec.reason = opts.tags.get("reason").cloned().unwrap_or_else(|| "manual".into());
    rec.job = opts.job.clone();
    rec.repository = opts.repository.clone();
    match &result {
        Ok(o) => {
            rec.snapshots = vec![o.id.to_hex()];
            rec = rec.detail("source", o.snapshot.source.clone());
            if let Some(m) = o.snapshot.mode {
                rec = rec.detail("mode", m.as_str());
            }
            if let Some(c) = o.snapshot.consistency {
                rec = rec.detail("consistency", c.as_str());
            }
            rec = rec
                .detail("files", o.snapshot.stats.files)
                .detail("bytes_total", o.snapshot.stats.bytes_total)
                .detail("bytes_new", o.snapshot.stats.bytes_new)
                .detail("bytes_uploaded", o.snapshot.stats.bytes_uploaded);
            if o.snapshot.stats.files_changed_during_read > 0 {
                rec = rec.detail("files_changed_during_read", o.snapshot.stats.files_changed_during_read);
            }
        }
        Err(e) => {
            rec.error = Some(format!("{e:#}"));
            rec = rec.detail("source", opts.source.to_string_lossy().into_owned());
        }
    }
    drop(lock);
    match (result, audit::append(store, &rec)) {
        (Ok(o), Ok(_)) => Ok(o),
        // The snapshot is complete; a missing record must not turn it into a failure.
        (Ok(o), Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "snapshot written, but its audit record was not");
            Ok(o)
        }
        (Err(e), _) => Err(e),
    }
}

fn push_locked(store: &Store, opts: &PushOptions, counters: &Counters, lock: &Lock) -> anyhow::Result<PushOutcome> {
    let started = Instant::now();
    let source = &opts.source;
    let (kind, meta) = check_source(source)?;
    let canonical = fs::canonicalize(source).unwrap_or_else(|_| source.clone());
    let source_name = opts.source_name.clone().unwrap_or_else(|| canonical.to_string_lossy().into_owned());
    let excludes = build_excludes(&opts.excludes)?;

    let mut index = store.load_push_index()?;
    // Packs no index lists are left only by a push that died (its lock is still there) or by
    // one running now; listing every pack costs what the store holds, so only then.
    if super::lock::others_present(store.backend().as_ref(), lock.holder())? {
        let adopted = store.adopt_unindexed_packs(&mut index)?;
        if adopted > 0 {
            tracing::info!(packs = adopted, "indexed packs left by an interrupted push");
        }
    }
    let parent = find_parent(store, &opts.parent, &source_name, kind, counters)?;

    let (tx, rx) = crossbeam_channel::bounded::<SealedPack>(1);
    let pusher = Pusher::new(store, &index, opts, counters, excludes, tx);
    let name = canonical.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| OsString::from("root"));
    let walked = pusher.with_uploaders(rx, opts.uploaders, || {
        let parent_root = pusher.parent_root(parent.as_ref().map(|(_, snap)| snap));
        pusher.archive_root(source, kind, &meta, &name, parent_root.as_ref())
    });
    let failure = pusher.failure.lock().unwrap().take();
    if failure.is_some() || walked.is_err() {
        pusher.index_what_was_stored(lock);
    }
    if let Some(msg) = failure {
        bail!("push failed: {msg}");
    }
    let (tree, root_node) = walked?;
    let rest = std::mem::take(&mut *pusher.index_buf.lock().unwrap());
    pusher.write_index(&rest)?;
    crate::test_hooks::crashpoint("snapshot", 0);
    crate::test_hooks::pausepoint();
    lock.check()?;
    let (warnings, changed, changed_total) = pusher.findings();
    counters.index_bytes_read.store(index.loaded_bytes + index.table_bytes_read(), Ordering::Relaxed);
    let snapshot = Snapshot {
        version: super::FORMAT_VERSION,
        time: chrono::Utc::now(),
        hostname: hostname(),
        source: source_name,
        kind,
        root_node,
        tree,
        parent: parent.map(|(id, _)| id),
        tags: opts.tags.clone(),
        repository: opts.repository.clone(),
        mode: opts.mode,
        consistency: consistency(opts.consistency, &changed, changed_total),
        job: opts.job.clone(),
        stats: counters.stats(started.elapsed().as_secs_f64()),
        warnings: warnings.clone(),
        changed_during_read: changed,
        program: format!("push-operator {}", env!("CARGO_PKG_VERSION")),
    };
    let (id, _) = store.write_snapshot(&snapshot).context("cannot write the snapshot")?;
    let store_bytes = index.pack_bytes() + counters.pack_bytes.load(Ordering::Relaxed);
    Ok(PushOutcome { id, snapshot, warnings, store_bytes })
}

/// The snapshot whose files a push compares against (unchanged files are not read again): the
/// one named, or the newest of the same source and kind. The listing reads the snapshot
/// catalogue and only the snapshots written since.
fn find_parent(
    store: &Store,
    choice: &ParentChoice,
    source_name: &str,
    kind: SourceKind,
    counters: &Counters,
) -> anyhow::Result<Option<(Id, Snapshot)>> {
    let listing = match choice {
        ParentChoice::None => return Ok(None),
        ParentChoice::Snapshot(spec) => return Ok(Some(store.find_snapshot(spec)?)),
        ParentChoice::Auto => store.snapshot_listing()?,
    };
    counters.snapshot_objects_read.store(listing.read_alone as u64, Ordering::Relaxed);
    Ok(listing.snapshots.into_iter().rev().find(|(_, s)| s.source == source_name && s.kind == kind))
}

/// The label a snapshot gets. Whatever the caller said: a snapshot that holds torn files is
/// not consistent.
fn consistency(
    claimed: Option<super::snapshot::Consistency>,
    changed: &[String],
    changed_total: usize,
) -> Option<super::snapshot::Consistency> {
    if changed_total == 0 {
        return claimed;
    }
    tracing::warn!(
        files = changed_total,
        first = %changed.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
        "files changed while they were read: the snapshot is marked inconsistent"
    );
    Some(super::snapshot::Consistency::Inconsistent)
}

impl<'a> Pusher<'a> {
    fn new(
        store: &'a Store,
        index: &'a Index,
        opts: &PushOptions,
        counters: &'a Counters,
        excludes: GlobSet,
        tx: Sender<SealedPack>,
    ) -> Pusher<'a> {
        let pack_size = store.config.pack_size as usize;
        Pusher {
            store,
            index,
            reader: BlobReader::new(store, index),
            level: store.config.compression.level,
            pack_size,
            index_every: opts.index_every_packs.max(1),
            pending: Mutex::new(HashSet::new()),
            data_pack: Mutex::new(PackBuilder::new(pack_size + (1 << 20))),
            tree_pack: Mutex::new(PackBuilder::new(0)),
            tx: Mutex::new(Some(tx)),
            index_buf: Mutex::new(IndexFile::default()),
            counters,
            warnings: Mutex::new(Vec::new()),
            changed: Mutex::new(Vec::new()),
            excludes,
            abort: AtomicBool::new(false),
            failure: Mutex::new(None),
            packs_sent: AtomicU64::new(0),
            packs_indexed: AtomicU64::new(0),
        }
    }
}

impl Pusher<'_> {
    /// Runs `walk` while `uploaders` threads store the packs it seals; a failed walk aborts
    /// them. Closing the queue lets the uploaders store what is queued, then stop.
    fn with_uploaders<T>(
        &self,
        rx: Receiver<SealedPack>,
        uploaders: usize,
        walk: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..uploaders.max(1))
                .map(|_| {
                    let rx = rx.clone();
                    s.spawn(move || self.upload_loop(rx))
                })
                .collect();
            drop(rx);
            let result = walk().and_then(|r| self.flush_packs().map(|()| r));
            if result.is_err() {
                self.abort.store(true, Ordering::SeqCst);
            }
            self.tx.lock().unwrap().take();
            for h in handles {
                if let Err(panic) = h.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            result
        })
    }

    /// The parent's root tree; an unreadable parent means reading everything.
    fn parent_root(&self, parent: Option<&Snapshot>) -> Option<Tree> {
        match self.reader.read_tree(&parent?.tree) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "parent snapshot unreadable; reading everything");
                None
            }
        }
    }

    /// Archives the source (a directory's tree, or one file or device as a one-node tree) and
    /// returns the root tree's id and the root node.
    fn archive_root(
        &self,
        source: &Path,
        kind: SourceKind,
        meta: &fs::Metadata,
        name: &OsStr,
        parent_root: Option<&Tree>,
    ) -> anyhow::Result<(Id, Node)> {
        let unreadable = |e: EntryError| match e {
            EntryError::Source(e) => SourceError(format!("cannot read source {}: {e}", source.display())).into(),
            EntryError::Fatal(e) => e,
        };
        match kind {
            SourceKind::Dir => {
                let mut node = Node::from_metadata(name, NodeKind::Dir, meta);
                let tree = self.archive_dir(source, Path::new(""), parent_root).map_err(unreadable)?;
                node.subtree = Some(tree);
                Ok((tree, node))
            }
            SourceKind::File | SourceKind::Device => {
                let mut node = Node::from_metadata(name, NodeKind::File, meta);
                let pnode = parent_root.and_then(|t| t.find(name.as_bytes()));
                self.archive_file(source, Path::new(name), &mut node, pnode, kind == SourceKind::Device)
                    .map_err(unreadable)?;
                let tree = Tree { nodes: vec![node.clone()] };
                let (id, new) = self.store_blob(BlobKind::Tree, &tree.encode())?;
                if new {
                    add(&self.counters.trees_new, 1);
                }
                Ok((id, node))
            }
        }
    }

    /// The paths skipped with a warning and the files that changed while they were read
    /// (at most CHANGED_DURING_READ_MAX named, all counted), sorted.
    fn findings(&self) -> (Vec<String>, Vec<String>, usize) {
        let mut warnings = std::mem::take(&mut *self.warnings.lock().unwrap());
        warnings.sort();
        let mut changed = std::mem::take(&mut *self.changed.lock().unwrap());
        changed.sort();
        let total = changed.len();
        changed.truncate(CHANGED_DURING_READ_MAX);
        (warnings, changed, total)
    }
}
