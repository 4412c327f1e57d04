//! The ports: what the protocol needs from the world, each as small as the protocol's use of it.
//! `Table` (DynamoDB), `Ec2`, `Elb` (target groups), `AutoScaling` (a group taken over), `Bus`
//! (EventBridge) and `ImageResolver` (Image Builder) are AWS APIs in their own terms; `Reach`
//! gives the EC2, ELB and Auto Scaling ports of another account or region; `Time` is the clock,
//! sleeping and jitter. Production adapters live in
//! `phoenix_aws`, in-memory ones with the same semantics in the simulator.

pub mod autoscaling;
pub mod bus;
pub mod ec2;
pub mod elb;
pub mod images;
pub mod reach;
pub mod table;
pub mod time;

pub use autoscaling::AutoScaling;
pub use bus::{Bus, OutgoingEvent};
pub use ec2::Ec2;
pub use elb::Elb;
pub use images::{ImageResolver, StaticImageResolver};
pub use reach::Reach;
pub use table::Table;
pub use time::{Deadline, Time, DEADLINE_RESERVE};

/// One set of adapters, named together so the controller has one type parameter.
pub trait Ports: 'static {
    /// Cloned for the EC2 call budget, which keeps its counters in the table.
    type Table: Table + Clone;
    type Ec2: Ec2;
    type Elb: Elb;
    type AutoScaling: AutoScaling;
    /// The same three ports in another account or region.
    type Reach: Reach<Ec2 = Self::Ec2, Elb = Self::Elb, AutoScaling = Self::AutoScaling>;
    type Bus: Bus;
    type Time: Time + Clone;
}
