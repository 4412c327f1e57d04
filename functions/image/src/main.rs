//! The `image` function: new-image events (`ImageReady`): start or continue a rolling replacement.
//!
//! A thin shell: SDK clients are built once at cold start, then every invocation parses the
//! EventBridge envelope and hands it to the shared controller. No logic lives here.

use lambda_runtime::{service_fn, LambdaEvent};
use phoenix_aws::{lambda, telemetry};
use phoenix_core::patterns::Function;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init_json();
    let controller = phoenix_aws::from_env().await;
    let controller = &controller;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        lambda::handle(controller, Function::Image, event)
    }))
    .await
}
