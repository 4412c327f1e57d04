//! The detail parsers one by one: the first byte picks the kind of event (each of AWS's that
//! phoenix parses, and each of phoenix's own), the rest is its detail.
//!
//! `cargo +nightly fuzz run detail`

#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix_core::aws_events::{self as aws, AwsEvent};
use phoenix_core::events::{Envelope, Intent};
use serde_json::Value;

const KINDS: [(&str, &str); 14] = [
    (aws::EC2, aws::AMI_STATE_CHANGE),
    (aws::IMAGE_BUILDER, aws::IMAGE_BUILDER_STATE_CHANGE),
    (aws::CLOUDWATCH, aws::ALARM_STATE_CHANGE),
    (aws::EC2, aws::INSTANCE_STATE_CHANGE),
    (aws::EC2, aws::SPOT_INTERRUPTION),
    (aws::EC2, aws::REBALANCE_RECOMMENDATION),
    (aws::HEALTH, aws::HEALTH_EVENT),
    (aws::EC2, aws::API_CALL),
    ("phoenix", "ImageReady"),
    ("phoenix", "HealthCheckFailed"),
    ("phoenix", "HealthCheckPassed"),
    ("phoenix", "ScaleRequested"),
    ("phoenix", "ReconcileRequested"),
    ("phoenix", "RolloutControl"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(detail) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let (source, detail_type) = KINDS[usize::from(pick) % KINDS.len()];
    let mut env = Envelope::new("fuzz", source, detail_type, chrono_epoch(), detail);
    env.resources = vec!["arn:aws:imagebuilder:us-east-1:123456789012:image/web/1.0.0/1".into()];
    let reason = match AwsEvent::from_envelope(&env) {
        Some(parsed) => parsed.err().map(|e| e.to_string()),
        None => Intent::from_envelope(&env).err().map(|e| e.to_string()),
    };
    if let Some(reason) = reason {
        assert!(!reason.trim().is_empty(), "an error without a reason");
    }
});

fn chrono_epoch() -> phoenix_core::model::Timestamp {
    phoenix_core::model::Timestamp::UNIX_EPOCH
}
