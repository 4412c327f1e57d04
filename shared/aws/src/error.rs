//! AWS's errors classified at the edge, into the protocol's classes: retry (the invocation fails
//! and EventBridge/Lambda deliver again) or reject (the event is bad; retrying cannot help).

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use std::fmt::Debug;

pub use phoenix_protocol::error::{Error, Result};

/// Classifies an SDK error by its AWS error code.
pub fn sdk_error<E, R>(
    service: &'static str,
    err: aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> Error
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
        // The type is not offered in the zone (or not to this account there).
        "Unsupported",
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
    } else if code.ends_with(".NotFound")
        || code == "ResourceNotFoundException"
        || code == "TargetGroupNotFound"
    {
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
