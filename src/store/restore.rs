//! Restore: a snapshot back to a directory, a file or a block device.
//!
//! The trees are read first and turned into a plan: directories, files with their chunks,
//! symlinks, hard links. Files are created at their final size (holes, so zero chunks need not be
//! written and sparse files stay sparse). Then every pack that holds needed chunks is read once,
//! in parallel; each chunk is checked against its id and written at its offsets in every file
//! that uses it. Metadata comes last: files, then symlinks, then directories deepest first, so
//! writing into a directory does not disturb its restored times.
//!
//! A mirror restore (`RestoreOptions::mirror`, restic's `restore --delete`) first removes every
//! entry of the target the snapshot does not have (and every directory where the snapshot has
//! something else), never following a symlink. Cleanup globs remove matching entries (stale pid
//! files, locks, sockets) once everything is written. [`check_restored`] compares a restored
//! target with its snapshot, re-hashing every file along the snapshot's own chunk boundaries.

use super::id::Id;
use super::index::Index;
use super::pack::{decode_blob, pack_key};
use super::snapshot::{Snapshot, SourceKind};
use super::tree::{Node, NodeKind};
use super::{BlobReader, Store};
use anyhow::{Context, bail};
use globset::GlobSet;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Restore only these paths (relative to the snapshot root) and what is below them.
    pub includes: Vec<PathBuf>,
    /// Afterwards the target holds exactly the snapshot: every file, directory or symlink below
    /// it that the snapshot does not have is removed (recursively, never following a symlink;
    /// the target itself stays). Only for directory snapshots, and not with `includes`.
    pub mirror: bool,
    /// Globs (the syntax of push excludes) matched against paths relative to the target and
    /// against bare names (`postmaster.pid`, `*.lock`): every matching entry (sockets too) is
    /// removed once data and metadata are written. Directory snapshots only.
    pub cleanup: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes_total: u64,
    pub bytes_written: u64,
    pub blobs_checked: u64,
    pub packs_read: u64,
    pub duration_seconds: f64,
    /// Entries a mirror restore removed (each entry inside a removed directory counts).
    #[serde(default)]
    pub removed: u64,
    /// Paths (relative to the target, sorted) the cleanup globs removed.
    #[serde(default)]
    pub cleaned: Vec<String>,
    /// The snapshot's files that changed while they were pushed (their content may be torn).
    #[serde(default)]
    pub changed_during_read: Vec<String>,
}

/// How a restored target compares with its snapshot (see [`check_restored`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RestoreCheck {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of the files checked.
    pub bytes: u64,
    /// The first [`CHECK_PROBLEMS_MAX`] differences, each "relative/path: what differs".
    pub problems: Vec<String>,
    pub problems_total: u64,
}

impl RestoreCheck {
    pub fn ok(&self) -> bool {
        self.problems_total == 0 && self.problems.is_empty()
    }
}

/// At most this many problems are listed in a [`RestoreCheck`].
pub const CHECK_PROBLEMS_MAX: usize = 100;

#[derive(Default)]
struct Counters {
    bytes_written: AtomicU64,
    blobs_checked: AtomicU64,
}

struct FilePlan {
    path: PathBuf,
    node: Node,
}

#[derive(Default)]
struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    files: Vec<FilePlan>,
    symlinks: Vec<(PathBuf, Node)>,
    /// (link path, index in `files` of the first path of the same inode, node)
    hardlinks: Vec<(PathBuf, usize, Node)>,
    /// The target directory did not exist: the restore made it (and gives it the root's metadata).
    root_created: bool,
    /// A file snapshot restored onto a block device: written in place, never resized.
    device_target: bool,
    /// Entries a mirror restore removed because the snapshot does not have them.
    removed: u64,
}

fn included(rel: &Path, includes: &[PathBuf]) -> (bool, bool) {
    // (restore this entry, descend into it)
    if includes.is_empty() {
        return (true, true);
    }
    let inside = includes.iter().any(|inc| rel.starts_with(inc));
    let ancestor = includes.iter().any(|inc| inc.starts_with(rel));
    (inside || ancestor, inside || ancestor)
}

fn plan_tree(
    reader: &BlobReader,
    tree: &Id,
    rel: &Path,
    root: &Path,
    includes: &[PathBuf],
    plan: &mut Plan,
    inodes: &mut HashMap<(u64, u64), usize>,
) -> anyhow::Result<()> {
    let t = reader.read_tree(tree)?;
    for node in t.nodes {
        let name = node.os_name();
        if name.is_empty() || name == "." || name == ".." || Path::new(&name).components().count() != 1 {
            bail!("tree {tree} holds an unsafe name {:?}", node.name);
        }
        let r = rel.join(&name);
        let (take, descend) = included(&r, includes);
        if !take {
            continue;
        }
        let path = root.join(&r);
        match node.kind {
            NodeKind::Dir => {
                let sub = node.subtree.with_context(|| format!("directory {} has no tree", r.display()))?;
                plan.dirs.push((path, node));
                if descend {
                    plan_tree(reader, &sub, &r, root, includes, plan, inodes)?;
                }
            }
            NodeKind::File => {
                if node.nlink > 1 {
                    if let Some(&first) = inodes.get(&(node.dev, node.inode)) {
                        plan.hardlinks.push((path, first, node));
                        continue;
                    }
                    inodes.insert((node.dev, node.inode), plan.files.len());
                }
                plan.files.push(FilePlan { path, node });
            }
            NodeKind::Symlink => plan.symlinks.push((path, node)),
        }
    }
    Ok(())
}

fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    words.all(|c| u128::from_ne_bytes(c.try_into().unwrap()) == 0) && words.remainder().iter().all(|&b| b == 0)
}

/// Writes `data` at `offset`, skipping 4 KiB blocks (aligned to the file) that are all zero:
/// the file was created at full size, so skipped blocks stay holes. Returns bytes written.
fn write_sparse(f: &File, data: &[u8], offset: u64) -> std::io::Result<u64> {
    const BLOCK: u64 = 4096;
    let mut written = 0;
    let mut pos = 0usize;
    let mut run_start: Option<usize> = None;
    while pos < data.len() {
        let abs = offset + pos as u64;
        let next = ((abs / BLOCK + 1) * BLOCK - offset) as usize;
        let end = next.min(data.len());
        let zero = is_zero(&data[pos..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(s)) => {
                f.write_all_at(&data[s..pos], offset + s as u64)?;
                written += (pos - s) as u64;
                run_start = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(s) = run_start {
        f.write_all_at(&data[s..], offset + s as u64)?;
        written += (data.len() - s) as u64;
    }
    Ok(written)
}

fn am_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn set_times(path: &Path, node: &Node, symlink: bool) -> std::io::Result<()> {
    let t = filetime::FileTime::from_unix_time(node.mtime, node.mtime_nsec);
    if symlink { filetime::set_symlink_file_times(path, t, t) } else { filetime::set_file_times(path, t, t) }
}

fn set_meta(path: &Path, node: &Node, owners: bool) -> anyhow::Result<()> {
    let symlink = node.kind == NodeKind::Symlink;
    if owners {
        let r = if symlink {
            std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))
        } else {
            std::os::unix::fs::chown(path, Some(node.uid), Some(node.gid))
        };
        r.with_context(|| format!("cannot set owner of {}", path.display()))?;
    }
    if !symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(node.mode))
            .with_context(|| format!("cannot set mode of {}", path.display()))?;
    }
    set_times(path, node, symlink).with_context(|| format!("cannot set times of {}", path.display()))
}

fn remove_existing(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => bail!("{} exists and is a directory", path.display()),
        Ok(_) => fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display())),
        Err(_) => Ok(()),
    }
}

/// The cleanup globs, with the syntax and matching of push excludes.
pub fn build_cleanup(patterns: &[String]) -> anyhow::Result<GlobSet> {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        let g = globset::GlobBuilder::new(p.trim_end_matches('/'))
            .literal_separator(true)
            .build()
            .with_context(|| format!("invalid cleanup pattern {p:?}"))?;
        b.add(g);
    }
    Ok(b.build()?)
}

fn kind_name(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Dir => "directory",
        SourceKind::File => "file",
        SourceKind::Device => "block device",
    }
}

/// Entries at and below `path`, not following symlinks.
fn count_tree(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            1 + fs::read_dir(path).map(|rd| rd.flatten().map(|e| count_tree(&e.path())).sum::<u64>()).unwrap_or(0)
        }
        Ok(_) => 1,
        Err(_) => 0,
    }
}

/// Removes `path` and, for a directory, everything below it; a symlink is removed, never
/// followed (`remove_dir_all` does not follow symlinks, also when they are swapped in meanwhile).
/// Returns the entries removed.
fn remove_tree(path: &Path) -> anyhow::Result<u64> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if m.is_dir() {
        let n = count_tree(path);
        fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))?;
        Ok(n)
    } else {
        fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        Ok(1)
    }
}

/// Whether an existing entry of type `ft` can stay where the snapshot has a `kind` (it is then
/// filled in or replaced by the restore itself).
fn same_kind(ft: &fs::FileType, kind: NodeKind) -> bool {
    match kind {
        NodeKind::Dir => ft.is_dir(),
        NodeKind::File => ft.is_file(),
        NodeKind::Symlink => ft.is_symlink(),
    }
}

/// The mirror's first step: below `dir` (a real directory), removes every entry `keep` does not
/// list with the same type. Descends only into real directories, so a symlink is never followed.
fn mirror_prune(dir: &Path, keep: &HashMap<PathBuf, NodeKind>) -> anyhow::Result<u64> {
    let mut removed = 0;
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = e.path();
        let ft = e.file_type().with_context(|| format!("cannot read {}", path.display()))?;
        match keep.get(&path) {
            Some(NodeKind::Dir) if ft.is_dir() => removed += mirror_prune(&path, keep)?,
            Some(&kind) if same_kind(&ft, kind) => {}
            _ => removed += remove_tree(&path)?,
        }
    }
    Ok(removed)
}

/// Removes every entry below `root` whose relative path or name matches `globs` (directories
/// with what they hold); descends into real directories only. Appends the removed paths.
fn cleanup_tree(root: &Path, rel: &Path, globs: &GlobSet, cleaned: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let entries = fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name();
        let r = rel.join(&name);
        if globs.is_match(&r) || globs.is_match(Path::new(&name)) {
            remove_tree(&root.join(&r))?;
            cleaned.push(r);
        } else if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            cleanup_tree(root, &r, globs, cleaned)?;
        }
    }
    Ok(())
}

/// Restores snapshot `snap` into `opts.target`.
pub fn restore(store: &Store, snap: &Snapshot, opts: &RestoreOptions) -> anyhow::Result<RestoreStats> {
    let started = Instant::now();
    // Refusals come before anything is read or changed.
    let cleanup = check_request(snap, opts)?;
    let index = store.load_index()?;
    let reader = BlobReader::new(store, &index);
    let owners = am_root();
    let plan = match snap.kind {
        SourceKind::Dir => plan_dir(&reader, snap, opts)?,
        SourceKind::File | SourceKind::Device => plan_single(&reader, snap, opts)?,
    };
    create_entries(&plan)?;
    let counters = Counters::default();
    let packs_read = fill_files(store, &index, &plan, &counters)?;
    link_and_set_meta(&plan, snap, opts, owners)?;
    let cleaned = if !cleanup.is_empty() && snap.kind == SourceKind::Dir {
        clean(&plan, snap, opts, &cleanup)?
    } else {
        Vec::new()
    };
    Ok(RestoreStats {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        symlinks: plan.symlinks.len() as u64,
        hardlinks: plan.hardlinks.len() as u64,
        bytes_total: plan.files.iter().map(|f| f.node.size).sum(),
        bytes_written: counters.bytes_written.load(Ordering::Relaxed),
        blobs_checked: counters.blobs_checked.load(Ordering::Relaxed),
        packs_read,
        duration_seconds: started.elapsed().as_secs_f64(),
        removed: plan.removed,
        cleaned,
        changed_during_read: snap.changed_during_read.clone(),
    })
}

/// Refuses what cannot be done before anything is read or changed; returns the cleanup globs.
fn check_request(snap: &Snapshot, opts: &RestoreOptions) -> anyhow::Result<GlobSet> {
    let cleanup = build_cleanup(&opts.cleanup)?;
    if opts.mirror {
        if !opts.includes.is_empty() {
            bail!(
                "a mirror restore (--delete) makes the target hold exactly the snapshot: it cannot be combined with include paths"
            );
        }
        if snap.kind != SourceKind::Dir {
            bail!(
                "a mirror restore (--delete) needs a directory snapshot; this snapshot is of a {}",
                kind_name(snap.kind)
            );
        }
    }
    if !opts.cleanup.is_empty() && snap.kind != SourceKind::Dir {
        tracing::warn!(kind = kind_name(snap.kind), "cleanup patterns apply to directory snapshots only: ignored");
    }
    Ok(cleanup)
}

/// A directory snapshot: the target directory (made when missing), every entry to restore, and
/// for a mirror restore the removal of what the snapshot does not have.
fn plan_dir(reader: &BlobReader, snap: &Snapshot, opts: &RestoreOptions) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    if !opts.target.exists() {
        fs::create_dir_all(&opts.target).with_context(|| format!("cannot create target {}", opts.target.display()))?;
        plan.root_created = true;
    } else if !opts.target.is_dir() {
        bail!("target {} exists and is not a directory; this snapshot is of a directory", opts.target.display());
    }
    plan_tree(reader, &snap.tree, Path::new(""), &opts.target, &opts.includes, &mut plan, &mut HashMap::new())?;
    if opts.mirror && !plan.root_created {
        let mut keep: HashMap<PathBuf, NodeKind> = HashMap::new();
        keep.extend(plan.dirs.iter().map(|(p, n)| (p.clone(), n.kind)));
        keep.extend(plan.files.iter().map(|f| (f.path.clone(), NodeKind::File)));
        keep.extend(plan.symlinks.iter().map(|(p, n)| (p.clone(), n.kind)));
        keep.extend(plan.hardlinks.iter().map(|(p, _, _)| (p.clone(), NodeKind::File)));
        plan.removed = mirror_prune(&opts.target, &keep)?;
    }
    Ok(plan)
}

/// A file or device snapshot: one file, into the target directory, onto the target block
/// device, or at the target path.
fn plan_single(reader: &BlobReader, snap: &Snapshot, opts: &RestoreOptions) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let tree = reader.read_tree(&snap.tree)?;
    let node = tree.nodes.into_iter().next().context("file snapshot has an empty tree")?;
    let mut path = opts.target.clone();
    match fs::metadata(&path) {
        Ok(m) if m.is_dir() => path = path.join(node.os_name()),
        Ok(m) if m.file_type().is_block_device() => plan.device_target = true,
        _ => {}
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    plan.files.push(FilePlan { path, node });
    Ok(plan)
}

/// Every directory, and every file at its final size (a device must be large enough); the
/// chunks are written into them afterwards.
fn create_entries(plan: &Plan) -> anyhow::Result<()> {
    for (path, _) in &plan.dirs {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                remove_existing(path)?;
                fs::create_dir(path).with_context(|| format!("cannot create {}", path.display()))?;
            }
            Err(_) => fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?,
        }
    }
    plan.files.par_iter().try_for_each(|f| -> anyhow::Result<()> {
        if plan.device_target {
            let dev = OpenOptions::new()
                .write(true)
                .open(&f.path)
                .with_context(|| format!("cannot open device {}", f.path.display()))?;
            let size = dev_size(&dev)?;
            if size < f.node.size {
                bail!("device {} holds {size} bytes; the snapshot needs {}", f.path.display(), f.node.size);
            }
            return Ok(());
        }
        if fs::symlink_metadata(&f.path).map(|m| !m.is_file()).unwrap_or(false) {
            remove_existing(&f.path)?;
        }
        let file = File::create(&f.path).with_context(|| format!("cannot create {}", f.path.display()))?;
        file.set_len(f.node.size).with_context(|| format!("cannot size {}", f.path.display()))?;
        Ok(())
    })
}

/// Writes every chunk into every place it fills, reading each pack once; returns the packs read.
fn fill_files(store: &Store, index: &Index, plan: &Plan, counters: &Counters) -> anyhow::Result<u64> {
    // blob -> every (file, offset) it fills
    let mut targets: HashMap<Id, Vec<(u32, u64)>> = HashMap::new();
    for (i, f) in plan.files.iter().enumerate() {
        let mut offset = 0u64;
        for id in &f.node.content {
            let loc = index.get(id).with_context(|| {
                format!("chunk {} of {} is missing from the store index (run verify)", id.short(), f.path.display())
            })?;
            targets.entry(*id).or_default().push((i as u32, offset));
            offset += loc.raw_length as u64;
        }
        if offset != f.node.size {
            bail!("{}: chunks add up to {offset} bytes but the file has {}", f.path.display(), f.node.size);
        }
    }
    let by_pack = super::group_by_pack(index, targets.keys());
    let mut packs: Vec<(&Id, &Vec<Id>)> = by_pack.iter().collect();
    packs.sort();
    packs.par_iter().try_for_each(|(pack, blobs)| {
        restore_pack(store, index, pack, blobs, &targets, &plan.files, plan.device_target, counters)
    })?;
    Ok(packs.len() as u64)
}

/// Hard links, then metadata: files, symlinks (made here), directories deepest first (their
/// times change while their entries are written), and the root when the restore made it.
fn link_and_set_meta(plan: &Plan, snap: &Snapshot, opts: &RestoreOptions, owners: bool) -> anyhow::Result<()> {
    for (path, first, _) in &plan.hardlinks {
        remove_existing(path)?;
        fs::hard_link(&plan.files[*first].path, path)
            .with_context(|| format!("cannot link {} to {}", path.display(), plan.files[*first].path.display()))?;
    }
    if !plan.device_target {
        plan.files.par_iter().try_for_each(|f| set_meta(&f.path, &f.node, owners))?;
    }
    for (path, node) in &plan.symlinks {
        remove_existing(path)?;
        let target = node.os_target().with_context(|| format!("symlink {} has no target", path.display()))?;
        std::os::unix::fs::symlink(&target, path)
            .with_context(|| format!("cannot create symlink {}", path.display()))?;
        set_meta(path, node, owners)?;
    }
    for (path, node) in plan.dirs.iter().rev() {
        set_meta(path, node, owners)?;
    }
    if plan.root_created {
        set_meta(&opts.target, &snap.root_node, owners)?;
    }
    Ok(())
}

/// Removes what the cleanup globs match (a crashed database's lock file...) and gives the
/// directories that held them their restored times back; returns the removed paths, sorted.
fn clean(plan: &Plan, snap: &Snapshot, opts: &RestoreOptions, globs: &GlobSet) -> anyhow::Result<Vec<String>> {
    let mut cleaned = Vec::new();
    cleanup_tree(&opts.target, Path::new(""), globs, &mut cleaned)?;
    let dirs: HashMap<&Path, &Node> = plan.dirs.iter().map(|(p, n)| (p.as_path(), n)).collect();
    let parents: HashSet<PathBuf> =
        cleaned.iter().map(|r| opts.target.join(r)).filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
    for parent in parents {
        let node = match dirs.get(parent.as_path()) {
            Some(n) => Some(*n),
            None if plan.root_created && parent == opts.target => Some(&snap.root_node),
            None => None,
        };
        if let Some(node) = node {
            set_times(&parent, node, false).with_context(|| format!("cannot set times of {}", parent.display()))?;
        }
    }
    let mut cleaned: Vec<String> = cleaned.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    cleaned.sort();
    Ok(cleaned)
}

fn type_name(ft: &fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a file"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

fn node_type_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Dir => "a directory",
        NodeKind::File => "a file",
        NodeKind::Symlink => "a symlink",
    }
}

/// One snapshot entry to check: (relative path, path under the target, node).
type CheckEntry = (PathBuf, PathBuf, Node);

fn check_plan(
    reader: &BlobReader,
    tree: &Id,
    rel: &Path,
    target: &Path,
    skip: &[PathBuf],
    out: &mut Vec<CheckEntry>,
) -> anyhow::Result<()> {
    for node in reader.read_tree(tree)?.nodes {
        let name = node.os_name();
        if name.is_empty() || name == "." || name == ".." || Path::new(&name).components().count() != 1 {
            bail!("tree {tree} holds an unsafe name {:?}", node.name);
        }
        let r = rel.join(&name);
        if skip.iter().any(|s| r.starts_with(s)) {
            continue;
        }
        let sub = node.subtree.filter(|_| node.kind == NodeKind::Dir);
        out.push((r.clone(), target.join(&r), node));
        if let Some(sub) = sub {
            check_plan(reader, &sub, &r, target, skip, out)?;
        }
    }
    Ok(())
}

/// Re-hashes `node`'s bytes in `file` along the snapshot's chunk boundaries; the first
/// difference, if any.
fn check_content(store: &Store, index: &Index, file: &File, node: &Node) -> Option<String> {
    let mut chunks = Vec::with_capacity(node.content.len());
    let mut offset = 0u64;
    for id in &node.content {
        let Some(loc) = index.get(id) else {
            return Some(format!("chunk {} of the snapshot is not in the store index (run verify)", id.short()));
        };
        chunks.push((*id, offset, loc.raw_length as u64));
        offset += loc.raw_length as u64;
    }
    if offset != node.size {
        return Some(format!("the snapshot's chunks add up to {offset} bytes, its size is {}", node.size));
    }
    chunks
        .par_iter()
        .filter_map(|&(id, offset, len)| {
            let mut buf = vec![0u8; len as usize];
            let end = offset + len;
            match file.read_exact_at(&mut buf, offset) {
                Err(e) => Some((offset, format!("cannot read bytes {offset}..{end}: {e}"))),
                Ok(()) if store.crypto().id_of(&buf) != id => {
                    Some((offset, format!("content differs from the snapshot in bytes {offset}..{end}")))
                }
                Ok(()) => None,
            }
        })
        .min_by_key(|(offset, _)| *offset)
        .map(|(_, p)| p)
}

/// What differs between one snapshot entry and what is at `path`.
fn check_entry(store: &Store, index: &Index, path: &Path, node: &Node, device: bool) -> Vec<String> {
    let meta = if device { fs::metadata(path) } else { fs::symlink_metadata(path) };
    let m = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return vec!["missing".into()],
        Err(e) => return vec![format!("cannot read: {e}")],
    };
    let ft = m.file_type();
    if !(same_kind(&ft, node.kind) || device && node.kind == NodeKind::File && ft.is_block_device()) {
        return vec![format!("is {}, the snapshot has {}", type_name(&ft), node_type_name(node.kind))];
    }
    let mut problems = Vec::new();
    if node.kind != NodeKind::Symlink && !device && m.mode() & 0o7777 != node.mode {
        problems.push(format!("mode {:04o}, the snapshot has {:04o}", m.mode() & 0o7777, node.mode));
    }
    match node.kind {
        NodeKind::Dir => {
            if node.subtree.is_none() {
                problems.push("the snapshot's directory has no tree".into());
            }
        }
        NodeKind::Symlink => {
            let want = node.os_target().unwrap_or_default();
            match fs::read_link(path) {
                Ok(got) if got.as_os_str() == want => {}
                Ok(got) => problems.push(format!(
                    "points to {}, the snapshot has {}",
                    got.display(),
                    Path::new(&want).display()
                )),
                Err(e) => problems.push(format!("cannot read the symlink: {e}")),
            }
        }
        NodeKind::File => {
            let file = match File::open(path) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(format!("cannot open: {e}"));
                    return problems;
                }
            };
            let size = if device { dev_size(&file).unwrap_or(0) } else { m.len() };
            if device && size < node.size {
                problems.push(format!("the device holds {size} bytes, the snapshot has {}", node.size));
            } else if !device && size != node.size {
                problems.push(format!("size {size}, the snapshot has {}", node.size));
            } else if let Some(p) = check_content(store, index, &file, node) {
                problems.push(p);
            }
        }
    }
    problems
}

/// Compares a restored `target` with snapshot `snap`: every entry of the snapshot must be
/// there with the same type and permission bits, symlinks with the same target, files with the
/// same size and content. Content is checked exactly and without reading a pack: the restored
/// bytes are re-hashed along the snapshot's own chunk boundaries (each chunk's length is in the
/// index) and compared with the chunk ids. Entries below `skip` (relative paths, such as what a
/// cleanup removed) are not expected. Entries the snapshot does not have are not looked at.
/// For a file or device snapshot the one file is checked (on a block device, its first bytes).
pub fn check_restored(store: &Store, snap: &Snapshot, target: &Path, skip: &[String]) -> anyhow::Result<RestoreCheck> {
    let index = store.load_index()?;
    let reader = BlobReader::new(store, &index);
    let skip: Vec<PathBuf> = skip.iter().map(PathBuf::from).collect();
    let mut entries: Vec<CheckEntry> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut device = false;
    match snap.kind {
        SourceKind::Dir => {
            match fs::metadata(target) {
                Ok(m) if m.is_dir() => {}
                Ok(m) => {
                    problems.push(format!(".: {} is {}, not a directory", target.display(), type_name(&m.file_type())))
                }
                Err(e) => problems.push(format!(".: {}: {e}", target.display())),
            }
            check_plan(&reader, &snap.tree, Path::new(""), target, &skip, &mut entries)?;
        }
        SourceKind::File | SourceKind::Device => {
            let tree = reader.read_tree(&snap.tree)?;
            let node = tree.nodes.into_iter().next().context("file snapshot has an empty tree")?;
            let rel = PathBuf::from(node.os_name());
            let mut path = target.to_path_buf();
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => path = path.join(&rel),
                Ok(m) if m.file_type().is_block_device() => device = true,
                _ => {}
            }
            if !skip.iter().any(|s| rel.starts_with(s)) {
                entries.push((rel, path, node));
            }
        }
    }
    let mut check = RestoreCheck::default();
    for (_, _, node) in &entries {
        match node.kind {
            NodeKind::Dir => check.dirs += 1,
            NodeKind::Symlink => check.symlinks += 1,
            NodeKind::File => {
                check.files += 1;
                check.bytes += node.size;
            }
        }
    }
    let found: Vec<Vec<String>> = entries
        .par_iter()
        .map(|(rel, path, node)| {
            check_entry(store, &index, path, node, device)
                .into_iter()
                .map(|p| format!("{}: {p}", rel.display()))
                .collect()
        })
        .collect();
    problems.extend(found.into_iter().flatten());
    check.problems_total = problems.len() as u64;
    problems.truncate(CHECK_PROBLEMS_MAX);
    check.problems = problems;
    Ok(check)
}

fn dev_size(f: &File) -> anyhow::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = f.try_clone()?;
    Ok(f.seek(SeekFrom::End(0))?)
}

#[allow(clippy::too_many_arguments)]
fn restore_pack(
    store: &Store,
    index: &Index,
    pack: &Id,
    blobs: &[Id],
    targets: &HashMap<Id, Vec<(u32, u64)>>,
    files: &[FilePlan],
    device: bool,
    counters: &Counters,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = blobs.iter().map(|id| index.entry(id).expect("grouped from the index")).collect();
    entries.sort_by_key(|e| e.offset);
    let start = entries.first().map(|e| e.offset as u64).unwrap_or(0);
    let end = entries.iter().map(|e| (e.offset + e.length) as u64).max().unwrap_or(0);
    let span = store
        .backend()
        .get_range(&pack_key(pack), start, end - start)
        .with_context(|| format!("cannot read pack {pack}"))?;
    let mut open: HashMap<u32, File> = HashMap::new();
    for e in entries {
        let s = (e.offset as u64 - start) as usize;
        let plain = decode_blob(store.crypto(), &e, &span[s..s + e.length as usize])
            .with_context(|| format!("in pack {pack}"))?;
        counters.blobs_checked.fetch_add(1, Ordering::Relaxed);
        let zero = !device && is_zero(&plain);
        for &(fi, offset) in &targets[&e.id] {
            if zero {
                continue; // the file was created at full size: this range is already a hole
            }
            if !open.contains_key(&fi) {
                if open.len() >= MAX_OPEN_PER_PACK {
                    close_all(&mut open, device)?;
                }
                let p = &files[fi as usize].path;
                let f =
                    OpenOptions::new().write(true).open(p).with_context(|| format!("cannot open {}", p.display()))?;
                open.insert(fi, f);
            }
            let f = &open[&fi];
            let n = if device {
                f.write_all_at(&plain, offset).map(|_| plain.len() as u64)
            } else {
                write_sparse(f, &plain, offset)
            }
            .with_context(|| format!("cannot write {}", files[fi as usize].path.display()))?;
            counters.bytes_written.fetch_add(n, Ordering::Relaxed);
        }
    }
    close_all(&mut open, device)
}

/// Files a pack's restore keeps open at once: a pack of small files fills thousands, more
/// than a process may open.
const MAX_OPEN_PER_PACK: usize = 64;

/// Closes the files a pack's restore opened (a device is synced first).
fn close_all(open: &mut HashMap<u32, File>, device: bool) -> anyhow::Result<()> {
    if device {
        for f in open.values() {
            f.sync_all()?;
        }
    }
    open.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 100]));
        let mut v = vec![0u8; 100];
        v[99] = 1;
        assert!(!is_zero(&v));
        v[99] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn sparse_writes_skip_zero_blocks_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        f.set_len(1 << 20).unwrap();
        let mut data = vec![0u8; 300_000];
        data[5] = 1;
        data[150_000] = 2;
        data[299_999] = 3;
        let written = write_sparse(&f, &data, 1000).unwrap();
        assert!(written <= 3 * 8192, "wrote {written}");
        let back = fs::read(&p).unwrap();
        assert_eq!(&back[1000..301_000], &data[..]);
        assert!(back[..1000].iter().all(|&b| b == 0) && back[301_000..].iter().all(|&b| b == 0));
    }

    use crate::store::backend::fs::FsBackend;
    use crate::store::push::{Counters, PushOptions, push};
    use crate::store::testdata::seeded_bytes;
    use std::sync::Arc;

    fn store(dir: &Path) -> Store {
        let b = Arc::new(FsBackend::new(dir.join("store")));
        Store::open_or_init(b, &crate::store::InitOptions::plaintext(), &Default::default()).unwrap()
    }

    fn pushed(store: &Store, src: &Path) -> Snapshot {
        push(store, &PushOptions::new(src), &Counters::default()).unwrap().snapshot
    }

    fn restored(store: &Store, snap: &Snapshot, target: &Path) {
        restore(store, snap, &RestoreOptions { target: target.to_path_buf(), ..Default::default() }).unwrap();
    }

    /// A source with a multi-chunk file, a small one, a directory, a symlink and a hard link.
    fn source(dir: &Path) -> PathBuf {
        let src = dir.join("src");
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("big.bin"), seeded_bytes(1, 5 << 20)).unwrap();
        fs::write(src.join("sub/small.txt"), b"small\n").unwrap();
        fs::write(src.join("sub/deeper/x"), b"x").unwrap();
        fs::set_permissions(src.join("sub/small.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("sub/small.txt", src.join("link")).unwrap();
        fs::hard_link(src.join("sub/deeper/x"), src.join("x-again")).unwrap();
        src
    }

    #[test]
    fn check_finds_each_kind_of_difference_and_passes_an_untouched_restore() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let snap = pushed(&s, &source(tmp.path()));
        let target = tmp.path().join("t");
        restored(&s, &snap, &target);
        let c = check_restored(&s, &snap, &target, &[]).unwrap();
        assert!(c.ok(), "{c:?}");
        assert_eq!((c.files, c.dirs, c.symlinks), (4, 2, 1));
        assert_eq!(c.bytes, (5 << 20) + 6 + 1 + 1);

        type Tamper = fn(&Path);
        let cases: [(&str, Tamper, &str); 6] = [
            (
                "big.bin",
                |t| {
                    let f = OpenOptions::new().read(true).write(true).open(t.join("big.bin")).unwrap();
                    let mut b = [0u8; 1];
                    f.read_exact_at(&mut b, 3_000_000).unwrap();
                    f.write_all_at(&[b[0] ^ 1], 3_000_000).unwrap();
                },
                "content differs",
            ),
            ("sub/small.txt", |t| fs::remove_file(t.join("sub/small.txt")).unwrap(), "missing"),
            (
                "sub/small.txt",
                |t| fs::set_permissions(t.join("sub/small.txt"), fs::Permissions::from_mode(0o644)).unwrap(),
                "mode 0644, the snapshot has 0640",
            ),
            (
                "link",
                |t| {
                    fs::remove_file(t.join("link")).unwrap();
                    std::os::unix::fs::symlink("big.bin", t.join("link")).unwrap();
                },
                "points to big.bin, the snapshot has sub/small.txt",
            ),
            (
                "sub/small.txt",
                |t| fs::write(t.join("sub/small.txt"), b"smaller!\n").unwrap(),
                "size 9, the snapshot has 6",
            ),
            (
                "sub/deeper",
                |t| {
                    fs::remove_dir_all(t.join("sub/deeper")).unwrap();
                    fs::write(t.join("sub/deeper"), b"").unwrap();
                },
                "is a file, the snapshot has a directory",
            ),
        ];
        for (i, (path, tamper, what)) in cases.into_iter().enumerate() {
            let t = tmp.path().join(format!("case{i}"));
            restored(&s, &snap, &t);
            assert!(check_restored(&s, &snap, &t, &[]).unwrap().ok());
            tamper(&t);
            let c = check_restored(&s, &snap, &t, &[]).unwrap();
            assert!(!c.ok(), "{path}: {what} went unnoticed");
            let first = &c.problems[0];
            assert!(first.starts_with(&format!("{path}: ")) && first.contains(what), "{path}: {c:?}");
            // Skipped paths (what a cleanup removed) are not expected.
            assert!(check_restored(&s, &snap, &t, &[path.to_string()]).unwrap().ok(), "{path} skipped: {c:?}");
        }
        // Both names of a hard link are checked.
        let t = tmp.path().join("hard");
        restored(&s, &snap, &t);
        fs::write(t.join("x-again"), b"y").unwrap();
        let c = check_restored(&s, &snap, &t, &[]).unwrap();
        assert_eq!(c.problems_total, 2, "{c:?}");
        assert!(c.problems.iter().all(|p| p.ends_with(": content differs from the snapshot in bytes 0..1")), "{c:?}");
        // A content change is found exactly: in the chunk that holds the byte.
        let t = tmp.path().join("case0");
        let p = &check_restored(&s, &snap, &t, &[]).unwrap().problems[0];
        let range = p.rsplit(' ').next().unwrap();
        let (a, b) = range.split_once("..").unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        assert!(a <= 3_000_000 && 3_000_000 < b, "{p}");
    }

    #[test]
    fn check_of_a_file_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let img = tmp.path().join("disk.img");
        fs::write(&img, [seeded_bytes(7, 3 << 20), vec![0; 1 << 20]].concat()).unwrap();
        let snap = pushed(&s, &img);
        let out = tmp.path().join("out.img");
        restored(&s, &snap, &out);
        let c = check_restored(&s, &snap, &out, &[]).unwrap();
        assert!(c.ok() && c.files == 1 && c.bytes == 4 << 20, "{c:?}");
        fs::OpenOptions::new().write(true).open(&out).unwrap().write_all_at(b"!", (4 << 20) - 1).unwrap();
        let c = check_restored(&s, &snap, &out, &[]).unwrap();
        assert_eq!(c.problems_total, 1, "{c:?}");
        assert!(c.problems[0].starts_with("disk.img: content differs"), "{c:?}");
    }

    #[test]
    fn mirror_is_refused_with_includes_and_for_file_snapshots_before_anything_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let snap = pushed(&s, &source(tmp.path()));
        let target = tmp.path().join("t");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("extra"), b"stays").unwrap();
        let opts = RestoreOptions {
            target: target.clone(),
            includes: vec![PathBuf::from("sub")],
            mirror: true,
            ..Default::default()
        };
        let e = format!("{:#}", restore(&s, &snap, &opts).unwrap_err());
        assert!(e.contains("cannot be combined with include paths"), "{e}");
        assert_eq!(fs::read_dir(&target).unwrap().count(), 1);
        let file_snap = pushed(&s, &tmp.path().join("src/big.bin"));
        let opts = RestoreOptions { target: target.clone(), mirror: true, ..Default::default() };
        let e = format!("{:#}", restore(&s, &file_snap, &opts).unwrap_err());
        assert!(e.contains("needs a directory snapshot"), "{e}");
        assert_eq!(fs::read_dir(&target).unwrap().count(), 1);
        let opts = RestoreOptions { target, cleanup: vec!["a[".into()], ..Default::default() };
        let e = format!("{:#}", restore(&s, &snap, &opts).unwrap_err());
        assert!(e.contains("invalid cleanup pattern"), "{e}");
    }

    #[test]
    fn include_filter() {
        let inc = vec![PathBuf::from("a/b")];
        assert_eq!(included(Path::new("a"), &inc), (true, true));
        assert_eq!(included(Path::new("a/b/c"), &inc), (true, true));
        assert_eq!(included(Path::new("a/x"), &inc), (false, false));
        assert_eq!(included(Path::new("z"), &[]), (true, true));
    }
}
