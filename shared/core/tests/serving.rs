//! Serving traffic behind target groups, as the simulator found it could go wrong: a step never
//! registers an instance it decides to terminate; an instance on its way out that a group lists
//! as registered again is deregistered again, not terminated; the `elb` signal of an instance
//! not counted yet holds only while every group reports it healthy; a failed instance that
//! recovers counts healthy again only as a new one would (never one its launching hook abandoned).

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use phoenix_core::events::{Change, Intent};
use phoenix_core::model::{
    Breaker, Disposal, Fleet, FleetSpec, Health, Hook, HookResult, HookWait, Instance, Lifecycle,
    LoadBalancing, Observed, Seconds, Signals, Stage, TargetGroupRef, TargetState,
};
use phoenix_core::planner::{apply_intent, reconcile, Command, Step};
use phoenix_core::{ImageId, InstanceId};

const GROUP: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}
fn ami(n: u8) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap()
}
fn id(n: u32) -> InstanceId {
    InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap()
}

/// A fleet of `capacity` behind one target group, with these instances: healthy ones (every
/// signal given) and, for `unknown`, running ones not counted yet.
fn fleet(capacity: u32, healthy: u32, unknown: u32) -> Fleet {
    let yaml = format!(
        "name: web\nimage: {}\ncapacity: {capacity}\ninstance_type: t3.micro\n",
        ami(1)
    );
    let mut spec = FleetSpec::from_yaml(&yaml).unwrap();
    spec.load_balancing = Some(LoadBalancing {
        target_groups: vec![TargetGroupRef {
            arn: GROUP.into(),
            port: Some(80),
        }],
    });
    let mut f = Fleet::new(spec, t0() - Duration::hours(2));
    f.version = 3;
    for n in 0..healthy + unknown {
        let counted = n < healthy;
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
                health: if counted {
                    Health::Healthy
                } else {
                    Health::Unknown
                },
                signals: Signals {
                    elb_ok: counted,
                    ec2_ok: counted,
                    passed: false,
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

/// EC2 shows every live instance running with its checks passed; the group reports `state` of
/// those in `listed`.
fn observed(f: &Fleet, listed: &[(u32, TargetState)]) -> Vec<Observed> {
    f.live_instances()
        .map(|i| {
            let mut o = Observed::running_ok(i);
            for (n, state) in listed {
                if id(*n) == i.id {
                    o.targets.insert(GROUP.into(), state.clone());
                }
            }
            o
        })
        .collect()
}

fn registers(step: &Step, i: &InstanceId) -> bool {
    let commanded = step.commands.iter().any(|c| match c {
        Command::Register { instances, .. } => instances.contains(i),
        _ => false,
    });
    let recorded = step.changes.iter().any(|c| match c {
        Change::RegistrationDecided { instances } => instances.contains(i),
        _ => false,
    });
    commanded || recorded
}

#[test]
fn a_step_that_decides_to_terminate_an_instance_does_not_register_it() {
    // Capacity 1 and two instances: the one not counted yet, and not registered, goes first —
    // and the same pass would have registered it, after its deregistration.
    let f = fleet(1, 1, 1);
    let step = reconcile(&f, &observed(&f, &[(0, TargetState::Healthy)]), t0());
    let leaving = step.fleet.instances.get(&id(1)).unwrap();
    assert!(leaving.disposal.is_some(), "{:#?}", step.changes);
    assert!(!registers(&step, &id(1)), "{:#?}", step.commands);
    assert!(step.commands.iter().any(|c| matches!(
        c,
        Command::Deregister { instances, .. } if instances.contains(&id(1))
    )));
}

#[test]
fn an_instance_a_group_lists_as_registered_again_on_its_way_out_is_deregistered_again() {
    // Draining, its delay over — but a registration carried out late lists it again.
    for stage in [
        Stage::Draining {
            since: t0() - Duration::minutes(10),
            until: t0() - Duration::minutes(5),
        },
        Stage::Terminate,
    ] {
        let mut f = fleet(1, 2, 0);
        f.instances.get_mut(&id(1)).unwrap().disposal = Some(Disposal {
            reason: "scale in to 1".into(),
            decided_at: t0() - Duration::minutes(10),
            after_launch: None,
            stage: stage.clone(),
            drained: false,
        });
        let listed = [(0, TargetState::Healthy), (1, TargetState::Healthy)];
        let step = reconcile(&f, &observed(&f, &listed), t0());
        let d = step.fleet.instances.get(&id(1)).unwrap().disposal.clone();
        assert_eq!(d.map(|d| d.stage), Some(Stage::Deregister), "{stage:?}");
        assert!(
            !step
                .commands
                .iter()
                .any(|c| matches!(c, Command::Terminate { .. })),
            "{stage:?}: {:?}",
            step.commands
        );
        assert!(step.commands.iter().any(|c| matches!(
            c,
            Command::Deregister { instances, .. } if instances.contains(&id(1))
        )));
    }
}

#[test]
fn the_elb_signal_of_an_instance_not_counted_yet_holds_only_while_every_group_reports_it() {
    // Reported healthy once, then the group no longer lists it (made anew without it): the
    // signal is withdrawn, and a passed report does not count the instance.
    let mut f = fleet(2, 1, 1);
    {
        let i = f.instances.get_mut(&id(1)).unwrap();
        i.signals.elb_ok = true;
        i.signals.ec2_ok = false;
    }
    f.spec.policy.health_check.event = true;
    let step = reconcile(&f, &observed(&f, &[(0, TargetState::Healthy)]), t0());
    let i = step.fleet.instances.get(&id(1)).unwrap();
    assert!(!i.signals.elb_ok);
    assert_eq!(i.health, Health::Unknown);
    let passed = Intent::HealthCheckPassed { instance: id(1) };
    let after = apply_intent(&step.fleet, &passed, t0(), t0()).unwrap();
    assert_eq!(
        after.fleet.instances.get(&id(1)).unwrap().health,
        Health::Unknown
    );
}

#[test]
fn a_failed_instance_that_recovers_counts_only_as_a_new_one_would() {
    let mut f = fleet(3, 1, 2);
    f.breaker = Some(Breaker {
        tripped_at: t0() - Duration::minutes(5),
        unhealthy: 2,
        shared: None,
        reason: "test".into(),
    });
    f.spec.hooks.launching = Some(Hook {
        timeout: Seconds(300),
        default_result: HookResult::Continue,
    });
    for (n, result) in [(1, HookResult::Abandon), (2, HookResult::Continue)] {
        let i = f.instances.get_mut(&id(n)).unwrap();
        i.health = Health::failed("test");
        i.signals.elb_ok = true;
        i.signals.ec2_ok = true;
        i.launch_hook = Some(HookWait {
            since: t0() - Duration::minutes(80),
            until: t0() - Duration::minutes(75),
            result: Some(result),
            ended_at: Some(t0() - Duration::minutes(78)),
        });
    }
    f.failed = 2;
    // Abandoned at launch: never trusted again.
    let passed = |n| Intent::HealthCheckPassed { instance: id(n) };
    let step = apply_intent(&f, &passed(1), t0(), t0()).unwrap();
    assert!(step.fleet.instances.get(&id(1)).unwrap().is_failed());
    // Past its hook: proven again as a new one is — the group must report it healthy again.
    let step = apply_intent(&f, &passed(2), t0(), t0()).unwrap();
    let i = step.fleet.instances.get(&id(2)).unwrap();
    assert_eq!(i.health, Health::Unknown);
    assert!(!i.signals.elb_ok);
    let listed = [(0, TargetState::Healthy), (2, TargetState::Healthy)];
    let next = reconcile(&step.fleet, &observed(&step.fleet, &listed), t0());
    assert_eq!(
        next.fleet.instances.get(&id(2)).unwrap().health,
        Health::Healthy
    );
}
