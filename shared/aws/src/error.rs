//! Errors of the adapters, classified so the edge can decide: retry (the invocation fails and
//! EventBridge/Lambda deliver again) or reject (the event is bad; retrying cannot help).

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use std::fmt::Debug;

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
    /// Network errors, timeouts, 5xx. Retryable.
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

    /// Classifies an SDK error by its AWS error code.
    pub fn from_sdk<E, R>(
        service: &'static str,
        err: aws_smithy_runtime_api::client::result::SdkError<E, R>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: Debug,
    {
        use aws_smithy_runtime_api::client::result::SdkError;
        let code = err.code().unwrap_or_default().to_string();
        let message = match &err {
            SdkError::ServiceError(e) => {
                let m = e.err().message().unwrap_or_default();
                if code.is_empty() {
                    m.to_string()
                } else {
                    format!("{code}: {m}")
                }
            }
            other => format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(other)
            ),
        };
        // The request id lets AWS support find the call; kept with the error wherever it goes
        // (history, report, logs).
        let message = match aws_sdk_ec2::operation::RequestId::request_id(err.meta()) {
            Some(id) => format!("{message} (request id {id})"),
            None => message,
        };
        let retryable_transport = matches!(
            err,
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        );
        classify(service, &code, message, retryable_transport)
    }
}

fn classify(service: &'static str, code: &str, message: String, transport: bool) -> Error {
    const THROTTLING: &[&str] = &[
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "ProvisionedThroughputExceededException",
        "RequestThrottled",
        "TooManyRequestsException",
        "SlowDown",
    ];
    const CAPACITY: &[&str] = &[
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "InstanceLimitExceeded",
    ];
    const TRANSIENT: &[&str] = &[
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "InternalServerError",
        "TransactionInProgressException",
        // EventBridge's and SQS's 5xx (found by the fault proxy: they were rejected as
        // permanent, sending a good event to the dead-letter queue).
        "InternalException",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    ];
    if transport {
        Error::Transient { service, message }
    } else if THROTTLING.contains(&code) {
        Error::Throttled { service, message }
    } else if CAPACITY.contains(&code) {
        Error::Capacity(message)
    } else if TRANSIENT.contains(&code) || code.is_empty() {
        Error::Transient { service, message }
    } else if code.ends_with(".NotFound") || code == "ResourceNotFoundException" {
        Error::NotFound(message)
    } else {
        Error::Permanent { service, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_error_codes_map_to_retry_classes() {
        let c = |code: &str| classify("ec2", code, "m".into(), false);
        assert!(matches!(c("RequestLimitExceeded"), Error::Throttled { .. }));
        assert!(matches!(
            c("InsufficientInstanceCapacity"),
            Error::Capacity(_)
        ));
        assert!(matches!(
            c("InvalidInstanceID.NotFound"),
            Error::NotFound(_)
        ));
        assert!(matches!(
            c("UnauthorizedOperation"),
            Error::Permanent { .. }
        ));
        assert!(matches!(c("InternalError"), Error::Transient { .. }));
        assert!(matches!(c("InternalException"), Error::Transient { .. }));
        assert!(c("RequestLimitExceeded").is_retryable());
        assert!(!c("UnauthorizedOperation").is_retryable());
        assert!(!Error::NotFound("x".into()).is_retryable());
        assert!(classify("ec2", "", "timeout".into(), true).is_retryable());
    }
}
