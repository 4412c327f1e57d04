//! The traffic harness on the emulator: a load balancer that drains fails no request when an
//! instance goes, and the same change without draining, or without a load balancer, does fail
//! some — so a "0 failed requests" measured with it means something.
//!
//! EC2 and ELBv2 are driven directly with SDK clients; the ELBv2 calls that change or read target
//! health go through the harness's proxy, as a controller's would.

#![allow(clippy::unwrap_used)]

use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag as Ec2Tag, TagSpecification};
use aws_sdk_elasticloadbalancingv2::types::{
    ProtocolEnum, TargetDescription, TargetGroupAttribute, TargetHealthStateEnum, TargetTypeEnum,
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
    s.terminate(&victim).await;
    let backends = &s.world.backends;
    wait_for("backend killed", Duration::from_secs(5), || {
        backends.addr(&victim).is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let report = s.world.report().await.unwrap();
    println!("{report}");
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
    s.terminate(&victim).await;
    let backends = &s.world.backends;
    wait_for("backend killed", Duration::from_secs(5), || {
        backends.addr(&victim).is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let report = s.world.report().await.unwrap();
    println!("{report}");
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
    s.terminate(&victim).await;
    let backends = &s.world.backends;
    wait_for("backend killed", Duration::from_secs(5), || {
        backends.addr(&victim).is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let report = s.world.report().await.unwrap();
    println!("{report}");
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
    // Generous: the answer below comes within milliseconds of the registration.
    s.world.proxy.set_initial_for(Duration::from_secs(2));
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
        Duration::from_secs(10),
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
