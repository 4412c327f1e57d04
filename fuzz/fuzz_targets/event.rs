//! Any bytes as an EventBridge delivery: the envelope, then the parser its source and
//! detail-type select (AWS's events, then phoenix's own). Every input must end in a meaning or an
//! error with a reason; a panic is a finding.
//!
//! `cargo +nightly fuzz run event ../tests/fixtures/aws ../tests/fixtures/phoenix`

#![no_main]

use aws_lambda_events::eventbridge::EventBridgeEvent;
use libfuzzer_sys::fuzz_target;
use phoenix_core::aws_events::AwsEvent;
use phoenix_core::events::{Envelope, Intent};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(ev) = serde_json::from_slice::<EventBridgeEvent<Value>>(data) else {
        return;
    };
    let (Some(id), Some(time)) = (ev.id, ev.time) else {
        return;
    };
    let env = Envelope {
        id,
        source: ev.source,
        detail_type: ev.detail_type,
        time,
        account: ev.account,
        region: ev.region,
        resources: ev.resources.unwrap_or_default(),
        detail: ev.detail,
    };
    let reason = match AwsEvent::from_envelope(&env) {
        Some(parsed) => parsed.err().map(|e| e.to_string()),
        None => Intent::from_envelope(&env).err().map(|e| e.to_string()),
    };
    if let Some(reason) = reason {
        assert!(!reason.trim().is_empty(), "an error without a reason");
    }
    let _ = phoenix_core::aws_events::identity(&env);
});
