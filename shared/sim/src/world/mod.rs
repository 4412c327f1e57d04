//! The simulated world the controller's ports talk to: the clock, the table, EC2, the load
//! balancers' target groups, Auto Scaling's groups, the bus's published events, and what the
//! simulator checks as each call takes effect. One `World` behind one lock, shared by the ports (`ports`) and the
//! simulator's driver (`sim`); everything runs on one thread, in an order fixed by the seed.
//!
//! Each port call is attributed to the invocation that made it (`current`), so the checks can
//! judge the protocol by its traffic: no launch without a committed decision, no launch of a
//! decision carried out again without first looking for its instances, no command started inside
//! the deadline's reserve, no instance terminated that is not the fleet's or that still serves, no
//! instance tagged or terminated that phoenix neither launched nor adopted, none terminated after
//! the fleet gave it back or while it is in an Auto Scaling group, no registration before the
//! launching hook let it, no delivery of an unfinished event acknowledged without a pass over the
//! fleet.

mod asg_calls;
mod ec2_calls;
mod elb_calls;
mod stats;
mod table_calls;

pub use stats::{Stats, Violation};

use crate::asg::AutoScaling;
use crate::books::Books;
use crate::check::{Census, Checker};
use crate::custody::Custody;
use crate::ec2::Ec2;
use crate::elb::Elb;
use crate::rng::Rng;
use crate::table::TableState;
use crate::traffic::Traffic;
use chrono::Duration;
use phoenix_core::model::{HookKind, Timestamp};
use phoenix_core::InstanceId;
use phoenix_protocol::error::{Error, Result};
use phoenix_protocol::ports::bus::OutgoingEvent;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

/// The world, shared by the ports and the driver.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<World>>);

impl Shared {
    pub fn new(world: World) -> Self {
        Shared(Arc::new(Mutex::new(world)))
    }

    /// The world, locked. Never held across an await: everything runs on one thread, and a port
    /// call does its work inside one lock.
    pub fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Rates (per mille) of the faults of AWS's services other than EC2's, for the chaos phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceFaults {
    /// A DynamoDB call throttled after the SDK's retries.
    pub throttle: u32,
    /// A transaction cancelled because another transaction was on one of its items.
    pub conflict: u32,
    /// A transaction applied whose answer never arrives (the caller sees a timeout).
    pub lost: u32,
    /// A PutEvents call failing.
    pub publish: u32,
    /// An EC2 or Auto Scaling call answered with a 5xx after the SDK's retries (one that changes
    /// something may have been carried out).
    pub ec2_5xx: u32,
}

/// A 5xx of `service` after the SDK's retries.
fn internal_error(service: &'static str, call: &str) -> Error {
    Error::Transient {
        service,
        message: format!("InternalError ({call})"),
    }
}

/// What the simulator knows of one invocation, from its traffic.
#[derive(Debug, Default, Clone)]
pub struct Invocation {
    pub n: u64,
    pub deadline: Timestamp,
    /// Launch tokens this invocation looked up by tag (the protocol does before carrying a
    /// decision out again).
    looked_up: BTreeSet<String>,
    /// Instance ids this invocation just re-validated by id (before terminating), with whether
    /// they carried the fleet's tag then.
    validated: BTreeMap<String, bool>,
    /// Time left before the deadline when it re-validated them — or, behind target groups, when
    /// the command began: a termination first deregisters from each group (one
    /// DescribeTargetGroups each, then DeregisterTargets).
    validated_left: Option<Duration>,
    /// Time left at each DescribeTargetGroups since its last re-validation.
    group_looks: Vec<Duration>,
    /// When it began reading the target groups' health (DescribeTargetHealth) since it last
    /// committed.
    groups_read: Option<Timestamp>,
    /// Launch decisions this invocation committed itself.
    decided: BTreeSet<String>,
    /// It met its event applied but unfinished (in progress past its owner's deadline) ...
    pub met_unfinished: bool,
    /// ... and since then loaded the whole fleet, and observed it in EC2.
    loaded_after: bool,
    observed_after: bool,
    /// Its last whole-fleet pass: the live instances it loaded, the fleet's instances EC2 showed
    /// it that those did not include.
    loaded_live: BTreeSet<InstanceId>,
    pub seen_unowned: Vec<InstanceId>,
    /// Its last commit after that observation was refused: the pass did not go through.
    pub pass_refused: bool,
    /// A TerminateInstances call of it failed.
    pub terminate_failed: bool,
    /// The EC2 call budget refused its last request for room (the budget's counter was full).
    pub ec2_denied: bool,
    /// A commit of it went through.
    pub committed: bool,
}

impl Invocation {
    pub fn new(n: u64, deadline: Timestamp) -> Self {
        Invocation {
            n,
            deadline,
            ..Invocation::default()
        }
    }

    /// The protocol's promise for an unfinished event kept: a pass over the whole fleet followed
    /// — or the EC2 call budget had no room for one, and the decisions wait, recorded, for the
    /// fleet's next pass.
    pub fn finished_unfinished(&self) -> bool {
        !self.met_unfinished || (self.loaded_after && self.observed_after) || self.ec2_denied
    }
}

/// A lifecycle hook's notification (`InstanceLaunching`, `InstanceTerminating`) as it reached
/// the bus, for the hook handler.
#[derive(Debug, Clone)]
pub struct HookNotice {
    pub id: String,
    pub instance: InstanceId,
    pub hook: HookKind,
    pub timeout_at: Timestamp,
}

impl HookNotice {
    /// The hook notification an event is, if it is one.
    fn of(e: &OutgoingEvent) -> Option<HookNotice> {
        let hook = match e.detail_type.as_str() {
            "InstanceLaunching" => HookKind::Launching,
            "InstanceTerminating" => HookKind::Terminating,
            _ => return None,
        };
        let d = &e.detail;
        Some(HookNotice {
            id: d["notification_id"].as_str()?.to_string(),
            instance: InstanceId::parse(d["instance"].as_str()?).ok()?,
            hook,
            timeout_at: serde_json::from_value(d["timeout_at"].clone()).ok()?,
        })
    }
}

pub struct World {
    pub t0: Timestamp,
    pub now: Timestamp,
    pub rng: Rng,
    pub table: TableState,
    pub ec2: Ec2,
    pub elb: Elb,
    pub autoscaling: AutoScaling,
    pub books: Books,
    pub checker: Checker,
    pub traffic: Traffic,
    pub custody: Custody,
    /// Hook notifications that reached the bus, not yet read by the hook handler.
    pub hook_notices: Vec<HookNotice>,
    pub stats: Stats,
    /// The EC2 call budget the controller runs under (requests a second), and the requests EC2
    /// received in the current second: (second, count).
    pub ec2_budget: Option<u32>,
    ec2_second: (i64, u32),
    /// The chaos phase: faults of the services are injected.
    pub chaos: bool,
    pub service_faults: ServiceFaults,
    /// Invocations in flight, by number.
    pub invocations: BTreeMap<u64, Invocation>,
    /// The invocation whose port call is being served.
    pub current: Option<u64>,
    /// Sleeping invocations: when to wake them.
    pub timers: Vec<(Timestamp, Waker)>,
    /// The current step's trace line.
    pub line: String,
    pub steps: u64,
    pub violation: Option<Violation>,
    pub last_census: Census,
}

impl World {
    /// A world at `t0` with these services, before the fleet exists (`books` hold its spec),
    /// calm: no fault is injected until `chaos` is set.
    pub fn new(
        t0: Timestamp,
        rng: Rng,
        ec2: Ec2,
        books: Books,
        service_faults: ServiceFaults,
    ) -> Self {
        World {
            t0,
            now: t0,
            rng,
            table: TableState::default(),
            ec2,
            elb: Elb::default(),
            autoscaling: AutoScaling::default(),
            books,
            checker: Checker::default(),
            traffic: Traffic::default(),
            custody: Custody::default(),
            hook_notices: Vec::new(),
            stats: Stats::default(),
            ec2_budget: None,
            ec2_second: (i64::MIN, 0),
            chaos: false,
            service_faults,
            invocations: BTreeMap::new(),
            current: None,
            timers: Vec::new(),
            line: String::new(),
            steps: 0,
            violation: None,
            last_census: Census::default(),
        }
    }

    pub fn clock(&self) -> String {
        let s = (self.now - self.t0).num_seconds();
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }

    pub fn note(&mut self, text: impl AsRef<str>) {
        if !self.line.is_empty() {
            self.line.push_str("; ");
        }
        self.line.push_str(text.as_ref());
    }

    /// `inv#N` for the invocation being served.
    pub(crate) fn who(&self) -> String {
        self.current
            .map(|n| format!("inv#{n}"))
            .unwrap_or_else(|| "the simulator".into())
    }

    pub(crate) fn invocation(&mut self) -> Option<&mut Invocation> {
        let n = self.current?;
        self.invocations.get_mut(&n)
    }

    pub fn violate(&mut self, kind: &'static str, message: String) {
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

    /// A call that changes a service (EC2, Auto Scaling), with the faults of the chaos phase: a
    /// 5xx after the SDK's retries, before the service acted or after (the answer lost: the
    /// caller cannot tell which).
    pub(crate) fn change<T>(
        &mut self,
        service: &'static str,
        call: &str,
        act: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let who = self.who();
        let unanswered = self.chaos_fault(self.service_faults.ec2_5xx);
        let out = if unanswered && self.rng.chance(500) {
            Err(internal_error(service, call))
        } else {
            act(self)
        };
        match out {
            Err(e) => {
                self.note(format!("{who} {call} fails: {e}"));
                Err(e)
            }
            Ok(_) if unanswered => {
                self.note(format!("{who} {call} is carried out; its answer is lost"));
                Err(internal_error(service, call))
            }
            Ok(done) => Ok(done),
        }
    }

    pub(crate) fn chaos_fault(&mut self, per_mille: u32) -> bool {
        if self.chaos && self.rng.chance(per_mille) {
            self.stats.service_faults += 1;
            true
        } else {
            false
        }
    }

    // --- the bus -------------------------------------------------------------------------------

    /// PutEvents: the notifications reach the bus (and are counted by their ids), or, in the
    /// chaos phase now and then, the call fails and none does.
    pub fn publish(&mut self, events: &[OutgoingEvent]) -> Result<Vec<String>> {
        if self.chaos_fault(self.service_faults.publish) {
            let who = self.who();
            self.note(format!("{who} PutEvents fails"));
            return Err(Error::Transient {
                service: "eventbridge",
                message: "InternalException".into(),
            });
        }
        self.stats.published += events.len() as u64;
        let ids: Vec<&str> = events
            .iter()
            .filter_map(|e| e.detail["notification_id"].as_str())
            .collect();
        let who = self.who();
        self.note(format!("{who} publishes {}", ids.join(" ")));
        self.stats.notifications_repeated += self.checker.on_published(ids);
        for notice in events.iter().filter_map(HookNotice::of) {
            self.traffic
                .on_published(&notice.instance, notice.hook, notice.timeout_at, self.now);
            self.hook_notices.push(notice);
        }
        Ok((0..events.len())
            .map(|n| format!("published-{n}"))
            .collect())
    }

    // --- the checks after each step ---------------------------------------------------------

    pub fn check_world(&mut self) {
        let (census, problems) =
            self.checker
                .check_world(&self.books, &self.ec2, &self.custody, self.now);
        self.last_census = census;
        for (kind, message) in problems {
            self.violate(kind, message);
        }
    }

    /// The fleet's records and EC2's instances, one line each, for a failure report.
    pub fn dump(&self) -> Vec<String> {
        let meta = self.books.meta();
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
            self.books
                .inbox()
                .map(|q| q.key())
                .collect::<Vec<_>>()
                .join(", "),
        )];
        let now = self.now;
        let mut ids: BTreeSet<&InstanceId> = self.ec2.vms.keys().collect();
        ids.extend(self.books.live().map(|i| &i.id));
        for id in ids {
            let mut world = String::new();
            match self.ec2.vms.get(id) {
                Some(vm) => {
                    let token = vm.token().unwrap_or("-");
                    let _ = write!(world, "ec2 {} {token} {:?}", vm.image, vm.state);
                    for (flag, text) in [
                        (self.ec2.world_healthy(vm, now), " healthy"),
                        (self.ec2.status_ok(vm, now), " status-ok"),
                        (self.ec2.fault(vm), " FAULT"),
                        (vm.reported, " reported"),
                        (!vm.tagged(), " UNTAGGED"),
                    ] {
                        if flag {
                            world.push_str(text);
                        }
                    }
                }
                None => world.push_str("ec2 -"),
            }
            let books = match self.books.instance(id) {
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
}
