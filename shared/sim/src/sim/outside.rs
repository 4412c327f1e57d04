//! What happens to the fleet from outside phoenix: the health checker's reports, the operator and
//! the pipeline, and the faults of the world — each an event on the bus or a change to EC2 or the
//! target groups. (The lifecycle hooks' handler is `hooks`.)

use super::{describe_intent, describe_what, Sim, What};
use crate::ec2::{Pool, FLEET, INSTANCE_TYPE, ZONES};
use crate::scenario::Edit;
use chrono::Duration;
use phoenix_core::events::{ControlAction, Intent, ScaleTarget};
use phoenix_core::model::{Lifecycle, Openness, RolloutStatus, TAG_FLEET};
use phoenix_core::InstanceId;

impl Sim {
    /// A load balancer's health check turned into events: a broken instance is reported failed
    /// within a minute of when it would have been ready, then every one to two minutes while it
    /// stays broken; a healthy one is reported passed (for fleets that count those) a few times.
    pub(super) fn health_checker(&mut self) {
        let mut emit = Vec::new();
        {
            let mut w = self.world.lock();
            let w = &mut *w;
            let now = w.now;
            // The chatty checker reports every instance of a fleet of up to ten (five behind
            // target groups or with hooks, whose instances bring more events and longer passes):
            // beyond, its reports alone outgrow what the simulated Lambda concurrency
            // (`fan_out`) delivers, and hook answers queue behind them past their timeout.
            let spec = &w.books.meta().spec;
            let most = if spec.target_groups().is_empty() && spec.hooks.is_empty() {
                10
            } else {
                5
            };
            let chatty = self.cfg.chatty && spec.capacity <= most;
            let wants_passed = chatty || w.books.meta().spec.policy.health_check.event;
            let ids: Vec<InstanceId> = w.ec2.alive().map(|vm| vm.id.clone()).collect();
            for id in ids {
                let (fault, healthy) = {
                    let vm = &w.ec2.vms[&id];
                    (
                        w.ec2.fault(vm) && now >= vm.ready_at,
                        w.ec2.world_healthy(vm, now),
                    )
                };
                let detect = w.rng.range(10, 60) as i64;
                let again = w.rng.range(90, 180) as i64;
                let Some(vm) = w.ec2.vms.get_mut(&id) else {
                    continue;
                };
                if fault {
                    match vm.next_fail_report {
                        None => vm.next_fail_report = Some(now + Duration::seconds(detect)),
                        Some(t) if now >= t => {
                            vm.reported = true;
                            vm.next_fail_report = Some(now + Duration::seconds(again));
                            emit.push(Intent::HealthCheckFailed {
                                instance: id.clone(),
                                reason: "target failed its health check".into(),
                            });
                        }
                        Some(_) => {}
                    }
                } else {
                    vm.next_fail_report = None;
                }
                if wants_passed
                    && healthy
                    && (vm.passes_left > 0 || chatty)
                    && vm.next_pass_report.is_some_and(|t| now >= t)
                {
                    vm.passes_left = vm.passes_left.saturating_sub(1);
                    // A chatty checker reports every healthy instance every 30 s, new or not, as a
                    // load balancer's checks turned into events would.
                    let next = if chatty { 30 } else { again };
                    vm.next_pass_report = Some(now + Duration::seconds(next));
                    emit.push(Intent::HealthCheckPassed { instance: id });
                }
            }
        }
        for intent in emit {
            self.emit(What::Intent(intent));
        }
    }

    // --- the operator and the pipeline ----------------------------------------------------------

    pub(super) fn operator(&mut self) {
        let (what, call) = 'what: {
            let mut w = self.world.lock();
            let fleet = w.books.meta().spec.name.clone();
            // What only some seeds do has weight 0 in the others, which then draw as before.
            let sc = &self.scenario;
            let pick = w.rng.weighted(&[
                30,
                12,
                8,
                8,
                12,
                3,
                5,
                6,
                3,
                5,
                if sc.edits { 8 } else { 0 },
                if sc.template.is_some() { 6 } else { 0 },
                if sc.scheduled() { 4 } else { 0 },
                if sc.protection { 6 } else { 0 },
                if self.start.release && self.cfg.releases {
                    3
                } else {
                    0
                },
            ]);
            let intent = match pick {
                0 => {
                    let image = w.rng.pick(&self.scenario.images).clone();
                    Intent::ImageReady { fleet, image }
                }
                1 => Intent::Scale {
                    fleet,
                    target: ScaleTarget::Desired(
                        w.rng.range(0, u64::from(self.scenario.max_capacity)) as u32,
                    ),
                },
                2 => {
                    let d = *w.rng.pick(&[-3i64, -2, -1, 1, 2, 3]);
                    Intent::Scale {
                        fleet,
                        target: ScaleTarget::Delta(d),
                    }
                }
                3..=7 => Intent::RolloutControl {
                    fleet,
                    action: [
                        ControlAction::Pause,
                        ControlAction::Resume,
                        ControlAction::Abort,
                        ControlAction::Undo,
                        ControlAction::ResumeRepairs,
                    ][pick - 3],
                },
                // Clearing a quarantine, when there is one; else another resume.
                8 => match w.books.meta().quarantined.keys().next().cloned() {
                    Some(image) => Intent::ClearQuarantine { fleet, image },
                    None => Intent::RolloutControl {
                        fleet,
                        action: ControlAction::Resume,
                    },
                },
                9 => Intent::Reconcile { fleet: Some(fleet) },
                // `phoenix fleet apply` of the file changed: a call, made now.
                10 => {
                    let edit = Edit::draw(&mut w.rng);
                    break 'what (Some(What::Apply(edit)), true);
                }
                // The pipeline makes a new version of the launch template, the default: the
                // next pass over the fleet resolves it (EC2 is asked on every one) and rolls.
                11 => {
                    let name = sc.template.clone().unwrap_or_default();
                    let version = w.ec2.new_template_version(&name).unwrap_or_default();
                    w.stats.template_versions += 1;
                    w.note(format!(
                        "pipeline: launch template {name} version {version}"
                    ));
                    break 'what (None, false);
                }
                // The operator protects an instance (`phoenix:protected`), up to two at once, or
                // lifts a protection: no event, a tag the next pass over the fleet reads.
                13 => {
                    let alive: Vec<InstanceId> = w.ec2.alive().map(|vm| vm.id.clone()).collect();
                    let protected: Vec<InstanceId> = w
                        .ec2
                        .alive()
                        .filter(|vm| vm.protected())
                        .map(|vm| vm.id.clone())
                        .collect();
                    let lift = protected.len() >= 2 || (!protected.is_empty() && w.rng.chance(400));
                    let (id, on) = if lift {
                        (w.rng.pick(&protected).clone(), false)
                    } else if !alive.is_empty() {
                        (w.rng.pick(&alive).clone(), true)
                    } else {
                        break 'what (None, false);
                    };
                    if let Some(vm) = w.ec2.vms.get_mut(&id) {
                        vm.set_protected(on);
                    }
                    if on {
                        w.checker.on_protected(&id);
                    }
                    w.stats.protections += 1;
                    let what = if on {
                        "protects"
                    } else {
                        "lifts the protection of"
                    };
                    w.note(format!("operator {what} {id}"));
                    break 'what (None, false);
                }
                // `phoenix fleet release`: a call, made now; refused while anything is under way.
                14 => break 'what (Some(What::Release), true),
                // `rollout resume --now`: the rollout goes on outside its windows and freezes.
                _ => Intent::RolloutControl {
                    fleet,
                    action: ControlAction::ResumeNow,
                },
            };
            (Some(What::Intent(intent)), false)
        };
        let Some(what) = what else {
            return;
        };
        self.note(format!("operator: {}", describe_what(&what)));
        if call {
            self.call(what);
        } else {
            self.emit(what);
        }
    }

    /// In the calm phase, once a minute: what an operator does to let the fleet finish — resume a
    /// paused rollout (undo it if its image failed the health gate), let a rollout the windows
    /// hold go on now, resume halted repairs, clear the quarantine of the fleet's own image when nothing else can
    /// be launched.
    pub(super) fn operator_tidies_up(&mut self) {
        let mut intents = Vec::new();
        let mut reported = Vec::new();
        {
            let w = self.world.lock();
            let meta = w.books.meta();
            let fleet = meta.spec.name.clone();
            if let Some(r) = meta
                .rollout
                .as_ref()
                .filter(|r| r.status == RolloutStatus::Paused)
            {
                let action = if meta.quarantined.contains_key(&r.to) {
                    ControlAction::Undo
                } else {
                    ControlAction::Resume
                };
                intents.push(Intent::RolloutControl {
                    fleet: fleet.clone(),
                    action,
                });
            }
            // A stalled rollout waits on something phoenix does not judge: the operator looks at
            // the instances it waits on, reports those that serve as passed and those that are
            // broken as failed (leaving any still booting, or held by their launching hook, and
            // any whose passed report phoenix has: a report again would only add to the queue),
            // and resumes it.
            if meta.rollout.as_ref().is_some_and(|r| r.stalled.is_some()) {
                for i in w.books.live().filter(|i| {
                    i.image == meta.spec.image
                        && i.health == phoenix_core::model::Health::Unknown
                        && !i.signals.passed
                        && i.launch_hook.as_ref().is_none_or(|h| !h.is_waiting())
                }) {
                    let Some(vm) = w.ec2.vms.get(&i.id) else {
                        continue;
                    };
                    if w.ec2.world_healthy(vm, w.now) {
                        intents.push(Intent::HealthCheckPassed {
                            instance: i.id.clone(),
                        });
                    } else if w.ec2.fault(vm) {
                        reported.push(i.id.clone());
                        intents.push(Intent::HealthCheckFailed {
                            instance: i.id.clone(),
                            reason: "reported by the operator".into(),
                        });
                    }
                }
                intents.push(Intent::RolloutControl {
                    fleet: fleet.clone(),
                    action: ControlAction::Resume,
                });
            }
            // A rollout the fleet's windows or a freeze hold: an operator who wants the fleet
            // done lets it go on now (`rollout resume --now`), once a minute until it does. What
            // else the windows hold (a scale-in) waits for them: `converged` allows it.
            let policy = &meta.spec.policy;
            let closed = (!policy.windows.is_empty() || !policy.freezes.is_empty())
                && !matches!(policy.disruption_at(w.now), Openness::Open { .. });
            let active = meta.rollout.as_ref().filter(|r| r.status.is_active());
            if active.is_some_and(|r| {
                closed && r.status == RolloutStatus::InProgress && !r.ignore_windows
            }) {
                intents.push(Intent::RolloutControl {
                    fleet: fleet.clone(),
                    action: ControlAction::ResumeNow,
                });
            }
            let live: Vec<_> = w.books.live().collect();
            if meta.breaker.is_some() {
                intents.push(Intent::RolloutControl {
                    fleet: fleet.clone(),
                    action: ControlAction::ResumeRepairs,
                });
            }
            // The fleet is short and its own image is quarantined (every image it had failed a
            // health gate, perhaps for faults of the world): nothing can be launched until
            // someone clears it.
            let stuck = meta.quarantined.contains_key(&meta.spec.image)
                && active.is_none()
                && live.len() < meta.spec.capacity as usize;
            if stuck {
                intents.push(Intent::ClearQuarantine {
                    fleet,
                    image: meta.spec.image.clone(),
                });
            }
        }
        {
            let mut w = self.world.lock();
            for id in &reported {
                if let Some(vm) = w.ec2.vms.get_mut(id) {
                    vm.reported = true;
                }
            }
        }
        for intent in intents {
            self.note(format!("operator: {}", describe_intent(&intent)));
            self.emit(What::Intent(intent));
        }
    }

    // --- faults --------------------------------------------------------------------------------

    pub(super) fn fault(&mut self) {
        let mut emit = None;
        {
            let mut w = self.world.lock();
            let w = &mut *w;
            w.stats.faults += 1;
            let now = w.now;
            let alive: Vec<InstanceId> = w.ec2.alive().map(|vm| vm.id.clone()).collect();
            let running: Vec<InstanceId> = w
                .ec2
                .alive()
                .filter(|vm| vm.state == Lifecycle::Running)
                .map(|vm| vm.id.clone())
                .collect();
            // Faults only some seeds can have weigh 0 in the others, which then draw as before.
            let groups: Vec<String> = w.elb.groups.keys().cloned().collect();
            let group_fault = if w.elb.groups.is_empty() && w.elb.deleted.is_empty() {
                0
            } else {
                5
            };
            match w
                .rng
                .weighted(&[15, 10, 15, 10, 15, 5, 8, 8, 10, group_fault])
            {
                0 if !alive.is_empty() => {
                    let id = w.rng.pick(&alive).clone();
                    w.note(format!("fault: {id} vanishes"));
                    w.checker.on_gone(&id, true);
                    w.ec2.vanish(&id, now);
                }
                1 if !running.is_empty() => {
                    let id = w.rng.pick(&running).clone();
                    w.note(format!("fault: {id} is stopped"));
                    w.ec2.stop(&id, now, &mut w.rng);
                }
                2 if !alive.is_empty() => {
                    let id = w.rng.pick(&alive).clone();
                    w.note(format!("fault: {id} impaired (status checks fail)"));
                    if let Some(vm) = w.ec2.vms.get_mut(&id) {
                        vm.impaired = true;
                    }
                }
                3 if !alive.is_empty() => {
                    let id = w.rng.pick(&alive).clone();
                    w.note(format!("fault: {id}'s application fails"));
                    if let Some(vm) = w.ec2.vms.get_mut(&id) {
                        vm.app_failed = true;
                    }
                }
                4 => {
                    let healthy: Vec<InstanceId> = w
                        .ec2
                        .alive()
                        .filter(|vm| w.ec2.world_healthy(vm, now))
                        .map(|vm| vm.id.clone())
                        .collect();
                    if !healthy.is_empty() {
                        let id = w.rng.pick(&healthy).clone();
                        w.note(format!("fault: spurious health-check failure of {id}"));
                        if let Some(vm) = w.ec2.vms.get_mut(&id) {
                            vm.reported = true;
                        }
                        emit = Some(Intent::HealthCheckFailed {
                            instance: id,
                            reason: "flaky health check".into(),
                        });
                    }
                }
                5 => {
                    let zone = w.rng.below(ZONES.len() as u64) as usize;
                    let minutes = w.rng.range(2, 15) as i64;
                    w.note(format!(
                        "fault: zone {} down for {minutes} min",
                        ZONES[zone]
                    ));
                    w.ec2
                        .zones_down
                        .insert(zone, now + Duration::minutes(minutes));
                }
                // No capacity in a pool for a while: one of the types the fleet launches in one
                // zone (the fleet falls back on its next type there, or another zone), every type
                // in one zone (an outage of the zone's capacity, longer), or everywhere.
                6 => {
                    let zone = w.rng.below(ZONES.len() as u64) as usize;
                    let types = w.books.meta().spec.launch_types();
                    let (pool, minutes) = match w.rng.weighted(&[45, 35, 20]) {
                        0 => {
                            let t = w.rng.pick(&types).clone();
                            let t = t.unwrap_or_else(|| INSTANCE_TYPE.to_string());
                            let pool = Pool {
                                instance_type: Some(t),
                                zone: Some(zone),
                            };
                            (pool, w.rng.range(1, 10))
                        }
                        1 => {
                            let pool = Pool {
                                instance_type: None,
                                zone: Some(zone),
                            };
                            (pool, w.rng.range(5, 20))
                        }
                        _ => {
                            let pool = Pool {
                                instance_type: None,
                                zone: None,
                            };
                            (pool, w.rng.range(1, 10))
                        }
                    };
                    w.note(format!(
                        "fault: no capacity for {} for {minutes} min",
                        pool.describe()
                    ));
                    w.stats.shortages += 1;
                    let until = now + Duration::minutes(minutes as i64);
                    let end = w.ec2.shortage.entry(pool).or_insert(until);
                    *end = (*end).max(until);
                }
                7 => {
                    let secs = w.rng.range(30, 180) as i64;
                    let p = w.rng.range(300, 700) as u32;
                    w.note(format!(
                        "fault: EC2 throttles {}% of calls for {secs}s",
                        p / 10
                    ));
                    w.ec2.throttle = Some((now + Duration::seconds(secs), p));
                }
                // An operator takes an instance out of the fleet (for forensics, say) by
                // removing its tag — preferably one phoenix has decided to terminate, the case
                // re-validation before terminating is there for. It is no longer the fleet's.
                8 if !alive.is_empty() => {
                    let leaving: Vec<InstanceId> = alive
                        .iter()
                        .filter(|id| w.books.instance(id).is_some_and(|i| i.disposal.is_some()))
                        .cloned()
                        .collect();
                    let pool = if leaving.is_empty() { &alive } else { &leaving };
                    let id = w.rng.pick(pool).clone();
                    w.note(format!(
                        "fault: an operator removes {id}'s {FLEET} fleet tag"
                    ));
                    w.checker.on_gone(&id, true);
                    w.custody.on_taken_out(&id);
                    if let Some(vm) = w.ec2.vms.get_mut(&id) {
                        vm.tags.remove(TAG_FLEET);
                    }
                }
                // A target group is deleted for a while, then made again, empty, by its stack:
                // phoenix cannot see what serves meanwhile, and registers anew after.
                9 if !groups.is_empty() => {
                    let arn = w.rng.pick(&groups).clone();
                    let minutes = w.rng.range(1, 8) as i64;
                    w.note(format!(
                        "fault: target group {} deleted for {minutes} min",
                        phoenix_core::model::group_name(&arn)
                    ));
                    w.elb.delete(&arn, now + Duration::minutes(minutes));
                    w.stats.groups_deleted += 1;
                }
                _ => w.note("fault: none applicable"),
            }
        }
        if let Some(intent) = emit {
            self.emit(What::Intent(intent));
        }
    }
}
