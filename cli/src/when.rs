//! Moments on the command line: RFC 3339, `now`, or a span ago (`90s`, `10m`, `2h`, `1d`,
//! `1h30m`).

use chrono::{DateTime, Duration, Utc};
use phoenix_core::model::Timestamp;

pub fn parse(text: &str) -> Result<Timestamp, String> {
    parse_at(text, Utc::now())
}

pub fn parse_at(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let t = text.trim();
    if t == "now" {
        return Ok(now);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    ago(t)
        .map(|d| now - d)
        .ok_or_else(|| {
            format!("{text:?} is neither an RFC 3339 time (2025-03-01T12:00:00Z) nor a span ago like 10m, 2h or 1h30m")
        })
}

/// `1h30m` → 90 minutes. Units: s, m, h, d.
fn ago(t: &str) -> Option<Duration> {
    let mut total = Duration::zero();
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        total += match c {
            's' => Duration::try_seconds(n)?,
            'm' => Duration::try_minutes(n)?,
            'h' => Duration::try_hours(n)?,
            'd' => Duration::try_days(n)?,
            _ => return None,
        };
    }
    (digits.is_empty() && !t.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_and_spans_ago() {
        let now = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap();
        assert_eq!(parse_at("now", now).unwrap(), now);
        assert_eq!(parse_at("10m", now).unwrap(), now - Duration::minutes(10));
        assert_eq!(parse_at("1h30m", now).unwrap(), now - Duration::minutes(90));
        assert_eq!(
            parse_at("2025-03-01T11:00:00+01:00", now).unwrap(),
            Utc.with_ymd_and_hms(2025, 3, 1, 10, 0, 0).unwrap()
        );
        for bad in ["", "10", "m", "10x", "yesterday"] {
            assert!(parse_at(bad, now).is_err(), "{bad}");
        }
    }
}
