#![allow(clippy::unwrap_used)]
//! The planner driven against a fake EC2, the way the functions drive it: load the fleet, plan,
//! commit (bumping the version), execute the commands in the executor's order, record what EC2
//! answered, commit again. Everything is deterministic: the clock is a plain timestamp that the
//! tests advance, and the randomized run uses a seeded generator and prints its seed on failure.
//!
//! Every step planned through `Sim` is checked against the invariants a user relies on (see
//! `Sim::check_step`, `Sim::check_committed` and `Sim::record_moment`); each test ends with
//! `sim.assert_sound()`.

use chrono::{Duration, TimeZone, Utc};
use phoenix_core::events::{Cause, Change, Intent, QueuedIntent, ScaleTarget};
use phoenix_core::model::{
    Fleet, FleetSpec, Health, Instance, Lifecycle, Observed, Reason, RolloutStatus, Target,
    Timestamp,
};
use phoenix_core::planner::{self, Command, Launched, Outcome, Step, LEASE, OBSERVE_GRACE};
use phoenix_core::{FleetName, ImageId, InstanceId};
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const A: &str = "ami-0000000a";
const B: &str = "ami-0000000b";
const C: &str = "ami-0000000c";

fn ami(s: &str) -> ImageId {
    ImageId::parse(s).unwrap()
}

fn fleet_name() -> FleetName {
    FleetName::parse("web").unwrap()
}

fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

/// A fleet file, as a user writes it. `surge` and `unavailable` are counts or percentages.
fn spec_with(image: &str, capacity: u32, surge: &str, unavailable: &str) -> FleetSpec {
    FleetSpec::from_yaml(&format!(
        "name: web\nimage: {image}\ncapacity: {capacity}\ninstance_type: t3.micro\n\
         policy:\n  max_surge: \"{surge}\"\n  max_unavailable: \"{unavailable}\"\n"
    ))
    .unwrap()
}

/// A fleet file with the default policy (surge 1, unavailable 0).
fn spec(image: &str, capacity: u32) -> FleetSpec {
    FleetSpec::from_yaml(&format!(
        "name: web\nimage: {image}\ncapacity: {capacity}\ninstance_type: t3.micro\n"
    ))
    .unwrap()
}

fn image_ready(image: &str) -> Intent {
    Intent::ImageReady {
        fleet: fleet_name(),
        image: ami(image),
    }
}

fn scale_to(n: u32) -> Intent {
    Intent::Scale {
        fleet: fleet_name(),
        target: ScaleTarget::Desired(n),
    }
}

fn scale_by(d: i64) -> Intent {
    Intent::Scale {
        fleet: fleet_name(),
        target: ScaleTarget::Delta(d),
    }
}

fn health_failed(id: &InstanceId) -> Intent {
    Intent::HealthCheckFailed {
        instance: id.clone(),
        reason: "http 503".into(),
    }
}

fn count(changes: &[Change], pred: impl Fn(&Change) -> bool) -> usize {
    changes.iter().filter(|c| pred(c)).count()
}

fn launches(step: &Step) -> Vec<(String, ImageId, u32)> {
    step.commands
        .iter()
        .filter_map(|c| match c {
            Command::Launch {
                token,
                image,
                count,
                ..
            } => Some((token.clone(), image.clone(), *count)),
            _ => None,
        })
        .collect()
}

/// Every instance a step terminates, with the launch it waits for.
fn terminations(step: &Step) -> Vec<(InstanceId, Option<String>)> {
    step.commands
        .iter()
        .flat_map(|c| match c {
            Command::Terminate {
                instances,
                after_launch,
            } => instances
                .iter()
                .map(|i| (i.clone(), after_launch.clone()))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect()
}

fn ignored(step: &Step) -> bool {
    step.changes.len() == 1 && matches!(step.changes[0], Change::Ignored { .. })
}

/// A small seeded generator (SplitMix64): enough for picking faults, and no dependency.
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
// A fake EC2
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Vm {
    id: InstanceId,
    image: ImageId,
    token: Option<String>,
    state: Lifecycle,
    status_ok: bool,
    launched_at: Timestamp,
    /// DescribeInstances is eventually consistent: a new instance shows up a little later.
    visible_from: Timestamp,
    gone_at: Option<Timestamp>,
    /// Its `phoenix:definition` tag.
    definition: Option<String>,
}

impl Vm {
    fn is_gone(&self) -> bool {
        self.state.is_gone()
    }
    fn is_healthy(&self) -> bool {
        self.state == Lifecycle::Running && self.status_ok
    }
}

/// EC2 as phoenix sees it: instances tagged with the fleet, RunInstances with a ClientToken,
/// TerminateInstances, DescribeInstances. Instances boot in two ticks (pending, then running with
/// status checks initializing, then ok); terminating ones are gone after one tick.
struct Ec2 {
    now: Timestamp,
    vms: BTreeMap<InstanceId, Vm>,
    next_id: u64,
    /// What RunInstances answered for each ClientToken (EC2 answers a repeated token the same).
    client_tokens: BTreeMap<String, Vec<InstanceId>>,
    /// Faults the tests switch on.
    fail_launches: bool,
    /// The RunInstances response is lost and the SDK retries against an endpoint that ignores
    /// the ClientToken: two sets of instances exist, the caller hears of the second.
    duplicate_launches: bool,
    visibility_lag: Duration,
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
            visibility_lag: Duration::zero(),
        }
    }

    fn new_vm(
        &mut self,
        image: &ImageId,
        token: Option<&str>,
        launched_at: Timestamp,
        state: Lifecycle,
    ) -> InstanceId {
        let id = InstanceId::parse(&format!("i-{:08x}", self.next_id)).unwrap();
        self.next_id += 1;
        let vm = Vm {
            id: id.clone(),
            image: image.clone(),
            token: token.map(str::to_string),
            state,
            status_ok: state == Lifecycle::Running,
            launched_at,
            visible_from: self.now + self.visibility_lag,
            gone_at: None,
            definition: None,
        };
        self.vms.insert(id.clone(), vm);
        id
    }

    fn create(
        &mut self,
        image: &ImageId,
        token: &str,
        count: u32,
        definition: &str,
    ) -> Vec<InstanceId> {
        (0..count)
            .map(|_| {
                let id = self.new_vm(image, Some(token), self.now, Lifecycle::Pending);
                self.vms.get_mut(&id).unwrap().definition = Some(definition.to_string());
                id
            })
            .collect()
    }

    /// RunInstances of the fleet's launch definition (its fingerprint, tagged at creation).
    fn run_instances(
        &mut self,
        token: &str,
        image: &ImageId,
        count: u32,
        definition: &str,
    ) -> Result<Vec<Launched>, String> {
        if self.fail_launches {
            return Err("InsufficientInstanceCapacity".into());
        }
        let ids = match self.client_tokens.get(token) {
            Some(ids) if !self.duplicate_launches => ids.clone(),
            _ => {
                if self.duplicate_launches {
                    self.create(image, token, count, definition);
                }
                let ids = self.create(image, token, count, definition);
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
                if !vm.is_gone() {
                    vm.state = Lifecycle::ShuttingDown;
                    vm.status_ok = false;
                }
            }
        }
    }

    /// An instance that goes away without phoenix asking (a host failure, a user in the console).
    fn kill(&mut self, id: &InstanceId) {
        let now = self.now;
        let vm = self.vms.get_mut(id).unwrap();
        vm.state = Lifecycle::Terminated;
        vm.status_ok = false;
        vm.gone_at = Some(now);
    }

    fn stop(&mut self, id: &InstanceId) {
        let vm = self.vms.get_mut(id).unwrap();
        vm.state = Lifecycle::Stopped;
        vm.status_ok = false;
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

    /// DescribeInstances filtered on the fleet tag. Terminated instances stay listed for an hour.
    fn observe(&self) -> Vec<Observed> {
        self.vms
            .values()
            .filter(|vm| vm.visible_from <= self.now)
            .filter(|vm| vm.gone_at.is_none_or(|t| t + Duration::hours(1) > self.now))
            .map(|vm| Observed {
                targets: Default::default(),
                id: vm.id.clone(),
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

    fn existing(&self) -> impl Iterator<Item = &Vm> {
        self.vms.values().filter(|vm| !vm.is_gone())
    }

    /// Instances that cost money and count against the surge: pending or running.
    fn running_or_pending(&self) -> u32 {
        self.vms
            .values()
            .filter(|vm| matches!(vm.state, Lifecycle::Pending | Lifecycle::Running))
            .count() as u32
    }

    fn healthy(&self) -> u32 {
        self.vms.values().filter(|vm| vm.is_healthy()).count() as u32
    }

    fn healthy_on(&self, image: &str) -> u32 {
        self.vms
            .values()
            .filter(|vm| vm.is_healthy() && vm.image == ami(image))
            .count() as u32
    }
}

// ---------------------------------------------------------------------------------------------
// The driver: store + executor around the planner
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    None,
    /// The invocation dies after committing its decisions, before calling EC2.
    BeforeExecute,
    /// It dies after EC2 carried out the commands, before recording what EC2 answered.
    AfterExecute,
}

/// What EC2 looked like right after one command was carried out.
#[derive(Debug, Clone)]
struct Moment {
    command: Command,
    running_or_pending: u32,
    healthy: u32,
}

struct Sim {
    ec2: Ec2,
    /// The committed fleet, complete (as the reconcile function loads it).
    fleet: Fleet,
    history: Vec<Change>,
    /// Every launch decision ever committed: token and count.
    decided: BTreeMap<String, u32>,
    moments: Vec<Moment>,
    /// Applies to the next planned step only.
    crash: Crash,
    violations: Vec<String>,
}

impl Sim {
    fn new(spec: FleetSpec) -> Self {
        let step = planner::create_fleet(spec, None, t0()).unwrap();
        let mut fleet = step.fleet.clone();
        fleet.version = 1;
        Sim {
            ec2: Ec2::new(t0()),
            fleet,
            history: step.changes,
            decided: BTreeMap::new(),
            moments: Vec::new(),
            crash: Crash::None,
            violations: Vec::new(),
        }
    }

    /// A fleet that already runs healthy instances: `(image, launched this long before now)`.
    /// The instances exist in EC2 and in the fleet's records, as a past launch left them.
    fn with_instances(spec: FleetSpec, instances: &[(&str, i64)]) -> Self {
        let mut sim = Sim::new(spec);
        sim.ec2.tick(Duration::hours(1));
        for (n, (image, age)) in instances.iter().enumerate() {
            let token = format!("web-seed-{n}");
            let launched_at = sim.now() - secs(*age);
            let id = sim
                .ec2
                .new_vm(&ami(image), Some(&token), launched_at, Lifecycle::Running);
            sim.decided.insert(token.clone(), 1);
            sim.fleet.instances.insert(
                id.clone(),
                Instance {
                    launch_hook: None,
                    protected: false,
                    spot: false,
                    adopted: None,
                    released: None,
                    id,
                    image: ami(image),
                    launched_at,
                    state: Lifecycle::Running,
                    health: Health::Healthy,
                    signals: Default::default(),
                    token,
                    zone: None,
                    instance_type: None,
                    disposal: None,
                    terminated_at: None,
                    taints: Vec::new(),
                    retirement: None,
                    replacement_for: None,
                    subnet: None,
                    definition: None,
                },
            );
            sim.fleet.live += 1;
        }
        sim
    }

    /// A fleet of `spec.capacity` healthy instances on its image, reached by reconciling.
    fn settled(spec: FleetSpec) -> Self {
        let mut sim = Sim::new(spec);
        sim.settle();
        sim.moments.clear();
        sim
    }

    fn now(&self) -> Timestamp {
        self.ec2.now
    }

    fn tick(&mut self, by: Duration) {
        self.ec2.tick(by);
    }

    /// The fleet as an instance-scoped function loads it: the fleet record and one instance.
    fn load_partial(&self, instance: Option<&InstanceId>) -> Fleet {
        let mut fleet = self.fleet.clone();
        fleet.complete = false;
        fleet.instances.retain(|id, _| Some(id) == instance);
        fleet
    }

    fn load_for(&self, intent: &Intent) -> Fleet {
        match intent {
            Intent::HealthCheckFailed { instance, .. }
            | Intent::HealthCheckPassed { instance }
            | Intent::LifecycleActionCompleted { instance, .. } => {
                self.load_partial(Some(instance))
            }
            Intent::ImageReady { .. }
            | Intent::Scale { .. }
            | Intent::RolloutControl { .. }
            | Intent::ClearQuarantine { .. } => self.load_partial(None),
            // The controller plans notices on the whole fleet (then reconciles it).
            Intent::Reconcile { .. } | Intent::Notice { .. } => self.fleet.clone(),
        }
    }

    /// Commits a step as the store does: nothing for a step without changes; otherwise the fleet
    /// record, the touched instances, and the version bumped by one. Returns the fleet the
    /// invocation continues with (partial if it loaded a part).
    fn commit(&mut self, loaded: &Fleet, step: &Step) -> Fleet {
        self.check_step(loaded, step);
        if step.changes.is_empty() {
            return step.fleet.clone();
        }
        let version = self.fleet.version + 1;
        let mut next = step.fleet.clone();
        next.version = version;
        if !step.fleet.complete {
            next.instances = self.fleet.instances.clone();
            for id in &step.touched {
                if let Some(i) = step.fleet.instances.get(id) {
                    next.instances.insert(id.clone(), i.clone());
                }
            }
            next.complete = true;
        }
        for c in &step.changes {
            if let Change::LaunchDecided { token, count, .. } = c {
                self.decided.insert(token.clone(), *count);
            }
        }
        self.history.extend(step.changes.iter().cloned());
        let previous = std::mem::replace(&mut self.fleet, next);
        self.check_committed(&previous, step);
        let mut continued = step.fleet.clone();
        continued.version = version;
        continued
    }

    /// Runs commands in the executor's order and returns what EC2 answered.
    fn execute(&mut self, commands: &[Command], fresh: &BTreeSet<String>) -> Vec<Outcome> {
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
                self.record_moment(c, false);
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
                let definition = self.fleet.definition().fingerprint();
                match self.ec2.run_instances(token, image, *count, &definition) {
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
                self.record_moment(c, fresh.contains(token));
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
                    self.record_moment(c, false);
                }
            }
        }
        outcomes
    }

    /// load → plan (done by the caller) → commit → execute → record outcomes → commit.
    fn run(&mut self, loaded: &Fleet, step: &Step) {
        let crash = std::mem::replace(&mut self.crash, Crash::None);
        let continued = self.commit(loaded, step);
        // The controller drops a step without changes: nothing to write, nothing to execute.
        if crash == Crash::BeforeExecute || step.is_noop() {
            return;
        }
        let fresh: BTreeSet<String> = step
            .changes
            .iter()
            .filter_map(|c| {
                if let Change::LaunchDecided { token, .. } = c {
                    Some(token.clone())
                } else {
                    None
                }
            })
            .collect();
        let outcomes = self.execute(&step.commands, &fresh);
        if crash == Crash::AfterExecute || outcomes.is_empty() {
            return;
        }
        let recorded = planner::record_outcomes(&continued, &outcomes, self.now());
        self.commit(&continued, &recorded);
    }

    /// One scheduled reconcile.
    fn pass(&mut self) -> Step {
        let loaded = self.fleet.clone();
        let step = planner::reconcile(&loaded, &self.ec2.observe(), self.now());
        self.run(&loaded, &step);
        step
    }

    /// One event, handled by its function.
    fn apply(&mut self, intent: &Intent, event_time: Timestamp) -> phoenix_core::Result<Step> {
        let loaded = self.load_for(intent);
        let step = planner::apply_intent(&loaded, intent, event_time, self.now())?;
        self.run(&loaded, &step);
        Ok(step)
    }

    fn apply_now(&mut self, intent: &Intent) -> Step {
        self.apply(intent, self.now()).unwrap()
    }

    /// `phoenix fleet apply` of a changed fleet file (its template resolved to `version`).
    fn apply_spec(&mut self, spec: FleetSpec, version: Option<&str>) -> Step {
        let loaded = self.fleet.clone();
        let step =
            planner::update_spec(&loaded, spec, version.map(str::to_string), self.now()).unwrap();
        self.run(&loaded, &step);
        step
    }

    /// Reconciles every 30 seconds until the fleet and EC2 agree on `capacity` healthy instances
    /// of the fleet's image. Returns how many passes it took.
    fn settle(&mut self) -> usize {
        for n in 1..=100 {
            self.pass();
            if self.converged() {
                return n;
            }
            self.tick(secs(30));
        }
        panic!("did not converge: {}", self.describe());
    }

    fn converged(&self) -> bool {
        let f = &self.fleet;
        let cap = f.spec.capacity as usize;
        let world: Vec<&Vm> = self.ec2.existing().collect();
        let live: Vec<&Instance> = f.live_instances().collect();
        let target = Target::of(f);
        world.len() == cap
            && world
                .iter()
                .all(|vm| vm.is_healthy() && vm.image == f.spec.image)
            && f.pending.is_empty()
            && live.len() == cap
            && f.live as usize == cap
            && live
                .iter()
                .all(|i| i.is_healthy() && i.disposal.is_none() && target.matches(i))
            && f.rollout
                .as_ref()
                .is_none_or(|r| r.status != RolloutStatus::InProgress)
    }

    fn describe(&self) -> String {
        let world: Vec<String> = self
            .ec2
            .existing()
            .map(|vm| {
                format!(
                    "{} {} {:?} ok={} {:?}",
                    vm.id, vm.image, vm.state, vm.status_ok, vm.token
                )
            })
            .collect();
        let live: Vec<String> = self
            .fleet
            .live_instances()
            .map(|i| {
                format!(
                    "{} {} {:?} {:?} disposal={:?}",
                    i.id, i.image, i.state, i.health, i.disposal
                )
            })
            .collect();
        format!(
            "\n spec: {} x{}\n pending: {:?}\n rollout: {:?}\n fleet live={}: {live:#?}\n ec2: {world:#?}",
            self.fleet.spec.image,
            self.fleet.spec.capacity,
            self.fleet.pending,
            self.fleet.rollout.as_ref().map(|r| (r.id, r.status)),
            self.fleet.live
        )
    }

    // --- invariants ---------------------------------------------------------------------------

    /// Checks on every planned step, against the fleet it was planned from.
    fn check_step(&mut self, loaded: &Fleet, step: &Step) {
        // A step without changes is neither written nor executed: it must not have changed
        // anything, nor asked for anything.
        if step.is_noop() && (step.fleet != *loaded || !step.commands.is_empty()) {
            self.violations.push(format!(
                "a step without changes altered the fleet or has commands: {:?}",
                step.commands
            ));
        }
        // Commands name only what the step decided: each launch is a pending decision.
        for (token, _, n) in launches(step) {
            if !step
                .fleet
                .pending
                .iter()
                .any(|p| p.token == token && p.count == n)
            {
                self.violations
                    .push(format!("launch {token} x{n} is not recorded as pending"));
            }
        }
    }

    /// Checks on the committed fleet (complete) after a step with changes.
    fn check_committed(&mut self, previous: &Fleet, step: &Step) {
        let f = &self.fleet;
        let budget = f.budget();
        let live: Vec<&Instance> = f.live_instances().collect();
        if f.live as usize != live.len() {
            self.violations.push(format!(
                "live counter {} but {} live records",
                f.live,
                live.len()
            ));
        }
        // Surge: a step that decides a launch leaves at most max_total instances in phoenix's
        // books — every live instance not already being terminated outright (those waiting for
        // their replacement count), plus every launch not yet seen.
        let occupied = live
            .iter()
            .filter(|i| i.disposal.as_ref().is_none_or(|d| d.after_launch.is_some()))
            .count() as u32
            + f.pending_count();
        if step
            .changes
            .iter()
            .any(|c| matches!(c, Change::LaunchDecided { .. }))
            && occupied > budget.max_total
        {
            self.violations.push(format!(
                "launch decided with {occupied} instances in the books > {}",
                budget.max_total
            ));
        }
        // Availability: phoenix never itself decides to terminate a healthy instance when that
        // leaves fewer than min_healthy healthy instances that stay. (A termination issued again
        // after its lease was decided earlier, and is not a new decision.)
        let healthy_staying = live
            .iter()
            .filter(|i| i.is_healthy() && i.disposal.is_none())
            .count() as u32;
        let healthy_going = step
            .changes
            .iter()
            .filter_map(|c| {
                if let Change::TerminationDecided { instance, .. } = c {
                    f.instances.get(instance).filter(|_| {
                        previous
                            .instances
                            .get(instance)
                            .is_none_or(|i| i.disposal.is_none())
                    })
                } else {
                    None
                }
            })
            .filter(|i| i.is_healthy())
            .count();
        if healthy_going > 0 && healthy_staying < budget.min_healthy {
            self.violations.push(format!(
                "terminated {healthy_going} healthy instance(s), leaving {healthy_staying} < min_healthy {}: {:?}",
                budget.min_healthy, step.changes
            ));
        }
        // No decision keeps more instances than it asked for.
        let mut per_token: BTreeMap<&str, u32> = BTreeMap::new();
        for i in &live {
            *per_token.entry(i.token.as_str()).or_default() += 1;
        }
        for (token, n) in per_token {
            let asked = self.decided.get(token).copied().unwrap_or(0);
            if n > asked {
                self.violations.push(format!(
                    "{n} instances kept for launch {token}, which asked for {asked}"
                ));
            }
        }
    }

    /// After every command: a fresh launch never brings EC2 above max_total. Counted: instances
    /// that exist (not shutting down), except those phoenix has already decided to terminate
    /// outright (the termination is under way or re-issued after the lease), and except what no
    /// decision asked for (an orphan, or the extras of a launch that ran twice): phoenix cannot
    /// know of those before it sees them, and terminates them on the next pass. A retried launch
    /// re-executes an old decision with its old count and is not held to today's budget.
    fn record_moment(&mut self, command: &Command, fresh: bool) {
        self.moments.push(Moment {
            command: command.clone(),
            running_or_pending: self.ec2.running_or_pending(),
            healthy: self.ec2.healthy(),
        });
        if !fresh {
            return;
        }
        let mut per_token: BTreeMap<&str, u32> = BTreeMap::new();
        for vm in self.ec2.existing() {
            let leaving = self.fleet.instances.get(&vm.id).is_some_and(|i| {
                i.disposal
                    .as_ref()
                    .is_some_and(|d| d.after_launch.is_none())
            });
            if let Some(token) = vm.token.as_deref() {
                if !leaving && self.decided.contains_key(token) {
                    *per_token.entry(token).or_default() += 1;
                }
            }
        }
        let occupied: u32 = per_token
            .iter()
            .map(|(t, n)| (*n).min(self.decided[*t]))
            .sum();
        let max_total = self.fleet.budget().max_total;
        if occupied > max_total {
            self.violations.push(format!(
                "after {command:?}: {occupied} instances in EC2 > max_total {max_total}"
            ));
        }
    }

    fn assert_sound(&self) {
        assert!(
            self.violations.is_empty(),
            "invariants broken: {:#?}{}",
            self.violations,
            self.describe()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn a_new_fleet_comes_up_healthy_and_then_rests() {
    let mut sim = Sim::new(spec(A, 4));
    let first = sim.pass();
    let launched: Vec<(ImageId, u32)> = launches(&first).into_iter().map(|l| (l.1, l.2)).collect();
    assert_eq!(launched, vec![(ami(A), 4)]);
    assert!(sim.settle() <= 4);
    assert_eq!(sim.ec2.healthy_on(A), 4);
    assert_eq!(
        sim.fleet
            .live_instances()
            .filter(|i| i.is_healthy() && i.image == ami(A))
            .count(),
        4
    );

    let again = planner::reconcile(&sim.fleet, &sim.ec2.observe(), sim.now() + secs(60));
    assert!(again.is_noop(), "{:?}", again.changes);
    assert!(again.commands.is_empty());
    assert!(again.touched.is_empty());
    sim.assert_sound();
}

#[test]
fn a_rollout_replaces_in_waves_within_the_surge_and_keeps_everyone_serving() {
    let mut sim = Sim::settled(spec_with(A, 8, "2", "0"));
    sim.history.clear();
    sim.apply_now(&image_ready(B));
    sim.tick(secs(30));
    sim.settle();

    assert!(!sim.moments.is_empty());
    for m in &sim.moments {
        assert!(
            m.running_or_pending <= 10,
            "above surge after {:?}: {}",
            m.command,
            m.running_or_pending
        );
        assert!(
            m.healthy >= 8,
            "below capacity after {:?}: {}",
            m.command,
            m.healthy
        );
    }
    assert_eq!(sim.ec2.healthy_on(B), 8);
    assert_eq!(sim.ec2.existing().count(), 8);
    let rollout = sim.fleet.rollout.clone().unwrap();
    assert_eq!(rollout.status, RolloutStatus::Succeeded);
    assert_eq!((rollout.from, rollout.to), (Some(ami(A)), ami(B)));
    assert_eq!(rollout.waves.len(), 4);
    assert!(
        rollout
            .waves
            .iter()
            .all(|w| w.launched.len() == 2 && w.healthy_at.is_some()),
        "{:?}",
        rollout.waves
    );
    let replaced: usize = rollout.waves.iter().map(|w| w.terminated.len()).sum();
    assert_eq!(replaced, 8);

    let h = &sim.history;
    assert_eq!(count(h, |c| matches!(c, Change::ImageChanged { .. })), 1);
    assert_eq!(
        count(h, |c| matches!(
            c,
            Change::RolloutStarted {
                rollout: 1,
                from: Some(_),
                ..
            }
        )),
        1
    );
    assert_eq!(
        count(h, |c| matches!(
            c,
            Change::WaveStarted {
                rollout: 1,
                launches: 2,
                ..
            }
        )),
        4
    );
    assert_eq!(
        count(h, |c| matches!(c, Change::WaveHealthy { rollout: 1, .. })),
        4
    );
    assert_eq!(
        count(h, |c| matches!(c, Change::RolloutSucceeded { rollout: 1 })),
        1
    );
    let pos = |pred: &dyn Fn(&Change) -> bool| h.iter().position(pred).unwrap();
    assert!(
        pos(&|c| matches!(c, Change::RolloutStarted { .. }))
            < pos(&|c| matches!(c, Change::WaveStarted { .. }))
    );
    assert!(
        pos(&|c| matches!(c, Change::WaveHealthy { .. }))
            < pos(&|c| matches!(c, Change::RolloutSucceeded { .. }))
    );
    sim.assert_sound();
}

#[test]
fn a_rollout_without_surge_takes_down_at_most_the_unavailable_budget() {
    let mut sim = Sim::settled(spec_with(A, 8, "0", "25%"));
    sim.apply_now(&image_ready(B));
    let first = sim.pass();
    // 25 % of 8: two go first, two come in their place.
    assert_eq!(terminations(&first).len(), 2);
    assert_eq!(launches(&first).iter().map(|l| l.2).sum::<u32>(), 2);
    sim.tick(secs(30));
    sim.settle();

    for m in &sim.moments {
        assert!(
            m.running_or_pending <= 8,
            "above capacity after {:?}: {}",
            m.command,
            m.running_or_pending
        );
        assert!(
            m.healthy >= 6,
            "below 6 healthy after {:?}: {}",
            m.command,
            m.healthy
        );
    }
    assert_eq!(sim.ec2.healthy_on(B), 8);
    assert_eq!(
        sim.fleet.rollout.as_ref().unwrap().status,
        RolloutStatus::Succeeded
    );
    sim.assert_sound();
}

#[test]
fn a_failed_instance_is_replaced_launch_first_from_the_current_image() {
    let mut sim = Sim::settled(spec(A, 4));
    // A new image is announced but no reconcile has run yet: the replacement uses it already.
    sim.apply_now(&image_ready(B));
    let victim = sim.fleet.live_instances().next().unwrap().id.clone();

    let loaded = sim.load_partial(Some(&victim));
    assert_eq!(loaded.instances.len(), 1);
    let step =
        planner::apply_intent(&loaded, &health_failed(&victim), sim.now(), sim.now()).unwrap();
    let launched = launches(&step);
    assert_eq!(launched.len(), 1);
    let (token, image, n) = launched[0].clone();
    assert_eq!((image, n), (ami(B), 1));
    assert_eq!(
        terminations(&step),
        vec![(victim.clone(), Some(token.clone()))]
    );
    // The launch is recorded before it is made, and the executor runs it before the termination.
    assert!(step.fleet.pending.iter().any(|p| p.token == token));
    assert!(matches!(
        step.commands.as_slice(),
        [
            Command::Launch { .. },
            Command::Terminate {
                after_launch: Some(_),
                ..
            }
        ]
    ));
    assert!(step.touched.contains(&victim));

    sim.crash = Crash::BeforeExecute;
    sim.run(&loaded, &step);
    // Already being replaced: a second report changes nothing.
    let again = sim.apply_now(&health_failed(&victim));
    assert!(ignored(&again), "{:?}", again.changes);
    assert!(again.commands.is_empty());

    // Finish the replacement (after the lease any reconcile may), then report it once more.
    sim.tick(LEASE);
    sim.settle();
    assert!(!sim.fleet.instances[&victim].is_live());
    let late = sim.apply_now(&health_failed(&victim));
    assert!(ignored(&late), "{:?}", late.changes);
    assert!(late.commands.is_empty());

    let stranger = InstanceId::parse("i-0badc0de").unwrap();
    let err = planner::apply_intent(
        &sim.load_partial(Some(&stranger)),
        &health_failed(&stranger),
        sim.now(),
        sim.now(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not an instance of fleet web"),
        "{err}"
    );
    sim.assert_sound();
}

#[test]
fn a_failed_instance_goes_first_when_there_is_no_room_to_surge() {
    let mut sim = Sim::settled(spec_with(A, 4, "0", "1"));
    let victim = sim.fleet.live_instances().next().unwrap().id.clone();
    let step = sim.apply_now(&health_failed(&victim));
    assert!(launches(&step).is_empty());
    assert_eq!(terminations(&step), vec![(victim.clone(), None)]);
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.healthy_on(A), 4);
    sim.assert_sound();
}

#[test]
fn scaling_out_launches_the_difference_and_scaling_in_removes_old_images_then_the_oldest() {
    let mut sim = Sim::settled(spec(A, 4));
    sim.apply_now(&scale_to(6));
    let out = sim.pass();
    assert_eq!(
        launches(&out)
            .iter()
            .map(|l| (l.1.clone(), l.2))
            .collect::<Vec<_>>(),
        vec![(ami(A), 2)]
    );
    assert!(terminations(&out).is_empty());
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.healthy_on(A), 6);
    sim.assert_sound();

    // Six instances, two of them on an older image (one of those younger than most).
    let ages = [(B, 100), (A, 50), (B, 500), (A, 600), (B, 300), (B, 400)];
    let mut sim = Sim::with_instances(spec(B, 6), &ages);
    let by_age: BTreeMap<i64, InstanceId> = sim
        .fleet
        .instances
        .values()
        .map(|i| ((sim.now() - i.launched_at).num_seconds(), i.id.clone()))
        .collect();
    sim.apply_now(&scale_to(3));
    let inward = sim.pass();
    let gone: BTreeSet<InstanceId> = terminations(&inward)
        .into_iter()
        .map(|(id, after)| {
            assert!(after.is_none());
            id
        })
        .collect();
    let expected: BTreeSet<InstanceId> = [50, 600, 500]
        .iter()
        .map(|age| by_age[age].clone())
        .collect();
    assert_eq!(gone, expected);
    assert!(launches(&inward).is_empty());
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.healthy_on(B), 3);
    sim.assert_sound();
}

#[test]
fn events_that_ask_for_nothing_new_are_ignored_and_image_events_commute() {
    let sim = Sim::settled(spec(A, 2));
    let fleet = &sim.fleet;
    let now = sim.now();

    let same = planner::apply_intent(fleet, &image_ready(A), now, now).unwrap();
    assert!(ignored(&same), "{:?}", same.changes);
    assert!(same.commands.is_empty());

    // B announced at now, then a late C announced before that.
    let to_b = planner::apply_intent(fleet, &image_ready(B), now, now).unwrap();
    let stale = planner::apply_intent(&to_b.fleet, &image_ready(C), now - secs(10), now).unwrap();
    assert!(ignored(&stale), "{:?}", stale.changes);
    assert_eq!(stale.fleet.spec.image, ami(B));

    // Two images announced a second apart, delivered in either order: the later one wins.
    let (early, late) = (now + secs(1), now + secs(2));
    let b_then_c = planner::apply_intent(fleet, &image_ready(B), early, now).unwrap();
    let b_then_c = planner::apply_intent(&b_then_c.fleet, &image_ready(C), late, now).unwrap();
    let c_then_b = planner::apply_intent(fleet, &image_ready(C), late, now).unwrap();
    let c_then_b = planner::apply_intent(&c_then_b.fleet, &image_ready(B), early, now).unwrap();
    assert_eq!(b_then_c.fleet.spec.image, ami(C));
    assert_eq!(c_then_b.fleet.spec.image, ami(C));
    assert_eq!(b_then_c.fleet.image_set_at, c_then_b.fleet.image_set_at);

    // Scaling: a delta below zero is refused, not clamped.
    let err = planner::apply_intent(fleet, &scale_by(-3), now, now).unwrap_err();
    assert!(err.to_string().contains("delta -3 on capacity 2"), "{err}");
    let same_size = planner::apply_intent(fleet, &scale_to(2), now, now).unwrap();
    assert!(ignored(&same_size), "{:?}", same_size.changes);
    let down = planner::apply_intent(fleet, &scale_by(-2), now, now).unwrap();
    assert_eq!(down.fleet.spec.capacity, 0);
}

/// An intent from the fleet's inbox is applied as the event would have been; one that no longer
/// applies when its turn comes was accepted when queued, so it is recorded as ignored, with why.
/// Stored as JSON, it reads back the same, and the inbox's order is its events' order.
#[test]
fn a_queued_intent_applies_as_its_event_would_or_is_recorded_as_ignored() {
    let sim = Sim::settled(spec(A, 2));
    let fleet = &sim.fleet;
    let now = sim.now();
    let queued = |intent: Intent, at: Timestamp, id: &str| QueuedIntent {
        intent,
        event_time: at,
        cause: Cause {
            event_id: Some(id.into()),
            source: "phoenix".into(),
            detail_type: "ScaleRequested".into(),
            event_time: Some(at),
        },
    };

    let down = queued(scale_by(-2), now, "e1");
    let step = planner::apply_queued(fleet, &down, now);
    let direct = planner::apply_intent(fleet, &scale_by(-2), now, now).unwrap();
    assert_eq!(step, direct);

    let too_far = queued(scale_by(-3), now, "e2");
    let step = planner::apply_queued(fleet, &too_far, now);
    assert_eq!(step.fleet.spec.capacity, 2);
    assert!(step.commands.is_empty());
    assert!(
        matches!(step.changes.as_slice(), [Change::Ignored { reason }]
            if reason.contains("queued ScaleRequested") && reason.contains("delta -3")),
        "{:?}",
        step.changes
    );

    let json = serde_json::to_string(&down).unwrap();
    assert_eq!(serde_json::from_str::<QueuedIntent>(&json).unwrap(), down);
    let later = queued(scale_to(5), now + Duration::milliseconds(1), "a0");
    assert!(down.key() < later.key(), "{} {}", down.key(), later.key());
    assert!(down.key() < queued(scale_to(5), now, "e10").key());
}

/// EventBridge does not order deliveries: whatever the order, the newest announcement wins, also
/// when the newest one re-announces what the fleet already runs or already has.
#[test]
fn out_of_order_events_end_on_the_newest_request_in_every_order() {
    let sim = Sim::settled(spec(A, 2));
    let now = sim.now();
    let images = [
        (image_ready(B), now + secs(1)),
        (image_ready(A), now + secs(3)),
        (image_ready(C), now + secs(2)),
    ];
    let scales = [
        (scale_to(5), now + secs(1)),
        (scale_to(2), now + secs(3)),
        (scale_to(4), now + secs(2)),
    ];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let mut fleet = sim.fleet.clone();
        for &k in &order {
            fleet = planner::apply_intent(&fleet, &images[k].0, images[k].1, now)
                .unwrap()
                .fleet;
            fleet = planner::apply_intent(&fleet, &scales[k].0, scales[k].1, now)
                .unwrap()
                .fleet;
        }
        assert_eq!(
            fleet.spec.image,
            ami(A),
            "image after events in order {order:?}"
        );
        assert_eq!(
            fleet.spec.capacity, 2,
            "capacity after events in order {order:?}"
        );
    }
}

#[test]
fn a_launch_whose_lease_ran_out_is_made_again_with_the_same_token() {
    let mut sim = Sim::new(spec(A, 3));
    sim.crash = Crash::BeforeExecute;
    let first = sim.pass();
    let (token, _, n) = launches(&first)[0].clone();
    assert_eq!(n, 3);
    assert!(sim.ec2.vms.is_empty());

    // Within the lease the deciding invocation still owns the launch: nobody else touches it.
    sim.tick(secs(60));
    let early = sim.pass();
    assert!(
        early.commands.is_empty() && early.is_noop(),
        "{:?}",
        early.changes
    );

    sim.tick(LEASE - secs(60));
    let retry = sim.pass();
    assert_eq!(launches(&retry), vec![(token.clone(), ami(A), 3)]);
    assert!(retry.changes.contains(&Change::LaunchRetried {
        token: token.clone()
    }));
    assert!(!retry
        .changes
        .iter()
        .any(|c| matches!(c, Change::LaunchDecided { .. })));
    sim.tick(secs(30));
    sim.settle();
    assert!(sim.fleet.live_instances().all(|i| i.token == token));
    assert_eq!(sim.ec2.vms.len(), 3);
    sim.assert_sound();
}

#[test]
fn instances_launched_before_a_crash_are_adopted_not_launched_again() {
    let mut sim = Sim::new(spec(A, 3));
    sim.crash = Crash::AfterExecute;
    let first = sim.pass();
    let (token, _, _) = launches(&first)[0].clone();
    assert_eq!(sim.ec2.vms.len(), 3);
    assert!(sim.fleet.live_instances().next().is_none());

    sim.tick(LEASE);
    let found = sim.pass();
    assert!(launches(&found).is_empty(), "{:?}", found.commands);
    let adopted: Vec<InstanceId> = sim.ec2.vms.keys().cloned().collect();
    assert!(found.changes.contains(&Change::Launched {
        token: token.clone(),
        instances: adopted,
        request_ids: Vec::new(),
    }));
    assert!(sim.fleet.pending.is_empty());
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.vms.len(), 3);
    sim.assert_sound();
}

#[test]
fn a_double_launch_and_instances_of_no_decision_are_terminated() {
    let mut sim = Sim::new(spec(A, 2));
    sim.crash = Crash::AfterExecute;
    sim.ec2.duplicate_launches = true;
    let first = sim.pass();
    let (token, _, _) = launches(&first)[0].clone();
    sim.ec2.duplicate_launches = false;
    assert_eq!(sim.ec2.vms.len(), 4);
    // Someone launched an instance by hand and tagged it with the fleet.
    let stray = sim.ec2.new_vm(&ami(A), None, sim.now(), Lifecycle::Pending);
    let stale = sim
        .ec2
        .new_vm(&ami(A), Some("web-1-9"), sim.now(), Lifecycle::Pending);

    sim.tick(secs(30));
    let step = sim.pass();
    let kept: BTreeSet<InstanceId> = sim.fleet.live_instances().map(|i| i.id.clone()).collect();
    assert_eq!(kept.len(), 2);
    let gone: BTreeSet<InstanceId> = terminations(&step).into_iter().map(|(id, _)| id).collect();
    assert_eq!(gone.len(), 4, "{:?}", step.commands);
    assert!(gone.contains(&stray) && gone.contains(&stale));
    assert!(gone.is_disjoint(&kept));
    assert_eq!(
        count(
            &step.changes,
            |c| matches!(c, Change::TerminationDecided { reason, .. } if reason.contains(&token))
        ),
        2
    );
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.existing().count(), 2);
    sim.assert_sound();
}

#[test]
fn a_termination_decided_but_never_made_is_made_after_the_lease() {
    let mut sim = Sim::settled(spec(A, 4));
    sim.apply_now(&scale_to(2));
    sim.crash = Crash::BeforeExecute;
    let decided = sim.pass();
    let doomed: Vec<InstanceId> = terminations(&decided)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(doomed.len(), 2);
    assert_eq!(sim.ec2.existing().count(), 4);

    sim.tick(secs(60));
    let early = sim.pass();
    assert!(early.commands.is_empty(), "{:?}", early.commands);
    let expected: Vec<(InstanceId, Option<String>)> =
        doomed.iter().map(|id| (id.clone(), None)).collect();
    sim.tick(LEASE);
    // Issued again, as a change (a step without changes is never executed), with a fresh lease;
    // and that invocation dies too.
    sim.crash = Crash::BeforeExecute;
    let again = sim.pass();
    assert_eq!(terminations(&again), expected);
    assert!(launches(&again).is_empty());
    assert_eq!(
        count(&again.changes, |c| matches!(
            c,
            Change::TerminationDecided { .. }
        )),
        2
    );
    sim.tick(secs(60));
    assert!(sim.pass().commands.is_empty());
    sim.tick(LEASE);
    assert_eq!(terminations(&sim.pass()), expected);
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.healthy_on(A), 2);
    sim.assert_sound();
}

#[test]
fn an_instance_that_vanishes_is_recorded_and_replaced() {
    let mut sim = Sim::settled(spec(A, 3));
    let ids: Vec<InstanceId> = sim.fleet.live_instances().map(|i| i.id.clone()).collect();

    // Terminated outside phoenix: EC2 still lists it as terminated.
    sim.ec2.kill(&ids[0]);
    let step = sim.pass();
    assert!(step.changes.contains(&Change::Vanished {
        instance: ids[0].clone(),
        state: "terminated".into()
    }));
    assert_eq!(launches(&step).iter().map(|l| l.2).sum::<u32>(), 1);
    sim.tick(secs(30));
    sim.settle();

    // Gone from DescribeInstances altogether: missing for longer than the grace period.
    sim.ec2.vms.remove(&ids[1]);
    sim.tick(OBSERVE_GRACE);
    let step = sim.pass();
    assert!(step.changes.contains(&Change::Vanished {
        instance: ids[1].clone(),
        state: "missing".into()
    }));
    assert_eq!(launches(&step).iter().map(|l| l.2).sum::<u32>(), 1);
    sim.tick(secs(30));
    sim.settle();

    // Stopped by hand: it serves nothing, so it is replaced too.
    sim.ec2.stop(&ids[2]);
    let step = sim.pass();
    assert!(step.changes.iter().any(|c| matches!(c, Change::HealthChanged { instance, health: Health::Unhealthy { .. } } if *instance == ids[2])));
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.healthy_on(A), 3);
    assert!(ids.iter().all(|id| !sim.fleet.instances[id].is_live()));
    sim.assert_sound();
}

/// A new instance is recorded before DescribeInstances shows it; not seeing it for a while is
/// normal, and must not count as vanished.
#[test]
fn a_new_instance_not_yet_listed_is_not_taken_for_vanished() {
    let mut sim = Sim::new(spec(A, 2));
    sim.ec2.visibility_lag = secs(90);
    sim.pass();
    sim.tick(secs(30));
    let step = sim.pass();
    assert!(
        !step
            .changes
            .iter()
            .any(|c| matches!(c, Change::Vanished { .. })),
        "{:?}",
        step.changes
    );
    assert!(launches(&step).is_empty());
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.vms.len(), 2);
    sim.assert_sound();
}

// ---------------------------------------------------------------------------------------------
// Randomized runs
// ---------------------------------------------------------------------------------------------

fn random_run(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let surge = *rng.pick(&["0", "1", "2", "25%"]);
    let unavailable = *rng.pick(&["0", "1", "25%", "50%"]);
    let capacity = rng.below(7) as u32;
    let mut sim = Sim::new(spec_with(A, capacity, surge, unavailable));
    let images = [A, B, C];
    // The newest image announcement applied so far, and every event time used (EventBridge times
    // have whole seconds; equal times are a separate question).
    let mut newest: (Timestamp, ImageId) = (t0(), ami(A));
    let mut used_times = BTreeSet::new();
    let context = |sim: &Sim, step: usize, what: &str| {
        format!("seed {seed} step {step} ({what}): {}", sim.describe())
    };

    for step in 0..50 {
        sim.ec2.fail_launches = rng.chance(5);
        sim.ec2.duplicate_launches = rng.chance(5);
        sim.ec2.visibility_lag = secs(rng.below(4) as i64 * 15);
        let now = sim.now();
        let event_time = now - secs(rng.below(240) as i64);
        let fresh_time = event_time > t0() && used_times.insert(event_time);
        let crash = |rng: &mut Rng| match rng.below(10) {
            0 => Crash::BeforeExecute,
            1 => Crash::AfterExecute,
            _ => Crash::None,
        };
        match rng.below(12) {
            0 | 1 if fresh_time => {
                let image = *rng.pick(&images);
                sim.crash = crash(&mut rng);
                sim.apply(&image_ready(image), event_time)
                    .map_err(|e| format!("seed {seed}: {e}"))?;
                if event_time > newest.0 {
                    newest = (event_time, ami(image));
                }
            }
            2 if fresh_time => {
                sim.crash = crash(&mut rng);
                sim.apply(&scale_to(rng.below(7) as u32), event_time)
                    .map_err(|e| format!("seed {seed}: {e}"))?;
            }
            3 => {
                let delta = rng.below(7) as i64 - 3;
                if delta != 0 {
                    let goes_negative = i64::from(sim.fleet.spec.capacity) + delta < 0;
                    sim.crash = crash(&mut rng);
                    let result = sim.apply(&scale_by(delta), event_time);
                    if result.is_err() != goes_negative {
                        return Err(context(&sim, step, &format!("delta {delta}: {result:?}")));
                    }
                    sim.crash = Crash::None;
                }
            }
            4..=6 => {
                let ids: Vec<InstanceId> = sim.fleet.instances.keys().cloned().collect();
                if !ids.is_empty() {
                    let id = rng.pick(&ids).clone();
                    sim.crash = crash(&mut rng);
                    sim.apply(&health_failed(&id), now)
                        .map_err(|e| format!("seed {seed}: {e}"))?;
                }
            }
            7 => {
                let ids: Vec<InstanceId> = sim.ec2.existing().map(|vm| vm.id.clone()).collect();
                if !ids.is_empty() {
                    let id = rng.pick(&ids).clone();
                    if rng.chance(50) {
                        sim.ec2.kill(&id);
                    } else {
                        sim.ec2.stop(&id);
                    }
                }
            }
            _ => {}
        }
        sim.crash = crash(&mut rng);
        sim.pass();
        if let Some(v) = sim.violations.first() {
            return Err(context(&sim, step, v));
        }
        let wait = if rng.chance(10) {
            LEASE + secs(10)
        } else {
            secs(10 + rng.below(60) as i64)
        };
        sim.tick(wait);
    }

    // Events stop and EC2 behaves: the fleet must come to rest as asked. A tripped breaker holds
    // repairs until a person looks (failed instances never heal by themselves here): resume them.
    if sim.fleet.breaker.is_some() {
        sim.apply(
            &Intent::RolloutControl {
                fleet: sim.fleet.spec.name.clone(),
                action: phoenix_core::events::ControlAction::ResumeRepairs,
            },
            sim.now(),
        )
        .map_err(|e| format!("seed {seed}: {e}"))?;
    }
    sim.ec2.fail_launches = false;
    sim.ec2.duplicate_launches = false;
    sim.ec2.visibility_lag = Duration::zero();
    let mut settled = false;
    for _ in 0..40 {
        sim.pass();
        if sim.converged() {
            settled = true;
            break;
        }
        sim.tick(secs(30));
    }
    if let Some(v) = sim.violations.first() {
        return Err(context(&sim, 50, v));
    }
    if !settled {
        return Err(context(&sim, 50, "did not converge"));
    }
    // The newest announcement wins, unless its rollout failed its health gate: then the fleet is
    // back on an image that is not quarantined, and the failed one is.
    let expected_ok = if sim.fleet.quarantined.contains_key(&newest.1) {
        !sim.fleet.quarantined.contains_key(&sim.fleet.spec.image)
    } else {
        sim.fleet.spec.image == newest.1
    };
    if !expected_ok {
        return Err(context(
            &sim,
            50,
            &format!(
                "ended on {} but the newest announcement was {}",
                sim.fleet.spec.image, newest.1
            ),
        ));
    }
    let rest = planner::reconcile(&sim.fleet, &sim.ec2.observe(), sim.now() + secs(30));
    if !rest.is_noop() || !rest.commands.is_empty() {
        return Err(context(
            &sim,
            50,
            &format!("not at rest: {:?} {:?}", rest.changes, rest.commands),
        ));
    }
    Ok(())
}

#[test]
fn random_events_crashes_and_faults_keep_the_invariants_and_converge() {
    let failures: Vec<String> = (0..200u64)
        .filter_map(|seed| random_run(seed).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 200 seeds failed; first:\n{}",
        failures.len(),
        failures[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Drift: a change to what instances are made of rolls the fleet like a new image
// ---------------------------------------------------------------------------------------------

fn yaml_spec(extra: &str) -> FleetSpec {
    FleetSpec::from_yaml(&format!(
        "name: web\nimage: {A}\ncapacity: 4\ninstance_type: t3.micro\n{extra}"
    ))
    .unwrap()
}

fn with_type(mut spec: FleetSpec, instance_type: &str) -> FleetSpec {
    spec.instance_type = Some(instance_type.into());
    spec
}

fn live_ids(sim: &Sim) -> BTreeSet<InstanceId> {
    sim.fleet.live_instances().map(|i| i.id.clone()).collect()
}

/// Passes every 30 seconds until `done` holds of the fleet (at most 60).
fn pass_until(sim: &mut Sim, done: impl Fn(&Fleet) -> bool) {
    for _ in 0..60 {
        sim.pass();
        if done(&sim.fleet) {
            return;
        }
        sim.tick(secs(30));
    }
    panic!("never reached: {}", sim.describe());
}

fn paused(f: &Fleet) -> bool {
    f.rollout
        .as_ref()
        .is_some_and(|r| r.status == RolloutStatus::Paused)
}

#[test]
fn a_new_instance_type_rolls_the_fleet_and_skips_instances_that_already_match() {
    let base = yaml_spec("policy:\n  checkpoints: [{percent: 50}]\n");
    let mut sim = Sim::settled(base.clone());
    let originals = live_ids(&sim);
    let step = sim.apply_spec(with_type(base.clone(), "m5.large"), None);
    let started: Vec<&Change> = step
        .changes
        .iter()
        .filter(|c| matches!(c, Change::RolloutStarted { .. }))
        .collect();
    assert!(
        matches!(started[..], [Change::RolloutStarted { from: Some(f), to, changed, .. }]
            if *f == ami(A) && *to == ami(A) && changed == &["instance_type"]),
        "{:?}",
        step.changes
    );
    // Wave by wave to the checkpoint: half the fleet on the new type.
    pass_until(&mut sim, paused);
    let target = Target::of(&sim.fleet);
    let (new, old): (Vec<&Instance>, Vec<&Instance>) =
        sim.fleet.live_instances().partition(|i| target.matches(i));
    assert_eq!((new.len(), old.len()), (2, 2), "{}", sim.describe());
    assert!(old.iter().all(|i| originals.contains(&i.id)));
    let rollout = sim.fleet.rollout.as_ref().unwrap();
    assert_eq!(rollout.waves.len(), 2, "one instance a wave (surge 1)");
    let on_m5: BTreeSet<InstanceId> = new.iter().map(|i| i.id.clone()).collect();
    let kept: BTreeSet<InstanceId> = old.iter().map(|i| i.id.clone()).collect();
    drop(target);

    // Back to t3.micro (without the checkpoint): the two instances still on it match again and
    // stay; only the two on m5.large roll.
    sim.history.clear();
    sim.apply_spec(yaml_spec(""), None);
    sim.settle();
    let now = live_ids(&sim);
    assert!(kept.is_subset(&now), "{}", sim.describe());
    assert!(on_m5.is_disjoint(&now));
    let r = sim.fleet.rollout.as_ref().unwrap();
    assert_eq!((r.id, r.status), (2, RolloutStatus::Succeeded));
    let terminated: BTreeSet<InstanceId> =
        r.waves.iter().flat_map(|w| w.terminated.clone()).collect();
    assert_eq!(terminated, on_m5);
    assert_eq!(
        r.definition.as_ref().map(|d| d.fields.clone()),
        Some(vec!["instance_type".to_string()])
    );
    sim.assert_sound();
}

#[test]
fn policy_and_capacity_changes_roll_nothing() {
    let mut sim = Sim::settled(yaml_spec(""));
    let before = live_ids(&sim);
    let step = sim.apply_spec(yaml_spec("policy:\n  max_surge: 3\n  canary: 1\n"), None);
    assert_eq!(
        count(&step.changes, |c| matches!(
            c,
            Change::RolloutStarted { .. }
        )),
        0,
        "{:?}",
        step.changes
    );
    assert!(step
        .changes
        .iter()
        .any(|c| matches!(c, Change::FleetUpdated { fields } if fields == &["policy"])));
    sim.settle();
    assert_eq!(live_ids(&sim), before);
    // Adding a subnet rolls nothing either; one an instance runs in taken away does.
    let step = sim.apply_spec(yaml_spec("subnets: [subnet-0000000a]\n"), None);
    assert_eq!(
        count(&step.changes, |c| matches!(
            c,
            Change::RolloutStarted { .. }
        )),
        0
    );
    sim.assert_sound();
}

#[test]
fn a_definition_that_fails_its_gate_rolls_back_without_quarantining_the_image() {
    let mut sim = Sim::settled(yaml_spec(""));
    let originals = live_ids(&sim);
    let before = sim.fleet.definition();
    sim.apply_spec(yaml_spec("user_data: \"#!/bin/sh\\nexit 1\"\n"), None);
    pass_until(&mut sim, |f| {
        f.live_instances()
            .any(|i| i.state == Lifecycle::Running && i.definition.is_some() && i.image == ami(A))
            && f.rollout.as_ref().is_some_and(|r| !r.waves.is_empty())
    });
    let canary = sim
        .fleet
        .live_instances()
        .find(|i| !originals.contains(&i.id))
        .map(|i| i.id.clone())
        .unwrap();
    sim.apply_now(&health_failed(&canary));
    let r = sim.fleet.rollout.as_ref().unwrap();
    assert_eq!(r.status, RolloutStatus::RollingBack, "{}", sim.describe());
    assert!(
        sim.fleet.quarantined.is_empty(),
        "the image is not to blame"
    );
    assert_eq!(sim.fleet.spec.user_data, None, "the definition is restored");
    assert_eq!(sim.fleet.definition(), before);
    sim.settle();
    let r = sim.fleet.rollout.as_ref().unwrap();
    assert_eq!(r.status, RolloutStatus::RolledBack);
    assert!(originals.is_subset(&live_ids(&sim)), "the originals stay");
    sim.assert_sound();
}

#[test]
fn a_floating_templates_new_version_rolls_the_fleet() {
    let spec = yaml_spec("launch_template: {name: web}\n");
    let mut sim = Sim::new(spec.clone());
    let created = planner::create_fleet(spec, Some("3".into()), t0()).unwrap();
    sim.fleet.template_version = created.fleet.template_version.clone();
    sim.fleet.definitions = created.fleet.definitions.clone();
    sim.settle();
    let originals = live_ids(&sim);
    // The same version again changes nothing.
    let same = planner::template_resolved(&sim.fleet, "3", sim.now());
    assert!(same.is_noop());
    let loaded = sim.fleet.clone();
    let step = planner::template_resolved(&loaded, "4", sim.now());
    assert!(
        step.changes.iter().any(|c| matches!(c,
            Change::RolloutStarted { changed, .. } if changed == &["launch_template"])),
        "{:?}",
        step.changes
    );
    sim.run(&loaded, &step);
    sim.tick(secs(30));
    sim.settle();
    assert!(originals.is_disjoint(&live_ids(&sim)));
    assert_eq!(sim.fleet.template_version.as_deref(), Some("4"));
    let r = sim.fleet.rollout.as_ref().unwrap();
    assert_eq!(r.status, RolloutStatus::Succeeded);
    sim.assert_sound();
}

#[test]
fn instances_recorded_before_definitions_were_kept_roll_only_when_the_definition_changes() {
    // Instances without a recorded definition count as the fleet's until it changes.
    let floating = yaml_spec("launch_template: {name: web}\n");
    let mut sim = Sim::with_instances(floating.clone(), &[(A, 600), (A, 600), (A, 600), (A, 600)]);
    let originals = live_ids(&sim);
    sim.settle();
    assert_eq!(live_ids(&sim), originals, "nothing drifted yet");
    // The first version phoenix learns of their floating template is taken as what they run.
    let loaded = sim.fleet.clone();
    let step = planner::template_resolved(&loaded, "7", sim.now());
    assert_eq!(
        count(&step.changes, |c| matches!(
            c,
            Change::RolloutStarted { .. }
        )),
        0,
        "{:?}",
        step.changes
    );
    sim.run(&loaded, &step);
    sim.settle();
    assert_eq!(live_ids(&sim), originals);
    sim.apply_spec(with_type(floating, "m5.large"), Some("7"));
    sim.settle();
    assert!(originals.is_disjoint(&live_ids(&sim)));
    sim.assert_sound();
}

// ---------------------------------------------------------------------------------------------
// Rollout windows and freezes: voluntary disruption only when they allow
// ---------------------------------------------------------------------------------------------

/// Whether the step took away an instance for anything but a repair.
fn voluntary_terminations(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::TerminationDecided { reason, .. } if !reason.contains("failed instance") => {
                Some(reason.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_rollout_outside_its_window_waits_and_then_goes_on_inside_it() {
    // t0 is 12:00 UTC; the window opens at 09:00 for two hours, every day.
    let windowed =
        yaml_spec("policy:\n  windows: [{days: daily, start: \"09:00\", duration: 2h}]\n");
    let mut sim = Sim::settled(windowed);
    let originals = live_ids(&sim);
    sim.history.clear();
    sim.apply_now(&image_ready(B));
    for _ in 0..10 {
        sim.tick(secs(60));
        sim.pass();
    }
    assert_eq!(
        live_ids(&sim),
        originals,
        "nothing moved outside the window"
    );
    let waits: Vec<&Change> = sim
        .history
        .iter()
        .filter(|c| matches!(c, Change::RolloutWaiting { .. }))
        .collect();
    let opens = Utc.with_ymd_and_hms(2025, 3, 2, 9, 0, 0).unwrap();
    assert!(
        matches!(waits[..], [Change::RolloutWaiting { opens: Some(t), .. }] if *t == opens),
        "once, saying when: {waits:?}"
    );
    assert!(voluntary_terminations(&sim.history).is_empty());
    assert!(!sim
        .history
        .iter()
        .any(|c| matches!(c, Change::WaveStarted { .. })));
    // The window opens: the rollout goes on, with a fresh progress deadline.
    let wait = opens - sim.now();
    sim.tick(wait);
    sim.settle();
    assert!(sim.now() < opens + Duration::hours(2), "done inside it");
    assert!(originals.is_disjoint(&live_ids(&sim)));
    assert_eq!(sim.ec2.healthy_on(B), 4);
    assert!(sim
        .history
        .iter()
        .any(|c| matches!(c, Change::RolloutProgressing { .. })));
    let r = sim.fleet.rollout.as_ref().unwrap();
    assert_eq!(r.status, RolloutStatus::Succeeded);
    assert!(r.waiting.is_none());
    sim.assert_sound();
}

#[test]
fn control_without_windows_the_same_rollout_goes_at_once() {
    let mut sim = Sim::settled(yaml_spec(""));
    let originals = live_ids(&sim);
    sim.apply_now(&image_ready(B));
    sim.tick(secs(30));
    sim.settle();
    assert!(sim.now() < t0() + Duration::hours(1));
    assert!(originals.is_disjoint(&live_ids(&sim)));
    sim.assert_sound();
}

#[test]
fn a_freeze_holds_a_rollout_and_a_scale_in_while_a_failed_instance_is_repaired() {
    let frozen = |extra: &str| {
        yaml_spec(&format!(
            "policy:\n  freeze: [{{from: \"2025-03-01T00:00:00Z\", until: \"2025-03-03T00:00:00Z\", reason: release freeze}}]\n{extra}"
        ))
    };
    let mut sim = Sim::settled(frozen(""));
    let originals = live_ids(&sim);
    sim.history.clear();
    sim.apply_now(&image_ready(B));
    sim.tick(secs(60));
    sim.pass();
    assert!(sim.history.iter().any(|c| matches!(c,
        Change::RolloutWaiting { reason, .. } if reason.contains("release freeze"))));
    // A failed instance is still repaired.
    let failed = originals.iter().next().unwrap().clone();
    sim.apply_now(&health_failed(&failed));
    for _ in 0..10 {
        sim.tick(secs(30));
        sim.pass();
    }
    let live = live_ids(&sim);
    assert!(!live.contains(&failed), "{}", sim.describe());
    assert_eq!(live.len(), 4);
    assert_eq!(
        originals.intersection(&live).count(),
        3,
        "the others wait for the freeze to end"
    );
    assert!(
        voluntary_terminations(&sim.history).is_empty(),
        "{:?}",
        voluntary_terminations(&sim.history)
    );
    // A scale-in waits too; a scale-out does not.
    sim.apply_now(&scale_to(3));
    sim.tick(secs(30));
    sim.pass();
    assert_eq!(live_ids(&sim).len(), 4);
    sim.apply_now(&scale_to(5));
    sim.tick(secs(30));
    for _ in 0..6 {
        sim.pass();
        sim.tick(secs(30));
    }
    assert_eq!(live_ids(&sim).len(), 5, "{}", sim.describe());
    // The operator lets this rollout go now.
    sim.apply_now(&Intent::RolloutControl {
        fleet: fleet_name(),
        action: phoenix_core::events::ControlAction::ResumeNow,
    });
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.healthy_on(B), 5);
    assert!(sim.now() < Utc.with_ymd_and_hms(2025, 3, 3, 0, 0, 0).unwrap());
    sim.assert_sound();
}

// ---------------------------------------------------------------------------------------------
// Budgets by reason
// ---------------------------------------------------------------------------------------------

#[test]
fn a_drift_budget_paces_drift_and_leaves_a_new_image_to_the_overall_budget() {
    let with_budget = |t: &str| {
        with_type(
            yaml_spec(
                "policy:\n  max_surge: \"100%\"\n  budgets:\n    drift: {max_replacements_per_hour: 2}\n",
            ),
            t,
        )
    };
    let mut sim = Sim::settled(with_budget("t3.micro"));
    let originals = live_ids(&sim);
    sim.apply_spec(with_budget("m5.large"), None);
    for _ in 0..40 {
        sim.pass();
        sim.tick(secs(30));
    }
    let gone = originals.difference(&live_ids(&sim)).count();
    assert_eq!(gone, 2, "two an hour for drift: {}", sim.describe());
    assert_eq!(
        sim.fleet
            .disruptions_by_reason
            .get(&Reason::Drift)
            .map(Vec::len),
        Some(2)
    );
    // A new image is a rollout: the drift budget does not hold it back.
    sim.apply_now(&image_ready(B));
    sim.tick(secs(30));
    sim.settle();
    assert!(sim.now() < t0() + Duration::hours(1), "{}", sim.now());
    assert_eq!(sim.ec2.healthy_on(B), 4);
    sim.assert_sound();
}

#[test]
fn control_without_a_drift_budget_the_same_drift_goes_at_once() {
    let spec = |t: &str| with_type(yaml_spec("policy:\n  max_surge: \"100%\"\n"), t);
    let mut sim = Sim::settled(spec("t3.micro"));
    let originals = live_ids(&sim);
    sim.apply_spec(spec("m5.large"), None);
    for _ in 0..40 {
        sim.pass();
        sim.tick(secs(30));
    }
    assert!(originals.is_disjoint(&live_ids(&sim)));
    sim.assert_sound();
}

#[test]
fn a_rollout_budget_keeps_more_instances_serving_than_the_overall_one() {
    // Overall: 2 of 4 may be unavailable, no surge. For a rollout: at most 1.
    let mut sim = Sim::settled(yaml_spec(
        "policy:\n  max_surge: 0\n  max_unavailable: 2\n  budgets:\n    rollout: {max_unavailable: 1}\n",
    ));
    sim.moments.clear();
    sim.apply_now(&image_ready(B));
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.healthy_on(B), 4);
    let lowest = sim.moments.iter().map(|m| m.healthy).min().unwrap();
    assert_eq!(lowest, 3, "never more than one down for the rollout");
    sim.assert_sound();
}

#[test]
fn a_rollout_let_go_on_in_a_freeze_ends_at_capacity_after_a_scale_in() {
    let mut sim = Sim::settled(yaml_spec(
        "policy:\n  freeze: [{from: \"2025-03-01T00:00:00Z\", until: \"2025-03-03T00:00:00Z\"}]\n",
    ));
    sim.apply_now(&image_ready(B));
    sim.apply_now(&Intent::RolloutControl {
        fleet: fleet_name(),
        action: phoenix_core::events::ControlAction::ResumeNow,
    });
    // Most of the way: three of four on the new image.
    for _ in 0..40 {
        sim.tick(secs(30));
        sim.pass();
        if sim.ec2.healthy_on(B) >= 3 {
            break;
        }
    }
    assert_eq!(sim.ec2.healthy_on(B), 3, "{}", sim.describe());
    // Scaled in below them while it goes on: the rollout takes the scale-in with it, and ends.
    sim.apply_now(&scale_to(2));
    sim.tick(secs(30));
    sim.settle();
    assert_eq!(sim.ec2.healthy_on(B), 2);
    assert_eq!(
        sim.fleet.rollout.as_ref().map(|r| r.status),
        Some(RolloutStatus::Succeeded)
    );
    sim.assert_sound();
}
