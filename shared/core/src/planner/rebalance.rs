//! Zones that came apart are brought back together, one instance at a time: when the fleet is
//! at capacity, with nothing pending and no rollout under way, and its largest zone has more
//! than one instance above its smallest, one instance is launched into the smallest zone — and
//! only there — and the scale-in that follows takes one from the largest (`scale`'s
//! `from_largest_zones`), once the new one is healthy.
//!
//! What holds: a rebalance is voluntary disruption: it waits for the windows and the hourly
//! budgets (overall and `rebalance`'s own); it never launches into a zone whose offerings EC2
//! refused within `UNAVAILABLE_FOR` (a zone that failed comes back only once EC2 launches there
//! again); the fleet exceeds its capacity by at most one for it, and never its budget's
//! `max_total`: without room to surge (`max_surge` 0), one instance is taken from the largest zone
//! first — only as `min_healthy` allows, as a rollout without surge does — and the launch that
//! makes the capacity up goes to the smallest zone (`spread`).

use super::tx::Tx;
use crate::model::{Instance, Reason};

impl Tx {
    pub(super) fn rebalance(&mut self) {
        let fleet = &self.fleet;
        if fleet.rollout.as_ref().is_some_and(|r| r.status.is_active())
            || !fleet.pending.is_empty()
            || fleet.breaker.is_some()
        {
            return;
        }
        let staying = fleet
            .live_instances()
            .filter(|i| i.disposal.is_none())
            .count() as u32;
        if staying != fleet.spec.capacity || fleet.live != staying {
            return;
        }
        let counts = self.zone_counts();
        if counts.len() < 2 {
            return;
        }
        let (Some(most), Some(least)) = (counts.values().max(), counts.values().min()) else {
            return;
        };
        if most - least <= 1 {
            return;
        }
        if self.hold().other
            || self.hourly_room() == Some(0)
            || self.hourly_room_for(Reason::Rebalance) == Some(0)
        {
            return;
        }
        let Some((zone, _)) = self.spread(1, &counts).into_iter().next() else {
            return;
        };
        let here = counts.get(&zone).copied().unwrap_or(0);
        if here + 1 >= *most {
            // The smallest zone with capacity left would not end up smaller than the largest.
            return;
        }
        let spot = self.markets(1, |_| true)[0];
        let offerings = self.offerings_for(&zone, &counts, true, spot);
        let Some(image) = self.launchable_image().filter(|_| !offerings.is_empty()) else {
            return;
        };
        let reason = format!(
            "rebalance zones: {} has {here}, the largest {most}",
            zone.as_deref().unwrap_or("the default zone")
        );
        if staying < self.fleet.budget().max_total {
            self.decide_launch(image, 1, reason, offerings);
            return;
        }
        // No room for one more: one goes from the largest zone first (not yet healthy, then the
        // oldest; never a protected one), if the healthy ones left are enough.
        let most = *most;
        let fleet = &self.fleet;
        let healthy = fleet
            .live_instances()
            .filter(|i| i.disposal.is_none() && i.is_healthy())
            .count() as u32;
        let largest: Option<&Instance> = fleet
            .live_instances()
            .filter(|i| i.disposal.is_none() && !i.is_held())
            .filter(|i| counts.get(&fleet.zone_of(i)).copied() == Some(most))
            .min_by_key(|i| (i.is_healthy(), i.launched_at, i.id.clone()));
        let Some(old) = largest else {
            return;
        };
        let left = healthy - u32::from(old.is_healthy());
        if left < self.min_healthy_for(Reason::Rebalance) || !self.room_to_touch() {
            return;
        }
        let id = old.id.clone();
        self.decide_terminate(&id, reason, None);
        self.count_for(Reason::Rebalance);
    }
}
