//! Target groups on the emulator for a fleet, and phoenix running behind them with traffic: the
//! world the load-balancing tests, the traffic report of `make bench` and the demo share.
//!
//! A group is made as a user would make it for phoenix: type `instance`, in the VPC of the
//! fleet's subnets, tagged `phoenix:fleets`, with a short deregistration delay so a drain fits in
//! a test. The controller, the CLI and the dispatcher reach the emulator through the traffic
//! harness's API proxy, so the target states they read are the ones AWS would report while
//! requests finish (`traffic::elb_api`).

use crate::traffic::{LoadConfig, Mode, Tag, TrafficReport, TrafficWorld};
use crate::{Emulator, FleetFile, Harness};
use anyhow::{Context, Result};
use aws_config::SdkConfig;
use aws_sdk_ec2::types::Filter;
use aws_sdk_elasticloadbalancingv2::types::{
    ProtocolEnum, Tag as ElbTag, TargetGroupAttribute, TargetTypeEnum,
};
use phoenix_core::model::{TAG_FLEET, TAG_FLEETS};
use std::time::Duration;

/// The default VPC and two of its subnets.
pub struct Network {
    pub vpc: String,
    pub subnets: Vec<String>,
}

pub async fn default_network(sdk: &SdkConfig) -> Result<Network> {
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let vpc = ec2
        .describe_vpcs()
        .filters(Filter::builder().name("is-default").values("true").build())
        .send()
        .await?
        .vpcs()
        .first()
        .and_then(|v| v.vpc_id())
        .context("the emulator has no default VPC")?
        .to_string();
    let mut subnets: Vec<String> = ec2
        .describe_subnets()
        .filters(Filter::builder().name("vpc-id").values(&vpc).build())
        .send()
        .await?
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id().map(str::to_string))
        .collect();
    subnets.sort();
    subnets.truncate(2);
    Ok(Network { vpc, subnets })
}

/// Creates a target group `name` of type `target_type` in `vpc`, tagged for phoenix when
/// `tagged`, draining for `delay` seconds. Its ARN.
pub async fn create_group(
    sdk: &SdkConfig,
    name: &str,
    vpc: &str,
    target_type: TargetTypeEnum,
    tagged: bool,
    delay: u32,
) -> Result<String> {
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(sdk);
    let mut req = elb
        .create_target_group()
        .name(name)
        .protocol(ProtocolEnum::Http)
        .port(80)
        .vpc_id(vpc)
        .target_type(target_type);
    if tagged {
        req = req.tags(ElbTag::builder().key(TAG_FLEETS).value("web").build());
    }
    let arn = req
        .send()
        .await?
        .target_groups()
        .first()
        .and_then(|g| g.target_group_arn())
        .context("CreateTargetGroup returned no group")?
        .to_string();
    elb.modify_target_group_attributes()
        .target_group_arn(&arn)
        .attributes(
            TargetGroupAttribute::builder()
                .key("deregistration_delay.timeout_seconds")
                .value(delay.to_string())
                .build(),
        )
        .send()
        .await?;
    Ok(arn)
}

/// phoenix behind a target group with traffic: the emulator, the traffic harness in front of it,
/// a harness whose controller goes through the harness's API proxy, and a fleet file naming the
/// group (or, for the control, none: the router then sends to every running instance).
pub struct Served {
    pub h: Harness,
    pub world: TrafficWorld,
    pub group: String,
    pub network: Network,
}

impl Served {
    /// `with_group`: the fleet serves behind the group (else the control, without one).
    pub async fn start(fleet: &str, with_group: bool, delay: u32) -> Result<Served> {
        Self::start_serving(fleet, with_group, delay, Tag::new(TAG_FLEET, fleet)).await
    }

    /// `start`, with a backend on every instance carrying `tag` (instances that serve before
    /// phoenix takes them: an Auto Scaling group's).
    pub async fn start_serving(
        fleet: &str,
        with_group: bool,
        delay: u32,
        tag: Tag,
    ) -> Result<Served> {
        let emulator = Emulator::start()?;
        let direct = phoenix_aws::config::emulator_sdk_config(&emulator.endpoint).await;
        let network = default_network(&direct).await?;
        let group = create_group(
            &direct,
            &format!("{fleet}-tg"),
            &network.vpc,
            TargetTypeEnum::Instance,
            true,
            delay,
        )
        .await?;
        let mode = if with_group {
            Mode::TargetGroups(vec![group.clone()])
        } else {
            Mode::Ec2Running {
                tag: Some(tag.clone()),
            }
        };
        let world = TrafficWorld::start(&emulator.endpoint, mode, Some(tag)).await?;
        let endpoint = world.proxy.endpoint();
        let h = Harness::start_behind(emulator, &endpoint).await?;
        Ok(Served {
            h,
            world,
            group,
            network,
        })
    }

    /// A fleet file in the network's subnets, behind the group when `with_group`.
    pub fn fleet_file(&self, file: FleetFile, with_group: bool) -> FleetFile {
        let file = file.line(&format!("subnets: [{}]", self.network.subnets.join(", ")));
        if with_group {
            file.line(&format!(
                "load_balancing:\n  target_groups: [{}]",
                self.group
            ))
        } else {
            file
        }
    }

    /// Waits until `n` instances take requests, then starts the load.
    pub async fn start_traffic(&mut self, n: usize, load: LoadConfig) -> Result<()> {
        self.world.wait_routable(n, Duration::from_secs(30)).await?;
        self.world.start_load(load);
        Ok(())
    }

    /// Stops the load: what it sent, what failed, and how long requests took.
    pub async fn report(&mut self) -> Result<TrafficReport> {
        self.world.report().await
    }
}
