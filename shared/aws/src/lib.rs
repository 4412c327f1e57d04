//! phoenix's adapters and controller: DynamoDB state (`store`), EC2 (`compute`), EventBridge
//! (`bus`) behind small traits, the `controller` that runs plan → commit → execute → record, the
//! Lambda edge (`lambda`), and the local stack on the AWS emulator (`local`).

pub mod bus;
pub mod compute;
pub mod config;
pub mod controller;
pub mod error;
pub mod intake;
pub mod lambda;
pub mod local;
pub mod metrics;
pub mod store;
pub mod telemetry;

pub use controller::{AwsController, Controller, FleetOutcome, FleetReport, Report};
pub use error::{Error, Result};
