//! phoenix's functional core.
//!
//! Everything here is a pure function of its inputs: no I/O, no async, no clock reads, no AWS
//! types. The adapters in `phoenix-aws` load state, observe EC2, call into this crate, then apply
//! the commands it returns. That split is what lets the planner be tested with plain values and
//! driven by a deterministic simulator.
//!
//! Read it from the bottom up. The modules stand on floors, each importing only from the floors
//! below it, so no two modules import each other, directly or through others
//! (`tests/module_graph.rs` checks it):
//! 1. values: `error`, `ids`, `quantity` (with a capacity's bounds), `time`, `lifecycle` (an
//!    instance's lifecycle state and health);
//! 2. data, in this order: `notice` (what AWS says about an instance), `events` (what an event
//!    asks of a fleet, and the changes phoenix records), `model` (fleets, their specs, instances);
//! 3. decisions: `planner`, pure functions from a fleet and an event or an observation to a step;
//! 4. built on the data, and for `dryrun` and `images` on the planner: `history` and `timeline` (a
//!    fleet's past, replayed and drawn), `wire` (the shapes of the events phoenix publishes),
//!    `aws_events` and `patterns` (AWS's own events and the rules that route them), `dryrun` (a
//!    rollout planned ahead), `images` (which images a fleet follows and accepts).

// Values.
pub mod error;
pub mod ids;
pub mod lifecycle;
pub mod quantity;
pub mod time;

// Data.
pub mod events;
pub mod model;
pub mod notice;

// Decisions.
pub mod planner;

// Built on the above.
pub mod aws_events;
pub mod dryrun;
pub mod history;
pub mod images;
pub mod patterns;
pub mod timeline;
pub mod wire;

pub use error::{Error, Result};
pub use ids::{FleetName, ImageId, InstanceId};
