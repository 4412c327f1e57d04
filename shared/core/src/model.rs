//! The fleet model: what a fleet should be (`FleetSpec`), what phoenix knows it is (`Fleet`,
//! `Instance`, `Rollout`), and what it has decided but not yet seen happen (`PendingLaunch`).

use crate::error::{Error, Result};
use crate::ids::{FleetName, ImageId, InstanceId};
use crate::quantity::{Quantity, Rounding};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::lifecycle::{Health, Lifecycle};
pub use crate::quantity::{validate_capacity, MAX_CAPACITY};
pub use crate::time::{Seconds, Timestamp};

/// Tag keys phoenix puts on every instance it launches, at launch (tag-on-create), so that an
/// instance is attributable to its fleet and decision from the moment it exists.
pub const TAG_FLEET: &str = "phoenix:fleet";
pub const TAG_IMAGE: &str = "phoenix:image";
pub const TAG_TOKEN: &str = "phoenix:launch";

/// Which signal makes a freshly launched instance count as healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthSignal {
    /// EC2 reports the instance running with both status checks `ok`.
    #[default]
    Ec2,
    /// A `HealthCheckPassed` event names the instance (an application-level check).
    Event,
    /// Both of the above.
    Both,
}

impl HealthSignal {
    /// Whether the signals an instance has received satisfy this policy.
    pub fn satisfied_by(self, signals: Signals) -> bool {
        match self {
            HealthSignal::Ec2 => signals.ec2_ok,
            HealthSignal::Event => signals.passed,
            HealthSignal::Both => signals.ec2_ok && signals.passed,
        }
    }
}

/// The health signals an instance has given so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Signals {
    /// EC2 reported it running with both status checks `ok`.
    #[serde(default)]
    pub ec2_ok: bool,
    /// A `HealthCheckPassed` event named it.
    #[serde(default)]
    pub passed: bool,
}

/// How replacements proceed. Percentages are of the fleet's capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// How many instances above capacity may exist while replacing (rounded up). Default 1.
    #[serde(default = "default_surge")]
    pub max_surge: Quantity,
    /// How many instances below capacity may be unavailable while replacing (rounded down). Default 0.
    #[serde(default = "default_unavailable")]
    pub max_unavailable: Quantity,
    /// What makes a new instance count as healthy. Default `ec2`.
    #[serde(default)]
    pub health_check: HealthSignal,
    /// Grace after launch before an instance can count as healthy. Default 0s.
    #[serde(default, skip_serializing_if = "Seconds::is_zero")]
    pub warmup: Seconds,
    /// Size of the first wave of a rollout (count or % of capacity). Default: none (the first
    /// wave is as large as `max_surge` allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Quantity>,
    /// How long the canary must stay healthy before the rest follows. Default 0s.
    #[serde(default, skip_serializing_if = "Seconds::is_zero")]
    pub bake: Seconds,
    /// Pause points, in % of capacity replaced, each with a pause (a duration, or until
    /// `phoenix rollout resume` when none is given). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<Checkpoint>,
    /// A wave must be healthy within this time or the rollout rolls back. Default 10m.
    #[serde(default = "default_deadline")]
    pub progress_deadline: Seconds,
    /// Roll back automatically when the new image fails its health gate. Default true.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// Most instances taken away per hour, for every reason together (rollout waves, repairs,
    /// scale-in). Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replacements_per_hour: Option<u32>,
    /// Mass-failure breaker.
    #[serde(default)]
    pub breaker: BreakerPolicy,
}

fn default_deadline() -> Seconds {
    Seconds(600)
}
fn default_true() -> bool {
    true
}

/// A pause point of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// % of capacity on the new image, healthy, at which to pause (1-99).
    pub percent: u32,
    /// How long to pause; none: until `phoenix rollout resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Seconds>,
}

/// When to stop replacing unhealthy instances because the cause is probably shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Trip when more than this % of capacity is unhealthy at once (and at least 2). Default 20.
    #[serde(default = "default_breaker")]
    pub unhealthy_percent: u32,
    /// Failures this recent count as "at once", even if already replaced. Default 10m.
    #[serde(default = "default_breaker_window")]
    pub window: Seconds,
}

fn default_breaker_window() -> Seconds {
    Seconds(600)
}

fn default_breaker() -> u32 {
    20
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            unhealthy_percent: default_breaker(),
            window: default_breaker_window(),
        }
    }
}

fn default_surge() -> Quantity {
    Quantity::Count(1)
}
fn default_unavailable() -> Quantity {
    Quantity::Count(0)
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            max_surge: default_surge(),
            max_unavailable: default_unavailable(),
            health_check: HealthSignal::Ec2,
            warmup: Seconds(0),
            canary: None,
            bake: Seconds(0),
            checkpoints: Vec::new(),
            progress_deadline: default_deadline(),
            auto_rollback: true,
            max_replacements_per_hour: None,
            breaker: BreakerPolicy::default(),
        }
    }
}

/// The disruption budget resolved against a capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// Most instances that may exist at once (capacity + surge).
    pub max_total: u32,
    /// Fewest healthy instances that must remain (capacity - unavailable).
    pub min_healthy: u32,
}

impl RolloutPolicy {
    pub fn budget(&self, capacity: u32) -> Budget {
        let mut surge = self.max_surge.resolve(capacity, Rounding::Up);
        let unavailable = self
            .max_unavailable
            .resolve(capacity, Rounding::Down)
            .min(capacity);
        // Both zero would forbid every replacement; like Kubernetes, allow one surge instead.
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        Budget {
            max_total: capacity.saturating_add(surge),
            min_healthy: capacity - unavailable,
        }
    }
}

/// A launch template to launch from instead of (or in addition to) the fleet's own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplateRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What a fleet should be. Written by `phoenix fleet apply`; changed by events (image, capacity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    pub name: FleetName,
    /// The approved image every instance should run.
    pub image: ImageId,
    #[serde(deserialize_with = "capacity_from_any")]
    pub capacity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<LaunchTemplateRef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub policy: RolloutPolicy,
    /// Follow new images AWS announces (AMI available, Image Builder build finished) that match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_selector: Option<crate::images::ImageSelector>,
    /// Which images the fleet accepts at all, whoever announces them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<crate::images::Admission>,
    /// When planned replacements (scheduled maintenance) may happen, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<crate::notice::MaintenanceWindow>,
    /// What an in-place change to an instance (CloudTrail) does: off, record or replace (default).
    #[serde(default, skip_serializing_if = "crate::notice::TaintMode::is_default")]
    pub taint: crate::notice::TaintMode,
}

/// Capacities arrive as JSON numbers from users; read them wide so `-1` and `1e9` get our own
/// message instead of serde's "expected u32".
fn capacity_from_any<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    validate_capacity(v).map_err(serde::de::Error::custom)
}

impl FleetSpec {
    /// Checks what serde cannot: cross-field rules and reserved tag keys.
    pub fn validate(&self) -> Result<()> {
        validate_capacity(i64::from(self.capacity))?;
        if self.instance_type.is_none() && self.launch_template.is_none() {
            return Err(Error::invalid(
                "instance_type",
                "required unless a launch_template is given",
            ));
        }
        if let Some(t) = &self.instance_type {
            let ok = t.split_once('.').is_some_and(|(family, size)| {
                !family.is_empty()
                    && !size.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            });
            if !ok {
                return Err(Error::invalid(
                    "instance_type",
                    format!("{t:?} is not an EC2 instance type like \"t3.micro\""),
                ));
            }
        }
        if let Some(lt) = &self.launch_template {
            if lt.id.is_some() == lt.name.is_some() {
                return Err(Error::invalid(
                    "launch_template",
                    "give exactly one of id or name",
                ));
            }
        }
        let p = &self.policy;
        let mut last = 0;
        for c in &p.checkpoints {
            if c.percent == 0 || c.percent >= 100 || c.percent <= last {
                return Err(Error::invalid(
                    "policy.checkpoints",
                    format!(
                        "{}% must be between 1 and 99 and larger than the one before",
                        c.percent
                    ),
                ));
            }
            last = c.percent;
        }
        if p.breaker.unhealthy_percent == 0 || p.breaker.unhealthy_percent > 100 {
            return Err(Error::invalid(
                "policy.breaker.unhealthy_percent",
                "must be between 1 and 100",
            ));
        }
        if p.progress_deadline.is_zero() {
            return Err(Error::invalid(
                "policy.progress_deadline",
                "must be more than 0s",
            ));
        }
        if p.max_replacements_per_hour == Some(0) {
            return Err(Error::invalid(
                "policy.max_replacements_per_hour",
                "0 would forbid every replacement; leave it out for no limit",
            ));
        }
        if let Some(s) = &self.image_selector {
            s.validate()?;
        }
        if let Some(a) = &self.admission {
            a.validate()?;
        }
        if let Some(w) = &self.maintenance_window {
            w.validate()?;
        }
        for key in self.tags.keys() {
            let lower = key.to_ascii_lowercase();
            if lower.starts_with("phoenix:") || lower.starts_with("aws:") {
                return Err(Error::invalid(
                    "tags",
                    format!("{key:?} uses a reserved prefix (phoenix: or aws:)"),
                ));
            }
        }
        Ok(())
    }

    /// Reads a fleet file (YAML, of which JSON is a subset). Errors name the line and the field.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let spec: FleetSpec =
            serde_yaml::from_str(text).map_err(|e| Error::FleetFile(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }
}

/// phoenix has decided to terminate this instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disposal {
    pub reason: String,
    pub decided_at: Timestamp,
    /// Terminate only once this launch (its replacement) has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_launch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub image: ImageId,
    pub launched_at: Timestamp,
    pub state: Lifecycle,
    pub health: Health,
    #[serde(default)]
    pub signals: Signals,
    /// The launch decision that created it (its EC2 ClientToken and `phoenix:launch` tag).
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposal: Option<Disposal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated_at: Option<Timestamp>,
    /// In-place changes made to it outside phoenix (CloudTrail), newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<crate::notice::Taint>,
    /// A replacement owed to it though it has not failed (Spot interruption, maintenance, taint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retirement: Option<crate::notice::Retirement>,
}

impl Instance {
    pub fn is_live(&self) -> bool {
        self.terminated_at.is_none()
    }
    pub fn is_healthy(&self) -> bool {
        self.health == Health::Healthy && self.state == Lifecycle::Running
    }
    pub fn is_failed(&self) -> bool {
        matches!(self.health, Health::Unhealthy { .. })
    }
}

/// A launch phoenix decided and has not yet seen the instances of. Recorded before RunInstances is
/// called (write-ahead), so a crash between the call and the record is recovered by finding the
/// instances by their `phoenix:launch` tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLaunch {
    pub token: String,
    pub image: ImageId,
    pub count: u32,
    pub reason: String,
    pub decided_at: Timestamp,
    /// Until then, the invocation that decided it owns the call; after, any reconcile may finish it.
    pub lease_until: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    InProgress,
    /// Stopped at a checkpoint or by an operator; `rollout resume` (or the checkpoint's timer)
    /// continues it.
    Paused,
    /// The new image failed its health gate: instances on it are being replaced by the previous image.
    RollingBack,
    Succeeded,
    /// Every instance is back on the previous image; the new one is quarantined.
    RolledBack,
    /// Stopped for good by an operator; the fleet stays as it is, mixed if need be.
    Aborted,
    /// A newer image arrived before this rollout finished; the newer rollout continues from here.
    Superseded,
}

impl RolloutStatus {
    /// Still moving instances (or about to).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutStatus::InProgress | RolloutStatus::Paused | RolloutStatus::RollingBack
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub number: u32,
    pub started_at: Timestamp,
    /// Launch tokens of this wave.
    pub tokens: Vec<String>,
    pub launched: Vec<InstanceId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terminated: Vec<InstanceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ImageId>,
    pub to: ImageId,
    pub status: RolloutStatus,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    pub waves: Vec<Wave>,
    /// Why it is paused, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// Checkpoints (in %) already passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints_passed: Vec<u32>,
    /// Why it rolled back or was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a rollout waits, and until when (none: until `phoenix rollout resume`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// Status to return to on resume.
    pub resume_to: RolloutStatus,
}

/// An image refused for a fleet after it failed a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub reason: String,
    pub at: Timestamp,
    pub rollout: u64,
}

/// A failure the breaker counts: "unhealthy at once" includes instances already replaced in the
/// last few minutes, or replacing them one by one would hide a mass failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentFailure {
    pub at: Timestamp,
    pub instance: Instance,
}

/// The mass-failure breaker, while tripped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    pub tripped_at: Timestamp,
    pub unhealthy: u32,
    /// The attribute most unhealthy instances share, if one stands out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
}

/// A fleet's instance records by id, shared copy-on-write. The planner is a pure function: each
/// step starts from a copy of the fleet it was given. With thousands of instances, copying every
/// record (and its strings) cost far more than the planning itself, so a copy shares them
/// instead: cloning is O(1); the first change copies the map's index (ids and pointers) once,
/// and only the records actually changed are copied.
#[derive(Clone, Default)]
pub struct Instances(Arc<BTreeMap<InstanceId, Arc<Instance>>>);

impl Instances {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn contains_key(&self, id: &InstanceId) -> bool {
        self.0.contains_key(id)
    }
    pub fn get(&self, id: &InstanceId) -> Option<&Instance> {
        self.0.get(id).map(|i| &**i)
    }
    /// The record to change, copied first if another fleet value shares it.
    pub fn get_mut(&mut self, id: &InstanceId) -> Option<&mut Instance> {
        if !self.0.contains_key(id) {
            return None;
        }
        Arc::make_mut(&mut self.0).get_mut(id).map(Arc::make_mut)
    }
    /// Adds or replaces a record, returning the one it replaced.
    pub fn insert(&mut self, id: InstanceId, instance: Instance) -> Option<Instance> {
        Arc::make_mut(&mut self.0)
            .insert(id, Arc::new(instance))
            .map(Arc::unwrap_or_clone)
    }
    pub fn remove(&mut self, id: &InstanceId) -> Option<Instance> {
        if !self.0.contains_key(id) {
            return None;
        }
        Arc::make_mut(&mut self.0)
            .remove(id)
            .map(Arc::unwrap_or_clone)
    }
    pub fn retain(&mut self, mut keep: impl FnMut(&InstanceId, &Instance) -> bool) {
        Arc::make_mut(&mut self.0).retain(|id, i| keep(id, i));
    }
    pub fn clear(&mut self) {
        *self = Self::default();
    }
    /// In id order, as every iterator here.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &InstanceId> + ExactSizeIterator {
        self.0.keys()
    }
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Instance> + ExactSizeIterator {
        self.0.values().map(|i| &**i)
    }
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&InstanceId, &Instance)> + ExactSizeIterator {
        self.0.iter().map(|(id, i)| (id, &**i))
    }
}

impl PartialEq for Instances {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Instances {}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl std::ops::Index<&InstanceId> for Instances {
    type Output = Instance;
    fn index(&self, id: &InstanceId) -> &Instance {
        &self.0[id]
    }
}

impl FromIterator<(InstanceId, Instance)> for Instances {
    fn from_iter<T: IntoIterator<Item = (InstanceId, Instance)>>(iter: T) -> Self {
        Instances(Arc::new(
            iter.into_iter().map(|(id, i)| (id, Arc::new(i))).collect(),
        ))
    }
}

impl Extend<(InstanceId, Instance)> for Instances {
    fn extend<T: IntoIterator<Item = (InstanceId, Instance)>>(&mut self, iter: T) {
        Arc::make_mut(&mut self.0).extend(iter.into_iter().map(|(id, i)| (id, Arc::new(i))));
    }
}

/// Everything phoenix records about one fleet. `instances` may hold only part of the fleet (an
/// instance-scoped event loads just its instance); `complete` says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    pub spec: FleetSpec,
    /// Bumped by every committed change; every write is conditional on the version it read.
    pub version: u64,
    pub created_at: Timestamp,
    /// Event times of the last image and capacity changes, so a late, older event cannot undo a
    /// newer one (EventBridge does not order deliveries).
    pub image_set_at: Timestamp,
    pub capacity_set_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingLaunch>,
    /// Live instances (kept as a count so instance-scoped work can respect the surge limit without
    /// reading every instance).
    pub live: u32,
    /// Live instances that failed a health check (a count, for the breaker, for the same reason).
    #[serde(default)]
    pub failed: u32,
    /// Images refused for this fleet, with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quarantined: BTreeMap<ImageId, Quarantine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    /// Instances that failed in the breaker's window (replaced or not), as they were then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<RecentFailure>,
    /// An operator resumed repairs while the breaker was tripped; it stays off until fewer
    /// instances are unhealthy than its threshold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub breaker_overridden: bool,
    /// When instances were taken away in the last hour (for `max_replacements_per_hour`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disruptions: Vec<Timestamp>,
    /// Whether the hourly budget was exhausted at the last pass (recorded once, not every pass).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub budget_exhausted: bool,
    #[serde(skip)]
    pub instances: Instances,
    #[serde(skip)]
    pub complete: bool,
    /// Intents waiting to be applied (`QueuedIntent`), oldest first; loaded with the whole fleet
    /// only.
    #[serde(skip)]
    pub inbox: Vec<crate::events::QueuedIntent>,
}

impl Fleet {
    pub fn new(spec: FleetSpec, now: Timestamp) -> Self {
        Fleet {
            spec,
            version: 0,
            created_at: now,
            image_set_at: now,
            capacity_set_at: now,
            rollout: None,
            pending: Vec::new(),
            live: 0,
            failed: 0,
            quarantined: BTreeMap::new(),
            breaker: None,
            breaker_overridden: false,
            failures: Vec::new(),
            disruptions: Vec::new(),
            budget_exhausted: false,
            inbox: Vec::new(),
            instances: Instances::new(),
            complete: true,
        }
    }

    /// Tells this fleet apart from an earlier one of the same name: its creation time in base 36
    /// (seconds; 6 characters until 2038, 7 after).
    pub fn incarnation(&self) -> String {
        let mut n = self.created_at.timestamp().max(0) as u64;
        let mut out = Vec::new();
        loop {
            out.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
            n /= 36;
            if n == 0 {
                break;
            }
        }
        out.reverse();
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn live_instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values().filter(|i| i.is_live())
    }

    pub fn pending_count(&self) -> u32 {
        self.pending.iter().map(|p| p.count).sum()
    }

    pub fn budget(&self) -> Budget {
        self.spec.policy.budget(self.spec.capacity)
    }
}

/// What EC2 says about one instance tagged with the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub id: InstanceId,
    pub image: Option<ImageId>,
    pub state: Lifecycle,
    /// Both EC2 status checks (system and instance) report `ok`.
    pub status_ok: bool,
    pub launched_at: Option<Timestamp>,
    /// The `phoenix:launch` tag.
    pub token: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
}

impl Observed {
    /// How EC2 shows a recorded instance when all is well: running, both status checks ok.
    pub fn running_ok(i: &Instance) -> Self {
        Observed {
            id: i.id.clone(),
            image: Some(i.image.clone()),
            state: Lifecycle::Running,
            status_ok: true,
            launched_at: Some(i.launched_at),
            token: Some(i.token.clone()),
            zone: i.zone.clone(),
            instance_type: i.instance_type.clone(),
        }
    }
}
