//! The core's error type: every variant is a permanent, caller-caused problem (bad input or a
//! request that makes no sense for the fleet as it is). Transient failures only exist at the edges.

/// Errors of the functional core. Each names what was wrong, so it can be shown to a user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A value did not have the required shape (ids, names, capacities, percentages).
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// An event could not be parsed into a phoenix intent.
    #[error("rejected event: {0}")]
    Event(String),
    /// A fleet file could not be read.
    #[error("invalid fleet file: {0}")]
    FleetFile(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
