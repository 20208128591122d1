//! Object storage behind one small trait: put-if-absent, get (whole or range), list, delete.
//!
//! Every object the store writes is immutable, so the trait has no overwrite. Backends:
//! a local directory ([`fs::FsBackend`]) and S3 ([`s3::S3Backend`]). [`retry::Retrying`] adds
//! retries with backoff in front of any backend; one conformance suite
//! (`tests/backend_conformance.rs`) runs against each.

pub mod fault;
pub mod fs;
pub mod retry;
pub mod s3;

use std::fmt;

/// What went wrong, classified by what the caller can do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Worth retrying: 5xx, timeouts, connection resets, throttling.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help: wrong credentials, missing bucket, invalid request.
    #[error("{0}")]
    Permanent(String),
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient(_))
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store root, `/`-separated (e.g. `packs/ab/ab12...`).
    pub key: String,
    pub size: u64,
}

/// Object storage as the store needs it. Keys are relative, `/`-separated paths.
pub trait Backend: Send + Sync {
    /// Writes `data` under `key` unless an object already exists there.
    /// Returns `true` when this call wrote it, `false` when it was already present.
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool>;
    /// The whole object.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// `len` bytes from `offset`; an error when the object is shorter.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Size of the object, or `None` when absent.
    fn stat(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix`, in no particular order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Deletes the object; deleting an absent object is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Where this backend points, for messages (never includes credentials).
    fn describe(&self) -> String;
}

/// A shared backend is a backend (the store and its uploaders share one).
impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool> {
        (**self).put_if_absent(key, data)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        (**self).get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        (**self).get_range(key, offset, len)
    }
    fn stat(&self, key: &str) -> Result<Option<u64>> {
        (**self).stat(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        (**self).list(prefix)
    }
    fn delete(&self, key: &str) -> Result<()> {
        (**self).delete(key)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}
