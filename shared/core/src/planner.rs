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
use crate::events::{Change, Intent, ScaleTarget};
use crate::ids::{ImageId, InstanceId};
use crate::model::{
    Disposal, Fleet, FleetSpec, Health, HealthSignal, Instance, Lifecycle, Observed, PendingLaunch,
    Rollout, RolloutStatus, Timestamp, Wave, MAX_CAPACITY,
};
use chrono::Duration;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Most instances launched by one step. A step is committed in one DynamoDB transaction (at most
/// 100 writes), and each launched instance becomes one item; larger waves take several steps.
pub const MAX_LAUNCHES_PER_STEP: u32 = 30;
/// Most instances terminated by one step, for the same reason (a tombstone is two writes).
pub const MAX_TERMINATIONS_PER_STEP: usize = 30;
/// Most instance items one step may touch in all.
pub const MAX_TOUCHED_PER_STEP: usize = 90;
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
    },
    LaunchFailed {
        token: String,
        error: String,
    },
    Terminated {
        instances: Vec<InstanceId>,
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
        let mut changes = self.changes;
        changes.extend(next.changes);
        let mut commands = self.commands;
        commands.extend(next.commands);
        let mut touched = self.touched;
        touched.extend(next.touched);
        Step {
            fleet: next.fleet,
            changes,
            commands,
            touched,
        }
    }
}

/// A step being built.
struct Tx {
    fleet: Fleet,
    changes: Vec<Change>,
    touched: BTreeSet<InstanceId>,
    launches: Vec<Command>,
    terminate_now: Vec<InstanceId>,
    terminate_after: BTreeMap<String, Vec<InstanceId>>,
    now: Timestamp,
}

impl Tx {
    fn new(fleet: &Fleet, now: Timestamp) -> Self {
        Tx {
            fleet: fleet.clone(),
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

    fn instance_mut(&mut self, id: &InstanceId) -> Option<&mut Instance> {
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
    fn bury(&mut self, id: &InstanceId) {
        let now = self.now;
        let Some(inst) = self.instance_mut(id) else {
            return;
        };
        if inst.terminated_at.is_none() {
            inst.terminated_at = Some(now);
            inst.state = Lifecycle::Terminated;
            self.fleet.live = self.fleet.live.saturating_sub(1);
        }
    }

    fn set_health(&mut self, id: &InstanceId, health: Health) {
        let Some(inst) = self.instance_mut(id) else {
            return;
        };
        if inst.health != health {
            inst.health = health.clone();
            self.changes.push(Change::HealthChanged {
                instance: id.clone(),
                health,
            });
        }
    }

    fn ignore(&mut self, reason: impl Into<String>) {
        self.changes.push(Change::Ignored {
            reason: reason.into(),
        });
    }

    fn current_rollout(&mut self) -> Option<&mut Rollout> {
        self.fleet
            .rollout
            .as_mut()
            .filter(|r| r.status == RolloutStatus::InProgress)
    }

    fn start_rollout(&mut self, from: ImageId, to: ImageId) {
        let mut next_id = 1;
        if let Some(prev) = self.fleet.rollout.as_mut() {
            next_id = prev.id + 1;
            if prev.status == RolloutStatus::InProgress {
                prev.status = RolloutStatus::Superseded;
                prev.finished_at = Some(self.now);
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
        });
    }

    /// Adds instances found for a pending launch and retires the pending record.
    fn adopt_launch(&mut self, token: &str, found: &[Launched]) {
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
                    token: token.to_string(),
                    disposal: None,
                    terminated_at: None,
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

    /// Replaces a failed instance: launch first when the surge limit leaves room, otherwise
    /// terminate first (a failed instance serves nothing, so removing it costs no availability).
    fn repair(&mut self, id: &InstanceId) {
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
        let budget = self.fleet.budget();
        let peak = self.fleet.live + self.fleet.pending_count();
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
        } else {
            self.decide_terminate(id, reason, None);
        }
    }
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
            None => {
                return Err(Error::invalid(
                    "instance",
                    format!("{instance} is not an instance of fleet {}", fleet.spec.name),
                ))
            }
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
                tx.repair(instance);
            }
        },
        Intent::HealthCheckPassed { instance } => match fleet.instances.get(instance) {
            None => {
                return Err(Error::invalid(
                    "instance",
                    format!("{instance} is not an instance of fleet {}", fleet.spec.name),
                ))
            }
            Some(i) if !i.is_live() => tx.ignore(format!("{instance} was already replaced")),
            Some(i) if i.is_failed() => tx.ignore(format!(
                "{instance} failed earlier; a failed instance is never trusted again"
            )),
            Some(i) if i.health == Health::Healthy => {
                tx.ignore(format!("{instance} is already healthy"))
            }
            Some(_) => tx.set_health(instance, Health::Healthy),
        },
        Intent::Reconcile { .. } => {}
    }
    Ok(tx.finish())
}

/// One reconcile pass over a whole fleet: fold in what EC2 reports, finish or retry unfinished
/// work, then plan replacements, rollout waves and scaling under the disruption budget.
///
/// Idempotent: run on the state it produced (and an unchanged EC2) it decides nothing more.
pub fn reconcile(fleet: &Fleet, observed: &[Observed], now: Timestamp) -> Step {
    let mut tx = Tx::new(fleet, now);
    observe(&mut tx, observed);
    // Failed instances first: they are the most urgent and cost no availability.
    let failed: Vec<InstanceId> = tx
        .fleet
        .live_instances()
        .filter(|i| i.is_failed() && i.disposal.is_none())
        .map(|i| i.id.clone())
        .collect();
    for id in failed {
        if tx.room_to_touch() {
            tx.repair(&id);
        }
    }
    roll_and_scale(&mut tx);
    track_rollout(&mut tx);
    tx.finish()
}

fn observe(tx: &mut Tx, observed: &[Observed]) {
    let now = tx.now;
    let by_id: BTreeMap<&InstanceId, &Observed> = observed.iter().map(|o| (&o.id, o)).collect();

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
            })
            .collect();
        found.sort_by(|a, b| (a.launched_at, &a.id).cmp(&(b.launched_at, &b.id)));
        if !found.is_empty() {
            tx.adopt_launch(&pending.token, &found);
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

    // Recorded instances: follow EC2's view of them.
    let recorded: Vec<Instance> = tx.fleet.live_instances().cloned().collect();
    let health_signal = tx.fleet.spec.policy.health_check;
    for inst in recorded {
        if !tx.room_to_touch() {
            break;
        }
        match by_id.get(&inst.id) {
            Some(o) if o.state.is_gone() => {
                if inst.disposal.is_some() {
                    tx.changes.push(Change::Terminated {
                        instances: vec![inst.id.clone()],
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
                let stopped = matches!(o.state, Lifecycle::Stopping | Lifecycle::Stopped);
                if stopped && !inst.is_failed() && inst.disposal.is_none() {
                    tx.set_health(
                        &inst.id,
                        Health::Unhealthy {
                            reason: format!("instance is {} outside phoenix", o.state.as_str()),
                        },
                    );
                } else if health_signal == HealthSignal::Ec2
                    && inst.health == Health::Unknown
                    && o.state == Lifecycle::Running
                    && o.status_ok
                {
                    tx.set_health(&inst.id, Health::Healthy);
                }
                if let Some(d) = &inst.disposal {
                    // Decided but apparently never carried out (the deciding invocation died).
                    // Issued again as a change of its own with a fresh lease, like a retried
                    // launch: the controller neither commits nor executes a step without changes.
                    if d.decided_at + LEASE <= now && !tx.terminate_now.contains(&inst.id) {
                        if let Some(disposal) =
                            tx.instance_mut(&inst.id).and_then(|i| i.disposal.as_mut())
                        {
                            disposal.decided_at = now;
                        }
                        tx.changes.push(Change::TerminationDecided {
                            instance: inst.id.clone(),
                            reason: format!("{} (issued again)", d.reason),
                        });
                        tx.terminate_now.push(inst.id.clone());
                    }
                }
            }
            None if inst.launched_at + OBSERVE_GRACE <= now => {
                if inst.disposal.is_some() {
                    tx.changes.push(Change::Terminated {
                        instances: vec![inst.id.clone()],
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
    let orphans: Vec<InstanceId> = observed
        .iter()
        .filter(|o| !o.state.is_gone() && !tx.fleet.instances.contains_key(&o.id))
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

fn fleet_tokens(fleet: &Fleet) -> BTreeSet<&str> {
    fleet.pending.iter().map(|p| p.token.as_str()).collect()
}

/// Rolling replacement and scaling, in the manner of a Kubernetes Deployment: never more than
/// `max_total` instances at once, never fewer healthy than `min_healthy`, old images go only as
/// healthy new ones cover them.
fn roll_and_scale(tx: &mut Tx) {
    let capacity = tx.fleet.spec.capacity;
    let budget = tx.fleet.budget();
    let target = tx.fleet.spec.image.clone();

    // Instances that stay (no termination decided), and those leaving only after a launch.
    let keep: Vec<&Instance> = tx
        .fleet
        .live_instances()
        .filter(|i| i.disposal.is_none())
        .collect();
    let leaving_later = tx
        .fleet
        .live_instances()
        .filter(|i| {
            i.disposal
                .as_ref()
                .is_some_and(|d| d.after_launch.is_some())
        })
        .count() as u32;
    let pending = tx.fleet.pending_count();
    let total = keep.len() as u32 + pending;

    let (mut new, mut old): (Vec<&Instance>, Vec<&Instance>) =
        keep.iter().partition(|i| i.image == target);
    let healthy_new = new.iter().filter(|i| i.is_healthy()).count() as u32;
    let unready_new = new.len() as u32 - healthy_new + pending;

    // Who goes first: not yet healthy, then older images, then the oldest.
    let order = |a: &&Instance, b: &&Instance| {
        (a.is_healthy(), a.launched_at, &a.id).cmp(&(b.is_healthy(), b.launched_at, &b.id))
    };
    old.sort_by(order);
    new.sort_by(order);

    let mut remove: Vec<(InstanceId, String)> = Vec::new();
    if old.is_empty() {
        let excess = total.saturating_sub(capacity) as usize;
        for i in new.iter().take(excess) {
            remove.push((i.id.clone(), format!("scale in to {capacity}")));
        }
    } else {
        let can_remove = total
            .saturating_sub(budget.min_healthy)
            .saturating_sub(unready_new) as usize;
        for i in old.iter().take(can_remove) {
            remove.push((i.id.clone(), format!("replaced by image {target}")));
        }
        // A scale-in during a rollout: drop new instances beyond capacity too.
        let new_total = new.len() as u32 + pending;
        for i in new.iter().take(new_total.saturating_sub(capacity) as usize) {
            remove.push((i.id.clone(), format!("scale in to {capacity}")));
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
    remove.retain(|(id, _)| {
        if keep.iter().any(|i| &i.id == id && i.is_healthy()) {
            if spare == 0 {
                return false;
            }
            spare -= 1;
        }
        true
    });
    let room = MAX_TERMINATIONS_PER_STEP.saturating_sub(tx.terminations_this_step());
    remove.truncate(room.min(MAX_TOUCHED_PER_STEP.saturating_sub(tx.touched.len())));
    let removed_new = remove
        .iter()
        .filter(|(id, _)| new.iter().any(|i| &i.id == id))
        .count() as u32;
    let removed = remove.len() as u32;
    drop(new);
    drop(old);
    drop(keep);

    let rollout_ongoing = tx
        .fleet
        .rollout
        .as_ref()
        .is_some_and(|r| r.status == RolloutStatus::InProgress);
    for (id, reason) in &remove {
        tx.decide_terminate(id, reason.clone(), None);
        if rollout_ongoing {
            if let Some(wave) = tx.current_rollout().and_then(|r| r.waves.last_mut()) {
                wave.terminated.push(id.clone());
            }
        }
    }

    // Launch new-image instances up to capacity, within the surge limit.
    let new_count = (healthy_new + unready_new).saturating_sub(removed_new);
    let peak = total - removed + leaving_later;
    let launch = budget
        .max_total
        .saturating_sub(peak)
        .min(capacity.saturating_sub(new_count))
        .min(MAX_LAUNCHES_PER_STEP.saturating_sub(tx.launches_this_step()));
    if launch == 0 || !tx.room_to_touch() {
        return;
    }
    let reason = match tx.current_rollout() {
        Some(r) => format!("rollout {} to {}", r.id, r.to),
        None => format!("bring fleet to {capacity} instances"),
    };
    let token = tx.decide_launch(target, launch, reason);
    let now = tx.now;
    let mut wave_started = None;
    if let Some(r) = tx.current_rollout() {
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

/// Marks waves healthy and the rollout succeeded once every instance runs the new image, healthy.
fn track_rollout(tx: &mut Tx) {
    let now = tx.now;
    let Some(rollout) = tx
        .fleet
        .rollout
        .clone()
        .filter(|r| r.status == RolloutStatus::InProgress)
    else {
        return;
    };
    let pending: BTreeSet<&str> = fleet_tokens(&tx.fleet);
    let mut changes = Vec::new();
    let mut waves = rollout.waves.clone();
    for wave in waves.iter_mut().filter(|w| w.healthy_at.is_none()) {
        let launched_all = wave.tokens.iter().all(|t| !pending.contains(t.as_str()));
        let live: Vec<&Instance> = wave
            .launched
            .iter()
            .filter_map(|id| tx.fleet.instances.get(id))
            .filter(|i| i.is_live())
            .collect();
        if launched_all && !live.is_empty() && live.iter().all(|i| i.is_healthy()) {
            wave.healthy_at = Some(now);
            changes.push(Change::WaveHealthy {
                rollout: rollout.id,
                wave: wave.number,
            });
        }
    }
    let capacity = tx.fleet.spec.capacity as usize;
    let live: Vec<&Instance> = tx.fleet.live_instances().collect();
    let done = tx.fleet.pending.is_empty()
        && live.len() == capacity
        && live
            .iter()
            .all(|i| i.image == rollout.to && i.is_healthy() && i.disposal.is_none());
    if let Some(r) = tx.fleet.rollout.as_mut() {
        r.waves = waves;
        if done {
            r.status = RolloutStatus::Succeeded;
            r.finished_at = Some(now);
            changes.push(Change::RolloutSucceeded { rollout: r.id });
        }
    }
    tx.changes.extend(changes);
}

/// Folds what the executor got back from EC2 into the fleet.
pub fn record_outcomes(fleet: &Fleet, outcomes: &[Outcome], now: Timestamp) -> Step {
    let mut tx = Tx::new(fleet, now);
    for outcome in outcomes {
        match outcome {
            Outcome::Launched { token, instances } => tx.adopt_launch(token, instances),
            Outcome::LaunchFailed { token, error } => {
                let Some(pos) = tx.fleet.pending.iter().position(|p| &p.token == token) else {
                    continue;
                };
                tx.fleet.pending.remove(pos);
                tx.changes.push(Change::LaunchFailed {
                    token: token.clone(),
                    error: error.clone(),
                });
                // The instances waiting for this replacement stay; the next pass plans again.
                let waiting: Vec<InstanceId> = tx
                    .fleet
                    .live_instances()
                    .filter(|i| {
                        i.disposal.as_ref().and_then(|d| d.after_launch.as_deref())
                            == Some(token.as_str())
                    })
                    .map(|i| i.id.clone())
                    .collect();
                for id in waiting {
                    if let Some(i) = tx.instance_mut(&id) {
                        i.disposal = None;
                    }
                }
            }
            Outcome::Terminated { instances } => {
                for id in instances {
                    tx.bury(id);
                }
                tx.changes.push(Change::Terminated {
                    instances: instances.clone(),
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
