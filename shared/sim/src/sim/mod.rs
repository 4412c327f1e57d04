//! The simulation of one seed: a fleet, a simulated EC2 and store, an event bus that loses,
//! duplicates, delays and reorders, and handler invocations interleaved step by step — each one
//! the controller's protocol (`phoenix_aws::controller`) as a state machine that may crash between
//! any two of its steps. After every step the invariants (`check`) are checked.
//!
//! As in the controller, a fleet-wide event that keeps losing the race for its fleet puts its
//! intent in the fleet's inbox (which completes the event) and then reconciles the fleet; every
//! fleet-wide pass applies the queued intents first, one per commit, before its own work.
//!
//! A run has two phases. *Chaos*: events from the pipeline and the operator, the schedule and the
//! health checker, with faults injected. *Calm*: faults stop, the world heals (new launches are
//! healthy), the operator resumes what is paused and repairs the breaker halted, and the fleet
//! must converge — every rollout ended, every instance healthy on the fleet's image, the books and
//! EC2 in agreement — within `Config::settle` of simulated time.

use crate::check::{Census, Checker};
use crate::ec2::{Badness, Ec2, SUBNETS, ZONES};
use crate::rng::Rng;
use crate::store::{CommitError, EventOp, Seen, Store};
use crate::variant::Variant;
use chrono::{Duration, TimeZone, Utc};
use phoenix_core::events::{
    self as ev, Cause, Change, ControlAction, Intent, QueuedIntent, ScaleTarget,
};
use phoenix_core::model::{
    BreakerPolicy, Checkpoint, Fleet, FleetSpec, HealthSignal, Observed, RolloutPolicy,
    RolloutStatus, Seconds, Timestamp,
};
use phoenix_core::planner::{self, Command, Outcome, Step};
use phoenix_core::quantity::Quantity;
use phoenix_core::{FleetName, ImageId, InstanceId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

/// How many trace lines a failure prints.
pub const TRACE_TAIL: usize = 60;
/// Within a Lambda deadline the controller retries lost races up to this many times (the
/// deadline bounds it first, in practice); then Lambda retries the event.
const MAX_CONFLICTS: usize = 200;
/// As the controller: a fleet-wide event that lost this many races puts its intent in the fleet's
/// inbox, then reconciles the fleet.
const QUEUE_AFTER_CONFLICTS: usize = 3;
/// The functions' timeout (infra/template.yaml): Lambda stops the invocation then.
const LAMBDA_TIMEOUT: Duration = Duration::seconds(60);
/// The controller starts nothing new with less than this left before its deadline.
const DEADLINE_RESERVE: Duration = Duration::seconds(10);
/// Lambda retries an asynchronous invocation that failed twice.
const LAMBDA_RETRIES: u8 = 2;
/// How much faster than one at a time a backlog of due events is delivered (the default of
/// `Config::fan_out`). At 8 the many more racing invocations timed out ten times as often, which
/// starved instance events instead.
const DELIVERY_FAN_OUT: usize = 2;
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub step: u64,
    pub at: String,
    pub kind: &'static str,
    pub message: String,
    /// The fleet's records and EC2's instances at that moment.
    pub state: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub events_lost: u64,
    pub events_duplicated: u64,
    pub invocations: u64,
    pub crashes: u64,
    pub conflicts: u64,
    pub duplicates: u64,
    pub in_flight: u64,
    pub unfinished: u64,
    /// Commands left for later because the invocation's deadline was near, or whose outcome was
    /// unknown.
    pub unsettled: u64,
    pub timeouts: u64,
    pub commits: u64,
    pub instances_launched: u64,
    pub launch_failures: u64,
    pub terminations: u64,
    pub faults: u64,
    pub rollouts: u64,
    pub succeeded: u64,
    pub rolled_back: u64,
    pub aborted: u64,
    pub superseded: u64,
    pub quarantined_bad: u64,
    pub quarantined_good: u64,
    /// Why good images were quarantined: a wave missed its deadline, an instance was stopped,
    /// a health check failed (an instance fault or a zone outage), a spurious report.
    pub good_by_deadline: u64,
    pub good_by_stop: u64,
    pub good_by_fault: u64,
    pub good_by_spurious: u64,
    pub breaker_trips: u64,
    /// Intents put in the fleet's inbox after lost races, and applied from it.
    pub queued: u64,
    pub dequeued: u64,
    /// Failures of the reconcile that follows a queued or applied intent, reported without failing
    /// the invocation (its event is done).
    pub listed_failures: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        let pairs: [(&mut u64, u64); 31] = [
            (&mut self.queued, o.queued),
            (&mut self.dequeued, o.dequeued),
            (&mut self.listed_failures, o.listed_failures),
            (&mut self.in_flight, o.in_flight),
            (&mut self.unfinished, o.unfinished),
            (&mut self.unsettled, o.unsettled),
            (&mut self.timeouts, o.timeouts),
            (&mut self.good_by_deadline, o.good_by_deadline),
            (&mut self.good_by_stop, o.good_by_stop),
            (&mut self.good_by_fault, o.good_by_fault),
            (&mut self.good_by_spurious, o.good_by_spurious),
            (&mut self.events, o.events),
            (&mut self.events_lost, o.events_lost),
            (&mut self.events_duplicated, o.events_duplicated),
            (&mut self.invocations, o.invocations),
            (&mut self.crashes, o.crashes),
            (&mut self.conflicts, o.conflicts),
            (&mut self.duplicates, o.duplicates),
            (&mut self.commits, o.commits),
            (&mut self.instances_launched, o.instances_launched),
            (&mut self.launch_failures, o.launch_failures),
            (&mut self.terminations, o.terminations),
            (&mut self.faults, o.faults),
            (&mut self.rollouts, o.rollouts),
            (&mut self.succeeded, o.succeeded),
            (&mut self.rolled_back, o.rolled_back),
            (&mut self.aborted, o.aborted),
            (&mut self.superseded, o.superseded),
            (&mut self.quarantined_bad, o.quarantined_bad),
            (&mut self.quarantined_good, o.quarantined_good),
            (&mut self.breaker_trips, o.breaker_trips),
        ];
        for (a, b) in pairs {
            *a += b;
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

// ---------------------------------------------------------------------------------------------
// Scenario
// ---------------------------------------------------------------------------------------------

/// How rough the world is for one seed (all rates per mille).
#[derive(Debug, Clone)]
struct Weather {
    name: &'static str,
    /// Per step: an operator or pipeline event.
    operator: u32,
    /// Per step: a fault.
    fault: u32,
    /// Per step: an in-flight invocation dies.
    crash: u32,
    /// Per event: lost, duplicated, delayed long.
    loss: u32,
    dup: u32,
    late: u32,
}

struct Scenario {
    spec: FleetSpec,
    images: Vec<ImageId>,
    max_capacity: u32,
    weather: Weather,
}

fn image(n: u32) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap_or_else(|_| unreachable!("8 hex digits"))
}

fn quantity(rng: &mut Rng, choices: &[&str]) -> Quantity {
    let text = *rng.pick(choices);
    Quantity::parse(text).unwrap_or(Quantity::Count(1))
}

impl Scenario {
    fn draw(rng: &mut Rng, ec2: &mut Ec2) -> Scenario {
        // Now and then a large fleet, so that steps reach their limits (92 launches, 92
        // terminations, 92 instances touched), outcomes take several transactions and waves
        // several steps.
        let capacity = if rng.chance(40) {
            rng.range(60, 130) as u32
        } else {
            *rng.pick(&[0, 1, 2, 3, 4, 4, 5, 6, 6, 8, 10])
        };
        let images: Vec<ImageId> = (0..4).map(|n| image(0xa + n)).collect();
        for img in &images[1..] {
            if rng.chance(350) {
                let how = *rng.pick(&[Badness::StatusNeverOk, Badness::AppFails, Badness::Both]);
                ec2.bad_images.insert(img.clone(), how);
            }
        }
        let health_check = *rng.pick(&[
            HealthSignal::Ec2,
            HealthSignal::Ec2,
            HealthSignal::Ec2,
            HealthSignal::Event,
            HealthSignal::Both,
        ]);
        let checkpoints = match rng.below(4) {
            0 => vec![Checkpoint {
                percent: 50,
                pause: Some(Seconds(120)),
            }],
            1 => vec![Checkpoint {
                percent: 50,
                pause: None,
            }],
            _ => Vec::new(),
        };
        // Every field is drawn; the update keeps this compiling when the policy grows one.
        #[allow(clippy::needless_update)]
        let policy = RolloutPolicy {
            // Large fleets surge more, so that a step launches and terminates more instances
            // than one transaction can record.
            max_surge: if capacity >= 60 {
                quantity(rng, &["2", "25%", "50%", "50%", "100%"])
            } else {
                quantity(rng, &["0", "1", "1", "2", "25%", "50%"])
            },
            max_unavailable: quantity(rng, &["0", "0", "0", "1", "25%"]),
            health_check,
            warmup: Seconds(*rng.pick(&[0, 0, 30])),
            canary: if rng.chance(300) {
                Some(quantity(rng, &["1", "25%"]))
            } else {
                None
            },
            bake: Seconds(*rng.pick(&[0, 60, 300])),
            checkpoints,
            progress_deadline: Seconds(*rng.pick(&[600, 600, 900])),
            auto_rollback: rng.chance(850),
            max_replacements_per_hour: if rng.chance(200) {
                Some(rng.range(8, 30) as u32)
            } else {
                None
            },
            breaker: BreakerPolicy {
                unhealthy_percent: *rng.pick(&[20, 20, 50]),
                ..BreakerPolicy::default()
            },
            ..RolloutPolicy::default()
        };
        let spec = FleetSpec {
            name: FleetName::parse("web").unwrap_or_else(|_| unreachable!("a valid name")),
            image: images[0].clone(),
            capacity,
            instance_type: Some(crate::ec2::INSTANCE_TYPE.into()),
            subnets: SUBNETS.iter().map(|s| s.to_string()).collect(),
            security_groups: Vec::new(),
            key_name: None,
            instance_profile: None,
            launch_template: None,
            tags: BTreeMap::new(),
            policy,
            image_selector: None,
            admission: None,
            maintenance_window: None,
            taint: Default::default(),
        };
        let weather = match rng.below(10) {
            0 | 1 => Weather {
                name: "calm",
                operator: 8,
                fault: 0,
                crash: 4,
                loss: 0,
                dup: 20,
                late: 20,
            },
            2..=7 => Weather {
                name: "mild",
                operator: 10,
                fault: 8,
                crash: 15,
                loss: 30,
                dup: 50,
                late: 50,
            },
            _ => Weather {
                name: "stormy",
                operator: 12,
                fault: 25,
                crash: 40,
                loss: 80,
                dup: 100,
                late: 100,
            },
        };
        ec2.honour_client_token = rng.chance(850);
        ec2.lost_response = if weather.fault == 0 { 0 } else { weather.loss };
        ec2.max_lag = *rng.pick(&[0, 10, 30, 60]);
        Scenario {
            max_capacity: (capacity * 2).clamp(2, 80),
            spec,
            images,
            weather,
        }
    }

    fn describe(&self, ec2: &Ec2) -> String {
        let p = &self.spec.policy;
        let bad: Vec<String> = ec2
            .bad_images
            .iter()
            .map(|(i, b)| format!("{i}:{b:?}"))
            .collect();
        format!(
            "{} weather; capacity {} surge {:?} unavailable {:?} health {:?} warmup {} canary {:?} bake {} \
             checkpoints {:?} deadline {} auto_rollback {} hourly {:?} breaker {}%; \
             client token {}; lag {}s; bad images [{}]",
            self.weather.name,
            self.spec.capacity,
            p.max_surge,
            p.max_unavailable,
            p.health_check,
            p.warmup,
            p.canary,
            p.bake,
            p.checkpoints.iter().map(|c| (c.percent, c.pause.map(|s| s.0))).collect::<Vec<_>>(),
            p.progress_deadline,
            p.auto_rollback,
            p.max_replacements_per_hour,
            p.breaker.unhealthy_percent,
            if ec2.honour_client_token { "honoured" } else { "ignored" },
            ec2.max_lag,
            bad.join(" ")
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Events and invocations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum What {
    Intent(Intent),
    /// The every-minute schedule (`Scheduled Event`, source `aws.events`).
    Scheduled,
}

#[derive(Debug, Clone)]
struct Event {
    id: String,
    time: Timestamp,
    what: What,
}

#[derive(Debug, Clone)]
struct Delivery {
    event: Event,
    /// 0 for the first delivery; Lambda's retries after a failed invocation count up.
    attempt: u8,
}

#[derive(Debug, Clone)]
enum Kind {
    /// `reconcile_fleet`: the intent (if any), then a reconcile against EC2.
    Fleet {
        intent: Option<Intent>,
        key: Option<String>,
    },
    /// `instance_event`: the intent on the fleet record and one instance.
    Instance {
        intent: Intent,
        instance: InstanceId,
        key: String,
    },
}

#[derive(Debug, Clone)]
struct Exec {
    /// The committed fleet the commands came with (partial for an instance event).
    fleet: Fleet,
    commands: Vec<Command>,
    next: usize,
    launched_ok: BTreeSet<String>,
    outcomes: Vec<Outcome>,
    /// The version that committed the commands.
    version: u64,
    involved: Vec<InstanceId>,
    record_attempts: usize,
    /// Parts of `outcomes` recorded so far (`planner::outcome_parts`: one transaction each).
    parts_recorded: usize,
    /// The event whose record this invocation claimed `INPROGRESS` (commands followed).
    claimed: Option<String>,
    /// Commands not started (the deadline was near) or whose outcome is unknown.
    unsettled: usize,
    /// No terminate call failed and every command was carried out.
    clean: bool,
    /// What the invocation does once the outcomes are recorded.
    then: After,
}

/// What an invocation does after a commit's commands are carried out and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Finish,
    /// The instance event deferred a repair (the breaker needs the whole fleet) or may have made
    /// the rollout's current wave healthy: the fleet is reconciled next (the controller does).
    ReconcileFleet,
    /// The commit applied a queued intent: the pass starts over (a fresh load, its lost races
    /// forgotten) with its own work, which first applies any other queued intent.
    StartOver,
}

#[derive(Debug, Clone)]
enum Phase {
    Load,
    Plan {
        loaded: Box<Fleet>,
        observed: Option<Vec<Observed>>,
    },
    Commit {
        loaded: Box<Fleet>,
        step: Box<Step>,
        /// The key of the queued intent the step applies (instead of the pass's own work).
        queued: Option<String>,
    },
    Exec(Box<Exec>),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Plan { .. } => "plan",
            Phase::Commit { .. } => "commit",
            Phase::Exec(ex) if ex.next < ex.commands.len() => "execute",
            Phase::Exec(_) => "record",
        }
    }
}

#[derive(Debug, Clone)]
struct Inv {
    n: u64,
    delivery: Delivery,
    kind: Kind,
    phase: Phase,
    conflicts: usize,
    started: Timestamp,
    /// The Lambda context's deadline.
    deadline: Timestamp,
    /// For a full reconcile: instances its last load saw that the books did not record as live.
    seen_unowned: Vec<InstanceId>,
    /// A failure from here on is reported, not a failure of the invocation: the event is done
    /// (its intent queued, or applied before the pass that fails).
    failure_listed: bool,
    /// Its own intent is queued: the reconcile that follows makes few attempts.
    queued_own: bool,
}

enum Next {
    Continue(Inv),
    Done(Inv),
    /// Failed with a retryable error (Lambda delivers the event again).
    Failed(Inv, String),
    /// Rejected: permanent error (the event goes to the DLQ).
    Rejected(Inv, String),
}

// ---------------------------------------------------------------------------------------------
// The simulator
// ---------------------------------------------------------------------------------------------

pub struct Sim {
    cfg: Config,
    rng: Rng,
    t0: Timestamp,
    now: Timestamp,
    ec2: Ec2,
    store: Store,
    checker: Checker,
    scenario: Scenario,
    bus: BTreeMap<(Timestamp, u64), Delivery>,
    bus_seq: u64,
    next_event: u64,
    next_schedule: Timestamp,
    next_operator_check: Timestamp,
    invs: Vec<Inv>,
    next_inv: u64,
    chaos: bool,
    steps: u64,
    trace: VecDeque<String>,
    digest: u64,
    line: String,
    violation: Option<Violation>,
    stats: Stats,
    last_census: Census,
}

fn fnv(h: u64, s: &str) -> u64 {
    s.bytes()
        .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl Sim {
    pub fn new(cfg: Config) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let mut ec2 = Ec2::new();
        let scenario = Scenario::draw(&mut rng, &mut ec2);
        let t0 = Utc
            .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_else(|| unreachable!("a valid date"));
        let created = planner::create_fleet(scenario.spec.clone(), t0)
            .unwrap_or_else(|e| unreachable!("the drawn fleet is valid: {e}"));
        let store = Store::create(&created);
        let checker = Checker::new(&store);
        let mut sim = Sim {
            cfg,
            rng,
            t0,
            now: t0,
            ec2,
            store,
            checker,
            scenario,
            bus: BTreeMap::new(),
            bus_seq: 0,
            next_event: 0,
            next_schedule: t0 + Duration::seconds(5),
            next_operator_check: t0,
            invs: Vec::new(),
            next_inv: 0,
            chaos: true,
            steps: 0,
            trace: VecDeque::new(),
            digest: 0xcbf2_9ce4_8422_2325,
            line: String::new(),
            violation: None,
            stats: Stats::default(),
            last_census: Census::default(),
        };
        let scenario = sim.scenario.describe(&sim.ec2);
        sim.line = format!("seed {}: {scenario}", sim.cfg.seed);
        sim.flush_line();
        sim
    }

    /// Runs the seed to its end (or its first violation).
    pub fn run(mut self) -> Report {
        while self.violation.is_none() && self.steps < self.cfg.chaos_steps {
            self.step();
        }
        if self.violation.is_none() {
            self.calm_down();
            let deadline = self.now + self.settle_time();
            loop {
                if self.violation.is_some() {
                    break;
                }
                if self.invs.is_empty() && self.converged().is_none() {
                    self.final_checks();
                    break;
                }
                if self.now > deadline {
                    let why = self
                        .converged()
                        .unwrap_or_else(|| "invocations still running".into());
                    self.violate(
                        "liveness",
                        format!(
                            "did not converge within {} min of a healthy world: {why}",
                            self.settle_time().num_minutes()
                        ),
                    );
                    break;
                }
                self.step();
            }
        }
        let scenario = self.scenario.describe(&self.ec2);
        Report {
            seed: self.cfg.seed,
            steps: self.steps,
            sim_time: self.now - self.t0,
            violation: self.violation,
            trace_tail: self.trace.into_iter().collect(),
            digest: self.digest,
            stats: self.stats,
            scenario,
        }
    }

    fn clock(&self) -> String {
        let s = (self.now - self.t0).num_seconds();
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }

    fn flush_line(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.line);
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

    fn note(&mut self, text: impl AsRef<str>) {
        if !self.line.is_empty() {
            self.line.push_str("; ");
        }
        self.line.push_str(text.as_ref());
    }

    fn violate(&mut self, kind: &'static str, message: String) {
        if self.violation.is_some() {
            return;
        }
        self.note(format!("VIOLATION {kind}: {message}"));
        self.violation = Some(Violation {
            step: self.steps,
            at: self.clock(),
            kind,
            message,
            state: self.dump(),
        });
    }

    /// A commit is one DynamoDB transaction of at most 100 writes: the fleet record, each touched
    /// instance, the history entry and what `event` writes — the event's record (a claim or its
    /// completion), or, applying a queued intent, the inbox item's deletion and its event's record
    /// (updated to point at the commit's version).
    fn check_transaction_size(&mut self, step: &Step, event: Option<&EventOp<'_>>) {
        let instances = step
            .touched
            .iter()
            .filter(|id| step.fleet.instances.get(id).is_some())
            .count();
        let more = 2 + match event {
            None => 0,
            Some(EventOp::Claim { .. } | EventOp::Complete(_)) => 1,
            Some(EventOp::Dequeue(_)) => 2,
        };
        if instances + more > 100 {
            self.violate(
                "transaction too large",
                format!("a commit writes {instances} instance records and {more} more items"),
            );
        }
    }

    /// The fleet's records and EC2's instances, one line each, for a failure report.
    fn dump(&self) -> Vec<String> {
        let meta = self.store.meta();
        let mut out = vec![format!(
            "fleet v{}: image {} capacity {} min_healthy {} max_total {}; rollout {}; pending [{}]; breaker {}; quarantined [{}]; disruptions this hour {}{}; inbox [{}]",
            meta.version,
            meta.spec.image,
            meta.spec.capacity,
            meta.budget().min_healthy,
            meta.budget().max_total,
            meta.rollout
                .as_ref()
                .map(|r| format!("{} {}->{} {:?}", r.id, r.from.as_ref().map(ToString::to_string).unwrap_or_default(), r.to, r.status))
                .unwrap_or_else(|| "none".into()),
            meta.pending
                .iter()
                .map(|p| format!("{} x{} {} lease {}", p.token, p.count, p.image, (p.lease_until - self.t0).num_seconds()))
                .collect::<Vec<_>>()
                .join(", "),
            meta.breaker.is_some(),
            meta.quarantined.keys().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            meta.disruptions
                .iter()
                .filter(|t| **t + Duration::hours(1) > self.now)
                .count(),
            if meta.budget_exhausted {
                " (budget exhausted)"
            } else {
                ""
            },
            self.store
                .inbox()
                .map(|q| format!("{} {}", q.key(), describe_intent(&q.intent)))
                .collect::<Vec<_>>()
                .join(", "),
        )];
        let now = self.now;
        let mut ids: BTreeSet<&InstanceId> = self.ec2.vms.keys().collect();
        ids.extend(self.store.live().map(|i| &i.id));
        for id in ids {
            let world = match self.ec2.vms.get(id) {
                Some(vm) => format!(
                    "ec2 {} {} {:?}{}{}{}{}",
                    vm.image,
                    vm.token,
                    vm.state,
                    if self.ec2.world_healthy(vm, now) {
                        " healthy"
                    } else {
                        ""
                    },
                    if self.ec2.status_ok(vm, now) {
                        " status-ok"
                    } else {
                        ""
                    },
                    if self.ec2.fault(vm) { " FAULT" } else { "" },
                    if vm.reported { " reported" } else { "" },
                ),
                None => "ec2 -".into(),
            };
            let books = match self.store.instance(id) {
                Some(i) => format!(
                    "books {} {:?} {}{}{}",
                    i.image,
                    i.state,
                    match &i.health {
                        phoenix_core::model::Health::Healthy => "healthy",
                        phoenix_core::model::Health::Unknown => "unknown",
                        phoenix_core::model::Health::Unhealthy { .. } => "FAILED",
                    },
                    match &i.disposal {
                        Some(d) => format!(" leaving(after {:?})", d.after_launch),
                        None => String::new(),
                    },
                    if i.is_live() { "" } else { " buried" },
                ),
                None => "books -".into(),
            };
            out.push(format!("{id}: {world} | {books}"));
        }
        out
    }

    // --- one step ------------------------------------------------------------------------------

    fn step(&mut self) {
        self.steps += 1;
        self.line = format!("[{}] {}", self.steps, self.clock());
        let w = self.scenario.weather.clone();
        // Events due for delivery (up to `Config::fan_out`): Lambda runs more invocations at
        // once when events queue up. Delivering one at a time, the world's health reports for a
        // fleet of a hundred (four per instance) outran delivery by over an hour (seed 101 with
        // the intent committed alone: a wave missed its deadline on reports still queued).
        let due = self
            .bus
            .keys()
            .take(self.cfg.fan_out.max(1))
            .filter(|(t, _)| *t <= self.now)
            .count() as u32;
        if self.chaos && self.rng.chance(w.operator) {
            self.operator();
        } else if self.chaos && self.rng.chance(w.fault) {
            self.fault();
        } else if self.chaos && !self.invs.is_empty() && self.rng.chance(w.crash) {
            let i = self.rng.below(self.invs.len() as u64) as usize;
            let inv = self.invs.remove(i);
            self.stats.crashes += 1;
            self.note(format!("inv#{} crashes before {}", inv.n, inv.phase.name()));
            self.failed(inv, "crashed".into());
        } else {
            // Invocations take a second or so: many of their steps happen per tick of the clock,
            // more the more of them are in flight; still, a slow one may outlive its lease.
            let n = self.invs.len() as u32;
            let weights = [if n == 0 { 0 } else { 40 + 40 * n }, 25 * due, 30];
            match self.rng.weighted(&weights) {
                0 => {
                    let i = self.rng.below(self.invs.len() as u64) as usize;
                    self.advance(i);
                }
                1 => self.deliver(),
                _ => {
                    let dt = if self.chaos {
                        self.rng.range(1, 6)
                    } else {
                        self.rng.range(2, 10)
                    };
                    self.tick(Duration::seconds(dt as i64));
                }
            }
        }
        let (census, problems) = self.checker.check_world(&self.store, &self.ec2, self.now);
        self.last_census = census;
        for (kind, message) in problems {
            self.violate(kind, message);
        }
        self.flush_line();
    }

    // --- time and the world --------------------------------------------------------------------

    fn tick(&mut self, dt: Duration) {
        self.now += dt;
        let now = self.now;
        self.note(format!("tick {}s", dt.num_seconds()));
        self.ec2.advance(now);
        for inv in std::mem::take(&mut self.invs) {
            if now > inv.deadline {
                self.stats.timeouts += 1;
                self.note(format!("inv#{} times out", inv.n));
                self.failed(inv, "timed out".into());
            } else {
                self.invs.push(inv);
            }
        }
        self.health_checker();
        while now >= self.next_schedule {
            self.emit(What::Scheduled);
            self.next_schedule += SCHEDULE;
        }
        if !self.chaos && now >= self.next_operator_check {
            self.next_operator_check = now + Duration::seconds(60);
            self.operator_tidies_up();
        }
    }

    /// A load balancer's health check turned into events: a broken instance is reported failed
    /// within a minute of when it would have been ready, then every one to two minutes while it
    /// stays broken; a healthy one is reported passed (for fleets that count those) a few times.
    fn health_checker(&mut self) {
        let now = self.now;
        let wants_passed = self.store.meta().spec.policy.health_check != HealthSignal::Ec2;
        let ids: Vec<InstanceId> = self.ec2.alive().map(|vm| vm.id.clone()).collect();
        let mut emit = Vec::new();
        for id in ids {
            let (fault, healthy) = {
                let vm = &self.ec2.vms[&id];
                (
                    self.ec2.fault(vm) && now >= vm.ready_at,
                    self.ec2.world_healthy(vm, now),
                )
            };
            let detect = self.rng.range(10, 60) as i64;
            let again = self.rng.range(90, 180) as i64;
            let Some(vm) = self.ec2.vms.get_mut(&id) else {
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
                && vm.passes_left > 0
                && vm.next_pass_report.is_some_and(|t| now >= t)
            {
                vm.passes_left -= 1;
                vm.next_pass_report = Some(now + Duration::seconds(again));
                emit.push(Intent::HealthCheckPassed { instance: id });
            }
        }
        for intent in emit {
            self.emit(What::Intent(intent));
        }
    }

    // --- the bus -------------------------------------------------------------------------------

    fn emit(&mut self, what: What) {
        self.next_event += 1;
        let event = Event {
            id: format!("ev-{:06}", self.next_event),
            time: self.now,
            what,
        };
        self.stats.events += 1;
        let w = self.scenario.weather.clone();
        if self.chaos && self.rng.chance(w.loss) {
            self.stats.events_lost += 1;
            self.note(format!("{} {} lost", event.id, describe_what(&event.what)));
            return;
        }
        let copies = if self.chaos && self.rng.chance(w.dup) {
            self.stats.events_duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.chaos && self.rng.chance(w.late) {
                self.rng.range(10, 180)
            } else {
                self.rng.range(0, 3)
            };
            self.enqueue(event.clone(), 0, Duration::seconds(delay as i64));
        }
    }

    fn enqueue(&mut self, event: Event, attempt: u8, delay: Duration) {
        self.bus_seq += 1;
        self.bus.insert(
            (self.now + delay, self.bus_seq),
            Delivery { event, attempt },
        );
    }

    fn deliver(&mut self) {
        let Some((&key, _)) = self.bus.iter().next() else {
            return;
        };
        let Some(d) = self.bus.remove(&key) else {
            return;
        };
        let kind = match &d.event.what {
            What::Scheduled | What::Intent(Intent::Reconcile { .. }) => Kind::Fleet {
                intent: None,
                key: None,
            },
            What::Intent(
                i @ (Intent::HealthCheckFailed { instance, .. }
                | Intent::HealthCheckPassed { instance }),
            ) => Kind::Instance {
                intent: i.clone(),
                instance: instance.clone(),
                key: d.event.id.clone(),
            },
            What::Intent(i) => Kind::Fleet {
                intent: Some(i.clone()),
                key: Some(d.event.id.clone()),
            },
        };
        self.next_inv += 1;
        self.stats.invocations += 1;
        self.note(format!(
            "inv#{} starts: {} {}{}",
            self.next_inv,
            d.event.id,
            describe_what(&d.event.what),
            if d.attempt > 0 {
                format!(" (retry {})", d.attempt)
            } else {
                String::new()
            }
        ));
        self.invs.push(Inv {
            n: self.next_inv,
            delivery: d,
            kind,
            phase: Phase::Load,
            conflicts: 0,
            started: self.now,
            deadline: self.now + LAMBDA_TIMEOUT,
            seen_unowned: Vec::new(),
            failure_listed: false,
            queued_own: false,
        });
    }

    /// The invocation failed: Lambda delivers the event again, up to twice.
    fn failed(&mut self, inv: Inv, why: String) {
        if inv.delivery.attempt < LAMBDA_RETRIES {
            let delay = Duration::seconds(self.rng.range(30, 120) as i64);
            self.note(format!(
                "inv#{} failed ({why}); redelivered in {}s",
                inv.n,
                delay.num_seconds()
            ));
            self.enqueue(inv.delivery.event, inv.delivery.attempt + 1, delay);
        } else {
            self.note(format!("inv#{} failed ({why}); retries exhausted", inv.n));
        }
    }

    // --- invocations ---------------------------------------------------------------------------

    fn advance(&mut self, i: usize) {
        let inv = self.invs.remove(i);
        match self.run_phase(inv) {
            Next::Continue(inv) => self.invs.push(inv),
            Next::Done(inv) => {
                let took = (self.now - inv.started).num_seconds();
                self.note(format!("inv#{} done in {took}s", inv.n));
            }
            // The scheduled reconcile reports a fleet's failure without failing the invocation
            // (the next schedule tries again), and so does the reconcile after an intent was
            // queued, or after a queued intent was applied by a pass with no intent of its own
            // (the event is done; the next reconcile applies what is left in the inbox); other
            // events fail and are delivered again.
            Next::Failed(inv, why) if matches!(inv.delivery.event.what, What::Scheduled) => {
                self.note(format!("inv#{} reports a failure ({why})", inv.n));
            }
            Next::Failed(inv, why) if inv.failure_listed => {
                self.stats.listed_failures += 1;
                self.note(format!(
                    "inv#{} reports a failure ({why}); its event is done",
                    inv.n
                ));
            }
            Next::Failed(inv, why) => self.failed(inv, why),
            Next::Rejected(inv, why) => self.note(format!("inv#{} rejected: {why}", inv.n)),
        }
    }

    fn run_phase(&mut self, mut inv: Inv) -> Next {
        let now = self.now;
        let phase = std::mem::replace(&mut inv.phase, Phase::Load);
        let short = inv.deadline - now < DEADLINE_RESERVE;
        // As the controller: queueing the intent is one write, made even within the reserve.
        let queue_due = matches!(
            inv.kind,
            Kind::Fleet {
                intent: Some(_),
                key: Some(_)
            }
        ) && inv.conflicts >= QUEUE_AFTER_CONFLICTS;
        match phase {
            Phase::Load if short && !queue_due => {
                Next::Failed(inv, "deadline near: not starting to plan a change".into())
            }
            Phase::Load => match &inv.kind {
                // As the controller (`reconcile_pass`): past a few lost races the intent goes to
                // the fleet's inbox, a write no race can fail, which completes the event; then
                // the fleet is reconciled (which applies it), a failure of that only reported.
                Kind::Fleet {
                    intent: Some(intent),
                    key: Some(key),
                } if inv.conflicts >= QUEUE_AFTER_CONFLICTS => {
                    let queued = QueuedIntent {
                        intent: intent.clone(),
                        event_time: inv.delivery.event.time,
                        cause: cause(&inv.delivery.event),
                    };
                    let qkey = queued.key();
                    match self.store.enqueue(queued, key, now) {
                        Ok(()) => {
                            self.stats.queued += 1;
                            self.note(format!(
                                "inv#{} queues its intent ({qkey}) after {} lost races",
                                inv.n, inv.conflicts
                            ));
                            if let Some(problem) = self.checker.on_enqueue(&qkey) {
                                self.violate("inbox", problem);
                            }
                            inv.kind = Kind::Fleet {
                                intent: None,
                                key: None,
                            };
                            inv.conflicts = 0;
                            inv.failure_listed = true;
                            inv.queued_own = true;
                            Next::Continue(inv)
                        }
                        Err(seen) => {
                            self.note(format!(
                                "inv#{} cannot queue its intent after {} lost races",
                                inv.n, inv.conflicts
                            ));
                            self.already_handled(inv, seen)
                        }
                    }
                }
                Kind::Fleet { .. } => {
                    let loaded = self.store.load_fleet();
                    match self.ec2.describe(now, &mut self.rng) {
                        Ok(observed) => {
                            self.note(format!(
                                "inv#{} loads v{} ({} live{}) and sees {} instances",
                                inv.n,
                                loaded.version,
                                loaded.instances.len(),
                                if loaded.inbox.is_empty() {
                                    String::new()
                                } else {
                                    format!(", {} queued", loaded.inbox.len())
                                },
                                observed.len()
                            ));
                            inv.seen_unowned = observed
                                .iter()
                                .filter(|o| {
                                    !o.state.is_gone() && !loaded.instances.contains_key(&o.id)
                                })
                                .map(|o| o.id.clone())
                                .collect();
                            inv.phase = Phase::Plan {
                                loaded: Box::new(loaded),
                                observed: Some(observed),
                            };
                            Next::Continue(inv)
                        }
                        Err(e) => Next::Failed(inv, e.0),
                    }
                }
                Kind::Instance { instance, .. } => match self.store.load_for_instance(instance) {
                    Some(loaded) => {
                        self.note(format!(
                            "inv#{} loads v{} + {instance}",
                            inv.n, loaded.version
                        ));
                        inv.phase = Phase::Plan {
                            loaded: Box::new(loaded),
                            observed: None,
                        };
                        Next::Continue(inv)
                    }
                    None => {
                        let why =
                            format!("instance {instance} is not managed by any phoenix fleet");
                        Next::Rejected(inv, why)
                    }
                },
            },
            Phase::Plan { loaded, observed } => {
                let time = inv.delivery.event.time;
                // A fleet-wide pass applies the first queued intent, if any, instead of its own
                // work (which follows once the inbox is empty).
                let queued = match &inv.kind {
                    Kind::Fleet { .. } => loaded.inbox.first().cloned(),
                    Kind::Instance { .. } => None,
                };
                let observed = observed.as_deref().unwrap_or_default();
                let planned = match (&inv.kind, &queued) {
                    (Kind::Fleet { .. }, Some(q)) => {
                        Ok(self.cfg.variant.plan_queued(&loaded, q, observed, now))
                    }
                    (Kind::Fleet { intent, .. }, None) => {
                        self.cfg
                            .variant
                            .plan_fleet(&loaded, intent.as_ref(), time, observed, now)
                    }
                    (Kind::Instance { intent, .. }, _) => {
                        self.cfg.variant.plan_instance(&loaded, intent, time, now)
                    }
                };
                let step = match planned {
                    Ok(s) => s,
                    Err(e) => {
                        // A redelivery may no longer apply (a delta below zero): a duplicate,
                        // not bad input.
                        let key = match &inv.kind {
                            Kind::Fleet { key, .. } => key.clone(),
                            Kind::Instance { key, .. } => Some(key.clone()),
                        };
                        if let Some(seen) = key.and_then(|k| self.store.check_event(&k, now)) {
                            return self.already_handled(inv, seen);
                        }
                        return Next::Rejected(inv, e.to_string());
                    }
                };
                // As the controller: a queued intent is committed even if it changed nothing, so
                // that its commit deletes it from the inbox.
                if matches!(inv.kind, Kind::Fleet { .. }) && step.is_noop() && queued.is_none() {
                    self.note(format!("inv#{} plans nothing", inv.n));
                    return self.finish(inv, true);
                }
                match &queued {
                    Some(q) => self.note(format!(
                        "inv#{} plans queued {} ({}): {}",
                        inv.n,
                        describe_intent(&q.intent),
                        q.key(),
                        summarize(&step)
                    )),
                    None => self.note(format!("inv#{} plans: {}", inv.n, summarize(&step))),
                }
                inv.phase = Phase::Commit {
                    loaded,
                    step: Box::new(step),
                    queued: queued.map(|q| q.key()),
                };
                Next::Continue(inv)
            }
            Phase::Commit {
                loaded,
                step,
                queued,
            } => {
                // Applying a queued intent claims nothing: the pass's own event waits.
                let key = match &inv.kind {
                    _ if queued.is_some() => None,
                    Kind::Fleet { intent, key } => intent.as_ref().and(key.clone()),
                    Kind::Instance { key, .. } => Some(key.clone()),
                };
                // Commands follow: the event stays in progress until they are recorded.
                let in_progress = !step.commands.is_empty();
                let op = match &queued {
                    Some(q) => Some(EventOp::Dequeue(q)),
                    None => key.as_deref().map(|id| EventOp::Claim {
                        id,
                        until: in_progress.then_some(inv.deadline),
                    }),
                };
                self.check_transaction_size(&step, op.as_ref());
                match self.store.commit(&loaded, &step, op, now) {
                    Ok(committed) => {
                        self.committed(&step.changes);
                        self.note(format!("inv#{} commits v{}", inv.n, committed.version));
                        if let Some(q) = &queued {
                            self.stats.dequeued += 1;
                            if let Some(problem) = self.checker.on_dequeue(q) {
                                self.violate("inbox", problem);
                            }
                        }
                        // As the controller: after a queued intent, the pass starts over with
                        // its own work; after an instance event, the fleet is reconciled if a
                        // repair was deferred (the breaker needs the whole fleet) or the event
                        // may have made the rollout's current wave healthy.
                        let then = if queued.is_some() {
                            After::StartOver
                        } else if matches!(inv.kind, Kind::Instance { .. })
                            && (step
                                .changes
                                .iter()
                                .any(|c| matches!(c, Change::RepairDeferred { .. }))
                                || planner::wave_to_recheck(&committed, &step.changes).is_some_and(
                                    |wave| planner::wave_healthy(&self.store.load_partial(wave)),
                                ))
                        {
                            After::ReconcileFleet
                        } else {
                            After::Finish
                        };
                        inv.phase = Phase::Exec(Box::new(Exec {
                            involved: committed.instances.keys().cloned().collect(),
                            version: committed.version,
                            fleet: committed,
                            commands: executor_order(&step.commands),
                            next: 0,
                            launched_ok: BTreeSet::new(),
                            outcomes: Vec::new(),
                            record_attempts: 0,
                            parts_recorded: 0,
                            claimed: key.filter(|_| in_progress),
                            unsettled: 0,
                            clean: true,
                            then,
                        }));
                        Next::Continue(inv)
                    }
                    Err(CommitError::Seen(seen)) => self.already_handled(inv, seen),
                    Err(CommitError::Conflict) => {
                        self.stats.conflicts += 1;
                        inv.conflicts += 1;
                        self.note(format!("inv#{} conflict ({})", inv.n, inv.conflicts));
                        if inv.conflicts >= MAX_CONFLICTS {
                            return Next::Failed(inv, "too many conflicts".into());
                        }
                        // As the controller: once its intent is queued, only a few attempts.
                        if inv.queued_own && inv.conflicts >= QUEUE_AFTER_CONFLICTS {
                            return Next::Failed(inv, "lost races after queueing".into());
                        }
                        Next::Continue(inv)
                    }
                }
            }
            Phase::Exec(mut ex) => {
                if ex.next < ex.commands.len() {
                    let cmd = ex.commands[ex.next].clone();
                    ex.next += 1;
                    if short {
                        // Time is short: the rest is left to the next reconcile (after leases).
                        self.note(format!("inv#{} deadline near: leaves a command", inv.n));
                        ex.unsettled += 1;
                        self.stats.unsettled += 1;
                        ex.clean = false;
                    } else {
                        self.execute(&inv, &mut ex, cmd);
                    }
                    inv.phase = Phase::Exec(ex);
                    return Next::Continue(inv);
                }
                if ex.outcomes.is_empty() {
                    let (clean, then) = (ex.clean, ex.then);
                    return self.after_execute(inv, clean, then);
                }
                // Recording is what the deadline's reserve is kept for: retried until the deadline.
                if now >= inv.deadline {
                    return Next::Failed(inv, "deadline reached recording outcomes".into());
                }
                // One part per turn, as the controller commits them: a crash may fall between.
                let parts = planner::outcome_parts(&ex.outcomes);
                let last = ex.parts_recorded + 1 == parts.len();
                let part = parts[ex.parts_recorded].clone();
                let record = self.cfg.variant.record(&ex.fleet, &ex.outcomes, part, now);
                let complete = ex
                    .claimed
                    .as_deref()
                    .filter(|_| ex.unsettled == 0 && last)
                    .map(EventOp::Complete);
                self.check_transaction_size(&record, complete.as_ref());
                match self.store.commit(&ex.fleet, &record, complete, now) {
                    Ok(c) => {
                        self.committed(&record.changes);
                        self.note(format!("inv#{} records outcomes at v{}", inv.n, c.version));
                        if !last {
                            ex.parts_recorded += 1;
                            ex.record_attempts = 0;
                            ex.fleet = c;
                            inv.phase = Phase::Exec(ex);
                            return Next::Continue(inv);
                        }
                        let (clean, then) = (ex.clean, ex.then);
                        self.after_execute(inv, clean, then)
                    }
                    Err(_) => {
                        self.stats.conflicts += 1;
                        ex.record_attempts += 1;
                        if ex.record_attempts >= MAX_CONFLICTS {
                            return Next::Failed(
                                inv,
                                "too many conflicts recording outcomes".into(),
                            );
                        }
                        ex.fleet = if ex.fleet.complete {
                            self.store.load_fleet()
                        } else {
                            self.store.load_partial(&ex.involved)
                        };
                        self.note(format!(
                            "inv#{} conflict recording outcomes; reloads v{}",
                            inv.n, ex.fleet.version
                        ));
                        inv.phase = Phase::Exec(ex);
                        Next::Continue(inv)
                    }
                }
            }
        }
    }

    /// A delivery of an event that has a record already: completed, or in the hands of a live
    /// invocation — nothing to do; applied by one whose time ran out — reconcile the fleet to
    /// finish its work, without the intent.
    fn already_handled(&mut self, inv: Inv, seen: Seen) -> Next {
        match seen {
            Seen::Duplicate => self.stats.duplicates += 1,
            Seen::InFlight => self.stats.in_flight += 1,
            Seen::Unfinished => self.stats.unfinished += 1,
        }
        match seen {
            Seen::Duplicate | Seen::InFlight => {
                self.note(format!(
                    "inv#{} event seen before ({seen:?}): nothing to do",
                    inv.n
                ));
                Next::Done(inv)
            }
            Seen::Unfinished => {
                self.note(format!(
                    "inv#{} event applied but unfinished: reconciles without it",
                    inv.n
                ));
                reconcile_next(inv)
            }
        }
    }

    fn after_execute(&mut self, mut inv: Inv, clean: bool, then: After) -> Next {
        match then {
            After::Finish => self.finish(inv, clean),
            After::ReconcileFleet => {
                self.note(format!(
                    "inv#{} reconciles the fleet after its instance event",
                    inv.n
                ));
                reconcile_next(inv)
            }
            After::StartOver => {
                // The applied intent's pass was a full reconcile too.
                self.check_leaks(&inv, clean);
                // As the controller: a failure of what follows fails the invocation if the pass
                // has an intent of its own (not applied yet: the event is delivered again), and
                // is only reported if not.
                let own = matches!(
                    inv.kind,
                    Kind::Fleet {
                        intent: Some(_),
                        ..
                    }
                );
                inv.failure_listed |= !own;
                self.note(format!(
                    "inv#{} starts over for {}",
                    inv.n,
                    if own {
                        "its own intent"
                    } else {
                        "the rest of the inbox"
                    }
                ));
                inv.conflicts = 0;
                inv.phase = Phase::Load;
                Next::Continue(inv)
            }
        }
    }

    fn finish(&mut self, inv: Inv, clean: bool) -> Next {
        self.check_leaks(&inv, clean);
        Next::Done(inv)
    }

    /// After a full reconcile that ran cleanly: what it saw unowned is recorded or gone.
    fn check_leaks(&mut self, inv: &Inv, clean: bool) {
        if clean && matches!(inv.kind, Kind::Fleet { .. }) {
            if let Some(problem) = Checker::check_leaks(&self.store, &self.ec2, &inv.seen_unowned) {
                self.violate("leak", problem);
            }
        }
    }

    fn committed(&mut self, changes: &[Change]) {
        self.stats.commits += 1;
        self.checker.on_commit(&self.store, changes);
        for c in changes {
            match c {
                Change::RolloutStarted { .. } => self.stats.rollouts += 1,
                Change::RolloutSucceeded { .. } => self.stats.succeeded += 1,
                Change::RolloutRolledBack { .. } => self.stats.rolled_back += 1,
                Change::RolloutAborted { .. } => self.stats.aborted += 1,
                Change::RolloutSuperseded { .. } => self.stats.superseded += 1,
                Change::ReplacementHalted { .. } => self.stats.breaker_trips += 1,
                Change::ImageQuarantined { image, reason } => {
                    if self.ec2.bad_images.contains_key(image) {
                        self.stats.quarantined_bad += 1;
                    } else {
                        self.stats.quarantined_good += 1;
                        if reason.contains("progress deadline") {
                            self.stats.good_by_deadline += 1;
                        } else if reason.contains("outside phoenix") {
                            self.stats.good_by_stop += 1;
                        } else if reason.contains("flaky") {
                            self.stats.good_by_spurious += 1;
                        } else {
                            self.stats.good_by_fault += 1;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// One command, as the executor carries it out.
    fn execute(&mut self, inv: &Inv, ex: &mut Exec, cmd: Command) {
        let now = self.now;
        match cmd {
            Command::Launch {
                token,
                image,
                count,
            } => {
                let r = self.ec2.launch(&token, &image, count, now, &mut self.rng);
                if !r.created.is_empty() {
                    self.stats.instances_launched += r.created.len() as u64;
                    if let Some(problem) = self.checker.check_launch(&image, ex.version) {
                        self.violate("quarantine", format!("{token}: {problem}"));
                    }
                }
                match r.result {
                    Ok(instances) if !instances.is_empty() => {
                        self.note(format!(
                            "inv#{} launch {token} x{count} on {image}: {}",
                            inv.n,
                            ids(instances.iter().map(|l| &l.id))
                        ));
                        ex.launched_ok.insert(token.clone());
                        ex.outcomes.push(Outcome::Launched {
                            token,
                            instances,
                            request_ids: Vec::new(),
                        });
                    }
                    Ok(_) => {
                        self.stats.launch_failures += 1;
                        self.note(format!("inv#{} launch {token}: nothing launched", inv.n));
                        ex.outcomes.push(Outcome::LaunchFailed {
                            token,
                            error: "EC2 launched nothing".into(),
                        });
                    }
                    // The outcome is unknown: the decision stays pending; the next reconcile adopts
                    // what carries its token, or launches again once the lease runs out.
                    Err(e) if e.is_transient() => {
                        self.note(format!(
                            "inv#{} launch {token} outcome unknown: {}",
                            inv.n, e.0
                        ));
                        ex.unsettled += 1;
                        self.stats.unsettled += 1;
                    }
                    Err(e) => {
                        self.stats.launch_failures += 1;
                        self.note(format!("inv#{} launch {token} fails: {}", inv.n, e.0));
                        ex.outcomes
                            .push(Outcome::LaunchFailed { token, error: e.0 });
                    }
                }
            }
            Command::Terminate {
                instances,
                after_launch,
            } => {
                if let Some(t) = &after_launch {
                    if !ex.launched_ok.contains(t) {
                        self.note(format!(
                            "inv#{} keeps {} (launch {t} did not succeed)",
                            inv.n,
                            ids(instances.iter())
                        ));
                        return;
                    }
                }
                let excused: Vec<bool> = instances
                    .iter()
                    .map(|id| Checker::excused(&self.ec2, &self.store, id))
                    .collect();
                for id in &instances {
                    if self.ec2.vms.get(id).is_some_and(|vm| vm.alive()) {
                        if let Some(problem) = Checker::check_terminate(&self.store, &self.ec2, id)
                        {
                            self.violate("ordering", problem);
                        }
                    }
                }
                match self.ec2.terminate(&instances, now, &mut self.rng) {
                    Ok((gone, terminated)) => {
                        self.stats.terminations += terminated.len() as u64;
                        for (id, excused) in instances.iter().zip(excused) {
                            if terminated.contains(id) {
                                self.checker.on_gone(id, excused);
                            }
                        }
                        self.note(format!(
                            "inv#{} terminate {}",
                            inv.n,
                            ids(terminated.iter())
                        ));
                        ex.outcomes.push(Outcome::Terminated {
                            instances: gone,
                            request_ids: Vec::new(),
                        });
                    }
                    Err(e) => {
                        self.note(format!(
                            "inv#{} terminate {} fails: {}",
                            inv.n,
                            ids(instances.iter()),
                            e.0
                        ));
                        ex.clean = false;
                        ex.outcomes.push(Outcome::TerminateFailed {
                            instances,
                            error: e.0,
                        });
                    }
                }
            }
        }
    }

    // --- the operator and the pipeline ----------------------------------------------------------

    fn operator(&mut self) {
        let fleet = self.store.meta().spec.name.clone();
        let pick = self.rng.weighted(&[30, 12, 8, 8, 12, 3, 5, 6, 3, 5]);
        let intent = match pick {
            0 => {
                let image = self.rng.pick(&self.scenario.images).clone();
                Intent::ImageReady { fleet, image }
            }
            1 => Intent::Scale {
                fleet,
                target: ScaleTarget::Desired(
                    self.rng.range(0, u64::from(self.scenario.max_capacity)) as u32,
                ),
            },
            2 => {
                let d = *self.rng.pick(&[-3i64, -2, -1, 1, 2, 3]);
                Intent::Scale {
                    fleet,
                    target: ScaleTarget::Delta(d),
                }
            }
            3..=8 => {
                let action = [
                    ControlAction::Pause,
                    ControlAction::Resume,
                    ControlAction::Abort,
                    ControlAction::Undo,
                    ControlAction::ResumeRepairs,
                ][pick.min(7) - 3];
                let action = if pick == 8 {
                    // Clearing a quarantine, when there is one; else another resume.
                    match self.store.meta().quarantined.keys().next().cloned() {
                        Some(image) => {
                            self.note(format!("operator: clear quarantine of {image}"));
                            self.emit(What::Intent(Intent::ClearQuarantine { fleet, image }));
                            return;
                        }
                        None => ControlAction::Resume,
                    }
                } else {
                    action
                };
                Intent::RolloutControl { fleet, action }
            }
            _ => Intent::Reconcile { fleet: Some(fleet) },
        };
        self.note(format!("operator: {}", describe_intent(&intent)));
        self.emit(What::Intent(intent));
    }

    /// In the calm phase, once a minute: what an operator does to let the fleet finish — resume a
    /// paused rollout (undo it if its image failed the health gate), resume halted repairs.
    fn operator_tidies_up(&mut self) {
        let meta = self.store.meta();
        let fleet = meta.spec.name.clone();
        let mut actions = Vec::new();
        if let Some(r) = meta
            .rollout
            .as_ref()
            .filter(|r| r.status == RolloutStatus::Paused)
        {
            if meta.quarantined.contains_key(&r.to) {
                actions.push(ControlAction::Undo);
            } else {
                actions.push(ControlAction::Resume);
            }
        }
        if meta.breaker.is_some() {
            actions.push(ControlAction::ResumeRepairs);
        }
        // The fleet is short and its own image is quarantined (every image it had failed a health
        // gate, perhaps for faults of the world): nothing can be launched until someone clears it.
        let stuck = meta.quarantined.contains_key(&meta.spec.image)
            && meta.rollout.as_ref().is_none_or(|r| !r.status.is_active())
            && self.store.live().count() < meta.spec.capacity as usize;
        if stuck {
            let image = meta.spec.image.clone();
            self.note(format!("operator: clear quarantine of {image}"));
            self.emit(What::Intent(Intent::ClearQuarantine {
                fleet: fleet.clone(),
                image,
            }));
        }
        for action in actions {
            self.note(format!("operator: rollout {}", action.as_str()));
            self.emit(What::Intent(Intent::RolloutControl {
                fleet: fleet.clone(),
                action,
            }));
        }
    }

    // --- faults --------------------------------------------------------------------------------

    fn fault(&mut self) {
        self.stats.faults += 1;
        let now = self.now;
        let alive: Vec<InstanceId> = self.ec2.alive().map(|vm| vm.id.clone()).collect();
        let running: Vec<InstanceId> = self
            .ec2
            .alive()
            .filter(|vm| vm.state == phoenix_core::model::Lifecycle::Running)
            .map(|vm| vm.id.clone())
            .collect();
        match self.rng.weighted(&[15, 10, 15, 10, 15, 5, 8, 8]) {
            0 if !alive.is_empty() => {
                let id = self.rng.pick(&alive).clone();
                self.note(format!("fault: {id} vanishes"));
                self.checker.on_gone(&id, true);
                self.ec2.vanish(&id, now);
            }
            1 if !running.is_empty() => {
                let id = self.rng.pick(&running).clone();
                self.note(format!("fault: {id} is stopped"));
                self.ec2.stop(&id, now, &mut self.rng);
            }
            2 if !alive.is_empty() => {
                let id = self.rng.pick(&alive).clone();
                self.note(format!("fault: {id} impaired (status checks fail)"));
                if let Some(vm) = self.ec2.vms.get_mut(&id) {
                    vm.impaired = true;
                }
            }
            3 if !alive.is_empty() => {
                let id = self.rng.pick(&alive).clone();
                self.note(format!("fault: {id}'s application fails"));
                if let Some(vm) = self.ec2.vms.get_mut(&id) {
                    vm.app_failed = true;
                }
            }
            4 => {
                let healthy: Vec<InstanceId> = self
                    .ec2
                    .alive()
                    .filter(|vm| self.ec2.world_healthy(vm, now))
                    .map(|vm| vm.id.clone())
                    .collect();
                if healthy.is_empty() {
                    return;
                }
                let id = self.rng.pick(&healthy).clone();
                self.note(format!("fault: spurious health-check failure of {id}"));
                if let Some(vm) = self.ec2.vms.get_mut(&id) {
                    vm.reported = true;
                }
                self.emit(What::Intent(Intent::HealthCheckFailed {
                    instance: id,
                    reason: "flaky health check".into(),
                }));
            }
            5 => {
                let zone = self.rng.below(ZONES.len() as u64) as usize;
                let minutes = self.rng.range(2, 15) as i64;
                self.note(format!(
                    "fault: zone {} down for {minutes} min",
                    ZONES[zone]
                ));
                self.ec2
                    .zones_down
                    .insert(zone, now + Duration::minutes(minutes));
            }
            6 => {
                let zone = if self.rng.chance(300) {
                    usize::MAX
                } else {
                    self.rng.below(ZONES.len() as u64) as usize
                };
                let minutes = self.rng.range(1, 10) as i64;
                self.note(format!(
                    "fault: no capacity in {} for {minutes} min",
                    ZONES.get(zone).copied().unwrap_or("any zone")
                ));
                self.ec2
                    .shortage
                    .insert(zone, now + Duration::minutes(minutes));
            }
            7 => {
                let secs = self.rng.range(30, 180) as i64;
                let p = self.rng.range(300, 700) as u32;
                self.note(format!(
                    "fault: EC2 throttles {}% of calls for {secs}s",
                    p / 10
                ));
                self.ec2.throttle = Some((now + Duration::seconds(secs), p));
            }
            _ => self.note("fault: none applicable"),
        }
    }

    /// The calm phase begins: no more faults, lost or late events or crashes; zones come back,
    /// capacity returns, throttling stops, and images launch healthy from now on. Instances that
    /// are broken stay broken (and are reported, and replaced).
    fn calm_down(&mut self) {
        self.chaos = false;
        self.ec2.zones_down.clear();
        self.ec2.shortage.clear();
        self.ec2.throttle = None;
        self.ec2.lost_response = 0;
        self.ec2.bad_images.clear();
        self.next_operator_check = self.now;
        self.line = format!(
            "[{}] {} calm: faults stop, the world heals",
            self.steps,
            self.clock()
        );
        self.flush_line();
    }

    /// How long the calm phase may take: `Config::settle`, plus what the fleet's own pace needs
    /// to replace every instance twice over (a rollback, then a rollout or repairs): waves of
    /// `max_surge` instances of up to five minutes each (boot, status checks, a reconcile, the
    /// health report), or the hourly disruption budget, whichever is slower.
    fn settle_time(&self) -> Duration {
        let meta = self.store.meta();
        let instances = meta.spec.capacity.max(self.store.live().count() as u32);
        let budget = meta.budget();
        let per_wave = budget.max_total.saturating_sub(meta.spec.capacity).max(1);
        let by_waves = Duration::minutes(i64::from(2 * instances.div_ceil(per_wave)) * 5);
        let by_budget = meta
            .spec
            .policy
            .max_replacements_per_hour
            .map_or(Duration::zero(), |limit| {
                Duration::hours(i64::from((2 * instances).div_ceil(limit.max(1))))
            });
        self.cfg.settle + by_waves.max(by_budget)
    }

    /// `None` once the fleet has converged, else why not.
    fn converged(&self) -> Option<String> {
        let meta = self.store.meta();
        let now = self.now;
        if let Some(r) = meta.rollout.as_ref().filter(|r| r.status.is_active()) {
            return Some(format!("rollout {} to {} still {:?}", r.id, r.to, r.status));
        }
        if !meta.pending.is_empty() {
            return Some(format!("{} launches pending", meta.pending.len()));
        }
        if meta.breaker.is_some() {
            return Some("breaker tripped".into());
        }
        let queued = self.store.inbox().count();
        if queued > 0 {
            return Some(format!("{queued} intents queued, not applied"));
        }
        let live: Vec<_> = self.store.live().collect();
        if live.len() != meta.spec.capacity as usize {
            return Some(format!(
                "{} live records for capacity {}",
                live.len(),
                meta.spec.capacity
            ));
        }
        // An aborted rollout leaves the fleet as it was, mixed if need be.
        let mixed_ok = meta
            .rollout
            .as_ref()
            .is_some_and(|r| r.status == RolloutStatus::Aborted);
        if let Some(i) = live.iter().find(|i| {
            !i.is_healthy() || i.disposal.is_some() || (i.image != meta.spec.image && !mixed_ok)
        }) {
            return Some(format!(
                "{} on {} {:?} {:?} leaving={} (fleet image {})",
                i.id,
                i.image,
                i.state,
                i.health,
                i.disposal.is_some(),
                meta.spec.image
            ));
        }
        let alive: BTreeSet<&InstanceId> = self.ec2.alive().map(|vm| &vm.id).collect();
        let recorded: BTreeSet<&InstanceId> = live.iter().map(|i| &i.id).collect();
        if alive != recorded {
            return Some(format!(
                "EC2 has {} alive, the books {} live ({} unrecorded)",
                alive.len(),
                recorded.len(),
                alive.difference(&recorded).count()
            ));
        }
        if let Some(vm) = self.ec2.alive().find(|vm| !self.ec2.world_healthy(vm, now)) {
            return Some(format!("{} is not healthy in EC2", vm.id));
        }
        None
    }

    /// Converged: every queued intent applied, and one more reconcile must find nothing to do.
    fn final_checks(&mut self) {
        let unapplied = self.checker.unapplied();
        if unapplied > 0 {
            self.violate(
                "liveness",
                format!("{unapplied} queued intents never applied"),
            );
        }
        let fleet = self.store.load_fleet();
        let observed = self
            .ec2
            .describe(self.now, &mut self.rng)
            .unwrap_or_default();
        let now = self.now + Duration::seconds(30);
        match self
            .cfg
            .variant
            .plan_fleet(&fleet, None, now, &observed, now)
        {
            Ok(step) if step.is_noop() && step.commands.is_empty() => {
                let census = self.last_census;
                self.line = format!(
                    "[{}] {} converged: {} healthy, min {}, {} counted for surge, max {}",
                    self.steps,
                    self.clock(),
                    census.healthy,
                    census.min_healthy,
                    census.surge_counted,
                    census.max_total
                );
                self.flush_line();
            }
            Ok(step) => self.violate(
                "liveness",
                format!("converged but not at rest: {}", summarize(&step)),
            ),
            Err(e) => self.violate("liveness", format!("reconcile refused: {e}")),
        }
        self.flush_line();
    }
}

/// The invocation goes on as a reconcile of its fleet without an intent, with fresh attempts.
fn reconcile_next(mut inv: Inv) -> Next {
    inv.kind = Kind::Fleet {
        intent: None,
        key: None,
    };
    inv.conflicts = 0;
    inv.phase = Phase::Load;
    Next::Continue(inv)
}

/// The executor's order: terminations already covered, launches, then the terminations that
/// wait for a launch.
fn executor_order(commands: &[Command]) -> Vec<Command> {
    let first = commands.iter().filter(|c| {
        matches!(
            c,
            Command::Terminate {
                after_launch: None,
                ..
            }
        )
    });
    let launches = commands
        .iter()
        .filter(|c| matches!(c, Command::Launch { .. }));
    let after = commands.iter().filter(|c| {
        matches!(
            c,
            Command::Terminate {
                after_launch: Some(_),
                ..
            }
        )
    });
    first.chain(launches).chain(after).cloned().collect()
}

fn ids<'a>(ids: impl Iterator<Item = &'a InstanceId>) -> String {
    let v: Vec<&str> = ids.map(InstanceId::as_str).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(" ")
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
        // Kinds newer than this simulator.
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

/// The cause a commit records for an event (`Cause::from_envelope`).
fn cause(event: &Event) -> Cause {
    let (source, detail_type) = match &event.what {
        What::Scheduled => (ev::SCHEDULE_SOURCE, ev::SCHEDULED_EVENT),
        What::Intent(i) => (
            ev::SOURCE,
            match i {
                Intent::ImageReady { .. } => ev::IMAGE_READY,
                Intent::HealthCheckFailed { .. } => ev::HEALTH_CHECK_FAILED,
                Intent::HealthCheckPassed { .. } => ev::HEALTH_CHECK_PASSED,
                Intent::Scale { .. } => ev::SCALE_REQUESTED,
                Intent::Reconcile { .. } => ev::RECONCILE_REQUESTED,
                Intent::RolloutControl { .. } | Intent::ClearQuarantine { .. } => {
                    ev::ROLLOUT_CONTROL
                }
                // Kinds the simulator does not send.
                _ => ev::INSTANCE_NOTICE,
            },
        ),
    };
    Cause {
        event_id: Some(event.id.clone()),
        source: source.into(),
        detail_type: detail_type.into(),
        event_time: Some(event.time),
    }
}

fn describe_what(w: &What) -> String {
    match w {
        What::Scheduled => "Scheduled".into(),
        What::Intent(i) => describe_intent(i),
    }
}

/// A short account of a step's changes and commands.
fn summarize(step: &Step) -> String {
    let mut out = String::new();
    for c in &step.changes {
        let s = match c {
            Change::LaunchDecided {
                token,
                count,
                image,
                ..
            } => format!("decide {token} x{count} {image}"),
            Change::LaunchRetried { token } => format!("retry {token}"),
            Change::Launched {
                token, instances, ..
            } => {
                format!("adopt {token}: {}", ids(instances.iter()))
            }
            Change::LaunchFailed { token, .. } => format!("{token} failed"),
            Change::TerminationDecided { instance, reason } => format!("end {instance} ({reason})"),
            Change::Terminated { instances, .. } if instances.is_empty() => continue,
            Change::Terminated { instances, .. } => format!("gone {}", ids(instances.iter())),
            Change::HealthChanged { instance, health } => format!(
                "{instance} {}",
                match health {
                    phoenix_core::model::Health::Healthy => "healthy",
                    phoenix_core::model::Health::Unknown => "unknown",
                    phoenix_core::model::Health::Unhealthy { .. } => "failed",
                }
            ),
            Change::StateChanged { .. } => continue,
            Change::Ignored { reason } => format!("ignored: {reason}"),
            other => phoenix_core::history::describe(other),
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{s}");
    }
    if out.is_empty() {
        out.push_str("nothing");
    }
    out
}
