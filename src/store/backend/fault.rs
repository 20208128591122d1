//! A backend wrapper that injects faults, for tests of the retry layer and of crash safety.
//!
//! It fails a chosen share of calls transiently (as a 503 or a reset would), can fail every
//! write permanently after a number of successful ones, and can "lose the response" of a put:
//! the object is written but the caller sees an error, as when a connection resets after the
//! server stored the body.

use super::{Backend, BackendError, ObjectInfo, Result};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Fail one call in `every` (0 = never) with a transient error, before reaching the inner backend.
    pub transient_every: u64,
    /// After the put has been done, report a transient error for one put in `every` (0 = never).
    pub lost_response_every: u64,
    /// Fail every put permanently once this many puts succeeded (None = never).
    pub fail_puts_after: Option<u64>,
}

pub struct Faulty<B> {
    inner: B,
    plan: FaultPlan,
    calls: AtomicU64,
    puts: AtomicU64,
    pub injected: AtomicU64,
}

impl<B: Backend> Faulty<B> {
    pub fn new(inner: B, plan: FaultPlan) -> Self {
        Faulty { inner, plan, calls: AtomicU64::new(0), puts: AtomicU64::new(0), injected: AtomicU64::new(0) }
    }

    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn gate(&self, what: &str, key: &str) -> Result<()> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if self.plan.transient_every > 0 && n.is_multiple_of(self.plan.transient_every) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::Transient(format!("injected fault: {what} {key}: connection reset")));
        }
        Ok(())
    }
}

impl<B: Backend> Backend for Faulty<B> {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool> {
        self.gate("put", key)?;
        if let Some(limit) = self.plan.fail_puts_after
            && self.puts.load(Ordering::Relaxed) >= limit
        {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::Permanent(format!("injected fault: put {key}: store unreachable")));
        }
        let written = self.inner.put_if_absent(key, data)?;
        let n = self.puts.fetch_add(1, Ordering::Relaxed) + 1;
        if self.plan.lost_response_every > 0 && n.is_multiple_of(self.plan.lost_response_every) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::Transient(format!("injected fault: put {key}: response lost")));
        }
        Ok(written)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.gate("get", key)?;
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.gate("get", key)?;
        self.inner.get_range(key, offset, len)
    }
    fn stat(&self, key: &str) -> Result<Option<u64>> {
        self.gate("stat", key)?;
        self.inner.stat(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.gate("list", prefix)?;
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.gate("delete", key)?;
        self.inner.delete(key)
    }
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}
