//! The append-only history of a fleet, and the fleet reconstructed from it at any past moment.
//!
//! Each committed change records its cause, the changes it made, and what it wrote: the fleet's
//! record and every instance record it touched. Replaying entries up to a moment therefore gives
//! back exactly the state that was live then — without reading anything but the history.

use crate::events::{Cause, Change};
use crate::ids::FleetName;
use crate::model::{Fleet, Instance, Timestamp};
use serde::{Deserialize, Serialize};

/// One committed change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub fleet: FleetName,
    pub version: u64,
    pub at: Timestamp,
    pub cause: Cause,
    pub changes: Vec<Change>,
    /// The fleet record as this change wrote it (spec, rollout, pending launches, counters).
    pub state: Fleet,
    /// The instance records this change wrote.
    #[serde(default)]
    pub instances: Vec<Instance>,
}

impl HistoryEntry {
    /// The entry for committing `next` (already at its new version), which touched `touched`.
    pub fn record<'a>(
        next: &Fleet,
        touched: impl IntoIterator<Item = &'a crate::ids::InstanceId>,
        cause: &Cause,
        changes: &[Change],
        at: Timestamp,
    ) -> Self {
        HistoryEntry {
            fleet: next.spec.name.clone(),
            version: next.version,
            at,
            cause: cause.clone(),
            changes: changes.to_vec(),
            state: next.clone(),
            instances: touched
                .into_iter()
                .filter_map(|id| next.instances.get(id).cloned())
                .collect(),
        }
    }
}

/// The fleet as it was just after the last entry at or before `at`, or `None` if it did not exist
/// yet. `entries` must be in version order (as the store returns them). Terminated instances are
/// kept in the map with `terminated_at` set, so a reconstruction also says what had gone.
pub fn replay(entries: &[HistoryEntry], at: Timestamp) -> Option<Fleet> {
    let mut fleet: Option<Fleet> = None;
    let mut instances = std::collections::BTreeMap::new();
    for entry in entries.iter().take_while(|e| e.at <= at) {
        for inst in &entry.instances {
            instances.insert(inst.id.clone(), inst.clone());
        }
        fleet = Some(entry.state.clone());
    }
    fleet.map(|mut f| {
        f.instances = instances;
        f.complete = true;
        f
    })
}
