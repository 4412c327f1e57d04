//! Notices: what AWS says about one of a fleet's instances that phoenix did not cause — EC2
//! stopped or terminated it, a Spot interruption or rebalance is coming, AWS Health scheduled
//! maintenance, someone changed it in place (CloudTrail) — and what phoenix keeps of them: the
//! replacement it owes an instance that has to go without having failed (`Retirement`), the
//! in-place changes made to an instance (`Taint`), and a fleet's settings for both
//! (`MaintenanceWindow`, `TaintMode`).
//!
//! Data only, below the model and the events that hold it; how a notice becomes a repair or a
//! retirement is the planner's (`planner::notices`). What holds: a retirement is due once the
//! window it waits for is open, and at once when it is urgent (its deadline is within
//! `URGENT_LEAD`: the instance goes soon whatever phoenix does).

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::time::{Seconds, Timestamp};
use chrono::{Datelike, Duration, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// A retirement whose deadline is this close is urgent.
pub const URGENT_LEAD: Duration = Duration::minutes(15);
/// How long a Spot instance lives after its interruption warning.
pub const SPOT_WARNING: Duration = Duration::minutes(2);
/// At most this many taints are kept per instance (the newest).
pub const MAX_TAINTS: usize = 20;

/// What AWS said about an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    /// EC2 reports a state phoenix did not ask for (stopping, stopped, shutting-down, terminated).
    State { state: Lifecycle },
    /// A Spot interruption warning: EC2 will `action` (terminate, stop, hibernate) it at `at`.
    Interruption { action: String, at: Timestamp },
    /// EC2 recommends moving off this Spot instance (it is at elevated risk of interruption).
    Rebalance,
    /// AWS Health scheduled a change (retirement, maintenance) starting at `start`.
    Maintenance { code: String, start: Timestamp },
    /// Someone changed the instance in place: `what` (the API call) by `who` (an ARN).
    Mutated { who: String, what: String },
}

impl Notice {
    pub fn describe(&self) -> String {
        match self {
            Notice::State { state } => format!("EC2 state {}", state.as_str()),
            Notice::Interruption { action, at } => {
                format!("Spot interruption warning: EC2 will {action} it at {at}")
            }
            Notice::Rebalance => "EC2 rebalance recommendation".into(),
            Notice::Maintenance { code, start } => format!("{code} scheduled at {start}"),
            Notice::Mutated { who, what } => format!("changed in place: {what} by {who}"),
        }
    }
}

/// A replacement phoenix owes an instance that is not broken but has to go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retirement {
    pub reason: String,
    pub noticed_at: Timestamp,
    /// Not before then: the fleet's maintenance window opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// The instance goes then, whatever phoenix does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
}

impl Retirement {
    /// The instance goes soon whatever phoenix does: no waiting for room or budget.
    pub fn is_urgent(&self, now: Timestamp) -> bool {
        self.deadline.is_some_and(|d| d <= now + URGENT_LEAD)
    }
    /// Due now (its window, if any, is open).
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.not_before.is_none_or(|t| t <= now) || self.is_urgent(now)
    }
}

/// An in-place change to an instance, from CloudTrail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    /// `userIdentity.arn` of the caller.
    pub who: String,
    /// The API call (`eventName`).
    pub what: String,
    pub at: Timestamp,
}

/// What a fleet does when one of its instances is changed in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaintMode {
    /// Nothing: the event is ignored.
    Off,
    /// Record who changed what on the instance.
    Record,
    /// Record it and replace the instance (launch first).
    #[default]
    Replace,
}

impl TaintMode {
    pub fn is_default(&self) -> bool {
        *self == TaintMode::Replace
    }
}

/// A day of the week, written `mon` … `sun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    #[serde(alias = "monday")]
    Mon,
    #[serde(alias = "tuesday")]
    Tue,
    #[serde(alias = "wednesday")]
    Wed,
    #[serde(alias = "thursday")]
    Thu,
    #[serde(alias = "friday")]
    Fri,
    #[serde(alias = "saturday")]
    Sat,
    #[serde(alias = "sunday")]
    Sun,
}

impl Day {
    fn of(weekday: chrono::Weekday) -> Day {
        use chrono::Weekday::*;
        match weekday {
            Mon => Day::Mon,
            Tue => Day::Tue,
            Wed => Day::Wed,
            Thu => Day::Thu,
            Fri => Day::Fri,
            Sat => Day::Sat,
            Sun => Day::Sun,
        }
    }
}

/// When planned replacements of a fleet may happen, in UTC: e.g.
/// `{days: [sat, sun], start: "02:00", duration: 4h}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub days: Vec<Day>,
    /// `HH:MM`, UTC.
    pub start: String,
    pub duration: Seconds,
}

impl MaintenanceWindow {
    fn start_time(&self) -> Result<NaiveTime> {
        NaiveTime::parse_from_str(self.start.trim(), "%H:%M").map_err(|_| {
            Error::invalid(
                "maintenance_window.start",
                format!("{:?} is not a time like \"02:00\" (UTC)", self.start),
            )
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.days.is_empty() {
            return Err(Error::invalid(
                "maintenance_window.days",
                "name at least one day (mon ... sun)",
            ));
        }
        self.start_time()?;
        if self.duration.is_zero() || self.duration.0 > 7 * 86_400 {
            return Err(Error::invalid(
                "maintenance_window.duration",
                "must be more than 0s and at most 7 days",
            ));
        }
        Ok(())
    }

    /// When the window is next open: `now` while it is, else the next opening.
    pub fn opens(&self, now: Timestamp) -> Timestamp {
        let Ok(start) = self.start_time() else {
            return now;
        };
        let today = now.date_naive();
        // Windows last at most 7 days: one that opened 8 days ago has closed.
        for offset in -8..=8 {
            let date = today + Duration::days(offset);
            if !self.days.contains(&Day::of(date.weekday())) {
                continue;
            }
            let open = Utc.from_utc_datetime(&date.and_time(start));
            if open <= now && now < open + self.duration.duration() {
                return now;
            }
            if open > now {
                return open;
            }
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn weekend() -> MaintenanceWindow {
        MaintenanceWindow {
            days: vec![Day::Sat, Day::Sun],
            start: "02:00".into(),
            duration: Seconds(4 * 3600),
        }
    }

    #[test]
    fn a_window_opens_now_while_open_and_next_time_otherwise() {
        let w = weekend();
        // 2030-01-05 is a Saturday.
        let inside = at("2030-01-05T03:00:00Z");
        assert_eq!(w.opens(inside), inside);
        assert_eq!(
            w.opens(at("2030-01-05T06:30:00Z")),
            at("2030-01-06T02:00:00Z")
        );
        assert_eq!(
            w.opens(at("2030-01-02T12:00:00Z")),
            at("2030-01-05T02:00:00Z")
        );
        assert_eq!(
            w.opens(at("2030-01-06T07:00:00Z")),
            at("2030-01-12T02:00:00Z")
        );
        // A window crossing midnight is open after midnight.
        let night = MaintenanceWindow {
            days: vec![Day::Fri],
            start: "23:00".into(),
            duration: Seconds(3 * 3600),
        };
        let after_midnight = at("2030-01-05T01:00:00Z");
        assert_eq!(night.opens(after_midnight), after_midnight);
    }

    #[test]
    fn windows_are_validated() {
        let mut w = weekend();
        assert!(w.validate().is_ok());
        w.start = "25:00".into();
        assert!(w.validate().unwrap_err().to_string().contains("02:00"));
        let mut w = weekend();
        w.days.clear();
        assert!(w.validate().is_err());
        let mut w = weekend();
        w.duration = Seconds(0);
        assert!(w.validate().is_err());
    }

    #[test]
    fn urgency_follows_the_deadline() {
        let now = at("2030-01-01T00:00:00Z");
        let mut r = Retirement {
            reason: "x".into(),
            noticed_at: now,
            not_before: Some(now + Duration::hours(5)),
            deadline: Some(now + Duration::hours(6)),
        };
        assert!(!r.is_urgent(now) && !r.is_due(now));
        assert!(r.is_due(now + Duration::hours(5)));
        r.deadline = Some(now + Duration::minutes(2));
        assert!(r.is_urgent(now) && r.is_due(now));
    }
}
