//! The Image Builder port on `GetImage`, and the controller's intake from the environment.

use crate::error::{sdk_error, Error, Result};
use phoenix_core::aws_events::SourcePolicy;
use phoenix_core::images::{AllowedImageAccounts, ImageBuild};
use phoenix_core::ImageId;
use phoenix_protocol::budget::DEFAULT_PER_SECOND;
use phoenix_protocol::ports::images::{BoxFuture, ImageResolver};
use phoenix_protocol::Intake;
use std::sync::Arc;
use tracing::warn;

#[derive(Clone, Debug)]
pub struct ImageBuilderResolver {
    client: aws_sdk_imagebuilder::Client,
}

impl ImageBuilderResolver {
    pub fn new(client: aws_sdk_imagebuilder::Client) -> Self {
        ImageBuilderResolver { client }
    }
}

impl ImageResolver for ImageBuilderResolver {
    fn resolve<'a>(&'a self, arn: &'a str) -> BoxFuture<'a, Result<ImageBuild>> {
        Box::pin(async move {
            let out = self
                .client
                .get_image()
                .image_build_version_arn(arn)
                .send()
                .await
                .map_err(|e| sdk_error("imagebuilder", e))?;
            let image = out
                .image
                .ok_or_else(|| Error::NotFound(format!("Image Builder knows no image {arn}")))?;
            let amis = image
                .output_resources
                .and_then(|r| r.amis)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|a| Some((a.region?, ImageId::parse(a.image.as_deref()?).ok()?)))
                .collect();
            Ok(ImageBuild {
                arn: arn.to_string(),
                amis,
                pipeline: image.source_pipeline_arn,
                recipe: image.image_recipe.and_then(|r| r.arn),
            })
        })
    }
}

/// `PHOENIX_ALLOWED_ACCOUNTS` and `PHOENIX_ALLOWED_SOURCES` (comma-separated; empty: any account,
/// every known source), `PHOENIX_ALLOWED_IMAGE_ACCOUNTS` (comma-separated account ids whose images
/// may be launched; empty: any), `PHOENIX_ACCOUNT` (the account phoenix runs in, which AWS events
/// about fleets without an account of their own must come from; empty: not checked), the region of
/// `sdk`, and the Image Builder client.
pub fn intake_from_env(sdk: &aws_config::SdkConfig) -> Intake {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let image_accounts = AllowedImageAccounts::from_list(&var("PHOENIX_ALLOWED_IMAGE_ACCOUNTS"));
    let odd = image_accounts.not_accounts();
    if !odd.is_empty() {
        warn!(
            entries = ?odd,
            "PHOENIX_ALLOWED_IMAGE_ACCOUNTS: not account ids, so no image's owner matches them"
        );
    }
    Intake {
        policy: SourcePolicy::from_lists(
            &var("PHOENIX_ALLOWED_ACCOUNTS"),
            &var("PHOENIX_ALLOWED_SOURCES"),
        ),
        image_accounts,
        images: Arc::new(ImageBuilderResolver::new(
            aws_sdk_imagebuilder::Client::new(sdk),
        )),
        home_account: Some(var("PHOENIX_ACCOUNT")).filter(|a| !a.is_empty()),
        home_region: sdk.region().map(|r| r.to_string()),
        ec2_calls_per_second: ec2_budget(&var("PHOENIX_EC2_CALLS_PER_SECOND")),
    }
}

/// `PHOENIX_EC2_CALLS_PER_SECOND`: phoenix's share of each account and region's EC2 request
/// rate; unset, `budget::DEFAULT_PER_SECOND`; `0`, no budget.
fn ec2_budget(value: &str) -> Option<u32> {
    match value.trim() {
        "" => Some(DEFAULT_PER_SECOND),
        v => match v.parse::<u32>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                warn!(
                    value = v,
                    "PHOENIX_EC2_CALLS_PER_SECOND is not a number: the default applies"
                );
                Some(DEFAULT_PER_SECOND)
            }
        },
    }
}
