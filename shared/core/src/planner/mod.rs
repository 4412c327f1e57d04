//! The planner: pure functions from (fleet, event or observation, now) to a `Step` — the fleet as
//! it will be once the step is committed, the history entries that explain it, and the commands
//! the executor must carry out. Nothing here performs I/O or reads a clock.
//!
//! The protocol around it (in `phoenix-aws`) is write-ahead:
//! 1. load the fleet, plan a step, commit it conditionally on the version read (conflict → redo);
//! 2. execute the step's commands (launches are recorded as `PendingLaunch` *before* the call);
//! 3. plan `record_outcomes` from what EC2 answered and commit that the same way.
//!
//! A crash between any two of these leaves a state the next `reconcile` finishes: a pending launch
//! whose lease ran out is found by its `phoenix:launch` tag or launched again with the same EC2
//! ClientToken; a decided termination is issued again (terminating twice is harmless).
//!
//! The planner stands on the data floor below it (`model`, `events`, `notice`) and nothing above
//! it is imported here. Its files, from the bottom up (each uses only files listed before it):
//! - `step`: what the planner hands out (`Step`, `Command`) and gets back (`Outcome`, `Launched`);
//! - `tx`: a step being built (`Tx`), the only way the files below change a fleet, and the limits
//!   of one step;
//! - `placement`: where new instances go (zones kept within one of each other, offerings by
//!   preference) and what EC2 refused for capacity;
//! - `way_out`: an instance's way out once it is to go: deregistered, drained, held by the
//!   terminating hook, terminated;
//! - `rollout`: a rollout's life — start, pause, resume, abort, roll back, the health gate, waves
//!   turning healthy, checkpoints — and an operator's commands to it;
//! - `windows`: what the fleet's rollout windows and freezes hold back now;
//! - `budgets`: how many instances may go for each reason (rollout, drift, scale-in, age,
//!   rebalance);
//! - `scale`: rolling replacement and scaling under the disruption budget;
//! - `repair`: replacing failed instances and retiring doomed ones; the mass-failure breaker;
//! - `lifetime`: when instances that reach the fleet's `max_instance_lifetime` retire;
//! - `rebalance`: moving one instance at a time back into a zone that has too few;
//! - `serving`: an instance coming into service: the launching hook, registration with the
//!   target groups, what the groups report;
//! - `notices`: what AWS says about an instance, turned into a repair or a retirement;
//! - `outcomes`: folding what EC2 answered into the fleet;
//! - `adoption`: instances phoenix did not launch: adopted, detached from their Auto Scaling
//!   group, released;
//! - `reconcile`: one pass over the whole fleet against what EC2 reports;
//! - `quiet`: until when a fleet that a pass left as it was needs no full pass;
//! - `intents`: a new fleet, a fleet file applied, an event's intent.

mod adoption;
mod budgets;
mod intents;
mod lifetime;
mod notices;
mod outcomes;
mod placement;
mod quiet;
mod rebalance;
mod reconcile;
mod repair;
mod rollout;
mod scale;
mod serving;
mod step;
mod tx;
mod way_out;
mod windows;

pub use adoption::{adopt, release, Adoption, MAX_ADOPTED_PER_STEP};
pub use intents::{
    apply_intent, apply_queued, create_fleet, template_resolved, update_spec, Resolved,
};
pub use outcomes::{outcome_parts, record_outcome_part, record_outcomes};
pub use quiet::{quiet_until, QUIET_HORIZON, QUIET_PROBE};
pub use reconcile::{observe_instance, reconcile, OBSERVE_GRACE};
pub use rollout::{wave_healthy, wave_to_recheck, what_rolls};
pub use serving::targets_observed;
pub use step::{Command, Launched, Outcome, Refusal, Step};
pub use tx::{
    LEASE, MAX_LAUNCHES_PER_STEP, MAX_TERMINATIONS_PER_STEP, MAX_TOUCHED_PER_STEP, REGISTER_WITHIN,
    REGISTRATION_LEASE,
};
