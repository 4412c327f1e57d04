//! The EC2 call budget: phoenix's EC2 requests in one account and region stay under a share of
//! the account's rate (`per_second`), however many invocations run at once — EC2's rate is the
//! account's, shared with every other tool in it.
//!
//! How: each second has a counter in the table (`items::budget_key`). A request is admitted by
//! adding to the current second's counter on the condition that it stays within `per_second` —
//! one conditional write, which no number of concurrent writers can overrun. An invocation asks
//! for `CHUNK` at a time and spends what it got within that second only (what is left when the
//! second ends is lost, never carried over), so most requests cost no write. A spent second makes
//! the caller wait for the next, up to `MAX_WAIT`; past it, the request fails as throttled
//! (retryable) without having been sent. A paginated request's pages after the first are
//! counted after the fact. EC2 throttling a request anyway (other tools spent the account's rate)
//! backs every invocation off at once: the next `BACKOFF_SECONDS` seconds are each half spent
//! in advance, which no one has to read anything to obey. Counters expire (TTL) after a minute.
//!
//! What holds if the process dies: a counter only ever overstates what was sent (admitted, then
//! not sent), so dying at any point costs at most a second's unused budget.

use crate::error::{Error, Result};
use crate::ports::images::BoxFuture;
use crate::ports::table::{Condition, Table, Transacted, Write};
use crate::ports::{Deadline, Time};
use crate::store::items::{budget_key, n};
use std::sync::Mutex;
use std::time::Duration;

/// Requests an invocation asks to be admitted at once (when it needs fewer).
pub const CHUNK: u32 = 4;
/// The longest a request waits for a second with room in it.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// Seconds half spent in advance after EC2 throttled a request.
pub const BACKOFF_SECONDS: i64 = 10;
/// How long a second's counter is kept.
const COUNTER_TTL_SECONDS: i64 = 60;
/// The service a refusal names (`Error::Throttled`): phoenix's own limit, not EC2's answer.
pub const SERVICE: &str = "ec2 call budget";
/// phoenix's share of EC2's non-mutating rate (its bucket refills 20 requests a second per
/// account and region) when none is configured.
pub const DEFAULT_PER_SECOND: u32 = 10;

/// What `Compute` asks of a call budget.
pub trait Admit: Send + Sync {
    /// Returns once `calls` more requests fit the budget; `Error::Throttled` if none did within
    /// `MAX_WAIT`, or before the invocation's reserve (`deadline`) would begin (nothing was
    /// sent).
    fn admit(&self, calls: u32, deadline: Deadline) -> BoxFuture<'_, Result<()>>;
    /// Counts requests already sent (a paginated request's later pages), without waiting.
    fn count(&self, calls: u32) -> BoxFuture<'_, ()>;
    /// EC2 throttled a request: back every invocation off.
    fn throttled(&self) -> BoxFuture<'_, ()>;
}

/// The budget of one account and region, kept in `table`.
pub struct Budget<T, C> {
    table: T,
    time: C,
    /// Which account and region (`Location::describe`).
    location: String,
    per_second: u32,
    /// Admitted and not yet spent: (second, requests). Shared by the invocations of the
    /// process (one at a time in Lambda; many in the simulator and the local dispatcher).
    credit: Mutex<(i64, u32)>,
    /// The last second this process backed off in (once a second is enough).
    backed_off: Mutex<i64>,
}

impl<T: Table, C: Time> Budget<T, C> {
    pub fn new(table: T, time: C, location: String, per_second: u32) -> Self {
        Budget {
            table,
            time,
            location,
            per_second: per_second.max(1),
            credit: Mutex::new((i64::MIN, 0)),
            backed_off: Mutex::new(i64::MIN),
        }
    }

    async fn admit_calls(&self, calls: u32, deadline: Deadline) -> Result<()> {
        // More than a second's budget at once waits for a whole second.
        let calls = calls.clamp(1, self.per_second);
        let started = self.time.now();
        'second: loop {
            let now = self.time.now();
            let second = now.timestamp();
            // Waiting, or writing, took time: a request must not start in the reserve.
            if deadline.is_short(now) {
                return Err(self.spent("only within the invocation's reserve"));
            }
            if self.spend(second, calls) {
                return Ok(());
            }
            let chunk = calls.max(CHUNK).min(self.per_second);
            for ask in [chunk, calls] {
                let most_before = i64::from(self.per_second - ask);
                if self.add(second, ask, Some(most_before)).await? {
                    *self.credit.lock().unwrap_or_else(|e| e.into_inner()) = (second, ask - calls);
                    // Admitted in a second that is over by now: the request would reach EC2 in
                    // the next, uncounted there. That second is asked again.
                    if self.time.now().timestamp() != second {
                        continue 'second;
                    }
                    if deadline.is_short(self.time.now()) {
                        return Err(self.spent("only within the invocation's reserve"));
                    }
                    return Ok(());
                }
                if ask == calls {
                    break;
                }
            }
            // Into the next second, spread over its first 50 ms.
            let into_second = u64::from(now.timestamp_subsec_millis());
            let wait =
                Duration::from_millis(1000u64.saturating_sub(into_second) + self.time.jitter(50));
            let after = now + chrono::Duration::from_std(wait).unwrap_or_default();
            let waited = (after - started).to_std().unwrap_or_default();
            if waited > MAX_WAIT || deadline.is_short(after) {
                return Err(self.spent("too late"));
            }
            self.time.sleep(wait).await;
        }
    }

    /// The request refused: throttled, as EC2 would (retryable), having sent nothing.
    fn spent(&self, admitted: &str) -> Error {
        Error::Throttled {
            service: SERVICE,
            message: format!(
                "phoenix's EC2 call budget in {} ({} a second) is spent: room came {admitted}; \
                 the request was not sent",
                self.location, self.per_second
            ),
        }
    }

    /// Takes `calls` from what this process was admitted for `second`, if enough is left.
    fn spend(&self, second: i64, calls: u32) -> bool {
        let mut credit = self.credit.lock().unwrap_or_else(|e| e.into_inner());
        if credit.0 == second && credit.1 >= calls {
            credit.1 -= calls;
            return true;
        }
        false
    }

    /// Adds `by` to `second`'s counter, if it held at most `most_before` (any, without one);
    /// whether it was added.
    async fn add(&self, second: i64, by: u32, most_before: Option<i64>) -> Result<bool> {
        let write = Write::Add {
            key: budget_key("ec2", &self.location, second),
            add: ("calls", i64::from(by)),
            set: vec![("expires_at", n(second + COUNTER_TTL_SECONDS))],
            condition: most_before.map(|m| {
                Condition::Or(vec![
                    Condition::NotExists("calls"),
                    Condition::Le("calls", n(m)),
                ])
            }),
        };
        match self.table.transact(vec![write]).await? {
            Transacted::Committed { .. } => Ok(true),
            Transacted::Cancelled(_) => Ok(false),
        }
    }

    async fn count_calls(&self, calls: u32) {
        let second = self.time.now().timestamp();
        // Best effort: a count lost overstates the budget by a page or two for one second.
        let _ = self.add(second, calls, None).await;
    }

    async fn back_off(&self) {
        let second = self.time.now().timestamp();
        {
            let mut last = self.backed_off.lock().unwrap_or_else(|e| e.into_inner());
            if *last == second {
                return;
            }
            *last = second;
        }
        let half = self.per_second.div_ceil(2);
        for ahead in 1..=BACKOFF_SECONDS {
            let _ = self.add(second + ahead, half, None).await;
        }
    }
}

impl<T: Table, C: Time> Admit for Budget<T, C> {
    fn admit(&self, calls: u32, deadline: Deadline) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.admit_calls(calls, deadline))
    }

    fn count(&self, calls: u32) -> BoxFuture<'_, ()> {
        Box::pin(self.count_calls(calls))
    }

    fn throttled(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.back_off())
    }
}
