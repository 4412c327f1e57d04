//! The simulated Elastic Load Balancing: target groups that list the instances registered with
//! them, report each healthy once it runs and passes its checks, and drain a deregistered one
//! for the group's deregistration delay, as AWS does (without connections to end it sooner).

use crate::ec2::Ec2;
use phoenix_core::model::{Lifecycle, TargetState, Timestamp};
use phoenix_core::InstanceId;
use phoenix_protocol::error::{Error, Result};
use phoenix_protocol::ports::elb::{Target, TargetGroup, TargetHealth};
use std::collections::BTreeMap;

/// A registration, or a deregistration draining until `draining_until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub since: Timestamp,
    pub draining_until: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub arn: String,
    pub delay: u64,
    pub targets: BTreeMap<String, Registration>,
}

/// The account's target groups, by ARN.
#[derive(Debug, Clone, Default)]
pub struct Elb {
    pub groups: BTreeMap<String, Group>,
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

    /// Drops drains that are over.
    pub fn advance(&mut self, now: Timestamp) {
        for g in self.groups.values_mut() {
            g.targets
                .retain(|_, r| r.draining_until.is_none_or(|until| until > now));
        }
    }

    pub fn health(&self, arn: &str, ec2: &Ec2, now: Timestamp) -> Result<Vec<TargetHealth>> {
        let g = self.groups.get(arn).ok_or_else(|| not_found(arn))?;
        Ok(g.targets
            .iter()
            .filter(|(_, r)| r.draining_until.is_none_or(|until| until > now))
            .map(|(id, r)| {
                let vm = InstanceId::parse(id).ok().and_then(|i| ec2.vms.get(&i));
                let state = match (r.draining_until, vm) {
                    (Some(_), _) => TargetState::Draining,
                    (None, Some(vm)) if vm.state != Lifecycle::Running => TargetState::Unavailable,
                    (None, Some(vm)) if ec2.world_healthy(vm, now) => TargetState::Healthy,
                    (None, Some(_)) if r.since + chrono::Duration::seconds(30) > now => {
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
        for t in targets {
            g.targets.insert(
                t.id.clone(),
                Registration {
                    since: now,
                    draining_until: None,
                },
            );
        }
        Ok(())
    }

    pub fn deregister(&mut self, arn: &str, targets: &[Target], now: Timestamp) -> Result<()> {
        let g = self.groups.get_mut(arn).ok_or_else(|| not_found(arn))?;
        let until = now + chrono::Duration::seconds(g.delay as i64);
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
    /// drains.
    pub fn listing(&self, id: &str, now: Timestamp) -> Vec<(String, Option<Timestamp>)> {
        self.groups
            .values()
            .filter_map(|g| {
                let r = g.targets.get(id)?;
                r.draining_until
                    .is_none_or(|until| until > now)
                    .then(|| (g.arn.clone(), r.draining_until))
            })
            .collect()
    }
}
