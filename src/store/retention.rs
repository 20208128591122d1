//! Which snapshots a retention policy keeps: a pure function with restic's `forget` semantics.
//!
//! Within one group (snapshots of one source, and of one mode when rules are per mode), newest
//! first:
//! - `last n` keeps the n newest;
//! - `hourly/daily/weekly/monthly/yearly n` keep the newest snapshot of each of the n most
//!   recent hours/days/ISO weeks/months/years that have a snapshot (periods without one do not
//!   count); when fewer periods exist than n, the oldest snapshot is kept too, so the history
//!   is as long as the counts allow;
//! - `within d` keeps every snapshot newer than the group's newest snapshot minus d (relative
//!   to the newest snapshot, not to now, so a store that stopped receiving pushes is not
//!   emptied).
//!
//! A snapshot is kept when any rule keeps it; an empty policy keeps everything (callers refuse
//! it before asking).

use chrono::{DateTime, Datelike, Months, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use std::fmt;

/// A `within` duration: years, months, days and hours, applied as calendar arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Within {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl Within {
    /// Parses `7d`, `36h`, `1y6m`, `2w` (a week is 7 days).
    pub fn parse(s: &str) -> Result<Within, String> {
        let mut w = Within::default();
        let mut num = String::new();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        for c in s.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u32 = num
                .parse()
                .map_err(|_| format!("invalid duration {s:?}: a number must come before {c:?} (e.g. 7d, 36h, 1y6m)"))?;
            num.clear();
            match c {
                'y' => w.years += n,
                'm' => w.months += n,
                'w' => w.days += 7 * n,
                'd' => w.days += n,
                'h' => w.hours += n,
                _ => return Err(format!("invalid duration {s:?}: unit {c:?} is not one of y m w d h")),
            }
        }
        if !num.is_empty() {
            return Err(format!("invalid duration {s:?}: {num} has no unit (y m w d h)"));
        }
        Ok(w)
    }

    /// `t` minus this duration.
    pub fn before(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let months = self.years * 12 + self.months;
        let t = t.checked_sub_months(Months::new(months)).unwrap_or(DateTime::<Utc>::MIN_UTC);
        t - chrono::Duration::days(self.days as i64) - chrono::Duration::hours(self.hours as i64)
    }
}

impl fmt::Display for Within {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, u) in [(self.years, 'y'), (self.months, 'm'), (self.days, 'd'), (self.hours, 'h')] {
            if n > 0 {
                write!(f, "{n}{u}")?;
            }
        }
        Ok(())
    }
}

/// Retention rules; `None` turns a rule off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepPolicy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    pub within: Option<Within>,
}

impl KeepPolicy {
    /// True when no rule keeps anything (such a policy would forget every snapshot).
    pub fn is_empty(&self) -> bool {
        [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly].iter().all(|r| r.unwrap_or(0) == 0)
            && self.within.is_none_or(|w| w == Within::default())
    }
}

impl fmt::Display for KeepPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (name, v) in [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ] {
            if let Some(n) = v.filter(|n| *n > 0) {
                parts.push(format!("{name} {n}"));
            }
        }
        if let Some(w) = self.within {
            parts.push(format!("within {w}"));
        }
        if parts.is_empty() { write!(f, "(no rules)") } else { write!(f, "{}", parts.join(", ")) }
    }
}

/// The decision for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub keep: bool,
    /// Which rules keep it ("last", "daily", "within 7d", "oldest daily", ...).
    pub reasons: Vec<String>,
}

#[derive(Clone, Copy)]
enum Period {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

fn bucket(period: Period, t: DateTime<Tz>, nr: usize) -> i64 {
    match period {
        Period::Last => nr as i64,
        Period::Hourly => {
            (t.year() as i64) * 1_000_000 + (t.month() as i64) * 10_000 + (t.day() as i64) * 100 + t.hour() as i64
        }
        Period::Daily => (t.year() as i64) * 10_000 + (t.month() as i64) * 100 + t.day() as i64,
        Period::Weekly => {
            let w = t.iso_week();
            (w.year() as i64) * 100 + w.week() as i64
        }
        Period::Monthly => (t.year() as i64) * 100 + t.month() as i64,
        Period::Yearly => t.year() as i64,
    }
}

/// Decides for each snapshot of one group. `times` may be in any order; the result is in the
/// same order. Calendar periods are taken in `tz`.
pub fn select(times: &[DateTime<Utc>], policy: &KeepPolicy, tz: Tz) -> Vec<Decision> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    // Newest first; ties keep input order.
    order.sort_by(|a, b| times[*b].cmp(&times[*a]).then(a.cmp(b)));
    let mut out = vec![Decision { keep: false, reasons: vec![] }; times.len()];
    if order.is_empty() {
        return out;
    }
    let newest = times[order[0]];
    let within_from = policy.within.map(|w| w.before(newest));
    let mut buckets: Vec<(Period, &str, u32, Option<i64>)> = [
        (Period::Last, "last", policy.last),
        (Period::Hourly, "hourly", policy.hourly),
        (Period::Daily, "daily", policy.daily),
        (Period::Weekly, "weekly", policy.weekly),
        (Period::Monthly, "monthly", policy.monthly),
        (Period::Yearly, "yearly", policy.yearly),
    ]
    .into_iter()
    .filter_map(|(p, name, n)| n.filter(|n| *n > 0).map(|n| (p, name, n, None)))
    .collect();
    let last_nr = order.len() - 1;
    for (nr, &i) in order.iter().enumerate() {
        let t = tz.from_utc_datetime(&times[i].naive_utc());
        let d = &mut out[i];
        if let (Some(from), Some(w)) = (within_from, policy.within)
            && times[i] > from
        {
            d.keep = true;
            d.reasons.push(format!("within {w}"));
        }
        for (period, name, count, last) in buckets.iter_mut() {
            if *count == 0 {
                continue;
            }
            let val = bucket(*period, t, nr);
            if *last != Some(val) || nr == last_nr {
                d.keep = true;
                d.reasons.push(if *last == Some(val) { format!("oldest {name}") } else { name.to_string() });
                *last = Some(val);
                *count -= 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// restic's test fixture (internal/restic/testdata, a selection): one snapshot list spread
    /// over two years, several per day at times.
    fn fixture() -> Vec<DateTime<Utc>> {
        [
            "2016-01-01T07:08:03Z",
            "2015-11-22T10:20:30Z",
            "2015-11-21T10:20:30Z",
            "2015-11-20T10:20:30Z",
            "2015-11-18T10:20:30Z",
            "2015-11-15T10:20:30Z",
            "2015-11-13T10:20:30Z",
            "2015-11-12T10:20:30Z",
            "2015-11-10T10:20:30Z",
            "2015-11-08T10:20:30Z",
            "2015-10-22T10:20:30Z",
            "2015-10-22T10:20:30Z",
            "2015-10-22T10:20:30Z",
            "2015-10-20T10:20:30Z",
            "2015-10-11T10:20:30Z",
            "2015-10-10T10:20:30Z",
            "2015-10-09T10:20:30Z",
            "2015-10-08T10:20:30Z",
            "2015-10-06T10:20:30Z",
            "2015-10-05T10:20:30Z",
            "2015-10-02T10:20:30Z",
            "2015-10-01T10:20:30Z",
            "2015-09-22T10:20:30Z",
            "2015-09-20T10:20:30Z",
            "2015-09-11T10:20:30Z",
            "2015-09-10T10:20:30Z",
            "2015-09-09T10:20:30Z",
            "2015-09-08T10:20:30Z",
            "2015-09-06T10:20:30Z",
            "2015-09-05T10:20:30Z",
            "2015-09-02T10:20:30Z",
            "2015-09-01T10:20:30Z",
            "2015-08-22T10:20:30Z",
            "2015-08-21T10:20:30Z",
            "2015-08-20T10:20:30Z",
            "2015-08-18T10:20:30Z",
            "2015-08-15T10:20:30Z",
            "2015-08-13T10:20:30Z",
            "2015-08-12T10:20:30Z",
            "2015-08-10T10:20:30Z",
            "2015-08-08T10:20:30Z",
            "2014-11-22T10:20:30Z",
            "2014-10-22T10:20:30Z",
            "2014-09-22T10:20:30Z",
            "2014-08-22T10:20:30Z",
        ]
        .iter()
        .map(|s| t(s))
        .collect()
    }

    fn kept(times: &[DateTime<Utc>], p: &KeepPolicy) -> Vec<String> {
        let d = select(times, p, Tz::UTC);
        let mut v: Vec<(DateTime<Utc>, usize)> =
            times.iter().enumerate().filter(|(i, _)| d[*i].keep).map(|(i, t)| (*t, i)).collect();
        v.sort_by(|a, b| b.cmp(a));
        v.into_iter().map(|(t, _)| t.format("%Y-%m-%d").to_string()).collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let p = KeepPolicy { last: Some(3), ..Default::default() };
        assert_eq!(kept(&fixture(), &p), ["2016-01-01", "2015-11-22", "2015-11-21"]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_with_a_snapshot() {
        // Three snapshots on 2015-10-22: only one counts for that day.
        let p = KeepPolicy { daily: Some(8), ..Default::default() };
        assert_eq!(
            kept(&fixture(), &p),
            [
                "2016-01-01",
                "2015-11-22",
                "2015-11-21",
                "2015-11-20",
                "2015-11-18",
                "2015-11-15",
                "2015-11-13",
                "2015-11-12"
            ]
        );
        let p = KeepPolicy { daily: Some(13), ..Default::default() };
        let k = kept(&fixture(), &p);
        assert_eq!(k.len(), 13);
        assert_eq!(k.iter().filter(|d| *d == "2015-10-22").count(), 1);
        assert_eq!(k.last().unwrap(), "2015-10-11");
    }

    #[test]
    fn weekly_uses_iso_weeks() {
        // 2015-11-22 is a Sunday (ISO week 47), 2015-11-21/20/18 are in week 47 too.
        let p = KeepPolicy { weekly: Some(4), ..Default::default() };
        assert_eq!(kept(&fixture(), &p), ["2016-01-01", "2015-11-22", "2015-11-15", "2015-11-08"]);
    }

    #[test]
    fn monthly_and_yearly() {
        let p = KeepPolicy { monthly: Some(6), ..Default::default() };
        assert_eq!(
            kept(&fixture(), &p),
            ["2016-01-01", "2015-11-22", "2015-10-22", "2015-09-22", "2015-08-22", "2014-11-22"]
        );
        let p = KeepPolicy { yearly: Some(10), ..Default::default() };
        // Three years exist (fewer than ten): the oldest snapshot is kept as well.
        assert_eq!(kept(&fixture(), &p), ["2016-01-01", "2015-11-22", "2014-11-22", "2014-08-22"]);
    }

    #[test]
    fn rules_combine_as_a_union() {
        let p = KeepPolicy { last: Some(2), monthly: Some(3), ..Default::default() };
        assert_eq!(kept(&fixture(), &p), ["2016-01-01", "2015-11-22", "2015-10-22"]);
        let d = select(&fixture(), &p, Tz::UTC);
        assert_eq!(d[0].reasons, ["last", "monthly"]);
        assert_eq!(d[1].reasons, ["last", "monthly"]);
    }

    #[test]
    fn within_is_relative_to_the_newest_snapshot() {
        let p = KeepPolicy { within: Some(Within::parse("1m2d").unwrap()), ..Default::default() };
        // Newest 2016-01-01T07:08:03 minus 1 month 2 days = 2015-11-29T07:08:03.
        assert_eq!(kept(&fixture(), &p), ["2016-01-01"]);
        let p = KeepPolicy { within: Some(Within::parse("1m12d").unwrap()), ..Default::default() };
        assert_eq!(kept(&fixture(), &p), ["2016-01-01", "2015-11-22", "2015-11-21", "2015-11-20"]);
        assert_eq!(select(&fixture(), &p, Tz::UTC)[0].reasons, ["within 1m12d"]);
    }

    #[test]
    fn the_oldest_is_kept_while_counts_remain() {
        let times = [t("2026-01-03T10:00:00Z"), t("2026-01-02T10:00:00Z"), t("2026-01-02T09:00:00Z")];
        let d = select(&times, &KeepPolicy { daily: Some(7), ..Default::default() }, Tz::UTC);
        assert!(d.iter().all(|d| d.keep));
        assert_eq!(d[2].reasons, ["oldest daily"]);
        // With no count left, the oldest is not kept.
        let d = select(&times, &KeepPolicy { daily: Some(2), ..Default::default() }, Tz::UTC);
        assert_eq!(d.iter().map(|d| d.keep).collect::<Vec<_>>(), [true, true, false]);
    }

    #[test]
    fn days_are_taken_in_the_given_time_zone() {
        // 23:30 UTC on the 1st is the 2nd in Tokyo; 00:30 UTC on the 2nd is the 2nd in both.
        let times = [t("2026-03-02T00:30:00Z"), t("2026-03-01T23:30:00Z")];
        let p = KeepPolicy { daily: Some(1), ..Default::default() };
        let utc = select(&times, &KeepPolicy { daily: Some(5), ..p }, Tz::UTC);
        assert!(utc[0].keep && utc[1].keep);
        let tokyo = select(&times, &KeepPolicy { daily: Some(5), ..p }, Tz::Asia__Tokyo);
        // Same day in Tokyo: only the newest counts, the other is kept as the oldest.
        assert_eq!(tokyo[1].reasons, ["oldest daily"]);
        let tokyo = select(&[times[0], times[1], t("2026-03-01T10:00:00Z")], &p, Tz::Asia__Tokyo);
        assert_eq!(tokyo.iter().map(|d| d.keep).collect::<Vec<_>>(), [true, false, false]);
    }

    #[test]
    fn empty_policies_and_durations() {
        assert!(KeepPolicy::default().is_empty());
        assert!(KeepPolicy { last: Some(0), ..Default::default() }.is_empty());
        assert!(!KeepPolicy { hourly: Some(1), ..Default::default() }.is_empty());
        assert_eq!(Within::parse("1y6m2w3d4h").unwrap(), Within { years: 1, months: 6, days: 17, hours: 4 });
        assert!(Within::parse("7").unwrap_err().contains("no unit"));
        assert!(Within::parse("7s").unwrap_err().contains("not one of"));
        assert!(Within::parse("d").unwrap_err().contains("number"));
        assert!(select(&[], &KeepPolicy { last: Some(1), ..Default::default() }, Tz::UTC).is_empty());
    }
}
