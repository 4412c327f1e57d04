//! The Auto Scaling port: what taking over a group needs of the Auto Scaling API, in its own
//! terms. `phoenix_aws` sends it through the SDK; the simulator answers it from memory.

use crate::error::Result;
use std::collections::BTreeMap;
use std::future::Future;

/// A group as `DescribeAutoScalingGroups` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub instances: Vec<Member>,
    /// Target group ARNs attached to it.
    pub target_groups: Vec<String>,
    /// Classic load balancers attached to it.
    pub load_balancers: Vec<String>,
    /// Names of its suspended processes.
    pub suspended: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

/// One instance of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// `InService`, `Pending`, `Terminating`, `Standby`, ... as Auto Scaling names them.
    pub lifecycle: String,
}

/// The processes a takeover suspends: every one, so the group neither launches, terminates,
/// replaces, rebalances nor adds to its load balancers while phoenix empties it.
pub const PROCESSES: [&str; 9] = [
    "Launch",
    "Terminate",
    "AddToLoadBalancer",
    "AlarmNotification",
    "AZRebalance",
    "HealthCheck",
    "InstanceRefresh",
    "ReplaceUnhealthy",
    "ScheduledActions",
];

/// The Auto Scaling port.
pub trait AutoScaling: Send + Sync {
    /// `DescribeAutoScalingGroups` of one group, or `None` if it does not exist.
    fn describe_group(&self, name: &str) -> impl Future<Output = Result<Option<Group>>> + Send;
    /// Whether an instance refresh of the group is under way (`DescribeInstanceRefreshes`:
    /// pending, in progress, cancelling or rolling back).
    fn refresh_active(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;
    /// `CreateOrUpdateTags` of one tag on the group.
    fn tag_group(
        &self,
        name: &str,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// `SuspendProcesses` of `PROCESSES`.
    fn suspend_processes(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// `UpdateAutoScalingGroup` of its minimum size alone.
    fn set_min_size(&self, name: &str, min: u32) -> impl Future<Output = Result<()>> + Send;
    /// `DetachInstances` (at most `MAX_DETACH_IDS`), the desired capacity decremented by as
    /// many; its request id. Instances no longer in the group fail the call with
    /// `Error::NotFound`.
    fn detach_instances(
        &self,
        name: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Option<String>>> + Send;
}
