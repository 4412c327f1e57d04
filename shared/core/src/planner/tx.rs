//! A step being built (`Tx`), and the limits one step keeps.
//!
//! Every file of the planner changes the fleet through a `Tx`: it starts from a copy of the fleet
//! it is given (instance records are shared until changed), records each change next to its
//! reason, and collects the commands. What holds, whichever file plans:
//! - a launch is recorded in the fleet as pending (`PendingLaunch`, with a lease of `LEASE`) in
//!   the step that decides it, before any command runs (write-ahead);
//! - a termination of a member of the fleet is recorded on the instance (`Disposal`) in the step
//!   that decides it, and counts against the hourly disruption budget;
//! - every instance record changed is in `touched`: the store writes exactly those.
//!
//! A step is committed as one DynamoDB transaction, so the passes that may change many records
//! stop at `MAX_TOUCHED_PER_STEP` instance records, `MAX_LAUNCHES_PER_STEP` launches and
//! `MAX_TERMINATIONS_PER_STEP` terminations; what is left waits for the next pass.

use super::step::{Command, Step};
use crate::events::Change;
use crate::ids::{ImageId, InstanceId};
use crate::model::{
    FailedInstance, Fleet, Health, Instance, Lifecycle, Offering, PendingLaunch, RecentFailure,
    Target, Timestamp, MAX_RECENT_FAILURES,
};
use chrono::Duration;
use std::collections::{BTreeMap, BTreeSet};

/// Most instances launched by one step. A step is committed in one DynamoDB transaction (at most
/// 100 writes): each instance whose record it changes is one item write there, beside the fleet
/// record, the history entry, the event record (or, applying a queued intent, its inbox item and
/// its event record), the notifications it publishes (one outbox item) and (for a new fleet) the
/// fleet index. Launches
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

/// How long after its decision a registration may still be started: one the executor reaches
/// later is not carried out (recorded as failed; a later pass decides it again). Within an
/// invocation's life (the functions' timeout is 60 s), so it binds only where there is no
/// deadline (the CLI).
pub const REGISTER_WITHIN: Duration = Duration::seconds(30);

/// How long after its decision a registration whose outcome is never recorded (the invocation
/// died) is still taken as possibly landing: `LEASE`. By then the invocation that decided it has
/// ended (and its calls with it), and a pass planning then read the target groups after that.
pub const REGISTRATION_LEASE: Duration = LEASE;

/// A step being built.
pub(super) struct Tx {
    pub(super) fleet: Fleet,
    pub(super) changes: Vec<Change>,
    pub(super) touched: BTreeSet<InstanceId>,
    pub(super) launches: Vec<Command>,
    pub(super) terminate_now: Vec<InstanceId>,
    pub(super) terminate_after: BTreeMap<String, Vec<InstanceId>>,
    pub(super) register: Vec<InstanceId>,
    pub(super) deregister_now: Vec<InstanceId>,
    pub(super) deregister_after: BTreeMap<String, Vec<InstanceId>>,
    /// Adopted instances to tag as the fleet's, released ones to untag, and instances to detach
    /// from their Auto Scaling group (by group).
    pub(super) tag: Vec<InstanceId>,
    pub(super) untag: Vec<InstanceId>,
    pub(super) detach: BTreeMap<String, Vec<InstanceId>>,
    pub(super) now: Timestamp,
}

impl Tx {
    pub(super) fn new(fleet: &Fleet, now: Timestamp) -> Self {
        Self::owning(fleet.clone(), now)
    }

    pub(super) fn owning(fleet: Fleet, now: Timestamp) -> Self {
        Tx {
            fleet,
            changes: Vec::new(),
            touched: BTreeSet::new(),
            launches: Vec::new(),
            terminate_now: Vec::new(),
            terminate_after: BTreeMap::new(),
            register: Vec::new(),
            deregister_now: Vec::new(),
            deregister_after: BTreeMap::new(),
            tag: Vec::new(),
            untag: Vec::new(),
            detach: BTreeMap::new(),
            now,
        }
    }

    pub(super) fn finish(mut self) -> Step {
        let mut commands = Vec::new();
        // A registration may land until its outcome is recorded, or its lease runs out: the
        // fleet record says so (in this very commit, before any command runs), and a drain of
        // the instance does not end meanwhile (`way_out`).
        let now = self.now;
        self.fleet.registering.retain(|_, until| *until > now);
        if !self.register.is_empty() {
            let lands_by = now + REGISTRATION_LEASE;
            for id in &self.register {
                self.fleet.registering.insert(id.clone(), lands_by);
            }
            commands.push(Command::Register {
                instances: self.register,
                start_by: now + REGISTER_WITHIN,
                lands_by,
            });
        }
        if !self.tag.is_empty() {
            commands.push(Command::Tag {
                instances: self.tag,
            });
        }
        if !self.untag.is_empty() {
            commands.push(Command::Untag {
                instances: self.untag,
            });
        }
        for (group, instances) in self.detach {
            commands.push(Command::Detach { group, instances });
        }
        if !self.terminate_now.is_empty() {
            commands.push(Command::Terminate {
                instances: self.terminate_now,
                after_launch: None,
            });
        }
        if !self.deregister_now.is_empty() {
            commands.push(Command::Deregister {
                instances: self.deregister_now,
                after_launch: None,
            });
        }
        commands.extend(self.launches);
        for (token, instances) in self.deregister_after {
            commands.push(Command::Deregister {
                instances,
                after_launch: Some(token),
            });
        }
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

    pub(super) fn instance_mut(&mut self, id: &InstanceId) -> Option<&mut Instance> {
        let inst = self.fleet.instances.get_mut(id)?;
        self.touched.insert(id.clone());
        Some(inst)
    }

    /// A registration of `id` decided earlier may still reach the target groups (its outcome
    /// is not recorded, and its lease has not run out).
    pub(super) fn registering(&self, id: &InstanceId) -> bool {
        self.fleet
            .registering
            .get(id)
            .is_some_and(|until| *until > self.now)
    }

    pub(super) fn room_to_touch(&self) -> bool {
        self.touched.len() < MAX_TOUCHED_PER_STEP
    }

    pub(super) fn launches_this_step(&self) -> u32 {
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

    pub(super) fn terminations_this_step(&self) -> usize {
        self.terminate_now.len()
            + self.terminate_after.values().map(Vec::len).sum::<usize>()
            + self.deregister_now.len()
            + self.deregister_after.values().map(Vec::len).sum::<usize>()
    }

    /// How many more instances may be taken away this hour (`None`: no limit).
    pub(super) fn hourly_room(&self) -> Option<usize> {
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
    pub(super) fn note_budget(&mut self, blocked: bool) {
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
    pub(super) fn decide_launch(
        &mut self,
        image: ImageId,
        count: u32,
        reason: String,
        offerings: Vec<Offering>,
    ) -> String {
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
            replacement_for: None,
            offerings: offerings.clone(),
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
            offerings,
        });
        token
    }

    /// Marks an instance as gone (a tombstone is kept so late events about it are recognised).
    pub(super) fn bury(&mut self, id: &InstanceId) {
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

    pub(super) fn set_health(&mut self, id: &InstanceId, health: Health) {
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
            let snapshot = FailedInstance::from(&*inst);
            self.fleet.failed += 1;
            // Only a replacement's failure can be churn; enough to decide the breaker (it trips
            // past its threshold), and the record stays small.
            let window = self.fleet.spec.policy.breaker.window.duration();
            let now = self.now;
            self.fleet.failures.retain(|f| f.at + window > now);
            let room = (self.fleet.spec.capacity as usize).min(MAX_RECENT_FAILURES);
            if snapshot.replacement_for.is_some() && self.fleet.failures.len() < room {
                self.fleet.failures.push(RecentFailure {
                    at: self.now,
                    instance: snapshot,
                });
            }
        } else if was_failed && !is_failed {
            self.fleet.failed = self.fleet.failed.saturating_sub(1);
        }
        // A new instance of the rollout's target serving is progress (Kubernetes counts newly
        // available pods the same way): the rollout's deadline starts again.
        self.changes.push(Change::HealthChanged {
            instance: id.clone(),
            health: health.clone(),
        });
        let rolling = self
            .fleet
            .rollout
            .as_ref()
            .is_some_and(|r| r.status.is_active());
        if health == Health::Healthy && rolling {
            let on_target = self
                .fleet
                .instances
                .get(id)
                .is_some_and(|i| Target::of(&self.fleet).matches(i));
            if on_target {
                self.progressed();
            }
        }
    }

    /// Counts an instance healthy once its signals satisfy the policy and its warmup is over.
    pub(super) fn promote(&mut self, id: &InstanceId) {
        let policy = &self.fleet.spec.policy;
        let Some(inst) = self.fleet.instances.get(id) else {
            return;
        };
        // With target groups, an instance counts only once it serves: every group reports it
        // healthy, whatever else the policy names.
        let serves = self.fleet.spec.target_groups().is_empty() || inst.signals.elb_ok;
        let ready = inst.health == Health::Unknown
            && inst.state == Lifecycle::Running
            && policy.health_check.satisfied_by(inst.signals)
            && serves
            && inst.launch_hook_passed()
            && inst.launched_at + policy.warmup.duration() <= self.now;
        if ready {
            self.set_health(id, Health::Healthy);
        }
    }

    /// The rollout moved on (an instance of its target became healthy, a wave did, it rolled
    /// back, it was resumed): its progress deadline starts again, and a stall is over.
    pub(super) fn progressed(&mut self) {
        let now = self.now;
        let Some(r) = self.fleet.rollout.as_mut().filter(|r| r.status.is_active()) else {
            return;
        };
        r.progressed_at = Some(now);
        if r.stalled.take().is_some() {
            let rollout = r.id;
            self.changes.push(Change::RolloutProgressing { rollout });
        }
    }

    pub(super) fn ignore(&mut self, reason: impl Into<String>) {
        self.changes.push(Change::Ignored {
            reason: reason.into(),
        });
    }

    /// Retires a pending launch that will not be made (EC2 refused it, or its image was
    /// quarantined): the instances waiting for it as their replacement stay; the next pass plans
    /// again.
    pub(super) fn drop_pending(&mut self, token: &str, error: &str) {
        let Some(pos) = self.fleet.pending.iter().position(|p| p.token == token) else {
            return;
        };
        self.fleet.pending.remove(pos);
        self.changes.push(Change::LaunchFailed {
            token: token.to_string(),
            error: error.to_string(),
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

    /// The image new instances come from (`Fleet::launchable_image`).
    pub(super) fn launchable_image(&self) -> Option<ImageId> {
        self.fleet.launchable_image()
    }
}

pub(super) fn fleet_tokens(fleet: &Fleet) -> BTreeSet<&str> {
    fleet.pending.iter().map(|p| p.token.as_str()).collect()
}
