//! Replacing one instance at a time — a failed one (`repair`), or one that must go without having
//! failed (`retire`, owed by a notice), both launch-first while the surge limit leaves room — and
//! the mass-failure breaker, which stops repairs when repairing does not help: too many instances
//! unhealthy at the same time, counting replacements that fail again (Karpenter halts node repair
//! when more than 20 % of a pool is unhealthy at once). Two unrelated failures minutes apart are
//! both repaired; failures of an image since quarantined never count.
//!
//! What holds: while the breaker is tripped nothing is repaired, but retirements go on (they are
//! not failures); repairs and planned retirements stay within the hourly budget, urgent
//! retirements do not (the instance goes soon whatever phoenix does); tripping needs the whole
//! fleet, so an event that loaded one instance and would trip it defers its repair to the next
//! reconcile.

use super::tx::{Tx, MAX_LAUNCHES_PER_STEP};
use crate::events::Change;
use crate::ids::ImageId;
use crate::ids::InstanceId;
use crate::model::{Breaker, FailedInstance, Health, Instance, Offering, Timestamp};
use std::collections::BTreeMap;

/// What the breaker counts: instances unhealthy now (failed, not yet replaced) and replacements
/// that failed again within the window (churn: the sign that new instances fail the same way).
/// Failures of an image since quarantined are left out: their cause is known and handled.
struct AtOnce {
    /// Failed now (with only part of the fleet loaded: the fleet's count of failed instances).
    failed_now: Vec<InstanceId>,
    failed_now_count: u32,
    /// Replacements that failed again within the window, not failed now.
    churn: Vec<FailedInstance>,
}

impl AtOnce {
    fn count(&self) -> u32 {
        self.failed_now_count + self.churn.len() as u32
    }
}

/// Instances named in the breaker's figures, at most: a zone failing fails hundreds, and the
/// figures go into the fleet record and every deferred repair's history.
const NAMED: usize = 20;

fn ids(v: &[InstanceId]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    let named: Vec<&str> = v.iter().take(NAMED).map(InstanceId::as_str).collect();
    match v.len().saturating_sub(NAMED) {
        0 => named.join(" "),
        more => format!("{} and {more} more", named.join(" ")),
    }
}

impl Tx {
    fn unhealthy_at_once(&self) -> AtOnce {
        let window = self.fleet.spec.policy.breaker.window.duration();
        let blameless = |i: &Instance| self.fleet.quarantined.contains_key(&i.image);
        let failed_now: Vec<InstanceId> = self
            .fleet
            .live_instances()
            .filter(|i| i.is_failed() && !blameless(i))
            .map(|i| i.id.clone())
            .collect();
        let mut seen: BTreeMap<&InstanceId, ()> = failed_now.iter().map(|id| (id, ())).collect();
        let mut churn = Vec::new();
        for f in self
            .fleet
            .failures
            .iter()
            .filter(|f| f.at + window > self.now)
        {
            let i = &f.instance;
            let blameless = self.fleet.quarantined.contains_key(&i.image);
            if i.replacement_for.is_some() && !blameless && seen.insert(&i.id, ()).is_none() {
                churn.push(i.clone());
            }
        }
        let failed_now_count = if self.fleet.complete {
            failed_now.len() as u32
        } else {
            (failed_now.len() as u32).max(self.fleet.failed)
        };
        AtOnce {
            failed_now,
            failed_now_count,
            churn,
        }
    }

    /// More than the breaker's share of capacity, and never for a single instance (one failure
    /// in a fleet of 4 is 25 %, but says nothing about the others).
    fn breaker_threshold_exceeded(&self, at_once: &AtOnce) -> bool {
        let capacity = u64::from(self.fleet.spec.capacity.max(1));
        let failed = at_once.count();
        failed >= 2
            && u64::from(failed) * 100
                > u64::from(self.fleet.spec.policy.breaker.unhealthy_percent) * capacity
    }

    /// The figures behind the breaker's decision, for the history and `status`.
    fn breaker_figures(&self, at_once: &AtOnce) -> String {
        let policy = &self.fleet.spec.policy.breaker;
        let capacity = self.fleet.spec.capacity;
        let failed_now = if self.fleet.complete {
            format!("failed now: {}", ids(&at_once.failed_now))
        } else {
            format!(
                "failed now: {} by the fleet's count",
                at_once.failed_now_count
            )
        };
        let churn: Vec<InstanceId> = at_once.churn.iter().map(|i| i.id.clone()).collect();
        format!(
            "{} of {capacity} instances unhealthy at once ({failed_now}; replacements failed \
             again within {}: {}), more than {}% of capacity",
            at_once.count(),
            policy.window,
            ids(&churn),
            policy.unhealthy_percent,
        )
    }

    /// Replaces a failed instance: launch first when the surge limit leaves room, otherwise
    /// terminate first (a failed instance serves nothing, so removing it costs no availability).
    /// Not while the breaker is tripped, nor beyond the hourly budget.
    pub(super) fn repair(&mut self, id: &InstanceId) {
        let Some(inst) = self.fleet.instances.get(id) else {
            return;
        };
        // One still in its Auto Scaling group is detached first (failed ones are, at once).
        if !inst.is_live() || inst.disposal.is_some() || inst.in_asg() {
            return;
        }
        let reason = match &inst.health {
            Health::Unhealthy { reason, .. } => format!("replace failed instance: {reason}"),
            _ => "replace failed instance".into(),
        };
        let at_once = self.unhealthy_at_once();
        let halted = self.fleet.breaker.is_some()
            || (!self.fleet.breaker_overridden && self.breaker_threshold_exceeded(&at_once));
        if halted {
            if self.fleet.breaker.is_none() && !self.fleet.complete {
                // Tripping needs the whole fleet (to count exactly, and name what the failures
                // share): a reconcile follows at once. Until then, nothing is replaced.
                self.changes.push(Change::RepairDeferred {
                    instance: id.clone(),
                    reason: format!(
                        "up to {}; the whole fleet decides",
                        self.breaker_figures(&at_once)
                    ),
                });
            }
            return;
        }
        if self.hourly_room() == Some(0) {
            self.note_budget(true);
            return;
        }
        let budget = self.fleet.budget();
        let peak = self.fleet.live + self.fleet.pending_count();
        let image = self.launchable_image();
        let offerings = self.replacement_offerings(id);
        if let Some(image) = image.filter(|_| {
            peak < budget.max_total
                && self.launches_this_step() < MAX_LAUNCHES_PER_STEP
                && self.fleet.spec.capacity > 0
                && !offerings.is_empty()
        }) {
            let token = self.decide_launch(image, 1, format!("replacement for {id}"), offerings);
            self.mark_replacement(&token, id);
            self.decide_terminate(id, reason, Some(token));
        } else {
            self.decide_terminate(id, reason, None);
        }
    }

    /// Where a replacement of `id` may launch: its zone unless that unbalances, then the others.
    pub(super) fn replacement_offerings(&self, id: &InstanceId) -> Vec<Offering> {
        let counts = self.zone_counts();
        let zone = self.replacement_zone(id, &counts);
        // The market of the instance replaced (a Spot one falls back to On-Demand).
        let spot = self.fleet.spec.purchase.is_some()
            && self.fleet.instances.get(id).is_some_and(|i| i.spot);
        self.offerings_for(&zone, &counts, false, spot)
    }

    /// Records that launch `token` replaces the failed instance `id`.
    fn mark_replacement(&mut self, token: &str, id: &InstanceId) {
        if let Some(p) = self.fleet.pending.iter_mut().find(|p| p.token == token) {
            p.replacement_for = Some(id.clone());
        }
    }

    /// Replaces an instance that has to go without having failed (its `retirement`; see
    /// `crate::notice`): launch first when the surge limit leaves room, once its window is open
    /// and within the hourly budget. Neither counted nor held back by the breaker. An urgent one
    /// (it goes soon whatever phoenix does) ignores the hourly budget and, without room,
    /// terminates first so that its replacement launches in the same pass.
    pub(super) fn retire(&mut self, id: &InstanceId) {
        let now = self.now;
        let Some(inst) = self.fleet.instances.get(id) else {
            return;
        };
        let Some(r) = inst.retirement.clone() else {
            return;
        };
        if !inst.is_live() || inst.disposal.is_some() || !r.is_due(now) {
            return;
        }
        // A protected instance goes only when AWS takes it anyway; one still in its Auto Scaling
        // group, once it is detached.
        if (inst.protected && r.deadline.is_none()) || inst.in_asg() {
            return;
        }
        let urgent = r.is_urgent(now);
        // A planned retirement is voluntary: it waits for the fleet's windows.
        if !urgent && self.hold().other {
            return;
        }
        if !urgent && self.hourly_room() == Some(0) {
            self.note_budget(true);
            return;
        }
        let budget = self.fleet.budget();
        let peak = self.fleet.live + self.fleet.pending_count();
        let reason = format!("retire: {}", r.reason);
        // Never from a quarantined image (the fleet stays on one while a failed gate with
        // automatic rollback off waits for the operator): the previous image, as repairs do.
        let image = self.launchable_image();
        let offerings = self.replacement_offerings(id);
        if let Some(image) = image.filter(|_| {
            peak < budget.max_total
                && self.launches_this_step() < MAX_LAUNCHES_PER_STEP
                && self.fleet.spec.capacity > 0
                && !offerings.is_empty()
        }) {
            let token = self.decide_launch(image, 1, format!("replacement for {id}"), offerings);
            self.decide_terminate(id, reason, Some(token));
        } else if urgent {
            self.decide_terminate(id, reason, None);
        }
    }

    /// The mass-failure breaker, on the whole fleet: trips when more than its share of capacity is
    /// unhealthy, naming what the unhealthy instances share; resets once the fleet recovers.
    pub(super) fn breaker(&mut self) {
        let at_once = self.unhealthy_at_once();
        let count = at_once.count();
        let exceeded = self.breaker_threshold_exceeded(&at_once);
        if !exceeded {
            // An operator's override lasts until the fleet is below the threshold again.
            self.fleet.breaker_overridden = false;
        }
        let tripped = exceeded && !self.fleet.breaker_overridden;
        let is_tripped = self.fleet.breaker.is_some();
        if tripped && !is_tripped {
            let mut unhealthy: Vec<Traits> = at_once
                .failed_now
                .iter()
                .filter_map(|id| self.fleet.instances.get(id))
                .map(Traits::of)
                .collect();
            unhealthy.extend(at_once.churn.iter().map(Traits::of_failed));
            let mut all: Vec<Traits> = self.fleet.live_instances().map(Traits::of).collect();
            all.extend(at_once.churn.iter().map(Traits::of_failed));
            // Naming what the failures share helps the operator; it is never the reason to halt
            // (in a fleet of one image, type and zone every pair of failures shares them all).
            let shared = shared_attribute(&unhealthy, &all);
            let capacity = self.fleet.spec.capacity;
            let reason = self.breaker_figures(&at_once);
            self.fleet.breaker = Some(Breaker {
                tripped_at: self.now,
                unhealthy: count,
                shared: shared.clone(),
                reason: reason.clone(),
            });
            self.changes.push(Change::ReplacementHalted {
                unhealthy: count,
                capacity,
                shared,
                reason,
            });
        } else if !tripped && is_tripped {
            self.fleet.breaker = None;
            self.changes.push(Change::ReplacementResumed {
                reason: format!("{count} unhealthy: below the breaker's threshold again"),
            });
        }
    }
}

/// The attribute that stands out among unhealthy instances: shared by at least 80 % of them and
/// more common among them than in the fleet (a bad image, a zone outage, a bad instance type, a
/// batch launched together). `None` when nothing stands out.
/// What failures may share, of a live instance or a recorded failure.
struct Traits<'a> {
    image: &'a ImageId,
    zone: Option<&'a String>,
    instance_type: Option<&'a String>,
    launched_at: Timestamp,
}

impl<'a> Traits<'a> {
    fn of(i: &'a Instance) -> Self {
        Traits {
            image: &i.image,
            zone: i.zone.as_ref(),
            instance_type: i.instance_type.as_ref(),
            launched_at: i.launched_at,
        }
    }

    fn of_failed(i: &'a FailedInstance) -> Self {
        Traits {
            image: &i.image,
            zone: i.zone.as_ref(),
            instance_type: i.instance_type.as_ref(),
            launched_at: i.launched_at,
        }
    }
}

fn shared_attribute(unhealthy: &[Traits], all: &[Traits]) -> Option<String> {
    if unhealthy.is_empty() {
        return None;
    }
    type Key = fn(&Traits) -> Option<String>;
    let keys: [(&str, Key); 4] = [
        ("image", |i| Some(i.image.to_string())),
        ("availability zone", |i| i.zone.cloned()),
        ("instance type", |i| i.instance_type.cloned()),
        ("launch window", |i| {
            Some(i.launched_at.format("%Y-%m-%dT%H:%M").to_string()[..15].to_string() + "0")
        }),
    ];
    let mut best: Option<(f64, String)> = None;
    for (name, key) in keys {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for i in unhealthy {
            if let Some(v) = key(i) {
                *counts.entry(v).or_default() += 1;
            }
        }
        let Some((value, n)) = counts.into_iter().max_by_key(|(_, n)| *n) else {
            continue;
        };
        let share = n as f64 / unhealthy.len() as f64;
        let in_fleet = all
            .iter()
            .filter(|i| key(i).as_deref() == Some(value.as_str()))
            .count();
        let fleet_share = in_fleet as f64 / all.len().max(1) as f64;
        let lift = share - fleet_share;
        if share >= 0.8 && lift > 0.0 && best.as_ref().is_none_or(|(l, _)| lift > *l) {
            let value = if name == "launch window" {
                format!("{value} (10 minutes)")
            } else {
                value
            };
            best = Some((
                lift,
                format!(
                    "{name} {value}: {n} of {} unhealthy instances, {in_fleet} of {} in the fleet",
                    unhealthy.len(),
                    all.len()
                ),
            ));
        }
    }
    best.map(|(_, text)| text)
}
