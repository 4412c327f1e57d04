//! Repairs a user can trust: the breaker halts when repairing does not help (many unhealthy at
//! once, replacements failing again), never for unrelated failures minutes apart or for an image
//! already quarantined; only failures that may be the image's fault send a rollout back; a
//! rollout that waits on something phoenix will not judge stalls and says so; an event that
//! changes nothing is recognised as such.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use phoenix_core::events::{self, Change, ControlAction, Intent};
use phoenix_core::model::{
    Fleet, FleetSpec, Health, Instance, Lifecycle, Observed, Quarantine, RecentFailure,
    RolloutStatus, Signals, Suspect,
};
use phoenix_core::planner::{
    apply_intent, observe_instance, reconcile, record_outcomes, Command, Launched, Outcome, Step,
};
use phoenix_core::{FleetName, ImageId, InstanceId};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}
fn ami(n: u8) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap()
}
fn id(n: u32) -> InstanceId {
    InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap()
}

/// A fleet of `capacity` healthy instances on image 1 in one zone, with the policy lines given.
fn fleet(capacity: u32, policy: &str) -> Fleet {
    let yaml = format!(
        "name: web\nimage: {}\ncapacity: {capacity}\ninstance_type: t3.micro\npolicy:\n{policy}",
        ami(1)
    );
    let spec = FleetSpec::from_yaml(&yaml).unwrap();
    let mut f = Fleet::new(spec, t0() - Duration::hours(2));
    f.version = 3;
    for n in 0..capacity {
        f.instances.insert(
            id(n),
            Instance {
                launch_hook: None,
                protected: false,
                spot: false,
                adopted: None,
                released: None,
                id: id(n),
                image: ami(1),
                launched_at: t0() - Duration::minutes(90),
                state: Lifecycle::Running,
                health: Health::Healthy,
                signals: Signals {
                    elb_ok: false,
                    ec2_ok: true,
                    passed: true,
                    host_impaired: false,
                },
                token: format!("web-seed-{n}"),
                zone: Some("us-east-1a".into()),
                instance_type: Some("t3.micro".into()),
                disposal: None,
                terminated_at: None,
                taints: Vec::new(),
                retirement: None,
                replacement_for: None,
                subnet: None,
                definition: None,
            },
        );
        f.live += 1;
    }
    f.complete = true;
    f
}

/// The fleet record and one instance, as an instance event loads them.
fn partial(f: &Fleet, i: &InstanceId) -> Fleet {
    let mut p = f.clone();
    p.instances = p
        .instances
        .get(i)
        .map(|inst| (i.clone(), inst.clone()))
        .into_iter()
        .collect();
    p.complete = false;
    p
}

/// `full` after `step` is committed, as the store writes it: the step's fleet record and the
/// records it touched.
fn commit(full: &Fleet, step: &Step) -> Fleet {
    let mut next = step.fleet.clone();
    next.instances = full.instances.clone();
    for i in &step.touched {
        if let Some(inst) = step.fleet.instances.get(i) {
            next.instances.insert(i.clone(), inst.clone());
        }
    }
    next.version = full.version + 1;
    next.complete = true;
    next
}

/// What EC2 answers to a step's commands: everything done, new instances numbered from `next`.
fn carried_out(step: &Step, next: &mut u32, now: DateTime<Utc>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for c in &step.commands {
        match c {
            Command::Terminate { instances, .. } => outcomes.push(Outcome::Terminated {
                instances: instances.clone(),
                request_ids: Vec::new(),
            }),
            Command::Launch { token, count, .. } => {
                let instances = (0..*count)
                    .map(|_| {
                        *next += 1;
                        Launched {
                            id: id(*next),
                            launched_at: Some(now),
                            state: Lifecycle::Running,
                            zone: Some("us-east-1a".into()),
                            instance_type: Some("t3.micro".into()),
                            subnet: None,
                            definition: None,
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
            Command::Register {
                instances,
                lands_by,
                ..
            } => outcomes.push(Outcome::Registered {
                instances: instances.clone(),
                lands_by: *lands_by,
                request_ids: Vec::new(),
            }),
            Command::Deregister { instances, .. } => outcomes.push(Outcome::Deregistered {
                instances: instances.clone(),
                delay: phoenix_core::model::Seconds(0),
                request_ids: Vec::new(),
            }),
            Command::Tag { .. } | Command::Untag { .. } | Command::Detach { .. } => {
                panic!("no adoption here: {c:?}")
            }
        }
    }
    outcomes
}

/// An instance event handled as the controller does: on the record and that instance,
/// committed, its commands carried out and recorded on the whole fleet.
fn event(
    f: &Fleet,
    i: &InstanceId,
    intent: &Intent,
    now: DateTime<Utc>,
    next: &mut u32,
) -> (Fleet, Step) {
    let step = apply_intent(&partial(f, i), intent, now, now).unwrap();
    let committed = commit(f, &step);
    let outcomes = carried_out(&step, next, now);
    let recorded = record_outcomes(&committed, &outcomes, now);
    (commit(&committed, &recorded), step)
}

fn failed(i: &InstanceId, reason: &str) -> Intent {
    Intent::HealthCheckFailed {
        instance: i.clone(),
        reason: reason.into(),
    }
}

fn launched(step: &Step) -> u32 {
    step.commands
        .iter()
        .map(|c| match c {
            Command::Launch { count, .. } => *count,
            _ => 0,
        })
        .sum()
}

fn deferred(step: &Step) -> Option<String> {
    step.changes.iter().find_map(|c| match c {
        Change::RepairDeferred { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

fn halted(step: &Step) -> Option<String> {
    step.changes.iter().find_map(|c| match c {
        Change::ReplacementHalted { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

/// Healthy in EC2's view: the reconcile that sees them running with their checks passed.
fn observed_healthy(f: &Fleet) -> Vec<Observed> {
    f.live_instances().map(Observed::running_ok).collect()
}

fn after_reconcile(f: &Fleet, now: DateTime<Utc>) -> Fleet {
    let step = reconcile(f, &observed_healthy(f), now);
    commit(f, &step)
}

// ---- 1. The breaker ---------------------------------------------------------------------------

#[test]
fn two_unrelated_failures_seconds_apart_in_a_fleet_of_6_are_both_repaired() {
    let f = fleet(6, "  max_surge: 1\n  max_unavailable: 1\n");
    let mut next = 100;
    // One instance stopped outside phoenix: replaced.
    let (f, first) = event(&f, &id(0), &failed(&id(0), "stopped"), t0(), &mut next);
    assert_eq!(launched(&first), 1, "{:?}", first.changes);
    // Three seconds later an alarm names another: repaired too, not held back.
    let later = t0() + Duration::seconds(3);
    let (_, second) = event(
        &f,
        &id(1),
        &failed(&id(1), "StatusCheckFailed"),
        later,
        &mut next,
    );
    assert_eq!(deferred(&second), None, "{:?}", second.changes);
    assert_eq!(launched(&second), 1, "{:?}", second.changes);
}

#[test]
fn a_zone_whose_replacements_keep_failing_halts_repairs_with_the_figures() {
    let f = fleet(6, "  max_surge: 1\n");
    let mut next = 100;
    // The first failure is repaired; its replacement (i-...1065) comes up healthy.
    let (f, _) = event(&f, &id(0), &failed(&id(0), "503"), t0(), &mut next);
    let replacement = id(next);
    let f = after_reconcile(&f, t0() + Duration::minutes(1));
    assert!(f.instances.get(&replacement).unwrap().is_healthy());
    assert_eq!(
        f.instances.get(&replacement).unwrap().replacement_for,
        Some(id(0))
    );
    // The replacement fails too: one unhealthy now, no churn yet: repaired.
    let t1 = t0() + Duration::minutes(2);
    let (f, again) = event(
        &f,
        &replacement,
        &failed(&replacement, "503"),
        t1,
        &mut next,
    );
    assert_eq!(launched(&again), 1, "{:?}", again.changes);
    let second = id(next);
    let f = after_reconcile(&f, t1 + Duration::minutes(1));
    // And its replacement fails as well: the replacements keep failing, repairing does not help.
    let t2 = t1 + Duration::minutes(2);
    let step = apply_intent(&partial(&f, &second), &failed(&second, "503"), t2, t2).unwrap();
    let why = deferred(&step).expect("the event defers to the whole fleet");
    assert!(why.contains("replacements failed again"), "{why}");
    let f = commit(&f, &step);
    let step = reconcile(&f, &observed_healthy(&f), t2);
    let reason = halted(&step).expect("halted");
    assert!(
        reason.starts_with("2 of 6 instances unhealthy at once"),
        "{reason}"
    );
    assert!(reason.contains(replacement.as_str()), "{reason}");
    assert!(reason.contains("more than 20% of capacity"), "{reason}");
    assert_eq!(launched(&step), 0, "nothing replaced while halted");
    assert!(step.fleet.breaker.as_ref().unwrap().reason == reason);
}

#[test]
fn half_a_fleet_failing_at_once_halts() {
    let mut f = fleet(6, "  max_surge: 1\n");
    for n in [0, 1, 2] {
        f.instances.get_mut(&id(n)).unwrap().health = Health::failed("down");
    }
    let step = reconcile(&f, &observed_healthy(&f), t0());
    let reason = halted(&step).expect("halted");
    assert!(
        reason.starts_with("3 of 6 instances unhealthy at once"),
        "{reason}"
    );
    assert_eq!(launched(&step), 0);
}

#[test]
fn after_a_rollback_an_ordinary_failure_is_repaired() {
    // A fleet of 8 whose rollout to image 2 rolled back: image 2 is quarantined, and its failed
    // canary is still in the breaker's window.
    let mut f = fleet(8, "  max_surge: 1\n");
    f.quarantined.insert(
        ami(2),
        Quarantine {
            reason: "canary failed".into(),
            at: t0() - Duration::minutes(2),
            rollout: 1,
        },
    );
    let mut canary = f.instances.get(&id(0)).unwrap().clone();
    canary.id = InstanceId::parse("i-00000999").unwrap();
    canary.image = ami(2);
    canary.health = Health::failed("503");
    canary.terminated_at = Some(t0() - Duration::minutes(1));
    // A replacement (of an old instance), so that only its image keeps it out of the count.
    canary.replacement_for = Some(id(7));
    f.failures.push(RecentFailure {
        at: t0() - Duration::minutes(3),
        instance: (&canary).into(),
    });
    let mut next = 100;
    let (_, step) = event(&f, &id(3), &failed(&id(3), "503"), t0(), &mut next);
    assert_eq!(deferred(&step), None, "{:?}", step.changes);
    assert_eq!(launched(&step), 1);
}

// ---- 2. Quarantine only for the image's fault ----------------------------------------------

/// A fleet of 4 on image 1 rolling to image 2, with its canary (one instance) launched and
/// running, not yet healthy. Returns the fleet and the canary.
fn rolling(policy: &str) -> (Fleet, InstanceId) {
    let f = fleet(4, &format!("  max_surge: 1\n  canary: 1\n{policy}"));
    let step = apply_intent(
        &f,
        &Intent::ImageReady {
            fleet: FleetName::parse("web").unwrap(),
            image: ami(2),
        },
        t0(),
        t0(),
    )
    .unwrap()
    .then_reconcile(&observed_healthy(&f), t0());
    assert_eq!(launched(&step), 1);
    let f2 = commit(&f, &step);
    let mut next = 200;
    let outcomes = carried_out(&step, &mut next, t0());
    let f3 = commit(&f2, &record_outcomes(&f2, &outcomes, t0()));
    (f3, id(next))
}

fn rolled_back(step: &Step) -> bool {
    step.changes.iter().any(|c| {
        matches!(
            c,
            Change::RolloutRollingBack { .. } | Change::ImageQuarantined { .. }
        )
    })
}

#[test]
fn a_canary_stopped_by_aws_is_repaired_and_the_rollout_goes_on() {
    let (f, canary) = rolling("");
    let mut observed = observed_healthy(&f);
    for o in &mut observed {
        if o.id == canary {
            o.state = Lifecycle::Stopped;
            o.status_ok = false;
        }
    }
    let step = reconcile(&f, &observed, t0() + Duration::minutes(1));
    assert!(!rolled_back(&step), "{:?}", step.changes);
    let health = &step.fleet.instances.get(&canary).unwrap().health;
    assert!(
        matches!(
            health,
            Health::Unhealthy {
                suspect: Suspect::Instance,
                ..
            }
        ),
        "{health:?}"
    );
    assert_eq!(
        launched(&step),
        1,
        "the canary is repaired: {:?}",
        step.changes
    );
}

#[test]
fn a_failure_report_of_a_canary_whose_host_is_impaired_is_not_held_against_the_image() {
    let (f, canary) = rolling("");
    let now = t0() + Duration::minutes(1);
    // What EC2 says of it when the report comes: its host is impaired.
    let mut seen = Observed::running_ok(f.instances.get(&canary).unwrap());
    seen.status_ok = false;
    seen.system_impaired = true;
    let p = partial(&f, &canary);
    let step = observe_instance(&p, &seen, now)
        .then_result(|f| apply_intent(f, &failed(&canary, "target failed"), now, now))
        .unwrap();
    assert!(!rolled_back(&step), "{:?}", step.changes);
    // Control: the same report with a healthy host sends the rollout back.
    let step = apply_intent(&p, &failed(&canary, "target failed"), now, now).unwrap();
    assert!(rolled_back(&step), "{:?}", step.changes);
}

#[test]
fn rollback_after_two_needs_two_failures_of_the_rollout() {
    let (f, canary) = rolling("  rollback_after: 2\n");
    let now = t0() + Duration::minutes(1);
    let step = apply_intent(&partial(&f, &canary), &failed(&canary, "503"), now, now).unwrap();
    assert!(
        !rolled_back(&step),
        "one failure is not enough: {:?}",
        step.changes
    );
    assert!(
        step.changes.iter().any(
            |c| matches!(c, Change::TerminationDecided { instance, .. } if *instance == canary)
        ),
        "it is repaired instead: {:?}",
        step.changes
    );
}

#[test]
fn a_wave_that_could_not_launch_does_not_roll_back_on_its_deadline_but_stalls() {
    let f = fleet(4, "  max_surge: 1\n  canary: 1\n");
    let step = apply_intent(
        &f,
        &Intent::ImageReady {
            fleet: FleetName::parse("web").unwrap(),
            image: ami(2),
        },
        t0(),
        t0(),
    )
    .unwrap()
    .then_reconcile(&observed_healthy(&f), t0());
    let token = step
        .commands
        .iter()
        .find_map(|c| match c {
            Command::Launch { token, .. } => Some(token.clone()),
            _ => None,
        })
        .unwrap();
    let f2 = commit(&f, &step);
    // EC2 has no capacity: the launch fails.
    let no_capacity = vec![Outcome::LaunchFailed {
        token: token.clone(),
        error: "no capacity: InsufficientInstanceCapacity".into(),
        refused: Vec::new(),
    }];
    let f3 = commit(&f2, &record_outcomes(&f2, &no_capacity, t0()));
    // Past the progress deadline (10 minutes), with every retry failing the same way.
    let late = t0() + Duration::minutes(11);
    let step = reconcile(&f3, &observed_healthy(&f3), late);
    assert!(!rolled_back(&step), "{:?}", step.changes);
    assert!(step.fleet.quarantined.is_empty());
    let (reason, waiting) = step
        .changes
        .iter()
        .find_map(|c| match c {
            Change::RolloutStalled {
                reason, waiting_on, ..
            } => Some((reason.clone(), waiting_on.clone())),
            _ => None,
        })
        .expect("stalled");
    assert!(reason.contains("not the image's"), "{reason}");
    assert!(
        waiting
            .iter()
            .any(|w| w.contains(&token) && w.contains("failed")),
        "{waiting:?}"
    );
    let r = step.fleet.rollout.as_ref().unwrap();
    assert_eq!(r.status, RolloutStatus::InProgress);
    assert!(r.stalled.is_some());
}

// ---- 3. Stalled rollouts are surfaced ---------------------------------------------------------

#[test]
fn a_rollback_waiting_on_a_silent_instance_stalls_names_it_and_is_published() {
    // health_check: event — an instance counts only once a HealthCheckPassed names it. A rollout
    // to image 2 was sent back at t0; the rollback launched one instance of image 1 whose health
    // reports are all lost.
    let (f, _) = rolling("  health_check: event\n");
    let mut f = f;
    f.spec.image = ami(1);
    for i in f.instances.clone().values().filter(|i| i.image == ami(2)) {
        f.instances.remove(&i.id);
        f.live -= 1;
    }
    let r = f.rollout.as_mut().unwrap();
    r.status = RolloutStatus::RollingBack;
    r.progressed_at = Some(t0());
    let silent = id(300);
    let mut inst = f.instances.get(&id(0)).unwrap().clone();
    inst.id = silent.clone();
    inst.health = Health::Unknown;
    inst.signals.passed = false;
    inst.launched_at = t0();
    f.instances.insert(silent.clone(), inst);
    f.instances.remove(&id(3));
    // Within the deadline nothing is said; past it, the rollback stalls, naming what it waits on.
    let soon = t0() + Duration::minutes(9);
    let step = reconcile(&f, &observed_healthy(&f), soon);
    assert!(!step
        .changes
        .iter()
        .any(|c| matches!(c, Change::RolloutStalled { .. })));
    let late = t0() + Duration::minutes(11);
    let step = reconcile(&f, &observed_healthy(&f), late);
    let waiting = step
        .changes
        .iter()
        .find_map(|c| match c {
            Change::RolloutStalled { waiting_on, .. } => Some(waiting_on.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("stalled: {:#?}", step.changes));
    assert!(
        waiting
            .iter()
            .any(|w| w.contains(silent.as_str()) && w.contains("no passed health report")),
        "{waiting:?}"
    );
    assert!(
        !rolled_back(&step),
        "nothing is guessed: {:?}",
        step.changes
    );
    let published = events::published(&f.spec.name, &step.changes);
    assert!(published.iter().any(|(dt, _)| *dt == "RolloutStalled"));
    // Said once, not at every pass.
    let f = commit(&f, &step);
    let again = reconcile(&f, &observed_healthy(&f), late + Duration::minutes(1));
    assert!(!again
        .changes
        .iter()
        .any(|c| matches!(c, Change::RolloutStalled { .. })));
    // The operator resumes it: another deadline, and the stall is over.
    let resumed = apply_intent(
        &f,
        &Intent::RolloutControl {
            fleet: f.spec.name.clone(),
            action: ControlAction::Resume,
        },
        late,
        late,
    )
    .unwrap();
    assert!(resumed
        .changes
        .iter()
        .any(|c| matches!(c, Change::RolloutProgressing { .. })));
    assert!(resumed.fleet.rollout.as_ref().unwrap().stalled.is_none());
    // Or the report finally arrives: it moves on by itself.
    let passed = apply_intent(
        &partial(&f, &silent),
        &Intent::HealthCheckPassed {
            instance: silent.clone(),
        },
        late,
        late,
    )
    .unwrap();
    assert!(
        passed
            .changes
            .iter()
            .any(|c| matches!(c, Change::RolloutProgressing { .. })),
        "{:?}",
        passed.changes
    );
}

// ---- 5. Nothing written for nothing -----------------------------------------------------------

#[test]
fn a_pass_report_for_an_instance_already_healthy_changes_nothing() {
    let f = fleet(3, "  health_check: both\n");
    let passed = Intent::HealthCheckPassed { instance: id(1) };
    let p = partial(&f, &id(1));
    let step = apply_intent(&p, &passed, t0(), t0()).unwrap();
    let why = step.ignored_only(&p).expect("changes nothing");
    assert!(why.contains("already passed"), "{why}");
    // A report that does change something is not.
    let mut fresh = f.clone();
    let i = fresh.instances.get_mut(&id(2)).unwrap();
    i.health = Health::Unknown;
    i.signals.passed = false;
    let p = partial(&fresh, &id(2));
    let step = apply_intent(
        &p,
        &Intent::HealthCheckPassed { instance: id(2) },
        t0(),
        t0(),
    )
    .unwrap();
    assert_eq!(step.ignored_only(&p), None, "{:?}", step.changes);
}
