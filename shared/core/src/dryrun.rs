//! `phoenix plan F --image X`: the rollout a new image would cause, and `phoenix fleet apply
//! --diff`: what a fleet file would change and the rollout it would start (`plan_spec`, from
//! `planner::update_spec`). Both are worked out by running the real planner against an idealised
//! world (every launch succeeds, every new instance is running with its status checks passed by
//! the next pass, and the `HealthCheckPassed` a fleet with `health_check: event` or `both` waits
//! for arrives once it runs) without touching anything, in one loop (`simulate`). The real
//! rollout makes the same decisions as long as the world behaves that way; it differs where the
//! world does (a slow boot, a failure, a health report that never comes).

use crate::error::Result;
use crate::events::{Change, ControlAction, Intent};
use crate::ids::{ImageId, InstanceId};
use crate::model::{
    Budget, Drift, Fleet, FleetSpec, Health, Lifecycle, Observed, RolloutStatus, Target,
    TargetState, Timestamp,
};
use crate::planner::{self, Command, Launched, Outcome, Step};
use chrono::Duration;
use serde::Serialize;

/// Passes beyond which a plan gives up (a rollout of 10 000 with surge 1 takes 10 000).
const MAX_PASSES: usize = 20_000;

/// One reconcile pass of the planned rollout: what it launches and terminates, and the fleet's
/// size and health while it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedPass {
    /// Time from the start of the rollout, in seconds (passes follow the reconcile schedule).
    pub at_seconds: i64,
    pub wave: Option<u32>,
    pub launch: u32,
    /// Existing instances terminated in this pass (new ones launched by the plan are not listed).
    pub terminate: Vec<InstanceId>,
    /// Most instances in existence during the pass.
    pub peak: u32,
    /// Fewest healthy instances during the pass.
    pub healthy_floor: u32,
    /// Why the rollout waits after this pass (bake, checkpoint), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutPlan {
    pub fleet: String,
    pub from: ImageId,
    pub to: ImageId,
    pub capacity: u32,
    pub budget: Budget,
    pub passes: Vec<PlannedPass>,
    /// Set when the image would be refused (quarantined) or changes nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl RolloutPlan {
    pub fn waves(&self) -> usize {
        self.passes.iter().filter(|p| p.wave.is_some()).count()
    }
}

/// Plans the rollout of `image` on a complete `fleet`, as of `now`. `interval` is the time between
/// reconcile passes (the schedule: one minute in AWS).
pub fn plan_rollout(
    fleet: &Fleet,
    image: &ImageId,
    now: Timestamp,
    interval: Duration,
) -> Result<RolloutPlan> {
    let mut plan = RolloutPlan {
        fleet: fleet.spec.name.to_string(),
        from: fleet.spec.image.clone(),
        to: image.clone(),
        capacity: fleet.spec.capacity,
        budget: fleet.budget(),
        passes: Vec::new(),
        refused: None,
    };
    let event_time = now.max(fleet.image_set_at);
    let first = planner::apply_intent(
        fleet,
        &Intent::ImageReady {
            fleet: fleet.spec.name.clone(),
            image: image.clone(),
        },
        event_time,
        now,
    )?;
    if let Some(reason) = first.changes.iter().find_map(|c| match c {
        Change::ImageRefused { reason, .. } | Change::Ignored { reason } => Some(reason.clone()),
        _ => None,
    }) {
        plan.refused = Some(reason);
        return Ok(plan);
    }
    simulate(fleet, first, now, interval, &mut plan)?;
    Ok(plan)
}

/// Runs `first` (a step planned on `fleet`: an image announced, a fleet file applied) and the
/// reconcile passes that follow it in the idealised world, until no rollout is active, noting
/// each pass that does something in `plan`. The one loop behind `plan_rollout` and `plan_spec`.
fn simulate(
    fleet: &Fleet,
    first: Step,
    now: Timestamp,
    interval: Duration,
    plan: &mut RolloutPlan,
) -> Result<()> {
    let originals = fleet.live_instances().map(|i| i.id.clone()).collect();
    let mut world = World {
        fleet: fleet.clone(),
        next_id: 0,
        now,
        originals,
    };
    let first = first.then(|f| planner::reconcile(f, &world.observe(), now));
    world.run(first, plan);
    for _ in 0..MAX_PASSES {
        let active = world
            .fleet
            .rollout
            .as_ref()
            .is_some_and(|r| r.status.is_active());
        if !active {
            break;
        }
        // Held by its windows: the next pass when they open (the plan ends if they never do).
        let waiting = world
            .fleet
            .rollout
            .as_ref()
            .and_then(|r| r.waiting.as_ref());
        if let Some(w) = waiting {
            match w.opens {
                Some(t) => world.now = t.max(world.now + interval),
                None => break,
            }
            let step = planner::reconcile(&world.fleet, &world.observe(), world.now);
            world.run(step, plan);
            world.report_healthy(plan)?;
            continue;
        }
        let paused_until = world
            .fleet
            .rollout
            .as_ref()
            .and_then(|r| r.pause.as_ref())
            .map(|p| p.until);
        match paused_until {
            // A timed pause: the next pass after it.
            Some(Some(until)) => world.now = until.max(world.now + interval),
            // Until `rollout resume`: the plan assumes the operator resumes.
            Some(None) => {
                let resume = Intent::RolloutControl {
                    fleet: fleet.spec.name.clone(),
                    action: ControlAction::Resume,
                };
                let step = planner::apply_intent(&world.fleet, &resume, world.now, world.now)?;
                world.commit(step);
                world.now += interval;
            }
            None => world.now += interval,
        }
        let step = planner::reconcile(&world.fleet, &world.observe(), world.now);
        world.run(step, plan);
        world.report_healthy(plan)?;
    }
    Ok(())
}

/// One field of the fleet file that a change sets to another value, by its path in the file
/// (`instance_type`, `policy.max_surge`, `tags.team`). `user_data` is shown by its size and a
/// short hash, never its text. `template_version` is the version a floating launch template
/// resolves to (not written in the file).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    /// `null`: not set.
    pub from: serde_json::Value,
    pub to: serde_json::Value,
}

impl FieldChange {
    /// `instance_type: t3.micro -> t3.small`.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} -> {}",
            self.field,
            show_value(&self.from),
            show_value(&self.to)
        )
    }
}

/// A value as a fleet file would write it (flow style), `(not set)` for none.
fn show_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "(not set)".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(show_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{k}: {}", show_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// The order fields are listed in: as a fleet file is usually written (README), then any other.
const FIELD_ORDER: &[&str] = &[
    "name",
    "image",
    "capacity",
    "instance_type",
    "launch_template",
    "template_version",
    "subnets",
    "security_groups",
    "key_name",
    "instance_profile",
    "tags",
    "user_data",
    "policy",
];

/// `user_data` as a diff shows it: its size and the start of its FNV-1a hash.
fn user_data_summary(text: &str) -> serde_json::Value {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let hash = format!("{hash:016x}");
    serde_json::Value::String(format!("{} bytes, hash {}", text.len(), &hash[..8]))
}

/// The fields `to` sets to another value than `from`, leaf by leaf (lists are compared whole).
pub fn spec_changes(from: &FleetSpec, to: &FleetSpec) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let (a, b) = (
        serde_json::to_value(from).unwrap_or_default(),
        serde_json::to_value(to).unwrap_or_default(),
    );
    diff_values("", &a, &b, &mut out);
    for c in &mut out {
        if c.field == "user_data" {
            for side in [&mut c.from, &mut c.to] {
                if let Some(text) = side.as_str().map(str::to_string) {
                    *side = user_data_summary(&text);
                }
            }
        }
    }
    sort_fields(&mut out);
    out
}

/// In `FIELD_ORDER`, keeping the order within a field (stable).
fn sort_fields(fields: &mut [FieldChange]) {
    fields.sort_by_key(|c| {
        let top = c.field.split('.').next().unwrap_or_default();
        FIELD_ORDER
            .iter()
            .position(|f| *f == top)
            .unwrap_or(FIELD_ORDER.len())
    });
}

fn diff_values(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<FieldChange>,
) {
    use serde_json::Value;
    if a == b {
        return;
    }
    let (empty_a, empty_b) = (serde_json::Map::new(), serde_json::Map::new());
    let object = |v: &Value| matches!(v, Value::Object(_) | Value::Null);
    if object(a) && object(b) && !(a.is_null() && b.is_null()) {
        let ma = a.as_object().unwrap_or(&empty_a);
        let mb = b.as_object().unwrap_or(&empty_b);
        let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
        for key in keys {
            let field = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let (va, vb) = (
                ma.get(key).unwrap_or(&Value::Null),
                mb.get(key).unwrap_or(&Value::Null),
            );
            diff_values(&field, va, vb, out);
        }
        return;
    }
    out.push(FieldChange {
        field: path.to_string(),
        from: a.clone(),
        to: b.clone(),
    });
}

/// Why a fleet file starts a rollout: what instances are made of changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rolls {
    /// The rollout it starts.
    pub rollout: u64,
    /// The image changes: `[from, to]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<[ImageId; 2]>,
    /// Fields of the launch definition that change (`instance_type`, `launch_template`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub definition: Vec<String>,
    /// Subnets taken away that instances run in (a subnet added rolls nothing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subnets_removed: Vec<String>,
    /// The rollout in progress it supersedes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<u64>,
}

impl Rolls {
    /// `image ami-1 -> ami-2; instance_type changed; subnet subnet-x taken away`.
    pub fn reasons(&self) -> String {
        let mut out = Vec::new();
        if let Some([from, to]) = &self.image {
            out.push(format!("image {from} -> {to}"));
        }
        if !self.definition.is_empty() {
            out.push(format!("{} changed", self.definition.join(", ")));
        }
        if !self.subnets_removed.is_empty() {
            out.push(format!(
                "subnet {} taken away",
                self.subnets_removed.join(", ")
            ));
        }
        out.join("; ")
    }
}

/// A live instance that would not match the spec after the change, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceDrift {
    pub instance: InstanceId,
    pub image: ImageId,
    pub drift: Vec<Drift>,
}

/// `phoenix fleet apply --diff`: what applying a fleet file would do, worked out without doing
/// it — the fields it changes, whether it starts a rollout and why, the instances that would no
/// longer match the spec, and the passes it would take (`plan`, as `plan_rollout` gives them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecPlan {
    pub fleet: String,
    /// The fleet's version the plan starts from.
    pub version: u64,
    pub fields: Vec<FieldChange>,
    /// Set when it starts a rollout.
    pub rolls: Option<Rolls>,
    /// Why it rolls nothing, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolls_nothing: Option<String>,
    /// Live instances that would differ from the spec once it is applied.
    pub drift: Vec<InstanceDrift>,
    /// Live instances.
    pub live: u32,
    pub plan: RolloutPlan,
}

impl SpecPlan {
    /// `starts rollout 2: instance_type changed` or `rolls nothing: ...`.
    pub fn verdict(&self) -> String {
        match (&self.rolls, &self.rolls_nothing) {
            (Some(r), _) => {
                let superseding = r
                    .supersedes
                    .map(|s| format!(" (supersedes rollout {s})"))
                    .unwrap_or_default();
                format!("starts rollout {}: {}{superseding}", r.rollout, r.reasons())
            }
            (None, Some(why)) => format!("rolls nothing: {why}"),
            (None, None) => "rolls nothing".into(),
        }
    }
}

/// Plans what applying `spec` over a complete `fleet` would do, its launch template (when
/// floating) resolved to `template_version`, as `planner::update_spec` decides it, then the
/// passes that follow in the same idealised world as `plan_rollout` (one loop for both). A spec
/// `update_spec` refuses (another fleet's name, a quarantined image, an invalid field) is the
/// same error here.
pub fn plan_spec(
    fleet: &Fleet,
    spec: FleetSpec,
    resolved: impl Into<planner::Resolved>,
    now: Timestamp,
    interval: Duration,
) -> Result<SpecPlan> {
    let looked_up: planner::Resolved = resolved.into();
    let template_version = looked_up.template_version.clone();
    let floats = spec
        .launch_template
        .as_ref()
        .is_some_and(|t| t.is_floating());
    let resolved = template_version.clone().filter(|_| floats);
    let mut fields = spec_changes(&fleet.spec, &spec);
    if floats && resolved != fleet.template_version {
        fields.push(FieldChange {
            field: "template_version".into(),
            from: fleet.template_version.clone().into(),
            to: resolved.into(),
        });
        sort_fields(&mut fields);
    }
    let step = planner::update_spec(fleet, spec, looked_up, now)?;
    let after = &step.fleet;
    let rolls = step.changes.iter().find_map(|c| match c {
        Change::RolloutStarted {
            rollout,
            from,
            to,
            changed,
        } => {
            let before_subnets = after
                .rollout
                .as_ref()
                .and_then(|r| r.definition.as_ref())
                .and_then(|d| d.subnets.clone())
                .unwrap_or_default();
            let subnets_removed = before_subnets
                .into_iter()
                .filter(|s| !after.spec.subnets.contains(s))
                .filter(|s| after.live_instances().any(|i| i.subnet.as_ref() == Some(s)))
                .collect();
            Some(Rolls {
                rollout: *rollout,
                image: from.clone().filter(|f| f != to).map(|f| [f, to.clone()]),
                definition: changed
                    .iter()
                    .filter(|f| f.as_str() != "subnets")
                    .cloned()
                    .collect(),
                subnets_removed,
                supersedes: step.changes.iter().find_map(|c| match c {
                    Change::RolloutSuperseded { rollout } => Some(*rollout),
                    _ => None,
                }),
            })
        }
        _ => None,
    });
    let rolls_nothing = rolls.is_none().then(|| {
        let mut top: Vec<&str> = Vec::new();
        for f in &fields {
            let name = f.field.split('.').next().unwrap_or_default();
            if !top.contains(&name) {
                top.push(name);
            }
        }
        let mut why = if top.is_empty() {
            "the fleet file is unchanged".to_string()
        } else {
            format!(
                "{} {} not what instances are made of",
                top.join(", "),
                if top.len() == 1 { "is" } else { "are" }
            )
        };
        if let Some(r) = after.rollout.as_ref().filter(|r| r.status.is_active()) {
            why.push_str(&format!("; rollout {} goes on", r.id));
        }
        why
    });
    let target = Target::of(after);
    let drift = after
        .live_instances()
        .filter_map(|i| {
            let drift = target.drift(i);
            (!drift.is_empty()).then(|| InstanceDrift {
                instance: i.id.clone(),
                image: i.image.clone(),
                drift,
            })
        })
        .collect();
    let mut plan = RolloutPlan {
        fleet: fleet.spec.name.to_string(),
        from: fleet.spec.image.clone(),
        to: after.spec.image.clone(),
        capacity: after.spec.capacity,
        budget: after.budget(),
        passes: Vec::new(),
        refused: None,
    };
    let live = after.live_instances().count() as u32;
    simulate(fleet, step, now, interval, &mut plan)?;
    Ok(SpecPlan {
        fleet: fleet.spec.name.to_string(),
        version: fleet.version,
        fields,
        rolls,
        rolls_nothing,
        drift,
        live,
        plan,
    })
}

struct World {
    fleet: Fleet,
    next_id: u64,
    now: Timestamp,
    /// The instances that existed before the plan (its passes terminate these by id).
    originals: std::collections::BTreeSet<InstanceId>,
}

impl World {
    /// Every live instance as EC2 would show it: running, both status checks ok.
    /// With target groups, every group reports an instance healthy until it is on its way out,
    /// and drained at once after.
    fn observe(&self) -> Vec<Observed> {
        let groups = self.fleet.spec.target_groups();
        self.fleet
            .live_instances()
            .map(|i| {
                let mut o = Observed::running_ok(i);
                if i.disposal.is_none() {
                    o.targets = groups
                        .iter()
                        .map(|g| (g.arn.clone(), TargetState::Healthy))
                        .collect();
                }
                o
            })
            .collect()
    }

    /// The application's health checker: a `HealthCheckPassed` for every instance the last pass
    /// saw running that still waits for one, when the fleet's health check listens for them. As
    /// the controller does, the event that makes a wave healthy reconciles the fleet at once, so
    /// the next wave starts in the same pass.
    fn report_healthy(&mut self, plan: &mut RolloutPlan) -> Result<()> {
        if !self.fleet.spec.policy.health_check.event {
            return Ok(());
        }
        let waiting: Vec<InstanceId> = self
            .fleet
            .live_instances()
            .filter(|i| {
                i.state == Lifecycle::Running
                    && i.health == Health::Unknown
                    && !i.signals.passed
                    && i.disposal.is_none()
            })
            .map(|i| i.id.clone())
            .collect();
        for instance in waiting {
            let passed = Intent::HealthCheckPassed { instance };
            let step = planner::apply_intent(&self.fleet, &passed, self.now, self.now)?;
            let changes = step.changes.clone();
            self.run(step, plan);
            let wave_healthy = planner::wave_to_recheck(&self.fleet, &changes).is_some_and(|ids| {
                ids.iter()
                    .filter_map(|id| self.fleet.instances.get(id))
                    .all(|i| !i.is_live() || i.is_healthy())
            });
            if wave_healthy {
                let step = planner::reconcile(&self.fleet, &self.observe(), self.now);
                self.run(step, plan);
            }
        }
        Ok(())
    }

    fn commit(&mut self, step: Step) {
        if !step.is_noop() {
            self.fleet = step.fleet;
            self.fleet.version += 1;
        }
    }

    fn healthy(&self) -> u32 {
        self.fleet
            .live_instances()
            .filter(|i| i.is_healthy())
            .count() as u32
    }

    /// Commits a step, carries out its commands in the executor's order, records the outcomes,
    /// and notes the pass in the plan if it did anything.
    fn run(&mut self, step: Step, plan: &mut RolloutPlan) {
        let commands = step.commands.clone();
        let pause_before = self.fleet.rollout.as_ref().and_then(|r| r.pause.clone());
        let waiting_before = self.fleet.rollout.as_ref().and_then(|r| r.waiting.clone());
        self.commit(step);
        let mut outcomes = Vec::new();
        let mut live = self.fleet.live_instances().count() as u32;
        let mut healthy = self.healthy();
        let (mut peak, mut floor) = (live, healthy);
        let mut pass = PlannedPass {
            at_seconds: 0,
            wave: None,
            launch: 0,
            terminate: Vec::new(),
            peak: 0,
            healthy_floor: 0,
            pause: None,
        };
        let ordered = commands
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Command::Terminate {
                        after_launch: None,
                        ..
                    } | Command::Deregister {
                        after_launch: None,
                        ..
                    } | Command::Register { .. }
                        | Command::Tag { .. }
                        | Command::Untag { .. }
                        | Command::Detach { .. }
                )
            })
            .chain(
                commands
                    .iter()
                    .filter(|c| matches!(c, Command::Launch { .. })),
            )
            .chain(commands.iter().filter(|c| {
                matches!(
                    c,
                    Command::Terminate {
                        after_launch: Some(_),
                        ..
                    } | Command::Deregister {
                        after_launch: Some(_),
                        ..
                    }
                )
            }));
        let definition = self.fleet.definition().fingerprint();
        for cmd in ordered {
            match cmd {
                Command::Launch {
                    token,
                    count,
                    offerings,
                    ..
                } => {
                    // EC2 is assumed to have capacity for the first offering.
                    let first = offerings.first();
                    let instances: Vec<Launched> = (0..*count)
                        .map(|_| {
                            self.next_id += 1;
                            Launched {
                                id: fake_id(self.next_id),
                                launched_at: Some(self.now),
                                state: Lifecycle::Pending,
                                zone: first.and_then(|o| o.zone.clone()),
                                instance_type: first.and_then(|o| o.instance_type.clone()),
                                subnet: first.and_then(|o| o.subnet.clone()),
                                definition: Some(definition.clone()),
                            }
                        })
                        .collect();
                    live += count;
                    pass.launch += count;
                    outcomes.push(Outcome::Launched {
                        token: token.clone(),
                        instances,
                        request_ids: Vec::new(),
                        refused: Vec::new(),
                    });
                }
                Command::Terminate { instances, .. } => {
                    for id in instances {
                        if let Some(i) = self.fleet.instances.get(id).filter(|i| i.is_live()) {
                            live = live.saturating_sub(1);
                            if i.is_healthy() {
                                healthy = healthy.saturating_sub(1);
                            }
                            if self.originals.contains(id) {
                                pass.terminate.push(id.clone());
                            }
                        }
                    }
                    outcomes.push(Outcome::Terminated {
                        instances: instances.clone(),
                        request_ids: Vec::new(),
                    });
                }
                // Out of the load balancers at once; terminated by a later pass.
                Command::Deregister { instances, .. } => {
                    for id in instances {
                        if self.fleet.instances.get(id).is_some_and(|i| i.is_healthy()) {
                            healthy = healthy.saturating_sub(1);
                        }
                    }
                    outcomes.push(Outcome::Deregistered {
                        instances: instances.clone(),
                        delay: crate::model::Seconds(0),
                        request_ids: Vec::new(),
                    });
                }
                Command::Register {
                    instances,
                    lands_by,
                    ..
                } => outcomes.push(Outcome::Registered {
                    instances: instances.clone(),
                    lands_by: *lands_by,
                    request_ids: Vec::new(),
                }),
                Command::Tag { instances } => outcomes.push(Outcome::Tagged {
                    instances: instances.clone(),
                    gone: Vec::new(),
                }),
                Command::Untag { instances } => outcomes.push(Outcome::Untagged {
                    instances: instances.clone(),
                }),
                // Out of the group's target groups until registered with the fleet's again.
                Command::Detach { group, instances } => {
                    for id in instances {
                        if self.fleet.instances.get(id).is_some_and(|i| i.is_healthy()) {
                            healthy = healthy.saturating_sub(1);
                        }
                    }
                    outcomes.push(Outcome::Detached {
                        group: group.clone(),
                        instances: instances.clone(),
                        request_ids: Vec::new(),
                    });
                }
            }
            peak = peak.max(live);
            floor = floor.min(healthy);
        }
        // In parts, one transaction each, as the executor records them.
        for part in planner::outcome_parts(&outcomes) {
            let record = planner::record_outcome_part(&self.fleet, &outcomes, part, self.now);
            self.commit(record);
        }
        let rollout = self.fleet.rollout.as_ref();
        let pause_after = rollout.and_then(|r| r.pause.clone());
        if pause_after.is_some() && pause_after != pause_before {
            pass.pause = pause_after.map(|p| p.reason);
        }
        // Held by the fleet's windows or a freeze: the plan says until when.
        let waiting_after = rollout.and_then(|r| r.waiting.clone());
        if let Some(w) = waiting_after.filter(|_| waiting_before.is_none()) {
            pass.pause = Some(match w.opens {
                Some(t) => format!(
                    "waits for its window ({}) until {}",
                    w.reason,
                    t.format("%Y-%m-%d %H:%M UTC")
                ),
                None => format!("waits for its window ({}), which does not open", w.reason),
            });
        }
        if pass.launch == 0 && pass.terminate.is_empty() && pass.pause.is_none() {
            return;
        }
        if pass.launch > 0 {
            pass.wave = rollout
                .filter(|r| r.status != RolloutStatus::RollingBack)
                .map(|r| r.waves.len() as u32);
        }
        let start = rollout.map(|r| r.started_at).unwrap_or(self.now);
        pass.at_seconds = (self.now - start).num_seconds();
        pass.peak = peak;
        pass.healthy_floor = floor;
        plan.passes.push(pass);
    }
}

/// Ids for the instances the plan launches; they never reach AWS.
fn fake_id(n: u64) -> InstanceId {
    InstanceId::parse(&format!("i-{n:017x}")).expect("i- and 17 hex digits form an instance id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FleetSpec, Instance, Signals};

    fn t0() -> Timestamp {
        chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap()
    }

    /// The fleet file of `fleet`, with the policy lines given and `extra` lines after them.
    fn spec(capacity: u32, policy: &str, extra: &str) -> FleetSpec {
        let yaml = format!(
            "name: web\nimage: ami-00000001\ncapacity: {capacity}\ninstance_type: t3.micro\npolicy:\n{policy}{extra}"
        );
        FleetSpec::from_yaml(&yaml).unwrap()
    }

    /// A fleet of `capacity` healthy instances on image 1, with the policy lines given.
    fn fleet(capacity: u32, policy: &str) -> Fleet {
        let spec = spec(capacity, policy, "");
        let mut f = Fleet::new(spec, t0() - Duration::hours(2));
        for n in 0..capacity {
            let id = InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap();
            let instance = Instance {
                launch_hook: None,
                protected: false,
                spot: false,
                adopted: None,
                released: None,
                id: id.clone(),
                image: f.spec.image.clone(),
                launched_at: t0() - Duration::hours(1),
                state: Lifecycle::Running,
                health: Health::Healthy,
                signals: Signals {
                    elb_ok: false,
                    ec2_ok: true,
                    passed: true,
                    host_impaired: false,
                },
                token: format!("web-seed-{n}"),
                zone: None,
                instance_type: None,
                disposal: None,
                terminated_at: None,
                taints: Vec::new(),
                retirement: None,
                replacement_for: None,
                subnet: None,
                definition: None,
            };
            f.instances.insert(id, instance);
            f.live += 1;
        }
        f.complete = true;
        f
    }

    #[test]
    fn a_plan_assumes_the_health_events_the_fleet_waits_for_arrive() {
        let image = ImageId::parse("ami-00000002").unwrap();
        for signal in ["ec2", "event", "both"] {
            let f = fleet(
                6,
                &format!("  max_surge: 1\n  max_unavailable: 0\n  health_check: {signal}\n"),
            );
            let plan = plan_rollout(&f, &image, t0(), Duration::minutes(1)).unwrap();
            assert!(plan.refused.is_none(), "{signal}: {plan:#?}");
            // A wave a minute, whichever signal makes its instances healthy.
            let starts: Vec<i64> = plan
                .passes
                .iter()
                .filter(|p| p.wave.is_some())
                .map(|p| p.at_seconds)
                .collect();
            assert_eq!(starts, [0, 60, 120, 180, 240, 300], "{signal}: {plan:#?}");
            assert_eq!(plan.waves(), 6, "{signal}: {plan:#?}");
            let launched: u32 = plan.passes.iter().map(|p| p.launch).sum();
            let terminated: usize = plan.passes.iter().map(|p| p.terminate.len()).sum();
            assert_eq!((launched, terminated), (6, 6), "{signal}: {plan:#?}");
            assert!(
                plan.passes
                    .iter()
                    .all(|p| p.peak <= 7 && p.healthy_floor >= 6),
                "{signal}: {plan:#?}"
            );
        }
    }

    const SURGE_2: &str = "  max_surge: 2\n  max_unavailable: 0\n";

    fn plan_spec_of(f: &Fleet, spec: FleetSpec) -> SpecPlan {
        plan_spec(f, spec, None, t0(), Duration::minutes(1)).unwrap()
    }

    #[test]
    fn a_new_instance_type_rolls_every_instance_in_waves_of_the_surge() {
        let f = fleet(8, SURGE_2);
        let mut changed = f.spec.clone();
        changed.instance_type = Some("t3.small".into());
        let plan = plan_spec_of(&f, changed);
        assert_eq!(
            plan.fields
                .iter()
                .map(FieldChange::describe)
                .collect::<Vec<_>>(),
            ["instance_type: t3.micro -> t3.small"]
        );
        let rolls = plan.rolls.clone().expect("it rolls");
        assert_eq!(rolls.image, None, "the image stays");
        assert_eq!(rolls.definition, ["instance_type"]);
        assert_eq!(plan.verdict(), "starts rollout 1: instance_type changed");
        assert_eq!(plan.drift.len(), 8, "{plan:#?}");
        assert!(plan.drift.iter().all(|d| d.drift
            == [Drift::Definition {
                fields: vec!["instance_type".into()]
            }]));
        assert_eq!(plan.drift[0].drift[0].to_string(), "instance_type changed");
        // 8 with surge 2 and none unavailable: 4 waves of 2, never above 10 nor below 8 healthy.
        assert_eq!(plan.plan.waves(), 4, "{plan:#?}");
        let launched: u32 = plan.plan.passes.iter().map(|p| p.launch).sum();
        let terminated: usize = plan.plan.passes.iter().map(|p| p.terminate.len()).sum();
        assert_eq!((launched, terminated), (8, 8), "{plan:#?}");
        assert!(
            plan.plan
                .passes
                .iter()
                .all(|p| p.peak <= 10 && p.healthy_floor >= 8),
            "{plan:#?}"
        );
    }

    #[test]
    fn a_policy_change_rolls_nothing_and_an_unchanged_file_says_so() {
        let f = fleet(8, SURGE_2);
        let plan = plan_spec_of(&f, spec(8, "  max_surge: 3\n  max_unavailable: 0\n", ""));
        assert_eq!(
            plan.fields
                .iter()
                .map(FieldChange::describe)
                .collect::<Vec<_>>(),
            ["policy.max_surge: 2 -> 3"]
        );
        assert_eq!(plan.rolls, None);
        assert!(
            plan.verdict().starts_with("rolls nothing: policy"),
            "{plan:#?}"
        );
        assert_eq!(plan.plan.waves(), 0);
        assert!(plan.plan.passes.is_empty(), "{plan:#?}");
        assert!(plan.drift.is_empty());

        let same = plan_spec_of(&f, f.spec.clone());
        assert!(same.fields.is_empty());
        assert_eq!(same.verdict(), "rolls nothing: the fleet file is unchanged");
        assert!(same.plan.passes.is_empty());
    }

    #[test]
    fn user_data_shows_as_a_size_and_a_hash_and_a_subnet_rolls_only_when_taken_away() {
        let mut f = fleet(2, SURGE_2);
        f.spec.subnets = vec!["subnet-a".into(), "subnet-b".into()];
        let ids: Vec<InstanceId> = f.instances.keys().cloned().collect();
        for (id, subnet) in ids.iter().zip(["subnet-a", "subnet-b"]) {
            let mut i = f.instances.get(id).unwrap().clone();
            i.subnet = Some(subnet.into());
            f.instances.insert(id.clone(), i);
        }

        let script = "#!/bin/sh\necho secret-token\n";
        let with_script = spec(
            2,
            SURGE_2,
            &format!("subnets: [subnet-a, subnet-b]\nuser_data: {script:?}\n"),
        );
        let plan = plan_spec_of(&f, with_script);
        let shown = plan.fields[0].describe();
        assert!(
            shown.starts_with(&format!(
                "user_data: (not set) -> {} bytes, hash ",
                script.len()
            )) && !shown.contains("secret"),
            "{shown}"
        );
        assert_eq!(
            plan.rolls.map(|r| r.definition),
            Some(vec!["user_data".to_string()])
        );

        let added = spec(2, SURGE_2, "subnets: [subnet-a, subnet-b, subnet-c]\n");
        let plan = plan_spec_of(&f, added);
        assert_eq!(plan.rolls, None, "a subnet added rolls nothing");

        let removed = spec(2, SURGE_2, "subnets: [subnet-a, subnet-c]\n");
        let plan = plan_spec_of(&f, removed);
        let rolls = plan
            .rolls
            .clone()
            .expect("a subnet in use taken away rolls");
        assert_eq!(rolls.subnets_removed, ["subnet-b"]);
        assert_eq!(
            plan.verdict(),
            "starts rollout 1: subnet subnet-b taken away"
        );
        assert_eq!(
            plan.drift.len(),
            1,
            "only the instance in subnet-b: {plan:#?}"
        );
        assert_eq!(
            plan.drift[0].drift[0].to_string(),
            "subnet subnet-b is no longer the fleet's"
        );
        assert_eq!(plan.plan.waves(), 1, "{plan:#?}");
    }
}
