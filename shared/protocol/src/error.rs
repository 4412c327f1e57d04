//! Errors of the protocol, classified so the edge can decide: retry (the invocation fails and
//! EventBridge/Lambda deliver again) or reject (the event is bad; retrying cannot help). The
//! adapters turn AWS's error codes into these classes (`phoenix_aws::error`); the simulator makes
//! them directly.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is wrong (bad event, bad fleet file, unknown id). Not retryable.
    #[error(transparent)]
    Invalid(#[from] phoenix_core::Error),
    /// A fleet, instance or image that does not exist. Not retryable.
    #[error("{0}")]
    NotFound(String),
    /// The event was handled before (same id, same content); its intent is not applied again.
    #[error("event {0} was already handled")]
    Duplicate(String),
    /// Another invocation applied this event's intent and is still carrying it out (its record is
    /// `INPROGRESS` and its time has not run out): nothing to do here.
    #[error("event {0} is being handled by another invocation")]
    InFlight(String),
    /// An earlier invocation applied this event's intent but its time ran out before it recorded
    /// the outcome (it died or was cut short): the intent is not applied again, the fleet is
    /// reconciled to finish the work.
    #[error("event {0} was applied by an invocation that did not finish")]
    Unfinished(String),
    /// The invocation's remaining time is too short to start more work; the event is delivered
    /// again (retryable) or, if its intent is already committed, the next reconcile finishes.
    #[error("{0}")]
    Deadline(String),
    /// Someone else changed the fleet since it was read; re-read and re-plan.
    #[error("fleet {0} changed concurrently")]
    Conflict(String),
    /// AWS asked us to slow down. Retryable.
    #[error("throttled by {service}: {message}")]
    Throttled {
        service: &'static str,
        message: String,
    },
    /// EC2 has no capacity for the request right now. Retryable later.
    #[error("no capacity: {0}")]
    Capacity(String),
    /// A request AWS refused for good (permissions, invalid parameters). Not retryable.
    #[error("{service} refused the request: {message}")]
    Permanent {
        service: &'static str,
        message: String,
    },
    /// Network errors, timeouts, 5xx: the request may or may not have been carried out.
    /// Retryable.
    #[error("{service} failed: {message}")]
    Transient {
        service: &'static str,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether delivering the same event again could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Conflict(_)
                | Error::Deadline(_)
                | Error::Throttled { .. }
                | Error::Capacity(_)
                | Error::Transient { .. }
        )
    }

    /// The event has a record already: handled, in flight, or applied and unfinished.
    pub fn is_seen_before(&self) -> bool {
        matches!(
            self,
            Error::Duplicate(_) | Error::InFlight(_) | Error::Unfinished(_)
        )
    }
}
