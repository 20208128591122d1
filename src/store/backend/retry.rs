//! Retries with exponential backoff and jitter in front of any backend.
//!
//! Only [`BackendError::Transient`] errors are retried. A put that failed transiently may have
//! reached the server anyway; its retry then finds the object present, which is the right answer
//! for content-addressed, write-once objects.

use super::{Backend, BackendError, ObjectInfo, Result, Retention};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 8, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(15) }
    }
}

impl RetryPolicy {
    /// The delay before attempt `n` (1-based retry number), with up to 50% random jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << n.min(16).saturating_sub(1));
        let capped = exp.min(self.max_delay);
        let mut b = [0u8; 2];
        let _ = getrandom::fill(&mut b);
        let jitter = u16::from_le_bytes(b) as f64 / u16::MAX as f64; // 0..=1
        capped.mul_f64(0.5 + 0.5 * jitter)
    }
}

pub struct Retrying<B> {
    inner: B,
    policy: RetryPolicy,
}

impl<B: Backend> Retrying<B> {
    pub fn new(inner: B, policy: RetryPolicy) -> Self {
        Retrying { inner, policy }
    }

    fn run<T>(&self, what: &str, key: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 1;
        loop {
            match f() {
                Err(e) if e.is_transient() && attempt < self.policy.attempts => {
                    let delay = self.policy.delay(attempt);
                    tracing::warn!(%e, attempt, ?delay, op = what, key, "retrying storage request");
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                Err(BackendError::Transient(msg)) => {
                    return Err(BackendError::Transient(format!(
                        "{what} {key} failed after {attempt} attempts: {msg}"
                    )));
                }
                other => return other,
            }
        }
    }
}

impl<B: Backend> Backend for Retrying<B> {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool> {
        self.run("put", key, || self.inner.put_if_absent(key, data))
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.run("get", key, || self.inner.get(key))
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.run("get", key, || self.inner.get_range(key, offset, len))
    }
    fn stat(&self, key: &str) -> Result<Option<u64>> {
        self.run("stat", key, || self.inner.stat(key))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.run("list", prefix, || self.inner.list(prefix))
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.run("delete", key, || self.inner.delete(key))
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn supports_object_lock(&self) -> Result<bool> {
        self.run("object lock configuration", "", || self.inner.supports_object_lock())
    }
    fn put_retained(&self, key: &str, data: &[u8], retention: &Retention) -> Result<bool> {
        self.run("put", key, || self.inner.put_retained(key, data, retention))
    }
    fn retention(&self, key: &str) -> Result<Option<Retention>> {
        self.run("get retention", key, || self.inner.retention(key))
    }
    fn set_retention(&self, key: &str, retention: &Retention) -> Result<()> {
        self.run("set retention", key, || self.inner.set_retention(key, retention))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy { attempts: 10, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for n in 1..12 {
            let d = p.delay(n);
            let full = Duration::from_millis(100 * (1u64 << (n - 1).min(16))).min(Duration::from_secs(1));
            assert!(d >= full / 2 && d <= full, "retry {n}: {d:?} not in [{:?}, {full:?}]", full / 2);
        }
    }
}
