//! How a notice (`crate::notice`: what AWS says about an instance phoenix did not cause) becomes
//! a replacement.
//!
//! Two paths, both through the planner's machinery and under the fleet's disruption budget:
//!
//! - **Failure** (stopped outside phoenix): the instance is marked unhealthy with the reason and
//!   repaired, exactly as when a reconcile observes it stopped — the breaker counts it and may hold
//!   the repair back.
//! - **Retirement** (Spot interruption, rebalance, maintenance, taint): the instance is not broken,
//!   it has to go. A `Retirement` is recorded on it and it is replaced launch-first as soon as the
//!   surge limit leaves room (and its maintenance window is open); until then every reconcile
//!   tries again. Retirements are not failures: the breaker neither counts them nor holds them
//!   back. The breaker exists to stop replacing instances whose failures probably share a cause
//!   (a bad image, a broken zone), where replacements would fail the same way; a Spot
//!   interruption is EC2 taking its capacity back, and the instance goes whether phoenix acts or
//!   not — holding its replacement back would only lose capacity, silently. An *urgent*
//!   retirement (the instance goes at a known time that is near: a Spot interruption, or
//!   maintenance starting within `URGENT_LEAD`) also ignores the hourly budget and, without surge
//!   room, terminates first so the replacement can launch in the same pass (the instance serves
//!   for minutes at most anyway). A planned one (rebalance, taint, maintenance further off) only
//!   ever launches first, within the hourly budget.

use super::tx::Tx;
use crate::events::Change;
use crate::ids::InstanceId;
use crate::model::{Health, Lifecycle, Timestamp};
use crate::notice::{Notice, Retirement, Taint, TaintMode, MAX_TAINTS};

/// Applies a notice to one instance of the fleet being planned.
pub(super) fn apply(tx: &mut Tx, id: &InstanceId, notice: &Notice) {
    let now = tx.now;
    let Some(inst) = tx.fleet.instances.get(id) else {
        tx.ignore(format!("{id} is no longer part of the fleet"));
        return;
    };
    if !inst.is_live() {
        tx.ignore(format!("{id} was already replaced"));
        return;
    }
    if inst.disposal.is_some() {
        tx.ignore(format!("phoenix is already replacing {id}"));
        return;
    }
    let already_failed = inst.is_failed();
    match notice {
        Notice::State { state } if state.is_gone() => {
            tx.changes.push(Change::Vanished {
                instance: id.clone(),
                state: state.as_str().into(),
            });
            tx.bury(id);
        }
        Notice::State {
            state: state @ (Lifecycle::Pending | Lifecycle::Running),
        } => tx.ignore(format!("{id} is {}: nothing to replace", state.as_str())),
        Notice::State { .. } if already_failed => {
            tx.ignore(format!("{id} already failed"));
        }
        Notice::State { state } => {
            tx.set_health(
                id,
                Health::broken(format!("instance {} outside phoenix", state.as_str())),
            );
            tx.health_gate();
            tx.repair(id);
        }
        Notice::Interruption { at, .. } => {
            tx.note_interruption(id);
            let r = retirement(notice, now, None, Some(*at));
            schedule(tx, id, r);
        }
        Notice::Rebalance => schedule(tx, id, retirement(notice, now, None, None)),
        Notice::Maintenance { start, .. } => {
            // Inside the maintenance window if the fleet has one, unless the change starts first.
            let not_before = tx
                .fleet
                .spec
                .maintenance_window
                .as_ref()
                .map(|w| w.opens(now))
                .filter(|open| *open > now && *open < *start);
            schedule(tx, id, retirement(notice, now, not_before, Some(*start)));
        }
        Notice::Mutated { who, what } => {
            let mode = tx.fleet.spec.taint;
            if mode == TaintMode::Off {
                tx.ignore(format!(
                    "{what} on {id} by {who}: taint is off for this fleet"
                ));
                return;
            }
            if let Some(i) = tx.instance_mut(id) {
                i.taints.push(Taint {
                    who: who.clone(),
                    what: what.clone(),
                    at: now,
                });
                let excess = i.taints.len().saturating_sub(MAX_TAINTS);
                i.taints.drain(..excess);
            }
            tx.changes.push(Change::Tainted {
                instance: id.clone(),
                who: who.clone(),
                what: what.clone(),
            });
            if mode == TaintMode::Replace {
                schedule(tx, id, retirement(notice, now, None, None));
            }
        }
    }
}

fn retirement(
    notice: &Notice,
    now: Timestamp,
    not_before: Option<Timestamp>,
    deadline: Option<Timestamp>,
) -> Retirement {
    Retirement {
        reason: notice.describe(),
        noticed_at: now,
        not_before,
        deadline,
    }
}

/// Records that an instance must go, then replaces it if it can now. An instance already due
/// for retirement keeps the earlier of the two schedules.
fn schedule(tx: &mut Tx, id: &InstanceId, mut r: Retirement) {
    let earlier = tx
        .fleet
        .instances
        .get(id)
        .and_then(|i| i.retirement.clone());
    if let Some(e) = earlier {
        // Due as soon as either schedule is.
        r.not_before = match (e.not_before, r.not_before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
        r.deadline = match (e.deadline, r.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        r.reason = if e.reason == r.reason {
            e.reason
        } else {
            format!("{}; {}", e.reason, r.reason)
        };
        r.noticed_at = e.noticed_at;
    }
    tx.changes.push(Change::RetirementScheduled {
        instance: id.clone(),
        reason: r.reason.clone(),
        not_before: r.not_before,
        deadline: r.deadline,
    });
    if let Some(i) = tx.instance_mut(id) {
        i.retirement = Some(r);
    }
    tx.retire(id);
}
