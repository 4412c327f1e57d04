//! `phoenix plan F --image X`: the rollout a new image would cause, worked out by running the real
//! planner against an idealised world (every launch succeeds, every new instance is running with
//! its status checks passed by the next pass, and the `HealthCheckPassed` a fleet with
//! `health_check: event` or `both` waits for arrives once it runs) without touching anything.
//! The real rollout makes the same decisions as long as the world behaves that way; it differs
//! where the world does (a slow boot, a failure, a health report that never comes).

use crate::error::Result;
use crate::events::{Change, ControlAction, Intent};
use crate::ids::{ImageId, InstanceId};
use crate::model::{
    Budget, Fleet, Health, HealthSignal, Lifecycle, Observed, RolloutStatus, Timestamp,
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
    let originals = fleet.live_instances().map(|i| i.id.clone()).collect();
    let mut world = World {
        fleet: fleet.clone(),
        next_id: 0,
        now,
        originals,
    };
    let event_time = now.max(fleet.image_set_at);
    let first = planner::apply_intent(
        &world.fleet,
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
    let first = first.then(|f| planner::reconcile(f, &world.observe(), now));
    world.run(first, &mut plan);
    for _ in 0..MAX_PASSES {
        let active = world
            .fleet
            .rollout
            .as_ref()
            .is_some_and(|r| r.status.is_active());
        if !active {
            break;
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
        world.run(step, &mut plan);
        world.report_healthy(&mut plan)?;
    }
    Ok(plan)
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
    fn observe(&self) -> Vec<Observed> {
        self.fleet
            .live_instances()
            .map(Observed::running_ok)
            .collect()
    }

    /// The application's health checker: a `HealthCheckPassed` for every instance the last pass
    /// saw running that still waits for one, when the fleet's health check listens for them. As
    /// the controller does, the event that makes a wave healthy reconciles the fleet at once, so
    /// the next wave starts in the same pass.
    fn report_healthy(&mut self, plan: &mut RolloutPlan) -> Result<()> {
        if self.fleet.spec.policy.health_check == HealthSignal::Ec2 {
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
                    }
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
                    }
                )
            }));
        let definition = self.fleet.definition().fingerprint();
        for cmd in ordered {
            match cmd {
                Command::Launch { token, count, .. } => {
                    let instances: Vec<Launched> = (0..*count)
                        .map(|_| {
                            self.next_id += 1;
                            Launched {
                                id: fake_id(self.next_id),
                                launched_at: Some(self.now),
                                state: Lifecycle::Pending,
                                zone: None,
                                instance_type: None,
                                subnet: None,
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

    /// A fleet of `capacity` healthy instances on image 1, with the policy lines given.
    fn fleet(capacity: u32, policy: &str) -> Fleet {
        let yaml = format!(
            "name: web\nimage: ami-00000001\ncapacity: {capacity}\ninstance_type: t3.micro\npolicy:\n{policy}"
        );
        let spec = FleetSpec::from_yaml(&yaml).unwrap();
        let mut f = Fleet::new(spec, t0() - Duration::hours(2));
        for n in 0..capacity {
            let id = InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap();
            let instance = Instance {
                id: id.clone(),
                image: f.spec.image.clone(),
                launched_at: t0() - Duration::hours(1),
                state: Lifecycle::Running,
                health: Health::Healthy,
                signals: Signals {
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
}
