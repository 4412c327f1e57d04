//! A simulated Auto Scaling answering the protocol's Auto Scaling port as the real API does:
//! groups of instances launched outside phoenix, DescribeAutoScalingGroups, tags on a group,
//! SuspendProcesses, UpdateAutoScalingGroup of the minimum size (which may not exceed the desired
//! capacity), and DetachInstances with the desired capacity decremented — all or nothing: one
//! instance not in the group fails the call (a `ValidationError` "is not part of", which the AWS
//! adapter reads as `NotFound`), and so does a desired capacity that would fall below the
//! minimum. A member EC2 terminated leaves the group, and the desired capacity stays.
//!
//! The groups are passive: no instance refresh, no scaling, no replacement of what leaves (every
//! takeover suspends those processes before it adopts anything; a group never taken over is
//! left as it is).

use crate::ec2::Ec2;
use crate::variant::WorldBug;
use phoenix_core::model::TAG_FLEET;
use phoenix_core::InstanceId;
use phoenix_protocol::error::{Error, Result};
use phoenix_protocol::ports::autoscaling::{Group as Described, Member};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Default)]
pub struct Group {
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// Its instances, in service.
    pub members: BTreeSet<InstanceId>,
    pub suspended: BTreeSet<String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct AutoScaling {
    pub groups: BTreeMap<String, Group>,
    /// A promise this Auto Scaling breaks (`Variant::World`), if any.
    pub bug: Option<WorldBug>,
}

fn validation(message: String) -> Error {
    Error::Permanent {
        service: "autoscaling",
        message: format!("ValidationError: {message}"),
    }
}

impl AutoScaling {
    fn group(&mut self, name: &str) -> Result<&mut Group> {
        self.groups
            .get_mut(name)
            .ok_or_else(|| validation(format!("group {name} not found")))
    }

    /// DescribeAutoScalingGroups of one group.
    pub fn describe(&self, name: &str) -> Option<Described> {
        let g = self.groups.get(name)?;
        Some(Described {
            name: name.to_string(),
            min: g.min,
            max: g.max,
            desired: g.desired,
            instances: g
                .members
                .iter()
                .map(|id| Member {
                    id: id.to_string(),
                    lifecycle: "InService".into(),
                })
                .collect(),
            target_groups: Vec::new(),
            load_balancers: Vec::new(),
            suspended: g.suspended.iter().cloned().collect(),
            tags: g.tags.clone(),
        })
    }

    /// CreateOrUpdateTags of one tag on a group.
    pub fn tag(&mut self, name: &str, key: &str, value: &str) -> Result<()> {
        self.group(name)?
            .tags
            .insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// SuspendProcesses of these.
    pub fn suspend(&mut self, name: &str, processes: &[&str]) -> Result<()> {
        let g = self.group(name)?;
        g.suspended.extend(processes.iter().map(|p| p.to_string()));
        Ok(())
    }

    /// UpdateAutoScalingGroup of the minimum size alone.
    pub fn set_min(&mut self, name: &str, min: u32) -> Result<()> {
        let g = self.group(name)?;
        if min > g.desired {
            return Err(validation(format!(
                "min size {min} above the desired capacity {}",
                g.desired
            )));
        }
        g.min = min;
        Ok(())
    }

    /// DetachInstances with the desired capacity decremented by as many. Returns the instances
    /// detached.
    pub fn detach(&mut self, name: &str, ids: &[String]) -> Result<Vec<InstanceId>> {
        let bug = self.bug;
        let g = self.group(name)?;
        let mut out = Vec::new();
        for id in ids {
            match InstanceId::parse(id).ok().filter(|i| g.members.contains(i)) {
                Some(i) => out.push(i),
                None => {
                    return Err(Error::NotFound(format!(
                        "ValidationError: The instance {id} is not part of Auto Scaling group \
                         {name}"
                    )))
                }
            }
        }
        let desired = g
            .desired
            .checked_sub(out.len() as u32)
            .filter(|d| *d >= g.min);
        let Some(desired) = desired else {
            return Err(validation(format!(
                "detaching {} would take the desired capacity {} below the min size {}",
                out.len(),
                g.desired,
                g.min
            )));
        };
        if bug == Some(WorldBug::DetachNothing) {
            return Ok(out);
        }
        g.desired = desired;
        for i in &out {
            g.members.remove(i);
        }
        Ok(out)
    }

    /// Members EC2 terminated leave their group.
    pub fn advance(&mut self, ec2: &Ec2) {
        for g in self.groups.values_mut() {
            g.members
                .retain(|id| ec2.vms.get(id).is_some_and(|vm| vm.alive()));
        }
    }

    /// The instances still in a group a fleet took over (one tagged `phoenix:fleet`), with the
    /// group's name.
    pub fn left_in_takeovers(&self) -> impl Iterator<Item = (&str, &InstanceId)> {
        self.groups
            .iter()
            .filter(|(_, g)| g.tags.contains_key(TAG_FLEET))
            .flat_map(|(name, g)| g.members.iter().map(move |id| (name.as_str(), id)))
    }

    /// The group `id` is in, if it is in one.
    pub fn group_of(&self, id: &InstanceId) -> Option<&str> {
        self.groups
            .iter()
            .find(|(_, g)| g.members.contains(id))
            .map(|(name, _)| name.as_str())
    }
}
