//! The planner as the controller calls it: `phoenix_core::planner`, unless the simulator swaps in
//! a deliberately broken one to prove its invariants catch what it breaks.

use phoenix_core::events::{Intent, QueuedIntent};
use phoenix_core::model::{Fleet, Observed, Timestamp};
use phoenix_core::planner::{self, Outcome, Step};

/// The planning the controller asks for, one method per moment of the protocol. Pure functions
/// of their arguments; the defaults are the core's planner.
pub trait Planner: Send + Sync {
    /// What EC2 says of one instance now, folded into its record.
    fn observe_instance(&self, fleet: &Fleet, observed: &Observed, now: Timestamp) -> Step {
        planner::observe_instance(fleet, observed, now)
    }

    /// An event's intent applied to the fleet (whole, or a record and one instance).
    fn apply_intent(
        &self,
        fleet: &Fleet,
        intent: &Intent,
        event_time: Timestamp,
        now: Timestamp,
    ) -> phoenix_core::Result<Step> {
        planner::apply_intent(fleet, intent, event_time, now)
    }

    /// An intent from the fleet's inbox applied (never refused: one that no longer applies is
    /// recorded as ignored).
    fn apply_queued(&self, fleet: &Fleet, queued: &QueuedIntent, now: Timestamp) -> Step {
        planner::apply_queued(fleet, queued, now)
    }

    /// A step's fleet reconciled with what EC2 reports.
    fn reconcile(&self, step: Step, observed: &[Observed], now: Timestamp) -> Step {
        step.then_reconcile(observed, now)
    }

    /// One part (`planner::outcome_parts`) of a step's outcomes recorded.
    fn record_outcome_part(
        &self,
        fleet: &Fleet,
        outcomes: &[Outcome],
        part: std::ops::Range<usize>,
        now: Timestamp,
    ) -> Step {
        planner::record_outcome_part(fleet, outcomes, part, now)
    }
}

/// `phoenix_core::planner` as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorePlanner;

impl Planner for CorePlanner {}
