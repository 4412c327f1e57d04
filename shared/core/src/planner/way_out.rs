//! An instance's way out of the fleet, once phoenix decided to terminate it (`Disposal`):
//! deregistered from the fleet's target groups, drained, held by the terminating hook, then
//! terminated — each stage begun by one step and finished by a later one, so that no invocation
//! waits through a drain or a hook.
//!
//! What holds:
//! - a step that decides to terminate an instance does not also register it;
//! - an instance that may serve (running, in a fleet with target groups) is terminated only after
//!   it was deregistered from every group and drained: until no group lists it, or until the
//!   groups' deregistration delay has passed — or, for an instance AWS takes back at a known
//!   time (a Spot interruption), until then at most; one a group lists as registered again on
//!   its way out (a registration decided before and carried out after) is deregistered again;
//! - a drain does not end while a registration decided before it may still land
//!   (`Fleet::registering`: until its outcome is recorded, or its lease runs out). The pass that
//!   ends it loaded the fleet record before reading the groups, and commits only if no commit
//!   came between: so a registration recorded as done had landed before the groups were read;
//! - while a group the fleet names does not exist, a drain is not ended early (the groups cannot
//!   all be read), only by its delay;
//! - the terminating hook, when the fleet has one, holds the drained instance until
//!   `LifecycleActionCompleted` or its timeout; either result terminates it (an instance whose
//!   launching hook did not end CONTINUE never served, and skips it);
//! - a stage whose call was made (deregister, terminate) and whose outcome was not recorded
//!   within `LEASE` is carried out again (both calls are idempotent): a crash at any point leaves
//!   the instance at a stage a later pass finishes.

use super::tx::{Tx, LEASE};
use crate::events::Change;
use crate::ids::InstanceId;
use crate::model::{
    Disposal, HookKind, HookResult, Instance, Lifecycle, Observed, Seconds, Stage, TargetState,
    Timestamp,
};
use chrono::Duration;

impl Tx {
    /// Decides to terminate a member of the fleet: it starts on its way out (`way_out`), by
    /// its first stage. Counts against the hourly budget.
    pub(super) fn decide_terminate(
        &mut self,
        id: &InstanceId,
        reason: String,
        after_launch: Option<String>,
    ) {
        let now = self.now;
        let Some(stage) = self.first_stage(id, after_launch.is_some()) else {
            return;
        };
        self.cancel_registration(id);
        let Some(inst) = self.instance_mut(id) else {
            return;
        };
        inst.disposal = Some(Disposal {
            reason: reason.clone(),
            decided_at: now,
            after_launch: after_launch.clone(),
            stage: stage.clone(),
            drained: false,
        });
        // Entries older than the hour no longer count; they are dropped with the next change
        // (not on their own: a step that only forgets is not worth a write).
        self.fleet
            .disruptions
            .retain(|t| *t + Duration::hours(1) > now);
        self.fleet.disruptions.push(now);
        self.changes.push(Change::TerminationDecided {
            instance: id.clone(),
            reason,
        });
        self.begin_stage(id, &stage, after_launch);
    }

    /// An instance this step decides to terminate is not registered by it: carried out after
    /// its deregistration (the executor's order), the registration would leave it serving while
    /// phoenix counts it drained, and it would be terminated so.
    fn cancel_registration(&mut self, id: &InstanceId) {
        if !self.register.contains(id) {
            return;
        }
        self.register.retain(|r| r != id);
        for c in &mut self.changes {
            if let Change::RegistrationDecided { instances } = c {
                instances.retain(|i| i != id);
            }
        }
        self.changes.retain(
            |c| !matches!(c, Change::RegistrationDecided { instances } if instances.is_empty()),
        );
    }

    /// The stage an instance starts its way out with: deregistered first when it may serve
    /// behind a target group (or when its terminating hook must wait for its replacement's
    /// launch: a deregistration from no group is the executor's way to wait for it), else held by
    /// the terminating hook, else terminated.
    pub(super) fn first_stage(&self, id: &InstanceId, waits_for_launch: bool) -> Option<Stage> {
        let inst = self.fleet.instances.get(id)?;
        let groups = !self.fleet.spec.target_groups().is_empty();
        let hook = self.terminating_hook(inst);
        let serving = groups && inst.state == Lifecycle::Running;
        Some(if serving || (hook.is_some() && waits_for_launch) {
            Stage::Deregister
        } else if let Some(h) = hook {
            Stage::Hook {
                since: self.now,
                until: self.by_deadline(inst, self.now + h.timeout.duration()),
            }
        } else {
            Stage::Terminate
        })
    }

    /// The commands (and notice) that begin a stage just recorded on the instance.
    pub(super) fn begin_stage(
        &mut self,
        id: &InstanceId,
        stage: &Stage,
        after_launch: Option<String>,
    ) {
        match stage {
            Stage::Deregister => match after_launch {
                Some(token) => self
                    .deregister_after
                    .entry(token)
                    .or_default()
                    .push(id.clone()),
                None => self.deregister_now.push(id.clone()),
            },
            Stage::Hook { until, .. } => self.changes.push(Change::LifecycleHookStarted {
                instance: id.clone(),
                hook: HookKind::Terminating,
                until: *until,
            }),
            Stage::Terminate => match after_launch {
                Some(token) => self
                    .terminate_after
                    .entry(token)
                    .or_default()
                    .push(id.clone()),
                None => self.terminate_now.push(id.clone()),
            },
            Stage::Draining { .. } => {}
        }
    }

    /// The fleet's terminating hook, for an instance it applies to: not one that never came into
    /// service (its launching hook did not end CONTINUE), which has nothing to hand over.
    fn terminating_hook(&self, inst: &Instance) -> Option<crate::model::Hook> {
        self.fleet
            .spec
            .hooks
            .terminating
            .filter(|_| inst.launch_hook_passed())
    }

    /// `t`, or earlier if AWS takes the instance back before then (its retirement's deadline).
    fn by_deadline(&self, inst: &Instance, t: Timestamp) -> Timestamp {
        match inst.retirement.as_ref().and_then(|r| r.deadline) {
            Some(d) => t.min(d.max(self.now)),
            None => t,
        }
    }

    /// Moves an instance on to `stage`, as the next step of its way out, and begins it.
    fn move_to(&mut self, id: &InstanceId, stage: Stage) {
        let now = self.now;
        let Some(d) = self.instance_mut(id).and_then(|i| i.disposal.as_mut()) else {
            return;
        };
        d.stage = stage.clone();
        d.decided_at = now;
        self.begin_stage(id, &stage, None);
    }

    /// Done draining: on to the terminating hook, if the fleet has one, else terminated.
    fn drained(&mut self, inst: &Instance, how: &str) {
        if let Some(d) = self
            .instance_mut(&inst.id)
            .and_then(|i| i.disposal.as_mut())
        {
            d.drained = true;
        }
        self.changes.push(Change::Drained {
            instance: inst.id.clone(),
            how: how.into(),
        });
        let next = match self.terminating_hook(inst) {
            Some(h) => Stage::Hook {
                since: self.now,
                until: self.by_deadline(inst, self.now + h.timeout.duration()),
            },
            None => Stage::Terminate,
        };
        self.move_to(&inst.id, next);
    }

    /// The terminating hook ended (answered, or timed out): the instance is terminated.
    pub(super) fn end_terminating_hook(&mut self, id: &InstanceId, result: HookResult, by: &str) {
        self.changes.push(Change::LifecycleHookCompleted {
            instance: id.clone(),
            hook: HookKind::Terminating,
            result,
            by: by.into(),
        });
        self.move_to(id, Stage::Terminate);
    }

    /// The deregistration of `ids` is done: they drain until the groups' longest delay has
    /// passed at most (or AWS takes them back).
    pub(super) fn deregistered(&mut self, ids: &[InstanceId], delay: Seconds) {
        let now = self.now;
        for id in ids {
            let Some(inst) = self.fleet.instances.get(id) else {
                continue;
            };
            if !matches!(
                inst.disposal.as_ref().map(|d| &d.stage),
                Some(Stage::Deregister)
            ) {
                continue;
            }
            let until = self.by_deadline(inst, now + delay.duration());
            if let Some(d) = self.instance_mut(id).and_then(|i| i.disposal.as_mut()) {
                d.stage = Stage::Draining { since: now, until };
                d.decided_at = now;
            }
            self.changes.push(Change::DrainStarted {
                instance: id.clone(),
                until,
            });
        }
    }

    /// One pass's look at an instance on its way out (`inst`, as recorded before this pass, and
    /// what EC2 and the target groups report): the stage finished, or its call carried out again
    /// when its outcome was never recorded.
    pub(super) fn way_out(&mut self, inst: &Instance, report: &Observed) {
        let Some(d) = &inst.disposal else {
            return;
        };
        let now = self.now;
        let registered = report.state == Lifecycle::Running
            && report.targets.values().any(TargetState::is_registered);
        match &d.stage {
            Stage::Draining { .. } | Stage::Hook { .. } | Stage::Terminate if registered => {
                self.deregister_again(inst)
            }
            // A registration decided before its termination may still land: the drain goes on
            // until its outcome is recorded (or its lease runs out), and the pass after that
            // sees it registered, if it was, and deregisters it again.
            Stage::Draining { .. }
                if report.state == Lifecycle::Running && self.registering(&inst.id) => {}
            Stage::Draining { until, .. } => {
                if report.state != Lifecycle::Running {
                    self.drained(
                        inst,
                        &format!("it is {}: nothing to drain", report.state.as_str()),
                    );
                } else if *until <= now {
                    self.drained(inst, "its deregistration delay passed");
                } else if self.fleet.lb_missing.is_empty()
                    && !report.targets.values().any(|t| t.is_listed())
                {
                    self.drained(inst, "no target group lists it any more");
                }
            }
            Stage::Hook { until, .. } if *until <= now => {
                let result = self
                    .fleet
                    .spec
                    .hooks
                    .terminating
                    .map_or(HookResult::Continue, |h| h.default_result);
                self.end_terminating_hook(&inst.id, result, "timeout");
            }
            Stage::Hook { .. } => {}
            Stage::Deregister | Stage::Terminate => self.issue_again(inst),
        }
    }

    /// Registered again after its deregistration — a registration decided before its
    /// termination and carried out after, by another invocation: deregistered again, it drains
    /// anew (and the terminating hook, if any, holds it after that).
    fn deregister_again(&mut self, inst: &Instance) {
        let Some(d) = &inst.disposal else {
            return;
        };
        if self.deregister_now.contains(&inst.id) {
            return;
        }
        let now = self.now;
        if let Some(disposal) = self
            .instance_mut(&inst.id)
            .and_then(|i| i.disposal.as_mut())
        {
            disposal.stage = Stage::Deregister;
            disposal.decided_at = now;
            disposal.drained = false;
        }
        self.changes.push(Change::TerminationDecided {
            instance: inst.id.clone(),
            reason: format!("{} (deregistration issued again)", d.reason),
        });
        self.begin_stage(&inst.id, &Stage::Deregister, None);
    }

    /// A deregistration or termination decided but apparently never carried out (the deciding
    /// invocation died): issued again as a change of its own with a fresh lease, like a retried
    /// launch (the controller neither commits nor executes a step without changes). One waiting
    /// for its replacement's launch, while that launch is pending, goes only with the launch's
    /// retry, and only if the launch succeeds.
    fn issue_again(&mut self, inst: &Instance) {
        let Some(d) = &inst.disposal else {
            return;
        };
        let waits_for = d
            .after_launch
            .clone()
            .filter(|t| self.fleet.pending.iter().any(|p| p.token == *t));
        let retried = waits_for.as_ref().is_some_and(|t| {
            self.launches
                .iter()
                .any(|c| matches!(c, super::step::Command::Launch { token, .. } if token == t))
        });
        let already =
            self.terminate_now.contains(&inst.id) || self.deregister_now.contains(&inst.id);
        if d.decided_at + LEASE > self.now || already || (waits_for.is_some() && !retried) {
            return;
        }
        let now = self.now;
        if let Some(disposal) = self
            .instance_mut(&inst.id)
            .and_then(|i| i.disposal.as_mut())
        {
            disposal.decided_at = now;
        }
        let what = match d.stage {
            Stage::Deregister => "deregistration issued again",
            _ => "issued again",
        };
        self.changes.push(Change::TerminationDecided {
            instance: inst.id.clone(),
            reason: format!("{} ({what})", d.reason),
        });
        let stage = d.stage.clone();
        self.begin_stage(&inst.id, &stage, waits_for);
    }
}
