//! Deterministic simulation testing of phoenix, in the manner of FoundationDB's simulator and
//! TigerBeetle's VOPR: a seeded simulator of a fleet drives the real planner
//! (`phoenix_core::planner`) through the same protocol as the controller — load, plan, commit if
//! the version is unchanged, execute in order, record what EC2 answered — against a simulated EC2
//! and store, with faults, lost and duplicated events, interleaved and crashing invocations. After
//! every step it checks the invariants in `check`; a failing seed replays exactly.

pub mod check;
pub mod ec2;
pub mod rng;
pub mod sim;
pub mod store;
pub mod variant;

pub use sim::{Config, Report, Stats, Violation};
pub use variant::Variant;

/// Runs one seed to its end or its first violation.
pub fn run_seed(cfg: Config) -> Report {
    sim::Sim::new(cfg).run()
}

#[cfg(test)]
mod tests;
