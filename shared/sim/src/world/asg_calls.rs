//! The Auto Scaling port's calls, served from the simulated Auto Scaling, with the faults of the
//! chaos phase.

use super::World;
use phoenix_protocol::error::{Error, Result};
use phoenix_protocol::ports::autoscaling::{Group, PROCESSES};

impl World {
    pub fn asg_describe(&mut self, name: &str) -> Result<Option<Group>> {
        if self.chaos_fault(self.service_faults.ec2_5xx) {
            return Err(super::internal_error(
                "autoscaling",
                "DescribeAutoScalingGroups",
            ));
        }
        Ok(self.autoscaling.describe(name))
    }

    /// DescribeInstanceRefreshes: no group of the simulated world is ever refreshed.
    pub fn asg_refresh_active(&mut self, name: &str) -> Result<bool> {
        match self.autoscaling.groups.contains_key(name) {
            true => Ok(false),
            false => Err(Error::Permanent {
                service: "autoscaling",
                message: format!("ValidationError: group {name} not found"),
            }),
        }
    }

    pub fn asg_tag(&mut self, name: &str, key: &str, value: &str) -> Result<()> {
        self.change("autoscaling", "CreateOrUpdateTags", |w| {
            w.autoscaling.tag(name, key, value)
        })
    }

    pub fn asg_suspend(&mut self, name: &str) -> Result<()> {
        self.change("autoscaling", "SuspendProcesses", |w| {
            w.autoscaling.suspend(name, &PROCESSES)
        })?;
        let who = self.who();
        self.note(format!(
            "{who} suspends Auto Scaling group {name}'s processes"
        ));
        Ok(())
    }

    pub fn asg_set_min(&mut self, name: &str, min: u32) -> Result<()> {
        self.change("autoscaling", "UpdateAutoScalingGroup", |w| {
            w.autoscaling.set_min(name, min)
        })
    }

    pub fn asg_detach(&mut self, name: &str, ids: &[String]) -> Result<Option<String>> {
        let who = self.who();
        let detached = self.change("autoscaling", "DetachInstances", |w| {
            w.autoscaling.detach(name, ids)
        })?;
        self.stats.detached += detached.len() as u64;
        let ids: Vec<&str> = detached.iter().map(|i| i.as_str()).collect();
        self.note(format!("{who} detaches {} from {name}", ids.join(" ")));
        Ok(None)
    }
}
