//! The fleet model: what a fleet should be (`FleetSpec`, in `spec`), what phoenix knows it is
//! (`Fleet`, `Rollout`, in `fleet`; `Instance`, in `instance`), and what it has decided but not
//! yet seen happen (`PendingLaunch`).
//!
//! Data with the rules that keep it well-formed, nothing more: the model decides nothing (that is
//! the planner's work) and reads nothing (that is the adapters'). Its files build on each other:
//! `adoption` (instances phoenix took in or gave back, a group taken over), `location` (the
//! account and region a fleet lives in), `images`, `position`, `schedule` and `budgets` need
//! nothing of the others, `instance` needs `adoption`, `spec` needs an
//! instance's health signals, the image rules, where in a fleet file an error is and when
//! voluntary disruption is allowed (`schedule`: rollout windows and freezes) and how much of it
//! for each reason (`budgets`), `definition` is what
//! of a spec an instance is made of, `fleet` holds a spec and instances, `placement` says in which
//! zone an instance counts and when it retires for age, and `target` tells which
//! instances match the fleet's spec. The values it shares with events and notices (`Timestamp`, `Seconds`,
//! `Lifecycle`, `Health`, a capacity's bounds) live on the floor below and are re-exported here,
//! where users of the model look for them.

mod adoption;
mod budgets;
mod definition;
mod fleet;
pub(crate) mod images;
mod instance;
mod location;
mod placement;
mod position;
mod schedule;
mod spec;
mod target;
mod traffic;

pub use crate::lifecycle::{Health, HookKind, HookResult, Lifecycle, Suspect};
pub use crate::quantity::{validate_capacity, MAX_CAPACITY};
pub use crate::time::{Seconds, Timestamp};
pub use adoption::{Adopted, AsgMember, Released, Takeover, MAX_DETACH_IDS};
pub use budgets::{Reason, ReasonBudget, ReasonBudgets};
pub use definition::Definition;
pub use fleet::{
    Breaker, DefinitionChange, FailedInstance, Fleet, Pause, PendingLaunch, Quarantine,
    RecentFailure, Rollout, RolloutStatus, Stall, Wave, WindowWait, MAX_RECENT_FAILURES,
};
pub use instance::{
    Disposal, Instance, Instances, Observed, Signals, Stage, TAG_DEFINITION, TAG_FLEET, TAG_IMAGE,
    TAG_PROTECTED, TAG_TOKEN,
};
pub use location::{is_region, Account, Location, MAX_SESSION_TAGS};
pub use placement::{retires_at, Offering, Purchase, Unavailable, UNAVAILABLE_FOR};
pub use schedule::{disruption_at, Closed, Freeze, Openness, Window, HORIZON_DAYS};
pub use spec::{
    BreakerPolicy, Budget, Checkpoint, FleetSpec, HealthCheck, HealthSignal, LaunchTemplateRef,
    RolloutPolicy, MAX_INSTANCE_TYPES, MIN_LIFETIME,
};
pub use target::{Drift, Target};
pub use traffic::{
    group_name, Hook, HookWait, Hooks, LoadBalancing, TargetGroupRef, TargetState, Targets,
    MAX_TARGET_GROUPS, TAG_FLEETS,
};
