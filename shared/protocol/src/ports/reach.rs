//! The reach port: the EC2, ELB and Auto Scaling ports of a fleet that lives in another account
//! or region than phoenix (`phoenix_core::model::Location`). `phoenix_aws` assumes the fleet's
//! role there; the simulator has one account and region only.

use super::{AutoScaling, Ec2, Elb};
use crate::error::Result;
use phoenix_core::model::Location;
use std::future::Future;

pub trait Reach: Send + Sync {
    type Ec2: Ec2;
    type Elb: Elb;
    type AutoScaling: AutoScaling;
    /// The ports of `location` (never phoenix's own). A role that cannot be assumed is refused
    /// with the reason (not retryable); STS out of reach is retryable.
    fn reach(
        &self,
        location: &Location,
    ) -> impl Future<Output = Result<(Self::Ec2, Self::Elb, Self::AutoScaling)>> + Send;
}
