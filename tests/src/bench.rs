//! The AWS side of the benchmark report (`make bench-aws`, `src/bin/bench.rs`): what phoenix asks
//! of AWS, measured against the emulator through the real SDK clients. Three sections, each a
//! markdown table whose figures stand next to their limit or anchor and the ratio of the two:
//!
//! 1. `requests`: AWS requests per operation (replace one instance, scale out and in by k, a
//!    rollout), counted by an SDK interceptor on the controller's DynamoDB, EC2 and EventBridge
//!    clients, from a converged fleet until it has converged again; and the DynamoDB capacity
//!    units they would consume.
//! 2. `scaling`: the requests and bytes of one health event in a small and a large fleet — the
//!    work per event must not grow with the fleet.
//! 3. `storm`: thousands of mixed events, duplicates among them, at a fixed concurrency through
//!    the chaos `World`: throughput, handler latency, and the duplicate actions the chaos checks
//!    count (which must be zero).
//! 4. `idle`: what converged fleets cost while nothing happens — one scheduled pass over every
//!    fleet, by operation, and a month of them at AWS's published prices.
//!
//! Requests are counted per attempt (the interceptor's `read_before_transmit`), so the SDK's
//! retries count. The harness's own reads go to the emulator directly and are not counted.

use crate::chaos::{ControllerClients, World};
use crate::converged;
use crate::faults::SplitMix64;
use anyhow::{anyhow, bail, ensure, Context, Result};
use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use phoenix_aws::ec2::Ec2Client;
use phoenix_core::events::{Envelope, Intent, ScaleTarget};
use phoenix_core::model::{Fleet, FleetSpec, Lifecycle, Observed};
use phoenix_core::planner::{self, Command, Outcome, LEASE};
use phoenix_core::{FleetName, ImageId, InstanceId};
use phoenix_protocol::budget::DEFAULT_PER_SECOND;
use phoenix_protocol::compute::Compute;
use phoenix_protocol::ports::Deadline;
use phoenix_protocol::store::STATUS_COMPLETED;
use phoenix_protocol::Intake;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------ the meter

/// Counts every request the controller's SDK clients send (each attempt), its bytes, and the
/// DynamoDB capacity it would consume, by operation (`dynamodb:GetItem`, `ec2:RunInstances`, ...).
/// Cloning shares the counts.
#[derive(Debug, Clone, Default)]
pub struct Meter(Arc<Mutex<Usage>>);

/// What was counted, by operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub ops: BTreeMap<String, OpUsage>,
    /// Every request's operation, in the order sent.
    pub sequence: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpUsage {
    pub requests: u64,
    /// Answered with an error (a cancelled transaction, a throttle, ...).
    pub failed: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub capacity: Capacity,
}

/// DynamoDB capacity units, as computed by `dynamodb_capacity`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capacity {
    pub rcu: f64,
    pub wcu: f64,
    /// Items written (transaction entries, puts, updates, deletes).
    pub items_written: u64,
    /// The largest item written, in bytes.
    pub largest_item: u64,
    /// The writes by kind of item (`fleet record`, `instance`, `history`, `event record`, ...).
    pub by_kind: BTreeMap<String, Writes>,
}

/// Writes of one kind of item.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Writes {
    pub items: u64,
    pub bytes: u64,
    pub wcu: f64,
}

impl Capacity {
    fn add(&mut self, other: &Capacity) {
        self.rcu += other.rcu;
        self.wcu += other.wcu;
        self.items_written += other.items_written;
        self.largest_item = self.largest_item.max(other.largest_item);
        for (kind, w) in &other.by_kind {
            let mine = self.by_kind.entry(kind.clone()).or_default();
            mine.items += w.items;
            mine.bytes += w.bytes;
            mine.wcu += w.wcu;
        }
    }

    /// `fleet record 3 × 2.2 KB = 18 WCU, instance 4 × 0.6 KB = 8 WCU, ...`
    pub fn writes_by_kind(&self) -> String {
        self.by_kind
            .iter()
            .map(|(kind, w)| {
                let mean = w.bytes as f64 / w.items.max(1) as f64 / 1024.0;
                format!("{kind} {} × {mean:.1} KB = {} WCU", w.items, units(w.wcu))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The controller as deployed: under the EC2 call budget's default share.
fn budgeted() -> Intake {
    Intake {
        ec2_calls_per_second: Some(DEFAULT_PER_SECOND),
        ..Intake::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Meter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counts so far.
    pub fn usage(&self) -> Usage {
        lock(&self.0).clone()
    }

    /// The counts so far, starting again from zero.
    pub fn take(&self) -> Usage {
        std::mem::take(&mut *lock(&self.0))
    }

    pub fn reset(&self) {
        self.take();
    }

    /// The controller's four clients, built from `sdk` with this meter attached.
    pub fn clients(&self, sdk: &SdkConfig) -> ControllerClients {
        ControllerClients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .build(),
            ),
            ec2: aws_sdk_ec2::Client::from_conf(
                aws_sdk_ec2::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .build(),
            ),
            elb: aws_sdk_elasticloadbalancingv2::Client::from_conf(
                aws_sdk_elasticloadbalancingv2::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .build(),
            ),
            events: aws_sdk_eventbridge::Client::from_conf(
                aws_sdk_eventbridge::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .build(),
            ),
        }
    }
}

impl Usage {
    pub fn requests(&self) -> u64 {
        self.ops.values().map(|o| o.requests).sum()
    }

    /// Requests of one operation, e.g. `ec2:RunInstances`.
    pub fn count(&self, op: &str) -> u64 {
        self.ops.get(op).map_or(0, |o| o.requests)
    }

    /// Requests of one operation answered with an error.
    pub fn failed(&self, op: &str) -> u64 {
        self.ops.get(op).map_or(0, |o| o.failed)
    }

    pub fn request_bytes(&self) -> u64 {
        self.ops.values().map(|o| o.request_bytes).sum()
    }

    pub fn response_bytes(&self) -> u64 {
        self.ops.values().map(|o| o.response_bytes).sum()
    }

    pub fn capacity(&self) -> Capacity {
        let mut c = Capacity::default();
        for o in self.ops.values() {
            c.add(&o.capacity);
        }
        c
    }

    /// `dynamodb:GetItem×2, ec2:RunInstances×1, ...`
    pub fn breakdown(&self) -> String {
        self.ops
            .iter()
            .map(|(op, u)| match u.failed {
                0 => format!("{op}×{}", u.requests),
                n => format!("{op}×{} ({n} failed)", u.requests),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Capacity by DynamoDB operation: `GetItem 2 RCU, TransactWriteItems 24 WCU, ...`
    pub fn capacity_breakdown(&self) -> String {
        self.ops
            .iter()
            .filter_map(|(op, u)| {
                let op = op.strip_prefix("dynamodb:")?;
                let c = &u.capacity;
                let mut parts = Vec::new();
                if c.rcu > 0.0 {
                    parts.push(format!("{} RCU", units(c.rcu)));
                }
                if c.wcu > 0.0 {
                    parts.push(format!("{} WCU", units(c.wcu)));
                }
                (!parts.is_empty()).then(|| format!("{op} {}", parts.join(" + ")))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the request phase of an attempt leaves for its response phase (the request itself is
/// gone by then: the HTTP client consumed it).
#[derive(Debug, Clone)]
struct Attempt {
    op: String,
    dynamodb_request: Option<Vec<u8>>,
}

impl Storable for Attempt {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Meter {
    fn name(&self) -> &'static str {
        "BenchMeter"
    }

    // Once per attempt, so retries count.
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = cfg
            .load::<Metadata>()
            .map(|m| format!("{}:{}", m.service().to_ascii_lowercase(), m.name()))
            .unwrap_or_else(|| "unknown:unknown".into());
        let body = context.request().body().bytes().unwrap_or_default();
        {
            let mut usage = lock(&self.0);
            usage.sequence.push(op.clone());
            let u = usage.ops.entry(op.clone()).or_default();
            u.requests += 1;
            u.request_bytes += body.len() as u64;
        }
        let dynamodb_request = op.starts_with("dynamodb:").then(|| body.to_vec());
        cfg.interceptor_state().store_put(Attempt {
            op,
            dynamodb_request,
        });
        Ok(())
    }

    // The response body has been read into memory by now (none of these operations streams).
    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(attempt) = cfg.load::<Attempt>() else {
            return Ok(());
        };
        let response = context.response().body().bytes().unwrap_or_default();
        let capacity = attempt
            .dynamodb_request
            .as_deref()
            .map(|request| dynamodb_capacity(&attempt.op, request, response))
            .unwrap_or_default();
        let mut usage = lock(&self.0);
        let u = usage.ops.entry(attempt.op.clone()).or_default();
        u.response_bytes += response.len() as u64;
        u.failed += u64::from(!context.response().status().is_success());
        u.capacity.add(&capacity);
        Ok(())
    }
}

// ------------------------------------------------------------------------- DynamoDB capacity

/// The capacity one DynamoDB request would consume, computed from its JSON by DynamoDB's
/// published rules, because the emulator's figures are meaningless (fixed values, none at all for
/// transactions):
///
/// - an item's size is the sum of its attribute names' and values' lengths (a number: one byte per
///   two significant digits, plus one; a list or map: 3 bytes, plus one per element);
/// - reads: 1 RCU per 4 KB, at least 1, strongly consistent; half that eventually consistent
///   (always so on an index). GetItem: the item returned (a missing one still costs the
///   minimum). Query: the items of the page together — items a filter expression dropped were
///   read and charged all the same; the answer only counts them (`ScannedCount`), so they are
///   taken at the mean size of the returned ones (1 KB if none was returned);
/// - writes: 1 WCU per KB, at least 1, per item; twice that in a transaction; a condition check
///   in a transaction: 2 RCU per 4 KB.
///
/// Approximations, all small for phoenix's items: a Put over an existing item is charged by
/// DynamoDB on the larger of the old and new item, here on the new one; an Update on the item
/// after the update, here on its key plus the values the update sets; a Delete or condition
/// check on the item's size, which the request does not show (taken as one unit); a cancelled
/// transaction as if it had committed; and the index write of an item entering the instance
/// index (1 WCU, keys only) is not counted.
pub fn dynamodb_capacity(op: &str, request: &[u8], response: &[u8]) -> Capacity {
    let request: Value = serde_json::from_slice(request).unwrap_or(Value::Null);
    let response: Value = serde_json::from_slice(response).unwrap_or(Value::Null);
    let consistent =
        request["ConsistentRead"].as_bool() == Some(true) && request.get("IndexName").is_none();
    let read = |bytes: u64| {
        let units = bytes.div_ceil(4096).max(1) as f64;
        if consistent {
            units
        } else {
            units / 2.0
        }
    };
    let mut c = Capacity::default();
    // `item`: the item, or for an update or delete its key (enough to tell its kind).
    let write = |item: &Value, size: u64, factor: f64, c: &mut Capacity| {
        let wcu = factor * size.div_ceil(1024).max(1) as f64;
        c.wcu += wcu;
        c.items_written += 1;
        c.largest_item = c.largest_item.max(size);
        let w = c.by_kind.entry(item_kind(item).into()).or_default();
        w.items += 1;
        w.bytes += size;
        w.wcu += wcu;
    };
    match op.trim_start_matches("dynamodb:") {
        "GetItem" => c.rcu = read(item_size(&response["Item"])),
        "Query" | "Scan" => {
            let items = response["Items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let returned: u64 = items.iter().map(item_size).sum();
            let count = items.len() as u64;
            let scanned = response["ScannedCount"].as_u64().unwrap_or(count);
            let mean = returned.checked_div(count).unwrap_or(1024);
            c.rcu = read(returned + scanned.saturating_sub(count) * mean);
        }
        // Each item is charged as a GetItem of its own, consistency as the table's request asks.
        "BatchGetItem" => {
            let tables = response["Responses"].as_object();
            for (table, items) in tables.into_iter().flatten() {
                let consistent =
                    request["RequestItems"][table]["ConsistentRead"].as_bool() == Some(true);
                for item in items.as_array().into_iter().flatten() {
                    let units = item_size(item).div_ceil(4096).max(1) as f64;
                    c.rcu += if consistent { units } else { units / 2.0 };
                }
            }
        }
        "PutItem" => write(&request["Item"], item_size(&request["Item"]), 1.0, &mut c),
        "UpdateItem" => write(&request["Key"], update_size(&request), 1.0, &mut c),
        "DeleteItem" => write(&request["Key"], 1024, 1.0, &mut c),
        "TransactWriteItems" => {
            for entry in request["TransactItems"].as_array().into_iter().flatten() {
                if let Some(put) = entry.get("Put") {
                    write(&put["Item"], item_size(&put["Item"]), 2.0, &mut c);
                } else if let Some(update) = entry.get("Update") {
                    write(&update["Key"], update_size(update), 2.0, &mut c);
                } else if let Some(delete) = entry.get("Delete") {
                    write(&delete["Key"], 1024, 2.0, &mut c);
                } else if entry.get("ConditionCheck").is_some() {
                    c.rcu += 2.0;
                }
            }
        }
        "BatchWriteItem" => {
            let tables = request["RequestItems"].as_object();
            for entry in tables
                .into_iter()
                .flat_map(|t| t.values())
                .flat_map(|v| v.as_array().map(Vec::as_slice).unwrap_or(&[]).iter())
            {
                match entry.get("PutRequest") {
                    Some(put) => write(&put["Item"], item_size(&put["Item"]), 1.0, &mut c),
                    None => write(&entry["DeleteRequest"]["Key"], 1024, 1.0, &mut c),
                }
            }
        }
        _ => {}
    }
    c
}

/// Which of phoenix's items (`store.rs`'s layout) an item or key is.
fn item_kind(item: &Value) -> &'static str {
    let pk = item["pk"]["S"].as_str().unwrap_or_default();
    let sk = item["sk"]["S"].as_str().unwrap_or_default();
    if pk == "FLEETS" {
        return "fleet index";
    }
    match sk.split('#').next() {
        Some("META") => "fleet record",
        Some("INST") => "instance",
        Some("HIST") => "history",
        Some("MAIL") => "outbox",
        Some("EVENT") => "event record",
        _ => "other",
    }
}

/// The size of an item (a map of attribute names to typed values) by DynamoDB's rules.
pub fn item_size(item: &Value) -> u64 {
    item.as_object().map_or(0, |attrs| {
        attrs
            .iter()
            .map(|(name, v)| name.len() as u64 + value_size(v))
            .sum()
    })
}

fn value_size(v: &Value) -> u64 {
    let Some((kind, x)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    let strings = || x.as_array().map(Vec::as_slice).unwrap_or(&[]).iter();
    match kind.as_str() {
        "S" => x.as_str().map_or(0, |s| s.len() as u64),
        "N" => x.as_str().map_or(0, number_size),
        "B" => x.as_str().map_or(0, base64_len),
        "BOOL" | "NULL" => 1,
        "SS" => strings()
            .filter_map(Value::as_str)
            .map(|s| s.len() as u64)
            .sum(),
        "NS" => strings().filter_map(Value::as_str).map(number_size).sum(),
        "BS" => strings().filter_map(Value::as_str).map(base64_len).sum(),
        "L" => 3 + strings().map(|e| value_size(e) + 1).sum::<u64>(),
        "M" => {
            3 + x.as_object().map_or(0, |m| {
                m.iter()
                    .map(|(k, e)| k.len() as u64 + value_size(e) + 1)
                    .sum::<u64>()
            })
        }
        _ => 0,
    }
}

fn number_size(n: &str) -> u64 {
    let mantissa = n
        .trim_start_matches(['-', '+'])
        .split(['e', 'E'])
        .next()
        .unwrap_or_default();
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    (significant.len() as u64).div_ceil(2) + 1
}

fn base64_len(s: &str) -> u64 {
    let padding = s.bytes().rev().take_while(|b| *b == b'=').count();
    ((s.len() / 4 * 3).saturating_sub(padding)) as u64
}

/// An Update's item, approximately: its key, and the names and values its expression sets.
fn update_size(update: &Value) -> u64 {
    let names: u64 = update["ExpressionAttributeNames"]
        .as_object()
        .map_or(0, |m| {
            m.values()
                .filter_map(Value::as_str)
                .map(|s| s.len() as u64)
                .sum()
        });
    let values: u64 = update["ExpressionAttributeValues"]
        .as_object()
        .map_or(0, |m| m.values().map(value_size).sum());
    item_size(&update["Key"]) + names + values
}

// ---------------------------------------------------------------------------------- the bench

/// How big each section is.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Section 1: the fleet's capacity, its surge (the rollout's wave size) and k of scale by k.
    pub fleet: u32,
    pub surge: u32,
    pub k: u32,
    /// Section 2: the two fleet sizes compared.
    pub small_fleet: u32,
    pub large_fleet: u32,
    /// Section 3.
    pub events: usize,
    pub concurrency: usize,
    pub storm_fleets: usize,
    pub storm_capacity: u32,
    /// Section 4: converged fleets measured idle, as (fleets, instances each).
    pub idle: Vec<(u32, u32)>,
    /// Section 5: a zone failing, as (fleets, instances each): every instance reported failed at
    /// once.
    pub zone: (u32, u32),
    pub seed: u64,
}

impl Sizes {
    /// `make bench-aws`.
    pub fn full() -> Self {
        Sizes {
            fleet: 20,
            surge: 5,
            k: 10,
            small_fleet: 10,
            large_fleet: 10_000,
            events: 10_000,
            concurrency: 50,
            // One emulator per fleet (see `event_storm`); 20 keeps each table small and about
            // 2-3 events of the 50 in flight per fleet.
            storm_fleets: 20,
            storm_capacity: 8,
            idle: vec![(1, 10), (1, 1_000), (100, 100), (1, 10_000)],
            // 1 000 events on one emulator time out its transactions (it copies the whole table
            // for each): 200, in one table, so that they share one budget as in one account.
            zone: (5, 40),
            seed: 7,
        }
    }

    /// A quick run of every section.
    pub fn small() -> Self {
        Sizes {
            large_fleet: 100,
            events: 500,
            storm_fleets: 10,
            idle: vec![(1, 10), (1, 100), (5, 10)],
            zone: (2, 20),
            ..Self::full()
        }
    }
}

/// One section of the report.
#[derive(Debug, Clone)]
pub struct Section {
    pub title: String,
    /// Markdown: tables and notes.
    pub body: String,
    pub seconds: f64,
    /// False if a guarantee broke (a duplicate action, an event lost, a fleet not converged).
    pub ok: bool,
}

impl Section {
    pub fn markdown(&self) -> String {
        format!(
            "### {}\n\n{}\n_Measured in {:.0} s._\n",
            self.title,
            self.body.trim_end(),
            self.seconds
        )
    }
}

/// The sections named in `only` (`requests`, `scaling`, `storm`, `idle`, `zone`), or all, in
/// order.
pub async fn run(
    sizes: &Sizes,
    only: &[String],
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Section>> {
    let mut out = Vec::new();
    let wanted = |key: &str| only.is_empty() || only.iter().any(|o| o == key);
    if wanted("requests") {
        out.push(requests_per_operation(sizes, progress).await?);
    }
    if wanted("scaling") {
        out.push(per_event_scaling(sizes, progress).await?);
    }
    if wanted("storm") {
        out.push(event_storm(sizes, progress).await?);
    }
    if wanted("idle") {
        out.push(idle_cost(sizes, progress).await?);
    }
    if wanted("zone") {
        out.push(zone_failure(sizes, progress).await?);
    }
    Ok(out)
}

/// A chaos `World` whose controller's clients carry a meter.
pub struct Bench {
    pub world: World,
    pub meter: Meter,
}

/// What one measured operation cost, from its event until the fleet converged again.
#[derive(Debug, Clone)]
pub struct Measured {
    pub usage: Usage,
    /// Scheduled reconciles it needed after its event.
    pub ticks: usize,
    /// How many of `usage.sequence` each invocation sent: the event's, then each reconcile's.
    pub invocations: Vec<usize>,
    pub seconds: f64,
}

impl Measured {
    /// The requests in order, one line per invocation (the event's, then each reconcile's),
    /// repeats folded: `dynamodb:Query → ec2:DescribeInstances×2 → ...`.
    pub fn invocations(&self, event: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, n) in self.invocations.iter().enumerate() {
            let ops = &self.usage.sequence
                [start.min(self.usage.sequence.len())..(start + n).min(self.usage.sequence.len())];
            start += n;
            let mut folded: Vec<(String, usize)> = Vec::new();
            for op in ops {
                match folded.last_mut() {
                    Some((last, count)) if last == op => *count += 1,
                    _ => folded.push((op.clone(), 1)),
                }
            }
            let calls: Vec<String> = folded
                .into_iter()
                .map(|(op, n)| if n == 1 { op } else { format!("{op}×{n}") })
                .collect();
            let who = if i == 0 {
                event.to_string()
            } else {
                format!("reconcile {i}")
            };
            out.push(format!("{who} ({n}): {}", calls.join(" → ")));
        }
        out
    }
}

impl Bench {
    pub async fn start(seed: u64, images: usize) -> Result<Bench> {
        Self::start_with(seed, images, budgeted()).await
    }

    /// `start`, with the controller's `intake` (another EC2 call budget, or none).
    pub async fn start_with(seed: u64, images: usize, intake: Intake) -> Result<Bench> {
        let meter = Meter::new();
        let m = meter.clone();
        let world =
            World::start_custom(seed, images, false, move |sdk| m.clients(sdk), intake).await?;
        Ok(Bench { world, meter })
    }

    /// Creates a fleet through the controller (as `phoenix fleet apply` and the reconciles that
    /// follow do) and waits until it converged. Not counted.
    pub async fn create_fleet(
        &self,
        name: &str,
        image: &ImageId,
        capacity: u32,
        surge: u32,
        extra_policy: &str,
    ) -> Result<()> {
        let spec = FleetSpec::from_yaml(&fleet_yaml(name, image, capacity, surge, extra_policy))?;
        self.world
            .controller
            .apply_fleet(spec)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        self.world.settle(name, false, 60).await?;
        self.meter.reset();
        Ok(())
    }

    /// Delivers `env` to a converged fleet, then runs scheduled reconciles until the fleet has
    /// converged again, counting every request of both.
    pub async fn until_converged(
        &self,
        name: &str,
        env: &Envelope,
        max_ticks: usize,
    ) -> Result<Measured> {
        ensure!(
            converged(&self.world.fleet(name).await?),
            "fleet {name} is not converged before the measurement"
        );
        self.meter.reset();
        let started = Instant::now();
        ensure!(
            self.world.deliver(env).await,
            "{} was not handled",
            env.detail_type
        );
        let mut ticks = 0;
        let mut version = 0;
        let mut invocations = vec![self.meter.usage().sequence.len()];
        loop {
            let fleet = self.world.fleet(name).await?;
            if converged(&fleet) {
                break;
            }
            ensure!(
                ticks < max_ticks,
                "fleet {name} did not converge within {max_ticks} scheduled reconciles"
            );
            // As between real schedules: a reconcile that changed nothing waits for a lease.
            if fleet.version == version {
                self.world.advance(LEASE + chrono::Duration::seconds(1));
            }
            version = fleet.version;
            self.world.tick().await?;
            ticks += 1;
            let sent: usize = invocations.iter().sum();
            invocations.push(self.meter.usage().sequence.len() - sent);
        }
        Ok(Measured {
            usage: self.meter.take(),
            ticks,
            invocations,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The requests of one `HealthCheckFailed` on one instance of a converged fleet: its handler
    /// alone (not the reconcile that later sees the replacement healthy).
    pub async fn health_event(&self, name: &str) -> Result<Usage> {
        let fleet = self.world.fleet(name).await?;
        ensure!(converged(&fleet), "fleet {name} is not converged");
        let victim = fleet
            .live_instances()
            .next()
            .map(|i| i.id.clone())
            .ok_or_else(|| anyhow!("fleet {name} has no instance"))?;
        let env = self.world.event(
            &Intent::HealthCheckFailed {
                instance: victim,
                reason: "bench".into(),
            },
            self.world.now(),
        );
        self.meter.reset();
        ensure!(self.world.deliver(&env).await, "the health event failed");
        Ok(self.meter.take())
    }

    /// A converged fleet of `capacity` instances, set up without the controller's per-step reads,
    /// which make setting up a large fleet on the emulator quadratic (every reconcile step reads
    /// the whole fleet from DynamoDB and EC2; a step launches at most
    /// `planner::MAX_LAUNCHES_PER_STEP` instances; and every emulated transaction copies the
    /// whole table). The same decisions in the same order: the
    /// planner's steps, folded in memory as the store would commit them; every launch through
    /// the real EC2 adapter (same tags, same tokens; a fresh decision, as the controller launches
    /// one it has just committed), observed as EC2 then reports it (running, checks ok); then
    /// the resulting items written in the store's layout (`store.rs`) with BatchWriteItem instead
    /// of one transaction per step, and read back through the store. History entries of the
    /// setup are not written; nothing on a health event's path reads them.
    pub async fn seed_fleet(&self, name: &str, image: &ImageId, capacity: u32) -> Result<Setup> {
        let mut times = Setup::default();
        let started = Instant::now();
        let spec = FleetSpec::from_yaml(&fleet_yaml(name, image, capacity, 1, ""))?;
        let now = self.world.now();
        let compute = Compute::new(Ec2Client::new(self.world.ec2.clone()));
        let mut fleet = committed(
            &Fleet::new(spec.clone(), now),
            planner::create_fleet(spec, None, now)?.fleet,
        );
        let mut observed: Vec<Observed> = Vec::new();
        let max_steps = capacity as usize + 10;
        for step_no in 0.. {
            ensure!(step_no < max_steps, "setting up {name} did not finish");
            // The clock moves on as it does between a real reconcile's steps: an instance counts
            // healthy only once the clock has passed its launch.
            let now = self.world.now();
            let step = planner::reconcile(&fleet, &observed, now);
            if step.is_noop() {
                break;
            }
            fleet = committed(&fleet, step.fleet.clone());
            let mut outcomes = Vec::new();
            for command in &step.commands {
                let Command::Launch {
                    token,
                    image,
                    count,
                    offerings,
                } = command
                else {
                    bail!("setting up a new fleet decided a termination: {command:?}");
                };
                let t = Instant::now();
                let out = compute
                    .launch(
                        &fleet,
                        token,
                        image,
                        *count,
                        offerings,
                        true,
                        Deadline::NONE,
                    )
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                times.launches += t.elapsed().as_secs_f64();
                observed.extend(out.instances.iter().map(|l| Observed {
                    targets: Default::default(),
                    id: l.id.clone(),
                    image: Some(image.clone()),
                    state: Lifecycle::Running,
                    status_ok: true,
                    system_impaired: false,
                    launched_at: l.launched_at,
                    token: Some(token.clone()),
                    zone: l.zone.clone(),
                    instance_type: l.instance_type.clone(),
                    subnet: l.subnet.clone(),
                    definition: l.definition.clone(),
                    protected: false,
                }));
                outcomes.push(Outcome::Launched {
                    token: token.clone(),
                    instances: out.instances,
                    request_ids: out.request_id.into_iter().collect(),
                    refused: Vec::new(),
                });
            }
            if !outcomes.is_empty() {
                let record = planner::record_outcomes(&fleet, &outcomes, now);
                fleet = committed(&fleet, record.fleet);
            }
        }
        let t = Instant::now();
        self.write_fleet(&fleet).await?;
        times.writes = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let loaded = self.world.fleet(name).await?;
        ensure!(
            converged(&loaded) && loaded.live_instances().count() == capacity as usize,
            "fleet {name} as set up is not converged on {capacity} instances: {} live ({} in \
             memory), {} healthy, {} pending",
            loaded.live_instances().count(),
            fleet.live_instances().count(),
            loaded.live_instances().filter(|i| i.is_healthy()).count(),
            loaded.pending.len()
        );
        // EC2 holds what RunInstances answered; the record must hold exactly those. Listing a
        // large fleet back from the emulator costs minutes, so EC2 is asked about a sample.
        let mut recorded: Vec<String> = loaded.live_instances().map(|i| i.id.to_string()).collect();
        let mut launched: Vec<String> = observed.iter().map(|o| o.id.to_string()).collect();
        recorded.sort();
        launched.sort();
        ensure!(
            recorded == launched,
            "fleet {name}: the record does not hold what was launched"
        );
        let step = (recorded.len() / 100).max(1);
        let sample: Vec<String> = recorded.iter().step_by(step).cloned().collect();
        let found = self
            .world
            .ec2
            .describe_instances()
            .set_instance_ids(Some(sample.clone()))
            .send()
            .await?;
        let running = found
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                i.state().and_then(|s| s.name()).map(|n| n.as_str()) == Some("running")
                    && i.tags().iter().any(|t| {
                        t.key() == Some(phoenix_core::model::TAG_FLEET) && t.value() == Some(name)
                    })
            })
            .count();
        ensure!(
            running == sample.len(),
            "fleet {name}: {running} of {} sampled instances are running in EC2 with the fleet's tag",
            sample.len()
        );
        times.checks = t.elapsed().as_secs_f64();
        times.total = started.elapsed().as_secs_f64();
        self.meter.reset();
        Ok(times)
    }

    /// The fleet's items as `DynamoStore::commit` writes them (fleet record, fleet index entry,
    /// one item per instance), in batches of 25.
    async fn write_fleet(&self, fleet: &Fleet) -> Result<()> {
        let s = |v: String| AttributeValue::S(v);
        let pk = format!("FLEET#{}", fleet.spec.name);
        let mut items = vec![
            HashMap::from([
                ("pk".to_string(), s(pk.clone())),
                ("sk".to_string(), s("META".into())),
                (
                    "version".to_string(),
                    AttributeValue::N(fleet.version.to_string()),
                ),
                ("state".to_string(), s(serde_json::to_string(fleet)?)),
                ("updated_at".to_string(), s(self.world.now().to_rfc3339())),
            ]),
            HashMap::from([
                ("pk".to_string(), s("FLEETS".into())),
                ("sk".to_string(), s(pk.clone())),
            ]),
        ];
        for inst in fleet.instances.values() {
            items.push(HashMap::from([
                ("pk".to_string(), s(pk.clone())),
                ("sk".to_string(), s(format!("INST#{}", inst.id))),
                ("instance_id".to_string(), s(inst.id.to_string())),
                ("data".to_string(), s(serde_json::to_string(inst)?)),
            ]));
        }
        let client = aws_sdk_dynamodb::Client::new(&self.world.direct);
        for chunk in items.chunks(25) {
            let mut requests = chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder().set_item(Some(item.clone())).build()?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<Vec<_>>>()?;
            while !requests.is_empty() {
                let out = client
                    .batch_write_item()
                    .request_items(self.world.store.table().name(), requests)
                    .send()
                    .await?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(self.world.store.table().name()))
                    .unwrap_or_default();
            }
        }
        Ok(())
    }
}

/// Where the time of `Bench::seed_fleet` went, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    pub total: f64,
    /// RunInstances calls.
    pub launches: f64,
    /// Writing the items.
    pub writes: f64,
    /// Reading the fleet back from the store and EC2.
    pub checks: f64,
}

/// The fleet as committed from `before`: the next version, every instance loaded.
fn committed(before: &Fleet, mut next: Fleet) -> Fleet {
    next.version = before.version + 1;
    next.complete = true;
    next
}

fn fleet_yaml(
    name: &str,
    image: &ImageId,
    capacity: u32,
    surge: u32,
    extra_policy: &str,
) -> String {
    format!(
        "name: {name}\nimage: {image}\ncapacity: {capacity}\ninstance_type: t3.micro\n\
         policy:\n  max_surge: {surge}\n  max_unavailable: 0\n  progress_deadline: 6h\n{extra_policy}\
         tags:\n  team: bench\n"
    )
}

// --------------------------------------------------------------------------------- formatting

/// A markdown table; columns named with a trailing `>` are right-aligned (the `>` is dropped).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let right: Vec<bool> = header.iter().map(|h| h.ends_with('>')).collect();
    let names: Vec<String> = header
        .iter()
        .map(|h| h.trim_end_matches('>').to_string())
        .collect();
    let mut lines = vec![names];
    lines.extend(rows.iter().cloned());
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
                .max(3)
        })
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        out.push('|');
        for (c, w) in widths.iter().enumerate() {
            let cell = line.get(c).map(String::as_str).unwrap_or("");
            let pad = " ".repeat(w - cell.chars().count());
            if right[c] {
                out.push_str(&format!(" {pad}{cell} |"));
            } else {
                out.push_str(&format!(" {cell}{pad} |"));
            }
        }
        out.push('\n');
        if i == 0 {
            out.push('|');
            for (c, w) in widths.iter().enumerate() {
                let dashes = "-".repeat(*w);
                if right[c] {
                    out.push_str(&format!(" {}: |", &dashes[1..]));
                } else {
                    out.push_str(&format!(" {dashes} |"));
                }
            }
            out.push('\n');
        }
    }
    out
}

/// `12.5` → `12.5`, `12.0` → `12`.
fn units(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn ratio(value: f64, anchor: f64) -> String {
    if anchor <= 0.0 {
        "—".into()
    } else {
        format!("{:.2}×", value / anchor)
    }
}

/// `1234567` → `1 234 567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

// ---------------------------------------------------------------------- 1. requests per operation

/// One operation of section 1.
struct Operation {
    name: String,
    /// What was counted besides the event.
    counted: String,
    /// The requests in order, per invocation.
    sequence: Vec<String>,
    measured: Measured,
    /// Fewest requests the operation can take: the EC2 calls that act plus one state write each.
    minimum: u64,
    /// (RunInstances, TerminateInstances) it cannot do with fewer.
    mutating_floor: (u64, u64),
    /// Capacity anchors: the reads the decision needs and one transaction of the items changed.
    rcu_anchor: f64,
    wcu_anchor: f64,
}

/// Section 1: a fleet of `sizes.fleet`, surge `sizes.surge`; each operation from converged to
/// converged, in turn on the same fleet.
pub async fn requests_per_operation(
    sizes: &Sizes,
    progress: &mut impl FnMut(&str),
) -> Result<Section> {
    let started = Instant::now();
    let b = Bench::start(sizes.seed, 2).await?;
    let (a, new_image) = (b.world.images[0].clone(), b.world.images[1].clone());
    let name = "web";
    let fleet_name = FleetName::parse(name)?;
    b.create_fleet(name, &a, sizes.fleet, sizes.surge, "")
        .await?;
    let (k, cap, surge) = (sizes.k, sizes.fleet, sizes.surge);
    let mut ops = Vec::new();
    let counted = |m: &Measured, what: &str| match m.ticks {
        0 => format!("the {what} handler"),
        1 => format!("the {what} handler + 1 scheduled reconcile"),
        n => format!("the {what} handler + {n} scheduled reconciles"),
    };

    // Replace one unhealthy instance.
    let victim = b
        .world
        .fleet(name)
        .await?
        .live_instances()
        .next()
        .map(|i| i.id.clone())
        .ok_or_else(|| anyhow!("no instance"))?;
    let env = b.world.event(
        &Intent::HealthCheckFailed {
            instance: victim,
            reason: "bench".into(),
        },
        b.world.now(),
    );
    let m = b.until_converged(name, &env, 10).await?;
    progress(&format!("replace one: {} requests", m.usage.requests()));
    ops.push(Operation {
        name: "replace one unhealthy instance".into(),
        counted: counted(&m, "HealthCheckFailed"),
        sequence: m.invocations("HealthCheckFailed"),
        measured: m,
        minimum: 3,
        mutating_floor: (1, 1),
        // Find the instance's fleet (index, eventually consistent) and read its two records.
        rcu_anchor: 0.5 + 2.0,
        // Fleet record, the failed and the new instance, history entry, event record.
        wcu_anchor: 2.0 * 5.0,
    });

    // Scale out by k, then in by k.
    for (delta, label) in [(i64::from(k), "scale out"), (-i64::from(k), "scale in")] {
        let env = b.world.event(
            &Intent::Scale {
                fleet: fleet_name.clone(),
                target: ScaleTarget::Delta(delta),
            },
            b.world.now(),
        );
        let fleet_read = fleet_read_units(&b, name).await?;
        let m = b.until_converged(name, &env, 10).await?;
        progress(&format!("{label} by {k}: {} requests", m.usage.requests()));
        let (floor, count) = if delta > 0 { ((1, 0), 2) } else { ((0, 1), 2) };
        ops.push(Operation {
            name: format!("{label} by {k}"),
            counted: counted(&m, "ScaleRequested"),
            sequence: m.invocations("ScaleRequested"),
            measured: m,
            minimum: count,
            mutating_floor: floor,
            rcu_anchor: fleet_read,
            // Fleet record, k instances, history entry, event record.
            wcu_anchor: 2.0 * f64::from(k + 3),
        });
    }

    // A rollout to a new image, in waves of `surge`.
    let fleet_read = fleet_read_units(&b, name).await?;
    let env = b.world.event(
        &Intent::ImageReady {
            fleet: fleet_name.clone(),
            image: new_image.clone(),
        },
        b.world.now(),
    );
    let m = b.until_converged(name, &env, 40).await?;
    let fleet = b.world.fleet(name).await?;
    let waves = fleet.rollout.as_ref().map_or(0, |r| r.waves.len()) as u64;
    ensure!(
        waves > 0 && fleet.spec.image == new_image,
        "the rollout did not happen"
    );
    progress(&format!(
        "rollout: {} requests in {waves} waves",
        m.usage.requests()
    ));
    ops.push(Operation {
        name: format!("rollout of {cap} (surge {surge}): {waves} waves"),
        counted: counted(&m, "ImageReady"),
        sequence: m.invocations("ImageReady"),
        measured: m,
        minimum: 3 * waves,
        mutating_floor: (waves, waves),
        // One read of the fleet per wave.
        rcu_anchor: fleet_read * waves as f64,
        // Per wave: fleet record, `surge` new and `surge` old instances, history entry.
        wcu_anchor: 2.0 * f64::from(2 * surge + 2) * waves as f64,
    });
    drop(b);

    let mut rows = Vec::new();
    let mut capacity_rows = Vec::new();
    for op in &ops {
        let u = &op.measured.usage;
        let run = u.count("ec2:RunInstances");
        let term = u.count("ec2:TerminateInstances");
        rows.push(vec![
            op.name.clone(),
            op.counted.clone(),
            u.requests().to_string(),
            op.minimum.to_string(),
            ratio(u.requests() as f64, op.minimum as f64),
            format!("{run} + {term}"),
            format!("{} + {}", op.mutating_floor.0, op.mutating_floor.1),
            ratio(
                (run + term) as f64,
                (op.mutating_floor.0 + op.mutating_floor.1) as f64,
            ),
            thousands(u.request_bytes()),
            thousands(u.response_bytes()),
            u.breakdown(),
        ]);
        let c = u.capacity();
        capacity_rows.push(vec![
            op.name.clone(),
            units(c.rcu),
            units(op.rcu_anchor),
            ratio(c.rcu, op.rcu_anchor),
            units(c.wcu),
            units(op.wcu_anchor),
            ratio(c.wcu, op.wcu_anchor),
            c.items_written.to_string(),
            thousands(c.largest_item),
            c.writes_by_kind(),
            u.capacity_breakdown(),
        ]);
    }
    // The rollout per wave, for comparison with the other rows.
    if let Some(op) = ops.last() {
        let waves = op.mutating_floor.0.max(1);
        let u = &op.measured.usage;
        let per = |x: u64| x as f64 / waves as f64;
        rows.push(vec![
            "one rollout wave (the rollout ÷ waves)".into(),
            "as above".into(),
            units(per(u.requests())),
            "3".into(),
            ratio(per(u.requests()), 3.0),
            format!(
                "{} + {}",
                units(per(u.count("ec2:RunInstances"))),
                units(per(u.count("ec2:TerminateInstances")))
            ),
            "1 + 1".into(),
            ratio(
                per(u.count("ec2:RunInstances") + u.count("ec2:TerminateInstances")),
                2.0,
            ),
            thousands(u.request_bytes() / waves),
            thousands(u.response_bytes() / waves),
            String::new(),
        ]);
    }
    let mut body = String::new();
    body.push_str(&format!(
        "AWS requests (every attempt) from a converged fleet of {cap} until it has converged \
         again. Minimum: the EC2 calls that act plus one state write each (RunInstances + \
         TerminateInstances + 1 write = 3; scale by k: 1 EC2 call + 1 write = 2). Goal: ≤ 1.25× \
         the minimum.\n\n"
    ));
    body.push_str(&table(
        &[
            "operation",
            "counted",
            "requests>",
            "minimum>",
            "ratio>",
            "RunInstances + TerminateInstances>",
            "floor>",
            "ratio>",
            "bytes sent>",
            "bytes received>",
            "requests by operation",
        ],
        &rows,
    ));
    body.push_str("\nThe requests in order, per invocation (how many in brackets):\n\n");
    for op in &ops {
        body.push_str(&format!("- {}\n", op.name));
        for line in &op.sequence {
            body.push_str(&format!("  - {line}\n"));
        }
    }
    body.push_str(
        "\nDynamoDB capacity units of the same operations, computed from each request and answer \
         by DynamoDB's published rules (the emulator reports none for transactions). RCU anchor: \
         the reads the decision needs once (replace: the instance index lookup and two consistent \
         item reads; otherwise one consistent read of the whole fleet, per wave for a rollout). \
         WCU anchor: one transaction writing the items that change, each ≤ 1 KB (fleet record, \
         instances, history entry, event record).\n\n",
    );
    body.push_str(&table(
        &[
            "operation",
            "RCU>",
            "anchor>",
            "ratio>",
            "WCU>",
            "anchor>",
            "ratio>",
            "items written>",
            "largest item (B)>",
            "WCU by item (items × mean size)",
            "by operation",
        ],
        &capacity_rows,
    ));
    let ok = ops.iter().all(|op| {
        op.measured.usage.count("ec2:RunInstances") == op.mutating_floor.0
            && op.measured.usage.count("ec2:TerminateInstances") == op.mutating_floor.1
    });
    if !ok {
        body.push_str("\nMUTATING EC2 CALLS ABOVE THEIR FLOOR: see the first table.\n");
    }
    Ok(Section {
        title: "AWS requests per operation (emulator)".into(),
        body,
        seconds: started.elapsed().as_secs_f64(),
        ok,
    })
}

/// RCU of one strongly consistent read of the whole fleet: its record, and its live instance
/// records by one Query (read straight from the emulator, not counted).
async fn fleet_read_units(b: &Bench, name: &str) -> Result<f64> {
    let client = aws_sdk_dynamodb::Client::new(&b.world.direct);
    let pk = AttributeValue::S(format!("FLEET#{name}"));
    let meta = client
        .get_item()
        .table_name(b.world.store.table().name())
        .key("pk", pk.clone())
        .key("sk", AttributeValue::S("META".into()))
        .send()
        .await?
        .item
        .unwrap_or_default();
    let mut instances = 0;
    let mut pages = client
        .query()
        .table_name(b.world.store.table().name())
        .key_condition_expression("pk = :pk AND begins_with(sk, :inst)")
        .filter_expression("attribute_not_exists(gone)")
        .expression_attribute_values(":pk", pk)
        .expression_attribute_values(":inst", AttributeValue::S("INST#".into()))
        .into_paginator()
        .items()
        .send();
    while let Some(item) = pages.next().await {
        instances += sdk_item_size(&item?);
    }
    Ok(sdk_item_size(&meta).div_ceil(4096).max(1) as f64 + instances.div_ceil(4096).max(1) as f64)
}

/// `item_size` of an item as the SDK returns it (only strings and numbers occur here).
fn sdk_item_size(item: &HashMap<String, AttributeValue>) -> u64 {
    item.iter()
        .map(|(k, v)| {
            k.len() as u64
                + match v {
                    AttributeValue::S(s) => s.len() as u64,
                    AttributeValue::N(n) => number_size(n),
                    _ => 1,
                }
        })
        .sum()
}

// ------------------------------------------------------------------ 2. per-event work vs size

/// Section 2: one `HealthCheckFailed` (its handler alone) in a fleet of `small_fleet` and one of
/// `large_fleet`, each on its own emulator.
pub async fn per_event_scaling(sizes: &Sizes, progress: &mut impl FnMut(&str)) -> Result<Section> {
    let started = Instant::now();
    let mut results = Vec::new();
    for size in [sizes.small_fleet, sizes.large_fleet] {
        // Without the EC2 call budget, whose admissions depend on the clock, not the fleet.
        let b = Bench::start_with(sizes.seed, 1, Intake::default()).await?;
        let image = b.world.images[0].clone();
        let times = b
            .seed_fleet("web", &image, size)
            .await
            .with_context(|| format!("setting up a fleet of {size}"))?;
        let setup = times.total;
        progress(&format!(
            "fleet of {size}: set up in {:.0} s (RunInstances {:.0} s, writes {:.0} s, checks {:.0} s)",
            times.total, times.launches, times.writes, times.checks
        ));
        let t = Instant::now();
        let usage = b.health_event("web").await?;
        let event = t.elapsed().as_secs_f64();
        progress(&format!(
            "fleet of {size}: health event: {} requests, {} bytes received, {event:.1} s",
            usage.requests(),
            usage.response_bytes()
        ));
        results.push((size, usage, setup, event));
    }
    let mut rows = Vec::new();
    for (size, u, setup, event) in &results {
        let c = u.capacity();
        rows.push(vec![
            thousands(u64::from(*size)),
            u.requests().to_string(),
            thousands(u.response_bytes()),
            thousands(u.request_bytes()),
            units(c.rcu),
            units(c.wcu),
            format!("{event:.1} s (setup {setup:.0} s)"),
            u.breakdown(),
        ]);
    }
    let mut ok = true;
    if let [(small, a, ..), (large, b, ..)] = results.as_slice() {
        let r = |x: f64, y: f64| ratio(y, x);
        rows.push(vec![
            format!("{} ÷ {} (anchor ≈ 1×)", thousands(u64::from(*large)), small),
            r(a.requests() as f64, b.requests() as f64),
            r(a.response_bytes() as f64, b.response_bytes() as f64),
            r(a.request_bytes() as f64, b.request_bytes() as f64),
            r(a.capacity().rcu, b.capacity().rcu),
            r(a.capacity().wcu, b.capacity().wcu),
            String::new(),
            String::new(),
        ]);
        ok = a.requests() == b.requests();
    }
    let mut body = format!(
        "One `HealthCheckFailed` on one instance of a converged fleet: the requests of its \
         handler alone (launch the replacement, terminate the instance, the commits around \
         them), not the scheduled reconcile that later sees the replacement healthy (that one \
         reads the whole fleet by design). Fleets of {} and {} instances, each on its own \
         emulator. The fleets are set up from the planner's own steps with the real EC2 adapter, \
         their items bulk-written in the store's layout and read back through the store \
         (`Bench::seed_fleet`): through the controller's reconciles the setup is quadratic on the \
         emulator (each step of at most {} launches reads the whole fleet, and each emulated \
         transaction copies the whole table) — hours for 10 000.\n\n",
        sizes.small_fleet,
        thousands(u64::from(sizes.large_fleet)),
        planner::MAX_LAUNCHES_PER_STEP,
    );
    body.push_str(&table(
        &[
            "fleet size>",
            "requests>",
            "bytes received>",
            "bytes sent>",
            "RCU>",
            "WCU>",
            "handler time",
            "requests by operation",
        ],
        &rows,
    ));
    if !ok {
        body.push_str("\nTHE REQUESTS OF ONE HEALTH EVENT GROW WITH THE FLEET.\n");
    }
    Ok(Section {
        title: "Per-event work vs fleet size (emulator)".into(),
        body,
        seconds: started.elapsed().as_secs_f64(),
        ok,
    })
}

// ------------------------------------------------------------------------------ 3. event storm

/// One fleet of the storm, in its own world.
struct StormFleet {
    bench: Bench,
    name: String,
    /// Live instance ids as last read from the store, to aim health events at.
    ids: Mutex<Vec<InstanceId>>,
    /// Events generated for this fleet (the ids are read again every `REFRESH`).
    generated: AtomicUsize,
    /// The running sum of the scale deltas sent, kept within ±2 so capacity stays positive.
    delta_sum: Mutex<i64>,
    capacity: u32,
}

const REFRESH: usize = 20;
/// The fewest requests per event of the storm's mix: the event's own EC2 calls and one write
/// (HealthCheckFailed 3, HealthCheckPassed 1, a scale by one 2, ImageReady 3 for its first wave;
/// a duplicate none), weighted as generated.
const MIX_MINIMUM: f64 = (1.0 - DUPLICATE_SHARE) * (0.2 * 3.0 + 0.3 * 1.0 + 0.3 * 2.0 + 0.2 * 3.0);
const DUPLICATE_SHARE: f64 = 0.10;

/// Section 3: `sizes.events` events over `sizes.storm_fleets` fleets at `sizes.concurrency`.
///
/// Each fleet runs in its own world (emulator, proxy, table). The emulator copies the whole table
/// for every item of every transaction (its rollback), so one table holding every event's record
/// and history entry makes each commit slower than the last — quadratic in events, hours for
/// 10 000 on one emulator. DynamoDB's cost per transaction does not depend on the table's size,
/// and fleets share nothing but the table, so one table per fleet changes nothing phoenix does.
pub async fn event_storm(sizes: &Sizes, progress: &mut impl FnMut(&str)) -> Result<Section> {
    let started = Instant::now();
    let meter = Meter::new();
    let mut fleets = Vec::new();
    // A fleet's breaker would (rightly) halt repairs under this many failures at once and
    // wait for an operator; the storm is about delivery, so it stays open.
    let policy = "  breaker: {unhealthy_percent: 100}\n";
    for f in 0..sizes.storm_fleets {
        let m = meter.clone();
        let world = World::start_custom(
            sizes.seed + f as u64,
            3,
            false,
            move |sdk| m.clients(sdk),
            budgeted(),
        )
        .await?;
        let bench = Bench {
            world,
            meter: meter.clone(),
        };
        let name = format!("storm-{f}");
        let image = bench.world.images[0].clone();
        bench
            .create_fleet(&name, &image, sizes.storm_capacity, 2, policy)
            .await?;
        let ids = live_ids(&bench, &name).await?;
        fleets.push(Arc::new(StormFleet {
            bench,
            name,
            ids: Mutex::new(ids),
            generated: AtomicUsize::new(0),
            delta_sum: Mutex::new(0),
            capacity: sizes.storm_capacity,
        }));
    }
    meter.reset();
    progress(&format!(
        "storm: {} fleets of {} ready in {:.0} s",
        fleets.len(),
        sizes.storm_capacity,
        started.elapsed().as_secs_f64()
    ));

    let next = Arc::new(AtomicUsize::new(0));
    let sent: Arc<Mutex<Vec<(usize, Envelope)>>> = Arc::new(Mutex::new(Vec::new()));
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let duplicates = Arc::new(AtomicU64::new(0));
    let not_handled = Arc::new(AtomicU64::new(0));
    let fleets = Arc::new(fleets);
    let storm_started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sizes.concurrency {
        let (next, sent, latencies, duplicates, not_handled, fleets) = (
            next.clone(),
            sent.clone(),
            latencies.clone(),
            duplicates.clone(),
            not_handled.clone(),
            fleets.clone(),
        );
        let (events, seed) = (sizes.events, sizes.seed);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= events {
                    return Ok::<(), anyhow::Error>(());
                }
                let mut rng = SplitMix64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let earlier = {
                    let sent = lock(&sent);
                    (rng.next_f64() < DUPLICATE_SHARE && !sent.is_empty())
                        .then(|| sent[rng.below(sent.len())].clone())
                };
                let (f, env) = match earlier {
                    Some(e) => {
                        duplicates.fetch_add(1, Ordering::SeqCst);
                        e
                    }
                    None => {
                        let f = rng.below(fleets.len());
                        let env = storm_event(&fleets[f], &mut rng).await?;
                        lock(&sent).push((f, env.clone()));
                        (f, env)
                    }
                };
                let t = Instant::now();
                let handled = fleets[f].bench.world.deliver(&env).await;
                lock(&latencies).push(t.elapsed());
                if !handled {
                    not_handled.fetch_add(1, Ordering::SeqCst);
                }
                if (i + 1) % 1000 == 0 {
                    eprintln!("  storm: {} events delivered", i + 1);
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let storm_secs = storm_started.elapsed().as_secs_f64();
    let usage = meter.take();
    progress(&format!(
        "storm: {} events in {storm_secs:.0} s; settling",
        sizes.events
    ));

    // Settle with scheduled reconciles, then the chaos checks.
    let settle_started = Instant::now();
    let mut m = StormChecks::default();
    for f in fleets.iter() {
        let w = &f.bench.world;
        if let Err(e) = w.settle(&f.name, true, 100).await {
            m.notes.push(format!("{}: {e}", f.name));
        }
        let fleet = w.fleet(&f.name).await?;
        let measure = w
            .measure(&f.name, fleet.spec.capacity, &fleet.spec.image)
            .await?;
        m.duplicate_launches += measure.duplicate_launches;
        m.wrongly_terminated += measure.wrongly_terminated;
        m.leaked += measure.leaked;
        m.lost_history += measure.lost_history;
        m.converged += usize::from(measure.converged);
        m.notes.extend(measure.notes);
        for id in w.unmanaged_touched().await? {
            m.wrongly_terminated += 1;
            m.notes.push(format!("unmanaged instance {id} was touched"));
        }
        m.final_instances += measure.final_instances;
        m.capacity += fleet.spec.capacity as usize;
    }
    let settle_secs = settle_started.elapsed().as_secs_f64();

    let mut lat = lock(&latencies).clone();
    lat.sort();
    let pct = |p: usize| {
        lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let events = sizes.events as f64;
    let dups = duplicates.load(Ordering::SeqCst);
    let dead = not_handled.load(Ordering::SeqCst);
    let ok = m.duplicate_launches == 0
        && m.wrongly_terminated == 0
        && m.leaked == 0
        && m.lost_history == 0
        && dead == 0
        && m.converged == fleets.len();
    let zero = |n: u64| {
        vec![
            n.to_string(),
            "0".into(),
            if n == 0 { "ok" } else { "FAILED" }.into(),
        ]
    };
    let mut rows = vec![
        vec![
            "events delivered (duplicates among them)".into(),
            format!("{} ({dups})", thousands(sizes.events as u64)),
            format!("~{:.0} % duplicates", DUPLICATE_SHARE * 100.0),
            format!("{:.1} %", dups as f64 * 100.0 / events.max(1.0)),
        ],
        vec![
            format!("throughput at concurrency {}", sizes.concurrency),
            format!("{:.1} events/s", events / storm_secs.max(1e-9)),
            "—".into(),
            format!("{storm_secs:.0} s"),
        ],
        vec![
            "handler latency p50".into(),
            format!("{:.0} ms", pct(50)),
            "—".into(),
            String::new(),
        ],
        vec![
            "handler latency p99".into(),
            format!("{:.0} ms", pct(99)),
            "60 000 ms (the functions' timeout)".into(),
            ratio(pct(99), 60_000.0),
        ],
        vec![
            "AWS requests per event (controller)".into(),
            format!("{:.1}", usage.requests() as f64 / events.max(1.0)),
            format!("{MIX_MINIMUM:.1} (the mix's minimum)"),
            ratio(usage.requests() as f64 / events.max(1.0), MIX_MINIMUM),
        ],
        vec![
            "TransactWriteItems cancelled (lost races, claims of duplicates)".into(),
            thousands(usage.failed("dynamodb:TransactWriteItems")),
            format!(
                "{} sent",
                thousands(usage.count("dynamodb:TransactWriteItems"))
            ),
            format!(
                "{:.0} %",
                usage.failed("dynamodb:TransactWriteItems") as f64 * 100.0
                    / usage.count("dynamodb:TransactWriteItems").max(1) as f64
            ),
        ],
    ];
    for (label, n) in [
        (
            "duplicate launches (instances beyond a decision's count)",
            m.duplicate_launches,
        ),
        ("wrongly terminated instances", m.wrongly_terminated),
        ("leaked instances", m.leaked),
        ("lost history entries", m.lost_history),
        ("events not handled (dead-lettered)", dead),
    ] {
        let mut row = vec![label.to_string()];
        row.extend(zero(n));
        rows.push(row);
    }
    rows.push(vec![
        format!("fleets converged after settling ({settle_secs:.0} s)"),
        format!("{}/{}", m.converged, fleets.len()),
        format!("{}/{}", fleets.len(), fleets.len()),
        format!("{} instances / capacity {}", m.final_instances, m.capacity),
    ]);
    let mut body = format!(
        "{} events over {} fleets of {} (about {} events in flight per fleet) delivered by {} \
         concurrent workers as Lambda's asynchronous invocation delivers them (an invocation \
         with a 60 s deadline, retried twice on a retryable error, then dead-lettered): \
         HealthCheckFailed 20 %, HealthCheckPassed 30 %, ScaleRequested delta ±1 20 % and \
         desired 10 %, ImageReady (3 images) 20 % — and ~10 % of deliveries a duplicate of an \
         earlier event. Then scheduled reconciles until every fleet converged, and the chaos \
         checks. Latency: one event's delivery, first invocation to last. Each fleet has its own \
         emulator: the emulator copies the whole table for every item of every transaction, so \
         one table holding every event's record would make the run quadratic in events (hours); \
         DynamoDB's cost does not depend on the table's size. The proxy serves each emulator's \
         DynamoDB one request at a time (its transactions are not atomic otherwise), and {} \
         emulators share 2 cores: latency and throughput are the emulator's, not AWS's; \
         requests per event and the checks are phoenix's.\n\n",
        thousands(sizes.events as u64),
        fleets.len(),
        sizes.storm_capacity,
        sizes.concurrency.div_ceil(fleets.len()),
        sizes.concurrency,
        fleets.len()
    );
    body.push_str(&table(
        &["figure", "value>", "limit / anchor>", "ratio / note>"],
        &rows,
    ));
    body.push_str(&format!("\nRequests by operation: {}\n", usage.breakdown()));
    if !m.notes.is_empty() {
        body.push_str("\nWhat went wrong:\n");
        for n in m.notes.iter().take(20) {
            body.push_str(&format!("- {n}\n"));
        }
    }
    Ok(Section {
        title: "Event storm (emulator)".into(),
        body,
        seconds: started.elapsed().as_secs_f64(),
        ok,
    })
}

#[derive(Debug, Default)]
struct StormChecks {
    duplicate_launches: u64,
    wrongly_terminated: u64,
    leaked: u64,
    lost_history: u64,
    converged: usize,
    final_instances: usize,
    capacity: usize,
    notes: Vec<String>,
}

async fn live_ids(b: &Bench, name: &str) -> Result<Vec<InstanceId>> {
    Ok(b.world
        .fleet(name)
        .await?
        .live_instances()
        .map(|i| i.id.clone())
        .collect())
}

/// A fresh event for fleet `f`: health events aim at instances its record holds (an instance it
/// does not know would be rejected, rightly).
async fn storm_event(f: &StormFleet, rng: &mut SplitMix64) -> Result<Envelope> {
    let w = &f.bench.world;
    if f.generated.fetch_add(1, Ordering::SeqCst) % REFRESH == REFRESH - 1 {
        let ids = live_ids(&f.bench, &f.name).await?;
        *lock(&f.ids) = ids;
    }
    let name = FleetName::parse(&f.name)?;
    let instance = {
        let ids = lock(&f.ids);
        (!ids.is_empty()).then(|| ids[rng.below(ids.len())].clone())
    };
    let r = rng.next_f64();
    let intent = match instance {
        Some(instance) if r < 0.20 => Intent::HealthCheckFailed {
            instance,
            reason: "storm".into(),
        },
        Some(instance) if r < 0.50 => Intent::HealthCheckPassed { instance },
        _ if r < 0.70 => {
            let mut sum = lock(&f.delta_sum);
            let d = if *sum >= 2 {
                -1
            } else if *sum <= -2 {
                1
            } else if rng.below(2) == 0 {
                -1
            } else {
                1
            };
            *sum += d;
            Intent::Scale {
                fleet: name,
                target: ScaleTarget::Delta(d),
            }
        }
        _ if r < 0.80 => Intent::Scale {
            fleet: name,
            target: ScaleTarget::Desired(f.capacity - 2 + rng.below(5) as u32),
        },
        _ => Intent::ImageReady {
            fleet: name,
            image: w.images[rng.below(w.images.len())].clone(),
        },
    };
    Ok(w.event(&intent, w.now()))
}

// ------------------------------------------------------------------------------- 4. idle cost

/// AWS's published on-demand prices, us-east-1, as listed in November 2024 (DynamoDB after its
/// on-demand price cut of that month; Lambda on arm64, as the functions are built).
const PRICE_PER_READ_UNIT: f64 = 0.125 / 1e6;
const PRICE_PER_WRITE_UNIT: f64 = 0.625 / 1e6;
const PRICE_PER_LAMBDA_REQUEST: f64 = 0.20 / 1e6;
const PRICE_PER_GB_SECOND_ARM: f64 = 0.000_013_333_4;
/// The reconcile function's memory (the template's `MemorySize`).
const FUNCTION_GB: f64 = 0.25;
/// The schedule reconciles every fleet once a minute: passes in 30 days.
const PASSES_PER_MONTH: f64 = 60.0 * 24.0 * 30.0;
/// A quiet fleet is passed over in full once its quiet runs out (`planner::QUIET_HORIZON`, an
/// hour): passes in 30 days that are full.
const FULL_PASSES_PER_MONTH: f64 = 24.0 * 30.0;
/// EC2's non-mutating request bucket refills 20 requests a second per account and region.
const EC2_READS_PER_MINUTE: f64 = 20.0 * 60.0;

/// Section 4: converged fleets left alone. Each (fleets, instances) is set up on its own emulator
/// (`Bench::seed_fleet`); the schedule's tick is delivered until every fleet is quiet (the first
/// ticks pass over them in full and record them quiet), and the tick that finds them all quiet is
/// measured: what almost every minute of an idle control plane costs. Then an hour passes and the
/// next tick, a full pass over every fleet as the quiet runs out, is measured too: what one
/// minute an hour costs.
pub async fn idle_cost(sizes: &Sizes, progress: &mut impl FnMut(&str)) -> Result<Section> {
    let started = Instant::now();
    let mut rows = Vec::new();
    for &(fleets, capacity) in &sizes.idle {
        let b = Bench::start(sizes.seed, 1).await?;
        let image = b.world.images[0].clone();
        let t = Instant::now();
        for k in 0..fleets {
            b.seed_fleet(&format!("web-{k}"), &image, capacity)
                .await
                .with_context(|| format!("setting up fleet {k} of {capacity}"))?;
        }
        progress(&format!(
            "{fleets} × {capacity}: set up in {:.0} s",
            t.elapsed().as_secs_f64()
        ));
        let tick = || {
            b.world
                .event(&Intent::Reconcile { fleet: None }, b.world.now())
        };
        // A tick and what it cost: its usage, its time, and how many fleets it found quiet and
        // passed over at all (the invocation's deadline may stop it before the last).
        let measured = || async {
            b.meter.reset();
            let t = Instant::now();
            // Without the functions' deadline: the emulator lists 1 000 instances in seconds
            // (AWS in well under one), and would cut the larger fleets' passes short.
            let report = b.world.invoke(&tick(), Some(Deadline::NONE)).await;
            let seconds = t.elapsed().as_secs_f64();
            let report = report.map_err(|e| anyhow!("the scheduled pass failed: {e}"))?;
            let done: Vec<_> = report
                .fleets
                .iter()
                .filter(|f| f.failures.is_empty())
                .collect();
            let quiet = done
                .iter()
                .filter(|f| f.outcome == phoenix_aws::FleetOutcome::Quiet)
                .count();
            anyhow::Ok((b.meter.take(), seconds, quiet, done.len()))
        };
        let mut quick = None;
        for _ in 0..10 {
            let (u, seconds, quiet, _) = measured().await?;
            if quiet == fleets as usize {
                quick = Some((u, seconds));
                break;
            }
        }
        let Some((quick, quick_seconds)) = quick else {
            // The emulator lists 1 000 instances in seconds and copies its table for every
            // transaction: its passes over the largest fleets time out before one settles.
            progress(&format!(
                "{fleets} × {capacity}: not all quiet after 10 passes"
            ));
            let mut row = vec![format!("{fleets} × {}", thousands(u64::from(capacity)))];
            row.push("not quiet after 10 passes on the emulator".into());
            row.resize(14, "–".into());
            rows.push(row);
            continue;
        };
        b.world.advance(chrono::Duration::minutes(61));
        let (full, full_seconds, _, reached) = measured().await?;
        for k in 0..fleets {
            let name = format!("web-{k}");
            ensure!(
                converged(&b.world.fleet(&name).await?),
                "fleet {name} is not converged"
            );
        }
        let (q, f) = (quick.capacity(), full.capacity());
        let ec2 = |u: &Usage| -> u64 {
            u.ops
                .iter()
                .filter(|(op, _)| op.starts_with("ec2:"))
                .map(|(_, o)| o.requests)
                .sum()
        };
        let quick_passes = PASSES_PER_MONTH - FULL_PASSES_PER_MONTH;
        let dynamo_cost = |c: &Capacity| c.rcu * PRICE_PER_READ_UNIT + c.wcu * PRICE_PER_WRITE_UNIT;
        let dynamo = dynamo_cost(&q) * quick_passes + dynamo_cost(&f) * FULL_PASSES_PER_MONTH;
        let gb_seconds =
            (quick_seconds * quick_passes + full_seconds * FULL_PASSES_PER_MONTH) * FUNCTION_GB;
        let lambda =
            PASSES_PER_MONTH * PRICE_PER_LAMBDA_REQUEST + gb_seconds * PRICE_PER_GB_SECOND_ARM;
        let instances = u64::from(fleets) * u64::from(capacity);
        progress(&format!(
            "{fleets} × {capacity}: quick look {} requests, {:.1} RCU, {quick_seconds:.1} s; \
             hourly full pass {} requests, {:.1} RCU, {full_seconds:.1} s",
            quick.requests(),
            q.rcu,
            full.requests(),
            f.rcu
        ));
        let cut_short = if reached < fleets as usize {
            format!(" (cut short: {reached} of {fleets} fleets)")
        } else {
            String::new()
        };
        rows.push(vec![
            format!("{fleets} × {}", thousands(u64::from(capacity))),
            quick.requests().to_string(),
            format!(
                "{} ({:.1} %)",
                ec2(&quick),
                100.0 * ec2(&quick) as f64 / EC2_READS_PER_MINUTE
            ),
            units(q.rcu),
            format!("{quick_seconds:.2} s"),
            format!("{}{cut_short}", full.requests()),
            units(f.rcu),
            units(f.wcu),
            format!("{full_seconds:.2} s"),
            format!("${dynamo:.2}"),
            format!("${lambda:.2}"),
            format!("${:.2}", dynamo + lambda),
            format!(
                "${:.2}",
                (dynamo + lambda) * 10_000.0 / instances.max(1) as f64
            ),
            quick.breakdown(),
        ]);
    }
    let mut body = String::from(
        "Converged fleets, nothing happening: the scheduled pass over every fleet (the schedule \
         sends one a minute) as it finds them quiet — a quick look, its requests by operation — \
         and as it passes over them in full once an hour, and a month of them (43 200 passes, \
         720 of them full) at \
         AWS's published on-demand prices in us-east-1 as of November 2024: DynamoDB $0.125 per \
         million read and $0.625 per million write request units; Lambda arm64 $0.20 per million \
         requests and $0.0000133334 per GB-second, at the function's 256 MB. EC2's API is free \
         but rate-limited: its share is of the account's non-mutating bucket (refilled 20 a \
         second, 1 200 a minute). Lambda time is the pass's handler time against the emulator \
         in a debug build, an upper bound for AWS. Logs, EventBridge and data transfer are left \
         out.\n\n",
    );
    body.push_str(&table(
        &[
            "fleets × instances",
            "quick look: requests>",
            "EC2 (share of the minute's)>",
            "RCU>",
            "time>",
            "hourly full pass: requests>",
            "RCU>",
            "WCU>",
            "time>",
            "DynamoDB $/month>",
            "Lambda $/month>",
            "total $/month>",
            "per 10 000 instances (goal ≤ $1)>",
            "requests by operation",
        ],
        &rows,
    ));
    Ok(Section {
        title: "Idle cost: converged fleets, nothing happening (emulator)".into(),
        body,
        seconds: started.elapsed().as_secs_f64(),
        ok: true,
    })
}

// ------------------------------------------------------------------------------- 5. a zone fails

/// Section 5: a zone fails. Converged fleets in one account (one emulator, one table), and every
/// instance's health check fails at once: one event each, delivered `sizes.concurrency` at a
/// time, as Lambda would run them. Under the budget (phoenix's default share) and, as the
/// control, without one: EC2 requests in the busiest second, events handled and dead-lettered,
/// whether every failure is on record, the requests by operation.
pub async fn zone_failure(sizes: &Sizes, progress: &mut impl FnMut(&str)) -> Result<Section> {
    let started = Instant::now();
    let (fleets, capacity) = sizes.zone;
    let mut rows = Vec::new();
    let mut ok = true;
    for budget in [Some(DEFAULT_PER_SECOND), None] {
        let intake = Intake {
            ec2_calls_per_second: budget,
            ..Intake::default()
        };
        let b = Arc::new(Bench::start_with(sizes.seed, 1, intake).await?);
        let image = b.world.images[0].clone();
        let mut events = Vec::new();
        for k in 0..fleets {
            let name = format!("zone-{k}");
            b.seed_fleet(&name, &image, capacity).await?;
            for id in live_ids(&b, &name).await? {
                events.push(b.world.event(
                    &Intent::HealthCheckFailed {
                        instance: id,
                        reason: "zone outage".into(),
                    },
                    b.world.now(),
                ));
            }
        }
        let total = events.len();
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        b.meter.reset();
        b.world.proxy.reset_calls();
        let t = Instant::now();
        let gate = Arc::new(tokio::sync::Semaphore::new(sizes.concurrency));
        let mut storm = tokio::task::JoinSet::new();
        for env in events {
            let (b, gate) = (b.clone(), gate.clone());
            storm.spawn(async move {
                let _slot = gate.acquire().await;
                b.world.deliver(&env).await
            });
        }
        let mut handled = 0;
        while let Some(done) = storm.join_next().await {
            handled += usize::from(done.unwrap_or(false));
        }
        let seconds = t.elapsed().as_secs_f64();
        let peak = b.world.proxy.ec2_peak_per_second();
        let u = b.meter.take();
        // Every event on record: applied (or put in its fleet's inbox), its record completed.
        let mut recorded = 0;
        for id in &ids {
            if let Some(r) = b.world.store.event_record(id).await? {
                recorded += usize::from(r.status == STATUS_COMPLETED);
            }
        }
        let label = match budget {
            Some(n) => format!("budget {n} a second"),
            None => "no budget (the control)".into(),
        };
        progress(&format!(
            "zone: {label}: {handled} of {total} handled, {recorded} recorded, peak {peak} EC2 a \
             second, {seconds:.0} s"
        ));
        if budget.is_some_and(|n| peak > n as usize) || handled < total || recorded < total {
            ok = false;
        }
        let ec2: u64 = u
            .ops
            .iter()
            .filter(|(op, _)| op.starts_with("ec2:"))
            .map(|(_, o)| o.requests)
            .sum();
        rows.push(vec![
            label,
            thousands(total as u64),
            format!("{handled}"),
            format!("{}", total - handled),
            format!("{recorded}"),
            format!("{peak}"),
            thousands(ec2),
            format!("{seconds:.0} s"),
            u.breakdown(),
        ]);
    }
    let mut body = format!(
        "{fleets} fleets of {capacity} in one account; every instance's health check fails at \
         once, one event each, delivered {} at a time. The busiest second's EC2 requests are \
         counted as they reach the emulator, by second of the clock (as the budget counts).\n\n",
        sizes.concurrency
    );
    body.push_str(&table(
        &[
            "controller",
            "events>",
            "handled>",
            "dead-lettered>",
            "events on record>",
            "EC2 in the busiest second>",
            "EC2 requests>",
            "time>",
            "requests by operation",
        ],
        &rows,
    ));
    Ok(Section {
        title: "A zone fails: health events at once, under the EC2 call budget (emulator)".into(),
        body,
        seconds: started.elapsed().as_secs_f64(),
        ok,
    })
}
