//! What phoenix asks of the load balancers' target groups, over the `Elb` port: what each group
//! reports about the fleet's instances, registering instances with every group, deregistering
//! them (and how long they may drain), and whether a fleet file's groups can be used at all.
//!
//! What holds: a group that does not exist is reported, never taken for "no instance listed";
//! deregistering from a group that no longer exists succeeds (already gone is success for a
//! delete), and its delay is not waited for; registering skips such a group (the pass that
//! observes the fleet records it missing).

use crate::compute::Compute;
use crate::error::{Error, Result};
use crate::ports::ec2::Ec2;
use crate::ports::elb::{Elb, Target, MAX_TARGETS_PER_CALL};
use crate::ports::Deadline;
use phoenix_core::model::{group_name, FleetSpec, TargetGroupRef, Targets, TAG_FLEETS};
use phoenix_core::InstanceId;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// What the fleet's target groups report, as one pass reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// By instance id: what each group that lists it says.
    pub by_instance: BTreeMap<String, Targets>,
    /// Groups that do not exist, with why.
    pub missing: Vec<(String, String)>,
}

/// What a deregistration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deregistered {
    /// The longest deregistration delay of the groups, in seconds.
    pub delay: u64,
    pub request_ids: Vec<String>,
}

/// phoenix's use of ELBv2.
#[derive(Debug, Clone)]
pub struct TargetGroups<L> {
    elb: L,
}

fn targets(group: &TargetGroupRef, ids: &[InstanceId]) -> Vec<Target> {
    ids.iter()
        .map(|id| Target {
            id: id.to_string(),
            port: group.port,
        })
        .collect()
}

impl<L: Elb> TargetGroups<L> {
    pub fn new(elb: L) -> Self {
        TargetGroups { elb }
    }

    pub fn elb(&self) -> &L {
        &self.elb
    }

    /// What every group of the spec reports (one `DescribeTargetHealth` per group).
    pub async fn observe(&self, spec: &FleetSpec) -> Result<Seen> {
        let mut seen = Seen::default();
        for g in spec.target_groups() {
            match self.elb.target_health(&g.arn).await {
                Ok(list) => {
                    for t in list {
                        seen.by_instance
                            .entry(t.id)
                            .or_default()
                            .insert(g.arn.clone(), t.state);
                    }
                }
                Err(Error::NotFound(why)) => {
                    warn!(fleet = %spec.name, group = g.name(), %why, "target group not found");
                    seen.missing.push((g.arn.clone(), why));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(seen)
    }

    /// Registers the instances with every group of the spec that exists.
    pub async fn register(&self, spec: &FleetSpec, ids: &[InstanceId]) -> Result<Vec<String>> {
        let mut request_ids = Vec::new();
        for g in spec.target_groups() {
            for chunk in ids.chunks(MAX_TARGETS_PER_CALL) {
                match self.elb.register_targets(&g.arn, &targets(g, chunk)).await {
                    Ok(id) => {
                        info!(group = g.name(), count = chunk.len(), "RegisterTargets");
                        request_ids.extend(id);
                    }
                    Err(Error::NotFound(why)) => {
                        warn!(group = g.name(), %why, "not registered: target group not found");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(request_ids)
    }

    /// Deregisters the instances from every group of the spec; they drain for the longest
    /// deregistration delay of the groups that exist.
    pub async fn deregister(&self, spec: &FleetSpec, ids: &[InstanceId]) -> Result<Deregistered> {
        let mut out = Deregistered::default();
        for g in spec.target_groups() {
            let Some(group) = self.elb.describe_target_group(&g.arn).await? else {
                continue;
            };
            for chunk in ids.chunks(MAX_TARGETS_PER_CALL) {
                match self
                    .elb
                    .deregister_targets(&g.arn, &targets(g, chunk))
                    .await
                {
                    Ok(id) => {
                        info!(group = g.name(), count = chunk.len(), "DeregisterTargets");
                        out.request_ids.extend(id);
                    }
                    // Already gone is success for a delete.
                    Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            out.delay = out.delay.max(group.deregistration_delay);
        }
        Ok(out)
    }

    /// Whether the spec's groups can be used: each exists, takes instances as targets, is in the
    /// VPC of the fleet's subnets, and carries the tag phoenix's IAM policy requires. The reason when not, naming the group.
    pub async fn check<E: Ec2>(&self, spec: &FleetSpec, compute: &Compute<E>) -> Result<()> {
        let groups = spec.target_groups();
        if groups.is_empty() {
            return Ok(());
        }
        let vpcs: BTreeMap<String, String> = compute
            .subnets(&spec.subnets, Deadline::NONE)
            .await?
            .into_iter()
            .map(|(id, s)| (id, s.vpc))
            .collect();
        let refuse = |why: String| -> Error {
            phoenix_core::Error::invalid("load_balancing.target_groups", why).into()
        };
        for s in &spec.subnets {
            if !vpcs.contains_key(s) {
                return Err(phoenix_core::Error::invalid(
                    "subnets",
                    format!("subnet {s} does not exist"),
                )
                .into());
            }
        }
        for g in groups {
            let name = group_name(&g.arn);
            let Some(found) = self.elb.describe_target_group(&g.arn).await? else {
                return Err(refuse(format!(
                    "target group {name} does not exist ({})",
                    g.arn
                )));
            };
            if found.target_type != "instance" {
                return Err(refuse(format!(
                    "target group {name} has target type {}; phoenix registers instances \
                     (target type instance)",
                    found.target_type
                )));
            }
            if let Some(vpc) = &found.vpc {
                if let Some((subnet, other)) = vpcs.iter().find(|(_, v)| *v != vpc) {
                    return Err(refuse(format!(
                        "target group {name} is in {vpc}, but subnet {subnet} is in {other}"
                    )));
                }
            }
            let tags = self.elb.target_group_tags(&g.arn).await?;
            if !tags.contains_key(TAG_FLEETS) {
                return Err(refuse(format!(
                    "target group {name} is not tagged {TAG_FLEETS}: phoenix registers instances \
                     only in groups that carry it (add it with the fleets it serves as its value)"
                )));
            }
            if g.port.is_none() && found.port.is_none() {
                return Err(refuse(format!(
                    "target group {name} has no port: give one (`{{arn: ..., port: 8080}}`)"
                )));
            }
        }
        Ok(())
    }
}
