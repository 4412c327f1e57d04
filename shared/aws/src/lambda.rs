//! The edge between the Lambda runtime and the controller: the EventBridge envelope in, a report
//! or a classified error out.

use crate::error::Error;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Diagnostic, LambdaEvent};
use phoenix_core::events::Envelope;
use phoenix_core::patterns::Function;
use phoenix_protocol::{Controller, Deadline, Ports, Report};
use serde_json::Value;
use tracing::{error, info, Instrument};

/// Reads an EventBridge envelope, with a reason when it is not one.
pub fn envelope_from_json(payload: Value) -> Result<Envelope, Error> {
    let bad = |why: String| {
        Error::Invalid(phoenix_core::Error::Event(format!(
            "malformed EventBridge event: {why}"
        )))
    };
    let ev: EventBridgeEvent<Value> =
        serde_json::from_value(payload).map_err(|e| bad(e.to_string()))?;
    Ok(Envelope {
        id: ev
            .id
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("missing field `id`".into()))?,
        time: ev.time.ok_or_else(|| bad("missing field `time`".into()))?,
        source: ev.source,
        detail_type: ev.detail_type,
        account: ev.account.filter(|s| !s.is_empty()),
        region: ev.region.filter(|s| !s.is_empty()),
        resources: ev.resources.unwrap_or_default(),
        detail: ev.detail,
    })
}

/// The Lambda error for a failed event. Retryable ones make Lambda and EventBridge deliver it
/// again; the others are named `Rejected` so the DLQ and alarms show them apart.
pub fn diagnostic(e: &Error) -> Diagnostic {
    let kind = if e.is_retryable() {
        "phoenix.Retryable"
    } else {
        "phoenix.Rejected"
    };
    Diagnostic {
        error_type: kind.into(),
        error_message: e.to_string(),
    }
}

/// One invocation of `function`: parse, handle, log with the event id as correlation id.
pub async fn handle<P: Ports>(
    controller: &Controller<P>,
    function: Function,
    event: LambdaEvent<Value>,
) -> Result<Report, Diagnostic> {
    let env = envelope_from_json(event.payload).map_err(|e| {
        error!(error = %e, "rejected");
        diagnostic(&e)
    })?;
    let span = tracing::info_span!("event", event_id = %env.id, detail_type = %env.detail_type, request_id = %event.context.request_id);
    let started = std::time::Instant::now();
    // The context's deadline: near it the controller starts no new work and leaves the rest to
    // the next reconcile; the event's in-progress record expires with it.
    let deadline = Deadline::from_epoch_millis(event.context.deadline);
    async {
        match controller
            .handle_within(&env, Some(function), deadline)
            .await
        {
            Ok(report) => {
                crate::metrics::emit(function.name(), &report, started.elapsed());
                info!(fleets = report.fleets.len(), "handled");
                Ok(report)
            }
            Err(e) => {
                error!(error = %e, retryable = e.is_retryable(), "failed");
                Err(diagnostic(&e))
            }
        }
    }
    .instrument(span)
    .await
}
