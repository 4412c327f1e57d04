//! The traffic report: requests sent, failed and their p99 while phoenix replaces instances behind
//! a target group — a rollout of 6, a repair, a scale-in, a Spot interruption — and the same
//! scenarios without the group (the control, which must fail requests: the harness can tell).
//!
//! Each scenario runs on its own emulator (`target_groups::Served`): a fleet settles, steady
//! traffic with slow requests mixed in starts, phoenix does the one thing, the fleet settles
//! again, and the load stops once every request has finished.

use crate::target_groups::Served;
use crate::traffic::{LoadConfig, TrafficReport};
use crate::FleetFile;
use anyhow::{Context, Result};
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use phoenix_core::events::{Intent, ScaleTarget};
use phoenix_core::FleetName;
use std::time::Duration;

/// Seconds a deregistered target drains at most (the group's delay in these scenarios).
const DELAY: u32 = 3;
const EVERY: Duration = Duration::from_millis(300);
const WITHIN: Duration = Duration::from_secs(120);

/// Steady traffic, one request in ten slow (3 s: longer than phoenix takes to replace an
/// instance, so a slow request is in flight on the instance that goes).
fn load() -> LoadConfig {
    LoadConfig {
        slow_ms: 3000,
        ..LoadConfig::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Rollout,
    Repair,
    ScaleIn,
    Spot,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Rollout,
        Scenario::Repair,
        Scenario::ScaleIn,
        Scenario::Spot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Rollout => "rollout of 6 (surge 1)",
            Scenario::Repair => "repair of 1 of 4",
            Scenario::ScaleIn => "scale-in 4 -> 2",
            Scenario::Spot => "Spot interruption of 1 of 4",
        }
    }

    fn capacity(self) -> i64 {
        match self {
            Scenario::Rollout => 6,
            _ => 4,
        }
    }
}

/// One scenario's figures.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: Scenario,
    pub with_group: bool,
    pub report: TrafficReport,
    /// Wall time of the change (from the event to the fleet settled again).
    pub took: Duration,
}

/// Publishes an EC2 Spot interruption warning for `instance`, as EC2 does two minutes before.
async fn spot_warning(s: &Served, instance: &str) -> Result<()> {
    let entry = PutEventsRequestEntry::builder()
        .event_bus_name("default")
        .source("aws.ec2")
        .detail_type("EC2 Spot Instance Interruption Warning")
        .resources(format!("arn:aws:ec2:us-east-1a:instance/{instance}"))
        .detail(
            serde_json::json!({"instance-id": instance, "instance-action": "terminate"})
                .to_string(),
        )
        .build();
    aws_sdk_eventbridge::Client::new(&s.h.sdk)
        .put_events()
        .entries(entry)
        .send()
        .await?;
    Ok(())
}

/// Runs one scenario, behind a target group or not.
pub async fn run(scenario: Scenario, with_group: bool) -> Result<Row> {
    let mut s = Served::start("web", with_group, DELAY).await?;
    let web = FleetName::parse("web")?;
    let one = s.h.register_image("web-1").await;
    let file = s.fleet_file(FleetFile::new("web", &one, scenario.capacity()), with_group);
    s.h.apply(&file);
    s.h.settle_over("web", EVERY, WITHIN).await;
    s.start_traffic(scenario.capacity() as usize, load())
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    let victim =
        s.h.fleet("web")
            .await
            .live_instances()
            .next()
            .context("no instance")?
            .id
            .clone();
    match scenario {
        Scenario::Rollout => {
            let two = s.h.register_image("web-2").await;
            s.h.publish(&Intent::ImageReady {
                fleet: web,
                image: two,
            })
            .await;
        }
        Scenario::Repair => {
            s.h.publish(&Intent::HealthCheckFailed {
                instance: victim,
                reason: "GET /health returned 503".into(),
            })
            .await;
        }
        Scenario::ScaleIn => {
            s.h.publish(&Intent::Scale {
                fleet: web,
                target: ScaleTarget::Desired(2),
            })
            .await;
        }
        Scenario::Spot => spot_warning(&s, victim.as_str()).await?,
    }
    s.h.settle_over("web", EVERY, WITHIN).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = s.report().await?;
    Ok(Row {
        scenario,
        with_group,
        report,
        took,
    })
}

/// The report as a markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | target group | requests | failed | p50 | p99 | change took |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} ms | {} ms | {:.1} s |\n",
            r.scenario.name(),
            if r.with_group { "yes" } else { "no (control)" },
            r.report.sent,
            r.report.failed,
            r.report.p50_ms,
            r.report.p99_ms,
            r.took.as_secs_f64()
        ));
    }
    out
}
