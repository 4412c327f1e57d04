//! The fault proxy's capacity pools, as the EC2 SDK client sees them: a launch into an
//! (instance type, availability zone) pool without capacity is refused with EC2's
//! `InsufficientInstanceCapacity` and never reaches the emulator; other types in that zone and
//! that type in other zones launch; an empty Spot pool refuses Spot launches only.

#![allow(clippy::unwrap_used)]

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    Filter, InstanceLifecycleType, InstanceMarketOptionsRequest, InstanceType, MarketType,
    Placement,
};
use phoenix_aws::Error;
use phoenix_tests::faults::FaultProxy;
use phoenix_tests::Emulator;
use std::collections::BTreeMap;
use std::time::Duration;

const REFUSED: &str = "InsufficientInstanceCapacity";

/// An EC2 client to `endpoint` making `attempts` attempts per call, with a short backoff.
async fn ec2(endpoint: &str, attempts: u32) -> aws_sdk_ec2::Client {
    let creds = aws_sdk_ec2::config::Credentials::new("test", "test", None, None, "t");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_initial_backoff(Duration::from_millis(10)),
        )
        .load()
        .await;
    aws_sdk_ec2::Client::new(&sdk)
}

/// A VPC with one subnet in each of us-east-1a, b and c: zone to subnet id.
async fn subnets(ec2: &aws_sdk_ec2::Client) -> BTreeMap<&'static str, String> {
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc
        .unwrap()
        .vpc_id
        .unwrap();
    let mut out = BTreeMap::new();
    for (i, zone) in ["us-east-1a", "us-east-1b", "us-east-1c"]
        .into_iter()
        .enumerate()
    {
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.0.{i}.0/24"))
            .availability_zone(zone)
            .send()
            .await
            .unwrap()
            .subnet
            .unwrap()
            .subnet_id
            .unwrap();
        out.insert(zone, subnet);
    }
    out
}

/// One instance of `instance_type` into `subnet`, Spot if `spot`.
async fn launch(
    ec2: &aws_sdk_ec2::Client,
    instance_type: &str,
    subnet: &str,
    spot: bool,
) -> Result<aws_sdk_ec2::types::Instance, SdkError<RunInstancesError>> {
    let mut req = ec2
        .run_instances()
        .image_id("ami-12345678")
        .min_count(1)
        .max_count(1)
        .instance_type(InstanceType::from(instance_type))
        .subnet_id(subnet);
    if spot {
        req = req.instance_market_options(
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .build(),
        );
    }
    req.send().await.map(|out| out.instances.unwrap().remove(0))
}

fn zone(i: &aws_sdk_ec2::types::Instance) -> &str {
    i.placement().unwrap().availability_zone().unwrap()
}

/// The instances of `instance_type` the emulator holds in `zone`.
async fn held(ec2: &aws_sdk_ec2::Client, instance_type: &str, zone: &str) -> usize {
    ec2.describe_instances()
        .filters(
            Filter::builder()
                .name("instance-type")
                .values(instance_type)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("availability-zone")
                .values(zone)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .map(|r| r.instances().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_into_a_pool_without_capacity_is_refused_as_ec2_refuses_it() {
    let emulator = Emulator::start().unwrap();
    let proxy = FaultProxy::start(&emulator.endpoint, 1).await.unwrap();
    // The emulator itself, to see what reached it.
    let direct = ec2(&emulator.endpoint, 1).await;
    let ec2 = ec2(&proxy.endpoint, 1).await;
    let subnets = subnets(&ec2).await;
    let (a, b) = (&subnets["us-east-1a"], &subnets["us-east-1b"]);
    proxy.set_no_capacity(&[("m7g.large", "us-east-1a")]);

    let err = launch(&ec2, "m7g.large", a, false).await.unwrap_err();
    assert_eq!(err.code(), Some(REFUSED), "{err:?}");
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 500);
    let message = err.message().unwrap();
    assert!(
        message.contains("m7g.large") && message.contains("(us-east-1a)"),
        "{message}"
    );
    assert!(matches!(
        phoenix_aws::error::sdk_error("ec2", err),
        Error::Capacity(_)
    ));
    // The zone given as the placement, without a subnet, is refused the same.
    let err = ec2
        .run_instances()
        .image_id("ami-12345678")
        .min_count(1)
        .max_count(1)
        .instance_type(InstanceType::M7gLarge)
        .placement(Placement::builder().availability_zone("us-east-1a").build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(REFUSED), "{err:?}");
    // Neither reached the emulator.
    assert_eq!(held(&direct, "m7g.large", "us-east-1a").await, 0);

    // Another type in that zone, and that type in another zone, launch.
    let other_type = launch(&ec2, "c7g.large", a, false).await.unwrap();
    assert_eq!(zone(&other_type), "us-east-1a");
    let other_zone = launch(&ec2, "m7g.large", b, false).await.unwrap();
    assert_eq!(zone(&other_zone), "us-east-1b");
    // A Spot launch into the pool is refused too, with EC2's Spot message.
    let err = launch(&ec2, "m7g.large", a, true).await.unwrap_err();
    assert_eq!(err.code(), Some(REFUSED));
    assert!(
        err.message().unwrap().contains("no Spot capacity"),
        "{err:?}"
    );

    let stats = proxy.stats();
    assert_eq!(stats.no_capacity, 3);
    assert_eq!(
        stats.no_capacity_by_pool,
        BTreeMap::from([(("m7g.large".into(), "us-east-1a".into()), 3)])
    );
    assert_eq!(stats.faults, 0);
    let refused: Vec<String> = proxy
        .call_log()
        .into_iter()
        .filter(|c| c.starts_with("ec2:RunInstances"))
        .collect();
    assert_eq!(
        refused,
        [
            "ec2:RunInstances InsufficientInstanceCapacity",
            "ec2:RunInstances InsufficientInstanceCapacity",
            "ec2:RunInstances",
            "ec2:RunInstances",
            "ec2:RunInstances InsufficientInstanceCapacity",
        ]
    );

    // Control: capacity again, and the first launch goes through.
    proxy.clear_no_capacity();
    let launched = launch(&ec2, "m7g.large", a, false).await.unwrap();
    assert_eq!(zone(&launched), "us-east-1a");
    assert_eq!(launched.subnet_id(), Some(a.as_str()));
    assert_eq!(held(&direct, "m7g.large", "us-east-1a").await, 1);
    assert_eq!(proxy.stats().no_capacity, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_spot_pool_refuses_spot_launches_only() {
    let emulator = Emulator::start().unwrap();
    let proxy = FaultProxy::start(&emulator.endpoint, 1).await.unwrap();
    let ec2 = ec2(&proxy.endpoint, 1).await;
    let subnets = subnets(&ec2).await;
    let (a, b) = (&subnets["us-east-1a"], &subnets["us-east-1b"]);
    proxy.set_no_spot_capacity(&[("m7g.large", "us-east-1b")]);

    let err = launch(&ec2, "m7g.large", b, true).await.unwrap_err();
    assert_eq!(err.code(), Some(REFUSED), "{err:?}");
    assert_eq!(
        err.message(),
        Some("There is no Spot capacity available that matches your request.")
    );
    let on_demand = launch(&ec2, "m7g.large", b, false).await.unwrap();
    assert_eq!(zone(&on_demand), "us-east-1b");
    assert_eq!(on_demand.instance_lifecycle(), None);
    let spot = launch(&ec2, "m7g.large", a, true).await.unwrap();
    assert_eq!(zone(&spot), "us-east-1a");
    assert_eq!(
        spot.instance_lifecycle(),
        Some(&InstanceLifecycleType::Spot)
    );
    assert_eq!(proxy.stats().no_capacity, 1);

    proxy.clear_no_capacity();
    let spot = launch(&ec2, "m7g.large", b, true).await.unwrap();
    assert_eq!(zone(&spot), "us-east-1b");
}

/// EC2 answers a capacity refusal with HTTP 500, and the SDK's standard retry retries every 500:
/// a refused launch is attempted as many times as the client allows before its caller sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_retries_a_capacity_refusal_like_any_server_error() {
    let emulator = Emulator::start().unwrap();
    let proxy = FaultProxy::start(&emulator.endpoint, 1).await.unwrap();
    let ec2 = ec2(&proxy.endpoint, 4).await;
    let subnets = subnets(&ec2).await;
    proxy.set_no_capacity(&[("m7g.large", "us-east-1c")]);
    let err = launch(&ec2, "m7g.large", &subnets["us-east-1c"], false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(REFUSED), "{err:?}");
    assert_eq!(proxy.stats().no_capacity, 4);
}
