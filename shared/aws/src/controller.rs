//! The controller: one event in, the fleet reconciled, every decision recorded.
//!
//! Each step documents what holds if the invocation dies right after it:
//! 1. *parse* — nothing written; a bad event is rejected with its reason.
//! 2. *plan + commit* — the intent, the decisions (launches as pending, terminations as decided)
//!    and the history entry are written in one conditional transaction. Lost race → re-read and
//!    re-plan. Crash after: the next reconcile finds the pending launches and decided terminations
//!    and finishes them once their lease runs out.
//! 3. *execute* — terminations already covered, then launches (EC2 ClientToken = decision token,
//!    instances tagged at creation), then terminations that waited for a launch. Crash after any
//!    call: the tags let the next reconcile adopt what was launched; terminating again is harmless.
//! 4. *record outcomes* — instance ids and terminations are committed the same way as 2.

use crate::bus::{Bus, EventBridgeBus, OutgoingEvent};
use crate::compute::{Compute, Ec2Compute};
use crate::config::{load_sdk_config, Settings};
use crate::error::{Error, Result};
use crate::store::{DynamoStore, EventKey, StateStore};
use phoenix_core::events::{Cause, Change, Envelope, Intent};
use phoenix_core::model::{Fleet, Timestamp};
use phoenix_core::patterns::{route, Function};
use phoenix_core::planner::{self, Command, Outcome, Step};
use phoenix_core::{FleetName, InstanceId};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How often a commit may lose the race for one fleet before the invocation gives up (and is
/// retried by Lambda). Each loss means another writer made progress, so this is not a livelock.
const MAX_CONFLICTS: usize = 10;

/// A source of the current time; tests pin it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(chrono::Utc::now)
}

pub struct Controller<S, C, B> {
    pub store: S,
    pub compute: C,
    pub bus: B,
    pub clock: Clock,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetOutcome {
    /// Changes were committed (and carried out).
    Changed,
    /// Nothing to do.
    Unchanged,
    /// This event was handled before; its intent was not applied again (the fleet was still
    /// reconciled, and `changes` lists what that did).
    Duplicate,
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
        let fleets = match &intent {
            Intent::ImageReady { fleet, image } => {
                if !self.compute.image_exists(image).await? {
                    return Err(Error::NotFound(format!(
                        "image {image} does not exist or is not available to this account"
                    )));
                }
                vec![
                    self.reconcile_fleet(fleet, Some(&intent), env.time, &cause, Some(&key))
                        .await?,
                ]
            }
            Intent::Scale { fleet, .. }
            | Intent::RolloutControl { fleet, .. }
            | Intent::ClearQuarantine { fleet, .. } => vec![
                self.reconcile_fleet(fleet, Some(&intent), env.time, &cause, Some(&key))
                    .await?,
            ],
            Intent::HealthCheckFailed { instance, .. } | Intent::HealthCheckPassed { instance } => {
                vec![
                    self.instance_event(instance, &intent, env.time, &cause, &key)
                        .await?,
                ]
            }
            Intent::Reconcile { fleet: Some(name) } => vec![
                self.reconcile_fleet(name, None, env.time, &cause, None)
                    .await?,
            ],
            // Every fleet: one that fails must not stop the others. Its failure is in the report
            // and the log; the next schedule tries again.
            Intent::Reconcile { fleet: None } => {
                let mut reports = Vec::new();
                for name in self.store.list_fleets().await? {
                    match self
                        .reconcile_fleet(&name, None, env.time, &cause, None)
                        .await
                    {
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
        for attempt in 0..MAX_CONFLICTS {
            let fleet = self.store.load_fleet(name).await?;
            let observed = self.compute.describe_fleet(name).await?;
            let now = self.now();
            let step = match intent {
                Some(i) => planner::apply_intent(&fleet, i, event_time, now)?,
                None => Step::unchanged(&fleet),
            }
            .then(|f| planner::reconcile(f, &observed, now));
            if step.is_noop() {
                return Ok(report(name, FleetOutcome::Unchanged, &fleet, Vec::new()));
            }
            match self
                .store
                .commit(&fleet, &step, cause, intent.and(key), now)
                .await
            {
                Ok(committed) => {
                    self.announce(&committed, &step.changes).await;
                    return self.execute(committed, step, cause).await;
                }
                // Handled before: do not apply the intent again, but still reconcile (level-triggered:
                // the earlier delivery may have died before finishing its work).
                Err(Error::Duplicate(_)) => {
                    info!(fleet = %name, "duplicate event; reconciling without it");
                    let mut r =
                        Box::pin(self.reconcile_fleet(name, None, event_time, cause, None)).await?;
                    r.outcome = FleetOutcome::Duplicate;
                    return Ok(r);
                }
                Err(Error::Conflict(_)) => backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(name.to_string()))
    }

    /// An event about one instance: reads only that instance and its fleet's record.
    async fn instance_event(
        &self,
        id: &InstanceId,
        intent: &Intent,
        event_time: Timestamp,
        cause: &Cause,
        key: &EventKey,
    ) -> Result<FleetReport> {
        for attempt in 0..MAX_CONFLICTS {
            let fleet = self.store.load_for_instance(id).await?;
            let now = self.now();
            let step = planner::apply_intent(&fleet, intent, event_time, now)?;
            match self
                .store
                .commit(&fleet, &step, cause, Some(key), now)
                .await
            {
                Ok(committed) => {
                    self.announce(&committed, &step.changes).await;
                    let needs_fleet = step
                        .changes
                        .iter()
                        .any(|c| matches!(c, Change::RepairDeferred { .. }));
                    let name = committed.spec.name.clone();
                    let mut done = self.execute(committed, step, cause).await?;
                    if needs_fleet {
                        // The breaker decides on the whole fleet (and names what the failures
                        // share): reconcile it now rather than at the next schedule.
                        let full = self
                            .reconcile_fleet(&name, None, event_time, cause, None)
                            .await?;
                        done.changes.extend(full.changes);
                        done.launched.extend(full.launched);
                        done.terminated.extend(full.terminated);
                        done.failures.extend(full.failures);
                        done.version = done.version.max(full.version);
                    }
                    return Ok(done);
                }
                Err(Error::Duplicate(_)) => {
                    return Ok(report(
                        &fleet.spec.name,
                        FleetOutcome::Duplicate,
                        &fleet,
                        Vec::new(),
                    ))
                }
                Err(Error::Conflict(_)) => backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(id.to_string()))
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

    /// Carries out a committed step's commands and records what came of them.
    async fn execute(&self, mut fleet: Fleet, step: Step, cause: &Cause) -> Result<FleetReport> {
        let name = fleet.spec.name.clone();
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        let mut launched_ok = std::collections::BTreeSet::new();
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
            match cmd {
                Command::Launch {
                    token,
                    image,
                    count,
                } => match self.compute.launch(&fleet.spec, token, image, *count).await {
                    Ok(instances) if !instances.is_empty() => {
                        launched_ok.insert(token.clone());
                        outcomes.push(Outcome::Launched {
                            token: token.clone(),
                            instances,
                        });
                    }
                    Ok(_) => outcomes.push(Outcome::LaunchFailed {
                        token: token.clone(),
                        error: "EC2 launched nothing".into(),
                    }),
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
                        Ok(gone) => {
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
                            outcomes.push(Outcome::Terminated { instances: gone });
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
        for attempt in 0..MAX_CONFLICTS {
            let now = self.now();
            let record = planner::record_outcomes(&fleet, &outcomes, now);
            match self.store.commit(&fleet, &record, cause, None, now).await {
                Ok(committed) => {
                    self.announce(&committed, &record.changes).await;
                    changes.extend(record.changes);
                    return Ok(report(&name, FleetOutcome::Changed, &committed, changes)
                        .with_failures(failures));
                }
                Err(Error::Conflict(_)) => {
                    backoff(attempt).await;
                    fleet = if fleet.complete {
                        self.store.load_fleet(&name).await?
                    } else {
                        self.store.load_partial(&name, &involved).await?
                    };
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(name.to_string()))
    }
}

async fn backoff(attempt: usize) {
    // Small, growing, jittered pause so racing writers spread out.
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 20;
    tokio::time::sleep(Duration::from_millis(10 * (attempt as u64 + 1) + jitter)).await;
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
            Change::Terminated { instances } => terminated.extend(instances.iter().cloned()),
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
        if !self.compute.image_exists(&spec.image).await? {
            return Err(Error::NotFound(format!(
                "image {} does not exist or is not available to this account",
                spec.image
            )));
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
