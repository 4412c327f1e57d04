//! Settings and SDK clients, built once per process (cold start) and cloned into every handler.

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use std::time::Duration;

/// Where phoenix keeps its state and publishes its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// DynamoDB table (`PHOENIX_TABLE`, default `phoenix`).
    pub table: String,
    /// EventBridge bus name or ARN (`PHOENIX_BUS`, default `default`).
    pub bus: String,
}

impl Settings {
    pub fn from_env() -> Self {
        let var = |k: &str, d: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        Settings {
            table: var("PHOENIX_TABLE", "phoenix"),
            bus: var("PHOENIX_BUS", "default"),
        }
    }
}

/// Loads the standard AWS configuration chain (environment, profile, container/instance role),
/// which also honours `AWS_ENDPOINT_URL` — how the CLI, the functions and the tests reach the
/// local emulator with the same code as production.
///
/// Retries: the SDK's *standard* mode with 4 attempts (exponential backoff with jitter, and a
/// retry quota so a struggling service is not hammered). Adaptive mode would add client-side rate
/// limiting, which only pays off for one long-lived client issuing bursts; a Lambda invocation
/// makes a handful of calls. Timeouts keep a hung call from eating the whole invocation.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(4))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

/// Configuration for the local emulator: its endpoint, a fixed region and static test credentials,
/// with the same retry and timeout settings as production.
pub async fn emulator_sdk_config(endpoint: &str) -> SdkConfig {
    let creds =
        aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "phoenix-emulator");
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .retry_config(RetryConfig::standard().with_max_attempts(4))
        .load()
        .await
}
