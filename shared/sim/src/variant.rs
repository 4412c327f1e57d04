//! The broken protocols the simulator drives to prove its invariants can fail: planners that
//! break one promise each (a wrapper rewriting the real planner's steps, here), the protocol's
//! own deliberate bugs (`phoenix_protocol::variant`, switched on in the controller), and a world
//! that breaks one promise of AWS's (`WorldBug`), where what the checks judge is what phoenix
//! does, or leaves undone, on it. Each must be caught, on the check it breaks.

use phoenix_core::events::{Change, Intent};
use phoenix_core::model::{
    Disposal, Fleet, Health, HookResult, HookWait, Lifecycle, Observed, Offering, RolloutStatus,
    Signals, Stage, Timestamp,
};
use phoenix_core::planner::{Command, Outcome, Step};
use phoenix_core::InstanceId;
use phoenix_protocol::planner::{CorePlanner, Planner};
use phoenix_protocol::variant::Variant as ProtocolVariant;

/// A planner that breaks one promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlannerBug {
    /// Terminations that should wait for their replacement's launch are issued at once.
    DropAfterLaunch,
    /// Every launch of a rollout wave also terminates as many healthy old instances at once
    /// (replace in place, not surge-then-drain).
    ReplaceInPlace,
    /// Launches use a quarantined image when the fleet has one.
    LaunchQuarantined,
    /// Every fresh launch decision launches one instance more than the surge allows.
    SurgeBlind,
    /// Health-check failures are ignored (recorded as such): failures stay silent.
    IgnoreHealthFailures,
    /// Reconciles as if the fleet had no rollout windows and no freezes: waves start and
    /// instances are replaced or scaled in at any hour (the policy it stores keeps them).
    IgnoreWindows,
    /// Reconciles as if every instance had been launched from the fleet's current definition:
    /// only a new image rolls; a changed instance type, user data or template version does not.
    IgnoreDrift,
    /// Reconciles as if every launching hook had ended CONTINUE: new instances are registered
    /// and counted healthy without waiting for the hook.
    IgnoreLaunchHook,
    /// Reconciles as if every target group had reported every new instance healthy: they count
    /// healthy before the load balancers send them traffic.
    IgnoreTargetHealth,
    /// Reconciles as if every terminating hook had timed out: a drained instance is terminated
    /// without waiting for the hook's answer.
    SkipTerminatingHook,
    /// Places without balancing: every launch tries the fleet's first zone only (its types
    /// there), whichever zone the planner chose — the rebalance's launches too.
    PlaceBlind,
    /// Takes Auto Scaling groups over without ever detaching their instances: the detaches it
    /// decides are never carried out.
    NeverDetach,
}

/// A simulated EC2 or Auto Scaling that breaks one promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorldBug {
    /// CreateTags answers success and tags nothing: adopted instances never carry the fleet's
    /// tag.
    ForgetTags,
    /// DeleteTags answers success and removes nothing: released instances keep phoenix's tags.
    KeepTags,
    /// CreateTags also tags the instance with the next id: one phoenix never adopted (a decoy)
    /// comes to carry the fleet's tag.
    TagNeighbour,
    /// DetachInstances answers success and detaches nothing: a group taken over keeps its
    /// instances.
    DetachNothing,
}

/// What the simulator drives: the real protocol, a broken planner, a broken protocol, or the
/// real protocol in a broken world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Real,
    Planner(PlannerBug),
    Protocol(ProtocolVariant),
    World(WorldBug),
}

impl Variant {
    pub const PLANNER: [PlannerBug; 12] = [
        PlannerBug::DropAfterLaunch,
        PlannerBug::ReplaceInPlace,
        PlannerBug::LaunchQuarantined,
        PlannerBug::SurgeBlind,
        PlannerBug::IgnoreHealthFailures,
        PlannerBug::IgnoreWindows,
        PlannerBug::IgnoreDrift,
        PlannerBug::IgnoreLaunchHook,
        PlannerBug::IgnoreTargetHealth,
        PlannerBug::SkipTerminatingHook,
        PlannerBug::PlaceBlind,
        PlannerBug::NeverDetach,
    ];

    pub const WORLD: [WorldBug; 4] = [
        WorldBug::ForgetTags,
        WorldBug::KeepTags,
        WorldBug::TagNeighbour,
        WorldBug::DetachNothing,
    ];

    /// Every variant: the real one, the planner's, the protocol's, the world's.
    pub fn all() -> Vec<Variant> {
        let mut all = vec![Variant::Real];
        all.extend(Self::PLANNER.map(Variant::Planner));
        all.extend(
            ProtocolVariant::ALL
                .into_iter()
                .filter(|v| *v != ProtocolVariant::Real)
                .map(Variant::Protocol),
        );
        all.extend(Self::WORLD.map(Variant::World));
        all
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Real => "real",
            Variant::Planner(PlannerBug::DropAfterLaunch) => "drop-after-launch",
            Variant::Planner(PlannerBug::ReplaceInPlace) => "replace-in-place",
            Variant::Planner(PlannerBug::LaunchQuarantined) => "launch-quarantined",
            Variant::Planner(PlannerBug::SurgeBlind) => "surge-blind",
            Variant::Planner(PlannerBug::IgnoreHealthFailures) => "ignore-health-failures",
            Variant::Planner(PlannerBug::IgnoreWindows) => "ignore-windows",
            Variant::Planner(PlannerBug::IgnoreDrift) => "ignore-drift",
            Variant::Planner(PlannerBug::IgnoreLaunchHook) => "ignore-launch-hook",
            Variant::Planner(PlannerBug::IgnoreTargetHealth) => "ignore-target-health",
            Variant::Planner(PlannerBug::SkipTerminatingHook) => "skip-terminating-hook",
            Variant::Planner(PlannerBug::PlaceBlind) => "place-blind",
            Variant::Planner(PlannerBug::NeverDetach) => "never-detach",
            Variant::Protocol(v) => v.name(),
            Variant::World(WorldBug::ForgetTags) => "world-forgets-tags",
            Variant::World(WorldBug::KeepTags) => "world-keeps-tags",
            Variant::World(WorldBug::TagNeighbour) => "world-tags-neighbour",
            Variant::World(WorldBug::DetachNothing) => "world-detaches-nothing",
        }
    }

    pub fn parse(s: &str) -> Option<Variant> {
        Self::all().into_iter().find(|v| v.name() == s)
    }

    /// The planner the controller plans with.
    pub fn planner(self) -> std::sync::Arc<dyn Planner> {
        match self {
            Variant::Planner(bug) => std::sync::Arc::new(Broken(bug)),
            _ => std::sync::Arc::new(CorePlanner),
        }
    }

    /// The protocol's deliberate bug, if this is one.
    pub fn protocol(self) -> ProtocolVariant {
        match self {
            Variant::Protocol(v) => v,
            _ => ProtocolVariant::Real,
        }
    }

    /// The simulated EC2's broken promise, if this is one.
    pub fn world(self) -> Option<WorldBug> {
        match self {
            Variant::World(bug) => Some(bug),
            _ => None,
        }
    }
}

/// The real planner with one bug: its steps rewritten where they are final — after the reconcile
/// of a whole fleet, after an intent on a record and one instance, after recording outcomes.
struct Broken(PlannerBug);

impl Planner for Broken {
    fn apply_intent(
        &self,
        fleet: &Fleet,
        intent: &Intent,
        event_time: Timestamp,
        now: Timestamp,
    ) -> phoenix_core::Result<Step> {
        if self.0 == PlannerBug::IgnoreHealthFailures {
            if let Intent::HealthCheckFailed { instance, .. } = intent {
                let mut step = Step::unchanged(fleet);
                step.changes.push(Change::Ignored {
                    reason: format!("{instance}: failure ignored"),
                });
                return Ok(step);
            }
        }
        let step = CorePlanner.apply_intent(fleet, intent, event_time, now)?;
        Ok(if fleet.complete {
            step
        } else {
            self.rewrite(step)
        })
    }

    fn reconcile(&self, mut step: Step, observed: &[Observed], now: Timestamp) -> Step {
        match self.0 {
            PlannerBug::IgnoreWindows => {
                let policy = &mut step.fleet.spec.policy;
                let windows = std::mem::take(&mut policy.windows);
                let freezes = std::mem::take(&mut policy.freezes);
                let mut step = CorePlanner.reconcile(step, observed, now);
                step.fleet.spec.policy.windows = windows;
                step.fleet.spec.policy.freezes = freezes;
                step
            }
            PlannerBug::IgnoreDrift => {
                let current = step.fleet.definition().fingerprint();
                let drifted: Vec<_> = step
                    .fleet
                    .live_instances()
                    .filter(|i| i.definition.as_ref() != Some(&current))
                    .map(|i| i.id.clone())
                    .collect();
                for id in drifted {
                    if let Some(i) = step.fleet.instances.get_mut(&id) {
                        i.definition = Some(current.clone());
                    }
                }
                CorePlanner.reconcile(step, observed, now)
            }
            PlannerBug::IgnoreLaunchHook | PlannerBug::SkipTerminatingHook => {
                self.forget_waits(&mut step, now);
                CorePlanner.reconcile(step, observed, now)
            }
            _ => self.rewrite(CorePlanner.reconcile(step, observed, now)),
        }
    }

    fn record_outcome_part(
        &self,
        fleet: &Fleet,
        outcomes: &[Outcome],
        part: std::ops::Range<usize>,
        now: Timestamp,
    ) -> Step {
        self.rewrite(CorePlanner.record_outcome_part(fleet, outcomes, part, now))
    }
}

impl Broken {
    /// The waits of serving traffic this bug forgets, taken out of the fleet a reconcile starts
    /// from: the launching hooks (ended CONTINUE), the terminating hooks (timed out).
    fn forget_waits(&self, step: &mut Step, now: Timestamp) {
        let ids: Vec<InstanceId> = step
            .fleet
            .live_instances()
            .filter(|i| match self.0 {
                PlannerBug::IgnoreLaunchHook => {
                    i.launch_hook.as_ref().is_some_and(HookWait::is_waiting)
                }
                _ => matches!(
                    i.disposal.as_ref().map(|d| &d.stage),
                    Some(Stage::Hook { until, .. }) if *until > now
                ),
            })
            .map(|i| i.id.clone())
            .collect();
        for id in ids {
            let Some(i) = step.fleet.instances.get_mut(&id) else {
                continue;
            };
            match self.0 {
                PlannerBug::IgnoreLaunchHook => {
                    if let Some(h) = i.launch_hook.as_mut() {
                        h.result = Some(HookResult::Continue);
                        h.ended_at = Some(now);
                    }
                }
                _ => {
                    if let Some(Stage::Hook { until, .. }) =
                        i.disposal.as_mut().map(|d| &mut d.stage)
                    {
                        *until = now;
                    }
                }
            }
            step.touched.insert(id);
        }
    }

    fn rewrite(&self, mut step: Step) -> Step {
        match self.0 {
            PlannerBug::IgnoreHealthFailures
            | PlannerBug::IgnoreWindows
            | PlannerBug::IgnoreDrift
            | PlannerBug::IgnoreLaunchHook
            | PlannerBug::SkipTerminatingHook => {}
            PlannerBug::IgnoreTargetHealth => count_unserved(&mut step),
            PlannerBug::PlaceBlind => place_blind(&mut step),
            PlannerBug::NeverDetach => step
                .commands
                .retain(|c| !matches!(c, Command::Detach { .. })),
            PlannerBug::DropAfterLaunch => {
                for c in &mut step.commands {
                    if let Command::Terminate { after_launch, .. } = c {
                        *after_launch = None;
                    }
                }
            }
            PlannerBug::ReplaceInPlace => replace_in_place(&mut step),
            PlannerBug::LaunchQuarantined => {
                if let Some(bad) = step.fleet.quarantined.keys().next().cloned() {
                    for c in &mut step.commands {
                        if let Command::Launch { token, image, .. } = c {
                            *image = bad.clone();
                            if let Some(p) =
                                step.fleet.pending.iter_mut().find(|p| p.token == *token)
                            {
                                p.image = bad.clone();
                            }
                        }
                    }
                }
            }
            PlannerBug::SurgeBlind => {
                let fresh: Vec<String> = step
                    .changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::LaunchDecided { token, .. } => Some(token.clone()),
                        _ => None,
                    })
                    .collect();
                for c in &mut step.commands {
                    if let Command::Launch { token, count, .. } = c {
                        if fresh.contains(token) {
                            *count += 1;
                            if let Some(p) =
                                step.fleet.pending.iter_mut().find(|p| p.token == *token)
                            {
                                p.count += 1;
                            }
                        }
                    }
                }
                for c in &mut step.changes {
                    if let Change::LaunchDecided { count, .. } = c {
                        *count += 1;
                    }
                }
            }
        }
        step
    }
}

/// Every running instance not counted yet whose other signals are in (those its policy names,
/// its launching hook passed) counts healthy, whatever the target groups report.
/// Every launch's offerings moved into the fleet's first zone (its first subnet), one per type.
fn place_blind(step: &mut Step) {
    let Some((zone, subnet)) = step.fleet.zones().into_iter().next() else {
        return;
    };
    let blind = |offerings: &mut Vec<Offering>| {
        let mut types: Vec<Option<String>> = Vec::new();
        for o in offerings.iter() {
            if !types.contains(&o.instance_type) {
                types.push(o.instance_type.clone());
            }
        }
        *offerings = types
            .into_iter()
            .map(|t| Offering {
                instance_type: t,
                subnet: Some(subnet.clone()),
                zone: Some(zone.clone()),
                spot: false,
            })
            .collect();
    };
    for c in &mut step.commands {
        if let Command::Launch { offerings, .. } = c {
            blind(offerings);
        }
    }
    for p in &mut step.fleet.pending {
        blind(&mut p.offerings);
    }
}

fn count_unserved(step: &mut Step) {
    let check = step.fleet.spec.policy.health_check;
    let ready: Vec<InstanceId> = step
        .fleet
        .live_instances()
        .filter(|i| {
            let signals = Signals {
                elb_ok: true,
                ..i.signals
            };
            i.health == Health::Unknown
                && i.state == Lifecycle::Running
                && i.disposal.is_none()
                && i.launch_hook_passed()
                && check.satisfied_by(signals)
        })
        .map(|i| i.id.clone())
        .collect();
    for id in ready {
        if let Some(i) = step.fleet.instances.get_mut(&id) {
            i.health = Health::Healthy;
        }
        step.touched.insert(id.clone());
        step.changes.push(Change::HealthChanged {
            instance: id,
            health: Health::Healthy,
        });
    }
}

/// For each instance a rollout wave launches, one healthy old-image instance goes at once.
fn replace_in_place(step: &mut Step) {
    let rolling = step
        .fleet
        .rollout
        .as_ref()
        .is_some_and(|r| r.status == RolloutStatus::InProgress);
    if !rolling || !step.fleet.complete {
        return;
    }
    let target = step.fleet.spec.image.clone();
    let launching: u32 = step
        .commands
        .iter()
        .map(|c| match c {
            Command::Launch { image, count, .. } if *image == target => *count,
            _ => 0,
        })
        .sum();
    let victims: Vec<_> = step
        .fleet
        .live_instances()
        .filter(|i| i.image != target && i.disposal.is_none() && i.is_healthy())
        .take(launching as usize)
        .map(|i| i.id.clone())
        .collect();
    if victims.is_empty() {
        return;
    }
    let now = step
        .fleet
        .pending
        .iter()
        .map(|p| p.decided_at)
        .max()
        .unwrap_or(step.fleet.created_at);
    for id in &victims {
        if let Some(i) = step.fleet.instances.get_mut(id) {
            i.disposal = Some(Disposal {
                stage: Default::default(),
                reason: "replaced in place".into(),
                decided_at: now,
                after_launch: None,
                drained: false,
            });
        }
        step.touched.insert(id.clone());
        step.changes.push(Change::TerminationDecided {
            instance: id.clone(),
            reason: "replaced in place".into(),
        });
    }
    step.commands.insert(
        0,
        Command::Terminate {
            instances: victims,
            after_launch: None,
        },
    );
}
