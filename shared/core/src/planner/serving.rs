//! An instance coming into service: held by the launching hook (when the fleet has one), then
//! registered with every target group of the fleet, then counted healthy once the groups report it
//! healthy; and what the groups report later.
//!
//! What holds: an instance is registered only while it runs, is not on its way out, has not
//! failed and is past its launching hook with CONTINUE; with target groups it counts healthy only
//! once every group reports it `healthy` (the `elb` signal, implied; withdrawn, while it does not
//! count yet, when a group stops reporting it healthy), so `min_healthy` counts instances that
//! serve; a launching hook answered ABANDON (or timing out to it) fails the instance as the
//! image's fault, so the rollout's health gate counts it; with `elb` named in the health check,
//! an instance counted healthy that a group reports `unhealthy` fails; a failed instance that
//! recovers counts healthy again only as a new one would. A target group that does not exist is
//! recorded (and announced) once, and again once it is back.

use super::step::Step;
use super::tx::Tx;
use crate::events::Change;
use crate::ids::InstanceId;
use crate::model::{
    group_name, Fleet, Health, HookKind, HookResult, HookWait, Instance, Lifecycle, Observed,
    TargetState, Timestamp,
};

/// Records which of the fleet's target groups exist, as the pass that read them found
/// (`missing`: those that do not, with why).
pub fn targets_observed(fleet: &Fleet, missing: &[(String, String)], now: Timestamp) -> Step {
    let mut tx = Tx::new(fleet, now);
    let named: Vec<String> = fleet
        .spec
        .target_groups()
        .iter()
        .map(|g| g.arn.clone())
        .collect();
    for (arn, reason) in missing {
        if named.contains(arn) && tx.fleet.lb_missing.insert(arn.clone()) {
            tx.changes.push(Change::TargetGroupMissing {
                group: arn.clone(),
                reason: reason.clone(),
            });
        }
    }
    let back: Vec<String> = tx
        .fleet
        .lb_missing
        .iter()
        .filter(|arn| named.contains(arn) && !missing.iter().any(|(m, _)| m == *arn))
        .cloned()
        .collect();
    for arn in back {
        tx.fleet.lb_missing.remove(&arn);
        tx.changes.push(Change::TargetGroupFound { group: arn });
    }
    // A group taken out of the fleet file is no longer looked at.
    let gone: Vec<String> = tx
        .fleet
        .lb_missing
        .iter()
        .filter(|arn| !named.contains(arn))
        .cloned()
        .collect();
    for arn in gone {
        tx.fleet.lb_missing.remove(&arn);
        tx.changes.push(Change::TargetGroupFound { group: arn });
    }
    tx.finish()
}

impl Tx {
    /// A new instance of a fleet with a launching hook waits on it from its launch.
    pub(super) fn start_launch_hook(&mut self, id: &InstanceId) {
        let Some(h) = self.fleet.spec.hooks.launching else {
            return;
        };
        let now = self.now;
        let until = now + h.timeout.duration();
        if let Some(i) = self.instance_mut(id) {
            i.launch_hook = Some(HookWait {
                since: now,
                until,
                result: None,
                ended_at: None,
            });
        }
        self.changes.push(Change::LifecycleHookStarted {
            instance: id.clone(),
            hook: HookKind::Launching,
            until,
        });
    }

    /// The launching hook ended: CONTINUE lets the instance be registered and counted; ABANDON
    /// fails it, as the image's fault (a bootstrap check failed), and it is repaired.
    pub(super) fn end_launch_hook(&mut self, id: &InstanceId, result: HookResult, by: &str) {
        let now = self.now;
        if let Some(h) = self.instance_mut(id).and_then(|i| i.launch_hook.as_mut()) {
            h.result = Some(result);
            h.ended_at = Some(now);
        }
        self.changes.push(Change::LifecycleHookCompleted {
            instance: id.clone(),
            hook: HookKind::Launching,
            result,
            by: by.into(),
        });
        match result {
            HookResult::Continue => self.promote(id),
            HookResult::Abandon => {
                let why = match by {
                    "timeout" => "its launching hook timed out (default result ABANDON)",
                    _ => "its launching hook was answered ABANDON",
                };
                self.set_health(id, Health::failed(why));
                self.health_gate();
                self.repair(id);
            }
        }
    }

    /// `LifecycleActionCompleted` for an instance: ends the hook it waits on, or says why
    /// nothing waits.
    pub(super) fn lifecycle_completed(
        &mut self,
        id: &InstanceId,
        hook: HookKind,
        result: HookResult,
    ) {
        let Some(inst) = self.fleet.instances.get(id) else {
            return;
        };
        let waiting = match hook {
            HookKind::Launching => {
                inst.launch_hook.as_ref().is_some_and(HookWait::is_waiting)
                    && inst.disposal.is_none()
            }
            HookKind::Terminating => matches!(
                inst.disposal.as_ref().map(|d| &d.stage),
                Some(crate::model::Stage::Hook { .. })
            ),
        };
        if !inst.is_live() {
            self.ignore(format!("{id} is already terminated"));
        } else if !waiting {
            self.ignore(format!("{id} does not wait on a {} hook", hook.as_str()));
        } else if hook == HookKind::Launching {
            self.end_launch_hook(id, result, "operator");
            if result == HookResult::Continue {
                self.register_now(id);
            }
        } else {
            self.end_terminating_hook(id, result, "operator");
        }
    }

    /// Registers a running instance at once (after its launching hook was answered), rather than
    /// at the next pass.
    fn register_now(&mut self, id: &InstanceId) {
        let ready = self.fleet.instances.get(id).is_some_and(|i| {
            i.state == Lifecycle::Running && i.disposal.is_none() && !i.is_failed()
        }) && !self.registering(id);
        if ready && !self.fleet.spec.target_groups().is_empty() {
            self.changes.push(Change::RegistrationDecided {
                instances: vec![id.clone()],
            });
            self.register.push(id.clone());
        }
    }

    /// The fleet's target groups that exist, as recorded: those a pass reads.
    fn readable_groups(&self) -> Vec<String> {
        self.fleet
            .spec
            .target_groups()
            .iter()
            .map(|g| g.arn.clone())
            .filter(|arn| !self.fleet.lb_missing.contains(arn))
            .collect()
    }

    /// Before a pass counts an instance not counted yet: until it counts, its `elb` signal holds
    /// only while every group reports it healthy. One a group no longer reports healthy (a group
    /// made anew without it, say) waits for it again.
    pub(super) fn refresh_elb_signal(&mut self, id: &InstanceId, report: &Observed) {
        let groups = self.readable_groups();
        let stale = self.fleet.instances.get(id).is_some_and(|i| {
            i.health == Health::Unknown
                && i.signals.elb_ok
                && !groups.is_empty()
                && !groups
                    .iter()
                    .all(|g| matches!(report.targets.get(g), Some(TargetState::Healthy)))
        });
        if stale {
            if let Some(i) = self.instance_mut(id) {
                i.signals.elb_ok = false;
            }
        }
    }

    /// One pass's look at what the target groups (and the launching hook's clock) say of a live
    /// instance: its hook timed out, it serves (the `elb` signal), it failed the groups' health
    /// checks, it is to be registered (collected in `register`).
    pub(super) fn serving(&mut self, inst: &Instance, report: &Observed) {
        let id = &inst.id;
        if let Some(h) = inst.launch_hook.as_ref().filter(|h| h.is_waiting()) {
            if h.until <= self.now && inst.disposal.is_none() {
                let result = self
                    .fleet
                    .spec
                    .hooks
                    .launching
                    .map_or(HookResult::Continue, |h| h.default_result);
                self.end_launch_hook(id, result, "timeout");
            }
        }
        let groups = self.readable_groups();
        if groups.is_empty() {
            return;
        }
        let Some(now) = self.fleet.instances.get(id).cloned() else {
            return;
        };
        if !now.is_live() || now.disposal.is_some() {
            return;
        }
        let state = |arn: &String| report.targets.get(arn);
        let all_healthy = groups
            .iter()
            .all(|g| matches!(state(g), Some(TargetState::Healthy)));
        if now.health == Health::Unknown && all_healthy && !now.signals.elb_ok {
            if let Some(i) = self.instance_mut(id) {
                i.signals.elb_ok = true;
            }
            self.promote(id);
        }
        if now.health == Health::Healthy && self.fleet.spec.policy.health_check.elb {
            let failing = groups.iter().find_map(|g| match state(g) {
                Some(TargetState::Unhealthy { reason }) => Some((g, reason)),
                _ => None,
            });
            if let Some((g, reason)) = failing {
                let why = format!(
                    "target group {} reports it unhealthy: {reason}",
                    group_name(g)
                );
                self.set_health(id, Health::failed(why));
                self.repair(id);
                return;
            }
        }
        let registered = groups
            .iter()
            .all(|g| state(g).is_some_and(TargetState::is_registered));
        let eligible =
            report.state == Lifecycle::Running && !now.is_failed() && now.launch_hook_passed();
        if eligible && !registered && !self.register.contains(id) && !self.registering(id) {
            self.register.push(id.clone());
        }
    }

    /// A registration's outcome is recorded: it can no longer reach the groups later. (Not one
    /// decided since, after this one's lease ran out: that one keeps its own entry.)
    pub(super) fn registration_over(&mut self, ids: &[InstanceId], lands_by: Timestamp) {
        for id in ids {
            if self.fleet.registering.get(id) == Some(&lands_by) {
                self.fleet.registering.remove(id);
            }
        }
    }

    /// A failed instance recovered (it passed again while the breaker holds repairs back): it
    /// counts healthy again as a new instance does — running, past its launching hook with
    /// CONTINUE, reported healthy by every target group, with the signals its policy names —
    /// and waits, unknown, until then. One its launching hook abandoned stays failed: that was a
    /// verdict on the instance, not a shared cause.
    pub(super) fn recover(&mut self, id: &InstanceId) {
        let Some(inst) = self.fleet.instances.get(id) else {
            return;
        };
        let abandoned = inst
            .launch_hook
            .as_ref()
            .is_some_and(|h| h.result == Some(HookResult::Abandon));
        if abandoned {
            self.ignore(format!(
                "{id} was abandoned by its launching hook; a failed instance is never trusted again"
            ));
            return;
        }
        let groups = !self.fleet.spec.target_groups().is_empty();
        if let Some(i) = self.instance_mut(id) {
            i.signals.passed = true;
            if groups {
                i.signals.elb_ok = false;
            }
        }
        self.set_health(id, Health::Unknown);
        self.promote(id);
    }

    /// Records the registrations a pass decided (one history entry for all of them).
    pub(super) fn note_registrations(&mut self) {
        if !self.register.is_empty() {
            self.changes.push(Change::RegistrationDecided {
                instances: self.register.clone(),
            });
        }
    }
}
