//! What the timeline shows, read from a fleet's history: a lane per instance from its launch to
//! its termination, coloured by its image; markers for failed health checks, instances that
//! vanished, rollbacks and breaker trips; a band per rollout, with its waves.
//!
//! What holds: lanes come oldest launch first; images are listed in order of first appearance,
//! which gives each its colour; with a window, only what overlaps it is kept.

use crate::events::Change;
use crate::history::{describe, is_breaker_trip, is_rollback, HistoryEntry};
use crate::ids::{FleetName, ImageId, InstanceId};
use crate::model::{Health, RolloutStatus, Timestamp};
use chrono::Duration;
use std::collections::BTreeMap;

/// Lane colours, one per image in order of first appearance (Tableau 10 without its red and
/// orange, which the markers use). More images than colours reuse them in order.
pub const IMAGE_COLOURS: [&str; 8] = [
    "#4e79a7", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac",
];
pub const HEALTH_FAILED_COLOUR: &str = "#e15759";
pub const ROLLBACK_COLOUR: &str = "#f28e2b";
pub const BREAKER_COLOUR: &str = "#1f1f1f";
pub const ROLLOUT_BAND_COLOUR: &str = "#e8edf4";

/// What to draw: the moments between `since` and `until` (either open: from the first entry, to
/// the last).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// One instance's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub instance: InstanceId,
    pub image: ImageId,
    pub from: Timestamp,
    /// When it was terminated (or found gone); `None` while it lives.
    pub to: Option<Timestamp>,
    pub healthy_at: Option<Timestamp>,
    /// When it stopped serving before it went: deregistered (draining), or held by the
    /// terminating hook.
    pub leaving_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MarkerKind {
    /// A failed health check (on its instance's lane).
    HealthFailed,
    /// An instance that went away outside phoenix (on its lane).
    Vanished,
    /// A rollout started rolling back (across every lane).
    Rollback,
    /// A circuit breaker stopped replacements (across every lane).
    BreakerTrip,
}

impl MarkerKind {
    pub fn colour(self) -> &'static str {
        match self {
            MarkerKind::HealthFailed | MarkerKind::Vanished => HEALTH_FAILED_COLOUR,
            MarkerKind::Rollback => ROLLBACK_COLOUR,
            MarkerKind::BreakerTrip => BREAKER_COLOUR,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            MarkerKind::HealthFailed => "health check failed",
            MarkerKind::Vanished => "vanished",
            MarkerKind::Rollback => "rollback",
            MarkerKind::BreakerTrip => "breaker tripped",
        }
    }
    /// Drawn on one lane (else across the whole plot).
    pub fn on_lane(self) -> bool {
        matches!(self, MarkerKind::HealthFailed | MarkerKind::Vanished)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub kind: MarkerKind,
    pub at: Timestamp,
    pub instance: Option<InstanceId>,
    /// What happened, for the tooltip.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpan {
    pub id: u64,
    pub from: Option<ImageId>,
    pub to: ImageId,
    pub status: RolloutStatus,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    /// When each wave started.
    pub waves: Vec<Timestamp>,
}

/// Everything the picture shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub fleet: FleetName,
    pub start: Timestamp,
    pub end: Timestamp,
    /// Images in legend order (first appearance); lane colours follow it.
    pub images: Vec<ImageId>,
    /// Oldest launch first.
    pub lanes: Vec<Lane>,
    pub markers: Vec<Marker>,
    pub rollouts: Vec<RolloutSpan>,
}

pub(super) fn status_word(s: RolloutStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

impl Timeline {
    /// The timeline of `entries` (in version order) within `window`. `None` without entries.
    pub fn from_history(entries: &[HistoryEntry], window: Window) -> Option<Timeline> {
        let entries: Vec<&HistoryEntry> = entries
            .iter()
            .filter(|e| window.until.is_none_or(|u| e.at <= u))
            .collect();
        let first = entries.first()?;
        let fleet = first.fleet.clone();

        let mut lanes: BTreeMap<InstanceId, Lane> = BTreeMap::new();
        let mut markers = Vec::new();
        let mut rollouts: BTreeMap<u64, RolloutSpan> = BTreeMap::new();
        let mut images: Vec<ImageId> = vec![first.state.spec.image.clone()];
        let mut previous_status: Option<(u64, RolloutStatus)> = None;
        for entry in &entries {
            for inst in &entry.instances {
                let lane = lanes.entry(inst.id.clone()).or_insert_with(|| Lane {
                    instance: inst.id.clone(),
                    image: inst.image.clone(),
                    from: inst.launched_at,
                    to: None,
                    healthy_at: None,
                    leaving_at: None,
                });
                lane.image = inst.image.clone();
                lane.from = inst.launched_at;
                // Out of the fleet: terminated, or given back.
                lane.to = inst.terminated_at.or(inst.released.as_ref().map(|r| r.at));
            }
            let mut rollback_here = false;
            for change in &entry.changes {
                match change {
                    Change::HealthChanged {
                        instance,
                        health: Health::Healthy,
                    } => {
                        if let Some(l) = lanes.get_mut(instance) {
                            l.healthy_at.get_or_insert(entry.at);
                        }
                    }
                    Change::HealthChanged {
                        instance,
                        health: Health::Unhealthy { reason, .. },
                    } => markers.push(Marker {
                        kind: MarkerKind::HealthFailed,
                        at: entry.at,
                        instance: Some(instance.clone()),
                        detail: format!(
                            "{instance} failed: {reason} ({}{})",
                            entry.cause.detail_type,
                            entry
                                .cause
                                .event_id
                                .as_deref()
                                .map(|id| format!(" event {id}"))
                                .unwrap_or_default()
                        ),
                    }),
                    Change::DrainStarted { instance, .. }
                    | Change::LifecycleHookStarted {
                        instance,
                        hook: crate::model::HookKind::Terminating,
                        ..
                    } => {
                        if let Some(l) = lanes.get_mut(instance) {
                            l.leaving_at.get_or_insert(entry.at);
                        }
                    }
                    Change::Vanished { instance, state } => markers.push(Marker {
                        kind: MarkerKind::Vanished,
                        at: entry.at,
                        instance: Some(instance.clone()),
                        detail: format!("{instance} vanished ({state})"),
                    }),
                    c if is_breaker_trip(c) => markers.push(Marker {
                        kind: MarkerKind::BreakerTrip,
                        at: entry.at,
                        instance: None,
                        detail: describe(c),
                    }),
                    c if is_rollback(c) && !rollback_here => {
                        rollback_here = true;
                        markers.push(Marker {
                            kind: MarkerKind::Rollback,
                            at: entry.at,
                            instance: None,
                            detail: describe(c),
                        });
                    }
                    _ => {}
                }
            }
            if let Some(r) = &entry.state.rollout {
                let span = rollouts.entry(r.id).or_insert_with(|| RolloutSpan {
                    id: r.id,
                    from: r.from.clone(),
                    to: r.to.clone(),
                    status: r.status,
                    start: r.started_at,
                    end: None,
                    waves: Vec::new(),
                });
                span.status = r.status;
                span.end = r.finished_at;
                span.waves = r.waves.iter().map(|w| w.started_at).collect();
                // A rollout that turned to rolling back (or rolled back) without a change saying
                // so is a rollback all the same.
                let turned = matches!(
                    r.status,
                    RolloutStatus::RollingBack | RolloutStatus::RolledBack
                ) && previous_status.is_none_or(|(id, s)| {
                    id != r.id
                        || !matches!(s, RolloutStatus::RollingBack | RolloutStatus::RolledBack)
                });
                if turned && !rollback_here {
                    markers.push(Marker {
                        kind: MarkerKind::Rollback,
                        at: entry.at,
                        instance: None,
                        detail: format!("rollout {} {}", r.id, status_word(r.status)),
                    });
                }
                previous_status = Some((r.id, r.status));
                if !images.contains(&r.to) {
                    images.push(r.to.clone());
                }
            }
        }

        let last_at = entries.last().map_or(first.at, |e| e.at);
        let mut lanes: Vec<Lane> = lanes.into_values().collect();
        lanes.sort_by(|a, b| (a.from, &a.instance).cmp(&(b.from, &b.instance)));
        let earliest = lanes.iter().map(|l| l.from).min().unwrap_or(first.at);
        let start = window.since.unwrap_or(first.at.min(earliest));
        let latest = lanes
            .iter()
            .filter_map(|l| l.to)
            .max()
            .unwrap_or(last_at)
            .max(last_at);
        let mut end = window.until.unwrap_or(latest);
        if end <= start {
            end = start + Duration::seconds(1);
        }
        lanes.retain(|l| l.from <= end && l.to.is_none_or(|t| t >= start));
        for lane in &lanes {
            if !images.contains(&lane.image) {
                images.push(lane.image.clone());
            }
        }
        images.retain(|i| lanes.iter().any(|l| &l.image == i));
        markers.retain(|m| {
            m.at >= start
                && m.at <= end
                && m.instance
                    .as_ref()
                    .is_none_or(|id| lanes.iter().any(|l| &l.instance == id))
        });
        let rollouts = rollouts
            .into_values()
            .filter(|r| r.start <= end && r.end.is_none_or(|e| e >= start))
            .collect();
        Some(Timeline {
            fleet,
            start,
            end,
            images,
            lanes,
            markers,
            rollouts,
        })
    }

    /// The colour of an image's lanes.
    pub fn colour_of(&self, image: &ImageId) -> &'static str {
        let n = self.images.iter().position(|i| i == image).unwrap_or(0);
        IMAGE_COLOURS[n % IMAGE_COLOURS.len()]
    }
}
