//! The Elastic Load Balancing (v2) port: the part of the target-group API phoenix uses, in its
//! own terms. `phoenix_aws` sends it through the SDK; the simulator answers it from in-memory
//! target groups that drain over time. What phoenix asks of it and why is `crate::targets`'s.

use crate::error::Result;
use phoenix_core::model::TargetState;
use std::collections::BTreeMap;
use std::future::Future;

/// Targets per `RegisterTargets`/`DeregisterTargets` call (AWS's limit per call is far higher;
/// batches keep one failure small).
pub const MAX_TARGETS_PER_CALL: usize = 100;

/// A target group as `DescribeTargetGroups` and `DescribeTargetGroupAttributes` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetGroup {
    pub arn: String,
    /// `instance`, `ip`, `lambda` or `alb`.
    pub target_type: String,
    pub vpc: Option<String>,
    pub port: Option<u16>,
    /// `deregistration_delay.timeout_seconds` (AWS's default 300).
    pub deregistration_delay: u64,
}

/// One target of a group and its state, as `DescribeTargetHealth` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHealth {
    pub id: String,
    pub state: TargetState,
}

/// An instance target: the instance and the port it serves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub port: Option<u16>,
}

/// The ELBv2 port. Calls about a group that does not exist fail with `Error::NotFound`.
pub trait Elb: Send + Sync {
    /// `DescribeTargetGroups` and `DescribeTargetGroupAttributes` of one group, or `None` if it
    /// does not exist.
    fn describe_target_group(
        &self,
        arn: &str,
    ) -> impl Future<Output = Result<Option<TargetGroup>>> + Send;
    /// `DescribeTags` of one group: its tags.
    fn target_group_tags(
        &self,
        arn: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, String>>> + Send;
    /// `DescribeTargetHealth` of every target the group lists (registered or draining).
    fn target_health(&self, arn: &str) -> impl Future<Output = Result<Vec<TargetHealth>>> + Send;
    /// `RegisterTargets`; its request id.
    fn register_targets(
        &self,
        arn: &str,
        targets: &[Target],
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// `DeregisterTargets`; its request id. Targets not registered are no error.
    fn deregister_targets(
        &self,
        arn: &str,
        targets: &[Target],
    ) -> impl Future<Output = Result<Option<String>>> + Send;
}
