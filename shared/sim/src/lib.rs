//! Deterministic simulation testing of phoenix, in the manner of FoundationDB's simulator and
//! TigerBeetle's VOPR: the controller phoenix ships (`phoenix_protocol::Controller`, the same code
//! the Lambda functions run) over in-memory ports with the semantics of the real services, under
//! simulated time, with faults, lost and duplicated events, interleaved and crashing invocations.
//! After every step it checks the invariants; a failing seed replays exactly.
//!
//! From the bottom up: `rng` (the one source of randomness), `table`, `ec2`, `elb` and `asg` (the
//! simulated services), `books` (the table as the checks read it), `check` (the invariants on the
//! state), `traffic` (those of target groups and lifecycle hooks), `custody` (those of whose each
//! instance is: launched, adopted, given back or never phoenix's), `world` (the services, the
//! clock and the checks on each call, shared by the ports), `ports` (the protocol's ports on the
//! world), `executor` (invocations as tasks), `scenario` (what a seed draws), `start` (how its
//! fleet is created: applied, adopted, or taken over from an Auto Scaling group), `variant`
//! (broken planners, protocols and worlds), `sim` (the driver).

pub mod asg;
pub mod books;
pub mod check;
pub mod custody;
pub mod ec2;
pub mod elb;
pub mod executor;
pub mod ports;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod start;
pub mod table;
pub mod traffic;
pub mod variant;
pub mod world;

pub use sim::{Config, Report};
pub use variant::Variant;
pub use world::{Stats, Violation};

/// Runs one seed to its end or its first violation.
pub fn run_seed(cfg: Config) -> Report {
    sim::Sim::new(cfg).run()
}

#[cfg(test)]
mod tests;
