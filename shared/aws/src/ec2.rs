//! The EC2 port on the EC2 API: `phoenix_protocol::ports::ec2` in the SDK's terms. Pure
//! translation; what phoenix asks and why is `phoenix_protocol::compute`.

use crate::error::{sdk_error, Error, Result};
use aws_sdk_ec2::operation::RequestId;
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceStateName, InstanceType, LaunchTemplateSpecification,
    MarketType, ResourceType, SpotInstanceType, SpotMarketOptions, SummaryStatus, Tag,
    TagSpecification,
};
use aws_sdk_ec2::Client;
use chrono::DateTime;
use phoenix_core::images::ImageFacts;
use phoenix_core::model::LaunchTemplateRef;
use phoenix_core::model::Lifecycle;
use phoenix_protocol::ports::ec2::{
    Ec2, Ec2Instance, InstanceStatus, Instances, Ran, RunInstances, Subnet, TemplateVersions,
    DESCRIBE_PAGE,
};

#[derive(Clone, Debug)]
pub struct Ec2Client {
    client: Client,
}

fn sdk<E, R>(e: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Error
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    sdk_error("ec2", e)
}

fn not_terminated() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .values("pending")
        .values("running")
        .values("stopping")
        .values("stopped")
        .values("shutting-down")
        .build()
}

fn lifecycle(state: Option<&InstanceStateName>) -> Lifecycle {
    match state {
        Some(InstanceStateName::Pending) => Lifecycle::Pending,
        Some(InstanceStateName::Running) => Lifecycle::Running,
        Some(InstanceStateName::Stopping) => Lifecycle::Stopping,
        Some(InstanceStateName::Stopped) => Lifecycle::Stopped,
        Some(InstanceStateName::ShuttingDown) => Lifecycle::ShuttingDown,
        _ => Lifecycle::Terminated,
    }
}

fn instance(i: aws_sdk_ec2::types::Instance) -> Option<Ec2Instance> {
    Some(Ec2Instance {
        id: i.instance_id?,
        image: i.image_id,
        state: lifecycle(i.state.as_ref().and_then(|s| s.name.as_ref())),
        launched_at: i
            .launch_time
            .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
        zone: i.placement.and_then(|p| p.availability_zone),
        subnet: i.subnet_id,
        instance_type: i.instance_type.map(|t| t.as_str().to_string()),
        tags: i
            .tags
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
            .collect(),
    })
}

/// Whether an error is EC2's "no such launch template" (by id or by name).
fn no_such_template<E: aws_sdk_ec2::error::ProvideErrorMetadata, R>(
    e: &aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c.starts_with("InvalidLaunchTemplate"))
}

/// Whether an error is EC2's "no such AMI" (then the image is simply not visible).
fn no_such_image<E: aws_sdk_ec2::error::ProvideErrorMetadata, R>(
    e: &aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c.starts_with("InvalidAMIID"))
}

impl Ec2Client {
    pub fn new(client: Client) -> Self {
        Ec2Client { client }
    }
}

impl Ec2 for Ec2Client {
    async fn describe_instances(&self, which: &Instances) -> Result<Vec<Ec2Instance>> {
        let selector = match which {
            Instances::Tagged { key, value } => Filter::builder()
                .name(format!("tag:{key}"))
                .values(value)
                .build(),
            Instances::Ids(ids) => Filter::builder()
                .name("instance-id")
                .set_values(Some(ids.clone()))
                .build(),
        };
        let mut pages = self
            .client
            .describe_instances()
            .filters(selector)
            .filters(not_terminated())
            .max_results(DESCRIBE_PAGE as i32)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            for r in page.map_err(sdk)?.reservations.unwrap_or_default() {
                out.extend(
                    r.instances
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(instance),
                );
            }
        }
        Ok(out)
    }

    async fn instance_status(&self, ids: &[String]) -> Result<Vec<InstanceStatus>> {
        let out = self
            .client
            .describe_instance_status()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(sdk)?;
        Ok(out
            .instance_statuses
            .unwrap_or_default()
            .into_iter()
            .filter_map(|st| {
                let system = st.system_status.as_ref().and_then(|s| s.status.as_ref());
                let instance = st.instance_status.as_ref().and_then(|s| s.status.as_ref());
                Some(InstanceStatus {
                    id: st.instance_id?,
                    ok: system == Some(&SummaryStatus::Ok) && instance == Some(&SummaryStatus::Ok),
                    system_impaired: system == Some(&SummaryStatus::Impaired),
                })
            })
            .collect())
    }

    async fn run_instances(&self, r: &RunInstances) -> Result<Ran> {
        let tags: Vec<Tag> = r
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let tag_specs = [ResourceType::Instance, ResourceType::Volume]
            .into_iter()
            .map(|rt| {
                TagSpecification::builder()
                    .resource_type(rt)
                    .set_tags(Some(tags.clone()))
                    .build()
            })
            .collect();
        let count = i32::try_from(r.count).unwrap_or(i32::MAX);
        let mut req = self
            .client
            .run_instances()
            .image_id(&r.image)
            .min_count(count)
            .max_count(count)
            .client_token(&r.client_token)
            .set_tag_specifications(Some(tag_specs))
            .set_instance_type(r.instance_type.as_deref().map(InstanceType::from))
            .set_subnet_id(r.subnet.clone())
            .set_key_name(r.key_name.clone())
            .set_user_data(r.user_data.as_ref().map(aws_smithy_types::base64::encode));
        if !r.security_groups.is_empty() {
            req = req.set_security_group_ids(Some(r.security_groups.clone()));
        }
        if r.spot {
            req = req.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        if let Some(p) = &r.instance_profile {
            let profile = if p.starts_with("arn:") {
                IamInstanceProfileSpecification::builder().arn(p).build()
            } else {
                IamInstanceProfileSpecification::builder().name(p).build()
            };
            req = req.iam_instance_profile(profile);
        }
        if let Some(lt) = &r.launch_template {
            req = req.launch_template(
                LaunchTemplateSpecification::builder()
                    .set_launch_template_id(lt.id.clone())
                    .set_launch_template_name(lt.name.clone())
                    .set_version(lt.version.clone())
                    .build(),
            );
        }
        let out = req.send().await.map_err(sdk)?;
        let request_id = out.request_id().map(str::to_string);
        Ok(Ran {
            instances: out
                .instances
                .unwrap_or_default()
                .into_iter()
                .filter_map(instance)
                .collect(),
            request_id,
        })
    }

    async fn terminate_instances(&self, ids: &[String]) -> Result<Option<String>> {
        let out = self
            .client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.request_id().map(str::to_string))
    }

    async fn describe_launch_template(
        &self,
        t: &LaunchTemplateRef,
    ) -> Result<Option<TemplateVersions>> {
        let mut req = self.client.describe_launch_templates();
        if let Some(id) = &t.id {
            req = req.launch_template_ids(id);
        } else if let Some(name) = &t.name {
            req = req.launch_template_names(name);
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if no_such_template(&e) => return Ok(None),
            Err(e) => return Err(sdk(e)),
        };
        Ok(out
            .launch_templates
            .unwrap_or_default()
            .into_iter()
            .find_map(|lt| {
                Some(TemplateVersions {
                    id: lt.launch_template_id?,
                    default: u64::try_from(lt.default_version_number?).ok()?,
                    latest: u64::try_from(lt.latest_version_number?).ok()?,
                })
            }))
    }

    async fn describe_subnets(
        &self,
        ids: &[String],
    ) -> Result<std::collections::BTreeMap<String, Subnet>> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        // By filter, not by id: an id that does not exist is left out instead of failing the call.
        let out = self
            .client
            .describe_subnets()
            .filters(
                Filter::builder()
                    .name("subnet-id")
                    .set_values(Some(ids.to_vec()))
                    .build(),
            )
            .send()
            .await
            .map_err(sdk)?;
        Ok(out
            .subnets
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| {
                Some((
                    s.subnet_id?,
                    Subnet {
                        vpc: s.vpc_id?,
                        zone: s.availability_zone,
                    },
                ))
            })
            .collect())
    }

    async fn create_tags(
        &self,
        ids: &[String],
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        self.client
            .create_tags()
            .set_resources(Some(ids.to_vec()))
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn delete_tags(&self, ids: &[String], keys: &[String]) -> Result<()> {
        self.client
            .delete_tags()
            .set_resources(Some(ids.to_vec()))
            .set_tags(Some(
                keys.iter().map(|k| Tag::builder().key(k).build()).collect(),
            ))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn describe_image(&self, image: &str) -> Result<Option<ImageFacts>> {
        let out = match self.client.describe_images().image_ids(image).send().await {
            Ok(out) => out,
            Err(e) if no_such_image(&e) => return Ok(None),
            Err(e) => return Err(sdk(e)),
        };
        let found = out
            .images
            .unwrap_or_default()
            .into_iter()
            .find(|i| i.image_id.as_deref() == Some(image));
        Ok(found.map(|i| ImageFacts {
            name: i.name,
            owner: i.owner_id,
            tags: i
                .tags
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
                .collect(),
        }))
    }
}
