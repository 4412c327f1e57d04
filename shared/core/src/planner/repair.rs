//! Replacing one instance at a time — a failed one (`repair`), or one that must go without having
//! failed (`retire`, owed by a notice), both launch-first while the surge limit leaves room — and
//! the mass-failure breaker, which stops repairs when so many instances fail at once that the
//! cause is probably shared.
//!
//! What holds: while the breaker is tripped nothing is repaired, but retirements go on (they are
//! not failures); repairs and planned retirements stay within the hourly budget, urgent
//! retirements do not (the instance goes soon whatever phoenix does); tripping needs the whole
//! fleet, so an event that loaded one instance and would trip it defers its repair to the next
//! reconcile.

use super::tx::{Tx, MAX_LAUNCHES_PER_STEP};
use crate::events::Change;
use crate::ids::InstanceId;
use crate::model::{Breaker, Health, Instance};
use std::collections::BTreeMap;

impl Tx {
    /// Instances unhealthy "at once": failed and still here, or failed within the breaker's window.
    /// With only part of the fleet loaded, the live count is the recorded counter.
    fn unhealthy_at_once(&self) -> (Vec<Instance>, u32) {
        let window = self.fleet.spec.policy.breaker.window.duration();
        let mut by_id: BTreeMap<InstanceId, Instance> = self
            .fleet
            .failures
            .iter()
            .filter(|f| f.at + window > self.now)
            .map(|f| (f.instance.id.clone(), f.instance.clone()))
            .collect();
        for i in self.fleet.live_instances().filter(|i| i.is_failed()) {
            by_id.insert(i.id.clone(), i.clone());
        }
        let count = (by_id.len() as u32).max(self.fleet.failed);
        (by_id.into_values().collect(), count)
    }

    /// Whether so many instances are unhealthy at once that the cause is probably shared: more
    /// than the breaker's share of capacity, and never for a single instance (one failure in a
    /// fleet of 4 is 25 %, but says nothing about the others).
    fn breaker_threshold_exceeded(&self, failed: u32) -> bool {
        let capacity = u64::from(self.fleet.spec.capacity.max(1));
        failed >= 2
            && u64::from(failed) * 100
                > u64::from(self.fleet.spec.policy.breaker.unhealthy_percent) * capacity
    }

    /// Replaces a failed instance: launch first when the surge limit leaves room, otherwise
    /// terminate first (a failed instance serves nothing, so removing it costs no availability).
    /// Not while the breaker is tripped, nor beyond the hourly budget.
    pub(super) fn repair(&mut self, id: &InstanceId) {
        let Some(inst) = self.fleet.instances.get(id) else {
            return;
        };
        if !inst.is_live() || inst.disposal.is_some() {
            return;
        }
        let reason = match &inst.health {
            Health::Unhealthy { reason } => format!("replace failed instance: {reason}"),
            _ => "replace failed instance".into(),
        };
        let halted = self.fleet.breaker.is_some()
            || (!self.fleet.breaker_overridden
                && self.breaker_threshold_exceeded(self.unhealthy_at_once().1));
        if halted {
            if self.fleet.breaker.is_none() && !self.fleet.complete {
                // Tripping needs the whole fleet (to name what the failures share): the next
                // reconcile does it. Until then, nothing is replaced.
                self.changes.push(Change::RepairDeferred {
                    instance: id.clone(),
                    reason: format!(
                        "{} of {} instances unhealthy: more than {}%",
                        self.fleet.failed,
                        self.fleet.spec.capacity,
                        self.fleet.spec.policy.breaker.unhealthy_percent
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
        if let Some(image) = image.filter(|_| {
            peak < budget.max_total
                && self.launches_this_step() < MAX_LAUNCHES_PER_STEP
                && self.fleet.spec.capacity > 0
        }) {
            let token = self.decide_launch(image, 1, format!("replacement for {id}"));
            self.decide_terminate(id, reason, Some(token));
        } else {
            self.decide_terminate(id, reason, None);
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
        let urgent = r.is_urgent(now);
        if !urgent && self.hourly_room() == Some(0) {
            self.note_budget(true);
            return;
        }
        let budget = self.fleet.budget();
        let peak = self.fleet.live + self.fleet.pending_count();
        let reason = format!("retire: {}", r.reason);
        if peak < budget.max_total
            && self.launches_this_step() < MAX_LAUNCHES_PER_STEP
            && self.fleet.spec.capacity > 0
        {
            let token = self.decide_launch(
                self.fleet.spec.image.clone(),
                1,
                format!("replacement for {id}"),
            );
            self.decide_terminate(id, reason, Some(token));
        } else if urgent {
            self.decide_terminate(id, reason, None);
        }
    }

    /// The mass-failure breaker, on the whole fleet: trips when more than its share of capacity is
    /// unhealthy, naming what the unhealthy instances share; resets once the fleet recovers.
    pub(super) fn breaker(&mut self) {
        let (unhealthy, count) = self.unhealthy_at_once();
        let exceeded = self.breaker_threshold_exceeded(count);
        if !exceeded {
            // An operator's override lasts until the fleet is below the threshold again.
            self.fleet.breaker_overridden = false;
        }
        let tripped = exceeded && !self.fleet.breaker_overridden;
        let is_tripped = self.fleet.breaker.is_some();
        if tripped && !is_tripped {
            let mut all: Vec<&Instance> = self.fleet.live_instances().collect();
            all.extend(
                unhealthy
                    .iter()
                    .filter(|u| !self.fleet.instances.get(&u.id).is_some_and(|i| i.is_live())),
            );
            let unhealthy: Vec<&Instance> = unhealthy.iter().collect();
            let shared = shared_attribute(&unhealthy, &all);
            let capacity = self.fleet.spec.capacity;
            self.fleet.breaker = Some(Breaker {
                tripped_at: self.now,
                unhealthy: count,
                shared: shared.clone(),
            });
            self.changes.push(Change::ReplacementHalted {
                unhealthy: count,
                capacity,
                shared,
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
fn shared_attribute(unhealthy: &[&Instance], all: &[&Instance]) -> Option<String> {
    if unhealthy.is_empty() {
        return None;
    }
    type Key = fn(&Instance) -> Option<String>;
    let keys: [(&str, Key); 4] = [
        ("image", |i| Some(i.image.to_string())),
        ("availability zone", |i| i.zone.clone()),
        ("instance type", |i| i.instance_type.clone()),
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
