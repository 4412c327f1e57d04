//! The event bus port: publishing phoenix's own events (source `phoenix`).

use crate::error::Result;
use serde_json::Value;
use std::future::Future;

/// PutEvents takes at most 10 entries per call.
pub const MAX_PUT_EVENTS: usize = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingEvent {
    pub detail_type: String,
    pub detail: Value,
    pub resources: Vec<String>,
}

/// The event bus port.
pub trait Bus: Send + Sync {
    /// Publishes events with source `phoenix`; returns their ids, in order.
    fn publish(&self, events: &[OutgoingEvent])
        -> impl Future<Output = Result<Vec<String>>> + Send;
}
