//! What the CLI prints: tables for people, `--output json` with a stable shape for scripts.

use anyhow::Result;
use phoenix_aws::local::Delivery;
use phoenix_aws::store::HistoryEntry;
use phoenix_aws::FleetReport;
use phoenix_core::events::{Change, Intent};
use phoenix_core::model::{Fleet, Health, RolloutStatus};
use serde::Serialize;
use serde_json::json;

/// `println!` that does not panic when stdout is closed early (`phoenix history web | head`).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
pub(crate) use say;

pub struct Printer {
    pub json: bool,
}

fn print_json(v: &impl Serialize) -> Result<()> {
    say!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn health_word(h: &Health) -> String {
    match h {
        Health::Unknown => "unknown".into(),
        Health::Healthy => "healthy".into(),
        Health::Unhealthy { reason } => format!("unhealthy ({reason})"),
    }
}

/// How far a fleet is from its spec.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub fleet: String,
    pub image: String,
    pub capacity: u32,
    pub live: usize,
    pub healthy: usize,
    pub on_image: usize,
    pub healthy_on_image: usize,
    pub pending_launches: u32,
    pub rollout: Option<serde_json::Value>,
    pub converged: bool,
}

impl Progress {
    pub fn of(fleet: &Fleet) -> Self {
        let live: Vec<_> = fleet.live_instances().collect();
        let on_image = live.iter().filter(|i| i.image == fleet.spec.image).count();
        let healthy = live.iter().filter(|i| i.is_healthy()).count();
        let healthy_on_image = live
            .iter()
            .filter(|i| i.image == fleet.spec.image && i.is_healthy())
            .count();
        let rollout = fleet.rollout.as_ref().map(|r| {
            json!({
                "id": r.id, "to": r.to, "status": r.status, "waves": r.waves.len(),
                "healthy_waves": r.waves.iter().filter(|w| w.healthy_at.is_some()).count(),
            })
        });
        let rollout_done = fleet
            .rollout
            .as_ref()
            .is_none_or(|r| r.status != RolloutStatus::InProgress);
        let capacity = fleet.spec.capacity as usize;
        Progress {
            fleet: fleet.spec.name.to_string(),
            image: fleet.spec.image.to_string(),
            capacity: fleet.spec.capacity,
            live: live.len(),
            healthy,
            on_image,
            healthy_on_image,
            pending_launches: fleet.pending_count(),
            rollout,
            converged: rollout_done
                && fleet.pending.is_empty()
                && live.len() == capacity
                && healthy_on_image == capacity,
        }
    }

    pub fn line(&self) -> String {
        let rollout = match &self.rollout {
            Some(r) if r["status"] == "in_progress" => {
                format!(
                    " | rollout {} wave {} ({} healthy)",
                    r["id"], r["waves"], r["healthy_waves"]
                )
            }
            _ => String::new(),
        };
        format!(
            "{}: {}/{} healthy on {} | {} healthy of {} instances, {} launching{}{}",
            self.fleet,
            self.healthy_on_image,
            self.capacity,
            self.image,
            self.healthy,
            self.live,
            self.pending_launches,
            rollout,
            if self.converged { " | converged" } else { "" }
        )
    }
}

pub fn describe_change(c: &Change) -> String {
    match c {
        Change::FleetCreated { image, capacity } => format!("fleet created: {capacity} on {image}"),
        Change::FleetUpdated { fields } => format!("fleet updated: {}", fields.join(", ")),
        Change::ImageChanged { from, to } => format!("image {from} -> {to}"),
        Change::CapacityChanged { from, to } => format!("capacity {from} -> {to}"),
        Change::Ignored { reason } => format!("ignored: {reason}"),
        Change::RolloutStarted { rollout, to, .. } => format!("rollout {rollout} to {to} started"),
        Change::RolloutSuperseded { rollout } => format!("rollout {rollout} superseded"),
        Change::WaveStarted {
            rollout,
            wave,
            launches,
        } => format!("rollout {rollout} wave {wave}: launching {launches}"),
        Change::WaveHealthy { rollout, wave } => format!("rollout {rollout} wave {wave} healthy"),
        Change::RolloutSucceeded { rollout } => format!("rollout {rollout} succeeded"),
        Change::LaunchDecided {
            token,
            image,
            count,
            reason,
        } => format!("launch {count} on {image} ({reason}) [{token}]"),
        Change::LaunchRetried { token } => format!("launch {token} retried"),
        Change::Launched { instances, .. } => format!("launched {}", join(instances)),
        Change::LaunchFailed { token, error } => format!("launch {token} failed: {error}"),
        Change::TerminationDecided { instance, reason } => {
            format!("terminate {instance} ({reason})")
        }
        Change::Terminated { instances } => format!("terminated {}", join(instances)),
        Change::TerminationFailed { instances, error } => {
            format!("terminate {} failed: {error}", join(instances))
        }
        Change::HealthChanged { instance, health } => format!("{instance} {}", health_word(health)),
        Change::StateChanged { instance, state } => format!("{instance} {}", state.as_str()),
        Change::Vanished { instance, state } => format!("{instance} vanished ({state})"),
    }
}

fn join(ids: &[impl std::fmt::Display]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Printer {
    pub fn message(&self, m: &str) -> Result<()> {
        if self.json {
            print_json(&json!({ "message": m }))
        } else {
            say!("{m}");
            Ok(())
        }
    }

    pub fn fleet_report(&self, r: &FleetReport) -> Result<()> {
        if self.json {
            return print_json(r);
        }
        say!("fleet {} (version {})", r.fleet, r.version);
        for c in &r.changes {
            say!("  {}", describe_change(c));
        }
        Ok(())
    }

    pub fn published(&self, intent: &Intent, id: &str) -> Result<()> {
        let (detail_type, detail) = intent.to_detail();
        if self.json {
            return print_json(
                &json!({ "event_id": id, "detail_type": detail_type, "detail": detail }),
            );
        }
        say!("published {detail_type} {detail} (event {id})");
        Ok(())
    }

    pub fn fleet_list(&self, fleets: &[Fleet]) -> Result<()> {
        let rows: Vec<Progress> = fleets.iter().map(Progress::of).collect();
        if self.json {
            return print_json(&rows);
        }
        say!(
            "{:<20} {:<22} {:>8} {:>8} {:>7}",
            "FLEET",
            "IMAGE",
            "CAPACITY",
            "HEALTHY",
            "STATUS"
        );
        for p in rows {
            let status = if p.converged { "ok" } else { "moving" };
            say!(
                "{:<20} {:<22} {:>8} {:>8} {:>7}",
                p.fleet,
                p.image,
                p.capacity,
                p.healthy_on_image,
                status
            );
        }
        Ok(())
    }

    pub fn status(&self, fleet: &Fleet) -> Result<()> {
        let progress = Progress::of(fleet);
        let instances: Vec<_> = fleet.live_instances().collect();
        if self.json {
            return print_json(&json!({
                "fleet": fleet.spec.name,
                "version": fleet.version,
                "spec": fleet.spec,
                "progress": progress,
                "rollout": fleet.rollout,
                "pending_launches": fleet.pending,
                "instances": instances,
            }));
        }
        say!("{}", progress.line());
        say!(
            "  version {} | policy max_surge {} max_unavailable {}",
            fleet.version,
            fleet.spec.policy.max_surge,
            fleet.spec.policy.max_unavailable
        );
        if let Some(r) = &fleet.rollout {
            let from = r
                .from
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "-".into());
            say!(
                "  rollout {} {from} -> {}: {:?}, {} waves",
                r.id,
                r.to,
                r.status,
                r.waves.len()
            );
        }
        say!(
            "  {:<21} {:<22} {:<14} {:<28} LAUNCHED",
            "INSTANCE",
            "IMAGE",
            "STATE",
            "HEALTH"
        );
        for i in instances {
            let state = if i.disposal.is_some() {
                format!("{} (leaving)", i.state.as_str())
            } else {
                i.state.as_str().to_string()
            };
            say!(
                "  {:<21} {:<22} {:<14} {:<28} {}",
                i.id,
                i.image,
                state,
                health_word(&i.health),
                i.launched_at.format("%Y-%m-%dT%H:%M:%SZ")
            );
        }
        Ok(())
    }

    pub fn history(&self, entries: &[HistoryEntry]) -> Result<()> {
        if self.json {
            return print_json(&entries);
        }
        for e in entries {
            let event = e
                .cause
                .event_id
                .as_deref()
                .map(|id| format!(" event {id}"))
                .unwrap_or_default();
            say!(
                "v{:<4} {} {}{}",
                e.version,
                e.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                e.cause.detail_type,
                event
            );
            for c in &e.changes {
                say!("        {}", describe_change(c));
            }
        }
        Ok(())
    }

    pub fn progress(&self, p: &Progress) -> Result<()> {
        if self.json {
            say!("{}", serde_json::to_string(p)?);
        } else {
            say!("{}", p.line());
        }
        Ok(())
    }

    pub fn delivery(&self, d: &Delivery) -> Result<()> {
        if self.json {
            say!("{}", serde_json::to_string(d)?);
            return Ok(());
        }
        match (&d.report, &d.error) {
            (Some(r), _) => {
                for f in &r.fleets {
                    say!(
                        "{} {} -> {} {:?}: {} changes",
                        d.function,
                        d.detail_type,
                        f.fleet,
                        f.outcome,
                        f.changes.len()
                    );
                }
            }
            (None, Some(e)) => say!("{} {} rejected: {e}", d.function, d.detail_type),
            _ => {}
        }
        Ok(())
    }
}
