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

/// A rollout of 2 instances (two waves) under steady traffic with slow requests mixed in: the
/// report, and the fleet's history. (`make bench-traffic` rolls 6.)
async fn rollout_under_traffic(
    with_group: bool,
) -> (phoenix_tests::traffic::TrafficReport, Served) {
    let mut s = Served::start("web", with_group, 2).await.unwrap();
    let one = s.h.register_image("web-1").await;
    let file = s.fleet_file(FleetFile::new("web", &one, 2), with_group);
    s.h.apply(&file);
    s.h.settle_over("web", EVERY, WITHIN).await;
    s.start_traffic(2, LoadConfig::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let two = s.h.register_image("web-2").await;
    s.h.publish(&Intent::ImageReady {
        fleet: web(),
        image: two.clone(),
    })
    .await;
    let f = s.h.settle_over("web", EVERY, WITHIN).await;
    assert!(f.live_instances().all(|i| i.image == two));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = s.report().await.unwrap();
    (report, s)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_behind_a_target_group_fails_no_request() {
    let (report, s) = rollout_under_traffic(true).await;
    println!("behind a target group: {report}");
    assert!(report.sent > 50, "{report}");
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
    assert_eq!(drained.len(), 2, "{drained:?}");
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

/// The traffic harness itself: a load balancer that drains fails no request when an instance goes,
/// and the same change without draining, or without a load balancer, does fail some — so a "0
/// failed requests" measured with it means something. EC2 and ELBv2 are driven directly with SDK
/// clients; the ELBv2 calls that change or read target health go through the harness's proxy, as
/// a controller's would. (In this file's binary: one test binary fewer to link and run.)
mod harness {
    #![allow(clippy::unwrap_used)]

    use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag as Ec2Tag, TagSpecification};
    use aws_sdk_elasticloadbalancingv2::types::{
        ProtocolEnum, TargetDescription, TargetGroupAttribute, TargetHealthStateEnum,
        TargetTypeEnum,
    };
    use phoenix_aws::config::emulator_sdk_config;
    use phoenix_tests::traffic::{LoadConfig, Mode, Tag, TrafficWorld};
    use phoenix_tests::Emulator;
    use std::time::{Duration, Instant};

    const FLEET_TAG: (&str, &str) = ("phoenix:fleet", "web");

    /// An emulator with a target group (deregistration delay 3 s) and tagged running instances, the
    /// harness in front of it. Fields drop in order: the harness before the emulator.
    struct Stage {
        world: TrafficWorld,
        /// Straight to the emulator.
        ec2: aws_sdk_ec2::Client,
        /// Through the harness's proxy.
        elb: aws_sdk_elasticloadbalancingv2::Client,
        group: String,
        instances: Vec<String>,
        image: String,
        _emulator: Emulator,
    }

    enum Routing {
        TargetGroup,
        Ec2Running,
    }

    impl Stage {
        /// `n` tagged instances, registered in the group; the router sees them all before this returns.
        async fn start(routing: Routing, n: i32) -> Stage {
            let emulator = Emulator::start().unwrap();
            let sdk = emulator_sdk_config(&emulator.endpoint).await;
            let ec2 = aws_sdk_ec2::Client::new(&sdk);
            let elb_direct = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
            let image = phoenix_local::register_image(&sdk, "web")
                .await
                .unwrap()
                .to_string();
            let vpc = ec2
                .describe_vpcs()
                .filters(Filter::builder().name("is-default").values("true").build())
                .send()
                .await
                .unwrap()
                .vpcs()[0]
                .vpc_id()
                .unwrap()
                .to_string();
            let group = elb_direct
                .create_target_group()
                .name("web")
                .protocol(ProtocolEnum::Http)
                .port(80)
                .vpc_id(&vpc)
                .target_type(TargetTypeEnum::Instance)
                .send()
                .await
                .unwrap()
                .target_groups()[0]
                .target_group_arn()
                .unwrap()
                .to_string();
            elb_direct
                .modify_target_group_attributes()
                .target_group_arn(&group)
                .attributes(
                    TargetGroupAttribute::builder()
                        .key("deregistration_delay.timeout_seconds")
                        .value("3")
                        .build(),
                )
                .send()
                .await
                .unwrap();
            let instances = launch(&ec2, &image, n, true).await;
            let tag = Some(Tag::new(FLEET_TAG.0, FLEET_TAG.1));
            let mode = match routing {
                Routing::TargetGroup => Mode::TargetGroups(vec![group.clone()]),
                Routing::Ec2Running => Mode::Ec2Running { tag: tag.clone() },
            };
            let world = TrafficWorld::start(&emulator.endpoint, mode, tag)
                .await
                .unwrap();
            let elb = aws_sdk_elasticloadbalancingv2::Client::new(
                &emulator_sdk_config(&world.proxy.endpoint()).await,
            );
            let stage = Stage {
                world,
                ec2,
                elb,
                group,
                instances,
                image,
                _emulator: emulator,
            };
            for id in &stage.instances {
                stage.register(id).await.unwrap();
            }
            stage
                .world
                .wait_routable(n as usize, Duration::from_secs(10))
                .await
                .unwrap();
            stage
        }

        async fn register(&self, id: &str) -> Result<(), aws_sdk_elasticloadbalancingv2::Error> {
            self.elb
                .register_targets()
                .target_group_arn(&self.group)
                .targets(TargetDescription::builder().id(id).build())
                .send()
                .await?;
            Ok(())
        }

        async fn deregister(&self, id: &str) {
            self.elb
                .deregister_targets()
                .target_group_arn(&self.group)
                .targets(TargetDescription::builder().id(id).build())
                .send()
                .await
                .unwrap();
        }

        async fn terminate(&self, id: &str) {
            self.ec2
                .terminate_instances()
                .instance_ids(id)
                .send()
                .await
                .unwrap();
        }

        /// Terminates `id` in EC2, waits until its backend is killed, lets the load run for
        /// `settle`, and reports the traffic so far.
        async fn terminate_and_report(
            &mut self,
            id: &str,
            settle: Duration,
        ) -> phoenix_tests::traffic::TrafficReport {
            self.terminate(id).await;
            let backends = &self.world.backends;
            wait_for("backend killed", Duration::from_secs(5), || {
                backends.addr(id).is_none()
            })
            .await;
            tokio::time::sleep(settle).await;
            let report = self.world.report().await.unwrap();
            println!("{report}");
            report
        }

        /// (state, reason) of one target, asked about by id.
        async fn health(&self, id: &str) -> (TargetHealthStateEnum, Option<String>) {
            let out = self
                .elb
                .describe_target_health()
                .target_group_arn(&self.group)
                .targets(TargetDescription::builder().id(id).build())
                .send()
                .await
                .unwrap();
            let descriptions = out.target_health_descriptions();
            assert_eq!(descriptions.len(), 1, "{descriptions:?}");
            let health = descriptions[0].target_health().unwrap();
            (
                health.state().unwrap().clone(),
                health.reason().map(|r| r.as_str().to_string()),
            )
        }

        /// (id, state) of every target of the group, asked about without ids.
        async fn all_health(&self) -> Vec<(String, TargetHealthStateEnum)> {
            let out = self
                .elb
                .describe_target_health()
                .target_group_arn(&self.group)
                .send()
                .await
                .unwrap();
            out.target_health_descriptions()
                .iter()
                .map(|d| {
                    (
                        d.target().unwrap().id().unwrap().to_string(),
                        d.target_health().unwrap().state().unwrap().clone(),
                    )
                })
                .collect()
        }

        /// Waits until a slow request on `id` still has more than a second to run.
        async fn wait_for_slow_request(&self, id: &str) {
            let backends = &self.world.backends;
            wait_for("a slow request in flight", Duration::from_secs(15), || {
                backends.longest_remaining(id) > Duration::from_secs(1)
            })
            .await;
        }
    }

    async fn launch(ec2: &aws_sdk_ec2::Client, image: &str, n: i32, tagged: bool) -> Vec<String> {
        let mut req = ec2
            .run_instances()
            .image_id(image)
            .min_count(n)
            .max_count(n)
            .instance_type(InstanceType::T3Micro);
        if tagged {
            req = req.tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(
                        Ec2Tag::builder()
                            .key(FLEET_TAG.0)
                            .value(FLEET_TAG.1)
                            .build(),
                    )
                    .build(),
            );
        }
        req.send()
            .await
            .unwrap()
            .instances()
            .iter()
            .map(|i| i.instance_id().unwrap().to_string())
            .collect()
    }

    /// Polls `done` every 10 ms until it holds, failing the test after `within`.
    async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "no {what} within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn draining_then_terminate_fails_nothing() {
        let mut s = Stage::start(Routing::TargetGroup, 3).await;
        s.world.start_load(LoadConfig::default());
        let victim = s.instances[0].clone();
        s.wait_for_slow_request(&victim).await;

        s.deregister(&victim).await;
        // A slow request is still in flight on it: draining, whether asked about it or about all.
        let (state, reason) = s.health(&victim).await;
        assert_eq!(state, TargetHealthStateEnum::Draining);
        assert_eq!(reason.as_deref(), Some("Target.DeregistrationInProgress"));
        assert!(
            s.world.router.in_flight().count(&victim) > 0,
            "draining was seen while a request was in flight"
        );
        let all = s.all_health().await;
        assert!(
            all.contains(&(victim.clone(), TargetHealthStateEnum::Draining)),
            "{all:?}"
        );

        // Draining ends when the router has stopped sending to it and its requests are answered,
        // well before the 3 s delay.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (state, reason) = loop {
            let (state, reason) = s.health(&victim).await;
            if state != TargetHealthStateEnum::Draining {
                break (state, reason);
            }
            assert!(Instant::now() < deadline, "{victim} still draining");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(state, TargetHealthStateEnum::Unused);
        assert_eq!(reason.as_deref(), Some("Target.NotRegistered"));
        assert_eq!(s.world.router.in_flight().count(&victim), 0);
        assert!(!s.world.router.in_flight().in_rotation(&victim));

        let routed = s.world.router.routed(&victim);
        let report = s
            .terminate_and_report(&victim, Duration::from_secs(1))
            .await;
        assert_eq!(report.failed, 0, "{report}");
        assert!(report.sent >= 80, "{report}");
        assert_eq!(s.world.backends.killed(), 1);
        assert_eq!(s.world.backends.killed_busy(), 0);
        assert_eq!(s.world.router.routed(&victim), routed);
        assert_eq!(s.world.proxy.calls("DeregisterTargets"), 1);
        assert!(s.world.proxy.calls("DescribeTargetHealth") > 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminate_without_draining_fails_requests() {
        let mut s = Stage::start(Routing::TargetGroup, 3).await;
        s.world.start_load(LoadConfig::default());
        let victim = s.instances[0].clone();
        s.wait_for_slow_request(&victim).await;

        // Still registered and healthy: the emulator drops it from the group's targets, the backend
        // dies with the slow request on it.
        let report = s
            .terminate_and_report(&victim, Duration::from_millis(500))
            .await;
        assert!(report.failed > 0, "{report}");
        assert!(report.failures_by_kind.contains_key("502"), "{report}");
        assert_eq!(s.world.backends.killed_busy(), 1);
        assert!(!s.world.router.in_flight().in_rotation(&victim));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_load_balancer_terminate_fails_requests() {
        let mut s = Stage::start(Routing::Ec2Running, 3).await;
        // An instance without the fleet's tag gets no backend and no traffic.
        let stranger = launch(&s.ec2, &s.image, 1, false).await.remove(0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(s.world.backends.addr(&stranger).is_none());
        assert_eq!(s.world.router.routable().len(), 3);

        s.world.start_load(LoadConfig::default());
        let victim = s.instances[0].clone();
        s.wait_for_slow_request(&victim).await;
        let report = s
            .terminate_and_report(&victim, Duration::from_millis(500))
            .await;
        assert!(report.failed > 0, "{report}");
        assert!(s.world.backends.killed_busy() >= 1);
        assert_eq!(s.world.router.routed(&stranger), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unhealthy_target_gets_no_new_requests() {
        let mut s = Stage::start(Routing::TargetGroup, 3).await;
        s.world.start_load(LoadConfig::default());
        let victim = s.instances[0].clone();
        let others = &s.instances[1..];
        let router = &s.world.router;
        wait_for("requests to the victim", Duration::from_secs(10), || {
            router.routed(&victim) > 0
        })
        .await;

        s.world.proxy.set_unhealthy(&victim, true);
        let (state, reason) = s.health(&victim).await;
        assert_eq!(state, TargetHealthStateEnum::Unhealthy);
        assert_eq!(reason.as_deref(), Some("Target.ResponseCodeMismatch"));
        let router = &s.world.router;
        wait_for("the victim out of rotation", Duration::from_secs(5), || {
            !router.in_flight().in_rotation(&victim) && router.in_flight().count(&victim) == 0
        })
        .await;
        let to_victim = router.routed(&victim);
        let to_others: u64 = others.iter().map(|i| router.routed(i)).sum();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(router.routed(&victim), to_victim);
        assert!(others.iter().map(|i| router.routed(i)).sum::<u64>() > to_others + 10);

        s.world.proxy.set_unhealthy(&victim, false);
        assert_eq!(s.health(&victim).await.0, TargetHealthStateEnum::Healthy);
        let router = &s.world.router;
        wait_for(
            "requests to the victim again",
            Duration::from_secs(5),
            || router.routed(&victim) > to_victim,
        )
        .await;

        let report = s.world.report().await.unwrap();
        println!("{report}");
        assert_eq!(report.failed, 0, "{report}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_target_is_initial_then_healthy() {
        let s = Stage::start(Routing::TargetGroup, 2).await;
        // Generous: the answer below comes within milliseconds of the registration, or seconds
        // on a machine busy with other tests.
        s.world.proxy.set_initial_for(Duration::from_secs(6));
        let new = launch(&s.ec2, &s.image, 1, true).await.remove(0);
        let backends = &s.world.backends;
        wait_for(
            "a backend for the new instance",
            Duration::from_secs(5),
            || backends.addr(&new).is_some(),
        )
        .await;

        s.register(&new).await.unwrap();
        let (state, reason) = s.health(&new).await;
        assert_eq!(state, TargetHealthStateEnum::Initial);
        assert_eq!(reason.as_deref(), Some("Elb.RegistrationInProgress"));
        assert!(!s.world.router.in_flight().in_rotation(&new));
        let router = &s.world.router;
        wait_for(
            "the new instance in rotation",
            Duration::from_secs(20),
            || router.in_flight().in_rotation(&new),
        )
        .await;
        assert_eq!(s.health(&new).await.0, TargetHealthStateEnum::Healthy);

        // The emulator refuses to register an instance that is not running.
        s.ec2
            .stop_instances()
            .instance_ids(&new)
            .send()
            .await
            .unwrap();
        let refused = s.register(&new).await.unwrap_err();
        assert!(
            format!("{refused:?}").contains("InvalidTarget"),
            "{refused:?}"
        );
        assert_eq!(s.world.proxy.calls("RegisterTargets"), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_proxy_forwards_every_service() {
        let emulator = Emulator::start().unwrap();
        let world = TrafficWorld::start(&emulator.endpoint, Mode::Ec2Running { tag: None }, None)
            .await
            .unwrap();
        // DynamoDB, EventBridge and SQS (JSON protocols), EC2 (query protocol) through the proxy.
        let via_proxy = emulator_sdk_config(&world.proxy.endpoint()).await;
        let settings = phoenix_aws::config::Settings {
            table: "phoenix".into(),
            bus: "phoenix".into(),
        };
        phoenix_local::provision(&via_proxy, &settings)
            .await
            .unwrap();
        let image = phoenix_local::register_image(&via_proxy, "web")
            .await
            .unwrap();

        let direct = emulator_sdk_config(&emulator.endpoint).await;
        let tables = aws_sdk_dynamodb::Client::new(&direct)
            .list_tables()
            .send()
            .await
            .unwrap();
        assert_eq!(tables.table_names(), ["phoenix"]);
        let images = aws_sdk_ec2::Client::new(&direct)
            .describe_images()
            .image_ids(image.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(images.images().len(), 1);
        assert!(world.proxy.all_calls().is_empty(), "no ELBv2 call was made");
        // The Host header reaches the emulator as sent: queue URLs name the proxy.
        let queue = aws_sdk_sqs::Client::new(&via_proxy)
            .create_queue()
            .queue_name("probe")
            .send()
            .await
            .unwrap();
        let url = queue.queue_url().unwrap();
        assert!(
            url.starts_with(&world.proxy.endpoint()),
            "{url} names {}",
            world.proxy.endpoint()
        );
    }
}
