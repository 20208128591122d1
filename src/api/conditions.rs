//! Conditions in the kstatus form (Ready, Reconciling, Stalled, plus Complete and Failed on
//! jobs), set so that `lastTransitionTime` only moves when the status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
pub const CONSISTENCY_WARNING: &str = "ConsistencyWarning";

/// Schema for `Vec<Condition>`: a list-map keyed by `type`, as Kubernetes' own types do.
pub fn conditions_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut s = <Vec<Condition> as schemars::JsonSchema>::json_schema(g);
    let o = s.ensure_object();
    o.insert("x-kubernetes-list-type".into(), "map".into());
    o.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    s
}

/// Sets (or adds) a condition. `lastTransitionTime` changes only when the status does.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: chrono::DateTime<chrono::Utc>,
) {
    let status_s = if status { "True" } else { "False" }.to_string();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status_s {
            c.last_transition_time = super::time(now);
        }
        c.status = status_s;
        c.reason = reason.to_string();
        c.message = message.to_string();
        c.observed_generation = generation;
    } else {
        conditions.push(Condition {
            type_: type_.to_string(),
            status: status_s,
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: super::time(now),
        });
    }
}

pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

pub fn condition_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t1 = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let t2 = t1 + chrono::Duration::seconds(10);
        let t3 = t2 + chrono::Duration::seconds(10);
        let mut c = Vec::new();
        set_condition(&mut c, READY, false, "Pending", "waiting", Some(1), t1);
        set_condition(&mut c, READY, false, "Queued", "in queue", Some(1), t2);
        assert_eq!(crate::api::chrono_of(&c[0].last_transition_time.0), t1);
        assert_eq!(c[0].reason, "Queued");
        set_condition(&mut c, READY, true, "Succeeded", "done", Some(2), t3);
        assert_eq!(crate::api::chrono_of(&c[0].last_transition_time.0), t3);
        assert_eq!(c[0].observed_generation, Some(2));
        assert!(condition_true(&c, READY));
        assert_eq!(c.len(), 1);
        remove_condition(&mut c, READY);
        assert!(c.is_empty());
    }
}
