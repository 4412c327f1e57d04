//! phoenix's protocol: the controller that carries an event from its intent to EC2 and back to the
//! record — plan, commit, execute, record — with its retries, inbox, deadlines and notices.
//!
//! Floors, each using only those below it:
//! - `ports` — what the protocol needs from the world, each as small as its use: the state table
//!   (DynamoDB's terms), EC2, the event bus, Image Builder, and time (clock, sleep, jitter).
//! - `store` — phoenix's state in the table: the items, the conditional transaction of each
//!   change, the event records that make delivery at-least-once safe.
//! - `budget` — the EC2 call budget of an account and region, its counters in the table.
//! - `compute` — phoenix's use of EC2, under the budget: observe by tag, launch with tags and token, terminate only
//!   what is re-validated as the fleet's.
//! - `targets` — phoenix's use of the load balancers' target groups: what they report,
//!   registering, deregistering (and for how long instances drain), checking a fleet file's.
//! - `controller` — the protocol itself, over the four, calling the core's planner through
//!   `planner` (a seam the simulator uses to drive broken planners, as `variant` are broken
//!   protocols).
//!
//! No AWS SDK and no wall clock: `phoenix_aws` plugs in the AWS adapters and real time, the
//! simulator in-memory ones and simulated time, and both run this same code.

pub mod budget;
pub mod compute;
pub mod controller;
pub mod error;
pub mod planner;
pub mod ports;
pub mod store;
pub mod targets;
pub mod variant;

pub use controller::{Apis, Controller, FleetOutcome, FleetReport, Intake, Preview, Report};
pub use error::{Error, Result};
pub use ports::{Deadline, Ports, DEADLINE_RESERVE};
