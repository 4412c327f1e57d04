//! Instances that reach the fleet's `max_instance_lifetime` retire: they count as not matching
//! the spec, so `scale` replaces them as a rollout replaces old instances — launch first, taken
//! away only as healthy new ones cover them, within the surge limit, `min_healthy`, the hourly
//! budgets (overall and `lifetime`'s own), the rollout windows and the maintenance window.
//!
//! What holds: while any of those holds voluntary disruption back, no instance counts as aged
//! (so nothing is launched for one); a protected instance never ages; an instance ages at
//! `retires_at`, in the last tenth of its lifetime, so a fleet launched at once is spread out.

use super::tx::Tx;
use crate::model::{retires_at, Instance, Reason, Seconds};

impl Tx {
    /// The lifetime instances retire at now, if the fleet has one and voluntary disruption for
    /// age is allowed now.
    pub(super) fn aging(&self) -> Option<Seconds> {
        let lifetime = self.fleet.spec.max_instance_lifetime?;
        let maintenance_open = self
            .fleet
            .spec
            .maintenance_window
            .as_ref()
            .is_none_or(|w| w.opens(self.now) <= self.now);
        let allowed = maintenance_open
            && !self.hold().other
            && self.hourly_room() != Some(0)
            && self.hourly_room_for(Reason::Lifetime) != Some(0);
        allowed.then_some(lifetime)
    }

    /// Whether `i` is past its age under `aging` (`Tx::aging`).
    pub(super) fn aged(&self, aging: Option<Seconds>, i: &Instance) -> bool {
        aging.is_some_and(|l| !i.is_held() && retires_at(i, l) <= self.now)
    }
}
