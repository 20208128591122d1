//! Restore: a snapshot back to a directory, a file or a block device.
//!
//! The trees are read first and turned into a plan: directories, files with their chunks,
//! symlinks, hard links. Files are created at their final size (holes, so zero chunks need not be
//! written and sparse files stay sparse). Then every pack that holds needed chunks is read once,
//! in parallel; each chunk is checked against its id and written at its offsets in every file
//! that uses it. Metadata comes last: files, then symlinks, then directories deepest first, so
//! writing into a directory does not disturb its restored times.

use super::id::Id;
use super::index::Index;
use super::pack::{decode_blob, pack_key};
use super::snapshot::{Snapshot, SourceKind};
use super::tree::{Node, NodeKind};
use super::{BlobReader, Store};
use anyhow::{Context, bail};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Restore only these paths (relative to the snapshot root) and what is below them.
    pub includes: Vec<PathBuf>,
}

#[derive(Debug, Default, Serialize)]
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
}

#[derive(Default)]
struct Counters {
    bytes_written: AtomicU64,
    blobs_checked: AtomicU64,
}

struct FilePlan {
    path: PathBuf,
    node: Node,
}

struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    files: Vec<FilePlan>,
    symlinks: Vec<(PathBuf, Node)>,
    /// (link path, index in `files` of the first path of the same inode, node)
    hardlinks: Vec<(PathBuf, usize, Node)>,
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

/// Restores snapshot `snap` into `opts.target`.
pub fn restore(store: &Store, snap: &Snapshot, opts: &RestoreOptions) -> anyhow::Result<RestoreStats> {
    let started = Instant::now();
    let index = store.load_index()?;
    let reader = BlobReader::new(store, &index);
    let owners = am_root();
    let mut plan = Plan { dirs: Vec::new(), files: Vec::new(), symlinks: Vec::new(), hardlinks: Vec::new() };
    let mut root_created = false;
    let mut device_target = false;
    match snap.kind {
        SourceKind::Dir => {
            if !opts.target.exists() {
                fs::create_dir_all(&opts.target)
                    .with_context(|| format!("cannot create target {}", opts.target.display()))?;
                root_created = true;
            } else if !opts.target.is_dir() {
                bail!(
                    "target {} exists and is not a directory; this snapshot is of a directory",
                    opts.target.display()
                );
            }
            plan_tree(
                &reader,
                &snap.tree,
                Path::new(""),
                &opts.target,
                &opts.includes,
                &mut plan,
                &mut HashMap::new(),
            )?;
        }
        SourceKind::File | SourceKind::Device => {
            let tree = reader.read_tree(&snap.tree)?;
            let node = tree.nodes.into_iter().next().context("file snapshot has an empty tree")?;
            let mut path = opts.target.clone();
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => path = path.join(node.os_name()),
                Ok(m) if m.file_type().is_block_device() => device_target = true,
                _ => {}
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            plan.files.push(FilePlan { path, node });
        }
    }

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
    // Create every file at its final size; chunks are written into them below.
    plan.files.par_iter().try_for_each(|f| -> anyhow::Result<()> {
        if device_target {
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
    })?;

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
    let by_pack = super::group_by_pack(&index, targets.keys());
    let counters = Counters::default();
    let mut packs: Vec<(&Id, &Vec<Id>)> = by_pack.iter().collect();
    packs.sort();
    packs.par_iter().try_for_each(|(pack, blobs)| {
        restore_pack(store, &index, pack, blobs, &targets, &plan.files, device_target, &counters)
    })?;

    for (path, first, _) in &plan.hardlinks {
        remove_existing(path)?;
        fs::hard_link(&plan.files[*first].path, path)
            .with_context(|| format!("cannot link {} to {}", path.display(), plan.files[*first].path.display()))?;
    }
    if !device_target {
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
    if root_created {
        set_meta(&opts.target, &snap.root_node, owners)?;
    }
    Ok(RestoreStats {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        symlinks: plan.symlinks.len() as u64,
        hardlinks: plan.hardlinks.len() as u64,
        bytes_total: plan.files.iter().map(|f| f.node.size).sum(),
        bytes_written: counters.bytes_written.load(Ordering::Relaxed),
        blobs_checked: counters.blobs_checked.load(Ordering::Relaxed),
        packs_read: packs.len() as u64,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
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
            let f = match open.entry(fi) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let p = &files[fi as usize].path;
                    v.insert(
                        OpenOptions::new()
                            .write(true)
                            .open(p)
                            .with_context(|| format!("cannot open {}", p.display()))?,
                    )
                }
            };
            let n = if device {
                f.write_all_at(&plain, offset).map(|_| plain.len() as u64)
            } else {
                write_sparse(f, &plain, offset)
            }
            .with_context(|| format!("cannot write {}", files[fi as usize].path.display()))?;
            counters.bytes_written.fetch_add(n, Ordering::Relaxed);
        }
    }
    if device {
        for f in open.values() {
            f.sync_all()?;
        }
    }
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

    #[test]
    fn include_filter() {
        let inc = vec![PathBuf::from("a/b")];
        assert_eq!(included(Path::new("a"), &inc), (true, true));
        assert_eq!(included(Path::new("a/b/c"), &inc), (true, true));
        assert_eq!(included(Path::new("a/x"), &inc), (false, false));
        assert_eq!(included(Path::new("z"), &[]), (true, true));
    }
}
