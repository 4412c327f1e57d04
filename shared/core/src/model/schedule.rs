//! When voluntary disruption is allowed: a rollout policy's windows (recurring, in a time zone)
//! and freezes (fixed spans), and `disruption_at`, which says of an instant whether it is open,
//! why not, and until when.
//!
//! What holds:
//! - Open means inside a window (or there are no windows) and outside every freeze. A freeze wins
//!   over any window.
//! - A window opens on each of its days at `start`, local time in its zone, and lasts `duration` of
//!   real time, so it may cross midnight (and, up to 7 days long, several). Windows that overlap or
//!   touch form one open span.
//! - A start time that does not exist that day (clocks jump forward over it) begins at the first
//!   instant after the jump; one that happens twice (clocks go back) begins at the earlier.
//! - Fields are kept as written (day names, `HH:MM`, the zone's name), so a fleet file reads back
//!   as it was and a stored spec always loads; `FleetSpec::validate` rejects what does not parse.
//!   A window that would not pass it is never open.
//! - Nothing is looked for further than `HORIZON_DAYS` ahead: an opening or a closing beyond that
//!   is reported as none.

use crate::error::{Error, Result};
use crate::time::{Seconds, Timestamp};
use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How far ahead of the instant asked about `disruption_at` looks, in days.
pub const HORIZON_DAYS: i64 = 400;

/// A recurring span of time inside which voluntary disruption may happen, e.g.
/// `{days: [mon-thu], start: "09:00", duration: 8h, timezone: Europe/Berlin}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// The days it opens on, as written: `mon` .. `sun` (or `monday` .. `sunday`), ranges like
    /// `mon-fri` (`fri-mon` goes over the weekend), `weekdays`, `weekend` or `daily`. One name or a
    /// list.
    #[serde(deserialize_with = "one_or_many")]
    pub days: Vec<String>,
    /// The local time it opens at, `HH:MM` (00:00-23:59).
    pub start: String,
    /// How long it stays open, in elapsed time: more than 0s, at most 7 days.
    pub duration: Seconds,
    /// The IANA time zone of `days` and `start`, like `Europe/Berlin`. Default `UTC`.
    #[serde(default = "utc", skip_serializing_if = "is_utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

fn is_utc(zone: &str) -> bool {
    zone == "UTC"
}

/// `days: weekdays` as well as `days: [mon, wed]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let raw = Raw::deserialize(d).map_err(|_: D::Error| {
        serde::de::Error::custom("expected a day or a list of days, like [mon-fri]")
    })?;
    Ok(match raw {
        Raw::One(day) => vec![day],
        Raw::Many(days) => days,
    })
}

/// A span of time, `from` up to (not including) `until`, without voluntary disruption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    /// RFC 3339, with an offset (`2026-12-20T00:00:00Z`, `2026-12-20T00:00:00+01:00`).
    #[serde(deserialize_with = "rfc3339")]
    pub from: Timestamp,
    /// RFC 3339, with an offset; after `from`.
    #[serde(deserialize_with = "rfc3339")]
    pub until: Timestamp,
    /// Why, shown while it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Timestamp, D::Error> {
    let text = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            serde::de::Error::custom(format!(
                "{text:?} is not an RFC 3339 time with an offset, like 2026-12-20T00:00:00Z"
            ))
        })
}

/// Whether voluntary disruption is allowed at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Openness {
    /// Allowed, until `closes`: the end of the current window or the start of the next freeze,
    /// whichever comes first (none: no end within `HORIZON_DAYS`, or no windows and no freeze
    /// to come).
    Open { closes: Option<Timestamp> },
    /// Not allowed, for `reason`, until `opens`: the first instant inside a window and outside
    /// every freeze (none: not within `HORIZON_DAYS`).
    Closed {
        reason: Closed,
        opens: Option<Timestamp>,
    },
}

/// Why voluntary disruption is not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// There are windows and the instant is in none of them.
    OutsideWindow,
    /// The instant is in a freeze. `until` is when the freezes holding then end (freezes that
    /// overlap or touch count as one); `reason` is that of the one of them that lasts longest.
    Freeze {
        reason: Option<String>,
        until: Timestamp,
    },
}

/// Whether voluntary disruption is allowed at `now` under `windows` (none: at any time) and
/// `freezes`, and until when. Windows that do not validate are never open.
pub fn disruption_at(windows: &[Window], freezes: &[Freeze], now: Timestamp) -> Openness {
    let schedule = Schedule {
        windowed: !windows.is_empty(),
        windows: windows.iter().filter_map(|w| w.compile().ok()).collect(),
        freezes,
        limit: now
            .checked_add_signed(Duration::days(HORIZON_DAYS))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    };
    if let Some(freeze) = schedule.freeze_at(now) {
        return Openness::Closed {
            reason: Closed::Freeze {
                reason: freeze.reason.clone(),
                until: schedule.thaw(now),
            },
            opens: schedule.opens(now),
        };
    }
    if schedule.windowed && schedule.window_end(now).is_none() {
        return Openness::Closed {
            reason: Closed::OutsideWindow,
            opens: schedule.opens(now),
        };
    }
    let window_closes = if schedule.windowed {
        schedule.span_end(now)
    } else {
        None
    };
    let freeze_begins = freezes
        .iter()
        .filter(|f| f.from > now && f.until > f.from)
        .map(|f| f.from)
        .min();
    let closes = match (window_closes, freeze_begins) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Openness::Open { closes }
}

impl Window {
    /// Checks the window; errors name `field` (its path, like `policy.windows[1]`) and the key.
    pub fn validate(&self, field: &str) -> Result<()> {
        self.compile()
            .map(|_| ())
            .map_err(|(key, reason)| Error::invalid(format!("{field}.{key}"), reason))
    }

    /// The window in a form to compute with, or the key that is wrong and why.
    fn compile(&self) -> std::result::Result<Compiled, (&'static str, String)> {
        const DAYS: &str = "mon .. sun, a range like mon-fri, weekdays, weekend or daily";
        if self.days.is_empty() {
            return Err(("days", format!("name at least one day: {DAYS}")));
        }
        let mut days = 0u8;
        for name in &self.days {
            days |= day_set(name)
                .ok_or_else(|| ("days", format!("{name:?} is not a day: use {DAYS}")))?;
        }
        let start = time_of_day(&self.start).ok_or_else(|| {
            (
                "start",
                format!(
                    "{:?} is not a time of day: write HH:MM, 00:00-23:59",
                    self.start
                ),
            )
        })?;
        if self.duration.is_zero() || self.duration.0 > 7 * 86_400 {
            return Err((
                "duration",
                format!("{} must be more than 0s and at most 7 days", self.duration),
            ));
        }
        let zone = self.timezone.trim().parse::<Tz>().map_err(|_| {
            (
                "timezone",
                format!(
                    "{:?} is not a time zone: use an IANA name like Europe/Berlin or UTC",
                    self.timezone
                ),
            )
        })?;
        Ok(Compiled {
            days,
            start,
            duration: self.duration.duration(),
            zone,
        })
    }
}

impl Freeze {
    /// Checks the freeze; errors name `field` (its path, like `policy.freezes[0]`) and the key.
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.until <= self.from {
            return Err(Error::invalid(
                format!("{field}.until"),
                format!(
                    "{} is not after from ({})",
                    self.until.to_rfc3339(),
                    self.from.to_rfc3339()
                ),
            ));
        }
        Ok(())
    }
}

/// The days a name stands for, one bit each, Monday the lowest.
fn day_set(name: &str) -> Option<u8> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "daily" => return Some(0b111_1111),
        "weekdays" => return Some(0b001_1111),
        "weekend" => return Some(0b110_0000),
        _ => {}
    }
    let Some((first, last)) = name.split_once('-') else {
        return day(&name).map(|d| 1 << d);
    };
    let (first, last) = (day(first.trim())?, day(last.trim())?);
    // `fri-mon` goes on over the weekend.
    let length = (last + 7 - first) % 7;
    Some((0..=length).fold(0, |set, k| set | 1 << ((first + k) % 7)))
}

/// Monday 0 .. Sunday 6.
fn day(name: &str) -> Option<u8> {
    const NAMES: [(&str, &str); 7] = [
        ("mon", "monday"),
        ("tue", "tuesday"),
        ("wed", "wednesday"),
        ("thu", "thursday"),
        ("fri", "friday"),
        ("sat", "saturday"),
        ("sun", "sunday"),
    ];
    NAMES
        .iter()
        .position(|(short, long)| name == *short || name == *long)
        .and_then(|d| u8::try_from(d).ok())
}

/// `HH:MM`, hours 0-23 (one or two digits), minutes 00-59.
fn time_of_day(text: &str) -> Option<NaiveTime> {
    let (h, m) = text.trim().split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || h.len() > 2 || !digits(m) || m.len() != 2 {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// A window that validates, ready to compute with.
struct Compiled {
    days: u8,
    start: NaiveTime,
    duration: Duration,
    zone: Tz,
}

impl Compiled {
    /// When it opens and closes if it opens on `date` (local), else none.
    fn on(&self, date: NaiveDate) -> Option<(Timestamp, Timestamp)> {
        let weekday = date.weekday().num_days_from_monday();
        if self.days & (1 << weekday) == 0 {
            return None;
        }
        let local = date.and_time(self.start);
        let start = match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) => t,
            LocalResult::Ambiguous(a, b) => a.min(b),
            // Skipped by the clocks: the first minute after the jump (zones change on the minute).
            LocalResult::None => (1..=48 * 60).find_map(|m| {
                self.zone
                    .from_local_datetime(&(local + Duration::minutes(m)))
                    .earliest()
            })?,
        }
        .with_timezone(&Utc);
        Some((start, start + self.duration))
    }

    /// Its openings that may hold `t`: those of the days around it (a window lasts 7 days at most).
    fn around(&self, t: Timestamp) -> impl Iterator<Item = (Timestamp, Timestamp)> + '_ {
        let today = t.with_timezone(&self.zone).date_naive();
        (-9..=1).filter_map(move |k| self.on(today + Duration::days(k)))
    }

    /// The first opening after `t`, up to `HORIZON_DAYS` on.
    fn next_start(&self, t: Timestamp) -> Option<Timestamp> {
        let today = t.with_timezone(&self.zone).date_naive();
        (-1..=HORIZON_DAYS)
            .filter_map(|k| self.on(today + Duration::days(k)))
            .map(|(start, _)| start)
            .find(|start| *start > t)
    }
}

/// The windows and freezes `disruption_at` reads, with how far it looks.
struct Schedule<'a> {
    /// Whether any window was given (all of them may fail to compile).
    windowed: bool,
    windows: Vec<Compiled>,
    freezes: &'a [Freeze],
    limit: Timestamp,
}

impl Schedule<'_> {
    /// The latest end of the window openings holding `t`, if any does.
    fn window_end(&self, t: Timestamp) -> Option<Timestamp> {
        self.windows
            .iter()
            .flat_map(|w| w.around(t))
            .filter(|(start, end)| *start <= t && t < *end)
            .map(|(_, end)| end)
            .max()
    }

    /// The end of the open span of windows holding `t`, following openings that overlap or
    /// touch, if it ends before `limit`.
    fn span_end(&self, t: Timestamp) -> Option<Timestamp> {
        let mut end = self.window_end(t)?;
        while end <= self.limit {
            match self.window_end(end) {
                Some(later) => end = later,
                None => return Some(end),
            }
        }
        None
    }

    /// The first window opening after `t`.
    fn next_window(&self, t: Timestamp) -> Option<Timestamp> {
        self.windows.iter().filter_map(|w| w.next_start(t)).min()
    }

    /// The freeze holding `t` that lasts longest, if any does.
    fn freeze_at(&self, t: Timestamp) -> Option<&Freeze> {
        self.freezes
            .iter()
            .filter(|f| f.from <= t && t < f.until)
            .max_by_key(|f| f.until)
    }

    /// The end of the freezes holding `t`, following freezes that overlap or touch (`t` if none).
    fn thaw(&self, t: Timestamp) -> Timestamp {
        let mut end = t;
        while let Some(f) = self.freeze_at(end) {
            end = f.until;
        }
        end
    }

    /// The first instant from `t` on inside a window (if there are windows) and outside every
    /// freeze, before `limit`.
    fn opens(&self, t: Timestamp) -> Option<Timestamp> {
        let mut at = t;
        while at <= self.limit {
            if self.freeze_at(at).is_some() {
                at = self.thaw(at);
            } else if self.windowed && self.window_end(at).is_none() {
                at = self.next_window(at)?;
            } else {
                return Some(at);
            }
        }
        None
    }
}

impl Openness {
    /// A status line ("closed until Tue 2026-12-08 09:00 Europe/Berlin (outside the rollout
    /// windows)"), with times in the zone of `windows` when they all share one, else in UTC.
    pub fn describe(&self, windows: &[Window]) -> String {
        let zone = shared_zone(windows);
        let at = |t: &Timestamp| local(*t, zone);
        match self {
            Openness::Open { closes: None } => "open".into(),
            Openness::Open { closes: Some(t) } => format!("open until {}", at(t)),
            Openness::Closed {
                reason: Closed::OutsideWindow,
                opens: Some(t),
            } => format!("closed until {} (outside the rollout windows)", at(t)),
            Openness::Closed {
                reason: Closed::OutsideWindow,
                opens: None,
            } => format!(
                "closed (outside the rollout windows; none opens within {HORIZON_DAYS} days)"
            ),
            Openness::Closed {
                reason: Closed::Freeze { reason, until },
                opens,
            } => {
                let mut line = format!("frozen until {}", at(until));
                if let Some(reason) = reason {
                    line += &format!(": {reason}");
                }
                match opens {
                    Some(t) if t > until => line += &format!("; opens {}", at(t)),
                    Some(_) => {}
                    None => line += &format!("; nothing opens within {HORIZON_DAYS} days"),
                }
                line
            }
        }
    }
}

/// The status line with times in UTC (`describe` shows them in the windows' zone).
impl fmt::Display for Openness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&[]))
    }
}

/// Why, with times in UTC: "outside the rollout windows", "frozen until ...: reason".
impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::OutsideWindow => f.write_str("outside the rollout windows"),
            Closed::Freeze { reason, until } => {
                write!(f, "frozen until {}", local(*until, Tz::UTC))?;
                match reason {
                    Some(reason) => write!(f, ": {reason}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The one zone all `windows` are in, else UTC.
fn shared_zone(windows: &[Window]) -> Tz {
    let mut zones = windows.iter().map(|w| w.timezone.trim().parse::<Tz>().ok());
    match zones.next() {
        Some(Some(first)) if zones.all(|z| z == Some(first)) => first,
        _ => Tz::UTC,
    }
}

/// `Tue 2026-12-08 09:00 Europe/Berlin` (seconds only when there are some).
fn local(t: Timestamp, zone: Tz) -> String {
    let t = t.with_timezone(&zone);
    let format = if t.second() == 0 {
        "%a %Y-%m-%d %H:%M"
    } else {
        "%a %Y-%m-%d %H:%M:%S"
    };
    format!("{} {}", t.format(format), zone.name())
}

#[cfg(test)]
mod tests {
    use super::super::spec::FleetSpec;
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    fn window(days: &[&str], start: &str, duration: u64, timezone: &str) -> Window {
        Window {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            duration: Seconds(duration),
            timezone: timezone.into(),
        }
    }

    fn freeze(from: &str, until: &str, reason: Option<&str>) -> Freeze {
        Freeze {
            from: at(from),
            until: at(until),
            reason: reason.map(String::from),
        }
    }

    fn open(closes: Option<&str>) -> Openness {
        Openness::Open {
            closes: closes.map(at),
        }
    }

    fn outside(opens: Option<&str>) -> Openness {
        Openness::Closed {
            reason: Closed::OutsideWindow,
            opens: opens.map(at),
        }
    }

    const H: u64 = 3600;

    #[test]
    fn a_weekday_window_is_open_inside_and_says_when_it_opens_next() {
        // Mon-Thu 09:00-17:00 in Berlin, UTC+1 in December. 2026-12-08 is a Tuesday.
        let ws = [window(&["mon-thu"], "09:00", 8 * H, "Europe/Berlin")];
        let now = at("2026-12-08T10:00:00Z");
        assert_eq!(
            disruption_at(&ws, &[], now),
            open(Some("2026-12-08T16:00:00Z"))
        );
        assert_eq!(
            disruption_at(&ws, &[], at("2026-12-08T07:59:59Z")),
            outside(Some("2026-12-08T08:00:00Z")),
            "08:59 local is before the window"
        );
        let evening = disruption_at(&ws, &[], at("2026-12-08T16:00:00Z"));
        assert_eq!(
            evening,
            outside(Some("2026-12-09T08:00:00Z")),
            "the end is out"
        );
        assert_eq!(
            evening.describe(&ws),
            "closed until Wed 2026-12-09 09:00 Europe/Berlin (outside the rollout windows)"
        );
        assert_eq!(
            evening.to_string(),
            "closed until Wed 2026-12-09 08:00 UTC (outside the rollout windows)"
        );
        // Thursday evening: Friday is not a day of the window, Monday is.
        assert_eq!(
            disruption_at(&ws, &[], at("2026-12-10T20:00:00Z")),
            outside(Some("2026-12-14T08:00:00Z"))
        );
        assert_eq!(
            disruption_at(&ws, &[], now).describe(&ws),
            "open until Tue 2026-12-08 17:00 Europe/Berlin"
        );
    }

    #[test]
    fn a_window_crosses_midnight() {
        // Monday 22:00 for 8 hours: open until Tuesday 06:00. 2026-12-07 is a Monday.
        let ws = [window(&["mon"], "22:00", 8 * H, "UTC")];
        assert_eq!(
            disruption_at(&ws, &[], at("2026-12-08T05:00:00Z")),
            open(Some("2026-12-08T06:00:00Z"))
        );
        assert_eq!(
            disruption_at(&ws, &[], at("2026-12-08T06:00:00Z")),
            outside(Some("2026-12-14T22:00:00Z"))
        );
        assert_eq!(
            disruption_at(&ws, &[], at("2026-12-07T21:00:00Z")),
            outside(Some("2026-12-07T22:00:00Z"))
        );
    }

    #[test]
    fn friday_evening_is_closed_until_monday() {
        let ws = [window(&["weekdays"], "09:00", 9 * H, "UTC")];
        let friday_evening = disruption_at(&ws, &[], at("2026-12-11T19:00:00Z"));
        assert_eq!(friday_evening, outside(Some("2026-12-14T09:00:00Z")));
        assert_eq!(
            friday_evening.describe(&ws),
            "closed until Mon 2026-12-14 09:00 UTC (outside the rollout windows)"
        );
    }

    #[test]
    fn windows_that_overlap_or_touch_are_one_span() {
        let ws = [
            window(&["mon"], "09:00", 4 * H, "UTC"),
            window(&["mon"], "12:00", 4 * H, "UTC"),
            window(&["mon"], "16:00", H, "UTC"),
        ];
        assert_eq!(
            disruption_at(&ws, &[], at("2026-12-07T10:00:00Z")),
            open(Some("2026-12-07T17:00:00Z"))
        );
        // Always open: a whole day, every day. Its end is beyond the horizon.
        let always = [window(&["daily"], "00:00", 24 * H, "UTC")];
        assert_eq!(
            disruption_at(&always, &[], at("2026-12-07T10:00:00Z")),
            open(None)
        );
        // Windows in different zones: times are shown in UTC.
        let two_zones = [
            window(&["mon"], "09:00", H, "Europe/Berlin"),
            window(&["mon"], "09:00", H, "America/New_York"),
        ];
        assert_eq!(
            disruption_at(&two_zones, &[], at("2026-12-07T09:00:00Z")).describe(&two_zones),
            "closed until Mon 2026-12-07 14:00 UTC (outside the rollout windows)"
        );
    }

    #[test]
    fn days_are_names_ranges_or_words() {
        assert_eq!(day_set("mon"), Some(0b000_0001));
        assert_eq!(day_set("Sunday"), Some(0b100_0000));
        assert_eq!(day_set("mon-thu"), Some(0b000_1111));
        assert_eq!(
            day_set("fri-mon"),
            Some(0b111_0001),
            "wraps over the weekend"
        );
        assert_eq!(day_set("weekdays"), Some(0b001_1111));
        assert_eq!(day_set("weekend"), Some(0b110_0000));
        assert_eq!(day_set("daily"), Some(0b111_1111));
        assert_eq!(day_set("wed-wed"), Some(0b000_0100));
        assert_eq!(day_set("mun"), None);
        assert_eq!(day_set("mon-"), None);
        assert_eq!(time_of_day("9:05"), NaiveTime::from_hms_opt(9, 5, 0));
        assert_eq!(time_of_day("23:59"), NaiveTime::from_hms_opt(23, 59, 0));
        for bad in [
            "24:00", "12:60", "12", "12:5", "12:00:00", "-1:00", "ab:cd", "",
        ] {
            assert_eq!(time_of_day(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_freeze_inside_a_window_closes_it_until_it_ends_inside_a_window() {
        let ws = [window(&["weekdays"], "09:00", 8 * H, "UTC")];
        let fs = [freeze(
            "2026-12-08T12:00:00Z",
            "2026-12-09T10:00:00Z",
            Some("release"),
        )];
        // Before: the window closes early, when the freeze begins.
        assert_eq!(
            disruption_at(&ws, &fs, at("2026-12-08T10:00:00Z")),
            open(Some("2026-12-08T12:00:00Z"))
        );
        // During: it opens when the freeze ends, inside Wednesday's window.
        let during = disruption_at(&ws, &fs, at("2026-12-08T13:00:00Z"));
        assert_eq!(
            during,
            Openness::Closed {
                reason: Closed::Freeze {
                    reason: Some("release".into()),
                    until: at("2026-12-09T10:00:00Z"),
                },
                opens: Some(at("2026-12-09T10:00:00Z")),
            }
        );
        assert_eq!(
            during.describe(&ws),
            "frozen until Wed 2026-12-09 10:00 UTC: release"
        );
        // A freeze that ends outside every window: the next window after it.
        let fs = [freeze("2026-12-08T12:00:00Z", "2026-12-09T18:00:00Z", None)];
        let during = disruption_at(&ws, &fs, at("2026-12-09T11:00:00Z"));
        assert_eq!(
            during,
            Openness::Closed {
                reason: Closed::Freeze {
                    reason: None,
                    until: at("2026-12-09T18:00:00Z"),
                },
                opens: Some(at("2026-12-10T09:00:00Z")),
            }
        );
        assert_eq!(
            during.describe(&ws),
            "frozen until Wed 2026-12-09 18:00 UTC; opens Thu 2026-12-10 09:00 UTC"
        );
        // Outside the windows, the freeze still says why first.
        assert!(matches!(
            disruption_at(&ws, &fs, at("2026-12-08T20:00:00Z")),
            Openness::Closed {
                reason: Closed::Freeze { .. },
                ..
            }
        ));
    }

    #[test]
    fn spring_forward_starts_a_skipped_time_at_the_jump_and_counts_real_hours() {
        // Berlin, 2026-03-29: 02:00 CET is followed by 03:00 CEST (01:00 UTC); 02:30 never is.
        let skipped = [window(&["sun"], "02:30", H, "Europe/Berlin")];
        assert_eq!(
            disruption_at(&skipped, &[], at("2026-03-28T12:00:00Z")),
            outside(Some("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            disruption_at(&skipped, &[], at("2026-03-29T01:30:00Z")),
            open(Some("2026-03-29T02:00:00Z"))
        );
        // The week after, 02:30 CEST is 00:30 UTC again.
        assert_eq!(
            disruption_at(&skipped, &[], at("2026-03-29T02:00:00Z")),
            outside(Some("2026-04-05T00:30:00Z"))
        );
        // Saturday 22:00 CET for 8 hours ends at 07:00 CEST, not 06:00.
        let overnight = [window(&["sat"], "22:00", 8 * H, "Europe/Berlin")];
        let open_now = disruption_at(&overnight, &[], at("2026-03-28T22:00:00Z"));
        assert_eq!(open_now, open(Some("2026-03-29T05:00:00Z")));
        assert_eq!(
            open_now.describe(&overnight),
            "open until Sun 2026-03-29 07:00 Europe/Berlin"
        );
    }

    #[test]
    fn fall_back_starts_a_repeated_time_at_the_earlier() {
        // Berlin, 2026-10-25: 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET).
        let ws = [window(&["sun"], "02:30", H, "Europe/Berlin")];
        assert_eq!(
            disruption_at(&ws, &[], at("2026-10-24T12:00:00Z")),
            outside(Some("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            disruption_at(&ws, &[], at("2026-10-25T01:00:00Z")),
            open(Some("2026-10-25T01:30:00Z"))
        );
        // An hour of real time: closed at the second 02:30, until the next Sunday's (CET).
        assert_eq!(
            disruption_at(&ws, &[], at("2026-10-25T01:30:00Z")),
            outside(Some("2026-11-01T01:30:00Z"))
        );
    }

    #[test]
    fn without_windows_it_is_open_except_in_a_freeze() {
        let now = at("2026-12-07T10:00:00Z");
        assert_eq!(disruption_at(&[], &[], now), open(None));
        assert_eq!(disruption_at(&[], &[], now).to_string(), "open");
        let fs = [
            freeze(
                "2026-12-20T00:00:00Z",
                "2026-12-28T00:00:00Z",
                Some("year-end freeze"),
            ),
            // Overlaps the first: one freeze until 2027-01-04.
            freeze("2026-12-27T00:00:00Z", "2027-01-04T00:00:00Z", None),
            // Already over.
            freeze("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", None),
        ];
        assert_eq!(
            disruption_at(&[], &fs, now),
            open(Some("2026-12-20T00:00:00Z"))
        );
        let frozen = disruption_at(&[], &fs, at("2026-12-21T00:00:00Z"));
        assert_eq!(
            frozen,
            Openness::Closed {
                reason: Closed::Freeze {
                    reason: Some("year-end freeze".into()),
                    until: at("2027-01-04T00:00:00Z"),
                },
                opens: Some(at("2027-01-04T00:00:00Z")),
            }
        );
        assert_eq!(
            frozen.to_string(),
            "frozen until Mon 2027-01-04 00:00 UTC: year-end freeze"
        );
        // Where two hold, the one that lasts longer says why.
        assert_eq!(
            disruption_at(&[], &fs, at("2026-12-27T12:00:00Z")),
            Openness::Closed {
                reason: Closed::Freeze {
                    reason: None,
                    until: at("2027-01-04T00:00:00Z"),
                },
                opens: Some(at("2027-01-04T00:00:00Z")),
            }
        );
        assert_eq!(
            disruption_at(&[], &fs, at("2027-01-04T00:00:00Z")),
            open(None),
            "a freeze ends at its until"
        );
    }

    #[test]
    fn windows_that_do_not_validate_are_never_open() {
        let ws = [window(&["mon"], "09:00", H, "Europe/Berln")];
        assert_eq!(
            disruption_at(&ws, &[], at("2026-12-07T08:30:00Z")),
            outside(None)
        );
        assert_eq!(
            outside(None).to_string(),
            "closed (outside the rollout windows; none opens within 400 days)"
        );
    }

    const FILE: &str = "name: web\nimage: ami-12345678\ncapacity: 3\ninstance_type: t3.micro\n";

    fn invalid(policy: &str) -> (String, String) {
        match FleetSpec::from_yaml(&format!("{FILE}policy:\n{policy}")) {
            Err(Error::Invalid { field, reason }) => (field, reason),
            other => panic!("{policy}: {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let good = "  - {days: [mon], start: \"09:00\", duration: 1h}\n";
        let (field, reason) = invalid(&format!(
            "  windows:\n{good}  - {{days: [mon], start: \"09:00\", duration: 1h, timezone: Europe/Berln}}\n"
        ));
        assert_eq!(field, "policy.windows[1].timezone");
        assert_eq!(
            reason,
            "\"Europe/Berln\" is not a time zone: use an IANA name like Europe/Berlin or UTC \
             at line 8 column 59"
        );
        let cases = [
            (
                "start: \"24:00\"",
                "start",
                "\"24:00\" is not a time of day: write HH:MM, 00:00-23:59",
            ),
            ("days: []", "days", "name at least one day"),
            ("days: [mon, mun]", "days", "\"mun\" is not a day"),
            (
                "duration: 0",
                "duration",
                "0s must be more than 0s and at most 7 days",
            ),
            ("duration: 7d1s", "duration", "168h0m1s must be more"),
        ];
        for (change, key, message) in cases {
            let (k, _) = change.split_once(':').expect("a key");
            let line = good.replace(
                &format!(
                    "{k}: {}",
                    if k == "days" {
                        "[mon]"
                    } else if k == "start" {
                        "\"09:00\""
                    } else {
                        "1h"
                    }
                ),
                change,
            );
            assert_ne!(line, good, "{change}");
            let (field, reason) = invalid(&format!("  windows:\n{line}"));
            assert_eq!(field, format!("policy.windows[0].{key}"), "{change}");
            assert!(reason.starts_with(message), "{change}: {reason}");
        }
        let (field, reason) = invalid(
            "  freezes:\n  - {from: \"2027-01-04T00:00:00Z\", until: \"2026-12-20T00:00:00Z\"}\n",
        );
        assert_eq!(field, "policy.freezes[0].until");
        assert!(
            reason.starts_with(
                "2026-12-20T00:00:00+00:00 is not after from (2027-01-04T00:00:00+00:00)"
            ),
            "{reason}"
        );
        // Read by serde: unknown keys, days that are no list of names, times without an offset.
        let number = FleetSpec::from_yaml(&format!(
            "{FILE}policy:\n  windows:\n  - {{days: 5, start: \"09:00\", duration: 1h}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            number.contains("expected a day or a list of days, like [mon-fri]"),
            "{number}"
        );
        let unknown = FleetSpec::from_yaml(&format!(
            "{FILE}policy:\n  windows:\n  - {{days: [mon], start: \"09:00\", duration: 1h, zone: UTC}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("unknown field `zone`"), "{unknown}");
        let local = FleetSpec::from_yaml(&format!(
            "{FILE}policy:\n  freeze:\n  - {{from: 2026-12-20T00:00:00, until: 2027-01-04T00:00:00Z}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            local.contains("\"2026-12-20T00:00:00\" is not an RFC 3339 time with an offset"),
            "{local}"
        );
    }

    #[test]
    fn a_fleet_file_round_trips_through_json_and_yaml() {
        let text = format!(
            "{FILE}policy:
  windows:
    - days: [mon-thu]
      start: \"09:00\"
      duration: 8h
      timezone: Europe/Berlin
    - days: weekend
      start: 22:00
      duration: 90m
  freeze:
    - from: 2026-12-20T00:00:00+01:00
      until: 2027-01-04T00:00:00Z
      reason: year-end freeze
"
        );
        let spec = FleetSpec::from_yaml(&text).expect("a valid fleet file");
        let policy = &spec.policy;
        assert_eq!(
            policy.windows,
            [
                window(&["mon-thu"], "09:00", 8 * H, "Europe/Berlin"),
                window(&["weekend"], "22:00", 90 * 60, "UTC"),
            ]
        );
        assert_eq!(
            policy.freezes,
            [freeze(
                "2026-12-19T23:00:00Z",
                "2027-01-04T00:00:00Z",
                Some("year-end freeze")
            )]
        );
        let json = serde_json::to_string(&spec).expect("JSON");
        assert!(
            json.contains(
                r#""windows":[{"days":["mon-thu"],"start":"09:00","duration":"8h","timezone":"Europe/Berlin"},{"days":["weekend"],"start":"22:00","duration":"1h30m"}]"#
            ),
            "{json}"
        );
        assert!(
            json.contains(r#""freezes":[{"from":"2026-12-19T23:00:00Z","until":"2027-01-04T00:00:00Z","reason":"year-end freeze"}]"#),
            "{json}"
        );
        let back: FleetSpec = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, spec);
        let yaml = serde_yaml::to_string(&spec).expect("YAML");
        assert_eq!(FleetSpec::from_yaml(&yaml).expect("read back"), spec);
        // The policy's own shortcut.
        assert_eq!(
            policy.disruption_at(at("2026-12-08T10:00:00Z")),
            open(Some("2026-12-08T16:00:00Z"))
        );
        assert_eq!(
            policy.disruption_at(at("2026-12-21T10:00:00Z")),
            Openness::Closed {
                reason: Closed::Freeze {
                    reason: Some("year-end freeze".into()),
                    until: at("2027-01-04T00:00:00Z"),
                },
                // Monday 2027-01-04 09:00 in Berlin.
                opens: Some(at("2027-01-04T08:00:00Z")),
            }
        );
    }
}
