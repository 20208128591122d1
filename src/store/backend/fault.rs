//! A backend wrapper that injects faults, for tests of the retry layer and of crash safety.
//!
//! It fails a chosen share of calls transiently (as a 503 or a reset would), can fail every
//! write permanently after a number of successful ones, and can "lose the response" of a put:
//! the object is written but the caller sees an error, as when a connection resets after the
//! server stored the body.
//!
//! A call that was just failed is let through on its retry (per operation and key), so faults
//! spread over many calls and a retry loop never meets the same fault twice in a row, however
//! the concurrent callers interleave (a global "every n-th call" alone can line up with
//! threads retrying in step and fail one caller again and again).

use super::{Backend, BackendError, ObjectInfo, Result};
use std::collections::HashSet;
use std::sync::Mutex;
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
    /// Operations (`what key`) whose last call got a transient fault: the next one passes.
    just_failed: Mutex<HashSet<String>>,
    /// Puts whose last response was lost: the retry's response arrives.
    just_lost: Mutex<HashSet<String>>,
}

impl<B: Backend> Faulty<B> {
    pub fn new(inner: B, plan: FaultPlan) -> Self {
        Faulty {
            inner,
            plan,
            calls: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            just_failed: Mutex::new(HashSet::new()),
            just_lost: Mutex::new(HashSet::new()),
        }
    }

    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn gate(&self, what: &str, key: &str) -> Result<()> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let op = format!("{what} {key}");
        let mut just_failed = self.just_failed.lock().unwrap();
        if just_failed.remove(&op) {
            return Ok(());
        }
        if self.plan.transient_every > 0 && n.is_multiple_of(self.plan.transient_every) {
            just_failed.insert(op);
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
        let mut just_lost = self.just_lost.lock().unwrap();
        if just_lost.remove(key) {
            return Ok(written);
        }
        if self.plan.lost_response_every > 0 && n.is_multiple_of(self.plan.lost_response_every) {
            just_lost.insert(key.to_string());
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
