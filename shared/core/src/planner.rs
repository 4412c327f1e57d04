//! The planner: pure functions from (fleet, event or observation, now) to a `Step` — the fleet as
//! it will be once the step is committed, the history entries that explain it, and the commands
//! the executor must carry out. Nothing here performs I/O or reads a clock.
//!
//! The protocol around it (in `phoenix-aws`) is write-ahead:
//! 1. load the fleet, plan a step, commit it conditionally on the version read (conflict → redo);
//! 2. execute the step's commands (launches are recorded as `PendingLaunch` *before* the call);
//! 3. plan `record_outcomes` from what EC2 answered and commit that the same way.
//!
//! A crash between any two of these leaves a state the next `reconcile` finishes: a pending launch
//! whose lease ran out is found by its `phoenix:launch` tag or launched again with the same EC2
//! ClientToken; a decided termination is issued again (terminating twice is harmless).

use crate::error::{Error, Result};
use crate::events::{Change, ControlAction, Intent, QueuedIntent, ScaleTarget};
use crate::ids::{ImageId, InstanceId};
use crate::model::{
    Breaker, Disposal, Fleet, FleetSpec, Health, Instance, Instances, Lifecycle, Observed, Pause,
    PendingLaunch, Quarantine, RecentFailure, Rollout, RolloutStatus, Timestamp, Wave,
    MAX_CAPACITY,
};
use crate::quantity::Rounding;
use chrono::Duration;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// Most instances launched by one step. A step is committed in one DynamoDB transaction (at most
/// 100 writes): each instance whose record it changes is one item write there, beside the fleet
/// record, the history entry, the event record (or, applying a queued intent, its inbox item and
/// its event record) and (for a new fleet) the fleet index. Launches
/// are recorded in the fleet record when decided, and each instance they started becomes an item
/// when their outcome is recorded, which may take several transactions (`outcome_parts`).
pub const MAX_LAUNCHES_PER_STEP: u32 = 92;
/// Most instances terminated by one step, for the same reason.
pub const MAX_TERMINATIONS_PER_STEP: usize = 92;
/// Most instance items one step, or one part of its outcomes, may write.
pub const MAX_TOUCHED_PER_STEP: usize = 92;
/// How long the invocation that decided a launch or termination owns it. After that, any reconcile
/// may finish it. Longer than a Lambda invocation can live (15 min) would stall recovery; shorter
/// than one RunInstances round trip would cause needless retries.
pub const LEASE: Duration = Duration::minutes(2);
/// How long a recorded instance may be missing from DescribeInstances before it counts as vanished
/// (EC2's read-after-write is eventually consistent for new instances).
pub const OBSERVE_GRACE: Duration = Duration::minutes(2);

/// What the executor must do. Order of execution: `Terminate` without `after_launch` first (they
/// were already covered by healthy replacements), then every `Launch`, then the `Terminate`s that
/// wait for a launch, and only if that launch succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Launch {
        token: String,
        image: ImageId,
        count: u32,
    },
    Terminate {
        instances: Vec<InstanceId>,
        after_launch: Option<String>,
    },
}

/// What came of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Launched {
        token: String,
        instances: Vec<Launched>,
        /// The AWS request ids of the calls that acted, recorded with the change.
        request_ids: Vec<String>,
    },
    LaunchFailed {
        token: String,
        error: String,
    },
    Terminated {
        instances: Vec<InstanceId>,
        request_ids: Vec<String>,
    },
    TerminateFailed {
        instances: Vec<InstanceId>,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub id: InstanceId,
    pub launched_at: Option<Timestamp>,
    pub state: Lifecycle,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
}

/// The result of planning: the next fleet state, why, and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub fleet: Fleet,
    pub changes: Vec<Change>,
    pub commands: Vec<Command>,
    /// Instances whose records this step changed (the store writes exactly these).
    pub touched: BTreeSet<InstanceId>,
}

impl Step {
    /// A step that changes nothing, to build on with `then`.
    pub fn unchanged(fleet: &Fleet) -> Step {
        Step {
            fleet: fleet.clone(),
            changes: Vec::new(),
            commands: Vec::new(),
            touched: BTreeSet::new(),
        }
    }

    /// Nothing changed: no need to write anything.
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }

    /// The step that continues this one with `f`, as one commit.
    pub fn then(self, f: impl FnOnce(&Fleet) -> Step) -> Step {
        let next = f(&self.fleet);
        Step::followed_by(self.changes, self.commands, self.touched, next)
    }

    /// `then(|f| reconcile(f, observed, now))`, planning on this step's fleet in place rather
    /// than on a copy (a copy of 10 000 instance records is a tenth of a millisecond).
    pub fn then_reconcile(self, observed: &[Observed], now: Timestamp) -> Step {
        let Step {
            fleet,
            changes,
            commands,
            touched,
        } = self;
        let next = reconcile_tx(Tx::owning(fleet, now), observed);
        Step::followed_by(changes, commands, touched, next)
    }

    fn followed_by(
        mut changes: Vec<Change>,
        mut commands: Vec<Command>,
        mut touched: BTreeSet<InstanceId>,
        next: Step,
    ) -> Step {
        changes.extend(next.changes);
        commands.extend(next.commands);
        touched.extend(next.touched);
        Step {
            fleet: next.fleet,
            changes,
            commands,
            touched,
        }
    }
}

/// A step being built. Crate-visible for `notice`, which plans through the same machinery.
pub(crate) struct Tx {
    pub(crate) fleet: Fleet,
    pub(crate) changes: Vec<Change>,
    touched: BTreeSet<InstanceId>,
    launches: Vec<Command>,
    terminate_now: Vec<InstanceId>,
    terminate_after: BTreeMap<String, Vec<InstanceId>>,
    pub(crate) now: Timestamp,
}

impl Tx {
    fn new(fleet: &Fleet, now: Timestamp) -> Self {
        Self::owning(fleet.clone(), now)
    }

    fn owning(fleet: Fleet, now: Timestamp) -> Self {
        Tx {
            fleet,
            changes: Vec::new(),
            touched: BTreeSet::new(),
            launches: Vec::new(),
            terminate_now: Vec::new(),
            terminate_after: BTreeMap::new(),
            now,
        }
    }

    fn finish(self) -> Step {
        let mut commands = Vec::new();
        if !self.terminate_now.is_empty() {
            commands.push(Command::Terminate {
                instances: self.terminate_now,
                after_launch: None,
            });
        }
        commands.extend(self.launches);
        for (token, instances) in self.terminate_after {
            commands.push(Command::Terminate {
                instances,
                after_launch: Some(token),
            });
        }
        Step {
            fleet: self.fleet,
            changes: self.changes,
            commands,
            touched: self.touched,
        }
    }

    pub(crate) fn instance_mut(&mut self, id: &InstanceId) -> Option<&mut Instance> {
        let inst = self.fleet.instances.get_mut(id)?;
        self.touched.insert(id.clone());
        Some(inst)
    }

    fn room_to_touch(&self) -> bool {
        self.touched.len() < MAX_TOUCHED_PER_STEP
    }

    fn launches_this_step(&self) -> u32 {
        self.launches
            .iter()
            .map(|c| {
                if let Command::Launch { count, .. } = c {
                    *count
                } else {
                    0
                }
            })
            .sum()
    }

    fn terminations_this_step(&self) -> usize {
        self.terminate_now.len() + self.terminate_after.values().map(Vec::len).sum::<usize>()
    }

    /// How many more instances may be taken away this hour (`None`: no limit).
    fn hourly_room(&self) -> Option<usize> {
        let limit = self.fleet.spec.policy.max_replacements_per_hour?;
        let recent = self
            .fleet
            .disruptions
            .iter()
            .filter(|t| **t + Duration::hours(1) > self.now)
            .count();
        Some((limit as usize).saturating_sub(recent))
    }

    /// Records, once, that the hourly budget stopped something; and that it refilled.
    fn note_budget(&mut self, blocked: bool) {
        if blocked && !self.fleet.budget_exhausted {
            let limit = self
                .fleet
                .spec
                .policy
                .max_replacements_per_hour
                .unwrap_or_default();
            self.changes.push(Change::BudgetExhausted { limit });
        }
        self.fleet.budget_exhausted = blocked;
    }

    /// Records a launch as pending (write-ahead) and returns its token:
    /// `<fleet>-<incarnation>-<version>-<n>`, unique per decision — also across a fleet deleted and
    /// created again under the same name, whose versions restart — and at most 58 characters
    /// (EC2 allows 64).
    fn decide_launch(&mut self, image: ImageId, count: u32, reason: String) -> String {
        let version = self.fleet.version + 1;
        let prefix = format!(
            "{}-{}-{}-",
            self.fleet.spec.name,
            self.fleet.incarnation(),
            version
        );
        let n = self
            .fleet
            .pending
            .iter()
            .filter(|p| p.token.starts_with(&prefix))
            .count();
        let token = format!("{prefix}{n}");
        self.fleet.pending.push(PendingLaunch {
            token: token.clone(),
            image: image.clone(),
            count,
            reason: reason.clone(),
            decided_at: self.now,
            lease_until: self.now + LEASE,
        });
        self.changes.push(Change::LaunchDecided {
            token: token.clone(),
            image: image.clone(),
            count,
            reason,
        });
        self.launches.push(Command::Launch {
            token: token.clone(),
            image,
            count,
        });
        token
    }

    /// Decides to terminate a member of the fleet. Counts against the hourly budget.
    fn decide_terminate(&mut self, id: &InstanceId, reason: String, after_launch: Option<String>) {
        let now = self.now;
        let Some(inst) = self.instance_mut(id) else {
            return;
        };
        inst.disposal = Some(Disposal {
            reason: reason.clone(),
            decided_at: now,
            after_launch: after_launch.clone(),
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
        match after_launch {
            Some(token) => self
                .terminate_after
                .entry(token)
                .or_default()
                .push(id.clone()),
            None => self.terminate_now.push(id.clone()),
        }
    }

    /// Marks an instance as gone (a tombstone is kept so late events about it are recognised).
    pub(crate) fn bury(&mut self, id: &InstanceId) {
        let now = self.now;
        let Some(inst) = self.instance_mut(id) else {
            return;
        };
        if inst.terminated_at.is_none() {
            let failed = inst.is_failed();
            inst.terminated_at = Some(now);
            inst.state = Lifecycle::Terminated;
            self.fleet.live = self.fleet.live.saturating_sub(1);
            if failed {
                self.fleet.failed = self.fleet.failed.saturating_sub(1);
            }
        }
    }

    pub(crate) fn set_health(&mut self, id: &InstanceId, health: Health) {
        let Some(inst) = self.instance_mut(id) else {
            return;
        };
        if inst.health == health {
            return;
        }
        let was_failed = inst.is_failed();
        inst.health = health.clone();
        let is_failed = inst.is_failed();
        if is_failed && !was_failed {
            let snapshot = inst.clone();
            self.fleet.failed += 1;
            // Enough to decide the breaker (it trips past its threshold): the list stays small.
            let window = self.fleet.spec.policy.breaker.window.duration();
            let now = self.now;
            self.fleet.failures.retain(|f| f.at + window > now);
            if self.fleet.failures.len() <= self.fleet.spec.capacity as usize {
                self.fleet.failures.push(RecentFailure {
                    at: self.now,
                    instance: snapshot,
                });
            }
        } else if was_failed && !is_failed {
            self.fleet.failed = self.fleet.failed.saturating_sub(1);
        }
        self.changes.push(Change::HealthChanged {
            instance: id.clone(),
            health,
        });
    }

    /// Counts an instance healthy once its signals satisfy the policy and its warmup is over.
    fn promote(&mut self, id: &InstanceId) {
        let policy = &self.fleet.spec.policy;
        let Some(inst) = self.fleet.instances.get(id) else {
            return;
        };
        let ready = inst.health == Health::Unknown
            && inst.state == Lifecycle::Running
            && policy.health_check.satisfied_by(inst.signals)
            && inst.launched_at + policy.warmup.duration() <= self.now;
        if ready {
            self.set_health(id, Health::Healthy);
        }
    }

    pub(crate) fn ignore(&mut self, reason: impl Into<String>) {
        self.changes.push(Change::Ignored {
            reason: reason.into(),
        });
    }

    /// The rollout, while it still moves instances or may (in progress, paused, rolling back).
    fn active_rollout(&mut self) -> Option<&mut Rollout> {
        self.fleet.rollout.as_mut().filter(|r| r.status.is_active())
    }

    fn start_rollout(&mut self, from: ImageId, to: ImageId) {
        let mut next_id = 1;
        if let Some(prev) = self.fleet.rollout.as_mut() {
            next_id = prev.id + 1;
            if prev.status.is_active() {
                prev.status = RolloutStatus::Superseded;
                prev.finished_at = Some(self.now);
                prev.pause = None;
                self.changes
                    .push(Change::RolloutSuperseded { rollout: prev.id });
            }
        }
        self.changes.push(Change::RolloutStarted {
            rollout: next_id,
            from: Some(from.clone()),
            to: to.clone(),
        });
        self.fleet.rollout = Some(Rollout {
            id: next_id,
            from: Some(from),
            to,
            status: RolloutStatus::InProgress,
            started_at: self.now,
            finished_at: None,
            waves: Vec::new(),
            pause: None,
            checkpoints_passed: Vec::new(),
            reason: None,
        });
    }

    /// Sends the rollout back to its previous image, under the same budget. `quarantine`: the new
    /// image failed (not an operator's undo) and may not be launched for this fleet again.
    fn roll_back(&mut self, reason: String, quarantine: bool) {
        let now = self.now;
        let Some(r) = self.fleet.rollout.clone().filter(|r| r.status.is_active()) else {
            return;
        };
        if quarantine && !self.fleet.quarantined.contains_key(&r.to) {
            self.fleet.quarantined.insert(
                r.to.clone(),
                Quarantine {
                    reason: reason.clone(),
                    at: now,
                    rollout: r.id,
                },
            );
            self.changes.push(Change::ImageQuarantined {
                image: r.to.clone(),
                reason: reason.clone(),
            });
        }
        if quarantine {
            // Launches of the image retried earlier in this step are not made after all.
            self.cancel_launches(&r.to);
        }
        let back = r
            .from
            .clone()
            .filter(|f| !self.fleet.quarantined.contains_key(f));
        let Some(back) = back else {
            // Nothing safe to go back to: stop where we are and say so.
            self.abort(format!("{reason}; no earlier image to roll back to"));
            return;
        };
        if quarantine && !self.fleet.spec.policy.auto_rollback {
            let why = format!("health gate failed: {reason}; automatic rollback is off");
            // Already paused on a timer (a bake, a checkpoint): it now waits for the operator,
            // or the timer would resume it onto the quarantined image.
            if let Some(r) = self
                .active_rollout()
                .filter(|r| r.status == RolloutStatus::Paused)
            {
                if let Some(p) = r.pause.as_mut().filter(|p| p.until.is_some()) {
                    p.until = None;
                    p.reason = why.clone();
                    let id = r.id;
                    self.changes.push(Change::RolloutPaused {
                        rollout: id,
                        reason: why,
                        until: None,
                    });
                }
                return;
            }
            self.pause(why, None);
            return;
        }
        self.fleet.spec.image = back;
        if let Some(r) = self.fleet.rollout.as_mut() {
            r.status = RolloutStatus::RollingBack;
            r.pause = None;
            r.reason = Some(reason.clone());
            self.changes.push(Change::RolloutRollingBack {
                rollout: r.id,
                reason,
            });
        }
    }

    /// Retires a pending launch that will not be made (EC2 refused it, or its image was
    /// quarantined): the instances waiting for it as their replacement stay; the next pass plans
    /// again.
    fn drop_pending(&mut self, token: &str, error: String) {
        let Some(pos) = self.fleet.pending.iter().position(|p| p.token == token) else {
            return;
        };
        self.fleet.pending.remove(pos);
        self.changes.push(Change::LaunchFailed {
            token: token.to_string(),
            error,
        });
        let waiting: Vec<InstanceId> = self
            .fleet
            .live_instances()
            .filter(|i| i.disposal.as_ref().and_then(|d| d.after_launch.as_deref()) == Some(token))
            .map(|i| i.id.clone())
            .collect();
        for id in waiting {
            if let Some(i) = self.instance_mut(&id) {
                i.disposal = None;
            }
        }
    }

    /// Drops the launches of `image` this step would make (retries of pending launches).
    fn cancel_launches(&mut self, image: &ImageId) {
        let tokens: Vec<String> = self
            .launches
            .iter()
            .filter_map(|c| match c {
                Command::Launch {
                    token, image: i, ..
                } if i == image => Some(token.clone()),
                _ => None,
            })
            .collect();
        for token in tokens {
            self.launches
                .retain(|c| !matches!(c, Command::Launch { token: t, .. } if *t == token));
            self.terminate_after.remove(&token);
            self.drop_pending(&token, format!("image {image} is quarantined"));
        }
    }

    /// The image new instances come from: the fleet's, unless it is quarantined (a health gate
    /// that failed with automatic rollback off leaves the fleet on it while the rollout waits for
    /// the operator), then the one that rollout came from, if that one is not.
    fn launchable_image(&self) -> Option<ImageId> {
        let ok = |i: &ImageId| !self.fleet.quarantined.contains_key(i);
        Some(self.fleet.spec.image.clone()).filter(ok).or_else(|| {
            self.fleet
                .rollout
                .as_ref()
                .filter(|r| r.status.is_active())
                .and_then(|r| r.from.clone())
                .filter(ok)
        })
    }

    fn abort(&mut self, reason: String) {
        let now = self.now;
        if let Some(r) = self.active_rollout() {
            r.status = RolloutStatus::Aborted;
            r.finished_at = Some(now);
            r.pause = None;
            r.reason = Some(reason.clone());
            let id = r.id;
            self.changes.push(Change::RolloutAborted {
                rollout: id,
                reason,
            });
        }
    }

    fn pause(&mut self, reason: String, until: Option<Timestamp>) {
        if let Some(r) = self.active_rollout() {
            if r.status == RolloutStatus::Paused {
                return;
            }
            let resume_to = r.status;
            r.status = RolloutStatus::Paused;
            r.pause = Some(Pause {
                reason: reason.clone(),
                until,
                resume_to,
            });
            let id = r.id;
            self.changes.push(Change::RolloutPaused {
                rollout: id,
                reason,
                until,
            });
        }
    }

    fn resume(&mut self, reason: String) {
        if let Some(r) = self
            .active_rollout()
            .filter(|r| r.status == RolloutStatus::Paused)
        {
            r.status = r
                .pause
                .take()
                .map(|p| p.resume_to)
                .unwrap_or(RolloutStatus::InProgress);
            let id = r.id;
            self.changes.push(Change::RolloutResumed {
                rollout: id,
                reason,
            });
        }
    }

    /// Adds instances found for a pending launch and retires the pending record.
    fn adopt_launch(&mut self, token: &str, found: &[Launched], request_ids: &[String]) {
        let Some(pos) = self.fleet.pending.iter().position(|p| p.token == token) else {
            return;
        };
        let pending = self.fleet.pending.remove(pos);
        let mut ids = Vec::new();
        for l in found.iter().take(pending.count as usize) {
            if self.fleet.instances.get(&l.id).is_some_and(|i| i.is_live()) {
                continue;
            }
            self.fleet.instances.insert(
                l.id.clone(),
                Instance {
                    id: l.id.clone(),
                    image: pending.image.clone(),
                    launched_at: l.launched_at.unwrap_or(self.now),
                    state: l.state,
                    health: Health::Unknown,
                    signals: Default::default(),
                    token: token.to_string(),
                    zone: l.zone.clone(),
                    instance_type: l.instance_type.clone(),
                    disposal: None,
                    terminated_at: None,
                    taints: Vec::new(),
                    retirement: None,
                },
            );
            self.touched.insert(l.id.clone());
            self.fleet.live += 1;
            ids.push(l.id.clone());
        }
        if let Some(wave) = self.fleet.rollout.as_mut().and_then(|r| {
            r.waves
                .iter_mut()
                .find(|w| w.tokens.iter().any(|t| t == token))
        }) {
            wave.launched.extend(ids.iter().cloned());
        }
        self.changes.push(Change::Launched {
            token: token.to_string(),
            instances: ids,
            request_ids: request_ids.to_vec(),
        });
        // A double launch (an emulator that ignores ClientToken, or a lost race) leaves extras:
        // they belong to no decision, so they go.
        for extra in found.iter().skip(pending.count as usize) {
            self.changes.push(Change::TerminationDecided {
                instance: extra.id.clone(),
                reason: format!("launched twice for decision {token}"),
            });
            self.terminate_now.push(extra.id.clone());
        }
    }

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
    pub(crate) fn repair(&mut self, id: &InstanceId) {
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
    pub(crate) fn retire(&mut self, id: &InstanceId) {
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

    /// The health gate of a rollout: a new-image instance that failed, or a wave that missed its
    /// deadline, sends the rollout back to the previous image and quarantines the new one.
    pub(crate) fn health_gate(&mut self) {
        let now = self.now;
        let Some(r) = self.fleet.rollout.as_ref() else {
            return;
        };
        if !matches!(r.status, RolloutStatus::InProgress | RolloutStatus::Paused) {
            return;
        }
        if r.pause
            .as_ref()
            .is_some_and(|p| p.resume_to == RolloutStatus::RollingBack)
        {
            return;
        }
        let failed = self
            .fleet
            .instances
            .values()
            // Instances of this rollout only: launched since it started (EC2 stamps launch times to
            // the second, hence the one-second allowance). An instance that already ran the
            // target image before (a rollout back to an older image) says nothing about it.
            // (Health first: the cheapest test, and the one that almost always fails.)
            .find_map(|i| match &i.health {
                Health::Unhealthy { reason }
                    if i.image == r.to
                        && i.is_live()
                        && i.launched_at + Duration::seconds(1) >= r.started_at =>
                {
                    Some(format!(
                        "{} on {} failed its health check: {reason}",
                        i.id, r.to
                    ))
                }
                _ => None,
            });
        let deadline = self.fleet.spec.policy.progress_deadline;
        let late = r
            .waves
            .iter()
            .find(|w| {
                w.healthy_at.is_none()
                    && w.started_at + deadline.duration() <= now
                    && r.status == RolloutStatus::InProgress
            })
            .map(|w| {
                format!(
                    "wave {} was not healthy within its progress deadline of {deadline}",
                    w.number
                )
            });
        if let Some(reason) = failed.or(late) {
            self.roll_back(reason, true);
        }
    }

    /// Resumes a rollout whose timed pause (bake, checkpoint) is over.
    fn wake(&mut self) {
        let now = self.now;
        let due = self
            .fleet
            .rollout
            .as_ref()
            .and_then(|r| r.pause.as_ref())
            .is_some_and(|p| p.until.is_some_and(|u| u <= now));
        if due {
            self.resume("pause over".into());
        }
    }

    /// The mass-failure breaker, on the whole fleet: trips when more than its share of capacity is
    /// unhealthy, naming what the unhealthy instances share; resets once the fleet recovers.
    fn breaker(&mut self) {
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

/// A new fleet, as `phoenix fleet apply` creates it. Instances come with the first reconcile.
pub fn create_fleet(spec: FleetSpec, now: Timestamp) -> Result<Step> {
    spec.validate()?;
    let changes = vec![Change::FleetCreated {
        image: spec.image.clone(),
        capacity: spec.capacity,
    }];
    Ok(Step {
        fleet: Fleet::new(spec, now),
        changes,
        commands: Vec::new(),
        touched: BTreeSet::new(),
    })
}

/// The reason an image may not be launched for this fleet, if it is quarantined.
fn refusal(fleet: &Fleet, image: &ImageId) -> Option<String> {
    fleet.quarantined.get(image).map(|q| {
        format!(
            "{image} is quarantined for fleet {} since rollout {} failed ({}); clear it with `phoenix image clear-quarantine {} {image}`",
            fleet.spec.name, q.rollout, q.reason, fleet.spec.name
        )
    })
}

/// A fleet file applied over an existing fleet: a new image starts a rollout, a new capacity
/// scales, other fields apply to later launches.
pub fn update_spec(fleet: &Fleet, spec: FleetSpec, now: Timestamp) -> Result<Step> {
    spec.validate()?;
    if spec.name != fleet.spec.name {
        return Err(Error::invalid(
            "name",
            format!("{} is not fleet {}", spec.name, fleet.spec.name),
        ));
    }
    if spec.image != fleet.spec.image {
        if let Some(reason) = refusal(fleet, &spec.image) {
            return Err(Error::invalid("image", reason));
        }
    }
    let mut tx = Tx::new(fleet, now);
    let old = fleet.spec.clone();
    if spec.image != old.image {
        tx.changes.push(Change::ImageChanged {
            from: old.image.clone(),
            to: spec.image.clone(),
        });
        tx.fleet.image_set_at = now;
        tx.start_rollout(old.image.clone(), spec.image.clone());
    }
    if spec.capacity != old.capacity {
        tx.changes.push(Change::CapacityChanged {
            from: old.capacity,
            to: spec.capacity,
        });
        tx.fleet.capacity_set_at = now;
    }
    let mut fields = Vec::new();
    let json_old = serde_json::to_value(&old).unwrap_or_default();
    let json_new = serde_json::to_value(&spec).unwrap_or_default();
    if let (Some(a), Some(b)) = (json_old.as_object(), json_new.as_object()) {
        for key in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
            if key != "image" && key != "capacity" && a.get(key) != b.get(key) {
                fields.push(key.clone());
            }
        }
    }
    if !fields.is_empty() {
        tx.changes.push(Change::FleetUpdated { fields });
    }
    if tx.changes.is_empty() {
        tx.ignore("fleet file is unchanged");
    }
    tx.fleet.spec = spec;
    Ok(tx.finish())
}

/// Whether an event is older than a change already applied. EventBridge stamps events to the
/// second, so the comparison is by whole seconds: within one second, the later delivery wins.
fn older(event_time: Timestamp, applied_at: Timestamp) -> bool {
    event_time.timestamp() < applied_at.timestamp()
}

fn not_member(fleet: &Fleet, instance: &InstanceId) -> Error {
    Error::invalid(
        "instance",
        format!("{instance} is not an instance of fleet {}", fleet.spec.name),
    )
}

/// Applies an intent from the fleet's inbox (`QueuedIntent`). One that no longer applies when
/// its turn comes (a delta that would now take the capacity below zero, say) was accepted when
/// it was queued, so it is recorded as ignored, with why, rather than refused.
pub fn apply_queued(fleet: &Fleet, queued: &QueuedIntent, now: Timestamp) -> Step {
    apply_intent(fleet, &queued.intent, queued.event_time, now).unwrap_or_else(|e| {
        let mut tx = Tx::new(fleet, now);
        tx.ignore(format!("queued {}: {e}", queued.cause.detail_type));
        tx.finish()
    })
}

/// Applies what an event asks. `event_time` orders events that EventBridge may deliver out of
/// order; `fleet` holds at least the instance an instance-scoped event names.
pub fn apply_intent(
    fleet: &Fleet,
    intent: &Intent,
    event_time: Timestamp,
    now: Timestamp,
) -> Result<Step> {
    let mut tx = Tx::new(fleet, now);
    match intent {
        Intent::ImageReady { image, .. } => {
            if *image == fleet.spec.image {
                tx.ignore(format!("{image} is already the fleet's image"));
                // A newer announcement of the current image still outdates older announcements
                // of other images that may yet be delivered.
                tx.fleet.image_set_at = tx.fleet.image_set_at.max(event_time);
            } else if older(event_time, fleet.image_set_at) {
                tx.ignore(format!(
                    "event of {event_time} is older than the image change of {}",
                    fleet.image_set_at
                ));
            } else if let Some(reason) = refusal(fleet, image) {
                tx.changes.push(Change::ImageRefused {
                    image: image.clone(),
                    reason,
                });
            } else {
                let from = fleet.spec.image.clone();
                tx.changes.push(Change::ImageChanged {
                    from: from.clone(),
                    to: image.clone(),
                });
                tx.fleet.spec.image = image.clone();
                tx.fleet.image_set_at = event_time;
                tx.start_rollout(from, image.clone());
            }
        }
        Intent::Scale { target, .. } => {
            let current = fleet.spec.capacity;
            let desired = match *target {
                ScaleTarget::Desired(n) => {
                    if older(event_time, fleet.capacity_set_at) {
                        tx.ignore(format!(
                            "event of {event_time} is older than the capacity change of {}",
                            fleet.capacity_set_at
                        ));
                        return Ok(tx.finish());
                    }
                    n
                }
                ScaleTarget::Delta(d) => {
                    let n = i64::from(current) + d;
                    if n < 0 || n > i64::from(MAX_CAPACITY) {
                        return Err(Error::invalid(
                            "capacity",
                            format!("delta {d} on capacity {current} gives {n}, outside 0..={MAX_CAPACITY}"),
                        ));
                    }
                    n as u32
                }
            };
            if desired == current {
                tx.ignore(format!("capacity is already {current}"));
                // As for images: a newer request for the current capacity outdates older ones.
                tx.fleet.capacity_set_at = tx.fleet.capacity_set_at.max(event_time);
            } else {
                tx.changes.push(Change::CapacityChanged {
                    from: current,
                    to: desired,
                });
                tx.fleet.spec.capacity = desired;
                tx.fleet.capacity_set_at = tx.fleet.capacity_set_at.max(event_time);
            }
        }
        Intent::HealthCheckFailed { instance, reason } => match fleet.instances.get(instance) {
            None => return Err(not_member(fleet, instance)),
            Some(i) if !i.is_live() => tx.ignore(format!("{instance} was already replaced")),
            Some(i) if i.disposal.is_some() => {
                tx.ignore(format!("{instance} is already being replaced"))
            }
            Some(i) if i.is_failed() => tx.ignore(format!("{instance} already failed")),
            Some(_) => {
                tx.set_health(
                    instance,
                    Health::Unhealthy {
                        reason: reason.clone(),
                    },
                );
                // A new-image instance failing sends the rollout back first, so that its
                // replacement comes from the previous image.
                tx.health_gate();
                tx.repair(instance);
            }
        },
        Intent::HealthCheckPassed { instance } => match fleet.instances.get(instance) {
            None => return Err(not_member(fleet, instance)),
            Some(i) if !i.is_live() => tx.ignore(format!("{instance} was already replaced")),
            // While the breaker holds repairs back, the failures were probably one shared cause (a
            // zone outage, a dependency): an instance that passes again has recovered.
            Some(i) if i.is_failed() && fleet.breaker.is_some() && i.disposal.is_none() => {
                tx.set_health(instance, Health::Healthy);
            }
            Some(i) if i.is_failed() => tx.ignore(format!(
                "{instance} failed earlier; a failed instance is never trusted again"
            )),
            Some(i) if i.signals.passed => tx.ignore(format!("{instance} already passed")),
            Some(_) => {
                if let Some(i) = tx.instance_mut(instance) {
                    i.signals.passed = true;
                }
                tx.promote(instance);
                if tx.changes.is_empty() {
                    // Recorded even when the instance is not healthy yet (warmup, or EC2's
                    // checks still to come): the signal must not be lost.
                    tx.ignore(format!("{instance} passed; counted healthy once the policy's other conditions hold"));
                }
            }
        },
        Intent::RolloutControl { action, .. } => control(&mut tx, *action),
        Intent::ClearQuarantine { image, .. } => {
            if tx.fleet.quarantined.remove(image).is_some() {
                tx.changes.push(Change::ImageReleased {
                    image: image.clone(),
                });
            } else {
                tx.ignore(format!(
                    "{image} is not quarantined for fleet {}",
                    fleet.spec.name
                ));
            }
        }
        Intent::Notice { instances, notice } => {
            for id in instances {
                crate::notice::apply(&mut tx, id, notice);
            }
        }
        Intent::Reconcile { .. } => {}
    }
    Ok(tx.finish())
}

/// An operator's command to the rollout.
fn control(tx: &mut Tx, action: ControlAction) {
    let status = tx.fleet.rollout.as_ref().map(|r| r.status);
    match (action, status) {
        (ControlAction::Pause, Some(RolloutStatus::InProgress | RolloutStatus::RollingBack)) => {
            tx.pause("paused by operator".into(), None)
        }
        (ControlAction::Resume, Some(RolloutStatus::Paused)) => {
            let forward = tx.fleet.rollout.as_ref().filter(|r| {
                r.pause
                    .as_ref()
                    .is_none_or(|p| p.resume_to != RolloutStatus::RollingBack)
            });
            match forward.filter(|r| tx.fleet.quarantined.contains_key(&r.to)) {
                Some(r) => {
                    let reason = format!(
                        "rollout {}'s image {} is quarantined: undo the rollout, or clear the quarantine first",
                        r.id, r.to
                    );
                    tx.ignore(reason)
                }
                None => tx.resume("resumed by operator".into()),
            }
        }
        (ControlAction::Abort, Some(s)) if s.is_active() => tx.abort("aborted by operator".into()),
        (ControlAction::Undo, Some(RolloutStatus::InProgress | RolloutStatus::Paused)) => {
            tx.roll_back("undone by operator".into(), false)
        }
        (ControlAction::Undo, Some(RolloutStatus::Succeeded | RolloutStatus::Aborted)) => {
            // Undo a finished rollout: a new rollout back to the image before it.
            let Some(r) = tx.fleet.rollout.clone() else {
                return;
            };
            match r.from.filter(|f| !tx.fleet.quarantined.contains_key(f)) {
                Some(back) => {
                    let current = tx.fleet.spec.image.clone();
                    tx.changes.push(Change::ImageChanged {
                        from: current.clone(),
                        to: back.clone(),
                    });
                    tx.fleet.spec.image = back.clone();
                    tx.fleet.image_set_at = tx.now;
                    tx.start_rollout(current, back);
                }
                None => tx.ignore(format!(
                    "rollout {} has no earlier image to go back to",
                    r.id
                )),
            }
        }
        (ControlAction::ResumeRepairs, _) => {
            if tx.fleet.breaker.take().is_some() {
                tx.fleet.breaker_overridden = true;
                tx.changes.push(Change::ReplacementResumed {
                    reason: "resumed by operator (the breaker stays off until fewer instances are unhealthy)".into(),
                });
            } else {
                tx.ignore("repairs are not halted");
            }
        }
        (action, status) => {
            let what = status
                .map(|s| format!("{s:?}").to_lowercase())
                .unwrap_or_else(|| "none".into());
            tx.ignore(format!(
                "cannot {} a rollout in state {what}",
                action.as_str()
            ))
        }
    }
}

/// One reconcile pass over a whole fleet: fold in what EC2 reports, finish or retry unfinished
/// work, then plan replacements, rollout waves and scaling under the disruption budget.
///
/// Idempotent: run on the state it produced (and an unchanged EC2) it decides nothing more.
pub fn reconcile(fleet: &Fleet, observed: &[Observed], now: Timestamp) -> Step {
    reconcile_tx(Tx::new(fleet, now), observed)
}

fn reconcile_tx(mut tx: Tx, observed: &[Observed]) -> Step {
    // The counters are derived: a full view is the moment to correct any drift.
    let (live, failed) = tx.fleet.live_instances().fold((0, 0), |(live, failed), i| {
        (live + 1, failed + u32::from(i.is_failed()))
    });
    tx.fleet.live = live;
    tx.fleet.failed = failed;
    observe(&mut tx, observed);
    tx.wake();
    tx.health_gate();
    tx.breaker();
    // Failed instances first: they are the most urgent and cost no availability. Then instances
    // owed a replacement by a notice (waiting for their window or for room). Both found in one
    // pass: `retire` passes over any that a repair has just taken.
    let (mut failed, mut retiring) = (Vec::new(), Vec::new());
    for i in tx.fleet.live_instances().filter(|i| i.disposal.is_none()) {
        if i.is_failed() {
            failed.push(i.id.clone());
        }
        if i.retirement.is_some() {
            retiring.push(i.id.clone());
        }
    }
    for id in failed {
        if tx.room_to_touch() {
            tx.repair(&id);
        }
    }
    for id in retiring {
        if tx.room_to_touch() {
            tx.retire(&id);
        }
    }
    roll_and_scale(&mut tx);
    track_rollout(&mut tx);
    if tx.fleet.budget_exhausted && tx.hourly_room() != Some(0) {
        tx.note_budget(false);
    }
    tx.finish()
}

fn observe(tx: &mut Tx, observed: &[Observed]) {
    let now = tx.now;

    // Pending launches: adopt what EC2 has for them, or launch again once the lease ran out.
    for pending in tx.fleet.pending.clone() {
        let mut found: Vec<Launched> = observed
            .iter()
            .filter(|o| o.token.as_deref() == Some(pending.token.as_str()) && !o.state.is_gone())
            .filter(|o| !tx.fleet.instances.contains_key(&o.id))
            .map(|o| Launched {
                id: o.id.clone(),
                launched_at: o.launched_at,
                state: o.state,
                zone: o.zone.clone(),
                instance_type: o.instance_type.clone(),
            })
            .collect();
        found.sort_by(|a, b| (a.launched_at, &a.id).cmp(&(b.launched_at, &b.id)));
        if !found.is_empty() {
            tx.adopt_launch(&pending.token, &found, &[]);
        } else if pending.lease_until <= now && tx.fleet.quarantined.contains_key(&pending.image) {
            tx.drop_pending(
                &pending.token,
                format!("image {} is quarantined", pending.image),
            );
        } else if pending.lease_until <= now {
            if let Some(p) = tx
                .fleet
                .pending
                .iter_mut()
                .find(|p| p.token == pending.token)
            {
                p.lease_until = now + LEASE;
            }
            tx.changes.push(Change::LaunchRetried {
                token: pending.token.clone(),
            });
            tx.launches.push(Command::Launch {
                token: pending.token.clone(),
                image: pending.image.clone(),
                count: pending.count,
            });
        }
    }

    // Recorded instances: follow EC2's view of them, as they were before this loop changed any
    // (a snapshot: a clone of the shared records, not a copy of them).
    let recorded = tx.fleet.instances.clone();
    let (reports, known) = match_observed(&recorded, observed);
    for (inst, report) in reports.into_iter().filter(|(i, _)| i.is_live()) {
        if !tx.room_to_touch() {
            break;
        }
        match report {
            Some(o) if o.state.is_gone() => {
                if inst.disposal.is_some() {
                    tx.changes.push(Change::Terminated {
                        instances: vec![inst.id.clone()],
                        request_ids: Vec::new(),
                    });
                } else {
                    tx.changes.push(Change::Vanished {
                        instance: inst.id.clone(),
                        state: o.state.as_str().into(),
                    });
                }
                tx.bury(&inst.id);
            }
            Some(o) => {
                if o.state != inst.state {
                    if let Some(i) = tx.instance_mut(&inst.id) {
                        i.state = o.state;
                    }
                    tx.changes.push(Change::StateChanged {
                        instance: inst.id.clone(),
                        state: o.state,
                    });
                }
                if (o.zone.is_some() && inst.zone.is_none())
                    || (o.instance_type.is_some() && inst.instance_type.is_none())
                {
                    if let Some(i) = tx.instance_mut(&inst.id) {
                        i.zone = i.zone.clone().or(o.zone.clone());
                        i.instance_type = i.instance_type.clone().or(o.instance_type.clone());
                    }
                }
                let stopped = matches!(o.state, Lifecycle::Stopping | Lifecycle::Stopped);
                if stopped && !inst.is_failed() && inst.disposal.is_none() {
                    tx.set_health(
                        &inst.id,
                        Health::Unhealthy {
                            reason: format!("instance is {} outside phoenix", o.state.as_str()),
                        },
                    );
                } else if inst.health == Health::Unknown {
                    let ec2_ok = o.state == Lifecycle::Running && o.status_ok;
                    if ec2_ok && !inst.signals.ec2_ok {
                        if let Some(i) = tx.instance_mut(&inst.id) {
                            i.signals.ec2_ok = true;
                        }
                    }
                    tx.promote(&inst.id);
                }
                if let Some(d) = &inst.disposal {
                    // Decided but apparently never carried out (the deciding invocation died).
                    // Issued again as a change of its own with a fresh lease, like a retried
                    // launch: the controller neither commits nor executes a step without changes.
                    // One waiting for its replacement's launch, while that launch is pending, goes
                    // only with the launch's retry, and only if the launch succeeds.
                    let waits_for = d
                        .after_launch
                        .clone()
                        .filter(|t| tx.fleet.pending.iter().any(|p| p.token == *t));
                    let retried = waits_for.as_ref().is_some_and(|t| {
                        tx.launches
                            .iter()
                            .any(|c| matches!(c, Command::Launch { token, .. } if token == t))
                    });
                    if d.decided_at + LEASE <= now
                        && !tx.terminate_now.contains(&inst.id)
                        && (waits_for.is_none() || retried)
                    {
                        if let Some(disposal) =
                            tx.instance_mut(&inst.id).and_then(|i| i.disposal.as_mut())
                        {
                            disposal.decided_at = now;
                        }
                        tx.changes.push(Change::TerminationDecided {
                            instance: inst.id.clone(),
                            reason: format!("{} (issued again)", d.reason),
                        });
                        match waits_for {
                            Some(t) => tx
                                .terminate_after
                                .entry(t)
                                .or_default()
                                .push(inst.id.clone()),
                            None => tx.terminate_now.push(inst.id.clone()),
                        }
                    }
                }
            }
            None if inst.launched_at + OBSERVE_GRACE <= now => {
                if inst.disposal.is_some() {
                    tx.changes.push(Change::Terminated {
                        instances: vec![inst.id.clone()],
                        request_ids: Vec::new(),
                    });
                } else {
                    tx.changes.push(Change::Vanished {
                        instance: inst.id.clone(),
                        state: "missing".into(),
                    });
                }
                tx.bury(&inst.id);
            }
            None => {}
        }
    }

    // Tagged with the fleet, but owned by no record and no pending decision: terminate.
    let pending_tokens: BTreeSet<&str> = fleet_tokens(&tx.fleet);
    // (The loop above neither adds nor removes records: `known` still says which have one.)
    let orphans: Vec<InstanceId> = observed
        .iter()
        .zip(known)
        .filter(|(o, known)| !known && !o.state.is_gone())
        .map(|(o, _)| o)
        .filter(|o| {
            o.token
                .as_deref()
                .is_none_or(|t| !pending_tokens.contains(t))
        })
        .filter(|o| !tx.terminate_now.contains(&o.id))
        .map(|o| o.id.clone())
        .collect();
    for id in orphans {
        tx.changes.push(Change::TerminationDecided {
            instance: id.clone(),
            reason: "owned by no phoenix decision".into(),
        });
        tx.terminate_now.push(id);
    }
}

/// Pairs each recorded instance, in id order, with what EC2 reports about it (the later report
/// if there are two), and says which reports belong to a record. A merge of both lists in id
/// order: a map lookup per instance cost more than the rest of a pass over a large fleet.
fn match_observed<'r, 'o>(
    recorded: &'r Instances,
    observed: &'o [Observed],
) -> (Vec<(&'r Instance, Option<&'o Observed>)>, Vec<bool>) {
    // Positions in `observed` by id (EC2 lists instances in no particular order); with equal
    // ids, the later last.
    let mut order: Vec<([u64; 3], usize)> = observed
        .iter()
        .enumerate()
        .map(|(k, o)| (id_key(&o.id), k))
        .collect();
    order.sort_unstable();
    let mut order = order.into_iter().peekable();
    let mut known = vec![false; observed.len()];
    let reports = recorded
        .iter()
        .map(|(id, inst)| {
            let key = id_key(id);
            let mut report = None;
            while let Some(&(other, k)) = order.peek() {
                match other.cmp(&key) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        known[k] = true;
                        report = Some(&observed[k]);
                    }
                    Ordering::Greater => break,
                }
                order.next();
            }
            (inst, report)
        })
        .collect();
    (reports, known)
}

/// An instance id as numbers, to sort thousands without comparing strings: a valid id is at
/// most 19 ASCII bytes (`i-` and 8 or 17 hex digits), so its first 24 bytes, zero-padded, tell
/// it apart from any other and sort as its text does.
fn id_key(id: &InstanceId) -> [u64; 3] {
    let mut bytes = [0u8; 24];
    let text = id.as_str().as_bytes();
    let n = text.len().min(bytes.len());
    bytes[..n].copy_from_slice(&text[..n]);
    let word = |k: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[k * 8..k * 8 + 8]);
        u64::from_be_bytes(w)
    };
    [word(0), word(1), word(2)]
}

fn fleet_tokens(fleet: &Fleet) -> BTreeSet<&str> {
    fleet.pending.iter().map(|p| p.token.as_str()).collect()
}

/// How many instances on the target image the rollout allows now (`None`: up to capacity): the
/// canary until it is healthy and baked, then each checkpoint in turn; frozen while paused; and
/// after an abort, no more than there are.
fn new_image_cap(fleet: &Fleet, current_new: u32) -> Option<u32> {
    let r = fleet.rollout.as_ref()?;
    let capacity = fleet.spec.capacity;
    let policy = &fleet.spec.policy;
    match r.status {
        RolloutStatus::Paused | RolloutStatus::Aborted => return Some(current_new),
        RolloutStatus::InProgress => {}
        _ => return None,
    }
    let mut cap = capacity;
    if let Some(canary) = policy.canary {
        let size = canary
            .resolve(capacity, Rounding::Up)
            .clamp(1, capacity.max(1));
        // Instances already on the image (left by a rollout it superseded) may fill the canary's
        // share before any wave starts: then they are the canary, or it would never be done.
        let healthy_on_target = fleet
            .live_instances()
            .filter(|i| i.image == r.to && i.is_healthy() && i.disposal.is_none())
            .count() as u32;
        let canary_done = r.waves.first().is_some_and(|w| w.healthy_at.is_some())
            || (r.waves.is_empty() && healthy_on_target >= size);
        if !canary_done {
            cap = cap.min(size);
        }
    }
    if let Some(next) = policy
        .checkpoints
        .iter()
        .find(|c| !r.checkpoints_passed.contains(&c.percent))
    {
        cap = cap.min(checkpoint_count(capacity, next.percent));
    }
    Some(cap)
}

/// Leaves in `items` only its first `k` in `order`, in that order: a selection, then a sort of
/// `k` items rather than all of them.
fn first_in_order<T>(items: &mut Vec<T>, k: usize, mut order: impl FnMut(&T, &T) -> Ordering) {
    if k == 0 {
        items.clear();
        return;
    }
    if k < items.len() {
        items.select_nth_unstable_by(k - 1, &mut order);
        items.truncate(k);
    }
    items.sort_by(order);
}

fn checkpoint_count(capacity: u32, percent: u32) -> u32 {
    crate::quantity::Quantity::Percent(percent)
        .resolve(capacity, Rounding::Up)
        .max(1)
}

/// Rolling replacement and scaling, in the manner of a Kubernetes Deployment: never more than
/// `max_total` instances at once, never fewer healthy than `min_healthy`, old images go only as
/// healthy new ones cover them — and no further than the rollout's current stage allows.
fn roll_and_scale(tx: &mut Tx) {
    let capacity = tx.fleet.spec.capacity;
    let budget = tx.fleet.budget();
    let target = tx.fleet.spec.image.clone();

    // Instances that stay (no termination decided), and those leaving only after a launch.
    let mut keep: Vec<&Instance> = Vec::new();
    let mut leaving_later = 0;
    for i in tx.fleet.live_instances() {
        match &i.disposal {
            None => keep.push(i),
            Some(d) if d.after_launch.is_some() => leaving_later += 1,
            Some(_) => {}
        }
    }
    let pending = tx.fleet.pending_count();
    let total = keep.len() as u32 + pending;

    let (mut new, mut old): (Vec<&Instance>, Vec<&Instance>) =
        keep.iter().partition(|i| i.image == target);
    let healthy_new = new.iter().filter(|i| i.is_healthy()).count() as u32;
    let unready_new = new.len() as u32 - healthy_new + pending;
    let cap = new_image_cap(&tx.fleet, healthy_new + unready_new);
    // A paused or aborted rollout freezes how far the new image replaces the old, not the fleet's
    // size: instances that vanished and a scale-out are still made up (from the fleet's image, as
    // repairs are).
    let cap = match tx.fleet.rollout.as_ref().map(|r| r.status) {
        Some(RolloutStatus::Paused | RolloutStatus::Aborted) => {
            cap.map(|c| c + capacity.saturating_sub(total))
        }
        _ => cap,
    };

    // Who goes first: not yet healthy, then older images, then the oldest.
    let order = |a: &&Instance, b: &&Instance| {
        (a.is_healthy(), a.launched_at, &a.id).cmp(&(b.is_healthy(), b.launched_at, &b.id))
    };
    // At most `limit` go, taken from each list in this order (healthy ones last, and skipped
    // only once no more may go): only the first `limit` of a list can be chosen, so only those
    // are put in order. Sorting a whole large fleet cost more than the rest of the pass.
    let room = MAX_TERMINATIONS_PER_STEP.saturating_sub(tx.terminations_this_step());
    let limit = room.min(MAX_TOUCHED_PER_STEP.saturating_sub(tx.touched.len()));

    let mut remove: Vec<(&Instance, String)> = Vec::new();
    if old.is_empty() {
        let excess = total.saturating_sub(capacity) as usize;
        first_in_order(&mut new, excess.min(limit), order);
        for i in &new {
            remove.push((i, format!("scale in to {capacity}")));
        }
    } else {
        let mut can_remove = total
            .saturating_sub(budget.min_healthy)
            .saturating_sub(unready_new) as usize;
        if let Some(cap) = cap {
            // The stage's share of old instances stays until the stage moves on; a scale-in
            // still removes the excess.
            let must_stay = capacity.saturating_sub(cap.max(healthy_new + unready_new)) as usize;
            let stage_room = old.len().saturating_sub(must_stay);
            let excess = total.saturating_sub(capacity) as usize;
            can_remove = can_remove.min(stage_room.max(excess.min(old.len())));
        }
        let reason = match tx.fleet.rollout.as_ref().map(|r| r.status) {
            Some(RolloutStatus::RollingBack) => format!("rolled back to image {target}"),
            Some(RolloutStatus::InProgress) => format!("replaced by image {target}"),
            _ => format!("scale in to {capacity}"),
        };
        first_in_order(&mut old, can_remove.min(limit), order);
        for i in &old {
            remove.push((i, reason.clone()));
        }
        // A scale-in during a rollout: drop new instances beyond capacity too.
        let new_total = new.len() as u32 + pending;
        let excess = new_total.saturating_sub(capacity) as usize;
        first_in_order(&mut new, excess.min(limit), order);
        for i in &new {
            remove.push((i, format!("scale in to {capacity}")));
        }
    }
    // Pending launches count towards capacity above, but serve nothing yet: a scale-in must not
    // trade healthy instances for them below `min_healthy`. The surplus goes once they are up
    // (unready ones first).
    let mut spare = keep
        .iter()
        .filter(|i| i.is_healthy())
        .count()
        .saturating_sub(budget.min_healthy as usize);
    remove.retain(|(i, _)| {
        if i.is_healthy() {
            if spare == 0 {
                return false;
            }
            spare -= 1;
        }
        true
    });
    remove.truncate(limit);
    let wanted = remove.len();
    if let Some(hourly) = tx.hourly_room() {
        remove.truncate(hourly);
    }
    let blocked_by_budget = remove.len() < wanted;
    let removed_new = remove.iter().filter(|(i, _)| i.image == target).count() as u32;
    let removed = remove.len() as u32;
    let remove: Vec<(InstanceId, String)> = remove
        .into_iter()
        .map(|(i, reason)| (i.id.clone(), reason))
        .collect();
    drop(new);
    drop(old);
    drop(keep);
    if blocked_by_budget {
        tx.note_budget(true);
    }

    for (id, reason) in &remove {
        tx.decide_terminate(id, reason.clone(), None);
        if let Some(wave) = tx.active_rollout().and_then(|r| r.waves.last_mut()) {
            wave.terminated.push(id.clone());
        }
    }

    // Launch new-image instances up to capacity (or the stage's cap), within the surge limit.
    let new_count = (healthy_new + unready_new).saturating_sub(removed_new);
    let peak = total - removed + leaving_later;
    let launch = budget
        .max_total
        .saturating_sub(peak)
        .min(
            capacity
                .min(cap.unwrap_or(capacity))
                .saturating_sub(new_count),
        )
        .min(MAX_LAUNCHES_PER_STEP.saturating_sub(tx.launches_this_step()));
    // Never from a quarantined image (the fleet stays on one when a health gate fails with
    // automatic rollback off, until the operator undoes the rollout or clears the quarantine).
    if launch == 0 || !tx.room_to_touch() || tx.fleet.quarantined.contains_key(&target) {
        return;
    }
    let reason = match tx.active_rollout() {
        Some(r) if r.status == RolloutStatus::RollingBack => {
            format!("roll back rollout {} to {target}", r.id)
        }
        Some(r) => format!("rollout {} to {}", r.id, r.to),
        None => format!("bring fleet to {capacity} instances"),
    };
    let token = tx.decide_launch(target, launch, reason);
    let now = tx.now;
    let mut wave_started = None;
    if let Some(r) = tx
        .active_rollout()
        .filter(|r| r.status == RolloutStatus::InProgress)
    {
        let number = r.waves.len() as u32 + 1;
        r.waves.push(Wave {
            number,
            started_at: now,
            tokens: vec![token],
            launched: Vec::new(),
            terminated: Vec::new(),
            healthy_at: None,
        });
        wave_started = Some(Change::WaveStarted {
            rollout: r.id,
            wave: number,
            launches: launch,
        });
    }
    tx.changes.extend(wave_started);
}

/// Marks waves healthy; pauses for the canary's bake and at checkpoints; ends the rollout once
/// every instance runs its target image, healthy (Succeeded, or RolledBack when going back).
fn track_rollout(tx: &mut Tx) {
    let now = tx.now;
    // Read in place rather than copied: a large rollout's waves list thousands of instances.
    let Some(rollout) = tx.fleet.rollout.as_ref().filter(|r| r.status.is_active()) else {
        return;
    };
    let pending: BTreeSet<&str> = fleet_tokens(&tx.fleet);
    let mut changes = Vec::new();
    // Waves that just became healthy, by position.
    let mut healthy_waves = Vec::new();
    for (n, wave) in rollout.waves.iter().enumerate() {
        if wave.healthy_at.is_some() {
            continue;
        }
        let launched_all = wave.tokens.iter().all(|t| !pending.contains(t.as_str()));
        let live: Vec<&Instance> = wave
            .launched
            .iter()
            .filter_map(|id| tx.fleet.instances.get(id))
            .filter(|i| i.is_live())
            .collect();
        if launched_all && !live.is_empty() && live.iter().all(|i| i.is_healthy()) {
            healthy_waves.push(n);
            changes.push(Change::WaveHealthy {
                rollout: rollout.id,
                wave: wave.number,
            });
        }
    }
    let first_wave_was_unhealthy = rollout
        .waves
        .first()
        .is_some_and(|w| w.healthy_at.is_none());
    let target = tx.fleet.spec.image.clone();
    let capacity = tx.fleet.spec.capacity as usize;
    let live: Vec<&Instance> = tx.fleet.live_instances().collect();
    let healthy_on_target = live
        .iter()
        .filter(|i| i.image == target && i.is_healthy() && i.disposal.is_none())
        .count();
    // A rollout whose image failed its health gate (quarantined, paused with automatic rollback
    // off) does not succeed by itself: the operator undoes it, or clears the quarantine.
    let done = tx.fleet.pending.is_empty()
        && !tx.fleet.quarantined.contains_key(&target)
        && live.len() == capacity
        && live
            .iter()
            .all(|i| i.image == target && i.is_healthy() && i.disposal.is_none());
    let policy = tx.fleet.spec.policy.clone();
    let canary_just_healthy =
        policy.canary.is_some() && first_wave_was_unhealthy && healthy_waves.first() == Some(&0);
    let mut pause = None;
    if let Some(r) = tx.fleet.rollout.as_mut() {
        for n in healthy_waves {
            r.waves[n].healthy_at = Some(now);
        }
        if done {
            r.status = if r.status == RolloutStatus::RollingBack {
                RolloutStatus::RolledBack
            } else {
                RolloutStatus::Succeeded
            };
            r.finished_at = Some(now);
            r.pause = None;
            changes.push(if r.status == RolloutStatus::RolledBack {
                Change::RolloutRolledBack { rollout: r.id }
            } else {
                Change::RolloutSucceeded { rollout: r.id }
            });
        } else if r.status == RolloutStatus::InProgress {
            if canary_just_healthy && !policy.bake.is_zero() {
                pause = Some((
                    format!("canary baking for {}", policy.bake),
                    Some(now + policy.bake.duration()),
                ));
            } else if let Some(cp) = policy
                .checkpoints
                .iter()
                .find(|c| !r.checkpoints_passed.contains(&c.percent))
            {
                if healthy_on_target as u32 >= checkpoint_count(capacity as u32, cp.percent) {
                    r.checkpoints_passed.push(cp.percent);
                    let until = cp.pause.map(|p| now + p.duration());
                    changes.push(Change::CheckpointReached {
                        rollout: r.id,
                        percent: cp.percent,
                        until,
                    });
                    let how = match cp.pause {
                        Some(p) => format!("for {p}"),
                        None => "until `phoenix rollout resume`".into(),
                    };
                    pause = Some((
                        format!("checkpoint {}% reached: paused {how}", cp.percent),
                        until,
                    ));
                }
            }
        }
    }
    tx.changes.extend(changes);
    if let Some((reason, until)) = pause {
        tx.pause(reason, until);
    }
}

/// Folds what the executor got back from EC2 into the fleet, as one step.
pub fn record_outcomes(fleet: &Fleet, outcomes: &[Outcome], now: Timestamp) -> Step {
    record_outcome_part(fleet, outcomes, 0..outcomes.len(), now)
}

/// How many instance records recording `outcome` writes.
fn outcome_writes(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Launched { instances, .. } => instances.len(),
        Outcome::Terminated { instances, .. } => instances.len(),
        Outcome::LaunchFailed { .. } | Outcome::TerminateFailed { .. } => 0,
    }
}

/// Splits a step's outcomes, in order, into parts that each write at most
/// `MAX_TOUCHED_PER_STEP` instance records, so that each part is one transaction: a wave that
/// launches 50 instances and terminates the 50 they replace records its 100 outcomes in two.
/// One outcome is never split (a step launches and terminates at most that many at a time).
pub fn outcome_parts(outcomes: &[Outcome]) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let (mut start, mut writes) = (0, 0);
    for (k, outcome) in outcomes.iter().enumerate() {
        let w = outcome_writes(outcome);
        if k > start && writes + w > MAX_TOUCHED_PER_STEP {
            parts.push(start..k);
            (start, writes) = (k, 0);
        }
        writes += w;
    }
    if start < outcomes.len() {
        parts.push(start..outcomes.len());
    }
    parts
}

/// Folds `outcomes[part]` into the fleet. The whole of `outcomes` names the instances that
/// replaced the ones terminated here when they were launched in another part.
pub fn record_outcome_part(
    fleet: &Fleet,
    outcomes: &[Outcome],
    part: std::ops::Range<usize>,
    now: Timestamp,
) -> Step {
    let mut tx = Tx::new(fleet, now);
    for outcome in &outcomes[part] {
        match outcome {
            Outcome::Launched {
                token,
                instances,
                request_ids,
            } => tx.adopt_launch(token, instances, request_ids),
            Outcome::LaunchFailed { token, error } => tx.drop_pending(token, error.clone()),
            Outcome::Terminated {
                instances,
                request_ids,
            } => {
                for id in instances {
                    let replaced = tx.fleet.instances.get(id).and_then(|i| {
                        let d = i.disposal.as_ref()?;
                        let token = d.after_launch.as_ref()?;
                        let by: Vec<InstanceId> = outcomes
                            .iter()
                            .filter_map(|o| match o {
                                Outcome::Launched {
                                    token: t,
                                    instances,
                                    ..
                                } if t == token => Some(instances.iter().map(|l| l.id.clone())),
                                _ => None,
                            })
                            .flatten()
                            .collect();
                        Some(Change::InstanceReplaced {
                            instance: id.clone(),
                            by,
                            reason: d.reason.clone(),
                        })
                    });
                    tx.bury(id);
                    tx.changes.extend(replaced);
                }
                tx.changes.push(Change::Terminated {
                    instances: instances.clone(),
                    request_ids: request_ids.clone(),
                });
            }
            Outcome::TerminateFailed { instances, error } => {
                tx.changes.push(Change::TerminationFailed {
                    instances: instances.clone(),
                    error: error.clone(),
                });
            }
        }
    }
    // The launches above may have completed a wave or the rollout.
    if fleet.complete {
        track_rollout(&mut tx);
    }
    tx.finish()
}

/// After an instance event: the instances of the rollout's current wave, if the event made one
/// of them healthy. The wave may now be complete; if those instances (read alone, not the whole
/// fleet) are all healthy (`wave_healthy`), the controller reconciles the fleet at once so the
/// next wave starts now, not at the next scheduled reconcile (up to a minute later, every wave).
pub fn wave_to_recheck<'a>(fleet: &'a Fleet, changes: &[Change]) -> Option<&'a [InstanceId]> {
    let wave = fleet
        .rollout
        .as_ref()
        .filter(|r| r.status == RolloutStatus::InProgress)?
        .waves
        .last()
        .filter(|w| w.healthy_at.is_none())?;
    changes
        .iter()
        .any(|c| {
            matches!(c, Change::HealthChanged { instance, health: Health::Healthy }
                if wave.launched.contains(instance))
        })
        .then_some(wave.launched.as_slice())
}

/// Whether every live instance of `members` (a fleet loaded with one wave's instances) is healthy.
pub fn wave_healthy(members: &Fleet) -> bool {
    members
        .instances
        .values()
        .filter(|i| i.is_live())
        .all(|i| i.is_healthy())
}
