//! The Auto Scaling port on the Auto Scaling API: `phoenix_protocol::ports::autoscaling` in the
//! SDK's terms. Pure translation; what a takeover asks and why is
//! `phoenix_protocol::controller::adopt`'s and the planner's.

use crate::error::{sdk_error, Error, Result};
use aws_sdk_autoscaling::operation::RequestId;
use aws_sdk_autoscaling::types::{InstanceRefreshStatus, Tag};
use aws_sdk_autoscaling::Client;
use phoenix_protocol::ports::autoscaling::{AutoScaling, Group, Member, PROCESSES};

#[derive(Clone, Debug)]
pub struct AutoScalingClient {
    client: Client,
}

impl AutoScalingClient {
    pub fn new(client: Client) -> Self {
        AutoScalingClient { client }
    }
}

fn sdk<E, R>(e: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Error
where
    E: aws_sdk_autoscaling::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let e = sdk_error("autoscaling", e);
    // Auto Scaling says an instance is not in the group with a validation error: for a detach,
    // "already out" is what was asked.
    match e {
        Error::Permanent { message, .. } if message.contains("is not part of") => {
            Error::NotFound(message)
        }
        e => e,
    }
}

fn count(n: Option<i32>) -> u32 {
    n.unwrap_or(0).max(0) as u32
}

impl AutoScaling for AutoScalingClient {
    async fn describe_group(&self, name: &str) -> Result<Option<Group>> {
        let out = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(sdk)?;
        let Some(g) = out
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(name))
        else {
            return Ok(None);
        };
        Ok(Some(Group {
            name: name.to_string(),
            min: count(g.min_size()),
            max: count(g.max_size()),
            desired: count(g.desired_capacity()),
            instances: g
                .instances()
                .iter()
                .filter_map(|i| {
                    Some(Member {
                        id: i.instance_id()?.to_string(),
                        lifecycle: i
                            .lifecycle_state()
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_default(),
                    })
                })
                .collect(),
            target_groups: g.target_group_arns().to_vec(),
            load_balancers: g.load_balancer_names().to_vec(),
            suspended: g
                .suspended_processes()
                .iter()
                .filter_map(|p| p.process_name().map(str::to_string))
                .collect(),
            tags: g
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
        }))
    }

    async fn refresh_active(&self, name: &str) -> Result<bool> {
        let out = self
            .client
            .describe_instance_refreshes()
            .auto_scaling_group_name(name)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.instance_refreshes().iter().any(|r| {
            matches!(
                r.status(),
                Some(
                    InstanceRefreshStatus::Pending
                        | InstanceRefreshStatus::InProgress
                        | InstanceRefreshStatus::Cancelling
                        | InstanceRefreshStatus::RollbackInProgress
                        | InstanceRefreshStatus::Baking
                )
            )
        }))
    }

    async fn tag_group(&self, name: &str, key: &str, value: &str) -> Result<()> {
        self.client
            .create_or_update_tags()
            .tags(
                Tag::builder()
                    .resource_id(name)
                    .resource_type("auto-scaling-group")
                    .key(key)
                    .value(value)
                    .propagate_at_launch(false)
                    .build(),
            )
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn suspend_processes(&self, name: &str) -> Result<()> {
        self.client
            .suspend_processes()
            .auto_scaling_group_name(name)
            .set_scaling_processes(Some(PROCESSES.iter().map(|p| p.to_string()).collect()))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn set_min_size(&self, name: &str, min: u32) -> Result<()> {
        self.client
            .update_auto_scaling_group()
            .auto_scaling_group_name(name)
            .min_size(min as i32)
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn detach_instances(&self, name: &str, ids: &[String]) -> Result<Option<String>> {
        let out = self
            .client
            .detach_instances()
            .auto_scaling_group_name(name)
            .set_instance_ids(Some(ids.to_vec()))
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.request_id().map(str::to_string))
    }
}
