//! Placement through the planner: a fleet whose zones came apart is brought back together within
//! its budget — never beyond `max_total`, even without room to surge.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use phoenix_core::events::Change;
use phoenix_core::model::{Fleet, FleetSpec, Instance, Lifecycle, Observed};
use phoenix_core::planner::{reconcile, Command, Step};
use phoenix_core::{ImageId, InstanceId};
use std::collections::BTreeMap;

fn t0() -> DateTime<Utc> {
    "2030-01-07T12:00:00Z".parse().unwrap()
}
fn ami(n: u8) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap()
}
fn id(n: u32) -> InstanceId {
    InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap()
}

const SUBNETS: [&str; 3] = ["subnet-a", "subnet-b", "subnet-c"];
const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// A fleet over three zones with its healthy instances in the subnets given, one each.
fn fleet(policy: &str, subnets: &[usize]) -> Fleet {
    let yaml = format!(
        "name: web\nimage: {}\ncapacity: {}\ninstance_type: t3.micro\nsubnets: [{}]\npolicy: {policy}\n",
        ami(1),
        subnets.len(),
        SUBNETS.join(", ")
    );
    let spec = FleetSpec::from_yaml(&yaml).unwrap();
    let mut f = Fleet::new(spec, t0() - Duration::hours(2));
    f.version = 3;
    f.zones = SUBNETS
        .iter()
        .zip(ZONES)
        .map(|(s, z)| (s.to_string(), z.to_string()))
        .collect::<BTreeMap<_, _>>();
    f.definitions
        .insert(f.definition().fingerprint(), f.definition());
    for (n, s) in subnets.iter().enumerate() {
        let n = n as u32;
        let inst: Instance = serde_json::from_value(serde_json::json!({
            "id": id(n),
            "image": ami(1),
            "launched_at": t0() - Duration::hours(1) + Duration::minutes(i64::from(n)),
            "state": "running",
            "health": {"status": "healthy"},
            "signals": {"ec2_ok": true},
            "token": format!("web-seed-{n}"),
            "subnet": SUBNETS[*s],
            "zone": ZONES[*s],
            "definition": f.definition().fingerprint(),
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
            instance_type: Some("t3.micro".into()),
            ..Observed::running_ok(i)
        })
        .collect()
}

fn pass(f: &Fleet, now: DateTime<Utc>) -> Step {
    reconcile(f, &observed(f), now)
}

fn launches(step: &Step) -> Vec<(u32, Vec<String>)> {
    step.commands
        .iter()
        .filter_map(|c| match c {
            Command::Launch {
                count, offerings, ..
            } => Some((
                *count,
                offerings.iter().filter_map(|o| o.subnet.clone()).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn terminated(step: &Step) -> Vec<(InstanceId, String)> {
    step.changes
        .iter()
        .filter_map(|c| match c {
            Change::TerminationDecided { instance, reason } => {
                Some((instance.clone(), reason.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn with_room_to_surge_a_rebalance_launches_into_the_smallest_zone_only() {
    let f = fleet("{max_surge: 1, max_unavailable: 0}", &[0, 0, 0, 1]);
    let step = pass(&f, t0());
    assert_eq!(launches(&step), vec![(1, vec!["subnet-c".to_string()])]);
    assert!(terminated(&step).is_empty());
}

#[test]
fn without_room_to_surge_a_rebalance_takes_one_from_the_largest_zone_first() {
    // Capacity 2, max_surge 0: max_total is 2. Both instances in one zone.
    let f = fleet("{max_surge: 0, max_unavailable: 1}", &[0, 0]);
    assert_eq!(f.budget().max_total, 2);
    let step = pass(&f, t0());
    // Never beyond max_total: no launch while both are there.
    assert!(launches(&step).is_empty(), "{:?}", step.commands);
    let gone = terminated(&step);
    assert_eq!(gone.len(), 1, "{:?}", step.changes);
    assert_eq!(gone[0].0, id(0), "the oldest of the largest zone");
    assert!(gone[0].1.starts_with("rebalance zones"), "{}", gone[0].1);
    // Once it is gone, the launch that makes the capacity up goes to the smallest zone.
    let mut f = step.fleet;
    f.instances.get_mut(&id(0)).unwrap().state = Lifecycle::Terminated;
    let step = pass(&f, t0() + Duration::minutes(2));
    let made_up = launches(&step);
    assert_eq!(made_up.len(), 1, "{:?}", step.changes);
    assert_eq!(made_up[0].1.first().map(String::as_str), Some("subnet-b"));
}

#[test]
fn without_room_to_surge_nor_to_go_unavailable_the_zones_stay_as_they_are() {
    // max_unavailable 0 and max_surge 0 leave no way to move an instance without going beyond
    // the budget: nothing is launched or taken.
    let f = fleet("{max_surge: 0, max_unavailable: 0}", &[0, 0]);
    if f.budget().max_total > 2 {
        // The budget makes room to surge after all: the rebalance launches into it.
        let step = pass(&f, t0());
        assert_eq!(launches(&step).len(), 1);
        return;
    }
    let step = pass(&f, t0());
    assert!(launches(&step).is_empty(), "{:?}", step.commands);
    assert!(terminated(&step).is_empty(), "{:?}", step.changes);
}

/// A fleet left mixed by an aborted rollout: its old instances past their lifetime still retire.
#[test]
fn an_aborted_rollout_does_not_keep_old_instances_past_their_lifetime() {
    let mut f = fleet(
        "{max_surge: 1, max_unavailable: 0}\nmax_instance_lifetime: 1h",
        &[0, 1, 2],
    );
    // Instance 0 is on the old image and past its lifetime; the rollout to image 2 was aborted
    // with the other two on it.
    for n in 1..3 {
        let i = f.instances.get_mut(&id(n)).unwrap();
        i.image = ami(2);
        i.launched_at = t0() - Duration::minutes(10);
    }
    f.instances.get_mut(&id(0)).unwrap().launched_at = t0() - Duration::hours(2);
    f.spec.image = ami(2);
    f.rollout = Some(
        serde_json::from_value(serde_json::json!({
            "id": 1, "from": ami(1), "to": ami(2), "status": "aborted",
            "started_at": t0() - Duration::minutes(30), "waves": [],
        }))
        .unwrap(),
    );
    let step = pass(&f, t0());
    // Launch first: a replacement in instance 0's zone, on the fleet's image.
    assert_eq!(launches(&step).len(), 1, "{:?}", step.changes);
    // Once the replacement is up and healthy, instance 0 goes, retired for its age.
    let mut f = step.fleet;
    assert_eq!(f.pending.len(), 1);
    let token = f.pending[0].token.clone();
    f.pending.clear();
    let inst: Instance = serde_json::from_value(serde_json::json!({
        "id": id(9), "image": ami(2), "launched_at": t0(), "state": "running",
        "health": {"status": "healthy"}, "signals": {"ec2_ok": true}, "token": token,
        "subnet": SUBNETS[0], "zone": ZONES[0], "definition": f.definition().fingerprint(),
    }))
    .unwrap();
    f.instances.insert(id(9), inst);
    f.live += 1;
    let step = pass(&f, t0() + Duration::minutes(3));
    let gone = terminated(&step);
    assert_eq!(gone.len(), 1, "{:?}", step.changes);
    assert_eq!(gone[0].0, id(0));
    assert!(gone[0].1.contains("max_instance_lifetime"), "{}", gone[0].1);
}
