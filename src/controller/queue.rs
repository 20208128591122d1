//! The push queue: which jobs may start. Pure.
//!
//! Jobs are admitted by priority (P1 first), then creation time (then name, for a total
//! order); at most one running job per Repository, and at most `max_concurrent` in all. An
//! offline job therefore waits for a running online job of the same repository, and the other
//! way round.

use crate::api::{Phase, Priority, RestorePhase};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `namespace/name`.
    pub key: String,
    /// `namespace/repository`.
    pub repository: String,
    pub priority: Priority,
    pub created: DateTime<Utc>,
    pub stage: Stage,
    /// Admitted earlier (by this process) even if the phase does not show it yet.
    pub admitted: bool,
}

/// Where a job is, as the queue sees it (PushJobs and RestoreJobs alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Not yet checked (counted, not admitted).
    Pending,
    /// Waiting for a slot.
    Queued,
    /// Admitted and not finished.
    Running,
    Finished,
}

impl Stage {
    pub fn is_waiting(self) -> bool {
        matches!(self, Stage::Pending | Stage::Queued)
    }
}

impl From<Phase> for Stage {
    fn from(p: Phase) -> Stage {
        match p {
            Phase::Pending => Stage::Pending,
            Phase::Queued => Stage::Queued,
            p if p.is_terminal() => Stage::Finished,
            _ => Stage::Running,
        }
    }
}

impl From<RestorePhase> for Stage {
    fn from(p: RestorePhase) -> Stage {
        match p {
            RestorePhase::Pending => Stage::Pending,
            RestorePhase::Queued => Stage::Queued,
            p if p.is_terminal() => Stage::Finished,
            _ => Stage::Running,
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Jobs that may start now (newly admitted).
    pub admit: Vec<String>,
    /// 1-based place of each waiting job.
    pub positions: BTreeMap<String, i32>,
    /// Waiting jobs per priority (for the queue-depth metric).
    pub depth: BTreeMap<Priority, i64>,
}

pub fn plan(entries: &[Entry], max_concurrent: usize) -> Plan {
    let running: Vec<&Entry> =
        entries.iter().filter(|e| e.stage == Stage::Running || (e.admitted && e.stage != Stage::Finished)).collect();
    let mut busy: HashSet<&str> = running.iter().map(|e| e.repository.as_str()).collect();
    let mut slots = max_concurrent.saturating_sub(running.len());
    let mut waiting: Vec<&Entry> = entries.iter().filter(|e| e.stage.is_waiting() && !e.admitted).collect();
    waiting.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.created.cmp(&b.created)).then(a.key.cmp(&b.key)));
    let mut out = Plan::default();
    let mut pos = 0;
    for e in waiting {
        if e.stage == Stage::Queued && slots > 0 && !busy.contains(e.repository.as_str()) {
            slots -= 1;
            busy.insert(&e.repository);
            out.admit.push(e.key.clone());
        } else {
            pos += 1;
            out.positions.insert(e.key.clone(), pos);
            *out.depth.entry(e.priority).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn e(key: &str, repo: &str, p: Priority, secs: i64, phase: Phase) -> Entry {
        Entry {
            key: key.into(),
            repository: repo.into(),
            priority: p,
            created: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(secs),
            stage: phase.into(),
            admitted: false,
        }
    }

    #[test]
    fn priority_first_then_age() {
        let jobs = vec![
            e("ns/p4-old", "ns/a", Priority::P4, 0, Phase::Queued),
            e("ns/p2", "ns/b", Priority::P2, 5, Phase::Queued),
            e("ns/p1", "ns/c", Priority::P1, 9, Phase::Queued),
            e("ns/p4-new", "ns/d", Priority::P4, 3, Phase::Queued),
            e("ns/p5", "ns/e", Priority::P5, 1, Phase::Queued),
        ];
        let p = plan(&jobs, 1);
        assert_eq!(p.admit, vec!["ns/p1"]);
        let order: Vec<(&str, i32)> = {
            let mut v: Vec<_> = p.positions.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            v.sort_by_key(|x| x.1);
            v
        };
        assert_eq!(order, vec![("ns/p2", 1), ("ns/p4-old", 2), ("ns/p4-new", 3), ("ns/p5", 4)]);
        assert_eq!(p.depth.get(&Priority::P4), Some(&2));
        assert_eq!(plan(&jobs, 3).admit, vec!["ns/p1", "ns/p2", "ns/p4-old"]);
    }

    #[test]
    fn one_running_job_per_repository() {
        let jobs = vec![
            e("ns/online", "ns/shop", Priority::P3, 0, Phase::Pushing),
            e("ns/offline", "ns/shop", Priority::P1, 5, Phase::Queued),
            e("ns/other", "ns/blog", Priority::P4, 6, Phase::Queued),
        ];
        let p = plan(&jobs, 5);
        assert_eq!(p.admit, vec!["ns/other"], "the offline job waits for the running online job");
        assert_eq!(p.positions.get("ns/offline"), Some(&1));
    }

    #[test]
    fn running_and_admitted_jobs_use_slots() {
        let mut admitted = e("ns/a", "ns/r1", Priority::P4, 0, Phase::Queued);
        admitted.admitted = true;
        let jobs = vec![
            admitted,
            e("ns/b", "ns/r2", Priority::P4, 1, Phase::Resuming),
            e("ns/c", "ns/r3", Priority::P1, 2, Phase::Queued),
            e("ns/done", "ns/r4", Priority::P1, 2, Phase::Succeeded),
        ];
        assert!(plan(&jobs, 2).admit.is_empty());
        assert_eq!(plan(&jobs, 3).admit, vec!["ns/c"]);
    }

    #[test]
    fn pending_jobs_are_counted_but_not_admitted() {
        let jobs = vec![e("ns/new", "ns/r", Priority::P1, 0, Phase::Pending)];
        let p = plan(&jobs, 4);
        assert!(p.admit.is_empty());
        assert_eq!(p.positions.get("ns/new"), Some(&1));
    }
}
