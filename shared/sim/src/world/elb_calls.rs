//! The ELBv2 port's calls, served from the simulated target groups, with the checks each allows:
//! a registration only of what EC2 runs, and only once its launching hook let it (`traffic`).

use super::World;
use phoenix_core::model::TargetState;
use phoenix_core::InstanceId;
use phoenix_protocol::error::{Error, Result};
use phoenix_protocol::ports::elb::{Target, TargetGroup, TargetHealth};

impl World {
    /// A throttled ELB call (the chaos phase's EC2 throttling stands for the account's API
    /// limits).
    fn elb_throttled(&mut self, call: &str) -> Result<()> {
        if self.chaos && self.ec2.throttles(self.now, &mut self.rng) {
            return Err(Error::Throttled {
                service: "elasticloadbalancing",
                message: format!("Throttling ({call})"),
            });
        }
        Ok(())
    }

    pub fn elb_describe(&mut self, arn: &str) -> Result<Option<TargetGroup>> {
        self.elb_throttled("DescribeTargetGroups")?;
        if let Some(left) = self.time_left() {
            if let Some(inv) = self.invocation() {
                inv.group_looks.push(left);
            }
        }
        Ok(self.elb.describe(arn))
    }

    pub fn elb_health(&mut self, arn: &str) -> Result<Vec<TargetHealth>> {
        self.elb_throttled("DescribeTargetHealth")?;
        let now = self.now;
        if let Some(inv) = self.invocation() {
            inv.groups_read.get_or_insert(now);
        }
        let out = self.elb.health(arn, &self.ec2, self.now)?;
        // A group's health check failing an instance is a report as the health checker's are
        // (with `elb` in the health check, phoenix fails it by it): it costs the slot, even once
        // the cause has passed (a zone back up before the pass commits).
        for t in &out {
            if matches!(t.state, TargetState::Unhealthy { .. }) {
                let vm = InstanceId::parse(&t.id)
                    .ok()
                    .and_then(|id| self.ec2.vms.get_mut(&id));
                if let Some(vm) = vm {
                    vm.reported = true;
                }
            }
        }
        Ok(out)
    }

    pub fn elb_register(&mut self, arn: &str, targets: &[Target]) -> Result<Option<String>> {
        self.elb_throttled("RegisterTargets")?;
        let who = self.who();
        for t in targets {
            let Ok(id) = InstanceId::parse(&t.id) else {
                continue;
            };
            if let Some((kind, problem)) = self.traffic.check_register(&self.books, &id, self.now) {
                self.violate(kind, format!("{who}: {problem}"));
            }
        }
        self.elb.register(arn, targets, &self.ec2, self.now)?;
        let ids: Vec<&str> = targets.iter().map(|t| t.id.as_str()).collect();
        self.note(format!(
            "{who} registers {} with {}",
            ids.join(" "),
            phoenix_core::model::group_name(arn)
        ));
        Ok(None)
    }

    pub fn elb_deregister(&mut self, arn: &str, targets: &[Target]) -> Result<Option<String>> {
        self.elb_throttled("DeregisterTargets")?;
        self.elb.deregister(arn, targets, self.now)?;
        let who = self.who();
        let ids: Vec<&str> = targets.iter().map(|t| t.id.as_str()).collect();
        self.note(format!(
            "{who} deregisters {} from {}",
            ids.join(" "),
            phoenix_core::model::group_name(arn)
        ));
        Ok(None)
    }
}
