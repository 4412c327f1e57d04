//! Capacity and placement on the emulator: a rollout whose first instance type has no capacity
//! in one zone finishes on the next type there, without rolling back (and with one type only, the
//! zone goes without: the proxy's refusals are real); zones stay within one instance of each
//! other through repairs and scale-in, and a zone EC2 refused comes back into balance once it has
//! capacity again; instances retire at `max_instance_lifetime`, within the hourly budget.
//!
//! The emulator never runs out of capacity: the fault proxy in front of it refuses `RunInstances`
//! for chosen (type, zone) pools as EC2 does. Its clock is the real one: tests that move the
//! controller's clock ahead move the launch times EC2 reports by as much, through the proxy.

#![allow(clippy::unwrap_used)]

use aws_sdk_ec2::types::Filter;
use phoenix_core::events::{Change, Intent, ScaleTarget};
use phoenix_core::model::{Fleet, RolloutStatus};
use phoenix_core::{FleetName, InstanceId};
use phoenix_tests::faults::FaultProxy;
use phoenix_tests::target_groups::default_network;
use phoenix_tests::{Emulator, FleetFile, Harness};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

fn web() -> FleetName {
    FleetName::parse("web").unwrap()
}

/// One subnet of the default VPC in each of `n` zones, by zone: (subnet, zone).
async fn zonal_subnets(h: &Harness, n: usize) -> Vec<(String, String)> {
    let vpc = default_network(&h.sdk).await.unwrap().vpc;
    let mut by_zone: BTreeMap<String, String> = BTreeMap::new();
    for s in h
        .ec2
        .describe_subnets()
        .filters(Filter::builder().name("vpc-id").values(vpc).build())
        .send()
        .await
        .unwrap()
        .subnets()
    {
        by_zone
            .entry(s.availability_zone().unwrap().to_string())
            .or_insert_with(|| s.subnet_id().unwrap().to_string());
    }
    let out: Vec<(String, String)> = by_zone.into_iter().map(|(z, s)| (s, z)).take(n).collect();
    assert_eq!(
        out.len(),
        n,
        "the emulator's default VPC has subnets in {n} zones"
    );
    out
}

fn subnets_line(zones: &[(String, String)]) -> String {
    let ids: Vec<&str> = zones.iter().map(|(s, _)| s.as_str()).collect();
    format!("subnets: [{}]", ids.join(", "))
}

/// Live instances staying, by zone (every zone of `zones`, 0 when none).
fn per_zone(f: &Fleet, zones: &[(String, String)]) -> Vec<usize> {
    zones
        .iter()
        .map(|(_, z)| {
            f.live_instances()
                .filter(|i| i.disposal.is_none() && i.zone.as_deref() == Some(z.as_str()))
                .count()
        })
        .collect()
}

async fn behind_proxy() -> (Harness, FaultProxy) {
    let emulator = Emulator::start().unwrap();
    let proxy = FaultProxy::start(&emulator.endpoint, 18).await.unwrap();
    let h = Harness::start_behind(emulator, &proxy.endpoint)
        .await
        .unwrap();
    (h, proxy)
}

fn changes(h: &[phoenix_core::history::HistoryEntry]) -> Vec<&Change> {
    h.iter().flat_map(|e| &e.changes).collect()
}

/// A fleet of 3 over 3 zones, `types` as its fleet file names them, m7g.large refused in the
/// first zone: it is created, then rolled to a new image. The fleet, and its history.
async fn rollout_without_m7g_in_one_zone(
    types: &str,
) -> (
    Fleet,
    Vec<phoenix_core::history::HistoryEntry>,
    Vec<(String, String)>,
) {
    let (h, proxy) = behind_proxy().await;
    let zones = zonal_subnets(&h, 3).await;
    proxy.set_no_capacity(&[("m7g.large", zones[0].1.as_str())]);
    let one = h.register_image("web-1").await;
    let file = FleetFile::new("web", &one, 3)
        .instance_type("")
        .line(types)
        .line(&subnets_line(&zones));
    h.apply(&file);
    h.settle("web").await;
    let two = h.register_image("web-2").await;
    h.publish(&Intent::ImageReady {
        fleet: web(),
        image: two.clone(),
    })
    .await;
    let f = h.settle("web").await;
    assert!(f.live_instances().all(|i| i.image == two));
    assert!(proxy.stats().no_capacity > 0, "the proxy refused launches");
    (f, h.history("web").await, zones)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_finishes_on_the_next_type_where_the_first_has_no_capacity() {
    let (f, history, zones) =
        rollout_without_m7g_in_one_zone("instance_types: [m7g.large, c7g.large]").await;
    let rollout = f.rollout.as_ref().unwrap();
    assert_eq!(rollout.status, RolloutStatus::Succeeded, "{rollout:?}");
    assert_eq!(per_zone(&f, &zones), [1, 1, 1], "zones stay balanced");
    for i in f.live_instances() {
        let expect = if i.zone.as_deref() == Some(zones[0].1.as_str()) {
            "c7g.large"
        } else {
            "m7g.large"
        };
        assert_eq!(i.instance_type.as_deref(), Some(expect), "{}", i.id);
    }
    let changes = changes(&history);
    assert!(changes
        .iter()
        .any(|c| matches!(c, Change::OfferingsRefused { .. })));
    assert!(!changes.iter().any(|c| matches!(
        c,
        Change::RolloutRollingBack { .. } | Change::ImageQuarantined { .. }
    )));
}

#[tokio::test(flavor = "multi_thread")]
async fn control_with_one_type_the_zone_without_capacity_goes_without() {
    let (f, history, zones) = rollout_without_m7g_in_one_zone("instance_type: m7g.large").await;
    assert_eq!(
        f.rollout.as_ref().unwrap().status,
        RolloutStatus::Succeeded,
        "no capacity rolls nothing back"
    );
    let counts = per_zone(&f, &zones);
    assert_eq!(counts[0], 0, "nothing runs where EC2 refused: {counts:?}");
    assert!(changes(&history)
        .iter()
        .any(|c| matches!(c, Change::OfferingsRefused { .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn zones_stay_balanced_through_repairs_and_scale_in_and_a_zone_that_comes_back() {
    let (h, proxy) = behind_proxy().await;
    let zones = zonal_subnets(&h, 3).await;
    let one = h.register_image("web-1").await;
    let file = FleetFile::new("web", &one, 6).line(&subnets_line(&zones));
    h.apply(&file);
    let f = h.settle("web").await;
    assert_eq!(per_zone(&f, &zones), [2, 2, 2]);

    // A repair: the replacement goes to the zone of the instance it replaces.
    let failed = f
        .live_instances()
        .find(|i| i.zone.as_deref() == Some(zones[1].1.as_str()))
        .unwrap()
        .id
        .clone();
    h.publish(&Intent::HealthCheckFailed {
        instance: failed.clone(),
        reason: "GET /health returned 503".into(),
    })
    .await;
    let f = h.settle("web").await;
    assert!(f.instances.get(&failed).is_none_or(|i| !i.is_live()));
    assert_eq!(per_zone(&f, &zones), [2, 2, 2]);

    // Scale-in: from the largest zones first.
    for (capacity, want) in [(4, [2, 1, 1]), (3, [1, 1, 1])] {
        h.publish(&Intent::Scale {
            fleet: web(),
            target: ScaleTarget::Desired(capacity),
        })
        .await;
        let f = h.settle("web").await;
        let counts = per_zone(&f, &zones);
        let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
        assert!(spread <= 1, "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), want.iter().sum::<usize>());
    }

    // The first zone fails (EC2 has no capacity there): a scale-out goes to the others...
    proxy.set_no_capacity(&[("t3.micro", zones[0].1.as_str())]);
    h.publish(&Intent::Scale {
        fleet: web(),
        target: ScaleTarget::Desired(6),
    })
    .await;
    let f = h.settle("web").await;
    let counts = per_zone(&f, &zones);
    assert_eq!(
        counts[0], 1,
        "no launch landed where EC2 refused: {counts:?}"
    );
    assert!(counts[1] + counts[2] == 5, "{counts:?}");
    let history = h.history("web").await;
    assert!(changes(&history).iter().any(|c| matches!(
        c,
        Change::OfferingsRefused { .. } | Change::CapacityUnavailable { .. }
    )));

    // ...and once it has capacity again (and its refusal is forgotten), the fleet moves
    // instances back into it, one at a time, launch first.
    proxy.clear_no_capacity();
    h.clock.store(4 * 60, Ordering::SeqCst);
    let mut f = h.fleet("web").await;
    for _ in 0..40 {
        h.dispatcher.tick().await.unwrap();
        h.drain().await;
        f = h.fleet("web").await;
        if per_zone(&f, &zones) == [2, 2, 2] && phoenix_tests::converged(&f) {
            break;
        }
    }
    assert_eq!(per_zone(&f, &zones), [2, 2, 2], "{f:#?}");
    let moved = changes(&h.history("web").await)
        .into_iter()
        .filter(|c| matches!(c, Change::LaunchDecided { reason, .. } if reason.starts_with("rebalance")))
        .count();
    assert!(moved >= 1, "rebalanced by launching into the zone");
}

/// Terminations decided for age.
fn retired(history: &[phoenix_core::history::HistoryEntry]) -> Vec<InstanceId> {
    changes(history)
        .into_iter()
        .filter_map(|c| match c {
            Change::TerminationDecided { instance, reason }
                if reason.contains("max_instance_lifetime") =>
            {
                Some(instance.clone())
            }
            _ => None,
        })
        .collect()
}

/// A fleet of 3 (`lifetime` line, if any), at most 2 replacements an hour, its clock moved just
/// over 2 h ahead: the instances retired for age after enough passes.
async fn two_hours_later(lifetime: Option<&str>) -> (Harness, FaultProxy, Vec<InstanceId>) {
    let (h, proxy) = behind_proxy().await;
    let one = h.register_image("web-1").await;
    let mut file = FleetFile::new("web", &one, 3).policy("max_replacements_per_hour: 2");
    if let Some(l) = lifetime {
        file = file.line(l);
    }
    h.apply(&file);
    h.settle("web").await;
    let plan = h.phoenix_ok(&["plan", "web"]);
    let expect = match lifetime {
        Some(_) => "3 instances reach max_instance_lifetime 2h in the next day",
        None => "no max_instance_lifetime",
    };
    assert!(plan.contains(expect), "{plan}");
    h.clock.store(2 * 3600 + 60, Ordering::SeqCst);
    proxy.set_launch_time_shift(2 * 3600 + 60);
    for _ in 0..40 {
        h.dispatcher.tick().await.unwrap();
        h.drain().await;
        let f = h.fleet("web").await;
        if retired(&h.history("web").await).len() >= 2 && phoenix_tests::converged(&f) {
            break;
        }
    }
    // A few more passes: the hourly budget holds the third.
    for _ in 0..3 {
        h.dispatcher.tick().await.unwrap();
        h.drain().await;
    }
    let gone = retired(&h.history("web").await);
    (h, proxy, gone)
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_retire_at_their_lifetime_within_the_hourly_budget() {
    let (h, proxy, gone) = two_hours_later(Some("max_instance_lifetime: 2h")).await;
    assert_eq!(gone.len(), 2, "2 an hour: {gone:?}");
    let f = h.fleet("web").await;
    assert!(phoenix_tests::converged(&f));
    assert_eq!(
        f.live_instances().filter(|i| gone.contains(&i.id)).count(),
        0
    );
    // An hour later the budget has room again: the last original goes too, and the new ones,
    // an hour old, stay.
    h.clock.store(3 * 3600 + 120, Ordering::SeqCst);
    proxy.set_launch_time_shift(3 * 3600 + 120);
    for _ in 0..40 {
        h.dispatcher.tick().await.unwrap();
        h.drain().await;
        if retired(&h.history("web").await).len() >= 3
            && phoenix_tests::converged(&h.fleet("web").await)
        {
            break;
        }
    }
    assert_eq!(retired(&h.history("web").await).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn control_without_a_lifetime_nothing_retires() {
    let (_h, _proxy, gone) = two_hours_later(None).await;
    assert!(gone.is_empty(), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_protected_instance_holds_its_rollout_until_unprotected_and_status_says_so() {
    let h = Harness::start().await.unwrap();
    let one = h.register_image("web-1").await;
    h.apply(&FleetFile::new("web", &one, 2));
    let f = h.settle("web").await;
    let kept = f.live_instances().next().unwrap().id.clone();
    h.phoenix_ok(&["instance", "protect", kept.as_str()]);
    assert!(h.fleet("web").await.instances[&kept].protected);
    let two = h.register_image("web-2").await;
    h.publish(&Intent::ImageReady {
        fleet: web(),
        image: two.clone(),
    })
    .await;
    let mut f = h.fleet("web").await;
    for _ in 0..30 {
        h.drain().await;
        h.dispatcher.tick().await.unwrap();
        f = h.fleet("web").await;
        let others_done = f
            .live_instances()
            .filter(|i| i.id != kept)
            .all(|i| i.image == two && i.is_healthy() && i.disposal.is_none());
        if others_done && f.live_instances().count() == 2 && f.pending.is_empty() {
            break;
        }
    }
    assert!(f.instances[&kept].is_live() && f.instances[&kept].image == one);
    let status = h.phoenix_ok(&["status", "web"]);
    assert!(
        status.contains(&format!("protected, holding the rollout back: {kept}")),
        "{status}"
    );
    // Unprotected, the policy applies to it again: the rollout finishes.
    h.phoenix_ok(&["instance", "unprotect", kept.as_str()]);
    let f = h.settle("web").await;
    assert!(f.live_instances().all(|i| i.image == two));
    assert!(f.instances.get(&kept).is_none_or(|i| !i.is_live()));
}

/// How many of the fleet's running instances EC2 reports as Spot.
async fn spot_in_ec2(h: &Harness) -> usize {
    let out = h
        .ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:phoenix:fleet")
                .values("web")
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.state().and_then(|s| s.name()).map(|n| n.as_str()) == Some("running")
                && i.instance_lifecycle().map(|l| l.as_str()) == Some("spot")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn spot_instances_meet_the_mix_and_fall_back_to_on_demand_without_spot_capacity() {
    let (h, proxy) = behind_proxy().await;
    let zones = zonal_subnets(&h, 3).await;
    let one = h.register_image("web-1").await;
    let file = FleetFile::new("web", &one, 4)
        .line(&subnets_line(&zones))
        .line("purchase: {on_demand_base: 1, spot_percent: 100}");
    h.apply(&file);
    let f = h.settle("web").await;
    assert_eq!(f.live_instances().filter(|i| i.spot).count(), 3);
    assert_eq!(spot_in_ec2(&h).await, 3, "launched as Spot in EC2");
    // No Spot capacity left: a failed Spot instance is replaced On-Demand.
    let pools: Vec<(&str, &str)> = zones
        .iter()
        .map(|(_, z)| ("t3.micro", z.as_str()))
        .collect();
    proxy.set_no_spot_capacity(&pools);
    let failed = f.live_instances().find(|i| i.spot).unwrap().id.clone();
    h.publish(&Intent::HealthCheckFailed {
        instance: failed.clone(),
        reason: "GET /health returned 503".into(),
    })
    .await;
    let f = h.settle("web").await;
    assert!(f.instances.get(&failed).is_none_or(|i| !i.is_live()));
    assert_eq!(f.live_instances().filter(|i| i.spot).count(), 2);
    assert_eq!(spot_in_ec2(&h).await, 2);
    assert!(
        proxy.stats().no_capacity > 0,
        "Spot was asked first, and refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_and_status_name_the_offerings_ec2_refused() {
    let (h, proxy) = behind_proxy().await;
    let zones = zonal_subnets(&h, 3).await;
    proxy.set_no_capacity(&[("m7g.large", zones[0].1.as_str())]);
    let one = h.register_image("web-1").await;
    h.apply(
        &FleetFile::new("web", &one, 3)
            .instance_type("")
            .line("instance_types: [m7g.large, c7g.large]")
            .line(&subnets_line(&zones)),
    );
    let f = h.settle("web").await;
    let in_a = f
        .live_instances()
        .find(|i| i.zone.as_deref() == Some(zones[0].1.as_str()))
        .unwrap();
    let why = h.phoenix_ok(&["explain", in_a.id.as_str()]);
    assert!(
        why.contains("EC2 had no capacity for m7g.large in"),
        "{why}"
    );
    let status = h.phoenix_ok(&["status", "web"]);
    assert!(status.contains("no capacity for m7g.large in"), "{status}");
}
