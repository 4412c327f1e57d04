//! Adoption through the planner: running instances taken into a fleet are recorded and tagged,
//! never launched or terminated for it; those on another image are rolled under the budget; an
//! adoption whose tagging was lost is tagged again, not taken for vanished; instances still in
//! their Auto Scaling group are held and detached a batch at a time; released instances are
//! neither the fleet's nor orphans.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use phoenix_core::events::Change;
use phoenix_core::model::{Fleet, FleetSpec, Health, Lifecycle, Observed, TargetState, Targets};
use phoenix_core::planner::{
    adopt, reconcile, record_outcomes, release, Adoption, Command, Launched, Outcome, Resolved,
    Step, LEASE,
};
use phoenix_core::{ImageId, InstanceId};
use std::collections::BTreeMap;

const GROUP: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1";

fn t0() -> DateTime<Utc> {
    "2030-01-07T12:00:00Z".parse().unwrap()
}
fn ami(n: u8) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap()
}
fn id(n: u32) -> InstanceId {
    InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).unwrap()
}

fn spec(capacity: u32, with_group: bool) -> FleetSpec {
    let mut yaml = format!(
        "name: web\nimage: {}\ncapacity: {capacity}\ninstance_type: t3.micro\n\
         policy: {{max_surge: 1, max_unavailable: 1}}\n",
        ami(2)
    );
    if with_group {
        yaml.push_str(&format!(
            "subnets: [subnet-a]\nload_balancing: {{target_groups: [{GROUP}]}}\n"
        ));
    }
    FleetSpec::from_yaml(&yaml).unwrap()
}

/// A running instance phoenix did not launch, on `image`.
fn found(n: u32, image: u8) -> Observed {
    Observed {
        id: id(n),
        image: Some(ami(image)),
        state: Lifecycle::Running,
        status_ok: true,
        system_impaired: false,
        launched_at: Some(t0() - Duration::days(3)),
        token: None,
        zone: Some("us-east-1a".into()),
        instance_type: Some("t3.micro".into()),
        subnet: Some("subnet-a".into()),
        definition: None,
        targets: Targets::new(),
        protected: false,
    }
}

/// The step committed: what the store would read back.
fn committed(step: &Step) -> Fleet {
    let mut f = step.fleet.clone();
    f.version += 1;
    f
}

/// EC2 and the target group as a test world: what phoenix tagged, launched and terminated, and
/// which instances serve. Launches run and serve from the next pass.
#[derive(Default)]
struct World {
    vms: BTreeMap<InstanceId, (ImageId, bool)>,
    next: u32,
    serving: BTreeMap<InstanceId, bool>,
}

impl World {
    /// Whether these carry the fleet's tags now.
    fn set_tagged(&mut self, ids: &[InstanceId], tagged: bool) {
        for i in ids {
            if let Some(vm) = self.vms.get_mut(i) {
                vm.1 = tagged;
            }
        }
    }

    fn carry_out(&mut self, fleet: &Fleet, step: &Step, now: DateTime<Utc>) -> Vec<Outcome> {
        let mut out = Vec::new();
        for c in &step.commands {
            match c {
                Command::Tag { instances } => {
                    self.set_tagged(instances, true);
                    out.push(Outcome::Tagged {
                        instances: instances.clone(),
                        gone: Vec::new(),
                    });
                }
                Command::Launch {
                    token,
                    image,
                    count,
                    ..
                } => {
                    let instances = (0..*count)
                        .map(|_| {
                            self.next += 1;
                            let n = id(100 + self.next);
                            self.vms.insert(n.clone(), (image.clone(), true));
                            Launched {
                                id: n,
                                launched_at: Some(now),
                                state: Lifecycle::Running,
                                zone: Some("us-east-1a".into()),
                                instance_type: Some("t3.micro".into()),
                                subnet: Some("subnet-a".into()),
                                definition: Some(fleet.definition().fingerprint()),
                            }
                        })
                        .collect();
                    out.push(Outcome::Launched {
                        token: token.clone(),
                        instances,
                        request_ids: Vec::new(),
                        refused: Vec::new(),
                    });
                }
                Command::Terminate { instances, .. } => {
                    for i in instances {
                        self.vms.remove(i);
                        self.serving.remove(i);
                    }
                    out.push(Outcome::Terminated {
                        instances: instances.clone(),
                        request_ids: Vec::new(),
                    });
                }
                Command::Register {
                    instances,
                    lands_by,
                    ..
                } => {
                    for i in instances {
                        self.serving.insert(i.clone(), true);
                    }
                    out.push(Outcome::Registered {
                        instances: instances.clone(),
                        lands_by: *lands_by,
                        request_ids: Vec::new(),
                    });
                }
                Command::Deregister { instances, .. } => {
                    for i in instances {
                        self.serving.remove(i);
                    }
                    out.push(Outcome::Deregistered {
                        instances: instances.clone(),
                        delay: phoenix_core::model::Seconds(0),
                        request_ids: Vec::new(),
                    });
                }
                // AWS takes a detached instance out of the group's target groups.
                Command::Detach { group, instances } => {
                    for i in instances {
                        self.serving.remove(i);
                    }
                    out.push(Outcome::Detached {
                        group: group.clone(),
                        instances: instances.clone(),
                        request_ids: Vec::new(),
                    });
                }
                Command::Untag { instances } => {
                    self.set_tagged(instances, false);
                    out.push(Outcome::Untagged {
                        instances: instances.clone(),
                    });
                }
            }
        }
        out
    }

    /// What a pass reads: the instances tagged with the fleet.
    fn observed(&self, fleet: &Fleet) -> Vec<Observed> {
        self.vms
            .iter()
            .filter(|(_, (_, tagged))| *tagged)
            .map(|(i, (image, _))| {
                let rec = fleet.instances.get(i);
                let mut targets = Targets::new();
                if self.serving.contains_key(i) {
                    targets.insert(GROUP.to_string(), TargetState::Healthy);
                }
                Observed {
                    token: rec.map(|r| r.token.clone()),
                    definition: rec.and_then(|r| r.definition.clone()),
                    targets,
                    ..found(0, 0)
                }
                .with(i, image)
            })
            .collect()
    }
}

trait With {
    fn with(self, id: &InstanceId, image: &ImageId) -> Self;
}
impl With for Observed {
    fn with(mut self, id: &InstanceId, image: &ImageId) -> Self {
        self.id = id.clone();
        self.image = Some(image.clone());
        self
    }
}

/// The instances a step asks to detach from their group.
fn detaching(step: &Step) -> Vec<InstanceId> {
    step.commands
        .iter()
        .flat_map(|c| match c {
            Command::Detach { instances, .. } => instances.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// Commits and carries out one step, then records its outcomes.
fn apply(world: &mut World, step: Step, now: DateTime<Utc>) -> Fleet {
    let f = committed(&step);
    let outcomes = world.carry_out(&f, &step, now);
    if outcomes.is_empty() {
        return f;
    }
    committed(&record_outcomes(&f, &outcomes, now))
}

fn adopt_into(world: &mut World, capacity: u32, images: &[u8], group: Option<&str>) -> Fleet {
    let found: Vec<Observed> = images
        .iter()
        .enumerate()
        .map(|(n, image)| found(n as u32, *image))
        .collect();
    for o in &found {
        world
            .vms
            .insert(o.id.clone(), (o.image.clone().unwrap(), false));
        world.serving.insert(o.id.clone(), true);
    }
    let step = adopt(
        None,
        spec(capacity, group.is_some()),
        Resolved {
            template_version: None,
            zones: BTreeMap::from([("subnet-a".into(), "us-east-1a".into())]),
        },
        Adoption {
            found: &found,
            from: "tag:app=web",
            group,
        },
        t0(),
    )
    .unwrap();
    apply(world, step, t0())
}

#[test]
fn adopting_records_and_tags_and_launches_or_terminates_nothing() {
    let mut world = World::default();
    let found: Vec<Observed> = (0..3).map(|n| found(n, 1)).collect();
    let step = adopt(
        None,
        spec(3, false),
        Resolved::default(),
        Adoption {
            found: &found,
            from: "tag:app=web",
            group: None,
        },
        t0(),
    )
    .unwrap();
    assert_eq!(
        step.commands,
        vec![Command::Tag {
            instances: vec![id(0), id(1), id(2)]
        }]
    );
    assert_eq!(step.fleet.live, 3);
    // On another image than the fleet's: a rollout from theirs to the fleet's.
    assert!(step.changes.iter().any(|c| matches!(
        c,
        Change::RolloutStarted { from: Some(f), to, .. } if *f == ami(1) && *to == ami(2)
    )));
    let f = apply(&mut world, step, t0());
    assert!(f
        .live_instances()
        .all(|i| i.adopted.as_ref().unwrap().tagged));
    assert!(world.vms.values().all(|(_, tagged)| *tagged));
}

#[test]
fn adopted_instances_on_another_image_roll_within_the_budget() {
    let mut world = World::default();
    let mut f = adopt_into(&mut world, 4, &[1, 1, 1, 2], None);
    let budget = f.budget();
    let mut now = t0();
    for _ in 0..40 {
        now += Duration::minutes(1);
        let step = reconcile(&f, &world.observed(&f), now);
        f = apply(&mut world, step, now);
        let live = f.live_instances().count() as u32 + f.pending_count();
        assert!(live <= budget.max_total, "{live} > {}", budget.max_total);
        let healthy = f
            .live_instances()
            .filter(|i| i.is_healthy() && i.disposal.is_none())
            .count() as u32;
        assert!(
            healthy >= budget.min_healthy || now < t0() + Duration::minutes(3),
            "{healthy} healthy at {now}"
        );
    }
    assert_eq!(f.live_instances().count(), 4);
    assert!(f.live_instances().all(|i| i.image == ami(2)), "{f:?}");
    // The one adopted on the fleet's image stayed.
    assert!(f.instances.get(&id(3)).unwrap().is_live());
    assert!(!f.instances.get(&id(0)).unwrap().is_live());
}

#[test]
fn an_adoption_whose_tagging_was_lost_is_tagged_again_not_taken_for_vanished() {
    let found: Vec<Observed> = (0..2).map(|n| found(n, 2)).collect();
    let step = adopt(
        None,
        spec(2, false),
        Resolved::default(),
        Adoption {
            found: &found,
            from: "instances",
            group: None,
        },
        t0(),
    )
    .unwrap();
    // Committed, then the process died before tagging: EC2 lists none with the fleet's tag.
    let f = committed(&step);
    let soon = reconcile(&f, &[], t0() + Duration::seconds(30));
    assert!(soon.commands.is_empty(), "{:?}", soon.commands);
    let later = reconcile(&f, &[], t0() + LEASE);
    assert_eq!(
        later.commands,
        vec![Command::Tag {
            instances: vec![id(0), id(1)]
        }]
    );
    assert!(!later
        .changes
        .iter()
        .any(|c| matches!(c, Change::Vanished { .. })));
    // Control: an instance phoenix launched, missing as long, has vanished.
    let mut launched = f.clone();
    for i in [id(0), id(1)] {
        launched.instances.get_mut(&i).unwrap().adopted = None;
    }
    let step = reconcile(&launched, &[], t0() + LEASE);
    assert!(step
        .changes
        .iter()
        .any(|c| matches!(c, Change::Vanished { .. })));
}

#[test]
fn bad_adoptions_are_refused_with_the_reason() {
    let mut stopped = found(1, 1);
    stopped.state = Lifecycle::Stopped;
    let err = adopt(
        None,
        spec(2, false),
        Resolved::default(),
        Adoption {
            found: &[found(0, 1), stopped],
            from: "instances",
            group: None,
        },
        t0(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("is stopped"), "{err}");
}

#[test]
fn a_group_is_emptied_a_batch_at_a_time_and_its_instances_are_held_meanwhile() {
    let mut world = World::default();
    let mut f = adopt_into(&mut world, 4, &[1, 1, 1, 1], Some("web-asg"));
    assert!(f.takeover.is_some());
    let mut now = t0();
    let mut most_out = 0;
    let mut detached_before_all_out = Vec::new();
    for _ in 0..30 {
        now += Duration::minutes(1);
        let step = reconcile(&f, &world.observed(&f), now);
        for c in &step.commands {
            if let Command::Detach { instances, .. } = c {
                most_out = most_out.max(instances.len());
            }
            // Nothing phoenix terminates is still in the group.
            if let Command::Terminate { instances, .. } = c {
                for i in instances {
                    assert!(
                        !f.instances.get(i).unwrap().in_asg(),
                        "{i} terminated in its group"
                    );
                }
            }
        }
        if step
            .changes
            .iter()
            .any(|c| matches!(c, Change::TakeoverFinished { .. }))
        {
            detached_before_all_out = f.live_instances().map(|i| i.id.clone()).collect();
        }
        f = apply(&mut world, step, now);
        let serving = f
            .live_instances()
            .filter(|i| world.serving.contains_key(&i.id))
            .count() as u32;
        assert!(
            serving >= f.budget().min_healthy.min(3),
            "{serving} serving at {now}"
        );
    }
    // One at a time (max_unavailable 1 of 4), and the takeover ended.
    assert_eq!(most_out, 1);
    assert!(f.takeover.is_none());
    assert!(!detached_before_all_out.is_empty());
    assert!(f.live_instances().all(|i| !i.in_asg()));
    // Then the rollout to the fleet's image went on.
    assert!(f.live_instances().all(|i| i.image == ami(2)));
}

#[test]
fn a_failed_instance_in_its_group_is_detached_at_once_then_repaired() {
    let mut world = World::default();
    let mut f = adopt_into(&mut world, 2, &[2, 2], Some("web-asg"));
    let inst = f.instances.get_mut(&id(0)).unwrap();
    inst.health = Health::failed("bad".to_string());
    f.failed += 1;
    // The budget (max_unavailable 1 of 2) leaves no room to take the healthy one out as well.
    let now = t0() + Duration::minutes(1);
    let step = reconcile(&f, &world.observed(&f), now);
    assert_eq!(detaching(&step), vec![id(0)], "{:?}", step.commands);
    // Not repaired while still in the group...
    let touches = |step: &Step, i: &InstanceId| {
        step.commands.iter().any(|c| match c {
            Command::Terminate { instances, .. } | Command::Deregister { instances, .. } => {
                instances.contains(i)
            }
            _ => false,
        })
    };
    assert!(!touches(&step, &id(0)));
    // ...and repaired once out of it.
    f = apply(&mut world, step, now);
    let next = reconcile(&f, &world.observed(&f), now + Duration::minutes(1));
    assert!(touches(&next, &id(0)), "{:?}", next.commands);
}

#[test]
fn a_detach_whose_outcome_was_lost_is_asked_again_after_the_lease() {
    let mut world = World::default();
    let f = adopt_into(&mut world, 4, &[2, 2, 2, 2], Some("web-asg"));
    let now = t0() + Duration::minutes(1);
    let step = reconcile(&f, &world.observed(&f), now);
    let asked = detaching(&step);
    assert_eq!(asked.len(), 1);
    // Committed; the process died before the outcome was recorded (the call may or may not
    // have gone through). Within the lease nothing more is detached — the one in flight counts
    // as out of service — and after it, the same instance is asked again.
    let f = committed(&step);
    let soon = reconcile(&f, &world.observed(&f), now + Duration::seconds(30));
    assert!(detaching(&soon).is_empty());
    let later = reconcile(&f, &world.observed(&f), now + LEASE);
    assert!(
        detaching(&later).contains(&asked[0]),
        "{:?}",
        later.commands
    );
}

#[test]
fn released_instances_are_untagged_and_never_taken_for_orphans() {
    let mut world = World::default();
    let f = adopt_into(&mut world, 2, &[2, 2], None);
    let step = release(&f, t0() + Duration::minutes(1)).unwrap();
    assert_eq!(step.fleet.spec.capacity, 0);
    assert_eq!(step.fleet.live, 0);
    assert!(step.commands.contains(&Command::Untag {
        instances: vec![id(0), id(1)]
    }));
    // Committed, the untagging lost: EC2 still lists them with the fleet's tag.
    let f = committed(&step);
    let pass = reconcile(&f, &world.observed(&f), t0() + Duration::minutes(2));
    assert!(!pass
        .changes
        .iter()
        .any(|c| matches!(c, Change::TerminationDecided { .. })));
    assert!(!pass
        .commands
        .iter()
        .any(|c| matches!(c, Command::Launch { .. })));
    let later = reconcile(&f, &world.observed(&f), t0() + Duration::minutes(1) + LEASE);
    assert!(later.commands.contains(&Command::Untag {
        instances: vec![id(0), id(1)]
    }));
    // Control: the same instances with no record at all are orphans.
    let mut bare = f.clone();
    bare.instances.clear();
    let orphans = reconcile(&bare, &world.observed(&f), t0() + Duration::minutes(2));
    assert!(orphans
        .changes
        .iter()
        .any(|c| matches!(c, Change::TerminationDecided { .. })));
}

#[test]
fn release_is_refused_while_work_is_in_flight() {
    let mut world = World::default();
    let f = adopt_into(&mut world, 2, &[1, 1], None);
    // Adopted on another image: a rollout is under way.
    let err = release(&f, t0()).unwrap_err().to_string();
    assert!(err.contains("rollout"), "{err}");
}
