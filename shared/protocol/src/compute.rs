//! What phoenix asks of EC2, over the `Ec2` port: observe the fleet by its tag, launch a decision
//! (tags on create, the decision's token as ClientToken, and first a lookup by the token tag when
//! the decision is carried out again), terminate only what carries the fleet's tag, re-validated
//! just before the call.

use crate::budget::Admit;
use crate::error::{Error, Result};
use crate::ports::ec2::{
    Ec2, Ec2Instance, InstanceStatus, Instances, RunInstances, Subnet, TemplateVersions,
    DESCRIBE_PAGE, MAX_FILTER_VALUES, MAX_STATUS_IDS, MAX_TERMINATE_IDS,
};
use crate::ports::Deadline;
use crate::variant::Variant;
use phoenix_core::images::ImageFacts;
use phoenix_core::model::{
    Fleet, LaunchTemplateRef, Lifecycle, Observed, Offering, TAG_DEFINITION, TAG_FLEET, TAG_IMAGE,
    TAG_PROTECTED, TAG_TOKEN,
};
use phoenix_core::planner::{Launched, Refusal};
use phoenix_core::{FleetName, ImageId, InstanceId};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use tracing::info;

/// What a launch produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchOutput {
    /// Empty when EC2 had no capacity for any offering (`refused` says which it tried).
    pub instances: Vec<Launched>,
    /// The RunInstances call's request id; none when an earlier attempt's instances were found by
    /// their token tag instead.
    pub request_id: Option<String>,
    /// Offerings EC2 refused for capacity before the one that launched.
    pub refused: Vec<Refusal>,
}

/// What a termination did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminateOutput {
    /// The ids that are now gone (including those that already were).
    pub gone: Vec<InstanceId>,
    /// One request id per TerminateInstances call.
    pub request_ids: Vec<String>,
}

/// An instance as phoenix reads what EC2 reports of it: its phoenix tags, and its status checks
/// when they were read (none: not running, or not asked).
pub fn observed(i: Ec2Instance, status: Option<&InstanceStatus>) -> Option<Observed> {
    Some(Observed {
        id: InstanceId::parse(&i.id).ok()?,
        image: i.image.as_deref().and_then(|s| ImageId::parse(s).ok()),
        state: i.state,
        status_ok: status.is_some_and(|s| s.ok),
        system_impaired: status.is_some_and(|s| s.system_impaired),
        launched_at: i.launched_at,
        token: i.tags.get(TAG_TOKEN).cloned(),
        definition: i.tags.get(TAG_DEFINITION).cloned(),
        zone: i.zone,
        instance_type: i.instance_type,
        protected: i.tags.contains_key(TAG_PROTECTED),
        subnet: i.subnet,
        targets: Default::default(),
    })
}

/// phoenix's use of EC2, every request admitted by the call budget first (when it has one).
#[derive(Clone)]
pub struct Compute<E> {
    ec2: E,
    variant: Variant,
    budget: Option<Arc<dyn Admit>>,
}

/// The subnet a launch decision goes to: spread over the fleet's subnets by its token, so every
/// attempt of one decision goes to the same one. (`h * 31 + byte`, modulo the count.)
pub fn subnet_index(token: &str, subnets: usize) -> usize {
    token
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % subnets.max(1)
}

fn launched(instances: Vec<Ec2Instance>) -> Result<Vec<Launched>> {
    let mut out = instances
        .into_iter()
        .map(|i| {
            Ok(Launched {
                id: InstanceId::parse(&i.id)?,
                launched_at: i.launched_at,
                state: i.state,
                definition: i.tags.get(TAG_DEFINITION).cloned(),
                zone: i.zone,
                instance_type: i.instance_type,
                subnet: i.subnet,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

impl<E: Ec2> Compute<E> {
    pub fn new(ec2: E) -> Self {
        Compute {
            ec2,
            variant: Variant::Real,
            budget: None,
        }
    }

    /// Every request from here on is admitted by `budget` first.
    pub fn set_budget(&mut self, budget: Arc<dyn Admit>) {
        self.budget = Some(budget);
    }

    /// A request that changes nothing (a read) under the budget, `call`'s way; it may be sent
    /// within the deadline's reserve, which is kept for starting commands.
    async fn read<T>(
        &self,
        deadline: Deadline,
        request: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.call(deadline.into_reserve(), request).await
    }

    /// One request under the budget: admitted before it is sent; a throttle EC2 answers anyway
    /// (after the SDK's own retries) backs the budget off.
    async fn call<T>(
        &self,
        deadline: Deadline,
        request: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        // (The deliberate bug that ignores the deadline's reserve ignores it here too.)
        let deadline = match self.variant {
            Variant::IgnoreDeadlineReserve => Deadline::NONE,
            _ => deadline,
        };
        if let Some(budget) = self
            .budget
            .as_ref()
            .filter(|_| self.variant != Variant::NoCallBudget)
        {
            budget.admit(1, deadline).await?;
        }
        // Boxed: the SDK's request futures are large, and every method's future would hold one
        // (nested deep enough, they overflowed a worker thread's stack in debug builds).
        let out = Box::pin(request).await;
        if let (Some(budget), Err(Error::Throttled { .. })) = (&self.budget, &out) {
            budget.throttled().await;
        }
        out
    }

    /// `DescribeInstances` under the budget: its pages after the first counted once answered.
    async fn describe(&self, which: &Instances, deadline: Deadline) -> Result<Vec<Ec2Instance>> {
        let found = self
            .call(deadline, self.ec2.describe_instances(which))
            .await?;
        let more_pages = found.len().saturating_sub(1) / DESCRIBE_PAGE;
        if let (Some(budget), true) = (&self.budget, more_pages > 0) {
            budget
                .count(u32::try_from(more_pages).unwrap_or(u32::MAX))
                .await;
        }
        Ok(found)
    }

    /// EC2's use with one of the simulator's deliberate bugs.
    pub fn set_variant(&mut self, variant: Variant) {
        self.variant = variant;
    }

    /// `set_variant`, by value.
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }

    /// The port itself, outside the budget: for tests that look at it.
    pub fn ec2(&self) -> &E {
        &self.ec2
    }

    /// `DescribeInstances` of what `which` names (a read, under the budget).
    pub async fn list(&self, which: &Instances, deadline: Deadline) -> Result<Vec<Ec2Instance>> {
        self.describe(which, deadline.into_reserve()).await
    }

    /// `DescribeSubnets` of these ids, those that exist (a read, under the budget).
    pub async fn subnets(
        &self,
        ids: &[String],
        deadline: Deadline,
    ) -> Result<BTreeMap<String, Subnet>> {
        self.read(deadline, self.ec2.describe_subnets(ids)).await
    }

    /// `DescribeLaunchTemplates` of the template a reference names, if it exists (a read, under
    /// the budget).
    pub async fn launch_template(
        &self,
        template: &LaunchTemplateRef,
        deadline: Deadline,
    ) -> Result<Option<TemplateVersions>> {
        self.read(deadline, self.ec2.describe_launch_template(template))
            .await
    }

    /// Sets tags on instances (an operator's protection), under the budget.
    pub async fn set_tags(
        &self,
        ids: &[String],
        tags: &BTreeMap<String, String>,
        deadline: Deadline,
    ) -> Result<()> {
        self.call(deadline, self.ec2.create_tags(ids, tags)).await
    }

    /// Removes tags from instances (an operator's protection lifted), under the budget.
    pub async fn remove_tags(
        &self,
        ids: &[String],
        keys: &[String],
        deadline: Deadline,
    ) -> Result<()> {
        self.call(deadline, self.ec2.delete_tags(ids, keys)).await
    }

    /// Every instance tagged with the fleet, in any state but terminated; with its status checks
    /// if it is running and `checks` asks for them. The planner reads status checks only of
    /// instances not yet counted healthy: asking for those alone keeps `DescribeInstanceStatus`
    /// out of a settled fleet's pass.
    pub async fn describe_fleet(
        &self,
        fleet: &FleetName,
        checks: impl Fn(&str) -> bool,
        deadline: Deadline,
    ) -> Result<Vec<Observed>> {
        let instances = self
            .describe(
                &Instances::Tagged {
                    key: TAG_FLEET.into(),
                    value: fleet.to_string(),
                },
                deadline.into_reserve(),
            )
            .await?;
        let running: Vec<String> = instances
            .iter()
            .filter(|i| i.state == Lifecycle::Running && checks(&i.id))
            .map(|i| i.id.clone())
            .collect();
        let mut status = BTreeMap::new();
        for chunk in running.chunks(MAX_STATUS_IDS) {
            for s in self.read(deadline, self.ec2.instance_status(chunk)).await? {
                status.insert(s.id.clone(), s);
            }
        }
        Ok(instances
            .into_iter()
            .filter_map(|i| {
                let s = status.get(&i.id);
                observed(i, s)
            })
            .collect())
    }

    /// What EC2 says of one instance now (state, status checks), if it lists it.
    pub async fn describe_instance(
        &self,
        id: &InstanceId,
        deadline: Deadline,
    ) -> Result<Option<Observed>> {
        let found = self
            .describe(
                &Instances::Ids(vec![id.to_string()]),
                deadline.into_reserve(),
            )
            .await?;
        let Some(i) = found.into_iter().next() else {
            return Ok(None);
        };
        let status = if i.state == Lifecycle::Running {
            self.call(
                deadline,
                self.ec2.instance_status(std::slice::from_ref(&i.id)),
            )
            .await?
        } else {
            Vec::new()
        };
        Ok(observed(i, status.first()))
    }

    /// Launches `count` instances for one decision, all or nothing, on the first of `offerings`
    /// EC2 has capacity for (in the same call: a refusal for capacity moves on to the next).
    /// Idempotent per token: the token is EC2's ClientToken (`<token>.<k>` for the `k`th
    /// offering, so each attempt keeps its own), and for a decision carried out again (`fresh`
    /// false: an earlier invocation may have launched it and died) instances already carrying
    /// the token tag are returned instead of launching again — which also holds where
    /// ClientToken is not honoured (the local emulator). A fresh decision, committed by this
    /// invocation a moment ago, cannot have been launched before, so it skips that lookup.
    #[allow(clippy::too_many_arguments)]
    pub async fn launch(
        &self,
        fleet: &Fleet,
        token: &str,
        image: &ImageId,
        count: u32,
        offerings: &[Offering],
        fresh: bool,
        deadline: Deadline,
    ) -> Result<LaunchOutput> {
        if !fresh && self.variant != Variant::RelaunchBlind {
            let existing = self
                .describe(
                    &Instances::Tagged {
                        key: TAG_TOKEN.into(),
                        value: token.into(),
                    },
                    deadline,
                )
                .await?;
            if !existing.is_empty() {
                info!(%token, found = existing.len(), "instances of this launch decision exist already");
                return Ok(LaunchOutput {
                    instances: launched(existing)?,
                    request_id: None,
                    refused: Vec::new(),
                });
            }
        }
        // The definition launched is the fleet's as committed, its template at the version it
        // resolved to; the instances carry its fingerprint from the moment they exist.
        let spec = &fleet.spec;
        let definition = fleet.definition();
        let mut tags: BTreeMap<String, String> = definition
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tags.extend([
            (TAG_FLEET.to_string(), spec.name.to_string()),
            (TAG_IMAGE.to_string(), image.to_string()),
            (TAG_TOKEN.to_string(), token.to_string()),
            (TAG_DEFINITION.to_string(), definition.fingerprint()),
            ("Name".to_string(), format!("{}-{}", spec.name, image)),
        ]);
        // A decision recorded before there were offerings: the fleet's type, in a subnet drawn
        // from its token.
        let legacy = [Offering {
            instance_type: definition.instance_type.clone(),
            subnet: (!spec.subnets.is_empty())
                .then(|| spec.subnets[subnet_index(token, spec.subnets.len())].clone()),
            zone: None,
            spot: false,
        }];
        let tries = if offerings.is_empty() {
            &legacy[..]
        } else {
            offerings
        };
        let mut refused = Vec::new();
        for (k, offering) in tries.iter().enumerate() {
            let request = RunInstances {
                image: image.to_string(),
                count,
                client_token: if k == 0 {
                    token.to_string()
                } else {
                    format!("{token}.{k}")
                },
                instance_type: offering
                    .instance_type
                    .clone()
                    .or_else(|| definition.instance_type.clone()),
                subnet: offering.subnet.clone(),
                security_groups: definition.security_groups.clone(),
                key_name: definition.key_name.clone(),
                instance_profile: definition.instance_profile.clone(),
                launch_template: definition.launch_template.clone(),
                user_data: definition.user_data.clone(),
                tags: tags.clone(),
                spot: offering.spot,
            };
            let ran = match self.call(deadline, self.ec2.run_instances(&request)).await {
                Ok(ran) => ran,
                // No capacity for this type in this zone: the next offering, if there is one.
                Err(Error::Capacity(why)) if !offerings.is_empty() => {
                    info!(%token, offering = %offering, %why, "no capacity");
                    refused.push(Refusal {
                        offering: offering.clone(),
                        error: why,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            info!(%token, %image, count, offering = %offering, aws_request_id = ran.request_id.as_deref().unwrap_or("-"), "RunInstances");
            // What was asked for, where the answer leaves it out.
            let mut instances = launched(ran.instances)?;
            for i in &mut instances {
                if i.definition.is_none() {
                    i.definition = request.tags.get(TAG_DEFINITION).cloned();
                }
                if i.subnet.is_none() {
                    i.subnet = request.subnet.clone();
                }
                if i.zone.is_none() {
                    i.zone = offering.zone.clone();
                }
                if i.instance_type.is_none() {
                    i.instance_type = request.instance_type.clone();
                }
            }
            return Ok(LaunchOutput {
                instances,
                request_id: ran.request_id,
                refused,
            });
        }
        Ok(LaunchOutput {
            instances: Vec::new(),
            request_id: None,
            refused,
        })
    }

    /// Terminates those of `ids` that carry the fleet's tag; ids without the tag are never
    /// touched, and are not among those reported gone.
    pub async fn terminate(
        &self,
        fleet: &FleetName,
        ids: &[InstanceId],
        deadline: Deadline,
    ) -> Result<TerminateOutput> {
        if ids.is_empty() {
            return Ok(TerminateOutput::default());
        }
        // Re-validated just before the destructive act, by id (so the cost follows the ids, not
        // the fleet): only instances EC2 shows alive with this fleet's tag are terminated; alive
        // without it, they are not ours and are left alone; not alive, they are gone already.
        let mut alive = Vec::new();
        let mut foreign = BTreeSet::new();
        if self.variant == Variant::TerminateUnchecked {
            alive = ids.iter().map(ToString::to_string).collect();
        }
        let checked = if self.variant == Variant::TerminateUnchecked {
            &[][..]
        } else {
            ids
        };
        for chunk in checked.chunks(MAX_FILTER_VALUES) {
            let which = Instances::Ids(chunk.iter().map(ToString::to_string).collect());
            for i in self.describe(&which, deadline).await? {
                if i.tags.get(TAG_FLEET).map(String::as_str) == Some(fleet.as_str()) {
                    alive.push(i.id);
                } else {
                    foreign.insert(i.id);
                }
            }
        }
        let mut request_ids = Vec::new();
        for chunk in alive.chunks(MAX_TERMINATE_IDS) {
            match self
                .call(deadline, self.ec2.terminate_instances(chunk))
                .await
            {
                Ok(id) => {
                    info!(
                        count = chunk.len(),
                        aws_request_id = id.as_deref().unwrap_or("-"),
                        "TerminateInstances"
                    );
                    request_ids.extend(id);
                }
                // "Already gone" is success for a delete.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
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

    /// Tags adopted instances as the fleet's, from their records: `phoenix:fleet`, their
    /// adoption's token as `phoenix:launch`, their image and definition (one `CreateTags` call per
    /// distinct set). Returns the ids EC2 no longer knows: a call that fails for one of them is
    /// made again id by id, so the others are tagged all the same.
    pub async fn tag_adopted(
        &self,
        fleet: &Fleet,
        ids: &[InstanceId],
        deadline: Deadline,
    ) -> Result<Vec<InstanceId>> {
        let mut sets: BTreeMap<BTreeMap<String, String>, Vec<String>> = BTreeMap::new();
        for id in ids {
            let Some(i) = fleet.instances.get(id) else {
                continue;
            };
            let mut tags = BTreeMap::from([
                (TAG_FLEET.to_string(), fleet.spec.name.to_string()),
                (TAG_TOKEN.to_string(), i.token.clone()),
                (TAG_IMAGE.to_string(), i.image.to_string()),
            ]);
            if let Some(d) = &i.definition {
                tags.insert(TAG_DEFINITION.to_string(), d.clone());
            }
            sets.entry(tags).or_default().push(id.to_string());
        }
        let mut gone = Vec::new();
        for (tags, ids) in sets {
            let unknown = self
                .each_known(&ids, deadline, |chunk| self.ec2.create_tags(chunk, &tags))
                .await?;
            gone.extend(unknown.iter().filter_map(|id| InstanceId::parse(id).ok()));
        }
        Ok(gone)
    }

    /// Removes phoenix's tags from released instances; an instance already gone has none.
    pub async fn untag(&self, ids: &[InstanceId], deadline: Deadline) -> Result<()> {
        let keys: Vec<String> = [
            TAG_FLEET,
            TAG_TOKEN,
            TAG_IMAGE,
            TAG_DEFINITION,
            TAG_PROTECTED,
        ]
        .iter()
        .map(|k| k.to_string())
        .collect();
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        self.each_known(&ids, deadline, |chunk| self.ec2.delete_tags(chunk, &keys))
            .await?;
        Ok(())
    }

    /// `request` of `ids`, in batches EC2 accepts. One id EC2 does not know fails a whole call:
    /// such a batch is asked again one id at a time. Returns the ids EC2 does not know.
    async fn each_known<'a, F>(
        &self,
        ids: &'a [String],
        deadline: Deadline,
        request: impl Fn(&'a [String]) -> F,
    ) -> Result<Vec<&'a String>>
    where
        F: Future<Output = Result<()>>,
    {
        let mut unknown = Vec::new();
        for chunk in ids.chunks(MAX_FILTER_VALUES) {
            match self.call(deadline, request(chunk)).await {
                Ok(()) => {}
                Err(Error::NotFound(_)) => {
                    for one in chunk.chunks(1) {
                        match self.call(deadline, request(one)).await {
                            Ok(()) => {}
                            Err(Error::NotFound(_)) => unknown.extend(one),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(unknown)
    }

    /// The availability zone of each of these subnets that exists (`DescribeSubnets`).
    pub async fn subnet_zones(
        &self,
        subnets: &[String],
        deadline: Deadline,
    ) -> Result<BTreeMap<String, String>> {
        if subnets.is_empty() {
            return Ok(BTreeMap::new());
        }
        let found = self
            .read(deadline, self.ec2.describe_subnets(subnets))
            .await?;
        if let Some(missing) = subnets.iter().find(|s| !found.contains_key(*s)) {
            return Err(phoenix_core::Error::invalid(
                "subnets",
                format!("subnet {missing} does not exist"),
            )
            .into());
        }
        Ok(found
            .into_iter()
            .filter_map(|(id, s)| Some((id, s.zone?)))
            .collect())
    }

    /// The version a launch template reference launches now (for one named by `$Latest`,
    /// `$Default` or no version: the number it resolves to), or why it cannot be used.
    pub async fn resolve_template(
        &self,
        template: &LaunchTemplateRef,
        deadline: Deadline,
    ) -> Result<String> {
        match self
            .read(deadline, self.ec2.describe_launch_template(template))
            .await?
        {
            Some(versions) => Ok(versions.resolve(template)),
            None => Err(Error::NotFound(format!(
                "launch template {} does not exist",
                template
                    .id
                    .as_deref()
                    .or(template.name.as_deref())
                    .unwrap_or("(unnamed)")
            ))),
        }
    }

    /// What EC2 reports about an AMI (name, owner, tags), or `None` if this account cannot see
    /// it. Image selectors and admission gates judge these facts.
    pub async fn describe_image(
        &self,
        image: &ImageId,
        deadline: Deadline,
    ) -> Result<Option<ImageFacts>> {
        self.read(deadline, self.ec2.describe_image(image.as_str()))
            .await
    }
}
