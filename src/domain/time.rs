//! Time as fanout reads and writes it: milliseconds since the epoch, RFC 3339 in UTC, and
//! short durations for people.

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `ms` as RFC 3339 in UTC with milliseconds (`2026-12-06T19:00:00.123Z`): what state items,
/// reports and JSON output carry. The epoch for a time chrono cannot represent.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `ms` as RFC 3339 in UTC to the second (`2026-12-06T19:00:00Z`): what status screens and
/// history lines show.
pub fn rfc3339_secs(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Seconds as `42s`, `3m05s` or `2h10m` (progress lines, ETAs).
pub fn human_secs(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// An age in milliseconds as `12 s`, `3 min` or `2 h` (how long ago, on status screens).
pub fn ago(ms: i64) -> String {
    match ms / 1000 {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_read_as_documented() {
        assert_eq!(rfc3339_ms(1_796_587_190_559), "2026-12-06T19:59:50.559Z");
        assert_eq!(rfc3339_secs(1_796_587_190_559), "2026-12-06T19:59:50Z");
        assert_eq!(human_secs(42.4), "42s");
        assert_eq!(human_secs(185.0), "3m05s");
        assert_eq!(human_secs(7800.0), "2h10m");
        assert_eq!(ago(12_000), "12 s");
        assert_eq!(ago(180_000), "3 min");
        assert_eq!(ago(7_200_000), "2 h");
        assert!((now_ms() - chrono::Utc::now().timestamp_millis()).abs() < 1000);
    }
}
