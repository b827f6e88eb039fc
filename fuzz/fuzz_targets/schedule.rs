//! Cron expressions, durations and sizes from pipeline files: parsed or refused, and
//! a parsed schedule's next ticks are computed without a panic or an endless loop.
#![no_main]

use chrono::{TimeZone, Utc};
use weir_engine::config::units::parse_duration;
use weir_engine::trigger::cron::schedule::Schedule;

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let _ = parse_duration(&text);
    for zone in [chrono_tz::Tz::UTC, chrono_tz::Tz::Europe__Berlin, chrono_tz::Tz::America__Sao_Paulo] {
        if let Ok(schedule) = Schedule::cron(&text, zone) {
            let start = Utc.with_ymd_and_hms(2026, 3, 29, 0, 30, 0).unwrap();
            let until = start + chrono::Duration::days(3);
            for _ in schedule.ticks(start, until).take(50) {}
        }
    }
});
