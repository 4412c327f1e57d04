//! Tests of the simulator itself: its pieces behave like what they stand for, a seed replays
//! exactly, and the invariants catch planners that break them.

use crate::ec2::{subnet_index, Ec2, SUBNETS};
use crate::rng::Rng;
use crate::store::{CommitError, EventOp, Seen, Store};
use crate::{run_seed, Config, Report, Variant};
use chrono::{TimeZone, Utc};
use phoenix_core::events::{Cause, Change, Intent, QueuedIntent, ScaleTarget};
use phoenix_core::model::{FleetSpec, Lifecycle, Timestamp};
use phoenix_core::planner::{self, Step};
use phoenix_core::ImageId;

fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

fn ami(n: u32) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap_or_else(|e| panic!("{e}"))
}

fn spec() -> FleetSpec {
    FleetSpec::from_yaml("name: web\nimage: ami-0000000a\ncapacity: 2\ninstance_type: t3.micro\n")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn run(seed: u64, steps: u64, variant: Variant) -> Report {
    let mut cfg = Config::new(seed);
    cfg.chaos_steps = steps;
    cfg.variant = variant;
    run_seed(cfg)
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
fn the_store_refuses_stale_versions_and_claimed_event_ids_by_their_status() {
    let created = planner::create_fleet(spec(), t0()).unwrap_or_else(|e| panic!("{e}"));
    let mut store = Store::create(&created);
    let now = t0();
    let later = now + chrono::Duration::seconds(90);
    let loaded = store.load_fleet();
    assert_eq!(loaded.version, 1);
    let step = planner::reconcile(&loaded, &[], now);
    assert!(!step.is_noop());
    // Commands follow: the event is in progress until the invocation's deadline.
    let claim = EventOp::Claim {
        id: "ev-1",
        until: Some(now + chrono::Duration::seconds(60)),
    };
    let committed = store
        .commit(&loaded, &step, Some(claim), now)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(committed.version, 2);
    // The same version again: someone else won the race.
    assert_eq!(
        store.commit(&loaded, &step, None, now).err(),
        Some(CommitError::Conflict)
    );
    // A claim of the same event meets its record, whatever the version, and writes nothing.
    let fresh = store.load_fleet();
    let again = Step::unchanged(&fresh);
    let reclaim = EventOp::Claim {
        id: "ev-1",
        until: None,
    };
    assert_eq!(
        store.commit(&fresh, &again, Some(reclaim), now).err(),
        Some(CommitError::Seen(Seen::InFlight))
    );
    assert_eq!(
        store.commit(&fresh, &again, Some(reclaim), later).err(),
        Some(CommitError::Seen(Seen::Unfinished))
    );
    assert_eq!(store.version(), 2);
    // Recording the outcomes completes it.
    store
        .commit(&fresh, &again, Some(EventOp::Complete("ev-1")), now)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(store.check_event("ev-1", later), Some(Seen::Duplicate));
    assert_eq!(store.check_event("ev-2", later), None);
    // A partial load holds the record and only the named instances.
    let partial = store.load_partial(&[]);
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
        event_time: t0() + chrono::Duration::seconds(secs),
        cause,
    }
}

#[test]
fn the_inbox_is_written_without_a_version_and_each_intent_taken_from_it_once() {
    let created = planner::create_fleet(spec(), t0()).unwrap_or_else(|e| panic!("{e}"));
    let mut store = Store::create(&created);
    let now = t0();
    let loaded = store.load_fleet();
    // Queueing completes the event and leaves the version alone; a redelivery meets the record.
    store
        .enqueue(queued("ev-9", 20, 3), "ev-9", now)
        .unwrap_or_else(|e| panic!("{e:?}"));
    store
        .enqueue(queued("ev-8", 10, 4), "ev-8", now)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        store.enqueue(queued("ev-9", 20, 3), "ev-9", now),
        Err(Seen::Duplicate)
    );
    assert_eq!(store.check_event("ev-8", now), Some(Seen::Duplicate));
    assert_eq!(store.version(), 1);
    // A whole load holds the inbox, oldest event first; a partial load does not.
    let fleet = store.load_fleet();
    let ids: Vec<_> = fleet
        .inbox
        .iter()
        .map(|q| q.cause.event_id.clone().unwrap_or_default())
        .collect();
    assert_eq!(ids, ["ev-8", "ev-9"]);
    assert!(store.load_partial(&[]).inbox.is_empty());
    // Applying one deletes it; a second commit applying it (even at the new version) conflicts.
    let first = fleet.inbox[0].clone();
    let step = planner::apply_queued(&fleet, &first, now);
    let key = first.key();
    let committed = store
        .commit(&fleet, &step, Some(EventOp::Dequeue(&key)), now)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(committed.version, 2);
    assert_eq!(store.meta().spec.capacity, 4);
    assert!(
        store.meta().inbox.is_empty(),
        "the record does not hold the inbox"
    );
    let fresh = store.load_fleet();
    assert_eq!(fresh.inbox.len(), 1);
    assert_eq!(
        store
            .commit(
                &fresh,
                &Step::unchanged(&fresh),
                Some(EventOp::Dequeue(&key)),
                now
            )
            .err(),
        Some(CommitError::Conflict)
    );
    // The version read still guards a commit that applies a queued intent.
    let second = fresh.inbox[0].key();
    assert_eq!(
        store
            .commit(&loaded, &step, Some(EventOp::Dequeue(&second)), now)
            .err(),
        Some(CommitError::Conflict)
    );
    assert_eq!(store.version(), 2);
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
}

#[test]
fn ec2_honours_client_tokens_unless_told_not_to_and_lists_new_instances_late() {
    let mut rng = Rng::new(1);
    let mut ec2 = Ec2::new();
    ec2.max_lag = 30;
    let now = t0();
    let first = ec2.launch("web-x-2-0", &ami(10), 2, now, &mut rng);
    let ids: Vec<_> = first
        .result
        .clone()
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(first.created.len(), 2);
    // Not listed yet, perhaps; the ClientToken answers the same instances without creating more.
    let again = ec2.launch("web-x-2-0", &ami(10), 2, now, &mut rng);
    assert!(again.created.is_empty());
    let again: Vec<_> = again
        .result
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(again, ids);
    // An endpoint that ignores the token launches twice if it cannot see the first instances.
    let mut moto = Ec2::new();
    moto.honour_client_token = false;
    moto.max_lag = 0;
    let a = moto.launch("web-x-3-0", &ami(10), 1, now, &mut rng);
    assert_eq!(a.created.len(), 1);
    let b = moto.launch("web-x-3-0", &ami(10), 1, now, &mut rng);
    assert!(b.created.is_empty(), "the token tag is looked up first");
    // Terminating an instance DescribeInstances does not list yet reports it gone, and leaves it.
    let mut lagging = Ec2::new();
    lagging.max_lag = 0;
    let id = lagging
        .launch("web-x-4-0", &ami(10), 1, now, &mut rng)
        .created[0]
        .clone();
    if let Some(vm) = lagging.vms.get_mut(&id) {
        vm.visible_from = now + chrono::Duration::seconds(60);
    }
    let (gone, terminated) = lagging
        .terminate(std::slice::from_ref(&id), now, &mut rng)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(gone, vec![id.clone()]);
    assert!(terminated.is_empty());
    assert_eq!(lagging.vms[&id].state, Lifecycle::Pending);
}

#[test]
fn launches_pick_their_subnet_as_the_adapter_does() {
    // The same fold as `phoenix_aws::compute`: h = h * 31 + byte, modulo the subnet count.
    let token = "web-spduo0-12-0";
    let expected = token
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % SUBNETS.len();
    assert_eq!(subnet_index(token, SUBNETS.len()), expected);
}

#[test]
fn the_real_planner_keeps_every_invariant_on_these_seeds() {
    for seed in 1..=12 {
        let r = run(seed, 1500, Variant::Real);
        assert!(
            r.violation.is_none(),
            "seed {seed}: {:?}\n{}",
            r.violation,
            r.trace_tail.join("\n")
        );
    }
}

/// The invariants can fail: each broken planner is caught, on the kind of check it breaks.
fn caught(variant: Variant, kind: &str, seeds: u64) {
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
    caught(Variant::DropAfterLaunch, "ordering", 30);
}

#[test]
fn replacing_in_place_is_caught() {
    caught(Variant::ReplaceInPlace, "availability", 30);
}

#[test]
fn launching_a_quarantined_image_is_caught() {
    caught(Variant::LaunchQuarantined, "quarantine", 30);
}

#[test]
fn launching_beyond_the_surge_is_caught() {
    caught(Variant::SurgeBlind, "surge", 30);
}

#[test]
fn ignored_health_failures_are_caught_as_silence() {
    caught(Variant::IgnoreHealthFailures, "silent", 40);
}

#[test]
fn the_variants_rewrite_only_what_they_say() {
    let created = planner::create_fleet(spec(), t0()).unwrap_or_else(|e| panic!("{e}"));
    let store = Store::create(&created);
    let fleet = store.load_fleet();
    let real = Variant::Real
        .plan_fleet(&fleet, None, t0(), &[], t0())
        .unwrap_or_else(|e| panic!("{e}"));
    let blind = Variant::SurgeBlind
        .plan_fleet(&fleet, None, t0(), &[], t0())
        .unwrap_or_else(|e| panic!("{e}"));
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
