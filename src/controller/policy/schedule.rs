//! Schedule maths: pure functions of a cron expression, a time zone and the clock.
//!
//! Cron has five fields (minute hour day-of-month month day-of-week; when both day fields are
//! restricted, either matches, as in Vixie cron and Kubernetes CronJobs) or a macro (@hourly,
//! @daily/@midnight, @weekly, @monthly, @yearly/@annually). Times are evaluated in the
//! schedule's IANA time zone, so "0 3 * * *" in Europe/Berlin stays at 03:00 local time across
//! daylight saving changes. Across a change:
//! - a wall-clock time that does not exist (spring forward, e.g. 02:30 on the night the clocks
//!   jump from 02:00 to 03:00) runs once, at the first instant after the gap;
//! - a wall-clock time that exists twice (fall back) runs once, at its first occurrence;
//! - schedules with wildcard or stepped hours ("*/15 * * * *", "0 * * * *") follow real time.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

/// At most this many missed runs are counted (a policy suspended for a year is not walked
/// minute by minute).
pub const MISSED_COUNT_CAP: u32 = 1000;

impl CronSchedule {
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<CronSchedule, String> {
        let expr = expr.trim();
        let expr = if expr.eq_ignore_ascii_case("@midnight") { "@daily" } else { expr };
        if !expr.starts_with('@') && expr.split_whitespace().count() != 5 {
            return Err(format!(
                "cron {expr:?} must have five fields (minute hour day-of-month month day-of-week) or be a macro such as @hourly"
            ));
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron = parser.parse(expr).map_err(|e| format!("cron {expr:?} is invalid: {e}"))?;
        let tz = match time_zone {
            None | Some("") => Tz::UTC,
            Some(z) => z
                .parse::<Tz>()
                .map_err(|_| format!("time zone {z:?} is unknown: use an IANA name such as Europe/Berlin or UTC"))?,
        };
        // A pattern that never matches (31 February) is an error now, not a silent never.
        cron.find_next_occurrence(&Utc::now().with_timezone(&tz), false)
            .map_err(|_| format!("cron {expr:?} never matches"))?;
        Ok(CronSchedule { cron, tz })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t.with_timezone(&self.tz), false).ok().map(|d| d.with_timezone(&Utc))
    }

    /// The last scheduled time at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&t.with_timezone(&self.tz), true).ok().map(|d| d.with_timezone(&Utc))
    }

    /// Scheduled times in `(after, until]`, at most `cap`.
    pub fn between(&self, after: DateTime<Utc>, until: DateTime<Utc>, cap: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < cap {
            match self.next_after(t) {
                Some(n) if n <= until => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }
}

/// What one schedule should do now.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    /// The scheduled time to act on: the latest one not yet handled, if any.
    pub scheduled: Option<DateTime<Utc>>,
    /// True when that time is past the starting deadline: skip it, record it as missed.
    pub too_late: bool,
    /// Earlier scheduled times since the last handled one, never run (counted, not run:
    /// never a burst).
    pub missed_before: u32,
    /// The next scheduled time after now.
    pub next: Option<DateTime<Utc>>,
}

/// The decision for one schedule. `handled` is the latest scheduled time already acted on (or
/// the policy's creation time), `deadline` the starting deadline.
pub fn due(s: &CronSchedule, handled: DateTime<Utc>, now: DateTime<Utc>, deadline: Option<chrono::Duration>) -> Due {
    let next = s.next_after(now);
    let latest = s.latest_at_or_before(now).filter(|t| *t > handled);
    let Some(latest) = latest else {
        return Due { scheduled: None, too_late: false, missed_before: 0, next };
    };
    let missed_before = s.between(handled, latest, MISSED_COUNT_CAP as usize + 1).len().saturating_sub(1) as u32;
    let too_late = deadline.is_some_and(|d| now - latest > d);
    Due { scheduled: Some(latest), too_late, missed_before: missed_before.min(MISSED_COUNT_CAP), next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sched(e: &str, tz: Option<&str>) -> CronSchedule {
        CronSchedule::parse(e, tz).unwrap()
    }

    #[test]
    fn parses_five_fields_and_macros_and_rejects_the_rest() {
        for ok in [
            "*/5 * * * *",
            "0 2 * * SUN",
            "0 9-17/2 * * MON-FRI",
            "@hourly",
            "@daily",
            "@weekly",
            "@midnight",
            "@yearly",
        ] {
            CronSchedule::parse(ok, None).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, msg) in [
            ("* * * *", "five fields"),
            ("0 0 * * * *", "five fields"),
            ("61 * * * *", "invalid"),
            ("0 0 31 2 *", "never matches"),
            ("@often", "invalid"),
        ] {
            let e = CronSchedule::parse(bad, None).unwrap_err();
            assert!(e.contains(msg), "{bad}: {e}");
        }
        let e = CronSchedule::parse("@daily", Some("Mars/Olympus")).unwrap_err();
        assert!(e.contains("IANA"), "{e}");
    }

    #[test]
    fn next_and_latest_in_utc() {
        let s = sched("0 */4 * * *", None);
        assert_eq!(s.next_after(t("2026-11-26T07:15:00Z")), Some(t("2026-11-26T08:00:00Z")));
        assert_eq!(s.next_after(t("2026-11-26T08:00:00Z")), Some(t("2026-11-26T12:00:00Z")), "strictly after");
        assert_eq!(s.latest_at_or_before(t("2026-11-26T08:00:00Z")), Some(t("2026-11-26T08:00:00Z")), "inclusive");
        assert_eq!(s.latest_at_or_before(t("2026-11-26T07:59:59Z")), Some(t("2026-11-26T04:00:00Z")));
        let w = sched("0 2 * * 0", None); // Sunday 02:00
        assert_eq!(w.next_after(t("2026-11-26T00:00:00Z")), Some(t("2026-11-29T02:00:00Z")));
        // Working hours: every 2 hours 08-18, Monday to Friday.
        let d = sched("0 8-18/2 * * 1-5", None);
        assert_eq!(
            d.next_after(t("2026-11-27T18:30:00Z")),
            Some(t("2026-11-30T08:00:00Z")),
            "Friday evening -> Monday"
        );
    }

    #[test]
    fn both_day_fields_match_either() {
        // The 1st of the month or any Monday (Vixie cron, Kubernetes CronJob).
        let s = sched("0 0 1 * 1", None);
        assert_eq!(s.next_after(t("2026-11-26T00:00:00Z")), Some(t("2026-11-30T00:00:00Z")), "Monday the 30th");
        assert_eq!(s.next_after(t("2026-11-30T00:00:00Z")), Some(t("2026-12-01T00:00:00Z")), "the 1st, a Tuesday");
    }

    #[test]
    fn time_zones_keep_local_wall_clock_time() {
        let s = sched("0 3 * * *", Some("Europe/Berlin"));
        // Winter: 03:00 CET = 02:00 UTC; summer: 03:00 CEST = 01:00 UTC.
        assert_eq!(s.next_after(t("2026-01-10T00:00:00Z")), Some(t("2026-01-10T02:00:00Z")));
        assert_eq!(s.next_after(t("2026-07-10T00:00:00Z")), Some(t("2026-07-10T01:00:00Z")));
    }

    #[test]
    fn spring_forward_runs_a_missing_time_once_after_the_gap() {
        // 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let s = sched("30 2 * * *", Some("Europe/Berlin"));
        let runs = s.between(t("2026-03-27T12:00:00Z"), t("2026-03-31T12:00:00Z"), 10);
        assert_eq!(
            runs,
            [
                t("2026-03-28T01:30:00Z"), // 02:30 CET
                t("2026-03-29T01:00:00Z"), // the gap: at 03:00 CEST, once
                t("2026-03-30T00:30:00Z"), // 02:30 CEST
                t("2026-03-31T00:30:00Z"),
            ]
        );
        // New York, 2026-03-08 02:00 EST -> 03:00 EDT.
        let s = sched("15 2 * * *", Some("America/New_York"));
        let runs = s.between(t("2026-03-07T12:00:00Z"), t("2026-03-09T12:00:00Z"), 10);
        assert_eq!(runs, [t("2026-03-08T07:00:00Z"), t("2026-03-09T06:15:00Z")]);
    }

    #[test]
    fn fall_back_runs_a_repeated_time_once() {
        // 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
        let s = sched("30 2 * * *", Some("Europe/Berlin"));
        let runs = s.between(t("2026-10-24T12:00:00Z"), t("2026-10-26T12:00:00Z"), 10);
        assert_eq!(runs, [t("2026-10-25T00:30:00Z"), t("2026-10-26T01:30:00Z")]);
    }

    #[test]
    fn interval_schedules_follow_real_time_across_changes() {
        // Hourly in Berlin on the fall-back night: 25 runs in the local day, one per real hour.
        let s = sched("0 * * * *", Some("Europe/Berlin"));
        let runs = s.between(t("2026-10-24T22:00:00Z"), t("2026-10-25T23:00:00Z"), 100);
        assert_eq!(runs.len(), 25);
        assert!(runs.windows(2).all(|w| w[1] - w[0] == chrono::Duration::hours(1)));
        // And 23 on the spring-forward day.
        let runs = s.between(t("2026-03-28T23:00:00Z"), t("2026-03-29T22:00:00Z"), 100);
        assert_eq!(runs.len(), 23);
    }

    #[test]
    fn due_runs_the_latest_missed_time_once_and_counts_the_others() {
        let s = sched("*/10 * * * *", None);
        let created = t("2026-11-26T06:55:00Z");
        // Nothing due before the first boundary.
        let d = due(&s, created, t("2026-11-26T06:59:59Z"), None);
        assert_eq!((d.scheduled, d.next), (None, Some(t("2026-11-26T07:00:00Z"))));
        // On the boundary: due, on time.
        let d = due(&s, created, t("2026-11-26T07:00:00Z"), None);
        assert_eq!(d.scheduled, Some(t("2026-11-26T07:00:00Z")));
        assert!(!d.too_late);
        assert_eq!(d.next, Some(t("2026-11-26T07:10:00Z")));
        // Once handled, not due again until the next boundary.
        let d = due(&s, t("2026-11-26T07:00:00Z"), t("2026-11-26T07:09:00Z"), None);
        assert_eq!(d.scheduled, None);
        // The operator was down from 07:00 to 07:35: one run for 07:30; 07:10 and 07:20 missed.
        let d = due(&s, t("2026-11-26T07:00:00Z"), t("2026-11-26T07:35:00Z"), None);
        assert_eq!((d.scheduled, d.missed_before), (Some(t("2026-11-26T07:30:00Z")), 2));
        assert!(!d.too_late);
    }

    #[test]
    fn the_starting_deadline_turns_a_late_run_into_a_skip() {
        let s = sched("0 * * * *", None);
        let handled = t("2026-11-26T05:00:00Z");
        let dl = Some(chrono::Duration::seconds(300));
        // 4 minutes late: runs.
        let d = due(&s, handled, t("2026-11-26T06:04:00Z"), dl);
        assert_eq!((d.scheduled, d.too_late), (Some(t("2026-11-26T06:00:00Z")), false));
        // 6 minutes late: skipped, never a run.
        let d = due(&s, handled, t("2026-11-26T06:06:00Z"), dl);
        assert_eq!((d.scheduled, d.too_late), (Some(t("2026-11-26T06:00:00Z")), true));
        // Without a deadline the latest one runs however late.
        let d = due(&s, handled, t("2026-11-26T09:59:00Z"), None);
        assert_eq!((d.scheduled, d.too_late, d.missed_before), (Some(t("2026-11-26T09:00:00Z")), false, 3));
    }

    #[test]
    fn a_long_outage_is_counted_up_to_a_cap() {
        let s = sched("* * * * *", None);
        let d = due(&s, t("2026-01-01T00:00:00Z"), t("2026-11-26T00:00:00Z"), None);
        assert_eq!(d.missed_before, MISSED_COUNT_CAP);
        assert_eq!(d.scheduled, Some(t("2026-11-26T00:00:00Z")));
    }
}
