//! A count or a percentage of the fleet's capacity, as in `max_surge: 2` or `max_surge: "25%"`,
//! and the bounds of a capacity itself (`validate_capacity`): 0 to `MAX_CAPACITY`, whether it
//! comes from a fleet file or from a `ScaleRequested` event.
//!
//! What holds: a percentage resolves against the capacity rounding the safe way for its use
//! (`Rounding`): up for a surge, down for what may be unavailable.

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The largest capacity a fleet may ask for. A guard against typos (`capacity: 40000` for 40),
/// not a limit of the design.
pub const MAX_CAPACITY: u32 = 10_000;

/// A capacity as asked for, read wide (an `i64`) so that `-1` and `1e9` get their own message
/// rather than a parser's "expected u32".
pub fn validate_capacity(v: i64) -> Result<u32> {
    if v < 0 {
        return Err(Error::invalid("capacity", format!("{v} is negative")));
    }
    if v > i64::from(MAX_CAPACITY) {
        return Err(Error::invalid(
            "capacity",
            format!("{v} is more than the maximum of {MAX_CAPACITY}"),
        ));
    }
    Ok(v as u32)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    Count(u32),
    Percent(u32),
}

/// Which way a percentage rounds: surge rounds up (so 25 % of 3 is 1, not 0) and unavailability
/// rounds down (so the fleet never dips lower than asked). Kubernetes Deployments round the same way.
#[derive(Debug, Clone, Copy)]
pub enum Rounding {
    Up,
    Down,
}

impl Quantity {
    pub fn resolve(self, capacity: u32, rounding: Rounding) -> u32 {
        match self {
            Quantity::Count(n) => n,
            Quantity::Percent(p) => {
                let scaled = u64::from(capacity) * u64::from(p);
                let v = match rounding {
                    Rounding::Up => scaled.div_ceil(100),
                    Rounding::Down => scaled / 100,
                };
                u32::try_from(v).unwrap_or(u32::MAX)
            }
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p
                .trim()
                .parse()
                .map_err(|_| Error::invalid("quantity", format!("{s:?} is not a percentage")))?;
            if p > 100 {
                return Err(Error::invalid(
                    "quantity",
                    format!("{s:?} is more than 100%"),
                ));
            }
            Ok(Quantity::Percent(p))
        } else {
            s.parse().map(Quantity::Count).map_err(|_| {
                Error::invalid(
                    "quantity",
                    format!("{s:?} is neither a count nor a percentage like \"25%\""),
                )
            })
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantity::Count(n) => write!(f, "{n}"),
            Quantity::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Quantity::Count(n) => s.serialize_u32(*n),
            Quantity::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => u32::try_from(n).map(Quantity::Count).map_err(|_| {
                serde::de::Error::custom(format!("{n} is not a count (must be 0 or more)"))
            }),
            Raw::Text(t) => Quantity::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_the_safe_way() {
        assert_eq!(Quantity::Percent(25).resolve(3, Rounding::Up), 1);
        assert_eq!(Quantity::Percent(25).resolve(3, Rounding::Down), 0);
        assert_eq!(Quantity::Percent(50).resolve(8, Rounding::Down), 4);
        assert_eq!(Quantity::Count(2).resolve(100, Rounding::Up), 2);
    }

    #[test]
    fn parses_counts_and_percentages_from_json() {
        let q: Quantity = serde_json::from_str("2").unwrap();
        assert_eq!(q, Quantity::Count(2));
        let q: Quantity = serde_json::from_str("\"25%\"").unwrap();
        assert_eq!(q, Quantity::Percent(25));
        assert!(serde_json::from_str::<Quantity>("-1").is_err());
        assert!(serde_json::from_str::<Quantity>("\"150%\"").is_err());
        assert!(serde_json::from_str::<Quantity>("\"lots\"").is_err());
        assert_eq!(
            serde_json::to_string(&Quantity::Percent(25)).unwrap(),
            "\"25%\""
        );
    }
}
