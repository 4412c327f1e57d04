//! What the CLI prints: tables for people, `--output json` with a stable shape for scripts.

use crate::fleet::Deleted;
use crate::rollout::status_word;
use anyhow::Result;
use chrono::Utc;
use phoenix_aws::controller::Adopted;
use phoenix_aws::FleetReport;
use phoenix_core::dryrun::RolloutPlan;
use phoenix_core::events::{Cause, Intent};
use phoenix_core::history::HistoryEntry;
use phoenix_core::history::{
    describe, rollout_target, BudgetUse, Explanation, Link, LinkKind, Snapshot,
};
use phoenix_core::model::{
    retires_at, Drift, Fleet, Health, Instance, RolloutPolicy, RolloutStatus, Target, Timestamp,
};
use phoenix_core::timeline::{MarkerKind, Timeline};
use phoenix_core::{FleetName, ImageId, InstanceId};
use phoenix_local::Delivery;
use phoenix_protocol::Preview;
use serde::Serialize;
use serde_json::json;
use std::path::PathBuf;

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
        Health::Unhealthy { reason, .. } => format!("unhealthy ({reason})"),
    }
}

/// How far a fleet is from its spec (`rollout wait`/`watch` lines, `fleet list` rows).
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
    pub budget: BudgetLimits,
    pub rollout: Option<RolloutProgress>,
    pub converged: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BudgetLimits {
    pub max_total: u32,
    pub min_healthy: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutProgress {
    pub id: u64,
    pub from: Option<ImageId>,
    pub to: ImageId,
    pub status: RolloutStatus,
    pub active: bool,
    /// The latest wave started (0 before the first).
    pub wave: u32,
    /// Waves started.
    pub waves: usize,
    pub healthy_waves: usize,
    /// Why it rolled back or was aborted.
    pub reason: Option<String>,
    /// Held by the fleet's rollout windows or a freeze: why, and when it goes on.
    pub waiting: Option<String>,
}

impl Progress {
    pub fn of(fleet: &Fleet) -> Self {
        let live: Vec<_> = fleet.live_instances().collect();
        // On the spec: its image and launch definition (an instance that drifted does not count).
        let target = phoenix_core::model::Target::of(fleet);
        let on_image = live.iter().filter(|i| target.matches(i)).count();
        let healthy = live.iter().filter(|i| i.is_healthy()).count();
        let healthy_on_image = live
            .iter()
            .filter(|i| target.matches(i) && i.is_healthy())
            .count();
        let rollout = fleet.rollout.as_ref().map(|r| RolloutProgress {
            id: r.id,
            from: r.from.clone(),
            to: r.to.clone(),
            status: r.status,
            active: r.status.is_active(),
            wave: r.waves.last().map_or(0, |w| w.number),
            waves: r.waves.len(),
            healthy_waves: r.waves.iter().filter(|w| w.healthy_at.is_some()).count(),
            reason: r.reason.clone(),
            waiting: r.waiting.as_ref().map(window_wait),
        });
        let rollout_done = fleet.rollout.as_ref().is_none_or(|r| !r.status.is_active());
        let capacity = fleet.spec.capacity as usize;
        let budget = fleet.budget();
        Progress {
            fleet: fleet.spec.name.to_string(),
            image: fleet.spec.image.to_string(),
            capacity: fleet.spec.capacity,
            live: live.len(),
            healthy,
            on_image,
            healthy_on_image,
            pending_launches: fleet.pending_count(),
            budget: BudgetLimits {
                max_total: budget.max_total,
                min_healthy: budget.min_healthy,
            },
            rollout,
            converged: rollout_done
                && fleet.pending.is_empty()
                && live.len() == capacity
                && healthy_on_image == capacity,
        }
    }

    pub fn line(&self) -> String {
        let rollout = match &self.rollout {
            Some(r) if r.active => format!(
                " | rollout {} {} wave {} ({} healthy){}",
                r.id,
                status_word(r.status),
                r.wave,
                r.healthy_waves,
                r.waiting
                    .as_ref()
                    .map(|w| format!(", waiting: {w}"))
                    .unwrap_or_default()
            ),
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

/// A rollout held by its windows: why, and when it goes on.
fn window_wait(w: &phoenix_core::model::WindowWait) -> String {
    match w.opens {
        Some(t) => format!("{}; goes on at {}", w.reason, ts(t)),
        None => w.reason.clone(),
    }
}

pub fn describe_change(c: &phoenix_core::events::Change) -> String {
    describe(c)
}
fn join(ids: &[impl std::fmt::Display]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn hm(t: Timestamp) -> String {
    t.format("%H:%M:%S").to_string()
}

/// How long ago `since` was, in its largest two units: `3d4h`, `5h12m`, `40s`.
fn age(now: Timestamp, since: Timestamp) -> String {
    let s = (now - since).num_seconds().max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

/// Where an instance on its way out is: deregistering, draining until, held by the terminating
/// hook until, terminating.
fn way_out_word(stage: &phoenix_core::model::Stage) -> String {
    use phoenix_core::model::Stage;
    match stage {
        Stage::Deregister => "deregistering".into(),
        Stage::Draining { until, .. } => format!("draining to {}", hm(*until)),
        Stage::Hook { until, .. } => format!("terminating hook to {}", hm(*until)),
        Stage::Terminate => "leaving".into(),
    }
}

fn ts(t: Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn cause_line(c: &Cause) -> String {
    let mut s = c.detail_type.clone();
    if let Some(id) = &c.event_id {
        s.push_str(&format!(" event {id}"));
    }
    s.push_str(&format!(" (source {}", c.source));
    if let Some(t) = c.event_time {
        s.push_str(&format!(", sent {}", t.format("%Y-%m-%dT%H:%M:%SZ")));
    }
    s.push(')');
    s
}

fn policy_line(p: &RolloutPolicy) -> String {
    let health = serde_json::to_value(p.health_check)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    format!(
        "max_surge {}, max_unavailable {}, health_check {health}",
        p.max_surge, p.max_unavailable
    )
}

fn budget_line(b: &BudgetUse) -> String {
    format!(
        "{} of at most {} instances ({} live, {} of them leaving, {} launching), {} healthy staying of at least {}",
        b.in_flight, b.max_total, b.live, b.leaving, b.launching, b.healthy, b.min_healthy
    )
}

/// What a rollout goes from and to: `ami-1 -> ami-2`, `ami-1 -> ami-2 (instance_type
/// changed)`, or `to the new definition (instance_type changed)` when the image stays.
fn rollout_span(from: Option<&ImageId>, to: &ImageId, changed: &[String]) -> String {
    let target = rollout_target(from, to, changed);
    match from {
        Some(f) if f == to && !changed.is_empty() => format!("to {target}"),
        Some(f) => format!("{f} -> {target}"),
        None => format!("- -> {target}"),
    }
}

/// The passes of a plan, one line each (`plan`, `fleet apply --diff`).
fn plan_passes(plan: &RolloutPlan) {
    say!(
        "{:>8} {:>5} {:>7} {:>6} {:>8}  TERMINATES",
        "AT",
        "WAVE",
        "LAUNCH",
        "PEAK",
        "HEALTHY"
    );
    for p in &plan.passes {
        let at = format!("+{}m{:02}s", p.at_seconds / 60, p.at_seconds % 60);
        let wave = p.wave.map(|w| w.to_string()).unwrap_or_else(|| "-".into());
        let ids: Vec<String> = p.terminate.iter().map(ToString::to_string).collect();
        say!(
            "{at:>8} {wave:>5} {:>7} {:>6} {:>8}  {}",
            p.launch,
            p.peak,
            p.healthy_floor,
            ids.join(" ")
        );
        if let Some(pause) = &p.pause {
            say!("{:>8} {}", "", pause);
        }
    }
}

/// Why an instance differs from the spec, for people: `instance_type changed; subnet ...`.
fn drift_words(drift: &[Drift]) -> String {
    drift
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Each live instance, with why it differs from the fleet's spec (empty: it matches).
fn drifts(fleet: &Fleet) -> Vec<(&Instance, Vec<Drift>)> {
    let target = Target::of(fleet);
    fleet
        .live_instances()
        .map(|i| (i, target.drift(i)))
        .collect()
}

/// `2 of 6 instances differ from the spec (instance_type changed)`, or that all match.
fn drift_summary(drifts: &[(&Instance, Vec<Drift>)]) -> Option<String> {
    if drifts.is_empty() {
        return None;
    }
    let differ: Vec<&Vec<Drift>> = drifts
        .iter()
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
        .collect();
    if differ.is_empty() {
        return Some(format!("all {} instances match the spec", drifts.len()));
    }
    let mut reasons: Vec<String> = Vec::new();
    for r in differ
        .iter()
        .flat_map(|d| d.iter().map(ToString::to_string))
    {
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    Some(format!(
        "{} of {} instances differ from the spec ({})",
        differ.len(),
        drifts.len(),
        reasons.join("; ")
    ))
}

fn instance_header() {
    say!(
        "  {:<21} {:<22} {:<18} {:<28} LAUNCHED",
        "INSTANCE",
        "IMAGE",
        "STATE",
        "HEALTH"
    );
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

    /// A remark for people, on stderr (so it never mixes with JSON on stdout).
    pub fn note(&self, m: &str) {
        eprintln!("{m}");
    }

    /// A plain line on stdout (table output only).
    pub fn line(&self, m: &str) {
        if !self.json {
            say!("{m}");
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

    /// `phoenix plan`: one line per pass that does something, then the totals.
    /// The live instances that reach the fleet's `max_instance_lifetime` within a day of `now`,
    /// soonest first (each goes then or later: launch first, as the budgets and windows allow).
    pub fn retirements(&self, fleet: &Fleet, now: Timestamp) -> Result<()> {
        let Some(lifetime) = fleet.spec.max_instance_lifetime else {
            if self.json {
                return print_json(&json!({"fleet": fleet.spec.name, "retirements": []}));
            }
            say!(
                "{}: no max_instance_lifetime: no instance retires for age",
                fleet.spec.name
            );
            let protected: Vec<String> = fleet
                .live_instances()
                .filter(|i| i.protected)
                .map(|i| i.id.to_string())
                .collect();
            if !protected.is_empty() {
                say!(
                    "  protected (no rollout or scale-in takes them; a rollout waits for them): {}",
                    protected.join(" ")
                );
            }
            return Ok(());
        };
        let horizon = now + chrono::Duration::days(1);
        let mut due: Vec<(Timestamp, &Instance)> = fleet
            .live_instances()
            .filter(|i| i.disposal.is_none() && !i.protected)
            .map(|i| (retires_at(i, lifetime), i))
            .filter(|(t, _)| *t <= horizon)
            .collect();
        due.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        let protected: Vec<String> = fleet
            .live_instances()
            .filter(|i| i.protected)
            .map(|i| i.id.to_string())
            .collect();
        if self.json {
            let list: Vec<serde_json::Value> = due
                .iter()
                .map(|(t, i)| json!({"instance": i.id, "launched_at": i.launched_at, "retires_at": t}))
                .collect();
            return print_json(&json!({
                "fleet": fleet.spec.name,
                "max_instance_lifetime": lifetime.to_string(),
                "retirements": list,
                "protected": protected,
            }));
        }
        say!(
            "{}: {} instances reach max_instance_lifetime {lifetime} in the next day",
            fleet.spec.name,
            due.len()
        );
        for (t, i) in &due {
            let when = if *t <= now {
                "due now".to_string()
            } else {
                format!("from {}", t.format("%Y-%m-%dT%H:%M:%SZ"))
            };
            say!(
                "  {} {when} (launched {}, {} old)",
                i.id,
                i.launched_at.format("%Y-%m-%dT%H:%M:%SZ"),
                age(now, i.launched_at)
            );
        }
        if !protected.is_empty() {
            say!(
                "  protected (no rollout, retirement or scale-in takes them; a rollout waits for \
                 them): {}",
                protected.join(" ")
            );
        }
        Ok(())
    }

    pub fn plan(&self, plan: &RolloutPlan) -> Result<()> {
        if self.json {
            return print_json(plan);
        }
        if let Some(reason) = &plan.refused {
            say!("{}: nothing to roll out: {reason}", plan.fleet);
            return Ok(());
        }
        say!(
            "{}: {} -> {}, capacity {}, at most {} instances, at least {} healthy",
            plan.fleet,
            plan.from,
            plan.to,
            plan.capacity,
            plan.budget.max_total,
            plan.budget.min_healthy
        );
        plan_passes(plan);
        say!(
            "{} waves; no side effect: nothing was launched or terminated",
            plan.waves()
        );
        Ok(())
    }

    /// `fleet apply --diff`: the fields the file changes, whether it rolls and why, the
    /// instances that would differ from the spec, the passes; or the fleet it would create.
    pub fn preview(&self, preview: &Preview) -> Result<()> {
        if self.json {
            return print_json(preview);
        }
        let p = match preview {
            Preview::Create {
                fleet,
                capacity,
                image,
                spec,
                ..
            } => {
                let made_of = spec
                    .instance_type
                    .as_ref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default();
                say!(
                    "fleet {fleet} does not exist: applying the file creates it and launches {capacity} instances on {image}{made_of}"
                );
                say!("no side effect: nothing was written or published");
                return Ok(());
            }
            Preview::Update(p) => p,
        };
        match p.fields.len() {
            0 => say!(
                "fleet {} (version {}): no field would change",
                p.fleet,
                p.version
            ),
            n => say!(
                "fleet {} (version {}): {n} field{} would change",
                p.fleet,
                p.version,
                if n == 1 { "" } else { "s" }
            ),
        }
        for f in &p.fields {
            say!("  {}", f.describe());
        }
        say!("{}", p.verdict());
        match p.drift.len() {
            _ if p.live == 0 => {}
            0 => say!("all {} instances would match the spec", p.live),
            n => {
                say!("{n} of {} instances would differ from the spec:", p.live);
                for d in &p.drift {
                    say!(
                        "  {:<21} {:<22} {}",
                        d.instance,
                        d.image,
                        drift_words(&d.drift)
                    );
                }
            }
        }
        if !p.plan.passes.is_empty() {
            say!(
                "capacity {}, at most {} instances, at least {} healthy:",
                p.plan.capacity,
                p.plan.budget.max_total,
                p.plan.budget.min_healthy
            );
            plan_passes(&p.plan);
            say!("{} waves", p.plan.waves());
        }
        say!("no side effect: nothing was written or published");
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
            "{:<20} {:<22} {:>8} {:>8} {:>5}  {:<8} ROLLOUT",
            "FLEET",
            "IMAGE",
            "CAPACITY",
            "HEALTHY",
            "LIVE",
            "STATUS"
        );
        for p in rows {
            let status = if p.converged { "ok" } else { "moving" };
            let rollout = p
                .rollout
                .as_ref()
                .map(|r| format!("{} {}", r.id, status_word(r.status)))
                .unwrap_or_else(|| "-".into());
            say!(
                "{:<20} {:<22} {:>8} {:>8} {:>5}  {:<8} {}",
                p.fleet,
                p.image,
                p.capacity,
                p.healthy_on_image,
                p.live,
                status,
                rollout
            );
        }
        Ok(())
    }

    fn status_json(fleet: &Fleet) -> serde_json::Value {
        let drifts = drifts(fleet);
        // Each instance as stored, with whether it matches the spec and, if not, why.
        let instances: Vec<serde_json::Value> = drifts
            .iter()
            .map(|(i, drift)| {
                let mut v = json!(i);
                v["matches_spec"] = json!(drift.is_empty());
                v["drift"] = json!(drift);
                v
            })
            .collect();
        let differ = drifts.iter().filter(|(_, d)| !d.is_empty()).count();
        json!({
            "fleet": fleet.spec.name,
            "version": fleet.version,
            "spec": fleet.spec,
            "definition": fleet.definition().fingerprint(),
            "template_version": fleet.template_version,
            "spec_drift": {
                "live": drifts.len(),
                "differ": differ,
                "summary": drift_summary(&drifts),
            },
            "budget": BudgetUse::of(fleet),
            "progress": Progress::of(fleet),
            "rollout": fleet.rollout,
            "repairs": Self::repairs_json(fleet),
            "pending_launches": fleet.pending,
            "takeover": fleet.takeover,
            "queued_intents": fleet.inbox,
            "instances": instances,
        })
    }

    /// Whether repairs are halted by the breaker, why, and how to resume them.
    fn repairs_json(fleet: &Fleet) -> serde_json::Value {
        match &fleet.breaker {
            Some(b) => json!({
                "halted": true,
                "since": b.tripped_at,
                "unhealthy": b.unhealthy,
                "reason": b.reason,
                "shared_attribute": b.shared,
                "resume": format!("phoenix resume-repairs {}", fleet.spec.name),
            }),
            None => json!({"halted": false}),
        }
    }

    /// Repairs halted, and a stalled rollout: what is wrong and what the operator can do.
    fn attention_lines(fleet: &Fleet) {
        let name = &fleet.spec.name;
        let now = Utc::now();
        for (offering, u) in fleet.unavailable.iter().filter(|(_, u)| u.until > now) {
            say!(
                "  no capacity for {offering} since {}: launches skip it until {} ({})",
                hm(u.since),
                hm(u.until),
                u.reason
            );
        }
        let target = Target::of(fleet);
        let holding: Vec<String> = fleet
            .live_instances()
            .filter(|i| i.protected && i.disposal.is_none() && !target.matches(i))
            .map(|i| i.id.to_string())
            .collect();
        if !holding.is_empty() && fleet.rollout.as_ref().is_some_and(|r| r.status.is_active()) {
            say!(
                "  protected, holding the rollout back: {} (phoenix instance unprotect INSTANCE)",
                holding.join(" ")
            );
        }
        if let Some(t) = &fleet.takeover {
            let left: Vec<String> = fleet
                .live_instances()
                .filter(|i| i.in_asg())
                .map(|i| i.id.to_string())
                .collect();
            say!(
                "  taking over Auto Scaling group {} (since {}): {} of {} still in it{}",
                t.group,
                hm(t.started_at),
                left.len(),
                t.instances,
                if left.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", detached a batch at a time within the budget: {}",
                        left.join(" ")
                    )
                }
            );
        }
        for arn in &fleet.lb_missing {
            say!(
                "  target group {} does not exist: no instance that may serve is taken away until \
                 it is back or out of the fleet file ({arn})",
                phoenix_core::model::group_name(arn)
            );
        }
        let hooked: Vec<String> = fleet
            .live_instances()
            .filter(|i| {
                i.launch_hook.as_ref().is_some_and(|h| h.is_waiting()) && i.disposal.is_none()
                    || matches!(
                        i.disposal.as_ref().map(|d| &d.stage),
                        Some(phoenix_core::model::Stage::Hook { .. })
                    )
            })
            .map(|i| i.id.to_string())
            .collect();
        if !hooked.is_empty() {
            say!(
                "  waiting on a lifecycle hook: {} (phoenix lifecycle complete INSTANCE --hook \
                 launching|terminating --result continue|abandon)",
                hooked.join(" ")
            );
        }
        if let Some(b) = &fleet.breaker {
            let shared = b
                .shared
                .as_ref()
                .map(|s| format!("; they share {s}"))
                .unwrap_or_default();
            say!(
                "  repairs halted since {}: {}{shared}",
                ts(b.tripped_at),
                if b.reason.is_empty() {
                    format!("{} instances unhealthy at once", b.unhealthy)
                } else {
                    b.reason.clone()
                }
            );
            say!(
                "    they resume by themselves once fewer are unhealthy; to resume now: phoenix resume-repairs {name}"
            );
        }
        if let Some((r, s)) = fleet
            .rollout
            .as_ref()
            .and_then(|r| r.stalled.as_ref().map(|s| (r, s)))
        {
            say!(
                "  rollout {} stalled since {}: {}",
                r.id,
                ts(s.since),
                s.reason
            );
            for w in &s.waiting_on {
                say!("    waiting on {w}");
            }
            say!("    {}", stall_choices(name));
        }
        if let Some((r, w)) = fleet
            .rollout
            .as_ref()
            .filter(|r| r.status.is_active())
            .and_then(|r| r.waiting.as_ref().map(|w| (r, w)))
        {
            say!(
                "  rollout {} waits for its window since {}: {}",
                r.id,
                ts(w.since),
                window_wait(w)
            );
            say!("    to let it go on now: phoenix rollout resume {name} --now");
        }
    }

    /// The live instances, each with whether it matches the spec (SPEC: `ok`, or why not),
    /// after a line that sums it up.
    fn instance_rows(fleet: &Fleet, now: Timestamp) {
        let drifts = drifts(fleet);
        if let Some(summary) = drift_summary(&drifts) {
            say!("  {summary}");
        }
        let lifetime = fleet.spec.max_instance_lifetime;
        say!(
            "  {:<21} {:<22} {:<18} {:<28} {:<14} {:<10} {:<20}  SPEC",
            "INSTANCE",
            "IMAGE",
            "STATE",
            "HEALTH",
            "ZONE",
            "AGE",
            if lifetime.is_some() {
                "RETIRES"
            } else {
                "LAUNCHED"
            }
        );
        for (i, drift) in &drifts {
            let state = match (&i.disposal, &i.launch_hook) {
                (Some(d), _) => format!("{} ({})", i.state.as_str(), way_out_word(&d.stage)),
                (None, Some(h)) if h.is_waiting() => {
                    format!("{} (launching hook to {})", i.state.as_str(), hm(h.until))
                }
                _ => i.state.as_str().to_string(),
            };
            let mut spec = if drift.is_empty() {
                "ok".to_string()
            } else {
                drift_words(drift)
            };
            if i.protected {
                spec.push_str(" (protected)");
            }
            match &i.adopted {
                Some(a) if a.asg.is_some() => spec.push_str(" (adopted, in its group)"),
                Some(_) => spec.push_str(" (adopted)"),
                None => {}
            }
            let when = match lifetime {
                Some(l) if !i.protected => retires_at(i, l),
                _ => i.launched_at,
            };
            say!(
                "  {:<21} {:<22} {:<18} {:<28} {:<14} {:<10} {:<20}  {spec}",
                i.id,
                i.image,
                state,
                health_word(&i.health),
                fleet.zone_of(i).unwrap_or_else(|| "-".into()),
                age(now, i.launched_at),
                if lifetime.is_some() && i.protected {
                    "never (protected)".to_string()
                } else {
                    when.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                }
            );
        }
    }

    fn rollout_line(fleet: &Fleet) {
        if let Some(r) = &fleet.rollout {
            let reason = r
                .reason
                .as_ref()
                .map(|why| format!(" ({why})"))
                .unwrap_or_default();
            let changed = r
                .definition
                .as_ref()
                .map(|d| d.fields.clone())
                .unwrap_or_default();
            say!(
                "  rollout {} {}: {}{reason}, {} waves",
                r.id,
                rollout_span(r.from.as_ref(), &r.to, &changed),
                status_word(r.status),
                r.waves.len()
            );
        }
    }

    /// Intents waiting in the fleet's inbox (their events kept losing the race for the fleet);
    /// the next reconcile applies them.
    fn queued_lines(fleet: &Fleet) {
        for q in &fleet.inbox {
            say!(
                "  queued {} of {}{} (applied by the next reconcile)",
                q.cause.detail_type,
                ts(q.event_time),
                q.cause
                    .event_id
                    .as_deref()
                    .map(|id| format!(" event {id}"))
                    .unwrap_or_default()
            );
        }
    }

    pub fn status(&self, fleet: &Fleet) -> Result<()> {
        if self.json {
            return print_json(&Self::status_json(fleet));
        }
        say!("{}", Progress::of(fleet).line());
        say!(
            "  version {} | policy max_surge {} max_unavailable {}",
            fleet.version,
            fleet.spec.policy.max_surge,
            fleet.spec.policy.max_unavailable
        );
        Self::zones_line(fleet);
        Self::queued_lines(fleet);
        Self::rollout_line(fleet);
        Self::attention_lines(fleet);
        Self::instance_rows(fleet, Utc::now());
        Ok(())
    }

    /// Live instances staying, per zone of the fleet (with more than one zone).
    fn zones_line(fleet: &Fleet) {
        let zones = fleet.zones();
        if zones.len() < 2 {
            return;
        }
        let counts: Vec<String> = zones
            .iter()
            .map(|(z, _)| {
                let n = fleet
                    .live_instances()
                    .filter(|i| i.disposal.is_none() && fleet.zone_of(i).as_ref() == Some(z))
                    .count();
                format!("{z} {n}")
            })
            .collect();
        say!("  zones {}", counts.join(", "));
    }

    pub fn fleet_show(&self, fleet: &Fleet) -> Result<()> {
        if self.json {
            let mut v = Self::status_json(fleet);
            v["created_at"] = json!(fleet.created_at);
            return print_json(&v);
        }
        let spec = &fleet.spec;
        say!(
            "fleet {} (version {}, created {})",
            spec.name,
            fleet.version,
            ts(fleet.created_at)
        );
        say!("  image {} | capacity {}", spec.image, spec.capacity);
        say!("  policy {}", policy_line(&spec.policy));
        say!("  budget {}", budget_line(&BudgetUse::of(fleet)));
        if let Some(t) = &spec.instance_type {
            say!("  instance_type {t}");
        }
        if let Some(t) = &spec.launch_template {
            let name = t.name.as_deref().or(t.id.as_deref()).unwrap_or_default();
            match (&fleet.template_version, t.is_floating()) {
                (Some(v), true) => say!(
                    "  launch_template {name} {} (resolved to version {v})",
                    t.version.as_deref().unwrap_or("(default)")
                ),
                _ => say!(
                    "  launch_template {name} version {}",
                    t.version.as_deref().unwrap_or("(default)")
                ),
            }
        }
        say!(
            "  definition {} (what new instances are launched from)",
            fleet.definition().fingerprint()
        );
        if !spec.subnets.is_empty() {
            say!("  subnets {}", spec.subnets.join(", "));
        }
        if !spec.tags.is_empty() {
            let tags: Vec<String> = spec.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            say!("  tags {}", tags.join(", "));
        }
        Self::queued_lines(fleet);
        Self::rollout_line(fleet);
        Self::attention_lines(fleet);
        for p in &fleet.pending {
            say!(
                "  launching {} on {} ({}) [{}]",
                p.count,
                p.image,
                p.reason,
                p.token
            );
        }
        say!("{}", Progress::of(fleet).line());
        Self::instance_rows(fleet, Utc::now());
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
                ts(e.at),
                e.cause.detail_type,
                event
            );
            for c in &e.changes {
                say!("        {}", describe_change(c));
            }
        }
        Ok(())
    }

    pub fn snapshot(&self, s: &Snapshot) -> Result<()> {
        if self.json {
            return print_json(s);
        }
        say!(
            "fleet {} at {} (version {}, recorded {})",
            s.fleet,
            ts(s.at),
            s.version,
            ts(s.recorded_at)
        );
        say!(
            "  image {} | capacity {} | policy {}",
            s.image,
            s.capacity,
            policy_line(&s.policy)
        );
        say!("  budget {}", budget_line(&s.budget));
        match &s.rollout {
            Some(r) => say!(
                "  rollout {} {}: {}, wave {} ({} of {} waves healthy)",
                r.id,
                rollout_span(r.from.as_ref(), &r.to, &r.changed),
                status_word(r.status),
                r.wave,
                r.waves_healthy,
                r.waves.len()
            ),
            None => say!("  no rollout yet"),
        }
        for p in &s.pending_launches {
            say!(
                "  launching {} on {} ({}) [{}]",
                p.count,
                p.image,
                p.reason,
                p.token
            );
        }
        instance_header();
        for i in &s.instances {
            let health = match &i.health_reason {
                Some(r) => format!("{} ({r})", i.health),
                None => i.health.to_string(),
            };
            let state = if i.leaving.is_some() {
                format!("{} (leaving)", i.state.as_str())
            } else {
                i.state.as_str().to_string()
            };
            say!(
                "  {:<21} {:<22} {:<18} {:<28} {}",
                i.id,
                i.image,
                state,
                health,
                i.launched_at.format("%Y-%m-%dT%H:%M:%SZ")
            );
        }
        if !s.terminated.is_empty() {
            say!("  terminated by then: {}", join(&s.terminated));
        }
        Ok(())
    }

    pub fn explanation(&self, e: &Explanation) -> Result<()> {
        if self.json {
            return print_json(e);
        }
        let i = &e.instance;
        let health = match &i.health_reason {
            Some(r) => format!("{} ({r})", i.health),
            None => i.health.to_string(),
        };
        say!(
            "instance {} of fleet {}: {} on {}, {}",
            i.id,
            e.fleet,
            i.state.as_str(),
            i.image,
            health
        );
        let adopted = e.links.iter().find(|l| l.kind == LinkKind::Adopted);
        say!(
            "  launched {}{}{} | {} {}",
            ts(i.launched_at),
            if adopted.is_some() {
                " outside phoenix"
            } else {
                ""
            },
            i.terminated_at
                .map(|t| format!(", terminated {}", ts(t)))
                .unwrap_or_default(),
            if adopted.is_some() {
                "adopted as decision"
            } else {
                "launch decision"
            },
            e.token
        );
        if let Some(o) = &e.rollout {
            say!(
                "  launched in wave {} of rollout {} to {}, started {} by {}",
                o.wave,
                o.rollout,
                o.target(),
                ts(o.started_at),
                o.started_by
                    .as_ref()
                    .map(cause_line)
                    .unwrap_or_else(|| "an entry no longer in the history".into())
            );
        }
        // One block per history entry: its cause once, then what it did to the instance; the
        // policy and budget in force under the decisions (launch and termination).
        let mut section = "";
        let mut n = 0;
        while n < e.links.len() {
            let first = &e.links[n];
            let group: Vec<&Link> = e.links[n..]
                .iter()
                .take_while(|l| {
                    l.version == first.version && l.kind.is_launch() == first.kind.is_launch()
                })
                .collect();
            n += group.len();
            let title = if first.kind.is_launch() && adopted.is_some() {
                "WHY IT IS THE FLEET'S"
            } else if first.kind.is_launch() {
                "WHY IT WAS LAUNCHED"
            } else {
                "WHAT HAPPENED TO IT"
            };
            if title != section {
                say!("\n{title}");
                section = title;
            }
            say!(
                "  v{:<4} {}  {}",
                first.version,
                ts(first.at),
                cause_line(&first.cause)
            );
            for link in &group {
                let kind = serde_json::to_value(link.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
                    .unwrap_or_default();
                if link.kind == LinkKind::Other {
                    say!("        - {}", link.summary);
                } else {
                    say!("        - {kind}: {}", link.summary);
                }
            }
            let decided = group.iter().any(|l| {
                matches!(
                    l.kind,
                    LinkKind::LaunchDecided
                        | LinkKind::LaunchRetried
                        | LinkKind::TerminationDecided
                )
            });
            if decided {
                let d = &first.decision;
                say!(
                    "        policy   image {}, capacity {}, {}",
                    d.image,
                    d.capacity,
                    policy_line(&d.policy)
                );
                say!("        budget   {}", budget_line(&d.budget));
                if let Some(r) = &d.rollout {
                    say!(
                        "        rollout  {} to {}: {}, wave {}",
                        r.id,
                        r.target(),
                        status_word(r.status),
                        r.wave
                    );
                }
            }
        }
        Ok(())
    }

    pub fn timeline_written(&self, tl: &Timeline, files: &[PathBuf]) -> Result<()> {
        let count = |k: MarkerKind| tl.markers.iter().filter(|m| m.kind == k).count();
        if self.json {
            return print_json(&json!({
                "fleet": tl.fleet,
                "files": files,
                "start": tl.start,
                "end": tl.end,
                "lanes": tl.lanes.len(),
                "images": tl.images,
                "rollouts": tl.rollouts.len(),
                "markers": {
                    "health_failed": count(MarkerKind::HealthFailed),
                    "vanished": count(MarkerKind::Vanished),
                    "rollback": count(MarkerKind::Rollback),
                    "breaker_trip": count(MarkerKind::BreakerTrip),
                },
            }));
        }
        for f in files {
            say!("wrote {}", f.display());
        }
        say!(
            "fleet {}: {} instances on {} images, {} rollouts, {} health failures, {} vanished, {} rollbacks, {} breaker trips, {} to {} UTC",
            tl.fleet,
            tl.lanes.len(),
            tl.images.len(),
            tl.rollouts.len(),
            count(MarkerKind::HealthFailed),
            count(MarkerKind::Vanished),
            count(MarkerKind::Rollback),
            count(MarkerKind::BreakerTrip),
            ts(tl.start),
            ts(tl.end)
        );
        Ok(())
    }

    pub fn adopted(&self, a: &Adopted) -> Result<()> {
        if self.json {
            return print_json(a);
        }
        if let Some(g) = &a.group {
            say!(
                "taking over Auto Scaling group {g}: processes suspended; its instances are \
                 detached a batch at a time (`phoenix status {}` follows it)",
                a.fleet
            );
        }
        if a.adopted.is_empty() {
            say!("fleet {}: nothing new to adopt", a.fleet);
        } else {
            say!("fleet {} adopted {}", a.fleet, join(&a.adopted));
        }
        if !a.already.is_empty() {
            say!("already the fleet's: {}", join(&a.already));
        }
        if a.to_roll > 0 {
            say!(
                "{} on another image than the fleet's: rolled to it under the disruption budget",
                a.to_roll
            );
        }
        let live = a.adopted.len() + a.already.len();
        if live as u32 != a.capacity {
            say!(
                "the fleet's capacity is {}: {} instances {}",
                a.capacity,
                (live as i64 - i64::from(a.capacity)).abs(),
                if (live as u32) < a.capacity {
                    "are launched"
                } else {
                    "are scaled in"
                }
            );
        }
        Ok(())
    }

    pub fn released(&self, fleet: &FleetName, ids: &[InstanceId]) -> Result<()> {
        if self.json {
            return print_json(&serde_json::json!({"fleet": fleet, "released": ids}));
        }
        say!(
            "fleet {fleet} released {} (phoenix's tags removed; they keep running). Its capacity \
             is 0; its history stays (`phoenix fleet delete {fleet}` removes it)",
            if ids.is_empty() {
                "no instance".to_string()
            } else {
                join(ids)
            }
        );
        Ok(())
    }

    pub fn deleted(&self, d: &Deleted) -> Result<()> {
        if self.json {
            return print_json(d);
        }
        if !d.terminated.is_empty() {
            say!("terminated {}", join(&d.terminated));
        }
        say!("deleted fleet {} ({} items)", d.fleet, d.items);
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

/// What an operator can do about a stalled rollout. phoenix does not guess: it waits.
pub fn stall_choices(fleet: &phoenix_core::FleetName) -> String {
    format!(
        "choices: fix the cause and `phoenix rollout resume {fleet}` (another progress deadline), \
         `phoenix rollout abort {fleet}` (stay as it is), `phoenix rollout undo {fleet}` (go back), \
         or report an instance it waits on: `phoenix publish health-passed --instance ID` or \
         `phoenix publish health-failed --instance ID`"
    )
}
