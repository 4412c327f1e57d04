//! What handling an event did, per fleet: returned by the functions, printed by the CLI, turned
//! into metrics at the Lambda edge.

use phoenix_core::events::Change;
use phoenix_core::model::Fleet;
use phoenix_core::{FleetName, InstanceId};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub event_id: String,
    pub detail_type: String,
    pub fleets: Vec<FleetReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    pub fleet: FleetName,
    pub outcome: FleetOutcome,
    pub version: u64,
    pub changes: Vec<Change>,
    pub launched: Vec<InstanceId>,
    pub terminated: Vec<InstanceId>,
    /// AWS calls that failed; the fleet is consistent and the next reconcile retries them.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetOutcome {
    /// Changes were committed (and carried out).
    Changed,
    /// Nothing to do.
    Unchanged,
    /// Nothing to do, seen by the schedule's quick look: the fleet is quiet and nothing EC2 or
    /// its target groups report changed (`controller::sweep`).
    Quiet,
    /// This event was handled before; its intent was not applied again. If the earlier delivery
    /// did not finish (its record expired in progress) the fleet was reconciled, and `changes`
    /// lists what that did; otherwise nothing was done.
    Duplicate,
    /// Another invocation is handling this event right now: nothing was done.
    InFlight,
    /// The event's intent is in the fleet's inbox (it kept losing the race for the fleet) and
    /// the fleet could not be reconciled now (see `failures`): the next reconcile applies it.
    Queued,
}

impl FleetReport {
    /// The report of a change: what it launched and terminated, read from its changes.
    pub fn of(outcome: FleetOutcome, fleet: &Fleet, changes: Vec<Change>) -> FleetReport {
        let mut report = FleetReport::empty(&fleet.spec.name, outcome);
        report.version = fleet.version;
        report.absorb_changes(changes);
        report
    }

    /// Nothing done (yet), at no known version.
    pub fn empty(name: &FleetName, outcome: FleetOutcome) -> FleetReport {
        FleetReport {
            fleet: name.clone(),
            outcome,
            version: 0,
            changes: Vec::new(),
            launched: Vec::new(),
            terminated: Vec::new(),
            failures: Vec::new(),
        }
    }

    pub fn with_failures(mut self, failures: Vec<String>) -> Self {
        self.failures = failures;
        self
    }

    fn absorb_changes(&mut self, changes: Vec<Change>) {
        for c in &changes {
            match c {
                Change::Launched { instances, .. } => {
                    self.launched.extend(instances.iter().cloned())
                }
                Change::Terminated { instances, .. } => {
                    self.terminated.extend(instances.iter().cloned())
                }
                _ => {}
            }
        }
        self.changes.extend(changes);
    }

    /// Adds what a follow-up reconcile of the same fleet did.
    pub fn absorb(&mut self, then: FleetReport) {
        self.changes.extend(then.changes);
        self.launched.extend(then.launched);
        self.terminated.extend(then.terminated);
        self.failures.extend(then.failures);
        self.version = self.version.max(then.version);
    }

    /// `next` added to what was done so far.
    pub fn absorbed(so_far: Option<FleetReport>, next: FleetReport) -> FleetReport {
        match so_far {
            Some(mut r) => {
                r.absorb(next);
                r
            }
            None => next,
        }
    }
}
