//! Time, as the protocol sees it: the clock, sleeping, the jitter that spreads racing writers
//! apart, and the invocation's deadline. Nothing in the protocol reads a wall clock or sleeps on
//! its own: the Lambda edge passes real time (`phoenix_aws::SystemTime`), the simulator simulated
//! time, and the same code runs on both.

use phoenix_core::model::Timestamp;
use std::future::Future;
use std::time::Duration;

/// The time source port.
pub trait Time: Send + Sync {
    /// Now.
    fn now(&self) -> Timestamp;
    /// Resolves once `d` has passed.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send;
    /// A number in `0..n` (`n` > 0), as random as the source allows: jitter for backoff, so
    /// writers that lost a race to each other do not retry in step. Seeded in the simulator.
    fn jitter(&self, n: u64) -> u64;
}

/// Time an invocation keeps in hand at its deadline: no command (launch, terminate) and no new
/// fleet is started with less than this left, so what was started can finish and its outcome be
/// committed (a few calls of well under a second each, with retries) before Lambda stops the
/// process. The functions' timeout is 60 s (infra/template.yaml).
pub const DEADLINE_RESERVE: Duration = Duration::from_secs(10);

/// When the current invocation must be done: the Lambda context's deadline, or none (the CLI,
/// the local dispatcher). A point on the same clock as `Time::now`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadline(Option<Timestamp>);

impl Deadline {
    /// No deadline.
    pub const NONE: Deadline = Deadline(None);

    pub fn at(t: Timestamp) -> Self {
        Deadline(Some(t))
    }

    /// From the Lambda context's deadline (milliseconds since the epoch).
    pub fn from_epoch_millis(ms: u64) -> Self {
        Deadline(chrono::DateTime::from_timestamp_millis(
            i64::try_from(ms).unwrap_or(i64::MAX),
        ))
    }

    pub fn instant(&self) -> Option<Timestamp> {
        self.0
    }

    /// Time left at `now` (zero once past); `None` without a deadline.
    pub fn remaining(&self, now: Timestamp) -> Option<Duration> {
        self.0.map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
    }

    /// For work that may run into the reserve (reads, which start nothing): short only once
    /// the deadline itself is reached.
    pub fn into_reserve(self) -> Deadline {
        Deadline(self.0.map(|t| t + DEADLINE_RESERVE))
    }

    /// Less than `DEADLINE_RESERVE` left at `now`: start nothing new.
    pub fn is_short(&self, now: Timestamp) -> bool {
        self.remaining(now).is_some_and(|r| r < DEADLINE_RESERVE)
    }

    /// Reached: not even an outcome is recorded any more.
    pub fn is_past(&self, now: Timestamp) -> bool {
        self.remaining(now) == Some(Duration::ZERO)
    }
}
