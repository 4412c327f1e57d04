//! EC2: launch from the approved image with tags on create, observe the fleet by tag, terminate
//! only what carries the fleet's tag.

use crate::error::{Error, Result};
use aws_sdk_ec2::operation::RequestId;
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceStateName, InstanceType,
    LaunchTemplateSpecification, ResourceType, SummaryStatus, Tag, TagSpecification,
};
use aws_sdk_ec2::Client;
use chrono::DateTime;
use phoenix_core::images::ImageFacts;
use phoenix_core::model::{FleetSpec, Lifecycle, Observed, TAG_FLEET, TAG_IMAGE, TAG_TOKEN};
use phoenix_core::planner::Launched;
use phoenix_core::{FleetName, ImageId, InstanceId};
use std::collections::BTreeSet;
use std::future::Future;
use tracing::info;

/// TerminateInstances accepts up to 1000 ids; Karpenter uses batches of 500, and so do we.
const TERMINATE_BATCH: usize = 500;
/// Values per DescribeInstances filter (AWS allows 200).
const FILTER_VALUES: usize = 200;
/// DescribeInstanceStatus takes at most 100 ids per call.
const STATUS_BATCH: usize = 100;

/// What a launch produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchOutput {
    pub instances: Vec<Launched>,
    /// The RunInstances call's AWS request id; none when an earlier attempt's instances were
    /// found by their token tag instead.
    pub request_id: Option<String>,
}

/// What a termination did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminateOutput {
    /// The ids that are now gone (including those that already were).
    pub gone: Vec<InstanceId>,
    /// One AWS request id per TerminateInstances call (batches of 500).
    pub request_ids: Vec<String>,
}

/// The compute port.
pub trait Compute: Send + Sync {
    /// Every instance tagged with the fleet, in any state but long-terminated.
    fn describe_fleet(
        &self,
        fleet: &FleetName,
    ) -> impl Future<Output = Result<Vec<Observed>>> + Send;
    /// Launches `count` instances for one decision. Idempotent per token: the token is EC2's
    /// ClientToken, and for a decision carried out again (`fresh` false: an earlier invocation
    /// may have launched it and died) instances already carrying the token are returned instead
    /// of launching again. A fresh decision, committed by this invocation a moment ago, cannot
    /// have been launched before, so it skips that lookup.
    fn launch(
        &self,
        spec: &FleetSpec,
        token: &str,
        image: &ImageId,
        count: u32,
        fresh: bool,
    ) -> impl Future<Output = Result<LaunchOutput>> + Send;
    /// Terminates those of `ids` that carry the fleet's tag; ids without the tag are never
    /// touched, and are not among those reported gone.
    fn terminate(
        &self,
        fleet: &FleetName,
        ids: &[InstanceId],
    ) -> impl Future<Output = Result<TerminateOutput>> + Send;
    /// Whether the AMI exists and is available to this account.
    fn image_exists(&self, image: &ImageId) -> impl Future<Output = Result<bool>> + Send;
    /// What EC2 reports about an AMI (name, owner, tags), or `None` if this account cannot see
    /// it. Image selectors and admission gates judge these facts. The default knows only whether
    /// the image exists (no name, owner or tags): wrappers should delegate to the real adapter.
    fn describe_image(
        &self,
        image: &ImageId,
    ) -> impl Future<Output = Result<Option<ImageFacts>>> + Send {
        async move { Ok(self.image_exists(image).await?.then(ImageFacts::default)) }
    }
}

#[derive(Clone, Debug)]
pub struct Ec2Compute {
    client: Client,
}

fn sdk<E, R>(e: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Error
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    Error::from_sdk("ec2", e)
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
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

impl Ec2Compute {
    pub fn new(client: Client) -> Self {
        Ec2Compute { client }
    }

    /// Instances matching the filters, all pages.
    async fn describe(&self, filters: Vec<Filter>) -> Result<Vec<aws_sdk_ec2::types::Instance>> {
        let mut pages = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .max_results(1000)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            for r in page.map_err(sdk)?.reservations.unwrap_or_default() {
                out.extend(r.instances.unwrap_or_default());
            }
        }
        Ok(out)
    }

    /// Ids whose two status checks are both `ok`.
    async fn status_ok(&self, ids: &[String]) -> Result<BTreeSet<String>> {
        let mut ok = BTreeSet::new();
        for chunk in ids.chunks(STATUS_BATCH) {
            let out = self
                .client
                .describe_instance_status()
                .set_instance_ids(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(sdk)?;
            for st in out.instance_statuses.unwrap_or_default() {
                let good = |s: Option<&SummaryStatus>| s == Some(&SummaryStatus::Ok);
                let sys = st.system_status.as_ref().and_then(|s| s.status.as_ref());
                let inst = st.instance_status.as_ref().and_then(|s| s.status.as_ref());
                if good(sys) && good(inst) {
                    ok.extend(st.instance_id);
                }
            }
        }
        Ok(ok)
    }

    fn to_launched(instances: Vec<aws_sdk_ec2::types::Instance>) -> Result<Vec<Launched>> {
        let mut out = Vec::new();
        for i in instances {
            let id = InstanceId::parse(i.instance_id.as_deref().unwrap_or_default())?;
            let launched_at = i
                .launch_time
                .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
            out.push(Launched {
                id,
                launched_at,
                state: lifecycle(i.state.as_ref().and_then(|s| s.name.as_ref())),
                zone: zone_of(&i),
                instance_type: i.instance_type.as_ref().map(|t| t.as_str().to_string()),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

fn zone_of(i: &aws_sdk_ec2::types::Instance) -> Option<String> {
    i.placement
        .as_ref()
        .and_then(|p| p.availability_zone.clone())
}

fn tag_value(tags: Option<&[Tag]>, key: &str) -> Option<String> {
    tags?
        .iter()
        .find(|t| t.key.as_deref() == Some(key))
        .and_then(|t| t.value.clone())
}

impl Compute for Ec2Compute {
    async fn describe_fleet(&self, fleet: &FleetName) -> Result<Vec<Observed>> {
        let instances = self
            .describe(vec![
                tag_filter(TAG_FLEET, fleet.as_str()),
                not_terminated(),
            ])
            .await?;
        let running: Vec<String> = instances
            .iter()
            .filter(|i| {
                i.state.as_ref().and_then(|s| s.name.as_ref()) == Some(&InstanceStateName::Running)
            })
            .filter_map(|i| i.instance_id.clone())
            .collect();
        let ok = self.status_ok(&running).await?;
        let mut observed = Vec::new();
        for i in instances {
            let Some(raw_id) = i.instance_id.clone() else {
                continue;
            };
            let Ok(id) = InstanceId::parse(&raw_id) else {
                continue;
            };
            let tags = i.tags.as_deref();
            observed.push(Observed {
                id,
                image: i.image_id.as_deref().and_then(|s| ImageId::parse(s).ok()),
                state: lifecycle(i.state.as_ref().and_then(|s| s.name.as_ref())),
                status_ok: ok.contains(&raw_id),
                launched_at: i
                    .launch_time
                    .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                token: tag_value(tags, TAG_TOKEN),
                zone: zone_of(&i),
                instance_type: i.instance_type.as_ref().map(|t| t.as_str().to_string()),
            });
        }
        Ok(observed)
    }

    async fn launch(
        &self,
        spec: &FleetSpec,
        token: &str,
        image: &ImageId,
        count: u32,
        fresh: bool,
    ) -> Result<LaunchOutput> {
        // Belt and braces beside ClientToken: if a previous attempt launched (and we crashed before
        // recording it), the instances carry the token tag.
        let existing = if fresh {
            Vec::new()
        } else {
            self.describe(vec![tag_filter(TAG_TOKEN, token), not_terminated()])
                .await?
        };
        if !existing.is_empty() {
            info!(%token, found = existing.len(), "instances of this launch decision exist already");
            return Ok(LaunchOutput {
                instances: Self::to_launched(existing)?,
                request_id: None,
            });
        }
        let mut tags = vec![
            Tag::builder()
                .key(TAG_FLEET)
                .value(spec.name.as_str())
                .build(),
            Tag::builder().key(TAG_IMAGE).value(image.as_str()).build(),
            Tag::builder().key(TAG_TOKEN).value(token).build(),
            Tag::builder()
                .key("Name")
                .value(format!("{}-{}", spec.name, image))
                .build(),
        ];
        tags.extend(
            spec.tags
                .iter()
                .filter(|(k, _)| k.as_str() != "Name")
                .map(|(k, v)| Tag::builder().key(k).value(v).build()),
        );
        let tag_specs = [ResourceType::Instance, ResourceType::Volume]
            .into_iter()
            .map(|rt| {
                TagSpecification::builder()
                    .resource_type(rt)
                    .set_tags(Some(tags.clone()))
                    .build()
            })
            .collect();
        let mut req = self
            .client
            .run_instances()
            .image_id(image.as_str())
            // All or nothing: a partial launch would leave the decision half-done under one
            // token (which cannot be reused for the rest). A capacity error fails the decision and
            // the next pass plans again.
            .min_count(i32::try_from(count).unwrap_or(i32::MAX))
            .max_count(i32::try_from(count).unwrap_or(i32::MAX))
            .client_token(token)
            .set_tag_specifications(Some(tag_specs));
        if let Some(t) = &spec.instance_type {
            req = req.instance_type(InstanceType::from(t.as_str()));
        }
        if !spec.subnets.is_empty() {
            // One call launches into one subnet; spread decisions over subnets by token.
            let pick = token
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
                % spec.subnets.len();
            req = req.subnet_id(&spec.subnets[pick]);
        }
        if !spec.security_groups.is_empty() {
            req = req.set_security_group_ids(Some(spec.security_groups.clone()));
        }
        if let Some(k) = &spec.key_name {
            req = req.key_name(k);
        }
        if let Some(p) = &spec.instance_profile {
            let prof = if p.starts_with("arn:") {
                IamInstanceProfileSpecification::builder().arn(p).build()
            } else {
                IamInstanceProfileSpecification::builder().name(p).build()
            };
            req = req.iam_instance_profile(prof);
        }
        if let Some(lt) = &spec.launch_template {
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
        info!(%token, %image, count, aws_request_id = request_id.as_deref().unwrap_or("-"), "RunInstances");
        Ok(LaunchOutput {
            instances: Self::to_launched(out.instances.unwrap_or_default())?,
            request_id,
        })
    }

    async fn terminate(&self, fleet: &FleetName, ids: &[InstanceId]) -> Result<TerminateOutput> {
        if ids.is_empty() {
            return Ok(TerminateOutput::default());
        }
        // Re-validate just before the destructive act, by id (so the cost follows the ids, not
        // the fleet): only instances EC2 shows alive with this fleet's tag are terminated; alive
        // without it, they are not ours and are left alone; not alive, they are gone already.
        let mut alive = Vec::new();
        let mut foreign = BTreeSet::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let by_id = Filter::builder()
                .name("instance-id")
                .set_values(Some(chunk.iter().map(|id| id.to_string()).collect()))
                .build();
            for i in self.describe(vec![by_id, not_terminated()]).await? {
                let Some(id) = i.instance_id.clone() else {
                    continue;
                };
                if tag_value(i.tags.as_deref(), TAG_FLEET).as_deref() == Some(fleet.as_str()) {
                    alive.push(id);
                } else {
                    foreign.insert(id);
                }
            }
        }
        let mut request_ids = Vec::new();
        for chunk in alive.chunks(TERMINATE_BATCH) {
            match self
                .client
                .terminate_instances()
                .set_instance_ids(Some(chunk.to_vec()))
                .send()
                .await
            {
                Ok(out) => {
                    let id = out.request_id().unwrap_or("-");
                    info!(
                        count = chunk.len(),
                        aws_request_id = id,
                        "TerminateInstances"
                    );
                    request_ids.extend(out.request_id().map(str::to_string));
                }
                // "Already gone" is success for a delete.
                Err(e)
                    if e.as_service_error()
                        .and_then(|s| aws_sdk_ec2::error::ProvideErrorMetadata::code(s))
                        == Some("InvalidInstanceID.NotFound") => {}
                Err(e) => return Err(sdk(e)),
            }
        }
        Ok(TerminateOutput {
            gone: ids
                .iter()
                .filter(|id| !foreign.contains(id.as_str()))
                .cloned()
                .collect(),
            request_ids,
        })
    }

    async fn image_exists(&self, image: &ImageId) -> Result<bool> {
        match self
            .client
            .describe_images()
            .image_ids(image.as_str())
            .send()
            .await
        {
            Ok(out) => Ok(out
                .images
                .unwrap_or_default()
                .iter()
                .any(|i| i.image_id.as_deref() == Some(image.as_str()))),
            Err(e) => {
                let code = e
                    .as_service_error()
                    .and_then(|s| aws_sdk_ec2::error::ProvideErrorMetadata::code(s))
                    .unwrap_or_default()
                    .to_string();
                if code.starts_with("InvalidAMIID") {
                    Ok(false)
                } else {
                    Err(sdk(e))
                }
            }
        }
    }

    async fn describe_image(&self, image: &ImageId) -> Result<Option<ImageFacts>> {
        let out = match self
            .client
            .describe_images()
            .image_ids(image.as_str())
            .send()
            .await
        {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .and_then(|s| aws_sdk_ec2::error::ProvideErrorMetadata::code(s))
                    .is_some_and(|c| c.starts_with("InvalidAMIID")) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(sdk(e)),
        };
        let found = out
            .images
            .unwrap_or_default()
            .into_iter()
            .find(|i| i.image_id.as_deref() == Some(image.as_str()));
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
