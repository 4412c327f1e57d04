//! Placement, on the planner alone: launches keep zones within one of each other, a launch EC2
//! refuses for capacity falls back to the next offering and the refused one is skipped for three
//! minutes, a wave that could launch nothing waits (no rollback), a zone that comes back is
//! refilled, instances retire at their lifetime spread out, protected instances are left alone.
//!
//! A small world stands in for EC2: three subnets in three zones, a set of (type, zone) pools
//! without capacity, instances running and passing their checks one pass after their launch.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use phoenix_core::events::{Change, Intent, ScaleTarget};
use phoenix_core::model::{
    retires_at, Fleet, FleetSpec, Lifecycle, Observed, RolloutStatus, Seconds,
};
use phoenix_core::planner::{
    apply_intent, create_fleet, reconcile, record_outcomes, Command, Launched, Outcome, Refusal,
    Resolved, Step,
};
use phoenix_core::{ImageId, InstanceId};
use std::collections::{BTreeMap, BTreeSet};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}
fn ami(n: u8) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap()
}

const ZONES: [(&str, &str); 3] = [
    ("subnet-a", "zone-a"),
    ("subnet-b", "zone-b"),
    ("subnet-c", "zone-c"),
];

struct Vm {
    image: ImageId,
    zone: String,
    subnet: String,
    instance_type: String,
    launched_at: DateTime<Utc>,
    token: String,
    protected: bool,
    spot: bool,
}

struct World {
    fleet: Fleet,
    now: DateTime<Utc>,
    next: u32,
    vms: BTreeMap<InstanceId, Vm>,
    /// (type, zone) pools EC2 has no capacity in.
    no_capacity: BTreeSet<(String, String)>,
    /// (type, zone) pools without Spot capacity.
    no_spot: BTreeSet<(String, String)>,
    /// RunInstances calls, as (type, zone), in order.
    calls: Vec<(String, String)>,
    history: Vec<Change>,
}

impl World {
    fn new(capacity: u32, extra: &str) -> World {
        let yaml = format!(
            "name: web\nimage: {}\ncapacity: {capacity}\nsubnets: [subnet-a, subnet-b, subnet-c]\n{extra}",
            ami(1)
        );
        let spec = FleetSpec::from_yaml(&yaml).unwrap();
        let zones = ZONES
            .iter()
            .map(|(s, z)| (s.to_string(), z.to_string()))
            .collect();
        let resolved = Resolved {
            template_version: None,
            zones,
        };
        let fleet = create_fleet(spec, resolved, t0()).unwrap().fleet;
        World {
            fleet,
            now: t0(),
            next: 0,
            vms: BTreeMap::new(),
            no_capacity: BTreeSet::new(),
            no_spot: BTreeSet::new(),
            calls: Vec::new(),
            history: Vec::new(),
        }
    }

    fn commit(&mut self, step: &Step) {
        if step.is_noop() {
            return;
        }
        let mut f = step.fleet.clone();
        f.version += 1;
        self.fleet = f;
        self.history.extend(step.changes.iter().cloned());
    }

    fn observed(&self) -> Vec<Observed> {
        self.vms
            .iter()
            .map(|(id, vm)| Observed {
                id: id.clone(),
                image: Some(vm.image.clone()),
                state: Lifecycle::Running,
                status_ok: vm.launched_at < self.now,
                system_impaired: false,
                launched_at: Some(vm.launched_at),
                token: Some(vm.token.clone()),
                zone: Some(vm.zone.clone()),
                instance_type: Some(vm.instance_type.clone()),
                subnet: Some(vm.subnet.clone()),
                definition: Some(self.fleet.definition().fingerprint()),
                targets: Default::default(),
                protected: vm.protected,
            })
            .collect()
    }

    fn run(&mut self, step: &Step) {
        self.commit(step);
        let mut outcomes = Vec::new();
        for c in &step.commands {
            match c {
                Command::Launch {
                    token,
                    image,
                    count,
                    offerings,
                } => {
                    let mut refused = Vec::new();
                    let mut instances = Vec::new();
                    for o in offerings {
                        let t = o.instance_type.clone().unwrap_or("t3.micro".into());
                        let z = o.zone.clone().unwrap();
                        self.calls.push((t.clone(), z.clone()));
                        let pool = (t.clone(), z.clone());
                        if self.no_capacity.contains(&pool)
                            || (o.spot && self.no_spot.contains(&pool))
                        {
                            refused.push(Refusal {
                                offering: o.clone(),
                                error: "InsufficientInstanceCapacity".into(),
                            });
                            continue;
                        }
                        for _ in 0..*count {
                            self.next += 1;
                            let id = InstanceId::parse(&format!("i-{:08x}", self.next)).unwrap();
                            self.vms.insert(
                                id.clone(),
                                Vm {
                                    image: image.clone(),
                                    zone: z.clone(),
                                    subnet: o.subnet.clone().unwrap(),
                                    instance_type: t.clone(),
                                    launched_at: self.now,
                                    token: token.clone(),
                                    protected: false,
                                    spot: o.spot,
                                },
                            );
                            instances.push(Launched {
                                id,
                                launched_at: Some(self.now),
                                state: Lifecycle::Pending,
                                zone: Some(z.clone()),
                                instance_type: Some(t.clone()),
                                subnet: o.subnet.clone(),
                                definition: Some(self.fleet.definition().fingerprint()),
                            });
                        }
                        break;
                    }
                    outcomes.push(if instances.is_empty() {
                        Outcome::LaunchFailed {
                            token: token.clone(),
                            error: "no capacity".into(),
                            refused,
                        }
                    } else {
                        Outcome::Launched {
                            token: token.clone(),
                            instances,
                            request_ids: Vec::new(),
                            refused,
                        }
                    });
                }
                Command::Terminate { instances, .. } => {
                    for id in instances {
                        self.vms.remove(id);
                    }
                    outcomes.push(Outcome::Terminated {
                        instances: instances.clone(),
                        request_ids: Vec::new(),
                    });
                }
                other => panic!("no target groups here: {other:?}"),
            }
        }
        if !outcomes.is_empty() {
            let recorded = record_outcomes(&self.fleet, &outcomes, self.now);
            self.commit(&recorded);
        }
    }

    /// One reconcile pass a minute after the last.
    fn pass(&mut self) {
        self.now += Duration::minutes(1);
        let step = reconcile(&self.fleet, &self.observed(), self.now);
        self.run(&step);
    }

    fn passes(&mut self, n: usize) {
        for _ in 0..n {
            self.pass();
        }
    }

    fn intent(&mut self, intent: Intent) {
        let step = apply_intent(&self.fleet, &intent, self.now, self.now).unwrap();
        self.run(&step);
    }

    fn per_zone(&self) -> Vec<usize> {
        ZONES
            .iter()
            .map(|(_, z)| self.vms.values().filter(|v| v.zone == *z).count())
            .collect()
    }

    fn changes(&self, f: impl Fn(&Change) -> bool) -> usize {
        self.history.iter().filter(|c| f(c)).count()
    }
}

fn roll_to(w: &mut World, n: u8) {
    let fleet = w.fleet.spec.name.clone();
    w.intent(Intent::ImageReady {
        fleet,
        image: ami(n),
    });
}

#[test]
fn launches_and_a_rollout_keep_the_zones_within_one_of_each_other() {
    let mut w = World::new(5, "instance_type: t3.micro\n");
    w.passes(3);
    assert_eq!(w.per_zone(), [2, 2, 1]);
    roll_to(&mut w, 2);
    for _ in 0..30 {
        w.pass();
        let c = w.per_zone();
        let (max, min) = (c.iter().max().unwrap(), c.iter().min().unwrap());
        // Mid-rollout the surge instance may stand above; never two apart from the smallest
        // among instances that stay.
        assert!(max - min <= 2, "{c:?}");
    }
    assert!(w.vms.values().all(|v| v.image == ami(2)));
    assert_eq!(w.per_zone(), [2, 2, 1]);
}

#[test]
fn a_refused_offering_falls_back_in_the_same_step_and_is_skipped_for_three_minutes() {
    let mut w = World::new(3, "instance_types: [m7g.large, c7g.large]\n");
    w.no_capacity.insert(("m7g.large".into(), "zone-a".into()));
    w.passes(1);
    assert_eq!(w.per_zone(), [1, 1, 1]);
    let in_a: Vec<&Vm> = w.vms.values().filter(|v| v.zone == "zone-a").collect();
    assert_eq!(in_a[0].instance_type, "c7g.large");
    assert_eq!(
        w.changes(|c| matches!(c, Change::OfferingsRefused { .. })),
        1
    );
    // The next launch into zone-a within three minutes does not ask for m7g.large again.
    w.calls.clear();
    w.intent(Intent::Scale {
        fleet: w.fleet.spec.name.clone(),
        target: ScaleTarget::Desired(6),
    });
    w.passes(1);
    assert!(
        !w.calls
            .contains(&("m7g.large".to_string(), "zone-a".to_string())),
        "{:?}",
        w.calls
    );
    // Three minutes on, it is asked again (and still refused: the refusal is renewed).
    w.passes(4);
    w.calls.clear();
    w.intent(Intent::Scale {
        fleet: w.fleet.spec.name.clone(),
        target: ScaleTarget::Desired(9),
    });
    w.passes(1);
    assert!(
        w.calls
            .contains(&("m7g.large".to_string(), "zone-a".to_string())),
        "{:?}",
        w.calls
    );
}

#[test]
fn a_wave_that_could_launch_nothing_waits_and_never_rolls_back_and_a_zone_that_comes_back_is_refilled(
) {
    let mut w = World::new(3, "instance_type: t3.micro\n");
    w.passes(3);
    // No capacity anywhere: the rollout's wave launches nothing, for longer than its deadline.
    for (_, z) in ZONES {
        w.no_capacity.insert(("t3.micro".into(), z.into()));
    }
    roll_to(&mut w, 2);
    w.passes(20);
    let r = w.fleet.rollout.clone().unwrap();
    assert!(r.status.is_active(), "{r:?}");
    assert!(w.changes(|c| matches!(c, Change::CapacityUnavailable { .. })) >= 1);
    assert_eq!(
        w.changes(|c| matches!(c, Change::RolloutRollingBack { .. })),
        0
    );
    // Capacity comes back in two zones: the rollout finishes there...
    w.no_capacity
        .remove(&("t3.micro".to_string(), "zone-b".to_string()));
    w.no_capacity
        .remove(&("t3.micro".to_string(), "zone-c".to_string()));
    w.passes(20);
    assert_eq!(
        w.fleet.rollout.as_ref().unwrap().status,
        RolloutStatus::Succeeded
    );
    let c = w.per_zone();
    assert_eq!(c[0], 0, "{c:?}");
    // ...and once zone-a has capacity again, the fleet moves an instance back into it.
    w.no_capacity.clear();
    w.passes(15);
    assert_eq!(w.per_zone(), [1, 1, 1]);
    assert!(
        w.changes(
            |c| matches!(c, Change::LaunchDecided { reason, .. } if reason.starts_with("rebalance"))
        ) >= 1
    );
}

#[test]
fn instances_retire_at_their_lifetime_spread_out_and_launch_first() {
    let mut w = World::new(6, "instance_type: t3.micro\nmax_instance_lifetime: 10h\n");
    w.passes(3);
    let first: Vec<InstanceId> = w.vms.keys().cloned().collect();
    let due: BTreeSet<DateTime<Utc>> = first
        .iter()
        .map(|id| retires_at(w.fleet.instances.get(id).unwrap(), Seconds(36_000)))
        .collect();
    assert!(
        due.len() > 3,
        "launched together, they retire apart: {due:?}"
    );
    assert!(due.iter().all(|t| *t > t0() + Duration::hours(9)));
    // Nine hours on, nothing is due yet.
    w.now += Duration::hours(9);
    w.passes(2);
    assert!(first.iter().all(|id| w.vms.contains_key(id)));
    // An hour on, each goes, never below capacity serving.
    for _ in 0..80 {
        w.pass();
        let healthy = w
            .fleet
            .live_instances()
            .filter(|i| i.is_healthy() && i.disposal.is_none())
            .count();
        assert!(healthy >= 6 || w.vms.len() > 6, "{healthy}");
    }
    assert!(first.iter().all(|id| !w.vms.contains_key(id)));
    assert_eq!(w.vms.len(), 6);
}

#[test]
fn protected_instances_hold_a_rollout_and_a_scale_in_but_not_a_repair() {
    let mut w = World::new(3, "instance_type: t3.micro\n");
    w.passes(3);
    let kept = w.vms.keys().next().unwrap().clone();
    w.vms.get_mut(&kept).unwrap().protected = true;
    w.pass();
    assert!(w.fleet.instances.get(&kept).unwrap().protected);
    assert_eq!(
        w.changes(|c| matches!(
            c,
            Change::ProtectionChanged {
                protected: true,
                ..
            }
        )),
        1
    );
    roll_to(&mut w, 2);
    w.passes(20);
    assert!(w.vms.contains_key(&kept), "a rollout leaves it");
    assert_eq!(w.vms.len(), 3);
    assert_eq!(w.vms.values().filter(|v| v.image == ami(2)).count(), 2);
    w.intent(Intent::Scale {
        fleet: w.fleet.spec.name.clone(),
        target: ScaleTarget::Desired(1),
    });
    w.passes(10);
    assert!(w.vms.contains_key(&kept), "a scale-in leaves it");
    // Failed, it is replaced all the same.
    w.intent(Intent::HealthCheckFailed {
        instance: kept.clone(),
        reason: "GET /health returned 503".into(),
    });
    w.passes(5);
    assert!(!w.vms.contains_key(&kept));
}

#[test]
fn control_unprotected_the_same_instance_is_rolled() {
    let mut w = World::new(3, "instance_type: t3.micro\n");
    w.passes(3);
    let kept = w.vms.keys().next().unwrap().clone();
    roll_to(&mut w, 2);
    w.passes(20);
    assert!(!w.vms.contains_key(&kept));
}

#[test]
fn turning_the_type_into_a_list_rolls_nothing_and_taking_a_type_out_rolls_its_instances() {
    let mut w = World::new(2, "instance_type: m7g.large\n");
    w.passes(3);
    let mut spec = w.fleet.spec.clone();
    spec.instance_type = None;
    spec.instance_types = vec!["m7g.large".into(), "c7g.large".into()];
    let step = phoenix_core::planner::update_spec(&w.fleet, spec.clone(), None, w.now).unwrap();
    assert!(!step
        .changes
        .iter()
        .any(|c| matches!(c, Change::RolloutStarted { .. })));
    w.run(&step);
    w.passes(3);
    assert!(w.vms.values().all(|v| v.instance_type == "m7g.large"));
    spec.instance_types = vec!["c7g.large".into()];
    let step = phoenix_core::planner::update_spec(&w.fleet, spec, None, w.now).unwrap();
    assert!(step
        .changes
        .iter()
        .any(|c| matches!(c, Change::RolloutStarted { changed, .. } if changed.contains(&"instance_types".to_string()))));
    w.run(&step);
    w.passes(20);
    assert!(w.vms.values().all(|v| v.instance_type == "c7g.large"));
}

#[test]
fn the_purchase_mix_is_met_spot_falls_back_to_on_demand_and_avoids_interrupted_pools() {
    let mut w = World::new(
        10,
        "instance_types: [m7g.large, c7g.large]\npurchase: {on_demand_base: 2, spot_percent: 70}\n",
    );
    w.passes(2);
    // 2 On-Demand, then 30 % of the other 8 (rounded up): 5 On-Demand, 5 Spot.
    let spot = |w: &World| w.vms.values().filter(|v| v.spot).count();
    assert_eq!(w.vms.len(), 10);
    assert_eq!(spot(&w), 5);
    assert_eq!(
        w.fleet.live_instances().filter(|i| i.spot).count(),
        5,
        "the records know which are Spot"
    );
    // A Spot instance interrupted: its pool goes last for the next Spot launches.
    let (id, pool) = w
        .vms
        .iter()
        .find(|(_, v)| v.spot && v.instance_type == "m7g.large")
        .map(|(id, v)| (id.clone(), v.zone.clone()))
        .unwrap();
    let notice = phoenix_core::notice::Notice::Interruption {
        action: "terminate".into(),
        at: w.now + Duration::minutes(2),
    };
    w.intent(Intent::Notice {
        instances: vec![id.clone()],
        notice,
    });
    w.passes(3);
    assert!(!w.vms.contains_key(&id));
    let replacement = w
        .vms
        .values()
        .filter(|v| v.spot && v.zone == pool)
        .max_by_key(|v| v.launched_at)
        .unwrap();
    assert_eq!(
        replacement.instance_type, "c7g.large",
        "the interrupted pool goes last"
    );
    // No Spot capacity anywhere: a Spot replacement falls back to On-Demand.
    for (_, z) in ZONES {
        for t in ["m7g.large", "c7g.large"] {
            w.no_spot.insert((t.into(), z.into()));
        }
    }
    let spot_one = w
        .vms
        .iter()
        .find(|(_, v)| v.spot)
        .map(|(id, _)| id.clone())
        .unwrap();
    w.intent(Intent::HealthCheckFailed {
        instance: spot_one.clone(),
        reason: "GET /health returned 503".into(),
    });
    w.passes(3);
    assert!(!w.vms.contains_key(&spot_one));
    assert_eq!(w.vms.len(), 10);
    assert_eq!(spot(&w), 4, "replaced On-Demand");
}

#[test]
fn control_without_a_purchase_mix_every_instance_is_on_demand() {
    let mut w = World::new(10, "instance_types: [m7g.large, c7g.large]\n");
    w.passes(2);
    assert_eq!(w.vms.values().filter(|v| v.spot).count(), 0);
}
