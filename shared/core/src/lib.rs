//! phoenix's functional core.
//!
//! Everything here is a pure function of its inputs: no I/O, no async, no clock reads, no AWS
//! types. The adapters in `phoenix-aws` load state, observe EC2, call into this crate, then apply
//! the commands it returns. That split is what lets the planner be tested with plain values and
//! driven by a deterministic simulator.

pub mod aws_events;
pub mod dryrun;
pub mod error;
pub mod events;
pub mod history;
pub mod ids;
pub mod images;
pub mod lifecycle;
pub mod model;
pub mod notice;
pub mod patterns;
pub mod planner;
pub mod quantity;
pub mod time;
pub mod timeline;
pub mod wire;

pub use error::{Error, Result};
pub use ids::{FleetName, ImageId, InstanceId};
