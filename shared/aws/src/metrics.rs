//! Metrics as CloudWatch Embedded Metric Format (EMF): one JSON object per fleet a handled event
//! touched, written to stdout as a log line. CloudWatch Logs turns each into metric data points
//! in namespace `phoenix`, dimension `Fleet`, with no API call and no extra permission.
//!
//! | metric | unit | what |
//! |---|---|---|
//! | `InstancesLaunched` | Count | instances launched (their ids recorded) by the event |
//! | `InstancesTerminated` | Count | instances terminated by the event |
//! | `RolloutWavesStarted` | Count | rollout waves started |
//! | `BreakerTrips` | Count | times the mass-failure breaker stopped replacements |
//! | `HandlerLatency` | Milliseconds | the whole invocation (all fleets of a scheduled reconcile) |
//!
//! The other keys of the object (`function`, `event_id`, `detail_type`, `outcome`) are not
//! dimensions: they are searchable in Logs Insights and cost no metric.

use crate::controller::{FleetReport, Report};
use phoenix_core::events::Change;
use phoenix_core::history::{change_kind, is_breaker_trip};
use phoenix_core::model::Timestamp;
use serde_json::{json, Value};
use std::io::Write as _;
use std::time::Duration;

pub const NAMESPACE: &str = "phoenix";
pub const DIMENSION: &str = "Fleet";

/// The counts one event produced for one fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetCounts {
    pub launched: u64,
    pub terminated: u64,
    pub waves_started: u64,
    pub breaker_trips: u64,
}

impl FleetCounts {
    pub fn of(report: &FleetReport) -> Self {
        let count = |pred: &dyn Fn(&Change) -> bool| {
            report.changes.iter().filter(|c| pred(c)).count() as u64
        };
        FleetCounts {
            launched: report.launched.len() as u64,
            terminated: report.terminated.len() as u64,
            waves_started: count(&|c| change_kind(c) == "wave_started"),
            breaker_trips: count(&is_breaker_trip),
        }
    }
}

/// The EMF object for one fleet of a handled event.
pub fn fleet_emf(
    function: &str,
    report: &Report,
    fleet: &FleetReport,
    latency: Duration,
    now: Timestamp,
) -> Value {
    let counts = FleetCounts::of(fleet);
    json!({
        "_aws": {
            "Timestamp": now.timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[DIMENSION]],
                "Metrics": [
                    {"Name": "InstancesLaunched", "Unit": "Count"},
                    {"Name": "InstancesTerminated", "Unit": "Count"},
                    {"Name": "RolloutWavesStarted", "Unit": "Count"},
                    {"Name": "BreakerTrips", "Unit": "Count"},
                    {"Name": "HandlerLatency", "Unit": "Milliseconds"},
                ],
            }],
        },
        DIMENSION: fleet.fleet,
        "InstancesLaunched": counts.launched,
        "InstancesTerminated": counts.terminated,
        "RolloutWavesStarted": counts.waves_started,
        "BreakerTrips": counts.breaker_trips,
        "HandlerLatency": latency.as_secs_f64() * 1000.0,
        "function": function,
        "event_id": report.event_id,
        "detail_type": report.detail_type,
        "outcome": fleet.outcome,
    })
}

/// The EMF objects for a handled event: one per fleet it touched (none if it touched none).
pub fn emf(function: &str, report: &Report, latency: Duration, now: Timestamp) -> Vec<Value> {
    report
        .fleets
        .iter()
        .map(|f| fleet_emf(function, report, f, latency, now))
        .collect()
}

/// Writes the event's EMF lines to stdout, each in one write (so log lines do not interleave).
pub fn emit(function: &str, report: &Report, latency: Duration) {
    let mut out = std::io::stdout().lock();
    for line in emf(function, report, latency, chrono::Utc::now()) {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::controller::FleetOutcome;
    use chrono::TimeZone;
    use phoenix_core::{FleetName, ImageId, InstanceId};

    fn report() -> Report {
        let id = |s: &str| InstanceId::parse(s).unwrap();
        Report {
            event_id: "evt-1".into(),
            detail_type: "ImageReady".into(),
            fleets: vec![FleetReport {
                fleet: FleetName::parse("web").unwrap(),
                outcome: FleetOutcome::Changed,
                version: 7,
                changes: vec![
                    Change::WaveStarted {
                        rollout: 1,
                        wave: 1,
                        launches: 2,
                    },
                    Change::LaunchDecided {
                        token: "web-x-7-0".into(),
                        image: ImageId::parse("ami-0000000b").unwrap(),
                        count: 2,
                        reason: "rollout".into(),
                    },
                ],
                launched: vec![id("i-00000001"), id("i-00000002")],
                terminated: vec![id("i-00000003")],
                failures: Vec::new(),
            }],
        }
    }

    #[test]
    fn one_emf_object_per_fleet_with_every_metric_declared_and_valued() {
        let now = chrono::Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap();
        let lines = emf("image", &report(), Duration::from_millis(1234), now);
        assert_eq!(lines.len(), 1);
        let v = &lines[0];
        assert_eq!(v["_aws"]["Timestamp"], json!(now.timestamp_millis()));
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "phoenix");
        assert_eq!(directive["Dimensions"], json!([["Fleet"]]));
        // Every declared metric and dimension has a value at the top level (EMF requires it).
        for m in directive["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            assert!(v[name].is_number(), "{name} has no value");
            assert!(["Count", "Milliseconds"].contains(&m["Unit"].as_str().unwrap()));
        }
        assert_eq!(v["Fleet"], "web");
        assert_eq!(v["InstancesLaunched"], 2);
        assert_eq!(v["InstancesTerminated"], 1);
        assert_eq!(v["RolloutWavesStarted"], 1);
        assert_eq!(v["BreakerTrips"], 0);
        assert_eq!(v["HandlerLatency"], json!(1234.0));
        assert_eq!(v["event_id"], "evt-1");
        // One line of JSON.
        assert!(!v.to_string().contains('\n'));
    }

    #[test]
    fn an_event_that_touched_no_fleet_emits_nothing() {
        let mut r = report();
        r.fleets.clear();
        assert!(emf("reconcile", &r, Duration::ZERO, chrono::Utc::now()).is_empty());
    }

    #[test]
    fn breaker_trips_are_counted_by_their_kind() {
        let mut r = report();
        let halted: Change = serde_json::from_value(json!({
            "change": "replacement_halted", "unhealthy": 3, "capacity": 10, "shared": null
        }))
        .unwrap();
        r.fleets[0].changes.push(halted);
        let v = &emf("health", &r, Duration::ZERO, chrono::Utc::now())[0];
        assert_eq!(v["BreakerTrips"], 1);
    }
}
