//! The ELBv2 port on the Elastic Load Balancing API: `phoenix_protocol::ports::elb` in the SDK's
//! terms. Pure translation; what phoenix asks and why is `phoenix_protocol::targets`.

use crate::error::{sdk_error, Error, Result};
use aws_sdk_elasticloadbalancingv2::operation::RequestId;
use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};
use aws_sdk_elasticloadbalancingv2::Client;
use phoenix_core::model::TargetState;
use phoenix_protocol::ports::elb::{Elb, Target, TargetGroup, TargetHealth};
use std::collections::BTreeMap;

/// AWS's deregistration delay when a group does not say.
const DEFAULT_DEREGISTRATION_DELAY: u64 = 300;

#[derive(Clone, Debug)]
pub struct ElbClient {
    client: Client,
}

impl ElbClient {
    pub fn new(client: Client) -> Self {
        ElbClient { client }
    }
}

fn sdk<E, R>(e: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Error
where
    E: aws_sdk_elasticloadbalancingv2::error::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
    R: std::fmt::Debug,
{
    sdk_error("elasticloadbalancing", e)
}

fn descriptions(targets: &[Target]) -> Vec<TargetDescription> {
    targets
        .iter()
        .map(|t| {
            TargetDescription::builder()
                .id(&t.id)
                .set_port(t.port.map(i32::from))
                .build()
        })
        .collect()
}

fn state(s: Option<&TargetHealthStateEnum>, reason: String) -> TargetState {
    match s {
        Some(TargetHealthStateEnum::Healthy) => TargetState::Healthy,
        Some(TargetHealthStateEnum::Initial) => TargetState::Initial,
        Some(TargetHealthStateEnum::Unhealthy) => TargetState::Unhealthy { reason },
        Some(TargetHealthStateEnum::Draining | TargetHealthStateEnum::UnhealthyDraining) => {
            TargetState::Draining
        }
        Some(TargetHealthStateEnum::Unavailable) => TargetState::Unavailable,
        Some(TargetHealthStateEnum::Unused) | None => TargetState::Unused,
        // A state newer than this adapter: listed, so never taken for drained.
        Some(_) => TargetState::Unavailable,
    }
}

impl Elb for ElbClient {
    async fn describe_target_group(&self, arn: &str) -> Result<Option<TargetGroup>> {
        let out = match self
            .client
            .describe_target_groups()
            .target_group_arns(arn)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => match sdk(e) {
                Error::NotFound(_) => return Ok(None),
                e => return Err(e),
            },
        };
        let Some(g) = out.target_groups.unwrap_or_default().into_iter().next() else {
            return Ok(None);
        };
        let attributes = self
            .client
            .describe_target_group_attributes()
            .target_group_arn(arn)
            .send()
            .await
            .map_err(sdk)?;
        let delay = attributes
            .attributes
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.key.as_deref() == Some("deregistration_delay.timeout_seconds"))
            .and_then(|a| a.value?.parse().ok())
            .unwrap_or(DEFAULT_DEREGISTRATION_DELAY);
        Ok(Some(TargetGroup {
            arn: arn.to_string(),
            target_type: g
                .target_type
                .map(|t| t.as_str().to_string())
                .unwrap_or_else(|| "instance".into()),
            vpc: g.vpc_id,
            port: g.port.and_then(|p| u16::try_from(p).ok()),
            deregistration_delay: delay,
        }))
    }

    async fn target_group_tags(&self, arn: &str) -> Result<BTreeMap<String, String>> {
        let out = self
            .client
            .describe_tags()
            .resource_arns(arn)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out
            .tag_descriptions
            .unwrap_or_default()
            .into_iter()
            .flat_map(|d| d.tags.unwrap_or_default())
            .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
            .collect())
    }

    async fn target_health(&self, arn: &str) -> Result<Vec<TargetHealth>> {
        let out = self
            .client
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out
            .target_health_descriptions
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| {
                let id = d.target.as_ref()?.id.clone()?;
                let health = d.target_health.as_ref();
                let reason = health
                    .map(|h| {
                        let code = h.reason().map(|r| r.as_str()).unwrap_or_default();
                        match h.description() {
                            Some(text) if !code.is_empty() => format!("{code}: {text}"),
                            Some(text) => text.to_string(),
                            None => code.to_string(),
                        }
                    })
                    .unwrap_or_default();
                Some(TargetHealth {
                    id,
                    state: state(health.and_then(|h| h.state()), reason),
                })
            })
            .collect())
    }

    async fn register_targets(&self, arn: &str, targets: &[Target]) -> Result<Option<String>> {
        let out = self
            .client
            .register_targets()
            .target_group_arn(arn)
            .set_targets(Some(descriptions(targets)))
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.request_id().map(str::to_string))
    }

    async fn deregister_targets(&self, arn: &str, targets: &[Target]) -> Result<Option<String>> {
        match self
            .client
            .deregister_targets()
            .target_group_arn(arn)
            .set_targets(Some(descriptions(targets)))
            .send()
            .await
        {
            Ok(out) => Ok(out.request_id().map(str::to_string)),
            Err(e) => match sdk(e) {
                // A target that is not registered (or an instance gone) is deregistered already.
                Error::Permanent { message, .. } if message.starts_with("InvalidTarget") => {
                    Ok(None)
                }
                e => Err(e),
            },
        }
    }
}
