//! phoenix on AWS: the adapters behind the protocol's ports — DynamoDB (`table`), EC2 (`ec2`),
//! Elastic Load Balancing (`elb`), Auto Scaling (`autoscaling`), other accounts and regions through STS (`reach`), EventBridge (`bus`), Image Builder (`images`), the real clock (`time`) — with AWS's errors
//! classified at the edge (`error`), and the Lambda edge (`lambda`, `metrics`, `telemetry`).
//! What phoenix does with them is `phoenix_protocol`'s.

pub mod autoscaling;
pub mod bus;
pub mod config;
pub mod ec2;
pub mod elb;
pub mod error;
pub mod images;
pub mod lambda;
pub mod metrics;
pub mod reach;
pub mod table;
pub mod telemetry;
pub mod time;

pub use error::{Error, Result};
pub use phoenix_protocol::{
    controller, store, Apis, Controller, Deadline, FleetOutcome, FleetReport, Intake, Ports,
    Report, DEADLINE_RESERVE,
};

use autoscaling::AutoScalingClient;
use bus::EventBridgeBus;
use config::{load_sdk_config, Settings};
use ec2::Ec2Client;
use elb::ElbClient;
use reach::AwsReach;
use table::DynamoTable;
use time::SystemTime;

/// The production adapters.
pub struct Aws;

impl Ports for Aws {
    type Table = DynamoTable;
    type Ec2 = Ec2Client;
    type Elb = ElbClient;
    type AutoScaling = AutoScalingClient;
    type Reach = AwsReach;
    type Bus = EventBridgeBus;
    type Time = SystemTime;
}

/// The production controller.
pub type AwsController = Controller<Aws>;
/// phoenix's state in DynamoDB.
pub type DynamoStore = store::Store<DynamoTable>;

/// The store on this DynamoDB table.
pub fn dynamo_store(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> DynamoStore {
    DynamoStore::new(DynamoTable::new(client, table))
}

/// The production controller on these clients' configuration, with `Settings`'s table and bus.
pub fn controller(
    sdk: &aws_config::SdkConfig,
    settings: &Settings,
    intake: Intake,
) -> AwsController {
    Controller::new(
        DynamoTable::new(aws_sdk_dynamodb::Client::new(sdk), &settings.table),
        Apis::new(
            Ec2Client::new(aws_sdk_ec2::Client::new(sdk)),
            ElbClient::new(aws_sdk_elasticloadbalancingv2::Client::new(sdk)),
            AutoScalingClient::new(aws_sdk_autoscaling::Client::new(sdk)),
        ),
        AwsReach::new(sdk),
        EventBridgeBus::new(aws_sdk_eventbridge::Client::new(sdk), &settings.bus),
        SystemTime::new(),
        intake,
    )
}

/// Builds the SDK clients once (cold start), from the standard AWS environment and `Settings`.
pub async fn from_env() -> AwsController {
    let sdk = load_sdk_config().await;
    let intake = images::intake_from_env(&sdk);
    controller(&sdk, &Settings::from_env(), intake)
}
