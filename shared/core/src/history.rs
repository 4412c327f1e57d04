//! The append-only history of a fleet, and the fleet reconstructed from it at any past moment.
//!
//! Each committed change records its cause, the changes it made, and what it wrote: the fleet's
//! record and every instance record it touched. Replaying entries up to a moment therefore gives
//! back exactly the state that was live then — without reading anything but the history.

use crate::events::{Cause, Change};
use crate::ids::{FleetName, ImageId, InstanceId};
use crate::model::{
    Fleet, Health, Instance, Instances, Lifecycle, PendingLaunch, Rollout, RolloutPolicy,
    RolloutStatus, Timestamp, Wave,
};
use serde::{Deserialize, Serialize};

/// One committed change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub fleet: FleetName,
    pub version: u64,
    pub at: Timestamp,
    pub cause: Cause,
    pub changes: Vec<Change>,
    /// The fleet record as this change wrote it (spec, rollout, pending launches, counters).
    pub state: Fleet,
    /// The instance records this change wrote.
    #[serde(default)]
    pub instances: Vec<Instance>,
}

impl HistoryEntry {
    /// The entry for committing `next` (already at its new version), which touched `touched`.
    pub fn record<'a>(
        next: &Fleet,
        touched: impl IntoIterator<Item = &'a crate::ids::InstanceId>,
        cause: &Cause,
        changes: &[Change],
        at: Timestamp,
    ) -> Self {
        HistoryEntry {
            fleet: next.spec.name.clone(),
            version: next.version,
            at,
            cause: cause.clone(),
            changes: changes.to_vec(),
            state: next.clone(),
            instances: touched
                .into_iter()
                .filter_map(|id| next.instances.get(id).cloned())
                .collect(),
        }
    }
}

/// The fleet as it was just after the last entry at or before `at`, or `None` if it did not exist
/// yet. `entries` must be in version order (as the store returns them). Terminated instances are
/// kept in the map with `terminated_at` set, so a reconstruction also says what had gone.
pub fn replay(entries: &[HistoryEntry], at: Timestamp) -> Option<Fleet> {
    replay_while(entries, |e| e.at <= at)
}

/// The fleet as it was just after the entry of `version` (and every entry before it).
pub fn replay_to_version(entries: &[HistoryEntry], version: u64) -> Option<Fleet> {
    replay_while(entries, |e| e.version <= version)
}

fn replay_while(entries: &[HistoryEntry], keep: impl Fn(&HistoryEntry) -> bool) -> Option<Fleet> {
    let mut fleet: Option<Fleet> = None;
    let mut instances = Instances::new();
    for entry in entries.iter().take_while(|e| keep(e)) {
        for inst in &entry.instances {
            instances.insert(inst.id.clone(), inst.clone());
        }
        fleet = Some(entry.state.clone());
    }
    fleet.map(|mut f| {
        f.instances = instances;
        f.complete = true;
        f
    })
}

/// The entries recorded in `[since, until]` (either bound open when `None`), in version order.
pub fn between(
    entries: &[HistoryEntry],
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> Vec<&HistoryEntry> {
    entries
        .iter()
        .filter(|e| since.is_none_or(|s| e.at >= s) && until.is_none_or(|u| e.at <= u))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Describing changes
// ---------------------------------------------------------------------------------------------

/// The kind of a change as it is stored (`launch_decided`, `wave_started`, ...). Changes are read
/// by kind where a newer kind may not exist yet in this build (`replacement_halted`).
pub fn change_kind(c: &Change) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.get("change").and_then(|k| k.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// The change kind a circuit breaker records when it stops replacements.
pub const BREAKER_TRIP: &str = "replacement_halted";

/// Whether a change records a rollback (of any kind a rollout engine may record).
pub fn is_rollback(c: &Change) -> bool {
    let kind = change_kind(c);
    kind.contains("rollback") || kind.contains("rolling_back") || kind.contains("rolled_back")
}

/// Whether a change records a circuit breaker stopping replacements.
pub fn is_breaker_trip(c: &Change) -> bool {
    change_kind(c) == BREAKER_TRIP
}

fn health_word(h: &Health) -> String {
    match h {
        Health::Unknown => "unknown".into(),
        Health::Healthy => "healthy".into(),
        Health::Unhealthy { reason, .. } => format!("unhealthy ({reason})"),
    }
}

fn join(ids: &[impl std::fmt::Display]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The AWS request ids of the calls behind a change, as `describe` shows them.
fn requests(ids: &[String]) -> String {
    match ids {
        [] => String::new(),
        [one] => format!(" (AWS request {one})"),
        many => format!(" (AWS requests {})", many.join(", ")),
    }
}

/// One line saying what a change did, for people.
pub fn describe(c: &Change) -> String {
    match c {
        Change::FleetCreated { image, capacity } => format!("fleet created: {capacity} on {image}"),
        Change::FleetUpdated { fields } => format!("fleet updated: {}", fields.join(", ")),
        Change::ImageChanged { from, to } => format!("image {from} -> {to}"),
        Change::CapacityChanged { from, to } => format!("capacity {from} -> {to}"),
        Change::Ignored { reason } => format!("ignored: {reason}"),
        Change::RolloutStarted {
            rollout,
            from,
            to,
            changed,
        } => match (from, changed.is_empty()) {
            (Some(f), false) if f == to => {
                format!("rollout {rollout} started: {} changed", changed.join(", "))
            }
            (_, false) => format!(
                "rollout {rollout} to {to} started ({} changed too)",
                changed.join(", ")
            ),
            _ => format!("rollout {rollout} to {to} started"),
        },
        Change::TemplateVersionChanged { template, from, to } => match from {
            Some(from) => format!("launch template {template}: version {from} -> {to}"),
            None => format!("launch template {template} resolved to version {to}"),
        },
        Change::RolloutSuperseded { rollout } => format!("rollout {rollout} superseded"),
        Change::WaveStarted {
            rollout,
            wave,
            launches,
        } => format!("rollout {rollout} wave {wave}: launching {launches}"),
        Change::WaveHealthy { rollout, wave } => format!("rollout {rollout} wave {wave} healthy"),
        Change::RolloutSucceeded { rollout } => format!("rollout {rollout} succeeded"),
        Change::RolloutWaiting {
            rollout,
            reason,
            opens,
        } => match opens {
            Some(t) => format!(
                "rollout {rollout} waits: {reason}; goes on at {}",
                t.format("%Y-%m-%d %H:%M UTC")
            ),
            None => format!("rollout {rollout} waits: {reason}"),
        },
        Change::LaunchDecided {
            token,
            image,
            count,
            reason,
        } => format!("launch {count} on {image} ({reason}) [{token}]"),
        Change::LaunchRetried { token } => format!("launch {token} retried"),
        Change::Launched {
            instances,
            request_ids,
            ..
        } => format!("launched {}{}", join(instances), requests(request_ids)),
        Change::LaunchFailed { token, error } => format!("launch {token} failed: {error}"),
        Change::TerminationDecided { instance, reason } => {
            format!("terminate {instance} ({reason})")
        }
        Change::Terminated {
            instances,
            request_ids,
        } => format!("terminated {}{}", join(instances), requests(request_ids)),
        Change::TerminationFailed { instances, error } => {
            format!("terminate {} failed: {error}", join(instances))
        }
        Change::HealthChanged { instance, health } => format!("{instance} {}", health_word(health)),
        Change::StateChanged { instance, state } => format!("{instance} {}", state.as_str()),
        Change::Vanished { instance, state } => format!("{instance} vanished ({state})"),
        Change::RegistrationDecided { instances } => {
            format!("register {} with the target groups", join(instances))
        }
        Change::Registered {
            instances,
            request_ids,
        } => format!(
            "registered {} with the target groups{}",
            join(instances),
            requests(request_ids)
        ),
        Change::RegistrationFailed { instances, error } => {
            format!("register {} failed: {error}", join(instances))
        }
        Change::DrainStarted { instance, until } => format!(
            "{instance} deregistered, draining until {}",
            until.format("%H:%M:%S")
        ),
        Change::DeregistrationFailed { instances, error } => {
            format!("deregister {} failed: {error}", join(instances))
        }
        Change::Drained { instance, how } => format!("{instance} drained: {how}"),
        Change::LifecycleHookStarted {
            instance,
            hook,
            until,
        } => format!(
            "{instance} waits on the {} hook until {}",
            hook.as_str(),
            until.format("%H:%M:%S")
        ),
        Change::LifecycleHookCompleted {
            instance,
            hook,
            result,
            by,
        } => format!(
            "{instance} {} hook: {} ({})",
            hook.as_str(),
            result.as_str(),
            match by.as_str() {
                "timeout" => "timed out, the hook's default result",
                _ => "answered",
            }
        ),
        Change::TargetGroupMissing { group, reason } => format!(
            "target group {} does not exist ({reason}): no instance that may serve is taken away",
            crate::model::group_name(group)
        ),
        Change::TargetGroupFound { group } => {
            format!("target group {} is back", crate::model::group_name(group))
        }
        Change::OfferingsRefused {
            token,
            offerings,
            reason,
            until,
        } => format!(
            "launch {token}: EC2 had no capacity for {} ({reason}); launched on the next, and \
             none of them is tried again before {}",
            offerings.join(", "),
            until.format("%H:%M:%S")
        ),
        Change::CapacityUnavailable {
            token,
            tried,
            reason,
            until,
        } => format!(
            "launch {token}: EC2 had no capacity for any offering tried ({}; {reason}): the \
             fleet waits, tries again from {}, and rolls nothing back for it",
            tried.join(", "),
            until.format("%H:%M:%S")
        ),
        Change::ProtectionChanged {
            instance,
            protected: true,
            by,
        } => format!("{instance} protected from voluntary disruption ({by})"),
        Change::ProtectionChanged {
            instance,
            protected: false,
            by,
        } => format!("{instance} no longer protected ({by})"),
        Change::Adopted {
            token,
            from,
            instances,
        } => format!("adopted {} ({from}) as decision {token}", join(instances)),
        Change::Tagged { instances, retried } => format!(
            "tagged {} as the fleet's{}",
            join(instances),
            if *retried { " (asked again)" } else { "" }
        ),
        Change::TagFailed { instances, error } => {
            format!("tagging {} failed: {error}", join(instances))
        }
        Change::TakeoverStarted { group, instances } => format!(
            "taking over Auto Scaling group {group}: processes suspended, {instances} instances adopted"
        ),
        Change::DetachDecided { group, instances } => {
            format!("detach {} from Auto Scaling group {group}", join(instances))
        }
        Change::Detached {
            group,
            instances,
            request_ids,
        } => format!(
            "{} detached from Auto Scaling group {group}{}",
            join(instances),
            requests(request_ids)
        ),
        Change::DetachFailed {
            group,
            instances,
            error,
        } => format!(
            "detaching {} from Auto Scaling group {group} failed: {error}",
            join(instances)
        ),
        Change::TakeoverFinished { group } => format!(
            "took over Auto Scaling group {group}: no instance left in it (left suspended, not deleted)"
        ),
        Change::Released { instances } => format!("released {}", join(instances)),
        Change::Untagged { instances } => {
            format!("phoenix tags removed from {}", join(instances))
        }
        // Kinds newer than this function: their stored form says what they are.
        #[allow(unreachable_patterns)]
        other => describe_generic(other),
    }
}

/// `kind: field value, ...` from a change's stored form.
fn describe_generic(c: &Change) -> String {
    let value = serde_json::to_value(c).unwrap_or_default();
    let kind = change_kind(c).replace('_', " ");
    let fields: Vec<String> = value
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "change")
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k} {s}"),
            serde_json::Value::Array(items) => format!(
                "{k} {}",
                items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            other => format!("{k} {other}"),
        })
        .collect();
    if fields.is_empty() {
        kind
    } else {
        format!("{kind}: {}", fields.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------
// A past moment
// ---------------------------------------------------------------------------------------------

/// The disruption budget and how much of it is in use, counted as the planner counts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetUse {
    /// Most instances that may exist at once (capacity + surge).
    pub max_total: u32,
    /// Fewest healthy instances that must remain (capacity - unavailable).
    pub min_healthy: u32,
    /// Live instances (launched, not yet terminated), leaving ones included.
    pub live: u32,
    /// Live instances whose termination is decided.
    pub leaving: u32,
    /// Instances of launches decided but not yet seen.
    pub launching: u32,
    /// What counts against `max_total`: live instances not already being terminated (one that
    /// waits for its replacement's launch still counts), plus `launching`.
    pub in_flight: u32,
    /// Healthy instances that stay (running, healthy, no termination decided): what counts
    /// towards `min_healthy`.
    pub healthy: u32,
}

impl BudgetUse {
    pub fn of(fleet: &Fleet) -> Self {
        let budget = fleet.budget();
        let live: Vec<&Instance> = fleet.live_instances().collect();
        let leaving = live.iter().filter(|i| i.disposal.is_some()).count() as u32;
        let terminating = live
            .iter()
            .filter(|i| {
                i.disposal
                    .as_ref()
                    .is_some_and(|d| d.after_launch.is_none())
            })
            .count() as u32;
        let launching = fleet.pending_count();
        BudgetUse {
            max_total: budget.max_total,
            min_healthy: budget.min_healthy,
            live: live.len() as u32,
            leaving,
            launching,
            in_flight: live.len() as u32 - terminating + launching,
            healthy: live
                .iter()
                .filter(|i| i.is_healthy() && i.disposal.is_none())
                .count() as u32,
        }
    }
}

/// An instance at a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceView {
    pub id: InstanceId,
    pub image: ImageId,
    pub state: Lifecycle,
    /// `unknown`, `healthy` or `unhealthy`.
    pub health: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    pub launched_at: Timestamp,
    /// Why phoenix decided to terminate it, when it had.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaving: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminated_at: Option<Timestamp>,
}

impl InstanceView {
    pub fn of(i: &Instance) -> Self {
        let (health, health_reason) = match &i.health {
            Health::Unknown => ("unknown", None),
            Health::Healthy => ("healthy", None),
            Health::Unhealthy { reason, .. } => ("unhealthy", Some(reason.clone())),
        };
        InstanceView {
            id: i.id.clone(),
            image: i.image.clone(),
            state: i.state,
            health,
            health_reason,
            launched_at: i.launched_at,
            leaving: i.disposal.as_ref().map(|d| d.reason.clone()),
            terminated_at: i.terminated_at,
        }
    }
}

/// A rollout at a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutView {
    pub id: u64,
    pub from: Option<ImageId>,
    pub to: ImageId,
    pub status: RolloutStatus,
    pub active: bool,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// The wave under way (the latest started), 0 before the first.
    pub wave: u32,
    pub waves_healthy: u32,
    pub waves: Vec<Wave>,
    /// The launch definition's fields it changes (none: only the image).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// What a rollout rolls out, for people: `ami-2`, `ami-2 (instance_type changed)`, or, when
/// the image stays, `the new definition (instance_type changed)` — as the planner words the
/// terminations it decides for it.
pub fn rollout_target(from: Option<&ImageId>, to: &ImageId, changed: &[String]) -> String {
    match (changed.is_empty(), from == Some(to)) {
        (true, _) => to.to_string(),
        (false, true) => format!("the new definition ({} changed)", changed.join(", ")),
        (false, false) => format!("{to} ({} changed)", changed.join(", ")),
    }
}

/// The fields a rollout's change of launch definition changes.
fn definition_fields(r: &Rollout) -> Vec<String> {
    r.definition
        .as_ref()
        .map(|d| d.fields.clone())
        .unwrap_or_default()
}

impl RolloutView {
    pub fn of(r: &Rollout) -> Self {
        RolloutView {
            id: r.id,
            from: r.from.clone(),
            to: r.to.clone(),
            status: r.status,
            active: r.status.is_active(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            wave: r.waves.last().map_or(0, |w| w.number),
            waves_healthy: r.waves.iter().filter(|w| w.healthy_at.is_some()).count() as u32,
            waves: r.waves.clone(),
            changed: definition_fields(r),
        }
    }

    /// What it rolls out (`rollout_target`).
    pub fn target(&self) -> String {
        rollout_target(self.from.as_ref(), &self.to, &self.changed)
    }
}

/// What a fleet was at a moment, from its history alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub fleet: FleetName,
    /// The moment asked about.
    pub at: Timestamp,
    /// The last change at or before it: its version and when it was recorded.
    pub version: u64,
    pub recorded_at: Timestamp,
    pub image: ImageId,
    pub capacity: u32,
    pub policy: RolloutPolicy,
    pub budget: BudgetUse,
    pub rollout: Option<RolloutView>,
    pub pending_launches: Vec<PendingLaunch>,
    /// Live instances then, oldest first.
    pub instances: Vec<InstanceView>,
    /// Instances terminated by then (ids, in termination order).
    pub terminated: Vec<InstanceId>,
}

impl Snapshot {
    /// The snapshot of a (complete) fleet, as recorded at `recorded_at`, asked about at `at`.
    pub fn of(fleet: &Fleet, at: Timestamp, recorded_at: Timestamp) -> Self {
        let mut live: Vec<&Instance> = fleet.live_instances().collect();
        live.sort_by(|a, b| (a.launched_at, &a.id).cmp(&(b.launched_at, &b.id)));
        let mut gone: Vec<&Instance> = fleet.instances.values().filter(|i| !i.is_live()).collect();
        gone.sort_by(|a, b| (a.terminated_at, &a.id).cmp(&(b.terminated_at, &b.id)));
        Snapshot {
            fleet: fleet.spec.name.clone(),
            at,
            version: fleet.version,
            recorded_at,
            image: fleet.spec.image.clone(),
            capacity: fleet.spec.capacity,
            policy: fleet.spec.policy.clone(),
            budget: BudgetUse::of(fleet),
            rollout: fleet.rollout.as_ref().map(RolloutView::of),
            pending_launches: fleet.pending.clone(),
            instances: live.into_iter().map(InstanceView::of).collect(),
            terminated: gone.into_iter().map(|i| i.id.clone()).collect(),
        }
    }
}

/// The fleet at `at`, from its history alone; `None` before it was created.
pub fn snapshot(entries: &[HistoryEntry], at: Timestamp) -> Option<Snapshot> {
    let fleet = replay(entries, at)?;
    let recorded_at = entries
        .iter()
        .take_while(|e| e.at <= at)
        .last()
        .map_or(at, |e| e.at);
    Some(Snapshot::of(&fleet, at, recorded_at))
}

// ---------------------------------------------------------------------------------------------
// Why an instance came and went
// ---------------------------------------------------------------------------------------------

/// A step in an instance's life, in the order recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    LaunchDecided,
    LaunchRetried,
    Launched,
    LaunchFailed,
    /// EC2 had no capacity for an offering its launch tried first.
    OfferingsRefused,
    /// Taken into the fleet rather than launched by it.
    Adopted,
    /// Given back by the fleet.
    Released,
    Healthy,
    HealthFailed,
    StateChanged,
    Vanished,
    TerminationDecided,
    Terminated,
    TerminationFailed,
    /// Any other change that names the instance (kinds newer than this list among them).
    Other,
}

impl LinkKind {
    /// Whether the step belongs to the instance's launch (else to its termination or life).
    pub fn is_launch(self) -> bool {
        matches!(
            self,
            LinkKind::LaunchDecided
                | LinkKind::LaunchRetried
                | LinkKind::Launched
                | LinkKind::LaunchFailed
                | LinkKind::OfferingsRefused
                | LinkKind::Adopted
        )
    }
}

/// The fleet as a decision saw it: the policy in force and the budget in use once it was made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionContext {
    pub image: ImageId,
    pub capacity: u32,
    pub policy: RolloutPolicy,
    pub budget: BudgetUse,
    pub rollout: Option<RolloutView>,
}

/// One link of the causal chain: the change, the entry that recorded it and its cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Link {
    pub kind: LinkKind,
    pub version: u64,
    pub at: Timestamp,
    pub cause: Cause,
    pub summary: String,
    pub change: Change,
    pub decision: DecisionContext,
}

/// The rollout wave an instance was launched in, and the event that started that rollout (a
/// later wave is decided by a reconcile, but caused by the rollout's `ImageReady`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutOrigin {
    pub rollout: u64,
    pub wave: u32,
    pub to: ImageId,
    pub started_at: Timestamp,
    /// The cause of the entry that started the rollout.
    pub started_by: Option<Cause>,
    /// The image it rolled from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<ImageId>,
    /// The launch definition's fields it changed (none: only the image).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

impl RolloutOrigin {
    /// What the rollout rolled out (`rollout_target`).
    pub fn target(&self) -> String {
        rollout_target(self.from.as_ref(), &self.to, &self.changed)
    }
}

/// Why an instance exists, or existed, and why it went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub fleet: FleetName,
    /// The instance's last record.
    pub instance: InstanceView,
    /// Its launch decision (the EC2 ClientToken and `phoenix:launch` tag).
    pub token: String,
    /// The rollout wave it was launched in, if any.
    pub rollout: Option<RolloutOrigin>,
    pub links: Vec<Link>,
}

/// The rollout wave whose launch decision is `token`, from the entries' fleet records.
fn rollout_origin(entries: &[HistoryEntry], token: &str) -> Option<RolloutOrigin> {
    let (rollout, wave) = entries.iter().find_map(|e| {
        let r = e.state.rollout.as_ref()?;
        let w = r
            .waves
            .iter()
            .find(|w| w.tokens.iter().any(|t| t == token))?;
        Some((r.clone(), w.number))
    })?;
    let started_by = entries
        .iter()
        .find(|e| {
            e.changes.iter().any(
                |c| matches!(c, Change::RolloutStarted { rollout: id, .. } if *id == rollout.id),
            )
        })
        .map(|e| e.cause.clone());
    Some(RolloutOrigin {
        rollout: rollout.id,
        wave,
        changed: definition_fields(&rollout),
        from: rollout.from,
        to: rollout.to,
        started_at: rollout.started_at,
        started_by,
    })
}

/// Whether a change names the instance in one of its fields (alone or in a list).
fn mentions(c: &Change, id: &InstanceId) -> bool {
    let value = serde_json::to_value(c).unwrap_or_default();
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "change")
        .any(|(_, v)| match v {
            serde_json::Value::String(s) => s == id.as_str(),
            serde_json::Value::Array(items) => {
                items.iter().any(|i| i.as_str() == Some(id.as_str()))
            }
            _ => false,
        })
}

/// The causal chain of an instance from the fleet's history: the decision that launched it (and
/// the event behind that decision), what happened to it, and the decision that terminated it
/// (and the health failure or disappearance before it). `None` if no entry recorded it.
pub fn explain(entries: &[HistoryEntry], id: &InstanceId) -> Option<Explanation> {
    let record = entries
        .iter()
        .rev()
        .find_map(|e| e.instances.iter().find(|i| &i.id == id))?
        .clone();
    let token = record.token.clone();
    let mut links = Vec::new();
    for entry in entries {
        for change in &entry.changes {
            let kind = match change {
                Change::LaunchDecided { token: t, .. } if *t == token => LinkKind::LaunchDecided,
                Change::LaunchRetried { token: t } if *t == token => LinkKind::LaunchRetried,
                Change::LaunchFailed { token: t, .. } if *t == token => LinkKind::LaunchFailed,
                Change::OfferingsRefused { token: t, .. } if *t == token => {
                    LinkKind::OfferingsRefused
                }
                Change::Launched { instances, .. } if instances.contains(id) => LinkKind::Launched,
                Change::Adopted { instances, .. } if instances.contains(id) => LinkKind::Adopted,
                Change::Released { instances } if instances.contains(id) => LinkKind::Released,
                Change::HealthChanged {
                    instance,
                    health: Health::Healthy,
                } if instance == id => LinkKind::Healthy,
                Change::HealthChanged { instance, .. } if instance == id => LinkKind::HealthFailed,
                Change::StateChanged { instance, .. } if instance == id => LinkKind::StateChanged,
                Change::Vanished { instance, .. } if instance == id => LinkKind::Vanished,
                Change::TerminationDecided { instance, .. } if instance == id => {
                    LinkKind::TerminationDecided
                }
                Change::Terminated { instances, .. } if instances.contains(id) => {
                    LinkKind::Terminated
                }
                Change::TerminationFailed { instances, .. } if instances.contains(id) => {
                    LinkKind::TerminationFailed
                }
                c if mentions(c, id) => LinkKind::Other,
                _ => continue,
            };
            let fleet = replay_to_version(entries, entry.version).unwrap_or(entry.state.clone());
            links.push(Link {
                kind,
                version: entry.version,
                at: entry.at,
                cause: entry.cause.clone(),
                summary: describe(change),
                change: change.clone(),
                decision: DecisionContext {
                    image: fleet.spec.image.clone(),
                    capacity: fleet.spec.capacity,
                    policy: fleet.spec.policy.clone(),
                    budget: BudgetUse::of(&fleet),
                    rollout: fleet.rollout.as_ref().map(RolloutView::of),
                },
            });
        }
    }
    Some(Explanation {
        fleet: entries.first().map(|e| e.fleet.clone())?,
        instance: InstanceView::of(&record),
        rollout: rollout_origin(entries, &token),
        token,
        links,
    })
}
