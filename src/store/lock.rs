//! Locks: who is working on the store right now, with an expiry so a killed process never
//! needs a human to unlock.
//!
//! A lock is held by a *holder* (one push, one prune) and written as immutable objects
//! `locks/<holder>-<seq>`: JSON with the holder, its kind, host, pid, when it started and when
//! this object expires. A background thread refreshes it every third of its time to live by
//! writing the next sequence number and only then deleting the previous one, so a live holder
//! is never invisible. A holder is alive while any of its objects has not expired; a holder
//! whose objects all expired is dead, whatever its process is doing, and a holder that could not
//! refresh in time knows it: [`Lock::check`] fails, and a push then writes no snapshot.
//!
//! Pushes take `push` locks and never wait for anyone. Prune takes a `prune` lock, allows one
//! prune at a time, and uses the push locks it sees to know when pushes that may hold an old
//! view of the index have ended (see [`super::prune`]). Clocks of the hosts must agree to well
//! within the time to live (NTP does that).

use super::Store;
use super::backend::{Backend, BackendError};
use super::id::Id;
use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub const LOCK_PREFIX: &str = "locks/";

/// The default time to live of a lock object; `PUSH_OPERATOR_LOCK_TTL` (seconds) overrides it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

pub fn ttl_from_env() -> Duration {
    std::env::var("PUSH_OPERATOR_LOCK_TTL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 1.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TTL)
}

/// What a lock's holder does (stored as "push" or "prune").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Push,
    Prune,
}

impl std::fmt::Display for LockKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockKind::Push => "push",
            LockKind::Prune => "prune",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    pub holder: Id,
    pub kind: LockKind,
    pub host: String,
    pub pid: u32,
    /// When the holder took the lock (the same in every refresh).
    pub since: DateTime<Utc>,
    /// When this object stops counting.
    pub expires: DateTime<Utc>,
    pub seq: u64,
    /// What the holder does, for messages (a job name, a source).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
}

/// The live holders of a store's locks, each with its newest object.
pub fn live_holders(store: &Store, now: DateTime<Utc>) -> anyhow::Result<BTreeMap<Id, LockInfo>> {
    Ok(read_locks(store.backend().as_ref())?.into_iter().filter(|(_, l)| l.expires > now).fold(
        BTreeMap::new(),
        |mut m, (_, l)| {
            let e = m.entry(l.holder).or_insert_with(|| l.clone());
            if l.seq > e.seq {
                *e = l;
            }
            m
        },
    ))
}

/// Whether the store holds a lock object of another holder than `me`, live or expired (keys
/// only: nothing is read). A push that died leaves its lock behind until a prune removes it.
pub fn others_present(backend: &dyn Backend, me: Id) -> anyhow::Result<bool> {
    let mine = format!("{LOCK_PREFIX}{me}-");
    Ok(backend.list(LOCK_PREFIX)?.iter().any(|o| !o.key.starts_with(&mine)))
}

/// Every lock object (key, content). Objects that vanish or do not parse while being read are
/// skipped: a refresh deletes old objects at any time.
pub fn read_locks(backend: &dyn Backend) -> anyhow::Result<Vec<(String, LockInfo)>> {
    let mut out = Vec::new();
    for o in backend.list(LOCK_PREFIX)? {
        match backend.get(&o.key) {
            Ok(b) => match serde_json::from_slice::<LockInfo>(&b) {
                Ok(l) => out.push((o.key, l)),
                Err(e) => tracing::warn!(key = %o.key, error = %e, "unreadable lock object ignored"),
            },
            Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Deletes lock objects that expired more than `grace` ago (they count for nothing already).
pub fn remove_expired(store: &Store, now: DateTime<Utc>, grace: Duration) -> anyhow::Result<usize> {
    let grace = chrono::Duration::from_std(grace).unwrap_or_default();
    let mut n = 0;
    for (key, l) in read_locks(store.backend().as_ref())? {
        if l.expires + grace < now {
            store.backend().delete(&key)?;
            n += 1;
        }
    }
    Ok(n)
}

struct Shared {
    backend: Arc<dyn Backend>,
    info: Mutex<(LockInfo, String)>,
    ttl: Duration,
    lost: AtomicBool,
    /// Leave the object to expire instead of deleting it (see [`Lock::leave_behind`]).
    leave: AtomicBool,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A held lock; refreshed in the background until dropped, then deleted.
pub struct Lock {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn key_of(l: &LockInfo) -> String {
    format!("{LOCK_PREFIX}{}-{:010}", l.holder, l.seq)
}

impl Lock {
    pub fn acquire(store: &Store, kind: LockKind, purpose: &str, ttl: Duration) -> anyhow::Result<Lock> {
        let now = Utc::now();
        let info = LockInfo {
            holder: Id::random(),
            kind,
            host: super::push::hostname(),
            pid: std::process::id(),
            since: now,
            expires: now + chrono::Duration::from_std(ttl)?,
            seq: 0,
            purpose: purpose.into(),
        };
        let key = key_of(&info);
        store
            .backend()
            .put_if_absent(&key, &serde_json::to_vec(&info)?)
            .map_err(anyhow::Error::new)
            .with_context(|| format!("cannot write the lock object {key}"))?;
        let shared = Arc::new(Shared {
            backend: store.backend().clone(),
            info: Mutex::new((info, key)),
            ttl,
            lost: AtomicBool::new(false),
            leave: AtomicBool::new(false),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("lock-refresh".into()).spawn(move || refresher(s))?;
        Ok(Lock { shared, thread: Some(thread) })
    }

    /// When dropped, stop refreshing but leave the object to expire: a push that stored packs
    /// it could not index does this, so the next push sees a lock that is not its own and
    /// looks for unindexed packs (as after a push that was killed).
    pub fn leave_behind(&self) {
        self.shared.leave.store(true, Ordering::SeqCst);
    }

    pub fn holder(&self) -> Id {
        self.shared.info.lock().unwrap().0.holder
    }

    pub fn info(&self) -> LockInfo {
        self.shared.info.lock().unwrap().0.clone()
    }

    /// Fails when the lock could not be refreshed before it expired: others may have taken the
    /// holder for dead, so nothing that relies on the lock may be written any more.
    pub fn check(&self) -> anyhow::Result<()> {
        let (info, _) = &*self.shared.info.lock().unwrap();
        // A margin of a tenth of the time to live for the write that follows the check.
        let margin = chrono::Duration::from_std(self.shared.ttl / 10).unwrap_or_default();
        if self.shared.lost.load(Ordering::SeqCst) || info.expires - margin <= Utc::now() {
            anyhow::bail!(
                "the store lock expired before it could be refreshed (the store was unreachable for too long); \
                 nothing more is written: run the push again"
            );
        }
        Ok(())
    }
}

fn refresher(s: Arc<Shared>) {
    let interval = s.ttl / 3;
    loop {
        {
            let stop = s.stop.lock().unwrap();
            let (stop, _) = s.wake.wait_timeout_while(stop, interval, |st| !*st).unwrap();
            if *stop {
                return;
            }
        }
        let (next, old_key) = {
            let (info, key) = &*s.info.lock().unwrap();
            let mut next = info.clone();
            next.seq += 1;
            next.expires = Utc::now() + chrono::Duration::from_std(s.ttl).unwrap_or_default();
            (next, key.clone())
        };
        let key = key_of(&next);
        let written = serde_json::to_vec(&next).map_err(anyhow::Error::from).and_then(|b| {
            s.backend.put_if_absent(&key, &b).map_err(anyhow::Error::from)?;
            Ok(())
        });
        match written {
            Ok(()) => {
                *s.info.lock().unwrap() = (next, key);
                if let Err(e) = s.backend.delete(&old_key) {
                    tracing::warn!(key = %old_key, error = %e, "old lock object not deleted; it expires by itself");
                }
            }
            Err(e) => {
                let expired = s.info.lock().unwrap().0.expires <= Utc::now();
                tracing::warn!(error = %format!("{e:#}"), expired, "lock refresh failed");
                if expired {
                    s.lost.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let key = self.shared.info.lock().unwrap().1.clone();
        if self.shared.leave.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.shared.backend.delete(&key) {
            tracing::warn!(key = %key, error = %e, "lock object not deleted; it expires by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::fs::FsBackend;

    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let b = Arc::new(FsBackend::new(tmp.path().join("s")));
        let s = Store::open_or_init(b, &crate::store::InitOptions::plaintext(), &Default::default()).unwrap();
        (tmp, s)
    }

    #[test]
    fn a_lock_is_visible_while_held_refreshed_and_gone_when_dropped() {
        let (_t, s) = store();
        let lock = Lock::acquire(&s, LockKind::Push, "test", Duration::from_millis(1500)).unwrap();
        let holders = live_holders(&s, Utc::now()).unwrap();
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[&lock.holder()].kind, LockKind::Push);
        // Refreshed every 0.5 s: after 2 s (past the first expiry) it is still alive, one object.
        std::thread::sleep(Duration::from_secs(2));
        let holders = live_holders(&s, Utc::now()).unwrap();
        assert!(holders[&lock.holder()].seq >= 2, "{holders:?}");
        assert_eq!(read_locks(s.backend().as_ref()).unwrap().len(), 1);
        lock.check().unwrap();
        drop(lock);
        assert!(read_locks(s.backend().as_ref()).unwrap().is_empty());
    }

    #[test]
    fn a_lock_left_by_a_killed_process_expires_by_itself() {
        let (_t, s) = store();
        let lock = Lock::acquire(&s, LockKind::Push, "killed", Duration::from_secs(60)).unwrap();
        let holder = lock.holder();
        // A killed process neither refreshes nor deletes.
        std::mem::forget(lock);
        let now = Utc::now();
        assert!(live_holders(&s, now).unwrap().contains_key(&holder));
        let later = now + chrono::Duration::seconds(61);
        assert!(live_holders(&s, later).unwrap().is_empty());
        assert_eq!(remove_expired(&s, now, Duration::ZERO).unwrap(), 0);
        assert_eq!(remove_expired(&s, later, Duration::ZERO).unwrap(), 1);
        assert!(read_locks(s.backend().as_ref()).unwrap().is_empty());
    }
}
