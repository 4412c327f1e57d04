//! The controller: one event in, the fleet reconciled, every decision recorded.
//!
//! Each step documents what holds if the invocation dies right after it:
//! 1. *parse* — nothing written; a bad event is rejected with its reason.
//! 2. *plan + commit* — the intent, the decisions (launches as pending, terminations as decided)
//!    and the history entry are written in one conditional transaction. Lost race → re-read and
//!    re-plan. Crash after: the next reconcile finds the pending launches and decided terminations
//!    and finishes them once their lease runs out. A fleet-wide event that lost three races puts
//!    its intent in the fleet's inbox instead (`QueuedIntent`), with its record completed, in one
//!    write no race can fail. Crash after: every pass over the whole fleet applies queued intents
//!    first, one commit each, which deletes the intent it applied.
//! 3. *execute* — terminations already covered, then launches (EC2 ClientToken = decision token,
//!    instances tagged at creation), then terminations that waited for a launch. Crash after any
//!    call: the tags let the next reconcile adopt what was launched; terminating again is harmless.
//! 4. *record outcomes* — instance ids and terminations are committed the same way as 2, in as
//!    many transactions as they need (`planner::outcome_parts`). Crash between two: the next
//!    reconcile finishes what the later parts would have recorded, as after a crash before 4.
//!
//! The event's record (`EVENT#<id>`) rides in those transactions: claimed in 2 (`INPROGRESS`
//! until the invocation's deadline, or `COMPLETED` when no command follows), completed in 4. A
//! delivery that finds it `COMPLETED` or `INPROGRESS` returns without acting; one that finds it
//! `INPROGRESS` past its owner's deadline reconciles the fleet (the intent is never applied twice).
//! Near its deadline an invocation starts no new command: what it committed but did not carry out
//! is finished by the next reconcile once its lease runs out, exactly as after a crash.

use crate::bus::{Bus, EventBridgeBus, OutgoingEvent};
use crate::compute::{Compute, Ec2Compute};
use crate::config::{load_sdk_config, Settings};
use crate::error::{Error, Result};
use crate::intake::Intake;
use crate::store::{DynamoStore, EventKey, EventRecord, StateStore};
use phoenix_core::aws_events::AwsEvent;
use phoenix_core::events::{Cause, Change, Envelope, Intent, QueuedIntent};
use phoenix_core::model::{Fleet, Timestamp};
use phoenix_core::patterns::{route, Function};
use phoenix_core::planner::{self, Command, Outcome, Step};
use phoenix_core::{FleetName, InstanceId};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

mod aws_events;

/// How often a commit may lose the race for one fleet before the invocation gives up (and is
/// retried by Lambda). Each loss means another writer made progress, so this is not a livelock.
/// Without a deadline (CLI, local dispatcher) this bounds the retries; with one, the deadline
/// does (up to `MAX_CONFLICTS_WITHIN_DEADLINE`): measured with 50 concurrent invocations on one
/// fleet, 10 attempts with short pauses left a sixth of the events failing three invocations in a
/// row (dead-lettered), while retrying until the reserve lost none.
const MAX_CONFLICTS: usize = 10;
const MAX_CONFLICTS_WITHIN_DEADLINE: usize = 200;
/// Lost races after which a fleet-wide event puts its intent in the fleet's inbox
/// (`reconcile_within`).
pub const QUEUE_AFTER_CONFLICTS: usize = 3;

fn conflict_attempts(deadline: Deadline) -> usize {
    if deadline.remaining().is_some() {
        MAX_CONFLICTS_WITHIN_DEADLINE
    } else {
        MAX_CONFLICTS
    }
}

/// A source of the current time; tests pin it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(chrono::Utc::now)
}

/// Time an invocation keeps in hand at its deadline: no command (launch, terminate) and no new
/// fleet is started with less than this left, so what was started can finish and its outcome be
/// committed (a few calls of well under a second each, with retries) before Lambda stops the
/// process. The functions' timeout is 60 s (infra/template.yaml).
pub const DEADLINE_RESERVE: Duration = Duration::from_secs(10);

/// When an event's record stays `INPROGRESS` with no deadline known (CLI, local dispatcher): the
/// lease a write-ahead decision gets, for the same reason — longer than an invocation lives.
const IN_PROGRESS_WITHOUT_DEADLINE: chrono::Duration = planner::LEASE;

/// When the current invocation must be done: the Lambda context's deadline, or none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadline(Option<std::time::Instant>);

impl Deadline {
    /// No deadline (CLI, local dispatcher, tests).
    pub const NONE: Deadline = Deadline(None);

    pub fn at(instant: std::time::Instant) -> Self {
        Deadline(Some(instant))
    }

    pub fn after(d: Duration) -> Self {
        Deadline(Some(std::time::Instant::now() + d))
    }

    /// From the Lambda context's deadline (milliseconds since the epoch).
    pub fn from_epoch_millis(ms: u64) -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        Self::after(Duration::from_millis(ms.saturating_sub(now_ms)))
    }

    pub fn remaining(&self) -> Option<Duration> {
        self.0
            .map(|t| t.saturating_duration_since(std::time::Instant::now()))
    }

    /// Less than `DEADLINE_RESERVE` left: start nothing new.
    pub fn is_short(&self) -> bool {
        self.remaining().is_some_and(|r| r < DEADLINE_RESERVE)
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.is_short() {
            return Err(Error::Deadline(format!(
                "{}ms left before the invocation's deadline: not starting to {what}",
                self.remaining().unwrap_or_default().as_millis()
            )));
        }
        Ok(())
    }

    /// Until when an event claimed now stays in progress: the deadline, in the clock's terms.
    fn in_progress_until(&self, now: Timestamp) -> Timestamp {
        match self.remaining() {
            Some(r) => now + chrono::Duration::milliseconds(r.as_millis() as i64),
            None => now + IN_PROGRESS_WITHOUT_DEADLINE,
        }
    }
}

pub struct Controller<S, C, B> {
    pub store: S,
    pub compute: C,
    pub bus: B,
    pub clock: Clock,
    /// Accounts and sources events are accepted from; Image Builder. `Intake::default()`: any
    /// account, every known source, no Image Builder.
    pub intake: Intake,
}

/// The production controller: DynamoDB, EC2 and EventBridge.
pub type AwsController = Controller<DynamoStore, Ec2Compute, EventBridgeBus>;

impl AwsController {
    /// Builds the SDK clients once (cold start), from the standard AWS environment and `Settings`.
    pub async fn from_env() -> Self {
        let settings = Settings::from_env();
        let sdk = load_sdk_config().await;
        Controller {
            store: DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), settings.table),
            compute: Ec2Compute::new(aws_sdk_ec2::Client::new(&sdk)),
            bus: EventBridgeBus::new(aws_sdk_eventbridge::Client::new(&sdk), settings.bus),
            clock: system_clock(),
            intake: Intake::from_env(&sdk),
        }
    }
}

/// What handling an event did, per fleet. Returned by the functions and printed by the CLI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub event_id: String,
    pub detail_type: String,
    pub fleets: Vec<FleetReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    pub fleet: FleetName,
    pub outcome: FleetOutcome,
    pub version: u64,
    pub changes: Vec<Change>,
    pub launched: Vec<InstanceId>,
    pub terminated: Vec<InstanceId>,
    /// AWS calls that failed; the fleet is consistent and the next reconcile retries them.
    pub failures: Vec<String>,
}

impl FleetReport {
    /// Adds what a follow-up reconcile of the same fleet did.
    fn absorb(&mut self, then: FleetReport) {
        self.changes.extend(then.changes);
        self.launched.extend(then.launched);
        self.terminated.extend(then.terminated);
        self.failures.extend(then.failures);
        self.version = self.version.max(then.version);
    }
}

/// What one pass over a fleet did (`reconcile_pass`).
enum Pass {
    /// What the pass was for is done (or was done before: a duplicate).
    Done(FleetReport),
    /// It applied an intent from the fleet's inbox; what it was for is still to do.
    AppliedQueued(FleetReport),
    /// Its own intent is in the inbox now; the fleet is still to reconcile.
    QueuedOwn,
}

/// `next` added to what the call did so far.
fn absorbed(so_far: Option<FleetReport>, next: FleetReport) -> FleetReport {
    match so_far {
        Some(mut r) => {
            r.absorb(next);
            r
        }
        None => next,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetOutcome {
    /// Changes were committed (and carried out).
    Changed,
    /// Nothing to do.
    Unchanged,
    /// This event was handled before; its intent was not applied again. If the earlier delivery
    /// did not finish (its record expired in progress) the fleet was reconciled, and `changes`
    /// lists what that did; otherwise nothing was done.
    Duplicate,
    /// Another invocation is handling this event right now: nothing was done.
    InFlight,
    /// The event's intent is in the fleet's inbox (it kept losing the race for the fleet) and
    /// the fleet could not be reconciled now (see `failures`): the next reconcile applies it.
    Queued,
}

fn event_key(env: &Envelope) -> EventKey {
    // FNV-1a over the content: stable across processes and versions, unlike std's hasher.
    let content = format!("{}\n{}\n{}", env.source, env.detail_type, env.detail);
    let hash = content.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    EventKey {
        id: env.id.clone(),
        hash: format!("{hash:016x}"),
    }
}

impl<S: StateStore, C: Compute, B: Bus> Controller<S, C, B> {
    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Handles one phoenix event. `function` (when given) is the function receiving it, which
    /// refuses event kinds routed elsewhere.
    pub async fn handle(&self, env: &Envelope, function: Option<Function>) -> Result<Report> {
        self.handle_within(env, function, Deadline::NONE).await
    }

    /// `handle` for an invocation that must be done by `deadline` (`lambda::handle` passes the
    /// Lambda context's). With less than `DEADLINE_RESERVE` left it starts nothing new: before
    /// the event's intent is committed that fails the invocation (retryable: delivered again);
    /// after, the rest is left to the next reconcile and the report lists what was deferred.
    ///
    /// The per-fleet work is boxed (`Box::pin`): its futures hold several SDK calls' state, and
    /// nested unboxed they overflowed a 2 MiB worker-thread stack in debug builds.
    pub async fn handle_within(
        &self,
        env: &Envelope,
        function: Option<Function>,
        deadline: Deadline,
    ) -> Result<Report> {
        // Only allowed accounts and sources; AWS's own events have their own path.
        self.intake.policy.check(env)?;
        if let Some(event) = AwsEvent::from_envelope(env) {
            return self.handle_aws(env, event?, function, deadline).await;
        }
        let intent = Intent::from_envelope(env)?;
        if let Some(f) = function {
            if route(&env.source, &env.detail_type) != Some(f) {
                return Err(phoenix_core::Error::Event(format!(
                    "the {} function does not handle {}",
                    f.name(),
                    env.detail_type
                ))
                .into());
            }
        }
        let cause = Cause::from_envelope(env);
        let key = event_key(env);
        deadline.check("handle the event")?;
        let fleets = match &intent {
            Intent::ImageReady { fleet, image } => {
                let Some(facts) = self.compute.describe_image(image).await? else {
                    return Err(Error::NotFound(format!(
                        "image {image} does not exist or is not available to this account"
                    )));
                };
                // The fleet's admission gate first: a refused image is recorded, not rolled out.
                if let Some(reason) = self.refusal(fleet, image, &facts).await? {
                    vec![
                        self.reject_image(fleet.clone(), image.clone(), reason, &cause, &key)
                            .await?,
                    ]
                } else {
                    vec![
                        Box::pin(self.reconcile_within(
                            fleet,
                            Some(&intent),
                            env.time,
                            &cause,
                            Some(&key),
                            deadline,
                        ))
                        .await?,
                    ]
                }
            }
            Intent::Notice { .. } => {
                return Err(phoenix_core::Error::Event(
                    "notices come from AWS's events, not phoenix's".into(),
                )
                .into())
            }
            Intent::Scale { fleet, .. }
            | Intent::RolloutControl { fleet, .. }
            | Intent::ClearQuarantine { fleet, .. } => vec![
                Box::pin(self.reconcile_within(
                    fleet,
                    Some(&intent),
                    env.time,
                    &cause,
                    Some(&key),
                    deadline,
                ))
                .await?,
            ],
            Intent::HealthCheckFailed { instance, .. } | Intent::HealthCheckPassed { instance } => {
                vec![
                    Box::pin(
                        self.instance_event(instance, &intent, env.time, &cause, &key, deadline),
                    )
                    .await?,
                ]
            }
            Intent::Reconcile { fleet: Some(name) } => vec![
                Box::pin(self.reconcile_within(name, None, env.time, &cause, None, deadline))
                    .await?,
            ],
            // Every fleet: one that fails must not stop the others. Its failure is in the report
            // and the log; the next schedule tries again — as it does the fleets not started
            // because the invocation's time ran short.
            Intent::Reconcile { fleet: None } => {
                let mut reports = Vec::new();
                for name in self.store.list_fleets().await? {
                    let result =
                        match deadline.check("reconcile another fleet") {
                            Ok(()) => {
                                Box::pin(self.reconcile_within(
                                    &name, None, env.time, &cause, None, deadline,
                                ))
                                .await
                            }
                            Err(e) => Err(e),
                        };
                    match result {
                        Ok(r) => reports.push(r),
                        Err(e) => {
                            warn!(fleet = %name, error = %e, "reconcile failed");
                            reports.push(FleetReport {
                                fleet: name,
                                outcome: FleetOutcome::Unchanged,
                                version: 0,
                                changes: Vec::new(),
                                launched: Vec::new(),
                                terminated: Vec::new(),
                                failures: vec![e.to_string()],
                            });
                        }
                    }
                }
                reports
            }
        };
        Ok(Report {
            event_id: env.id.clone(),
            detail_type: env.detail_type.clone(),
            fleets,
        })
    }

    /// Applies `intent` (if any) to the whole fleet and reconciles it with what EC2 reports.
    pub async fn reconcile_fleet(
        &self,
        name: &FleetName,
        intent: Option<&Intent>,
        event_time: Timestamp,
        cause: &Cause,
        key: Option<&EventKey>,
    ) -> Result<FleetReport> {
        Box::pin(self.reconcile_within(name, intent, event_time, cause, key, Deadline::NONE)).await
    }

    /// `reconcile_fleet` within `deadline`: passes over the fleet (`reconcile_pass`) until one
    /// does what this call is for. A loop, not recursion: each pass holds several SDK calls'
    /// state, and a long inbox recursed deep enough to overflow a worker thread's stack.
    async fn reconcile_within(
        &self,
        name: &FleetName,
        intent: Option<&Intent>,
        event_time: Timestamp,
        cause: &Cause,
        key: Option<&EventKey>,
        deadline: Deadline,
    ) -> Result<FleetReport> {
        let (mut intent, mut key) = (intent, intent.and(key));
        let mut done: Option<FleetReport> = None;
        let mut queued_own = false;
        loop {
            // Once its intent is queued, the invocation tries the contended fleet only briefly:
            // the intent is safe, and any later pass over the fleet (the schedule's, each minute)
            // applies it; retrying until the deadline held a worker for up to a minute.
            let attempts = if queued_own {
                QUEUE_AFTER_CONFLICTS
            } else {
                conflict_attempts(deadline)
            };
            let pass = Box::pin(
                self.reconcile_pass(name, intent, event_time, cause, key, attempts, deadline),
            )
            .await;
            match pass {
                Ok(Pass::Done(r)) => return Ok(absorbed(done, r)),
                Ok(Pass::AppliedQueued(r)) => done = Some(absorbed(done, r)),
                Ok(Pass::QueuedOwn) => {
                    info!(fleet = %name, "intent queued after lost races");
                    (intent, key, queued_own) = (None, None, true);
                }
                // Queued, the intent is safe: a reconcile that fails now is in the report, and
                // the schedule's reconcile applies it.
                Err(e) if queued_own => {
                    warn!(fleet = %name, error = %e, "reconcile after queueing the intent failed");
                    let mut r = done.unwrap_or_else(|| FleetReport {
                        fleet: name.clone(),
                        outcome: FleetOutcome::Queued,
                        version: 0,
                        changes: Vec::new(),
                        launched: Vec::new(),
                        terminated: Vec::new(),
                        failures: Vec::new(),
                    });
                    r.failures.push(e.to_string());
                    return Ok(r);
                }
                // Other events' queued intents were applied, this call's own work failed: an
                // intent not yet recorded fails the call (the event is delivered again).
                Err(e) => match done {
                    Some(mut r) if intent.is_none() => {
                        r.failures.push(e.to_string());
                        return Ok(r);
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    /// One pass over the fleet: the oldest queued intent if the inbox holds any (then the caller
    /// passes again), else `intent` and a reconcile against EC2 — or, after lost races, `intent`
    /// put in the inbox. Retries lost races itself, up to `attempts` in all.
    #[allow(clippy::too_many_arguments)]
    async fn reconcile_pass(
        &self,
        name: &FleetName,
        intent: Option<&Intent>,
        event_time: Timestamp,
        cause: &Cause,
        key: Option<&EventKey>,
        attempts: usize,
        deadline: Deadline,
    ) -> Result<Pass> {
        for attempt in 0..attempts {
            // On a busy fleet, short instance events keep winning the race against a plan that
            // also read EC2 (measured: 1.7 % of a storm's fleet-wide events dead-lettered). Past a
            // few lost races the intent — what must not be lost — goes to the fleet's inbox, a
            // write no race can fail, and the fleet is reconciled after it. One write, so made
            // even within the deadline's reserve. (Not whenever the inbox holds intents: then
            // every fleet-wide event drains it, all racing for its first item — in the simulator
            // that kept intents queued four times longer.)
            if let (Some(intent), Some(key)) = (intent, key) {
                if attempt >= QUEUE_AFTER_CONFLICTS {
                    let queued = QueuedIntent {
                        intent: intent.clone(),
                        event_time,
                        cause: cause.clone(),
                    };
                    return match self.store.enqueue(name, &queued, key, self.now()).await {
                        Ok(()) => Ok(Pass::QueuedOwn),
                        Err(
                            seen
                            @ (Error::Duplicate(_) | Error::InFlight(_) | Error::Unfinished(_)),
                        ) => {
                            let fleet = self.store.load_partial(name, &[]).await?;
                            self.already_handled(name, &fleet, seen, event_time, cause, deadline)
                                .await
                                .map(Pass::Done)
                        }
                        Err(e) => Err(e),
                    };
                }
            }
            deadline.check("plan a change")?;
            let fleet = self.store.load_fleet(name).await?;
            // Queued intents go first, one per commit, each recorded with its own event as the
            // cause; what this pass was for follows once they are applied.
            let queued = fleet.inbox.first();
            let (this_cause, this_key) = match queued {
                Some(q) => (&q.cause, None),
                None => (cause, key),
            };
            let observed = self.compute.describe_fleet(name).await?;
            let now = self.now();
            let step = match (queued, intent) {
                (Some(q), _) => planner::apply_queued(&fleet, q, now),
                (None, Some(i)) => match planner::apply_intent(&fleet, i, event_time, now) {
                    Ok(step) => step,
                    Err(e) => {
                        // A redelivery may no longer apply (a delta below zero, say): it is a
                        // duplicate, not bad input.
                        if let Some(key) = key {
                            if let Err(seen) = self.store.check_event(key, now).await {
                                return self
                                    .already_handled(
                                        name, &fleet, seen, event_time, cause, deadline,
                                    )
                                    .await
                                    .map(Pass::Done);
                            }
                        }
                        return Err(e.into());
                    }
                },
                (None, None) => Step::unchanged(&fleet),
            };
            let step = step.then_reconcile(&observed, now);
            // (A queued intent is always committed: its commit deletes it from the inbox.)
            if step.is_noop() && queued.is_none() {
                return Ok(Pass::Done(report(
                    name,
                    FleetOutcome::Unchanged,
                    &fleet,
                    Vec::new(),
                )));
            }
            // Commands follow: the event stays in progress until they are recorded.
            let in_progress = !step.commands.is_empty();
            let record = match queued {
                Some(q) => Some(EventRecord::Dequeue(q)),
                None => key.map(|key| EventRecord::Claim {
                    key,
                    in_progress_until: in_progress.then(|| deadline.in_progress_until(now)),
                }),
            };
            match self
                .store
                .commit(&fleet, &step, this_cause, record, now)
                .await
            {
                Ok(committed) => {
                    self.announce(&committed, &step.changes).await;
                    let claimed = this_key.filter(|_| in_progress);
                    let done =
                        Box::pin(self.execute(committed, step, this_cause, claimed, deadline))
                            .await?;
                    return Ok(match queued {
                        Some(_) => Pass::AppliedQueued(done),
                        None => Pass::Done(done),
                    });
                }
                Err(Error::Conflict(_)) => backoff(attempt).await,
                Err(seen @ (Error::Duplicate(_) | Error::InFlight(_) | Error::Unfinished(_))) => {
                    return self
                        .already_handled(name, &fleet, seen, event_time, cause, deadline)
                        .await
                        .map(Pass::Done)
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(name.to_string()))
    }

    /// A delivery of an event that has a record already (`seen`, from the store): completed or in
    /// the hands of a live invocation — return without acting; applied by an invocation whose
    /// time ran out — reconcile the fleet to finish its work, without applying the intent again.
    async fn already_handled(
        &self,
        name: &FleetName,
        fleet: &Fleet,
        seen: Error,
        event_time: Timestamp,
        cause: &Cause,
        deadline: Deadline,
    ) -> Result<FleetReport> {
        match seen {
            Error::Duplicate(_) => {
                info!(fleet = %name, "duplicate event; handled before");
                Ok(report(name, FleetOutcome::Duplicate, fleet, Vec::new()))
            }
            Error::InFlight(_) => {
                info!(fleet = %name, "duplicate event; being handled by another invocation");
                Ok(report(name, FleetOutcome::InFlight, fleet, Vec::new()))
            }
            Error::Unfinished(_) => {
                info!(fleet = %name, "duplicate of an unfinished event; reconciling without it");
                let mut r = Box::pin(Box::pin(
                    self.reconcile_within(name, None, event_time, cause, None, deadline),
                ))
                .await?;
                r.outcome = FleetOutcome::Duplicate;
                Ok(r)
            }
            other => Err(other),
        }
    }

    /// An event about one instance: reads only that instance and its fleet's record.
    async fn instance_event(
        &self,
        id: &InstanceId,
        intent: &Intent,
        event_time: Timestamp,
        cause: &Cause,
        key: &EventKey,
        deadline: Deadline,
    ) -> Result<FleetReport> {
        for attempt in 0..conflict_attempts(deadline) {
            deadline.check("plan a change")?;
            let fleet = self.store.load_for_instance(id).await?;
            let now = self.now();
            let step = match planner::apply_intent(&fleet, intent, event_time, now) {
                Ok(step) => step,
                Err(e) => {
                    if let Err(seen) = self.store.check_event(key, now).await {
                        let name = fleet.spec.name.clone();
                        return self
                            .already_handled(&name, &fleet, seen, event_time, cause, deadline)
                            .await;
                    }
                    return Err(e.into());
                }
            };
            let in_progress = !step.commands.is_empty();
            let record = EventRecord::Claim {
                key,
                in_progress_until: in_progress.then(|| deadline.in_progress_until(now)),
            };
            match self
                .store
                .commit(&fleet, &step, cause, Some(record), now)
                .await
            {
                Ok(committed) => {
                    self.announce(&committed, &step.changes).await;
                    let needs_fleet = step
                        .changes
                        .iter()
                        .any(|c| matches!(c, Change::RepairDeferred { .. }))
                        || self.completes_wave(&committed, &step.changes).await?;
                    let name = committed.spec.name.clone();
                    let claimed = in_progress.then_some(key);
                    let mut done =
                        Box::pin(self.execute(committed, step, cause, claimed, deadline)).await?;
                    if needs_fleet {
                        // The breaker decides on the whole fleet (and names what the failures
                        // share): reconcile it now rather than at the next schedule.
                        let full = self
                            .reconcile_within(&name, None, event_time, cause, None, deadline)
                            .await?;
                        done.absorb(full);
                    }
                    return Ok(done);
                }
                Err(seen @ (Error::Duplicate(_) | Error::InFlight(_) | Error::Unfinished(_))) => {
                    let name = fleet.spec.name.clone();
                    return self
                        .already_handled(&name, &fleet, seen, event_time, cause, deadline)
                        .await;
                }
                Err(Error::Conflict(_)) => backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(id.to_string()))
    }

    /// Whether an instance event may have made the rollout's current wave healthy (see
    /// `planner::wave_to_recheck`): then the fleet is reconciled at once.
    async fn completes_wave(&self, fleet: &Fleet, changes: &[Change]) -> Result<bool> {
        let Some(wave) = planner::wave_to_recheck(fleet, changes) else {
            return Ok(false);
        };
        let members = self.store.load_partial(&fleet.spec.name, wave).await?;
        Ok(planner::wave_healthy(&members))
    }

    /// Publishes the transitions users route to chat or paging (`RolloutStarted`, `WaveHealthy`,
    /// `RolloutRollingBack`, `ReplacementHalted`, ...). After the commit, best effort: the history
    /// is the record; a lost notification is logged, never retried into a second decision.
    async fn announce(&self, fleet: &Fleet, changes: &[Change]) {
        let events: Vec<OutgoingEvent> = phoenix_core::events::published(&fleet.spec.name, changes)
            .into_iter()
            .map(|(detail_type, detail)| OutgoingEvent {
                detail_type: detail_type.into(),
                detail,
                resources: Vec::new(),
            })
            .collect();
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.bus.publish(&events).await {
            warn!(fleet = %fleet.spec.name, error = %e, "could not publish {} events", events.len());
        }
    }

    /// Carries out a committed step's commands and records what came of them. `claimed`: the
    /// event whose record this invocation holds `INPROGRESS`, marked `COMPLETED` with the outcomes
    /// once every command has a known outcome.
    async fn execute(
        &self,
        mut fleet: Fleet,
        step: Step,
        cause: &Cause,
        claimed: Option<&EventKey>,
        deadline: Deadline,
    ) -> Result<FleetReport> {
        let name = fleet.spec.name.clone();
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        // Commands not started (time short) or whose outcome is unknown: their decisions stay as
        // committed, and the next reconcile finishes them once their lease runs out.
        let mut unsettled = 0usize;
        let mut deferred = false;
        let mut launched_ok = std::collections::BTreeSet::new();
        // Decisions this invocation committed just now (not ones carried out again).
        let fresh: std::collections::BTreeSet<&String> = step
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::LaunchDecided { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        let (first, rest): (Vec<&Command>, Vec<&Command>) = step.commands.iter().partition(|c| {
            matches!(
                c,
                Command::Terminate {
                    after_launch: None,
                    ..
                }
            )
        });
        let (launches, after): (Vec<&Command>, Vec<&Command>) = rest
            .into_iter()
            .partition(|c| matches!(c, Command::Launch { .. }));
        for cmd in first.into_iter().chain(launches).chain(after) {
            if deadline.is_short() {
                if !deferred {
                    deferred = true;
                    failures.push(
                        "deferred: the invocation's time is short; the next reconcile carries \
                         out the rest"
                            .to_string(),
                    );
                }
                unsettled += 1;
                continue;
            }
            match cmd {
                Command::Launch {
                    token,
                    image,
                    count,
                } => match self
                    .compute
                    .launch(&fleet.spec, token, image, *count, fresh.contains(token))
                    .await
                {
                    Ok(out) if !out.instances.is_empty() => {
                        launched_ok.insert(token.clone());
                        outcomes.push(Outcome::Launched {
                            token: token.clone(),
                            instances: out.instances,
                            request_ids: out.request_id.into_iter().collect(),
                        });
                    }
                    Ok(_) => outcomes.push(Outcome::LaunchFailed {
                        token: token.clone(),
                        error: "EC2 launched nothing".into(),
                    }),
                    // A timeout, a lost connection or a 5xx may hide a launch that happened: the
                    // decision stays pending (not failed), so the next reconcile adopts what
                    // carries its token, or launches again with the same ClientToken once the
                    // lease runs out. Recording it as failed would drop the decision and reap the
                    // instance as an orphan.
                    Err(e @ Error::Transient { .. }) => {
                        warn!(fleet = %name, %token, error = %e, "launch outcome unknown");
                        failures.push(format!("launch {token} (outcome unknown): {e}"));
                        unsettled += 1;
                    }
                    Err(e) => {
                        warn!(fleet = %name, %token, error = %e, "launch failed");
                        failures.push(format!("launch {token}: {e}"));
                        outcomes.push(Outcome::LaunchFailed {
                            token: token.clone(),
                            error: e.to_string(),
                        });
                    }
                },
                Command::Terminate {
                    instances,
                    after_launch,
                } => {
                    if after_launch
                        .as_ref()
                        .is_some_and(|t| !launched_ok.contains(t))
                    {
                        continue; // its replacement did not launch: keep it for now
                    }
                    match self.compute.terminate(&name, instances).await {
                        Ok(out) => {
                            let gone = out.gone;
                            let kept: Vec<InstanceId> = instances
                                .iter()
                                .filter(|i| !gone.contains(i))
                                .cloned()
                                .collect();
                            if !kept.is_empty() {
                                outcomes.push(Outcome::TerminateFailed {
                                    instances: kept,
                                    error: "not tagged with this fleet in EC2; left alone".into(),
                                });
                            }
                            outcomes.push(Outcome::Terminated {
                                instances: gone,
                                request_ids: out.request_ids,
                            });
                        }
                        Err(e) => {
                            warn!(fleet = %name, error = %e, "terminate failed");
                            failures.push(format!("terminate: {e}"));
                            outcomes.push(Outcome::TerminateFailed {
                                instances: instances.clone(),
                                error: e.to_string(),
                            });
                        }
                    }
                }
            }
        }
        let mut changes = step.changes;
        if outcomes.is_empty() {
            return Ok(
                report(&name, FleetOutcome::Changed, &fleet, changes).with_failures(failures)
            );
        }
        let involved: Vec<InstanceId> = fleet.instances.keys().cloned().collect();
        // The event is completed with the last part: until then a crash leaves it in progress,
        // and the next reconcile finishes what the other parts did not record.
        let completes = claimed
            .filter(|_| unsettled == 0)
            .map(EventRecord::Complete);
        let parts = planner::outcome_parts(&outcomes);
        let last = parts.len() - 1;
        for (k, part) in parts.into_iter().enumerate() {
            let event = completes.filter(|_| k == last);
            let (committed, recorded) = self
                .record_part(fleet, &involved, &outcomes, part, cause, event, deadline)
                .await?;
            changes.extend(recorded);
            fleet = committed;
        }
        Ok(report(&name, FleetOutcome::Changed, &fleet, changes).with_failures(failures))
    }

    /// Commits one part of a step's outcomes (`planner::outcome_parts`). Recording outcomes is
    /// what the deadline's reserve is kept for: retried until the deadline itself (an unrecorded
    /// launch is adopted by the next reconcile anyway). Returns the fleet as committed and the
    /// changes recorded.
    #[allow(clippy::too_many_arguments)]
    async fn record_part(
        &self,
        mut fleet: Fleet,
        involved: &[InstanceId],
        outcomes: &[Outcome],
        part: std::ops::Range<usize>,
        cause: &Cause,
        event: Option<EventRecord<'_>>,
        deadline: Deadline,
    ) -> Result<(Fleet, Vec<Change>)> {
        let name = fleet.spec.name.clone();
        for attempt in 0..conflict_attempts(deadline) {
            if deadline.remaining() == Some(Duration::ZERO) {
                break;
            }
            let now = self.now();
            let record = planner::record_outcome_part(&fleet, outcomes, part.clone(), now);
            match self.store.commit(&fleet, &record, cause, event, now).await {
                Ok(committed) => {
                    self.announce(&committed, &record.changes).await;
                    return Ok((committed, record.changes));
                }
                Err(Error::Conflict(_)) => {
                    backoff(attempt).await;
                    fleet = if fleet.complete {
                        self.store.load_fleet(&name).await?
                    } else {
                        self.store.load_partial(&name, involved).await?
                    };
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(name.to_string()))
    }
}

async fn backoff(attempt: usize) {
    // Exponential (10 ms doubling, capped at 1 s) with "equal jitter": between half and all of
    // it, so racing writers spread out and each loser still waits longer than the last time.
    let cap = 10u64 << attempt.min(7);
    let cap = cap.min(1000);
    let r = u64::from(u16::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..2]
            .try_into()
            .unwrap_or_default(),
    ));
    tokio::time::sleep(Duration::from_millis(cap / 2 + r % (cap / 2 + 1))).await;
}

fn report(
    name: &FleetName,
    outcome: FleetOutcome,
    fleet: &Fleet,
    changes: Vec<Change>,
) -> FleetReport {
    let mut launched = Vec::new();
    let mut terminated = Vec::new();
    for c in &changes {
        match c {
            Change::Launched { instances, .. } => launched.extend(instances.iter().cloned()),
            Change::Terminated { instances, .. } => terminated.extend(instances.iter().cloned()),
            _ => {}
        }
    }
    FleetReport {
        fleet: name.clone(),
        outcome,
        version: fleet.version,
        changes,
        launched,
        terminated,
        failures: Vec::new(),
    }
}

impl FleetReport {
    fn with_failures(mut self, failures: Vec<String>) -> Self {
        self.failures = failures;
        self
    }
}

impl<S: StateStore, C: Compute, B: Bus> Controller<S, C, B> {
    /// Creates or updates a fleet from its spec (`phoenix fleet apply`). The image must exist. The
    /// fleet is then reconciled by the reconcile function, on the `ReconcileRequested` event the
    /// caller publishes.
    pub async fn apply_fleet(&self, spec: phoenix_core::model::FleetSpec) -> Result<FleetReport> {
        spec.validate()?;
        let Some(facts) = self.compute.describe_image(&spec.image).await? else {
            return Err(Error::NotFound(format!(
                "image {} does not exist or is not available to this account",
                spec.image
            )));
        };
        // The file's own image passes the gate it declares, like any other.
        if let Some(Err(reason)) = spec
            .admission
            .as_ref()
            .map(|a| a.admits(&spec.image, &facts))
        {
            return Err(phoenix_core::Error::invalid("image", reason).into());
        }
        let cause = Cause::internal("FleetApplied");
        for attempt in 0..MAX_CONFLICTS {
            let now = self.now();
            let (before, step) = match self.store.load_fleet(&spec.name).await {
                Ok(fleet) => {
                    let step = planner::update_spec(&fleet, spec.clone(), now)?;
                    (fleet, step)
                }
                Err(Error::NotFound(_)) => {
                    let step = planner::create_fleet(spec.clone(), now)?;
                    (step.fleet.clone(), step)
                }
                Err(e) => return Err(e),
            };
            match self.store.commit(&before, &step, &cause, None, now).await {
                Ok(committed) => {
                    return Ok(report(
                        &spec.name,
                        FleetOutcome::Changed,
                        &committed,
                        step.changes,
                    ))
                }
                Err(Error::Conflict(_)) => backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(spec.name.to_string()))
    }
}
