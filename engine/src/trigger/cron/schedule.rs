//! When a schedule fires: cron expressions in a time zone (croner, DST-aware), or a
//! fixed interval.
//!
//! Everything here is in real (UTC) time; the zone only decides which wall-clock
//! times match. DST follows Vixie cron, as croner implements it: a fixed-time job in
//! the skipped hour runs right after the jump (once), a fixed-time job in the repeated
//! hour runs once (the first time), and interval jobs (`0 * * * *`) run for every real
//! hour — 23 on the spring-forward day, 25 on the fall-back day.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron {
        cron: Box<Cron>,
        zone: Tz,
        text: String,
    },
    /// Every `period`, aligned to the Unix epoch, so restarts keep the same ticks.
    Every {
        period: Duration,
        text: String,
    },
}

impl Schedule {
    /// Parses a 5-field (or 6-field, with seconds first) cron expression or a macro
    /// (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`).
    pub fn cron(text: &str, zone: Tz) -> Result<Self, String> {
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let cron = parser.parse(text).map_err(|e| format!("invalid cron schedule {text:?}: {e}"))?;
        Ok(Schedule::Cron { cron: Box::new(cron), zone, text: text.to_string() })
    }

    pub fn every(period: Duration, text: &str) -> Result<Self, String> {
        if period < Duration::from_secs(1) {
            return Err(format!("every = {text:?}: the shortest interval is 1s"));
        }
        Ok(Schedule::Every { period, text: text.to_string() })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, zone, .. } => {
                let local = zone.from_utc_datetime(&after.naive_utc());
                cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
            }
            Schedule::Every { period, .. } => {
                let period_ms = i64::try_from(period.as_millis()).ok()?.max(1);
                let ms = after.timestamp_millis();
                let next = (ms.div_euclid(period_ms) + 1).checked_mul(period_ms)?;
                DateTime::from_timestamp_millis(next)
            }
        }
    }

    /// The ticks in `(after, until]`, oldest first.
    pub fn ticks(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.next_after(after), move |t| self.next_after(*t)).take_while(move |t| *t <= until)
    }

    /// As written, for logs and events.
    pub fn text(&self) -> &str {
        match self {
            Schedule::Cron { text, .. } | Schedule::Every { text, .. } => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn ticks(schedule: &Schedule, from: &str, to: &str) -> Vec<String> {
        schedule.ticks(utc(from), utc(to)).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).collect()
    }

    #[test]
    fn fixed_time_jobs_run_once_on_both_dst_days_in_berlin() {
        let daily = Schedule::cron("30 2 * * *", chrono_tz::Europe::Berlin).unwrap();
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist → runs at 03:00 CEST.
        assert_eq!(
            ticks(&daily, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z"),
            ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice → runs once.
        assert_eq!(
            ticks(&daily, "2026-10-23T12:00:00Z", "2026-10-26T12:00:00Z"),
            ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
    }

    #[test]
    fn fixed_time_jobs_run_once_on_both_dst_days_in_new_york() {
        let daily = Schedule::cron("30 2 * * *", chrono_tz::America::New_York).unwrap();
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        assert_eq!(
            ticks(&daily, "2026-03-07T12:00:00Z", "2026-03-09T12:00:00Z"),
            ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let early = Schedule::cron("30 1 * * *", chrono_tz::America::New_York).unwrap();
        assert_eq!(
            ticks(&early, "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z"),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn hourly_jobs_follow_real_hours_across_dst() {
        let hourly = Schedule::cron("@hourly", chrono_tz::Europe::Berlin).unwrap();
        // Local midnight to midnight: 23 real hours in spring, 25 in autumn.
        assert_eq!(ticks(&hourly, "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z").len(), 23);
        assert_eq!(ticks(&hourly, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z").len(), 25);
    }

    #[test]
    fn seconds_field_macros_and_intervals() {
        let every_ten_seconds = Schedule::cron("*/10 * * * * *", Tz::UTC).unwrap();
        assert_eq!(ticks(&every_ten_seconds, "2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z").len(), 3);
        let weekly = Schedule::cron("@weekly", Tz::UTC).unwrap();
        assert_eq!(ticks(&weekly, "2026-01-01T00:00:00Z", "2026-01-31T00:00:00Z").len(), 4);
        let quarter = Schedule::every(Duration::from_secs(900), "15m").unwrap();
        assert_eq!(
            ticks(&quarter, "2026-01-01T00:07:00Z", "2026-01-01T00:45:00Z"),
            ["2026-01-01T00:15:00Z", "2026-01-01T00:30:00Z", "2026-01-01T00:45:00Z"]
        );
    }

    #[test]
    fn bad_expressions_are_refused_with_the_text() {
        for bad in ["61 * * * *", "* * *", "@fortnightly", "0 0 30 2 * * 2026", "a b c d e"] {
            let error = Schedule::cron(bad, Tz::UTC).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        assert!(Schedule::every(Duration::from_millis(10), "10ms").is_err());
    }
}
