//! The controller: one event in, the fleet reconciled, every decision recorded.
//!
//! Each step documents what holds if the invocation dies right after it:
//! 1. *parse* — nothing written; a bad event is rejected with its reason.
//! 2. *plan + commit* (`pass`, `instance`) — the intent, the decisions (launches as pending,
//!    terminations as decided), the history entry and the notifications the change publishes (one
//!    item in the fleet's outbox, `store::outbox`) are written in one conditional transaction.
//!    Lost race → re-read and re-plan. Crash after: the next reconcile finds the pending launches
//!    and decided terminations and finishes them once their lease runs out, and publishes the
//!    notifications (3). A fleet-wide event that lost three races puts its intent in the fleet's
//!    inbox instead (`QueuedIntent`), with its record completed, in one write no race can fail.
//!    Crash after: every pass over the whole fleet applies queued intents first, one commit each,
//!    which deletes the intent it applied.
//! 3. *publish* (`execute::announce`) — the commit's notifications go to the bus (PutEvents), each
//!    with the id its commit gave it; then their outbox item is removed. Crash before PutEvents,
//!    or PutEvents failing: they wait in the outbox, and every pass over the whole fleet first
//!    publishes (then removes) what its load found there for longer than `OUTBOX_GRACE`. Crash
//!    after PutEvents, before the removal: that pass publishes them again, with the same ids (at
//!    least once; a consumer drops a repeat by its id). Crash after the removal: nothing is left
//!    to do.
//! 4. *execute* (`execute`) — terminations already covered, then launches (EC2 ClientToken =
//!    decision token, instances tagged at creation), then terminations that waited for a launch.
//!    Crash after any call: the tags let the next reconcile adopt what was launched; terminating
//!    again is harmless.
//! 5. *record outcomes* (`execute`) — instance ids and terminations are committed the same way as
//!    2, in as many transactions as they need (`planner::outcome_parts`), each part's
//!    notifications (`InstanceReplaced`, `WaveHealthy`, ...) in its own transaction and published
//!    as in 3. Crash between two: the next reconcile finishes what the later parts would have
//!    recorded, as after a crash before 5.
//!
//! The event's record (`EVENT#<id>`) rides in those transactions: claimed in 2 (`INPROGRESS`
//! until the invocation's deadline, or `COMPLETED` when no command follows), completed in 5. A
//! delivery that finds it `COMPLETED` or `INPROGRESS` returns without acting; one that finds it
//! `INPROGRESS` past its owner's deadline reconciles the fleet (the intent is never applied twice).
//! Near its deadline an invocation starts no new command: what it committed but did not carry out
//! is finished by the next reconcile once its lease runs out, exactly as after a crash.
//!
//! Time comes from the `Time` port only: the same code runs in Lambda and in the simulator.

mod adopt;
mod aws_events;
mod digest;
mod execute;
mod instance;
mod observe;
mod pass;
pub mod report;
mod sweep;

pub use adopt::{Adopted, Selection};
use digest::fnv;
pub use report::{FleetOutcome, FleetReport, Report};

use crate::budget::Budget;
use crate::compute::Compute;
use crate::error::{Error, Result};
use crate::planner::{CorePlanner, Planner};
use crate::ports::images::{ImageResolver, StaticImageResolver};
use crate::ports::{Deadline, Ports, Reach, Time};
use crate::store::{EventKey, Store};
use crate::targets::TargetGroups;
use crate::variant::Variant;
use phoenix_core::aws_events::{AwsEvent, SourcePolicy};
use phoenix_core::dryrun::{self, SpecPlan};
use phoenix_core::events::{Cause, Envelope, Intent};
use phoenix_core::images::{self, AllowedImageAccounts};
use phoenix_core::model::{FleetSpec, Location, Timestamp};
use phoenix_core::patterns::{route, Function};
use phoenix_core::planner::{self, Resolved};
use phoenix_core::FleetName;
use phoenix_core::ImageId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

/// How often a commit may lose the race for one fleet before the invocation gives up (and is
/// retried by Lambda). Each loss means another writer made progress, so this is not a livelock.
/// Without a deadline (CLI, local dispatcher) this bounds the retries; with one, the deadline
/// does (up to `MAX_CONFLICTS_WITHIN_DEADLINE`): under 50 concurrent invocations on one fleet,
/// ten attempts left events failing three invocations in a row (dead-lettered), while retrying
/// until the reserve lost none (BENCHMARKS.md).
pub const MAX_CONFLICTS: usize = 10;
pub const MAX_CONFLICTS_WITHIN_DEADLINE: usize = 200;
/// Lost races after which an event puts its intent in the fleet's inbox (a fleet-wide one, or
/// one about an instance).
pub const QUEUE_AFTER_CONFLICTS: usize = 3;

/// When an event's record stays `INPROGRESS` with no deadline known (CLI, local dispatcher): the
/// lease a write-ahead decision gets, for the same reason — longer than an invocation lives.
const IN_PROGRESS_WITHOUT_DEADLINE: chrono::Duration = planner::LEASE;

/// What the controller needs to take in events and images beyond its ports: which accounts and
/// sources it accepts events from, which accounts' images it may launch, and how it learns what
/// an Image Builder build produced.
#[derive(Clone)]
pub struct Intake {
    pub policy: SourcePolicy,
    /// Every image phoenix would launch — a fleet file's, `ImageReady`'s, an AMI or Image Builder
    /// event's — must be owned by one of these accounts (empty: any).
    pub image_accounts: AllowedImageAccounts,
    pub images: Arc<dyn ImageResolver>,
    /// The account and region phoenix runs in, where fleets without their own live (unknown:
    /// an AWS event's account and region are not checked against such fleets).
    pub home_account: Option<String>,
    pub home_region: Option<String>,
    /// phoenix's share of each account and region's EC2 request rate, requests a second, across
    /// all its invocations (`budget`); none: no budget.
    pub ec2_calls_per_second: Option<u32>,
}

impl Default for Intake {
    /// Any account, every known source, images of any account, no Image Builder (builds must be
    /// registered).
    fn default() -> Self {
        Intake {
            policy: SourcePolicy::default(),
            image_accounts: AllowedImageAccounts::default(),
            images: Arc::new(StaticImageResolver::default()),
            home_account: None,
            home_region: None,
            ec2_calls_per_second: None,
        }
    }
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("policy", &self.policy)
            .field("image_accounts", &self.image_accounts)
            .field("home_account", &self.home_account)
            .field("home_region", &self.home_region)
            .field("ec2_calls_per_second", &self.ec2_calls_per_second)
            .finish_non_exhaustive()
    }
}

/// What phoenix calls in one account and region: EC2, the target groups, Auto Scaling.
pub struct Apis<P: Ports> {
    pub compute: Compute<P::Ec2>,
    pub targets: TargetGroups<P::Elb>,
    pub autoscaling: P::AutoScaling,
}

impl<P: Ports> Apis<P> {
    pub fn new(ec2: P::Ec2, elb: P::Elb, autoscaling: P::AutoScaling) -> Self {
        Apis {
            compute: Compute::new(ec2),
            targets: TargetGroups::new(elb),
            autoscaling,
        }
    }
}

pub struct Controller<P: Ports> {
    pub store: Store<P::Table>,
    /// Where phoenix runs: fleets without an account or region of their own.
    pub home: Arc<Apis<P>>,
    /// Other accounts and regions, reached once per process and kept.
    reach: P::Reach,
    remote: Mutex<BTreeMap<Location, Arc<Apis<P>>>>,
    pub bus: P::Bus,
    pub time: P::Time,
    /// Accounts and sources events are accepted from; Image Builder.
    pub intake: Intake,
    planner: Arc<dyn Planner>,
    variant: Variant,
}

/// What applying a fleet file would do (`Controller::preview_fleet`). As JSON, tagged by
/// `"action"`: `create`, or `update` with the fields of `SpecPlan`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Preview {
    /// The fleet does not exist: it would be created, and launched to its capacity.
    Create {
        fleet: String,
        capacity: u32,
        image: ImageId,
        /// The fingerprint of the launch definition its instances would carry.
        definition: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        template_version: Option<String>,
        /// The spec as it would be stored.
        spec: Box<FleetSpec>,
    },
    Update(Box<SpecPlan>),
}

/// Where a fleet lives, for messages: `this account`, or its account and region.
fn where_(spec: &FleetSpec) -> String {
    let location = spec.location();
    if location.is_home() {
        "this account and region".into()
    } else {
        location.describe()
    }
}

/// The record key of an event: its id, and a hash of its content so a different payload reusing
/// the id is caught. FNV-1a: stable across processes and versions, unlike std's hasher.
pub fn event_key(env: &Envelope) -> EventKey {
    let content = format!("{}\n{}\n{}", env.source, env.detail_type, env.detail);
    EventKey {
        id: env.id.clone(),
        hash: fnv(&content),
    }
}

/// An event sent to a function that does not handle its kind is refused (a misconfigured rule).
fn refuse_misrouted(env: &Envelope, function: Option<Function>) -> Result<()> {
    match function {
        Some(f) if route(&env.source, &env.detail_type) != Some(f) => {
            Err(phoenix_core::Error::Event(format!(
                "the {} function does not handle {}",
                f.name(),
                env.detail_type
            ))
            .into())
        }
        _ => Ok(()),
    }
}

impl<P: Ports> Controller<P> {
    pub fn new(
        store: P::Table,
        home: Apis<P>,
        reach: P::Reach,
        bus: P::Bus,
        time: P::Time,
        intake: Intake,
    ) -> Self {
        let mut home = home;
        if let Some(per_second) = intake.ec2_calls_per_second {
            let home_location = format!(
                "{}/{}",
                intake.home_account.as_deref().unwrap_or("home"),
                intake.home_region.as_deref().unwrap_or("home")
            );
            home.compute.set_budget(Arc::new(Budget::new(
                store.clone(),
                time.clone(),
                home_location,
                per_second,
            )));
        }
        Controller {
            store: Store::new(store),
            home: Arc::new(home),
            reach,
            remote: Mutex::new(BTreeMap::new()),
            bus,
            time,
            intake,
            planner: Arc::new(CorePlanner),
            variant: Variant::Real,
        }
    }

    /// The controller planning with `planner` instead of the core's (the simulator's broken
    /// planners).
    pub fn with_planner(mut self, planner: Arc<dyn Planner>) -> Self {
        self.planner = planner;
        self
    }

    /// The controller with one of the simulator's deliberate bugs (`Variant`).
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self.store = self.store.with_variant(variant);
        if let Some(home) = Arc::get_mut(&mut self.home) {
            home.compute.set_variant(variant);
        }
        self
    }

    /// The APIs of the account and region `spec` lives in: phoenix's own, or those reached
    /// through the fleet's role (once per process: the role's credentials refresh themselves).
    pub async fn apis(&self, spec: &FleetSpec) -> Result<Arc<Apis<P>>> {
        let location = spec.location();
        if location.is_home() {
            return Ok(self.home.clone());
        }
        if let Some(apis) = self.remote_apis(&location) {
            return Ok(apis);
        }
        // Boxed: the future of an STS call is large, and every caller's future would hold it.
        let (ec2, elb, autoscaling) = Box::pin(self.reach.reach(&location)).await?;
        let mut apis = Apis::new(ec2, elb, autoscaling);
        apis.compute.set_variant(self.variant);
        if let Some(per_second) = self.intake.ec2_calls_per_second {
            apis.compute.set_budget(Arc::new(Budget::new(
                self.store.table().clone(),
                self.time.clone(),
                location.describe(),
                per_second,
            )));
        }
        let apis = Arc::new(apis);
        self.remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(location, apis.clone());
        Ok(apis)
    }

    /// Whether an AWS event from its account and region may concern a fleet of this spec.
    fn accepts(&self, spec: &FleetSpec, env: &Envelope) -> bool {
        spec.location().accepts(
            self.intake.home_account.as_deref(),
            self.intake.home_region.as_deref(),
            env.account.as_deref(),
            env.region.as_deref(),
        )
    }

    fn remote_apis(&self, location: &Location) -> Option<Arc<Apis<P>>> {
        self.remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(location)
            .cloned()
    }

    /// Less than the reserve left at `now`: start nothing new.
    fn time_short(&self, deadline: Deadline) -> bool {
        self.variant != Variant::IgnoreDeadlineReserve && deadline.is_short(self.now())
    }

    fn now(&self) -> Timestamp {
        self.time.now()
    }

    /// With less than the reserve left, no new work starts.
    fn check_time(&self, deadline: Deadline, what: &str) -> Result<()> {
        if self.time_short(deadline) {
            return Err(Error::Deadline(format!(
                "{}ms left before the invocation's deadline: not starting to {what}",
                deadline
                    .remaining(self.now())
                    .unwrap_or_default()
                    .as_millis()
            )));
        }
        Ok(())
    }

    /// Until when an event claimed now stays in progress: the deadline, or a lease without one.
    fn in_progress_until(&self, deadline: Deadline, now: Timestamp) -> Timestamp {
        deadline
            .instant()
            .unwrap_or(now + IN_PROGRESS_WITHOUT_DEADLINE)
    }

    /// How many times to try a commit that keeps losing its race.
    fn conflict_attempts(deadline: Deadline) -> usize {
        if deadline.instant().is_some() {
            MAX_CONFLICTS_WITHIN_DEADLINE
        } else {
            MAX_CONFLICTS
        }
    }

    /// The pause after the `attempt`th lost race: exponential (10 ms doubling, capped at 1 s)
    /// with "equal jitter" — between half and all of it, so racing writers spread out and each
    /// loser still waits longer than the last time.
    async fn backoff(&self, attempt: usize) {
        let cap = (10u64 << attempt.min(7)).min(1000);
        let ms = cap / 2 + self.time.jitter(cap / 2 + 1);
        self.time.sleep(Duration::from_millis(ms)).await;
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
    /// The per-fleet work is boxed (`Box::pin`): its futures hold several calls' state, and
    /// nested unboxed they overflowed a 2 MiB worker-thread stack in debug builds.
    pub async fn handle_within(
        &self,
        env: &Envelope,
        function: Option<Function>,
        deadline: Deadline,
    ) -> Result<Report> {
        // Boxed, so that a caller's future holds a pointer, not the whole of an event's work.
        Box::pin(self.handle_event(env, function, deadline)).await
    }

    async fn handle_event(
        &self,
        env: &Envelope,
        function: Option<Function>,
        deadline: Deadline,
    ) -> Result<Report> {
        // Only allowed accounts and sources; AWS's own events have their own path.
        self.intake.policy.check(env)?;
        if let Some(event) = AwsEvent::from_envelope(env) {
            return Box::pin(self.handle_aws(env, event?, function, deadline)).await;
        }
        let intent = Intent::from_envelope(env)?;
        refuse_misrouted(env, function)?;
        let cause = Cause::from_envelope(env);
        let key = event_key(env);
        self.check_time(deadline, "handle the event")?;
        let fleet_pass = |name| {
            Box::pin(self.reconcile_within(
                name,
                Some(&intent),
                env.time,
                &cause,
                Some(&key),
                deadline,
                None,
            ))
        };
        let fleets = match &intent {
            Intent::ImageReady { fleet, image } => {
                let record = self.store.load_partial(fleet, &[]).await?;
                let Some(facts) = self
                    .apis(&record.spec)
                    .await?
                    .compute
                    .describe_image(image, deadline)
                    .await?
                else {
                    return Err(Error::NotFound(format!(
                        "image {image} does not exist or is not available in {}",
                        where_(&record.spec)
                    )));
                };
                // The accounts allowed and the fleet's admission gate first: a refused image is
                // recorded, not rolled out.
                match self.refusal(&record, image, &facts) {
                    Some(reason) => vec![
                        self.reject_image(fleet.clone(), image.clone(), reason, &cause, &key)
                            .await?,
                    ],
                    None => vec![fleet_pass(fleet).await?],
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
            | Intent::ClearQuarantine { fleet, .. } => vec![fleet_pass(fleet).await?],
            Intent::HealthCheckFailed { instance, .. }
            | Intent::HealthCheckPassed { instance }
            | Intent::LifecycleActionCompleted { instance, .. } => {
                vec![
                    Box::pin(
                        self.instance_event(instance, &intent, env.time, &cause, &key, deadline),
                    )
                    .await?,
                ]
            }
            Intent::Reconcile { fleet: Some(name) } => vec![
                Box::pin(self.reconcile_within(name, None, env.time, &cause, None, deadline, None))
                    .await?,
            ],
            // Every fleet: one that fails must not stop the others. Its failure is in the report
            // and the log; the next schedule tries again — as it does the fleets not started
            // because the invocation's time ran short.
            Intent::Reconcile { fleet: None } => {
                let mut reports = Vec::new();
                for name in self.store.list_fleets().await? {
                    let result = match self.check_time(deadline, "reconcile another fleet") {
                        Ok(()) => Box::pin(self.sweep(&name, env.time, &cause, deadline)).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(r) => reports.push(r),
                        Err(e) => {
                            warn!(fleet = %name, error = %e, "reconcile failed");
                            reports.push(
                                FleetReport::empty(&name, FleetOutcome::Unchanged)
                                    .with_failures(vec![e.to_string()]),
                            );
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
        Box::pin(self.reconcile_within(name, intent, event_time, cause, key, Deadline::NONE, None))
            .await
    }

    /// What `phoenix fleet apply` checks before it writes anything, and what `apply_fleet` and
    /// `preview_fleet` both start with: the spec is valid, its image exists and passes the
    /// accounts allowed and the spec's own admission gate, its launch template exists. Returns
    /// the version the launch template resolves to now (none without one): a floating template
    /// is pinned to it, so the instances launched from here on carry a definition that says
    /// which.
    pub async fn resolve_spec(&self, spec: &FleetSpec) -> Result<Resolved> {
        spec.validate()?;
        let at = self.apis(spec).await?;
        let Some(facts) = at
            .compute
            .describe_image(&spec.image, Deadline::NONE)
            .await?
        else {
            return Err(Error::NotFound(format!(
                "image {} does not exist or is not available in {}",
                spec.image,
                where_(spec)
            )));
        };
        // The file's own image passes the accounts allowed and the gate it declares, like any
        // other.
        if let Err(reason) = images::judge(spec, &self.intake.image_accounts, &spec.image, &facts) {
            return Err(phoenix_core::Error::invalid("image", reason).into());
        }
        // Its target groups exist, take instances, and are in its subnets' VPC.
        at.targets.check(spec, &at.compute).await?;
        let zones = at
            .compute
            .subnet_zones(&spec.subnets, Deadline::NONE)
            .await?;
        let template_version = match &spec.launch_template {
            Some(t) => at
                .compute
                .resolve_template(t, Deadline::NONE)
                .await
                .map(Some)
                .map_err(|e| match e {
                    Error::NotFound(why) => {
                        phoenix_core::Error::invalid("launch_template", why).into()
                    }
                    e => e,
                })?,
            None => None,
        };
        Ok(Resolved {
            template_version,
            zones,
        })
    }

    /// What applying `spec` would do, without doing any of it (`phoenix fleet apply --diff`):
    /// the same checks as `apply_fleet` (the same errors), the launch template resolved the same
    /// way, then the change planned on the fleet as stored (`dryrun::plan_spec`, passes
    /// `interval` apart) — or, for a fleet that does not exist, what would be created. Reads
    /// only: no write, no event.
    pub async fn preview_fleet(
        &self,
        spec: FleetSpec,
        interval: chrono::Duration,
    ) -> Result<Preview> {
        let resolved = self.resolve_spec(&spec).await?;
        match self.store.load_fleet(&spec.name).await {
            Ok(fleet) => Ok(Preview::Update(Box::new(dryrun::plan_spec(
                &fleet,
                spec,
                resolved,
                self.now(),
                interval,
            )?))),
            Err(Error::NotFound(_)) => {
                // As `create_fleet` makes it: the definition its instances would carry.
                let created = planner::create_fleet(spec, resolved, self.now())?.fleet;
                Ok(Preview::Create {
                    fleet: created.spec.name.to_string(),
                    capacity: created.spec.capacity,
                    image: created.spec.image.clone(),
                    definition: created.definition().fingerprint(),
                    template_version: created.template_version.clone(),
                    spec: Box::new(created.spec),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Creates or updates a fleet from its spec (`phoenix fleet apply`), after the checks of
    /// `resolve_spec`. The fleet is then reconciled by the reconcile function, on the
    /// `ReconcileRequested` event the caller publishes.
    pub async fn apply_fleet(&self, spec: FleetSpec) -> Result<FleetReport> {
        let resolved = self.resolve_spec(&spec).await?;
        let cause = Cause::internal("FleetApplied");
        for attempt in 0..MAX_CONFLICTS {
            let now = self.now();
            let (before, step) = match self.store.load_fleet(&spec.name).await {
                Ok(fleet) => {
                    let step = planner::update_spec(&fleet, spec.clone(), resolved.clone(), now)?;
                    (fleet, step)
                }
                Err(Error::NotFound(_)) => {
                    let step = planner::create_fleet(spec.clone(), resolved.clone(), now)?;
                    (step.fleet.clone(), step)
                }
                Err(e) => return Err(e),
            };
            match self.store.commit(&before, &step, &cause, None, now).await {
                Ok(committed) => {
                    self.announce(&committed, &step.changes).await;
                    return Ok(FleetReport::of(
                        FleetOutcome::Changed,
                        &committed,
                        step.changes,
                    ));
                }
                Err(Error::Conflict(_)) => self.backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(spec.name.to_string()))
    }
}
