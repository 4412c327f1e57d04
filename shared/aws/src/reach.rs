//! The reach port on STS: a fleet in another account is reached through the role its spec
//! names (assumed once when first reached, so a role that cannot be assumed is refused then,
//! with STS's reason; its credentials then refresh themselves), in another region through the
//! same clients pointed there.

use crate::autoscaling::AutoScalingClient;
use crate::ec2::Ec2Client;
use crate::elb::ElbClient;
use crate::error::{sdk_error, Error, Result};
use aws_config::sts::AssumeRoleProvider;
use aws_config::{Region, SdkConfig};
use aws_sdk_sts::config::SharedCredentialsProvider;
use aws_sdk_sts::types::Tag;
use phoenix_core::model::Location;
use phoenix_protocol::ports::Reach;

/// The session name phoenix's sessions carry in the member account's CloudTrail.
pub const SESSION_NAME: &str = "phoenix";

/// Other accounts and regions, from phoenix's own configuration.
#[derive(Clone, Debug)]
pub struct AwsReach {
    sdk: SdkConfig,
}

impl AwsReach {
    pub fn new(sdk: &SdkConfig) -> Self {
        AwsReach { sdk: sdk.clone() }
    }
}

impl Reach for AwsReach {
    type Ec2 = Ec2Client;
    type Elb = ElbClient;
    type AutoScaling = AutoScalingClient;

    async fn reach(
        &self,
        location: &Location,
    ) -> Result<(Ec2Client, ElbClient, AutoScalingClient)> {
        let mut config = self.sdk.to_builder();
        if let Some(region) = &location.region {
            config = config.region(Region::new(region.clone()));
        }
        if let Some(account) = &location.account {
            let tags = || {
                account
                    .session_tags
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
            };
            let sts = aws_sdk_sts::Client::new(&self.sdk);
            let mut assume = sts
                .assume_role()
                .role_arn(&account.role_arn)
                .role_session_name(SESSION_NAME)
                .set_external_id(account.external_id.clone());
            for (k, v) in tags() {
                assume = assume.tags(Tag::builder().key(k).value(v).build().map_err(|e| {
                    Error::Permanent {
                        service: "sts",
                        message: e.to_string(),
                    }
                })?);
            }
            // Not retryable, the role cannot be assumed: refused with STS's reason.
            assume.send().await.map_err(|e| match sdk_error("sts", e) {
                e if e.is_retryable() => e,
                e => Error::Permanent {
                    service: "sts",
                    message: format!("cannot assume {}: {e}", account.role_arn),
                },
            })?;
            let mut provider = AssumeRoleProvider::builder(&account.role_arn)
                .session_name(SESSION_NAME)
                .tags(tags())
                .configure(&self.sdk);
            if let Some(x) = &account.external_id {
                provider = provider.external_id(x);
            }
            config =
                config.credentials_provider(SharedCredentialsProvider::new(provider.build().await));
        }
        let sdk = config.build();
        Ok((
            Ec2Client::new(aws_sdk_ec2::Client::new(&sdk)),
            ElbClient::new(aws_sdk_elasticloadbalancingv2::Client::new(&sdk)),
            AutoScalingClient::new(aws_sdk_autoscaling::Client::new(&sdk)),
        ))
    }
}
