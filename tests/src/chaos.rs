//! The reliability report: scenarios of at-least-once delivery, concurrency, crashes, AWS faults
//! and lost events against the emulator, each measured the same way. `make chaos` prints the full
//! sizes (`src/bin/chaos.rs`); `tests/chaos.rs` runs the small sizes inside `make test`.
//!
//! Every scenario gets its own emulator, a fault proxy in front of it (`faults.rs`) through which
//! the controller under test makes every AWS call, a clock the harness can move forward (standing
//! for time passing between invocations: leases running out), and unmanaged instances that must
//! stay untouched throughout. Events are delivered the way EventBridge → Lambda (async) delivers
//! them: a failed invocation with a retryable error is invoked again, twice at most, then the
//! event is dead-lettered; a rejected one is dead-lettered at once.
//!
//! The columns, per scenario (summed over its fleets):
//!
//! | column | definition |
//! |---|---|
//! | events delivered | handler invocations with a phoenix event: first deliveries, injected copies and Lambda's retries (scheduled reconciles not counted) |
//! | duplicates | deliveries of an event id delivered before |
//! | injected faults | requests the proxy failed (throttled, 5xx, timed out, reset), before or after reaching the emulator |
//! | crashes | invocations aborted right after an AWS call (the process died: its future dropped, nothing after that call reached AWS) |
//! | final instances | live (pending/running) instances carrying the fleet's tag in EC2 at the end / the capacity the events asked for |
//! | duplicate launches | Σ over `phoenix:launch` tokens of (instances EC2 ever had with that tag, in any state) − (the count its `LaunchDecided` asked for), when positive |
//! | leaked instances | live instances carrying the fleet's tag that the fleet's record does not hold as live, after convergence |
//! | wrongly terminated | instances stopped or terminated that phoenix must not touch (unmanaged ones), plus instances of the fleet terminated with no `TerminationDecided` in its history (instances the harness itself terminated excepted) |
//! | lost history entries | fleet versions missing from the `HIST#` sequence 1..=version, plus launch tokens seen on EC2 instances with no `LaunchDecided` in the history, plus events whose record (`EVENT#`) points at a version whose entry has another cause, plus events a handler acknowledged as applied that have no record |
//! | lost notifications | notifications the history says a commit published (`events::notifications` of each entry) whose `notification_id` never reached the bus: a rule for source `phoenix` on the emulator's EventBridge sends every event to an SQS queue, read at the end of the scenario (which ends, but for the crash scenario, with a scheduled reconcile after the outbox's grace) |
//!
//! A scenario passes when the last five are zero, no event was dead-lettered, and the fleet
//! converged on what the events asked for (capacity, image, all healthy, nothing in flight).

use crate::faults::{FaultConfig, FaultProxy, SplitMix64};
use crate::{converged, Ec2Instance, Emulator};
use anyhow::{anyhow, bail, Result};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use phoenix_aws::bus::EventBridgeBus;
use phoenix_aws::config::emulator_sdk_config;
use phoenix_aws::ec2::Ec2Client;
use phoenix_aws::table::DynamoTable;
use phoenix_aws::time::SystemTime;
use phoenix_aws::{Apis, AwsController, Controller, Deadline, DynamoStore, FleetOutcome};
use phoenix_core::events::{
    self, Change, Envelope, Intent, ScaleTarget, SCHEDULED_EVENT, SCHEDULE_SOURCE, SOURCE,
};
use phoenix_core::model::{Fleet, FleetSpec, Health, Timestamp, TAG_FLEET, TAG_TOKEN};
use phoenix_core::patterns::route;
use phoenix_core::planner::LEASE;
use phoenix_core::{FleetName, ImageId, InstanceId};
use phoenix_protocol::ports::Time;
use phoenix_protocol::store::OUTBOX_GRACE;
use phoenix_protocol::Intake;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type ChaosController = AwsController;

/// Lambda's asynchronous invocation: the first attempt and two retries.
const LAMBDA_ATTEMPTS: usize = 3;
/// Unmanaged instances launched before each scenario.
pub const UNMANAGED: usize = 3;

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Capacity of the fleets (the crash scenario uses 2).
    pub capacity: u32,
    /// Concurrent invocations on one fleet.
    pub concurrent: usize,
    /// Events of the lost-events scenario.
    pub lost_events: usize,
    /// Share of AWS calls failed in the faults scenario.
    pub fault_rate: f64,
    pub seed: u64,
}

impl Sizes {
    /// `make chaos`.
    pub fn full() -> Self {
        Sizes {
            capacity: 4,
            concurrent: 50,
            lost_events: 40,
            fault_rate: 0.2,
            seed: 7,
        }
    }

    /// Inside `make test`.
    pub fn small() -> Self {
        Sizes {
            capacity: 2,
            concurrent: 16,
            lost_events: 20,
            fault_rate: 0.2,
            seed: 11,
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub scenario: String,
    pub delivered: u64,
    pub duplicates: u64,
    pub faults: u64,
    pub crashes: u64,
    pub final_instances: usize,
    pub expected_instances: usize,
    pub duplicate_launches: u64,
    pub leaked: u64,
    pub wrongly_terminated: u64,
    pub lost_history: u64,
    pub lost_notifications: u64,
    pub dead_lettered: u64,
    /// Requests the controller sent to AWS (through the proxy), faulted or not.
    pub aws_calls: u64,
    /// Failed invocations retried as Lambda retries them, by kind of error.
    pub retried: BTreeMap<&'static str, u64>,
    pub converged: bool,
    pub seconds: f64,
    /// What went wrong, if anything, in words.
    pub notes: Vec<String>,
    /// What else is worth printing under the table.
    pub details: Vec<String>,
}

impl Row {
    pub fn ok(&self) -> bool {
        self.duplicate_launches == 0
            && self.leaked == 0
            && self.wrongly_terminated == 0
            && self.lost_history == 0
            && self.lost_notifications == 0
            && self.dead_lettered == 0
            && self.converged
            && self.final_instances == self.expected_instances
    }

    fn add(&mut self, m: Measure) {
        self.final_instances += m.final_instances;
        self.expected_instances += m.expected_instances;
        self.duplicate_launches += m.duplicate_launches;
        self.leaked += m.leaked;
        self.wrongly_terminated += m.wrongly_terminated;
        self.lost_history += m.lost_history;
        self.lost_notifications += m.lost_notifications;
        self.converged &= m.converged;
        self.notes.extend(m.notes);
    }
}

/// The report as a table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "events delivered",
        "duplicates",
        "AWS calls",
        "injected faults",
        "crashes",
        "final instances",
        "duplicate launches",
        "leaked instances",
        "wrongly terminated",
        "lost history entries",
        "lost notifications",
    ];
    let mut lines = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for r in rows {
        lines.push(vec![
            r.scenario.clone(),
            r.delivered.to_string(),
            r.duplicates.to_string(),
            r.aws_calls.to_string(),
            r.faults.to_string(),
            r.crashes.to_string(),
            format!("{}/{}", r.final_instances, r.expected_instances),
            r.duplicate_launches.to_string(),
            r.leaked.to_string(),
            r.wrongly_terminated.to_string(),
            r.lost_history.to_string(),
            r.lost_notifications.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        out.push('|');
        for (c, cell) in line.iter().enumerate() {
            if c == 0 {
                out.push_str(&format!(" {cell:<w$} |", w = widths[c]));
            } else {
                out.push_str(&format!(" {cell:>w$} |", w = widths[c]));
            }
        }
        out.push('\n');
        if i == 0 {
            out.push('|');
            for (c, w) in widths.iter().enumerate() {
                let dashes = "-".repeat(*w);
                if c == 0 {
                    out.push_str(&format!("-{dashes}-|"));
                } else {
                    out.push_str(&format!("-{dashes}:|"));
                }
            }
            out.push('\n');
        }
    }
    out
}

/// Every scenario, in order. Each failure to run one at all is an error; a scenario that ran but
/// violated a guarantee is a row that is not `ok()`.
pub async fn run_all(sizes: &Sizes, mut progress: impl FnMut(&Row)) -> Result<Vec<Row>> {
    run_some(sizes, &[], &mut progress).await
}

/// The scenarios named in `only` (`duplicates`, `concurrent`, `faults`, `crash`, `lost`), or all.
pub async fn run_some(
    sizes: &Sizes,
    only: &[String],
    progress: &mut impl FnMut(&Row),
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (key, scenario) in [
        (
            "duplicates",
            duplicates_three_times as fn(Sizes) -> ScenarioFuture,
        ),
        ("concurrent", concurrent_invocations),
        ("faults", aws_faults),
        ("crash", crash_after_each_call),
        ("lost", lost_events),
    ] {
        if !only.is_empty() && !only.iter().any(|o| o == key) {
            continue;
        }
        let row = scenario(sizes.clone()).await?;
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

type ScenarioFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Row>> + Send>>;

// ------------------------------------------------------------------------------------- the world

/// One scenario's emulator, proxy, controller and bookkeeping.
pub struct World {
    _emulator: Emulator,
    pub proxy: FaultProxy,
    pub direct: SdkConfig,
    pub ec2: aws_sdk_ec2::Client,
    /// For the harness's own reads, straight to the emulator.
    pub store: DynamoStore,
    pub controller: Arc<ChaosController>,
    offset_secs: Arc<AtomicI64>,
    rng: Mutex<SplitMix64>,
    next_id: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    crashes: AtomicU64,
    dead_lettered: AtomicU64,
    retried: Mutex<BTreeMap<&'static str, u64>>,
    seen: Mutex<BTreeSet<String>>,
    /// Intent events a handler acknowledged as applied by this delivery (`Changed`/`Unchanged`).
    applied: Mutex<BTreeSet<String>>,
    /// Intent events delivered at least once.
    intents: Mutex<BTreeSet<String>>,
    /// Instances the harness itself terminated (outside phoenix).
    pub external: Mutex<BTreeSet<String>>,
    /// The queue a rule for source `phoenix` on the emulator's bus sends every event to: what a
    /// subscriber of phoenix's notifications receives.
    pub notes: String,
    /// What was received on it so far: (detail-type, detail), in order.
    received: Mutex<Vec<(String, serde_json::Value)>>,
    pub unmanaged: Vec<String>,
    pub images: Vec<ImageId>,
    started: Instant,
}

/// The SDK clients of the controller under test.
pub struct ControllerClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub events: aws_sdk_eventbridge::Client,
}

impl ControllerClients {
    pub fn new(sdk: &SdkConfig) -> Self {
        ControllerClients {
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            ec2: aws_sdk_ec2::Client::new(sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(sdk),
            events: aws_sdk_eventbridge::Client::new(sdk),
        }
    }
}

/// The SDK configuration of the controller under test: through the proxy, the production retry
/// mode (standard, 4 attempts), and the production timeouts — or, where timeouts are injected,
/// short ones so that each costs seconds, not half a minute.
async fn chaos_sdk_config(endpoint: &str, short_timeouts: bool) -> SdkConfig {
    let (connect, attempt, operation) = if short_timeouts {
        (1, 2, 15)
    } else {
        (3, 10, 30)
    };
    let creds =
        aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "phoenix-chaos");
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .retry_config(RetryConfig::standard().with_max_attempts(4))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(connect))
                .operation_attempt_timeout(Duration::from_secs(attempt))
                .operation_timeout(Duration::from_secs(operation))
                .build(),
        )
        .load()
        .await
}

impl World {
    /// A world where idempotency tokens are the emulator's business (it ignores them).
    pub async fn start(seed: u64, images: usize) -> Result<World> {
        Self::start_with(seed, images, false).await
    }

    /// `faults`: for scenarios that inject faults — short timeouts, and the proxy honours
    /// idempotency tokens as AWS does, since it loses answers after AWS acted.
    pub async fn start_with(seed: u64, images: usize, faults: bool) -> Result<World> {
        Self::start_custom(
            seed,
            images,
            faults,
            ControllerClients::new,
            Intake::default(),
        )
        .await
    }

    /// `start_with`, with the controller's clients built by `clients` from the SDK configuration
    /// that goes through the proxy (to attach an interceptor, say), and its `intake` (an EC2
    /// call budget, say).
    pub async fn start_custom(
        seed: u64,
        images: usize,
        faults: bool,
        clients: impl FnOnce(&SdkConfig) -> ControllerClients,
        intake: Intake,
    ) -> Result<World> {
        let emulator = Emulator::start()?;
        let proxy = FaultProxy::start_with(&emulator.endpoint, seed, true, faults).await?;
        let direct = emulator_sdk_config(&emulator.endpoint).await;
        let store = phoenix_aws::dynamo_store(aws_sdk_dynamodb::Client::new(&direct), "phoenix");
        store.table().create_table().await?;
        let notes = crate::subscribe(
            &direct,
            "phoenix-notifications",
            &serde_json::json!({"source": [SOURCE]}),
        )
        .await?;
        let sdk = chaos_sdk_config(&proxy.endpoint, faults).await;
        let offset_secs = Arc::new(AtomicI64::new(0));
        let offset = offset_secs.clone();
        let clients = clients(&sdk);
        let controller = Arc::new(Controller::new(
            DynamoTable::new(clients.dynamodb, "phoenix"),
            Apis::new(
                Ec2Client::new(clients.ec2),
                phoenix_aws::elb::ElbClient::new(clients.elb),
                phoenix_aws::autoscaling::AutoScalingClient::new(aws_sdk_autoscaling::Client::new(
                    &sdk,
                )),
            ),
            phoenix_aws::reach::AwsReach::new(&sdk),
            EventBridgeBus::new(clients.events, "default"),
            SystemTime::skewed(offset),
            intake,
        ));
        let ec2 = aws_sdk_ec2::Client::new(&direct);
        let mut imgs = Vec::new();
        for i in 0..images {
            imgs.push(phoenix_local::register_image(&direct, &format!("chaos-{i}")).await?);
        }
        let mut world = World {
            _emulator: emulator,
            proxy,
            direct,
            ec2,
            store,
            controller,
            offset_secs,
            rng: Mutex::new(SplitMix64(seed)),
            next_id: AtomicU64::new(1),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            retried: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(BTreeSet::new()),
            applied: Mutex::new(BTreeSet::new()),
            intents: Mutex::new(BTreeSet::new()),
            external: Mutex::new(BTreeSet::new()),
            notes,
            received: Mutex::new(Vec::new()),
            unmanaged: Vec::new(),
            images: imgs,
            started: Instant::now(),
        };
        world.unmanaged = world.launch_unmanaged().await?;
        Ok(world)
    }

    /// A user's other servers: no phoenix tags, or tags that look like a fleet's but are not.
    async fn launch_unmanaged(&self) -> Result<Vec<String>> {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        let mut ids = Vec::new();
        let tag_sets: [&[(&str, &str)]; UNMANAGED] = [
            &[],
            &[("team", "chaos"), ("Name", "web-a")],
            &[(TAG_FLEET, "someone-else")],
        ];
        for tags in tag_sets {
            let mut req = self
                .ec2
                .run_instances()
                .image_id(self.images[0].as_str())
                .min_count(1)
                .max_count(1)
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro);
            if !tags.is_empty() {
                let tags = tags
                    .iter()
                    .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                    .collect();
                req = req.tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Instance)
                        .set_tags(Some(tags))
                        .build(),
                );
            }
            let out = req.send().await?;
            ids.extend(
                out.instances
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|i| i.instance_id),
            );
        }
        Ok(ids)
    }

    pub fn now(&self) -> Timestamp {
        self.controller.time.now()
    }

    /// Time passes (between invocations): leases and in-progress claims run out.
    pub fn advance(&self, d: chrono::Duration) {
        self.offset_secs
            .fetch_add(d.num_seconds(), Ordering::SeqCst);
    }

    fn rand(&self) -> std::sync::MutexGuard<'_, SplitMix64> {
        self.rng.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A phoenix event as EventBridge delivers it, with a fresh id.
    pub fn event(&self, intent: &Intent, time: Timestamp) -> Envelope {
        let (detail_type, detail) = intent.to_detail();
        let id = format!("chaos-{:06}", self.next_id.fetch_add(1, Ordering::SeqCst));
        Envelope::new(&id, SOURCE, detail_type, time, detail)
    }

    fn scheduled(&self) -> Envelope {
        let id = format!("tick-{:06}", self.next_id.fetch_add(1, Ordering::SeqCst));
        Envelope::new(
            &id,
            SCHEDULE_SOURCE,
            SCHEDULED_EVENT,
            self.now(),
            serde_json::json!({}),
        )
    }

    fn count_delivery(&self, env: &Envelope) {
        self.delivered.fetch_add(1, Ordering::SeqCst);
        let first = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(env.id.clone());
        if !first {
            self.duplicates.fetch_add(1, Ordering::SeqCst);
        }
        if is_intent(env) {
            self.intents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(env.id.clone());
        }
    }

    fn note_applied(&self, env: &Envelope, report: &phoenix_aws::Report) {
        let applied = report
            .fleets
            .iter()
            .any(|f| matches!(f.outcome, FleetOutcome::Changed | FleetOutcome::Unchanged));
        if applied && is_intent(env) {
            self.applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(env.id.clone());
        }
    }

    /// Delivers an event as Lambda's asynchronous invocation does: retryable failures are invoked
    /// again (twice at most), then dead-lettered; rejections are dead-lettered at once. Returns
    /// whether it was handled.
    pub async fn deliver(&self, env: &Envelope) -> bool {
        let function = route(&env.source, &env.detail_type);
        for attempt in 0..LAMBDA_ATTEMPTS {
            self.count_delivery(env);
            match self
                .controller
                .handle_within(env, function, lambda_deadline(self.now()))
                .await
            {
                Ok(report) => {
                    self.note_applied(env, &report);
                    return true;
                }
                Err(e) if e.is_retryable() && attempt + 1 < LAMBDA_ATTEMPTS => {
                    *self
                        .retried
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(error_kind(&e))
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    self.dead_lettered.fetch_add(1, Ordering::SeqCst);
                    eprintln!("dead-lettered {} ({}): {e}", env.id, env.detail_type);
                    return false;
                }
            }
        }
        false
    }

    /// One invocation with `env`, with the functions' deadline unless `deadline` is given;
    /// counted as a delivery. What Lambda would do next is the caller's business.
    pub async fn invoke(
        &self,
        env: &Envelope,
        deadline: Option<Deadline>,
    ) -> phoenix_aws::Result<phoenix_aws::Report> {
        self.count_delivery(env);
        let r = self
            .controller
            .handle_within(
                env,
                route(&env.source, &env.detail_type),
                deadline.unwrap_or_else(|| lambda_deadline(self.now())),
            )
            .await;
        if let Ok(report) = &r {
            self.note_applied(env, report);
        }
        r
    }

    /// Delivers an event whose invocation dies right after its `n`th AWS call. Returns whether it
    /// crashed (false: it finished in fewer calls).
    pub async fn deliver_crashing(&self, env: &Envelope, n: u64) -> bool {
        let function = route(&env.source, &env.detail_type);
        let crashed = self.proxy.crashed();
        self.proxy.arm_crash(n);
        self.count_delivery(env);
        let outcome = tokio::select! {
            biased;
            _ = crashed => None,
            r = self.controller.handle_within(env, function, lambda_deadline(self.now())) => Some(r),
        };
        self.proxy.disarm();
        match outcome {
            None => {
                self.crashes.fetch_add(1, Ordering::SeqCst);
                true
            }
            Some(Ok(report)) => {
                self.note_applied(env, &report);
                false
            }
            Some(Err(_)) => false,
        }
    }

    /// One scheduled reconcile (every fleet); not counted as a delivered event.
    pub async fn tick(&self) -> Result<()> {
        let env = self.scheduled();
        self.controller
            .handle_within(
                &env,
                route(&env.source, &env.detail_type),
                lambda_deadline(self.now()),
            )
            .await
            .map(|_| ())
            .map_err(|e| anyhow!("{e}"))
    }

    /// One reconcile of one fleet (`ReconcileRequested`); not counted as a delivered event.
    pub async fn reconcile(&self, fleet: &str) -> Result<()> {
        let env = self.event(
            &Intent::Reconcile {
                fleet: Some(FleetName::parse(fleet)?),
            },
            self.now(),
        );
        self.controller
            .handle_within(
                &env,
                route(&env.source, &env.detail_type),
                lambda_deadline(self.now()),
            )
            .await
            .map(|_| ())
            .map_err(|e| anyhow!("{e}"))
    }

    /// Every notification that reached the bus so far, as a subscriber received it: (detail-type,
    /// detail), in the order received, repeats included.
    pub async fn notifications(&self) -> Result<Vec<(String, serde_json::Value)>> {
        let new = crate::receive_all(&self.direct, &self.notes).await?;
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        received.extend(new);
        Ok(received.clone())
    }

    /// The notifications `history` says the fleet's commits published that have not reached the
    /// bus (so far): `detail-type id (version v)` each.
    pub async fn unpublished(
        &self,
        fleet: &Fleet,
        history: &[phoenix_core::history::HistoryEntry],
    ) -> Result<Vec<String>> {
        let received: BTreeSet<String> = self
            .notifications()
            .await?
            .iter()
            .filter_map(|(_, detail)| detail["notification_id"].as_str().map(str::to_string))
            .collect();
        let incarnation = fleet.incarnation();
        let mut lost = Vec::new();
        for e in history {
            for n in events::notifications(&fleet.spec.name, &incarnation, e.version, &e.changes) {
                if !received.contains(&n.id) {
                    lost.push(format!(
                        "{} {} (version {})",
                        n.detail_type, n.id, e.version
                    ));
                }
            }
        }
        Ok(lost)
    }

    /// The end of a scenario: time passes beyond the outbox's grace and the schedule reconciles
    /// every fleet once more, so what a failed PutEvents (or a crash) left in an outbox is
    /// published, as in AWS within a minute or two.
    pub async fn last_schedule(&self) {
        self.advance(OUTBOX_GRACE + chrono::Duration::seconds(1));
        if let Err(e) = self.tick().await {
            eprintln!("the last scheduled reconcile failed: {e}");
        }
    }

    pub async fn fleet(&self, name: &str) -> Result<Fleet> {
        Ok(self.store.load_fleet(&FleetName::parse(name)?).await?)
    }

    /// Reconciles until the fleet converged (scheduled reconciles when `scheduled`, else the
    /// fleet's own). When a round changes nothing, time passes by a lease, as it would between
    /// scheduled reconciles waiting for a lease to run out.
    pub async fn settle(&self, name: &str, scheduled: bool, rounds: usize) -> Result<Fleet> {
        let mut version = 0;
        for _ in 0..rounds {
            let r = if scheduled {
                self.tick().await
            } else {
                self.reconcile(name).await
            };
            if let Err(e) = r {
                eprintln!("reconcile of {name} failed (retried at the next round): {e}");
            }
            let f = self.fleet(name).await?;
            if converged(&f) {
                return Ok(f);
            }
            if f.version == version {
                self.advance(LEASE + chrono::Duration::seconds(1));
            }
            version = f.version;
        }
        let f = self.fleet(name).await?;
        if converged(&f) {
            Ok(f)
        } else {
            bail!("fleet {name} did not converge in {rounds} rounds")
        }
    }

    /// Creates a fleet (as `phoenix fleet apply` does) and reconciles it to its capacity.
    pub async fn create_fleet(
        &self,
        name: &str,
        image: &ImageId,
        capacity: u32,
        surge: u32,
    ) -> Result<()> {
        self.apply(name, image, capacity, surge).await?;
        self.settle(name, false, 40).await?;
        Ok(())
    }

    /// Writes a fleet's spec, as `phoenix fleet apply` does before publishing `ReconcileRequested`.
    /// The progress deadline is long: these scenarios test delivery, not rollback.
    pub async fn apply(
        &self,
        name: &str,
        image: &ImageId,
        capacity: u32,
        surge: u32,
    ) -> Result<()> {
        let yaml = format!(
            "name: {name}\nimage: {image}\ncapacity: {capacity}\ninstance_type: t3.micro\n\
             policy:\n  max_surge: {surge}\n  max_unavailable: 0\n  progress_deadline: 6h\n\
             tags:\n  team: chaos\n"
        );
        let spec = FleetSpec::from_yaml(&yaml)?;
        self.controller
            .apply_fleet(spec)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }

    /// Every instance EC2 knows, in any state (straight to the emulator).
    pub async fn instances(&self) -> Result<Vec<Ec2Instance>> {
        crate::list_instances(&self.ec2).await
    }

    pub async fn live_ids(&self, fleet: &str) -> Result<Vec<String>> {
        Ok(self
            .instances()
            .await?
            .into_iter()
            .filter(|i| i.is_alive() && i.tags.get(TAG_FLEET).map(String::as_str) == Some(fleet))
            .map(|i| i.id)
            .collect())
    }

    /// The measures of one fleet that should have converged on `capacity` instances of `image`.
    pub async fn measure(&self, name: &str, capacity: u32, image: &ImageId) -> Result<Measure> {
        let fleet = self.fleet(name).await?;
        let history = self
            .store
            .history(&FleetName::parse(name)?, 1_000_000)
            .await?;
        let all = self.instances().await?;
        let mut m = Measure {
            expected_instances: capacity as usize,
            converged: converged(&fleet) && fleet.spec.image == *image,
            ..Measure::default()
        };
        if !m.converged {
            m.notes.push(format!(
                "{name}: not converged on {capacity} x {image}: capacity {}, image {}, {} live, {} pending",
                fleet.spec.capacity,
                fleet.spec.image,
                fleet.live_instances().count(),
                fleet.pending.len()
            ));
        }
        let ours: Vec<&Ec2Instance> = all
            .iter()
            .filter(|i| i.tags.get(TAG_FLEET).map(String::as_str) == Some(name))
            .collect();
        let live: BTreeSet<&str> = ours
            .iter()
            .filter(|i| i.is_alive())
            .map(|i| i.id.as_str())
            .collect();
        m.final_instances = live.len();

        // Duplicate launches and launches the history does not know.
        let mut decided: BTreeMap<&str, u32> = BTreeMap::new();
        let mut terminated_by_decision: BTreeSet<String> = BTreeSet::new();
        for e in &history {
            for c in &e.changes {
                match c {
                    Change::LaunchDecided { token, count, .. } => {
                        decided.insert(token.as_str(), *count);
                    }
                    Change::TerminationDecided { instance, .. } => {
                        terminated_by_decision.insert(instance.to_string());
                    }
                    _ => {}
                }
            }
        }
        let mut per_token: BTreeMap<&str, u32> = BTreeMap::new();
        for i in &ours {
            if let Some(t) = i.tags.get(TAG_TOKEN) {
                *per_token.entry(t.as_str()).or_default() += 1;
            }
        }
        for (token, n) in &per_token {
            match decided.get(token) {
                Some(count) if n > count => {
                    m.duplicate_launches += u64::from(n - count);
                    m.notes.push(format!(
                        "{name}: token {token} has {n} instances for a decision of {count}"
                    ));
                }
                Some(_) => {}
                None => {
                    m.lost_history += 1;
                    m.notes
                        .push(format!("{name}: token {token} in EC2 has no LaunchDecided"));
                }
            }
        }

        // Leaked: live in EC2 with the fleet's tag, not live in the record.
        let recorded: BTreeSet<String> = fleet.live_instances().map(|i| i.id.to_string()).collect();
        for id in &live {
            if !recorded.contains(*id) {
                m.leaked += 1;
                m.notes
                    .push(format!("{name}: {id} is live in EC2 but not in the record"));
            }
        }

        // Wrongly terminated.
        let external = self
            .external
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for i in &ours {
            let gone = i.state == "shutting-down" || i.state == "terminated";
            if gone && !terminated_by_decision.contains(&i.id) && !external.contains(&i.id) {
                m.wrongly_terminated += 1;
                m.notes.push(format!(
                    "{name}: {} is {} with no TerminationDecided",
                    i.id, i.state
                ));
            }
        }

        // History: versions 1..=version, each exactly once.
        let versions: BTreeSet<u64> = history.iter().map(|e| e.version).collect();
        let missing = (1..=fleet.version)
            .filter(|v| !versions.contains(v))
            .count() as u64;
        if missing > 0 || versions.len() != history.len() {
            m.notes.push(format!(
                "{name}: {missing} versions of 1..={} missing from the history ({} entries)",
                fleet.version,
                history.len()
            ));
        }
        m.lost_history += missing + (history.len() - versions.len()) as u64;

        // Notifications: each one the history says its commit published reached the bus.
        for lost in self.unpublished(&fleet, &history).await? {
            m.lost_notifications += 1;
            m.notes
                .push(format!("{name}: {lost} never reached the bus"));
        }

        // Events: a record points at the entry it caused; an applied event has a record.
        let by_version: BTreeMap<u64, Option<&str>> = history
            .iter()
            .map(|e| (e.version, e.cause.event_id.as_deref()))
            .collect();
        let intents = self
            .intents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let applied = self
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for id in &intents {
            match self.store.event_record(id).await? {
                // An event that changed nothing has a record, and no entry, by design.
                Some(r) if r.fleet == name && r.unchanged.is_none() => {
                    let cause = r
                        .version
                        .and_then(|v| by_version.get(&v).copied().flatten());
                    if cause != Some(id.as_str()) {
                        m.lost_history += 1;
                        m.notes.push(format!(
                            "{name}: event {id} recorded at version {:?}, whose entry has cause {cause:?}",
                            r.version
                        ));
                    }
                }
                Some(_) => {}
                None if applied.contains(id) => {
                    m.lost_history += 1;
                    m.notes.push(format!(
                        "{name}: event {id} was acknowledged but has no record"
                    ));
                }
                None => {}
            }
        }
        Ok(m)
    }

    /// Unmanaged instances not running any more (phoenix must never touch them).
    pub async fn unmanaged_touched(&self) -> Result<Vec<String>> {
        let all = self.instances().await?;
        Ok(self
            .unmanaged
            .iter()
            .filter(|id| {
                all.iter()
                    .find(|i| &i.id == *id)
                    .is_none_or(|i| i.state != "running" && i.state != "pending")
            })
            .cloned()
            .collect())
    }

    /// The scenario's row, with the counters and the unmanaged check.
    async fn row(&self, scenario: &str, measures: Vec<Measure>) -> Result<Row> {
        let mut row = Row {
            scenario: scenario.to_string(),
            delivered: self.delivered.load(Ordering::SeqCst),
            duplicates: self.duplicates.load(Ordering::SeqCst),
            faults: self.proxy.stats().faults,
            crashes: self.crashes.load(Ordering::SeqCst),
            dead_lettered: self.dead_lettered.load(Ordering::SeqCst),
            aws_calls: self.proxy.stats().requests,
            retried: self
                .retried
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            converged: true,
            ..Row::default()
        };
        for m in measures {
            row.add(m);
        }
        for id in self.unmanaged_touched().await? {
            row.wrongly_terminated += 1;
            row.notes
                .push(format!("unmanaged instance {id} was touched"));
        }
        let mut copies: BTreeMap<String, u64> = BTreeMap::new();
        for (_, detail) in self.notifications().await? {
            if let Some(id) = detail["notification_id"].as_str() {
                *copies.entry(id.to_string()).or_default() += 1;
            }
        }
        row.details.push(format!(
            "notifications: {} reached the bus, {} of them more than once ({} copies in all)",
            copies.len(),
            copies.values().filter(|n| **n > 1).count(),
            copies.values().sum::<u64>()
        ));
        if row.dead_lettered > 0 {
            row.notes
                .push(format!("{} events dead-lettered", row.dead_lettered));
        }
        row.seconds = self.started.elapsed().as_secs_f64();
        Ok(row)
    }
}

/// Every invocation runs as a Lambda invocation does: with the functions' timeout (60 s,
/// infra/template.yaml) as its deadline.
fn lambda_deadline(now: Timestamp) -> Deadline {
    Deadline::at(now + chrono::Duration::seconds(60))
}

fn error_kind(e: &phoenix_aws::Error) -> &'static str {
    use phoenix_aws::Error as E;
    match e {
        E::Conflict(_) => "conflict",
        E::Deadline(_) => "deadline",
        E::Throttled { .. } => "throttled",
        E::Capacity(_) => "capacity",
        E::Transient { .. } => "transient",
        _ => "other",
    }
}

fn is_intent(env: &Envelope) -> bool {
    !matches!(
        Intent::from_envelope(env),
        Ok(Intent::Reconcile { .. }) | Err(_)
    )
}

/// The measures of one fleet (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Measure {
    pub final_instances: usize,
    pub expected_instances: usize,
    pub duplicate_launches: u64,
    pub leaked: u64,
    pub wrongly_terminated: u64,
    pub lost_history: u64,
    pub lost_notifications: u64,
    pub converged: bool,
    pub notes: Vec<String>,
}

/// Instances that may be stopped outside phoenix without starting a rollback: any, unless a
/// rollout is under way.
async fn stoppable(w: &World, live: &[String]) -> Result<Vec<String>> {
    let f = w.fleet("web").await?;
    if f.rollout.as_ref().is_some_and(|r| r.status.is_active()) || awaiting_repair(w).await? {
        return Ok(Vec::new());
    }
    Ok(live.to_vec())
}

/// An instance of the fleet is stopped in EC2 or unhealthy in its record, not yet replaced.
async fn awaiting_repair(w: &World) -> Result<bool> {
    let stopped = w.instances().await?.into_iter().any(|i| {
        i.tags.get(TAG_FLEET).map(String::as_str) == Some("web")
            && (i.state == "stopped" || i.state == "stopping")
    });
    let f = w.fleet("web").await?;
    Ok(stopped
        || f.live_instances()
            .any(|i| !matches!(i.health, Health::Healthy)))
}

fn at(base: Timestamp, secs: i64) -> Timestamp {
    base + chrono::Duration::seconds(secs)
}

fn instance(id: &str) -> Result<InstanceId> {
    Ok(InstanceId::parse(id)?)
}

// ------------------------------------------------------------------------------------- scenarios

/// Every event delivered three times, in random order, including a full rollout (and a second
/// image that supersedes the first), scale deltas and health events, with scheduled reconciles
/// in between.
pub fn duplicates_three_times(sizes: Sizes) -> ScenarioFuture {
    Box::pin(async move {
        let w = World::start(sizes.seed, 3).await?;
        let (a, b, c) = (
            w.images[0].clone(),
            w.images[1].clone(),
            w.images[2].clone(),
        );
        let cap = sizes.capacity;
        w.create_fleet("web", &a, cap, 1).await?;
        let name = FleetName::parse("web")?;
        let ids = w.live_ids("web").await?;
        let t = w.now() + chrono::Duration::minutes(1);
        let mut intents = vec![
            (
                Intent::ImageReady {
                    fleet: name.clone(),
                    image: b.clone(),
                },
                at(t, 1),
            ),
            (
                Intent::ImageReady {
                    fleet: name.clone(),
                    image: c.clone(),
                },
                at(t, 2),
            ),
            (
                Intent::Scale {
                    fleet: name.clone(),
                    target: ScaleTarget::Delta(1),
                },
                at(t, 3),
            ),
            (
                Intent::Scale {
                    fleet: name.clone(),
                    target: ScaleTarget::Delta(1),
                },
                at(t, 4),
            ),
            (
                Intent::Scale {
                    fleet: name.clone(),
                    target: ScaleTarget::Delta(-1),
                },
                at(t, 5),
            ),
            (
                Intent::HealthCheckFailed {
                    instance: instance(&ids[0])?,
                    reason: "http 503".into(),
                },
                at(t, 6),
            ),
            (
                Intent::HealthCheckPassed {
                    instance: instance(&ids[1 % ids.len()])?,
                },
                at(t, 7),
            ),
        ];
        if ids.len() > 1 {
            intents.push((
                Intent::HealthCheckFailed {
                    instance: instance(&ids[1])?,
                    reason: "timeout".into(),
                },
                at(t, 8),
            ));
        }
        let events: Vec<Envelope> = intents.iter().map(|(i, t)| w.event(i, *t)).collect();
        let mut copies: Vec<Envelope> = events
            .iter()
            .flat_map(|e| [e.clone(), e.clone(), e.clone()])
            .collect();
        w.rand().shuffle(&mut copies);
        for (i, env) in copies.iter().enumerate() {
            w.deliver(env).await;
            if i % 3 == 2 {
                let _ = w.tick().await;
            }
        }
        w.settle("web", true, 60).await.ok();
        w.last_schedule().await;
        let m = w.measure("web", cap + 1, &c).await?;
        w.row("every event delivered 3x, random order", vec![m])
            .await
    })
}

/// N invocations at once on one fleet, from tokio tasks sharing one controller: scale deltas,
/// new images (the newest by event time wins) and health events, mixed.
pub fn concurrent_invocations(sizes: Sizes) -> ScenarioFuture {
    Box::pin(async move {
        let w = Arc::new(World::start(sizes.seed, 3).await?);
        let images = w.images.clone();
        let cap = sizes.capacity + 2;
        w.create_fleet("web", &images[0], cap, 2).await?;
        let name = FleetName::parse("web")?;
        let ids = w.live_ids("web").await?;
        let t = w.now() + chrono::Duration::minutes(1);
        let mut net: i64 = 0;
        let mut newest = (t, images[0].clone());
        let mut events = Vec::new();
        for i in 0..sizes.concurrent {
            let time = at(t, i as i64 + 1);
            let intent = match i % 5 {
                0 | 1 => {
                    let d = if i % 3 == 0 { -1 } else { 1 };
                    net += d;
                    Intent::Scale {
                        fleet: name.clone(),
                        target: ScaleTarget::Delta(d),
                    }
                }
                2 => {
                    let image = images[1 + (i / 5) % 2].clone();
                    if time > newest.0 {
                        newest = (time, image.clone());
                    }
                    Intent::ImageReady {
                        fleet: name.clone(),
                        image,
                    }
                }
                3 => Intent::HealthCheckFailed {
                    instance: instance(&ids[i % ids.len()])?,
                    reason: "concurrent".into(),
                },
                _ => Intent::HealthCheckPassed {
                    instance: instance(&ids[i % ids.len()])?,
                },
            };
            events.push(w.event(&intent, time));
        }
        let start = Arc::new(tokio::sync::Barrier::new(events.len()));
        let mut tasks = Vec::new();
        for env in events {
            let w = w.clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                w.deliver(&env).await
            }));
        }
        for t in tasks {
            t.await?;
        }
        w.settle("web", true, 80).await.ok();
        w.last_schedule().await;
        let expected = u32::try_from(i64::from(cap) + net)?;
        let m = w.measure("web", expected, &newest.1).await?;
        let label = format!("{} concurrent invocations on one fleet", sizes.concurrent);
        w.row(&label, vec![m]).await
    })
}

/// A share of every AWS call (EC2, DynamoDB, EventBridge) throttled, failed, timed out or reset,
/// across a full rollout and a scale-out to 3x capacity.
pub fn aws_faults(sizes: Sizes) -> ScenarioFuture {
    Box::pin(async move {
        let w = World::start_with(sizes.seed, 2, true).await?;
        let (a, b) = (w.images[0].clone(), w.images[1].clone());
        let cap = sizes.capacity * 2;
        w.create_fleet("web", &a, cap, 1).await?;
        let name = FleetName::parse("web")?;
        w.proxy.set_faults(FaultConfig::aws_calls(sizes.fault_rate));
        let t = w.now() + chrono::Duration::minutes(1);
        let mut notes = Vec::new();
        // The rollout, to its end; then the scale-out, to its end.
        let image = w.event(
            &Intent::ImageReady {
                fleet: name.clone(),
                image: b.clone(),
            },
            at(t, 1),
        );
        w.deliver(&image).await;
        if let Err(e) = w.settle("web", true, 200).await {
            notes.push(format!("rollout under faults: {e}"));
        }
        let scale = w.event(
            &Intent::Scale {
                fleet: name.clone(),
                target: ScaleTarget::Desired(cap * 3),
            },
            at(t, 2),
        );
        w.deliver(&scale).await;
        if let Err(e) = w.settle("web", true, 200).await {
            notes.push(format!("scale-out under faults: {e}"));
        }
        let stats = w.proxy.stats();
        w.proxy.clear_faults();
        w.last_schedule().await;
        let mut m = w.measure("web", cap * 3, &b).await?;
        m.notes.extend(notes);
        let label = format!(
            "{:.0} % of AWS calls failing: rollout + scale to 3x",
            sizes.fault_rate * 100.0
        );
        let mut row = w.row(&label, vec![m]).await?;
        let kinds: Vec<String> = stats
            .by_kind
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        let services: Vec<String> = stats
            .by_service
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        row.details.push(format!(
            "faults by kind: {}; by service: {}; {} retries answered from the idempotency token",
            kinds.join(", "),
            services.join(", "),
            stats.replayed
        ));
        Ok(row)
    })
}

/// A replacement (a failed health check) crashed right after each of its AWS calls in turn, each
/// on a fresh fleet, followed by one reconcile once the leases ran out; then Lambda's retry of the
/// event. After the one reconcile, a fleet whose event was committed must be finished, with its
/// notification published, and one whose event was not must be untouched.
pub fn crash_after_each_call(sizes: Sizes) -> ScenarioFuture {
    Box::pin(async move {
        let w = World::start(sizes.seed, 1).await?;
        let a = w.images[0].clone();
        // The replacement without a crash, to count its calls.
        w.create_fleet("dry", &a, 2, 1).await?;
        let victim = w.live_ids("dry").await?[0].clone();
        let env = w.event(
            &Intent::HealthCheckFailed {
                instance: instance(&victim)?,
                reason: "dry run".into(),
            },
            w.now(),
        );
        w.proxy.reset_calls();
        w.deliver(&env).await;
        let calls = w.proxy.calls();
        let ops = w.proxy.call_log();
        w.settle("dry", false, 20).await?;
        let mut measures = vec![w.measure("dry", 2, &a).await?];
        let mut unfinished = Vec::new();
        for n in 1..=calls {
            let name = format!("crash-{n}");
            w.create_fleet(&name, &a, 2, 1).await?;
            let before = w.fleet(&name).await?.version;
            let victim = w.live_ids(&name).await?[0].clone();
            let env = w.event(
                &Intent::HealthCheckFailed {
                    instance: instance(&victim)?,
                    reason: format!("crash after call {n}"),
                },
                w.now(),
            );
            w.deliver_crashing(&env, n).await;
            // The next scheduled reconcile, after the crashed invocation's leases ran out.
            w.advance(LEASE + chrono::Duration::seconds(10));
            if let Err(e) = w.reconcile(&name).await {
                unfinished.push(format!("call {n}: the reconcile failed: {e}"));
            }
            let after = w.fleet(&name).await?;
            let committed = w.store.event_record(&env.id).await?.is_some();
            let victim_alive = w.live_ids(&name).await?.contains(&victim);
            // Finished: the victim terminated, its replacement launched and recorded, nothing
            // in flight. (The replacement counts healthy from the next observation on.)
            let finished = !victim_alive
                && after.pending.is_empty()
                && after.live_instances().count() == 2
                && after.live_instances().all(|i| i.disposal.is_none());
            if committed && !finished {
                unfinished.push(format!(
                    "call {n}: the event was committed but one reconcile did not finish the replacement (victim alive: {victim_alive}, {} pending, {} live)",
                    after.pending.len(),
                    after.live_instances().count()
                ));
            }
            // What the replacement published (`InstanceReplaced`) reached the bus by then too.
            let history = w.store.history(&after.spec.name, 1000).await?;
            for lost in w.unpublished(&after, &history).await? {
                unfinished.push(format!(
                    "call {n}: {lost} was not published after one reconcile"
                ));
            }
            if !committed && after.version != before {
                // Nothing of the event was committed, so the reconcile had nothing to finish.
                unfinished.push(format!("call {n}: not committed, yet the fleet moved"));
            }
            // Lambda retries the failed invocation; the event is then done either way.
            w.deliver(&env).await;
            w.settle(&name, false, 20).await.ok();
            let mut m = w.measure(&name, 2, &a).await?;
            if w.live_ids(&name).await?.contains(&victim) {
                m.converged = false;
                m.notes.push(format!(
                    "{name}: the failed instance {victim} is still live"
                ));
            }
            measures.push(m);
        }
        let mut row = w
            .row(&format!("crash after each of the {calls} AWS calls of a replacement, then one reconcile"), measures)
            .await?;
        if !unfinished.is_empty() {
            row.converged = false;
            row.notes.extend(unfinished);
        }
        row.details
            .push(format!("the calls, in order: {}", ops.join(", ")));
        Ok(row)
    })
}

/// Fleet changes whose events are lost one time in ten, recovered by scheduled reconciles alone:
/// spec changes written by `fleet apply` (image, capacity) whose `ReconcileRequested` is lost,
/// instances stopped outside phoenix whose `HealthCheckFailed` is lost, instances terminated
/// outside phoenix (EC2 tells no phoenix function; a `ReconcileRequested` stands for a
/// state-change notification).
pub fn lost_events(sizes: Sizes) -> ScenarioFuture {
    Box::pin(async move {
        let w = World::start(sizes.seed, 2).await?;
        let images = w.images.clone();
        let mut cap = sizes.capacity;
        let mut image = 0usize;
        w.create_fleet("web", &images[image], cap, 1).await?;
        let name = FleetName::parse("web")?;
        let n = sizes.lost_events;
        let mut lost: BTreeSet<usize> = BTreeSet::new();
        while lost.len() < n.div_ceil(10) {
            let i = w.rand().below(n);
            lost.insert(i);
        }
        let reconcile = Intent::Reconcile {
            fleet: Some(name.clone()),
        };
        for i in 0..n {
            let action = w.rand().below(4);
            let live = w.live_ids("web").await?;
            let intent = match action {
                // Not while an instance awaits its repair: if it runs the image rolled to, the
                // planner's health gate counts its failure against that image (any unhealthy live
                // instance on the rollout's target image rolls the rollout back, even one
                // launched long before the rollout) and quarantines it.
                0 if !awaiting_repair(&w).await? => {
                    image = 1 - image;
                    w.apply("web", &images[image], cap, 1).await?;
                    reconcile.clone()
                }
                1 => {
                    let delta = w.rand().below(4) as i64 - 1;
                    cap = u32::try_from(
                        (i64::from(cap) + delta)
                            .clamp(i64::from(sizes.capacity), i64::from(sizes.capacity) + 3),
                    )?;
                    w.apply("web", &images[image], cap, 1).await?;
                    reconcile.clone()
                }
                // One failure at a time, outside rollouts, further apart than the breaker's
                // window: a stopped instance of a rollout's new image would (rightly) roll the
                // rollout back and quarantine the image, and two failures within the window would
                // (rightly) halt repairs. This scenario is about lost events.
                2 if !stoppable(&w, &live).await?.is_empty() => {
                    let candidates = stoppable(&w, &live).await?;
                    let id = candidates[w.rand().below(candidates.len())].clone();
                    w.advance(chrono::Duration::minutes(11));
                    w.ec2.stop_instances().instance_ids(&id).send().await?;
                    Intent::HealthCheckFailed {
                        instance: instance(&id)?,
                        reason: "stopped".into(),
                    }
                }
                _ if !live.is_empty() => {
                    let id = live[w.rand().below(live.len())].clone();
                    w.ec2.terminate_instances().instance_ids(&id).send().await?;
                    w.external
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id);
                    reconcile.clone()
                }
                _ => reconcile.clone(),
            };
            let env = w.event(&intent, w.now());
            if !lost.contains(&i) {
                w.deliver(&env).await;
            }
        }
        w.settle("web", true, 60).await.ok();
        w.last_schedule().await;
        let m = w.measure("web", cap, &images[image]).await?;
        let label = format!(
            "{} of {n} events lost, scheduled reconcile only",
            lost.len()
        );
        w.row(&label, vec![m]).await
    })
}
