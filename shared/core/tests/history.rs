#![allow(clippy::unwrap_used)]
//! The history is enough to reconstruct the past: runs of the planner against a fake EC2 (the
//! way the functions drive it, with crashes and EC2 faults), every commit recorded as the store
//! records it (`HistoryEntry::record`, stored as JSON), and at every recorded moment the fleet
//! replayed from the history alone must equal the fleet that was committed then.
//!
//! The same runs feed `explain` (every instance's chain starts at its launch decision and ends at
//! its termination) and the timeline, which is rasterised and checked pixel by pixel.

use chrono::{Duration, TimeZone, Utc};
use phoenix_core::events::{Cause, Change, Intent, ScaleTarget};
use phoenix_core::history::{explain, replay, snapshot, HistoryEntry, LinkKind};
use phoenix_core::model::{Fleet, FleetSpec, Lifecycle, Observed, Timestamp};
use phoenix_core::planner::{self, Command, Launched, Outcome, Step};
use phoenix_core::timeline::{self, MarkerKind, Timeline, Window};
use phoenix_core::{FleetName, ImageId, InstanceId};
use std::collections::{BTreeMap, BTreeSet};

const A: &str = "ami-0000000a";
const B: &str = "ami-0000000b";
const C: &str = "ami-0000000c";

fn ami(s: &str) -> ImageId {
    ImageId::parse(s).unwrap()
}

fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

fn spec(image: &str, capacity: u32, surge: &str, unavailable: &str) -> FleetSpec {
    FleetSpec::from_yaml(&format!(
        "name: web\nimage: {image}\ncapacity: {capacity}\ninstance_type: t3.micro\n\
         policy:\n  max_surge: \"{surge}\"\n  max_unavailable: \"{unavailable}\"\n"
    ))
    .unwrap()
}

/// SplitMix64: seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// A fake EC2 (instances boot in two ticks; terminating ones are gone after one)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Vm {
    image: ImageId,
    token: Option<String>,
    state: Lifecycle,
    status_ok: bool,
    launched_at: Timestamp,
    gone_at: Option<Timestamp>,
    /// Its `phoenix:definition` tag.
    definition: Option<String>,
}

struct Ec2 {
    now: Timestamp,
    vms: BTreeMap<InstanceId, Vm>,
    next_id: u64,
    client_tokens: BTreeMap<String, Vec<InstanceId>>,
    fail_launches: bool,
    duplicate_launches: bool,
    /// The definition the next launches are tagged with (the fleet's as committed, as the
    /// executor tags them).
    definition: Option<String>,
}

impl Ec2 {
    fn new(now: Timestamp) -> Self {
        Ec2 {
            now,
            vms: BTreeMap::new(),
            next_id: 0x1000,
            client_tokens: BTreeMap::new(),
            fail_launches: false,
            duplicate_launches: false,
            definition: None,
        }
    }

    fn create(&mut self, image: &ImageId, token: &str, count: u32) -> Vec<InstanceId> {
        (0..count)
            .map(|_| {
                let id = InstanceId::parse(&format!("i-{:08x}", self.next_id)).unwrap();
                self.next_id += 1;
                self.vms.insert(
                    id.clone(),
                    Vm {
                        image: image.clone(),
                        token: Some(token.to_string()),
                        state: Lifecycle::Pending,
                        status_ok: false,
                        launched_at: self.now,
                        gone_at: None,
                        definition: self.definition.clone(),
                    },
                );
                id
            })
            .collect()
    }

    fn run_instances(
        &mut self,
        token: &str,
        image: &ImageId,
        count: u32,
    ) -> Result<Vec<Launched>, String> {
        if self.fail_launches {
            return Err("InsufficientInstanceCapacity".into());
        }
        let ids = match self.client_tokens.get(token) {
            Some(ids) if !self.duplicate_launches => ids.clone(),
            _ => {
                if self.duplicate_launches {
                    self.create(image, token, count);
                }
                let ids = self.create(image, token, count);
                self.client_tokens
                    .entry(token.to_string())
                    .or_insert_with(|| ids.clone());
                ids
            }
        };
        Ok(ids
            .iter()
            .map(|id| Launched {
                id: id.clone(),
                launched_at: Some(self.vms[id].launched_at),
                state: self.vms[id].state,
                zone: None,
                instance_type: None,
                subnet: None,
                definition: self.vms[id].definition.clone(),
            })
            .collect())
    }

    fn terminate(&mut self, ids: &[InstanceId]) {
        for id in ids {
            if let Some(vm) = self.vms.get_mut(id) {
                if !vm.state.is_gone() {
                    vm.state = Lifecycle::ShuttingDown;
                    vm.status_ok = false;
                }
            }
        }
    }

    fn kill(&mut self, id: &InstanceId) {
        let now = self.now;
        let vm = self.vms.get_mut(id).unwrap();
        vm.state = Lifecycle::Terminated;
        vm.status_ok = false;
        vm.gone_at = Some(now);
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        for vm in self.vms.values_mut() {
            match vm.state {
                Lifecycle::Pending => vm.state = Lifecycle::Running,
                Lifecycle::Running => vm.status_ok = true,
                Lifecycle::Stopping => vm.state = Lifecycle::Stopped,
                Lifecycle::ShuttingDown => {
                    vm.state = Lifecycle::Terminated;
                    vm.gone_at = Some(self.now);
                }
                Lifecycle::Stopped | Lifecycle::Terminated => {}
            }
        }
    }

    fn observe(&self) -> Vec<Observed> {
        self.vms
            .iter()
            .filter(|(_, vm)| vm.gone_at.is_none_or(|t| t + Duration::hours(1) > self.now))
            .map(|(id, vm)| Observed {
                targets: Default::default(),
                id: id.clone(),
                image: Some(vm.image.clone()),
                state: vm.state,
                status_ok: vm.status_ok,
                system_impaired: false,
                launched_at: Some(vm.launched_at),
                token: vm.token.clone(),
                zone: None,
                instance_type: None,
                subnet: None,
                definition: vm.definition.clone(),
                protected: false,
            })
            .collect()
    }

    fn existing(&self) -> Vec<InstanceId> {
        self.vms
            .iter()
            .filter(|(_, vm)| !vm.state.is_gone())
            .map(|(id, _)| id.clone())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The driver: a store that records history as DynamoStore does, and the executor
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    None,
    BeforeExecute,
    AfterExecute,
}

struct World {
    ec2: Ec2,
    /// The committed fleet, complete.
    fleet: Fleet,
    /// The history as the store keeps it (each entry went through its JSON form).
    entries: Vec<HistoryEntry>,
    /// The fleet right after each commit, with the commit's time.
    committed: Vec<(Timestamp, Fleet)>,
    crash: Crash,
    events: u64,
}

/// What the store keeps and gives back: the entry's JSON.
fn stored(entry: &HistoryEntry) -> HistoryEntry {
    serde_json::from_str(&serde_json::to_string(entry).unwrap()).unwrap()
}

impl World {
    fn new(spec: FleetSpec) -> Self {
        let now = t0();
        let step = planner::create_fleet(spec, None, now).unwrap();
        let mut world = World {
            ec2: Ec2::new(now),
            fleet: step.fleet.clone(),
            entries: Vec::new(),
            committed: Vec::new(),
            crash: Crash::None,
            events: 0,
        };
        let loaded = step.fleet.clone();
        let mut zero = loaded.clone();
        zero.version = 0;
        world.commit(&zero, &step, &Cause::internal("FleetApplied"));
        world
    }

    fn now(&self) -> Timestamp {
        self.ec2.now
    }

    fn event_cause(&mut self, detail_type: &str) -> Cause {
        self.events += 1;
        Cause {
            event_id: Some(format!("evt-{}", self.events)),
            source: "phoenix".into(),
            detail_type: detail_type.into(),
            event_time: Some(self.now()),
        }
    }

    /// Commits as `DynamoStore::commit` does: the fleet record at the next version, the touched
    /// instance records, and one history entry made by `HistoryEntry::record`.
    fn commit(&mut self, loaded: &Fleet, step: &Step, cause: &Cause) -> Fleet {
        if step.is_noop() {
            return step.fleet.clone();
        }
        let now = self.now();
        let mut next = step.fleet.clone();
        next.version = loaded.version.max(self.fleet.version) + 1;
        let entry = HistoryEntry::record(&next, &step.touched, cause, &step.changes, now);
        self.entries.push(stored(&entry));
        let mut full = next.clone();
        if !step.fleet.complete {
            full.instances = self.fleet.instances.clone();
            for id in &step.touched {
                if let Some(i) = step.fleet.instances.get(id) {
                    full.instances.insert(id.clone(), i.clone());
                }
            }
        }
        full.complete = true;
        self.fleet = full.clone();
        self.committed.push((now, full));
        next
    }

    fn execute(&mut self, commands: &[Command]) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        let mut launched = BTreeSet::new();
        for c in commands {
            if let Command::Terminate {
                instances,
                after_launch: None,
            } = c
            {
                self.ec2.terminate(instances);
                outcomes.push(Outcome::Terminated {
                    instances: instances.clone(),
                    request_ids: Vec::new(),
                });
            }
        }
        for c in commands {
            if let Command::Launch {
                token,
                image,
                count,
                ..
            } = c
            {
                match self.ec2.run_instances(token, image, *count) {
                    Ok(instances) => {
                        launched.insert(token.clone());
                        outcomes.push(Outcome::Launched {
                            token: token.clone(),
                            instances,
                            request_ids: Vec::new(),
                            refused: Vec::new(),
                        });
                    }
                    Err(error) => outcomes.push(Outcome::LaunchFailed {
                        token: token.clone(),
                        error,
                        refused: Vec::new(),
                    }),
                }
            }
        }
        for c in commands {
            if let Command::Terminate {
                instances,
                after_launch: Some(token),
            } = c
            {
                if launched.contains(token) {
                    self.ec2.terminate(instances);
                    outcomes.push(Outcome::Terminated {
                        instances: instances.clone(),
                        request_ids: Vec::new(),
                    });
                }
            }
        }
        outcomes
    }

    fn run(&mut self, loaded: &Fleet, step: &Step, cause: &Cause) {
        let crash = std::mem::replace(&mut self.crash, Crash::None);
        let continued = self.commit(loaded, step, cause);
        if crash == Crash::BeforeExecute || step.is_noop() {
            return;
        }
        self.ec2.definition = Some(continued.definition().fingerprint());
        let outcomes = self.execute(&step.commands);
        if crash == Crash::AfterExecute || outcomes.is_empty() {
            return;
        }
        let recorded = planner::record_outcomes(&continued, &outcomes, self.now());
        self.commit(&continued, &recorded, cause);
    }

    fn pass(&mut self) {
        let loaded = self.fleet.clone();
        let step = planner::reconcile(&loaded, &self.ec2.observe(), self.now());
        self.run(&loaded, &step, &Cause::internal("Scheduled Event"));
    }

    /// One event, handled by its function (instance events load the fleet record and that
    /// instance only).
    fn apply(&mut self, intent: &Intent, detail_type: &str) {
        let mut loaded = self.fleet.clone();
        if let Intent::HealthCheckFailed { instance, .. } = intent {
            loaded.complete = false;
            loaded.instances.retain(|id, _| id == instance);
        } else if !matches!(intent, Intent::Reconcile { .. }) {
            loaded.complete = false;
            loaded.instances.clear();
        }
        let Ok(step) = planner::apply_intent(&loaded, intent, self.now(), self.now()) else {
            return;
        };
        let cause = self.event_cause(detail_type);
        self.run(&loaded, &step, &cause);
    }

    /// A fleet file applied over the fleet (`phoenix fleet apply`).
    fn update(&mut self, spec: FleetSpec) {
        let loaded = self.fleet.clone();
        let step = planner::update_spec(&loaded, spec, None, self.now()).unwrap();
        self.run(&loaded, &step, &Cause::internal("FleetApplied"));
    }

    fn settle(&mut self) {
        for _ in 0..60 {
            self.pass();
            self.ec2.tick(secs(30));
        }
    }
}

fn image_ready(image: &str) -> Intent {
    Intent::ImageReady {
        fleet: FleetName::parse("web").unwrap(),
        image: ami(image),
    }
}

// ---------------------------------------------------------------------------------------------
// Replay equals what was committed
// ---------------------------------------------------------------------------------------------

fn random_world(seed: u64) -> World {
    let mut rng = Rng(seed);
    let surge = *rng.pick(&["0", "1", "2", "25%"]);
    let unavailable = *rng.pick(&["0", "1", "25%"]);
    let capacity = 1 + rng.below(5) as u32;
    let mut w = World::new(spec(A, capacity, surge, unavailable));
    for _ in 0..40 {
        w.ec2.fail_launches = rng.chance(5);
        w.ec2.duplicate_launches = rng.chance(5);
        let crash = |rng: &mut Rng| match rng.below(10) {
            0 => Crash::BeforeExecute,
            1 => Crash::AfterExecute,
            _ => Crash::None,
        };
        match rng.below(10) {
            0 | 1 => {
                w.crash = crash(&mut rng);
                let image = *rng.pick(&[A, B, C]);
                w.apply(&image_ready(image), "ImageReady");
            }
            2 => {
                w.crash = crash(&mut rng);
                let intent = Intent::Scale {
                    fleet: FleetName::parse("web").unwrap(),
                    target: ScaleTarget::Desired(rng.below(6) as u32),
                };
                w.apply(&intent, "ScaleRequested");
            }
            3 | 4 => {
                let live: Vec<InstanceId> =
                    w.fleet.live_instances().map(|i| i.id.clone()).collect();
                if !live.is_empty() {
                    let id = rng.pick(&live).clone();
                    w.crash = crash(&mut rng);
                    w.apply(
                        &Intent::HealthCheckFailed {
                            instance: id,
                            reason: "http 503".into(),
                        },
                        "HealthCheckFailed",
                    );
                }
            }
            5 => {
                let ids = w.ec2.existing();
                if !ids.is_empty() {
                    let id = rng.pick(&ids).clone();
                    w.ec2.kill(&id);
                }
            }
            _ => {}
        }
        w.crash = crash(&mut rng);
        w.pass();
        w.ec2.tick(secs(10 + rng.below(60) as i64));
    }
    w
}

fn check_replay(seed: u64) -> Result<(), String> {
    let w = random_world(seed);
    let fail = |what: String| Err(format!("seed {seed}: {what}"));
    if w.entries.len() != w.committed.len() {
        return fail("an entry per commit".into());
    }
    for (n, (at, _)) in w.committed.iter().enumerate() {
        // The state at a moment is what the last commit at that moment left.
        let expected = w
            .committed
            .iter()
            .rev()
            .find(|(t, _)| t == at)
            .map(|(_, f)| f)
            .unwrap();
        let replayed = replay(&w.entries, *at);
        if replayed.as_ref() != Some(expected) {
            let got = replayed.unwrap();
            return fail(format!(
                "commit {n} at {at}: replay differs\n spec {:?} vs {:?}\n rollout {:?}\n vs {:?}\n pending {:?} vs {:?}\n live {:?} vs {:?}",
                got.spec.image,
                expected.spec.image,
                got.rollout,
                expected.rollout,
                got.pending,
                expected.pending,
                got.live_instances().collect::<Vec<_>>(),
                expected.live_instances().collect::<Vec<_>>()
            ));
        }
        // Just before it: what the commits before that moment left (nothing before the first).
        let before = w
            .committed
            .iter()
            .rev()
            .find(|(t, _)| t < at)
            .map(|(_, f)| f);
        if replay(&w.entries, *at - Duration::milliseconds(1)).as_ref() != before {
            return fail(format!("commit {n} at {at}: replay just before differs"));
        }
        let snap = snapshot(&w.entries, *at).unwrap();
        let live = expected.live_instances().count();
        if snap.instances.len() != live || snap.budget.live as usize != live {
            return fail(format!(
                "commit {n}: snapshot shows {} live of {live}",
                snap.instances.len()
            ));
        }
        if snap.budget.max_total != expected.budget().max_total || snap.version != expected.version
        {
            return fail(format!("commit {n}: snapshot budget or version differs"));
        }
    }

    // Every instance's chain starts at the decision that launched it; those gone end in their
    // termination or disappearance.
    for inst in w.fleet.instances.values() {
        let ex = explain(&w.entries, &inst.id).ok_or(format!("seed {seed}: no chain"))?;
        let kinds: Vec<LinkKind> = ex.links.iter().map(|l| l.kind).collect();
        if kinds.first() != Some(&LinkKind::LaunchDecided) || !kinds.contains(&LinkKind::Launched) {
            return fail(format!("{}: chain {kinds:?}", inst.id));
        }
        if !inst.is_live()
            && !kinds
                .iter()
                .any(|k| matches!(k, LinkKind::Terminated | LinkKind::Vanished))
        {
            return fail(format!("{} is gone, chain {kinds:?}", inst.id));
        }
        if ex.links.windows(2).any(|p| p[0].version > p[1].version) {
            return fail(format!("{}: chain out of order", inst.id));
        }
    }

    // Every change recorded reads as one line.
    for e in &w.entries {
        for c in &e.changes {
            let text = phoenix_core::history::describe(c);
            if text.is_empty() || text.contains('\n') {
                return fail(format!("{c:?} described as {text:?}"));
            }
        }
    }

    // The timeline has a lane for every instance ever recorded.
    let tl = Timeline::from_history(&w.entries, Window::default()).unwrap();
    if tl.lanes.len() != w.fleet.instances.len() {
        return fail(format!(
            "{} lanes for {} instances",
            tl.lanes.len(),
            w.fleet.instances.len()
        ));
    }
    Ok(())
}

#[test]
fn replaying_the_history_gives_back_the_fleet_committed_at_every_moment() {
    let failures: Vec<String> = (0..120u64).filter_map(|s| check_replay(s).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of 120 seeds failed; first:\n{}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn a_moment_mid_rollout_shows_a_mixed_fleet_and_the_wave() {
    let mut w = World::new(spec(A, 4, "2", "0"));
    w.settle();
    let before_rollout = w.now();
    w.apply(&image_ready(B), "ImageReady");
    w.settle();
    let mid = w
        .entries
        .iter()
        .find(|e| {
            e.changes
                .iter()
                .any(|c| matches!(c, Change::WaveStarted { wave: 2, .. }))
        })
        .unwrap()
        .at;
    let snap = snapshot(&w.entries, mid).unwrap();
    let images: BTreeSet<&str> = snap.instances.iter().map(|i| i.image.as_str()).collect();
    assert_eq!(images, BTreeSet::from([A, B]), "{snap:#?}");
    let rollout = snap.rollout.unwrap();
    assert_eq!(rollout.wave, 2);
    assert!(rollout.active);
    assert!(snap.budget.in_flight <= snap.budget.max_total);
    assert_eq!(snap.budget.max_total, 6);
    assert_eq!(snap.budget.min_healthy, 4);
    let old = snapshot(&w.entries, before_rollout - Duration::milliseconds(1)).unwrap();
    assert!(old.instances.iter().all(|i| i.image == ami(A)));
    assert!(snapshot(&w.entries, t0() - secs(1)).is_none());
}

/// An instance replaced because the fleet file changed what instances are made of: its chain
/// says so, and the rollout that replaced it is named by what changed, not by an image that did
/// not.
#[test]
fn explain_names_the_fields_a_drift_rollout_replaced_an_instance_for() {
    let mut w = World::new(spec(A, 4, "2", "0"));
    w.settle();
    let old = w.fleet.live_instances().next().unwrap().id.clone();
    let mut small = w.fleet.spec.clone();
    small.instance_type = Some("t3.small".into());
    w.update(small);
    w.settle();
    assert!(
        w.fleet.live_instances().all(|i| i.id != old),
        "the rollout replaced it"
    );
    let started = w
        .entries
        .iter()
        .flat_map(|e| &e.changes)
        .find(|c| matches!(c, Change::RolloutStarted { .. }))
        .unwrap();
    assert_eq!(
        phoenix_core::history::describe(started),
        "rollout 1 started: instance_type changed"
    );

    let chain = explain(&w.entries, &old).unwrap();
    let decided = chain
        .links
        .iter()
        .find(|l| l.kind == LinkKind::TerminationDecided)
        .unwrap();
    assert_eq!(
        decided.summary,
        format!("terminate {old} (replaced by the new definition (instance_type changed))")
    );
    let rollout = decided.decision.rollout.as_ref().unwrap();
    assert_eq!(
        rollout.target(),
        "the new definition (instance_type changed)"
    );

    let new = w.fleet.live_instances().next().unwrap().id.clone();
    let origin = explain(&w.entries, &new).unwrap().rollout.unwrap();
    assert_eq!(origin.changed, ["instance_type"]);
    assert_eq!(
        origin.target(),
        "the new definition (instance_type changed)"
    );
}

// ---------------------------------------------------------------------------------------------
// The timeline picture
// ---------------------------------------------------------------------------------------------

fn rgb(hex: &str) -> [u8; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

struct Raster {
    pixmap: resvg::tiny_skia::Pixmap,
}

impl Raster {
    fn of(svg: &str) -> Raster {
        let tree = resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default()).unwrap();
        let size = tree.size().to_int_size();
        let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
        resvg::render(
            &tree,
            resvg::tiny_skia::Transform::default(),
            &mut pixmap.as_mut(),
        );
        Raster { pixmap }
    }
    fn at(&self, x: f64, y: f64) -> [u8; 3] {
        let p = self.pixmap.pixel(x as u32, y as u32).unwrap();
        [p.red(), p.green(), p.blue()]
    }
}

#[test]
fn the_timeline_draws_a_lane_per_instance_coloured_by_image_with_its_markers() {
    // The demo's story: 4 on A, a rollout to B with surge 2, then one B instance fails.
    let mut w = World::new(spec(A, 4, "2", "0"));
    w.settle();
    w.apply(&image_ready(B), "ImageReady");
    w.settle();
    let victim = w.fleet.live_instances().next().unwrap().id.clone();
    w.apply(
        &Intent::HealthCheckFailed {
            instance: victim.clone(),
            reason: "GET /health returned 503".into(),
        },
        "HealthCheckFailed",
    );
    w.settle();

    let mut tl = Timeline::from_history(&w.entries, Window::default()).unwrap();
    assert_eq!(tl.lanes.len(), 9, "4 on A, 4 on B, 1 replacement");
    assert_eq!(tl.images, vec![ami(A), ami(B)]);
    assert_eq!(tl.rollouts.len(), 1);
    let failed: Vec<_> = tl
        .markers
        .iter()
        .filter(|m| m.kind == MarkerKind::HealthFailed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].instance.as_ref(), Some(&victim));
    // Rollbacks and breaker trips are drawn from the rollout engine's records; placed by hand
    // here so the picture holds every kind of marker.
    let span = tl.end - tl.start;
    for (kind, frac) in [(MarkerKind::Rollback, 3), (MarkerKind::BreakerTrip, 7)] {
        tl.markers.push(timeline::Marker {
            kind,
            at: tl.start + span * frac / 10,
            instance: None,
            detail: "placed by the test".into(),
        });
    }

    let svg = timeline::render_svg(&tl);
    let layout = tl.layout();
    let raster = Raster::of(&svg);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(out.join("timeline.svg"), &svg).unwrap();
    raster.pixmap.save_png(out.join("timeline.png")).unwrap();

    // Lanes: scanning the plot row by row, the rows holding an image colour form one band per
    // lane, and each band holds the colour of its lane's image.
    let palette: Vec<[u8; 3]> = tl.images.iter().map(|i| rgb(tl.colour_of(i))).collect();
    assert_ne!(palette[0], palette[1]);
    let plot = layout.plot;
    let mut bands: Vec<(u32, u32, BTreeSet<[u8; 3]>)> = Vec::new();
    for y in plot.y as u32 + 1..plot.bottom() as u32 {
        let colours: BTreeSet<[u8; 3]> = (plot.x as u32 + 1..plot.right() as u32)
            .map(|x| raster.at(f64::from(x), f64::from(y)))
            .filter(|c| palette.contains(c))
            .collect();
        if colours.is_empty() {
            continue;
        }
        match bands.last_mut() {
            Some((_, end, set)) if *end + 1 == y => {
                *end = y;
                set.extend(colours);
            }
            _ => bands.push((y, y, colours)),
        }
    }
    assert_eq!(bands.len(), tl.lanes.len(), "one band of colour per lane");
    for (band, lane) in bands.iter().zip(&layout.lanes) {
        assert_eq!(
            band.2,
            BTreeSet::from([rgb(lane.colour)]),
            "lane {} holds only its image's colour",
            lane.instance
        );
        let (_, cy) = lane.bar.centre();
        assert!((f64::from(band.0)..=f64::from(band.1)).contains(&cy));
    }
    for lane in &layout.lanes {
        // Sampled away from any marker on the lane.
        let x = lane.bar.x + 3.0;
        assert_eq!(
            raster.at(x, lane.bar.centre().1),
            rgb(lane.colour),
            "{}",
            lane.instance
        );
        assert_eq!(lane.colour, tl.colour_of(&lane.image));
    }
    let a_lanes = layout.lanes.iter().filter(|l| l.image == ami(A)).count();
    assert_eq!(a_lanes, 4);

    // Markers: the failure on the victim's lane, the two lines across the plot.
    for m in &layout.markers {
        let colour = rgb(m.kind.colour());
        if m.kind.on_lane() {
            let lane = layout
                .lanes
                .iter()
                .find(|l| (l.bar.centre().1 - m.y).abs() < 0.1)
                .unwrap();
            assert_eq!(lane.instance, victim);
            // The disc around the white cross.
            assert_eq!(raster.at(m.x + 5.0, m.y), colour, "{:?}", m.kind);
        } else {
            for frac in [0.1, 0.5, 0.9] {
                let y = plot.y + plot.h * frac;
                assert_eq!(raster.at(m.x, y), colour, "{:?} at {y}", m.kind);
            }
        }
    }
    let kinds: BTreeSet<MarkerKind> = layout.markers.iter().map(|m| m.kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            MarkerKind::HealthFailed,
            MarkerKind::Rollback,
            MarkerKind::BreakerTrip
        ])
    );
}
