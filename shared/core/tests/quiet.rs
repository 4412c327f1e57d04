//! When a fleet may go without a full pass (`quiet_until`): a settled fleet is quiet for the
//! horizon; a timer of the planner (an instance reaching its lifetime) ends the quiet the minute
//! it falls due, found by asking the planner; anything in flight, or a pass that would act now,
//! leaves no quiet at all.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use phoenix_core::model::{Fleet, FleetSpec, Health, Lifecycle, Observed};
use phoenix_core::planner::{
    quiet_until, reconcile, record_outcomes, Command, Launched, Outcome, QUIET_HORIZON, QUIET_PROBE,
};
use phoenix_core::InstanceId;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

/// A fleet of `capacity` instances launched by the planner at `t0` and carried out, all seen
/// healthy by a pass at `t0 + 5 min`; the spec's extra lines appended.
fn settled(capacity: u32, extra: &str) -> (Fleet, Vec<Observed>) {
    let yaml = format!(
        "name: web\nimage: ami-00000001\ncapacity: {capacity}\ninstance_type: t3.micro\n{extra}"
    );
    let spec = FleetSpec::from_yaml(&yaml).unwrap();
    let mut fleet = Fleet::new(spec, t0());
    let step = reconcile(&fleet, &[], t0());
    fleet = step.fleet.clone();
    let mut outcomes = Vec::new();
    let mut n = 0;
    for c in &step.commands {
        if let Command::Launch { token, count, .. } = c {
            let instances = (0..*count)
                .map(|_| {
                    n += 1;
                    Launched {
                        id: InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap(),
                        launched_at: Some(t0()),
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
    }
    fleet = record_outcomes(&fleet, &outcomes, t0()).fleet;
    let observed: Vec<Observed> = fleet.live_instances().map(Observed::running_ok).collect();
    fleet = reconcile(&fleet, &observed, t0() + Duration::minutes(5)).fleet;
    assert_eq!(fleet.live, capacity);
    assert!(fleet.live_instances().all(|i| i.health == Health::Healthy));
    (fleet, observed)
}

#[test]
fn a_settled_fleet_is_quiet_for_the_horizon() {
    let (fleet, observed) = settled(3, "");
    let now = t0() + Duration::minutes(10);
    assert!(reconcile(&fleet, &observed, now).is_noop());
    assert_eq!(
        quiet_until(&fleet, &observed, now),
        Some(now + QUIET_HORIZON)
    );
}

#[test]
fn an_instance_reaching_its_lifetime_ends_the_quiet_the_minute_it_is_due() {
    let (fleet, observed) = settled(3, "max_instance_lifetime: 1h\n");
    let now = t0() + Duration::minutes(10);
    let until = quiet_until(&fleet, &observed, now).unwrap();
    assert!(
        until < now + QUIET_HORIZON,
        "the lifetime falls within the horizon"
    );
    // The planner decides nothing the minute before, and acts at `until`.
    assert!(reconcile(&fleet, &observed, until - QUIET_PROBE).is_noop());
    assert!(!reconcile(&fleet, &observed, until).is_noop());
}

#[test]
fn a_fleet_with_an_instance_not_yet_healthy_is_not_quiet() {
    let (mut fleet, mut observed) = settled(3, "");
    let first = fleet.live_instances().next().unwrap().id.clone();
    let mut unproven = fleet.instances[&first].clone();
    unproven.health = Health::Unknown;
    unproven.signals = Default::default();
    fleet.instances.insert(first.clone(), unproven);
    for o in observed.iter_mut().filter(|o| o.id == first) {
        o.status_ok = false;
    }
    let now = t0() + Duration::minutes(10);
    // The planner waits on its status checks, which a quick look does not read: it would never
    // see them pass.
    assert!(reconcile(&fleet, &observed, now).is_noop());
    assert_eq!(quiet_until(&fleet, &observed, now), None);
}

#[test]
fn a_fleet_short_of_capacity_or_with_a_launch_pending_is_not_quiet() {
    let (fleet, observed) = settled(3, "");
    let now = t0() + Duration::minutes(10);
    let mut short = fleet.clone();
    short.spec.capacity = 4;
    assert_eq!(quiet_until(&short, &observed, now), None);
    let pending = reconcile(&short, &observed, now).fleet;
    assert!(!pending.pending.is_empty());
    assert_eq!(quiet_until(&pending, &observed, now), None);
}
