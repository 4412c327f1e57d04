//! The rollout engine's rules as pure functions: the plan of a rollout with a canary, a bake and
//! checkpoints; quarantine; the breaker's threshold and what it names.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use phoenix_core::dryrun::plan_rollout;
use phoenix_core::events::{Change, ControlAction, Intent};
use phoenix_core::model::{
    Fleet, FleetSpec, Health, Instance, Lifecycle, Observed, Quarantine, Signals,
};
use phoenix_core::planner::{
    apply_intent, outcome_parts, reconcile, record_outcome_part, record_outcomes, update_spec,
    Command, Launched, Outcome, MAX_TOUCHED_PER_STEP,
};
use phoenix_core::{FleetName, ImageId, InstanceId};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}
fn ami(n: u8) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap()
}

/// A fleet of `capacity` healthy instances on image 1, with the policy lines given.
fn fleet(capacity: u32, policy: &str) -> Fleet {
    let yaml = format!(
        "name: web\nimage: {}\ncapacity: {capacity}\ninstance_type: t3.micro\npolicy:\n{policy}",
        ami(1)
    );
    let spec = FleetSpec::from_yaml(&yaml).unwrap();
    let mut f = Fleet::new(spec, t0() - Duration::hours(2));
    f.version = 3;
    for n in 0..capacity {
        let id = InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap();
        let zone = if n % 2 == 0 {
            "us-east-1a"
        } else {
            "us-east-1b"
        };
        f.instances.insert(
            id.clone(),
            Instance {
                launch_hook: None,
                protected: false,
                spot: false,
                adopted: None,
                released: None,
                id,
                image: ami(1),
                launched_at: t0() - Duration::minutes(90 - i64::from(n)),
                state: Lifecycle::Running,
                health: Health::Healthy,
                signals: Signals {
                    elb_ok: false,
                    ec2_ok: true,
                    passed: false,
                    host_impaired: false,
                },
                token: format!("web-seed-{n}"),
                zone: Some(zone.into()),
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

#[test]
fn a_plan_with_canary_bake_and_checkpoint_shows_each_stage() {
    let f = fleet(
        8,
        "  max_surge: 2\n  canary: 1\n  bake: 5m\n  checkpoints: [{percent: 50, pause: 10m}]\n",
    );
    let plan = plan_rollout(&f, &ami(2), t0(), Duration::minutes(1)).unwrap();
    let launches: Vec<u32> = plan.passes.iter().map(|p| p.launch).collect();
    assert_eq!(launches[0], 1, "the canary goes alone: {plan:#?}");
    let pauses: Vec<&str> = plan
        .passes
        .iter()
        .filter_map(|p| p.pause.as_deref())
        .collect();
    assert_eq!(pauses.len(), 2, "{pauses:?}");
    assert!(pauses[0].contains("canary baking for 5m"));
    assert!(pauses[1].contains("checkpoint 50%"));
    assert_eq!(plan.passes.iter().map(|p| p.launch).sum::<u32>(), 8);
    assert_eq!(
        plan.passes.iter().map(|p| p.terminate.len()).sum::<usize>(),
        8
    );
    assert!(
        plan.passes
            .iter()
            .all(|p| p.peak <= 10 && p.healthy_floor >= 8),
        "{plan:#?}"
    );
    // The bake and the checkpoint's pause show in the timing.
    let last = plan.passes.last().unwrap();
    assert!(last.at_seconds >= 15 * 60, "{}", last.at_seconds);
}

#[test]
fn a_rollout_takes_the_fewest_waves_its_surge_allows() {
    // 1 000 instances, a surge of 50: ceil(1000 / 50) = 20 waves, although each wave after the
    // first launches 50 and terminates the 50 before it, more than one transaction records.
    let f = fleet(1000, "  max_surge: 50\n  max_unavailable: 0\n");
    let plan = plan_rollout(&f, &ami(2), t0(), Duration::minutes(1)).unwrap();
    assert_eq!(plan.waves(), 20);
    assert_eq!(plan.passes.iter().map(|p| p.launch).sum::<u32>(), 1000);
    assert_eq!(
        plan.passes.iter().map(|p| p.terminate.len()).sum::<usize>(),
        1000
    );
    assert!(
        plan.passes
            .iter()
            .all(|p| p.peak <= 1050 && p.healthy_floor >= 1000),
        "{plan:#?}"
    );
}

/// What EC2 reports for every live instance of `f`: running, checks passed.
fn all_running(f: &Fleet) -> Vec<Observed> {
    f.live_instances().map(Observed::running_ok).collect()
}

/// What EC2 answers to `commands`, in the executor's order (terminations first, then launches):
/// everything done, new instances numbered from `next_id`.
fn carried_out(commands: &[Command], next_id: &mut u64, now: DateTime<Utc>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for c in commands {
        if let Command::Terminate { instances, .. } = c {
            outcomes.push(Outcome::Terminated {
                instances: instances.clone(),
                request_ids: vec!["r-terminate".into()],
            });
        }
    }
    for c in commands {
        if let Command::Launch { token, count, .. } = c {
            let instances = (0..*count)
                .map(|_| {
                    *next_id += 1;
                    Launched {
                        id: InstanceId::parse(&format!("i-{:017x}", *next_id)).unwrap(),
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
                request_ids: vec!["r-launch".into()],
                refused: Vec::new(),
            });
        }
    }
    outcomes
}

#[test]
fn a_wave_too_large_for_one_transaction_is_recorded_in_parts_with_the_same_result() {
    // With health by event, the instances of a wave are marked healthy one event at a time, so
    // the step after the last one terminates 50 and launches 50: 100 instance records.
    let mut f = fleet(
        200,
        "  max_surge: 50\n  max_unavailable: 0\n  health_check: event\n",
    );
    let mut next_id = 0xa000;
    let image = Intent::ImageReady {
        fleet: FleetName::parse("web").unwrap(),
        image: ami(2),
    };
    // Wave 1 launches 50; once they run, the next step terminates 50 and launches 50.
    let first = apply_intent(&f, &image, t0(), t0()).unwrap();
    let first = first.then(|g| reconcile(g, &all_running(&f), t0()));
    f = first.fleet.clone();
    let outcomes = carried_out(&first.commands, &mut next_id, t0());
    f = record_outcomes(&f, &outcomes, t0()).fleet;
    // Each later step: its outcomes recorded part by part give what recording them at once
    // gives, and some step needs more than one part.
    let mut split = 0;
    for minute in 1..120 {
        let now = t0() + Duration::minutes(minute);
        let observed = all_running(&f);
        f = reconcile(&f, &observed, now).fleet;
        let new: Vec<InstanceId> = f
            .live_instances()
            .filter(|i| i.image == ami(2) && !i.is_healthy())
            .map(|i| i.id.clone())
            .collect();
        for instance in new {
            let passed = Intent::HealthCheckPassed { instance };
            f = apply_intent(&f, &passed, now, now).unwrap().fleet;
        }
        let step = reconcile(&f, &observed, now);
        f = step.fleet.clone();
        let outcomes = carried_out(&step.commands, &mut next_id, now);
        let parts = outcome_parts(&outcomes);
        if parts.len() > 1 {
            split += 1;
        }
        let mut in_parts = f.clone();
        let mut changes = Vec::new();
        for part in parts {
            let step = record_outcome_part(&in_parts, &outcomes, part, now);
            assert!(step.touched.len() <= MAX_TOUCHED_PER_STEP);
            changes.extend(step.changes);
            in_parts = step.fleet;
        }
        let at_once = record_outcomes(&f, &outcomes, now);
        assert_eq!(in_parts.instances, at_once.fleet.instances);
        assert_eq!(in_parts.rollout, at_once.fleet.rollout);
        assert_eq!(in_parts.live, at_once.fleet.live);
        assert_eq!(changes.len(), at_once.changes.len());
        for c in &at_once.changes {
            assert!(changes.contains(c), "{c:?} missing from {changes:#?}");
        }
        f = in_parts;
    }
    assert!(
        split > 0,
        "no step launched and terminated more than one part holds"
    );
    assert!(f.live_instances().all(|i| i.image == ami(2)));
    assert_eq!(f.live, 200);
}

#[test]
fn a_plan_without_surge_uses_the_unavailable_budget() {
    let f = fleet(4, "  max_surge: 0\n  max_unavailable: 1\n");
    let plan = plan_rollout(&f, &ami(2), t0(), Duration::minutes(1)).unwrap();
    assert_eq!(plan.waves(), 4);
    assert!(
        plan.passes
            .iter()
            .all(|p| p.peak <= 4 && p.healthy_floor >= 3),
        "{plan:#?}"
    );
}

#[test]
fn a_quarantined_image_is_refused_by_events_files_and_plans() {
    let mut f = fleet(2, "  max_surge: 1\n");
    f.quarantined.insert(
        ami(2),
        Quarantine {
            reason: "wave 1 failed".into(),
            at: t0(),
            rollout: 1,
        },
    );
    let step = apply_intent(
        &f,
        &Intent::ImageReady {
            fleet: FleetName::parse("web").unwrap(),
            image: ami(2),
        },
        t0(),
        t0(),
    )
    .unwrap();
    assert!(
        matches!(&step.changes[..], [Change::ImageRefused { reason, .. }] if reason.contains("quarantined")),
        "{:?}",
        step.changes
    );
    assert!(step.commands.is_empty());
    let mut spec = f.spec.clone();
    spec.image = ami(2);
    let err = update_spec(&f, spec, None, t0()).unwrap_err().to_string();
    assert!(err.contains("clear-quarantine"), "{err}");
    assert!(plan_rollout(&f, &ami(2), t0(), Duration::minutes(1))
        .unwrap()
        .refused
        .is_some());
    // Cleared, it is accepted again.
    let cleared = apply_intent(
        &f,
        &Intent::ClearQuarantine {
            fleet: f.spec.name.clone(),
            image: ami(2),
        },
        t0(),
        t0(),
    )
    .unwrap();
    assert!(cleared.fleet.quarantined.is_empty());
}

#[test]
fn nothing_rolls_onto_the_fleets_own_quarantined_image() {
    // A failed gate with automatic rollback off leaves the fleet on its quarantined image.
    let mut f = fleet(
        2,
        "  max_surge: 1
",
    );
    f.quarantined.insert(
        ami(1),
        Quarantine {
            reason: "wave 1 failed".into(),
            at: t0(),
            rollout: 1,
        },
    );
    // A new definition would start a rollout that can launch nothing: refused, with how to clear.
    let mut spec = f.spec.clone();
    spec.instance_type = Some("m5.large".into());
    let err = update_spec(&f, spec, None, t0()).unwrap_err().to_string();
    assert!(err.contains("clear-quarantine"), "{err}");
    // What rolls nothing is still applied.
    let mut spec = f.spec.clone();
    spec.policy.max_surge = phoenix_core::quantity::Quantity::Count(2);
    assert!(update_spec(&f, spec, None, t0()).is_ok());
    // A floating template's new version waits for the quarantine to be cleared.
    f.spec.launch_template = Some(phoenix_core::model::LaunchTemplateRef {
        id: None,
        name: Some("web".into()),
        version: None,
    });
    f.template_version = Some("3".into());
    assert!(phoenix_core::planner::template_resolved(&f, "4", t0()).is_noop());
}

fn fail(f: &Fleet, n: u32) -> Fleet {
    let id = InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap();
    let step = apply_intent(
        f,
        &Intent::HealthCheckFailed {
            instance: id,
            reason: "down".into(),
        },
        t0(),
        t0(),
    )
    .unwrap();
    let mut next = step.fleet;
    next.version += 1;
    next
}

#[test]
fn one_failure_is_repaired_but_many_at_once_trip_the_breaker_naming_the_zone() {
    let f = fleet(10, "  max_surge: 2\n");
    // One failure in a fleet of 10: replaced at once.
    let one = fail(&f, 0);
    let step = reconcile(&one, &[], t0());
    assert!(step
        .changes
        .iter()
        .all(|c| !matches!(c, Change::ReplacementHalted { .. })));
    // Three in zone a (instances 0, 2, 4) at once: more than 20 % of 10.
    let mut many = f.clone();
    for n in [0, 2, 4] {
        many.instances
            .get_mut(&InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap())
            .unwrap()
            .health = Health::failed("down");
    }
    let observed: Vec<_> = many
        .live_instances()
        .map(phoenix_core::model::Observed::running_ok)
        .collect();
    let step = reconcile(&many, &observed, t0());
    let halted = step.changes.iter().find_map(|c| match c {
        Change::ReplacementHalted {
            unhealthy, shared, ..
        } => Some((*unhealthy, shared.clone())),
        _ => None,
    });
    let (unhealthy, shared) = halted.expect("breaker tripped");
    assert_eq!(unhealthy, 3);
    assert!(shared.unwrap().starts_with("availability zone us-east-1a"));
    assert!(
        step.commands.is_empty(),
        "nothing replaced while halted: {:?}",
        step.commands
    );
    // An operator resumes repairs: they go on even though the threshold is still exceeded.
    let mut halted_fleet = step.fleet.clone();
    halted_fleet.version += 1;
    let resumed = apply_intent(
        &halted_fleet,
        &Intent::RolloutControl {
            fleet: f.spec.name.clone(),
            action: ControlAction::ResumeRepairs,
        },
        t0(),
        t0(),
    )
    .unwrap();
    let mut resumed_fleet = resumed.fleet;
    resumed_fleet.version += 1;
    let step = reconcile(&resumed_fleet, &observed, t0());
    assert!(!step.commands.is_empty(), "repairs resumed");
}

#[test]
fn a_plan_outside_the_rollout_windows_says_when_each_wave_runs() {
    // t0 is 17:46 UTC; the window opens at 09:00 the next day, for two hours.
    let f = fleet(
        4,
        "  max_surge: 2\n  windows: [{days: daily, start: \"09:00\", duration: 2h}]\n",
    );
    let plan = plan_rollout(&f, &ami(2), t0(), Duration::minutes(1)).unwrap();
    let first = &plan.passes[0];
    assert_eq!(first.launch, 0, "{plan:#?}");
    assert!(
        first
            .pause
            .as_deref()
            .is_some_and(|p| p.contains("waits for its window") && p.contains("09:00")),
        "{first:?}"
    );
    let opens = (DateTime::parse_from_rfc3339("2030-03-18T09:00:00Z")
        .unwrap()
        .to_utc()
        - t0())
    .num_seconds();
    let waves: Vec<_> = plan.passes.iter().filter(|p| p.launch > 0).collect();
    assert_eq!(waves.len(), 2, "{plan:#?}");
    assert!(waves.iter().all(|p| p.at_seconds >= opens), "{plan:#?}");
    assert!(waves.iter().all(|p| p.at_seconds < opens + 2 * 3600));
    // Control: without the window the same plan starts at once.
    let at_once = plan_rollout(
        &fleet(4, "  max_surge: 2\n"),
        &ami(2),
        t0(),
        Duration::minutes(1),
    )
    .unwrap();
    assert_eq!(at_once.passes[0].launch, 2);
}
