//! Logs: JSON lines (one object per line, for CloudWatch Logs Insights), level from `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// JSON logs to stdout, as Lambda functions should write them.
pub fn init_json() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        // The span list carries the runtime's span (AWS request id, X-Ray trace id) and ours
        // (EventBridge event id, detail-type): every line of an invocation can be correlated.
        .with_current_span(true)
        .with_target(false)
        .without_time() // Lambda stamps every line itself.
        .try_init();
}

/// Human-readable logs to stderr (CLI, local stack), quiet unless `RUST_LOG` asks.
pub fn init_human(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
