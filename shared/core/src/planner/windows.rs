//! When voluntary disruption may happen: the fleet's rollout windows and freezes
//! (`model::schedule`) applied to what the planner decides.
//!
//! What holds: outside the windows, or in a freeze, no rollout wave starts and no instance is
//! taken away for a rollout, for drift, for a scale-in or for a planned retirement; a rollout
//! that would is marked waiting (once, with when it goes on) and its progress deadline starts
//! again when it may go on. Repairs of failed instances, urgent retirements (a Spot interruption,
//! maintenance about to start), a rollback and making up lost capacity always go on. An operator
//! may let one rollout go on regardless (`rollout resume --now`).

use super::tx::Tx;
use crate::events::Change;
use crate::model::{Closed, Openness, RolloutStatus, WindowWait};

/// What the windows hold back now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Hold {
    /// Rollout waves and the replacements they make (not a rollback).
    pub rollout: bool,
    /// Scale-in and planned retirements.
    pub other: bool,
}

impl Tx {
    /// Whether the fleet's windows and freezes allow voluntary disruption now.
    pub(super) fn openness(&self) -> Openness {
        let p = &self.fleet.spec.policy;
        if p.windows.is_empty() && p.freezes.is_empty() {
            return Openness::Open { closes: None };
        }
        p.disruption_at(self.now)
    }

    /// What is held back now, for the rollout in motion and for the rest. A target group the
    /// fleet names that does not exist holds back as a closed window does: phoenix cannot see
    /// what serves, so it takes nothing away that it need not.
    pub(super) fn hold(&self) -> Hold {
        if self.fleet.lb_missing.is_empty() && matches!(self.openness(), Openness::Open { .. }) {
            return Hold::default();
        }
        let rollout = match self.fleet.rollout.as_ref().filter(|r| r.status.is_active()) {
            Some(r) => r.status != RolloutStatus::RollingBack && !r.ignore_windows,
            None => true,
        };
        Hold {
            rollout,
            other: true,
        }
    }

    /// Marks the rollout waiting for its window (once), or, once it may go on, no longer waiting:
    /// its progress deadline then starts again, as the time it waited was not its to use.
    pub(super) fn note_window(&mut self, waiting: bool) {
        let now = self.now;
        let openness = self.openness();
        let missing_group = !self.fleet.lb_missing.is_empty();
        let describe = match self.fleet.lb_missing.iter().next() {
            Some(arn) => format!(
                "target group {} does not exist",
                crate::model::group_name(arn)
            ),
            None => openness.describe(&self.fleet.spec.policy.windows),
        };
        let Some(r) = self.active_rollout() else {
            return;
        };
        match (waiting, r.waiting.is_some()) {
            (true, false) => {
                let opens = match openness {
                    Openness::Closed { opens, .. } => opens,
                    Openness::Open { .. } => None,
                };
                let reason = match openness {
                    Openness::Closed {
                        reason: reason @ Closed::Freeze { .. },
                        ..
                    } if !missing_group => reason.to_string(),
                    _ => describe,
                };
                r.waiting = Some(WindowWait {
                    since: now,
                    reason: reason.clone(),
                    opens,
                });
                let rollout = r.id;
                self.changes.push(Change::RolloutWaiting {
                    rollout,
                    reason,
                    opens,
                });
            }
            (false, true) => {
                r.waiting = None;
                let rollout = r.id;
                self.changes.push(Change::RolloutProgressing { rollout });
                self.progressed();
            }
            _ => {}
        }
    }
}
