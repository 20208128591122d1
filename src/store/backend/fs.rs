//! A store in a local directory. Objects are files; a write goes to `tmp/` first, is synced, and
//! is then hard-linked into place, which fails if the object exists: put-if-absent is atomic and
//! a crash never leaves a half-written object under its final name.

use super::{Backend, BackendError, ObjectInfo, Result};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct FsBackend {
    root: PathBuf,
}

fn io_err(what: &str, path: &Path, e: io::Error) -> BackendError {
    let msg = format!("{what} {}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::NotFound => BackendError::NotFound(path.display().to_string()),
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            BackendError::Transient(msg)
        }
        _ => BackendError::Permanent(msg),
    }
}

impl FsBackend {
    /// A backend rooted at `root`. The directory is created on the first write.
    pub fn new(root: impl Into<PathBuf>) -> FsBackend {
        FsBackend { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn walk(&self, dir: &Path, out: &mut Vec<ObjectInfo>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("cannot list", dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err("cannot list", dir, e))?;
            let ft = entry.file_type().map_err(|e| io_err("cannot stat", &entry.path(), e))?;
            let path = entry.path();
            if ft.is_dir() {
                self.walk(&path, out)?;
            } else if ft.is_file() {
                let size = entry.metadata().map_err(|e| io_err("cannot stat", &path, e))?.len();
                let rel = path.strip_prefix(&self.root).expect("walk stays below the root");
                out.push(ObjectInfo { key: rel.to_string_lossy().replace('\\', "/"), size });
            }
        }
        Ok(())
    }
}

impl Backend for FsBackend {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool> {
        let dest = self.path(key);
        if dest.exists() {
            return Ok(false);
        }
        let tmp_dir = self.root.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(|e| io_err("cannot create", &tmp_dir, e))?;
        let tmp = tmp_dir.join(format!("{}.tmp", super::super::id::Id::random().short()));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("cannot write", &tmp, e));
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err("cannot create", parent, e))?;
        }
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("cannot write", &dest, e)),
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let p = self.path(key);
        fs::read(&p).map_err(|e| io_err("cannot read", &p, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let p = self.path(key);
        let f = File::open(&p).map_err(|e| io_err("cannot open", &p, e))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                BackendError::Permanent(format!("{} is shorter than {} bytes", p.display(), offset + len))
            } else {
                io_err("cannot read", &p, e)
            }
        })?;
        Ok(buf)
    }

    fn stat(&self, key: &str) -> Result<Option<u64>> {
        let p = self.path(key);
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot stat", &p, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // Walk the deepest directory the prefix names, then filter by the full prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut out = Vec::new();
        self.walk(&self.root.join(dir_part), &mut out)?;
        out.retain(|o| o.key.starts_with(prefix) && !o.key.starts_with("tmp/"));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot delete", &p, e)),
        }
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}
