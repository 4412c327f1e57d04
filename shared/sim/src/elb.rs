//! The simulated Elastic Load Balancing: target groups that list the instances registered with
//! them, report each healthy once it runs and passes its checks, and drain a deregistered one
//! for the group's deregistration delay, as AWS does (without connections to end it sooner).
//! Registering a target already registered changes nothing; an instance EC2 terminated is
//! deregistered by AWS itself.
//!
//! A fault deletes a group for a while: phoenix's calls about it fail with `TargetGroupNotFound`
//! until its stack makes it again, under the same ARN (standing for the stack's name) and without
//! the registrations it had, as a group made anew. What it listed when it was deleted is kept
//! meanwhile (draining on): what phoenix could not read then.

use crate::ec2::Ec2;
use chrono::Duration;
use phoenix_core::model::{FleetSpec, Lifecycle, Observed, TargetState, Targets, Timestamp};
use phoenix_core::InstanceId;
use phoenix_protocol::error::{Error, Result};
use phoenix_protocol::ports::elb::{Target, TargetGroup, TargetHealth};
use std::collections::BTreeMap;

/// A registration, or a deregistration draining until `draining_until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub since: Timestamp,
    pub draining_until: Option<Timestamp>,
    /// `DescribeTargetHealth` has reported it `healthy` since it was registered.
    pub reported_healthy: bool,
}

impl Registration {
    /// Registered, or draining until after `now`.
    pub fn listed(&self, now: Timestamp) -> bool {
        self.draining_until.is_none_or(|until| until > now)
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub arn: String,
    pub delay: u64,
    pub targets: BTreeMap<String, Registration>,
    /// When it was last restored after a deletion.
    pub restored_at: Option<Timestamp>,
}

/// The account's target groups, by ARN.
#[derive(Debug, Clone, Default)]
pub struct Elb {
    pub groups: BTreeMap<String, Group>,
    /// Groups deleted for a while, with when they come back.
    pub deleted: BTreeMap<String, (Group, Timestamp)>,
}

fn not_found(arn: &str) -> Error {
    Error::NotFound(format!("TargetGroupNotFound: {arn}"))
}

impl Elb {
    pub fn add_group(&mut self, arn: &str, delay: u64) {
        self.groups.insert(
            arn.to_string(),
            Group {
                arn: arn.to_string(),
                delay,
                targets: BTreeMap::new(),
                restored_at: None,
            },
        );
    }

    pub fn describe(&self, arn: &str) -> Option<TargetGroup> {
        self.groups.get(arn).map(|g| TargetGroup {
            arn: g.arn.clone(),
            target_type: "instance".into(),
            vpc: Some("vpc-sim".into()),
            port: Some(80),
            deregistration_delay: g.delay,
        })
    }

    /// A group's deregistration delay, deleted or not.
    pub fn delay(&self, arn: &str) -> Option<u64> {
        self.groups
            .get(arn)
            .or_else(|| self.deleted.get(arn).map(|(g, _)| g))
            .map(|g| g.delay)
    }

    /// Deletes a group until `until`.
    pub fn delete(&mut self, arn: &str, until: Timestamp) {
        if let Some(g) = self.groups.remove(arn) {
            self.deleted.insert(arn.to_string(), (g, until));
        }
    }

    /// Drops drains that are over and registrations of instances EC2 terminated; restores the
    /// deleted groups whose time has come (all of them with `all`). Returns the groups restored.
    pub fn advance(&mut self, now: Timestamp, ec2: &Ec2, all: bool) -> Vec<String> {
        let back: Vec<String> = self
            .deleted
            .iter()
            .filter(|(_, (_, until))| all || *until <= now)
            .map(|(arn, _)| arn.clone())
            .collect();
        for arn in &back {
            if let Some((mut g, _)) = self.deleted.remove(arn) {
                g.restored_at = Some(now);
                g.targets.clear();
                self.groups.insert(arn.clone(), g);
            }
        }
        let terminated = |id: &str| {
            InstanceId::parse(id)
                .ok()
                .and_then(|i| ec2.vms.get(&i))
                .is_none_or(|vm| vm.state == Lifecycle::Terminated)
        };
        let groups = self
            .groups
            .values_mut()
            .chain(self.deleted.values_mut().map(|(g, _)| g));
        for g in groups {
            g.targets.retain(|id, r| r.listed(now) && !terminated(id));
        }
        back
    }

    /// What `DescribeTargetHealth` answers about a group's targets.
    pub fn states(&self, arn: &str, ec2: &Ec2, now: Timestamp) -> Result<Vec<TargetHealth>> {
        let g = self.groups.get(arn).ok_or_else(|| not_found(arn))?;
        Ok(g.targets
            .iter()
            .filter(|(_, r)| r.listed(now))
            .map(|(id, r)| {
                let vm = InstanceId::parse(id).ok().and_then(|i| ec2.vms.get(&i));
                let state = match (r.draining_until, vm) {
                    (Some(_), _) => TargetState::Draining,
                    (None, Some(vm)) if vm.state != Lifecycle::Running => TargetState::Unavailable,
                    (None, Some(vm)) if ec2.world_healthy(vm, now) => TargetState::Healthy,
                    (None, Some(_)) if r.since + Duration::seconds(30) > now => {
                        TargetState::Initial
                    }
                    (None, Some(_)) => TargetState::Unhealthy {
                        reason: "Target.FailedHealthChecks".into(),
                    },
                    (None, None) => TargetState::Unavailable,
                };
                TargetHealth {
                    id: id.clone(),
                    state,
                }
            })
            .collect())
    }

    /// `DescribeTargetHealth`: `states`, remembering which registrations were reported healthy.
    pub fn health(&mut self, arn: &str, ec2: &Ec2, now: Timestamp) -> Result<Vec<TargetHealth>> {
        let out = self.states(arn, ec2, now)?;
        if let Some(g) = self.groups.get_mut(arn) {
            for t in out.iter().filter(|t| t.state == TargetState::Healthy) {
                if let Some(r) = g.targets.get_mut(&t.id) {
                    r.reported_healthy = true;
                }
            }
        }
        Ok(out)
    }

    pub fn register(
        &mut self,
        arn: &str,
        targets: &[Target],
        ec2: &Ec2,
        now: Timestamp,
    ) -> Result<()> {
        let g = self.groups.get_mut(arn).ok_or_else(|| not_found(arn))?;
        for t in targets {
            let running = InstanceId::parse(&t.id)
                .ok()
                .and_then(|i| ec2.vms.get(&i))
                .is_some_and(|vm| vm.state == Lifecycle::Running);
            if !running {
                return Err(Error::Permanent {
                    service: "elasticloadbalancing",
                    message: format!("InvalidTarget: {} is not in a running state", t.id),
                });
            }
        }
        // A target already registered stays as it is; one draining is registered anew.
        for t in targets {
            let registered = g
                .targets
                .get(&t.id)
                .is_some_and(|r| r.draining_until.is_none());
            if !registered {
                g.targets.insert(
                    t.id.clone(),
                    Registration {
                        since: now,
                        draining_until: None,
                        reported_healthy: false,
                    },
                );
            }
        }
        Ok(())
    }

    pub fn deregister(&mut self, arn: &str, targets: &[Target], now: Timestamp) -> Result<()> {
        let g = self.groups.get_mut(arn).ok_or_else(|| not_found(arn))?;
        let until = now + Duration::seconds(g.delay as i64);
        for t in targets {
            if let Some(r) = g.targets.get_mut(&t.id) {
                if r.draining_until.is_none() {
                    r.draining_until = Some(until);
                }
            }
        }
        Ok(())
    }

    /// The groups that list the instance now (registered, or draining), with until when it
    /// drains; `deleted`: the deleted groups too, as they listed it when they were deleted.
    pub fn listing(
        &self,
        id: &str,
        now: Timestamp,
        deleted: bool,
    ) -> Vec<(String, Option<Timestamp>)> {
        let deleted = self.deleted.values().map(|(g, _)| g).filter(|_| deleted);
        self.groups
            .values()
            .chain(deleted)
            .filter_map(|g| {
                let r = g.targets.get(id)?;
                r.listed(now).then(|| (g.arn.clone(), r.draining_until))
            })
            .collect()
    }

    /// What the spec's groups that exist report about each instance, as the protocol puts it
    /// next to what EC2 reports (`TargetGroups::observe`), without being a call.
    pub fn observe(&self, spec: &FleetSpec, observed: &mut [Observed], ec2: &Ec2, now: Timestamp) {
        let mut by_instance: BTreeMap<String, Targets> = BTreeMap::new();
        for g in spec.target_groups() {
            for t in self.states(&g.arn, ec2, now).unwrap_or_default() {
                by_instance
                    .entry(t.id)
                    .or_default()
                    .insert(g.arn.clone(), t.state);
            }
        }
        for o in observed {
            o.targets = by_instance.remove(o.id.as_str()).unwrap_or_default();
        }
    }
}
