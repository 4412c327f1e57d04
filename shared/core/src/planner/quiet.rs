//! When a fleet may go without a full pass: `quiet_until`.
//!
//! The schedule looks at every fleet each minute. A fleet with nothing in flight, whose last pass
//! decided nothing, needs no full pass (every instance record read, every instance described)
//! while EC2 and its target groups report what they reported then and no timer of the planner
//! falls due: the schedule's quick look compares a digest of what they report with the one kept
//! beside the record, and passes in full only when it differs, or once `quiet_until` is reached.
//!
//! What holds: `quiet_until(fleet, observed, now) = Some(t)` only if `reconcile(fleet, observed,
//! s)` decides nothing for every whole minute `s` from `now` up to (not including) `t`, and
//! nothing is in flight that the quick look does not see (a launch not yet seen healthy, whose
//! status checks only a full pass reads; a drain; a rollout's waves; a takeover; queued intents).
//! The planner itself is asked, minute by minute, so every timer it has — an instance's lifetime,
//! a window opening, a budget's hour running out, a quarantine's expiry — ends the quiet without
//! being listed here. Any commit ends it too: the quiet is recorded for the fleet's version.

use super::reconcile::reconcile;
use crate::lifecycle::Health;
use crate::model::{Fleet, Observed, RolloutStatus, Timestamp};
use chrono::Duration;

/// The longest a fleet goes without a full pass, quiet or not: the safety net under the digest.
pub const QUIET_HORIZON: Duration = Duration::minutes(60);
/// The planner is asked at this step (the schedule's period): a timer falls due at most this
/// late.
pub const QUIET_PROBE: Duration = Duration::minutes(1);

/// Until when a fleet whose pass at `now` saw `observed` and decided nothing stays as it is if
/// EC2 keeps reporting `observed`: the first probe at which the planner would act, or
/// `now + QUIET_HORIZON`. None: something is in flight, or the planner acts within a probe.
pub fn quiet_until(fleet: &Fleet, observed: &[Observed], now: Timestamp) -> Option<Timestamp> {
    if !at_rest(fleet) {
        return None;
    }
    let mut at = now;
    while at < now + QUIET_HORIZON {
        if !reconcile(fleet, observed, at).is_noop() {
            break;
        }
        at += QUIET_PROBE;
    }
    (at > now + QUIET_PROBE).then_some(at)
}

/// Nothing in flight that only a full pass would see move.
fn at_rest(fleet: &Fleet) -> bool {
    let rollout_moving = fleet.rollout.as_ref().is_some_and(|r| {
        matches!(
            r.status,
            RolloutStatus::InProgress | RolloutStatus::RollingBack
        )
    });
    fleet.complete
        && fleet.inbox.is_empty()
        && fleet.pending.is_empty()
        && fleet.takeover.is_none()
        && !rollout_moving
        && fleet
            .live_instances()
            .all(|i| i.health != Health::Unknown && i.disposal.is_none())
}
