//! Serving traffic, on the planner alone: instances behind target groups are drained before they
//! are terminated, counted only once every group reports them healthy, held by lifecycle hooks;
//! a missing group holds voluntary disruption; a Spot interruption drains within its two minutes.
//!
//! A small world stands in for EC2 and the load balancer: it runs every command of every
//! committed step, drains a deregistered instance for the group's delay, and records any
//! termination of an instance a group still lists. Each scenario has a control that shows the
//! world catches what it checks.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use phoenix_core::events::{Change, Intent, ScaleTarget};
use phoenix_core::model::{
    Fleet, FleetSpec, Health, HookKind, HookResult, Lifecycle, Observed, RolloutStatus, Seconds,
    Stage, TargetState,
};
use phoenix_core::notice::Notice;
use phoenix_core::planner::{
    apply_intent, create_fleet, reconcile, record_outcomes, targets_observed, Command, Launched,
    Outcome, Step, REGISTRATION_LEASE,
};
use phoenix_core::{FleetName, ImageId, InstanceId};
use std::collections::BTreeMap;

const A: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-a/0000000000000001";
const B: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-b/0000000000000002";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}
fn ami(n: u8) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap()
}

fn spec(capacity: u32, groups: &[&str], extra: &str) -> FleetSpec {
    let lb = if groups.is_empty() {
        String::new()
    } else {
        format!(
            "load_balancing:\n  target_groups: [{}]\n",
            groups.join(", ")
        )
    };
    let yaml = format!(
        "name: web\nimage: {}\ncapacity: {capacity}\ninstance_type: t3.micro\nsubnets: [subnet-1]\n{lb}{extra}",
        ami(1)
    );
    FleetSpec::from_yaml(&yaml).unwrap()
}

/// What a group knows of one target: registered (healthy once `healthy_from`), or draining.
#[derive(Debug, Clone)]
struct Registration {
    healthy_from: DateTime<Utc>,
    draining_until: Option<DateTime<Utc>>,
}

struct World {
    fleet: Fleet,
    now: DateTime<Utc>,
    next: u32,
    /// Running instances (EC2's view), by id.
    running: BTreeMap<InstanceId, DateTime<Utc>>,
    groups: BTreeMap<String, BTreeMap<InstanceId, Registration>>,
    /// Groups that do not exist (deleted).
    missing: Vec<String>,
    delay: i64,
    /// How long a new target takes to pass the group's health checks.
    warm: i64,
    /// Terminations of an instance EC2 ran while a group listed it.
    blind: Vec<InstanceId>,
    /// The control: deregistration commands are carried out as terminations.
    skip_drain: bool,
    history: Vec<(DateTime<Utc>, Change)>,
}

impl World {
    fn new(spec: FleetSpec, delay: i64) -> World {
        let groups = spec
            .target_groups()
            .iter()
            .map(|g| (g.arn.clone(), BTreeMap::new()))
            .collect();
        let fleet = create_fleet(spec, None, t0()).unwrap().fleet;
        World {
            fleet,
            now: t0(),
            next: 0,
            running: BTreeMap::new(),
            groups,
            missing: Vec::new(),
            delay,
            warm: 10,
            blind: Vec::new(),
            skip_drain: false,
            history: Vec::new(),
        }
    }

    fn listed(&self, id: &InstanceId) -> bool {
        self.groups.values().any(|g| {
            g.get(id)
                .is_some_and(|r| r.draining_until.is_none_or(|u| u > self.now))
        })
    }

    fn observe(&self) -> Vec<Observed> {
        self.fleet
            .live_instances()
            .filter(|i| self.running.contains_key(&i.id))
            .map(|i| {
                let mut o = Observed::running_ok(i);
                for (arn, g) in &self.groups {
                    if self.missing.contains(arn) {
                        continue;
                    }
                    let state = match g.get(&i.id) {
                        Some(r) => match r.draining_until {
                            Some(u) if u > self.now => Some(TargetState::Draining),
                            Some(_) => None,
                            None if r.healthy_from <= self.now => Some(TargetState::Healthy),
                            None => Some(TargetState::Initial),
                        },
                        None => None,
                    };
                    if let Some(s) = state {
                        o.targets.insert(arn.clone(), s);
                    }
                }
                o
            })
            .collect()
    }

    fn commit(&mut self, step: &Step) {
        let mut next = step.fleet.clone();
        next.instances = self.fleet.instances.clone();
        for i in &step.touched {
            if let Some(inst) = step.fleet.instances.get(i) {
                next.instances.insert(i.clone(), inst.clone());
            }
        }
        next.complete = true;
        for c in &step.changes {
            self.history.push((self.now, c.clone()));
        }
        self.fleet = next;
    }

    fn terminate(&mut self, ids: &[InstanceId]) -> Outcome {
        for id in ids {
            if self.running.contains_key(id) && self.listed(id) {
                self.blind.push(id.clone());
            }
            self.running.remove(id);
            for g in self.groups.values_mut() {
                g.remove(id);
            }
        }
        Outcome::Terminated {
            instances: ids.to_vec(),
            request_ids: Vec::new(),
        }
    }

    /// Carries out a committed step's commands (in the executor's order) and records them.
    fn execute(&mut self, step: &Step) {
        let mut outcomes = Vec::new();
        let first = step.commands.iter().filter(|c| {
            matches!(
                c,
                Command::Terminate {
                    after_launch: None,
                    ..
                } | Command::Deregister {
                    after_launch: None,
                    ..
                } | Command::Register { .. }
            )
        });
        let launches = step
            .commands
            .iter()
            .filter(|c| matches!(c, Command::Launch { .. }));
        let after = step.commands.iter().filter(|c| {
            matches!(
                c,
                Command::Terminate {
                    after_launch: Some(_),
                    ..
                } | Command::Deregister {
                    after_launch: Some(_),
                    ..
                }
            )
        });
        for c in first.chain(launches).chain(after) {
            match c {
                Command::Launch { token, count, .. } => {
                    let instances = (0..*count)
                        .map(|_| {
                            self.next += 1;
                            let id = InstanceId::parse(&format!("i-{:08x}", 0x2000 + self.next))
                                .unwrap();
                            self.running.insert(id.clone(), self.now);
                            Launched {
                                id,
                                launched_at: Some(self.now),
                                state: Lifecycle::Running,
                                zone: Some("us-east-1a".into()),
                                instance_type: Some("t3.micro".into()),
                                subnet: Some("subnet-1".into()),
                                definition: Some(self.fleet.definition().fingerprint()),
                            }
                        })
                        .collect();
                    outcomes.push(Outcome::Launched {
                        token: token.clone(),
                        instances,
                        request_ids: Vec::new(),
                        refused: Vec::new(),
                    });
                }
                Command::Tag { .. } | Command::Untag { .. } | Command::Detach { .. } => {
                    panic!("no adoption here: {c:?}")
                }
                Command::Register {
                    instances,
                    lands_by,
                    ..
                } => {
                    for id in instances {
                        for (arn, g) in self.groups.iter_mut() {
                            if !self.missing.contains(arn) {
                                g.insert(
                                    id.clone(),
                                    Registration {
                                        healthy_from: self.now + Duration::seconds(self.warm),
                                        draining_until: None,
                                    },
                                );
                            }
                        }
                    }
                    outcomes.push(Outcome::Registered {
                        instances: instances.clone(),
                        lands_by: *lands_by,
                        request_ids: Vec::new(),
                    });
                }
                Command::Deregister { instances, .. } if self.skip_drain => {
                    outcomes.push(self.terminate(instances));
                }
                Command::Deregister { instances, .. } => {
                    let until = self.now + Duration::seconds(self.delay);
                    for id in instances {
                        for g in self.groups.values_mut() {
                            if let Some(r) = g.get_mut(id) {
                                r.draining_until.get_or_insert(until);
                            }
                        }
                    }
                    outcomes.push(Outcome::Deregistered {
                        instances: instances.clone(),
                        delay: Seconds(self.delay as u64),
                        request_ids: Vec::new(),
                    });
                }
                Command::Terminate { instances, .. } => outcomes.push(self.terminate(instances)),
            }
        }
        if !outcomes.is_empty() {
            let recorded = record_outcomes(&self.fleet, &outcomes, self.now);
            self.commit(&recorded);
        }
    }

    fn run(&mut self, step: Step) {
        if step.is_noop() {
            return;
        }
        self.commit(&step);
        self.execute(&step);
    }

    /// One scheduled pass, committed but not carried out yet: its step.
    fn decide(&mut self) -> Step {
        let observed = self.observe();
        let step = targets_observed(&self.fleet, &[], self.now).then_reconcile(&observed, self.now);
        self.commit(&step);
        step
    }

    /// One scheduled pass, then `secs` later.
    fn pass(&mut self, secs: i64) {
        let missing: Vec<(String, String)> = self
            .missing
            .iter()
            .map(|a| (a.clone(), "TargetGroupNotFound".into()))
            .collect();
        let observed = self.observe();
        let step =
            targets_observed(&self.fleet, &missing, self.now).then_reconcile(&observed, self.now);
        self.run(step);
        self.now += Duration::seconds(secs);
    }

    fn event(&mut self, intent: Intent) {
        let step = apply_intent(&self.fleet, &intent, self.now, self.now).unwrap();
        self.run(step);
    }

    fn healthy(&self) -> usize {
        self.fleet
            .live_instances()
            .filter(|i| i.is_healthy())
            .count()
    }

    fn on_image(&self, image: &ImageId) -> usize {
        self.fleet
            .live_instances()
            .filter(|i| &i.image == image && i.is_healthy() && i.disposal.is_none())
            .count()
    }

    fn changes(&self, f: impl Fn(&Change) -> bool) -> Vec<(DateTime<Utc>, Change)> {
        self.history.iter().filter(|(_, c)| f(c)).cloned().collect()
    }

    /// Passes `secs` apart until the fleet runs `capacity` healthy instances of `image`, nothing
    /// else, or `limit` passes.
    fn settle(&mut self, image: &ImageId, secs: i64, limit: usize) -> usize {
        for n in 0..limit {
            self.pass(secs);
            let cap = self.fleet.spec.capacity as usize;
            if self.on_image(image) == cap && self.fleet.live_instances().count() == cap {
                return n + 1;
            }
        }
        panic!(
            "did not settle: {:#?}",
            self.fleet.live_instances().collect::<Vec<_>>()
        );
    }
}

fn ready(capacity: u32, groups: &[&str], extra: &str, delay: i64) -> World {
    let mut w = World::new(spec(capacity, groups, extra), delay);
    w.settle(&ami(1), 10, 50);
    w
}

fn roll_to_2(w: &mut World) {
    w.event(Intent::ImageReady {
        fleet: FleetName::parse("web").unwrap(),
        image: ami(2),
    });
}

#[test]
fn a_rollout_behind_two_target_groups_drains_every_old_instance_before_terminating_it() {
    let mut w = ready(3, &[A, B], "", 30);
    assert_eq!(w.healthy(), 3);
    roll_to_2(&mut w);
    let mut min_serving = usize::MAX;
    for _ in 0..200 {
        w.pass(10);
        // Serving: healthy in both groups and not on its way out.
        let serving = w
            .fleet
            .live_instances()
            .filter(|i| i.is_healthy() && i.disposal.is_none())
            .count();
        min_serving = min_serving.min(serving);
        if w.on_image(&ami(2)) == 3 && w.fleet.live_instances().count() == 3 {
            break;
        }
    }
    assert_eq!(w.on_image(&ami(2)), 3, "{:?}", w.fleet.rollout);
    assert_eq!(
        w.fleet.rollout.as_ref().unwrap().status,
        RolloutStatus::Succeeded
    );
    assert!(w.blind.is_empty(), "terminated while listed: {:?}", w.blind);
    assert_eq!(
        min_serving, 3,
        "max_unavailable 0: never fewer serving than capacity"
    );
    // Each old instance: drained from, for at least the groups' delay (or until no group listed
    // it), then terminated.
    let drains = w.changes(|c| matches!(c, Change::DrainStarted { .. }));
    assert_eq!(drains.len(), 3, "{drains:?}");
    for (at, c) in drains {
        let Change::DrainStarted { instance, until } = c else {
            unreachable!()
        };
        assert_eq!(until, at + Duration::seconds(30));
        let gone = w.changes(
            |c| matches!(c, Change::Terminated { instances, .. } if instances.contains(&instance)),
        );
        assert!(
            gone.iter().all(|(t, _)| *t >= until),
            "{instance} went before {until}"
        );
    }
}

#[test]
fn control_a_world_that_skips_the_drain_is_caught() {
    let mut w = ready(3, &[A], "", 30);
    w.skip_drain = true;
    roll_to_2(&mut w);
    for _ in 0..50 {
        w.pass(10);
    }
    assert!(
        !w.blind.is_empty(),
        "the world did not see a blind termination"
    );
}

/// A registration decided by one pass and carried out late — after a scale-in deregistered the
/// instance and the next pass found no group listing it (the slow invocation that decided it
/// still running): the drain does not end while that registration may land. `forget`: the
/// control, a planner that forgets registrations in flight. Returns the instances terminated
/// while a group listed them.
fn late_registration(forget: bool) -> Vec<InstanceId> {
    let mut w = ready(2, &[A], "", 30);
    let late = w.fleet.live_instances().next().unwrap().id.clone();
    // The group no longer lists it (made anew, say): the next pass registers it again.
    for g in w.groups.values_mut() {
        g.remove(&late);
    }
    let register = w.decide();
    assert!(
        register
            .commands
            .iter()
            .any(|c| matches!(c, Command::Register { instances, .. } if instances.contains(&late))),
        "{:?}",
        register.commands
    );
    // Before it is carried out, the fleet scales in to nothing: both are deregistered.
    w.event(Intent::Scale {
        fleet: FleetName::parse("web").unwrap(),
        target: ScaleTarget::Desired(0),
    });
    w.pass(1);
    assert!(w.fleet.instances[&late].disposal.is_some());
    if forget {
        w.fleet.registering.clear();
    }
    let next = w.decide();
    // The registration lands, then the pass's commands run.
    w.execute(&register);
    w.execute(&next);
    for _ in 0..30 {
        w.pass(10);
    }
    assert_eq!(w.fleet.live_instances().count(), 0);
    w.blind.clone()
}

#[test]
fn a_registration_carried_out_late_holds_the_drain_until_it_landed() {
    let blind = late_registration(false);
    assert!(blind.is_empty(), "terminated while listed: {blind:?}");
}

#[test]
fn control_a_planner_that_forgets_registrations_in_flight_is_caught() {
    assert_eq!(late_registration(true).len(), 1);
}

#[test]
fn a_registration_whose_outcome_never_comes_holds_the_drain_for_its_lease_only() {
    let mut w = ready(2, &[A], "", 30);
    let late = w.fleet.live_instances().next().unwrap().id.clone();
    for g in w.groups.values_mut() {
        g.remove(&late);
    }
    let decided = w.now;
    // Decided, and never carried out: the invocation died.
    let _lost = w.decide();
    w.event(Intent::Scale {
        fleet: FleetName::parse("web").unwrap(),
        target: ScaleTarget::Desired(0),
    });
    for _ in 0..30 {
        w.pass(5);
    }
    assert_eq!(w.fleet.live_instances().count(), 0);
    let drained = w.changes(|c| matches!(c, Change::Drained { instance, .. } if *instance == late));
    assert_eq!(drained.len(), 1, "{drained:?}");
    assert!(drained[0].0 >= decided + REGISTRATION_LEASE, "{drained:?}");
    assert!(drained[0].0 < decided + REGISTRATION_LEASE + Duration::seconds(10));
    assert!(w.fleet.registering.is_empty(), "{:?}", w.fleet.registering);
}

#[test]
fn new_instances_count_only_once_every_group_reports_them_healthy() {
    let mut w = World::new(spec(1, &[A, B], ""), 0);
    w.warm = 40;
    w.pass(10); // launch
    w.pass(10); // register
    let id = w.fleet.live_instances().next().unwrap().id.clone();
    assert!(w.groups[A].contains_key(&id) && w.groups[B].contains_key(&id));
    // EC2 reports it running with its checks ok, but the groups are still checking it.
    w.pass(10);
    assert_eq!(w.fleet.instances[&id].health, Health::Unknown);
    // One group says healthy, the other not yet: still not counted.
    w.groups
        .get_mut(A)
        .unwrap()
        .get_mut(&id)
        .unwrap()
        .healthy_from = w.now;
    w.pass(10);
    assert_eq!(w.fleet.instances[&id].health, Health::Unknown);
    w.pass(10);
    assert_eq!(w.fleet.instances[&id].health, Health::Unknown);
    // Both do (the second 40 s after registering).
    w.pass(10);
    assert_eq!(w.fleet.instances[&id].health, Health::Healthy);
    // Control: without target groups the same instance counts at EC2's word.
    let mut plain = World::new(spec(1, &[], ""), 0);
    plain.pass(10);
    plain.pass(10);
    assert_eq!(plain.healthy(), 1);
}

#[test]
fn elb_in_the_health_check_replaces_an_instance_a_group_reports_unhealthy() {
    let extra = "policy:\n  health_check: [ec2, elb]\n";
    let mut w = ready(2, &[A], extra, 0);
    let id = w.fleet.live_instances().next().unwrap().id.clone();
    // A group reports it failing its checks: observed as unhealthy.
    w.groups
        .get_mut(A)
        .unwrap()
        .get_mut(&id)
        .unwrap()
        .healthy_from = w.now + Duration::days(1);
    let observed: Vec<Observed> = w
        .observe()
        .into_iter()
        .map(|mut o| {
            if o.id == id {
                o.targets.insert(
                    A.into(),
                    TargetState::Unhealthy {
                        reason: "Target.ResponseCodeMismatch".into(),
                    },
                );
            }
            o
        })
        .collect();
    let step = reconcile(&w.fleet, &observed, w.now);
    assert!(
        step.changes.iter().any(|c| matches!(c, Change::HealthChanged { instance, health: Health::Unhealthy { reason, .. } } if *instance == id && reason.contains("web-a"))),
        "{:?}",
        step.changes
    );
    // Control: without `elb` named, the same report fails nothing.
    let mut plain = ready(2, &[A], "", 0);
    let observed: Vec<Observed> = plain
        .observe()
        .into_iter()
        .map(|mut o| {
            o.targets.insert(
                A.into(),
                TargetState::Unhealthy {
                    reason: "Target.ResponseCodeMismatch".into(),
                },
            );
            o
        })
        .collect();
    let step = reconcile(&plain.fleet, &observed, plain.now);
    assert!(!step
        .changes
        .iter()
        .any(|c| matches!(c, Change::HealthChanged { .. })));
    plain.pass(10);
}

fn hooks(extra: &str) -> String {
    format!("hooks:\n{extra}")
}

#[test]
fn the_launching_hook_holds_a_new_instance_until_answered_and_abandon_rolls_back() {
    let extra = hooks("  launching: {timeout: 10m}\n");
    let mut w = World::new(spec(2, &[A], &extra), 0);
    w.pass(10);
    let ids: Vec<InstanceId> = w.fleet.live_instances().map(|i| i.id.clone()).collect();
    assert_eq!(
        w.changes(|c| matches!(
            c,
            Change::LifecycleHookStarted {
                hook: HookKind::Launching,
                ..
            }
        ))
        .len(),
        2
    );
    for _ in 0..5 {
        w.pass(10);
    }
    // Neither registered nor counted while the hook waits.
    assert!(w.groups[A].is_empty());
    assert_eq!(w.healthy(), 0);
    for id in &ids {
        w.event(Intent::LifecycleActionCompleted {
            instance: id.clone(),
            hook: HookKind::Launching,
            result: HookResult::Continue,
        });
    }
    // Registered at once by the answer; counted once the group says healthy.
    assert_eq!(w.groups[A].len(), 2);
    w.settle(&ami(1), 10, 10);
    // A rollout whose first new instance is abandoned by its hook rolls back.
    roll_to_2(&mut w);
    w.pass(10);
    let new = w
        .fleet
        .live_instances()
        .find(|i| i.image == ami(2))
        .unwrap()
        .id
        .clone();
    w.event(Intent::LifecycleActionCompleted {
        instance: new.clone(),
        hook: HookKind::Launching,
        result: HookResult::Abandon,
    });
    assert!(w.fleet.instances[&new].is_failed());
    assert_eq!(
        w.fleet.rollout.as_ref().unwrap().status,
        RolloutStatus::RollingBack,
        "{:?}",
        w.fleet.rollout
    );
    assert!(w.fleet.quarantined.contains_key(&ami(2)));
}

#[test]
fn a_launching_hook_that_times_out_takes_its_default_result() {
    let extra = hooks("  launching: {timeout: 60s, default_result: ABANDON}\n");
    let mut w = World::new(spec(1, &[], &extra), 0);
    w.pass(30);
    let id = w.fleet.live_instances().next().unwrap().id.clone();
    w.pass(20);
    w.pass(20);
    // 50 s after its launch: EC2 reports it running and ok, but its hook waits.
    assert_eq!(w.fleet.instances[&id].health, Health::Unknown);
    w.pass(20);
    assert!(
        w.fleet.instances[&id].is_failed(),
        "{:?}",
        w.fleet.instances[&id]
    );
    assert!(w
        .changes(|c| matches!(c, Change::LifecycleHookCompleted { by, result: HookResult::Abandon, .. } if by == "timeout"))
        .len()
        == 1);
}

#[test]
fn the_terminating_hook_holds_a_drained_instance_until_answered_then_it_goes() {
    let extra = hooks("  terminating: {timeout: 5m}\n");
    let mut w = ready(2, &[A], &extra, 20);
    roll_to_2(&mut w);
    let mut held = None;
    for _ in 0..30 {
        w.pass(10);
        held = w
            .fleet
            .live_instances()
            .find(|i| {
                matches!(
                    i.disposal.as_ref().map(|d| &d.stage),
                    Some(Stage::Hook { .. })
                )
            })
            .map(|i| i.id.clone());
        if held.is_some() {
            break;
        }
    }
    let held = held.expect("an old instance reaches the terminating hook");
    // It drained first, and it waits: still running, out of the group.
    assert!(w.running.contains_key(&held) && !w.listed(&held));
    w.pass(60);
    assert!(
        w.running.contains_key(&held),
        "terminated before the hook was answered"
    );
    w.event(Intent::LifecycleActionCompleted {
        instance: held.clone(),
        hook: HookKind::Terminating,
        result: HookResult::Continue,
    });
    assert!(
        !w.running.contains_key(&held),
        "answered, it is terminated at once"
    );
    // The other old instance goes at its hook's timeout, unanswered.
    w.settle(&ami(2), 30, 100);
    assert!(w.blind.is_empty());
    assert!(w
        .changes(|c| matches!(c, Change::LifecycleHookCompleted { by, hook: HookKind::Terminating, .. } if by == "timeout"))
        .len()
        == 1);
}

#[test]
fn a_missing_target_group_holds_the_rollout_and_no_drain_ends_early() {
    let mut w = ready(2, &[A, B], "", 100);
    roll_to_2(&mut w);
    // Wave one: a new instance, healthy, and an old one draining.
    let mut draining = None;
    for _ in 0..20 {
        w.pass(10);
        draining = w
            .fleet
            .live_instances()
            .find(|i| {
                matches!(
                    i.disposal.as_ref().map(|d| &d.stage),
                    Some(Stage::Draining { .. })
                )
            })
            .map(|i| i.id.clone());
        if draining.is_some() {
            break;
        }
    }
    let draining = draining.unwrap();
    // Group B is deleted: phoenix cannot see all of what serves.
    w.missing.push(B.into());
    // Group A stops listing the draining instance at once (no connections left): without B's
    // word, the drain still lasts its delay.
    w.groups.get_mut(A).unwrap().remove(&draining);
    w.pass(10);
    assert_eq!(w.fleet.lb_missing.len(), 1);
    assert_eq!(
        w.changes(|c| matches!(c, Change::TargetGroupMissing { .. }))
            .len(),
        1
    );
    assert!(w.running.contains_key(&draining), "the drain ended early");
    for _ in 0..30 {
        w.pass(10);
    }
    // The drain ended at its delay; the rest of the rollout waits for the group.
    assert!(!w.running.contains_key(&draining));
    assert!(w
        .fleet
        .live_instances()
        .any(|i| i.image == ami(1) && i.disposal.is_none()));
    assert!(w.fleet.rollout.as_ref().unwrap().waiting.is_some());
    // The group is back: the rollout goes on.
    w.missing.clear();
    w.settle(&ami(2), 10, 100);
    assert_eq!(
        w.changes(|c| matches!(c, Change::TargetGroupFound { .. }))
            .len(),
        1
    );
    assert!(w.blind.is_empty());
}

#[test]
fn a_spot_interruption_drains_within_its_two_minutes() {
    let mut w = ready(2, &[A], "", 300);
    let id = w.fleet.live_instances().next().unwrap().id.clone();
    let at = w.now + Duration::minutes(2);
    w.event(Intent::Notice {
        instances: vec![id.clone()],
        notice: Notice::Interruption {
            action: "terminate".into(),
            at,
        },
    });
    w.pass(10);
    let stage = w.fleet.instances[&id]
        .disposal
        .as_ref()
        .map(|d| d.stage.clone());
    match stage {
        Some(Stage::Draining { until, .. }) => assert!(until <= at, "{until} after {at}"),
        other => panic!("not draining: {other:?}"),
    }
    for _ in 0..20 {
        w.pass(10);
    }
    assert!(!w.running.contains_key(&id));
    // It went at the interruption, not after the group's 300 s.
    let gone =
        w.changes(|c| matches!(c, Change::Terminated { instances, .. } if instances.contains(&id)));
    assert!(
        gone[0].0 <= at + Duration::seconds(10),
        "{:?} vs {at}",
        gone[0].0
    );
}

#[test]
fn fleet_files_with_bad_load_balancing_or_hooks_are_refused_with_the_reason() {
    let base = "name: web\nimage: ami-12345678\ncapacity: 2\ninstance_type: t3.micro\n";
    let bad = |extra: &str| {
        FleetSpec::from_yaml(&format!("{base}{extra}"))
            .unwrap_err()
            .to_string()
    };
    assert!(bad("subnets: [s-1]\npolicy:\n  health_check: [ec2, elb]\n")
        .contains("elb needs load_balancing"));
    assert!(bad(&format!("load_balancing:\n  target_groups: [{A}]\n"))
        .contains("name the fleet's subnets"));
    assert!(
        bad("subnets: [s-1]\nload_balancing:\n  target_groups: [web]\n")
            .contains("is not a target group ARN")
    );
    assert!(bad(&format!(
        "subnets: [s-1]\nload_balancing:\n  target_groups: [{A}, {A}]\n"
    ))
    .contains("named twice"));
    assert!(bad("hooks:\n  launching: {timeout: 5s}\n").contains("between 30s and 2h"));
    assert!(bad("policy:\n  health_check: [ec2, sonar]\n").contains("health_check"));
    // Good forms, and the older spellings of health_check read as before.
    let ok = FleetSpec::from_yaml(&format!(
        "{base}subnets: [s-1]\nload_balancing:\n  target_groups:\n    - {A}\n    - {{arn: {B}, port: 8080}}\nhooks:\n  terminating: {{timeout: 2m, default_result: ABANDON}}\npolicy:\n  health_check: [ec2, elb]\n"
    ))
    .unwrap();
    assert_eq!(ok.target_groups()[1].port, Some(8080));
    assert!(ok.policy.health_check.elb && ok.policy.health_check.ec2);
    let both = FleetSpec::from_yaml(&format!("{base}policy:\n  health_check: both\n")).unwrap();
    assert_eq!(
        both.policy.health_check,
        phoenix_core::model::HealthCheck::BOTH
    );
    let text = serde_json::to_string(&both.policy).unwrap();
    assert!(text.contains("\"health_check\":\"both\""), "{text}");
}
