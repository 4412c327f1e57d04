//! Budgets by reason (`policy.budgets`): how many instances may go for a rollout, for drift or
//! for a scale-in, inside the fleet's overall budget.
//!
//! What holds: a replacement for a reason leaves at least that reason's `min_healthy` (never
//! fewer than the overall one), and no more instances go for a reason within an hour than its
//! `max_replacements_per_hour`; the times of those replacements are kept on the fleet only for
//! reasons that have such a limit.

use super::tx::Tx;
use crate::model::{Reason, Rollout};
use chrono::Duration;

/// What a rollout's replacements count as: drift when it changes the launch definition alone.
pub(super) fn rollout_reason(r: &Rollout) -> Reason {
    if r.definition.is_some() && r.from.as_ref() == Some(&r.to) {
        Reason::Drift
    } else {
        Reason::Rollout
    }
}

impl Tx {
    /// The fewest healthy instances a replacement for `reason` leaves.
    pub(super) fn min_healthy_for(&self, reason: Reason) -> u32 {
        let overall = self.fleet.budget().min_healthy;
        self.fleet
            .spec
            .policy
            .budgets
            .min_healthy(reason, self.fleet.spec.capacity, overall)
    }

    /// How many more instances may go for `reason` this hour (none: no limit of its own).
    pub(super) fn hourly_room_for(&self, reason: Reason) -> Option<usize> {
        let limit = self
            .fleet
            .spec
            .policy
            .budgets
            .get(reason)?
            .max_replacements_per_hour?;
        let recent = self
            .fleet
            .disruptions_by_reason
            .get(&reason)
            .map_or(0, |ts| {
                ts.iter()
                    .filter(|t| **t + Duration::hours(1) > self.now)
                    .count()
            });
        Some((limit as usize).saturating_sub(recent))
    }

    /// Counts an instance taken away for `reason` against its hourly budget, if it has one.
    pub(super) fn count_for(&mut self, reason: Reason) {
        if self.hourly_room_for(reason).is_none() {
            self.fleet.disruptions_by_reason.remove(&reason);
            return;
        }
        let now = self.now;
        let times = self.fleet.disruptions_by_reason.entry(reason).or_default();
        times.retain(|t| *t + Duration::hours(1) > now);
        times.push(now);
    }
}
