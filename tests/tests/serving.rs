//! Serving traffic on the emulator: a rollout behind a target group fails no request (and without
//! one, requests fail: the harness can tell); lifecycle hooks hold instances until answered with
//! `phoenix lifecycle complete`; a fleet file naming a group phoenix cannot use is refused with the
//! reason; a group deleted later is recorded, announced, and holds the fleet.

#![allow(clippy::unwrap_used)]

use aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum;
use phoenix_core::events::{Change, Intent, ScaleTarget};
use phoenix_core::model::{Health, RolloutStatus, Stage};
use phoenix_core::{FleetName, InstanceId};
use phoenix_tests::target_groups::{create_group, default_network, Served};
use phoenix_tests::traffic::LoadConfig;
use phoenix_tests::{FleetFile, Harness};
use std::time::Duration;

const EVERY: Duration = Duration::from_millis(300);
const WITHIN: Duration = Duration::from_secs(90);

fn web() -> FleetName {
    FleetName::parse("web").unwrap()
}

/// A rollout of 3 instances under steady traffic with slow requests mixed in: the report, and
/// the fleet's history.
async fn rollout_under_traffic(
    with_group: bool,
) -> (phoenix_tests::traffic::TrafficReport, Served) {
    let mut s = Served::start("web", with_group, 2).await.unwrap();
    let one = s.h.register_image("web-1").await;
    let file = s.fleet_file(FleetFile::new("web", &one, 3), with_group);
    s.h.apply(&file);
    s.h.settle_over("web", EVERY, WITHIN).await;
    s.start_traffic(3, LoadConfig::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let two = s.h.register_image("web-2").await;
    s.h.publish(&Intent::ImageReady {
        fleet: web(),
        image: two.clone(),
    })
    .await;
    let f = s.h.settle_over("web", EVERY, WITHIN).await;
    assert!(f.live_instances().all(|i| i.image == two));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = s.report().await.unwrap();
    (report, s)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_behind_a_target_group_fails_no_request() {
    let (report, s) = rollout_under_traffic(true).await;
    println!("behind a target group: {report}");
    assert!(report.sent > 100, "{report}");
    assert_eq!(report.failed, 0, "{report}");
    // Every old instance was drained before it was terminated.
    let history = s.h.history("web").await;
    let drained: Vec<InstanceId> = history
        .iter()
        .flat_map(|e| &e.changes)
        .filter_map(|c| match c {
            Change::Drained { instance, .. } => Some(instance.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(drained.len(), 3, "{drained:?}");
    let rollout = s.h.fleet("web").await.rollout.unwrap();
    assert_eq!(rollout.status, RolloutStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread")]
async fn control_the_same_rollout_without_a_target_group_fails_requests() {
    let (report, _s) = rollout_under_traffic(false).await;
    println!("without a target group: {report}");
    assert!(report.failed > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_hooks_hold_instances_until_completed() {
    let h = Harness::start().await.unwrap();
    let notes = h.subscribe().await;
    let one = h.register_image("web-1").await;
    h.apply(
        &FleetFile::new("web", &one, 2)
            .line("hooks:\n  launching: {timeout: 10m}\n  terminating: {timeout: 10m}"),
    );
    h.drain().await;
    h.dispatcher.tick().await.unwrap();
    let f = h.fleet("web").await;
    let ids: Vec<InstanceId> = f.live_instances().map(|i| i.id.clone()).collect();
    assert_eq!(ids.len(), 2);
    for _ in 0..3 {
        h.dispatcher.tick().await.unwrap();
    }
    // Running, checks ok, but held by the hook: not counted.
    let f = h.fleet("web").await;
    assert!(f.live_instances().all(|i| i.health == Health::Unknown));
    let status = h.phoenix_ok(&["status", "web"]);
    assert!(status.contains("launching hook"), "{status}");
    let launching = h
        .notifications(&notes)
        .await
        .into_iter()
        .filter(|(dt, _)| dt == "InstanceLaunching")
        .count();
    assert_eq!(launching, 2);
    // CONTINUE for one, ABANDON for the other.
    h.phoenix_ok(&[
        "lifecycle",
        "complete",
        ids[0].as_str(),
        "--hook",
        "launching",
    ]);
    h.phoenix_ok(&[
        "lifecycle",
        "complete",
        ids[1].as_str(),
        "--hook",
        "launching",
        "--result",
        "abandon",
    ]);
    h.drain().await;
    h.dispatcher.tick().await.unwrap();
    let f = h.fleet("web").await;
    assert_eq!(f.instances[&ids[0]].health, Health::Healthy);
    assert!(
        f.instances.get(&ids[1]).is_none_or(|i| !i.is_live()),
        "the abandoned instance is replaced"
    );
    // An instance that waits on no hook: refused with the reason, nothing published.
    let again = h.phoenix(&[
        "lifecycle",
        "complete",
        ids[0].as_str(),
        "--hook",
        "launching",
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("does not wait on a launching hook"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The replacement waits on its own hook; answered, the fleet is whole.
    let replacement = f
        .live_instances()
        .find(|i| i.id != ids[0])
        .unwrap()
        .id
        .clone();
    h.phoenix_ok(&[
        "lifecycle",
        "complete",
        replacement.as_str(),
        "--hook",
        "launching",
    ]);
    h.settle("web").await;
    // A scale-in: the instance that goes waits on the terminating hook, running, until answered.
    h.publish(&Intent::Scale {
        fleet: web(),
        target: ScaleTarget::Desired(1),
    })
    .await;
    h.drain().await;
    h.dispatcher.tick().await.unwrap();
    let f = h.fleet("web").await;
    let held = f
        .live_instances()
        .find(|i| {
            matches!(
                i.disposal.as_ref().map(|d| &d.stage),
                Some(Stage::Hook { .. })
            )
        })
        .expect("an instance held by the terminating hook")
        .id
        .clone();
    h.dispatcher.tick().await.unwrap();
    assert!(h
        .fleet_instances("web")
        .await
        .iter()
        .any(|i| i.id == held.as_str()));
    h.phoenix_ok(&[
        "lifecycle",
        "complete",
        held.as_str(),
        "--hook",
        "terminating",
    ]);
    h.drain().await;
    let f = h.settle("web").await;
    assert!(f.instances.get(&held).is_none_or(|i| !i.is_live()));
    assert_eq!(h.fleet_instances("web").await.len(), 1);
    let history = h.phoenix_ok(&["history", "web"]);
    assert!(
        history.contains("waits on the terminating hook"),
        "{history}"
    );
    assert!(
        history.contains("terminating hook: CONTINUE (answered)"),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_apply_refuses_target_groups_it_cannot_use() {
    let h = Harness::start().await.unwrap();
    let one = h.register_image("web-1").await;
    let net = default_network(&h.sdk).await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let other_vpc = ec2
        .create_vpc()
        .cidr_block("10.9.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let group = |name: &'static str, vpc: String, t: TargetTypeEnum, tagged: bool| {
        let sdk = h.sdk.clone();
        async move { create_group(&sdk, name, &vpc, t, tagged, 5).await.unwrap() }
    };
    let good = group("good", net.vpc.clone(), TargetTypeEnum::Instance, true).await;
    let untagged = group("untagged", net.vpc.clone(), TargetTypeEnum::Instance, false).await;
    let ips = group("ips", net.vpc.clone(), TargetTypeEnum::Ip, true).await;
    let elsewhere = group(
        "elsewhere",
        other_vpc.clone(),
        TargetTypeEnum::Instance,
        true,
    )
    .await;
    let missing = good.replace("/good/", "/gone/");
    let file = |arn: &str| {
        FleetFile::new("web", &one, 2)
            .line(&format!("subnets: [{}]", net.subnets.join(", ")))
            .line(&format!("load_balancing:\n  target_groups: [{arn}]"))
    };
    for (arn, reason) in [
        (&missing, "does not exist"),
        (&untagged, "is not tagged phoenix:fleets"),
        (&ips, "has target type ip"),
        (&elsewhere, &format!("is in {other_vpc}")),
    ] {
        let dir = std::env::temp_dir().join(format!("phoenix-serving-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.yaml");
        std::fs::write(&path, file(arn).yaml()).unwrap();
        let out = h.phoenix(&["fleet", "apply", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{arn} was accepted");
        assert!(err.contains(reason), "{arn}: {err}");
    }
    // Nothing was written for any of them.
    let list = h.phoenix_ok(&["fleet", "list"]);
    assert!(!list.contains("web"), "{list}");
    // Control: the good group is accepted.
    h.apply(&file(&good));
    assert_eq!(h.fleet("web").await.spec.target_groups()[0].arn, good);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_target_group_is_announced_and_holds_the_rollout() {
    let h = Harness::start().await.unwrap();
    let notes = h.subscribe().await;
    let one = h.register_image("web-1").await;
    let net = default_network(&h.sdk).await.unwrap();
    let arn = create_group(&h.sdk, "web", &net.vpc, TargetTypeEnum::Instance, true, 1)
        .await
        .unwrap();
    let subnets = format!("subnets: [{}]", net.subnets.join(", "));
    let file = FleetFile::new("web", &one, 2).line(&subnets);
    h.apply(
        &file
            .clone()
            .line(&format!("load_balancing:\n  target_groups: [{arn}]")),
    );
    h.settle_over("web", EVERY, WITHIN).await;
    aws_sdk_elasticloadbalancingv2::Client::new(&h.sdk)
        .delete_target_group()
        .target_group_arn(&arn)
        .send()
        .await
        .unwrap();
    let two = h.register_image("web-2").await;
    h.publish(&Intent::ImageReady {
        fleet: web(),
        image: two.clone(),
    })
    .await;
    h.drain().await;
    for _ in 0..4 {
        h.dispatcher.tick().await.unwrap();
    }
    let f = h.fleet("web").await;
    assert_eq!(f.lb_missing.len(), 1);
    assert!(
        f.rollout.as_ref().unwrap().waiting.is_some(),
        "{:?}",
        f.rollout
    );
    assert_eq!(
        f.live_instances()
            .filter(|i| i.image == one && i.disposal.is_none())
            .count(),
        2,
        "no instance that may serve is taken away"
    );
    let missing = h
        .notifications(&notes)
        .await
        .into_iter()
        .filter(|(dt, _)| dt == "TargetGroupMissing")
        .count();
    assert_eq!(missing, 1);
    let status = h.phoenix_ok(&["status", "web"]);
    assert!(
        status.contains("target group web does not exist"),
        "{status}"
    );
    // Out of the fleet file, the group no longer holds anything: the rollout goes on.
    h.apply(&file.image(&two));
    let f = h.settle_over("web", EVERY, WITHIN).await;
    assert!(f.lb_missing.is_empty());
    assert!(f.live_instances().all(|i| i.image == two));
}
