//! The EC2 port: the part of the EC2 API phoenix uses, in EC2's own terms. `phoenix_aws` sends it
//! through the SDK; the simulator answers it from an in-memory EC2 with lag, faults and throttling.
//! What phoenix asks of EC2 and why — tags on create, the token lookup before a launch is made
//! again, re-validation before a termination — is `crate::compute`'s, written once for both.

use crate::error::Result;
use phoenix_core::images::ImageFacts;
use phoenix_core::model::{LaunchTemplateRef, Lifecycle, Timestamp};
use std::collections::BTreeMap;
use std::future::Future;

/// An instance as `DescribeInstances` or `RunInstances` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Instance {
    pub id: String,
    pub image: Option<String>,
    pub state: Lifecycle,
    pub launched_at: Option<Timestamp>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub subnet: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// An instance's two EC2 status checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    pub id: String,
    /// Both the system and the instance check report `ok`.
    pub ok: bool,
    /// The system check reports `impaired`: the host (hardware, network, power) is at fault, not
    /// what runs on it.
    pub system_impaired: bool,
}

/// Which instances `DescribeInstances` lists; never terminated ones (they linger for an hour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instances {
    /// Carrying the tag `key` = `value`.
    Tagged { key: String, value: String },
    /// These ids (at most `MAX_FILTER_VALUES`) that exist.
    Ids(Vec<String>),
}

/// Values per `DescribeInstances` filter (AWS allows 200).
pub const MAX_FILTER_VALUES: usize = 200;
/// Ids per `DescribeInstanceStatus` call.
pub const MAX_STATUS_IDS: usize = 100;
/// Instances per page of `DescribeInstances` (its `MaxResults` at most): a listing of more took
/// one request per page.
pub const DESCRIBE_PAGE: usize = 1000;
/// Ids per `TerminateInstances` call: AWS accepts 1000; Karpenter uses batches of 500, and so do
/// we.
pub const MAX_TERMINATE_IDS: usize = 500;

/// A subnet as `DescribeSubnets` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub vpc: String,
    pub zone: Option<String>,
}

/// A `RunInstances` request: `count` instances, all or nothing (`MinCount = MaxCount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInstances {
    pub image: String,
    pub count: u32,
    /// EC2's idempotency token.
    pub client_token: String,
    pub instance_type: Option<String>,
    pub subnet: Option<String>,
    pub security_groups: Vec<String>,
    pub key_name: Option<String>,
    /// A name or an ARN.
    pub instance_profile: Option<String>,
    /// At the version it resolved to, when it floats.
    pub launch_template: Option<LaunchTemplateRef>,
    /// As text: the adapter encodes it as EC2 wants.
    pub user_data: Option<String>,
    /// Applied at creation to the instances and their volumes.
    pub tags: BTreeMap<String, String>,
    /// Spot (one-time, terminated on interruption) rather than On-Demand.
    pub spot: bool,
}

/// What `RunInstances` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub instances: Vec<Ec2Instance>,
    pub request_id: Option<String>,
}

/// A launch template's versions, as `DescribeLaunchTemplates` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateVersions {
    pub id: String,
    pub default: u64,
    pub latest: u64,
}

impl TemplateVersions {
    /// The version a reference launches: the one it names, else `$Latest`'s, else `$Default`'s
    /// (EC2's own default when none is named).
    pub fn resolve(&self, r: &LaunchTemplateRef) -> String {
        match r.version.as_deref() {
            Some("$Latest") => self.latest.to_string(),
            Some("$Default") | None => self.default.to_string(),
            Some(v) => v.to_string(),
        }
    }
}

/// The EC2 port.
pub trait Ec2: Send + Sync {
    /// `DescribeInstances`, every page.
    fn describe_instances(
        &self,
        which: &Instances,
    ) -> impl Future<Output = Result<Vec<Ec2Instance>>> + Send;
    /// `DescribeInstanceStatus` of up to `MAX_STATUS_IDS` ids: the status checks of those EC2
    /// reports on.
    fn instance_status(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<InstanceStatus>>> + Send;
    /// `RunInstances`.
    fn run_instances(&self, request: &RunInstances) -> impl Future<Output = Result<Ran>> + Send;
    /// `TerminateInstances` of up to `MAX_TERMINATE_IDS` ids; its request id. Ids that do not
    /// exist fail the call with `Error::NotFound`.
    fn terminate_instances(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// `DescribeLaunchTemplates` of the template a reference names (by id or name): its default
    /// and latest versions, or `None` if it does not exist.
    fn describe_launch_template(
        &self,
        template: &LaunchTemplateRef,
    ) -> impl Future<Output = Result<Option<TemplateVersions>>> + Send;
    /// `DescribeSubnets` of these ids: the VPC and zone of each that exists.
    fn describe_subnets(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, Subnet>>> + Send;
    /// `CreateTags`: these tags on each of these instances (at most `MAX_FILTER_VALUES`). Ids
    /// that do not exist fail the call with `Error::NotFound`.
    fn create_tags(
        &self,
        ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// `DeleteTags`: these keys from each of these instances; a tag already gone is no error.
    fn delete_tags(
        &self,
        ids: &[String],
        keys: &[String],
    ) -> impl Future<Output = Result<()>> + Send;
    /// `DescribeImages` of one AMI: what EC2 reports about it (name, owner, tags), or `None` if
    /// this account cannot see it.
    fn describe_image(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<ImageFacts>>> + Send;
}
