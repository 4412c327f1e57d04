//! The simulation of one seed: the controller phoenix ships (`phoenix_protocol::Controller`)
//! driven over in-memory ports — a table with DynamoDB's semantics, an EC2 with lag, faults and
//! throttling, a bus that loses, duplicates, delays and reorders — by a seeded scheduler that
//! interleaves many handler invocations at their calls and drops one now and then (a crash, or
//! Lambda's timeout). After every step the invariants (`check`, and the checks of the calls in
//! `world`) are checked.
//!
//! The fleet is created before the run as `start` says: applied empty, or adopted from instances
//! launched outside phoenix (by their ids, or by taking over their Auto Scaling group).
//!
//! A run has two phases. *Chaos*: events from the pipeline and the operator (who, in some seeds,
//! also applies the fleet file changed, makes new launch template versions or lets a rollout go
//! on outside its windows), the schedule and the health checker, with faults injected. *Calm*:
//! faults stop, the world heals (new launches are healthy), the operator resumes what is paused,
//! repairs the breaker halted and lets a rollout the windows hold go on now, and the fleet must
//! converge — every rollout ended, every instance healthy on the fleet's image and launch
//! definition, the books and EC2 in agreement, the outbox empty; only a scale-in may wait for the
//! windows — within `Config::settle` of simulated time, every adoption, release and takeover
//! carried out in EC2 and Auto Scaling; and every notification ever committed in the outbox must
//! have reached the bus at least once. A seed whose operator releases the fleet releases it then,
//! and the fleet given back must come to rest again.

mod calm;
mod hooks;
mod outside;

use crate::asg::AutoScaling;
use crate::books::Books;
use crate::check::Checker;
use crate::ec2::Ec2;
use crate::executor::{Handler, Task};
use crate::ports;
use crate::rng::Rng;
use crate::scenario::{Edit, Scenario};
use crate::start::{How, Start, GROUP};
use crate::variant::Variant;
use crate::world::{Invocation, Shared, Stats, Violation, World};
use chrono::Duration;
use hooks::HookHandler;
use phoenix_core::events::{
    Envelope, Intent, ScaleTarget, SCHEDULED_EVENT, SCHEDULE_SOURCE, SOURCE,
};
use phoenix_core::model::{Fleet, FleetSpec, Timestamp};
use phoenix_core::patterns::route;
use phoenix_core::planner::MAX_TOUCHED_PER_STEP;
use phoenix_core::InstanceId;
use phoenix_protocol::controller::Selection;
use phoenix_protocol::error::Error;
use phoenix_protocol::planner::Planner;
use phoenix_protocol::{Controller, Deadline, FleetOutcome, Intake, Report as Handled};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::task::Poll;

/// How many trace lines a failure prints.
pub const TRACE_TAIL: usize = 60;
/// The functions' timeout (infra/template.yaml): Lambda stops the invocation then.
const LAMBDA_TIMEOUT: Duration = Duration::seconds(60);
/// Lambda retries an asynchronous invocation that failed twice.
const LAMBDA_RETRIES: u8 = 2;
/// How much faster than one at a time a backlog of due events is delivered (the default of
/// `Config::fan_out`). At 8 the many more racing invocations timed out ten times as often, which
/// starved instance events instead.
const DELIVERY_FAN_OUT: usize = 2;
/// The EC2 call budget the simulated controller runs under: low enough that bursts of events
/// wait for it.
const EC2_CALLS_PER_SECOND: u32 = 8;

/// The scheduled reconcile's period.
const SCHEDULE: Duration = Duration::seconds(60);

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Steps of the chaos phase.
    pub chaos_steps: u64,
    /// Longest the calm phase may take (simulated time) before not converging is a violation.
    pub settle: Duration,
    pub variant: Variant,
    /// Up to how many due events are delivered at once (`DELIVERY_FAN_OUT`); more means more
    /// invocations racing for the fleet, and more intents queued after lost races.
    pub fan_out: usize,
    /// Print every trace line as it happens.
    pub trace: bool,
    /// The health checker reports every healthy instance of a fleet of up to ten passed every
    /// 30 s.
    pub chatty: bool,
    /// Every seed draws rollout windows or freezes, a floating launch template and an operator
    /// who edits the fleet file (`Scenario::draw`); without it, some seeds do.
    pub drift: bool,
    /// Every seed draws target groups and lifecycle hooks (`Scenario::draw`); without it, some
    /// seeds do.
    pub traffic: bool,
    /// Every seed draws a list of instance types, a `max_instance_lifetime` (fleets of up to
    /// six) and an operator who protects instances (`Scenario::draw`); without it, some seeds do.
    pub placement: bool,
    /// Every seed with a capacity adopts its fleet from instances launched outside phoenix
    /// (`Start::draw`); without it, one in five does.
    pub adoption: bool,
    /// Seeds whose operator releases the fleet (`Start::release`) also release it during the
    /// chaos (refused while anything is under way), and at rest as an invocation the scheduled
    /// passes interleave with; without it, they release it only at rest, alone. (A release cut
    /// short after its commit: `tests::a_release_cut_short_after_its_commit_leaves_its_instances_running`.)
    pub releases: bool,
    /// Every adopting seed takes over the Auto Scaling group its instances are in, rather than
    /// adopting them by id. (A detach batch meeting an instance no longer in the group:
    /// `tests::a_detach_meeting_an_instance_already_out_leaves_none_behind`.)
    pub takeovers: bool,
    /// A zone fails: the fleet runs this many instances and, once it is at rest after the chaos,
    /// its largest zone goes down and every instance there fails its health check at once, one
    /// event each (`Sim::zone_fails`). What is dead-lettered is counted (`Stats::dead_lettered`);
    /// the EC2 call budget is checked as always.
    pub storm: Option<u32>,
}

impl Config {
    pub fn new(seed: u64) -> Self {
        Config {
            seed,
            chaos_steps: 2_000,
            settle: Duration::hours(3),
            variant: Variant::Real,
            fan_out: DELIVERY_FAN_OUT,
            trace: false,
            chatty: false,
            drift: false,
            traffic: false,
            placement: false,
            adoption: false,
            releases: false,
            takeovers: false,
            storm: None,
        }
    }
}

/// What came of one seed.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub steps: u64,
    pub sim_time: Duration,
    pub violation: Option<Violation>,
    /// The last trace lines (all of them up to `TRACE_TAIL`).
    pub trace_tail: Vec<String>,
    /// FNV-1a over every trace line: equal digests, equal runs.
    pub digest: u64,
    pub stats: Stats,
    pub scenario: String,
}

#[derive(Debug, Clone)]
enum What {
    Intent(Intent),
    /// The every-minute schedule (`Scheduled Event`, source `aws.events`).
    Scheduled,
    /// The operator runs `phoenix fleet apply` with the fleet file changed: not an event, a call
    /// of `Controller::apply_fleet` (run as an invocation, interleaved with the others), after
    /// which the command publishes `ReconcileRequested`.
    Apply(Edit),
    /// The operator runs `phoenix fleet release`: a call of `Controller::release`, run as an
    /// invocation.
    Release,
}

#[derive(Debug, Clone)]
pub struct Event {
    id: String,
    time: Timestamp,
    what: What,
}

impl Event {
    /// The envelope EventBridge delivers.
    fn envelope(&self) -> Envelope {
        match &self.what {
            What::Scheduled => Envelope::new(
                &self.id,
                SCHEDULE_SOURCE,
                SCHEDULED_EVENT,
                self.time,
                serde_json::json!({}),
            ),
            What::Intent(i) => {
                let (detail_type, detail) = i.to_detail();
                Envelope::new(&self.id, SOURCE, detail_type, self.time, detail)
            }
            What::Apply(_) | What::Release => unreachable!("a command is a call, not an event"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Delivery {
    event: Event,
    /// 0 for the first delivery; Lambda's retries after a failed invocation count up.
    attempt: u8,
}

/// What one step does.
enum Action {
    Operator,
    Fault,
    Crash(usize),
    Advance(usize),
    Deliver,
    Tick(Duration),
}

pub struct Sim {
    cfg: Config,
    world: Shared,
    controller: Arc<Controller<ports::Sim>>,
    planner: Arc<dyn Planner>,
    scenario: Scenario,
    start: Start,
    /// When the operator released the fleet once it was at rest (`Start::release`).
    released_at_rest: Option<Timestamp>,
    bus: BTreeMap<(Timestamp, u64), Delivery>,
    bus_seq: u64,
    next_event: u64,
    next_schedule: Timestamp,
    next_operator_check: Timestamp,
    tasks: Vec<Task>,
    next_inv: u64,
    hooks: HookHandler,
    trace: VecDeque<String>,
    digest: u64,
    /// The zone failure (`Config::storm`) happened.
    stormed: bool,
}

fn fnv(h: u64, s: &str) -> u64 {
    s.bytes()
        .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Creates the fleet of `spec` as `start` says, alone (nothing else runs, no fault is injected). A
/// takeover refused (`How::TakeOver`) must have changed nothing, the group included: the fleet is
/// then applied, and the group left alone.
fn create_fleet(
    controller: &Controller<ports::Sim>,
    world: &Shared,
    spec: &FleetSpec,
    start: &mut Start,
) -> std::result::Result<(), String> {
    let adopt = |selection: Selection| {
        run_alone(Box::pin(async {
            controller.adopt(spec.clone(), &selection).await.map(|_| ())
        }))
    };
    let created = match start.how {
        How::Apply => None,
        How::Adopt => adopt(Selection::Ids(start.adopt.clone())),
        How::TakeOver => {
            let group = world.lock().autoscaling.groups.get(GROUP).cloned();
            match adopt(Selection::Group(GROUP.into())) {
                Some(Err(Error::Invalid(e))) => {
                    let mut w = world.lock();
                    w.note(format!("takeover of {GROUP} refused: {e}"));
                    w.stats.takeovers_refused += 1;
                    let after = w.autoscaling.groups.get(GROUP);
                    let untouched = after.map(|g| (&g.tags, &g.suspended, g.min))
                        == group.as_ref().map(|g| (&g.tags, &g.suspended, g.min));
                    if w.stats.commits > 0 || !untouched {
                        return Err(format!("the takeover was refused ({e}) and changed things"));
                    }
                    start.refused = true;
                    None
                }
                other => other,
            }
        }
    };
    let created = created.or_else(|| {
        run_alone(Box::pin(async {
            controller.apply_fleet(spec.clone()).await.map(|_| ())
        }))
    });
    match created {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(format!("the fleet could not be created: {e}")),
        None => Err("creating the fleet did not end".into()),
    }
}

/// Polls a future to its end, alone (no other invocation runs, the clock stands still, no fault
/// is injected): `None` if it does not end by itself (it sleeps).
pub(crate) fn run_alone<T>(
    mut fut: std::pin::Pin<Box<dyn std::future::Future<Output = T> + '_>>,
) -> Option<T> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    for _ in 0..1000 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
    }
    None
}

impl Sim {
    pub fn new(cfg: Config) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let mut ec2 = Ec2::new();
        ec2.bug = cfg.variant.world();
        let mut scenario =
            Scenario::draw(&mut rng, &mut ec2, cfg.drift, cfg.traffic, cfg.placement);
        if let Some(n) = cfg.storm {
            scenario.spec.capacity = n;
            scenario.max_capacity = scenario.max_capacity.max(n);
        }
        let t0 = scenario.t0;
        let mut autoscaling = AutoScaling {
            bug: cfg.variant.world(),
            ..AutoScaling::default()
        };
        let mut start = Start::draw(
            cfg.seed,
            &rng,
            (cfg.adoption, cfg.takeovers),
            &scenario.spec,
            t0,
            &mut ec2,
            &mut autoscaling,
        );
        let world = Shared::new(World::new(
            t0,
            rng,
            ec2,
            Books::new(Fleet::new(scenario.spec.clone(), t0)),
            scenario.weather.services,
        ));
        for (arn, delay) in &scenario.groups {
            world.lock().elb.add_group(arn, *delay);
        }
        world.lock().autoscaling = autoscaling;
        world.lock().ec2_budget = Some(EC2_CALLS_PER_SECOND);
        let planner = cfg.variant.planner();
        let controller = ports::controller(
            &world,
            Intake {
                ec2_calls_per_second: Some(EC2_CALLS_PER_SECOND),
                ..Intake::default()
            },
        )
        .with_planner(planner.clone())
        .with_variant(cfg.variant.protocol());
        // The fleet is created as `phoenix fleet apply` or `phoenix fleet adopt` creates it; then
        // the chaos begins.
        let created = create_fleet(&controller, &world, &scenario.spec, &mut start);
        {
            let mut w = world.lock();
            if let Err(why) = created {
                w.violate("setup", why);
            }
            w.checker = Checker::new(&w.books);
            w.timers.clear();
            w.chaos = true;
        }
        let mut sim = Sim {
            cfg,
            world,
            controller: Arc::new(controller),
            planner,
            scenario,
            start,
            released_at_rest: None,
            bus: BTreeMap::new(),
            bus_seq: 0,
            next_event: 0,
            next_schedule: t0 + Duration::seconds(5),
            next_operator_check: t0,
            tasks: Vec::new(),
            next_inv: 0,
            hooks: HookHandler::default(),
            trace: VecDeque::new(),
            digest: 0xcbf2_9ce4_8422_2325,
            stormed: false,
        };
        let line = {
            let w = sim.world.lock();
            format!("seed {}: {}", sim.cfg.seed, sim.describe(&w.ec2))
        };
        sim.world.lock().line = line;
        sim.flush_line();
        sim
    }

    /// Once the fleet is at rest, in a seed whose operator releases it, the release: `true` when
    /// it is made now, or made so recently that no scheduled pass has been over the fleet since
    /// (the run goes on until the fleet, given back, is at rest again after one). Alone (nothing
    /// else runs until it returns), unless `Config::releases`. A fleet at rest has nothing under
    /// way: the release must be accepted.
    fn release_at_rest(&mut self) -> bool {
        if !self.start.release {
            return false;
        }
        if let Some(at) = self.released_at_rest {
            return self.now() < at + SCHEDULE * 2;
        }
        // Release gives back at most what one step records: a larger fleet is not released.
        if self.world.lock().books.live().count() > MAX_TOUCHED_PER_STEP {
            return false;
        }
        self.released_at_rest = Some(self.now());
        self.note("operator: FleetRelease, the fleet at rest");
        if self.cfg.releases {
            self.call(What::Release);
            return true;
        }
        let name = self.scenario.spec.name.clone();
        let released = run_alone(Box::pin(self.controller.release(&name)));
        let mut w = self.world.lock();
        match released {
            Some(Ok((ids, _))) => w.note(format!("the fleet gives back {} instances", ids.len())),
            Some(Err(e)) => w.violate("release", format!("a fleet at rest refused release: {e}")),
            None => w.violate("release", "releasing the fleet did not end".into()),
        }
        w.timers.clear();
        drop(w);
        self.flush_line();
        true
    }

    /// Once the fleet is at rest, in a run with `Config::storm`, the zone failure: the zone with
    /// the most of the fleet's instances goes down for ten minutes, and every one of them fails
    /// its health check, one event each, all at once (neither lost nor late: what is measured is
    /// what the controller does with them). `true` when it happens now.
    fn zone_fails(&mut self) -> bool {
        if self.cfg.storm.is_none() || self.stormed {
            return false;
        }
        self.stormed = true;
        let (zone, live) = {
            let mut w = self.world.lock();
            let mut by_zone: BTreeMap<usize, Vec<InstanceId>> = BTreeMap::new();
            for i in w.books.live() {
                if let Some(vm) = w.ec2.vms.get(&i.id) {
                    by_zone.entry(vm.zone).or_default().push(i.id.clone());
                }
            }
            let Some((zone, live)) = by_zone.into_iter().max_by_key(|(_, ids)| ids.len()) else {
                return false;
            };
            let until = w.now + Duration::minutes(10);
            w.ec2.zones_down.insert(zone, until);
            (zone, live)
        };
        self.note(format!(
            "zone {} fails: {} health checks fail at once",
            crate::ec2::ZONES[zone],
            live.len()
        ));
        self.world.lock().stats.storm_events += live.len() as u64;
        self.flush_line();
        for instance in live {
            self.emit(What::Intent(Intent::HealthCheckFailed {
                instance,
                reason: "its zone failed".into(),
            }));
        }
        true
    }

    /// Runs the seed to its end (or its first violation).
    pub fn run(mut self) -> Report {
        while !self.violated() && self.steps() < self.cfg.chaos_steps {
            self.step();
        }
        if !self.violated() {
            self.calm_down();
            let deadline = self.now() + self.settle_time();
            let mut deadline = deadline;
            loop {
                if self.violated() {
                    break;
                }
                // After a zone failed, its events (and their retries) must all have been
                // delivered too.
                let delivering = self.stormed && !self.bus.is_empty();
                let at_rest = self.tasks.is_empty()
                    && !delivering
                    && self.converged().is_none()
                    && self.unsent().is_none();
                if at_rest && self.zone_fails() {
                    deadline = self.now() + self.settle_time();
                    continue;
                }
                if at_rest && !self.release_at_rest() {
                    self.final_checks();
                    break;
                }
                if self.now() > deadline {
                    // Converged but for notifications the outbox keeps: they were never published.
                    let (kind, why) = match (self.converged(), self.unsent()) {
                        (Some(not), _) => not,
                        (None, Some(why)) => ("notification", why),
                        (None, None) => ("liveness", "invocations still running".into()),
                    };
                    let minutes = self.settle_time().num_minutes();
                    self.world.lock().violate(
                        kind,
                        format!("did not converge within {minutes} min of a healthy world: {why}"),
                    );
                    self.flush_line();
                    break;
                }
                self.step();
            }
        }
        let w = self.world.lock();
        let mut stats = w.stats.clone();
        (stats.adopted, stats.released) = w.custody.counts();
        Report {
            seed: self.cfg.seed,
            steps: w.steps,
            sim_time: w.now - w.t0,
            violation: w.violation.clone(),
            trace_tail: self.trace.iter().cloned().collect(),
            digest: self.digest,
            stats,
            scenario: self.describe(&w.ec2),
        }
    }

    /// The scenario line: what the seed drew, and how its fleet was created.
    fn describe(&self, ec2: &Ec2) -> String {
        self.scenario.describe(ec2) + &self.start.describe()
    }

    fn violated(&self) -> bool {
        self.world.lock().violation.is_some()
    }

    fn steps(&self) -> u64 {
        self.world.lock().steps
    }

    fn now(&self) -> Timestamp {
        self.world.lock().now
    }

    fn note(&self, text: impl AsRef<str>) {
        self.world.lock().note(text);
    }

    fn flush_line(&mut self) {
        let line = std::mem::take(&mut self.world.lock().line);
        if line.is_empty() {
            return;
        }
        self.digest = fnv(self.digest, &line);
        self.digest = fnv(self.digest, "\n");
        if self.cfg.trace {
            println!("{line}");
        }
        if self.trace.len() == TRACE_TAIL {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    // --- one step ------------------------------------------------------------------------------

    fn step(&mut self) {
        let action = {
            let mut w = self.world.lock();
            w.steps += 1;
            w.line = format!("[{}] {}", w.steps, w.clock());
            let weather = self.scenario.weather.clone();
            // Events due for delivery (up to `Config::fan_out`): Lambda runs more invocations at
            // once when events queue up.
            let due = self
                .bus
                .keys()
                .take(self.cfg.fan_out.max(1))
                .filter(|(t, _)| *t <= w.now)
                .count() as u32;
            let runnable: Vec<usize> = (0..self.tasks.len())
                .filter(|i| self.tasks[*i].runnable())
                .collect();
            if w.chaos && w.rng.chance(weather.operator) {
                Action::Operator
            } else if w.chaos && w.rng.chance(weather.fault) {
                Action::Fault
            } else if w.chaos && !self.tasks.is_empty() && w.rng.chance(weather.crash) {
                Action::Crash(w.rng.below(self.tasks.len() as u64) as usize)
            } else {
                // Invocations take a second or so: many of their calls happen per tick of the
                // clock, more the more of them are in flight; still, a slow one may outlive its
                // lease.
                let n = runnable.len() as u32;
                let weights = [if n == 0 { 0 } else { 40 + 40 * n }, 25 * due, 30];
                match w.rng.weighted(&weights) {
                    0 => Action::Advance(*w.rng.pick(&runnable)),
                    1 => Action::Deliver,
                    _ => {
                        let dt = Duration::seconds(if w.chaos {
                            w.rng.range(1, 6)
                        } else {
                            w.rng.range(2, 10)
                        } as i64);
                        // A sleeper (a backoff of milliseconds) wakes when its time comes, not
                        // at the next whole tick.
                        let next_timer = w.timers.iter().map(|(t, _)| *t - w.now).min();
                        let dt = match next_timer {
                            Some(d) if d < dt => d.max(Duration::milliseconds(1)),
                            _ => dt,
                        };
                        Action::Tick(dt)
                    }
                }
            }
        };
        match action {
            Action::Operator => self.operator(),
            Action::Fault => self.fault(),
            Action::Crash(i) => {
                let task = self.tasks.remove(i);
                let mut w = self.world.lock();
                w.stats.crashes += 1;
                w.invocations.remove(&task.n);
                w.note(format!("inv#{} crashes", task.n));
                drop(w);
                self.failed(task.delivery, task.n, "crashed");
            }
            Action::Advance(i) => self.advance(i),
            Action::Deliver => self.deliver(),
            Action::Tick(dt) => self.tick(dt),
        }
        self.world.lock().check_world();
        self.flush_line();
    }

    // --- time and the world --------------------------------------------------------------------

    fn tick(&mut self, dt: Duration) {
        let now = {
            let mut w = self.world.lock();
            w.now += dt;
            let now = w.now;
            if dt < Duration::seconds(1) {
                w.note(format!("tick {}ms", dt.num_milliseconds()));
            } else {
                w.note(format!("tick {}s", dt.num_seconds()));
            }
            w.ec2.advance(now);
            let w = &mut *w;
            w.autoscaling.advance(&w.ec2);
            for arn in w.elb.advance(now, &w.ec2, false) {
                let name = phoenix_core::model::group_name(&arn).to_string();
                w.note(format!("target group {name} restored"));
            }
            // Sleepers whose time has come wake up.
            w.timers.retain(|(t, waker)| {
                if now >= *t {
                    waker.wake_by_ref();
                    false
                } else {
                    true
                }
            });
            now
        };
        // Lambda stops an invocation at its deadline.
        for task in std::mem::take(&mut self.tasks) {
            if now > task.deadline {
                let mut w = self.world.lock();
                w.stats.timeouts += 1;
                w.invocations.remove(&task.n);
                w.note(format!("inv#{} times out", task.n));
                drop(w);
                self.failed(task.delivery, task.n, "timed out");
            } else {
                self.tasks.push(task);
            }
        }
        self.health_checker();
        self.hook_handler();
        while now >= self.next_schedule {
            self.emit(What::Scheduled);
            self.next_schedule += SCHEDULE;
        }
        let calm = !self.world.lock().chaos;
        if calm && now >= self.next_operator_check {
            self.next_operator_check = now + Duration::seconds(60);
            self.operator_tidies_up();
        }
    }

    // --- the bus -------------------------------------------------------------------------------

    fn emit(&mut self, what: What) {
        self.next_event += 1;
        let mut w = self.world.lock();
        let event = Event {
            id: format!("ev-{:06}", self.next_event),
            time: w.now,
            what,
        };
        w.stats.events += 1;
        let weather = &self.scenario.weather;
        if w.chaos && w.rng.chance(weather.loss) {
            w.stats.events_lost += 1;
            let what = describe_what(&event.what);
            w.note(format!("{} {what} lost", event.id));
            return;
        }
        let copies = if w.chaos && w.rng.chance(weather.dup) {
            w.stats.events_duplicated += 1;
            2
        } else {
            1
        };
        let mut delays = Vec::new();
        for _ in 0..copies {
            let delay = if w.chaos && w.rng.chance(weather.late) {
                w.rng.range(10, 180)
            } else {
                w.rng.range(0, 3)
            };
            delays.push(Duration::seconds(delay as i64));
        }
        let now = w.now;
        drop(w);
        for delay in delays {
            self.enqueue(event.clone(), 0, now + delay);
        }
    }

    /// A call the operator makes now (not an event: never lost, duplicated or late).
    fn call(&mut self, what: What) {
        self.next_event += 1;
        let now = self.now();
        let event = Event {
            id: format!("cli-{:06}", self.next_event),
            time: now,
            what,
        };
        self.enqueue(event, 0, now);
    }

    fn enqueue(&mut self, event: Event, attempt: u8, at: Timestamp) {
        self.bus_seq += 1;
        self.bus
            .insert((at, self.bus_seq), Delivery { event, attempt });
    }

    /// The first due event starts an invocation of its function: the controller's handler.
    fn deliver(&mut self) {
        let Some((&key, _)) = self.bus.iter().next() else {
            return;
        };
        let Some(d) = self.bus.remove(&key) else {
            return;
        };
        let controller = self.controller.clone();
        let deadline = self.now() + LAMBDA_TIMEOUT;
        let handler = match &d.event.what {
            What::Release => {
                let name = self.scenario.spec.name.clone();
                let id = d.event.id.clone();
                Box::pin(async move {
                    let (_, fleet) = controller.release(&name).await?;
                    Ok(Handled {
                        event_id: id,
                        detail_type: "FleetRelease".into(),
                        fleets: vec![fleet],
                    })
                }) as Handler
            }
            What::Apply(edit) => {
                let file = self.fleet_file(edit);
                let id = d.event.id.clone();
                Box::pin(async move {
                    let fleet = controller.apply_fleet(file).await?;
                    Ok(Handled {
                        event_id: id,
                        detail_type: "FleetApply".into(),
                        fleets: vec![fleet],
                    })
                }) as Handler
            }
            _ => {
                let env = d.event.envelope();
                let Some(function) = route(&env.source, &env.detail_type) else {
                    return;
                };
                Box::pin(async move {
                    controller
                        .handle_within(&env, Some(function), Deadline::at(deadline))
                        .await
                }) as Handler
            }
        };
        self.next_inv += 1;
        let n = self.next_inv;
        let now = {
            let mut w = self.world.lock();
            w.stats.invocations += 1;
            let retry = if d.attempt > 0 {
                format!(" (retry {})", d.attempt)
            } else {
                String::new()
            };
            w.note(format!(
                "inv#{n} starts: {} {}{retry}",
                d.event.id,
                describe_what(&d.event.what)
            ));
            if let What::Intent(Intent::LifecycleActionCompleted {
                instance,
                hook,
                result,
            }) = &d.event.what
            {
                let now = w.now;
                w.traffic.on_delivered(instance, *hook, *result, now);
            }
            w.invocations.insert(n, Invocation::new(n, deadline));
            w.now
        };
        self.tasks.push(Task::new(n, d, now, deadline, handler));
    }

    /// The operator's fleet file: the fleet's spec as it stands (`phoenix fleet show`), with the
    /// launch template as the file first named it (a rollback pins the version it restores; the
    /// file still floats), changed by `edit`.
    fn fleet_file(&self, edit: &Edit) -> phoenix_core::model::FleetSpec {
        let mut file = self.world.lock().books.meta().spec.clone();
        file.launch_template = self.scenario.spec.launch_template.clone();
        edit.apply(&mut file);
        file
    }

    /// The invocation failed: Lambda delivers the event again, up to twice.
    fn failed(&mut self, delivery: Delivery, n: u64, why: &str) {
        let mut w = self.world.lock();
        if delivery.attempt < LAMBDA_RETRIES {
            let delay = Duration::seconds(w.rng.range(30, 120) as i64);
            w.note(format!(
                "inv#{n} failed ({why}); redelivered in {}s",
                delay.num_seconds()
            ));
            let at = w.now + delay;
            drop(w);
            self.enqueue(delivery.event, delivery.attempt + 1, at);
        } else {
            match delivery.event.what {
                What::Scheduled => w.stats.ticks_dead_lettered += 1,
                _ => w.stats.dead_lettered += 1,
            }
            w.note(format!(
                "inv#{n} failed ({why}); retries exhausted, dead-lettered"
            ));
        }
    }

    // --- invocations ---------------------------------------------------------------------------

    /// Runs one invocation to its next call (or its end).
    fn advance(&mut self, i: usize) {
        let n = self.tasks[i].n;
        self.world.lock().current = Some(n);
        let polled = self.tasks[i].poll();
        self.world.lock().current = None;
        let Poll::Ready(result) = polled else {
            return;
        };
        let task = self.tasks.remove(i);
        let mut w = self.world.lock();
        let inv = w.invocations.remove(&n).unwrap_or_default();
        let took = (w.now - task.started).num_seconds();
        let report = match result {
            Ok(report) => report,
            // A release refused (something is under way) must have written nothing.
            Err(e @ Error::Invalid(_)) if matches!(task.delivery.event.what, What::Release) => {
                w.stats.releases_refused += 1;
                w.note(format!("inv#{n} release refused: {e}"));
                if inv.committed {
                    w.violate(
                        "release",
                        format!("inv#{n}'s release was refused ({e}) after it committed"),
                    );
                }
                return;
            }
            Err(e) => {
                let scheduled = matches!(task.delivery.event.what, What::Scheduled);
                if scheduled || !e.is_retryable() {
                    w.note(format!("inv#{n} fails for good after {took}s: {e}"));
                } else {
                    drop(w);
                    self.failed(task.delivery, n, &e.to_string());
                }
                return;
            }
        };
        // The protocol's promise for a delivery of an event applied but unfinished: it passes
        // over the whole fleet before it returns, which finishes the work — unless it has too
        // little time left to start one (then the schedule's next pass does).
        let short = task.deadline - w.now
            < Duration::from_std(phoenix_protocol::DEADLINE_RESERVE).unwrap_or_default();
        if !inv.finished_unfinished() && !short {
            w.violate(
                "unfinished",
                format!(
                    "inv#{n} met its event applied but unfinished and returned without a pass \
                     over the fleet"
                ),
            );
        }
        let mut outcomes = Vec::new();
        let mut clean = !inv.terminate_failed && !inv.pass_refused;
        for f in &report.fleets {
            outcomes.push(format!("{:?}", f.outcome));
            match f.outcome {
                FleetOutcome::Duplicate if inv.met_unfinished => w.stats.unfinished += 1,
                FleetOutcome::Duplicate => w.stats.duplicates += 1,
                FleetOutcome::InFlight => w.stats.in_flight += 1,
                FleetOutcome::Queued => w.stats.listed_failures += 1,
                FleetOutcome::Changed | FleetOutcome::Unchanged | FleetOutcome::Quiet => {}
            }
            if f.failures
                .iter()
                .any(|x| x.starts_with("deferred") || x.contains("outcome unknown"))
            {
                w.stats.unsettled += 1;
            }
            clean &= f.failures.is_empty()
                && matches!(f.outcome, FleetOutcome::Changed | FleetOutcome::Unchanged);
        }
        // After a clean pass over the whole fleet (its commit went through, or it had nothing to
        // commit; no termination failed): what it saw unowned is recorded or on its way out.
        if clean && !inv.seen_unowned.is_empty() {
            if let Some(problem) = Checker::check_leaks(&w.books, &w.ec2, &inv.seen_unowned) {
                w.violate("leak", problem);
            }
        }
        w.note(format!("inv#{n} done in {took}s: {}", outcomes.join(" ")));
        // `phoenix fleet apply` publishes `ReconcileRequested` once the file is applied.
        if matches!(task.delivery.event.what, What::Apply(_)) {
            let fleet = Some(w.books.meta().spec.name.clone());
            drop(w);
            self.emit(What::Intent(Intent::Reconcile { fleet }));
        }
    }
}

fn describe_intent(i: &Intent) -> String {
    match i {
        Intent::ImageReady { image, .. } => format!("ImageReady {image}"),
        Intent::HealthCheckFailed { instance, .. } => format!("HealthCheckFailed {instance}"),
        Intent::HealthCheckPassed { instance } => format!("HealthCheckPassed {instance}"),
        Intent::Scale {
            target: ScaleTarget::Desired(n),
            ..
        } => format!("ScaleRequested desired {n}"),
        Intent::Scale {
            target: ScaleTarget::Delta(d),
            ..
        } => format!("ScaleRequested delta {d}"),
        Intent::Reconcile { .. } => "ReconcileRequested".into(),
        Intent::RolloutControl { action, .. } => format!("RolloutControl {}", action.as_str()),
        Intent::ClearQuarantine { image, .. } => format!("RolloutControl clear {image}"),
        Intent::LifecycleActionCompleted {
            instance,
            hook,
            result,
        } => format!(
            "LifecycleActionCompleted {instance} {} {}",
            hook.as_str(),
            result.as_str()
        ),
        other => format!("{other:?}"),
    }
}

fn describe_what(w: &What) -> String {
    match w {
        What::Scheduled => "Scheduled".into(),
        What::Intent(i) => describe_intent(i),
        What::Apply(edit) => format!("FleetApply {}", edit.describe()),
        What::Release => "FleetRelease".into(),
    }
}
