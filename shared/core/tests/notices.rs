//! Notices through the planner: what AWS says about an instance becomes a failure (repaired, under
//! the breaker) or a retirement (replaced launch-first, not held back by the breaker), always
//! within the fleet's surge limit, hourly budget and maintenance window.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use phoenix_core::events::{Change, Intent};
use phoenix_core::model::{Fleet, FleetSpec, Health, Instance, Lifecycle, Observed};
use phoenix_core::notice::Notice;
use phoenix_core::planner::{apply_intent, reconcile, Command, Step};
use phoenix_core::{ImageId, InstanceId};

fn t0() -> DateTime<Utc> {
    // A Monday, 12:00 UTC.
    "2030-01-07T12:00:00Z".parse().unwrap()
}
fn ami(n: u8) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap()
}
fn id(n: u32) -> InstanceId {
    InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap()
}

/// A fleet of `capacity` healthy instances on image 1; `extra` is appended to the fleet file.
fn fleet(capacity: u32, extra: &str) -> Fleet {
    let yaml = format!(
        "name: web\nimage: {}\ncapacity: {capacity}\ninstance_type: t3.micro\n{extra}",
        ami(1)
    );
    let spec = FleetSpec::from_yaml(&yaml).unwrap();
    let mut f = Fleet::new(spec, t0() - Duration::hours(2));
    f.version = 3;
    for n in 0..capacity {
        let inst: Instance = serde_json::from_value(serde_json::json!({
            "id": id(n),
            "image": ami(1),
            "launched_at": t0() - Duration::hours(1),
            "state": "running",
            "health": {"status": "healthy"},
            "signals": {"ec2_ok": true},
            "token": format!("web-seed-{n}"),
        }))
        .unwrap();
        f.instances.insert(id(n), inst);
        f.live += 1;
    }
    f.complete = true;
    f
}

fn observed(f: &Fleet) -> Vec<Observed> {
    f.live_instances()
        .map(|i| Observed {
            targets: Default::default(),
            id: i.id.clone(),
            image: Some(i.image.clone()),
            state: Lifecycle::Running,
            status_ok: true,
            system_impaired: false,
            launched_at: Some(i.launched_at),
            token: Some(i.token.clone()),
            zone: None,
            instance_type: None,
            subnet: None,
            definition: None,
            protected: false,
        })
        .collect()
}

fn notice(f: &Fleet, n: u32, notice: Notice, now: DateTime<Utc>) -> Step {
    let intent = Intent::Notice {
        instances: vec![id(n)],
        notice,
    };
    apply_intent(f, &intent, now, now)
        .unwrap()
        .then(|f| reconcile(f, &observed(f), now))
}

fn launches(step: &Step) -> u32 {
    step.commands
        .iter()
        .map(|c| match c {
            Command::Launch { count, .. } => *count,
            _ => 0,
        })
        .sum()
}

/// (terminated at once, terminated after a launch)
fn terminations(step: &Step) -> (Vec<InstanceId>, Vec<InstanceId>) {
    let mut now = Vec::new();
    let mut after = Vec::new();
    for c in &step.commands {
        if let Command::Terminate {
            instances,
            after_launch,
        } = c
        {
            if after_launch.is_some() {
                after.extend(instances.iter().cloned());
            } else {
                now.extend(instances.iter().cloned());
            }
        }
    }
    (now, after)
}

fn spot(at: DateTime<Utc>) -> Notice {
    Notice::Interruption {
        action: "terminate".into(),
        at: at + Duration::minutes(2),
    }
}

#[test]
fn a_spot_interruption_is_replaced_launch_first() {
    let f = fleet(4, "");
    let step = notice(&f, 2, spot(t0()), t0());
    assert_eq!(launches(&step), 1, "{:?}", step.commands);
    assert_eq!(terminations(&step), (vec![], vec![id(2)]));
    let inst = &step.fleet.instances[&id(2)];
    assert!(inst.retirement.as_ref().unwrap().reason.contains("Spot"));
    assert_eq!(
        inst.health,
        Health::Healthy,
        "a retirement is not a failure"
    );
    assert!(step
        .changes
        .iter()
        .any(|c| matches!(c, Change::RetirementScheduled { instance, .. } if *instance == id(2))));
}

#[test]
fn a_retirement_never_launches_a_quarantined_image() {
    // A failed gate with automatic rollback off leaves the fleet on image 2, quarantined, until
    // the operator decides: a Spot interruption meanwhile is replaced from image 1.
    let mut f = fleet(4, "");
    f.spec.image = ami(2);
    f.quarantined.insert(
        ami(2),
        serde_json::from_value(serde_json::json!({
            "reason": "canary failed", "at": t0(), "rollout": 1
        }))
        .unwrap(),
    );
    f.rollout = Some(
        serde_json::from_value(serde_json::json!({
            "id": 1, "from": ami(1), "to": ami(2), "status": "paused",
            "started_at": t0() - Duration::minutes(5), "waves": [],
            "pause": {"reason": "health gate failed", "resume_to": "in_progress"}
        }))
        .unwrap(),
    );
    let step = notice(&f, 2, spot(t0()), t0());
    let images: Vec<&ImageId> = step
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::Launch { image, .. } => Some(image),
            _ => None,
        })
        .collect();
    assert_eq!(images, [&ami(1)], "{:?}", step.commands);
}

#[test]
fn without_surge_room_a_spot_instance_goes_first_and_its_replacement_follows() {
    // No surge, one unavailable: the warned instance goes now, its replacement in the same pass.
    let f = fleet(4, "policy:\n  max_surge: 0\n  max_unavailable: 1\n");
    let step = notice(&f, 1, spot(t0()), t0());
    assert_eq!(terminations(&step), (vec![id(1)], vec![]));
    assert_eq!(launches(&step), 1, "{:?}", step.commands);
}

#[test]
fn interruptions_are_not_held_back_by_the_breaker_nor_counted_by_it() {
    // Two of four failed: the breaker (20 %) holds the second one's repair back ...
    let mut f = fleet(4, "");
    for n in [0, 1] {
        f = apply_intent(
            &f,
            &Intent::HealthCheckFailed {
                instance: id(n),
                reason: "503".into(),
            },
            t0(),
            t0(),
        )
        .unwrap()
        .fleet;
    }
    let tripped = reconcile(&f, &observed(&f), t0());
    assert!(tripped.fleet.breaker.is_some(), "{:?}", tripped.changes);
    let f = tripped.fleet;
    // ... but a third instance's Spot interruption is replaced all the same (terminated first:
    // the first failure's replacement holds the one surge instance),
    let step = notice(&f, 3, spot(t0()), t0());
    assert_eq!(
        terminations(&step),
        (vec![id(3)], vec![]),
        "{:?}",
        step.changes
    );
    assert_eq!(launches(&step), 1, "{:?}", step.commands);
    // and is not one more failure.
    assert_eq!(step.fleet.failed, 2);
}

#[test]
fn a_rebalance_recommendation_waits_for_surge_room_then_launches_first() {
    let f = fleet(2, "policy:\n  max_surge: 1\n");
    // The surge instance is in use: a rollout wave is in flight.
    let busy = apply_intent(
        &f,
        &Intent::ImageReady {
            fleet: f.spec.name.clone(),
            image: ami(2),
        },
        t0(),
        t0(),
    )
    .unwrap()
    .then(|f| reconcile(f, &observed(f), t0()));
    assert_eq!(launches(&busy), 1);
    let step = notice(&busy.fleet, 0, Notice::Rebalance, t0());
    assert_eq!(launches(&step), 0, "no room: {:?}", step.commands);
    assert!(terminations(&step).0.is_empty() && terminations(&step).1.is_empty());
    assert!(step.fleet.instances[&id(0)].retirement.is_some());
    // Without the wave (say it completed elsewhere), the next pass replaces it, launch first.
    let mut later = step.fleet.clone();
    later.pending.clear();
    later.rollout = None;
    later.spec.image = ami(1);
    let next = reconcile(&later, &observed(&later), t0() + Duration::minutes(1));
    assert_eq!(terminations(&next).1, vec![id(0)], "{:?}", next.commands);
}

#[test]
fn maintenance_waits_for_the_window_unless_it_starts_first() {
    // Windows on Saturdays and Sundays at 02:00 UTC; now is Monday noon.
    let f = fleet(
        3,
        "maintenance_window: {days: [sat, sun], start: \"02:00\", duration: 4h}\n",
    );
    let saturday = "2030-01-12T02:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let late_start = t0() + Duration::days(10);
    let step = notice(
        &f,
        0,
        Notice::Maintenance {
            code: "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED".into(),
            start: late_start,
        },
        t0(),
    );
    assert_eq!(launches(&step), 0, "{:?}", step.commands);
    let r = step.fleet.instances[&id(0)].retirement.clone().unwrap();
    assert_eq!(r.not_before, Some(saturday));
    assert_eq!(r.deadline, Some(late_start));
    // Nothing until the window opens ...
    let f = step.fleet;
    let friday = reconcile(&f, &observed(&f), saturday - Duration::hours(1));
    assert_eq!(launches(&friday), 0);
    // ... then launch first.
    let opened = reconcile(&f, &observed(&f), saturday + Duration::minutes(1));
    assert_eq!(
        terminations(&opened).1,
        vec![id(0)],
        "{:?}",
        opened.commands
    );

    // A change starting before the next window: replaced now.
    let g = fleet(
        3,
        "maintenance_window: {days: [sat, sun], start: \"02:00\", duration: 4h}\n",
    );
    let soon = notice(
        &g,
        1,
        Notice::Maintenance {
            code: "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED".into(),
            start: t0() + Duration::days(2),
        },
        t0(),
    );
    assert_eq!(terminations(&soon).1, vec![id(1)], "{:?}", soon.commands);
}

#[test]
fn taint_records_who_and_what_and_replaces_unless_told_otherwise() {
    let mutated = || Notice::Mutated {
        who: "arn:aws:sts::123456789012:assumed-role/Admin/alice".into(),
        what: "ModifyInstanceAttribute".into(),
    };
    let replace = notice(&fleet(2, ""), 0, mutated(), t0());
    let taints = &replace.fleet.instances[&id(0)].taints;
    assert_eq!(taints.len(), 1);
    assert!(taints[0].who.ends_with("alice") && taints[0].what == "ModifyInstanceAttribute");
    assert_eq!(terminations(&replace).1, vec![id(0)]);

    let record = notice(&fleet(2, "taint: record\n"), 0, mutated(), t0());
    assert_eq!(record.fleet.instances[&id(0)].taints.len(), 1);
    assert!(record.commands.is_empty(), "{:?}", record.commands);

    let off = notice(&fleet(2, "taint: off\n"), 0, mutated(), t0());
    assert!(off.fleet.instances[&id(0)].taints.is_empty());
    assert!(off.commands.is_empty());
    assert!(
        matches!(&off.changes[..], [Change::Ignored { .. }]),
        "{:?}",
        off.changes
    );
}

#[test]
fn a_stop_outside_phoenix_is_a_failure_and_a_termination_a_disappearance() {
    let f = fleet(3, "");
    let stopped = notice(
        &f,
        0,
        Notice::State {
            state: Lifecycle::Stopped,
        },
        t0(),
    );
    assert!(stopped.fleet.instances[&id(0)].is_failed());
    assert_eq!(terminations(&stopped).1, vec![id(0)]);

    let gone = notice(
        &f,
        1,
        Notice::State {
            state: Lifecycle::Terminated,
        },
        t0(),
    );
    assert!(!gone.fleet.instances[&id(1)].is_live());
    assert!(gone
        .changes
        .iter()
        .any(|c| matches!(c, Change::Vanished { instance, .. } if *instance == id(1))));
    assert_eq!(
        launches(&gone),
        1,
        "capacity is restored: {:?}",
        gone.commands
    );
}

#[test]
fn notices_about_instances_already_going_change_nothing_but_the_record() {
    let f = fleet(2, "");
    let first = notice(&f, 0, spot(t0()), t0());
    let again = notice(&first.fleet, 0, spot(t0()), t0());
    assert!(again.commands.is_empty(), "{:?}", again.commands);
    assert!(
        matches!(&again.changes[..], [Change::Ignored { reason }] if reason.contains("already replacing"))
    );
    // And an instance that is no longer the fleet's.
    let mut gone = f.clone();
    gone.instances.remove(&id(1));
    let intent = Intent::Notice {
        instances: vec![id(1)],
        notice: Notice::Rebalance,
    };
    let step = apply_intent(&gone, &intent, t0(), t0()).unwrap();
    assert!(step.commands.is_empty());
    assert!(
        matches!(&step.changes[..], [Change::Ignored { .. }]),
        "{:?}",
        step.changes
    );
}
