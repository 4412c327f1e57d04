//! The bus port on EventBridge: publishing phoenix events, resending only the entries PutEvents
//! reports as failed.

use crate::error::{sdk_error, Error, Result};
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_eventbridge::Client;
use phoenix_core::events::SOURCE;
pub use phoenix_protocol::ports::bus::{Bus, OutgoingEvent, MAX_PUT_EVENTS};

/// Attempts for entries that PutEvents reports as failed (the others succeeded; resend only these).
const ENTRY_ATTEMPTS: usize = 3;

#[derive(Clone, Debug)]
pub struct EventBridgeBus {
    client: Client,
    bus: String,
}

impl EventBridgeBus {
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        EventBridgeBus {
            client,
            bus: bus.into(),
        }
    }
}

impl Bus for EventBridgeBus {
    async fn publish(&self, events: &[OutgoingEvent]) -> Result<Vec<String>> {
        let mut ids = vec![String::new(); events.len()];
        for (chunk_no, chunk) in events.chunks(MAX_PUT_EVENTS).enumerate() {
            let mut todo: Vec<usize> = (0..chunk.len()).collect();
            let mut last_error = String::new();
            for _ in 0..ENTRY_ATTEMPTS {
                if todo.is_empty() {
                    break;
                }
                let entries = todo
                    .iter()
                    .map(|&i| {
                        let e = &chunk[i];
                        PutEventsRequestEntry::builder()
                            .event_bus_name(&self.bus)
                            .source(SOURCE)
                            .detail_type(&e.detail_type)
                            .detail(e.detail.to_string())
                            .set_resources(Some(e.resources.clone()).filter(|r| !r.is_empty()))
                            .build()
                    })
                    .collect();
                let out = self
                    .client
                    .put_events()
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sdk_error("eventbridge", e))?;
                let results = out.entries.unwrap_or_default();
                let mut failed = Vec::new();
                for (pos, &i) in todo.iter().enumerate() {
                    match results.get(pos).and_then(|r| r.event_id.clone()) {
                        Some(id) => ids[chunk_no * MAX_PUT_EVENTS + i] = id,
                        None => {
                            last_error = results
                                .get(pos)
                                .map(|r| {
                                    format!(
                                        "{}: {}",
                                        r.error_code.as_deref().unwrap_or("?"),
                                        r.error_message.as_deref().unwrap_or("")
                                    )
                                })
                                .unwrap_or_else(|| "no result".into());
                            failed.push(i);
                        }
                    }
                }
                todo = failed;
            }
            if !todo.is_empty() {
                return Err(Error::Transient {
                    service: "eventbridge",
                    message: format!("{} events not accepted: {last_error}", todo.len()),
                });
            }
        }
        Ok(ids)
    }
}
