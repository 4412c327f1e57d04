//! phoenix's own events (source `phoenix`), what each means for a fleet (`Intent`), and the
//! records phoenix keeps of what it decided (`Change`).
//!
//! What holds: an `Intent` is built only from a detail that parses whole (`from_envelope`,
//! `from_detail`). An event from another source (except the schedule's tick), of an unknown
//! detail-type, with a missing or mistyped field or a capacity out of bounds is rejected with the
//! reason, never half read. A notice (`Intent::Notice`) comes from AWS's own events
//! (`aws_events`), never from phoenix's bus.

use crate::error::{Error, Result};
use crate::ids::{FleetName, ImageId, InstanceId};
use crate::lifecycle::{Health, HookKind, HookResult, Lifecycle};
use crate::quantity::{validate_capacity, MAX_CAPACITY};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The EventBridge `source` of every event phoenix accepts from pipelines and emits itself.
pub const SOURCE: &str = "phoenix";

pub const IMAGE_READY: &str = "ImageReady";
pub const HEALTH_CHECK_FAILED: &str = "HealthCheckFailed";
pub const HEALTH_CHECK_PASSED: &str = "HealthCheckPassed";
pub const SCALE_REQUESTED: &str = "ScaleRequested";
pub const RECONCILE_REQUESTED: &str = "ReconcileRequested";
pub const ROLLOUT_CONTROL: &str = "RolloutControl";
pub const LIFECYCLE_ACTION_COMPLETED: &str = "LifecycleActionCompleted";

/// What an EventBridge schedule delivers (the scheduled reconcile).
pub const SCHEDULE_SOURCE: &str = "aws.events";
pub const SCHEDULED_EVENT: &str = "Scheduled Event";

/// The EventBridge envelope fields phoenix uses. `id`, `time` and `account` come from
/// EventBridge itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    pub id: String,
    pub source: String,
    pub detail_type: String,
    pub time: Timestamp,
    /// The account the event came from (checked against `PHOENIX_ALLOWED_ACCOUNTS`).
    pub account: Option<String>,
    pub region: Option<String>,
    /// ARNs or ids the event is about (Image Builder: the build version ARN).
    pub resources: Vec<String>,
    pub detail: Value,
}

impl Envelope {
    /// An envelope without account, region or resources (the schedule's tick, tests).
    pub fn new(id: &str, source: &str, detail_type: &str, time: Timestamp, detail: Value) -> Self {
        Envelope {
            id: id.into(),
            source: source.into(),
            detail_type: detail_type.into(),
            time,
            account: None,
            region: None,
            resources: Vec::new(),
            detail,
        }
    }
}

/// What an event asks of a fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intent {
    /// Run this image from now on (replacing every instance on another image).
    ImageReady {
        fleet: FleetName,
        image: ImageId,
    },
    HealthCheckFailed {
        instance: InstanceId,
        reason: String,
    },
    HealthCheckPassed {
        instance: InstanceId,
    },
    Scale {
        fleet: FleetName,
        target: ScaleTarget,
    },
    /// Reconcile one fleet now, or every fleet.
    Reconcile {
        fleet: Option<FleetName>,
    },
    /// An operator's command to a fleet's rollout.
    RolloutControl {
        fleet: FleetName,
        action: ControlAction,
    },
    /// An operator lifts an image's quarantine for a fleet.
    ClearQuarantine {
        fleet: FleetName,
        image: ImageId,
    },
    /// The answer to a lifecycle hook an instance waits on (`phoenix lifecycle complete`, or the
    /// hook's own handler).
    LifecycleActionCompleted {
        instance: InstanceId,
        hook: HookKind,
        result: HookResult,
    },
    /// What AWS says about instances of one fleet (an EC2 state phoenix did not ask for, a Spot
    /// interruption, scheduled maintenance, an in-place change): see `crate::notice`.
    Notice {
        instances: Vec<InstanceId>,
        notice: crate::notice::Notice,
    },
}

/// A fleet-wide event's intent kept outside the fleet record, in the fleet's inbox: where an
/// event that kept losing the race for its fleet puts its intent, with a write that cannot
/// conflict. The fleet's next reconcile applies it, with `cause` as the reason in the history,
/// and removes it in the same commit. Applied in event-time order; the planner's own ordering
/// (`image_set_at`, `capacity_set_at`) makes a late one harmless, as for a late delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedIntent {
    pub intent: Intent,
    pub event_time: Timestamp,
    pub cause: Cause,
}

impl QueuedIntent {
    /// Orders the inbox by event time, then event id (as text: its store key sorts the same).
    pub fn key(&self) -> String {
        format!(
            "{}#{}",
            self.event_time
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            self.cause.event_id.as_deref().unwrap_or_default()
        )
    }
}

/// What an operator can ask of a rollout (`phoenix rollout pause|resume|abort|undo`), and of
/// the breaker (`resume-repairs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ControlAction {
    Pause,
    Resume,
    Abort,
    Undo,
    ResumeRepairs,
    /// Resume, and go on outside the fleet's rollout windows and freezes (this rollout only).
    ResumeNow,
}

impl ControlAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlAction::Pause => "pause",
            ControlAction::Resume => "resume",
            ControlAction::Abort => "abort",
            ControlAction::Undo => "undo",
            ControlAction::ResumeRepairs => "resume-repairs",
            ControlAction::ResumeNow => "resume-now",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleTarget {
    Desired(u32),
    Delta(i64),
}

// Wire shapes of the details. Unknown fields are tolerated (newer publishers may add some).
// Their JSON Schemas (`schemas/`) are generated from these types by the tests of `wire`.

/// `ImageReady`: run this image from now on.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(title = "ImageReady"))]
pub(crate) struct ImageReadyDetail {
    /// The fleet's name.
    fleet: String,
    /// The AMI id (`ami-` and 8 or 17 hex digits); it must exist.
    image: String,
}
/// `HealthCheckFailed`: replace this instance.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(title = "HealthCheckFailed"))]
pub(crate) struct HealthFailedDetail {
    /// The EC2 instance id.
    instance: String,
    /// Why, for the history.
    #[serde(default)]
    reason: Option<String>,
}
/// `HealthCheckPassed`: count this instance healthy (`health_check: event`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(title = "HealthCheckPassed"))]
pub(crate) struct HealthPassedDetail {
    /// The EC2 instance id.
    instance: String,
}
/// `LifecycleActionCompleted`: the answer to the lifecycle hook an instance waits on.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(title = "LifecycleActionCompleted"))]
#[serde(deny_unknown_fields)]
pub(crate) struct LifecycleDetail {
    /// The EC2 instance id.
    instance: String,
    /// Which hook: `launching` or `terminating`.
    hook: HookKind,
    /// `CONTINUE` or `ABANDON`.
    result: HookResult,
}
/// `ScaleRequested`: exactly one of `desired` and `delta`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(title = "ScaleRequested"))]
pub(crate) struct ScaleDetail {
    /// The fleet's name.
    fleet: String,
    /// The capacity to reach (0..=10000); last writer by event time wins.
    #[serde(default)]
    desired: Option<i64>,
    /// A change of capacity, applied once per event.
    #[serde(default)]
    delta: Option<i64>,
}
/// `RolloutControl`: an `action`, or an `image` to clear from quarantine.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(title = "RolloutControl"))]
pub(crate) struct ControlDetail {
    /// The fleet's name.
    fleet: String,
    #[serde(default)]
    action: Option<ControlAction>,
    /// An AMI id to clear from the fleet's quarantine.
    #[serde(default)]
    image: Option<String>,
}
/// `ReconcileRequested`: reconcile one fleet now, or every fleet.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[cfg_attr(test, schemars(title = "ReconcileRequested"))]
pub(crate) struct ReconcileDetail {
    /// The fleet's name; absent: every fleet.
    #[serde(default)]
    fleet: Option<String>,
}

fn detail<T: serde::de::DeserializeOwned>(detail_type: &str, v: &Value) -> Result<T> {
    if !v.is_object() {
        return Err(Error::Event(format!(
            "{detail_type}: detail must be a JSON object, got {v}"
        )));
    }
    serde_json::from_value(v.clone()).map_err(|e| Error::Event(format!("{detail_type}: {e}")))
}

fn field<T>(detail_type: &str, r: Result<T>) -> Result<T> {
    r.map_err(|e| Error::Event(format!("{detail_type}: {e}")))
}

impl Intent {
    /// Parses a phoenix event. Rejects (with the reason) anything that is not from `phoenix`, of an
    /// unknown detail-type, or missing or mistyped fields.
    pub fn from_envelope(env: &Envelope) -> Result<Intent> {
        if env.source == SCHEDULE_SOURCE && env.detail_type == SCHEDULED_EVENT {
            return Ok(Intent::Reconcile { fleet: None });
        }
        if env.source != SOURCE {
            return Err(Error::Event(format!(
                "source {:?} is not {SOURCE:?}",
                env.source
            )));
        }
        Self::from_detail(&env.detail_type, &env.detail)
    }

    pub fn from_detail(detail_type: &str, v: &Value) -> Result<Intent> {
        let dt = detail_type;
        Ok(match dt {
            IMAGE_READY => {
                let d: ImageReadyDetail = detail(dt, v)?;
                Intent::ImageReady {
                    fleet: field(dt, FleetName::parse(&d.fleet))?,
                    image: field(dt, ImageId::parse(&d.image))?,
                }
            }
            HEALTH_CHECK_FAILED => {
                let d: HealthFailedDetail = detail(dt, v)?;
                let reason = d
                    .reason
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or_else(|| "health check failed".into());
                Intent::HealthCheckFailed {
                    instance: field(dt, InstanceId::parse(&d.instance))?,
                    reason,
                }
            }
            HEALTH_CHECK_PASSED => {
                let d: HealthPassedDetail = detail(dt, v)?;
                Intent::HealthCheckPassed {
                    instance: field(dt, InstanceId::parse(&d.instance))?,
                }
            }
            LIFECYCLE_ACTION_COMPLETED => {
                let d: LifecycleDetail = detail(dt, v)?;
                Intent::LifecycleActionCompleted {
                    instance: field(dt, InstanceId::parse(&d.instance))?,
                    hook: d.hook,
                    result: d.result,
                }
            }
            SCALE_REQUESTED => {
                let d: ScaleDetail = detail(dt, v)?;
                let fleet = field(dt, FleetName::parse(&d.fleet))?;
                let target = match (d.desired, d.delta) {
                    (Some(n), None) => ScaleTarget::Desired(field(dt, validate_capacity(n))?),
                    (None, Some(0)) => {
                        return Err(Error::Event(format!("{dt}: delta must not be 0")))
                    }
                    (None, Some(n)) if n.unsigned_abs() > u64::from(MAX_CAPACITY) => {
                        return Err(Error::Event(format!(
                            "{dt}: invalid capacity: delta {n} is larger than the maximum capacity"
                        )))
                    }
                    (None, Some(n)) => ScaleTarget::Delta(n),
                    _ => {
                        return Err(Error::Event(format!(
                            "{dt}: give exactly one of `desired` or `delta`"
                        )))
                    }
                };
                Intent::Scale { fleet, target }
            }
            RECONCILE_REQUESTED => {
                let d: ReconcileDetail = detail(dt, v)?;
                Intent::Reconcile {
                    fleet: d
                        .fleet
                        .map(|f| field(dt, FleetName::parse(&f)))
                        .transpose()?,
                }
            }
            ROLLOUT_CONTROL => {
                let d: ControlDetail = detail(dt, v)?;
                let fleet = field(dt, FleetName::parse(&d.fleet))?;
                match (d.action, d.image) {
                    (Some(action), None) => Intent::RolloutControl { fleet, action },
                    (None, Some(image)) => Intent::ClearQuarantine {
                        fleet,
                        image: field(dt, ImageId::parse(&image))?,
                    },
                    _ => {
                        return Err(Error::Event(format!(
                            "{dt}: give `action` (pause, resume, resume-now, abort, undo, resume-repairs) or `image` to clear from quarantine"
                        )))
                    }
                }
            }
            other => return Err(Error::Event(format!("unknown detail-type {other:?}"))),
        })
    }

    /// The detail-type and detail JSON of this intent, as published on the bus.
    pub fn to_detail(&self) -> (&'static str, Value) {
        use serde_json::json;
        match self {
            Intent::ImageReady { fleet, image } => {
                (IMAGE_READY, json!({"fleet": fleet, "image": image}))
            }
            Intent::HealthCheckFailed { instance, reason } => (
                HEALTH_CHECK_FAILED,
                json!({"instance": instance, "reason": reason}),
            ),
            Intent::HealthCheckPassed { instance } => {
                (HEALTH_CHECK_PASSED, json!({"instance": instance}))
            }
            Intent::LifecycleActionCompleted {
                instance,
                hook,
                result,
            } => (
                LIFECYCLE_ACTION_COMPLETED,
                json!({"instance": instance, "hook": hook, "result": result}),
            ),
            Intent::Scale {
                fleet,
                target: ScaleTarget::Desired(n),
            } => (SCALE_REQUESTED, json!({"fleet": fleet, "desired": n})),
            Intent::Scale {
                fleet,
                target: ScaleTarget::Delta(n),
            } => (SCALE_REQUESTED, json!({"fleet": fleet, "delta": n})),
            Intent::Reconcile { fleet: Some(f) } => (RECONCILE_REQUESTED, json!({"fleet": f})),
            Intent::Reconcile { fleet: None } => (RECONCILE_REQUESTED, json!({})),
            Intent::RolloutControl { fleet, action } => {
                (ROLLOUT_CONTROL, json!({"fleet": fleet, "action": action}))
            }
            Intent::ClearQuarantine { fleet, image } => {
                (ROLLOUT_CONTROL, json!({"fleet": fleet, "image": image}))
            }
            // Notices come from AWS events, never from phoenix's bus; this is their record form.
            Intent::Notice { instances, notice } => (
                INSTANCE_NOTICE,
                json!({"instances": instances, "notice": notice}),
            ),
        }
    }
}

/// The detail-type under which a notice is recorded (it is not an event phoenix accepts).
pub const INSTANCE_NOTICE: &str = "InstanceNotice";

/// What caused a change: the event (or command) it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// EventBridge event id, when the change came from an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub source: String,
    pub detail_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<Timestamp>,
}

impl Cause {
    pub fn from_envelope(env: &Envelope) -> Self {
        Cause {
            event_id: Some(env.id.clone()),
            source: env.source.clone(),
            detail_type: env.detail_type.clone(),
            event_time: Some(env.time),
        }
    }
    /// A change phoenix made on its own initiative (the scheduled reconcile, a command).
    pub fn internal(what: &str) -> Self {
        Cause {
            event_id: None,
            source: SOURCE.into(),
            detail_type: what.into(),
            event_time: None,
        }
    }
}

/// One entry of a fleet's append-only history. Each committed change carries the list of these
/// that it made, next to its cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    FleetCreated {
        image: ImageId,
        capacity: u32,
    },
    FleetUpdated {
        fields: Vec<String>,
    },
    ImageChanged {
        from: ImageId,
        to: ImageId,
    },
    CapacityChanged {
        from: u32,
        to: u32,
    },
    /// An event that asked for nothing new (same image, older than the last change, ...).
    Ignored {
        reason: String,
    },
    RolloutStarted {
        rollout: u64,
        from: Option<ImageId>,
        to: ImageId,
        /// The launch definition's fields it changes (none: only the image).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changed: Vec<String>,
    },
    /// A launch template named by `$Latest`/`$Default` resolved to another version: new instances
    /// launch from it, and those launched from the old one have drifted.
    TemplateVersionChanged {
        template: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        to: String,
    },
    RolloutSuperseded {
        rollout: u64,
    },
    WaveStarted {
        rollout: u64,
        wave: u32,
        launches: u32,
    },
    WaveHealthy {
        rollout: u64,
        wave: u32,
    },
    RolloutSucceeded {
        rollout: u64,
    },
    LaunchDecided {
        token: String,
        image: ImageId,
        count: u32,
        reason: String,
    },
    LaunchRetried {
        token: String,
    },
    Launched {
        token: String,
        instances: Vec<InstanceId>,
        /// Request ids of the AWS calls that launched them (none when found by their tag rather
        /// than launched by this call): what AWS support asks for.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        request_ids: Vec<String>,
    },
    LaunchFailed {
        token: String,
        error: String,
    },
    TerminationDecided {
        instance: InstanceId,
        reason: String,
    },
    Terminated {
        instances: Vec<InstanceId>,
        /// Request ids of the TerminateInstances calls (none when EC2 showed them gone).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        request_ids: Vec<String>,
    },
    TerminationFailed {
        instances: Vec<InstanceId>,
        error: String,
    },
    HealthChanged {
        instance: InstanceId,
        health: Health,
    },
    StateChanged {
        instance: InstanceId,
        state: Lifecycle,
    },
    /// EC2 no longer has an instance phoenix did not decide to terminate.
    Vanished {
        instance: InstanceId,
        state: String,
    },
    /// A failed instance was replaced by a new one.
    InstanceReplaced {
        instance: InstanceId,
        by: Vec<InstanceId>,
        reason: String,
    },
    CheckpointReached {
        rollout: u64,
        percent: u32,
        until: Option<Timestamp>,
    },
    RolloutPaused {
        rollout: u64,
        reason: String,
        until: Option<Timestamp>,
    },
    RolloutResumed {
        rollout: u64,
        reason: String,
    },
    RolloutRollingBack {
        rollout: u64,
        reason: String,
    },
    RolloutRolledBack {
        rollout: u64,
    },
    /// The rollout has not moved on within its progress deadline, for a reason that is not the
    /// image's: it waits (nothing is rolled back or quarantined for it) and says on what.
    RolloutStalled {
        rollout: u64,
        reason: String,
        waiting_on: Vec<String>,
    },
    /// A stalled rollout moves on again, or one held by its windows may.
    RolloutProgressing {
        rollout: u64,
    },
    /// The rollout would replace instances but may not now: outside the fleet's rollout windows,
    /// or in a freeze. It goes on by itself when they allow (`opens`).
    RolloutWaiting {
        rollout: u64,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        opens: Option<Timestamp>,
    },
    RolloutAborted {
        rollout: u64,
        reason: String,
    },
    ImageQuarantined {
        image: ImageId,
        reason: String,
    },
    ImageReleased {
        image: ImageId,
    },
    /// An image that may not be launched for this fleet was asked for.
    ImageRefused {
        image: ImageId,
        reason: String,
    },
    /// More than the breaker's share of the fleet is unhealthy at once: repairs stop.
    ReplacementHalted {
        unhealthy: u32,
        capacity: u32,
        shared: Option<String>,
        /// The figures: which instances, over what window, against what threshold.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    ReplacementResumed {
        reason: String,
    },
    /// A repair waits: the breaker is tripped or about to be, or the hourly budget is spent.
    RepairDeferred {
        instance: InstanceId,
        reason: String,
    },
    /// The hourly disruption budget is spent: nothing more is taken away until it refills.
    BudgetExhausted {
        limit: u32,
    },
    /// The fleet's admission gate refused an image.
    ImageRejected {
        image: ImageId,
        reason: String,
    },
    /// An instance must go (Spot interruption, rebalance, maintenance, in-place change): it is
    /// replaced launch-first once its window is open and the surge limit leaves room.
    RetirementScheduled {
        instance: InstanceId,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_before: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<Timestamp>,
    },
    /// Someone changed an instance in place (CloudTrail): who and with which call.
    Tainted {
        instance: InstanceId,
        who: String,
        what: String,
    },
    /// Instances to register with the fleet's target groups (running, past their launching hook).
    RegistrationDecided {
        instances: Vec<InstanceId>,
    },
    /// Registered with every target group of the fleet.
    Registered {
        instances: Vec<InstanceId>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        request_ids: Vec<String>,
    },
    RegistrationFailed {
        instances: Vec<InstanceId>,
        error: String,
    },
    /// Deregistered from every target group: requests in flight finish until `until` at most.
    DrainStarted {
        instance: InstanceId,
        until: Timestamp,
    },
    DeregistrationFailed {
        instances: Vec<InstanceId>,
        error: String,
    },
    /// Done draining: no group lists it any more, its deregistration delay passed, or it was not
    /// running (nothing to drain).
    Drained {
        instance: InstanceId,
        how: String,
    },
    /// A lifecycle hook holds the instance until `LifecycleActionCompleted` or `until`.
    LifecycleHookStarted {
        instance: InstanceId,
        hook: HookKind,
        until: Timestamp,
    },
    LifecycleHookCompleted {
        instance: InstanceId,
        hook: HookKind,
        result: HookResult,
        /// `operator` (a `LifecycleActionCompleted`) or `timeout` (the hook's default result).
        by: String,
    },
    /// A target group of the fleet does not exist (any more): nothing is drained from it, and no
    /// instance that may serve is taken away until it is back or out of the fleet file.
    TargetGroupMissing {
        group: String,
        reason: String,
    },
    TargetGroupFound {
        group: String,
    },
    /// EC2 had no capacity for these offerings (`Offering::key`); the launch went on with the
    /// next, and none of them is tried again before `until`.
    OfferingsRefused {
        token: String,
        offerings: Vec<String>,
        reason: String,
        until: Timestamp,
    },
    /// EC2 had no capacity for any offering the launch could try: nothing launched. The fleet
    /// waits (a rollout neither rolls back nor quarantines for it) and tries again once one of
    /// them may have capacity again, at `until`.
    CapacityUnavailable {
        token: String,
        tried: Vec<String>,
        reason: String,
        until: Timestamp,
    },
    /// An instance was protected from voluntary disruption, or no longer is (`by`: the tag seen
    /// on it, or an operator's command).
    ProtectionChanged {
        instance: InstanceId,
        protected: bool,
        by: String,
    },
    /// Running instances phoenix did not launch were taken into the fleet (`from`: what selected
    /// them), recorded under the decision `token` (their `phoenix:launch` tag).
    Adopted {
        token: String,
        from: String,
        instances: Vec<InstanceId>,
    },
    /// Adopted instances carry the fleet's tags (`retried`: asked again, the first request's
    /// outcome never recorded).
    Tagged {
        instances: Vec<InstanceId>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retried: bool,
    },
    TagFailed {
        instances: Vec<InstanceId>,
        error: String,
    },
    /// A takeover of an Auto Scaling group began: its processes suspended, its instances adopted.
    TakeoverStarted {
        group: String,
        instances: u32,
    },
    DetachDecided {
        group: String,
        instances: Vec<InstanceId>,
    },
    Detached {
        group: String,
        instances: Vec<InstanceId>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        request_ids: Vec<String>,
    },
    DetachFailed {
        group: String,
        instances: Vec<InstanceId>,
        error: String,
    },
    /// No instance is left in the group: it stays, empty and suspended.
    TakeoverFinished {
        group: String,
    },
    /// Instances given back (`phoenix fleet release`): no longer the fleet's; their phoenix tags
    /// are removed.
    Released {
        instances: Vec<InstanceId>,
    },
    Untagged {
        instances: Vec<InstanceId>,
    },
}

/// The events phoenix publishes on its bus for the transitions users route to chat or paging:
/// `(detail-type, detail)` for each change that is one.
pub fn published(fleet: &FleetName, changes: &[Change]) -> Vec<(&'static str, Value)> {
    use serde_json::json;
    let mut out = Vec::new();
    for c in changes {
        let (dt, mut detail) = match c {
            Change::RolloutStarted {
                rollout,
                from,
                to,
                changed,
            } => (
                "RolloutStarted",
                if changed.is_empty() {
                    json!({"rollout": rollout, "from": from, "to": to})
                } else {
                    json!({"rollout": rollout, "from": from, "to": to, "changed": changed})
                },
            ),
            Change::WaveStarted {
                rollout,
                wave,
                launches,
            } => (
                "WaveStarted",
                json!({"rollout": rollout, "wave": wave, "launches": launches}),
            ),
            Change::WaveHealthy { rollout, wave } => {
                ("WaveHealthy", json!({"rollout": rollout, "wave": wave}))
            }
            Change::CheckpointReached {
                rollout,
                percent,
                until,
            } => (
                "CheckpointReached",
                json!({"rollout": rollout, "percent": percent, "until": until}),
            ),
            Change::RolloutSucceeded { rollout } => {
                ("RolloutSucceeded", json!({"rollout": rollout}))
            }
            Change::RolloutRollingBack { rollout, reason } => (
                "RolloutRollingBack",
                json!({"rollout": rollout, "reason": reason}),
            ),
            Change::RolloutRolledBack { rollout } => {
                ("RolloutRolledBack", json!({"rollout": rollout}))
            }
            Change::RolloutStalled {
                rollout,
                reason,
                waiting_on,
            } => (
                "RolloutStalled",
                json!({"rollout": rollout, "reason": reason, "waiting_on": waiting_on}),
            ),
            Change::InstanceReplaced {
                instance,
                by,
                reason,
            } => (
                "InstanceReplaced",
                json!({"instance": instance, "by": by, "reason": reason}),
            ),
            Change::ReplacementHalted {
                unhealthy,
                capacity,
                shared,
                reason,
            } => (
                "ReplacementHalted",
                json!({"unhealthy": unhealthy, "capacity": capacity, "shared_attribute": shared, "reason": reason}),
            ),
            Change::ImageQuarantined { image, reason } => (
                "ImageQuarantined",
                json!({"image": image, "reason": reason}),
            ),
            Change::ImageRejected { image, reason } => {
                ("ImageRejected", json!({"image": image, "reason": reason}))
            }
            Change::LifecycleHookStarted {
                instance,
                hook,
                until,
            } => (
                match hook {
                    HookKind::Launching => "InstanceLaunching",
                    HookKind::Terminating => "InstanceTerminating",
                },
                json!({"instance": instance, "hook": hook, "timeout_at": until}),
            ),
            Change::TargetGroupMissing { group, reason } => (
                "TargetGroupMissing",
                json!({"target_group": group, "reason": reason}),
            ),
            Change::CapacityUnavailable {
                tried,
                reason,
                until,
                ..
            } => (
                "CapacityUnavailable",
                json!({"tried": tried, "reason": reason, "retry_at": until}),
            ),
            _ => continue,
        };
        detail["fleet"] = json!(fleet);
        out.push((dt, detail));
    }
    out
}

/// A notification as phoenix publishes it (and keeps it, in the fleet's outbox, until it is
/// published): a detail-type and detail of `published`, the detail carrying `notification_id`.
/// phoenix publishes at least once — a crash after PutEvents publishes again — and every copy
/// carries the same id, so a consumer can drop a repeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// `<fleet>-<incarnation>-<version>-<n>`: the `n`th notification of the commit that made the
    /// fleet's `version` (the incarnation tells a fleet from an earlier one of the same name).
    pub id: String,
    pub detail_type: String,
    pub detail: Value,
}

/// The notifications of the commit that made `version` of the fleet with `incarnation`
/// (`Fleet::incarnation`): `published`, each with its id.
pub fn notifications(
    fleet: &FleetName,
    incarnation: &str,
    version: u64,
    changes: &[Change],
) -> Vec<Notification> {
    published(fleet, changes)
        .into_iter()
        .enumerate()
        .map(|(n, (detail_type, mut detail))| {
            let id = format!("{fleet}-{incarnation}-{version}-{n}");
            detail["notification_id"] = Value::String(id.clone());
            Notification {
                id,
                detail_type: detail_type.into(),
                detail,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_intent_round_trips_through_its_wire_form() {
        let intents = [
            Intent::ImageReady {
                fleet: FleetName::parse("web").unwrap(),
                image: ImageId::parse("ami-12345678").unwrap(),
            },
            Intent::HealthCheckFailed {
                instance: InstanceId::parse("i-12345678").unwrap(),
                reason: "http 503".into(),
            },
            Intent::HealthCheckPassed {
                instance: InstanceId::parse("i-12345678").unwrap(),
            },
            Intent::Scale {
                fleet: FleetName::parse("web").unwrap(),
                target: ScaleTarget::Desired(6),
            },
            Intent::Scale {
                fleet: FleetName::parse("web").unwrap(),
                target: ScaleTarget::Delta(-2),
            },
            Intent::Reconcile { fleet: None },
        ];
        for intent in intents {
            let (dt, detail) = intent.to_detail();
            assert_eq!(Intent::from_detail(dt, &detail).unwrap(), intent);
        }
    }

    #[test]
    fn bad_details_are_rejected_with_the_reason() {
        let cases = [
            (
                IMAGE_READY,
                json!({"fleet": "web"}),
                "missing field `image`",
            ),
            (
                IMAGE_READY,
                json!({"fleet": "web", "image": "ubuntu"}),
                "not an AMI id",
            ),
            (IMAGE_READY, json!("web"), "must be a JSON object"),
            (HEALTH_CHECK_FAILED, json!({"instance": 42}), "invalid type"),
            (
                SCALE_REQUESTED,
                json!({"fleet": "web", "desired": -1}),
                "negative",
            ),
            (
                SCALE_REQUESTED,
                json!({"fleet": "web", "desired": 1000000}),
                "maximum",
            ),
            (
                SCALE_REQUESTED,
                json!({"fleet": "web", "desired": 3, "delta": 1}),
                "exactly one",
            ),
            (SCALE_REQUESTED, json!({"fleet": "web"}), "exactly one"),
            ("Surprise", json!({}), "unknown detail-type"),
        ];
        for (dt, detail, expected) in cases {
            let err = Intent::from_detail(dt, &detail).unwrap_err().to_string();
            assert!(err.contains(expected), "{dt} {detail}: {err}");
        }
    }

    #[test]
    fn foreign_sources_are_rejected() {
        let env = Envelope::new(
            "1",
            "aws.ec2",
            IMAGE_READY,
            chrono::DateTime::UNIX_EPOCH,
            json!({"fleet": "web", "image": "ami-12345678"}),
        );
        assert!(Intent::from_envelope(&env)
            .unwrap_err()
            .to_string()
            .contains("is not \"phoenix\""));
    }
}
