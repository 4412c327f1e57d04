//! The ELBv2 port's calls, served from the simulated target groups, with the check each allows:
//! a registration only of what EC2 runs.

use super::World;
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
        Ok(self.elb.describe(arn))
    }

    pub fn elb_health(&mut self, arn: &str) -> Result<Vec<TargetHealth>> {
        self.elb_throttled("DescribeTargetHealth")?;
        self.elb.advance(self.now);
        self.elb.health(arn, &self.ec2, self.now)
    }

    pub fn elb_register(&mut self, arn: &str, targets: &[Target]) -> Result<Option<String>> {
        self.elb_throttled("RegisterTargets")?;
        self.elb.register(arn, targets, &self.ec2, self.now)?;
        self.note(format!("register {} with {}", targets.len(), arn));
        Ok(None)
    }

    pub fn elb_deregister(&mut self, arn: &str, targets: &[Target]) -> Result<Option<String>> {
        self.elb_throttled("DeregisterTargets")?;
        self.elb.deregister(arn, targets, self.now)?;
        self.note(format!("deregister {} from {}", targets.len(), arn));
        Ok(None)
    }
}
