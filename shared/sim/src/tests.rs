//! Tests of the simulator itself: its services behave like what they stand for, the protocol's
//! store keeps its promises on the simulated table, a seed replays exactly, and the invariants
//! catch every broken planner and every broken protocol.

use crate::books::Books;
use crate::ec2::{Ec2, FLEET, SUBNETS};
use crate::ports::SimTable;
use crate::rng::Rng;
use crate::sim::run_alone;
use crate::start::GROUP;
use crate::variant::{PlannerBug, WorldBug};
use crate::world::{Shared, World};
use crate::{run_seed, Config, Report, Variant};
use chrono::{Duration, TimeZone, Utc};
use phoenix_core::events::{Cause, Change, Intent, QueuedIntent, ScaleTarget};
use phoenix_core::model::{Fleet, FleetSpec, Lifecycle, Openness, Timestamp, TAG_FLEET, TAG_TOKEN};
use phoenix_core::planner::{self, Step};
use phoenix_core::ImageId;
use phoenix_protocol::planner::{CorePlanner, Planner};
use phoenix_protocol::ports::ec2::{Instances, RunInstances};
use phoenix_protocol::store::{EventKey, EventRecord, Store, OUTBOX_GRACE};
use phoenix_protocol::variant::Variant as ProtocolVariant;
use phoenix_protocol::Error;

fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

fn ami(n: u32) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap_or_else(|e| panic!("{e}"))
}

fn spec() -> FleetSpec {
    FleetSpec::from_yaml(&format!(
        "name: {FLEET}\nimage: ami-0000000a\ncapacity: 2\ninstance_type: t3.micro\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn run(seed: u64, steps: u64, variant: Variant) -> Report {
    let mut cfg = Config::new(seed);
    cfg.chaos_steps = steps;
    cfg.variant = variant;
    run_seed(cfg)
}

/// A run in which the seed draws rollout windows or freezes, a floating launch template and an
/// operator who edits the fleet file (`Config::drift`).
fn run_drifting(seed: u64, steps: u64, variant: Variant) -> Report {
    let mut cfg = Config::new(seed);
    cfg.chaos_steps = steps;
    cfg.variant = variant;
    cfg.drift = true;
    run_seed(cfg)
}

/// A run in which the seed draws instance types, a lifetime and protection
/// (`Config::placement`).
fn run_placing(seed: u64, steps: u64, variant: Variant) -> Report {
    let mut cfg = Config::new(seed);
    cfg.chaos_steps = steps;
    cfg.variant = variant;
    cfg.placement = true;
    run_seed(cfg)
}

/// A run in which every seed with a capacity adopts its fleet from instances launched outside
/// phoenix (`Config::adoption`).
fn run_adopting(seed: u64, steps: u64, variant: Variant) -> Report {
    let mut cfg = Config::new(seed);
    cfg.chaos_steps = steps;
    cfg.variant = variant;
    cfg.adoption = true;
    run_seed(cfg)
}

/// A run in which every seed with a capacity takes over the Auto Scaling group of instances
/// launched outside phoenix (`Config::takeovers`).
fn run_taking_over(seed: u64, steps: u64, variant: Variant) -> Report {
    let mut cfg = Config::new(seed);
    cfg.chaos_steps = steps;
    cfg.variant = variant;
    cfg.adoption = true;
    cfg.takeovers = true;
    run_seed(cfg)
}

/// A run in which the seed draws target groups and lifecycle hooks (`Config::traffic`).
fn run_traffic(seed: u64, steps: u64, variant: Variant) -> Report {
    let mut cfg = Config::new(seed);
    cfg.chaos_steps = steps;
    cfg.variant = variant;
    cfg.traffic = true;
    run_seed(cfg)
}

fn block<T>(fut: impl std::future::Future<Output = T>) -> T {
    run_alone(Box::pin(fut)).unwrap_or_else(|| panic!("the call did not end"))
}

/// The protocol's store on a calm simulated table, with the fleet of `spec()` created.
fn store() -> (Store<SimTable>, Shared, Fleet) {
    let world = Shared::new(World::new(
        t0(),
        Rng::new(1),
        Ec2::new(),
        Books::new(Fleet::new(spec(), t0())),
        Default::default(),
    ));
    let store = Store::new(SimTable(world.clone()));
    let created = planner::create_fleet(spec(), None, t0()).unwrap_or_else(|e| panic!("{e}"));
    let cause = Cause::internal("FleetApplied");
    let fleet = block(store.commit(&created.fleet, &created, &cause, None, t0()))
        .unwrap_or_else(|e| panic!("{e}"));
    (store, world, fleet)
}

fn key(id: &str) -> EventKey {
    EventKey {
        id: id.into(),
        hash: "h".into(),
    }
}

#[test]
fn a_seed_replays_exactly_and_another_seed_differs() {
    let a = run(11, 800, Variant::Real);
    let b = run(11, 800, Variant::Real);
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.steps, b.steps);
    assert_eq!(a.trace_tail, b.trace_tail);
    assert_eq!(a.stats, b.stats);
    assert_eq!(a.violation, b.violation);
    let c = run(12, 800, Variant::Real);
    assert_ne!(a.digest, c.digest);
}

#[test]
fn the_store_on_the_simulated_table_refuses_stale_versions_and_claimed_events_by_status() {
    let (store, world, _) = store();
    let now = t0();
    let later = now + Duration::seconds(90);
    let cause = Cause::internal("test");
    let name = spec().name;
    let loaded = block(store.load_fleet(&name)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.version, 1);
    let step = planner::reconcile(&loaded, &[], now);
    assert!(!step.is_noop());
    // Commands follow: the event is in progress until the invocation's deadline.
    let ev1 = key("ev-1");
    let claim = EventRecord::Claim {
        key: &ev1,
        in_progress_until: Some(now + Duration::seconds(60)),
    };
    let committed = block(store.commit(&loaded, &step, &cause, Some(claim), now))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(committed.version, 2);
    // The same version again: someone else won the race.
    let again = block(store.commit(&loaded, &step, &cause, None, now));
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    // A claim of the same event meets its record, whatever the version, and writes nothing.
    let fresh = block(store.load_fleet(&name)).unwrap_or_else(|e| panic!("{e}"));
    let nothing = Step::unchanged(&fresh);
    let reclaim = EventRecord::Claim {
        key: &ev1,
        in_progress_until: None,
    };
    let in_flight = block(store.commit(&fresh, &nothing, &cause, Some(reclaim), now));
    assert!(
        matches!(in_flight, Err(Error::InFlight(_))),
        "{in_flight:?}"
    );
    let unfinished = block(store.commit(&fresh, &nothing, &cause, Some(reclaim), later));
    assert!(
        matches!(unfinished, Err(Error::Unfinished(_))),
        "{unfinished:?}"
    );
    // Different content under the same id is refused.
    let other = EventKey {
        id: "ev-1".into(),
        hash: "other".into(),
    };
    let reuse = EventRecord::Claim {
        key: &other,
        in_progress_until: None,
    };
    let invalid = block(store.commit(&fresh, &nothing, &cause, Some(reuse), now));
    assert!(matches!(invalid, Err(Error::Invalid(_))), "{invalid:?}");
    assert_eq!(world.lock().books.version(), 2);
    // Recording the outcomes completes it.
    block(store.commit(
        &fresh,
        &nothing,
        &cause,
        Some(EventRecord::Complete(&ev1)),
        now,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let dup = block(store.check_event(&ev1, later));
    assert!(matches!(dup, Err(Error::Duplicate(_))), "{dup:?}");
    assert!(block(store.check_event(&key("ev-2"), later)).is_ok());
    // A partial load holds the record and only the named instances, not the inbox.
    let partial = block(store.load_partial(&name, &[])).unwrap_or_else(|e| panic!("{e}"));
    assert!(!partial.complete);
    assert!(partial.instances.is_empty());
    assert_eq!(partial.pending, fresh.pending);
}

fn queued(id: &str, secs: i64, desired: u32) -> QueuedIntent {
    let mut cause = Cause::internal("ScaleRequested");
    cause.event_id = Some(id.into());
    QueuedIntent {
        intent: Intent::Scale {
            fleet: spec().name,
            target: ScaleTarget::Desired(desired),
        },
        event_time: t0() + Duration::seconds(secs),
        cause,
    }
}

#[test]
fn the_inbox_is_written_without_a_version_and_each_intent_taken_from_it_once() {
    let (store, world, loaded) = store();
    let now = t0();
    let name = spec().name;
    let cause = Cause::internal("test");
    // Queueing completes the event and leaves the version alone; a redelivery meets the record.
    block(store.enqueue(&name, &queued("ev-9", 20, 3), &key("ev-9"), now))
        .unwrap_or_else(|e| panic!("{e}"));
    block(store.enqueue(&name, &queued("ev-8", 10, 4), &key("ev-8"), now))
        .unwrap_or_else(|e| panic!("{e}"));
    let again = block(store.enqueue(&name, &queued("ev-9", 20, 3), &key("ev-9"), now));
    assert!(matches!(again, Err(Error::Duplicate(_))), "{again:?}");
    assert_eq!(world.lock().books.version(), 1);
    // A whole load holds the inbox, oldest event first.
    let fleet = block(store.load_fleet(&name)).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<_> = fleet
        .inbox
        .iter()
        .map(|q| q.cause.event_id.clone().unwrap_or_default())
        .collect();
    assert_eq!(ids, ["ev-8", "ev-9"]);
    // Applying one deletes it; a second commit applying it (even at the new version) conflicts.
    let first = fleet.inbox[0].clone();
    let step = planner::apply_queued(&fleet, &first, now);
    let committed = block(store.commit(
        &fleet,
        &step,
        &first.cause,
        Some(EventRecord::Dequeue(&first)),
        now,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(committed.version, 2);
    assert_eq!(world.lock().books.meta().spec.capacity, 4);
    let fresh = block(store.load_fleet(&name)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fresh.inbox.len(), 1);
    let twice = block(store.commit(
        &fresh,
        &Step::unchanged(&fresh),
        &cause,
        Some(EventRecord::Dequeue(&first)),
        now,
    ));
    assert!(matches!(twice, Err(Error::Conflict(_))), "{twice:?}");
    // The version read still guards a commit that applies a queued intent.
    let second = fresh.inbox[0].clone();
    let stale = block(store.commit(
        &loaded,
        &step,
        &cause,
        Some(EventRecord::Dequeue(&second)),
        now,
    ));
    assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");
    assert_eq!(world.lock().books.version(), 2);
}

/// A step that publishes one notification (`ImageRejected`) and changes nothing else.
fn rejecting(fleet: &Fleet) -> Step {
    let mut step = Step::unchanged(fleet);
    step.changes.push(Change::ImageRejected {
        image: ami(7),
        reason: "untagged".into(),
    });
    step
}

#[test]
fn a_commit_writes_its_notifications_with_the_change_and_a_whole_load_reads_them() {
    let (store, world, loaded) = store();
    let now = t0();
    let name = spec().name;
    let cause = Cause::internal("test");
    // Nothing to publish: nothing in the outbox.
    let (_, outbox) = block(store.load_fleet_and_outbox(&name)).unwrap_or_else(|e| panic!("{e}"));
    assert!(outbox.is_empty(), "FleetCreated is not published");

    let committed = block(store.commit(&loaded, &rejecting(&loaded), &cause, None, now))
        .unwrap_or_else(|e| panic!("{e}"));
    // In the same transaction as the change: the outbox item of its version, each notification
    // with the id of that commit.
    let (fleet, outbox) =
        block(store.load_fleet_and_outbox(&name)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fleet.version, committed.version);
    assert_eq!(outbox.len(), 1);
    let mail = &outbox[0];
    assert_eq!((mail.version, mail.at), (committed.version, now));
    assert_eq!(mail.notifications.len(), 1);
    let note = &mail.notifications[0];
    let id = format!("{name}-{}-{}-0", committed.incarnation(), committed.version);
    assert_eq!(note.id, id);
    assert_eq!(note.detail_type, "ImageRejected");
    assert_eq!(note.detail["notification_id"], id.as_str());
    assert_eq!(note.detail["fleet"], name.as_str());
    assert_eq!(world.lock().books.outbox().count(), 1);
    // The history entry of that version holds the change the notification comes from.
    let history = block(store.history(&name, 10)).unwrap_or_else(|e| panic!("{e}"));
    let entry = history.last().unwrap_or_else(|| panic!("no history"));
    assert_eq!(entry.version, committed.version);
    assert_eq!(
        phoenix_core::events::notifications(
            &name,
            &committed.incarnation(),
            entry.version,
            &entry.changes
        ),
        mail.notifications
    );
    // A commit that loses its race writes no notification either.
    let stale = block(store.commit(&loaded, &rejecting(&loaded), &cause, None, now));
    assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");
    assert_eq!(world.lock().books.outbox().count(), 1);
    // Not due until the invocation that committed it has had its time to publish it.
    assert!(!mail.due(now + OUTBOX_GRACE - Duration::seconds(1)));
    assert!(mail.due(now + OUTBOX_GRACE));
    // Published, it is removed; removing it again is no error.
    block(store.remove_mail(&name, &[mail.version])).unwrap_or_else(|e| panic!("{e}"));
    block(store.remove_mail(&name, &[mail.version])).unwrap_or_else(|e| panic!("{e}"));
    let (_, outbox) = block(store.load_fleet_and_outbox(&name)).unwrap_or_else(|e| panic!("{e}"));
    assert!(outbox.is_empty());
    assert_eq!(world.lock().books.outbox().count(), 0);
}

#[test]
fn the_largest_commit_with_its_notifications_is_one_transaction() {
    let (store, world, _) = store();
    let now = t0();
    let name = spec().name;
    block(store.enqueue(&name, &queued("ev-7", 10, 3), &key("ev-7"), now))
        .unwrap_or_else(|e| panic!("{e}"));
    let fleet = block(store.load_fleet(&name)).unwrap_or_else(|e| panic!("{e}"));
    let q = fleet.inbox[0].clone();
    // The most a step writes: every instance record it may touch, applying a queued intent (its
    // inbox item and its event's record), and a notification for each instance.
    let mut step = planner::apply_queued(&fleet, &q, now);
    for n in 0..planner::MAX_TOUCHED_PER_STEP {
        let id = phoenix_core::InstanceId::parse(&format!("i-{n:08x}"))
            .unwrap_or_else(|e| panic!("{e}"));
        step.fleet.instances.insert(
            id.clone(),
            phoenix_core::model::Instance {
                launch_hook: None,
                protected: false,
                spot: false,
                adopted: None,
                released: None,
                id: id.clone(),
                image: ami(10),
                launched_at: now,
                state: Lifecycle::Running,
                health: phoenix_core::model::Health::Unknown,
                signals: Default::default(),
                token: "web-x-2-0".into(),
                zone: None,
                instance_type: None,
                disposal: None,
                terminated_at: None,
                taints: Vec::new(),
                retirement: None,
                replacement_for: None,
                definition: None,
                subnet: None,
            },
        );
        step.touched.insert(id.clone());
        step.changes.push(Change::InstanceReplaced {
            instance: id,
            by: Vec::new(),
            reason: "test".into(),
        });
    }
    let committed =
        block(store.commit(&fleet, &step, &q.cause, Some(EventRecord::Dequeue(&q)), now))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(committed.version, 2);
    let w = world.lock();
    assert!(w.violation.is_none(), "{:?}", w.violation);
    let mail: Vec<_> = w.books.outbox().collect();
    assert_eq!(mail.len(), 1, "one outbox item per commit");
    assert_eq!(mail[0].notifications.len(), planner::MAX_TOUCHED_PER_STEP);
}

#[test]
fn intents_are_queued_after_lost_races_and_all_applied() {
    let mut stats = crate::Stats::default();
    for seed in 1..=40 {
        let r = run(seed, 2000, Variant::Real);
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        // Converged: nothing is left in the inbox.
        assert_eq!(r.stats.queued, r.stats.dequeued, "seed {seed}");
        stats.add(&r.stats);
    }
    assert!(stats.queued > 0, "no intent was queued in 40 seeds");
    // Health reports lose races too, and wait in the inbox like the fleet's own intents.
    assert!(
        stats.queued_instance_events > 0,
        "no instance's event was queued in 40 seeds"
    );
}

/// A RunInstances request of `count` instances for decision `token`, tagged as phoenix tags them.
fn run_request(token: &str, count: u32) -> RunInstances {
    RunInstances {
        image: ami(10).to_string(),
        count,
        client_token: token.into(),
        instance_type: None,
        subnet: Some(SUBNETS[1].into()),
        security_groups: Vec::new(),
        key_name: None,
        instance_profile: None,
        launch_template: None,
        user_data: None,
        tags: [(TAG_FLEET, FLEET), (TAG_TOKEN, token)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        spot: false,
    }
}

#[test]
fn ec2_honours_client_tokens_unless_told_not_to_and_lists_new_instances_late() {
    let mut rng = Rng::new(1);
    let mut ec2 = Ec2::new();
    ec2.images.insert(ami(10));
    ec2.max_lag = 30;
    let now = t0();
    let (first, created) = ec2.run_instances(&run_request("web-x-2-0", 2), now, &mut rng);
    let ids: Vec<String> = first
        .unwrap_or_else(|e| panic!("{e}"))
        .instances
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(created.len(), 2);
    assert!(
        created.iter().all(|id| ec2.vms[id].zone == 1),
        "the request's subnet"
    );
    // The ClientToken answers the same instances without creating more.
    let (again, created) = ec2.run_instances(&run_request("web-x-2-0", 2), now, &mut rng);
    assert!(created.is_empty());
    let again: Vec<String> = again
        .unwrap_or_else(|e| panic!("{e}"))
        .instances
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(again, ids);
    // An endpoint that ignores the token launches twice.
    let mut moto = Ec2::new();
    moto.images.insert(ami(10));
    moto.honour_client_token = false;
    moto.max_lag = 0;
    let (_, a) = moto.run_instances(&run_request("web-x-3-0", 1), now, &mut rng);
    let (_, b) = moto.run_instances(&run_request("web-x-3-0", 1), now, &mut rng);
    assert_eq!((a.len(), b.len()), (1, 1));
    // The token tag finds them (once listed); an unknown image is refused.
    let found = moto
        .describe_instances(
            &Instances::Tagged {
                key: TAG_TOKEN.into(),
                value: "web-x-3-0".into(),
            },
            now,
            &mut rng,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.len(), 2);
    let mut unknown = run_request("web-x-4-0", 1);
    unknown.image = ami(99).to_string();
    assert!(matches!(
        moto.run_instances(&unknown, now, &mut rng).0,
        Err(Error::NotFound(_))
    ));
    // Terminating fails whole for an unknown id, and for one without the fleet's tag.
    let id = a[0].to_string();
    assert!(moto
        .terminate_instances(&[id.clone(), "i-00000000".into()], now, &mut rng)
        .is_err());
    if let Some(vm) = moto.vms.get_mut(&a[0]) {
        vm.tags.remove(TAG_FLEET);
    }
    assert!(matches!(
        moto.terminate_instances(std::slice::from_ref(&id), now, &mut rng),
        Err(Error::Permanent { .. })
    ));
    assert_eq!(moto.vms[&a[0]].state, Lifecycle::Pending);
}

/// Runs seeds `1..=seeds` of `steps` chaos steps each with `run`, failing on the first
/// violation (with its scenario and the end of its trace); the runs' counters together.
fn keep_every_invariant(
    seeds: u64,
    steps: u64,
    run: fn(u64, u64, Variant) -> Report,
) -> crate::Stats {
    let mut stats = crate::Stats::default();
    for seed in 1..=seeds {
        let r = run(seed, steps, Variant::Real);
        assert!(
            r.violation.is_none(),
            "seed {seed}: {:?}\n{}\n{}",
            r.violation,
            r.scenario,
            r.trace_tail.join("\n")
        );
        stats.add(&r.stats);
    }
    stats
}

#[test]
fn the_real_protocol_keeps_every_invariant_on_these_seeds() {
    keep_every_invariant(12, 1500, run);
}

#[test]
fn windows_freezes_and_drift_keep_every_invariant_on_these_seeds() {
    let stats = keep_every_invariant(16, 1500, run_drifting);
    // What these seeds are for happened: rollouts held by a window or a freeze, fleet files and
    // template versions that changed the launch definition, rollouts of it.
    assert!(stats.rollouts_waiting > 0, "{stats:?}");
    assert!(stats.fleet_updates > 0, "{stats:?}");
    assert!(stats.template_versions > 0, "{stats:?}");
    assert!(stats.drift_rollouts > 0, "{stats:?}");
}

#[test]
fn target_groups_and_hooks_keep_every_invariant_on_these_seeds() {
    let stats = keep_every_invariant(16, 1500, run_traffic);
    // What these seeds are for happened: registrations and drains, hooks answered and timed out,
    // target groups deleted and made again.
    assert!(stats.registered > 0, "{stats:?}");
    assert!(stats.drains > 0, "{stats:?}");
    assert!(stats.hooks_answered > 0, "{stats:?}");
    assert!(stats.hooks_timed_out > 0, "{stats:?}");
    assert!(stats.groups_deleted > 0, "{stats:?}");
}

#[test]
fn instance_types_lifetimes_protection_and_shortages_keep_every_invariant_on_these_seeds() {
    let stats = keep_every_invariant(48, 3000, run_placing);
    // What these seeds are for happened: shortages, offerings refused and fallen back from,
    // launches that found no offering, rebalances, retirements for age, protections.
    assert!(stats.shortages > 0, "{stats:?}");
    assert!(stats.offerings_refused > 0, "{stats:?}");
    assert!(stats.fallback_launches > 0, "{stats:?}");
    assert!(stats.capacity_unavailable > 0, "{stats:?}");
    assert!(stats.rebalances > 0, "{stats:?}");
    assert!(stats.lifetime_retirements > 0, "{stats:?}");
    assert!(stats.protections > 0, "{stats:?}");
}

#[test]
fn adoption_and_release_keep_every_invariant_on_these_seeds() {
    let stats = keep_every_invariant(12, 1500, run_adopting);
    // What these seeds are for happened: instances adopted, rolled from the older image they
    // ran, fleets given back.
    assert!(stats.adopted > 0, "{stats:?}");
    assert!(stats.rollouts > 0, "{stats:?}");
    assert!(stats.released > 0, "{stats:?}");
}

#[test]
fn one_seed_in_five_adopts_running_untagged_instances_beside_decoys() {
    use crate::start::{How, Start};
    let mut adopting = 0;
    for seed in 1..=200 {
        let rng = Rng::new(seed);
        let mut ec2 = Ec2::new();
        let spec =
            crate::scenario::Scenario::draw(&mut rng.clone(), &mut ec2, false, false, false).spec;
        let mut autoscaling = crate::asg::AutoScaling::default();
        let start = Start::draw(
            seed,
            &rng,
            (false, false),
            &spec,
            t0(),
            &mut ec2,
            &mut autoscaling,
        );
        let adopts = seed % 5 == 0 && spec.capacity > 0;
        assert_eq!(start.how != How::Apply, adopts, "seed {seed}");
        if !adopts {
            assert!(start.adopt.is_empty() && start.decoys.is_empty() && !start.release);
            continue;
        }
        adopting += 1;
        assert!((1..=spec.capacity as usize).contains(&start.adopt.len()));
        assert!(!start.decoys.is_empty());
        for id in start.adopt.iter().chain(&start.decoys) {
            let vm = &ec2.vms[id];
            assert_eq!(vm.state, Lifecycle::Running);
            assert!(vm.launched_at < t0() && vm.ready_at < t0());
            assert_eq!(vm.phoenix_tags().count(), 0, "launched outside phoenix");
        }
    }
    assert!((20..=40).contains(&adopting), "{adopting} of 200");
}

#[test]
fn custody_allows_tagging_and_terminating_only_what_phoenix_launched_or_adopted_and_kept() {
    use crate::custody::Custody;
    let id = |n: u32| {
        phoenix_core::InstanceId::parse(&format!("i-{n:08x}")).unwrap_or_else(|e| panic!("{e}"))
    };
    let (launched, adopted, decoy) = (id(1), id(2), id(3));
    let mut custody = Custody::default();
    custody.on_launched(std::slice::from_ref(&launched));
    custody.on_commit(
        &[Change::Adopted {
            token: "web-x-2-a".into(),
            from: "instances".into(),
            instances: vec![adopted.clone()],
        }],
        2,
    );
    assert!(custody.check_tag(&adopted).is_none());
    assert!(custody.check_tag(&decoy).is_some());
    for ours in [&launched, &adopted] {
        assert!(custody.check_terminate(ours).is_none(), "{ours}");
    }
    assert_eq!(
        custody.check_terminate(&decoy).map(|(k, _)| k),
        Some("foreign")
    );
    assert_eq!(
        custody.adopted_under("web-x-2-a").map(|ids| ids.len()),
        Some(1)
    );
    // Given back: never terminated by phoenix again, whoever launched it.
    custody.on_commit(
        &[Change::Released {
            instances: vec![launched.clone(), adopted.clone()],
        }],
        3,
    );
    for ours in [&launched, &adopted] {
        assert_eq!(
            custody.check_terminate(ours).map(|(k, _)| k),
            Some("release")
        );
    }
}

/// A fleet of `spec()` adopted from two instances launched outside phoenix (by their ids, or by
/// taking over the Auto Scaling group `start::GROUP` they are in), and the controller over the
/// simulated ports: the world, the controller, the adopted ids.
fn adopted_fleet(
    takeover: bool,
) -> (
    Shared,
    phoenix_protocol::Controller<crate::ports::Sim>,
    Vec<phoenix_core::InstanceId>,
) {
    use phoenix_protocol::controller::Selection;
    let mut ec2 = Ec2::new();
    ec2.images.insert(spec().image);
    let ids: Vec<_> = (0..2)
        .map(|zone| {
            let started = t0() - Duration::minutes(10);
            ec2.run_outside(&spec().image, zone, started, Default::default())
        })
        .collect();
    let world = Shared::new(World::new(
        t0(),
        Rng::new(1),
        ec2,
        Books::new(Fleet::new(spec(), t0())),
        Default::default(),
    ));
    let selection = if takeover {
        let group = crate::asg::Group {
            desired: 2,
            max: 2,
            members: ids.iter().cloned().collect(),
            ..Default::default()
        };
        let mut w = world.lock();
        w.autoscaling.groups.insert(GROUP.into(), group);
        Selection::Group(GROUP.into())
    } else {
        Selection::Ids(ids.clone())
    };
    let controller = crate::ports::controller(&world, Default::default());
    block(controller.adopt(spec(), &selection)).unwrap_or_else(|e| panic!("{e}"));
    (world, controller, ids)
}

/// One scheduled pass over the fleet, alone.
fn scheduled_pass(controller: &phoenix_protocol::Controller<crate::ports::Sim>, id: &str) {
    use phoenix_core::events::{Envelope, SCHEDULED_EVENT, SCHEDULE_SOURCE};
    use phoenix_core::patterns::route;
    let env = Envelope::new(
        id,
        SCHEDULE_SOURCE,
        SCHEDULED_EVENT,
        t0(),
        serde_json::json!({}),
    );
    let function = route(&env.source, &env.detail_type);
    block(controller.handle_within(&env, function, phoenix_protocol::Deadline::NONE))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_adopted_fleet_is_tagged_and_a_release_gives_it_back_untagged() {
    let (world, controller, ids) = adopted_fleet(false);
    for id in &ids {
        let w = world.lock();
        let vm = &w.ec2.vms[id];
        assert!(vm.tagged(), "{id}");
        assert_eq!(vm.token(), w.books.instance(id).map(|i| i.token.as_str()));
        assert!(vm.definition().is_some());
    }
    let (released, _) = block(controller.release(&spec().name)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(released, ids);
    let w = world.lock();
    for id in &ids {
        assert_eq!(w.ec2.vms[id].phoenix_tags().count(), 0, "{id}");
        assert!(w.ec2.vms[id].alive());
    }
    assert!(w.violation.is_none(), "{:?}", w.violation);
}

#[test]
fn a_release_cut_short_after_its_commit_leaves_its_instances_running() {
    use std::future::Future;
    let (world, controller, ids) = adopted_fleet(false);
    // The release commits, and its process dies before it removes phoenix's tags.
    let name = spec().name;
    {
        let mut release = Box::pin(controller.release(&name));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        while world.lock().custody.counts().1 == 0 {
            assert!(release.as_mut().poll(&mut cx).is_pending(), "ended");
        }
    }
    assert!(world.lock().ec2.vms[&ids[0]].tagged());
    scheduled_pass(&controller, "ev-1");
    let w = world.lock();
    assert!(w.violation.is_none(), "{:?}", w.violation);
    for id in &ids {
        assert!(w.ec2.vms[id].alive(), "{id} terminated after its release");
    }
}

#[test]
fn a_group_taken_over_is_emptied_and_its_instances_kept() {
    let (world, controller, ids) = adopted_fleet(true);
    {
        let w = world.lock();
        let group = &w.autoscaling.groups[GROUP];
        assert_eq!(group.min, 0);
        assert!(group.suspended.contains("Launch"));
        assert_eq!(group.tags.get(TAG_FLEET).map(String::as_str), Some(FLEET));
    }
    scheduled_pass(&controller, "ev-1");
    scheduled_pass(&controller, "ev-2");
    let w = world.lock();
    let group = &w.autoscaling.groups[GROUP];
    assert!(group.members.is_empty(), "{group:?}");
    assert_eq!(group.desired, 0);
    for id in &ids {
        assert!(w.books.is_live(id) && w.ec2.vms[id].tagged(), "{id}");
        assert!(!w.books.instance(id).is_some_and(|i| i.in_asg()), "{id}");
    }
    assert!(w.books.meta().takeover.is_none(), "the takeover is over");
    assert!(w.violation.is_none(), "{:?}", w.violation);
}

#[test]
fn a_detach_meeting_an_instance_already_out_leaves_none_behind() {
    let (world, controller, ids) = adopted_fleet(true);
    // One instance leaves the group before phoenix detaches it (its detach's answer was lost,
    // or someone detached it by hand).
    world
        .lock()
        .autoscaling
        .detach(GROUP, &[ids[0].to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    scheduled_pass(&controller, "ev-1");
    let w = world.lock();
    let still_in = w.autoscaling.groups[GROUP].members.contains(&ids[1]);
    let held = w.books.instance(&ids[1]).is_some_and(|i| i.in_asg());
    assert!(
        !still_in || held,
        "{} is still in the group, and phoenix records it detached",
        ids[1]
    );
}

#[test]
fn a_seed_draws_target_groups_and_hooks_without_touching_the_rest_of_its_stream() {
    let mut drawn = [0u32; 2];
    for seed in 1..=200 {
        let (mut a, mut b) = (Rng::new(seed), Rng::new(seed));
        let plain = crate::scenario::Scenario::draw(&mut a, &mut Ec2::new(), false, false, false);
        let every = crate::scenario::Scenario::draw(&mut b, &mut Ec2::new(), false, true, false);
        assert_eq!(a.next_u64(), b.next_u64(), "seed {seed}");
        assert_eq!(plain.spec.capacity, every.spec.capacity);
        assert!(!every.groups.is_empty() && !every.spec.hooks.is_empty());
        assert_eq!(every.spec.target_groups().len(), every.groups.len());
        every
            .spec
            .validate()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        drawn[0] += u32::from(!plain.groups.is_empty());
        drawn[1] += u32::from(!plain.spec.hooks.is_empty());
    }
    // Some seeds, not most.
    for n in drawn {
        assert!((40..=110).contains(&n), "{drawn:?} of 200");
    }
}

#[test]
fn the_simulated_target_groups_drain_forget_and_come_back_empty() {
    use phoenix_protocol::ports::elb::Target;
    let mut rng = Rng::new(1);
    let mut ec2 = Ec2::new();
    ec2.images.insert(ami(10));
    ec2.max_lag = 0;
    let now = t0();
    let (_, created) = ec2.run_instances(&run_request("web-x-2-0", 1), now, &mut rng);
    let id = created[0].clone();
    let target = [Target {
        id: id.to_string(),
        port: None,
    }];
    let mut elb = crate::elb::Elb::default();
    let arn =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/sim-0/0123456789abcdef";
    elb.add_group(arn, 30);
    // Only what runs is registered.
    assert!(elb.register(arn, &target, &ec2, now).is_err());
    let running = now + Duration::minutes(5);
    ec2.advance(running);
    elb.register(arn, &target, &ec2, running)
        .unwrap_or_else(|e| panic!("{e}"));
    let since = elb.groups[arn].targets[id.as_str()].since;
    // Registering again changes nothing.
    elb.register(arn, &target, &ec2, running + Duration::seconds(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(elb.groups[arn].targets[id.as_str()].since, since);
    // Deregistered, it is listed for the group's delay.
    elb.deregister(arn, &target, running)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        elb.listing(id.as_str(), running + Duration::seconds(29), false)
            .len(),
        1
    );
    assert!(elb
        .listing(id.as_str(), running + Duration::seconds(30), false)
        .is_empty());
    // Deleted, a group answers NotFound and lists nothing, but what it listed is kept; made
    // again, it is empty.
    elb.register(arn, &target, &ec2, running)
        .unwrap_or_else(|e| panic!("{e}"));
    elb.delete(arn, running + Duration::minutes(2));
    assert!(matches!(
        elb.health(arn, &ec2, running),
        Err(Error::NotFound(_))
    ));
    assert!(elb.listing(id.as_str(), running, false).is_empty());
    assert_eq!(elb.listing(id.as_str(), running, true).len(), 1);
    let back = elb.advance(running + Duration::minutes(2), &ec2, false);
    assert_eq!(back, [arn.to_string()]);
    assert!(elb.groups[arn].targets.is_empty());
    // An instance EC2 terminated is deregistered by AWS.
    elb.register(arn, &target, &ec2, running)
        .unwrap_or_else(|e| panic!("{e}"));
    ec2.terminate_instances(&[id.to_string()], running, &mut rng)
        .unwrap_or_else(|e| panic!("{e}"));
    let later = running + Duration::minutes(3);
    ec2.advance(later);
    elb.advance(later, &ec2, false);
    assert!(elb.groups[arn].targets.is_empty());
}

#[test]
fn a_seed_draws_windows_templates_and_edits_without_touching_the_rest_of_its_stream() {
    // The same main stream after the draw, with or without them: a seed that draws none of them
    // runs as it did before they existed.
    let mut drawn = [0u32; 3];
    for seed in 1..=200 {
        let (mut a, mut b) = (Rng::new(seed), Rng::new(seed));
        let plain = crate::scenario::Scenario::draw(&mut a, &mut Ec2::new(), false, false, false);
        let every = crate::scenario::Scenario::draw(&mut b, &mut Ec2::new(), true, false, false);
        assert_eq!(a.next_u64(), b.next_u64(), "seed {seed}");
        assert_eq!(plain.spec.capacity, every.spec.capacity);
        assert!(every.scheduled() && every.template.is_some() && every.edits);
        drawn[0] += u32::from(plain.scheduled());
        drawn[1] += u32::from(plain.template.is_some());
        drawn[2] += u32::from(plain.edits);
        if !plain.scheduled() {
            assert_eq!(plain.t0, crate::scenario::new_year());
        }
        // Every schedule drawn validates, and no run's worth of time is all open.
        every
            .spec
            .validate()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let closed_within_the_run = (0..90).any(|m| {
            !matches!(
                every
                    .spec
                    .policy
                    .disruption_at(every.t0 + Duration::minutes(m)),
                Openness::Open { .. }
            )
        });
        assert!(closed_within_the_run, "seed {seed}: {:?}", every.schedule);
    }
    // Some seeds, not most.
    for n in drawn {
        assert!((15..=60).contains(&n), "{drawn:?} of 200");
    }
}

#[test]
fn a_window_at_a_time_the_clocks_skip_or_repeat_opens_where_the_simulator_expects() {
    // What the simulator relies on when it draws a window at 02:30 local on a night the clocks
    // change: going forward, 02:30 does not exist and the window opens at the jump (03:00 local);
    // going back, 02:30 happens twice and the window opens at the first.
    let cases = [
        (
            "Europe/Berlin the night clocks go forward",
            (2025, 3, 30, 1, 0),
        ),
        (
            "America/New_York the night clocks go forward",
            (2025, 3, 9, 7, 0),
        ),
        (
            "Europe/Berlin the night clocks go back",
            (2025, 10, 26, 0, 30),
        ),
    ];
    for (words, (y, m, d, h, min)) in cases {
        let opens = Utc
            .with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .unwrap_or_default();
        let draw = |s: u64| {
            crate::scenario::Scenario::draw(&mut Rng::new(s), &mut Ec2::new(), true, false, false)
        };
        let seed = (1..=400)
            .find(|s| draw(*s).schedule.is_some_and(|w| w.contains(words)))
            .unwrap_or_else(|| panic!("no seed draws a window at 02:30 {words}"));
        let p = draw(seed).spec.policy;
        let frozen = |t| p.freezes.iter().any(|f| f.from <= t && t < f.until);
        let open = |t| matches!(p.disruption_at(t), Openness::Open { .. });
        assert!(!open(opens - Duration::seconds(1)), "{words}");
        assert!(open(opens) || frozen(opens), "{words}");
    }
}

#[test]
fn the_window_check_judges_voluntary_disruption_only() {
    use crate::check::Checker;
    use phoenix_core::model::{Freeze, Rollout, RolloutStatus};
    let mut fleet = Fleet::new(spec(), t0());
    fleet.spec.policy.freezes = vec![Freeze {
        from: t0(),
        until: t0() + Duration::hours(1),
        reason: None,
    }];
    fleet.rollout = Some(Rollout {
        id: 3,
        from: Some(ami(10)),
        to: ami(11),
        status: RolloutStatus::InProgress,
        started_at: t0(),
        finished_at: None,
        waves: Vec::new(),
        pause: None,
        checkpoints_passed: Vec::new(),
        reason: None,
        progressed_at: None,
        stalled: None,
        definition: None,
        waiting: None,
        ignore_windows: false,
    });
    let id = phoenix_core::InstanceId::parse("i-10000000").unwrap_or_else(|e| panic!("{e}"));
    let end = |reason: &str| Change::TerminationDecided {
        instance: id.clone(),
        reason: reason.into(),
    };
    let wave = Change::WaveStarted {
        rollout: 3,
        wave: 1,
        launches: 1,
    };
    let judge = |fleet: &Fleet, changes: &[Change], at| {
        Checker::check_windows(&Books::new(fleet.clone()), changes, at)
    };
    let inside = t0() + Duration::minutes(10);
    let after = t0() + Duration::hours(2);
    for voluntary in [
        end("replaced by ami-0000000b"),
        end("scale in to 1"),
        wave.clone(),
    ] {
        let c = std::slice::from_ref(&voluntary);
        assert!(judge(&fleet, c, inside).is_some(), "{voluntary:?}");
        assert!(judge(&fleet, c, after).is_none(), "{voluntary:?}");
    }
    for never_held in [
        end("replace failed instance: target failed its health check"),
        end("launched twice for decision web-1-2-0"),
        end("owned by no phoenix decision"),
        end("rolled back to image ami-0000000a"),
        end("replaced by ami-0000000b (issued again)"),
        end("scale in to 1 (deregistration issued again)"),
    ] {
        assert!(
            judge(&fleet, std::slice::from_ref(&never_held), inside).is_none(),
            "{never_held:?}"
        );
    }
    // `rollout resume --now`: this rollout's replacements and waves go on, and the scale-in it
    // needs to end at capacity; without a rollout going on, a scale-in waits.
    if let Some(r) = fleet.rollout.as_mut() {
        r.ignore_windows = true;
    }
    assert!(judge(&fleet, &[end("replaced by ami-0000000b"), wave], inside).is_none());
    assert!(judge(&fleet, &[end("scale in to 1")], inside).is_none());
    fleet.rollout = None;
    assert!(judge(&fleet, &[end("scale in to 1")], inside).is_some());
    // A target group the fleet records missing holds as a closed window does, at any hour.
    fleet.lb_missing.insert(
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/sim-0/0123456789abcdef"
            .into(),
    );
    let missing = judge(&fleet, &[end("scale in to 1")], after);
    assert!(
        missing
            .as_deref()
            .is_some_and(|m| m.contains("sim-0 does not exist")),
        "{missing:?}"
    );
    assert!(judge(&fleet, &[end("replace failed instance: flaky")], after).is_none());
}

#[test]
fn a_launch_carrying_a_definition_no_step_of_its_decision_had_is_caught() {
    use crate::check::{Checker, Decision};
    let mut fleet = Fleet::new(spec(), t0());
    let first = fleet.definition().fingerprint();
    let mut books = Books::new(fleet.clone());
    let mut checker = Checker::new(&books);
    // Version 5 changes the instance type.
    fleet.spec.instance_type = Some("m5.large".into());
    fleet.version = 5;
    let second = fleet.definition().fingerprint();
    books = Books::new(fleet);
    checker.on_commit(&books, &[]);
    let decided = |version, carried_out_at| Decision {
        count: 1,
        version,
        carried_out_at,
    };
    assert!(checker
        .check_launch_definition("a", &decided(3, 3), Some(&first))
        .is_none());
    assert!(checker
        .check_launch_definition("b", &decided(3, 3), Some(&second))
        .is_some());
    // Retried at version 6: either step's definition.
    for d in [&first, &second] {
        assert!(checker
            .check_launch_definition("c", &decided(3, 6), Some(d))
            .is_none());
    }
    assert!(checker
        .check_launch_definition("d", &decided(6, 6), Some(&first))
        .is_some());
    assert!(checker
        .check_launch_definition("e", &decided(6, 6), None)
        .is_some());
}

/// The invariants can fail: each broken variant is caught, on the kind of check it breaks,
/// within `seeds` seeds of 1500 chaos steps.
fn caught(variant: Variant, kind: &str, seeds: u64) {
    caught_in(variant, kind, seeds, run)
}

fn caught_in(variant: Variant, kind: &str, seeds: u64, run: fn(u64, u64, Variant) -> Report) {
    let mut kinds = Vec::new();
    for seed in 1..=seeds {
        let r = run(seed, 1500, variant);
        if let Some(v) = r.violation {
            if v.kind == kind {
                return;
            }
            kinds.push(format!("seed {seed}: {} ({})", v.kind, v.message));
        }
    }
    panic!(
        "{} was not caught as a {kind} violation in {seeds} seeds; found: {kinds:#?}",
        variant.name()
    );
}

#[test]
fn terminating_before_the_replacement_launched_is_caught() {
    caught(
        Variant::Planner(PlannerBug::DropAfterLaunch),
        "ordering",
        30,
    );
}

#[test]
fn replacing_in_place_is_caught() {
    caught(
        Variant::Planner(PlannerBug::ReplaceInPlace),
        "availability",
        30,
    );
}

#[test]
fn launching_a_quarantined_image_is_caught() {
    caught(
        Variant::Planner(PlannerBug::LaunchQuarantined),
        "quarantine",
        30,
    );
}

#[test]
fn launching_beyond_the_surge_is_caught() {
    caught(Variant::Planner(PlannerBug::SurgeBlind), "surge", 30);
}

#[test]
fn ignored_health_failures_are_caught_as_silence() {
    caught(
        Variant::Planner(PlannerBug::IgnoreHealthFailures),
        "silent",
        40,
    );
}

#[test]
fn a_lapsed_launch_carried_out_without_its_token_lookup_is_caught() {
    caught(
        Variant::Protocol(ProtocolVariant::RelaunchBlind),
        "relaunch",
        30,
    );
}

#[test]
fn acting_before_the_decision_is_committed_is_caught() {
    caught(
        Variant::Protocol(ProtocolVariant::ActBeforeDeciding),
        "write-ahead",
        5,
    );
}

#[test]
fn an_unfinished_event_taken_as_completed_is_caught() {
    caught(
        Variant::Protocol(ProtocolVariant::LapsedAsCompleted),
        "unfinished",
        30,
    );
}

#[test]
fn a_queued_intent_applied_twice_is_caught() {
    caught(Variant::Protocol(ProtocolVariant::KeepQueued), "inbox", 60);
}

#[test]
fn ignoring_the_deadline_reserve_is_caught() {
    caught(
        Variant::Protocol(ProtocolVariant::IgnoreDeadlineReserve),
        "deadline",
        30,
    );
}

#[test]
fn terminating_without_revalidation_is_caught() {
    caught(
        Variant::Protocol(ProtocolVariant::TerminateUnchecked),
        "foreign",
        60,
    );
}

#[test]
fn removing_notifications_before_publishing_them_is_caught() {
    caught(
        Variant::Protocol(ProtocolVariant::RemoveBeforePublish),
        "notification",
        30,
    );
}

#[test]
fn notifications_published_only_after_their_commit_are_caught() {
    caught(
        Variant::Protocol(ProtocolVariant::PublishOnlyAfterCommit),
        "notification",
        30,
    );
}

#[test]
fn replacing_and_scaling_in_outside_the_windows_is_caught() {
    caught_in(
        Variant::Planner(PlannerBug::IgnoreWindows),
        "window",
        3,
        run_drifting,
    );
}

#[test]
fn drift_left_unrolled_is_caught() {
    caught_in(
        Variant::Planner(PlannerBug::IgnoreDrift),
        "drift",
        12,
        run_drifting,
    );
}

#[test]
fn terminating_what_still_serves_is_caught() {
    caught_in(
        Variant::Protocol(ProtocolVariant::SkipDrain),
        "drain",
        5,
        run_traffic,
    );
}

#[test]
fn registering_and_counting_before_the_launching_hook_is_caught() {
    caught_in(
        Variant::Planner(PlannerBug::IgnoreLaunchHook),
        "hook",
        5,
        run_traffic,
    );
}

#[test]
fn counting_before_the_target_groups_report_healthy_is_caught() {
    caught_in(
        Variant::Planner(PlannerBug::IgnoreTargetHealth),
        "serving",
        5,
        run_traffic,
    );
}

#[test]
fn terminating_before_the_terminating_hook_ended_is_caught() {
    caught_in(
        Variant::Planner(PlannerBug::SkipTerminatingHook),
        "hook",
        5,
        run_traffic,
    );
}

#[test]
fn placing_without_balancing_is_caught() {
    caught(Variant::Planner(PlannerBug::PlaceBlind), "balance", 30);
}

#[test]
fn adopted_instances_left_without_the_fleet_tag_are_caught() {
    caught_in(
        Variant::World(WorldBug::ForgetTags),
        "adoption",
        3,
        run_adopting,
    );
}

#[test]
fn released_instances_left_with_phoenix_tags_are_caught() {
    caught_in(
        Variant::World(WorldBug::KeepTags),
        "release",
        10,
        run_adopting,
    );
}

#[test]
fn terminating_an_instance_phoenix_never_adopted_is_caught() {
    caught_in(
        Variant::World(WorldBug::TagNeighbour),
        "foreign",
        3,
        run_adopting,
    );
}

#[test]
fn an_instance_left_in_a_group_taken_over_is_caught() {
    caught_in(
        Variant::World(WorldBug::DetachNothing),
        "group",
        3,
        run_taking_over,
    );
}

#[test]
fn a_group_taken_over_and_never_emptied_is_caught() {
    caught_in(
        Variant::Planner(PlannerBug::NeverDetach),
        "group",
        3,
        run_taking_over,
    );
}

#[test]
fn sending_ec2_requests_without_the_call_budget_is_caught() {
    caught(
        Variant::Protocol(ProtocolVariant::NoCallBudget),
        "ec2 budget",
        20,
    );
}

/// A zone fails under a fleet of 300: its hundred or so instances' health checks fail at once,
/// delivered 50 at a time, under the EC2 call budget.
fn zone_storm(seed: u64, variant: Variant) -> Report {
    let mut cfg = Config::new(seed);
    cfg.chaos_steps = 100;
    cfg.fan_out = 50;
    cfg.storm = Some(300);
    cfg.variant = variant;
    run_seed(cfg)
}

#[test]
fn a_zone_failing_loses_no_event_and_keeps_the_call_budget() {
    for seed in 1..=3 {
        let r = zone_storm(seed, Variant::Real);
        // The budget's invariant ("ec2 budget") is checked at every EC2 request.
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        assert!(r.stats.storm_events >= 90, "seed {seed}: {:?}", r.stats);
        assert_eq!(r.stats.dead_lettered, 0, "seed {seed}");
        assert!(
            r.stats.queued_instance_events > 0,
            "seed {seed}: no report waited in the inbox"
        );
    }
}

#[test]
fn a_zone_failing_without_the_call_budget_is_caught() {
    let r = zone_storm(1, Variant::Protocol(ProtocolVariant::NoCallBudget));
    assert_eq!(r.violation.map(|v| v.kind), Some("ec2 budget"));
}

/// A settled fleet of two, recorded quiet by the schedule's passes, loses an instance outside
/// phoenix; whether the next scheduled pass still records it live.
fn vanished_while_quiet(variant: ProtocolVariant) -> bool {
    use phoenix_protocol::ports::table::Key;
    let (world, controller, ids) = adopted_fleet(false);
    let controller = controller.with_variant(variant);
    let meta = Key::new(format!("FLEET#{FLEET}"), "META");
    let quiet = |w: &World| w.table.get(&meta).is_some_and(|i| i.contains_key("quiet"));
    for k in 0..10 {
        if quiet(&world.lock()) {
            break;
        }
        world.lock().now += Duration::minutes(1);
        scheduled_pass(&controller, &format!("settle-{k}"));
    }
    assert!(quiet(&world.lock()), "the fleet never became quiet");
    {
        let mut w = world.lock();
        let now = w.now;
        w.ec2.vanish(&ids[0], now);
        w.now += Duration::minutes(1);
    }
    scheduled_pass(&controller, "after");
    let live = world.lock().books.is_live(&ids[0]);
    live
}

#[test]
fn a_quick_look_blind_to_what_ec2_reports_is_caught() {
    // The schedule's quick look compares what EC2 reports with the quiet fleet's digest: an
    // instance gone outside phoenix makes the pass a full one, which records it gone.
    assert!(!vanished_while_quiet(ProtocolVariant::Real));
    // The control: a look that does not compare keeps it recorded live.
    assert!(vanished_while_quiet(ProtocolVariant::QuietBlind));
}

#[test]
fn every_variant_has_its_test() {
    // The list above names each variant once; a variant added without a test fails here.
    assert_eq!(Variant::all().len(), 1 + 14 + 9 + 4);
}

#[test]
fn the_planner_variants_rewrite_only_what_they_say() {
    let fleet = planner::create_fleet(spec(), None, t0())
        .unwrap_or_else(|e| panic!("{e}"))
        .fleet;
    let mut whole = fleet.clone();
    whole.complete = true;
    let real = CorePlanner.reconcile(Step::unchanged(&whole), &[], t0());
    let blind = Variant::Planner(PlannerBug::SurgeBlind)
        .planner()
        .reconcile(Step::unchanged(&whole), &[], t0());
    let count = |s: &Step| {
        s.changes
            .iter()
            .find_map(|c| match c {
                Change::LaunchDecided { count, .. } => Some(*count),
                _ => None,
            })
            .unwrap_or(0)
    };
    assert_eq!(count(&real), 2);
    assert_eq!(count(&blind), 3);
    assert_eq!(blind.fleet.pending_count(), 3);
}

#[test]
fn the_controller_launches_no_image_of_an_account_not_allowed() {
    use phoenix_core::events::Envelope;
    use phoenix_core::images::AllowedImageAccounts;
    use phoenix_protocol::Intake;

    let (store, world, fleet) = store();
    {
        let mut w = world.lock();
        w.ec2.images.insert(fleet.spec.image.clone());
        w.ec2.images.insert(ami(0xb));
    }
    let controller = crate::ports::controller(
        &world,
        Intake {
            image_accounts: AllowedImageAccounts::from_list("111122223333"),
            ..Intake::default()
        },
    );
    // The simulator's EC2 reports no owner for its images: none is an allowed account's.
    let mut file = spec();
    file.image = ami(0xb);
    let refused = block(controller.apply_fleet(file)).map(|_| ());
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("does not report which account owns"), "{why}");
    assert!(why.contains("111122223333"), "{why}");
    let version = block(store.load_fleet(&fleet.spec.name))
        .unwrap_or_else(|e| panic!("{e}"))
        .version;
    assert_eq!(version, fleet.version, "nothing written");

    // An `ImageReady` for it: refused and recorded, nothing launched.
    let env = Envelope {
        id: "ready-1".into(),
        source: "phoenix".into(),
        detail_type: "ImageReady".into(),
        time: t0(),
        account: None,
        region: None,
        resources: Vec::new(),
        detail: serde_json::json!({"fleet": FLEET, "image": ami(0xb).as_str()}),
    };
    block(controller.handle(&env, None)).unwrap_or_else(|e| panic!("{e}"));
    let after = block(store.load_fleet(&fleet.spec.name)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after.spec.image, fleet.spec.image);
    let history = block(store.history(&fleet.spec.name, 10)).unwrap_or_else(|e| panic!("{e}"));
    let rejected: Vec<&String> = history
        .iter()
        .flat_map(|e| &e.changes)
        .filter_map(|c| match c {
            Change::ImageRejected { image, reason } if *image == ami(0xb) => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 1, "{history:?}");
    assert!(rejected[0].contains("PHOENIX_ALLOWED_IMAGE_ACCOUNTS"));
    assert!(world.lock().ec2.vms.is_empty(), "nothing launched");
    assert_eq!(world.lock().stats.published, 1, "ImageRejected published");
}
