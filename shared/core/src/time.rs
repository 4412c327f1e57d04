//! Time as phoenix's records hold it: instants (`Timestamp`, always UTC) and durations in whole
//! seconds (`Seconds`, written in fleet files as `90`, `"90s"`, `"5m"` or `"1h30m"`).
//!
//! The core never reads a clock: every `Timestamp` here was handed in by a caller (an event's
//! time, the invocation's `now`), which is what keeps the planner a function of its inputs.

use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub type Timestamp = DateTime<Utc>;

/// A duration in whole seconds, written `90`, `"90s"`, `"5m"`, `"2h"` or `"1h30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Seconds(pub u64);

impl Seconds {
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
    pub fn duration(self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.0).unwrap_or(i64::MAX / 1000))
    }
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Seconds(n));
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in t.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => {
                    return Err(Error::invalid(
                        "duration",
                        format!("{text:?} is not a duration like \"90s\", \"5m\" or \"1h30m\""),
                    ))
                }
            };
            let n: u64 = digits.parse().map_err(|_| {
                Error::invalid(
                    "duration",
                    format!("{text:?} is not a duration like \"5m\""),
                )
            })?;
            total = total.saturating_add(n.saturating_mul(unit));
            digits.clear();
        }
        if !digits.is_empty() || t.is_empty() {
            return Err(Error::invalid(
                "duration",
                format!("{text:?} is not a duration like \"90s\", \"5m\" or \"1h30m\""),
            ));
        }
        Ok(Seconds(total))
    }
}

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 >= 86_400 && self.0.is_multiple_of(86_400) {
            return write!(f, "{}d", self.0 / 86_400);
        }
        let (h, m, s) = (self.0 / 3600, self.0 % 3600 / 60, self.0 % 60);
        match (h, m, s) {
            (0, 0, s) => write!(f, "{s}s"),
            (0, m, 0) => write!(f, "{m}m"),
            (0, m, s) => write!(f, "{m}m{s}s"),
            (h, 0, 0) => write!(f, "{h}h"),
            (h, m, 0) => write!(f, "{h}h{m}m"),
            (h, m, s) => write!(f, "{h}h{m}m{s}s"),
        }
    }
}

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Seconds(n)),
            Raw::Text(t) => Seconds::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}
