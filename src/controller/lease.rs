//! Leader election on a `coordination.k8s.io/v1` Lease: one active operator, standbys ready to
//! take over when its lease expires.

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    Create,
    Renew,
    TakeOver,
    Wait,
}

/// What to do with the lease, given its current spec (pure).
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: DateTime<Utc>) -> LeaseStep {
    let Some(spec) = spec else { return LeaseStep::Create };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return LeaseStep::Renew;
    }
    if holder.is_empty() {
        return LeaseStep::TakeOver;
    }
    let duration = chrono::Duration::seconds(spec.lease_duration_seconds.unwrap_or(15) as i64);
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(t) if crate::api::chrono_of(&t.0) + duration > now => LeaseStep::Wait,
        _ => LeaseStep::TakeOver,
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    pub identity: String,
    duration: Duration,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElector { api, name: name.into(), identity: identity.into(), duration }
    }

    fn spec(&self, now: DateTime<Utc>, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(acquire.unwrap_or(crate::api::micro_time(now))),
            renew_time: Some(crate::api::micro_time(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt: true when we hold the lease afterwards.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Utc::now();
        let current = self.api.get_opt(&self.name).await?;
        let step = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.identity, now);
        let result = match (step, current) {
            (LeaseStep::Wait, _) => return Ok(false),
            (LeaseStep::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(self.spec(now, None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await.map(|_| ())
            }
            (step, Some(mut lease)) => {
                let old = lease.spec.clone().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0) + i32::from(step == LeaseStep::TakeOver);
                let acquire = if step == LeaseStep::Renew { old.acquire_time } else { None };
                lease.spec = Some(self.spec(now, acquire, transitions));
                // resourceVersion is kept: a concurrent writer makes this a 409, not a split brain.
                self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
            }
            (_, None) => return Ok(false),
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown) so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.identity.as_str())
        {
            if let Some(s) = lease.spec.as_mut() {
                s.holder_identity = None;
                s.renew_time = None;
            }
            let _ = self.api.replace(&self.name, &PostParams::default(), &lease).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn lease_decisions() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
        let spec = |holder: &str, renewed_secs_ago: i64| LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(crate::api::micro_time(now - chrono::Duration::seconds(renewed_secs_ago))),
            ..Default::default()
        };
        assert_eq!(decide(None, "me", now), LeaseStep::Create);
        assert_eq!(decide(Some(&spec("me", 100)), "me", now), LeaseStep::Renew);
        assert_eq!(decide(Some(&spec("other", 5)), "me", now), LeaseStep::Wait);
        assert_eq!(decide(Some(&spec("other", 16)), "me", now), LeaseStep::TakeOver);
        assert_eq!(decide(Some(&spec("", 1)), "me", now), LeaseStep::TakeOver);
    }
}
