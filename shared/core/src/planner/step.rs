//! What the planner hands out and what it gets back. A `Step` is the fleet as it will be once the
//! step is committed, the history entries (`Change`s) that explain it, the `Command`s the executor
//! must carry out, and the instance records it changed. The executor reports what came of each
//! command as an `Outcome`, which `record_outcomes` folds back into the fleet.
//!
//! What holds: a step's commands are carried out only once the step is committed, in the order
//! `Command` gives; a step without changes is neither committed nor carried out.

use crate::events::Change;
use crate::ids::{ImageId, InstanceId};
use crate::model::{Fleet, Lifecycle, Offering, Seconds, Timestamp};
use serde::Serialize;
use std::collections::BTreeSet;

/// What the executor must do. Order of execution: `Tag`, `Untag` and `Detach` (they take nothing
/// out of service that phoenix does not put back), `Terminate` and `Deregister` without
/// `after_launch` (they were already covered by healthy replacements) and `Register`, then
/// every `Launch`, then the `Deregister`s and `Terminate`s that wait for a launch, and only if
/// that launch succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Launch {
        token: String,
        image: ImageId,
        count: u32,
        /// Tried in order: the first EC2 has capacity for launches all `count`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        offerings: Vec<Offering>,
    },
    Terminate {
        instances: Vec<InstanceId>,
        after_launch: Option<String>,
    },
    /// Register with every target group of the fleet: not started after `start_by`; recorded in
    /// the fleet as possibly landing until `lands_by` (`Fleet::registering`).
    Register {
        instances: Vec<InstanceId>,
        start_by: Timestamp,
        lands_by: Timestamp,
    },
    /// Deregister from every target group of the fleet: they start draining.
    Deregister {
        instances: Vec<InstanceId>,
        after_launch: Option<String>,
    },
    /// Tag adopted instances as the fleet's (`phoenix:fleet`, `phoenix:launch` with their
    /// adoption's token, `phoenix:image`, `phoenix:definition`, from their records).
    Tag { instances: Vec<InstanceId> },
    /// Remove phoenix's tags from released instances.
    Untag { instances: Vec<InstanceId> },
    /// `DetachInstances` from the Auto Scaling group, its desired capacity decremented.
    Detach {
        group: String,
        instances: Vec<InstanceId>,
    },
}

/// What came of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Launched {
        token: String,
        instances: Vec<Launched>,
        /// The AWS request ids of the calls that acted, recorded with the change.
        request_ids: Vec<String>,
        /// Offerings tried first that EC2 had no capacity for.
        refused: Vec<Refusal>,
    },
    LaunchFailed {
        token: String,
        error: String,
        /// Offerings EC2 had no capacity for (every one tried, when that is why it failed).
        refused: Vec<Refusal>,
    },
    Terminated {
        instances: Vec<InstanceId>,
        request_ids: Vec<String>,
    },
    TerminateFailed {
        instances: Vec<InstanceId>,
        error: String,
    },
    /// `lands_by`: the command's, naming the registration whose outcome this is.
    Registered {
        instances: Vec<InstanceId>,
        lands_by: Timestamp,
        request_ids: Vec<String>,
    },
    RegisterFailed {
        instances: Vec<InstanceId>,
        lands_by: Timestamp,
        error: String,
    },
    /// Deregistered from every group; `delay`: the longest deregistration delay of the groups.
    Deregistered {
        instances: Vec<InstanceId>,
        delay: Seconds,
        request_ids: Vec<String>,
    },
    DeregisterFailed {
        instances: Vec<InstanceId>,
        error: String,
    },
    /// Tagged as the fleet's; `gone`: those EC2 no longer knows (they vanished before).
    Tagged {
        instances: Vec<InstanceId>,
        gone: Vec<InstanceId>,
    },
    TagFailed {
        instances: Vec<InstanceId>,
        error: String,
    },
    Untagged {
        instances: Vec<InstanceId>,
    },
    UntagFailed {
        instances: Vec<InstanceId>,
        error: String,
    },
    /// Out of the group (or no longer in it).
    Detached {
        group: String,
        instances: Vec<InstanceId>,
        request_ids: Vec<String>,
    },
    DetachFailed {
        group: String,
        instances: Vec<InstanceId>,
        error: String,
    },
}

/// An offering EC2 refused for capacity, and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub offering: Offering,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub id: InstanceId,
    pub launched_at: Option<Timestamp>,
    pub state: Lifecycle,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub subnet: Option<String>,
    /// The fingerprint of the definition it was launched from.
    pub definition: Option<String>,
}

/// The result of planning: the next fleet state, why, and what to do. (`then_reconcile`, which
/// continues a step with a reconcile pass, is next to that pass, in `reconcile`.)
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub fleet: Fleet,
    pub changes: Vec<Change>,
    pub commands: Vec<Command>,
    /// Instances whose records this step changed (the store writes exactly these).
    pub touched: BTreeSet<InstanceId>,
}

impl Step {
    /// A step that changes nothing, to build on with `then`.
    pub fn unchanged(fleet: &Fleet) -> Step {
        Step {
            fleet: fleet.clone(),
            changes: Vec::new(),
            commands: Vec::new(),
            touched: BTreeSet::new(),
        }
    }

    /// Nothing changed: no need to write anything.
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }

    /// Why the step changes nothing, when all it records is `Ignored` (an instance already
    /// healthy reported healthy again, a delivery the fleet is past): no command, no record
    /// touched, the fleet as `before`. Such a step writes nothing but what deduplication needs.
    pub fn ignored_only(&self, before: &Fleet) -> Option<String> {
        if self.changes.is_empty() || !self.commands.is_empty() || !self.touched.is_empty() {
            return None;
        }
        let reasons = self
            .changes
            .iter()
            .map(|c| match c {
                Change::Ignored { reason } => Some(reason.as_str()),
                _ => None,
            })
            .collect::<Option<Vec<&str>>>()?;
        (self.fleet == *before).then(|| reasons.join("; "))
    }

    /// `then`, for a continuation that may refuse (an intent that does not apply).
    pub fn then_result<E>(self, f: impl FnOnce(&Fleet) -> Result<Step, E>) -> Result<Step, E> {
        let next = f(&self.fleet)?;
        Ok(Step::followed_by(
            self.changes,
            self.commands,
            self.touched,
            next,
        ))
    }

    /// The step that continues this one with `f`, as one commit.
    pub fn then(self, f: impl FnOnce(&Fleet) -> Step) -> Step {
        let next = f(&self.fleet);
        Step::followed_by(self.changes, self.commands, self.touched, next)
    }

    /// One step: the changes, commands and touched records of the first, then those of `next`,
    /// on `next`'s fleet.
    pub(super) fn followed_by(
        mut changes: Vec<Change>,
        mut commands: Vec<Command>,
        mut touched: BTreeSet<InstanceId>,
        next: Step,
    ) -> Step {
        changes.extend(next.changes);
        commands.extend(next.commands);
        touched.extend(next.touched);
        Step {
            fleet: next.fleet,
            changes,
            commands,
            touched,
        }
    }
}
