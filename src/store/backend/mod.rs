//! Object storage behind one small trait: put-if-absent, get (whole or range), list, delete.
//!
//! Every object the store writes is immutable, so the trait has no overwrite. Backends:
//! a local directory ([`fs::FsBackend`]) and S3 ([`s3::S3Backend`]). [`retry::Retrying`] adds
//! retries with backoff in front of any backend; one conformance suite
//! (`tests/backend_conformance.rs`) runs against each.

#[cfg(any(test, feature = "test-hooks"))]
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
    /// Retrying cannot help: an invalid request, a store that refuses writes.
    #[error("{0}")]
    Permanent(String),
    /// The store refused the credentials (HTTP 401/403).
    #[error("{0}")]
    Denied(String),
    /// The bucket does not exist.
    #[error("{0}")]
    NoBucket(String),
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient(_))
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// S3 Object Lock retention modes: `Compliance` cannot be shortened or bypassed by anyone;
/// `Governance` can, by an identity allowed to bypass it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionMode {
    Compliance,
    Governance,
}

impl std::str::FromStr for RetentionMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<RetentionMode, String> {
        match s.to_ascii_lowercase().as_str() {
            "compliance" => Ok(RetentionMode::Compliance),
            "governance" => Ok(RetentionMode::Governance),
            _ => Err(format!("unknown retention mode {s:?}: use compliance or governance")),
        }
    }
}

/// An object version's lock: it cannot be deleted or overwritten before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub mode: RetentionMode,
    pub until: chrono::DateTime<chrono::Utc>,
}

/// Writes like [`Backend::put_if_absent`], retained when `retention` is given (stores with
/// Object Lock): the one way the store writes what it keeps.
pub fn put_kept(backend: &dyn Backend, key: &str, data: &[u8], retention: Option<&Retention>) -> Result<bool> {
    match retention {
        Some(r) => backend.put_retained(key, data, r),
        None => backend.put_if_absent(key, data),
    }
}

fn no_object_lock(backend: &str) -> BackendError {
    BackendError::Permanent(format!("{backend} has no object lock: use an S3 bucket created with Object Lock enabled"))
}

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
    /// Deletes the object; deleting an absent object is not an error. (In a bucket with
    /// Object Lock this hides the object behind a delete marker; a retained version stays.)
    fn delete(&self, key: &str) -> Result<()>;
    /// Where this backend points, for messages (never includes credentials).
    fn describe(&self) -> String;
    /// Whether objects can be locked (an S3 bucket with Object Lock enabled).
    fn supports_object_lock(&self) -> Result<bool> {
        Ok(false)
    }
    /// [`Backend::put_if_absent`] with a retention (and a checksum, which Object Lock asks for).
    fn put_retained(&self, _key: &str, _data: &[u8], _retention: &Retention) -> Result<bool> {
        Err(no_object_lock(&self.describe()))
    }
    /// The retention of the object's current version; `None` when it has none (or is absent).
    fn retention(&self, _key: &str) -> Result<Option<Retention>> {
        Ok(None)
    }
    /// Sets the retention of the object's current version (a later `until` only: Object Lock
    /// refuses to shorten a Compliance retention).
    fn set_retention(&self, _key: &str, _retention: &Retention) -> Result<()> {
        Err(no_object_lock(&self.describe()))
    }
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
    fn supports_object_lock(&self) -> Result<bool> {
        (**self).supports_object_lock()
    }
    fn put_retained(&self, key: &str, data: &[u8], retention: &Retention) -> Result<bool> {
        (**self).put_retained(key, data, retention)
    }
    fn retention(&self, key: &str) -> Result<Option<Retention>> {
        (**self).retention(key)
    }
    fn set_retention(&self, key: &str, retention: &Retention) -> Result<()> {
        (**self).set_retention(key, retention)
    }
}

impl fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}
